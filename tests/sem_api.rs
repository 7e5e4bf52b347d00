//! The Rust API on the sem: backend: what the CLI and C tests don't reach directly.

use lockfn::{ErrorKind, Lock, Options, Target};
use std::time::{Duration, Instant};

fn target(tag: &str) -> Target {
    Target::parse(&format!("sem:api-{tag}-{}", std::process::id())).unwrap()
}

fn try_once() -> Options {
    let mut o = Options::default();
    o.timeout = Some(Duration::ZERO);
    o
}

fn cleanup(t: &Target) {
    let _ = lockfn::gc(&format!("sem:{}", t.name()));
}

#[test]
fn reentrant_acquisition_shares_the_lock_until_the_last_release() {
    let t = target("reent");
    let first = Lock::acquire(&t, &Options::default()).unwrap();
    // Not reentrant: the process itself is excluded like anyone else.
    let e = Lock::acquire(&t, &try_once()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy);
    let mut o = try_once();
    o.reentrant = true;
    let second = Lock::acquire(&t, &o).unwrap();
    assert_eq!(second.token(), first.token());
    first.release().unwrap();
    // still held through the second reference
    assert!(lockfn::status(&t).unwrap().held);
    second.release().unwrap();
    assert!(!lockfn::status(&t).unwrap().held);
    cleanup(&t);
}

#[test]
fn tokens_grow_with_every_acquisition() {
    let t = target("token");
    let mut last = 0;
    for _ in 0..5 {
        let l = Lock::acquire(&t, &try_once()).unwrap();
        assert!(l.token() > last);
        last = l.token();
        drop(l); // release on drop
    }
    cleanup(&t);
}

#[test]
fn a_forced_release_is_reported_as_lost() {
    let t = target("forced");
    let l = Lock::acquire(&t, &Options::default()).unwrap();
    l.update().unwrap();
    assert_eq!(
        lockfn::release_named(&t, false).unwrap_err().kind(),
        ErrorKind::NotHeld
    );
    assert_eq!(lockfn::release_named(&t, true).unwrap(), 1);
    assert_eq!(l.update().unwrap_err().kind(), ErrorKind::Lost);
    assert_eq!(l.check().unwrap_err().kind(), ErrorKind::Lost);
    // Releasing a lost lock posts nothing: the count stays at the limit.
    assert_eq!(l.release().unwrap_err().kind(), ErrorKind::Lost);
    let st = lockfn::status(&t).unwrap();
    assert_eq!(st.available, Some(1));
    cleanup(&t);
}

#[test]
fn limit_must_match_and_counts_slots() {
    let t = target("limit");
    let mut o = try_once();
    o.limit = 2;
    let a = Lock::acquire(&t, &o).unwrap();
    let b = Lock::acquire(&t, &o).unwrap();
    assert_eq!(Lock::acquire(&t, &o).unwrap_err().kind(), ErrorKind::Busy);
    let st = lockfn::status(&t).unwrap();
    assert_eq!(
        (st.limit, st.available, st.holders.len()),
        (Some(2), Some(0), 2)
    );
    o.limit = 3;
    let e = Lock::acquire(&t, &o).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Invalid);
    assert!(e.message().contains("limit 2"), "{e}");
    a.release().unwrap();
    b.release().unwrap();
    cleanup(&t);
}

#[test]
fn shared_is_refused_with_a_reason() {
    let t = target("shared");
    let mut o = try_once();
    o.shared = true;
    let e = Lock::acquire(&t, &o).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Invalid);
    assert!(e.message().contains("shared"));
}

#[test]
fn persistent_locks_survive_detach_and_end_by_name() {
    let t = target("persist");
    let mut o = try_once();
    o.persist = true;
    o.holder = Some("manual".into());
    Lock::acquire(&t, &o).unwrap().detach().unwrap();
    assert_eq!(
        Lock::acquire(&t, &try_once()).unwrap_err().kind(),
        ErrorKind::Busy
    );
    lockfn::update_named(&t).unwrap();
    assert_eq!(lockfn::release_named(&t, false).unwrap(), 1);
    Lock::acquire(&t, &try_once()).unwrap().release().unwrap();
    cleanup(&t);
}

#[test]
fn timeout_waits_and_cancel_fd_stops_the_wait() {
    let t = target("wait");
    let held = Lock::acquire(&t, &Options::default()).unwrap();
    let mut o = Options::default();
    o.timeout = Some(Duration::from_millis(300));
    let s = Instant::now();
    assert_eq!(Lock::acquire(&t, &o).unwrap_err().kind(), ErrorKind::Busy);
    assert!(s.elapsed() >= Duration::from_millis(295));
    let mut fds = [0; 2];
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let w = fds[1];
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(150));
        unsafe { libc::write(w, b"x".as_ptr() as *const libc::c_void, 1) };
    });
    let mut o = Options::default();
    o.cancel_fd = Some(fds[0]);
    let s = Instant::now();
    assert_eq!(
        Lock::acquire(&t, &o).unwrap_err().kind(),
        ErrorKind::Canceled
    );
    assert!(s.elapsed() < Duration::from_secs(1));
    writer.join().unwrap();
    held.release().unwrap();
    unsafe {
        libc::close(fds[0]);
        libc::close(fds[1]);
    }
    cleanup(&t);
}

#[test]
fn status_of_an_unknown_lock_is_free_and_invalid_names_are_refused() {
    let t = target("never");
    let st = lockfn::status(&t).unwrap();
    assert!(!st.held && st.holders.is_empty());
    assert_eq!(
        Lock::acquire_str("sem:a/b", &Options::default())
            .unwrap_err()
            .kind(),
        ErrorKind::Invalid
    );
    assert_eq!(
        lockfn::gc("sem:../x").unwrap_err().kind(),
        ErrorKind::Invalid
    );
}

/// Runs in a fresh process (see `fork_child_uses_its_own_pid_start_time_and_files`): forking
/// the multi-threaded test harness itself is not safe.
#[test]
fn fork_worker() {
    let Ok(name) = std::env::var("LOCKFN_SEM_FORK_WORKER") else {
        return;
    };
    let held_t = Target::parse(&format!("sem:{name}-held")).unwrap();
    let pooled_t = Target::parse(&format!("sem:{name}-pooled")).unwrap();
    // The parent: a lock it keeps, and one it used (its files stay open for reuse).
    let held = Lock::acquire(&held_t, &try_once()).unwrap();
    let parent_token = Lock::acquire(&pooled_t, &try_once()).unwrap().token();
    let parent = held.record().clone();
    // Start times count clock ticks (10 ms): let the child's differ from ours.
    std::thread::sleep(Duration::from_millis(50));
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let code = (|| {
            let me = std::process::id() as i32;
            // The parent's lock excludes the child like anyone else.
            match Lock::acquire(&held_t, &try_once()) {
                Err(e) if e.kind() == ErrorKind::Busy => {}
                _ => return 10,
            }
            // The child's record names the child: its own pid and start time, not the
            // parent's cached ones.
            let l = match Lock::acquire(&pooled_t, &try_once()) {
                Ok(l) => l,
                Err(_) => return 11,
            };
            let r = l.record().clone();
            if r.pid != me
                || r.start_time == parent.start_time
                || Some(r.start_time) != lockfn::holder::process_start_time(me)
            {
                return 12;
            }
            if l.token() <= parent_token || !r.is_own_process() {
                return 13;
            }
            // While the child holds it, the parent's kept files do not let it in.
            let st = lockfn::status(&pooled_t).unwrap();
            if st.holders.len() != 1 || st.holders[0].record.pid != me {
                return 14;
            }
            if l.release().is_err() {
                return 15;
            }
            held.forget();
            0
        })();
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    unsafe { libc::waitpid(pid, &mut status, 0) };
    println!("child {}", libc::WEXITSTATUS(status));
    // The parent is untouched: its lock, its record, and its kept files still work.
    held.update().unwrap();
    assert_eq!(held.record(), &parent);
    assert!(parent.is_own_process());
    let again = Lock::acquire(&pooled_t, &try_once()).unwrap();
    assert_eq!(again.record().pid, std::process::id() as i32);
    assert!(again.token() > parent_token + 1);
    again.release().unwrap();
    held.release().unwrap();
    println!("parent ok");
}

#[test]
fn fork_child_uses_its_own_pid_start_time_and_files() {
    let name = format!("api-fork-{}", std::process::id());
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "fork_worker",
            "--exact",
            "--nocapture",
            "--test-threads=1",
            "-q",
        ])
        .env("LOCKFN_SEM_FORK_WORKER", &name)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for suffix in ["held", "pooled"] {
        let _ = lockfn::gc(&format!("sem:{name}-{suffix}"));
    }
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("child 0"), "{text}");
    assert!(text.contains("parent ok"), "{text}");
}

#[test]
fn files_kept_open_between_acquisitions_are_not_reused_after_gc_removed_them() {
    let t = target("gc-kept");
    let first = Lock::acquire(&t, &try_once()).unwrap();
    let token = first.token();
    first.release().unwrap();
    // Idle: gc removes the record file and the semaphore this process still has open.
    assert!(lockfn::gc(&format!("sem:{}", t.name())).unwrap() >= 1);
    assert!(!std::path::Path::new(&format!("/dev/shm/sem.{}", t.name())).exists());
    let held = Lock::acquire(&t, &try_once()).unwrap();
    assert!(held.token() > token);
    // The lock is held on the semaphore that exists now: a new opener is excluded.
    assert!(std::path::Path::new(&format!("/dev/shm/sem.{}", t.name())).exists());
    assert_eq!(
        Lock::acquire(&t, &try_once()).unwrap_err().kind(),
        ErrorKind::Busy
    );
    assert_eq!(lockfn::status(&t).unwrap().available, Some(0));
    held.release().unwrap();
    cleanup(&t);
}

#[test]
fn threads_of_one_process_exclude_each_other_while_gc_runs() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    let t = target("threads");
    let inside = Arc::new(AtomicUsize::new(0));
    let tokens = Arc::new(Mutex::new(Vec::new()));
    let done = Arc::new(AtomicBool::new(false));
    // gc keeps removing the lock's files whenever they are idle, under the threads' feet.
    let gc = {
        let (done, prefix) = (done.clone(), format!("sem:{}", t.name()));
        std::thread::spawn(move || {
            let mut removed = 0;
            while !done.load(Ordering::SeqCst) {
                removed += lockfn::gc(&prefix).unwrap();
            }
            removed
        })
    };
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (t, inside, tokens) = (t.clone(), inside.clone(), tokens.clone());
            std::thread::spawn(move || {
                let mut o = Options::default();
                o.timeout = Some(Duration::from_secs(30));
                for _ in 0..300 {
                    let l = Lock::acquire(&t, &o).unwrap();
                    assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0, "two inside");
                    tokens.lock().unwrap().push(l.token());
                    std::hint::spin_loop();
                    inside.fetch_sub(1, Ordering::SeqCst);
                    l.release().unwrap();
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    done.store(true, Ordering::SeqCst);
    let removed = gc.join().unwrap();
    let tokens = tokens.lock().unwrap();
    assert_eq!(tokens.len(), 1200);
    if let Some(i) = tokens.windows(2).position(|w| w[0] >= w[1]) {
        let lo = i.saturating_sub(4);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros();
        panic!(
            "tokens must grow: at {i}: {:?} (now {now})",
            &tokens[lo..(i + 5).min(tokens.len())]
        );
    }
    println!("gc removed the idle lock {removed} times meanwhile");
    cleanup(&t);
}

#[test]
fn a_semaphore_replaced_under_its_users_is_noticed() {
    // `rm /dev/shm/sem.NAME` by hand (or a gc killed between its two unlinks) leaves the table
    // without the semaphore its users have mapped. The next opener that opens the name afresh
    // makes a new semaphore and pairs the table with it (under the table's mutex); whoever
    // holds or waits on the old one then learns it from the table (no syscall on the fast path,
    // so nothing is noticed before someone opens the name afresh).
    let t = target("replaced");
    let unlink = || {
        let c = std::ffi::CString::new(format!("/{}", t.name())).unwrap();
        assert_eq!(unsafe { libc::sem_unlink(c.as_ptr()) }, 0);
    };
    let old = Lock::acquire(&t, &try_once()).unwrap();
    unlink();
    // A fresh opener (the pair `old` uses is not in the pool): a new semaphore, free.
    let held = Lock::acquire(&t, &try_once()).unwrap();
    assert!(held.token() > old.token());
    assert_eq!(old.update().unwrap_err().kind(), ErrorKind::Lost);
    assert_eq!(old.release().unwrap_err().kind(), ErrorKind::Lost);
    assert_eq!(lockfn::status(&t).unwrap().available, Some(0));
    // A waiter on the current semaphore moves to the next one when it is replaced again.
    let waiter = {
        let t = t.clone();
        std::thread::spawn(move || {
            let mut o = Options::default();
            o.timeout = Some(Duration::from_secs(10));
            let l = Lock::acquire(&t, &o).unwrap();
            let token = l.token();
            l.release().unwrap();
            token
        })
    };
    // (the waiter is waiting once status shows... nothing: it records nothing until it has
    // the lock; give it time to start waiting, which only makes the test weaker if short)
    std::thread::sleep(Duration::from_millis(300));
    unlink();
    let third = {
        let t = t.clone();
        // A fresh opener from another thread's pool-less path: pairs the table anew.
        std::thread::spawn(move || Lock::acquire(&t, &try_once()).map(|l| l.token()))
            .join()
            .unwrap()
            .unwrap()
    };
    let s = Instant::now();
    let waited_token = waiter.join().unwrap();
    assert!(s.elapsed() < Duration::from_secs(5), "{:?}", s.elapsed());
    assert!(waited_token > third);
    assert_eq!(held.update().unwrap_err().kind(), ErrorKind::Lost);
    drop(held);
    cleanup(&t);
}
