//! `sockpass request SPEC...`: ask the broker for sockets, print one line per
//! socket (`PORT TOKEN SPEC`), and hold them until stdin closes or a signal
//! ends the process. The connection is the lease, so exiting releases them.
//! Useful from the shell, and as a real client process in tests.

use super::{flag, share_args, socket_arg, specs_arg};
use clap::{ArgMatches, Command};
use sockpass::SocketSpec;
use std::io::Write;

pub fn command() -> Command {
    Command::new("request")
        .about("Request sockets and hold them until stdin closes")
        .long_about(
            "Request sockets from the broker, print PORT TOKEN SPEC per socket, and hold them \
             until stdin closes (the connection is the lease).",
        )
        .arg(specs_arg(
            "A socket spec, e.g. udp:127.0.0.1:5353 or tcp:0.0.0.0:80?backlog=128 (docs/PROTOCOL.md)",
        ))
        .args(share_args())
        .arg(flag(
            "reserve",
            "Reserve the sockets for another process instead (as sockpass reserve)",
        ))
        .arg(
            flag(
                "per-worker",
                "A socket of its own in the port's SO_REUSEPORT group (SPEC has reuseport=1) \
                 instead of the shared one",
            )
            .conflicts_with("reserve"),
        )
        .arg(flag("no-hold", "Print and exit instead of holding the sockets"))
        .arg(socket_arg())
}

pub fn run(m: &ArgMatches) -> Result<i32, String> {
    let specs: Vec<&SocketSpec> = m.get_many("spec").unwrap_or_default().collect();
    let (share, app) = (super::share(m), super::app(m));
    let reserve = m.get_flag("reserve");
    let flags = if m.get_flag("per-worker") {
        sockpass::proto::REQ_PER_WORKER
    } else {
        0
    };
    let mut c = match super::connect_broker(m) {
        Ok(c) => c,
        Err(e) => return Ok(super::fail("request", &e)),
    };
    let mut held = Vec::new();
    let mut out = std::io::stdout().lock();
    if !reserve && flags == 0 {
        // One batch: one round trip, all or nothing.
        let batch: Vec<_> = specs.iter().map(|s| ((*s).clone(), share, app)).collect();
        match c.request_many(&batch) {
            Ok(gs) => {
                for (g, spec) in gs.into_iter().zip(&specs) {
                    let _ = writeln!(out, "{} {} {}", g.port, g.token, spec);
                    held.push(g);
                }
            }
            Err(e) => return Ok(super::fail("request", &e)),
        }
    }
    for spec in specs.into_iter().filter(|_| reserve || flags != 0) {
        if reserve {
            match c.reserve_socket(spec, share, app) {
                Ok(r) => {
                    let _ = writeln!(out, "{} {} {}", r.port, r.token, spec);
                }
                Err(e) => return Ok(super::fail(&format!("reserve {spec}"), &e)),
            }
            continue;
        }
        match c.request_with_flags(spec, share, app, flags) {
            Ok(g) => {
                let _ = writeln!(out, "{} {} {}", g.port, g.token, spec);
                held.push(g);
            }
            Err(e) => return Ok(super::fail(&format!("request {spec}"), &e)),
        }
    }
    let _ = out.flush();
    drop(out);
    if !m.get_flag("no-hold") {
        hold_watching_broker(&c, held.len());
    }
    Ok(super::exit::OK)
}

/// Hold until stdin reaches EOF (or the process is killed), and say so on
/// stderr if the broker goes away meanwhile (its connection hangs up): the
/// sockets stay ours, but nothing holds them in the broker any more.
fn hold_watching_broker(c: &sockpass::Client, held: usize) {
    use std::io::Read;
    let mut sink = [0u8; 256];
    let mut stdin = std::io::stdin();
    let mut fds = [
        libc::pollfd {
            fd: 0,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: c.as_raw_fd(),
            events: libc::POLLRDHUP,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: two valid pollfds.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if n < 0 {
            if sockpass::sys::errno() == libc::EINTR {
                continue;
            }
            break;
        }
        let gone = libc::POLLHUP | libc::POLLRDHUP | libc::POLLERR;
        if fds[1].revents & gone != 0 {
            let _ = writeln!(
                std::io::stderr(),
                "sockpass: the broker went away (its connection closed); still holding {held} socket(s), no longer shared through it"
            );
            // Watch stdin only from now on.
            fds[1].fd = -1;
        }
        if fds[0].revents != 0 && !matches!(stdin.read(&mut sink), Ok(n) if n > 0) {
            break;
        }
    }
}
