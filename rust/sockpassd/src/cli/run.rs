//! `sockpass run [options] [--] PROGRAM [ARGS...]`: start PROGRAM with sockets
//! as systemd socket activation does (`LISTEN_FDS`, `LISTEN_PID`,
//! `LISTEN_FDNAMES`), through [`sockpass::spawn`]. The sockets come from
//! `-l` (made here), `--request` (from the broker; the connection, and so
//! the lease, is held while PROGRAM runs) or `--fd` (inherited), in the
//! order given; `--empty` leaves a slot's number closed and `--inherit`
//! passes on whatever we inherited at that number. Stream sockets are handed
//! over listening, as systemd does. `--fdname`, `--accept`, `--inetd`,
//! `--datagram` and `--seqpacket` follow `systemd-socket-activate`. With
//! `--wait-ready notify|fd:N|pipe` ([`sockpass::readiness`]) it prints
//! PROGRAM's pid once PROGRAM reports ready. Exits with PROGRAM's status
//! (128 + signal); SIGUSR2 restarts PROGRAM on the same sockets and other
//! signals are forwarded ([`super::supervise`]).

use super::{exit, flag, share_args, socket_arg};
use clap::{Arg, ArgAction, ArgMatches, Command};
use sockpass::Client;
use sockpass::Method;
use sockpass::SocketSpec;
use sockpass::{BindPorts, CatchBind, EnvBase, Slot, Spawn};
use sockpass::{Namespaces, NsSet};
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

/// One fd source, in command-line order.
enum Source {
    Listen(String),
    Request(SocketSpec),
    Fd(i32, Option<String>),
    Empty,
    Inherit,
}

/// The options that make slots, in the order they are listed in `--help`.
const SLOT_ARGS: [&str; 5] = ["listen", "request", "fd", "empty", "inherit"];

pub fn command() -> Command {
    // A flag that may be given many times and whose every occurrence is a
    // slot: its indices place the slots among the others.
    let slot_flag = |name: &'static str, help: &'static str| {
        Arg::new(name)
            .long(name)
            .num_args(0)
            .action(ArgAction::Append)
            .default_missing_value("")
            .help(help)
    };
    Command::new("run")
        .about("Start a program with sockets, by systemd socket activation")
        .long_about(
            "Start PROGRAM with sockets by systemd socket activation (LISTEN_FDS, LISTEN_PID, \
             LISTEN_FDNAMES, from fd 3 or --start; LISTEN_FDS_FIRST_FD when not 3). Each -l, \
             --request, --fd, --empty and --inherit is a slot, numbered in command-line order. \
             Stream sockets are handed over listening (as systemd and systemd-socket-activate \
             do) unless --no-listen. Exits with PROGRAM's status. SIGUSR2 (or `sockpass \
             restart NAME` with --name) restarts PROGRAM without closing a socket: a new \
             instance starts beside the old one, and the old one is stopped once the new one \
             is ready. SIGTERM and SIGINT go to every instance; SIGHUP, SIGQUIT, SIGUSR1 and \
             SIGWINCH to the current one.",
        )
        .arg(
            Arg::new("listen")
                .short('l')
                .long("listen")
                .value_name("ADDRESS")
                .action(ArgAction::Append)
                .help(
                    "Slot: a socket made here: a path or @NAME (unix), PORT or HOST:PORT (TCP, \
                     UDP with -d), or a tcp:/udp:/unix: spec",
                ),
        )
        .arg(
            Arg::new("request")
                .long("request")
                .value_name("SPEC")
                .action(ArgAction::Append)
                .value_parser(super::parse_spec)
                .help("Slot: a socket from the broker, held while PROGRAM runs"),
        )
        .arg(
            Arg::new("fd")
                .long("fd")
                .value_name("N[:NAME]")
                .action(ArgAction::Append)
                .value_parser(parse_fd)
                .help("Slot: our inherited fd N, named NAME"),
        )
        .arg(slot_flag(
            "empty",
            "Slot: leave the slot's number closed (counted in LISTEN_FDS, named empty)",
        ))
        .arg(slot_flag(
            "inherit",
            "Slot: whatever run inherited at the slot's number (nothing: closed)",
        ))
        .arg(
            flag("datagram", "-l makes datagram sockets (UDP, unix-dgram)")
                .short('d')
                .conflicts_with("seqpacket"),
        )
        .arg(flag("seqpacket", "-l PATH makes unix seqpacket sockets"))
        .arg(flag(
            "no-listen",
            "Hand stream sockets from --request over as the broker made them (listening only \
             when their spec has a backlog)",
        ))
        .arg(flag(
            "accept",
            "Accept connections on the one listening socket and start PROGRAM for each, with \
             the connection as its socket",
        ))
        .arg(flag(
            "inetd",
            "Pass the one socket (with --accept: each connection) as stdin and stdout instead \
             of by LISTEN_FDS",
        ))
        .arg(
            Arg::new("fdname")
                .long("fdname")
                .value_name("NAME[:NAME...]")
                .action(ArgAction::Append)
                .help(
                    "Names for LISTEN_FDNAMES, as systemd-socket-activate: one name names every \
                     slot; a count mismatch only warns; --fd N:NAME keeps its own",
                ),
        )
        .arg(
            Arg::new("catch-bind")
                .long("catch-bind")
                .value_name("WHICH")
                .num_args(0..=1)
                .require_equals(true)
                .default_missing_value("privileged")
                .value_parser(|v: &str| v.parse::<BindPorts>().map_err(|e| e.to_string()))
                .help(
                    "Catch PROGRAM's own bind() calls (seccomp) and answer them with sockets from \
                     the broker (--share and --app apply): WHICH is privileged (the default: \
                     ports below ip_unprivileged_port_start), inet (every non-zero port) or \
                     ports and ranges (53,80,8000-8099). Other binds, and those the broker \
                     refuses, are the kernel's to judge",
                ),
        )
        .arg(socket_arg())
        .args(share_args())
        .arg(
            Arg::new("start")
                .long("start")
                .value_name("N")
                .value_parser(clap::value_parser!(i32).range(0..))
                .default_value("3")
                .help("The number of the first slot"),
        )
        .arg(
            Arg::new("setenv")
                .short('E')
                .long("setenv")
                .value_name("VAR[=VALUE]")
                .action(ArgAction::Append)
                .value_parser(clap::value_parser!(OsString))
                .help("Set VAR in PROGRAM's environment (VAR alone: our own value)"),
        )
        .arg(
            Arg::new("unsetenv")
                .short('U')
                .long("unsetenv")
                .value_name("VAR")
                .action(ArgAction::Append)
                .value_parser(clap::value_parser!(OsString))
                .help("Unset VAR in PROGRAM's environment"),
        )
        .arg(flag("clear-env", "Start PROGRAM with an empty environment"))
        .arg(
            Arg::new("join")
                .long("join")
                .value_name("PID")
                .value_parser(clap::value_parser!(i32))
                .help("Start PROGRAM in PID's namespaces"),
        )
        .arg(
            Arg::new("ns")
                .long("ns")
                .value_name("LIST")
                .requires("join")
                .value_parser(|l: &str| l.parse::<NsSet>().map_err(|e| e.to_string()))
                .help("Which namespaces --join enters (net,mnt,uts,ipc,pid,user,cgroup)"),
        )
        .arg(
            Arg::new("wait-ready")
                .long("wait-ready")
                .value_name("notify|fd:N|pipe")
                .value_parser(|m: &str| m.parse::<Method>().map_err(|e| e.to_string()))
                .conflicts_with("accept")
                .help(
                    "Print PROGRAM's pid once it reports ready this way (and, if \
                     $NOTIFY_SOCKET is set, send READY=1 there for PROGRAM)",
                ),
        )
        .arg(
            Arg::new("ready-timeout")
                .long("ready-timeout")
                .value_name("SECONDS")
                .requires("wait-ready")
                .allow_negative_numbers(true)
                .value_parser(parse_seconds)
                .help("Stop PROGRAM if it is not ready by then"),
        )
        .args(super::supervise::args())
        .arg(super::program_arg(
            "The program to start, and its arguments (after --, or the first non-option)",
        ))
        .after_help(format!(
            "Examples:\n  sockpass run --request tcp:0.0.0.0:80 -- gunicorn app:app\n  \
             sockpass run --catch-bind -- busybox httpd -f -p 80\n  \
             sockpass run -l 8080 --accept --inetd -- cat\n\n{}",
            exit::HELP
        ))
}

pub(super) fn parse_seconds(v: &str) -> Result<Duration, String> {
    v.parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s > 0.0 && *s < 1e9)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("{v:?} is not a positive number of seconds"))
}

/// The slot sources in command-line order.
fn sources(m: &ArgMatches) -> Vec<Source> {
    let mut v: Vec<(usize, Source)> = Vec::new();
    for name in SLOT_ARGS {
        let Some(idx) = m.indices_of(name) else {
            continue;
        };
        let idx: Vec<usize> = idx.collect();
        let made: Vec<Source> = match name {
            "listen" => m
                .get_many::<String>(name)
                .unwrap_or_default()
                .map(|a| Source::Listen(a.clone()))
                .collect(),
            "request" => m
                .get_many::<SocketSpec>(name)
                .unwrap_or_default()
                .map(|s| Source::Request(s.clone()))
                .collect(),
            "fd" => m
                .get_many::<(i32, Option<String>)>(name)
                .unwrap_or_default()
                .map(|(n, s)| Source::Fd(*n, s.clone()))
                .collect(),
            "empty" => idx.iter().map(|_| Source::Empty).collect(),
            _ => idx.iter().map(|_| Source::Inherit).collect(),
        };
        v.extend(idx.into_iter().zip(made));
    }
    v.sort_by_key(|(i, _)| *i);
    v.into_iter().map(|(_, s)| s).collect()
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

/// What kind of socket `-l` makes: `-d/--datagram`, `--seqpacket`, or a
/// stream socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListenKind {
    Stream,
    Datagram,
    Seqpacket,
}

/// Turn a `systemd-socket-activate -l` style address into a spec: a path
/// (or `@name`) is a unix socket, a bare port or HOST:PORT is TCP (UDP with
/// `--datagram`), `tcp:`/`udp:`/`unix:` specs are taken as they are.
pub fn listen_spec(addr: &str, kind: ListenKind) -> Result<SocketSpec, String> {
    let parsed = if addr.starts_with('/') || addr.starts_with('@') || addr.starts_with("./") {
        let proto = match kind {
            ListenKind::Stream => "unix",
            ListenKind::Datagram => "unix-dgram",
            ListenKind::Seqpacket => "unix-seqpacket",
        };
        format!("{proto}:{addr}").parse::<SocketSpec>()
    } else if addr
        .split_once(':')
        .is_some_and(|(p, _)| p.parse::<sockpass::Proto>().is_ok())
    {
        addr.parse::<SocketSpec>()
    } else if kind == ListenKind::Seqpacket {
        return Err(format!(
            "--listen {addr:?}: --seqpacket applies to unix paths only"
        ));
    } else {
        let proto = if kind == ListenKind::Datagram {
            "udp"
        } else {
            "tcp"
        };
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

/// Make a stream socket from the broker listen, as socket activation hands
/// them over: with its spec's backlog, else SOMAXCONN. listen() on a socket
/// that already listens only sets its backlog again.
fn make_listen(fd: &OwnedFd, spec: &SocketSpec) -> sockpass::Result<()> {
    if !spec.proto.listens() {
        return Ok(());
    }
    let backlog = spec.options.backlog.unwrap_or(libc::SOMAXCONN as u32);
    // SAFETY: listen on our own fd.
    if unsafe { libc::listen(fd.as_raw_fd(), backlog.min(i32::MAX as u32) as i32) } < 0 {
        return Err(sockpass::Error::last_os(format!("listen {spec}")));
    }
    Ok(())
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

/// What every child of one `run` gets besides its sockets: the program,
/// its environment and the namespaces it joins.
pub struct Plan {
    program: Vec<OsString>,
    start: i32,
    clear_env: bool,
    env: Vec<(OsString, Option<OsString>)>,
    join: Option<(i32, NsSet)>,
    catch: Option<CatchBind>,
}

impl Plan {
    fn from_matches(m: &ArgMatches) -> Plan {
        let mut env: Vec<(OsString, Option<OsString>)> = Vec::new();
        // In command-line order: a later -E or -U of one VAR wins.
        let mut ops: Vec<(usize, OsString, bool)> = Vec::new();
        for (name, set) in [("setenv", true), ("unsetenv", false)] {
            if let (Some(idx), Some(vals)) = (m.indices_of(name), m.get_many::<OsString>(name)) {
                ops.extend(idx.zip(vals).map(|(i, v)| (i, v.clone(), set)));
            }
        }
        ops.sort_by_key(|o| o.0);
        for (_, kv, set) in ops {
            if !set {
                env.push((kv, None));
                continue;
            }
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
        let join = m.get_one::<i32>("join").map(|&pid| {
            let set = m.get_one::<NsSet>("ns").copied();
            (pid, set.unwrap_or_else(NsSet::default_join))
        });
        Plan {
            program: m.get_many("program").expect("required").cloned().collect(),
            start: *m.get_one("start").expect("has a default"),
            clear_env: m.get_flag("clear-env"),
            env,
            join,
            catch: m.get_one::<BindPorts>("catch-bind").map(|p| {
                let mut c = CatchBind::new(p.clone());
                c.socket = m.get_one::<std::path::PathBuf>("socket").cloned();
                c.share = super::share(m);
                c.app = super::app(m).to_string();
                c
            }),
        }
    }

    /// A spawn of the program with its environment and namespaces, no
    /// sockets yet.
    pub fn spawn(&self) -> sockpass::Result<Spawn> {
        let mut sp = Spawn::new(&self.program[0]);
        sp.args(&self.program[1..]).start(self.start);
        if self.clear_env {
            sp.env_base(EnvBase::Clear);
        }
        for (k, v) in &self.env {
            match v {
                Some(v) => sp.setenv(k, v),
                None => sp.unsetenv(k),
            };
        }
        if let Some((pid, set)) = &self.join {
            let ns = Namespaces::open(*pid, *set)
                .map_err(|e| e.context(format_args!("join process {pid}")))?;
            sp.join(ns);
        }
        if let Some(c) = &self.catch {
            sp.catch_bind(c.clone());
        }
        Ok(sp)
    }
}

/// Put one socket at stdin and stdout, inetd style, with no LISTEN_FDS.
pub fn as_inetd(sp: &mut Spawn, fd: OwnedFd) -> sockpass::Result<()> {
    let copy = sockpass::sys::dup_cloexec(fd.as_fd())
        .map_err(|e| sockpass::Error::os(e, "dup for stdout"))?;
    sp.fd_at(fd, 0).fd_at(copy, 1).listen_env(false);
    Ok(())
}

pub fn run(m: &ArgMatches) -> Result<i32, String> {
    let kind = if m.get_flag("datagram") {
        ListenKind::Datagram
    } else if m.get_flag("seqpacket") {
        ListenKind::Seqpacket
    } else {
        ListenKind::Stream
    };
    let sources = sources(m);
    let plan = Plan::from_matches(m);
    let start = plan.start;
    let (accept, inetd) = (m.get_flag("accept"), m.get_flag("inetd"));
    let wait_ready = m.get_one::<Method>("wait-ready").copied();
    if (accept || inetd) && sources.len() != 1 {
        return Err(format!(
            "run: --accept and --inetd take exactly one socket ({} given)",
            sources.len()
        ));
    }
    if inetd && wait_ready == Some(Method::Pipe) {
        return Err("run: --wait-ready pipe adds a slot, which --inetd has no room for".into());
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
                let spec = listen_spec(addr, kind)?;
                match sockpass_broker::create::create_socket(&spec) {
                    Ok(c) => fds.push((Some(c.fd), None)),
                    Err(e) => return Ok(super::fail(&format!("listen on {addr}"), &e)),
                }
            }
            Source::Request(spec) => {
                if client.is_none() {
                    match super::connect_broker(m) {
                        Ok(c) => client = Some(c),
                        Err(e) => return Ok(super::fail("connect to the broker", &e)),
                    }
                }
                let c = client.as_mut().expect("connected above");
                let g = match c.request_socket(spec, super::share(m), super::app(m)) {
                    Ok(g) => g,
                    Err(e) => return Ok(super::fail(&format!("request {spec}"), &e)),
                };
                if !m.get_flag("no-listen") {
                    if let Err(e) = make_listen(&g.fd, spec) {
                        return Ok(super::fail(&format!("request {spec}"), &e));
                    }
                }
                fds.push((Some(g.fd), None));
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
    let fdnames: Vec<String> = m
        .get_many::<String>("fdname")
        .unwrap_or_default()
        .flat_map(|v| split_fdnames(v))
        .collect();
    let (names, warn) = fdnames_for(&fdnames, fds.len());
    if let Some(w) = warn {
        eprintln!("sockpass: warning: {w}");
    }

    if accept || inetd {
        let Some((Some(fd), own)) = fds.pop() else {
            return Err("run: --accept and --inetd need a socket, not an empty slot".into());
        };
        let name = own.or(names.into_iter().next().flatten());
        if accept {
            return Ok(super::accept::serve(fd, name, inetd, &plan, client));
        }
        let mut sp = match plan.spawn() {
            Ok(sp) => sp,
            Err(e) => return Ok(super::fail("run", &e)),
        };
        if let Err(e) = as_inetd(&mut sp, fd) {
            return Ok(super::fail("run", &e));
        }
        return Ok(run_child(sp, m, client));
    }

    let mut sp = match plan.spawn() {
        Ok(sp) => sp,
        Err(e) => return Ok(super::fail("run", &e)),
    };
    for ((fd, own), given) in fds.into_iter().zip(names) {
        // A name of the slot's own (`--fd N:NAME`) beats `--fdname`.
        let name = own.or(given);
        match fd {
            Some(fd) => sp.fd(fd, name.as_deref()),
            None => sp.slot(Slot::Empty { name }),
        };
    }
    Ok(run_child(sp, m, client))
}

/// Start the child under a [`sockpass::Supervisor`] (see
/// [`super::supervise`]): readiness, signals, restarts, `--name`.
fn run_child(sp: Spawn, m: &ArgMatches, client: Option<Client>) -> i32 {
    let opts = super::supervise::options(m);
    let ready_timeout = m.get_one::<Duration>("ready-timeout").copied();
    let name = m.get_one::<String>("name").map(String::as_str);
    super::supervise::run_child(sp, opts, ready_timeout, client, name)
}

/// Report a failed spawn: 127 or 126 when the exec failed (as shells).
pub fn spawn_failed(e: &sockpass::Error) -> i32 {
    let code = super::fail("run", e);
    if e.kind() == sockpass::Kind::ChildFailed && e.message().contains("failed to exec") {
        return exit::for_exec_errno(e.errno());
    }
    code
}

/// Signals `run` takes itself, blocked and read from a signalfd: SIGTERM
/// and SIGINT end the run, SIGUSR2 restarts, the others are forwarded.
const TAKEN: [i32; 7] = [
    libc::SIGHUP,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGTERM,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGWINCH,
];

/// Block [`TAKEN`] in this (single-threaded) process and open a signalfd
/// for them; the set is for [`unblock`]. Children start with an empty mask
/// (spawn resets it).
pub(super) fn take_signals() -> (libc::sigset_t, std::io::Result<OwnedFd>) {
    // SAFETY: sigset manipulation on a local set; sigprocmask on this
    // single-threaded process; signalfd returns a new fd, owned at once.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in TAKEN {
            libc::sigaddset(&mut set, s);
        }
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
        if fd < 0 {
            return (set, Err(std::io::Error::last_os_error()));
        }
        (set, Ok(OwnedFd::from_raw_fd(fd)))
    }
}

/// The next signal queued on a non-blocking signalfd, if any.
pub(super) fn read_signal(sfd: &OwnedFd) -> Option<i32> {
    // SAFETY: all-zero is a valid signalfd_siginfo.
    let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
    // SAFETY: read at most one signalfd_siginfo into the local.
    let n = unsafe {
        libc::read(
            sfd.as_raw_fd(),
            (&mut info as *mut libc::signalfd_siginfo).cast(),
            std::mem::size_of::<libc::signalfd_siginfo>(),
        )
    };
    (n == std::mem::size_of::<libc::signalfd_siginfo>() as isize).then_some(info.ssi_signo as i32)
}

pub(super) fn unblock(set: &libc::sigset_t) {
    // SAFETY: restores what take_signals blocked.
    unsafe { libc::sigprocmask(libc::SIG_UNBLOCK, set, std::ptr::null_mut()) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_spellings() {
        let s = |a: &str, d: bool| {
            let kind = if d {
                ListenKind::Datagram
            } else {
                ListenKind::Stream
            };
            listen_spec(a, kind).unwrap().to_string()
        };
        assert!(s("8080", false).starts_with("tcp:0.0.0.0:8080?backlog="));
        assert_eq!(s("127.0.0.1:53", true), "udp:127.0.0.1:53");
        assert_eq!(s("udp:127.0.0.1:53", false), "udp:127.0.0.1:53");
        assert!(s("/run/x.sock", false).starts_with("unix:/run/x.sock"));
        assert!(s("/run/x.sock", true).starts_with("unix-dgram:"));
        assert!(listen_spec("nonsense", ListenKind::Stream).is_err());
        let sp = listen_spec("/run/x.sock", ListenKind::Seqpacket).unwrap();
        assert!(sp.to_string().starts_with("unix-seqpacket:/run/x.sock"));
        assert!(listen_spec("8080", ListenKind::Seqpacket).is_err());
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
