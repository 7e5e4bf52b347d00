//! The per-target context every ZooKeeper operation runs in: which servers and node, the
//! credentials and ACL, the session, the caller's deadline that bounds every request, and the
//! mapping of client errors to lockfn errors that name the target and the servers.

use super::client::{self, Session, ZkError};
use super::place::Place;
use super::proto::{self, Acl};
use super::DEFAULT_SESSION_TIMEOUT;
use crate::backend::Wait;
use crate::holder::HolderRecord;
use crate::{Error, ErrorKind, Options, Result, Target};
use std::cell::Cell;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Everything about one target that the recipes need.
pub(super) struct Ctx {
    /// The target's canonical text, for messages.
    pub target: String,
    /// The servers, comma-separated, for messages.
    pub hosts: String,
    /// The lock's node.
    pub path: String,
    /// The digest user (never the password), for messages.
    user: Option<String>,
    pub cfg: client::Config,
    /// The ACL of the nodes we create.
    pub acl: Vec<Acl>,
    /// No request of this context runs past this (the caller's deadline: a wait's hard
    /// deadline, or `LOCKFN_OP_TIMEOUT` for status, list, gc, release, update).
    deadline: Cell<Option<Instant>>,
}

impl Ctx {
    pub fn new(target: &Target, ttl: Option<Duration>) -> Result<Ctx> {
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
            deadline: Cell::new(Some(crate::backend::op_deadline()?)),
        })
    }

    /// Bound every later request of this context by `d` (None: by the request's own bound).
    pub fn set_deadline(&self, d: Option<Instant>) {
        self.deadline.set(d);
    }

    /// `max`, cut to what is left before the deadline.
    pub fn left(&self, max: Duration) -> Duration {
        match self.deadline.get() {
            Some(d) => max.min(d.saturating_duration_since(Instant::now())),
            None => max,
        }
    }

    pub fn past_deadline(&self) -> bool {
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
    pub fn connected(&self, budget: Duration) -> Result<Arc<Session>> {
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

    /// The start of an acquisition: a connected session (within the first-contact budget of
    /// `wait`) and our holder record.
    pub fn begin(&self, opts: &Options, wait: &Wait) -> Result<(Arc<Session>, HolderRecord)> {
        let sess = self.connected(connect_budget(wait, self.cfg.timeout))?;
        let mut record = HolderRecord::for_self(opts.holder.as_deref());
        record.persist = opts.persist;
        Ok((sess, record))
    }

    /// One request waits at most this long (for a connection and its answer), and never past
    /// the deadline.
    pub fn op_budget(&self) -> Duration {
        self.left(self.cfg.timeout.max(Duration::from_secs(2)))
    }

    pub fn err(&self, what: &str, e: ZkError) -> Error {
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
            ZkError::Api(code @ (proto::ERR_INVALID_ACL | proto::ERR_AUTH_FAILED)) => Error::new(
                ErrorKind::Permission,
                format!(
                    "{}: {what}: ZooKeeper said: {} (check the credentials)",
                    self.target,
                    proto::err_name(code)
                ),
            ),
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
    pub fn ensure_path(
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

    /// Delete `path` (within `max`, never past the deadline); when no server answered, the
    /// session deletes it at its next chance.
    pub fn delete_or_orphan(&self, s: &Session, path: &str, max: Duration) {
        if let Err(ZkError::ConnectionLoss | ZkError::Unreachable(_) | ZkError::Timeout) =
            s.delete(path, -1, self.left(max))
        {
            s.add_orphan(path.to_string());
        }
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
