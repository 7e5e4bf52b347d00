//! Waiting for a count of a busy semaphore, cheaply, while noticing dead holders at once.
//!
//! First `FIRST` in sem_clockwait alone (most hand-offs come sooner; no thread, one futex
//! wait). Then a watcher thread sleeps in poll(2) on the holders' pidfds (readable when the
//! process exits), the cancel fd and a stop pipe, and gives a dead holder's slot back at once
//! (which wakes a waiter); the waiting thread keeps sleeping on the semaphore in slices of
//! `SLICE`, after each of which it reads what the watcher found (a cancel, a stale pair).
//! Steady state: 1/SLICE futex waits plus one poll per `WATCH_SLICE` (the watcher's look at
//! who holds now): ≈ 4 syscalls/s. A holder whose death no pidfd reports (no pidfd_open:
//! old kernel, seccomp) is looked up in /proc every `PROC_SLICE`.
//!
//! Signals: the watcher blocks them all, so a signal with a handler (the CLI's, Python's)
//! interrupts the waiting thread's sem_clockwait at once, as before.

use super::pair::Pair;
use super::posix::Waited;
use crate::backend::Wait;
use crate::holder::{HolderRecord, Liveness, LivenessWatch};
use crate::{Error, ErrorKind, Result, Target};
use nix::poll::{PollFd, PollFlags, PollTimeout};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

const FIRST: Duration = Duration::from_millis(100);
const SLICE: Duration = Duration::from_millis(500);
/// How often the watcher looks at who holds now: a holder that took the lock during the wait
/// (after the last look) is watched from the next look on, so its death is noticed within
/// this; one known at the last look, at once (its pidfd).
const WATCH_SLICE: Duration = Duration::from_millis(500);
const PROC_SLICE: Duration = Duration::from_millis(100);

/// How a wait that did not fail ended.
pub(super) enum Woke {
    /// We took a count (not recorded yet).
    Got,
    /// The pair is no longer the lock (gc removed it, the semaphore was replaced): open again.
    Stale,
}

const RUNNING: u8 = 0;
const CANCELED: u8 = 1;
const STALE: u8 = 2;

/// Wait for a count of `pair`'s semaphore as `wait` says. Err: `Busy` (timeout), `Canceled`.
pub(super) fn wait_for_count(target: &Target, pair: &Pair, wait: &Wait) -> Result<Woke> {
    let first_end = Instant::now() + FIRST;
    loop {
        if sleep_until(target, pair, wait, first_end)? {
            return Ok(Woke::Got);
        }
        if Instant::now() >= first_end {
            break;
        }
    }
    let state = AtomicU8::new(RUNNING);
    let (stop_r, stop_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| Error::os(format!("{target}: pipe"), e.into()))?;
    std::thread::scope(|s| {
        let watcher = Watcher {
            pair,
            cancel_fd: wait.cancel_fd(),
            stop: stop_r.as_fd(),
            state: &state,
        };
        let spawned = std::thread::Builder::new()
            .name("lockfn-watch".into())
            .spawn_scoped(s, move || watcher.run());
        // Without a watcher (no thread to be had), look for dead holders every PROC_SLICE.
        let slice = if spawned.is_ok() { SLICE } else { PROC_SLICE };
        let r = sleep_on(target, pair, wait, &state, slice, spawned.is_err());
        // The watcher's poll sees the pipe's end and returns.
        drop(stop_w);
        // Joined here (pthread_join), not by the scope's end, which can return before the
        // thread's TLS destructors ran: a fork right after would copy them half-done.
        if let Ok(h) = spawned {
            let _ = h.join();
        }
        r
    })
}

/// One sem_clockwait until `end` (or the deadline). Ok(true): got a count.
fn sleep_until(target: &Target, pair: &Pair, wait: &Wait, end: Instant) -> Result<bool> {
    let until = wait.deadline().map_or(end, |d| d.min(end));
    match pair
        .sem
        .wait_until(until)
        .map_err(|e| Error::os(format!("{target}: sem_clockwait"), e))?
    {
        Waited::Got => return Ok(true),
        Waited::Interrupted => wait.check_cancel()?,
        Waited::TimedOut => {}
    }
    if wait.expired() {
        return Err(wait.busy(target, first_holder(pair).as_ref()));
    }
    Ok(false)
}

fn sleep_on(
    target: &Target,
    pair: &Pair,
    wait: &Wait,
    state: &AtomicU8,
    slice: Duration,
    recover_here: bool,
) -> Result<Woke> {
    let mut watch = LivenessWatch::new();
    loop {
        match state.load(Ordering::Acquire) {
            CANCELED => {
                wait.check_cancel()?;
                return Err(Error::new(
                    ErrorKind::Canceled,
                    "waiting for the lock was canceled",
                ));
            }
            STALE => return Ok(Woke::Stale),
            _ => {}
        }
        if sleep_until(target, pair, wait, Instant::now() + slice)? {
            return Ok(Woke::Got);
        }
        if recover_here {
            wait.check_cancel()?;
            if !recover(pair, &mut watch)? {
                return Ok(Woke::Stale);
            }
        }
    }
}

/// The first holder, for a `Busy` message.
pub(super) fn first_holder(pair: &Pair) -> Option<HolderRecord> {
    let g = pair.table.lock().ok()?;
    g.holders().into_iter().next().map(|(_, h)| h)
}

/// Give back dead holders' slots (under the mutex; each once). Ok(false): the pair is stale.
fn recover(pair: &Pair, watch: &mut LivenessWatch) -> Result<bool> {
    let g = pair.table.lock()?;
    if !pair.current(&g) {
        return Ok(false);
    }
    g.recover_dead(&pair.sem, |h| watch.liveness(h));
    Ok(true)
}

struct Watcher<'a> {
    pair: &'a Pair,
    cancel_fd: Option<std::os::fd::RawFd>,
    stop: BorrowedFd<'a>,
    state: &'a AtomicU8,
}

impl Watcher<'_> {
    fn run(self) {
        use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow};
        let _ = pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&SigSet::all()), None);
        let mut watch = LivenessWatch::new();
        loop {
            let Some(unwatched) = self.look(&mut watch) else {
                self.state.store(STALE, Ordering::Release);
                return;
            };
            let timeout = if unwatched { PROC_SLICE } else { WATCH_SLICE };
            match self.sleep(&watch, timeout) {
                Wake::Stop => return,
                Wake::Cancel => {
                    self.state.store(CANCELED, Ordering::Release);
                    return;
                }
                Wake::Died => {
                    if !recover(self.pair, &mut watch).unwrap_or(true) {
                        self.state.store(STALE, Ordering::Release);
                        return;
                    }
                }
                Wake::Look => {}
            }
        }
    }

    /// Look at who holds now: recover the dead, start watching the new. None: stale pair.
    /// Some(true): a holder of this boot is not watched by a pidfd (poll /proc for it).
    fn look(&self, watch: &mut LivenessWatch) -> Option<bool> {
        let holders: Vec<HolderRecord> = {
            let g = self.pair.table.lock().ok()?;
            if !self.pair.current(&g) {
                return None;
            }
            g.holders().into_iter().map(|(_, h)| h).collect()
        };
        watch.retain(&holders);
        let mut dead = false;
        let mut unwatched = false;
        for h in holders.iter().filter(|h| !h.persist) {
            if watch.is_watched(h) {
                continue;
            }
            match watch.liveness(h) {
                Liveness::Dead => dead = true,
                Liveness::Alive if !watch.is_watched(h) => unwatched = true,
                _ => {}
            }
        }
        if dead && !recover(self.pair, watch).ok()? {
            return None;
        }
        Some(unwatched)
    }

    fn sleep(&self, watch: &LivenessWatch, timeout: Duration) -> Wake {
        let mut fds = vec![PollFd::new(self.stop, PollFlags::POLLIN)];
        // Safety: the caller's cancel fd stays open for the whole acquire call.
        let cancel = self
            .cancel_fd
            .map(|fd| unsafe { BorrowedFd::borrow_raw(fd) });
        if let Some(c) = cancel {
            fds.push(PollFd::new(c, PollFlags::POLLIN));
        }
        let pidfds = watch.fds();
        fds.extend(pidfds.iter().map(|fd| PollFd::new(*fd, PollFlags::POLLIN)));
        let ms = PollTimeout::try_from(timeout.as_millis() as i32).unwrap_or(PollTimeout::MAX);
        if nix::poll::poll(&mut fds, ms).is_err() {
            return Wake::Look; // EINTR cannot happen (signals blocked); anything else: look
        }
        let ready = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
        if ready(&fds[0]) {
            return Wake::Stop;
        }
        if cancel.is_some() && ready(&fds[1]) {
            return Wake::Cancel;
        }
        let first_pidfd = 1 + cancel.is_some() as usize;
        if fds[first_pidfd..].iter().any(ready) {
            return Wake::Died;
        }
        Wake::Look
    }
}

enum Wake {
    Stop,
    Cancel,
    /// A watched holder's process exited.
    Died,
    Look,
}
