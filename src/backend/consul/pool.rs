//! The client's connections: a ureq agent keeping one idle connection, parked for the
//! process's next lock when a lock is done, and resolving IP literals without a thread.

use super::config::Config;
use super::http::{CONNECT_TIMEOUT, MAX_HEADER, REQUEST_TIMEOUT};
use super::tls::tls_config;
use crate::Result;
use std::sync::Mutex;

/// The connection pool of a client and its clones. When the last of them goes, the agent
/// (with its one idle connection) is parked for the next lock of this process with the same
/// configuration: consecutive locks (a loop of `lock_acquire`/`lock_release`) then reuse one
/// connection, as api.Lock's client does; at most one idle connection per process stays open.
pub(super) struct Pool {
    pub agent: ureq::Agent,
    pub cfg: Config,
    pub pid: u32,
}

pub(crate) struct Parked {
    agent: ureq::Agent,
    cfg: Config,
    pid: u32,
}

/// Taken by the atfork prepare handler (crate::fork), so a child never finds it locked; the
/// child forgets the parent's parked agent there ([`forget_parked`]).
pub(crate) static PARKED: Mutex<Option<Parked>> = Mutex::new(None);
pub(crate) type ParkedSlot = Option<Parked>;

/// In a forked child, with [`PARKED`] held: forget (never drop) the parent's parked agent —
/// its socket is the parent's.
pub(crate) fn forget_parked(slot: &mut ParkedSlot) {
    if let Some(p) = slot.take() {
        std::mem::forget(p);
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        if self.pid != crate::fork::pid() {
            return;
        }
        let mut p = PARKED.lock().unwrap_or_else(|e| e.into_inner());
        let old = p.replace(Parked {
            agent: self.agent.clone(),
            cfg: self.cfg.clone(),
            pid: self.pid,
        });
        // One parked at most; another process's (we are a forked child) is never dropped
        // here: closing its socket could disturb the parent's connection.
        if let Some(old) = old.filter(|o| o.pid != self.pid) {
            std::mem::forget(old);
        }
    }
}

/// The parked agent for `cfg` of this process, or a new one.
pub(super) fn agent_for(cfg: &Config) -> Result<ureq::Agent> {
    let pid = std::process::id();
    let mut p = PARKED.lock().unwrap_or_else(|e| e.into_inner());
    match p.take() {
        Some(parked) if parked.pid == pid && parked.cfg == *cfg => return Ok(parked.agent),
        Some(parked) if parked.pid != pid => std::mem::forget(parked),
        other => *p = other,
    }
    drop(p);
    new_agent(cfg)
}

/// A fresh agent (connection pool).
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
        // One connection per lock (see the module's note on Consul's per-client limit).
        .max_idle_connections_per_host(1)
        .max_idle_connections(1)
        .tls_config(tls_config(cfg)?);
    if cfg.is_loopback() {
        builder = builder.proxy(None);
    }
    Ok(agent_with(builder.build()))
}

pub(super) fn agent_with(config: ureq::config::Config) -> ureq::Agent {
    ureq::Agent::with_parts(
        config,
        ureq::unversioned::transport::DefaultConnector::default(),
        LiteralFirst::default(),
    )
}

/// ureq's default resolver starts a thread for every request when a timeout is set (to bound
/// getaddrinfo), even for an IP address and a pooled connection (ureq 3.5,
/// unversioned/resolver.rs): a quarter of an uncontended cycle's cost. An IP literal (as
/// `CONSUL_HTTP_ADDR` usually is) needs no lookup and is answered here; names go to ureq's.
#[derive(Debug, Default)]
struct LiteralFirst(ureq::unversioned::resolver::DefaultResolver);

impl ureq::unversioned::resolver::Resolver for LiteralFirst {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: ureq::unversioned::transport::NextTimeout,
    ) -> std::result::Result<ureq::unversioned::resolver::ResolvedSocketAddrs, ureq::Error> {
        if let Some(a) = uri.authority() {
            let host = a.host().trim_start_matches('[').trim_end_matches(']');
            if let Ok(ip) = host.parse::<std::net::IpAddr>() {
                let port = a.port_u16().unwrap_or(match uri.scheme_str() {
                    Some("https") => 443,
                    _ => 80,
                });
                let mut v = self.empty();
                v.push(std::net::SocketAddr::new(ip, port));
                return Ok(v);
            }
        }
        self.0.resolve(uri, config, timeout)
    }
}
