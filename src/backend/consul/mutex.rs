//! The mutex (limit 1), as HashiCorp's `api.Lock` does it: a session (TTL, behavior release,
//! lock-delay), the key acquired with that session and flags `0x2ddccbc058a50c18`, waiting
//! through blocking queries on the key.
//!
//! Acquisition is one transaction: a precondition (the key does not exist, or still has the
//! ModifyIndex we saw free) plus the `lock` verb, which is Consul's `?acquire=` (same checks:
//! session, lock-delay, ACL) and returns the new ModifyIndex, our fencing token. The
//! precondition means we never overwrite a key that is not a lock, which `api.Lock`'s separate
//! read-then-acquire can race with. Release is one transaction too: "the key is still held by
//! our session" plus delete, then the session is destroyed — so nothing of ours is left in
//! the KV store, and a waiter (ours, `consul lock`'s, consullock's) sees the key go at once.

use super::http::{b64_encode, wait_for, Client, KvEntry, Txn};
use super::{busy_error, conflict_error, lost, ms_left, Session, CHECK_INTERVAL, LOCK_FLAG};
use crate::backend::{Held, Wait};
use crate::holder::HolderRecord;
use crate::{Error, ErrorKind, Options, Result, Target};
use std::time::{Duration, Instant};

/// What the last read said about the key.
enum Seen {
    /// Not known yet: try as if it did not exist (the common case after a release).
    Absent,
    /// Exists, unlocked, a lock key: acquire with this ModifyIndex as precondition.
    Free(u64),
    /// Held by another session.
    Held(Box<KvEntry>),
    /// Must be read again.
    Unknown,
}

fn classify(target: &Target, e: Option<KvEntry>) -> Result<Seen> {
    Ok(match e {
        None => Seen::Absent,
        Some(e) if e.holder().is_some() => Seen::Held(Box::new(e)),
        Some(e) if e.flags == LOCK_FLAG => Seen::Free(e.modify_index),
        Some(e) => return Err(conflict_error(target, &e)),
    })
}

fn lock_op(key: &str, value: &str, session: &str) -> serde_json::Value {
    serde_json::json!({
        "Verb": "lock", "Key": key, "Value": value, "Flags": LOCK_FLAG, "Session": session
    })
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
    let value = b64_encode(record.to_json().as_bytes());
    let mut session = Session::create(&client, target, opts, "release", wait)?;
    let mut seen = Seen::Absent;
    let mut index = 0u64;
    let mut delay_backoff = Duration::from_millis(50);
    let mut transient_left = 30u32;
    let mut recreated = 0;
    loop {
        wait.check_cancel()?;
        let step: Result<Option<u64>> = (|| {
            session.renew_if_due()?;
            let pre = match &seen {
                Seen::Absent => Some(serde_json::json!({"Verb": "check-not-exists", "Key": key})),
                Seen::Free(idx) => {
                    Some(serde_json::json!({"Verb": "check-index", "Key": key, "Index": idx}))
                }
                _ => None,
            };
            if let Some(pre) = pre {
                match client.txn(&[pre, lock_op(key, &value, &session.id)])? {
                    Txn::Applied(entries) => {
                        let token = entries
                            .iter()
                            .filter(|e| e.key == key)
                            .map(|e| e.modify_index)
                            .max()
                            .unwrap_or(0);
                        if token == 0 {
                            return Err(Error::new(
                                ErrorKind::Internal,
                                format!("{target}: Consul acquired the key but returned no index"),
                            ));
                        }
                        return Ok(Some(token));
                    }
                    Txn::Failed(why) => {
                        if why.iter().any(|w| w.contains("lock delay")) {
                            // The previous holder's session was invalidated: Consul refuses the
                            // key for its lock-delay. Nothing to wait on but time.
                            if wait.is_try_once() || wait.expired() {
                                return Err(busy_error(
                                    target,
                                    wait,
                                    None,
                                    " (in lock-delay after its holder's session ended)",
                                ));
                            }
                            wait.pause(delay_backoff)?;
                            delay_backoff = (delay_backoff * 2).min(Duration::from_millis(250));
                        } else if why.iter().any(|w| w.contains("invalid session")) {
                            // Our waiting session vanished (destroyed by an operator?).
                            recreated += 1;
                            if recreated > 3 {
                                return Err(Error::new(
                                    ErrorKind::Unavailable,
                                    format!(
                                        "{target}: Consul at {} keeps invalidating our session",
                                        client.addr
                                    ),
                                ));
                            }
                            session.recreate()?;
                        }
                        seen = Seen::Unknown;
                    }
                }
            }
            if matches!(seen, Seen::Unknown) {
                let (e, i) = client.kv_get(key, None)?;
                index = i;
                seen = classify(target, e)?;
            }
            if let Seen::Held(e) = &seen {
                if e.holder() == Some(session.id.as_str()) {
                    // Our own acquisition whose answer was lost (a retried request).
                    return Ok(Some(e.modify_index));
                }
                if wait.is_try_once() || wait.expired() {
                    return Err(busy_error(target, wait, Some(e), ""));
                }
                let block = ms_left(wait, session.block_limit());
                let k = key.to_string();
                let idx = index.max(1);
                match wait_for(wait, &client, move |c| c.kv_get(&k, Some((idx, block))))? {
                    Some((e, i)) => {
                        // An index that went backwards (snapshot restore) restarts the wait.
                        index = if i < index { 0 } else { i };
                        seen = classify(target, e)?;
                    }
                    None => return Err(busy_error(target, wait, None, "")),
                }
            }
            Ok(None)
        })();
        match step {
            Ok(Some(token)) => {
                record.token = token;
                let (id, ttl) = session.keep();
                return Ok(Box::new(MutexHeld {
                    client,
                    target: target.clone(),
                    key: key.to_string(),
                    session: id,
                    ttl,
                    record,
                    last_renew: Instant::now(),
                }));
            }
            Ok(None) => {}
            Err(e)
                if e.kind() == ErrorKind::Unavailable && transient_left > 0 && !wait.expired() =>
            {
                // Leader election, agent restart: retry while the wait allows.
                transient_left -= 1;
                wait.pause(Duration::from_millis(250))?;
                seen = Seen::Unknown;
            }
            Err(e) => return Err(e),
        }
    }
}

pub(super) struct MutexHeld {
    client: Client,
    target: Target,
    key: String,
    session: String,
    ttl: Option<Duration>,
    record: HolderRecord,
    last_renew: Instant,
}

impl MutexHeld {
    /// A transient failure (agent restarting, leader election) is reported as such until the
    /// session TTL has passed without a successful renewal: then the session may be gone and
    /// the lock is declared lost.
    fn settle(&mut self, r: Result<()>) -> Result<()> {
        match r {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::Lost => Err(e),
            Err(e) => match self.ttl {
                Some(ttl) if self.last_renew.elapsed() >= ttl => Err(lost(
                    &self.target,
                    &format!(
                        "no successful renewal for {} s, the session TTL ({e})",
                        ttl.as_secs()
                    ),
                )),
                _ => Err(e),
            },
        }
    }

    /// Renew the session: `Lost` when it no longer exists.
    fn renew(&mut self) -> Result<()> {
        if self.ttl.is_none() {
            return Ok(());
        }
        let alive = self
            .client
            .retry(3, || self.client.session_renew(&self.session))?;
        if !alive {
            return Err(lost(
                &self.target,
                &format!(
                    "its Consul session {} no longer exists (destroyed by an operator, or \
                     expired)",
                    self.session
                ),
            ));
        }
        self.last_renew = Instant::now();
        Ok(())
    }

    /// The key (and for a semaphore, `.lock`) still say we hold it.
    fn verify(&self) -> Result<()> {
        let (e, _) = self
            .client
            .retry(3, || self.client.kv_get(&self.key, None))?;
        match e {
            Some(e) if e.holder() == Some(self.session.as_str()) => Ok(()),
            Some(e) => Err(lost(
                &self.target,
                &match e.holder() {
                    Some(s) => format!("key {} is now held by Consul session {s}", self.key),
                    None => format!(
                        "key {} was released (our Consul session {} was invalidated)",
                        self.key, self.session
                    ),
                },
            )),
            None => Err(lost(&self.target, &format!("key {} was deleted", self.key))),
        }
    }
}

impl Held for MutexHeld {
    fn token(&self) -> u64 {
        self.record.token
    }

    fn record(&self) -> &HolderRecord {
        &self.record
    }

    fn update(&mut self) -> Result<()> {
        self.client.bound_by_op_timeout();
        let r = self.renew().and_then(|_| self.verify());
        self.settle(r)
    }

    fn check(&mut self) -> Result<()> {
        self.client.bound_by_op_timeout();
        let r = self.verify();
        self.settle(r)
    }

    fn release(&mut self) -> Result<()> {
        self.client.bound_by_op_timeout();
        let r = self.client.retry(3, || {
            self.client.txn(&[
                serde_json::json!({"Verb": "check-session", "Key": self.key, "Session": self.session}),
                serde_json::json!({"Verb": "delete", "Key": self.key}),
            ])
        });
        let d = self
            .client
            .retry(3, || self.client.session_destroy(&self.session));
        match r? {
            Txn::Applied(_) => d,
            Txn::Failed(_) => {
                // Lost (our session was invalidated): the key may still sit there released,
                // with our record. Tidy it away unless someone took it meanwhile.
                if let Ok((Some(e), _)) = self.client.kv_get(&self.key, None) {
                    let ours = super::our_record(&e).is_some_and(|r| {
                        r.pid == self.record.pid
                            && r.start_time == self.record.start_time
                            && r.host == self.record.host
                    });
                    if e.holder().is_none() && ours {
                        let _ = self.client.txn(&[serde_json::json!({
                            "Verb": "delete-cas", "Key": self.key, "Index": e.modify_index
                        })]);
                    }
                }
                Err(lost(
                    &self.target,
                    &format!(
                        "key {} was no longer held by our session at release",
                        self.key
                    ),
                ))
            }
        }
    }

    fn renew_interval(&self) -> Option<Duration> {
        // api.Lock renews at TTL/2; Consul keeps a session 2×TTL after its last renewal.
        self.ttl.map(|t| t / 2)
    }

    fn check_interval(&self) -> Option<Duration> {
        // A loss (an operator destroying the session) is seen within about a second.
        Some(CHECK_INTERVAL)
    }
}
