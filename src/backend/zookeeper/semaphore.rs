//! kazoo's `Semaphore` (limit N > 1): the semaphore node stores N (`max_leases`), leases are
//! its children named by a guid, and a lease is taken while holding the mutex
//! `PATH-__lock__`, exactly as kazoo does, so that our leases and kazoo's count together.

use super::client::{Notify, Session, ZkError};
use super::ctx::Ctx;
use super::held::finish;
use super::lock::{Contender, Got};
use super::names::{guid, node_data, WRITER};
use super::proto;
use super::wait::{busy, wait_fired};
use super::{MAX_ROUNDS, SEM_LOCK_SUFFIX};
use crate::backend::{Held, Wait};
use crate::{Error, ErrorKind, Options, Result, Target};
use std::sync::Arc;
use std::time::Duration;

/// Take one of `opts.limit` leases of the target's semaphore.
pub(super) fn acquire_semaphore(
    cx: &Ctx,
    target: &Target,
    opts: &Options,
    wait: &Wait,
) -> Result<Box<dyn Held>> {
    let (mut sess, record) = cx.begin(opts, wait)?;
    let limit = opts.limit;
    ensure_node(cx, &mut sess, limit)?;
    check_max_leases(cx, &sess, limit)?;
    // The sub-lock that serialises lease taking (kazoo: path + "-__lock__").
    let lock_path = format!("{}{SEM_LOCK_SUFFIX}", cx.path);
    let mut sub = Contender::new(cx, &lock_path, WRITER, record.to_json().into_bytes(), false);
    let sub_got = sub.acquire(&mut sess, wait, target)?;
    let lease = Lease {
        cx,
        sess: &sess,
        node: format!("{}/{}", cx.path, guid()),
        data: node_data(&record, false),
        mode: if opts.persist {
            proto::MODE_PERSISTENT
        } else {
            proto::MODE_EPHEMERAL
        },
        limit,
    };
    let result = lease.take(wait, target);
    // Always give the sub-lock back; a failed wait leaves no lease behind (a create that
    // lost its connection may have made one).
    if result.is_err() {
        cx.set_deadline(wait.cleanup_deadline());
    }
    cx.delete_or_orphan(&sess, &sub_got.node, Duration::from_secs(2));
    if result.is_err() {
        cx.delete_or_orphan(&sess, &lease.node, Duration::from_secs(2));
    }
    let got = result?;
    finish(cx, target, sess, got, record)
}

/// Make sure the semaphore node exists (storing `limit` as its max_leases when we create
/// it), riding out a few connection losses and a session expiry.
fn ensure_node(cx: &Ctx, sess: &mut Arc<Session>, limit: u32) -> Result<()> {
    let mut rounds = 0;
    loop {
        rounds += 1;
        match create_node(cx, sess, limit) {
            Ok(()) => return Ok(()),
            Err(ZkError::ConnectionLoss) if rounds < 5 => {}
            Err(ZkError::Expired) if rounds < 5 => *sess = cx.connected(cx.op_budget())?,
            Err(e) => return Err(cx.err("creating the semaphore node", e)),
        }
    }
}

/// One attempt at creating the semaphore node and its parents; one that exists is fine.
fn create_node(cx: &Ctx, sess: &Session, limit: u32) -> std::result::Result<(), ZkError> {
    if let Some(parent) = cx
        .path
        .rsplit_once('/')
        .map(|p| p.0)
        .filter(|p| !p.is_empty())
    {
        cx.ensure_path(sess, parent, b"")?;
    }
    match sess.create(
        &cx.path,
        limit.to_string().as_bytes(),
        &cx.acl,
        proto::MODE_PERSISTENT,
        cx.op_budget(),
    ) {
        Ok(_) | Err(ZkError::Api(proto::ERR_NODE_EXISTS)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// The semaphore node's data is its max_leases (kazoo's check): a different one is an error;
/// none (a node made by someone else) gets ours.
fn check_max_leases(cx: &Ctx, sess: &Session, limit: u32) -> Result<()> {
    let (data, _) = sess
        .get_data(&cx.path, None, cx.op_budget())
        .map_err(|e| cx.err("reading the semaphore's max_leases", e))?;
    match std::str::from_utf8(&data)
        .ok()
        .and_then(|t| t.trim().parse::<i64>().ok())
    {
        Some(n) if n != limit as i64 => Err(Error::new(
            ErrorKind::Invalid,
            format!(
                "{}: the semaphore exists with max_leases {n}, asked for limit {limit} \
                 (all users of a semaphore must agree on its limit, as in kazoo)",
                cx.target
            ),
        )),
        Some(_) => Ok(()),
        None => {
            sess.set_data(&cx.path, limit.to_string().as_bytes(), cx.op_budget())
                .map_err(|e| cx.err("storing the semaphore's max_leases", e))?;
            Ok(())
        }
    }
}

/// Our lease, taken while we hold the semaphore's sub-lock.
struct Lease<'a> {
    cx: &'a Ctx,
    sess: &'a Session,
    /// The lease node's absolute path (`PATH/<guid>`).
    node: String,
    data: Vec<u8>,
    mode: i32,
    limit: u32,
}

impl Lease<'_> {
    /// Create our lease once fewer than `limit` exist, waiting for a lease to go otherwise.
    /// A create whose answer was lost is found again by its name.
    fn take(&self, wait: &Wait, target: &Target) -> Result<Got> {
        let (cx, sess) = (self.cx, self.sess);
        let notify =
            Notify::new().map_err(|e| Error::new(ErrorKind::Internal, format!("pipe: {e}")))?;
        sess.watch_state(&notify);
        for _ in 0..MAX_ROUNDS {
            match sess.exists(&self.node, None, cx.op_budget()) {
                Ok(Some(stat)) => return Ok(self.got(stat)),
                Ok(None) => {}
                Err(ZkError::ConnectionLoss) => continue,
                Err(e) => return Err(cx.err("checking our lease", e)),
            }
            notify.drain();
            let children = match sess.get_children(&cx.path, Some(&notify), cx.op_budget()) {
                Ok(c) => c,
                Err(ZkError::ConnectionLoss) => continue,
                Err(e) => return Err(cx.err("listing leases", e)),
            };
            if children.len() < self.limit as usize {
                match sess.create(&self.node, &self.data, &cx.acl, self.mode, cx.op_budget()) {
                    Ok((_, stat)) => return Ok(self.got(stat)),
                    Err(ZkError::Api(proto::ERR_NODE_EXISTS)) | Err(ZkError::ConnectionLoss) => {
                        continue
                    }
                    Err(e) => return Err(cx.err("taking a lease", e)),
                }
            }
            if wait.is_try_once() || wait.expired() || !wait_fired(&notify, wait)? {
                // Who holds: the first lease listed (any holder of one names a busy semaphore).
                let first = children.first().cloned();
                return Err(busy(sess, cx, wait, target, &cx.path, first));
            }
        }
        Err(Error::new(
            ErrorKind::Internal,
            format!("{}: gave up waiting for a lease", cx.target),
        ))
    }

    fn got(&self, stat: proto::Stat) -> Got {
        Got {
            node: self.node.clone(),
            stat,
        }
    }
}
