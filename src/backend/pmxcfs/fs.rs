//! pmxcfs operations on a lock directory, each small and named, each bounded in time.
//!
//! Identity of a lock directory rests on its mtime, never on `st_ino` (on the real pmxcfs
//! `st_ino` is libfuse's node number: it restarts at every pmxcfs start and is handed out again
//! for a directory re-made under the same name; see shared/PMXCFS.md). What pmxcfs guarantees,
//! read in pve-cluster's `src/pmxcfs/memdb.c` (`memdb_mtime`, `memdb_lock_expired`) and
//! `cfs-plug-memdb.c` (`cfs_plug_memdb_utimens`), and measured on a real pmxcfs:
//! - a lock directory's mtime (whole seconds) is set by pmxcfs at mkdir and by an accepted
//!   `utime(dir, t, t)`; pmxcfs refuses (EACCES) any `t` older than the current mtime, and an
//!   accepted one bumps the entry's version, which resets the in-memory lock time (even when
//!   `t` equals the current mtime);
//! - it expires a lock only on an unlock request made when `now - lock_time > TTL` (120 s,
//!   whole seconds), so a directory made after ours expired has an mtime of at least
//!   `M + TTL + 1`, where `M <= lock_time` is the last mtime we set;
//! - so `utime(dir, t, t)` with `M <= t <= M + TTL - 1` is a conditional refresh: pmxcfs
//!   accepts it on our incarnation (mtime `M`) and refuses it on any later one. Success both
//!   proves the directory is ours and makes it young again. That is [`refresh_if_ours`].
//!
//! Left open by pmxcfs itself (no compare-and-delete exists): an operator's forced removal
//! followed by a re-make within the same second as our last refresh carries the same mtime;
//! and a wall clock stepped back by more than the TTL between two refreshes.
//!
//! Bounded time: a frozen pmxcfs (SIGSTOP, a hung cluster) blocks every call on it, and no
//! timeout can interrupt a blocked syscall in its thread. So each operation runs in a short-
//! lived thread, and the caller waits for it only until its deadline (and its cancel fd). A
//! mkdir that completes after the caller gave up is removed by that thread, so no lock is
//! left behind by a caller that is gone.

use super::PmxcfsConfig;
use crate::backend::Wait;
use crate::{Error, ErrorKind, Result, Target};
use std::ffi::CString;
use std::fs::DirBuilder;
use std::io;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// A waiting caller looks at its cancel fd this often while an operation is outstanding.
const CANCEL_POLL: Duration = Duration::from_millis(50);

/// The bound of one pmxcfs operation: a deadline (None: none) and a cancel fd.
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    deadline: Option<Instant>,
    cancel_fd: Option<RawFd>,
}

impl Bound {
    /// For the operations of an acquisition waiting as `wait` says: its hard deadline (a
    /// try-once: the fixed budget; a timeout: just past it; forever: none, but cancellable).
    pub fn for_wait(wait: &Wait) -> Bound {
        Bound {
            deadline: wait.hard_deadline(),
            cancel_fd: wait.cancel_fd(),
        }
    }

    /// For an administrative call or a held lock's check, renewal or release:
    /// `LOCKFN_OP_TIMEOUT` (5 s by default).
    pub fn admin() -> Result<Bound> {
        Ok(Bound {
            deadline: Some(crate::backend::op_deadline()?),
            cancel_fd: None,
        })
    }

    /// For undoing a failed acquisition: a short slack. An undo that pmxcfs does not answer
    /// in time completes in its own thread later (fs.rs's operations are whole).
    pub fn cleanup() -> Bound {
        Bound {
            deadline: Instant::now().checked_add(crate::backend::CLEANUP_SLACK),
            cancel_fd: None,
        }
    }
}

/// Why a bounded operation has no answer.
enum NoAnswer {
    Stalled(Duration),
    Canceled,
    NoThread,
}

/// Shared between the caller and the thread running an operation.
struct Slot<T> {
    result: Option<io::Result<T>>,
    abandoned: bool,
}

/// Run `op` within `bound`. When the caller stops waiting first, `late` gets what `op`
/// produced once it completes (to undo it), in the operation's thread.
fn bounded<T, F, L>(bound: &Bound, op: F, late: L) -> std::result::Result<io::Result<T>, NoAnswer>
where
    T: Send + 'static,
    F: FnOnce() -> io::Result<T> + Send + 'static,
    L: FnOnce(T) + Send + 'static,
{
    if bound.deadline.is_none() && bound.cancel_fd.is_none() {
        return Ok(op()); // unbounded and uncancelable: no thread needed
    }
    let shared = Arc::new((
        Mutex::new(Slot {
            result: None,
            abandoned: false,
        }),
        Condvar::new(),
    ));
    let theirs = Arc::clone(&shared);
    let run = move || {
        let r = op();
        let (m, cv) = &*theirs;
        let mut s = m.lock().unwrap_or_else(|p| p.into_inner());
        if s.abandoned {
            drop(s);
            if let Ok(v) = r {
                late(v);
            }
        } else {
            s.result = Some(r);
            cv.notify_all();
        }
    };
    if std::thread::Builder::new()
        .name("lockfn-pmxcfs".into())
        .spawn(run)
        .is_err()
    {
        return Err(NoAnswer::NoThread);
    }
    let started = Instant::now();
    let (m, cv) = &*shared;
    let mut s = m.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        if let Some(r) = s.result.take() {
            return Ok(r);
        }
        if bound
            .cancel_fd
            .is_some_and(|fd| crate::backend::poll_readable(fd, 0))
        {
            s.abandoned = true;
            return Err(NoAnswer::Canceled);
        }
        let now = Instant::now();
        let mut slice = if bound.cancel_fd.is_some() {
            CANCEL_POLL
        } else {
            Duration::from_secs(3600)
        };
        if let Some(d) = bound.deadline {
            if now >= d {
                s.abandoned = true;
                return Err(NoAnswer::Stalled(started.elapsed()));
            }
            slice = slice.min(d - now);
        }
        s = cv
            .wait_timeout(s, slice)
            .map(|(g, _)| g)
            .unwrap_or_else(|p| p.into_inner().0);
    }
}

/// [`bounded`] with the caller's errors: a stalled pmxcfs is `Unavailable`, naming the path.
pub fn call<T, F, L>(
    target: &Target,
    path: &Path,
    what: &str,
    bound: &Bound,
    op: F,
    late: L,
) -> Result<io::Result<T>>
where
    T: Send + 'static,
    F: FnOnce() -> io::Result<T> + Send + 'static,
    L: FnOnce(T) + Send + 'static,
{
    match bounded(bound, op, late) {
        Ok(r) => Ok(r),
        Err(NoAnswer::Canceled) => Err(Error::new(
            ErrorKind::Canceled,
            "waiting for the lock was canceled",
        )),
        Err(NoAnswer::NoThread) => Err(Error::new(
            ErrorKind::Internal,
            format!("{target}: cannot start a thread for a bounded pmxcfs call ({what})"),
        )),
        Err(NoAnswer::Stalled(waited)) => Err(Error::new(
            ErrorKind::Unavailable,
            format!(
                "{target}: pmxcfs did not answer ({what} {}) within {:.1} s: is it frozen or \
                 hung? (pve cluster filesystem not responding)",
                path.display(),
                waited.as_secs_f64()
            ),
        )),
    }
}

pub fn cpath(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

pub fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

fn wall_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// Errors with Proxmox's wording

pub fn permission_error(target: &Target, path: &Path, e: &io::Error) -> Error {
    Error::new(
        ErrorKind::Permission,
        format!(
            "{target}: {}: {e}: pmxcfs locks live under /etc/pve/priv, which only root may use \
             (priv/ is 0700 root:www-data); run as root",
            path.display()
        ),
    )
}

pub fn os_error(target: &Target, what: &str, path: &Path, e: io::Error) -> Error {
    match errno(&e) {
        libc::EACCES | libc::EPERM => permission_error(target, path, &e),
        libc::ENOENT | libc::ENOTCONN | libc::EIO => Error::new(
            ErrorKind::Unavailable,
            format!(
                "{target}: {what} {}: {e} (pve cluster filesystem not online?)",
                path.display()
            ),
        ),
        _ => Error::os(format!("{target}: {what} {}", path.display()), e),
    }
}

/// pmxcfs is down: `/etc/pve` is an empty directory (or the lock directory's parent is gone).
pub fn not_online(target: &Target, dir: &Path) -> Error {
    let pve = dir.parent().and_then(Path::parent);
    let why = match pve {
        Some(p) if std::fs::read_dir(p).is_ok_and(|mut d| d.next().is_none()) => {
            format!("{} is empty: pmxcfs is not running", p.display())
        }
        _ => format!(
            "{} does not exist (pmxcfs not running, or LOCKFN_PMXCFS_DIR is wrong)",
            dir.display()
        ),
    };
    Error::new(
        ErrorKind::Unavailable,
        format!("{target}: pve cluster filesystem not online: {why}"),
    )
}

fn rmdir_error(target: &Target, path: &Path, e: io::Error) -> Error {
    if errno(&e) == libc::ENOTEMPTY || errno(&e) == libc::EEXIST {
        return Error::new(
            ErrorKind::Internal,
            format!(
                "{target}: cannot remove {}: it is not empty (never put files in a lock \
                 directory: pmxcfs cannot expire it either); empty it by hand",
                path.display()
            ),
        );
    }
    os_error(target, "cannot remove", path, e)
}

// ---------------------------------------------------------------------------------------------
// The operations

/// Make sure the lock directory is there and usable, as cfs_lock does (`mkdir $lockdir`, then
/// "pve cluster filesystem not online" if it is not a directory). Local stat first: the mkdir,
/// a cluster message, only happens when the directory is missing.
pub fn check_lock_dir(target: &Target, dir: &Path, bound: &Bound) -> Result<()> {
    let d = dir.to_path_buf();
    let r = call(
        target,
        dir,
        "stat",
        bound,
        move || std::fs::metadata(&d),
        |_| (),
    )?;
    match r {
        Ok(m) if m.is_dir() => return Ok(()),
        Ok(_) => {
            return Err(Error::new(
                ErrorKind::Unavailable,
                format!("{target}: {} is not a directory", dir.display()),
            ))
        }
        Err(e) if matches!(errno(&e), libc::EACCES | libc::EPERM) => {
            return Err(permission_error(target, dir, &e))
        }
        Err(e) if errno(&e) == libc::ENOENT => {}
        Err(e) => return Err(os_error(target, "cannot stat", dir, e)),
    }
    let d = dir.to_path_buf();
    let made = call(
        target,
        dir,
        "mkdir",
        bound,
        move || DirBuilder::new().mode(0o755).create(&d),
        |_| (),
    )?;
    match made {
        Ok(()) => Ok(()),
        Err(e) if errno(&e) == libc::EEXIST => Ok(()),
        Err(e) if matches!(errno(&e), libc::EACCES | libc::EPERM) => {
            Err(permission_error(target, dir, &e))
        }
        Err(_) => Err(not_online(target, dir)),
    }
}

/// What a stat of a lock directory shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// Whole seconds, as pmxcfs keeps them.
    pub mtime: i64,
    /// libfuse's node number on pmxcfs: shown to people, never an identity.
    pub ino: u64,
}

fn stat_now(path: &Path) -> io::Result<Option<Seen>> {
    match std::fs::symlink_metadata(path) {
        Ok(m) => Ok(Some(Seen {
            mtime: m.mtime(),
            ino: m.ino(),
        })),
        Err(e) if errno(&e) == libc::ENOENT => Ok(None),
        Err(e) => Err(e),
    }
}

/// The lock directory now (a local stat; None when there is none). On pmxcfs a directory
/// that was just expired may still show for about a second (FUSE attribute cache).
pub fn look(target: &Target, path: &Path, bound: &Bound) -> Result<Option<Seen>> {
    let p = path.to_path_buf();
    call(target, path, "stat", bound, move || stat_now(&p), |_| ())?
        .map_err(|e| os_error(target, "cannot stat", path, e))
}

/// `mkdir NAME`. Some(mtime pmxcfs gave it) when we made it, None when it exists (EEXIST).
/// A directory made after the caller stopped waiting is removed at once.
pub fn make(target: &Target, dir: &Path, path: &Path, bound: &Bound) -> Result<Option<Seen>> {
    let p = path.to_path_buf();
    let undo = path.to_path_buf();
    let r = call(
        target,
        path,
        "mkdir",
        bound,
        move || match DirBuilder::new().mode(0o755).create(&p) {
            // Whole seconds: what pmxcfs set at creation. Right after our own mkdir the
            // kernel has the attributes the mkdir reply carried.
            Ok(()) => Ok(stat_now(&p)?),
            Err(e) if errno(&e) == libc::EEXIST => Ok(None),
            Err(e) => Err(e),
        },
        move |made: Option<Seen>| {
            if made.is_some() {
                let _ = std::fs::remove_dir(&undo);
            }
        },
    )?;
    match r {
        Ok(Some(seen)) => Ok(Some(seen)),
        Ok(None) => Ok(None),
        Err(e) if errno(&e) == libc::ENOENT => Err(not_online(target, dir)),
        Err(e) => Err(os_error(target, "cannot create", path, e)),
    }
}

fn set_times(path: &Path, t: i64) -> io::Result<()> {
    let c = cpath(path)?;
    let ts = libc::timespec {
        tv_sec: t as libc::time_t,
        tv_nsec: 0,
    };
    let times = [ts, ts];
    if unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), 0) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// What pmxcfs said to an unlock request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnlockAnswer {
    /// EACCES (or EPERM): the lock is younger than the TTL.
    Young,
    /// ENOENT: it was expired and is deleted now (or it was already gone).
    ExpiredAndDeleted,
    /// utime(0, 0) succeeded: not pmxcfs (a plain directory); the times were set, nothing
    /// expired.
    NotAnExpiry,
}

/// The unlock request, `utime(path, 0, 0)`: asks pmxcfs to delete the lock if it is expired.
/// This is how cfs_lock waits too; it never touches a young lock.
pub fn unlock_request(target: &Target, path: &Path, bound: &Bound) -> Result<UnlockAnswer> {
    let p = path.to_path_buf();
    match call(
        target,
        path,
        "unlock request",
        bound,
        move || set_times(&p, 0),
        |_| (),
    )? {
        Ok(()) => Ok(UnlockAnswer::NotAnExpiry),
        Err(e) if errno(&e) == libc::ENOENT => Ok(UnlockAnswer::ExpiredAndDeleted),
        Err(e) if matches!(errno(&e), libc::EACCES | libc::EPERM) => Ok(UnlockAnswer::Young),
        Err(e) => Err(os_error(target, "unlock request", path, e)),
    }
}

/// The `t` of a conditional refresh of the incarnation whose mtime we last set to `mtime`:
/// as late as now allows, never below `mtime` (pmxcfs would refuse it on ours) and never as
/// late as `mtime + ttl` (a later incarnation could then accept it).
pub fn refresh_time(mtime: i64, ttl: Duration, now: i64) -> i64 {
    let ttl = ttl.as_secs().max(1) as i64;
    now.min(mtime.saturating_add(ttl - 1)).max(mtime)
}

/// The conditional refresh (see the module doc): Some(new mtime) when pmxcfs accepted it —
/// the directory is the incarnation we last set to `mtime`, and young again — None when it
/// refused (another incarnation, or refused by pmxcfs: made on another node) or the directory
/// is gone. It never changes a directory that is not ours.
pub fn refresh_if_ours(
    target: &Target,
    cfg: &PmxcfsConfig,
    path: &Path,
    mtime: i64,
    bound: &Bound,
) -> Result<Option<i64>> {
    let t = refresh_time(mtime, cfg.ttl, wall_secs());
    let p = path.to_path_buf();
    match call(
        target,
        path,
        "refresh",
        bound,
        move || set_times(&p, t),
        |_| (),
    )? {
        Ok(()) => Ok(Some(t)),
        Err(e) if matches!(errno(&e), libc::ENOENT | libc::EACCES | libc::EPERM) => Ok(None),
        Err(e) => Err(os_error(target, "cannot refresh", path, e)),
    }
}

/// `rmdir` of a directory proven ours just before (a conditional refresh made it young: no
/// one can expire and re-make it for a TTL). Ok(false) when it was gone already.
pub fn remove(target: &Target, path: &Path, bound: &Bound) -> Result<bool> {
    let p = path.to_path_buf();
    match call(
        target,
        path,
        "rmdir",
        bound,
        move || std::fs::remove_dir(&p),
        |_| (),
    )? {
        Ok(()) => Ok(true),
        Err(e) if errno(&e) == libc::ENOENT => Ok(false),
        Err(e) => Err(rmdir_error(target, path, e)),
    }
}

/// Prove that the directory is our incarnation (last set to `mtime`) and remove it: the
/// conditional refresh, then rmdir, in one bounded operation (a caller that stops waiting
/// leaves both to complete in order, never the rmdir alone), then `after` (drop the record).
/// Ok(false) when it is not ours (left alone) or was gone already.
pub fn remove_if_ours(
    target: &Target,
    cfg: &PmxcfsConfig,
    path: &Path,
    mtime: i64,
    bound: &Bound,
    after: impl FnOnce() + Send + 'static,
) -> Result<bool> {
    let t = refresh_time(mtime, cfg.ttl, wall_secs());
    let p = path.to_path_buf();
    let op = move || -> io::Result<Removal> {
        match set_times(&p, t) {
            Ok(()) => {}
            Err(e) if matches!(errno(&e), libc::ENOENT | libc::EACCES | libc::EPERM) => {
                return Ok(Removal::NotOurs)
            }
            Err(e) => return Err(e),
        }
        Ok(match std::fs::remove_dir(&p) {
            Ok(()) => {
                after();
                Removal::Removed
            }
            Err(e) if errno(&e) == libc::ENOENT => Removal::NotOurs,
            Err(e) => Removal::RmdirFailed(e),
        })
    };
    match call(target, path, "refresh and rmdir", bound, op, |_| ())? {
        Ok(Removal::Removed) => Ok(true),
        Ok(Removal::NotOurs) => Ok(false),
        Ok(Removal::RmdirFailed(e)) => Err(rmdir_error(target, path, e)),
        Err(e) => Err(os_error(target, "cannot refresh", path, e)),
    }
}

enum Removal {
    Removed,
    NotOurs,
    RmdirFailed(io::Error),
}

/// A path under the lock directory's parent (pmxcfs's `priv/`), for lockfn's own files.
pub fn beside(dir: &Path, rel: &str) -> PathBuf {
    dir.parent().unwrap_or(dir).join(rel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_time_stays_in_the_window_of_our_incarnation() {
        let ttl = Duration::from_secs(120);
        assert_eq!(refresh_time(1000, ttl, 1060), 1060, "on time: now");
        assert_eq!(
            refresh_time(1000, ttl, 1000),
            1000,
            "same second: mtime itself"
        );
        assert_eq!(
            refresh_time(1000, ttl, 990),
            1000,
            "clock behind: never below mtime"
        );
        // Late (stopped for 150 s): never at or past mtime + ttl, where a re-made directory's
        // mtime can be (it is at least mtime + ttl + 1).
        assert_eq!(refresh_time(1000, ttl, 1150), 1119);
        assert_eq!(refresh_time(1000, Duration::from_secs(4), 1150), 1003);
    }

    #[test]
    fn a_frozen_operation_is_abandoned_at_its_deadline_and_undone_late() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<bool>();
        let b = Bound {
            deadline: Some(Instant::now() + Duration::from_millis(100)),
            cancel_fd: None,
        };
        let t0 = Instant::now();
        let r = bounded(
            &b,
            move || {
                let _ = rx.recv(); // "frozen" until the test lets it go
                Ok(7)
            },
            move |v: i32| done_tx.send(v == 7).unwrap(),
        );
        assert!(matches!(r, Err(NoAnswer::Stalled(_))));
        assert!(t0.elapsed() < Duration::from_secs(2));
        tx.send(()).unwrap();
        let undone = done_rx.recv_timeout(Duration::from_secs(5));
        assert_eq!(undone, Ok(true), "the late result was handed to the undo");
    }
}
