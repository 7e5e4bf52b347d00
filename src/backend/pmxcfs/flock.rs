//! The node-local flock on `/run/lock/pmxlock/NAME`, the very file pmxlock uses, so lockfn
//! and pmxlock processes of one node queue on it, and a same-node release is seen at once:
//! flock has no timed wait, so a waiter sleeps in poll(2) on an inotify watch of the file (a
//! flock dropped by close or by its holder's death is a close event) and its cancel fd, with
//! a 40 ms fallback poll for a holder that unlocks without closing — no thread, no signal,
//! and a bounded wait. The file is local (tmpfs), never on pmxcfs: nothing here can block on
//! a frozen pmxcfs.

use super::fs::{cpath, errno, os_error};
use crate::backend::Wait;
use crate::{Error, ErrorKind, Result, Target};
use std::fs::{DirBuilder, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Fallback poll of the node-local flock, for a holder that unlocks without closing (inotify
/// sees closes only). Node-local and cheap; keeps a same-node release under 50 ms.
const FLOCK_POLL: Duration = Duration::from_millis(40);
/// Bound on reopening a flock file that was unlinked under us.
const MAX_REOPEN: usize = 20;

/// The flock file of lock `name`.
pub fn flock_path(name: &str) -> PathBuf {
    super::flock_dir().join(name)
}

pub fn open_flock_file(path: &Path) -> io::Result<File> {
    if let Some(parent) = path.parent() {
        DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)?;
    }
    // Read-only and created like pmxlock does (os.open(path, O_RDONLY | O_CREAT)).
    OpenOptions::new()
        .read(true)
        .write(false)
        .create(false)
        .custom_flags(libc::O_CREAT | libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .mode(0o644)
        .open(path)
}

/// flock(LOCK_EX | LOCK_NB): Ok(true) when taken.
pub fn try_flock(file: &File) -> io::Result<bool> {
    loop {
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
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
pub fn unlock_flock(file: &File) {
    // EINTR cannot happen for LOCK_UN; any other error means the fd is gone anyway.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_UN) };
}

/// Is `file` still the file at `path`? (Someone may have removed /run/lock/pmxlock/NAME; a
/// flock on an unlinked file excludes nobody.)
pub fn still_linked(file: &File, path: &Path) -> bool {
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
        _ => false,
    }
}

/// inotify on the flock file: wakes a waiter when any opener closes it — which is when a
/// flock is dropped by close or by the death of its holder.
struct CloseWatch {
    fd: libc::c_int,
}

impl CloseWatch {
    fn new(path: &Path) -> Option<CloseWatch> {
        let c = cpath(path).ok()?;
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            return None;
        }
        let w = CloseWatch { fd };
        let mask = libc::IN_CLOSE_WRITE
            | libc::IN_CLOSE_NOWRITE
            | libc::IN_DELETE_SELF
            | libc::IN_MOVE_SELF
            | libc::IN_ATTRIB;
        if unsafe { libc::inotify_add_watch(fd, c.as_ptr(), mask) } < 0 {
            return None; // w is dropped: fd closed
        }
        Some(w)
    }

    fn drain(&self) {
        let mut buf = [0u8; 4096];
        for _ in 0..64 {
            let n = unsafe { libc::read(self.fd, buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break;
            }
        }
    }
}

impl Drop for CloseWatch {
    fn drop(&mut self) {
        unsafe { libc::close(self.fd) };
    }
}

/// Sleep until the watch fires, the cancel fd is readable, or `max` passes (never past the
/// wait's deadline). Returns `Canceled` when asked to stop.
fn sleep_on(watch: Option<&CloseWatch>, wait: &Wait, max: Duration) -> Result<()> {
    let Some(watch) = watch else {
        return wait.pause(max);
    };
    let d = wait.remaining().map_or(max, |r| r.min(max));
    let mut fds = vec![libc::pollfd {
        fd: watch.fd,
        events: libc::POLLIN,
        revents: 0,
    }];
    if let Some(fd) = wait.cancel_fd() {
        fds.push(libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        });
    }
    let ms = d.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
    // EINTR is fine: the caller loops.
    unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    watch.drain();
    wait.check_cancel()
}

/// Who holds a flock on the file with this dev/inode, from /proc/locks.
pub fn flock_holder_pid(file: &File) -> Option<i32> {
    let m = file.metadata().ok()?;
    let (maj, min) = (libc::major(m.dev()), libc::minor(m.dev()));
    let want = format!("{maj:02x}:{min:02x}:{}", m.ino());
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    locks.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        // "1: FLOCK  ADVISORY  WRITE 1234 00:1a:5678 0 EOF"; blocked waiters have "->".
        if f.len() >= 6 && f[1] == "FLOCK" && f[5] == want {
            f[4].parse().ok()
        } else {
            None
        }
    })
}

/// The node-local flock while held, with the inotify watch used to wait for it (if any).
/// The watch is kept, not closed at once: closing an inotify instance waits for an RCU grace
/// period (~5-15 ms measured), which would delay every handoff.
pub struct NodeFlock {
    // Declaration order is drop order: unregistered first (the registry never names a closed
    // descriptor), then the flock, then the (slow) watch.
    /// A forked child closes its copy of the descriptor (fork.rs): a worker forked without
    /// exec never keeps this node's lock after the parent let it go or died.
    _fork: crate::fork::Registration,
    file: File,
    _watch: Option<CloseWatch>,
}

impl Drop for NodeFlock {
    fn drop(&mut self) {
        // Unlock explicitly before the close: a forked child's copy must not keep the lock.
        unlock_flock(&self.file);
    }
}

/// Take the node-local flock of `target`, waiting as `wait` says. On a busy end, `busy` makes
/// the error from the pid holding the flock (when /proc/locks tells).
pub fn acquire(
    target: &Target,
    wait: &Wait,
    busy: impl Fn(Option<i32>) -> Error,
) -> Result<NodeFlock> {
    let path = flock_path(target.name());
    let mut watch: Option<CloseWatch> = None;
    for _ in 0..MAX_REOPEN {
        let file = open_flock_file(&path)
            .map_err(|e| os_error(target, "cannot open the node-local lock", &path, e))?;
        let mut first = true;
        loop {
            if try_flock(&file).map_err(|e| os_error(target, "flock", &path, e))? {
                break;
            }
            if first && !wait.is_try_once() {
                // Watch only once we have to wait (set up after a failed try, then one more
                // try below, so a close in between is not missed).
                first = false;
                watch = CloseWatch::new(&path);
                continue;
            }
            if wait.is_try_once() || wait.expired() {
                return Err(busy(flock_holder_pid(&file)));
            }
            sleep_on(watch.as_ref(), wait, FLOCK_POLL)?;
        }
        if still_linked(&file, &path) {
            return Ok(NodeFlock {
                _fork: crate::fork::register(file.as_raw_fd()),
                file,
                _watch: watch,
            });
        }
        watch = None; // it watched the replaced file
                      // The file was replaced while we waited: our flock excludes nobody; take the new one.
    }
    Err(Error::new(
        ErrorKind::Internal,
        format!(
            "{target}: {} kept being removed while locking it",
            path.display()
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flock_holder_is_found_in_proc_locks() {
        let d = crate::backend::pmxcfs::tests::tmp("flock");
        let f = open_flock_file(&d.join("n")).unwrap();
        assert_eq!(flock_holder_pid(&f), None);
        assert!(try_flock(&f).unwrap());
        assert_eq!(flock_holder_pid(&f), Some(std::process::id() as i32));
        let g = open_flock_file(&d.join("n")).unwrap();
        assert!(
            !try_flock(&g).unwrap(),
            "another open file description conflicts"
        );
        // An explicit unlock, not a close: another test thread's child (between its fork and
        // exec) may hold a copy of `f`'s descriptor, and a close would then release nothing.
        unlock_flock(&f);
        assert!(try_flock(&g).unwrap());
        drop(f);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
