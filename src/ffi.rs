//! The C ABI: conversion of arguments, the panic boundary, handle validation and the
//! thread-local last error. No lock logic lives here.
//!
//! Handles are opaque ids, never pointers to memory: `lock_acquire` hands out a fresh id and
//! keeps the lock in a process-wide table, so a double release, a handle used after release,
//! or a made-up pointer is looked up, not dereferenced, and gets an error code.

#![allow(non_camel_case_types)]
// Safety, for every function here: each pointer argument may be NULL (an error code, never a
// crash); a non-NULL pointer must point to valid memory of its C type, as the header says.
#![allow(clippy::missing_safety_doc)]

use crate::{Error, ErrorKind, Lock, Options, Target};
use once_cell::sync::Lazy;
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::ffi::{c_char, c_int, c_uint, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Success.
pub const LOCK_OK: c_int = 0;
/// The lock is held elsewhere: try-once failed or the timeout passed.
pub const LOCK_BUSY: c_int = 1;
/// Invalid argument: NULL where a value is needed, a malformed target or name, bad options.
pub const LOCK_EINVAL: c_int = 2;
/// The lock was held and is gone (session expired, lock removed, slot taken by force).
pub const LOCK_ELOST: c_int = 3;
/// Not a live handle (already released, never acquired), or nothing to release.
pub const LOCK_ENOTHELD: c_int = 4;
/// The service cannot be reached or is not running (after the timeout at most).
pub const LOCK_EUNAVAILABLE: c_int = 5;
/// The service or the operating system refused access (file mode, ACL, token).
pub const LOCK_EPERM: c_int = 6;
/// The wait was cancelled through `cancel_fd`.
pub const LOCK_ECANCELED: c_int = 7;
/// The handle belongs to the parent process (used in a child after fork()); the parent's lock
/// is untouched.
///
/// fork() is safe at any moment, from any thread, even while other threads are inside lockfn
/// calls (the library's internal locks are taken around fork by pthread_atfork handlers). In
/// the child: every lockfn function returns without waiting for a parent's thread; an
/// inherited handle gives `LOCK_EFORKED` from `lock_update` and `lock_release` (which frees
/// the child's handle and never touches the parent's lock) and its token from `lock_token`;
/// new locks, `lock_status` and `lock_gc` work as in any process. The child holds no
/// descriptor that keeps a parent's lock: descriptors carrying lock state (a node-local flock,
/// a sem record file) are closed in the child by the atfork child handler, so a child that
/// never execs (a worker of a forking daemon) does not delay the parent's release; an
/// inherited handle keeps its memory in the child (never freed). The parent is untouched.
/// What remains: a child made by vfork(), or by posix_spawn() or clone() that run no atfork
/// handlers, shares or copies the descriptors until it execs (all are close-on-exec); it must
/// call nothing but exec or _exit (no lockfn function).
pub const LOCK_EFORKED: c_int = 8;
/// Internal error (a bug, or an answer from the service that makes no sense); never a crash.
pub const LOCK_EINTERNAL: c_int = 9;

/// `lock_options.flags`: a shared (read) lock; many readers or one writer.
pub const LOCK_FLAG_SHARED: u32 = 1;
/// `lock_options.flags`: a second acquisition by the process that holds the lock succeeds at
/// once (each needs its own `lock_release`).
pub const LOCK_FLAG_REENTRANT: u32 = 2;
/// `lock_options.flags`: the lock is meant to outlive the process: it is never recovered as a
/// dead holder's; a process that exits without `lock_release` leaves it held, and
/// `lockfn release TARGET` (or `lock_release` before the exit) ends it. How long it lives is
/// the service's: `sem:` until released or the host restarts; `zk:` until released (a
/// persistent node, not tied to a session); `consul:` until released, or `ttl` seconds after
/// the last `lock_update`/`lockfn update` when a ttl is given (else its session has no TTL
/// and ends only if the agent's node fails); `pmxcfs:` 120 s after the last refresh
/// (`lock_update`, `lockfn update`, `lockfn keep`); `file:` refuses it (`LOCK_EINVAL`).
/// `lockfn acquire --persist` prints the same for a target.
pub const LOCK_FLAG_PERSIST: u32 = 4;
/// `lock_options.flags`: renew the lock in a background thread while it is held; a loss is
/// reported by the next `lock_update`.
pub const LOCK_FLAG_AUTO_RENEW: u32 = 8;

/// An acquired lock. Opaque: only pass it back to this library.
pub struct lock_handle {
    _private: [u8; 0],
}

/// Options for `lock_acquire`. Always start from `lock_options_init`, which sets `size`, so a
/// program built against an older header keeps working with a newer library.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct lock_options {
    /// `sizeof(lock_options)` as the caller knows it; set by `lock_options_init`.
    pub size: u32,
    /// Seconds to wait: `< 0` forever (default), `0` try once, `> 0` at most that long.
    pub timeout: f64,
    /// Seconds the lock survives without `lock_update` where the service has a TTL
    /// (Consul: 10–86400, ZooKeeper: session timeout); 0 = the service's default.
    pub ttl: u32,
    /// Holders at once: 1 (default) is a mutex, N > 1 a counting semaphore.
    pub limit: u32,
    /// `LOCK_FLAG_*` bits.
    pub flags: u32,
    /// Free text stored in the holder record (who/why), or NULL. Copied.
    pub holder: *const c_char,
    /// A file descriptor that, once readable, makes a waiting `lock_acquire` return
    /// `LOCK_ECANCELED`; -1 (default) for none. Not closed by the library. Noticed within
    /// 0.2 s on every service (sem: a semaphore cannot be polled with it, so it is looked at
    /// between 200 ms waits; a signal caught on the waiting thread interrupts at once).
    pub cancel_fd: c_int,
    /// Permission bits of objects the lock creates (sem: the semaphore); default 0600.
    pub mode: u32,
    /// Consul lock-delay in seconds; `< 0` (default) for the service's default.
    pub lock_delay: f64,
    /// Room for future options without growing the struct (so `lock_options_init` of a newer
    /// library never writes past an older caller's struct); set to 0 by `lock_options_init`.
    pub reserved: [u64; 4],
}

impl Default for lock_options {
    fn default() -> lock_options {
        lock_options {
            size: std::mem::size_of::<lock_options>() as u32,
            timeout: -1.0,
            ttl: 0,
            limit: 1,
            flags: 0,
            holder: std::ptr::null(),
            cancel_fd: -1,
            mode: 0o600,
            lock_delay: -1.0,
            reserved: [0; 4],
        }
    }
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
    static IN_FFI: Cell<bool> = const { Cell::new(false) };
}

/// One live handle. `pid` and `token` sit outside the mutex: the lock's mutex may be held by a
/// thread of the parent in a network call when another thread forks, and a child must answer
/// `LOCK_EFORKED` (or the token) without waiting for a thread it does not have.
pub(crate) struct SlotData {
    pid: u32,
    token: u64,
    lock: Mutex<Option<Lock>>,
}
type Slot = Arc<SlotData>;
/// Live handles: id → lock. The mutex guards the table only, never a lock operation (it is
/// taken by the atfork prepare handler, see fork.rs).
pub(crate) type HandleTable = HashMap<usize, Slot>;
static HANDLES: Lazy<Mutex<HandleTable>> = Lazy::new(|| Mutex::new(HashMap::new()));
static NEXT_ID: AtomicUsize = AtomicUsize::new(1);
/// Strings handed out by `lock_status`, so `lock_string_free` never frees a stranger.
pub(crate) type StringTable = HashSet<usize>;
static STRINGS: Lazy<Mutex<StringTable>> = Lazy::new(|| Mutex::new(HashSet::new()));

pub(crate) fn handles() -> &'static Mutex<HandleTable> {
    &HANDLES
}

pub(crate) fn strings() -> &'static Mutex<StringTable> {
    &STRINGS
}

/// Initialise the lazily created statics (before a fork: never half-done in a child).
pub(crate) fn force_statics() {
    quiet_panics();
}

fn table<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn set_last_error(msg: &str) {
    let c = CString::new(msg.replace('\0', "?")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

fn code(kind: ErrorKind) -> c_int {
    match kind {
        ErrorKind::Busy => LOCK_BUSY,
        ErrorKind::Invalid => LOCK_EINVAL,
        ErrorKind::Lost => LOCK_ELOST,
        ErrorKind::NotHeld => LOCK_ENOTHELD,
        ErrorKind::Unavailable => LOCK_EUNAVAILABLE,
        ErrorKind::Permission => LOCK_EPERM,
        ErrorKind::Canceled => LOCK_ECANCELED,
        ErrorKind::Forked => LOCK_EFORKED,
        ErrorKind::Internal => LOCK_EINTERNAL,
    }
}

fn fail(e: &Error) -> c_int {
    set_last_error(e.message());
    code(e.kind())
}

fn einval(msg: &str) -> c_int {
    set_last_error(msg);
    LOCK_EINVAL
}

/// Install (once) a panic hook that stays silent inside FFI calls: the library never prints.
fn quiet_panics() {
    static HOOK: Lazy<()> = Lazy::new(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if IN_FFI.with(|f| f.get()) {
                set_last_error(&format!("internal error (panic): {info}"));
            } else {
                previous(info);
            }
        }));
    });
    Lazy::force(&HOOK);
}

/// The panic boundary: run `f`, turning a panic into `LOCK_EINTERNAL`.
fn guard(f: impl FnOnce() -> c_int) -> c_int {
    crate::fork::ensure_handlers();
    quiet_panics();
    IN_FFI.with(|x| x.set(true));
    let r = catch_unwind(AssertUnwindSafe(f));
    IN_FFI.with(|x| x.set(false));
    match r {
        Ok(c) => c,
        Err(_) => {
            LAST_ERROR.with(|e| {
                if e.borrow().as_bytes().is_empty() {
                    *e.borrow_mut() = CString::new("internal error (panic)").unwrap_or_default();
                }
            });
            LOCK_EINTERNAL
        }
    }
}

unsafe fn str_arg<'a>(p: *const c_char, what: &str) -> Result<&'a str, c_int> {
    if p.is_null() {
        return Err(einval(&format!("{what} is NULL")));
    }
    CStr::from_ptr(p)
        .to_str()
        .map_err(|_| einval(&format!("{what} is not valid UTF-8")))
}

fn handle_id(h: *const lock_handle) -> usize {
    h as usize
}

fn forked(lock: &SlotData) -> Option<c_int> {
    (lock.pid != crate::fork::pid()).then(|| {
        set_last_error(
            "the handle belongs to the parent process (used in a child after fork); the \
             parent's lock is untouched",
        );
        LOCK_EFORKED
    })
}

fn lookup(h: *const lock_handle) -> Result<Slot, c_int> {
    if h.is_null() {
        return Err(einval("lock handle is NULL"));
    }
    table(&HANDLES).get(&handle_id(h)).cloned().ok_or_else(|| {
        set_last_error(
            "not a live lock handle (already released, never returned by lock_acquire, or freed)",
        );
        LOCK_ENOTHELD
    })
}

/// Fill `opts` with the defaults: wait forever, mutex (limit 1), no flags, no holder text,
/// no cancel fd, mode 0600, and `size` set. NULL is ignored.
#[no_mangle]
pub unsafe extern "C" fn lock_options_init(opts: *mut lock_options) {
    if !opts.is_null() {
        opts.write(lock_options::default());
    }
}

unsafe fn read_options(p: *const lock_options) -> Result<Options, c_int> {
    let mut o = lock_options::default();
    if !p.is_null() {
        let size = (*p).size as usize;
        if size == 0 {
            return Err(einval(
                "lock_options.size is 0: initialise the options with lock_options_init()",
            ));
        }
        // Fields past the caller's size keep their defaults (older callers).
        let n = size.min(std::mem::size_of::<lock_options>());
        std::ptr::copy_nonoverlapping(p as *const u8, &mut o as *mut lock_options as *mut u8, n);
    }
    let known = LOCK_FLAG_SHARED | LOCK_FLAG_REENTRANT | LOCK_FLAG_PERSIST | LOCK_FLAG_AUTO_RENEW;
    if o.flags & !known != 0 {
        return Err(einval(&format!(
            "lock_options.flags has unknown bits 0x{:x}",
            o.flags & !known
        )));
    }
    let holder =
        (!o.holder.is_null()).then(|| CStr::from_ptr(o.holder).to_string_lossy().into_owned());
    Ok(Options {
        timeout: Options::timeout_secs(o.timeout).map_err(|e| fail(&e))?,
        ttl: (o.ttl > 0).then(|| Duration::from_secs(o.ttl as u64)),
        limit: o.limit,
        shared: o.flags & LOCK_FLAG_SHARED != 0,
        reentrant: o.flags & LOCK_FLAG_REENTRANT != 0,
        persist: o.flags & LOCK_FLAG_PERSIST != 0,
        auto_renew: o.flags & LOCK_FLAG_AUTO_RENEW != 0,
        holder,
        cancel_fd: (o.cancel_fd >= 0).then_some(o.cancel_fd),
        mode: o.mode,
        lock_delay: if o.lock_delay >= 0.0 {
            Options::timeout_secs(o.lock_delay).map_err(|e| fail(&e))?
        } else {
            None
        },
        ..Options::default()
    })
}

/// Acquire the lock named by `target` (e.g. "sem:backup", "pmxcfs:vm-100", "zk:jobs/x",
/// "consul://127.0.0.1:8500/svc/.lock"). `opts` may be NULL for the defaults. On success
/// stores a new handle in `*out` and returns `LOCK_OK`; otherwise `*out` is set to NULL and the
/// code says why (`LOCK_BUSY` on timeout or try-once, `LOCK_ECANCELED` when `cancel_fd`
/// became readable, ...), with details in `lock_last_error()`.
#[no_mangle]
pub unsafe extern "C" fn lock_acquire(
    target: *const c_char,
    opts: *const lock_options,
    out: *mut *mut lock_handle,
) -> c_int {
    guard(|| {
        if out.is_null() {
            return einval("out (lock_handle **) is NULL");
        }
        out.write(std::ptr::null_mut());
        let target = match str_arg(target, "target") {
            Ok(t) => t,
            Err(c) => return c,
        };
        let opts = match read_options(opts) {
            Ok(o) => o,
            Err(c) => return c,
        };
        let target = match Target::parse(target) {
            Ok(t) => t,
            Err(e) => return fail(&e),
        };
        match Lock::acquire(&target, &opts) {
            Ok(lock) => {
                // Ids are never reused, so a stale handle can never name a newer lock.
                let id = NEXT_ID.fetch_add(1, Ordering::SeqCst) * 16;
                let slot = Arc::new(SlotData {
                    pid: crate::fork::pid(),
                    token: lock.token(),
                    lock: Mutex::new(Some(lock)),
                });
                table(&HANDLES).insert(id, slot);
                out.write(id as *mut lock_handle);
                LOCK_OK
            }
            Err(e) => fail(&e),
        }
    })
}

/// Renew the lock (refresh its TTL where the service has one) and check that it is still
/// held: `LOCK_OK`, or `LOCK_ELOST` when the service no longer has it as ours (the caller must
/// stop the work the lock protects). `LOCK_EFORKED` in a child after fork() (at once, even
/// when a parent's thread was inside `lock_update` of the same handle at fork time).
#[no_mangle]
pub unsafe extern "C" fn lock_update(lock: *mut lock_handle) -> c_int {
    guard(|| {
        let slot = match lookup(lock) {
            Ok(s) => s,
            Err(c) => return c,
        };
        if let Some(c) = forked(&slot) {
            return c;
        }
        let guard = table(&slot.lock);
        match guard.as_ref() {
            Some(l) => match l.update() {
                Ok(()) => LOCK_OK,
                Err(e) => fail(&e),
            },
            None => {
                set_last_error("lock handle was released");
                LOCK_ENOTHELD
            }
        }
    })
}

/// Release the lock and invalidate the handle. NULL is a no-op (`LOCK_OK`). A handle that was
/// already released gives `LOCK_ENOTHELD` (nothing is touched). In a child after fork() the
/// handle is forgotten without touching the parent's lock and `LOCK_EFORKED` is returned.
/// `LOCK_ELOST` means the lock had been lost before this release (the handle is freed anyway).
#[no_mangle]
pub unsafe extern "C" fn lock_release(lock: *mut lock_handle) -> c_int {
    guard(|| {
        if lock.is_null() {
            return LOCK_OK;
        }
        let slot = match table(&HANDLES).remove(&handle_id(lock)) {
            Some(s) => s,
            None => {
                set_last_error("not a live lock handle (already released, or never acquired)");
                return LOCK_ENOTHELD;
            }
        };
        if let Some(c) = forked(&slot) {
            // The parent's lock is never touched, nor its mutex (a parent's thread may have
            // held it at fork time): the slot is leaked.
            std::mem::forget(slot);
            return c;
        }
        let taken = table(&slot.lock).take();
        let Some(l) = taken else {
            set_last_error("lock handle was released");
            return LOCK_ENOTHELD;
        };
        match l.release() {
            Ok(()) => LOCK_OK,
            Err(e) => fail(&e),
        }
    })
}

/// Clean what dead holders on this host left behind: `scope` is "sem", "pmxcfs", "zk",
/// "consul", optionally with ":PREFIX" to limit it to names starting with PREFIX; NULL or ""
/// for the host-local services (sem and pmxcfs). The number of removed items is stored in
/// `*removed` when it is not NULL.
#[no_mangle]
pub unsafe extern "C" fn lock_gc(scope: *const c_char, removed: *mut c_uint) -> c_int {
    guard(|| {
        if !removed.is_null() {
            removed.write(0);
        }
        let scope = if scope.is_null() {
            ""
        } else {
            match str_arg(scope, "scope") {
                Ok(s) => s,
                Err(c) => return c,
            }
        };
        match crate::gc(scope) {
            Ok(n) => {
                if !removed.is_null() {
                    removed.write(n);
                }
                LOCK_OK
            }
            Err(e) => fail(&e),
        }
    })
}

/// The fencing token of the acquisition behind `lock`: a number that grows with every
/// acquisition of the same lock. 0 for NULL or a handle that is not live.
#[no_mangle]
pub unsafe extern "C" fn lock_token(lock: *const lock_handle) -> u64 {
    let mut token = 0;
    guard(|| {
        if let Ok(slot) = lookup(lock) {
            token = slot.token;
        }
        LOCK_OK
    });
    token
}

/// Describe who holds `target` as a JSON object (`target`, `service`, `held`, `limit`,
/// `available`, `holders` with host, pid, start_time, boot_id, since, token, holder text and
/// `state` alive/dead/remote). On success `*json` is a NUL-terminated string to be freed with
/// `lock_string_free`; otherwise `*json` is NULL.
#[no_mangle]
pub unsafe extern "C" fn lock_status(target: *const c_char, json: *mut *mut c_char) -> c_int {
    guard(|| {
        if json.is_null() {
            return einval("json (char **) is NULL");
        }
        json.write(std::ptr::null_mut());
        let target = match str_arg(target, "target").map(Target::parse) {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => return fail(&e),
            Err(c) => return c,
        };
        let st = match crate::status(&target) {
            Ok(s) => s,
            Err(e) => return fail(&e),
        };
        let text = match serde_json::to_string(&st) {
            Ok(t) => t,
            Err(e) => return fail(&Error::new(ErrorKind::Internal, e.to_string())),
        };
        let Ok(c) = CString::new(text) else {
            return fail(&Error::new(ErrorKind::Internal, "status JSON contains NUL"));
        };
        let p = c.into_raw();
        table(&STRINGS).insert(p as usize);
        json.write(p);
        LOCK_OK
    })
}

/// Free a string returned by this library (`lock_status`). NULL, and pointers this library did
/// not hand out (or already freed), are ignored.
#[no_mangle]
pub unsafe extern "C" fn lock_string_free(s: *mut c_char) {
    guard(|| {
        if !s.is_null() && table(&STRINGS).remove(&(s as usize)) {
            drop(CString::from_raw(s));
        }
        LOCK_OK
    });
}

/// A static description of a return code ("busy", "lost", ...); never NULL.
#[no_mangle]
pub extern "C" fn lock_strerror(code: c_int) -> *const c_char {
    let s: &'static [u8] = match code {
        LOCK_OK => b"success\0",
        LOCK_BUSY => b"lock is busy (held elsewhere, or the timeout passed)\0",
        LOCK_EINVAL => b"invalid argument\0",
        LOCK_ELOST => b"lock was lost\0",
        LOCK_ENOTHELD => b"lock is not held (or the handle is not live)\0",
        LOCK_EUNAVAILABLE => b"lock service unavailable\0",
        LOCK_EPERM => b"permission denied\0",
        LOCK_ECANCELED => b"wait canceled\0",
        LOCK_EFORKED => b"handle belongs to the parent process (used after fork)\0",
        LOCK_EINTERNAL => b"internal error\0",
        _ => b"unknown lockfn return code\0",
    };
    s.as_ptr() as *const c_char
}

/// The detail of the last failure of a lockfn call in this thread (which target, which
/// server, what the service said); "" if none. Valid until the next failing call in this
/// thread. Never NULL.
#[no_mangle]
pub extern "C" fn lock_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// The library version, e.g. "0.1.0". Never NULL.
#[no_mangle]
pub extern "C" fn lock_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr() as *const c_char
}
