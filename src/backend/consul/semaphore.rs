//! The semaphore (limit > 1), as HashiCorp's `api.Semaphore` does it, so that `consul lock -n N
//! PREFIX` and lockfn share the same N slots:
//! - each contender holds `PREFIX/<session>` (flags `0xe0f69a2baa414de0`) with a session of
//!   behavior delete — our value is the holder record;
//! - `PREFIX/.lock` (same flags, no session) holds `{"Limit":N,"Holders":{"<session>":true}}`
//!   and is only changed with check-and-set;
//! - holders whose contender key is gone are dead and pruned by whoever writes next.
//!
//! The target names the prefix: `consul://ADDR/PREFIX/.lock` or `consul://ADDR/PREFIX` (and
//! `consul:NAME` → prefix `lockfn/NAME`). Taking a slot is one transaction: CAS of `.lock` plus
//! a rewrite of our contender key, so both get the same ModifyIndex — our fencing token, which
//! `status` then reads back from the contender key. Release removes us from `.lock` (deleting
//! `.lock` when no live holder is left, as `api.Semaphore.Destroy` does) and our contender key,
//! then destroys the session.

use super::api::{b64_decode, b64_encode, wait_for_key, wait_for_list, KvEntry, Txn};
use super::http::Client;
use super::session::{ConsulHeld, HeldSession, Keys, Session};
use super::{lost, ms_left, SEM_FLAG};
use crate::backend::{Held, Wait};
use crate::holder::HolderRecord;
use crate::{Error, ErrorKind, Options, Result, Target};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};

/// The coordination value of `.lock`, byte-compatible with api.Semaphore's `semaphoreLock`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(super) struct SemLock {
    #[serde(rename = "Limit")]
    pub limit: i64,
    #[serde(rename = "Holders", default)]
    pub holders: Option<BTreeMap<String, bool>>,
}

impl SemLock {
    pub fn holder_ids(&self) -> Vec<String> {
        self.holders
            .as_ref()
            .map(|h| h.keys().cloned().collect())
            .unwrap_or_default()
    }

    pub fn encode(&self) -> String {
        let v = SemLock {
            limit: self.limit,
            holders: Some(self.holders.clone().unwrap_or_default()),
        };
        b64_encode(serde_json::to_string(&v).unwrap_or_default().as_bytes())
    }

    /// Drop holders whose session holds no key under the prefix (their contender key went with
    /// their session).
    pub fn prune(&mut self, entries: &[KvEntry]) -> bool {
        let alive: HashSet<&str> = entries.iter().filter_map(|e| e.holder()).collect();
        let before = self.holders.as_ref().map(|h| h.len()).unwrap_or(0);
        if let Some(h) = self.holders.as_mut() {
            h.retain(|s, _| alive.contains(s.as_str()));
        }
        before != self.holders.as_ref().map(|h| h.len()).unwrap_or(0)
    }

    pub fn count(&self) -> usize {
        self.holders.as_ref().map(|h| h.len()).unwrap_or(0)
    }

    pub fn has(&self, s: &str) -> bool {
        self.holders.as_ref().is_some_and(|h| h.contains_key(s))
    }
}

/// The prefix of a semaphore target's key: `P/.lock` and `P` both name prefix `P`.
pub(super) fn prefix_of(key: &str) -> &str {
    key.strip_suffix("/.lock").unwrap_or(key)
}

pub(super) fn lock_key_of(prefix: &str) -> String {
    format!("{prefix}/.lock")
}

/// Decode `.lock` from a listing: (entry, value); a missing `.lock` is an empty semaphore.
pub(super) fn find_lock(
    target: &Target,
    client: &Client,
    lock_key: &str,
    entries: &[KvEntry],
    default_limit: i64,
) -> Result<(Option<KvEntry>, SemLock)> {
    let Some(e) = entries.iter().find(|e| e.key == lock_key) else {
        return Ok((
            None,
            SemLock {
                limit: default_limit,
                holders: Some(BTreeMap::new()),
            },
        ));
    };
    if e.flags != SEM_FLAG {
        return Err(Error::new(
            ErrorKind::Invalid,
            format!(
                "{target}: key {lock_key} is not a semaphore's .lock (flags {:#x}; a mutex \
                 `consul lock` or another use): acquire it without --limit, or use another prefix",
                e.flags
            ),
        ));
    }
    let bytes = e.value.as_deref().and_then(b64_decode).unwrap_or_default();
    let v: SemLock = if bytes.is_empty() {
        SemLock {
            limit: default_limit,
            holders: Some(BTreeMap::new()),
        }
    } else {
        serde_json::from_slice(&bytes).map_err(|err| {
            Error::new(
                ErrorKind::Internal,
                format!(
                    "{target}: Consul at {}: {lock_key} does not hold a semaphore ({err})",
                    client.addr
                ),
            )
        })?
    };
    Ok((Some(e.clone()), v))
}

pub(super) fn acquire(
    client: Client,
    target: &Target,
    key: &str,
    opts: &Options,
    wait: &Wait,
) -> Result<Box<dyn Held>> {
    let prefix = prefix_of(key).to_string();
    let mut record = HolderRecord::for_self(opts.holder.as_deref());
    record.persist = opts.persist;
    let session = Session::create(&client, target, opts, wait)?;
    let mut w = SemWaiter {
        lock_key: lock_key_of(&prefix),
        list_prefix: format!("{prefix}/"),
        prefix,
        limit: opts.limit as i64,
        client,
        target,
        wait,
        session,
        record,
        listing: None,
    };
    w.listing = Some(w.make_contender()?);
    let mut backoff = super::http::Backoff::new();
    loop {
        wait.check_cancel()?;
        match w.step() {
            Ok(Some(token)) => return Ok(w.into_held(token)),
            Ok(None) => {}
            // A refused or reset connection, a 429, a leader election: retried with backoff
            // while the wait lasts.
            Err(e) if !wait.is_try_once() && !wait.expired() && w.client.transient(&e) => {
                w.listing = None;
                wait.pause(backoff.step())?;
            }
            Err(e) => return Err(e),
        }
    }
}

/// A semaphore waiter. Its contender key is its place in the queue: lockfn contenders that
/// wait (record `since` 0, not in `.lock`'s holders) are ordered by CreateIndex; the first
/// watches the prefix (api.Semaphore's blocking query), each other one its predecessor's
/// contender key only, which changes when that one takes a slot, dies or gives up. So a
/// freed slot wakes one lockfn waiter, not all.
struct SemWaiter<'a> {
    client: Client,
    target: &'a Target,
    wait: &'a Wait,
    prefix: String,
    lock_key: String,
    list_prefix: String,
    limit: i64,
    session: Session,
    record: HolderRecord,
    /// The listing to decide on, when one is at hand.
    listing: Option<(Vec<KvEntry>, u64)>,
}

impl SemWaiter<'_> {
    fn contender_key(&self) -> String {
        format!("{}/{}", self.prefix, self.session.id)
    }

    fn contender_op(&self, value: &str) -> serde_json::Value {
        serde_json::json!({
            "Verb": "lock", "Key": self.contender_key(), "Value": value,
            "Flags": SEM_FLAG, "Session": self.session.id
        })
    }

    /// Write our contender key (record with `since` 0: waiting) and list the prefix, in one
    /// transaction. The acquisition rewrites the record with the time of acquisition, which
    /// also gives the key the acquisition's index (an identical rewrite would leave its
    /// ModifyIndex alone). A session that vanished meanwhile is made anew.
    fn make_contender(&mut self) -> Result<(Vec<KvEntry>, u64)> {
        let mut waiting = self.record.clone();
        waiting.since = 0.0;
        let value = b64_encode(waiting.to_json().as_bytes());
        let mut attempts = 0;
        loop {
            let ops = [
                self.contender_op(&value),
                serde_json::json!({"Verb": "get-tree", "Key": self.list_prefix}),
            ];
            match self.client.txn(&ops)? {
                Txn::Applied(mut entries) => {
                    // The transaction's answer has no X-Consul-Index: the largest ModifyIndex
                    // of the listing is a lower bound (a blocking query from it may return at
                    // once, harmlessly).
                    let index = entries.iter().map(|e| e.modify_index).max().unwrap_or(0);
                    entries.retain(|e| e.key.starts_with(&self.list_prefix));
                    return Ok((entries, index));
                }
                Txn::Failed(why)
                    if attempts < 3 && why.iter().any(|w| w.contains("invalid session")) =>
                {
                    attempts += 1;
                    self.session.recreate(self.wait)?;
                }
                Txn::Failed(why) => {
                    return Err(Error::new(
                        ErrorKind::Internal,
                        format!(
                            "{}: Consul at {} refused our contender key: {}",
                            self.target,
                            self.client.addr,
                            why.join("; ")
                        ),
                    ))
                }
            }
        }
    }

    /// `.lock` from a listing, checked against our limit, dead holders pruned.
    fn read_lock(&self, entries: &[KvEntry]) -> Result<(Option<KvEntry>, SemLock)> {
        let (lock_entry, mut sl) = find_lock(
            self.target,
            &self.client,
            &self.lock_key,
            entries,
            self.limit,
        )?;
        if sl.limit != self.limit {
            return Err(Error::new(
                ErrorKind::Invalid,
                format!(
                    "{}: semaphore limit conflict: {} says {}, we asked for {} (all users of a \
                     semaphore must agree on its limit)",
                    self.target, self.lock_key, sl.limit, self.limit
                ),
            ));
        }
        sl.prune(entries);
        Ok((lock_entry, sl))
    }

    /// lockfn contenders waiting for a slot, oldest first.
    fn waiting<'e>(&self, entries: &'e [KvEntry], sl: &SemLock) -> Vec<&'e KvEntry> {
        let mut w: Vec<&KvEntry> = entries
            .iter()
            .filter(|e| {
                e.holder()
                    .is_some_and(|s| !sl.has(s) && e.key.strip_prefix(&self.list_prefix) == Some(s))
            })
            .filter(|e| super::our_record(e).is_some_and(|r| r.since == 0.0))
            .collect();
        w.sort_by_key(|e| e.create_index);
        w
    }

    /// One round: Some(token) when a slot is ours.
    fn step(&mut self) -> Result<Option<u64>> {
        if self.session.renew_if_due(self.wait)? {
            self.listing = Some(self.make_contender()?);
        }
        let (entries, index) = match self.listing.take() {
            Some(l) => l,
            None => self.client.kv_list(&self.list_prefix, None)?,
        };
        let (lock_entry, sl) = self.read_lock(&entries)?;
        let mine = self.contender_key();
        if sl.has(&self.session.id) {
            // Our own acquisition whose answer was lost (a retried request).
            let token = entries
                .iter()
                .find(|e| e.key == mine)
                .map_or(0, |e| e.modify_index);
            return Ok(Some(token));
        }
        if !entries.iter().any(|e| e.key == mine) {
            self.listing = Some(self.make_contender()?);
            return Ok(None);
        }
        let waiting = self.waiting(&entries, &sl);
        let pos = waiting.iter().position(|e| e.key == mine).unwrap_or(0);
        let free = self.limit.saturating_sub(sl.count() as i64);
        if (pos as i64) < free {
            return self.take(lock_entry.as_ref(), sl);
        }
        if self.wait.is_try_once() || self.wait.expired() {
            return Err(full_error(self.target, self.wait, self.limit));
        }
        let block = ms_left(self.wait, self.session.block_limit());
        if pos == 0 {
            // First in line: watch the whole prefix (a holder's release or death).
            match wait_for_list(
                self.wait,
                &self.client,
                &self.list_prefix,
                index.max(1),
                block,
            )? {
                Some(l) => self.listing = Some(l),
                None => return Err(full_error(self.target, self.wait, self.limit)),
            }
        } else {
            let p = waiting[pos - 1];
            let (k, idx) = (p.key.clone(), p.modify_index);
            if wait_for_key(self.wait, &self.client, &k, idx.max(1), block)?.is_none() {
                return Err(full_error(self.target, self.wait, self.limit));
            }
        }
        Ok(None)
    }

    /// CAS of `.lock` with us among the holders, and our contender rewritten, in one
    /// transaction.
    fn take(&mut self, lock_entry: Option<&KvEntry>, mut sl: SemLock) -> Result<Option<u64>> {
        sl.holders
            .get_or_insert_with(BTreeMap::new)
            .insert(self.session.id.clone(), true);
        let cas = serde_json::json!({
            "Verb": "cas", "Key": self.lock_key, "Value": sl.encode(), "Flags": SEM_FLAG,
            "Index": lock_entry.map_or(0, |e| e.modify_index)
        });
        self.record.since = crate::holder::now_secs();
        let value = b64_encode(self.record.to_json().as_bytes());
        match self.client.txn(&[cas, self.contender_op(&value)])? {
            Txn::Applied(res) => Ok(Some(res.iter().map(|e| e.modify_index).max().unwrap_or(0))),
            Txn::Failed(why) => {
                if why.iter().any(|w| w.contains("invalid session")) {
                    self.session.recreate(self.wait)?;
                    self.listing = Some(self.make_contender()?);
                }
                // Lost a CAS race with another contender: read again, no wait.
                Ok(None)
            }
        }
    }

    fn into_held(self, token: u64) -> Box<dyn Held> {
        let mut record = self.record;
        record.token = token;
        Box::new(ConsulHeld {
            keys: SemKeys {
                prefix: self.prefix,
                lock_key: self.lock_key,
            },
            record,
            session: self.session.keep(self.target),
        })
    }
}

fn full_error(target: &Target, wait: &Wait, limit: i64) -> Error {
    let e = wait.busy(target, None);
    Error::new(
        ErrorKind::Busy,
        format!("{} (all {limit} slots are taken)", e.message()),
    )
}

/// The keys of a held semaphore slot.
pub(super) struct SemKeys {
    prefix: String,
    lock_key: String,
}

impl SemKeys {
    fn contender(&self, s: &HeldSession) -> String {
        format!("{}/{}", self.prefix, s.id)
    }
}

impl Keys for SemKeys {
    /// Our contender key and `.lock` still say we hold a slot.
    fn verify(&self, s: &HeldSession) -> Result<()> {
        let c = &s.client;
        let list_prefix = format!("{}/", self.prefix);
        let (entries, _) = c.retry(4, || c.kv_list(&list_prefix, None))?;
        let contender = self.contender(s);
        let mine = entries
            .iter()
            .any(|e| e.key == contender && e.holder() == Some(s.id.as_str()));
        if !mine {
            return Err(lost(
                &s.target,
                &format!("our contender key {contender} is gone"),
            ));
        }
        let (_, sl) = find_lock(&s.target, c, &self.lock_key, &entries, 0)?;
        if !sl.has(&s.id) {
            return Err(lost(
                &s.target,
                &format!("{} no longer lists our session as a holder", self.lock_key),
            ));
        }
        Ok(())
    }

    /// Out of `.lock` (deleted when no live holder is left) and our contender key gone.
    fn free(&self, s: &HeldSession) -> Result<()> {
        let was = remove_holders(
            &s.target,
            &s.client,
            &self.prefix,
            std::slice::from_ref(&s.id),
            &[self.contender(s)],
        )?;
        if !was {
            return Err(lost(
                &s.target,
                &format!("{} no longer listed our session at release", self.lock_key),
            ));
        }
        Ok(())
    }
}

/// Remove `gone` sessions (and dead holders) from `.lock`, deleting it when no live holder is
/// left; optionally delete some contender keys in the same transaction. Returns whether any of
/// `gone` was a holder.
pub(super) fn remove_holders(
    target: &Target,
    client: &Client,
    prefix: &str,
    gone: &[String],
    delete_keys: &[String],
) -> Result<bool> {
    let lock_key = lock_key_of(prefix);
    let list_prefix = format!("{prefix}/");
    for _ in 0..20 {
        let (entries, _) = client.retry(3, || client.kv_list(&list_prefix, None))?;
        let (lock_entry, mut sl) = find_lock(target, client, &lock_key, &entries, 0)?;
        let orig = sl.count();
        let was = gone.iter().any(|s| sl.has(s));
        if let Some(h) = sl.holders.as_mut() {
            h.retain(|s, _| !gone.contains(s));
        }
        // Sessions about to lose their contender key count as dead too.
        let remaining: Vec<KvEntry> = entries
            .iter()
            .filter(|e| {
                !delete_keys.contains(&e.key)
                    && !e.holder().is_some_and(|s| gone.iter().any(|g| g == s))
            })
            .cloned()
            .collect();
        sl.prune(&remaining);
        let mut ops = Vec::new();
        if let Some(le) = &lock_entry {
            if sl.count() == 0 {
                ops.push(serde_json::json!({"Verb": "delete-cas", "Key": lock_key, "Index": le.modify_index}));
            } else if sl.count() != orig {
                ops.push(serde_json::json!({
                    "Verb": "cas", "Key": lock_key, "Value": sl.encode(), "Flags": SEM_FLAG,
                    "Index": le.modify_index
                }));
            }
        }
        for k in delete_keys {
            if entries.iter().any(|e| &e.key == k) {
                ops.push(serde_json::json!({"Verb": "delete", "Key": k}));
            }
        }
        if ops.is_empty() {
            return Ok(was);
        }
        match client.retry(3, || client.txn(&ops))? {
            Txn::Applied(_) => return Ok(was),
            Txn::Failed(_) => continue, // CAS race: read again
        }
    }
    Err(Error::new(
        ErrorKind::Unavailable,
        format!(
            "{target}: could not update {lock_key} at {} (kept losing check-and-set races)",
            client.addr
        ),
    ))
}
