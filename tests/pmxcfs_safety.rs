//! pmxcfs safety on the FUSE emulator (tests/pmxcfs/emu.sh): the failures seen on a real
//! pmxcfs, where `st_ino` is libfuse's node number (re-used for a directory re-made under the
//! same name while the old node is referenced, restarting at every pmxcfs start):
//! - a dead holder's directory expired and re-made by cfs_lock is never taken over, with a
//!   bystander descriptor keeping the node number, and after a pmxcfs restart;
//! - a holder stopped past expiry whose directory was re-made (same node number) reports the
//!   loss and never refreshes or removes the contender's directory;
//! - fencing tokens grow across acquisitions and pmxcfs restarts;
//! - a frozen pmxcfs: `-w 2` gives 69 within 3 s and leaves no directory; `-n` within 2.5 s;
//! - a child forked without exec does not keep its parent's node-local flock.
//!
//! Each test starts its own emulator (TTL 3 s) and tells lockfn that TTL
//! (`LOCKFN_PMXCFS_TTL`). The cfs_lock side is done here by hand, the way cfs_lock does it:
//! unlock requests `utime(0, 0)` until pmxcfs expires the lock (ENOENT), then `mkdir`.
//!
//! The same cases run on a real pmxcfs (by hand, never in CI: its source and binaries stay out
//! of the project) with `PMXCFS_REAL_CTL=/path/to/ctl.sh cargo test --test pmxcfs_safety`:
//! ctl.sh start|restart|freeze|thaw controls a `pmxcfs -l` on /etc/pve; the TTL is then
//! pmxcfs's own 120 s, so each expiry case takes about two minutes.

#[path = "common/mod.rs"]
mod common;

use common::{await_until, emu_sh, now_secs, require};
use std::ffi::CString;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The emulator's TTL in these tests, and what lockfn is told (120 on a real pmxcfs).
fn ttl() -> u64 {
    if real_ctl().is_some() {
        120
    } else {
        3
    }
}

/// A real pmxcfs's control script (see the module doc), if the tests run against one.
fn real_ctl() -> Option<PathBuf> {
    std::env::var_os("PMXCFS_REAL_CTL")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// One emulator (or the real pmxcfs) and the node-local directories of one "node", for one
/// test; lock names get the test's tag, so tests on one real pmxcfs do not meet.
struct Emu {
    dir: PathBuf,
    lockdir: PathBuf,
    tag: String,
}

impl Emu {
    fn start(test: &str) -> Option<Emu> {
        if !Path::new("/dev/fuse").exists() || unsafe { libc::geteuid() } != 0 {
            require("/dev/fuse and root (the pmxcfs emulator is a FUSE file system)");
            return None;
        }
        let dir = std::env::temp_dir().join(format!("lockfn-safety-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut emu = Emu {
            lockdir: PathBuf::new(),
            dir,
            tag: format!("{test}-{}", std::process::id()),
        };
        emu.run("start");
        if real_ctl().is_some() {
            emu.lockdir = PathBuf::from("/etc/pve/priv/lock");
            return Some(emu);
        }
        let env = std::fs::read_to_string(emu.dir.join("env")).unwrap();
        let lockdir = env
            .lines()
            .find_map(|l| l.strip_prefix("LOCKFN_PMXCFS_DIR="))
            .expect("emu.sh start writes LOCKFN_PMXCFS_DIR");
        emu.lockdir = PathBuf::from(lockdir);
        assert!(emu.lockdir.is_dir(), "{} is there", emu.lockdir.display());
        Some(emu)
    }

    fn run(&self, what: &str) {
        if let Some(ctl) = real_ctl() {
            let st = Command::new("bash")
                .arg(ctl)
                .arg(what)
                .status()
                .expect("bash");
            assert!(st.success(), "ctl.sh {what}");
            return;
        }
        let st = Command::new("bash")
            .arg(emu_sh())
            .args([what])
            .arg(&self.dir)
            .env("PMXEMU_TTL", ttl().to_string())
            .env("PMXEMU_WATCH_PID", std::process::id().to_string())
            .stdin(Stdio::null())
            .status()
            .expect("bash");
        assert!(st.success(), "emu.sh {what} {}", self.dir.display());
    }

    /// The lock name of this test for `short`.
    fn name(&self, short: &str) -> String {
        format!("{short}-{}", self.tag)
    }

    fn path(&self, short: &str) -> PathBuf {
        self.lockdir.join(self.name(short))
    }

    fn target(&self, short: &str) -> String {
        format!("pmxcfs:{}", self.name(short))
    }

    /// lockfn with this emulator's environment.
    fn lockfn(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_lockfn"));
        c.env("LOCKFN_PMXCFS_DIR", &self.lockdir)
            .env("LOCKFN_PMXLOCK_DIR", self.dir.join("flock"))
            .env("LOCKFN_RUN_DIR", self.dir.join("run"))
            .env("LOCKFN_PMXCFS_TTL", ttl().to_string())
            .env_remove("LOCKFN_PMXCFS_TOKEN_DIR")
            .stdin(Stdio::null());
        c
    }

    /// `lockfn run pmxcfs:NAME -- sleep 600`, in the background, once it holds the lock.
    fn holder(&self, short: &str) -> Child {
        let child = self
            .lockfn()
            .args(["run", &self.target(short), "--", "sleep", "600"])
            .spawn()
            .unwrap();
        let rec = self.dir.join("run/pmxcfs").join(self.name(short));
        await_until(Duration::from_secs(10), || {
            rec.exists() && self.path(short).is_dir()
        })
        .then_some(())
        .expect("the holder got the lock");
        child
    }
}

impl Drop for Emu {
    fn drop(&mut self) {
        if real_ctl().is_some() {
            // Leave the real pmxcfs running; remove what this test left (not the tokens:
            // they only grow).
            if let Ok(d) = std::fs::read_dir(&self.lockdir) {
                for e in d.filter_map(|e| e.ok()) {
                    if e.file_name().to_string_lossy().ends_with(&self.tag) {
                        let _ = std::fs::remove_dir(e.path());
                    }
                }
            }
            let _ = std::fs::remove_dir_all(&self.dir);
            return;
        }
        let _ = Command::new("bash")
            .arg(emu_sh())
            .arg("stop")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn utime(path: &Path, t: i64) -> std::io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    let ts = libc::timespec {
        tv_sec: t as libc::time_t,
        tv_nsec: 0,
    };
    let times = [ts, ts];
    if unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), 0) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// What cfs_lock does on EEXIST: an unlock request about once a second until pmxcfs expires
/// the lock (ENOENT), then mkdir. Bounded by `t`.
fn cfs_lock_remake(path: &Path, t: Duration) {
    let deadline = Instant::now() + t;
    loop {
        match utime(path, 0) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => break,
            Err(e) if e.raw_os_error() == Some(libc::EACCES) => {}
            r => panic!("unlock request on {}: {r:?}", path.display()),
        }
        assert!(
            Instant::now() < deadline,
            "pmxcfs never expired {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    std::fs::create_dir(path).unwrap();
}

fn stat(path: &Path) -> Option<(u64, i64)> {
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.ino(), m.mtime()))
}

fn kill(child: &mut Child, sig: i32) -> ExitStatus {
    unsafe { libc::kill(child.id() as i32, sig) };
    child.wait().unwrap()
}

/// A try with `lockfn run -w SECS` whose command proves it ran inside: the exit code
/// (1 on timeout) and how long it took.
fn try_run(emu: &Emu, short: &str, wait: &str) -> (Option<i32>, Duration) {
    let t0 = Instant::now();
    let mut child = emu
        .lockfn()
        .args(["run", "-w", wait, &emu.target(short), "--", "true"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Bounded: a lockfn that hangs (a frozen pmxcfs) is killed and reported as no exit code.
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return (st.code(), t0.elapsed());
        }
        if t0.elapsed() > Duration::from_secs(30) {
            kill(&mut child, libc::SIGKILL);
            return (None, t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn dead_holder_with_a_bystander_descriptor_then_cfs_lock_remake_is_not_taken_over() {
    let Some(emu) = Emu::start("bystander") else {
        return;
    };
    let p = emu.path("x");
    let mut holder = emu.holder("x");
    let before = stat(&p).unwrap();
    // A bystander keeps the kernel's reference on the node: pmxcfs hands its number out again.
    let _bystander = File::open(&p).unwrap();
    kill(&mut holder, libc::SIGKILL);
    cfs_lock_remake(&p, Duration::from_secs(ttl() + 10));
    let remade = stat(&p).unwrap();
    assert_eq!(
        remade.0, before.0,
        "the emulator re-uses the node number, as the real pmxcfs does"
    );
    assert!(remade.1 > before.1 + ttl() as i64, "a later incarnation");
    let (code, took) = try_run(&emu, "x", "2");
    assert_eq!(
        code,
        Some(1),
        "timed out waiting for cfs_lock's lock ({took:?})"
    );
    assert_eq!(stat(&p), Some(remade), "cfs_lock's directory untouched");
    // A gc does not touch it either.
    let st = emu.lockfn().args(["gc", "pmxcfs"]).status().unwrap();
    assert!(st.success());
    assert_eq!(stat(&p), Some(remade));
}

#[test]
fn dead_holder_then_pmxcfs_restart_then_cfs_lock_remake_is_not_taken_over() {
    let Some(emu) = Emu::start("restart") else {
        return;
    };
    let p = emu.path("r");
    let mut holder = emu.holder("r");
    let before = stat(&p).unwrap();
    kill(&mut holder, libc::SIGKILL);
    emu.run("restart");
    // Node numbers start again: the orphan, looked up first, gets the number it had before,
    // and a bystander keeps it for cfs_lock's new directory (as seen on the real pmxcfs: the
    // dead holder's record said 45, cfs_lock's new directory was 45).
    let _bystander = File::open(&p).unwrap();
    // pmxcfs starts the lock time anew at its start: the orphan expires TTL after it.
    cfs_lock_remake(&p, Duration::from_secs(ttl() + 10));
    let remade = stat(&p).unwrap();
    eprintln!(
        "node numbers: dead holder's {}, cfs_lock's {}",
        before.0, remade.0
    );
    if real_ctl().is_none() {
        assert_eq!(
            remade.0, before.0,
            "the emulator re-uses the number after a restart"
        );
    }
    let (code, _) = try_run(&emu, "r", "2");
    assert_eq!(code, Some(1), "waited, no takeover");
    assert_eq!(stat(&p), Some(remade), "cfs_lock's directory untouched");
}

#[test]
fn own_dead_holder_is_still_taken_over_at_once() {
    // The proof costs nothing in the common case: our dead holder's directory goes in < 1 s.
    let Some(emu) = Emu::start("takeover") else {
        return;
    };
    let p = emu.path("k");
    let mut holder = emu.holder("k");
    let bystander = File::open(&p).unwrap();
    kill(&mut holder, libc::SIGKILL);
    let (code, took) = try_run(&emu, "k", "5");
    assert_eq!(code, Some(0));
    assert!(took < Duration::from_secs(2), "took {took:?}");
    drop(bystander);
    assert_eq!(stat(&p), None, "released after");
}

#[test]
fn stopped_holder_past_expiry_reports_the_loss_and_never_touches_the_contender() {
    let Some(emu) = Emu::start("stopped") else {
        return;
    };
    let p = emu.path("s");
    let mut holder = emu
        .lockfn()
        .args(["run", &emu.target("s"), "--", "sleep", "600"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rec = emu.dir.join("run/pmxcfs").join(emu.name("s"));
    assert!(await_until(Duration::from_secs(10), || rec.exists()));
    let _bystander = File::open(&p).unwrap();
    unsafe { libc::kill(holder.id() as i32, libc::SIGSTOP) };
    cfs_lock_remake(&p, Duration::from_secs(ttl() + 10));
    let contender = stat(&p).unwrap();
    let log_len = std::fs::metadata(emu.dir.join("ops.log")).map_or(0, |m| m.len());
    let refreshes_before = std::fs::symlink_metadata(&p).map(|m| m.mtime());
    unsafe { libc::kill(holder.id() as i32, libc::SIGCONT) };
    // The holder notices within its check interval (TTL/4 here) and stops its command: 75.
    let t0 = Instant::now();
    let st = loop {
        if let Some(st) = holder.try_wait().unwrap() {
            break st;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "loss not noticed");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(st.code(), Some(75), "lost lock: exit 75");
    let mut err = String::new();
    BufReader::new(holder.stderr.take().unwrap())
        .read_line(&mut err)
        .unwrap();
    assert!(err.contains("lost"), "{err}");
    assert_eq!(
        stat(&p),
        Some(contender),
        "the contender's directory untouched"
    );
    // Not even a refused attempt to refresh it after SIGCONT? A refused one changes nothing;
    // an accepted refresh or an rmdir would show in the log.
    assert_eq!(
        std::fs::symlink_metadata(&p).map(|m| m.mtime()).ok(),
        refreshes_before.ok()
    );
    if real_ctl().is_some() {
        return; // no op log on the real pmxcfs
    }
    let log = std::fs::read_to_string(emu.dir.join("ops.log")).unwrap();
    let after = &log[log_len as usize..];
    let pid = holder.id().to_string();
    for l in after.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() >= 3 && f[1] == pid && (f[0] == "rmdir" || f[0] == "refresh") {
            assert_ne!(
                f[2], "0",
                "the stopped holder changed the contender's lock: {l}"
            );
        }
    }
}

#[test]
fn tokens_grow_across_acquisitions_and_restarts() {
    let Some(emu) = Emu::start("tokens") else {
        return;
    };
    let mut tokens = Vec::new();
    for i in 0..20 {
        if i == 7 || i == 14 {
            emu.run("restart");
        }
        let out = emu
            .lockfn()
            .args([
                "run",
                "-w",
                "10",
                "pmxcfs:t",
                "--",
                "sh",
                "-c",
                "echo $LOCKFN_TOKEN",
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let t: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        tokens.push(t);
    }
    assert!(
        tokens.windows(2).all(|w| w[1] > w[0]),
        "tokens strictly increase: {tokens:?}"
    );
}

#[test]
fn frozen_pmxcfs_bounded_by_the_wait_and_no_directory_left() {
    let Some(emu) = Emu::start("frozen") else {
        return;
    };
    emu.run("freeze");
    let guard = Thaw(&emu);
    let (code, took) = try_run(&emu, "f", "2");
    assert_eq!(
        code,
        Some(69),
        "pmxcfs not answering: unavailable ({took:?})"
    );
    assert!(took < Duration::from_secs(3), "took {took:?}");
    let (code, took) = try_run(&emu, "f", "0");
    assert_eq!(code, Some(69));
    assert!(took < Duration::from_millis(2500), "try-once took {took:?}");
    drop(guard);
    // Once pmxcfs answers again: no lock left behind by the callers that gave up.
    let p = emu.path("f");
    assert!(
        !await_until(Duration::from_secs(2), || p.exists()),
        "a directory appeared after thaw"
    );
    let (code, _) = try_run(&emu, "f", "0");
    assert_eq!(code, Some(0), "free after thaw");
}

/// Thaws the emulator when dropped (also when a test fails while it is frozen).
struct Thaw<'a>(&'a Emu);

impl Drop for Thaw<'_> {
    fn drop(&mut self) {
        self.0.run("thaw");
    }
}

/// The Perl-daemon worker of the fork test, run as a child process of this test binary:
/// acquire pmxcfs:w through the library, fork a child that lives on without exec, print
/// "forked PID", release when stdin closes, print "released".
#[test]
fn worker_main() {
    if std::env::var("PMXSAFE_WORKER").as_deref() != Ok("fork") {
        return;
    }
    let t = lockfn::Target::parse(&std::env::var("PMXSAFE_TARGET").unwrap()).unwrap();
    let l = lockfn::Lock::acquire(&t, &lockfn::Options::default()).unwrap();
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        unsafe {
            libc::sleep(30);
            libc::_exit(0)
        };
    }
    println!("forked {pid}");
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    l.release().unwrap();
    println!("released {:.6}", now_secs());
}

#[test]
fn a_child_forked_without_exec_does_not_keep_the_parents_lock() {
    // A Perl daemon's worker: the parent acquires, forks a child that lives on without exec,
    // releases. A same-node waiter gets the lock at once, not when the child exits.
    let Some(emu) = Emu::start("fork") else {
        return;
    };
    let mut parent = Command::new(std::env::current_exe().unwrap());
    parent
        .args([
            "worker_main",
            "--exact",
            "--nocapture",
            "--test-threads=1",
            "-q",
        ])
        .env("PMXSAFE_WORKER", "fork")
        .env("PMXSAFE_TARGET", emu.target("w"))
        .env("LOCKFN_PMXCFS_DIR", &emu.lockdir)
        .env("LOCKFN_PMXLOCK_DIR", emu.dir.join("flock"))
        .env("LOCKFN_RUN_DIR", emu.dir.join("run"))
        .env("LOCKFN_PMXCFS_TTL", ttl().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut parent = parent.spawn().unwrap();
    let mut out = BufReader::new(parent.stdout.take().unwrap());
    let mut line = String::new();
    // The test harness prints its own lines first.
    while !line.starts_with("forked ") {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "worker ended");
    }
    let child: i32 = line
        .trim()
        .strip_prefix("forked ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("worker said {line:?}"));
    let waiter = emu
        .lockfn()
        .args(["run", "-w", "20", &emu.target("w"), "--", "date", "+%s.%N"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    drop(parent.stdin.take()); // the parent releases
    line.clear();
    while !line.starts_with("released") {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "worker ended");
    }
    let released: f64 = line.trim()["released ".len()..].parse().unwrap();
    let out = waiter.wait_with_output().unwrap();
    unsafe { libc::kill(child, libc::SIGKILL) };
    let _ = parent.wait();
    assert!(out.status.success());
    let inside: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let took = Duration::from_secs_f64((inside - released).max(0.0));
    assert!(
        took < Duration::from_millis(500),
        "the waiter got the lock {took:?} after the parent released (the child kept it?)"
    );
}
