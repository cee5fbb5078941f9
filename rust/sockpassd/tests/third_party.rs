//! Real third-party daemons from Debian that take their sockets by systemd
//! socket activation (`LISTEN_FDS`), started by `sockpass run` as uid nobody
//! on privileged ports of 127.0.0.1 that a root broker's policy grants them,
//! answering real requests: unbound (DNS over UDP and TCP) and gunicorn
//! (HTTP). tests/lib/setup.sh installs both; as root elsewhere they are
//! skipped with a message when missing, and in CI ($CI set) that fails.

mod common;

use common::daemons::*;
use common::*;

#[test]
fn unbound_answers_over_udp_and_tcp_on_a_privileged_port_as_nobody() {
    let Some(u) = Setup::unbound("unbound") else {
        return;
    };
    let port = u.port;

    // Handed over as socket activation does, the TCP socket listening:
    // unbound (sd_is_socket(fd, AF_INET, SOCK_STREAM, listening=1)) takes
    // both and answers, though it cannot bind the port itself.
    let mut c = u.run(&u.unbound_args(&[]), "unbound.log", true);
    let q = dns_query("hello.sockpass.test");
    let udp = c.until("unbound to answer over UDP", || ask_udp(port, &q));
    assert_eq!(dns_answer(&udp), Some(HELLO_A), "{}", c.text());
    let tcp = ask_tcp(port, &q);
    assert_eq!(dns_answer(&tcp), Some(HELLO_A), "{}", c.text());
    let st = u.broker.status();
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
        (!u.broker.status().sockets.iter().any(|s| s.port == port)).then_some(())
    });
    let c = u.run(&u.unbound_args(&["--no-listen"]), "no-listen.log", true);
    let log = c.log.clone();
    let code = c.wait();
    let text2 = std::fs::read_to_string(log).unwrap_or_default();
    assert_ne!(code, 0, "{text2}");
    assert!(text2.contains("can't bind socket"), "{text2}");
}

#[test]
fn gunicorn_serves_http_on_a_privileged_port_as_nobody() {
    let Some(g) = Setup::gunicorn("gunicorn") else {
        return;
    };
    let port = g.port;
    let mut c = g.run(
        &g.gunicorn_args(&[], &["--workers", "1"]),
        "gunicorn.log",
        false,
    );
    let reply = c.until("gunicorn to answer", || http_get(port));
    let text = || c.text();
    assert!(
        reply.starts_with("HTTP/1.0 200") || reply.starts_with("HTTP/1.1 200"),
        "{reply}\n{}",
        text()
    );
    assert!(
        reply.contains(&format!("hello from uid {NOBODY} pid ")),
        "{reply}"
    );
    assert!(
        text().contains(&format!("Listening at: http://127.0.0.1:{port}")),
        "{}",
        text()
    );
    let text = c.text();
    assert_eq!(c.stop(), 0, "gunicorn stops cleanly on SIGTERM: {text}");
}
