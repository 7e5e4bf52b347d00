//! tests/c/fork_test.c against each service: 8 threads acquire, update and release locks
//! (and update a handle the main thread holds) while the main thread forks 200 times; every
//! child calls every function on inherited and new handles and must exit within 5 s with all
//! expectations met (inherited handles: LOCK_EFORKED; new locks work), and the parent's lock
//! is untouched. zk and consul need ZKHOSTS / CONSUL_HTTP_ADDR (tests/run.sh starts both);
//! with LOCKFN_TEST_REQUIRE_SERVERS=1 a missing server fails the test, otherwise it is skipped.
//! pmxcfs runs on the FUSE emulator (tests/pmxcfs/emu.sh).

#[path = "c/build.rs"]
mod cbuild;
#[path = "common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The program, compiled once per test process.
fn program() -> PathBuf {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("lockfn-cfork-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let exe = dir.join("fork_test");
        cbuild::build("tests/c/fork_test.c", &exe, &["-pthread"]);
        exe
    })
    .clone()
}

fn run(prefix: &str) {
    run_with(prefix, &[]);
}

fn run_with(prefix: &str, env: &[(&str, PathBuf)]) {
    let exe = program();
    let start = Instant::now();
    let mut child = Command::new(&exe)
        .arg(prefix)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start fork_test");
    // Bounded: 200 children of at most 5 s each, 8 at a time, plus the workers' last cycle.
    let limit = Duration::from_secs(180);
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{prefix}: {stdout}{stderr}");
    assert!(
        out.status.success(),
        "fork_test {prefix} failed ({:?} after {:.1} s): {stdout}{stderr}",
        out.status,
        start.elapsed().as_secs_f64()
    );
    assert!(stdout.contains("forks 200, children ok 200, failed 0, hung 0, worker errors 0"));
}

fn prefix(service: &str) -> String {
    format!("{service}:cfork-{}", std::process::id())
}

#[test]
fn fork_from_a_threaded_program_sem() {
    run(&prefix("sem"));
    let _ = lockfn::gc(&format!("sem:cfork-{}", std::process::id()));
}

#[test]
fn fork_from_a_threaded_program_zk() {
    if common::server("ZKHOSTS") {
        run(&prefix("zk"));
    }
}

#[test]
fn fork_from_a_threaded_program_consul() {
    if common::server("CONSUL_HTTP_ADDR") {
        run(&prefix("consul"));
    }
}

#[test]
fn fork_from_a_threaded_program_pmxcfs() {
    if !common::fuse_available() {
        common::require("/dev/fuse and root (the pmxcfs emulator)");
        return;
    }
    let dir = std::env::temp_dir().join(format!("lockfn-cfork-emu-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    common::emu("start", &dir, 120);
    let env = [
        ("LOCKFN_PMXCFS_DIR", common::emu_lockdir(&dir)),
        ("LOCKFN_PMXLOCK_DIR", dir.join("flock")),
        ("LOCKFN_RUN_DIR", dir.join("run")),
    ];
    let r = std::panic::catch_unwind(|| run_with(&prefix("pmxcfs"), &env));
    common::emu("stop", &dir, 120);
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(p) = r {
        std::panic::resume_unwind(p);
    }
}
