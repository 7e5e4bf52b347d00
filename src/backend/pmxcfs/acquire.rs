//! Taking a pmxcfs lock: the mkdir loop with its unlock requests (cfs_lock's), the token,
//! the conditional refresh that makes the directory provably ours, and the holder record.

use super::config::{busy_error, records_dir, PmxcfsConfig};
use super::fs::{self, Bound, Seen, UnlockAnswer};
use super::held::{self, PmxcfsHeld};
use super::orphan::{self, Orphan};
use super::records::{self, NodeRecord};
use super::{
    token, EXITING_POLL, EXITING_WATCH, MKDIR_EVERY, PMXCFS_LOCK_TTL, UNLOCK_REQUEST_EVERY,
};
use crate::backend::Wait;
use crate::holder::HolderRecord;
use crate::{Error, ErrorKind, Options, Result, Target};
use std::path::Path;
use std::time::Instant;

/// The directory we made: what pmxcfs showed right after, and when our mkdir started.
pub(super) struct Made {
    seen: Seen,
    started: Instant,
}

/// With the node-local flock held: take the directory.
///
/// Cadence while waiting: local checks (our record, a stat) on every round; at most one mkdir
/// per 250 ms and one utime (unlock request, or the conditional refresh that proves our
/// orphan) per second, the cluster-wide messages. No mkdir while the directory is known to be
/// our orphan.
pub(super) fn acquire_dir(
    target: &Target,
    cfg: &PmxcfsConfig,
    dir: &Path,
    wait: &Wait,
    bound: &Bound,
) -> Result<Made> {
    let path = dir.join(target.name());
    let start = Instant::now();
    let mut taken = false; // a mkdir said EEXIST
    let mut rounds = 0u32;
    let mut next_utime = start;
    let mut next_mkdir = start;
    // An orphan pmxcfs did not confirm (another incarnation) is waited for like any holder.
    let mut refused: Option<i64> = None;
    loop {
        rounds += 1;
        let rec = records::read(dir, target.name());
        let seen = fs::look(target, &path, bound)?;
        let orphan = match orphan::classify(cfg, rec.as_ref(), seen) {
            Orphan::Dead(m) if refused == Some(m) => Orphan::No,
            o => o,
        };
        let now = Instant::now();
        let mut may_mkdir = orphan == Orphan::No;
        match orphan {
            // Cadences count from the end of a call: the next one starts a full period after
            // the last one ended, however long it took.
            Orphan::Dead(m) if now >= next_utime => {
                may_mkdir = orphan::take_back(target, cfg, dir, m, bound)?;
                next_utime = Instant::now() + UNLOCK_REQUEST_EVERY;
                if !may_mkdir {
                    refused = Some(m);
                }
            }
            Orphan::No if taken && seen.is_some() && now >= next_utime => {
                // ExpiredAndDeleted: the mkdir below may succeed. Young or NotAnExpiry: the
                // mkdir below will most likely fail, and we wait on.
                let _: UnlockAnswer = fs::unlock_request(target, &path, bound)?;
                next_utime = Instant::now() + UNLOCK_REQUEST_EVERY;
            }
            _ => {}
        }
        if may_mkdir && Instant::now() >= next_mkdir {
            let started = Instant::now();
            if let Some(seen) = fs::make(target, dir, &path, bound)? {
                return Ok(Made { seen, started });
            }
            taken = true;
            // Try-once: a second attempt right after an unlock request, like pmxlock.
            next_mkdir = if wait.is_try_once() {
                Instant::now()
            } else {
                Instant::now() + MKDIR_EVERY
            };
        }
        let give_up = if wait.is_try_once() {
            rounds >= 2
        } else {
            wait.expired()
        };
        if give_up {
            let rec = records::read(dir, target.name());
            let seen = fs::look(target, &path, bound)?;
            return Err(busy_error(
                target,
                wait,
                &orphan::who_holds(cfg, rec.as_ref(), seen),
            ));
        }
        if wait.is_try_once() {
            continue;
        }
        let now = Instant::now();
        let until = if orphan == Orphan::Exiting && start.elapsed() < EXITING_WATCH {
            now + EXITING_POLL
        } else if next_mkdir > now {
            next_mkdir
        } else {
            // No mkdir this round (the directory is our orphan, still exiting or not yet
            // confirmed): look again at the mkdir cadence.
            now + MKDIR_EVERY
        };
        wait.pause(until - now)?;
    }
}

/// The lock directory is ours (just made): record it, take a token, and check it stayed ours
/// meanwhile. On failure, the directory is removed again.
pub(super) fn settle(
    target: &Target,
    cfg: &PmxcfsConfig,
    dir: &Path,
    made: &Made,
    mut holder: HolderRecord,
    bound: &Bound,
) -> Result<PmxcfsHeld> {
    let path = dir.join(target.name());
    let mut mtime = made.seen.mtime;
    holder.since = crate::holder::now_secs();
    let me = holder.clone();
    let give_back = |mtime: i64, e: Error| -> Error {
        let (d, n, me) = (dir.to_path_buf(), target.name().to_string(), me.clone());
        let _ = fs::remove_if_ours(target, cfg, &path, mtime, &Bound::cleanup(), move || {
            records::remove_if(&d, &n, |r| r.same_holder(&me))
        });
        e
    };
    // The record first (local, microseconds): from here on a crash leaves an orphan that a
    // waiter can prove and take over at once.
    let write = |mtime: i64, h: &HolderRecord| {
        records::write(&NodeRecord::new(dir, target.name(), mtime, h.clone())).map_err(|e| {
            fs::os_error(
                target,
                "cannot write the node-local holder record",
                &records_dir().join(target.name()),
                e,
            )
        })
    };
    if let Err(e) = write(mtime, &holder) {
        return Err(give_back(mtime, e));
    }
    let token = match token::advance(target, &cfg.token_dir, bound) {
        Ok(t) => t,
        Err(e) => return Err(give_back(mtime, e)),
    };
    // Was the directory ours all along while we took the token? Certain within the TTL of
    // its creation; later (this process was stopped) only pmxcfs can say.
    if !held::proven_young(made.started, cfg.ttl) {
        match fs::refresh_if_ours(target, cfg, &path, mtime, bound)? {
            Some(t) => mtime = t,
            None => {
                records::remove_if(dir, target.name(), |r| r.same_holder(&holder));
                return Err(held::lost(
                    target,
                    token,
                    "the directory expired while the token was taken (this process was stopped or pmxcfs stalled); it was left alone",
                ));
            }
        }
    }
    holder.token = token;
    if let Err(e) = write(mtime, &holder) {
        return Err(give_back(mtime, e));
    }
    Ok(PmxcfsHeld {
        target: target.clone(),
        cfg: cfg.clone(),
        dir: dir.to_path_buf(),
        path,
        mtime,
        record: holder,
        flock: None,
    })
}

pub(super) fn check_options(target: &Target, opts: &Options) -> Result<()> {
    if opts.shared || opts.limit > 1 {
        return Err(Error::new(
            ErrorKind::Invalid,
            format!(
                "{target}: pmxcfs locks are exclusive (no --shared, no --limit > 1); use zk: \
                 or consul: for those"
            ),
        ));
    }
    if let Some(ttl) = opts.ttl {
        if ttl != PMXCFS_LOCK_TTL {
            return Err(Error::new(
                ErrorKind::Invalid,
                format!(
                    "{target}: pmxcfs fixes the lock lifetime at 120 s after the last refresh; \
                     a ttl of {:.1} s cannot be honoured (leave it unset)",
                    ttl.as_secs_f64()
                ),
            ));
        }
    }
    Ok(())
}
