//! `sockpassd`: parse options, bind the listener, run the broker until
//! SIGTERM/SIGINT.

use crate::args::Args;
use sockpass::broker::{self, Broker, Config};
use std::ffi::OsString;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

const USAGE: &str = "\
usage: sockpassd [options]

The sockpass socket broker. Creates bound sockets on request, caches and
shares them, and hands them over by fd passing.

options:
  --socket PATH              listen here (default: $SOCKPASS_SOCKET, else
                             /run/sockpass/sockpassd.sock as root,
                             $XDG_RUNTIME_DIR/sockpass/sockpassd.sock otherwise)
  --socket-mode MODE         octal mode of the socket file (default 0666;
                             the policy decides what each client may ask for)
  --socket-group GROUP       group (name or gid) of the socket file
  --policy FILE              policy file (docs/POLICY.md); default: the built-in
                             policy (root anything, others ports 0 and 1024-65535)
  --max-connections N        concurrent clients (default 8192, fitted to RLIMIT_NOFILE)
  --max-refs-per-client N    references one client may hold (default 16384)
  --max-sockets N            sockets the broker holds (default 65536, fitted)
  --max-reservations N       reservations pending pick-up (default 1024)
  --reservation-ttl SECONDS  how long a reservation waits (default 30; fractions allowed)
  --notify                   send READY=1 to $NOTIFY_SOCKET once listening (an
                             error if it is unset; when set, it is used anyway)
  --ready-fd N               write a newline to fd N and close it once listening
                             (s6 notification-fd; closing also fires a pipe notifier)
  -q, --quiet                log nothing but fatal errors

Socket activation: with LISTEN_PID=<our pid> and LISTEN_FDS=1, fd 3 (a
listening unix seqpacket socket) is used instead of binding --socket.
  -h, --help                 this text
  -V, --version              print the version
";

struct Opts {
    socket: Option<PathBuf>,
    cfg: Config,
    notify: bool,
    ready_fd: Option<OwnedFd>,
}

fn parse(args: Vec<OsString>) -> Result<Option<Opts>, String> {
    let mut a = Args::new(args);
    let mut o = Opts {
        socket: None,
        cfg: Config::default(),
        notify: false,
        ready_fd: None,
    };
    while let Some((k, v)) = a.next_option() {
        match k.as_str() {
            "--socket" => o.socket = Some(PathBuf::from(a.value_os(&k, v)?)),
            "--socket-mode" => {
                let m = a.value(&k, v)?;
                o.cfg.socket_mode = u32::from_str_radix(m.trim_start_matches("0o"), 8)
                    .ok()
                    .filter(|m| *m <= 0o7777)
                    .ok_or_else(|| format!("--socket-mode: {m:?} is not an octal mode"))?;
            }
            "--socket-group" => {
                let g = a.value(&k, v)?;
                o.cfg.socket_group =
                    Some(sockpass::policy::group_id(&g).map_err(|e| format!("{k}: {e}"))?);
            }
            "--policy" => {
                let f = PathBuf::from(a.value_os(&k, v)?);
                o.cfg.policy = sockpass::policy::Policy::load(&f)
                    .map_err(|e| format!("bad policy file {}: {e}", f.display()))?;
            }
            "--max-connections" => o.cfg.limits.max_connections = positive(&k, a.number(&k, v)?)?,
            "--max-refs-per-client" => {
                o.cfg.limits.max_refs_per_client = positive(&k, a.number(&k, v)?)?
            }
            "--max-sockets" => o.cfg.limits.max_sockets = positive(&k, a.number(&k, v)?)?,
            "--max-reservations" => o.cfg.limits.max_reservations = positive(&k, a.number(&k, v)?)?,
            "--reservation-ttl" => {
                let secs: f64 = a.number(&k, v)?;
                if !(secs > 0.0 && secs <= 86400.0) {
                    return Err(format!("{k} must be between 0 and 86400 seconds"));
                }
                o.cfg.limits.reservation_ttl = std::time::Duration::from_secs_f64(secs);
            }
            "--notify" => o.notify = true,
            "--ready-fd" => {
                let n = a.number(&k, v)?;
                o.ready_fd =
                    Some(sockpass::readiness::inherited_fd(n).map_err(|e| format!("{k}: {e}"))?);
            }
            "-q" | "--quiet" => o.cfg.log = false,
            "-h" | "--help" => {
                print!("{USAGE}");
                return Ok(None);
            }
            "-V" | "--version" => {
                println!("sockpassd {}", env!("CARGO_PKG_VERSION"));
                return Ok(None);
            }
            _ => return Err(format!("unknown option {k}")),
        }
    }
    if let Some(extra) = a.next_raw() {
        return Err(format!("unexpected argument {extra:?}"));
    }
    Ok(Some(o))
}

fn positive(name: &str, v: usize) -> Result<usize, String> {
    if v == 0 {
        Err(format!("{name} must be at least 1"))
    } else {
        Ok(v)
    }
}

/// A signalfd for SIGTERM and SIGINT (blocked so they arrive only there).
fn stop_signals() -> std::io::Result<OwnedFd> {
    // SAFETY: sigset manipulation on a local set; signalfd returns a new fd.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // Replies use MSG_NOSIGNAL; this covers a closed stderr.
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

fn which_signal(fd: &OwnedFd) -> &'static str {
    use std::os::fd::AsRawFd;
    // SAFETY: reading one siginfo into a properly sized buffer.
    let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
    let n = unsafe {
        libc::read(
            fd.as_raw_fd(),
            (&mut info as *mut libc::signalfd_siginfo).cast(),
            std::mem::size_of::<libc::signalfd_siginfo>(),
        )
    };
    match (n > 0).then_some(info.ssi_signo as i32) {
        Some(libc::SIGTERM) => "SIGTERM",
        Some(libc::SIGINT) => "SIGINT",
        _ => "a signal",
    }
}

pub fn main(args: Vec<OsString>) -> i32 {
    let mut o = match parse(args) {
        Ok(Some(o)) => o,
        Ok(None) => return 0,
        Err(e) => {
            eprintln!("sockpassd: {e}\n(see sockpassd --help)");
            return 2;
        }
    };
    let nofile = broker::raise_fd_limit();
    o.cfg.limits.fit_fd_limit(nofile);
    let stop = match stop_signals() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sockpassd: cannot set up signal handling: {e}");
            return 1;
        }
    };
    if o.notify && std::env::var_os("NOTIFY_SOCKET").is_none() {
        eprintln!("sockpassd: --notify: $NOTIFY_SOCKET is not set");
        return 2;
    }
    let mut path = o.socket.clone().unwrap_or_else(broker::default_socket_path);
    // Socket activation: the socket file is the activator's, never removed here.
    let activated =
        match sockpass::notify::activation::adopt_listen_socket(true, libc::SOCK_SEQPACKET) {
            Ok(Some(s)) => {
                path = PathBuf::from(std::ffi::OsStr::from_bytes(s.path()));
                Some(s.into_fd())
            }
            Ok(None) => None,
            Err(e) => {
                eprintln!("sockpassd: socket activation: {e}");
                return 1;
            }
        };
    let is_activated = activated.is_some();
    let bound = match activated {
        Some(l) => Ok(l),
        None => broker::bind_listener_as(&path, o.cfg.socket_mode, o.cfg.socket_group),
    };
    let listener = match bound {
        Ok(l) => l,
        Err(e) => {
            eprintln!("sockpassd: cannot start: {e}");
            return 1;
        }
    };
    let log = o.cfg.log;
    let limits = o.cfg.limits.clone();
    let mut b = match Broker::new(listener, o.cfg) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("sockpassd: cannot start: {e}");
            if !is_activated {
                let _ = std::fs::remove_file(&path);
            }
            return 1;
        }
    };
    if log {
        eprintln!(
            "sockpassd[{}]: listening on {} (version {}, max {} connections, {} sockets, {} references per client)",
            std::process::id(),
            path.display(),
            env!("CARGO_PKG_VERSION"),
            limits.max_connections,
            limits.max_sockets,
            limits.max_refs_per_client
        );
    }
    if let Err(e) = report_ready(o.ready_fd.take()) {
        eprintln!("sockpassd: reporting readiness: {e}");
    }
    let res = b.run(Some(stop.as_fd()));
    let code = match res {
        Ok(()) => {
            if log {
                eprintln!(
                    "sockpassd[{}]: {} received, shutting down",
                    std::process::id(),
                    which_signal(&stop)
                );
            }
            0
        }
        Err(e) => {
            eprintln!("sockpassd: event loop failed: {e}");
            1
        }
    };
    b.shutdown();
    if !is_activated {
        let _ = std::fs::remove_file(&path);
    }
    code
}

/// Tell whoever started us that the listener is up: sd_notify (when
/// `$NOTIFY_SOCKET` is set, as systemd services do, or `--notify`) and the
/// `--ready-fd`.
fn report_ready(fd: Option<OwnedFd>) -> sockpass::Result<()> {
    sockpass::readiness::notify_ready_from_env()?;
    // The variable is for us, not for anything we might start.
    std::env::remove_var("NOTIFY_SOCKET");
    if let Some(fd) = fd {
        sockpass::readiness::report_ready_fd(fd)?;
    }
    Ok(())
}
