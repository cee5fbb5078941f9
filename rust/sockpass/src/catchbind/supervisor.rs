//! The supervisor thread of one spawned instance: it answers the binds its
//! filter catches, with sockets from the broker, and holds their
//! references (one broker connection, the instance's lease) until every
//! filtered process is gone or the [`crate::Child`] is dropped.
//!
//! A thread, not the caller's loop: `sockpass run`, the restart supervisor
//! and C and Python supervisors each have a loop of their own for signals
//! and the child's exit, and it keeps running while binds are answered
//! here, so a program that binds in a tight loop cannot starve signal
//! forwarding, and no caller has to poll one more fd.

use super::notify::{self, Answer, Notif};
use super::target::{self, Addr, Skip};
use crate::client::Client;
use crate::error::{Error, Kind, Result};
use crate::share::ShareMode;
use crate::spec::SocketSpec;
use crate::token::Token;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::Duration;

/// Everything the thread needs, made before the fork.
pub(crate) struct Prepared {
    client: Client,
    ranges: Vec<(u16, u16)>,
    share: ShareMode,
    app: String,
    notif_size: usize,
    /// Test hook: hold each caught bind this long between the grant and
    /// installing it, so a test can kill the program in the window.
    delay: Option<Duration>,
}

/// Environment variable of the test hook (milliseconds).
pub(crate) const DELAY_ENV: &str = "SOCKPASS_TEST_CATCH_BIND_DELAY_MS";

impl Prepared {
    pub(crate) fn new(
        client: Client,
        ranges: Vec<(u16, u16)>,
        share: ShareMode,
        app: String,
        notif_size: usize,
    ) -> Prepared {
        let delay = std::env::var(DELAY_ENV)
            .ok()
            .and_then(|v| v.parse().ok())
            .map(Duration::from_millis);
        Prepared {
            client,
            ranges,
            share,
            app,
            notif_size,
            delay,
        }
    }

    /// Start answering the binds `listener` reports.
    pub(crate) fn start(self, listener: OwnedFd) -> Result<Supervisor> {
        let (stop_r, stop_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(|e| Error::os(e.raw_os_error(), "pipe2"))?;
        let mut st = State {
            p: self,
            held: Vec::new(),
        };
        let thread = spawn_blocked("sockpass-catch-bind", move || st.serve(&listener, &stop_r))?;
        Ok(Supervisor {
            stop: Some(stop_w),
            thread: Some(thread),
        })
    }
}

/// Start a thread with every signal blocked: it never takes a signal meant
/// for the caller's own handling (a signalfd, sigwait, a handler's thread).
pub(crate) fn spawn_blocked<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<std::thread::JoinHandle<T>> {
    // SAFETY: all-zero is a valid sigset_t; sigfillset initialises it.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: this thread's mask, restored below; the new thread inherits
    // the full one.
    unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
    }
    let r = std::thread::Builder::new().name(name.into()).spawn(f);
    // SAFETY: restores the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    r.map_err(|e| Error::os(e.raw_os_error().unwrap_or(libc::EAGAIN), name))
}

/// The running thread; dropping it stops the thread and releases every
/// reference it held.
#[derive(Debug)]
pub(crate) struct Supervisor {
    /// Closed to stop the thread.
    stop: Option<OwnedFd>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.stop = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct State {
    p: Prepared,
    /// References held for the program: its spec (canonical) and token.
    held: Vec<(SocketSpec, Token)>,
}

fn say(msg: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "sockpass: catch-bind: {msg}");
}

impl State {
    fn serve(&mut self, listener: &OwnedFd, stop: &OwnedFd) {
        let words = self.p.notif_size.div_ceil(8);
        let mut buf = vec![0u64; words];
        loop {
            let mut fds = [
                libc::pollfd {
                    fd: listener.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: stop.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: poll on two valid pollfds.
            let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
            if r < 0 {
                if crate::sys::errno() == libc::EINTR {
                    continue;
                }
                break;
            }
            if fds[1].revents != 0 {
                break;
            }
            let ev = fds[0].revents;
            if ev & libc::POLLIN != 0 {
                match notify::recv(listener, &mut buf) {
                    Ok(n) => self.handle(listener, &n),
                    // The caller went away (or was interrupted) first.
                    Err(libc::ENOENT | libc::EINTR) => {}
                    Err(e) => {
                        say(format_args!(
                            "receiving a notification failed: {}",
                            crate::error::strerror(e)
                        ));
                        break;
                    }
                }
            } else if ev & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
                // Every filtered process is gone.
                break;
            }
        }
        // The client, and with it every reference, goes with `self`.
    }

    fn handle(&mut self, l: &OwnedFd, n: &Notif) {
        let (answer, token) = match self.decide(l, n) {
            Some(x) => x,
            // The caller is gone: nothing to answer.
            None => return,
        };
        if notify::respond(l, n.id, answer).is_err() {
            // Killed after the socket was installed: it died with it.
            if let Some(t) = token {
                self.release(&t);
            }
        }
    }

    fn release(&mut self, t: &Token) {
        self.held.retain(|(_, h)| h != t);
        if let Err(e) = self.p.client.release(t) {
            say(format_args!("releasing a reference failed: {e}"));
        }
    }

    /// The answer to a caught bind and the reference it took, or `None`
    /// when the caller went away.
    fn decide(&mut self, l: &OwnedFd, n: &Notif) -> Option<(Answer, Option<Token>)> {
        let cont = Some((Answer::Continue, None));
        if n.nr as libc::c_long != libc::SYS_bind {
            return cont;
        }
        let fd = n.args[0] as i32;
        let addr = target::read_addr(n.pid, n.args[1], n.args[2] as u32 as u64);
        if !notify::id_valid(l, n.id) {
            return None;
        }
        let (ip, port, scope) = match addr {
            Ok(Addr::Inet(ip, port, scope)) => (ip, port, scope),
            Ok(Addr::Other) => return cont,
            Err(e) => {
                say(format_args!(
                    "pid {}: cannot read its bind address ({}); the kernel judges the bind",
                    n.pid,
                    crate::error::strerror(e)
                ));
                return cont;
            }
        };
        if port == 0 || !self.p.ranges.iter().any(|&(a, b)| (a..=b).contains(&port)) {
            return cont;
        }
        if scope != 0 {
            say(format_args!(
                "pid {}: bind to {ip}%{scope} port {port}: a scoped address is not a socket spec; the kernel judges it",
                n.pid
            ));
            return cont;
        }
        let proc_ = match target::open_process(n.pid) {
            Ok(p) => p,
            Err(e) => {
                if !notify::id_valid(l, n.id) {
                    return None;
                }
                say(format_args!(
                    "pid {}: cannot open it ({}); the kernel judges its bind",
                    n.pid,
                    crate::error::strerror(e)
                ));
                return cont;
            }
        };
        // The pidfd is the caller's only if the call is still pending.
        if !notify::id_valid(l, n.id) {
            return None;
        }
        let sock = match proc_.copy_fd(fd) {
            Ok(s) => s,
            Err(libc::EBADF) => return cont,
            Err(e) => {
                say(format_args!(
                    "pid {}: cannot read its fd {fd} ({}; a process that made itself \
                     non-dumpable keeps its fds to itself); the kernel judges its bind",
                    proc_.tgid,
                    crate::error::strerror(e)
                ));
                return cont;
            }
        };
        let want = match target::inspect(&sock, ip, port) {
            Ok(w) => w,
            Err(Skip::Quiet) => return cont,
            Err(Skip::Say(why)) => {
                say(format_args!(
                    "pid {}: bind to {ip} port {port}: {why}; the kernel judges it",
                    proc_.tgid
                ));
                return cont;
            }
        };
        drop(sock);
        let cloexec = proc_.is_cloexec(fd);
        let spec = want.spec;
        let grant = match self.request(&spec) {
            Ok(g) => g,
            Err(e) => {
                // The broker's message names the spec and, for a refusal,
                // the policy's rule.
                let conflict = matches!(e.kind(), Kind::ShareConflict | Kind::AddressInUse);
                say(format_args!(
                    "pid {}: bind to {ip} port {port}: {e}; {}",
                    proc_.tgid,
                    if conflict {
                        "the bind fails with EADDRINUSE"
                    } else {
                        "the kernel judges the bind"
                    }
                ));
                let answer = if conflict {
                    Answer::Fail(libc::EADDRINUSE)
                } else {
                    Answer::Continue
                };
                return Some((answer, None));
            }
        };
        if let Some(d) = self.p.delay {
            std::thread::sleep(d);
        }
        if let Err(e) = target::set_nonblock(&grant.fd, want.nonblock) {
            say(format_args!(
                "pid {}: {spec}: setting O_NONBLOCK failed: {}",
                proc_.tgid,
                crate::error::strerror(e)
            ));
        }
        let token = grant.token;
        let placed = if notify::id_valid(l, n.id) {
            notify::addfd(l, n.id, grant.fd.as_fd().as_raw_fd(), fd, cloexec)
        } else {
            Err(libc::ENOENT)
        };
        // Ours closes now: the program holds the socket, the client its
        // reference.
        drop(grant.fd);
        if let Err(e) = placed {
            self.release(&token);
            if e == libc::ENOENT {
                return None;
            }
            say(format_args!(
                "pid {}: installing {spec} at its fd {fd} failed ({}); the kernel judges the bind",
                proc_.tgid,
                crate::error::strerror(e)
            ));
            return cont;
        }
        // One reference a socket is enough: a rebind of the same address
        // got the same (cached) socket, so an older reference to it goes.
        let canon = spec.canonical();
        let old: Vec<Token> = self
            .held
            .iter()
            .filter(|(s, _)| *s == canon)
            .map(|(_, t)| *t)
            .collect();
        if grant.cached {
            for t in old {
                self.release(&t);
            }
        }
        self.held.push((canon, token));
        Some((Answer::Done, Some(token)))
    }

    /// Ask the broker for `spec`. A conflict with a reference of our own
    /// (the program bound the address before and has closed that socket,
    /// and a second request conflicts with share mode none, or the old
    /// socket's options differ and its bind is in the way) releases ours
    /// and asks once more.
    fn request(&mut self, spec: &SocketSpec) -> Result<crate::client::Grant> {
        let r = self
            .p
            .client
            .request_socket(spec, self.p.share, &self.p.app);
        match r {
            Err(e) if matches!(e.kind(), Kind::ShareConflict | Kind::AddressInUse) => {
                let mine: Vec<Token> = self
                    .held
                    .iter()
                    .filter(|(s, _)| {
                        s.proto == spec.proto && s.addr == spec.addr && s.port == spec.port
                    })
                    .map(|(_, t)| *t)
                    .collect();
                if mine.is_empty() {
                    return Err(e);
                }
                for t in mine {
                    self.release(&t);
                }
                self.p
                    .client
                    .request_socket(spec, self.p.share, &self.p.app)
            }
            r => r,
        }
    }
}
