//! Target parsing and validation: one string names a lock.
//!
//! | text | service |
//! |---|---|
//! | `sem:NAME` | POSIX named semaphore `/NAME` |
//! | `pmxcfs:NAME` | directory `NAME` under `LOCKFN_PMXCFS_DIR` (default `/etc/pve/priv/lock`) |
//! | `zk:NAME`, `zk://[user:pass@]h1:p1,h2:p2/PATH` | ZooKeeper node `/lockfn/NAME`, or exactly PATH |
//! | `consul:NAME`, `consul://host:port/KEY` | Consul key `lockfn/NAME`, or exactly KEY |
//! | `NAME` | `LOCKFN_BACKEND`, else pmxcfs where /etc/pve is mounted by pmxcfs, else sem |
//!
//! Validation is strict so that no name can escape its directory or key prefix.

use crate::{Error, ErrorKind, Result};
use std::fmt;
use std::path::PathBuf;

/// Longest lock name, in bytes.
pub const MAX_NAME: usize = 200;
/// Longest explicit ZooKeeper path or Consul key (`zk://…/PATH`, `consul://…/KEY`), in bytes.
pub const MAX_PATH: usize = 1000;

pub const DEFAULT_PMXCFS_DIR: &str = "/etc/pve/priv/lock";
pub const DEFAULT_ZKHOSTS: &str = "127.0.0.1:2181";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    Sem,
    Pmxcfs,
    Zk,
    Consul,
}

impl Service {
    pub fn as_str(self) -> &'static str {
        match self {
            Service::Sem => "sem",
            Service::Pmxcfs => "pmxcfs",
            Service::Zk => "zk",
            Service::Consul => "consul",
        }
    }

    pub fn parse(s: &str) -> Option<Service> {
        match s {
            "sem" => Some(Service::Sem),
            "pmxcfs" => Some(Service::Pmxcfs),
            "zk" | "zookeeper" => Some(Service::Zk),
            "consul" => Some(Service::Consul),
            _ => None,
        }
    }

    pub fn all() -> [Service; 4] {
        [Service::Sem, Service::Pmxcfs, Service::Zk, Service::Consul]
    }

    fn allows_slash(self) -> bool {
        matches!(self, Service::Zk | Service::Consul)
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the lock lives, per service.
#[derive(Clone, PartialEq, Eq)]
pub enum Location {
    Sem,
    Pmxcfs {
        /// The `priv/lock` directory (from `LOCKFN_PMXCFS_DIR` or the default).
        dir: PathBuf,
    },
    Zk {
        /// `host:port` entries, never empty.
        hosts: Vec<String>,
        /// Absolute node path of the lock, e.g. `/lockfn/NAME`.
        path: String,
        /// Digest credentials `user:password` from the URL or `LOCKFN_ZK_AUTH`.
        auth: Option<String>,
    },
    Consul {
        /// Agent address from the URL (`host:port`, optional scheme), else None: the backend
        /// reads `CONSUL_HTTP_ADDR`.
        addr: Option<String>,
        /// The KV key, e.g. `lockfn/NAME`.
        key: String,
    },
}

// Credentials never show up in Debug output (logs, panics, errors).
impl fmt::Debug for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Sem => f.write_str("Sem"),
            Location::Pmxcfs { dir } => write!(f, "Pmxcfs {{ dir: {dir:?} }}"),
            Location::Zk { hosts, path, auth } => write!(
                f,
                "Zk {{ hosts: {hosts:?}, path: {path:?}, auth: {} }}",
                if auth.is_some() { "<set>" } else { "None" }
            ),
            Location::Consul { addr, key } => {
                write!(f, "Consul {{ addr: {addr:?}, key: {key:?} }}")
            }
        }
    }
}

/// A parsed, validated lock target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub service: Service,
    /// The lock name (for URL forms: the path or key without the leading `/`). Empty only
    /// when parsed with [`Target::parse_allow_empty`] and not yet named.
    pub name: String,
    pub location: Location,
    /// True when the target was written as a URL (`zk://`, `consul://`): the path is exact.
    pub explicit: bool,
}

impl Target {
    /// Parse and validate a target; environment defaults are read now.
    pub fn parse(text: &str) -> Result<Target> {
        let t = Self::parse_allow_empty(text)?;
        if t.name.is_empty() {
            return Err(invalid(text, "the lock name is empty"));
        }
        Ok(t)
    }

    /// Like [`Target::parse`], but `sem:` (an empty name) is accepted, for the CLI, which
    /// names such a lock after its command line ([`Target::with_name`]).
    pub fn parse_allow_empty(text: &str) -> Result<Target> {
        if text.is_empty() {
            return Err(invalid(text, "the target is empty"));
        }
        check_chars(text, text)?;
        if let Some(rest) = text.strip_prefix("zk://") {
            return parse_zk_url(text, rest);
        }
        if let Some(rest) = text.strip_prefix("consul://") {
            return parse_consul_url(text, rest);
        }
        let (service, name) = match text.split_once(':') {
            Some((scheme, name)) => match Service::parse(scheme) {
                Some(s) => (s, name),
                None => {
                    return Err(invalid(
                        text,
                        &format!(
                            "unknown service '{}' (expected sem:, pmxcfs:, zk:, consul:, \
                             zk://, consul://, or a bare name)",
                            printable(scheme)
                        ),
                    ))
                }
            },
            None => (default_service(text)?, text),
        };
        Self::build(text, service, name)
    }

    fn build(text: &str, service: Service, name: &str) -> Result<Target> {
        if !name.is_empty() {
            validate_name(text, name, service.allows_slash(), MAX_NAME)?;
        }
        let location = match service {
            Service::Sem => Location::Sem,
            Service::Pmxcfs => Location::Pmxcfs { dir: pmxcfs_dir() },
            Service::Zk => Location::Zk {
                hosts: zk_hosts_from_env()?,
                path: format!("/lockfn/{name}"),
                auth: env_nonempty("LOCKFN_ZK_AUTH"),
            },
            Service::Consul => Location::Consul {
                addr: None,
                key: format!("lockfn/{name}"),
            },
        };
        Ok(Target {
            service,
            name: name.to_string(),
            location,
            explicit: false,
        })
    }

    /// A copy of a target with an empty name given `name` (the CLI's command-line hash).
    pub fn with_name(&self, name: &str) -> Result<Target> {
        let text = format!("{}:{}", self.service, name);
        Self::build(&text, self.service, name)
    }

    /// The canonical text of this target, without credentials: what `status` and errors show,
    /// and the key of the in-process table of held locks.
    pub fn canonical(&self) -> String {
        match &self.location {
            Location::Zk { hosts, path, .. } if self.explicit => {
                format!("zk://{}{}", hosts.join(","), path)
            }
            Location::Consul {
                addr: Some(addr),
                key,
            } => format!("consul://{addr}/{key}"),
            Location::Consul { addr: None, key } if self.explicit => format!("consul:///{key}"),
            _ => format!("{}:{}", self.service, self.name),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.canonical())
    }
}

fn invalid(text: &str, why: &str) -> Error {
    Error::new(
        ErrorKind::Invalid,
        format!("invalid target '{}': {why}", printable(text)),
    )
}

/// Show a user's text in a message without letting control bytes or credentials through.
pub(crate) fn printable(text: &str) -> String {
    let text = redact_userinfo(text);
    let cut = crate::holder::truncate(&text, 80);
    let mut out: String = cut
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if cut.len() < text.len() {
        out.push('…');
    }
    out
}

/// Longest value shown whole in a message or a human-readable output line; longer ones are
/// cut with a marker saying how much was left out.
/// cbindgen:ignore
pub const MAX_SHOWN: usize = 200;

/// A text made safe for a terminal: control characters (C0, DEL, C1) escaped as `\xNN` /
/// `\u{NN}`, and cut after `max` bytes with a marker `…[N more bytes]`. Linear in the input.
pub fn escape_text(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max) + 24);
    let mut shown = 0usize;
    for (i, c) in text.char_indices() {
        if shown >= max {
            out.push_str(&format!("…[{} more bytes]", text.len() - i));
            return out;
        }
        if c.is_control() {
            let e = if (c as u32) < 0x80 {
                format!("\\x{:02x}", c as u32)
            } else {
                format!("\\u{{{:x}}}", c as u32)
            };
            shown += e.len();
            out.push_str(&e);
        } else {
            shown += c.len_utf8();
            out.push(c);
        }
    }
    out
}

/// [`escape_text`] with the usual cut ([`MAX_SHOWN`]) and credentials in URLs hidden.
pub fn printable_long(text: &str) -> String {
    escape_text(&redact_userinfo(text), MAX_SHOWN)
}

fn redact_userinfo(text: &str) -> String {
    for scheme in ["zk://", "consul://"] {
        if let Some(rest) = text.strip_prefix(scheme) {
            let authority_end = rest.find('/').unwrap_or(rest.len());
            if let Some(at) = rest[..authority_end].rfind('@') {
                return format!("{scheme}***@{}", &rest[at + 1..]);
            }
        }
    }
    // A mistyped URL ("zk:/u:pw@h/x", "zk%//u:pw@h/x", "zk:///u:pw@h/x"): whatever precedes
    // the last '@' may be a password ('@' is in no valid name, so nothing valid is hidden).
    if let Some(at) = text.rfind('@') {
        let head = &text[..at];
        let start = head
            .find("//")
            .map(|i| i + 2)
            .or_else(|| head.find(':').map(|i| i + 1))
            .unwrap_or(0);
        return format!("{}***@{}", &text[..start], &text[at + 1..]);
    }
    text.to_string()
}

fn check_chars(orig: &str, s: &str) -> Result<()> {
    if s.bytes().any(|b| b == 0 || b.is_ascii_control()) {
        return Err(invalid(orig, "it contains NUL or control bytes"));
    }
    Ok(())
}

/// Check a lock name: 1..=max bytes of `[A-Za-z0-9._-]`, `/` only when `allow_slash`, no
/// empty, `.` or `..` segments.
pub fn validate_name(orig: &str, name: &str, allow_slash: bool, max: usize) -> Result<()> {
    if name.is_empty() {
        return Err(invalid(orig, "the lock name is empty"));
    }
    if name.len() > max {
        return Err(invalid(
            orig,
            &format!("the lock name is {} bytes long (at most {max})", name.len()),
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/')))
    {
        return Err(invalid(
            orig,
            &format!(
                "character {:?} is not allowed in a lock name (use A-Z a-z 0-9 . _ -{})",
                c,
                if allow_slash { " /" } else { "" }
            ),
        ));
    }
    if name.contains('/') && !allow_slash {
        return Err(invalid(
            orig,
            "'/' is not allowed in this service's lock names (only zk and consul have a hierarchy)",
        ));
    }
    for seg in name.split('/') {
        match seg {
            "" => return Err(invalid(orig, "the lock name has an empty path segment")),
            "." | ".." => {
                return Err(invalid(
                    orig,
                    &format!("'{seg}' is not allowed as a lock name or path segment"),
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

fn env_nonempty(var: &str) -> Option<String> {
    std::env::var(var).ok().filter(|v| !v.is_empty())
}

fn env_or(var: &str, default: &str) -> String {
    env_nonempty(var).unwrap_or_else(|| default.to_string())
}

fn split_hosts(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(str::to_string)
        .collect()
}

/// The pmxcfs lock directory: `LOCKFN_PMXCFS_DIR` or `/etc/pve/priv/lock`.
pub fn pmxcfs_dir() -> PathBuf {
    PathBuf::from(env_or("LOCKFN_PMXCFS_DIR", DEFAULT_PMXCFS_DIR))
}

/// The service of a bare NAME: `LOCKFN_BACKEND`, else pmxcfs on a Proxmox node, else sem.
fn default_service(text: &str) -> Result<Service> {
    if let Some(b) = env_nonempty("LOCKFN_BACKEND") {
        return Service::parse(b.trim_end_matches(':')).ok_or_else(|| {
            invalid(
                text,
                &format!(
                    "LOCKFN_BACKEND='{}' is not one of sem, pmxcfs, zk, consul",
                    printable(&b)
                ),
            )
        });
    }
    Ok(if pve_is_mounted() {
        Service::Pmxcfs
    } else {
        Service::Sem
    })
}

/// Is `/etc/pve` a pmxcfs (FUSE) mount? Read from /proc/self/mountinfo, no blocking stat.
fn pve_is_mounted() -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|m| {
            m.lines().any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.get(4) == Some(&"/etc/pve") && l.contains(" - fuse")
            })
        })
        .unwrap_or(false)
}

fn split_authority<'a>(text: &str, rest: &'a str) -> Result<(&'a str, &'a str)> {
    let slash = rest.find('/').ok_or_else(|| {
        invalid(
            text,
            "a URL target needs a path after the hosts, e.g. zk://host:2181/locks/name",
        )
    })?;
    Ok((&rest[..slash], &rest[slash + 1..]))
}

fn parse_zk_url(text: &str, rest: &str) -> Result<Target> {
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
        zk_hosts_from_env()?
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
    Ok(Target {
        service: Service::Zk,
        name: path.to_string(),
        location: Location::Zk {
            hosts,
            path: format!("/{path}"),
            auth,
        },
        explicit: true,
    })
}

fn parse_consul_url(text: &str, rest: &str) -> Result<Target> {
    let (authority, key) = split_authority(text, rest)?;
    if authority.contains('@') {
        return Err(invalid(
            text,
            "credentials do not belong in a consul:// URL: use CONSUL_HTTP_TOKEN or CONSUL_HTTP_TOKEN_FILE",
        ));
    }
    let addr = if authority.is_empty() {
        None
    } else {
        check_host_port(text, authority)?;
        Some(authority.to_string())
    };
    validate_name(text, key, true, MAX_PATH)?;
    Ok(Target {
        service: Service::Consul,
        name: key.to_string(),
        location: Location::Consul {
            addr,
            key: key.to_string(),
        },
        explicit: true,
    })
}

/// Is `hp` a `host`, `host:port`, `[v6]` or `[v6]:port` (port 1–65535)?
pub fn is_host_port(hp: &str) -> bool {
    if hp.is_empty()
        || hp.len() > 300
        || !hp
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']' | '_'))
    {
        return false;
    }
    let port_ok = |p: &str| p.parse::<u16>().map(|p| p > 0).unwrap_or(false);
    if let Some(rest) = hp.strip_prefix('[') {
        // [v6] or [v6]:port: one pair of brackets around hex digits and colons.
        let Some((v6, after)) = rest.split_once(']') else {
            return false;
        };
        let v6_ok = !v6.is_empty()
            && v6.contains(':')
            && v6
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.');
        return v6_ok
            && match after {
                "" => true,
                a => a.strip_prefix(':').is_some_and(port_ok),
            };
    }
    if hp.contains('[') || hp.contains(']') {
        return false;
    }
    match hp.split_once(':') {
        Some((h, p)) => !h.is_empty() && !p.contains(':') && port_ok(p),
        None => true,
    }
}

/// `ZKHOSTS` (or the default): `Invalid` naming the variable when malformed.
fn zk_hosts_from_env() -> Result<Vec<String>> {
    let raw = env_or("ZKHOSTS", DEFAULT_ZKHOSTS);
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

fn check_host_port(text: &str, hp: &str) -> Result<()> {
    let ok = is_host_port(hp);
    if ok {
        Ok(())
    } else {
        Err(invalid(
            text,
            &format!("'{}' is not a host:port", printable(hp)),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(t: &str) -> ErrorKind {
        Target::parse(t).unwrap_err().kind()
    }

    #[test]
    fn parses_each_service() {
        let t = Target::parse("sem:backup").unwrap();
        assert_eq!((t.service, t.name.as_str()), (Service::Sem, "backup"));
        let t = Target::parse("pmxcfs:vm-100").unwrap();
        assert_eq!(t.service, Service::Pmxcfs);
        let t = Target::parse("zk:a/b").unwrap();
        match t.location {
            Location::Zk { path, .. } => assert_eq!(path, "/lockfn/a/b"),
            _ => panic!(),
        }
        let t = Target::parse("zk://u:secret@h1:2181,h2:2182/locks/x").unwrap();
        match &t.location {
            Location::Zk { hosts, path, auth } => {
                assert_eq!(hosts, &vec!["h1:2181".to_string(), "h2:2182".to_string()]);
                assert_eq!(path, "/locks/x");
                assert_eq!(auth.as_deref(), Some("u:secret"));
            }
            _ => panic!(),
        }
        assert!(!format!("{t:?}").contains("secret"));
        assert!(!t.canonical().contains("secret"));
        let t = Target::parse("consul://127.0.0.1:8500/svc/.lock").unwrap();
        match &t.location {
            Location::Consul { addr, key } => {
                assert_eq!(addr.as_deref(), Some("127.0.0.1:8500"));
                assert_eq!(key, "svc/.lock");
            }
            _ => panic!(),
        }
        assert_eq!(t.canonical(), "consul://127.0.0.1:8500/svc/.lock");
    }

    #[test]
    fn rejects_bad_names() {
        for bad in [
            "sem:../x",
            "sem:..",
            "sem:a/b",
            "pmxcfs:a/b",
            "zk:a//b",
            "zk:/a",
            "zk:a/../b",
            "sem:a b",
            "sem:a\u{1}b",
            "sem:a\0b",
            "",
            "sem:",
            "nosuch:x",
            "zk://h:99999/x",
            "zk://h:1",
        ] {
            assert_eq!(kind(bad), ErrorKind::Invalid, "{bad:?}");
        }
        let long = format!("sem:{}", "a".repeat(201));
        assert_eq!(kind(&long), ErrorKind::Invalid);
        let ok = format!("sem:{}", "a".repeat(200));
        assert!(Target::parse(&ok).is_ok());
    }

    #[test]
    fn messages_hide_credentials_and_control_bytes() {
        let e = Target::parse("zk://bob:hunter2@h:1/../x").unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
        let e = Target::parse("sem:a\u{7}b").unwrap_err();
        assert!(!e.to_string().contains('\u{7}'));
    }

    #[test]
    fn empty_name_only_when_allowed() {
        let t = Target::parse_allow_empty("sem:").unwrap();
        assert!(t.name.is_empty());
        let named = t.with_name("cmd-abc").unwrap();
        assert_eq!(named.canonical(), "sem:cmd-abc");
    }
}
