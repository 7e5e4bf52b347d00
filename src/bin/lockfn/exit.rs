//! Exit codes: documented in `lockfn --help` and the README.

use lockfn::{Error, ErrorKind};

pub const USAGE: u8 = 64;
pub const NOT_HELD: u8 = 65;
pub const UNAVAILABLE: u8 = 69;
pub const INTERNAL: u8 = 70;
pub const LOST: u8 = 75;
pub const PERMISSION: u8 = 77;
pub const NOT_EXECUTABLE: u8 = 126;
pub const NOT_FOUND: u8 = 127;

/// The exit code for an error; `conflict` is the code for busy/timeout (`-E`).
pub fn for_error(e: &Error, conflict: u8) -> u8 {
    match e.kind() {
        ErrorKind::Busy => conflict,
        ErrorKind::Invalid => USAGE,
        ErrorKind::NotHeld => NOT_HELD,
        ErrorKind::Unavailable => UNAVAILABLE,
        ErrorKind::Lost => LOST,
        ErrorKind::Permission => PERMISSION,
        ErrorKind::Canceled => 128 + libc::SIGTERM as u8,
        ErrorKind::Forked | ErrorKind::Internal => INTERNAL,
    }
}
