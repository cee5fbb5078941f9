//! systemd socket activation (`LISTEN_FDS`/`LISTEN_PID`, fds from 3): the
//! simplest handover of a server socket, with no notifier because the
//! socket already listens.

use crate::error::{Error, Kind, Result};
use crate::server_socket::server::ServerSocket;
use crate::sys;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// The first fd of socket activation.
pub const LISTEN_FDS_START: RawFd = 3;

fn bad(msg: String) -> Error {
    Error::with_errno(Kind::BadRequest, libc::EINVAL, msg)
}

/// The fds passed by socket activation, owned and made CLOEXEC; empty when
/// `LISTEN_PID` is not this process (or unset). With `unset`, the
/// `LISTEN_*` variables are removed so children do not see them (call it
/// while single-threaded, as for any environment change).
pub fn listen_fds(unset: bool) -> Result<Vec<OwnedFd>> {
    let n = listen_count();
    if unset {
        for k in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
            std::env::remove_var(k);
        }
    }
    let n = n?.unwrap_or(0);
    (LISTEN_FDS_START..LISTEN_FDS_START + n as RawFd)
        .map(|fd| take_listen_fd(fd, n))
        .collect()
}

/// `LISTEN_FDS` when `LISTEN_PID` is this process: the one parser of the
/// two variables (here and in the broker's fd store). `None` when either
/// is unset or names another process.
#[doc(hidden)]
pub fn listen_count() -> Result<Option<usize>> {
    let (Ok(pid), Ok(n)) = (std::env::var("LISTEN_PID"), std::env::var("LISTEN_FDS")) else {
        return Ok(None);
    };
    let pid: u32 = pid
        .parse()
        .map_err(|_| bad(format!("LISTEN_PID={pid:?} is not a pid")))?;
    if pid != std::process::id() {
        return Ok(None);
    }
    n.parse()
        .ok()
        .filter(|n| *n <= 4096)
        .map(Some)
        .ok_or_else(|| bad(format!("LISTEN_FDS={n:?} is not a count of fds")))
}

/// Take inherited fd `fd` (one of `LISTEN_FDS=n`), checked open, owned and
/// made CLOEXEC. Each fd must be taken once.
#[doc(hidden)]
pub fn take_listen_fd(fd: RawFd, n: usize) -> Result<OwnedFd> {
    if !sys::fd_is_open(fd) {
        return Err(Error::with_errno(
            Kind::BadRequest,
            libc::EBADF,
            format!("LISTEN_FDS={n} but fd {fd} is not open"),
        ));
    }
    // SAFETY: fd is open and passed to this process to own; the caller
    // takes each number once.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC)
        .map_err(|e| Error::os(e.raw_os_error(), "fcntl FD_CLOEXEC"))?;
    Ok(fd)
}

/// The one listening unix socket of type `ty` (`SOCK_STREAM`,
/// `SOCK_SEQPACKET`) socket activation passed, checked as
/// [`ServerSocket::adopt`] does; `None` without socket activation. More
/// than one fd is an error (and all of them are closed).
pub fn adopt_listen_socket(unset: bool, ty: i32) -> Result<Option<ServerSocket>> {
    let mut fds = listen_fds(unset)?;
    match fds.len() {
        0 => Ok(None),
        1 => ServerSocket::adopt_type(fds.remove(0), None, ty).map(Some),
        n => Err(bad(format!(
            "socket activation passed {n} fds; exactly one listening unix socket is expected"
        ))),
    }
}
