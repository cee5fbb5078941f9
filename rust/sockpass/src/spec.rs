//! What socket is wanted: protocol, address, port and the options that must
//! be set before `bind()`. Parses and prints the string form
//! `udp:127.0.0.1:53`, `tcp:[::1]:8080?backlog=128&reuseport=1`.
//!
//! A spec with its options resolved to their effective values
//! ([`SocketSpec::canonical`]) is the identity of a socket in the broker's
//! cache: two requests share a socket only if their canonical specs are equal.

use crate::error::{Error, Result};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// The kind of socket: an internet transport, a raw IP socket, or a
/// Unix-domain socket of one of three types. Wire numbers are never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    Udp,
    Tcp,
    /// SOCK_RAW with an IP protocol number ([`SocketSpec::ipproto`]).
    Raw,
    UnixStream,
    UnixDgram,
    UnixSeqpacket,
}

impl Proto {
    pub fn wire(self) -> u8 {
        match self {
            Proto::Udp => 1,
            Proto::Tcp => 2,
            Proto::Raw => 3,
            Proto::UnixStream => 4,
            Proto::UnixDgram => 5,
            Proto::UnixSeqpacket => 6,
        }
    }

    pub fn from_wire(v: u8) -> Result<Proto> {
        match v {
            1 => Ok(Proto::Udp),
            2 => Ok(Proto::Tcp),
            3 => Ok(Proto::Raw),
            4 => Ok(Proto::UnixStream),
            5 => Ok(Proto::UnixDgram),
            6 => Ok(Proto::UnixSeqpacket),
            _ => Err(Error::bad_request(format!("unknown protocol number {v}"))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Udp => "udp",
            Proto::Tcp => "tcp",
            Proto::Raw => "raw",
            Proto::UnixStream => "unix",
            Proto::UnixDgram => "unix-dgram",
            Proto::UnixSeqpacket => "unix-seqpacket",
        }
    }

    pub fn is_unix(self) -> bool {
        matches!(
            self,
            Proto::UnixStream | Proto::UnixDgram | Proto::UnixSeqpacket
        )
    }

    /// The socket(2) type.
    pub fn sock_type(self) -> i32 {
        match self {
            Proto::Udp | Proto::UnixDgram => libc::SOCK_DGRAM,
            Proto::Tcp | Proto::UnixStream => libc::SOCK_STREAM,
            Proto::Raw => libc::SOCK_RAW,
            Proto::UnixSeqpacket => libc::SOCK_SEQPACKET,
        }
    }

    /// Can this kind of socket listen()?
    pub fn listens(self) -> bool {
        matches!(self, Proto::Tcp | Proto::UnixStream | Proto::UnixSeqpacket)
    }
}

impl FromStr for Proto {
    type Err = Error;
    fn from_str(s: &str) -> Result<Proto> {
        const NAMES: [(&str, Proto); 7] = [
            ("udp", Proto::Udp),
            ("tcp", Proto::Tcp),
            ("raw", Proto::Raw),
            ("unix", Proto::UnixStream),
            ("unix-stream", Proto::UnixStream),
            ("unix-dgram", Proto::UnixDgram),
            ("unix-seqpacket", Proto::UnixSeqpacket),
        ];
        // No lowercased copy: this runs on every request from C and Python.
        NAMES
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(s))
            .map(|&(_, p)| p)
            .ok_or_else(|| {
                Error::bad_request(format!(
                    "unknown protocol {s:?} (expected udp, tcp, raw, unix, unix-dgram or unix-seqpacket)"
                ))
            })
    }
}

/// Longest Unix socket path (sun_path less its terminating NUL).
pub const MAX_PATH: usize = 107;

/// Longest interface name the kernel accepts (IFNAMSIZ - 1).
pub const MAX_IFNAME: usize = 15;

/// Options set before `bind()`. `None` means "the default": SO_REUSEADDR on,
/// IPV6_V6ONLY on for IPv6 (BIND10's creator defaults), everything else off.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct SocketOptions {
    pub reuseaddr: Option<bool>,
    pub reuseport: Option<bool>,
    pub v6only: Option<bool>,
    pub freebind: Option<bool>,
    pub transparent: Option<bool>,
    pub bindtodevice: Option<String>,
    pub rcvbuf: Option<u32>,
    pub sndbuf: Option<u32>,
    pub mark: Option<u32>,
    /// TCP and Unix stream/seqpacket: `listen()` with this backlog after binding.
    pub backlog: Option<u32>,
    /// Unix only: the socket file's mode (default 0666).
    pub mode: Option<u32>,
    /// Unix only: the socket file's owner, uid and gid (default the broker's).
    pub owner: Option<(u32, u32)>,
}

/// Upper bound on SO_RCVBUF/SO_SNDBUF requests (the kernel doubles them).
pub const MAX_BUFFER: u32 = 1 << 30;
/// Upper bound on a listen backlog (the kernel caps at somaxconn anyway).
pub const MAX_BACKLOG: u32 = 1 << 20;

/// Wire tags of options. Never reuse a number.
mod tag {
    pub const REUSEADDR: u8 = 1;
    pub const REUSEPORT: u8 = 2;
    pub const V6ONLY: u8 = 3;
    pub const FREEBIND: u8 = 4;
    pub const TRANSPARENT: u8 = 5;
    pub const BINDTODEVICE: u8 = 6;
    pub const RCVBUF: u8 = 7;
    pub const SNDBUF: u8 = 8;
    pub const MARK: u8 = 9;
    pub const BACKLOG: u8 = 10;
    pub const MODE: u8 = 11;
    pub const OWNER: u8 = 12;
}

/// Address family bytes on the wire (AF_UNIX is new in the spec encoding;
/// IPv4 and IPv6 keep 4 and 6).
const FAM_UNIX: u8 = 1;

/// A wanted socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketSpec {
    pub proto: Proto,
    /// IP address (unused, 0.0.0.0, for Unix sockets).
    pub addr: IpAddr,
    /// Port (0 for raw and Unix sockets).
    pub port: u16,
    /// Raw sockets: the IP protocol number (1 ICMP, 58 ICMPv6, …); else 0.
    pub ipproto: u8,
    /// Unix sockets: the socket file's absolute path; else empty.
    pub path: String,
    pub options: SocketOptions,
}

/// A spec hashes as its address alone (protocol, IP, port, IP protocol, path):
/// equal specs hash equal, and specs that differ only in options, which
/// the broker never holds side by side on one address, cost no hashing of
/// a dozen options on every cached request.
impl std::hash::Hash for SocketSpec {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.proto.hash(h);
        self.addr.hash(h);
        self.port.hash(h);
        self.ipproto.hash(h);
        self.path.hash(h);
    }
}

impl SocketSpec {
    pub fn new(proto: Proto, addr: IpAddr, port: u16) -> SocketSpec {
        SocketSpec {
            proto,
            addr,
            port,
            ipproto: 0,
            path: String::new(),
            options: SocketOptions::default(),
        }
    }

    /// A raw IP socket for protocol `ipproto` bound to `addr`.
    pub fn raw(addr: IpAddr, ipproto: u8) -> SocketSpec {
        let mut s = SocketSpec::new(Proto::Raw, addr, 0);
        s.ipproto = ipproto;
        s
    }

    /// A Unix-domain socket (`proto` one of the Unix kinds) at `path`.
    pub fn unix(proto: Proto, path: &str) -> SocketSpec {
        let mut s = SocketSpec::new(proto, IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);
        s.path = path.to_string();
        s
    }

    /// Build from the pieces a C or Python caller passes: a protocol name,
    /// an address literal and a port.
    /// For raw sockets `port` is the IP protocol number; for Unix sockets
    /// `addr` is the path and `port` must be 0.
    pub fn from_parts(proto: &str, addr: &str, port: i64) -> Result<SocketSpec> {
        SocketSpec::from_proto(proto.parse()?, addr, port)
    }

    /// [`SocketSpec::from_parts`] with the protocol's number (the wire's,
    /// as C passes it).
    pub fn from_proto_number(proto: i64, addr: &str, port: i64) -> Result<SocketSpec> {
        let proto = u8::try_from(proto)
            .map_err(|_| Error::bad_request(format!("unknown protocol number {proto}")))
            .and_then(Proto::from_wire)?;
        SocketSpec::from_proto(proto, addr, port)
    }

    /// [`SocketSpec::from_parts`] for a protocol already known.
    pub fn from_proto(proto: Proto, addr: &str, port: i64) -> Result<SocketSpec> {
        let spec = if proto.is_unix() {
            if port != 0 {
                return Err(Error::bad_request("Unix sockets have no port (pass 0)"));
            }
            SocketSpec::unix(proto, addr)
        } else if proto == Proto::Raw {
            let n = u8::try_from(port).map_err(|_| {
                Error::bad_request(format!("IP protocol {port} out of range (1..=255)"))
            })?;
            SocketSpec::raw(parse_addr(addr)?, n)
        } else {
            SocketSpec::new(proto, parse_addr(addr)?, check_port(port)?)
        };
        spec.validate()?;
        Ok(spec)
    }

    pub fn is_ipv6(&self) -> bool {
        self.addr.is_ipv6()
    }

    /// Port 0 of UDP or TCP asks for a fresh ephemeral port: never cached,
    /// never shared.
    pub fn is_ephemeral(&self) -> bool {
        self.port == 0 && matches!(self.proto, Proto::Udp | Proto::Tcp)
    }

    /// Reject option combinations that make no sense, before anything is made.
    pub fn validate(&self) -> Result<()> {
        let o = &self.options;
        let p = self.proto;
        let not_for = |name: &str| {
            Err(Error::bad_request(format!(
                "option {name} makes no sense for {} sockets",
                p.as_str()
            )))
        };
        if p.is_unix() {
            validate_path(&self.path)?;
            if self.port != 0 || self.ipproto != 0 {
                return Err(Error::bad_request(
                    "Unix sockets have no port or IP protocol",
                ));
            }
            for (name, set) in [
                ("reuseaddr", o.reuseaddr.is_some()),
                ("reuseport", o.reuseport.is_some()),
                ("v6only", o.v6only.is_some()),
                ("freebind", o.freebind.is_some()),
                ("transparent", o.transparent.is_some()),
                ("bindtodevice", o.bindtodevice.is_some()),
                ("mark", o.mark.is_some()),
            ] {
                if set {
                    return not_for(name);
                }
            }
            if let Some(m) = o.mode {
                if m > 0o777 {
                    return Err(Error::bad_request(format!(
                        "mode {m:o} out of range (0..=0777)"
                    )));
                }
            }
        } else {
            if !self.path.is_empty() {
                return Err(Error::bad_request("only Unix sockets have a path"));
            }
            if o.mode.is_some() {
                return not_for("mode");
            }
            if o.owner.is_some() {
                return not_for("owner");
            }
        }
        if p == Proto::Raw {
            if self.port != 0 {
                return Err(Error::bad_request("raw sockets have no port"));
            }
            match (self.ipproto, self.is_ipv6()) {
                (0, _) => {
                    return Err(Error::bad_request(
                        "raw sockets need an IP protocol (icmp, icmpv6 or 1..=255)",
                    ))
                }
                (IPPROTO_ICMP, true) => {
                    return Err(Error::bad_request("icmp is IPv4; use icmpv6 with IPv6"))
                }
                (IPPROTO_ICMPV6, false) => {
                    return Err(Error::bad_request("icmpv6 is IPv6; use icmp with IPv4"))
                }
                _ => {}
            }
            if o.reuseport.is_some() {
                return not_for("reuseport");
            }
            if o.v6only.is_some() {
                return not_for("v6only");
            }
        } else if self.ipproto != 0 {
            return Err(Error::bad_request("only raw sockets have an IP protocol"));
        }
        if o.v6only.is_some() && (p.is_unix() || !self.is_ipv6()) {
            return Err(Error::bad_request("option v6only applies to IPv6 only"));
        }
        if o.backlog.is_some() && !p.listens() {
            return Err(Error::bad_request(if p == Proto::Udp {
                "option backlog applies to TCP only".to_string()
            } else {
                format!(
                    "option backlog applies to TCP, unix and unix-seqpacket only, not {}",
                    p.as_str()
                )
            }));
        }
        if let Some(b) = o.backlog {
            if b > MAX_BACKLOG {
                return Err(Error::bad_request(format!(
                    "backlog {b} out of range (at most {MAX_BACKLOG})"
                )));
            }
        }
        for (name, v) in [("rcvbuf", o.rcvbuf), ("sndbuf", o.sndbuf)] {
            if let Some(v) = v {
                if v == 0 || v > MAX_BUFFER {
                    return Err(Error::bad_request(format!(
                        "{name} {v} out of range (1..={MAX_BUFFER})"
                    )));
                }
            }
        }
        if let Some(dev) = &o.bindtodevice {
            if dev.is_empty()
                || dev.len() > MAX_IFNAME
                || dev.bytes().any(|b| b == b'/' || b <= b' ')
            {
                return Err(Error::bad_request(format!(
                    "invalid interface name {dev:?}"
                )));
            }
        }
        Ok(())
    }

    /// The spec with every option resolved to its effective value, so that
    /// spelling a default explicitly does not make a different socket.
    pub fn canonical(&self) -> SocketSpec {
        self.clone().into_canonical()
    }

    /// [`SocketSpec::canonical`] in place: the broker canonicalizes every
    /// request it decoded, and a clone was a tenth of that work.
    pub fn into_canonical(mut self) -> SocketSpec {
        let (proto, ipv6) = (self.proto, self.is_ipv6());
        let o = &mut self.options;
        if proto.is_unix() {
            o.mode = Some(o.mode.unwrap_or(0o666));
            return self;
        }
        // SO_REUSEADDR defaults on for TCP only (servers expect to rebind
        // over TIME_WAIT). On UDP it would let any process of any uid that
        // sets it too bind the same address and port and take datagrams
        // meant for a socket held under share mode none.
        o.reuseaddr = Some(o.reuseaddr.unwrap_or(proto == Proto::Tcp));
        // SO_REUSEPORT has no meaning for raw sockets (validate refuses it).
        if proto != Proto::Raw {
            o.reuseport = Some(o.reuseport.unwrap_or(false));
        }
        // The kernel refuses IPV6_V6ONLY on a raw socket (it is already
        // bound to its protocol), so it is not part of a raw socket's identity.
        o.v6only = if ipv6 && proto != Proto::Raw {
            Some(o.v6only.unwrap_or(true))
        } else {
            None
        };
        o.freebind = Some(o.freebind.unwrap_or(false));
        o.transparent = Some(o.transparent.unwrap_or(false));
        self
    }

    /// Name the first option in which two canonical specs differ.
    pub fn differing_option(&self, other: &SocketSpec) -> Option<&'static str> {
        let (a, b) = (&self.options, &other.options);
        macro_rules! cmp {
            ($($f:ident),*) => { $( if a.$f != b.$f { return Some(stringify!($f)); } )* };
        }
        cmp!(
            reuseaddr,
            reuseport,
            v6only,
            freebind,
            transparent,
            bindtodevice,
            rcvbuf,
            sndbuf,
            mark,
            backlog,
            mode,
            owner
        );
        None
    }

    /// Same socket address (protocol, address, port), options aside.
    pub fn same_address(&self, other: &SocketSpec) -> bool {
        self.proto == other.proto
            && self.addr == other.addr
            && self.port == other.port
            && self.ipproto == other.ipproto
            && self.path == other.path
    }

    /// Append the wire encoding (docs/PROTOCOL.md, "socket spec").
    pub fn encode(&self, out: &mut Vec<u8>) {
        // Raw sockets carry their IP protocol number in the port field.
        let port = if self.proto == Proto::Raw {
            self.ipproto as u16
        } else {
            self.port
        };
        match self.addr {
            _ if self.proto.is_unix() => {
                out.push(self.proto.wire());
                out.push(FAM_UNIX);
                out.extend_from_slice(&(self.path.len() as u16).to_le_bytes());
                out.extend_from_slice(self.path.as_bytes());
            }
            IpAddr::V4(a) => encode_ipv4_head(out, self.proto, port, a),
            IpAddr::V6(a) => {
                out.push(self.proto.wire());
                out.push(6);
                out.extend_from_slice(&port.to_le_bytes());
                out.extend_from_slice(&a.octets());
            }
        }
        let n_at = out.len();
        out.push(0);
        let mut n = 0u8;
        let o = &self.options;
        for (t, v) in [
            (tag::REUSEADDR, o.reuseaddr),
            (tag::REUSEPORT, o.reuseport),
            (tag::V6ONLY, o.v6only),
            (tag::FREEBIND, o.freebind),
            (tag::TRANSPARENT, o.transparent),
        ] {
            if let Some(v) = v {
                out.extend_from_slice(&[t, 1, v as u8]);
                n += 1;
            }
        }
        if let Some(d) = &o.bindtodevice {
            out.extend_from_slice(&[tag::BINDTODEVICE, d.len() as u8]);
            out.extend_from_slice(d.as_bytes());
            n += 1;
        }
        for (t, v) in [
            (tag::RCVBUF, o.rcvbuf),
            (tag::SNDBUF, o.sndbuf),
            (tag::MARK, o.mark),
            (tag::BACKLOG, o.backlog),
            (tag::MODE, o.mode),
        ] {
            if let Some(v) = v {
                out.extend_from_slice(&[t, 4]);
                out.extend_from_slice(&v.to_le_bytes());
                n += 1;
            }
        }
        if let Some((u, g)) = o.owner {
            out.extend_from_slice(&[tag::OWNER, 8]);
            out.extend_from_slice(&u.to_le_bytes());
            out.extend_from_slice(&g.to_le_bytes());
            n += 1;
        }
        out[n_at] = n;
    }

    /// Decode from the front of `buf`; returns the spec and the bytes used.
    pub fn decode(buf: &[u8]) -> Result<(SocketSpec, usize)> {
        let mut r = crate::proto::Reader::new(buf);
        let proto = Proto::from_wire(r.u8()?)?;
        let fam = r.u8()?;
        let mut spec = if fam == FAM_UNIX {
            if !proto.is_unix() {
                return Err(Error::bad_request(format!(
                    "a {} socket cannot have a Unix path",
                    proto.as_str()
                )));
            }
            let n = r.u16()? as usize;
            let path = std::str::from_utf8(r.bytes(n)?)
                .map_err(|_| Error::bad_request("Unix socket path is not UTF-8"))?;
            SocketSpec::unix(proto, path)
        } else {
            if proto.is_unix() {
                return Err(Error::bad_request(format!(
                    "a {} socket needs the Unix family",
                    proto.as_str()
                )));
            }
            let port = r.u16()?;
            let addr = match fam {
                4 => {
                    let b = r.bytes(4)?;
                    IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
                }
                6 => {
                    let mut a = [0u8; 16];
                    a.copy_from_slice(r.bytes(16)?);
                    IpAddr::V6(Ipv6Addr::from(a))
                }
                f => return Err(Error::bad_request(format!("unknown address family {f}"))),
            };
            if proto == Proto::Raw {
                let n = u8::try_from(port).map_err(|_| {
                    Error::bad_request(format!("IP protocol {port} out of range (1..=255)"))
                })?;
                SocketSpec::raw(addr, n)
            } else {
                SocketSpec::new(proto, addr, port)
            }
        };
        let n = r.u8()?;
        let mut seen = 0u32;
        for _ in 0..n {
            let t = r.u8()?;
            let len = r.u8()? as usize;
            let v = r.bytes(len)?;
            if t < 32 {
                if seen & (1 << t) != 0 {
                    return Err(Error::bad_request(format!("option {t} given twice")));
                }
                seen |= 1 << t;
            }
            let flag = |v: &[u8]| -> Result<bool> {
                match v {
                    [0] => Ok(false),
                    [1] => Ok(true),
                    _ => Err(Error::bad_request(format!(
                        "option {t}: expected one byte 0 or 1"
                    ))),
                }
            };
            let num = |v: &[u8]| -> Result<u32> {
                let a: [u8; 4] = v
                    .try_into()
                    .map_err(|_| Error::bad_request(format!("option {t}: expected 4 bytes")))?;
                Ok(u32::from_le_bytes(a))
            };
            let o = &mut spec.options;
            match t {
                tag::REUSEADDR => o.reuseaddr = Some(flag(v)?),
                tag::REUSEPORT => o.reuseport = Some(flag(v)?),
                tag::V6ONLY => o.v6only = Some(flag(v)?),
                tag::FREEBIND => o.freebind = Some(flag(v)?),
                tag::TRANSPARENT => o.transparent = Some(flag(v)?),
                tag::BINDTODEVICE => {
                    let s = std::str::from_utf8(v)
                        .map_err(|_| Error::bad_request("interface name is not UTF-8"))?;
                    o.bindtodevice = Some(s.to_string());
                }
                tag::RCVBUF => o.rcvbuf = Some(num(v)?),
                tag::SNDBUF => o.sndbuf = Some(num(v)?),
                tag::MARK => o.mark = Some(num(v)?),
                tag::BACKLOG => o.backlog = Some(num(v)?),
                tag::MODE => o.mode = Some(num(v)?),
                tag::OWNER => {
                    let a: [u8; 8] = v
                        .try_into()
                        .map_err(|_| Error::bad_request(format!("option {t}: expected 8 bytes")))?;
                    o.owner = Some((
                        u32::from_le_bytes(a[..4].try_into().unwrap()),
                        u32::from_le_bytes(a[4..].try_into().unwrap()),
                    ));
                }
                _ => return Err(Error::bad_request(format!("unknown option tag {t}"))),
            }
        }
        spec.validate()?;
        Ok((spec, r.pos()))
    }
}

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_ICMPV6: u8 = 58;

fn ipproto_name(n: u8) -> String {
    match n {
        IPPROTO_ICMP => "icmp".into(),
        IPPROTO_ICMPV6 => "icmpv6".into(),
        n => n.to_string(),
    }
}

/// A Unix socket path: absolute, normalised enough to be one identity, fits
/// sun_path.
fn validate_path(p: &str) -> Result<()> {
    if !p.starts_with('/') {
        return Err(Error::bad_request(format!(
            "Unix socket path {p:?} must be absolute"
        )));
    }
    if p.len() > MAX_PATH {
        return Err(Error::bad_request(format!(
            "Unix socket path is {} bytes, the limit is {MAX_PATH}",
            p.len()
        )));
    }
    if p.ends_with('/')
        || p.contains("//")
        || p.split('/').any(|c| c == "." || c == "..")
        || p.bytes()
            .any(|b| b < 0x20 || b == 0x7f || b == b'?' || b == b'&')
    {
        return Err(Error::bad_request(format!(
            "invalid Unix socket path {p:?} (no '.', '..', '//', trailing '/', '?', '&' or control characters)"
        )));
    }
    Ok(())
}

fn parse_owner(v: &str) -> Result<(u32, u32)> {
    let (u, g) = v
        .split_once(':')
        .ok_or_else(|| Error::bad_request(format!("option owner: expected UID:GID, got {v:?}")))?;
    match (u.parse::<u32>(), g.parse::<u32>()) {
        (Ok(u), Ok(g)) => Ok((u, g)),
        _ => Err(Error::bad_request(format!(
            "option owner: expected numeric UID:GID, got {v:?}"
        ))),
    }
}

/// Parse an IPv4 or IPv6 literal (brackets around IPv6 allowed).
pub fn parse_addr(s: &str) -> Result<IpAddr> {
    let t = s
        .strip_prefix('[')
        .and_then(|x| x.strip_suffix(']'))
        .unwrap_or(s);
    t.parse::<IpAddr>().map_err(|_| {
        Error::bad_request(format!(
            "invalid address {s:?} (expected an IPv4 or IPv6 literal)"
        ))
    })
}

/// Check a port given as a wider integer (as C and Python pass it).
pub fn check_port(port: i64) -> Result<u16> {
    u16::try_from(port)
        .map_err(|_| Error::bad_request(format!("port {port} out of range (0..=65535)")))
}

fn parse_bool(name: &str, v: &str) -> Result<bool> {
    match v {
        "1" | "on" | "true" | "yes" => Ok(true),
        "0" | "off" | "false" | "no" => Ok(false),
        _ => Err(Error::bad_request(format!(
            "option {name}: expected 1/0, on/off, true/false, got {v:?}"
        ))),
    }
}

fn parse_u32(name: &str, v: &str) -> Result<u32> {
    v.parse::<u32>()
        .map_err(|_| Error::bad_request(format!("option {name}: expected a number, got {v:?}")))
}

impl FromStr for SocketSpec {
    type Err = Error;

    /// `PROTO:ADDR:PORT[?opt=val&...]`, ADDR an IPv4 literal or `[IPv6]`.
    fn from_str(s: &str) -> Result<SocketSpec> {
        if let Some(spec) = plain_ipv4(s.as_bytes()) {
            // No options, no path: nothing for `validate` to refuse.
            debug_assert!(spec.validate().is_ok());
            return Ok(spec);
        }
        parse_spec(s)
    }
}

/// The common spec `udp:A.B.C.D:PORT` or `tcp:…` (no options), read in one
/// pass over its bytes: a batch of 64 specs from C spent 60 % of the
/// client's instructions in the general parser, and a third of what was
/// left in this one written with iterators. None for anything else (also
/// what it would refuse): [`parse_spec`] then decides and words the error,
/// so the two agree on every spec this accepts.
fn plain_ipv4(b: &[u8]) -> Option<SocketSpec> {
    let PlainIpv4 { proto, addr, port } = PlainIpv4::parse(b)?;
    Some(SocketSpec::new(proto, IpAddr::V4(addr), port))
}

/// The parts of a plain spec `udp:A.B.C.D:PORT` or `tcp:…` (no options):
/// all a batch from C needs to encode it, without making a [`SocketSpec`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PlainIpv4 {
    pub(crate) proto: Proto,
    pub(crate) addr: Ipv4Addr,
    pub(crate) port: u16,
}

impl PlainIpv4 {
    /// What [`SocketSpec::encode`] writes for the spec these parts make.
    pub(crate) fn encode(self, out: &mut Vec<u8>) {
        encode_ipv4_head(out, self.proto, self.port, self.addr);
        // No options.
        out.push(0);
    }

    /// `b` as a plain spec, or None (see [`plain_ipv4`]).
    pub(crate) fn parse(b: &[u8]) -> Option<PlainIpv4> {
        let proto = match b.get(..4)? {
            b"udp:" => Proto::Udp,
            b"tcp:" => Proto::Tcp,
            _ => return None,
        };
        // A decimal number of at most `max` digits at `*i`: (value, digit
        // count), and `*i` moves past it.
        fn number(b: &[u8], i: &mut usize, max: usize) -> Option<(u32, usize)> {
            let start = *i;
            let mut v = 0u32;
            while let Some(&c) = b.get(*i) {
                if !c.is_ascii_digit() || *i - start == max {
                    break;
                }
                v = v * 10 + u32::from(c - b'0');
                *i += 1;
            }
            let n = *i - start;
            (n > 0).then_some((v, n))
        }
        let mut i = 4;
        let mut ip = [0u8; 4];
        for (k, octet) in ip.iter_mut().enumerate() {
            let start = i;
            let (v, n) = number(b, &mut i, 3)?;
            // No leading zero (as Ipv4Addr's parser).
            if n > 1 && b[start] == b'0' {
                return None;
            }
            *octet = u8::try_from(v).ok()?;
            let end = if k == 3 { b':' } else { b'.' };
            if b.get(i) != Some(&end) {
                return None;
            }
            i += 1;
        }
        let (port, _) = number(b, &mut i, 5)?;
        if i != b.len() {
            return None;
        }
        let port = u16::try_from(port).ok()?;
        Some(PlainIpv4 {
            proto,
            addr: Ipv4Addr::from(ip),
            port,
        })
    }
}

/// A spec's wire encoding up to its options, for an IPv4 address.
fn encode_ipv4_head(out: &mut Vec<u8>, proto: Proto, port: u16, a: Ipv4Addr) {
    let p = port.to_le_bytes();
    let o = a.octets();
    out.extend_from_slice(&[proto.wire(), 4, p[0], p[1], o[0], o[1], o[2], o[3]]);
}

/// The general spec parser (`SocketSpec::from_str`).
fn parse_spec(s: &str) -> Result<SocketSpec> {
    let (main, query) = match s.split_once('?') {
        Some((m, q)) => (m, Some(q)),
        None => (s, None),
    };
    let (proto, rest) = main.split_once(':').ok_or_else(|| {
            Error::bad_request(format!(
                "invalid socket spec {s:?} (expected PROTO:ADDRESS:PORT, raw:PROTO:ADDRESS or unix:/PATH)"
            ))
        })?;
    let proto: Proto = proto.parse()?;
    let mut spec = if proto.is_unix() {
        SocketSpec::unix(proto, rest)
    } else {
        let (addr, last) = rest.rsplit_once(':').ok_or_else(|| {
            Error::bad_request(format!("invalid socket spec {s:?}: missing port"))
        })?;
        // raw:PROTO:ADDRESS puts the protocol first; udp/tcp end with the port.
        let (addr, last) = if proto == Proto::Raw {
            rest.split_once(':').ok_or_else(|| {
                Error::bad_request(format!(
                    "invalid socket spec {s:?} (expected raw:icmp|icmpv6|N:ADDRESS)"
                ))
            })?
        } else {
            (addr, last)
        };
        if addr.contains(':') && !(addr.starts_with('[') && addr.ends_with(']')) {
            return Err(Error::bad_request(format!(
                "invalid socket spec {s:?}: write IPv6 addresses in brackets, [::1]"
            )));
        }
        if proto == Proto::Raw {
            let (ipproto, addr) = (addr, last);
            let n = match ipproto.to_ascii_lowercase().as_str() {
                "icmp" => IPPROTO_ICMP,
                "icmpv6" | "ipv6-icmp" => IPPROTO_ICMPV6,
                x => x.parse::<u8>().map_err(|_| {
                    Error::bad_request(format!(
                        "invalid IP protocol {ipproto:?} (expected icmp, icmpv6 or 1..=255)"
                    ))
                })?,
            };
            if addr.contains(':') && !(addr.starts_with('[') && addr.ends_with(']')) {
                return Err(Error::bad_request(format!(
                    "invalid socket spec {s:?}: write IPv6 addresses in brackets, [::1]"
                )));
            }
            SocketSpec::raw(parse_addr(addr)?, n)
        } else {
            let port = last
                .parse::<i64>()
                .map_err(|_| Error::bad_request(format!("invalid port {last:?}")))?;
            SocketSpec::new(proto, parse_addr(addr)?, check_port(port)?)
        }
    };
    if let Some(q) = query {
        for kv in q.split('&').filter(|x| !x.is_empty()) {
            let (k, v) = kv.split_once('=').unwrap_or((kv, "1"));
            let o = &mut spec.options;
            let dup = match k {
                    "reuseaddr" => o.reuseaddr.replace(parse_bool(k, v)?).is_some(),
                    "reuseport" => o.reuseport.replace(parse_bool(k, v)?).is_some(),
                    "v6only" => o.v6only.replace(parse_bool(k, v)?).is_some(),
                    "freebind" => o.freebind.replace(parse_bool(k, v)?).is_some(),
                    "transparent" => o.transparent.replace(parse_bool(k, v)?).is_some(),
                    "bindtodevice" | "device" => o.bindtodevice.replace(v.to_string()).is_some(),
                    "rcvbuf" => o.rcvbuf.replace(parse_u32(k, v)?).is_some(),
                    "sndbuf" => o.sndbuf.replace(parse_u32(k, v)?).is_some(),
                    "mark" => o.mark.replace(parse_u32(k, v)?).is_some(),
                    "backlog" | "listen" => o.backlog.replace(parse_u32(k, v)?).is_some(),
                    "mode" => o
                        .mode
                        .replace(u32::from_str_radix(v, 8).map_err(|_| {
                            Error::bad_request(format!("option mode: expected an octal mode, got {v:?}"))
                        })?)
                        .is_some(),
                    "owner" => o.owner.replace(parse_owner(v)?).is_some(),
                    _ => {
                        return Err(Error::bad_request(format!(
                            "unknown socket option {k:?} (known: reuseaddr, reuseport, v6only, freebind, transparent, bindtodevice, rcvbuf, sndbuf, mark, backlog, mode, owner)"
                        )))
                    }
                };
            if dup {
                return Err(Error::bad_request(format!("option {k} given twice")));
            }
        }
    }
    spec.validate()?;
    Ok(spec)
}

impl fmt::Display for SocketSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = self.proto.as_str();
        match self.addr {
            _ if self.proto.is_unix() => write!(f, "{p}:{}", self.path)?,
            IpAddr::V4(a) if self.proto == Proto::Raw => {
                write!(f, "{p}:{}:{a}", ipproto_name(self.ipproto))?
            }
            IpAddr::V6(a) if self.proto == Proto::Raw => {
                write!(f, "{p}:{}:[{a}]", ipproto_name(self.ipproto))?
            }
            IpAddr::V4(a) => write!(f, "{p}:{a}:{}", self.port)?,
            IpAddr::V6(a) => write!(f, "{p}:[{a}]:{}", self.port)?,
        }
        let o = &self.options;
        let mut sep = '?';
        let mut put = |f: &mut fmt::Formatter<'_>, k: &str, v: String| {
            let r = write!(f, "{sep}{k}={v}");
            sep = '&';
            r
        };
        let b = |v: bool| if v { "1".to_string() } else { "0".to_string() };
        if let Some(v) = o.reuseaddr {
            put(f, "reuseaddr", b(v))?;
        }
        if let Some(v) = o.reuseport {
            put(f, "reuseport", b(v))?;
        }
        if let Some(v) = o.v6only {
            put(f, "v6only", b(v))?;
        }
        if let Some(v) = o.freebind {
            put(f, "freebind", b(v))?;
        }
        if let Some(v) = o.transparent {
            put(f, "transparent", b(v))?;
        }
        if let Some(v) = &o.bindtodevice {
            put(f, "bindtodevice", v.clone())?;
        }
        if let Some(v) = o.rcvbuf {
            put(f, "rcvbuf", v.to_string())?;
        }
        if let Some(v) = o.sndbuf {
            put(f, "sndbuf", v.to_string())?;
        }
        if let Some(v) = o.mark {
            put(f, "mark", v.to_string())?;
        }
        if let Some(v) = o.backlog {
            put(f, "backlog", v.to_string())?;
        }
        if let Some(v) = o.mode {
            put(f, "mode", format!("{v:04o}"))?;
        }
        if let Some((u, g)) = o.owner {
            put(f, "owner", format!("{u}:{g}"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
