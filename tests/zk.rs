//! What is specific to the ZooKeeper backend, against a real server (ZKHOSTS): kazoo's
//! max_leases, no contender node left by a failed wait, an unreachable ensemble, local checks
//! through a watch, session expiry, herd-free handoff, a forked child's fresh session, digest
//! ACLs, and interop with kazoo and lockpick (LOCKFN_VENV). What every service promises
//! (exclusion, limit N, shared, timeout, try-once, cancel, kill -9, loss, tokens, status/list,
//! persist/release, fork) is tests/conformance, run against zk: too.

mod common;
mod zk_common;

use common::{await_until, need_venv_python, unique};
use lockfn::testing::counters;
use lockfn::{ErrorKind, Lock};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use zk_common::*;

fn env(k: &str) -> String {
    std::env::var(k).unwrap_or_default()
}

/// Worker roles, run when this binary is re-executed by `spawn_worker("worker", …)`.
#[test]
fn worker() {
    let Ok(role) = std::env::var("LOCKFN_ZK_WORKER") else {
        return;
    };
    let t = lockfn::Target::parse(&env("W_TARGET")).unwrap();
    let code = match role.as_str() {
        "herd" => {
            herd(&t);
            0
        }
        "check" => {
            check_local(&t);
            0
        }
        "hold_check" => {
            let mut o = opts(None);
            o.ttl = Some(Duration::from_millis(env("W_TTL_MS").parse().unwrap()));
            let l = Lock::acquire(&t, &o).unwrap();
            say(&format!("held {}", l.token()));
            let mut line = String::new();
            while std::io::stdin().read_line(&mut line).unwrap_or(0) > 0 {
                match l.update() {
                    Ok(()) => say("ok"),
                    Err(e) => say(&format!("err {:?} {e}", e.kind())),
                }
                line.clear();
            }
            0
        }
        "fork" => {
            let parent_lock = Lock::acquire(&t, &opts(Some(Duration::from_secs(10)))).unwrap();
            let other = lockfn::Target::parse(&env("W_TARGET2")).unwrap();
            // SAFETY: the child runs only `forked_child` (lockfn's own calls, which are fork
            // safe by design) and leaves with _exit.
            let child = match unsafe { fork() }.unwrap() {
                ForkResult::Child => {
                    let code = forked_child(&t, &parent_lock, &other);
                    unsafe { libc::_exit(code) };
                }
                ForkResult::Parent { child } => match waitpid(child, None).unwrap() {
                    WaitStatus::Exited(_, code) => code,
                    other => panic!("the forked child: {other:?}"),
                },
            };
            let parent_ok = parent_lock.update().is_ok();
            say(&format!("child {child} parent_ok {parent_ok}"));
            parent_lock.release().unwrap();
            0
        }
        _ => 2,
    };
    std::process::exit(code);
}

/// The forked child of the "fork" worker: the parent's handle is not ours; a zk: lock works
/// on a new session. Its exit code: 0, or which check failed.
fn forked_child(t: &lockfn::Target, parent_lock: &Lock, other: &lockfn::Target) -> i32 {
    if parent_lock.update().map_err(|e| e.kind()) != Err(ErrorKind::Forked) {
        return 10;
    }
    let l = match Lock::acquire(other, &opts(Some(Duration::from_secs(10)))) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("child acquire: {e}");
            return 11;
        }
    };
    if l.update().is_err() || l.release().is_err() {
        return 12;
    }
    // The parent's lock is still held by the parent: busy for us.
    match Lock::acquire(t, &opts(Some(Duration::ZERO))) {
        Err(e) if e.kind() == ErrorKind::Busy => 0,
        _ => 13,
    }
}

/// A semaphore stores its max_leases (kazoo's check): another limit on it is refused.
#[test]
fn semaphore_refuses_another_max_leases() {
    let Some(h) = zkhosts() else { return };
    let t = target(&h, &unique("sem"));
    let mut o = opts(Some(Duration::ZERO));
    o.limit = 3;
    let l = Lock::acquire(&t, &o).unwrap();
    o.limit = 4;
    let e = Lock::acquire(&t, &o).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Invalid, "{e}");
    assert!(e.to_string().contains("max_leases 3"), "{e}");
    l.release().unwrap();
}

/// Waits that end without the lock leave no contender node behind: a try-once makes none, a
/// timed-out or canceled waiter deletes its own. Their Busy names the holder from its node.
#[test]
fn failed_waits_leave_no_contender_node_and_name_the_holder() {
    let Some(h) = zkhosts() else { return };
    let t = target(&h, &unique("failed"));
    let mut o = opts(None);
    o.holder = Some("the test".into());
    let a = Lock::acquire(&t, &o).unwrap();
    let e = Lock::acquire(&t, &opts(Some(Duration::ZERO))).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
    assert!(e.to_string().contains("the test"), "{e}");
    let e = Lock::acquire(&t, &opts(Some(Duration::from_millis(300)))).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
    assert!(e.to_string().contains("the test"), "{e}");
    assert_eq!(waiting(&t), 0, "a failed waiter left its node");
    // A canceled waiter, once queued (its node exists), deletes its node.
    let (cancel, cancel_rd) = std::os::unix::net::UnixStream::pair().unwrap();
    let waiter = {
        let t = t.clone();
        std::thread::spawn(move || {
            let mut o = opts(None);
            o.cancel_fd = Some(cancel_rd.as_raw_fd());
            let r = Lock::acquire(&t, &o).map(|_| ());
            drop(cancel_rd);
            r
        })
    };
    await_waiting(&t, 1, Duration::from_secs(10));
    (&cancel).write_all(b"x").unwrap();
    assert_eq!(
        waiter.join().unwrap().unwrap_err().kind(),
        ErrorKind::Canceled
    );
    assert_eq!(waiting(&t), 0, "the canceled waiter left its node");
    a.release().unwrap();
}

#[test]
fn unreachable_ensemble_is_unavailable_in_time() {
    // Nothing listens on port 1 of 127.0.0.1 (refused) nor on 127.0.0.9:9 (refused too).
    let t = lockfn::Target::parse("zk://127.0.0.1:1,127.0.0.9:9/lockfn-test/x").unwrap();
    let s = Instant::now();
    let e = Lock::acquire(&t, &opts(Some(Duration::from_millis(800)))).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(e.to_string().contains("127.0.0.1:1,127.0.0.9:9"), "{e}");
    assert!(s.elapsed() < Duration::from_secs(3), "{:?}", s.elapsed());
    // Waiting forever is bounded by the session timeout (ttl).
    let mut o = opts(None);
    o.ttl = Some(Duration::from_secs(2));
    let s = Instant::now();
    let e = Lock::acquire(&t, &o).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(s.elapsed() < Duration::from_secs(5), "{:?}", s.elapsed());
    // Try-once too.
    let e = Lock::acquire(&t, &opts(Some(Duration::ZERO))).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
}

/// Run in a worker (process-wide counters): after the first check arms a watch on our node,
/// checks are local until the node goes; its deletion is then noticed. Prints `check ok`.
fn check_local(t: &lockfn::Target) {
    let a = Lock::acquire(t, &opts(None)).unwrap();
    a.check().unwrap(); // arms the watch on our node
    let before = counters().requests;
    for _ in 0..10 {
        a.check().unwrap();
    }
    assert_eq!(
        counters().requests,
        before,
        "check with an armed watch must be local"
    );
    lockfn::release_named(t, true).unwrap();
    let mut err = None;
    assert!(
        await_until(Duration::from_secs(5), || {
            err = a.check().err();
            err.is_some()
        }),
        "the deletion of our node was not noticed"
    );
    assert_eq!(err.map(|e| e.kind()), Some(ErrorKind::Lost));
    say("check ok");
}

#[test]
fn check_is_local_and_notices_deletion_through_watch() {
    let Some(h) = zkhosts() else { return };
    let mut k = spawn_worker(
        "worker",
        "check",
        &[("W_TARGET", target(&h, &unique("check")).canonical())],
    );
    let mut out = BufReader::new(k.stdout.take().unwrap());
    assert_eq!(read_until(&mut out, "check").as_deref(), Some("check ok"));
    assert!(k.wait().unwrap().success());
}

#[test]
fn session_expiry_of_a_stopped_holder_is_reported_lost() {
    let Some(h) = zkhosts() else { return };
    let t = target(&h, &unique("expire"));
    let mut k = spawn_worker(
        "worker",
        "hold_check",
        &[("W_TARGET", t.canonical()), ("W_TTL_MS", "2000".into())],
    );
    let mut out = BufReader::new(k.stdout.take().unwrap());
    let mut stdin = k.stdin.take().unwrap();
    read_until(&mut out, "held").expect("holder never held");
    writeln!(stdin, "check").unwrap();
    assert_eq!(read_until(&mut out, "").unwrap(), "ok");
    // Freeze the holder: its session expires, and only then do we get the lock.
    kill(Pid::from_raw(k.id() as i32), Signal::SIGSTOP).unwrap();
    let stopped = Instant::now();
    let l = Lock::acquire(&t, &opts(Some(Duration::from_secs(30)))).unwrap();
    assert!(
        stopped.elapsed() >= Duration::from_secs(1),
        "{:?}",
        stopped.elapsed()
    );
    kill(Pid::from_raw(k.id() as i32), Signal::SIGCONT).unwrap();
    writeln!(stdin, "check").unwrap();
    let answer = read_until(&mut out, "").unwrap();
    assert!(answer.starts_with("err Lost"), "{answer}");
    drop(stdin);
    assert!(k.wait().unwrap().success());
    l.update().unwrap();
    l.release().unwrap();
}

/// The herd measurement, run in a worker process so that the process-wide request
/// counters see only this test's traffic. Prints `herd DONE EVENTS CHILDREN`.
fn herd(t: &lockfn::Target) {
    let t = t.clone();
    let first = Lock::acquire(&t, &opts(None)).unwrap();
    let c0 = counters();
    let n = 50;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let order = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..n)
        .map(|_| {
            let t = t.clone();
            let done = done.clone();
            let order = order.clone();
            std::thread::spawn(move || {
                let l = Lock::acquire(&t, &opts(Some(Duration::from_secs(120)))).unwrap();
                order.lock().unwrap().push(Instant::now());
                done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                l.release().unwrap();
            })
        })
        .collect();
    // Every waiter has set its one watch (one exists call each).
    assert!(
        await_until(Duration::from_secs(60), || counters().exists
            >= c0.exists + n as u64),
        "waiters did not queue"
    );
    // Those requests share this process's one session, which the server handles in order, so
    // the release below cannot overtake them; its `wchp` confirms that it holds the watches
    // (one per predecessor: the holder's node and 49 waiters' nodes).
    if let Some(hosts) = zkhosts() {
        let mut seen = Ok(0);
        let held = await_until(Duration::from_secs(30), || {
            seen = watched_children(&hosts, t.resource());
            !matches!(seen, Ok(w) if w < n)
        });
        match seen {
            Ok(w) => assert!(held, "the server holds {w} of the {n} waiters' watches"),
            Err(e) => eprintln!("note: cannot list the server's watches ({e})"),
        }
    }
    let c1 = counters();
    let released = Instant::now();
    first.release().unwrap();
    for th in threads {
        th.join().unwrap();
    }
    let total = released.elapsed();
    let c2 = counters();
    let events = c2.watch_events - c1.watch_events;
    let children = c2.get_children - c1.get_children;
    let requests = c2.requests - c1.requests;
    eprintln!(
        "zk 50 waiters: {n} handoffs in {:.1} ms ({:.2} ms each); per handoff: {:.2} watch \
         events, {:.2} getChildren, {:.2} requests (incl. the holder's delete)",
        total.as_secs_f64() * 1e3,
        total.as_secs_f64() * 1e3 / n as f64,
        events as f64 / n as f64,
        children as f64 / n as f64,
        requests as f64 / n as f64,
    );
    say(&format!(
        "herd {} {events} {children}",
        done.load(std::sync::atomic::Ordering::SeqCst)
    ));
}

#[test]
fn fifty_waiters_each_release_wakes_one() {
    let Some(h) = zkhosts() else { return };
    let mut k = spawn_worker(
        "worker",
        "herd",
        &[("W_TARGET", target(&h, &unique("herd")).canonical())],
    );
    let mut out = BufReader::new(k.stdout.take().unwrap());
    let line = read_until(&mut out, "herd ").expect("herd worker output");
    assert!(k.wait().unwrap().success());
    let v: Vec<u64> = line[5..].split(' ').map(|x| x.parse().unwrap()).collect();
    assert_eq!(v[0], 50, "not every waiter got the lock");
    // Each release wakes exactly one waiter: one watch event and one getChildren per handoff.
    assert_eq!(v[1], 50, "watch events for 50 handoffs");
    assert_eq!(v[2], 50, "getChildren calls for 50 handoffs");
}

#[test]
fn fork_child_gets_fresh_session_parent_untouched() {
    let Some(h) = zkhosts() else { return };
    let mut k = spawn_worker(
        "worker",
        "fork",
        &[
            ("W_TARGET", target(&h, &unique("fork1")).canonical()),
            ("W_TARGET2", target(&h, &unique("fork2")).canonical()),
        ],
    );
    let mut out = BufReader::new(k.stdout.take().unwrap());
    let line = read_until(&mut out, "child").expect("fork worker output");
    assert_eq!(line, "child 0 parent_ok true");
    assert!(k.wait().unwrap().success());
}

#[test]
fn digest_auth_acl_keeps_others_out_and_password_hidden() {
    let Some(h) = zkhosts() else { return };
    let name = unique("auth");
    let mine =
        lockfn::Target::parse(&format!("zk://alice:s3cret-pw@{h}/lockfn-test/{name}")).unwrap();
    let other =
        lockfn::Target::parse(&format!("zk://mallory:other-pw@{h}/lockfn-test/{name}")).unwrap();
    let a = Lock::acquire(&mine, &opts(None)).unwrap();
    a.release().unwrap();
    let e = Lock::acquire(&other, &opts(Some(Duration::ZERO))).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Permission, "{e}");
    assert!(!e.to_string().contains("other-pw"), "{e}");
    assert!(!e.to_string().contains("s3cret"), "{e}");
    // Anyone may read who holds it.
    let a = Lock::acquire(&mine, &opts(None)).unwrap();
    let st = lockfn::status(&other).unwrap();
    assert!(st.held);
    let json = serde_json::to_string(&st).unwrap();
    assert!(
        !json.contains("s3cret") && !json.contains("other-pw"),
        "{json}"
    );
    // Nor can the other identity force it away.
    assert_eq!(
        lockfn::release_named(&other, true).unwrap_err().kind(),
        ErrorKind::Permission
    );
    a.release().unwrap();
}

// ---- interop with kazoo and lockpick ----

/// A running kazoo_hold.py: holds until its stdin is closed.
struct Kazoo {
    child: std::process::Child,
    out: BufReader<std::process::ChildStdout>,
}

fn kazoo(py: &PathBuf, hosts: &str, path: &str, kind: &str, leases: u32, timeout: f64) -> Kazoo {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/zk/kazoo_hold.py");
    let mut child = Command::new(py)
        .args([
            script,
            hosts,
            path,
            kind,
            &leases.to_string(),
            &timeout.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    Kazoo { child, out }
}

impl Kazoo {
    /// "held" or "busy" (or "error: …").
    fn outcome(&mut self) -> String {
        let mut line = String::new();
        self.out.read_line(&mut line).unwrap();
        line.trim().to_string()
    }
    fn line(&mut self) -> String {
        self.outcome()
    }
    fn release(mut self) {
        drop(self.child.stdin.take());
        let st = self.child.wait().unwrap();
        assert!(matches!(st.code(), Some(0..=2)), "{st:?}");
    }
}

#[test]
fn kazoo_lock_excludes_ours_and_back() {
    let (Some(h), Some(py)) = (zkhosts(), need_venv_python()) else {
        return;
    };
    let name = unique("kz");
    let t = target(&h, &name);
    // kazoo holds: we are busy; it releases: we get it.
    let mut k = kazoo(&py, &h, &path_of(&name), "lock", 1, 10.0);
    assert_eq!(k.outcome(), "held");
    let e = Lock::acquire(&t, &opts(Some(Duration::ZERO))).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy);
    assert!(e.to_string().contains("kazoo-test"), "{e}");
    let waiter = {
        let t = t.clone();
        std::thread::spawn(move || Lock::acquire(&t, &opts(Some(Duration::from_secs(20)))))
    };
    // Our waiter queues behind kazoo's node: kazoo's release must wake it.
    await_waiting(&t, 1, Duration::from_secs(10));
    k.release();
    let ours = waiter.join().unwrap().unwrap();
    // We hold: kazoo is busy (try-once and with a timeout), and sees our record.
    let mut k2 = kazoo(&py, &h, &path_of(&name), "lock", 1, 0.0);
    assert_eq!(k2.outcome(), "busy");
    k2.release();
    let mut k3 = kazoo(&py, &h, &path_of(&name), "lock", 1, 20.0);
    // kazoo queues behind us (its contender node exists): our release must wake it.
    await_waiting(&t, 1, Duration::from_secs(20));
    ours.release().unwrap();
    assert_eq!(k3.outcome(), "held");
    k3.release();
}

#[test]
fn kazoo_contenders_show_our_record() {
    let (Some(h), Some(py)) = (zkhosts(), need_venv_python()) else {
        return;
    };
    let name = unique("kzc");
    let t = target(&h, &name);
    let mut o = opts(None);
    o.holder = Some("ours-text".into());
    let ours = Lock::acquire(&t, &o).unwrap();
    let mut k = kazoo(&py, &h, &path_of(&name), "lock", 1, 20.0);
    // kazoo waits behind our node (its contender exists), then gets the lock on our release.
    await_waiting(&t, 1, Duration::from_secs(20));
    ours.release().unwrap();
    assert_eq!(k.outcome(), "held");
    let c = k.line();
    assert!(c.starts_with("contenders:"), "{c}");
    k.release();
}

#[test]
fn kazoo_read_write_locks_mix_with_ours() {
    let (Some(h), Some(py)) = (zkhosts(), need_venv_python()) else {
        return;
    };
    let name = unique("kzrw");
    let t = target(&h, &name);
    let mut shared = opts(Some(Duration::ZERO));
    shared.shared = true;
    // kazoo ReadLock + our read lock together; our writer waits.
    let mut kr = kazoo(&py, &h, &path_of(&name), "rlock", 1, 10.0);
    assert_eq!(kr.outcome(), "held");
    let ours_r = Lock::acquire(&t, &shared).unwrap();
    assert_eq!(
        Lock::acquire(&t, &opts(Some(Duration::ZERO)))
            .unwrap_err()
            .kind(),
        ErrorKind::Busy
    );
    // kazoo WriteLock waits for both readers.
    let mut kw = kazoo(&py, &h, &path_of(&name), "wlock", 1, 0.0);
    assert_eq!(kw.outcome(), "busy");
    kw.release();
    kr.release();
    ours_r.release().unwrap();
    // kazoo WriteLock holds: our reader is busy.
    let mut kw = kazoo(&py, &h, &path_of(&name), "wlock", 1, 10.0);
    assert_eq!(kw.outcome(), "held");
    assert_eq!(
        Lock::acquire(&t, &shared).unwrap_err().kind(),
        ErrorKind::Busy
    );
    kw.release();
    // Our writer holds: kazoo ReadLock is busy.
    let w = Lock::acquire(&t, &opts(Some(Duration::ZERO))).unwrap();
    let mut kr = kazoo(&py, &h, &path_of(&name), "rlock", 1, 0.0);
    assert_eq!(kr.outcome(), "busy");
    kr.release();
    w.release().unwrap();
}

#[test]
fn kazoo_semaphore_shares_leases_with_ours() {
    let (Some(h), Some(py)) = (zkhosts(), need_venv_python()) else {
        return;
    };
    let name = unique("kzsem");
    let t = target(&h, &name);
    let mut o = opts(Some(Duration::ZERO));
    o.limit = 2;
    let mut k = kazoo(&py, &h, &path_of(&name), "sem", 2, 10.0);
    assert_eq!(k.outcome(), "held");
    let ours = Lock::acquire(&t, &o).unwrap();
    // Both leases taken: kazoo and we are busy.
    assert_eq!(Lock::acquire(&t, &o).unwrap_err().kind(), ErrorKind::Busy);
    let mut k2 = kazoo(&py, &h, &path_of(&name), "sem", 2, 0.0);
    assert_eq!(k2.outcome(), "busy");
    k2.release();
    let st = lockfn::status(&t).unwrap();
    assert_eq!((st.limit, st.available), (Some(2), Some(0)), "{st:?}");
    k.release();
    let second = Lock::acquire(&t, &o).unwrap();
    // A kazoo Semaphore with other max_leases refuses, as we do.
    let mut k3 = kazoo(&py, &h, &path_of(&name), "sem", 5, 0.0);
    assert!(k3.outcome().starts_with("error:"));
    k3.release();
    ours.release().unwrap();
    second.release().unwrap();
}

#[test]
fn lockpick_lock_unlock_against_ours() {
    let (Some(h), Some(py)) = (zkhosts(), need_venv_python()) else {
        return;
    };
    let lockpick = py.with_file_name("lockpick");
    let name = unique("lp");
    let t = target(&h, &name);
    // lockpick (chroot /lockfn-test) takes a persistent lock and prints its node.
    let out = Command::new(&py)
        .args([
            lockpick.to_str().unwrap(),
            "-s",
            &h,
            "-c",
            "/lockfn-test",
            "lock",
            &format!("/{name}"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let node = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(node.contains("__lock__"), "{node:?}");
    assert_eq!(
        Lock::acquire(&t, &opts(Some(Duration::ZERO)))
            .unwrap_err()
            .kind(),
        ErrorKind::Busy
    );
    // release_named without force refuses lockpick's node (not ours); lockpick unlocks it.
    assert_eq!(
        lockfn::release_named(&t, false).unwrap_err().kind(),
        ErrorKind::NotHeld
    );
    let st = Command::new(&py)
        .args([
            lockpick.to_str().unwrap(),
            "-s",
            &h,
            "-c",
            "/lockfn-test",
            "unlock",
            &node,
        ])
        .status()
        .unwrap();
    assert!(st.success());
    let ours = Lock::acquire(&t, &opts(Some(Duration::ZERO))).unwrap();
    // While we hold, lockpick cannot lock (its retries: 1 × 1 s).
    let out = Command::new(&py)
        .args([
            lockpick.to_str().unwrap(),
            "-s",
            &h,
            "-c",
            "/lockfn-test",
            "-r",
            "1",
            "-p",
            "1",
            "lock",
            &format!("/{name}"),
        ])
        .output()
        .unwrap();
    assert!(
        !out.status.success() || out.stdout.is_empty(),
        "lockpick got it while we held it"
    );
    ours.release().unwrap();
    // lockpick's failed attempt left a persistent contender behind: remove it by force.
    let _ = lockfn::release_named(&t, true);
}

#[test]
fn lockpick_rlock_wlock_against_ours() {
    let (Some(h), Some(py)) = (zkhosts(), need_venv_python()) else {
        return;
    };
    let lockpick = py.with_file_name("lockpick");
    let name = unique("lprw");
    let t = target(&h, &name);
    let lp = |args: &[&str]| {
        let mut a = vec![
            lockpick.to_str().unwrap(),
            "-s",
            &h,
            "-c",
            "/lockfn-test",
            "-r",
            "1",
            "-p",
            "1",
        ];
        a.extend_from_slice(args);
        Command::new(&py).args(&a).output().unwrap()
    };
    let path = format!("/{name}");
    // lockpick's read lock: our read lock shares it, our write lock waits.
    let out = lp(&["rlock", &path]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rnode = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(rnode.contains("__rlock__"), "{rnode:?}");
    let mut shared = opts(Some(Duration::ZERO));
    shared.shared = true;
    let r = Lock::acquire(&t, &shared).unwrap();
    assert_eq!(
        Lock::acquire(&t, &opts(Some(Duration::ZERO)))
            .unwrap_err()
            .kind(),
        ErrorKind::Busy
    );
    r.release().unwrap();
    assert!(lp(&["unlock", &rnode]).status.success());
    // lockpick's write lock: our read lock waits.
    let out = lp(&["wlock", &path]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let wnode = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(wnode.contains("__lock__"), "{wnode:?}");
    assert_eq!(
        Lock::acquire(&t, &shared).unwrap_err().kind(),
        ErrorKind::Busy
    );
    assert!(lp(&["unlock", &wnode]).status.success());
    Lock::acquire(&t, &shared).unwrap().release().unwrap();
}

#[test]
fn password_in_a_url_argument_is_hidden_from_ps() {
    let Some(hosts) = zkhosts() else { return };
    let first = hosts.split(',').next().unwrap_or_default().to_string();
    let secret_arg = format!("zk://bob:topsecret@{first}/{}", unique("scrub"));
    let mut k = Command::new(env!("CARGO_BIN_EXE_lockfn"))
        .args(["run", "-w", "30", &secret_arg, "--", "sleep", "60"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let masked = format!("zk://bob:*********@{first}/");
    let mut text = String::new();
    let done = await_until(Duration::from_secs(20), || {
        text = std::fs::read(format!("/proc/{}/cmdline", k.id()))
            .map(|c| String::from_utf8_lossy(&c).into_owned())
            .unwrap_or_default();
        text.contains(&masked)
    });
    let _ = k.kill();
    let _ = k.wait();
    assert!(done, "the password was not masked: {text}");
    assert!(!text.contains("topsecret"), "{text}");
}
