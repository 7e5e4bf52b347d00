//! The holder record: who holds a lock, readable by anyone through `status`.
//!
//! Every backend stores one of these next to each held slot (in shared memory, in ZooKeeper node
//! data, in a Consul KV value, in a node-local file for pmxcfs). It is also what lets a waiter
//! prove that a holder on this host is dead: same host, same boot, and the pid is gone or now
//! belongs to a process that started at another time (pid reuse).

use serde::{Deserialize, Serialize};
use std::time::{SystemTime, UNIX_EPOCH};

/// Longest holder text kept; longer text is cut at a character boundary.
pub const MAX_HOLDER_TEXT: usize = 256;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HolderRecord {
    pub host: String,
    pub pid: i32,
    /// Process start time in clock ticks after boot (field 22 of /proc/PID/stat).
    pub start_time: u64,
    pub boot_id: String,
    /// Seconds since the Unix epoch when the lock was acquired.
    pub since: f64,
    pub token: u64,
    /// The caller's free text (`--holder`).
    #[serde(default)]
    pub holder: String,
    /// Survives its process (`lockfn acquire --persist`): never recovered as "dead holder".
    #[serde(default, skip_serializing_if = "is_false")]
    pub persist: bool,
    /// Read (shared) lock.
    #[serde(default, skip_serializing_if = "is_false")]
    pub shared: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// What can be proven about a holder from this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Liveness {
    Alive,
    /// Same host and boot, and its process is gone (or the pid was reused).
    Dead,
    /// Another host or another boot of this one: nothing can be proven from here.
    Remote,
}

impl HolderRecord {
    /// A record describing the calling process, with token 0 (the backend fills it in).
    pub fn for_self(text: Option<&str>) -> HolderRecord {
        let pid = std::process::id() as i32;
        HolderRecord {
            host: hostname(),
            pid,
            start_time: process_start_time(pid).unwrap_or(0),
            boot_id: boot_id().to_string(),
            since: now_secs(),
            token: 0,
            holder: truncate(text.unwrap_or(""), MAX_HOLDER_TEXT).to_string(),
            persist: false,
            shared: false,
        }
    }

    pub fn is_this_boot(&self) -> bool {
        self.host == hostname() && self.boot_id == boot_id()
    }

    pub fn liveness(&self) -> Liveness {
        if !self.is_this_boot() {
            return Liveness::Remote;
        }
        match process_stat(self.pid) {
            // A zombie (exited, not yet reaped by its parent) holds nothing any more.
            Some(('Z' | 'X', _)) => Liveness::Dead,
            // A start time of 0 means we could not read ours when recording; then only the pid
            // can be compared, which is still right unless the pid was reused.
            Some((_, t)) if t == self.start_time || self.start_time == 0 => Liveness::Alive,
            Some(_) => Liveness::Dead,
            None => {
                if pid_exists(self.pid) {
                    Liveness::Alive
                } else {
                    Liveness::Dead
                }
            }
        }
    }

    /// Is this record one of the calling process's own?
    pub fn is_own_process(&self) -> bool {
        self.is_this_boot()
            && self.pid == std::process::id() as i32
            && (self.start_time == 0 || Some(self.start_time) == process_start_time(self.pid))
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".to_string())
    }
}

fn pid_exists(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // kill(pid, 0): ESRCH means gone; EPERM means it exists under another user.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Start time of a process in clock ticks after boot, or None if it does not exist.
pub fn process_start_time(pid: i32) -> Option<u64> {
    process_stat(pid).map(|(_, t)| t)
}

/// State letter (R, S, Z, …) and start time of a process, or None if it does not exist.
fn process_stat(pid: i32) -> Option<(char, u64)> {
    if pid <= 0 {
        return None;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: fields after it are
    // counted from the last ')'. Field 3 is the state, field 22 (the 20th after the name)
    // the start time.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_whitespace();
    let state = f.next()?.chars().next()?;
    Some((state, f.nth(18)?.parse().ok()?))
}

pub fn hostname() -> String {
    static HOST: once_cell::sync::OnceCell<String> = once_cell::sync::OnceCell::new();
    HOST.get_or_init(|| {
        nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "localhost".to_string())
    })
    .clone()
}

pub fn boot_id() -> &'static str {
    static BOOT: once_cell::sync::OnceCell<String> = once_cell::sync::OnceCell::new();
    BOOT.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    })
}

pub fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Cut `s` to at most `max` bytes at a character boundary.
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_record_is_alive_and_own() {
        let r = HolderRecord::for_self(Some("me"));
        assert_eq!(r.liveness(), Liveness::Alive);
        assert!(r.is_own_process());
        assert!(r.start_time > 0);
    }

    #[test]
    fn reused_pid_is_dead() {
        let mut r = HolderRecord::for_self(None);
        r.start_time += 1;
        assert_eq!(r.liveness(), Liveness::Dead);
        assert!(!r.is_own_process());
    }

    #[test]
    fn a_zombie_is_dead() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let mut r = HolderRecord::for_self(None);
        r.pid = child.id() as i32;
        r.start_time = process_start_time(r.pid).unwrap_or(0);
        // Not reaped yet: a zombie once it exits.
        let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while r.liveness() != Liveness::Dead && std::time::Instant::now() < end {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(r.liveness(), Liveness::Dead);
        child.wait().unwrap();
    }

    #[test]
    fn other_host_is_remote() {
        let mut r = HolderRecord::for_self(None);
        r.host = "elsewhere.invalid".into();
        assert_eq!(r.liveness(), Liveness::Remote);
    }

    #[test]
    fn truncates_at_char_boundary() {
        assert_eq!(truncate("ééé", 3), "é");
        assert_eq!(truncate("abc", 10), "abc");
    }

    #[test]
    fn json_round_trip_ignores_unknown_fields() {
        let r = HolderRecord::for_self(Some("x"));
        let mut v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        v["future_field"] = 1.into();
        let back: HolderRecord = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
    }
}
