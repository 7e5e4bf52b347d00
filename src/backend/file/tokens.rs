//! Fencing tokens of `file:` locks: a counter per path in `LOCKFN_RUN_DIR/file/`
//! (default /run/lock/lockfn/file), named by a hash of the path, raised under an flock of
//! the counter file itself (shared holders take tokens at the same time).
//!
//! The counter directory belongs to whoever made it first; a directory or file another user
//! could have planted or can write is not trusted (the caller's uid or root must own it, and
//! nobody else may write it). Where the counter cannot be used (not ours, no permission, a
//! read-only /run), the token falls back to the wall clock in microseconds, which grows with
//! every acquisition unless the clock is set back: `status` of such a lock says nothing
//! about tokens, and the README says so.

use crate::backend::flock::{self, Mode};
use std::fs::{DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

const DEFAULT_RUN_DIR: &str = "/run/lock/lockfn";
/// A counter is 20 decimal digits (u64::MAX has 20).
const WIDTH: usize = 20;

fn dir() -> PathBuf {
    let base = match std::env::var_os("LOCKFN_RUN_DIR") {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => PathBuf::from(DEFAULT_RUN_DIR),
    };
    base.join("file")
}

/// FNV-1a, 64 bits: a stable name for a path (the same in every lockfn version, unlike std's
/// hasher, so tokens keep growing across upgrades).
fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Owned by us or root, and writable by nobody else.
fn trusted(meta: &std::fs::Metadata) -> bool {
    let uid = unsafe { libc::geteuid() };
    (meta.uid() == uid || meta.uid() == 0) && meta.mode() & 0o022 == 0
}

fn untrusted(what: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!(
            "{} is not owned by us or root, or others may write it",
            what.display()
        ),
    )
}

fn open_counter(path: &Path) -> io::Result<File> {
    let d = dir();
    DirBuilder::new().recursive(true).mode(0o755).create(&d)?;
    let dm = std::fs::symlink_metadata(&d)?;
    if !dm.is_dir() || !trusted(&dm) {
        return Err(untrusted(&d));
    }
    let name = format!("{:016x}", fnv1a(path.as_os_str().as_encoded_bytes()));
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .mode(0o644)
        .open(d.join(&name))?;
    let m = f.metadata()?;
    if !m.is_file() || !trusted(&m) {
        return Err(untrusted(&d.join(name)));
    }
    Ok(f)
}

/// Read, raise and store the counter under its own flock.
fn bump(f: &File) -> io::Result<u64> {
    // Another taker holds it for microseconds; one that holds it longer (stopped, or
    // another user who may read the file) costs us the counter, not the lock.
    let mut tries = 0;
    while !flock::try_flock(f, Mode::Exclusive)? {
        tries += 1;
        if tries > 200 {
            return Err(io::Error::from_raw_os_error(libc::EWOULDBLOCK));
        }
        std::thread::sleep(std::time::Duration::from_micros(250));
    }
    let mut buf = [0u8; WIDTH];
    let n = f.read_at(&mut buf, 0)?;
    let old = std::str::from_utf8(&buf[..n])
        .ok()
        .and_then(|t| t.trim().parse::<u64>().ok())
        .unwrap_or(0);
    // Never below the clock fallback a previous acquisition may have used.
    let next = (old + 1).max(clock_token());
    let r = f.write_all_at(format!("{next:0WIDTH$}").as_bytes(), 0);
    flock::unlock(f);
    r.map(|()| next)
}

fn clock_token() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(1)
}

/// The next token of the lock on `path` (called while holding it).
pub fn next(path: &Path) -> u64 {
    match open_counter(path).and_then(|f| bump(&f)) {
        Ok(t) => t,
        Err(_) => clock_token(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_stable() {
        // FNV-1a test vectors.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
