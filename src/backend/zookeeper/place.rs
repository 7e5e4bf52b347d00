//! Where a ZooKeeper lock lives: the servers, the node path and the digest credentials, from
//! `zk:NAME` (`ZKHOSTS`, `LOCKFN_ZK_AUTH`) or `zk://[user:pass@]h1:p1,h2:p2/PATH`.

use crate::target::{
    check_host_port, env_nonempty, invalid, is_host_port, printable, split_authority, split_hosts,
    validate_name, Located, MAX_PATH,
};
use crate::{Error, ErrorKind, Result};
use std::fmt;
use std::sync::Arc;

pub const DEFAULT_ZKHOSTS: &str = "127.0.0.1:2181";
/// Where `zk:NAME` nodes live.
pub const ROOT: &str = "/lockfn";

#[derive(Clone)]
pub(super) struct Place {
    /// `host:port` entries, never empty.
    pub hosts: Vec<String>,
    /// Absolute node path of the lock, e.g. `/lockfn/NAME`.
    pub path: String,
    /// Digest credentials `user:password` from the URL or `LOCKFN_ZK_AUTH`.
    pub auth: Option<String>,
}

// Credentials never show up in Debug output (logs, panics, errors).
impl fmt::Debug for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "zk {{ hosts: {:?}, path: {:?}, auth: {} }}",
            self.hosts,
            self.path,
            if self.auth.is_some() { "<set>" } else { "None" }
        )
    }
}

impl Place {
    /// `zk:NAME`: the node `/lockfn/NAME` on `ZKHOSTS`.
    pub fn named(name: &str) -> Result<Located> {
        let place = Place {
            hosts: hosts_from_env()?,
            path: format!("{ROOT}/{name}"),
            auth: env_nonempty("LOCKFN_ZK_AUTH"),
        };
        Ok(Located::named("zk", name, place.path.clone(), place))
    }

    /// `zk://[user:pass@]HOSTS/PATH`; empty HOSTS means `ZKHOSTS`.
    pub fn from_url(text: &str, rest: &str) -> Result<Located> {
        let (authority, path) = split_authority(text, rest)?;
        let (auth, hosts) = match authority.rsplit_once('@') {
            Some((cred, hosts)) => {
                if !cred.contains(':') {
                    return Err(invalid(text, "credentials must be user:password@"));
                }
                (Some(cred.to_string()), hosts)
            }
            None => (env_nonempty("LOCKFN_ZK_AUTH"), authority),
        };
        let hosts = if hosts.is_empty() {
            hosts_from_env()?
        } else {
            split_hosts(hosts)
        };
        if hosts.is_empty() {
            return Err(invalid(text, "no ZooKeeper server is named"));
        }
        for h in &hosts {
            check_host_port(text, h)?;
        }
        validate_name(text, path, true, MAX_PATH)?;
        Ok(Place {
            hosts,
            path: format!("/{path}"),
            auth,
        }
        .located_url())
    }

    /// The same servers and credentials, another node (a `list` result of a URL prefix).
    pub fn at(&self, path: &str) -> Located {
        Place {
            path: path.to_string(),
            ..self.clone()
        }
        .located_url()
    }

    fn located_url(self) -> Located {
        Located {
            name: self.path.trim_start_matches('/').to_string(),
            url: true,
            canonical: format!("zk://{}{}", self.hosts.join(","), self.path),
            resource: self.path.clone(),
            place: Arc::new(self),
        }
    }
}

/// `ZKHOSTS` (or the default): `Invalid` naming the variable when malformed.
fn hosts_from_env() -> Result<Vec<String>> {
    let raw = env_nonempty("ZKHOSTS").unwrap_or_else(|| DEFAULT_ZKHOSTS.to_string());
    let hosts = split_hosts(&raw);
    if hosts.is_empty() || hosts.len() > 64 {
        return Err(Error::new(
            ErrorKind::Invalid,
            format!(
                "ZKHOSTS='{}' names no server (expected host:port[,host:port...])",
                printable(&raw)
            ),
        ));
    }
    if let Some(bad) = hosts.iter().find(|h| !is_host_port(h)) {
        return Err(Error::new(
            ErrorKind::Invalid,
            format!(
                "ZKHOSTS='{}': '{}' is not a host:port (expected host:port[,host:port...])",
                printable(&raw),
                printable(bad)
            ),
        ));
    }
    Ok(hosts)
}
