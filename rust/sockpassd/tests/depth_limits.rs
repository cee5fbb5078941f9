//! Configurable limits: references per client, pending reservations,
//! connections, sockets held, and the fit under RLIMIT_NOFILE. Each refusal
//! is LimitReached (code 2003) with a message naming the limit, changes no
//! state, and disturbs no other client.

mod common;

use common::*;
use sockpass::Client;
use sockpass::{Kind, ShareMode, SocketSpec};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

fn spec(s: &str) -> SocketSpec {
    s.parse().unwrap()
}

fn eph() -> SocketSpec {
    spec("udp:127.0.0.1:0")
}

fn assert_limit(e: &sockpass::Error, words: &str) {
    assert_eq!(e.kind(), Kind::LimitReached, "{e}");
    assert_eq!(e.code(), 2003, "{e}");
    assert!(
        e.message().contains(words),
        "{e:?} should mention {words:?}"
    );
}

/// (sockets, references, connections, reservations)
fn counts(b: &Broker, c: &mut Client) -> (u32, u32, u32, u32) {
    let _ = b;
    let k = c.status().unwrap().counters;
    (k.sockets, k.references, k.connections, k.reservations)
}

#[test]
fn references_per_client() {
    let b = Broker::start_with("limit-refs", &["--max-refs-per-client", "3"]);
    let mut c = b.client();
    let shared = spec(&format!("udp:127.0.0.1:{}", free_port(true)));
    let mut held: Vec<_> = (0..2)
        .map(|_| c.request_socket(&eph(), ShareMode::None, "a").unwrap())
        .collect();
    held.push(c.request_socket(&shared, ShareMode::Any, "a").unwrap());
    let before = counts(&b, &mut c);
    // A new socket and a second reference to a cached one are both refused.
    let e = c.request_socket(&eph(), ShareMode::None, "a").unwrap_err();
    assert_limit(&e, "limit 3");
    let e = c.request_socket(&shared, ShareMode::Any, "a").unwrap_err();
    assert_limit(&e, "limit 3");
    assert_eq!(counts(&b, &mut c), before);
    // Another client is not affected, and shares the cached socket.
    let mut other = b.client();
    let g = other.request_socket(&shared, ShareMode::Any, "a").unwrap();
    assert!(g.cached);
    // Releasing one makes room again.
    let g0 = held.remove(0);
    c.release(&g0.token).unwrap();
    c.request_socket(&eph(), ShareMode::None, "a").unwrap();
    // A pick-up counts against the picker's references too.
    let mut mgr = b.client();
    let r = mgr.reserve_socket(&eph(), ShareMode::None, "r").unwrap();
    let before = counts(&b, &mut c);
    let e = c.pickup(&r.token).unwrap_err();
    assert_limit(&e, "references");
    assert_eq!(counts(&b, &mut c), before);
    // The reservation is still there for someone with room.
    other.pickup(&r.token).unwrap();
}

#[test]
fn pending_reservations() {
    let b = Broker::start_with("limit-resv", &["--max-reservations", "2"]);
    let mut mgr = b.client();
    let r1 = mgr.reserve_socket(&eph(), ShareMode::None, "r").unwrap();
    let _r2 = mgr.reserve_socket(&eph(), ShareMode::None, "r").unwrap();
    // Any client: the bound is over all of them.
    let mut other = b.client();
    let before = counts(&b, &mut mgr);
    assert_eq!(before.3, 2);
    let e = other
        .reserve_socket(&eph(), ShareMode::None, "r")
        .unwrap_err();
    assert_limit(&e, "reservations");
    assert_eq!(counts(&b, &mut mgr), before);
    // Ordinary requests are not reservations and still work.
    other.request_socket(&eph(), ShareMode::None, "x").unwrap();
    // Collecting one frees its place.
    other.pickup(&r1.token).unwrap();
    mgr.reserve_socket(&eph(), ShareMode::None, "r").unwrap();
    assert_eq!(counts(&b, &mut mgr).3, 2);
}

#[test]
fn sockets_held() {
    let b = Broker::start_with("limit-socks", &["--max-sockets", "3"]);
    let mut a = b.client();
    let shared = spec(&format!("tcp:127.0.0.1:{}", free_port(false)));
    a.request_socket(&shared, ShareMode::Any, "a").unwrap();
    a.request_socket(&eph(), ShareMode::None, "a").unwrap();
    let mut c = b.client();
    c.request_socket(&eph(), ShareMode::None, "c").unwrap();
    let before = counts(&b, &mut c);
    assert_eq!(before.0, 3);
    let e = c.request_socket(&eph(), ShareMode::None, "c").unwrap_err();
    assert_limit(&e, "sockets");
    let e = c.reserve_socket(&eph(), ShareMode::None, "c").unwrap_err();
    assert_limit(&e, "sockets");
    assert_eq!(counts(&b, &mut c), before);
    // A cached socket needs no new one: sharing still works at the limit.
    let g = c.request_socket(&shared, ShareMode::Any, "c").unwrap();
    assert!(g.cached);
    // When a client goes, its sockets close and make room.
    drop(a);
    wait_for("the first client's sockets to close", || {
        (b.status().counters.sockets == 2).then_some(())
    });
    c.request_socket(&eph(), ShareMode::None, "c").unwrap();
}

#[test]
fn connections() {
    let b = Broker::start_with("limit-conns", &["--max-connections", "2"]);
    let mut c1 = b.client();
    let g = c1.request_socket(&eph(), ShareMode::None, "a").unwrap();
    let _c2 = b.client();
    let before = counts(&b, &mut c1);
    for _ in 0..3 {
        // connect() only connects; the handshake hears the refusal.
        let mut c = Client::connect(&b.path).expect("connect");
        let e = c.hello().expect_err("third connection refused");
        assert_limit(&e, "connections");
    }
    // Without a handshake, the first request hears it.
    let e = Client::connect(&b.path)
        .expect("connect")
        .request_socket(&eph(), ShareMode::None, "c")
        .expect_err("refused connection");
    assert_limit(&e, "connections");
    assert_eq!(counts(&b, &mut c1), before);
    assert!(b.log_text().contains("connection limit reached"));
    // Existing clients are served as before; a place frees when one leaves.
    c1.release(&g.token).unwrap();
    drop(_c2);
    wait_for("a free connection place", || {
        let mut c = Client::connect(&b.path).ok()?;
        c.hello().ok()
    });
}

#[test]
fn limits_fit_under_rlimit_nofile_with_headroom() {
    // A broker allowed 200 fds caps connections plus sockets below that,
    // keeping the headroom (64) for its own use, and refuses with
    // LimitReached rather than failing on EMFILE.
    let dir = temp_dir("limit-nofile");
    let path = dir.join("sockpassd.sock");
    let log = dir.join("log");
    let mut cmd = Command::new(sockpassd_bin());
    cmd.arg("--socket")
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    // SAFETY: setrlimit is async-signal-safe and uses a local struct.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 200,
                rlim_max: 200,
            };
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let mut c = wait_for("broker with 200 fds", || Client::connect(&path).ok());
    // The socket listens before the broker logs its limits, and stderr
    // takes the line in pieces: wait for the whole line (CI read the log
    // too early once, under load).
    let text = wait_for("the broker to log its limits", || {
        let t = std::fs::read_to_string(&log).unwrap();
        t.contains("references per client)\n").then_some(t)
    });
    // (200 - 64) / 2 = 68 connections, 136 - 68 = 68 sockets.
    assert!(
        text.contains("max 68 connections, 68 sockets"),
        "limits not fitted: {text}"
    );
    let mut got = Vec::new();
    let err = loop {
        match c.request_socket(&eph(), ShareMode::None, "x") {
            Ok(g) => got.push(g),
            Err(e) => break e,
        }
        assert!(got.len() <= 68, "more sockets than the fitted limit");
    };
    assert_limit(&err, "sockets");
    assert_eq!(got.len(), 68);
    let st = c.status().unwrap().counters;
    assert!(
        st.broker_fds < 200 - 32,
        "broker holds {} fds",
        st.broker_fds
    );
    assert!(child.try_wait().unwrap().is_none());
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_comm = stat.rsplit_once(')').unwrap().1;
    let f: Vec<&str> = after_comm.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); after the comm, state is index 0.
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn set_nofile(pid: i32, n: &str) {
    let st = Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--nofile={n}"))
        .status()
        .unwrap();
    assert!(st.success(), "prlimit --nofile={n}");
}

/// A broker whose fd limit is lowered under it (prlimit) turns new clients
/// away with a clear error instead of leaving them hanging and spinning on
/// EMFILE; existing clients keep their sockets; raised again, it serves.
#[test]
fn out_of_fds_turns_clients_away_without_spinning() {
    let b = Broker::start("limit-emfile");
    let mut holder = b.client();
    let g = holder
        .request_socket(&eph(), ShareMode::Any, "holder")
        .unwrap();
    let pid = b.pid();
    let hard = std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .split_whitespace()
        .nth(4)
        .unwrap()
        .to_string();
    // Room for nothing new: every fd number below the limit is in use. The
    // broker may still be closing the connection the harness's readiness
    // probe made and dropped (its hang-up can come after our requests): a
    // number freed that way lets one client in, so lower again, keeping
    // that client, a few times. A broker that accepts while out of fds
    // lets every try in and fails here.
    let mut let_in = Vec::new();
    let e = loop {
        let used: std::collections::HashSet<u32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_str().unwrap().parse().unwrap())
            .collect();
        let lowest_free = (0..).find(|n| !used.contains(n)).unwrap();
        set_nofile(pid, &format!("{lowest_free}:{hard}"));
        let path = b.path.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(Client::connect(&path).and_then(|mut c| c.hello().map(|_| c)));
        });
        match rx
            .recv_timeout(WAIT)
            .expect("a client is answered, not left hanging")
        {
            Ok(c) if let_in.len() < 3 => let_in.push(c),
            Ok(_) => panic!("clients were let in at every try while the broker was out of fds"),
            Err(e) => break e,
        }
    };
    assert_eq!(e.kind(), Kind::LimitReached, "{e}");
    assert!(e.message().contains("out of file descriptors"), "{e}");
    // A connected client's request for a new socket gets the broker's
    // EMFILE as a clear error; the connection stays up.
    let e = holder
        .request_socket(&eph(), ShareMode::None, "holder")
        .unwrap_err();
    assert_eq!(e.errno(), libc::EMFILE, "{e}");
    // Nobody is waiting now, and the broker is idle, not spinning.
    let t0 = cpu_ticks(pid);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let spent = cpu_ticks(pid) - t0;
    assert!(
        spent < 25,
        "broker used {spent} ticks in 0.5 s while out of fds"
    );
    assert!(b.log_text().contains("out of file descriptors"));

    set_nofile(pid, &format!("{hard}:{hard}"));
    let mut c = b.client();
    assert_eq!(counts(&b, &mut c).1, 1, "the holder's reference is intact");
    let g2 = holder
        .request_socket(&eph(), ShareMode::None, "holder")
        .unwrap();
    drop((g, g2));
}

/// Root clients that ask STATUS without reading, while the table keeps
/// changing, pin a new status table each time: at most 48 live in all (in
/// the broker or in a client's queue), so the broker's fds stay under its
/// RLIMIT_NOFILE headroom; past that STATUS is LimitReached, requests are
/// still served, and the tables go when the flooders do. (An unchanged
/// table is shared: without the changes the flood pins one.)
#[test]
fn status_tables_waiting_to_be_read_are_bounded() {
    use sockpass::fdpass::send_fds;
    use std::os::fd::AsFd;
    let b = Broker::start("limit-statusfds");
    let mut good = b.client();
    let mut status = Vec::new();
    sockpass::proto::encode_status(&mut status, 1);
    let flooders: Vec<_> = (0..3)
        .map(|_| {
            let fd = sockpass::sys::unix_socket(libc::SOCK_SEQPACKET, true).unwrap();
            sockpass::sys::connect_unix(&fd, path_str(&b.path).as_bytes()).unwrap();
            fd
        })
        .collect();
    let mut rounds = 0;
    let e = wait_for("STATUS to be refused at 48 live tables", || {
        for f in &flooders {
            let _ = send_fds(f.as_fd(), &status, &[], libc::MSG_DONTWAIT);
        }
        // A change: the next STATUS needs a new table.
        let g = good
            .request_socket(&eph(), ShareMode::None, "good")
            .unwrap();
        good.release(&g.token).unwrap();
        rounds += 1;
        good.status().err()
    });
    assert_limit(&e, "status tables are still open or unread, the limit");
    assert!(e.message().starts_with("48 "), "{e}");
    // One new table a round; good's own (read and closed) count until the
    // broker has seen them go, so a few rounds fewer may reach the bound.
    assert!(rounds >= 40, "refused after {rounds} rounds");
    // The broker keeps at most the last table and those still queued in it.
    assert!(b.fd_count() < 64 + 16, "{} fds", b.fd_count());
    // Requests do not need a table: still served.
    let g = good
        .request_socket(&eph(), ShareMode::None, "good")
        .unwrap();
    good.release(&g.token).unwrap();
    drop(flooders);
    let st = wait_for("the tables to go with the flooders", || good.status().ok());
    assert_eq!(st.counters.sockets, 0);
}
