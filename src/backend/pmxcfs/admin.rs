//! pmxcfs locks by name: status, list, gc, and the release or renewal of a persistent lock.

use super::config::{lock_dir, pmxcfs_dir, records_dir, PmxcfsConfig};
use super::fs::{self, Bound};
use super::orphan::{self, Orphan};
use super::{flock, held, records, token};
use crate::backend::{GcScope, HolderView, Status};
use crate::{Error, ErrorKind, Result, Target};
use std::path::Path;

pub(super) fn status(target: &Target) -> Result<Status> {
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

pub(super) fn list(prefix: &Target) -> Result<Vec<Status>> {
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
            match status(&t) {
                Ok(s) if s.held => out.push(s),
                Ok(_) => {} // released meanwhile
                Err(e) => return Err(e),
            }
        }
    }
    Ok(out)
}

pub(super) fn gc(scope: &GcScope) -> Result<u32> {
    let names = records::names()
        .map_err(|e| Error::os(format!("cannot read {}", records_dir().display()), e))?;
    let dir = pmxcfs_dir();
    let mut removed = 0;
    for name in names {
        if !name.starts_with(&scope.prefix)
            || crate::target::validate_name(&name, &name, false, crate::target::MAX_NAME).is_err()
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

pub(super) fn release_named(target: &Target, force: bool) -> Result<u32> {
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
    let rec = records::read(&dir, target.name()).filter(|r| r.may_describe(seen.mtime, cfg.ttl));
    if force {
        // Operator override: whoever holds it.
        fs::remove(target, &path, &bound)?;
        if let Some(r) = rec {
            records::remove_if(&dir, target.name(), |x| x.same_holder(&r.holder));
        }
        return Ok(1);
    }
    let rec = match rec {
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
        _ => {
            return Err(not_released(
                target,
                "it has no persistent holder of this node (a lock held by a running process \
                 is released by that process; --force takes it anyway)",
            ))
        }
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

pub(super) fn update_named(target: &Target) -> Result<()> {
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

fn not_released(target: &Target, why: &str) -> Error {
    Error::new(
        ErrorKind::NotHeld,
        format!("{target} was not released: {why}"),
    )
}

/// gc of one name: with the node-local flock free, remove a dead holder's orphan directory
/// (with pmxcfs's confirmation) and our stale record. Returns how many items were removed.
pub(super) fn gc_one(target: &Target, dir: &Path) -> Result<u32> {
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
    let r = gc_flocked(target, &cfg, dir, &rec, &bound);
    flock::unlock_flock(&file);
    r
}

/// gc of one name while holding its node-local flock: the orphan directory with pmxcfs's
/// confirmation, or our record of an incarnation that is gone.
fn gc_flocked(
    target: &Target,
    cfg: &PmxcfsConfig,
    dir: &Path,
    rec: &records::NodeRecord,
    bound: &Bound,
) -> Result<u32> {
    let name = target.name();
    let path = dir.join(name);
    let seen = fs::look(target, &path, bound)?;
    if let Orphan::Dead(m) = orphan::classify(cfg, Some(rec), seen) {
        return Ok(u32::from(orphan::take_back(target, cfg, dir, m, bound)?));
    }
    // A record whose incarnation is gone, of a holder that is dead or persistent: stale.
    let gone = seen.is_none_or(|s| !rec.may_describe(s.mtime, cfg.ttl));
    let ended = rec.holder.persist || orphan::holder_is_dead(&rec.holder);
    if gone && ended {
        records::remove_if(dir, name, |r| r.mtime == rec.mtime);
        return Ok(1);
    }
    Ok(0)
}
