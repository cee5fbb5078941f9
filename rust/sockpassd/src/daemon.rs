//! `sockpassd`: parse options, bind the listener, run the broker until
//! SIGTERM/SIGINT.

use crate::args::Args;
use sockpass_broker::broker::{self, Broker, Config, Limits};
use std::ffi::OsString;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

const USAGE_HEAD: &str = "\
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
";

// The limits' lines come from their table (sockpass_broker::broker::LIMIT_FLAGS).
const USAGE_TAIL: &str =
    "  --notify                   send READY=1 to $NOTIFY_SOCKET once listening (an
                             error if it is unset; when set, it is used anyway)
  --ready-fd N               write a newline to fd N and close it once listening
                             (s6 notification-fd; closing also fires a pipe notifier)
  -q, --quiet                log nothing but fatal errors

SIGHUP (or `sockpass upgrade`) re-executes the binary in place (same pid),
handing over every socket, reference, reservation and client connection.
The new binary must first answer --handoff-version with this broker's
handoff format within 5 s, or the upgrade is refused and nothing changes.

Socket activation: with LISTEN_PID=<our pid> and LISTEN_FDS=1, fd 3 (a
listening unix seqpacket socket) is used instead of binding --socket.
  -h, --help                 this text
  -V, --version              print the version
  --handoff-version          print the upgrade handoff format this binary reads
";

struct Opts {
    socket: Option<PathBuf>,
    cfg: Config,
    notify: bool,
    ready_fd: Option<OwnedFd>,
    policy_file: Option<PathBuf>,
}

fn parse(args: Vec<OsString>) -> Result<Option<Opts>, String> {
    let mut a = Args::new(args);
    let mut o = Opts {
        socket: None,
        cfg: Config::default(),
        notify: false,
        ready_fd: None,
        policy_file: None,
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
                    Some(sockpass_broker::policy::group_id(&g).map_err(|e| format!("{k}: {e}"))?);
            }
            "--policy" => {
                let f = PathBuf::from(a.value_os(&k, v)?);
                o.cfg.policy = sockpass_broker::policy::Policy::load(&f)
                    .map_err(|e| format!("bad policy file {}: {e}", f.display()))?;
                o.policy_file = Some(f);
            }
            k if Limits::is_flag(k) => {
                let v = a.value(k, v)?;
                o.cfg.limits.set_flag(k, &v).unwrap_or(Ok(()))?;
            }
            "--notify" => o.notify = true,
            "--ready-fd" => {
                let n = a.number(&k, v)?;
                o.ready_fd = Some(sockpass::inherited_fd(n).map_err(|e| format!("{k}: {e}"))?);
            }
            "-q" | "--quiet" => o.cfg.log = false,
            "-h" | "--help" => {
                print!("{USAGE_HEAD}{}{USAGE_TAIL}", Limits::usage());
                return Ok(None);
            }
            "-V" | "--version" => {
                println!("sockpassd {}", env!("CARGO_PKG_VERSION"));
                return Ok(None);
            }
            "--handoff-version" => {
                println!("{}", sockpass_broker::handoff::FORMAT);
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

/// A signalfd for SIGTERM, SIGINT and SIGHUP (upgrade), blocked so they
/// arrive only there; the mask survives the upgrade's execve.
fn stop_signals() -> std::io::Result<OwnedFd> {
    // SAFETY: sigset manipulation on a local set; signalfd returns a new fd.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGHUP);
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
        Some(libc::SIGHUP) => "SIGHUP",
        _ => "a signal",
    }
}

pub fn main(args: Vec<OsString>) -> i32 {
    // Before anything else: the fds of a handed-over state must be CLOEXEC.
    let handed = match sockpass_broker::handoff::take_from_env() {
        Ok(h) => h,
        Err(e) => {
            sockpass_broker::log!(Error, "cannot take over from the previous image: {e}");
            return 1;
        }
    };
    let mut up = Upgrade::new(&args);
    let mut o = match parse(args) {
        Ok(Some(o)) => o,
        Ok(None) => return 0,
        Err(e) => {
            eprintln!("sockpassd: {e}\n(see sockpassd --help)");
            return 2;
        }
    };
    up.policy_file = o.policy_file.clone();
    // From here on lines go through the broker's log (never blocks, never
    // panics on a closed stderr).
    sockpass_broker::log::set_quiet(!o.cfg.log);
    let nofile = broker::raise_fd_limit();
    o.cfg.limits.fit_fd_limit(nofile);
    let stop = match stop_signals() {
        Ok(s) => s,
        Err(e) => {
            sockpass_broker::log!(Error, "cannot set up signal handling: {e}");
            return 1;
        }
    };
    if o.notify && std::env::var_os("NOTIFY_SOCKET").is_none() {
        sockpass_broker::log!(Error, "--notify: $NOTIFY_SOCKET is not set");
        return 2;
    }
    let mut path = o
        .socket
        .clone()
        .unwrap_or_else(sockpass::default_socket_path);
    if let Some(st) = handed {
        return serve_handed_over(st, o, path, stop, up);
    }
    // Sockets kept in the systemd fd store by a previous run come after the
    // socket unit's fds; take them out before adopting the listener.
    let stored = match sockpass_broker::fdstore::take_stored_from_env() {
        Ok(v) => v,
        Err(e) => {
            sockpass_broker::log!(Error, "fd store: {e}");
            Vec::new()
        }
    };
    // Socket activation: the socket file is the activator's, never removed here.
    let activated = match sockpass::adopt_listen_socket(true, libc::SOCK_SEQPACKET) {
        Ok(Some(s)) => {
            path = PathBuf::from(std::ffi::OsStr::from_bytes(s.path()));
            Some(s.into_fd())
        }
        Ok(None) => None,
        Err(e) => {
            sockpass_broker::log!(Error, "socket activation: {e}");
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
            sockpass_broker::log!(Error, "cannot start: {e}");
            return 1;
        }
    };
    let log = o.cfg.log;
    let limits = o.cfg.limits.clone();
    let mut b = match Broker::new(listener, o.cfg) {
        Ok(b) => b,
        Err(e) => {
            sockpass_broker::log!(Error, "cannot start: {e}");
            if !is_activated {
                let _ = std::fs::remove_file(&path);
            }
            return 1;
        }
    };
    if log {
        sockpass_broker::log!(
            Info,
            "listening on {} (version {}, max {} connections, {} sockets, {} references per client)",
            path.display(),
            env!("CARGO_PKG_VERSION"),
            limits.max_connections,
            limits.max_sockets,
            limits.max_refs_per_client
        );
    }
    attach_fd_store(&mut b, &up);
    b.adopt_stored(stored);
    if let Err(e) = report_ready(o.ready_fd.take()) {
        sockpass_broker::log!(Error, "reporting readiness: {e}");
    }
    let code = serve(b, &stop, &up, is_activated, log);
    if !is_activated {
        let _ = std::fs::remove_file(&path);
    }
    code
}

/// The new image after an upgrade: carry on with the handed-over broker.
fn serve_handed_over(
    st: sockpass_broker::handoff::State,
    o: Opts,
    path: PathBuf,
    stop: OwnedFd,
    up: Upgrade,
) -> i32 {
    let log = o.cfg.log;
    let is_activated = st.activated;
    let mut b = match Broker::from_state(st, o.cfg) {
        Ok(b) => b,
        Err(e) => {
            sockpass_broker::log!(Error, "cannot rebuild the handed-over broker: {e}");
            return 1;
        }
    };
    attach_fd_store(&mut b, &up);
    b.finish_upgrade(Ok(()));
    let _ = report_ready(None);
    let code = serve(b, &stop, &up, is_activated, log);
    if !is_activated {
        let _ = std::fs::remove_file(&path);
    }
    code
}

/// Under systemd with an fd store (`$FDSTORE` > 0 next to `$NOTIFY_SOCKET`),
/// keep cached sockets there so a crash does not close them.
fn attach_fd_store(b: &mut Broker, up: &Upgrade) {
    let max = std::env::var("FDSTORE")
        .ok()
        .and_then(|v| v.parse::<u32>().ok());
    let (Some(addr), Some(1..)) = (&up.notify_socket, max) else {
        return;
    };
    match sockpass_broker::fdstore::FdStore::connect(addr) {
        Ok(st) => b.use_fd_store(st),
        Err(e) => sockpass_broker::log!(Warning, "fd store unusable: {e}"),
    }
}

/// What an upgrade executes: the binary we were started from and our
/// arguments, minus `--ready-fd` (that fd is used up).
struct Upgrade {
    exe: Option<PathBuf>,
    args: Vec<OsString>,
    notify_socket: Option<OsString>,
    /// Re-read before an upgrade, so a broken file stops it here.
    policy_file: Option<PathBuf>,
}

impl Upgrade {
    fn new(args: &[OsString]) -> Upgrade {
        let mut kept = Vec::new();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            if a == "--" {
                kept.push(a.clone());
                kept.extend(it.cloned());
                break;
            }
            if a == "--ready-fd" {
                it.next();
                continue;
            }
            if a.as_bytes().starts_with(b"--ready-fd=") {
                continue;
            }
            kept.push(a.clone());
        }
        Upgrade {
            exe: std::env::current_exe().ok(),
            args: kept,
            notify_socket: std::env::var_os("NOTIFY_SOCKET"),
            policy_file: None,
        }
    }
}

/// Run the loop; carry out upgrades (SIGHUP or UPGRADE) until a stop signal.
fn serve(mut b: Broker, stop: &OwnedFd, up: &Upgrade, activated: bool, log: bool) -> i32 {
    loop {
        if let Err(e) = b.run(Some(stop.as_fd())) {
            sockpass_broker::log!(Error, "event loop failed: {e}");
            b.shutdown();
            return 1;
        }
        if b.pending_upgrade().is_none() {
            let sig = which_signal(stop);
            if sig != "SIGHUP" {
                if log {
                    sockpass_broker::log!(Info, "{sig} received, shutting down");
                }
                b.shutdown();
                return 0;
            }
            b.request_upgrade();
        }
        b = match upgrade(b, up, activated, log) {
            Ok(b) => b,
            Err(code) => return code,
        };
    }
}

/// Check the new binary and the policy file, then re-exec with the state.
/// Returns only if the upgrade was refused or failed (the broker keeps
/// serving), or with an exit code if the broker could not be rebuilt.
fn upgrade(mut b: Broker, up: &Upgrade, activated: bool, log: bool) -> Result<Broker, i32> {
    let exe = b.pending_upgrade().flatten().or_else(|| up.exe.clone());
    let checked = match &exe {
        None => Err(sockpass::Error::bad_request(
            "no upgrade binary given and the running one is unknown",
        )),
        Some(exe) => {
            // Pre-flight: the exec has no way back, so the new binary must
            // first say it reads our handoff format.
            sockpass_broker::handoff::preflight(exe, sockpass_broker::handoff::PREFLIGHT_TIMEOUT)
                .and_then(|()| match &up.policy_file {
                    Some(f) => sockpass_broker::policy::Policy::load(f).map(|_| ()),
                    None => Ok(()),
                })
        }
    };
    let Some(exe) = exe.filter(|_| checked.is_ok()) else {
        b.finish_upgrade(checked);
        return Ok(b);
    };
    if log {
        sockpass_broker::log!(Info, "upgrading: executing {}", exe.display());
    }
    // The exec ends the logger thread: write what is queued first.
    sockpass_broker::log::flush(std::time::Duration::from_millis(500));
    if let Some(n) = &up.notify_socket {
        std::env::set_var("NOTIFY_SOCKET", n);
    }
    let (st, cfg) = b.into_state(activated);
    let (st, err) = sockpass_broker::handoff::exec(st, &exe, &up.args);
    std::env::remove_var("NOTIFY_SOCKET");
    match Broker::from_state(st, cfg) {
        Ok(mut b) => {
            b.finish_upgrade(Err(err));
            Ok(b)
        }
        Err(e) => {
            sockpass_broker::log!(
                Error,
                "upgrade failed ({err}) and the broker could not be rebuilt: {e}"
            );
            Err(1)
        }
    }
}

/// Tell whoever started us that the listener is up: sd_notify (when
/// `$NOTIFY_SOCKET` is set, as systemd services do, or `--notify`) and the
/// `--ready-fd`.
fn report_ready(fd: Option<OwnedFd>) -> sockpass::Result<()> {
    sockpass::notify_ready_from_env()?;
    // The variable is for us, not for anything we might start.
    std::env::remove_var("NOTIFY_SOCKET");
    if let Some(fd) = fd {
        sockpass::report_ready_fd(fd)?;
    }
    Ok(())
}
