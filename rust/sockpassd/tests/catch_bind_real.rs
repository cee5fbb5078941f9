//! Real daemons from Debian that bind their own sockets, unchanged, run by
//! `sockpass run --catch-bind` as uid nobody on privileged ports of
//! 127.0.0.1 that a root broker's policy grants them (issue 28): nginx (a
//! master and 2 workers, and a reload that adds a port), unbound (UDP and
//! TCP, its outgoing-query ports left alone), and two nginx sharing one
//! socket (`--share sameapp`) so the first stops under load without a
//! refused connection, as does a SIGUSR2 restart where `sockpass run` has
//! them. Skipped with a message when not root or a program is missing (in
//! CI, where tests/lib/setup.sh installs them, a missing one fails).

mod common;

use common::*;
use std::net::UdpSocket;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `sockpass run` arguments: the broker, `extra`, --catch-bind, then the
/// program.
fn catch_args(b: &Broker, extra: &[&str], program: Vec<String>) -> Vec<String> {
    let mut v: Vec<String> = vec!["--socket".into(), path_str(&b.path)];
    v.extend(extra.iter().map(|s| s.to_string()));
    v.push("--catch-bind".into());
    v.push("--".into());
    v.extend(program);
    v
}

/// What a daemon test needs: the daemon's path, `n` free privileged ports
/// (this test's alone while `_one` lives), and a root broker in `dir`
/// whose policy grants nobody each of `protos` on each port.
struct Setup {
    daemon: PathBuf,
    ports: Vec<u16>,
    dir: PathBuf,
    b: Broker,
    _one: std::sync::MutexGuard<'static, ()>,
}

/// [`Setup`], or None when the test cannot run here (it says why).
fn setup(daemon: &str, tag: &str, protos: &[&str], n: usize) -> Option<Setup> {
    let daemon = daemon_to_test(daemon)?;
    let (one, port) = privileged_port()?;
    let mut ports = vec![port];
    while ports.len() < n {
        let Some(p) = free_privileged_port(&ports) else {
            eprintln!("skipped: not {n} privileged ports free on 127.0.0.1");
            return None;
        };
        ports.push(p);
    }
    let grants: Vec<String> = ports
        .iter()
        .flat_map(|p| {
            protos
                .iter()
                .map(move |proto| format!("proto={proto} addr=127.0.0.1/32 port={p}"))
        })
        .collect();
    let (dir, b) = broker_for_nobody(tag, &grants);
    Some(Setup {
        daemon,
        ports,
        dir,
        b,
        _one: one,
    })
}

/// The broker's sockets on `port` held by nobody: (proto, socket inode).
fn held_for_nobody(b: &Broker, port: u16) -> Vec<String> {
    let st = b.status();
    st.sockets
        .iter()
        .filter(|s| s.port == port && s.holders.iter().any(|h| h.uid == NOBODY))
        .map(|s| format!("{s:?}"))
        .collect()
}

/// Wait until the broker holds nothing on `port` (every holder gone).
fn released(b: &Broker, port: u16) {
    wait_for("the broker to release the port's sockets", || {
        (!b.status().sockets.iter().any(|s| s.port == port)).then_some(())
    });
}

#[test]
fn nginx_master_and_two_workers_serve_a_privileged_port_as_nobody() {
    // A second port, for a reload that adds it.
    let Some(Setup {
        daemon: nginx,
        ports,
        dir,
        b,
        _one,
    }) = setup("nginx", "catch-nginx", &["tcp"], 2)
    else {
        return;
    };
    let (port, port2) = (ports[0], ports[1]);
    let ndir = nobody_dir(&dir, "nginx");
    nginx_conf(&ndir, &[port], "hello from nginx\n");
    let mut c = supervise_as_nobody(
        &catch_args(&b, &[], nginx_args(&nginx, &ndir)),
        &dir.join("run.log"),
        false,
    );
    let reply = c.until("nginx to answer", || http_get(port));
    assert!(is_200(&reply), "{reply}\n{}", c.text());
    assert!(reply.ends_with("hello from nginx\n"), "{reply}");
    // Both workers' turn comes: more answers, all 200.
    for _ in 0..20 {
        let r = http_get(port).expect("nginx answers again");
        assert!(is_200(&r), "{r}");
    }

    // A master and 2 workers, all as nobody, the workers the master's.
    let masters = c.programs("nginx: master process");
    assert_eq!(masters.len(), 1, "{masters:?}\n{}", c.text());
    let master = &masters[0];
    let workers = wait_for("nginx's 2 workers", || {
        let w = c.programs("nginx: worker process");
        (w.len() == 2).then_some(w)
    });
    for p in masters.iter().chain(&workers) {
        assert_eq!(p.uid, NOBODY, "{p:?}");
    }
    assert!(workers.iter().all(|w| w.ppid == master.pid), "{workers:?}");

    // The one socket listening on the port is the broker's, in nginx's
    // master and workers: nginx bound nothing itself.
    let listening = listening_on_port(port);
    assert_eq!(listening.len(), 1, "{listening:?}");
    for p in masters.iter().chain(&workers) {
        assert!(
            socket_inodes(p.pid).contains(&listening[0]),
            "{p:?} holds the listening socket"
        );
    }
    let held = held_for_nobody(&b, port);
    assert_eq!(held.len(), 1, "the broker made one socket: {held:?}");

    // A reload (SIGHUP) whose configuration adds a port: the running
    // master binds it, caught as well, and keeps the first port's socket.
    nginx_conf(&ndir, &[port, port2], "hello from nginx\n");
    // SAFETY: signalling the nginx master this test started.
    unsafe { libc::kill(master.pid, libc::SIGHUP) };
    let r2 = c.until("nginx to answer on the port its reload added", || {
        http_get(port2)
    });
    assert!(is_200(&r2), "{r2}\n{}", c.text());
    assert_eq!(listening_on_port(port), listening, "the first socket stays");
    assert_eq!(held_for_nobody(&b, port2).len(), 1, "{:?}", b.status());
    assert_eq!(held_for_nobody(&b, port).len(), 1, "{:?}", b.status());

    let text = c.text();
    assert_eq!(c.stop(), 0, "nginx stops on SIGTERM: {text}");
    released(&b, port);
    drop(b);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A thread that runs `step` over and over until stopped; stopped and
/// joined on drop.
struct Background {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Background {
    fn start(mut step: impl FnMut() + Send + 'static) -> Background {
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                step();
            }
        });
        Background {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            // Its panic fails the test, unless the test is failing already.
            if t.join().is_err() && !std::thread::panicking() {
                panic!("the background thread panicked");
            }
        }
    }
}

/// An upstream DNS server on an unprivileged port of 127.0.0.1 that
/// answers every A query with `addr` and records the source port of each.
struct Upstream {
    port: u16,
    sources: Arc<std::sync::Mutex<Vec<u16>>>,
    _server: Background,
}

impl Upstream {
    fn start(addr: [u8; 4]) -> Upstream {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let port = s.local_addr().unwrap().port();
        let sources = Arc::new(std::sync::Mutex::new(Vec::new()));
        let src = sources.clone();
        let mut buf = [0u8; 1500];
        let server = Background::start(move || {
            if let Ok((n, from)) = s.recv_from(&mut buf) {
                src.lock().unwrap().push(from.port());
                let _ = s.send_to(&dns_reply_a(&buf[..n], addr), from);
            }
        });
        Upstream {
            port,
            sources,
            _server: server,
        }
    }
}

#[test]
fn unbound_binds_udp_and_tcp_53_like_ports_and_its_query_ports_are_left_alone() {
    let Some(Setup {
        daemon: unbound,
        ports,
        dir,
        b,
        _one,
    }) = setup("unbound", "catch-unbound", &["udp", "tcp"], 1)
    else {
        return;
    };
    let port = ports[0];
    // Names under upstream.example go to this upstream: unbound sends each query
    // from a socket it binds to a random unprivileged port.
    let upstream = Upstream::start([198, 51, 100, 9]);
    let udir = nobody_dir(&dir, "unbound");
    let conf = udir.join("unbound.conf");
    std::fs::write(
        &conf,
        format!(
            "server:\n  interface: 127.0.0.1@{port}\n  do-ip6: no\n  do-udp: yes\n  \
             do-tcp: yes\n  do-daemonize: no\n  use-systemd: no\n  username: \"\"\n  \
             chroot: \"\"\n  directory: \"{d}\"\n  pidfile: \"{d}/unbound.pid\"\n  \
             logfile: \"\"\n  use-syslog: no\n  verbosity: 1\n  num-threads: 1\n  \
             module-config: \"iterator\"\n  access-control: 127.0.0.0/8 allow\n  \
             do-not-query-localhost: no\n  outgoing-range: 64\n  \
             local-zone: \"sockpass.test.\" static\n  \
             local-data: \"hello.sockpass.test. A 192.0.2.7\"\n\
             forward-zone:\n  name: \"upstream.example.\"\n  forward-addr: 127.0.0.1@{up}\n\
             remote-control:\n  control-enable: no\n",
            d = udir.display(),
            up = upstream.port,
        ),
    )
    .unwrap();
    let mut c = supervise_as_nobody(
        &catch_args(
            &b,
            &[],
            vec![
                path_str(&unbound),
                "-d".into(),
                "-c".into(),
                path_str(&conf),
            ],
        ),
        &dir.join("run.log"),
        false,
    );
    let q = dns_query("hello.sockpass.test");
    let udp = c.until("unbound to answer over UDP", || ask_udp(port, &q));
    assert_eq!(dns_answer(&udp), Some([192, 0, 2, 7]), "{}", c.text());
    let tcp = ask_tcp(port, &q);
    assert_eq!(dns_answer(&tcp), Some([192, 0, 2, 7]), "{}", c.text());

    // Ten names it must ask upstream for: ten outgoing queries, each from
    // a port unbound binds itself, which --catch-bind=privileged leaves
    // to the kernel (they are unprivileged). On a loaded machine an
    // upstream answer can come late and unbound answer SERVFAIL: ask again.
    for k in 0..10 {
        let q = dns_query(&format!("n{k}.upstream.example"));
        c.until("unbound to answer a forwarded name", || {
            ask_udp(port, &q).filter(|a| dns_answer(a) == Some([198, 51, 100, 9]))
        });
    }
    let sources = upstream.sources.lock().unwrap().clone();
    let first_unprivileged: u16 =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1024);
    assert!(sources.len() >= 10, "{sources:?}");
    assert!(
        sources
            .iter()
            .all(|&p| p >= first_unprivileged && p != port),
        "queries came from unprivileged ports of unbound's own: {sources:?}"
    );
    // The broker made the two sockets on the port and nothing else.
    let st = b.status();
    assert_eq!(st.sockets.len(), 2, "only UDP and TCP {port}: {st:?}");
    assert!(st.sockets.iter().all(|s| s.port == port), "{st:?}");
    assert_eq!(held_for_nobody(&b, port).len(), 2, "{st:?}");

    let text = c.text();
    assert_eq!(c.stop(), 0, "unbound stops on SIGTERM: {text}");
    released(&b, port);
    drop(upstream);
    drop(b);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Connections made one after another while it runs: answers (200),
/// refused connections, and other failures.
struct Load {
    ok: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    bodies: Arc<std::sync::Mutex<Vec<String>>>,
    client: Background,
}

impl Load {
    fn start(port: u16) -> Load {
        let ok = Arc::new(AtomicU64::new(0));
        let refused = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let bodies = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (o, r, f, bs) = (ok.clone(), refused.clone(), failed.clone(), bodies.clone());
        let client = Background::start(move || {
            use std::io::{Read, Write};
            let mut s = match std::net::TcpStream::connect(("127.0.0.1", port)) {
                Ok(s) => s,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    r.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Err(_) => {
                    f.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            };
            s.set_read_timeout(Some(WAIT)).unwrap();
            let mut reply = String::new();
            let done = s
                .write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
                .and_then(|_| s.read_to_string(&mut reply));
            if done.is_ok() && is_200(&reply) {
                o.fetch_add(1, Ordering::Relaxed);
                let body = reply.rsplit("\r\n\r\n").next().unwrap_or("").to_string();
                bs.lock().unwrap().push(body);
            } else {
                f.fetch_add(1, Ordering::Relaxed);
            }
            std::thread::sleep(Duration::from_millis(2));
        });
        Load {
            ok,
            refused,
            failed,
            bodies,
            client,
        }
    }

    /// Wait (bounded) until `n` answers came; how many there are.
    fn wait_answers(&self, n: u64) -> u64 {
        let t0 = Instant::now();
        while self.ok.load(Ordering::Relaxed) < n && t0.elapsed() < WAIT {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.ok.load(Ordering::Relaxed)
    }

    /// Stop and return (answers, refused, failed).
    fn finish(self) -> (u64, u64, u64) {
        drop(self.client);
        (
            self.ok.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

#[test]
fn two_nginx_share_one_socket_and_the_first_stops_under_load_without_a_refusal() {
    let Some(Setup {
        daemon: nginx,
        ports,
        dir,
        b,
        _one,
    }) = setup("nginx", "catch-share", &["tcp"], 1)
    else {
        return;
    };
    let port = ports[0];
    let share = ["--share", "sameapp", "--app", "web"];
    let start = |name: &str| {
        let ndir = nobody_dir(&dir, name);
        nginx_conf(&ndir, &[port], &format!("{name}\n"));
        let run = supervise_as_nobody(
            &catch_args(&b, &share, nginx_args(&nginx, &ndir)),
            &dir.join(format!("{name}.log")),
            false,
        );
        (ndir, run)
    };
    let (_adir, mut a) = start("old");
    let first = a.until("the first nginx to answer", || http_get(port));
    assert!(first.ends_with("old\n"), "{first}\n{}", a.text());

    let (_bdir, mut bb) = start("new");
    // Both accept from the one queue: the new one's answer comes in time.
    bb.until("the second nginx to answer too", || {
        http_get(port).filter(|r| r.ends_with("new\n"))
    });
    let listening = listening_on_port(port);
    assert_eq!(listening.len(), 1, "one listening socket: {listening:?}");
    let (ma, mb) = (
        a.programs("nginx: master process"),
        bb.programs("nginx: master process"),
    );
    assert_eq!((ma.len(), mb.len()), (1, 1), "{ma:?} {mb:?}");
    for m in [&ma[0], &mb[0]] {
        assert!(
            socket_inodes(m.pid).contains(&listening[0]),
            "{m:?} holds inode {}",
            listening[0]
        );
    }
    assert_eq!(
        held_for_nobody(&b, port).len(),
        1,
        "one socket in the broker"
    );

    // Under continuous connections, the old one stops gracefully (nginx's
    // SIGQUIT: it closes its copy of the socket, finishes what it
    // accepted): what it leaves in the queue, the new one accepts.
    let load = Load::start(port);
    load.wait_answers(20);
    // SAFETY: signalling the nginx master this test started.
    unsafe { libc::kill(ma[0].pid, libc::SIGQUIT) };
    let code = a.wait();
    assert_eq!(code, 0, "the old nginx exits 0 after SIGQUIT: {}", a.text());
    let after = load.ok.load(Ordering::Relaxed);
    load.wait_answers(after + 50);
    let bodies = load.bodies.lock().unwrap().clone();
    let (ok, refused, failed) = load.finish();
    eprintln!(
        "{ok} answers ({after} before the old one ended), {refused} refused, {failed} failed"
    );
    assert_eq!(
        refused, 0,
        "refused connections ({ok} answered, {failed} failed)"
    );
    assert_eq!(failed, 0, "failed requests ({ok} answered)");
    assert!(
        ok >= after + 50,
        "the new one answered on: {ok} answers, {after} before the stop"
    );
    assert!(bodies.iter().rev().take(50).all(|b| b == "new\n"));
    assert_eq!(
        held_for_nobody(&b, port).len(),
        1,
        "the new one still holds it"
    );
    assert_eq!(
        listening_on_port(port),
        listening,
        "the same socket listens on"
    );
    drop(a);

    let text = bb.text();
    assert_eq!(bb.stop(), 0, "the new nginx stops on SIGTERM: {text}");
    released(&b, port);
    drop(b);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Whether this `sockpass run` restarts its program on SIGUSR2 (the
/// restart feature, issue 28 item 4's second half).
fn run_restarts_on_sigusr2() -> bool {
    let help = std::process::Command::new(sockpass_bin())
        .args(["run", "--help"])
        .output()
        .expect("sockpass run --help");
    String::from_utf8_lossy(&help.stdout).contains("SIGUSR2")
}

#[test]
fn nginx_restarts_on_sigusr2_under_catch_bind_without_a_refusal() {
    if !run_restarts_on_sigusr2() {
        eprintln!(
            "skipped: this sockpass run has no SIGUSR2 restarts (the restart branch is not merged)"
        );
        return;
    }
    let Some(Setup {
        daemon: nginx,
        ports,
        dir,
        b,
        _one,
    }) = setup("nginx", "catch-usr2", &["tcp"], 1)
    else {
        return;
    };
    let port = ports[0];
    let ndir = nobody_dir(&dir, "nginx");
    nginx_conf(&ndir, &[port], "hello\n");
    // The new instance binds what the old one holds: sameapp gives it the
    // same socket. nginx drains on SIGQUIT.
    let extra = [
        "--share",
        "sameapp",
        "--app",
        "web",
        "--stop-signal",
        "QUIT",
    ];
    let mut c = supervise_as_nobody(
        &catch_args(&b, &extra, nginx_args(&nginx, &ndir)),
        &dir.join("run.log"),
        false,
    );
    c.until("nginx to answer", || http_get(port));
    let old = c.programs("nginx: master process");
    assert_eq!(old.len(), 1, "{old:?}");
    let listening = listening_on_port(port);
    assert_eq!(listening.len(), 1, "{listening:?}");

    let load = Load::start(port);
    load.wait_answers(20);
    // SAFETY: signalling the sockpass run this test started.
    unsafe { libc::kill(c.pid(), libc::SIGUSR2) };
    let log = c.log.clone();
    c.until("the restart to be done", || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(!text.contains("restart 1 failed"), "{text}");
        text.contains("restart 1: done").then_some(())
    });
    let after = load.ok.load(Ordering::Relaxed);
    load.wait_answers(after + 50);
    let (ok, refused, failed) = load.finish();
    eprintln!(
        "{ok} answers ({after} before the restart was done), {refused} refused, {failed} failed"
    );
    assert_eq!(
        refused, 0,
        "refused connections ({ok} answered, {failed} failed)"
    );
    assert_eq!(failed, 0, "failed requests ({ok} answered)");
    let new = c.programs("nginx: master process");
    assert_eq!(new.len(), 1, "{new:?}");
    assert_ne!(new[0].pid, old[0].pid, "a new nginx serves");
    assert!(
        socket_inodes(new[0].pid).contains(&listening[0]),
        "the new nginx holds the same socket"
    );
    assert_eq!(
        listening_on_port(port),
        listening,
        "the same socket listens on"
    );
    assert_eq!(held_for_nobody(&b, port).len(), 1, "{:?}", b.status());

    let text = c.text();
    assert_eq!(c.stop(), 0, "nginx stops on SIGTERM: {text}");
    released(&b, port);
    drop(b);
    let _ = std::fs::remove_dir_all(&dir);
}
