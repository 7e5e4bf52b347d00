//! `lockfn keep`: renew a persistent lock until it is released — what `acquire --persist
//! --keep` leaves behind for a service whose persistent locks expire unless renewed (pmxcfs
//! after 120 s; a Consul session with a TTL). Also usable from cron or a unit file.

use crate::{internal, say, signals, CmdResult};
use clap::Args;
use lockfn::{ErrorKind, Options, Target};
use std::time::{Duration, Instant};

#[derive(Args)]
pub struct KeepArgs {
    /// Renew this often (default: a third of the lock's lifetime)
    #[arg(long, value_name = "DURATION", value_parser = crate::duration::secs)]
    every: Option<f64>,
    /// Only while the persistent holder's token is N (the lock this keeper was left for);
    /// stop when another holder has it
    #[arg(long, value_name = "N")]
    token: Option<u64>,
    /// The persistent lock, e.g. pmxcfs:maintenance
    target: String,
}

/// The persistent holder we keep, if it still holds.
fn ours(target: &Target, token: Option<u64>) -> Result<bool, lockfn::Error> {
    let st = lockfn::status(target)?;
    Ok(st
        .holders
        .iter()
        .any(|h| h.record.persist && token.is_none_or(|t| h.record.token == t)))
}

pub fn keep(a: KeepArgs) -> CmdResult {
    let target = Target::parse(&a.target)?;
    let lifetime = lockfn::persistent_lifetime(&target, &Options::default());
    let Some(renewal) = lifetime.renewal else {
        say!(
            "lockfn: {target} needs no renewal: a persistent lock ends {}",
            lifetime.ends
        );
        return Ok(0);
    };
    let every = match a.every {
        Some(s) if s > 0.0 && s < renewal => Duration::from_secs_f64(s),
        Some(s) => {
            return Err(lockfn::Error::new(
                ErrorKind::Invalid,
                format!(
                    "--every {s} s: must be above 0 and below the lock's lifetime ({renewal} s)"
                ),
            ))
        }
        None => Duration::from_secs_f64(renewal / 3.0),
    };
    let sigfd = signals::pipe().map_err(internal)?;
    signals::catch(&[libc::SIGINT, libc::SIGTERM, libc::SIGHUP]).map_err(internal)?;
    // The last renewal that worked: past its lifetime without another, the lock is gone.
    let mut renewed = Instant::now();
    loop {
        if signals::wait(sigfd, every.as_millis().min(i32::MAX as u128) as i32) {
            return Ok(0);
        }
        match ours(&target, a.token) {
            Ok(true) => {}
            Ok(false) => return Ok(0), // released, or someone else's now: nothing to keep
            Err(e) if e.kind() == ErrorKind::Unavailable => {}
            Err(e) => return Err(e),
        }
        match lockfn::update_named(&target) {
            Ok(()) => renewed = Instant::now(),
            // Released between the look and the renewal.
            Err(e) if e.kind() == ErrorKind::NotHeld => return Ok(0),
            // The service is briefly away: try again at the next interval while the lock
            // can still be alive.
            Err(e)
                if e.kind() == ErrorKind::Unavailable
                    && renewed.elapsed() < Duration::from_secs_f64(renewal) =>
            {
                say!("lockfn: keep {target}: {e} (trying again)");
            }
            Err(e) => return Err(e),
        }
    }
}

/// Start `lockfn keep --token TOKEN TARGET` detached (its own session, no terminal, stdio on
/// /dev/null): it outlives this command. Returns its pid.
pub fn spawn(target: &Target, token: u64) -> Result<u32, lockfn::Error> {
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    let exe = std::env::current_exe().map_err(internal)?;
    let mut cmd = Command::new(exe);
    cmd.args(["keep", "--token", &token.to_string(), &target.canonical()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: setsid is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|e| {
        lockfn::Error::new(
            ErrorKind::Internal,
            format!("{target}: cannot start lockfn keep: {e}"),
        )
    })?;
    Ok(child.id())
}
