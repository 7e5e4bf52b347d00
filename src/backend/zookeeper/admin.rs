//! Locks by name rather than by handle: who holds one (status), every lock under a prefix
//! (list), removing what dead holders of this host left (gc), and ending or renewing a
//! persistent lock (release, update).

use super::client::{Session, ZkError};
use super::ctx::Ctx;
use super::names::{contenders, is_lease_name, is_lock_child, parse_record};
use super::place::{Place, ROOT};
use super::proto;
use super::{MAX_WALK, SEM_LOCK_SUFFIX};
use crate::backend::{GcScope, HolderView, Status};
use crate::holder::{hostname, Liveness};
use crate::{Error, ErrorKind, Result, Target};
use std::sync::Arc;

/// Where a walk for the `zk:` names starting with `prefix` begins: the deepest complete
/// directory of the prefix.
fn walk_root(prefix: &str) -> String {
    match prefix.rsplit_once('/') {
        Some((dir, _)) if !dir.is_empty() => format!("{ROOT}/{dir}"),
        _ => ROOT.to_string(),
    }
}

/// Every lock node under `root` (itself included), by absolute path, with its children.
fn walk(s: &Session, cx: &Ctx, root: &str) -> Result<Vec<(String, Vec<String>)>> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_string()];
    let mut visited = 0;
    while let Some(p) = stack.pop() {
        visited += 1;
        if visited > MAX_WALK {
            break;
        }
        let children = match s.get_children(&p, None, cx.op_budget()) {
            Ok(c) => c,
            Err(ZkError::Api(proto::ERR_NO_NODE)) => continue,
            Err(e) => return Err(cx.err("listing locks", e)),
        };
        let is_lock = children.iter().any(|c| is_lock_child(c));
        for c in &children {
            if !is_lock_child(c) {
                stack.push(if p == "/" {
                    format!("/{c}")
                } else {
                    format!("{p}/{c}")
                });
            }
        }
        if is_lock && !p.ends_with(SEM_LOCK_SUFFIX) {
            out.push((p, children));
        }
    }
    out.sort();
    Ok(out)
}

/// `status` of the lock node `path`, from its `children` when the caller listed them.
fn status_of(
    s: &Session,
    cx: &Ctx,
    target: &Target,
    path: &str,
    children: Option<Vec<String>>,
) -> Result<Status> {
    let mut st = Status::new(target);
    let children = match children {
        Some(c) => c,
        None => match s.get_children(path, None, cx.op_budget()) {
            Ok(c) => c,
            Err(ZkError::Api(proto::ERR_NO_NODE)) => return Ok(st),
            Err(e) => return Err(cx.err("reading the lock", e)),
        },
    };
    st.details.insert("path".into(), path.into());
    let mut nodes = Vec::new();
    for h in holding_children(s, cx, path, &children, &mut st) {
        if let Some(node) = read_holder(s, cx, path, &h, &mut st) {
            nodes.push(node);
        }
    }
    st.details.insert("nodes".into(), nodes.into());
    Ok(st)
}

/// The children of the lock node `path` that hold it: a semaphore's leases, or the lock's
/// holding contenders. Fills in the kind, limit, availability and waiters of `st`.
fn holding_children(
    s: &Session,
    cx: &Ctx,
    path: &str,
    children: &[String],
    st: &mut Status,
) -> Vec<String> {
    let leases: Vec<&String> = children.iter().filter(|c| is_lease_name(c)).collect();
    // A semaphore node stores its max_leases (kazoo); a lock node has no data.
    let limit = if leases.is_empty() && !contenders(children).is_empty() {
        None
    } else {
        s.get_data(path, None, cx.op_budget())
            .ok()
            .and_then(|(d, _)| String::from_utf8_lossy(&d).trim().parse::<i64>().ok())
    };
    if leases.is_empty() && limit.is_none() {
        let all = contenders(children);
        let waiting = all.iter().filter(|(_, h)| !h).count();
        st.details.insert("waiting".into(), waiting.into());
        st.limit = Some(1);
        return all
            .into_iter()
            .filter(|(_, h)| *h)
            .map(|(c, _)| c)
            .collect();
    }
    if let Some(l) = limit {
        st.limit = Some(l.clamp(0, u32::MAX as i64) as u32);
        st.available = Some((l - leases.len() as i64).max(0));
    }
    st.details.insert("kind".into(), "semaphore".into());
    let waiting = s
        .get_children(&format!("{path}{SEM_LOCK_SUFFIX}"), None, cx.op_budget())
        .map(|c| contenders(&c).len())
        .unwrap_or(0);
    st.details.insert("waiting".into(), waiting.into());
    leases.into_iter().cloned().collect()
}

/// The holder node `path/h` as `status` shows it (None when it is gone): our record becomes
/// a holder of `st`, another client's data is shown as text.
fn read_holder(
    s: &Session,
    cx: &Ctx,
    path: &str,
    h: &str,
    st: &mut Status,
) -> Option<serde_json::Value> {
    let (data, stat) = s
        .get_data(&format!("{path}/{h}"), None, cx.op_budget())
        .ok()?;
    st.held = true;
    let mut node = serde_json::Map::new();
    node.insert("node".into(), h.into());
    node.insert("czxid".into(), stat.czxid.into());
    node.insert(
        "ephemeral_owner".into(),
        format!("0x{:x}", stat.ephemeral_owner).into(),
    );
    match parse_record(&data) {
        Some((mut r, _)) => {
            r.token = stat.czxid as u64;
            // A dead process's ephemeral node lives on until its session expires.
            st.holders.push(HolderView::from(r));
        }
        None => {
            let text: String = String::from_utf8_lossy(&data).chars().take(200).collect();
            node.insert("data".into(), text.into());
        }
    }
    Some(serde_json::Value::Object(node))
}

/// A context for an operation on `target` (bounded by `LOCKFN_OP_TIMEOUT`), connected.
fn connect(target: &Target) -> Result<(Ctx, Arc<Session>)> {
    let cx = Ctx::new(target, None)?;
    let s = cx.connected(cx.cfg.timeout)?;
    Ok((cx, s))
}

/// Who holds `target` now.
pub(super) fn status(target: &Target) -> Result<Status> {
    let (cx, s) = connect(target)?;
    status_of(&s, &cx, target, &cx.path, None)
}

/// Every lock under `prefix`: a `zk://` URL's subtree, or the `zk:` names it starts.
pub(super) fn list(prefix: &Target) -> Result<Vec<Status>> {
    let (cx, s) = connect(prefix)?;
    let root = if prefix.is_url() {
        cx.path.clone()
    } else {
        walk_root(prefix.name())
    };
    let mut out = Vec::new();
    for (path, children) in walk(&s, &cx, &root)? {
        if let Some(t) = listed_target(prefix, &path) {
            out.push(status_of(&s, &cx, &t, &path, Some(children))?);
        }
    }
    Ok(out)
}

/// The target of the lock node `path` found by listing `prefix`; None when it is not one
/// (a `zk:` name outside the prefix, or not a valid name).
fn listed_target(prefix: &Target, path: &str) -> Option<Target> {
    if prefix.is_url() {
        let place = prefix.place::<Place>().ok()?;
        return Some(Target::from_located(prefix.service(), place.at(path)));
    }
    let name = path.strip_prefix(ROOT)?.strip_prefix('/')?;
    if !name.starts_with(prefix.name()) {
        return None;
    }
    prefix.with_name(name).ok()
}

/// Remove the persistent nodes of dead processes of this host under the `zk:` names that
/// start with `scope.prefix`: those still waiting, or not meant to persist.
pub(super) fn gc(scope: &GcScope) -> Result<u32> {
    // The default context for name-less operations: ZKHOSTS, LOCKFN_ZK_AUTH.
    let (cx, s) = connect(&Target::parse_allow_empty("zk:")?)?;
    let mut removed = 0;
    for (path, children) in walk(&s, &cx, &walk_root(&scope.prefix))? {
        let name = path
            .strip_prefix(ROOT)
            .and_then(|p| p.strip_prefix('/'))
            .unwrap_or("");
        if !name.starts_with(&scope.prefix) {
            continue;
        }
        for c in children {
            if remove_if_dead(&s, &cx, &format!("{path}/{c}"))? {
                removed += 1;
            }
        }
    }
    Ok(removed)
}

/// Delete the node `full` if it is a persistent node of ours whose process is dead and that
/// was waiting or not meant to persist. Another client's node (lockpick, kazoo) has nothing
/// to prove it dead; an ephemeral one is its session's to end.
fn remove_if_dead(s: &Session, cx: &Ctx, full: &str) -> Result<bool> {
    let Ok((data, stat)) = s.get_data(full, None, cx.op_budget()) else {
        return Ok(false);
    };
    if stat.ephemeral_owner != 0 {
        return Ok(false);
    }
    let Some((r, waiting)) = parse_record(&data) else {
        return Ok(false);
    };
    if r.liveness() != Liveness::Dead || (r.persist && !waiting) {
        return Ok(false);
    }
    match s.delete(full, stat.version, cx.op_budget()) {
        Ok(()) => Ok(true),
        Err(ZkError::Api(_)) => Ok(false),
        Err(e) => Err(cx.err("removing a dead holder's node", e)),
    }
}

/// End the persistent lock of this host on `target` (with `force`: whatever holds it).
pub(super) fn release_named(target: &Target, force: bool) -> Result<u32> {
    let (cx, s) = connect(target)?;
    let st = status_of(&s, &cx, target, &cx.path, None)?;
    let nodes: Vec<String> = st
        .details
        .get("nodes")
        .and_then(|n| n.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|n| n.get("node").and_then(|x| x.as_str()).map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let me = hostname();
    let mut released = 0;
    for n in nodes {
        let full = format!("{}/{n}", cx.path);
        let Ok((data, stat)) = s.get_data(&full, None, cx.op_budget()) else {
            continue;
        };
        let ours = stat.ephemeral_owner == 0
            && parse_record(&data).is_some_and(|(r, _)| r.persist && r.host == me);
        if force || ours {
            match s.delete(&full, -1, cx.op_budget()) {
                Ok(()) => released += 1,
                Err(ZkError::Api(proto::ERR_NO_NODE)) => {}
                Err(e) => return Err(cx.err("releasing", e)),
            }
        }
    }
    if released == 0 {
        let why = if force {
            "nothing holds it"
        } else if st.held {
            "it is not a persistent lock of this host (a lock held by a running process is \
             released by that process; --force takes it anyway)"
        } else {
            "nothing holds it"
        };
        return Err(Error::new(
            ErrorKind::NotHeld,
            format!("{target} was not released: {why}"),
        ));
    }
    Ok(released)
}

/// `update` by name: fine when this host holds `target` persistently (such a node never
/// expires, so there is nothing to renew).
pub(super) fn update_named(target: &Target) -> Result<()> {
    let (cx, s) = connect(target)?;
    let st = status_of(&s, &cx, target, &cx.path, None)?;
    let me = hostname();
    if st
        .holders
        .iter()
        .any(|h| h.record.persist && h.record.host == me)
    {
        Ok(()) // a persistent node never expires: nothing to renew
    } else {
        Err(Error::new(
            ErrorKind::NotHeld,
            format!("{target} has no persistent holder of this host to update"),
        ))
    }
}
