//! Bounded property tests ("fuzzing" with a small deterministic PRNG, no extra dependency) of
//! target parsing and of every C entry point's argument handling.
//!
//! - `target_parsing_properties`: random and mutated target strings; `Target::parse` never
//!   panics, and what it accepts is safe: a name of 1–200 bytes of `[A-Za-z0-9._-/]` (no `/`
//!   for sem and pmxcfs, no empty/`.`/`..` segment), so no path or key escapes its prefix; the
//!   canonical form parses back to the same lock; errors are one line without control bytes,
//!   and never show a password given in the URL.
//! - `c_entry_points_survive_bad_arguments`: random targets (NULL, invalid UTF-8, control
//!   bytes, long), random `lock_options` (size 0/short/huge, NaN/inf/negative timeouts, unknown
//!   flags, bad fds, any mode), NULL out pointers, made-up handles and strings passed to every
//!   exported function: each returns a documented code, sets `*out` to NULL on failure, never
//!   panics out, never aborts; whatever it acquired is released.
//!
//! Bounded: FUZZ_ITERS (default 20000 parse cases, a tenth of that for the C ABI) and at most
//! FUZZ_SECS seconds (default 10) per test. FUZZ_SEED picks the sequence (default fixed, so
//! a failure is reproducible; the seed and the input are printed on failure). FUZZ_TRACE=N
//! prints the C ABI case N's call.
//! Servers: ZooKeeper/Consul targets point at a closed port (127.0.0.1:1) with a short
//! timeout, so no server is needed and none is touched; URL targets (which name their own
//! server) are only parsed, never contacted.

use lockfn::ffi::*;
use lockfn::target::{MAX_NAME, MAX_PATH};
use lockfn::{Service, Target};
use std::ffi::{c_char, c_int, c_uint, CStr, CString};
use std::time::{Duration, Instant};

/// xorshift64*: small, deterministic, good enough to pick cases.
struct Rng(u64);
impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn chance(&mut self, pct: u64) -> bool {
        self.next() % 100 < pct
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len())]
    }
}

fn env_u64(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

const PIECES: &[&str] = &[
    "sem:",
    "pmxcfs:",
    "zk:",
    "consul:",
    "zk://",
    "consul://",
    "zookeeper:",
    "bogus:",
    ":",
    "/",
    "//",
    ".",
    "..",
    "../",
    "/..",
    "@",
    "user:pw@",
    "h:1",
    "127.0.0.1:2181",
    ",",
    "[::1]:2181",
    "a",
    "lock",
    "x-y_z.0",
    "%2e%2e",
    "\\",
    " ",
    "\t",
    "\n",
    "\u{7f}",
    "é",
    "ü/",
    "*",
    "?",
    "#",
    "http://",
    "9999999999",
    "-",
    "_",
    "~",
    "$HOME",
    "\u{202e}",
    "\u{0}",
];

/// A random target: pieces of the grammar, random chars, sometimes very long.
fn gen_target(r: &mut Rng) -> String {
    let mut s = String::new();
    let n = r.below(8);
    for _ in 0..n {
        match r.below(10) {
            0..=5 => {
                let piece: &&str = r.pick(PIECES);
                s.push_str(piece)
            }
            6 | 7 => {
                for _ in 0..r.below(12) {
                    let c = b"abcXYZ019._-/:@,"[r.below(16)] as char;
                    s.push(c);
                }
            }
            8 => s.push(char::from_u32(r.below(0x3000) as u32).unwrap_or('?')),
            _ => {
                let len = *r.pick(&[199, 200, 201, 999, 1000, 1001, 1200]);
                s.push_str(&"ab/".repeat(len / 3 + 1)[..len]);
            }
        }
    }
    s
}

/// A valid target, then maybe one mutation (insert/delete/replace a byte).
fn gen_mutated(r: &mut Rng) -> String {
    let base = r
        .pick(&[
            "sem:backup",
            "pmxcfs:vm-100",
            "zk:jobs/nightly",
            "zk://u:secret@127.0.0.1:2181,127.0.0.1:2182/app/lock",
            "consul:svc/leader",
            "consul://127.0.0.1:8500/svc/.lock",
            "plain-name",
        ])
        .to_string();
    let mut b = base.into_bytes();
    for _ in 0..r.below(3) {
        let i = r.below(b.len() + 1);
        let byte = *r.pick(b"/.:@,\x01\x7f a-Z0%");
        match r.below(3) {
            0 => b.insert(i, byte),
            1 if i < b.len() => {
                b.remove(i);
            }
            _ if i < b.len() => b[i] = byte,
            _ => {}
        }
    }
    String::from_utf8_lossy(&b).into_owned()
}

fn name_ok(name: &str, slash: bool) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty name accepted".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/')))
    {
        return Err(format!("character {c:?} accepted in a name"));
    }
    if !slash && name.contains('/') {
        return Err("'/' accepted where the service has no hierarchy".into());
    }
    for seg in name.split('/') {
        if seg.is_empty() || seg == "." || seg == ".." {
            return Err(format!("segment {seg:?} accepted"));
        }
    }
    Ok(())
}

/// The properties of one parse; Err(why) when one is broken.
fn check_target(text: &str) -> Result<(), String> {
    let parsed = std::panic::catch_unwind(|| Target::parse(text))
        .map_err(|_| "Target::parse panicked".to_string())?;
    let t = match parsed {
        Err(e) => {
            let msg = e.to_string();
            if msg.chars().any(|c| c.is_control()) {
                return Err(format!("error message has control characters: {msg:?}"));
            }
            if text.contains("secret@") && msg.contains("secret") {
                return Err(format!("error message shows the password: {msg}"));
            }
            if msg.len() > 1000 {
                return Err(format!("error message is {} bytes long", msg.len()));
            }
            return Ok(());
        }
        Ok(t) => t,
    };
    if text.bytes().any(|b| b == 0 || b.is_ascii_control()) {
        return Err("control bytes accepted".into());
    }
    let max = if t.is_url() || t.service().as_str() == "file" {
        MAX_PATH
    } else {
        MAX_NAME
    };
    if t.name().len() > max {
        return Err(format!("name of {} bytes accepted", t.name().len()));
    }
    let res = t.resource();
    match t.service().as_str() {
        "sem" => {
            name_ok(t.name(), false)?;
            if res != format!("/dev/shm/sem.{}", t.name()) {
                return Err(format!("sem resource {res}"));
            }
        }
        "pmxcfs" => {
            name_ok(t.name(), false)?;
            let dir = std::path::PathBuf::from(std::env::var("LOCKFN_PMXCFS_DIR").unwrap());
            let p = std::path::Path::new(res);
            if p.parent() != Some(dir.as_path()) {
                return Err(format!("pmxcfs path {res} escapes {}", dir.display()));
            }
        }
        "zk" => {
            let rest = res
                .strip_prefix('/')
                .ok_or_else(|| format!("zk path {res:?} is not absolute"))?;
            name_ok(rest, true)?;
            if !t.is_url() && !res.starts_with("/lockfn/") {
                return Err(format!("zk:NAME outside /lockfn/: {res}"));
            }
        }
        "consul" => {
            name_ok(res, true)?;
            if !t.is_url() && !res.starts_with("lockfn/") {
                return Err(format!("consul:NAME outside lockfn/: {res}"));
            }
        }
        "file" => {
            if !t.name().starts_with('/') || res != t.name() {
                return Err(format!("file path {res:?} for {:?}", t.name()));
            }
        }
        other => return Err(format!("unknown service {other}")),
    }
    let canon = t.canonical();
    if text.contains("secret@") && canon.contains("secret") {
        return Err(format!("canonical form shows the password: {canon}"));
    }
    // The canonical text names the same lock (explicit URLs with credentials lose them).
    match Target::parse(&canon) {
        Ok(again) => {
            if again.service() != t.service() || again.name() != t.name() {
                return Err(format!(
                    "canonical {canon:?} parses to another lock: {again:?}"
                ));
            }
        }
        Err(e) if !t.is_url() => {
            return Err(format!("canonical {canon:?} does not parse: {e}"));
        }
        Err(_) => {}
    }
    Ok(())
}

fn setup_env() -> std::path::PathBuf {
    static ONCE: std::sync::Once = std::sync::Once::new();
    let dir = std::env::temp_dir().join(format!("lockfn-fuzz-{}", std::process::id()));
    // One process-wide environment for both tests, set once, before either reads it (the
    // other test waits here).
    ONCE.call_once(|| {
        for sub in ["lock", "flock", "run"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        std::env::set_var("LOCKFN_PMXCFS_DIR", dir.join("lock"));
        std::env::set_var("LOCKFN_PMXLOCK_DIR", dir.join("flock"));
        std::env::set_var("LOCKFN_RUN_DIR", dir.join("run"));
        std::env::set_var("ZKHOSTS", "127.0.0.1:1");
        std::env::set_var("CONSUL_HTTP_ADDR", "127.0.0.1:1");
        std::env::remove_var("LOCKFN_BACKEND");
    });
    dir
}

#[test]
fn target_parsing_properties() {
    let _dir = setup_env();
    let seed = env_u64("FUZZ_SEED", 0x10c4_f00d);
    let iters = env_u64("FUZZ_ITERS", 20_000);
    let limit = Duration::from_secs(env_u64("FUZZ_SECS", 10));
    let mut r = Rng::new(seed);
    let start = Instant::now();
    let (mut n, mut accepted) = (0u64, 0u64);
    while n < iters && start.elapsed() < limit {
        let text = if r.chance(50) {
            gen_target(&mut r)
        } else {
            gen_mutated(&mut r)
        };
        if let Err(why) = check_target(&text) {
            panic!("seed {seed:#x}, case {n}: target {text:?}: {why}");
        }
        if Target::parse(&text).is_ok() {
            accepted += 1;
        }
        n += 1;
    }
    eprintln!("target parsing: {n} cases, {accepted} accepted, seed {seed:#x}");
    assert!(n >= 1000.min(iters), "only {n} cases ran");
    // Both sides of the grammar were reached.
    assert!(
        accepted > n / 20 && accepted < n,
        "{accepted} of {n} accepted"
    );
}

fn c_string(r: &mut Rng, text: &str) -> Option<CString> {
    if r.chance(5) {
        return None; // NULL
    }
    let mut b: Vec<u8> = text.bytes().filter(|&b| b != 0).collect();
    if r.chance(5) {
        b.push(0xff); // invalid UTF-8
    }
    Some(CString::new(b).unwrap())
}

fn ptr(c: &Option<CString>) -> *const c_char {
    c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr())
}

fn known_code(c: c_int) -> bool {
    (LOCK_OK..=LOCK_EINTERNAL).contains(&c)
}

fn last_error() -> String {
    let p = lock_last_error();
    assert!(!p.is_null());
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

#[test]
fn c_entry_points_survive_bad_arguments() {
    let dir = setup_env();
    let seed = env_u64("FUZZ_SEED", 0x10c4_f00d) ^ 0xc0de;
    let iters = env_u64("FUZZ_ITERS", 20_000) / 10;
    let limit = Duration::from_secs(env_u64("FUZZ_SECS", 10));
    let pid = std::process::id();
    let mut r = Rng::new(seed);
    let start = Instant::now();
    let mut n = 0u64;
    let mut acquired = 0u64;
    let mut codes = [0u64; 10];
    let mut made: Vec<String> = Vec::new();
    unsafe { lock_options_init(std::ptr::null_mut()) };
    while n < iters && start.elapsed() < limit {
        // A target: random text, or a real sem/pmxcfs lock of ours now and then.
        let text = match r.below(4) {
            0 => format!("sem:fuzz-{pid}-{n}"),
            1 => format!("pmxcfs:fuzz-{n}"),
            2 => gen_mutated(&mut r),
            _ => gen_target(&mut r),
        };
        let parsed = Target::parse(&text);
        let remote = parsed
            .as_ref()
            .is_ok_and(|t| matches!(t.service().as_str(), "zk" | "consul"));
        if remote && parsed.as_ref().is_ok_and(|t| t.is_url()) {
            // A URL names its own server, maybe not on loopback (a mutation of 127.0.0.1 is
            // 27.0.0.1): parsed above, never contacted.
            n += 1;
            continue;
        }
        let target = c_string(&mut r, &text);
        let holder_text = gen_target(&mut r);
        let holder = c_string(&mut r, &holder_text);
        let mut o = lock_options::default();
        unsafe { lock_options_init(&mut o) };
        o.size = *r.pick(&[0, 1, 4, 8, 24, o.size, o.size + 8, u32::MAX, o.size, o.size]);
        o.timeout = *r.pick(&[
            0.0,
            0.0,
            -0.0,
            0.01,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            -1.0,
            1e300,
            1e19, // fits a Duration, not the clock: panicked (issue 12)
            -1e-300,
            5e-324,
        ]);
        o.ttl = *r.pick(&[0, 1, 2, 10, 86_401, u32::MAX]);
        o.limit = *r.pick(&[0, 1, 1, 2, 1000, u32::MAX]);
        o.flags = *r.pick(&[0, 0, 1, 2, 3, 4, 8, 15, 16, 0x8000_0000, u32::MAX]);
        o.holder = ptr(&holder);
        o.cancel_fd = *r.pick(&[-1, -1, -2, 0, 1, 2, 999_999, i32::MIN, i32::MAX]);
        o.mode = *r.pick(&[0o600, 0o600, 0, 0o777, 0o7777, u32::MAX]);
        o.lock_delay = *r.pick(&[-1.0, 0.0, 15.0, f64::NAN, f64::INFINITY, 1e20]);
        o.reserved = [r.next(), 0, 0, r.next()];
        // Never wait long: our local locks have a fresh name each case (never busy), and a
        // remote target gets a short timeout (its server is a closed port).
        if remote {
            if o.size != 0 {
                o.size = o.size.max(16);
            }
            o.timeout = 0.05;
        }
        let opts_ptr: *const lock_options = if r.chance(10) { std::ptr::null() } else { &o };
        if opts_ptr.is_null() && remote {
            // NULL options wait forever: not for a target that would connect.
            n += 1;
            continue;
        }
        let mut h: *mut lock_handle = 0x1234 as *mut lock_handle;
        let out: *mut *mut lock_handle = if r.chance(5) {
            std::ptr::null_mut()
        } else {
            &mut h
        };
        let t0 = Instant::now();
        let c = unsafe { lock_acquire(ptr(&target), opts_ptr, out) };
        if t0.elapsed() > Duration::from_millis(300) {
            eprintln!(
                "slow lock_acquire {:?}: {text:?} {o:?} -> {c} {}",
                t0.elapsed(),
                last_error()
            );
        }
        assert!(
            known_code(c),
            "seed {seed:#x} case {n}: lock_acquire({text:?}) returned {c}"
        );
        codes[c as usize] += 1;
        if std::env::var("FUZZ_TRACE").as_deref() == Ok(n.to_string().as_str()) {
            eprintln!(
                "TRACE case {n}: lock_acquire({text:?}, {o:?}, null opts {}) -> {c}: {}",
                opts_ptr.is_null(),
                last_error()
            );
        }
        if c == LOCK_EINTERNAL {
            eprintln!(
                "EINTERNAL from lock_acquire({text:?}, {o:?}): {}",
                last_error()
            );
        }
        if c == LOCK_OK {
            assert!(!out.is_null() && !h.is_null(), "OK without a handle");
            acquired += 1;
            made.push(text.clone());
            let t = unsafe { lock_token(h) };
            assert!(t > 0, "token 0 for a live handle of {text:?}");
            let u = unsafe { lock_update(h) };
            assert!(known_code(u));
            let rel = unsafe { lock_release(h) };
            assert!(
                matches!(rel, LOCK_OK | LOCK_ELOST),
                "release gave {rel}: {}",
                last_error()
            );
            // A second release of the same handle is refused, not a crash.
            assert_eq!(unsafe { lock_release(h) }, LOCK_ENOTHELD);
            assert_eq!(unsafe { lock_update(h) }, LOCK_ENOTHELD);
            assert_eq!(unsafe { lock_token(h) }, 0);
        } else {
            if !out.is_null() {
                assert!(h.is_null(), "failure {c} left *out = {h:p}");
            }
            let msg = last_error();
            assert!(!msg.is_empty(), "code {c} for {text:?} without a message");
        }
        // Made-up handles and strings are looked up, never dereferenced.
        let bogus = (r.next() | 1) as usize as *mut lock_handle;
        assert_eq!(unsafe { lock_update(bogus) }, LOCK_ENOTHELD);
        assert_eq!(unsafe { lock_token(bogus) }, 0);
        assert_eq!(unsafe { lock_release(bogus) }, LOCK_ENOTHELD);
        assert_eq!(unsafe { lock_update(std::ptr::null_mut()) }, LOCK_EINVAL);
        assert_eq!(unsafe { lock_release(std::ptr::null_mut()) }, LOCK_OK);
        unsafe { lock_string_free(bogus as *mut c_char) };
        unsafe { lock_string_free(std::ptr::null_mut()) };
        // Status and gc: local targets only (remote ones would wait for a connection).
        if !remote {
            let mut js: *mut c_char = 0x10 as *mut c_char;
            let jsp: *mut *mut c_char = if r.chance(5) {
                std::ptr::null_mut()
            } else {
                &mut js
            };
            let t0 = Instant::now();
            let s = unsafe { lock_status(ptr(&target), jsp) };
            if t0.elapsed() > Duration::from_millis(300) {
                eprintln!("slow lock_status {:?}: {text:?}", t0.elapsed());
            }
            assert!(known_code(s), "lock_status({text:?}) returned {s}");
            if s == LOCK_OK {
                let doc = unsafe { CStr::from_ptr(js) }.to_str().unwrap().to_string();
                assert!(doc.starts_with('{'), "status is not a JSON object: {doc}");
                unsafe { lock_string_free(js) };
                unsafe { lock_string_free(js) }; // twice: ignored
            } else if !jsp.is_null() {
                assert!(js.is_null(), "failed lock_status left *json set");
            }
        }
        let scope_text = match r.below(4) {
            0 => format!("sem:fuzz-{pid}-"),
            1 => "pmxcfs:fuzz-".to_string(),
            _ => gen_target(&mut r),
        };
        // gc of a remote service has no timeout: it would wait for the closed port.
        let scope_service = scope_text
            .split(':')
            .next()
            .and_then(Service::parse)
            .map(Service::as_str);
        let remote_scope = matches!(scope_service, Some("zk" | "consul"));
        let scope = c_string(&mut r, &scope_text);
        let mut removed: c_uint = 77;
        let rp: *mut c_uint = if r.chance(50) {
            std::ptr::null_mut()
        } else {
            &mut removed
        };
        // Never a whole local service (that would gc other tests' dead holders): our prefixes.
        let ours = match scope_service {
            Some("sem") => scope_text.starts_with(&format!("sem:fuzz-{pid}")),
            Some("pmxcfs") => scope_text.starts_with("pmxcfs:fuzz-"),
            _ => !scope_text.is_empty(),
        };
        if ours && !remote_scope {
            {
                let t0 = Instant::now();
                let g = unsafe { lock_gc(ptr(&scope), rp) };
                if t0.elapsed() > Duration::from_millis(300) {
                    eprintln!("slow lock_gc {:?}: {scope_text:?}", t0.elapsed());
                }
                assert!(known_code(g), "lock_gc({scope_text:?}) returned {g}");
            }
        }
        let se = lock_strerror(r.next() as c_int);
        assert!(!se.is_null() && !unsafe { CStr::from_ptr(se) }.to_bytes().is_empty());
        n += 1;
    }
    assert!(!lock_version().is_null());
    // Whatever was made is ours to remove.
    for t in &made {
        if let Ok(t) = Target::parse(t) {
            let _ = lockfn::release_named(&t, true);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    // Nothing of ours is left in /dev/shm (semaphores, holder records): a failed acquire
    // creates nothing, a released lock leaves nothing.
    let tag = format!("fuzz-{pid}-");
    let left: Vec<String> = std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|f| f.contains(&tag))
                .collect()
        })
        .unwrap_or_default();
    for f in &left {
        let _ = std::fs::remove_file(std::path::Path::new("/dev/shm").join(f));
    }
    assert!(left.is_empty(), "left in /dev/shm: {left:?}");
    eprintln!("C ABI: {n} cases, {acquired} acquired, codes {codes:?}, seed {seed:#x}");
    assert!(n >= 100.min(iters), "only {n} cases ran");
    assert!(
        acquired > 0,
        "no case acquired a lock: the generator is too narrow"
    );
    assert!(
        codes[LOCK_EINVAL as usize] > 0,
        "no case was rejected as invalid"
    );
}

/// Numbers as a user may type them: huge, tiny, infinite, NaN, negative, not numbers.
const NUMBERS: &[&str] = &[
    "0",
    "-0",
    "1",
    "0.001",
    "1.5",
    "-1",
    "1e19",
    "1e308",
    "1e400",
    "inf",
    "-inf",
    "infinity",
    "nan",
    "NaN",
    "18446744073709551616",
    "4294967296",
    "-4294967295",
    "99999999999",
    "1e-320",
    "abc",
    "",
    " 1",
    "0x10",
    "86401",
    "10",
];

/// A random command line of lockfn over the numeric options and a target.
fn gen_cli_case(r: &mut Rng, n: u64, pid: u32) -> (Vec<String>, bool) {
    let target = match r.below(4) {
        0 | 1 => format!("sem:fuzzcli-{pid}-{n}"),
        2 => gen_mutated(r),
        _ => gen_target(r),
    }
    .replace('\0', ""); // an argument cannot hold NUL
    let remote =
        Target::parse(&target).is_ok_and(|t| matches!(t.service().as_str(), "zk" | "consul"));
    let num = |r: &mut Rng| r.pick(NUMBERS).to_string();
    let mut args: Vec<String> = Vec::new();
    match r.below(3) {
        0 | 1 => {
            args.push("run".into());
            if remote || r.chance(30) {
                // A remote target's server is a closed port; a wait would be its own timeout.
                args.push("-n".into());
            } else {
                args.push("-w".into());
                args.push(num(r));
            }
            for opt in ["--ttl", "--limit", "--lock-delay", "--grace", "-E"] {
                if r.chance(30) {
                    args.push(opt.into());
                    args.push(num(r));
                }
            }
            args.push(target);
            args.push("--".into());
            args.push("true".into());
        }
        _ => {
            args.push("watch".into());
            for opt in ["--for", "--interval", "--count"] {
                if r.chance(50) {
                    args.push(opt.into());
                    args.push(num(r));
                }
            }
            // Always an end: one printed state.
            args.push("--count".into());
            args.push("1".into());
            args.push(target);
        }
    }
    (args, remote)
}

/// The CLI over random numeric options (-w, --ttl, --limit, --lock-delay, --grace, -E, watch
/// --for/--interval/--count) and targets: never a panic (exit 101, "panicked"), never an
/// internal error (70) for bad input, only documented exit codes, one bounded line of
/// message, and every run ends (killed after 15 s = a failure). Issue 12: `run -w 1e19` and
/// `watch --for 1e19` panicked.
#[test]
fn cli_numeric_options_and_targets_never_panic() {
    use std::process::{Command, Stdio};
    let lockfn = env!("CARGO_BIN_EXE_lockfn");
    let dir = std::env::temp_dir().join(format!("lockfn-fuzzcli-{}", std::process::id()));
    for sub in ["lock", "flock", "run"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    let seed = env_u64("FUZZ_SEED", 0x10c4_f00d) ^ 0xc11;
    let iters = env_u64("FUZZ_ITERS", 20_000) / 50;
    let limit = Duration::from_secs(env_u64("FUZZ_SECS", 10) * 2);
    let pid = std::process::id();
    let mut r = Rng::new(seed);
    let start = Instant::now();
    let mut n = 0u64;
    let mut codes = std::collections::BTreeMap::new();
    // The fixed cases of the issue first, then random ones.
    let fixed: Vec<Vec<String>> = [
        vec!["run", "-w", "1e19", "sem:fuzzcli-fixed-a", "--", "true"],
        vec!["run", "-w", "inf", "sem:fuzzcli-fixed-b", "--", "true"],
        vec![
            "watch",
            "--for",
            "1e19",
            "--count",
            "1",
            "sem:fuzzcli-fixed-c",
        ],
        vec![
            "watch",
            "--interval",
            "1e19",
            "--count",
            "1",
            "sem:fuzzcli-fixed-d",
        ],
        vec![
            "run",
            "--grace",
            "1e19",
            "-n",
            "sem:fuzzcli-fixed-e",
            "--",
            "true",
        ],
    ]
    .iter()
    .map(|v| v.iter().map(|s| s.to_string()).collect())
    .collect();
    loop {
        let args = if (n as usize) < fixed.len() {
            fixed[n as usize].clone()
        } else if n < iters.max(fixed.len() as u64) && start.elapsed() < limit {
            gen_cli_case(&mut r, n, pid).0
        } else {
            break;
        };
        let mut child = Command::new(lockfn)
            .args(&args)
            .env("LOCKFN_PMXCFS_DIR", dir.join("lock"))
            .env("LOCKFN_PMXLOCK_DIR", dir.join("flock"))
            .env("LOCKFN_RUN_DIR", dir.join("run"))
            .env("ZKHOSTS", "127.0.0.1:1")
            .env("CONSUL_HTTP_ADDR", "127.0.0.1:1")
            .env("LOCKFN_OP_TIMEOUT", "0.5")
            .env_remove("LOCKFN_BACKEND")
            .env_remove("CONSUL_HTTP_TOKEN_FILE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn lockfn");
        let t0 = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().expect("wait") {
                break Some(s);
            }
            if t0.elapsed() > Duration::from_secs(15) {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            use std::io::Read;
            let _ = e.read_to_string(&mut err);
        }
        let Some(status) = status else {
            panic!("seed {seed:#x} case {n}: lockfn {args:?} did not end within 15 s");
        };
        let code = status.code().unwrap_or(-1);
        *codes.entry(code).or_insert(0u64) += 1;
        let ctx = format!("seed {seed:#x} case {n}: lockfn {args:?} -> {code}: {err}");
        assert!(!err.contains("panicked"), "{ctx}");
        assert!(
            [0, 1, 2, 64, 65, 69, 75, 77].contains(&code) || (3..=255).contains(&code),
            "{ctx}"
        );
        assert!(code != 70 && code != 101, "{ctx}");
        for line in err.lines() {
            assert!(line.len() <= 2100, "a {} byte line: {ctx}", line.len());
            assert!(!line.chars().any(|c| c.is_control()), "{ctx}");
        }
        n += 1;
    }
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("CLI: {n} runs, exit codes {codes:?}, seed {seed:#x}");
    assert!(n >= 50.min(iters), "only {n} cases ran");
    assert!(codes.contains_key(&0), "nothing succeeded: {codes:?}");
    assert!(codes.contains_key(&64), "nothing was rejected: {codes:?}");
}
