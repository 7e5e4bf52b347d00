//! Orphans: a lock directory left by a process of ours that was killed while holding it.
//!
//! A waiter takes one over only with proof: our node-local record says a process of this host
//! and boot made it, that process is dead (or a zombie: its files, the flock among them, are
//! closed), and pmxcfs accepts a conditional refresh for the mtime the record holds — which it
//! does only on that very incarnation (fs.rs). Then the waiter removes it and takes the lock
//! anew (a new mtime, a new token). Directories made by cfs_lock, pmxlock, another node, a
//! live process, or a process that died before it could write its record, are never taken
//! over: they are waited for, and expire through unlock requests as cfs_lock's do.

use super::fs::{self, Bound, Seen};
use super::records::{self, NodeRecord};
use super::PmxcfsConfig;
use crate::holder::{HolderRecord, Liveness};
use crate::{Result, Target};
use std::path::Path;

/// What our node-local record says about the lock directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Orphan {
    /// Not ours, or no record, or a persistent lock: never taken over.
    No,
    /// Ours (by the record's mtime, a hint until proven), made by a process of this host and
    /// boot that is dead (or a zombie). Carries the recorded mtime.
    Dead(i64),
    /// Ours, but its process still shows in /proc. Seen by a waiter that holds the node-local
    /// flock, this is a holder in the middle of exiting (its files, the flock among them, are
    /// closed before it turns zombie): look again soon.
    Exiting,
}

/// Is this holder provably dead: of this host and boot, and its process gone, reused, or a
/// zombie (exited, not yet reaped: its files, the flock among them, are already closed).
pub fn holder_is_dead(h: &HolderRecord) -> bool {
    h.liveness() == Liveness::Dead
}

/// Is the lock directory an orphan of ours? Local checks only (a file read, /proc, a stat):
/// no cluster message.
pub fn classify(cfg: &PmxcfsConfig, rec: Option<&NodeRecord>, seen: Option<Seen>) -> Orphan {
    let (Some(rec), Some(seen)) = (rec, seen) else {
        return Orphan::No;
    };
    if rec.holder.persist || !rec.holder.is_this_boot() || !rec.may_describe(seen.mtime, cfg.ttl) {
        return Orphan::No;
    }
    if holder_is_dead(&rec.holder) {
        Orphan::Dead(rec.mtime)
    } else {
        Orphan::Exiting
    }
}

/// Remove our dead holder's directory, last set to `mtime`, if pmxcfs confirms it is that
/// incarnation (conditional refresh, then rmdir: two cluster messages), and its record.
/// Returns true when it was removed. Call only while holding the node-local flock of the
/// name (or from gc, which takes it).
pub fn take_back(
    target: &Target,
    cfg: &PmxcfsConfig,
    dir: &Path,
    mtime: i64,
    bound: &Bound,
) -> Result<bool> {
    let path = dir.join(target.name());
    let (d, name) = (dir.to_path_buf(), target.name().to_string());
    fs::remove_if_ours(target, cfg, &path, mtime, bound, move || {
        records::remove_if(&d, &name, |r| r.mtime == mtime)
    })
}

/// Who holds the directory, as far as this node knows.
pub fn who_holds(cfg: &PmxcfsConfig, rec: Option<&NodeRecord>, seen: Option<Seen>) -> String {
    match (seen, rec) {
        (None, _) => "it was just released".to_string(),
        (Some(s), Some(r)) if r.may_describe(s.mtime, cfg.ttl) => describe(&r.holder),
        (Some(_), _) => "held outside lockfn (by cfs_lock, pmxlock or another node)".to_string(),
    }
}

pub fn describe(h: &HolderRecord) -> String {
    let text = if h.holder.is_empty() {
        String::new()
    } else {
        format!(" ({})", h.holder)
    };
    format!("held by pid {} on {}{}", h.pid, h.host, text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn zombie_holder_is_dead() {
        let me = HolderRecord::for_self(None);
        assert!(!holder_is_dead(&me));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let mut r = HolderRecord::for_self(None);
        r.pid = child.id() as i32;
        r.start_time = crate::holder::process_start_time(r.pid).unwrap_or(0);
        // Not reaped yet: a zombie once it exited (bounded wait; no event tells a zombie).
        let mut dead = false;
        for _ in 0..500 {
            if holder_is_dead(&r) {
                dead = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(dead, "an exited, unreaped holder is dead");
        child.wait().unwrap();
    }

    #[test]
    fn only_a_dead_holder_of_the_same_incarnation_is_an_orphan() {
        let cfg = PmxcfsConfig {
            ttl: Duration::from_secs(120),
            token_dir: "/nonexistent".into(),
        };
        let mut dead = HolderRecord::for_self(None);
        dead.pid = i32::MAX; // no such process
        let rec = NodeRecord::new(Path::new("/x"), "n", 1000, dead);
        let seen = |mtime| Some(Seen { mtime, ino: 4 });
        assert_eq!(classify(&cfg, Some(&rec), seen(1000)), Orphan::Dead(1000));
        // Refreshed by the holder after it last wrote its record: still in the window.
        assert_eq!(classify(&cfg, Some(&rec), seen(1060)), Orphan::Dead(1000));
        // A later incarnation (made after ours expired): never ours, whatever its st_ino.
        assert_eq!(classify(&cfg, Some(&rec), seen(1121)), Orphan::No);
        assert_eq!(classify(&cfg, Some(&rec), seen(999)), Orphan::No);
        assert_eq!(classify(&cfg, Some(&rec), None), Orphan::No);
        assert_eq!(classify(&cfg, None, seen(1000)), Orphan::No);
        let mut persist = rec.clone();
        persist.holder.persist = true;
        assert_eq!(classify(&cfg, Some(&persist), seen(1000)), Orphan::No);
        let live = NodeRecord::new(Path::new("/x"), "n", 1000, HolderRecord::for_self(None));
        assert_eq!(classify(&cfg, Some(&live), seen(1000)), Orphan::Exiting);
    }
}
