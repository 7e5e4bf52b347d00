//! How a wait for a ZooKeeper lock ends: a watch fires, the deadline passes, or the caller
//! cancels; and the one `Busy` error a wait that ended without the lock returns.

use super::client::{Notify, Session};
use super::ctx::Ctx;
use super::names::parse_record;
use crate::backend::Wait;
use crate::{Error, ErrorKind, Result, Target};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Duration;

/// Poll `n` and the cancel fd until `n` fires (true), the wait's deadline (false), or cancel.
pub(super) fn wait_fired(n: &Notify, wait: &Wait) -> Result<bool> {
    // A negative cancel fd is no fd (poll(2) would skip it too).
    let cancel = wait.cancel_fd().filter(|fd| *fd >= 0).map(|fd| {
        // SAFETY: the caller keeps its cancel fd open while it waits (the C ABI's contract);
        // one it closed anyway makes poll answer POLLNVAL, which check_cancel reports.
        unsafe { BorrowedFd::borrow_raw(fd) }
    });
    loop {
        wait.check_cancel()?;
        let timeout = match wait.remaining() {
            None => PollTimeout::NONE,
            Some(r) if r.is_zero() => return Ok(false),
            Some(r) => PollTimeout::try_from(r.as_millis().clamp(1, i32::MAX as u128))
                .unwrap_or(PollTimeout::MAX),
        };
        let mut fds = vec![PollFd::new(n.as_fd(), PollFlags::POLLIN)];
        if let Some(c) = cancel {
            fds.push(PollFd::new(c, PollFlags::POLLIN));
        }
        match poll(&mut fds, timeout) {
            Ok(_) => {}
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(Error::new(ErrorKind::Internal, format!("poll: {e}"))),
        }
        // Flags nix does not know count as an event, as any non-zero revents did before.
        let fired = |p: &PollFd| p.any().unwrap_or(true);
        if fds.get(1).is_some_and(fired) {
            wait.check_cancel()?;
        }
        if fired(&fds[0]) {
            n.drain();
            return Ok(true);
        }
    }
}

/// The `Busy` error of a wait on `dir` that ended without the lock, naming the holder
/// `holder` (a child of `dir`) when its node data is our record or readable text.
pub(super) fn busy(
    s: &Session,
    cx: &Ctx,
    wait: &Wait,
    target: &Target,
    dir: &str,
    holder: Option<String>,
) -> Error {
    let Some(h) = holder else {
        return wait.busy(target, None);
    };
    let data = s
        .get_data(
            &format!("{dir}/{h}"),
            None,
            Duration::from_secs(1).min(cx.op_budget()),
        )
        .ok()
        .map(|(d, _)| d);
    if let Some((r, _)) = data.as_deref().and_then(parse_record) {
        return wait.busy(target, Some(&r));
    }
    // Another client's node (kazoo stores an identifier, lockpick its host).
    let text = data
        .map(|d| {
            String::from_utf8_lossy(&d)
                .chars()
                .filter(|c| !c.is_control())
                .take(120)
                .collect::<String>()
        })
        .unwrap_or_default();
    let who = if text.is_empty() {
        format!(": held by node {h}")
    } else {
        format!(": held by node {h} ('{text}')")
    };
    Error::new(
        ErrorKind::Busy,
        format!("{}{who}", wait.busy(target, None).message()),
    )
}
