//! `sockpassd`: parse options, bind the listener, run the broker until
//! SIGTERM/SIGINT.

use clap::{Arg, ArgAction, ArgMatches, Command};
use sockpass_broker::broker::{self, Broker, Config, LIMIT_FLAGS};
use std::ffi::OsString;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// The `sockpassd` command line.
pub fn command() -> Command {
    Command::new("sockpassd")
        .version(env!("CARGO_PKG_VERSION"))
        .about("The sockpass socket broker")
        .long_about(
            "The sockpass socket broker. Creates bound sockets on request (as its policy \
             allows), caches and shares them, and hands them over by fd passing.",
        )
        .arg(
            Arg::new("socket")
                .long("socket")
                .value_name("PATH")
                .value_parser(clap::value_parser!(PathBuf))
                .help(
                    "Listen here (default: $SOCKPASS_SOCKET, else /run/sockpass/sockpassd.sock \
                     as root, $XDG_RUNTIME_DIR/sockpass/sockpassd.sock otherwise)",
                ),
        )
        .arg(
            Arg::new("socket-mode")
                .long("socket-mode")
                .value_name("MODE")
                .value_parser(crate::cli::serve_in::parse_mode)
                .help("Octal mode of the socket file (default 0666; the policy decides what each client may ask for)"),
        )
        .arg(
            Arg::new("socket-group")
                .long("socket-group")
                .value_name("GROUP")
                .help("Group (name or gid) of the socket file"),
        )
        .arg(
            Arg::new("policy")
                .long("policy")
                .value_name("FILE")
                .value_parser(clap::value_parser!(PathBuf))
                .help(format!(
                    "Policy file (docs/POLICY.md); default: {DEFAULT_POLICY} when it exists (a \
                     path in $SOCKPASSD_DEFAULT_POLICY instead, if set; empty: none), else the \
                     built-in policy (root anything, others ports 0 and 1024-65535)"
                )),
        )
        // The limits' flags come from their table, as their help lines.
        .args(LIMIT_FLAGS.iter().map(|f| {
            let name = f.flag.trim_start_matches("--");
            Arg::new(name)
                .long(name)
                .value_name(f.value)
                .help(f.help)
        }))
        .arg(
            Arg::new("notify")
                .long("notify")
                .action(ArgAction::SetTrue)
                .help(
                    "Send READY=1 to $NOTIFY_SOCKET once listening (an error if it is unset; \
                     when set, it is used anyway)",
                ),
        )
        .arg(
            Arg::new("fd-store")
                .long("fd-store")
                .action(ArgAction::SetTrue)
                .help(
                    "Keep cached sockets in systemd's fd store ($NOTIFY_SOCKET; the unit sets \
                     FileDescriptorStoreMax=, systemd 219 or later), whether or not $FDSTORE \
                     is set (systemd 254 and later set it)",
                ),
        )
        .arg(
            Arg::new("ready-fd")
                .long("ready-fd")
                .value_name("N")
                .value_parser(clap::value_parser!(i32).range(0..))
                .help(
                    "Write a newline to fd N and close it once listening (s6 \
                     notification-fd; closing also fires a pipe notifier)",
                ),
        )
        .arg(
            Arg::new("quiet")
                .short('q')
                .long("quiet")
                .action(ArgAction::SetTrue)
                .help("Log nothing but fatal errors"),
        )
        .arg(
            Arg::new("no-io-uring")
                .long("no-io-uring")
                .action(ArgAction::SetTrue)
                .help("Send each reply with its own sendmsg, not a loop turn's replies together by io_uring"),
        )
        .arg(
            Arg::new("handoff-version")
                .long("handoff-version")
                .action(ArgAction::SetTrue)
                .exclusive(true)
                .help("Print the upgrade handoff format this binary reads"),
        )
        .arg(
            Arg::new("handoff-check")
                .long("handoff-check")
                .action(ArgAction::SetTrue)
                .help("(used by an upgrade) Restore the handed-over state without serving, print the format, exit"),
        )
        .after_help(
            "Upgrades:\n  \
             SIGHUP (or `sockpass upgrade`) re-executes the binary in place (same pid),\n  \
             handing over every socket, reference, reservation and client connection.\n  \
             The new binary must be a root-owned file that group and others cannot\n  \
             write; it is opened once and run by fd. It must answer --handoff-version\n  \
             with this broker's handoff format, then restore the real state in a child\n  \
             (--handoff-check), each within 5 s, or the upgrade is refused and nothing\n  \
             changes. A new image that fails, crashes or hangs (5 s) before serving\n  \
             executes the old one again.\n\n\
             Socket activation:\n  \
             With LISTEN_PID=<our pid> and LISTEN_FDS=1, fd 3 (a listening unix\n  \
             seqpacket socket) is used instead of binding --socket.\n\n\
             Environment:\n  \
             SOCKPASS_SOCKET  the socket path when --socket is not given\n  \
             NOTIFY_SOCKET    where READY=1 and the fd store's messages go (systemd)\n  \
             FDSTORE          > 0: systemd (254 and later) keeps fds for us, as --fd-store\n  \
             LISTEN_PID, LISTEN_FDS  socket activation, above\n\n\
             Exit status:\n  \
             0    stopped by SIGTERM or SIGINT (or --help, --version)\n  \
             1    could not start, or failed while running\n  \
             2    bad command line",
        )
}

/// The policy file read when `--policy` is not given and it exists; a
/// packager may build with another (`SOCKPASS_DEFAULT_POLICY`, as meson's
/// `-Ddefault_policy` passes it).
const DEFAULT_POLICY: &str = match option_env!("SOCKPASS_DEFAULT_POLICY") {
    Some(p) => p,
    None => "/etc/sockpass/policy.conf",
};

struct Opts {
    socket: Option<PathBuf>,
    cfg: Config,
    notify: bool,
    fd_store: bool,
    ready_fd: Option<OwnedFd>,
    policy_file: Option<PathBuf>,
    /// `--handoff-check`: restore the handed-over state, do not serve.
    check: bool,
}

fn parse(m: &ArgMatches) -> Result<Opts, String> {
    let mut o = Opts {
        socket: m.get_one::<PathBuf>("socket").cloned(),
        cfg: Config::default(),
        notify: m.get_flag("notify"),
        fd_store: m.get_flag("fd-store"),
        ready_fd: None,
        policy_file: None,
        check: m.get_flag("handoff-check"),
    };
    if let Some(&mode) = m.get_one::<u32>("socket-mode") {
        o.cfg.socket_mode = mode;
    }
    if let Some(g) = m.get_one::<String>("socket-group") {
        o.cfg.socket_group =
            Some(sockpass_broker::policy::group_id(g).map_err(|e| format!("--socket-group: {e}"))?);
    }
    if let Some(f) = m.get_one::<PathBuf>("policy") {
        o.cfg.policy = sockpass_broker::policy::Policy::load(f)
            .map_err(|e| format!("bad policy file {}: {e}", f.display()))?;
        o.policy_file = Some(f.clone());
    }
    for f in LIMIT_FLAGS {
        if let Some(v) = m.get_one::<String>(f.flag.trim_start_matches("--")) {
            o.cfg.limits.set_flag(f.flag, v).unwrap_or(Ok(()))?;
        }
    }
    if let Some(&n) = m.get_one::<i32>("ready-fd") {
        o.ready_fd = Some(sockpass::inherited_fd(n).map_err(|e| format!("--ready-fd: {e}"))?);
    }
    if m.get_flag("quiet") {
        o.cfg.log = false;
    }
    if m.get_flag("no-io-uring") {
        o.cfg.io_uring = false;
    }
    if o.policy_file.is_none() {
        if let Some(f) = default_policy_file() {
            o.cfg.policy = sockpass_broker::policy::Policy::load(&f)
                .map_err(|e| format!("bad policy file {}: {e}", f.display()))?;
            o.policy_file = Some(f);
        }
    }
    Ok(o)
}

/// The default policy file, if there is one: `$SOCKPASSD_DEFAULT_POLICY`
/// (tests point it elsewhere; empty means none) or [`DEFAULT_POLICY`].
fn default_policy_file() -> Option<PathBuf> {
    let f = match std::env::var_os("SOCKPASSD_DEFAULT_POLICY") {
        Some(v) if v.is_empty() => return None,
        Some(v) => PathBuf::from(v),
        None => PathBuf::from(DEFAULT_POLICY),
    };
    // A file that is not there means the built-in policy; anything else
    // (unreadable, malformed) is the operator's to fix, so it stops us.
    f.symlink_metadata().is_ok().then_some(f)
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
    // SAFETY: all-zero is a valid signalfd_siginfo.
    let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
    // SAFETY: reading one siginfo into a properly sized buffer.
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
        Err(e) => return give_up(format!("cannot take over from the previous image: {e}"), 1),
    };
    let mut up = Upgrade::new(&args);
    let m = match command().try_get_matches_from(std::iter::once("sockpassd".into()).chain(args)) {
        Ok(m) => m,
        // Help and version print to stdout and exit 0; a usage error is 2,
        // and in a new image it goes back to the old one (give_up).
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return e.exit_code();
        }
        Err(e) => {
            let msg = e.render().to_string();
            let msg = msg.trim_end().trim_start_matches("error: ");
            return give_up(msg.to_string(), e.exit_code());
        }
    };
    if m.get_flag("handoff-version") {
        println!("{}", sockpass_broker::handoff::FORMAT);
        return 0;
    }
    let mut o = match parse(&m) {
        Ok(o) => o,
        Err(e) => return give_up(format!("{e}\n(see sockpassd --help)"), 2),
    };
    up.policy_file = o.policy_file.clone();
    // From here on lines go through the broker's log (never blocks, never
    // panics on a closed stderr).
    sockpass_broker::log::set_quiet(!o.cfg.log);
    up.fd_store = o.fd_store;
    let nofile = broker::raise_fd_limit();
    o.cfg.limits.fit_fd_limit(nofile);
    if o.check {
        return check_handed_over(handed, o);
    }
    let stop = match stop_signals() {
        Ok(s) => s,
        Err(e) => return give_up(format!("cannot set up signal handling: {e}"), 1),
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

/// Say why we stop, and, in a new image that has not served yet, execute
/// the old image again with the handed-over state (this returns only when
/// there is no way back).
fn give_up(msg: String, code: i32) -> i32 {
    eprintln!("sockpassd: {msg}");
    sockpass_broker::fallback::fall_back(&msg);
    code
}

/// `--handoff-check` (the upgrade's probe, a child of the old image):
/// rebuild the broker from the state exactly as [`serve_handed_over`]
/// would, then exit without serving or closing anything in an orderly way:
/// every socket stays the old image's.
fn check_handed_over(st: Option<sockpass_broker::handoff::State>, o: Opts) -> i32 {
    let Some(st) = st else {
        eprintln!("sockpassd: --handoff-check: no handed-over state (it is for upgrades)");
        return 2;
    };
    match Broker::from_state(st, o.cfg) {
        Ok(b) => {
            std::mem::forget(b);
            println!("{}", sockpass_broker::handoff::FORMAT);
            std::process::exit(0)
        }
        Err(e) => {
            eprintln!("sockpassd: cannot rebuild the handed-over broker: {e}");
            std::process::exit(1)
        }
    }
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
            // Some handed-over fds are closed by now: no way back.
            sockpass_broker::fallback::disarm();
            sockpass_broker::log!(Error, "cannot rebuild the handed-over broker: {e}");
            return 1;
        }
    };
    // Serving from here: a failure is no longer the upgrade's.
    sockpass_broker::fallback::disarm();
    attach_fd_store(&mut b, &up);
    // Taken back after a failed upgrade: the requester learns why.
    b.finish_upgrade(match sockpass_broker::fallback::failure_from_env() {
        None => Ok(()),
        Some(why) => Err(sockpass::Error::with_errno(
            sockpass::Kind::BadRequest,
            libc::ENOEXEC,
            format!("upgrade failed, the previous binary serves again: {why}"),
        )),
    });
    let _ = report_ready(None);
    let code = serve(b, &stop, &up, is_activated, log);
    if !is_activated {
        let _ = std::fs::remove_file(&path);
    }
    code
}

/// Under systemd with an fd store, keep cached sockets there so a crash
/// does not close them: when asked (`--fd-store`, which the unit passes with
/// `FileDescriptorStoreMax=`: systemd 219 and later keep the fds) or when
/// systemd says the store is there (`$FDSTORE` > 0, set since systemd 254).
fn attach_fd_store(b: &mut Broker, up: &Upgrade) {
    let max = std::env::var("FDSTORE")
        .ok()
        .and_then(|v| v.parse::<u32>().ok());
    if !up.fd_store && !matches!(max, Some(1..)) {
        return;
    }
    let Some(addr) = &up.notify_socket else {
        if up.fd_store {
            eprintln!("sockpassd: --fd-store: $NOTIFY_SOCKET is not set; no fd store is used");
        }
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
    /// The running image, opened at start: what a failed new image executes
    /// again (the file at `exe` may have been replaced since).
    running: Option<sockpass_broker::exe::Exe>,
    args: Vec<OsString>,
    notify_socket: Option<OsString>,
    /// Re-read before an upgrade, so a broken file stops it here.
    policy_file: Option<PathBuf>,
    /// `--fd-store`: push cached sockets to systemd's fd store.
    fd_store: bool,
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
            running: sockpass_broker::exe::Exe::running().ok(),
            args: kept,
            notify_socket: std::env::var_os("NOTIFY_SOCKET"),
            policy_file: None,
            fd_store: false,
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
    // systemd shows the service reloading until READY=1: the new image's,
    // or ours below when the upgrade does not happen.
    notify_service(
        up,
        &format!("RELOADING=1\nMONOTONIC_USEC={}\n", monotonic_usec()),
    );
    let exe = b.pending_upgrade().flatten().or_else(|| up.exe.clone());
    // Opened once: the checks and the exec run this same file.
    let checked = match &exe {
        None => Err(sockpass::Error::bad_request(
            "no upgrade binary given and the running one is unknown",
        )),
        Some(exe) => sockpass_broker::exe::Exe::open_target(exe).and_then(|target| {
            // Pre-flight: the new binary must say it reads our handoff format.
            target.preflight(sockpass_broker::handoff::PREFLIGHT_TIMEOUT)?;
            if let Some(f) = &up.policy_file {
                sockpass_broker::policy::Policy::load(f)?;
            }
            Ok(target)
        }),
    };
    let target = match checked {
        Ok(t) => t,
        Err(e) => {
            b.finish_upgrade(Err(e));
            notify_service(up, "READY=1\n");
            return Ok(b);
        }
    };
    if log {
        sockpass_broker::log!(Info, "upgrading: executing {}", target.path().display());
    }
    // The exec ends the logger thread: write what is queued first.
    sockpass_broker::log::flush(std::time::Duration::from_millis(500));
    if let Some(n) = &up.notify_socket {
        std::env::set_var("NOTIFY_SOCKET", n);
    }
    let (st, cfg) = b.into_state(activated);
    let (st, err) = sockpass_broker::handoff::exec(st, &target, up.running.as_ref(), &up.args);
    std::env::remove_var("NOTIFY_SOCKET");
    match Broker::from_state(st, cfg) {
        Ok(mut b) => {
            b.finish_upgrade(Err(err));
            notify_service(up, "READY=1\n");
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

/// An sd_notify message to the service manager that started us, if any
/// (best effort: the broker serves on whatever it answers).
fn notify_service(up: &Upgrade, msg: &str) {
    if let Some(n) = &up.notify_socket {
        if let Err(e) = sockpass::send_notify(n, msg.as_bytes()) {
            eprintln!("sockpassd: notify socket: {e}");
        }
    }
}

/// CLOCK_MONOTONIC in microseconds, as RELOADING=1's MONOTONIC_USEC wants.
fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime fills a timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
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
