//! The node-local flock on `/run/lock/pmxlock/NAME`, the very file pmxlock uses, so lockfn
//! and pmxlock processes of one node queue on it, and a same-node release is seen at once
//! (the waiting is backend/flock.rs's). The file is local (tmpfs), never on pmxcfs: nothing
//! here can block on a frozen pmxcfs.

use super::fs::os_error;
use crate::backend::flock::{self, Flocked, Mode, Request};
use crate::backend::Wait;
use crate::{Error, Result, Target};
use std::fs::{DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The node-local flock while held.
pub type NodeFlock = Flocked;

/// The flock file of lock `name`.
pub fn flock_path(name: &str) -> PathBuf {
    super::flock_dir().join(name)
}

pub fn open_flock_file(path: &Path) -> io::Result<File> {
    if let Some(parent) = path.parent() {
        DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)?;
    }
    // Read-only and created like pmxlock does (os.open(path, O_RDONLY | O_CREAT)).
    OpenOptions::new()
        .read(true)
        .write(false)
        .create(false)
        .custom_flags(libc::O_CREAT | libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .mode(0o644)
        .open(path)
}

/// flock(LOCK_EX | LOCK_NB): Ok(true) when taken.
pub fn try_flock(file: &File) -> io::Result<bool> {
    flock::try_flock(file, Mode::Exclusive)
}

pub use flock::{still_linked, unlock as unlock_flock};

/// Who holds the flock on `file`, from /proc/locks.
pub fn flock_holder_pid(file: &File) -> Option<i32> {
    flock::holders(file).first().map(|h| h.pid)
}

/// Take the node-local flock of `target`, waiting as `wait` says. On a busy end, `busy` makes
/// the error from the pid holding the flock (when /proc/locks tells).
pub fn acquire(
    target: &Target,
    wait: &Wait,
    busy: impl Fn(Option<i32>) -> Error,
) -> Result<NodeFlock> {
    let path = flock_path(target.name());
    flock::acquire(
        &Request {
            target,
            path: &path,
            mode: Mode::Exclusive,
            open: &open_flock_file,
            os: &|what, e| os_error(target, &format!("{what} the node-local lock"), &path, e),
            busy: &|holders| busy(holders.first().map(|h| h.pid)),
        },
        wait,
    )
}
