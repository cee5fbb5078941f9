//! Seamless restarts with real programs under load (issue 27, item 4):
//! gunicorn (HTTP) and unbound (DNS over UDP and TCP) from Debian, run by
//! `sockpass run` as uid nobody on a privileged port a root broker grants
//! them, are restarted 10 times by SIGUSR2 while client threads send
//! requests without letting up. Every restart must give a new pid holding
//! the same socket (same inode, the only one listening on the port), and
//! no TCP connection may be refused or reset; at least 99.9 % of UDP
//! queries must be answered. A new instance that fails to start must leave
//! the old one serving. The figures are printed (run with --nocapture).

mod common;

use common::load::*;
use common::restartd::*;
use common::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const RESTARTS: usize = 10;

/// Per-request timeout of the load: a request that waits longer counts
/// as failed (gunicorn's new worker may take a while to boot on a busy
/// machine; requests wait in the listen queue meanwhile).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Per-query timeout of DNS over UDP: a query not answered by then
/// counts as lost.
const UDP_TIMEOUT: Duration = Duration::from_secs(2);

/// Answers each kind of request must get from every new instance before
/// the next restart: the load runs through the restarts, not around them.
const BETWEEN: u64 = 200;

/// A socket the program must keep across restarts: TCP or UDP on `port`,
/// and its inode.
#[derive(Clone, Copy, Debug)]
struct Held {
    udp: bool,
    port: u16,
    inode: u64,
}

impl Held {
    /// The one socket listening (TCP) or bound (UDP) on the port, which
    /// the program's instance `pid` holds.
    fn find(udp: bool, port: u16, pid: i32) -> Held {
        let on_port = listeners_on_port(udp, port);
        assert_eq!(on_port.len(), 1, "one socket on port {port}: {on_port:?}");
        let h = Held {
            udp,
            port,
            inode: on_port[0],
        };
        h.check(pid);
        h
    }

    /// Still the only socket on its port, and held by `pid`.
    fn check(&self, pid: i32) {
        let on_port = listeners_on_port(self.udp, self.port);
        assert_eq!(
            on_port,
            [self.inode],
            "the same socket on the port: {self:?}"
        );
        assert!(
            socket_inodes(pid).contains(&self.inode),
            "instance {pid} holds {self:?}"
        );
    }
}

/// The program's one instance once sockpass run has exactly one child
/// other than `not`.
fn one_instance(run: &mut Run, not: i32, what: &str) -> i32 {
    let pid = run.pid();
    run.until(what, || match children(pid)[..] {
        [p] if p != not => Some(p),
        _ => None,
    })
}

/// Restart the program `n` times by SIGUSR2 to sockpass run: each time a
/// new pid replaces the old one (the old one gone) and holds the same
/// sockets, and each tally gets [`BETWEEN`] more answers before the next.
/// Returns the instances' pids, first to last.
fn restart(run: &mut Run, n: usize, held: &[Held], tallies: &[&Tally]) -> Vec<i32> {
    let mut pids = vec![one_instance(run, 0, "the program to start")];
    for i in 1..=n {
        let old = *pids.last().unwrap();
        let t = ms();
        run.signal(libc::SIGUSR2);
        let new = one_instance(run, old, &format!("restart {i} to replace pid {old}"));
        eprintln!(
            "restart {i}: SIGUSR2 at {t} ms, pid {old} replaced by {new} at {} ms",
            ms()
        );
        for h in held {
            h.check(new);
        }
        for t in tallies {
            assert!(
                t.progress(BETWEEN, WAIT),
                "no answers after restart {i} (sockets {held:?}): {:?}\n{}",
                t.counts(),
                run.text()
            );
        }
        pids.push(new);
    }
    pids
}

/// gunicorn serving, started by `sockpass run --wait-ready notify`:
/// gunicorn 20.1 speaks sd_notify (READY=1 once its arbiter booted), and
/// with --preload it imports the app before that, so an app that cannot
/// load is a start that fails, not a ready one. Two sync workers: one
/// may be busy with a slow request while the other answers.
fn start_gunicorn(tag: &str) -> Option<(Setup, Run)> {
    let g = Setup::gunicorn(tag)?;
    let args = g.gunicorn_args(
        &["--wait-ready", "notify"],
        &["--workers", "2", "--preload"],
    );
    let mut run = g.run(&args, "gunicorn.log", false);
    let port = g.port;
    run.until("gunicorn to answer", || http_get(port));
    Some((g, run))
}

#[test]
fn gunicorn_restarts_under_load_without_refusing_or_resetting_a_connection() {
    let Some((g, mut run)) = start_gunicorn("restart-gunicorn") else {
        return;
    };
    let port = g.port;
    let first = one_instance(&mut run, 0, "gunicorn to start");
    let held = [Held::find(false, port, first)];
    let mut load = Load::default();
    let http = load.spawn(2, || http_probe(port, "/", REQUEST_TIMEOUT));
    // A client that asks for half-second responses without letting up: an
    // old worker is most often in the middle of one when told to stop.
    let slow = load.spawn(1, || http_probe(port, "/slow", REQUEST_TIMEOUT));
    assert!(http.progress(BETWEEN, WAIT), "{:?}", http.errors());
    let pids = restart(&mut run, RESTARTS, &held, &[&http]);
    load.finish();
    let (c, sc) = (http.counts(), slow.counts());
    let tags: Vec<(String, u64)> = http.tags().into_iter().chain(slow.tags()).collect();
    let workers: std::collections::BTreeSet<&str> = tags
        .iter()
        .filter_map(|(t, _)| t.split(' ').next())
        .collect();
    let drained: u64 = tags
        .iter()
        .filter(|(t, _)| t.ends_with(" stopping"))
        .map(|(_, n)| n)
        .sum();
    eprintln!(
        "gunicorn, {RESTARTS} restarts (pids {pids:?}): HTTP {c}; slow HTTP {sc}; answered \
         by {} worker pids, {drained} by a worker already sent SIGTERM",
        workers.len()
    );
    let why = || {
        let errors = [http.errors(), slow.errors()].concat();
        format!("HTTP {errors:?}\n{}", run.text())
    };
    for c in [c, sc] {
        assert_eq!((c.refused, c.reset), (0, 0), "{}", why());
        assert_eq!(c.failed(), 0, "{}", why());
    }
    // Every instance's worker answered (its first, or more if one died),
    // and old workers finished what they had begun after SIGTERM.
    assert!(workers.len() > RESTARTS, "{workers:?}");
    assert!(drained > 0, "{tags:?}");
    let text = run.text();
    assert_eq!(run.stop(), 0, "gunicorn stops cleanly on SIGTERM: {text}");
}

#[test]
fn unbound_restarts_under_load_answering_udp_and_tcp() {
    let Some(u) = Setup::unbound("restart-unbound") else {
        return;
    };
    let port = u.port;
    // unbound with use-systemd sends READY=1 once it serves.
    let mut run = u.run(
        &u.unbound_args(&["--wait-ready", "notify"]),
        "unbound.log",
        true,
    );
    let q = dns_query("hello.sockpass.test");
    run.until("unbound to answer", || ask_udp(port, &q));
    let first = one_instance(&mut run, 0, "unbound to start");
    let held = [
        Held::find(true, port, first),
        Held::find(false, port, first),
    ];
    const NAME: &str = "hello.sockpass.test";
    let mut load = Load::default();
    let udp = load.spawn(2, || dns_udp_probe(port, NAME, HELLO_A, UDP_TIMEOUT));
    let tcp = load.spawn(1, || dns_tcp_probe(port, NAME, HELLO_A, REQUEST_TIMEOUT));
    let pids = restart(&mut run, RESTARTS, &held, &[&udp, &tcp]);
    load.finish();
    let (u, t) = (udp.counts(), tcp.counts());
    eprintln!("unbound, {RESTARTS} restarts (pids {pids:?}): DNS over UDP {u}; DNS over TCP {t}");
    let why = || {
        format!(
            "UDP {:?}\nTCP {:?}\n{}",
            udp.errors(),
            tcp.errors(),
            run.text()
        )
    };
    assert!(u.ok_percent() >= 99.9, "{}", why());
    assert_eq!(t.refused, 0, "{}", why());
    // unbound 1.17 does not drain on SIGTERM: in the event-loop pass that
    // reads the signal it may still accept one connection (and read its
    // query), then exits and closes it unanswered (a reset if the query
    // was unread, else an EOF). With one TCP client thread that is at most
    // one connection a restart, and its query is answered when asked
    // again on a new connection (by the new instance), as RFC 7766 clients
    // do. No query is lost.
    assert_eq!(t.failed(), 0, "{}", why());
    assert!(t.retried <= RESTARTS as u64, "{}", why());
    let text = run.text();
    assert_eq!(run.stop(), 0, "unbound stops cleanly on SIGTERM: {text}");
}

/// `sockpass restart CTL` (as root, which run's control socket lets in):
/// its exit code and what it wrote.
fn sockpass_restart(ctl: &Path) -> (i32, String) {
    let out = Command::new(sockpass_bin())
        .arg("restart")
        .arg(ctl)
        .args(["--timeout", "60"])
        .stdin(Stdio::null())
        .output()
        .expect("run sockpass restart");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn a_new_gunicorn_that_fails_to_start_leaves_the_old_one_serving() {
    let Some(g) = Setup::gunicorn("restart-fail") else {
        return;
    };
    let port = g.port;
    // run's control socket (--name with a /: its path), in a directory of
    // nobody's, for `sockpass restart`.
    let ctl_dir = g.dir.join("ctl");
    std::fs::create_dir(&ctl_dir).unwrap();
    std::os::unix::fs::chown(&ctl_dir, Some(NOBODY), Some(NOBODY)).unwrap();
    let ctl = ctl_dir.join("gunicorn");
    let args = g.gunicorn_args(
        &[
            "--wait-ready",
            "notify",
            "--restart-timeout",
            "3",
            "--name",
            &path_str(&ctl),
        ],
        &["--workers", "1", "--preload"],
    );
    let mut run = g.run(&args, "gunicorn.log", false);
    run.until("gunicorn to answer", || http_get(port));
    let old = one_instance(&mut run, 0, "gunicorn to start");
    let held = Held::find(false, port, old);
    let mut load = Load::default();
    let http = load.spawn(2, || http_probe(port, "/", REQUEST_TIMEOUT));
    assert!(http.progress(BETWEEN, WAIT), "{:?}", http.errors());
    let app = g.dir.join("hello.py");
    let serving = |run: &mut Run, what: &str| {
        assert_eq!(run.instances(), [old], "{what}: {}", run.text());
        held.check(old);
        assert!(http.progress(BETWEEN, WAIT), "{what}: {:?}", http.errors());
    };

    // An app that cannot load: the new instance exits before READY=1.
    std::fs::write(&app, "def app(:\n").unwrap();
    let (code, said) = sockpass_restart(&ctl);
    assert_ne!(code, 0, "sockpass restart: {said}");
    assert!(said.contains("before it was ready"), "{said}");
    eprintln!("sockpass restart exited {code}: {}", said.trim());
    let log = run.text();
    assert!(
        log.contains("restart 1 failed") && log.contains(&format!("instance {old} keeps serving")),
        "{log}"
    );
    serving(&mut run, "after a new instance that exits");

    // An app that takes too long to load: not ready within
    // --restart-timeout, the new instance is stopped.
    std::fs::write(&app, "import time\ntime.sleep(60)\n").unwrap();
    run.signal(libc::SIGUSR2);
    let log = run.log.clone();
    run.until("restart 2 to fail", || {
        let text = std::fs::read_to_string(&log).ok()?;
        text.contains("restart 2 failed").then_some(())
    });
    serving(&mut run, "after a new instance that is not ready in time");

    // The app mended: the next restart replaces the old instance.
    wsgi_app(&g.dir);
    let (code, said) = sockpass_restart(&ctl);
    let new = one_instance(&mut run, old, "restart 3 to replace the old instance");
    assert_eq!((code, said.trim()), (0, new.to_string().as_str()));
    held.check(new);
    assert!(http.progress(BETWEEN, WAIT), "{:?}", http.errors());
    load.finish();
    let c = http.counts();
    for l in run
        .text()
        .lines()
        .filter(|l| l.starts_with("sockpass: restart"))
    {
        eprintln!("{l}");
    }
    eprintln!("gunicorn, 2 failed restarts and 1 that worked (pids {old}, {new}): HTTP {c}");
    let why = || format!("HTTP {:?}\n{}", http.errors(), run.text());
    assert_eq!((c.refused, c.reset), (0, 0), "{}", why());
    assert_eq!(c.failed(), 0, "{}", why());
    let text = run.text();
    assert_eq!(run.stop(), 0, "gunicorn stops cleanly on SIGTERM: {text}");
}
