//! Where a Consul lock lives: the KV key and, for `consul://host:port/KEY`, the agent's
//! address (else `CONSUL_HTTP_ADDR`, read with the rest of the configuration in config.rs).

use crate::target::{check_host_port, invalid, split_authority, validate_name, Located, MAX_PATH};
use crate::Result;
use std::sync::Arc;

/// Where `consul:NAME` keys live.
pub const KEY_PREFIX: &str = "lockfn/";

#[derive(Debug, Clone)]
pub(crate) struct Place {
    /// Agent address from the URL (`host:port`), else None: `CONSUL_HTTP_ADDR`.
    pub addr: Option<String>,
    /// The KV key, e.g. `lockfn/NAME`.
    pub key: String,
}

impl Place {
    /// `consul:NAME`: the key `lockfn/NAME`.
    pub fn named(name: &str) -> Located {
        let key = format!("{KEY_PREFIX}{name}");
        Located::named("consul", name, key.clone(), Place { addr: None, key })
    }

    /// `consul://[HOST:PORT]/KEY`: exactly KEY.
    pub fn from_url(text: &str, rest: &str) -> Result<Located> {
        let (authority, key) = split_authority(text, rest)?;
        if authority.contains('@') {
            return Err(invalid(
                text,
                "credentials do not belong in a consul:// URL: use CONSUL_HTTP_TOKEN or \
                 CONSUL_HTTP_TOKEN_FILE",
            ));
        }
        let addr = if authority.is_empty() {
            None
        } else {
            check_host_port(text, authority)?;
            Some(authority.to_string())
        };
        // An empty key only names the whole KV store as a prefix (list, release --match);
        // Target::parse refuses it as a lock.
        if !key.is_empty() {
            validate_name(text, key, true, MAX_PATH)?;
        }
        Ok(Place {
            addr,
            key: key.to_string(),
        }
        .located_url())
    }

    /// The lock at `key` in the form of this place: `consul:NAME` when the key is under
    /// `lockfn/` and this place was not a URL; a URL with the same address otherwise.
    pub fn sibling(&self, url: bool, key: &str) -> Option<Located> {
        if url {
            Some(
                Place {
                    addr: self.addr.clone(),
                    key: key.to_string(),
                }
                .located_url(),
            )
        } else {
            key.strip_prefix(KEY_PREFIX).map(Place::named)
        }
    }

    fn located_url(self) -> Located {
        let canonical = match &self.addr {
            Some(a) => format!("consul://{a}/{}", self.key),
            None => format!("consul:///{}", self.key),
        };
        Located {
            name: self.key.clone(),
            url: true,
            canonical,
            resource: self.key.clone(),
            place: Arc::new(self),
        }
    }
}
