//! A client's connection: its state, the replies queued for it, and its
//! I/O (read requests, send replies, flush the queue, drop it).

use super::event_loop::EV_CONN_BASE;
use super::limits::{PIPELINE_PROBE_EVERY, SPARE_REFS, TURN_SHARE};
use super::outbox;
use super::{Broker, Noisy};
use crate::log::Level;
use sockpass::fdpass::{recv_fds_keeping, recv_refusing_fds, send_fds, RecvError};
use sockpass::proto::{self, ty, Header};
use sockpass::sys::Creds;
use sockpass::Error;
use std::collections::VecDeque;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::rc::Rc;

/// The fd a reply carries.
pub(super) enum Attach {
    /// A cached socket, by entry slot and id. The entry outlives a queued
    /// reply because the reply's token keeps a reference, so no dup is needed.
    Entry(usize, u64),
    /// A status table, shared by the replies that show the same state.
    Table(Rc<OwnedFd>),
    /// Several cached sockets (a REQUEST_MANY's reply), in order.
    Entries(Vec<(usize, u64)>),
}

/// A status table goes out as a fresh open file description of its memfd
/// (opened through /proc at send time, closed right after): the replies
/// share the memory, not a file offset, so clients reading theirs at once
/// (`lseek` + `read`) do not move each other's. None: send the table's
/// own fd (no /proc, or no fd to spare).
fn own_description(a: &Option<Attach>) -> Option<OwnedFd> {
    let Some(Attach::Table(t)) = a else {
        return None;
    };
    let path = format!("/proc/self/fd/{}\0", t.as_raw_fd());
    // SAFETY: a NUL-terminated path; the result is a new fd or -1.
    let fd = unsafe { libc::open(path.as_ptr().cast(), libc::O_RDONLY | libc::O_CLOEXEC) };
    // SAFETY: fd is new when non-negative.
    (fd >= 0).then(|| unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) })
}

/// The fds of one reply, borrowed from where they live; one without
/// allocating, as nearly every reply has.
pub(super) enum AttachedFds<'a> {
    One(Option<BorrowedFd<'a>>),
    Many(Vec<BorrowedFd<'a>>),
}

impl<'a> AttachedFds<'a> {
    fn as_slice(&self) -> &[BorrowedFd<'a>] {
        match self {
            AttachedFds::One(Some(f)) => std::slice::from_ref(f),
            AttachedFds::One(None) => &[],
            AttachedFds::Many(v) => v,
        }
    }
}

/// A reply waiting for the client to read.
pub(super) struct Outgoing {
    pub(super) bytes: Vec<u8>,
    pub(super) attach: Option<Attach>,
}

pub(super) struct Conn {
    pub(super) fd: OwnedFd,
    pub(super) id: u64,
    pub(super) creds: Creds,
    /// Its uid's row in [`super::users::Users`].
    pub(super) user: usize,
    pub(super) default_app: Option<Rc<str>>,
    pub(super) last_app: Rc<str>,
    /// The references this connection holds, by reference slot; each
    /// one's `TokenInfo` knows its place here, so a release takes it out
    /// in O(1).
    pub(super) refs: Vec<u32>,
    pub(super) outq: VecDeque<Outgoing>,
    /// EPOLLIN is off because the queue is full.
    pub(super) paused: bool,
    /// Seen to send requests without waiting for replies: read in batches.
    pub(super) pipelining: bool,
    pub(super) wakeups: u32,
    /// What it may still read in the loop's turns, in `message_cost`
    /// units: its uid's share of a turn is added at each wakeup (capped at
    /// one share), each message read takes its cost; at zero or below the
    /// connection waits for later turns (see `TURN_SHARE`).
    pub(super) credit: i64,
    /// The outbox's activity window this client last woke the broker in.
    pub(super) seen: u32,
    /// The kernel has refused fds sent here since the connection was made
    /// ([`crate::closer::refuses_passed_fds`]): requests are read with a
    /// plain `recv`, as none can carry an fd.
    pub(super) refuses_fds: bool,
}

/// What reading a message of `len` bytes takes from its connection's
/// credit: one, and one more for each 64 bytes, so a batch of 145 specs or
/// 170 tokens (about 4 KiB) costs what 64 single requests do.
fn message_cost(len: usize) -> i64 {
    1 + (len / 64) as i64
}

impl Broker {
    pub(super) fn conn_event(&mut self, slot: usize, flags: u32) {
        if self.conns.get(slot).is_none() {
            return;
        }
        if flags & libc::EPOLLOUT as u32 != 0 && !self.flush(slot) {
            return;
        }
        if flags & libc::EPOLLIN as u32 != 0 {
            self.read_requests(slot);
        } else if flags & (libc::EPOLLHUP | libc::EPOLLERR | libc::EPOLLRDHUP) as u32 != 0 {
            // Nothing left to read and the peer is gone.
            self.drop_conn(slot, "hung up");
        }
    }

    pub(super) fn read_requests(&mut self, slot: usize) {
        // A synchronous client cannot send its next request before reading
        // this reply, so reading on after one message mostly buys a recvmsg
        // that returns EAGAIN. Read one per wakeup (level-triggered epoll
        // wakes again if more wait) unless the client pipelines; probe now
        // and then to notice when it starts.
        let limit = match self.conns.get_mut(slot) {
            Some(c) => {
                // Its uid's share of the turn (see TURN_SHARE), at most one
                // share saved up; a connection that spent beyond it waits
                // for later turns (level-triggered epoll reports it again).
                let share = self.users.turn_share(c.user, self.turn, TURN_SHARE) as i64;
                c.credit = (c.credit + share).min(share);
                if c.credit <= 0 {
                    return;
                }
                c.wakeups = c.wakeups.wrapping_add(1);
                if let Some(ob) = &mut self.outbox {
                    ob.active(&mut c.seen);
                }
                if c.pipelining || c.wakeups % PIPELINE_PROBE_EVERY == 0 {
                    self.cfg.limits.batch
                } else {
                    1
                }
            }
            None => return,
        };
        let mut got = 0;
        if self.rbuf.len() < proto::MAX_MSG {
            // Still lent out: a request's handling read again.
            self.rbuf = vec![0u8; proto::MAX_MSG];
        }
        for _ in 0..limit {
            let Some(c) = self.conns.get(slot) else {
                return;
            };
            if c.paused {
                return;
            }
            if c.credit <= 0 {
                // Its part of this turn is spent: the rest waits.
                break;
            }
            // Fds that arrive anyway (kernels without SO_PASSRIGHTS, or a
            // client that connected before the listener refused them) are
            // closed on the closer thread: their close can block.
            let mut fds = Vec::new();
            let res = if c.refuses_fds {
                recv_refusing_fds(c.fd.as_fd(), &mut self.rbuf[..], libc::MSG_DONTWAIT)
            } else {
                recv_fds_keeping(
                    c.fd.as_fd(),
                    &mut self.rbuf[..],
                    libc::MSG_DONTWAIT,
                    &mut fds,
                )
            };
            let unexpected_fds = fds.len();
            if unexpected_fds > 0 && !crate::closer::close_off_loop(fds) {
                // The closer is behind (a close that blocks): take no more
                // fds from this client.
                self.drop_conn(slot, "sent fds while the closer was busy");
                return;
            }
            let len = match res {
                Ok(0) if unexpected_fds == 0 => {
                    self.drop_conn(slot, "disconnected");
                    return;
                }
                Ok(n) => n,
                Err(RecvError::Os(libc::EAGAIN)) => {
                    if let Some(c) = self.conns.get_mut(slot) {
                        c.pipelining = got > 1;
                    }
                    return;
                }
                Err(RecvError::Os(e)) => {
                    let why = format!("receive failed: {}", sockpass::strerror(e));
                    self.drop_conn(slot, &why);
                    return;
                }
                Err(RecvError::TruncatedPayload) => {
                    self.charge(slot, proto::MAX_MSG);
                    let id = Header::parse(&self.rbuf[..]).map(|h| h.id).unwrap_or(0);
                    let e =
                        Error::protocol(format!("message larger than {} bytes", proto::MAX_MSG));
                    self.reply_error(slot, id, &e);
                    continue;
                }
                Err(RecvError::TruncatedFds) => {
                    self.charge(slot, proto::MAX_MSG);
                    let id = Header::parse(&self.rbuf[..]).map(|h| h.id).unwrap_or(0);
                    let e = Error::bad_request("file descriptors attached to a request are not accepted (closed; some were lost to MSG_CTRUNC)");
                    self.reply_error(slot, id, &e);
                    continue;
                }
            };
            got += 1;
            self.charge(slot, len);
            // Any fds that came with the request are on their way to the
            // closer; the request is refused as a whole.
            let msg_len = len;
            let header = match Header::parse(&self.rbuf[..msg_len]) {
                Ok(h) => h,
                Err(e) => {
                    // Not even a header: this peer does not speak the protocol.
                    self.reply_error(slot, 0, &e);
                    self.drop_conn(slot, "sent a message without a valid header");
                    return;
                }
            };
            if unexpected_fds > 0 {
                let e = Error::bad_request(format!(
                    "{unexpected_fds} file descriptor(s) attached to a request are not accepted (closed)"
                ));
                self.reply_error(slot, header.id, &e);
                continue;
            }
            if header.version != proto::VERSION {
                let e = Error::protocol(format!(
                    "unsupported protocol version {} (this broker speaks version {})",
                    header.version,
                    proto::VERSION
                ));
                self.reply_error(slot, header.id, &e);
                continue;
            }
            // Lend the buffer out so the request can borrow it while self
            // is mutated (a copy into a zeroed 1 KiB array cost a tenth of
            // the broker's instructions per request).
            let msg = std::mem::take(&mut self.rbuf);
            let payload = &msg[proto::HEADER_LEN..msg_len];
            let known = match header.ty {
                ty::REQUEST => self.request_by_wire(slot, header.id, payload),
                ty::REQUEST_MANY => self.request_many_by_wire(slot, header.id, payload),
                _ => None,
            };
            match known {
                Some(res) => self.answer(slot, header.id, res),
                None => match proto::decode_request(&header, payload) {
                    Ok(req) => self.handle(slot, header.id, req),
                    Err(e) => self.reply_error(slot, header.id, &e),
                },
            }
            self.rbuf = msg;
        }
        // A full batch without running dry: the client pipelines.
        if limit > 1 {
            if let Some(c) = self.conns.get_mut(slot) {
                c.pipelining = true;
            }
        }
    }

    /// Take a message of `len` bytes from the connection's credit.
    fn charge(&mut self, slot: usize, len: usize) {
        if let Some(c) = self.conns.get_mut(slot) {
            c.credit -= message_cost(len);
        }
    }

    pub(super) fn reply_error(&mut self, slot: usize, id: u32, e: &Error) {
        let mut out = std::mem::take(&mut self.wbuf);
        proto::encode_error(&mut out, id, e);
        self.send(slot, out, None);
    }

    /// The fds a reply carries (none for a socket gone meanwhile).
    pub(super) fn attached_fds<'a>(&'a self, a: &'a Option<Attach>) -> AttachedFds<'a> {
        let entry = |&(es, eid): &(usize, u64)| {
            self.sockets
                .get(es)
                .filter(|e| e.id == eid)
                .map(|e| e.fd.as_fd())
        };
        match a {
            Some(Attach::Entry(es, eid)) => AttachedFds::One(entry(&(*es, *eid))),
            Some(Attach::Table(t)) => AttachedFds::One(Some(t.as_fd())),
            Some(Attach::Entries(v)) => {
                // Sized up front (a filter's collect grows from empty).
                let mut fds = Vec::with_capacity(v.len());
                fds.extend(v.iter().filter_map(entry));
                AttachedFds::Many(fds)
            }
            None => AttachedFds::One(None),
        }
    }

    /// Send a reply: held for the end of the loop's turn (see
    /// [`super::outbox`]), sent now, or queued if the client's buffer is full.
    pub(super) fn send(&mut self, slot: usize, mut bytes: Vec<u8>, attach: Option<Attach>) {
        // The sockets this request released are closed before it is
        // answered: their ports are free when the client reads the reply.
        crate::closer::settle_pending();
        let holdable = matches!(attach, None | Some(Attach::Entry(..)))
            && bytes.len() <= outbox::MAX_HELD_BYTES;
        if let Some(ob) = &self.outbox {
            // What is held goes first (a client's replies keep their
            // order), and a full outbox makes room.
            if (!holdable && !ob.is_empty()) || ob.is_full() {
                self.flush_outbox();
            }
        }
        let Some(c) = self.conns.get(slot) else {
            self.wbuf = bytes;
            return;
        };
        if c.outq.is_empty() {
            if let (true, Some(ob)) = (holdable, self.outbox.as_mut().filter(|o| o.holding)) {
                let entry = match attach {
                    Some(Attach::Entry(es, eid)) => Some((es, eid)),
                    _ => None,
                };
                ob.hold(slot, c.id, &bytes, entry);
                bytes.clear();
                self.wbuf = bytes;
                return;
            }
            match self.send_now(slot, &bytes, &attach) {
                Ok(()) => {
                    bytes.clear();
                    self.wbuf = bytes;
                    return;
                }
                Err(libc::EAGAIN) => {}
                Err(e) => {
                    bytes.clear();
                    self.wbuf = bytes;
                    let why = format!("send failed: {}", sockpass::strerror(e));
                    self.drop_conn(slot, &why);
                    return;
                }
            }
        }
        self.enqueue(slot, &bytes, attach);
        bytes.clear();
        self.wbuf = bytes;
    }

    /// One `sendmsg` of a reply to a client that exists; the errno.
    fn send_now(&self, slot: usize, bytes: &[u8], attach: &Option<Attach>) -> Result<(), i32> {
        let Some(c) = self.conns.get(slot) else {
            return Ok(());
        };
        let own = own_description(attach);
        let fds = match &own {
            Some(f) => AttachedFds::One(Some(f.as_fd())),
            None => self.attached_fds(attach),
        };
        send_fds(c.fd.as_fd(), bytes, fds.as_slice(), libc::MSG_DONTWAIT).map(|_| ())
    }

    /// Queue a reply for when the client's buffer has room: a copy of just
    /// the reply's bytes (a client that does not read holds its replies'
    /// bytes, not a packet limit's worth of memory for each).
    fn enqueue(&mut self, slot: usize, bytes: &[u8], attach: Option<Attach>) {
        let max = self.cfg.limits.max_queued_replies;
        let Some(c) = self.conns.get_mut(slot) else {
            return;
        };
        c.outq.push_back(Outgoing {
            bytes: bytes.to_vec(),
            attach,
        });
        let raw = c.fd.as_raw_fd();
        let mut ev = libc::EPOLLOUT | libc::EPOLLRDHUP;
        if c.outq.len() >= max {
            c.paused = true;
        } else {
            ev |= libc::EPOLLIN;
        }
        let _ = self.epoll.ctl(
            libc::EPOLL_CTL_MOD,
            raw,
            ev as u32,
            EV_CONN_BASE + slot as u64,
        );
    }

    /// Send the replies held for the end of the turn: one by `sendmsg`,
    /// more by one io_uring submission. Those that find a client's buffer
    /// full are queued, in order; a client whose send fails is dropped.
    pub(super) fn flush_outbox(&mut self) {
        // Most calls (each turn's end, each drop) find it empty.
        if self.outbox.as_ref().is_none_or(|ob| ob.is_empty()) {
            return;
        }
        let Some(mut ob) = self.outbox.take() else {
            return;
        };
        let conns = &self.conns;
        let sockets = &self.sockets;
        ob.arrange(|h| outbox::Target {
            sock: conns
                .get(h.slot)
                .filter(|c| c.id == h.conn)
                .map(|c| c.fd.as_raw_fd()),
            fd: h.entry.and_then(|(es, eid)| {
                sockets
                    .get(es)
                    .filter(|e| e.id == eid)
                    .map(|e| e.fd.as_raw_fd())
            }),
        });
        let attach = |h: &outbox::Held| h.entry.map(|(es, eid)| Attach::Entry(es, eid));
        if ob.held().nth(1).is_none() {
            // One reply: a sendmsg costs what a submission does.
            let h = ob.held().next().unwrap();
            let alive = self.conns.get(h.slot).is_some_and(|c| c.id == h.conn);
            let r = alive.then(|| match self.send_now(h.slot, ob.bytes_of(h), &attach(h)) {
                Ok(()) => 0,
                Err(e) => -e,
            });
            ob.sent_one(r);
        } else if let Err(why) = ob.send() {
            // The kernel may still read the outbox: it is leaked, replies
            // go out one by one from now on, and the clients whose
            // replies' fate is unknown are dropped.
            self.log_at(
                Level::Error,
                format_args!("{why}; sending replies one by one from now on"),
            );
            let gone: Vec<(usize, u64)> = ob.held().map(|h| (h.slot, h.conn)).collect();
            std::mem::forget(ob);
            for (slot, id) in gone {
                if self.conns.get(slot).is_some_and(|c| c.id == id) {
                    self.drop_conn(slot, "reply lost to io_uring");
                }
            }
            return;
        }
        for (h, r) in ob.results() {
            if self.conns.get(h.slot).is_none_or(|c| c.id != h.conn) {
                continue;
            }
            match r {
                outbox::Outcome::Sent | outbox::Outcome::Gone => {}
                outbox::Outcome::Full => self.enqueue(h.slot, ob.bytes_of(h), attach(h)),
                outbox::Outcome::Failed(e) => {
                    let why = format!("send failed: {}", sockpass::strerror(e));
                    self.drop_conn(h.slot, &why);
                }
            }
        }
        ob.clear();
        self.outbox = Some(ob);
    }

    /// Send queued replies; returns false if the connection was dropped.
    pub(super) fn flush(&mut self, slot: usize) -> bool {
        loop {
            let Some(c) = self.conns.get(slot) else {
                return false;
            };
            let Some(o) = c.outq.front() else { break };
            let own = own_description(&o.attach);
            let fds = match &own {
                Some(f) => AttachedFds::One(Some(f.as_fd())),
                None => self.attached_fds(&o.attach),
            };
            match send_fds(c.fd.as_fd(), &o.bytes, fds.as_slice(), libc::MSG_DONTWAIT) {
                Ok(_) => {
                    self.conns.get_mut(slot).unwrap().outq.pop_front();
                }
                Err(libc::EAGAIN) => return true,
                Err(e) => {
                    let why = format!("send failed: {}", sockpass::strerror(e));
                    self.drop_conn(slot, &why);
                    return false;
                }
            }
        }
        let c = self.conns.get_mut(slot).unwrap();
        let was_paused = c.paused;
        c.paused = false;
        let raw = c.fd.as_raw_fd();
        let _ = self.epoll.ctl(
            libc::EPOLL_CTL_MOD,
            raw,
            (libc::EPOLLIN | libc::EPOLLRDHUP) as u32,
            EV_CONN_BASE + slot as u64,
        );
        if was_paused {
            // Requests may be waiting that no new EPOLLIN edge will announce.
            self.read_requests(slot);
        }
        self.conns.get(slot).is_some()
    }

    pub(super) fn drop_conn(&mut self, slot: usize, why: &str) {
        // Replies held for it (an error that explains the drop) go first.
        self.flush_outbox();
        let Some(c) = self.conns.remove(slot) else {
            return;
        };
        let _ = self.epoll.ctl(libc::EPOLL_CTL_DEL, c.fd.as_raw_fd(), 0, 0);
        let n = c.refs.len();
        for &r in &c.refs {
            self.drop_reference(r);
        }
        self.users.get_mut(c.user).conns -= 1;
        self.users.forget_if_idle(c.user);
        self.changed();
        if self.spare_refs.len() < SPARE_REFS && c.refs.capacity() <= SPARE_REFS {
            let mut refs = c.refs;
            refs.clear();
            self.spare_refs.push(refs);
        }
        if n > 0 || why != "disconnected" {
            self.log_noisy(
                Noisy::Gone,
                Level::Info,
                format_args!(
                    "client {} (pid {} uid {}) gone ({why}), {n} reference(s) dropped",
                    c.id, c.creds.pid, c.creds.uid
                ),
            );
        }
    }
}
