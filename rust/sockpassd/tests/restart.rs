//! Restarts through `sockpass run` (SIGUSR2 and `sockpass restart NAME`),
//! with a small Python server that serves on the fd-3 listener it is given
//! and answers each connection with its pid and that socket's inode. What
//! the next instance does at start comes from a file, as every instance is
//! started from the same command line.

mod common;

use common::*;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The server: MODE (read from DIR/mode at start) is `ok`, `exit3` (exit
/// 3 at once), `hang` (never ready) or `slow` (ready after 1.5 s). It
/// writes its port to DIR/port, appends its pid to DIR/started, logs
/// SIGHUP to DIR/hup and exits 42 on SIGUSR1.
const SERVER: &str = r#"
import os, socket, signal, sys, time
d = sys.argv[1]
mode = open(os.path.join(d, "mode")).read().strip()
with open(os.path.join(d, "started"), "a") as f:
    f.write("%d\n" % os.getpid())
if mode == "exit3":
    sys.exit(3)
l = socket.socket(fileno=3)
def hup(*a):
    with open(os.path.join(d, "hup"), "a") as f:
        f.write("%d\n" % os.getpid())
signal.signal(signal.SIGHUP, hup)
signal.signal(signal.SIGUSR1, lambda *a: os._exit(42))
tmp = os.path.join(d, "port.%d" % os.getpid())
open(tmp, "w").write(str(l.getsockname()[1]))
os.rename(tmp, os.path.join(d, "port"))
if mode == "slow":
    time.sleep(1.5)
if mode != "hang" and os.environ.get("NOTIFY_SOCKET"):
    n = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    n.connect(os.environ["NOTIFY_SOCKET"])
    n.send(b"READY=1")
    n.close()
while True:
    c, _ = l.accept()
    c.sendall(("%d %d\n" % (os.getpid(), os.fstat(3).st_ino)).encode())
    c.close()
"#;

struct Run {
    dir: PathBuf,
    child: Option<Child>,
}

impl Run {
    /// `sockpass run -l tcp:127.0.0.1:0 --name DIR/ctl EXTRA -- python3
    /// server DIR`, its stderr in DIR/err; waits until it serves.
    fn start(tag: &str, extra: &[&str]) -> Run {
        let dir = temp_dir(tag);
        let ctl = path_str(&dir.join("ctl"));
        Run::start_named(dir, &ctl, extra)
    }

    fn start_named(dir: PathBuf, name: &str, extra: &[&str]) -> Run {
        Run::start_in(dir, name, extra, &[])
    }

    fn start_in(dir: PathBuf, name: &str, extra: &[&str], env: &[(&str, &Path)]) -> Run {
        std::fs::write(dir.join("server.py"), SERVER).unwrap();
        std::fs::write(dir.join("mode"), "ok").unwrap();
        let err = std::fs::File::create(dir.join("err")).unwrap();
        let child = Command::new(sockpass_bin())
            .args(["run", "-l", "tcp:127.0.0.1:0", "--name", name])
            .args(extra)
            .args(["--", "python3", "-S"])
            .arg(dir.join("server.py"))
            .arg(&dir)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .expect("start sockpass run");
        let r = Run {
            dir,
            child: Some(child),
        };
        r.ask();
        r
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill on our own child, not reaped yet.
        assert_eq!(unsafe { libc::kill(self.pid(), sig) }, 0);
    }

    fn mode(&self, m: &str) {
        std::fs::write(self.dir.join("mode"), m).unwrap();
    }

    /// (pid, socket inode) of the instance that answers a connection.
    fn ask(&self) -> (i32, u64) {
        wait_for("the server to answer", || {
            let port: u16 = std::fs::read_to_string(self.dir.join("port"))
                .ok()?
                .parse()
                .ok()?;
            let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
            c.set_read_timeout(Some(WAIT)).unwrap();
            let mut s = String::new();
            c.read_to_string(&mut s).ok()?;
            let mut w = s.split_whitespace();
            Some((w.next()?.parse().ok()?, w.next()?.parse().ok()?))
        })
    }

    fn err(&self) -> String {
        std::fs::read_to_string(self.dir.join("err")).unwrap_or_default()
    }

    fn wait_err(&self, what: &str) -> String {
        wait_for(what, || Some(self.err()).filter(|e| e.contains(what)));
        self.err()
    }

    fn started(&self) -> Vec<i32> {
        std::fs::read_to_string(self.dir.join("started"))
            .unwrap_or_default()
            .lines()
            .map(|l| l.parse().unwrap())
            .collect()
    }

    fn restart_cmd(&self) -> (i32, String, String) {
        self.restart_by(&path_str(&self.dir.join("ctl")))
    }

    fn restart_by(&self, what: &str) -> (i32, String, String) {
        let out = Command::new(sockpass_bin())
            .arg("restart")
            .arg(what)
            .args(["--timeout", "60"])
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Stop with `sig` and reap; run's exit code.
    fn finish(&mut self, sig: i32) -> i32 {
        self.signal(sig);
        let mut c = self.child.take().unwrap();
        wait_child(&mut c).code().unwrap_or(-1)
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            // Its instances lose their parent: stop them too.
            for p in self.started() {
                // SAFETY: kill by pid on processes this test started.
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// The Sig* lines of /proc/PID/status (blocked, ignored, caught), and
/// its state.
fn signal_masks(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("Sig") || l.starts_with("State") || l.starts_with("ShdPnd"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Whether `pid` still exists, a zombie not yet reaped included.
fn alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn gone(pid: i32) {
    wait_for("the old instance to be reaped", || {
        (!alive(pid)).then_some(())
    });
}

#[test]
fn sigusr2_restart_keeps_the_socket_and_replaces_the_process() {
    let mut r = Run::start("usr2", &["--wait-ready", "notify"]);
    let (old, ino) = r.ask();
    // The socket the instance has at fd 3 is the one it reports.
    let link = std::fs::read_link(format!("/proc/{old}/fd/3")).unwrap();
    assert_eq!(link.to_string_lossy(), format!("socket:[{ino}]"));
    r.signal(libc::SIGUSR2);
    let err = r.wait_err("restart 1: done");
    let fds_after_one = fd_count(r.pid());
    let (new, ino2) = r.ask();
    assert_ne!(new, old, "{err}");
    assert_eq!(ino2, ino, "the same listening socket");
    let link = std::fs::read_link(format!("/proc/{new}/fd/3")).unwrap();
    assert_eq!(link.to_string_lossy(), format!("socket:[{ino}]"));
    gone(old);
    assert!(
        err.contains(&format!(
            "old instance {old} was killed by signal 15, new instance {new}"
        )),
        "{err}"
    );
    // SIGHUP goes to the current instance, and run lives on.
    r.signal(libc::SIGHUP);
    let hup = || std::fs::read_to_string(r.dir.join("hup")).unwrap_or_default();
    let t0 = Instant::now();
    while hup().trim() != new.to_string() {
        // Seen once in CI (stop 42) and not since: say all there is to see.
        assert!(
            t0.elapsed() < WAIT,
            "the SIGHUP did not reach the new instance {new} within {WAIT:?}; \
             hup file {:?}; run alive {}, new alive {}; new's signals {:?}; \
             run's signals {:?}; run's stderr:\n{}",
            hup(),
            alive(r.pid()),
            alive(new),
            signal_masks(new),
            signal_masks(r.pid()),
            r.err()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(r.ask().0, new);
    // Another restart leaves run holding what it held: each instance's
    // copies and readiness channel are closed.
    r.signal(libc::SIGUSR2);
    let err = r.wait_err("restart 2: done");
    assert_eq!(fd_count(r.pid()), fds_after_one, "{err}");
    // run's exit status is the current instance's (SIGUSR1 makes it exit 42).
    assert_eq!(r.finish(libc::SIGUSR1), 42);
    assert!(!r.dir.join("ctl").exists(), "the control socket is removed");
}

/// `run --wait-ready` took `$NOTIFY_SOCKET` from its program, so it tells
/// its own manager (systemd with Type=notify) what the program would have:
/// READY=1 with run's pid as MAINPID once the first instance is ready, each
/// restart as STATUS=, and STOPPING=1 on SIGTERM.
#[test]
fn the_service_manager_hears_ready_restarts_and_stopping() {
    let dir = temp_dir("manager");
    let sock = dir.join("manager");
    let mgr = std::os::unix::net::UnixDatagram::bind(&sock).unwrap();
    mgr.set_read_timeout(Some(WAIT)).unwrap();
    let ctl = path_str(&dir.join("ctl"));
    let mut r = Run::start_in(
        dir,
        &ctl,
        &["--wait-ready", "notify"],
        &[("NOTIFY_SOCKET", sock.as_path())],
    );
    let next = || {
        let mut b = [0u8; 4096];
        let n = mgr.recv(&mut b).expect("a message to the manager");
        String::from_utf8_lossy(&b[..n]).into_owned()
    };
    let (first, _) = r.ask();
    let m = next();
    assert!(m.starts_with("READY=1\n"), "{m}");
    assert!(m.contains(&format!("MAINPID={}\n", r.pid())), "{m}");
    assert!(
        m.contains(&format!("STATUS=instance {first} serves")),
        "{m}"
    );
    r.signal(libc::SIGUSR2);
    r.wait_err("restart 1: done");
    let (second, _) = r.ask();
    let m = next();
    assert_eq!(
        m,
        format!("STATUS=restart 1: new instance {second} ready, stopping {first}")
    );
    let m = next();
    assert_eq!(
        m,
        format!("STATUS=instance {second} serves (restart 1 done)")
    );
    // The program's own READY=1 went to run, not to the manager.
    r.signal(libc::SIGTERM);
    assert_eq!(next(), "STOPPING=1");
    let mut c = r.child.take().unwrap();
    wait_child(&mut c);
    gone(second);
    mgr.set_nonblocking(true).unwrap();
    let mut b = [0u8; 64];
    assert!(mgr.recv(&mut b).is_err(), "nothing more");
}

#[test]
fn restart_command_reports_success_and_failure() {
    let mut r = Run::start("cmd", &["--wait-ready", "notify"]);
    let (first, ino) = r.ask();
    let (code, out, err) = r.restart_cmd();
    assert_eq!(code, 0, "{err}");
    let second: i32 = out.trim().parse().unwrap();
    assert_eq!(r.ask(), (second, ino));
    gone(first);

    // A new instance that exits at start: the old one serves on, and the
    // command exits with the new one's status.
    r.mode("exit3");
    let (code, _, err) = r.restart_cmd();
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("exited with status 3 before it was ready"),
        "{err}"
    );
    let failed = *r.started().last().unwrap();
    assert!(!alive(failed), "the failed instance is reaped");
    assert_eq!(r.ask(), (second, ino));
    let log = r.wait_err("restart 2 failed");
    assert!(
        log.contains(&format!("instance {second} keeps serving")),
        "{log}"
    );

    // A second run cannot take the same name while this one holds it.
    let out = Command::new(sockpass_bin())
        .args(["run", "--name"])
        .arg(r.dir.join("ctl"))
        .args(["--", "true"])
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("held by a running sockpass run"), "{e}");
    assert_eq!(r.ask(), (second, ino));

    assert_eq!(r.finish(libc::SIGTERM), 128 + libc::SIGTERM);
    // Nobody answers now: the command says so and fails.
    let (code, _, err) = r.restart_cmd();
    assert_ne!(code, 0, "{err}");
}

#[test]
fn a_new_instance_never_ready_is_stopped_after_the_timeout() {
    let mut r = Run::start(
        "hang",
        &["--wait-ready", "notify", "--restart-timeout", "1"],
    );
    let (old, ino) = r.ask();
    r.mode("hang");
    let t0 = Instant::now();
    let (code, _, err) = r.restart_cmd();
    // Stopped by SIGTERM: its status is the command's code.
    assert_eq!(code, 128 + libc::SIGTERM, "{err}");
    assert!(err.contains("was not ready within"), "{err}");
    assert!(t0.elapsed() >= Duration::from_millis(900));
    // Its pid from the message (under load it may be stopped before it
    // wrote anything).
    let hung: i32 = err
        .split("new instance ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{err}"));
    assert_ne!(hung, old);
    assert!(!alive(hung), "the hung instance is reaped");
    assert_eq!(r.ask(), (old, ino));
    assert_eq!(r.finish(libc::SIGTERM), 128 + libc::SIGTERM);
}

#[test]
fn a_restart_asked_for_during_one_is_queued() {
    let mut r = Run::start("queue", &["--wait-ready", "notify"]);
    let (first, ino) = r.ask();
    r.mode("slow");
    r.signal(libc::SIGUSR2);
    r.wait_err("restart 1 (SIGUSR2): starting");
    // Two more while the first is under way: one queued restart.
    r.signal(libc::SIGUSR2);
    r.signal(libc::SIGUSR2);
    let err = r.wait_err("restart 2: done");
    assert!(err.contains("restart 2 (SIGUSR2): queued"), "{err}");
    let started = r.started();
    assert_eq!(started.len(), 3, "one start and two restarts: {err}");
    assert!(!err.contains("restart 3"), "{err}");
    // Never two restarts at once: the second started after the first's
    // old instance was reaped.
    let done1 = err.find("restart 1: done").unwrap();
    let start2 = err.find("restart 2: new instance").unwrap();
    assert!(done1 < start2, "{err}");
    assert_eq!(r.ask(), (started[2], ino));
    gone(first);
    gone(started[1]);
    assert_eq!(r.finish(libc::SIGINT), 128 + libc::SIGINT);
}

#[test]
fn without_readiness_a_grace_period_stands_in() {
    // Long enough for a loaded machine to start Python and see it exit 3
    // within the grace (or the exit would come after the handover).
    let mut r = Run::start("grace", &["--restart-grace", "5", "--drain-timeout", "5"]);
    let (old, ino) = r.ask();
    r.mode("exit3");
    let (code, _, err) = r.restart_cmd();
    assert_eq!(code, 3, "{err}");
    assert_eq!(r.ask(), (old, ino));
    r.mode("ok");
    let (code, out, err) = r.restart_cmd();
    assert_eq!(code, 0, "{err}");
    let new: i32 = out.trim().parse().unwrap();
    assert_eq!(r.ask(), (new, ino));
    gone(old);
    assert_eq!(r.finish(libc::SIGTERM), 128 + libc::SIGTERM);
}

#[test]
fn library_event_loop_queues_one_restart_and_reaps_every_instance() {
    use sockpass::{SuperviseEvent as Event, SuperviseOptions, Supervisor};
    let dir = temp_dir("lib");
    std::fs::write(dir.join("server.py"), SERVER).unwrap();
    std::fs::write(dir.join("mode"), "ok").unwrap();
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let mut sp = sockpass::Spawn::new("python3");
    sp.arg("-S").arg(dir.join("server.py")).arg(&dir);
    sp.fd(std::os::fd::OwnedFd::from(l), Some("web"));
    let opts = SuperviseOptions {
        ready: Some(sockpass::Method::Notify),
        ..SuperviseOptions::default()
    };
    let mut sup = Supervisor::start(sp, opts).unwrap();
    sup.wait_ready(Some(WAIT)).unwrap();
    let first = sup.pid().unwrap();
    std::fs::write(dir.join("mode"), "slow").unwrap();
    assert_eq!(sup.request_restart().unwrap(), 1);
    assert_eq!(sup.request_restart().unwrap(), 2, "queued");
    assert_eq!(sup.request_restart().unwrap(), 2, "joins the queued one");
    let mut seen = Vec::new();
    let t0 = Instant::now();
    while !seen
        .iter()
        .any(|e| matches!(e, Event::Restarted(r) if r.id == 2))
    {
        assert!(t0.elapsed() < WAIT, "{seen:?}");
        seen.extend(sup.advance());
        sup.poll(None, Some(Duration::from_secs(1))).unwrap();
    }
    let kinds: Vec<(u64, &str)> = seen
        .iter()
        .map(|e| match e {
            Event::HandedOver { id, .. } => (*id, "handed over"),
            Event::Restarted(r) => (r.id, "restarted"),
            Event::RestartFailed(f) => (f.id, "failed"),
            Event::Exited(_) => (0, "exited"),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            (1, "handed over"),
            (1, "restarted"),
            (2, "handed over"),
            (2, "restarted")
        ]
    );
    let started: Vec<i32> = std::fs::read_to_string(dir.join("started"))
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(started.len(), 3);
    assert_eq!(sup.pid(), Some(started[2]));
    assert!(!alive(first) && !alive(started[1]));
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut s = String::new();
    c.read_to_string(&mut s).unwrap();
    assert!(s.starts_with(&format!("{} ", started[2])), "{s}");
    sup.terminate(libc::SIGTERM);
    let st = sup.wait_timeout(Some(WAIT)).unwrap().expect("exited");
    assert!(libc::WIFSIGNALED(st) && libc::WTERMSIG(st) == libc::SIGTERM);
    assert!(sup.request_restart().is_err());
    assert!(!alive(started[2]));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn restart_by_name_in_the_runtime_dir_and_by_pid() {
    let dir = temp_dir("named");
    let name = format!("sockpass-test-{}", std::process::id());
    let mut r = Run::start_named(dir, &name, &["--wait-ready", "notify"]);
    let (first, ino) = r.ask();
    // By name, by run's pid, by the program's pid.
    let (code, out, err) = r.restart_by(&name);
    assert_eq!(code, 0, "{err}");
    let second: i32 = out.trim().parse().unwrap();
    assert_ne!(second, first);
    let (code, out, err) = r.restart_by(&r.pid().to_string());
    assert_eq!(code, 0, "{err}");
    let third: i32 = out.trim().parse().unwrap();
    let (code, out, err) = r.restart_by(&third.to_string());
    assert_eq!(code, 0, "{err}");
    let fourth: i32 = out.trim().parse().unwrap();
    assert_eq!(r.ask(), (fourth, ino));
    // A pid that is no sockpass run, and a name nobody holds.
    let (code, _, err) = r.restart_by(&std::process::id().to_string());
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("is not a sockpass run with a --name"), "{err}");
    let (code, _, err) = r.restart_by(&format!("{name}-none"));
    assert_eq!(code, 1, "{err}");
    assert_eq!(r.finish(libc::SIGTERM), 128 + libc::SIGTERM);
}
