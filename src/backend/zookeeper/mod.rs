//! The ZooKeeper backend: kazoo-compatible locks, read/write locks and semaphores.
//!
//! Layout (the same tree kazoo, lockpick and Curator-style clients use):
//! - mutex / write lock on PATH: ephemeral-sequential children `PATH/<guid>__lock__<seq>`;
//!   read lock: `PATH/<guid>__rlock__<seq>`. A contender holds the lock when no child it
//!   excludes has a smaller sequence (writers exclude `__lock__` and `__rlock__`, readers only
//!   `__lock__`, kazoo's `Lock` only `__lock__`), and otherwise watches only its predecessor —
//!   one watch event and one getChildren per handoff, no herd. The guid finds our own node
//!   again after a connection loss during create.
//! - semaphore (limit N > 1) on PATH: PATH's data is N (kazoo's `max_leases`), leases are
//!   children `PATH/<guid>`, and a lease is taken while holding the mutex `PATH-__lock__`,
//!   exactly as kazoo's `Semaphore` does. A different stored N is an error.
//! - node data: our holder record (JSON), so kazoo's `contenders()` shows who holds it.
//! - token: the czxid of our node (grows with every acquisition across the ensemble).
//! - ttl: the session timeout (default 10 s). Pings keep the session alive; a suspended
//!   connection that recovers within it keeps the lock. `update` says `Lost` when the session
//!   expired, our node is gone, or no server could vouch for the session for a whole timeout.
//! - persistent locks (`persist`): non-ephemeral nodes. While such a node waits its data
//!   carries `"waiting": true`; once it holds, the final record (with the token) is written.
//!   `gc` removes persistent nodes of this host whose process is dead and that were still
//!   waiting (or not meant to persist); a persistent lock that was granted stays until
//!   `release_named`.
//! - unreachable ensemble: `Unavailable`, naming the hosts, never a hang. Before the first
//!   contact: after the wait's timeout, or the session timeout when that is shorter or the
//!   wait is unbounded (1 s for a try-once). A waiter cut off from every server later gives
//!   up once no server answered for the session timeout (plus at most 2 s of cleanup); a
//!   short outage (leader election, one server lost) is ridden out on the same session.
//! - auth: `user:password` (URL or `LOCKFN_ZK_AUTH`) is sent as digest auth on every
//!   connection, and the nodes we create carry an ACL that lets only that identity modify
//!   them (anyone may read). The password never appears in messages.

mod client;
mod place;
mod proto;

#[cfg(feature = "test-counters")]
pub use client::{counters, Counters};
// For the atfork handlers (crate::fork).
pub(crate) use client::{SessionTable, SESSIONS};

use super::{GcScope, Held, HolderView, Status, Wait};
use crate::holder::{hostname, HolderRecord, Liveness};
use crate::target::Located;
use crate::{Error, ErrorKind, Options, Result, Target};
use client::{Notify, Session, State, ZkError};
use place::Place;
use proto::{Acl, Stat};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct ZkBackend;

/// Session timeout when the caller gives no ttl (kazoo's default).
pub const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(10);
const LOCK_NAME: &str = "__lock__";
const READ_NAME: &str = "__rlock__";
const SEM_LOCK_SUFFIX: &str = "-__lock__";
/// Bound on loop iterations of one acquisition (each one does a request, so time bounds it
/// first; this only stops a server answering nonsense forever).
const MAX_ROUNDS: usize = 100_000;
/// Bound on the nodes `list` and `gc` visit.
const MAX_WALK: usize = 20_000;

/// Everything about one target that the recipes need.
struct Ctx {
    target: String,
    hosts: String,
    path: String,
    user: Option<String>,
    cfg: client::Config,
    acl: Vec<Acl>,
    /// No request of this context runs past this (the caller's deadline: a wait's hard
    /// deadline, or `LOCKFN_OP_TIMEOUT` for status, list, gc, release, update).
    deadline: std::cell::Cell<Option<Instant>>,
}

impl Ctx {
    fn new(target: &Target, ttl: Option<Duration>) -> Result<Ctx> {
        let Place { hosts, path, auth } = target.place::<Place>()?;
        let timeout = ttl.unwrap_or(DEFAULT_SESSION_TIMEOUT);
        if timeout < Duration::from_millis(100) || timeout > Duration::from_secs(3600) {
            return Err(Error::new(
                ErrorKind::Invalid,
                format!(
                    "{target}: ttl {:.3} s is out of range for a ZooKeeper session timeout \
                     (0.1 s to 3600 s; the server narrows it further)",
                    timeout.as_secs_f64()
                ),
            ));
        }
        let acl = match auth {
            Some(a) => Acl::digest_only(a),
            None => Acl::open(),
        };
        Ok(Ctx {
            target: target.canonical(),
            hosts: hosts.join(","),
            path: path.clone(),
            user: auth
                .as_deref()
                .map(|a| a.split(':').next().unwrap_or_default().to_string()),
            cfg: client::Config {
                hosts: hosts.clone(),
                auth: auth.clone(),
                timeout,
            },
            acl,
            deadline: std::cell::Cell::new(Some(super::op_deadline()?)),
        })
    }

    /// Bound every later request of this context by `d` (None: by the request's own bound).
    fn set_deadline(&self, d: Option<Instant>) {
        self.deadline.set(d);
    }

    /// `max`, cut to what is left before the deadline.
    fn left(&self, max: Duration) -> Duration {
        match self.deadline.get() {
            Some(d) => max.min(d.saturating_duration_since(Instant::now())),
            None => max,
        }
    }

    fn past_deadline(&self) -> bool {
        self.deadline.get().is_some_and(|d| Instant::now() >= d)
    }

    fn session(&self) -> Result<Arc<Session>> {
        client::session(&self.cfg).map_err(|e| {
            Error::new(
                ErrorKind::Internal,
                format!(
                    "{}: cannot start the ZooKeeper client thread: {e}",
                    self.target
                ),
            )
        })
    }

    /// A connected session, or `Unavailable` naming the hosts after `budget` (at most until
    /// the deadline).
    fn connected(&self, budget: Duration) -> Result<Arc<Session>> {
        for _ in 0..3 {
            let s = self.session()?;
            match s.wait_connected(self.left(budget)) {
                Ok(()) => {
                    s.reap_orphans(self.left(Duration::from_millis(500)));
                    return Ok(s);
                }
                Err(ZkError::Expired) => continue, // a fresh one is made next round
                Err(e) => return Err(self.err("connecting", e)),
            }
        }
        Err(self.err("connecting", ZkError::Expired))
    }

    /// One request waits at most this long (for a connection and its answer), and never past
    /// the deadline.
    fn op_budget(&self) -> Duration {
        self.left(self.cfg.timeout.max(Duration::from_secs(2)))
    }

    fn err(&self, what: &str, e: ZkError) -> Error {
        match e {
            ZkError::Api(proto::ERR_NO_AUTH) => Error::new(
                ErrorKind::Permission,
                format!(
                    "{}: {what}: ZooKeeper refused it: the node's ACL does not allow {} \
                     (set LOCKFN_ZK_AUTH or user:password@ in the URL to the identity that \
                     created the lock)",
                    self.target,
                    match &self.user {
                        Some(u) => format!("digest user '{u}'"),
                        None => "an unauthenticated client".into(),
                    }
                ),
            ),
            ZkError::Api(proto::ERR_INVALID_ACL) | ZkError::Api(proto::ERR_AUTH_FAILED) => {
                Error::new(
                    ErrorKind::Permission,
                    format!(
                        "{}: {what}: ZooKeeper said: {} (check the credentials)",
                        self.target,
                        proto::err_name(match e {
                            ZkError::Api(c) => c,
                            _ => 0,
                        })
                    ),
                )
            }
            ZkError::Api(code) => Error::new(
                ErrorKind::Internal,
                format!(
                    "{}: {what}: ZooKeeper at {} said: {} ({code})",
                    self.target,
                    self.hosts,
                    proto::err_name(code)
                ),
            ),
            ZkError::ConnectionLoss => Error::new(
                ErrorKind::Unavailable,
                format!(
                    "{}: {what}: lost the connection to ZooKeeper at {}{}",
                    self.target,
                    self.hosts,
                    client::last_error(&self.cfg)
                        .filter(|e| e.starts_with("connection to"))
                        .map(|e| format!(" ({})", crate::target::printable_long(&e)))
                        .unwrap_or_default()
                ),
            ),
            ZkError::Expired => Error::new(
                ErrorKind::Unavailable,
                format!(
                    "{}: {what}: the ZooKeeper session expired (servers {})",
                    self.target, self.hosts
                ),
            ),
            ZkError::Timeout => Error::new(
                ErrorKind::Unavailable,
                format!(
                    "{}: {what}: no answer from ZooKeeper at {} in time (the connection is up \
                     but the request was not answered before the deadline)",
                    self.target, self.hosts
                ),
            ),
            ZkError::Unreachable(last) => Error::new(
                ErrorKind::Unavailable,
                format!(
                    "{}: {what}: cannot reach ZooKeeper at {} (last error: {last})",
                    self.target, self.hosts
                ),
            ),
        }
    }

    /// Create every missing node of `path` (parents open, as kazoo's ensure_path; the last
    /// one with our ACL and `data`).
    fn ensure_path(
        &self,
        s: &Session,
        path: &str,
        data: &[u8],
    ) -> std::result::Result<(), ZkError> {
        if s.exists(path, None, self.op_budget())?.is_some() {
            return Ok(());
        }
        let mut cur = String::new();
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        for (i, part) in parts.iter().enumerate() {
            cur.push('/');
            cur.push_str(part);
            let last = i + 1 == parts.len();
            let (acl, d) = if last {
                (self.acl.clone(), data)
            } else {
                (Acl::open(), &b""[..])
            };
            match s.create(&cur, d, &acl, proto::MODE_PERSISTENT, self.op_budget()) {
                Ok(_) | Err(ZkError::Api(proto::ERR_NODE_EXISTS)) => {}
                Err(ZkError::Api(proto::ERR_NO_AUTH)) if !last => {
                    // A parent we may not create in: fine if it exists.
                    if s.exists(&cur, None, self.op_budget())?.is_none() {
                        return Err(ZkError::Api(proto::ERR_NO_AUTH));
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Connection budget for the first contact: the wait's timeout, bounded by the session
/// timeout; at least 1 s for a try-once.
fn connect_budget(wait: &Wait, session_timeout: Duration) -> Duration {
    let st = session_timeout.max(Duration::from_secs(1));
    if wait.is_try_once() {
        return Duration::from_secs(1)
            .min(st)
            .max(Duration::from_millis(500));
    }
    match wait.remaining() {
        None => st,
        Some(r) => r.clamp(Duration::from_millis(100), st),
    }
}

fn guid() -> String {
    let mut b = [0u8; 16];
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != b.len() as isize {
        // Fall back to time, pid and address entropy: unique enough for a contender prefix.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let x = t ^ ((std::process::id() as u128) << 64) ^ (&b as *const _ as u128);
        b = x.to_le_bytes();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The sequence suffix of a contender name (`-?\d{10}$`).
fn seq_of(name: &str) -> Option<&str> {
    let bytes = name.as_bytes();
    if bytes.len() < 10 || !bytes[bytes.len() - 10..].iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut start = bytes.len() - 10;
    if start > 0 && bytes[start - 1] == b'-' {
        start -= 1;
    }
    Some(&name[start..])
}

/// If `name` is a contender of one of `patterns` (`__lock__`, `__rlock__`), its sequence.
fn contender_seq<'a>(name: &'a str, patterns: &[&str]) -> Option<&'a str> {
    let seq = seq_of(name)?;
    let head = &name[..name.len() - seq.len()];
    patterns.iter().any(|p| head.ends_with(p)).then_some(seq)
}

fn is_lease_name(name: &str) -> bool {
    name.len() == 32 && name.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Kind of contender: what we create and what we wait for.
#[derive(Clone, Copy)]
struct Kind {
    node: &'static str,
    exclude: &'static [&'static str],
}

const WRITER: Kind = Kind {
    node: LOCK_NAME,
    exclude: &[LOCK_NAME, READ_NAME],
};
const READER: Kind = Kind {
    node: READ_NAME,
    exclude: &[LOCK_NAME],
};

/// kazoo's `_get_predecessor`: the contender with the largest sequence smaller than ours
/// among those `kind` excludes; None when we hold the lock. Sequences compare as strings,
/// as kazoo does.
fn predecessor<'a>(children: &'a [String], node: &str, kind: Kind) -> Option<&'a str> {
    let mine = seq_of(node)?;
    children
        .iter()
        .filter_map(|c| contender_seq(c, kind.exclude).map(|s| (s, c.as_str())))
        .filter(|(s, _)| *s < mine)
        .max_by(|a, b| a.0.cmp(b.0))
        .map(|(_, c)| c)
}

/// Contenders sorted by sequence, each with whether it holds the lock now (a writer holds
/// when first; a reader when no writer precedes it).
fn contenders(children: &[String]) -> Vec<(String, bool)> {
    let mut v: Vec<(&str, &String)> = children
        .iter()
        .filter_map(|c| contender_seq(c, &[LOCK_NAME, READ_NAME]).map(|s| (s, c)))
        .collect();
    v.sort();
    let mut out = Vec::new();
    let mut writer_seen = false;
    for (i, (_, c)) in v.iter().enumerate() {
        let is_reader = contender_seq(c, &[READ_NAME]).is_some();
        let holds = if is_reader { !writer_seen } else { i == 0 };
        if !is_reader {
            writer_seen = true;
        }
        out.push(((*c).clone(), holds));
    }
    out
}

/// Our record as node data; a persistent node says it is still waiting until it holds.
fn node_data(record: &HolderRecord, waiting: bool) -> Vec<u8> {
    let mut v = serde_json::to_value(record).unwrap_or_default();
    if waiting {
        v["waiting"] = true.into();
    }
    serde_json::to_vec(&v).unwrap_or_default()
}

/// A holder record from node data, and whether it is marked waiting.
fn parse_record(data: &[u8]) -> Option<(HolderRecord, bool)> {
    let v: serde_json::Value = serde_json::from_slice(data).ok()?;
    let waiting = v.get("waiting").and_then(|w| w.as_bool()).unwrap_or(false);
    let r: HolderRecord = serde_json::from_value(v).ok()?;
    Some((r, waiting))
}

/// Poll `n` and the cancel fd until `n` fires (true), the wait's deadline (false), or cancel.
fn wait_fired(n: &Notify, wait: &Wait) -> Result<bool> {
    loop {
        wait.check_cancel()?;
        let ms = match wait.remaining() {
            None => -1,
            Some(r) if r.is_zero() => return Ok(false),
            Some(r) => (r.as_millis().min(i32::MAX as u128) as i32).max(1),
        };
        let mut fds = [
            libc::pollfd {
                fd: n.fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: wait.cancel_fd().unwrap_or(-1),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) };
        if r < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(Error::new(
                ErrorKind::Internal,
                format!("poll: {}", std::io::Error::last_os_error()),
            ));
        }
        if fds[1].revents != 0 {
            wait.check_cancel()?;
        }
        if fds[0].revents != 0 {
            n.drain();
            return Ok(true);
        }
    }
}

/// What an acquisition produced.
struct Got {
    node: String,
    stat: Stat,
}

/// Outcome of one step that may be retried.
enum Step<T> {
    Done(T),
    Retry,
}

/// How one recipe run ended without the lock.
struct Fail(Error);

/// A contender of the kazoo lock recipe.
struct Contender<'a> {
    cx: &'a Ctx,
    path: String,
    prefix: String,
    kind: Kind,
    data: Vec<u8>,
    mode: i32,
    /// Our node's name (last segment) once known.
    node: Option<String>,
    stat: Option<Stat>,
    create_tried: bool,
    /// Connection losses seen: a try-once gives up after [`TRY_ONCE_LOSSES`].
    losses: u32,
}

/// A try-once retries a dropped connection this often at most (within its time budget).
const TRY_ONCE_LOSSES: u32 = 2;

impl<'a> Contender<'a> {
    fn new(cx: &'a Ctx, path: &str, kind: Kind, data: Vec<u8>, persistent: bool) -> Contender<'a> {
        Contender {
            cx,
            path: path.to_string(),
            prefix: format!("{}{}", guid(), kind.node),
            kind,
            data,
            mode: if persistent {
                proto::MODE_PERSISTENT_SEQUENTIAL
            } else {
                proto::MODE_EPHEMERAL_SEQUENTIAL
            },
            node: None,
            stat: None,
            create_tried: false,
            losses: 0,
        }
    }

    fn full(&self, name: &str) -> String {
        format!("{}/{}", self.path, name)
    }

    fn find_node(&self, s: &Session) -> std::result::Result<Option<String>, ZkError> {
        let children = s.get_children(&self.path, None, self.cx.op_budget())?;
        Ok(children.into_iter().find(|c| c.starts_with(&self.prefix)))
    }

    /// Run the recipe until we hold the lock or the wait ends.
    fn acquire(&mut self, sess: &mut Arc<Session>, wait: &Wait, target: &Target) -> Result<Got> {
        let notify =
            Notify::new().map_err(|e| Error::new(ErrorKind::Internal, format!("pipe: {e}")))?;
        let mut watched_gen = u64::MAX;
        for _ in 0..MAX_ROUNDS {
            if sess.state() == State::Expired {
                *sess = self.cx.connected(self.cx.op_budget())?;
                self.node = None; // an ephemeral node died with the session; find_node tells
            }
            if sess.gen() != watched_gen {
                sess.watch_state(&notify);
                watched_gen = sess.gen();
            }
            match self.step(sess, wait, target, &notify) {
                Ok(Step::Done(g)) => return Ok(g),
                Ok(Step::Retry) => continue,
                Err(Fail(e)) => {
                    self.cx.set_deadline(wait.cleanup_deadline());
                    self.cleanup(sess);
                    return Err(e);
                }
            }
        }
        self.cx.set_deadline(wait.cleanup_deadline());
        self.cleanup(sess);
        Err(Error::new(
            ErrorKind::Internal,
            format!("{}: gave up after {MAX_ROUNDS} rounds", self.cx.target),
        ))
    }

    /// Map a request error: retry on connection loss/expiry, fail otherwise.
    fn on_err<T>(
        &mut self,
        what: &str,
        e: ZkError,
        wait: &Wait,
    ) -> std::result::Result<Step<T>, Fail> {
        match e {
            ZkError::ConnectionLoss | ZkError::Expired => {
                self.losses += 1;
                let out_of_time = self.cx.past_deadline()
                    || (wait.expired() && !wait.is_try_once())
                    || (wait.is_try_once() && self.losses > TRY_ONCE_LOSSES);
                if out_of_time {
                    return Err(Fail(self.cx.err(what, e)));
                }
                Ok(Step::Retry)
            }
            other => Err(Fail(self.cx.err(what, other))),
        }
    }

    fn step(
        &mut self,
        s: &Session,
        wait: &Wait,
        target: &Target,
        notify: &Arc<Notify>,
    ) -> std::result::Result<Step<Got>, Fail> {
        // 0. Try-once: when a contender we exclude is already there, we cannot be first;
        // say so without creating (and deleting) a node of our own.
        if wait.is_try_once() && self.node.is_none() && !self.create_tried {
            match s.get_children(&self.path, None, self.cx.op_budget()) {
                Ok(children) => {
                    if children
                        .iter()
                        .any(|c| contender_seq(c, self.kind.exclude).is_some())
                    {
                        let first = contenders(&children).into_iter().find(|(_, holds)| *holds);
                        return Err(Fail(busy(
                            s,
                            self.cx,
                            wait,
                            target,
                            &self.path,
                            first.map(|f| f.0),
                        )));
                    }
                }
                Err(ZkError::Api(proto::ERR_NO_NODE)) => {}
                Err(e) => return self.on_err("listing contenders", e, wait),
            }
        }
        // 1. Our node: found again by its guid after a connection loss, else created.
        if self.node.is_none() {
            if self.create_tried {
                match self.find_node(s) {
                    Ok(Some(n)) => {
                        self.node = Some(n);
                        self.stat = None;
                    }
                    Ok(None) => {}
                    Err(ZkError::Api(proto::ERR_NO_NODE)) => {}
                    Err(e) => return self.on_err("looking for our contender node", e, wait),
                }
            }
            if self.node.is_none() {
                self.create_tried = true;
                match s.create(
                    &self.full(&self.prefix),
                    &self.data,
                    &self.cx.acl,
                    self.mode,
                    self.cx.op_budget(),
                ) {
                    Ok((p, stat)) => {
                        let name = p.rsplit('/').next().unwrap_or_default().to_string();
                        self.node = Some(name);
                        self.stat = Some(stat);
                    }
                    Err(ZkError::Api(proto::ERR_NO_NODE)) => {
                        // The lock node is missing (first use, or removed meanwhile).
                        if let Err(e) = self.cx.ensure_path(s, &self.path, b"") {
                            return self.on_err("creating the lock node", e, wait);
                        }
                        return Ok(Step::Retry);
                    }
                    Err(e) => return self.on_err("creating our contender node", e, wait),
                }
            }
        }
        let Some(node) = self.node.clone() else {
            return Ok(Step::Retry);
        };
        // 2. Are we first (among those we exclude)?
        let children = match s.get_children(&self.path, None, self.cx.op_budget()) {
            Ok(c) => c,
            Err(ZkError::Api(proto::ERR_NO_NODE)) => {
                self.node = None;
                return Ok(Step::Retry);
            }
            Err(e) => return self.on_err("listing contenders", e, wait),
        };
        if !children.contains(&node) {
            // Our node is gone (session expired, or removed by an operator): enter again.
            self.node = None;
            return Ok(Step::Retry);
        }
        let Some(pred) = predecessor(&children, &node, self.kind) else {
            let stat = match self.stat.clone() {
                Some(st) => st,
                None => match s.exists(&self.full(&node), None, self.cx.op_budget()) {
                    Ok(Some(st)) => st,
                    Ok(None) => {
                        self.node = None;
                        return Ok(Step::Retry);
                    }
                    Err(e) => return self.on_err("reading our node", e, wait),
                },
            };
            return Ok(Step::Done(Got {
                node: self.full(&node),
                stat,
            }));
        };
        if wait.is_try_once() || wait.expired() {
            let first = contenders(&children).into_iter().find(|(_, holds)| *holds);
            return Err(Fail(busy(
                s,
                self.cx,
                wait,
                target,
                &self.path,
                first.map(|f| f.0),
            )));
        }
        // 3. Watch only the predecessor, and wait.
        notify.drain();
        match s.exists(&self.full(pred), Some(notify), self.cx.op_budget()) {
            Ok(None) => return Ok(Step::Retry),
            Ok(Some(_)) => {}
            Err(e) => return self.on_err("watching our predecessor", e, wait),
        }
        match wait_fired(notify, wait) {
            Ok(true) => Ok(Step::Retry),
            Ok(false) => {
                let first = contenders(&children).into_iter().find(|(_, holds)| *holds);
                Err(Fail(busy(
                    s,
                    self.cx,
                    wait,
                    target,
                    &self.path,
                    first.map(|f| f.0),
                )))
            }
            Err(e) => Err(Fail(e)),
        }
    }

    /// Remove our contender node (best effort, bounded): a failed or cancelled wait leaves
    /// nothing behind.
    fn cleanup(&mut self, s: &Session) {
        // Short: when no server answers, the node is left for the next chance (or for the
        // session's expiry) rather than holding up the caller's error.
        for _ in 0..3 {
            let b = self.cx.left(Duration::from_secs(2));
            let name = match self.node.take() {
                Some(n) => Some(n),
                None if self.create_tried => match self.find_node(s) {
                    Ok(n) => n,
                    Err(ZkError::ConnectionLoss) if !self.cx.past_deadline() => continue,
                    Err(_) => None,
                },
                None => None,
            };
            let Some(name) = name else { return };
            match s.delete(&self.full(&name), -1, b) {
                Ok(()) | Err(ZkError::Api(_)) | Err(ZkError::Expired) => return,
                Err(ZkError::ConnectionLoss) if !self.cx.past_deadline() => self.node = Some(name),
                Err(ZkError::ConnectionLoss | ZkError::Unreachable(_) | ZkError::Timeout) => {
                    self.node = Some(name);
                    break;
                }
            }
        }
        if let Some(name) = self.node.take() {
            s.add_orphan(self.full(&name));
        }
    }
}

/// The `Busy` error, naming the holder when its node data is ours or readable text.
fn busy(
    s: &Session,
    cx: &Ctx,
    wait: &Wait,
    target: &Target,
    dir: &str,
    holder: Option<String>,
) -> Error {
    let Some(h) = holder else {
        return wait.busy(target, None);
    };
    let data = s
        .get_data(
            &format!("{dir}/{h}"),
            None,
            Duration::from_secs(1).min(cx.op_budget()),
        )
        .ok()
        .map(|(d, _)| d);
    match data.as_deref().and_then(parse_record) {
        Some((r, _)) => wait.busy(target, Some(&r)),
        None => {
            let e = wait.busy(target, None);
            let text = data
                .map(|d| {
                    String::from_utf8_lossy(&d)
                        .chars()
                        .filter(|c| !c.is_control())
                        .take(120)
                        .collect::<String>()
                })
                .unwrap_or_default();
            let who = if text.is_empty() {
                format!(": held by node {h}")
            } else {
                format!(": held by node {h} ('{text}')")
            };
            Error::new(ErrorKind::Busy, format!("{}{who}", e.message()))
        }
    }
}

struct ZkHeld {
    target: Target,
    cx: Ctx,
    sess: Arc<Session>,
    node: String,
    session_id: i64,
    ephemeral: bool,
    token: u64,
    record: HolderRecord,
    /// Fires when our node changes or goes (and on connection changes).
    own: Option<(Arc<Notify>, u64)>,
}

impl ZkHeld {
    fn lost(&self, why: &str) -> Error {
        Error::new(
            ErrorKind::Lost,
            format!("lock {} was lost: {why} (node {})", self.target, self.node),
        )
    }

    /// Local facts that prove a loss without asking the server.
    fn local_loss(&self) -> Option<Error> {
        if !self.ephemeral {
            return None;
        }
        if self.sess.state() == State::Expired || self.sess.session_id() != self.session_id {
            return Some(self.lost("the ZooKeeper session expired"));
        }
        let silent = self.sess.silent_for();
        let timeout = self.sess.negotiated();
        if silent >= timeout {
            return Some(self.lost(&format!(
                "no ZooKeeper server of {} answered for {:.1} s, the session timeout, so the \
                 session may have expired",
                self.cx.hosts,
                silent.as_secs_f64()
            )));
        }
        None
    }

    /// Ask the server whether our node is still ours, optionally re-arming the own watch.
    fn verify(&mut self, watch: bool) -> Result<()> {
        if let Some(e) = self.local_loss() {
            return Err(e);
        }
        // At most LOCKFN_OP_TIMEOUT, however long the session timeout (up to an hour).
        let op = super::op_timeout().unwrap_or(super::DEFAULT_OP_TIMEOUT);
        let budget = if self.ephemeral {
            self.sess
                .negotiated()
                .saturating_sub(self.sess.silent_for())
                .max(Duration::from_millis(10))
                .min(op)
        } else {
            self.cx.op_budget().min(op)
        };
        let n = if watch { Notify::new().ok() } else { None };
        let gen = self.sess.gen();
        if let Some(n) = &n {
            self.sess.watch_state(n);
        }
        let deadline = std::time::Instant::now() + budget;
        let mut r = self.sess.exists(&self.node, n.as_ref(), budget);
        // A connection that broke under the request: ask again on the next one, while the
        // session can still be alive.
        while matches!(r, Err(ZkError::ConnectionLoss)) && std::time::Instant::now() < deadline {
            if let Some(e) = self.local_loss() {
                return Err(e);
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            r = self.sess.exists(&self.node, n.as_ref(), left);
        }
        match r {
            Ok(Some(st)) => {
                if self.ephemeral && st.ephemeral_owner != self.session_id {
                    return Err(self.lost("the node belongs to another session"));
                }
                if st.czxid as u64 != self.token {
                    return Err(self.lost("the node was replaced"));
                }
                if let Some(n) = n {
                    self.own = Some((n, gen));
                }
                Ok(())
            }
            Ok(None) => Err(self.lost("the node was deleted")),
            Err(ZkError::Expired) => Err(self.lost("the ZooKeeper session expired")),
            Err(e) => {
                if let Some(l) = self.local_loss() {
                    return Err(l);
                }
                Err(self.cx.err("checking the lock", e))
            }
        }
    }
}

impl Held for ZkHeld {
    fn token(&self) -> u64 {
        self.token
    }

    fn record(&self) -> &HolderRecord {
        &self.record
    }

    fn update(&mut self) -> Result<()> {
        self.verify(false)
    }

    fn check(&mut self) -> Result<()> {
        if let Some(e) = self.local_loss() {
            return Err(e);
        }
        let fresh = match &self.own {
            Some((n, gen)) => !n.drain() && *gen == self.sess.gen(),
            None => false,
        };
        if fresh {
            return Ok(());
        }
        self.own = None;
        self.verify(true)
    }

    fn check_interval(&self) -> Option<Duration> {
        Some(Duration::from_millis(200))
    }

    fn renew_interval(&self) -> Option<Duration> {
        Some(self.sess.negotiated() / 3)
    }

    fn release(&mut self) -> Result<()> {
        self.own = None;
        self.cx.set_deadline(Some(super::op_deadline()?));
        let lost = self.local_loss();
        let mut last = None;
        for _ in 0..3 {
            match self.sess.delete(&self.node, -1, self.cx.op_budget()) {
                Ok(()) => return lost.map_or(Ok(()), Err),
                Err(ZkError::Api(proto::ERR_NO_NODE)) | Err(ZkError::Expired) => {
                    return Err(lost.unwrap_or_else(|| self.lost("the node was already gone")))
                }
                Err(ZkError::ConnectionLoss) => {
                    // The delete may have happened: a retry answers NoNode then.
                    last = Some(ZkError::ConnectionLoss);
                    continue;
                }
                Err(e) => return Err(self.cx.err("releasing the lock", e)),
            }
        }
        // Deleted at the next chance (the session may outlive this handle).
        self.sess.add_orphan(self.node.clone());
        Err(self.cx.err(
            "releasing the lock",
            last.unwrap_or(ZkError::ConnectionLoss),
        ))
    }

    fn detach(&mut self) -> Result<()> {
        if self.ephemeral {
            return Err(Error::new(
                ErrorKind::Invalid,
                format!(
                    "{}: only a persistent lock (persist) can outlive its process",
                    self.target
                ),
            ));
        }
        Ok(())
    }
}

impl ZkBackend {
    fn acquire_lock(
        &self,
        cx: &Ctx,
        target: &Target,
        opts: &Options,
        wait: &Wait,
    ) -> Result<Box<dyn Held>> {
        let mut sess = cx.connected(connect_budget(wait, cx.cfg.timeout))?;
        let mut record = HolderRecord::for_self(opts.holder.as_deref());
        record.persist = opts.persist;
        record.shared = opts.shared;
        let kind = if opts.shared { READER } else { WRITER };
        let mut c = Contender::new(
            cx,
            &cx.path,
            kind,
            node_data(&record, opts.persist),
            opts.persist,
        );
        let got = c.acquire(&mut sess, wait, target)?;
        self.held(cx, target, sess, got, record)
    }

    fn held(
        &self,
        cx: &Ctx,
        target: &Target,
        sess: Arc<Session>,
        got: Got,
        mut record: HolderRecord,
    ) -> Result<Box<dyn Held>> {
        record.token = got.stat.czxid as u64;
        let ephemeral = got.stat.ephemeral_owner != 0;
        if !ephemeral {
            // The final record: holding, with its token. Until it is written the node says
            // "waiting", which gc may remove once this process is gone: so it must land.
            let data = node_data(&record, false);
            let mut r = sess.set_data(&got.node, &data, cx.op_budget());
            for _ in 0..3 {
                if !matches!(r, Err(ZkError::ConnectionLoss)) {
                    break;
                }
                r = sess.set_data(&got.node, &data, cx.op_budget());
            }
            if let Err(e) = r {
                if sess.delete(&got.node, -1, cx.op_budget()).is_err() {
                    sess.add_orphan(got.node.clone());
                }
                return Err(cx.err("recording the persistent lock's holder", e));
            }
        }
        // A held lock's requests are bounded per operation (release sets its own deadline;
        // renewals are bounded by the session timeout).
        let held_cx = Ctx::new(target, Some(cx.cfg.timeout))?;
        held_cx.set_deadline(None);
        Ok(Box::new(ZkHeld {
            target: target.clone(),
            cx: held_cx,
            session_id: sess.session_id(),
            sess,
            node: got.node,
            ephemeral,
            token: record.token,
            record,
            own: None,
        }))
    }

    fn acquire_semaphore(
        &self,
        cx: &Ctx,
        target: &Target,
        opts: &Options,
        wait: &Wait,
    ) -> Result<Box<dyn Held>> {
        let mut sess = cx.connected(connect_budget(wait, cx.cfg.timeout))?;
        let limit = opts.limit;
        let mut record = HolderRecord::for_self(opts.holder.as_deref());
        record.persist = opts.persist;
        // The semaphore node stores max_leases (kazoo's check).
        let mut rounds = 0;
        loop {
            rounds += 1;
            let r = (|| -> std::result::Result<(), ZkError> {
                if let Some(parent) = cx
                    .path
                    .rsplit_once('/')
                    .map(|p| p.0)
                    .filter(|p| !p.is_empty())
                {
                    cx.ensure_path(&sess, parent, b"")?;
                }
                match sess.create(
                    &cx.path,
                    limit.to_string().as_bytes(),
                    &cx.acl,
                    proto::MODE_PERSISTENT,
                    cx.op_budget(),
                ) {
                    Ok(_) => Ok(()),
                    Err(ZkError::Api(proto::ERR_NODE_EXISTS)) => Ok(()),
                    Err(e) => Err(e),
                }
            })();
            match r {
                Ok(()) => break,
                Err(ZkError::ConnectionLoss) if rounds < 5 => continue,
                Err(ZkError::Expired) if rounds < 5 => {
                    sess = cx.connected(cx.op_budget())?;
                    continue;
                }
                Err(e) => return Err(cx.err("creating the semaphore node", e)),
            }
        }
        let (data, _) = sess
            .get_data(&cx.path, None, cx.op_budget())
            .map_err(|e| cx.err("reading the semaphore's max_leases", e))?;
        match std::str::from_utf8(&data)
            .ok()
            .and_then(|t| t.trim().parse::<i64>().ok())
        {
            Some(n) if n != limit as i64 => {
                return Err(Error::new(
                    ErrorKind::Invalid,
                    format!(
                        "{}: the semaphore exists with max_leases {n}, asked for limit {limit} \
                         (all users of a semaphore must agree on its limit, as in kazoo)",
                        cx.target
                    ),
                ))
            }
            Some(_) => {}
            None => {
                sess.set_data(&cx.path, limit.to_string().as_bytes(), cx.op_budget())
                    .map_err(|e| cx.err("storing the semaphore's max_leases", e))?;
            }
        }
        // The sub-lock that serialises lease taking (kazoo: path + "-__lock__").
        let lock_path = format!("{}{SEM_LOCK_SUFFIX}", cx.path);
        let mut sub = Contender::new(cx, &lock_path, WRITER, record.to_json().into_bytes(), false);
        let sub_got = sub.acquire(&mut sess, wait, target)?;
        let lease = format!("{}/{}", cx.path, guid());
        let data = node_data(&record, false);
        let mode = if opts.persist {
            proto::MODE_PERSISTENT
        } else {
            proto::MODE_EPHEMERAL
        };
        let result = (|| -> Result<Got> {
            let notify =
                Notify::new().map_err(|e| Error::new(ErrorKind::Internal, format!("pipe: {e}")))?;
            sess.watch_state(&notify);
            for _ in 0..MAX_ROUNDS {
                match sess.exists(&lease, None, cx.op_budget()) {
                    Ok(Some(stat)) => {
                        return Ok(Got {
                            node: lease.clone(),
                            stat,
                        })
                    }
                    Ok(None) => {}
                    Err(ZkError::ConnectionLoss) => continue,
                    Err(e) => return Err(cx.err("checking our lease", e)),
                }
                notify.drain();
                let children = match sess.get_children(&cx.path, Some(&notify), cx.op_budget()) {
                    Ok(c) => c,
                    Err(ZkError::ConnectionLoss) => continue,
                    Err(e) => return Err(cx.err("listing leases", e)),
                };
                if children.len() < limit as usize {
                    match sess.create(&lease, &data, &cx.acl, mode, cx.op_budget()) {
                        Ok((_, stat)) => {
                            return Ok(Got {
                                node: lease.clone(),
                                stat,
                            })
                        }
                        Err(ZkError::Api(proto::ERR_NODE_EXISTS))
                        | Err(ZkError::ConnectionLoss) => continue,
                        Err(e) => return Err(cx.err("taking a lease", e)),
                    }
                }
                if wait.is_try_once() || wait.expired() {
                    let first = children.first().cloned();
                    return Err(busy(&sess, cx, wait, target, &cx.path, first));
                }
                if !wait_fired(&notify, wait)? {
                    let first = children.first().cloned();
                    return Err(busy(&sess, cx, wait, target, &cx.path, first));
                }
            }
            Err(Error::new(
                ErrorKind::Internal,
                format!("{}: gave up waiting for a lease", cx.target),
            ))
        })();
        // Always give the sub-lock back; a failed wait leaves no lease behind (a create
        // that lost its connection may have made one).
        if result.is_err() {
            cx.set_deadline(wait.cleanup_deadline());
        }
        let short = cx.left(Duration::from_secs(2));
        if let Err(ZkError::ConnectionLoss | ZkError::Unreachable(_) | ZkError::Timeout) =
            sess.delete(&sub_got.node, -1, short)
        {
            sess.add_orphan(sub_got.node.clone());
        }
        if result.is_err() {
            if let Err(ZkError::ConnectionLoss | ZkError::Unreachable(_) | ZkError::Timeout) =
                sess.delete(&lease, -1, cx.left(Duration::from_secs(2)))
            {
                sess.add_orphan(lease.clone());
            }
        }
        let got = result?;
        self.held(cx, target, sess, got, record)
    }

    /// Every lock node under `root` (itself included), by absolute path, with its children.
    fn walk(s: &Session, cx: &Ctx, root: &str) -> Result<Vec<(String, Vec<String>)>> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_string()];
        let mut visited = 0;
        while let Some(p) = stack.pop() {
            visited += 1;
            if visited > MAX_WALK {
                break;
            }
            let children = match s.get_children(&p, None, cx.op_budget()) {
                Ok(c) => c,
                Err(ZkError::Api(proto::ERR_NO_NODE)) => continue,
                Err(e) => return Err(cx.err("listing locks", e)),
            };
            let is_lock = children
                .iter()
                .any(|c| contender_seq(c, &[LOCK_NAME, READ_NAME]).is_some() || is_lease_name(c));
            for c in &children {
                if contender_seq(c, &[LOCK_NAME, READ_NAME]).is_none() && !is_lease_name(c) {
                    stack.push(if p == "/" {
                        format!("/{c}")
                    } else {
                        format!("{p}/{c}")
                    });
                }
            }
            if is_lock && !p.ends_with(SEM_LOCK_SUFFIX) {
                out.push((p, children));
            }
        }
        out.sort();
        Ok(out)
    }

    fn status_of(
        s: &Session,
        cx: &Ctx,
        target: &Target,
        path: &str,
        children: Option<Vec<String>>,
    ) -> Result<Status> {
        let mut st = Status::new(target);
        let children = match children {
            Some(c) => c,
            None => match s.get_children(path, None, cx.op_budget()) {
                Ok(c) => c,
                Err(ZkError::Api(proto::ERR_NO_NODE)) => return Ok(st),
                Err(e) => return Err(cx.err("reading the lock", e)),
            },
        };
        st.details.insert("path".into(), path.into());
        let leases: Vec<&String> = children.iter().filter(|c| is_lease_name(c)).collect();
        // A semaphore node stores its max_leases (kazoo); a lock node has no data.
        let limit = if leases.is_empty() && !contenders(&children).is_empty() {
            None
        } else {
            s.get_data(path, None, cx.op_budget())
                .ok()
                .and_then(|(d, _)| String::from_utf8_lossy(&d).trim().parse::<i64>().ok())
        };
        let holders: Vec<String> = if !leases.is_empty() || limit.is_some() {
            if let Some(l) = limit {
                st.limit = Some(l.clamp(0, u32::MAX as i64) as u32);
                st.available = Some((l - leases.len() as i64).max(0));
            }
            st.details.insert("kind".into(), "semaphore".into());
            let waiting = s
                .get_children(&format!("{path}{SEM_LOCK_SUFFIX}"), None, cx.op_budget())
                .map(|c| contenders(&c).len())
                .unwrap_or(0);
            st.details.insert("waiting".into(), waiting.into());
            leases.into_iter().cloned().collect()
        } else {
            let all = contenders(&children);
            let waiting = all.iter().filter(|(_, h)| !h).count();
            st.details.insert("waiting".into(), waiting.into());
            st.limit = Some(1);
            all.into_iter()
                .filter(|(_, h)| *h)
                .map(|(c, _)| c)
                .collect()
        };
        let mut nodes = Vec::new();
        for h in holders {
            let full = format!("{path}/{h}");
            let Ok((data, stat)) = s.get_data(&full, None, cx.op_budget()) else {
                continue;
            };
            st.held = true;
            let mut node = serde_json::Map::new();
            node.insert("node".into(), h.clone().into());
            node.insert("czxid".into(), stat.czxid.into());
            node.insert(
                "ephemeral_owner".into(),
                format!("0x{:x}", stat.ephemeral_owner).into(),
            );
            match parse_record(&data) {
                Some((mut r, _)) => {
                    r.token = stat.czxid as u64;
                    let mut view = HolderView::from(r);
                    if stat.ephemeral_owner != 0 && view.state == Liveness::Dead {
                        // The process is gone; the node lives until its session expires.
                        view.state = Liveness::Dead;
                    }
                    st.holders.push(view);
                }
                None => {
                    node.insert(
                        "data".into(),
                        String::from_utf8_lossy(&data)
                            .chars()
                            .take(200)
                            .collect::<String>()
                            .into(),
                    );
                }
            }
            nodes.push(serde_json::Value::Object(node));
        }
        st.details.insert("nodes".into(), nodes.into());
        Ok(st)
    }

    /// The default context for name-less operations (gc): ZKHOSTS, LOCKFN_ZK_AUTH.
    fn default_ctx() -> Result<(Target, Ctx)> {
        let t = Target::parse_allow_empty("zk:")?;
        let cx = Ctx::new(&t, None)?;
        Ok((t, cx))
    }
}

impl super::Backend for ZkBackend {
    fn scheme(&self) -> &'static str {
        "zk"
    }

    fn aliases(&self) -> &'static [&'static str] {
        &["zookeeper"]
    }

    fn allows_slash(&self) -> bool {
        true
    }

    fn locate(&self, _text: &str, name: &str) -> Result<Located> {
        Place::named(name)
    }

    fn locate_url(&self, text: &str, rest: &str) -> Result<Located> {
        Place::from_url(text, rest)
    }

    /// A persistent lock is a persistent node: it does not end with its session.
    fn persistent_lifetime(&self, _target: &Target, _opts: &Options) -> super::Lifetime {
        super::Lifetime::until_released(
            ", or when its node is deleted (a persistent ZooKeeper node outlives the session \
             that made it)",
        )
    }

    fn acquire(&self, target: &Target, opts: &Options, wait: &Wait) -> Result<Box<dyn Held>> {
        let cx = Ctx::new(target, opts.ttl)?;
        // Every request of the acquisition (connect, handshake, each round trip) ends by the
        // wait's hard deadline; clean-up of a failed wait by its cleanup deadline.
        cx.set_deadline(wait.hard_deadline());
        if opts.limit > 1 {
            self.acquire_semaphore(&cx, target, opts, wait)
        } else {
            self.acquire_lock(&cx, target, opts, wait)
        }
    }

    fn status(&self, target: &Target) -> Result<Status> {
        let cx = Ctx::new(target, None)?;
        let s = cx.connected(cx.cfg.timeout)?;
        Self::status_of(&s, &cx, target, &cx.path, None)
    }

    fn list(&self, prefix: &Target) -> Result<Vec<Status>> {
        let cx = Ctx::new(prefix, None)?;
        let s = cx.connected(cx.cfg.timeout)?;
        let (root, base) = if prefix.is_url() {
            (cx.path.clone(), String::new())
        } else {
            // Walk from the deepest complete directory of the prefix.
            let dir = prefix.name().rsplit_once('/').map(|(d, _)| d).unwrap_or("");
            let root = if dir.is_empty() {
                "/lockfn".to_string()
            } else {
                format!("/lockfn/{dir}")
            };
            (root, "/lockfn/".to_string())
        };
        let mut out = Vec::new();
        for (path, children) in Self::walk(&s, &cx, &root)? {
            let t = if prefix.is_url() {
                let Ok(place) = prefix.place::<Place>() else {
                    continue;
                };
                Target::from_located(prefix.service(), place.at(&path))
            } else {
                let Some(name) = path.strip_prefix(&base) else {
                    continue;
                };
                if !name.starts_with(prefix.name()) {
                    continue;
                }
                match prefix.with_name(name) {
                    Ok(t) => t,
                    Err(_) => continue,
                }
            };
            out.push(Self::status_of(&s, &cx, &t, &path, Some(children))?);
        }
        Ok(out)
    }

    fn gc(&self, scope: &GcScope) -> Result<u32> {
        let (_, cx) = Self::default_ctx()?;
        let s = cx.connected(cx.cfg.timeout)?;
        let dir = scope.prefix.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
        let root = if dir.is_empty() {
            "/lockfn".to_string()
        } else {
            format!("/lockfn/{dir}")
        };
        let mut removed = 0;
        for (path, children) in Self::walk(&s, &cx, &root)? {
            let name = path.strip_prefix("/lockfn/").unwrap_or("");
            if !name.starts_with(&scope.prefix) {
                continue;
            }
            for c in children {
                let full = format!("{path}/{c}");
                let Ok((data, stat)) = s.get_data(&full, None, cx.op_budget()) else {
                    continue;
                };
                if stat.ephemeral_owner != 0 {
                    continue; // its session decides
                }
                let Some((r, waiting)) = parse_record(&data) else {
                    continue; // not ours (lockpick, kazoo): nothing to prove
                };
                if r.liveness() == Liveness::Dead && (!r.persist || waiting) {
                    match s.delete(&full, stat.version, cx.op_budget()) {
                        Ok(()) => removed += 1,
                        Err(ZkError::Api(_)) => {}
                        Err(e) => return Err(cx.err("removing a dead holder's node", e)),
                    }
                }
            }
        }
        Ok(removed)
    }

    fn release_named(&self, target: &Target, force: bool) -> Result<u32> {
        let cx = Ctx::new(target, None)?;
        let s = cx.connected(cx.cfg.timeout)?;
        let st = Self::status_of(&s, &cx, target, &cx.path, None)?;
        let nodes: Vec<String> = st
            .details
            .get("nodes")
            .and_then(|n| n.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|n| n.get("node").and_then(|x| x.as_str()).map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let me = hostname();
        let mut released = 0;
        for n in nodes {
            let full = format!("{}/{n}", cx.path);
            let Ok((data, stat)) = s.get_data(&full, None, cx.op_budget()) else {
                continue;
            };
            let ours = stat.ephemeral_owner == 0
                && parse_record(&data).is_some_and(|(r, _)| r.persist && r.host == me);
            if force || ours {
                match s.delete(&full, -1, cx.op_budget()) {
                    Ok(()) => released += 1,
                    Err(ZkError::Api(proto::ERR_NO_NODE)) => {}
                    Err(e) => return Err(cx.err("releasing", e)),
                }
            }
        }
        if released == 0 {
            let why = if force {
                "nothing holds it"
            } else if st.held {
                "it is not a persistent lock of this host (a lock held by a running process is \
                 released by that process; --force takes it anyway)"
            } else {
                "nothing holds it"
            };
            return Err(Error::new(
                ErrorKind::NotHeld,
                format!("{target} was not released: {why}"),
            ));
        }
        Ok(released)
    }

    fn update_named(&self, target: &Target) -> Result<()> {
        let cx = Ctx::new(target, None)?;
        let s = cx.connected(cx.cfg.timeout)?;
        let st = Self::status_of(&s, &cx, target, &cx.path, None)?;
        let me = hostname();
        if st
            .holders
            .iter()
            .any(|h| h.record.persist && h.record.host == me)
        {
            Ok(()) // a persistent node never expires: nothing to renew
        } else {
            Err(Error::new(
                ErrorKind::NotHeld,
                format!("{target} has no persistent holder of this host to update"),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(x: &[&str]) -> Vec<String> {
        x.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn predecessor_follows_kazoo() {
        let c = v(&[
            "a__lock__0000000001",
            "b__rlock__0000000002",
            "c__rlock__0000000003",
            "d__lock__0000000004",
            "junk",
        ]);
        assert_eq!(predecessor(&c, "a__lock__0000000001", WRITER), None);
        assert_eq!(
            predecessor(&c, "b__rlock__0000000002", READER),
            Some("a__lock__0000000001")
        );
        assert_eq!(
            predecessor(&c, "c__rlock__0000000003", READER),
            Some("a__lock__0000000001")
        );
        assert_eq!(
            predecessor(&c, "d__lock__0000000004", WRITER),
            Some("c__rlock__0000000003")
        );
        let h = contenders(&c);
        assert_eq!(h.iter().filter(|x| x.1).count(), 1);
        let r = v(&[
            "b__rlock__0000000002",
            "c__rlock__0000000003",
            "d__lock__0000000004",
        ]);
        let h = contenders(&r);
        assert_eq!(
            h.iter().map(|x| x.1).collect::<Vec<_>>(),
            vec![true, true, false]
        );
    }

    #[test]
    fn guid_is_32_hex() {
        let g = guid();
        assert!(is_lease_name(&g), "{g}");
        assert_ne!(g, guid());
    }

    #[test]
    fn record_round_trip_with_waiting_marker() {
        let r = HolderRecord::for_self(Some("x"));
        let (back, waiting) = parse_record(&node_data(&r, true)).unwrap();
        assert!(waiting);
        assert_eq!(back, r);
        assert!(parse_record(b"kazoo identifier").is_none());
    }
}
