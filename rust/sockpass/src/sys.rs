//! Small safe wrappers over libc calls used by several modules. Each returns
//! the errno on failure; callers turn it into a typed error with context.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

/// errno of the last failed call on this thread. Async-signal-safe (no
/// allocation): a forked child may call it.
pub fn errno() -> i32 {
    // SAFETY: __errno_location is always valid for the calling thread.
    unsafe { *libc::__errno_location() }
}

pub fn setsockopt_int(fd: &impl AsFd, level: i32, opt: i32, v: i32) -> Result<(), i32> {
    // SAFETY: the value is a c_int with its size.
    let r = unsafe {
        libc::setsockopt(
            fd.as_fd().as_raw_fd(),
            level,
            opt,
            (&v as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if r < 0 {
        Err(errno())
    } else {
        Ok(())
    }
}

pub fn getsockopt_int(fd: &impl AsFd, level: i32, opt: i32) -> Result<i32, i32> {
    let mut v: i32 = 0;
    let mut len = std::mem::size_of::<i32>() as libc::socklen_t;
    // SAFETY: v and len are valid for writing.
    let r = unsafe {
        libc::getsockopt(
            fd.as_fd().as_raw_fd(),
            level,
            opt,
            (&mut v as *mut i32).cast(),
            &mut len,
        )
    };
    if r < 0 {
        Err(errno())
    } else {
        Ok(v)
    }
}

/// Peer credentials of a connected unix socket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Creds {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
}

/// On libc, not rustix: a peer outside our pid namespace has pid 0, which
/// rustix's `UCred` (a non-zero `Pid`) cannot hold.
pub fn peer_creds(fd: &impl AsFd) -> Result<Creds, i32> {
    // SAFETY: all-zero is a valid ucred.
    let mut c: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: c and len are valid for writing.
    let r = unsafe {
        libc::getsockopt(
            fd.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut c as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(errno());
    }
    Ok(Creds {
        pid: c.pid,
        uid: c.uid,
        gid: c.gid,
    })
}

pub fn sockaddr_from(addr: IpAddr, port: u16) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    match addr {
        IpAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: port.to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin) };
            (
                ss,
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        }
        IpAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: port.to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in6.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin6) };
            (
                ss,
                std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
            )
        }
    }
}

/// The local address of an inet socket.
pub fn local_addr(fd: &impl AsFd) -> Result<SocketAddr, i32> {
    let a = rustix::net::getsockname(fd).map_err(|e| e.raw_os_error())?;
    let a = SocketAddr::try_from(a).map_err(|e| e.raw_os_error())?;
    // The address and port only (no IPv6 flow info or scope).
    Ok(SocketAddr::new(a.ip(), a.port()))
}

pub fn local_port(fd: &impl AsFd) -> Result<u16, i32> {
    local_addr(fd).map(|a| a.port())
}

/// Set `O_NONBLOCK` on `fd`.
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> Result<(), i32> {
    let fl = rustix::fs::fcntl_getfl(fd).map_err(|e| e.raw_os_error())?;
    rustix::fs::fcntl_setfl(fd, fl | rustix::fs::OFlags::NONBLOCK).map_err(|e| e.raw_os_error())
}

pub fn is_cloexec(fd: RawFd) -> bool {
    // SAFETY: F_GETFD on any number is harmless.
    let f = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    f >= 0 && f & libc::FD_CLOEXEC != 0
}

/// True when `fd` is an open descriptor in this process.
pub fn fd_is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD on any number is harmless.
    fd >= 0 && unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0
}

/// `dup` with CLOEXEC.
pub fn dup_cloexec(fd: BorrowedFd<'_>) -> Result<OwnedFd, i32> {
    rustix::io::fcntl_dupfd_cloexec(fd, 0).map_err(|e| e.raw_os_error())
}

/// A unix socket of `ty` (SOCK_SEQPACKET…), CLOEXEC, optionally nonblocking.
pub fn unix_socket(ty: i32, nonblock: bool) -> Result<OwnedFd, i32> {
    use rustix::net::SocketFlags;
    let flags = SocketFlags::CLOEXEC
        | if nonblock {
            SocketFlags::NONBLOCK
        } else {
            SocketFlags::empty()
        };
    rustix::net::socket_with(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::from_raw(ty as u32),
        flags,
        None,
    )
    .map_err(|e| e.raw_os_error())
}

/// Build a `sockaddr_un` for a filesystem path or, when the path starts with
/// a NUL byte, an abstract name.
pub fn sockaddr_un(path: &[u8]) -> Result<(libc::sockaddr_un, libc::socklen_t), i32> {
    // SAFETY: all-zero is a valid sockaddr_un.
    let mut sun: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    sun.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let abstract_ = path.first() == Some(&0);
    // A path needs room for its terminating NUL; an abstract name does not.
    if path.is_empty() || path.len() > sun.sun_path.len() - usize::from(!abstract_) {
        return Err(libc::ENAMETOOLONG);
    }
    // A NUL inside a path would cut it short: checked as it is copied.
    let mut nul = false;
    for (d, s) in sun.sun_path.iter_mut().zip(path) {
        nul |= *s == 0;
        *d = *s as libc::c_char;
    }
    if nul && !abstract_ {
        return Err(libc::EINVAL);
    }
    let base = std::mem::size_of::<libc::sa_family_t>();
    let len = base + path.len() + usize::from(!abstract_);
    Ok((sun, len as libc::socklen_t))
}

/// `path` (checked as [`sockaddr_un`] does) as rustix's unix address.
fn unix_addr(path: &[u8]) -> Result<rustix::net::SocketAddrUnix, i32> {
    sockaddr_un(path)?;
    match path.split_first() {
        Some((0, name)) => rustix::net::SocketAddrUnix::new_abstract_name(name),
        _ => rustix::net::SocketAddrUnix::new(path),
    }
    .map_err(|e| e.raw_os_error())
}

pub fn connect_unix(fd: &impl AsFd, path: &[u8]) -> Result<(), i32> {
    let a = unix_addr(path)?;
    loop {
        match rustix::net::connect(fd, &a) {
            Ok(()) => return Ok(()),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.raw_os_error()),
        }
    }
}

pub fn bind_unix(fd: &impl AsFd, path: &[u8]) -> Result<(), i32> {
    rustix::net::bind(fd, &unix_addr(path)?).map_err(|e| e.raw_os_error())
}

/// Wait for `events` on one fd; returns the revents, 0 on timeout.
/// `timeout_ms` < 0 waits forever.
pub fn poll_one(fd: BorrowedFd<'_>, events: i16, timeout_ms: i32) -> Result<i16, i32> {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events,
        revents: 0,
    };
    loop {
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut p, 1, timeout_ms) };
        if r >= 0 {
            return Ok(if r == 0 { 0 } else { p.revents });
        }
        let e = errno();
        if e != libc::EINTR {
            return Err(e);
        }
    }
}

/// Fill `buf` from the kernel's random source (getrandom(2)).
pub fn fill_random(buf: &mut [u8]) -> Result<(), i32> {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: writes at most len bytes into buf[done..].
        let r = unsafe { libc::getrandom(buf[done..].as_mut_ptr().cast(), buf.len() - done, 0) };
        if r < 0 {
            let e = errno();
            if e == libc::EINTR {
                continue;
            }
            return Err(e);
        }
        done += r as usize;
    }
    Ok(())
}

/// Count the fds open in this process (via /proc/self/fd).
pub fn count_open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count().saturating_sub(1))
        .unwrap_or(0)
}

/// The gid of a group name (or a number), for `--socket-group` and the
/// server-socket manager's `group=`.
pub fn group_id(name: &str) -> crate::error::Result<u32> {
    match name.parse::<u32>() {
        Ok(g) => Ok(g),
        Err(_) => lookup_group(name),
    }
}

/// The gid of a group name (no number form), by getgrnam_r.
pub fn lookup_group(name: &str) -> crate::error::Result<u32> {
    let c = name_cstring(name, "group")?;
    // SAFETY: a zeroed libc::group is a valid out-parameter.
    let mut gr: libc::group = unsafe { std::mem::zeroed() };
    let found = with_growing_buffer(|buf, out: &mut *mut libc::group| {
        // SAFETY: every pointer is valid for the call; buf is buf.len() long.
        unsafe { libc::getgrnam_r(c.as_ptr(), &mut gr, buf.as_mut_ptr(), buf.len(), out) }
    });
    found
        .map(|()| gr.gr_gid)
        .ok_or_else(|| crate::error::Error::bad_request(format!("unknown group {name:?}")))
}

/// A user name's uid and primary gid (no number form), by getpwnam_r.
pub fn lookup_user(name: &str) -> crate::error::Result<(u32, u32)> {
    let c = name_cstring(name, "user")?;
    // SAFETY: a zeroed libc::passwd is a valid out-parameter.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let found = with_growing_buffer(|buf, out: &mut *mut libc::passwd| {
        // SAFETY: every pointer is valid for the call; buf is buf.len() long.
        unsafe { libc::getpwnam_r(c.as_ptr(), &mut pw, buf.as_mut_ptr(), buf.len(), out) }
    });
    found
        .map(|()| (pw.pw_uid, pw.pw_gid))
        .ok_or_else(|| crate::error::Error::bad_request(format!("unknown user {name:?}")))
}

fn name_cstring(name: &str, what: &str) -> crate::error::Result<std::ffi::CString> {
    std::ffi::CString::new(name)
        .map_err(|_| crate::error::Error::bad_request(format!("{what} name contains NUL")))
}

/// Run a `get*nam_r` call with a buffer that doubles on ERANGE (up to
/// 16 MiB); `Some(())` when it found the entry.
fn with_growing_buffer<T>(
    mut call: impl FnMut(&mut [libc::c_char], &mut *mut T) -> libc::c_int,
) -> Option<()> {
    let mut size = 16384;
    loop {
        let mut buf = vec![0 as libc::c_char; size];
        let mut out: *mut T = std::ptr::null_mut();
        let r = call(&mut buf, &mut out);
        if r == libc::ERANGE && size < 1 << 24 {
            size *= 2;
            continue;
        }
        return (r == 0 && !out.is_null()).then_some(());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockaddr_un_refuses_a_nul_inside_a_path_and_keeps_abstract_names() {
        let (sun, len) = sockaddr_un(b"/run/x.sock").unwrap();
        let base = std::mem::size_of::<libc::sa_family_t>();
        assert_eq!(len as usize, base + 12, "the path and its NUL");
        assert_eq!(
            sun.sun_path[..11]
                .iter()
                .map(|&c| c as u8)
                .collect::<Vec<_>>(),
            b"/run/x.sock"
        );
        assert_eq!(sun.sun_path[11], 0);
        // A NUL anywhere inside a path would cut it short.
        for bad in [&b"/run/\0x.sock"[..], b"/run/x.sock\0", b"a\0"] {
            assert_eq!(sockaddr_un(bad).map(|_| ()), Err(libc::EINVAL), "{bad:?}");
        }
        // An abstract name starts with NUL and may hold more; it has no
        // terminating NUL.
        let (sun, len) = sockaddr_un(b"\0name\0x").unwrap();
        assert_eq!(len as usize, base + 7);
        assert_eq!(sun.sun_path[5], 0);
        assert_eq!(sun.sun_path[6], b'x' as libc::c_char);
        // Too long, or empty.
        let room = sun.sun_path.len();
        assert!(sockaddr_un(&vec![b'a'; room - 1]).is_ok());
        assert_eq!(
            sockaddr_un(&vec![b'a'; room]).map(|_| ()),
            Err(libc::ENAMETOOLONG)
        );
        assert!(sockaddr_un(&[&[0u8][..], &vec![b'a'; room - 1]].concat()).is_ok());
        assert_eq!(sockaddr_un(b"").map(|_| ()), Err(libc::ENAMETOOLONG));
    }
}
