//! fd hygiene: every fd the library opens is CLOEXEC (audited in a child),
//! fds that arrive where none were expected are closed and an error, and a
//! truncated control message (MSG_CTRUNC) is a clear error (split from
//! reliability.rs).

mod common;
use common::*;
use sockpass::Client;
use sockpass::{ShareMode, SocketSpec};
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Command;
use std::time::Duration;

/// Child: use every API of the library (client calls of every kind, the
/// default client, readiness by pipe and sd_notify, the notify manager and
/// server sides, spawn), then check that every fd it holds is CLOEXEC by
/// exec'ing a probe that lists its own fds.
#[test]
#[ignore]
fn child_fd_audit() {
    use sockpass::{BindOptions, ServerSocket};
    use sockpass::{Method, Readiness};
    if !is_child() {
        return;
    }
    let path = std::env::var("SOCKPASS_SOCKET").unwrap();
    let dir = std::path::PathBuf::from(std::env::var_os("SOCKPASS_DIR").unwrap());
    // fds this process inherited without CLOEXEC (e.g. cargo's jobserver
    // pipes) are not the library's: note them first.
    let inherited = non_cloexec_fds();
    let t = Some(Duration::from_secs(10));
    // The client, every call.
    let mut c = Client::connect(&path).unwrap();
    let g1 = c
        .request_socket(&"udp:127.0.0.1:0".parse().unwrap(), ShareMode::None, "a")
        .unwrap();
    let _g2 = c
        .request_socket(
            &"tcp:[::1]:0?backlog=4".parse().unwrap(),
            ShareMode::Any,
            "a",
        )
        .unwrap();
    let pw: SocketSpec = format!("udp:127.0.0.1:{}?reuseport=1", free_port(true))
        .parse()
        .unwrap();
    let w = c
        .request_with_flags(
            &pw,
            ShareMode::SameApp,
            "a",
            sockpass::proto::REQ_PER_WORKER,
        )
        .unwrap();
    let r = c
        .reserve_socket(&"udp:127.0.0.1:0".parse().unwrap(), ShareMode::None, "a")
        .unwrap();
    let _g3 = c.pickup(&r.token).unwrap();
    let _ = c.status().unwrap();
    let _ = c.release_fd(g1.fd.as_raw_fd()).unwrap();
    let _ = c.release(&r.token);
    c.release_many(&[w.token]).unwrap();
    let _ = c.request_socket(&"udp:127.0.0.1:0".parse().unwrap(), ShareMode::None, "a");
    c.release_all().unwrap();
    let _ = sockpass::with_default(|d| d.status().map(drop));
    // Readiness: a pipe the child reports on, and an sd_notify socket.
    let (mut rd, wfd) = Readiness::new(Method::Pipe).unwrap();
    sockpass::report_ready_fd(wfd.unwrap()).unwrap();
    rd.wait(t).unwrap();
    let (mut nt, _) = Readiness::new(Method::Notify).unwrap();
    sockpass::send_notify(nt.notify_socket_env().unwrap(), b"READY=1").unwrap();
    nt.wait(t).unwrap();
    drop((rd, nt));
    // The notify manager binds eagerly and lazily; the server side adopts,
    // waits for the notifier and accepts.
    let eager = dir.join("eager.sock");
    let lfd =
        sockpass::bind_in_namespace(None, path_str(&eager).as_bytes(), &BindOptions::default())
            .unwrap();
    let (daemon_n, manager_n) = sockpass::notifier_pair().unwrap();
    let mut srv = ServerSocket::adopt(lfd, Some(daemon_n)).unwrap();
    drop(manager_n);
    srv.wait(t).unwrap();
    let peer = std::os::unix::net::UnixStream::connect(&eager).unwrap();
    let (conn, _) = srv.accept().unwrap();
    drop((peer, conn, srv));
    let mut lazy = sockpass::prepare_lazy(None, false).unwrap();
    let (sock, note) = (
        lazy.daemon_socket.take().unwrap(),
        lazy.daemon_notifier.take(),
    );
    lazy.bind_and_notify(
        None,
        path_str(&dir.join("lazy.sock")).as_bytes(),
        &BindOptions::default(),
    )
    .unwrap();
    let mut srv = ServerSocket::adopt(sock, note).unwrap();
    srv.wait(t).unwrap();
    drop(srv);
    // Spawn a child with an fd plan.
    let (a, _b) = sockpass::fdpass::socketpair(libc::SOCK_STREAM).unwrap();
    let mut kid = sockpass::Spawn::new("/bin/true");
    kid.fd(a, Some("x"));
    assert_eq!(kid.spawn().unwrap().wait().unwrap(), 0);

    let open: Vec<i32> = non_cloexec_fds()
        .into_iter()
        .filter(|f| !inherited.contains(f))
        .collect();
    // The exec'd probe lists what survived exec, without opening anything
    // itself (test(1) and arithmetic are shell builtins; stat opens no fd).
    let out = Command::new("/bin/sh")
        .arg("-c")
        .arg("i=0; while [ $i -lt 4096 ]; do [ -e /proc/$$/fd/$i ] && echo $i; i=$((i+1)); done")
        .output()
        .unwrap();
    let survived: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .filter(|f| !["0", "1", "2"].contains(&f.as_str()))
        .filter(|f| !inherited.iter().any(|i| i.to_string() == *f))
        .collect();
    println!("@@ {} | {}", open.len(), survived.join(","));
}

fn non_cloexec_fds() -> Vec<i32> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc/self/fd").unwrap() {
        let n: i32 = e.unwrap().file_name().to_str().unwrap().parse().unwrap();
        if n > 2 && sockpass::sys::fd_is_open(n) && !sockpass::sys::is_cloexec(n) {
            v.push(n);
        }
    }
    v
}

#[test]
fn every_fd_the_library_opens_is_cloexec() {
    let b = Broker::start("cloexec");
    let mut kid = spawn_self(
        "child_fd_audit",
        &[
            ("SOCKPASS_SOCKET", path_str(&b.path)),
            ("SOCKPASS_DIR", path_str(&b.dir)),
        ],
    );
    let line = read_line(&mut kid);
    assert!(wait_child(&mut kid).success(), "{line}");
    let (non_cloexec, survived) = line.split_once(" | ").unwrap();
    assert_eq!(
        non_cloexec, "0",
        "fds without CLOEXEC in a process that used every API"
    );
    assert_eq!(survived, "", "fds survived exec");
}

/// A fake broker's reply: type, payload, how many extra copies of the
/// stray fd to attach, and whether to answer under a wrong request id.
struct FakeReply {
    ty: u8,
    payload: Vec<u8>,
    stray: usize,
    wrong_id: bool,
}

/// Serve one connection on `listener` with `script`: read a request, send
/// the next reply (with any fds `attach` gives plus `stray` copies of
/// `stray_fd`), then wait for the client to close.
fn fake_broker(listener: &OwnedFd, script: Vec<FakeReply>, stray_fd: OwnedFd) {
    use sockpass::fdpass::{recv_fds, send_fds};
    use sockpass::proto;
    use std::os::fd::{AsFd, FromRawFd};
    // SAFETY: accept4 returns a new fd or -1.
    let raw = unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC,
        )
    };
    assert!(raw >= 0, "accept");
    // SAFETY: a fresh fd we own.
    let conn = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut buf = [0u8; proto::MAX_MSG];
    for step in script {
        let r = recv_fds(conn.as_fd(), &mut buf, 0, 0).unwrap();
        let h = proto::Header::parse(&buf[..r.len]).unwrap();
        let mut out = Vec::new();
        proto::begin(
            &mut out,
            step.ty,
            h.id.wrapping_add(step.wrong_id as u32 * 7),
        );
        out.extend_from_slice(&step.payload);
        let mut fds = Vec::new();
        let table;
        if step.ty == proto::ty::STATUS_OK {
            table = sockpass::memfd::from_bytes("t", &0u32.to_le_bytes()).unwrap();
            fds.push(table.as_fd());
        }
        fds.extend((0..step.stray).map(|_| stray_fd.as_fd()));
        if send_fds(conn.as_fd(), &out, &fds, 0).is_err() {
            return;
        }
    }
    // Until the client hangs up.
    while matches!(recv_fds(conn.as_fd(), &mut buf, 0, 0), Ok(r) if r.len > 0) {}
}

/// Child: a real `Client` against fake brokers whose replies carry fds it
/// did not ask for. Reports each call's error kind and the process's fd
/// counts; runs alone in its process so the counts are exact.
#[test]
#[ignore]
fn child_stray_fds() {
    use sockpass::proto::{self, ty};
    if !is_child() {
        return;
    }
    let dir = temp_dir("stray");
    let path = dir.join("fake.sock");
    let listener = sockpass::sys::unix_socket(libc::SOCK_SEQPACKET, false).unwrap();
    sockpass::sys::bind_unix(&listener, path_str(&path).as_bytes()).unwrap();
    // SAFETY: listen on our socket.
    assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 8) }, 0);
    // The stray fd is one end of a socket pair: once every copy is closed,
    // the other end sees end-of-stream.
    let (stray, peer) = sockpass::fdpass::socketpair(libc::SOCK_STREAM).unwrap();
    let reply = |ty: u8, payload: Vec<u8>, stray: usize| FakeReply {
        ty,
        payload,
        stray,
        wrong_id: false,
    };
    let hello_ok = || {
        let mut p = vec![proto::VERSION, 0, 0, 0];
        p.extend_from_slice(&(proto::MAX_MSG as u32).to_le_bytes());
        p.extend_from_slice(&1u32.to_le_bytes());
        p
    };
    let token = sockpass::Token::from_bytes([3; sockpass::Token::LEN]);
    let socket_reply = || {
        let mut p = Vec::new();
        proto::encode_socket_reply(&mut p, ty::SOCKET, 0, &token, 53, false);
        p.split_off(proto::HEADER_LEN)
    };
    let error_reply = || {
        let mut p = Vec::new();
        proto::encode_error(&mut p, 0, &sockpass::Error::bad_request("no"));
        p.split_off(proto::HEADER_LEN)
    };
    let spec: SocketSpec = "udp:127.0.0.1:0".parse().unwrap();
    type Call = Box<dyn Fn(&std::path::Path) -> sockpass::Result<()>>;
    let connect_then = |f: fn(&mut Client) -> sockpass::Result<()>| -> Call {
        Box::new(move |p: &std::path::Path| f(&mut connect_hello(p)?))
    };
    let cases: Vec<(&str, Vec<FakeReply>, Call)> = vec![
        (
            "HELLO_OK+2",
            vec![reply(ty::HELLO_OK, hello_ok(), 2)],
            Box::new(|p: &std::path::Path| connect_hello(p).map(drop)),
        ),
        (
            "SOCKET+3",
            vec![
                reply(ty::HELLO_OK, hello_ok(), 0),
                reply(ty::SOCKET, socket_reply(), 3),
            ],
            {
                let spec = spec.clone();
                Box::new(move |p: &std::path::Path| {
                    connect_hello(p)?
                        .request_socket(&spec, ShareMode::None, "x")
                        .map(drop)
                })
            },
        ),
        (
            "SOCKET+250",
            vec![
                reply(ty::HELLO_OK, hello_ok(), 0),
                reply(ty::SOCKET, socket_reply(), 250),
            ],
            {
                let spec = spec.clone();
                Box::new(move |p: &std::path::Path| {
                    connect_hello(p)?
                        .request_socket(&spec, ShareMode::None, "x")
                        .map(drop)
                })
            },
        ),
        (
            "SOCKET-wrong-id",
            vec![
                reply(ty::HELLO_OK, hello_ok(), 0),
                FakeReply {
                    ty: ty::SOCKET,
                    payload: socket_reply(),
                    stray: 1,
                    wrong_id: true,
                },
            ],
            {
                let spec = spec.clone();
                Box::new(move |p: &std::path::Path| {
                    connect_hello(p)?
                        .request_socket(&spec, ShareMode::None, "x")
                        .map(drop)
                })
            },
        ),
        (
            "RELEASED+1",
            vec![
                reply(ty::HELLO_OK, hello_ok(), 0),
                reply(ty::RELEASED, 0u32.to_le_bytes().to_vec(), 1),
            ],
            connect_then(|c| {
                c.release(&sockpass::Token::from_bytes([3; sockpass::Token::LEN]))
                    .map(drop)
            }),
        ),
        (
            "ERROR+1",
            vec![
                reply(ty::HELLO_OK, hello_ok(), 0),
                reply(ty::ERROR, error_reply(), 1),
            ],
            connect_then(|c| {
                c.release(&sockpass::Token::from_bytes([3; sockpass::Token::LEN]))
                    .map(drop)
            }),
        ),
        (
            "STATUS_OK+2",
            vec![
                reply(ty::HELLO_OK, hello_ok(), 0),
                reply(ty::STATUS_OK, vec![0; 20], 2),
            ],
            connect_then(|c| c.status().map(drop)),
        ),
    ];
    let before = sockpass::sys::count_open_fds();
    let mut results = Vec::new();
    for (name, script, call) in cases {
        let l = listener.try_clone().unwrap();
        let s = stray.try_clone().unwrap();
        let server = std::thread::spawn(move || fake_broker(&l, script, s));
        let got = call(&path);
        server.join().unwrap();
        let kind = match &got {
            Ok(()) => "ok".to_string(),
            Err(e) => {
                assert!(!e.message().is_empty());
                format!("{:?}", e.kind())
            }
        };
        let after = sockpass::sys::count_open_fds();
        results.push(format!("{name}={kind}/{}", after as i64 - before as i64));
    }
    // Every copy of the stray fd the client received is closed: dropping
    // ours leaves the peer at end-of-stream.
    drop(stray);
    let mut b = [0u8; 1];
    // SAFETY: read into a local buffer.
    let n = unsafe { libc::read(peer.as_raw_fd(), b.as_mut_ptr().cast(), 1) };
    let _ = std::fs::remove_dir_all(dir);
    println!("@@ {} eof={}", results.join(" "), n == 0);
}

#[test]
fn unexpected_fds_from_the_broker_are_closed_and_an_error() {
    let mut kid = spawn_self("child_stray_fds", &[]);
    let line = read_line(&mut kid);
    assert!(wait_child(&mut kid).success(), "{line}");
    eprintln!("stray fds: {line}");
    for case in [
        "HELLO_OK+2",
        "SOCKET+3",
        "SOCKET+250",
        "SOCKET-wrong-id",
        "RELEASED+1",
        "ERROR+1",
        "STATUS_OK+2",
    ] {
        // A protocol error, and the process holds exactly the fds it did before.
        assert!(
            line.split(' ').any(|f| f == format!("{case}=Protocol/0")),
            "{case}: {line}"
        );
    }
    assert!(line.ends_with("eof=true"), "a stray fd stayed open: {line}");
}

/// Child: lower RLIMIT_NOFILE so the broker's fd cannot be installed.
#[test]
#[ignore]
fn child_ctrunc() {
    if !is_child() {
        return;
    }
    let path = std::env::var("SOCKPASS_SOCKET").unwrap();
    let mut c = Client::connect(&path).unwrap();
    // The lowest free fd number is where the next fd would go; a limit equal
    // to it leaves no room.
    let probe = std::fs::File::open("/dev/null").unwrap();
    let next = probe.as_raw_fd() as u64;
    drop(probe);
    // SAFETY: plain getrlimit/setrlimit on local structs.
    let old = unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        let old = lim;
        lim.rlim_cur = next;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
        old
    };
    let e = c
        .request_socket(&"udp:127.0.0.1:0".parse().unwrap(), ShareMode::None, "a")
        .unwrap_err();
    // SAFETY: as above.
    unsafe { assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &old), 0) };
    let refs = c.status().unwrap().counters.references;
    println!(
        "@@ {:?} {} refs {refs} {}",
        e.kind(),
        e.errno(),
        e.message()
    );
}

#[test]
fn msg_ctrunc_is_a_clear_error() {
    let b = Broker::start("ctrunc");
    let mut kid = spawn_self("child_ctrunc", &[("SOCKPASS_SOCKET", path_str(&b.path))]);
    let line = read_line(&mut kid);
    wait_child(&mut kid);
    // EMFILE, and the reference was given back while the child was still
    // connected (it counted the broker's references before it exited).
    assert!(line.starts_with("Os 24 refs 0 "), "{line}");
    assert!(line.contains("RLIMIT_NOFILE"), "{line}");
    // The broker is unharmed and the child's references went with it.
    wait_for("child references dropped", || {
        (b.status().counters.references == 0).then_some(())
    });
}
