//! The blocking broker client.
//!
//! One [`Client`] is one connection, and the connection is the lease: when it
//! closes, the broker drops every reference the client held. A client never
//! reconnects by itself: after a lost connection, a protocol error or a
//! timeout it closes its connection (a reply may still come, and the next
//! one would be out of step), and every later call fails with
//! [`Kind::BrokerUnavailable`] until [`Client::reconnect`]. One protocol
//! error does not close it: a batch or a release refused as longer than the
//! broker takes (one rolled back in place to an older image) is sent once
//! more, repacked to [`proto::MIN_MSG`].
//!
//! Fork: a client made before `fork()` is its parent's. In the child every
//! call fails with [`Kind::BrokerUnavailable`] (errno `ECHILD`) without
//! touching the connection, so nothing the child does reaches the parent's
//! lease; [`Client::reconnect`] makes the child a connection (and a lease)
//! of its own, and dropping the client only closes the child's copy of the
//! fd. Telling costs one atomic load a call ([`crate::forkgen`]).

use crate::error::{Error, Kind, Result};
use crate::fdpass::{recv_fds_into_uninit_or_lost, send_fds, RecvError};
use crate::keyhash::KeyedState;
use crate::proto::{self, ty, Counters, Header, Reader};
use crate::share::ShareMode;
use crate::spec::SocketSpec;
use crate::sys;
use crate::token::Token;
use std::collections::{HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::ops::Range;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod batch;
mod connection;
mod fdmap;
mod parts;
pub mod path;
pub mod shared;
mod spin;
mod status;

pub use spin::MAX_SPIN_US;

use fdmap::FdTokens;
use parts::LastParts;
pub use parts::Parts;
pub use shared::{with_default, SharedClient};
pub use status::{HolderStatus, SocketStatus, Status};

/// A socket handed out by the broker.
#[derive(Debug)]
pub struct Grant {
    /// The socket; owned by the caller, CLOEXEC.
    pub fd: OwnedFd,
    /// Names this reference for release.
    pub token: Token,
    /// The port the socket is bound to (the kernel's pick for port 0).
    pub port: u16,
    /// Served from the broker's cache rather than created for this request.
    pub cached: bool,
}

/// A reservation made for someone else to pick up.
#[derive(Debug, Clone, Copy)]
pub struct Reservation {
    pub token: Token,
    pub port: u16,
}

/// Largest status table a client accepts.
const MAX_STATUS: usize = 64 << 20;

/// Messages a pipelined call keeps in flight. Sending a whole burst before
/// reading deadlocks: the broker's replies fill this socket, it stops reading
/// once it has queued `max_queued_replies`, and our sends then block (about
/// 500 messages at the default socket buffer sizes). 16 unread replies stay
/// below that limit (32) whatever the buffers hold, so the broker reads on.
pub const PIPELINE_WINDOW: usize = 16;

/// A token hashed by all its bytes with a keyed hasher. `Token`'s own hash
/// takes its first 8 bytes, which only sockpassd's random source makes
/// unpredictable; a client must not bet its tables on whatever answers at
/// the socket path (a broker whose tokens differ only in their last bytes
/// made every insert scan the whole set).
#[derive(Clone, Copy, PartialEq, Eq)]
struct WholeToken(Token);

impl Hash for WholeToken {
    fn hash<H: Hasher>(&self, h: &mut H) {
        h.write(self.0.as_bytes());
    }
}

pub struct Client {
    /// None once closed after an error ([`Client::reconnect`] opens anew).
    fd: Option<OwnedFd>,
    path: PathBuf,
    /// The fork generation the connection was made in ([`crate::forkgen`]).
    gen: u64,
    timeout: Option<Duration>,
    /// Poll for a reply this long before blocking ([`Client::set_reply_spin`]).
    spin: Option<Duration>,
    /// Which replies to spin on ([`spin::Pacing`]).
    pacing: spin::Pacing,
    /// When the last request went out (with a spin only): a reply's wait
    /// counts from there, so a client that was preempted after its send
    /// and found the reply waiting still sees how long the broker took.
    sent_at: Option<Instant>,
    /// Why the connection was closed, for the calls that follow.
    closed_by: Option<String>,
    /// The last send failed: the broker got nothing of that call.
    send_failed: bool,
    /// Where the connection's fd number is published for a fork's child to
    /// close (see [`shared`]); -1 is stored before the fd is closed.
    published: Option<Arc<AtomicI32>>,
    next_id: u32,
    broker_pid: u32,
    /// The largest packet the broker said it accepts (HELLO_OK), within
    /// [`proto::MIN_MSG`]..=[`proto::MAX_MSG`]; 0 before the handshake.
    broker_max_msg: usize,
    fd_tokens: FdTokens,
    /// References still held whose fd number a later grant reused (the
    /// caller had closed that fd): released by token or by `release_all`.
    /// A queue in the order they came, not a set: a client that closes each
    /// fd before its next request (a worker that hands its socket on) adds
    /// one here a request, and a push is a store where a set's insert
    /// missed the cache (0.4 µs of a request under B5). A release finds
    /// the oldest and the newest at once and scans for others, as one of a
    /// mapped token scans the fd map.
    unmapped: VecDeque<Token>,
    buf: Vec<u8>,
    /// The last message received: room for [`proto::MAX_MSG`] bytes, its
    /// length the message's.
    rbuf: Vec<u8>,
    /// Where a reply's fds land, kept so a request allocates nothing for them.
    fds: Vec<OwnedFd>,
    /// The last request made by parts, encoded ([`Client::request_parts`]).
    last: LastParts,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("path", &self.path)
            .field("fd", &self.as_raw_fd())
            .field("held", &(self.fd_tokens.len() + self.unmapped.len()))
            .finish()
    }
}

#[cold]
fn unavailable(errno: i32, what: impl std::fmt::Display) -> Error {
    Error::with_errno(
        Kind::BrokerUnavailable,
        errno,
        format!("{what}: {}", crate::error::strerror(errno)),
    )
}

#[cold]
fn timed_out(what: &str) -> Error {
    Error::with_errno(Kind::Timeout, libc::ETIMEDOUT, what)
}

/// Add `r` to `ranges`, joined to the last one if it follows it.
fn add_range(ranges: &mut Vec<Range<usize>>, r: Range<usize>) {
    match ranges.last_mut() {
        Some(last) if last.end == r.start => last.end = r.end,
        _ => ranges.push(r),
    }
}

/// Does `e` leave the connection out of step or gone? Then it is closed: a
/// reply may still come, and would be taken for the next request's.
fn closes_connection(e: &Error) -> bool {
    matches!(
        e.kind(),
        Kind::BrokerUnavailable | Kind::Protocol | Kind::Timeout
    )
}

impl Client {
    /// Connect to the broker at the default path: `$SOCKPASS_SOCKET` if set;
    /// else, for root, the system path; else the per-user path
    /// (`$XDG_RUNTIME_DIR/sockpass/sockpassd.sock`) and, if nobody listens
    /// there, the system path `/run/sockpass/sockpassd.sock`. See
    /// [`path::candidates`].
    pub fn connect_default() -> Result<Client> {
        Client::connect_default_timeout(None)
    }

    /// [`Client::connect_default`] with a timeout for the connect and for
    /// every call after ([`Client::set_timeout`]).
    pub fn connect_default_timeout(timeout: Option<Duration>) -> Result<Client> {
        let paths = path::candidates();
        let mut first = None;
        for p in &paths {
            match Client::connect_timeout(p, timeout) {
                Ok(c) => return Ok(c),
                // Not there (or not ours to use): try the next place.
                Err(e) if e.kind() == Kind::BrokerUnavailable => {
                    first.get_or_insert(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(first.unwrap_or_else(|| unavailable(libc::ENOENT, "no broker path")))
    }

    /// Connect to the broker at `path`. No message is exchanged yet (as
    /// `s6_fdholder_start`): a broker at its connection limit, or one that
    /// speaks another protocol version, is reported by the first call. Call
    /// [`Client::hello`] to check at once. A path too long for a unix
    /// socket address is `ENAMETOOLONG` (an OS error, not "unavailable":
    /// trying again cannot help).
    pub fn connect(path: impl AsRef<Path>) -> Result<Client> {
        Client::connect_timeout(path, None)
    }

    /// [`Client::connect`] with a timeout for the connect (a broker that is
    /// stopped with its backlog full) and for every call after.
    pub fn connect_timeout(path: impl AsRef<Path>, timeout: Option<Duration>) -> Result<Client> {
        let path = path.as_ref();
        let fd = connection::open(path, timeout)?;
        let mut c = Client::new(fd, path.to_path_buf());
        c.timeout = timeout;
        Ok(c)
    }

    /// A client on a connection to the broker that someone else made and
    /// handed in: how a process in a container that cannot see the broker's
    /// socket path reaches it (its manager connects, then passes the fd, as
    /// `sockpass run --broker-fd` does). The fd must be a connected unix
    /// `SOCK_SEQPACKET` socket; it is taken over (closed on error) and made
    /// CLOEXEC. The broker knows the client by the credentials of whoever
    /// connected: the manager vouches for what it hands in. [`Client::path`]
    /// is empty, and such a client cannot [`Client::reconnect`].
    pub fn from_fd(fd: OwnedFd) -> Result<Client> {
        let ty = sys::getsockopt_int(&fd, libc::SOL_SOCKET, libc::SO_TYPE).map_err(|e| {
            Error::with_errno(
                Kind::BadRequest,
                e,
                format!(
                    "the broker connection fd is not a socket: {}",
                    crate::error::strerror(e)
                ),
            )
        })?;
        let domain = sys::getsockopt_int(&fd, libc::SOL_SOCKET, libc::SO_DOMAIN).unwrap_or(-1);
        if domain != libc::AF_UNIX || ty != libc::SOCK_SEQPACKET {
            return Err(Error::with_errno(
                Kind::BadRequest,
                libc::EPROTOTYPE,
                "the broker connection fd is not a unix SOCK_SEQPACKET socket",
            ));
        }
        // SAFETY: fd is open and ours.
        unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
        // A handed-in fd is checked at once: it must lead to a broker.
        let mut c = Client::new(fd, PathBuf::new());
        c.hello()?;
        Ok(c)
    }

    fn new(fd: OwnedFd, path: PathBuf) -> Client {
        Client {
            fd: Some(fd),
            path,
            gen: crate::forkgen::at_connect(),
            timeout: None,
            spin: spin::default_spin(),
            pacing: spin::Pacing::default(),
            sent_at: None,
            closed_by: None,
            send_failed: false,
            published: None,
            next_id: 1,
            broker_pid: 0,
            broker_max_msg: 0,
            fd_tokens: FdTokens::default(),
            unmapped: VecDeque::new(),
            // Grown by the first message encoded here (a request by parts
            // is encoded in `last`, so a one-request client has none).
            buf: Vec::new(),
            // Before the receive buffer: the kept request's bytes and the
            // received fds then sit beside this client's state rather than
            // past the buffer's 4 KiB, on a page of their own that every
            // request touches.
            last: LastParts::with_room(),
            fds: Vec::with_capacity(1),
            // Received into as it is, never zeroed (see `Client::recv_msg`).
            rbuf: Vec::with_capacity(proto::MAX_MSG),
        }
    }

    /// Close the connection and connect anew to the same path (with the
    /// same timeout): a new lease, holding nothing. In the same process the
    /// broker drops every reference the old connection held; in a child
    /// after `fork()` only the child's copy of its parent's connection is
    /// closed, and the parent keeps its references. A client made by
    /// [`Client::from_fd`] has no path and cannot reconnect.
    pub fn reconnect(&mut self) -> Result<()> {
        if self.path.as_os_str().is_empty() {
            return Err(Error::with_errno(
                Kind::BadRequest,
                libc::EINVAL,
                "a client made from a handed-in connection has no path to reconnect to",
            ));
        }
        self.publish(-1);
        self.fd = None;
        self.forget_all();
        let fd = connection::open(&self.path, self.timeout)?;
        self.fd = Some(fd);
        self.publish(self.as_raw_fd());
        self.gen = crate::forkgen::at_connect();
        self.closed_by = None;
        (self.next_id, self.broker_pid, self.broker_max_msg) = (1, 0, 0);
        Ok(())
    }

    /// Is there a connection this process may use (not closed after an
    /// error, not inherited across a fork)?
    pub fn is_usable(&self) -> bool {
        self.fd.is_some() && self.gen == crate::forkgen::current()
    }

    /// Was the connection made in another process (this is a child forked
    /// after it was made)?
    pub fn is_inherited(&self) -> bool {
        self.gen != crate::forkgen::current()
    }

    /// Close the connection after `e` (a lost connection, a protocol error,
    /// a timeout), so no later reply is mistaken for another's; the broker
    /// drops this lease's references. Calls fail until [`Client::reconnect`].
    fn close_after(&mut self, e: &Error) {
        self.publish(-1);
        if self.fd.take().is_some() {
            self.closed_by = Some(e.message().to_string());
        }
        self.forget_all();
    }

    /// Close the connection if `r` says it can no longer be trusted.
    fn settle<T>(&mut self, r: Result<T>) -> Result<T> {
        if let Err(e) = &r {
            if closes_connection(e) {
                self.close_after(e);
            }
        }
        r
    }

    /// Did the last call fail in its send, before the broker got anything?
    /// (Then it may be retried on a new connection.)
    pub fn send_failed(&self) -> bool {
        self.send_failed
    }

    /// Publish the connection's fd number into `cell` from now on.
    pub(crate) fn publish_into(&mut self, cell: Arc<AtomicI32>) {
        cell.store(self.as_raw_fd(), Ordering::Relaxed);
        self.published = Some(cell);
    }

    fn publish(&self, fd: RawFd) {
        if let Some(p) = &self.published {
            p.store(fd, Ordering::Relaxed);
        }
    }

    fn forget_all(&mut self) {
        self.fd_tokens.clear();
        self.unmapped.clear();
    }

    /// The version handshake: one round trip that checks the broker speaks
    /// our protocol and will serve this connection (not at its connection
    /// limit). Returns the broker's pid. Optional: every request checks the
    /// version on its own.
    pub fn hello(&mut self) -> Result<u32> {
        let r = self.hello_inner();
        self.settle(r)
    }

    fn hello_inner(&mut self) -> Result<u32> {
        let id = self.take_id()?;
        proto::encode_hello(&mut self.buf, id);
        self.send()?;
        let (h, n, _) = self.recv_reply(id, 0)?;
        if h.ty != ty::HELLO_OK {
            return Err(Error::protocol(format!(
                "unexpected reply {:#04x} to HELLO",
                h.ty
            )));
        }
        let mut r = Reader::new(&self.rbuf[proto::HEADER_LEN..n]);
        let _version = r.u8()?;
        r.bytes(3)?;
        let max = r.u32()?;
        self.broker_pid = r.u32()?;
        // Every version-1 broker takes MIN_MSG; below that it misspoke.
        self.broker_max_msg = (max as usize).clamp(proto::MIN_MSG, proto::MAX_MSG);
        Ok(self.broker_pid)
    }

    /// The largest packet to send this broker: what it said it accepts, or,
    /// before the handshake, what every version-1 broker accepts.
    fn packet_limit(&self) -> usize {
        match self.broker_max_msg {
            0 => proto::MIN_MSG,
            n => n,
        }
    }

    /// Was `e` the broker's refusal of our message `id` of `sent` bytes as
    /// longer than it takes? Then this connection's limit becomes
    /// [`proto::MIN_MSG`], as if the broker had said so in HELLO_OK, and
    /// the caller sends again, repacked. A broker rolled back in place to an
    /// older image (connections carry over an upgrade) takes MIN_MSG bytes
    /// whatever this one said, answers a longer packet with an ERROR of kind
    /// Protocol under its id, and keeps the connection: breaking off (as
    /// for any other protocol error) would close it, and the broker would
    /// drop every reference it holds. Told by type and size, not by text:
    /// the message just received (`rbuf`) is an ERROR of kind Protocol
    /// answering `id`, and `sent` is over what every broker takes.
    fn limit_lowered_by(&mut self, e: &Error, id: u32, sent: usize) -> bool {
        let refused = e.kind() == Kind::Protocol
            && sent > proto::MIN_MSG
            && Header::parse(&self.rbuf).is_ok_and(|h| h.ty == ty::ERROR && h.id == id)
            && proto::decode_error(&self.rbuf[proto::HEADER_LEN..])
                .is_ok_and(|e| e.kind() == Kind::Protocol);
        if refused {
            self.broker_max_msg = proto::MIN_MSG;
        }
        refused
    }

    /// The broker's socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The broker's pid, as it reported in the handshake ([`Client::hello`],
    /// done now if it was not yet).
    pub fn broker_pid(&mut self) -> Result<u32> {
        if self.broker_pid == 0 {
            return self.hello();
        }
        Ok(self.broker_pid)
    }

    /// The connection's fd (for callers that poll it to notice the broker
    /// going away); -1 once closed.
    pub fn as_raw_fd(&self) -> RawFd {
        self.fd.as_ref().map_or(-1, |f| f.as_raw_fd())
    }

    /// Time out every wait for the broker (a reply, a send, a reconnect's
    /// connect) after `t`; None waits forever, the default. A call that
    /// times out fails with [`Kind::Timeout`] and closes the connection.
    #[inline]
    pub fn set_timeout(&mut self, t: Option<Duration>) -> Result<()> {
        // Inlined: shared clients set theirs before every call, and it has
        // mostly not changed.
        if t == self.timeout {
            return Ok(());
        }
        self.change_timeout(t)
    }

    fn change_timeout(&mut self, t: Option<Duration>) -> Result<()> {
        if let Some(fd) = &self.fd {
            if self.gen == crate::forkgen::current() {
                connection::set_timeouts(fd, t)?;
            }
        }
        self.timeout = t;
        Ok(())
    }

    /// The timeout set by [`Client::set_timeout`].
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// Poll for each reply for up to `spin` before blocking on it (None or
    /// zero: block at once). It saves the cross-CPU wake-up when the broker
    /// answers from another CPU within the spin. The client spins only
    /// while its recent round trips came within the spin and a wake-up;
    /// when they wait behind other clients' it blocks at once. The default
    /// comes from `SOCKPASS_SPIN_US` (unset: no spin). At most
    /// [`MAX_SPIN_US`] µs.
    pub fn set_reply_spin(&mut self, spin: Option<Duration>) {
        self.spin = spin
            .filter(|d| !d.is_zero())
            .map(|d| d.min(Duration::from_micros(MAX_SPIN_US)));
    }

    /// The spin set by [`Client::set_reply_spin`] (or `SOCKPASS_SPIN_US`).
    pub fn reply_spin(&self) -> Option<Duration> {
        self.spin
    }

    /// The next message id, if this process may use the connection: every
    /// call starts here.
    fn take_id(&mut self) -> Result<u32> {
        self.send_failed = false;
        self.usable()?;
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        Ok(id)
    }

    /// Fail if this process may not use the connection (see [`Client::is_usable`]).
    fn usable(&self) -> Result<()> {
        if self.gen != crate::forkgen::current() {
            return Err(Error::with_errno(
                Kind::BrokerUnavailable,
                libc::ECHILD,
                "this sockpass client was made before fork(): its connection is the parent's; reconnect for one of this process's own",
            ));
        }
        if self.fd.is_none() {
            let why = self.closed_by.as_deref().unwrap_or("closed");
            return Err(Error::with_errno(
                Kind::BrokerUnavailable,
                libc::ENOTCONN,
                format!("the connection to sockpassd was closed after an error ({why}); reconnect"),
            ));
        }
        Ok(())
    }

    /// The connection (take_id checked there is one).
    fn sock(&self) -> std::os::fd::BorrowedFd<'_> {
        match &self.fd {
            Some(f) => f.as_fd(),
            None => unreachable!("take_id checks the connection"),
        }
    }

    fn send(&mut self) -> Result<()> {
        let r = send_fds(self.sock(), &self.buf, &[], 0);
        self.sent(r)
    }

    /// The outcome of sending a message.
    // `.text.hot.sockpass`: the functions of the cached request's path,
    // placed together by the linker (docs/ARCHITECTURE.md, "hot path").
    #[link_section = ".text.hot.sockpass"]
    fn sent(&mut self, r: std::result::Result<usize, i32>) -> Result<()> {
        match r {
            Ok(_) => {
                if self.spin.is_some() {
                    self.sent_at = Some(Instant::now());
                }
                Ok(())
            }
            Err(libc::EAGAIN) => Err(timed_out("sockpassd did not take the request in time")),
            Err(e) => {
                self.send_failed = true;
                Err(self.refusal(unavailable(e, "sending to sockpassd")))
            }
        }
    }

    /// `e`, a lost connection, or the reason the broker gave: the ERROR
    /// with id 0 a broker at its connection limit sends before it closes.
    /// Closing with our request unread resets the connection, and the reset
    /// is reported before that message, so look for it.
    fn refusal(&mut self, e: Error) -> Error {
        // A pending reset may be reported once more before the message.
        for _ in 0..2 {
            match self.recv_msg(0, libc::MSG_DONTWAIT) {
                Ok(n) => {
                    return match Header::parse(&self.rbuf[..n]) {
                        Ok(h) if h.ty == ty::ERROR && h.id == 0 => {
                            let e =
                                proto::decode_error(&self.rbuf[proto::HEADER_LEN..n]).unwrap_or(e);
                            self.close_after(&e);
                            e
                        }
                        _ => e,
                    }
                }
                Err(RecvError::Os(libc::ECONNRESET | libc::EPIPE)) => continue,
                Err(_) => return e,
            }
        }
        e
    }

    /// Receive one message into `rbuf`, its fds into `fds`; returns its length.
    fn recv_msg(&mut self, max_fds: usize, flags: i32) -> std::result::Result<usize, RecvError> {
        self.recv_msg_lost(max_fds, flags, &mut false)
    }

    /// [`Client::recv_msg`]; `lost` is set when its fd was lost to `RLIMIT_NOFILE`.
    #[link_section = ".text.hot.sockpass"]
    fn recv_msg_lost(
        &mut self,
        max_fds: usize,
        flags: i32,
        lost: &mut bool,
    ) -> std::result::Result<usize, RecvError> {
        self.rbuf.clear();
        if self.fd.is_none() {
            return Err(RecvError::Os(libc::ENOTCONN));
        }
        let n = match self.spin {
            Some(d) if flags & libc::MSG_DONTWAIT == 0 => {
                self.recv_spun(d, max_fds, flags, lost)?
            }
            _ => self.recv_once(max_fds, flags, lost)?,
        };
        // SAFETY: the kernel wrote the n bytes it reported (n <= capacity).
        unsafe { self.rbuf.set_len(n) };
        Ok(n)
    }

    /// One receive into `rbuf`'s spare capacity (see [`Client::recv_msg_lost`]).
    #[inline(always)]
    fn recv_once(
        &mut self,
        max_fds: usize,
        flags: i32,
        lost: &mut bool,
    ) -> std::result::Result<usize, RecvError> {
        let Some(sock) = &self.fd else {
            return Err(RecvError::Os(libc::ENOTCONN));
        };
        let buf = &mut self.rbuf.spare_capacity_mut()[..proto::MAX_MSG];
        recv_fds_into_uninit_or_lost(sock.as_fd(), buf, max_fds, flags, &mut self.fds, lost)
    }

    /// [`Client::recv_once`] with the reply spin on: out of line, as the
    /// spin is off unless asked for.
    #[inline(never)]
    fn recv_spun(
        &mut self,
        d: Duration,
        max_fds: usize,
        flags: i32,
        lost: &mut bool,
    ) -> std::result::Result<usize, RecvError> {
        // Every round trip is timed, spun or not: the pacing learns from
        // blocking ones when replies come quickly again.
        let start = self.sent_at.take().unwrap_or_else(Instant::now);
        let (got, spun) = match self.pacing.spin_now(d) {
            true => {
                let (got, how) = spin::spin_recv(d, || {
                    self.recv_once(max_fds, flags | libc::MSG_DONTWAIT, lost)
                });
                (got, Some(how))
            }
            false => (None, None),
        };
        let r = got.unwrap_or_else(|| self.recv_once(max_fds, flags, lost));
        self.pacing.record(start.elapsed(), spun);
        r
    }

    /// Receive the reply to `id`; returns its header, length and fd (`max_fds`
    /// is 0 or 1; more is a protocol error and they are closed). An ERROR
    /// reply becomes `Err`.
    fn recv_reply(&mut self, id: u32, max_fds: usize) -> Result<(Header, usize, Option<OwnedFd>)> {
        self.recv_reply_lost(id, max_fds, &mut false)
    }

    /// [`Client::recv_reply`]; a reply whose fd was lost to
    /// `RLIMIT_NOFILE` sets `lost` and comes without it.
    #[link_section = ".text.hot.sockpass"]
    fn recv_reply_lost(
        &mut self,
        id: u32,
        max_fds: usize,
        lost: &mut bool,
    ) -> Result<(Header, usize, Option<OwnedFd>)> {
        debug_assert!(max_fds <= 1 && self.fds.is_empty());
        let len = match self.recv_msg_lost(max_fds, 0, lost) {
            Ok(n) => n,
            Err(RecvError::Os(e)) if e == libc::EAGAIN => {
                return Err(timed_out("sockpassd did not reply in time"))
            }
            Err(RecvError::Os(e)) => {
                return Err(self.refusal(unavailable(e, "receiving from sockpassd")))
            }
            Err(e) => return Err(e.into_error("reply from sockpassd")),
        };
        // At most one fd (max_fds <= 1): it is the caller's, whatever the
        // reply says, and closed if the reply is an error.
        let fd = self.fds.pop();
        if len == 0 && fd.is_none() && !*lost {
            return Err(unavailable(
                libc::ECONNRESET,
                "sockpassd closed the connection",
            ));
        }
        let h = Header::parse(&self.rbuf[..len])?;
        // An ERROR with id 0 is about the connection (e.g. the broker's
        // connection limit): the broker closes it after.
        if h.ty == ty::ERROR && h.id == 0 {
            let e = proto::decode_error(&self.rbuf[proto::HEADER_LEN..len])?;
            self.close_after(&e);
            return Err(e);
        }
        if h.id != id {
            return Err(Error::protocol(format!(
                "reply for request {} while waiting for {id}",
                h.id
            )));
        }
        if h.ty == ty::ERROR {
            return Err(proto::decode_error(&self.rbuf[proto::HEADER_LEN..len])?);
        }
        Ok((h, len, fd))
    }

    /// Ask for a socket. `app` empty means "my executable name".
    pub fn request_socket(
        &mut self,
        spec: &SocketSpec,
        share: ShareMode,
        app: &str,
    ) -> Result<Grant> {
        self.request_with_flags(spec, share, app, 0)
    }

    /// [`Client::request_socket`] with request flags (`proto::REQ_*`).
    pub fn request_with_flags(
        &mut self,
        spec: &SocketSpec,
        share: ShareMode,
        app: &str,
        flags: u8,
    ) -> Result<Grant> {
        spec.validate()?;
        let r = self.request_inner(spec, share, app, flags);
        self.settle(r)
    }

    fn request_inner(
        &mut self,
        spec: &SocketSpec,
        share: ShareMode,
        app: &str,
        flags: u8,
    ) -> Result<Grant> {
        let id = self.take_id()?;
        proto::encode_request(&mut self.buf, id, spec, share, app, flags)?;
        self.send()?;
        self.socket_reply(id, "a socket request")
    }

    /// Receive the SOCKET reply to `what` (message `id`) and keep its
    /// reference.
    #[link_section = ".text.hot.sockpass"]
    fn socket_reply(&mut self, id: u32, what: &str) -> Result<Grant> {
        let mut lost = false;
        let (h, n, fd) = self.recv_reply_lost(id, 1, &mut lost)?;
        if h.ty != ty::SOCKET {
            return Err(Error::protocol(format!(
                "unexpected reply {:#04x} to {what}",
                h.ty
            )));
        }
        let mut r = Reader::new(&self.rbuf[proto::HEADER_LEN..n]);
        let token = r.token()?;
        let port = r.u16()?;
        let cached = r.u8()? != 0;
        if lost {
            return Err(self.give_back_lost(&token, what));
        }
        let fd = fd.ok_or_else(|| Error::protocol("SOCKET reply carried no file descriptor"))?;
        self.track(fd.as_raw_fd(), token);
        Ok(Grant {
            fd,
            token,
            port,
            cached,
        })
    }

    /// The kernel could not give us a reply's fd (RLIMIT_NOFILE), but the
    /// broker counted the reference: give it back, so nothing stays held
    /// that nobody can use. The error to return.
    #[cold]
    fn give_back_lost(&mut self, token: &Token, what: &str) -> Error {
        let e = Error::with_errno(
            Kind::Os,
            libc::EMFILE,
            format!("{what}: the socket could not be received: this process is at RLIMIT_NOFILE (the reference was released)"),
        );
        match self.release_inner(token) {
            Ok(_) => e,
            Err(r) => r,
        }
    }

    /// Check that a protocol number, an address and a port make a spec (the
    /// errors [`Client::request_parts`] would give), before the caller
    /// checks its other arguments. The spec is kept for the request that
    /// follows, and the parts of the last request are not parsed again.
    #[link_section = ".text.hot.sockpass"]
    pub fn check_parts(&mut self, proto: i64, address: &str, port: i64) -> Result<()> {
        if !self.last.made_of(proto, address, port) {
            self.last.parse(proto, address, port)?;
        }
        Ok(())
    }

    /// [`Client::request_with_flags`] from the parts as C passes them. The
    /// last request is kept encoded, and the same parts again are sent as
    /// they were (a C daemon that asks for its socket again pays no parsing).
    #[link_section = ".text.hot.sockpass"]
    pub fn request_parts(&mut self, p: Parts<'_>) -> Result<Grant> {
        let r = self.request_parts_inner(p);
        self.settle(r)
    }

    #[link_section = ".text.hot.sockpass"]
    fn request_parts_inner(&mut self, p: Parts<'_>) -> Result<Grant> {
        let id = self.take_id()?;
        if self.last.matches(&p) {
            proto::set_id(&mut self.last.bytes[..self.last.msg_end], id);
        } else {
            self.last.encode(id, &p)?;
        }
        let r = send_fds(self.sock(), self.last.msg(), &[], 0);
        self.sent(r)?;
        self.socket_reply(id, "a socket request")
    }

    /// Reserve a socket for another process to pick up by token.
    pub fn reserve_socket(
        &mut self,
        spec: &SocketSpec,
        share: ShareMode,
        app: &str,
    ) -> Result<Reservation> {
        spec.validate()?;
        let r = self.reserve_inner(spec, share, app);
        self.settle(r)
    }

    fn reserve_inner(
        &mut self,
        spec: &SocketSpec,
        share: ShareMode,
        app: &str,
    ) -> Result<Reservation> {
        let id = self.take_id()?;
        proto::encode_request(&mut self.buf, id, spec, share, app, proto::REQ_RESERVE)?;
        self.send()?;
        let (h, n, _) = self.recv_reply(id, 0)?;
        if h.ty != ty::RESERVED {
            return Err(Error::protocol(format!(
                "unexpected reply {:#04x} to a reservation",
                h.ty
            )));
        }
        let mut r = Reader::new(&self.rbuf[proto::HEADER_LEN..n]);
        let token = r.token()?;
        let port = r.u16()?;
        Ok(Reservation { token, port })
    }

    /// Pick up a socket reserved for us; the token becomes ours.
    pub fn pickup(&mut self, token: &Token) -> Result<Grant> {
        let r = self.pickup_inner(token);
        self.settle(r)
    }

    fn pickup_inner(&mut self, token: &Token) -> Result<Grant> {
        let id = self.take_id()?;
        proto::encode_token_msg(&mut self.buf, ty::PICKUP, id, token);
        self.send()?;
        self.socket_reply(id, "a pick-up")
    }

    /// Release one reference by token; returns the references left on that
    /// socket (0: the broker closed it).
    pub fn release(&mut self, token: &Token) -> Result<u32> {
        let r = self.release_inner(token);
        self.settle(r)
    }

    fn release_inner(&mut self, token: &Token) -> Result<u32> {
        let id = self.take_id()?;
        proto::encode_token_msg(&mut self.buf, ty::RELEASE, id, token);
        self.send()?;
        let (h, n, _) = self.recv_reply(id, 0)?;
        if h.ty != ty::RELEASED {
            return Err(Error::protocol(format!(
                "unexpected reply {:#04x} to a release",
                h.ty
            )));
        }
        self.forget(token);
        Reader::new(&self.rbuf[proto::HEADER_LEN..n]).u32()
    }

    /// Release many references: up to [`proto::MAX_RELEASE_BATCH`] tokens a
    /// message (RELEASE_MANY; 42 to a broker that takes 1024-byte packets;
    /// more than 42 on a connection that has not said HELLO say it first,
    /// once, to learn the broker's limit), and up to [`PIPELINE_WINDOW`] messages in
    /// flight, not one round trip each. Returns one result per token, in
    /// order; a lost connection or a timeout ends the call with `Err`.
    pub fn release_many(&mut self, tokens: &[Token]) -> Result<Vec<Result<u32>>> {
        // Also with nothing to release: a closed or inherited client says so.
        if let Err(e) = self.usable() {
            return self.settle(Err(e));
        }
        let mut out = Vec::with_capacity(tokens.len());
        let res = self.release_batches(tokens, &mut out);
        let res = self.settle(res);
        // Forget what was released, also when the call ends early: one pass
        // over each table, not one per token (release_all of n held fds).
        // Sized up front: grown from empty, the set rehashed five times
        // for a release_all of 64.
        let mut released: HashSet<WholeToken, KeyedState> =
            HashSet::with_capacity_and_hasher(tokens.len(), KeyedState::default());
        released.extend(
            tokens
                .iter()
                .zip(&out)
                .filter(|(_, r)| r.is_ok())
                .map(|(t, _)| WholeToken(*t)),
        );
        if !released.is_empty() {
            let before = self.unmapped.len();
            self.unmapped
                .retain(|t| !released.contains(&WholeToken(*t)));
            if before - self.unmapped.len() < released.len() {
                self.fd_tokens
                    .retain(|t| !released.contains(&WholeToken(*t)));
            }
        }
        res.map(|()| out)
    }

    fn release_batches(&mut self, tokens: &[Token], out: &mut Vec<Result<u32>>) -> Result<()> {
        if self.broker_max_msg == 0 && tokens.len() > proto::release_batch_for(proto::MIN_MSG) {
            // As for a batch request: learn the broker's limit, once.
            self.hello_inner()?;
        }
        for r in self.release_pass(tokens, out)? {
            // Refused as too long (see `Client::limit_lowered_by`): once
            // more, repacked to the MIN_MSG the limit is now. A refusal
            // again is these tokens' result.
            let mut again = Vec::with_capacity(r.len());
            self.release_pass(&tokens[r.clone()], &mut again)?;
            out.splice(r, again);
        }
        Ok(())
    }

    /// Send `tokens` in RELEASE_MANY messages packed to the packet limit,
    /// pipelined, and add one result per token to `out`. Returns the ranges
    /// of `tokens` to send again: those of messages the broker refused as
    /// too long (their results here are that refusal), and of those not
    /// sent after one.
    fn release_pass(
        &mut self,
        tokens: &[Token],
        out: &mut Vec<Result<u32>>,
    ) -> Result<Vec<Range<usize>>> {
        let per = proto::release_batch_for(self.packet_limit());
        let batches: Vec<&[Token]> = tokens.chunks(per).collect();
        let mut redo: Vec<Range<usize>> = Vec::new();
        let mut refused: Option<Error> = None;
        let (mut sent, mut read) = (0, 0);
        let mut id = self.next_id;
        while read < batches.len() {
            // After a refusal as too long nothing more is sent.
            while sent < batches.len() && sent - read < PIPELINE_WINDOW && refused.is_none() {
                let rid = self.take_id()?;
                proto::encode_release_many(&mut self.buf, rid, batches[sent])?;
                self.send()?;
                sent += 1;
            }
            if read == sent {
                break;
            }
            let batch = batches[read];
            let at = read * per;
            let this = id;
            read += 1;
            id = id.wrapping_add(1).max(1);
            let (h, n, _) = match self.recv_reply(this, 0) {
                Ok(r) => r,
                Err(e) if self.limit_lowered_by(&e, this, proto::release_many_len(batch.len())) => {
                    add_range(&mut redo, at..at + batch.len());
                    out.extend(batch.iter().map(|_| Err(e.clone())));
                    refused = Some(e);
                    continue;
                }
                // The broker refused this message as a whole (say, one that
                // predates RELEASE_MANY): every token in it fails alike, and
                // the replies still in flight are read, so the connection
                // stays in step.
                Err(e) if !closes_connection(&e) => {
                    out.extend(batch.iter().map(|_| Err(e.clone())));
                    continue;
                }
                Err(e) => return Err(e),
            };
            if h.ty != ty::RELEASED_MANY {
                return Err(Error::protocol(format!(
                    "unexpected reply {:#04x} to a release",
                    h.ty
                )));
            }
            out.extend(proto::decode_released_many(
                &self.rbuf[proto::HEADER_LEN..n],
                batch,
            )?);
        }
        if let (Some(e), true) = (refused, read < batches.len()) {
            let at = read * per;
            add_range(&mut redo, at..tokens.len());
            out.extend(tokens[at..].iter().map(|_| Err(e.clone())));
        }
        Ok(redo)
    }

    /// Release the reference that came with the socket `fd` from this client.
    pub fn release_fd(&mut self, fd: RawFd) -> Result<u32> {
        if fd < 0 {
            return Err(Error::bad_request(format!("invalid file descriptor {fd}")));
        }
        // Not "unknown fd" when the connection, and its map, are gone.
        self.usable()?;
        let token = *self.fd_tokens.get(fd).ok_or_else(|| {
            Error::with_errno(
                Kind::UnknownToken,
                libc::ENOENT,
                format!("fd {fd} did not come from this client, or was already released"),
            )
        })?;
        self.release(&token)
    }

    /// The token of a socket fd this client received and has not released.
    pub fn token_of(&self, fd: RawFd) -> Option<Token> {
        self.fd_tokens.get(fd).copied()
    }

    /// The references this client holds, by the fd each came with; -1 where
    /// the caller closed that fd and a later grant got its number.
    pub fn held(&self) -> impl Iterator<Item = (RawFd, Token)> + '_ {
        self.fd_tokens
            .iter()
            .chain(self.unmapped.iter().map(|t| (-1, *t)))
    }

    /// Note a grant's token under its fd. A token already there came with an
    /// fd the caller has closed since (the kernel reused its number): its
    /// reference is still held, so keep it for `release_all`.
    #[link_section = ".text.hot.sockpass"]
    fn track(&mut self, fd: RawFd, token: Token) {
        if let Some(old) = self.fd_tokens.insert(fd, token) {
            self.unmapped.push_back(old);
        }
    }

    fn forget(&mut self, token: &Token) {
        // References are mostly released oldest first or newest first: both
        // ends are found at once, and a removal moves the shorter side.
        let at = if self.unmapped.back() == Some(token) {
            Some(self.unmapped.len() - 1)
        } else {
            self.unmapped.iter().position(|t| t == token)
        };
        match at {
            Some(p) => {
                self.unmapped.remove(p);
            }
            None => self.fd_tokens.retain(|t| t != token),
        }
    }

    /// Release everything this client holds (also references whose fd the
    /// caller closed); returns how many were released.
    pub fn release_all(&mut self) -> Result<usize> {
        let tokens: Vec<Token> = self
            .fd_tokens
            .values()
            .chain(self.unmapped.iter())
            .copied()
            .collect();
        let res = self.release_many(&tokens)?;
        Ok(res.iter().filter(|r| r.is_ok()).count())
    }

    /// Replace the broker's program in place (same pid) with `exe`, or with
    /// the binary it was started from. Every connection, this one included,
    /// stays open and keeps its references; returns the broker's pid once
    /// the new image answers.
    pub fn upgrade(&mut self, exe: Option<&Path>) -> Result<u32> {
        let r = self.upgrade_inner(exe);
        self.settle(r)
    }

    fn upgrade_inner(&mut self, exe: Option<&Path>) -> Result<u32> {
        let exe = match exe {
            Some(p) => p
                .to_str()
                .ok_or_else(|| Error::bad_request("upgrade binary path is not UTF-8"))?,
            None => "",
        };
        let id = self.take_id()?;
        self.buf.clear();
        proto::encode_upgrade(&mut self.buf, id, exe)?;
        self.send()?;
        let (h, n, _) = self.recv_reply(id, 0)?;
        if h.ty != ty::UPGRADED {
            return Err(Error::protocol(format!(
                "unexpected reply {:#04x} to upgrade",
                h.ty
            )));
        }
        Reader::new(&self.rbuf[proto::HEADER_LEN..n]).u32()
    }

    /// A snapshot of every socket the broker holds and who holds it.
    pub fn status(&mut self) -> Result<Status> {
        let r = self.status_inner();
        self.settle(r)
    }

    fn status_inner(&mut self) -> Result<Status> {
        let id = self.take_id()?;
        proto::encode_status(&mut self.buf, id);
        self.send()?;
        let (h, n, fd) = self.recv_reply(id, 1)?;
        if h.ty != ty::STATUS_OK {
            return Err(Error::protocol(format!(
                "unexpected reply {:#04x} to status",
                h.ty
            )));
        }
        let counters = Counters::decode(&mut Reader::new(&self.rbuf[proto::HEADER_LEN..n]))?;
        let table = fd.ok_or_else(|| Error::protocol("STATUS reply carried no table"))?;
        let bytes = crate::memfd::read_all(table, MAX_STATUS)?;
        status::decode(counters, &bytes)
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        // Before the fd closes: a child forked from now on leaves it alone.
        self.publish(-1);
    }
}

/// The default broker socket path: `$SOCKPASS_SOCKET`, else
/// `/run/sockpass/sockpassd.sock` for root and
/// `$XDG_RUNTIME_DIR/sockpass/sockpassd.sock` for others: where a broker
/// binds, and the first place a client looks ([`path::candidates`] lists
/// them all).
pub fn default_socket_path() -> PathBuf {
    path::candidates().remove(0)
}

#[cfg(test)]
mod tests;
