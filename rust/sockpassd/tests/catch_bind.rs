//! `sockpass run --catch-bind`: unchanged programs that bind their own
//! sockets get the broker's, as uid nobody on privileged ports of
//! 127.0.0.1 through a root broker (issue 28). Real programs (python3's
//! http.server, static busybox httpd) and small python3 programs that
//! print what they got; the broker's status tells what it holds.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Root, a free privileged port (held for this test alone) and python3;
/// else a skip message.
fn setup() -> Option<(std::sync::MutexGuard<'static, ()>, u16)> {
    if !is_root() {
        eprintln!("skipped: needs root to run the broker and switch to uid 65534");
        return None;
    }
    installed("python3")?;
    privileged_port()
}

/// `sockpass run --socket B --catch-bind[=..] EXTRA -- PROGRAM` as nobody,
/// its output in `log`, with `env` set.
fn catch_run(
    b: &Broker,
    extra: &[&str],
    program: &[String],
    log: &Path,
    env: &[(&str, &str)],
) -> Supervised {
    let mut args: Vec<String> = vec!["--socket".into(), path_str(&b.path)];
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push("--".into());
    args.extend(program.iter().cloned());
    // A group of its own: a test that fails still kills the whole tree.
    let child = sockpass_run_as_nobody_cmd(&args, log, false)
        .envs(env.iter().copied())
        .process_group(0)
        .spawn()
        .expect("start sockpass run");
    Supervised {
        child,
        log: log.to_path_buf(),
    }
}

/// A python3 program `body` (with `PORT` set) in `dir`, as argv.
fn python(dir: &Path, name: &str, port: u16, body: &str) -> Vec<String> {
    let p = dir.join(name);
    std::fs::write(
        &p,
        format!("import os, socket, sys, time\nPORT = {port}\nDIR = {dir:?}\n{body}"),
    )
    .unwrap();
    vec!["python3".into(), path_str(&p)]
}

fn text(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

/// Wait (bounded) for `marker` in the log while `c` runs; the line.
fn line_with(c: &mut Supervised, log: &Path, marker: &str) -> String {
    c.until(marker, || {
        text(log)
            .lines()
            .find(|l| l.contains(marker))
            .map(str::to_string)
    })
}

fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .ok()?;
    let mut r = String::new();
    s.read_to_string(&mut r).ok()?;
    (!r.is_empty()).then_some(r)
}

/// The broker's reference count, from `sockpass status --json`.
fn references(b: &Broker) -> u64 {
    let out = std::process::Command::new(sockpass_bin())
        .args(["status", "--json", "--socket"])
        .arg(&b.path)
        .output()
        .unwrap();
    let j = String::from_utf8_lossy(&out.stdout);
    let at = j
        .find("\"references\":")
        .expect("references in the status JSON")
        + 13;
    j[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

fn wait_references(b: &Broker, n: u64) {
    wait_for(&format!("{n} reference(s) held by the broker"), || {
        (references(b) == n).then_some(())
    });
}

fn done(c: Supervised, b: Broker, dir: PathBuf) {
    c.stop();
    wait_references(&b, 0);
    drop(b);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn python_http_server_serves_on_a_privileged_port_as_nobody() {
    let Some((_one, port)) = setup() else { return };
    let (dir, b) = broker_for_nobody(
        "cb-http",
        &[format!("proto=tcp addr=127.0.0.1/32 port={port}")],
    );
    std::fs::write(dir.join("hello.txt"), "hello over a caught bind\n").unwrap();
    let log = dir.join("run.log");
    let prog: Vec<String> = ["python3", "-m", "http.server", &port.to_string()]
        .iter()
        .map(|s| s.to_string())
        .chain([
            "--bind".into(),
            "127.0.0.1".into(),
            "--directory".into(),
            path_str(&dir),
        ])
        .collect();
    let mut c = catch_run(&b, &["--catch-bind"], &prog, &log, &[]);
    let reply = c.until("http.server to answer", || http_get(port, "/hello.txt"));
    assert!(reply.starts_with("HTTP/1.0 200"), "{reply}\n{}", text(&log));
    assert!(reply.ends_with("hello over a caught bind\n"), "{reply}");
    // The socket it serves on is the broker's, held for nobody.
    let st = b.status();
    assert_eq!(st.sockets.len(), 1, "{st:?}");
    assert_eq!(st.sockets[0].port, port);
    assert_eq!(st.sockets[0].holders[0].uid, NOBODY);
    assert_eq!(references(&b), 1);
    done(c, b, dir);
}

#[test]
fn static_busybox_httpd_serves_on_a_privileged_port_as_nobody() {
    let Some((_one, port)) = setup() else { return };
    let Some(busybox) = installed("busybox") else {
        return;
    };
    let (dir, b) = broker_for_nobody(
        "cb-busybox",
        &[format!("proto=tcp addr=127.0.0.1/32 port={port}")],
    );
    let www = dir.join("www");
    std::fs::create_dir(&www).unwrap();
    std::fs::write(www.join("index.html"), "hello from busybox\n").unwrap();
    let log = dir.join("run.log");
    let prog = vec![
        path_str(&busybox),
        "httpd".into(),
        "-f".into(),
        "-p".into(),
        format!("127.0.0.1:{port}"),
        "-h".into(),
        path_str(&www),
    ];
    let mut c = catch_run(&b, &["--catch-bind"], &prog, &log, &[]);
    let reply = c.until("busybox httpd to answer", || http_get(port, "/index.html"));
    assert!(reply.contains(" 200 "), "{reply}\n{}", text(&log));
    assert!(reply.ends_with("hello from busybox\n"), "{reply}");
    assert_eq!(references(&b), 1);
    done(c, b, dir);
}

#[test]
fn a_port_the_policy_refuses_fails_with_eacces_and_the_log_names_the_rule() {
    let Some((_one, port)) = setup() else { return };
    let (dir, b) = broker_with_policy(
        "cb-refused",
        &format!(
            "deny uid={NOBODY} proto=tcp port={port}\n\
             allow uid={NOBODY} proto=tcp addr=127.0.0.1/32 port={port}\n"
        ),
    );
    let log = dir.join("run.log");
    let prog = python(
        &dir,
        "refused.py",
        port,
        "s = socket.socket()\n\
         try:\n    s.bind(('127.0.0.1', PORT))\n    print('bound', flush=True)\n\
         except OSError as e:\n    print('errno', e.errno, flush=True)\n",
    );
    let mut c = catch_run(&b, &["--catch-bind"], &prog, &log, &[]);
    let st = wait_child(&mut c.child);
    let out = text(&log);
    assert!(st.success(), "{out}");
    assert!(out.contains(&format!("errno {}", libc::EACCES)), "{out}");
    assert!(
        out.contains("sockpass: catch-bind:") && out.contains("policy.conf:1"),
        "the log line names the rule: {out}"
    );
    assert_eq!(b.status().sockets.len(), 0);
    drop(b);
    let _ = std::fs::remove_dir_all(dir);
}

/// Binds TCP PORT, listens, prints its socket's inode, waits.
const HOLD: &str = "s = socket.socket()\n\
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
    s.bind(('127.0.0.1', PORT))\n\
    s.listen(8)\n\
    print('inode', os.fstat(s.fileno()).st_ino, flush=True)\n\
    time.sleep(120)\n";

#[test]
fn two_instances_with_share_sameapp_hold_one_socket() {
    let Some((_one, port)) = setup() else { return };
    let (dir, b) = broker_for_nobody(
        "cb-sameapp",
        &[format!("proto=tcp addr=127.0.0.1/32 port={port}")],
    );
    let prog = python(&dir, "hold.py", port, HOLD);
    let share = ["--catch-bind", "--share", "sameapp", "--app", "web"];
    let (log1, log2) = (dir.join("one.log"), dir.join("two.log"));
    let mut c1 = catch_run(&b, &share, &prog, &log1, &[]);
    let i1 = line_with(&mut c1, &log1, "inode");
    let mut c2 = catch_run(&b, &share, &prog, &log2, &[]);
    let i2 = line_with(&mut c2, &log2, "inode");
    assert_eq!(i1, i2, "one socket inode for both instances");
    let st = b.status();
    assert_eq!(st.sockets.len(), 1, "{st:?}");
    assert_eq!(st.sockets[0].refs, 2, "{st:?}");
    // One accept queue: a connection is accepted by whichever asks.
    TcpStream::connect(("127.0.0.1", port)).expect("connect");
    // The first instance goes; the second keeps the socket.
    c1.stop();
    wait_references(&b, 1);
    TcpStream::connect(("127.0.0.1", port)).expect("connect after the first left");
    done(c2, b, dir);
}

#[test]
fn a_program_killed_mid_bind_leaves_no_reference() {
    let Some((_one, port)) = setup() else { return };
    let (dir, b) = broker_for_nobody(
        "cb-killed",
        &[format!("proto=tcp addr=127.0.0.1/32 port={port}")],
    );
    let log = dir.join("run.log");
    // The child binds (and is killed while the supervisor holds its grant);
    // the parent lives on, and binds once told to.
    let prog = python(
        &dir,
        "killed.py",
        port,
        "pid = os.fork()\n\
         if pid == 0:\n\
         \x20   print('child', os.getpid(), flush=True)\n\
         \x20   s = socket.socket()\n\
         \x20   s.bind(('127.0.0.1', PORT))\n\
         \x20   print('child bound', flush=True)\n\
         \x20   time.sleep(120)\n\
         os.waitpid(pid, 0)\n\
         print('child gone', flush=True)\n\
         while not os.path.exists(os.path.join(DIR, 'go')):\n\
         \x20   time.sleep(0.02)\n\
         s = socket.socket()\n\
         s.bind(('127.0.0.1', PORT))\n\
         s.listen(1)\n\
         print('parent bound', flush=True)\n\
         time.sleep(120)\n",
    );
    // Each caught bind waits 2 s between the grant and installing it.
    let env = [("SOCKPASS_TEST_CATCH_BIND_DELAY_MS", "2000")];
    let mut c = catch_run(&b, &["--catch-bind"], &prog, &log, &env);
    let child: i32 = line_with(&mut c, &log, "child ")
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    // The grant is taken and held while the handler waits: kill then.
    wait_references(&b, 1);
    // SAFETY: kill on the program's child, which has not been reaped.
    assert_eq!(unsafe { libc::kill(child, libc::SIGKILL) }, 0);
    line_with(&mut c, &log, "child gone");
    // The supervisor sees it gone and releases what it got for it, while
    // the program (and sockpass run) still run.
    wait_references(&b, 0);
    assert!(c.child.try_wait().unwrap().is_none(), "{}", text(&log));
    assert!(!text(&log).contains("child bound"), "{}", text(&log));
    // The address is free for the next bind.
    std::fs::write(dir.join("go"), "").unwrap();
    line_with(&mut c, &log, "parent bound");
    assert_eq!(references(&b), 1);
    TcpStream::connect(("127.0.0.1", port)).expect("connect to the parent's socket");
    done(c, b, dir);
}

#[test]
fn a_forked_child_that_binds_is_caught_too() {
    let Some((_one, port)) = setup() else { return };
    let (dir, b) = broker_for_nobody(
        "cb-fork",
        &[format!("proto=tcp addr=127.0.0.1/32 port={port}")],
    );
    let log = dir.join("run.log");
    // A forking server: the worker binds, serves one connection, exits;
    // then the re-executed master (exec keeps the filter) binds again
    // (both with SO_REUSEADDR: the served connection is in TIME_WAIT).
    let prog = python(
        &dir,
        "forking.py",
        port,
        "if len(sys.argv) > 1:\n\
         \x20   s = socket.socket()\n\
         \x20   s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         \x20   s.bind(('127.0.0.1', PORT))\n\
         \x20   print('re-executed bound', flush=True)\n\
         \x20   time.sleep(120)\n\
         pid = os.fork()\n\
         if pid == 0:\n\
         \x20   s = socket.socket()\n\
         \x20   s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         \x20   s.bind(('127.0.0.1', PORT))\n\
         \x20   s.listen(1)\n\
         \x20   print('worker listening', flush=True)\n\
         \x20   c, _ = s.accept()\n\
         \x20   c.sendall(b'from the worker')\n\
         \x20   c.close()\n\
         \x20   os._exit(0)\n\
         os.waitpid(pid, 0)\n\
         os.execv(sys.executable, [sys.executable, sys.argv[0], 'again'])\n",
    );
    let mut c = catch_run(&b, &["--catch-bind"], &prog, &log, &[]);
    line_with(&mut c, &log, "worker listening");
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the worker");
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut r = String::new();
    s.read_to_string(&mut r).unwrap();
    assert_eq!(r, "from the worker");
    line_with(&mut c, &log, "re-executed bound");
    assert_eq!(b.status().sockets.len(), 1);
    done(c, b, dir);
}

#[test]
fn other_families_port_zero_and_other_ports_continue_untouched() {
    let Some((_one, port)) = setup() else { return };
    let (dir, b) = broker_for_nobody(
        "cb-untouched",
        &[format!("proto=tcp addr=127.0.0.1/32 port={port}")],
    );
    let log = dir.join("run.log");
    let high = free_port(true);
    let prog = python(
        &dir,
        "untouched.py",
        port,
        &format!(
            "u = socket.socket(socket.AF_UNIX)\n\
             u.bind('\\0sockpass-catch-bind-test-%d' % os.getpid())\n\
             print('unix', u.getsockname() != '', flush=True)\n\
             n = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)\n\
             n.bind((0, 0))\n\
             print('netlink', n.getsockname()[0] != 0, flush=True)\n\
             z = socket.socket()\n\
             z.bind(('127.0.0.1', 0))\n\
             print('port0', z.getsockname()[1] != 0, flush=True)\n\
             h = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
             h.bind(('127.0.0.1', {high}))\n\
             print('unprivileged', h.getsockname()[1] == {high}, flush=True)\n\
             print('done', flush=True)\n"
        ),
    );
    let mut c = catch_run(&b, &["--catch-bind"], &prog, &log, &[]);
    let st = wait_child(&mut c.child);
    let out = text(&log);
    assert!(st.success(), "{out}");
    for l in [
        "unix True",
        "netlink True",
        "port0 True",
        "unprivileged True",
        "done",
    ] {
        assert!(out.contains(l), "{l}: {out}");
    }
    assert!(!out.contains("catch-bind:"), "no log line: {out}");
    assert_eq!(b.status().counters.sockets, 0, "the broker made nothing");
    drop(b);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn threads_bind_at_once_and_fd_flags_and_options_carry_over() {
    let Some((_one, port)) = setup() else { return };
    let (dir, b) = broker_for_nobody(
        "cb-threads",
        &[
            format!("proto=tcp addr=127.0.0.1/32 port={port}"),
            format!("proto=udp addr=127.0.0.1/32 port={port}"),
        ],
    );
    let log = dir.join("run.log");
    // Two threads bind at once: TCP non-blocking, CLOEXEC (python's
    // default) with SO_REUSEPORT; UDP blocking, inheritable, with SO_RCVBUF
    // set. Each prints what its fd says after the bind (under one lock:
    // print() from two threads interleaves its pieces), and serves once.
    let prog = python(
        &dir,
        "threads.py",
        port,
        "import threading, select\n\
         out = threading.Lock()\n\
         def tcp():\n\
         \x20   s = socket.socket()\n\
         \x20   s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)\n\
         \x20   s.setblocking(False)\n\
         \x20   n = s.fileno()\n\
         \x20   s.bind(('127.0.0.1', PORT))\n\
         \x20   s.listen(1)\n\
         \x20   with out:\n\
         \x20       print('tcp', n == s.fileno(), os.get_blocking(n), os.get_inheritable(n),\n\
         \x20             s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT), flush=True)\n\
         \x20   select.select([s], [], [])\n\
         \x20   c, _ = s.accept()\n\
         \x20   c.setblocking(True)\n\
         \x20   c.sendall(b'tcp ok')\n\
         \x20   c.close()\n\
         def udp():\n\
         \x20   u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         \x20   os.set_inheritable(u.fileno(), True)\n\
         \x20   u.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)\n\
         \x20   u.bind(('127.0.0.1', PORT))\n\
         \x20   n = u.fileno()\n\
         \x20   with out:\n\
         \x20       print('udp', os.get_blocking(n), os.get_inheritable(n),\n\
         \x20             u.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF), flush=True)\n\
         \x20   d, a = u.recvfrom(100)\n\
         \x20   u.sendto(b'udp ' + d, a)\n\
         ts = [threading.Thread(target=f) for f in (tcp, udp)]\n\
         for t in ts: t.start()\n\
         for t in ts: t.join()\n\
         print('served', flush=True)\n\
         time.sleep(120)\n",
    );
    let mut c = catch_run(&b, &["--catch-bind"], &prog, &log, &[]);
    // fd number kept, non-blocking, not inheritable, SO_REUSEPORT on.
    assert!(
        line_with(&mut c, &log, "tcp ").ends_with("tcp True False False 1"),
        "{}",
        text(&log)
    );
    // Blocking, inheritable, SO_RCVBUF 65536 (the kernel reports it doubled).
    assert!(
        line_with(&mut c, &log, "udp ").ends_with("udp True True 131072"),
        "{}",
        text(&log)
    );
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut r = String::new();
    s.read_to_string(&mut r).unwrap();
    assert_eq!(r, "tcp ok");
    let u = UdpSocket::bind("127.0.0.1:0").unwrap();
    u.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    u.send_to(b"hi", ("127.0.0.1", port)).unwrap();
    let mut buf = [0u8; 16];
    let n = u.recv(&mut buf).expect("the UDP echo");
    assert_eq!(&buf[..n], b"udp hi");
    line_with(&mut c, &log, "served");
    let st = b.status();
    assert_eq!(st.sockets.len(), 2, "{st:?}");
    let tcp = st
        .sockets
        .iter()
        .find(|s| s.spec.proto == sockpass::Proto::Tcp)
        .unwrap();
    assert_eq!(tcp.spec.options.reuseport, Some(true), "{st:?}");
    assert_eq!(tcp.spec.options.rcvbuf, None, "{st:?}");
    let udp = st
        .sockets
        .iter()
        .find(|s| s.spec.proto == sockpass::Proto::Udp)
        .unwrap();
    assert_eq!(udp.spec.options.rcvbuf, Some(65536), "{st:?}");
    done(c, b, dir);
}

#[test]
fn where_the_catch_cannot_work_nothing_starts() {
    let Some((_one, port)) = setup() else { return };
    let (dir, b) = broker_for_nobody(
        "cb-nested",
        &[format!("proto=tcp addr=127.0.0.1/32 port={port}")],
    );
    let log = dir.join("run.log");
    // A --catch-bind inside another: the kernel allows one listener on a
    // filter chain, so the inner one must say so and start nothing.
    let marker = dir.join("started");
    let prog = vec![
        path_str(&sockpass_bin()),
        "run".into(),
        "--socket".into(),
        path_str(&b.path),
        "--catch-bind".into(),
        "--".into(),
        "python3".into(),
        "-c".into(),
        format!("open({:?}, 'w')", path_str(&marker)),
    ];
    let mut c = catch_run(&b, &["--catch-bind"], &prog, &log, &[]);
    let st = wait_child(&mut c.child);
    let out = text(&log);
    assert!(!st.success(), "{out}");
    assert!(
        out.contains("--catch-bind cannot work here") && out.contains("listener"),
        "{out}"
    );
    assert!(
        !marker.exists(),
        "the program must not start without the catch"
    );
    drop(b);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_program_binding_in_a_tight_loop_still_gets_its_signals() {
    let Some((_one, port)) = setup() else { return };
    let (dir, b) = broker_for_nobody(
        "cb-loop",
        &[format!("proto=tcp addr=127.0.0.1/32 port={port}")],
    );
    let log = dir.join("run.log");
    // Every bind is caught and answered (a new socket each time: the one
    // before was closed, so its reference goes).
    let prog = python(
        &dir,
        "loop.py",
        port,
        "n = 0\n\
         while True:\n\
         \x20   s = socket.socket()\n\
         \x20   s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         \x20   s.bind(('127.0.0.1', PORT))\n\
         \x20   s.close()\n\
         \x20   n += 1\n\
         \x20   if n == 20:\n\
         \x20       print('looping', flush=True)\n",
    );
    let mut c = catch_run(&b, &["--catch-bind"], &prog, &log, &[]);
    line_with(&mut c, &log, "looping");
    // sockpass run forwards SIGTERM at once: its loop is not the one
    // answering binds.
    let t0 = std::time::Instant::now();
    assert_eq!(c.stop(), 128 + libc::SIGTERM, "{}", text(&log));
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "SIGTERM took {:?} to end a program binding in a loop",
        t0.elapsed()
    );
    assert!(!text(&log).contains("catch-bind:"), "{}", text(&log));
    wait_references(&b, 0);
    drop(b);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_program_that_made_itself_non_dumpable_is_left_to_the_kernel() {
    let Some((_one, port)) = setup() else { return };
    let (dir, b) = broker_for_nobody(
        "cb-nondumpable",
        &[format!("proto=tcp addr=127.0.0.1/32 port={port}")],
    );
    let log = dir.join("run.log");
    // PR_SET_DUMPABLE 0: its memory and fds are not the supervisor's to read
    // (same uid, no CAP_SYS_PTRACE), so the kernel judges its bind.
    let prog = python(
        &dir,
        "nondumpable.py",
        port,
        "import ctypes\n\
         ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)\n\
         s = socket.socket()\n\
         try:\n    s.bind(('127.0.0.1', PORT))\n    print('bound', flush=True)\n\
         except OSError as e:\n    print('errno', e.errno, flush=True)\n",
    );
    let mut c = catch_run(&b, &["--catch-bind"], &prog, &log, &[]);
    let st = wait_child(&mut c.child);
    let out = text(&log);
    assert!(st.success(), "{out}");
    assert!(out.contains(&format!("errno {}", libc::EACCES)), "{out}");
    assert!(
        out.contains("catch-bind:") && out.contains("the kernel judges"),
        "a line says why: {out}"
    );
    assert_eq!(b.status().sockets.len(), 0);
    drop(b);
    let _ = std::fs::remove_dir_all(dir);
}
