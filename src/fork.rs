//! Fork safety: `pthread_atfork` handlers around every process-wide lock of the library, and a
//! registry of descriptors that carry lock state, closed in a forked child.
//!
//! A `fork()` copies only the calling thread. A mutex another thread held at that moment stays
//! locked in the child for ever, and the data it guards may be half-changed. So the prepare
//! handler takes every process-wide mutex of the library (all are held only for short,
//! non-blocking table operations), and the parent and child handlers give them back: the child
//! starts with consistent tables and free mutexes. Per-lock state (a handle's backend, a
//! ZooKeeper session, a Consul connection pool) may be busy in a network call at fork time; the
//! child never touches it, because every entry point checks the handle's pid first and answers
//! `Forked` (and the ZooKeeper session table and the sem pool are per process).
//!
//! Lock order (the prepare handler's, and the only order in which code may nest these):
//! ffi handle table → ffi string table → lib `HELD` → sem `POOL` →
//! zk `SESSIONS` → consul `PARKED` → the descriptor registry. Each is a leaf otherwise.
//!
//! What remains (documented in the header and README): a child made by `vfork()`, or by
//! `posix_spawn()` / `clone(CLONE_VM)` that runs no atfork handler, holds copies of every
//! descriptor until it execs (ours are close-on-exec); it must call nothing but exec or `_exit`.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};

/// Descriptors that carry lock state (a flock, a record file under one). See [`register`].
static FDS: Mutex<Vec<RawFd>> = Mutex::new(Vec::new());

fn lock<T>(m: &'static Mutex<T>) -> MutexGuard<'static, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A descriptor in the registry of descriptors that carry lock state: an atfork child
/// handler closes the child's copy of every registered descriptor, so a child forked without
/// exec never keeps the parent's lock (closing the child's copy never releases the parent's
/// flock: the lock belongs to the open file description, which the parent still has open).
///
/// Use: right after opening the descriptor, `let reg = fork::register(fd)`, and keep `reg`
/// exactly as long as the descriptor: declare it in the struct *before* the field that owns
/// the descriptor, so that it is dropped (unregistered) first and the registry never names a
/// closed (and maybe reused) descriptor number. In the child, the structure that owned the
/// descriptor must never close it again: the library leaks a parent's handles in a child
/// (never drops them), and per-process pools must forget, not drop, their entries in the
/// child handler ([`child_hooks`]).
#[derive(Debug)]
pub(crate) struct Registration {
    fd: RawFd,
}

/// Register `fd` (see [`Registration`]).
pub(crate) fn register(fd: RawFd) -> Registration {
    ensure_handlers();
    lock(&FDS).push(fd);
    Registration { fd }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut v = lock(&FDS);
        if let Some(i) = v.iter().rposition(|&f| f == self.fd) {
            v.swap_remove(i);
        }
    }
}

/// The mutexes held from the prepare handler to the parent/child handler, in lock order.
struct Taken {
    _handles: MutexGuard<'static, crate::ffi::HandleTable>,
    _strings: MutexGuard<'static, crate::ffi::StringTable>,
    _held: MutexGuard<'static, crate::HeldTable>,
    pool: MutexGuard<'static, crate::backend::sem::Pool>,
    _zk: MutexGuard<'static, crate::backend::zookeeper::SessionTable>,
    consul: MutexGuard<'static, crate::backend::consul::ParkedSlot>,
    fds: MutexGuard<'static, Vec<RawFd>>,
}

thread_local! {
    static TAKEN: std::cell::RefCell<Option<Taken>> = const { std::cell::RefCell::new(None) };
}

extern "C" fn prepare() {
    // Lazily initialised statics first: a child must never find one half-initialised.
    drop(crate::holder::hostname());
    crate::holder::boot_id();
    crate::ffi::force_statics();
    let taken = Taken {
        _handles: lock(crate::ffi::handles()),
        _strings: lock(crate::ffi::strings()),
        _held: lock(crate::held_table()),
        pool: lock(&crate::backend::sem::POOL),
        _zk: lock(&crate::backend::zookeeper::SESSIONS),
        consul: lock(&crate::backend::consul::PARKED),
        fds: lock(&FDS),
    };
    let _ = TAKEN.try_with(|t| *t.borrow_mut() = Some(taken));
}

extern "C" fn parent() {
    let _ = TAKEN.try_with(|t| t.borrow_mut().take());
}

extern "C" fn child() {
    // First: everything after may compare pids.
    PID.store(std::process::id(), Ordering::Relaxed);
    let _ = TAKEN.try_with(|t| {
        if let Some(mut taken) = t.borrow_mut().take() {
            child_hooks(&mut taken);
        }
    });
}

/// What the child does with the tables while it still holds them: close the registered
/// descriptors, forget (never drop: the descriptors are closed) the parent's pooled sem pairs.
fn child_hooks(taken: &mut Taken) {
    for &fd in taken.fds.iter() {
        unsafe { libc::close(fd) };
    }
    taken.fds.clear();
    crate::backend::sem::forget_pool(&mut taken.pool);
    crate::backend::consul::forget_parked(&mut taken.consul);
}

static REGISTERED: AtomicBool = AtomicBool::new(false);
static PID: AtomicU32 = AtomicU32::new(0);

/// This process's pid without a system call (getpid(2) is not in the vDSO, and every
/// acquisition, renewal and release compares pids to notice a fork). Cached here and set anew
/// by the atfork child handler, which glibc's fork() always runs. A child made by a raw
/// clone(2) that runs no atfork handler would see its parent's pid: the same caveat as the
/// other handlers (README, "fork").
pub(crate) fn pid() -> u32 {
    match PID.load(Ordering::Relaxed) {
        0 => {
            ensure_handlers();
            let p = std::process::id();
            PID.store(p, Ordering::Relaxed);
            p
        }
        p => p,
    }
}

/// Install the atfork handlers (once per process; a child inherits them). Called at library
/// load (ELF constructor) and, in case the constructor was not linked in (a static link that
/// dropped it), by every entry point before it takes any lock.
pub(crate) fn ensure_handlers() {
    // A plain load first: every entry point calls this, and a swap would bounce the cache
    // line between threads.
    if !REGISTERED.load(Ordering::Acquire) && !REGISTERED.swap(true, Ordering::SeqCst) {
        unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) };
    }
}

extern "C" fn at_load() {
    ensure_handlers();
}

#[used]
#[link_section = ".init_array"]
static AT_LOAD: extern "C" fn() = at_load;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_descriptors_are_closed_in_a_child_only() {
        let mut fds = [0; 2];
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        let reg = register(fds[0]);
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // The child: the registered descriptor is closed, the other one open.
            let closed = unsafe { libc::fcntl(fds[0], libc::F_GETFD) } == -1;
            let open = unsafe { libc::fcntl(fds[1], libc::F_GETFD) } != -1;
            unsafe { libc::_exit(if closed && open { 0 } else { 1 }) };
        }
        assert!(pid > 0);
        let mut status = 0;
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
        assert_ne!(unsafe { libc::fcntl(fds[0], libc::F_GETFD) }, -1);
        drop(reg);
        assert!(!lock(&FDS).contains(&fds[0]));
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
    }

    /// Every process-wide mutex held by another thread at fork time is free in the child (the
    /// prepare handler waits for it, the child handler releases it).
    #[test]
    fn a_child_finds_every_table_free_when_another_thread_held_it_at_fork() {
        let (tx, rx) = std::sync::mpsc::channel();
        let holder = std::thread::spawn(move || {
            let _a = lock(crate::ffi::handles());
            let _b = lock(crate::held_table());
            let _c = lock(&crate::backend::sem::POOL);
            let _d = lock(&crate::backend::zookeeper::SESSIONS);
            let _e = lock(&FDS);
            tx.send(()).expect("send");
            std::thread::sleep(std::time::Duration::from_millis(100));
        });
        rx.recv().expect("the holder took the tables");
        ensure_handlers();
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let free = crate::ffi::handles().try_lock().is_ok()
                && crate::held_table().try_lock().is_ok()
                && crate::backend::sem::POOL.try_lock().is_ok()
                && crate::backend::zookeeper::SESSIONS.try_lock().is_ok()
                && FDS.try_lock().is_ok();
            unsafe { libc::_exit(if free { 0 } else { 1 }) };
        }
        assert!(pid > 0);
        let mut status = 0;
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        holder.join().expect("holder");
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    }
}
