//! The broker end to end on the wire: the protocol document's bytes drive
//! a real sockpassd, and bad input of every kind gets an error or a
//! disconnect and disturbs nobody (split from broker.rs).

mod common;

use common::*;
use sockpass::fdpass::{recv_fds, send_fds};
use sockpass::proto;
use sockpass::{Kind, ShareMode, SocketSpec};
use std::net::UdpSocket;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

fn spec(s: &str) -> SocketSpec {
    s.parse().unwrap()
}

/// A raw protocol connection for bad-input tests.
fn raw_conn(b: &Broker) -> OwnedFd {
    let fd = sockpass::sys::unix_socket(libc::SOCK_SEQPACKET, false).unwrap();
    sockpass::sys::connect_unix(&fd, path_str(&b.path).as_bytes()).unwrap();
    let tv = libc::timeval {
        tv_sec: 30,
        tv_usec: 0,
    };
    // SAFETY: valid timeval.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        )
    };
    fd
}

/// The hex bytes of step `step` in docs/PROTOCOL.md's "A minimal client,
/// step by step" (the backquoted sequence with `|` separators).
fn doc_step_bytes(doc: &str, step: u32) -> Vec<u8> {
    let section = doc
        .split("## A minimal client, step by step")
        .nth(1)
        .expect("PROTOCOL.md has the step-by-step section");
    let start = section
        .find(&format!("\n{step}. "))
        .unwrap_or_else(|| panic!("step {step}"));
    let rest = &section[start..];
    let hex = rest.split('`').find(|t| t.contains(" | ")).unwrap();
    // Up to a placeholder such as `<24 token bytes>`.
    hex.split_whitespace()
        .take_while(|t| !t.starts_with('<'))
        .filter(|t| *t != "|")
        .map(|t| u8::from_str_radix(t, 16).unwrap_or_else(|_| panic!("{t:?} in step {step}")))
        .collect()
}

/// docs/PROTOCOL.md's step-by-step client, byte for byte from the document
/// itself and without the Rust client: if the document and the broker
/// drift apart, this fails.
#[test]
fn the_protocol_document_drives_the_broker() {
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/PROTOCOL.md"),
    )
    .unwrap();
    let b = Broker::start("protocol-doc");
    let conn = raw_conn(&b);
    let mut buf = [0u8; 1024];

    let hello = doc_step_bytes(&doc, 2);
    send_fds(conn.as_fd(), &hello, &[], 0).unwrap();
    let r = recv_fds(conn.as_fd(), &mut buf, 1, 0).unwrap();
    assert_eq!((r.len, r.fds.len()), (20, 0));
    assert_eq!(&buf[..8], &[1, 0x81, 0, 0, 1, 0, 0, 0], "HELLO_OK, id 1");
    assert_eq!(buf[8], 1, "version");
    assert_eq!(
        u32::from_le_bytes(buf[12..16].try_into().unwrap()),
        4096,
        "the packet limit, a page"
    );
    assert_eq!(
        u32::from_le_bytes(buf[16..20].try_into().unwrap()),
        b.pid() as u32
    );

    // The document asks for 127.0.0.1:5353; the test uses a free port in
    // its place (bytes 16..18: header 8, share/flags/n 3, "dns" 3, proto, family).
    let mut req = doc_step_bytes(&doc, 3);
    assert_eq!(u16::from_le_bytes([req[16], req[17]]), 5353);
    let port = free_port(true);
    req[16..18].copy_from_slice(&port.to_le_bytes());
    send_fds(conn.as_fd(), &req, &[], 0).unwrap();
    let r = recv_fds(conn.as_fd(), &mut buf, 1, 0).unwrap();
    assert_eq!((r.len, r.fds.len()), (8 + 28, 1));
    assert_eq!(&buf[..8], &[1, 0x82, 0, 0, 2, 0, 0, 0], "SOCKET, id 2");
    assert_eq!(u16::from_le_bytes([buf[32], buf[33]]), port);
    let udp = UdpSocket::from(r.fds.into_iter().next().unwrap());
    assert_eq!(
        udp.local_addr().unwrap().to_string(),
        format!("127.0.0.1:{port}")
    );
    let st = b.status();
    assert_eq!(
        (st.sockets[0].refs, st.sockets[0].holders[0].app.as_str()),
        (1, "dns")
    );

    let mut rel = doc_step_bytes(&doc, 5);
    assert_eq!(
        rel,
        [1, 3, 0, 0, 3, 0, 0, 0],
        "step 5 is the header; the token follows"
    );
    rel.extend_from_slice(&buf[8..32]);
    send_fds(conn.as_fd(), &rel, &[], 0).unwrap();
    let r = recv_fds(conn.as_fd(), &mut buf, 1, 0).unwrap();
    assert_eq!(
        &buf[..r.len],
        &[1, 0x83, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0],
        "RELEASED, 0 left"
    );
    assert!(b.status().sockets.is_empty());
}

/// What the broker did with one bad message.
#[derive(Debug, PartialEq)]
enum Outcome {
    Error(Kind),
    /// An error reply, then the broker closes the connection.
    ErrorThenDisconnect(Kind),
}

/// Send one message; read the error reply; then tell whether the broker
/// kept the connection (it answers a HELLO) or closed it.
fn send_raw(fd: &OwnedFd, msg: &[u8], fds: &[std::os::fd::BorrowedFd<'_>]) -> Outcome {
    send_fds(fd.as_fd(), msg, fds, 0).unwrap();
    let mut buf = [0u8; proto::MAX_MSG];
    let r = recv_fds(fd.as_fd(), &mut buf, 1, 0).expect("a reply");
    assert!(r.len > 0, "the broker replies before anything else");
    assert!(r.fds.is_empty(), "an error reply carries no fd");
    let h = proto::Header::parse(&buf[..r.len]).unwrap();
    assert_eq!(h.ty, proto::ty::ERROR, "expected an error reply");
    let kind = proto::decode_error(&buf[proto::HEADER_LEN..r.len])
        .unwrap()
        .kind();
    let mut hello = Vec::new();
    proto::encode_hello(&mut hello, 99);
    if send_fds(fd.as_fd(), &hello, &[], 0).is_err() {
        return Outcome::ErrorThenDisconnect(kind);
    }
    match recv_fds(fd.as_fd(), &mut buf, 1, 0) {
        Ok(r) if r.len > 0 => {
            assert_eq!(
                proto::Header::parse(&buf[..r.len]).unwrap().ty,
                proto::ty::HELLO_OK
            );
            Outcome::Error(kind)
        }
        _ => Outcome::ErrorThenDisconnect(kind),
    }
}

fn request_bytes(spec_s: &str, share: u8, app: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    proto::begin(&mut out, proto::ty::REQUEST, 5);
    out.extend_from_slice(&[share, 0, app.len() as u8]);
    out.extend_from_slice(app);
    spec(spec_s).encode(&mut out);
    out
}

#[test]
fn bad_input_gets_an_error_or_a_disconnect_and_disturbs_nobody() {
    let b = Broker::start("badinput");
    // A well-behaved client holds a socket throughout.
    let mut good = b.client();
    let held = good
        .request_socket(&spec("udp:127.0.0.1:0"), ShareMode::Any, "good")
        .unwrap();
    let fds_before = b.fd_count();

    let valid = request_bytes("udp:127.0.0.1:0", 2, b"app");
    let mut cases: Vec<(&str, Vec<u8>, Outcome)> = vec![
        (
            "garbage",
            b"\xde\xad\xbe\xef garbage that is not a message".to_vec(),
            Outcome::ErrorThenDisconnect(Kind::Protocol),
        ),
        (
            "short header",
            vec![1, 2, 0],
            Outcome::ErrorThenDisconnect(Kind::Protocol),
        ),
        (
            "unknown version",
            {
                let mut v = valid.clone();
                v[0] = 9;
                v
            },
            Outcome::Error(Kind::Protocol),
        ),
        (
            "unknown type",
            {
                let mut v = valid.clone();
                v[1] = 0x77;
                v
            },
            Outcome::Error(Kind::BadRequest),
        ),
        (
            "truncated request",
            valid[..valid.len() - 3].to_vec(),
            Outcome::Error(Kind::BadRequest),
        ),
        (
            "trailing bytes",
            {
                let mut v = valid.clone();
                v.push(0);
                v
            },
            Outcome::Error(Kind::BadRequest),
        ),
        (
            "oversized",
            vec![1u8; proto::MAX_MSG * 4],
            Outcome::Error(Kind::Protocol),
        ),
        (
            "one byte over the packet limit",
            {
                let mut v = valid.clone();
                v.resize(proto::MAX_MSG + 1, 0);
                v
            },
            Outcome::Error(Kind::Protocol),
        ),
        (
            "a packet of the limit, trailing bytes",
            {
                let mut v = valid.clone();
                v.resize(proto::MAX_MSG, 0);
                v
            },
            Outcome::Error(Kind::BadRequest),
        ),
        (
            "unknown share mode",
            request_bytes("udp:127.0.0.1:0", 9, b"app"),
            Outcome::Error(Kind::BadRequest),
        ),
        (
            "non-UTF-8 app name",
            request_bytes("udp:127.0.0.1:0", 2, b"\xff\xfe"),
            Outcome::Error(Kind::BadRequest),
        ),
        (
            "control chars in app name",
            request_bytes("udp:127.0.0.1:0", 2, b"a\nb"),
            Outcome::Error(Kind::BadRequest),
        ),
        (
            "unknown protocol",
            {
                let mut v = valid.clone();
                v[proto::HEADER_LEN + 3 + 3] = 17;
                v
            },
            Outcome::Error(Kind::BadRequest),
        ),
        (
            "unknown family",
            {
                let mut v = valid.clone();
                v[proto::HEADER_LEN + 3 + 3 + 1] = 5;
                v
            },
            Outcome::Error(Kind::BadRequest),
        ),
        (
            "bad HELLO magic",
            {
                let mut v = Vec::new();
                proto::begin(&mut v, proto::ty::HELLO, 1);
                v.extend_from_slice(b"NOPE\x01\x01\0\0");
                v
            },
            Outcome::Error(Kind::Protocol),
        ),
        (
            "HELLO for version 2 only",
            {
                let mut v = Vec::new();
                proto::begin(&mut v, proto::ty::HELLO, 1);
                v.extend_from_slice(b"SPAS\x02\x02\0\0");
                v
            },
            Outcome::Error(Kind::Protocol),
        ),
        (
            "release with a short token",
            {
                let mut v = Vec::new();
                proto::begin(&mut v, proto::ty::RELEASE, 1);
                v.extend_from_slice(&[0; 10]);
                v
            },
            Outcome::Error(Kind::BadRequest),
        ),
        (
            "release of an unknown token",
            {
                let mut v = Vec::new();
                proto::begin(&mut v, proto::ty::RELEASE, 1);
                v.extend_from_slice(&[7; 24]);
                v
            },
            Outcome::Error(Kind::UnknownToken),
        ),
        (
            "nonzero reserved header bytes",
            {
                let mut v = valid.clone();
                v[2] = 1;
                v
            },
            Outcome::ErrorThenDisconnect(Kind::Protocol),
        ),
        (
            "unknown option tag",
            {
                let mut v = valid.clone();
                let n = v.len();
                v[n - 1] = 1;
                v.extend_from_slice(&[99, 1, 1]);
                v
            },
            Outcome::Error(Kind::BadRequest),
        ),
    ];
    // An over-long app name cannot be built by the encoder; build it by hand.
    let mut long = Vec::new();
    proto::begin(&mut long, proto::ty::REQUEST, 5);
    long.extend_from_slice(&[2, 0, 255]);
    long.extend_from_slice(&[b'x'; 200]);
    cases.push((
        "app name longer than its bytes",
        long,
        Outcome::Error(Kind::BadRequest),
    ));
    // Address bytes that do not fit the family: an IPv4 family followed by
    // 16 address bytes, an IPv6 family followed by 4 (family byte after
    // header, share/flags/n, "app" and the protocol).
    let fam = proto::HEADER_LEN + 3 + 3 + 1;
    let mut v4_long = request_bytes("udp:[::1]:0", 2, b"app");
    v4_long[fam] = 4;
    cases.push((
        "IPv4 family, 16 address bytes",
        v4_long,
        Outcome::Error(Kind::BadRequest),
    ));
    let mut v6_short = valid.clone();
    v6_short[fam] = 6;
    cases.push((
        "IPv6 family, 4 address bytes",
        v6_short,
        Outcome::Error(Kind::BadRequest),
    ));
    // Every other field out of range. A REQUEST from a spec the parser would
    // refuse, encoded as is (the decoder must refuse it again).
    let req_for = |s: &SocketSpec| {
        let mut v = Vec::new();
        proto::begin(&mut v, proto::ty::REQUEST, 5);
        v.extend_from_slice(&[2, 0, 3]);
        v.extend_from_slice(b"app");
        s.encode(&mut v);
        v
    };
    let unix = |p: &str| req_for(&SocketSpec::unix(sockpass::Proto::UnixStream, p));
    let mut unknown_flags = valid.clone();
    unknown_flags[proto::HEADER_LEN + 1] = 0x80;
    // The raw protocol number travels in the port field: 300 does not fit a byte.
    let mut raw300 = req_for(&SocketSpec::raw("127.0.0.1".parse().unwrap(), 1));
    raw300[fam + 1..fam + 3].copy_from_slice(&300u16.to_le_bytes());
    let mut path_not_utf8 = unix("/tmp/ab");
    let n = path_not_utf8.len();
    path_not_utf8[n - 3..n - 1].copy_from_slice(b"\xff\xfe");
    let mut path_past_bytes = unix("/tmp/ab");
    path_past_bytes[fam + 1..fam + 3].copy_from_slice(&200u16.to_le_bytes());
    let upgrade = |len: u16, bytes: &[u8]| {
        let mut v = Vec::new();
        proto::begin(&mut v, proto::ty::UPGRADE, 1);
        v.extend_from_slice(&len.to_le_bytes());
        v.extend_from_slice(bytes);
        v
    };
    // A RELEASE_MANY saying `n` tokens and carrying `carried` unknown ones.
    let release_many = |n: u16, carried: usize| {
        let mut v = Vec::new();
        proto::begin(&mut v, proto::ty::RELEASE_MANY, 1);
        v.extend_from_slice(&n.to_le_bytes());
        v.extend(std::iter::repeat_n(7u8, 24 * carried));
        v
    };
    let mut pickup_short = Vec::new();
    proto::begin(&mut pickup_short, proto::ty::PICKUP, 1);
    pickup_short.extend_from_slice(&[7; 10]);
    let mut status_trailing = Vec::new();
    proto::encode_status(&mut status_trailing, 1);
    status_trailing.push(0);
    // Protocol and family that do not go together (protocol byte before the family).
    let mut udp_unix = unix("/tmp/x");
    udp_unix[fam - 1] = sockpass::Proto::Udp.wire();
    let mut unix_v4 = valid.clone();
    unix_v4[fam - 1] = sockpass::Proto::UnixStream.wire();
    for (name, msg) in [
        ("unknown REQUEST flag bits", unknown_flags),
        ("UDP with a Unix path", udp_unix),
        ("Unix stream with an IPv4 address", unix_v4),
        ("raw IP protocol 300", raw300),
        ("relative Unix path", unix("tmp/s.sock")),
        (
            "over-long Unix path",
            unix(&format!("/{}", "x".repeat(200))),
        ),
        ("Unix path with '..'", unix("/tmp/../etc/s.sock")),
        ("non-UTF-8 Unix path", path_not_utf8),
        ("Unix path length past its bytes", path_past_bytes),
        ("UPGRADE length past its bytes", upgrade(100, b"/bin")),
        ("non-UTF-8 UPGRADE path", upgrade(2, b"\xff\xfe")),
        ("PICKUP with a short token", pickup_short),
        ("STATUS with trailing bytes", status_trailing),
        ("RELEASE_MANY of 0 tokens", release_many(0, 0)),
        (
            "RELEASE_MANY saying one token more than the most",
            release_many(
                proto::MAX_RELEASE_BATCH as u16 + 1,
                proto::MAX_RELEASE_BATCH,
            ),
        ),
        ("RELEASE_MANY count past its tokens", release_many(3, 2)),
        ("RELEASE_MANY with bytes past its tokens", {
            let mut v = release_many(2, 2);
            v.push(0);
            v
        }),
    ] {
        cases.push((name, msg, Outcome::Error(Kind::BadRequest)));
    }
    // Port > 65535 cannot be expressed on the wire (u16); the client layer refuses it.
    assert_eq!(
        SocketSpec::from_parts("udp", "127.0.0.1", 65536)
            .unwrap_err()
            .kind(),
        Kind::BadRequest
    );
    assert_eq!(
        SocketSpec::from_parts("udp", "300.1.1.1", 53)
            .unwrap_err()
            .kind(),
        Kind::BadRequest
    );
    assert_eq!(
        proto::encode_request(
            &mut Vec::new(),
            1,
            &spec("udp:127.0.0.1:0"),
            ShareMode::Any,
            &"x".repeat(256),
            0
        )
        .unwrap_err()
        .kind(),
        Kind::BadRequest
    );

    for (name, msg, want) in cases {
        let fd = raw_conn(&b);
        let got = send_raw(&fd, &msg, &[]);
        assert_eq!(got, want, "case {name}");
        // The well-behaved client is served after every case.
        let g = good
            .request_socket(&spec("tcp:127.0.0.1:0"), ShareMode::None, "good")
            .unwrap();
        good.release(&g.token).unwrap();
    }

    // The longest application name the wire allows (255 bytes) is served.
    let fd = raw_conn(&b);
    let longest = request_bytes("udp:127.0.0.1:0", 2, &[b'x'; 255]);
    send_fds(fd.as_fd(), &longest, &[], 0).unwrap();
    let mut buf = [0u8; proto::MAX_MSG];
    let r = recv_fds(fd.as_fd(), &mut buf, 1, 0).unwrap();
    assert_eq!(
        (buf[1], r.fds.len()),
        (proto::ty::SOCKET, 1),
        "255-byte app name"
    );
    let st = b.status();
    assert!(st
        .sockets
        .iter()
        .any(|s| s.holders[0].app == "x".repeat(255)));
    drop(fd);

    // Requests carrying 1 and 250 fds: refused by the kernel (the broker's
    // sockets have SO_PASSRIGHTS=0: EPERM, Linux 6.16+), or on older
    // kernels refused by the broker with every fd closed.
    let (x, _y) = sockpass::fdpass::socketpair(libc::SOCK_STREAM).unwrap();
    for n in [1usize, 250] {
        let fd = raw_conn(&b);
        let many: Vec<_> = (0..n).map(|_| x.as_fd()).collect();
        match send_fds(fd.as_fd(), &valid, &many, 0) {
            Err(libc::EPERM) => {
                // Nothing arrived: the connection serves on.
                let mut hello = Vec::new();
                proto::encode_hello(&mut hello, 99);
                send_fds(fd.as_fd(), &hello, &[], 0).unwrap();
                let mut buf = [0u8; proto::MAX_MSG];
                let r = recv_fds(fd.as_fd(), &mut buf, 1, 0).expect("a reply");
                assert_eq!(
                    proto::Header::parse(&buf[..r.len]).unwrap().ty,
                    proto::ty::HELLO_OK
                );
            }
            Err(e) => panic!("{n} fds: {}", sockpass::strerror(e)),
            Ok(_) => {
                let mut buf = [0u8; proto::MAX_MSG];
                let r = recv_fds(fd.as_fd(), &mut buf, 1, 0).expect("a reply");
                let kind = proto::decode_error(&buf[proto::HEADER_LEN..r.len])
                    .unwrap()
                    .kind();
                assert_eq!(kind, Kind::BadRequest, "{n} fds");
            }
        }
    }

    // Connections from the cases above are gone; nothing leaked in the broker.
    wait_for("broker fds back to baseline", || {
        (b.fd_count() == fds_before).then_some(())
    });
    let st = b.status();
    assert_eq!(st.counters.references, 1);
    assert_eq!(st.sockets[0].holders[0].app, "good");
    good.release(&held.token).unwrap();
}

#[test]
fn flood_without_reading_is_bounded_and_others_are_served() {
    let b = Broker::start("flood");
    let fd = raw_conn(&b);
    // SAFETY: make the flooder's sends nonblocking so the test cannot hang.
    unsafe {
        let fl = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
    let mut status = Vec::new();
    proto::encode_status(&mut status, 1);
    let mut sent = 0;
    for _ in 0..100_000 {
        match send_fds(fd.as_fd(), &status, &[], libc::MSG_DONTWAIT) {
            Ok(_) => sent += 1,
            Err(_) => break,
        }
    }
    assert!(sent > 10);
    // The broker stops reading the flooder but serves everyone else.
    let mut good = b.client();
    for _ in 0..50 {
        let g = good
            .request_socket(&spec("udp:127.0.0.1:0"), ShareMode::None, "good")
            .unwrap();
        good.release(&g.token).unwrap();
    }
    let fds = b.fd_count();
    assert!(fds < 200, "broker holds {fds} fds for one flooding client");
    drop(fd);
    // Left: `good` and the status query's own connection.
    wait_for("flooder dropped", || {
        (b.status().counters.connections == 2).then_some(())
    });
}

/// A plain request whose spec bytes hit the cache before is answered
/// without decoding them again. Everything else about it is still checked
/// as on the full path, with the same answers: a bad share byte, a bad
/// application name, a byte after the spec, a sharing conflict; and the
/// remembered bytes never lead to a socket that went.
#[test]
fn known_spec_bytes_are_answered_as_the_full_path_answers() {
    let b = Broker::start("knownspec");
    let port = free_port(true);
    let s = format!("udp:127.0.0.1:{port}");
    let mut c = b.client();
    // The second request is a cache hit, and its bytes are remembered; the
    // third comes by them: the same socket, one more reference.
    let g1 = c.request_socket(&spec(&s), ShareMode::Any, "a").unwrap();
    let g2 = c.request_socket(&spec(&s), ShareMode::Any, "a").unwrap();
    let g3 = c.request_socket(&spec(&s), ShareMode::Any, "a").unwrap();
    assert!(!g1.cached && g2.cached && g3.cached);
    assert_eq!(inode(&g3.fd), inode(&g1.fd));
    assert_eq!(b.status().sockets[0].refs, 3);

    let raw = raw_conn(&b);
    let mut trailing = request_bytes(&s, 2, b"a");
    trailing.push(0);
    let cases = [
        ("share byte 9", request_bytes(&s, 9, b"a"), Kind::BadRequest),
        (
            "a control character in the app name",
            request_bytes(&s, 2, b"a\x01"),
            Kind::BadRequest,
        ),
        ("a byte after the spec", trailing, Kind::BadRequest),
        (
            "share none while others hold it",
            request_bytes(&s, 0, b"a"),
            Kind::ShareConflict,
        ),
        (
            "sameapp under another name",
            request_bytes(&s, 1, b"b"),
            Kind::ShareConflict,
        ),
    ];
    for (what, msg, kind) in cases {
        assert!(
            matches!(send_raw(&raw, &msg, &[]), Outcome::Error(k) if k == kind),
            "{what}"
        );
    }
    assert_eq!(b.status().sockets[0].refs, 3, "a refusal adds nothing");

    // The socket goes, and another spec's socket takes its place in the
    // broker's tables; the same bytes then make a new socket of their own,
    // which is then remembered in its turn.
    let old = inode(&g1.fd);
    for g in [g1, g2, g3] {
        c.release(&g.token).unwrap();
    }
    assert!(b.status().sockets.is_empty());
    let other = loop {
        let p = free_port(true);
        if p != port {
            break p;
        }
    };
    let other = spec(&format!("udp:127.0.0.1:{other}"));
    let go = c.request_socket(&other, ShareMode::Any, "a").unwrap();
    let g4 = c.request_socket(&spec(&s), ShareMode::Any, "a").unwrap();
    assert!(!g4.cached);
    assert_ne!(inode(&g4.fd), old);
    assert_ne!(inode(&g4.fd), inode(&go.fd));
    assert_eq!(sockpass::sys::local_port(&g4.fd).unwrap(), port);
    for _ in 0..3 {
        let g = c.request_socket(&spec(&s), ShareMode::Any, "a").unwrap();
        assert!(g.cached);
        assert_eq!(inode(&g.fd), inode(&g4.fd));
    }
    assert_eq!(b.status().sockets.len(), 2);
}

/// One REQUEST_MANY of `items` (spec, share), application "batch", id `id`.
fn request_many_bytes(id: u32, items: &[(SocketSpec, ShareMode)]) -> Vec<u8> {
    let mut out = Vec::new();
    proto::begin_request_many(&mut out, id);
    for (s, share) in items {
        proto::encode_request_item(&mut out, s, *share, "batch", 0).unwrap();
    }
    proto::finish_request_many(&mut out, items.len());
    out
}

/// Send one message and receive one reply, with room for a packet of the
/// limit and every fd one `SCM_RIGHTS` message can carry; then check that
/// no second message follows it.
fn one_round_trip(fd: &OwnedFd, msg: &[u8]) -> (proto::Header, Vec<u8>, Vec<OwnedFd>) {
    send_fds(fd.as_fd(), msg, &[], 0).unwrap();
    let mut buf = vec![0u8; proto::MAX_MSG];
    let r = recv_fds(fd.as_fd(), &mut buf, sockpass::fdpass::MAX_FDS, 0).expect("a reply");
    let h = proto::Header::parse(&buf[..r.len]).unwrap();
    assert_eq!(
        recv_fds(fd.as_fd(), &mut buf, 1, libc::MSG_DONTWAIT).unwrap_err(),
        sockpass::fdpass::RecvError::Os(libc::EAGAIN),
        "one reply message, nothing after it"
    );
    (h, buf[proto::HEADER_LEN..r.len].to_vec(), r.fds)
}

/// The grants of a SOCKETS reply to the specs `ports` (0: any), each fd a
/// distinct UDP socket bound to its grant's port, which is the spec's.
fn check_grants(payload: &[u8], fds: &[OwnedFd], ports: &[u16]) -> Vec<u64> {
    let grants = proto::decode_sockets(payload).unwrap();
    assert_eq!((grants.len(), fds.len()), (ports.len(), ports.len()));
    let mut inodes = Vec::new();
    for ((g, fd), want) in grants.iter().zip(fds).zip(ports) {
        assert!(!g.reserved);
        assert!(*want == 0 || g.port == *want, "{} for {want}", g.port);
        let udp = UdpSocket::from(fd.try_clone().unwrap());
        assert_eq!(udp.local_addr().unwrap().port(), g.port);
        inodes.push(inode(fd));
    }
    let distinct: std::collections::HashSet<_> = inodes.iter().collect();
    assert_eq!(distinct.len(), ports.len(), "distinct sockets");
    inodes
}

/// 64 specs travel in one REQUEST_MANY (more than the 1024 bytes of older
/// brokers) and come back in one SOCKETS message with 64 grants and 64
/// fds; a second connection gets the same 64 sockets from the cache, again
/// in one message each way.
#[test]
fn a_batch_of_64_is_one_message_each_way() {
    let b = Broker::start("batch64");
    let ports = free_low_ports(true, 64);
    let items: Vec<_> = ports
        .iter()
        .map(|p| (spec(&format!("udp:127.0.0.1:{p}")), ShareMode::Any))
        .collect();
    let msg = request_many_bytes(7, &items);
    assert!(msg.len() > 1024, "{} bytes: past the old limit", msg.len());
    let first = raw_conn(&b);
    let (h, payload, fds) = one_round_trip(&first, &msg);
    assert_eq!((h.ty, h.id), (proto::ty::SOCKETS, 7));
    assert!(payload.len() > 1024 - proto::HEADER_LEN, "the reply too");
    let made = check_grants(&payload, &fds, &ports);
    assert!(proto::decode_sockets(&payload)
        .unwrap()
        .iter()
        .all(|g| !g.cached));

    let second = raw_conn(&b);
    let (h, payload, fds2) = one_round_trip(&second, &msg);
    assert_eq!(h.ty, proto::ty::SOCKETS);
    assert_eq!(
        check_grants(&payload, &fds2, &ports),
        made,
        "the same sockets"
    );
    assert!(proto::decode_sockets(&payload)
        .unwrap()
        .iter()
        .all(|g| g.cached));
    let st = b.status();
    assert_eq!((st.counters.sockets, st.counters.references), (64, 128));
    drop((first, second));
    wait_for("the references dropped with the connections", || {
        (b.status().counters.sockets == 0).then_some(())
    });
}

/// The most specs one message carries are granted in one reply; one more is
/// refused as a whole, clearly; and at the most, one refused spec among
/// them leaves nothing: no fd sent, no reference or socket kept.
#[test]
fn the_largest_batch_is_one_message_and_all_or_nothing() {
    let b = Broker::start("batchmax");
    let max = proto::MAX_REQUEST_BATCH;
    assert!((64..=sockpass::fdpass::MAX_FDS).contains(&max));
    let any = || (spec("udp:127.0.0.1:0"), ShareMode::None);
    let fd = raw_conn(&b);
    let msg = request_many_bytes(1, &vec![any(); max]);
    let (h, payload, fds) = one_round_trip(&fd, &msg);
    assert_eq!(h.ty, proto::ty::SOCKETS);
    check_grants(&payload, &fds, &vec![0; max]);
    assert_eq!(b.status().counters.references, max as u32);
    drop(fds);

    // One more: refused, the connection kept.
    let msg = request_many_bytes(2, &vec![any(); max + 1]);
    assert!(msg.len() <= proto::MAX_MSG);
    let (h, payload, fds) = one_round_trip(&fd, &msg);
    assert_eq!((h.ty, fds.len()), (proto::ty::ERROR, 0));
    let e = proto::decode_error(&payload).unwrap();
    assert_eq!(e.kind(), Kind::BadRequest);
    assert!(
        e.message()
            .contains(&format!("carries 1 to {max} specs, not {}", max + 1)),
        "{e}"
    );

    // The most, one of them held exclusively by another client.
    let mut other = b.client();
    let x = other
        .request_socket(
            &spec(&format!("udp:127.0.0.1:{}", free_low_ports(true, 1)[0])),
            ShareMode::None,
            "other",
        )
        .unwrap();
    let before = b.status().counters;
    let ports: Vec<u16> = free_low_ports(true, max + 1)
        .into_iter()
        .filter(|p| *p != x.port)
        .take(max)
        .collect();
    let mut items: Vec<_> = ports
        .iter()
        .map(|p| (spec(&format!("udp:127.0.0.1:{p}")), ShareMode::None))
        .collect();
    items[max / 2] = (spec(&format!("udp:127.0.0.1:{}", x.port)), ShareMode::Any);
    let (h, payload, fds) = one_round_trip(&fd, &request_many_bytes(3, &items));
    assert_eq!((h.ty, fds.len()), (proto::ty::ERROR, 0));
    let e = proto::decode_error(&payload).unwrap();
    assert_eq!(e.kind(), Kind::ShareConflict);
    assert!(
        e.message()
            .starts_with(&format!("spec {} of {max}: ", max / 2)),
        "{e}"
    );
    let after = b.status().counters;
    assert_eq!(
        (after.sockets, after.references),
        (before.sockets, before.references),
        "nothing kept of the refused batch"
    );
    // The sockets made for the specs before the refused one are closed.
    for p in &ports {
        assert!(can_bind(true, *p), "port {p} is free again");
    }
}

/// Child, as nobody: on one connection, send packets of the limit (a
/// REQUEST_MANY whose count is past its items) and past it (one byte, and
/// 64 KiB), reading each answer; print the error kinds in order.
#[test]
#[ignore]
fn child_sends_page_sized_and_larger_packets() {
    if !is_child() {
        return;
    }
    let sock = std::env::var("SOCK").unwrap();
    let fd = sockpass::sys::unix_socket(libc::SOCK_SEQPACKET, false).unwrap();
    sockpass::sys::connect_unix(&fd, sock.as_bytes()).unwrap();
    let mut full = Vec::new();
    proto::begin_request_many(&mut full, 1);
    full.resize(proto::MAX_MSG, 0xaa);
    let mut kinds = Vec::new();
    for _ in 0..50 {
        for len in [proto::MAX_MSG, proto::MAX_MSG + 1, 65536] {
            let mut m = full.clone();
            m.resize(len, 0xaa);
            send_fds(fd.as_fd(), &m, &[], 0).unwrap();
            let mut buf = vec![0u8; proto::MAX_MSG];
            let r = recv_fds(fd.as_fd(), &mut buf, 1, 0).unwrap();
            assert!(r.fds.is_empty());
            assert_eq!(
                proto::Header::parse(&buf[..r.len]).unwrap().ty,
                proto::ty::ERROR
            );
            let e = proto::decode_error(&buf[proto::HEADER_LEN..r.len]).unwrap();
            kinds.push(format!("{:?}", e.kind()));
        }
    }
    kinds.dedup();
    println!("@@ {}", kinds.join(" "));
}

/// A nobody client sending packets of the limit and larger gets a clear
/// error for each, keeps its connection, and disturbs nobody: root's client
/// is served throughout, and the broker holds no more fds after.
#[test]
fn page_sized_and_larger_packets_from_nobody_disturb_nobody() {
    if !is_root() {
        eprintln!("skipped: needs root to run a child as nobody");
        return;
    }
    let (_dir, b) = broker_with_policy("bigpackets", "allow uid=0 ops=all\n");
    let mut good = b.client();
    let fds_before = b.fd_count();
    let mut child = spawn_child_as(
        NOBODY,
        "child_sends_page_sized_and_larger_packets",
        &[("SOCK", path_str(&b.path))],
        std::process::Stdio::null(),
    );
    let mut served = 0;
    while child.try_wait().unwrap().is_none() && served < 10_000 {
        let g = good
            .request_socket(&spec("udp:127.0.0.1:0"), ShareMode::None, "good")
            .unwrap();
        good.release(&g.token).unwrap();
        served += 1;
    }
    let line = read_line(&mut child);
    assert!(wait_child(&mut child).success());
    // A page: a bad request (its count is past its items); larger: truncated.
    assert_eq!(line, vec!["BadRequest Protocol"; 50].join(" "));
    assert!(served > 0);
    wait_for("the broker's fds back to before", || {
        (b.fd_count() == fds_before).then_some(())
    });
}
