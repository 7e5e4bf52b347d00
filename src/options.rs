//! How to acquire a lock: [`Options`], the same for every service.

use crate::{Error, ErrorKind, Result};
use std::os::fd::RawFd;
use std::time::Duration;

/// How to acquire a lock. `Options::default()` is a blocking, exclusive, non-reentrant mutex.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Options {
    /// None: wait forever; `Some(ZERO)`: try once; `Some(d)`: wait at most `d`.
    pub timeout: Option<Duration>,
    /// How long the lock survives without renewal, where the service has such a thing
    /// (Consul session TTL, ZooKeeper session timeout). None: the service's default.
    pub ttl: Option<Duration>,
    /// Holders at once: 1 is a mutex, N > 1 a counting semaphore.
    pub limit: u32,
    /// A read lock: many shared holders, or one exclusive.
    pub shared: bool,
    /// Free text stored in the holder record.
    pub holder: Option<String>,
    /// A second acquisition by the process that already holds the lock succeeds at once.
    pub reentrant: bool,
    /// The lock is meant to outlive this process (`Lock::detach`); it is never recovered as
    /// a dead holder's.
    pub persist: bool,
    /// Renew in a background thread while held; a loss is reported by `update()`.
    pub auto_renew: bool,
    /// Permission bits for objects the lock creates (sem: the semaphore and its record).
    pub mode: u32,
    /// Readable fd = stop waiting (`Canceled`). Not owned.
    pub cancel_fd: Option<RawFd>,
    /// Consul lock-delay; None: the service's default.
    pub lock_delay: Option<Duration>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            timeout: None,
            ttl: None,
            limit: 1,
            shared: false,
            holder: None,
            reentrant: false,
            persist: false,
            auto_renew: false,
            mode: 0o600,
            cancel_fd: None,
            lock_delay: None,
        }
    }
}

impl Options {
    /// Timeout in the C convention: `< 0` forever, `0` try once, `> 0` seconds.
    pub fn timeout_secs(secs: f64) -> Result<Option<Duration>> {
        if secs.is_nan() {
            return Err(Error::new(ErrorKind::Invalid, "timeout is NaN"));
        }
        if secs < 0.0 || secs.is_infinite() {
            return Ok(None);
        }
        Duration::try_from_secs_f64(secs).map(Some).map_err(|_| {
            Error::new(
                ErrorKind::Invalid,
                format!("timeout {secs} s is out of range"),
            )
        })
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.limit == 0 {
            return Err(Error::new(ErrorKind::Invalid, "limit must be at least 1"));
        }
        if self.limit > 1 && self.shared {
            return Err(Error::new(
                ErrorKind::Invalid,
                "limit > 1 (semaphore) and shared (read lock) cannot be combined",
            ));
        }
        if self.mode & !0o777 != 0 {
            return Err(Error::new(
                ErrorKind::Invalid,
                format!("mode {:o} has bits outside 0777", self.mode),
            ));
        }
        if let Some(h) = &self.holder {
            if h.contains('\0') {
                return Err(Error::new(ErrorKind::Invalid, "holder text contains NUL"));
            }
        }
        Ok(())
    }
}
