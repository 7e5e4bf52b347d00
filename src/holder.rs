//! The holder record: who holds a lock, readable through `status`, and what this host can
//! prove about it (the /proc and pidfd work is in proc.rs).
//!
//! Every backend stores one of these next to each held slot (in shared memory, in ZooKeeper node
//! data, in a Consul KV value, in a node-local file for pmxcfs). It is also what lets a waiter
//! prove that a holder on this host is dead: same host, same boot, and the pid is gone or now
//! belongs to a process that started at another time (pid reuse).

use crate::proc::{other_threads_run, pid_exists, process_stat};
pub use crate::proc::{own_process, process_start_time, LivenessWatch};
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
    /// A persistent lock (`persist`): it outlives the process that took it by design, so
    /// that process's state says nothing. Only `status` and `list` show this; recovery
    /// decisions never see it ([`HolderRecord::liveness`] does not return it).
    Persistent,
}

impl HolderRecord {
    /// A record describing the calling process, with token 0 (the backend fills it in).
    pub fn for_self(text: Option<&str>) -> HolderRecord {
        let (pid, start_time) = own_process();
        HolderRecord::for_process(pid, start_time, text)
    }

    /// A record describing process `pid` started at `start_time` (what [`own_process`]
    /// returned), with token 0.
    pub fn for_process(pid: i32, start_time: u64, text: Option<&str>) -> HolderRecord {
        HolderRecord {
            host: hostname(),
            pid,
            start_time,
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
        self.local_liveness().0
    }

    /// Liveness of a holder of this boot from /proc, and whether /proc showed the recorded
    /// start time (the process at that pid is the holder, not a reuse of its pid).
    pub(crate) fn local_liveness(&self) -> (Liveness, bool) {
        match process_stat(self.pid) {
            // A zombie (exited, not yet reaped by its parent) holds nothing any more — unless
            // only its main thread exited and other threads still run (the leader shows 'Z'
            // until the last thread exits): that process is judged like a running one.
            Some(('Z' | 'X', _)) if !other_threads_run(self.pid) => (Liveness::Dead, false),
            Some((_, t)) if t == self.start_time => (Liveness::Alive, true),
            // A start time of 0 means we could not read ours when recording; then only the pid
            // can be compared, which is still right unless the pid was reused.
            Some(_) if self.start_time == 0 => (Liveness::Alive, false),
            Some(_) => (Liveness::Dead, false),
            None => {
                if pid_exists(self.pid) {
                    (Liveness::Alive, false)
                } else {
                    (Liveness::Dead, false)
                }
            }
        }
    }

    /// Is this record one of the calling process's own?
    pub fn is_own_process(&self) -> bool {
        let (pid, start_time) = own_process();
        self.is_this_boot()
            && self.pid == pid
            && (self.start_time == 0 || self.start_time == start_time)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".to_string())
    }
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
    fn own_process_matches_proc() {
        let (pid, start) = own_process();
        assert_eq!(pid, std::process::id() as i32);
        assert_eq!(Some(start), process_start_time(pid));
        // cached: the same again
        assert_eq!(own_process(), (pid, start));
    }

    #[test]
    fn a_command_name_that_is_not_utf8_still_has_a_start_time() {
        use std::os::unix::ffi::OsStrExt;
        // The command name is the executable's file name: a symlink named with a stray byte.
        let dir = std::env::temp_dir().join(format!("lockfn-comm-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let link = dir.join(std::ffi::OsStr::from_bytes(b"sl) ee\xffp"));
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink("/bin/sleep", &link).unwrap();
        let mut child = std::process::Command::new(&link).arg("30").spawn().unwrap();
        let pid = child.id() as i32;
        let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
        // (until the exec has happened and the name is the link's)
        while std::time::Instant::now() < end
            && !std::fs::read(format!("/proc/{pid}/stat"))
                .unwrap_or_default()
                .contains(&0xff)
        {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let t = process_start_time(pid);
        child.kill().unwrap();
        child.wait().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(t.is_some_and(|t| t > 0), "{t:?}");
    }

    #[test]
    fn a_process_whose_main_thread_exited_is_alive() {
        // A child whose main thread exits while another thread runs: the leader shows 'Z'.
        // (python3: its main thread calls pthread_exit while a second thread sleeps.)
        let mut child = std::process::Command::new("python3")
            .args([
                "-c",
                "import threading, time, ctypes\n\
                 threading.Thread(target=time.sleep, args=(30,)).start()\n\
                 ctypes.CDLL(None).pthread_exit(None)",
            ])
            .spawn()
            .expect("python3");
        let mut r = HolderRecord::for_self(None);
        r.pid = child.id() as i32;
        r.start_time = process_start_time(r.pid).unwrap_or(0);
        let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::time::Instant::now() < end
            && !matches!(process_stat(r.pid), Some(('Z', _)) | None)
        {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let state = process_stat(r.pid);
        let threads = other_threads_run(r.pid);
        let alive_as_leader_zombie = r.liveness();
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(matches!(state, Some(('Z', _))), "{state:?}");
        assert!(threads);
        assert_eq!(alive_as_leader_zombie, Liveness::Alive);
        assert_eq!(r.liveness(), Liveness::Dead);
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
