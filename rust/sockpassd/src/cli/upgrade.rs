//! `sockpass upgrade [--exe PATH] [--socket PATH]`: replace the broker's
//! program in place (same pid), keeping every socket, reference and client
//! connection. Allowed to root and to the broker's own uid.

use super::socket_arg;
use clap::{Arg, ArgMatches, Command};
use std::path::PathBuf;

pub fn command() -> Command {
    Command::new("upgrade")
        .about("Replace the broker's program in place, keeping every socket")
        .long_about(
            "Replace the broker's program in place (same pid; default: the binary it runs), \
             keeping every socket, reference and connection. Allowed to root and to the \
             broker's uid; SIGHUP to sockpassd does the same.",
        )
        .arg(
            Arg::new("exe")
                .long("exe")
                .value_name("PATH")
                .value_parser(clap::value_parser!(PathBuf))
                .help("The new broker binary (default: the one the broker runs)"),
        )
        .arg(socket_arg())
}

pub fn run(m: &ArgMatches) -> Result<i32, String> {
    // The broker resolves nothing relative to our directory.
    let exe = match m.get_one::<PathBuf>("exe") {
        Some(p) if !p.is_absolute() => Some(
            std::env::current_dir()
                .map_err(|e| format!("upgrade: {e}"))?
                .join(p),
        ),
        p => p.cloned(),
    };
    let mut c = match super::connect_broker(m) {
        Ok(c) => c,
        Err(e) => return Ok(super::fail("upgrade", &e)),
    };
    match c.upgrade(exe.as_deref()) {
        Ok(pid) => {
            println!("upgraded sockpassd (pid {pid})");
            Ok(super::exit::OK)
        }
        Err(e) => Ok(super::fail("upgrade", &e)),
    }
}
