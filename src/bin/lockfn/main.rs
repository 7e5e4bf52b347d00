//! `lockfn`: the command line, a thin shell around the Rust API (lockfn::Lock and friends).

mod argv;
mod duration;
mod exit;
mod habits;
mod hold;
mod keep;
mod lines;
mod output;
mod progress;
mod run;
mod signals;
// lockfn(1) and the bash completion from the clap definitions (doc/); tests only.
#[cfg(test)]
mod docgen;

use output::say;

use clap::{Args, Parser, Subcommand};
use lockfn::{ErrorKind, Lock, Options, Status, Target};
use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::Duration;

static VERBOSITY: AtomicU8 = AtomicU8::new(0);
/// `-q`: nothing on stderr when the lock is busy or the wait times out.
static QUIET: AtomicBool = AtomicBool::new(false);

/// Log to stderr at verbosity `level` (1: -v, 2: -vv).
macro_rules! log {
    ($level:expr, $($arg:tt)*) => {
        if crate::VERBOSITY.load(std::sync::atomic::Ordering::Relaxed) >= $level {
            eprintln!("lockfn: {}", crate::output::line(&format!($($arg)*)));
        }
    };
}
pub(crate) use log;

const AFTER_HELP: &str = "\
Targets:
  sem:NAME                 POSIX semaphore /NAME on this host (no server)
  pmxcfs:NAME              Proxmox cluster lock /etc/pve/priv/lock/NAME (LOCKFN_PMXCFS_DIR)
  zk:NAME, zk://H:P,H:P/PATH   ZooKeeper (ZKHOSTS, LOCKFN_ZK_AUTH)
  consul:NAME, consul://H:P/KEY  Consul (CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN[_FILE])
  file:/PATH               flock(2) on PATH, flock(1)'s lock (created if missing)
  NAME                     LOCKFN_BACKEND, else pmxcfs on a Proxmox node, else sem

Exit codes:
  0        success (run: the command's own exit code)
  1        lock busy or timed out (run: -E CODE instead)
  64       invalid usage, target, option or configuration variable (ZKHOSTS,
           CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN_FILE, LOCKFN_OP_TIMEOUT)
  65       not held (release/update of a lock that is not held)
  69       lock service unavailable (unreachable, silent past the deadline, misbehaving)
  70       internal error (a bug)
  75       lock lost while held (run: the command was stopped)
  77       permission denied
  126/127  command not executable / not found
  128+N    ended by signal N (a cancelled wait, or the command's death)

Bounds: -w T ends within T + 0.25 s and -n within 1.5 s whatever a server does; status, list,
gc, release and update within LOCKFN_OP_TIMEOUT seconds (default 5).

Notes:
Durations (-w, --ttl, --lock-delay, --grace, watch --interval and --for) are seconds (1.5) or
a number with a unit: 500ms, 30s, 5m, 1h, 1m30s.

Options go after the subcommand: flock(1)'s `flock -n X cmd` is `lockfn run -n X -- cmd` (a
call in flock's shape is answered with that form). -n is try-once, as flock's -n: a number
right after it is the target, which is refused when another target follows (`run -n 3 sem:x
-- cmd`, consul lock's habit) and warned about otherwise; a limit is --limit 3.

-q: nothing on stderr when the lock is busy or the wait times out (flock -n's silence, for
cron). -v: while waiting, who holds the lock, at most once a second and at least every 10 s
(every 5 s; LOCKFN_PROGRESS_INTERVAL, a test and tuning knob, sets 0.05 to 10 s).";

#[derive(Parser)]
#[command(
    name = "lockfn",
    version,
    about = "Run things that must not run twice at once: one lock over POSIX semaphores, \
             pmxcfs, ZooKeeper and Consul",
    after_help = AFTER_HELP
)]
struct Cli {
    /// More logs on stderr (-v: lock events and, while waiting, who holds the lock every
    /// 5 s; -vv: details)
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Say nothing when the lock is busy or the wait times out (flock -n's silence; the exit
    /// code is unchanged); other errors are still reported
    #[arg(short, long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a command while holding the lock (flock(1)/pmxlock style)
    #[command(after_help = run::AFTER_HELP)]
    Run(run::RunArgs),
    /// Acquire, print one JSON line, hold (renewing) until stdin closes or SIGTERM
    #[command(after_help = hold::AFTER_HELP)]
    Hold(hold::HoldArgs),
    /// Acquire a lock that outlives this command (ended by `lockfn release`)
    Acquire(AcquireArgs),
    /// Release a persistent lock (--force: whoever holds it)
    Release(ReleaseArgs),
    /// Renew a persistent lock
    Update(TargetArg),
    /// Renew a persistent lock until it is released (what acquire --keep leaves behind)
    Keep(keep::KeepArgs),
    /// Show who holds a lock
    Status(StatusArgs),
    /// List locks under a prefix (e.g. sem:, zk:jobs/)
    List(ListArgs),
    /// Clean what dead holders on this host left behind
    Gc(GcArgs),
    /// Show a lock's state live, one line per change
    Watch(WatchArgs),
}

/// How to acquire: shared by run, hold and acquire.
#[derive(Args, Clone)]
pub struct LockArgs {
    /// Fail at once if the lock is held (try once)
    #[arg(short = 'n', long = "nonblock", visible_alias = "no-wait")]
    pub nonblock: bool,
    /// Wait at most this long (seconds, or 500ms, 30s, 5m, 1h; 0 = try once; default:
    /// forever)
    #[arg(
        short = 'w',
        long = "wait",
        visible_alias = "timeout",
        value_name = "DURATION",
        value_parser = duration::secs
    )]
    pub wait: Option<f64>,
    /// Holders at once (a counting semaphore when > 1)
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub limit: u32,
    /// Take a shared (read) lock: many readers, one writer
    #[arg(long)]
    pub shared: bool,
    /// How long the lock survives without renewal (Consul session TTL, ZooKeeper session)
    #[arg(long, value_name = "DURATION", value_parser = duration::secs)]
    pub ttl: Option<f64>,
    /// Free text stored in the holder record (who, why)
    #[arg(long, value_name = "TEXT")]
    pub holder: Option<String>,
    /// Succeed at once if this process already holds the lock
    #[arg(long)]
    pub reentrant: bool,
    /// Permission bits of objects the lock creates (sem), octal
    #[arg(long, value_name = "OCTAL", default_value = "600")]
    pub mode: String,
    /// Consul lock-delay
    #[arg(long, value_name = "DURATION", value_parser = duration::secs)]
    pub lock_delay: Option<f64>,
}

impl LockArgs {
    pub fn options(&self) -> Result<Options, lockfn::Error> {
        let invalid = |m: String| lockfn::Error::new(ErrorKind::Invalid, m);
        let mut o = Options::default();
        o.timeout = match (self.nonblock, self.wait) {
            (true, _) => Some(Duration::ZERO),
            (false, Some(w)) if w < 0.0 => {
                return Err(invalid(format!(
                    "-w {w}: the wait must be 0 or more seconds"
                )))
            }
            (false, Some(w)) => Options::timeout_secs(w)?,
            (false, None) => None,
        };
        o.ttl = match self.ttl {
            Some(t) if t.is_nan() || t <= 0.0 => {
                return Err(invalid(format!("--ttl {t}: must be positive")))
            }
            Some(t) => Options::timeout_secs(t)?,
            None => None,
        };
        o.lock_delay = match self.lock_delay {
            Some(t) if t < 0.0 => {
                return Err(invalid(format!("--lock-delay {t}: must be 0 or more")))
            }
            Some(t) => Options::timeout_secs(t)?,
            None => None,
        };
        o.limit = self.limit;
        o.shared = self.shared;
        o.holder = self.holder.clone();
        o.reentrant = self.reentrant;
        o.mode = u32::from_str_radix(self.mode.trim_start_matches("0o"), 8)
            .map_err(|_| invalid(format!("--mode {}: not an octal number", self.mode)))?;
        Ok(o)
    }
}

#[derive(Args)]
struct AcquireArgs {
    #[command(flatten)]
    lock: LockArgs,
    /// Required: the lock outlives this command until `lockfn release TARGET` (how long it
    /// lives per service is printed on stderr)
    #[arg(long)]
    persist: bool,
    /// Leave `lockfn keep` behind to renew it until it is released, where the service
    /// expires persistent locks (pmxcfs: 120 s after the last renewal)
    #[arg(long)]
    keep: bool,
    /// Print the result as JSON
    #[arg(long)]
    json: bool,
    target: String,
}

#[derive(Args)]
struct ReleaseArgs {
    /// Release whoever holds it (operator override; resourcelock's forced unget)
    #[arg(long)]
    force: bool,
    /// Consul only: release (forced) every held lock that matches REGEX (consullock's
    /// regex unlock), matched against the lock name as written in the target
    /// (`svc/.*` for consul:svc/a) or the whole key; TARGET is then `consul:` or
    /// `consul://HOST:PORT/`
    #[arg(long, value_name = "REGEX")]
    r#match: Option<String>,
    /// The lock, e.g. sem:backup
    target: String,
}

#[derive(Args)]
struct TargetArg {
    target: String,
}

#[derive(Args)]
struct StatusArgs {
    /// Print JSON
    #[arg(long)]
    json: bool,
    /// Exit 0 if held, 1 if free (for scripts)
    #[arg(long)]
    check: bool,
    target: String,
}

#[derive(Args)]
struct ListArgs {
    /// Print JSON (an array)
    #[arg(long)]
    json: bool,
    /// A service with an optional name prefix: sem:, pmxcfs:vm-, zk:jobs/
    prefix: String,
}

#[derive(Args)]
struct GcArgs {
    /// Print JSON
    #[arg(long)]
    json: bool,
    /// sem, pmxcfs, zk, consul (optionally :PREFIX); default: sem and pmxcfs
    scope: Option<String>,
}

#[derive(Args)]
struct WatchArgs {
    /// Time between looks
    #[arg(long, default_value = "0.5", value_name = "DURATION", value_parser = duration::secs)]
    interval: f64,
    /// Stop after this many printed changes
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// Stop after this long
    #[arg(long = "for", value_name = "DURATION", value_parser = duration::secs)]
    duration: Option<f64>,
    /// Print JSON lines
    #[arg(long)]
    json: bool,
    target: String,
}

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    match habits::limit_number(&args) {
        Some(habits::Habit::Refuse(m)) => {
            say!("lockfn: {m}");
            return ExitCode::from(exit::USAGE);
        }
        Some(habits::Habit::Warn(m)) => say!("lockfn: warning: {m}"),
        None => {}
    }
    let cli = match Cli::try_parse_from(&args) {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { exit::USAGE } else { 0 };
            match habits::flock_hint(&args, &e) {
                // clap's layout: the error, a tip, then the usage.
                Some(hint) => {
                    let text = e.render().to_string();
                    let (head, tail) = text.split_once("\n\n").unwrap_or((&text, ""));
                    eprint!("{head}\n\n  tip: {}\n\n{tail}", output::line(&hint));
                }
                None => {
                    let _ = e.print();
                }
            }
            return ExitCode::from(code);
        }
    };
    VERBOSITY.store(cli.verbose, Ordering::Relaxed);
    QUIET.store(cli.quiet, Ordering::Relaxed);
    // A zk://user:password@… argument must not show in `ps`: overwrite it in our argv.
    argv::hide_credentials();
    if !matches!(cli.command, Command::Run(_) | Command::Hold(_)) {
        // A reader that went away (`lockfn list | head`) ends us quietly, as with any Unix
        // tool, instead of a "Broken pipe" panic. run and hold keep SIGPIPE ignored: they
        // must release their lock, and their writes ignore errors.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let r = match cli.command {
        Command::Run(a) => run::run(a),
        Command::Hold(a) => hold::hold(a),
        Command::Acquire(a) => acquire(a),
        Command::Release(a) => release(a),
        Command::Update(a) => update(a),
        Command::Keep(a) => keep::keep(a),
        Command::Status(a) => status(a),
        Command::List(a) => list(a),
        Command::Gc(a) => gc(a),
        Command::Watch(a) => watch(a),
    };
    ExitCode::from(match r {
        Ok(code) => code,
        Err(e) => {
            report(&e);
            exit::for_error(&e, 1)
        }
    })
}

/// An error on stderr, unless it is a busy lock or a timeout under `-q`.
pub fn report(e: &lockfn::Error) {
    if !(e.kind() == ErrorKind::Busy && QUIET.load(Ordering::Relaxed)) {
        say!("lockfn: {e}");
    }
}

type CmdResult = Result<u8, lockfn::Error>;

fn parse_target(t: &str) -> Result<Target, lockfn::Error> {
    Target::parse(t)
}

fn print_json(v: &impl serde::Serialize) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(output::json(v).as_bytes());
    let _ = out.write_all(b"\n");
    let _ = out.flush();
}

fn acquired_json(lock: &Lock) -> serde_json::Value {
    serde_json::json!({
        "target": lock.target().canonical(),
        "token": lock.token(),
        "holder": lock.record(),
    })
}

/// What a CLI acquisition ends with, short of an error to report by kind.
pub enum Acquired {
    Lock(Lock),
    /// The wait was cancelled by signal N (already reported): exit 128+N.
    Canceled(u8),
}

/// Acquire with SIGINT/SIGTERM/SIGHUP/SIGQUIT cancelling the wait; a cancel is reported on
/// stderr, naming the signal.
pub fn acquire_cancellable(target: &Target, opts: &mut Options) -> Result<Acquired, lockfn::Error> {
    let fd = signals::pipe().map_err(internal)?;
    signals::catch(&[libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT])
        .map_err(internal)?;
    opts.cancel_fd = Some(fd);
    log!(1, "acquiring {target}");
    let watch = VERBOSITY.load(Ordering::Relaxed) >= 1 && opts.timeout != Some(Duration::ZERO);
    let progress = if watch {
        Some(progress::Progress::start(target, progress::interval()?))
    } else {
        None
    };
    let r = Lock::acquire(target, opts);
    // Before "acquired": no progress line comes after it.
    drop(progress);
    match r {
        Ok(l) => {
            log!(1, "acquired {target}, token {}", l.token());
            Ok(Acquired::Lock(l))
        }
        Err(e) if e.kind() == ErrorKind::Canceled => {
            let sig = signals::drain(fd)
                .first()
                .map(|r| r.signo)
                .unwrap_or(libc::SIGTERM);
            say!(
                "lockfn: waiting for {target} canceled by {}",
                signals::name(sig)
            );
            Ok(Acquired::Canceled(128 + sig as u8))
        }
        Err(e) => Err(e),
    }
}

pub fn internal(e: impl std::fmt::Display) -> lockfn::Error {
    lockfn::Error::new(ErrorKind::Internal, e.to_string())
}

fn acquire(a: AcquireArgs) -> CmdResult {
    if !a.persist {
        return Err(lockfn::Error::new(
            ErrorKind::Invalid,
            "acquire needs --persist: the lock outlives this command until `lockfn release \
             TARGET` (to hold a lock while a command runs use `lockfn run`, from a shell \
             `lockfn hold` or `source lockfn.sh`)",
        ));
    }
    let target = parse_target(&a.target)?;
    let mut opts = a.lock.options()?;
    opts.persist = true;
    let lock = match acquire_cancellable(&target, &mut opts)? {
        Acquired::Lock(l) => l,
        Acquired::Canceled(code) => return Ok(code),
    };
    let mut info = acquired_json(&lock);
    let token = lock.token();
    let lifetime = lockfn::persistent_lifetime(&target, &opts);
    lock.detach()?;
    let keeper = match (a.keep, lifetime.renewal) {
        (true, Some(_)) => Some(keep::spawn(&target, token)?),
        _ => None,
    };
    info["lifetime"] = serde_json::to_value(&lifetime).map_err(internal)?;
    if let Some(pid) = keeper {
        info["keeper"] = pid.into();
    }
    if a.json {
        print_json(&info);
    } else {
        println!("{token}");
    }
    // Stdout stays the bare token (scripts capture it); the lifetime goes to stderr.
    if !QUIET.load(Ordering::Relaxed) {
        let expiry = lifetime.expires.map_or(String::new(), |e| {
            format!(
                " — now until {} (in {:.0} s)",
                output::utc(e),
                (e - lockfn::holder::now_secs()).max(0.0)
            )
        });
        let kept = match (keeper, a.keep) {
            (Some(pid), _) => format!("; kept alive by lockfn keep (pid {pid})"),
            (None, true) => "; --keep is not needed".to_string(),
            _ => String::new(),
        };
        say!(
            "lockfn: {target} is held persistently{expiry}; it ends {}{kept}",
            lifetime.ends
        );
    }
    Ok(0)
}

fn release(a: ReleaseArgs) -> CmdResult {
    if let Some(pattern) = &a.r#match {
        for t in lockfn::release_matching(&a.target, pattern)? {
            println!("released {}", output::value(&t));
        }
        return Ok(0);
    }
    let target = parse_target(&a.target)?;
    let n = lockfn::release_named(&target, a.force)?;
    log!(1, "released {n} slot(s) of {target}");
    Ok(0)
}

fn update(a: TargetArg) -> CmdResult {
    let target = parse_target(&a.target)?;
    lockfn::update_named(&target)?;
    Ok(0)
}

fn describe(st: &Status) -> String {
    if !st.held {
        return format!("{}: free", output::value(&st.target));
    }
    let mut s = format!("{}: held", output::value(&st.target));
    if let (Some(limit), Some(avail)) = (st.limit, st.available) {
        if limit > 1 {
            s.push_str(&format!(
                " ({} of {limit} slots taken)",
                limit as i64 - avail
            ));
        }
    }
    for h in &st.holders {
        let r = &h.record;
        // Holders recorded by other tools (consul lock, consullock) have no known start.
        let age = if r.since > 0.0 {
            format!(
                "for {:.1} s",
                (lockfn::holder::now_secs() - r.since).max(0.0)
            )
        } else {
            "since an unknown time".to_string()
        };
        if h.state == lockfn::holder::Liveness::Persistent {
            // Its process is gone by design: say who took it and until when it lives.
            let until = h.expires.map_or(", until released".to_string(), |e| {
                format!(
                    ", expires {} (in {:.0} s) unless renewed",
                    output::utc(e),
                    (e - lockfn::holder::now_secs()).max(0.0)
                )
            });
            s.push_str(&format!(
                "\n  persistent, taken by pid {} on {} {age}, token {}{until}{}",
                r.pid,
                output::value(&r.host),
                r.token,
                if r.holder.is_empty() {
                    String::new()
                } else {
                    format!(": {}", output::value(&r.holder))
                }
            ));
            continue;
        }
        s.push_str(&format!(
            "\n  pid {} on {} ({}), token {}, {}{}{}",
            r.pid,
            output::value(&r.host),
            serde_json::to_value(h.state)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            r.token,
            age,
            if r.persist { ", persistent" } else { "" },
            if r.holder.is_empty() {
                String::new()
            } else {
                format!(": {}", output::value(&r.holder))
            }
        ));
    }
    for (k, v) in &st.details {
        s.push_str(&format!(
            "\n  {}: {}",
            output::value(k),
            output::value(&v.to_string())
        ));
    }
    s
}

fn status(a: StatusArgs) -> CmdResult {
    let target = parse_target(&a.target)?;
    let st = lockfn::status(&target)?;
    if a.json {
        print_json(&st);
    } else {
        println!("{}", describe(&st));
    }
    Ok(if a.check && !st.held { 1 } else { 0 })
}

fn list(a: ListArgs) -> CmdResult {
    let all = lockfn::list(&a.prefix)?;
    if a.json {
        print_json(&all);
    } else {
        for st in &all {
            println!("{}", describe(st));
        }
    }
    Ok(0)
}

fn gc(a: GcArgs) -> CmdResult {
    let n = lockfn::gc(a.scope.as_deref().unwrap_or(""))?;
    if a.json {
        print_json(&serde_json::json!({"removed": n}));
    } else {
        println!("removed {n}");
    }
    Ok(0)
}

fn watch(a: WatchArgs) -> CmdResult {
    let target = parse_target(&a.target)?;
    if a.interval.is_nan() || a.interval <= 0.0 {
        return Err(lockfn::Error::new(
            ErrorKind::Invalid,
            "--interval must be positive",
        ));
    }
    let interval = Options::timeout_secs(a.interval)?.unwrap_or(Duration::from_millis(500));
    let end = match a.duration {
        Some(d) if d.is_nan() || d < 0.0 => {
            return Err(lockfn::Error::new(
                ErrorKind::Invalid,
                format!("--for {d}: must be 0 or more seconds"),
            ))
        }
        // Too far to add to the clock (1e19, inf): no end.
        Some(d) => Options::timeout_secs(d)?.and_then(|d| std::time::Instant::now().checked_add(d)),
        None => None,
    };
    let sigfd = signals::pipe().map_err(internal)?;
    signals::catch(&[libc::SIGINT, libc::SIGTERM, libc::SIGHUP]).map_err(internal)?;
    let mut last: Option<String> = None;
    let mut printed = 0u64;
    loop {
        let st = lockfn::status(&target)?;
        // Compare what matters, not the timestamps that change on every look.
        let key = serde_json::to_string(&(
            st.held,
            st.available,
            st.holders
                .iter()
                .map(|h| (h.record.token, h.record.pid, h.state))
                .collect::<Vec<_>>(),
        ))
        .unwrap_or_default();
        if last.as_deref() != Some(&key) {
            if a.json {
                let mut v = serde_json::to_value(&st).map_err(internal)?;
                v["time"] = lockfn::holder::now_secs().into();
                print_json(&v);
            } else {
                println!("{}", describe(&st));
            }
            last = Some(key);
            printed += 1;
            if a.count.is_some_and(|c| printed >= c) {
                return Ok(0);
            }
        }
        let mut wait = interval;
        if let Some(end) = end {
            let left = end.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Ok(0);
            }
            wait = wait.min(left);
        }
        if signals::wait(sigfd, wait.as_millis().min(i32::MAX as u128) as i32) {
            return Ok(0);
        }
    }
}
