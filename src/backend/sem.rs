//! The sem backend: a POSIX named semaphore `/NAME` (initial value = limit), plus a record file
//! of our own, `/dev/shm/lockfn.NAME`, that holds one holder record per slot we took.
//!
//! The semaphore alone is what excludes: a resourcelock (cjnfuncs/posix_ipc) user of `/NAME`
//! and we share its count. The record file is ours alone (resourcelock's shared memory is
//! never touched) and every change to it is made under flock(2) on it, which the kernel drops
//! when a process dies — so recovering a dead holder's slot is serialised and happens once.
//!
//! Invariants, all under the record file's exclusive flock:
//! - a slot's record is added after its sem_wait and removed before its sem_post;
//! - a dead holder's record is removed and its slot posted in one critical section, so two
//!   waiters can never both give it back;
//! - a release whose record is gone (recovered or forced by an operator) posts nothing.
//!
//! The one unprotected window: a process killed between its sem_wait and writing its record
//! (a few microseconds) leaves a slot taken with no record; `lockfn release --force` gives it
//! back, as resourcelock's forced unget does.
//!
//! Cost: an uncontended acquisition is one exclusive-flock section (fstat, stat, pread,
//! sem_trywait, pwrite) on a record file and semaphore the process keeps open between
//! acquisitions (see `POOL`), a release one more (pread, pwrite, sem_post). A waiter sleeps in
//! sem_clockwait and looks for dead holders every `SLICE`, through pidfds once it has seen them
//! alive.

use super::{GcScope, Held, HolderView, Status, Wait};
use crate::holder::{own_process, HolderRecord, Liveness, LivenessWatch};
use crate::target::Located;
use crate::{Error, ErrorKind, Options, Result, Target};
use serde::{Deserialize, Serialize};
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};

const SHM_DIR: &str = "/dev/shm";
const RECORD_PREFIX: &str = "lockfn.";
/// How long a waiter sleeps in sem_clockwait at most before it polls the cancel fd and looks for
/// dead holders: a SIGKILLed holder's slot is back within about this, and so is a cancel made
/// through the cancel fd alone. A signal with a handler (the CLI's, Python's) interrupts the
/// wait at once (EINTR, even under SA_RESTART: a timed futex wait is never restarted).
const SLICE: Duration = Duration::from_millis(200);
/// Bound on re-opening after `gc` removed the semaphore under us.
const MAX_REOPEN: usize = 20;
/// First read size of a record file whose length we do not know (a few holders fit).
const READ_CHUNK: usize = 4096;
/// How much shorter a rewritten record document may be than the file before the file is
/// truncated rather than padded.
const PAD_MAX: usize = 4096;

pub struct SemBackend;

extern "C" {
    // glibc ≥ 2.30; not (yet) in the libc crate. Waits against CLOCK_MONOTONIC so that a
    // wall-clock jump neither shortens nor stretches a timeout.
    fn sem_clockwait(
        sem: *mut libc::sem_t,
        clock: libc::clockid_t,
        abstime: *const libc::timespec,
    ) -> libc::c_int;
}

/// An open POSIX named semaphore.
struct Sem {
    ptr: *mut libc::sem_t,
}

// sem_* calls are thread-safe; the pointer is only closed in Drop.
unsafe impl Send for Sem {}

fn sem_path(name: &str) -> PathBuf {
    PathBuf::from(format!("{SHM_DIR}/sem.{name}"))
}

fn record_path(name: &str) -> PathBuf {
    PathBuf::from(format!("{SHM_DIR}/{RECORD_PREFIX}{name}"))
}

fn cname(name: &str) -> io::Result<CString> {
    CString::new(format!("/{name}")).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

impl Sem {
    /// Open `/name`, creating it with `value` and exactly `mode` if it does not exist.
    fn open_or_create(name: &str, mode: u32, value: u32) -> io::Result<Sem> {
        // Plain open first: it usually exists, and glibc's O_CREAT|O_EXCL path writes, maps,
        // link()s and unlinks a temporary file even when the name is taken.
        match Sem::open_existing(name) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            r => return r,
        }
        let c = cname(name)?;
        let ptr = {
            let _g = sem_open_lock();
            unsafe {
                libc::sem_open(
                    c.as_ptr(),
                    libc::O_CREAT | libc::O_EXCL,
                    mode as libc::c_uint,
                    value as libc::c_uint,
                )
            }
        };
        if ptr != libc::SEM_FAILED {
            // sem_open applies the umask; the caller's mode is what they asked for.
            let _ = std::fs::set_permissions(sem_path(name), std::fs::Permissions::from_mode(mode));
            return Ok(Sem { ptr });
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EEXIST) {
            return Err(err);
        }
        Sem::open_existing(name) // created meanwhile by another opener
    }

    fn open_existing(name: &str) -> io::Result<Sem> {
        let c = cname(name)?;
        let ptr = {
            let _g = sem_open_lock();
            unsafe { libc::sem_open(c.as_ptr(), 0) }
        };
        if ptr == libc::SEM_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Sem { ptr })
    }

    fn try_wait(&self) -> io::Result<bool> {
        loop {
            if unsafe { libc::sem_trywait(self.ptr) } == 0 {
                return Ok(true);
            }
            match io::Error::last_os_error().raw_os_error() {
                Some(libc::EAGAIN) => return Ok(false),
                Some(libc::EINTR) => continue,
                _ => return Err(io::Error::last_os_error()),
            }
        }
    }

    /// Wait until `until` (monotonic); Ok(false) on timeout or signal.
    fn wait_until(&self, until: Instant) -> io::Result<bool> {
        let mut now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
        let d = until.saturating_duration_since(Instant::now());
        let mut abs = libc::timespec {
            tv_sec: now.tv_sec + d.as_secs() as libc::time_t,
            tv_nsec: now.tv_nsec + d.subsec_nanos() as libc::c_long,
        };
        if abs.tv_nsec >= 1_000_000_000 {
            abs.tv_sec += 1;
            abs.tv_nsec -= 1_000_000_000;
        }
        if unsafe { sem_clockwait(self.ptr, libc::CLOCK_MONOTONIC, &abs) } == 0 {
            return Ok(true);
        }
        match io::Error::last_os_error().raw_os_error() {
            Some(libc::ETIMEDOUT) | Some(libc::EINTR) => Ok(false),
            _ => Err(io::Error::last_os_error()),
        }
    }

    fn post(&self) -> io::Result<()> {
        if unsafe { libc::sem_post(self.ptr) } == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    fn value(&self) -> i64 {
        let mut v: libc::c_int = 0;
        unsafe { libc::sem_getvalue(self.ptr, &mut v) };
        v as i64
    }
}

impl Drop for Sem {
    fn drop(&mut self) {
        let _g = sem_open_lock();
        unsafe { libc::sem_close(self.ptr) };
    }
}

/// Held around our sem_open and sem_close calls, and by the atfork prepare handler (fork.rs):
/// glibc guards its table of semaphore mappings with an internal lock that fork does not
/// reset, so a fork while one of our threads is inside sem_open would leave a child that
/// hangs in its first sem_open.
pub(crate) static SEM_OPEN: Mutex<()> = Mutex::new(());

fn sem_open_lock() -> MutexGuard<'static, ()> {
    crate::fork::ensure_handlers();
    SEM_OPEN.lock().unwrap_or_else(|e| e.into_inner())
}

/// Inode of the semaphore file `/NAME` now (0: cannot tell).
fn sem_ino(name: &str) -> u64 {
    std::fs::symlink_metadata(sem_path(name))
        .map(|m| m.ino())
        .unwrap_or(0)
}

/// Is the semaphore we opened as inode `ino` no longer the one at its path? gc unlinks an idle
/// one under the record file's flock and then the record file, so under that flock a linked
/// record file vouches for it; this covers the rest: gc killed between its two unlinks, or
/// someone else removing or replacing it. One stat(2).
fn sem_replaced(name: &str, ino: u64) -> bool {
    match std::fs::symlink_metadata(sem_path(name)) {
        Ok(m) => ino != 0 && m.ino() != ino,
        Err(e) => e.kind() == io::ErrorKind::NotFound,
    }
}

fn sem_unlink(name: &str) -> io::Result<()> {
    let c = cname(name)?;
    if unsafe { libc::sem_unlink(c.as_ptr()) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The record file's content.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Doc {
    v: u32,
    limit: u32,
    /// Token of the next acquisition. Starts at the creation time in microseconds, so tokens
    /// keep growing even after `gc` removed an idle record file and it was made anew.
    next_token: u64,
    holders: Vec<HolderRecord>,
}

impl Doc {
    fn new(limit: u32) -> Doc {
        let us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(1);
        Doc {
            v: 1,
            limit,
            next_token: us.max(1),
            holders: Vec::new(),
        }
    }
}

/// The record file, `/dev/shm/lockfn.NAME`.
struct Records {
    /// The record file in the registry of descriptors that carry lock state (fork.rs): a
    /// child forked without exec holds no copy of it, so it can never sit in our flock
    /// sections. Declared before `file`, so it is unregistered before the file is closed.
    _registered: crate::fork::Registration,
    file: File,
    path: PathBuf,
}

impl Records {
    fn new(file: File, path: PathBuf) -> Records {
        Records {
            _registered: crate::fork::register(file.as_raw_fd()),
            file,
            path,
        }
    }
}

/// Holds flock(2) on the record file until dropped.
struct Flocked<'a> {
    rec: &'a Records,
}

impl Drop for Flocked<'_> {
    fn drop(&mut self) {
        unsafe { libc::flock(self.rec.file.as_raw_fd(), libc::LOCK_UN) };
    }
}

impl Records {
    /// Open the record file; with `create`, make it (exactly `mode`) if it does not exist.
    fn open(name: &str, mode: u32, create: bool) -> io::Result<Records> {
        let path = record_path(name);
        let open = |create_new: bool| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(create_new)
                .mode(mode)
                .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
                .open(&path)
        };
        // Plain open first (it usually exists); create only on ENOENT. Between the two, another
        // opener may create it and gc remove it again: try again, a bounded number of times.
        let mut last = io::Error::from_raw_os_error(libc::ENOENT);
        for _ in 0..MAX_REOPEN {
            match open(false) {
                Ok(file) => return Ok(Records::new(file, path)),
                Err(e) if create && e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            match open(true) {
                Ok(file) => {
                    // open(2) applies the umask; the caller's mode is what they asked for.
                    let _ = file.set_permissions(std::fs::Permissions::from_mode(mode));
                    return Ok(Records::new(file, path));
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = e,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    fn flock(&self, op: libc::c_int) -> io::Result<Flocked<'_>> {
        loop {
            if unsafe { libc::flock(self.file.as_raw_fd(), op) } == 0 {
                return Ok(Flocked { rec: self });
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINTR) {
                return Err(e);
            }
        }
    }

    /// The file's length, if it is still the file at its path (`gc` unlinks idle ones): one
    /// fstat. None also when fstat fails (the caller reopens).
    fn linked_len(&self) -> Option<u64> {
        self.file
            .metadata()
            .ok()
            .filter(|m| m.nlink() > 0)
            .map(|m| m.len())
    }

    /// The records, and the file's length (what a rewrite in the same flock section pads to).
    /// `size`: the length from fstat, if the caller has it (one pread); without it the file is
    /// read until a short read, which is one pread for any usual size.
    fn read(&self, size: Option<u64>) -> Result<(Option<Doc>, usize)> {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; size.map_or(READ_CHUNK, |s| s as usize)];
        let mut n = 0;
        loop {
            if n == buf.len() {
                if size.is_some() {
                    break;
                }
                buf.resize(buf.len() * 2, 0);
            }
            match self.file.read_at(&mut buf[n..], n as u64) {
                Ok(0) => break,
                Ok(k) => {
                    n += k;
                    // A short read of a regular file is its end.
                    if size.is_none() && n < buf.len() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::os(format!("cannot read {}", self.path.display()), e)),
            }
        }
        buf.truncate(n);
        if buf.iter().all(u8::is_ascii_whitespace) {
            return Ok((None, n));
        }
        // Only the first JSON value counts: what follows is padding (see `write`), or stale
        // bytes of a writer killed between its pwrite and its ftruncate.
        match serde_json::Deserializer::from_slice(&buf)
            .into_iter::<Doc>()
            .next()
        {
            Some(Ok(doc)) => Ok((Some(doc), n)),
            _ => Err(Error::new(
                ErrorKind::Internal,
                format!(
                    "the holder records in {} are not lockfn's (corrupted?); remove the file \
                     when no lockfn process uses the lock",
                    self.path.display()
                ),
            )),
        }
    }

    /// Replace the records; `file_len`: the file's length as `read` returned it in this flock
    /// section.
    fn write(&self, doc: &Doc, file_len: usize) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let mut data = serde_json::to_vec(doc)
            .map_err(|e| Error::new(ErrorKind::Internal, format!("encoding records: {e}")))?;
        data.push(b'\n');
        // A shorter document is padded with spaces over the old one instead of truncating the
        // file (readers take the first JSON value): one syscall fewer on every release. Only
        // a file left much longer (a large limit, emptied) is truncated.
        let truncate = file_len > data.len() + PAD_MAX;
        if !truncate && file_len > data.len() {
            data.resize(file_len, b' ');
        }
        // One pwrite is atomic against SIGKILL; the truncate after it only trims stale bytes.
        self.file
            .write_all_at(&data, 0)
            .and_then(|_| {
                if truncate {
                    self.file.set_len(data.len() as u64)
                } else {
                    Ok(())
                }
            })
            .map_err(|e| Error::os(format!("cannot write {}", self.path.display()), e))
    }
}

fn os_err(target: &Target, what: &str, e: io::Error) -> Error {
    let hint = match e.raw_os_error() {
        Some(libc::EACCES) | Some(libc::EPERM) => {
            " (the semaphore belongs to another user; see --mode, or run as that user)"
        }
        _ => "",
    };
    let mut err = Error::os(format!("{target}: {what}"), e);
    if !hint.is_empty() {
        err = Error::new(err.kind(), format!("{}{hint}", err.message()));
    }
    err
}

/// Give back the slots of holders proven dead (`live` says who is). Caller holds the
/// exclusive flock.
fn recover_dead(sem: &Sem, doc: &mut Doc, mut live: impl FnMut(&HolderRecord) -> Liveness) -> u32 {
    let mut n = 0;
    doc.holders.retain(|h| {
        if h.persist || live(h) != Liveness::Dead {
            return true;
        }
        if sem.post().is_ok() {
            n += 1;
        }
        false
    });
    n
}

/// A record file and its semaphore, opened together under the record file's flock: one
/// incarnation (see `gc`).
pub(crate) struct Opened {
    name: String,
    /// The process that opened them.
    pid: i32,
    sem: Sem,
    /// Inode of the semaphore file when we opened it (0: unknown); see `sem_replaced`.
    sem_ino: u64,
    records: Records,
}

/// Pairs this process opened and is not using, kept for its next acquisition of the same name
/// so that an uncontended cycle does not open, map, unmap and close them each time. Rules:
/// - an entry is used by one handle at a time (taken out meanwhile): flock(2) belongs to the
///   open file description, so two users of one description would not exclude each other;
/// - only by the process that opened it (a forked child shares the parent's descriptions, for
///   the same reason): entries of another pid are dropped;
/// - only once, under the flock, its record file is found still linked (gc removes idle ones)
///   and its semaphore still the one at the path (`sem_replaced`).
///
/// try_lock only: a busy pool means opening afresh, never waiting. The atfork prepare handler
/// takes it (fork.rs), and the child handler forgets the parent's entries ([`forget_pool`]).
pub(crate) static POOL: Mutex<Pool> = Mutex::new(Vec::new());
pub(crate) type Pool = Vec<Opened>;

/// In a forked child (atfork child handler, pool held): forget the parent's pairs without
/// closing anything: their record files were closed through the registry of fork.rs, and
/// their semaphore mappings are harmless (and sem_close could meet glibc's lock taken).
pub(crate) fn forget_pool(pool: &mut Pool) {
    std::mem::forget(std::mem::take(pool));
}
/// Pairs kept at most (the least recently released go first).
const POOL_MAX: usize = 8;

fn pool() -> Option<MutexGuard<'static, Vec<Opened>>> {
    match POOL.try_lock() {
        Ok(g) => Some(g),
        Err(TryLockError::Poisoned(e)) => Some(e.into_inner()),
        Err(TryLockError::WouldBlock) => None,
    }
}

fn pool_take(name: &str, pid: i32) -> Option<Opened> {
    let mut pool = pool()?;
    pool.retain(|o| o.pid == pid); // a parent's: closing our copies leaves its flocks alone
    let i = pool.iter().position(|o| o.name == name)?;
    Some(pool.remove(i))
}

fn pool_put(o: Opened) {
    if let Some(mut pool) = pool() {
        if pool.len() >= POOL_MAX {
            pool.remove(0);
        }
        pool.push(o);
    }
}

struct SemHeld {
    target: Target,
    /// Given back to the pool by a successful release.
    opened: Option<Opened>,
    record: HolderRecord,
}

/// Our record for a slot just taken: the document's next token, pushed and written. Caller
/// holds the exclusive flock; on failure the slot is given back.
fn record_slot(
    opts: &Options,
    own: (i32, u64),
    sem: &Sem,
    records: &Records,
    mut doc: Doc,
    file_len: usize,
) -> Result<HolderRecord> {
    let mut record = HolderRecord::for_process(own.0, own.1, opts.holder.as_deref());
    record.token = doc.next_token;
    record.persist = opts.persist;
    doc.next_token += 1;
    doc.holders.push(record.clone());
    if let Err(e) = records.write(&doc, file_len) {
        let _ = sem.post();
        return Err(e);
    }
    Ok(record)
}

fn check_limit(target: &Target, doc: &Doc, opts: &Options) -> Result<()> {
    if doc.limit == opts.limit {
        return Ok(());
    }
    Err(Error::new(
        ErrorKind::Invalid,
        format!(
            "{target} exists with limit {}, asked for limit {} (all users of a semaphore must \
             agree on its limit)",
            doc.limit, opts.limit
        ),
    ))
}

/// What a waiter's look for dead holders found.
enum Recovery {
    Done,
    /// `gc` removed the record file, or the semaphore was replaced: what we wait on is no
    /// longer the lock; open it again.
    Stale,
}

impl SemBackend {
    fn first_holder(records: &Records) -> Option<HolderRecord> {
        let _g = records.flock(libc::LOCK_SH).ok()?;
        records.read(None).ok()?.0?.holders.into_iter().next()
    }

    /// A waiter's periodic look for dead holders: under a shared flock, so waiters do not
    /// queue behind each other, and through `watch` (one poll per holder once it has a pidfd);
    /// only when one is dead, recovery under the exclusive flock from a fresh read (another
    /// waiter may have recovered it meanwhile).
    fn recover_waiting(
        target: &Target,
        sem: &Sem,
        sem_ino: u64,
        records: &Records,
        watch: &mut LivenessWatch,
    ) -> Result<Recovery> {
        let lock_err = |e| os_err(target, "cannot lock the holder records", e);
        {
            let _g = records.flock(libc::LOCK_SH).map_err(lock_err)?;
            let Some(len) = records.linked_len() else {
                return Ok(Recovery::Stale);
            };
            let Some(doc) = records.read(Some(len))?.0 else {
                return Ok(Recovery::Done);
            };
            if sem_replaced(target.name(), sem_ino) {
                return Ok(Recovery::Stale);
            }
            let any_dead = doc
                .holders
                .iter()
                .any(|h| !h.persist && watch.liveness(h) == Liveness::Dead);
            watch.retain(&doc.holders);
            if !any_dead {
                return Ok(Recovery::Done);
            }
        }
        let _g = records.flock(libc::LOCK_EX).map_err(lock_err)?;
        let Some(len) = records.linked_len() else {
            return Ok(Recovery::Stale);
        };
        if let (Some(mut doc), file_len) = records.read(Some(len))? {
            if recover_dead(sem, &mut doc, |h| watch.liveness(h)) > 0 {
                records.write(&doc, file_len)?;
            }
        }
        Ok(Recovery::Done)
    }
}

impl super::Backend for SemBackend {
    fn scheme(&self) -> &'static str {
        "sem"
    }

    fn bare_names(&self) -> super::BareNames {
        super::BareNames::Always
    }

    fn is_local(&self) -> bool {
        true
    }

    fn locate(&self, _text: &str, name: &str) -> Result<Located> {
        Ok(Located::named(
            "sem",
            name,
            sem_path(name).display().to_string(),
            (),
        ))
    }

    fn persistent_lifetime(&self, _target: &Target, _opts: &Options) -> super::Lifetime {
        super::Lifetime::until_released(
            ", or when the host restarts (/dev/shm is memory); gc never removes it",
        )
    }

    fn acquire(&self, target: &Target, opts: &Options, wait: &Wait) -> Result<Box<dyn Held>> {
        if opts.shared {
            return Err(Error::new(
                ErrorKind::Invalid,
                format!(
                    "{target}: shared (read) locks are not available on sem: (a POSIX semaphore \
                     has no reader/writer mode); use --limit N, or zk:"
                ),
            ));
        }
        // sem_open takes at most SEM_VALUE_MAX (i32::MAX on Linux): refuse a larger limit
        // before anything is created (else EINVAL from sem_open, and an empty record file).
        if opts.limit > i32::MAX as u32 {
            return Err(Error::new(
                ErrorKind::Invalid,
                format!(
                    "{target}: limit {} is above the semaphore maximum {}",
                    opts.limit,
                    i32::MAX
                ),
            ));
        }
        let name = target.name();
        let lock_err = |e| os_err(target, "cannot lock the holder records", e);
        let own = own_process();
        let mut watch = LivenessWatch::new();
        'reopen: for _ in 0..MAX_REOPEN {
            let (records, pooled_sem) = match pool_take(name, own.0) {
                Some(o) => (o.records, Some((o.sem, o.sem_ino))),
                None => (
                    Records::open(name, opts.mode, true)
                        .map_err(|e| os_err(target, "cannot open the holder records", e))?,
                    None,
                ),
            };
            // One critical section does the whole uncontended acquisition: recover dead
            // holders, take a slot if one is free, record it.
            let g = records.flock(libc::LOCK_EX).map_err(lock_err)?;
            let Some(len) = records.linked_len() else {
                continue; // removed by gc (while pooled, or between open and flock)
            };
            let (sem, sem_ino) = match pooled_sem {
                Some((sem, ino)) => {
                    if sem_replaced(name, ino) {
                        continue; // the semaphore we kept open is not the lock any more
                    }
                    (sem, ino)
                }
                None => {
                    let sem = Sem::open_or_create(name, opts.mode, opts.limit)
                        .map_err(|e| os_err(target, "cannot open the semaphore", e))?;
                    (sem, sem_ino(name))
                }
            };
            let (doc, file_len) = records.read(Some(len))?;
            let existed = doc.is_some();
            let mut doc = doc.unwrap_or_else(|| Doc::new(opts.limit));
            check_limit(target, &doc, opts)?;
            // Plain /proc reads here: most acquisitions never wait, so opening pidfds for the
            // other holders would only add syscalls.
            let recovered = recover_dead(&sem, &mut doc, |h| h.liveness());
            if sem
                .try_wait()
                .map_err(|e| os_err(target, "sem_trywait", e))?
            {
                let record = record_slot(opts, own, &sem, &records, doc, file_len)?;
                drop(g);
                return Ok(SemHeld::boxed(target, own.0, sem, sem_ino, records, record));
            }
            // Busy. Write only what changed: recovered slots, or a new document (so that
            // others see its limit and its first token).
            if recovered > 0 || !existed {
                records.write(&doc, file_len)?;
            }
            drop(g);
            if wait.is_try_once() || wait.expired() {
                return Err(wait.busy(target, doc.holders.first()));
            }
            drop(doc);
            let mut next_recovery = Instant::now() + SLICE;
            loop {
                wait.check_cancel()?;
                let until = match wait.deadline() {
                    Some(d) => d.min(next_recovery),
                    None => next_recovery,
                };
                if sem
                    .wait_until(until)
                    .map_err(|e| os_err(target, "sem_clockwait", e))?
                {
                    break;
                }
                if wait.expired() {
                    return Err(wait.busy(target, Self::first_holder(&records).as_ref()));
                }
                if Instant::now() >= next_recovery {
                    match Self::recover_waiting(target, &sem, sem_ino, &records, &mut watch)? {
                        Recovery::Done => {}
                        Recovery::Stale => continue 'reopen,
                    }
                    next_recovery = Instant::now() + SLICE;
                }
            }
            // We have a slot: record it, unless gc removed this incarnation meanwhile (or the
            // semaphore was replaced).
            let g = records.flock(libc::LOCK_EX).map_err(lock_err)?;
            let Some(len) = records.linked_len() else {
                let _ = sem.post();
                continue;
            };
            if sem_replaced(name, sem_ino) {
                let _ = sem.post();
                continue;
            }
            let (doc, file_len) = records.read(Some(len))?;
            let doc = doc.unwrap_or_else(|| Doc::new(opts.limit));
            let record = record_slot(opts, own, &sem, &records, doc, file_len)?;
            drop(g);
            return Ok(SemHeld::boxed(target, own.0, sem, sem_ino, records, record));
        }
        Err(Error::new(
            ErrorKind::Internal,
            format!("{target}: the semaphore kept being removed while acquiring it (gc loop?)"),
        ))
    }

    fn status(&self, target: &Target) -> Result<Status> {
        let mut st = Status::new(target);
        let sem = match Sem::open_existing(target.name()) {
            Ok(s) => Some(s),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => None,
            Err(e) => return Err(os_err(target, "cannot open the semaphore", e)),
        };
        let doc = match Records::open(target.name(), 0o600, false) {
            Ok(r) => {
                let _g = r
                    .flock(libc::LOCK_SH)
                    .map_err(|e| os_err(target, "cannot lock the holder records", e))?;
                r.read(None)?.0
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => None,
            Err(e) => return Err(os_err(target, "cannot open the holder records", e)),
        };
        let limit = doc.as_ref().map(|d| d.limit).unwrap_or(1);
        if let Some(sem) = &sem {
            let avail = sem.value();
            st.available = Some(avail);
            st.limit = Some(limit);
            let ours = doc.as_ref().map(|d| d.holders.len()).unwrap_or(0) as i64;
            let others = limit as i64 - avail - ours;
            if others > 0 {
                // Slots taken by peers (resourcelock) or by a process killed mid-acquire.
                st.details
                    .insert("unrecorded_holders".into(), others.into());
            }
            st.held = avail < limit as i64;
        }
        if let Some(doc) = doc {
            st.details
                .insert("next_token".into(), doc.next_token.into());
            st.holders = doc.holders.into_iter().map(HolderView::from).collect();
            st.held |= !st.holders.is_empty();
        }
        Ok(st)
    }

    fn list(&self, prefix: &Target) -> Result<Vec<Status>> {
        let mut out = Vec::new();
        let dir = std::fs::read_dir(SHM_DIR)
            .map_err(|e| Error::os(format!("cannot read {SHM_DIR}"), e))?;
        let mut names: Vec<String> = dir
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter_map(|n| n.strip_prefix(RECORD_PREFIX).map(str::to_string))
            .filter(|n| n.starts_with(prefix.name()))
            .collect();
        names.sort();
        for name in names {
            if let Ok(t) = prefix.with_name(&name) {
                out.push(self.status(&t)?);
            }
        }
        Ok(out)
    }

    fn gc(&self, scope: &GcScope) -> Result<u32> {
        let mut removed = 0;
        let dir = std::fs::read_dir(SHM_DIR)
            .map_err(|e| Error::os(format!("cannot read {SHM_DIR}"), e))?;
        for entry in dir.filter_map(|e| e.ok()) {
            let Ok(file) = entry.file_name().into_string() else {
                continue;
            };
            let Some(name) = file.strip_prefix(RECORD_PREFIX) else {
                continue;
            };
            if !name.starts_with(&scope.prefix)
                || crate::target::validate_name(name, name, false, crate::target::MAX_NAME).is_err()
            {
                continue;
            }
            let Ok(records) = Records::open(name, 0o600, false) else {
                continue;
            };
            let Ok(_g) = records.flock(libc::LOCK_EX) else {
                continue;
            };
            let Some(len) = records.linked_len() else {
                continue;
            };
            let Ok((Some(mut doc), file_len)) = records.read(Some(len)) else {
                continue;
            };
            let Ok(sem) = Sem::open_existing(name) else {
                // Records without their semaphore describe nothing.
                if std::fs::remove_file(&records.path).is_ok() {
                    removed += 1;
                }
                continue;
            };
            let n = recover_dead(&sem, &mut doc, |h| h.liveness());
            removed += n;
            if doc.holders.is_empty() && sem.value() >= doc.limit as i64 {
                // Idle: unlink the semaphore first, then the records, both under our flock.
                // An opener pairs a semaphore with a record file only under that file's flock
                // and while it is linked, so it opens the old semaphore only with the old
                // record file, and then finds that file unlinked. (The other order let an
                // opener that found the records gone make new ones and pair them, under their
                // own flock, with the old semaphore before we unlinked it: two semaphores
                // behind one record file.)
                // Gone already (ENOENT): what is left are records without their semaphore.
                // Any other error: not ours to remove (another user's): leave both.
                let sem_gone = match sem_unlink(name) {
                    Ok(()) => true,
                    Err(e) => e.raw_os_error() == Some(libc::ENOENT),
                };
                if sem_gone && std::fs::remove_file(&records.path).is_ok() {
                    removed += 1;
                }
            } else if n > 0 {
                records.write(&doc, file_len)?;
            }
        }
        Ok(removed)
    }

    fn release_named(&self, target: &Target, force: bool) -> Result<u32> {
        let name = target.name();
        let sem = Sem::open_existing(name).map_err(|e| {
            if e.raw_os_error() == Some(libc::ENOENT) {
                Error::new(
                    ErrorKind::NotHeld,
                    format!("{target} is not held (no such semaphore)"),
                )
            } else {
                os_err(target, "cannot open the semaphore", e)
            }
        })?;
        let records = match Records::open(name, 0o600, false) {
            Ok(r) => Some(r),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => None,
            Err(e) => return Err(os_err(target, "cannot open the holder records", e)),
        };
        let _g = match &records {
            Some(r) => Some(
                r.flock(libc::LOCK_EX)
                    .map_err(|e| os_err(target, "cannot lock the holder records", e))?,
            ),
            None => None,
        };
        let (mut doc, file_len) = match &records {
            Some(r) => r.read(None)?,
            None => (None, 0),
        };
        let limit = doc.as_ref().map(|d| d.limit).unwrap_or(1);
        let mut released = 0;
        if let Some(d) = doc.as_mut() {
            released += recover_dead(&sem, d, |h| h.liveness());
            if !force {
                let before = d.holders.len();
                d.holders.retain(|h| !(h.persist && h.is_this_boot()));
                for _ in d.holders.len()..before {
                    sem.post().map_err(|e| os_err(target, "sem_post", e))?;
                    released += 1;
                }
            } else if !d.holders.is_empty() {
                d.holders.remove(0);
                sem.post().map_err(|e| os_err(target, "sem_post", e))?;
                released += 1;
            }
        }
        if force && released == 0 && sem.value() < limit as i64 {
            // resourcelock's forced unget: a slot taken by someone without a record.
            sem.post().map_err(|e| os_err(target, "sem_post", e))?;
            released += 1;
        }
        if let (Some(r), Some(d)) = (&records, &doc) {
            r.write(d, file_len)?;
        }
        if released == 0 {
            let why = if force {
                "nothing holds it"
            } else {
                "it has no persistent holder (a lock held by a running process is released by \
                 that process; --force takes it anyway)"
            };
            return Err(Error::new(
                ErrorKind::NotHeld,
                format!("{target} was not released: {why}"),
            ));
        }
        Ok(released)
    }

    fn update_named(&self, target: &Target) -> Result<()> {
        let st = self.status(target)?;
        if st.holders.iter().any(|h| h.record.persist) {
            Ok(()) // a semaphore slot never expires: nothing to renew
        } else {
            Err(Error::new(
                ErrorKind::NotHeld,
                format!("{target} has no persistent holder to update"),
            ))
        }
    }
}

impl SemHeld {
    /// The handle of a slot just recorded, owning the pair it was taken through.
    fn boxed(
        target: &Target,
        pid: i32,
        sem: Sem,
        sem_ino: u64,
        records: Records,
        record: HolderRecord,
    ) -> Box<dyn Held> {
        Box::new(SemHeld {
            target: target.clone(),
            opened: Some(Opened {
                name: target.name().to_string(),
                pid,
                sem,
                sem_ino,
                records,
            }),
            record,
        })
    }

    fn lost(&self) -> Error {
        Error::new(
            ErrorKind::Lost,
            format!(
                "{}: our slot (token {}) was taken away (forced release by an operator?)",
                self.target, self.record.token
            ),
        )
    }

    fn ours(&self, h: &HolderRecord) -> bool {
        h.token == self.record.token && h.pid == self.record.pid
    }

    fn opened(&self) -> Result<&Opened> {
        self.opened.as_ref().ok_or_else(|| {
            Error::new(
                ErrorKind::NotHeld,
                format!("{} is not held (already released)", self.target),
            )
        })
    }
}

impl Held for SemHeld {
    fn token(&self) -> u64 {
        self.record.token
    }

    fn record(&self) -> &HolderRecord {
        &self.record
    }

    fn update(&mut self) -> Result<()> {
        let opened = self.opened()?;
        let records = &opened.records;
        let _g = records
            .flock(libc::LOCK_SH)
            .map_err(|e| os_err(&self.target, "cannot lock the holder records", e))?;
        // Our record, and the semaphore we hold still the lock's.
        let present = match records.linked_len() {
            Some(len) => records
                .read(Some(len))?
                .0
                .is_some_and(|d| d.holders.iter().any(|h| self.ours(h))),
            None => false,
        } && !sem_replaced(self.target.name(), opened.sem_ino);
        if present {
            Ok(())
        } else {
            Err(self.lost())
        }
    }

    /// A forced release by an operator is the only way to lose a sem slot; noticing it costs
    /// a shared flock, an fstat and a read of the record file.
    fn check_interval(&self) -> Option<Duration> {
        Some(Duration::from_secs(1))
    }

    fn release(&mut self) -> Result<()> {
        let Opened { sem, records, .. } = self.opened()?;
        {
            // One critical section: our record out, then our slot back.
            let _g = records
                .flock(libc::LOCK_EX)
                .map_err(|e| os_err(&self.target, "cannot lock the holder records", e))?;
            let (Some(mut doc), file_len) = records.read(None)? else {
                return Err(self.lost());
            };
            let before = doc.holders.len();
            doc.holders.retain(|h| !self.ours(h));
            if doc.holders.len() == before {
                return Err(self.lost());
            }
            records.write(&doc, file_len)?;
            sem.post()
                .map_err(|e| os_err(&self.target, "sem_post", e))?;
        }
        if let Some(o) = self.opened.take() {
            pool_put(o);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(tag: &str) -> String {
        format!("unit-{tag}-{}", std::process::id())
    }

    fn holders(n: usize) -> Doc {
        let mut doc = Doc::new(n as u32);
        for _ in 0..n {
            doc.holders.push(HolderRecord::for_self(Some("x")));
        }
        doc
    }

    #[test]
    fn a_shorter_document_is_padded_and_a_much_shorter_one_truncates() {
        let n = name("pad");
        let r = Records::open(&n, 0o600, true).unwrap();
        r.write(&holders(2), 0).unwrap();
        let (doc, long) = r.read(None).unwrap();
        assert_eq!(doc.unwrap().holders.len(), 2);
        // Shorter: padded over the old length, and read back as the short document.
        r.write(&holders(0), long).unwrap();
        assert_eq!(r.linked_len(), Some(long as u64));
        let (doc, len) = r.read(Some(long as u64)).unwrap();
        assert!(doc.unwrap().holders.is_empty());
        assert_eq!(len, long);
        // Much longer than a read chunk, then emptied: truncated, not padded.
        r.write(&holders(60), len).unwrap();
        let (doc, big) = r.read(None).unwrap();
        assert_eq!(doc.unwrap().holders.len(), 60);
        assert!(big > READ_CHUNK + PAD_MAX);
        r.write(&holders(0), big).unwrap();
        let (doc, small) = r.read(None).unwrap();
        assert!(doc.unwrap().holders.is_empty());
        assert!(small < 200, "{small}");
        let _ = std::fs::remove_file(record_path(&n));
    }

    #[test]
    fn the_pool_never_hands_out_another_process_files() {
        let n = name("pool");
        let (pid, _) = own_process();
        let opened = |pid| Opened {
            name: n.clone(),
            pid,
            sem: Sem::open_or_create(&n, 0o600, 1).unwrap(),
            sem_ino: 0,
            records: Records::open(&n, 0o600, true).unwrap(),
        };
        // As a forked child finds its parent's entries: another pid.
        pool_put(opened(pid + 1));
        assert!(pool_take(&n, pid).is_none());
        assert!(pool_take(&n, pid + 1).is_none(), "dropped, not kept");
        pool_put(opened(pid));
        assert!(pool_take(&n, pid).is_some());
        assert!(pool_take(&n, pid).is_none(), "taken out while in use");
        let _ = std::fs::remove_file(record_path(&n));
        let _ = sem_unlink(&n);
    }
}
