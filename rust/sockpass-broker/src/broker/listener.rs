//! The broker's listening socket.

use sockpass::sys;
use sockpass::unixbind::{Existing, UnixBinder};
use sockpass::{Error, Kind, Result};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

/// The listening socket's backlog: connections the kernel queues before
/// the broker accepts them, in order. A client that floods the broker with
/// connections keeps it full, so every new client waits behind this many
/// of them (a request from root took 12 ms at the median and up to 63 ms
/// behind one flooding nobody at 1024, 1.7 ms at 64; behind four, 47 and
/// 5.6 ms; `hostile_faults.rs::a_connection_flood_delays_a_new_client_only_by_a_short_backlog`).
/// Beyond it `connect` waits (each accept wakes the next waiter), up to the
/// client's timeout: no client is refused for it.
pub const LISTEN_BACKLOG: i32 = 64;

/// Bind the broker's listening socket at `path`: create the directory,
/// refuse if a live broker answers there, replace a stale socket file.
pub fn bind_listener(path: &Path, mode: u32) -> Result<OwnedFd> {
    bind_listener_as(path, mode, None)
}

/// [`bind_listener`], and give the socket file to `group` (its mode then
/// decides what that group may do). Bound by the hardened binder
/// ([`sockpass::unixbind::UnixBinder`]): no symlink is followed, and the
/// file is created with its mode and changed only through an fd to it.
pub fn bind_listener_as(path: &Path, mode: u32, group: Option<u32>) -> Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt;
    let mut b = UnixBinder::new(path.as_os_str().as_bytes())?;
    b.mode = mode & 0o777;
    b.owner = group.map(|g| (u32::MAX, g));
    b.backlog = Some(LISTEN_BACKLOG);
    b.existing = Existing::ReplaceStale;
    b.make_dirs = Some(0o755);
    let fd = sys::unix_socket(libc::SOCK_SEQPACKET, true).map_err(|e| Error::os(e, "socket"))?;
    b.bind(fd.as_fd()).map_err(|e| match e.errno() {
        libc::EADDRINUSE => Error::with_errno(
            Kind::AddressInUse,
            libc::EADDRINUSE,
            format!("a live broker already answers at {}", path.display()),
        ),
        _ => e,
    })?;
    Ok(fd)
}
