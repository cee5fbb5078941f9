//! Real third-party daemons from Debian (unbound, gunicorn) started by
//! `sockpass run` as uid nobody on a privileged port of 127.0.0.1 that a
//! root broker's policy grants them: finding them, the broker, the command
//! (in a process group of its own, reaped whole), their configuration, and
//! DNS and HTTP requests. Used by restart_load.rs (third_party.rs and
//! catch_bind_real.rs use nobody.rs and daemons.rs).

use super::*;
use std::io::{Read, Write};
use std::net::TcpStream;

/// Whether this test may make a mount namespace (unbound needs one to see
/// a booted systemd, see [`sockpass_run_as_nobody`]); says why not.
pub fn mount_namespace_possible() -> bool {
    let ok = Command::new("unshare")
        .args(["-m", "true"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!(
            "skipped: cannot make a mount namespace (unshare -m) to show unbound a booted systemd"
        );
    }
    ok
}

/// A running `sockpass run` (as nobody) and everything it started: its own
/// process group, which is killed and reaped whole on drop (the test is a
/// child subreaper, so the daemon's orphaned workers are its to reap).
pub struct Run {
    child: Option<Child>,
    pub log: PathBuf,
}

/// `sockpass run ARGS` as uid nobody (setpriv: no PAM session), its output
/// in `log`. With `systemd_booted`, in a mount namespace of its own where
/// /run/systemd/system exists: daemons such as unbound take socket
/// activation only when sd_booted() says systemd runs.
pub fn sockpass_run_as_nobody(args: &[String], log: &Path, systemd_booted: bool) -> Run {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl on this process; orphans of the group come back to us.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    // unshare, sh, env and setpriv exec: the pid is sockpass run's.
    let child = sockpass_run_as_nobody_cmd(args, log, systemd_booted)
        .process_group(0)
        .spawn()
        .expect("start sockpass run");
    Run {
        child: Some(child),
        log: log.to_path_buf(),
    }
}

impl Run {
    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    /// What sockpass run and its program wrote so far.
    pub fn text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Send `sig` to sockpass run.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill on our own child's pid, not yet reaped.
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// Wait, bounded, for `f` to give a value while sockpass run runs; a
    /// run that exits first or a wait that runs out fails with its log.
    pub fn until<T>(&mut self, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
        let t0 = std::time::Instant::now();
        loop {
            if let Some(v) = f() {
                return v;
            }
            let c = self.child.as_mut().unwrap();
            if let Some(st) = c.try_wait().unwrap() {
                panic!(
                    "waiting for {what}: sockpass run exited ({st}):\n{}",
                    self.text()
                );
            }
            if t0.elapsed() > WAIT {
                panic!(
                    "timed out after {WAIT:?} waiting for {what}:\n{}",
                    self.text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Wait (bounded) for sockpass run to exit by itself; its exit code.
    pub fn wait(mut self) -> i32 {
        let mut c = self.child.take().unwrap();
        let code = wait_child(&mut c).code().unwrap_or(-1);
        reap_group(c.id() as i32);
        code
    }

    /// Stop sockpass run (it forwards SIGTERM to the daemon) and return its
    /// exit code.
    pub fn stop(self) -> i32 {
        self.signal(libc::SIGTERM);
        self.wait()
    }

    /// The program's instances: sockpass run's children, by pid.
    pub fn instances(&self) -> Vec<i32> {
        children(self.pid())
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pg = c.id() as i32;
            // SAFETY: SIGKILL to the process group this Run made.
            unsafe { libc::kill(-pg, libc::SIGKILL) };
            let _ = c.wait();
            reap_group(pg);
        }
    }
}

/// Reap whatever is left of process group `pg` (orphans came to us as
/// subreaper), killing it after a bounded wait for it to exit by itself.
fn reap_group(pg: i32) {
    let t0 = std::time::Instant::now();
    loop {
        // SAFETY: waitpid on our own process group's children.
        let r = unsafe { libc::waitpid(-pg, std::ptr::null_mut(), libc::WNOHANG) };
        if r < 0 {
            return; // ECHILD: none left
        }
        if r == 0 {
            if t0.elapsed() > WAIT {
                // SAFETY: SIGKILL to the group we made.
                unsafe { libc::kill(-pg, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// The children of `pid`, from /proc/PID/task/*/children.
pub fn children(pid: i32) -> Vec<i32> {
    let mut v = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            let text = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            v.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok()),
            );
        }
    }
    v.sort_unstable();
    v
}

/// Inodes of the sockets listening on 127.0.0.1:`port` over TCP, or bound
/// there over UDP, in this network namespace (accepted connections, which
/// share the port, left out).
pub fn listeners_on_port(udp: bool, port: u16) -> Vec<u64> {
    let file = if udp {
        "/proc/net/udp"
    } else {
        "/proc/net/tcp"
    };
    let want = format!("0100007F:{port:04X}");
    // TCP_LISTEN is 0A; an unconnected UDP socket is TCP_CLOSE, 07.
    let state = if udp { "07" } else { "0A" };
    let text = std::fs::read_to_string(file).unwrap_or_default();
    // A socket may show more than once when the table changes while it
    // is read.
    let mut v: Vec<u64> = text
        .lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            (cols.get(1) == Some(&want.as_str()) && cols.get(3) == Some(&state))
                .then(|| cols.get(9)?.parse().ok())?
        })
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// An unbound configuration in `dir` for 127.0.0.1:`port`, taking its
/// sockets by socket activation (use-systemd) and answering
/// hello.sockpass.test A 192.0.2.7 from local data.
pub fn unbound_conf(dir: &Path, port: u16) -> PathBuf {
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
    conf
}

/// The address unbound's local data gives hello.sockpass.test.
pub const HELLO_A: [u8; 4] = [192, 0, 2, 7];

/// The WSGI app `hello:app` in `dir`: "hello from uid U pid P", with a
/// Content-Length so a client can tell a whole response from a cut one.
/// `/slow` takes half a second; a response given after the worker was
/// sent SIGTERM (gunicorn's graceful stop) ends in " stopping": the app
/// chains a handler of its own before gunicorn's on its first request.
pub fn wsgi_app(dir: &Path) {
    std::fs::write(
        dir.join("hello.py"),
        r#"import os, signal, time
stopping = False
chained = False

def chain():
    theirs = signal.getsignal(signal.SIGTERM)
    def mark(sig, frame):
        global stopping
        stopping = True
        if callable(theirs):
            theirs(sig, frame)
    signal.signal(signal.SIGTERM, mark)

def app(environ, start_response):
    global chained
    if not chained:
        chain()
        chained = True
    if environ.get('PATH_INFO') == '/slow':
        time.sleep(0.5)
    body = b'hello from uid %d pid %d' % (os.getuid(), os.getpid())
    if stopping:
        body += b' stopping'
    start_response('200 OK', [('Content-Type', 'text/plain'),
                              ('Content-Length', str(len(body)))])
    return [body]
"#,
    )
    .unwrap();
}

/// The A record's address of a successful answer to a query with id `id`
/// (its last record).
pub fn dns_answer_id(id: u16, reply: &[u8]) -> Option<[u8; 4]> {
    let ok = reply.len() > 16
        && reply[..2] == id.to_be_bytes()
        && reply[2] & 0x80 != 0
        && reply[3] & 0x0f == 0
        && u16::from_be_bytes([reply[6], reply[7]]) >= 1;
    ok.then(|| reply[reply.len() - 4..].try_into().unwrap())
}

/// A DNS query over TCP on a connection of its own (length-prefixed).
pub fn ask_tcp_on(s: &mut TcpStream, q: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut msg = (q.len() as u16).to_be_bytes().to_vec();
    msg.extend_from_slice(q);
    s.write_all(&msg)?;
    let mut len = [0u8; 2];
    s.read_exact(&mut len)?;
    let mut reply = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut reply)?;
    Ok(reply)
}

/// A daemon's test set up: the program, a privileged port for this test
/// alone, and a root broker whose policy grants nobody that port, in a
/// temp dir (removed with the broker) that holds the daemon's files.
pub struct Setup {
    pub program: PathBuf,
    pub port: u16,
    pub dir: PathBuf,
    pub broker: Broker,
    _one: std::sync::MutexGuard<'static, ()>,
}

impl Setup {
    /// None (skipped, with a message) when `name` cannot be tested here
    /// or `possible` says so.
    fn new(
        name: &str,
        tag: &str,
        protos: &[&str],
        possible: impl FnOnce() -> bool,
    ) -> Option<Setup> {
        let program = daemon_to_test(name)?;
        if !possible() {
            return None;
        }
        let (one, port) = privileged_port()?;
        let grants: Vec<String> = protos
            .iter()
            .map(|p| format!("proto={p} addr=127.0.0.1/32 port={port}"))
            .collect();
        let (dir, broker) = broker_for_nobody(tag, &grants);
        Some(Setup {
            program,
            port,
            dir,
            broker,
            _one: one,
        })
    }

    /// unbound for UDP and TCP with [`unbound_conf`] in the dir.
    pub fn unbound(tag: &str) -> Option<Setup> {
        // unbound takes activated sockets only where systemd runs
        // (sd_booted): a mount namespace of the test's own shows it
        // /run/systemd/system.
        let s = Setup::new("unbound", tag, &["udp", "tcp"], mount_namespace_possible)?;
        unbound_conf(&s.dir, s.port);
        Some(s)
    }

    /// gunicorn for TCP with [`wsgi_app`] in the dir.
    pub fn gunicorn(tag: &str) -> Option<Setup> {
        let s = Setup::new("gunicorn", tag, &["tcp"], || true)?;
        wsgi_app(&s.dir);
        Some(s)
    }

    /// `sockpass run` arguments: `opts`, a request for each of `protos` on
    /// the port, then the program and `args`.
    fn run_args(&self, opts: &[&str], protos: &[&str], args: &[String]) -> Vec<String> {
        let mut v = vec!["--socket".to_string(), path_str(&self.broker.path)];
        v.extend(opts.iter().map(|s| s.to_string()));
        for p in protos {
            v.extend(["--request".into(), format!("{p}:127.0.0.1:{}", self.port)]);
        }
        v.extend(["--".into(), path_str(&self.program)]);
        v.extend_from_slice(args);
        v
    }

    /// `sockpass run OPTS ... -- unbound -d -c CONF`.
    pub fn unbound_args(&self, opts: &[&str]) -> Vec<String> {
        let conf = path_str(&self.dir.join("unbound.conf"));
        self.run_args(opts, &["udp", "tcp"], &["-d".into(), "-c".into(), conf])
    }

    /// `sockpass run OPTS ... -- gunicorn --chdir DIR ARGS hello:app`.
    pub fn gunicorn_args(&self, opts: &[&str], args: &[&str]) -> Vec<String> {
        let mut g = vec!["--chdir".to_string(), path_str(&self.dir)];
        g.extend(args.iter().map(|s| s.to_string()));
        g.push("hello:app".into());
        self.run_args(opts, &["tcp"], &g)
    }

    /// Start `sockpass run ARGS` as nobody, its output in the dir's
    /// `log` (see [`sockpass_run_as_nobody`]).
    pub fn run(&self, args: &[String], log: &str, systemd_booted: bool) -> Run {
        sockpass_run_as_nobody(args, &self.dir.join(log), systemd_booted)
    }
}
