//! Fencing tokens for pmxcfs locks: a per-name counter kept in pmxcfs itself, at
//! `priv/lockfn/tokens/NAME` beside `priv/lock` (or `LOCKFN_PMXCFS_TOKEN_DIR`).
//!
//! The holder advances it while it holds the lock, so one writer at a time; pmxcfs stores the
//! file in its database (it survives pmxcfs restarts) and orders writes cluster-wide (every
//! node reads the same counter). The value is 20 decimal digits and a newline, rewritten in
//! place at offset 0: one write, one cluster message per acquisition, never a moment with an
//! empty or half-written file (pmxcfs applies a write as one `memdb_write`). A file that is
//! missing or empty (a holder died between creating and writing it) counts as 0.
//!
//! What it does not cover: a holder stopped for longer than the TTL between reading and
//! writing the counter can write the same value as the holder that took the lock meanwhile;
//! the acquisition then fails (the lock was lost: fs.rs proves ownership after the write) and
//! its token is never handed out. Editing the file by hand can make tokens go back.

use super::fs::{self, errno, Bound};
use crate::{Error, ErrorKind, Result, Target};
use std::fs::{DirBuilder, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Width of the stored number: u64::MAX has 20 digits.
const WIDTH: usize = 20;
/// More than this in the file is not a counter of ours.
const MAX_READ: usize = 64;

/// Where the token of `name` lives.
pub fn path(token_dir: &Path, name: &str) -> PathBuf {
    token_dir.join(name)
}

fn corrupt(target: &Target, path: &Path, what: &str) -> Error {
    Error::new(
        ErrorKind::Internal,
        format!(
            "{target}: the fencing-token file {} {what}; it must hold one decimal number \
             (write the highest token handed out so far, or remove it to start again from 1)",
            path.display()
        ),
    )
}

/// Read, advance and store the counter of `target`'s name. Call only while holding the lock.
pub fn advance(target: &Target, token_dir: &Path, bound: &Bound) -> Result<u64> {
    let file = path(token_dir, target.name());
    let (dir, p) = (token_dir.to_path_buf(), file.clone());
    let r = fs::call(
        target,
        &file,
        "fencing token update",
        bound,
        move || -> io::Result<Step> {
            // priv/lockfn/tokens: made once per cluster (two cluster messages, first time).
            DirBuilder::new().recursive(true).mode(0o700).create(&dir)?;
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .mode(0o600)
                .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
                .open(&p)?;
            if !f.metadata()?.is_file() {
                return Ok(Step::NotAFile);
            }
            let mut buf = [0u8; MAX_READ];
            let mut n = 0;
            while n < buf.len() {
                match f.read_at(&mut buf[n..], n as u64)? {
                    0 => break,
                    k => n += k,
                }
            }
            if n == buf.len() {
                return Ok(Step::TooLong);
            }
            let text = std::str::from_utf8(&buf[..n]).map_err(|_| io::ErrorKind::InvalidData);
            let Ok(text) = text else {
                return Ok(Step::Garbage);
            };
            let text = text.trim();
            let last: u64 = if text.is_empty() {
                0
            } else {
                match text.parse() {
                    Ok(v) => v,
                    Err(_) => return Ok(Step::Garbage),
                }
            };
            let Some(next) = last.checked_add(1) else {
                return Ok(Step::Exhausted);
            };
            let data = format!("{next:0WIDTH$}\n");
            f.write_all_at(data.as_bytes(), 0)?;
            Ok(Step::Advanced(next))
        },
        |_| (),
    )?;
    match r {
        Ok(Step::Advanced(t)) => Ok(t),
        Ok(Step::NotAFile) => Err(corrupt(target, &file, "is not a regular file")),
        Ok(Step::TooLong) => Err(corrupt(target, &file, "is longer than a counter")),
        Ok(Step::Garbage) => Err(corrupt(target, &file, "does not hold a number")),
        Ok(Step::Exhausted) => Err(corrupt(target, &file, "is at the largest token")),
        Err(e) if errno(&e) == libc::ENOENT => Err(fs::not_online(target, token_dir)),
        Err(e) => Err(fs::os_error(
            target,
            "cannot update the fencing token",
            &file,
            e,
        )),
    }
}

/// The last token handed out for `name` (status), without changing it; None when unknown.
pub fn last(target: &Target, token_dir: &Path, bound: &Bound) -> Option<u64> {
    let p = path(token_dir, target.name());
    let r = fs::call(
        target,
        &p.clone(),
        "read",
        bound,
        move || {
            let f = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW | libc::O_NONBLOCK)
                .open(&p)?;
            let mut buf = [0u8; MAX_READ];
            let n = f.read_at(&mut buf, 0)?;
            Ok(String::from_utf8_lossy(&buf[..n])
                .trim()
                .parse::<u64>()
                .ok())
        },
        |_| (),
    );
    r.ok()?.ok()?
}

enum Step {
    Advanced(u64),
    NotAFile,
    TooLong,
    Garbage,
    Exhausted,
}
