//! The broker: one epoll loop that accepts clients on a `SOCK_SEQPACKET`
//! listener, creates and caches bound sockets, counts references, enforces
//! share modes and hands sockets out with `SCM_RIGHTS`.
//!
//! A client's connection is its lease: when it closes, every reference it
//! holds is dropped. The loop never blocks on a client: replies that do not
//! fit in a client's socket buffer wait in a bounded per-client queue, and a
//! client whose queue is full is not read from until it drains.
//!
//! Where things go:
//! - a message type: [`dispatch`] (`Broker::handle`), its handler beside
//!   its concern ([`requests`], [`refs`], [`upgrade`], [`status`]);
//! - a limit: [`limits`] (the field, its default and its `FLAGS` row);
//! - per-connection I/O: [`conn`]; accepting clients: [`accept`];
//! - the loop's mechanics (epoll, timeout): [`event_loop`], [`slab`];
//! - the cache and its indexes: [`cache::Sockets`]; references,
//!   reservations and their deadline: [`refs::References`].

mod accept;
mod cache;
mod config;
mod conn;
mod dispatch;
mod event_loop;
mod limits;
mod listener;
mod outbox;
mod refs;
mod requests;
mod slab;
mod status;
mod store;
mod upgrade;
mod users;

pub use config::Config;
pub use limits::{raise_fd_limit, LimitFlag, Limits, FD_HEADROOM, FLAGS as LIMIT_FLAGS};
pub use listener::{bind_listener, bind_listener_as};

use crate::fdstore::FdStore;
use crate::log::{self as plog, Budget, Level};
use cache::Sockets;
use conn::Conn;
use event_loop::{set_nonblock, Epoll, EV_LISTENER, EV_STATUS_GONE};
use refs::References;
use slab::Slab;
use sockpass::proto;
use sockpass::sys;
use sockpass::Result;
use std::os::fd::{AsRawFd, OwnedFd};
use std::rc::Rc;
use std::time::Instant;
use upgrade::PendingUpgrade;

/// The broker state; its loop is in [`event_loop`].
pub struct Broker {
    cfg: Config,
    listener: OwnedFd,
    epoll: Epoll,
    conns: Slab<Conn>,
    /// Every socket held, with the cache and its indexes.
    sockets: Sockets,
    /// Every reference by token, and the reservations among them.
    refs: References,
    next_conn_id: u64,
    /// Loop turns (`epoll_wait`s) so far: what a uid's share of a turn
    /// counts in (`users::Users::turn_share`).
    turn: u64,
    next_entry_id: u64,
    /// Scratch buffers reused on the hot path.
    /// Receive buffer, `MAX_MSG` long (empty while lent to a request).
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    /// The application name a connection last named, shared by the next
    /// connection that names it too: the workers of one application
    /// connect with the same name, and each would allocate its own copy.
    app_memo: Rc<str>,
    /// Emptied `Conn::refs` vectors of closed connections, for new ones
    /// (at most [`limits::SPARE_REFS`], each at most that long): a client
    /// that connects, asks once and goes allocates nothing for its references.
    spare_refs: Vec<Vec<u32>>,
    /// Connections refused since the last log line about it.
    refused_conns: u64,
    last_refusal_log: Option<Instant>,
    /// Lines a client can cause, each kind within a budget a second
    /// (indexed by [`Noisy`]).
    noisy: [Budget; Noisy::COUNT],
    /// An upgrade asked for (by SIGHUP through the daemon, or UPGRADE).
    upgrade: Option<PendingUpgrade>,
    /// The systemd fd store, when running under systemd with one.
    fd_store: Option<FdStore>,
    /// An fd held in reserve (`/dev/null`): out of fds, the broker closes it
    /// to accept the waiting client, tells it why and closes it, instead of
    /// leaving the listener readable and spinning on EMFILE.
    reserve: Option<OwnedFd>,
    /// Per-uid use and quotas.
    users: users::Users,
    /// The broker's own uid: privileged like root.
    broker_uid: u32,
    /// Bumped by every change a status table shows (references, sockets,
    /// connections), so an unchanged table is built once and shared.
    gen: u64,
    /// Status tables: the one built last, and every one still open anywhere.
    status: status::StatusTables,
    /// Our pid, for HELLO_OK and log lines (an upgrade keeps it: the new
    /// binary runs in this process).
    pid: u32,
    /// The replies of a loop turn, sent together at its end (None: each
    /// is sent at once; io_uring off or refused). Boxed: it is taken out
    /// and put back each flush, and a ring is hundreds of bytes to move.
    outbox: Option<Box<outbox::Outbox>>,
}

impl Broker {
    /// A broker serving on an already-listening `SOCK_SEQPACKET` socket (from
    /// [`bind_listener`] or socket activation).
    pub fn new(listener: OwnedFd, cfg: Config) -> Result<Broker> {
        set_nonblock(&listener)?;
        // Clients send no fds: the kernel refuses them (EPERM to the
        // sender) on every connection made from here on (one queued
        // already keeps what it had). Older kernels deliver them, and
        // conn.rs closes them off the loop.
        let refused_at_kernel = crate::closer::refuse_passed_fds(&listener);
        let epoll = Epoll::new()?;
        let (outbox, no_outbox) = if cfg.io_uring {
            match outbox::Outbox::new() {
                Ok(o) => (Some(Box::new(o)), None),
                Err(why) => (None, Some(why)),
            }
        } else {
            (None, None)
        };
        let b = Broker {
            cfg,
            listener,
            epoll,
            conns: Slab::new(),
            sockets: Sockets::new(),
            refs: References::new(),
            next_conn_id: 1,
            turn: 0,
            next_entry_id: 1,
            rbuf: vec![0u8; proto::MAX_MSG],
            wbuf: Vec::with_capacity(proto::MAX_MSG),
            app_memo: Rc::from(""),
            spare_refs: Vec::new(),
            refused_conns: 0,
            last_refusal_log: None,
            noisy: Default::default(),
            upgrade: None,
            fd_store: None,
            reserve: accept::open_reserve(),
            users: users::Users::new(),
            // SAFETY: geteuid cannot fail.
            broker_uid: unsafe { libc::geteuid() },
            gen: 0,
            status: status::StatusTables::new(),
            pid: std::process::id(),
            outbox,
        };
        b.epoll.ctl(
            libc::EPOLL_CTL_ADD,
            b.listener.as_raw_fd(),
            libc::EPOLLIN as u32,
            EV_LISTENER,
        )?;
        if let Some(fd) = b.status.inotify_fd() {
            b.epoll.ctl(
                libc::EPOLL_CTL_ADD,
                fd,
                libc::EPOLLIN as u32,
                EV_STATUS_GONE,
            )?;
        }
        if let Some(why) = no_outbox {
            b.log(format_args!("replies are sent one by one ({why})"));
        }
        if !refused_at_kernel {
            b.log(format_args!(
                "the kernel cannot refuse fds sent by clients (no SO_PASSRIGHTS): they are closed off the event loop"
            ));
        }
        Ok(b)
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Something a status table shows changed: the tables built so far
    /// are not shared again, and the broker lets go of them (they count
    /// until their last holder closes them).
    #[inline]
    fn changed(&mut self) {
        self.gen = self.gen.wrapping_add(1);
        self.status.forget_built();
    }

    /// An info line (`--quiet` drops it); never blocks (see [`crate::log`]).
    fn log(&self, msg: std::fmt::Arguments<'_>) {
        self.log_at(Level::Info, msg);
    }

    fn log_at(&self, level: Level, msg: std::fmt::Arguments<'_>) {
        if self.cfg.log || level == Level::Error {
            plog::line(level, msg);
        }
    }

    /// A line a client can cause: at most a budget a second of each kind,
    /// the rest counted and reported in one line when the next is logged.
    fn log_noisy(&mut self, kind: Noisy, level: Level, msg: std::fmt::Arguments<'_>) {
        if !self.cfg.log {
            return;
        }
        let (allowed, suppressed) = self.noisy[kind as usize].take(Instant::now());
        if suppressed > 0 {
            self.log_at(
                level,
                format_args!(
                    "{suppressed} more {} not logged in the last second",
                    kind.what()
                ),
            );
        }
        if allowed {
            self.log_at(level, msg);
        }
    }

    /// Counters for status and tests.
    pub fn counters(&self) -> proto::Counters {
        proto::Counters {
            broker_fds: broker_fds(),
            ..self.counters_without_fds()
        }
    }

    fn counters_without_fds(&self) -> proto::Counters {
        proto::Counters {
            sockets: self.sockets.len() as u32,
            references: self.refs.len() as u32,
            connections: self.conns.len() as u32,
            reservations: self.refs.reservations() as u32,
            broker_fds: 0,
        }
    }

    /// Close every client and socket (on shutdown).
    pub fn shutdown(&mut self) {
        let slots: Vec<usize> = self.conns.iter().map(|(i, _)| i).collect();
        for s in slots {
            self.drop_conn(s, "broker shutting down");
        }
    }
}

/// The kinds of log lines a client can cause, each with its own budget.
#[derive(Clone, Copy)]
enum Noisy {
    Refusal,
    Gone,
    Expired,
    Store,
}

impl Noisy {
    const COUNT: usize = 4;

    fn what(self) -> &'static str {
        match self {
            Noisy::Refusal => "refused request(s)",
            Noisy::Gone => "client(s) gone",
            Noisy::Expired => "expired reservation(s)",
            Noisy::Store => "fd store failure(s)",
        }
    }
}

/// The broker's open fds. Closes handed to the closer thread count as done
/// (it is not stalled) once it has caught up, within its bound.
fn broker_fds() -> u32 {
    crate::closer::settle_all();
    sys::count_open_fds() as u32
}

#[cfg(test)]
mod tests {
    use super::limits::SPARE_REFS;
    use super::*;
    use sockpass::sys::Creds;

    /// A client whose credentials cannot be read gets nothing: it is
    /// dropped, never served as a default (uid 0). (`SO_PEERCRED` on an
    /// accepted unix socket does not fail in practice, so the failure is
    /// handed in.)
    #[test]
    fn unreadable_credentials_drop_the_client() {
        use std::os::fd::AsFd;
        let (listener, _peer) = sockpass::fdpass::socketpair(libc::SOCK_SEQPACKET).unwrap();
        let mut b = Broker::new(listener, Config::default()).unwrap();
        let (fd, client) = sockpass::fdpass::socketpair(libc::SOCK_SEQPACKET).unwrap();
        b.admit(fd, Err(libc::EINVAL));
        assert_eq!(b.conns.len(), 0, "the client was not admitted");
        let mut buf = [0u8; 16];
        let r = sockpass::fdpass::recv_fds(client.as_fd(), &mut buf, 0, 0).unwrap();
        assert_eq!(r.len, 0, "and its connection is closed");
        let (fd, _client) = sockpass::fdpass::socketpair(libc::SOCK_SEQPACKET).unwrap();
        let creds = sockpass::sys::peer_creds(&fd);
        b.admit(fd, creds);
        assert_eq!(b.conns.len(), 1, "readable credentials are admitted");
    }

    /// Closed connections leave at most `SPARE_REFS` emptied reference
    /// vectors, none with room for more than `SPARE_REFS` tokens, and new
    /// connections take them.
    #[test]
    fn spare_reference_vectors_are_bounded() {
        let (listener, _peer) = sockpass::fdpass::socketpair(libc::SOCK_SEQPACKET).unwrap();
        let mut b = Broker::new(listener, Config::default()).unwrap();
        // Slots no reference is in: dropping them does nothing.
        let t = 7u32;
        let mut peers = Vec::new();
        let mut open = |b: &mut Broker, n: usize| {
            let (fd, peer) = sockpass::fdpass::socketpair(libc::SOCK_SEQPACKET).unwrap();
            peers.push(peer);
            let user = b.users.slot(0, &b.cfg, 0);
            b.users.get_mut(user).conns += 1;
            let conn = b.new_conn(fd, peers.len() as u64, Creds::default(), user);
            let slot = b.conns.insert(conn);
            b.conns
                .get_mut(slot)
                .unwrap()
                .refs
                .extend(std::iter::repeat_n(t, n));
            slot
        };
        let sizes = [0usize, 1, 5, 16, 17, 100];
        let slots: Vec<usize> = (0..60).map(|i| open(&mut b, sizes[i % 6])).collect();
        for s in slots {
            b.drop_conn(s, "disconnected");
            assert!(b.spare_refs.len() <= SPARE_REFS);
        }
        assert_eq!(b.spare_refs.len(), SPARE_REFS);
        let fits = |v: &Vec<u32>| v.is_empty() && v.capacity() <= SPARE_REFS;
        assert!(b.spare_refs.iter().all(fits));
        for i in 1..=4 {
            open(&mut b, 1);
            assert_eq!(b.spare_refs.len(), SPARE_REFS - i);
        }
    }

    /// The replies of a turn, held and sent by one io_uring submission,
    /// reach each client in order; a client whose buffer fills midway
    /// gets the rest queued, in order, and sent when it reads; a client
    /// dropped meanwhile gets what was held for it first, then its end.
    #[test]
    fn held_replies_go_out_in_order_and_a_full_client_gets_the_rest_queued() {
        use std::os::fd::AsFd;
        let (listener, _peer) = sockpass::fdpass::socketpair(libc::SOCK_SEQPACKET).unwrap();
        let mut b = Broker::new(listener, Config::default()).unwrap();
        if b.outbox.is_none() {
            eprintln!("SKIP: io_uring is not available here; replies are sent one by one");
            return;
        }
        let mut peers = Vec::new();
        let mut slots = Vec::new();
        for i in 0..3u64 {
            let (fd, peer) = sockpass::fdpass::socketpair(libc::SOCK_SEQPACKET).unwrap();
            sockpass::sys::set_nonblocking(fd.as_fd()).unwrap();
            let user = b.users.slot(0, &b.cfg, 0);
            b.users.get_mut(user).conns += 1;
            let conn = b.new_conn(fd, i + 1, Creds::default(), user);
            slots.push(b.conns.insert(conn));
            peers.push(peer);
        }
        // Client 0's socket takes few replies: its buffer fills midway.
        let fd0 = &b.conns.get(slots[0]).unwrap().fd;
        sockpass::sys::setsockopt_int(fd0, libc::SOL_SOCKET, libc::SO_SNDBUF, 4096).unwrap();
        let n = 40usize;
        for i in 0..n {
            for (c, &slot) in slots.iter().enumerate() {
                b.send(slot, format!("{c}:{i}").into_bytes(), None);
            }
        }
        // Client 2 is dropped before the turn ends (a protocol error after
        // its replies): what was held goes out first, for everyone.
        b.drop_conn(slots[2], "disconnected");
        b.flush_outbox();
        assert!(b.outbox.as_ref().unwrap().is_empty());
        let read_all = |peer: &OwnedFd| {
            let mut got = Vec::new();
            let mut buf = [0u8; 64];
            while let Ok(r) =
                sockpass::fdpass::recv_fds(peer.as_fd(), &mut buf, 0, libc::MSG_DONTWAIT)
            {
                if r.len == 0 {
                    got.push("EOF".to_string());
                    break;
                }
                got.push(String::from_utf8(buf[..r.len].to_vec()).unwrap());
            }
            got
        };
        let want = |c: usize, from: usize, to: usize| -> Vec<String> {
            (from..to).map(|i| format!("{c}:{i}")).collect()
        };
        assert_eq!(
            read_all(&peers[1]),
            want(1, 0, n),
            "client 1: every reply, in order"
        );
        let first = read_all(&peers[0]);
        let queued = b.conns.get(slots[0]).unwrap().outq.len();
        assert!(queued > 0, "client 0's buffer filled: {} sent", first.len());
        assert_eq!(
            first,
            want(0, 0, first.len()),
            "client 0: in order up to the full buffer"
        );
        assert_eq!(first.len() + queued, n, "the rest is queued, none lost");
        // As the client reads, its queue goes out (EPOLLOUT), in order.
        let mut rest = Vec::new();
        while !b.conns.get(slots[0]).unwrap().outq.is_empty() {
            assert!(b.flush(slots[0]));
            rest.extend(read_all(&peers[0]));
        }
        rest.extend(read_all(&peers[0]));
        assert_eq!(
            rest,
            want(0, first.len(), n),
            "client 0: the queued rest, in order"
        );
        let mut gone = want(2, 0, n);
        gone.push("EOF".into());
        let mut got = read_all(&peers[2]);
        if got.last().map(String::as_str) != Some("EOF") {
            // A child another test forks may hold a copy of the broker's
            // end until it execs: its end comes then.
            sockpass::sys::poll_one(peers[2].as_fd(), libc::POLLIN, 30_000).unwrap();
            got.extend(read_all(&peers[2]));
        }
        assert_eq!(got, gone, "client 2: its replies, then its end");
    }
}
