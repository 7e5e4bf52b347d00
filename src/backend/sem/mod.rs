//! The sem backend: the POSIX named semaphore `/NAME` (value = limit), shared with
//! resourcelock and posix_ipc, plus our holder table `/dev/shm/lockfn@table.NAME`.
//!
//! Rooms: `shm` opens, checks and creates the files (whose files are trusted); `posix` is the
//! semaphore; `table` the holder records in shared memory under a robust mutex; `pair` a
//! name's two files opened together; `pool` pairs kept open between acquisitions; `wait` the
//! waiter and its dead-holder watcher; `held` a held slot; `tokens` the token floor kept
//! across gc.
//!
//! An uncontended acquisition through a pooled pair is one critical section of the table's
//! mutex (is the pair current? sem_trywait, claim a slot), a release another (free the slot,
//! sem_post): atomics only, no syscall.

mod held;
mod pair;
mod pool;
mod posix;
mod shm;
mod table;
mod tokens;
mod wait;

pub(crate) use pool::{forget_pool, Pool, POOL};

use super::{GcScope, Held, HolderView, Status, Wait};
use crate::holder::own_process;
use crate::{Error, ErrorKind, Options, Result, Target};
use held::SemHeld;
use pair::{Pair, MAX_REOPEN};
use posix::Sem;
use table::{Locked, NewHolder, Table, MAX_SLOTS, RECORD_PREFIX};

pub struct SemBackend;

/// What one attempt at a pair gave.
enum Attempt {
    Held(Box<dyn Held>),
    /// Busy; the first holder (for the message).
    Busy(Box<Pair>, Option<crate::holder::HolderRecord>),
    /// The pair is not the lock any more: open again.
    Stale,
}

fn os_err(target: &Target, what: &str, e: std::io::Error) -> Error {
    Error::os(format!("{target}: {what}"), e)
}

/// An `EACCES` on another user's files says what to do.
fn with_hint(e: Error) -> Error {
    if e.kind() == ErrorKind::Permission && e.message().contains("Permission denied") {
        let msg = format!(
            "{} (the semaphore belongs to another user; see --mode, or run as that user)",
            e.message()
        );
        return Error::new(ErrorKind::Permission, msg);
    }
    e
}

fn check_options(target: &Target, opts: &Options) -> Result<()> {
    if opts.shared {
        return Err(Error::new(
            ErrorKind::Invalid,
            format!(
                "{target}: shared (read) locks are not available on sem: (a POSIX semaphore \
                 has no reader/writer mode); use --limit N, or zk:"
            ),
        ));
    }
    if opts.limit > MAX_SLOTS {
        return Err(Error::new(
            ErrorKind::Invalid,
            format!(
                "{target}: limit {} is above {MAX_SLOTS}, the most holders sem: records",
                opts.limit
            ),
        ));
    }
    Ok(())
}

fn check_limit(target: &Target, g: &Locked, opts: &Options) -> Result<()> {
    if g.limit() == opts.limit {
        return Ok(());
    }
    Err(Error::new(
        ErrorKind::Invalid,
        format!(
            "{target} exists with limit {}, asked for limit {} (all users of a semaphore must \
             agree on its limit)",
            g.limit(),
            opts.limit
        ),
    ))
}

impl SemBackend {
    /// One critical section: take a count if one is free and record it; when busy, give
    /// back dead holders' slots and try once more.
    fn attempt(target: &Target, opts: &Options, own: (i32, u64), pair: Pair) -> Result<Attempt> {
        let g = pair.table.lock()?;
        if !pair.current(&g) {
            return Ok(Attempt::Stale);
        }
        check_limit(target, &g, opts)?;
        let mut took = pair
            .sem
            .try_wait()
            .map_err(|e| os_err(target, "sem_trywait", e))?;
        // Plain /proc reads here: only a busy lock gets this far.
        if !took && g.recover_dead(&pair.sem, |h| h.liveness()) > 0 {
            took = pair
                .sem
                .try_wait()
                .map_err(|e| os_err(target, "sem_trywait", e))?;
        }
        if !took {
            let first = g.holders().into_iter().next().map(|(_, h)| h);
            drop(g);
            return Ok(Attempt::Busy(Box::new(pair), first));
        }
        let held = Self::record(target, opts, own, &g, &pair)?;
        drop(g);
        Ok(Attempt::Held(Box::new(SemHeld {
            target: target.clone(),
            slot: held.0,
            record: held.1,
            pair: Some(pair),
        })))
    }

    /// Record the count just taken (caller holds the mutex); on failure it is posted back.
    fn record(
        target: &Target,
        opts: &Options,
        own: (i32, u64),
        g: &Locked,
        pair: &Pair,
    ) -> Result<(usize, crate::holder::HolderRecord)> {
        let who = NewHolder {
            pid: own.0,
            start_time: own.1,
            text: opts.holder.as_deref(),
            persist: opts.persist,
        };
        // Every slot recorded and yet a count was free: a forced post gave one back.
        let claimed = g.claim(&who).or_else(|| {
            g.free_oldest();
            g.claim(&who)
        });
        let Some(held) = claimed else {
            let _ = pair.sem.post();
            return Err(Error::new(
                ErrorKind::Internal,
                format!("{target}: no free slot in {}", pair.table.path.display()),
            ));
        };
        g.reconcile(&pair.sem);
        Ok(held)
    }

    /// After a wait gave us a count: record it, unless the pair went stale meanwhile.
    fn record_woken(
        target: &Target,
        opts: &Options,
        own: (i32, u64),
        pair: Pair,
    ) -> Result<Option<Box<dyn Held>>> {
        let g = pair.table.lock()?;
        if !pair.current(&g) {
            let _ = pair.sem.post();
            return Ok(None);
        }
        let held = Self::record(target, opts, own, &g, &pair)?;
        drop(g);
        Ok(Some(Box::new(SemHeld {
            target: target.clone(),
            slot: held.0,
            record: held.1,
            pair: Some(pair),
        })))
    }

    fn open_pair(target: &Target, opts: &Options, pid: i32) -> Result<Pair> {
        match pool::take(target.name(), pid) {
            Some(p) => Ok(p),
            None => Pair::open(target, opts.mode, opts.limit).map_err(with_hint),
        }
    }

    /// Visit every `lockfn@table.NAME` in /dev/shm whose name starts with `prefix`.
    fn names(prefix: &str) -> Result<Vec<String>> {
        let dir = std::fs::read_dir(shm::SHM_DIR)
            .map_err(|e| Error::os(format!("cannot read {}", shm::SHM_DIR), e))?;
        let mut names: Vec<String> = dir
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter_map(|n| n.strip_prefix(RECORD_PREFIX).map(str::to_string))
            .filter(|n| {
                n.starts_with(prefix)
                    && crate::target::validate_name(n, n, false, crate::target::MAX_NAME).is_ok()
            })
            .collect();
        names.sort();
        Ok(names)
    }

    /// gc of one name: recover dead holders; remove the name if idle. Returns items removed.
    fn gc_one(name: &str) -> Result<u32> {
        let Some((table, fd)) = Table::open(name)? else {
            return Ok(0);
        };
        let g = table.lock()?;
        if shm::nlink(&fd) == 0 {
            return Ok(0); // removed by another gc meanwhile
        }
        if g.dead() {
            return Ok(pair::finish_removal(&g, name, &table) as u32);
        }
        let sem = Sem::open(name)?.filter(|s| s.ino() == g.sem_ino());
        let mut removed = match &sem {
            Some(sem) => g.recover_dead(sem, |h| h.liveness()),
            None => 0,
        };
        let idle = g.used() == 0 && sem.as_ref().is_none_or(|s| s.value() >= g.limit() as i64);
        if idle {
            // The token floor first: if it cannot be kept, neither is anything removed.
            tokens::raise(table.uid(), g.next_token())?;
            g.set_dead();
            if pair::finish_removal(&g, name, &table) {
                removed += 1;
            }
        }
        Ok(removed)
    }
}

impl super::Backend for SemBackend {
    fn scheme(&self) -> &'static str {
        "sem"
    }

    fn bare_names(&self) -> super::BareNames {
        super::BareNames::Always
    }

    fn is_local(&self) -> bool {
        true
    }

    fn locate(&self, _text: &str, name: &str) -> Result<crate::target::Located> {
        Ok(crate::target::Located::named(
            "sem",
            name,
            format!("/dev/shm/sem.{name}"),
            (),
        ))
    }

    fn persistent_lifetime(&self, _target: &Target, _opts: &Options) -> super::Lifetime {
        super::Lifetime::until_released(
            ", or when the host restarts (/dev/shm is memory); gc never removes it",
        )
    }

    fn acquire(&self, target: &Target, opts: &Options, wait: &Wait) -> Result<Box<dyn Held>> {
        check_options(target, opts)?;
        // One getpid(2) per acquisition (not in the vDSO): the pid and start time, once.
        let own = own_process();
        for _ in 0..MAX_REOPEN {
            let pair = Self::open_pair(target, opts, own.0)?;
            let (pair, first) = match Self::attempt(target, opts, own, pair)? {
                Attempt::Held(h) => return Ok(h),
                Attempt::Stale => continue,
                Attempt::Busy(pair, first) => (*pair, first),
            };
            if wait.is_try_once() || wait.expired() {
                return Err(wait.busy(target, first.as_ref()));
            }
            match wait::wait_for_count(target, &pair, wait)? {
                wait::Woke::Stale => continue,
                wait::Woke::Got => {
                    if let Some(h) = Self::record_woken(target, opts, own, pair)? {
                        return Ok(h);
                    }
                }
            }
        }
        Err(Error::new(
            ErrorKind::Internal,
            format!("{target}: the semaphore kept being removed while acquiring it (gc loop?)"),
        ))
    }

    fn status(&self, target: &Target) -> Result<Status> {
        let mut st = Status::new(target);
        let name = target.name();
        let sem = Sem::open(name).map_err(with_hint)?;
        let table = Table::open(name).map_err(with_hint)?;
        let (limit, holders, next_token) = match &table {
            Some((t, _)) => {
                let g = t.lock()?;
                let holders: Vec<_> = g.holders().into_iter().map(|(_, h)| h).collect();
                (g.limit(), holders, Some(g.next_token()))
            }
            None => (1, Vec::new(), None),
        };
        if let Some(sem) = &sem {
            let avail = sem.value();
            st.available = Some(avail);
            st.limit = Some(limit);
            let others = limit as i64 - avail - holders.len() as i64;
            if others > 0 {
                // Slots taken by peers (resourcelock) or by a process killed mid-acquire.
                st.details
                    .insert("unrecorded_holders".into(), others.into());
            }
            st.held = avail < limit as i64;
        }
        if let Some(t) = next_token {
            st.details.insert("next_token".into(), t.into());
        }
        st.held |= !holders.is_empty();
        st.holders = holders.into_iter().map(HolderView::from).collect();
        Ok(st)
    }

    fn list(&self, prefix: &Target) -> Result<Vec<Status>> {
        let mut out = Vec::new();
        for name in Self::names(prefix.name())? {
            let Ok(t) = prefix.with_name(&name) else {
                continue;
            };
            match self.status(&t) {
                Ok(st) => out.push(st),
                // Files we do not trust (another user's, damaged) are not ours to list.
                Err(e) if matches!(e.kind(), ErrorKind::Permission | ErrorKind::Invalid) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    fn gc(&self, scope: &GcScope) -> Result<u32> {
        let mut removed = 0;
        for name in Self::names(&scope.prefix)? {
            // Files we do not trust or cannot open are left alone (not ours to remove).
            match Self::gc_one(&name) {
                Ok(n) => removed += n,
                Err(e) if matches!(e.kind(), ErrorKind::Permission | ErrorKind::Invalid) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(removed)
    }

    fn release_named(&self, target: &Target, force: bool) -> Result<u32> {
        let name = target.name();
        let Some(sem) = Sem::open(name).map_err(with_hint)? else {
            return Err(Error::new(
                ErrorKind::NotHeld,
                format!("{target} is not held (no such semaphore)"),
            ));
        };
        let table = Table::open(name).map_err(with_hint)?;
        let g = match &table {
            Some((t, _)) => Some(t.lock()?),
            None => None,
        };
        let post = |n: &mut u32| -> Result<()> {
            sem.post().map_err(|e| os_err(target, "sem_post", e))?;
            *n += 1;
            Ok(())
        };
        let mut released = 0;
        let mut limit = 1;
        let mut used = 0;
        if let Some(g) = g.as_ref().filter(|g| g.sem_ino() == sem.ino()) {
            limit = g.limit();
            released += g.recover_dead(&sem, |h| h.liveness());
            g.reconcile(&sem);
            let mut forced = false;
            for (i, h) in g.holders() {
                // Without force: the persistent holders. With it: the oldest holder.
                if force && !forced || !force && h.persist {
                    forced = true;
                    g.free(i);
                    post(&mut released)?;
                }
            }
            used = g.used() as i64;
        }
        // resourcelock's forced unget: a count taken by someone without a record, given
        // back only if that keeps the value within the limit.
        if force && released == 0 && sem.value() + used < limit as i64 {
            post(&mut released)?;
        }
        if released == 0 {
            let why = if force {
                "nothing holds it"
            } else {
                "it has no persistent holder (a lock held by a running process is released by \
                 that process; --force takes it anyway)"
            };
            return Err(Error::new(
                ErrorKind::NotHeld,
                format!("{target} was not released: {why}"),
            ));
        }
        Ok(released)
    }

    fn update_named(&self, target: &Target) -> Result<()> {
        let st = self.status(target)?;
        if st.holders.iter().any(|h| h.record.persist) {
            Ok(()) // a semaphore slot never expires: nothing to renew
        } else {
            Err(Error::new(
                ErrorKind::NotHeld,
                format!("{target} has no persistent holder to update"),
            ))
        }
    }
}

#[cfg(test)]
mod tests;
