//! A small synchronous ZooKeeper client: one TCP connection and one reader thread per session.
//!
//! Why not an async client crate: the C ABI promises that a forked child can use `zk:` with a
//! fresh session while the parent's stays untouched. Async runtimes built on a process-global
//! reactor (async-io's epoll instance and its driver thread, which holds the reactor lock while
//! it sleeps in epoll_wait) cannot do that: a child inherits the parent's epoll instance and a
//! reactor lock that no thread will ever release. Here every session owns its socket and its
//! thread; a child builds new ones and never touches (nor drops) the parent's.
//!
//! What it does: session establishment and re-establishment on another server of the ensemble
//! with the same session id (so ephemeral nodes survive a server or leader loss within the
//! session timeout), pings at a third of the negotiated timeout, digest auth re-sent on every
//! connection, one-shot watches delivered to waiters through pipes (so a waiter can poll its
//! watch and a cancel fd together), and per-process request counters for tests.
//!
//! This file holds the session and its requests; conn.rs its connection thread.
//!
//! Watches are not re-registered with SetWatches after a reconnect; instead every waiter is
//! woken on each connection change and re-checks (what kazoo's lock recipe does anyway).

use super::proto::{self, Stat, R, W};
use std::collections::HashMap;
use std::io::{self, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ZkError {
    /// The server answered with this error code.
    Api(i32),
    /// The connection broke after the request was sent: it may or may not have been applied.
    ConnectionLoss,
    /// The session expired: its ephemeral nodes are gone.
    Expired,
    /// No server answered within the budget; the last connection error.
    Unreachable(String),
    /// Connected, but no answer to the request within the caller's deadline (a server that
    /// answers pings only, or is silent, or trickles its reply). The request may still apply.
    Timeout,
}

/// Process-wide request counters (for tests and benches: feature `test-counters`).
#[cfg(feature = "test-counters")]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub requests: u64,
    pub get_children: u64,
    pub exists: u64,
    pub get_data: u64,
    pub creates: u64,
    pub deletes: u64,
    /// Watch notifications received from the server.
    pub watch_events: u64,
    /// Sessions established (new session ids), and connections made.
    pub sessions: u64,
    pub connections: u64,
}

static C_REQUESTS: AtomicU64 = AtomicU64::new(0);
static C_CHILDREN: AtomicU64 = AtomicU64::new(0);
static C_EXISTS: AtomicU64 = AtomicU64::new(0);
static C_GET: AtomicU64 = AtomicU64::new(0);
static C_CREATE: AtomicU64 = AtomicU64::new(0);
static C_DELETE: AtomicU64 = AtomicU64::new(0);
pub(super) static C_EVENTS: AtomicU64 = AtomicU64::new(0);
pub(super) static C_SESSIONS: AtomicU64 = AtomicU64::new(0);
pub(super) static C_CONNS: AtomicU64 = AtomicU64::new(0);

#[cfg(feature = "test-counters")]
pub fn counters() -> Counters {
    let g = |c: &AtomicU64| c.load(Ordering::SeqCst);
    Counters {
        requests: g(&C_REQUESTS),
        get_children: g(&C_CHILDREN),
        exists: g(&C_EXISTS),
        get_data: g(&C_GET),
        creates: g(&C_CREATE),
        deletes: g(&C_DELETE),
        watch_events: g(&C_EVENTS),
        sessions: g(&C_SESSIONS),
        connections: g(&C_CONNS),
    }
}

/// A wake-up channel for one waiter: a non-blocking pipe, so that a waiter can poll it
/// together with its cancel fd.
pub struct Notify {
    r: OwnedFd,
    w: OwnedFd,
}

impl Notify {
    pub fn new() -> io::Result<Arc<Notify>> {
        let (r, w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
                .map_err(io::Error::from)?;
        Ok(Arc::new(Notify { r, w }))
    }

    pub fn fire(&self) {
        // A full pipe is fired already.
        let _ = nix::unistd::write(&self.w, &[1u8]);
    }

    /// Empty the pipe; true if it had been fired.
    pub fn drain(&self) -> bool {
        let mut buf = [0u8; 64];
        let mut any = false;
        while let Ok(n) = nix::unistd::read(&self.r, &mut buf) {
            if n == 0 {
                break;
            }
            any = true;
        }
        any
    }
}

/// The read end, for poll(2) with a cancel fd.
impl AsFd for Notify {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.r.as_fd()
    }
}

/// Which of our watch tables a request registers in.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum WatchKind {
    /// exists / getData: fires on create, delete, data change of the node.
    Data,
    /// getChildren: fires on a child added or removed, or the node deleted.
    Child,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Connecting,
    Connected,
    Expired,
}

#[derive(Clone)]
pub struct Config {
    pub hosts: Vec<String>,
    /// `user:password` for digest auth.
    pub auth: Option<String>,
    pub timeout: Duration,
}

pub(super) type Reply = Result<(i32, Vec<u8>), ZkError>;

pub(super) struct St {
    pub state: State,
    pub writer: Option<TcpStream>,
    /// Connection generation: grows with every (re)connection.
    pub gen: u64,
    pub session_id: i64,
    pub passwd: Vec<u8>,
    pub negotiated: Duration,
    pub last_zxid: i64,
    pub xid: i32,
    pub pending: HashMap<i32, mpsc::Sender<Reply>>,
    pub data_watches: HashMap<String, Vec<Weak<Notify>>>,
    pub child_watches: HashMap<String, Vec<Weak<Notify>>>,
    pub state_watchers: Vec<Weak<Notify>>,
    /// When we last heard from a server of this session.
    pub last_heard: Instant,
    pub last_sent: Instant,
    pub last_error: String,
}

pub(super) struct Shared {
    pub cfg: Config,
    pub st: Mutex<St>,
    pub cv: Condvar,
}

/// One ZooKeeper session, shared by every lock of the process on the same ensemble.
pub struct Session {
    sh: Arc<Shared>,
    /// Contender nodes a failed or cancelled wait could not delete (connection trouble):
    /// deleted at the next chance, so they never end up holding the lock for nobody.
    orphans: Mutex<Vec<String>>,
}

pub(super) fn lock(m: &Mutex<St>) -> MutexGuard<'_, St> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(super) fn fire_all(map: &mut HashMap<String, Vec<Weak<Notify>>>) {
    for (_, v) in map.drain() {
        for w in v {
            if let Some(n) = w.upgrade() {
                n.fire();
            }
        }
    }
}

pub(super) fn fire_path(map: &mut HashMap<String, Vec<Weak<Notify>>>, path: &str) {
    if let Some(v) = map.remove(path) {
        for w in v {
            if let Some(n) = w.upgrade() {
                n.fire();
            }
        }
    }
}

impl Session {
    /// Start a session: the reader thread connects in the background.
    pub fn start(cfg: Config) -> io::Result<Session> {
        let now = Instant::now();
        let sh = Arc::new(Shared {
            st: Mutex::new(St {
                state: State::Connecting,
                writer: None,
                gen: 0,
                session_id: 0,
                passwd: vec![0u8; 16],
                negotiated: cfg.timeout,
                last_zxid: 0,
                xid: 1,
                pending: HashMap::new(),
                data_watches: HashMap::new(),
                child_watches: HashMap::new(),
                state_watchers: Vec::new(),
                last_heard: now,
                last_sent: now,
                last_error: "no server has answered yet (connecting)".into(),
            }),
            cv: Condvar::new(),
            cfg,
        });
        let s2 = sh.clone();
        std::thread::Builder::new()
            .name("lockfn-zk".into())
            .spawn(move || super::conn::run(s2))?;
        Ok(Session {
            sh,
            orphans: Mutex::new(Vec::new()),
        })
    }

    pub fn add_orphan(&self, path: String) {
        self.orphans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(path);
    }

    /// Try to delete the orphans (bounded by `budget` per node); keep those that failed on
    /// the connection.
    pub fn reap_orphans(&self, budget: Duration) {
        let list = std::mem::take(&mut *self.orphans.lock().unwrap_or_else(|e| e.into_inner()));
        for p in list {
            match self.delete(&p, -1, budget) {
                Ok(()) | Err(ZkError::Api(_)) | Err(ZkError::Expired) => {}
                Err(_) => self.add_orphan(p),
            }
        }
    }

    pub fn state(&self) -> State {
        lock(&self.sh.st).state
    }

    pub fn session_id(&self) -> i64 {
        lock(&self.sh.st).session_id
    }

    pub fn negotiated(&self) -> Duration {
        lock(&self.sh.st).negotiated
    }

    pub fn gen(&self) -> u64 {
        lock(&self.sh.st).gen
    }

    /// How long since a server of this session last answered us (zero while connected).
    pub fn silent_for(&self) -> Duration {
        let st = lock(&self.sh.st);
        match st.state {
            State::Connected => Duration::ZERO,
            _ => st.last_heard.elapsed(),
        }
    }

    /// Wake `n` on every connection change (lost, re-established, expired).
    pub fn watch_state(&self, n: &Arc<Notify>) {
        let mut st = lock(&self.sh.st);
        st.state_watchers.retain(|w| w.strong_count() > 0);
        st.state_watchers.push(Arc::downgrade(n));
    }

    /// Wait until connected (or expired, or the budget runs out).
    pub fn wait_connected(&self, budget: Duration) -> Result<(), ZkError> {
        let deadline = Instant::now() + budget;
        let mut st = lock(&self.sh.st);
        loop {
            match st.state {
                State::Connected => return Ok(()),
                State::Expired => return Err(ZkError::Expired),
                State::Connecting => {}
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ZkError::Unreachable(st.last_error.clone()));
            }
            st = self
                .sh
                .cv
                .wait_timeout(st, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }

    /// Send one request and wait for its answer. `budget` bounds the whole call: the wait for
    /// a connection and the wait for the answer (never longer than twice the session timeout).
    fn call(
        &self,
        op: i32,
        body: &[u8],
        budget: Duration,
        watch: Option<(WatchKind, &str, &Arc<Notify>)>,
    ) -> Result<Vec<u8>, ZkError> {
        let deadline = Instant::now().checked_add(budget);
        self.wait_connected(budget)?;
        let left = deadline.map_or(budget, |d| d.saturating_duration_since(Instant::now()));
        if left.is_zero() {
            return Err(ZkError::Timeout);
        }
        let (tx, rx) = mpsc::channel();
        let reply_bound;
        let by_deadline;
        let sent_xid;
        {
            let mut st = lock(&self.sh.st);
            if st.state != State::Connected {
                return Err(ZkError::ConnectionLoss);
            }
            let xid = st.xid;
            st.xid = if st.xid >= i32::MAX - 1 {
                1
            } else {
                st.xid + 1
            };
            let mut frame = W::new();
            frame.i32(0).i32(xid).i32(op);
            frame.0.extend_from_slice(body);
            let len = (frame.0.len() - 4) as i32;
            frame.0[..4].copy_from_slice(&len.to_be_bytes());
            if let Some((kind, path, n)) = watch {
                let map = match kind {
                    WatchKind::Data => &mut st.data_watches,
                    WatchKind::Child => &mut st.child_watches,
                };
                let v = map.entry(path.to_string()).or_default();
                v.retain(|w| w.strong_count() > 0);
                v.push(Arc::downgrade(n));
            }
            st.pending.insert(xid, tx);
            let Some(w) = st.writer.as_mut() else {
                st.pending.remove(&xid);
                return Err(ZkError::ConnectionLoss);
            };
            if w.write_all(&frame.0).is_err() {
                let _ = w.shutdown(Shutdown::Both);
                st.pending.remove(&xid);
                return Err(ZkError::ConnectionLoss);
            }
            st.last_sent = Instant::now();
            let session_bound = st.negotiated.max(Duration::from_secs(2)) * 2;
            by_deadline = left < session_bound;
            reply_bound = session_bound.min(left);
            sent_xid = xid;
        }
        C_REQUESTS.fetch_add(1, Ordering::Relaxed);
        let counter = match op {
            proto::OP_GET_CHILDREN => Some(&C_CHILDREN),
            proto::OP_EXISTS => Some(&C_EXISTS),
            proto::OP_GET_DATA => Some(&C_GET),
            proto::OP_CREATE2 => Some(&C_CREATE),
            proto::OP_DELETE => Some(&C_DELETE),
            _ => None,
        };
        if let Some(c) = counter {
            c.fetch_add(1, Ordering::Relaxed);
        }
        // The reader fails every pending request when the connection breaks, so this bound
        // only guards against a server that keeps the connection but never answers (or
        // answers pings only), and keeps the caller's deadline.
        match rx.recv_timeout(reply_bound) {
            Ok(Ok((0, body))) => Ok(body),
            Ok(Ok((proto::ERR_SESSION_EXPIRED, _))) => Err(ZkError::Expired),
            Ok(Ok((err, _))) => Err(ZkError::Api(err)),
            Ok(Err(e)) => Err(e),
            Err(_) => {
                lock(&self.sh.st).pending.remove(&sent_xid);
                if by_deadline {
                    Err(ZkError::Timeout)
                } else {
                    Err(ZkError::ConnectionLoss)
                }
            }
        }
    }

    pub fn create(
        &self,
        path: &str,
        data: &[u8],
        acl: &[proto::Acl],
        mode: i32,
        budget: Duration,
    ) -> Result<(String, Stat), ZkError> {
        let mut w = W::new();
        w.str(path).buf(data).acls(acl).i32(mode);
        let body = self.call(proto::OP_CREATE2, &w.0, budget, None)?;
        let mut r = R::new(&body);
        let p = r.string().map_err(|_| ZkError::Api(-5))?;
        let stat = r.stat().map_err(|_| ZkError::Api(-5))?;
        Ok((p, stat))
    }

    pub fn delete(&self, path: &str, version: i32, budget: Duration) -> Result<(), ZkError> {
        let mut w = W::new();
        w.str(path).i32(version);
        self.call(proto::OP_DELETE, &w.0, budget, None).map(|_| ())
    }

    /// Stat of `path`, None if it does not exist. With `watch`, `n` fires when the node is
    /// created, changed or deleted.
    pub fn exists(
        &self,
        path: &str,
        watch: Option<&Arc<Notify>>,
        budget: Duration,
    ) -> Result<Option<Stat>, ZkError> {
        let mut w = W::new();
        w.str(path).bool(watch.is_some());
        match self.call(
            proto::OP_EXISTS,
            &w.0,
            budget,
            watch.map(|n| (WatchKind::Data, path, n)),
        ) {
            Ok(body) => R::new(&body).stat().map(Some).map_err(|_| ZkError::Api(-5)),
            Err(ZkError::Api(proto::ERR_NO_NODE)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn get_data(
        &self,
        path: &str,
        watch: Option<&Arc<Notify>>,
        budget: Duration,
    ) -> Result<(Vec<u8>, Stat), ZkError> {
        let mut w = W::new();
        w.str(path).bool(watch.is_some());
        let body = self.call(
            proto::OP_GET_DATA,
            &w.0,
            budget,
            watch.map(|n| (WatchKind::Data, path, n)),
        )?;
        let mut r = R::new(&body);
        let data = r.buf().map_err(|_| ZkError::Api(-5))?;
        let stat = r.stat().map_err(|_| ZkError::Api(-5))?;
        Ok((data, stat))
    }

    pub fn set_data(&self, path: &str, data: &[u8], budget: Duration) -> Result<Stat, ZkError> {
        let mut w = W::new();
        w.str(path).buf(data).i32(-1);
        let body = self.call(proto::OP_SET_DATA, &w.0, budget, None)?;
        R::new(&body).stat().map_err(|_| ZkError::Api(-5))
    }

    pub fn get_children(
        &self,
        path: &str,
        watch: Option<&Arc<Notify>>,
        budget: Duration,
    ) -> Result<Vec<String>, ZkError> {
        let mut w = W::new();
        w.str(path).bool(watch.is_some());
        let body = self.call(
            proto::OP_GET_CHILDREN,
            &w.0,
            budget,
            watch.map(|n| (WatchKind::Child, path, n)),
        )?;
        R::new(&body).strings().map_err(|_| ZkError::Api(-5))
    }
}

/// Sessions of this process, by (hosts, auth, timeout). A forked child starts a new table and
/// leaks the parent's (never touching its sockets or threads, which the child does not have).
/// Taken by the atfork prepare handler (crate::fork), so a child never finds it locked.
pub(crate) static SESSIONS: Mutex<SessionTable> = Mutex::new(None);
pub(crate) type SessionTable = Option<(u32, HashMap<String, Arc<Session>>)>;

/// Why the session of `cfg` last lost or failed a connection (for messages), if there is one.
pub fn last_error(cfg: &Config) -> Option<String> {
    let g = SESSIONS.lock().unwrap_or_else(|e| e.into_inner());
    let (pid, map) = g.as_ref()?;
    if *pid != std::process::id() {
        return None;
    }
    let s = map.get(&session_key(cfg))?;
    let st = lock(&s.sh.st);
    Some(st.last_error.clone())
}

fn session_key(cfg: &Config) -> String {
    format!(
        "{}\u{0}{}\u{0}{}",
        cfg.hosts.join(","),
        cfg.auth.as_deref().unwrap_or(""),
        cfg.timeout.as_millis()
    )
}

pub fn session(cfg: &Config) -> io::Result<Arc<Session>> {
    let key = session_key(cfg);
    let pid = std::process::id();
    let mut g = SESSIONS.lock().unwrap_or_else(|e| e.into_inner());
    if g.as_ref().is_some_and(|(p, _)| *p != pid) {
        if let Some(old) = g.take() {
            std::mem::forget(old);
        }
    }
    let (_, map) = g.get_or_insert_with(|| (pid, HashMap::new()));
    if let Some(s) = map.get(&key) {
        if s.state() != State::Expired {
            return Ok(s.clone());
        }
    }
    let s = Arc::new(Session::start(cfg.clone())?);
    map.insert(key, s.clone());
    Ok(s)
}
