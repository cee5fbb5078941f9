//! Opening a connection to the broker, and its timeouts.

use super::{timed_out, unavailable};
use crate::error::{Error, Kind, Result};
use crate::sys;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

/// A connected socket to the broker at `path`, with `timeout` set.
pub(super) fn open(path: &Path, timeout: Option<Duration>) -> Result<OwnedFd> {
    let bytes = path.as_os_str().as_bytes();
    // Refused before anything else: a daemon retries "unavailable".
    if let Err(e) = sys::sockaddr_un(bytes) {
        return Err(Error::with_errno(
            Kind::Os,
            e,
            format!(
                "broker socket path {} cannot be a unix socket address: {}",
                path.display(),
                crate::error::strerror(e)
            ),
        ));
    }
    let fd = sys::unix_socket(libc::SOCK_SEQPACKET, false).map_err(|e| Error::os(e, "socket"))?;
    if timeout.is_some() {
        set_timeouts(&fd, timeout)?;
    }
    sys::connect_unix(&fd, bytes).map_err(|e| {
        if e == libc::EAGAIN && timeout.is_some() {
            return timed_out("sockpassd did not accept the connection in time");
        }
        unavailable(
            e,
            format_args!("cannot connect to sockpassd at {}", path.display()),
        )
    })?;
    Ok(fd)
}

/// Set the receive and send timeouts of a broker connection.
pub(super) fn set_timeouts(fd: &OwnedFd, t: Option<Duration>) -> Result<()> {
    let tv = match t {
        Some(d) => libc::timeval {
            tv_sec: d.as_secs().min(i32::MAX as u64) as libc::time_t,
            tv_usec: d.subsec_micros().max(u32::from(!d.is_zero())) as libc::suseconds_t,
        },
        None => libc::timeval {
            tv_sec: 0,
            tv_usec: 0,
        },
    };
    for opt in [libc::SO_RCVTIMEO, libc::SO_SNDTIMEO] {
        // SAFETY: tv is a valid timeval.
        let r = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(Error::last_os("setsockopt SO_RCVTIMEO/SO_SNDTIMEO"));
        }
    }
    Ok(())
}
