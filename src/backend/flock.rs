//! flock(2) on a local file, waited for without threads or signals: the lock of the `file:`
//! service (flock(1)'s own) and the node-local queue of the pmxcfs service (pmxlock's).
//!
//! flock has no timed wait, so a waiter sleeps in poll(2) on an inotify watch of the file (a
//! flock dropped by close or by its holder's death is a close event) and its cancel fd, with
//! a short fallback poll for a holder that unlocks without closing (`flock -u`) — bounded by
//! the wait's deadline, cancellable, and cheap while it waits.
//!
//! A lock is on an open file description. The file it names is identified by device and inode
//! while we keep it open (a local file system cannot reuse an inode that is still open), so
//! "is it still the file at PATH?" is a stat comparison; a removed or replaced file excludes
//! nobody, and a waiter takes the new one instead.

use super::Wait;
use crate::{Error, ErrorKind, Result, Target};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

/// Fallback poll, for a holder that unlocks without closing (inotify sees closes only).
/// Local and cheap; keeps such a release under 50 ms.
pub const POLL: Duration = Duration::from_millis(40);
/// Bound on reopening a file that was removed or replaced under us.
const MAX_REOPEN: usize = 20;

/// Exclusive (`flock -x`, the default) or shared (`flock -s`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Exclusive,
    Shared,
}

fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

/// flock(LOCK_EX or LOCK_SH | LOCK_NB): Ok(true) when taken.
pub fn try_flock(file: &File, mode: Mode) -> io::Result<bool> {
    let op = match mode {
        Mode::Exclusive => libc::LOCK_EX,
        Mode::Shared => libc::LOCK_SH,
    };
    loop {
        if unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) } == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        match errno(&e) {
            libc::EWOULDBLOCK => return Ok(false),
            libc::EINTR => continue,
            _ => return Err(e),
        }
    }
}

/// flock(LOCK_UN): gives the lock back for the open file description itself, so a copy of the
/// descriptor held elsewhere (a child forked without exec, or one between fork and exec) does
/// not keep it. Closing alone releases it only once every copy is closed.
pub fn unlock(file: &File) {
    // EINTR cannot happen for LOCK_UN; any other error means the fd is gone anyway.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_UN) };
}

/// Is `file` still the file at `path`? (Someone may have removed or replaced it; a flock on
/// an unlinked file excludes nobody.)
pub fn still_linked(file: &File, path: &Path) -> bool {
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
        _ => false,
    }
}

/// One flock on a file as /proc/locks shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holder {
    pub pid: i32,
    pub shared: bool,
}

/// Who holds flocks on `file` (its device and inode), from /proc/locks: the pid that took
/// each lock (a descriptor inherited by a child still shows its parent's pid). Waiters
/// (`->` lines) are not holders.
pub fn holders(file: &File) -> Vec<Holder> {
    let Ok(m) = file.metadata() else {
        return Vec::new();
    };
    let (maj, min) = (libc::major(m.dev()), libc::minor(m.dev()));
    let want = format!("{maj:02x}:{min:02x}:{}", m.ino());
    let Ok(locks) = std::fs::read_to_string("/proc/locks") else {
        return Vec::new();
    };
    locks
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // "1: FLOCK  ADVISORY  WRITE 1234 00:1a:5678 0 EOF"; blocked waiters have "->".
            if f.len() >= 6 && f[1] == "FLOCK" && f[5] == want {
                Some(Holder {
                    pid: f[4].parse().ok()?,
                    shared: f[3] == "READ",
                })
            } else {
                None
            }
        })
        .collect()
}

/// inotify on the file: wakes a waiter when any opener closes it — which is when a flock is
/// dropped by close or by the death of its holder.
struct CloseWatch(Inotify);

impl CloseWatch {
    fn new(path: &Path) -> Option<CloseWatch> {
        let ino = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).ok()?;
        let mask = AddWatchFlags::IN_CLOSE_WRITE
            | AddWatchFlags::IN_CLOSE_NOWRITE
            | AddWatchFlags::IN_DELETE_SELF
            | AddWatchFlags::IN_MOVE_SELF
            | AddWatchFlags::IN_ATTRIB;
        ino.add_watch(path, mask).ok()?;
        Some(CloseWatch(ino))
    }

    /// Empty the queue (non-blocking reads until EAGAIN; bounded).
    fn drain(&self) {
        for _ in 0..64 {
            if self.0.read_events().is_err() {
                break;
            }
        }
    }
}

/// Sleep until the watch fires, the cancel fd is readable, or `max` passes (never past the
/// wait's deadline). Returns `Canceled` when asked to stop.
fn sleep_on(watch: Option<&CloseWatch>, wait: &Wait, max: Duration) -> Result<()> {
    let Some(watch) = watch else {
        return wait.pause(max);
    };
    let d = wait.remaining().map_or(max, |r| r.min(max));
    // SAFETY: the cancel fd stays open for the whole wait (the caller's promise).
    let cancel = wait
        .cancel_fd()
        .map(|fd| unsafe { BorrowedFd::borrow_raw(fd) });
    let mut fds = vec![PollFd::new(watch.0.as_fd(), PollFlags::POLLIN)];
    if let Some(c) = cancel {
        fds.push(PollFd::new(c, PollFlags::POLLIN));
    }
    let ms = d.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
    // EINTR is fine: the caller loops.
    let _ = poll(
        &mut fds,
        PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
    );
    watch.drain();
    wait.check_cancel()
}

/// A flock while held, with the inotify watch used to wait for it (if any). The watch is
/// kept, not closed at once: closing an inotify instance waits for an RCU grace period
/// (~5-15 ms measured), which would delay every hand-off.
pub struct Flocked {
    // Declaration order is drop order: unregistered first (the registry never names a closed
    // descriptor), then the flock, then the (slow) watch.
    /// A forked child closes its copy of the descriptor (fork.rs): a worker forked without
    /// exec never keeps the lock after the parent let it go or died.
    _fork: crate::fork::Registration,
    file: File,
    _watch: Option<CloseWatch>,
}

impl Flocked {
    pub fn file(&self) -> &File {
        &self.file
    }
}

impl Drop for Flocked {
    fn drop(&mut self) {
        // Unlock explicitly before the close: a forked child's copy must not keep the lock.
        unlock(&self.file);
    }
}

/// What [`acquire`] needs besides the wait: how to open the file, and the errors to give.
pub struct Request<'a> {
    pub target: &'a Target,
    pub path: &'a Path,
    pub mode: Mode,
    /// Opens (and creates) the file; the error is turned into the caller's wording by `os`.
    pub open: &'a dyn Fn(&Path) -> io::Result<File>,
    pub os: &'a dyn Fn(&str, io::Error) -> Error,
    /// The error of a wait that ended without the lock, from the flock's holders.
    pub busy: &'a dyn Fn(&[Holder]) -> Error,
}

/// Take the flock of `req.path`, waiting as `wait` says.
pub fn acquire(req: &Request, wait: &Wait) -> Result<Flocked> {
    let mut watch: Option<CloseWatch> = None;
    for _ in 0..MAX_REOPEN {
        let file = (req.open)(req.path).map_err(|e| (req.os)("cannot open", e))?;
        let mut first = true;
        loop {
            if try_flock(&file, req.mode).map_err(|e| (req.os)("flock", e))? {
                break;
            }
            if first && !wait.is_try_once() {
                // Watch only once we have to wait (set up after a failed try, then one more
                // try below, so a close in between is not missed).
                first = false;
                watch = CloseWatch::new(req.path);
                continue;
            }
            if wait.is_try_once() || wait.expired() {
                return Err((req.busy)(&holders(&file)));
            }
            sleep_on(watch.as_ref(), wait, POLL)?;
        }
        if still_linked(&file, req.path) {
            return Ok(Flocked {
                _fork: crate::fork::register(file.as_raw_fd()),
                file,
                _watch: watch,
            });
        }
        // The file was replaced while we waited: our flock excludes nobody; take the new one
        // (and watch the new file).
        unlock(&file);
        watch = None;
    }
    Err(Error::new(
        ErrorKind::Internal,
        format!(
            "{}: {} kept being removed while locking it",
            req.target,
            req.path.display()
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::OpenOptionsExt;

    fn open(p: &Path) -> File {
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_CREAT | libc::O_CLOEXEC)
            .open(p)
            .unwrap()
    }

    #[test]
    fn holders_are_found_in_proc_locks() {
        let d = std::env::temp_dir().join(format!("lockfn-flock-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let f = open(&d.join("n"));
        assert_eq!(holders(&f), vec![]);
        assert!(try_flock(&f, Mode::Exclusive).unwrap());
        let me = std::process::id() as i32;
        assert_eq!(
            holders(&f),
            vec![Holder {
                pid: me,
                shared: false
            }]
        );
        let g = open(&d.join("n"));
        assert!(
            !try_flock(&g, Mode::Shared).unwrap(),
            "another open file description conflicts"
        );
        // An explicit unlock, not a close: another test thread's child (between its fork and
        // exec) may hold a copy of `f`'s descriptor, and a close would then release nothing.
        unlock(&f);
        assert!(try_flock(&g, Mode::Shared).unwrap());
        assert!(try_flock(&f, Mode::Shared).unwrap());
        assert_eq!(holders(&f).len(), 2);
        assert!(holders(&f).iter().all(|h| h.shared));
        unlock(&f);
        unlock(&g);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
