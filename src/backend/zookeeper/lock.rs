//! kazoo's lock recipe (`Lock`, `ReadLock`, `WriteLock`): one sequential contender node,
//! found again by its guid after a connection loss, holding when no contender it excludes
//! precedes it, and otherwise watching only its predecessor. Also the mutex that serialises
//! a semaphore's lease taking.

use super::client::{Notify, Session, State, ZkError};
use super::ctx::Ctx;
use super::held::finish;
use super::names::{
    contender_seq, first_holder, guid, node_data, predecessor, Kind, READER, WRITER,
};
use super::proto::{self, Stat};
use super::wait::{busy, wait_fired};
use super::MAX_ROUNDS;
use crate::backend::{Held, Wait};
use crate::{Error, ErrorKind, Options, Result, Target};
use std::sync::Arc;
use std::time::Duration;

/// A mutex (a writer) or, with `shared`, a read lock on the target's node.
pub(super) fn acquire_lock(
    cx: &Ctx,
    target: &Target,
    opts: &Options,
    wait: &Wait,
) -> Result<Box<dyn Held>> {
    let (mut sess, mut record) = cx.begin(opts, wait)?;
    record.shared = opts.shared;
    let kind = if opts.shared { READER } else { WRITER };
    let mut c = Contender::new(
        cx,
        &cx.path,
        kind,
        node_data(&record, opts.persist),
        opts.persist,
    );
    let got = c.acquire(&mut sess, wait, target)?;
    finish(cx, target, sess, got, record)
}

/// What an acquisition produced.
pub(super) struct Got {
    /// The node's absolute path.
    pub node: String,
    pub stat: Stat,
}

/// Outcome of one step that may be retried.
enum Step<T> {
    Done(T),
    Retry,
}

/// How one recipe run ended without the lock.
struct Fail(Error);

/// A contender of the kazoo lock recipe.
pub(super) struct Contender<'a> {
    cx: &'a Ctx,
    path: String,
    prefix: String,
    kind: Kind,
    data: Vec<u8>,
    mode: i32,
    /// Our node's name (last segment) once known.
    node: Option<String>,
    stat: Option<Stat>,
    create_tried: bool,
    /// Connection losses seen: a try-once gives up after [`TRY_ONCE_LOSSES`].
    losses: u32,
}

/// A try-once retries a dropped connection this often at most (within its time budget).
const TRY_ONCE_LOSSES: u32 = 2;

impl<'a> Contender<'a> {
    pub fn new(
        cx: &'a Ctx,
        path: &str,
        kind: Kind,
        data: Vec<u8>,
        persistent: bool,
    ) -> Contender<'a> {
        Contender {
            cx,
            path: path.to_string(),
            prefix: format!("{}{}", guid(), kind.node),
            kind,
            data,
            mode: if persistent {
                proto::MODE_PERSISTENT_SEQUENTIAL
            } else {
                proto::MODE_EPHEMERAL_SEQUENTIAL
            },
            node: None,
            stat: None,
            create_tried: false,
            losses: 0,
        }
    }

    fn full(&self, name: &str) -> String {
        format!("{}/{}", self.path, name)
    }

    fn find_node(&self, s: &Session) -> std::result::Result<Option<String>, ZkError> {
        let children = s.get_children(&self.path, None, self.cx.op_budget())?;
        Ok(children.into_iter().find(|c| c.starts_with(&self.prefix)))
    }

    /// Run the recipe until we hold the lock or the wait ends.
    pub fn acquire(
        &mut self,
        sess: &mut Arc<Session>,
        wait: &Wait,
        target: &Target,
    ) -> Result<Got> {
        let notify =
            Notify::new().map_err(|e| Error::new(ErrorKind::Internal, format!("pipe: {e}")))?;
        let mut watched_gen = u64::MAX;
        for _ in 0..MAX_ROUNDS {
            if sess.state() == State::Expired {
                *sess = self.cx.connected(self.cx.op_budget())?;
                self.node = None; // an ephemeral node died with the session; find_node tells
            }
            if sess.gen() != watched_gen {
                sess.watch_state(&notify);
                watched_gen = sess.gen();
            }
            match self.step(sess, wait, target, &notify) {
                Ok(Step::Done(g)) => return Ok(g),
                Ok(Step::Retry) => continue,
                Err(Fail(e)) => {
                    self.cx.set_deadline(wait.cleanup_deadline());
                    self.cleanup(sess);
                    return Err(e);
                }
            }
        }
        self.cx.set_deadline(wait.cleanup_deadline());
        self.cleanup(sess);
        Err(Error::new(
            ErrorKind::Internal,
            format!("{}: gave up after {MAX_ROUNDS} rounds", self.cx.target),
        ))
    }

    /// Map a request error: retry on connection loss/expiry, fail otherwise.
    fn on_err<T>(
        &mut self,
        what: &str,
        e: ZkError,
        wait: &Wait,
    ) -> std::result::Result<Step<T>, Fail> {
        match e {
            ZkError::ConnectionLoss | ZkError::Expired => {
                self.losses += 1;
                let out_of_time = self.cx.past_deadline()
                    || (wait.expired() && !wait.is_try_once())
                    || (wait.is_try_once() && self.losses > TRY_ONCE_LOSSES);
                if out_of_time {
                    return Err(Fail(self.cx.err(what, e)));
                }
                Ok(Step::Retry)
            }
            other => Err(Fail(self.cx.err(what, other))),
        }
    }

    fn step(
        &mut self,
        s: &Session,
        wait: &Wait,
        target: &Target,
        notify: &Arc<Notify>,
    ) -> std::result::Result<Step<Got>, Fail> {
        // 0. Try-once: when a contender we exclude is already there, we cannot be first;
        // say so without creating (and deleting) a node of our own.
        if wait.is_try_once() && self.node.is_none() && !self.create_tried {
            if let Step::Retry = self.busy_before_entering(s, wait, target)? {
                return Ok(Step::Retry);
            }
        }
        // 1. Our node: found again by its guid after a connection loss, else created.
        let node = match self.enter(s, wait)? {
            Step::Done(node) => node,
            Step::Retry => return Ok(Step::Retry),
        };
        // 2. Are we first (among those we exclude)?
        let children = match s.get_children(&self.path, None, self.cx.op_budget()) {
            Ok(c) => c,
            Err(ZkError::Api(proto::ERR_NO_NODE)) => {
                self.node = None;
                return Ok(Step::Retry);
            }
            Err(e) => return self.on_err("listing contenders", e, wait),
        };
        if !children.contains(&node) {
            // Our node is gone (session expired, or removed by an operator): enter again.
            self.node = None;
            return Ok(Step::Retry);
        }
        let Some(pred) = predecessor(&children, &node, self.kind) else {
            let stat = match self.stat.clone() {
                Some(st) => st,
                None => match s.exists(&self.full(&node), None, self.cx.op_budget()) {
                    Ok(Some(st)) => st,
                    Ok(None) => {
                        self.node = None;
                        return Ok(Step::Retry);
                    }
                    Err(e) => return self.on_err("reading our node", e, wait),
                },
            };
            return Ok(Step::Done(Got {
                node: self.full(&node),
                stat,
            }));
        };
        if wait.is_try_once() || wait.expired() {
            return Err(self.busy(s, wait, target, &children));
        }
        // 3. Watch only the predecessor, and wait.
        notify.drain();
        match s.exists(&self.full(pred), Some(notify), self.cx.op_budget()) {
            Ok(None) => return Ok(Step::Retry),
            Ok(Some(_)) => {}
            Err(e) => return self.on_err("watching our predecessor", e, wait),
        }
        match wait_fired(notify, wait) {
            Ok(true) => Ok(Step::Retry),
            Ok(false) => Err(self.busy(s, wait, target, &children)),
            Err(e) => Err(Fail(e)),
        }
    }

    /// `Busy` (as `Fail`) when a contender we exclude is there already; `Done` when none is.
    fn busy_before_entering(
        &mut self,
        s: &Session,
        wait: &Wait,
        target: &Target,
    ) -> std::result::Result<Step<()>, Fail> {
        match s.get_children(&self.path, None, self.cx.op_budget()) {
            Ok(children) => {
                if children
                    .iter()
                    .any(|c| contender_seq(c, self.kind.exclude).is_some())
                {
                    return Err(self.busy(s, wait, target, &children));
                }
                Ok(Step::Done(()))
            }
            Err(ZkError::Api(proto::ERR_NO_NODE)) => Ok(Step::Done(())),
            Err(e) => self.on_err("listing contenders", e, wait),
        }
    }

    /// Our contender node's name: the one we made, found again by its guid after a
    /// connection loss during its create, or made now (with the lock node when missing).
    fn enter(&mut self, s: &Session, wait: &Wait) -> std::result::Result<Step<String>, Fail> {
        if self.node.is_none() && self.create_tried {
            match self.find_node(s) {
                Ok(Some(n)) => {
                    self.node = Some(n);
                    self.stat = None;
                }
                Ok(None) | Err(ZkError::Api(proto::ERR_NO_NODE)) => {}
                Err(e) => return self.on_err("looking for our contender node", e, wait),
            }
        }
        if self.node.is_none() {
            self.create_tried = true;
            match s.create(
                &self.full(&self.prefix),
                &self.data,
                &self.cx.acl,
                self.mode,
                self.cx.op_budget(),
            ) {
                Ok((p, stat)) => {
                    let name = p.rsplit('/').next().unwrap_or_default().to_string();
                    self.node = Some(name);
                    self.stat = Some(stat);
                }
                Err(ZkError::Api(proto::ERR_NO_NODE)) => {
                    // The lock node is missing (first use, or removed meanwhile).
                    if let Err(e) = self.cx.ensure_path(s, &self.path, b"") {
                        return self.on_err("creating the lock node", e, wait);
                    }
                    return Ok(Step::Retry);
                }
                Err(e) => return self.on_err("creating our contender node", e, wait),
            }
        }
        Ok(match self.node.clone() {
            Some(node) => Step::Done(node),
            None => Step::Retry,
        })
    }

    /// The wait ended without the lock: `Busy`, naming who holds it among `children`.
    fn busy(&self, s: &Session, wait: &Wait, target: &Target, children: &[String]) -> Fail {
        Fail(busy(
            s,
            self.cx,
            wait,
            target,
            &self.path,
            first_holder(children),
        ))
    }

    /// Remove our contender node (best effort, bounded): a failed or cancelled wait leaves
    /// nothing behind.
    fn cleanup(&mut self, s: &Session) {
        // Short: when no server answers, the node is left for the next chance (or for the
        // session's expiry) rather than holding up the caller's error.
        for _ in 0..3 {
            let b = self.cx.left(Duration::from_secs(2));
            let name = match self.node.take() {
                Some(n) => Some(n),
                None if self.create_tried => match self.find_node(s) {
                    Ok(n) => n,
                    Err(ZkError::ConnectionLoss) if !self.cx.past_deadline() => continue,
                    Err(_) => None,
                },
                None => None,
            };
            let Some(name) = name else { return };
            match s.delete(&self.full(&name), -1, b) {
                Ok(()) | Err(ZkError::Api(_)) | Err(ZkError::Expired) => return,
                Err(ZkError::ConnectionLoss) if !self.cx.past_deadline() => self.node = Some(name),
                Err(ZkError::ConnectionLoss | ZkError::Unreachable(_) | ZkError::Timeout) => {
                    self.node = Some(name);
                    break;
                }
            }
        }
        if let Some(name) = self.node.take() {
            s.add_orphan(self.full(&name));
        }
    }
}
