//! The broker's listening socket.

use sockpass::sys;
use sockpass::{Error, Kind, Result};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

/// Bind the broker's listening socket at `path`: create the directory,
/// refuse if a live broker answers there, replace a stale socket file.
pub fn bind_listener(path: &Path, mode: u32) -> Result<OwnedFd> {
    bind_listener_as(path, mode, None)
}

/// [`bind_listener`], and give the socket file to `group` (its mode then
/// decides what that group may do).
pub fn bind_listener_as(path: &Path, mode: u32, group: Option<u32>) -> Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::{DirBuilderExt, FileTypeExt};
    let bytes = path.as_os_str().as_bytes();
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(|e| {
                Error::os(
                    e.raw_os_error().unwrap_or(libc::EIO),
                    format!("cannot create socket directory {}", dir.display()),
                )
            })?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            let probe = sys::unix_socket(libc::SOCK_SEQPACKET, false)
                .map_err(|e| Error::os(e, "socket"))?;
            match sys::connect_unix(&probe, bytes) {
                Ok(()) => {
                    return Err(Error::with_errno(
                        Kind::AddressInUse,
                        libc::EADDRINUSE,
                        format!("a live broker already answers at {}", path.display()),
                    ))
                }
                Err(libc::ECONNREFUSED) | Err(libc::ENOENT) => {
                    // Stale: nothing listens. Replace it.
                    let _ = std::fs::remove_file(path);
                }
                Err(e) => {
                    return Err(Error::os(
                        e,
                        format!("cannot probe existing socket {}", path.display()),
                    ))
                }
            }
        }
        Ok(_) => {
            return Err(Error::with_errno(
                Kind::AddressInUse,
                libc::EEXIST,
                format!(
                    "{} exists and is not a socket; refusing to replace it",
                    path.display()
                ),
            ))
        }
        Err(_) => {}
    }
    let fd = sys::unix_socket(libc::SOCK_SEQPACKET, true).map_err(|e| Error::os(e, "socket"))?;
    sys::bind_unix(&fd, bytes)
        .map_err(|e| Error::os(e, format!("cannot bind {}", path.display())))?;
    let c = std::ffi::CString::new(bytes)
        .map_err(|_| Error::bad_request("socket path contains NUL"))?;
    if let Some(g) = group {
        // SAFETY: c is a valid C string; uid -1 leaves the owner as it is.
        if unsafe { libc::chown(c.as_ptr(), u32::MAX, g) } != 0 {
            let e = Error::last_os(format!("chown {} to group {g}", path.display()));
            let _ = std::fs::remove_file(path);
            return Err(e);
        }
    }
    // SAFETY: c is a valid C string.
    if unsafe { libc::chmod(c.as_ptr(), mode as libc::mode_t) } != 0 {
        let e = Error::last_os(format!("chmod {}", path.display()));
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    // SAFETY: plain syscall on our fd.
    if unsafe { libc::listen(fd.as_raw_fd(), 1024) } != 0 {
        let e = Error::last_os(format!("listen {}", path.display()));
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(fd)
}
