//! The operator's side of consul locks: status (with the queue of lockfn waiters), list, gc,
//! release and update of persistent locks by name, and consullock-style release by regular
//! expression. Locks of other tools (`consul lock`, consullock) are shown and released too.

use super::api::{KvEntry, Txn};
use super::consullock::{is_consullock_value, parse_iso_utc};
use super::http::Client;
use super::place::Place;
use super::{locate, lost, our_record, queue, semaphore, KEY_PREFIX, LOCK_FLAG, SEM_FLAG};
use crate::backend::{GcScope, HolderView, Status};
use crate::holder::{HolderRecord, Liveness};
use crate::{Error, ErrorKind, Result, Target};
use std::collections::BTreeMap;

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
        if is_consullock_value(&v) {
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

/// The queue of lockfn waiters, oldest first, for `status` (`details.queue`).
fn queue_details(waiting: &[&KvEntry]) -> serde_json::Value {
    waiting
        .iter()
        .map(|e| {
            let mut v = serde_json::json!({
                "session": e.holder().unwrap_or(""),
                "create_index": e.create_index,
            });
            if let Some(r) = our_record(e) {
                v["host"] = r.host.into();
                v["pid"] = r.pid.into();
                if !r.holder.is_empty() {
                    v["holder"] = r.holder.into();
                }
            }
            v
        })
        .collect::<Vec<_>>()
        .into()
}

/// Status of mutex key `e`; `under` holds at least the keys of its queue.
fn mutex_status(client: &Client, target: &Target, e: &KvEntry, under: &[KvEntry]) -> Status {
    let view = queue::View::of(
        &e.key,
        under
            .iter()
            .filter(|q| q.key.starts_with(&queue::prefix(&e.key)))
            .cloned()
            .collect(),
    );
    let waiting: Vec<&KvEntry> = view.waiting().collect();
    let mut st = Status::new(target);
    st.details.insert("waiting".into(), waiting.len().into());
    st.details.insert("queue".into(), queue_details(&waiting));
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
    // lockfn's waiters in their order (contenders of other tools are in `waiting` only).
    let mut queued: Vec<&KvEntry> = entries
        .iter()
        .filter(|e| e.key != lock_key && e.holder().is_some_and(|s| !sl.has(s)))
        .filter(|e| our_record(e).is_some_and(|r| r.since == 0.0))
        .collect();
    queued.sort_by_key(|e| e.create_index);
    st.details.insert("queue".into(), queue_details(&queued));
    Ok(st)
}

/// Status of `key`: a mutex key, a semaphore's `.lock`, or a semaphore prefix. Exact-key reads
/// first: Consul answers those with 403 when the token may not read the key (a listing would
/// silently leave it out).
fn status_of(client: &Client, target: &Target, key: &str) -> Result<Status> {
    let (exact, _) = client.retry(6, || client.kv_get(key, None))?;
    if let Some(e) = exact {
        if e.flags == SEM_FLAG && key.ends_with("/.lock") {
            let prefix = semaphore::prefix_of(key);
            let (under, _) = client.retry(6, || client.kv_list(&format!("{prefix}/"), None))?;
            return sem_status(client, target, prefix, &under);
        }
        let (under, _) = client.retry(6, || client.kv_list(&queue::prefix(key), None))?;
        return Ok(mutex_status(client, target, &e, &under));
    }
    let lock_key = semaphore::lock_key_of(key);
    match client.retry(6, || client.kv_get(&lock_key, None))? {
        (Some(e), _) if e.flags == SEM_FLAG => {
            let (under, _) = client.retry(6, || client.kv_list(&format!("{key}/"), None))?;
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
    if queue::is_entry(&e.key) {
        return false;
    }
    e.flags == LOCK_FLAG || e.holder().is_some() || our_record(e).is_some()
}

/// Force-release a mutex key held by `session`: delete the key if that session still holds
/// it (no lock-delay: the session no longer holds anything when it is destroyed), then
/// destroy the session. Ok(false) when the key had moved on.
fn force_release_key(client: &Client, key: &str, session: &str) -> Result<bool> {
    let r = client.retry(6, || {
        client.txn(&[
            serde_json::json!({"Verb": "check-session", "Key": key, "Session": session}),
            serde_json::json!({"Verb": "delete", "Key": key}),
        ])
    })?;
    client.retry(6, || client.session_destroy(session))?;
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
    let (entries, _) = client.retry(6, || client.kv_list(&format!("{prefix}/"), None))?;
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
        client.retry(6, || client.session_destroy(s))?;
    }
    Ok(gone.len() as u32)
}

pub(super) fn status(target: &Target) -> Result<Status> {
    let (client, key) = locate(target)?;
    status_of(&client, target, &key)
}

pub(super) fn list(prefix: &Target) -> Result<Vec<Status>> {
    let (client, key) = locate(prefix)?;
    let key = if key.is_empty() && !prefix.is_url() {
        KEY_PREFIX.to_string()
    } else {
        key
    };
    let (entries, _) = client.retry(6, || client.kv_list(&key, None))?;
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
            out.push(mutex_status(&client, &t, e, &entries));
        }
    }
    out.sort_by(|a, b| a.target.cmp(&b.target));
    Ok(out)
}

pub(super) fn gc(scope: &GcScope) -> Result<u32> {
    let target = Target::parse_allow_empty("consul:")?;
    let (client, _) = locate(&target)?;
    let prefix = format!("{KEY_PREFIX}{}", scope.prefix);
    let (entries, _) = client.retry(6, || client.kv_list(&prefix, None))?;
    let sems = sem_prefixes(&entries);
    let dead =
        |e: &KvEntry| our_record(e).is_some_and(|r| !r.persist && r.liveness() == Liveness::Dead);
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
                let r = client.retry(6, || {
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

pub(super) fn release_named(target: &Target, force: bool) -> Result<u32> {
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
        let (e, _) = client.retry(6, || client.kv_get(&key, None))?;
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

pub(super) fn update_named(target: &Target) -> Result<()> {
    let (client, key) = locate(target)?;
    let st = status_of(&client, target, &key)?;
    let sessions: Vec<String> = if st.limit.unwrap_or(1) > 1 {
        let prefix = semaphore::prefix_of(&key).to_string();
        let (entries, _) = client.retry(6, || client.kv_list(&format!("{prefix}/"), None))?;
        entries
            .iter()
            .filter(|e| our_record(e).is_some_and(|r| r.persist))
            .filter_map(|e| e.holder().map(str::to_string))
            .collect()
    } else {
        let (e, _) = client.retry(6, || client.kv_get(&key, None))?;
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
        if !client.retry(6, || client.session_renew(&s))? {
            return Err(lost(
                target,
                &format!("its Consul session {s} no longer exists"),
            ));
        }
    }
    Ok(())
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
pub(super) fn release_matching(within: &Target, pattern: &str) -> Result<Vec<String>> {
    let re = regex_lite::Regex::new(&format!("^(?:{pattern})$")).map_err(|e| {
        Error::new(
            ErrorKind::Invalid,
            format!(
                "invalid regular expression '{}': {e}",
                crate::target::printable(pattern)
            ),
        )
    })?;
    let (client, _) = super::locate(within)?;
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
    let (entries, _) = client.retry(6, || client.kv_list(&listed, None))?;
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
        if sems.iter().any(|p| e.key.starts_with(&format!("{p}/")))
            || queue::is_entry(&e.key)
            || !matches(&e.key)
        {
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
    fn regex_prefix() {
        assert_eq!(literal_prefix("lockfn/jobs-.*"), "lockfn/jobs");
        assert_eq!(literal_prefix("^a/b/c$"), "a/b/c");
        assert_eq!(literal_prefix(".*"), "");
    }
}
