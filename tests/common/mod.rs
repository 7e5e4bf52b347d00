//! Helpers shared by the Rust test files: unique names, bounded polling, the servers and
//! emulator the run provides, skipping vs failing when one is missing.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Did the run promise its servers (tests/run.sh sets LOCKFN_TEST_REQUIRE_SERVERS=1)? Then a
/// missing one fails the test; otherwise it is skipped with the reason printed.
pub fn require(what: &str) -> bool {
    if std::env::var("LOCKFN_TEST_REQUIRE_SERVERS").as_deref() == Ok("1") {
        panic!("{what} is required (LOCKFN_TEST_REQUIRE_SERVERS=1) but missing");
    }
    eprintln!("SKIP: {what} is missing");
    false
}

/// A lock name unique to this process and moment.
pub fn unique(name: &str) -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{name}-{}-{}", std::process::id(), t % 1_000_000_000)
}

pub fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Poll `f` every 10 ms until it holds or `t` passes, for states no event announces.
pub fn await_until(t: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + t;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// [`await_until`] that fails the test, saying `what` did not happen within `limit`.
pub fn expect_within(limit: Duration, what: &str, f: impl FnMut() -> bool) {
    assert!(await_until(limit, f), "{what} (waited {limit:?})");
}

/// Is the server named by `var` (ZKHOSTS, CONSUL_HTTP_ADDR) there? If not: skip, or fail when
/// the run promised its servers.
pub fn server(var: &str) -> bool {
    env_var(var).is_some() || require(var)
}

/// A non-empty environment variable.
pub fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The Python of the test venv (kazoo, pmxlock, …), if there is one.
pub fn venv_python() -> Option<PathBuf> {
    let v = env_var("LOCKFN_VENV").unwrap_or_else(|| "/var/cache/lockfn-tests/venv".into());
    let p = Path::new(&v).join("bin/python");
    p.exists().then_some(p)
}

/// The Python of the test venv, or None (skipped with the reason printed; a failure when the
/// run promised its servers, see [`require`]).
pub fn need_venv_python() -> Option<PathBuf> {
    venv_python().or_else(|| {
        require("LOCKFN_VENV (a Python venv with kazoo, lockpick, …)");
        None
    })
}

/// The pmxcfs emulator's control script (tests/pmxcfs/emu.sh).
pub fn emu_sh() -> PathBuf {
    env_var("PMXEMU_SH")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pmxcfs/emu.sh"))
}

/// Can this process run the pmxcfs emulator (a FUSE file system: root and /dev/fuse)?
pub fn fuse_available() -> bool {
    Path::new("/dev/fuse").exists() && unsafe { libc::geteuid() } == 0
}

/// `emu.sh CMD DIR` with the emulator's TTL; panics when it fails.
pub fn emu(cmd: &str, dir: &Path, ttl: u64) {
    let st = Command::new("bash")
        .arg(emu_sh())
        .arg(cmd)
        .arg(dir)
        .env("PMXEMU_TTL", ttl.to_string())
        .env("PMXEMU_WATCH_PID", std::process::id().to_string())
        .stdin(Stdio::null())
        .status()
        .expect("bash");
    assert!(st.success(), "emu.sh {cmd} {}", dir.display());
}

/// The lock directory an emulator started in `dir` serves (from its DIR/env).
pub fn emu_lockdir(dir: &Path) -> PathBuf {
    let env = std::fs::read_to_string(dir.join("env")).expect("emu.sh writes DIR/env");
    env.lines()
        .find_map(|l| l.strip_prefix("LOCKFN_PMXCFS_DIR="))
        .map(PathBuf::from)
        .expect("LOCKFN_PMXCFS_DIR in DIR/env")
}
