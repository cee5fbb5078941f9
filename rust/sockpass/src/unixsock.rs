//! Unix-domain sockets at a path: created with a requested mode and owner,
//! replacing a stale socket file only when nothing listens on it.

use crate::create::Created;
use crate::error::{Error, Kind, Result};
use crate::spec::SocketSpec;
use crate::sys;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};

/// Create, bind (and, with a backlog, listen on) the Unix socket `spec` names.
/// `spec` is canonical (its mode is set).
pub fn create_unix(spec: &SocketSpec) -> Result<Created> {
    let path = spec.path.as_str();
    let ty = spec.proto.sock_type();
    // SAFETY: plain syscall; the result is checked before it is owned.
    let raw = unsafe { libc::socket(libc::AF_UNIX, ty | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(Error::last_os(format!("socket() for {spec}")));
    }
    // SAFETY: raw is a fresh fd we own.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    o_set_buffers(&fd, spec)?;
    remove_if_stale(spec)?;
    let mode = spec.options.mode.unwrap_or(0o666);
    // Bind with no permissions at all, so the file is never reachable with
    // wider ones than asked: the broker is single-threaded, so the umask
    // change is seen by nothing else.
    // SAFETY: umask cannot fail.
    let old = unsafe { libc::umask(0o777) };
    let r = sys::bind_unix(&fd, path.as_bytes());
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    r.map_err(|e| Error::os(e, format!("bind {spec}")))?;
    let undo = |e: Error| {
        let _ = std::fs::remove_file(path);
        e
    };
    let c = std::ffi::CString::new(path).map_err(|_| Error::bad_request("path contains NUL"))?;
    if let Some((uid, gid)) = spec.options.owner {
        // SAFETY: c is a valid C string; lchown does not follow a symlink
        // someone might have raced into the path's place.
        if unsafe { libc::lchown(c.as_ptr(), uid, gid) } != 0 {
            return Err(undo(Error::last_os(format!("chown {path} to {uid}:{gid}"))));
        }
    }
    // SAFETY: c is a valid C string.
    if unsafe { libc::chmod(c.as_ptr(), mode as libc::mode_t) } != 0 {
        return Err(undo(Error::last_os(format!("chmod {path}"))));
    }
    if let Some(backlog) = spec.options.backlog {
        // SAFETY: plain syscall on our fd.
        if unsafe { libc::listen(fd.as_raw_fd(), backlog.min(i32::MAX as u32) as i32) } < 0 {
            return Err(undo(Error::last_os(format!("listen {spec}"))));
        }
    }
    Ok(Created { fd, port: 0 })
}

fn o_set_buffers(fd: &OwnedFd, spec: &SocketSpec) -> Result<()> {
    for (name, opt, v) in [
        ("rcvbuf", libc::SO_RCVBUF, spec.options.rcvbuf),
        ("sndbuf", libc::SO_SNDBUF, spec.options.sndbuf),
    ] {
        if let Some(v) = v {
            sys::setsockopt_int(fd, libc::SOL_SOCKET, opt, v as i32)
                .map_err(|e| Error::os(e, format!("setsockopt {name} for {spec}")))?;
        }
    }
    Ok(())
}

/// If a socket file is at the path and nothing answers on it, remove it.
/// Anything else at the path (a live socket, a regular file) is an error.
fn remove_if_stale(spec: &SocketSpec) -> Result<()> {
    let path = spec.path.as_str();
    let m = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(_) => return Ok(()),
    };
    if !m.file_type().is_socket() {
        return Err(Error::with_errno(
            Kind::AddressInUse,
            libc::EEXIST,
            format!("{path} exists and is not a socket; refusing to replace it"),
        ));
    }
    // Probe with a socket of the file's own kind: try each type, since the
    // file does not say which it is.
    for ty in [libc::SOCK_STREAM, libc::SOCK_SEQPACKET, libc::SOCK_DGRAM] {
        let probe = sys::unix_socket(ty, true).map_err(|e| Error::os(e, "socket"))?;
        match sys::connect_unix(&probe, path.as_bytes()) {
            // Nonblocking stream connect to a live listener can be EAGAIN
            // (backlog full): still live.
            Ok(()) | Err(libc::EAGAIN) | Err(libc::EINPROGRESS) => {
                return Err(Error::with_errno(
                    Kind::AddressInUse,
                    libc::EADDRINUSE,
                    format!("something listens on {path}; not replacing it"),
                ))
            }
            Err(libc::EPROTOTYPE) => continue,
            Err(libc::ECONNREFUSED) => {}
            Err(e) => return Err(Error::os(e, format!("cannot probe {path}"))),
        }
    }
    // Stale: nothing listens. Replace it, unless it changed under us.
    if std::fs::symlink_metadata(path).map(|n| n.ino()).ok() == Some(m.ino()) {
        std::fs::remove_file(path).map_err(|e| {
            Error::os(
                e.raw_os_error().unwrap_or(libc::EIO),
                format!("remove {path}"),
            )
        })?;
    }
    Ok(())
}

/// Remove the socket file of a Unix socket the broker is closing, if the file
/// is still the one this socket is bound to (same inode as `ino`).
pub fn unlink_if_ours(path: &str, ino: u64) {
    if std::fs::symlink_metadata(path).map(|m| m.ino()).ok() == Some(ino) {
        let _ = std::fs::remove_file(path);
    }
}

/// The inode of the file at `path`, if any.
pub fn path_ino(path: &str) -> Option<u64> {
    std::fs::symlink_metadata(path).map(|m| m.ino()).ok()
}
