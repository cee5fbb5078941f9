//! The closer thread stuck in one close (a client won the race and set
//! SO_LINGER back on between the broker's `linger_off` and its close): the
//! loop waits for it once, then not at all until it closes something, and a
//! bind's `hurry` does not wait either; once unstuck, waits resume. Its own
//! process: the closer is process-wide.

use sockpass_broker::closer::{self, OffLoopFd};
use std::io::Write;
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

fn key(proto: &str, port: u16) -> u32 {
    closer::port_key(&format!("{proto}:127.0.0.1:{port}").parse().unwrap(), port)
}

/// A UDP socket on a port of its own, dropped as the broker drops one: its
/// port, now waiting for the closer.
fn drop_udp() -> u16 {
    let u = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = u.local_addr().unwrap().port();
    drop(OffLoopFd::new(OwnedFd::from(u), key("udp", port)));
    port
}

fn udp_port_free(port: u16) -> bool {
    UdpSocket::bind(("127.0.0.1", port)).is_ok()
}

#[test]
fn a_stuck_closer_costs_one_wait_then_none_until_it_moves() {
    // A TCP socket with unsent data to a peer that never reads.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut s = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (peer, _) = l.accept().unwrap();
    s.set_nonblocking(true).unwrap();
    let junk = [0u8; 65536];
    while s.write(&junk).is_ok() {}
    let port = s.local_addr().unwrap().port();
    let ours = s.try_clone().unwrap();
    // The broker's copy is dropped (linger switched off, parked); the
    // client then switches linger back on through its own copy and closes
    // that, so the broker's close is the last and would wait 5 s.
    drop(OffLoopFd::new(OwnedFd::from(s), key("tcp", port)));
    rustix::net::sockopt::set_socket_linger(&ours, Some(Duration::from_secs(5))).unwrap();
    drop(ours);

    let t0 = Instant::now();
    closer::settle();
    let first = t0.elapsed();
    assert!(first < Duration::from_secs(2), "first wait {first:?}");

    // Stuck: a release's wait is not taken again, nor is a bind's hurry.
    let t0 = Instant::now();
    let mut queued = Vec::new();
    for _ in 0..20 {
        queued.push(drop_udp());
        closer::settle();
    }
    let waits = t0.elapsed();
    assert!(
        waits < 10 * closer::SETTLE,
        "20 releases behind a stuck close took {waits:?}"
    );
    let behind = drop_udp();
    let t0 = Instant::now();
    assert!(!closer::hurry(key("udp", behind)));
    assert!(t0.elapsed() < Duration::from_secs(1));
    assert!(!udp_port_free(behind), "closed behind a stuck close");

    // Unstuck (the peer goes: the connection is reset and the close
    // returns): every queued socket is closed, and waits resume.
    drop(peer);
    drop(l);
    let t0 = Instant::now();
    while !queued.iter().chain([&behind]).all(|p| udp_port_free(*p)) {
        assert!(t0.elapsed() < Duration::from_secs(30), "closer still stuck");
        closer::settle();
        std::thread::sleep(Duration::from_millis(5));
    }
    let next = drop_udp();
    closer::settle();
    assert!(
        udp_port_free(next),
        "a release after the closer moved again"
    );
}
