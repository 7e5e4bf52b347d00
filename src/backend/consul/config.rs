//! Where the Consul agent is and how to reach it, read the way Consul's own tools read it:
//! `CONSUL_HTTP_ADDR` (`host:port`, `http://host:port`, `https://host:port`),
//! `CONSUL_HTTP_TOKEN`, `CONSUL_HTTP_TOKEN_FILE` (wins when set, as in HashiCorp's api),
//! `CONSUL_HTTP_SSL`, `CONSUL_HTTP_SSL_VERIFY`, `CONSUL_CACERT`, `CONSUL_CAPATH`,
//! `CONSUL_CLIENT_CERT`, `CONSUL_CLIENT_KEY`. A `consul://host:port/KEY` target overrides the
//! address (not the scheme, nor the token).
//!
//! The token is kept out of every message: `Debug` redacts it and no error formats it.

use crate::{Error, ErrorKind, Result};
use std::fmt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

pub const DEFAULT_ADDR: &str = "127.0.0.1:8500";

#[derive(Clone, PartialEq, Eq)]
pub struct Config {
    /// "http" or "https".
    pub scheme: &'static str,
    /// `host:port` (what errors name).
    pub addr: String,
    pub token: Option<String>,
    pub ca_cert: Option<PathBuf>,
    pub ca_path: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// Verify the server's certificate (`CONSUL_HTTP_SSL_VERIFY=false` turns it off).
    pub verify: bool,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("scheme", &self.scheme)
            .field("addr", &self.addr)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("ca_cert", &self.ca_cert)
            .field("ca_path", &self.ca_path)
            .field("client_cert", &self.client_cert)
            .field("client_key", &self.client_key)
            .field("verify", &self.verify)
            .finish()
    }
}

fn invalid(msg: String) -> Error {
    Error::new(ErrorKind::Invalid, msg)
}

/// Go's strconv.ParseBool, which Consul uses for its boolean variables.
fn parse_bool(var: &str, v: &str) -> Result<bool> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(invalid(format!(
            "{var}='{}' is not a boolean (true/false/1/0)",
            crate::target::printable(v)
        ))),
    }
}

/// Largest token file read (a Consul token is a 36-byte UUID).
const MAX_TOKEN_FILE: u64 = 64 << 10;

/// The token in `CONSUL_HTTP_TOKEN_FILE`, trimmed. Every failure (missing, unreadable, a
/// directory or device, too big, not UTF-8) is a configuration error naming the variable.
fn read_token_file(path: &str) -> Result<String> {
    use std::io::Read;
    let shown = crate::target::printable(path);
    let bad = |why: String| invalid(format!("CONSUL_HTTP_TOKEN_FILE={shown}: {why}"));
    // O_NONBLOCK: a FIFO planted there must not block the open.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| bad(format!("cannot open the Consul token file: {e}")))?;
    let meta = f
        .metadata()
        .map_err(|e| bad(format!("cannot read the Consul token file: {e}")))?;
    if !meta.is_file() {
        return Err(bad("the Consul token file is not a regular file".into()));
    }
    if meta.len() > MAX_TOKEN_FILE {
        return Err(bad(format!(
            "the Consul token file is {} bytes long (at most {MAX_TOKEN_FILE})",
            meta.len()
        )));
    }
    let mut data = Vec::new();
    f.take(MAX_TOKEN_FILE + 1)
        .read_to_end(&mut data)
        .map_err(|e| bad(format!("cannot read the Consul token file: {e}")))?;
    let text = String::from_utf8(data)
        .map_err(|_| bad("the Consul token file is not UTF-8 text".into()))?;
    Ok(text.trim().to_string())
}

/// Split an address into (https?, host:port).
fn split_scheme(var: &str, addr: &str) -> Result<(Option<bool>, String)> {
    let addr = addr.trim().trim_end_matches('/');
    let (https, rest) = match addr.split_once("://") {
        Some(("http", rest)) => (Some(false), rest),
        Some(("https", rest)) => (Some(true), rest),
        Some(("unix", _)) => {
            return Err(invalid(format!(
                "{var}: unix sockets are not supported by lockfn; give host:port"
            )))
        }
        Some((other, _)) => {
            return Err(invalid(format!(
                "{var}: unknown protocol scheme '{}' (http:// or https://)",
                crate::target::printable(other)
            )))
        }
        None => (None, addr),
    };
    if !crate::target::is_host_port(rest) {
        return Err(invalid(format!(
            "{var}: '{}' is not a host:port",
            crate::target::printable(rest)
        )));
    }
    Ok((https, rest.to_string()))
}

impl Config {
    /// The configuration from the process environment; `url_addr` is the `host:port` of a
    /// `consul://host:port/KEY` target.
    pub fn from_env(url_addr: Option<&str>) -> Result<Config> {
        Config::from_vars(url_addr, &|v| {
            std::env::var(v).ok().filter(|s| !s.trim().is_empty())
        })
    }

    pub fn from_vars(
        url_addr: Option<&str>,
        var: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config> {
        let env_addr = var("CONSUL_HTTP_ADDR").unwrap_or_else(|| DEFAULT_ADDR.to_string());
        let (addr_https, env_hostport) = split_scheme("CONSUL_HTTP_ADDR", &env_addr)?;
        let ssl = match var("CONSUL_HTTP_SSL") {
            Some(v) => parse_bool("CONSUL_HTTP_SSL", v.trim())?,
            None => false,
        };
        // As HashiCorp's api: https if either asks for it; an http:// address never
        // downgrades an explicit CONSUL_HTTP_SSL=true.
        let https = ssl || addr_https == Some(true);
        let addr = match url_addr {
            Some(a) if !a.is_empty() => split_scheme("the target's address", a)?.1,
            _ => env_hostport,
        };
        let verify = match var("CONSUL_HTTP_SSL_VERIFY") {
            Some(v) => parse_bool("CONSUL_HTTP_SSL_VERIFY", v.trim())?,
            None => true,
        };
        let token = match var("CONSUL_HTTP_TOKEN_FILE") {
            Some(path) => {
                let t = read_token_file(&path)?;
                if t.is_empty() {
                    var("CONSUL_HTTP_TOKEN").map(|t| t.trim().to_string())
                } else {
                    Some(t)
                }
            }
            None => var("CONSUL_HTTP_TOKEN").map(|t| t.trim().to_string()),
        };
        if let Some(t) = &token {
            if t.bytes().any(|b| b.is_ascii_control() || b >= 0x80) {
                return Err(invalid(
                    "the Consul token contains control or non-ASCII bytes (check CONSUL_HTTP_TOKEN / CONSUL_HTTP_TOKEN_FILE)"
                        .to_string(),
                ));
            }
        }
        Ok(Config {
            scheme: if https { "https" } else { "http" },
            addr,
            token,
            ca_cert: var("CONSUL_CACERT").map(PathBuf::from),
            ca_path: var("CONSUL_CAPATH").map(PathBuf::from),
            client_cert: var("CONSUL_CLIENT_CERT").map(PathBuf::from),
            client_key: var("CONSUL_CLIENT_KEY").map(PathBuf::from),
            verify,
        })
    }

    /// `scheme://host:port`, what URLs start with and what messages name.
    pub fn base(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    /// Is the agent on a loopback address (never through a proxy)?
    pub fn is_loopback(&self) -> bool {
        let host = match self.addr.rsplit_once(':') {
            Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
            _ => self.addr.as_str(),
        };
        host == "localhost" || host.starts_with("127.") || host == "[::1]"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(url: Option<&str>, vars: &[(&str, &str)]) -> Result<Config> {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_vars(url, &move |k| m.get(k).cloned())
    }

    #[test]
    fn addresses() {
        let c = cfg(None, &[]).unwrap();
        assert_eq!(c.base(), "http://127.0.0.1:8500");
        let c = cfg(None, &[("CONSUL_HTTP_ADDR", "https://c.example:8501/")]).unwrap();
        assert_eq!(c.base(), "https://c.example:8501");
        let c = cfg(
            None,
            &[
                ("CONSUL_HTTP_ADDR", "10.0.0.1:8501"),
                ("CONSUL_HTTP_SSL", "true"),
            ],
        )
        .unwrap();
        assert_eq!(c.base(), "https://10.0.0.1:8501");
        let c = cfg(
            Some("127.0.0.2:9"),
            &[("CONSUL_HTTP_ADDR", "http://x:1"), ("CONSUL_HTTP_SSL", "1")],
        )
        .unwrap();
        assert_eq!(c.base(), "https://127.0.0.2:9");
        assert!(c.is_loopback());
        assert!(cfg(None, &[("CONSUL_HTTP_ADDR", "unix:///tmp/s")]).is_err());
        assert!(cfg(None, &[("CONSUL_HTTP_ADDR", "ftp://x")]).is_err());
        assert!(cfg(None, &[("CONSUL_HTTP_SSL", "maybe")]).is_err());
    }

    #[test]
    fn token_file_wins_and_is_never_shown() {
        let dir = std::env::temp_dir().join(format!("lockfn-consul-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("tok");
        std::fs::write(&f, "s3cr3t-file\n").unwrap();
        let c = cfg(
            None,
            &[
                ("CONSUL_HTTP_TOKEN", "s3cr3t-env"),
                ("CONSUL_HTTP_TOKEN_FILE", f.to_str().unwrap()),
            ],
        )
        .unwrap();
        assert_eq!(c.token.as_deref(), Some("s3cr3t-file"));
        assert!(!format!("{c:?}").contains("s3cr3t"));
        let e = cfg(None, &[("CONSUL_HTTP_TOKEN_FILE", "/nonexistent/tok")]).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/tok"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
