//! `sockpass run [options] -- PROGRAM [ARGS...]`: start PROGRAM with sockets
//! as systemd socket activation does (`LISTEN_FDS`, `LISTEN_PID`,
//! `LISTEN_FDNAMES`), through [`sockpass::spawn`]. The sockets come from
//! `-l` (made here), `--request` (from the broker; the connection, and so
//! the lease, is held while PROGRAM runs) or `--fd` (inherited), in the
//! order given; `--empty` leaves a slot's number closed and `--inherit`
//! passes on whatever we inherited at that number. `--fdname` follows
//! `systemd-socket-activate`. With `--wait-ready notify|fd:N|pipe` ([`sockpass::readiness`])
//! it prints PROGRAM's pid once PROGRAM reports ready. Exits with PROGRAM's
//! status (128 + signal), and forwards SIGTERM and SIGINT to it.

use crate::args::Args;
use sockpass::Client;
use sockpass::{exit_code, EnvBase, Slot, Spawn};
use sockpass::{Method, Readiness};
use sockpass::{Namespaces, NsSet};
use sockpass::{ShareMode, SocketSpec};
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::Duration;

/// One fd source, in command-line order.
enum Source {
    Listen(String),
    Request(String),
    Fd(i32, Option<String>),
    Empty,
    Inherit,
}

/// `--fdname` as `systemd-socket-activate` (252) does it: each option is
/// split at `:` with empty parts dropped, and one that gives no name at all
/// (`--fdname=`) gives one empty name; a single name names every slot; a
/// count that differs from the number of slots only warns (extra names are
/// ignored, slots without one stay unnamed). The warning, if any, is the
/// second value.
fn fdnames_for(given: &[String], n: usize) -> (Vec<Option<String>>, Option<String>) {
    if given.len() == 1 {
        return (vec![Some(given[0].clone()); n], None);
    }
    let warn = (!given.is_empty() && given.len() != n).then(|| {
        format!(
            "--fdname gives {} names for {n} fds: {}",
            given.len(),
            if given.len() > n {
                "the extra ones are ignored"
            } else {
                "the others keep their own names or are unnamed"
            }
        )
    });
    let names = (0..n).map(|i| given.get(i).cloned()).collect();
    (names, warn)
}

fn split_fdnames(v: &str) -> Vec<String> {
    let names: Vec<String> = v
        .split(':')
        .filter(|n| !n.is_empty())
        .map(str::to_string)
        .collect();
    if names.is_empty() {
        vec![String::new()]
    } else {
        names
    }
}

/// Turn a `systemd-socket-activate -l` style address into a spec: a path
/// (or `@name`) is a unix socket, a bare port or HOST:PORT is TCP (UDP with
/// `--datagram`), `tcp:`/`udp:`/`unix:` specs are taken as they are.
pub fn listen_spec(addr: &str, datagram: bool) -> Result<SocketSpec, String> {
    let parsed = if addr.starts_with('/') || addr.starts_with('@') || addr.starts_with("./") {
        let proto = if datagram { "unix-dgram" } else { "unix" };
        format!("{proto}:{addr}").parse::<SocketSpec>()
    } else if addr
        .split_once(':')
        .is_some_and(|(p, _)| p.parse::<sockpass::Proto>().is_ok())
    {
        addr.parse::<SocketSpec>()
    } else {
        let proto = if datagram { "udp" } else { "tcp" };
        if addr.bytes().all(|b| b.is_ascii_digit()) {
            format!("{proto}:0.0.0.0:{addr}").parse::<SocketSpec>()
        } else {
            format!("{proto}:{addr}").parse::<SocketSpec>()
        }
    };
    let mut spec = parsed.map_err(|e| format!("--listen {addr:?}: {e}"))?;
    // -l means listening, as systemd-socket-activate.
    if spec.proto.listens() && spec.options.backlog.is_none() {
        spec.options.backlog = Some(libc::SOMAXCONN as u32);
    }
    Ok(spec)
}

fn parse_fd(v: &str) -> Result<(i32, Option<String>), String> {
    let (n, name) = match v.split_once(':') {
        Some((n, name)) => (n, Some(name.to_string())),
        None => (v, None),
    };
    let n: i32 = n
        .parse()
        .ok()
        .filter(|n| *n >= 0)
        .ok_or_else(|| format!("--fd {v:?}: expected N or N:NAME"))?;
    Ok((n, name))
}

pub fn run(mut a: Args) -> Result<i32, String> {
    let mut sources = Vec::new();
    let mut datagram = false;
    let mut socket: Option<PathBuf> = None;
    let mut share = ShareMode::None;
    let mut app = String::new();
    let mut fdnames: Vec<String> = Vec::new();
    let mut start: i32 = 3;
    let mut env: Vec<(OsString, Option<OsString>)> = Vec::new();
    let mut clear_env = false;
    let mut join: Option<i32> = None;
    let mut ns_list: Option<String> = None;
    let mut wait_ready: Option<Method> = None;
    let mut ready_timeout: Option<Duration> = None;
    while let Some((k, v)) = a.next_option() {
        match k.as_str() {
            "-l" | "--listen" => sources.push(Source::Listen(a.value(&k, v)?)),
            "-d" | "--datagram" => datagram = true,
            "--request" => sources.push(Source::Request(a.value(&k, v)?)),
            "--fd" => {
                let (n, name) = parse_fd(&a.value(&k, v)?)?;
                sources.push(Source::Fd(n, name));
            }
            "--empty" => sources.push(Source::Empty),
            "--inherit" => sources.push(Source::Inherit),
            "--fdname" => fdnames.extend(split_fdnames(&a.value(&k, v)?)),
            "--socket" => socket = Some(a.value_os(&k, v)?.into()),
            "--share" => share = a.value(&k, v)?.parse().map_err(|e| format!("{k}: {e}"))?,
            "--app" => app = a.value(&k, v)?,
            "--start" => start = a.number(&k, v)?,
            "-E" | "--setenv" => {
                let kv = a.value_os(&k, v)?;
                let b = kv.as_bytes();
                match b.iter().position(|&c| c == b'=') {
                    Some(i) => env.push((
                        OsStr::from_bytes(&b[..i]).into(),
                        Some(OsStr::from_bytes(&b[i + 1..]).into()),
                    )),
                    // VAR alone passes on our own value, as systemd-socket-activate.
                    None => {
                        let val = std::env::var_os(&kv);
                        env.push((kv, val));
                    }
                }
            }
            "-U" | "--unsetenv" => env.push((a.value_os(&k, v)?, None)),
            "--clear-env" => clear_env = true,
            "--join" => join = Some(a.number(&k, v)?),
            "--ns" => ns_list = Some(a.value(&k, v)?),
            "--wait-ready" => {
                wait_ready = Some(a.value(&k, v)?.parse().map_err(|e| format!("{k}: {e}"))?)
            }
            "--ready-timeout" => {
                let v = a.value(&k, v)?;
                let secs: f64 = v
                    .parse()
                    .ok()
                    .filter(|s: &f64| s.is_finite() && *s > 0.0 && *s < 1e9)
                    .ok_or_else(|| format!("{k}: {v:?} is not a positive number of seconds"))?;
                ready_timeout = Some(Duration::from_secs_f64(secs));
            }
            _ => return Err(format!("run: unknown option {k}")),
        }
    }
    a.skip_separator();
    let argv = a.rest();
    let Some(program) = argv.first() else {
        return Err("run: give a program after --, e.g. sockpass run -l 8080 -- myserver".into());
    };
    if ns_list.is_some() && join.is_none() {
        return Err("run: --ns needs --join PID".into());
    }

    // Inherit slots first, before we open anything: what sits at the
    // slot's number now is what our parent gave us (not a socket of ours),
    // so it is taken as a dup; a number we did not inherit stays closed.
    let mut inherited: Vec<Option<OwnedFd>> = Vec::new();
    for (i, s) in sources.iter().enumerate() {
        let n = i32::try_from(i).ok().and_then(|i| start.checked_add(i));
        inherited.push(match (s, n) {
            (Source::Inherit, Some(n)) if sockpass::sys::fd_is_open(n) => {
                // SAFETY: borrowed only to duplicate it; it is open.
                let b = unsafe { BorrowedFd::borrow_raw(n) };
                match sockpass::sys::dup_cloexec(b) {
                    Ok(d) => Some(d),
                    Err(e) => {
                        let e = sockpass::Error::os(e, format!("--inherit at {n}"));
                        return Ok(super::fail("pass an inherited fd", &e));
                    }
                }
            }
            _ => None,
        });
    }

    // Slots, in order (`None`: empty). The broker client stays open while
    // the child runs: its connection is the lease on requested sockets.
    let mut client: Option<Client> = None;
    let mut fds: Vec<(Option<OwnedFd>, Option<String>)> = Vec::new();
    for (s, inh) in sources.iter().zip(inherited) {
        match s {
            Source::Empty => fds.push((None, None)),
            // Named "unknown" as the core names an inherit slot.
            Source::Inherit => fds.push((inh, Some("unknown".into()))),
            Source::Listen(addr) => {
                let spec = listen_spec(addr, datagram)?;
                match sockpass_broker::create::create_socket(&spec) {
                    Ok(c) => fds.push((Some(c.fd), None)),
                    Err(e) => return Ok(super::fail(&format!("listen on {addr}"), &e)),
                }
            }
            Source::Request(spec) => {
                let spec: SocketSpec = spec.parse().map_err(|e| format!("--request: {e}"))?;
                if client.is_none() {
                    let path = socket.clone().unwrap_or_else(sockpass::default_socket_path);
                    match Client::connect(&path) {
                        Ok(c) => client = Some(c),
                        Err(e) => return Ok(super::fail("connect to the broker", &e)),
                    }
                }
                match client.as_mut().unwrap().request_socket(&spec, share, &app) {
                    Ok(g) => fds.push((Some(g.fd), None)),
                    Err(e) => return Ok(super::fail(&format!("request {spec}"), &e)),
                }
            }
            Source::Fd(n, name) => {
                // SAFETY: borrowed only to duplicate it; a closed number
                // fails the dup with EBADF.
                let b = unsafe { BorrowedFd::borrow_raw(*n) };
                match sockpass::sys::dup_cloexec(b) {
                    Ok(d) => fds.push((Some(d), name.clone())),
                    Err(e) => {
                        let e = sockpass::Error::os(e, format!("--fd {n}"));
                        return Ok(super::fail("pass an inherited fd", &e));
                    }
                }
            }
        }
    }
    let (names, warn) = fdnames_for(&fdnames, fds.len());
    if let Some(w) = warn {
        eprintln!("sockpass: warning: {w}");
    }

    let mut sp = Spawn::new(program);
    sp.args(&argv[1..]).start(start);
    if clear_env {
        sp.env_base(EnvBase::Clear);
    }
    for (k, v) in &env {
        match v {
            Some(v) => sp.setenv(k, v),
            None => sp.unsetenv(k),
        };
    }
    for ((fd, own), given) in fds.into_iter().zip(names) {
        // A name of the slot's own (`--fd N:NAME`) beats `--fdname`.
        let name = own.or(given);
        match fd {
            Some(fd) => sp.fd(fd, name.as_deref()),
            None => sp.slot(Slot::Empty { name }),
        };
    }
    if let Some(pid) = join {
        let set = match &ns_list {
            Some(l) => l.parse::<NsSet>().map_err(|e| format!("--ns: {e}"))?,
            None => NsSet::default_join(),
        };
        match Namespaces::open(pid, set) {
            Ok(ns) => sp.join(ns),
            Err(e) => return Ok(super::fail(&format!("join process {pid}"), &e)),
        };
    }

    // Readiness: notify passes NOTIFY_SOCKET; fd:N puts the pipe's write
    // end at N (outside LISTEN_FDS); pipe adds it as the last slot, named
    // "ready".
    let mut ready = None;
    if let Some(m) = wait_ready {
        let (r, w) = match Readiness::new(m) {
            Ok(x) => x,
            Err(e) => return Ok(super::fail("--wait-ready", &e)),
        };
        match (m, w) {
            (Method::Notify, _) => {
                if let Some(v) = r.notify_socket_env() {
                    sp.setenv("NOTIFY_SOCKET", v);
                }
            }
            (Method::Fd(n), Some(w)) => {
                sp.fd_at(w, n);
            }
            (_, Some(w)) => {
                sp.fd(w, Some("ready"));
            }
            (_, None) => {}
        }
        ready = Some(r);
    }

    // SIGTERM and SIGINT are blocked here and forwarded; SIGCHLD is blocked
    // too so the wait below wakes on it without a race. The child starts
    // with an empty mask (spawn resets it).
    let set = blocked_signals();
    let mut child = match sp.spawn() {
        Ok(c) => c,
        Err(e) => {
            unblock(&set);
            return Ok(super::fail("run", &e));
        }
    };
    if let Some(mut r) = ready {
        // Signals stay blocked meanwhile: SIGTERM and SIGINT are read from
        // a signalfd polled with the readiness fd and forwarded at once, so
        // a child that never gets ready can still be stopped through us. A
        // child that exits first is reported in the loop below.
        let pid = child.pid();
        let res = match forward_fd() {
            Ok(sfd) => {
                let mut forward = || {
                    while let Some(sig) = read_signal(&sfd) {
                        let _ = child.kill(sig);
                    }
                    Ok(())
                };
                r.wait_child_watching(pid, ready_timeout, sfd.as_fd(), &mut forward)
            }
            Err(e) => {
                eprintln!("sockpass: signalfd: {e}; signals wait until the child is ready");
                r.wait_child(pid, ready_timeout)
            }
        };
        match res {
            Ok(()) => {
                use std::io::Write;
                let mut out = std::io::stdout();
                let _ = writeln!(out, "{}", child.pid());
                let _ = out.flush();
            }
            Err(e) if e.kind() == sockpass::Kind::Timeout => {
                // A supervisor waiting for readiness treats this as failure:
                // stop the child; its status (128+SIGTERM) is ours.
                eprintln!("sockpass: the child did not report ready: {e}; stopping it");
                let _ = child.kill(libc::SIGTERM);
            }
            Err(e) => {
                eprintln!("sockpass: the child did not report ready: {e}");
            }
        }
    }
    // The broker connection (held while the child runs) is looked at once
    // a second: a broker that went away is said once on stderr.
    let mut broker_fd = client.as_ref().map(|c| c.as_raw_fd());
    let status = loop {
        match child.wait_timeout(Duration::ZERO) {
            Ok(Some(st)) => break st,
            Ok(None) => {}
            Err(e) => return Ok(super::fail("wait", &e)),
        }
        let second = libc::timespec {
            tv_sec: if broker_fd.is_some() { 1 } else { 3600 },
            tv_nsec: 0,
        };
        // SAFETY: sigtimedwait on a set we blocked.
        let sig = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &second) };
        if sig == libc::SIGTERM || sig == libc::SIGINT {
            let _ = child.kill(sig);
        }
        if let Some(fd) = broker_fd {
            // SAFETY: the client, and so its fd, lives until after the loop.
            let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
            let gone = libc::POLLHUP | libc::POLLRDHUP | libc::POLLERR;
            if matches!(sockpass::sys::poll_one(fd, libc::POLLRDHUP, 0), Ok(r) if r & gone != 0) {
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "sockpass: the broker went away (its connection closed); the program keeps its sockets"
                );
                broker_fd = None;
            }
        }
    };
    drop(client);
    unblock(&set);
    Ok(exit_code(status))
}

fn blocked_signals() -> libc::sigset_t {
    // SAFETY: sigset manipulation on a local set; sigprocmask on this
    // single-threaded process.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGCHLD] {
            libc::sigaddset(&mut set, s);
        }
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// A signalfd for the forwarded signals (blocked by [`blocked_signals`]).
fn forward_fd() -> std::io::Result<OwnedFd> {
    // SAFETY: sigset manipulation on a local set; signalfd returns a new fd.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// The next signal queued on a non-blocking signalfd, if any.
fn read_signal(sfd: &OwnedFd) -> Option<i32> {
    // SAFETY: read one signalfd_siginfo into a zeroed local.
    let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
    let n = unsafe {
        libc::read(
            sfd.as_raw_fd(),
            (&mut info as *mut libc::signalfd_siginfo).cast(),
            std::mem::size_of::<libc::signalfd_siginfo>(),
        )
    };
    (n == std::mem::size_of::<libc::signalfd_siginfo>() as isize).then_some(info.ssi_signo as i32)
}

fn unblock(set: &libc::sigset_t) {
    // SAFETY: restores what blocked_signals blocked.
    unsafe { libc::sigprocmask(libc::SIG_UNBLOCK, set, std::ptr::null_mut()) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_spellings() {
        let s = |a: &str, d: bool| listen_spec(a, d).unwrap().to_string();
        assert!(s("8080", false).starts_with("tcp:0.0.0.0:8080?backlog="));
        assert_eq!(s("127.0.0.1:53", true), "udp:127.0.0.1:53");
        assert_eq!(s("udp:127.0.0.1:53", false), "udp:127.0.0.1:53");
        assert!(s("/run/x.sock", false).starts_with("unix:/run/x.sock"));
        assert!(s("/run/x.sock", true).starts_with("unix-dgram:"));
        assert!(listen_spec("nonsense", false).is_err());
        assert_eq!(parse_fd("7:web").unwrap(), (7, Some("web".into())));
        assert!(parse_fd("-1").is_err());
    }

    #[test]
    fn fdnames_as_systemd_socket_activate() {
        let given = |v: &[&str]| v.iter().flat_map(|v| split_fdnames(v)).collect::<Vec<_>>();
        let names = |v: &[&str], n| fdnames_for(&given(v), n);
        let s = |x: &str| Some(x.to_string());
        assert_eq!(names(&["web"], 3), (vec![s("web"); 3], None));
        assert_eq!(names(&["a:"], 2), (vec![s("a"); 2], None));
        assert_eq!(names(&[""], 2), (vec![s(""); 2], None));
        assert_eq!(names(&["a::c"], 2), (vec![s("a"), s("c")], None));
        assert_eq!(names(&["a", "b"], 2), (vec![s("a"), s("b")], None));
        assert_eq!(names(&[], 2), (vec![None, None], None));
        let (v, w) = names(&["a:b"], 3);
        assert_eq!(v, [s("a"), s("b"), None]);
        assert!(w.unwrap().contains("2 names for 3 fds"));
        let (v, w) = names(&["a:b:c"], 2);
        assert_eq!(v, [s("a"), s("b")]);
        assert!(w.unwrap().contains("ignored"));
    }
}
