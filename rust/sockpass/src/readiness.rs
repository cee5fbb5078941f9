//! One readiness API for the three protocols daemons already speak:
//!
//! - `pipe`: the child gets the write end of a pipe and closes it (or writes
//!   anything) when ready; the D-Bus containers notifier is this;
//! - `notify`: systemd's `sd_notify`: a `NOTIFY_SOCKET` datagram socket in
//!   the child's environment, ready on a `READY=1` line;
//! - `fd:N`: s6's notification-fd: the child writes a newline to fd N.
//!
//! A [`Readiness`] is made before the child is spawned; its fd can sit in an
//! event loop ([`Readiness::check`]) or be waited on with a timeout, also
//! watching the child so that one exiting first is an error with its status.
//! For `pipe` that includes the close that comes with the child's exit: a
//! hang-up seen while the child is exiting or gone is not readiness (a
//! child that is ready and then exits at once should write a byte first).
//! The sending side, for daemons reporting their own readiness, is
//! [`send_notify`] and [`report_ready_fd`].

use crate::error::{Error, Kind, Result};
use crate::fdpass;
use crate::sys;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Largest notify message accepted, as systemd's own bound (PIPE_BUF).
pub const MAX_NOTIFY_MESSAGE: usize = 4096;

/// Which protocol the child speaks, as the CLI spells it: `pipe`, `notify`
/// or `fd:N`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Pipe,
    Notify,
    /// The fd number the child writes its newline to.
    Fd(RawFd),
}

impl std::str::FromStr for Method {
    type Err = Error;
    fn from_str(s: &str) -> Result<Method> {
        match s {
            "pipe" => Ok(Method::Pipe),
            "notify" => Ok(Method::Notify),
            _ => match s.strip_prefix("fd:").map(str::parse::<RawFd>) {
                Some(Ok(n)) if n >= 0 => Ok(Method::Fd(n)),
                _ => Err(Error::bad_request(format!(
                    "readiness method {s:?} is not one of notify, fd:N, pipe"
                ))),
            },
        }
    }
}

/// Milliseconds left until `deadline` for poll(2), rounded up; -1 for none.
pub(crate) fn remaining_ms(deadline: Option<Instant>) -> i32 {
    match deadline {
        None => -1,
        Some(d) => {
            let left = d.saturating_duration_since(Instant::now());
            let ms = left.as_micros().div_ceil(1000);
            ms.min(i32::MAX as u128) as i32
        }
    }
}

/// A pipe, both ends CLOEXEC: (read, write).
pub fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| Error::os(e.raw_os_error(), "pipe2"))
}

#[derive(Debug)]
enum Source {
    Pipe(OwnedFd),
    Fd(OwnedFd),
    Notify {
        sock: OwnedFd,
        /// NOTIFY_SOCKET's value: a path, or `@name` for an abstract name.
        env: OsString,
        /// The private directory we made for the socket, removed on drop.
        dir: Option<PathBuf>,
    },
}

/// The parent's side of one readiness protocol.
#[derive(Debug)]
pub struct Readiness {
    src: Source,
    ready: bool,
    method: Method,
}

impl Readiness {
    /// Make the parent's side for `method`; the second value is the fd the
    /// child must get (the write end; `None` for `notify`, which is passed by
    /// [`notify_socket_env`](Self::notify_socket_env) instead).
    pub fn new(method: Method) -> Result<(Readiness, Option<OwnedFd>)> {
        match method {
            Method::Pipe => {
                let (r, w) = pipe()?;
                set_nonblock(&r)?;
                Ok((Readiness::from(Source::Pipe(r), method), Some(w)))
            }
            Method::Fd(_) => {
                let (r, w) = pipe()?;
                set_nonblock(&r)?;
                Ok((Readiness::from(Source::Fd(r), method), Some(w)))
            }
            Method::Notify => Ok((Readiness::notify_socket()?, None)),
        }
    }

    fn from(src: Source, method: Method) -> Readiness {
        Readiness {
            src,
            ready: false,
            method,
        }
    }

    /// An sd_notify socket in a fresh private directory (mode 0700) under
    /// `$TMPDIR` or /tmp; the directory goes when this is dropped.
    pub fn notify_socket() -> Result<Readiness> {
        let base = std::env::var_os("TMPDIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| "/tmp".into());
        let mut rnd = [0u8; 8];
        sys::fill_random(&mut rnd).map_err(|e| Error::os(e, "getrandom"))?;
        let dir = base.join(format!(
            "sockpass-notify-{}-{:016x}",
            std::process::id(),
            u64::from_ne_bytes(rnd)
        ));
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| {
                Error::os(
                    e.raw_os_error().unwrap_or(libc::EIO),
                    format!("cannot create {}", dir.display()),
                )
            })?;
        let path = dir.join("notify");
        match Readiness::notify_socket_at(path.as_os_str()) {
            Ok(mut r) => {
                if let Source::Notify { dir: d, .. } = &mut r.src {
                    *d = Some(dir);
                }
                Ok(r)
            }
            Err(e) => {
                let _ = std::fs::remove_dir(&dir);
                Err(e)
            }
        }
    }

    /// An sd_notify socket at `addr` as NOTIFY_SOCKET spells it: a path, or
    /// `@name` for an abstract name (reachable by anyone in the network
    /// namespace: prefer a path in a private directory).
    pub fn notify_socket_at(addr: &OsStr) -> Result<Readiness> {
        let sock = sys::unix_socket(libc::SOCK_DGRAM, true).map_err(|e| Error::os(e, "socket"))?;
        let a = notify_sockaddr(addr)?;
        sys::bind_unix(&sock, &a)
            .map_err(|e| Error::os(e, format!("bind notify socket {}", addr.to_string_lossy())))?;
        Ok(Readiness::from(
            Source::Notify {
                sock,
                env: addr.to_os_string(),
                dir: None,
            },
            Method::Notify,
        ))
    }

    pub fn method(&self) -> Method {
        self.method
    }

    /// The value for the child's `NOTIFY_SOCKET` (notify only).
    pub fn notify_socket_env(&self) -> Option<&OsStr> {
        match &self.src {
            Source::Notify { env, .. } => Some(env),
            _ => None,
        }
    }

    /// The fd to watch in an event loop: readable or hung up means call
    /// [`check`](Self::check).
    pub fn fd(&self) -> BorrowedFd<'_> {
        match &self.src {
            Source::Pipe(f) | Source::Fd(f) => f.as_fd(),
            Source::Notify { sock, .. } => sock.as_fd(),
        }
    }

    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// Without blocking, take in what the child sent: `Ok(true)` once ready.
    /// Notify messages keep being drained (and any fds in them closed) after
    /// ready, so a sender waiting on a `BARRIER=1` is released. For `pipe`,
    /// any hang-up counts here, as this does not know the child: a caller
    /// that does should wait with [`wait_child`](Self::wait_child), which
    /// tells a child's death from its signal.
    pub fn check(&mut self) -> Result<bool> {
        match &self.src {
            Source::Pipe(f) => {
                if !self.ready {
                    let rev = sys::poll_one(f.as_fd(), libc::POLLIN, 0)
                        .map_err(|e| Error::os(e, "poll"))?;
                    self.ready = rev & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0;
                }
            }
            Source::Fd(f) => {
                if !self.ready {
                    self.ready = read_newline(f.as_fd())?;
                }
            }
            Source::Notify { sock, .. } => {
                if drain_notify(sock.as_fd())? {
                    self.ready = true;
                }
            }
        }
        Ok(self.ready)
    }

    /// Block until ready, at most `timeout` (`None`: forever).
    pub fn wait(&mut self, timeout: Option<Duration>) -> Result<()> {
        self.wait_inner(None, None, timeout)
    }

    /// Block until ready, at most `timeout`, while watching child `pid`
    /// (which is not reaped here): if it exits first, that is a
    /// `ChildFailed` error with its status.
    pub fn wait_child(&mut self, pid: i32, timeout: Option<Duration>) -> Result<()> {
        let pidfd = pidfd_open(pid)?;
        self.wait_inner(Some((pid, pidfd.as_fd())), None, timeout)
    }

    /// [`wait_child`](Self::wait_child), also polling `extra` and calling
    /// `on_extra` each time it is readable, then waiting on. This is how a
    /// supervisor keeps handling its own events (a signalfd, to forward
    /// SIGTERM to the child) while it waits; an error from `on_extra` ends
    /// the wait with that error.
    pub fn wait_child_watching(
        &mut self,
        pid: i32,
        timeout: Option<Duration>,
        extra: BorrowedFd<'_>,
        on_extra: &mut dyn FnMut() -> Result<()>,
    ) -> Result<()> {
        let pidfd = pidfd_open(pid)?;
        self.wait_inner(Some((pid, pidfd.as_fd())), Some((extra, on_extra)), timeout)
    }

    /// [`check`](Self::check), except that for `pipe` a hang-up while the
    /// child is exiting or gone is its death, not readiness: the kernel
    /// closes a dying process's fds before its pidfd becomes readable, so
    /// the child's state is read rather than raced.
    pub(crate) fn check_child(&mut self, child: Option<(i32, BorrowedFd<'_>)>) -> Result<bool> {
        let (Source::Pipe(f), Some((pid, pidfd)), false) = (&self.src, child, self.ready) else {
            return self.check();
        };
        let rev = sys::poll_one(f.as_fd(), libc::POLLIN, 0).map_err(|e| Error::os(e, "poll"))?;
        if rev & libc::POLLIN != 0 {
            // Something was written: ready, whatever happens next.
            self.ready = true;
        } else if rev & (libc::POLLHUP | libc::POLLERR) != 0 {
            if exiting(pid, pidfd) {
                // Bounded: an exiting process becomes a zombie promptly;
                // its status is only readable then.
                let _ = sys::poll_one(pidfd, libc::POLLIN, 5000);
                return Err(child_failed(pid));
            }
            self.ready = true;
        }
        Ok(self.ready)
    }

    pub(crate) fn wait_inner(
        &mut self,
        child: Option<(i32, BorrowedFd<'_>)>,
        mut extra: Option<(BorrowedFd<'_>, &mut dyn FnMut() -> Result<()>)>,
        timeout: Option<Duration>,
    ) -> Result<()> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            match self.check_child(child) {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                // A notification fd closed without a newline usually means
                // the child is exiting: report its status if it comes soon.
                Err(e) => match child {
                    Some((pid, pidfd))
                        if e.kind() == Kind::NotReady
                            && sys::poll_one(pidfd, libc::POLLIN, 1000).unwrap_or(0) != 0 =>
                    {
                        return Err(child_failed(pid));
                    }
                    _ => return Err(e),
                },
            }
            let mut p = [
                libc::pollfd {
                    fd: self.fd().as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: child.map_or(-1, |c| c.1.as_raw_fd()),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: extra.as_ref().map_or(-1, |x| x.0.as_raw_fd()),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: three valid pollfds (fd -1 is ignored by poll).
            let n = unsafe { libc::poll(p.as_mut_ptr(), 3, remaining_ms(deadline)) };
            if n < 0 && sys::errno() != libc::EINTR {
                return Err(Error::last_os("poll"));
            }
            if p[2].revents != 0 {
                if let Some((_, f)) = extra.as_mut() {
                    f()?;
                }
            }
            if p[1].revents != 0 {
                // Readiness sent just before exiting still counts (for
                // pipe, only bytes written: the exit itself closes it).
                if self.check_child(child).unwrap_or(false) {
                    return Ok(());
                }
                return Err(child_failed(child.map_or(0, |c| c.0)));
            }
            if n == 0 && deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(Error::with_errno(
                    Kind::Timeout,
                    libc::ETIMEDOUT,
                    format!(
                        "no readiness ({}) within {:?}",
                        self.method_name(),
                        timeout.unwrap_or_default()
                    ),
                ));
            }
        }
    }

    fn method_name(&self) -> String {
        match self.method {
            Method::Pipe => "pipe".into(),
            Method::Notify => "sd_notify READY=1".into(),
            Method::Fd(n) => format!("newline on notification fd {n}"),
        }
    }
}

impl Drop for Readiness {
    fn drop(&mut self) {
        if let Source::Notify {
            env, dir: Some(d), ..
        } = &self.src
        {
            let _ = std::fs::remove_file(std::path::Path::new(env));
            let _ = std::fs::remove_dir(d);
        }
    }
}

fn set_nonblock(fd: &OwnedFd) -> Result<()> {
    sys::set_nonblocking(fd.as_fd()).map_err(|e| Error::os(e, "fcntl O_NONBLOCK"))
}

/// s6: read what is there; true once a newline arrived. End of file
/// without one is a `NotReady` error.
fn read_newline(fd: BorrowedFd<'_>) -> Result<bool> {
    let mut buf = [0u8; 512];
    loop {
        let n = match rustix::io::read(fd, &mut buf) {
            Ok(n) => n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(rustix::io::Errno::AGAIN) => return Ok(false),
            Err(e) => return Err(Error::os(e.raw_os_error(), "read notification fd")),
        };
        if n == 0 {
            return Err(Error::with_errno(
                Kind::NotReady,
                libc::EPIPE,
                "the notification fd was closed without a newline being written",
            ));
        }
        if buf[..n].contains(&b'\n') {
            return Ok(true);
        }
    }
}

/// Read every queued notify message; true if one said READY=1. Fds that
/// came along are closed at once (dropping them), whatever else happens.
fn drain_notify(sock: BorrowedFd<'_>) -> Result<bool> {
    let mut buf = [0u8; MAX_NOTIFY_MESSAGE + 1];
    let mut ready = false;
    loop {
        let r = fdpass::recv_fds(sock, &mut buf, fdpass::MAX_FDS, libc::MSG_DONTWAIT);
        let r = match r {
            Ok(r) => r,
            Err(fdpass::RecvError::Os(libc::EAGAIN)) => return Ok(ready),
            Err(fdpass::RecvError::TruncatedPayload) => return Err(oversized()),
            Err(e) => return Err(e.into_error("notify socket")),
        };
        drop(r.fds);
        if r.len > MAX_NOTIFY_MESSAGE {
            return Err(oversized());
        }
        if parse_notify(&buf[..r.len])?
            .iter()
            .any(|(k, v)| *k == b"READY" && *v == b"1")
        {
            ready = true;
        }
    }
}

fn oversized() -> Error {
    Error::with_errno(
        Kind::LimitReached,
        libc::EMSGSIZE,
        format!("notify message larger than {MAX_NOTIFY_MESSAGE} bytes"),
    )
}

/// Parse one sd_notify message: newline-separated `KEY=VALUE` lines, keys of
/// `[A-Z0-9_]`. An empty message or a line that is not an assignment is a
/// `Protocol` error.
pub fn parse_notify(msg: &[u8]) -> Result<Vec<(&[u8], &[u8])>> {
    let mut out = Vec::new();
    for line in msg.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let ok = line.iter().position(|b| *b == b'=').filter(|&i| {
            i > 0
                && line[..i]
                    .iter()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || *b == b'_')
        });
        match ok {
            Some(i) => out.push((&line[..i], &line[i + 1..])),
            None => {
                return Err(Error::protocol(format!(
                    "malformed notify message: line {:?} is not KEY=VALUE",
                    String::from_utf8_lossy(&line[..line.len().min(64)])
                )))
            }
        }
    }
    if out.is_empty() {
        return Err(Error::protocol("malformed notify message: empty"));
    }
    Ok(out)
}

/// NOTIFY_SOCKET's spelling to a sockaddr path: `@name` is abstract.
/// NOTIFY_SOCKET's value (`/path` or `@abstract`) as a unix address.
fn notify_sockaddr(addr: &OsStr) -> Result<Vec<u8>> {
    let b = addr.as_bytes();
    match b.first() {
        Some(b'@') => Ok([&[0u8][..], &b[1..]].concat()),
        Some(b'/') => Ok(b.to_vec()),
        _ => Err(Error::bad_request(format!(
            "notify socket {:?} is neither an absolute path nor @abstract",
            addr.to_string_lossy()
        ))),
    }
}

pub(crate) fn pidfd_open(pid: i32) -> Result<OwnedFd> {
    // pidfds are always CLOEXEC.
    rustix::process::Pid::from_raw(pid)
        .ok_or(rustix::io::Errno::INVAL)
        .and_then(|p| rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()))
        .map_err(|e| Error::os(e.raw_os_error(), format!("pidfd_open({pid})")))
}

/// Whether `pid` has exited or is exiting: its pidfd is readable, or
/// /proc says zombie/dead or shows `PF_EXITING`, which the kernel sets
/// before it closes the process's fds. Without /proc to ask, a short grace
/// for the pidfd stands in.
fn exiting(pid: i32, pidfd: BorrowedFd<'_>) -> bool {
    const PF_EXITING: u64 = 0x4;
    if sys::poll_one(pidfd, libc::POLLIN, 0).unwrap_or(0) != 0 {
        return true;
    }
    let stat = match std::fs::read(format!("/proc/{pid}/stat")) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return true,
        Err(_) => return sys::poll_one(pidfd, libc::POLLIN, 100).unwrap_or(0) != 0,
    };
    // "pid (comm) state ppid pgrp session tty tpgid flags ...": comm may
    // hold anything, so count from the last ')'.
    let after = stat
        .iter()
        .rposition(|&b| b == b')')
        .map_or(&stat[..], |i| &stat[i + 1..]);
    let mut f = after
        .split(|b| b.is_ascii_whitespace())
        .filter(|w| !w.is_empty());
    let state = f.next().and_then(|s| s.first().copied());
    let flags = f
        .nth(5)
        .and_then(|w| std::str::from_utf8(w).ok()?.parse::<u64>().ok());
    matches!(state, Some(b'Z' | b'X' | b'x')) || flags.is_some_and(|fl| fl & PF_EXITING != 0)
}

fn child_failed(pid: i32) -> Error {
    Error::new(
        Kind::ChildFailed,
        format!(
            "child {pid} {} before it was ready",
            describe_exit(child_status(pid))
        ),
    )
}

/// The exit status of `pid` without reaping it.
fn child_status(pid: i32) -> Option<(i32, i32)> {
    // SAFETY: all-zero is a valid siginfo_t.
    let mut si: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid writes into si; WNOWAIT leaves the child waitable.
    let r = unsafe {
        libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut si,
            libc::WEXITED | libc::WNOWAIT | libc::WNOHANG,
        )
    };
    if r != 0 {
        return None;
    }
    // SAFETY: waitid filled si for an exited child.
    Some((si.si_code, unsafe { si.si_status() }))
}

fn describe_exit(st: Option<(i32, i32)>) -> String {
    match st {
        Some((libc::CLD_EXITED, s)) => format!("exited with status {s}"),
        Some((_, sig)) => format!("was killed by signal {sig}"),
        None => "exited".into(),
    }
}

/// Send one sd_notify message (e.g. `b"READY=1"`) to the socket named as in
/// NOTIFY_SOCKET (`/path` or `@abstract`).
pub fn send_notify(addr: &OsStr, msg: &[u8]) -> Result<()> {
    let s = connect_notify_socket(addr)?;
    fdpass::send_fds(s.as_fd(), msg, &[], 0).map_err(|e| Error::os(e, "send to notify socket"))?;
    Ok(())
}

/// A datagram socket connected to the notify socket named as in
/// NOTIFY_SOCKET (`/path` or `@abstract`): the one parser of that variable's
/// value, for `send_notify` and the broker's fd store.
#[doc(hidden)]
pub fn connect_notify_socket(addr: &OsStr) -> Result<OwnedFd> {
    let a = notify_sockaddr(addr)?;
    let s = sys::unix_socket(libc::SOCK_DGRAM, false).map_err(|e| Error::os(e, "socket"))?;
    sys::connect_unix(&s, &a).map_err(|e| {
        Error::os(
            e,
            format!("connect to notify socket {}", addr.to_string_lossy()),
        )
    })?;
    Ok(s)
}

/// If `$NOTIFY_SOCKET` is set, send `READY=1` (and MAINPID) there; true if
/// it was set.
pub fn notify_ready_from_env() -> Result<bool> {
    match std::env::var_os("NOTIFY_SOCKET") {
        Some(a) => {
            let msg = format!("READY=1\nMAINPID={}\n", std::process::id());
            send_notify(&a, msg.as_bytes())?;
            Ok(true)
        }
        None => Ok(false),
    }
}

/// s6 / pipe: write a newline to the notification fd and close it.
pub fn report_ready_fd(fd: OwnedFd) -> Result<()> {
    loop {
        match rustix::io::write(&fd, b"\n") {
            Ok(1) => return Ok(()),
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(Error::os(e.raw_os_error(), "write to the readiness fd")),
        }
    }
}

/// Take ownership of an inherited fd number, checking it is open.
pub fn inherited_fd(n: RawFd) -> Result<OwnedFd> {
    if n < 0 || !sys::fd_is_open(n) {
        return Err(Error::with_errno(
            Kind::BadRequest,
            libc::EBADF,
            format!("fd {n} is not open"),
        ));
    }
    // Our own fds 0-2 stay ours; anything else inherited is set CLOEXEC so
    // it does not leak further.
    // SAFETY: n is open, and the caller hands us this inherited fd to own.
    let fd = unsafe { OwnedFd::from_raw_fd(n) };
    let _ = rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC);
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_methods() {
        assert_eq!("pipe".parse::<Method>().unwrap(), Method::Pipe);
        assert_eq!("notify".parse::<Method>().unwrap(), Method::Notify);
        assert_eq!("fd:5".parse::<Method>().unwrap(), Method::Fd(5));
        for bad in ["fd:", "fd:-1", "fd:x", "systemd", ""] {
            assert_eq!(bad.parse::<Method>().unwrap_err().kind(), Kind::BadRequest);
        }
    }

    #[test]
    fn parses_notify_messages() {
        let m = parse_notify(b"STATUS=starting up\nREADY=1\n").unwrap();
        assert_eq!(m[1], (&b"READY"[..], &b"1"[..]));
        assert_eq!(parse_notify(b"BARRIER=1").unwrap().len(), 1);
        for bad in [
            &b""[..],
            b"\n\n",
            b"READY",
            b"=1",
            b"ready=1",
            b"READY=1\nnonsense",
        ] {
            assert_eq!(parse_notify(bad).unwrap_err().kind(), Kind::Protocol);
        }
    }

    #[test]
    fn pipe_close_and_fd_newline() {
        let (mut r, w) = Readiness::new(Method::Pipe).unwrap();
        assert!(!r.check().unwrap());
        let e = r.wait(Some(Duration::from_millis(20))).unwrap_err();
        assert_eq!(e.kind(), Kind::Timeout);
        drop(w);
        r.wait(Some(Duration::from_secs(30))).unwrap();

        let (mut r, w) = Readiness::new(Method::Fd(3)).unwrap();
        let w = w.unwrap();
        // SAFETY: write to our pipe.
        unsafe { libc::write(w.as_raw_fd(), b"no newline".as_ptr().cast(), 10) };
        assert!(!r.check().unwrap());
        report_ready_fd(w).unwrap();
        r.wait(Some(Duration::from_secs(30))).unwrap();

        let (mut r, w) = Readiness::new(Method::Fd(3)).unwrap();
        drop(w);
        // Waited, not checked once: a test forking on another thread can
        // hold a copy of the write end until its child execs or exits.
        let e = r.wait(Some(Duration::from_secs(30))).unwrap_err();
        assert_eq!(e.kind(), Kind::NotReady);
    }

    #[test]
    fn notify_ready_closes_fds_and_rejects_bad_messages() {
        let (mut r, none) = Readiness::new(Method::Notify).unwrap();
        assert!(none.is_none());
        let env = r.notify_socket_env().unwrap().to_os_string();
        assert!(std::path::Path::new(&env).exists());
        // A BARRIER=1 with a pipe's write end: ours must be closed at once.
        let (br, bw) = pipe().unwrap();
        let c = sys::unix_socket(libc::SOCK_DGRAM, false).unwrap();
        sys::connect_unix(&c, env.as_bytes()).unwrap();
        fdpass::send_fds(c.as_fd(), b"BARRIER=1", &[bw.as_fd()], 0).unwrap();
        drop(bw);
        assert!(!r.check().unwrap());
        // Bounded rather than 0: a child forked by another test thread may
        // hold a copy of bw for a moment. Were ours kept, this would time out.
        assert_ne!(
            sys::poll_one(br.as_fd(), libc::POLLIN, 30_000).unwrap() & libc::POLLHUP,
            0
        );
        send_notify(&env, b"STATUS=x\nREADY=1").unwrap();
        r.wait(Some(Duration::from_secs(30))).unwrap();

        send_notify(&env, b"not an assignment").unwrap();
        assert_eq!(r.check().unwrap_err().kind(), Kind::Protocol);
        send_notify(&env, &[b'A'; MAX_NOTIFY_MESSAGE + 100]).unwrap();
        let e = r.check().unwrap_err();
        assert_eq!((e.kind(), e.errno()), (Kind::LimitReached, libc::EMSGSIZE));
        drop(r);
        assert!(!std::path::Path::new(&env).exists());
    }
}
