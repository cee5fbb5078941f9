//! Exit codes, the same in every command, so scripts can tell a refusal from
//! a missing broker from a usage error. The two broker ones are sysexits(3)'s.

use sockpass::Kind;

pub const OK: i32 = 0;
/// The operation failed (any other error).
pub const FAILURE: i32 = 1;
/// Bad command line (clap's code too).
pub const USAGE: i32 = 2;
/// The broker could not be reached (EX_UNAVAILABLE).
pub const UNAVAILABLE: i32 = 69;
/// Refused by the broker's policy or by the kernel's permission check
/// (EX_NOPERM).
pub const DENIED: i32 = 77;
/// `run`, `serve-in`: the program exists but cannot be executed (as shells).
pub const CANNOT_EXECUTE: i32 = 126;
/// `run`, `serve-in`: the program was not found (as shells).
pub const NOT_FOUND: i32 = 127;

/// The exit-status text of `--help` and of the man pages.
pub const HELP: &str = "\
Exit status:
  0    success (run: the program's own status, 128+N if it died of signal N)
  1    the operation failed
  2    bad command line
  69   the broker is unavailable (no broker at the socket path, or it went away)
  77   denied: the broker's policy (or the kernel) refused
  126  run, serve-in: the program cannot be executed
  127  run, serve-in: the program was not found";

/// The code for a library error.
pub fn for_error(e: &sockpass::Error) -> i32 {
    match e.kind() {
        Kind::NotAllowed => DENIED,
        Kind::BrokerUnavailable => UNAVAILABLE,
        _ => FAILURE,
    }
}

/// The code for a failed `execve` with this errno, as shells use them.
pub fn for_exec_errno(errno: i32) -> i32 {
    match errno {
        libc::ENOENT | libc::ENOTDIR | libc::ENAMETOOLONG | libc::ELOOP => NOT_FOUND,
        _ => CANNOT_EXECUTE,
    }
}
