//! Deferred pick-up across a network namespace: a manager reserves a socket,
//! a process inside a fresh netns (made by the test with `unshare --net`)
//! reaches the broker through its Unix socket path, picks the socket up by
//! token, and receives traffic on it that was sent in the host namespace.

mod common;

use common::*;
use sockpass::Client;
use sockpass::{Kind, ShareMode, SocketSpec};
use std::net::UdpSocket;
use std::process::{Command, Stdio};

fn netns_inode() -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self/ns/net").unwrap().ino()
}

fn can_unshare_net() -> bool {
    if !is_root() {
        eprintln!("skipping: creating a network namespace needs root");
        return false;
    }
    let ok = Command::new("unshare")
        .args(["--net", "true"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        eprintln!("skipping: `unshare --net` is not available here");
    }
    ok
}

/// Child, run inside a new netns: pick up $TOKEN, report, then wait for one
/// datagram on the socket and check it.
#[test]
#[ignore]
fn child_pickup_in_netns() {
    if !is_child() {
        return;
    }
    let host_ns: u64 = std::env::var("HOST_NS").unwrap().parse().unwrap();
    assert_ne!(netns_inode(), host_ns, "the child runs in its own netns");
    let mut c = Client::connect(std::env::var("SOCK").unwrap()).unwrap();
    let t = std::env::var("TOKEN").unwrap().parse().unwrap();
    let g = c.pickup(&t).unwrap();
    // Inside this namespace loopback is down: nothing here could bind it.
    assert!(UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.send_to(b"x", "127.0.0.1:9"))
        .is_err());
    println!("@@ picked {}", g.port);
    let s = UdpSocket::from(g.fd);
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = [0u8; 32];
    let (n, _) = s.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"from the host");
}

#[test]
fn pickup_across_a_network_namespace() {
    if !can_unshare_net() {
        return;
    }
    let b = Broker::start("netns");
    let mut mgr = b.client();
    let port = free_port(true);
    let spec: SocketSpec = format!("udp:127.0.0.1:{port}").parse().unwrap();
    let r = mgr.reserve_socket(&spec, ShareMode::None, "ctr").unwrap();
    assert_eq!(b.status().counters.reservations, 1);
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new("unshare")
        .arg("--net")
        .arg("--")
        .arg(exe)
        .args([
            "child_pickup_in_netns",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("SOCKPASS_CHILD", "1")
        .env("HOST_NS", netns_inode().to_string())
        .env("SOCK", path_str(&b.path))
        .env("TOKEN", r.token.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let line = read_line(&mut child);
    assert_eq!(line, format!("picked {port}"));
    // The reference moved to the child's connection.
    let st = b.status();
    assert_eq!(st.counters.reservations, 0);
    assert!(!st.sockets[0].holders[0].reserved);
    // The socket lives in the host namespace: traffic from here reaches it.
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .send_to(b"from the host", ("127.0.0.1", port))
        .unwrap();
    let st = wait_child(&mut child);
    assert!(st.success(), "child failed: {st}");
    // The child's exit ended its lease: the socket is gone.
    wait_for("the child's reference to drop", || {
        b.status().sockets.is_empty().then_some(())
    });
    // One use only.
    let e = mgr.pickup(&r.token).unwrap_err();
    assert_eq!(e.kind(), Kind::UnknownToken);
}

/// Give the child `raw` as its fd 3. When `raw` already is 3, dup2 does
/// nothing and would leave FD_CLOEXEC set, so it is cleared instead.
fn as_fd3(cmd: &mut Command, raw: i32) {
    use std::os::unix::process::CommandExt;
    // SAFETY: dup2 and fcntl are async-signal-safe; raw stays open in the
    // parent until the child is spawned.
    unsafe {
        cmd.pre_exec(move || {
            let r = if raw == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(raw, 3)
            };
            if r < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Child, in its own network and mount namespaces where the broker's
/// directory is hidden under a tmpfs: reach the broker through the
/// connection handed in on fd 3, pick up $TOKEN, report.
#[test]
#[ignore]
fn child_pickup_through_a_handed_in_connection() {
    if !is_child() {
        return;
    }
    let sock = std::env::var("SOCK").unwrap();
    assert!(
        Client::connect(&sock).is_err(),
        "the broker's path is out of reach here"
    );
    let fd = sockpass::inherited_fd(3).unwrap();
    let mut c = Client::from_fd(fd).unwrap();
    assert!(c.path().as_os_str().is_empty());
    let t = std::env::var("TOKEN").unwrap().parse().unwrap();
    let g = c.pickup(&t).unwrap();
    println!("@@ picked {}", g.port);
    let s = UdpSocket::from(g.fd);
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = [0u8; 32];
    let (n, _) = s.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"through the fd");
}

/// A container that cannot see the broker's socket path at all reaches it
/// through a connection its manager made and handed in (`Client::from_fd`).
#[test]
fn pickup_through_a_connection_handed_into_a_container() {
    use std::os::fd::AsRawFd;
    if !can_unshare_net() {
        return;
    }
    let b = Broker::start("handed-in");
    let mut mgr = b.client();
    let port = free_port(true);
    let spec: SocketSpec = format!("udp:127.0.0.1:{port}").parse().unwrap();
    let r = mgr.reserve_socket(&spec, ShareMode::None, "ctr").unwrap();
    // The manager's connection for the container.
    let conn = sockpass::sys::unix_socket(libc::SOCK_SEQPACKET, false).unwrap();
    sockpass::sys::connect_unix(&conn, path_str(&b.path).as_bytes()).unwrap();
    let raw = conn.as_raw_fd();
    let dir = b.path.parent().unwrap().to_path_buf();
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new("unshare");
    cmd.args(["--net", "--mount", "--propagation", "private", "sh", "-c"])
        .arg("mount -t tmpfs tmpfs \"$HIDE\" && exec \"$0\" \"$@\"")
        .arg(exe)
        .args([
            "child_pickup_through_a_handed_in_connection",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("SOCKPASS_CHILD", "1")
        .env("HIDE", &dir)
        .env("SOCK", path_str(&b.path))
        .env("TOKEN", r.token.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    as_fd3(&mut cmd, raw);
    let mut child = cmd.spawn().unwrap();
    drop(conn);
    let line = read_line(&mut child);
    assert_eq!(line, format!("picked {port}"));
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .send_to(b"through the fd", ("127.0.0.1", port))
        .unwrap();
    let st = wait_child(&mut child);
    assert!(st.success(), "child failed: {st}");
    wait_for("the child's reference to drop", || {
        b.status().sockets.is_empty().then_some(())
    });
}

/// `sockpass pickup --fd 3`: the CLI over a handed-in connection.
#[test]
fn cli_pickup_over_a_handed_in_connection() {
    use std::os::fd::AsRawFd;
    let b = Broker::start("handed-in-cli");
    let mut mgr = b.client();
    let spec: SocketSpec = "udp:127.0.0.1:0".parse().unwrap();
    let r = mgr.reserve_socket(&spec, ShareMode::None, "ctr").unwrap();
    let conn = sockpass::sys::unix_socket(libc::SOCK_SEQPACKET, false).unwrap();
    sockpass::sys::connect_unix(&conn, path_str(&b.path).as_bytes()).unwrap();
    let raw = conn.as_raw_fd();
    let mut cmd = Command::new(sockpass_bin());
    cmd.args(["pickup", "--no-hold", "--fd", "3"])
        .arg(r.token.to_string())
        .env_remove("SOCKPASS_SOCKET");
    as_fd3(&mut cmd, raw);
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        text.split_whitespace().nth(1),
        Some(r.token.to_string().as_str()),
        "{text}"
    );
    assert_eq!(b.status().counters.reservations, 0);

    let out = Command::new(sockpass_bin())
        .args(["pickup", "--fd", "3", "--socket", "/x"])
        .arg(r.token.to_string())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot be used with"));
    let out = Command::new(sockpass_bin())
        .args(["pickup", "--fd", "9"])
        .arg(r.token.to_string())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("fd 9 is not open"));
}

/// What is not a broker connection is refused with a clear error, and
/// closed.
#[test]
fn from_fd_refuses_what_is_not_a_broker_connection() {
    use std::os::fd::OwnedFd;
    let (r, _w) = std::io::pipe().unwrap();
    let e = Client::from_fd(OwnedFd::from(r)).unwrap_err();
    assert_eq!(
        (e.kind(), e.errno()),
        (Kind::BadRequest, libc::ENOTSOCK),
        "{e}"
    );
    let (a, _b) = sockpass::fdpass::socketpair(libc::SOCK_STREAM).unwrap();
    let e = Client::from_fd(a).unwrap_err();
    assert_eq!(
        (e.kind(), e.errno()),
        (Kind::BadRequest, libc::EPROTOTYPE),
        "{e}"
    );
    let lone = sockpass::sys::unix_socket(libc::SOCK_SEQPACKET, false).unwrap();
    let e = Client::from_fd(lone).unwrap_err();
    assert_eq!(e.kind(), Kind::BrokerUnavailable, "{e}");
}

#[test]
fn cli_reserve_then_pickup_in_a_netns() {
    if !can_unshare_net() {
        return;
    }
    let b = Broker::start("clipickup");
    let out = Command::new(sockpass_bin())
        .args(["reserve", "--share", "any", "--socket"])
        .arg(&b.path)
        .arg("tcp:127.0.0.1:0?backlog=4")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let mut w = text.split_whitespace();
    let port: u16 = w.next().unwrap().parse().unwrap();
    let token = w.next().unwrap().to_string();
    assert_ne!(port, 0);
    // The reservation outlives the reserving process.
    assert_eq!(b.status().counters.reservations, 1);
    let pick = |tok: &str| {
        Command::new("unshare")
            .args(["--net", "--"])
            .arg(sockpass_bin())
            .args(["pickup", "--no-hold", "--socket"])
            .arg(&b.path)
            .arg(tok)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let out = pick(&token);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        format!("{port} {token}")
    );
    let again = pick(&token);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("unknown token"));
    let bad = pick("nottoken");
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn reservation_expiry_releases_the_socket() {
    let b = Broker::start_with("expiry", &["--reservation-ttl", "0.2"]);
    let port = free_port(true);
    let mut mgr = b.client();
    let r = mgr
        .reserve_socket(
            &format!("udp:127.0.0.1:{port}").parse().unwrap(),
            ShareMode::Any,
            "m",
        )
        .unwrap();
    assert!(!can_bind(true, port), "the reservation holds the port");
    // The broker drops it on its own, without any client activity.
    wait_for("the reservation to expire", || {
        b.status().sockets.is_empty().then_some(())
    });
    assert!(can_bind(true, port), "the port is free again");
    let e = Client::connect(&b.path)
        .unwrap()
        .pickup(&r.token)
        .unwrap_err();
    assert_eq!(e.kind(), Kind::TokenExpired, "{e}");
    assert!(b.log_text().contains("expired uncollected"));
}
