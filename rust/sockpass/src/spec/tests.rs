//! Unit tests of the spec parser, printer and canonical form.

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
fn raw_and_unix_round_trip() {
    for s in [
        "raw:icmp:127.0.0.1",
        "raw:icmpv6:[::1]?bindtodevice=lo",
        "raw:17:0.0.0.0",
        "unix:/run/app/s.sock?backlog=16&mode=0660&owner=65534:65534",
        "unix-dgram:/tmp/d.sock",
        "unix-seqpacket:/tmp/q.sock?mode=0600",
    ] {
        let spec: SocketSpec = s.parse().unwrap();
        assert_eq!(spec.to_string(), s);
        let mut buf = Vec::new();
        spec.encode(&mut buf);
        let (back, used) = SocketSpec::decode(&buf).unwrap();
        assert_eq!((&back, used), (&spec, buf.len()));
        for cut in 0..buf.len() {
            assert!(SocketSpec::decode(&buf[..cut]).is_err(), "{s} cut {cut}");
        }
    }
    let r: SocketSpec = "raw:icmp:127.0.0.1".parse().unwrap();
    assert_eq!((r.proto, r.ipproto, r.port), (Proto::Raw, 1, 0));
    assert!(!r.is_ephemeral());
    let u: SocketSpec = "unix:/a/b".parse().unwrap();
    assert_eq!(u.canonical().options.mode, Some(0o666));
    assert!(!u.is_ephemeral());
    assert_eq!(
        SocketSpec::from_parts("unix-dgram", "/x/y", 0)
            .unwrap()
            .path,
        "/x/y"
    );
    assert_eq!(
        SocketSpec::from_parts("raw", "::1", 58).unwrap().ipproto,
        58
    );
}

#[test]
fn bad_raw_and_unix_specs() {
    for s in [
        "raw:icmp:[::1]",
        "raw:icmpv6:127.0.0.1",
        "raw:0:127.0.0.1",
        "raw:256:127.0.0.1",
        "raw:tcp:127.0.0.1",
        "raw:127.0.0.1",
        "raw:icmp:127.0.0.1?reuseport=1",
        "raw:icmp:127.0.0.1?backlog=1",
        "raw:icmp:127.0.0.1?mode=0600",
        "raw:icmpv6:[::1]?v6only=1",
        "unix:relative.sock",
        "unix:/a/../b",
        "unix:/a//b",
        "unix:/a/",
        "unix:",
        "unix:/a?reuseport=1",
        "unix:/a?bindtodevice=lo",
        "unix:/a?mode=1777",
        "unix:/a?mode=9",
        "unix:/a?owner=1",
        "unix:/a?owner=root:root",
        "unix-dgram:/a?backlog=4",
        "udp:127.0.0.1:53?mode=0600",
        "tcp:127.0.0.1:53?owner=1:1",
    ] {
        assert!(s.parse::<SocketSpec>().is_err(), "{s:?} should fail");
    }
    let long = format!("unix:/{}", "x".repeat(MAX_PATH));
    assert!(long.parse::<SocketSpec>().is_err());
    assert!(SocketSpec::from_parts("unix", "/a", 1).is_err());
    // A Unix kind with an IP family (and the reverse) is refused on the wire.
    let mut buf = Vec::new();
    "udp:127.0.0.1:5"
        .parse::<SocketSpec>()
        .unwrap()
        .encode(&mut buf);
    buf[0] = Proto::UnixStream.wire();
    assert!(SocketSpec::decode(&buf).is_err());
    let mut buf = Vec::new();
    "unix:/a".parse::<SocketSpec>().unwrap().encode(&mut buf);
    buf[0] = Proto::Udp.wire();
    assert!(SocketSpec::decode(&buf).is_err());
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
    let b: SocketSpec = "udp:127.0.0.1:53?reuseaddr=0".parse().unwrap();
    let c: SocketSpec = "udp:127.0.0.1:53?reuseport=1".parse().unwrap();
    assert_eq!(a.canonical(), b.canonical());
    assert_ne!(a.canonical(), c.canonical());
    // TCP keeps SO_REUSEADDR on by default; UDP has it off.
    let t: SocketSpec = "tcp:127.0.0.1:53".parse().unwrap();
    assert_eq!(t.canonical().options.reuseaddr, Some(true));
    assert_eq!(a.canonical().options.reuseaddr, Some(false));
    assert_eq!(
        a.canonical().differing_option(&c.canonical()),
        Some("reuseport")
    );
    assert!(SocketSpec::from_parts("UDP", "::1", 70000).is_err());
    assert!(SocketSpec::from_parts("Tcp", "[::1]", 80).is_ok());
}

#[test]
fn plain_ipv4_agrees_with_the_general_parser() {
    // Taken by the fast path, with the general parser's result.
    for s in [
        "udp:127.0.0.1:53",
        "tcp:0.0.0.0:0",
        "tcp:255.255.255.255:65535",
        "udp:1.2.3.4:080",
    ] {
        let fast = plain_ipv4(s.as_bytes()).expect(s);
        assert_eq!(fast, parse_spec(s).unwrap(), "{s}");
        // Its parts encode as the spec does.
        let (mut a, mut b) = (Vec::new(), Vec::new());
        PlainIpv4::parse(s.as_bytes()).unwrap().encode(&mut a);
        fast.encode(&mut b);
        assert_eq!(a, b, "{s}");
    }
    // Left to the general parser, which accepts or words the refusal.
    for s in [
        "udp:10.0.0.1:65536",
        "udp:256.0.0.1:53",
        "udp:01.0.0.1:53",
        "udp:1.2.3:53",
        "udp:1.2.3.4.5:53",
        "udp:1.2.3.4:",
        "udp:1.2.3.4:+53",
        "udp:1.2.3.4:53?reuseport=1",
        "UDP:1.2.3.4:53",
        "udp:1..3.4:53",
        "udp:1.2.3.4:123456",
        "udp:1.2.3.4:-1",
        "udp:1234.0.0.1:53",
        "udp:1.2.3.4:53x",
        "udp:1.2.3.4:0000053",
        "tcp:[::1]:80",
    ] {
        assert!(plain_ipv4(s.as_bytes()).is_none(), "{s}");
        let parsed: Result<SocketSpec> = s.parse();
        assert_eq!(
            parsed.map_err(|e| e.message().to_string()),
            parse_spec(s).map_err(|e| e.message().to_string()),
            "{s}"
        );
    }
}
