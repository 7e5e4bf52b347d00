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

mod flock;
mod fs;
mod held;
mod orphan;
mod records;
mod token;

use super::{GcScope, Held, HolderView, Lifetime, Status, Wait};
use crate::holder::HolderRecord;
use crate::target::Located;
use crate::{Error, ErrorKind, Options, Result, Target};
use fs::{Bound, Seen, UnlockAnswer};
use held::PmxcfsHeld;
use orphan::Orphan;
use records::NodeRecord;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

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

// ---------------------------------------------------------------------------------------------
// Configuration

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
fn pve_is_mounted() -> bool {
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
struct Place {
    dir: PathBuf,
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
    fn for_dir(target: &Target, dir: &Path) -> Result<PmxcfsConfig> {
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

fn lock_dir(target: &Target) -> PathBuf {
    match target.place::<Place>() {
        Ok(p) => p.dir.clone(),
        Err(_) => pmxcfs_dir(),
    }
}

/// Proxmox's timeout text (`cfs-lock 'NAME' error: got lock request timeout`), so logs read
/// the same as cfs_lock's, plus who holds the lock when we know.
fn busy_error(target: &Target, wait: &Wait, who: &str) -> Error {
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

// ---------------------------------------------------------------------------------------------
// Acquire

/// The directory we made: what pmxcfs showed right after, and when our mkdir started.
struct Made {
    seen: Seen,
    started: Instant,
}

/// With the node-local flock held: take the directory.
///
/// Cadence while waiting: local checks (our record, a stat) on every round; at most one mkdir
/// per 250 ms and one utime (unlock request, or the conditional refresh that proves our
/// orphan) per second, the cluster-wide messages. No mkdir while the directory is known to be
/// our orphan.
fn acquire_dir(
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
fn settle(
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
        let dir = lock_dir(target);
        let cfg = PmxcfsConfig::for_dir(target, &dir)?;
        let bound = Bound::admin()?;
        let path = dir.join(target.name());
        let mut st = Status::new(target);
        st.limit = Some(1);
        let seen = fs::look(target, &path, &bound)?;
        if seen.is_none() && fs::look(target, &dir, &bound)?.is_none() {
            return Err(fs::not_online(target, &dir));
        }
        if let Some(s) = seen {
            st.held = true;
            st.available = Some(0);
            // libfuse's node number on pmxcfs: for people, not an identity.
            st.details.insert("ino".into(), s.ino.into());
            st.details.insert("mtime".into(), s.mtime.into());
            // The age as seen here: since creation or the last refresh (pmxcfs sets mtime).
            // A plain directory takes unlock requests as utime(0, 0): mtime 0, age unknown.
            if s.mtime > 0 {
                let age = (crate::holder::now_secs() - s.mtime as f64).max(0.0);
                st.details
                    .insert("age_s".into(), ((age * 10.0).round() / 10.0).into());
            }
            match records::read(&dir, target.name()) {
                Some(r) if r.may_describe(s.mtime, cfg.ttl) => {
                    let mut view = HolderView::from(r.holder);
                    if view.record.persist && s.mtime > 0 {
                        // pmxcfs expires it `ttl` after the last refresh (which set mtime).
                        view.expires = Some((s.mtime as u64 + cfg.ttl.as_secs() + 1) as f64);
                    }
                    st.holders.push(view)
                }
                _ => {
                    st.details.insert(
                        "holder".into(),
                        "unknown: made by cfs_lock, pmxlock, another node, or a lockfn process whose record is gone"
                            .into(),
                    );
                }
            }
        } else {
            st.available = Some(1);
        }
        if let Some(t) = token::last(target, &cfg.token_dir, &bound) {
            st.details.insert("last_token".into(), t.into());
        }
        if let Ok(f) = std::fs::File::open(flock::flock_path(target.name())) {
            if let Some(pid) = flock::flock_holder_pid(&f) {
                st.details.insert("node_flock_pid".into(), pid.into());
            }
        }
        Ok(st)
    }

    fn list(&self, prefix: &Target) -> Result<Vec<Status>> {
        let dir = lock_dir(prefix);
        let d = dir.clone();
        let names = fs::call(
            prefix,
            &dir,
            "readdir",
            &Bound::admin()?,
            move || -> std::io::Result<Vec<String>> {
                Ok(std::fs::read_dir(&d)?
                    .filter_map(|e| e.ok())
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect())
            },
            |_| (),
        )?;
        let mut names: Vec<String> = match names {
            Ok(n) => n,
            Err(e) if fs::errno(&e) == libc::ENOENT => return Err(fs::not_online(prefix, &dir)),
            Err(e) => return Err(fs::os_error(prefix, "cannot read", &dir, e)),
        };
        names.retain(|n| n.starts_with(prefix.name()));
        names.sort();
        let mut out = Vec::new();
        for name in names {
            if let Ok(t) = prefix.with_name(&name) {
                match self.status(&t) {
                    Ok(s) if s.held => out.push(s),
                    Ok(_) => {} // released meanwhile
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(out)
    }

    fn gc(&self, scope: &GcScope) -> Result<u32> {
        let names = records::names()
            .map_err(|e| Error::os(format!("cannot read {}", records_dir().display()), e))?;
        let dir = pmxcfs_dir();
        let mut removed = 0;
        for name in names {
            if !name.starts_with(&scope.prefix)
                || crate::target::validate_name(&name, &name, false, crate::target::MAX_NAME)
                    .is_err()
            {
                continue;
            }
            let Ok(target) = Target::parse(&format!("pmxcfs:{name}")) else {
                continue;
            };
            removed += gc_one(&target, &dir)?;
        }
        Ok(removed)
    }

    fn release_named(&self, target: &Target, force: bool) -> Result<u32> {
        let dir = lock_dir(target);
        let cfg = PmxcfsConfig::for_dir(target, &dir)?;
        let bound = Bound::admin()?;
        fs::check_lock_dir(target, &dir, &bound)?;
        let path = dir.join(target.name());
        let Some(seen) = fs::look(target, &path, &bound)? else {
            return Err(Error::new(
                ErrorKind::NotHeld,
                format!("{target} is not held (no directory {})", path.display()),
            ));
        };
        let rec =
            records::read(&dir, target.name()).filter(|r| r.may_describe(seen.mtime, cfg.ttl));
        if force {
            // Operator override: whoever holds it.
            fs::remove(target, &path, &bound)?;
            if let Some(r) = rec {
                records::remove_if(&dir, target.name(), |x| x.same_holder(&r.holder));
            }
            return Ok(1);
        }
        let rec =
            match rec {
                Some(r) if r.holder.persist && r.holder.is_this_boot() => r,
                // A dead holder's orphan: only with the node-local flock, so that we never race a
                // same-node waiter recovering it (it holds the flock while doing so).
                Some(r) if orphan::holder_is_dead(&r.holder) => {
                    return match gc_one(target, &dir)? {
                        0 => Err(not_released(
                            target,
                            "its holder's waiters are recovering it",
                        )),
                        n => Ok(n.min(1)),
                    }
                }
                _ => return Err(not_released(
                    target,
                    "it has no persistent holder of this node (a lock held by a running process \
                     is released by that process; --force takes it anyway)",
                )),
            };
        let (d, n, m) = (dir.clone(), target.name().to_string(), rec.mtime);
        if !fs::remove_if_ours(target, &cfg, &path, rec.mtime, &bound, move || {
            records::remove_if(&d, &n, |r| r.mtime == m)
        })? {
            return Err(not_released(
                target,
                "it expired or changed hands meanwhile (left alone)",
            ));
        }
        Ok(1)
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
        let dir = lock_dir(target);
        let cfg = PmxcfsConfig::for_dir(target, &dir)?;
        let bound = Bound::admin()?;
        fs::check_lock_dir(target, &dir, &bound)?;
        let path = dir.join(target.name());
        let mut rec = records::read(&dir, target.name())
            .filter(|r| r.holder.persist && r.holder.is_this_boot())
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::NotHeld,
                    format!("{target} has no persistent holder on this node to update"),
                )
            })?;
        match fs::refresh_if_ours(target, &cfg, &path, rec.mtime, &bound)? {
            Some(t) => {
                rec.mtime = t;
                rec.refreshed = crate::holder::now_secs();
                records::write(&rec).map_err(|e| {
                    fs::os_error(
                        target,
                        "cannot write the node-local holder record",
                        &records_dir().join(target.name()),
                        e,
                    )
                })
            }
            None => Err(held::lost(
                target,
                rec.holder.token,
                "pmxcfs refused the refresh: the directory is gone or no longer ours (expired \
                 and re-made, or removed)",
            )),
        }
    }
}

fn not_released(target: &Target, why: &str) -> Error {
    Error::new(
        ErrorKind::NotHeld,
        format!("{target} was not released: {why}"),
    )
}

fn check_options(target: &Target, opts: &Options) -> Result<()> {
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

/// gc of one name: with the node-local flock free, remove a dead holder's orphan directory
/// (with pmxcfs's confirmation) and our stale record. Returns how many items were removed.
fn gc_one(target: &Target, dir: &Path) -> Result<u32> {
    let cfg = PmxcfsConfig::for_dir(target, dir)?;
    let bound = Bound::admin()?;
    let name = target.name();
    let Some(rec) = records::read(dir, name) else {
        return Ok(0);
    };
    let fpath = flock::flock_path(name);
    let Ok(file) = flock::open_flock_file(&fpath) else {
        return Ok(0);
    };
    if !flock::try_flock(&file).unwrap_or(false) || !flock::still_linked(&file, &fpath) {
        return Ok(0); // a process of this node holds or waits for it: its business
    }
    let path = dir.join(name);
    let r = (|| -> Result<u32> {
        let seen = fs::look(target, &path, &bound)?;
        if let Orphan::Dead(m) = orphan::classify(&cfg, Some(&rec), seen) {
            return Ok(u32::from(orphan::take_back(target, &cfg, dir, m, &bound)?));
        }
        // A record whose incarnation is gone, of a holder that is dead or persistent: stale.
        let gone = seen.is_none_or(|s| !rec.may_describe(s.mtime, cfg.ttl));
        let ended = rec.holder.persist || orphan::holder_is_dead(&rec.holder);
        if gone && ended {
            records::remove_if(dir, name, |r| r.mtime == rec.mtime);
            return Ok(1);
        }
        Ok(0)
    })();
    flock::unlock_flock(&file);
    r
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

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
