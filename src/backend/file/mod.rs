//! The `file:` service: flock(2) on a local file, the lock flock(1) takes.
//!
//! `lockfn run file:/var/lock/x -- cmd` and `flock /var/lock/x cmd` exclude each other;
//! `--shared` is `flock -s`. The file is opened read-only and created if missing (mode from
//! the options, default 0600), as flock(1) opens it (O_RDONLY|O_CREAT|O_NOCTTY); its content
//! is never read or written (scripts lock themselves with `flock "$0"`).
//!
//! - A lock is on our open file description: it ends when we unlock or our process dies, so
//!   there is no dead holder to recover, nothing for `gc`, and no persistent lock.
//! - Tokens: a counter per path in `LOCKFN_RUN_DIR/file/` (default /run/lock/lockfn/file),
//!   raised while holding the lock (tokens.rs).
//! - `status` names the holders the kernel knows (/proc/locks: the pid that took each flock,
//!   including flock(1)'s and other programs').
//! - Hostile files: the path is opened with O_NONBLOCK (a FIFO planted there cannot block
//!   the open) and must be a regular file or a directory (flock(1) locks directories too);
//!   a device, FIFO or socket is refused. Following a symlink another user planted in a
//!   sticky world-writable directory such as /run/lock is refused by the kernel itself
//!   (fs.protected_symlinks, on by default in Debian), with EACCES.

mod tokens;

use super::flock::{self, Flocked, Holder, Mode, Request};
use super::{GcScope, Held, HolderView, Status, Wait};
use crate::holder::{process_start_time, HolderRecord};
use crate::target::{invalid, Located, MAX_PATH};
use crate::{Error, ErrorKind, Options, Result, Target};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub struct FileBackend;

/// Where a `file:PATH` lock lives: the path itself.
struct Place {
    path: PathBuf,
}

fn path_of(target: &Target) -> Result<&Path> {
    Ok(&target.place::<Place>()?.path)
}

/// Open (create) the lock file as flock(1) does, refusing what is not a file or directory.
fn open_lock_file(path: &Path, mode: u32) -> io::Result<File> {
    let open = |create: bool| {
        let mut flags = libc::O_NOCTTY | libc::O_CLOEXEC | libc::O_NONBLOCK;
        if create {
            flags |= libc::O_CREAT;
        }
        OpenOptions::new()
            .read(true)
            .custom_flags(flags)
            .mode(mode)
            .open(path)
    };
    let file = match open(true) {
        // A directory: O_CREAT on a directory is EISDIR; flock(1) then opens it read-only.
        Err(e) if e.raw_os_error() == Some(libc::EISDIR) => open(false)?,
        r => r?,
    };
    let ft = file.metadata()?.file_type();
    if ft.is_file() || ft.is_dir() {
        Ok(file)
    } else {
        let what = if ft.is_fifo() {
            "a FIFO"
        } else if ft.is_socket() {
            "a socket"
        } else if ft.is_char_device() || ft.is_block_device() {
            "a device"
        } else {
            "not a regular file"
        };
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("it is {what}, not a lock file"),
        ))
    }
}

fn os_error(target: &Target, what: &str, path: &Path, e: io::Error) -> Error {
    let kind = match e.raw_os_error() {
        Some(libc::EACCES | libc::EPERM | libc::EROFS) => ErrorKind::Permission,
        Some(libc::ENOENT | libc::ENOTDIR) => ErrorKind::Invalid,
        None => ErrorKind::Invalid,
        _ => ErrorKind::Internal,
    };
    Error::new(kind, format!("{target}: {what} {}: {e}", path.display()))
}

/// The holders of `file` as status shows them.
fn holder_views(holders: &[Holder]) -> Vec<HolderView> {
    holders
        .iter()
        .map(|h| {
            let start = process_start_time(h.pid).unwrap_or(0);
            let mut r = HolderRecord::for_process(h.pid, start, None);
            r.shared = h.shared;
            r.since = 0.0; // the kernel does not say when
            HolderView::from(r)
        })
        .collect()
}

fn busy_error(target: &Target, wait: &Wait, holders: &[Holder]) -> Error {
    let views = holder_views(holders);
    wait.busy(target, views.first().map(|v| &v.record))
}

fn check_options(target: &Target, opts: &Options) -> Result<()> {
    let refuse = |why: &str| Err(Error::new(ErrorKind::Invalid, format!("{target}: {why}")));
    if opts.limit > 1 {
        return refuse("flock(2) has no counting lock (limit > 1): use sem: for a semaphore");
    }
    if opts.persist {
        return refuse(
            "a flock(2) lock ends with its process and cannot persist: use sem: for a \
             persistent lock on this host",
        );
    }
    Ok(())
}

impl super::Backend for FileBackend {
    fn scheme(&self) -> &'static str {
        "file"
    }

    fn is_local(&self) -> bool {
        true
    }

    /// An absolute path without empty, `.` or `..` segments (so that one file has one
    /// target text), at most [`MAX_PATH`] bytes.
    fn check_name(&self, text: &str, name: &str) -> Result<()> {
        if !name.starts_with('/') {
            return Err(invalid(
                text,
                "file: needs an absolute path, e.g. file:/run/lock/backup",
            ));
        }
        if name.len() > MAX_PATH {
            return Err(invalid(
                text,
                &format!("the path is {} bytes long (at most {MAX_PATH})", name.len()),
            ));
        }
        if name.len() > 1
            && name[1..]
                .split('/')
                .any(|seg| seg.is_empty() || seg == "." || seg == "..")
        {
            return Err(invalid(
                text,
                "the path has an empty, '.' or '..' segment (write it in its plain form)",
            ));
        }
        Ok(())
    }

    fn locate(&self, _text: &str, name: &str) -> Result<Located> {
        let path = PathBuf::from(name);
        Ok(Located::named(
            "file",
            name,
            name.to_string(),
            Place { path },
        ))
    }

    fn acquire(&self, target: &Target, opts: &Options, wait: &Wait) -> Result<Box<dyn Held>> {
        check_options(target, opts)?;
        let path = path_of(target)?;
        let mode = if opts.shared {
            Mode::Shared
        } else {
            Mode::Exclusive
        };
        let open = |p: &Path| open_lock_file(p, opts.mode);
        let flocked = flock::acquire(
            &Request {
                target,
                path,
                mode,
                open: &open,
                os: &|what, e| os_error(target, what, path, e),
                busy: &|holders| busy_error(target, wait, holders),
            },
            wait,
        )?;
        let mut record = HolderRecord::for_self(opts.holder.as_deref());
        record.shared = opts.shared;
        record.token = tokens::next(path);
        Ok(Box::new(FileHeld {
            target: target.clone(),
            path: path.to_path_buf(),
            flocked: Some(flocked),
            record,
        }))
    }

    fn status(&self, target: &Target) -> Result<Status> {
        let path = path_of(target)?;
        let mut st = Status::new(target);
        st.details
            .insert("path".into(), path.display().to_string().into());
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(st),
            Err(e) => return Err(os_error(target, "cannot open", path, e)),
        };
        let holders = flock::holders(&file);
        st.held = !holders.is_empty();
        st.limit = Some(1);
        st.holders = holder_views(&holders);
        Ok(st)
    }

    /// The locked files directly in the directory `prefix` names (`file:/run/lock/`), or
    /// beside the partial path it names (`file:/run/lock/backup-`: the caller filters).
    fn list(&self, prefix: &Target) -> Result<Vec<Status>> {
        let named = match prefix.name() {
            "" => {
                return Err(Error::new(
                    ErrorKind::Invalid,
                    "file: list needs a directory, e.g. lockfn list file:/run/lock/",
                ))
            }
            n => PathBuf::from(n),
        };
        let dir = if named.is_dir() {
            named
        } else {
            named.parent().map_or(named.clone(), Path::to_path_buf)
        };
        let entries =
            std::fs::read_dir(&dir).map_err(|e| os_error(prefix, "cannot list", &dir, e))?;
        let mut out = Vec::new();
        // Bounded: a directory of a million files is not walked whole.
        for e in entries.flatten().take(10_000) {
            let p = e.path();
            let Some(text) = p.to_str() else { continue };
            let Ok(t) = Target::parse(&format!("file:{text}")) else {
                continue;
            };
            let st = self.status(&t)?;
            if st.held {
                out.push(st);
            }
        }
        out.sort_by(|a, b| a.target.cmp(&b.target));
        Ok(out)
    }

    /// Nothing: the kernel drops a flock when its holder dies.
    fn gc(&self, _scope: &GcScope) -> Result<u32> {
        Ok(0)
    }

    fn release_named(&self, target: &Target, _force: bool) -> Result<u32> {
        let st = self.status(target)?;
        let Some(h) = st.holders.first() else {
            return Err(Error::new(
                ErrorKind::NotHeld,
                format!("{target} is not held"),
            ));
        };
        Err(Error::new(
            ErrorKind::Invalid,
            format!(
                "{target}: a flock(2) lock ends only with its holder (pid {} on {}); stop that \
                 process to free it",
                h.record.pid, h.record.host
            ),
        ))
    }

    fn update_named(&self, target: &Target) -> Result<()> {
        Err(Error::new(
            ErrorKind::NotHeld,
            format!("{target}: a flock(2) lock cannot persist, so there is nothing to update"),
        ))
    }
}

/// A held flock.
struct FileHeld {
    target: Target,
    path: PathBuf,
    flocked: Option<Flocked>,
    record: HolderRecord,
}

impl Held for FileHeld {
    fn token(&self) -> u64 {
        self.record.token
    }

    fn record(&self) -> &HolderRecord {
        &self.record
    }

    /// The lock cannot expire; it is lost only when the file at the path is no longer the
    /// one we locked (removed or replaced: a new flock(1) user would lock the new file).
    fn update(&mut self) -> Result<()> {
        match &self.flocked {
            Some(f) if flock::still_linked(f.file(), &self.path) => Ok(()),
            Some(_) => Err(Error::new(
                ErrorKind::Lost,
                format!(
                    "{}: {} was removed or replaced while held; the lock no longer excludes \
                     anyone",
                    self.target,
                    self.path.display()
                ),
            )),
            None => Err(Error::new(
                ErrorKind::NotHeld,
                format!("{} is not held", self.target),
            )),
        }
    }

    fn check_interval(&self) -> Option<Duration> {
        Some(Duration::from_secs(1))
    }

    fn release(&mut self) -> Result<()> {
        // Dropping unlocks (LOCK_UN on the open file description) and closes.
        match self.flocked.take() {
            Some(_) => Ok(()),
            None => Err(Error::new(
                ErrorKind::NotHeld,
                format!("{} is not held", self.target),
            )),
        }
    }

    fn detach(&mut self) -> Result<()> {
        Err(Error::new(
            ErrorKind::Invalid,
            format!(
                "{}: a flock(2) lock cannot outlive its process",
                self.target
            ),
        ))
    }
}
