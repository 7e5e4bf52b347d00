//! What /proc and pidfds tell about processes of this host: whether a pid is alive and is the
//! process that was recorded (its start time rules out pid reuse), this process's own pid and
//! start time, and [`LivenessWatch`], which follows holders through pidfds while a waiter
//! waits.

use crate::holder::{HolderRecord, Liveness};

pub(crate) fn pid_exists(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // kill(pid, 0): ESRCH means gone; EPERM means it exists under another user.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Start time of a process in clock ticks after boot, or None if it does not exist.
pub fn process_start_time(pid: i32) -> Option<u64> {
    process_stat(pid).map(|(_, t)| t)
}

/// State letter (R, S, Z, …) and start time of a process, or None if it does not exist.
pub(crate) fn process_stat(pid: i32) -> Option<(char, u64)> {
    use std::io::Read;
    if pid <= 0 {
        return None;
    }
    // One read into a fixed buffer (the line is a few hundred bytes and ends with '\n'):
    // read_to_string would stat the file (size 0) and read it in growing steps.
    let mut f = std::fs::File::open(format!("/proc/{pid}/stat")).ok()?;
    let mut buf = [0u8; 1024];
    let mut n = 0;
    while n < buf.len() && !buf[..n].contains(&b'\n') {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    // The command name (field 2) may contain spaces, parentheses and bytes that are not UTF-8:
    // fields after it are counted from the last ')'. Field 3 is the state, field 22 (the 20th
    // after the name) the start time; a longer line cut at the buffer's end still has them.
    let end = buf[..n].iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(&buf[end + 1..n]).ok()?;
    let mut f = rest.split_whitespace();
    let state = f.next()?.chars().next()?;
    Some((state, f.nth(18)?.parse().ok()?))
}

/// Does process `pid` have a live thread besides its (exited) main thread? A true zombie's
/// /proc/PID/task lists only the main thread.
pub(crate) fn other_threads_run(pid: i32) -> bool {
    let main = pid.to_string();
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .any(|e| e.file_name().to_str() != Some(main.as_str()))
        })
        .unwrap_or(false)
}

/// This process's pid and start time (0 if /proc could not tell). The start time is read once
/// per process: the cache is keyed on getpid(), so a forked child reads its own instead of
/// reusing its parent's.
pub fn own_process() -> (i32, u64) {
    use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
    // `START` is written before `PID` (release), and read after it (acquire): a matching pid
    // vouches for the start time next to it. Every writer in one process writes the same pair.
    static PID: AtomicI32 = AtomicI32::new(0);
    static START: AtomicU64 = AtomicU64::new(0);
    let pid = crate::fork::pid() as i32;
    if PID.load(Ordering::Acquire) == pid {
        return (pid, START.load(Ordering::Relaxed));
    }
    match process_start_time(pid) {
        Some(t) => {
            START.store(t, Ordering::Relaxed);
            PID.store(pid, Ordering::Release);
            (pid, t)
        }
        None => (pid, 0), // not cached: the next call tries /proc again
    }
}

/// Liveness of holders, remembered across repeated checks (a waiter's polling): a holder proven
/// alive by /proc once is then watched through a pidfd, so later checks cost one poll(2) instead
/// of reading /proc/PID/stat, and pid reuse cannot fool them (a pidfd names one process).
/// Without pidfd_open (old kernel, seccomp) every check reads /proc as [`HolderRecord::liveness`].
#[derive(Default)]
pub struct LivenessWatch {
    watched: Vec<(i32, u64, std::os::fd::OwnedFd)>,
}

impl LivenessWatch {
    pub fn new() -> LivenessWatch {
        LivenessWatch::default()
    }

    pub fn liveness(&mut self, h: &HolderRecord) -> Liveness {
        if !h.is_this_boot() {
            return Liveness::Remote;
        }
        if let Some((_, _, fd)) = self
            .watched
            .iter()
            .find(|(pid, start, _)| *pid == h.pid && *start == h.start_time)
        {
            // Readable once the process has exited (zombie included).
            match pidfd_exited(fd) {
                Some(true) => return Liveness::Dead,
                Some(false) => return Liveness::Alive,
                None => return h.local_liveness().0,
            }
        }
        // Open the pidfd before reading /proc: if /proc then shows the recorded start time, the
        // holder already had this pid when the pidfd was opened, so the pidfd is the holder's.
        let fd = pidfd_open(h.pid);
        let (state, verified) = h.local_liveness();
        if let (Liveness::Alive, true, Some(fd)) = (state, verified, fd) {
            self.watched.push((h.pid, h.start_time, fd));
        }
        state
    }

    /// Is `h` watched through a pidfd (its death then makes [`LivenessWatch::fds`] readable)?
    pub fn is_watched(&self, h: &HolderRecord) -> bool {
        self.watched
            .iter()
            .any(|(pid, start, _)| *pid == h.pid && *start == h.start_time)
    }

    /// The pidfds of the watched holders: each becomes readable when its process exits, so a
    /// waiter can sleep in poll(2) until a holder dies instead of polling /proc.
    pub fn fds(&self) -> Vec<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        self.watched.iter().map(|(_, _, fd)| fd.as_fd()).collect()
    }

    /// Stop watching processes that no longer hold anything (closes their pidfds).
    pub fn retain(&mut self, holders: &[HolderRecord]) {
        self.watched.retain(|(pid, start, _)| {
            holders
                .iter()
                .any(|h| h.pid == *pid && h.start_time == *start && h.is_this_boot())
        });
    }
}

fn pidfd_open(pid: i32) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    if pid <= 0 {
        return None;
    }
    // pidfds are always close-on-exec.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return None;
    }
    Some(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// Has the process behind `fd` exited? None if poll(2) cannot tell (then ask /proc).
fn pidfd_exited(fd: &std::os::fd::OwnedFd) -> Option<bool> {
    use std::os::fd::AsRawFd;
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        match unsafe { libc::poll(&mut p, 1, 0) } {
            0 => return Some(false),
            n if n > 0 && p.revents & libc::POLLIN != 0 => return Some(true),
            n if n > 0 => return None,
            _ if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) => {}
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_follows_a_holder_through_its_death() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let mut r = HolderRecord::for_self(None);
        r.pid = child.id() as i32;
        r.start_time = process_start_time(r.pid).unwrap();
        let mut w = LivenessWatch::new();
        assert_eq!(w.liveness(&r), Liveness::Alive);
        // Watched through a pidfd where the kernel has them.
        assert_eq!(w.watched.len(), pidfd_open(r.pid).is_some() as usize);
        assert_eq!(w.liveness(&r), Liveness::Alive);
        // The same pid with another start time is a reused pid: dead, watched or not.
        let mut reused = r.clone();
        reused.start_time += 1;
        assert_eq!(w.liveness(&reused), Liveness::Dead);
        child.kill().unwrap();
        let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while w.liveness(&r) != Liveness::Dead && std::time::Instant::now() < end {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        // Dead as a zombie (not reaped yet), and /proc agrees.
        assert_eq!(w.liveness(&r), Liveness::Dead);
        assert_eq!(r.liveness(), Liveness::Dead);
        child.wait().unwrap();
        assert_eq!(w.liveness(&r), Liveness::Dead);
        w.retain(&[]);
        assert!(w.watched.is_empty());
    }
}
