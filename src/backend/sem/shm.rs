//! The files of `sem:` in /dev/shm, opened with checks before anything is mapped, and created
//! atomically.
//!
//! /dev/shm is world-writable: any local user can plant `sem.NAME` or `lockfn@table.NAME` before us,
//! or (if it may write the file) truncate it under us. glibc's sem_open maps whatever is there
//! without looking (an empty file: SIGBUS on the first sem_wait). So nothing is mapped until
//! [`open_checked`] has vouched for the descriptor it will map: a regular file (O_NOFOLLOW, so
//! never through a symlink), of the exact expected size, from someone we trust ([`trusted`]).
//! Then only someone we trust can truncate it later.
//!
//! Creation is glibc's sem_open's (sysdeps/pthread/sem_open.c): a temporary file is filled
//! and then link()ed to its name, so nobody ever maps a half-made file, and link's EEXIST tells
//! a creator that someone else won.

use crate::{Error, ErrorKind, Result};
use nix::fcntl::OFlag;
use nix::sys::mman::{MapFlags, ProtFlags};
use nix::sys::stat::{FileStat, Mode};
use std::ffi::c_void;
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

pub(super) const SHM_DIR: &str = "/dev/shm";

/// A shared mapping of a whole checked file; unmapped on drop.
pub(super) struct Mapping {
    ptr: NonNull<c_void>,
    len: usize,
    /// The file's inode when it was mapped (tells one incarnation of a name from another).
    pub ino: u64,
    /// The file's owner (the uid a table's token floor is kept for, see tokens.rs).
    pub uid: u32,
}

// The mapping is shared memory; every access through it is either an atomic or made under
// the table's process-shared mutex (table.rs), or a sem_* call (thread-safe by POSIX).
unsafe impl Send for Mapping {}
unsafe impl Sync for Mapping {}

impl Mapping {
    pub fn ptr(&self) -> *mut u8 {
        self.ptr.as_ptr() as *mut u8
    }

    pub fn len(&self) -> usize {
        self.len
    }

    fn map(fd: &OwnedFd, st: &FileStat) -> std::io::Result<Mapping> {
        let len = st.st_size as usize;
        let nz = NonZeroUsize::new(len).ok_or(std::io::ErrorKind::InvalidInput)?;
        // Safety: a fresh shared mapping of a file we hold open; its length was checked by the
        // caller, and only a trusted user can shorten the file afterwards.
        let ptr = unsafe {
            nix::sys::mman::mmap(
                None,
                nz,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                fd,
                0,
            )
        }?;
        Ok(Mapping {
            ptr,
            len,
            ino: st.st_ino,
            uid: st.st_uid,
        })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // Safety: our own mapping, not used after this.
        let _ = unsafe { nix::sys::mman::munmap(self.ptr, self.len) };
    }
}

/// What a name's file must be.
pub(super) struct Expect {
    /// Smallest and largest acceptable size (equal for a semaphore).
    pub min: usize,
    pub max: usize,
    /// What the file is, for messages ("a POSIX semaphore").
    pub what: &'static str,
}

/// Open and map `path` after the checks above; None if it does not exist.
/// A check that fails is `Invalid` (type, size) or `Permission` (owner, mode), naming the path
/// and what is wrong; nothing is mapped then.
pub(super) fn open_checked(path: &Path, expect: &Expect) -> Result<Option<(Mapping, OwnedFd)>> {
    let fd = match nix::fcntl::open(
        path,
        OFlag::O_RDWR | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(nix::errno::Errno::ENOENT) => return Ok(None),
        Err(nix::errno::Errno::ELOOP) => {
            return Err(untrusted(path, "is a symbolic link", ErrorKind::Permission))
        }
        Err(e) => {
            return Err(Error::os(
                format!("cannot open {}", path.display()),
                e.into(),
            ))
        }
    };
    let st = nix::sys::stat::fstat(&fd)
        .map_err(|e| Error::os(format!("cannot stat {}", path.display()), e.into()))?;
    check(path, &st, expect)?;
    let map = Mapping::map(&fd, &st)
        .map_err(|e| Error::os(format!("cannot map {}", path.display()), e))?;
    Ok(Some((map, fd)))
}

fn check(path: &Path, st: &FileStat, expect: &Expect) -> Result<()> {
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(untrusted(path, "is not a regular file", ErrorKind::Invalid));
    }
    trusted(path, st)?;
    let size = st.st_size as u64;
    if size < expect.min as u64 || size > expect.max as u64 {
        let want = if expect.min == expect.max {
            format!("{}", expect.min)
        } else {
            format!("{} to {}", expect.min, expect.max)
        };
        return Err(untrusted(
            path,
            &format!(
                "is {size} bytes, {} is {want} (not lockfn's, or damaged)",
                expect.what
            ),
            ErrorKind::Invalid,
        ));
    }
    Ok(())
}

/// Whose files we map: our own (effective uid) and root's, whatever their mode (the owner chose
/// it; `--mode 666` lets every local user break that lock, as the README says); and a
/// group-shared lock's (`--mode 660`: group-writable, not world-writable) when its group is one
/// of ours. Anything else could have been planted by another user.
pub(super) fn trusted(path: &Path, st: &FileStat) -> Result<()> {
    let me = nix::unistd::geteuid().as_raw();
    if st.st_uid == me || st.st_uid == 0 {
        return Ok(());
    }
    let mode = st.st_mode & 0o777;
    if mode & 0o020 != 0 && mode & 0o002 == 0 && in_group(st.st_gid) {
        return Ok(());
    }
    Err(untrusted(
        path,
        &format!(
            "belongs to uid {} (mode {mode:03o}): not you, not root, and not a lock shared with \
             a group of yours; remove it if another user planted it",
            st.st_uid
        ),
        ErrorKind::Permission,
    ))
}

fn in_group(gid: u32) -> bool {
    nix::unistd::getegid().as_raw() == gid
        || nix::unistd::getgroups()
            .map(|g| g.iter().any(|g| g.as_raw() == gid))
            .unwrap_or(false)
}

fn untrusted(path: &Path, what: &str, kind: ErrorKind) -> Error {
    Error::new(
        kind,
        format!("{} {what}; lockfn does not use it", path.display()),
    )
}

/// A temporary name in /dev/shm that no lock's file can have ('@' is not allowed in names).
fn temp_path() -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    PathBuf::from(format!(
        "{SHM_DIR}/lockfn@tmp.{}.{n}.{nanos}",
        std::process::id()
    ))
}

/// Create `path` of `len` bytes and exactly `mode` (no umask), filled by `init` before anyone
/// can open it. Ok(None): the name exists (another creator won; open it instead).
pub(super) fn create_atomically(
    path: &Path,
    len: usize,
    mode: u32,
    init: impl FnOnce(&Mapping),
) -> Result<Option<Mapping>> {
    let io = |what: &str, e: nix::errno::Errno| {
        Error::os(format!("cannot {what} {}", path.display()), e.into())
    };
    let mut tmp = temp_path();
    let mut tries = 0;
    let fd = loop {
        match nix::fcntl::open(
            &tmp,
            OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        ) {
            Ok(fd) => break fd,
            Err(nix::errno::Errno::EEXIST) if tries < 10 => {
                tries += 1;
                tmp = temp_path();
            }
            Err(e) => return Err(io("create a temporary file for", e)),
        }
    };
    let made = (|| {
        nix::unistd::ftruncate(&fd, len as libc::off_t).map_err(|e| io("size", e))?;
        nix::sys::stat::fchmod(&fd, Mode::from_bits_truncate(mode as libc::mode_t))
            .map_err(|e| io("set the mode of", e))?;
        let st = nix::sys::stat::fstat(&fd).map_err(|e| io("stat", e))?;
        let map = Mapping::map(&fd, &st)
            .map_err(|e| Error::os(format!("cannot map {}", path.display()), e))?;
        init(&map);
        match nix::unistd::linkat(fd_cwd(), &tmp, fd_cwd(), path, nix::fcntl::AtFlags::empty()) {
            Ok(()) => Ok(Some(map)),
            Err(nix::errno::Errno::EEXIST) => Ok(None),
            Err(e) => Err(io("create", e)),
        }
    })();
    let _ = nix::unistd::unlink(&tmp);
    drop(fd);
    made
}

fn fd_cwd() -> std::os::fd::BorrowedFd<'static> {
    nix::fcntl::AT_FDCWD
}

/// The link count of an open file (0: it was unlinked).
pub(super) fn nlink(fd: &impl AsFd) -> u64 {
    nix::sys::stat::fstat(fd).map(|st| st.st_nlink).unwrap_or(0)
}

/// Remove `path` if it is still the file with inode `ino` (one stat, then unlink: a file made
/// at the name in between would be removed too; only a lockfn opener makes one there, under
/// the table mutex the caller holds).
pub(super) fn unlink_if(path: &Path, ino: u64) -> bool {
    match nix::sys::stat::lstat(path) {
        Ok(st) if st.st_ino == ino => nix::unistd::unlink(path).is_ok(),
        _ => false,
    }
}
