//! `lockfn run` and signals: a storm of forwarded signals never delays renewals or loss checks,
//! and signals ignored when lockfn starts (nohup's SIGHUP, a background job's SIGINT) stay
//! ignored. zk and consul need ZKHOSTS / CONSUL_HTTP_ADDR (tests/run.sh starts both); with
//! LOCKFN_TEST_REQUIRE_SERVERS=1 a missing server fails the test, otherwise it is skipped.
//! pmxcfs runs on the FUSE emulator (tests/pmxcfs/emu.sh) with a 4 s TTL, and a contender
//! from another "node" whose unlock requests would expire the lock after a missed refresh.

#[path = "common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

const LOCKFN: &str = env!("CARGO_BIN_EXE_lockfn");

struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("lockfn-sig-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("temp dir");
        Dir(d)
    }
    fn path(&self, f: &str) -> PathBuf {
        self.0.join(f)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn name(tag: &str) -> String {
    format!("sig-{}-{tag}", std::process::id())
}

/// The command run under the lock: counts SIGUSR1s into DIR/usr1, says it started, runs until
/// DIR/stop exists (at most 60 s), exits `code`.
fn script(dir: &Dir, code: u8) -> String {
    format!(
        "trap 'echo x >>{d}/usr1' USR1; touch {d}/started; i=0; \
         while [ ! -e {d}/stop ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done; exit {code}",
        d = dir.0.display()
    )
}

/// `lockfn [pre...] run [args...] TARGET -- sh -c SCRIPT`, with `ignore` set to SIG_IGN before
/// exec (what nohup, or a shell for a background job, does).
fn lockfn_run(target: &str, args: &[&str], cmd: &str, ignore: &[i32], verbose: bool) -> Child {
    let mut c = Command::new(LOCKFN);
    if verbose {
        c.arg("-v");
    }
    c.arg("run")
        .args(args)
        .arg(target)
        .args(["--", "sh", "-c", cmd])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let ignore = ignore.to_vec();
    unsafe {
        c.pre_exec(move || {
            for &s in &ignore {
                libc::signal(s, libc::SIG_IGN);
            }
            Ok(())
        });
    }
    c.spawn().expect("start lockfn run")
}

/// Wait until `cond` holds (polling every 20 ms), at most `secs`.
fn await_true(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(
            Instant::now() < end,
            "timed out after {secs} s waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Wait for `child` to exit, at most `secs` (then kill it and fail).
fn exit_within(child: &mut Child, secs: u64, what: &str) -> ExitStatus {
    let end = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            return s;
        }
        if Instant::now() >= end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: lockfn run did not exit within {secs} s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stderr_of(child: &mut Child) -> String {
    let mut s = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut s);
    }
    s
}

/// SIGUSR1 to `pid` every 0.5 s until dropped.
struct Storm {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<u32>>,
}

impl Storm {
    fn start(pid: u32) -> Storm {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut sent = 0;
            while !s.load(Ordering::SeqCst) {
                unsafe { libc::kill(pid as i32, libc::SIGUSR1) };
                sent += 1;
                std::thread::sleep(Duration::from_millis(500));
            }
            sent
        });
        Storm {
            stop,
            thread: Some(thread),
        }
    }
    fn end(mut self) -> u32 {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().map_or(0, |t| t.join().unwrap_or(0))
    }
}

impl Drop for Storm {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn held_by(target: &str, pid: u32) -> bool {
    let t = lockfn::Target::parse(target).expect("target");
    lockfn::status(&t)
        .map(|st| st.held && st.holders.iter().any(|h| h.record.pid as i64 == pid as i64))
        .unwrap_or(false)
}

fn lines(p: &Path) -> usize {
    std::fs::read_to_string(p).map_or(0, |s| s.lines().count())
}

/// Under SIGUSR1 every 0.5 s for `hold` (longer than two renewal periods): the lock stays
/// ours the whole time (a missed renewal would let the service end it), every signal reaches
/// the command, and `lockfn run` ends with the command's exit 0.
fn storm_keeps_the_lock(target: &str, args: &[&str], hold: Duration) {
    storm_keeps_the_lock_with(target, args, hold, || ());
}

/// [`storm_keeps_the_lock`], with `started` called once the command runs under the lock.
fn storm_keeps_the_lock_with(target: &str, args: &[&str], hold: Duration, started: impl FnOnce()) {
    let dir = Dir::new(&target.replace([':', '/'], "_"));
    let mut run = lockfn_run(target, args, &script(&dir, 0), &[], false);
    let pid = run.id();
    await_true(30, "the command to start", || dir.path("started").exists());
    started();
    let storm = Storm::start(pid);
    let end = Instant::now() + hold;
    while Instant::now() < end {
        assert!(
            run.try_wait().expect("try_wait").is_none(),
            "lockfn run ended during the storm: {}",
            stderr_of(&mut run)
        );
        assert!(
            held_by(target, pid),
            "{target} no longer held by lockfn run (pid {pid}) during the signal storm"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let sent = storm.end();
    std::fs::write(dir.path("stop"), "").expect("stop file");
    let st = exit_within(&mut run, 10, "stop");
    let err = stderr_of(&mut run);
    assert_eq!(st.code(), Some(0), "lockfn run: {st:?}: {err}");
    // Every SIGUSR1 sent was forwarded (dash runs a trap once per signal arrival; two that
    // arrive within one `sleep 0.05` may merge, so allow a little).
    let got = lines(&dir.path("usr1")) as u32;
    assert!(
        got + 3 >= sent && got > 0,
        "forwarded {got} of {sent}: {err}"
    );
}

/// Under the same storm, a loss (an operator's forced release) stops the command within the
/// documented latency: checks run on their deadlines, whatever wakes the supervisor.
fn storm_sees_a_loss(target: &str, args: &[&str]) {
    let dir = Dir::new(&format!("loss-{}", target.replace([':', '/'], "_")));
    let mut run = lockfn_run(target, args, &script(&dir, 0), &[], false);
    let pid = run.id();
    await_true(30, "the command to start", || dir.path("started").exists());
    let _storm = Storm::start(pid);
    await_true(10, "lockfn run to hold the lock", || held_by(target, pid));
    // Long enough for several check periods to pass under the storm.
    std::thread::sleep(Duration::from_millis(2500));
    let t = lockfn::Target::parse(target).expect("target");
    let t0 = Instant::now();
    lockfn::release_named(&t, true).expect("forced release");
    let st = exit_within(&mut run, 15, "loss");
    let took = t0.elapsed();
    let err = stderr_of(&mut run);
    assert_eq!(
        st.code(),
        Some(75),
        "lockfn run after the loss: {st:?}: {err}"
    );
    assert!(
        took < Duration::from_secs(4),
        "loss noticed after {took:?} under the storm: {err}"
    );
}

#[test]
fn signal_storm_sem() {
    // Nothing to renew on sem; the loss check (every second) must still run.
    storm_keeps_the_lock(
        &format!("sem:{}", name("storm")),
        &[],
        Duration::from_secs(3),
    );
    storm_sees_a_loss(&format!("sem:{}", name("storm-loss")), &[]);
}

#[test]
fn signal_storm_zk() {
    if !common::server("ZKHOSTS") {
        return;
    }
    // Session timeout 10 s: renewal (verification) every 3.3 s; 8 s is more than two.
    let args = ["--ttl", "10"];
    storm_keeps_the_lock(
        &format!("zk:{}", name("storm")),
        &args,
        Duration::from_secs(8),
    );
    storm_sees_a_loss(&format!("zk:{}", name("storm-loss")), &args);
}

#[test]
fn signal_storm_consul() {
    if !common::server("CONSUL_HTTP_ADDR") {
        return;
    }
    // TTL 10 s: renewal every 5 s; Consul ends an unrenewed session after 2 x TTL, so 22 s
    // under the storm fails unless the renewals happen.
    let args = ["--ttl", "10"];
    storm_keeps_the_lock(
        &format!("consul:{}", name("storm")),
        &args,
        Duration::from_secs(22),
    );
    storm_sees_a_loss(&format!("consul:{}", name("storm-loss")), &args);
}

#[test]
fn signal_storm_pmxcfs() {
    if !common::fuse_available() {
        common::require("/dev/fuse and root (the pmxcfs emulator)");
        return;
    }
    // pmxcfs (the emulator) expires a lock 4 s after its last refresh, on a contender's unlock
    // request; lockfn is told so and refreshes every 2 s. 10 s under the storm is more than
    // two renewal periods and two TTLs: a refresh missed for 4 s hands the lock over.
    let dir = Dir::new("pmxcfs-emu");
    common::emu("start", &dir.0, 4);
    struct Stop<'a>(&'a Dir);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            common::emu("stop", &self.0 .0, 4);
        }
    }
    let _stop = Stop(&dir);
    std::env::set_var("LOCKFN_PMXCFS_DIR", common::emu_lockdir(&dir.0));
    std::env::set_var("LOCKFN_PMXLOCK_DIR", dir.path("flock"));
    std::env::set_var("LOCKFN_RUN_DIR", dir.path("run"));
    std::env::set_var("LOCKFN_PMXCFS_TTL", "4");
    let target = format!("pmxcfs:{}", name("storm"));
    // The contender: its own node-local flock and records (another node), waiting from the
    // moment our command runs.
    let mut contender = None;
    storm_keeps_the_lock_with(&target, &[], Duration::from_secs(10), || {
        contender = Some(
            Command::new(LOCKFN)
                .args(["run", "-w", "60", &target, "--", "true"])
                .env("LOCKFN_PMXLOCK_DIR", dir.path("flock-node2"))
                .env("LOCKFN_RUN_DIR", dir.path("run-node2"))
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("contender"),
        );
    });
    // Released at the end: the contender gets it then.
    let mut contender = contender.expect("the contender started");
    let st = exit_within(&mut contender, 20, "contender");
    assert_eq!(st.code(), Some(0));
    storm_sees_a_loss(&format!("pmxcfs:{}", name("storm-loss")), &[]);
}

/// nohup: SIGHUP (and a background job's SIGINT) ignored before exec stay ignored: `kill -HUP`
/// and `kill -INT` neither stop the command nor lockfn run, which exits with the command's
/// code; signals not ignored are still forwarded.
#[test]
fn ignored_signals_stay_ignored_while_the_command_runs() {
    let dir = Dir::new("nohup");
    let target = format!("sem:{}", name("nohup"));
    let mut run = lockfn_run(
        &target,
        &[],
        &script(&dir, 7),
        &[libc::SIGHUP, libc::SIGINT],
        false,
    );
    let pid = run.id() as i32;
    await_true(30, "the command to start", || dir.path("started").exists());
    unsafe {
        libc::kill(pid, libc::SIGHUP);
        libc::kill(pid, libc::SIGINT);
    }
    // SIGUSR1 after them: once the command has it, lockfn has handled the two before.
    unsafe { libc::kill(pid, libc::SIGUSR1) };
    let mut ended = None;
    await_true(10, "the forwarded SIGUSR1", || {
        ended = run.try_wait().expect("try_wait");
        lines(&dir.path("usr1")) > 0 || ended.is_some()
    });
    assert!(
        ended.is_none(),
        "lockfn run ended after an ignored SIGHUP/SIGINT: {}",
        stderr_of(&mut run)
    );
    std::fs::write(dir.path("stop"), "").expect("stop file");
    let st = exit_within(&mut run, 10, "stop");
    let err = stderr_of(&mut run);
    assert_eq!(
        st.code(),
        Some(7),
        "{st:?} (signal {:?}): {err}",
        st.signal()
    );
}

/// A waiting `lockfn run` with SIGHUP ignored keeps waiting through `kill -HUP`; SIGTERM
/// still ends the wait at once.
#[test]
fn ignored_sighup_does_not_cancel_a_wait() {
    let dir = Dir::new("nohup-wait");
    let target = format!("sem:{}", name("nohup-wait"));
    let mut holder = lockfn_run(&target, &[], &script(&dir, 0), &[], false);
    await_true(30, "the holder's command to start", || {
        dir.path("started").exists()
    });
    let mut waiter = lockfn_run(&target, &["-w", "60"], "true", &[libc::SIGHUP], true);
    // Await the waiter's "acquiring" log line: its signal handling is in place then.
    let stderr = waiter.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("acquiring") {
                let _ = tx.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    rx.recv_timeout(Duration::from_secs(30))
        .expect("the waiter never logged that it is acquiring");
    unsafe { libc::kill(waiter.id() as i32, libc::SIGHUP) };
    // Nothing to await for a signal that must change nothing: a cancelled wait ends at once
    // (the semaphore wait is interrupted), so 1 s without an exit shows it kept waiting.
    let end = Instant::now() + Duration::from_secs(1);
    while Instant::now() < end {
        assert!(
            waiter.try_wait().expect("try_wait").is_none(),
            "the waiter ended after an ignored SIGHUP"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let t0 = Instant::now();
    unsafe { libc::kill(waiter.id() as i32, libc::SIGTERM) };
    let st = exit_within(&mut waiter, 10, "SIGTERM");
    let log = reader.join().unwrap_or_default();
    assert_eq!(st.code(), Some(128 + libc::SIGTERM), "{st:?}: {log}");
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "SIGTERM took {:?}",
        t0.elapsed()
    );
    assert!(log.contains("canceled by SIGTERM"), "{log}");
    std::fs::write(dir.path("stop"), "").expect("stop file");
    let st = exit_within(&mut holder, 10, "holder stop");
    assert_eq!(st.code(), Some(0));
}
