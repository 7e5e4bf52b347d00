//! The POSIX named semaphore `/NAME`: glibc keeps it as a `sem_t` in `/dev/shm/sem.NAME`,
//! mapped shared by every user (sysdeps/pthread/sem_open.c: open, then mmap of sizeof(sem_t),
//! no checks). We map that same file ourselves, after the checks of shm.rs, and call sem_*
//! on the mapping: the same futex word as resourcelock's and posix_ipc's sem_open, so we
//! interoperate with them, but a planted or truncated file is an error instead of SIGBUS.

use super::shm::{self, Expect, Mapping, SHM_DIR};
use crate::Result;
use std::io;
use std::path::PathBuf;
use std::time::Instant;

extern "C" {
    // glibc ≥ 2.30; not (yet) in the libc crate. Waits against CLOCK_MONOTONIC so that a
    // wall-clock jump neither shortens nor stretches a timeout.
    fn sem_clockwait(
        sem: *mut libc::sem_t,
        clock: libc::clockid_t,
        abstime: *const libc::timespec,
    ) -> libc::c_int;
}

const SEM_SIZE: usize = std::mem::size_of::<libc::sem_t>();
const EXPECT: Expect = Expect {
    min: SEM_SIZE,
    max: SEM_SIZE,
    what: "a POSIX semaphore",
};

pub(super) fn sem_path(name: &str) -> PathBuf {
    PathBuf::from(format!("{SHM_DIR}/sem.{name}"))
}

/// How a timed wait ended.
pub(super) enum Waited {
    Got,
    TimedOut,
    /// A signal with a handler interrupted it (EINTR, even under SA_RESTART: a timed futex
    /// wait is never restarted).
    Interrupted,
}

/// A mapped, checked semaphore.
pub(super) struct Sem {
    map: Mapping,
}

impl Sem {
    /// Open `/NAME`; None if it does not exist.
    pub fn open(name: &str) -> Result<Option<Sem>> {
        Ok(shm::open_checked(&sem_path(name), &EXPECT)?.map(|(map, _fd)| Sem { map }))
    }

    /// Create `/NAME` with `value` and exactly `mode`, as sem_open(O_CREAT|O_EXCL) does; None
    /// if it exists.
    pub fn create(name: &str, mode: u32, value: u32) -> Result<Option<Sem>> {
        let map = shm::create_atomically(&sem_path(name), SEM_SIZE, mode, |m| {
            // Safety: a fresh private file of sizeof(sem_t) bytes, mapped shared: what glibc's
            // sem_open writes (sem_init with pshared = 1).
            unsafe { libc::sem_init(m.ptr() as *mut libc::sem_t, 1, value) };
        })?;
        Ok(map.map(|map| Sem { map }))
    }

    /// Inode of the file we mapped.
    pub fn ino(&self) -> u64 {
        self.map.ino
    }

    fn ptr(&self) -> *mut libc::sem_t {
        self.map.ptr() as *mut libc::sem_t
    }

    /// Take a count if one is free. An atomic compare-and-swap in glibc: no syscall.
    pub fn try_wait(&self) -> io::Result<bool> {
        loop {
            if unsafe { libc::sem_trywait(self.ptr()) } == 0 {
                return Ok(true);
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EAGAIN) => return Ok(false),
                Some(libc::EINTR) => continue,
                _ => return Err(e),
            }
        }
    }

    /// Wait for a count until `until` (monotonic).
    pub fn wait_until(&self, until: Instant) -> io::Result<Waited> {
        let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
            .map_err(io::Error::from)?;
        let d = until.saturating_duration_since(Instant::now());
        let mut abs = libc::timespec {
            tv_sec: now.tv_sec() + d.as_secs() as libc::time_t,
            tv_nsec: now.tv_nsec() + d.subsec_nanos() as libc::c_long,
        };
        if abs.tv_nsec >= 1_000_000_000 {
            abs.tv_sec += 1;
            abs.tv_nsec -= 1_000_000_000;
        }
        if unsafe { sem_clockwait(self.ptr(), libc::CLOCK_MONOTONIC, &abs) } == 0 {
            return Ok(Waited::Got);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ETIMEDOUT) => Ok(Waited::TimedOut),
            Some(libc::EINTR) => Ok(Waited::Interrupted),
            _ => Err(e),
        }
    }

    /// Give a count back (a futex wake only when someone sleeps on it).
    pub fn post(&self) -> io::Result<()> {
        if unsafe { libc::sem_post(self.ptr()) } == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// The free count now (an atomic load).
    pub fn value(&self) -> i64 {
        let mut v: libc::c_int = 0;
        unsafe { libc::sem_getvalue(self.ptr(), &mut v) };
        v as i64
    }
}
