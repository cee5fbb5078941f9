//! Readiness with real children: systemd's own `systemd-notify --ready`
//! (which also sends `BARRIER=1` with an fd), a shell writing a newline to a
//! notification fd, pipe close, timeouts, children exiting first, bad notify
//! messages, and sockpassd readiness-notified and socket-activated.

mod common;

use common::*;
use sockpass::Kind;
use sockpass::{Method, Readiness};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A child killed and reaped on drop.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Give the child `fd` as fd number `n`.
fn with_fd(cmd: &mut Command, fd: OwnedFd, n: RawFd) -> &mut Command {
    // SAFETY: only dup2/fcntl (async-signal-safe) on an fd prepared before.
    unsafe {
        cmd.pre_exec(move || {
            let raw = fd.as_raw_fd();
            let r = if raw == n {
                libc::fcntl(n, libc::F_SETFD, 0)
            } else {
                libc::dup2(raw, n)
            };
            if r < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// Start `cmd` for `method`: the write end at fd `n` or NOTIFY_SOCKET.
fn start(method: Method, cmd: &mut Command) -> (Readiness, Reaped) {
    let (r, w) = Readiness::new(method).unwrap();
    if let Some(env) = r.notify_socket_env() {
        cmd.env("NOTIFY_SOCKET", env);
    } else {
        cmd.env_remove("NOTIFY_SOCKET");
    }
    if let (Some(w), Method::Fd(n)) = (w, method) {
        with_fd(cmd, w, n);
    }
    let c = Reaped(cmd.stdin(Stdio::null()).spawn().unwrap());
    // Our copy of the write end (moved into the closure) goes with `cmd`.
    (r, c)
}

fn sh(script: &str) -> Command {
    let mut c = Command::new("sh");
    c.args(["-c", script]);
    c
}

/// Keep taking in notify messages (so a BARRIER=1 fd is closed) until the
/// child exits; its exit status.
fn drain_until_exit(r: &mut Readiness, c: &mut Child) -> std::process::ExitStatus {
    let t0 = std::time::Instant::now();
    loop {
        let _ = r.check();
        if let Some(st) = c.try_wait().unwrap() {
            return st;
        }
        assert!(t0.elapsed() < WAIT, "child did not exit");
        let _ = sockpass::sys::poll_one(r.fd(), libc::POLLIN, 50);
    }
}

#[test]
fn systemd_notify_ready_with_its_barrier() {
    let mut cmd = Command::new("systemd-notify");
    cmd.arg("--ready");
    let (mut r, mut c) = start(Method::Notify, &mut cmd);
    r.wait_child(c.0.id() as i32, Some(WAIT)).unwrap();
    assert!(r.is_ready());
    // systemd-notify then waits on BARRIER=1: it only exits 0 if the fd it
    // sent was closed at once.
    let st = drain_until_exit(&mut r, &mut c.0);
    assert!(st.success(), "systemd-notify: {st}");
}

#[test]
fn systemd_notify_status_only_is_not_ready() {
    let mut cmd = Command::new("systemd-notify");
    cmd.arg("--status=starting");
    let (mut r, mut c) = start(Method::Notify, &mut cmd);
    let st = drain_until_exit(&mut r, &mut c.0);
    assert!(st.success(), "{st}");
    assert!(!r.is_ready());
    let e = r.wait(Some(Duration::from_millis(100))).unwrap_err();
    assert_eq!(e.kind(), Kind::Timeout);
}

#[test]
fn shell_writes_a_newline_to_the_notification_fd() {
    // Ready while the shell still runs: it then waits for stdin to close.
    let (mut r, c) = start(
        Method::Fd(5),
        &mut sh("printf 'starting'; echo >&5; exec sleep 600"),
    );
    r.wait_child(c.0.id() as i32, Some(WAIT)).unwrap();
    drop(c);
    // Text without a newline is not ready yet.
    let (mut r, c) = start(Method::Fd(7), &mut sh("printf x >&7; exec sleep 600"));
    let e = r
        .wait_child(c.0.id() as i32, Some(Duration::from_millis(200)))
        .unwrap_err();
    assert_eq!(e.kind(), Kind::Timeout, "{e}");
}

#[test]
fn pipe_close_is_ready() {
    let (mut r, c) = start(Method::Fd(4), &mut sh("exec 4>&-; exec sleep 600"));
    // Method::Fd wants a newline; a bare close is the pipe method's signal.
    let e = r.wait_child(c.0.id() as i32, Some(WAIT)).unwrap_err();
    assert_eq!(e.kind(), Kind::NotReady, "{e}");
    let (mut r, mut w) = Readiness::new(Method::Pipe).unwrap();
    let mut cmd = sh("exec 4>&-; exec sleep 600");
    with_fd(&mut cmd, w.take().unwrap(), 4);
    let c = Reaped(cmd.spawn().unwrap());
    drop(cmd);
    r.wait_child(c.0.id() as i32, Some(WAIT)).unwrap();
}

#[test]
fn timeouts() {
    for m in [Method::Notify, Method::Fd(5), Method::Pipe] {
        let mut cmd = sh("exec sleep 600");
        let (mut r, c) = match m {
            Method::Pipe => {
                let (r, w) = Readiness::new(m).unwrap();
                with_fd(&mut cmd, w.unwrap(), 5);
                let c = Reaped(cmd.spawn().unwrap());
                drop(cmd);
                (r, c)
            }
            _ => start(m, &mut cmd),
        };
        let e = r
            .wait_child(c.0.id() as i32, Some(Duration::from_millis(150)))
            .unwrap_err();
        assert_eq!(
            (e.kind(), e.errno()),
            (Kind::Timeout, libc::ETIMEDOUT),
            "{m:?}: {e}"
        );
    }
}

#[test]
fn child_exiting_first_is_an_error_with_its_status() {
    for (m, script, want) in [
        (Method::Notify, "exit 3", "exited with status 3"),
        (Method::Fd(5), "exit 7", "exited with status 7"),
        (Method::Notify, "kill -9 $$", "killed by signal 9"),
    ] {
        let (mut r, c) = start(m, &mut sh(script));
        let e = r.wait_child(c.0.id() as i32, Some(WAIT)).unwrap_err();
        assert_eq!(e.kind(), Kind::ChildFailed, "{script}: {e}");
        assert!(e.message().contains(want), "{script}: {e}");
    }
    // pipe: the exit closes the write end, and that hang-up is not
    // readiness, whether the child exits or is killed; bytes written
    // before exiting are.
    for (script, want) in [
        ("exit 3", Some("exited with status 3")),
        ("kill -9 $$", Some("killed by signal 9")),
        ("true", Some("exited with status 0")),
        ("echo >&4; exit 5", None),
    ] {
        for _ in 0..20 {
            let (mut r, w) = Readiness::new(Method::Pipe).unwrap();
            let mut cmd = sh(script);
            with_fd(&mut cmd, w.unwrap(), 4);
            let c = Reaped(cmd.stdin(Stdio::null()).spawn().unwrap());
            drop(cmd);
            let res = r.wait_child(c.0.id() as i32, Some(WAIT));
            match (want, res) {
                (None, Ok(())) => {}
                (Some(want), Err(e)) => {
                    assert_eq!(e.kind(), Kind::ChildFailed, "{script}: {e}");
                    assert!(e.message().contains(want), "{script}: {e}");
                }
                (_, res) => panic!("pipe, {script}: {res:?}"),
            }
        }
    }
    // READY=1 sent just before exiting still counts.
    let mut cmd = Command::new("systemd-notify");
    cmd.args(["--ready", "--no-block"]);
    let (mut r, c) = start(Method::Notify, &mut cmd);
    r.wait_child(c.0.id() as i32, Some(WAIT)).unwrap();
}

#[test]
fn bad_notify_messages_from_a_real_sender() {
    let py = "import socket,os,sys\n\
s=socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n\
s.sendto(sys.argv[1].encode()*int(sys.argv[2]), os.environ['NOTIFY_SOCKET'])\n";
    for (msg, n, kind) in [
        ("A", 5000, Kind::LimitReached),
        ("hello world", 1, Kind::Protocol),
    ] {
        let mut cmd = Command::new("python3");
        cmd.args(["-c", py, msg, &n.to_string()]);
        let (mut r, mut c) = start(Method::Notify, &mut cmd);
        assert!(wait_child(&mut c.0).success());
        let e = r.wait(Some(WAIT)).unwrap_err();
        assert_eq!(e.kind(), kind, "{e}");
        // The socket stays usable: a good message afterwards is ready.
        sockpass::send_notify(r.notify_socket_env().unwrap(), b"READY=1").unwrap();
        r.wait(Some(WAIT)).unwrap();
    }
}

fn sockpassd() -> Command {
    let mut c = Command::new(sockpassd_bin());
    c.stdin(Stdio::null()).stdout(Stdio::null());
    c
}

#[test]
fn sockpassd_ready_fd_and_notify_socket() {
    // $NOTIFY_SOCKET alone, and with --notify (which insists on it).
    for (m, notify_flag) in [
        (Method::Fd(5), false),
        (Method::Notify, false),
        (Method::Notify, true),
    ] {
        let dir = temp_dir("sockpassd-ready");
        let path = dir.join("s.sock");
        let mut cmd = sockpassd();
        cmd.arg("--socket").arg(&path).arg("-q");
        if let Method::Fd(n) = m {
            cmd.args(["--ready-fd", &n.to_string()]);
        }
        if notify_flag {
            cmd.arg("--notify");
        }
        let (mut r, c) = start(m, &mut cmd);
        r.wait_child(c.0.id() as i32, Some(WAIT)).unwrap();
        // Ready means the listener is up: no retry needed.
        sockpass::Client::connect(&path).unwrap().status().unwrap();
        drop(c);
        let _ = std::fs::remove_dir_all(&dir);
    }
    // --notify without NOTIFY_SOCKET is a usage error; so is a closed fd.
    let st = sockpassd()
        .args(["--notify", "--socket", "/nonexistent/s"])
        .env_remove("NOTIFY_SOCKET")
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(st.code(), Some(2));
    let st = sockpassd()
        .args(["--ready-fd", "99", "--socket", "/nonexistent/s"])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(st.code(), Some(2));
}

#[test]
fn sockpassd_failing_to_start_is_not_ready() {
    let (mut r, c) = start(
        Method::Fd(5),
        sockpassd()
            .args(["--ready-fd", "5", "--policy", "/nonexistent/policy"])
            .stderr(Stdio::null()),
    );
    let e = r.wait_child(c.0.id() as i32, Some(WAIT)).unwrap_err();
    assert_eq!(e.kind(), Kind::ChildFailed, "{e}");
    assert!(e.message().contains("status 2"), "{e}");
}

#[test]
fn sockpassd_under_systemd_socket_activate() {
    let dir = temp_dir("activate");
    let path = dir.join("act.sock");
    let (mut r, _) = Readiness::new(Method::Notify).unwrap();
    let env = r
        .notify_socket_env()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let mut c = Reaped(
        Command::new("systemd-socket-activate")
            .args(["--seqpacket", "-l"])
            .arg(&path)
            .arg(format!("--setenv=NOTIFY_SOCKET={env}"))
            .arg(sockpassd_bin())
            .arg("-q")
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // The activator listens first; the first connection starts sockpassd,
    // which answers on the inherited socket.
    let cl = wait_for("the activator's socket", || {
        sockpass::Client::connect(&path).ok()
    });
    let mut cl = cl;
    cl.status().unwrap();
    // It execs sockpassd in place: the same pid reports READY=1.
    r.wait_child(c.0.id() as i32, Some(WAIT)).unwrap();
    drop(cl);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(c.0.id() as i32, libc::SIGTERM) };
    assert!(wait_child(&mut c.0).success());
    // The socket file is the activator's: sockpassd left it alone.
    assert!(path.exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// LISTEN_FDS by hand: `sh` sets LISTEN_PID=$$ and execs sockpassd (same
/// pid) with a listener on fd 3.
fn activated(listener: OwnedFd, extra: &str) -> Command {
    let mut cmd = sh(&format!(
        "LISTEN_PID=$$ LISTEN_FDS=1 exec '{}' -q {extra}",
        path_str(&sockpassd_bin())
    ));
    with_fd(&mut cmd, listener, 3);
    cmd.stdin(Stdio::null());
    cmd
}

/// A `SOCK_SEQPACKET` listener bound at `path`, as an activator makes one.
fn listening(path: &std::path::Path) -> OwnedFd {
    let l = sockpass::sys::unix_socket(libc::SOCK_SEQPACKET, false).unwrap();
    sockpass::sys::bind_unix(&l, path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: listen on our socket.
    assert_eq!(unsafe { libc::listen(l.as_raw_fd(), 16) }, 0);
    l
}

#[test]
fn sockpassd_with_listen_fds_by_hand() {
    let dir = temp_dir("listenfds");
    let path = dir.join("s");
    let l = listening(&path);
    let ino = inode(&l);
    let (mut r, c) = start(Method::Fd(5), &mut activated(l, "--ready-fd 5"));
    r.wait_child(c.0.id() as i32, Some(WAIT)).unwrap();
    sockpass::Client::connect(&path).unwrap().status().unwrap();
    // The adopted listener refuses fds too (SO_PASSRIGHTS=0 on it, inherited
    // by accepted sockets; kernels that have the option: Linux 6.16+).
    let probe = sockpass::sys::unix_socket(libc::SOCK_SEQPACKET, false).unwrap();
    let off: libc::c_int = 0;
    // SAFETY: setsockopt with an int on our socket (83: SO_PASSRIGHTS).
    let has_passrights = unsafe {
        libc::setsockopt(
            probe.as_raw_fd(),
            libc::SOL_SOCKET,
            83,
            (&off as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    } == 0;
    if has_passrights {
        let conn = sockpass::sys::unix_socket(libc::SOCK_SEQPACKET, false).unwrap();
        sockpass::sys::connect_unix(&conn, path.as_os_str().as_encoded_bytes()).unwrap();
        let r = sockpass::fdpass::send_fds(conn.as_fd(), b"12345678", &[probe.as_fd()], 0);
        assert_eq!(r.err(), Some(libc::EPERM), "fds refused at the kernel");
    }
    // It serves the very socket we bound (fd 3), no other.
    let fd3 = std::fs::read_link(format!("/proc/{}/fd/3", c.0.id())).unwrap();
    assert_eq!(fd3.to_string_lossy(), format!("socket:[{ino}]"));
    drop(c);
    // A stream socket is refused, clearly.
    let s = sockpass::sys::unix_socket(libc::SOCK_STREAM, false).unwrap();
    let out = activated(s, "").stderr(Stdio::piped()).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("socket activation") && err.contains("SOCK_STREAM"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A connection takes `SO_PASSRIGHTS` from its listener when the client
/// connects, not when it is accepted: a client that connected to an
/// activated listener before sockpassd made it refuse fds could send fds,
/// and the broker, which reads every connection that refuses fds with a
/// plain `recv`, must see those and refuse them itself: the request is
/// answered with a clear error, the fd is closed (its peer sees EOF once
/// ours goes too), and the connection serves on.
#[test]
fn fds_sent_before_the_broker_took_the_listener_are_refused_and_closed() {
    let dir = temp_dir("queuedfds");
    let path = dir.join("s");
    let l = listening(&path);
    // Connected and sent while nobody serves: the request and its fd wait
    // in the connection's queue.
    let early = sockpass::sys::unix_socket(libc::SOCK_SEQPACKET, false).unwrap();
    sockpass::sys::connect_unix(&early, path.as_os_str().as_encoded_bytes()).unwrap();
    let (x, peer) = sockpass::fdpass::socketpair(libc::SOCK_STREAM).unwrap();
    let mut hello = Vec::new();
    sockpass::proto::encode_hello(&mut hello, 7);
    sockpass::fdpass::send_fds(early.as_fd(), &hello, &[x.as_fd()], 0)
        .expect("fds are allowed before the broker runs");
    let (mut r, c) = start(Method::Fd(5), &mut activated(l, "--ready-fd 5"));
    r.wait_child(c.0.id() as i32, Some(WAIT)).unwrap();
    let answer = |fd: &OwnedFd| {
        let mut buf = [0u8; sockpass::proto::MAX_MSG];
        let got = sockpass::fdpass::recv_fds(fd.as_fd(), &mut buf, 1, 0).expect("a reply");
        assert!(got.fds.is_empty());
        let h = sockpass::proto::Header::parse(&buf[..got.len]).unwrap();
        (h, buf[sockpass::proto::HEADER_LEN..got.len].to_vec())
    };
    let (h, body) = answer(&early);
    assert_eq!((h.ty, h.id), (sockpass::proto::ty::ERROR, 7));
    let e = sockpass::proto::decode_error(&body).unwrap();
    assert_eq!(e.kind(), Kind::BadRequest, "{e}");
    assert!(e.message().contains("not accepted"), "{e}");
    // The broker holds no copy: with ours gone, the peer sees EOF.
    drop(x);
    let ready = sockpass::sys::poll_one(peer.as_fd(), libc::POLLIN, WAIT.as_millis() as i32);
    assert!(
        matches!(ready, Ok(ev) if ev & libc::POLLIN != 0),
        "the broker kept the fd it refused ({ready:?})"
    );
    // SAFETY: a read into a live 1-byte buffer.
    let n = unsafe { libc::read(peer.as_raw_fd(), [0u8; 1].as_mut_ptr().cast(), 1) };
    assert_eq!(n, 0, "EOF");
    // The connection serves on.
    let mut again = Vec::new();
    sockpass::proto::encode_hello(&mut again, 8);
    sockpass::fdpass::send_fds(early.as_fd(), &again, &[], 0).unwrap();
    let (h, _) = answer(&early);
    assert_eq!((h.ty, h.id), (sockpass::proto::ty::HELLO_OK, 8));
    drop(c);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn readiness_fd_is_pollable() {
    let (r, _w) = Readiness::new(Method::Notify).unwrap();
    assert_eq!(
        sockpass::sys::poll_one(r.fd().as_fd(), libc::POLLIN, 0).unwrap(),
        0
    );
}
