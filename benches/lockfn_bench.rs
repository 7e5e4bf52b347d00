//! lockfn's side of the benchmarks (benches/run.sh drives it; see benches/README.md).
//!
//!   lockfn_bench cycle TARGET N
//!       N uncontended acquire+release cycles through the Rust API (`Lock::acquire_str`,
//!       `Lock::release`) in this process; prints `{"ns_per_op": F, "n": N}`.
//!   lockfn_bench worker TARGET SHMFILE
//!       one contender of hand-off and throughput runs: prints `ready`, then for every line
//!       `go SECS MODE [MARGIN_MS]` on stdin loops acquire / critical section / release for SECS
//!       seconds and prints one JSON line `{"ops", "self", "handoffs_ns"}`;
//!       exits at EOF. The critical section keeps a 32-byte record in SHMFILE (see `window`):
//!       the hand-off latency is the new holder's acquisition time minus the releaser's time
//!       just before release, whenever the lock came from another process.
//!       MODE `handoff`: after a release, the releaser rejoins the queue only once another
//!       process holds the lock, and a holder keeps the lock until the previous holder has
//!       rejoined and had MARGIN_MS to start waiting, so every release goes to one of K
//!       processes that are waiting. MODE `loop` (throughput): plain loop, barging allowed.
//!   lockfn_bench wait TARGET SECS
//!       prints `waiting`, then waits up to SECS for TARGET (held by someone else); exits 0 on
//!       the expected timeout.
//!
//! Errors go to stderr with exit code 1; the benchmark is a tool, not the library.

use std::fs::OpenOptions;
use std::io::{BufRead, Write};
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
    let rec = Record::map(&f);
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
        let margin_ms: u64 = w.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        window(
            target,
            &rec,
            &opts,
            secs,
            handoff,
            Duration::from_millis(margin_ms),
        );
    }
}

/// The 32-byte record, mapped shared (no syscalls to read or write it, so `strace -c` of a
/// hand-off run counts the lock's syscalls, not the harness's).
struct Record(*mut u8);

impl Record {
    fn map(f: &std::fs::File) -> Record {
        use std::os::fd::AsRawFd;
        // SAFETY: mapping 32 bytes of a file we opened read-write; checked for MAP_FAILED.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                32,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            die(format!("mmap record: {}", std::io::Error::last_os_error()));
        }
        Record(p as *mut u8)
    }
    fn slot(&self, off: usize) -> &std::sync::atomic::AtomicU64 {
        // SAFETY: off is one of 0, 8, 16, 24: aligned and inside the 32 mapped bytes, which
        // stay mapped for the life of the process.
        unsafe { &*(self.0.add(off) as *const std::sync::atomic::AtomicU64) }
    }
    fn get(&self, off: usize) -> u64 {
        self.slot(off).load(std::sync::atomic::Ordering::SeqCst)
    }
    fn set(&self, off: usize, v: u64) {
        self.slot(off).store(v, std::sync::atomic::Ordering::SeqCst)
    }
}

/// One timed window of the worker; prints its JSON line. The record file holds four u64:
/// 0 pid of the last releaser, 8 its CLOCK_MONOTONIC ns just before release, 16 pid of the
/// current holder, 24 when the previous holder rejoined the queue (handoff mode).
fn window(target: &str, f: &Record, opts: &Options, secs: f64, handoff: bool, margin: Duration) {
    let pid = std::process::id() as u64;
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let mut ops = 0u64;
    let mut selfs = 0u64;
    let mut lat: Vec<u64> = Vec::new();
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
        let (last_pid, last_t) = (f.get(0), f.get(8));
        if last_t != 0 && last_pid != pid && now >= last_t {
            lat.push(now - last_t);
        } else if last_pid == pid {
            selfs += 1;
        }
        ops += 1;
        if handoff {
            f.set(16, pid);
            // Hold until the previous holder is back in the queue and has had `margin` to start
            // waiting (bounded: 1 s, or the window's end), so the release goes to a waiter.
            // The window's first holder has no previous holder.
            let cap = Instant::now() + Duration::from_secs(1);
            if last_t != 0 {
                loop {
                    let t = Instant::now();
                    if t >= end || t >= cap {
                        break;
                    }
                    let rejoined = f.get(24);
                    if rejoined >= now && mono_ns() >= rejoined + margin.as_nanos() as u64 {
                        break;
                    }
                    std::thread::sleep(Duration::from_micros(500));
                }
            }
        }
        f.set(0, pid);
        f.set(8, mono_ns());
        if let Err(e) = l.release() {
            die(format!("release {target}: {e}"));
        }
        if handoff {
            // rejoin only once another process holds the lock: every release is a hand-off
            while Instant::now() < end && f.get(16) == pid {
                std::thread::sleep(Duration::from_micros(500));
            }
            f.set(24, mono_ns());
        }
    }
    let lat_s: Vec<String> = lat.iter().map(|v| v.to_string()).collect();
    println!(
        "{{\"ops\": {ops}, \"self\": {selfs}, \"handoffs_ns\": [{}]}}",
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
