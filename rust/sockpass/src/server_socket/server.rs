//! The receiving side: a daemon adopts a listening socket a manager handed
//! it, optionally with a "bound and listening" notifier (the read end of a
//! pipe), waits for the notifier, then accepts.

use crate::dbus_address;
use crate::error::{Error, Kind, Result};
use crate::sys::{self, Creds};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// A server socket handed in by a manager. Accepting is allowed only once it
/// is known to be listening: at once without a notifier, after the notifier
/// fired with one.
#[derive(Debug)]
pub struct ServerSocket {
    fd: OwnedFd,
    notifier: Option<OwnedFd>,
    /// Known to listen; stays false for good if the notifier fired on a
    /// socket that did not listen.
    listening: bool,
    path: Vec<u8>,
    address: String,
}

fn bad(errno: i32, msg: String) -> Error {
    Error::with_errno(Kind::BadRequest, errno, msg)
}

/// `fstat` of any fd.
pub(crate) fn fstat(fd: BorrowedFd<'_>) -> Result<libc::stat> {
    // SAFETY: fstat writes into a zeroed struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(Error::last_os("fstat"));
    }
    Ok(st)
}

/// Check that `fd` is a socket of `domain` and `ty`, with a distinct error
/// for each way it is not. `what` names the fd in messages.
pub(crate) fn check_socket(fd: BorrowedFd<'_>, ty: i32, what: &str) -> Result<()> {
    let st = fstat(fd)?;
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(bad(
            libc::ENOTSOCK,
            format!("{what} is not a socket ({})", file_kind(st.st_mode)),
        ));
    }
    // Type first: a UDP socket and a TCP socket then fail differently.
    let t = sys::getsockopt_int(&fd, libc::SOL_SOCKET, libc::SO_TYPE)
        .map_err(|e| Error::os(e, "getsockopt SO_TYPE"))?;
    if t != ty {
        return Err(bad(
            libc::EPROTOTYPE,
            format!("{what} is a {} socket, not {}", type_name(t), type_name(ty)),
        ));
    }
    let domain = sys::getsockopt_int(&fd, libc::SOL_SOCKET, libc::SO_DOMAIN)
        .map_err(|e| Error::os(e, "getsockopt SO_DOMAIN"))?;
    if domain != libc::AF_UNIX {
        return Err(bad(
            libc::EAFNOSUPPORT,
            format!(
                "{what} is not a unix-domain socket (family {})",
                family_name(domain)
            ),
        ));
    }
    Ok(())
}

pub(crate) fn is_listening(fd: BorrowedFd<'_>) -> Result<bool> {
    sys::getsockopt_int(&fd, libc::SOL_SOCKET, libc::SO_ACCEPTCONN)
        .map(|v| v != 0)
        .map_err(|e| Error::os(e, "getsockopt SO_ACCEPTCONN"))
}

/// The bound address of a unix socket: path bytes, or a NUL then the
/// abstract name; empty when unbound.
pub fn unix_local_path(fd: BorrowedFd<'_>) -> Result<Vec<u8>> {
    // SAFETY: zeroed sockaddr_un; getsockname writes at most len bytes.
    let mut sun: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    let r = unsafe {
        libc::getsockname(
            fd.as_raw_fd(),
            (&mut sun as *mut libc::sockaddr_un).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(Error::last_os("getsockname"));
    }
    let base = std::mem::size_of::<libc::sa_family_t>();
    let n = (len as usize).saturating_sub(base).min(sun.sun_path.len());
    let mut p: Vec<u8> = sun.sun_path[..n].iter().map(|c| *c as u8).collect();
    // A path carries its terminating NUL (sometimes); an abstract name
    // starts with NUL and is exactly `n` bytes.
    if p.first() != Some(&0) {
        if let Some(end) = p.iter().position(|b| *b == 0) {
            p.truncate(end);
        }
    }
    Ok(p)
}

fn file_kind(mode: libc::mode_t) -> &'static str {
    match mode & libc::S_IFMT {
        libc::S_IFREG => "a regular file",
        libc::S_IFDIR => "a directory",
        libc::S_IFIFO => "a pipe or FIFO",
        libc::S_IFCHR => "a character device",
        libc::S_IFBLK => "a block device",
        libc::S_IFLNK => "a symlink",
        libc::S_IFSOCK => "a socket",
        _ => "an unknown kind of file",
    }
}

fn family_name(f: i32) -> String {
    match f {
        libc::AF_INET => "AF_INET".into(),
        libc::AF_INET6 => "AF_INET6".into(),
        libc::AF_NETLINK => "AF_NETLINK".into(),
        libc::AF_PACKET => "AF_PACKET".into(),
        n => n.to_string(),
    }
}

fn type_name(t: i32) -> String {
    match t {
        libc::SOCK_STREAM => "SOCK_STREAM".into(),
        libc::SOCK_DGRAM => "SOCK_DGRAM".into(),
        libc::SOCK_SEQPACKET => "SOCK_SEQPACKET".into(),
        libc::SOCK_RAW => "SOCK_RAW".into(),
        n => format!("type {n}"),
    }
}

impl ServerSocket {
    /// Adopt `fd` as a unix stream server socket. Without a `notifier` it
    /// must already listen and have an address; with one, `notifier` must be
    /// the read end of a pipe or FIFO, and the socket may not be bound yet.
    /// On error both fds are closed.
    pub fn adopt(fd: OwnedFd, notifier: Option<OwnedFd>) -> Result<ServerSocket> {
        ServerSocket::adopt_type(fd, notifier, libc::SOCK_STREAM)
    }

    /// [`adopt`](Self::adopt) for a unix socket of type `ty`
    /// (`SOCK_STREAM` or `SOCK_SEQPACKET`).
    pub fn adopt_type(fd: OwnedFd, notifier: Option<OwnedFd>, ty: i32) -> Result<ServerSocket> {
        check_socket(fd.as_fd(), ty, "the server socket")?;
        if peer_connected(fd.as_fd()) {
            return Err(bad(
                libc::EISCONN,
                "the server socket is connected to a peer (a socketpair end or a client socket?), not a server socket".into(),
            ));
        }
        let mut s = ServerSocket {
            fd,
            notifier: None,
            listening: false,
            path: Vec::new(),
            address: String::new(),
        };
        match notifier {
            Some(n) => {
                check_notifier(n.as_fd())?;
                s.notifier = Some(n);
            }
            None => s.confirm_listening("the server socket")?,
        }
        Ok(s)
    }

    /// After the socket is known to listen: record its address.
    fn confirm_listening(&mut self, what: &str) -> Result<()> {
        if !is_listening(self.fd.as_fd())? {
            return Err(bad(
                libc::EINVAL,
                format!(
                    "{what} is not listening (SO_ACCEPTCONN is 0: an unbound or connected socket?)"
                ),
            ));
        }
        let path = unix_local_path(self.fd.as_fd())?;
        if path.is_empty() {
            return Err(bad(libc::EDESTADDRREQ, format!("{what} has no address")));
        }
        self.address = dbus_address::unix_address(&path);
        self.path = path;
        self.listening = true;
        Ok(())
    }

    /// The socket's address: path bytes, or a NUL byte then the abstract
    /// name. Empty while a notifier is pending.
    pub fn path(&self) -> &[u8] {
        &self.path
    }

    /// The D-Bus address (`unix:path=…` or `unix:abstract=…`); empty while a
    /// notifier is pending.
    pub fn dbus_address(&self) -> &str {
        &self.address
    }

    /// The notifier to watch in an event loop (readable or hung up means
    /// call [`check`](Self::check)); `None` once ready.
    pub fn notifier_fd(&self) -> Option<BorrowedFd<'_>> {
        self.notifier.as_ref().map(|n| n.as_fd())
    }

    /// True once the socket is known to listen.
    pub fn is_ready(&self) -> bool {
        self.listening
    }

    /// Without blocking: `Ok(true)` once ready (the notifier fired, is now
    /// closed, and the socket listens), `Ok(false)` if not yet. A notifier
    /// that fired on a socket that does not listen is a `NotReady` error.
    pub fn check(&mut self) -> Result<bool> {
        self.poll(0)
    }

    /// Block until ready, at most `timeout` (`None`: forever). Running out of
    /// time is a `Timeout` error and leaves the notifier pending.
    pub fn wait(&mut self, timeout: Option<Duration>) -> Result<()> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if self.poll(crate::readiness::remaining_ms(deadline))? {
                return Ok(());
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(Error::with_errno(
                    Kind::Timeout,
                    libc::ETIMEDOUT,
                    format!(
                        "the server socket's notifier did not fire within {:?}",
                        timeout.unwrap_or_default()
                    ),
                ));
            }
        }
    }

    fn poll(&mut self, ms: i32) -> Result<bool> {
        if self.listening {
            return Ok(true);
        }
        let Some(n) = &self.notifier else {
            return Err(manager_died());
        };
        let rev = sys::poll_one(n.as_fd(), libc::POLLIN, ms)
            .map_err(|e| Error::os(e, "poll on the notifier"))?;
        // A pipe whose writer closed reports POLLHUP alone: that is the signal.
        if rev & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) == 0 {
            return Ok(false);
        }
        self.notifier = None;
        if !is_listening(self.fd.as_fd())? {
            return Err(manager_died());
        }
        self.confirm_listening("the server socket")?;
        Ok(true)
    }

    /// Accept one connection: a CLOEXEC fd and the peer's credentials.
    /// Before readiness this is a `NotReady` error, never a blocked call on
    /// a socket that may never listen.
    pub fn accept(&self) -> Result<(OwnedFd, Creds)> {
        if !self.is_ready() {
            return Err(Error::with_errno(
                Kind::NotReady,
                libc::EAGAIN,
                "the server socket is not ready: wait for its notifier first",
            ));
        }
        let c = loop {
            // SAFETY: accept4 on our fd; null address is allowed.
            let r = unsafe {
                libc::accept4(
                    self.fd.as_raw_fd(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_CLOEXEC,
                )
            };
            if r >= 0 {
                // SAFETY: r is a new fd we own.
                break unsafe { OwnedFd::from_raw_fd(r) };
            }
            let e = sys::errno();
            if e != libc::EINTR && e != libc::ECONNABORTED {
                return Err(Error::os(e, "accept"));
            }
        };
        let creds = sys::peer_creds(&c).map_err(|e| Error::os(e, "SO_PEERCRED"))?;
        Ok((c, creds))
    }

    /// The listening socket (for an event loop; set it nonblocking there).
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Give up the socket (and close a pending notifier).
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }
}

fn manager_died() -> Error {
    Error::with_errno(
        Kind::NotReady,
        libc::ENOTCONN,
        "the notifier fired but the server socket is not listening (did the manager exit before listen()?)",
    )
}

/// True if `fd` has a peer (getpeername succeeds).
fn peer_connected(fd: BorrowedFd<'_>) -> bool {
    // SAFETY: zeroed storage; getpeername writes at most len bytes.
    let mut sa: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    unsafe {
        libc::getpeername(
            fd.as_raw_fd(),
            (&mut sa as *mut libc::sockaddr_storage).cast(),
            &mut len,
        ) == 0
    }
}

/// A notifier must be the read end of a pipe or FIFO.
fn check_notifier(n: BorrowedFd<'_>) -> Result<()> {
    let st = fstat(n)?;
    if st.st_mode & libc::S_IFMT != libc::S_IFIFO {
        return Err(bad(
            libc::EINVAL,
            format!(
                "the notifier is not a pipe or FIFO ({})",
                file_kind(st.st_mode)
            ),
        ));
    }
    // SAFETY: F_GETFL on a valid fd.
    let fl = unsafe { libc::fcntl(n.as_raw_fd(), libc::F_GETFL) };
    if fl < 0 {
        return Err(Error::last_os("fcntl F_GETFL on the notifier"));
    }
    if fl & libc::O_ACCMODE != libc::O_RDONLY {
        return Err(bad(
            libc::EBADF,
            "the notifier is not opened for reading only (the write end of a pipe?)".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server_socket::manager::{bind_in_namespace, prepare_lazy, BindOptions};

    fn tmpdir(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("sockpass-srv-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir(&d).unwrap();
        d
    }

    fn inet(ty: i32) -> OwnedFd {
        // SAFETY: plain syscall; checked.
        let r = unsafe { libc::socket(libc::AF_INET, ty | libc::SOCK_CLOEXEC, 0) };
        assert!(r >= 0);
        unsafe { OwnedFd::from_raw_fd(r) }
    }

    #[test]
    fn bad_server_sockets_get_distinct_errors() {
        let file: OwnedFd = std::fs::File::open("/proc/self/status").unwrap().into();
        let (a, _b) = crate::fdpass::socketpair(libc::SOCK_STREAM).unwrap();
        let unbound = sys::unix_socket(libc::SOCK_STREAM, false).unwrap();
        let cases = [
            (file, libc::ENOTSOCK),
            (inet(libc::SOCK_DGRAM), libc::EPROTOTYPE),
            (inet(libc::SOCK_STREAM), libc::EAFNOSUPPORT),
            (a, libc::EISCONN),
            (unbound, libc::EINVAL),
        ];
        for (fd, errno) in cases {
            let e = ServerSocket::adopt(fd, None).unwrap_err();
            assert_eq!((e.kind(), e.errno()), (Kind::BadRequest, errno), "{e}");
        }
    }

    #[test]
    fn bad_notifiers_get_distinct_errors() {
        let (r, w) = crate::readiness::pipe().unwrap();
        let s = sys::unix_socket(libc::SOCK_STREAM, false).unwrap();
        let e = ServerSocket::adopt(s, Some(w)).unwrap_err();
        assert_eq!(e.errno(), libc::EBADF, "{e}");
        let s = sys::unix_socket(libc::SOCK_STREAM, false).unwrap();
        let f: OwnedFd = std::fs::File::open("/proc/self/status").unwrap().into();
        let e = ServerSocket::adopt(s, Some(f)).unwrap_err();
        assert_eq!(e.errno(), libc::EINVAL, "{e}");
        drop(r);
    }

    #[test]
    fn eager_socket_has_path_and_address_and_accepts_with_creds() {
        let d = tmpdir("eager");
        let p = d.join("bus socket");
        let fd = bind_in_namespace(
            None,
            p.as_os_str().as_encoded_bytes(),
            &BindOptions::default(),
        )
        .unwrap();
        let s = ServerSocket::adopt(fd, None).unwrap();
        assert_eq!(s.path(), p.as_os_str().as_encoded_bytes());
        assert!(
            s.dbus_address().ends_with("/bus%20socket"),
            "{}",
            s.dbus_address()
        );
        let c = sys::unix_socket(libc::SOCK_STREAM, false).unwrap();
        sys::connect_unix(&c, s.path()).unwrap();
        let (conn, creds) = s.accept().unwrap();
        assert!(sys::is_cloexec(conn.as_raw_fd()));
        assert_eq!(creds.pid, std::process::id() as i32);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn lazy_socket_waits_for_the_notifier() {
        let d = tmpdir("lazy");
        let p = d.join("s");
        let mut lazy = prepare_lazy(None, false).unwrap();
        let mut s = ServerSocket::adopt(
            lazy.daemon_socket.take().unwrap(),
            lazy.daemon_notifier.take(),
        )
        .unwrap();
        assert_eq!((s.path(), s.dbus_address()), (&b""[..], ""));
        assert!(!s.check().unwrap());
        assert_eq!(s.accept().unwrap_err().kind(), Kind::NotReady);
        let e = s.wait(Some(Duration::from_millis(50))).unwrap_err();
        assert_eq!(e.kind(), Kind::Timeout);
        lazy.bind_and_notify(
            None,
            p.as_os_str().as_encoded_bytes(),
            &BindOptions::default(),
        )
        .unwrap();
        s.wait(Some(Duration::from_secs(30))).unwrap();
        assert!(s.notifier_fd().is_none());
        assert_eq!(s.path(), p.as_os_str().as_encoded_bytes());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn notifier_closed_before_listen_is_a_distinct_error() {
        let mut lazy = prepare_lazy(None, false).unwrap();
        let mut s = ServerSocket::adopt(
            lazy.daemon_socket.take().unwrap(),
            lazy.daemon_notifier.take(),
        )
        .unwrap();
        drop(lazy);
        let e = s.wait(Some(Duration::from_secs(30))).unwrap_err();
        assert_eq!(
            (e.kind(), e.errno()),
            (Kind::NotReady, libc::ENOTCONN),
            "{e}"
        );
        // Stays failed: no accept on a socket that never listened.
        assert_eq!(s.check().unwrap_err().errno(), libc::ENOTCONN);
        assert_eq!(s.accept().unwrap_err().kind(), Kind::NotReady);
    }
}
