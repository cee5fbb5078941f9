//! The broker wire format (documented byte by byte in docs/PROTOCOL.md).
//!
//! Every message is one `SOCK_SEQPACKET` packet: an 8-byte header followed
//! by a payload. Integers are little-endian. fds travel only as `SCM_RIGHTS`
//! on the packet they belong to.

use crate::error::{Error, Kind, Result};
use crate::share::ShareMode;
use crate::spec::SocketSpec;
use crate::token::Token;

pub const VERSION: u8 = 1;
pub const MAGIC: [u8; 4] = *b"SPAS";
/// Largest packet this side sends or accepts (a page). A broker advertises
/// its own in HELLO_OK; a client packs its batches to the smaller of the two.
pub const MAX_MSG: usize = 4096;
/// The packet every version-1 broker accepts (brokers before the 4 KiB
/// limit took 1024 bytes), and the most any reply a client did not size
/// itself takes (an ERROR's message is cut to fit it), so every version-1
/// client reads every reply whole.
pub const MIN_MSG: usize = 1024;
pub const HEADER_LEN: usize = 8;
/// Longest application name.
pub const MAX_APP: usize = 255;

/// Message types. Requests have the high bit clear, replies set. Never reuse.
pub mod ty {
    pub const HELLO: u8 = 0x01;
    pub const REQUEST: u8 = 0x02;
    pub const RELEASE: u8 = 0x03;
    pub const STATUS: u8 = 0x04;
    pub const PICKUP: u8 = 0x05;
    pub const UPGRADE: u8 = 0x06;
    pub const RELEASE_MANY: u8 = 0x07;
    pub const REQUEST_MANY: u8 = 0x08;
    pub const HELLO_OK: u8 = 0x81;
    pub const SOCKET: u8 = 0x82;
    pub const RELEASED: u8 = 0x83;
    pub const STATUS_OK: u8 = 0x84;
    pub const RESERVED: u8 = 0x85;
    pub const UPGRADED: u8 = 0x86;
    pub const RELEASED_MANY: u8 = 0x87;
    pub const SOCKETS: u8 = 0x88;
    pub const ERROR: u8 = 0xFF;
}

/// Most tokens one RELEASE_MANY carries: as many as fit in a packet (170).
pub const MAX_RELEASE_BATCH: usize = release_batch_for(MAX_MSG);

/// Most tokens a RELEASE_MANY of at most `max_msg` bytes carries.
pub const fn release_batch_for(max_msg: usize) -> usize {
    (max_msg - HEADER_LEN - 2) / Token::LEN
}
/// The length of a RELEASE_MANY of `n` tokens.
pub const fn release_many_len(n: usize) -> usize {
    HEADER_LEN + 2 + n * Token::LEN
}

/// Bytes per token in a RELEASED_MANY reply.
pub const RELEASED_ENTRY_LEN: usize = 8;

/// REQUEST flag: reserve the socket for a later PICKUP instead of sending it.
pub const REQ_RESERVE: u8 = 0x01;
/// REQUEST flag: with reuseport, give this requester its own socket in the
/// port's reuseport group instead of sharing one.
pub const REQ_PER_WORKER: u8 = 0x02;
const REQ_KNOWN: u8 = REQ_RESERVE | REQ_PER_WORKER;

/// The fixed header of every message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub version: u8,
    pub ty: u8,
    pub id: u32,
}

impl Header {
    pub fn parse(buf: &[u8]) -> Result<Header> {
        if buf.len() < HEADER_LEN {
            return Err(Error::protocol(format!(
                "message of {} bytes is shorter than the {HEADER_LEN}-byte header",
                buf.len()
            )));
        }
        let h = Header {
            version: buf[0],
            ty: buf[1],
            id: u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]),
        };
        if buf[2] != 0 || buf[3] != 0 {
            return Err(Error::protocol("reserved header bytes are not zero"));
        }
        Ok(h)
    }
}

/// Start a message in `out` (cleared first).
pub fn begin(out: &mut Vec<u8>, ty: u8, id: u32) {
    out.clear();
    out.extend_from_slice(&[VERSION, ty, 0, 0]);
    out.extend_from_slice(&id.to_le_bytes());
}

/// Put `id` in an encoded message's header (a message sent again).
pub fn set_id(msg: &mut [u8], id: u32) {
    msg[4..HEADER_LEN].copy_from_slice(&id.to_le_bytes());
}

/// A bounds-checked little-endian reader.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, pos: 0 }
    }
    pub fn pos(&self) -> usize {
        self.pos
    }
    pub fn rest(&self) -> &'a [u8] {
        &self.buf[self.pos..]
    }
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.buf.len() - self.pos < n {
            return Err(Error::bad_request("message truncated"));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    pub fn u8(&mut self) -> Result<u8> {
        Ok(self.bytes(1)?[0])
    }
    pub fn u16(&mut self) -> Result<u16> {
        let b = self.bytes(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    pub fn u32(&mut self) -> Result<u32> {
        let b = self.bytes(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub fn i32(&mut self) -> Result<i32> {
        Ok(self.u32()? as i32)
    }
    pub fn u64(&mut self) -> Result<u64> {
        let b = self.bytes(8)?;
        Ok(u64::from_le_bytes(b.try_into().unwrap()))
    }
    pub fn token(&mut self) -> Result<Token> {
        let b = self.bytes(Token::LEN)?;
        Ok(Token::from_bytes(b.try_into().unwrap()))
    }
    pub fn end(&self) -> Result<()> {
        if self.pos != self.buf.len() {
            return Err(Error::bad_request(format!(
                "{} trailing bytes after the message",
                self.buf.len() - self.pos
            )));
        }
        Ok(())
    }
}

/// One grant in a SOCKETS reply: token, port, cached, reserved.
pub const GRANT_ENTRY_LEN: usize = Token::LEN + 4;
/// Most specs one REQUEST_MANY carries: as many grants as fit in the reply
/// (145; their fds within the kernel's 253 a message).
pub const MAX_REQUEST_BATCH: usize = request_batch_for(MAX_MSG);

/// Most specs a REQUEST_MANY carries whose SOCKETS reply is at most
/// `max_msg` bytes (36 for the 1024 of older brokers), never more fds than
/// one `SCM_RIGHTS` message holds.
pub const fn request_batch_for(max_msg: usize) -> usize {
    let n = (max_msg - HEADER_LEN - 2) / GRANT_ENTRY_LEN;
    if n < crate::fdpass::MAX_FDS {
        n
    } else {
        crate::fdpass::MAX_FDS
    }
}

/// A decoded request (client → broker).
#[derive(Debug, PartialEq, Eq)]
pub enum Request<'a> {
    Hello {
        min_version: u8,
        max_version: u8,
    },
    Socket(SocketRequest<'a>),
    /// 1 to [`MAX_REQUEST_BATCH`] socket requests, granted all or none.
    SocketMany(Vec<SocketRequest<'a>>),
    Release(Token),
    /// 1 to [`MAX_RELEASE_BATCH`] tokens, released in order.
    ReleaseMany(Tokens<'a>),
    Status,
    Pickup(Token),
    /// Replace the broker's program, keeping every socket and connection;
    /// the path of the new binary, or empty for the configured one.
    Upgrade(&'a str),
}

/// Tokens packed back to back, as RELEASE_MANY carries them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tokens<'a>(&'a [u8]);

impl<'a> Tokens<'a> {
    pub fn len(&self) -> usize {
        self.0.len() / Token::LEN
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn iter(&self) -> impl Iterator<Item = Token> + 'a {
        self.0
            .chunks_exact(Token::LEN)
            .map(|b| Token::from_bytes(b.try_into().unwrap()))
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct SocketRequest<'a> {
    pub spec: SocketSpec,
    pub share: ShareMode,
    pub app: &'a str,
    pub flags: u8,
    /// The spec's bytes as they came, which decode to `spec` again.
    pub wire: &'a [u8],
}

pub fn encode_hello(out: &mut Vec<u8>, id: u32) {
    begin(out, ty::HELLO, id);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&[VERSION, VERSION, 0, 0]);
}

/// A REQUEST for `spec`. The spec is not validated here: the client
/// validates a spec it is handed before encoding it (a spec it parsed was
/// validated by the parse), and the broker validates every spec it decodes.
pub fn encode_request(
    out: &mut Vec<u8>,
    id: u32,
    spec: &SocketSpec,
    share: ShareMode,
    app: &str,
    flags: u8,
) -> Result<()> {
    if app.len() > MAX_APP {
        return Err(Error::bad_request(format!(
            "application name is {} bytes, the limit is {MAX_APP}",
            app.len()
        )));
    }
    begin(out, ty::REQUEST, id);
    out.extend_from_slice(&[share.wire(), flags, app.len() as u8]);
    out.extend_from_slice(app.as_bytes());
    spec.encode(out);
    Ok(())
}

/// The start of a REQUEST_MANY; add its specs with [`encode_request_item`]
/// and then [`finish_request_many`].
pub fn begin_request_many(out: &mut Vec<u8>, id: u32) {
    begin(out, ty::REQUEST_MANY, id);
    out.extend_from_slice(&[0, 0]);
}

/// One spec of a REQUEST_MANY: `share · flags · app len · app · u16 spec
/// len · spec`.
pub fn encode_request_item(
    out: &mut Vec<u8>,
    spec: &SocketSpec,
    share: ShareMode,
    app: &str,
    flags: u8,
) -> Result<()> {
    encode_request_item_with(out, |o| spec.encode(o), share, app, flags)
}

/// [`encode_request_item`] with the spec's bytes written by `spec`.
pub(crate) fn encode_request_item_with(
    out: &mut Vec<u8>,
    spec: impl FnOnce(&mut Vec<u8>),
    share: ShareMode,
    app: &str,
    flags: u8,
) -> Result<()> {
    if app.len() > MAX_APP {
        return Err(Error::bad_request(format!(
            "application name is {} bytes, the limit is {MAX_APP}",
            app.len()
        )));
    }
    out.extend_from_slice(&[share.wire(), flags, app.len() as u8]);
    out.extend_from_slice(app.as_bytes());
    let at = out.len();
    out.extend_from_slice(&[0, 0]);
    spec(out);
    let n = (out.len() - at - 2) as u16;
    out[at..at + 2].copy_from_slice(&n.to_le_bytes());
    Ok(())
}

/// Write the count of specs into a REQUEST_MANY.
pub fn finish_request_many(out: &mut [u8], n: usize) {
    out[HEADER_LEN..HEADER_LEN + 2].copy_from_slice(&(n as u16).to_le_bytes());
}

/// One entry of a SOCKETS reply.
pub fn encode_grant_entry(
    out: &mut Vec<u8>,
    token: &Token,
    port: u16,
    cached: bool,
    reserved: bool,
) {
    out.extend_from_slice(token.as_bytes());
    out.extend_from_slice(&port.to_le_bytes());
    out.extend_from_slice(&[cached as u8, reserved as u8]);
}

/// One entry of a SOCKETS reply, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GrantEntry {
    pub token: Token,
    pub port: u16,
    pub cached: bool,
    /// A reservation: no fd for it in the message.
    pub reserved: bool,
}

/// The entries of a SOCKETS reply (payload after the header).
pub fn decode_sockets(payload: &[u8]) -> Result<Vec<GrantEntry>> {
    let mut r = Reader::new(payload);
    let n = r.u16()? as usize;
    if n == 0 || n > MAX_REQUEST_BATCH {
        return Err(Error::protocol(format!("a SOCKETS reply with {n} entries")));
    }
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(GrantEntry {
            token: r.token()?,
            port: r.u16()?,
            cached: r.u8()? != 0,
            reserved: r.u8()? != 0,
        });
    }
    r.end()?;
    Ok(v)
}

pub fn encode_token_msg(out: &mut Vec<u8>, ty: u8, id: u32, token: &Token) {
    begin(out, ty, id);
    out.extend_from_slice(token.as_bytes());
}

/// A RELEASE_MANY of 1 to [`MAX_RELEASE_BATCH`] tokens.
pub fn encode_release_many(out: &mut Vec<u8>, id: u32, tokens: &[Token]) -> Result<()> {
    if tokens.is_empty() || tokens.len() > MAX_RELEASE_BATCH {
        return Err(Error::bad_request(format!(
            "a RELEASE_MANY carries 1 to {MAX_RELEASE_BATCH} tokens, not {}",
            tokens.len()
        )));
    }
    begin(out, ty::RELEASE_MANY, id);
    out.extend_from_slice(&(tokens.len() as u16).to_le_bytes());
    for t in tokens {
        out.extend_from_slice(t.as_bytes());
    }
    Ok(())
}

/// One entry of a RELEASED_MANY reply: the references left, or why not.
pub fn encode_released_entry(out: &mut Vec<u8>, r: &Result<u32>) {
    let (kind, value) = match r {
        Ok(left) => (0u16, *left as i32),
        Err(e) => (e.kind().wire(), e.errno()),
    };
    out.extend_from_slice(&value.to_le_bytes());
    out.extend_from_slice(&kind.to_le_bytes());
    out.extend_from_slice(&[0, 0]);
}

/// The entries of a RELEASED_MANY reply for `tokens`, in order. A refused
/// token's error is rebuilt here: the reply carries its kind and errno.
pub fn decode_released_many(payload: &[u8], tokens: &[Token]) -> Result<Vec<Result<u32>>> {
    let mut r = Reader::new(payload);
    let n = r.u16()? as usize;
    if n != tokens.len() {
        return Err(Error::protocol(format!(
            "RELEASED_MANY answers {n} tokens, {} were sent",
            tokens.len()
        )));
    }
    let mut out = Vec::with_capacity(n);
    for t in tokens {
        let value = r.i32()?;
        let kind = r.u16()?;
        r.u16()?;
        out.push(match kind {
            0 if value >= 0 => Ok(value as u32),
            0 => {
                return Err(Error::protocol(format!(
                    "RELEASED_MANY: {value} references left"
                )))
            }
            k => {
                let kind = Kind::from_wire(k).unwrap_or(Kind::Os);
                let msg = match kind {
                    Kind::UnknownToken => format!(
                        "unknown token {}: not held by this connection (already released, or another client's)",
                        t.short()
                    ),
                    _ => format!("token {}: refused", t.short()),
                };
                Err(Error::with_errno(kind, value, msg))
            }
        });
    }
    r.end()
        .map_err(|e| Error::protocol(e.message().to_string()))?;
    Ok(out)
}

pub fn encode_upgrade(out: &mut Vec<u8>, id: u32, exe: &str) -> Result<()> {
    if exe.len() > MAX_MSG - HEADER_LEN - 2 {
        return Err(Error::bad_request("upgrade binary path too long"));
    }
    begin(out, ty::UPGRADE, id);
    out.extend_from_slice(&(exe.len() as u16).to_le_bytes());
    out.extend_from_slice(exe.as_bytes());
    Ok(())
}

pub fn encode_status(out: &mut Vec<u8>, id: u32) {
    begin(out, ty::STATUS, id);
}

/// Decode a request; the header has been parsed and its version checked.
/// An application name: UTF-8 without control characters. Printable ASCII,
/// the usual case, is checked in one pass.
pub fn app_name(b: &[u8]) -> Result<&str> {
    if b.iter().all(|&c| (0x20..0x7f).contains(&c)) {
        // SAFETY: printable ASCII is UTF-8.
        return Ok(unsafe { std::str::from_utf8_unchecked(b) });
    }
    let app = std::str::from_utf8(b)
        .map_err(|_| Error::bad_request("application name is not valid UTF-8"))?;
    if app.bytes().any(|c| c < 0x20 || c == 0x7f) {
        return Err(Error::bad_request(
            "application name contains control characters",
        ));
    }
    Ok(app)
}

/// Share mode, flags and application name, as a REQUEST and each spec of
/// a REQUEST_MANY begin.
fn request_head<'a>(r: &mut Reader<'a>) -> Result<(ShareMode, u8, &'a str)> {
    let share = ShareMode::from_wire(r.u8()?)?;
    let flags = r.u8()?;
    if flags & !REQ_KNOWN != 0 {
        return Err(Error::bad_request(format!(
            "unknown request flags {flags:#x}"
        )));
    }
    let n = r.u8()? as usize;
    let app = app_name(r.bytes(n)?)?;
    Ok((share, flags, app))
}

pub fn decode_request<'a>(h: &Header, payload: &'a [u8]) -> Result<Request<'a>> {
    let mut r = Reader::new(payload);
    let req = match h.ty {
        ty::HELLO => {
            if r.bytes(4)? != MAGIC {
                return Err(Error::protocol("bad HELLO magic"));
            }
            let min_version = r.u8()?;
            let max_version = r.u8()?;
            r.u16()?;
            Request::Hello {
                min_version,
                max_version,
            }
        }
        ty::REQUEST => {
            let (share, flags, app) = request_head(&mut r)?;
            let (spec, used) = SocketSpec::decode(r.rest())?;
            let wire = r.bytes(used)?;
            Request::Socket(SocketRequest {
                spec,
                share,
                app,
                flags,
                wire,
            })
        }
        ty::REQUEST_MANY => {
            let n = r.u16()? as usize;
            if n == 0 || n > MAX_REQUEST_BATCH {
                return Err(Error::bad_request(format!(
                    "a REQUEST_MANY carries 1 to {MAX_REQUEST_BATCH} specs, not {n}"
                )));
            }
            let mut v = Vec::with_capacity(n);
            for i in 0..n {
                let item = (|| {
                    let (share, flags, app) = request_head(&mut r)?;
                    let len = r.u16()? as usize;
                    let wire = r.bytes(len)?;
                    let (spec, used) = SocketSpec::decode(wire)?;
                    if used != len {
                        return Err(Error::bad_request(format!(
                            "{} bytes after the spec",
                            len - used
                        )));
                    }
                    Ok(SocketRequest {
                        spec,
                        share,
                        app,
                        flags,
                        wire,
                    })
                })()
                .map_err(|e: Error| e.context(format_args!("spec {i} of {n}")))?;
                v.push(item);
            }
            Request::SocketMany(v)
        }
        ty::RELEASE => Request::Release(r.token()?),
        ty::RELEASE_MANY => {
            let n = r.u16()? as usize;
            if n == 0 || n > MAX_RELEASE_BATCH {
                return Err(Error::bad_request(format!(
                    "a RELEASE_MANY carries 1 to {MAX_RELEASE_BATCH} tokens, not {n}"
                )));
            }
            Request::ReleaseMany(Tokens(r.bytes(n * Token::LEN)?))
        }
        ty::PICKUP => Request::Pickup(r.token()?),
        ty::STATUS => Request::Status,
        ty::UPGRADE => {
            let n = r.u16()? as usize;
            let p = std::str::from_utf8(r.bytes(n)?)
                .map_err(|_| Error::bad_request("upgrade binary path is not UTF-8"))?;
            Request::Upgrade(p)
        }
        t => return Err(Error::bad_request(format!("unknown message type {t:#04x}"))),
    };
    r.end()?;
    Ok(req)
}

/// Append an ERROR reply for `e`.
pub fn encode_error(out: &mut Vec<u8>, id: u32, e: &Error) {
    begin(out, ty::ERROR, id);
    out.extend_from_slice(&e.kind().wire().to_le_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&e.errno().to_le_bytes());
    // Keep the message within the packet every version-1 client reads
    // whole (older ones receive into 1024 bytes), on a char boundary.
    let mut m = e.message();
    let room = MIN_MSG - out.len() - 2;
    if m.len() > room {
        let mut cut = room;
        while !m.is_char_boundary(cut) {
            cut -= 1;
        }
        m = &m[..cut];
    }
    out.extend_from_slice(&(m.len() as u16).to_le_bytes());
    out.extend_from_slice(m.as_bytes());
}

pub fn decode_error(payload: &[u8]) -> Result<Error> {
    let mut r = Reader::new(payload);
    let kind = r.u16()?;
    r.u16()?;
    let errno = r.i32()?;
    let n = r.u16()? as usize;
    let msg = String::from_utf8_lossy(r.bytes(n)?).into_owned();
    let kind = Kind::from_wire(kind).unwrap_or(Kind::Os);
    Ok(Error::with_errno(kind, errno, msg))
}

/// The SOCKET reply: token, bound port, whether it came from the cache.
pub fn encode_socket_reply(
    out: &mut Vec<u8>,
    ty_: u8,
    id: u32,
    token: &Token,
    port: u16,
    cached: bool,
) {
    begin(out, ty_, id);
    out.extend_from_slice(token.as_bytes());
    out.extend_from_slice(&port.to_le_bytes());
    out.extend_from_slice(&[cached as u8, 0]);
}

/// Counters sent with STATUS_OK (the table itself travels in a memfd).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub sockets: u32,
    pub references: u32,
    pub connections: u32,
    pub reservations: u32,
    pub broker_fds: u32,
}

impl Counters {
    pub fn encode(&self, out: &mut Vec<u8>) {
        for v in [
            self.sockets,
            self.references,
            self.connections,
            self.reservations,
            self.broker_fds,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    pub fn decode(r: &mut Reader<'_>) -> Result<Counters> {
        Ok(Counters {
            sockets: r.u32()?,
            references: r.u32()?,
            connections: r.u32()?,
            reservations: r.u32()?,
            broker_fds: r.u32()?,
        })
    }
}

/// One reference in the status table: a socket and one holder of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusRow {
    pub socket_id: u64,
    pub spec: SocketSpec,
    pub port: u16,
    pub refs: u32,
    pub conn_id: u64,
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
    pub share: ShareMode,
    /// The reference is a reservation awaiting pick-up.
    pub reserved: bool,
    pub app: String,
}

impl StatusRow {
    pub fn encode(&self, out: &mut Vec<u8>) {
        StatusRowRef {
            socket_id: self.socket_id,
            spec: &self.spec,
            port: self.port,
            refs: self.refs,
            conn_id: self.conn_id,
            pid: self.pid,
            uid: self.uid,
            gid: self.gid,
            share: self.share,
            reserved: self.reserved,
            app: &self.app,
        }
        .encode(out);
    }

    pub fn decode(r: &mut Reader<'_>) -> Result<StatusRow> {
        let socket_id = r.u64()?;
        let (spec, used) = SocketSpec::decode(r.rest())?;
        r.bytes(used)?;
        let port = r.u16()?;
        let refs = r.u32()?;
        let conn_id = r.u64()?;
        let pid = r.i32()?;
        let uid = r.u32()?;
        let gid = r.u32()?;
        let share = ShareMode::from_wire(r.u8()?)?;
        let reserved = r.u8()? != 0;
        let n = r.u8()? as usize;
        let app = String::from_utf8_lossy(r.bytes(n)?).into_owned();
        Ok(StatusRow {
            socket_id,
            spec,
            port,
            refs,
            conn_id,
            pid,
            uid,
            gid,
            share,
            reserved,
            app,
        })
    }
}

/// A status row by reference: the broker encodes its table without copying
/// each spec and application name first.
pub struct StatusRowRef<'a> {
    pub socket_id: u64,
    pub spec: &'a SocketSpec,
    pub port: u16,
    pub refs: u32,
    pub conn_id: u64,
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
    pub share: ShareMode,
    pub reserved: bool,
    pub app: &'a str,
}

impl StatusRowRef<'_> {
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.socket_id.to_le_bytes());
        self.spec.encode(out);
        out.extend_from_slice(&self.port.to_le_bytes());
        out.extend_from_slice(&self.refs.to_le_bytes());
        out.extend_from_slice(&self.conn_id.to_le_bytes());
        out.extend_from_slice(&self.pid.to_le_bytes());
        out.extend_from_slice(&self.uid.to_le_bytes());
        out.extend_from_slice(&self.gid.to_le_bytes());
        out.extend_from_slice(&[self.share.wire(), self.reserved as u8, self.app.len() as u8]);
        out.extend_from_slice(self.app.as_bytes());
    }
}

/// One uid's counts in the status table: what it uses, or its quota
/// (`u32::MAX`: none).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UidCounts {
    pub connections: u32,
    pub sockets: u32,
    pub references: u32,
    pub reservations: u32,
    /// Status tables open.
    pub status: u32,
}

/// One uid's row in the status table's per-uid section.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UidRow {
    pub uid: u32,
    pub used: UidCounts,
    pub quota: UidCounts,
}

impl UidCounts {
    fn encode(&self, out: &mut Vec<u8>) {
        for v in [
            self.connections,
            self.sockets,
            self.references,
            self.reservations,
            self.status,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }

    fn decode(r: &mut Reader<'_>) -> Result<UidCounts> {
        Ok(UidCounts {
            connections: r.u32()?,
            sockets: r.u32()?,
            references: r.u32()?,
            reservations: r.u32()?,
            status: r.u32()?,
        })
    }
}

impl UidRow {
    /// Encoded size: uid and two sets of five counters.
    pub const LEN: usize = 44;

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.uid.to_le_bytes());
        self.used.encode(out);
        self.quota.encode(out);
    }

    pub fn decode(r: &mut Reader<'_>) -> Result<UidRow> {
        Ok(UidRow {
            uid: r.u32()?,
            used: UidCounts::decode(r)?,
            quota: UidCounts::decode(r)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request_many(items: &[(&str, u8)]) -> Vec<u8> {
        let mut out = Vec::new();
        begin_request_many(&mut out, 7);
        for (spec, flags) in items {
            let spec: SocketSpec = spec.parse().unwrap();
            encode_request_item(&mut out, &spec, ShareMode::Any, "app", *flags).unwrap();
        }
        finish_request_many(&mut out, items.len());
        out
    }

    fn decode(msg: &[u8]) -> Result<Request<'_>> {
        let h = Header::parse(msg).unwrap();
        decode_request(&h, &msg[HEADER_LEN..])
    }

    #[test]
    fn request_many_round_trips_and_refuses_malformed_items() {
        let msg = request_many(&[
            ("udp:127.0.0.1:53", 0),
            ("tcp:[::1]:80?reuseport=1", REQ_PER_WORKER),
        ]);
        let Request::SocketMany(v) = decode(&msg).unwrap() else {
            panic!("not a REQUEST_MANY");
        };
        assert_eq!(v.len(), 2);
        assert_eq!(v[1].spec.to_string(), "tcp:[::1]:80?reuseport=1");
        assert_eq!(
            (v[1].share, v[1].app, v[1].flags),
            (ShareMode::Any, "app", REQ_PER_WORKER)
        );
        // A count that is not the items', 0, or above the maximum.
        for n in [0u16, 3, MAX_REQUEST_BATCH as u16 + 1] {
            let mut m = msg.clone();
            m[HEADER_LEN..HEADER_LEN + 2].copy_from_slice(&n.to_le_bytes());
            assert_eq!(
                decode(&m).unwrap_err().kind(),
                Kind::BadRequest,
                "count {n}"
            );
        }
        // A spec length one byte too long takes the next item's first byte.
        let mut m = msg.clone();
        let at = HEADER_LEN + 2 + 3 + 3;
        m[at] += 1;
        let e = decode(&m).unwrap_err();
        assert!(e.message().starts_with("spec "), "{e}");
        // Trailing bytes after the last item.
        let mut m = msg.clone();
        m.push(0);
        assert_eq!(decode(&m).unwrap_err().kind(), Kind::BadRequest);
    }

    #[test]
    fn sockets_reply_decodes_its_entries() {
        let t = Token::from_bytes([3; Token::LEN]);
        let mut out = Vec::new();
        out.extend_from_slice(&2u16.to_le_bytes());
        encode_grant_entry(&mut out, &t, 53, true, false);
        encode_grant_entry(&mut out, &t, 0, false, true);
        let v = decode_sockets(&out).unwrap();
        assert_eq!(
            v[0],
            GrantEntry {
                token: t,
                port: 53,
                cached: true,
                reserved: false
            }
        );
        assert!(v[1].reserved && !v[1].cached);
        assert!(decode_sockets(&out[..out.len() - 1]).is_err());
        const { assert!(HEADER_LEN + 2 + MAX_REQUEST_BATCH * GRANT_ENTRY_LEN <= MAX_MSG) };
        const { assert!(MAX_REQUEST_BATCH <= crate::fdpass::MAX_FDS) };
        // What older brokers (1024-byte packets) took, and what a page takes.
        assert_eq!(request_batch_for(MIN_MSG), 36);
        assert_eq!(release_batch_for(MIN_MSG), 42);
        assert_eq!((MAX_REQUEST_BATCH, MAX_RELEASE_BATCH), (145, 170));
    }

    #[test]
    fn app_names_are_utf8_without_control_characters() {
        for ok in ["bench", "", "dns resolver", "nsd-é", "~!"] {
            assert_eq!(app_name(ok.as_bytes()).unwrap(), ok);
        }
        // Control characters (ASCII and after a non-ASCII letter), and bytes
        // that are not UTF-8.
        let bad: [&[u8]; 6] = [
            b"a\x01",
            b"a\x7f",
            b"\n",
            b"\xff",
            b"\xc3",
            "é\t".as_bytes(),
        ];
        for bad in bad {
            let e = app_name(bad).unwrap_err();
            assert_eq!(e.kind(), Kind::BadRequest, "{bad:?}");
        }
    }

    #[test]
    fn request_round_trip_and_truncation() {
        let spec: SocketSpec = "udp:127.0.0.1:53".parse().unwrap();
        let mut out = Vec::new();
        encode_request(&mut out, 7, &spec, ShareMode::SameApp, "app", 0).unwrap();
        let h = Header::parse(&out).unwrap();
        assert_eq!(h.id, 7);
        match decode_request(&h, &out[HEADER_LEN..]).unwrap() {
            Request::Socket(r) => {
                assert_eq!(r.spec, spec);
                assert_eq!(r.app, "app");
                assert_eq!(r.share, ShareMode::SameApp);
            }
            other => panic!("{other:?}"),
        }
        for cut in HEADER_LEN..out.len() {
            assert!(decode_request(&h, &out[HEADER_LEN..cut]).is_err());
        }
        let mut longer = out.clone();
        longer.push(0);
        assert!(decode_request(&h, &longer[HEADER_LEN..]).is_err());
    }

    #[test]
    fn release_many_round_trip_and_bounds() {
        let tokens: Vec<Token> = (0..MAX_RELEASE_BATCH as u8)
            .map(|i| Token::from_bytes([i; Token::LEN]))
            .collect();
        let mut out = Vec::new();
        encode_release_many(&mut out, 3, &tokens).unwrap();
        assert!(out.len() <= MAX_MSG);
        let h = Header::parse(&out).unwrap();
        match decode_request(&h, &out[HEADER_LEN..]).unwrap() {
            Request::ReleaseMany(ts) => assert_eq!(ts.iter().collect::<Vec<_>>(), tokens),
            other => panic!("{other:?}"),
        }
        for cut in HEADER_LEN..out.len() {
            assert!(decode_request(&h, &out[HEADER_LEN..cut]).is_err());
        }
        let more: Vec<Token> = (0..=MAX_RELEASE_BATCH as u8)
            .map(|i| Token::from_bytes([i; Token::LEN]))
            .collect();
        assert!(encode_release_many(&mut out, 3, &more).is_err());
        assert!(encode_release_many(&mut out, 3, &[]).is_err());
        // The reply: one entry per token, errors rebuilt from kind and errno.
        let mut reply = Vec::new();
        reply.extend_from_slice(&2u16.to_le_bytes());
        encode_released_entry(&mut reply, &Ok(4));
        let unknown = Error::with_errno(Kind::UnknownToken, libc::ENOENT, "x");
        encode_released_entry(&mut reply, &Err(unknown));
        let got = decode_released_many(&reply, &tokens[..2]).unwrap();
        assert_eq!(got[0], Ok(4));
        let e = got[1].as_ref().unwrap_err();
        assert_eq!((e.kind(), e.errno()), (Kind::UnknownToken, libc::ENOENT));
        assert!(e.message().contains(&tokens[1].short()), "{e}");
        // Counts that disagree, entries cut short or trailing: protocol errors.
        assert!(decode_released_many(&reply, &tokens[..3]).is_err());
        assert!(decode_released_many(&reply[..reply.len() - 1], &tokens[..2]).is_err());
        let mut longer = reply.clone();
        longer.push(0);
        assert!(decode_released_many(&longer, &tokens[..2]).is_err());
    }

    #[test]
    fn error_round_trip_is_bounded() {
        let e = Error::with_errno(Kind::AddressInUse, libc::EADDRINUSE, "é".repeat(2000));
        let mut out = Vec::new();
        encode_error(&mut out, 1, &e);
        assert!(out.len() <= MIN_MSG);
        let back = decode_error(&out[HEADER_LEN..]).unwrap();
        assert_eq!(back.kind(), Kind::AddressInUse);
        assert_eq!(back.errno(), libc::EADDRINUSE);
    }
}
