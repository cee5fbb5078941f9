//! The last request a client made from its parts (as the C API passes
//! them), kept parsed and encoded so the same request again costs no
//! parsing or encoding.

use crate::error::Result;
use crate::proto;
use crate::share::ShareMode;
use crate::spec::SocketSpec;

/// The last request made from its parts (as the C API passes them): the
/// spec parsed from them and the request encoded from it. The same parts
/// again are sent as they are, with a new id, without parsing the address
/// or encoding the spec once more; a spec checked by
/// [`Client::check_parts`] is not parsed again by the request that follows.
/// One buffer holds the message, the address and the application name, and
/// the message is encoded and sent from there: a client's first request
/// allocates once for them, and no request copies its message.
#[derive(Default)]
pub(super) struct LastParts {
    /// Parsed from `proto`, `port` and the address
    /// (`bytes[msg_end..addr_end]`).
    pub(super) spec: Option<SocketSpec>,
    proto: i64,
    port: i64,
    /// `bytes[..msg_end]` is a request for `spec` with `share`, `flags` and
    /// the application name `bytes[addr_end..]`.
    encoded: bool,
    share: Option<ShareMode>,
    flags: u8,
    pub(super) msg_end: usize,
    addr_end: usize,
    pub(super) bytes: Vec<u8>,
}

impl LastParts {
    /// With the room [`LastParts::parse`] takes for an IPv4 address,
    /// allocated now.
    pub(super) fn with_room() -> LastParts {
        LastParts {
            bytes: Vec::with_capacity("255.255.255.255".len() + BEYOND_ADDRESS),
            ..LastParts::default()
        }
    }

    /// Was the kept spec made of these parts?
    pub(super) fn made_of(&self, proto: i64, address: &str, port: i64) -> bool {
        self.spec.is_some()
            && self.proto == proto
            && self.port == port
            && same(&self.bytes[self.msg_end..self.addr_end], address.as_bytes())
    }

    /// Is the kept message the request these parts make?
    pub(super) fn matches(&self, p: &Parts<'_>) -> bool {
        self.encoded
            && self.made_of(p.proto, p.address, p.port)
            && self.share == Some(p.share)
            && self.flags == p.flags
            && same(&self.bytes[self.addr_end..], p.app.as_bytes())
    }

    pub(super) fn msg(&self) -> &[u8] {
        &self.bytes[..self.msg_end]
    }

    /// Parse the socket's parts, and keep them and the spec. Out of line,
    /// as is `encode`: a request for the same parts again, the common one,
    /// runs neither, and they stay off its code pages.
    #[inline(never)]
    pub(super) fn parse(&mut self, proto: i64, address: &str, port: i64) -> Result<()> {
        self.spec = None;
        self.encoded = false;
        self.spec = Some(SocketSpec::from_proto_number(proto, address, port)?);
        (self.proto, self.port) = (proto, port);
        self.bytes.clear();
        // Room for a short message and name too: one allocation, not one
        // per part (and small enough for malloc's per-thread cache).
        self.bytes.reserve(address.len() + BEYOND_ADDRESS);
        self.bytes.extend_from_slice(address.as_bytes());
        (self.msg_end, self.addr_end) = (0, self.bytes.len());
        Ok(())
    }

    /// Encode the request `p` makes with `id`, and keep it.
    #[inline(never)]
    pub(super) fn encode(&mut self, id: u32, p: &Parts<'_>) -> Result<()> {
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

/// Room kept beyond the address for the message and the name.
const BEYOND_ADDRESS: usize = 96;

/// `a == b` for the short strings of a request, compared inline: a slice
/// `==` calls libc's memcmp, one more code page for every request to touch.
#[inline]
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y)
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
