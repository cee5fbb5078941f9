//! Reading the program that made a caught `bind()`: the address it passed
//! (from its memory), its socket (a copy through `pidfd_getfd`) and what
//! that socket says about the socket it wants: family, type, protocol,
//! `O_NONBLOCK`, the `FD_CLOEXEC` of its fd, and the options set before
//! bind that a [`SocketSpec`] carries.

use crate::spec::{Proto, SocketSpec};
use crate::sys::{errno, getsockopt_int};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};

/// The address a caught bind asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Addr {
    /// AF_INET or AF_INET6: address, port, IPv6 scope id.
    Inet(IpAddr, u16, u32),
    /// Any other family, or too short to be inet: not ours.
    Other,
}

/// Read the `sockaddr` at `ptr` (`len` bytes) in thread `tid`.
pub(crate) fn read_addr(tid: u32, ptr: u64, len: u64) -> Result<Addr, i32> {
    let mut b = [0u8; 28];
    let want = (len.min(28)) as usize;
    if want < 2 {
        return Ok(Addr::Other);
    }
    let local = libc::iovec {
        iov_base: b.as_mut_ptr().cast(),
        iov_len: want,
    };
    let remote = libc::iovec {
        iov_base: ptr as *mut libc::c_void,
        iov_len: want,
    };
    // SAFETY: writes at most `want` bytes into `b`; the remote side is the
    // other process's memory, which the kernel checks.
    let n = unsafe { libc::process_vm_readv(tid as libc::pid_t, &local, 1, &remote, 1, 0) };
    if n < 0 {
        return Err(errno());
    }
    Ok(parse_addr(&b[..n as usize]))
}

fn parse_addr(b: &[u8]) -> Addr {
    if b.len() < 2 {
        return Addr::Other;
    }
    let family = u16::from_ne_bytes([b[0], b[1]]) as i32;
    let port = |b: &[u8]| u16::from_be_bytes([b[2], b[3]]);
    match family {
        libc::AF_INET if b.len() >= 16 => {
            let ip = Ipv4Addr::new(b[4], b[5], b[6], b[7]);
            Addr::Inet(IpAddr::V4(ip), port(b), 0)
        }
        // The kernel takes 24 bytes (RFC 2133's sockaddr_in6, no scope).
        libc::AF_INET6 if b.len() >= 24 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(&b[8..24]);
            let scope = if b.len() >= 28 {
                u32::from_ne_bytes([b[24], b[25], b[26], b[27]])
            } else {
                0
            };
            Addr::Inet(IpAddr::V6(Ipv6Addr::from(a)), port(b), scope)
        }
        _ => Addr::Other,
    }
}

/// The thread group (process) of thread `tid`, from `/proc/TID/status`.
fn tgid_of(tid: u32) -> Result<u32, i32> {
    let s = std::fs::read_to_string(format!("/proc/{tid}/status"))
        .map_err(|e| e.raw_os_error().unwrap_or(libc::ESRCH))?;
    s.lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or(libc::ESRCH)
}

/// The caller's process: a pidfd (so its fds can be copied) and its pid.
pub(crate) struct Process {
    pub pidfd: OwnedFd,
    pub tgid: u32,
}

/// Open the process of thread `tid`. The caller checks the notification is
/// still valid afterwards: only then is the pidfd known to be that process.
pub(crate) fn open_process(tid: u32) -> Result<Process, i32> {
    let tgid = tgid_of(tid)?;
    // SAFETY: pidfd_open returns a new fd or -1.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, tgid as libc::pid_t, 0) };
    if r < 0 {
        return Err(errno());
    }
    // SAFETY: a new fd (pidfd_open sets O_CLOEXEC on it), ours.
    let pidfd = unsafe { OwnedFd::from_raw_fd(r as RawFd) };
    Ok(Process { pidfd, tgid })
}

impl Process {
    /// A copy (CLOEXEC) of the process's fd `fd`: `EPERM` when the
    /// process is not ours to read (it made itself non-dumpable).
    pub fn copy_fd(&self, fd: RawFd) -> Result<OwnedFd, i32> {
        // SAFETY: pidfd_getfd returns a new fd or -1.
        let r = unsafe { libc::syscall(libc::SYS_pidfd_getfd, self.pidfd.as_raw_fd(), fd, 0) };
        if r < 0 {
            return Err(errno());
        }
        // SAFETY: a new fd, ours (pidfd_getfd sets O_CLOEXEC on it).
        Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
    }

    /// Does the process's fd `fd` have `FD_CLOEXEC`? From `fdinfo`, whose
    /// `flags` show `O_CLOEXEC` for it; unreadable: no.
    pub fn is_cloexec(&self, fd: RawFd) -> bool {
        std::fs::read_to_string(format!("/proc/{}/fdinfo/{fd}", self.tgid))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("flags:"))
                    .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
            })
            .is_some_and(|f| f & libc::O_CLOEXEC as u32 != 0)
    }
}

/// Why a caught bind is left to the kernel.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Skip {
    /// Nothing to say: the kernel's answer is the right one (a socket
    /// already bound, a family that differs from the address's).
    Quiet,
    /// Worth a log line.
    Say(String),
}

/// What the program's socket asks for.
#[derive(Debug)]
pub(crate) struct Wanted {
    pub spec: SocketSpec,
    pub nonblock: bool,
}

fn flag(fd: &impl AsFd, level: i32, opt: i32) -> Option<bool> {
    getsockopt_int(fd, level, opt).ok().map(|v| v != 0)
}

/// Look at the program's socket (our copy) for a bind to `ip`:`port`.
pub(crate) fn inspect(sock: &OwnedFd, ip: IpAddr, port: u16) -> Result<Wanted, Skip> {
    let domain =
        getsockopt_int(sock, libc::SOL_SOCKET, libc::SO_DOMAIN).map_err(|_| Skip::Quiet)?;
    let v6 = match domain {
        libc::AF_INET => false,
        libc::AF_INET6 => true,
        _ => return Err(Skip::Quiet),
    };
    // An IPv4 address on an IPv6 socket or the reverse: the kernel's EINVAL
    // or EAFNOSUPPORT is the answer.
    if v6 != ip.is_ipv6() {
        return Err(Skip::Quiet);
    }
    let ty = getsockopt_int(sock, libc::SOL_SOCKET, libc::SO_TYPE).map_err(|_| Skip::Quiet)?;
    let protocol = getsockopt_int(sock, libc::SOL_SOCKET, libc::SO_PROTOCOL).unwrap_or(-1);
    let proto = match (ty, protocol) {
        (libc::SOCK_STREAM, libc::IPPROTO_TCP) => Proto::Tcp,
        (libc::SOCK_DGRAM, libc::IPPROTO_UDP) => Proto::Udp,
        // Go (1.24+) listens with MPTCP first and falls back to TCP when
        // that fails: the fallback's bind is the one caught.
        (libc::SOCK_STREAM, libc::IPPROTO_MPTCP) => {
            return Err(Skip::Say(
                "an MPTCP socket (the broker makes TCP and UDP ones)".into(),
            ))
        }
        _ => {
            return Err(Skip::Say(format!(
                "socket type {ty} protocol {protocol} is neither TCP nor UDP"
            )))
        }
    };
    // Already bound: the kernel says EINVAL.
    if crate::sys::local_port(sock).is_ok_and(|p| p != 0) {
        return Err(Skip::Quiet);
    }
    let mut spec = SocketSpec::new(proto, ip, port);
    let o = &mut spec.options;
    o.reuseaddr = flag(sock, libc::SOL_SOCKET, libc::SO_REUSEADDR);
    o.reuseport = flag(sock, libc::SOL_SOCKET, libc::SO_REUSEPORT);
    let (level, freebind, transparent) = if v6 {
        o.v6only = flag(sock, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY);
        (
            libc::IPPROTO_IPV6,
            libc::IPV6_FREEBIND,
            libc::IPV6_TRANSPARENT,
        )
    } else {
        (libc::IPPROTO_IP, libc::IP_FREEBIND, libc::IP_TRANSPARENT)
    };
    // Options that need a policy's leave are asked for only when set.
    o.freebind = flag(sock, level, freebind).filter(|&on| on);
    o.transparent = flag(sock, level, transparent).filter(|&on| on);
    o.mark = getsockopt_int(sock, libc::SOL_SOCKET, libc::SO_MARK)
        .ok()
        .filter(|&m| m != 0)
        .map(|m| m as u32);
    o.bindtodevice = bound_device(sock);
    o.rcvbuf = set_buffer(sock, libc::SO_RCVBUF, default_buffer(proto, true));
    o.sndbuf = set_buffer(sock, libc::SO_SNDBUF, default_buffer(proto, false));
    let nonblock = rustix::fs::fcntl_getfl(sock)
        .map(|f| f.contains(rustix::fs::OFlags::NONBLOCK))
        .unwrap_or(false);
    spec.validate().map_err(|e| Skip::Say(e.to_string()))?;
    Ok(Wanted { spec, nonblock })
}

/// A buffer size the program set before bind: the kernel keeps it doubled,
/// and a socket nobody set one on has the default for its protocol (read
/// now; unknown: not carried). Set to that very default, it cannot be told
/// apart, and the broker's socket has the same size anyway.
fn set_buffer(sock: &OwnedFd, opt: i32, default: Option<u32>) -> Option<u32> {
    let v = getsockopt_int(sock, libc::SOL_SOCKET, opt).ok()? as u32;
    (v != default?).then_some(v / 2).filter(|&v| v > 0)
}

/// The buffer size a new socket of `proto` gets: TCP's from `tcp_rmem` /
/// `tcp_wmem` (the middle value), UDP's from `rmem_default` /
/// `wmem_default`.
fn default_buffer(proto: Proto, receive: bool) -> Option<u32> {
    let (path, field) = match (proto, receive) {
        (Proto::Tcp, true) => ("/proc/sys/net/ipv4/tcp_rmem", 1),
        (Proto::Tcp, false) => ("/proc/sys/net/ipv4/tcp_wmem", 1),
        (_, true) => ("/proc/sys/net/core/rmem_default", 0),
        (_, false) => ("/proc/sys/net/core/wmem_default", 0),
    };
    std::fs::read_to_string(path)
        .ok()?
        .split_whitespace()
        .nth(field)?
        .parse()
        .ok()
}

/// `SO_BINDTODEVICE`'s interface name, if one is set.
fn bound_device(sock: &OwnedFd) -> Option<String> {
    let mut name = [0u8; libc::IFNAMSIZ];
    let mut len = name.len() as libc::socklen_t;
    // SAFETY: name and len are valid for writing.
    let r = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            name.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if r < 0 {
        return None;
    }
    let n = &name[..(len as usize).min(name.len())];
    let n = n.split(|&c| c == 0).next().unwrap_or(&[]);
    (!n.is_empty()).then(|| String::from_utf8_lossy(n).into_owned())
}

/// Give the socket the program's `O_NONBLOCK`.
pub(crate) fn set_nonblock(fd: &OwnedFd, on: bool) -> Result<(), i32> {
    let fl = rustix::fs::fcntl_getfl(fd).map_err(|e| e.raw_os_error())?;
    let want = if on {
        fl | rustix::fs::OFlags::NONBLOCK
    } else {
        fl.difference(rustix::fs::OFlags::NONBLOCK)
    };
    if want != fl {
        rustix::fs::fcntl_setfl(fd, want).map_err(|e| e.raw_os_error())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        let mut v4 = [0u8; 16];
        v4[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        v4[2..4].copy_from_slice(&80u16.to_be_bytes());
        v4[4..8].copy_from_slice(&[127, 0, 0, 1]);
        assert_eq!(
            parse_addr(&v4),
            Addr::Inet("127.0.0.1".parse().unwrap(), 80, 0)
        );
        assert_eq!(parse_addr(&v4[..15]), Addr::Other);
        let mut v6 = [0u8; 28];
        v6[..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
        v6[2..4].copy_from_slice(&53u16.to_be_bytes());
        v6[23] = 1;
        assert_eq!(parse_addr(&v6), Addr::Inet("::1".parse().unwrap(), 53, 0));
        let mut un = [0u8; 16];
        un[..2].copy_from_slice(&(libc::AF_UNIX as u16).to_ne_bytes());
        assert_eq!(parse_addr(&un), Addr::Other);
    }
}
