//! The manager side: a notifier pair, and unix stream sockets bound inside
//! another process's mount namespace (a path) or network namespace (an
//! abstract name), eagerly (bind, then hand over a listening socket) or
//! lazily (hand over an unbound socket and a notifier now, bind later).
//!
//! Namespaces are joined only in a short-lived helper child, which does its
//! few syscalls and sends the socket (or an errno) back over `SCM_RIGHTS`; the
//! caller's threads never change namespace. Between fork and the child's
//! `_exit` only async-signal-safe calls run, on data prepared before.

use crate::error::{Error, Kind, Result};
use crate::fdpass;
use crate::ns::{Namespaces, NsSet};
use crate::sys;
use crate::unixbind::{Step, UnixBinder};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

/// The notifier pair: `(read end for the daemon, write end for the
/// manager)`. Closing the write end, once the socket listens, is the signal.
pub fn notifier_pair() -> Result<(OwnedFd, OwnedFd)> {
    crate::readiness::pipe()
}

/// How to make the socket file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BindOptions {
    /// Mode of the socket file (default 0666); ignored for abstract names.
    pub mode: u32,
    /// Owner and group of the socket file (`u32::MAX` leaves one as it
    /// is); ignored for abstract names.
    pub owner: Option<(u32, u32)>,
    /// listen() backlog.
    pub backlog: i32,
}

impl Default for BindOptions {
    fn default() -> Self {
        BindOptions {
            mode: 0o666,
            owner: None,
            backlog: 128,
        }
    }
}

impl BindOptions {
    /// Parse an owner as `USER[:GROUP]`, each a name or a number; a user
    /// name alone also sets its primary group, a number alone leaves the
    /// group as it is.
    pub fn parse_owner(s: &str) -> Result<(u32, u32)> {
        let (u, g) = match s.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (s, None),
        };
        let (uid, primary) = match u.parse::<u32>() {
            Ok(n) => (n, u32::MAX),
            Err(_) => lookup_user(u)?,
        };
        let gid = match g {
            Some(g) => crate::sys::group_id(g)?,
            None => primary,
        };
        Ok((uid, gid))
    }
}

/// A user's uid and primary gid.
fn lookup_user(name: &str) -> Result<(u32, u32)> {
    let bad = || Error::bad_request(format!("unknown user {name:?}"));
    let c = std::ffi::CString::new(name).map_err(|_| bad())?;
    // SAFETY: zeroed passwd; every pointer is valid for the call.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 65536];
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    let r = unsafe { libc::getpwnam_r(c.as_ptr(), &mut pw, buf.as_mut_ptr(), buf.len(), &mut out) };
    if r != 0 || out.is_null() {
        return Err(bad());
    }
    Ok((pw.pw_uid, pw.pw_gid))
}

/// Whose namespaces: `None` is the caller's own. A path is bound in the
/// target's mount namespace, an abstract name (leading NUL byte) in its
/// network namespace.
pub type Target = Option<i32>;

/// Eager: bind `path` inside `target`'s namespace and listen; returns the
/// listening socket, ready to hand over.
pub fn bind_in_namespace(target: Target, path: &[u8], opts: &BindOptions) -> Result<OwnedFd> {
    let plan = Plan::new(target, Some(path), opts)?;
    plan.run(None)
        .and_then(|fd| fd.ok_or_else(|| Error::protocol("bind helper sent no socket")))
}

/// Lazy, step one: an unbound unix stream socket made in the namespace its
/// future abstract name needs (abstract names belong to the network
/// namespace the socket was created in), plus the notifier pair. Hand the
/// daemon `LazyServer::daemon_socket` and `daemon_notifier`, then call
/// [`LazyServer::bind_and_notify`].
pub fn prepare_lazy(target: Target, abstract_name: bool) -> Result<LazyServer> {
    let sock = if abstract_name && target.is_some() {
        let mut plan = Plan::new(target, None, &BindOptions::default())?;
        plan.join_net = true;
        plan.run(None)?
            .ok_or_else(|| Error::protocol("bind helper sent no socket"))?
    } else {
        sys::unix_socket(libc::SOCK_STREAM, false).map_err(|e| Error::os(e, "socket"))?
    };
    let daemon_socket =
        sys::dup_cloexec(sock.as_fd()).map_err(|e| Error::os(e, "dup server socket"))?;
    let (daemon_notifier, notifier) = notifier_pair()?;
    Ok(LazyServer {
        sock,
        notifier,
        daemon_socket: Some(daemon_socket),
        daemon_notifier: Some(daemon_notifier),
    })
}

/// A socket handed over before it is bound. Dropping it without
/// [`bind_and_notify`](Self::bind_and_notify) fires the notifier on a socket
/// that does not listen, which the daemon reports as such.
#[derive(Debug)]
pub struct LazyServer {
    sock: OwnedFd,
    notifier: OwnedFd,
    /// The daemon's copy of the socket; take it to hand over.
    pub daemon_socket: Option<OwnedFd>,
    /// The notifier's read end; take it to hand over.
    pub daemon_notifier: Option<OwnedFd>,
}

impl LazyServer {
    /// Bind `path` inside `target`'s namespace, listen, then close the
    /// notifier: the daemon sees it fire. On error the notifier is closed
    /// too (the daemon learns the socket does not listen).
    pub fn bind_and_notify(self, target: Target, path: &[u8], opts: &BindOptions) -> Result<()> {
        let plan = Plan::new(target, Some(path), opts)?;
        let r = plan.run(Some(self.sock.as_fd())).map(|_| ());
        drop(self.notifier);
        r
    }

    /// The manager's copy of the socket.
    pub fn socket(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

/// Everything the helper child needs, prepared before fork.
struct Plan {
    ns: Option<Namespaces>,
    join_net: bool,
    target: Target,
    /// An abstract name's address (a path goes through `binder`).
    addr: Option<(libc::sockaddr_un, libc::socklen_t)>,
    cpath: Option<std::ffi::CString>,
    binder: Option<UnixBinder>,
    opts: BindOptions,
}

// Steps the helper child reports a failure at.
const STEP_SETNS: u8 = 1;
const STEP_SOCKET: u8 = 2;
const STEP_BIND: u8 = 3;
const STEP_LISTEN: u8 = 6;
const STEP_SEND: u8 = 7;
/// The path binder failed; two more bytes say at which of its steps.
const STEP_BINDER: u8 = 8;

impl Plan {
    fn new(target: Target, path: Option<&[u8]>, opts: &BindOptions) -> Result<Plan> {
        let abstract_ = path.is_some_and(|p| p.first() == Some(&0));
        if let Some(p) = path {
            if !abstract_ && p.first() != Some(&b'/') {
                return Err(Error::bad_request(format!(
                    "socket path {:?} must be absolute (or a NUL-led abstract name)",
                    String::from_utf8_lossy(p)
                )));
            }
        }
        let addr = match path {
            Some(p) if abstract_ => Some(sys::sockaddr_un(p).map_err(|e| {
                Error::with_errno(
                    Kind::BadRequest,
                    e,
                    format!(
                        "socket path {:?}: {}",
                        String::from_utf8_lossy(p),
                        crate::error::strerror(e)
                    ),
                )
            })?),
            _ => None,
        };
        let cpath = match path {
            Some(p) if !abstract_ => Some(
                std::ffi::CString::new(p)
                    .map_err(|_| Error::bad_request("socket path contains a NUL byte"))?,
            ),
            _ => None,
        };
        let binder = match path {
            Some(p) if !abstract_ => {
                let mut b = UnixBinder::new(p)?;
                b.mode = opts.mode & 0o777;
                b.owner = opts.owner;
                b.backlog = Some(opts.backlog);
                Some(b)
            }
            _ => None,
        };
        Ok(Plan {
            ns: None,
            join_net: abstract_,
            target,
            addr,
            cpath,
            binder,
            opts: *opts,
        })
    }

    fn open_namespaces(&mut self) -> Result<()> {
        let Some(pid) = self.target else {
            return Ok(());
        };
        let mut want = Vec::new();
        if self.join_net {
            want.push("net");
        }
        if self.cpath.is_some() {
            want.push("mnt");
        }
        let set: NsSet = want.join(",").parse()?;
        self.ns = Some(Namespaces::open(pid, set)?);
        Ok(())
    }

    /// Fork the helper; with `existing`, bind that socket instead of making
    /// one. Returns the socket the helper made, if it made one.
    fn run(mut self, existing: Option<BorrowedFd<'_>>) -> Result<Option<OwnedFd>> {
        self.open_namespaces()?;
        let (parent, child) = fdpass::socketpair(libc::SOCK_SEQPACKET)?;
        let existing_raw: RawFd = existing.map_or(-1, |f| f.as_raw_fd());
        // SAFETY: the child runs only async-signal-safe calls (helper_main)
        // on data prepared above, then _exits.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(Error::last_os("fork"));
        }
        if pid == 0 {
            // SAFETY: in the child; never returns.
            unsafe { self.helper_main(child.as_raw_fd(), existing_raw) }
        }
        drop(child);
        let mut buf = [0u8; 8];
        let got = fdpass::recv_fds(parent.as_fd(), &mut buf, 1, 0);
        let status = reap(pid);
        let r = got.map_err(|e| e.into_error("bind helper"))?;
        if r.len < 5 {
            return Err(Error::new(
                Kind::ChildFailed,
                format!("the bind helper died without a report ({status})"),
            ));
        }
        let step = buf[0];
        let errno = i32::from_ne_bytes([buf[1], buf[2], buf[3], buf[4]]);
        if let (STEP_BINDER, Some(b)) = (step, &self.binder) {
            let e = b.error(Step::decode([buf[5], buf[6]]), errno);
            let ns = match self.target {
                Some(pid) => format!(" in the namespaces of pid {pid}"),
                None => String::new(),
            };
            return Err(Error::with_errno(
                e.kind(),
                e.errno(),
                format!("{}{ns}", e.message()),
            ));
        }
        if step != 0 {
            return Err(self.step_error(step, errno));
        }
        let mut fds = r.fds;
        Ok(fds.pop())
    }

    fn step_error(&self, step: u8, errno: i32) -> Error {
        let what = match &self.cpath {
            Some(c) => c.to_string_lossy().into_owned(),
            None => "abstract socket".into(),
        };
        let ns = match self.target {
            Some(pid) => format!(" in the namespaces of pid {pid}"),
            None => String::new(),
        };
        let op = match step {
            s if s & 15 == STEP_SETNS => {
                format!("join ({})", Namespaces::step_name(usize::from(s >> 4)))
            }
            STEP_SOCKET => "socket".into(),
            STEP_BIND => format!("bind {what}"),
            STEP_LISTEN => format!("listen on {what}"),
            _ => "send the socket back".into(),
        };
        Error::os(errno, format!("{op}{ns}"))
    }

    /// The helper child. Async-signal-safe only.
    unsafe fn helper_main(&self, report: RawFd, existing: RawFd) -> ! {
        let fail = |step: u8| -> ! {
            let e = sys::errno();
            let mut m = [0u8; 5];
            m[0] = step;
            m[1..5].copy_from_slice(&e.to_ne_bytes());
            libc::send(report, m.as_ptr().cast(), 5, libc::MSG_NOSIGNAL);
            libc::_exit(1)
        };
        // Joins, then takes the target's root and cwd (a chrooted target's
        // paths resolve as it sees them).
        if let Some(ns) = &self.ns {
            if let Err((step, e)) = ns.enter() {
                *libc::__errno_location() = e;
                fail(STEP_SETNS + step as u8 * 16);
            }
        }
        let sock = if existing >= 0 {
            existing
        } else {
            let s = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            if s < 0 {
                fail(STEP_SOCKET);
            }
            s
        };
        if let Some(b) = &self.binder {
            // The one hardened binder: no symlink followed, the mode set at
            // creation, owner set through an fd (this child's cwd and umask
            // are its own).
            if let Err((step, e)) = b.bind_in_child(sock) {
                let mut m = [0u8; 7];
                m[0] = STEP_BINDER;
                m[1..5].copy_from_slice(&e.to_ne_bytes());
                m[5..7].copy_from_slice(&step.encode());
                libc::send(report, m.as_ptr().cast(), 7, libc::MSG_NOSIGNAL);
                libc::_exit(1)
            }
        } else if let Some((sun, len)) = &self.addr {
            if libc::bind(sock, (sun as *const libc::sockaddr_un).cast(), *len) != 0 {
                fail(STEP_BIND);
            }
            if libc::listen(sock, self.opts.backlog) != 0 {
                fail(STEP_LISTEN);
            }
        }
        let m = [0u8; 5];
        let mut cbuf = [0u64; 4];
        let mut iov = libc::iovec {
            iov_base: m.as_ptr() as *mut libc::c_void,
            iov_len: 5,
        };
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if existing < 0 {
            msg.msg_control = cbuf.as_mut_ptr().cast();
            msg.msg_controllen = libc::CMSG_SPACE(4) as usize;
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(4) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut RawFd, sock);
        }
        if libc::sendmsg(report, &msg, libc::MSG_NOSIGNAL) < 0 {
            fail(STEP_SEND);
        }
        libc::_exit(0)
    }
}

/// Wait for the helper child; a short description of how it ended.
fn reap(pid: i32) -> String {
    let mut st = 0;
    loop {
        // SAFETY: waiting for our own child.
        let r = unsafe { libc::waitpid(pid, &mut st, 0) };
        if r == pid {
            break;
        }
        if r < 0 && sys::errno() != libc::EINTR {
            return "not waitable".into();
        }
    }
    if libc::WIFEXITED(st) {
        format!("exit status {}", libc::WEXITSTATUS(st))
    } else {
        format!("signal {}", libc::WTERMSIG(st))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn eager_bind_sets_mode_and_owner() {
        let d = std::env::temp_dir().join(format!("sockpass-mgr-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir(&d).unwrap();
        let p = d.join("s");
        let opts = BindOptions {
            mode: 0o640,
            // Our own ids: chown to them works as any user.
            owner: Some(unsafe { (libc::getuid(), libc::getgid()) }),
            ..BindOptions::default()
        };
        let fd = bind_in_namespace(None, p.as_os_str().as_encoded_bytes(), &opts).unwrap();
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!(m.permissions().mode() & 0o7777, 0o640);
        assert_eq!(m.uid(), unsafe { libc::getuid() });
        assert!(crate::server_socket::server::is_listening(fd.as_fd()).unwrap());
        // Binding again at the same path fails with the bind step named.
        let e = bind_in_namespace(None, p.as_os_str().as_encoded_bytes(), &opts).unwrap_err();
        assert_eq!(e.errno(), libc::EADDRINUSE, "{e}");
        assert!(e.message().contains("bind"), "{e}");
        let e = bind_in_namespace(None, b"relative", &opts).unwrap_err();
        assert_eq!(e.kind(), Kind::BadRequest);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn parses_owners() {
        assert_eq!(BindOptions::parse_owner("12").unwrap(), (12, u32::MAX));
        assert_eq!(BindOptions::parse_owner("12:34").unwrap(), (12, 34));
        assert_eq!(BindOptions::parse_owner("root").unwrap(), (0, 0));
        assert_eq!(BindOptions::parse_owner("0:root").unwrap(), (0, 0));
        for bad in ["no-such-user-xyz", "1:no-such-group-xyz", ""] {
            assert_eq!(
                BindOptions::parse_owner(bad).unwrap_err().kind(),
                Kind::BadRequest
            );
        }
    }

    #[test]
    fn abstract_names_and_missing_targets() {
        let name = format!("\0sockpass-mgr-test-{}", std::process::id());
        let fd = bind_in_namespace(None, name.as_bytes(), &BindOptions::default()).unwrap();
        let s = crate::server_socket::ServerSocket::adopt(fd, None).unwrap();
        assert!(s
            .dbus_address()
            .starts_with("unix:abstract=sockpass-mgr-test-"));
        let e = bind_in_namespace(Some(i32::MAX), b"/tmp/x", &BindOptions::default()).unwrap_err();
        assert_eq!(e.errno(), libc::ESRCH, "{e}");
    }
}
