//! A held pmxcfs lock: the directory incarnation we made (known by the mtime we last set),
//! its token, and the node-local flock kept until the directory is gone.
//!
//! Never touch a directory that is not ours: every refresh is the conditional one of fs.rs
//! (pmxcfs refuses it on another incarnation), the release removes the directory only after
//! such a refresh succeeded, and a loss is reported without touching anything.

use super::flock::NodeFlock;
use super::fs::{self, Bound};
use super::records::{self, NodeRecord};
use super::PmxcfsConfig;
use crate::backend::Held;
use crate::holder::HolderRecord;
use crate::{Error, ErrorKind, Result, Target};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Supervisors check (a local stat) at least this often that the directory is still ours.
const CHECK_INTERVAL: Duration = Duration::from_secs(5);

pub struct PmxcfsHeld {
    pub target: Target,
    pub cfg: PmxcfsConfig,
    pub dir: PathBuf,
    pub path: PathBuf,
    /// The mtime we last set on our incarnation (or pmxcfs gave it at mkdir).
    pub mtime: i64,
    pub record: HolderRecord,
    /// The node-local flock, held until the directory is removed (then unlocked).
    pub flock: Option<NodeFlock>,
}

pub fn lost(target: &Target, token: u64, why: &str) -> Error {
    Error::new(
        ErrorKind::Lost,
        format!("{target}: the lock (token {token}) was lost: {why}"),
    )
}

impl PmxcfsHeld {
    fn lost(&self, why: &str) -> Error {
        lost(&self.target, self.record.token, why)
    }

    /// The record of this holder as it stands now.
    fn node_record(&self) -> NodeRecord {
        NodeRecord::new(
            &self.dir,
            self.target.name(),
            self.mtime,
            self.record.clone(),
        )
    }

    /// A local look: is the directory there with the mtime we last set? (A stat may show an
    /// expired directory for about a second more; the refresh is the proof.)
    fn looks_ours(&self) -> Result<()> {
        match fs::look(&self.target, &self.path, &Bound::admin()?)? {
            Some(s) if s.mtime == self.mtime => Ok(()),
            Some(s) => Err(self.lost(&format!(
                "the directory changed under us (mtime {}, ours {}): it expired and was \
                 re-made, or someone else refreshed it",
                s.mtime, self.mtime
            ))),
            None => Err(self.lost(&format!(
                "the directory is gone (expired after {} s without refresh, or removed)",
                self.cfg.ttl.as_secs()
            ))),
        }
    }
}

impl Held for PmxcfsHeld {
    fn token(&self) -> u64 {
        self.record.token
    }

    fn record(&self) -> &HolderRecord {
        &self.record
    }

    fn update(&mut self) -> Result<()> {
        self.looks_ours()?;
        match fs::refresh_if_ours(
            &self.target,
            &self.cfg,
            &self.path,
            self.mtime,
            &Bound::admin()?,
        )? {
            Some(t) => {
                self.mtime = t;
                // Best effort: a stale record only delays a dead-holder takeover (the
                // record's mtime still falls in this incarnation's window until the next
                // refresh).
                let _ = records::write(&self.node_record());
                Ok(())
            }
            None => Err(self.lost(
                "pmxcfs refused the refresh: the directory is no longer ours (expired and \
                 re-made, removed, or made on another node)",
            )),
        }
    }

    fn check(&mut self) -> Result<()> {
        self.looks_ours()
    }

    fn check_interval(&self) -> Option<Duration> {
        Some(CHECK_INTERVAL.min(self.cfg.ttl / 4))
    }

    fn renew_interval(&self) -> Option<Duration> {
        // Half the TTL (60 s on pmxcfs), as Proxmox's cfs_lock does with its 60 s alarm.
        Some(self.cfg.ttl / 2)
    }

    fn release(&mut self) -> Result<()> {
        // The directory first, the flock after: a pmxlock that got the flock while our
        // directory still existed would "recover" (take over) it.
        let (dir, name, me) = (
            self.dir.clone(),
            self.target.name().to_string(),
            self.record.clone(),
        );
        let mtime = self.mtime;
        // A local look first: a directory that plainly is not ours is not even refreshed.
        let r = self.looks_ours().and_then(|()| {
            fs::remove_if_ours(
                &self.target,
                &self.cfg,
                &self.path,
                mtime,
                &Bound::admin()?,
                move || records::remove_if(&dir, &name, |r| r.same_holder(&me)),
            )
        });
        let r = match r {
            Ok(true) => Ok(()),
            Ok(false) => {
                records::remove_if(&self.dir, self.target.name(), |r| {
                    r.same_holder(&self.record)
                });
                Err(self.lost(
                    "at release the directory was no longer ours (expired and re-made, or \
                     removed); it was left alone",
                ))
            }
            Err(e) => {
                if e.kind() == ErrorKind::Lost {
                    records::remove_if(&self.dir, self.target.name(), |r| {
                        r.same_holder(&self.record)
                    });
                }
                Err(e)
            }
        };
        self.flock = None;
        r
    }

    fn detach(&mut self) -> Result<()> {
        // The directory and our record (persist) stay; the flock goes with this process.
        if !self.record.persist {
            self.record.persist = true;
            records::write(&self.node_record()).map_err(|e| {
                fs::os_error(
                    &self.target,
                    "cannot write the node-local holder record",
                    &super::records_dir().join(self.target.name()),
                    e,
                )
            })?;
        }
        self.flock = None;
        Ok(())
    }
}

/// Is an incarnation made or refreshed by a call that started at `since` still certainly
/// ours, without asking pmxcfs?
pub fn proven_young(since: Instant, ttl: Duration) -> bool {
    // pmxcfs cannot expire a lock less than its TTL after the start of the call that made or
    // refreshed it; one second of margin for whole-second rounding.
    since.elapsed() + Duration::from_secs(1) < ttl
}
