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
    let pid = std::env::var("LISTEN_PID").ok();
    let n = std::env::var("LISTEN_FDS").ok();
    if unset {
        for k in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
            std::env::remove_var(k);
        }
    }
    let (Some(pid), Some(n)) = (pid, n) else {
        return Ok(Vec::new());
    };
    let pid: u32 = pid
        .parse()
        .map_err(|_| bad(format!("LISTEN_PID={pid:?} is not a pid")))?;
    if pid != std::process::id() {
        return Ok(Vec::new());
    }
    let n: RawFd = n
        .parse()
        .ok()
        .filter(|n| (0..=4096).contains(n))
        .ok_or_else(|| bad(format!("LISTEN_FDS={n:?} is not a count of fds")))?;
    let mut out = Vec::new();
    for fd in LISTEN_FDS_START..LISTEN_FDS_START + n {
        if !sys::fd_is_open(fd) {
            return Err(Error::with_errno(
                Kind::BadRequest,
                libc::EBADF,
                format!("LISTEN_FDS={n} but fd {fd} is not open"),
            ));
        }
        // SAFETY: fd is open and passed to this process to own.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        // SAFETY: as above; each fd is taken once.
        out.push(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    Ok(out)
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
