//! A held ZooKeeper lock: our node (a contender or a semaphore lease) on a live session.
//! Checks are local while a watch on our node is armed; `update` asks the server; a session
//! that expired, or that no server vouched for during a whole timeout, is a loss.

use super::client::{Notify, Session, State, ZkError};
use super::ctx::Ctx;
use super::lock::Got;
use super::names::node_data;
use super::proto;
use crate::backend::{op_deadline, op_timeout, Held, DEFAULT_OP_TIMEOUT};
use crate::holder::HolderRecord;
use crate::{Error, ErrorKind, Result, Target};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Turn an acquired node into a held lock: a persistent node gets its final record (holding,
/// with the token) first.
pub(super) fn finish(
    cx: &Ctx,
    target: &Target,
    sess: Arc<Session>,
    got: Got,
    mut record: HolderRecord,
) -> Result<Box<dyn Held>> {
    record.token = got.stat.czxid as u64;
    let ephemeral = got.stat.ephemeral_owner != 0;
    if !ephemeral {
        // The final record: holding, with its token. Until it is written the node says
        // "waiting", which gc may remove once this process is gone: so it must land.
        let data = node_data(&record, false);
        let mut r = sess.set_data(&got.node, &data, cx.op_budget());
        for _ in 0..3 {
            if !matches!(r, Err(ZkError::ConnectionLoss)) {
                break;
            }
            r = sess.set_data(&got.node, &data, cx.op_budget());
        }
        if let Err(e) = r {
            if sess.delete(&got.node, -1, cx.op_budget()).is_err() {
                sess.add_orphan(got.node.clone());
            }
            return Err(cx.err("recording the persistent lock's holder", e));
        }
    }
    // A held lock's requests are bounded per operation (release sets its own deadline;
    // renewals are bounded by the session timeout).
    let held_cx = Ctx::new(target, Some(cx.cfg.timeout))?;
    held_cx.set_deadline(None);
    Ok(Box::new(ZkHeld {
        target: target.clone(),
        cx: held_cx,
        session_id: sess.session_id(),
        sess,
        node: got.node,
        ephemeral,
        token: record.token,
        record,
        own: None,
    }))
}

struct ZkHeld {
    target: Target,
    cx: Ctx,
    sess: Arc<Session>,
    node: String,
    session_id: i64,
    ephemeral: bool,
    token: u64,
    record: HolderRecord,
    /// Fires when our node changes or goes (and on connection changes).
    own: Option<(Arc<Notify>, u64)>,
}

impl ZkHeld {
    fn lost(&self, why: &str) -> Error {
        Error::new(
            ErrorKind::Lost,
            format!("lock {} was lost: {why} (node {})", self.target, self.node),
        )
    }

    /// Local facts that prove a loss without asking the server.
    fn local_loss(&self) -> Option<Error> {
        if !self.ephemeral {
            return None;
        }
        if self.sess.state() == State::Expired || self.sess.session_id() != self.session_id {
            return Some(self.lost("the ZooKeeper session expired"));
        }
        let silent = self.sess.silent_for();
        let timeout = self.sess.negotiated();
        if silent >= timeout {
            return Some(self.lost(&format!(
                "no ZooKeeper server of {} answered for {:.1} s, the session timeout, so the \
                 session may have expired",
                self.cx.hosts,
                silent.as_secs_f64()
            )));
        }
        None
    }

    /// Ask the server whether our node is still ours, optionally re-arming the own watch.
    fn verify(&mut self, watch: bool) -> Result<()> {
        if let Some(e) = self.local_loss() {
            return Err(e);
        }
        // At most LOCKFN_OP_TIMEOUT, however long the session timeout (up to an hour).
        let op = op_timeout().unwrap_or(DEFAULT_OP_TIMEOUT);
        let budget = if self.ephemeral {
            self.sess
                .negotiated()
                .saturating_sub(self.sess.silent_for())
                .max(Duration::from_millis(10))
                .min(op)
        } else {
            self.cx.op_budget().min(op)
        };
        let n = if watch { Notify::new().ok() } else { None };
        let gen = self.sess.gen();
        if let Some(n) = &n {
            self.sess.watch_state(n);
        }
        let deadline = Instant::now() + budget;
        let mut r = self.sess.exists(&self.node, n.as_ref(), budget);
        // A connection that broke under the request: ask again on the next one, while the
        // session can still be alive.
        while matches!(r, Err(ZkError::ConnectionLoss)) && Instant::now() < deadline {
            if let Some(e) = self.local_loss() {
                return Err(e);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            r = self.sess.exists(&self.node, n.as_ref(), left);
        }
        match r {
            Ok(Some(st)) => {
                if self.ephemeral && st.ephemeral_owner != self.session_id {
                    return Err(self.lost("the node belongs to another session"));
                }
                if st.czxid as u64 != self.token {
                    return Err(self.lost("the node was replaced"));
                }
                if let Some(n) = n {
                    self.own = Some((n, gen));
                }
                Ok(())
            }
            Ok(None) => Err(self.lost("the node was deleted")),
            Err(ZkError::Expired) => Err(self.lost("the ZooKeeper session expired")),
            Err(e) => {
                if let Some(l) = self.local_loss() {
                    return Err(l);
                }
                Err(self.cx.err("checking the lock", e))
            }
        }
    }
}

impl Held for ZkHeld {
    fn token(&self) -> u64 {
        self.token
    }

    fn record(&self) -> &HolderRecord {
        &self.record
    }

    fn update(&mut self) -> Result<()> {
        self.verify(false)
    }

    fn check(&mut self) -> Result<()> {
        if let Some(e) = self.local_loss() {
            return Err(e);
        }
        let fresh = match &self.own {
            Some((n, gen)) => !n.drain() && *gen == self.sess.gen(),
            None => false,
        };
        if fresh {
            return Ok(());
        }
        self.own = None;
        self.verify(true)
    }

    fn check_interval(&self) -> Option<Duration> {
        Some(Duration::from_millis(200))
    }

    fn renew_interval(&self) -> Option<Duration> {
        Some(self.sess.negotiated() / 3)
    }

    fn release(&mut self) -> Result<()> {
        self.own = None;
        self.cx.set_deadline(Some(op_deadline()?));
        let lost = self.local_loss();
        let mut last = None;
        for _ in 0..3 {
            match self.sess.delete(&self.node, -1, self.cx.op_budget()) {
                Ok(()) => return lost.map_or(Ok(()), Err),
                Err(ZkError::Api(proto::ERR_NO_NODE)) | Err(ZkError::Expired) => {
                    return Err(lost.unwrap_or_else(|| self.lost("the node was already gone")))
                }
                Err(ZkError::ConnectionLoss) => {
                    // The delete may have happened: a retry answers NoNode then.
                    last = Some(ZkError::ConnectionLoss);
                    continue;
                }
                Err(e) => return Err(self.cx.err("releasing the lock", e)),
            }
        }
        // Deleted at the next chance (the session may outlive this handle).
        self.sess.add_orphan(self.node.clone());
        Err(self.cx.err(
            "releasing the lock",
            last.unwrap_or(ZkError::ConnectionLoss),
        ))
    }

    fn detach(&mut self) -> Result<()> {
        if self.ephemeral {
            return Err(Error::new(
                ErrorKind::Invalid,
                format!(
                    "{}: only a persistent lock (persist) can outlive its process",
                    self.target
                ),
            ));
        }
        Ok(())
    }
}
