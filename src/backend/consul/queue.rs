//! The queue of lockfn waiters beside a mutex key K (api.Lock's key, the one truth).
//!
//! Each lockfn waiter holds an entry `K/.queue/<session>` with its own session (behavior
//! delete: the entry goes with the session, so a dead or cancelled waiter leaves nothing);
//! entries are ordered by CreateIndex. A waiter runs its blocking query on its nearest
//! predecessor's entry only, the first waiter on K (or on the entry of the lockfn holder,
//! which marks its entry [`HOLDING`] in the transaction that takes K and deletes it in the
//! one that frees K). So a release wakes one waiter, not all: no herd. `consul lock`
//! (api.Lock reads K only, api/lock.go) and consullock (reads K only, managers.py) ignore
//! the entries; they may barge in, and the queue then waits on K like them.

use super::api::KvEntry;
use super::LOCK_FLAG;
use crate::holder::Liveness;

/// Flags of a queue entry whose waiter waits.
pub(super) const WAITING: u64 = 0x6c6f_636b_666e_7131;
/// Flags of the entry of the waiter that took K (until it frees K).
pub(super) const HOLDING: u64 = 0x6c6f_636b_666e_7132;

/// The path segment of queue entries: `K/.queue/<session>`.
pub(super) const SEGMENT: &str = "/.queue/";

pub(super) fn prefix(key: &str) -> String {
    format!("{}{SEGMENT}", key.trim_end_matches('/'))
}

pub(super) fn entry_key(key: &str, session: &str) -> String {
    format!("{}{session}", prefix(key))
}

/// Is this key a queue entry (of any lock)? Such keys are not locks for list/status/gc.
pub(super) fn is_entry(key: &str) -> bool {
    key.contains(SEGMENT)
}

/// K and its queue, from a listing of K's subtree (`kv_list(K)` or a transaction's
/// `get-tree K`, which also return unrelated keys that merely start with K).
pub(super) struct View {
    pub lock: Option<KvEntry>,
    /// Live entries (with a session, and not of a process of this host that is provably
    /// dead: a waiter killed -9 is skipped at once rather than when its session ends), oldest
    /// first.
    pub queue: Vec<KvEntry>,
}

/// What a waiter watches next.
#[derive(Debug, PartialEq)]
pub(super) enum Watch {
    /// Our entry is not there (our session ended): enqueue again.
    Missing,
    /// We are first: take K when free, else watch K.
    Lock,
    /// Watch this predecessor's entry.
    Entry(KvEntry),
}

impl View {
    pub fn of(key: &str, entries: Vec<KvEntry>) -> View {
        let qp = prefix(key);
        let mut lock = None;
        let mut queue = Vec::new();
        for e in entries {
            if e.key == key {
                lock = Some(e);
            } else if e.key.starts_with(&qp)
                && e.holder().is_some()
                && !e.key[qp.len()..].contains('/')
                && !super::our_record(&e).is_some_and(|r| r.liveness() == Liveness::Dead)
            {
                queue.push(e);
            }
        }
        queue.sort_by_key(|e| e.create_index);
        View { lock, queue }
    }

    /// The session holding K, if any.
    fn lock_holder(&self) -> Option<&str> {
        self.lock.as_ref().and_then(|e| e.holder())
    }

    /// What the waiter with entry `mine` watches: its nearest predecessor that waits, or the
    /// entry of the lockfn process that holds K now; none: K itself.
    pub fn watch(&self, mine: &str) -> Watch {
        let Some(pos) = self.queue.iter().position(|e| e.key == mine) else {
            return Watch::Missing;
        };
        let holder = self.lock_holder();
        for e in self.queue[..pos].iter().rev() {
            let valid = match e.flags {
                WAITING => true,
                // A holding entry whose session no longer holds K is stale: skip it.
                HOLDING => e.holder() == holder && holder.is_some(),
                _ => false,
            };
            if valid {
                return Watch::Entry(e.clone());
            }
        }
        Watch::Lock
    }

    /// Waiting entries, oldest first (for `lockfn status`).
    pub fn waiting(&self) -> impl Iterator<Item = &KvEntry> {
        self.queue.iter().filter(|e| e.flags == WAITING)
    }
}

/// K as a waiter sees it.
pub(super) enum LockState {
    /// Absent: take it with check-not-exists.
    Absent,
    /// A lock key nobody holds: take it with check-index.
    Free(u64),
    /// Held by this session.
    HeldBy(String),
    /// Exists and is not a lock key.
    Conflict,
}

pub(super) fn lock_state(e: Option<&KvEntry>) -> LockState {
    match e {
        None => LockState::Absent,
        Some(e) => match e.holder() {
            Some(s) => LockState::HeldBy(s.to_string()),
            None if e.flags == LOCK_FLAG => LockState::Free(e.modify_index),
            None => LockState::Conflict,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(key: &str, session: Option<&str>, flags: u64, create: u64) -> KvEntry {
        KvEntry {
            key: key.into(),
            flags,
            value: None,
            session: session.map(str::to_string),
            lock_index: 0,
            create_index: create,
            modify_index: create,
        }
    }

    #[test]
    fn each_waiter_watches_its_predecessor_the_first_watches_the_lock() {
        let k = "lockfn/x";
        let entries = vec![
            e("lockfn/x", Some("h"), LOCK_FLAG, 5),
            e("lockfn/x/.queue/c", Some("c"), WAITING, 30),
            e("lockfn/x/.queue/a", Some("a"), WAITING, 10),
            e("lockfn/x/.queue/b", Some("b"), WAITING, 20),
            e("lockfn/x/.queue/dead", None, WAITING, 15),
            e("lockfn/xy", Some("z"), LOCK_FLAG, 1),
            e("lockfn/x/.queue/deeper/k", Some("d"), WAITING, 1),
        ];
        let v = View::of(k, entries);
        assert_eq!(v.queue.len(), 3);
        assert_eq!(v.watch(&entry_key(k, "a")), Watch::Lock);
        match v.watch(&entry_key(k, "c")) {
            Watch::Entry(p) => assert_eq!(p.key, "lockfn/x/.queue/b"),
            w => panic!("{w:?}"),
        }
        assert_eq!(v.watch(&entry_key(k, "gone")), Watch::Missing);
        assert_eq!(v.waiting().count(), 3);
    }

    #[test]
    fn a_holding_entry_counts_only_while_its_session_holds_the_lock() {
        let k = "a/.lock";
        let mk = |holder: &str| {
            View::of(
                k,
                vec![
                    e("a/.lock", Some(holder), LOCK_FLAG, 50),
                    e("a/.lock/.queue/h", Some("h"), HOLDING, 10),
                    e("a/.lock/.queue/w", Some("w"), WAITING, 20),
                ],
            )
        };
        match mk("h").watch(&entry_key(k, "w")) {
            Watch::Entry(p) => assert_eq!(p.key, "a/.lock/.queue/h"),
            w => panic!("{w:?}"),
        }
        // K taken by a `consul lock` session meanwhile: watch K.
        assert_eq!(mk("go").watch(&entry_key(k, "w")), Watch::Lock);
    }
}
