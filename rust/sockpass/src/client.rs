//! The blocking broker client.
//!
//! One [`Client`] is one connection, and the connection is the lease: when it
//! closes, the broker drops every reference the client held. A client never
//! reconnects by itself; after [`Kind::BrokerUnavailable`] the caller decides.

use crate::error::{Error, Kind, Result};
use crate::fdpass::{recv_fds_into_uninit, send_fds, RecvError};
use crate::keyhash::KeyedState;
use crate::proto::{self, ty, Counters, Header, Reader, StatusRow};
use crate::share::ShareMode;
use crate::spec::SocketSpec;
use crate::sys;
use crate::token::Token;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

mod batch;

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

/// One holder of a cached socket, as `status` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HolderStatus {
    pub conn_id: u64,
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
    pub share: ShareMode,
    pub reserved: bool,
    pub app: String,
}

/// A socket the broker holds, with all its references.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketStatus {
    pub id: u64,
    pub spec: SocketSpec,
    pub port: u16,
    pub refs: u32,
    pub holders: Vec<HolderStatus>,
}

/// A snapshot of the broker.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Status {
    pub counters: Counters,
    pub sockets: Vec<SocketStatus>,
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

/// The last request made from its parts (as the C API passes them): the
/// spec parsed from them and the request encoded from it. The same parts
/// again are sent as they are, with a new id, without parsing the address
/// or encoding the spec once more; a spec checked by
/// [`Client::check_parts`] is not parsed again by the request that follows.
/// One buffer holds the message, the address and the application name, and
/// the message is encoded and sent from there: a client's first request
/// allocates once for them, and no request copies its message.
#[derive(Default)]
struct LastParts {
    /// Parsed from `proto`, `port` and the address
    /// (`bytes[msg_end..addr_end]`).
    spec: Option<SocketSpec>,
    proto: i64,
    port: i64,
    /// `bytes[..msg_end]` is a request for `spec` with `share`, `flags` and
    /// the application name `bytes[addr_end..]`.
    encoded: bool,
    share: Option<ShareMode>,
    flags: u8,
    msg_end: usize,
    addr_end: usize,
    bytes: Vec<u8>,
}

impl LastParts {
    /// Was the kept spec made of these parts?
    fn made_of(&self, proto: i64, address: &str, port: i64) -> bool {
        self.spec.is_some()
            && self.proto == proto
            && self.port == port
            && &self.bytes[self.msg_end..self.addr_end] == address.as_bytes()
    }

    /// Is the kept message the request these parts make?
    fn matches(&self, p: &Parts<'_>) -> bool {
        self.encoded
            && self.made_of(p.proto, p.address, p.port)
            && self.share == Some(p.share)
            && self.flags == p.flags
            && &self.bytes[self.addr_end..] == p.app.as_bytes()
    }

    fn msg(&self) -> &[u8] {
        &self.bytes[..self.msg_end]
    }

    /// Parse the socket's parts, and keep them and the spec.
    fn parse(&mut self, proto: i64, address: &str, port: i64) -> Result<()> {
        self.spec = None;
        self.encoded = false;
        self.spec = Some(SocketSpec::from_proto_number(proto, address, port)?);
        (self.proto, self.port) = (proto, port);
        self.bytes.clear();
        // Room for a short message and name too: one allocation, not one
        // per part (and small enough for malloc's per-thread cache).
        self.bytes.reserve(address.len() + 96);
        self.bytes.extend_from_slice(address.as_bytes());
        (self.msg_end, self.addr_end) = (0, self.bytes.len());
        Ok(())
    }

    /// Encode the request `p` makes with `id`, and keep it.
    fn encode(&mut self, id: u32, p: &Parts<'_>) -> Result<()> {
        if !self.made_of(p.proto, p.address, p.port) {
            self.parse(p.proto, p.address, p.port)?;
        }
        self.encoded = false;
        let Some(spec) = &self.spec else {
            unreachable!("parsed above")
        };
        // The message goes first: encoding starts from an empty buffer. The
        // spec was validated when it was parsed.
        let r = proto::encode_request(&mut self.bytes, id, spec, p.share, p.app, p.flags);
        if let Err(e) = r {
            // The kept address may be gone with the buffer's contents.
            self.spec = None;
            self.bytes.clear();
            (self.msg_end, self.addr_end) = (0, 0);
            return Err(e);
        }
        self.msg_end = self.bytes.len();
        self.bytes.extend_from_slice(p.address.as_bytes());
        self.addr_end = self.bytes.len();
        self.bytes.extend_from_slice(p.app.as_bytes());
        (self.share, self.flags, self.encoded) = (Some(p.share), p.flags, true);
        Ok(())
    }
}

/// A socket request in the terms the C API takes: a protocol number, an
/// address string and a port, with the share mode, application name and
/// request flags.
#[derive(Clone, Copy, Debug)]
pub struct Parts<'a> {
    pub proto: i64,
    pub address: &'a str,
    pub port: i64,
    pub share: ShareMode,
    pub app: &'a str,
    pub flags: u8,
}

pub struct Client {
    fd: OwnedFd,
    path: PathBuf,
    next_id: u32,
    broker_pid: u32,
    fd_tokens: HashMap<RawFd, Token, KeyedState>,
    /// References still held whose fd number a later grant reused (the
    /// caller had closed that fd): released by token or by `release_all`.
    unmapped: HashSet<WholeToken, KeyedState>,
    buf: Vec<u8>,
    /// The last message received: room for [`proto::MAX_MSG`] bytes, its
    /// length the message's.
    rbuf: Vec<u8>,
    /// Where a reply's fds land, kept so a request allocates nothing for them.
    fds: Vec<OwnedFd>,
    /// The last request made by parts, encoded ([`Client::request_parts`]).
    last: LastParts,
    /// The broker refused or closed this connection: no call can succeed.
    gone: bool,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("path", &self.path)
            .field("fd", &self.fd.as_raw_fd())
            .field("held", &(self.fd_tokens.len() + self.unmapped.len()))
            .finish()
    }
}

fn unavailable(errno: i32, what: impl std::fmt::Display) -> Error {
    Error::with_errno(
        Kind::BrokerUnavailable,
        errno,
        format!("{what}: {}", crate::error::strerror(errno)),
    )
}

impl Client {
    /// Connect to the broker at the default path (see
    /// [`default_socket_path`]).
    pub fn connect_default() -> Result<Client> {
        Client::connect(default_socket_path())
    }

    /// Connect to the broker at `path`. No message is exchanged yet (as
    /// `s6_fdholder_start`): a broker at its connection limit, or one that
    /// speaks another protocol version, is reported by the first call. Call
    /// [`Client::hello`] to check at once.
    pub fn connect(path: impl AsRef<Path>) -> Result<Client> {
        let path = path.as_ref();
        let fd =
            sys::unix_socket(libc::SOCK_SEQPACKET, false).map_err(|e| Error::os(e, "socket"))?;
        sys::connect_unix(&fd, path.as_os_str().as_bytes()).map_err(|e| {
            unavailable(
                e,
                format_args!("cannot connect to sockpassd at {}", path.display()),
            )
        })?;
        Ok(Client::new(fd, path.to_path_buf()))
    }

    /// A client on a connection to the broker that someone else made and
    /// handed in: how a process in a container that cannot see the broker's
    /// socket path reaches it (its manager connects, then passes the fd, as
    /// `sockpass run --broker-fd` does). The fd must be a connected unix
    /// `SOCK_SEQPACKET` socket; it is taken over (closed on error) and made
    /// CLOEXEC. The broker knows the client by the credentials of whoever
    /// connected: the manager vouches for what it hands in. [`Client::path`]
    /// is empty.
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
            fd,
            path,
            next_id: 1,
            broker_pid: 0,
            fd_tokens: HashMap::default(),
            unmapped: HashSet::default(),
            // Grown by the first message encoded here (a request by parts
            // is encoded in `last`, so a one-request client has none).
            buf: Vec::new(),
            // Received into as it is, never zeroed (see `Client::recv_msg`).
            rbuf: Vec::with_capacity(proto::MAX_MSG),
            fds: Vec::with_capacity(1),
            last: LastParts::default(),
            gone: false,
        }
    }

    /// The version handshake: one round trip that checks the broker speaks
    /// our protocol and will serve this connection (not at its connection
    /// limit). Returns the broker's pid. Optional: every request checks the
    /// version on its own.
    pub fn hello(&mut self) -> Result<u32> {
        let id = self.take_id();
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
        let _max = r.u32()?;
        self.broker_pid = r.u32()?;
        Ok(self.broker_pid)
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

    /// The connection's fd (for callers that poll it to notice the broker going away).
    pub fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Time out replies after `t` (None waits forever, the default).
    pub fn set_timeout(&mut self, t: Option<Duration>) -> Result<()> {
        let tv = match t {
            Some(d) => libc::timeval {
                tv_sec: d.as_secs() as libc::time_t,
                tv_usec: d.subsec_micros().max(if d.is_zero() { 0 } else { 1 })
                    as libc::suseconds_t,
            },
            None => libc::timeval {
                tv_sec: 0,
                tv_usec: 0,
            },
        };
        // SAFETY: tv is a valid timeval.
        let r = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(Error::last_os("setsockopt SO_RCVTIMEO"));
        }
        Ok(())
    }

    fn take_id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        id
    }

    fn send(&mut self) -> Result<()> {
        let r = send_fds(self.fd.as_fd(), &self.buf, &[], 0);
        self.sent(r)
    }

    /// The outcome of sending a message.
    fn sent(&mut self, r: std::result::Result<usize, i32>) -> Result<()> {
        match r {
            Ok(_) => Ok(()),
            Err(e) => Err(self.refusal(unavailable(e, "sending to sockpassd"))),
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
                            self.gone = true;
                            proto::decode_error(&self.rbuf[proto::HEADER_LEN..n]).unwrap_or(e)
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
        self.rbuf.clear();
        let n = recv_fds_into_uninit(
            self.fd.as_fd(),
            &mut self.rbuf.spare_capacity_mut()[..proto::MAX_MSG],
            max_fds,
            flags,
            &mut self.fds,
        )?;
        // SAFETY: the kernel wrote the n bytes it reported (n <= capacity).
        unsafe { self.rbuf.set_len(n) };
        Ok(n)
    }

    /// Receive the reply to `id`; returns its header, length and fd (`max_fds`
    /// is 0 or 1; more is a protocol error and they are closed). An ERROR
    /// reply becomes `Err`.
    fn recv_reply(&mut self, id: u32, max_fds: usize) -> Result<(Header, usize, Option<OwnedFd>)> {
        debug_assert!(max_fds <= 1 && self.fds.is_empty());
        let len = match self.recv_msg(max_fds, 0) {
            Ok(n) => n,
            Err(RecvError::Os(e)) if e == libc::EAGAIN => {
                return Err(Error::with_errno(
                    Kind::Timeout,
                    libc::ETIMEDOUT,
                    "sockpassd did not reply in time",
                ))
            }
            Err(RecvError::Os(e)) => {
                return Err(self.refusal(unavailable(e, "receiving from sockpassd")))
            }
            Err(e) => return Err(e.into_error("reply from sockpassd")),
        };
        // At most one fd (max_fds <= 1): it is the caller's, whatever the
        // reply says, and closed if the reply is an error.
        let fd = self.fds.pop();
        if len == 0 && fd.is_none() {
            return Err(unavailable(
                libc::ECONNRESET,
                "sockpassd closed the connection",
            ));
        }
        let h = Header::parse(&self.rbuf[..len])?;
        // An ERROR with id 0 is about the connection (e.g. the broker's
        // connection limit): the broker closes it after.
        if h.ty == ty::ERROR && h.id == 0 {
            self.gone = true;
            return Err(proto::decode_error(&self.rbuf[proto::HEADER_LEN..len])?);
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
        let id = self.take_id();
        proto::encode_request(&mut self.buf, id, spec, share, app, flags)?;
        self.send()?;
        self.socket_reply(id, "a socket request")
    }

    /// Receive the SOCKET reply to `what` (message `id`) and keep its
    /// reference.
    fn socket_reply(&mut self, id: u32, what: &str) -> Result<Grant> {
        let (h, n, fd) = self.recv_reply(id, 1)?;
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
        let fd = fd.ok_or_else(|| Error::protocol("SOCKET reply carried no file descriptor"))?;
        self.track(fd.as_raw_fd(), token);
        Ok(Grant {
            fd,
            token,
            port,
            cached,
        })
    }

    /// Check that a protocol number, an address and a port make a spec (the
    /// errors [`Client::request_parts`] would give), before the caller
    /// checks its other arguments. The spec is kept for the request that
    /// follows, and the parts of the last request are not parsed again.
    pub fn check_parts(&mut self, proto: i64, address: &str, port: i64) -> Result<()> {
        if !self.last.made_of(proto, address, port) {
            self.last.parse(proto, address, port)?;
        }
        Ok(())
    }

    /// [`Client::request_with_flags`] from the parts as C passes them. The
    /// last request is kept encoded, and the same parts again are sent as
    /// they were (a C daemon that asks for its socket again pays no parsing).
    pub fn request_parts(&mut self, p: Parts<'_>) -> Result<Grant> {
        let id = self.take_id();
        if self.last.matches(&p) {
            proto::set_id(&mut self.last.bytes[..self.last.msg_end], id);
        } else {
            self.last.encode(id, &p)?;
        }
        let r = send_fds(self.fd.as_fd(), self.last.msg(), &[], 0);
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
        let id = self.take_id();
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
        let id = self.take_id();
        proto::encode_token_msg(&mut self.buf, ty::PICKUP, id, token);
        self.send()?;
        self.socket_reply(id, "a pick-up")
    }

    /// Release one reference by token; returns the references left on that
    /// socket (0: the broker closed it).
    pub fn release(&mut self, token: &Token) -> Result<u32> {
        let id = self.take_id();
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
    /// message (RELEASE_MANY), and up to [`PIPELINE_WINDOW`] messages in
    /// flight, not one round trip each. Returns one result per token, in
    /// order; a lost connection or a timeout ends the call with `Err`.
    pub fn release_many(&mut self, tokens: &[Token]) -> Result<Vec<Result<u32>>> {
        let mut out = Vec::with_capacity(tokens.len());
        let res = self.release_batches(tokens, &mut out);
        // Forget what was released, also when the call ends early: one pass
        // over the fd map, not one per token (release_all of n held fds).
        let mut mapped = HashSet::with_hasher(KeyedState::default());
        for (t, r) in tokens.iter().zip(&out) {
            if r.is_ok() && !self.unmapped.remove(&WholeToken(*t)) {
                mapped.insert(WholeToken(*t));
            }
        }
        if !mapped.is_empty() {
            self.fd_tokens
                .retain(|_, t| !mapped.contains(&WholeToken(*t)));
        }
        res.map(|()| out)
    }

    fn release_batches(&mut self, tokens: &[Token], out: &mut Vec<Result<u32>>) -> Result<()> {
        let batches: Vec<&[Token]> = tokens.chunks(proto::MAX_RELEASE_BATCH).collect();
        let (mut sent, mut read) = (0, 0);
        let mut id = self.next_id;
        while read < batches.len() {
            while sent < batches.len() && sent - read < PIPELINE_WINDOW {
                let rid = self.take_id();
                proto::encode_release_many(&mut self.buf, rid, batches[sent])?;
                self.send()?;
                sent += 1;
            }
            let batch = batches[read];
            let this = id;
            read += 1;
            id = id.wrapping_add(1).max(1);
            let (h, n, _) = match self.recv_reply(this, 0) {
                Ok(r) => r,
                // The broker refused this message as a whole (say, one that
                // predates RELEASE_MANY): every token in it fails alike, and
                // the replies still in flight are read, so the connection
                // stays in step.
                Err(e)
                    if !matches!(
                        e.kind(),
                        Kind::BrokerUnavailable | Kind::Protocol | Kind::Timeout
                    ) =>
                {
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
        Ok(())
    }

    /// Release the reference that came with the socket `fd` from this client.
    pub fn release_fd(&mut self, fd: RawFd) -> Result<u32> {
        if fd < 0 {
            return Err(Error::bad_request(format!("invalid file descriptor {fd}")));
        }
        let token = *self.fd_tokens.get(&fd).ok_or_else(|| {
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
        self.fd_tokens.get(&fd).copied()
    }

    /// The references this client holds, by the fd each came with; -1 where
    /// the caller closed that fd and a later grant got its number.
    pub fn held(&self) -> impl Iterator<Item = (RawFd, Token)> + '_ {
        let by_fd = self.fd_tokens.iter().map(|(f, t)| (*f, *t));
        by_fd.chain(self.unmapped.iter().map(|t| (-1, t.0)))
    }

    /// Note a grant's token under its fd. A token already there came with an
    /// fd the caller has closed since (the kernel reused its number): its
    /// reference is still held, so keep it for `release_all`.
    fn track(&mut self, fd: RawFd, token: Token) {
        if let Some(old) = self.fd_tokens.insert(fd, token) {
            self.unmapped.insert(WholeToken(old));
        }
    }

    fn forget(&mut self, token: &Token) {
        if !self.unmapped.remove(&WholeToken(*token)) {
            self.fd_tokens.retain(|_, t| t != token);
        }
    }

    /// Release everything this client holds (also references whose fd the
    /// caller closed); returns how many were released.
    pub fn release_all(&mut self) -> Result<usize> {
        let tokens: Vec<Token> = self
            .fd_tokens
            .values()
            .chain(self.unmapped.iter().map(|t| &t.0))
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
        let exe = match exe {
            Some(p) => p
                .to_str()
                .ok_or_else(|| Error::bad_request("upgrade binary path is not UTF-8"))?,
            None => "",
        };
        let id = self.take_id();
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
        let id = self.take_id();
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
        let mut r = Reader::new(&bytes);
        let rows = r.u32()?;
        let mut sockets: Vec<SocketStatus> = Vec::new();
        let mut index: HashMap<u64, usize> = HashMap::new();
        for _ in 0..rows {
            let row = StatusRow::decode(&mut r)?;
            let i = *index.entry(row.socket_id).or_insert_with(|| {
                sockets.push(SocketStatus {
                    id: row.socket_id,
                    spec: row.spec.clone(),
                    port: row.port,
                    refs: row.refs,
                    holders: Vec::new(),
                });
                sockets.len() - 1
            });
            sockets[i].holders.push(HolderStatus {
                conn_id: row.conn_id,
                pid: row.pid,
                uid: row.uid,
                gid: row.gid,
                share: row.share,
                reserved: row.reserved,
                app: row.app,
            });
        }
        sockets.sort_by_key(|s| s.id);
        Ok(Status { counters, sockets })
    }
}

/// The process-wide default client (BIND10's library style): connected
/// lazily to the default path on first use. After a `BrokerUnavailable`
/// error, or the broker's refusal of the connection, it is discarded, and
/// the next call connects anew (a new lease: the old connection's
/// references were dropped by the broker).
pub fn with_default<R>(f: impl FnOnce(&mut Client) -> Result<R>) -> Result<R> {
    static DEFAULT: OnceLock<Mutex<Option<Client>>> = OnceLock::new();
    let m = DEFAULT.get_or_init(|| Mutex::new(None));
    let mut g = m.lock().unwrap_or_else(|p| p.into_inner());
    if g.is_none() {
        *g = Some(Client::connect_default()?);
    }
    let res = f(g.as_mut().unwrap());
    // Refused (the broker at its connection limit) counts as lost too: the
    // broker closed the connection, and the next call connects anew.
    if matches!(&res, Err(e) if e.kind() == Kind::BrokerUnavailable) || g.as_ref().unwrap().gone {
        *g = None;
    }
    res
}

/// The default broker socket path: `$SOCKPASS_SOCKET`, else
/// `/run/sockpass/sockpassd.sock` for root and
/// `$XDG_RUNTIME_DIR/sockpass/sockpassd.sock` for others.
pub fn default_socket_path() -> PathBuf {
    if let Some(p) = std::env::var_os("SOCKPASS_SOCKET").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/run/sockpass/sockpassd.sock");
    }
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|p| !p.is_empty()) {
        Some(d) => Path::new(&d).join("sockpass/sockpassd.sock"),
        // SAFETY: getuid cannot fail.
        None => PathBuf::from(format!("/run/user/{}/sockpass/sockpassd.sock", unsafe {
            libc::getuid()
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn whole_token_hash_sees_every_byte() {
        // Tokens that differ only past their first 8 bytes (as a broker
        // counting in the last bytes would make them) must not share a hash.
        let s = KeyedState::default();
        let hashes: HashSet<u64> = (0..1000u64)
            .map(|i| {
                let mut b = [7u8; Token::LEN];
                b[16..].copy_from_slice(&i.to_le_bytes());
                s.hash_one(WholeToken(Token::from_bytes(b)))
            })
            .collect();
        assert_eq!(hashes.len(), 1000);
    }

    /// A spec built field by field, not parsed, is validated before anything
    /// is sent: the peer here (not a broker) receives nothing.
    #[test]
    fn an_invalid_built_spec_is_refused_before_sending() {
        let (mine, peer) = crate::fdpass::socketpair(libc::SOCK_SEQPACKET).unwrap();
        let mut c = Client::new(mine, PathBuf::new());
        // Were it sent, the wait for a reply ends instead of hanging.
        c.set_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut built: SocketSpec = "udp:127.0.0.1:53".parse().unwrap();
        built.options.backlog = Some(4);
        let e = c.request_socket(&built, ShareMode::Any, "k").unwrap_err();
        assert_eq!(e.kind(), Kind::BadRequest);
        assert!(e.message().contains("TCP only"), "{e}");
        let e = c.reserve_socket(&built, ShareMode::Any, "k").unwrap_err();
        assert_eq!(e.kind(), Kind::BadRequest);
        let mut buf = [0u8; 64];
        assert_eq!(
            crate::fdpass::recv_fds(peer.as_fd(), &mut buf, 0, libc::MSG_DONTWAIT).unwrap_err(),
            RecvError::Os(libc::EAGAIN),
            "nothing was sent"
        );
    }
}
