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

/// Transport protocol of an internet socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    Udp,
    Tcp,
}

impl Proto {
    pub fn wire(self) -> u8 {
        match self {
            Proto::Udp => 1,
            Proto::Tcp => 2,
        }
    }

    pub fn from_wire(v: u8) -> Result<Proto> {
        match v {
            1 => Ok(Proto::Udp),
            2 => Ok(Proto::Tcp),
            _ => Err(Error::bad_request(format!("unknown protocol number {v}"))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Udp => "udp",
            Proto::Tcp => "tcp",
        }
    }
}

impl FromStr for Proto {
    type Err = Error;
    fn from_str(s: &str) -> Result<Proto> {
        if s.eq_ignore_ascii_case("udp") {
            Ok(Proto::Udp)
        } else if s.eq_ignore_ascii_case("tcp") {
            Ok(Proto::Tcp)
        } else {
            Err(Error::bad_request(format!(
                "unknown protocol {s:?} (expected UDP or TCP)"
            )))
        }
    }
}

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
    /// TCP only: `listen()` with this backlog after binding.
    pub backlog: Option<u32>,
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
}

/// A wanted socket.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SocketSpec {
    pub proto: Proto,
    pub addr: IpAddr,
    pub port: u16,
    pub options: SocketOptions,
}

impl SocketSpec {
    pub fn new(proto: Proto, addr: IpAddr, port: u16) -> SocketSpec {
        SocketSpec {
            proto,
            addr,
            port,
            options: SocketOptions::default(),
        }
    }

    /// Build from the pieces a C or Python caller passes: a protocol name,
    /// an address literal and a port.
    pub fn from_parts(proto: &str, addr: &str, port: i64) -> Result<SocketSpec> {
        let proto: Proto = proto.parse()?;
        let addr = parse_addr(addr)?;
        let port = check_port(port)?;
        Ok(SocketSpec::new(proto, addr, port))
    }

    pub fn is_ipv6(&self) -> bool {
        self.addr.is_ipv6()
    }

    /// Port 0 asks for a fresh ephemeral port: never cached, never shared.
    pub fn is_ephemeral(&self) -> bool {
        self.port == 0
    }

    /// Reject option combinations that make no sense, before anything is made.
    pub fn validate(&self) -> Result<()> {
        let o = &self.options;
        if o.v6only.is_some() && !self.is_ipv6() {
            return Err(Error::bad_request("option v6only applies to IPv6 only"));
        }
        if o.backlog.is_some() && self.proto != Proto::Tcp {
            return Err(Error::bad_request("option backlog applies to TCP only"));
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
        let mut c = self.clone();
        let o = &mut c.options;
        o.reuseaddr = Some(o.reuseaddr.unwrap_or(true));
        o.reuseport = Some(o.reuseport.unwrap_or(false));
        o.v6only = if self.is_ipv6() {
            Some(o.v6only.unwrap_or(true))
        } else {
            None
        };
        o.freebind = Some(o.freebind.unwrap_or(false));
        o.transparent = Some(o.transparent.unwrap_or(false));
        c
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
            backlog
        );
        None
    }

    /// Same socket address (protocol, address, port), options aside.
    pub fn same_address(&self, other: &SocketSpec) -> bool {
        self.proto == other.proto && self.addr == other.addr && self.port == other.port
    }

    /// Append the wire encoding (docs/PROTOCOL.md, "socket spec").
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.proto.wire());
        match self.addr {
            IpAddr::V4(a) => {
                out.push(4);
                out.extend_from_slice(&self.port.to_le_bytes());
                out.extend_from_slice(&a.octets());
            }
            IpAddr::V6(a) => {
                out.push(6);
                out.extend_from_slice(&self.port.to_le_bytes());
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
        ] {
            if let Some(v) = v {
                out.extend_from_slice(&[t, 4]);
                out.extend_from_slice(&v.to_le_bytes());
                n += 1;
            }
        }
        out[n_at] = n;
    }

    /// Decode from the front of `buf`; returns the spec and the bytes used.
    pub fn decode(buf: &[u8]) -> Result<(SocketSpec, usize)> {
        let mut r = crate::proto::Reader::new(buf);
        let proto = Proto::from_wire(r.u8()?)?;
        let fam = r.u8()?;
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
        let mut spec = SocketSpec::new(proto, addr, port);
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
                _ => return Err(Error::bad_request(format!("unknown option tag {t}"))),
            }
        }
        spec.validate()?;
        Ok((spec, r.pos()))
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
        let (main, query) = match s.split_once('?') {
            Some((m, q)) => (m, Some(q)),
            None => (s, None),
        };
        let (proto, rest) = main.split_once(':').ok_or_else(|| {
            Error::bad_request(format!(
                "invalid socket spec {s:?} (expected PROTO:ADDRESS:PORT)"
            ))
        })?;
        let proto: Proto = proto.parse()?;
        let (addr, port) = rest.rsplit_once(':').ok_or_else(|| {
            Error::bad_request(format!("invalid socket spec {s:?}: missing port"))
        })?;
        let addr = if addr.contains(':') {
            if !(addr.starts_with('[') && addr.ends_with(']')) {
                return Err(Error::bad_request(format!(
                    "invalid socket spec {s:?}: write IPv6 addresses in brackets, [::1]"
                )));
            }
            parse_addr(addr)?
        } else {
            parse_addr(addr)?
        };
        let port = port
            .parse::<i64>()
            .map_err(|_| Error::bad_request(format!("invalid port {port:?}")))?;
        let port = check_port(port)?;
        let mut spec = SocketSpec::new(proto, addr, port);
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
                    _ => {
                        return Err(Error::bad_request(format!(
                            "unknown socket option {k:?} (known: reuseaddr, reuseport, v6only, freebind, transparent, bindtodevice, rcvbuf, sndbuf, mark, backlog)"
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
}

impl fmt::Display for SocketSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.addr {
            IpAddr::V4(a) => write!(f, "{}:{}:{}", self.proto.as_str(), a, self.port)?,
            IpAddr::V6(a) => write!(f, "{}:[{}]:{}", self.proto.as_str(), a, self.port)?,
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
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_print_round_trip() {
        for s in [
            "udp:127.0.0.1:53",
            "tcp:[::1]:8080",
            "tcp:0.0.0.0:80?reuseport=1&backlog=128",
            "udp:[::]:5353?v6only=0&rcvbuf=65536&mark=7",
            "tcp:127.0.0.1:0?bindtodevice=lo",
        ] {
            let spec: SocketSpec = s.parse().unwrap();
            assert_eq!(spec.to_string(), s);
            let again: SocketSpec = spec.to_string().parse().unwrap();
            assert_eq!(again, spec);
        }
    }

    #[test]
    fn wire_round_trip() {
        let spec: SocketSpec = "tcp:[::1]:80?reuseport=1&backlog=5&bindtodevice=lo&mark=3"
            .parse()
            .unwrap();
        let mut buf = Vec::new();
        spec.encode(&mut buf);
        let (back, used) = SocketSpec::decode(&buf).unwrap();
        assert_eq!(back, spec);
        assert_eq!(used, buf.len());
        for cut in 0..buf.len() {
            assert!(SocketSpec::decode(&buf[..cut]).is_err(), "cut {cut}");
        }
    }

    #[test]
    fn bad_specs() {
        for s in [
            "",
            "udp",
            "udp:1.2.3.4",
            "sctp:1.2.3.4:5",
            "udp:1.2.3.4:65536",
            "udp:1.2.3.4:-1",
            "udp:::1:53",
            "udp:1.2.3.4:53?nosuch=1",
            "udp:1.2.3.4:53?backlog=4",
            "udp:1.2.3.4:53?v6only=1",
            "tcp:1.2.3.4:53?reuseport=2",
            "tcp:1.2.3.4:53?rcvbuf=0",
            "tcp:1.2.3.4:53?backlog=1&backlog=2",
            "tcp:1.2.3.4:53?bindtodevice=averyveryverylongname",
            "tcp:localhost:53",
        ] {
            assert!(s.parse::<SocketSpec>().is_err(), "{s:?} should fail");
        }
    }

    #[test]
    fn canonical_resolves_defaults() {
        let a: SocketSpec = "udp:127.0.0.1:53".parse().unwrap();
        let b: SocketSpec = "udp:127.0.0.1:53?reuseaddr=1".parse().unwrap();
        let c: SocketSpec = "udp:127.0.0.1:53?reuseport=1".parse().unwrap();
        assert_eq!(a.canonical(), b.canonical());
        assert_ne!(a.canonical(), c.canonical());
        assert_eq!(
            a.canonical().differing_option(&c.canonical()),
            Some("reuseport")
        );
        assert!(SocketSpec::from_parts("UDP", "::1", 70000).is_err());
        assert!(SocketSpec::from_parts("Tcp", "[::1]", 80).is_ok());
    }
}
