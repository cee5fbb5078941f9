//! The Rust client across fork(), after a broker restart, with timeouts,
//! and finding the system broker, against real brokers. The bodies that use
//! the process-wide default client, or fork, run in a child of this test
//! binary of their own (`spawn_self`), so tests running side by side never
//! share a default client.

mod common;

use common::*;
use sockpass::{default_socket_paths, with_default, SYSTEM_SOCKET};
use sockpass::{Client, Kind, ShareMode, SocketSpec};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

const WORKERS: usize = 4;
const ROUNDS: usize = 100;

fn spec(port: u16) -> SocketSpec {
    format!("udp:127.0.0.1:{port}").parse().unwrap()
}

/// Run the ignored test `name` as a child against `b`; it prints "@@ ok".
fn run_child(name: &str, b: &Broker, port: u16) {
    let mut c = spawn_self(
        name,
        &[
            ("SOCKPASS_SOCKET", path_str(&b.path)),
            ("TEST_PORT", port.to_string()),
        ],
    );
    assert_eq!(read_line(&mut c), "ok");
    assert!(wait_child(&mut c).success());
}

fn test_port() -> u16 {
    std::env::var("TEST_PORT").unwrap().parse().unwrap()
}

/// The port a socket is bound to, if it is a UDP socket.
fn udp_port(fd: &OwnedFd) -> Option<u16> {
    let ty = sockpass::sys::getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_TYPE).ok()?;
    if ty != libc::SOCK_DGRAM {
        return None;
    }
    // SAFETY: a zeroed sockaddr_in for getsockname to fill.
    let mut sin: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: sin has room for len bytes.
    let r = unsafe {
        libc::getsockname(
            fd.as_raw_fd(),
            (&mut sin as *mut libc::sockaddr_in).cast(),
            &mut len,
        )
    };
    (r == 0 && i32::from(sin.sin_family) == libc::AF_INET).then(|| u16::from_be(sin.sin_port))
}

/// The references on `port` and the pids holding them, once the broker's
/// count is `want` (a dead worker's connection is noticed a moment later).
fn settled_refs(port: u16, want: u32) -> Vec<i32> {
    let p = default_socket_paths().remove(0);
    wait_for("the broker's reference count to settle", || {
        let st = Client::connect(&p).unwrap().status().unwrap();
        match st.sockets.iter().find(|s| s.port == port) {
            // With no reference left the broker closes the socket.
            None => (want == 0).then(Vec::new),
            Some(s) => (s.refs == want).then(|| s.holders.iter().map(|h| h.pid).collect()),
        }
    })
}

/// A worker: default-client rounds, every fd the right socket; the
/// inherited explicit client refuses (ECHILD) and cannot release its
/// parent's reference, then is reconnected. Keeps two references of its
/// own, which end with it.
fn worker(explicit: &mut Client, parent_token: &sockpass::Token, port: u16) -> bool {
    for _ in 0..ROUNDS {
        let g = match with_default(|c| c.request_socket(&spec(port), ShareMode::Any, "w")) {
            Ok(g) => g,
            Err(e) => {
                eprintln!("worker request: {e}");
                return false;
            }
        };
        if udp_port(&g.fd) != Some(port) {
            eprintln!("worker got a wrong socket");
            return false;
        }
        if with_default(|c| c.release(&g.token)).is_err() {
            return false;
        }
    }
    let e = explicit
        .request_socket(&spec(port), ShareMode::Any, "w")
        .unwrap_err();
    let e2 = explicit.release(parent_token).unwrap_err();
    let e3 = explicit.release_all().unwrap_err();
    let refused = [e, e2, e3]
        .iter()
        .all(|e| e.kind() == Kind::BrokerUnavailable && e.errno() == libc::ECHILD);
    if !refused {
        eprintln!("inherited client not refused with ECHILD");
        return false;
    }
    if explicit.reconnect().is_err() {
        return false;
    }
    let mine = explicit.request_socket(&spec(port), ShareMode::Any, "w");
    let kept = with_default(|c| c.request_socket(&spec(port), ShareMode::Any, "w"));
    // Another process's token is not ours on the new lease either.
    let not_ours = explicit.release(parent_token).map_err(|e| e.kind());
    std::mem::forget(mine);
    std::mem::forget(kept);
    not_ours == Err(Kind::UnknownToken)
}

#[test]
fn preforked_workers_share_nothing_with_their_parent() {
    let b = Broker::start("fork-workers");
    let port = free_port(true);
    run_child("child_preforked_workers", &b, port);
    // The child and its workers are gone: so is every reference.
    wait_for("every lease to end", || {
        (b.status().counters.references == 0).then_some(())
    });
}

#[test]
#[ignore]
fn child_preforked_workers() {
    if !is_child() {
        return;
    }
    let port = test_port();
    let parent_default =
        with_default(|c| c.request_socket(&spec(port), ShareMode::Any, "p")).unwrap();
    let mut explicit = Client::connect_default().unwrap();
    let parent_explicit = explicit
        .request_socket(&spec(port), ShareMode::Any, "p")
        .unwrap();
    let me = std::process::id() as i32;
    let mut pids = Vec::new();
    for _ in 0..WORKERS {
        // SAFETY: the child runs the library (which is what is tested) and
        // leaves with _exit.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // A panic must end this process, not unwind into the harness.
            let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                worker(&mut explicit, &parent_explicit.token, port)
            }))
            .unwrap_or(false);
            // SAFETY: leave without running the parent's destructors.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        pids.push(pid);
    }
    for pid in pids {
        let mut st = 0;
        // SAFETY: reaping our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut st, 0) }, pid);
        assert!(
            libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0,
            "worker {pid}: {st:#x}"
        );
    }
    // Exactly the parent's two references are left, both held by this
    // process: nothing a worker did released or added to them.
    assert_eq!(settled_refs(port, 2), vec![me, me]);
    assert_eq!(
        with_default(|c| c.release(&parent_default.token)).unwrap(),
        1
    );
    assert_eq!(explicit.release(&parent_explicit.token).unwrap(), 0);
    println!("@@ ok");
}

#[test]
fn fork_while_another_thread_is_in_a_call() {
    let b = Broker::start("fork-busy");
    let port = free_port(true);
    run_child("child_fork_while_busy", &b, port);
}

#[test]
#[ignore]
fn child_fork_while_busy() {
    if !is_child() {
        return;
    }
    let port = test_port();
    // Held throughout: the socket never closes while threads race for it
    // (a thread releases before it closes its fd, so a socket made anew
    // meanwhile would find the port still bound).
    let mut anchor = Client::connect_default().unwrap();
    let _held = anchor
        .request_socket(&spec(port), ShareMode::Any, "a")
        .unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let shared = std::sync::Arc::new(sockpass::SharedClient::connect(None, None, false).unwrap());
    let threads: Vec<_> = (0..2)
        .map(|i| {
            let (stop, shared) = (stop.clone(), shared.clone());
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let f = |c: &mut Client| {
                        let g = c.request_socket(&spec(port), ShareMode::Any, "b")?;
                        c.release(&g.token)
                    };
                    let _ = if i == 0 {
                        with_default(f)
                    } else {
                        shared.with(f)
                    };
                }
            })
        })
        .collect();
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(3));
        // SAFETY: the child calls the library at once and leaves with _exit.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: a hang is killed here instead of waited for.
            unsafe { libc::alarm(30) };
            let a = with_default(|c| c.request_socket(&spec(port), ShareMode::Any, "c"));
            let ok_a = a.as_ref().is_ok_and(|g| udp_port(&g.fd) == Some(port));
            let refused = shared
                .with(|c| c.hello())
                .is_err_and(|e| e.errno() == libc::ECHILD);
            let ok_b = shared.reconnect().is_ok()
                && shared
                    .with(|c| c.request_socket(&spec(port), ShareMode::Any, "c"))
                    .is_ok_and(|g| udp_port(&g.fd) == Some(port));
            // SAFETY: leave without the parent's destructors.
            unsafe { libc::_exit(if ok_a && refused && ok_b { 0 } else { 1 }) };
        }
        let mut st = 0;
        // SAFETY: reaping our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut st, 0) }, pid);
        assert!(
            libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0,
            "child: {st:#x}"
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    // The parent's clients still work, and hold nothing: the anchor's is
    // the one reference left.
    assert_eq!(settled_refs(port, 1).len(), 1);
    println!("@@ ok");
}

#[test]
fn default_client_first_call_after_a_broker_restart_succeeds() {
    // The child starts and restarts its broker at this path.
    let dir = temp_dir("fork-restart");
    let port = free_port(true);
    let mut c = spawn_self(
        "child_broker_restart",
        &[
            ("SOCKPASS_SOCKET", path_str(&dir.join("sockpassd.sock"))),
            ("TEST_PORT", port.to_string()),
        ],
    );
    assert_eq!(read_line(&mut c), "ok");
    assert!(wait_child(&mut c).success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
#[ignore]
fn child_broker_restart() {
    if !is_child() {
        return;
    }
    let port = test_port();
    let p = default_socket_paths().remove(0);
    let dir = temp_dir("fork-restart-child");
    let mut b = Broker::start_at(dir.clone(), p.clone(), &[]);
    let old = with_default(|c| c.request_socket(&spec(port), ShareMode::Any, "r")).unwrap();
    b.stop();
    drop(b);
    // Our copy of the old socket would keep the port from the new broker.
    let old_token = old.token;
    drop(old);
    let _b2 = Broker::start_at(temp_dir("fork-restart-child2"), p.clone(), &[]);
    // The send failed on the old connection before any broker got it: it
    // is retried once on a new one, and this first call succeeds.
    let g = with_default(|c| c.request_socket(&spec(port), ShareMode::Any, "r")).unwrap();
    assert_eq!(udp_port(&g.fd), Some(port));
    // The old reference went with the old broker.
    let e = with_default(|c| c.release(&old_token)).unwrap_err();
    assert_eq!(e.kind(), Kind::UnknownToken);
    assert_eq!(with_default(|c| c.release(&g.token)).unwrap(), 0);
    let _ = std::fs::remove_dir_all(&dir);
    println!("@@ ok");
}

/// A unix seqpacket socket that accepts (into its backlog) and never answers.
fn mute_listener(dir: &std::path::Path) -> (OwnedFd, std::path::PathBuf) {
    use std::os::unix::ffi::OsStrExt;
    let p = dir.join("mute.sock");
    let fd = sockpass::sys::unix_socket(libc::SOCK_SEQPACKET, false).unwrap();
    sockpass::sys::bind_unix(&fd, p.as_os_str().as_bytes()).unwrap();
    // SAFETY: listening on our own socket.
    assert_eq!(unsafe { libc::listen(fd.as_raw_fd(), 16) }, 0);
    (fd, p)
}

#[test]
fn a_timeout_closes_the_connection_and_reconnect_recovers() {
    let dir = temp_dir("fork-timeout");
    let (_l, p) = mute_listener(&dir);
    let mut c = Client::connect_timeout(&p, Some(Duration::from_millis(200))).unwrap();
    let e = c
        .request_socket(&spec(free_port(true)), ShareMode::Any, "t")
        .unwrap_err();
    assert_eq!(e.kind(), Kind::Timeout, "{e}");
    assert!(!c.is_usable());
    assert_eq!(c.as_raw_fd(), -1, "the connection was closed");
    let e = c.hello().unwrap_err();
    assert_eq!(
        (e.kind(), e.errno()),
        (Kind::BrokerUnavailable, libc::ENOTCONN)
    );
    c.reconnect().unwrap();
    assert_eq!(c.hello().unwrap_err().kind(), Kind::Timeout);
    let _ = std::fs::remove_dir_all(&dir);
}

/// This thread's CPU time (user and system).
fn thread_cpu() -> Duration {
    // SAFETY: rusage is plain integers, all-zero valid.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct it is given.
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) }, 0);
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    Duration::from_micros(us(ru.ru_utime) + us(ru.ru_stime))
}

/// Issue 25 item 4: a client that polls for its reply before blocking gets
/// every kind of reply as a blocking one does (fds, errors, a batch), and
/// its wait is bounded: against a broker that never answers it times out,
/// having spent little CPU. (The spin's own bound and when it spins:
/// `client::spin`'s unit tests.)
#[test]
fn a_reply_spin_receives_as_blocking_and_is_bounded() {
    let b = Broker::start("reply-spin");
    let mut c = b.client();
    if std::env::var_os("SOCKPASS_SPIN_US").is_none() {
        assert_eq!(c.reply_spin(), None, "off by default");
    }
    c.set_reply_spin(Some(Duration::from_secs(5)));
    assert_eq!(c.reply_spin(), Some(Duration::from_micros(1000)), "capped");
    c.set_reply_spin(Some(Duration::from_micros(50)));
    // A new client blocks on its first reply and spins once round trips
    // prove quick: a few hellos first, so the replies below are polled for
    // (unless the pacing backs off: a broker on this CPU, a slow machine).
    for _ in 0..3 {
        c.hello().unwrap();
    }
    let s = spec(free_port(true));
    let g = c.request_socket(&s, ShareMode::None, "spin").unwrap();
    assert!(sockpass::sys::is_cloexec(g.fd.as_raw_fd()));
    let mut other = b.client();
    other.set_reply_spin(Some(Duration::from_micros(50)));
    for _ in 0..3 {
        other.hello().unwrap();
    }
    let e = other.request_socket(&s, ShareMode::Any, "x").unwrap_err();
    assert_eq!(e.kind(), Kind::ShareConflict, "{e}");
    let many: Vec<_> = (0..40)
        .map(|_| (spec(0), ShareMode::None, "spin"))
        .collect();
    assert_eq!(other.request_many(&many).unwrap().len(), 40);
    assert_eq!(other.release_all().unwrap(), 40);
    assert_eq!(c.release(&g.token).unwrap(), 0);

    let dir = temp_dir("spin-mute");
    let (_l, p) = mute_listener(&dir);
    let mut m = Client::connect_timeout(&p, Some(Duration::from_millis(300))).unwrap();
    m.set_reply_spin(Some(Duration::from_micros(1000)));
    let before = thread_cpu();
    assert_eq!(m.hello().unwrap_err().kind(), Kind::Timeout);
    let spent = thread_cpu() - before;
    assert!(
        spent < Duration::from_millis(150),
        "a 1 ms spin then blocking spent {spent:?} of CPU in a 300 ms wait"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_too_long_path_is_enametoolong_at_connect() {
    let long = format!("/tmp/{}", "a".repeat(200));
    let e = Client::connect(&long).unwrap_err();
    assert_eq!((e.kind(), e.errno()), (Kind::Os, libc::ENAMETOOLONG));
    assert_eq!(e.code(), libc::ENAMETOOLONG);
}

/// Issue 23 item 6: a non-root client with no SOCKPASS_SOCKET and nothing
/// at its per-user path finds the system broker. In a mount namespace of
/// its own (`unshare --mount`, root only) with a tmpfs on /run, a broker
/// serves /run/sockpass/sockpassd.sock, and a child running as `nobody`
/// connects by default.
#[test]
fn a_non_root_client_finds_the_system_broker() {
    if !is_root() {
        eprintln!("skipping: needs root (a mount namespace and setuid)");
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private"])
        .arg(exe)
        .args([
            "child_system_broker",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("SOCKPASS_CHILD", "1")
        .env_remove("SOCKPASS_SOCKET")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains("@@ skip") {
        eprintln!("skipping: {text}");
        return;
    }
    assert!(
        text.contains("@@ ok"),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
#[ignore]
fn child_system_broker() {
    if !is_child() {
        return;
    }
    // SAFETY: mounting in this process's own mount namespace.
    let r = unsafe {
        libc::mount(
            c"tmpfs".as_ptr(),
            c"/run".as_ptr(),
            c"tmpfs".as_ptr(),
            0,
            c"mode=0755".as_ptr().cast(),
        )
    };
    if r != 0 {
        println!("@@ skip: cannot mount a tmpfs on /run here");
        return;
    }
    let _b = Broker::start_at(temp_dir("fork-system"), SYSTEM_SOCKET.into(), &[]);
    // Nothing listens at the per-user path.
    let nowhere = temp_dir("fork-system-user");
    std::env::set_var("XDG_RUNTIME_DIR", &nowhere);
    // SAFETY: the child drops to nobody and leaves with _exit.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: plain syscalls in the child.
        let ok = unsafe { libc::setgid(65534) == 0 && libc::setuid(65534) == 0 };
        let cands = default_socket_paths();
        let found = Client::connect_default().and_then(|mut c| {
            c.hello()?;
            Ok(c.path().to_path_buf())
        });
        let good = ok
            && cands.len() == 2
            && cands[0] == nowhere.join("sockpass/sockpassd.sock")
            && found.as_deref().ok() == Some(std::path::Path::new(SYSTEM_SOCKET));
        if !good {
            eprintln!("candidates {cands:?}, found {found:?}");
        }
        // SAFETY: leave without the parent's destructors.
        unsafe { libc::_exit(if good { 0 } else { 1 }) };
    }
    let mut st = 0;
    // SAFETY: reaping our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut st, 0) }, pid);
    assert!(libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0, "{st:#x}");
    // The CLI looks in the same places: `sockpass status` as nobody, with no
    // --socket and no SOCKPASS_SOCKET, reaches the system broker.
    let out = std::process::Command::new("runuser")
        .args(["-u", "nobody", "--"])
        .arg(sockpass_bin())
        .args(["status", "--json"])
        .env("XDG_RUNTIME_DIR", &nowhere)
        .env_remove("SOCKPASS_SOCKET")
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("\"format\""),
        "sockpass status as nobody: {:?}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&nowhere);
    println!("@@ ok");
}
