//! More kinds of socket from the broker: raw ICMP (an echo on loopback) and
//! Unix-domain stream, dgram and seqpacket sockets at a path, with their mode
//! and owner, stale-file replacement and refusal of a live one.

mod common;

use common::*;
use sockpass::sys::poll_one;
use sockpass::{Kind, ShareMode, SocketSpec};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};

fn spec(s: &str) -> SocketSpec {
    s.parse().unwrap()
}

fn checksum(b: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in b.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        sum += w as u32;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Send an ICMP echo request to 127.0.0.1 on `fd` and wait for its reply.
fn icmp_echo(fd: &OwnedFd) -> bool {
    let id = (std::process::id() & 0xffff) as u16;
    let mut pkt = vec![8u8, 0, 0, 0];
    pkt.extend_from_slice(&id.to_be_bytes());
    pkt.extend_from_slice(&7u16.to_be_bytes());
    pkt.extend_from_slice(b"sockpass-echo");
    let c = checksum(&pkt);
    pkt[2..4].copy_from_slice(&c.to_be_bytes());
    let (sa, len) = sockpass::sys::sockaddr_from("127.0.0.1".parse().unwrap(), 0);
    // SAFETY: sa/len describe a valid sockaddr; pkt is a valid buffer.
    let r = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            pkt.as_ptr().cast(),
            pkt.len(),
            0,
            (&sa as *const libc::sockaddr_storage).cast(),
            len,
        )
    };
    assert_eq!(r, pkt.len() as isize, "sendto");
    let t0 = std::time::Instant::now();
    while t0.elapsed() < WAIT {
        if poll_one(fd.as_fd(), libc::POLLIN, 1000).unwrap() == 0 {
            continue;
        }
        let mut buf = [0u8; 1500];
        // SAFETY: buf is valid for writing its length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        assert!(n > 0);
        let n = n as usize;
        // A raw IPv4 socket receives the IP header too.
        let ihl = ((buf[0] & 0x0f) as usize) * 4;
        let icmp = &buf[ihl..n];
        // Type 0 (echo reply) with our id; our own request (type 8) is seen too.
        if icmp.len() >= 8 && icmp[0] == 0 && icmp[4..6] == id.to_be_bytes() {
            return icmp.ends_with(b"sockpass-echo");
        }
    }
    false
}

/// The interface a socket is bound to (SO_BINDTODEVICE), "" if none.
fn bound_device(fd: &OwnedFd) -> String {
    let mut buf = [0u8; 32];
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: buf and len describe a live buffer.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            buf.as_mut_ptr().cast(),
            &mut len,
        )
    };
    assert_eq!(r, 0, "getsockopt SO_BINDTODEVICE");
    let n = buf[..len as usize]
        .iter()
        .position(|b| *b == 0)
        .unwrap_or(len as usize);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn raw_icmp_echo_on_loopback() {
    if !is_root() {
        eprintln!("skipping raw_icmp_echo_on_loopback: raw sockets need root");
        return;
    }
    let b = Broker::start("raw");
    let mut c = b.client();
    let g = c
        .request_socket(&spec("raw:icmp:127.0.0.1"), ShareMode::Any, "ping")
        .unwrap();
    assert_eq!(
        sockpass::sys::getsockopt_int(&g.fd, libc::SOL_SOCKET, libc::SO_TYPE).unwrap(),
        libc::SOCK_RAW
    );
    assert_eq!(
        sockpass::sys::getsockopt_int(&g.fd, libc::SOL_SOCKET, libc::SO_PROTOCOL).unwrap(),
        libc::IPPROTO_ICMP
    );
    assert!(sockpass::sys::is_cloexec(g.fd.as_raw_fd()));
    assert!(icmp_echo(&g.fd), "no echo reply");
    // A raw socket is cached like any other.
    let g2 = b
        .client()
        .request_socket(&spec("raw:icmp:127.0.0.1"), ShareMode::Any, "ping2")
        .unwrap();
    assert!(g2.cached);
    // Bound to an interface, and ICMPv6 on ::1.
    let g3 = c
        .request_socket(
            &spec("raw:icmpv6:[::1]?bindtodevice=lo"),
            ShareMode::None,
            "p",
        )
        .unwrap();
    assert_eq!(
        sockpass::sys::getsockopt_int(&g3.fd, libc::SOL_SOCKET, libc::SO_PROTOCOL).unwrap(),
        libc::IPPROTO_ICMPV6
    );
    assert_eq!(bound_device(&g3.fd), "lo");
    // Bound to the interface only (any address): the echo still comes back
    // on lo.
    let g4 = c
        .request_socket(
            &spec("raw:icmp:0.0.0.0?bindtodevice=lo"),
            ShareMode::None,
            "p",
        )
        .unwrap();
    assert_eq!(bound_device(&g4.fd), "lo");
    assert!(icmp_echo(&g4.fd), "no echo reply on the lo-bound socket");
    let st = b.status();
    assert!(st
        .sockets
        .iter()
        .any(|s| s.spec.to_string().starts_with("raw:icmp:127.0.0.1")));
}

#[test]
fn unix_stream_socket_with_mode_and_owner() {
    let b = Broker::start("unixstream");
    let dir = temp_dir("unixstream-sock");
    let path = dir.join("app.sock");
    let owner = if is_root() { "&owner=65534:65534" } else { "" };
    let s = format!("unix:{}?backlog=8&mode=0640{owner}", path.display());
    let mut c = b.client();
    let g = c.request_socket(&spec(&s), ShareMode::Any, "u").unwrap();
    assert!(!g.cached);
    let m = std::fs::symlink_metadata(&path).unwrap();
    assert!(m.file_type().is_socket());
    assert_eq!(m.mode() & 0o7777, 0o640);
    if is_root() {
        assert_eq!((m.uid(), m.gid()), (65534, 65534));
    }
    // It listens already: connect and talk.
    let l = UnixListener::from(g.fd);
    // Its address is the absolute path (what getsockname, D-Bus addresses
    // and ServerSocket::adopt see), not a name relative to its directory.
    assert_eq!(l.local_addr().unwrap().as_pathname(), Some(path.as_path()));
    let p2 = path.clone();
    let t = std::thread::spawn(move || {
        let mut s = UnixStream::connect(p2).unwrap();
        s.write_all(b"hi").unwrap();
    });
    let (mut conn, _) = l.accept().unwrap();
    let mut got = String::new();
    conn.read_to_string(&mut got).unwrap();
    assert_eq!(got, "hi");
    t.join().unwrap();
    // Cached: same socket for the same spec, and other options conflict.
    let g2 = b
        .client()
        .request_socket(&spec(&s), ShareMode::Any, "u2")
        .unwrap();
    assert!(g2.cached);
    assert_eq!(inode(&g2.fd), inode(&OwnedFd::from(l)));
    let e = b
        .client()
        .request_socket(
            &spec(&format!("unix:{}?backlog=8", path.display())),
            ShareMode::Any,
            "u3",
        )
        .unwrap_err();
    assert_eq!(e.kind(), Kind::ShareConflict);
    assert!(e.message().contains("mode"), "{e}");
    drop(g2);
    // The last release removes the file: the path is free again.
    c.release(&g.token).unwrap();
    wait_for("the second holder's connection to close", || {
        (b.status().counters.references == 0).then_some(())
    });
    assert!(!path.exists(), "socket file removed with the socket");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unix_dgram_and_seqpacket() {
    let b = Broker::start("unixdg");
    let dir = temp_dir("unixdg-sock");
    let mut c = b.client();
    let dpath = dir.join("d.sock");
    let g = c
        .request_socket(
            &spec(&format!("unix-dgram:{}?mode=0600", dpath.display())),
            ShareMode::None,
            "d",
        )
        .unwrap();
    assert_eq!(std::fs::metadata(&dpath).unwrap().mode() & 0o777, 0o600);
    let rx = UnixDatagram::from(g.fd);
    let tx = UnixDatagram::unbound().unwrap();
    tx.send_to(b"dgram", &dpath).unwrap();
    let mut buf = [0u8; 16];
    rx.set_read_timeout(Some(WAIT)).unwrap();
    let n = rx.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"dgram");

    let qpath = dir.join("q.sock");
    let g = c
        .request_socket(
            &spec(&format!("unix-seqpacket:{}?backlog=4", qpath.display())),
            ShareMode::None,
            "q",
        )
        .unwrap();
    assert_eq!(
        sockpass::sys::getsockopt_int(&g.fd, libc::SOL_SOCKET, libc::SO_TYPE).unwrap(),
        libc::SOCK_SEQPACKET
    );
    assert_eq!(
        std::fs::metadata(&qpath).unwrap().mode() & 0o777,
        0o666,
        "default mode"
    );
    let cl = sockpass::sys::unix_socket(libc::SOCK_SEQPACKET, false).unwrap();
    use std::os::unix::ffi::OsStrExt;
    sockpass::sys::connect_unix(&cl, qpath.as_os_str().as_bytes()).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn stale_socket_file_is_replaced_a_live_one_is_not() {
    let b = Broker::start("unixstale");
    let dir = temp_dir("unixstale-sock");
    let mut c = b.client();

    // Stale: bound once, nobody listens now.
    let stale = dir.join("stale.sock");
    drop(UnixListener::bind(&stale).unwrap());
    assert!(stale.exists());
    // A child another test thread forks may hold a copy of that listener
    // until it execs, so the file can read as live for a moment: bounded.
    let stale_spec = spec(&format!("unix:{}?backlog=1", stale.display()));
    let g = wait_for("the stale socket file to read as stale", || {
        match c.request_socket(&stale_spec, ShareMode::None, "s") {
            Err(e) if e.kind() == Kind::AddressInUse => None,
            r => Some(r.unwrap()),
        }
    });
    // The path now answers: the broker's socket replaced the stale file.
    UnixStream::connect(&stale).unwrap();
    drop(g);

    // Live stream listener and live dgram socket: refused, untouched.
    let live = dir.join("live.sock");
    let l = UnixListener::bind(&live).unwrap();
    let live_d = dir.join("lived.sock");
    let d = UnixDatagram::bind(&live_d).unwrap();
    for (p, kind) in [(&live, "unix"), (&live_d, "unix-dgram")] {
        let before = b.status().counters.references;
        let e = c
            .request_socket(
                &spec(&format!("{kind}:{}", p.display())),
                ShareMode::None,
                "s",
            )
            .unwrap_err();
        assert_eq!(e.kind(), Kind::AddressInUse, "{e}");
        assert!(e.message().contains("listens"), "{e}");
        assert_eq!(b.status().counters.references, before);
    }
    l.set_nonblocking(true).unwrap();
    // The probe's connection may be waiting; the listener itself still works.
    let _probe = l.accept();
    let t = UnixStream::connect(&live).unwrap();
    drop(t);
    UnixDatagram::unbound()
        .unwrap()
        .send_to(b"x", &live_d)
        .unwrap();
    let mut buf = [0u8; 4];
    d.set_read_timeout(Some(WAIT)).unwrap();
    assert_eq!(d.recv(&mut buf).unwrap(), 1);

    // Not a socket: refused, untouched.
    let file = dir.join("file");
    std::fs::write(&file, "keep").unwrap();
    let e = c
        .request_socket(
            &spec(&format!("unix:{}", file.display())),
            ShareMode::None,
            "s",
        )
        .unwrap_err();
    assert!(e.message().contains("not a socket"), "{e}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn symlinks_at_or_above_a_unix_socket_path_are_refused() {
    let b = Broker::start("unixlinks");
    let dir = temp_dir("unixlinks-sock");
    let mut c = b.client();
    let owner = if is_root() { "&owner=65534:65534" } else { "" };

    // A symlink at the socket path to a regular file: refused; the file keeps
    // its mode, owner and contents, and the link stays.
    let target = dir.join("precious");
    std::fs::write(&target, "keep").unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
    if is_root() {
        std::os::unix::fs::chown(&target, Some(1234), Some(1234)).unwrap();
    }
    let before = std::fs::metadata(&target).unwrap();
    let link = dir.join("app.sock");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    for kind in ["unix", "unix-dgram"] {
        let e = c
            .request_socket(
                &spec(&format!("{kind}:{}?mode=0666{owner}", link.display())),
                ShareMode::None,
                "s",
            )
            .unwrap_err();
        assert!(e.message().contains("is a symlink"), "{e}");
    }
    let after = std::fs::metadata(&target).unwrap();
    assert_eq!(
        (after.mode(), after.uid(), after.gid()),
        (before.mode(), before.uid(), before.gid())
    );
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    // A symlink at the path to a stale socket elsewhere: not replaced either.
    let outside = dir.join("outside.sock");
    drop(UnixListener::bind(&outside).unwrap());
    let link2 = dir.join("stale-link.sock");
    std::os::unix::fs::symlink(&outside, &link2).unwrap();
    let e = c
        .request_socket(
            &spec(&format!("unix:{}", link2.display())),
            ShareMode::None,
            "s",
        )
        .unwrap_err();
    assert!(e.message().contains("is a symlink"), "{e}");
    assert!(std::fs::symlink_metadata(&outside)
        .unwrap()
        .file_type()
        .is_socket());

    // A symlinked directory on the way: refused, nothing created where it
    // points, whichever component is the link.
    let real = dir.join("real");
    std::fs::create_dir(&real).unwrap();
    std::os::unix::fs::symlink(&real, dir.join("linkdir")).unwrap();
    let up = temp_dir("unixlinks-up");
    std::os::unix::fs::symlink(&dir, up.join("d")).unwrap();
    for p in [dir.join("linkdir/s.sock"), up.join("d/real/s.sock")] {
        let e = c
            .request_socket(
                &spec(&format!("unix-seqpacket:{}?backlog=1", p.display())),
                ShareMode::None,
                "s",
            )
            .unwrap_err();
        assert_eq!(e.kind(), Kind::NotAllowed, "{e}");
        assert!(
            e.message()
                .contains("is a symlink or not a directory; refusing"),
            "{}: {e}",
            p.display()
        );
    }
    assert!(!real.join("s.sock").exists());
    assert_eq!(b.status().counters.references, 0);
    assert!(b.log_text().contains("is a symlink"), "{}", b.log_text());

    // A directory swapped for a symlink while the socket is held: closing it
    // does not unlink the file the link now leads to.
    let g = c
        .request_socket(
            &spec(&format!("unix:{}/s.sock?backlog=1", real.display())),
            ShareMode::None,
            "s",
        )
        .unwrap();
    let moved = dir.join("moved");
    std::fs::rename(&real, &moved).unwrap();
    std::os::unix::fs::symlink(&moved, &real).unwrap();
    c.release(&g.token).unwrap();
    drop(g);
    wait_for("the release", || {
        (b.status().counters.references == 0).then_some(())
    });
    assert!(
        moved.join("s.sock").exists(),
        "the socket file behind the symlink was not removed"
    );
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&up);
}

#[test]
fn tcp_and_udp_are_unchanged_by_the_new_kinds() {
    let b = Broker::start("kindsip");
    let mut c = b.client();
    let g = c
        .request_socket(&spec("udp:127.0.0.1:0"), ShareMode::Any, "x")
        .unwrap();
    assert_ne!(g.port, 0);
    let st = b.status();
    let s = &st.sockets[0].spec;
    // Status shows the spec as requested (port 0) and the port it got.
    assert_eq!((s.proto, s.port, s.ipproto), (sockpass::Proto::Udp, 0, 0));
    assert_eq!(st.sockets[0].port, g.port);
    assert!(s.path.is_empty());
}
