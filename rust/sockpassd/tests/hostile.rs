//! Hostile clients beyond malformed messages (those are in broker.rs): empty
//! packets, ten thousand idle connections, and a client that never reads.
//! Each time a well-behaved client keeps being served and nothing leaks.

mod common;

use common::*;
use sockpass::fdpass::send_fds;
use sockpass::proto;
use sockpass::{ShareMode, SocketSpec};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

fn connect_raw(b: &Broker) -> Option<OwnedFd> {
    let fd = sockpass::sys::unix_socket(libc::SOCK_SEQPACKET, false).ok()?;
    sockpass::sys::connect_unix(&fd, path_str(&b.path).as_bytes()).ok()?;
    Some(fd)
}

fn served(c: &mut sockpass::Client) {
    let g = c
        .request_socket(
            &"udp:127.0.0.1:0".parse::<SocketSpec>().unwrap(),
            ShareMode::None,
            "good",
        )
        .expect("the well-behaved client is served");
    c.release(&g.token).unwrap();
}

/// The broker's own fd count while only the status query is connected.
fn quiet_fds(b: &Broker) -> u32 {
    wait_for("the status query to be the only connection", || {
        let st = b.status();
        (st.counters.connections == 1).then_some(st.counters.broker_fds)
    })
}

#[test]
fn an_empty_packet_ends_that_client_only() {
    let b = Broker::start("empty");
    let base = quiet_fds(&b) + 1; // + good's connection
    let mut good = b.client();
    let fd = connect_raw(&b).unwrap();
    send_fds(fd.as_fd(), &[], &[], 0).unwrap();
    // A zero-length packet reads as end-of-stream: the broker closes it.
    let mut buf = [0u8; 64];
    let r = sockpass::fdpass::recv_fds(fd.as_fd(), &mut buf, 0, 0).unwrap();
    assert_eq!(r.len, 0, "the broker closed the connection");
    served(&mut good);
    wait_for("fds back to baseline", || {
        let st = b.status();
        (st.counters.connections == 2 && st.counters.broker_fds == base).then_some(())
    });
}

#[test]
fn ten_thousand_idle_connections() {
    // The broker fits its connection limit under its RLIMIT_NOFILE; beyond
    // the limit it accepts and closes at once, so the backlog never fills.
    let b = Broker::start("idle");
    let base = quiet_fds(&b);
    let mut good = b.client();
    // This process needs room for 10,000 fds too.
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        if lim.rlim_max < 10_300 {
            eprintln!(
                "SKIP ten_thousand_idle_connections: RLIMIT_NOFILE hard limit {} < 10300",
                lim.rlim_max
            );
            return;
        }
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
    let mut idle = Vec::with_capacity(10_000);
    let mut refused = 0;
    for i in 0..10_000 {
        match connect_raw(&b) {
            Some(fd) => idle.push(fd),
            None => refused += 1,
        }
        if i % 2000 == 0 {
            served(&mut good);
        }
    }
    served(&mut good);
    // New connections are refused at the limit, so ask through `good`.
    let st = good.status().unwrap();
    eprintln!(
        "idle connections: {} connected ({} refused at connect), broker holds {} connections, {} fds",
        idle.len(),
        refused,
        st.counters.connections,
        st.counters.broker_fds
    );
    assert!(st.counters.connections as usize <= idle.len() + 1);
    if (st.counters.connections as usize) < idle.len() + 1 {
        assert!(
            b.log_text().contains("connection limit reached"),
            "refusals are logged"
        );
    }
    drop(idle);
    served(&mut good);
    drop(good);
    assert_eq!(quiet_fds(&b), base, "fds back to baseline");
}

#[test]
fn a_client_that_never_reads_is_bounded() {
    let b = Broker::start("noread");
    let base = quiet_fds(&b);
    let mut good = b.client();
    let fd = connect_raw(&b).unwrap();
    // SAFETY: nonblocking sends so the test never blocks.
    unsafe {
        let fl = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
    // Socket requests whose replies (each with an fd) are never read.
    let spec: SocketSpec = format!("udp:127.0.0.1:{}", free_port(true))
        .parse()
        .unwrap();
    let mut msg = Vec::new();
    let mut sent = 0u32;
    let mut id = 0u32;
    // Push whenever the socket is writable; the broker reads only while its
    // replies drain, so eventually the socket stays full.
    loop {
        loop {
            id += 1;
            proto::encode_request(&mut msg, id, &spec, ShareMode::Any, "greedy", 0).unwrap();
            match send_fds(fd.as_fd(), &msg, &[], libc::MSG_DONTWAIT) {
                Ok(_) => sent += 1,
                Err(_) => break,
            }
        }
        let writable = sockpass::sys::poll_one(fd.as_fd(), libc::POLLOUT, 500).unwrap();
        if writable == 0 || sent > 100_000 {
            break;
        }
    }
    served(&mut good);
    let st = b.status();
    // The broker stops reading a client whose replies pile up, so the
    // references it can make the broker hold stay bounded.
    eprintln!(
        "never-reading client: sent {sent} requests before its socket buffer filled; broker holds {} references, {} fds",
        st.counters.references, st.counters.broker_fds
    );
    assert!(
        st.counters.references < sent,
        "the broker stopped reading the greedy client"
    );
    assert!(
        st.counters.broker_fds < 200,
        "queued replies do not duplicate fds"
    );
    drop(fd);
    wait_for("greedy client's references dropped", || {
        (b.status().counters.references == 0).then_some(())
    });
    served(&mut good);
    drop(good);
    assert_eq!(quiet_fds(&b), base, "fds back to baseline");
}
