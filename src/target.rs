//! Target text: one string names a lock. This module only splits the scheme from the rest
//! and holds the result; each backend parses and validates what follows its scheme
//! ([`crate::backend::Backend::locate`]) and reads its own configuration.
//!
//! | text | service |
//! |---|---|
//! | `sem:NAME` | POSIX named semaphore `/NAME` |
//! | `pmxcfs:NAME` | directory `NAME` under `LOCKFN_PMXCFS_DIR` (default `/etc/pve/priv/lock`) |
//! | `zk:NAME`, `zk://[user:pass@]h1:p1,h2:p2/PATH` | ZooKeeper node `/lockfn/NAME`, or exactly PATH |
//! | `consul:NAME`, `consul://host:port/KEY` | Consul key `lockfn/NAME`, or exactly KEY |
//! | `NAME` | `LOCKFN_BACKEND`, else the first service that claims bare names here (pmxcfs where /etc/pve is mounted by pmxcfs), else sem |
//!
//! Validation is strict so that no name can escape its directory or key prefix.

use crate::service::Service;
use crate::{Error, ErrorKind, Result};
use std::any::Any;
use std::fmt;
use std::sync::Arc;

/// Longest lock name, in bytes.
pub const MAX_NAME: usize = 200;
/// Longest explicit ZooKeeper path or Consul key (`zk://…/PATH`, `consul://…/KEY`), in bytes.
pub const MAX_PATH: usize = 1000;

/// Where a lock lives, as its backend parsed it: what [`crate::backend::Backend::locate`]
/// returns. `place` is the backend's own type (read back with [`Target::place`]).
pub(crate) struct Located {
    /// The lock name (for URL forms: the path or key without the leading `/`).
    pub name: String,
    /// Written as a URL (`zk://`, `consul://`): the path is exact.
    pub url: bool,
    /// The text `status` and errors show, without credentials.
    pub canonical: String,
    /// Where the lock lives in the service (a path, a node, a key), for people and tests.
    pub resource: String,
    pub place: Arc<dyn Any + Send + Sync>,
}

impl Located {
    /// The usual form `scheme:NAME` (not a URL).
    pub fn named(
        scheme: &str,
        name: &str,
        resource: String,
        place: impl Any + Send + Sync,
    ) -> Located {
        Located {
            name: name.to_string(),
            url: false,
            canonical: format!("{scheme}:{name}"),
            resource,
            place: Arc::new(place),
        }
    }
}

/// A parsed, validated lock target. Opaque: made by [`Target::parse`], read through its
/// methods; what a service needs to find the lock is private to that service.
#[derive(Clone)]
pub struct Target {
    service: Service,
    name: String,
    url: bool,
    canonical: String,
    resource: String,
    place: Arc<dyn Any + Send + Sync>,
}

// Only the canonical text: a backend's place may hold credentials.
impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Target({:?})", self.canonical)
    }
}

impl PartialEq for Target {
    fn eq(&self, other: &Target) -> bool {
        self.service == other.service && self.canonical == other.canonical
    }
}
impl Eq for Target {}

impl Target {
    /// Parse and validate a target; the service's configuration (environment) is read now.
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
        if let Some((scheme, rest)) = text.split_once("://") {
            let service =
                Service::parse(scheme).ok_or_else(|| invalid(text, &unknown_service(scheme)))?;
            let located = service.backend().locate_url(text, rest)?;
            return Ok(Target::from_located(service, located));
        }
        let (service, name) = match text.split_once(':') {
            Some((scheme, name)) => match Service::parse(scheme) {
                Some(s) => (s, name),
                None => return Err(invalid(text, &unknown_service(scheme))),
            },
            None => (
                Service::default_here().map_err(|why| invalid(text, &why))?,
                text,
            ),
        };
        Self::locate(text, service, name)
    }

    fn locate(text: &str, service: Service, name: &str) -> Result<Target> {
        if !name.is_empty() {
            service.backend().check_name(text, name)?;
        }
        let located = service.backend().locate(text, name)?;
        Ok(Target::from_located(service, located))
    }

    pub(crate) fn from_located(service: Service, l: Located) -> Target {
        Target {
            service,
            name: l.name,
            url: l.url,
            canonical: l.canonical,
            resource: l.resource,
            place: l.place,
        }
    }

    /// A copy of a target with an empty name given `name` (the CLI's command-line hash).
    pub fn with_name(&self, name: &str) -> Result<Target> {
        let text = format!("{}:{}", self.service, name);
        Self::locate(&text, self.service, name)
    }

    /// The service that holds this lock.
    pub fn service(&self) -> Service {
        self.service
    }

    /// The lock name (for URL forms: the path or key without the leading `/`). Empty only
    /// when parsed with [`Target::parse_allow_empty`] and not yet named.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// True when the target was written as a URL (`zk://`, `consul://`): the path is exact.
    pub fn is_url(&self) -> bool {
        self.url
    }

    /// Where the lock lives in its service: a file, a directory, a node path, a key.
    pub fn resource(&self) -> &str {
        &self.resource
    }

    /// The canonical text of this target, without credentials: what `status` and errors show,
    /// and the key of the in-process table of held locks.
    pub fn canonical(&self) -> String {
        self.canonical.clone()
    }

    /// The backend's own description of where the lock lives; `Internal` if `T` is not it
    /// (a target of another service reached the wrong backend).
    pub(crate) fn place<T: Any>(&self) -> Result<&T> {
        self.place.downcast_ref::<T>().ok_or_else(|| {
            Error::new(
                ErrorKind::Internal,
                format!("{self} reached the wrong service"),
            )
        })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.canonical)
    }
}

fn unknown_service(scheme: &str) -> String {
    let schemes: Vec<String> = Service::all().map(|s| format!("{s}:")).collect();
    format!(
        "unknown service '{}' (expected {}, a URL such as zk:// or consul://, or a bare name)",
        printable(scheme),
        schemes.join(", ")
    )
}

/// An `Invalid` error about a target text (the text shown safely).
pub(crate) fn invalid(text: &str, why: &str) -> Error {
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

/// Split the rest of a `scheme://AUTHORITY/PATH` URL into authority and path.
pub(crate) fn split_authority<'a>(text: &str, rest: &'a str) -> Result<(&'a str, &'a str)> {
    let slash = rest.find('/').ok_or_else(|| {
        invalid(
            text,
            "a URL target needs a path after the hosts, e.g. zk://host:2181/locks/name",
        )
    })?;
    Ok((&rest[..slash], &rest[slash + 1..]))
}

/// Split `h1:p1,h2:p2` (spaces and empty entries ignored).
pub(crate) fn split_hosts(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(str::to_string)
        .collect()
}

/// A non-empty environment variable.
pub(crate) fn env_nonempty(var: &str) -> Option<String> {
    std::env::var(var).ok().filter(|v| !v.is_empty())
}

/// `Invalid` unless `hp` is a host:port (see [`is_host_port`]).
pub(crate) fn check_host_port(text: &str, hp: &str) -> Result<()> {
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
        assert_eq!((t.service().as_str(), t.name()), ("sem", "backup"));
        assert_eq!(t.resource(), "/dev/shm/sem.backup");
        let t = Target::parse("pmxcfs:vm-100").unwrap();
        assert_eq!(t.service().as_str(), "pmxcfs");
        let t = Target::parse("zk:a/b").unwrap();
        assert_eq!(t.resource(), "/lockfn/a/b");
        let t = Target::parse("zookeeper:a").unwrap();
        assert_eq!(t.canonical(), "zk:a");
        let t = Target::parse("zk://u:secret@h1:2181,h2:2182/locks/x").unwrap();
        assert_eq!(t.resource(), "/locks/x");
        assert!(t.is_url());
        assert!(!format!("{t:?}").contains("secret"));
        assert!(!t.canonical().contains("secret"));
        assert_eq!(t.canonical(), "zk://h1:2181,h2:2182/locks/x");
        let t = Target::parse("consul://127.0.0.1:8500/svc/.lock").unwrap();
        assert_eq!(t.resource(), "svc/.lock");
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
            "nosuch://h/x",
            "sem://h/x",
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
        assert!(t.name().is_empty());
        let named = t.with_name("cmd-abc").unwrap();
        assert_eq!(named.canonical(), "sem:cmd-abc");
    }
}
