//! Turn a [`SocketSpec`] into a bound socket: socket(), the options that must
//! precede bind(), bind(), and listen() when a backlog was asked for.

use sockpass::sys;
use sockpass::{Error, Result};
use sockpass::{Proto, SocketSpec};
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// A freshly created socket and the port it is bound to (the kernel's choice
/// when the spec asked for port 0).
#[derive(Debug)]
pub struct Created {
    pub fd: OwnedFd,
    pub port: u16,
}

/// Create, configure and bind the socket a spec describes. Every fd is CLOEXEC.
pub fn create_socket(spec: &SocketSpec) -> Result<Created> {
    spec.validate()?;
    create_canonical(&spec.canonical())
}

/// [`create_socket`] for a spec that was validated and canonicalized
/// already, as every spec a request decoded is (validating and
/// canonicalizing it again was a tenth of the broker's work for an
/// uncached socket).
pub(crate) fn create_canonical(spec: &SocketSpec) -> Result<Created> {
    if spec.proto.is_unix() {
        return crate::unixsock::create_unix(spec);
    }
    let family = if spec.is_ipv6() {
        libc::AF_INET6
    } else {
        libc::AF_INET
    };
    let ty = spec.proto.sock_type();
    let protocol = if spec.proto == Proto::Raw {
        spec.ipproto as i32
    } else {
        0
    };
    // SAFETY: plain syscall; the result is checked before it is owned.
    let raw = unsafe { libc::socket(family, ty | libc::SOCK_CLOEXEC, protocol) };
    if raw < 0 {
        return Err(Error::last_os(format!("socket() for {spec}")));
    }
    // SAFETY: raw is a fresh fd we own.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let o = &spec.options;
    let flag = |name: &str, level, opt, on: Option<bool>| -> Result<()> {
        match on {
            Some(v) => sys::setsockopt_int(&fd, level, opt, v as i32)
                .map_err(|e| Error::os(e, format!("setsockopt {name} for {spec}"))),
            None => Ok(()),
        }
    };
    // Off is a new socket's default: only on costs a syscall (one of five
    // per uncached socket, B4 and B10).
    flag(
        "reuseaddr",
        libc::SOL_SOCKET,
        libc::SO_REUSEADDR,
        o.reuseaddr.filter(|v| *v),
    )?;
    flag(
        "reuseport",
        libc::SOL_SOCKET,
        libc::SO_REUSEPORT,
        o.reuseport.filter(|v| *v),
    )?;
    if spec.is_ipv6() {
        flag("v6only", libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, o.v6only)?;
        flag(
            "freebind",
            libc::IPPROTO_IPV6,
            libc::IPV6_FREEBIND,
            o.freebind.filter(|v| *v),
        )?;
        flag(
            "transparent",
            libc::IPPROTO_IPV6,
            libc::IPV6_TRANSPARENT,
            o.transparent.filter(|v| *v),
        )?;
    } else {
        flag(
            "freebind",
            libc::IPPROTO_IP,
            libc::IP_FREEBIND,
            o.freebind.filter(|v| *v),
        )?;
        flag(
            "transparent",
            libc::IPPROTO_IP,
            libc::IP_TRANSPARENT,
            o.transparent.filter(|v| *v),
        )?;
    }
    for (name, opt, v) in [
        ("rcvbuf", libc::SO_RCVBUF, o.rcvbuf),
        ("sndbuf", libc::SO_SNDBUF, o.sndbuf),
        ("mark", libc::SO_MARK, o.mark),
    ] {
        if let Some(v) = v {
            sys::setsockopt_int(&fd, libc::SOL_SOCKET, opt, v as i32)
                .map_err(|e| Error::os(e, format!("setsockopt {name} for {spec}")))?;
        }
    }
    if let Some(dev) = &o.bindtodevice {
        // SAFETY: the option value is the name's bytes with its length.
        let r = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_BINDTODEVICE,
                dev.as_ptr().cast(),
                dev.len() as libc::socklen_t,
            )
        };
        if r < 0 {
            let e = sockpass::sys::errno();
            let what = if e == libc::ENODEV {
                format!("interface {dev:?} does not exist")
            } else {
                format!("setsockopt bindtodevice={dev} for {spec}")
            };
            return Err(Error::os(e, what));
        }
    }
    let (sa, len) = sys::sockaddr_from(spec.addr, spec.port);
    // SAFETY: sa is a properly initialised sockaddr of length len.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_storage).cast(),
            len,
        )
    };
    if r < 0 {
        return Err(Error::last_os(format!("bind {spec}")));
    }
    // A raw socket has no port (getsockname reports its protocol there).
    let port = if spec.is_ephemeral() {
        sys::local_port(&fd).map_err(|e| Error::os(e, "getsockname"))?
    } else {
        spec.port
    };
    if let Some(backlog) = o.backlog {
        // SAFETY: plain syscall on our fd.
        if unsafe { libc::listen(fd.as_raw_fd(), backlog.min(i32::MAX as u32) as i32) } < 0 {
            return Err(Error::last_os(format!("listen {spec}")));
        }
    }
    Ok(Created { fd, port })
}

/// The address family of an IP address, for callers that need it.
pub fn family_of(addr: &IpAddr) -> i32 {
    match addr {
        IpAddr::V4(_) => libc::AF_INET,
        IpAddr::V6(_) => libc::AF_INET6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_bound_udp_and_tcp() {
        let c = create_socket(&"udp:127.0.0.1:0".parse().unwrap()).unwrap();
        assert_ne!(c.port, 0);
        assert!(sys::is_cloexec(c.fd.as_raw_fd()));
        let t = create_socket(&"tcp:[::1]:0?backlog=4".parse().unwrap()).unwrap();
        assert_ne!(t.port, 0);
        assert_eq!(
            sys::getsockopt_int(&t.fd, libc::SOL_SOCKET, libc::SO_ACCEPTCONN).unwrap(),
            1
        );
        assert_eq!(
            sys::getsockopt_int(&t.fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY).unwrap(),
            1
        );
    }

    #[test]
    fn missing_interface_is_clear() {
        let e =
            create_socket(&"udp:127.0.0.1:0?bindtodevice=nosuchif0".parse().unwrap()).unwrap_err();
        assert!(
            e.message().contains("does not exist") || e.kind() == sockpass::Kind::NotAllowed,
            "{e}"
        );
    }
}
