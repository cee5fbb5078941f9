//! `sockpass pickup TOKEN...`: collect reserved sockets by token, print
//! `PORT TOKEN` per socket, and hold them until stdin closes (the connection
//! is the lease), like `sockpass request`. `--fd N` uses a broker connection
//! handed in on fd N instead of connecting to a path.

use super::{flag, hold_until_stdin_closes, socket_arg};
use clap::{Arg, ArgMatches, Command};
use sockpass::Client;
use sockpass::Token;
use std::io::Write;

pub fn command() -> Command {
    Command::new("pickup")
        .about("Collect reserved sockets and hold them until stdin closes")
        .long_about(
            "Collect reserved sockets by token (from sockpass reserve), print PORT TOKEN per \
             socket, and hold them until stdin closes (the connection is the lease).",
        )
        .arg(
            Arg::new("token")
                .value_name("TOKEN")
                .num_args(1..)
                .required(true)
                .value_parser(|s: &str| s.parse::<Token>().map_err(|e| e.to_string()))
                .help("A token from sockpass reserve"),
        )
        .arg(flag(
            "no-hold",
            "Print and exit instead of holding the sockets",
        ))
        .arg(socket_arg().conflicts_with("fd"))
        .arg(
            Arg::new("fd")
                .long("fd")
                .value_name("N")
                .value_parser(clap::value_parser!(i32).range(0..))
                .help(
                    "Talk over a broker connection handed in on fd N (from a manager; no path \
                     needed)",
                ),
        )
}

pub fn run(m: &ArgMatches) -> Result<i32, String> {
    // A broker connection handed in by a manager (a container that cannot
    // see the broker's path).
    let c = match m.get_one::<i32>("fd") {
        Some(&n) => sockpass::inherited_fd(n).and_then(Client::from_fd),
        None => super::connect_broker(m),
    };
    let mut c = match c {
        Ok(c) => c,
        Err(e) => return Ok(super::fail("pickup", &e)),
    };
    let mut held = Vec::new();
    let mut out = std::io::stdout().lock();
    for t in m.get_many::<Token>("token").unwrap_or_default() {
        match c.pickup(t) {
            Ok(g) => {
                let _ = writeln!(out, "{} {}", g.port, g.token);
                held.push(g);
            }
            Err(e) => return Ok(super::fail("pickup", &e)),
        }
    }
    let _ = out.flush();
    drop(out);
    if !m.get_flag("no-hold") {
        hold_until_stdin_closes();
    }
    Ok(super::exit::OK)
}
