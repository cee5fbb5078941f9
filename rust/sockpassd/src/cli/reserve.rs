//! `sockpass reserve SPEC...`: reserve sockets for another process to pick up
//! (deferred pick-up). Prints `PORT TOKEN SPEC` per reservation and exits:
//! the broker holds each reservation until it is picked up or expires
//! (`sockpassd --reservation-ttl`, default 30 s).

use super::{share_args, socket_arg, specs_arg};
use clap::{ArgMatches, Command};
use sockpass::SocketSpec;
use std::io::Write;

pub fn command() -> Command {
    Command::new("reserve")
        .about("Reserve sockets for another process to pick up")
        .long_about(
            "Reserve sockets for another process: print PORT TOKEN SPEC per socket and exit. \
             The broker holds each until it is picked up (sockpass pickup TOKEN) or expires \
             (sockpassd --reservation-ttl).",
        )
        .arg(specs_arg(
            "A socket spec, e.g. tcp:0.0.0.0:80?backlog=128 (docs/PROTOCOL.md)",
        ))
        .args(share_args())
        .arg(socket_arg())
}

pub fn run(m: &ArgMatches) -> Result<i32, String> {
    let mut c = match super::connect_broker(m) {
        Ok(c) => c,
        Err(e) => return Ok(super::fail("reserve", &e)),
    };
    let mut out = std::io::stdout().lock();
    for spec in m.get_many::<SocketSpec>("spec").unwrap_or_default() {
        match c.reserve_socket(spec, super::share(m), super::app(m)) {
            Ok(r) => {
                let _ = writeln!(out, "{} {} {}", r.port, r.token, spec);
            }
            Err(e) => return Ok(super::fail(&format!("reserve {spec}"), &e)),
        }
    }
    let _ = out.flush();
    Ok(super::exit::OK)
}
