//! Operations on locks by name rather than through a handle: status, list, gc, and the
//! release or renewal of persistent locks. Each finds its service's backend and asks it.

use crate::backend::GcScope;
use crate::{fork, target, Error, ErrorKind, Result, Service, Status, Target};

/// Who holds `target`.
pub fn status(target: &Target) -> Result<Status> {
    fork::ensure_handlers();
    target.service().backend().status(target)
}

/// A prefix (`sem:`, `zk:jobs/`, `zk://h:2181/locks/`) as a target whose name may be empty
/// or a partial name that is not a valid lock name (`sem:ba`).
fn prefix_target(prefix: &str) -> Result<Target> {
    if prefix.contains("://") {
        // A URL names a subtree, with or without a trailing `/`; one that does not parse is
        // an error (falling back to the service's default tree would list the wrong thing).
        // `zk://h/` (the whole tree) keeps the one `/` that ends its authority.
        let trimmed = prefix.trim_end_matches('/');
        let has_path = trimmed
            .split_once("://")
            .is_some_and(|(_, rest)| rest.contains('/'));
        return if has_path {
            Target::parse_allow_empty(trimmed)
        } else {
            Target::parse_allow_empty(&format!("{trimmed}/"))
        };
    }
    Target::parse_allow_empty(prefix)
        // A directory (`file:/run/lock/`, `zk:jobs/`).
        .or_else(|_| Target::parse_allow_empty(prefix.trim_end_matches('/')))
        .or_else(|_| {
            Target::parse_allow_empty(&format!(
                "{}:",
                prefix.split(':').next().unwrap_or_default()
            ))
        })
}

/// Every lock under `prefix` (e.g. `sem:` for all, `zk:jobs/` for a subtree).
pub fn list(prefix: &str) -> Result<Vec<Status>> {
    fork::ensure_handlers();
    let t = prefix_target(prefix)?;
    let mut all = t.service().backend().list(&t)?;
    let want = prefix.split_once(':').map(|(_, n)| n).unwrap_or(prefix);
    if !t.is_url() && !want.is_empty() {
        all.retain(|s| {
            s.target
                .split_once(':')
                .is_some_and(|(_, n)| n.starts_with(want))
        });
    }
    Ok(all)
}

/// Clean what dead holders on this host left behind. `scope`: a service name with optional
/// `:` and name prefix (`sem`, `sem:`, `pmxcfs:vm-`), or empty for every host-local service
/// (sem and pmxcfs). Returns how many items were removed.
pub fn gc(scope: &str) -> Result<u32> {
    fork::ensure_handlers();
    let scope = scope.trim();
    if scope.is_empty() {
        let mut n = 0;
        for service in Service::all().filter(|s| s.backend().is_local()) {
            match service.backend().gc(&GcScope {
                prefix: String::new(),
            }) {
                Ok(k) => n += k,
                // Not on this host (no pmxcfs mounted): nothing of it to clean here.
                Err(e) if e.kind() == ErrorKind::Unavailable => {}
                Err(e) => return Err(e),
            }
        }
        return Ok(n);
    }
    let (svc, prefix) = scope.split_once(':').unwrap_or((scope, ""));
    let service = Service::parse(svc).ok_or_else(|| {
        let names: Vec<&str> = Service::all().map(Service::as_str).collect();
        Error::new(
            ErrorKind::Invalid,
            format!(
                "invalid gc scope '{}': expected {}, optionally with :PREFIX",
                target::printable(scope),
                names.join(", ")
            ),
        )
    })?;
    if !prefix.is_empty() {
        target::validate_name(scope, prefix, true, target::MAX_PATH)?;
    }
    service.backend().gc(&GcScope {
        prefix: prefix.to_string(),
    })
}

/// Release a lock by name (persistent locks; with `force`, whoever holds it).
pub fn release_named(target: &Target, force: bool) -> Result<u32> {
    fork::ensure_handlers();
    target.service().backend().release_named(target, force)
}

/// Renew a persistent lock by name.
pub fn update_named(target: &Target) -> Result<()> {
    fork::ensure_handlers();
    target.service().backend().update_named(target)
}

/// Operator release by regular expression: every lock under `within` (`consul:`,
/// `consul://HOST:PORT/`) whose name matches `pattern` is released as with `force`. Returns
/// the released locks' canonical texts, sorted; `NotHeld` when none matched.
pub fn release_matching(within: &str, pattern: &str) -> Result<Vec<String>> {
    fork::ensure_handlers();
    let t = prefix_target(within)?;
    let released = t.service().backend().release_matching(&t, pattern)?;
    if released.is_empty() {
        return Err(Error::new(
            ErrorKind::NotHeld,
            format!(
                "no held lock under {t} matches '{}'",
                target::printable(pattern)
            ),
        ));
    }
    Ok(released)
}

/// How long a persistent lock of `target` taken with `opts` lives, stated per service
/// (`lockfn acquire --persist` prints it just after taking the lock).
pub fn persistent_lifetime(target: &Target, opts: &crate::Options) -> crate::Lifetime {
    target.service().backend().persistent_lifetime(target, opts)
}
