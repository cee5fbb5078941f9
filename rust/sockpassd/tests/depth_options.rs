//! Socket options before bind: the option matrix on real sockets, options as
//! part of the cache identity (conflicts name the option), per-worker
//! SO_REUSEPORT groups under real load, and bad option input.

mod common;

use common::*;
use sockpass::fdpass::{recv_fds, send_fds};
use sockpass::proto;
use sockpass::sys::getsockopt_int;
use sockpass::{Kind, ShareMode, SocketSpec};
use std::net::{TcpStream, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

fn spec(s: &str) -> SocketSpec {
    s.parse().unwrap()
}

fn opt(fd: &OwnedFd, level: i32, name: i32) -> i32 {
    getsockopt_int(fd, level, name).unwrap()
}

#[test]
fn option_matrix_is_applied_before_bind() {
    let b = Broker::start("optmatrix");
    let mut c = b.client();
    let p = free_port(false);
    let g = c
        .request_socket(
            &spec(&format!(
                "tcp:127.0.0.1:{p}?reuseaddr=0&reuseport=1&freebind=1&rcvbuf=65536&sndbuf=32768&backlog=16"
            )),
            ShareMode::None,
            "m",
        )
        .unwrap();
    assert_eq!(opt(&g.fd, libc::SOL_SOCKET, libc::SO_REUSEADDR), 0);
    assert_eq!(opt(&g.fd, libc::SOL_SOCKET, libc::SO_REUSEPORT), 1);
    assert_eq!(opt(&g.fd, libc::IPPROTO_IP, libc::IP_FREEBIND), 1);
    // The kernel doubles buffer sizes for bookkeeping.
    assert!(opt(&g.fd, libc::SOL_SOCKET, libc::SO_RCVBUF) >= 65536);
    assert!(opt(&g.fd, libc::SOL_SOCKET, libc::SO_SNDBUF) >= 32768);
    assert_eq!(opt(&g.fd, libc::SOL_SOCKET, libc::SO_ACCEPTCONN), 1);
    assert_eq!(g.port, p);
    // Listening already: a connection is accepted by the received socket.
    let l = std::net::TcpListener::from(g.fd);
    let t = std::thread::spawn(move || TcpStream::connect(("127.0.0.1", p)).unwrap());
    l.accept().unwrap();
    t.join().unwrap();

    // The kernel forces v6only on a socket bound to a specific IPv6 address, so use [::].
    let g6 = c
        .request_socket(&spec("udp:[::]:0?v6only=0"), ShareMode::None, "m")
        .unwrap();
    assert_eq!(opt(&g6.fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY), 0);
    let g6d = c
        .request_socket(&spec("udp:[::1]:0"), ShareMode::None, "m")
        .unwrap();
    assert_eq!(opt(&g6d.fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY), 1);
    // UDP: SO_REUSEADDR off unless asked for (issue 21 item 6).
    assert_eq!(opt(&g6d.fd, libc::SOL_SOCKET, libc::SO_REUSEADDR), 0);

    if !is_root() {
        eprintln!("skipping mark/transparent/bindtodevice: they need root (CAP_NET_ADMIN/RAW)");
        return;
    }
    let g = c
        .request_socket(
            &spec("udp:127.0.0.1:0?mark=7&transparent=1&bindtodevice=lo"),
            ShareMode::None,
            "m",
        )
        .unwrap();
    assert_eq!(opt(&g.fd, libc::SOL_SOCKET, libc::SO_MARK), 7);
    assert_eq!(opt(&g.fd, libc::IPPROTO_IP, libc::IP_TRANSPARENT), 1);
    let mut name = [0u8; 16];
    let mut len = name.len() as libc::socklen_t;
    // SAFETY: name and len are valid for writing.
    let r = unsafe {
        libc::getsockopt(
            g.fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            name.as_mut_ptr().cast(),
            &mut len,
        )
    };
    assert_eq!(r, 0);
    assert_eq!(&name[..2], b"lo");
}

#[test]
fn options_are_identity_and_conflicts_name_the_option() {
    let b = Broker::start("optconflict");
    let mut c1 = b.client();
    let mut c2 = b.client();
    let p = free_port(true);
    let base = format!("udp:127.0.0.1:{p}");
    let g = c1
        .request_socket(&spec(&format!("{base}?reuseport=1")), ShareMode::Any, "a")
        .unwrap();
    for (other, name) in [
        (base.clone(), "reuseport"),
        (format!("{base}?reuseport=1&rcvbuf=8192"), "rcvbuf"),
        (format!("{base}?reuseport=1&reuseaddr=1"), "reuseaddr"),
        (format!("{base}?reuseport=1&freebind=1"), "freebind"),
    ] {
        let before = b.status();
        let e = c2
            .request_socket(&spec(&other), ShareMode::Any, "a")
            .unwrap_err();
        assert_eq!(e.kind(), Kind::ShareConflict, "{other}: {e}");
        assert!(e.message().contains(name), "{other}: {e}");
        assert_eq!(b.status().counters.references, before.counters.references);
    }
    // Spelling the defaults out names the same socket.
    let same = c2
        .request_socket(
            &spec(&format!("{base}?reuseaddr=0&reuseport=1&freebind=0")),
            ShareMode::Any,
            "b",
        )
        .unwrap();
    assert!(same.cached);
    assert_eq!(inode(&same.fd), inode(&g.fd));
    let st = b.status();
    assert_eq!(st.sockets.len(), 1);
    assert_eq!(st.sockets[0].refs, 2);

    // TCP: backlog is identity too.
    let tp = free_port(false);
    c1.request_socket(
        &spec(&format!("tcp:127.0.0.1:{tp}?backlog=8")),
        ShareMode::Any,
        "a",
    )
    .unwrap();
    let e = c2
        .request_socket(
            &spec(&format!("tcp:127.0.0.1:{tp}?backlog=9")),
            ShareMode::Any,
            "a",
        )
        .unwrap_err();
    assert_eq!(e.kind(), Kind::ShareConflict);
    assert!(e.message().contains("backlog"), "{e}");
}

fn udp_members_receive(fds: Vec<OwnedFd>, port: u16) -> Vec<usize> {
    let socks: Vec<UdpSocket> = fds.into_iter().map(UdpSocket::from).collect();
    for s in &socks {
        s.set_nonblocking(true).unwrap();
    }
    // 64 senders from 64 source ports: the reuseport hash spreads them.
    const N: usize = 64;
    for i in 0..N {
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.send_to(&(i as u32).to_le_bytes(), ("127.0.0.1", port))
            .unwrap();
    }
    let mut counts = vec![0usize; socks.len()];
    let mut buf = [0u8; 16];
    wait_for("all datagrams to arrive", || {
        for (i, s) in socks.iter().enumerate() {
            while s.recv_from(&mut buf).is_ok() {
                counts[i] += 1;
            }
        }
        (counts.iter().sum::<usize>() == N).then_some(())
    });
    counts
}

#[test]
fn per_worker_reuseport_group_spreads_load() {
    let b = Broker::start("perworker");
    let p = free_port(true);
    let sp = spec(&format!("udp:127.0.0.1:{p}?reuseport=1"));
    let mut w1 = b.client();
    let mut w2 = b.client();
    let g1 = w1
        .request_with_flags(&sp, ShareMode::SameApp, "srv", proto::REQ_PER_WORKER)
        .unwrap();
    let g2 = w2
        .request_with_flags(&sp, ShareMode::SameApp, "srv", proto::REQ_PER_WORKER)
        .unwrap();
    assert!(!g1.cached && !g2.cached);
    assert_ne!(
        inode(&g1.fd),
        inode(&g2.fd),
        "each worker has its own socket"
    );
    assert_eq!((g1.port, g2.port), (p, p));
    let st = b.status();
    assert_eq!(st.sockets.len(), 2);

    // The group's share mode still applies: another app may not join it.
    let mut other = b.client();
    let e = other
        .request_with_flags(&sp, ShareMode::SameApp, "intruder", proto::REQ_PER_WORKER)
        .unwrap_err();
    assert_eq!(e.kind(), Kind::ShareConflict, "{e}");
    // Nor may a request with other options at that address.
    let e = other
        .request_socket(&spec(&format!("udp:127.0.0.1:{p}")), ShareMode::Any, "srv")
        .unwrap_err();
    assert_eq!(e.kind(), Kind::ShareConflict, "{e}");
    assert!(e.message().contains("reuseport"), "{e}");

    let (t1, t2) = (g1.token, g2.token);
    let counts = udp_members_receive(vec![g1.fd, g2.fd], p);
    assert!(
        counts.iter().all(|c| *c > 0),
        "both members receive load: {counts:?}"
    );

    // Releasing one member leaves the other in place.
    assert_eq!(w1.release(&t1).unwrap(), 0);
    assert_eq!(b.status().sockets.len(), 1);
    assert_eq!(w2.release(&t2).unwrap(), 0);
    assert!(b.status().sockets.is_empty());
    assert!(can_bind(true, p));
}

/// `sockpass request --per-worker`: two CLI processes each hold their own
/// member of one reuseport group.
#[test]
fn per_worker_from_the_cli() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let b = Broker::start("perworkercli");
    let p = free_port(true);
    let s = format!("udp:127.0.0.1:{p}?reuseport=1");
    let start = || {
        let mut c = Command::new(sockpass_bin())
            .args([
                "request",
                "--per-worker",
                "--share",
                "sameapp",
                "--app",
                "srv",
                "--socket",
            ])
            .arg(&b.path)
            .arg(&s)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(c.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.starts_with(&format!("{p} ")), "{line:?}");
        c
    };
    let mut w1 = start();
    let mut w2 = start();
    let st = b.status();
    assert_eq!(st.sockets.len(), 2, "one socket per worker");
    assert!(st.sockets.iter().all(|s| s.port == p && s.refs == 1));
    // Closing a worker's stdin ends it and releases only its member.
    drop(w1.stdin.take());
    assert!(wait_child(&mut w1).success());
    wait_for("one member left", || {
        (b.status().sockets.len() == 1).then_some(())
    });
    drop(w2.stdin.take());
    assert!(wait_child(&mut w2).success());
    wait_for("the group gone", || {
        b.status().sockets.is_empty().then_some(())
    });

    let out = Command::new(sockpass_bin())
        .args(["request", "--per-worker", "--reserve", "--socket"])
        .arg(&b.path)
        .arg(&s)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "usage error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--per-worker"));
}

#[test]
fn per_worker_tcp_listeners_both_accept() {
    let b = Broker::start("perworkertcp");
    let p = free_port(false);
    let sp = spec(&format!("tcp:127.0.0.1:{p}?reuseport=1&backlog=128"));
    let mut w = b.client();
    let g1 = w
        .request_with_flags(&sp, ShareMode::Any, "srv", proto::REQ_PER_WORKER)
        .unwrap();
    let g2 = w
        .request_with_flags(&sp, ShareMode::Any, "srv", proto::REQ_PER_WORKER)
        .unwrap();
    let ls: Vec<std::net::TcpListener> = [g1.fd, g2.fd]
        .into_iter()
        .map(std::net::TcpListener::from)
        .collect();
    for l in &ls {
        l.set_nonblocking(true).unwrap();
    }
    const N: usize = 64;
    let conns: Vec<TcpStream> = (0..N)
        .map(|_| TcpStream::connect(("127.0.0.1", p)).unwrap())
        .collect();
    let mut counts = [0usize; 2];
    wait_for("all connections accepted", || {
        for (i, l) in ls.iter().enumerate() {
            while l.accept().is_ok() {
                counts[i] += 1;
            }
        }
        (counts.iter().sum::<usize>() == N).then_some(())
    });
    drop(conns);
    assert!(counts.iter().all(|c| *c > 0), "{counts:?}");
}

#[test]
fn per_worker_needs_reuseport_and_a_port() {
    let b = Broker::start("perworkerbad");
    let mut c = b.client();
    for s in ["udp:127.0.0.1:5999", "udp:127.0.0.1:0?reuseport=1"] {
        let e = c
            .request_with_flags(&spec(s), ShareMode::Any, "x", proto::REQ_PER_WORKER)
            .unwrap_err();
        assert_eq!(e.kind(), Kind::BadRequest, "{s}: {e}");
    }
    assert!(b.status().sockets.is_empty());
}

#[test]
fn bad_options_are_refused_precisely_without_state_change() {
    let b = Broker::start("optbad");
    let mut c = b.client();
    let keep = c
        .request_socket(&spec("udp:127.0.0.1:0"), ShareMode::Any, "k")
        .unwrap();
    // Broker fds with exactly `c` and the status client connected.
    let settled_fds = || {
        wait_for("only our client connected", || {
            let st = b.status();
            (st.counters.connections == 2).then_some(st.counters.broker_fds)
        })
    };
    let fds_before = settled_fds();
    let refs_before = b.status().counters.references;

    // Parse-time refusals (the CLI and every binding go through this).
    for (s, want) in [
        ("udp:127.0.0.1:53?nosuch=1", "unknown socket option"),
        ("udp:127.0.0.1:53?backlog=4", "TCP only"),
        ("udp:127.0.0.1:53?v6only=1", "IPv6 only"),
        ("udp:127.0.0.1:53?rcvbuf=0", "out of range"),
        ("udp:127.0.0.1:53?sndbuf=1073741825", "out of range"),
        ("tcp:127.0.0.1:53?backlog=9999999", "out of range"),
        ("udp:127.0.0.1:53?reuseport=maybe", "expected 1/0"),
        ("udp:127.0.0.1:53?bindtodevice=a/b", "invalid interface"),
    ] {
        let e = s.parse::<SocketSpec>().unwrap_err();
        assert_eq!(e.kind(), Kind::BadRequest);
        assert!(e.message().contains(want), "{s}: {e}");
    }

    // The broker checks the same on the wire: hand-built requests that skip
    // the client's validation.
    let raw = sockpass::sys::unix_socket(libc::SOCK_SEQPACKET, false).unwrap();
    use std::os::unix::ffi::OsStrExt;
    sockpass::sys::connect_unix(&raw, b.path.as_os_str().as_bytes()).unwrap();
    let udp_head = |opts: &[u8], n: u8| {
        let mut m = Vec::new();
        proto::begin(&mut m, proto::ty::REQUEST, 9);
        m.extend_from_slice(&[2, 0, 1, b'x', 1, 4]);
        m.extend_from_slice(&5999u16.to_le_bytes());
        m.extend_from_slice(&[127, 0, 0, 1, n]);
        m.extend_from_slice(opts);
        m
    };
    for (msg, want) in [
        (udp_head(&[10, 4, 1, 0, 0, 0], 1), "TCP only"),
        (udp_head(&[99, 1, 1], 1), "unknown option tag 99"),
        (udp_head(&[7, 4, 0, 0, 0, 0], 1), "out of range"),
        (udp_head(&[2, 1, 7], 1), "expected one byte"),
        (udp_head(&[2, 1, 1, 2, 1, 1], 2), "given twice"),
        (udp_head(&[6, 0], 1), "invalid interface"),
    ] {
        send_fds(raw.as_fd(), &msg, &[], 0).unwrap();
        let mut buf = [0u8; proto::MAX_MSG];
        let r = recv_fds(raw.as_fd(), &mut buf, 1, 0).unwrap();
        assert!(r.fds.is_empty());
        assert_eq!(buf[1], proto::ty::ERROR);
        let e = proto::decode_error(&buf[proto::HEADER_LEN..r.len]).unwrap();
        assert_eq!(e.kind(), Kind::BadRequest, "{e}");
        assert!(e.message().contains(want), "{want}: {e}");
    }

    drop(raw);

    // An interface that does not exist is found at creation and named.
    if is_root() {
        let e = c
            .request_socket(
                &spec("udp:127.0.0.1:0?bindtodevice=nosuchif9"),
                ShareMode::Any,
                "x",
            )
            .unwrap_err();
        assert!(e.message().contains("\"nosuchif9\" does not exist"), "{e}");
        assert_eq!(e.errno(), libc::ENODEV);
    } else {
        eprintln!("skipping the missing-interface case: SO_BINDTODEVICE needs root");
    }

    assert_eq!(b.status().counters.references, refs_before);
    assert_eq!(settled_fds(), fds_before, "no fd leaked or closed");
    assert_eq!(c.token_of(keep.fd.as_raw_fd()), Some(keep.token));
    // The connection still works.
    c.release(&keep.token).unwrap();
}

#[test]
fn spec_strings_round_trip() {
    for s in [
        "udp:127.0.0.1:53?reuseport=1",
        "tcp:[::]:443?reuseaddr=0&reuseport=1&v6only=0&freebind=1&transparent=1&bindtodevice=eth0&rcvbuf=1&sndbuf=1073741824&mark=4294967295&backlog=0",
    ] {
        let a: SocketSpec = s.parse().unwrap();
        assert_eq!(a.to_string(), s);
        let mut w = Vec::new();
        a.encode(&mut w);
        let (back, n) = SocketSpec::decode(&w).unwrap();
        assert_eq!((back, n), (a, w.len()));
    }
}
