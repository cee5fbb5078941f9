//! `sockpass serve-in PID PATH [--mode M] [--owner U[:G]] [--lazy] -- PROGRAM [ARGS...]`:
//! bind a unix stream socket inside PID's namespaces (PATH in its mount
//! namespace, `@name` in its network namespace) and run PROGRAM with it as
//! fd 3 (`LISTEN_FDS=1`, `LISTEN_PID`: socket activation).
//!
//! PROGRAM replaces this process (so `LISTEN_PID` is simply our pid). With
//! `--lazy` the socket is handed over unbound, with the notifier's read end
//! as fd 4 (`SOCKPASS_NOTIFIER_FD=4`); a detached binder process binds and
//! listens, then closes the notifier's write end.

use super::flag;
use clap::{Arg, ArgMatches, Command};
use sockpass::BindOptions;
use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;

pub fn command() -> Command {
    Command::new("serve-in")
        .about("Run a program with a unix socket bound inside another process's namespaces")
        .long_about(
            "Bind a unix stream socket at PATH inside PID's mount namespace (@NAME: abstract, \
             in its network namespace) and run PROGRAM with it as fd 3 (LISTEN_FDS=1, \
             LISTEN_FDNAMES=server). PROGRAM replaces this process.",
        )
        .arg(
            Arg::new("pid")
                .value_name("PID")
                .required(true)
                .value_parser(clap::value_parser!(i32).range(1..))
                .help("The process whose namespaces the socket is bound in"),
        )
        .arg(
            Arg::new("path")
                .value_name("PATH")
                .required(true)
                .value_parser(clap::value_parser!(OsString))
                .help("The socket's path there, or @NAME for an abstract name"),
        )
        .arg(super::program_arg("The program to run, and its arguments"))
        .arg(
            Arg::new("mode")
                .long("mode")
                .value_name("MODE")
                .value_parser(parse_mode)
                .help("The socket file's octal mode"),
        )
        .arg(
            Arg::new("owner")
                .long("owner")
                .value_name("USER[:GROUP]")
                .value_parser(|o: &str| BindOptions::parse_owner(o).map_err(|e| e.to_string()))
                .help("The socket file's owner"),
        )
        .arg(flag(
            "lazy",
            "Hand the socket over unbound, with a notifier as fd 4 (SOCKPASS_NOTIFIER_FD) that \
             fires once it listens",
        ))
        .after_help(super::exit::HELP)
}

/// An octal file mode (`0660`, `0o660`).
pub fn parse_mode(m: &str) -> Result<u32, String> {
    u32::from_str_radix(m.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| format!("{m:?} is not an octal mode"))
}

struct Opts {
    pid: i32,
    path: Vec<u8>,
    bind: BindOptions,
    lazy: bool,
    program: Vec<OsString>,
}

fn parse(m: &ArgMatches) -> Opts {
    let mut bind = BindOptions::default();
    if let Some(&mode) = m.get_one::<u32>("mode") {
        bind.mode = mode;
    }
    bind.owner = m.get_one("owner").copied();
    let path = m.get_one::<OsString>("path").expect("required");
    // `@name` is an abstract name, as NOTIFY_SOCKET and ss(8) spell it.
    let path = match path.as_bytes() {
        [b'@', name @ ..] => [&[0u8][..], name].concat(),
        p => p.to_vec(),
    };
    Opts {
        pid: *m.get_one("pid").expect("required"),
        path,
        bind,
        lazy: m.get_flag("lazy"),
        program: m.get_many("program").expect("required").cloned().collect(),
    }
}

pub fn run(m: &ArgMatches) -> Result<i32, String> {
    let o = parse(m);
    let shown = String::from_utf8_lossy(&o.path).replace('\0', "@");
    let what = format!("serve-in {} {shown}", o.pid);
    if !o.lazy {
        let sock = match sockpass::bind_in_namespace(Some(o.pid), &o.path, &o.bind) {
            Ok(s) => s,
            Err(e) => return Ok(super::fail(&what, &e)),
        };
        return Ok(exec(&o.program, &[sock], &[]));
    }
    let mut lazy = match sockpass::prepare_lazy(Some(o.pid), o.path.first() == Some(&0)) {
        Ok(l) => l,
        Err(e) => return Ok(super::fail(&what, &e)),
    };
    let sock = lazy.daemon_socket.take();
    let notifier = lazy.daemon_notifier.take();
    if let Err(e) = start_binder(lazy, &o) {
        return Ok(super::fail(&what, &e));
    }
    let fds: Vec<OwnedFd> = sock.into_iter().chain(notifier).collect();
    Ok(exec(
        &o.program,
        &fds,
        &[("SOCKPASS_NOTIFIER_FD", "4".into())],
    ))
}

/// Fork a detached binder (a grandchild, so PROGRAM never has to reap it)
/// that binds, listens and closes the notifier, then exits. This process is
/// single-threaded (checked), so the binder may run ordinary code.
fn start_binder(lazy: sockpass::LazyServer, o: &Opts) -> sockpass::Result<()> {
    let threads = std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count());
    if threads != 1 {
        return Err(sockpass::Error::new(
            sockpass::Kind::Os,
            format!("cannot fork the binder: {threads} threads running"),
        ));
    }
    // SAFETY: single-threaded (checked above).
    let a = unsafe { libc::fork() };
    if a < 0 {
        return Err(sockpass::Error::last_os("fork"));
    }
    if a == 0 {
        // SAFETY: in the first child: fork the binder and leave at once.
        let b = unsafe { libc::fork() };
        if b != 0 {
            unsafe { libc::_exit(i32::from(b < 0)) };
        }
        let code = match lazy.bind_and_notify(Some(o.pid), &o.path, &o.bind) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("sockpass: serve-in: lazy bind failed: {e}");
                1
            }
        };
        // SAFETY: leave without running the parent's exit handlers twice.
        unsafe { libc::_exit(code) };
    }
    drop(lazy);
    let mut st = 0;
    loop {
        // SAFETY: reaping our own first child.
        let r = unsafe { libc::waitpid(a, &mut st, 0) };
        if r == a || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            break;
        }
    }
    if !libc::WIFEXITED(st) || libc::WEXITSTATUS(st) != 0 {
        return Err(sockpass::Error::new(
            sockpass::Kind::ChildFailed,
            "the binder could not be started",
        ));
    }
    Ok(())
}

/// Replace this process by `program` with `fds` as 3, 4, ... and the
/// socket-activation variables. Returns only on failure (127 when the
/// program was not found, 126 when it could not be executed).
fn exec(program: &[OsString], fds: &[OwnedFd], env: &[(&str, String)]) -> i32 {
    // Move the fds above the target range first so no dup2 clobbers one
    // still to be moved.
    let high: Vec<OwnedFd> = match fds
        .iter()
        .map(|f| {
            // SAFETY: F_DUPFD_CLOEXEC on our fd; the result is checked.
            let r = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10) };
            if r < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                // SAFETY: r is a new fd we own.
                Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(r) })
            }
        })
        .collect::<std::io::Result<_>>()
    {
        Ok(h) => h,
        Err(e) => {
            eprintln!("sockpass: serve-in: dup: {e}");
            return super::exit::FAILURE;
        }
    };
    let raw: Vec<RawFd> = high.iter().map(|f| f.as_raw_fd()).collect();
    let mut cmd = std::process::Command::new(&program[0]);
    cmd.args(&program[1..])
        .env("LISTEN_FDS", "1")
        .env("LISTEN_PID", std::process::id().to_string())
        .env("LISTEN_FDNAMES", "server");
    for (k, v) in env {
        cmd.env(k, v);
    }
    // SAFETY: only dup2 (async-signal-safe) on fds prepared above.
    unsafe {
        cmd.pre_exec(move || {
            for (i, fd) in raw.iter().enumerate() {
                // dup2 to a different number clears CLOEXEC on the copy.
                if libc::dup2(*fd, 3 + i as RawFd) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let e = cmd.exec();
    eprintln!(
        "sockpass: serve-in: cannot run {}: {e}",
        program[0].to_string_lossy()
    );
    super::exit::for_exec_errno(e.raw_os_error().unwrap_or(libc::ENOENT))
}
