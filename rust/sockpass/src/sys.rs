//! Small safe wrappers over libc calls used by several modules. Each returns
//! the errno on failure; callers turn it into a typed error with context.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

pub fn errno() -> i32 {
    crate::error::last_errno()
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

pub fn peer_creds(fd: &impl AsFd) -> Result<Creds, i32> {
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
    // SAFETY: zeroed storage, then getsockname fills at most len bytes.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let r = unsafe {
        libc::getsockname(
            fd.as_fd().as_raw_fd(),
            (&mut ss as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(errno());
    }
    match ss.ss_family as i32 {
        libc::AF_INET => {
            // SAFETY: the family says it is a sockaddr_in.
            let sin: libc::sockaddr_in =
                unsafe { std::ptr::read((&ss as *const libc::sockaddr_storage).cast()) };
            let ip = Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
            Ok(SocketAddr::new(IpAddr::V4(ip), u16::from_be(sin.sin_port)))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says it is a sockaddr_in6.
            let sin6: libc::sockaddr_in6 =
                unsafe { std::ptr::read((&ss as *const libc::sockaddr_storage).cast()) };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Ok(SocketAddr::new(
                IpAddr::V6(ip),
                u16::from_be(sin6.sin6_port),
            ))
        }
        _ => Err(libc::EAFNOSUPPORT),
    }
}

pub fn local_port(fd: &impl AsFd) -> Result<u16, i32> {
    local_addr(fd).map(|a| a.port())
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
    // SAFETY: F_DUPFD_CLOEXEC returns a new fd we own, or -1.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
    if r < 0 {
        Err(errno())
    } else {
        // SAFETY: r is a new fd.
        Ok(unsafe { OwnedFd::from_raw_fd(r) })
    }
}

/// A unix socket of `ty` (SOCK_SEQPACKET…), CLOEXEC, optionally nonblocking.
pub fn unix_socket(ty: i32, nonblock: bool) -> Result<OwnedFd, i32> {
    let flags = libc::SOCK_CLOEXEC | if nonblock { libc::SOCK_NONBLOCK } else { 0 };
    // SAFETY: plain syscall.
    let r = unsafe { libc::socket(libc::AF_UNIX, ty | flags, 0) };
    if r < 0 {
        Err(errno())
    } else {
        // SAFETY: r is a new fd.
        Ok(unsafe { OwnedFd::from_raw_fd(r) })
    }
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

pub fn connect_unix(fd: &impl AsFd, path: &[u8]) -> Result<(), i32> {
    let (sun, len) = sockaddr_un(path)?;
    loop {
        // SAFETY: sun is a valid sockaddr_un of length len.
        let r = unsafe {
            libc::connect(
                fd.as_fd().as_raw_fd(),
                (&sun as *const libc::sockaddr_un).cast(),
                len,
            )
        };
        if r == 0 {
            return Ok(());
        }
        let e = errno();
        if e != libc::EINTR {
            return Err(e);
        }
    }
}

pub fn bind_unix(fd: &impl AsFd, path: &[u8]) -> Result<(), i32> {
    let (sun, len) = sockaddr_un(path)?;
    // SAFETY: sun is a valid sockaddr_un of length len.
    let r = unsafe {
        libc::bind(
            fd.as_fd().as_raw_fd(),
            (&sun as *const libc::sockaddr_un).cast(),
            len,
        )
    };
    if r < 0 {
        Err(errno())
    } else {
        Ok(())
    }
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
    use crate::error::Error;
    let c =
        std::ffi::CString::new(name).map_err(|_| Error::bad_request("group name contains NUL"))?;
    // SAFETY: a zeroed libc::group is a valid out-parameter.
    let mut gr: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 65536];
    let mut out: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; the result is copied out.
    let r = unsafe { libc::getgrnam_r(c.as_ptr(), &mut gr, buf.as_mut_ptr(), buf.len(), &mut out) };
    if r != 0 || out.is_null() {
        return Err(Error::bad_request(format!("unknown group {name:?}")));
    }
    Ok(gr.gr_gid)
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
