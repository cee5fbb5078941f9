//! Server sockets handed into daemons (the core's `notify` module): the
//! daemon adopts a listening unix socket, optionally with a "bound and
//! listening" notifier, waits for it, then accepts; the manager makes the
//! notifier pair and binds inside another process's namespaces; and systemd
//! socket activation (`LISTEN_FDS`).

use crate::boundary::{call, fault};
use sockpass::{BindOptions, LazyServer, ServerSocket};
use sockpass::{Error, Kind};
use std::os::fd::{AsRawFd, BorrowedFd, IntoRawFd, OwnedFd};
use std::os::raw::{c_char, c_int};
use std::sync::{Mutex, RwLock};
use std::time::Duration;

/// Longest socket path or abstract name (with its leading NUL), in bytes:
/// the size of `sun_path` less its terminating NUL.
pub const SOCKPASS_MAX_UNIX_PATH: usize = 107;

/// `uid` or `gid` argument: leave the socket file's owner or group as it is.
pub const SOCKPASS_OWNER_KEEP: u32 = u32::MAX;

/// A peer's credentials (`SO_PEERCRED`), as the kernel recorded them when
/// the peer connected.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct sockpass_creds {
    /// The peer's process id (0 if it is in another pid namespace).
    pub pid: i32,
    /// The peer's effective user id.
    pub uid: u32,
    /// The peer's effective group id.
    pub gid: u32,
}

/// A unix stream or seqpacket server socket handed into this daemon, with
/// its optional notifier. Accepting is allowed only once the socket is
/// known to listen. Thread-safe: several threads may accept at once (and
/// ask for the fd or address meanwhile); `check` and `wait` are serialised
/// with everything else, which cannot matter since accepting needs them
/// done first.
pub struct sockpass_server {
    inner: RwLock<ServerSocket>,
}

impl sockpass_server {
    /// For the calls that change the readiness state.
    fn with<R>(
        &self,
        f: impl FnOnce(&mut ServerSocket) -> sockpass::Result<R>,
    ) -> sockpass::Result<R> {
        let mut s = self.inner.write().unwrap_or_else(|p| p.into_inner());
        f(&mut s)
    }

    /// For the calls that only read it (accept blocks here, not holding
    /// the others back).
    fn read<R>(&self, f: impl FnOnce(&ServerSocket) -> sockpass::Result<R>) -> sockpass::Result<R> {
        let s = self.inner.read().unwrap_or_else(|p| p.into_inner());
        f(&s)
    }
}

unsafe fn server_ref<'a>(s: *mut sockpass_server) -> sockpass::Result<&'a sockpass_server> {
    s.as_ref().ok_or_else(|| fault("server"))
}

/// A private CLOEXEC duplicate of the caller's `fd`, which stays the
/// caller's. Negative or closed fds are `EBADF`.
fn dup_borrowed(fd: c_int, what: &str) -> sockpass::Result<OwnedFd> {
    if fd < 0 || !sockpass::sys::fd_is_open(fd) {
        return Err(Error::with_errno(
            Kind::Os,
            libc::EBADF,
            format!("{what} {fd} is not an open fd"),
        ));
    }
    // SAFETY: fd is open; it is only borrowed for the dup.
    let b = unsafe { BorrowedFd::borrow_raw(fd) };
    sockpass::sys::dup_cloexec(b).map_err(|e| Error::os(e, "dup"))
}

fn socket_type(ty: c_int) -> sockpass::Result<c_int> {
    match ty {
        0 | libc::SOCK_STREAM => Ok(libc::SOCK_STREAM),
        libc::SOCK_SEQPACKET => Ok(libc::SOCK_SEQPACKET),
        t => Err(Error::bad_request(format!(
            "socket type {t} is neither SOCK_STREAM nor SOCK_SEQPACKET"
        ))),
    }
}

fn timeout_of(ms: c_int) -> Option<Duration> {
    u64::try_from(ms).ok().map(Duration::from_millis)
}

fn boxed(s: ServerSocket) -> *mut sockpass_server {
    Box::into_raw(Box::new(sockpass_server {
        inner: RwLock::new(s),
    }))
}

/// Adopt a unix server socket handed to this daemon.
///
/// `fd` is the socket and `notifier_fd` the read end of its notifier pipe,
/// or -1 for none. Both are borrowed: the server keeps its own `O_CLOEXEC`
/// duplicates, and the caller may close its fds right after the call.
/// `type` is `SOCK_STREAM` (or 0) or `SOCK_SEQPACKET`. Without a notifier
/// the socket must already listen and have an address; with one it may
/// still be unbound, and becomes usable once `sockpass_server_check` or
/// `sockpass_server_wait` report it ready.
///
/// On success writes a new server to `*server_out` (free it with
/// `sockpass_server_free`) and returns 0. Errors: `-EFAULT` (`server_out`
/// NULL), `-EBADF` (`fd` or `notifier_fd` negative or not open),
/// `-ENOTSOCK` (not a socket), `-EPROTOTYPE` (a socket of another type),
/// `-EAFNOSUPPORT` (not a unix socket), `-EISCONN` (connected to a peer),
/// `-EINVAL` (bad `type`; not listening or unbound without a notifier; the
/// notifier is not a pipe's read end); `sockpass_last_error_message` says
/// which.
#[no_mangle]
pub unsafe extern "C" fn sockpass_server_adopt(
    fd: c_int,
    notifier_fd: c_int,
    r#type: c_int,
    server_out: *mut *mut sockpass_server,
) -> c_int {
    call(|| {
        if server_out.is_null() {
            return Err(fault("server_out"));
        }
        let ty = socket_type(r#type)?;
        let sock = dup_borrowed(fd, "server socket")?;
        let notifier = match notifier_fd {
            -1 => None,
            n => Some(dup_borrowed(n, "notifier")?),
        };
        let s = ServerSocket::adopt_type(sock, notifier, ty)?;
        *server_out = boxed(s);
        Ok(0)
    })
}

/// Adopt the one listening unix socket of `type` (`SOCK_STREAM` or 0, or
/// `SOCK_SEQPACKET`) that systemd socket activation passed on fd 3
/// (`LISTEN_PID` is this process, `LISTEN_FDS=1`).
///
/// Returns 1 and writes a new server to `*server_out` (free it with
/// `sockpass_server_free`; the server now owns fd 3), or 0 without socket
/// activation (`*server_out` untouched). If `unset_env` is non-zero the
/// `LISTEN_*` variables are removed; as any change of the environment, do
/// that only while no other thread reads it. Errors: `-EFAULT`, `-EINVAL`
/// (bad `type`, malformed variables, more than one fd, or not listening),
/// `-ENOTSOCK`/`-EPROTOTYPE`/`-EAFNOSUPPORT`/`-EISCONN` (not a unix socket
/// of that type, as `sockpass_server_adopt`; the passed fds are then
/// closed), `-EBADF` (`LISTEN_FDS` names an fd that is not open).
#[no_mangle]
pub unsafe extern "C" fn sockpass_server_adopt_activation(
    r#type: c_int,
    unset_env: c_int,
    server_out: *mut *mut sockpass_server,
) -> c_int {
    call(|| {
        if server_out.is_null() {
            return Err(fault("server_out"));
        }
        let ty = socket_type(r#type)?;
        match sockpass::adopt_listen_socket(unset_env != 0, ty)? {
            Some(s) => {
                *server_out = boxed(s);
                Ok(1)
            }
            None => Ok(0),
        }
    })
}

/// Close the server's socket and its pending notifier, and free it. Fds
/// already accepted stay open and remain the caller's. NULL is a no-op.
#[no_mangle]
pub unsafe extern "C" fn sockpass_server_free(server: *mut sockpass_server) {
    if server.is_null() {
        return;
    }
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        drop(Box::from_raw(server));
    }));
}

/// The server's listening socket, for an event loop (set it nonblocking
/// there if you like). The fd belongs to the server: do not close it; it is
/// valid until `sockpass_server_free`. Errors: `-EFAULT`.
#[no_mangle]
pub unsafe extern "C" fn sockpass_server_fd(server: *mut sockpass_server) -> c_int {
    call(|| {
        let s = server_ref(server)?;
        s.read(|s| Ok(s.as_fd().as_raw_fd()))
    })
}

/// The pending notifier, for an event loop: when it is readable or hung
/// up, call `sockpass_server_check`. The fd belongs to the server: do not
/// close it; it is closed once the server is ready. Errors: `-EFAULT`,
/// `-ENOENT` (no notifier pending: the server is ready, or had none).
#[no_mangle]
pub unsafe extern "C" fn sockpass_server_notifier_fd(server: *mut sockpass_server) -> c_int {
    call(|| {
        let s = server_ref(server)?;
        s.read(|s| {
            s.notifier_fd()
                .map(|n| n.as_raw_fd())
                .ok_or_else(|| Error::with_errno(Kind::Os, libc::ENOENT, "no notifier is pending"))
        })
    })
}

/// Without blocking: 1 once the server is ready (its notifier fired and
/// the socket listens), 0 if not yet. Errors: `-EFAULT`,
/// `-SOCKPASS_E_NOT_READY` (the notifier fired on a socket that does not
/// listen: the manager gave up or died; the server stays unusable).
#[no_mangle]
pub unsafe extern "C" fn sockpass_server_check(server: *mut sockpass_server) -> c_int {
    call(|| {
        let s = server_ref(server)?;
        s.with(|s| s.check().map(c_int::from))
    })
}

/// Block until the server is ready, at most `timeout_ms` milliseconds
/// (negative: no limit). Returns 0. Errors: `-EFAULT`, `-ETIMEDOUT` (the
/// notifier stays pending; wait again later), `-SOCKPASS_E_NOT_READY` (as
/// for `sockpass_server_check`).
#[no_mangle]
pub unsafe extern "C" fn sockpass_server_wait(
    server: *mut sockpass_server,
    timeout_ms: c_int,
) -> c_int {
    call(|| {
        let s = server_ref(server)?;
        s.with(|s| s.wait(timeout_of(timeout_ms)).map(|()| 0))
    })
}

/// Accept one connection (blocking unless the caller made the socket
/// nonblocking). Returns the connection's fd (`O_CLOEXEC`; the caller owns
/// it) and, if `creds_out` is not NULL, writes the peer's credentials.
/// Errors: `-EFAULT`, `-SOCKPASS_E_NOT_READY` (not known to listen yet:
/// wait first; never a call blocked on a socket that may never listen),
/// `-EAGAIN` (nonblocking, nobody waiting), other `accept4` errnos.
#[no_mangle]
pub unsafe extern "C" fn sockpass_server_accept(
    server: *mut sockpass_server,
    creds_out: *mut sockpass_creds,
) -> c_int {
    call(|| {
        let s = server_ref(server)?;
        let (fd, c) = s.read(|s| s.accept())?;
        if let Some(out) = creds_out.as_mut() {
            *out = sockpass_creds {
                pid: c.pid,
                uid: c.uid,
                gid: c.gid,
            };
        }
        Ok(fd.into_raw_fd())
    })
}

/// The server's D-Bus address (`unix:path=…` or `unix:abstract=…`, ""
/// while a notifier is pending), written NUL-terminated into `buf` of
/// `size` bytes. Returns its length without the NUL. Errors: `-EFAULT`,
/// `-ENOBUFS` (`buf` too small: nothing written).
#[no_mangle]
pub unsafe extern "C" fn sockpass_server_dbus_address(
    server: *mut sockpass_server,
    buf: *mut c_char,
    size: usize,
) -> c_int {
    call(|| {
        let s = server_ref(server)?;
        if buf.is_null() {
            return Err(fault("buf"));
        }
        let a = s.read(|s| Ok(s.dbus_address().to_owned()))?;
        if a.len() >= size {
            return Err(Error::with_errno(
                Kind::Os,
                libc::ENOBUFS,
                format!("address buffer is {size} bytes, {} are needed", a.len() + 1),
            ));
        }
        std::ptr::copy_nonoverlapping(a.as_ptr(), buf.cast::<u8>(), a.len());
        *buf.add(a.len()) = 0;
        Ok(a.len() as c_int)
    })
}

/// Make a notifier pair: `fds_out[0]` is the read end for the daemon
/// (`sockpass_server_adopt`), `fds_out[1]` the write end for the manager,
/// which closes it once the socket listens. Both are `O_CLOEXEC` and owned
/// by the caller. Returns 0. Errors: `-EFAULT`, `-EMFILE`.
#[no_mangle]
pub unsafe extern "C" fn sockpass_notifier_pair(fds_out: *mut c_int) -> c_int {
    call(|| {
        if fds_out.is_null() {
            return Err(fault("fds_out"));
        }
        let (r, w) = sockpass::notifier_pair()?;
        *fds_out = r.into_raw_fd();
        *fds_out.add(1) = w.into_raw_fd();
        Ok(0)
    })
}

/// Bind a unix stream socket and listen, inside the namespaces of process
/// `pid` (0: this process): a path (`path` starts with '/') in its mount
/// namespace, an abstract name (`path` starts with a NUL byte) in its
/// network namespace. `path` is `path_len` bytes (no terminating NUL
/// needed; at most `SOCKPASS_MAX_UNIX_PATH`), borrowed for the call.
/// `mode` is the socket file's mode (-1: 0666), `uid`/`gid` its owner
/// (`SOCKPASS_OWNER_KEEP` leaves one as it is), `backlog` the listen
/// backlog (-1: 128). Mode and owner are ignored for abstract names.
///
/// Returns the listening socket's fd (`O_CLOEXEC`; the caller owns it).
/// Other namespaces are joined only in a short-lived helper child.
/// Errors: `-EFAULT`, `-EINVAL` (relative path, empty or too long, bad
/// `mode` or `backlog`, negative `pid`), `-ESRCH`, `-EPERM`, `-EADDRINUSE`,
/// and the errno of the step that failed (`sockpass_last_error_message`
/// names it).
#[no_mangle]
pub unsafe extern "C" fn sockpass_bind_in_namespace(
    pid: c_int,
    path: *const c_char,
    path_len: usize,
    mode: c_int,
    uid: u32,
    gid: u32,
    backlog: c_int,
) -> c_int {
    call(|| {
        let target = target_of(pid)?;
        let path = path_of(path, path_len)?;
        let opts = bind_options(mode, uid, gid, backlog)?;
        Ok(sockpass::bind_in_namespace(target, path, &opts)?.into_raw_fd())
    })
}

/// The manager's side of a lazy handover: a unix stream socket handed to
/// the daemon before it is bound, with the notifier that tells the daemon
/// when it listens. Thread-safe (calls are serialised).
pub struct sockpass_lazy_server {
    inner: Mutex<LazyServer>,
}

/// Lazy handover, step one: make an unbound unix stream socket (in the
/// network namespace of process `pid` if `abstract_name` is non-zero and
/// `pid` is not 0, since abstract names belong to the namespace the socket
/// was made in; else here) and a notifier pair.
///
/// On success writes a new handle to `*lazy_out`, and the daemon's copy of
/// the socket and the notifier's read end to `*socket_out` and
/// `*notifier_out` (both `O_CLOEXEC` and owned by the caller: hand them to
/// the daemon, which passes them to `sockpass_server_adopt`, then close
/// them here), and returns 0. Then call `sockpass_lazy_server_bind`.
/// Errors: `-EFAULT`, `-EINVAL` (negative `pid`), `-ESRCH`, `-EPERM`.
#[no_mangle]
pub unsafe extern "C" fn sockpass_lazy_server_new(
    pid: c_int,
    abstract_name: c_int,
    lazy_out: *mut *mut sockpass_lazy_server,
    socket_out: *mut c_int,
    notifier_out: *mut c_int,
) -> c_int {
    call(|| {
        if lazy_out.is_null() || socket_out.is_null() || notifier_out.is_null() {
            return Err(fault("lazy_out, socket_out or notifier_out"));
        }
        let target = target_of(pid)?;
        let mut l = sockpass::prepare_lazy(target, abstract_name != 0)?;
        let (Some(sock), Some(n)) = (l.daemon_socket.take(), l.daemon_notifier.take()) else {
            return Err(Error::protocol("the lazy server has no daemon fds"));
        };
        *socket_out = sock.into_raw_fd();
        *notifier_out = n.into_raw_fd();
        *lazy_out = Box::into_raw(Box::new(sockpass_lazy_server {
            inner: Mutex::new(l),
        }));
        Ok(0)
    })
}

/// Lazy handover, step two: bind `path` (as for
/// `sockpass_bind_in_namespace`: `path_len` bytes, '/' or a NUL byte
/// first) inside the namespaces of process `pid` (0: this process), listen,
/// then close the notifier so that the daemon sees it fire. The handle is
/// consumed (freed) whatever the outcome; on error the notifier is closed
/// too, and the daemon learns that the socket does not listen
/// (`-SOCKPASS_E_NOT_READY` there). Returns 0. Errors: `-EFAULT`, `-EINVAL`
/// (bad path, `mode` or `backlog`; negative `pid`), `-EADDRINUSE`,
/// `-ESRCH`, `-EPERM`, and the errno of the failed step.
#[no_mangle]
pub unsafe extern "C" fn sockpass_lazy_server_bind(
    lazy: *mut sockpass_lazy_server,
    pid: c_int,
    path: *const c_char,
    path_len: usize,
    mode: c_int,
    uid: u32,
    gid: u32,
    backlog: c_int,
) -> c_int {
    call(|| {
        if lazy.is_null() {
            return Err(fault("lazy"));
        }
        let l = Box::from_raw(lazy);
        let l = l.inner.into_inner().unwrap_or_else(|p| p.into_inner());
        let target = target_of(pid)?;
        let path = path_of(path, path_len)?;
        let opts = bind_options(mode, uid, gid, backlog)?;
        l.bind_and_notify(target, path, &opts).map(|()| 0)
    })
}

/// Give up a lazy handover without binding: the notifier fires on a socket
/// that does not listen, which the daemon reports as
/// `-SOCKPASS_E_NOT_READY`. NULL is a no-op.
#[no_mangle]
pub unsafe extern "C" fn sockpass_lazy_server_free(lazy: *mut sockpass_lazy_server) {
    if lazy.is_null() {
        return;
    }
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        drop(Box::from_raw(lazy));
    }));
}

fn target_of(pid: c_int) -> sockpass::Result<Option<i32>> {
    match pid {
        0 => Ok(None),
        p if p > 0 => Ok(Some(p)),
        p => Err(Error::bad_request(format!("pid {p} is negative"))),
    }
}

unsafe fn path_of<'a>(p: *const c_char, len: usize) -> sockpass::Result<&'a [u8]> {
    if p.is_null() {
        return Err(fault("path"));
    }
    if len == 0 || len > SOCKPASS_MAX_UNIX_PATH {
        return Err(Error::bad_request(format!(
            "socket path is {len} bytes; 1 to {SOCKPASS_MAX_UNIX_PATH} are allowed"
        )));
    }
    Ok(std::slice::from_raw_parts(p.cast::<u8>(), len))
}

fn bind_options(mode: c_int, uid: u32, gid: u32, backlog: c_int) -> sockpass::Result<BindOptions> {
    let mut o = BindOptions::default();
    match mode {
        -1 => {}
        m if (0..=0o7777).contains(&m) => o.mode = m as u32,
        m => {
            return Err(Error::bad_request(format!(
                "mode {m:#o} is not a file mode"
            )))
        }
    }
    if uid != SOCKPASS_OWNER_KEEP || gid != SOCKPASS_OWNER_KEEP {
        o.owner = Some((uid, gid));
    }
    match backlog {
        -1 => {}
        b if b >= 0 => o.backlog = b,
        b => return Err(Error::bad_request(format!("backlog {b} is negative"))),
    }
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;
    use std::os::fd::{AsFd, FromRawFd};
    use std::os::unix::net::{UnixListener, UnixStream};

    fn code(f: impl FnOnce() -> c_int) -> (c_int, String) {
        let r = f();
        // SAFETY: a NUL-terminated thread-local string.
        let m = unsafe { CStr::from_ptr(crate::sockpass_last_error_message()) };
        (r, m.to_string_lossy().into_owned())
    }

    /// A temp dir removed on drop, with a socket path inside.
    struct TempSock(std::path::PathBuf);
    impl TempSock {
        fn new(name: &str) -> TempSock {
            let d =
                std::env::temp_dir().join(format!("sockpass-ffi-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).unwrap();
            TempSock(d)
        }
        fn path(&self) -> std::path::PathBuf {
            self.0.join("s.sock")
        }
    }
    impl Drop for TempSock {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn adopt_listening_socket_accepts_with_creds() {
        let t = TempSock::new("listen");
        let p = t.path();
        let l = UnixListener::bind(&p).unwrap();
        let mut s = std::ptr::null_mut();
        let r = unsafe { sockpass_server_adopt(l.as_fd().as_raw_fd(), -1, 0, &mut s) };
        assert_eq!(r, 0);
        drop(l); // the server holds its own copy
        let mut buf = [0 as c_char; 256];
        let n = unsafe { sockpass_server_dbus_address(s, buf.as_mut_ptr(), buf.len()) };
        let a = unsafe { CStr::from_ptr(buf.as_ptr()) }.to_str().unwrap();
        assert_eq!(n as usize, a.len());
        assert_eq!(a, format!("unix:path={}", p.display()));
        let _peer = UnixStream::connect(&p).unwrap();
        let mut c = sockpass_creds::default();
        let fd = unsafe { sockpass_server_accept(s, &mut c) };
        assert!(fd >= 0);
        // SAFETY: the accepted fd is ours.
        drop(unsafe { OwnedFd::from_raw_fd(fd) });
        assert_eq!(c.pid as u32, std::process::id());
        assert_eq!(c.uid, unsafe { libc::geteuid() });
        assert_eq!(unsafe { sockpass_server_notifier_fd(s) }, -libc::ENOENT);
        let mut small = [0 as c_char; 4];
        assert_eq!(
            unsafe { sockpass_server_dbus_address(s, small.as_mut_ptr(), small.len()) },
            -libc::ENOBUFS
        );
        unsafe { sockpass_server_free(s) };
        unsafe { sockpass_server_free(std::ptr::null_mut()) };
    }

    #[test]
    fn threads_accept_at_once() {
        let t = TempSock::new("threads");
        let p = t.path();
        let l = UnixListener::bind(&p).unwrap();
        let mut s = std::ptr::null_mut();
        assert_eq!(
            unsafe { sockpass_server_adopt(l.as_fd().as_raw_fd(), -1, 0, &mut s) },
            0
        );
        let addr = s as usize;
        let threads: Vec<_> = (0..2)
            .map(|_| {
                std::thread::spawn(move || {
                    let fd = unsafe {
                        sockpass_server_accept(addr as *mut sockpass_server, std::ptr::null_mut())
                    };
                    assert!(fd >= 0);
                    // SAFETY: the accepted fd is ours.
                    drop(unsafe { OwnedFd::from_raw_fd(fd) });
                })
            })
            .collect();
        // Asking for the fd while others block in accept does not wait.
        assert!(unsafe { sockpass_server_fd(s) } >= 0);
        let _a = UnixStream::connect(&p).unwrap();
        let _b = UnixStream::connect(&p).unwrap();
        for t in threads {
            t.join().unwrap();
        }
        unsafe { sockpass_server_free(s) };
    }

    #[test]
    fn notifier_gates_accept_until_bound() {
        let t = TempSock::new("lazy");
        let p = t.path();
        let mut fds = [-1; 2];
        assert_eq!(unsafe { sockpass_notifier_pair(fds.as_mut_ptr()) }, 0);
        // SAFETY: both ends are ours now.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let sock = sockpass::sys::unix_socket(libc::SOCK_STREAM, false).unwrap();
        let mut s = std::ptr::null_mut();
        let rc = unsafe {
            sockpass_server_adopt(sock.as_raw_fd(), r.as_raw_fd(), libc::SOCK_STREAM, &mut s)
        };
        assert_eq!(rc, 0);
        drop(r);
        assert_eq!(unsafe { sockpass_server_check(s) }, 0);
        assert!(unsafe { sockpass_server_notifier_fd(s) } >= 0);
        let (rc, m) = code(|| unsafe { sockpass_server_accept(s, std::ptr::null_mut()) });
        assert_eq!(rc, -sockpass::CODE_NOT_READY, "{m}");
        assert_eq!(unsafe { sockpass_server_wait(s, 10) }, -libc::ETIMEDOUT);
        // The manager binds and listens, then closes the write end.
        sockpass::sys::bind_unix(&sock, p.as_os_str().as_encoded_bytes()).unwrap();
        assert_eq!(unsafe { libc::listen(sock.as_raw_fd(), 8) }, 0);
        drop(w);
        assert_eq!(unsafe { sockpass_server_wait(s, 30_000) }, 0);
        assert_eq!(unsafe { sockpass_server_check(s) }, 1);
        let _peer = UnixStream::connect(&p).unwrap();
        let fd = unsafe { sockpass_server_accept(s, std::ptr::null_mut()) };
        assert!(fd >= 0);
        drop(unsafe { OwnedFd::from_raw_fd(fd) });
        unsafe { sockpass_server_free(s) };
    }

    #[test]
    fn manager_gone_before_listen_is_not_ready() {
        let (r, w) = sockpass::notifier_pair().unwrap();
        let sock = sockpass::sys::unix_socket(libc::SOCK_STREAM, false).unwrap();
        let mut s = std::ptr::null_mut();
        let rc = unsafe { sockpass_server_adopt(sock.as_raw_fd(), r.as_raw_fd(), 0, &mut s) };
        assert_eq!(rc, 0);
        drop(w);
        assert_eq!(
            unsafe { sockpass_server_wait(s, 30_000) },
            -sockpass::CODE_NOT_READY
        );
        unsafe { sockpass_server_free(s) };
    }

    #[test]
    fn bad_input_gets_its_code_and_leaves_out_params() {
        let sentinel = 0x5a5a as *mut sockpass_server;
        let mut s = sentinel;
        let file = std::fs::File::open("/dev/null").unwrap();
        let cases: Vec<(c_int, c_int, c_int, c_int)> = vec![
            (-1, -1, 0, -libc::EBADF),
            (1_000_000, -1, 0, -libc::EBADF),
            (file.as_raw_fd(), -1, 0, -libc::ENOTSOCK),
            (file.as_raw_fd(), -1, libc::SOCK_DGRAM, -libc::EINVAL),
            (file.as_raw_fd(), -7, 0, -libc::EBADF),
        ];
        for (fd, n, ty, want) in cases {
            let (rc, m) = code(|| unsafe { sockpass_server_adopt(fd, n, ty, &mut s) });
            assert_eq!(rc, want, "fd {fd} notifier {n} type {ty}: {m}");
            assert!(!m.is_empty());
            assert_eq!(s, sentinel);
        }
        // An unbound socket without a notifier, and a connected one.
        let sock = sockpass::sys::unix_socket(libc::SOCK_STREAM, false).unwrap();
        let (a, _b) = UnixStream::pair().unwrap();
        for (fd, want) in [
            (sock.as_raw_fd(), libc::EINVAL),
            (a.as_raw_fd(), libc::EISCONN),
        ] {
            let (rc, m) = code(|| unsafe { sockpass_server_adopt(fd, -1, 0, &mut s) });
            assert_eq!(rc, -want, "{m}");
            assert_eq!(s, sentinel);
        }
        let null = std::ptr::null_mut();
        assert_eq!(
            unsafe { sockpass_server_adopt(0, -1, 0, null) },
            -libc::EFAULT
        );
        assert_eq!(unsafe { sockpass_server_check(null.cast()) }, -libc::EFAULT);
        assert_eq!(
            unsafe { sockpass_server_wait(null.cast(), 0) },
            -libc::EFAULT
        );
        assert_eq!(unsafe { sockpass_server_fd(null.cast()) }, -libc::EFAULT);
        assert_eq!(
            unsafe { sockpass_server_accept(null.cast(), std::ptr::null_mut()) },
            -libc::EFAULT
        );
        assert_eq!(
            unsafe { sockpass_notifier_pair(std::ptr::null_mut()) },
            -libc::EFAULT
        );
        assert_eq!(
            unsafe { sockpass_server_adopt_activation(0, 0, null) },
            -libc::EFAULT
        );
        assert_eq!(
            unsafe { sockpass_server_adopt_activation(99, 0, &mut s) },
            -libc::EINVAL
        );
    }

    #[test]
    fn bind_in_own_namespace_and_bad_arguments() {
        let t = TempSock::new("bind");
        let p = t.path();
        let b = p.as_os_str().as_encoded_bytes();
        let fd = unsafe {
            sockpass_bind_in_namespace(0, b.as_ptr().cast(), b.len(), 0o600, u32::MAX, u32::MAX, -1)
        };
        assert!(fd >= 0, "{}", fd);
        // SAFETY: ours.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600);
        let mut s = std::ptr::null_mut();
        assert_eq!(
            unsafe { sockpass_server_adopt(fd.as_raw_fd(), -1, 0, &mut s) },
            0
        );
        unsafe { sockpass_server_free(s) };
        let rel = b"relative.sock";
        let long = [b'/'; 200];
        let keep = SOCKPASS_OWNER_KEEP;
        let bad: Vec<(c_int, *const c_char, usize, c_int, c_int, c_int)> = vec![
            (0, std::ptr::null(), 5, -1, -1, -libc::EFAULT),
            (0, rel.as_ptr().cast(), rel.len(), -1, -1, -libc::EINVAL),
            (0, long.as_ptr().cast(), long.len(), -1, -1, -libc::EINVAL),
            (0, b.as_ptr().cast(), 0, -1, -1, -libc::EINVAL),
            (-5, b.as_ptr().cast(), b.len(), -1, -1, -libc::EINVAL),
            (0, b.as_ptr().cast(), b.len(), 0o10000, -1, -libc::EINVAL),
            (0, b.as_ptr().cast(), b.len(), -1, -2, -libc::EINVAL),
        ];
        for (pid, ptr, len, mode, backlog, want) in bad {
            let (rc, m) = code(|| unsafe {
                sockpass_bind_in_namespace(pid, ptr, len, mode, keep, keep, backlog)
            });
            assert_eq!(
                rc, want,
                "pid {pid} len {len} mode {mode} backlog {backlog}: {m}"
            );
        }
    }
}
