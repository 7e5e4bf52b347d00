//! The mutex (limit 1), compatible with HashiCorp's `api.Lock`: a session (TTL, lock-delay),
//! the key acquired with that session and flags `0x2ddccbc058a50c18`.
//!
//! Taking the key is one transaction: a precondition (the key does not exist, or still has
//! the ModifyIndex we saw free) plus the `lock` verb, which is Consul's `?acquire=` (same
//! checks: session, lock-delay, ACL) and returns the new ModifyIndex, our fencing token. The
//! precondition means we never overwrite a key that is not a lock, which `api.Lock`'s
//! separate read-then-acquire can race with. The first attempt is that transaction alone
//! (an uncontended lock costs what api.Lock's does); a waiter then joins the queue of
//! [`super::queue`] and watches its predecessor only. Release is one transaction too: "the
//! key is still held by our session", delete the key and our queue entry; then the session
//! is destroyed.

use super::api::{wait_for_key, KvEntry, Txn};
use super::consullock::mutex_value;
use super::http::Client;
use super::queue::{self, LockState, View, Watch, HOLDING, WAITING};
use super::session::{ConsulHeld, HeldSession, Keys, Session};
use super::{busy_error, conflict_error, lost, ms_left, LOCK_FLAG};
use crate::backend::{Held, Wait};
use crate::holder::{HolderRecord, Liveness};
use crate::{Error, ErrorKind, Options, Result, Target};
use std::time::Duration;

/// How long a waiter blocks on the entry of a predecessor of this host before looking again
/// whether that process still lives.
const LOCAL_RECHECK: Duration = Duration::from_secs(2);

/// The predecessor a waiter watches.
struct Pred {
    key: String,
    /// Its ModifyIndex when last seen.
    index: u64,
    /// The entry of the lockfn process holding K.
    holding: bool,
    /// A process of this host: looked at again every few seconds, so that its death (which
    /// leaves its entry until its session ends) is seen soon.
    local: bool,
}

impl Pred {
    fn of(e: &KvEntry) -> Pred {
        Pred {
            key: e.key.clone(),
            index: e.modify_index,
            holding: e.flags == HOLDING,
            local: super::our_record(e).is_some_and(|r| r.is_this_boot()),
        }
    }
}

/// The waiter's next move.
enum Next {
    /// Take K with this precondition.
    Take(LockState),
    /// Add our queue entry (reading K's subtree in the same transaction).
    Enqueue,
    /// Read K's subtree and decide.
    Evaluate,
    /// Blocking query on K from this index.
    WatchLock(u64),
    /// Blocking query on a predecessor's entry.
    WatchEntry(Pred),
}

struct Waiter<'a> {
    client: Client,
    target: &'a Target,
    key: &'a str,
    wait: &'a Wait,
    session: Session,
    record: HolderRecord,
    /// Our queue entry's key, once enqueued.
    entry: Option<String>,
    /// K as last seen (for the busy message).
    last_lock: Option<KvEntry>,
    lock_delay_pause: Duration,
    recreated: u32,
}

pub(super) fn acquire(
    client: Client,
    target: &Target,
    key: &str,
    opts: &Options,
    wait: &Wait,
) -> Result<Box<dyn Held>> {
    let mut record = HolderRecord::for_self(opts.holder.as_deref());
    record.persist = opts.persist;
    let session = Session::create(&client, target, opts, wait)?;
    let mut w = Waiter {
        client,
        target,
        key,
        wait,
        session,
        record,
        entry: None,
        last_lock: None,
        lock_delay_pause: Duration::from_millis(50),
        recreated: 0,
    };
    let token = w.run()?;
    Ok(w.into_held(token))
}

impl Waiter<'_> {
    fn run(&mut self) -> Result<u64> {
        let mut next = Next::Take(LockState::Absent);
        let mut backoff = super::http::Backoff::new();
        loop {
            self.wait.check_cancel()?;
            match self.advance(next) {
                Ok(Ok(token)) => return Ok(token),
                Ok(Err(n)) => next = n,
                // A refused or reset connection, a 429, a leader election: retried with
                // backoff while the wait lasts (hundreds of waiters on one host).
                Err(e)
                    if !self.wait.is_try_once()
                        && !self.wait.expired()
                        && self.client.transient(&e) =>
                {
                    self.wait.pause(backoff.step())?;
                    next = if self.entry.is_some() {
                        Next::Evaluate
                    } else {
                        Next::Enqueue
                    };
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One step: Ok(token) when K is ours, else the next move.
    fn advance(&mut self, next: Next) -> Result<std::result::Result<u64, Next>> {
        if self.session.renew_if_due(self.wait)? {
            // A new session: the old one's queue entry is gone with it.
            self.entry = None;
            return Ok(Err(Next::Enqueue));
        }
        match next {
            Next::Take(state) => self.take(state),
            Next::Enqueue => self.enqueue(),
            Next::Evaluate => {
                let (entries, _) = self.client.kv_list(self.key, None)?;
                self.decide(View::of(self.key, entries))
            }
            Next::WatchLock(index) => self.watch_lock(index),
            Next::WatchEntry(p) => self.watch_entry(p),
        }
    }

    /// The transaction that takes K (and marks our queue entry as the holder's).
    fn take(&mut self, state: LockState) -> Result<std::result::Result<u64, Next>> {
        let pre = match &state {
            LockState::Absent => serde_json::json!({"Verb": "check-not-exists", "Key": self.key}),
            LockState::Free(idx) => {
                serde_json::json!({"Verb": "check-index", "Key": self.key, "Index": idx})
            }
            LockState::HeldBy(s) if *s == self.session.id => {
                // Our own acquisition whose answer was lost (a retried request).
                return Ok(Ok(self.last_lock.as_ref().map_or(0, |e| e.modify_index)));
            }
            LockState::HeldBy(_) | LockState::Conflict => return Ok(Err(Next::Evaluate)),
        };
        self.record.since = crate::holder::now_secs();
        let value = mutex_value(&self.record, self.key, &self.session.id);
        let mut ops = vec![
            pre,
            serde_json::json!({
                "Verb": "lock", "Key": self.key, "Value": value, "Flags": LOCK_FLAG,
                "Session": self.session.id
            }),
        ];
        if let Some(entry) = &self.entry {
            ops.push(serde_json::json!({
                "Verb": "lock", "Key": entry, "Flags": HOLDING, "Session": self.session.id,
                "Value": super::api::b64_encode(self.record.to_json().as_bytes())
            }));
        }
        match self.client.txn(&ops)? {
            Txn::Applied(entries) => {
                let token = entries
                    .iter()
                    .filter(|e| e.key == self.key)
                    .map(|e| e.modify_index)
                    .max()
                    .unwrap_or(0);
                if token == 0 {
                    return Err(Error::new(
                        ErrorKind::Internal,
                        format!(
                            "{}: Consul acquired the key but returned no index",
                            self.target
                        ),
                    ));
                }
                Ok(Ok(token))
            }
            Txn::Failed(why) => self.refused(&why),
        }
    }

    /// K was refused: why decides what next.
    fn refused(&mut self, why: &[String]) -> Result<std::result::Result<u64, Next>> {
        if why.iter().any(|w| w.contains("lock delay")) {
            // The previous holder's session was invalidated: Consul refuses the key for its
            // lock-delay. Nothing to wait on but time.
            if self.wait.is_try_once() || self.wait.expired() {
                return Err(busy_error(
                    self.target,
                    self.wait,
                    None,
                    " (in lock-delay after its holder's session ended)",
                ));
            }
            self.wait.pause(self.lock_delay_pause)?;
            self.lock_delay_pause = (self.lock_delay_pause * 2).min(Duration::from_millis(250));
            return Ok(Err(Next::Take(LockState::Absent)));
        }
        if why.iter().any(|w| w.contains("invalid session")) {
            // Our waiting session vanished (destroyed by an operator?).
            self.recreated += 1;
            if self.recreated > 3 {
                return Err(Error::new(
                    ErrorKind::Unavailable,
                    format!(
                        "{}: Consul at {} keeps invalidating our session",
                        self.target, self.client.addr
                    ),
                ));
            }
            self.session.recreate(self.wait)?;
            self.entry = None;
        }
        if self.wait.is_try_once() {
            // Try-once leaves no queue entry: read K, take it if it is free (a key `consul
            // lock` left behind), else say who holds it.
            let (e, _) = self.client.kv_get(self.key, None)?;
            self.last_lock = e;
            return match queue::lock_state(self.last_lock.as_ref()) {
                LockState::Conflict => Err(conflict_error(
                    self.target,
                    self.last_lock.as_ref().unwrap_or(&KvEntry::default()),
                )),
                LockState::HeldBy(s) if s != self.session.id => Err(busy_error(
                    self.target,
                    self.wait,
                    self.last_lock.as_ref(),
                    "",
                )),
                state => Ok(Err(Next::Take(state))),
            };
        }
        Ok(Err(if self.entry.is_some() {
            Next::Evaluate
        } else {
            Next::Enqueue
        }))
    }

    /// Add our entry and read K's subtree, in one transaction.
    fn enqueue(&mut self) -> Result<std::result::Result<u64, Next>> {
        let entry = queue::entry_key(self.key, &self.session.id);
        let mut waiting = self.record.clone();
        waiting.since = 0.0;
        let ops = [
            serde_json::json!({
                "Verb": "lock", "Key": entry, "Flags": WAITING, "Session": self.session.id,
                "Value": super::api::b64_encode(waiting.to_json().as_bytes())
            }),
            serde_json::json!({"Verb": "get-tree", "Key": self.key}),
        ];
        match self.client.txn(&ops)? {
            Txn::Applied(entries) => {
                self.entry = Some(entry);
                self.decide(View::of(self.key, entries))
            }
            Txn::Failed(why) if why.iter().any(|w| w.contains("invalid session")) => {
                self.refused(&why)
            }
            Txn::Failed(why) => Err(Error::new(
                ErrorKind::Internal,
                format!(
                    "{}: Consul at {} refused our queue entry {entry}: {}",
                    self.target,
                    self.client.addr,
                    why.join("; ")
                ),
            )),
        }
    }

    /// From a view of K and its queue: take K, or watch K or our predecessor.
    fn decide(&mut self, v: View) -> Result<std::result::Result<u64, Next>> {
        let Some(entry) = self.entry.clone() else {
            return Ok(Err(Next::Enqueue));
        };
        let watch = v.watch(&entry);
        self.last_lock = v.lock;
        match watch {
            Watch::Missing => {
                self.entry = None;
                Ok(Err(Next::Enqueue))
            }
            Watch::Lock => match queue::lock_state(self.last_lock.as_ref()) {
                LockState::Conflict => Err(conflict_error(
                    self.target,
                    self.last_lock.as_ref().unwrap_or(&KvEntry::default()),
                )),
                LockState::HeldBy(s) if s != self.session.id => {
                    let idx = self.last_lock.as_ref().map_or(0, |e| e.modify_index);
                    self.check_time_left()?;
                    Ok(Err(Next::WatchLock(idx)))
                }
                state => Ok(Err(Next::Take(state))),
            },
            Watch::Entry(p) => {
                self.check_time_left()?;
                Ok(Err(Next::WatchEntry(Pred::of(&p))))
            }
        }
    }

    fn check_time_left(&self) -> Result<()> {
        if self.wait.is_try_once() || self.wait.expired() {
            return Err(busy_error(
                self.target,
                self.wait,
                self.last_lock.as_ref(),
                "",
            ));
        }
        Ok(())
    }

    /// Blocking query on K: free → take it.
    fn watch_lock(&mut self, index: u64) -> Result<std::result::Result<u64, Next>> {
        let block = ms_left(self.wait, self.session.block_limit());
        let Some((e, i)) = wait_for_key(self.wait, &self.client, self.key, index.max(1), block)?
        else {
            return Err(busy_error(
                self.target,
                self.wait,
                self.last_lock.as_ref(),
                "",
            ));
        };
        self.last_lock = e;
        match queue::lock_state(self.last_lock.as_ref()) {
            LockState::Conflict => Err(conflict_error(
                self.target,
                self.last_lock.as_ref().unwrap_or(&KvEntry::default()),
            )),
            LockState::HeldBy(s) if s != self.session.id => {
                // Unchanged (the query timed out: look at the whole queue again now and
                // then), or taken by another (a `consul lock` barging in).
                if i <= index {
                    return Ok(Err(Next::Evaluate));
                }
                self.check_time_left()?;
                Ok(Err(Next::WatchLock(i)))
            }
            state => Ok(Err(Next::Take(state))),
        }
    }

    /// Blocking query on our predecessor's entry.
    fn watch_entry(&mut self, p: Pred) -> Result<std::result::Result<u64, Next>> {
        let limit = if p.local {
            LOCAL_RECHECK
        } else {
            self.session.block_limit()
        };
        let block = ms_left(self.wait, limit);
        let Some((e, _)) = wait_for_key(self.wait, &self.client, &p.key, p.index.max(1), block)?
        else {
            return Err(busy_error(
                self.target,
                self.wait,
                self.last_lock.as_ref(),
                "",
            ));
        };
        match e {
            // Unchanged (the query timed out). A waiting predecessor that still lives: watch
            // on. A dead one of this host (its entry stays until its session ends) or the
            // holder's (is it still?): look at the whole queue again.
            Some(e) if e.holder().is_some() && e.modify_index <= p.index => {
                let dead = super::our_record(&e).is_some_and(|r| r.liveness() == Liveness::Dead);
                if p.holding || dead {
                    Ok(Err(Next::Evaluate))
                } else {
                    self.check_time_left()?;
                    Ok(Err(Next::WatchEntry(p)))
                }
            }
            // Changed: typically it took K (marked holding): we are first now, behind it.
            Some(e) if e.holder().is_some() => {
                self.check_time_left()?;
                Ok(Err(Next::WatchEntry(Pred::of(&e))))
            }
            // The holder we watched freed K (its entry goes in the same transaction): take
            // it at once; should a `consul lock` have barged in, this fails and we read again.
            None if p.holding => Ok(Err(Next::Take(LockState::Absent))),
            // Gone (cancelled, dead; or took K and freed it already): read the queue.
            _ => Ok(Err(Next::Evaluate)),
        }
    }

    fn into_held(self, token: u64) -> Box<dyn Held> {
        let mut record = self.record;
        record.token = token;
        Box::new(ConsulHeld {
            keys: MutexKeys {
                key: self.key.to_string(),
                entry: self.entry,
            },
            record,
            session: self.session.keep(self.target),
        })
    }
}

/// The keys of a held mutex.
pub(super) struct MutexKeys {
    key: String,
    /// Our queue entry (marked holding), deleted with the key at release.
    entry: Option<String>,
}

impl Keys for MutexKeys {
    /// The key still says we hold it.
    fn verify(&self, s: &HeldSession) -> Result<()> {
        let c = &s.client;
        let (e, _) = c.retry(4, || c.kv_get(&self.key, None))?;
        match e {
            Some(e) if e.holder() == Some(s.id.as_str()) => Ok(()),
            Some(e) => Err(lost(
                &s.target,
                &match e.holder() {
                    Some(h) => format!("key {} is now held by Consul session {h}", self.key),
                    None => format!(
                        "key {} was released (our Consul session {} was invalidated)",
                        self.key, s.id
                    ),
                },
            )),
            None => Err(lost(&s.target, &format!("key {} was deleted", self.key))),
        }
    }

    /// One transaction: the key is still ours, delete it and our queue entry.
    fn free(&self, s: &HeldSession) -> Result<()> {
        let c = &s.client;
        let mut ops = vec![
            serde_json::json!({"Verb": "check-session", "Key": self.key, "Session": s.id}),
            serde_json::json!({"Verb": "delete", "Key": self.key}),
        ];
        if let Some(entry) = &self.entry {
            ops.push(serde_json::json!({"Verb": "delete", "Key": entry}));
        }
        match c.retry(4, || c.txn(&ops))? {
            Txn::Applied(_) => Ok(()),
            Txn::Failed(_) => Err(lost(
                &s.target,
                &format!(
                    "key {} was no longer held by our session at release",
                    self.key
                ),
            )),
        }
    }
}
