//! The token floor: what keeps fencing tokens growing when `gc` removed an idle table and a
//! later acquisition makes it anew, whatever the wall clock did meanwhile.
//!
//! A new table's first token is max(wall clock in µs, the floor of its creator's uid); gc
//! raises the floor of the table's owner to the table's next token before removing it. One
//! 8-byte file per uid, `/dev/shm/lockfn@tokens.UID` ('@' is not allowed in lock names), kept
//! by gc, checked like the lock files (owner: that uid or root; exactly 8 bytes).

use super::shm::{self, SHM_DIR};
use crate::{Error, ErrorKind, Result};
use nix::fcntl::{Flock, FlockArg, OFlag};
use nix::sys::stat::Mode;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

fn path(uid: u32) -> PathBuf {
    PathBuf::from(format!("{SHM_DIR}/lockfn@tokens.{uid}"))
}

/// The first token of a table created now by the calling user.
pub(super) fn seed() -> Result<u64> {
    let clock = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(1);
    Ok(clock.max(floor(nix::unistd::geteuid().as_raw())?).max(1))
}

/// Open the floor of `uid`: to read, or (`write`) to raise it, creating it.
fn open(uid: u32, write: bool) -> Result<Option<std::fs::File>> {
    let p = path(uid);
    let mut flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    if write {
        flags = OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    }
    let fd = match nix::fcntl::open(&p, flags, Mode::from_bits_truncate(0o644)) {
        Ok(fd) => fd,
        Err(nix::errno::Errno::ENOENT) => return Ok(None),
        Err(e) => return Err(Error::os(format!("cannot open {}", p.display()), e.into())),
    };
    let st = nix::sys::stat::fstat(&fd)
        .map_err(|e| Error::os(format!("cannot stat {}", p.display()), e.into()))?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG || (st.st_size != 0 && st.st_size != 8) {
        return Err(Error::new(
            ErrorKind::Invalid,
            format!("{} is not a lockfn token floor (8 bytes)", p.display()),
        ));
    }
    if st.st_uid != uid && st.st_uid != 0 {
        shm::trusted(&p, &st)?;
    }
    Ok(Some(std::fs::File::from(fd)))
}

fn read(f: &std::fs::File) -> u64 {
    let mut b = [0u8; 8];
    match f.read_at(&mut b, 0) {
        Ok(8) => u64::from_le_bytes(b),
        _ => 0,
    }
}

/// The floor of `uid` (0 when it has none).
fn floor(uid: u32) -> Result<u64> {
    Ok(open(uid, false)?.map_or(0, |f| read(&f)))
}

/// Raise the floor of `uid` to `next` (the next token of a table about to be removed).
pub(super) fn raise(uid: u32, next: u64) -> Result<()> {
    let Some(f) = open(uid, true)? else {
        return Ok(());
    };
    let p = path(uid);
    let f = Flock::lock(f, FlockArg::LockExclusive)
        .map_err(|(_, e)| Error::os(format!("cannot lock {}", p.display()), e.into()))?;
    if read(&f) < next {
        f.write_all_at(&next.to_le_bytes(), 0)
            .map_err(|e| Error::os(format!("cannot write {}", p.display()), e))?;
    }
    Ok(())
}
