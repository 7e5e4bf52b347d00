//! Node-local holder records, outside pmxcfs: `/run/lock/lockfn/pmxcfs/NAME` (root's tmpfs,
//! gone at reboot). A record says which process of this node holds the lock and which
//! incarnation of the lock directory it holds: the mtime it last set on it. That is what lets
//! a waiter prove that a directory is a dead holder's own (see fs.rs) and `status` say who
//! holds it. pmxcfs itself keeps no holder data (a file in a lock directory would stop its
//! expiry).

use crate::holder::HolderRecord;
use serde::{Deserialize, Serialize};
use std::fs::{DirBuilder, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Version 2: identity by mtime. Version 1 records (identity by st_ino) are never trusted.
const RECORD_VERSION: u32 = 2;
/// A record is a few hundred bytes; anything larger is not ours.
const MAX_RECORD: u64 = 64 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeRecord {
    pub v: u32,
    /// The lock directory (`LOCKFN_PMXCFS_DIR`) the lock was taken in.
    pub dir: PathBuf,
    pub name: String,
    /// The mtime (whole seconds) the holder last set on its incarnation, or that pmxcfs gave
    /// it at mkdir: the incarnation's identity.
    pub mtime: i64,
    /// Wall-clock seconds of that mkdir or refresh (for people: status shows it).
    pub refreshed: f64,
    pub holder: HolderRecord,
}

impl NodeRecord {
    pub fn new(dir: &Path, name: &str, mtime: i64, holder: HolderRecord) -> NodeRecord {
        NodeRecord {
            v: RECORD_VERSION,
            dir: dir.to_path_buf(),
            name: name.to_string(),
            mtime,
            refreshed: crate::holder::now_secs(),
            holder,
        }
    }

    /// Does this record describe lock `name` in `dir`?
    fn is_for(&self, dir: &Path, name: &str) -> bool {
        self.v == RECORD_VERSION && self.name == name && same_dir(&self.dir, dir)
    }

    /// Could the directory seen with `mtime` be the incarnation this record describes? Only
    /// a hint (a stat, possibly cached): the proof is a conditional refresh (fs.rs). Ours
    /// carries the recorded mtime, or a later one the holder set before it could record it;
    /// any later incarnation has an mtime past `self.mtime + ttl`.
    pub fn may_describe(&self, mtime: i64, ttl: Duration) -> bool {
        mtime >= self.mtime && mtime < self.mtime.saturating_add(ttl.as_secs() as i64)
    }

    /// Was this record written by the process that `holder` describes?
    pub fn same_holder(&self, holder: &HolderRecord) -> bool {
        self.holder.pid == holder.pid
            && self.holder.start_time == holder.start_time
            && self.holder.boot_id == holder.boot_id
    }
}

fn same_dir(a: &Path, b: &Path) -> bool {
    a == b
        || matches!(
            (std::fs::canonicalize(a), std::fs::canonicalize(b)),
            (Ok(x), Ok(y)) if x == y
        )
}

fn path(name: &str) -> PathBuf {
    super::records_dir().join(name)
}

fn read_any(name: &str) -> Option<NodeRecord> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path(name))
        .ok()?;
    if !f.metadata().ok()?.is_file() {
        return None;
    }
    let mut data = Vec::new();
    f.take(MAX_RECORD).read_to_end(&mut data).ok()?;
    serde_json::from_slice(&data).ok()
}

/// Our record of `name` in `dir`, if there is one.
pub fn read(dir: &Path, name: &str) -> Option<NodeRecord> {
    read_any(name).filter(|r| r.is_for(dir, name))
}

/// Write (replace) the record: a new file renamed over the old one, so readers see a whole
/// record or the previous one.
pub fn write(rec: &NodeRecord) -> io::Result<()> {
    let dir = super::records_dir();
    DirBuilder::new().recursive(true).mode(0o755).create(&dir)?;
    let data = serde_json::to_vec(rec).map_err(io::Error::other)?;
    let tmp = dir.join(format!(".{}.{}.tmp", rec.name, std::process::id()));
    let r = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(&tmp)
        .and_then(|mut f| io::Write::write_all(&mut f, &data))
        .and_then(|_| std::fs::rename(&tmp, path(&rec.name)));
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

/// Remove the record of `name` in `dir` if `is_it` says it is the one to remove.
pub fn remove_if(dir: &Path, name: &str, is_it: impl Fn(&NodeRecord) -> bool) {
    if read(dir, name).is_some_and(|r| is_it(&r)) {
        let _ = std::fs::remove_file(path(name));
    }
}

/// The record files' names (gc).
pub fn names() -> io::Result<Vec<String>> {
    let rdir = super::records_dir();
    let entries = match std::fs::read_dir(&rdir) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    Ok(entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| !n.starts_with('.'))
        .collect())
}
