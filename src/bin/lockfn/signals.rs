//! Signals as events: a handler writes (signal, sent-by-a-process) into a self-pipe whose read
//! end is both the cancel fd of a waiting acquire and the wake-up of the supervision loop.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, Ordering};

static PIPE_W: AtomicI32 = AtomicI32::new(-1);

/// One received signal.
#[derive(Debug, Clone, Copy)]
pub struct Received {
    pub signo: i32,
    /// Sent by kill(2) from a process (to be forwarded), not by the terminal or the kernel
    /// (which already delivered it to the whole foreground process group, command included).
    pub from_process: bool,
}

extern "C" fn on_signal(signo: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let code = if info.is_null() {
        libc::SI_USER
    } else {
        unsafe { (*info).si_code }
    };
    let from_process = (code == libc::SI_USER || code == libc::SI_QUEUE) as u8;
    let fd = PIPE_W.load(Ordering::Relaxed);
    if fd >= 0 {
        let buf = [signo as u8, from_process];
        let saved = unsafe { *libc::__errno_location() };
        unsafe { libc::write(fd, buf.as_ptr() as *const libc::c_void, 2) };
        unsafe { *libc::__errno_location() = saved };
    }
}

/// Create the self-pipe (once) and return its read end.
/// What `lockfn run` catches: the command's end, the cancels, and what it forwards.
pub const RUN: &[libc::c_int] = &[
    libc::SIGCHLD,
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

pub fn pipe() -> std::io::Result<RawFd> {
    static READ: AtomicI32 = AtomicI32::new(-1);
    let r = READ.load(Ordering::SeqCst);
    if r >= 0 {
        return Ok(r);
    }
    let mut fds = [0; 2];
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    PIPE_W.store(fds[1], Ordering::SeqCst);
    READ.store(fds[0], Ordering::SeqCst);
    Ok(fds[0])
}

/// Route `signals` to the self-pipe, except those ignored (SIG_IGN) when we started: `nohup`
/// ignores SIGHUP, a non-interactive shell ignores SIGINT and SIGQUIT for its background jobs,
/// and what was ignored stays ignored — not caught, not forwarded (the command inherits the
/// SIG_IGN, as under flock(1)), and it never cancels a wait. We never set SIG_IGN ourselves
/// on these signals, so "ignored now" is "ignored at start".
pub fn catch(signals: &[i32]) -> std::io::Result<()> {
    pipe()?;
    for &s in signals {
        // SIGCHLD is ours to catch whatever we inherited (the supervisor waits on it).
        if s != libc::SIGCHLD && ignored(s) {
            continue;
        }
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as usize;
            sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            if libc::sigaction(s, &sa, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

/// Is `signo`'s disposition SIG_IGN?
pub fn ignored(signo: i32) -> bool {
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(signo, std::ptr::null(), &mut old) == 0 && old.sa_sigaction == libc::SIG_IGN
    }
}

/// Put an event into the pipe as if `signo` had been sent by a process (from a thread).
pub fn inject(signo: i32) {
    let fd = PIPE_W.load(Ordering::SeqCst);
    if fd >= 0 {
        let buf = [signo as u8, 1];
        unsafe { libc::write(fd, buf.as_ptr() as *const libc::c_void, 2) };
    }
}

/// Watch stdin in a thread and inject SIGHUP when it hangs up (the writer is gone: a shell
/// killed while its `lockfn hold` still waits must not leave the wait behind).
pub fn hangup_on_stdin_close() {
    let _ = std::thread::Builder::new()
        .name("stdin-hangup".into())
        .spawn(|| loop {
            // events = 0: only POLLHUP/POLLERR/POLLNVAL are reported, and data never is.
            let mut p = libc::pollfd {
                fd: 0,
                events: 0,
                revents: 0,
            };
            let n = unsafe { libc::poll(&mut p, 1, -1) };
            if n > 0 {
                if p.revents & libc::POLLNVAL == 0 {
                    inject(libc::SIGHUP);
                }
                return;
            }
            if n < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                return;
            }
        });
}

/// Read every pending signal from the pipe.
/// Sleep until the signal pipe `fd` is readable or `timeout_ms` passed (`< 0`: no limit);
/// true when readable. An interrupted poll just returns: the caller loops anyway.
pub fn wait(fd: RawFd, timeout_ms: i32) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::BorrowedFd;
    // SAFETY: the signal pipe lives for the whole process (made once by `pipe`).
    let bfd = unsafe { BorrowedFd::borrow_raw(fd) };
    let mut fds = [PollFd::new(bfd, PollFlags::POLLIN)];
    let timeout = if timeout_ms < 0 {
        PollTimeout::NONE
    } else {
        PollTimeout::try_from(timeout_ms).unwrap_or(PollTimeout::MAX)
    };
    matches!(poll(&mut fds, timeout), Ok(n) if n > 0)
}

pub fn drain(fd: RawFd) -> Vec<Received> {
    let mut out = Vec::new();
    let mut buf = [0u8; 64];
    loop {
        let n = unsafe { libc::read(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
        if n <= 0 {
            break;
        }
        for pair in buf[..n as usize].chunks(2) {
            out.push(Received {
                signo: pair[0] as i32,
                from_process: pair.get(1).copied().unwrap_or(1) != 0,
            });
        }
    }
    out
}

pub fn name(signo: i32) -> String {
    nix::sys::signal::Signal::try_from(signo)
        .map(|s| s.as_str().to_string())
        .unwrap_or_else(|_| format!("signal {signo}"))
}
