//! The pmxcfs backend: a Proxmox cluster lock, interoperable with Proxmox's own `cfs_lock`
//! (PVE::Cluster) and with pmxlock.
//!
//! A lock `pmxcfs:NAME` is two locks taken in this order:
//! 1. the node-local flock(2) on `/run/lock/pmxlock/NAME` (flock.rs) — pmxlock's file, so
//!    lockfn and pmxlock processes of one node queue on it and a same-node release is seen at
//!    once;
//! 2. the cluster-wide directory `/etc/pve/priv/lock/NAME`: `mkdir` takes it, `rmdir` gives it
//!    back (always before the flock is let go, or pmxlock would "recover" our live directory).
//!
//! What pmxcfs does with such a directory (shared/PMXCFS.md, pve-cluster's memdb.c):
//! - it expires 120 s after creation or its last refresh, but only on request: `utime(0, 0)`
//!   (the "unlock request") fails with EACCES while the lock is young, and once it is expired
//!   deletes it and fails with ENOENT;
//! - `utime(t, t)` with `t` at least the current mtime refreshes it (EACCES otherwise, and from
//!   another node than the one that made it);
//! - every mkdir/rmdir/utime/write is a cluster-wide message (stat and readdir are local), so
//!   a waiter makes at most 4 mkdir attempts and 1 unlock request per second.
//!
//! Identity of a directory incarnation is its mtime, proven by a conditional refresh that
//! pmxcfs accepts only on that incarnation (fs.rs) — never `st_ino`, which the real pmxcfs
//! re-uses. Fencing tokens are a per-name counter in pmxcfs (token.rs). Dead holders of this
//! node are taken over only with that proof (orphan.rs). Every call on pmxcfs is bounded by
//! the caller's deadline (a frozen pmxcfs blocks every syscall on it).
//!
//! On a plain directory (`LOCKFN_PMXCFS_DIR` elsewhere), `utime(0, 0)` succeeds and merely
//! sets the times: that is NOT taken as an expiry (only ENOENT is), so a lock never expires
//! by itself there, and a refresh proves nothing: use the tests' emulator (tests/pmxcfs/).
//!
//! Limits, by construction:
//! - a holder killed between its mkdir and writing its record (a stat and a file write)
//!   leaves a directory nobody can prove is an orphan: it is waited for until pmxcfs expires
//!   it (120 s after creation, through the waiters' unlock requests), or `release --force`;
//! - a persistent lock (`lockfn acquire --persist`) no longer holds the node-local flock, so a
//!   same-node pmxlock would "recover" (take over) its directory, as pmxlock does with any
//!   directory whose flock is free; lockfn never does;
//! - no fairness across nodes (nor in cfs_lock): a waiter polls, a same-node waiter is woken.
//!
//! Paths can be moved: `LOCKFN_PMXCFS_DIR` (the lock directory), `LOCKFN_PMXLOCK_DIR` (the
//! flock directory), `LOCKFN_RUN_DIR` (our node-local records), `LOCKFN_PMXCFS_TOKEN_DIR`
//! (the token counters); `LOCKFN_PMXCFS_TTL` (1–120 s) shortens the lifetime lockfn assumes,
//! for tests against an emulator with a short expiry.

mod acquire;
mod admin;
mod config;
mod flock;
mod fs;
mod held;
mod orphan;
mod records;
mod token;

use acquire::{acquire_dir, check_options, settle};
use config::{busy_error, lock_dir, pve_is_mounted, Place};
pub(crate) use config::{flock_dir, pmxcfs_dir, records_dir, PmxcfsConfig};

use super::{GcScope, Held, Lifetime, Status, Wait};
use crate::holder::HolderRecord;
use crate::target::Located;
use crate::{Options, Result, Target};
use fs::Bound;
use std::time::Duration;

pub const DEFAULT_PMXCFS_DIR: &str = "/etc/pve/priv/lock";
pub const DEFAULT_PMXLOCK_DIR: &str = "/run/lock/pmxlock";
pub const DEFAULT_RUN_DIR: &str = "/run/lock/lockfn";
/// pmxcfs expires a lock this long after its creation or last refresh (fixed by pmxcfs:
/// `CFS_LOCK_TIMEOUT` in memdb.c).
pub const PMXCFS_LOCK_TTL: Duration = Duration::from_secs(120);
/// At most 4 mkdir attempts per second while waiting (cluster-wide messages).
const MKDIR_EVERY: Duration = Duration::from_millis(250);
/// At most 1 unlock request per second while waiting (cluster-wide messages).
const UNLOCK_REQUEST_EVERY: Duration = Duration::from_secs(1);
/// A holder of ours that is exiting (flock closed, not yet a zombie) is looked at this often…
const EXITING_POLL: Duration = Duration::from_millis(10);
/// …for this long after we got the flock (a process exits in milliseconds).
const EXITING_WATCH: Duration = Duration::from_secs(2);

pub struct PmxcfsBackend;

impl super::Backend for PmxcfsBackend {
    fn scheme(&self) -> &'static str {
        "pmxcfs"
    }

    fn bare_names(&self) -> super::BareNames {
        if pve_is_mounted() {
            super::BareNames::Here
        } else {
            super::BareNames::No
        }
    }

    fn is_local(&self) -> bool {
        // Only in what gc cleans: this node's records of dead local holders.
        true
    }

    fn locate(&self, _text: &str, name: &str) -> Result<Located> {
        let dir = pmxcfs_dir();
        let resource = dir.join(name).display().to_string();
        Ok(Located::named("pmxcfs", name, resource, Place { dir }))
    }

    fn acquire(&self, target: &Target, opts: &Options, wait: &Wait) -> Result<Box<dyn Held>> {
        check_options(target, opts)?;
        let dir = lock_dir(target);
        let cfg = PmxcfsConfig::for_dir(target, &dir)?;
        let bound = Bound::for_wait(wait);
        fs::check_lock_dir(target, &dir, &bound)?;
        let flock = flock::acquire(target, wait, |pid| {
            let who = match (records::read(&dir, target.name()), pid) {
                (Some(r), _) => orphan::describe(&r.holder),
                (None, Some(pid)) => format!(
                    "held on this node by pid {pid} (node-local lock {})",
                    flock::flock_path(target.name()).display()
                ),
                (None, None) => format!(
                    "held on this node (node-local lock {})",
                    flock::flock_path(target.name()).display()
                ),
            };
            busy_error(target, wait, &who)
        })?;
        // From here on, dropping `flock` (any error) lets the next same-node waiter in.
        let mut holder = HolderRecord::for_self(opts.holder.as_deref());
        holder.persist = opts.persist;
        let made = acquire_dir(target, &cfg, &dir, wait, &bound)?;
        let mut held = settle(target, &cfg, &dir, &made, holder, &bound)?;
        held.flock = Some(flock);
        Ok(Box::new(held))
    }

    fn status(&self, target: &Target) -> Result<Status> {
        admin::status(target)
    }

    fn list(&self, prefix: &Target) -> Result<Vec<Status>> {
        admin::list(prefix)
    }

    fn gc(&self, scope: &GcScope) -> Result<u32> {
        admin::gc(scope)
    }

    fn release_named(&self, target: &Target, force: bool) -> Result<u32> {
        admin::release_named(target, force)
    }

    fn persistent_lifetime(&self, target: &Target, _opts: &Options) -> Lifetime {
        let ttl = PmxcfsConfig::for_dir(target, &lock_dir(target))
            .map(|c| c.ttl)
            .unwrap_or(PMXCFS_LOCK_TTL);
        Lifetime::expiring(
            ttl,
            format!(
                "{} s after its last refresh (pmxcfs expires every lock then): renew it with \
                 `lockfn update {target}` at least every {} s, or leave `lockfn keep` \
                 behind (acquire --keep); or when released (lockfn release)",
                ttl.as_secs(),
                ttl.as_secs() / 2
            ),
        )
    }

    fn update_named(&self, target: &Target) -> Result<()> {
        admin::update_named(target)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::fs::UnlockAnswer;
    use super::*;
    use std::path::{Path, PathBuf};

    /// A unique directory under /dev/shm for a unit test.
    pub fn tmp(name: &str) -> PathBuf {
        let d = PathBuf::from(format!(
            "/dev/shm/lockfn-pmxcfs-unit-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn unlock_request_answers_on_a_plain_directory() {
        let d = tmp("unlock");
        let p = d.join("x");
        let t = Target::parse("pmxcfs:x").unwrap();
        let b = Bound::admin().unwrap();
        assert_eq!(
            fs::unlock_request(&t, &p, &b).unwrap(),
            UnlockAnswer::ExpiredAndDeleted
        );
        std::fs::create_dir(&p).unwrap();
        // A plain directory accepts utime(0, 0): not an expiry, and it is still there.
        assert_eq!(
            fs::unlock_request(&t, &p, &b).unwrap(),
            UnlockAnswer::NotAnExpiry
        );
        assert!(p.is_dir());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn ttl_knob_is_bounded_by_pmxcfs_own() {
        let t = Target::parse("pmxcfs:x").unwrap();
        let dir = Path::new("/etc/pve/priv/lock");
        let c = PmxcfsConfig::for_dir(&t, dir).unwrap();
        assert_eq!(c.token_dir, Path::new("/etc/pve/priv/lockfn/tokens"));
        if std::env::var_os("LOCKFN_PMXCFS_TTL").is_none() {
            assert_eq!(c.ttl, PMXCFS_LOCK_TTL);
        }
    }
}
