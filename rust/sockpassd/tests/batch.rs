//! Batch requests (REQUEST_MANY) end to end: cached and new sockets in one
//! batch, more specs than one message carries, and all or nothing when one
//! spec is refused by the policy or by sharing (no reference kept, no
//! socket left in the broker, no fd left in the client).

mod common;

use common::*;
use sockpass::{Kind, ShareMode, SocketSpec};
use std::sync::Mutex;

/// The fd counts below are of this process: one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn my_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn udp(port: u16) -> SocketSpec {
    format!("udp:127.0.0.1:{port}").parse().unwrap()
}

/// `n` distinct free UDP ports, none of `not` (the kernel's picks can repeat).
fn free_ports(n: usize, not: &[u16]) -> Vec<u16> {
    let mut seen: std::collections::HashSet<u16> = not.iter().copied().collect();
    let mut out = Vec::new();
    while out.len() < n {
        let p = free_port(true);
        if seen.insert(p) {
            out.push(p);
        }
    }
    out
}

fn batch(specs: &[SocketSpec], share: ShareMode) -> Vec<(SocketSpec, ShareMode, &'static str)> {
    specs.iter().map(|s| (s.clone(), share, "batch")).collect()
}

#[test]
fn cached_and_new_sockets_in_one_batch() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let b = Broker::start("batch-mixed");
    let cached: Vec<_> = free_ports(64, &[]).into_iter().map(udp).collect();
    let mut anchor = b.client();
    let held = anchor
        .request_many(&batch(&cached, ShareMode::Any))
        .expect("anchor batch");
    assert_eq!(held.len(), 64);
    assert!(held.iter().all(|g| !g.cached));

    let mut specs = batch(&cached, ShareMode::Any);
    let fresh: Vec<SocketSpec> = (0..8)
        .map(|_| "tcp:127.0.0.1:0?backlog=4".parse().unwrap())
        .collect();
    specs.extend(batch(&fresh, ShareMode::None));
    let mut c = b.client();
    let grants = c.request_many(&specs).expect("mixed batch");
    assert_eq!(grants.len(), 72);
    for (i, (g, h)) in grants.iter().zip(&held).enumerate() {
        assert!(g.cached, "spec {i} came from the cache");
        assert_eq!(
            inode(&g.fd),
            inode(&h.fd),
            "spec {i} is the anchor's socket"
        );
        assert_eq!(g.port, cached[i].port);
    }
    for g in &grants[64..] {
        assert!(!g.cached && g.port != 0);
        // A listening TCP socket: connect to it.
        std::net::TcpStream::connect(("127.0.0.1", g.port)).expect("connect to the new socket");
    }
    // Again, by a third client: now by the spec bytes the broker remembers.
    let mut c3 = b.client();
    let again = c3
        .request_many(&batch(&cached, ShareMode::Any))
        .expect("again");
    for (g, h) in again.iter().zip(&held) {
        assert!(g.cached && inode(&g.fd) == inode(&h.fd));
    }
    assert_eq!(c3.release_all().unwrap(), 64);
    let st = b.status();
    assert_eq!(st.counters.sockets, 72);
    assert_eq!(st.counters.references, 64 + 72);
    // Each grant is released by its own token.
    assert_eq!(c.release(&grants[0].token).unwrap(), 1);
    assert_eq!(c.release_all().unwrap(), 71);
    assert_eq!(b.status().counters.sockets, 64);
}

#[test]
fn more_specs_than_one_message_carries() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let b = Broker::start("batch-many");
    let specs: Vec<SocketSpec> = (0..300).map(|_| udp(0)).collect();
    let mut c = b.client();
    let grants = c
        .request_many(&batch(&specs, ShareMode::None))
        .expect("300 specs");
    assert_eq!(grants.len(), 300);
    let mut ports: Vec<u16> = grants.iter().map(|g| g.port).collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), 300, "300 distinct sockets");
    assert_eq!(b.status().counters.references, 300);
    drop(grants);
    assert_eq!(c.release_all().unwrap(), 300);
    assert_eq!(b.status().counters.sockets, 0);
}

/// Broker state and client fds are as they were after a refused batch.
fn assert_nothing_left(b: &Broker, before: (u32, u32), fds: usize, free: &[u16]) {
    let st = b.status();
    assert_eq!(
        (st.counters.sockets, st.counters.references),
        before,
        "no socket or reference left by the refused batch"
    );
    assert_eq!(my_fds(), fds, "no fd left in the client");
    for p in free {
        assert!(
            can_bind(true, *p),
            "port {p} created for the batch is free again"
        );
    }
}

#[test]
fn a_batch_refused_by_policy_leaves_nothing() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let ps = free_ports(2, &[]);
    let denied = ps[0];
    let dir = temp_dir("batch-policy");
    let pol = dir.join("policy.conf");
    std::fs::write(
        &pol,
        format!("deny * ops=request port={denied}\nallow * ops=request opts=all\n"),
    )
    .unwrap();
    let path = dir.join("sockpassd.sock");
    let b = Broker::start_at(dir.clone(), path, &["--policy", &path_str(&pol)]);
    let shared = udp(ps[1]);
    let mut anchor = b.client();
    let _a = anchor
        .request_socket(&shared, ShareMode::Any, "batch")
        .unwrap();
    let mut c = b.client();
    let before = (1, 1);
    let fds = my_fds();
    // Small, 64, and the most one message carries: refused before anything
    // is made, or what was made dropped again. Larger: the policy refusal is
    // in the last of several messages, the earlier ones are given back.
    for n in [3, 64, sockpass::proto::MAX_REQUEST_BATCH, 200] {
        let new = free_ports(n - 2, &[denied, shared.port]);
        let mut specs: Vec<SocketSpec> = new.iter().map(|p| udp(*p)).collect();
        specs.push(shared.clone());
        specs.push(udp(denied));
        let e = c
            .request_many(&batch(&specs, ShareMode::Any))
            .expect_err("a spec the policy denies");
        assert_eq!(e.kind(), Kind::NotAllowed, "{e}");
        assert!(
            e.message().starts_with(&format!("spec {} of {n}: ", n - 1)),
            "names the spec: {e}"
        );
        assert_nothing_left(&b, before, fds, &new);
    }
    // The connection is still in step.
    let g = c.request_socket(&shared, ShareMode::Any, "batch").unwrap();
    assert!(g.cached);
}

#[test]
fn a_batch_refused_by_sharing_leaves_nothing() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let b = Broker::start("batch-share");
    let ps = free_ports(2, &[]);
    let (exclusive, shared) = (udp(ps[0]), udp(ps[1]));
    let mut anchor = b.client();
    let _x = anchor
        .request_socket(&exclusive, ShareMode::None, "other")
        .unwrap();
    let _s = anchor
        .request_socket(&shared, ShareMode::Any, "other")
        .unwrap();
    let mut c = b.client();
    let fds = my_fds();
    for n in [4, 64, sockpass::proto::MAX_REQUEST_BATCH, 200] {
        let new = free_ports(n - 2, &[exclusive.port, shared.port]);
        let mut specs: Vec<SocketSpec> = new.iter().map(|p| udp(*p)).collect();
        specs.insert(1, shared.clone());
        specs.push(exclusive.clone());
        let e = c
            .request_many(&batch(&specs, ShareMode::Any))
            .expect_err("a spec held exclusively");
        assert_eq!(e.kind(), Kind::ShareConflict, "{e}");
        assert!(
            e.message().starts_with(&format!("spec {} of {n}: ", n - 1)),
            "names the spec: {e}"
        );
        assert_nothing_left(&b, (2, 2), fds, &new);
    }
    // Two specs of one batch that exclude each other: refused alike.
    let p = free_port(true);
    let specs = vec![
        (udp(p), ShareMode::None, "batch"),
        (udp(p), ShareMode::None, "batch"),
    ];
    let e = c
        .request_many(&specs)
        .expect_err("the batch conflicts with itself");
    assert_eq!(e.kind(), Kind::ShareConflict, "{e}");
    assert!(e.message().starts_with("spec 1 of 2: "), "{e}");
    assert_nothing_left(&b, (2, 2), fds, &[p]);
}

/// A batch whose spec bytes all hit the cache before is answered without
/// decoding them again (the broker's fast path); it is granted as any
/// batch, and a refusal in it still leaves nothing and names the spec.
#[test]
fn a_batch_of_cached_specs_by_their_bytes() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let b = Broker::start("batch-bytes");
    let ps = free_ports(3, &[]);
    let (a, s, x) = (udp(ps[0]), udp(ps[1]), udp(ps[2]));
    let mut anchor = b.client();
    let _a = anchor.request_socket(&a, ShareMode::Any, "other").unwrap();
    let _s = anchor.request_socket(&s, ShareMode::Any, "other").unwrap();
    // Twice, so that its bytes hit the cache: only "other" may share it.
    let x2 = [
        (x.clone(), ShareMode::SameApp, "other"),
        (x.clone(), ShareMode::SameApp, "other"),
    ];
    let _x = anchor.request_many(&x2).expect("x twice, same application");
    let mut c = b.client();
    let ok = batch(&[a.clone(), s.clone()], ShareMode::Any);
    for round in 0..3 {
        let grants = c.request_many(&ok).expect("cached batch");
        assert!(grants.iter().all(|g| g.cached), "round {round}");
        assert_eq!(
            (grants[0].port, grants[1].port),
            (a.port, s.port),
            "in order"
        );
        assert_eq!(b.status().counters.references, 6, "round {round}");
        drop(grants);
        assert_eq!(c.release_all().unwrap(), 2);
    }
    let fds = my_fds();
    let specs = batch(&[a.clone(), s.clone(), x.clone()], ShareMode::Any);
    let e = c
        .request_many(&specs)
        .expect_err("x is shared by application other only");
    assert_eq!(e.kind(), Kind::ShareConflict, "{e}");
    assert!(
        e.message().starts_with("spec 2 of 3: "),
        "names the spec: {e}"
    );
    assert_nothing_left(&b, (3, 4), fds, &[]);
    // Bytes that hit, twice in one batch with share NONE: the second
    // conflicts with the first, as on the full path.
    let e = c
        .request_many(&batch(&[s.clone(), a.clone(), a.clone()], ShareMode::Any))
        .map(|g| g.len());
    assert_eq!(e.unwrap(), 3, "any shares with any");
    c.release_all().unwrap();
    let e = c
        .request_many(&[
            (a.clone(), ShareMode::None, "other"),
            (s.clone(), ShareMode::Any, "x"),
        ])
        .expect_err("a is held by others");
    assert_eq!(e.kind(), Kind::ShareConflict, "{e}");
    assert!(e.message().starts_with("spec 0 of 2: "), "{e}");
    assert_nothing_left(&b, (3, 4), fds, &[]);
}

#[test]
fn the_cli_requests_several_specs_in_one_batch() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let b = Broker::start("batch-cli");
    let ps = free_ports(2, &[]);
    let (p1, p2) = (ps[0], ps[1]);
    let run = |specs: &[String]| {
        std::process::Command::new(sockpass_bin())
            .args(["request", "--no-hold", "--socket", &path_str(&b.path)])
            .args(specs)
            .output()
            .expect("run sockpass request")
    };
    let specs = [udp(p1).to_string(), udp(p2).to_string()];
    let out = run(&specs);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let ports: Vec<&str> = text.lines().map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(ports, [p1.to_string(), p2.to_string()], "{text}");
    // The second spec is held exclusively: nothing is printed for the first.
    let mut anchor = b.client();
    let _x = anchor
        .request_socket(&udp(p2), ShareMode::None, "other")
        .unwrap();
    let out = run(&specs);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("spec 1 of 2: "), "{err}");
}

fn highest_fd() -> u64 {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
        .max()
        .unwrap()
}

/// Child: with RLIMIT_NOFILE 5 above its highest fd, ask for 20 sockets in
/// one batch; print the error, the references the broker then holds for it
/// and whether its fd count is as before.
#[test]
#[ignore]
fn child_out_of_fds() {
    if !is_child() {
        return;
    }
    let mut c = sockpass::Client::connect(std::env::var("SOCK").unwrap()).unwrap();
    c.hello().unwrap();
    let top = highest_fd();
    // Fill the gaps below the highest fd, so 5 numbers are left under the limit.
    let mut fill = Vec::new();
    loop {
        let f = std::fs::File::open("/dev/null").unwrap();
        let n = std::os::fd::AsRawFd::as_raw_fd(&f) as u64;
        fill.push(f);
        if n >= top {
            break;
        }
    }
    let before = my_fds();
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on valid structs.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut old), 0);
        let low = libc::rlimit {
            rlim_cur: top + 6,
            rlim_max: old.rlim_max,
        };
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &low), 0);
    }
    let specs: Vec<SocketSpec> = (0..20).map(|_| udp(0)).collect();
    let r = c.request_many(&batch(&specs, ShareMode::None));
    // SAFETY: as above.
    unsafe { assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &old), 0) };
    let e = r.expect_err("20 fds do not fit under the limit");
    let refs = c.status().unwrap().counters.references;
    println!(
        "@@ {:?} {} {} {}",
        e.kind(),
        e.errno(),
        refs,
        my_fds() == before
    );
}

#[test]
fn a_client_out_of_fds_releases_the_batch() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let b = Broker::start("batch-emfile");
    let mut child = spawn_self("child_out_of_fds", &[("SOCK", path_str(&b.path))]);
    let line = read_line(&mut child);
    assert!(wait_child(&mut child).success());
    assert_eq!(
        line, "LimitReached 24 0 true",
        "error, references left, fds as before"
    );
    assert_eq!(
        b.status().counters.sockets,
        0,
        "the batch's sockets are closed"
    );
}

/// What passed a [`Relay`]: per packet, whether it went to the broker, its
/// type, length and fds.
type Seen = std::sync::Arc<Mutex<Vec<(bool, u8, usize, usize)>>>;

/// A relay between one client and the real broker, at a path of its own:
/// it passes every packet (and its fds) on as it is and notes it, and can
/// rewrite the HELLO_OK's packet limit to `limit`, as an older broker that
/// took 1024-byte packets said. Once rolled back ([`Relay::roll_back`]) it
/// plays the broker replaced in place by such an older image, connections
/// carried over: a packet from the client longer than 1024 bytes is not
/// passed on but answered as that image answers it (and noted in
/// `refused`). The answer goes out at once, so it is in order only if no
/// earlier request is still with the broker, as in the calls below (a
/// call's messages are full but for its last).
struct Relay {
    path: std::path::PathBuf,
    seen: Seen,
    rolled_back: std::sync::Arc<std::sync::atomic::AtomicBool>,
    refused: std::sync::Arc<Mutex<Vec<(u8, usize)>>>,
    _dir: std::path::PathBuf,
}

impl Relay {
    fn start(b: &Broker, tag: &str, limit: Option<u32>) -> Relay {
        use sockpass::fdpass::{recv_fds, send_fds};
        use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
        let dir = temp_dir(tag);
        let path = dir.join("relay.sock");
        let l = sockpass::sys::unix_socket(libc::SOCK_SEQPACKET, false).unwrap();
        sockpass::sys::bind_unix(&l, path_str(&path).as_bytes()).unwrap();
        // SAFETY: listen on our socket.
        assert_eq!(unsafe { libc::listen(l.as_raw_fd(), 1) }, 0);
        let seen = Seen::default();
        let (log, broker) = (seen.clone(), path_str(&b.path));
        let rolled_back = std::sync::Arc::<std::sync::atomic::AtomicBool>::default();
        let refused = std::sync::Arc::<Mutex<Vec<(u8, usize)>>>::default();
        let (old, refusals) = (rolled_back.clone(), refused.clone());
        std::thread::spawn(move || {
            // SAFETY: accept on our listener; the fd returned is ours.
            let c = unsafe {
                libc::accept4(
                    l.as_raw_fd(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_CLOEXEC,
                )
            };
            assert!(c >= 0);
            // SAFETY: just accepted, owned here.
            let c = unsafe { OwnedFd::from_raw_fd(c) };
            let up = sockpass::sys::unix_socket(libc::SOCK_SEQPACKET, false).unwrap();
            sockpass::sys::connect_unix(&up, broker.as_bytes()).unwrap();
            let mut buf = vec![0u8; 65536];
            loop {
                let mut p = [c.as_raw_fd(), up.as_raw_fd()].map(|fd| libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                });
                // SAFETY: two valid pollfds.
                unsafe { libc::poll(p.as_mut_ptr(), 2, -1) };
                for (i, (from, to)) in [(&c, &up), (&up, &c)].into_iter().enumerate() {
                    if p[i].revents == 0 {
                        continue;
                    }
                    let r = match recv_fds(from.as_fd(), &mut buf, sockpass::fdpass::MAX_FDS, 0) {
                        Ok(r) if r.len > 0 => r,
                        _ => return,
                    };
                    let ty = buf[1];
                    let old_image = old.load(std::sync::atomic::Ordering::Relaxed);
                    if i == 0 && old_image && r.len > sockpass::proto::MIN_MSG {
                        // The old image reads 1024 bytes (MSG_TRUNC) and
                        // answers with the id from their header.
                        let h = sockpass::proto::Header::parse(&buf[..r.len]).unwrap();
                        let e = sockpass::Error::protocol(format!(
                            "message larger than {} bytes",
                            sockpass::proto::MIN_MSG
                        ));
                        let mut out = Vec::new();
                        sockpass::proto::encode_error(&mut out, h.id, &e);
                        refusals.lock().unwrap().push((ty, r.len));
                        if send_fds(from.as_fd(), &out, &[], 0).is_err() {
                            return;
                        }
                        continue;
                    }
                    if let (Some(n), sockpass::proto::ty::HELLO_OK) = (limit, ty) {
                        buf[12..16].copy_from_slice(&n.to_le_bytes());
                    }
                    log.lock().unwrap().push((i == 0, ty, r.len, r.fds.len()));
                    let fds: Vec<_> = r.fds.iter().map(|f| f.as_fd()).collect();
                    if send_fds(to.as_fd(), &buf[..r.len], &fds, 0).is_err() {
                        return;
                    }
                }
            }
        });
        Relay {
            path,
            seen,
            rolled_back,
            refused,
            _dir: dir,
        }
    }

    /// From now on, answer as the broker rolled back to an image that takes
    /// 1024-byte packets.
    fn roll_back(&self) {
        self.rolled_back
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// The packets refused as the old image since the last call: type, length.
    fn take_refused(&self) -> Vec<(u8, usize)> {
        std::mem::take(&mut self.refused.lock().unwrap())
    }

    /// The packets seen since the last call.
    fn take(&self) -> Vec<(bool, u8, usize, usize)> {
        std::mem::take(&mut self.seen.lock().unwrap())
    }
}

/// The packets a relay passed to the broker: type and length.
fn to_broker(seen: &[(bool, u8, usize, usize)]) -> Vec<(u8, usize)> {
    seen.iter().filter(|s| s.0).map(|s| (s.1, s.2)).collect()
}

/// The packets a relay passed from the broker: type and fds.
fn from_broker(seen: &[(bool, u8, usize, usize)]) -> Vec<(u8, usize)> {
    seen.iter().filter(|s| !s.0).map(|s| (s.1, s.3)).collect()
}

/// The client packs a batch to the broker's packet limit: 64 specs in one
/// message and one reply with this broker, after one HELLO on a new
/// connection to learn it; in messages of 36 at most 1024 bytes when the
/// broker says 1024, as older ones did. A batch that fits in 1024 bytes
/// needs no HELLO. Releases are packed alike.
#[test]
fn a_batch_is_packed_to_the_packet_limit_the_broker_said() {
    use sockpass::proto::ty;
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let b = Broker::start("batch-limit");
    let specs: Vec<SocketSpec> = free_ports(64, &[]).into_iter().map(udp).collect();

    // This broker: HELLO, then one message each way, twice.
    let r = Relay::start(&b, "relay-page", None);
    let mut c = sockpass::Client::connect(&r.path).unwrap();
    for round in 0..2 {
        let g = c.request_many(&batch(&specs, ShareMode::Any)).unwrap();
        assert_eq!(g.len(), 64);
        let seen = r.take();
        let want_hello = round == 0;
        let sent = to_broker(&seen);
        let got = from_broker(&seen);
        let k = usize::from(want_hello);
        assert_eq!(sent.len(), 1 + k, "round {round}: {sent:?}");
        assert_eq!(sent[k].0, ty::REQUEST_MANY);
        assert!(sent[k].1 > 1024, "{sent:?}");
        assert_eq!(got[k..], [(ty::SOCKETS, 64)], "round {round}: {got:?}");
        drop(g);
        assert_eq!(c.release_all().unwrap(), 64);
        assert_eq!(to_broker(&r.take()), [(ty::RELEASE_MANY, 10 + 64 * 24)]);
    }

    // A broker that says 1024: messages of at most 1024 bytes, 36 grants.
    let r = Relay::start(&b, "relay-1024", Some(1024));
    let mut c = sockpass::Client::connect(&r.path).unwrap();
    let g = c.request_many(&batch(&specs, ShareMode::Any)).unwrap();
    assert_eq!(g.len(), 64);
    let seen = r.take();
    let sent = to_broker(&seen);
    assert_eq!(sent[0].0, ty::HELLO);
    assert_eq!(sent.len(), 3, "{sent:?}");
    assert!(
        sent[1..]
            .iter()
            .all(|(t, n)| *t == ty::REQUEST_MANY && *n <= 1024),
        "{sent:?}"
    );
    assert_eq!(
        from_broker(&seen)[1..],
        [(ty::SOCKETS, 36), (ty::SOCKETS, 28)]
    );
    drop(g);
    assert_eq!(c.release_all().unwrap(), 64);
    let sent = to_broker(&r.take());
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert!(sent
        .iter()
        .all(|(t, n)| *t == ty::RELEASE_MANY && *n <= 1024));

    // A small batch on a new connection: no HELLO, one message.
    let r = Relay::start(&b, "relay-small", None);
    let mut c = sockpass::Client::connect(&r.path).unwrap();
    let g = c.request_many(&batch(&specs[..3], ShareMode::Any)).unwrap();
    assert_eq!(g.len(), 3);
    let sent = to_broker(&r.take());
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].0, ty::REQUEST_MANY);
    // Releases likewise: 64 references held by single requests are
    // released after one HELLO in one message.
    let mut singles = Vec::new();
    for s in &specs[3..] {
        singles.push(c.request_socket(s, ShareMode::Any, "batch").unwrap());
    }
    r.take();
    drop((g, singles));
    assert_eq!(c.release_all().unwrap(), 64);
    let sent = to_broker(&r.take());
    assert_eq!(sent, [(ty::HELLO, 16), (ty::RELEASE_MANY, 10 + 64 * 24)]);
}

/// The connections holding the socket on `port`, by the broker's status.
fn holders(b: &Broker, port: u16) -> Vec<u64> {
    let st = b.status();
    let s = st.sockets.iter().find(|s| s.port == port);
    s.map_or(Vec::new(), |s| {
        s.holders.iter().map(|h| h.conn_id).collect()
    })
}

/// A datagram sent to `port` arrives on `fd`: the socket still works.
fn receives(fd: &std::os::fd::OwnedFd, port: u16) {
    let s = std::net::UdpSocket::from(fd.try_clone().unwrap());
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    tx.send_to(b"ping", ("127.0.0.1", port)).unwrap();
    assert_eq!(s.recv(&mut [0; 8]).unwrap(), 4, "port {port}");
}

/// The broker is rolled back in place to an image that takes 1024-byte
/// packets, its connections carried over (the relay plays it): a message
/// longer than that is refused with a protocol error and the connection
/// kept. The client lowers its limit to 1024, reads every reply in flight,
/// gives back what the call got, and sends again, repacked; the connection
/// and every reference it held stay. Each case needs a connection of its
/// own: after one refusal it packs to 1024.
#[test]
fn a_client_keeps_its_connection_when_its_broker_is_rolled_back_to_1024_bytes() {
    use sockpass::proto::{ty, MIN_MSG};
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let b = Broker::start("batch-rollback");
    let short = |sent: &[(u8, usize)], t: u8| sent.iter().all(|&(ty, n)| ty == t && n <= MIN_MSG);

    // References held by single requests, then a batch of 64: one message
    // refused, two of at most 1024 bytes served.
    let r = Relay::start(&b, "relay-rollback", None);
    let mut c = sockpass::Client::connect(&r.path).unwrap();
    c.hello().unwrap();
    let ports = free_ports(3 + 64, &[]);
    let kept: Vec<_> = ports[..3]
        .iter()
        .map(|p| c.request_socket(&udp(*p), ShareMode::Any, "batch").unwrap())
        .collect();
    let conn = holders(&b, kept[0].port);
    assert_eq!(conn.len(), 1);
    let conns = b.status().counters.connections;
    r.roll_back();
    r.take();
    let specs: Vec<SocketSpec> = ports[3..].iter().map(|p| udp(*p)).collect();
    let g = c
        .request_many(&batch(&specs, ShareMode::Any))
        .expect("64 specs after the rollback");
    assert_eq!(g.len(), 64);
    assert!(g.iter().zip(&specs).all(|(g, s)| g.port == s.port));
    let refused = r.take_refused();
    assert!(
        matches!(refused[..], [(ty::REQUEST_MANY, n)] if n > MIN_MSG),
        "{refused:?}"
    );
    let seen = r.take();
    let sent = to_broker(&seen);
    assert!(
        sent.len() == 2 && short(&sent, ty::REQUEST_MANY),
        "{sent:?}"
    );
    assert_eq!(from_broker(&seen), [(ty::SOCKETS, 36), (ty::SOCKETS, 28)]);
    // The references held before are held still, by the same connection.
    for k in &kept {
        assert_eq!(holders(&b, k.port), conn, "port {}", k.port);
        receives(&k.fd, k.port);
    }
    let st = b.status();
    assert_eq!(st.counters.references, 3 + 64);
    assert_eq!(st.counters.connections, conns, "no connection dropped");
    // The limit stays at 1024: the release is not refused.
    drop(g);
    assert_eq!(c.release_all().unwrap(), 3 + 64);
    assert_eq!(r.take_refused(), []);
    let sent = to_broker(&r.take());
    assert!(
        sent.len() == 2 && short(&sent, ty::RELEASE_MANY),
        "{sent:?}"
    );
    assert_eq!(b.status().counters.references, 0);
    drop(kept);

    // A release of 180: the first message (170 tokens) refused, the second
    // (10) served; the 170 sent again, repacked, each released once.
    let r = Relay::start(&b, "relay-rollback-release", None);
    let mut c = sockpass::Client::connect(&r.path).unwrap();
    let specs: Vec<SocketSpec> = (0..180).map(|_| udp(0)).collect();
    let g = c.request_many(&batch(&specs, ShareMode::None)).unwrap();
    let conn = holders(&b, g[0].port);
    let conns = b.status().counters.connections;
    r.roll_back();
    r.take();
    drop(g);
    assert_eq!(c.release_all().expect("release after the rollback"), 180);
    let refused = r.take_refused();
    assert_eq!(refused, [(ty::RELEASE_MANY, 10 + 170 * 24)]);
    let sent = to_broker(&r.take());
    assert_eq!(sent[0], (ty::RELEASE_MANY, 10 + 10 * 24), "{sent:?}");
    assert!(
        sent.len() == 6 && short(&sent, ty::RELEASE_MANY),
        "{sent:?}"
    );
    let st = b.status();
    assert_eq!((st.counters.references, st.counters.sockets), (0, 0));
    assert_eq!(st.counters.connections, conns, "no connection dropped");
    let g = c.request_socket(&udp(0), ShareMode::None, "batch").unwrap();
    assert_eq!(holders(&b, g.port), conn, "the same connection");
    drop(g);
    c.release_all().unwrap();

    // A batch of 300: two messages refused, the third (10 specs) served
    // and given back, then all 300 in messages of at most 1024 bytes.
    let r = Relay::start(&b, "relay-rollback-back", None);
    let mut c = sockpass::Client::connect(&r.path).unwrap();
    c.hello().unwrap();
    let conns = b.status().counters.connections;
    r.roll_back();
    r.take();
    let specs: Vec<SocketSpec> = (0..300).map(|_| udp(0)).collect();
    let g = c
        .request_many(&batch(&specs, ShareMode::None))
        .expect("300 specs after the rollback");
    assert_eq!(g.len(), 300);
    let refused = r.take_refused();
    assert!(
        refused.len() == 2
            && refused
                .iter()
                .all(|&(t, n)| t == ty::REQUEST_MANY && n > MIN_MSG),
        "{refused:?}"
    );
    let sent = to_broker(&r.take());
    assert_eq!(sent[1], (ty::RELEASE_MANY, 10 + 10 * 24), "{sent:?}");
    assert!(short(&sent[..1], ty::REQUEST_MANY), "{sent:?}");
    assert!(
        sent.len() == 11 && short(&sent[2..], ty::REQUEST_MANY),
        "{sent:?}"
    );
    let st = b.status();
    assert_eq!((st.counters.references, st.counters.sockets), (300, 300));
    assert_eq!(st.counters.connections, conns, "no connection dropped");
    drop(g);
    assert_eq!(c.release_all().unwrap(), 300);
    assert_eq!(r.take_refused(), []);
}
