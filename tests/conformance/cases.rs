//! The cases, each written once for every service.

use crate::common;
use crate::services::Svc;
use lockfn::{ErrorKind, Lock, Options, Target};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

fn opts(timeout: Option<f64>) -> Options {
    let mut o = Options::default();
    o.timeout = timeout.map(Duration::from_secs_f64);
    o
}

fn acquire(t: &Target, timeout: Option<f64>) -> Lock {
    Lock::acquire(t, &opts(timeout)).unwrap_or_else(|e| panic!("acquire {t}: {e}"))
}

/// Who is inside, and the most that ever were at once.
#[derive(Default)]
struct Inside {
    now: AtomicUsize,
    most: AtomicUsize,
    entries: AtomicUsize,
}

impl Inside {
    fn enter(&self) {
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(n, Ordering::SeqCst);
        self.entries.fetch_add(1, Ordering::SeqCst);
    }
    fn leave(&self) {
        self.now.fetch_sub(1, Ordering::SeqCst);
    }
}

/// 4 threads × 15 sections: never two inside.
pub fn exclusion(svc: &Svc) {
    let t = svc.target("excl");
    let inside = Arc::new(Inside::default());
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (t, inside) = (t.clone(), inside.clone());
            std::thread::spawn(move || {
                for _ in 0..15 {
                    let l = acquire(&t, Some(60.0));
                    inside.enter();
                    std::thread::sleep(Duration::from_millis(1));
                    inside.leave();
                    l.release().unwrap();
                }
            })
        })
        .collect();
    for th in threads {
        th.join().unwrap();
    }
    assert_eq!(inside.entries.load(Ordering::SeqCst), 60);
    assert_eq!(
        inside.most.load(Ordering::SeqCst),
        1,
        "{}: two inside",
        svc.service
    );
}

/// `limit 3`: never more than 3 inside, and 3 together; a 4th waits.
pub fn limit_3(svc: &Svc) {
    let t = svc.target("limit");
    let mut o = opts(Some(30.0));
    o.limit = 3;
    if !svc.limit {
        let e = Lock::acquire(&t, &o).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Invalid, "{e}");
        return;
    }
    let held: Vec<Lock> = (0..3).map(|_| Lock::acquire(&t, &o).unwrap()).collect();
    let mut once = o.clone();
    once.timeout = Some(Duration::ZERO);
    let e = Lock::acquire(&t, &once).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy, "a 4th holder: {e}");
    let st = lockfn::status(&t).unwrap();
    assert!(st.held);
    assert_eq!(st.holders.len(), 3, "{st:?}");
    for l in held {
        l.release().unwrap();
    }
    // 6 threads: at most 3 inside, and 3 together at least once.
    let inside = Arc::new(Inside::default());
    let all_in = Arc::new(Barrier::new(3));
    let threads: Vec<_> = (0..6)
        .map(|_| {
            let (t, o, inside, all_in) = (t.clone(), o.clone(), inside.clone(), all_in.clone());
            std::thread::spawn(move || {
                let l = Lock::acquire(&t, &o).unwrap();
                inside.enter();
                // The first three meet here (then the barrier lets the next three meet).
                all_in.wait();
                inside.leave();
                l.release().unwrap();
            })
        })
        .collect();
    for th in threads {
        th.join().unwrap();
    }
    assert_eq!(inside.most.load(Ordering::SeqCst), 3);
}

/// `shared`: many readers together, a writer excluded by them (where the service has it).
pub fn shared(svc: &Svc) {
    let t = svc.target("rw");
    let mut r = opts(Some(0.0));
    r.shared = true;
    if !svc.shared {
        let e = Lock::acquire(&t, &r).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Invalid, "{e}");
        return;
    }
    let readers: Vec<Lock> = (0..3).map(|_| Lock::acquire(&t, &r).unwrap()).collect();
    let e = Lock::acquire(&t, &opts(Some(0.0))).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy, "writer while readers hold: {e}");
    for l in readers {
        l.release().unwrap();
    }
    let w = acquire(&t, Some(0.0));
    assert_eq!(
        Lock::acquire(&t, &r).unwrap_err().kind(),
        ErrorKind::Busy,
        "reader while the writer holds"
    );
    w.release().unwrap();
}

/// A wait with a timeout ends with Busy after about that long.
pub fn timeout(svc: &Svc) {
    let t = svc.target("timeout");
    let held = acquire(&t, Some(0.0));
    let t0 = Instant::now();
    let e = Lock::acquire(&t, &opts(Some(0.5))).unwrap_err();
    let el = t0.elapsed();
    assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
    assert!(
        el >= Duration::from_millis(450) && el < Duration::from_secs(3),
        "{}: waited {el:?} for 0.5 s",
        svc.service
    );
    held.release().unwrap();
}

/// Try-once answers Busy at once; free, it takes the lock.
pub fn try_once(svc: &Svc) {
    let t = svc.target("once");
    let held = acquire(&t, Some(0.0));
    let t0 = Instant::now();
    let e = Lock::acquire(&t, &opts(Some(0.0))).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    held.release().unwrap();
    acquire(&t, Some(0.0)).release().unwrap();
}

/// A waiter whose cancel fd becomes readable stops with Canceled and takes nothing.
pub fn cancel_fd(svc: &Svc) {
    let t = svc.target("cancel");
    let held = acquire(&t, Some(0.0));
    let mut fds = [0; 2];
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let (rd, wr) = (fds[0], fds[1]);
    let waiter = {
        let t = t.clone();
        std::thread::spawn(move || {
            let mut o = opts(None);
            o.cancel_fd = Some(rd);
            let t0 = Instant::now();
            (Lock::acquire(&t, &o).map(|_| ()), t0)
        })
    };
    // Let it start waiting (a wait that starts after the write is canceled at once too).
    std::thread::sleep(Duration::from_millis(200));
    let written = Instant::now();
    assert_eq!(unsafe { libc::write(wr, b"x".as_ptr().cast(), 1) }, 1);
    let (r, _) = waiter.join().unwrap();
    let e = r.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Canceled, "{e}");
    assert!(
        written.elapsed() < Duration::from_secs(2),
        "{:?}",
        written.elapsed()
    );
    unsafe {
        libc::close(rd);
        libc::close(wr);
    }
    let st = lockfn::status(&t).unwrap();
    assert!(st.held);
    assert!(
        st.holders.len() <= 1,
        "the canceled waiter holds nothing: {st:?}"
    );
    held.release().unwrap();
    acquire(&t, Some(0.0)).release().unwrap();
}

/// A holder killed with SIGKILL does not block forever: the next waiter gets the lock
/// within the service's documented bound.
pub fn kill9_recovery(svc: &Svc) {
    let t = svc.target("kill9");
    let mut holder = Command::new(env!("CARGO_BIN_EXE_lockfn"))
        .arg("run")
        .args(svc.kill9_flags)
        .arg(t.canonical())
        .args(["--", "sleep", "600"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let pid = holder.id() as i32;
    assert!(
        common::await_until(Duration::from_secs(20), || lockfn::status(&t)
            .is_ok_and(|s| s.holders.iter().any(|h| h.record.pid == pid))),
        "the holder got the lock"
    );
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let _ = holder.wait();
    let t0 = Instant::now();
    let l = Lock::acquire(&t, &opts(Some(svc.kill9_bound.as_secs_f64())))
        .unwrap_or_else(|e| panic!("{}: not recovered: {e}", svc.service));
    eprintln!(
        "{}: recovered {:?} after kill -9",
        svc.service,
        t0.elapsed()
    );
    l.release().unwrap();
}

/// An operator's forced release: the holder learns the loss at its next update.
pub fn lost_lock(svc: &Svc) {
    let t = svc.target("lost");
    let l = acquire(&t, Some(0.0));
    (svc.lose)(&t);
    let e = l.update().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Lost, "{}: {e}", svc.service);
    let e = l.release().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Lost, "{e}");
}

/// Fencing tokens grow with every acquisition of one lock.
pub fn tokens_grow(svc: &Svc) {
    let t = svc.target("tokens");
    let mut last = 0;
    for _ in 0..4 {
        let l = acquire(&t, Some(5.0));
        assert!(
            l.token() > last,
            "{}: token {} after {last}",
            svc.service,
            l.token()
        );
        last = l.token();
        l.release().unwrap();
    }
}

/// status and list, as JSON: the shape the CLI and the bindings print.
pub fn status_and_list_shape(svc: &Svc) {
    let t = svc.target("shape");
    let mut o = opts(Some(0.0));
    o.holder = Some("conformance".into());
    let l = Lock::acquire(&t, &o).unwrap();
    let v = serde_json::to_value(lockfn::status(&t).unwrap()).unwrap();
    assert_eq!(v["target"], t.canonical());
    assert_eq!(v["service"], svc.service);
    assert_eq!(v["held"], true);
    let h = &v["holders"][0];
    assert_eq!(h["pid"], std::process::id());
    if svc.records {
        assert_eq!(h["token"], l.token());
        assert_eq!(h["holder"], "conformance");
    }
    assert_eq!(h["state"], "alive");
    assert!(h["host"].is_string() && h["since"].is_number() && h["boot_id"].is_string());
    let canonical = t.canonical();
    let prefix = svc.list_prefix();
    let listed = lockfn::list(prefix).unwrap();
    assert!(
        listed.iter().any(|s| s.target == canonical && s.held),
        "{prefix} lists {canonical}: {listed:?}"
    );
    l.release().unwrap();
    let v = serde_json::to_value(lockfn::status(&t).unwrap()).unwrap();
    assert_eq!(v["held"], false);
    assert_eq!(v["holders"].as_array().map(Vec::len), Some(0));
}

/// A persistent lock outlives its handle and is ended by name.
pub fn persist_and_release(svc: &Svc) {
    let t = svc.target("persist");
    let mut o = opts(Some(0.0));
    o.persist = true;
    if !svc.persist {
        let e = Lock::acquire(&t, &o).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Invalid, "{e}");
        return;
    }
    Lock::acquire(&t, &o).unwrap().detach().unwrap();
    let st = lockfn::status(&t).unwrap();
    assert!(st.held);
    assert!(st.holders.iter().any(|h| h.record.persist), "{st:?}");
    assert_eq!(
        Lock::acquire(&t, &opts(Some(0.0))).unwrap_err().kind(),
        ErrorKind::Busy
    );
    lockfn::update_named(&t).unwrap();
    assert_eq!(lockfn::release_named(&t, false).unwrap(), 1);
    assert!(!lockfn::status(&t).unwrap().held);
    assert_eq!(
        lockfn::release_named(&t, false).unwrap_err().kind(),
        ErrorKind::NotHeld
    );
}

/// A child forked while the lock is held gets Forked from its handle; the parent's lock is
/// untouched.
pub fn fork_gives_eforked(svc: &Svc) {
    let t = svc.target("fork");
    let l = acquire(&t, Some(0.0));
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // The child: only async-signal-safe exits, whatever happens.
        let ok = l.is_forked()
            && l.update().is_err_and(|e| e.kind() == ErrorKind::Forked)
            && l.check().is_err_and(|e| e.kind() == ErrorKind::Forked);
        let ok = ok && l.release().is_err_and(|e| e.kind() == ErrorKind::Forked);
        unsafe { libc::_exit(if ok { 0 } else { 3 }) };
    }
    assert!(pid > 0);
    let mut status = 0;
    let deadline = Instant::now() + Duration::from_secs(5);
    let done = loop {
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            break true;
        }
        if Instant::now() >= deadline {
            unsafe { libc::kill(pid, libc::SIGKILL) };
            unsafe { libc::waitpid(pid, &mut status, 0) };
            break false;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(done, "{}: the child hung", svc.service);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "child: {status}"
    );
    l.update().unwrap();
    assert!(lockfn::status(&t).unwrap().held);
    l.release().unwrap();
}

/// `lockfn run` waiting for the lock: SIGTERM ends the wait at once (exit 143) and takes
/// nothing.
pub fn signal_cancels_a_waiting_run(svc: &Svc) {
    let t = svc.target("sigterm");
    let held = acquire(&t, Some(0.0));
    let mut waiter = Command::new(env!("CARGO_BIN_EXE_lockfn"))
        .args(["run", "-v", &t.canonical(), "--", "true"])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // `-v` says "acquiring" once its signal handling is in place and it starts to wait.
    let mut err = std::io::BufReader::new(waiter.stderr.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut err, &mut line).unwrap();
    assert!(line.contains("acquiring"), "{line}");
    let t0 = Instant::now();
    unsafe { libc::kill(waiter.id() as i32, libc::SIGTERM) };
    let st = loop {
        if let Some(st) = waiter.try_wait().unwrap() {
            break st;
        }
        if t0.elapsed() > Duration::from_secs(10) {
            let _ = waiter.kill();
            panic!("{}: a waiting lockfn run ignored SIGTERM", svc.service);
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    use std::os::unix::process::ExitStatusExt;
    assert!(
        st.code() == Some(143) || st.signal() == Some(libc::SIGTERM),
        "{}: {st:?}",
        svc.service
    );
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    let st = lockfn::status(&t).unwrap();
    assert!(
        st.holders.len() <= 1,
        "the canceled waiter holds nothing: {st:?}"
    );
    held.release().unwrap();
    acquire(&t, Some(0.0)).release().unwrap();
}
