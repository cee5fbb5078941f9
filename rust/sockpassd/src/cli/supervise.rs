//! `sockpass run`'s supervision of PROGRAM, through
//! [`sockpass::Supervisor`]: the first instance's readiness, signals
//! (SIGUSR2 restarts; SIGTERM and SIGINT go to every instance and end the
//! run; SIGHUP, SIGQUIT, SIGUSR1 and SIGWINCH go to the current instance),
//! the `--name` control socket ([`super::restart`]), one stderr line per
//! restart step, and the exit status: the current instance's.

use super::restart::{self, Endpoint};
use sockpass::{describe_status, Client, Spawn, SuperviseEvent as Event, SuperviseOptions};
use sockpass::{exit_code, Supervisor};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::Duration;

/// At most this many `sockpass restart` clients wait for an outcome.
const MAX_WAITERS: usize = 64;

fn say(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "sockpass: {line}");
}

/// `run`'s own service manager (systemd with `Type=notify`, or anything
/// that reads `$NOTIFY_SOCKET`), when `run` waits for its program's
/// readiness: it took that channel from the program, so it passes on what
/// the manager needs (READY=1 with its own pid as MAINPID, each restart as
/// STATUS=, STOPPING=1). A manager that cannot be reached costs a line.
struct Manager(Option<std::ffi::OsString>);

impl Manager {
    fn tell(&self, msg: std::fmt::Arguments<'_>) {
        if let Some(addr) = &self.0 {
            let msg = msg.to_string();
            if let Err(e) = sockpass::send_notify(addr, msg.as_bytes()) {
                say(format_args!("could not tell the service manager: {e}"));
            }
        }
    }

    fn status(&self, ev: &Event, sup: &Supervisor) {
        match ev {
            Event::HandedOver {
                id,
                old_pid,
                new_pid,
            } => self.tell(format_args!(
                "STATUS=restart {id}: new instance {new_pid} ready, stopping {old_pid}"
            )),
            Event::Restarted(r) => self.tell(format_args!(
                "STATUS=instance {} serves (restart {} done)",
                r.new_pid, r.id
            )),
            Event::RestartFailed(f) => self.tell(format_args!("STATUS={}", failure(f, sup))),
            Event::Exited(_) => {}
        }
    }
}

/// What `run` does with one signal once the first instance runs.
fn on_signal(sup: &mut Supervisor, mgr: &Manager, sig: i32, why: &str) -> Option<u64> {
    match sig {
        libc::SIGUSR2 => request(sup, why),
        libc::SIGTERM | libc::SIGINT => {
            mgr.tell(format_args!("STOPPING=1"));
            sup.terminate(sig);
            None
        }
        _ => {
            let _ = sup.signal(sig);
            None
        }
    }
}

fn request(sup: &mut Supervisor, why: &str) -> Option<u64> {
    let busy = sup.restarting();
    match sup.request_restart() {
        Ok(id) => {
            let cur = sup.pid().unwrap_or(0);
            if busy {
                say(format_args!(
                    "restart {id} ({why}): queued until the restart under way is over"
                ));
            } else {
                say(format_args!(
                    "restart {id} ({why}): starting a new instance beside {cur}"
                ));
            }
            Some(id)
        }
        Err(e) => {
            say(format_args!("restart ({why}) refused: {}", e.message()));
            None
        }
    }
}

/// A failed restart in words, with who serves now.
fn failure(f: &sockpass::RestartFailure, sup: &Supervisor) -> String {
    format!(
        "restart {} failed: {}; {}",
        f.id,
        f.error.message(),
        match sup.pid() {
            Some(p) => format!("instance {p} keeps serving"),
            None => "no instance is left".into(),
        }
    )
}

fn log_event(sup: &Supervisor, ev: &Event) {
    let stop = sup.options().stop_signal;
    match ev {
        Event::HandedOver {
            id,
            old_pid,
            new_pid,
        } => say(format_args!(
            "restart {id}: new instance {new_pid} is ready; stopping old instance {old_pid} \
             (signal {stop})"
        )),
        Event::Restarted(r) => say(format_args!(
            "restart {}: done: old instance {} {}, new instance {} serves",
            r.id,
            r.old_pid,
            describe_status(r.old_status),
            r.new_pid
        )),
        Event::RestartFailed(f) => say(format_args!("{}", failure(f, sup))),
        Event::Exited(_) => {}
    }
}

/// Start the first instance, wait for its readiness if asked (printing its
/// pid then), and supervise until no instance is left; its exit code.
pub fn run_child(
    sp: Spawn,
    opts: SuperviseOptions,
    ready_timeout: Option<Duration>,
    client: Option<Client>,
    name: Option<&str>,
) -> i32 {
    // Bound before anything starts: a name in use is refused up front.
    let endpoint = match name.map(restart::path_for).transpose() {
        Ok(p) => match p.as_deref().map(Endpoint::bind).transpose() {
            Ok(e) => e,
            Err(e) => return super::fail("run: --name", &e),
        },
        Err(e) => {
            eprintln!("sockpass: run: --name: {e}");
            return super::exit::USAGE;
        }
    };
    let (set, sfd) = super::run::take_signals();
    let unblock = || super::run::unblock(&set);
    let sfd = match sfd {
        Ok(s) => s,
        Err(e) => {
            unblock();
            eprintln!("sockpass: run: signalfd: {e}");
            return super::exit::FAILURE;
        }
    };
    let waits_ready = opts.ready.is_some();
    // Without --wait-ready the program keeps $NOTIFY_SOCKET and speaks to
    // the manager itself.
    let mgr = Manager(
        waits_ready
            .then(|| std::env::var_os("NOTIFY_SOCKET"))
            .flatten(),
    );
    let mut sup = match Supervisor::start(sp, opts) {
        Ok(s) => s,
        Err(e) => {
            unblock();
            return super::run::spawn_failed(&e);
        }
    };
    let mut early_restart = false;
    if waits_ready {
        // Signals are handled meanwhile, so a child that never gets ready
        // can still be stopped through us; a restart asked for now waits
        // until it is ready.
        let pid = sup.pid().unwrap_or(0);
        let mut forward = || {
            while let Some(sig) = read_signal(&sfd) {
                if sig == libc::SIGUSR2 {
                    early_restart = true;
                } else {
                    // SAFETY: our child, not reaped while we wait.
                    unsafe { libc::kill(pid, sig) };
                }
            }
            Ok(())
        };
        match sup.wait_ready_watching(ready_timeout, sfd.as_fd(), &mut forward) {
            Ok(()) => {
                use std::io::Write;
                let mut out = std::io::stdout();
                let _ = writeln!(out, "{pid}");
                let _ = out.flush();
                mgr.tell(format_args!(
                    "READY=1\nMAINPID={}\nSTATUS=instance {pid} serves",
                    std::process::id()
                ));
            }
            Err(e) if e.kind() == sockpass::Kind::Timeout => {
                // A supervisor waiting for readiness treats this as failure:
                // stop the child; its status (128+SIGTERM) is ours.
                eprintln!("sockpass: the child did not report ready: {e}; stopping it");
                sup.terminate(libc::SIGTERM);
            }
            Err(e) => {
                eprintln!("sockpass: the child did not report ready: {e}");
            }
        }
    }
    if early_restart {
        request(&mut sup, "SIGUSR2");
    }
    let status = supervise(&mut sup, &mgr, &sfd, endpoint.as_ref(), client.as_ref());
    drop(endpoint);
    drop(client);
    unblock();
    exit_code(status)
}

/// The loop: events, signals, control requests, the broker connection.
fn supervise(
    sup: &mut Supervisor,
    mgr: &Manager,
    sfd: &OwnedFd,
    endpoint: Option<&Endpoint>,
    client: Option<&Client>,
) -> i32 {
    // The broker connection (held while the program runs) is looked at once
    // a second: a broker that went away is said once on stderr.
    let mut broker_fd = client.map(|c| c.as_raw_fd());
    let mut waiters: Vec<(u64, OwnedFd)> = Vec::new();
    loop {
        for ev in sup.advance() {
            log_event(sup, &ev);
            mgr.status(&ev, sup);
            if let Event::Exited(st) = ev {
                for (_, w) in waiters.drain(..) {
                    let _ = restart::send(&w, b"failed 0 0 - 1 the supervisor ended");
                }
                return st;
            }
            if let Some((id, msg)) = restart::answer(&ev) {
                waiters.retain(|(w, conn)| {
                    if *w == id {
                        let _ = restart::send(conn, &msg);
                    }
                    *w != id
                });
            }
        }
        let mut fds = vec![sfd.as_raw_fd(), endpoint.map_or(-1, Endpoint::fd)];
        fds.extend(sup.poll_fds());
        let mut p: Vec<libc::pollfd> = fds
            .iter()
            .map(|&fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let cap = Duration::from_secs(if broker_fd.is_some() { 1 } else { 3600 });
        let deadline = sup.deadline();
        let wait = deadline.map_or(cap, |d| {
            d.saturating_duration_since(std::time::Instant::now())
                .min(cap)
        });
        let ms = wait.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
        // SAFETY: poll on a vector of valid pollfds (-1 is skipped).
        unsafe { libc::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, ms) };
        if p[0].revents != 0 {
            while let Some(sig) = read_signal(sfd) {
                on_signal(sup, mgr, sig, "SIGUSR2");
            }
        }
        if let (Some(ep), true) = (endpoint, p[1].revents != 0) {
            if let Some((conn, req)) = ep.accept() {
                if req != restart::RESTART {
                    let _ = restart::send(&conn, b"failed 0 0 - 22 unknown request");
                } else if waiters.len() >= MAX_WAITERS {
                    let _ = restart::send(&conn, b"failed 0 0 - 2003 too many waiting clients");
                } else {
                    match request(sup, "sockpass restart") {
                        Some(id) => waiters.push((id, conn)),
                        None => {
                            let _ = restart::send(&conn, b"failed 0 0 - 22 restart refused");
                        }
                    }
                }
            }
        }
        if let Some(fd) = broker_fd {
            // SAFETY: the client, and so its fd, outlives this loop.
            let fd = unsafe { BorrowedFd::borrow_raw(fd) };
            let gone = libc::POLLHUP | libc::POLLRDHUP | libc::POLLERR;
            if matches!(sockpass::sys::poll_one(fd, libc::POLLRDHUP, 0), Ok(r) if r & gone != 0) {
                say(format_args!(
                    "the broker went away (its connection closed); the program keeps its sockets"
                ));
                broker_fd = None;
            }
        }
    }
}

/// The next signal queued on a non-blocking signalfd, if any.
fn read_signal(sfd: &OwnedFd) -> Option<i32> {
    super::run::read_signal(sfd)
}

/// `run`'s restart options.
pub fn args() -> [clap::Arg; 5] {
    use clap::Arg;
    [
        Arg::new("name").long("name").value_name("NAME").help(
            "Make a control socket NAME for `sockpass restart NAME` \
                 ($XDG_RUNTIME_DIR/sockpass/run/NAME, /run/sockpass/run/NAME as root; a NAME \
                 with a / is the path); refused if a running instance holds it",
        ),
        Arg::new("restart-grace")
            .long("restart-grace")
            .value_name("SECONDS")
            .value_parser(super::run::parse_seconds)
            .default_value("1")
            .help(
                "On a restart without --wait-ready: the new instance counts as ready once it \
                 has run this long",
            ),
        Arg::new("restart-timeout")
            .long("restart-timeout")
            .value_name("SECONDS")
            .value_parser(super::run::parse_seconds)
            .help(
                "On a restart with --wait-ready: how long the new instance may take to be \
                 ready before it is stopped and the restart fails (default: --ready-timeout, \
                 else 60)",
            ),
        Arg::new("stop-signal")
            .long("stop-signal")
            .value_name("SIGNAL")
            .value_parser(parse_signal)
            .default_value("TERM")
            .help("The signal that stops an old instance after a restart (name or number)"),
        Arg::new("drain-timeout")
            .long("drain-timeout")
            .value_name("SECONDS")
            .value_parser(super::run::parse_seconds)
            .default_value("30")
            .help("How long a stopped instance may take to exit before SIGKILL"),
    ]
}

/// The supervisor's options from `run`'s command line.
pub fn options(m: &clap::ArgMatches) -> SuperviseOptions {
    let secs = |k: &str| m.get_one::<Duration>(k).copied();
    let d = SuperviseOptions::default();
    SuperviseOptions {
        ready: m.get_one::<sockpass::Method>("wait-ready").copied(),
        ready_timeout: secs("restart-timeout")
            .or(secs("ready-timeout"))
            .unwrap_or(d.ready_timeout),
        grace: secs("restart-grace").unwrap_or(d.grace),
        stop_signal: m
            .get_one::<i32>("stop-signal")
            .copied()
            .unwrap_or(d.stop_signal),
        drain_timeout: secs("drain-timeout").unwrap_or(d.drain_timeout),
    }
}

/// A signal by name (`TERM`, `SIGTERM`, any case) or number.
pub fn parse_signal(v: &str) -> Result<i32, String> {
    const NAMES: [(&str, i32); 12] = [
        ("HUP", libc::SIGHUP),
        ("INT", libc::SIGINT),
        ("QUIT", libc::SIGQUIT),
        ("KILL", libc::SIGKILL),
        ("USR1", libc::SIGUSR1),
        ("USR2", libc::SIGUSR2),
        ("ALRM", libc::SIGALRM),
        ("TERM", libc::SIGTERM),
        ("CONT", libc::SIGCONT),
        ("STOP", libc::SIGSTOP),
        ("WINCH", libc::SIGWINCH),
        ("PWR", libc::SIGPWR),
    ];
    let up = v.to_ascii_uppercase();
    let bare = up.strip_prefix("SIG").unwrap_or(&up);
    if let Some((_, n)) = NAMES.iter().find(|(name, _)| *name == bare) {
        return Ok(*n);
    }
    match v.parse::<i32>() {
        Ok(n) if (1..=64).contains(&n) => Ok(n),
        _ => Err(format!(
            "{v:?} is not a signal name (TERM, INT, QUIT...) or number"
        )),
    }
}
