//! Real third-party daemons from Debian that take their sockets by systemd
//! socket activation (`LISTEN_FDS`), started by `sockpass run` as uid nobody
//! on privileged ports of 127.0.0.1 that a root broker's policy grants them,
//! answering real requests: unbound (DNS over UDP and TCP) and gunicorn
//! (HTTP). tests/lib/setup.sh installs both; as root elsewhere they are
//! skipped with a message when missing, and in CI ($CI set) that fails.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// One test at a time: each takes the highest free privileged port, which
/// must not be the other's.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The program's path, or None (skip) when it is not installed; in CI a
/// missing program is a failure, since setup installs it.
fn installed(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file());
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{name} is not installed (tests/lib/setup.sh installs it)"
        );
        eprintln!("skipped: {name} is not installed (tests/lib/setup.sh installs it)");
    }
    found
}

/// The daemon's path when its test can run: as root, with it installed.
fn daemon_to_test(name: &str) -> Option<PathBuf> {
    if !is_root() {
        eprintln!("skipped: needs root to run the broker and switch to uid 65534");
        return None;
    }
    installed(name)
}

/// A free privileged port, for this test alone while the guard lives.
fn privileged_port() -> Option<(std::sync::MutexGuard<'static, ()>, u16)> {
    let one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    match free_privileged_port(&[]) {
        Some(port) => Some((one, port)),
        None => {
            eprintln!("skipped: no privileged port is free on 127.0.0.1");
            None
        }
    }
}

/// A root broker in a temp directory uid nobody may enter (0755), whose
/// policy grants nobody `grants`.
fn broker_for_nobody(tag: &str, grants: &[String]) -> (PathBuf, Broker) {
    let dir = temp_dir(tag);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let pol = dir.join("policy.conf");
    let rules: String = grants
        .iter()
        .map(|g| format!("allow uid={NOBODY} {g}\n"))
        .collect();
    std::fs::write(&pol, rules).unwrap();
    let path = dir.join("sockpassd.sock");
    let b = Broker::start_at(dir.clone(), path, &["--policy", &path_str(&pol)]);
    (dir, b)
}

/// `sockpass run ARGS` as uid nobody (setpriv: no PAM session), its output
/// in `log`. With `systemd_booted`, in a mount namespace of its own where
/// /run/systemd/system exists: daemons such as unbound take socket
/// activation only when sd_booted() says systemd runs.
fn sockpass_run_as_nobody(args: &[String], log: &Path, systemd_booted: bool) -> Child {
    let out = std::fs::File::create(log).unwrap();
    let mut cmd = if systemd_booted {
        let mut c = Command::new("unshare");
        c.args([
            "-m",
            "sh",
            "-c",
            "mount --make-rprivate / && \
             if [ -d /run/systemd ]; then d=/run/systemd; else d=/run; fi && \
             mount -t tmpfs -o mode=755 tmpfs $d && mkdir -p /run/systemd/system && \
             exec \"$@\"",
            "sh",
        ]);
        c
    } else {
        Command::new("env")
    };
    cmd.args([
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
    ])
    .arg(sockpass_bin())
    .arg("run")
    .args(args)
    .stdin(Stdio::null())
    .stdout(out.try_clone().unwrap())
    .stderr(out)
    .spawn()
    .expect("start sockpass run")
}

/// Wait, bounded, for `f` to give a value while `c` runs; a child that
/// exits first or a wait that runs out fails with the daemon's log.
fn until<T>(c: &mut Child, log: &Path, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let t0 = std::time::Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        let text = || std::fs::read_to_string(log).unwrap_or_default();
        if let Some(st) = c.try_wait().unwrap() {
            panic!(
                "waiting for {what}: sockpass run exited ({st}):\n{}",
                text()
            );
        }
        if t0.elapsed() > WAIT {
            let _ = c.kill();
            let _ = c.wait();
            panic!("timed out after {WAIT:?} waiting for {what}:\n{}", text());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Stop `sockpass run` (it forwards SIGTERM to the daemon) and return its
/// exit code.
fn stop(mut c: Child) -> i32 {
    // SAFETY: kill on our own child's pid.
    unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    wait_child(&mut c).code().unwrap_or(-1)
}

/// A DNS query for `name` IN A, id 0x5350.
fn dns_query(name: &str) -> Vec<u8> {
    let mut q = vec![0x53, 0x50, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// The A record's address of an answer to [`dns_query`] (its last record).
fn dns_answer(reply: &[u8]) -> Option<[u8; 4]> {
    let ok = reply.len() > 16
        && reply[..2] == [0x53, 0x50]
        && reply[3] & 0x0f == 0
        && u16::from_be_bytes([reply[6], reply[7]]) >= 1;
    ok.then(|| reply[reply.len() - 4..].try_into().unwrap())
}

fn ask_udp(port: u16, q: &[u8]) -> Option<Vec<u8>> {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    s.send_to(q, ("127.0.0.1", port)).ok()?;
    let mut buf = [0u8; 512];
    let n = s.recv(&mut buf).ok()?;
    Some(buf[..n].to_vec())
}

fn ask_tcp(port: u16, q: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect over TCP");
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(&(q.len() as u16).to_be_bytes()).unwrap();
    s.write_all(q).unwrap();
    let mut len = [0u8; 2];
    s.read_exact(&mut len).expect("a TCP answer");
    let mut reply = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut reply).unwrap();
    reply
}

#[test]
fn unbound_answers_over_udp_and_tcp_on_a_privileged_port_as_nobody() {
    let Some(unbound) = daemon_to_test("unbound") else {
        return;
    };
    // unbound takes activated sockets only where systemd runs (sd_booted):
    // a mount namespace of the test's own shows it /run/systemd/system.
    let mount_ns = Command::new("unshare").args(["-m", "true"]).status();
    if !mount_ns.is_ok_and(|s| s.success()) {
        eprintln!(
            "skipped: cannot make a mount namespace (unshare -m) to show unbound a booted systemd"
        );
        return;
    }
    let Some((_one, port)) = privileged_port() else {
        return;
    };
    let (dir, b) = broker_for_nobody(
        "unbound",
        &[
            format!("proto=udp addr=127.0.0.1/32 port={port}"),
            format!("proto=tcp addr=127.0.0.1/32 port={port}"),
        ],
    );
    let conf = dir.join("unbound.conf");
    std::fs::write(
        &conf,
        format!(
            "server:\n  interface: 127.0.0.1\n  port: {port}\n  do-ip6: no\n  \
             do-daemonize: no\n  use-systemd: yes\n  username: \"\"\n  chroot: \"\"\n  \
             directory: \"{d}\"\n  pidfile: \"\"\n  logfile: \"\"\n  use-syslog: no\n  \
             module-config: \"iterator\"\n  access-control: 127.0.0.0/8 allow\n  \
             local-zone: \"sockpass.test.\" static\n  \
             local-data: \"hello.sockpass.test. A 192.0.2.7\"\n\
             remote-control:\n  control-enable: no\n",
            d = dir.display()
        ),
    )
    .unwrap();
    let args = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = vec!["--socket".into(), path_str(&b.path)];
        v.extend(extra.iter().map(|s| s.to_string()));
        v.extend([
            "--request".into(),
            format!("udp:127.0.0.1:{port}"),
            "--request".into(),
            format!("tcp:127.0.0.1:{port}"),
            "--".into(),
            path_str(&unbound),
            "-d".into(),
            "-c".into(),
            path_str(&conf),
        ]);
        v
    };

    // Handed over as socket activation does, the TCP socket listening:
    // unbound (sd_is_socket(fd, AF_INET, SOCK_STREAM, listening=1)) takes
    // both and answers, though it cannot bind the port itself.
    let log = dir.join("unbound.log");
    let mut c = sockpass_run_as_nobody(&args(&[]), &log, true);
    let q = dns_query("hello.sockpass.test");
    let udp = until(&mut c, &log, "unbound to answer over UDP", || {
        ask_udp(port, &q)
    });
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(dns_answer(&udp), Some([192, 0, 2, 7]), "{}", text());
    let tcp = ask_tcp(port, &q);
    assert_eq!(dns_answer(&tcp), Some([192, 0, 2, 7]), "{}", text());
    let st = b.status();
    let held: Vec<_> = st
        .sockets
        .iter()
        .filter(|s| s.port == port && s.holders.iter().any(|h| h.uid == NOBODY))
        .collect();
    assert_eq!(held.len(), 2, "UDP and TCP held for nobody: {st:?}");
    assert_eq!(stop(c), 0, "unbound stops cleanly on SIGTERM: {}", text());

    // The same TCP socket not listening (--no-listen, how `sockpass run`
    // handed it over before): unbound does not recognise it, tries to bind
    // the port itself, and as nobody cannot.
    wait_for("the sockets to be released", || {
        (!b.status().sockets.iter().any(|s| s.port == port)).then_some(())
    });
    let log2 = dir.join("unbound-no-listen.log");
    let mut c = sockpass_run_as_nobody(&args(&["--no-listen"]), &log2, true);
    let code = wait_child(&mut c).code();
    let text2 = std::fs::read_to_string(&log2).unwrap_or_default();
    assert_ne!(code, Some(0), "{text2}");
    assert!(text2.contains("can't bind socket"), "{text2}");
    drop(b);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn gunicorn_serves_http_on_a_privileged_port_as_nobody() {
    let Some(gunicorn) = daemon_to_test("gunicorn") else {
        return;
    };
    let Some((_one, port)) = privileged_port() else {
        return;
    };
    let (dir, b) = broker_for_nobody(
        "gunicorn",
        &[format!("proto=tcp addr=127.0.0.1/32 port={port}")],
    );
    std::fs::write(
        dir.join("hello.py"),
        "import os\n\
         def app(environ, start_response):\n\
         \x20   start_response('200 OK', [('Content-Type', 'text/plain')])\n\
         \x20   return [b'hello from uid %d' % os.getuid()]\n",
    )
    .unwrap();
    let log = dir.join("gunicorn.log");
    let args: Vec<String> = vec![
        "--socket".into(),
        path_str(&b.path),
        "--request".into(),
        format!("tcp:127.0.0.1:{port}"),
        "--".into(),
        path_str(&gunicorn),
        "--chdir".into(),
        path_str(&dir),
        "--workers".into(),
        "1".into(),
        "hello:app".into(),
    ];
    let mut c = sockpass_run_as_nobody(&args, &log, false);
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    let reply = until(&mut c, &log, "gunicorn to answer", || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.set_read_timeout(Some(WAIT)).unwrap();
        s.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .ok()?;
        let mut r = String::new();
        s.read_to_string(&mut r).ok()?;
        Some(r)
    });
    assert!(
        reply.starts_with("HTTP/1.0 200") || reply.starts_with("HTTP/1.1 200"),
        "{reply}\n{}",
        text()
    );
    assert!(
        reply.ends_with(&format!("hello from uid {NOBODY}")),
        "{reply}"
    );
    assert!(
        text().contains(&format!("Listening at: http://127.0.0.1:{port}")),
        "{}",
        text()
    );
    assert_eq!(stop(c), 0, "gunicorn stops cleanly on SIGTERM: {}", text());
    drop(b);
    let _ = std::fs::remove_dir_all(&dir);
}
