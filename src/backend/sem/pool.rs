//! Pairs this process opened and is not using, kept for its next acquisition of the same name
//! so that an uncontended cycle maps nothing and makes no syscall. Rules:
//! - an entry is used by one handle at a time (taken out meanwhile);
//! - only by the process that opened it: entries of another pid (a forked child's inherited
//!   ones) are dropped;
//! - only after a check under the table's mutex that it is still current (`Pair::current`).
//!
//! try_lock only: a busy pool means opening afresh, never waiting. The atfork prepare handler
//! takes it (fork.rs), and the child handler forgets the parent's entries ([`forget_pool`]).

use super::pair::Pair;
use std::sync::{Mutex, MutexGuard, TryLockError};

pub(crate) static POOL: Mutex<Pool> = Mutex::new(Vec::new());
pub(crate) type Pool = Vec<Pair>;

/// Pairs kept at most (the least recently released go first).
const POOL_MAX: usize = 8;

/// In a forked child (atfork child handler, pool held): forget the parent's pairs without
/// unmapping them (the memory is shared with the parent; a leak of a few pages at most).
pub(crate) fn forget_pool(pool: &mut Pool) {
    std::mem::forget(std::mem::take(pool));
}

fn pool() -> Option<MutexGuard<'static, Pool>> {
    match POOL.try_lock() {
        Ok(g) => Some(g),
        Err(TryLockError::Poisoned(e)) => Some(e.into_inner()),
        Err(TryLockError::WouldBlock) => None,
    }
}

pub(super) fn take(name: &str, pid: i32) -> Option<Pair> {
    let mut pool = pool()?;
    pool.retain(|o| o.pid == pid);
    let i = pool.iter().position(|o| o.name == name)?;
    Some(pool.remove(i))
}

pub(super) fn put(o: Pair) {
    if let Some(mut pool) = pool() {
        if pool.len() >= POOL_MAX {
            pool.remove(0);
        }
        pool.push(o);
    }
}
