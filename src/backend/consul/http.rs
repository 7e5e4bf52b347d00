//! A small blocking client for the parts of Consul's HTTP API that locks use: sessions, KV
//! reads (plain and blocking), and transactions. One `ureq::Agent` (connection pool) per lock,
//! and one per blocking query run on a helper thread, which is shut down (its socket closed at
//! once) when the wait is cancelled or times out.

use super::config::Config;
use crate::backend::Wait;
use crate::{Error, ErrorKind, Result};
use serde::Deserialize;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// Bound on one ordinary request (connect + answer), and never past the client's deadline.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
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
    agent: ureq::Agent,
    base: String,
    /// `host:port`, for messages.
    pub addr: String,
    token: Option<String>,
    /// No request of this client (and its clones) runs past this: the caller's deadline.
    deadline: Arc<Mutex<Option<Instant>>>,
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

/// A KV entry as Consul returns it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct KvEntry {
    pub key: String,
    #[serde(default)]
    pub flags: u64,
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub session: Option<String>,
    #[serde(default)]
    pub lock_index: u64,
    #[serde(default)]
    pub create_index: u64,
    #[serde(default)]
    pub modify_index: u64,
}

impl KvEntry {
    /// The session holding this key, if any.
    pub fn holder(&self) -> Option<&str> {
        self.session.as_deref().filter(|s| !s.is_empty())
    }

    /// The decoded value (None: no value, or not base64).
    pub fn bytes(&self) -> Option<Vec<u8>> {
        self.value.as_deref().and_then(b64_decode)
    }
}

/// A session as `/v1/session/info` returns it.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct SessionInfo {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub node: String,
}

/// The outcome of a transaction.
pub enum Txn {
    /// Applied: the KV results, in op order (ops that return nothing are skipped by Consul).
    Applied(Vec<KvEntry>),
    /// Rolled back: Consul's reasons.
    Failed(Vec<String>),
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TxnReply {
    #[serde(default)]
    results: Option<Vec<TxnResult>>,
    #[serde(default)]
    errors: Option<Vec<TxnError>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TxnResult {
    #[serde(rename = "KV", default)]
    kv: Option<KvEntry>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TxnError {
    #[serde(default)]
    what: String,
}

/// A fresh agent (connection pool) for one lock: nothing of it outlives the lock, so a
/// released or cancelled lock leaves no socket open in the process.
fn new_agent(cfg: &Config) -> Result<ureq::Agent> {
    let mut builder = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .timeout_global(Some(REQUEST_TIMEOUT))
        // Consul's API never redirects: a 3xx is an error naming its Location, and the token
        // is never sent to another address.
        .max_redirects(0)
        .max_response_header_size(MAX_HEADER)
        .user_agent(format!("lockfn/{}", crate::VERSION))
        .max_idle_connections_per_host(4)
        .tls_config(tls_config(cfg)?);
    if cfg.is_loopback() {
        builder = builder.proxy(None);
    }
    Ok(builder.build().into())
}

fn read_pem(path: &std::path::Path, what: &str) -> Result<Vec<ureq::tls::PemItem<'static>>> {
    let data = std::fs::read(path)
        .map_err(|e| Error::os(format!("cannot read {what} {}", path.display()), e))?;
    let items: Vec<_> = ureq::tls::parse_pem(&data).filter_map(|i| i.ok()).collect();
    if items.is_empty() {
        return Err(Error::new(
            ErrorKind::Invalid,
            format!("{what} {} holds no PEM certificate or key", path.display()),
        ));
    }
    Ok(items)
}

fn certs_of(items: Vec<ureq::tls::PemItem<'static>>) -> Vec<ureq::tls::Certificate<'static>> {
    items
        .into_iter()
        .filter_map(|i| match i {
            ureq::tls::PemItem::Certificate(c) => Some(c),
            _ => None,
        })
        .collect()
}

fn tls_config(cfg: &Config) -> Result<ureq::tls::TlsConfig> {
    use ureq::tls::{ClientCert, PemItem, RootCerts, TlsConfig};
    let mut b = TlsConfig::builder();
    let mut roots = Vec::new();
    if let Some(ca) = &cfg.ca_cert {
        roots.extend(certs_of(read_pem(ca, "CONSUL_CACERT")?));
    }
    if let Some(dir) = &cfg.ca_path {
        let entries = std::fs::read_dir(dir)
            .map_err(|e| Error::os(format!("cannot read CONSUL_CAPATH {}", dir.display()), e))?;
        for e in entries.filter_map(|e| e.ok()) {
            if let Ok(items) = read_pem(&e.path(), "CONSUL_CAPATH file") {
                roots.extend(certs_of(items));
            }
        }
    }
    if !roots.is_empty() {
        b = b.root_certs(RootCerts::new_with_certs(&roots));
    } else if cfg.ca_cert.is_some() || cfg.ca_path.is_some() {
        return Err(Error::new(
            ErrorKind::Invalid,
            "CONSUL_CACERT/CONSUL_CAPATH hold no certificate",
        ));
    }
    if let (Some(cert), Some(key)) = (&cfg.client_cert, &cfg.client_key) {
        let chain = certs_of(read_pem(cert, "CONSUL_CLIENT_CERT")?);
        let key = read_pem(key, "CONSUL_CLIENT_KEY")?
            .into_iter()
            .find_map(|i| match i {
                PemItem::PrivateKey(k) => Some(k),
                _ => None,
            })
            .ok_or_else(|| {
                Error::new(ErrorKind::Invalid, "CONSUL_CLIENT_KEY holds no private key")
            })?;
        b = b.client_cert(Some(ClientCert::new_with_certs(&chain, key)));
    }
    if !cfg.verify {
        b = b.disable_verification(true);
    }
    Ok(b.build())
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
            agent: new_agent(cfg)?,
            base: cfg.base(),
            addr: cfg.addr.clone(),
            token: cfg.token.clone(),
            deadline: Arc::new(Mutex::new(None)),
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

    /// The same client with a connection pool of its own.
    pub fn fork(&self) -> Client {
        Client {
            agent: ureq::Agent::new_with_config(self.agent.config().clone()),
            base: self.base.clone(),
            addr: self.addr.clone(),
            token: self.token.clone(),
            deadline: Arc::new(Mutex::new(self.deadline())),
        }
    }

    /// Close every connection of this client's pool, interrupting requests in flight.
    pub fn shutdown(&self) {
        self.agent.clone().shutdown();
    }

    /// Remove the token from a text, should a service or a library ever echo it.
    fn scrub(&self, s: String) -> String {
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
        let url = format!("{}{}", self.base, path);
        let timeout = self.left(timeout);
        if timeout < Duration::from_millis(5) {
            return Err(self.out_of_time());
        }
        let result = match method {
            Method::Get => {
                let mut rb = match method {
                    Method::Get => self.agent.get(&url),
                    _ => self.agent.delete(&url),
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
                let mut rb = self
                    .agent
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
        if (300..400).contains(&status) {
            // Not followed (max_redirects 0), so no credential went anywhere else.
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
                ureq::Error::BodyExceedsLimit(_) => Error::new(
                    ErrorKind::Unavailable,
                    format!(
                        "the Consul agent at {} sent an answer larger than the {} MiB limit",
                        self.addr,
                        MAX_BODY >> 20
                    ),
                ),
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
            ureq::Error::LargeResponseHeader(n, limit) => format!(
                "the Consul agent at {} sent {n} bytes of headers (the limit is {limit})",
                self.base
            ),
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

    fn malformed(&self, what: &str, e: impl std::fmt::Display) -> Error {
        Error::new(
            ErrorKind::Internal,
            self.scrub(format!(
                "Consul at {} gave a malformed answer to {what}: {e}",
                self.addr
            )),
        )
    }

    /// Run `f` again on transient failures (`Unavailable`: agent restarting, no leader during
    /// an election), at most `attempts` times in all, with a short backoff.
    pub fn retry<T>(&self, attempts: u32, mut f: impl FnMut() -> Result<T>) -> Result<T> {
        let mut delay = Duration::from_millis(100);
        let mut n = 1;
        loop {
            match f() {
                Err(e)
                    if e.kind() == ErrorKind::Unavailable
                        && n < attempts
                        && self.left(delay * 2) >= delay * 2 =>
                {
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(1));
                    n += 1;
                }
                r => return r,
            }
        }
    }

    /// [`Client::retry`] bounded by a caller's wait: no retry once the wait is over (or for a
    /// try-once), and the backoff is a `wait.pause`, so a cancel ends it.
    pub fn retry_within<T>(
        &self,
        attempts: u32,
        wait: &crate::backend::Wait,
        mut f: impl FnMut() -> Result<T>,
    ) -> Result<T> {
        let mut delay = Duration::from_millis(100);
        let mut n = 1;
        loop {
            match f() {
                Err(e)
                    if e.kind() == ErrorKind::Unavailable
                        && n < attempts
                        && !wait.is_try_once()
                        && !wait.expired()
                        && self.left(delay * 2) >= delay * 2 =>
                {
                    wait.pause(delay)?;
                    if wait.expired() {
                        return Err(e);
                    }
                    delay = (delay * 2).min(Duration::from_secs(1));
                    n += 1;
                }
                r => return r,
            }
        }
    }

    // --- sessions -------------------------------------------------------------------------

    pub fn session_create(&self, body: &serde_json::Value) -> Result<String> {
        let data = serde_json::to_vec(body).map_err(|e| self.malformed("session create", e))?;
        let r = self.call(
            Method::Put,
            "/v1/session/create",
            Some(&data),
            REQUEST_TIMEOUT,
        )?;
        if r.status != 200 {
            return Err(self.status_error("create a session", &r));
        }
        #[derive(Deserialize)]
        struct Created {
            #[serde(rename = "ID")]
            id: String,
        }
        let c: Created =
            serde_json::from_slice(&r.body).map_err(|e| self.malformed("session create", e))?;
        if c.id.is_empty() || c.id.len() > 64 {
            return Err(self.malformed("session create", "no session ID"));
        }
        Ok(c.id)
    }

    /// Renew a session; Ok(false) when it no longer exists.
    pub fn session_renew(&self, id: &str) -> Result<bool> {
        let path = format!("/v1/session/renew/{}", encode_path(id));
        let r = self.call(Method::Put, &path, None, REQUEST_TIMEOUT)?;
        match r.status {
            200 => {
                // An empty list is also "not found" on some versions.
                let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
                Ok(!matches!(v, serde_json::Value::Null)
                    && v.as_array().map(|a| !a.is_empty()).unwrap_or(true))
            }
            404 => Ok(false),
            _ => Err(self.status_error("renew the lock's session", &r)),
        }
    }

    pub fn session_destroy(&self, id: &str) -> Result<()> {
        let path = format!("/v1/session/destroy/{}", encode_path(id));
        let r = self.call(Method::Put, &path, None, REQUEST_TIMEOUT)?;
        if r.status != 200 {
            return Err(self.status_error("destroy a session", &r));
        }
        Ok(())
    }

    pub fn session_info(&self, id: &str) -> Result<Option<SessionInfo>> {
        let path = format!("/v1/session/info/{}", encode_path(id));
        let r = self.call(Method::Get, &path, None, REQUEST_TIMEOUT)?;
        if r.status == 404 {
            return Ok(None);
        }
        if r.status != 200 {
            return Err(self.status_error("read a session", &r));
        }
        let v: Option<Vec<SessionInfo>> =
            serde_json::from_slice(&r.body).map_err(|e| self.malformed("session info", e))?;
        Ok(v.and_then(|v| v.into_iter().next()))
    }

    // --- KV ---------------------------------------------------------------------------------

    fn kv_read(
        &self,
        path: String,
        block: Option<(u64, Duration)>,
        what: &str,
    ) -> Result<(Vec<KvEntry>, u64)> {
        let (path, timeout) = match block {
            Some((index, wait)) if index > 0 => {
                let sep = if path.contains('?') { '&' } else { '?' };
                (
                    format!("{path}{sep}index={index}&wait={}", go_duration(wait)),
                    // Consul adds up to wait/16 of jitter.
                    wait + wait / 16 + REQUEST_TIMEOUT,
                )
            }
            _ => (path, REQUEST_TIMEOUT),
        };
        let r = self.call(Method::Get, &path, None, timeout)?;
        let index = r.index.unwrap_or(0);
        match r.status {
            404 => Ok((Vec::new(), index)),
            200 => {
                let v: Option<Vec<KvEntry>> =
                    serde_json::from_slice(&r.body).map_err(|e| self.malformed(what, e))?;
                Ok((v.unwrap_or_default(), index))
            }
            _ => Err(self.status_error(what, &r)),
        }
    }

    /// Read one key; with `block = Some((index, wait))` a blocking query.
    pub fn kv_get(
        &self,
        key: &str,
        block: Option<(u64, Duration)>,
    ) -> Result<(Option<KvEntry>, u64)> {
        let (v, i) = self.kv_read(
            format!("/v1/kv/{}", encode_path(key)),
            block,
            &format!("read key {key}"),
        )?;
        Ok((v.into_iter().find(|e| e.key == key), i))
    }

    /// Every key starting with `prefix`.
    pub fn kv_list(
        &self,
        prefix: &str,
        block: Option<(u64, Duration)>,
    ) -> Result<(Vec<KvEntry>, u64)> {
        self.kv_read(
            format!("/v1/kv/{}?recurse=true", encode_path(prefix)),
            block,
            &format!("list keys under {prefix}"),
        )
    }

    /// Apply a transaction of KV ops (JSON objects as Consul's `/v1/txn` takes them).
    pub fn txn(&self, ops: &[serde_json::Value]) -> Result<Txn> {
        let body: Vec<serde_json::Value> = ops
            .iter()
            .map(|op| serde_json::json!({ "KV": op }))
            .collect();
        let data = serde_json::to_vec(&body).map_err(|e| self.malformed("transaction", e))?;
        let r = self.call(Method::Put, "/v1/txn", Some(&data), REQUEST_TIMEOUT)?;
        match r.status {
            200 | 409 => {
                let t: TxnReply = serde_json::from_slice(&r.body)
                    .map_err(|e| self.malformed("a transaction", e))?;
                let errors: Vec<String> = t
                    .errors
                    .unwrap_or_default()
                    .into_iter()
                    .map(|e| e.what)
                    .collect();
                if errors.is_empty() && r.status == 200 {
                    Ok(Txn::Applied(
                        t.results
                            .unwrap_or_default()
                            .into_iter()
                            .filter_map(|r| r.kv)
                            .collect(),
                    ))
                } else if errors.iter().any(|w| is_acl_text(w)) {
                    Err(Error::new(
                        ErrorKind::Permission,
                        self.scrub(format!(
                            "Consul at {} refused the lock operation: {} (check CONSUL_HTTP_TOKEN / \
                             CONSUL_HTTP_TOKEN_FILE and the token's key and session rights)",
                            self.addr,
                            crate::target::printable(&errors.join("; "))
                        )),
                    ))
                } else if errors.is_empty() {
                    Err(self.malformed("a transaction", "HTTP 409 without errors"))
                } else {
                    Ok(Txn::Failed(errors))
                }
            }
            _ => Err(self.status_error("apply a lock transaction", &r)),
        }
    }
}

pub fn is_acl_text(s: &str) -> bool {
    let l = s.to_ascii_lowercase();
    l.contains("permission denied") || l.contains("acl not found")
}

/// Run a blocking request on a helper thread with a connection pool of its own, so that a
/// waiter stops at its deadline and on its cancel fd at once rather than when Consul answers:
/// the helper's connection is shut down and the thread joined, leaving nothing behind.
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
    let helper = client.fork();
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
    let stop = |thread: std::thread::JoinHandle<()>| {
        helper.shutdown();
        let _ = thread.join();
    };
    loop {
        let d = match wait.remaining() {
            Some(r) => r.min(slice),
            None => slice,
        };
        match rx.recv_timeout(d) {
            Ok(r) => {
                stop(thread);
                return r.map(Some);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if let Err(e) = wait.check_cancel() {
                    stop(thread);
                    return Err(e);
                }
                if wait.expired() {
                    stop(thread);
                    return Ok(None);
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                stop(thread);
                return Err(Error::new(
                    ErrorKind::Internal,
                    "a Consul request thread died",
                ));
            }
        }
    }
}

// --- base64 (Consul's KV values) ----------------------------------------------------------------

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

pub fn b64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

pub fn b64_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        } as u32;
        acc = acc << 6 | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trip() {
        for s in ["", "a", "ab", "abc", "abcd", "{\"x\":1}", "\u{e9}\u{e8}"] {
            let e = b64_encode(s.as_bytes());
            assert_eq!(b64_decode(&e).unwrap(), s.as_bytes(), "{s:?} {e}");
        }
        assert_eq!(b64_encode(b"{}"), "e30=");
        assert!(b64_decode("***").is_none());
    }

    #[test]
    fn kv_entry_parses_consul_json_and_huge_flags() {
        let j = r#"[{"LockIndex":1,"Key":"a/.lock","Flags":16210313421097356768,"Value":"e30=","Session":"s","CreateIndex":5,"ModifyIndex":9}]"#;
        let v: Vec<KvEntry> = serde_json::from_str(j).unwrap();
        assert_eq!(v[0].flags, 0xe0f69a2baa414de0);
        assert_eq!(v[0].bytes().unwrap(), b"{}");
        assert_eq!(v[0].holder(), Some("s"));
    }
}
