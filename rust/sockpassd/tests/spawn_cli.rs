//! `sockpass run`: real child processes, a real broker for --request, exit
//! status propagation and signal forwarding.

mod common;

use common::*;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

fn run(args: &[&str]) -> Child {
    let mut cmd = Command::new(sockpass_bin());
    cmd.arg("run")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Ignored signals survive exec, and `sockpass run` keeps them ignored in
    // its child (as posix_spawn does). A test runner started as a background
    // job of a non-interactive shell has SIGINT ignored, and then the child
    // would ignore the SIGINT forwarded to it: start from the defaults.
    // SAFETY: signal() is async-signal-safe; nothing else runs here.
    unsafe {
        cmd.pre_exec(|| {
            for sig in [libc::SIGINT, libc::SIGTERM] {
                libc::signal(sig, libc::SIG_DFL);
            }
            Ok(())
        });
    }
    cmd.spawn().expect("start sockpass run")
}

fn finish(mut c: Child) -> (i32, String) {
    let st = wait_child(&mut c);
    let mut err = String::new();
    c.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    (st.code().unwrap_or(-1), err)
}

#[test]
fn exit_status_is_propagated() {
    let (code, _) = finish(run(&["--", "sh", "-c", "exit 7"]));
    assert_eq!(code, 7);
    let (code, _) = finish(run(&["--", "sh", "-c", "kill -KILL $$"]));
    assert_eq!(code, 128 + 9);
}

#[test]
fn listen_serves_a_tcp_connection() {
    let mut c = run(&[
        "-l",
        "tcp:127.0.0.1:0",
        "--fdname",
        "web",
        "--",
        "python3",
        "-S",
        "-c",
        "import socket,os\n\
         l = socket.socket(fileno=3)\n\
         print('@@ %d %s %s' % (l.getsockname()[1], os.environ['LISTEN_FDNAMES'], os.environ['LISTEN_PID'] == str(os.getpid())), flush=True)\n\
         c, _ = l.accept()\n\
         c.sendall(b'hello')\n\
         c.close()",
    ]);
    let line = read_line(&mut c);
    let w: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(&w[1..], ["web", "True"], "{line}");
    let port: u16 = w[0].parse().unwrap();
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    conn.set_read_timeout(Some(WAIT)).unwrap();
    let mut got = String::new();
    conn.read_to_string(&mut got).unwrap();
    assert_eq!(got, "hello");
    let (code, err) = finish(c);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn request_through_the_broker_is_held_while_the_child_runs() {
    let b = Broker::start("run-request");
    let mut c = run(&[
        "--socket",
        &path_str(&b.path),
        "--request",
        "udp:127.0.0.1:0",
        "--app",
        "runtest",
        "--",
        "python3",
        "-S",
        "-c",
        "import socket,os,sys\n\
         s = socket.socket(fileno=3)\n\
         print('@@ %d %s' % (s.getsockname()[1], os.environ['LISTEN_FDS']), flush=True)\n\
         sys.stdin.read()",
    ]);
    let line = read_line(&mut c);
    let (port, n) = line.split_once(' ').unwrap();
    assert_eq!(n, "1");
    let port: u16 = port.parse().unwrap();
    let st = b.status();
    assert!(
        st.sockets.iter().any(|s| s.port == port && s.refs >= 1),
        "the broker holds the socket while the child runs: {st:?}"
    );
    drop(c.stdin.take());
    let (code, err) = finish(c);
    assert_eq!(code, 0, "{err}");
    wait_for("the reference to be released", || {
        let st = b.status();
        (!st.sockets.iter().any(|s| s.port == port && s.refs > 0)).then_some(())
    });
}

#[test]
fn sigterm_and_sigint_are_forwarded() {
    // Before readiness too: a child that never reports ready (no
    // --ready-timeout) must still be stoppable through `sockpass run`.
    // The child sleeps far longer than `finish` waits, so only a forwarded
    // signal ends it in time.
    for sig in [libc::SIGTERM, libc::SIGINT] {
        for wait_ready in [
            &[][..],
            &["--wait-ready", "fd:5"][..],
            &["--wait-ready", "pipe"],
        ] {
            let mut args = wait_ready.to_vec();
            args.extend(["--", "sh", "-c", "echo '@@ up'; exec sleep 600"]);
            let mut c = run(&args);
            assert_eq!(read_line(&mut c), "up");
            // SAFETY: signalling our own child.
            assert_eq!(unsafe { libc::kill(c.id() as i32, sig) }, 0);
            let (code, err) = finish(c);
            assert_eq!(
                code,
                128 + sig,
                "{wait_ready:?}: the child died of the forwarded signal {sig}: {err}"
            );
        }
    }
}

#[test]
fn inherited_fd_start_and_setenv() {
    let dir = temp_dir("run-fd");
    let f = dir.join("data");
    std::fs::write(&f, "payload").unwrap();
    let script = format!(
        "exec 5<{} && exec {} run --fd 5:data --start 10 -E GREETING=hi -- \
         bash -c 'cat <&10; echo \" $LISTEN_FDS_FIRST_FD $LISTEN_FDNAMES $GREETING\"; \
         ls /proc/self/fd | sort -n | tr \"\\n\" \" \"'",
        f.display(),
        sockpass_bin().display()
    );
    let out = Command::new("bash").args(["-c", &script]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("payload 10 data hi"));
    // 0-2, the fd at 10, and the one ls opens to list the directory.
    let fds: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(fds.len(), 5, "{fds:?}");
    assert!(fds.contains(&"10") && !fds.contains(&"5"), "{fds:?}");
}

#[test]
fn bad_input_is_refused() {
    let (code, err) = finish(run(&["--fd", "987", "--", "true"]));
    assert_eq!(code, 1);
    assert!(err.contains("987"), "{err}");
    let (code, err) = finish(run(&[
        "-l",
        "tcp:127.0.0.1:0",
        "--fdname",
        "bad name\u{7f}",
        "--",
        "true",
    ]));
    assert_eq!(code, 1);
    assert!(err.contains("fd name"), "{err}");
    let (code, err) = finish(run(&["--join", "2147483000", "--", "true"]));
    assert_eq!(code, 1);
    assert!(err.contains("does not exist"), "{err}");
    // Not found: 127, as shells; found but not executable: 126.
    let (code, err) = finish(run(&["--", "/nonexistent/prog"]));
    assert_eq!(code, 127);
    assert!(
        err.contains("exec") && err.contains("No such file"),
        "{err}"
    );
    let (code, err) = finish(run(&["--", "/dev/null"]));
    assert_eq!(code, 126, "{err}");
    assert!(err.contains("Permission denied"), "{err}");
    let (code, err) = finish(run(&["--", "/"]));
    assert_eq!(code, 126, "{err}");
    let (code, _) = finish(run(&["--bogus", "--", "true"]));
    assert_eq!(code, 2);
    let mut c = run(&["--", "true"]);
    let _ = c.stdin.take().unwrap().write_all(b"");
    assert_eq!(finish(c).0, 0);
}

/// Every stdout line of a finished `sockpass run`.
fn finish_out(mut c: Child) -> (i32, Vec<String>, String) {
    let mut out = String::new();
    c.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    let (code, err) = finish(c);
    (code, out.lines().map(str::to_string).collect(), err)
}

#[test]
fn wait_ready_notify_prints_the_pid() {
    let c = run(&[
        "--wait-ready",
        "notify",
        "--",
        "python3",
        "-S",
        "-c",
        "import socket,os\n\
         print('@@ %d' % os.getpid(), flush=True)\n\
         s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n\
         s.sendto(b'READY=1', os.environ['NOTIFY_SOCKET'])",
    ]);
    let (code, lines, err) = finish_out(c);
    assert_eq!(code, 0, "{err}");
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(
        lines[0],
        format!("@@ {}", lines[1]),
        "the pid printed once ready"
    );
}

#[test]
fn wait_ready_fd_n_and_pipe() {
    // s6 style: a newline on fd 7, which is outside LISTEN_FDS.
    let c = run(&[
        "-l",
        "tcp:127.0.0.1:0",
        "--wait-ready",
        "fd:7",
        "--",
        "bash",
        "-c",
        "echo \"@@ $$ $LISTEN_FDS\"; echo >&7",
    ]);
    let (code, lines, err) = finish_out(c);
    assert_eq!(code, 0, "{err}");
    assert_eq!(lines, [format!("@@ {} 1", lines[1]), lines[1].clone()]);
    // pipe: the write end is the last slot, named "ready"; closing it is
    // ready (while the child lives on: it then waits for stdin to close).
    let c = run(&[
        "--wait-ready",
        "pipe",
        "--",
        "bash",
        "-c",
        "echo \"@@ $$ $LISTEN_FDNAMES\"; exec 3>&-; read x || :",
    ]);
    let mut lines = stdout_lines(c);
    let first = lines.next_line();
    let pid = lines.next_line();
    assert_eq!(first, format!("@@ {pid} ready"));
    let (code, rest, err) = lines.finish();
    assert_eq!((code, rest.len()), (0, 0), "{rest:?} {err}");
    // A child that exits without closing or writing first is not ready,
    // even though its exit closes the pipe: run reports it, prints no pid
    // and exits with the child's status.
    let c = run(&["--wait-ready", "pipe", "--", "sh", "-c", "exit 4"]);
    let (code, lines, err) = finish_out(c);
    assert_eq!(code, 4, "{err}");
    assert!(lines.is_empty(), "{lines:?}");
    assert!(
        err.contains("did not report ready") && err.contains("status 4"),
        "{err}"
    );
}

/// A running `sockpass run` whose stdout lines are read one at a time,
/// each wait bounded; stdin is closed by `finish`.
struct Lines {
    child: Child,
    rx: std::sync::mpsc::Receiver<String>,
}

fn stdout_lines(mut c: Child) -> Lines {
    use std::io::BufRead;
    let out = c.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Lines { child: c, rx }
}

impl Lines {
    fn next_line(&mut self) -> String {
        self.rx
            .recv_timeout(WAIT)
            .expect("a line from sockpass run")
    }

    /// Close stdin, wait; exit code, the remaining lines, stderr.
    fn finish(mut self) -> (i32, Vec<String>, String) {
        drop(self.child.stdin.take());
        let (code, err) = finish(self.child);
        (code, self.rx.try_iter().collect(), err)
    }
}

#[test]
fn wait_ready_child_exiting_first_is_reported() {
    let c = run(&["--wait-ready", "notify", "--", "sh", "-c", "exit 3"]);
    let (code, lines, err) = finish_out(c);
    assert_eq!(code, 3);
    assert!(lines.is_empty(), "{lines:?}");
    assert!(err.contains("did not report ready"), "{err}");
}

#[test]
fn wait_ready_timeout_stops_the_child() {
    // The child never reports: after the timeout it is stopped with SIGTERM
    // and its status is ours; a bad timeout is a usage error.
    let c = run(&[
        "--wait-ready",
        "fd:5",
        "--ready-timeout",
        "0.3",
        "--",
        "sleep",
        "60",
    ]);
    let (code, lines, err) = finish_out(c);
    assert_eq!(code, 128 + libc::SIGTERM, "{err}");
    assert!(lines.is_empty(), "{lines:?}");
    assert!(err.contains("did not report ready"), "{err}");
    let (code, err) = finish(run(&["--ready-timeout", "-1", "--", "true"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("positive number of seconds"), "{err}");
}

#[test]
fn join_a_network_namespace_from_the_cli() {
    if !is_root() {
        eprintln!("skipped: joining namespaces needs root");
        return;
    }
    let mut holder = Command::new("unshare")
        .args(["--net", "--", "sleep", "600"])
        .stdin(Stdio::null())
        .spawn()
        .expect("unshare --net");
    let hp = holder.id();
    wait_for("the holder to be in its netns", || {
        let mine = std::fs::read_link("/proc/self/ns/net").ok()?;
        let its = std::fs::read_link(format!("/proc/{hp}/ns/net")).ok()?;
        (mine != its).then_some(())
    });
    let c = run(&[
        "--join",
        &hp.to_string(),
        "--ns",
        "net",
        "--",
        "python3",
        "-S",
        "-c",
        "import socket\nprint('@@ ' + ','.join(sorted(n for _, n in socket.if_nameindex())))",
    ]);
    let (code, lines, err) = finish_out(c);
    let _ = holder.kill();
    let _ = holder.wait();
    assert_eq!(code, 0, "{err}");
    assert_eq!(lines, ["@@ lo"], "only the namespace's interfaces");
    // A namespace name that does not exist is a usage error.
    let (code, err) = finish(run(&[
        "--join",
        &std::process::id().to_string(),
        "--ns",
        "bogus",
        "--",
        "true",
    ]));
    assert_eq!(code, 2);
    assert!(err.contains("bogus"), "{err}");
}

/// `sockpass run ARGS -- sh -c 'echo "@@ $LISTEN_FDS $LISTEN_FDNAMES"'`:
/// exit code, that line, stderr.
fn fdnames(args: &[&str]) -> (i32, String, String) {
    let mut a = args.to_vec();
    a.extend(["--", "sh", "-c", "echo \"@@ $LISTEN_FDS $LISTEN_FDNAMES\""]);
    let mut c = run(&a);
    let line = read_line(&mut c);
    let (code, err) = finish(c);
    (code, line, err)
}

#[test]
fn fdname_as_systemd_socket_activate() {
    let l = "tcp:127.0.0.1:0";
    // One name names every fd (systemd-socket-activate 252 does the same:
    // --fdname=web with three -l gives web:web:web).
    let (code, line, err) = fdnames(&["-l", l, "-l", l, "-l", l, "--fdname", "web"]);
    assert_eq!((code, line.as_str()), (0, "3 web:web:web"), "{err}");
    // Empty parts are dropped, as systemd's split does; "a:" is one name.
    let (code, line, err) = fdnames(&["-l", l, "-l", l, "--fdname=a:"]);
    assert_eq!((code, line.as_str()), (0, "2 a:a"), "{err}");
    let (code, line, err) = fdnames(&["-l", l, "-l", l, "--fdname", "a::b"]);
    assert_eq!((code, line.as_str()), (0, "2 a:b"), "{err}");
    // Names across several options, in order.
    let (code, line, err) = fdnames(&["-l", l, "--fdname", "x", "-l", l, "--fdname", "y"]);
    assert_eq!((code, line.as_str()), (0, "2 x:y"), "{err}");
    // A count mismatch warns and runs: extra names are ignored, fds
    // without one are unnamed.
    let (code, line, err) = fdnames(&["-l", l, "-l", l, "--fdname", "a:b:c"]);
    assert_eq!((code, line.as_str()), (0, "2 a:b"), "{err}");
    assert!(
        err.contains("warning") && err.contains("3 names for 2 fds"),
        "{err}"
    );
    let (code, line, err) = fdnames(&["-l", l, "-l", l, "-l", l, "--fdname", "a:b"]);
    assert_eq!((code, line.as_str()), (0, "3 a:b:unknown"), "{err}");
    assert!(err.contains("2 names for 3 fds"), "{err}");
    // --fdname= is one empty name, for every fd as systemd does.
    let (code, line, err) = fdnames(&["-l", l, "-l", l, "--fdname="]);
    assert_eq!((code, line.as_str()), (0, "2 :"), "{err}");
    assert!(!err.contains("warning"), "{err}");
    // An --fd N:NAME keeps its own name.
    let (code, line, err) = fdnames(&["--fd", "2:own", "-l", l, "--fdname", "web"]);
    assert_eq!((code, line.as_str()), (0, "2 own:web"), "{err}");
}

#[test]
fn empty_and_inherit_slots_and_unsetenv() {
    let dir = temp_dir("run-slots");
    let f = dir.join("data");
    std::fs::write(&f, "payload").unwrap();
    // Slots from 3: a socket, an empty slot, an inherit slot where the
    // shell has a file open (5), an inherit slot where nothing is open (6).
    let script = format!(
        "exec 5<{} 6>&- 4>&- && GONE=1 KEPT=1 exec {} run -l tcp:127.0.0.1:0 --empty --inherit \
         --inherit -U GONE --unsetenv NEVERSET -- bash -c 'echo \"$LISTEN_FDS $LISTEN_FDNAMES \
         ${{GONE-unset}} $KEPT\"; cat <&5; echo; \
         for n in 0 1 2 3 4 5 6 7 8 9; do [ -e /proc/$$/fd/$n ] && printf \"%s \" $n; done; echo'",
        f.display(),
        sockpass_bin().display()
    );
    let out = Command::new("bash")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("4 unknown:empty:unknown:unknown unset 1"),
        "{text}"
    );
    // The inherited file arrives at its own number without CLOEXEC (bash,
    // exec'd, still has it).
    assert_eq!(lines.next(), Some("payload"));
    // The shell holds 0-2, the socket at 3 and the file at 5; 4 (empty)
    // and 6 (nothing inherited there) are closed. (Checked with the `[`
    // builtin: a pipeline or a listing would open fds of the shell's own.)
    let fds: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(fds, ["0", "1", "2", "3", "5"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unprivileged_service_gets_a_privileged_port_through_the_broker() {
    // The headline use: `sockpass run --request udp:...:P -- daemon` run as
    // an unprivileged user, P privileged, allowed by the broker's policy.
    if !is_root() {
        eprintln!("skipped: needs root to run the broker and switch to uid 65534");
        return;
    }
    const NOBODY: u32 = 65534;
    let Some(port) = free_privileged_port(&[]) else {
        eprintln!("skipped: no privileged port is free on 127.0.0.1");
        return;
    };
    let dir = temp_dir("run-privport");
    let pol = dir.join("policy.conf");
    std::fs::write(
        &pol,
        format!("allow uid={NOBODY} proto=udp addr=127.0.0.1/32 port={port}\n"),
    )
    .unwrap();
    let path = dir.join("sockpassd.sock");
    let b = Broker::start_at(dir.clone(), path.clone(), &["--policy", &path_str(&pol)]);
    // Binding the port itself is refused to the child (EACCES before
    // EADDRINUSE), so fd 3 can only have come from the broker.
    use std::os::unix::process::CommandExt;
    let mut c = Command::new(sockpass_bin())
        .args(["run", "--socket", &path_str(&path), "--request"])
        .arg(format!("udp:127.0.0.1:{port}"))
        .args([
            "--",
            "python3",
            "-S",
            "-c",
            "import socket,os\n\
             s = socket.socket(fileno=3)\n\
             try:\n\
             \x20   socket.socket(socket.AF_INET, socket.SOCK_DGRAM).bind(s.getsockname())\n\
             \x20   own = 'bound'\n\
             except PermissionError:\n\
             \x20   own = 'EACCES'\n\
             print('@@ %s %d %d %d %s' % (s.getsockname()[0], s.getsockname()[1], \
             s.type == socket.SOCK_DGRAM, os.getuid(), own), flush=True)\n\
             s.sendto(b'x', s.getsockname())\n\
             print('@@', s.recv(1))",
        ])
        .uid(NOBODY)
        .gid(NOBODY)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let line = read_line(&mut c);
    let (code, err) = finish(c);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        line,
        format!("127.0.0.1 {port} 1 {NOBODY} EACCES"),
        "fd 3 is the broker's socket on the privileged port; {err}"
    );
    // The broker made it for uid 65534 and drops it when run exits.
    wait_for("the reference to be released", || {
        let st = b.status();
        (!st.sockets.iter().any(|s| s.port == port && s.refs > 0)).then_some(())
    });
    // Another port is not in the policy: refused, clearly, nothing spawned.
    let other = if port > 1 { port - 1 } else { port + 1 };
    let out = Command::new(sockpass_bin())
        .args(["run", "--socket", &path_str(&path), "--request"])
        .arg(format!("udp:127.0.0.1:{other}"))
        .args(["--", "sh", "-c", "echo spawned"])
        .uid(NOBODY)
        .gid(NOBODY)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    // Denied by the policy: its own exit code (EX_NOPERM).
    assert_eq!(out.status.code(), Some(77), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    drop(b);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn listen_on_a_unix_path_and_udp_datagram() {
    // -l PATH: a listening unix stream socket at PATH, as
    // systemd-socket-activate -l /path.
    let dir = temp_dir("run-unix");
    let path = dir.join("x.sock");
    let mut c = run(&[
        "-l",
        &path_str(&path),
        "--",
        "python3",
        "-S",
        "-c",
        "import socket\n\
         s = socket.socket(fileno=3)\n\
         print('@@ %s %s %s' % (s.family.name, s.type.name, s.getsockname()), flush=True)\n\
         c, _ = s.accept()\n\
         c.sendall(b'hi')\n\
         c.close()",
    ]);
    let line = read_line(&mut c);
    // (The core binds by the bare name from inside the directory, so
    // getsockname shows "x.sock", not the whole path.)
    assert!(
        line.starts_with("AF_UNIX SOCK_STREAM ") && line.ends_with("x.sock"),
        "{line}"
    );
    let mut conn = std::os::unix::net::UnixStream::connect(&path).unwrap();
    conn.set_read_timeout(Some(WAIT)).unwrap();
    let mut got = String::new();
    conn.read_to_string(&mut got).unwrap();
    assert_eq!(got, "hi");
    let (code, err) = finish(c);
    assert_eq!(code, 0, "{err}");
    let _ = std::fs::remove_dir_all(&dir);

    // -d -l HOST:PORT: a UDP socket (systemd-socket-activate --datagram).
    let mut c = run(&[
        "-d",
        "-l",
        "127.0.0.1:0",
        "--",
        "python3",
        "-S",
        "-c",
        "import socket\n\
         s = socket.socket(fileno=3)\n\
         print('@@ %s %d' % (s.type.name, s.getsockname()[1]), flush=True)\n\
         d, a = s.recvfrom(64)\n\
         s.sendto(d.upper(), a)",
    ]);
    let line = read_line(&mut c);
    let (ty, port) = line.split_once(' ').unwrap();
    assert_eq!(ty, "SOCK_DGRAM");
    let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    u.set_read_timeout(Some(WAIT)).unwrap();
    u.send_to(b"ping", ("127.0.0.1", port.parse::<u16>().unwrap()))
        .unwrap();
    let mut buf = [0u8; 64];
    let n = u.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"PING");
    let (code, err) = finish(c);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn fdname_matches_systemd_socket_activate_itself() {
    // Where systemd-socket-activate's LISTEN_FDNAMES is well formed (as
    // many names as fds), ours is the same for the same --fdname options.
    // (On a count mismatch it passes the names as given, which
    // sd_listen_fds_with_names then refuses; we follow its man page
    // instead: extra names ignored, the rest unnamed.)
    let mut cases: Vec<Vec<&str>> = vec![
        vec!["--fdname=web"],
        vec!["--fdname=a:"],
        vec!["--fdname=a:b:c"],
        vec!["--fdname=a::b:c"],
        vec!["--fdname=a", "--fdname=b:c"],
    ];
    // (Without --fdname it sets no LISTEN_FDNAMES and we say "unknown" for
    // each fd, which is what sd_listen_fds_with_names reports for it.)
    cases.push(vec!["--fdname="]);
    let report = "echo \"@@ $LISTEN_FDS $LISTEN_FDNAMES\"";
    for names in cases {
        let dir = temp_dir("ssa-names");
        let socks: Vec<String> = ["a", "b", "c"]
            .iter()
            .map(|n| path_str(&dir.join(n)))
            .collect();
        let mut ssa = Command::new("systemd-socket-activate");
        for s in &socks {
            ssa.args(["-l", s]);
        }
        let mut ssa = ssa
            .args(&names)
            .args(["sh", "-c", report])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("systemd-socket-activate");
        // It starts the program on the first connection.
        let _conn = wait_for("systemd-socket-activate to listen", || {
            std::os::unix::net::UnixStream::connect(&socks[0]).ok()
        });
        let theirs = read_line(&mut ssa);
        let _ = ssa.kill();
        let _ = ssa.wait();
        for s in &socks {
            let _ = std::fs::remove_file(s);
        }
        let mut args: Vec<&str> = Vec::new();
        for s in &socks {
            args.extend(["-l", s]);
        }
        args.extend(names.iter().copied());
        let (code, ours, err) = fdnames(&args);
        assert_eq!(code, 0, "{names:?}: {err}");
        assert_eq!(ours, theirs, "{names:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
