//! The backend trait: the spine every lock service plugs into.
//!
//! A [`Backend`] turns a [`Target`] into a held lock ([`Held`]) and answers questions about
//! locks by name (status, list, gc, release/update of persistent locks). Everything a caller
//! sees — reentrancy, fork safety, auto-renewal, the C ABI, the CLI — is built once in lib.rs
//! on top of these two traits, so a new service only implements them.

use crate::holder::{HolderRecord, Liveness};
use crate::target::Located;
use crate::{Error, ErrorKind, Options, Result, Target};
use serde::Serialize;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

pub(crate) mod consul;
pub(crate) mod file;
pub(crate) mod flock;
pub(crate) mod pmxcfs;
pub(crate) mod sem;
pub(crate) mod zookeeper;

/// Does a service take bare names (`NAME` without a scheme) when `LOCKFN_BACKEND` is unset?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BareNames {
    /// Never.
    No,
    /// On this host, before any [`BareNames::Always`] service (pmxcfs on a Proxmox node).
    Here,
    /// Wherever no service claims them first (sem: the embedded default).
    Always,
}

/// A lock service. A new one implements this trait in its own folder under `src/backend/`
/// and adds one line to the registry in `src/service.rs`; nothing else names it.
pub trait Backend: Sync {
    /// The scheme of its targets: `sem` in `sem:NAME`.
    fn scheme(&self) -> &'static str;

    /// Other spellings of the scheme (`zookeeper` for `zk`).
    fn aliases(&self) -> &'static [&'static str] {
        &[]
    }

    /// May lock names hold `/` (a hierarchy)?
    fn allows_slash(&self) -> bool {
        false
    }

    /// Check a non-empty name written after `scheme:` (`text` is the whole target, for
    /// messages). Default: [`crate::target::validate_name`], at most
    /// [`crate::target::MAX_NAME`] bytes, `/` only when [`Backend::allows_slash`].
    fn check_name(&self, text: &str, name: &str) -> Result<()> {
        crate::target::validate_name(text, name, self.allows_slash(), crate::target::MAX_NAME)
    }

    /// Whether bare names are this service's (see [`BareNames`]).
    fn bare_names(&self) -> BareNames {
        BareNames::No
    }

    /// Whether the service lives on this host only: `lockfn gc` without a scope cleans it.
    fn is_local(&self) -> bool {
        false
    }

    /// Where `scheme:NAME` lives: `name` is already checked against
    /// [`crate::target::validate_name`] (or empty, for the CLI's `sem:`). The service's
    /// configuration (environment, defaults) is read here, once per target.
    fn locate(&self, text: &str, name: &str) -> Result<Located>;

    /// Where `scheme://REST` lives (`text` is the whole target, for messages).
    fn locate_url(&self, text: &str, _rest: &str) -> Result<Located> {
        Err(crate::target::invalid(
            text,
            &format!(
                "{}: has no URL form (write {}:NAME)",
                self.scheme(),
                self.scheme()
            ),
        ))
    }

    /// Take the lock named by `target`, waiting as `wait` says. Returns `Busy` when the wait
    /// ends without the lock, `Canceled` when the cancel fd became readable.
    fn acquire(&self, target: &Target, opts: &Options, wait: &Wait) -> Result<Box<dyn Held>>;

    /// Who holds `target` now.
    fn status(&self, target: &Target) -> Result<Status>;

    /// Every lock under `prefix` (a target whose name may be empty: all of this service).
    fn list(&self, prefix: &Target) -> Result<Vec<Status>>;

    /// Clean what dead holders on this host left behind. Returns how many items were removed.
    fn gc(&self, scope: &GcScope) -> Result<u32>;

    /// Release a lock by name, not through a handle: a persistent lock of this host, or with
    /// `force` whatever holds it (operator override). Returns how many slots were released;
    /// `NotHeld` when there was nothing to release.
    fn release_named(&self, target: &Target, force: bool) -> Result<u32>;

    /// Renew a persistent lock by name (`lockfn update`).
    fn update_named(&self, target: &Target) -> Result<()>;

    /// How long a persistent lock taken with `opts` lives (just after it was taken).
    fn persistent_lifetime(&self, _target: &Target, _opts: &Options) -> Lifetime {
        Lifetime::until_released("")
    }

    /// Operator release by regular expression over the locks under `within` (whose name may
    /// be empty): every held lock that matches is released as with `force`. Returns the
    /// released targets' canonical texts, sorted.
    fn release_matching(&self, within: &Target, _pattern: &str) -> Result<Vec<String>> {
        Err(Error::new(
            ErrorKind::Invalid,
            format!(
                "{}: release --match is not supported by {}",
                within,
                self.scheme()
            ),
        ))
    }
}

/// A held lock. Dropping it must NOT release the lock (a forked child drops the parent's
/// handles); lib.rs calls [`Held::release`] explicitly.
pub trait Held: Send {
    /// The fencing token: grows with every acquisition of the same lock.
    fn token(&self) -> u64;
    /// The holder record stored with the lock.
    fn record(&self) -> &HolderRecord;
    /// Renew (TTL, pmxcfs refresh) and check the lock is still ours: `Lost` if not.
    fn update(&mut self) -> Result<()>;
    /// Give the lock back.
    fn release(&mut self) -> Result<()>;
    /// Leave the lock in place for `lockfn release` to end (persistent locks).
    fn detach(&mut self) -> Result<()> {
        Ok(())
    }
    /// How often this lock must be renewed while held; None: never (it cannot expire).
    fn renew_interval(&self) -> Option<Duration> {
        None
    }
    /// How often a supervisor (`lockfn run`, `lockfn hold`) should call [`Held::check`] to
    /// notice a loss promptly, where that is cheaper than renewing; None: only at renewals.
    fn check_interval(&self) -> Option<Duration> {
        None
    }
    /// A cheap check that the lock is still ours (no renewal): `Lost` if not. Defaults to
    /// [`Held::update`].
    fn check(&mut self) -> Result<()> {
        self.update()
    }
}

/// What `gc` may touch (in the backend it is given to): only names starting with `prefix`.
#[derive(Debug, Clone)]
pub struct GcScope {
    pub prefix: String,
}

/// One lock as `status` and `list` report it.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub target: String,
    pub service: &'static str,
    pub held: bool,
    /// Slots of the lock (1 = mutex), where the service records it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// Free slots right now, where the service can tell (e.g. the semaphore's value).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub available: Option<i64>,
    pub holders: Vec<HolderView>,
    /// Service-specific facts (age of a pmxcfs directory, a session id, …).
    #[serde(skip_serializing_if = "serde_json::Map::is_empty")]
    pub details: serde_json::Map<String, serde_json::Value>,
}

impl Status {
    pub fn new(target: &Target) -> Status {
        Status {
            target: target.canonical(),
            service: target.service().as_str(),
            held: false,
            limit: None,
            available: None,
            holders: Vec::new(),
            details: serde_json::Map::new(),
        }
    }
}

/// A holder record with what this host can prove about it.
#[derive(Debug, Clone, Serialize)]
pub struct HolderView {
    #[serde(flatten)]
    pub record: HolderRecord,
    /// `persistent` for a persistent lock, else what can be proven about its process.
    pub state: Liveness,
    /// When the lock ends unless renewed (seconds since the Unix epoch), where the service
    /// has such a deadline and tells it (pmxcfs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires: Option<f64>,
}

impl From<HolderRecord> for HolderView {
    fn from(record: HolderRecord) -> HolderView {
        let state = if record.persist {
            Liveness::Persistent
        } else {
            record.liveness()
        };
        HolderView {
            record,
            state,
            expires: None,
        }
    }
}

/// How long a persistent lock lives: what `lockfn acquire --persist` states.
#[derive(Debug, Clone, Serialize)]
pub struct Lifetime {
    /// When it ends unless renewed (seconds since the Unix epoch); None: no deadline.
    pub expires: Option<f64>,
    /// How much one renewal (`lockfn update`, `lockfn keep`) extends it, in seconds.
    pub renewal: Option<f64>,
    /// What ends it, in words (for people; the README tables the same).
    pub ends: String,
}

impl Lifetime {
    /// A lock that lives until it is released, and what else can end it.
    pub fn until_released(also: &str) -> Lifetime {
        Lifetime {
            expires: None,
            renewal: None,
            ends: format!("when released (lockfn release){also}"),
        }
    }

    /// A lock that ends `ttl` after now unless renewed.
    pub fn expiring(ttl: Duration, ends: String) -> Lifetime {
        Lifetime {
            expires: Some(crate::holder::now_secs() + ttl.as_secs_f64()),
            renewal: Some(ttl.as_secs_f64()),
            ends,
        }
    }
}

/// The whole of a try-once against a remote service (connect, handshake, every request and
/// the clean-up of a failed attempt) ends within this. Documented in the README.
pub const TRY_ONCE_BUDGET: Duration = Duration::from_millis(1200);
/// A bounded wait's requests may run this far past its deadline (an answer in flight).
pub const DEADLINE_SLACK: Duration = Duration::from_millis(100);
/// A failed wait's clean-up (delete a contender node, destroy a session) gets this much more.
pub const CLEANUP_SLACK: Duration = Duration::from_millis(150);
/// Default bound on `status`, `list`, `gc`, `release`, `update` (and a held lock's renewal
/// or release) against a remote service; `LOCKFN_OP_TIMEOUT` (seconds) changes it.
pub const DEFAULT_OP_TIMEOUT: Duration = Duration::from_secs(5);

/// The bound on one operation that is not a wait (see [`DEFAULT_OP_TIMEOUT`]):
/// `LOCKFN_OP_TIMEOUT` seconds, 0.1 to 3600; `Invalid` naming the variable otherwise.
pub fn op_timeout() -> Result<Duration> {
    let Some(v) = std::env::var_os("LOCKFN_OP_TIMEOUT").filter(|v| !v.is_empty()) else {
        return Ok(DEFAULT_OP_TIMEOUT);
    };
    let text = v.to_string_lossy();
    match text.trim().parse::<f64>() {
        Ok(s) if (0.1..=3600.0).contains(&s) => Ok(Duration::from_secs_f64(s)),
        _ => Err(Error::new(
            ErrorKind::Invalid,
            format!(
                "LOCKFN_OP_TIMEOUT='{}' is not a number of seconds from 0.1 to 3600",
                crate::target::printable(&text)
            ),
        )),
    }
}

/// `now + op_timeout()`: the deadline of one operation that is not a wait.
pub fn op_deadline() -> Result<Instant> {
    let t = op_timeout()?;
    Ok(Instant::now().checked_add(t).unwrap_or_else(Instant::now))
}

/// How long to wait, and what stops the wait early. Shared by every backend so that timeouts
/// and cancellation mean the same everywhere.
#[derive(Debug, Clone)]
pub struct Wait {
    start: Instant,
    deadline: Option<Instant>,
    try_once: bool,
    cancel_fd: Option<RawFd>,
    timeout: Option<Duration>,
}

impl Wait {
    pub fn new(timeout: Option<Duration>, cancel_fd: Option<RawFd>) -> Wait {
        let start = Instant::now();
        Wait {
            start,
            // A timeout too long to add to the clock (1e19 s) is no deadline: wait forever.
            deadline: timeout.and_then(|t| start.checked_add(t)),
            try_once: timeout == Some(Duration::ZERO),
            cancel_fd,
            timeout,
        }
    }

    /// Try once, never wait.
    pub fn is_try_once(&self) -> bool {
        self.try_once
    }

    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The hard end of the whole call, server round trips included: for a try-once
    /// [`TRY_ONCE_BUDGET`] after the start, for a timeout its deadline plus
    /// [`DEADLINE_SLACK`] (a last answer in flight), for a wait forever None (each request is
    /// then bounded by its backend's own request timeout).
    pub fn hard_deadline(&self) -> Option<Instant> {
        if self.try_once {
            return self.start.checked_add(TRY_ONCE_BUDGET);
        }
        self.deadline.and_then(|d| d.checked_add(DEADLINE_SLACK))
    }

    /// Until when a failed or cancelled wait may clean up after itself (remove its contender
    /// node or session): [`CLEANUP_SLACK`] past the hard deadline, at most.
    pub fn cleanup_deadline(&self) -> Option<Instant> {
        self.hard_deadline()
            .and_then(|d| d.checked_add(CLEANUP_SLACK))
    }

    /// Time left; None = forever.
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    pub fn expired(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    pub fn cancel_fd(&self) -> Option<RawFd> {
        self.cancel_fd
    }

    /// `Canceled` if the cancel fd is readable (or closed/invalid: a caller's mistake must not
    /// turn a bounded wait into a busy loop).
    pub fn check_cancel(&self) -> Result<()> {
        match self.cancel_fd {
            Some(fd) if poll_readable(fd, 0) => Err(canceled()),
            _ => Ok(()),
        }
    }

    /// Sleep for `max` at most (never past the deadline), waking early with `Canceled` when
    /// the cancel fd becomes readable.
    pub fn pause(&self, max: Duration) -> Result<()> {
        let d = match self.remaining() {
            Some(r) => r.min(max),
            None => max,
        };
        match self.cancel_fd {
            Some(fd) => {
                if poll_readable(fd, d.as_millis().min(i32::MAX as u128) as i32) {
                    return Err(canceled());
                }
            }
            None => std::thread::sleep(d),
        }
        Ok(())
    }

    /// The `Busy` error for a wait that ended: says whether it was try-once or a timeout, and
    /// who holds the lock when known.
    pub fn busy(&self, target: &Target, held_by: Option<&HolderRecord>) -> Error {
        let who = held_by
            .map(|h| {
                let text = if h.holder.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", h.holder)
                };
                format!(": held by pid {} on {}{}", h.pid, h.host, text)
            })
            .unwrap_or_default();
        let how = match self.timeout {
            Some(t) if t.is_zero() => "is busy".to_string(),
            Some(t) => format!("timed out after {:.3} s", t.as_secs_f64()),
            None => "is busy".to_string(),
        };
        Error::new(ErrorKind::Busy, format!("lock {target} {how}{who}"))
    }
}

fn canceled() -> Error {
    Error::new(ErrorKind::Canceled, "waiting for the lock was canceled")
}

/// poll(2) one fd for readability; an invalid or hung-up fd counts as readable.
pub fn poll_readable(fd: RawFd, timeout_ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let deadline = Instant::now() + Duration::from_millis(timeout_ms.max(0) as u64);
    loop {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .as_millis()
            .min(i32::MAX as u128) as i32;
        let r = unsafe { libc::poll(&mut p, 1, if timeout_ms < 0 { -1 } else { left }) };
        if r > 0 {
            return p.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR | libc::POLLNVAL)
                != 0;
        }
        if r == 0 {
            return false;
        }
        if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return true;
        }
        if timeout_ms >= 0 && Instant::now() >= deadline {
            return false;
        }
    }
}
