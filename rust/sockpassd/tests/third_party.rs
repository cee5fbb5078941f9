//! Real third-party daemons from Debian that take their sockets by systemd
//! socket activation (`LISTEN_FDS`), started by `sockpass run` as uid nobody
//! on privileged ports of 127.0.0.1 that a root broker's policy grants them,
//! answering real requests: unbound (DNS over UDP and TCP) and gunicorn
//! (HTTP). tests/lib/setup.sh installs both; as root elsewhere they are
//! skipped with a message when missing, and in CI ($CI set) that fails.

mod common;

use common::*;
use std::process::Command;

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
    let mut c = supervise_as_nobody(&args(&[]), &log, true);
    let q = dns_query("hello.sockpass.test");
    let udp = c.until("unbound to answer over UDP", || ask_udp(port, &q));
    assert_eq!(dns_answer(&udp), Some([192, 0, 2, 7]), "{}", c.text());
    let tcp = ask_tcp(port, &q);
    assert_eq!(dns_answer(&tcp), Some([192, 0, 2, 7]), "{}", c.text());
    let st = b.status();
    let held: Vec<_> = st
        .sockets
        .iter()
        .filter(|s| s.port == port && s.holders.iter().any(|h| h.uid == NOBODY))
        .collect();
    assert_eq!(held.len(), 2, "UDP and TCP held for nobody: {st:?}");
    let text = c.text();
    assert_eq!(c.stop(), 0, "unbound stops cleanly on SIGTERM: {text}");

    // The same TCP socket not listening (--no-listen, how `sockpass run`
    // handed it over before): unbound does not recognise it, tries to bind
    // the port itself, and as nobody cannot.
    wait_for("the sockets to be released", || {
        (!b.status().sockets.iter().any(|s| s.port == port)).then_some(())
    });
    let log2 = dir.join("unbound-no-listen.log");
    let mut c = supervise_as_nobody(&args(&["--no-listen"]), &log2, true);
    let code = c.wait();
    let text2 = c.text();
    assert_ne!(code, 0, "{text2}");
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
    let mut c = supervise_as_nobody(&args, &log, false);
    let reply = c.until("gunicorn to answer", || http_get(port));
    assert!(is_200(&reply), "{reply}\n{}", c.text());
    assert!(
        reply.ends_with(&format!("hello from uid {NOBODY}")),
        "{reply}"
    );
    let text = c.text();
    assert!(
        text.contains(&format!("Listening at: http://127.0.0.1:{port}")),
        "{text}"
    );
    assert_eq!(c.stop(), 0, "gunicorn stops cleanly on SIGTERM: {text}");
    drop(b);
    let _ = std::fs::remove_dir_all(&dir);
}
