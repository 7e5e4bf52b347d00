//! A name's table and semaphore, opened together: one incarnation of the lock.
//!
//! They are paired under the table's mutex: the semaphore at the name then is the one the
//! table describes ([`Locked::pair_with`] otherwise). Who removes or makes a semaphore file
//! does it under that mutex too (gc, an opener), so a pair, once checked under the mutex to
//! be current (not `dead`, same generation), is the lock: a pooled pair is reused after that
//! check alone, which costs no syscall.

use super::posix::{sem_path, Sem};
use super::shm;
use super::table::{Locked, Table};
use crate::{Error, ErrorKind, Result, Target};

/// Bound on opening again when gc keeps removing the name under us.
pub(super) const MAX_REOPEN: usize = 20;

pub(crate) struct Pair {
    pub(super) name: String,
    /// The process that opened it (a pooled pair is only reused by it).
    pub(super) pid: i32,
    pub(super) table: Table,
    pub(super) sem: Sem,
    /// The table's generation when paired.
    pub(super) generation: u64,
}

impl Pair {
    /// Open (creating with `mode` and `limit` when missing) the name's table and semaphore.
    pub(super) fn open(target: &Target, mode: u32, limit: u32) -> Result<Pair> {
        let name = target.name();
        for _ in 0..MAX_REOPEN {
            let table = match Table::open(name)? {
                Some((t, _fd)) => t,
                None => match Table::create(name, mode, limit)? {
                    Some(t) => t,
                    None => continue, // created meanwhile: open that one
                },
            };
            let g = table.lock()?;
            if g.dead() {
                finish_removal(&g, name, &table);
                continue;
            }
            let sem = match Sem::open(name)? {
                Some(s) => s,
                None => match Sem::create(name, mode, g.limit())? {
                    Some(s) => s,
                    None => continue, // made by someone else (resourcelock) meanwhile
                },
            };
            if sem.ino() != g.sem_ino() {
                g.pair_with(sem.ino());
            }
            let generation = g.generation();
            drop(g);
            return Ok(Pair {
                name: name.to_string(),
                pid: crate::holder::own_process().0,
                table,
                sem,
                generation,
            });
        }
        Err(Error::new(
            ErrorKind::Internal,
            format!("{target}: its files kept being removed while opening them (gc loop?)"),
        ))
    }

    /// Is this pair still the lock? (Under the table's mutex.)
    pub(super) fn current(&self, g: &Locked) -> bool {
        !g.dead() && g.generation() == self.generation
    }
}

/// Does a resourcelock user of `name` exist? resourcelock always makes its info segment
/// `/dev/shm/NAME` beside the semaphore and keeps the semaphore open while its object lives
/// (cjnfuncs/resourcelock.py): gc must not unlink that semaphore.
pub(super) fn resourcelock_present(name: &str) -> bool {
    std::fs::symlink_metadata(format!("{}/{name}", shm::SHM_DIR)).is_ok()
}

/// Remove an idle table gc marked dead (under its mutex): the semaphore first (unless a
/// resourcelock user may have it open), then the table, each only if still the same file.
/// Semaphore first: while the table is linked nobody pairs a new table with the old
/// semaphore. Returns whether the table was removed.
pub(super) fn finish_removal(g: &Locked, name: &str, table: &Table) -> bool {
    if g.sem_ino() != 0 && !resourcelock_present(name) {
        shm::unlink_if(&sem_path(name), g.sem_ino());
    }
    shm::unlink_if(&table.path, table.ino())
}
