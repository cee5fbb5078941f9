//! The broker end to end: a real sockpassd, real client processes, real
//! sockets and traffic.

mod common;

use common::*;
use sockpass::fdpass::{recv_fds, send_fds};
use sockpass::proto;
use sockpass::Client;
use sockpass::{Kind, ShareMode, SocketSpec};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
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
    // Waited for, bounded: a child another test thread forks may hold a
    // copy of our fd until it execs.
    wait_for("the port to be free after the last release", || {
        can_bind(true, port).then_some(())
    });
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

/// References whose fds the caller closed, released one by one by token in
/// every order (oldest, newest, from the middle): each leaves the client's
/// table and the broker's, the others stay, and release_all gets the rest.
#[test]
fn unmapped_references_are_released_by_token_in_any_order() {
    let b = Broker::start("unmapped");
    let sp = spec(&format!("udp:127.0.0.1:{}", free_port(true)));
    let mut c = b.client();
    // Each fd closed at once: its number goes to the next grant, and every
    // reference but the last is held without an fd.
    let mut tokens: Vec<_> = (0..40)
        .map(|_| c.request_socket(&sp, ShareMode::Any, "a").unwrap().token)
        .collect();
    assert_eq!(c.held().count(), 40);
    assert!(c.held().filter(|(fd, _)| *fd < 0).count() >= 30);
    let mut order = Vec::new();
    for pick in [0, usize::MAX, 10, 0, usize::MAX, 7, 20, 3] {
        let i = pick.min(tokens.len() - 1);
        order.push(tokens.remove(i));
    }
    for (k, t) in order.iter().enumerate() {
        c.release(t).unwrap();
        let held: Vec<_> = c.held().map(|(_, t)| t).collect();
        assert!(!held.contains(t), "released {k} still held");
        let rest = tokens.iter().chain(&order[k + 1..]);
        assert!(rest.clone().all(|t| held.contains(t)), "after {k}");
        assert_eq!(held.len(), rest.clone().count());
        assert_eq!(b.status().sockets[0].refs as usize, rest.count());
        // A second release of the same token is refused, nothing else moves.
        assert_eq!(c.release(t).unwrap_err().kind(), Kind::UnknownToken);
    }
    assert_eq!(c.release_all().unwrap(), tokens.len());
    assert_eq!(c.held().count(), 0);
    assert!(b.status().sockets.is_empty());
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
    // Another client's token reads exactly as one that never existed.
    let mut fake = *g.token.as_bytes();
    fake[0] ^= 1;
    let none = c2.release(&sockpass::Token::from_bytes(fake)).unwrap_err();
    assert_eq!(
        (
            e.kind(),
            e.errno(),
            e.message().replace(&g.token.short(), "T")
        ),
        (
            none.kind(),
            none.errno(),
            none.message()
                .replace(&sockpass::Token::from_bytes(fake).short(), "T")
        )
    );
    // Picking up a held (not reserved) token of another client: the same.
    let p = c2.pickup(&g.token).unwrap_err();
    assert_eq!(
        (
            p.kind(),
            p.errno(),
            p.message().replace(&g.token.short(), "T")
        ),
        (
            e.kind(),
            e.errno(),
            e.message().replace(&g.token.short(), "T")
        )
    );
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
    // The per-uid section: this uid's connections (this client and the
    // CLI's), socket and reference, and no quota (it is the broker's uid).
    // SAFETY: geteuid cannot fail.
    let uid = unsafe { libc::geteuid() };
    let row = format!(
        "\n{uid:<10} {:>13} {:>13} {:>15} {:>13}",
        "2/-", "1/-", "1/-", "0/-"
    );
    assert!(
        text.contains("CONNECTIONS") && text.contains(&row),
        "{text}"
    );
    let out = Command::new(sockpass_bin())
        .args(["status", "--json", "--socket"])
        .arg(&b.path)
        .output()
        .unwrap();
    let json = String::from_utf8(out.stdout).unwrap();
    assert!(json.contains("\"refs\":1"), "{json}");
    assert!(json.contains("\"app\":\"dns \\\"quoted\\\"\""), "{json}");
    assert!(json.contains(&format!("\"port\":{}", g.port)), "{json}");
    assert!(
        json.contains(&format!(
            "\"users\":[{{\"uid\":{uid},\"used\":{{\"connections\":2,\"sockets\":1,\"references\":1,\"reservations\":0,"
        )) && json.contains("\"quota\":{\"connections\":null,"),
        "{json}"
    );
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
            // Its hang-up is the broker's to see (a child another test
            // thread forks may hold a copy of the connection for a moment).
            let want = total(&held, &reserved);
            wait_for("the dropped client's references to go", || {
                (b.status().counters.references as usize == want).then_some(())
            });
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

/// `Client::request_parts` (what the C API calls) keeps its last request
/// encoded and sends it again for the same parts: every part that differs
/// must still reach the broker, and a bad part must not spoil the next
/// request.
#[test]
fn request_parts_sends_what_the_parts_say() {
    use sockpass::Parts;
    let b = Broker::start("parts");
    let [p1, p2] = free_ports(true);
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

#[test]
fn concurrent_clients_get_their_own_replies_sent_together_or_one_by_one() {
    // 16 clients at once, each asking for its own socket and checking that
    // every fd it gets is that socket: the replies of a loop turn go out
    // together (io_uring) by default, one by one with --no-io-uring.
    let allowed = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .map_or(true, |v| v.trim() == "0");
    const CLIENTS: usize = 16;
    for extra in [&[][..], &["--no-io-uring"][..]] {
        let b = Broker::start_with("outbox", extra);
        let ring = b.uses_io_uring();
        if extra.is_empty() && !allowed {
            eprintln!("NOTE: kernel.io_uring_disabled is set: replies are sent one by one here");
        } else {
            assert_eq!(ring, extra.is_empty(), "io_uring in use with {extra:?}");
        }
        if extra.is_empty() && !ring {
            assert!(b.log_text().contains("replies are sent one by one"));
        }
        // A status table the broker keeps (the one built last) counts in both.
        assert!(b.status().sockets.is_empty());
        let before = b.fd_count();
        let ports = free_ports::<CLIENTS>(true);
        let threads: Vec<_> = ports
            .iter()
            .map(|&port| {
                let mut c = b.client();
                std::thread::spawn(move || {
                    let sp = spec(&format!("udp:127.0.0.1:{port}"));
                    // One reference kept throughout: the socket stays
                    // cached, so no round waits on the close of the last
                    // round's socket (the broker waits at most 20 ms for
                    // it before it answers; a loaded machine can take longer).
                    let keep = c.request_socket(&sp, ShareMode::Any, "t").unwrap();
                    for round in 0..20 {
                        let got: Vec<_> = (0..25)
                            .map(|_| c.request_socket(&sp, ShareMode::Any, "t").unwrap())
                            .collect();
                        for g in &got {
                            let s = UdpSocket::from(g.fd.try_clone().unwrap());
                            assert_eq!(s.local_addr().unwrap().port(), port, "round {round}");
                        }
                        let tokens: Vec<_> = got.iter().map(|g| g.token).collect();
                        let left = c.release_many(&tokens).unwrap();
                        assert!(left.iter().all(|r| r.is_ok()));
                    }
                    c.release(&keep.token).unwrap();
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        wait_for("the broker to close the sockets", || {
            b.status().sockets.is_empty().then_some(())
        });
        wait_for("the broker to close the connections", || {
            (b.fd_count() <= before).then_some(())
        });
    }
}

/// A release is answered once its port is free, even while the closer
/// thread works through thousands of sockets a client that went left
/// behind: the release's own close overtakes that backlog. (Before, the
/// broker stopped waiting for closes once one wait had timed out, and a
/// request for the port just released got EADDRINUSE.)
#[test]
fn a_released_port_is_free_while_a_mass_close_is_under_way() {
    let b = Broker::start("massclose");
    // A privileged uid may hold them all; others get an eighth of 65,536.
    let n = if is_root() { 10_000 } else { 8_000 };
    let mut holder = b.client();
    let specs: Vec<_> = (0..n)
        .map(|_| (spec("udp:127.0.0.1:0"), ShareMode::None, "holder"))
        .collect();
    for chunk in specs.chunks(1000) {
        // Only the references matter: the fds close here at once.
        drop(holder.request_many(chunk).expect("holder batch"));
    }
    assert_eq!(b.status().sockets.len(), n);
    let mut c = b.client();
    let sp = spec(&format!("udp:127.0.0.1:{}", free_port(true)));
    let g = c.request_socket(&sp, ShareMode::None, "again").unwrap();
    drop(g.fd);
    assert_eq!(c.release(&g.token).unwrap(), 0);
    // The holder goes: its n sockets are handed to the closer at once.
    drop(holder);
    for i in 0..200 {
        let g = c
            .request_socket(&sp, ShareMode::None, "again")
            .unwrap_or_else(|e| panic!("request {i} after the release: {e}"));
        drop(g.fd);
        assert_eq!(c.release(&g.token).unwrap(), 0);
    }
    wait_for("the holder's sockets to go", || {
        (b.status().sockets.is_empty()).then_some(())
    });
}

/// A daemon that held thousands of sockets goes and is started again at
/// once (a supervisor's restart): it asks for its ports while the closer
/// still works through the old sockets, and gets them (the queued sockets
/// on each port are closed first), not EADDRINUSE.
#[test]
fn a_restarted_holder_of_thousands_gets_its_ports_back_at_once() {
    let b = Broker::start("restartmass");
    let n = if is_root() { 10_000 } else { 8_000 };
    let ports = free_ports::<4>(true);
    let fixed: Vec<_> = ports
        .iter()
        .map(|p| {
            (
                spec(&format!("udp:127.0.0.1:{p}")),
                ShareMode::None,
                "daemon",
            )
        })
        .collect();
    let mut holder = b.client();
    // Its fixed ports first: the closer would reach them last.
    drop(holder.request_many(&fixed).expect("fixed ports"));
    let rest: Vec<_> = (0..n - fixed.len())
        .map(|_| (spec("udp:127.0.0.1:0"), ShareMode::None, "daemon"))
        .collect();
    for chunk in rest.chunks(1000) {
        drop(holder.request_many(chunk).expect("holder batch"));
    }
    let mut again = b.client();
    drop(holder);
    for (sp, share, app) in &fixed {
        let t0 = std::time::Instant::now();
        let mut in_use = 0;
        loop {
            match again.request_socket(sp, *share, app) {
                Ok(_) => break,
                // Refused by sharing: the broker has not seen the old one
                // go yet.
                Err(e) if e.kind() == Kind::ShareConflict && t0.elapsed() < WAIT => {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                // Each try waits up to 20 ms for the closer, which a loaded
                // machine may not run that soon; three tries at once are
                // still far less than the backlog takes without the fix.
                Err(e) if e.kind() == Kind::AddressInUse && in_use < 2 => in_use += 1,
                Err(e) => panic!("{sp} after its holder went: {e}"),
            }
        }
    }
    wait_for("the old sockets to go", || {
        (b.status().sockets.len() == fixed.len()).then_some(())
    });
}
