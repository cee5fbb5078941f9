//! `sockpass run --accept`: accept connections on one listening socket and
//! start the program for each, with the connection as its one socket
//! (`LISTEN_FDS=1`, named `connection` unless named otherwise) or, with
//! `--inetd`, as its stdin and stdout; as `systemd-socket-activate --accept`.
//! SIGTERM and SIGINT stop accepting and are forwarded to the running
//! children, which are waited for. SIGHUP, SIGQUIT, SIGUSR1 and SIGWINCH go
//! to every running child, as `run` forwards them to its one program.
//! SIGUSR2, `run`'s restart, has nothing to restart here (each connection
//! already starts PROGRAM afresh): it is logged and ignored rather than
//! left to its default action, which would end `run` and every connection.

use super::run::{as_inetd, read_signal, spawn_failed, take_signals, unblock, Plan};
use sockpass::Child;
use sockpass::Client;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// How often finished children are reaped while no connection comes.
const REAP_EVERY_MS: i32 = 200;

pub fn serve(
    listener: OwnedFd,
    name: Option<String>,
    inetd: bool,
    plan: &Plan,
    client: Option<Client>,
) -> i32 {
    let listening = sockpass::sys::getsockopt_int(&listener, libc::SOL_SOCKET, libc::SO_ACCEPTCONN);
    if listening != Ok(1) {
        eprintln!("sockpass: run: --accept needs a listening stream socket");
        return super::exit::FAILURE;
    }
    let (set, sfd) = take_signals();
    let sfd = match sfd {
        Ok(s) => s,
        Err(e) => {
            unblock(&set);
            eprintln!("sockpass: run: signalfd: {e}");
            return super::exit::FAILURE;
        }
    };
    let mut children: Vec<Child> = Vec::new();
    let mut code = super::exit::OK;
    loop {
        let mut pfd = [
            libc::pollfd {
                fd: listener.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: sfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: poll on two pollfds we own.
        let r = unsafe { libc::poll(pfd.as_mut_ptr(), 2, REAP_EVERY_MS) };
        children.retain_mut(|c| matches!(c.wait_timeout(Duration::ZERO), Ok(None)));
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            eprintln!("sockpass: run: poll: {e}");
            code = super::exit::FAILURE;
            break;
        }
        let mut stop = false;
        if pfd[1].revents != 0 {
            while let Some(sig) = read_signal(&sfd) {
                if sig == libc::SIGUSR2 {
                    eprintln!(
                        "sockpass: run: SIGUSR2 ignored: with --accept each connection \
                         already starts PROGRAM anew"
                    );
                    continue;
                }
                for c in &children {
                    let _ = c.kill(sig);
                }
                stop |= sig == libc::SIGTERM || sig == libc::SIGINT;
            }
        }
        if stop {
            break;
        }
        if pfd[0].revents & (libc::POLLERR | libc::POLLNVAL) != 0 {
            eprintln!("sockpass: run: the listening socket failed");
            code = super::exit::FAILURE;
            break;
        }
        if pfd[0].revents & libc::POLLIN == 0 {
            continue;
        }
        // SAFETY: accept4 on our listener; the result is checked.
        let c = unsafe {
            libc::accept4(
                listener.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        if c < 0 {
            // A connection gone before it was taken, or no fds left for
            // now: the next one may well work.
            eprintln!("sockpass: run: accept: {}", std::io::Error::last_os_error());
            continue;
        }
        // SAFETY: c is a new fd we own.
        let conn = unsafe { OwnedFd::from_raw_fd(c) };
        let started = plan.spawn().and_then(|mut sp| {
            if inetd {
                as_inetd(&mut sp, conn)?;
            } else {
                sp.fd(conn, Some(name.as_deref().unwrap_or("connection")));
            }
            sp.spawn()
        });
        // One connection's failure (reported) ends only that connection.
        match started {
            Ok(ch) => children.push(ch),
            Err(e) => {
                spawn_failed(&e);
            }
        }
    }
    for mut c in children {
        let _ = c.wait();
    }
    drop(client);
    unblock(&set);
    code
}
