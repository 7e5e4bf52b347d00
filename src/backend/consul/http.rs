//! A small blocking HTTP client for a Consul agent (ureq): deadlines, errors that name the
//! agent, retries with backoff, and blocking queries that a cancel or deadline interrupts.
//! The API calls themselves are in [`super::api`].
//!
//! Connections: one `ureq::Agent` (pool) per lock, keeping at most one idle connection, which
//! the waiting loop's blocking queries reuse (they run on a helper thread sharing the pool),
//! and which the process's next lock reuses ([`Pool`]).
//! So a waiter holds one connection to the agent, which matters: Consul caps concurrent
//! connections per client address (`limits.http_max_conns_per_client`, 200 by default) and
//! closes the ones past it (hashicorp/go-connlimit, `HTTPConnStateFunc...`: the connection is
//! closed at once, or answered 429). Those refusals, a reset connection and a 429 are
//! retried with backoff within the caller's deadline ([`Client::retry_within`]).

use super::config::Config;
use super::pool::{agent_for, agent_with, Pool};
use crate::backend::Wait;
use crate::{Error, ErrorKind, Result};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// Bound on one ordinary request (connect + answer), and never past the client's deadline.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest answer body read (a KV listing of about 10,000 locks); checked while reading,
/// before the memory is taken, so a huge or endless body is an error naming the limit.
/// cbindgen:ignore
pub const MAX_BODY: u64 = 4 << 20;
/// Largest status line plus headers accepted.
/// cbindgen:ignore
pub const MAX_HEADER: usize = 64 << 10;
/// Longest blocking query asked for (Consul caps at 10 min).
pub const MAX_BLOCK: Duration = Duration::from_secs(300);

#[derive(Clone)]
pub struct Client {
    /// Shared by clones (a waiting loop and its blocking-query thread); its agent is replaced
    /// after a [`Client::interrupt`].
    pool: Arc<Mutex<Pool>>,
    base: String,
    /// `host:port`, for messages.
    pub addr: String,
    token: Option<String>,
    /// No request of this client (and its clones) runs past this: the caller's deadline.
    deadline: Arc<Mutex<Option<Instant>>>,
    /// Set when the last failure is one that asking again cannot cure (a redirect, an answer
    /// past the size limits): the retries give up at once.
    hopeless: Arc<AtomicBool>,
}

/// One answer.
pub struct Reply {
    pub status: u16,
    /// `X-Consul-Index`.
    pub index: Option<u64>,
    pub body: Vec<u8>,
}

#[derive(Clone, Copy, Debug)]
pub enum Method {
    Get,
    Put,
}

/// Percent-encode a key or id for a URL path (keys are validated to a safe set already; this
/// is a second line of defence).
pub fn encode_path(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'_' | b'-') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Consul durations as `Nms`.
pub fn go_duration(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// Shorten a service's text for a message (no control bytes, bounded).
fn service_text(body: &[u8]) -> String {
    let s = String::from_utf8_lossy(body);
    let s = s.trim();
    crate::target::printable(if s.is_empty() { "(no message)" } else { s })
}

impl Client {
    pub fn new(cfg: &Config) -> Result<Client> {
        Ok(Client {
            pool: Arc::new(Mutex::new(Pool {
                agent: agent_for(cfg)?,
                cfg: cfg.clone(),
                pid: std::process::id(),
            })),
            base: cfg.base(),
            addr: cfg.addr.clone(),
            token: cfg.token.clone(),
            deadline: Arc::new(Mutex::new(None)),
            hopeless: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Bound every later request of this client and its clones by `d` (None: each request
    /// by [`REQUEST_TIMEOUT`] only).
    pub fn set_deadline(&self, d: Option<Instant>) {
        *self.deadline.lock().unwrap_or_else(|e| e.into_inner()) = d;
    }

    /// Bound the requests of the operation starting now by `LOCKFN_OP_TIMEOUT` (a held
    /// lock's renewal, check or release; status, list, gc).
    pub fn bound_by_op_timeout(&self) {
        let t = crate::backend::op_timeout().unwrap_or(crate::backend::DEFAULT_OP_TIMEOUT);
        self.set_deadline(Instant::now().checked_add(t));
    }

    pub fn deadline(&self) -> Option<Instant> {
        *self.deadline.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `max`, cut to what is left before the deadline.
    pub fn left(&self, max: Duration) -> Duration {
        match self.deadline() {
            Some(d) => max.min(d.saturating_duration_since(Instant::now())),
            None => max,
        }
    }

    fn out_of_time(&self) -> Error {
        Error::new(
            ErrorKind::Unavailable,
            format!(
                "no answer from the Consul agent at {} in time (the deadline passed)",
                self.addr
            ),
        )
    }

    fn agent(&self) -> ureq::Agent {
        self.pool
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .agent
            .clone()
    }

    /// Close the connection of this client's pool, interrupting a request in flight (a
    /// blocking query), and start a fresh pool for later requests.
    pub fn interrupt(&self) {
        let mut p = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        let fresh = agent_with(p.agent.config().clone());
        std::mem::replace(&mut p.agent, fresh).shutdown();
    }

    /// Remove the token from a text, should a service or a library ever echo it.
    pub(super) fn scrub(&self, s: String) -> String {
        match &self.token {
            Some(t) if t.len() >= 4 && s.contains(t.as_str()) => s.replace(t.as_str(), "<token>"),
            _ => s,
        }
    }

    /// One request. Transport failures are `Unavailable`, naming the agent's address.
    pub fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<Reply> {
        // The flag describes the last request only.
        self.hopeless.store(false, Ordering::SeqCst);
        let url = format!("{}{}", self.base, path);
        let timeout = self.left(timeout);
        if timeout < Duration::from_millis(5) {
            return Err(self.out_of_time());
        }
        let agent = self.agent();
        let result = match method {
            Method::Get => {
                let mut rb = match method {
                    Method::Get => agent.get(&url),
                    _ => agent.delete(&url),
                }
                .config()
                .timeout_global(Some(timeout))
                .build();
                if let Some(t) = &self.token {
                    rb = rb.header("X-Consul-Token", t.as_str());
                }
                rb.call()
            }
            Method::Put => {
                let mut rb = agent
                    .put(&url)
                    .config()
                    .timeout_global(Some(timeout))
                    .build();
                if let Some(t) = &self.token {
                    rb = rb.header("X-Consul-Token", t.as_str());
                }
                match body {
                    Some(b) => rb.send(b),
                    None => rb.send_empty(),
                }
            }
        };
        let mut resp = result.map_err(|e| self.transport_error(e, timeout))?;
        let status = resp.status().as_u16();
        if status == 429 {
            // Past the agent's per-client connection or rate limit: transient, retried.
            return Err(Error::new(
                ErrorKind::Unavailable,
                format!(
                    "the Consul agent at {} is busy (HTTP 429 Too Many Requests: past \
                     limits.http_max_conns_per_client or its rate limit)",
                    self.addr
                ),
            ));
        }
        if (300..400).contains(&status) {
            // Not followed (max_redirects 0), so no credential went anywhere else.
            self.hopeless.store(true, Ordering::SeqCst);
            let location = resp
                .headers()
                .get("Location")
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .unwrap_or_default();
            return Err(Error::new(
                ErrorKind::Unavailable,
                self.scrub(format!(
                    "the Consul agent at {} answered HTTP {status}, a redirect to '{}': Consul's \
                     API never redirects, so it was not followed (check CONSUL_HTTP_ADDR)",
                    self.addr,
                    crate::target::printable(&location)
                )),
            ));
        }
        let index = resp
            .headers()
            .get("X-Consul-Index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok());
        let body = resp
            .body_mut()
            .with_config()
            .limit(MAX_BODY)
            .read_to_vec()
            .map_err(|e| match e {
                ureq::Error::BodyExceedsLimit(_) => {
                    self.hopeless.store(true, Ordering::SeqCst);
                    Error::new(
                        ErrorKind::Unavailable,
                        format!(
                            "the Consul agent at {} sent an answer larger than the {} MiB limit",
                            self.addr,
                            MAX_BODY >> 20
                        ),
                    )
                }
                e => self.transport_error(e, timeout),
            })?;
        Ok(Reply {
            status,
            index,
            body,
        })
    }

    fn transport_error(&self, e: ureq::Error, timeout: Duration) -> Error {
        let kind = match e {
            ureq::Error::BadUri(_) | ureq::Error::InvalidProxyUrl => ErrorKind::Invalid,
            _ => ErrorKind::Unavailable,
        };
        let text = match &e {
            ureq::Error::Timeout(_) => format!(
                "no complete answer from the Consul agent at {} within {:.1} s",
                self.base,
                timeout.as_secs_f64()
            ),
            ureq::Error::LargeResponseHeader(n, limit) => {
                self.hopeless.store(true, Ordering::SeqCst);
                format!(
                    "the Consul agent at {} sent {n} bytes of headers (the limit is {limit})",
                    self.base
                )
            }
            _ => format!("cannot reach the Consul agent at {} ({e})", self.base),
        };
        Error::new(kind, self.scrub(crate::target::printable_long(&text)))
    }

    /// The error for an answer that is not a success: 403 → Permission with Consul's message,
    /// 5xx → Unavailable (transient: leader election), others → Internal.
    pub fn status_error(&self, what: &str, r: &Reply) -> Error {
        let text = service_text(&r.body);
        let kind = match r.status {
            401 | 403 => ErrorKind::Permission,
            500..=599 => ErrorKind::Unavailable,
            400 => ErrorKind::Invalid,
            _ => ErrorKind::Internal,
        };
        let hint = if kind == ErrorKind::Permission {
            " (check CONSUL_HTTP_TOKEN / CONSUL_HTTP_TOKEN_FILE and the token's key and session rights)"
        } else {
            ""
        };
        Error::new(
            kind,
            self.scrub(format!(
                "Consul at {} refused to {what}: HTTP {}: {text}{hint}",
                self.addr, r.status
            )),
        )
    }

    pub(super) fn malformed(&self, what: &str, e: impl std::fmt::Display) -> Error {
        Error::new(
            ErrorKind::Internal,
            self.scrub(format!(
                "Consul at {} gave a malformed answer to {what}: {e}",
                self.addr
            )),
        )
    }

    /// Run `f` again on transient failures (`Unavailable`: agent restarting, no leader during
    /// an election, a connection refused or reset, a 429) with backoff, at most `attempts`
    /// times in all, never past the client's deadline. For a held lock's renewal, release,
    /// and the admin commands, bounded by `LOCKFN_OP_TIMEOUT`.
    pub fn retry<T>(&self, attempts: u32, mut f: impl FnMut() -> Result<T>) -> Result<T> {
        let mut backoff = Backoff::new();
        let mut n = 1;
        loop {
            match f() {
                Err(e) if n < attempts && self.transient(&e) => {
                    let d = backoff.step();
                    if self.left(d * 2) < d * 2 {
                        return Err(e);
                    }
                    std::thread::sleep(d);
                    n += 1;
                }
                r => return r,
            }
        }
    }

    /// Is `e` worth asking again for? `Unavailable`, and not a failure that asking again
    /// cannot cure (reported once: the flag is cleared).
    pub fn transient(&self, e: &Error) -> bool {
        e.kind() == ErrorKind::Unavailable && !self.hopeless.swap(false, Ordering::SeqCst)
    }

    /// [`Client::retry`] for a waiter: retried until the caller's wait is over (not for a
    /// try-once), the backoff being a `wait.pause`, so that a cancel ends it. Hundreds of
    /// waiters on one host get refused or reset connections while the agent serves the
    /// others; that is not "unavailable" while the wait lasts.
    pub fn retry_within<T>(&self, wait: &Wait, mut f: impl FnMut() -> Result<T>) -> Result<T> {
        let mut backoff = Backoff::new();
        loop {
            match f() {
                Err(e)
                    if !wait.is_try_once()
                        && !wait.expired()
                        && self.left(Duration::from_millis(50)) >= Duration::from_millis(50)
                        && self.transient(&e) =>
                {
                    wait.pause(backoff.step())?;
                    if wait.expired() {
                        return Err(e);
                    }
                }
                r => return r,
            }
        }
    }
}

/// Run a blocking request on a helper thread sharing the client's pool (one connection per
/// waiter), so that a waiter stops at its deadline and on its cancel fd at once rather than
/// when Consul answers: the pool is then interrupted (its connection closed) and the thread
/// joined, leaving nothing behind.
/// Ok(None): the deadline passed. Without deadline nor cancel fd the request runs on the
/// calling thread.
pub fn wait_for<T: Send + 'static>(
    wait: &Wait,
    client: &Client,
    job: impl FnOnce(&Client) -> Result<T> + Send + 'static,
) -> Result<Option<T>> {
    if wait.cancel_fd().is_none() && wait.deadline().is_none() {
        return job(client).map(Some);
    }
    let helper = client.clone();
    let (tx, rx) = mpsc::channel();
    let thread = {
        let helper = helper.clone();
        std::thread::Builder::new()
            .name("lockfn-consul".into())
            .spawn(move || {
                let _ = tx.send(job(&helper));
            })
            .map_err(|e| Error::new(ErrorKind::Internal, format!("cannot start a thread: {e}")))?
    };
    let slice = if wait.cancel_fd().is_some() {
        Duration::from_millis(50)
    } else {
        Duration::from_secs(1)
    };
    let stop = |thread: std::thread::JoinHandle<()>, early: bool| {
        if early {
            client.interrupt();
        }
        let _ = thread.join();
    };
    loop {
        let d = match wait.remaining() {
            Some(r) => r.min(slice),
            None => slice,
        };
        match rx.recv_timeout(d) {
            Ok(r) => {
                stop(thread, false);
                return r.map(Some);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if let Err(e) = wait.check_cancel() {
                    stop(thread, true);
                    return Err(e);
                }
                if wait.expired() {
                    stop(thread, true);
                    return Ok(None);
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                stop(thread, false);
                return Err(Error::new(
                    ErrorKind::Internal,
                    "a Consul request thread died",
                ));
            }
        }
    }
}

/// Exponential backoff with jitter (so that hundreds of refused waiters do not come back
/// together): 25 ms doubling to 1 s, each pause a random 50–100 % of the step.
pub struct Backoff {
    step: Duration,
    seed: u64,
}

impl Backoff {
    pub fn new() -> Backoff {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() as u64)
            .unwrap_or(0);
        Backoff {
            step: Duration::from_millis(25),
            seed: (t ^ (u64::from(std::process::id()) << 32)) | 1,
        }
    }

    pub fn step(&mut self) -> Duration {
        // xorshift64: jitter only, no need for a better generator.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let frac = 0.5 + (self.seed % 1000) as f64 / 2000.0;
        let d = self.step.mul_f64(frac);
        self.step = (self.step * 2).min(Duration::from_secs(1));
        d
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_a_second_with_jitter() {
        let mut b = Backoff::new();
        let first = b.step();
        assert!(first >= Duration::from_millis(12) && first <= Duration::from_millis(25));
        let mut last = first;
        for _ in 0..10 {
            last = b.step();
        }
        assert!(
            last >= Duration::from_millis(500) && last <= Duration::from_secs(1),
            "{last:?}"
        );
    }
}
