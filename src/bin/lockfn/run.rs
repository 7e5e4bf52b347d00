//! `lockfn run`: hold a lock while a command runs. The command never runs unprotected: it gets
//! a parent-death signal (SIGKILL) so it dies with a SIGKILLed `lockfn run`, and it is stopped
//! (TERM, then KILL after a grace) when the lock is lost.

use crate::{acquire_cancellable, exit, log, say, signals, Acquired, LockArgs};
use clap::{Args, ValueEnum};
use lockfn::{ErrorKind, Lock, Options, Target};
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

pub const AFTER_HELP: &str = "\
The command gets LOCKFN_TOKEN (the fencing token) and LOCKFN_TARGET in its environment.
SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 sent to lockfn are forwarded to the
command; while waiting for the lock, SIGINT/SIGTERM/SIGHUP/SIGQUIT end the wait (exit 128+N).
A signal ignored when lockfn starts (nohup's SIGHUP; SIGINT/SIGQUIT of a background job) stays
ignored: not forwarded (the command inherits it ignored), and it never ends the wait.
A target with an empty name (`sem:`) is named after a hash of the command line.

Examples:
  lockfn run -n sem:backup -- /usr/local/bin/backup.sh
  lockfn run -w 30 -E 7 pmxcfs:vm-100 -- qm migrate 100 node2
  lockfn run consul://127.0.0.1:8500/svc/.lock -- ./leader-job";

/// Longest --grace (a day): a stop that waits longer is no stop.
const MAX_GRACE: f64 = 86400.0;

#[derive(Clone, Copy, ValueEnum)]
pub enum OnLost {
    /// Stop the command: SIGTERM, then SIGKILL after --grace; exit 75
    Stop,
    /// Keep the command running (a warning is printed)
    Ignore,
}

#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    lock: LockArgs,
    /// Exit code when the lock is busy or the wait times out
    #[arg(
        short = 'E',
        long = "conflict-exit-code",
        value_name = "CODE",
        default_value_t = 1
    )]
    conflict_exit_code: u8,
    /// What to do when the lock is lost while the command runs
    #[arg(long, value_enum, default_value = "stop")]
    on_lost: OnLost,
    /// Time between SIGTERM and SIGKILL when stopping the command
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "5",
        value_parser = crate::duration::secs
    )]
    grace: f64,
    /// Run this shell command before trying to lock (consullock's hook)
    #[arg(long, value_name = "CMD")]
    on_before_lock: Option<String>,
    /// Run this shell command when the lock is found held by someone else
    #[arg(long, value_name = "CMD")]
    on_already_locked: Option<String>,
    /// Run this string with `sh -c` (flock's -c) instead of COMMAND
    #[arg(
        short = 'c',
        long = "command",
        value_name = "STRING",
        conflicts_with = "command"
    )]
    shell_command: Option<OsString>,
    /// The lock, e.g. sem:backup (sem: = named after the command line)
    target: String,
    /// The command and its arguments (after --)
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "COMMAND",
        value_parser = clap::builder::OsStringValueParser::new()
    )]
    command: Vec<OsString>,
}

/// A stable name for a command line: the same on every run and host (what lockex does).
pub fn name_for_command(argv: &[OsString]) -> String {
    // FNV-1a, 64 bit: stable across Rust versions, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, arg) in argv.iter().enumerate() {
        if i > 0 {
            h = h.wrapping_mul(0x0100_0000_01b3); // a NUL byte between arguments
        }
        for &b in arg.as_bytes() {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("cmd-{h:016x}")
}

/// A command word for a message (any bytes; escaped when printed).
fn shown(arg: &OsStr) -> std::borrow::Cow<'_, str> {
    arg.to_string_lossy()
}

fn hook(what: &str, cmd: &str, target: &Target) {
    log!(1, "running {what} hook: {cmd}");
    match Command::new("/bin/sh")
        .arg("-c")
        .arg(cmd)
        .env("LOCKFN_TARGET", target.canonical())
        .status()
    {
        Ok(s) if !s.success() => say!("lockfn: {what} hook exited with {s}"),
        Err(e) => say!("lockfn: {what} hook could not run: {e}"),
        _ => {}
    }
}

pub fn run(a: RunArgs) -> crate::CmdResult {
    let argv: Vec<OsString> = match &a.shell_command {
        Some(s) => vec!["/bin/sh".into(), "-c".into(), s.clone()],
        None => a.command.clone(),
    };
    if argv.is_empty() {
        return Err(lockfn::Error::new(
            ErrorKind::Invalid,
            "run needs a command: lockfn run TARGET -- COMMAND [ARGS...]",
        ));
    }
    let mut target = Target::parse_allow_empty(&a.target)?;
    if target.name().is_empty() {
        target = target.with_name(&name_for_command(&argv))?;
        log!(1, "lock named after the command line: {target}");
    }
    let mut opts = a.lock.options()?;
    if !(0.0..=MAX_GRACE).contains(&a.grace) {
        return Err(lockfn::Error::new(
            ErrorKind::Invalid,
            format!("--grace {}: must be 0 to {MAX_GRACE} seconds", a.grace),
        ));
    }
    let grace = Options::timeout_secs(a.grace)?.unwrap_or(Duration::from_secs(5));
    if let Some(cmd) = &a.on_before_lock {
        hook("on-before-lock", cmd, &target);
    }
    if let Some(cmd) = &a.on_already_locked {
        // Try once first, so the hook runs when (and only when) someone else holds it.
        let mut once = opts.clone();
        once.timeout = Some(Duration::ZERO);
        match Lock::acquire(&target, &once) {
            Ok(lock) => return supervise(lock, &argv, &a, grace),
            Err(e) if e.kind() == ErrorKind::Busy => {
                hook("on-already-locked", cmd, &target);
                if opts.timeout == Some(Duration::ZERO) {
                    crate::report(&e);
                    return Ok(a.conflict_exit_code);
                }
            }
            Err(e) => return Err(e),
        }
    }
    let lock = match acquire_cancellable(&target, &mut opts) {
        Ok(Acquired::Lock(l)) => l,
        Ok(Acquired::Canceled(code)) => return Ok(code),
        Err(e) if e.kind() == ErrorKind::Busy => {
            crate::report(&e);
            return Ok(a.conflict_exit_code);
        }
        Err(e) => return Err(e),
    };
    supervise(lock, &argv, &a, grace)
}

fn spawn(argv: &[OsString], lock: &Lock) -> std::io::Result<Child> {
    let parent = std::process::id() as libc::pid_t;
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .env("LOCKFN_TOKEN", lock.token().to_string())
        .env("LOCKFN_TARGET", lock.target().canonical());
    unsafe {
        cmd.pre_exec(move || {
            // The command dies with us, so a recovered lock never leaves it running.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                // We died between fork and prctl: don't run unprotected.
                libc::_exit(exit::LOST as i32);
            }
            Ok(())
        });
    }
    cmd.spawn()
}

fn supervise(lock: Lock, argv: &[OsString], a: &RunArgs, grace: Duration) -> crate::CmdResult {
    let sigfd = signals::pipe().map_err(crate::internal)?;
    signals::catch(signals::RUN).map_err(crate::internal)?;
    // Signals that cancelled nothing while we acquired are stale now.
    signals::drain(sigfd);
    let mut child = match spawn(argv, &lock) {
        Ok(c) => c,
        Err(e) => {
            let code = if e.kind() == std::io::ErrorKind::NotFound {
                exit::NOT_FOUND
            } else {
                exit::NOT_EXECUTABLE
            };
            say!("lockfn: cannot run {}: {e}", shown(&argv[0]));
            let _ = lock.release();
            return Ok(code);
        }
    };
    let pid = child.id() as libc::pid_t;
    log!(
        1,
        "running {} (pid {pid}) under {}",
        shown(&argv[0]),
        lock.target()
    );
    let mut watching = true;
    let mut kill_at: Option<Instant> = None;
    let mut lost = false;
    // Renewals and checks run when due (deadlines kept by the lock), whatever wakes us in
    // between: forwarded signals never postpone them.
    let mut next_due = lock.next_due();
    let status = loop {
        if let Ok(Some(s)) = child.try_wait() {
            break s;
        }
        if watching && next_due.is_some_and(|d| Instant::now() >= d) {
            match lock.maintain() {
                Ok(n) => next_due = n,
                Err(e) if e.kind() == ErrorKind::Lost => {
                    watching = false;
                    match a.on_lost {
                        OnLost::Stop => {
                            say!("lockfn: {e}; stopping the command (SIGTERM)");
                            lost = true;
                            unsafe { libc::kill(pid, libc::SIGTERM) };
                            kill_at = Some(Instant::now() + grace);
                        }
                        OnLost::Ignore => {
                            say!("lockfn: {e}; the command keeps running (--on-lost ignore)")
                        }
                    }
                }
                Err(e) => {
                    log!(1, "checking {} failed, will retry: {e}", lock.target());
                    next_due = retry_due(lock.next_due());
                }
            }
        }
        if let Some(k) = kill_at {
            if Instant::now() >= k {
                say!("lockfn: command did not stop within the grace period; SIGKILL");
                unsafe { libc::kill(pid, libc::SIGKILL) };
                kill_at = None;
            }
        }
        let wake = [next_due.filter(|_| watching), kill_at]
            .into_iter()
            .flatten()
            .min();
        signals::wait(sigfd, poll_ms(wake));
        for s in signals::drain(sigfd) {
            if s.signo == libc::SIGCHLD {
                continue;
            }
            if s.from_process {
                log!(1, "forwarding {} to pid {pid}", signals::name(s.signo));
                unsafe { libc::kill(pid, s.signo) };
            }
        }
    };
    let code = match (status.code(), status.signal()) {
        (Some(c), _) => c.clamp(0, 255) as u8,
        (None, Some(sig)) => 128u8.saturating_add(sig as u8),
        _ => exit::INTERNAL,
    };
    log!(1, "command exited: {status}");
    match lock.release() {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::Lost && !lost => {
            say!("lockfn: warning: {e} (detected at release; the command had finished)")
        }
        Err(e) if e.kind() == ErrorKind::Lost => {}
        Err(e) => say!("lockfn: warning: releasing {}: {e}", shown(&argv[0])),
    }
    Ok(if lost { exit::LOST } else { code })
}

/// poll(2)'s timeout for a wait until `deadline` (None: forever), rounded up so that a
/// wake-up is never before the deadline.
pub fn poll_ms(deadline: Option<Instant>) -> i32 {
    match deadline {
        None => -1,
        Some(d) => {
            let left = d.saturating_duration_since(Instant::now());
            left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32
        }
    }
}

/// The next due time after a failed keep-alive: what the lock scheduled, and never in the
/// past (a failure must not turn into a busy loop).
pub fn retry_due(next: Option<Instant>) -> Option<Instant> {
    let floor = Instant::now() + Duration::from_millis(100);
    next.map(|n| n.max(floor))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_names_are_stable_and_distinct() {
        let a = name_for_command(&["backup".into(), "--all".into()]);
        assert_eq!(a, name_for_command(&["backup".into(), "--all".into()]));
        assert_ne!(a, name_for_command(&["backup--all".into()]));
        assert_ne!(
            a,
            name_for_command(&["backup".into(), "--al".into(), "l".into()])
        );
        assert!(Target::parse(&format!("sem:{a}")).is_ok());
    }
}
