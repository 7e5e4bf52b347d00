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

use super::http::{b64_decode, b64_encode, wait_for, Client, KvEntry, Txn};
use super::{lost, ms_left, Session, CHECK_INTERVAL, SEM_FLAG};
use crate::backend::{Held, Wait};
use crate::holder::HolderRecord;
use crate::{Error, ErrorKind, Options, Result, Target};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

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
    let lock_key = lock_key_of(&prefix);
    let limit = opts.limit as i64;
    let mut record = HolderRecord::for_self(opts.holder.as_deref());
    record.persist = opts.persist;
    // While waiting the contender's record has `since` 0; the acquisition rewrites it with
    // the time of acquisition, which also makes Consul give the key the acquisition's index
    // (an identical rewrite would leave its ModifyIndex alone).
    let waiting_value = {
        let mut r = record.clone();
        r.since = 0.0;
        b64_encode(r.to_json().as_bytes())
    };
    let mut session = Session::create(&client, target, opts, "delete", wait)?;
    let contender_op = |s: &str, value: &str| {
        serde_json::json!({
            "Verb": "lock", "Key": format!("{prefix}/{s}"), "Value": value,
            "Flags": SEM_FLAG, "Session": s
        })
    };
    let make_contender = |s: &str| -> Result<()> {
        match client.retry(3, || client.txn(&[contender_op(s, &waiting_value)]))? {
            Txn::Applied(_) => Ok(()),
            Txn::Failed(why) => Err(Error::new(
                ErrorKind::Internal,
                format!(
                    "{target}: Consul at {} refused our contender key: {}",
                    client.addr,
                    why.join("; ")
                ),
            )),
        }
    };
    make_contender(&session.id)?;
    let list_prefix = format!("{prefix}/");
    let mut listing: Option<(Vec<KvEntry>, u64)> = None;
    let mut transient_left = 30u32;
    loop {
        wait.check_cancel()?;
        let step: Result<Option<u64>> = (|| {
            if session.renew_if_due()? {
                make_contender(&session.id)?;
            }
            let (entries, index) = match listing.take() {
                Some(l) => l,
                None => client.kv_list(&list_prefix, None)?,
            };
            let (lock_entry, mut sl) = find_lock(target, &client, &lock_key, &entries, limit)?;
            if sl.limit != limit {
                return Err(Error::new(
                    ErrorKind::Invalid,
                    format!(
                        "{target}: semaphore limit conflict: {lock_key} says {}, we asked for {limit} \
                         (all users of a semaphore must agree on its limit)",
                        sl.limit
                    ),
                ));
            }
            sl.prune(&entries);
            if sl.count() as i64 >= limit && !sl.has(&session.id) {
                if wait.is_try_once() || wait.expired() {
                    return Err(full_error(target, wait, limit));
                }
                let block = ms_left(wait, session.block_limit());
                let p = list_prefix.clone();
                let idx = index.max(1);
                match wait_for(wait, &client, move |c| c.kv_list(&p, Some((idx, block))))? {
                    Some(l) => listing = Some(l),
                    None => return Err(full_error(target, wait, limit)),
                }
                return Ok(None);
            }
            sl.holders
                .get_or_insert_with(BTreeMap::new)
                .insert(session.id.clone(), true);
            let cas = serde_json::json!({
                "Verb": "cas", "Key": lock_key, "Value": sl.encode(), "Flags": SEM_FLAG,
                "Index": lock_entry.as_ref().map(|e| e.modify_index).unwrap_or(0)
            });
            record.since = crate::holder::now_secs();
            let value = b64_encode(record.to_json().as_bytes());
            match client.txn(&[cas, contender_op(&session.id, &value)])? {
                Txn::Applied(res) => {
                    let token = res.iter().map(|e| e.modify_index).max().unwrap_or(0);
                    Ok(Some(token))
                }
                Txn::Failed(why) => {
                    if why.iter().any(|w| w.contains("invalid session")) {
                        session.recreate()?;
                        make_contender(&session.id)?;
                    }
                    // Lost a CAS race with another contender: read again, no wait.
                    Ok(None)
                }
            }
        })();
        match step {
            Ok(Some(token)) => {
                record.token = token;
                let (id, ttl) = session.keep();
                return Ok(Box::new(SemHeld {
                    client,
                    target: target.clone(),
                    prefix: prefix.clone(),
                    lock_key,
                    ttl,
                    session: id,
                    record,
                    last_renew: Instant::now(),
                }));
            }
            Ok(None) => {}
            Err(e)
                if e.kind() == ErrorKind::Unavailable && transient_left > 0 && !wait.expired() =>
            {
                transient_left -= 1;
                listing = None;
                wait.pause(Duration::from_millis(250))?;
            }
            Err(e) => return Err(e),
        }
    }
}

fn full_error(target: &Target, wait: &Wait, limit: i64) -> Error {
    let e = wait.busy(target, None);
    Error::new(
        ErrorKind::Busy,
        format!("{} (all {limit} slots are taken)", e.message()),
    )
}

pub(super) struct SemHeld {
    client: Client,
    target: Target,
    prefix: String,
    lock_key: String,
    session: String,
    ttl: Option<Duration>,
    record: HolderRecord,
    last_renew: Instant,
}

impl SemHeld {
    fn contender(&self) -> String {
        format!("{}/{}", self.prefix, self.session)
    }

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
        let list_prefix = format!("{}/", self.prefix);
        let (entries, _) = self
            .client
            .retry(3, || self.client.kv_list(&list_prefix, None))?;
        let contender = self.contender();
        let mine = entries
            .iter()
            .any(|e| e.key == contender && e.holder() == Some(self.session.as_str()));
        if !mine {
            return Err(lost(
                &self.target,
                &format!("our contender key {contender} is gone"),
            ));
        }
        let (_, sl) = find_lock(&self.target, &self.client, &self.lock_key, &entries, 0)?;
        if !sl.has(&self.session) {
            return Err(lost(
                &self.target,
                &format!("{} no longer lists our session as a holder", self.lock_key),
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

impl Held for SemHeld {
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
        let was = remove_holders(
            &self.target,
            &self.client,
            &self.prefix,
            std::slice::from_ref(&self.session),
            &[self.contender()],
        );
        let d = self
            .client
            .retry(3, || self.client.session_destroy(&self.session));
        match was? {
            true => d,
            false => Err(lost(
                &self.target,
                &format!("{} no longer listed our session at release", self.lock_key),
            )),
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
