//! Unix-domain sockets at a path for socket requests: made by the one
//! hardened binder ([`sockpass::unixbind::UnixBinder`]: no symlink followed,
//! mode set at creation, owner set through an fd), replacing a stale socket
//! file only when nothing listens on it; and removed again, when the broker
//! closes them, only if the file is still theirs.

use crate::create::Created;
use sockpass::sys;
use sockpass::unixbind::{Existing, UnixBinder};
use sockpass::SocketSpec;
use sockpass::{Error, Result};
use std::ffi::CStr;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

/// Create, bind (and, with a backlog, listen on) the Unix socket `spec` names.
/// `spec` is canonical (its mode is set).
pub fn create_unix(spec: &SocketSpec) -> Result<Created> {
    let ty = spec.proto.sock_type();
    // SAFETY: plain syscall; the result is checked before it is owned.
    let raw = unsafe { libc::socket(libc::AF_UNIX, ty | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(Error::last_os(format!("socket() for {spec}")));
    }
    // SAFETY: raw is a fresh fd we own.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    for (name, opt, v) in [
        ("rcvbuf", libc::SO_RCVBUF, spec.options.rcvbuf),
        ("sndbuf", libc::SO_SNDBUF, spec.options.sndbuf),
    ] {
        if let Some(v) = v {
            sys::setsockopt_int(&fd, libc::SOL_SOCKET, opt, v as i32)
                .map_err(|e| Error::os(e, format!("setsockopt {name} for {spec}")))?;
        }
    }
    if !spec.path.starts_with('/') {
        return Err(Error::bad_request(format!(
            "invalid Unix socket path {:?}",
            spec.path
        )));
    }
    let mut b = UnixBinder::new(spec.path.as_bytes())?;
    b.mode = spec.options.mode.unwrap_or(0o666) & 0o777;
    b.owner = spec.options.owner;
    b.backlog = spec.options.backlog.map(|n| n.min(i32::MAX as u32) as i32);
    b.existing = Existing::ReplaceStale;
    b.bind(fd.as_fd())?;
    Ok(Created { fd, port: 0 })
}

/// The socket's directory opened without following a symlink, and the
/// file's name in it.
fn with_dir<T>(path: &str, f: impl FnOnce(&OwnedFd, &CStr) -> Option<T>) -> Option<T> {
    let b = UnixBinder::new(path.as_bytes()).ok()?;
    let (dir, name) = b.open_dir()?;
    f(&dir, name)
}

/// lstat of `name` in `dir`.
fn fstatat(dir: &OwnedFd, name: &CStr) -> Option<libc::stat> {
    // SAFETY: all-zero is a valid stat; the call fills it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: dir is an open fd, name a valid C string, st writable.
    let r = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    (r == 0).then_some(st)
}

/// Remove the socket file of a Unix socket the broker is closing, if the file
/// is still the one this socket is bound to (same inode as `ino`). Through no
/// symlink.
pub fn unlink_if_ours(path: &str, ino: u64) {
    with_dir(path, |dir, name| {
        if fstatat(dir, name).is_some_and(|s| s.st_ino == ino) {
            // SAFETY: dir is an open directory, name a valid C string.
            unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) };
        }
        Some(())
    });
}

/// The inode of the file at `path`, if any (through no symlink).
pub fn path_ino(path: &str) -> Option<u64> {
    with_dir(path, |dir, name| fstatat(dir, name).map(|s| s.st_ino))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sockpass::Kind;
    use sockpass::Proto;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn tmp(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("sp-unixsock-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn mode_without_chmod_and_symlinks_refused() {
        let d = tmp("mode");
        let p = d.join("s.sock");
        let mut spec = SocketSpec::unix(Proto::UnixStream, p.to_str().unwrap());
        spec.options.mode = Some(0o640);
        // SAFETY: umask cannot fail; set back at once.
        let um = unsafe { libc::umask(0o022) };
        unsafe { libc::umask(um) };
        let cwd = std::env::current_dir().unwrap();
        let c = create_unix(&spec.canonical()).unwrap();
        let m = std::fs::symlink_metadata(&p).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o640);
        assert_eq!(path_ino(p.to_str().unwrap()), Some(m.ino()));
        // The process's umask and working directory never changed.
        let now = unsafe { libc::umask(0o022) };
        unsafe { libc::umask(now) };
        assert_eq!(now, um);
        assert_eq!(std::env::current_dir().unwrap(), cwd);
        // A path whose directories only root can change keeps its address.
        if d.starts_with("/tmp") || d.starts_with("/var/tmp") {
            let mut sun: libc::sockaddr_un = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of_val(&sun) as libc::socklen_t;
            unsafe {
                libc::getsockname(
                    c.fd.as_raw_fd(),
                    (&mut sun as *mut libc::sockaddr_un).cast(),
                    &mut len,
                )
            };
            let got: Vec<u8> = sun
                .sun_path
                .iter()
                .take_while(|&&b| b != 0)
                .map(|&b| b as u8)
                .collect();
            assert_eq!(got, p.as_os_str().as_encoded_bytes());
        }
        drop(c);
        unlink_if_ours(p.to_str().unwrap(), m.ino());
        assert!(!p.exists());

        // A symlink at the path to a regular file: refused, file untouched.
        let target = d.join("target");
        std::fs::write(&target, b"x").unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::symlink(&target, &p).unwrap();
        let e = create_unix(&spec.canonical()).unwrap_err();
        assert!(e.message().contains("is a symlink"), "{e}");
        assert_eq!(std::fs::metadata(&target).unwrap().mode() & 0o7777, 0o600);
        std::fs::remove_file(&p).unwrap();

        // A symlinked directory on the way: refused, nothing made there.
        let real = d.join("real");
        std::fs::create_dir(&real).unwrap();
        std::os::unix::fs::symlink(&real, d.join("link")).unwrap();
        let via = format!("{}/link/s.sock", d.to_str().unwrap());
        let e = create_unix(&SocketSpec::unix(Proto::UnixDgram, &via).canonical()).unwrap_err();
        assert_eq!(e.kind(), Kind::NotAllowed);
        assert!(e.message().contains("link is a symlink"), "{e}");
        assert!(!real.join("s.sock").exists());
        assert_eq!(path_ino(&via), None);
        let _ = std::fs::remove_dir_all(&d);
    }
}
