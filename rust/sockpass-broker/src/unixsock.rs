//! Unix-domain sockets at a path: created with a requested mode and owner,
//! replacing a stale socket file only when nothing listens on it.
//!
//! Nothing here follows a symlink. The directory that will hold the socket
//! is opened one component at a time with `O_NOFOLLOW`, and a path whose
//! directories include a symlink is refused, so the policy's `path=` prefix
//! (compared as text) is where the file really goes. The file is probed and
//! unlinked relative to that directory, and bound by its absolute path (the
//! address the socket keeps), then found again through the directory, or the
//! request fails; its mode comes from the
//! umask at `bind()` (no chmod by path), and its owner is set through an
//! `O_PATH` handle on the file the bind made, checked first.
//!
//! `create_unix` changes the process's umask and working directory around
//! the probe and the bind, and restores them at once: its callers are
//! single-threaded (the broker's event loop, `sockpass run` before it
//! spawns).

use crate::create::Created;
use sockpass::sys;
use sockpass::SocketSpec;
use sockpass::{Error, Kind, Result};
use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Create, bind (and, with a backlog, listen on) the Unix socket `spec` names.
/// `spec` is canonical (its mode is set).
pub fn create_unix(spec: &SocketSpec) -> Result<Created> {
    let path = spec.path.as_str();
    let (dir, name) = open_parent(path)?;
    let ty = spec.proto.sock_type();
    // SAFETY: plain syscall; the result is checked before it is owned.
    let raw = unsafe { libc::socket(libc::AF_UNIX, ty | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(Error::last_os(format!("socket() for {spec}")));
    }
    // SAFETY: raw is a fresh fd we own.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    o_set_buffers(&fd, spec)?;
    let mode = spec.options.mode.unwrap_or(0o666) & 0o777;
    {
        // The stale-socket probe connects by the bare name from inside the
        // directory that was opened without following links.
        let _here = InDir::enter(&dir)?;
        remove_if_stale(&dir, &name, path)?;
        // The file gets exactly `mode` at creation, so no chmod (which would
        // follow a symlink raced into its place) is needed. The bind itself
        // takes the absolute path, because that is the address the socket
        // keeps (getsockname, D-Bus addresses, ServerSocket::adopt); a
        // directory swapped for a symlink in between is caught below, where
        // the file must be found through the directory opened above.
        // SAFETY: umask cannot fail.
        let old = unsafe { libc::umask(!mode & 0o777) };
        let r = sys::bind_unix(&fd, path.as_bytes());
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        r.map_err(|e| Error::os(e, format!("bind {spec}")))?;
    }
    // The file the bind made: a fresh socket inode of ours with one link.
    // Anything else at the name was put there since; it is not touched.
    let file = openat(&dir, &name, libc::O_PATH | libc::O_NOFOLLOW).map_err(|e| {
        Error::with_errno(
            Kind::NotAllowed,
            e,
            format!("{path} is not in its directory after bind (a directory replaced meanwhile?)"),
        )
    })?;
    let st = fstat(&file).map_err(|e| Error::os(e, format!("stat {path}")))?;
    // SAFETY: geteuid cannot fail.
    let euid = unsafe { libc::geteuid() };
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK || st.st_nlink != 1 || st.st_uid != euid {
        return Err(Error::with_errno(
            Kind::NotAllowed,
            libc::EEXIST,
            format!("{path} was replaced after bind; not changing it"),
        ));
    }
    let undo = |e: Error| {
        if fstatat(&dir, &name).is_ok_and(|s| s.st_ino == st.st_ino) {
            // SAFETY: dir is an open directory, name a valid C string.
            unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) };
        }
        e
    };
    if let Some((uid, gid)) = spec.options.owner {
        // SAFETY: file is an O_PATH fd; AT_EMPTY_PATH makes the call act on it.
        let r = unsafe {
            libc::fchownat(
                file.as_raw_fd(),
                c"".as_ptr(),
                uid,
                gid,
                libc::AT_EMPTY_PATH,
            )
        };
        if r != 0 {
            return Err(undo(Error::last_os(format!("chown {path} to {uid}:{gid}"))));
        }
    }
    // A default ACL on the directory overrides the umask: set the mode on
    // the inode itself (the /proc link names this very file, not a path).
    if st.st_mode & 0o7777 != mode {
        let via = CString::new(format!("/proc/self/fd/{}", file.as_raw_fd())).unwrap();
        // SAFETY: via is a valid C string.
        if unsafe { libc::chmod(via.as_ptr(), mode as libc::mode_t) } != 0 {
            return Err(undo(Error::last_os(format!("chmod {path} to {mode:o}"))));
        }
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

/// The directory that holds `path`, opened from `/` one component at a time
/// without following a symlink, and the file's name in it. A symlink among
/// the directories is refused: the path would not mean what it says.
fn open_parent(path: &str) -> Result<(OwnedFd, CString)> {
    let bad = || Error::bad_request(format!("invalid Unix socket path {path:?}"));
    let (parent, name) = path.rsplit_once('/').ok_or_else(bad)?;
    if !path.starts_with('/') || name.is_empty() || name == "." || name == ".." {
        return Err(bad());
    }
    let cname = CString::new(name).map_err(|_| bad())?;
    let mut dir = open_dir(None, c"/").map_err(|e| Error::os(e, "open /"))?;
    let mut sofar = String::new();
    for comp in parent.split('/').filter(|c| !c.is_empty()) {
        sofar.push('/');
        sofar.push_str(comp);
        if comp == "." || comp == ".." {
            return Err(bad());
        }
        let c = CString::new(comp).map_err(|_| bad())?;
        dir = match open_dir(Some(&dir), &c) {
            Ok(d) => d,
            Err(e) => {
                let link =
                    fstatat(&dir, &c).is_ok_and(|s| s.st_mode & libc::S_IFMT == libc::S_IFLNK);
                return Err(if link {
                    Error::with_errno(
                        Kind::NotAllowed,
                        libc::ELOOP,
                        format!(
                            "{sofar} is a symlink; refusing to create or remove {path} through it"
                        ),
                    )
                } else {
                    Error::os(e, format!("cannot open directory {sofar} of {path}"))
                });
            }
        };
    }
    Ok((dir, cname))
}

/// Open directory `name` (in `at`, or absolute) as an O_PATH handle,
/// failing if it is a symlink.
fn open_dir(at: Option<&OwnedFd>, name: &CStr) -> std::result::Result<OwnedFd, i32> {
    let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW;
    match at {
        Some(d) => openat(d, name, flags),
        None => {
            // SAFETY: name is a valid C string.
            let r = unsafe { libc::open(name.as_ptr(), flags | libc::O_CLOEXEC) };
            if r < 0 {
                Err(sockpass::last_errno())
            } else {
                // SAFETY: r is a new fd.
                Ok(unsafe { OwnedFd::from_raw_fd(r) })
            }
        }
    }
}

fn openat(dir: &OwnedFd, name: &CStr, flags: i32) -> std::result::Result<OwnedFd, i32> {
    // SAFETY: dir is an open fd, name a valid C string.
    let r = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags | libc::O_CLOEXEC) };
    if r < 0 {
        Err(sockpass::last_errno())
    } else {
        // SAFETY: r is a new fd.
        Ok(unsafe { OwnedFd::from_raw_fd(r) })
    }
}

/// lstat of `name` in `dir`.
fn fstatat(dir: &OwnedFd, name: &CStr) -> std::result::Result<libc::stat, i32> {
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
    if r < 0 {
        Err(sockpass::last_errno())
    } else {
        Ok(st)
    }
}

fn fstat(fd: &OwnedFd) -> std::result::Result<libc::stat, i32> {
    // SAFETY: all-zero is a valid stat; the call fills it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fd is open (O_PATH fds may be fstat'ed), st writable.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } < 0 {
        Err(sockpass::last_errno())
    } else {
        Ok(st)
    }
}

/// The working directory set to a directory handle until dropped.
struct InDir {
    back: OwnedFd,
}

impl InDir {
    fn enter(dir: &OwnedFd) -> Result<InDir> {
        let back = open_dir(None, c".").map_err(|e| Error::os(e, "open the working directory"))?;
        // SAFETY: dir is an open directory fd (fchdir accepts O_PATH).
        if unsafe { libc::fchdir(dir.as_raw_fd()) } != 0 {
            return Err(Error::last_os("fchdir to the socket's directory"));
        }
        Ok(InDir { back })
    }
}

impl Drop for InDir {
    fn drop(&mut self) {
        // SAFETY: back is an open directory fd.
        unsafe { libc::fchdir(self.back.as_raw_fd()) };
    }
}

/// If a socket file is at `name` in `dir` and nothing answers on it, remove
/// it. Anything else there (a live socket, a regular file, a symlink) is an
/// error. The working directory is `dir`.
fn remove_if_stale(dir: &OwnedFd, name: &CStr, path: &str) -> Result<()> {
    let st = match fstatat(dir, name) {
        Ok(st) => st,
        Err(libc::ENOENT) => return Ok(()),
        Err(e) => return Err(Error::os(e, format!("stat {path}"))),
    };
    let fmt = st.st_mode & libc::S_IFMT;
    if fmt != libc::S_IFSOCK {
        let what = if fmt == libc::S_IFLNK {
            "is a symlink"
        } else {
            "exists and is not a socket"
        };
        return Err(Error::with_errno(
            Kind::AddressInUse,
            libc::EEXIST,
            format!("{path} {what}; refusing to replace it"),
        ));
    }
    // Probe with a socket of the file's own kind: try each type, since the
    // file does not say which it is.
    for ty in [libc::SOCK_STREAM, libc::SOCK_SEQPACKET, libc::SOCK_DGRAM] {
        let probe = sys::unix_socket(ty, true).map_err(|e| Error::os(e, "socket"))?;
        match sys::connect_unix(&probe, name.to_bytes()) {
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
    if fstatat(dir, name).is_ok_and(|n| n.st_ino == st.st_ino) {
        // SAFETY: dir is an open directory, name a valid C string.
        if unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) } != 0 {
            return Err(Error::last_os(format!("remove {path}")));
        }
    }
    Ok(())
}

/// Remove the socket file of a Unix socket the broker is closing, if the file
/// is still the one this socket is bound to (same inode as `ino`). Through no
/// symlink.
pub fn unlink_if_ours(path: &str, ino: u64) {
    let Ok((dir, name)) = open_parent(path) else {
        return;
    };
    if fstatat(&dir, &name).is_ok_and(|s| s.st_ino == ino) {
        // SAFETY: dir is an open directory, name a valid C string.
        unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) };
    }
}

/// The inode of the file at `path`, if any (through no symlink).
pub fn path_ino(path: &str) -> Option<u64> {
    let (dir, name) = open_parent(path).ok()?;
    fstatat(&dir, &name).ok().map(|s| s.st_ino)
}

#[cfg(test)]
mod tests {
    use super::*;
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
        let c = create_unix(&spec.canonical()).unwrap();
        let m = std::fs::symlink_metadata(&p).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o640);
        assert_eq!(path_ino(p.to_str().unwrap()), Some(m.ino()));
        // The umask and working directory are back as they were.
        // SAFETY: umask cannot fail; set it back at once.
        let um = unsafe { libc::umask(0o022) };
        unsafe { libc::umask(um) };
        assert_ne!(um, !0o640 & 0o777);
        assert_ne!(std::env::current_dir().unwrap(), d);
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
