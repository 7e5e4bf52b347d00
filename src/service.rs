//! Services by name: the registry of backends (one line per service) and the [`Service`]
//! handle that names one of them.

use crate::backend::{self, Backend};
use std::fmt;

/// Every service lockfn speaks, in the order `lockfn gc` and error messages list them.
/// Adding a service: its folder under `src/backend/` and one line here.
static REGISTRY: &[&(dyn Backend + 'static)] = &[
    &backend::sem::SemBackend,
    &backend::pmxcfs::PmxcfsBackend,
    &backend::zookeeper::ZkBackend,
    &backend::consul::ConsulBackend,
    &backend::file::FileBackend,
];

/// A lock service (`sem`, `pmxcfs`, `zk`, `consul`): a small copyable handle.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Service(usize);

impl Service {
    /// The scheme of its targets (`sem` in `sem:NAME`).
    pub fn as_str(self) -> &'static str {
        self.backend().scheme()
    }

    /// The service of a scheme or one of its aliases (`zookeeper` for `zk`).
    pub fn parse(s: &str) -> Option<Service> {
        REGISTRY
            .iter()
            .position(|b| b.scheme() == s || b.aliases().contains(&s))
            .map(Service)
    }

    /// Every service, in registry order.
    pub fn all() -> impl Iterator<Item = Service> {
        (0..REGISTRY.len()).map(Service)
    }

    pub(crate) fn backend(self) -> &'static dyn Backend {
        REGISTRY[self.0]
    }

    /// The service of a bare NAME: `LOCKFN_BACKEND`, else the first service that claims bare
    /// names on this host (pmxcfs on a Proxmox node), else the first that always does (sem).
    /// `Err` says what is wrong with `LOCKFN_BACKEND`.
    pub(crate) fn default_here() -> std::result::Result<Service, String> {
        if let Some(b) = crate::target::env_nonempty("LOCKFN_BACKEND") {
            let names: Vec<&str> = Service::all().map(Service::as_str).collect();
            return Service::parse(b.trim_end_matches(':')).ok_or_else(|| {
                format!(
                    "LOCKFN_BACKEND='{}' is not one of {}",
                    crate::target::printable(&b),
                    names.join(", ")
                )
            });
        }
        use backend::BareNames;
        let claim = |want: BareNames| Service::all().find(|s| s.backend().bare_names() == want);
        claim(BareNames::Here)
            .or_else(|| claim(BareNames::Always))
            .ok_or_else(|| "no service takes bare names here".to_string())
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
