//! The broker end to end: a real sockpassd, real client processes, real
//! sockets and traffic.

mod common;

use common::*;
use sockpass::fdpass::{recv_fds, send_fds};
use sockpass::proto;
use sockpass::Client;
use sockpass::{Kind, ShareMode, SocketSpec};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::Command;

fn spec(s: &str) -> SocketSpec {
    s.parse().unwrap()
}

#[test]
fn udp_socket_carries_traffic() {
    let b = Broker::start("udp");
    let mut c = b.client();
    let g = c
        .request_socket(&spec("udp:127.0.0.1:0"), ShareMode::None, "t")
        .unwrap();
    assert_ne!(g.port, 0);
    assert!(sockpass::sys::is_cloexec(g.fd.as_raw_fd()));
    let s = UdpSocket::from(g.fd);
    assert_eq!(s.local_addr().unwrap().port(), g.port);
    s.send_to(b"ping", s.local_addr().unwrap()).unwrap();
    let mut buf = [0u8; 8];
    s.set_read_timeout(Some(WAIT)).unwrap();
    let (n, _) = s.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"ping");
}

#[test]
fn tcp_socket_is_bound_not_listening_and_accepts_after_listen() {
    let b = Broker::start("tcp");
    let mut c = b.client();
    let g = c
        .request_socket(&spec("tcp:[::1]:0"), ShareMode::None, "t")
        .unwrap();
    // BIND10 defaults: SO_REUSEADDR, IPV6_V6ONLY, bound, not listening.
    assert_eq!(
        sockpass::sys::getsockopt_int(&g.fd, libc::SOL_SOCKET, libc::SO_ACCEPTCONN).unwrap(),
        0
    );
    assert_eq!(
        sockpass::sys::getsockopt_int(&g.fd, libc::SOL_SOCKET, libc::SO_REUSEADDR).unwrap(),
        1
    );
    assert_eq!(
        sockpass::sys::getsockopt_int(&g.fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY).unwrap(),
        1
    );
    // SAFETY: listen on the received socket.
    assert_eq!(unsafe { libc::listen(g.fd.as_raw_fd(), 8) }, 0);
    let l = TcpListener::from(g.fd);
    let port = l.local_addr().unwrap().port();
    let t = std::thread::spawn(move || {
        let mut s = TcpStream::connect(("::1", port)).unwrap();
        std::io::Write::write_all(&mut s, b"hello").unwrap();
    });
    let (mut conn, _) = l.accept().unwrap();
    let mut buf = String::new();
    std::io::Read::read_to_string(&mut conn, &mut buf).unwrap();
    assert_eq!(buf, "hello");
    t.join().unwrap();
}

#[test]
fn cache_hit_returns_the_same_socket_and_counts_references() {
    let b = Broker::start("cache");
    let port = free_port(true);
    let sp = spec(&format!("udp:127.0.0.1:{port}"));
    let mut c1 = b.client();
    let mut c2 = b.client();
    let g1 = c1.request_socket(&sp, ShareMode::Any, "a").unwrap();
    let g2 = c2.request_socket(&sp, ShareMode::Any, "b").unwrap();
    assert!(!g1.cached);
    assert!(g2.cached);
    assert_eq!(inode(&g1.fd), inode(&g2.fd));
    assert_ne!(g1.token, g2.token);
    let st = b.status();
    assert_eq!(st.sockets.len(), 1);
    assert_eq!(st.sockets[0].refs, 2);
    assert_eq!(st.counters.references, 2);
    // Releasing one keeps the socket; releasing the last closes it.
    assert_eq!(c1.release(&g1.token).unwrap(), 1);
    drop(g1.fd);
    assert_eq!(b.status().sockets.len(), 1);
    assert_eq!(c2.release_fd(g2.fd.as_raw_fd()).unwrap(), 0);
    drop(g2.fd);
    assert_eq!(b.status().sockets.len(), 0);
    assert!(
        can_bind(true, port),
        "port {port} must be free after the last release"
    );
}

#[test]
fn release_all_also_releases_references_whose_fd_was_closed() {
    // A caller may close a granted fd and keep the reference; the kernel then
    // gives the fd's number to the next grant. release_all must still release
    // the first reference (it once knew tokens only by fd number).
    let b = Broker::start("relall");
    let sp = spec(&format!("udp:127.0.0.1:{}", free_port(true)));
    let mut c = b.client();
    let mut reused = None;
    for _ in 0..20 {
        let g1 = c.request_socket(&sp, ShareMode::Any, "a").unwrap();
        let n = g1.fd.as_raw_fd();
        drop(g1.fd);
        let g2 = c.request_socket(&sp, ShareMode::Any, "a").unwrap();
        // Other test threads open fds too: retry until the number came back.
        if g2.fd.as_raw_fd() == n {
            reused = Some((g1.token, g2));
            break;
        }
    }
    let (t1, g2) = reused.expect("the kernel never reused a closed fd's number");
    let held: Vec<_> = c.held().collect();
    assert!(held.contains(&(-1, t1)), "{held:?}");
    assert!(held.contains(&(g2.fd.as_raw_fd(), g2.token)), "{held:?}");
    let refs = b.status().sockets[0].refs;
    assert!(refs >= 2);
    assert_eq!(c.release_all().unwrap(), refs as usize);
    assert!(b.status().sockets.is_empty(), "every reference released");
    assert_eq!(c.held().count(), 0);
    // Our fd is the last: UDP has SO_REUSEADDR off, so the port is free
    // again only once it is closed.
    drop(g2);
    // Releasing by token works for an unmapped one as well.
    let g3 = c.request_socket(&sp, ShareMode::Any, "a").unwrap();
    let n = g3.fd.as_raw_fd();
    drop(g3.fd);
    let g4 = (0..20)
        .map(|_| c.request_socket(&sp, ShareMode::Any, "a").unwrap())
        .find(|g| g.fd.as_raw_fd() == n)
        .expect("the kernel never reused a closed fd's number");
    assert_eq!(
        c.release(&g3.token).unwrap() as usize,
        b.status().sockets[0].refs as usize
    );
    assert!(!c.held().any(|(_, t)| t == g3.token));
    assert_eq!(c.release_fd(g4.fd.as_raw_fd()).unwrap(), 0);
}

#[test]
fn release_many_pipelines_thousands_of_releases_in_order() {
    // Sending every release before reading a reply deadlocked at about 500:
    // the broker's replies filled the socket and it stopped reading.
    let b = Broker::start("relmany");
    let sp = spec(&format!("udp:127.0.0.1:{}", free_port(true)));
    let mut c = b.client();
    // A deadlock fails the test instead of hanging it.
    let tv = libc::timeval {
        tv_sec: WAIT.as_secs() as libc::time_t,
        tv_usec: 0,
    };
    for opt in [libc::SO_SNDTIMEO, libc::SO_RCVTIMEO] {
        // SAFETY: tv is a valid timeval for this socket option.
        let r = unsafe {
            libc::setsockopt(
                c.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        assert_eq!(r, 0);
    }
    const N: usize = 3000;
    let mut tokens: Vec<_> = (0..N)
        .map(|_| c.request_socket(&sp, ShareMode::Any, "a").unwrap().token)
        .collect();
    // An unknown token in the middle fails alone; the others still go.
    let mut other = b.client();
    let stranger = other
        .request_socket(&sp, ShareMode::Any, "b")
        .unwrap()
        .token;
    tokens.insert(N / 2, stranger);
    let res = c.release_many(&tokens).unwrap();
    assert_eq!(res.len(), N + 1);
    assert_eq!(
        res[N / 2].as_ref().unwrap_err().kind(),
        Kind::UnknownToken,
        "{:?}",
        res[N / 2]
    );
    // References left count down in order, to the other client's one.
    let left: Vec<u32> = res
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != N / 2)
        .map(|(_, r)| *r.as_ref().unwrap())
        .collect();
    let want: Vec<u32> = (1..=N as u32).rev().collect();
    assert_eq!(left, want);
    assert_eq!(other.release(&stranger).unwrap(), 0);
    assert!(b.status().sockets.is_empty());
    assert_eq!(c.held().count(), 0);
    // The connection is still in step: the next call gets its own reply.
    // References whose fds are still open are forgotten by fd as well.
    let live: Vec<_> = (0..300)
        .map(|_| c.request_socket(&sp, ShareMode::Any, "a").unwrap())
        .collect();
    assert_eq!(c.held().filter(|(fd, _)| *fd >= 0).count(), 300);
    assert_eq!(c.release_all().unwrap(), 300);
    assert_eq!(c.held().count(), 0);
    assert!(c.token_of(live[0].fd.as_raw_fd()).is_none());
    assert!(b.status().sockets.is_empty());
}

#[test]
fn release_many_message_answers_each_token_in_order() {
    // The wire form, byte by byte as docs/PROTOCOL.md gives it.
    let b = Broker::start("relmanywire");
    let sp = spec(&format!("udp:127.0.0.1:{}", free_port(true)));
    let mut c = b.client();
    let g1 = c.request_socket(&sp, ShareMode::Any, "a").unwrap();
    let g2 = c.request_socket(&sp, ShareMode::Any, "a").unwrap();
    let mut other = b.client();
    let theirs = other.request_socket(&sp, ShareMode::Any, "a").unwrap();
    // Raw, on the same connection: the client's next id is in step since
    // every call so far was answered.
    // SAFETY: the client's connection fd, open while `c` lives.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(c.as_raw_fd()) };
    let mut msg = Vec::new();
    proto::begin(&mut msg, proto::ty::RELEASE_MANY, 99);
    msg.extend_from_slice(&4u16.to_le_bytes());
    for t in [&g1.token, &theirs.token, &g1.token, &g2.token] {
        msg.extend_from_slice(t.as_bytes());
    }
    send_fds(fd, &msg, &[], 0).unwrap();
    let mut buf = [0u8; proto::MAX_MSG];
    let r = recv_fds(fd, &mut buf, 0, 0).unwrap();
    let reply = &buf[..r.len];
    let h = proto::Header::parse(reply).unwrap();
    assert_eq!((h.ty, h.id), (proto::ty::RELEASED_MANY, 99));
    assert_eq!(
        reply.len(),
        proto::HEADER_LEN + 2 + 4 * proto::RELEASED_ENTRY_LEN
    );
    assert_eq!(&reply[8..10], &4u16.to_le_bytes());
    let entry = |i: usize| {
        let e = &reply[10 + 8 * i..18 + 8 * i];
        (
            i32::from_le_bytes(e[..4].try_into().unwrap()),
            u16::from_le_bytes(e[4..6].try_into().unwrap()),
            &e[6..8],
        )
    };
    // g1: 2 references left (g2's and theirs); another client's token and
    // g1 again: unknown token (kind 5), errno ENOENT; g2: 1 left.
    assert_eq!(entry(0), (2, 0, &[0u8, 0][..]));
    assert_eq!(
        entry(1),
        (libc::ENOENT, Kind::UnknownToken.wire(), &[0u8, 0][..])
    );
    assert_eq!(
        entry(2),
        (libc::ENOENT, Kind::UnknownToken.wire(), &[0u8, 0][..])
    );
    assert_eq!(entry(3), (1, 0, &[0u8, 0][..]));
    assert_eq!(b.status().sockets[0].refs, 1);
    assert_eq!(other.release_many(&[theirs.token]).unwrap(), vec![Ok(0)]);
    assert!(b.status().sockets.is_empty());
}

#[test]
fn ephemeral_port_zero_is_never_shared() {
    let b = Broker::start("eph");
    let mut c = b.client();
    let a = c
        .request_socket(&spec("tcp:127.0.0.1:0"), ShareMode::Any, "x")
        .unwrap();
    let d = c
        .request_socket(&spec("tcp:127.0.0.1:0"), ShareMode::Any, "x")
        .unwrap();
    assert_ne!(a.port, d.port);
    assert_ne!(inode(&a.fd), inode(&d.fd));
    assert!(!d.cached);
    assert_eq!(b.status().sockets.len(), 2);
}

/// Every refused request is a log line naming the client and the reason; a
/// flood of them is bounded to a budget a second plus one summary line.
#[test]
fn refused_requests_are_logged_within_a_budget() {
    let b = Broker::start("refusal-log");
    let port = free_port(true);
    let sp = spec(&format!("udp:127.0.0.1:{port}"));
    let mut holder = b.client();
    holder.request_socket(&sp, ShareMode::None, "a").unwrap();
    let mut c = b.client();
    let e = c.request_socket(&sp, ShareMode::Any, "b").unwrap_err();
    assert_eq!(e.kind(), Kind::ShareConflict);
    let me = std::process::id();
    let line = format!("refused request from pid {me} uid");
    wait_for("the refusal logged", || {
        b.log_text().contains(&line).then_some(())
    });
    // 500 more at once: the log stays bounded, the broker keeps answering.
    for _ in 0..500 {
        assert_eq!(
            c.request_socket(&sp, ShareMode::Any, "b")
                .unwrap_err()
                .kind(),
            Kind::ShareConflict
        );
    }
    let lines = b.log_text().matches(&line).count();
    assert!(
        (2..=41).contains(&lines),
        "{lines} refusal lines for 501 refusals"
    );
    // Once a second has passed, the next refusal reports what was left out.
    wait_for("the summary of refusals not logged", || {
        let _ = c.request_socket(&sp, ShareMode::Any, "b");
        std::thread::sleep(std::time::Duration::from_millis(50));
        b.log_text()
            .contains("more refused request(s) not logged in the last second")
            .then_some(())
    });
    assert_eq!(b.status().sockets[0].refs, 1);
}

#[test]
fn share_mode_matrix_in_full() {
    use ShareMode::*;
    let b = Broker::start("matrix");
    let modes = [None, SameApp, Any];
    let apps = ["a", "b"];
    let mut checked = 0;
    for m1 in modes {
        for m2 in modes {
            for a2 in apps {
                let port = free_port(false);
                let sp = spec(&format!("tcp:127.0.0.1:{port}"));
                let mut c1 = b.client();
                let mut c2 = b.client();
                let g1 = c1.request_socket(&sp, m1, "a").unwrap();
                let before = b.status();
                let expect = sockpass::compatible(m2, a2, m1, "a");
                // Independent statement of BIND10's rule, to check the code against.
                let manual = match (m1, m2) {
                    (None, _) | (_, None) => false,
                    (Any, Any) => true,
                    _ => a2 == "a",
                };
                assert_eq!(expect, manual, "{m1:?}(a) then {m2:?}({a2})");
                match c2.request_socket(&sp, m2, a2) {
                    Ok(g2) => {
                        assert!(expect, "{m1:?}(a) then {m2:?}({a2}) should be refused");
                        assert_eq!(inode(&g1.fd), inode(&g2.fd));
                        assert_eq!(b.status().sockets[0].refs, 2);
                    }
                    Err(e) => {
                        assert!(!expect, "{m1:?}(a) then {m2:?}({a2}) should share: {e}");
                        assert_eq!(e.kind(), Kind::ShareConflict, "{e}");
                        assert_eq!(e.code(), sockpass::CODE_SHARE_CONFLICT);
                        // A refusal changes no state.
                        let after = b.status();
                        assert_eq!(after.sockets, before.sockets);
                        assert_eq!(after.counters.references, before.counters.references);
                    }
                }
                drop(c1);
                drop(c2);
                wait_for("references dropped", || {
                    (b.status().counters.references == 0).then_some(())
                });
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 18);
    // The three-holder case: SAMEAPP(a) then ANY(a) then ANY(b) is refused by the first.
    let port = free_port(true);
    let sp = spec(&format!("udp:127.0.0.1:{port}"));
    let mut c = b.client();
    c.request_socket(&sp, SameApp, "a").unwrap();
    c.request_socket(&sp, Any, "a").unwrap();
    assert_eq!(
        c.request_socket(&sp, Any, "b").unwrap_err().kind(),
        Kind::ShareConflict
    );
}

#[test]
fn differing_options_are_a_named_sharing_conflict() {
    let b = Broker::start("opts");
    let port = free_port(true);
    let mut c = b.client();
    c.request_socket(&spec(&format!("udp:127.0.0.1:{port}")), ShareMode::Any, "a")
        .unwrap();
    let e = c
        .request_socket(
            &spec(&format!("udp:127.0.0.1:{port}?rcvbuf=65536")),
            ShareMode::Any,
            "a",
        )
        .unwrap_err();
    assert_eq!(e.kind(), Kind::ShareConflict);
    assert!(e.message().contains("rcvbuf"), "{e}");
}

#[test]
fn release_errors_are_clear() {
    let b = Broker::start("release");
    let mut c1 = b.client();
    let mut c2 = b.client();
    let g = c1
        .request_socket(&spec("udp:127.0.0.1:0"), ShareMode::None, "a")
        .unwrap();
    let e = c2.release(&g.token).unwrap_err();
    assert_eq!(e.kind(), Kind::UnknownToken);
    assert!(e.message().contains("another client"), "{e}");
    assert_eq!(
        b.status().counters.references,
        1,
        "a foreign release must not drop the reference"
    );
    c1.release(&g.token).unwrap();
    let e = c1.release(&g.token).unwrap_err();
    assert_eq!(e.kind(), Kind::UnknownToken);
    assert_eq!(e.code(), sockpass::CODE_UNKNOWN_TOKEN);
    assert_eq!(c1.release_fd(9999).unwrap_err().kind(), Kind::UnknownToken);
    assert_eq!(c1.release_fd(-1).unwrap_err().kind(), Kind::BadRequest);
}

#[test]
fn address_in_use_outside_the_broker_is_reported_with_errno() {
    let b = Broker::start("inuse");
    let holder = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    let e = b
        .client()
        .request_socket(
            &spec(&format!("udp:127.0.0.1:{port}")),
            ShareMode::None,
            "a",
        )
        .unwrap_err();
    assert_eq!(e.kind(), Kind::AddressInUse);
    assert_eq!(e.errno(), libc::EADDRINUSE);
    assert_eq!(b.status().sockets.len(), 0);
}

#[test]
fn empty_app_name_means_the_executable_name() {
    let b = Broker::start("appname");
    let mut c = b.client();
    c.request_socket(&spec("udp:127.0.0.1:0"), ShareMode::SameApp, "")
        .unwrap();
    let st = b.status();
    // The whole file name, not comm's 15 bytes: this binary's name is longer.
    let exe = std::env::current_exe().unwrap();
    let name = exe.file_name().unwrap().to_str().unwrap();
    assert!(name.len() > 15, "{name}");
    assert_eq!(st.sockets[0].holders[0].app, name);
    // A cached socket asked for again and again (the later requests by
    // their remembered spec bytes): sameapp holds among requests that name
    // no application, and each reference carries the executable's name.
    let sp = spec(&format!("udp:127.0.0.1:{}", free_port(true)));
    for _ in 0..4 {
        c.request_socket(&sp, ShareMode::SameApp, "").unwrap();
    }
    let st = b.status();
    let s = st.sockets.iter().find(|s| s.spec.port == sp.port).unwrap();
    assert_eq!(s.refs, 4);
    assert!(s.holders.iter().all(|h| h.app == name), "{:?}", s.holders);
}

/// Child: request the socket named in SOCKPASS_SPEC, print the port, hold it.
#[test]
#[ignore]
fn child_holds_a_socket() {
    if !is_child() {
        return;
    }
    let path = std::env::var("SOCKPASS_SOCKET").unwrap();
    let sp: SocketSpec = std::env::var("SOCKPASS_SPEC").unwrap().parse().unwrap();
    let mut c = Client::connect(path).unwrap();
    let g = c.request_socket(&sp, ShareMode::Any, "child").unwrap();
    println!("@@ port {}", g.port);
    std::thread::sleep(WAIT * 2);
    drop(g);
}

#[test]
fn sigkill_of_a_client_drops_its_references() {
    let b = Broker::start("sigkill");
    let port = free_port(true);
    let sp = format!("udp:127.0.0.1:{port}");
    let env = [
        ("SOCKPASS_SOCKET", path_str(&b.path)),
        ("SOCKPASS_SPEC", sp.clone()),
    ];
    let mut kids: Vec<_> = (0..3)
        .map(|_| spawn_self("child_holds_a_socket", &env))
        .collect();
    for k in kids.iter_mut() {
        assert_eq!(read_line(k), format!("port {port}"));
    }
    let st = b.status();
    assert_eq!(st.sockets.len(), 1);
    assert_eq!(st.sockets[0].refs, 3);
    let pids: Vec<i32> = kids.iter().map(|k| k.id() as i32).collect();
    for h in &st.sockets[0].holders {
        assert!(
            pids.contains(&h.pid),
            "holder pid {} is one of the children",
            h.pid
        );
    }
    assert!(!can_bind(true, port));
    for k in kids.iter_mut() {
        k.kill().unwrap();
        k.wait().unwrap();
    }
    wait_for("the killed clients' references to drop", || {
        (b.status().counters.references == 0).then_some(())
    });
    assert_eq!(b.status().sockets.len(), 0);
    assert!(
        can_bind(true, port),
        "port must be rebindable once its holders died"
    );
    assert!(
        b.log_text().contains("1 reference(s) dropped"),
        "log: {}",
        b.log_text()
    );
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
    assert_eq!(u32::from_le_bytes(buf[12..16].try_into().unwrap()), 1024);
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
        ("RELEASE_MANY saying 43 tokens", release_many(43, 42)),
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

    // Requests carrying 1 and 250 fds: refused, and every fd closed.
    let (x, _y) = sockpass::fdpass::socketpair(libc::SOCK_STREAM).unwrap();
    for n in [1usize, 250] {
        let fd = raw_conn(&b);
        let many: Vec<_> = (0..n).map(|_| x.as_fd()).collect();
        assert_eq!(
            send_raw(&fd, &valid, &many),
            Outcome::Error(Kind::BadRequest),
            "{n} fds"
        );
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

#[test]
fn refuses_a_second_broker_and_replaces_a_stale_socket() {
    let mut b = Broker::start("twice");
    let out = Command::new(sockpassd_bin())
        .arg("--socket")
        .arg(&b.path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("a live broker already answers"), "{err}");
    // Kill -9 leaves a stale socket file behind; a new broker replaces it.
    let mut c = b.child.take().unwrap();
    c.kill().unwrap();
    c.wait().unwrap();
    assert!(b.path.exists());
    let b2 = Broker::start_at(b.dir.clone(), b.path.clone(), &[]);
    b2.client()
        .request_socket(&spec("udp:127.0.0.1:0"), ShareMode::None, "x")
        .unwrap();
}

#[test]
fn sigterm_shuts_down_cleanly() {
    let mut b = Broker::start("sigterm");
    let _c = b.client();
    let st = b.stop();
    assert!(st.success(), "exit status {st}");
    assert!(!b.path.exists(), "socket file removed on shutdown");
    let log = b.log_text();
    assert!(log.contains("listening on"), "{log}");
    assert!(log.contains("SIGTERM received, shutting down"), "{log}");
}

#[test]
fn default_path_comes_from_the_environment() {
    let dir = temp_dir("envpath");
    let path = dir.join("via-env.sock");
    let mut child = Command::new(sockpassd_bin())
        .env("SOCKPASS_SOCKET", &path)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for("broker at $SOCKPASS_SOCKET", || Client::connect(&path).ok());
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

/// Start sockpassd through `cmd` (which execs it, so the pid is the
/// broker's), wait for `path` (a function of the pid) to answer, then stop
/// it with SIGINT: it must exit 0 and say why.
fn run_default_path_broker(tag: &str, mut cmd: Command, path: impl Fn(u32) -> PathBuf) {
    let dir = temp_dir(tag);
    let log = dir.join("log");
    cmd.env_remove("SOCKPASS_SOCKET")
        .stdin(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    let mut child = cmd.spawn().unwrap();
    let p = path(child.id());
    wait_for(&format!("a broker at {}", p.display()), || {
        if let Ok(Some(st)) = child.try_wait() {
            panic!(
                "{tag}: sockpassd exited with {st}: {}",
                std::fs::read_to_string(&log).unwrap()
            );
        }
        Client::connect(&p).ok()
    });
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let st = wait_child(&mut child);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(st.success(), "{tag}: exit status {st}: {text}");
    assert!(
        text.contains("SIGINT received, shutting down"),
        "{tag}: {text}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// With neither --socket nor $SOCKPASS_SOCKET: root listens at
/// /run/sockpass/sockpassd.sock and others at
/// $XDG_RUNTIME_DIR/sockpass/sockpassd.sock, creating the missing directories;
/// a --socket in a directory that does not exist yet works too. Each broker
/// stops on SIGINT.
#[test]
fn default_paths_create_their_directories_and_sigint_stops() {
    if !is_root() {
        eprintln!(
            "skipped: needs root (runs one broker as root in its own /run, one as uid 65534)"
        );
        return;
    }
    // Root: in a private mount namespace with an empty /run, reached from
    // here through /proc/PID/root, so the host's /run is never touched.
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg("mount -t tmpfs -o mode=0755 tmpfs /run && exec \"$0\"")
        .arg(sockpassd_bin());
    run_default_path_broker("default-root", cmd, |pid| {
        PathBuf::from(format!("/proc/{pid}/root/run/sockpass/sockpassd.sock"))
    });

    // Not root: $XDG_RUNTIME_DIR, which does not exist yet.
    let top = temp_dir("default-xdg");
    std::fs::set_permissions(&top, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let xdg = top.join("xdg");
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(sockpassd_bin())
        .env("XDG_RUNTIME_DIR", &xdg);
    let want = xdg.join("sockpass/sockpassd.sock");
    run_default_path_broker("default-xdg-run", cmd, |_| want.clone());

    // --socket in directories that do not exist yet.
    let deep = top.join("a/b/c/s.sock");
    let mut cmd = Command::new(sockpassd_bin());
    cmd.arg("--socket").arg(&deep);
    run_default_path_broker("deep-socket", cmd, |_| deep.clone());
    let _ = std::fs::remove_dir_all(top);
}

#[test]
fn status_cli_prints_a_table_and_json() {
    let b = Broker::start("cli");
    let mut c = b.client();
    let g = c
        .request_socket(
            &spec("udp:127.0.0.1:0"),
            ShareMode::SameApp,
            "dns \"quoted\"",
        )
        .unwrap();
    let out = Command::new(sockpass_bin())
        .args(["status", "--socket"])
        .arg(&b.path)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("1 socket(s), 1 reference(s)"), "{text}");
    // The spec as requested (port 0: ephemeral) and the port it got.
    assert!(text.contains("udp:127.0.0.1:0"), "{text}");
    assert!(text.contains(&format!(" {} ", g.port)), "{text}");
    assert!(text.contains("sameapp"), "{text}");
    let out = Command::new(sockpass_bin())
        .args(["status", "--json", "--socket"])
        .arg(&b.path)
        .output()
        .unwrap();
    let json = String::from_utf8(out.stdout).unwrap();
    assert!(json.contains("\"refs\":1"), "{json}");
    assert!(json.contains("\"app\":\"dns \\\"quoted\\\"\""), "{json}");
    assert!(json.contains(&format!("\"port\":{}", g.port)), "{json}");
    // No broker: a clear error and exit status 1.
    let out = Command::new(sockpass_bin())
        .args(["status", "--socket", "/nonexistent/x.sock"])
        .output()
        .unwrap();
    // No broker there: EX_UNAVAILABLE, as every command.
    assert_eq!(out.status.code(), Some(69));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot connect to sockpassd"));
}

#[test]
fn broker_gone_is_broker_unavailable() {
    let mut b = Broker::start("gone");
    let mut c = b.client();
    let g = c
        .request_socket(&spec("udp:127.0.0.1:0"), ShareMode::None, "x")
        .unwrap();
    let mut child = b.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let e = c
        .request_socket(&spec("udp:127.0.0.1:0"), ShareMode::None, "x")
        .unwrap_err();
    assert_eq!(e.kind(), Kind::BrokerUnavailable, "{e}");
    // The client keeps the socket it already had.
    let s = UdpSocket::from(g.fd);
    s.send_to(b"x", s.local_addr().unwrap()).unwrap();
    assert_eq!(
        Client::connect(&b.path).unwrap_err().kind(),
        Kind::BrokerUnavailable
    );
}

#[test]
fn reservation_is_picked_up_once_by_another_client() {
    let b = Broker::start("reserve");
    let mut manager = b.client();
    let port = free_port(false);
    let r = manager
        .reserve_socket(
            &spec(&format!("tcp:127.0.0.1:{port}")),
            ShareMode::None,
            "svc",
        )
        .unwrap();
    assert_eq!(r.port, port);
    let st = b.status();
    assert_eq!(st.counters.reservations, 1);
    assert!(st.sockets[0].holders[0].reserved);
    // The reservation outlives the manager's connection.
    drop(manager);
    let mut worker = b.client();
    let g = worker.pickup(&r.token).unwrap();
    assert_eq!(g.token, r.token);
    assert_eq!(sockpass::sys::local_port(&g.fd).unwrap(), port);
    assert_eq!(b.status().counters.reservations, 0);
    // One use only.
    assert_eq!(
        b.client().pickup(&r.token).unwrap_err().kind(),
        Kind::UnknownToken
    );
    // The picker now owns the reference: it can release it.
    assert_eq!(worker.release(&g.token).unwrap(), 0);
}

#[test]
fn an_uncollected_reservation_expires_and_frees_the_port() {
    let b = Broker::start_with("expire", &["--reservation-ttl", "0.3"]);
    let port = free_port(true);
    let r = b
        .client()
        .reserve_socket(
            &spec(&format!("udp:127.0.0.1:{port}")),
            ShareMode::None,
            "svc",
        )
        .unwrap();
    assert!(!can_bind(true, port));
    wait_for("the reservation to expire", || {
        (b.status().counters.reservations == 0).then_some(())
    });
    assert_eq!(b.status().sockets.len(), 0);
    assert!(can_bind(true, port));
    let e = b.client().pickup(&r.token).unwrap_err();
    assert_eq!(e.kind(), Kind::TokenExpired, "{e}");
    assert!(b.log_text().contains("expired uncollected"));
}

/// The broker keeps each reference in three places (its token, its socket's
/// holders, its connection's list) and moves the last entry of a list into
/// the gap a release leaves. Interleave requests, reservations, pick-ups,
/// releases one by one and in batches, foreign releases and a disconnect
/// on one socket, and check every answer and the broker's counts against a
/// model after each step, across an upgrade in place. A small per-client
/// limit makes each client's own count visible too: it must refuse exactly
/// at the limit.
#[test]
fn references_stay_consistent_through_interleaved_operations() {
    const LIMIT: usize = 12;
    let b = Broker::start_with("refmodel", &["--max-refs-per-client", "12"]);
    let port = free_port(true);
    let sp = spec(&format!("udp:127.0.0.1:{port}"));
    let mut clients = [b.client(), b.client(), b.client()];
    // What each client holds (tokens), and reservations not picked up.
    let mut held: [Vec<sockpass::Token>; 3] = Default::default();
    let mut reserved: Vec<sockpass::Token> = Vec::new();
    let mut fds = Vec::new();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    let total = |held: &[Vec<sockpass::Token>; 3], reserved: &Vec<sockpass::Token>| {
        held.iter().map(Vec::len).sum::<usize>() + reserved.len()
    };
    for step in 0..600 {
        let who = next(3);
        match next(8) {
            0..=2 => {
                let r = clients[who].request_socket(&sp, ShareMode::Any, "m");
                if held[who].len() < LIMIT {
                    let g = r.unwrap();
                    held[who].push(g.token);
                    fds.push(g.fd);
                } else {
                    assert_eq!(r.unwrap_err().kind(), Kind::LimitReached, "step {step}");
                }
            }
            3 => {
                let r = clients[who]
                    .reserve_socket(&sp, ShareMode::Any, "m")
                    .unwrap();
                reserved.push(r.token);
            }
            4 if !reserved.is_empty() => {
                let i = next(reserved.len());
                let r = clients[who].pickup(&reserved[i]);
                if held[who].len() < LIMIT {
                    assert_eq!(r.unwrap().token, reserved[i]);
                    held[who].push(reserved.swap_remove(i));
                } else {
                    assert_eq!(r.unwrap_err().kind(), Kind::LimitReached, "step {step}");
                }
            }
            5 if !held[who].is_empty() => {
                let t = held[who].swap_remove(next(held[who].len()));
                let left = clients[who].release(&t).unwrap() as usize;
                assert_eq!(left, total(&held, &reserved), "step {step}");
            }
            6 if !held[who].is_empty() => {
                // A batch from the middle of the list, in a scrambled order.
                let n = 1 + next(held[who].len());
                let mut batch: Vec<_> = (0..n)
                    .map(|_| held[who].swap_remove(next(held[who].len())))
                    .collect();
                batch.reverse();
                for r in clients[who].release_many(&batch).unwrap() {
                    r.unwrap();
                }
            }
            7 => {
                // Another client's token is not ours to release, and
                // trying changes nothing.
                let other = (who + 1) % 3;
                if let Some(&t) = held[other].first() {
                    let e = clients[who].release(&t).unwrap_err();
                    assert_eq!(e.kind(), Kind::UnknownToken, "{e}");
                }
            }
            _ => {}
        }
        if step == 250 {
            // An upgrade in place rebuilds every table from the handed-over
            // state: the same connections go on with the same references.
            assert_eq!(clients[who].upgrade(None).unwrap() as i32, b.pid());
        }
        if step == 400 {
            // A disconnect drops exactly that client's references.
            clients[2] = b.client();
            held[2].clear();
        }
        let want = total(&held, &reserved);
        let st = b.status();
        assert_eq!(st.counters.references as usize, want, "step {step}");
        assert_eq!(
            st.counters.reservations as usize,
            reserved.len(),
            "step {step}"
        );
        if want == 0 {
            assert!(st.sockets.is_empty(), "step {step}");
            continue;
        }
        assert_eq!(st.sockets.len(), 1, "step {step}");
        assert_eq!(st.sockets[0].refs as usize, want, "step {step}");
        // Per connection, as many holders as the model says (the order of
        // the connections is not known to the model: compare sorted counts).
        let mut by_conn = std::collections::HashMap::<u64, usize>::new();
        for h in st.sockets[0].holders.iter().filter(|h| !h.reserved) {
            *by_conn.entry(h.conn_id).or_default() += 1;
        }
        let mut got: Vec<usize> = by_conn.into_values().collect();
        let mut model: Vec<usize> = held.iter().map(Vec::len).filter(|&n| n > 0).collect();
        got.sort_unstable();
        model.sort_unstable();
        assert_eq!(got, model, "step {step}");
    }
    // Everything released: the socket closes and the port is free.
    for (c, h) in clients.iter_mut().zip(&held) {
        if !h.is_empty() {
            for r in c.release_many(h).unwrap() {
                r.unwrap();
            }
        }
    }
    for t in reserved {
        // Picked up by a client that then goes: its disconnect drops it.
        let g = b.client().pickup(&t).unwrap();
        assert_eq!(g.token, t);
    }
    drop(fds);
    wait_for("the socket to close", || {
        b.status().sockets.is_empty().then_some(())
    });
    assert!(can_bind(true, port));
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

/// `Client::request_parts` (what the C API calls) keeps its last request
/// encoded and sends it again for the same parts: every part that differs
/// must still reach the broker, and a bad part must not spoil the next
/// request.
#[test]
fn request_parts_sends_what_the_parts_say() {
    use sockpass::Parts;
    let b = Broker::start("parts");
    let (p1, p2) = (free_port(true), free_port(true));
    let mut c = b.client();
    let parts = |port: u16, share: ShareMode, app: &'static str| Parts {
        proto: 1, // UDP
        address: "127.0.0.1",
        port: port.into(),
        share,
        app,
        flags: 0,
    };
    let g1 = c.request_parts(parts(p1, ShareMode::Any, "a")).unwrap();
    let g2 = c.request_parts(parts(p1, ShareMode::Any, "a")).unwrap();
    let g3 = c.request_parts(parts(p1, ShareMode::Any, "b")).unwrap();
    assert!(!g1.cached && g2.cached && g3.cached);
    assert_ne!(g1.token, g2.token);
    let apps = |b: &Broker| {
        let mut a: Vec<String> = b.status().sockets[0]
            .holders
            .iter()
            .map(|h| h.app.clone())
            .collect();
        a.sort();
        a
    };
    assert_eq!(apps(&b), ["a", "a", "b"]);
    // Another share mode is another request: refused while others hold it.
    let e = c
        .request_parts(parts(p1, ShareMode::None, "b"))
        .unwrap_err();
    assert_eq!(e.kind(), Kind::ShareConflict, "{e}");
    // Another port, another socket.
    let g4 = c.request_parts(parts(p2, ShareMode::Any, "b")).unwrap();
    assert_eq!(sockpass::sys::local_port(&g4.fd).unwrap(), p2);
    // Bad parts are refused, and the parts before them still work.
    let mut bad = parts(p1, ShareMode::Any, "a");
    bad.proto = 99;
    assert_eq!(c.request_parts(bad).unwrap_err().kind(), Kind::BadRequest);
    bad.proto = 1;
    bad.address = "300.1.1.1";
    assert_eq!(
        c.check_parts(1, "300.1.1.1", p1.into()).unwrap_err().kind(),
        Kind::BadRequest
    );
    assert_eq!(c.request_parts(bad).unwrap_err().kind(), Kind::BadRequest);
    let g5 = c.request_parts(parts(p1, ShareMode::Any, "a")).unwrap();
    c.check_parts(1, "127.0.0.1", p1.into()).unwrap();
    assert_eq!(inode(&g5.fd), inode(&g1.fd));
    assert_eq!(b.status().counters.references, 5);
    // The spec a check keeps is for the parts checked: a request for other
    // parts is made of its own (TCP after a check of UDP on its port), as
    // is one whose address differs only in its last byte.
    let pt = free_port(false);
    c.check_parts(1, "127.0.0.1", pt.into()).unwrap();
    let mut tcp = parts(pt, ShareMode::Any, "a");
    tcp.proto = 2;
    let g6 = c.request_parts(tcp).unwrap();
    assert_eq!(sockpass::sys::local_port(&g6.fd).unwrap(), pt);
    let ty = sockpass::sys::getsockopt_int(&g6.fd, libc::SOL_SOCKET, libc::SO_TYPE);
    assert_eq!(ty, Ok(libc::SOCK_STREAM));
    c.check_parts(1, "127.0.0.1", p1.into()).unwrap();
    let mut other = parts(p1, ShareMode::Any, "a");
    other.address = "127.0.0.2";
    let g7 = c.request_parts(other).unwrap();
    assert!(!g7.cached);
    assert_ne!(inode(&g7.fd), inode(&g1.fd));
    // A check that fails forgets the spec checked before it.
    c.check_parts(1, "127.0.0.1", p1.into()).unwrap();
    assert!(c.check_parts(1, "127.0.0.1", 70000).is_err());
    let g8 = c.request_parts(parts(p1, ShareMode::Any, "a")).unwrap();
    assert_eq!(inode(&g8.fd), inode(&g1.fd));
    assert_eq!(b.status().counters.references, 8);
    // Parts checked, then a request of them that cannot be encoded (an
    // application name over the limit): refused, nothing sent, and the
    // same parts with a good name are made afresh, then kept again.
    c.check_parts(1, "127.0.0.1", p1.into()).unwrap();
    let long = "x".repeat(proto::MAX_APP + 1);
    let too_long = Parts {
        app: &long,
        ..parts(p1, ShareMode::Any, "a")
    };
    let e = c.request_parts(too_long).unwrap_err();
    assert_eq!(e.kind(), Kind::BadRequest, "{e}");
    let g9 = c.request_parts(parts(p1, ShareMode::Any, "c")).unwrap();
    let g10 = c.request_parts(parts(p1, ShareMode::Any, "c")).unwrap();
    assert_eq!(inode(&g9.fd), inode(&g1.fd));
    assert_ne!(g9.token, g10.token);
    assert_eq!(b.status().counters.references, 10);
    let named_c: usize = (b.status().sockets.iter())
        .map(|s| s.holders.iter().filter(|h| h.app == "c").count())
        .sum();
    assert_eq!(named_c, 2);
}
