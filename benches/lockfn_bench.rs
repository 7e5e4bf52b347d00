//! lockfn's side of the benchmarks (benches/run.sh drives it; see benches/README.md).
//!
//!   lockfn_bench cycle TARGET N
//!       N uncontended acquire+release cycles through the Rust API (`Lock::acquire_str`,
//!       `Lock::release`) in this process; prints `{"ns_per_op": F, "n": N}`.
//!   lockfn_bench worker TARGET SHMFILE
//!       one contender of hand-off and throughput runs: prints `ready`, then for every line
//!       `go SECS MODE` on stdin loops acquire / critical section / release for SECS seconds
//!       and prints one JSON line; exits at EOF. MODE `handoff`: a releaser rejoins the queue
//!       only once another process has taken the lock, so every release is a hand-off to one of
//!       the K waiters; MODE `loop` (throughput): it loops at once (barging allowed).
//!       The critical section reads and rewrites SHMFILE (16 bytes: pid of the last releaser,
//!       CLOCK_MONOTONIC ns just before its release), so the hand-off latency is
//!       now - that time whenever the lock came from another process. Prints one JSON line:
//!       `{"ops": N, "handoffs_ns": [...], "self": N, "zk_requests": N}`.
//!   lockfn_bench wait TARGET SECS
//!       prints `waiting`, then waits up to SECS for TARGET (held by someone else); exits 0 on
//!       the expected timeout.
//!
//! Errors go to stderr with exit code 1; the benchmark is a tool, not the library.

use std::fs::OpenOptions;
use std::io::{BufRead, Write};
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use lockfn::{Lock, Options};

fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec pointer; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn die(msg: String) -> ! {
    eprintln!("lockfn_bench: {msg}");
    std::process::exit(1);
}

fn cycle(target: &str, n: u64) {
    let opts = Options::default();
    // One warm-up cycle: connection set-up (zk session, consul agent) is not a cycle.
    match Lock::acquire_str(target, &opts) {
        Ok(l) => {
            if let Err(e) = l.release() {
                die(format!("release {target}: {e}"));
            }
        }
        Err(e) => die(format!("acquire {target}: {e}")),
    }
    let start = Instant::now();
    for _ in 0..n {
        let l = match Lock::acquire_str(target, &opts) {
            Ok(l) => l,
            Err(e) => die(format!("acquire {target}: {e}")),
        };
        if let Err(e) = l.release() {
            die(format!("release {target}: {e}"));
        }
    }
    let ns = start.elapsed().as_nanos() as f64 / n as f64;
    println!("{{\"ns_per_op\": {ns:.1}, \"n\": {n}}}");
}

fn zk_requests() -> u64 {
    lockfn::backend::zookeeper::counters().requests
}

fn worker(target: &str, shm: &str) {
    let f = match OpenOptions::new().read(true).write(true).open(shm) {
        Ok(f) => f,
        Err(e) => die(format!("open {shm}: {e}")),
    };
    let opts = Options::default();
    // Warm up the connection outside the timed window (try once; busy is fine).
    let mut warm = opts.clone();
    warm.timeout = Some(Duration::ZERO);
    if let Ok(l) = Lock::acquire_str(target, &warm) {
        let _ = l.release();
    }
    println!("ready");
    let _ = std::io::stdout().flush();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let mut w = line.split_whitespace();
        if w.next() != Some("go") {
            continue;
        }
        let secs: f64 = w.next().and_then(|s| s.parse().ok()).unwrap_or(1.0);
        let handoff = w.next() == Some("handoff");
        window(target, &f, &opts, secs, handoff);
    }
}

/// One timed window of the worker; prints its JSON line.
fn window(target: &str, f: &std::fs::File, opts: &Options, secs: f64, handoff: bool) {
    let pid = std::process::id() as u64;
    let req0 = zk_requests();
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let mut ops = 0u64;
    let mut selfs = 0u64;
    let mut lat: Vec<u64> = Vec::new();
    let mut buf = [0u8; 16];
    let mut wait = opts.clone();
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        wait.timeout = Some(left);
        let l = match Lock::acquire_str(target, &wait) {
            Ok(l) => l,
            Err(e) if e.kind() == lockfn::ErrorKind::Busy => break,
            Err(e) => die(format!("acquire {target}: {e}")),
        };
        let now = mono_ns();
        if f.read_exact_at(&mut buf, 0).is_ok() {
            let (p, t) = buf.split_at(8);
            let last_pid = u64::from_le_bytes(p.try_into().unwrap_or([0; 8]));
            let last_t = u64::from_le_bytes(t.try_into().unwrap_or([0; 8]));
            if last_t != 0 && last_pid != pid && now >= last_t {
                lat.push(now - last_t);
            } else if last_pid == pid {
                selfs += 1;
            }
        }
        ops += 1;
        buf[..8].copy_from_slice(&pid.to_le_bytes());
        buf[8..].copy_from_slice(&mono_ns().to_le_bytes());
        if let Err(e) = f.write_all_at(&buf, 0) {
            die(format!("write record: {e}"));
        }
        if let Err(e) = l.release() {
            die(format!("release {target}: {e}"));
        }
        if handoff {
            // a hand-off goes to one of the K waiters: rejoin only once another process has it
            let mut p = [0u8; 8];
            while Instant::now() < end
                && f.read_exact_at(&mut p, 0).is_ok()
                && u64::from_le_bytes(p) == pid
            {
                std::thread::sleep(Duration::from_micros(500));
            }
        }
    }
    let lat_s: Vec<String> = lat.iter().map(|v| v.to_string()).collect();
    println!(
        "{{\"ops\": {ops}, \"self\": {selfs}, \"zk_requests\": {}, \"handoffs_ns\": [{}]}}",
        zk_requests() - req0,
        lat_s.join(",")
    );
    let _ = std::io::stdout().flush();
}

fn wait(target: &str, secs: f64) {
    let mut opts = Options::default();
    opts.timeout = Some(Duration::from_secs_f64(secs));
    println!("waiting");
    let _ = std::io::stdout().flush();
    match Lock::acquire_str(target, &opts) {
        Ok(l) => {
            let _ = l.release();
            die(format!("{target} was free (expected held)"));
        }
        Err(e) if e.kind() == lockfn::ErrorKind::Busy => {}
        Err(e) => die(format!("acquire {target}: {e}")),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("cycle") if args.len() == 4 => {
            let n = args[3]
                .parse()
                .unwrap_or_else(|_| die(format!("bad N {}", args[3])));
            cycle(&args[2], n)
        }
        Some("worker") if args.len() == 4 => worker(&args[2], &args[3]),
        Some("wait") if args.len() == 4 => {
            let secs = args[3]
                .parse()
                .unwrap_or_else(|_| die(format!("bad SECS {}", args[3])));
            wait(&args[2], secs)
        }
        _ => die(
            "usage: lockfn_bench cycle TARGET N | worker TARGET SHMFILE | wait TARGET SECS".into(),
        ),
    }
}
