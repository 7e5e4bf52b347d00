//! [`Lock`]: what every service shares on top of the [`crate::backend::Held`] trait —
//! reentrant acquisition (a table of this process's held locks), fork safety (a handle
//! belongs to the process that acquired it), keep-alive deadlines, optional auto-renewal in a
//! background thread, and release on drop.

use crate::backend::{Held, Wait};
use crate::holder::HolderRecord;
use crate::{fork, Error, ErrorKind, Options, Result, Target};
use once_cell::sync::Lazy;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// State shared by the handles of one acquisition (several with reentrant acquisition).
pub(crate) struct Shared {
    target: Target,
    pid: u32,
    token: u64,
    record: HolderRecord,
    held: Mutex<Option<Box<dyn Held>>>,
    refs: AtomicUsize,
    lost: AtomicBool,
    /// False once released or detached (read without taking `held`, which a thread may hold
    /// across a network call).
    active: AtomicBool,
    /// When the next renewal and the next check are due (see [`Lock::maintain`]).
    schedule: Mutex<Schedule>,
    renewer: Mutex<Option<(mpsc::Sender<()>, JoinHandle<()>)>>,
}

/// The keep-alive deadlines of one acquisition. Deadlines, not intervals restarted on every
/// wake-up: nothing that wakes a supervisor (signals, stdin lines) can postpone them.
#[derive(Debug, Clone, Copy)]
struct Schedule {
    renew_every: Option<Duration>,
    check_every: Option<Duration>,
    next_renew: Option<Instant>,
    next_check: Option<Instant>,
}

impl Schedule {
    fn new(held: &dyn Held) -> Schedule {
        let now = Instant::now();
        let renew_every = held.renew_interval();
        let check_every = held.check_interval();
        Schedule {
            renew_every,
            check_every,
            next_renew: renew_every.map(|d| now + d),
            next_check: check_every.map(|d| now + d),
        }
    }

    /// A renewal just succeeded (it checks too).
    fn renewed(&mut self, now: Instant) {
        self.next_renew = self.renew_every.map(|d| now + d);
        self.next_check = self.check_every.map(|d| now + d);
    }

    fn next(&self, checks: bool) -> Option<Instant> {
        match (self.next_renew, self.next_check.filter(|_| checks)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// A renewal that failed without the lock being lost (service briefly unreachable) is tried
/// again after this, or after the renewal interval if that is shorter.
const RENEW_RETRY: Duration = Duration::from_secs(1);

/// Locks held by this process, by canonical target, for reentrant acquisition.
pub(crate) type HeldTable = HashMap<String, Vec<Weak<Shared>>>;
static HELD: Lazy<Mutex<HeldTable>> = Lazy::new(|| Mutex::new(HashMap::new()));

/// The table of held locks (taken by the atfork prepare handler, see fork.rs).
pub(crate) fn held_table() -> &'static Mutex<HeldTable> {
    &HELD
}

fn lock_mutex<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of our mutexes leaves plain data behind: keep going.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A held lock. Released by [`Lock::release`] or on drop (in the process that acquired it).
pub struct Lock {
    shared: Arc<Shared>,
    done: bool,
}

impl std::fmt::Debug for Lock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lock")
            .field("target", &self.shared.target.canonical())
            .field("token", &self.shared.token)
            .finish()
    }
}

fn forked_error(target: &Target) -> Error {
    Error::new(
        ErrorKind::Forked,
        format!(
            "the handle of {target} belongs to the parent process (used in a child after \
             fork); the parent's lock is untouched"
        ),
    )
}

impl Lock {
    /// Acquire `target` as `opts` says.
    pub fn acquire(target: &Target, opts: &Options) -> Result<Lock> {
        fork::ensure_handlers();
        opts.validate()?;
        if target.name().is_empty() {
            return Err(Error::new(
                ErrorKind::Invalid,
                format!("invalid target '{target}': the lock name is empty"),
            ));
        }
        let key = target.canonical();
        let pid = crate::fork::pid();
        if opts.reentrant {
            if let Some(shared) = find_held(&key, pid) {
                shared.refs.fetch_add(1, Ordering::SeqCst);
                return Ok(Lock {
                    shared,
                    done: false,
                });
            }
        }
        let wait = Wait::new(opts.timeout, opts.cancel_fd);
        let backend = target.service().backend();
        let held = backend.acquire(target, opts, &wait)?;
        let shared = Arc::new(Shared {
            target: target.clone(),
            pid,
            token: held.token(),
            record: held.record().clone(),
            refs: AtomicUsize::new(1),
            lost: AtomicBool::new(false),
            active: AtomicBool::new(true),
            schedule: Mutex::new(Schedule::new(held.as_ref())),
            renewer: Mutex::new(None),
            held: Mutex::new(Some(held)),
        });
        {
            let mut table = lock_mutex(&HELD);
            let entry = table.entry(key).or_default();
            entry.retain(|w| w.strong_count() > 0);
            entry.push(Arc::downgrade(&shared));
        }
        if opts.auto_renew {
            start_renewer(&shared);
        }
        Ok(Lock {
            shared,
            done: false,
        })
    }

    /// Parse `target` and acquire it.
    pub fn acquire_str(target: &str, opts: &Options) -> Result<Lock> {
        Lock::acquire(&Target::parse(target)?, opts)
    }

    pub fn target(&self) -> &Target {
        &self.shared.target
    }

    /// The fencing token of this acquisition.
    pub fn token(&self) -> u64 {
        self.shared.token
    }

    pub fn record(&self) -> &HolderRecord {
        &self.shared.record
    }

    /// Is this handle used in the process that acquired it?
    pub fn is_forked(&self) -> bool {
        self.shared.pid != crate::fork::pid()
    }

    /// How often the lock wants renewal (None: it cannot expire).
    pub fn renew_interval(&self) -> Option<Duration> {
        lock_mutex(&self.shared.schedule).renew_every
    }

    /// How often a supervisor should check the lock to notice a loss promptly, where that is
    /// cheaper than renewing (None: only at renewals).
    pub fn check_interval(&self) -> Option<Duration> {
        lock_mutex(&self.shared.schedule).check_every
    }

    /// Cheaply check that the lock is still held (no renewal): `Lost` if not.
    pub fn check(&self) -> Result<()> {
        if self.is_forked() {
            return Err(forked_error(&self.shared.target));
        }
        check_shared(&self.shared)
    }

    /// The one keep-alive: renew the lock if its renewal is due, else check it if a check is
    /// due, else do nothing; returns when it should be called next (None: never, the lock can
    /// neither expire nor be lost in a way a check would see). Due times are deadlines kept
    /// with the lock, so calling it early (on every signal, every line of input) is cheap and
    /// never postpones a renewal; an explicit [`Lock::update`] counts as a renewal.
    ///
    /// `Lost` when the service says the lock is gone. Another error (the service briefly
    /// unreachable) is retried by the next call, after at most a second (see
    /// [`Lock::next_due`]); the backend decides when such failures amount to a loss.
    pub fn maintain(&self) -> Result<Option<Instant>> {
        if self.is_forked() {
            return Err(forked_error(&self.shared.target));
        }
        maintain_shared(&self.shared, true)
    }

    /// When [`Lock::maintain`] should be called next (None: never).
    pub fn next_due(&self) -> Option<Instant> {
        lock_mutex(&self.shared.schedule).next(true)
    }

    /// Renew the lock and check it is still held: `Lost` when the service says it is gone.
    pub fn update(&self) -> Result<()> {
        if self.is_forked() {
            return Err(forked_error(&self.shared.target));
        }
        update_shared(&self.shared)
    }

    /// Release the lock (or one reentrant reference to it).
    pub fn release(self) -> Result<()> {
        if self.is_forked() {
            return Err(self.forked_in_child());
        }
        let mut me = self;
        me.done = true;
        release_shared(&me.shared)
    }

    /// In a forked child: `Forked`, and the parent's state is leaked, never dropped here (its
    /// descriptors are already closed in the child, see fork.rs; dropping them again would
    /// close whatever now has their numbers, and a session the parent uses must stay).
    fn forked_in_child(self) -> Error {
        let e = forked_error(&self.shared.target);
        std::mem::forget(self);
        e
    }

    /// Leave the lock held after this process exits (persistent locks: `lockfn acquire
    /// --persist`); it is ended by `release_named`.
    pub fn detach(mut self) -> Result<()> {
        if self.is_forked() {
            return Err(self.forked_in_child());
        }
        self.done = true;
        stop_renewer(&self.shared);
        self.shared.active.store(false, Ordering::SeqCst);
        let mut held = lock_mutex(&self.shared.held);
        match held.as_mut() {
            Some(h) => {
                let r = h.detach();
                // Dropping the backend's state does not release the lock (trait contract).
                *held = None;
                r
            }
            None => Err(not_held(&self.shared.target)),
        }
    }

    /// Forget this handle without releasing or touching anything: what a forked child does
    /// with its parent's handles.
    pub fn forget(mut self) {
        self.done = true;
        // Leak the backend state: dropping it in a child could close a session the parent uses.
        let shared = self.shared.clone();
        std::mem::forget(shared);
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if self.is_forked() {
            // Never release the parent's lock from a child, nor drop its backend state.
            std::mem::forget(self.shared.clone());
            return;
        }
        let _ = release_shared(&self.shared);
    }
}

fn not_held(target: &Target) -> Error {
    Error::new(
        ErrorKind::NotHeld,
        format!("lock {target} is not held by this handle (already released?)"),
    )
}

fn find_held(key: &str, pid: u32) -> Option<Arc<Shared>> {
    let table = lock_mutex(&HELD);
    table.get(key)?.iter().find_map(|w| {
        let s = w.upgrade()?;
        // Never `held` here: a thread may hold it across a network call (and HELD is a leaf
        // in the lock order of fork.rs).
        let live = s.pid == pid
            && !s.lost.load(Ordering::SeqCst)
            && s.refs.load(Ordering::SeqCst) > 0
            && s.active.load(Ordering::SeqCst);
        live.then_some(s)
    })
}

fn update_shared(shared: &Shared) -> Result<()> {
    if shared.lost.load(Ordering::SeqCst) {
        return Err(lost_error(&shared.target));
    }
    let mut held = lock_mutex(&shared.held);
    let h = held.as_mut().ok_or_else(|| not_held(&shared.target))?;
    let r = h.update();
    drop(held);
    match &r {
        Ok(()) => lock_mutex(&shared.schedule).renewed(Instant::now()),
        Err(e) if e.kind() == ErrorKind::Lost => shared.lost.store(true, Ordering::SeqCst),
        Err(_) => {}
    }
    r
}

fn check_shared(shared: &Shared) -> Result<()> {
    if shared.lost.load(Ordering::SeqCst) {
        return Err(lost_error(&shared.target));
    }
    let mut held = lock_mutex(&shared.held);
    let h = held.as_mut().ok_or_else(|| not_held(&shared.target))?;
    let r = h.check();
    drop(held);
    if matches!(&r, Err(e) if e.kind() == ErrorKind::Lost) {
        shared.lost.store(true, Ordering::SeqCst);
    }
    r
}

/// [`Lock::maintain`]; `checks`: also run the due checks (a supervisor), or only renew (the
/// auto-renew thread: `lock_update` renews and verifies on its own).
fn maintain_shared(shared: &Shared, checks: bool) -> Result<Option<Instant>> {
    if shared.lost.load(Ordering::SeqCst) {
        return Err(lost_error(&shared.target));
    }
    let now = Instant::now();
    let sched = *lock_mutex(&shared.schedule);
    let renew_due = sched.next_renew.is_some_and(|t| now >= t);
    let check_due = checks && sched.next_check.is_some_and(|t| now >= t);
    if renew_due {
        // update_shared moves both deadlines on success.
        if let Err(e) = update_shared(shared) {
            if e.kind() != ErrorKind::Lost {
                let retry = sched
                    .renew_every
                    .map_or(RENEW_RETRY, |d| d.min(RENEW_RETRY));
                lock_mutex(&shared.schedule).next_renew = Some(Instant::now() + retry);
            }
            return Err(e);
        }
    } else if check_due {
        let r = check_shared(shared);
        {
            let mut s = lock_mutex(&shared.schedule);
            s.next_check = s.check_every.map(|d| Instant::now() + d);
        }
        r?;
    }
    Ok(lock_mutex(&shared.schedule).next(checks))
}

fn lost_error(target: &Target) -> Error {
    Error::new(
        ErrorKind::Lost,
        format!("lock {target} was lost (the service no longer has it as ours)"),
    )
}

fn release_shared(shared: &Arc<Shared>) -> Result<()> {
    if shared.pid != crate::fork::pid() {
        return Err(forked_error(&shared.target));
    }
    let prev = shared
        .refs
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |r| r.checked_sub(1))
        .map_err(|_| not_held(&shared.target))?;
    if prev > 1 {
        return Ok(()); // other reentrant references still hold it
    }
    stop_renewer(shared);
    shared.active.store(false, Ordering::SeqCst);
    let taken = lock_mutex(&shared.held).take();
    {
        let mut table = lock_mutex(&HELD);
        let key = shared.target.canonical();
        if let Some(v) = table.get_mut(&key) {
            v.retain(|w| w.strong_count() > 0 && !std::ptr::eq(w.as_ptr(), Arc::as_ptr(shared)));
            if v.is_empty() {
                table.remove(&key);
            }
        }
    }
    let mut h = taken.ok_or_else(|| not_held(&shared.target))?;
    let r = h.release();
    if shared.lost.load(Ordering::SeqCst) {
        return Err(lost_error(&shared.target));
    }
    r
}

fn start_renewer(shared: &Arc<Shared>) {
    if lock_mutex(&shared.schedule).renew_every.is_none() {
        return;
    }
    let (tx, rx) = mpsc::channel::<()>();
    let weak = Arc::downgrade(shared);
    let spawned = std::thread::Builder::new()
        .name("lockfn-renew".into())
        .spawn(move || loop {
            let next = {
                let Some(s) = weak.upgrade() else { return };
                match maintain_shared(&s, false) {
                    Ok(Some(next)) => next,
                    Ok(None) => return,
                    Err(e) if matches!(e.kind(), ErrorKind::Lost | ErrorKind::NotHeld) => return,
                    // Retried when due again (maintain scheduled the retry).
                    Err(_) => match lock_mutex(&s.schedule).next(false) {
                        Some(n) => n,
                        None => return,
                    },
                }
            };
            match rx.recv_timeout(next.saturating_duration_since(Instant::now())) {
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                _ => return, // stop asked, or the lock is gone
            }
        });
    if let Ok(handle) = spawned {
        *lock_mutex(&shared.renewer) = Some((tx, handle));
    }
}

fn stop_renewer(shared: &Shared) {
    let r = lock_mutex(&shared.renewer).take();
    if let Some((tx, handle)) = r {
        drop(tx);
        if handle.thread().id() != std::thread::current().id() {
            let _ = handle.join();
        }
    }
}
