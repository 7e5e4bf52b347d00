//! The services the conformance suite runs against, and what each one offers.

use crate::common;
use lockfn::Target;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

/// A service under test: how to name a lock on it, and its documented capabilities.
pub struct Svc {
    /// The service's name in status output.
    pub service: &'static str,
    /// Target prefix; a lock is `{prefix}{name}`.
    prefix: String,
    /// What `list` takes to show every lock of this suite.
    list_prefix: String,
    /// `--limit N > 1` (a counting semaphore).
    pub limit: bool,
    /// `--shared` (read locks).
    pub shared: bool,
    /// Extra `lockfn run` flags for a holder that is killed with SIGKILL (short session).
    pub kill9_flags: &'static [&'static str],
    /// How long after a SIGKILL of its holder the lock may stay blocked (documented bound).
    pub kill9_bound: Duration,
    /// Persistent locks (`persist`, detach, release by name).
    pub persist: bool,
    /// `status` shows the holder's own record (its text and token), not only the pid the
    /// kernel knows.
    pub records: bool,
    /// Take a held lock away from its holder (an operator's forced release, or what stands
    /// for it).
    pub lose: fn(&Target),
}

/// An operator's forced release by name.
fn force_release(t: &Target) {
    assert!(lockfn::release_named(t, true).unwrap() >= 1);
}

impl Svc {
    /// What every lock of this suite's names starts with (a `list` prefix).
    pub fn list_prefix(&self) -> &str {
        &self.list_prefix
    }

    pub fn target(&self, name: &str) -> Target {
        Target::parse(&format!("{}{}", self.prefix, common::unique(name))).unwrap()
    }

    pub fn sem() -> Option<Svc> {
        Some(Svc {
            service: "sem",
            prefix: "sem:conf-".into(),
            list_prefix: "sem:conf-".into(),
            limit: true,
            shared: false,
            kill9_flags: &[],
            kill9_bound: Duration::from_secs(3),
            persist: true,
            records: true,
            lose: force_release,
        })
    }

    /// The FUSE emulator, one per test process, its paths in this process's environment
    /// (inherited by the `lockfn` processes the cases start).
    pub fn pmxcfs() -> Option<Svc> {
        static EMU: OnceLock<Option<PathBuf>> = OnceLock::new();
        let ok = EMU.get_or_init(|| {
            if !common::fuse_available() {
                return None;
            }
            let dir = std::env::temp_dir().join(format!("lockfn-conf-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            common::emu("start", &dir, 120);
            let lockdir = common::emu_lockdir(&dir);
            std::env::set_var("LOCKFN_PMXCFS_DIR", &lockdir);
            std::env::set_var("LOCKFN_PMXLOCK_DIR", dir.join("flock"));
            std::env::set_var("LOCKFN_RUN_DIR", dir.join("run"));
            std::env::remove_var("LOCKFN_PMXCFS_TTL");
            std::env::remove_var("LOCKFN_PMXCFS_TOKEN_DIR");
            Some(dir)
        });
        if ok.is_none() {
            common::require("/dev/fuse and root (the pmxcfs emulator)");
            return None;
        }
        Some(Svc {
            service: "pmxcfs",
            prefix: "pmxcfs:conf-".into(),
            list_prefix: "pmxcfs:conf-".into(),
            limit: false,
            shared: false,
            kill9_flags: &[],
            kill9_bound: Duration::from_secs(3),
            persist: true,
            records: true,
            lose: force_release,
        })
    }

    pub fn zk() -> Option<Svc> {
        let Some(hosts) = common::env_var("ZKHOSTS") else {
            common::require("ZKHOSTS (a ZooKeeper server)");
            return None;
        };
        Some(Svc {
            service: "zk",
            prefix: format!("zk://{hosts}/lockfn-conf/"),
            // A zk:// URL lists the subtree of its path (a trailing `/` or not).
            list_prefix: format!("zk://{hosts}/lockfn-conf/"),
            limit: true,
            shared: true,
            // The session of a killed holder ends after its timeout (4 s asked).
            kill9_flags: &["--ttl", "4"],
            kill9_bound: Duration::from_secs(20),
            persist: true,
            records: true,
            lose: force_release,
        })
    }

    pub fn consul() -> Option<Svc> {
        if common::env_var("CONSUL_HTTP_ADDR").is_none() {
            common::require("CONSUL_HTTP_ADDR (a Consul agent)");
            return None;
        }
        Some(Svc {
            service: "consul",
            prefix: "consul:conf/".into(),
            list_prefix: "consul:conf/".into(),
            limit: true,
            shared: false,
            // Session TTL 10 s (Consul's minimum; the agent may take up to twice that) and no
            // lock-delay.
            kill9_flags: &["--ttl", "10", "--lock-delay", "0"],
            kill9_bound: Duration::from_secs(40),
            persist: true,
            records: true,
            lose: force_release,
        })
    }

    /// flock(2) on a file in a directory of this test process.
    pub fn file() -> Option<Svc> {
        static DIR: OnceLock<PathBuf> = OnceLock::new();
        let dir = DIR.get_or_init(|| {
            let d = std::env::temp_dir().join(format!("lockfn-conf-file-{}", std::process::id()));
            std::fs::create_dir_all(&d).unwrap();
            d
        });
        Some(Svc {
            service: "file",
            prefix: format!("file:{}/", dir.display()),
            list_prefix: format!("file:{}/", dir.display()),
            limit: false,
            shared: true,
            kill9_flags: &[],
            // The kernel drops the flock when the holder dies.
            kill9_bound: Duration::from_secs(3),
            persist: false,
            records: false,
            // A flock is lost when its file is removed (a new flock(1) user locks a new file).
            lose: |t| std::fs::remove_file(t.resource()).unwrap(),
        })
    }
}
