//! The pmxcfs backend: a Proxmox cluster lock, interoperable with Proxmox's own `cfs_lock`
//! (PVE::Cluster) and with pmxlock.
//!
//! A lock `pmxcfs:NAME` is two locks taken in this order:
//! 1. the node-local flock(2) on `/run/lock/pmxlock/NAME` — the very file pmxlock uses, so
//!    lockfn and pmxlock processes of one node queue on it, and a same-node release is seen at
//!    once: flock has no timed wait, so a waiter sleeps in poll(2) on an inotify watch of the
//!    file (a flock dropped by close or by its holder's death is a close event) and its cancel
//!    fd, with a 40 ms fallback poll for a holder that unlocks without closing — no thread, no
//!    signal, and a bounded wait;
//! 2. the cluster-wide directory `/etc/pve/priv/lock/NAME`: `mkdir` takes it, `rmdir` gives it
//!    back (always before the flock is let go, or pmxlock would "recover" our live directory).
//!
//! What pmxcfs does with such a directory (measured on a real pmxcfs, see issue 3):
//! - it expires 120 s after creation or its last refresh, but only on request: `utime(0, 0)`
//!   (the "unlock request") fails with EACCES while the lock is young, and once it is expired
//!   deletes it and fails with ENOENT;
//! - `utime(0, now)` from the creating node refreshes it; EACCES from another node or when the
//!   lock is gone and remade;
//! - every mkdir/rmdir/utime is a cluster-wide message (stat and readdir are local), so a
//!   waiter makes at most 4 mkdir attempts and 1 unlock request per second;
//! - inode numbers of new lock directories only grow: `st_ino` is the fencing token, and it
//!   tells one incarnation of a lock directory from the next.
//!
//! On a plain directory (tests, `LOCKFN_PMXCFS_DIR`), `utime(0, 0)` succeeds and merely sets
//! the times: that is NOT taken as an expiry (only ENOENT is), so on a plain directory a lock
//! never expires by itself. Identity by inode number needs a file system that does not reuse
//! inode numbers at once (pmxcfs, tmpfs); the tests use /dev/shm.
//!
//! Orphans: a process of ours killed while holding leaves its directory behind. A waiter takes
//! it over only when our node-local record (`/run/lock/lockfn/pmxcfs/NAME`, outside pmxcfs)
//! says it was made by a process of this host and boot that is now dead, and the directory is
//! still that incarnation (same st_ino, checked again after a refresh that makes it young, so
//! nobody can expire and remake it meanwhile). It then removes it and takes the lock anew
//! (a new inode, a new token). Directories made by cfs_lock, pmxlock, another node or a live
//! process are never taken over: they are waited for, and expire through unlock requests.
//!
//! Limits, by construction:
//! - a holder killed between its mkdir and writing its record (a stat and a file write) leaves
//!   a directory nobody can prove is an orphan: it is waited for until pmxcfs expires it (120 s
//!   after creation, through the waiters' unlock requests), or `lockfn release --force`;
//! - a persistent lock (`lockfn acquire --persist`) no longer holds the node-local flock, so a
//!   same-node pmxlock would "recover" (take over) its directory, as pmxlock does with any
//!   directory whose flock is free; lockfn never does;
//! - a child forked (without exec) while the lock is held shares the flock until it exits;
//! - no fairness across nodes (nor in cfs_lock): a waiter polls, a same-node waiter is woken.
//!
//! Paths can be moved for tests: `LOCKFN_PMXCFS_DIR` (the lock directory),
//! `LOCKFN_PMXLOCK_DIR` (the flock directory), `LOCKFN_RUN_DIR` (our node-local records).

use super::{GcScope, Held, HolderView, Status, Wait};
use crate::holder::{HolderRecord, Liveness};
use crate::{Error, ErrorKind, Location, Options, Result, Target};
use serde::{Deserialize, Serialize};
use std::ffi::CString;
use std::fs::{DirBuilder, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub const DEFAULT_PMXLOCK_DIR: &str = "/run/lock/pmxlock";
pub const DEFAULT_RUN_DIR: &str = "/run/lock/lockfn";
/// pmxcfs expires a lock this long after its creation or last refresh (fixed by pmxcfs).
pub const PMXCFS_LOCK_TTL: Duration = Duration::from_secs(120);
/// Refresh every 60 s, as Proxmox's cfs_lock does with its 60 s alarm.
const RENEW_INTERVAL: Duration = Duration::from_secs(60);
/// Supervisors check (a local stat) this often that the directory is still ours.
const CHECK_INTERVAL: Duration = Duration::from_secs(5);
/// At most 4 mkdir attempts per second while waiting (cluster-wide messages).
const MKDIR_EVERY: Duration = Duration::from_millis(250);
/// At most 1 unlock request per second while waiting (cluster-wide messages).
const UNLOCK_REQUEST_EVERY: Duration = Duration::from_secs(1);
/// Fallback poll of the node-local flock, for a holder that unlocks without closing (inotify
/// sees closes only). Node-local and cheap; keeps a same-node release under 50 ms.
const FLOCK_POLL: Duration = Duration::from_millis(40);
/// A holder of ours that is exiting (flock closed, not yet a zombie) is looked at this often…
const EXITING_POLL: Duration = Duration::from_millis(10);
/// …for this long after we got the flock (a process exits in milliseconds).
const EXITING_WATCH: Duration = Duration::from_secs(2);
/// Bound on reopening a flock file that was unlinked under us.
const MAX_REOPEN: usize = 20;
const RECORD_VERSION: u32 = 1;

pub struct PmxcfsBackend;

// ---------------------------------------------------------------------------------------------
// Paths

fn env_dir(var: &str, default: &str) -> PathBuf {
    match std::env::var_os(var) {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => PathBuf::from(default),
    }
}

/// The directory of node-local flock files (pmxlock's).
pub fn flock_dir() -> PathBuf {
    env_dir("LOCKFN_PMXLOCK_DIR", DEFAULT_PMXLOCK_DIR)
}

/// The directory of our node-local holder records.
pub fn records_dir() -> PathBuf {
    env_dir("LOCKFN_RUN_DIR", DEFAULT_RUN_DIR).join("pmxcfs")
}

fn lock_dir(target: &Target) -> PathBuf {
    match &target.location {
        Location::Pmxcfs { dir } => dir.clone(),
        _ => crate::target::pmxcfs_dir(),
    }
}

fn cpath(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// Errors with Proxmox's wording

fn permission_error(target: &Target, path: &Path, e: &io::Error) -> Error {
    Error::new(
        ErrorKind::Permission,
        format!(
            "{target}: {}: {e}: pmxcfs locks live under /etc/pve/priv, which only root may use \
             (priv/ is 0700 root:www-data); run as root",
            path.display()
        ),
    )
}

fn os_error(target: &Target, what: &str, path: &Path, e: io::Error) -> Error {
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

/// Proxmox's timeout text (`cfs-lock 'NAME' error: got lock request timeout`), so logs read
/// the same as cfs_lock's, plus who holds the lock when we know.
fn busy_error(target: &Target, wait: &Wait, who: &str) -> Error {
    let name = &target.name;
    let msg = if wait.is_try_once() {
        format!("cfs-lock '{name}' error: lock is busy: {target} {who}")
    } else {
        format!(
            "cfs-lock '{name}' error: got lock request timeout (waited {:.1} s for {target}, {who})",
            wait.elapsed().as_secs_f64()
        )
    };
    Error::new(ErrorKind::Busy, msg)
}

fn describe(h: &HolderRecord) -> String {
    let text = if h.holder.is_empty() {
        String::new()
    } else {
        format!(" ({})", h.holder)
    };
    format!("held by pid {} on {}{}", h.pid, h.host, text)
}

// ---------------------------------------------------------------------------------------------
// The lock directory: preflight

/// Make sure the lock directory is there and usable, as cfs_lock does (`mkdir $lockdir`, then
/// "pve cluster filesystem not online" if it is not a directory). Local stat first: the mkdir,
/// a cluster message, only happens when the directory is missing.
fn check_lock_dir(target: &Target, dir: &Path) -> Result<()> {
    match std::fs::metadata(dir) {
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
    match DirBuilder::new().mode(0o755).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if errno(&e) == libc::EEXIST => Ok(()),
        Err(e) if matches!(errno(&e), libc::EACCES | libc::EPERM) => {
            Err(permission_error(target, dir, &e))
        }
        Err(_) => Err(not_online(target, dir)),
    }
}

/// pmxcfs is down: `/etc/pve` is an empty directory (or the lock directory's parent is gone).
fn not_online(target: &Target, dir: &Path) -> Error {
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

// ---------------------------------------------------------------------------------------------
// pmxcfs operations: each small and named

/// `mkdir NAME`: Some(st_ino) when we made it, None when it exists (EEXIST).
fn try_mkdir(path: &Path) -> io::Result<Option<u64>> {
    match DirBuilder::new().mode(0o755).create(path) {
        Ok(()) => Ok(Some(std::fs::symlink_metadata(path)?.ino())),
        Err(e) if errno(&e) == libc::EEXIST => Ok(None),
        Err(e) => Err(e),
    }
}

/// The inode of the lock directory now, None if there is none.
fn current_ino(path: &Path) -> io::Result<Option<u64>> {
    match std::fs::symlink_metadata(path) {
        Ok(m) => Ok(Some(m.ino())),
        Err(e) if errno(&e) == libc::ENOENT => Ok(None),
        Err(e) => Err(e),
    }
}

fn set_times(path: &Path, atime: libc::time_t, mtime: libc::time_t) -> io::Result<()> {
    let c = cpath(path)?;
    let times = [
        libc::timespec {
            tv_sec: atime,
            tv_nsec: 0,
        },
        libc::timespec {
            tv_sec: mtime,
            tv_nsec: 0,
        },
    ];
    if unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), 0) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// What pmxcfs said to an unlock request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UnlockAnswer {
    /// EACCES (or EPERM): the lock is younger than 120 s.
    Young,
    /// ENOENT: it was expired and is deleted now (or it was already gone).
    ExpiredAndDeleted,
    /// utime(0, 0) succeeded: not pmxcfs (a plain directory); the times were set, nothing
    /// expired.
    NotAnExpiry,
}

/// The unlock request, `utime(path, 0, 0)`: asks pmxcfs to delete the lock if it is expired.
fn unlock_request(path: &Path) -> io::Result<UnlockAnswer> {
    match set_times(path, 0, 0) {
        Ok(()) => Ok(UnlockAnswer::NotAnExpiry),
        Err(e) if errno(&e) == libc::ENOENT => Ok(UnlockAnswer::ExpiredAndDeleted),
        Err(e) if matches!(errno(&e), libc::EACCES | libc::EPERM) => Ok(UnlockAnswer::Young),
        Err(e) => Err(e),
    }
}

/// The refresh, `utime(path, 0, now)`: restarts the 120 s. pmxcfs refuses it (EACCES) from
/// another node and for a lock that is gone (ENOENT).
fn refresh(path: &Path) -> io::Result<()> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as libc::time_t)
        .unwrap_or(0);
    set_times(path, 0, now)
}

/// A refresh failing like this means the lock is no longer ours.
fn is_lost_errno(e: &io::Error) -> bool {
    matches!(errno(e), libc::ENOENT | libc::EACCES | libc::EPERM)
}

/// Make sure the directory at `path` is incarnation `ino` and will stay so: same inode, a
/// refresh that succeeds (on pmxcfs: made by this node and not expired; it is now young, so
/// nobody can expire and remake it for 120 s), same inode again. Then only an rmdir — by its
/// holder, which is us — can change it.
fn pin_incarnation(path: &Path, ino: u64) -> io::Result<bool> {
    if current_ino(path)? != Some(ino) {
        return Ok(false);
    }
    match refresh(path) {
        Ok(()) => {}
        Err(e) if is_lost_errno(&e) => return Ok(false),
        Err(e) => return Err(e),
    }
    Ok(current_ino(path)? == Some(ino))
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
// Node-local holder records (outside pmxcfs)

#[derive(Debug, Clone, Serialize, Deserialize)]
struct NodeRecord {
    v: u32,
    /// The lock directory (`LOCKFN_PMXCFS_DIR`) the lock was taken in.
    dir: PathBuf,
    name: String,
    /// st_ino of the lock directory we made: the incarnation and the token.
    ino: u64,
    holder: HolderRecord,
}

impl NodeRecord {
    /// Does this record describe lock `name` in `dir`?
    fn is_for(&self, dir: &Path, name: &str) -> bool {
        self.v == RECORD_VERSION && self.name == name && same_dir(&self.dir, dir)
    }
}

fn same_dir(a: &Path, b: &Path) -> bool {
    a == b
        || matches!(
            (std::fs::canonicalize(a), std::fs::canonicalize(b)),
            (Ok(x), Ok(y)) if x == y
        )
}

fn record_path(name: &str) -> PathBuf {
    records_dir().join(name)
}

fn read_record(name: &str) -> Option<NodeRecord> {
    let data = std::fs::read(record_path(name)).ok()?;
    serde_json::from_slice(&data).ok()
}

/// Our record of `name` in `dir`, if there is one.
fn read_record_for(dir: &Path, name: &str) -> Option<NodeRecord> {
    read_record(name).filter(|r| r.is_for(dir, name))
}

fn write_record(rec: &NodeRecord) -> io::Result<()> {
    let dir = records_dir();
    DirBuilder::new().recursive(true).mode(0o755).create(&dir)?;
    let data = serde_json::to_vec(rec).map_err(io::Error::other)?;
    let tmp = dir.join(format!(".{}.{}.tmp", rec.name, std::process::id()));
    let r = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(&tmp)
        .and_then(|mut f| io::Write::write_all(&mut f, &data))
        .and_then(|_| std::fs::rename(&tmp, record_path(&rec.name)));
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

/// Remove our record of `name` if it still describes incarnation `ino`.
fn remove_record_if(dir: &Path, name: &str, ino: u64) {
    if read_record_for(dir, name).is_some_and(|r| r.ino == ino) {
        let _ = std::fs::remove_file(record_path(name));
    }
}

// ---------------------------------------------------------------------------------------------
// The node-local flock (pmxlock's file)

fn flock_path(name: &str) -> PathBuf {
    flock_dir().join(name)
}

fn open_flock_file(path: &Path) -> io::Result<File> {
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
fn try_flock(file: &File) -> io::Result<bool> {
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
fn unlock_flock(file: &File) {
    // EINTR cannot happen for LOCK_UN; any other error means the fd is gone anyway.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_UN) };
}

/// Is `file` still the file at `path`? (Someone may have removed /run/lock/pmxlock/NAME; a
/// flock on an unlinked file excludes nobody.)
fn still_linked(file: &File, path: &Path) -> bool {
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
fn flock_holder_pid(file: &File) -> Option<i32> {
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
struct NodeFlock {
    // Declaration order is drop order: the flock goes first, then the (slow) watch.
    file: File,
    _watch: Option<CloseWatch>,
}

impl Drop for NodeFlock {
    fn drop(&mut self) {
        // Unlock explicitly before the close: a forked child's copy must not keep the lock.
        unlock_flock(&self.file);
    }
}

/// Take the node-local flock of `name`, waiting as `wait` says.
fn acquire_flock(target: &Target, wait: &Wait) -> Result<NodeFlock> {
    let path = flock_path(&target.name);
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
                let dir = lock_dir(target);
                let recorded = recorded_holder(&dir, &target.name, &dir.join(&target.name));
                let who = match (recorded, flock_holder_pid(&file)) {
                    (Some(h), _) => describe(&h),
                    (None, Some(pid)) => format!(
                        "held on this node by pid {pid} (node-local lock {})",
                        path.display()
                    ),
                    (None, None) => {
                        format!("held on this node (node-local lock {})", path.display())
                    }
                };
                return Err(busy_error(target, wait, &who));
            }
            sleep_on(watch.as_ref(), wait, FLOCK_POLL)?;
        }
        if still_linked(&file, &path) {
            return Ok(NodeFlock {
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

// ---------------------------------------------------------------------------------------------
// Orphan recovery

/// What our node-local record says about the lock directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Orphan {
    /// Not ours, or no record, or a persistent lock: never taken over.
    No,
    /// Ours, made by a process of this host and boot that is dead (or a zombie), and the
    /// directory is still that incarnation (this st_ino).
    Dead(u64),
    /// Ours and that incarnation, but its process still shows in /proc. Seen by a waiter that
    /// holds the node-local flock, this is a holder in the middle of exiting (its files, the
    /// flock among them, are closed before it turns zombie): look again soon.
    Exiting,
}

/// Is the lock directory an orphan of ours? Local checks only (a file read, /proc, a stat):
/// no cluster message.
fn orphan_of_ours(target: &Target, dir: &Path, path: &Path) -> Result<Orphan> {
    let Some(rec) = read_record_for(dir, &target.name) else {
        return Ok(Orphan::No);
    };
    if rec.holder.persist || !rec.holder.is_this_boot() {
        return Ok(Orphan::No);
    }
    let now = current_ino(path).map_err(|e| os_error(target, "cannot stat", path, e))?;
    if now != Some(rec.ino) {
        return Ok(Orphan::No);
    }
    Ok(if holder_is_dead(&rec.holder) {
        Orphan::Dead(rec.ino)
    } else {
        Orphan::Exiting
    })
}

/// Remove our orphan, incarnation `ino`, if it is still that one after a refresh (which makes
/// it young: nobody can expire and remake it meanwhile). Two cluster messages: the refresh and
/// the rmdir. Returns true when it was removed. Call only while holding the node-local flock
/// of the name (or from gc, which takes it).
fn take_back_orphan(target: &Target, dir: &Path, path: &Path, ino: u64) -> Result<bool> {
    let pinned =
        pin_incarnation(path, ino).map_err(|e| os_error(target, "cannot refresh", path, e))?;
    if !pinned {
        return Ok(false);
    }
    std::fs::remove_dir(path).map_err(|e| rmdir_error(target, path, e))?;
    remove_record_if(dir, &target.name, ino);
    Ok(true)
}

/// Is this holder provably dead: of this host and boot, and its process gone, reused, or a
/// zombie (exited, not yet reaped: its files, the flock among them, are already closed).
fn holder_is_dead(h: &HolderRecord) -> bool {
    // liveness() counts a zombie (exited, not yet reaped) as dead.
    h.liveness() == Liveness::Dead
}

/// Who holds the directory, as far as this node knows.
fn who_holds(dir: &Path, name: &str, path: &Path) -> String {
    match (
        current_ino(path).ok().flatten(),
        recorded_holder(dir, name, path),
    ) {
        (None, _) => "it was just released".to_string(),
        (_, Some(h)) => describe(&h),
        (Some(_), None) => "held outside lockfn (by cfs_lock, pmxlock or another node)".to_string(),
    }
}

/// Our record's holder, when the record describes the directory there now.
fn recorded_holder(dir: &Path, name: &str, path: &Path) -> Option<HolderRecord> {
    let ino = current_ino(path).ok().flatten()?;
    read_record_for(dir, name)
        .filter(|r| r.ino == ino)
        .map(|r| r.holder)
}

// ---------------------------------------------------------------------------------------------
// Acquire

/// With the node-local flock held: take the directory. Returns its st_ino.
///
/// Cadence while waiting: local checks (our record, a stat) on every round; at most one mkdir
/// per 250 ms and one utime (unlock request, or the refresh that pins our orphan) per second,
/// the cluster-wide messages. No mkdir while the directory is known to be our orphan.
fn acquire_dir(target: &Target, dir: &Path, path: &Path, wait: &Wait) -> Result<u64> {
    let mkdir_err = |e: io::Error| match errno(&e) {
        libc::ENOENT => not_online(target, dir),
        _ => os_error(target, "cannot create", path, e),
    };
    let start = Instant::now();
    let mut taken = false; // a mkdir said EEXIST
    let mut rounds = 0u32;
    let mut next_utime = start;
    let mut next_mkdir = start;
    // An orphan whose pin failed (pmxcfs refused the refresh) is waited for like any holder.
    let mut refused: Option<u64> = None;
    loop {
        rounds += 1;
        let orphan = match orphan_of_ours(target, dir, path)? {
            Orphan::Dead(ino) if refused == Some(ino) => Orphan::No,
            o => o,
        };
        let now = Instant::now();
        let mut may_mkdir = orphan == Orphan::No;
        match orphan {
            Orphan::Dead(ino) if now >= next_utime => {
                next_utime = now + UNLOCK_REQUEST_EVERY;
                may_mkdir = take_back_orphan(target, dir, path, ino)?;
                if !may_mkdir {
                    refused = Some(ino);
                }
            }
            Orphan::No if taken && now >= next_utime => {
                next_utime = now + UNLOCK_REQUEST_EVERY;
                // ExpiredAndDeleted: the mkdir below may succeed. Young or NotAnExpiry: the
                // mkdir below will most likely fail, and we wait on.
                unlock_request(path).map_err(|e| os_error(target, "unlock request", path, e))?;
            }
            _ => {}
        }
        if may_mkdir && Instant::now() >= next_mkdir {
            // Try-once: a second attempt right after an unlock request, like pmxlock.
            next_mkdir = if wait.is_try_once() {
                Instant::now()
            } else {
                Instant::now() + MKDIR_EVERY
            };
            if let Some(ino) = try_mkdir(path).map_err(mkdir_err)? {
                return Ok(ino);
            }
            taken = true;
        }
        let give_up = if wait.is_try_once() {
            rounds >= 2
        } else {
            wait.expired()
        };
        if give_up {
            return Err(busy_error(
                target,
                wait,
                &who_holds(dir, &target.name, path),
            ));
        }
        if wait.is_try_once() {
            continue;
        }
        let now = Instant::now();
        let until = if orphan == Orphan::Exiting && start.elapsed() < EXITING_WATCH {
            now + EXITING_POLL
        } else if next_mkdir > now {
            next_mkdir
        } else {
            // No mkdir this round (the directory is our orphan, still exiting or not yet
            // pinned): look again at the mkdir cadence.
            now + MKDIR_EVERY
        };
        wait.pause(until - now)?;
    }
}

impl super::Backend for PmxcfsBackend {
    fn acquire(&self, target: &Target, opts: &Options, wait: &Wait) -> Result<Box<dyn Held>> {
        check_options(target, opts)?;
        let dir = lock_dir(target);
        check_lock_dir(target, &dir)?;
        let path = dir.join(&target.name);
        let flock = acquire_flock(target, wait)?;
        // From here on, dropping `flock` (any error) lets the next same-node waiter in.
        // Everything but the inode is ready before the mkdir: a holder killed between its mkdir
        // and its record leaves a directory nobody can prove is an orphan (pmxcfs expires it
        // after 120 s), so that window is kept to a stat and a file write.
        let mut holder = HolderRecord::for_self(opts.holder.as_deref());
        holder.persist = opts.persist;
        let ino = acquire_dir(target, &dir, &path, wait)?;
        holder.token = ino;
        holder.since = crate::holder::now_secs();
        let rec = NodeRecord {
            v: RECORD_VERSION,
            dir: dir.clone(),
            name: target.name.clone(),
            ino,
            holder: holder.clone(),
        };
        if let Err(e) = write_record(&rec) {
            let _ = std::fs::remove_dir(&path);
            let rp = record_path(&target.name);
            return Err(os_error(
                target,
                "cannot write the node-local holder record",
                &rp,
                e,
            ));
        }
        Ok(Box::new(PmxcfsHeld {
            target: target.clone(),
            dir,
            path,
            ino,
            record: holder,
            flock: Some(flock),
        }))
    }

    fn status(&self, target: &Target) -> Result<Status> {
        let dir = lock_dir(target);
        let path = dir.join(&target.name);
        let mut st = Status::new(target);
        st.limit = Some(1);
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => Some(m),
            Err(e) if errno(&e) == libc::ENOENT => {
                if !dir.is_dir() {
                    return Err(not_online(target, &dir));
                }
                None
            }
            Err(e) => return Err(os_error(target, "cannot stat", &path, e)),
        };
        if let Some(m) = &meta {
            st.held = true;
            st.available = Some(0);
            st.details.insert("ino".into(), m.ino().into());
            st.details.insert("mtime".into(), m.mtime().into());
            // The age as seen here: since creation or the last refresh (pmxcfs sets mtime).
            // A plain directory takes unlock requests as utime(0, 0): mtime 0, age unknown.
            if m.mtime() > 0 {
                let mtime = m.mtime() as f64 + m.mtime_nsec() as f64 / 1e9;
                let age = (crate::holder::now_secs() - mtime).max(0.0);
                st.details
                    .insert("age_s".into(), ((age * 10.0).round() / 10.0).into());
            }
            match read_record_for(&dir, &target.name) {
                Some(r) if r.ino == m.ino() => st.holders.push(HolderView::from(r.holder)),
                _ => {
                    st.details.insert(
                        "holder".into(),
                        "unknown: made by cfs_lock, pmxlock, another node, or a lockfn process \
                         whose record is gone"
                            .into(),
                    );
                }
            }
        } else {
            st.available = Some(1);
        }
        if let Ok(f) = File::open(flock_path(&target.name)) {
            if let Some(pid) = flock_holder_pid(&f) {
                st.details.insert("node_flock_pid".into(), pid.into());
            }
        }
        Ok(st)
    }

    fn list(&self, prefix: &Target) -> Result<Vec<Status>> {
        let dir = lock_dir(prefix);
        let entries = match std::fs::read_dir(&dir) {
            Ok(d) => d,
            Err(e) if errno(&e) == libc::ENOENT => return Err(not_online(prefix, &dir)),
            Err(e) => return Err(os_error(prefix, "cannot read", &dir, e)),
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.starts_with(&prefix.name))
            .collect();
        names.sort();
        let mut out = Vec::new();
        for name in names {
            if let Ok(t) = prefix.with_name(&name) {
                match self.status(&t) {
                    Ok(s) if s.held => out.push(s),
                    Ok(_) => {} // released meanwhile
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(out)
    }

    fn gc(&self, scope: &GcScope) -> Result<u32> {
        let rdir = records_dir();
        let entries = match std::fs::read_dir(&rdir) {
            Ok(d) => d,
            Err(e) if errno(&e) == libc::ENOENT => return Ok(0),
            Err(e) => return Err(Error::os(format!("cannot read {}", rdir.display()), e)),
        };
        let dir = crate::target::pmxcfs_dir();
        let mut removed = 0;
        for entry in entries.filter_map(|e| e.ok()) {
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if name.starts_with('.')
                || !name.starts_with(&scope.prefix)
                || crate::target::validate_name(&name, &name, false, crate::target::MAX_NAME)
                    .is_err()
            {
                continue;
            }
            let Ok(target) = Target::parse(&format!("pmxcfs:{name}")) else {
                continue;
            };
            removed += gc_one(&target, &dir)?;
        }
        Ok(removed)
    }

    fn release_named(&self, target: &Target, force: bool) -> Result<u32> {
        let dir = lock_dir(target);
        check_lock_dir(target, &dir)?;
        let path = dir.join(&target.name);
        let ino = current_ino(&path).map_err(|e| os_error(target, "cannot stat", &path, e))?;
        let Some(ino) = ino else {
            return Err(Error::new(
                ErrorKind::NotHeld,
                format!("{target} is not held (no directory {})", path.display()),
            ));
        };
        if force {
            // Operator override: whoever holds it.
            std::fs::remove_dir(&path).map_err(|e| rmdir_error(target, &path, e))?;
            remove_record_if(&dir, &target.name, ino);
            return Ok(1);
        }
        let rec = read_record_for(&dir, &target.name).filter(|r| r.ino == ino);
        let releasable = match &rec {
            Some(r) if r.holder.persist && r.holder.is_this_boot() => true,
            // A dead holder's orphan: only with the node-local flock, so that we never race a
            // same-node waiter recovering it (it holds the flock while doing so).
            Some(r) if holder_is_dead(&r.holder) => {
                return match gc_one(target, &dir)? {
                    0 => Err(not_released(
                        target,
                        "its holder's waiters are recovering it",
                    )),
                    n => Ok(n.min(1)),
                }
            }
            _ => false,
        };
        if !releasable {
            return Err(not_released(
                target,
                "it has no persistent holder of this node (a lock held by a running process \
                 is released by that process; --force takes it anyway)",
            ));
        }
        if !pin_incarnation(&path, ino).map_err(|e| os_error(target, "cannot refresh", &path, e))? {
            return Err(not_released(
                target,
                "it expired or changed hands meanwhile",
            ));
        }
        std::fs::remove_dir(&path).map_err(|e| rmdir_error(target, &path, e))?;
        remove_record_if(&dir, &target.name, ino);
        Ok(1)
    }

    fn update_named(&self, target: &Target) -> Result<()> {
        let dir = lock_dir(target);
        check_lock_dir(target, &dir)?;
        let path = dir.join(&target.name);
        let rec = read_record_for(&dir, &target.name)
            .filter(|r| r.holder.persist && r.holder.is_this_boot())
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::NotHeld,
                    format!("{target} has no persistent holder on this node to update"),
                )
            })?;
        if current_ino(&path).map_err(|e| os_error(target, "cannot stat", &path, e))?
            != Some(rec.ino)
        {
            return Err(lost(target, rec.ino, "the directory is gone or was remade"));
        }
        match refresh(&path) {
            Ok(()) => Ok(()),
            Err(e) if is_lost_errno(&e) => Err(lost(target, rec.ino, &refused(&e))),
            Err(e) => Err(os_error(target, "cannot refresh", &path, e)),
        }
    }
}

fn not_released(target: &Target, why: &str) -> Error {
    Error::new(
        ErrorKind::NotHeld,
        format!("{target} was not released: {why}"),
    )
}

fn refused(e: &io::Error) -> String {
    format!("pmxcfs refused the refresh ({e}: expired, or taken by another node)")
}

fn lost(target: &Target, ino: u64, why: &str) -> Error {
    Error::new(
        ErrorKind::Lost,
        format!("{target}: the lock (token {ino}) was lost: {why}"),
    )
}

fn check_options(target: &Target, opts: &Options) -> Result<()> {
    if opts.shared || opts.limit > 1 {
        return Err(Error::new(
            ErrorKind::Invalid,
            format!(
                "{target}: pmxcfs locks are exclusive (no --shared, no --limit > 1); use zk: \
                 or consul: for those"
            ),
        ));
    }
    if let Some(ttl) = opts.ttl {
        if ttl != PMXCFS_LOCK_TTL {
            return Err(Error::new(
                ErrorKind::Invalid,
                format!(
                    "{target}: pmxcfs fixes the lock lifetime at 120 s after the last refresh; \
                     a ttl of {:.1} s cannot be honoured (leave it unset)",
                    ttl.as_secs_f64()
                ),
            ));
        }
    }
    Ok(())
}

/// gc of one name: with the node-local flock free, remove a dead holder's orphan directory and
/// our stale record. Returns how many items were removed.
fn gc_one(target: &Target, dir: &Path) -> Result<u32> {
    let name = &target.name;
    let Some(rec) = read_record_for(dir, name) else {
        return Ok(0);
    };
    let fpath = flock_path(name);
    let Ok(file) = open_flock_file(&fpath) else {
        return Ok(0);
    };
    if !try_flock(&file).unwrap_or(false) || !still_linked(&file, &fpath) {
        return Ok(0); // a process of this node holds or waits for it: its business
    }
    let path = dir.join(name);
    let mut removed = 0;
    if let Orphan::Dead(ino) = orphan_of_ours(target, dir, &path)? {
        if take_back_orphan(target, dir, &path, ino)? {
            removed += 1;
        }
    } else if let Some(r) = read_record_for(dir, name) {
        // A record whose incarnation is gone, of a holder that is dead or persistent: stale.
        let gone = current_ino(&path).is_ok_and(|i| i != Some(r.ino));
        let ended = r.holder.persist || holder_is_dead(&r.holder);
        if gone && ended && r.ino == rec.ino {
            let _ = std::fs::remove_file(record_path(name));
            removed += 1;
        }
    }
    unlock_flock(&file);
    Ok(removed)
}

// ---------------------------------------------------------------------------------------------
// A held lock

struct PmxcfsHeld {
    target: Target,
    dir: PathBuf,
    path: PathBuf,
    ino: u64,
    record: HolderRecord,
    /// The node-local flock, held until the directory is removed (then closed).
    flock: Option<NodeFlock>,
}

impl PmxcfsHeld {
    fn still_ours(&self) -> Result<()> {
        match current_ino(&self.path) {
            Ok(Some(i)) if i == self.ino => Ok(()),
            Ok(Some(i)) => Err(lost(
                &self.target,
                self.ino,
                &format!("the directory was remade by someone else (token {i})"),
            )),
            Ok(None) => Err(lost(
                &self.target,
                self.ino,
                "the directory is gone (expired after 120 s without refresh, or removed)",
            )),
            Err(e) => Err(os_error(&self.target, "cannot stat", &self.path, e)),
        }
    }
}

impl Held for PmxcfsHeld {
    fn token(&self) -> u64 {
        self.ino
    }

    fn record(&self) -> &HolderRecord {
        &self.record
    }

    fn update(&mut self) -> Result<()> {
        // Never refresh a directory that is not ours (on a plain directory that would work).
        self.still_ours()?;
        match refresh(&self.path) {
            Ok(()) => self.still_ours(),
            Err(e) if is_lost_errno(&e) => Err(lost(&self.target, self.ino, &refused(&e))),
            Err(e) => Err(os_error(&self.target, "cannot refresh", &self.path, e)),
        }
    }

    fn check(&mut self) -> Result<()> {
        self.still_ours()
    }

    fn check_interval(&self) -> Option<Duration> {
        Some(CHECK_INTERVAL)
    }

    fn release(&mut self) -> Result<()> {
        // The directory first, the flock after: a pmxlock that got the flock while our
        // directory still existed would "recover" (take over) it.
        let r = self.still_ours().and_then(|()| {
            std::fs::remove_dir(&self.path).map_err(|e| match errno(&e) {
                libc::ENOENT => lost(&self.target, self.ino, "the directory is gone"),
                _ => rmdir_error(&self.target, &self.path, e),
            })
        });
        remove_record_if(&self.dir, &self.target.name, self.ino);
        self.flock = None;
        r
    }

    fn detach(&mut self) -> Result<()> {
        // The directory and our record (persist) stay; the flock goes with this process.
        if !self.record.persist {
            self.record.persist = true;
            let rec = NodeRecord {
                v: RECORD_VERSION,
                dir: self.dir.clone(),
                name: self.target.name.clone(),
                ino: self.ino,
                holder: self.record.clone(),
            };
            write_record(&rec).map_err(|e| {
                os_error(
                    &self.target,
                    "cannot write the node-local holder record",
                    &record_path(&self.target.name),
                    e,
                )
            })?;
        }
        self.flock = None;
        Ok(())
    }

    fn renew_interval(&self) -> Option<Duration> {
        Some(RENEW_INTERVAL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = PathBuf::from(format!(
            "/dev/shm/lockfn-pmxcfs-unit-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn unlock_request_answers_on_a_plain_directory() {
        let d = tmp("unlock");
        let p = d.join("x");
        assert_eq!(unlock_request(&p).unwrap(), UnlockAnswer::ExpiredAndDeleted);
        std::fs::create_dir(&p).unwrap();
        // A plain directory accepts utime(0, 0): not an expiry, and it is still there.
        assert_eq!(unlock_request(&p).unwrap(), UnlockAnswer::NotAnExpiry);
        assert!(p.is_dir());
        refresh(&p).unwrap();
        let ino = current_ino(&p).unwrap().unwrap();
        assert!(pin_incarnation(&p, ino).unwrap());
        assert!(!pin_incarnation(&p, ino + 1).unwrap());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn flock_holder_is_found_in_proc_locks() {
        let d = tmp("flock");
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

    #[test]
    fn zombie_holder_is_dead() {
        let me = HolderRecord::for_self(None);
        assert!(!holder_is_dead(&me));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let mut r = HolderRecord::for_self(None);
        r.pid = child.id() as i32;
        r.start_time = crate::holder::process_start_time(r.pid).unwrap_or(0);
        // Not reaped yet: a zombie once it exited (bounded wait).
        let mut dead = false;
        for _ in 0..500 {
            if holder_is_dead(&r) {
                dead = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(dead, "an exited, unreaped holder is dead");
        child.wait().unwrap();
    }
}
