//! Errors: a kind that maps to one C return code and CLI exit code, and a message that carries
//! its context (which target, which server, what the service said).

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// Held elsewhere: try-once failed or the timeout passed.
    Busy,
    /// Bad argument: target, option, NULL pointer.
    Invalid,
    /// The lock was held and is gone (session expired, directory removed).
    Lost,
    /// Not held by this handle/caller (double release, nothing to release).
    NotHeld,
    /// The service cannot be reached or is not running.
    Unavailable,
    /// The service or the OS refused (ACL, file mode, token).
    Permission,
    /// The wait was cancelled (cancel fd readable, SIGINT/SIGTERM in the CLI).
    Canceled,
    /// A handle used in a child process after fork().
    Forked,
    /// A bug or an unexpected answer; never a panic across the C ABI.
    Internal,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Busy => "busy",
            ErrorKind::Invalid => "invalid",
            ErrorKind::Lost => "lost",
            ErrorKind::NotHeld => "not held",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Permission => "permission denied",
            ErrorKind::Canceled => "canceled",
            ErrorKind::Forked => "forked",
            ErrorKind::Internal => "internal error",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error {
            kind,
            message: message.into(),
        }
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// Map an OS error to a kind, with `what` saying what was being done to which target.
    pub fn os(what: impl fmt::Display, err: std::io::Error) -> Error {
        let kind = match err.raw_os_error() {
            Some(libc::EACCES) | Some(libc::EPERM) => ErrorKind::Permission,
            Some(libc::EINVAL) | Some(libc::ENAMETOOLONG) => ErrorKind::Invalid,
            Some(libc::ENOENT) | Some(libc::ENOTCONN) | Some(libc::EIO) => ErrorKind::Unavailable,
            _ => ErrorKind::Internal,
        };
        Error::new(kind, format!("{what}: {err}"))
    }

    pub fn with_context(self, ctx: impl fmt::Display) -> Error {
        Error {
            kind: self.kind,
            message: format!("{ctx}: {}", self.message),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;
