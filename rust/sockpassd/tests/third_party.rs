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

use std::process::Command;
use std::time::Duration;

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
