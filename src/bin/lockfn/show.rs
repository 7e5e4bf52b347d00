//! What the CLI shows about locks: `status`, `list` and `watch`, and the text form of a
//! lock's state they share.

use crate::{duration, internal, output, parse_target, print_json, signals, CmdResult};
use clap::Args;
use lockfn::{ErrorKind, Options, Status};
use std::time::Duration;

#[derive(Args)]
pub struct StatusArgs {
    /// Print JSON
    #[arg(long)]
    pub json: bool,
    /// Exit 0 if held, 1 if free (for scripts)
    #[arg(long)]
    pub check: bool,
    pub target: String,
}

#[derive(Args)]
pub struct ListArgs {
    /// Print JSON (an array)
    #[arg(long)]
    pub json: bool,
    /// A service with an optional name prefix: sem:, pmxcfs:vm-, zk:jobs/
    pub prefix: String,
}

#[derive(Args)]
pub struct WatchArgs {
    /// Time between looks
    #[arg(long, default_value = "0.5", value_name = "DURATION", value_parser = duration::secs)]
    pub interval: f64,
    /// Stop after this many printed changes
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Stop after this long
    #[arg(long = "for", value_name = "DURATION", value_parser = duration::secs)]
    pub duration: Option<f64>,
    /// Print JSON lines
    #[arg(long)]
    pub json: bool,
    pub target: String,
}

pub fn describe(st: &Status) -> String {
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

pub fn status(a: StatusArgs) -> CmdResult {
    let target = parse_target(&a.target)?;
    let st = lockfn::status(&target)?;
    if a.json {
        print_json(&st);
    } else {
        println!("{}", describe(&st));
    }
    Ok(if a.check && !st.held { 1 } else { 0 })
}

pub fn list(a: ListArgs) -> CmdResult {
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

pub fn watch(a: WatchArgs) -> CmdResult {
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
