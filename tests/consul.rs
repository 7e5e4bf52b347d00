//! The consul backend against a real Consul agent (`CONSUL_HTTP_ADDR`; tests/run.sh starts one,
//! or `tests/servers/consul.sh start DIR`). With `LOCKFN_TEST_REQUIRE_SERVERS=1` a missing
//! agent fails the tests; otherwise they are skipped with a message.

#[path = "common/mod.rs"]
mod common;
use common::{expect_within, unique};
use lockfn::{ErrorKind, Lock, Options, Target};
use std::io::{BufRead, BufReader};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const LOCK_FLAG: u64 = 0x2ddccbc058a50c18;
const SEM_FLAG: u64 = 0xe0f69a2baa414de0;

/// The agent's `host:port`, or None (skip, or fail under LOCKFN_TEST_REQUIRE_SERVERS=1).
fn agent() -> Option<String> {
    if !common::server("CONSUL_HTTP_ADDR") {
        return None;
    }
    common::env_var("CONSUL_HTTP_ADDR").map(|a| a.trim_start_matches("http://").to_string())
}

fn http(method: &str, addr: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let url = format!("http://{addr}{path}");
    let mut resp = match (method, body) {
        ("GET", _) => agent.get(&url).call(),
        ("DELETE", _) => agent.delete(&url).call(),
        (_, Some(b)) => agent.put(&url).send(b.as_bytes()),
        (_, None) => agent.put(&url).send_empty(),
    }
    .expect("http to consul");
    let status = resp.status().as_u16();
    (status, resp.body_mut().read_to_string().unwrap_or_default())
}

fn kv(addr: &str, key: &str) -> Option<serde_json::Value> {
    let (s, b) = http("GET", addr, &format!("/v1/kv/{key}"), None);
    if s == 404 {
        return None;
    }
    assert_eq!(s, 200, "{b}");
    let v: serde_json::Value = serde_json::from_str(&b).unwrap();
    Some(v[0].clone())
}

fn keys_under(addr: &str, prefix: &str) -> Vec<String> {
    let (s, b) = http("GET", addr, &format!("/v1/kv/{prefix}?keys=true"), None);
    if s == 404 {
        return Vec::new();
    }
    serde_json::from_str(&b).unwrap()
}

/// Sessions whose name mentions `needle`.
fn sessions_named(addr: &str, needle: &str) -> Vec<String> {
    let (_, b) = http("GET", addr, "/v1/session/list", None);
    let v: Vec<serde_json::Value> = serde_json::from_str(&b).unwrap();
    v.iter()
        .filter(|s| s["Name"].as_str().unwrap_or("").contains(needle))
        .map(|s| s["ID"].as_str().unwrap().to_string())
        .collect()
}

/// Sessions of lockfn (of this process) for `key`: the name lockfn gives them.
fn lockfn_sessions(addr: &str, key: &str) -> Vec<String> {
    sessions_named(addr, &format!("lockfn {key} (pid {} ", std::process::id()))
}

fn opts(timeout: Option<f64>) -> Options {
    let mut o = Options::default();
    o.timeout = timeout.map(Duration::from_secs_f64);
    o
}

fn target(addr: &str, key: &str) -> Target {
    Target::parse(&format!("consul://{addr}/{key}")).unwrap()
}

#[test]
fn acquire_release_leaves_nothing_and_token_grows() {
    let Some(addr) = agent() else { return };
    let key = format!("lockfn-test/{}", unique("basic"));
    let t = target(&addr, &key);
    let l = Lock::acquire(&t, &opts(Some(5.0))).unwrap();
    let e = kv(&addr, &key).expect("key exists while held");
    assert_eq!(e["Flags"].as_u64(), Some(LOCK_FLAG));
    assert_eq!(l.token(), e["ModifyIndex"].as_u64().unwrap());
    let st = lockfn::status(&t).unwrap();
    assert!(st.held);
    assert_eq!(st.holders.len(), 1);
    assert_eq!(st.holders[0].record.pid as u32, std::process::id());
    assert_eq!(st.holders[0].record.token, l.token());
    assert_eq!(l.renew_interval(), Some(Duration::from_millis(7500)));
    assert_eq!(l.check_interval(), Some(Duration::from_secs(1)));
    l.check().unwrap();
    l.update().unwrap();
    let t1 = l.token();
    l.release().unwrap();
    assert!(kv(&addr, &key).is_none(), "key left after release");
    assert!(
        sessions_named(&addr, &key).is_empty(),
        "session left after release"
    );
    assert!(!lockfn::status(&t).unwrap().held);
    let l = Lock::acquire(&t, &opts(Some(5.0))).unwrap();
    assert!(l.token() > t1, "{} > {t1}", l.token());
    l.release().unwrap();
    assert!(kv(&addr, &key).is_none());
}

#[test]
fn consul_name_maps_to_lockfn_prefix() {
    let Some(addr) = agent() else { return };
    let name = unique("named");
    let t = Target::parse(&format!("consul:{name}")).unwrap();
    let l = Lock::acquire(&t, &opts(Some(5.0))).unwrap();
    assert!(kv(&addr, &format!("lockfn/{name}")).is_some());
    let all = lockfn::list("consul:").unwrap();
    assert!(
        all.iter()
            .any(|s| s.target == format!("consul:{name}") && s.held),
        "{all:?}"
    );
    l.release().unwrap();
    assert!(kv(&addr, &format!("lockfn/{name}")).is_none());
}

#[test]
fn try_once_and_timeout_report_the_holder() {
    let Some(addr) = agent() else { return };
    let key = format!("lockfn-test/{}", unique("busy"));
    let t = target(&addr, &key);
    let mut o = opts(Some(5.0));
    o.holder = Some("the-holder-text".into());
    let l = Lock::acquire(&t, &o).unwrap();
    let e = Lock::acquire(&t, &opts(Some(0.0))).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy);
    assert!(e.to_string().contains("the-holder-text"), "{e}");
    assert!(
        e.to_string().contains(&std::process::id().to_string()),
        "{e}"
    );
    let start = Instant::now();
    let e = Lock::acquire(&t, &opts(Some(1.5))).unwrap_err();
    let took = start.elapsed();
    assert_eq!(e.kind(), ErrorKind::Busy);
    assert!(took >= Duration::from_millis(1500), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    l.release().unwrap();
    // The waiters left no session behind.
    assert!(sessions_named(&addr, &key).is_empty());
}

#[test]
fn mutual_exclusion_8_threads_200_each() {
    let Some(addr) = agent() else { return };
    let key = format!("lockfn-test/{}", unique("mutex"));
    let t = target(&addr, &key);
    let inside = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (t, inside, count) = (t.clone(), inside.clone(), count.clone());
            std::thread::spawn(move || {
                let mut last = 0;
                for _ in 0..200 {
                    let l = Lock::acquire(&t, &opts(Some(120.0))).unwrap();
                    assert!(!inside.swap(true, Ordering::SeqCst), "two holders at once");
                    assert!(l.token() > last);
                    last = l.token();
                    count.fetch_add(1, Ordering::SeqCst);
                    inside.store(false, Ordering::SeqCst);
                    l.release().unwrap();
                }
            })
        })
        .collect();
    for th in threads {
        th.join().unwrap();
    }
    assert_eq!(count.load(Ordering::SeqCst), 1600);
    eprintln!(
        "consul mutex: 1600 contended cycles in {:?} ({:.2} ms/cycle)",
        start.elapsed(),
        start.elapsed().as_secs_f64() * 1000.0 / 1600.0
    );
    assert!(kv(&addr, &key).is_none());
    assert!(sessions_named(&addr, &key).is_empty());
}

#[test]
fn semaphore_limit_3() {
    let Some(addr) = agent() else { return };
    let prefix = format!("lockfn-test/{}", unique("sem"));
    let t = target(&addr, &format!("{prefix}/.lock"));
    // Three slots, exactly.
    let mut o = opts(Some(0.0));
    o.limit = 3;
    let three: Vec<_> = (0..3).map(|_| Lock::acquire(&t, &o).unwrap()).collect();
    assert_eq!(Lock::acquire(&t, &o).unwrap_err().kind(), ErrorKind::Busy);
    drop(three);
    let inside = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..6)
        .map(|_| {
            let (t, inside, peak) = (t.clone(), inside.clone(), peak.clone());
            std::thread::spawn(move || {
                for _ in 0..15 {
                    let mut o = opts(Some(120.0));
                    o.limit = 3;
                    let l = Lock::acquire(&t, &o).unwrap();
                    let n = inside.fetch_add(1, Ordering::SeqCst) + 1;
                    assert!(n <= 3, "{n} holders of a 3-slot semaphore");
                    peak.fetch_max(n, Ordering::SeqCst);
                    // Hold the slot a while (the critical section), so that holders overlap.
                    std::thread::sleep(Duration::from_millis(20));
                    inside.fetch_sub(1, Ordering::SeqCst);
                    l.release().unwrap();
                }
            })
        })
        .collect();
    for th in threads {
        th.join().unwrap();
    }
    assert!(peak.load(Ordering::SeqCst) >= 2, "slots were never shared");
    assert!(
        keys_under(&addr, &format!("{prefix}/")).is_empty(),
        "semaphore left keys"
    );
}

#[test]
fn semaphore_layout_is_hashicorps_and_status_shows_holders() {
    let Some(addr) = agent() else { return };
    let prefix = format!("lockfn-test/{}", unique("semlayout"));
    let t = target(&addr, &prefix);
    let mut o = opts(Some(5.0));
    o.limit = 2;
    o.holder = Some("slot-a".into());
    let a = Lock::acquire(&t, &o).unwrap();
    o.holder = Some("slot-b".into());
    let b = Lock::acquire(&t, &o).unwrap();
    assert!(b.token() > a.token());
    let lk = kv(&addr, &format!("{prefix}/.lock")).unwrap();
    assert_eq!(lk["Flags"].as_u64(), Some(SEM_FLAG));
    let v = String::from_utf8(decode64(lk["Value"].as_str().unwrap())).unwrap();
    let v: serde_json::Value = serde_json::from_str(&v).unwrap();
    assert_eq!(v["Limit"], 2);
    assert_eq!(v["Holders"].as_object().unwrap().len(), 2);
    let e = Lock::acquire(&t, &{
        let mut o = opts(Some(0.0));
        o.limit = 2;
        o
    })
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
    let mut o3 = opts(Some(0.0));
    o3.limit = 3;
    let e = Lock::acquire(&t, &o3).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Invalid, "{e}");
    let st = lockfn::status(&t).unwrap();
    assert_eq!(st.limit, Some(2));
    assert_eq!(st.available, Some(0));
    let mut texts: Vec<_> = st.holders.iter().map(|h| h.record.holder.clone()).collect();
    texts.sort();
    assert_eq!(texts, vec!["slot-a", "slot-b"]);
    let mut toks: Vec<_> = st.holders.iter().map(|h| h.record.token).collect();
    toks.sort();
    assert_eq!(toks, vec![a.token(), b.token()]);
    // The mutex path refuses a semaphore's .lock.
    let e =
        Lock::acquire(&target(&addr, &format!("{prefix}/.lock")), &opts(Some(0.0))).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Invalid, "{e}");
    a.release().unwrap();
    b.release().unwrap();
    assert!(keys_under(&addr, &format!("{prefix}/")).is_empty());
}

fn decode64(s: &str) -> Vec<u8> {
    let tbl = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes().filter(|&c| c != b'=') {
        acc = acc << 6 | tbl.iter().position(|&x| x == c).unwrap() as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

#[test]
fn cancel_stops_waiting_and_leaves_nothing() {
    let Some(addr) = agent() else { return };
    let key = format!("lockfn-test/{}", unique("cancel"));
    let t = target(&addr, &key);
    let l = Lock::acquire(&t, &opts(Some(5.0))).unwrap();
    for limit in [1u32, 3] {
        let key2 = if limit == 1 {
            key.clone()
        } else {
            format!("{key}-sem")
        };
        let t2 = target(&addr, &key2);
        let mut holders = Vec::new();
        if limit > 1 {
            for _ in 0..3 {
                let mut o = opts(Some(5.0));
                o.limit = 3;
                holders.push(Lock::acquire(&t2, &o).unwrap());
            }
        }
        let (r, w) = nix::unistd::pipe().unwrap();
        let t3 = t2.clone();
        let rfd = r.as_raw_fd();
        let waiter = std::thread::spawn(move || {
            let mut o = opts(None);
            o.limit = limit;
            o.cancel_fd = Some(rfd);
            let start = Instant::now();
            let e = Lock::acquire(&t3, &o).unwrap_err();
            (e, start.elapsed())
        });
        // Cancel only once the waiter is in its wait: its session exists besides the holders'
        // (and, for the semaphore, its contender key), so the checks below that they are gone
        // see a cleanup rather than a waiter that never started.
        let expect = if limit > 1 { 3 } else { 1 };
        expect_within(
            Duration::from_secs(10),
            &format!("limit {limit}: the waiter's session never appeared"),
            || lockfn_sessions(&addr, &key2).len() > expect,
        );
        if limit > 1 {
            expect_within(
                Duration::from_secs(10),
                &format!("limit {limit}: the waiter's contender key never appeared"),
                || keys_under(&addr, &format!("{key2}/")).len() > 4,
            );
        }
        let t_cancel = Instant::now();
        nix::unistd::write(&w, b"x").unwrap();
        let (e, _) = waiter.join().unwrap();
        assert_eq!(e.kind(), ErrorKind::Canceled, "{e}");
        assert!(
            // A bound on bad behaviour (a wait that ignores its cancel fd), not a speed
            // figure: generous for a loaded 2-CPU machine.
            t_cancel.elapsed() < Duration::from_secs(2),
            "{:?}",
            t_cancel.elapsed()
        );
        drop(r);
        // The waiter's session (and, for the semaphore, its contender key) is gone.
        let sessions = sessions_named(&addr, &key2);
        assert_eq!(sessions.len(), expect, "limit {limit}: {sessions:?}");
        if limit > 1 {
            let keys = keys_under(&addr, &format!("{key2}/"));
            assert_eq!(keys.len(), 4, "{keys:?}"); // .lock + 3 holders
        }
        for h in holders {
            h.release().unwrap();
        }
    }
    l.release().unwrap();
}

#[test]
fn operator_destroying_the_session_is_a_loss() {
    let Some(addr) = agent() else { return };
    for limit in [1u32, 2] {
        let key = format!("lockfn-test/{}", unique("lost"));
        let t = target(&addr, &key);
        let mut o = opts(Some(5.0));
        o.limit = limit;
        let l = Lock::acquire(&t, &o).unwrap();
        let ids = sessions_named(&addr, &key);
        assert_eq!(ids.len(), 1);
        let (s, _) = http(
            "PUT",
            &addr,
            &format!("/v1/session/destroy/{}", ids[0]),
            None,
        );
        assert_eq!(s, 200);
        let e = l.update().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Lost, "{e}");
        let e = l.release().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Lost, "{e}");
        if limit == 1 {
            // The released key with our record was tidied away.
            assert!(kv(&addr, &key).is_none());
        }
        // Someone else can take it (a lock-delay may apply after an invalidation).
        let l2 = Lock::acquire(&t, &{
            let mut o = opts(Some(30.0));
            o.limit = limit;
            o
        })
        .unwrap();
        l2.release().unwrap();
    }
}

#[test]
fn unreachable_agent_is_unavailable_naming_the_address() {
    let Some(_) = agent() else { return };
    // A port nothing listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let t = Target::parse(&format!("consul://127.0.0.1:{port}/x/.lock")).unwrap();
    let start = Instant::now();
    let e = Lock::acquire(&t, &opts(Some(2.0))).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(e.to_string().contains(&format!("127.0.0.1:{port}")), "{e}");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    let e = lockfn::status(&t).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
}

#[test]
fn bad_ttl_and_lock_delay_are_invalid() {
    let Some(addr) = agent() else { return };
    let t = target(&addr, &format!("lockfn-test/{}", unique("ttl")));
    let mut o = opts(Some(0.0));
    o.ttl = Some(Duration::from_secs(5));
    assert_eq!(
        Lock::acquire(&t, &o).unwrap_err().kind(),
        ErrorKind::Invalid
    );
    o.ttl = Some(Duration::from_secs(100_000));
    assert_eq!(
        Lock::acquire(&t, &o).unwrap_err().kind(),
        ErrorKind::Invalid
    );
    let mut o = opts(Some(0.0));
    o.lock_delay = Some(Duration::from_secs(120));
    assert_eq!(
        Lock::acquire(&t, &o).unwrap_err().kind(),
        ErrorKind::Invalid
    );
    let mut o = opts(Some(0.0));
    o.shared = true;
    assert_eq!(
        Lock::acquire(&t, &o).unwrap_err().kind(),
        ErrorKind::Invalid
    );
}

#[test]
fn malformed_values_are_errors_not_panics() {
    let Some(addr) = agent() else { return };
    let prefix = format!("lockfn-test/{}", unique("garbage"));
    // A .lock with the semaphore flags but a value that is not a semaphore.
    let (s, _) = http(
        "PUT",
        &addr,
        &format!("/v1/kv/{prefix}/.lock?flags={SEM_FLAG}"),
        Some("\u{1}not json{{{"),
    );
    assert_eq!(s, 200);
    let t = target(&addr, &prefix);
    let mut o = opts(Some(0.0));
    o.limit = 2;
    let e = Lock::acquire(&t, &o).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Internal, "{e}");
    assert!(lockfn::status(&t).is_err());
    // A mutex key holding garbage with the lock flags and no session: taken over (it is a
    // released lock); with other flags: refused.
    let k2 = format!("{prefix}-m");
    http(
        "PUT",
        &addr,
        &format!("/v1/kv/{k2}?flags={LOCK_FLAG}"),
        Some("\u{0}\u{ff}"),
    );
    let l = Lock::acquire(&target(&addr, &k2), &opts(Some(2.0))).unwrap();
    l.release().unwrap();
    let k3 = format!("{prefix}-data");
    http("PUT", &addr, &format!("/v1/kv/{k3}"), Some("plain data"));
    let e = Lock::acquire(&target(&addr, &k3), &opts(Some(0.0))).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Invalid, "{e}");
    assert!(kv(&addr, &k3).is_some(), "data key must not be touched");
    http(
        "DELETE",
        &addr,
        &format!("/v1/kv/{prefix}?recurse=true"),
        None,
    );
}

#[test]
fn force_release_and_release_matching() {
    let Some(addr) = agent() else { return };
    let base = format!("lockfn-test/{}", unique("force"));
    let t = target(&addr, &format!("{base}/a"));
    let l = Lock::acquire(&t, &opts(Some(5.0))).unwrap();
    // Not persistent: a plain release_named refuses.
    assert_eq!(
        lockfn::release_named(&t, false).unwrap_err().kind(),
        ErrorKind::NotHeld
    );
    assert_eq!(lockfn::release_named(&t, true).unwrap(), 1);
    assert_eq!(l.update().unwrap_err().kind(), ErrorKind::Lost);
    drop(l);
    // Persistent: detach, then release by name.
    let mut o = opts(Some(5.0));
    o.persist = true;
    let p = Lock::acquire(&t, &o).unwrap();
    p.detach().unwrap();
    assert!(lockfn::status(&t).unwrap().held);
    lockfn::update_named(&t).unwrap();
    assert_eq!(lockfn::release_named(&t, false).unwrap(), 1);
    assert!(kv(&addr, &format!("{base}/a")).is_none());
    assert!(sessions_named(&addr, &format!("{base}/a")).is_empty());
    // By regex.
    let ls: Vec<_> = ["x1", "x2", "y1"]
        .iter()
        .map(|n| Lock::acquire(&target(&addr, &format!("{base}/{n}")), &opts(Some(5.0))).unwrap())
        .collect();
    let got =
        lockfn::release_matching(&format!("consul://{addr}/"), &format!("{base}/x.*")).unwrap();
    assert_eq!(
        got,
        vec![
            format!("consul://{addr}/{base}/x1"),
            format!("consul://{addr}/{base}/x2")
        ]
    );
    assert!(kv(&addr, &format!("{base}/y1")).is_some());
    for l in ls {
        let _ = l.release();
    }
    assert!(keys_under(&addr, &format!("{base}/")).is_empty());
}

/// `consul lock` (HashiCorp's binary) and lockfn on the same key exclude each other.
fn consul_bin() -> Option<String> {
    match std::env::var("CONSUL_BIN") {
        Ok(b) if !b.is_empty() => Some(b),
        _ => {
            let c = "/var/cache/lockfn-tests/consul/root/usr/bin/consul";
            if std::path::Path::new(c).exists() {
                return Some(c.to_string());
            }
            if std::env::var("LOCKFN_TEST_REQUIRE_SERVERS").as_deref() == Ok("1") {
                panic!("CONSUL_BIN is not set");
            }
            eprintln!("skipped: no consul binary (CONSUL_BIN)");
            None
        }
    }
}

/// Start `consul lock [-n N] PREFIX` holding until `stop` file exists; wait until it holds.
fn consul_lock_holder(
    bin: &str,
    addr: &str,
    prefix: &str,
    n: u32,
    dir: &std::path::Path,
) -> std::process::Child {
    let marker = dir.join(format!("held-{}", unique("m")));
    let stop = dir.join("stop");
    let script = format!(
        "touch {m}; i=0; while [ ! -e {s} ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done",
        m = marker.display(),
        s = stop.display()
    );
    let child = Command::new(bin)
        .args(["lock", "-n", &n.to_string(), prefix, &script])
        .env("CONSUL_HTTP_ADDR", addr)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !marker.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "consul lock did not get the lock"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

#[test]
fn interop_with_consul_lock_mutex_and_semaphore() {
    let Some(addr) = agent() else { return };
    let Some(bin) = consul_bin() else { return };
    let dir = std::env::temp_dir().join(unique("consul-lock"));
    std::fs::create_dir_all(&dir).unwrap();
    // 1. consul lock holds PREFIX → lockfn on PREFIX/.lock is busy, then gets it.
    let prefix = format!("lockfn-test/{}", unique("cl"));
    let t = target(&addr, &format!("{prefix}/.lock"));
    let mut child = consul_lock_holder(&bin, &addr, &prefix, 1, &dir);
    let e = Lock::acquire(&t, &opts(Some(0.0))).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
    let st = lockfn::status(&t).unwrap();
    assert!(
        st.held && st.holders[0].record.holder.contains("Consul lock"),
        "{st:?}"
    );
    std::fs::write(dir.join("stop"), "").unwrap();
    let l = Lock::acquire(&t, &opts(Some(30.0))).unwrap();
    assert!(child.wait().unwrap().success());
    std::fs::remove_file(dir.join("stop")).unwrap();
    // 2. lockfn holds it → `consul lock -timeout` fails, and succeeds after our release.
    let out = Command::new(&bin)
        .args(["lock", "-timeout=1s", &prefix, "true"])
        .env("CONSUL_HTTP_ADDR", &addr)
        .output()
        .unwrap();
    assert!(!out.status.success(), "consul lock got a lock lockfn holds");
    l.release().unwrap();
    let out = Command::new(&bin)
        .args(["lock", "-timeout=10s", &prefix, "true"])
        .env("CONSUL_HTTP_ADDR", &addr)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // 3. Semaphore: two `consul lock -n 3` holders + one lockfn = 3; a fourth is busy on
    //    both sides.
    let sp = format!("lockfn-test/{}", unique("cln"));
    let st = target(&addr, &format!("{sp}/.lock"));
    let mut c1 = consul_lock_holder(&bin, &addr, &sp, 3, &dir);
    let mut c2 = consul_lock_holder(&bin, &addr, &sp, 3, &dir);
    let mut o = opts(Some(5.0));
    o.limit = 3;
    let mine = Lock::acquire(&st, &o).unwrap();
    let mut o0 = opts(Some(0.0));
    o0.limit = 3;
    assert_eq!(Lock::acquire(&st, &o0).unwrap_err().kind(), ErrorKind::Busy);
    let out = Command::new(&bin)
        .args(["lock", "-n", "3", "-timeout=1s", &sp, "true"])
        .env("CONSUL_HTTP_ADDR", &addr)
        .output()
        .unwrap();
    assert!(!out.status.success(), "consul lock -n 3 got a 4th slot");
    let status = lockfn::status(&st).unwrap();
    assert_eq!(status.limit, Some(3));
    assert_eq!(status.holders.len(), 3, "{status:?}");
    mine.release().unwrap();
    let out = Command::new(&bin)
        .args(["lock", "-n", "3", "-timeout=10s", &sp, "true"])
        .env("CONSUL_HTTP_ADDR", &addr)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(dir.join("stop"), "").unwrap();
    assert!(c1.wait().unwrap().success());
    assert!(c2.wait().unwrap().success());
    // Nothing of ours is left under the prefix. (`consul lock -timeout` that gave up leaves
    // its contender key until its own session expires: not ours to judge.)
    assert!(sessions_named(&addr, &sp).iter().all(|s| !s.is_empty()));
    let (_, b) = http("GET", &addr, "/v1/session/list", None);
    let all: Vec<serde_json::Value> = serde_json::from_str(&b).unwrap();
    for k in keys_under(&addr, &format!("{sp}/")) {
        let e = kv(&addr, &k).unwrap();
        let sess = e["Session"].as_str().unwrap_or("");
        let name = all
            .iter()
            .find(|s| s["ID"] == sess)
            .and_then(|s| s["Name"].as_str())
            .unwrap_or("");
        assert!(
            !sess.is_empty() && name.starts_with("Consul lock for 'true'"),
            "{k} left: {e}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn consul_lock_py() -> Option<String> {
    let venv =
        std::env::var("LOCKFN_VENV").unwrap_or_else(|_| "/var/cache/lockfn-tests/venv".into());
    let p = format!("{venv}/bin/consul-lock");
    if std::path::Path::new(&p).exists() {
        return Some(p);
    }
    if std::env::var("LOCKFN_TEST_REQUIRE_SERVERS").as_deref() == Ok("1") {
        panic!("consul-lock (consullock) is not installed in LOCKFN_VENV");
    }
    eprintln!("skipped: consul-lock not installed");
    None
}

#[test]
fn interop_with_consullock() {
    let Some(addr) = agent() else { return };
    let Some(cl) = consul_lock_py() else { return };
    let key = format!("lockfn-test/{}", unique("pycl"));
    let t = target(&addr, &key);
    // consullock holds → we are busy; status names it; after its unlock we get it.
    let out = Command::new(&cl)
        .args(["lock", "--session-ttl", "30", &key])
        .env("CONSUL_HTTP_ADDR", &addr)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let e = Lock::acquire(&t, &opts(Some(0.0))).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
    let st = lockfn::status(&t).unwrap();
    assert!(
        st.held && st.holders[0].record.holder.contains("consullock"),
        "{st:?}"
    );
    let waiter = {
        let t = t.clone();
        // No lock-delay: consullock's `unlock` below destroys this session, and its `lock`
        // right after must not meet a lock-delay (consullock's own sessions have none).
        let mut o = opts(Some(30.0));
        o.lock_delay = Some(Duration::ZERO);
        std::thread::spawn(move || Lock::acquire(&t, &o))
    };
    // The waiter is on its way (its session exists) before consullock unlocks.
    expect_within(
        Duration::from_secs(10),
        "the waiter's session never appeared",
        || !lockfn_sessions(&addr, &key).is_empty(),
    );
    let out = Command::new(&cl)
        .args(["unlock", &key])
        .env("CONSUL_HTTP_ADDR", &addr)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let l = waiter.join().unwrap().unwrap();
    // We hold → consullock's non-blocking lock fails (exit 100).
    let out = Command::new(&cl)
        .args(["lock", "--non-blocking", &key])
        .env("CONSUL_HTTP_ADDR", &addr)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(100),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // consullock reads our value (its key/session/created fields) and its `unlock` frees the
    // key we hold (it destroys the session our value names): no traceback, and we see the loss.
    let v = kv(&addr, &key).unwrap();
    let j: serde_json::Value =
        serde_json::from_slice(&decode64(v["Value"].as_str().unwrap())).unwrap();
    assert_eq!(j["key"], key.as_str(), "{j}");
    assert_eq!(j["session"], v["Session"], "{j}");
    assert!(j["pid"].as_u64().is_some(), "our record is kept: {j}");
    let out = Command::new(&cl)
        .args(["unlock", &key])
        .env("CONSUL_HTTP_ADDR", &addr)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !err.contains("Traceback"), "{err}");
    assert_eq!(l.check().unwrap_err().kind(), ErrorKind::Lost);
    assert!(kv(&addr, &key).is_none());
    drop(l);
    let out = Command::new(&cl)
        .args(["lock", "--non-blocking", "--session-ttl", "30", &key])
        .env("CONSUL_HTTP_ADDR", &addr)
        .output()
        .unwrap();
    assert!(out.status.success());
    // Operator release of consullock's key through lockfn.
    assert_eq!(lockfn::release_named(&t, true).unwrap(), 1);
    assert!(kv(&addr, &key).is_none());
}

/// Helper process for the kill -9 test: holds the lock and renews it until killed.
#[test]
fn child_holder() {
    let Ok(target) = std::env::var("LOCKFN_CONSUL_CHILD_TARGET") else {
        return;
    };
    let t = Target::parse(&target).unwrap();
    let mut o = opts(Some(30.0));
    o.ttl = Some(Duration::from_secs(10));
    o.auto_renew = true;
    if let Ok(d) = std::env::var("LOCKFN_CONSUL_CHILD_DELAY") {
        o.lock_delay = Some(Duration::from_secs_f64(d.parse().unwrap()));
    }
    let l = Lock::acquire(&t, &o).unwrap();
    println!("ACQUIRED {}", l.token());
    // Held (and renewed) until the test kills this process.
    std::thread::sleep(Duration::from_secs(600));
}

fn spawn_child_holder(target: &str, delay: Option<&str>) -> (std::process::Child, Instant) {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "child_holder", "--nocapture", "--test-threads=1"])
        .env("LOCKFN_CONSUL_CHILD_TARGET", target)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(d) = delay {
        cmd.env("LOCKFN_CONSUL_CHILD_DELAY", d);
    }
    let mut child = cmd.spawn().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "child holder exited");
        if line.contains("ACQUIRED") {
            break;
        }
    }
    (child, Instant::now())
}

#[test]
fn kill_9_holder_next_waiter_after_ttl_never_before() {
    let Some(addr) = agent() else { return };
    if std::env::var("LOCKFN_CONSUL_CHILD_TARGET").is_ok() {
        return;
    }
    // Shortest TTL Consul accepts (10 s); lock-delay 2 s.
    let key = format!("lockfn-test/{}", unique("kill9"));
    let t = format!("consul://{addr}/{key}");
    let (mut child, _) = spawn_child_holder(&t, Some("2"));
    let killed = Instant::now();
    child.kill().unwrap();
    child.wait().unwrap();
    let l = Lock::acquire(&Target::parse(&t).unwrap(), &opts(Some(60.0))).unwrap();
    let took = killed.elapsed();
    eprintln!("consul kill -9 takeover (TTL 10 s, lock-delay 2 s): {took:?}");
    // Never before TTL + lock-delay. (Consul ends a session 2×TTL after its last renewal;
    // the holder renewed at most TTL/2 before it was killed: expect 17–22 s.)
    assert!(took >= Duration::from_secs(10 + 2), "{took:?}");
    assert!(took <= Duration::from_secs(10 * 2 + 2 + 5), "{took:?}");
    l.release().unwrap();
}

#[test]
fn figures_uncontended_cycle_and_handoff() {
    let Some(addr) = agent() else { return };
    let key = format!("lockfn-test/{}", unique("perf"));
    let t = target(&addr, &key);
    let n = 200;
    let start = Instant::now();
    for _ in 0..n {
        let l = Lock::acquire(&t, &opts(Some(5.0))).unwrap();
        l.release().unwrap();
    }
    let per = start.elapsed() / n;
    eprintln!("consul uncontended acquire+release: {per:?} per cycle (4 HTTP requests)");
    // Speed is measured in benches/; this only catches a cycle gone pathological.
    assert!(per < Duration::from_secs(1), "{per:?}");
    // Handoff: from the start of the holder's release to the waiter holding.
    let mut total = Duration::ZERO;
    let rounds = 20;
    for _ in 0..rounds {
        let l = Lock::acquire(&t, &opts(Some(5.0))).unwrap();
        let t2 = t.clone();
        let waiter = std::thread::spawn(move || {
            let l = Lock::acquire(&t2, &opts(Some(10.0))).unwrap();
            let at = Instant::now();
            l.release().unwrap();
            at
        });
        // The waiter is waiting once its session exists besides ours (what follows is one
        // failed try and a read on loopback, then its blocking query). A release that still
        // beats its blocking query is handed over all the same (the try or the query's index
        // sees it), so the figure stays a handoff time.
        expect_within(
            Duration::from_secs(10),
            "the waiter's session never appeared",
            || lockfn_sessions(&addr, &key).len() >= 2,
        );
        let released = Instant::now();
        l.release().unwrap();
        let got = waiter.join().unwrap();
        total += got.saturating_duration_since(released);
    }
    let handoff = total / rounds;
    eprintln!("consul handoff latency: {handoff:?} (mean of {rounds})");
    assert!(handoff < Duration::from_secs(2), "{handoff:?}");
    assert!(kv(&addr, &key).is_none());
}

#[test]
fn gc_frees_a_dead_local_holder_at_once() {
    let Some(addr) = agent() else { return };
    if std::env::var("LOCKFN_CONSUL_CHILD_TARGET").is_ok() {
        return;
    }
    let name = unique("gc");
    let t = format!("consul:{name}");
    let (mut child, _) = spawn_child_holder(&t, None);
    child.kill().unwrap();
    child.wait().unwrap();
    let target = Target::parse(&t).unwrap();
    let st = lockfn::status(&target).unwrap();
    assert!(st.held);
    assert_eq!(
        st.holders[0].state,
        lockfn::holder::Liveness::Dead,
        "{st:?}"
    );
    assert_eq!(
        Lock::acquire(&target, &opts(Some(0.0))).unwrap_err().kind(),
        ErrorKind::Busy
    );
    let removed = lockfn::gc(&format!("consul:{name}")).unwrap();
    assert_eq!(removed, 1);
    // Freed without waiting for the session TTL, and without lock-delay.
    let l = Lock::acquire(&target, &opts(Some(1.0))).unwrap();
    l.release().unwrap();
    assert!(kv(&addr, &format!("lockfn/{name}")).is_none());
    // A key left released (as a holder's session expiry leaves it) is removed by gc too.
    http(
        "PUT",
        &addr,
        &format!("/v1/kv/lockfn/{name}?flags={LOCK_FLAG}"),
        Some("{}"),
    );
    assert_eq!(lockfn::gc(&format!("consul:{name}")).unwrap(), 1);
    assert!(kv(&addr, &format!("lockfn/{name}")).is_none());
}

/// benches/countproxy.py (HTTP mode) in front of the agent: counts the requests clients send.
struct CountProxy {
    child: std::process::Child,
    addr: String,
    ctrl: u16,
}

impl CountProxy {
    fn start(upstream: &str) -> CountProxy {
        let dir = std::env::temp_dir().join(unique("countproxy"));
        std::fs::create_dir_all(&dir).unwrap();
        let portfile = dir.join("ports");
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/countproxy.py");
        let child = Command::new("python3")
            .args([script, "http", portfile.to_str().unwrap(), upstream])
            .stdout(Stdio::null())
            .spawn()
            .expect("python3 benches/countproxy.py");
        let mut ports = String::new();
        expect_within(
            Duration::from_secs(20),
            "the counting proxy never listened",
            || {
                ports = std::fs::read_to_string(&portfile).unwrap_or_default();
                ports.split_whitespace().count() == 2
            },
        );
        let mut p = ports.split_whitespace().map(|x| x.parse::<u16>().unwrap());
        let (port, ctrl) = (p.next().unwrap(), p.next().unwrap());
        let _ = std::fs::remove_dir_all(&dir);
        CountProxy {
            child,
            addr: format!("127.0.0.1:{port}"),
            ctrl,
        }
    }

    fn count(&self) -> u64 {
        let s = std::net::TcpStream::connect(("127.0.0.1", self.ctrl)).unwrap();
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).unwrap();
        line.trim().parse().unwrap()
    }
}

impl Drop for CountProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// K+1 threads, each with its own lock (own session and connection), take `key` in turn
/// through `proxy`; a releaser asks again only once another thread has taken the lock, so
/// every counted acquisition is a hand-off to one of K waiters. Returns the requests of all
/// clients per hand-off over `n` hand-offs (after every thread has joined the queue).
fn requests_per_handoff(proxy: &Arc<CountProxy>, key: &str, k: usize, n: usize) -> f64 {
    use std::sync::{Condvar, Mutex};
    struct State {
        last: usize,
        ops: usize,
        inside: bool,
        c0: u64,
        c1: u64,
    }
    let warm = 2 * (k + 1);
    let state = Arc::new((
        Mutex::new(State {
            last: usize::MAX,
            ops: 0,
            inside: false,
            c0: 0,
            c1: 0,
        }),
        Condvar::new(),
    ));
    let t = target(&proxy.addr, key);
    let threads: Vec<_> = (0..=k)
        .map(|me| {
            let (t, state, proxy) = (t.clone(), state.clone(), proxy.clone());
            std::thread::spawn(move || loop {
                let l = Lock::acquire(&t, &opts(Some(120.0))).unwrap();
                let done = {
                    let (m, cv) = &*state;
                    let mut st = m.lock().unwrap();
                    assert!(!st.inside, "two holders at once");
                    st.ops += 1;
                    if st.ops == warm {
                        st.c0 = proxy.count();
                    }
                    if st.ops == warm + n {
                        st.c1 = proxy.count();
                    }
                    st.last = me;
                    st.inside = true;
                    cv.notify_all();
                    st.ops >= warm + n
                };
                // A short critical section: the releaser asks again while the lock is held,
                // so K = 1 is a contended hand-off too (not an uncontended re-take).
                std::thread::sleep(Duration::from_millis(10));
                state.0.lock().unwrap().inside = false;
                l.release().unwrap();
                if done {
                    return;
                }
                // Ask again only after another thread took it (a real hand-off).
                let (m, cv) = &*state;
                let st = m.lock().unwrap();
                let (st, timeout) = cv
                    .wait_timeout_while(st, Duration::from_secs(120), |st| {
                        st.last == me && st.ops < warm + n
                    })
                    .unwrap();
                assert!(!timeout.timed_out(), "no hand-off in 120 s");
                if st.ops >= warm + n {
                    return;
                }
            })
        })
        .collect();
    for th in threads {
        th.join().unwrap();
    }
    let st = state.0.lock().unwrap();
    (st.c1 - st.c0) as f64 / n as f64
}

#[test]
fn queue_a_hand_off_costs_about_the_same_at_20_waiters_as_at_1() {
    let Some(addr) = agent() else { return };
    let proxy = Arc::new(CountProxy::start(&addr));
    let base = format!("lockfn-test/{}", unique("cost"));
    let one = requests_per_handoff(&proxy, &format!("{base}-1"), 1, 60);
    let twenty = requests_per_handoff(&proxy, &format!("{base}-20"), 20, 60);
    eprintln!("requests per hand-off: K=1 {one:.2}, K=20 {twenty:.2}");
    // Without the queue every waiter watched the key: ~3 requests per waiter per hand-off.
    assert!(
        twenty <= 1.5 * one,
        "K=20 costs {twenty:.2} requests per hand-off, K=1 {one:.2}: the waiters herd"
    );
    assert!(one > 0.0);
}

/// Keys of the lockfn queue beside mutex key `key`.
fn queue_keys(addr: &str, key: &str) -> Vec<String> {
    keys_under(addr, &format!("{key}/.queue/"))
}

#[test]
fn queue_cancel_and_kill_9_of_queued_waiters_heal_and_status_shows_the_queue() {
    let Some(addr) = agent() else { return };
    let key = format!("lockfn-test/{}", unique("qheal"));
    let t = target(&addr, &key);
    let h = Lock::acquire(&t, &opts(Some(5.0))).unwrap();
    let spawn_waiter = |cancel: Option<i32>| {
        let t = t.clone();
        std::thread::spawn(move || {
            let mut o = opts(Some(60.0));
            o.cancel_fd = cancel;
            Lock::acquire(&t, &o)
        })
    };
    let queued = |n: usize| {
        expect_within(
            Duration::from_secs(20),
            &format!("{n} waiters never queued"),
            || queue_keys(&addr, &key).len() == n,
        )
    };
    // In this order: w1 (thread), w2 (a `lockfn run` process, killed -9 while it waits), w3
    // (thread, cancelled while it waits), w4 (thread).
    let w1 = spawn_waiter(None);
    queued(1);
    let mut w2 = Command::new(env!("CARGO_BIN_EXE_lockfn"))
        .args([
            "run",
            "-w",
            "60",
            &format!("consul://{addr}/{key}"),
            "--",
            "true",
        ])
        .env_remove("CONSUL_HTTP_TOKEN")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    queued(2);
    let (r, w) = nix::unistd::pipe().unwrap();
    let w3 = spawn_waiter(Some(r.as_raw_fd()));
    queued(3);
    let w4 = spawn_waiter(None);
    queued(4);
    // `lockfn status` shows the queue, oldest first.
    let st = lockfn::status(&t).unwrap();
    assert_eq!(st.details["waiting"], 4, "{st:?}");
    let pids: Vec<u64> = st.details["queue"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["pid"].as_u64().unwrap())
        .collect();
    let me = u64::from(std::process::id());
    assert_eq!(pids, vec![me, u64::from(w2.id()), me, me], "{st:?}");
    // A cancelled wait leaves nothing, at once.
    nix::unistd::write(&w, b"x").unwrap();
    let e = w3.join().unwrap().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Canceled, "{e}");
    assert_eq!(queue_keys(&addr, &key).len(), 3);
    // A waiter killed -9: its entry stays until its session ends, but lockfn waiters of this
    // host see the process is dead and skip it.
    w2.kill().unwrap();
    w2.wait().unwrap();
    h.release().unwrap();
    let l1 = w1.join().unwrap().unwrap();
    let released = Instant::now();
    l1.release().unwrap();
    let l4 = w4.join().unwrap().unwrap();
    // No stall anywhere near the session TTL (15 s) + lock-delay (15 s): a bound on bad
    // behaviour, generous for a loaded machine.
    assert!(
        released.elapsed() < Duration::from_secs(10),
        "w4 waited {:?} behind a dead waiter",
        released.elapsed()
    );
    l4.release().unwrap();
    // The dead waiter's entry goes with its session (TTL); nothing else is left.
    let left = queue_keys(&addr, &key);
    assert!(left.len() <= 1, "{left:?}");
    drop(r);
}
