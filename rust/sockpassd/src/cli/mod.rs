//! `sockpass`: the command-line tool. One module a subcommand.

use crate::args::Args;
use std::ffi::OsString;

pub mod json;
pub mod pickup;
pub mod request;
pub mod reserve;
pub mod run;
pub mod serve_in;
pub mod status;
pub mod upgrade;

const USAGE: &str = "\
usage: sockpass COMMAND [options]

commands:
  status [--json] [--socket PATH]   list the broker's sockets, holders and references
  request [--share MODE] [--app NAME] [--reserve | --per-worker] [--no-hold] [--socket PATH] SPEC...
                                    request sockets, print PORT TOKEN SPEC per socket, and
                                    hold them until stdin closes (the connection is the lease);
                                    --per-worker: a socket of its own in the port's reuseport
                                    group (SPEC has reuseport=1) instead of the shared one
  reserve [--share MODE] [--app NAME] [--socket PATH] SPEC...
                                    reserve sockets for another process: print PORT TOKEN SPEC
                                    per socket and exit (the broker holds each until it is
                                    picked up or expires)
  pickup [--no-hold] [--socket PATH | --fd N] TOKEN...
                                    collect reserved sockets, print PORT TOKEN, hold them
                                    until stdin closes; --fd N: over a broker connection
                                    handed in on fd N (no path needed)
  serve-in PID PATH [--mode M] [--owner U[:G]] [--lazy] -- PROGRAM [ARGS...]
                                    bind a unix socket at PATH inside PID's mount namespace
                                    (@NAME: abstract, in its network namespace) and run
                                    PROGRAM with it as fd 3 (LISTEN_FDS=1); --lazy hands it
                                    over unbound with a notifier as fd 4
                                    (SOCKPASS_NOTIFIER_FD) that fires once it listens
  upgrade [--exe PATH] [--socket PATH]
                                    replace the broker's program in place (same pid; default:
                                    the binary it runs), keeping every socket, reference and
                                    connection (root or the broker's uid; SIGHUP does the same)
  run [-l ADDRESS] [--datagram] [--request SPEC [--share MODE] [--app NAME]] [--fd N[:NAME]]
      [--empty] [--inherit] [--fdname NAME[:NAME...]] [--start N] [-E VAR[=VAL]] [-U VAR]
      [--clear-env] [--join PID [--ns LIST]] [--wait-ready notify|fd:N|pipe
      [--ready-timeout SECS]] -- PROGRAM [ARGS...]
                                    start PROGRAM with sockets by systemd socket activation
                                    (LISTEN_FDS/LISTEN_PID/LISTEN_FDNAMES, from fd 3 or --start;
                                    LISTEN_FDS_FIRST_FD when not 3). Slots, in order: -l makes
                                    a socket (a path, PORT, HOST:PORT, tcp:/udp: spec),
                                    --request gets one from the broker (held while PROGRAM
                                    runs), --fd passes an inherited fd N, --empty leaves the
                                    slot's number closed (counted in LISTEN_FDS, named empty;
                                    libsystemd's sd_listen_fds refuses a set with a hole),
                                    --inherit passes whatever run inherited at the slot's number
                                    (nothing: closed). --fdname as systemd-socket-activate: one
                                    name names every slot, a count mismatch only warns, an
                                    --fd N:NAME keeps its own. -E sets (VAR alone: run's own
                                    value), -U/--unsetenv unsets, --clear-env starts empty;
                                    --join enters PID's namespaces (--ns net,mnt,...);
                                    --wait-ready prints PROGRAM's pid once it reports ready;
                                    exits with PROGRAM's status, forwards SIGTERM/SIGINT
                                    (also while waiting for readiness)
  help                              this text
  version                           print the version

The broker socket is --socket PATH, else $SOCKPASS_SOCKET, else the default
path sockpassd uses.
";

pub fn main(args: Vec<OsString>) -> i32 {
    let mut a = Args::new(args);
    let cmd = match a.next_raw() {
        Some(c) => c.to_string_lossy().into_owned(),
        None => {
            eprint!("{USAGE}");
            return 2;
        }
    };
    let res = match cmd.as_str() {
        "status" => status::run(a),
        "request" => request::run(a),
        "reserve" => reserve::run(a),
        "run" => run::run(a),
        "pickup" => pickup::run(a),
        "serve-in" => serve_in::run(a),
        "upgrade" => upgrade::run(a),
        "help" | "-h" | "--help" => {
            print!("{USAGE}");
            Ok(0)
        }
        "version" | "-V" | "--version" => {
            println!("sockpass {}", env!("CARGO_PKG_VERSION"));
            Ok(0)
        }
        other => Err(format!("unknown command {other:?} (see sockpass help)")),
    };
    match res {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sockpass: {e}");
            2
        }
    }
}

/// Report a library error and pick the exit code: 1 for failures of the
/// operation, so scripts can tell them from usage errors (2).
pub fn fail(what: &str, e: &sockpass::Error) -> i32 {
    eprintln!("sockpass: {what}: {e}");
    1
}
