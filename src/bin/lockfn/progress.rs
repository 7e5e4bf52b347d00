//! `-v` while waiting: who holds the lock, every few seconds (lockpick says whom it waits for
//! every 3 s). Two threads beside the waiting one: an asker calls `lockfn::status` every
//! interval (each call bounded by LOCKFN_OP_TIMEOUT), a printer prints what it learnt, and
//! a "still waiting" line when the asker has had no answer for twice the interval, so a line
//! comes at least every 10 s however slow the service. Lines are at most one per interval
//! (the first after at most 1 s), none after [`Progress`] is dropped, so nothing follows
//! "acquired". The asker's connection is its own: a status call never touches the wait.

use crate::duration;
use lockfn::{ErrorKind, Status, Target};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The default interval between progress lines.
const DEFAULT_EVERY: Duration = Duration::from_secs(5);
/// The longest gap between two lines: the promise in the help and the README.
const MAX_GAP: Duration = Duration::from_secs(10);
/// The shortest interval LOCKFN_PROGRESS_INTERVAL may set (a test knob, not a busy loop).
const MIN_EVERY: Duration = Duration::from_millis(50);

/// The interval: LOCKFN_PROGRESS_INTERVAL (a duration, 0.05 s to 10 s; a test and tuning
/// knob), else 5 s.
pub fn interval() -> Result<Duration, lockfn::Error> {
    let Some(v) = std::env::var_os("LOCKFN_PROGRESS_INTERVAL").filter(|v| !v.is_empty()) else {
        return Ok(DEFAULT_EVERY);
    };
    let text = v.to_string_lossy();
    let bad = |why: String| {
        lockfn::Error::new(
            ErrorKind::Invalid,
            format!(
                "LOCKFN_PROGRESS_INTERVAL='{}': {why}",
                crate::output::value(&text)
            ),
        )
    };
    let s = duration::secs(&text).map_err(bad)?;
    if !(MIN_EVERY.as_secs_f64()..=MAX_GAP.as_secs_f64()).contains(&s) {
        return Err(bad("must be from 0.05 s to 10 s".into()));
    }
    Ok(Duration::from_secs_f64(s))
}

struct State {
    stopped: bool,
    /// The asker's latest answer, not printed yet.
    latest: Option<Result<Status, lockfn::Error>>,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic in a printer must not stop the waiter's messages: take the state anyway.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Progress reports for one wait; dropping it stops them (at once: no line is printed after
/// the drop returns; a status call in flight finishes in its thread and is discarded).
pub struct Progress {
    shared: Arc<Shared>,
}

impl Progress {
    pub fn start(target: &Target, every: Duration) -> Progress {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                stopped: false,
                latest: None,
            }),
            wake: Condvar::new(),
        });
        let begun = Instant::now();
        let (s1, t1) = (shared.clone(), target.clone());
        let (s2, t2) = (shared.clone(), target.canonical());
        spawn_masked("lockfn-ask", move || ask(&s1, &t1, every, begun));
        spawn_masked("lockfn-progress", move || print(&s2, &t2, every, begun));
        Progress { shared }
    }
}

/// Signals the CLI catches: they must reach the waiting thread, whose semaphore wait they
/// interrupt (EINTR) so that a cancel is at once; one taken by another thread would be seen
/// only at the wait's next look at the cancel fd (sem: up to 0.5 s later).
const WAITER_SIGNALS: &[libc::c_int] = crate::signals::RUN;

/// A thread started with [`WAITER_SIGNALS`] blocked (a new thread inherits the mask), so it
/// never takes one. A thread that cannot start costs only the progress lines.
fn spawn_masked(name: &str, f: impl FnOnce() + Send + 'static) {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset before use; pthread_sigmask
    // changes only this thread's mask, and it is restored right after the spawn.
    unsafe {
        let mut block: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut block);
        for &sig in WAITER_SIGNALS {
            libc::sigaddset(&mut block, sig);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &block, &mut old);
        let _ = std::thread::Builder::new().name(name.into()).spawn(f);
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.shared.lock().stopped = true;
        self.shared.wake.notify_all();
    }
}

/// Sleep until `until` or the stop; false when stopped.
fn sleep_until(shared: &Shared, until: Instant) -> bool {
    let mut g = shared.lock();
    loop {
        if g.stopped {
            return false;
        }
        let now = Instant::now();
        if now >= until {
            return true;
        }
        g = shared
            .wake
            .wait_timeout(g, until - now)
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
}

fn first_after(every: Duration) -> Duration {
    every.min(Duration::from_secs(1))
}

fn ask(shared: &Shared, target: &Target, every: Duration, begun: Instant) {
    let mut next = begun + first_after(every);
    while sleep_until(shared, next) {
        let answer = lockfn::status(target);
        let mut g = shared.lock();
        if g.stopped {
            return;
        }
        g.latest = Some(answer);
        drop(g);
        shared.wake.notify_all();
        next += every;
        let now = Instant::now();
        if next < now {
            // The service took longer than the interval: a full interval of rest, not a
            // status call after status call.
            next = now + every;
        }
    }
}

fn print(shared: &Shared, target: &str, every: Duration, begun: Instant) {
    let min_gap = first_after(every);
    let max_gap = (every * 2).min(MAX_GAP);
    let mut last_line = begun;
    let mut last_answer = begun;
    let mut g = shared.lock();
    loop {
        if g.stopped {
            return;
        }
        let now = Instant::now();
        let waited = now.duration_since(begun).as_secs_f64();
        if g.latest.is_some() && now >= last_line + min_gap {
            if let Some(answer) = g.latest.take() {
                let what = match answer {
                    Ok(st) => who(&st),
                    Err(e) => format!("who holds it is unknown: {e}"),
                };
                line(&format!("waiting for {target} ({waited:.1} s): {what}"));
                last_line = now;
                last_answer = now;
            }
            continue;
        }
        if g.latest.is_none() && now >= last_line + max_gap {
            line(&format!(
                "still waiting for {target} ({waited:.1} s); asking who holds it has had no \
                 answer for {:.1} s",
                now.duration_since(last_answer).as_secs_f64()
            ));
            last_line = now;
            continue;
        }
        let until = if g.latest.is_some() {
            last_line + min_gap
        } else {
            last_line + max_gap
        };
        g = shared
            .wake
            .wait_timeout(g, until.saturating_duration_since(now))
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
}

fn line(text: &str) {
    use std::io::Write;
    // Not eprintln!: a stderr gone away (EPIPE) must not panic this thread.
    let _ = writeln!(std::io::stderr(), "lockfn: {}", crate::output::line(text));
}

/// How many holders a line names; the rest are counted.
const SHOWN_HOLDERS: usize = 3;

/// Who holds the lock, in one line: pid and host of each holder (from the status the service
/// gives), the slots taken of a counting lock, the queue where the service tells it.
pub fn who(st: &Status) -> String {
    let mut s = String::new();
    if !st.held {
        s.push_str("no holder at this moment");
    } else {
        if let (Some(limit), Some(avail)) = (st.limit, st.available) {
            if limit > 1 {
                s.push_str(&format!(
                    "{} of {limit} slots taken, ",
                    limit as i64 - avail
                ));
            }
        }
        if st.holders.is_empty() {
            s.push_str("held by a holder that left no record");
        } else {
            s.push_str("held by ");
            let named: Vec<String> = st
                .holders
                .iter()
                .take(SHOWN_HOLDERS)
                .map(|h| {
                    let r = &h.record;
                    let mut one = format!("pid {} on {}", r.pid, crate::output::value(&r.host));
                    if r.since > 0.0 {
                        let age = (lockfn::holder::now_secs() - r.since).max(0.0);
                        one.push_str(&format!(" for {age:.1} s"));
                    }
                    if h.state == lockfn::holder::Liveness::Dead {
                        one.push_str(" (dead)");
                    }
                    if !r.holder.is_empty() {
                        one.push_str(&format!(" ({})", crate::output::value(&r.holder)));
                    }
                    one
                })
                .collect();
            s.push_str(&named.join(", "));
            if st.holders.len() > SHOWN_HOLDERS {
                s.push_str(&format!(" and {} more", st.holders.len() - SHOWN_HOLDERS));
            }
        }
    }
    if let Some(n) = st
        .details
        .get("unrecorded_holders")
        .and_then(|v| v.as_i64())
    {
        s.push_str(&format!("; {n} slot(s) taken without a record"));
    }
    if let Some(n) = st.details.get("waiting").and_then(|v| v.as_u64()) {
        s.push_str(&format!("; {n} in the queue"));
    }
    s
}
