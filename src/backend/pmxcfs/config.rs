//! Where pmxcfs locks live and what lockfn assumes about the pmxcfs it talks to: the
//! directories (`LOCKFN_PMXCFS_DIR`, `LOCKFN_PMXLOCK_DIR`, `LOCKFN_RUN_DIR`), the lock
//! lifetime (`LOCKFN_PMXCFS_TTL`) and the token directory (`LOCKFN_PMXCFS_TOKEN_DIR`).

use super::{fs, DEFAULT_PMXCFS_DIR, DEFAULT_PMXLOCK_DIR, DEFAULT_RUN_DIR, PMXCFS_LOCK_TTL};
use crate::backend::Wait;
use crate::{Error, ErrorKind, Result, Target};
use std::path::{Path, PathBuf};
use std::time::Duration;

fn env_dir(var: &str, default: &str) -> PathBuf {
    match std::env::var_os(var) {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => PathBuf::from(default),
    }
}

/// The `priv/lock` directory: `LOCKFN_PMXCFS_DIR` or `/etc/pve/priv/lock`.
pub fn pmxcfs_dir() -> PathBuf {
    env_dir("LOCKFN_PMXCFS_DIR", DEFAULT_PMXCFS_DIR)
}

/// Is `/etc/pve` a pmxcfs (FUSE) mount? Read from /proc/self/mountinfo, no blocking stat.
pub(super) fn pve_is_mounted() -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|m| {
            m.lines().any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.get(4) == Some(&"/etc/pve") && l.contains(" - fuse")
            })
        })
        .unwrap_or(false)
}

/// Where a `pmxcfs:NAME` lock lives: the `priv/lock` directory read when the target was made.
pub(super) struct Place {
    pub dir: PathBuf,
}

/// The directory of node-local flock files (pmxlock's).
pub fn flock_dir() -> PathBuf {
    env_dir("LOCKFN_PMXLOCK_DIR", DEFAULT_PMXLOCK_DIR)
}

/// The directory of our node-local holder records.
pub fn records_dir() -> PathBuf {
    env_dir("LOCKFN_RUN_DIR", DEFAULT_RUN_DIR).join("pmxcfs")
}

/// What the backend assumes about the pmxcfs it talks to.
#[derive(Debug, Clone)]
pub struct PmxcfsConfig {
    /// The lock lifetime: 120 s, or shorter for an emulator (`LOCKFN_PMXCFS_TTL`). Never
    /// longer: the proofs of fs.rs hold for any value up to pmxcfs's own.
    pub ttl: Duration,
    /// Where the fencing-token counters live (in pmxcfs, beside `priv/lock`).
    pub token_dir: PathBuf,
}

impl PmxcfsConfig {
    pub(super) fn for_dir(target: &Target, dir: &Path) -> Result<PmxcfsConfig> {
        let ttl = match std::env::var("LOCKFN_PMXCFS_TTL") {
            Err(std::env::VarError::NotPresent) => PMXCFS_LOCK_TTL,
            Ok(v) if v.is_empty() => PMXCFS_LOCK_TTL,
            Ok(v) => match v.trim().parse::<u64>() {
                Ok(s) if (1..=PMXCFS_LOCK_TTL.as_secs()).contains(&s) => Duration::from_secs(s),
                _ => {
                    return Err(Error::new(
                        ErrorKind::Invalid,
                        format!(
                            "{target}: LOCKFN_PMXCFS_TTL must be a whole number of seconds from 1 to 120 (pmxcfs expires locks after 120 s; a shorter value is for test emulators)"
                        ),
                    ))
                }
            },
            Err(_) => {
                return Err(Error::new(
                    ErrorKind::Invalid,
                    format!("{target}: LOCKFN_PMXCFS_TTL is not valid UTF-8"),
                ))
            }
        };
        let token_dir = match std::env::var_os("LOCKFN_PMXCFS_TOKEN_DIR") {
            Some(v) if !v.is_empty() => PathBuf::from(v),
            _ => fs::beside(dir, "lockfn/tokens"),
        };
        Ok(PmxcfsConfig { ttl, token_dir })
    }
}

pub(super) fn lock_dir(target: &Target) -> PathBuf {
    match target.place::<Place>() {
        Ok(p) => p.dir.clone(),
        Err(_) => pmxcfs_dir(),
    }
}

/// Proxmox's timeout text (`cfs-lock 'NAME' error: got lock request timeout`), so logs read
/// the same as cfs_lock's, plus who holds the lock when we know.
pub(super) fn busy_error(target: &Target, wait: &Wait, who: &str) -> Error {
    let name = target.name();
    let msg = if wait.is_try_once() {
        format!("cfs-lock '{name}' error: lock is busy: {target} {who}")
    } else {
        format!(
            "cfs-lock '{name}' error: got lock request timeout (waited {:.1} s for {target}, {who})",
            wait.elapsed().as_secs_f64()
        )
    };
    Error::new(ErrorKind::Busy, msg)
}
