//! The ZooKeeper backend: kazoo-compatible locks, read/write locks and semaphores.
//!
//! Layout (the same tree kazoo, lockpick and Curator-style clients use):
//! - mutex / write lock on PATH: ephemeral-sequential children `PATH/<guid>__lock__<seq>`;
//!   read lock: `PATH/<guid>__rlock__<seq>`. A contender holds the lock when no child it
//!   excludes has a smaller sequence (writers exclude `__lock__` and `__rlock__`, readers only
//!   `__lock__`, kazoo's `Lock` only `__lock__`), and otherwise watches only its predecessor —
//!   one watch event and one getChildren per handoff, no herd. The guid finds our own node
//!   again after a connection loss during create.
//! - semaphore (limit N > 1) on PATH: PATH's data is N (kazoo's `max_leases`), leases are
//!   children `PATH/<guid>`, and a lease is taken while holding the mutex `PATH-__lock__`,
//!   exactly as kazoo's `Semaphore` does. A different stored N is an error.
//! - node data: our holder record (JSON), so kazoo's `contenders()` shows who holds it.
//! - token: the czxid of our node (grows with every acquisition across the ensemble).
//! - ttl: the session timeout (default 10 s). Pings keep the session alive; a suspended
//!   connection that recovers within it keeps the lock. `update` says `Lost` when the session
//!   expired, our node is gone, or no server could vouch for the session for a whole timeout.
//! - persistent locks (`persist`): non-ephemeral nodes. While such a node waits its data
//!   carries `"waiting": true`; once it holds, the final record (with the token) is written.
//!   `gc` removes persistent nodes of this host whose process is dead and that were still
//!   waiting (or not meant to persist); a persistent lock that was granted stays until
//!   `release_named`.
//! - unreachable ensemble: `Unavailable`, naming the hosts, never a hang. Before the first
//!   contact: after the wait's timeout, or the session timeout when that is shorter or the
//!   wait is unbounded (1 s for a try-once). A waiter cut off from every server later gives
//!   up once no server answered for the session timeout (plus at most 2 s of cleanup); a
//!   short outage (leader election, one server lost) is ridden out on the same session.
//! - auth: `user:password` (URL or `LOCKFN_ZK_AUTH`) is sent as digest auth on every
//!   connection, and the nodes we create carry an ACL that lets only that identity modify
//!   them (anyone may read). The password never appears in messages.
//!
//! Rooms: `ctx` (one target's servers, deadline and error messages), `names` (node names
//! and node data), `lock` (the lock recipe), `semaphore` (leases), `wait` (how a wait
//! ends), `held` (a held lock), `admin` (status, list, gc, release and update by name);
//! `client` (a session and its requests), `conn` (its connection thread) and `proto`
//! (the wire format) speak the protocol; `place` parses targets.

mod admin;
mod client;
mod conn;
mod ctx;
mod held;
mod lock;
mod names;
mod place;
mod proto;
mod semaphore;
mod wait;

#[cfg(feature = "test-counters")]
pub use client::{counters, Counters};
// For the atfork handlers (crate::fork).
pub(crate) use client::{SessionTable, SESSIONS};

use super::{GcScope, Held, Status, Wait};
use crate::target::Located;
use crate::{Options, Result, Target};
use ctx::Ctx;
use place::Place;
use std::time::Duration;

pub struct ZkBackend;

/// Session timeout when the caller gives no ttl (kazoo's default).
pub const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(10);
const LOCK_NAME: &str = "__lock__";
const READ_NAME: &str = "__rlock__";
const SEM_LOCK_SUFFIX: &str = "-__lock__";
/// Bound on loop iterations of one acquisition (each one does a request, so time bounds it
/// first; this only stops a server answering nonsense forever).
const MAX_ROUNDS: usize = 100_000;
/// Bound on the nodes `list` and `gc` visit.
const MAX_WALK: usize = 20_000;

impl super::Backend for ZkBackend {
    fn scheme(&self) -> &'static str {
        "zk"
    }

    fn aliases(&self) -> &'static [&'static str] {
        &["zookeeper"]
    }

    fn allows_slash(&self) -> bool {
        true
    }

    fn locate(&self, _text: &str, name: &str) -> Result<Located> {
        Place::named(name)
    }

    fn locate_url(&self, text: &str, rest: &str) -> Result<Located> {
        Place::from_url(text, rest)
    }

    /// A persistent lock is a persistent node: it does not end with its session.
    fn persistent_lifetime(&self, _target: &Target, _opts: &Options) -> super::Lifetime {
        super::Lifetime::until_released(
            ", or when its node is deleted (a persistent ZooKeeper node outlives the session \
             that made it)",
        )
    }

    fn acquire(&self, target: &Target, opts: &Options, wait: &Wait) -> Result<Box<dyn Held>> {
        let cx = Ctx::new(target, opts.ttl)?;
        // Every request of the acquisition (connect, handshake, each round trip) ends by the
        // wait's hard deadline; clean-up of a failed wait by its cleanup deadline.
        cx.set_deadline(wait.hard_deadline());
        if opts.limit > 1 {
            semaphore::acquire_semaphore(&cx, target, opts, wait)
        } else {
            lock::acquire_lock(&cx, target, opts, wait)
        }
    }

    fn status(&self, target: &Target) -> Result<Status> {
        admin::status(target)
    }

    fn list(&self, prefix: &Target) -> Result<Vec<Status>> {
        admin::list(prefix)
    }

    fn gc(&self, scope: &GcScope) -> Result<u32> {
        admin::gc(scope)
    }

    fn release_named(&self, target: &Target, force: bool) -> Result<u32> {
        admin::release_named(target, force)
    }

    fn update_named(&self, target: &Target) -> Result<()> {
        admin::update_named(target)
    }
}
