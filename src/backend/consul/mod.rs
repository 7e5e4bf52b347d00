//! The consul backend: `consul:NAME` (key `lockfn/NAME`) and `consul://host:port/KEY` (exactly
//! KEY), over Consul's HTTP API with sessions and KV, interoperable with HashiCorp's
//! `api.Lock` / `api.Semaphore` (and so `consul lock [-n N]`) and with consullock.
//!
//! - [`config`]: the agent address, token and TLS, from Consul's own environment variables.
//! - [`http`]: a small blocking client (ureq): deadlines, retries, interruptible blocking
//!   queries; [`pool`] its connection, [`tls`] its TLS set-up; [`api`] the session, KV and
//!   transaction calls.
//! - [`session`]: a waiter's session and a holder's (renewal, "transient or lost?").
//! - [`mutex`]: limit 1, as api.Lock (key `PREFIX/.lock` for `consul lock PREFIX`), with
//!   lockfn's waiters in the [`queue`] beside the key, so that a release wakes one of them.
//! - [`semaphore`]: limit N, as api.Semaphore (`consul lock -n N PREFIX`).
//! - [`consullock`]: the fields of consullock's value, added to ours.
//! - [`admin`]: status, list, gc, release by name or regular expression.
//!
//! Sessions have a TTL (default 15 s, 10–86400 s) and are renewed by `update()` every TTL/2
//! (as api.Lock does), which also checks that the key is still ours; `check()`, wanted every
//! second, only reads the key, so that a loss (an operator destroying the session) is seen
//! within about a second. A persistent lock (`lockfn acquire --persist`) without an explicit
//! ttl gets a session without TTL, as consullock's, which lives until `lockfn release` (or
//! its node fails).

mod admin;
mod api;
pub mod config;
mod consullock;
pub mod http;
mod mutex;
mod place;
mod pool;
// For the atfork handlers (crate::fork).
pub(crate) use pool::{forget_parked, ParkedSlot, PARKED};
mod queue;
mod semaphore;
mod session;
mod tls;

use self::api::KvEntry;
use self::config::Config;
use self::http::Client;
use super::{Backend, GcScope, Held, Status, Wait};
use crate::holder::HolderRecord;
use crate::target::Located;
use crate::{Error, ErrorKind, Options, Result, Target};
use place::Place;
pub(crate) use place::KEY_PREFIX;
use std::time::Duration;

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
pub(super) fn locate(target: &Target) -> Result<(Client, String)> {
    let Place { addr, key } = target.place::<Place>()?;
    let cfg = Config::from_env(addr.as_deref())?;
    let client = Client::new(&cfg)?;
    // status, list, gc, release, update: bounded by LOCKFN_OP_TIMEOUT; an acquisition
    // sets its wait's own deadline.
    client.set_deadline(Some(super::op_deadline()?));
    Ok((client, key.clone()))
}

/// The session TTL asked for: None (no TTL) only for a persistent lock without explicit ttl.
pub(super) fn session_ttl(target: &Target, opts: &Options) -> Result<Option<Duration>> {
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

pub(super) fn lock_delay(target: &Target, opts: &Options) -> Result<Option<Duration>> {
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
        admin::release_matching(within, pattern)
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
        if queue::is_entry(&format!("{key}/")) {
            return Err(Error::new(
                ErrorKind::Invalid,
                format!(
                    "{target}: a key with a '.queue' segment is where lockfn queues the \
                     waiters of another lock; choose another name"
                ),
            ));
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_hashicorps() {
        assert_eq!(LOCK_FLAG, 3304740253564472344);
        assert_eq!(SEM_FLAG, 16210313421097356768);
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
