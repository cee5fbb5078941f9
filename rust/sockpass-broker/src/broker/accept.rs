//! Accepting clients, within the connection and fd limits.

use super::conn::Conn;
use super::event_loop::EV_CONN_BASE;
use super::Broker;
use crate::log::Level;
use sockpass::fdpass::send_fds;
use sockpass::proto;
use sockpass::sys::{self, Creds};
use sockpass::{Error, Kind};
use std::collections::VecDeque;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// The fd kept in reserve for [`Broker::shed_one_connection`].
pub(super) fn open_reserve() -> Option<OwnedFd> {
    // SAFETY: open with a constant path; the result is a new fd or -1.
    let fd = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    // SAFETY: fd is a new fd when non-negative.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Accepted connections: CLOEXEC, and non-blocking for the loop.
const ACCEPT_FLAGS: rustix::net::SocketFlags =
    rustix::net::SocketFlags::CLOEXEC.union(rustix::net::SocketFlags::NONBLOCK);

impl Broker {
    pub(super) fn accept_client(&mut self) {
        // Refused clients (the connection limit, no fds) do not count.
        for _ in 0..64 {
            // Through rustix, a plain accept4: glibc's is a cancellation
            // point, two calls into pthread a connection in this threaded
            // broker (which never cancels).
            let fd = match rustix::net::accept_with(&self.listener, ACCEPT_FLAGS) {
                Ok(fd) => fd,
                Err(e) => match e.raw_os_error() {
                    libc::EAGAIN | libc::EINTR | libc::ECONNABORTED => return,
                    e @ (libc::EMFILE | libc::ENFILE) => {
                        self.note_refusal("out of file descriptors");
                        if !self.shed_one_connection(e) {
                            return;
                        }
                        continue;
                    }
                    e => {
                        self.note_refusal(&format!("accept failed: {}", sockpass::strerror(e)));
                        return;
                    }
                },
            };
            let creds = sys::peer_creds(&fd);
            if !self.admit(fd, creds) {
                // Refused: the next waiting client may be served.
                continue;
            }
            // One client per wakeup: the listener is level-triggered, so
            // more waiting wake the loop again, and the usual single client
            // costs no accept4 that fails with EAGAIN.
            return;
        }
    }

    /// Serve an accepted client known by `creds` (its `SO_PEERCRED`). Who
    /// the client is decides what it may do: without its credentials it
    /// gets nothing (dropped and logged; never a default uid 0).
    /// False when the client was refused (no credentials, the connection
    /// limit or its uid's quota), so the caller may accept the next.
    pub(super) fn admit(&mut self, fd: OwnedFd, creds: Result<Creds, i32>) -> bool {
        let creds = match creds {
            Ok(c) => c,
            Err(e) => {
                drop(fd);
                self.note_refusal(&format!(
                    "cannot read the client's credentials (SO_PEERCRED: {})",
                    sockpass::strerror(e)
                ));
                return false;
            }
        };
        let user = self.users.slot(creds.uid, &self.cfg, self.broker_uid);
        if let Err(e) = self.conn_room(user) {
            // Closing at once keeps the backlog from filling with clients
            // that would only wait. The ERROR with id 0 (best effort)
            // tells the client why instead of a bare hang-up.
            let mut msg = Vec::new();
            proto::encode_error(&mut msg, 0, &e);
            let _ = send_fds(fd.as_fd(), &msg, &[], libc::MSG_DONTWAIT);
            drop(fd);
            self.users.forget_if_idle(user);
            self.note_refusal(if e.message().contains("per-uid") {
                "per-uid connection quota reached"
            } else {
                "connection limit reached"
            });
            return false;
        }
        let id = self.next_conn_id;
        self.next_conn_id += 1;
        let conn = self.new_conn(fd, id, creds, user);
        let slot = self.conns.insert(conn);
        self.users.get_mut(user).conns += 1;
        self.changed();
        let raw = self.conns.get(slot).unwrap().fd.as_raw_fd();
        if self
            .epoll
            .ctl(
                libc::EPOLL_CTL_ADD,
                raw,
                (libc::EPOLLIN | libc::EPOLLRDHUP) as u32,
                EV_CONN_BASE + slot as u64,
            )
            .is_err()
        {
            self.conns.remove(slot);
            self.users.get_mut(user).conns -= 1;
            self.users.forget_if_idle(user);
            return true;
        }
        // A client sends its first request right after connecting, so it
        // is usually waiting already: read it now rather than after one
        // more epoll_wait (if not, one recvmsg says EAGAIN).
        self.read_requests(slot);
        true
    }

    /// A new connection, starting with the last application name named
    /// and a spare reference list (neither allocates).
    pub(super) fn new_conn(&mut self, fd: OwnedFd, id: u64, creds: Creds, user: usize) -> Conn {
        Conn {
            refuses_fds: crate::closer::refuses_passed_fds(&fd),
            fd,
            id,
            creds,
            user,
            default_app: None,
            last_app: self.app_memo.clone(),
            refs: self.spare_refs.pop().unwrap_or_default(),
            outq: VecDeque::new(),
            paused: false,
            pipelining: false,
            wakeups: 0,
            credit: 0,
            seen: 0,
        }
    }

    /// May uid row `user` open one more connection? The global limit (less
    /// the privileged reserve for others), then the uid's quota.
    fn conn_room(&self, user: usize) -> sockpass::Result<()> {
        let u = self.users.get(user);
        let max = self.cfg.limits.max_connections;
        if self.conns.len() >= super::Limits::global_room(max, u.privileged) {
            return Err(Error::with_errno(
                Kind::LimitReached,
                libc::EUSERS,
                format!(
                    "the broker serves {} connections, its limit{}",
                    self.conns.len(),
                    if self.conns.len() < max {
                        " for unprivileged uids (the rest is kept for root)"
                    } else {
                        ""
                    }
                ),
            ));
        }
        u.room("connections", u.conns, u.quota.connections)
    }

    /// Out of fds (`errno`) with a client waiting: spend the reserve fd to
    /// accept it, send it an ERROR saying so and close it, then take the
    /// reserve back. False when there is no reserve to spend (then the
    /// listener stays readable and the next loop turn tries again).
    pub(super) fn shed_one_connection(&mut self, errno: i32) -> bool {
        let Some(r) = self.reserve.take() else {
            self.reserve = open_reserve();
            return false;
        };
        drop(r);
        let accepted = rustix::net::accept_with(&self.listener, ACCEPT_FLAGS).ok();
        let got = accepted.is_some();
        // Closed at the end of this block, before the reserve is reopened
        // in its number.
        if let Some(fd) = accepted {
            let e = Error::with_errno(
                Kind::LimitReached,
                errno,
                "the broker is out of file descriptors; try again later",
            );
            let mut msg = Vec::new();
            proto::encode_error(&mut msg, 0, &e);
            let _ = send_fds(fd.as_fd(), &msg, &[], libc::MSG_DONTWAIT);
        }
        self.reserve = open_reserve();
        got && self.reserve.is_some()
    }

    pub(super) fn note_refusal(&mut self, why: &str) {
        self.refused_conns += 1;
        let now = Instant::now();
        if self
            .last_refusal_log
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            self.log_at(
                Level::Warning,
                format_args!(
                    "refused {} connection(s): {why} ({} connections open)",
                    self.refused_conns,
                    self.conns.len()
                ),
            );
            self.refused_conns = 0;
            self.last_refusal_log = Some(now);
        }
    }
}
