//! `lockfn hold`: acquire, print one JSON line, then hold (renewing) until stdin closes, a
//! `release` line, or SIGTERM/SIGINT/SIGHUP: the engine of shell/lockfn.sh.

use crate::{
    acquire_cancellable, acquired_json, internal, lines, log, output, parse_target, print_json,
    run, say, signals, Acquired, CmdResult, LockArgs,
};
use clap::Args;
use lockfn::{ErrorKind, Lock};

pub const AFTER_HELP: &str = "\
Protocol (used by shell/lockfn.sh): after acquiring, one JSON line on stdout:
  {\"target\":...,\"token\":N,\"holder\":{...}}
then the lock is held and renewed until stdin reaches EOF or SIGTERM/SIGINT/SIGHUP arrives;
then it is released and lockfn exits 0. Lines on stdin:
  update   renew now; answers {\"updated\":true}
  release  release now; answers {\"released\":true} and exits 0
If the lock is lost, {\"lost\":true,\"error\":...} is printed and lockfn exits 75.";

#[derive(Args)]
pub struct HoldArgs {
    #[command(flatten)]
    lock: LockArgs,
    /// The lock, e.g. sem:backup
    target: String,
}

pub fn hold(a: HoldArgs) -> CmdResult {
    let target = parse_target(&a.target)?;
    let mut opts = a.lock.options()?;
    signals::pipe().map_err(internal)?;
    signals::hangup_on_stdin_close();
    let lock = match acquire_cancellable(&target, &mut opts)? {
        Acquired::Lock(l) => l,
        Acquired::Canceled(code) => return Ok(code),
    };
    print_json(&acquired_json(&lock));
    let sigfd = signals::pipe().map_err(internal)?;
    let stdin = 0;
    let mut reader = lines::LineReader::new(lines::MAX_REQUEST);
    let mut requests = Vec::new();
    // Renewals and checks when due (deadlines kept by the lock): no rate of input lines or
    // signals postpones them.
    let mut next_due = lock.next_due();
    loop {
        if next_due.is_some_and(|d| std::time::Instant::now() >= d) {
            match lock.maintain() {
                Ok(n) => next_due = n,
                Err(e) if e.kind() == ErrorKind::Lost => return lost_or_error(e),
                Err(e) => {
                    log!(1, "renewing {target} failed, will retry: {e}");
                    next_due = run::retry_due(lock.next_due());
                }
            }
        }
        let mut fds = [
            libc::pollfd {
                fd: stdin,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: sigfd,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, run::poll_ms(next_due)) };
        if n < 0 {
            continue; // EINTR: the signal is in the pipe
        }
        // Input first: a "release" line that arrived just before stdin closed (which raises
        // SIGHUP) is answered, not lost to the hang-up.
        if fds[0].revents != 0 {
            let mut buf = [0u8; 65536];
            let r = unsafe { libc::read(stdin, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
            if r <= 0 {
                log!(1, "stdin closed, releasing {target}");
                return finish_release(lock);
            }
            reader.push(&buf[..r as usize], &mut requests);
            for req in requests.drain(..) {
                let cmd = match req {
                    lines::Line::Text(t) => t,
                    lines::Line::TooLong(n) => {
                        say!(
                            "lockfn: hold: ignoring a request line of {n}+ bytes (requests are \
                             at most {} bytes: update, release)",
                            lines::MAX_REQUEST
                        );
                        continue;
                    }
                };
                match String::from_utf8_lossy(&cmd).trim() {
                    "update" => match lock.update() {
                        Ok(()) => {
                            next_due = lock.next_due();
                            print_json(&serde_json::json!({"updated": true}));
                        }
                        Err(e) => return lost_or_error(e),
                    },
                    "release" => {
                        let r = lock.release();
                        print_json(&serde_json::json!({"released": r.is_ok()}));
                        return r.map(|_| 0);
                    }
                    "" => {}
                    other => say!(
                        "lockfn: hold: unknown request '{}' (update, release)",
                        output::value(other)
                    ),
                }
            }
        }
        if fds[1].revents != 0 {
            let sigs = signals::drain(sigfd);
            if !sigs.is_empty() {
                log!(
                    1,
                    "{} received, releasing {target}",
                    signals::name(sigs[0].signo)
                );
                return finish_release(lock);
            }
        }
    }
}

fn lost_or_error(e: lockfn::Error) -> CmdResult {
    if e.kind() == ErrorKind::Lost {
        print_json(&serde_json::json!({"lost": true, "error": e.message()}));
    }
    Err(e)
}

fn finish_release(lock: Lock) -> CmdResult {
    lock.release().map(|_| 0)
}
