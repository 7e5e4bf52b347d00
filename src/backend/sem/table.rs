//! The holder-record table `/dev/shm/lockfn@table.NAME`: one fixed-size slot per count of the
//! semaphore, in shared memory, changed only under a process-shared robust mutex in its
//! header. Uncontended, taking and releasing a slot costs no syscall (glibc's mutex and
//! semaphore are atomics until someone has to sleep); the kernel hands the mutex on when a
//! process dies holding it (EOWNERDEAD: robust futex list), so a SIGKILL never wedges it.
//!
//! Invariants (every change under the mutex):
//! - a slot is filled after its count was taken from the semaphore and freed before the count
//!   is posted back, so `value + used <= limit` except for counts taken by others (resourcelock)
//!   or in flight (a waiter woken, not yet recorded), which only make the left side smaller;
//! - so `value + used > limit` proves that someone posted a count nobody took (resourcelock's
//!   forced `unget`): [`Locked::reconcile`] then takes that many slots back from the oldest
//!   holders, who learn it (`Lost`), and a release that finds its slot gone posts nothing;
//! - a dead holder's slot is freed and posted once (freeing it is done once, under the mutex).

use super::shm::{self, Expect, Mapping, SHM_DIR};
use super::{posix::Sem, tokens};
use crate::holder::{boot_id, hostname, HolderRecord, Liveness, MAX_HOLDER_TEXT};
use crate::{Error, ErrorKind, Result};
use std::path::PathBuf;

const MAGIC: u64 = u64::from_le_bytes(*b"lockfnT1");
/// Slots a table has at most (`--limit` above it is refused on sem:).
pub(super) const MAX_SLOTS: u32 = 4096;
/// The table of lock NAME is `/dev/shm/lockfn@table.NAME`: '@' is in no lock name, so no name
/// can make another of our files, and the record files of lockfn before this table
/// (`/dev/shm/lockfn.NAME`, a JSON document) are never mistaken for a table.
pub(super) const RECORD_PREFIX: &str = "lockfn@table.";

#[repr(C)]
struct Header {
    magic: u64,
    len: u64,
    limit: u32,
    nslots: u32,
    next_token: u64,
    /// Bumped whenever the table is paired with another semaphore file (see [`Locked::pair_with`]).
    generation: u64,
    /// Inode of the semaphore this table describes (0: not paired yet).
    sem_ino: u64,
    /// Set by gc, under the mutex, before it unlinks the files: whoever keeps this table
    /// mapped (a pooled pair, a waiter) must open the name again.
    dead: u32,
    _pad: u32,
    mutex: libc::pthread_mutex_t,
}

#[repr(C)]
struct Slot {
    /// 0: free.
    token: u64,
    pid: i32,
    flags: u32,
    start_time: u64,
    since_us: u64,
    text_len: u32,
    _pad: u32,
    text: [u8; MAX_HOLDER_TEXT],
}

const PERSIST: u32 = 1;

fn table_len(nslots: u32) -> usize {
    std::mem::size_of::<Header>() + nslots as usize * std::mem::size_of::<Slot>()
}

const EXPECT: Expect = Expect {
    min: std::mem::size_of::<Header>() + std::mem::size_of::<Slot>(),
    max: std::mem::size_of::<Header>() + MAX_SLOTS as usize * std::mem::size_of::<Slot>(),
    what: "a lockfn holder table",
};

pub(super) fn table_path(name: &str) -> PathBuf {
    PathBuf::from(format!("{SHM_DIR}/{RECORD_PREFIX}{name}"))
}

/// A mapped, checked table.
pub(super) struct Table {
    map: Mapping,
    /// Read once when mapped and checked against the size: bounds never come from shared
    /// memory afterwards.
    nslots: usize,
    pub path: PathBuf,
}

impl Table {
    /// Open `lockfn@table.NAME`; None if it does not exist. The descriptor is returned for gc
    /// (link count).
    pub fn open(name: &str) -> Result<Option<(Table, std::os::fd::OwnedFd)>> {
        let path = table_path(name);
        let Some((map, fd)) = shm::open_checked(&path, &EXPECT)? else {
            return Ok(None);
        };
        // Safety: the file is at least a header long (checked).
        let h = unsafe { &*(map.ptr() as *const Header) };
        let (magic, len, limit, nslots) = (h.magic, h.len, h.limit, h.nslots);
        if magic != MAGIC
            || len != map.len() as u64
            || nslots == 0
            || nslots > MAX_SLOTS
            || table_len(nslots) != map.len()
            || limit < nslots
        {
            return Err(Error::new(
                ErrorKind::Invalid,
                format!(
                    "{} is not a lockfn holder table of this version (an older lockfn's \
                     record file, or damaged); remove it when no lockfn process uses the lock",
                    path.display()
                ),
            ));
        }
        let nslots = nslots as usize;
        Ok(Some((Table { map, nslots, path }, fd)))
    }

    /// Create `lockfn@table.NAME` for `limit` slots with exactly `mode`; None if it exists.
    pub fn create(name: &str, mode: u32, limit: u32) -> Result<Option<Table>> {
        let path = table_path(name);
        let first_token = tokens::seed()?;
        let nslots = limit.clamp(1, MAX_SLOTS);
        let len = table_len(nslots);
        let map = shm::create_atomically(&path, len, mode, |m| {
            // Safety: a fresh zeroed file of `len` bytes, ours alone until linked.
            unsafe { init_header(m.ptr() as *mut Header, len, limit, nslots, first_token) };
        })?;
        Ok(map.map(|map| Table {
            map,
            nslots: nslots as usize,
            path,
        }))
    }

    /// Inode of the file mapped.
    pub fn ino(&self) -> u64 {
        self.map.ino
    }

    /// Its owner (whose token floor gc raises).
    pub fn uid(&self) -> u32 {
        self.map.uid
    }

    fn header(&self) -> *mut Header {
        self.map.ptr() as *mut Header
    }

    /// Take the table's mutex.
    pub fn lock(&self) -> Result<Locked<'_>> {
        let m = unsafe { std::ptr::addr_of_mut!((*self.header()).mutex) };
        match unsafe { libc::pthread_mutex_lock(m) } {
            0 => {}
            // Its last owner died inside: every change is made so that a half-done one is
            // harmless (a slot's token is written last, freed first).
            libc::EOWNERDEAD => {
                unsafe { libc::pthread_mutex_consistent(m) };
            }
            e => {
                return Err(Error::os(
                    format!("cannot lock the holder table {}", self.path.display()),
                    std::io::Error::from_raw_os_error(e),
                ))
            }
        }
        Ok(Locked { t: self })
    }
}

/// Safety: `h` points to a zeroed, writable, unshared header followed by `nslots` slots.
unsafe fn init_header(h: *mut Header, len: usize, limit: u32, nslots: u32, first_token: u64) {
    (*h).magic = MAGIC;
    (*h).len = len as u64;
    (*h).limit = limit;
    (*h).nslots = nslots;
    (*h).next_token = first_token;
    let mut attr: libc::pthread_mutexattr_t = std::mem::zeroed();
    libc::pthread_mutexattr_init(&mut attr);
    libc::pthread_mutexattr_setpshared(&mut attr, libc::PTHREAD_PROCESS_SHARED);
    libc::pthread_mutexattr_setrobust(&mut attr, libc::PTHREAD_MUTEX_ROBUST);
    libc::pthread_mutex_init(std::ptr::addr_of_mut!((*h).mutex), &attr);
    libc::pthread_mutexattr_destroy(&mut attr);
}

/// The table with its mutex held; unlocked on drop.
pub(super) struct Locked<'a> {
    t: &'a Table,
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        let m = unsafe { std::ptr::addr_of_mut!((*self.t.header()).mutex) };
        unsafe { libc::pthread_mutex_unlock(m) };
    }
}

/// A holder's identity as a slot keeps it.
pub(super) struct NewHolder<'a> {
    pub pid: i32,
    pub start_time: u64,
    pub text: Option<&'a str>,
    pub persist: bool,
}

impl Locked<'_> {
    // The memory is shared with other processes and guarded by the mutex this guard holds,
    // not by Rust's borrows: `&self` hands out `&mut` to it, one short use at a time.
    #[allow(clippy::mut_from_ref)]
    fn h(&self) -> &mut Header {
        // Safety: the header is mapped, and we hold its mutex.
        unsafe { &mut *self.t.header() }
    }

    #[allow(clippy::mut_from_ref)]
    fn slot(&self, i: usize) -> &mut Slot {
        assert!(i < self.t.nslots);
        // Safety: i is within the checked length, and we hold the mutex.
        unsafe { &mut *((self.t.header().add(1) as *mut Slot).add(i)) }
    }

    pub fn limit(&self) -> u32 {
        self.h().limit
    }

    pub fn dead(&self) -> bool {
        self.h().dead != 0
    }

    pub fn set_dead(&self) {
        self.h().dead = 1;
    }

    pub fn generation(&self) -> u64 {
        self.h().generation
    }

    pub fn sem_ino(&self) -> u64 {
        self.h().sem_ino
    }

    pub fn next_token(&self) -> u64 {
        self.h().next_token
    }

    /// Pair the table with the semaphore file `ino` (the one at the name now). A table that
    /// described another one forgets its holders: they hold a semaphore that is no longer
    /// the lock, and learn it (`Lost`).
    pub fn pair_with(&self, ino: u64) {
        if self.h().sem_ino != 0 {
            for i in 0..self.t.nslots {
                self.slot(i).token = 0;
            }
        }
        let h = self.h();
        h.sem_ino = ino;
        h.generation = h.generation.wrapping_add(1);
    }

    /// Record a holder in a free slot, with the next token; None when every slot is taken.
    pub fn claim(&self, who: &NewHolder) -> Option<(usize, HolderRecord)> {
        let i = (0..self.t.nslots).find(|&i| self.slot(i).token == 0)?;
        let h = self.h();
        let token = h.next_token.max(1);
        h.next_token = token + 1;
        let mut rec = HolderRecord::for_process(who.pid, who.start_time, who.text);
        rec.token = token;
        rec.persist = who.persist;
        let s = self.slot(i);
        s.pid = who.pid;
        s.start_time = who.start_time;
        s.flags = if who.persist { PERSIST } else { 0 };
        s.since_us = (rec.since * 1e6) as u64;
        let text = rec.holder.as_bytes();
        s.text[..text.len()].copy_from_slice(text);
        s.text_len = text.len() as u32;
        s.token = token; // last: a slot is a record once it has a token
        Some((i, rec))
    }

    /// Does slot `i` still hold `token`?
    pub fn holds(&self, i: usize, token: u64) -> bool {
        i < self.t.nslots && self.slot(i).token == token
    }

    pub fn free(&self, i: usize) {
        self.slot(i).token = 0;
    }

    pub fn used(&self) -> u32 {
        (0..self.t.nslots)
            .filter(|&i| self.slot(i).token != 0)
            .count() as u32
    }

    fn record(&self, i: usize) -> Option<HolderRecord> {
        let s = self.slot(i);
        if s.token == 0 {
            return None;
        }
        let len = (s.text_len as usize).min(MAX_HOLDER_TEXT);
        // The table lives in this boot's tmpfs, on this host: its holders are local.
        Some(HolderRecord {
            host: hostname(),
            pid: s.pid,
            start_time: s.start_time,
            boot_id: boot_id().to_string(),
            since: s.since_us as f64 / 1e6,
            token: s.token,
            holder: String::from_utf8_lossy(&s.text[..len]).into_owned(),
            persist: s.flags & PERSIST != 0,
            shared: false,
        })
    }

    /// Every holder, oldest token first, with its slot.
    pub fn holders(&self) -> Vec<(usize, HolderRecord)> {
        let mut v: Vec<_> = (0..self.t.nslots)
            .filter_map(|i| self.record(i).map(|r| (i, r)))
            .collect();
        v.sort_by_key(|(_, r)| r.token);
        v
    }

    /// Give back the slots of holders proven dead (`live` says who is): freed, then posted.
    pub fn recover_dead(&self, sem: &Sem, mut live: impl FnMut(&HolderRecord) -> Liveness) -> u32 {
        let mut n = 0;
        for (i, h) in self.holders() {
            if !h.persist && live(&h) == Liveness::Dead {
                self.free(i);
                if sem.post().is_ok() {
                    n += 1;
                }
            }
        }
        n
    }

    /// Take back, from the oldest holders, the slots that someone else's forced post already
    /// gave back (see the module comment). Returns how many.
    pub fn reconcile(&self, sem: &Sem) -> u32 {
        let over = sem.value() + self.used() as i64 - self.limit() as i64;
        if over <= 0 {
            return 0;
        }
        let mut n = 0;
        for (i, _) in self.holders().into_iter().take(over as usize) {
            self.free(i);
            n += 1;
        }
        n
    }

    /// Free the oldest slot (a count was taken while every slot is recorded: a forced post).
    pub fn free_oldest(&self) -> bool {
        match self.holders().first() {
            Some((i, _)) => {
                self.free(*i);
                true
            }
            None => false,
        }
    }
}
