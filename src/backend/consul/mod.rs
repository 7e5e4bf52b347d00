//! The consul backend: `consul:NAME` (key `lockfn/NAME`) and `consul://host:port/KEY` (exactly
//! KEY), over Consul's HTTP API with sessions and KV, interoperable with HashiCorp's
//! `api.Lock` / `api.Semaphore` (and so `consul lock [-n N]`) and with consullock.
//!
//! - [`config`]: the agent address, token and TLS, from Consul's own environment variables.
//! - [`http`]: a small blocking client (ureq), blocking queries, transactions.
//! - [`mutex`]: limit 1, as api.Lock (key `PREFIX/.lock` for `consul lock PREFIX`).
//! - [`semaphore`]: limit N, as api.Semaphore (`consul lock -n N PREFIX`).
//!
//! Sessions have a TTL (default 15 s, 10–86400 s) and are renewed by `update()` every TTL/2
//! (as api.Lock does), which also checks that the key is still ours; `check()`, wanted every
//! second, only reads the key, so that a loss (an operator destroying the session) is seen
//! within about a second. A persistent lock
//! (`lockfn acquire --persist`) without an explicit ttl gets a session without TTL, as
//! consullock's, which lives until `lockfn release` (or its node fails).

pub mod config;
pub mod http;
mod mutex;
mod place;
mod semaphore;

use self::config::Config;
use self::http::{Client, KvEntry, Txn, MAX_BLOCK};
use super::{Backend, GcScope, Held, HolderView, Status, Wait};
use crate::holder::{HolderRecord, Liveness};
use crate::target::Located;
use crate::{Error, ErrorKind, Options, Result, Target};
use place::Place;
pub(crate) use place::KEY_PREFIX;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// `api.LockFlagValue`: the flags of a key used as a mutex.
pub(crate) const LOCK_FLAG: u64 = 0x2ddc_cbc0_58a5_0c18;
/// `api.SemaphoreFlagValue`: the flags of a semaphore's keys.
pub(crate) const SEM_FLAG: u64 = 0xe0f6_9a2b_aa41_4de0;
/// Session TTL when the caller gives none (api.Lock's DefaultLockSessionTTL).
pub const DEFAULT_TTL: Duration = Duration::from_secs(15);
pub const MIN_TTL: Duration = Duration::from_secs(10);
pub const MAX_TTL: Duration = Duration::from_secs(86400);
/// Consul's cap on a session's lock-delay.
pub const MAX_LOCK_DELAY: Duration = Duration::from_secs(60);
/// How often a held lock wants `check()` (a loss seen within ~1 s); `update()` renews at TTL/2.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(1);

pub struct ConsulBackend;

/// The client and key of a consul target.
fn locate(target: &Target) -> Result<(Client, String)> {
    let Place { addr, key } = target.place::<Place>()?;
    let cfg = Config::from_env(addr.as_deref())?;
    let client = Client::new(&cfg)?;
    // status, list, gc, release, update: bounded by LOCKFN_OP_TIMEOUT; an acquisition
    // sets its wait's own deadline.
    client.set_deadline(Some(super::op_deadline()?));
    Ok((client, key.clone()))
}

/// The session TTL asked for: None (no TTL) only for a persistent lock without explicit ttl.
fn session_ttl(target: &Target, opts: &Options) -> Result<Option<Duration>> {
    match opts.ttl {
        None if opts.persist => Ok(None),
        None => Ok(Some(DEFAULT_TTL)),
        Some(t) if (MIN_TTL..=MAX_TTL).contains(&t) => Ok(Some(t)),
        Some(t) => Err(Error::new(
            ErrorKind::Invalid,
            format!(
                "{target}: ttl {} s is outside what Consul accepts for a session (10 to 86400 s)",
                t.as_secs_f64()
            ),
        )),
    }
}

fn lock_delay(target: &Target, opts: &Options) -> Result<Option<Duration>> {
    match opts.lock_delay {
        Some(d) if d > MAX_LOCK_DELAY => Err(Error::new(
            ErrorKind::Invalid,
            format!(
                "{target}: lock-delay {} s is more than Consul's maximum of 60 s",
                d.as_secs_f64()
            ),
        )),
        d => Ok(d),
    }
}

/// A session we created and destroy again unless [`Session::keep`] is called.
pub(super) struct Session {
    client: Client,
    pub id: String,
    pub ttl: Option<Duration>,
    body: serde_json::Value,
    last_renew: Instant,
    armed: bool,
    /// Until when a failed wait may destroy the session again.
    cleanup_deadline: Option<Instant>,
}

impl Session {
    fn create(
        client: &Client,
        target: &Target,
        opts: &Options,
        behavior: &str,
        wait: &Wait,
    ) -> Result<Session> {
        let ttl = session_ttl(target, opts)?;
        let delay = lock_delay(target, opts)?;
        let mut body = serde_json::json!({
            "Name": format!("lockfn {} (pid {} on {})",
                target.resource(),
                std::process::id(), crate::holder::hostname()),
            "Behavior": behavior,
        });
        if let Some(t) = ttl {
            body["TTL"] = http::go_duration(t).into();
        }
        if let Some(d) = delay {
            body["LockDelay"] = http::go_duration(d).into();
        }
        // Retried only within the caller's wait: a try-once or short timeout against an
        // unreachable agent answers at once, and a cancel stops the backoff.
        let id = client
            .retry_within(3, wait, || client.session_create(&body))
            .map_err(|e| e.with_context(target))?;
        Ok(Session {
            client: client.clone(),
            id,
            ttl,
            body,
            last_renew: Instant::now(),
            armed: true,
            cleanup_deadline: wait.cleanup_deadline(),
        })
    }

    /// Make a new session after ours vanished.
    fn recreate(&mut self) -> Result<()> {
        let _ = self.client.session_destroy(&self.id);
        self.id = self
            .client
            .retry(3, || self.client.session_create(&self.body))?;
        self.last_renew = Instant::now();
        Ok(())
    }

    /// Renew while waiting. Ok(true) when the session had vanished and was made anew.
    fn renew_if_due(&mut self) -> Result<bool> {
        let Some(ttl) = self.ttl else {
            return Ok(false);
        };
        if self.last_renew.elapsed() < ttl / 3 {
            return Ok(false);
        }
        let alive = self
            .client
            .retry(3, || self.client.session_renew(&self.id))?;
        if alive {
            self.last_renew = Instant::now();
            Ok(false)
        } else {
            self.recreate()?;
            Ok(true)
        }
    }

    /// Longest blocking query while waiting: we must come back to renew.
    fn block_limit(&self) -> Duration {
        match self.ttl {
            Some(t) => (t / 3).min(MAX_BLOCK),
            None => MAX_BLOCK,
        }
    }

    /// Keep the session (the lock is held): (id, ttl).
    fn keep(mut self) -> (String, Option<Duration>) {
        self.armed = false;
        (std::mem::take(&mut self.id), self.ttl)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if self.armed {
            // Cancelled, timed out or failed: leave nothing behind (a semaphore session's
            // contender key goes with it: behavior delete). Bounded: a session left behind by
            // a silent agent ends with its TTL.
            self.client.set_deadline(self.cleanup_deadline);
            let _ = self
                .client
                .retry(2, || self.client.session_destroy(&self.id));
        }
    }
}

/// How long one blocking query may last: the time left (at least 1 s: Consul reads 0 as its
/// 5-minute default; our own deadline is kept by [`http::wait_for`]), at most `limit`.
pub(super) fn ms_left(wait: &Wait, limit: Duration) -> Duration {
    let d = match wait.remaining() {
        Some(r) => r.min(limit),
        None => limit,
    };
    d.max(Duration::from_secs(1))
}

pub(super) fn lost(target: &Target, why: &str) -> Error {
    Error::new(ErrorKind::Lost, format!("lock {target} was lost: {why}"))
}

/// Our holder record, if the key's value is one.
pub(super) fn our_record(e: &KvEntry) -> Option<HolderRecord> {
    let bytes = e.bytes()?;
    let mut r: HolderRecord = serde_json::from_slice(&bytes).ok()?;
    if r.token == 0 {
        // Written before the acquisition's index was known: the index of that write is it.
        r.token = e.modify_index;
    }
    Some(r)
}

pub(super) fn busy_error(
    target: &Target,
    wait: &Wait,
    held: Option<&KvEntry>,
    extra: &str,
) -> Error {
    match held {
        Some(e) => match our_record(e) {
            Some(r) => {
                let b = wait.busy(target, Some(&r));
                Error::new(ErrorKind::Busy, format!("{}{extra}", b.message()))
            }
            None => {
                let b = wait.busy(target, None);
                Error::new(
                    ErrorKind::Busy,
                    format!(
                        "{} (held by Consul session {}, not a lockfn holder){extra}",
                        b.message(),
                        e.holder().unwrap_or("?")
                    ),
                )
            }
        },
        None => {
            let b = wait.busy(target, None);
            Error::new(ErrorKind::Busy, format!("{}{extra}", b.message()))
        }
    }
}

pub(super) fn conflict_error(target: &Target, e: &KvEntry) -> Error {
    if e.flags == SEM_FLAG {
        let limit = e
            .bytes()
            .and_then(|b| serde_json::from_slice::<semaphore::SemLock>(&b).ok())
            .map(|l| format!(" with limit {}", l.limit))
            .unwrap_or_default();
        return Error::new(
            ErrorKind::Invalid,
            format!(
                "{target}: key {} is a semaphore's .lock{limit} (`consul lock -n N`): acquire it \
                 with the same --limit",
                e.key
            ),
        );
    }
    Error::new(
        ErrorKind::Invalid,
        format!(
            "{target}: key {} exists and is not a lock (flags {:#x}, no session); lockfn, like \
             `consul lock`, refuses to take over a key used for something else",
            e.key, e.flags
        ),
    )
}

/// A holder record for a session that is not a lockfn holder (`consul lock`, consullock).
fn foreign_record(client: &Client, e: &KvEntry, session: &str) -> HolderRecord {
    let info = client
        .session_info(session)
        .ok()
        .flatten()
        .unwrap_or_default();
    let mut text = if info.name.is_empty() {
        format!("Consul session {session}")
    } else {
        format!("{} (Consul session {session})", info.name)
    };
    let mut since = 0.0;
    if let Some(v) = e
        .bytes()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
    {
        if v.get("session").is_some() && v.get("created").is_some() {
            text = format!("consullock (Consul session {session})");
            if let Some(m) = v.get("metadata").filter(|m| !m.is_null()) {
                text.push_str(&format!(" metadata {m}"));
            }
            since = v
                .get("created")
                .and_then(|c| c.as_str())
                .and_then(parse_iso_utc)
                .unwrap_or(0.0);
        }
    }
    HolderRecord {
        host: if info.node.is_empty() {
            "?".to_string()
        } else {
            info.node
        },
        pid: 0,
        start_time: 0,
        boot_id: String::new(),
        since,
        token: e.modify_index,
        holder: crate::holder::truncate(&text, crate::holder::MAX_HOLDER_TEXT).to_string(),
        persist: false,
        shared: false,
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.ffffff]` (UTC, consullock's `created`) to Unix seconds.
fn parse_iso_utc(s: &str) -> Option<f64> {
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let time = time.trim_end_matches('Z');
    let mut t = time.split(':');
    let (hh, mm) = (
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<i64>().ok()?,
    );
    let ss: f64 = t.next()?.parse().ok()?;
    // Bounds first: the text comes from a service and must not overflow the arithmetic.
    if !(1..=9999).contains(&y)
        || !(1..=12).contains(&m)
        || !(1..=31).contains(&day)
        || !(0..24).contains(&hh)
        || !(0..60).contains(&mm)
        || !(0.0..61.0).contains(&ss)
    {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = if y2 >= 0 { y2 } else { y2 - 399 } / 400;
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    Some((days * 86400 + hh * 3600 + mm * 60) as f64 + ss)
}

fn holder_view(client: &Client, e: &KvEntry, session: &str) -> HolderView {
    match our_record(e) {
        Some(r) => HolderView::from(r),
        None => {
            let r = foreign_record(client, e, session);
            HolderView {
                record: r,
                state: Liveness::Remote,
                expires: None,
            }
        }
    }
}

fn mutex_status(client: &Client, target: &Target, e: &KvEntry) -> Status {
    let mut st = Status::new(target);
    st.limit = Some(1);
    st.details.insert("key".into(), e.key.clone().into());
    st.details
        .insert("modify_index".into(), e.modify_index.into());
    st.details.insert("lock_index".into(), e.lock_index.into());
    if e.flags != LOCK_FLAG {
        st.details
            .insert("flags".into(), format!("{:#x}", e.flags).into());
    }
    match e.holder() {
        Some(s) => {
            st.held = true;
            st.available = Some(0);
            st.details.insert("session".into(), s.into());
            st.holders.push(holder_view(client, e, s));
        }
        None => st.available = Some(1),
    }
    st
}

/// Status of the semaphore at `prefix`, from a listing of `prefix/`.
fn sem_status(
    client: &Client,
    target: &Target,
    prefix: &str,
    entries: &[KvEntry],
) -> Result<Status> {
    let lock_key = semaphore::lock_key_of(prefix);
    let (le, mut sl) = semaphore::find_lock(target, client, &lock_key, entries, 0)?;
    sl.prune(entries);
    let mut st = Status::new(target);
    st.limit = Some(sl.limit.clamp(0, u32::MAX as i64) as u32);
    st.available = Some(sl.limit.saturating_sub(sl.count() as i64));
    st.held = sl.count() > 0;
    st.details.insert("key".into(), lock_key.clone().into());
    if let Some(le) = &le {
        st.details
            .insert("modify_index".into(), le.modify_index.into());
    }
    let mut sessions = Vec::new();
    for s in sl.holder_ids() {
        let ck = format!("{prefix}/{s}");
        if let Some(c) = entries.iter().find(|e| e.key == ck) {
            st.holders.push(holder_view(client, c, &s));
        }
        sessions.push(serde_json::Value::from(s));
    }
    let waiting = entries
        .iter()
        .filter(|e| e.key != lock_key && e.holder().is_some_and(|s| !sl.has(s)))
        .count();
    st.details.insert("sessions".into(), sessions.into());
    st.details.insert("waiting".into(), waiting.into());
    Ok(st)
}

/// Status of `key`: a mutex key, a semaphore's `.lock`, or a semaphore prefix. Exact-key reads
/// first: Consul answers those with 403 when the token may not read the key (a listing would
/// silently leave it out).
fn status_of(client: &Client, target: &Target, key: &str) -> Result<Status> {
    let (exact, _) = client.kv_get(key, None)?;
    if let Some(e) = exact {
        if e.flags == SEM_FLAG && key.ends_with("/.lock") {
            let prefix = semaphore::prefix_of(key);
            let (under, _) = client.kv_list(&format!("{prefix}/"), None)?;
            return sem_status(client, target, prefix, &under);
        }
        return Ok(mutex_status(client, target, &e));
    }
    let lock_key = semaphore::lock_key_of(key);
    match client.kv_get(&lock_key, None)? {
        (Some(e), _) if e.flags == SEM_FLAG => {
            let (under, _) = client.kv_list(&format!("{key}/"), None)?;
            sem_status(client, target, key, &under)
        }
        _ => Ok(Status::new(target)),
    }
}

/// A target for `key` in the form of `like` (same address; `consul:NAME` when the key is
/// under `lockfn/` and `like` was not a URL).
fn target_for(like: &Target, key: &str) -> Option<Target> {
    let place = like.place::<Place>().ok()?;
    let located = place.sibling(like.is_url(), key)?;
    Some(Target::from_located(like.service(), located))
}

/// Semaphore prefixes in a listing: keys `P/.lock` with the semaphore flags.
fn sem_prefixes(entries: &[KvEntry]) -> Vec<String> {
    entries
        .iter()
        .filter(|e| e.flags == SEM_FLAG && e.key.ends_with("/.lock"))
        .map(|e| semaphore::prefix_of(&e.key).to_string())
        .collect()
}

fn is_lock_entry(e: &KvEntry) -> bool {
    e.flags == LOCK_FLAG || e.holder().is_some() || our_record(e).is_some()
}

/// Force-release a mutex key held by `session`: delete the key if that session still holds
/// it (no lock-delay: the session no longer holds anything when it is destroyed), then
/// destroy the session. Ok(false) when the key had moved on.
fn force_release_key(client: &Client, key: &str, session: &str) -> Result<bool> {
    let r = client.retry(3, || {
        client.txn(&[
            serde_json::json!({"Verb": "check-session", "Key": key, "Session": session}),
            serde_json::json!({"Verb": "delete", "Key": key}),
        ])
    })?;
    client.retry(3, || client.session_destroy(session))?;
    Ok(matches!(r, Txn::Applied(_)))
}

/// Release semaphore slots at `prefix` held by sessions for which `pick` says yes.
fn release_sem_slots(
    client: &Client,
    target: &Target,
    prefix: &str,
    pick: &dyn Fn(&KvEntry) -> bool,
) -> Result<u32> {
    let lock_key = semaphore::lock_key_of(prefix);
    let (entries, _) = client.kv_list(&format!("{prefix}/"), None)?;
    let (_, mut sl) = semaphore::find_lock(target, client, &lock_key, &entries, 0)?;
    sl.prune(&entries);
    let mut gone = Vec::new();
    let mut keys = Vec::new();
    for s in sl.holder_ids() {
        let ck = format!("{prefix}/{s}");
        if let Some(c) = entries.iter().find(|e| e.key == ck) {
            if pick(c) {
                gone.push(s);
                keys.push(ck);
            }
        }
    }
    if gone.is_empty() {
        // Still tidy up: dead holders, an empty .lock.
        semaphore::remove_holders(target, client, prefix, &[], &[])?;
        return Ok(0);
    }
    semaphore::remove_holders(target, client, prefix, &gone, &keys)?;
    for s in &gone {
        client.retry(3, || client.session_destroy(s))?;
    }
    Ok(gone.len() as u32)
}

impl Backend for ConsulBackend {
    fn scheme(&self) -> &'static str {
        "consul"
    }

    fn allows_slash(&self) -> bool {
        true
    }

    fn locate(&self, _text: &str, name: &str) -> Result<Located> {
        Ok(Place::named(name))
    }

    fn locate_url(&self, text: &str, rest: &str) -> Result<Located> {
        Place::from_url(text, rest)
    }

    fn release_matching(&self, within: &Target, pattern: &str) -> Result<Vec<String>> {
        release_matching(within, pattern)
    }

    /// A persistent lock's session: no TTL unless one was asked for; every session is also
    /// tied to its agent node's `serfHealth` check (Consul's default session checks).
    fn persistent_lifetime(&self, target: &Target, opts: &Options) -> super::Lifetime {
        match opts.ttl {
            Some(ttl) => super::Lifetime::expiring(
                ttl,
                format!(
                    "{} s after the last renewal, when Consul invalidates its session (Consul \
                     may take up to twice that): renew it with `lockfn update {target}`, or \
                     leave `lockfn keep` behind (acquire --keep); or when released, or when \
                     the agent's node fails its health check",
                    ttl.as_secs()
                ),
            ),
            None => super::Lifetime::until_released(
                ", or when Consul invalidates its session: it has no TTL, but it is tied to \
                 the agent node's health check (serfHealth), so it ends if that node fails or \
                 leaves the cluster",
            ),
        }
    }

    fn acquire(&self, target: &Target, opts: &Options, wait: &Wait) -> Result<Box<dyn Held>> {
        if opts.shared {
            return Err(Error::new(
                ErrorKind::Invalid,
                format!(
                    "{target}: shared (read) locks are not available on consul: (Consul's lock \
                     recipes have no reader/writer mode); use --limit N, or zk:"
                ),
            ));
        }
        let (client, key) = locate(target)?;
        // Every request of the acquisition (session set-up, each read and transaction) ends
        // by the wait's hard deadline; the session's clean-up by its cleanup deadline.
        client.set_deadline(wait.hard_deadline());
        let r = if opts.limit > 1 {
            semaphore::acquire(client, target, &key, opts, wait)
        } else {
            mutex::acquire(client, target, &key, opts, wait)
        };
        // Every message names the lock.
        let name = target.to_string();
        r.map_err(|e| {
            if e.message().contains(&name) {
                e
            } else {
                e.with_context(&name)
            }
        })
    }

    fn status(&self, target: &Target) -> Result<Status> {
        let (client, key) = locate(target)?;
        status_of(&client, target, &key)
    }

    fn list(&self, prefix: &Target) -> Result<Vec<Status>> {
        let (client, key) = locate(prefix)?;
        let key = if key.is_empty() && !prefix.is_url() {
            KEY_PREFIX.to_string()
        } else {
            key
        };
        let (entries, _) = client.kv_list(&key, None)?;
        let sems = sem_prefixes(&entries);
        let mut out = Vec::new();
        for p in &sems {
            let tkey = if prefix.is_url() {
                semaphore::lock_key_of(p)
            } else {
                p.clone()
            };
            let Some(t) = target_for(prefix, &tkey) else {
                continue;
            };
            let under: Vec<KvEntry> = entries
                .iter()
                .filter(|e| e.key.starts_with(&format!("{p}/")))
                .cloned()
                .collect();
            out.push(sem_status(&client, &t, p, &under)?);
        }
        for e in &entries {
            let in_sem = sems.iter().any(|p| e.key.starts_with(&format!("{p}/")));
            if in_sem || e.flags == SEM_FLAG || !is_lock_entry(e) {
                continue;
            }
            if let Some(t) = target_for(prefix, &e.key) {
                out.push(mutex_status(&client, &t, e));
            }
        }
        out.sort_by(|a, b| a.target.cmp(&b.target));
        Ok(out)
    }

    fn gc(&self, scope: &GcScope) -> Result<u32> {
        let target = Target::parse_allow_empty("consul:")?;
        let (client, _) = locate(&target)?;
        let prefix = format!("{KEY_PREFIX}{}", scope.prefix);
        let (entries, _) = client.kv_list(&prefix, None)?;
        let sems = sem_prefixes(&entries);
        let dead = |e: &KvEntry| {
            our_record(e).is_some_and(|r| !r.persist && r.liveness() == Liveness::Dead)
        };
        let mut removed = 0;
        for p in &sems {
            let t = target_for(&target, p).unwrap_or_else(|| target.clone());
            removed += release_sem_slots(&client, &t, p, &dead)?;
        }
        for e in &entries {
            if sems.iter().any(|p| e.key.starts_with(&format!("{p}/"))) || e.flags != LOCK_FLAG {
                continue;
            }
            match e.holder() {
                // Released but left behind (a holder killed mid-release, `consul lock`).
                None => {
                    let r = client.retry(3, || {
                        client.txn(&[serde_json::json!({
                            "Verb": "delete-cas", "Key": e.key, "Index": e.modify_index
                        })])
                    })?;
                    if matches!(r, Txn::Applied(_)) {
                        removed += 1;
                    }
                }
                // Held by a process of this host that is provably dead: free it now rather
                // than after its session TTL.
                Some(s) if dead(e) => {
                    if force_release_key(&client, &e.key, s)? {
                        removed += 1;
                    }
                }
                Some(_) => {}
            }
        }
        Ok(removed)
    }

    fn release_named(&self, target: &Target, force: bool) -> Result<u32> {
        let (client, key) = locate(target)?;
        let st = status_of(&client, target, &key)?;
        let persistent = |e: &KvEntry| our_record(e).is_some_and(|r| r.persist);
        let released = if st.limit.unwrap_or(1) > 1
            || st.details.get("key").and_then(|k| k.as_str()) != Some(key.as_str())
        {
            // A semaphore (named by its prefix or its .lock).
            let prefix = semaphore::prefix_of(&key).to_string();
            if st.holders.is_empty() && st.limit.is_none() {
                0
            } else if force {
                release_sem_slots(&client, target, &prefix, &|_| true)?
            } else {
                release_sem_slots(&client, target, &prefix, &persistent)?
            }
        } else {
            let (e, _) = client.kv_get(&key, None)?;
            match e {
                Some(e) => match e.holder() {
                    Some(s) if force || persistent(&e) => {
                        u32::from(force_release_key(&client, &key, s)?)
                    }
                    _ => 0,
                },
                None => 0,
            }
        };
        if released == 0 {
            let why = if !st.held {
                "nothing holds it"
            } else if force {
                "its holder changed meanwhile"
            } else {
                "it has no persistent lockfn holder (a lock held by a running process is \
                 released by that process; --force takes it anyway)"
            };
            return Err(Error::new(
                ErrorKind::NotHeld,
                format!("{target} was not released: {why}"),
            ));
        }
        Ok(released)
    }

    fn update_named(&self, target: &Target) -> Result<()> {
        let (client, key) = locate(target)?;
        let st = status_of(&client, target, &key)?;
        let sessions: Vec<String> = if st.limit.unwrap_or(1) > 1 {
            let prefix = semaphore::prefix_of(&key).to_string();
            let (entries, _) = client.kv_list(&format!("{prefix}/"), None)?;
            entries
                .iter()
                .filter(|e| our_record(e).is_some_and(|r| r.persist))
                .filter_map(|e| e.holder().map(str::to_string))
                .collect()
        } else {
            let (e, _) = client.kv_get(&key, None)?;
            e.filter(|e| our_record(e).is_some_and(|r| r.persist))
                .and_then(|e| e.holder().map(str::to_string))
                .into_iter()
                .collect()
        };
        if sessions.is_empty() {
            return Err(Error::new(
                ErrorKind::NotHeld,
                format!("{target} has no persistent lockfn holder to update"),
            ));
        }
        for s in sessions {
            if !client.retry(3, || client.session_renew(&s))? {
                return Err(lost(
                    target,
                    &format!("its Consul session {s} no longer exists"),
                ));
            }
        }
        Ok(())
    }
}

/// The literal start of a regular expression (what a key must start with to match it):
/// characters up to the first one that is not plain.
fn literal_prefix(pattern: &str) -> String {
    let p = pattern.strip_prefix('^').unwrap_or(pattern);
    p.chars()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '_'))
        .collect()
}

/// Operator release by regular expression (consullock's `unlock -r`): every held lock under
/// `within` whose name as the user writes it (`svc/a` for `consul:svc/a`; the key for a
/// `consul://` URL) or whose whole key matches `pattern` is released as with `--force`.
/// Returns the released locks' canonical texts, sorted.
fn release_matching(within: &Target, pattern: &str) -> Result<Vec<String>> {
    let re = regex_lite::Regex::new(&format!("^(?:{pattern})$")).map_err(|e| {
        Error::new(
            ErrorKind::Invalid,
            format!(
                "invalid regular expression '{}': {e}",
                crate::target::printable(pattern)
            ),
        )
    })?;
    let (client, _) = locate(within)?;
    let root = if within.is_url() { "" } else { KEY_PREFIX };
    let matches = |key: &str| {
        re.is_match(key) || key.strip_prefix(root).is_some_and(|name| re.is_match(name))
    };
    let literal = literal_prefix(pattern);
    let listed = if literal.starts_with(root) {
        literal
    } else {
        format!("{root}{literal}")
    };
    let (entries, _) = client.kv_list(&listed, None)?;
    let shown =
        |key: &str| target_for(within, key).map_or_else(|| key.to_string(), |t| t.canonical());
    let sems = sem_prefixes(&entries);
    let mut released = BTreeMap::new();
    for p in &sems {
        let lk = semaphore::lock_key_of(p);
        if matches(&lk) || matches(p) {
            let t = target_for(within, &lk).unwrap_or_else(|| within.clone());
            if release_sem_slots(&client, &t, p, &|_| true)? > 0 {
                released.insert(shown(&lk), ());
            }
        }
    }
    for e in &entries {
        if sems.iter().any(|p| e.key.starts_with(&format!("{p}/"))) || !matches(&e.key) {
            continue;
        }
        if let Some(s) = e.holder() {
            if force_release_key(&client, &e.key, s)? {
                released.insert(shown(&e.key), ());
            }
        }
    }
    Ok(released.into_keys().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_hashicorps() {
        assert_eq!(LOCK_FLAG, 3304740253564472344);
        assert_eq!(SEM_FLAG, 16210313421097356768);
    }

    #[test]
    fn iso_dates() {
        assert_eq!(parse_iso_utc("1970-01-01T00:00:00"), Some(0.0));
        assert_eq!(parse_iso_utc("2021-03-04T05:06:07.5"), Some(1614834367.5));
        assert_eq!(parse_iso_utc("garbage"), None);
        assert_eq!(parse_iso_utc("9999999999999999-01-01T00:00:00"), None);
    }

    #[test]
    fn regex_prefix() {
        assert_eq!(literal_prefix("lockfn/jobs-.*"), "lockfn/jobs");
        assert_eq!(literal_prefix("^a/b/c$"), "a/b/c");
        assert_eq!(literal_prefix(".*"), "");
    }

    #[test]
    fn ttl_bounds() {
        let t = Target::parse("consul:x").unwrap();
        let mut o = Options::default();
        assert_eq!(session_ttl(&t, &o).unwrap(), Some(DEFAULT_TTL));
        o.ttl = Some(Duration::from_secs(9));
        assert_eq!(session_ttl(&t, &o).unwrap_err().kind(), ErrorKind::Invalid);
        o.ttl = Some(Duration::from_secs(86401));
        assert_eq!(session_ttl(&t, &o).unwrap_err().kind(), ErrorKind::Invalid);
        o.ttl = Some(Duration::from_secs(10));
        assert!(session_ttl(&t, &o).is_ok());
        o.lock_delay = Some(Duration::from_secs(61));
        assert_eq!(lock_delay(&t, &o).unwrap_err().kind(), ErrorKind::Invalid);
    }
}
