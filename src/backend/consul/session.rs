//! Consul sessions: [`Session`], the session of a waiter (renewed while it waits, destroyed
//! if the wait fails), and [`HeldSession`], the session of a held lock, whose renewal and
//! "transient or lost?" judgement the mutex and the semaphore holders share, and
//! [`ConsulHeld`], the one [`Held`] of both, which asks its [`Keys`] what is specific.

use super::http::{go_duration, Client, MAX_BLOCK};
use super::{lock_delay, lost, session_ttl, CHECK_INTERVAL};
use crate::backend::{Held, Wait};
use crate::holder::HolderRecord;
use crate::{Options, Result, Target};
use std::time::{Duration, Instant};

/// A session we created and destroy again unless [`Session::keep`] is called. Its behavior
/// is `delete`: the keys it holds (the lock key, a queue entry, a semaphore contender) go
/// with it when it ends, so a dead waiter leaves nothing in the queue.
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
    pub fn create(
        client: &Client,
        target: &Target,
        opts: &Options,
        wait: &Wait,
    ) -> Result<Session> {
        let ttl = session_ttl(target, opts)?;
        let delay = lock_delay(target, opts)?;
        let key = target.resource();
        let mut body = serde_json::json!({
            "Name": format!("lockfn {key} (pid {} on {})",
                std::process::id(), crate::holder::hostname()),
            "Behavior": "delete",
        });
        if let Some(t) = ttl {
            body["TTL"] = go_duration(t).into();
        }
        if let Some(d) = delay {
            body["LockDelay"] = go_duration(d).into();
        }
        // Retried only within the caller's wait: a try-once against an unreachable agent
        // answers at once, and a cancel stops the backoff.
        let id = client
            .retry_within(wait, || client.session_create(&body))
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

    /// Make a new session after ours vanished (an operator destroyed it): the keys of the old
    /// one are gone with it.
    pub fn recreate(&mut self, wait: &Wait) -> Result<()> {
        let _ = self.client.session_destroy(&self.id);
        self.id = self
            .client
            .retry_within(wait, || self.client.session_create(&self.body))?;
        self.last_renew = Instant::now();
        Ok(())
    }

    /// Renew while waiting. Ok(true) when the session had vanished and was made anew.
    pub fn renew_if_due(&mut self, wait: &Wait) -> Result<bool> {
        let Some(ttl) = self.ttl else {
            return Ok(false);
        };
        if self.last_renew.elapsed() < ttl / 3 {
            return Ok(false);
        }
        let alive = self
            .client
            .retry_within(wait, || self.client.session_renew(&self.id))?;
        if alive {
            self.last_renew = Instant::now();
            Ok(false)
        } else {
            self.recreate(wait)?;
            Ok(true)
        }
    }

    /// Longest blocking query while waiting: we must come back to renew.
    pub fn block_limit(&self) -> Duration {
        match self.ttl {
            Some(t) => (t / 3).min(MAX_BLOCK),
            None => MAX_BLOCK,
        }
    }

    /// Keep the session (the lock is held).
    pub fn keep(mut self, target: &Target) -> HeldSession {
        self.armed = false;
        HeldSession {
            client: self.client.clone(),
            target: target.clone(),
            id: std::mem::take(&mut self.id),
            ttl: self.ttl,
            last_renew: Instant::now(),
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if self.armed {
            // Cancelled, timed out or failed: leave nothing behind (our queue entry or
            // contender key goes with the session: behavior delete). Bounded: a session left
            // behind by a silent agent ends with its TTL.
            self.client.set_deadline(self.cleanup_deadline);
            let _ = self
                .client
                .retry(3, || self.client.session_destroy(&self.id));
        }
    }
}

/// The session of a held lock.
pub(super) struct HeldSession {
    pub client: Client,
    pub target: Target,
    pub id: String,
    pub ttl: Option<Duration>,
    last_renew: Instant,
}

impl HeldSession {
    /// Renew the session: `Lost` when it no longer exists.
    pub fn renew(&mut self) -> Result<()> {
        if self.ttl.is_none() {
            return Ok(());
        }
        let alive = self
            .client
            .retry(4, || self.client.session_renew(&self.id))?;
        if !alive {
            return Err(lost(
                &self.target,
                &format!(
                    "its Consul session {} no longer exists (destroyed by an operator, or \
                     expired)",
                    self.id
                ),
            ));
        }
        self.last_renew = Instant::now();
        Ok(())
    }

    /// A transient failure (agent restarting, leader election) is reported as such until the
    /// session TTL has passed without a successful renewal: then the session may be gone and
    /// the lock is declared lost.
    pub fn settle(&self, r: Result<()>) -> Result<()> {
        match r {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == crate::ErrorKind::Lost => Err(e),
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

    pub fn destroy(&self) -> Result<()> {
        self.client
            .retry(4, || self.client.session_destroy(&self.id))
    }

    /// api.Lock renews at TTL/2; Consul keeps a session 2×TTL after its last renewal.
    pub fn renew_interval(&self) -> Option<Duration> {
        self.ttl.map(|t| t / 2)
    }
}

/// What a held mutex or semaphore slot does with its keys.
pub(super) trait Keys: Send {
    /// Its keys still say the lock is ours: `Lost` if not.
    fn verify(&self, s: &HeldSession) -> Result<()>;
    /// Free the keys; the session is destroyed after, whatever this returns.
    fn free(&self, s: &HeldSession) -> Result<()>;
}

/// A held consul lock: its session, record and keys.
pub(super) struct ConsulHeld<K: Keys> {
    pub session: HeldSession,
    pub record: HolderRecord,
    pub keys: K,
}

impl<K: Keys> Held for ConsulHeld<K> {
    fn token(&self) -> u64 {
        self.record.token
    }

    fn record(&self) -> &HolderRecord {
        &self.record
    }

    fn update(&mut self) -> Result<()> {
        self.session.client.bound_by_op_timeout();
        let r = self
            .session
            .renew()
            .and_then(|_| self.keys.verify(&self.session));
        self.session.settle(r)
    }

    fn check(&mut self) -> Result<()> {
        self.session.client.bound_by_op_timeout();
        let r = self.keys.verify(&self.session);
        self.session.settle(r)
    }

    fn release(&mut self) -> Result<()> {
        self.session.client.bound_by_op_timeout();
        let r = self.keys.free(&self.session);
        // Destroying the session also deletes whatever it still holds (behavior delete).
        let d = self.session.destroy();
        r.and(d)
    }

    fn renew_interval(&self) -> Option<Duration> {
        self.session.renew_interval()
    }

    fn check_interval(&self) -> Option<Duration> {
        // A loss (an operator destroying the session) is seen within about a second.
        Some(CHECK_INTERVAL)
    }
}
