//! Helpers of the ZooKeeper tests only (the shared ones — unique names, await_until,
//! require, venv_python — are in tests/common): the server, `zk://` targets, worker processes
//! (this test binary re-executed in a role), the overlap-checking critical section, queued
//! waiters and the servers' four-letter words.

#![allow(dead_code)]

use crate::common::{await_until, env_var, require, unique};
use lockfn::{Options, Target};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// ZKHOSTS, or None (test skipped with a printed reason) — a failure when the run promised
/// servers (LOCKFN_TEST_REQUIRE_SERVERS=1).
pub fn zkhosts() -> Option<String> {
    env_var("ZKHOSTS").or_else(|| {
        require("ZKHOSTS (start a ZooKeeper with tests/servers/zookeeper.sh)");
        None
    })
}

/// `zk://HOSTS/lockfn-test/NAME`: explicit, so the test does not depend on ZKHOSTS parsing.
pub fn target(hosts: &str, name: &str) -> Target {
    Target::parse(&format!("zk://{hosts}/lockfn-test/{name}")).unwrap()
}

pub fn path_of(name: &str) -> String {
    format!("/lockfn-test/{name}")
}

pub fn opts(timeout: Option<Duration>) -> Options {
    let mut o = Options::default();
    o.timeout = timeout;
    o
}

/// The critical section: an O_EXCL marker proves nobody else is inside, and a counter file
/// is read, incremented and written back (lost updates show overlap too).
pub fn critical(dir: &Path, hold: Duration) -> Result<(), String> {
    let marker = dir.join("marker");
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&marker)
        .map_err(|e| format!("overlap: marker exists ({e})"))?;
    let counter = dir.join("counter");
    let n: u64 = std::fs::read_to_string(&counter)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    if !hold.is_zero() {
        std::thread::sleep(hold);
    }
    std::fs::write(&counter, format!("{}\n", n + 1)).map_err(|e| e.to_string())?;
    std::fs::remove_file(&marker).map_err(|e| e.to_string())?;
    Ok(())
}

pub fn read_counter(dir: &Path) -> u64 {
    std::fs::read_to_string(dir.join("counter"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

pub fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(unique(&format!("lockfn-zk-{name}")));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Re-run this test binary as a worker: the test named `entry` runs `role` (see the test
/// file's worker function) with `env`.
pub fn spawn_worker(entry: &str, role: &str, env: &[(&str, String)]) -> Child {
    let exe = std::env::current_exe().unwrap();
    let mut c = Command::new(exe);
    c.args([entry, "--exact", "--nocapture", "--test-threads=1", "-q"])
        .env("LOCKFN_ZK_WORKER", role)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        c.env(k, v);
    }
    c.spawn().unwrap()
}

pub fn say(line: &str) {
    let mut o = std::io::stdout().lock();
    let _ = writeln!(o, "W:{line}");
    let _ = o.flush();
}

/// Read worker lines (prefixed `W:`) until one starts with `prefix`; None at EOF.
pub fn read_until(r: &mut impl std::io::BufRead, prefix: &str) -> Option<String> {
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if let Some(rest) = line.trim_end().strip_prefix("W:") {
            if rest.starts_with(prefix) {
                return Some(rest.to_string());
            }
        }
    }
}

/// Contenders of the lock that do not hold it (ours, kazoo's, lockpick's alike): the
/// `waiting` count of `lockfn::status`, from the lock node's children.
pub fn waiting(t: &Target) -> u64 {
    let st = lockfn::status(t).unwrap();
    st.details
        .get("waiting")
        .and_then(|w| w.as_u64())
        .unwrap_or(0)
}

/// Wait (bounded) until at least `n` contenders queue behind the holder of `t`: their
/// contender nodes exist, so a release from now on is one they must be woken by.
pub fn await_waiting(t: &Target, n: u64, limit: Duration) {
    assert!(
        await_until(limit, || waiting(t) >= n),
        "{n} waiter(s) never queued on {t} (waited {limit:?})"
    );
}

/// The answer of the four-letter-word command `cmd` from the server at `host` (bounded).
pub fn four_letter(host: &str, cmd: &str) -> std::io::Result<String> {
    use std::io::Read;
    use std::net::{TcpStream, ToSocketAddrs};
    let addr = host
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other(format!("no address for {host}")))?;
    let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    c.set_read_timeout(Some(Duration::from_secs(2)))?;
    c.set_write_timeout(Some(Duration::from_secs(2)))?;
    c.write_all(cmd.as_bytes())?;
    let mut out = String::new();
    c.take(1 << 22).read_to_string(&mut out)?;
    Ok(out)
}

/// How many children of `path` the servers of `hosts` (comma-separated) hold a data watch
/// on (`wchp`: each watched path, then its sessions indented). Err when a server does not
/// answer it (not in `4lw.commands.whitelist`, or unreachable).
pub fn watched_children(hosts: &str, path: &str) -> Result<usize, String> {
    let prefix = format!("{path}/");
    let mut n = 0;
    for h in hosts.split(',') {
        let out = four_letter(h, "wchp").map_err(|e| format!("wchp to {h}: {e}"))?;
        if out.contains("not in the whitelist") || out.contains("not executed") {
            return Err(format!("{h}: {}", out.trim()));
        }
        n += out
            .lines()
            .filter(|l| {
                l.strip_prefix(&prefix)
                    .is_some_and(|child| !child.is_empty() && !child.contains('/'))
            })
            .count();
    }
    Ok(n)
}
