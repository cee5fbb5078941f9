//! Spawn with fds: real children that list /proc/self/fd, real consumers of
//! the systemd protocol that are not ours (Python's socket.socket(fileno=3),
//! libsystemd's sd_listen_fds_with_names), real namespaces.

mod common;

use common::*;
use sockpass::ns::{Namespaces, NsSet};
use sockpass::spawn::{exit_code, EnvBase, Slot, Spawn};
use sockpass::Kind;
use std::collections::BTreeMap;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Lists the child's fds (number, link, CLOEXEC), its pid and LISTEN_* env
/// into the file $OUT.
const PROBE: &str = r#"
import os
me = os.getpid()
lines = ["pid %d" % me]
for n in sorted(int(x) for x in os.listdir("/proc/self/fd")):
    try:
        link = os.readlink("/proc/self/fd/%d" % n)
    except OSError:
        continue
    if link == "/proc/%d/fd" % me:
        continue
    with open("/proc/self/fdinfo/%d" % n) as f:
        flags = int(f.read().split("flags:")[1].split()[0], 8)
    lines.append("fd %d %s %d" % (n, link, 1 if flags & 0o2000000 else 0))
for k in sorted(os.environ):
    if k.startswith("LISTEN_"):
        lines.append("env %s %s" % (k, os.environ[k]))
with open(os.environ["OUT"], "w") as f:
    f.write("\n".join(lines) + "\n")
"#;

/// These tests fork, count fds and place fds at fixed numbers: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Debug, Default)]
struct Probe {
    pid: i32,
    fds: BTreeMap<RawFd, (String, bool)>,
    env: BTreeMap<String, String>,
}

fn read_probe(path: &Path) -> Probe {
    let text = std::fs::read_to_string(path).expect("probe output");
    let mut p = Probe::default();
    for l in text.lines() {
        let w: Vec<&str> = l.splitn(4, ' ').collect();
        match w[0] {
            "pid" => p.pid = w[1].parse().unwrap(),
            "fd" => {
                p.fds
                    .insert(w[1].parse().unwrap(), (w[2].to_string(), w[3] == "1"));
            }
            "env" => {
                let (k, v) = l[4..].split_once(' ').unwrap_or((&l[4..], ""));
                p.env.insert(k.to_string(), v.to_string());
            }
            _ => {}
        }
    }
    p
}

fn link(fd: RawFd) -> String {
    std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

fn probe(out: &Path) -> Spawn {
    let mut s = Spawn::new("python3");
    s.args(["-S", "-c", PROBE]).setenv("OUT", out);
    s
}

fn run_ok(s: Spawn) -> i32 {
    let mut c = s.spawn().expect("spawn");
    let st = c.wait().unwrap();
    assert_eq!(exit_code(st), 0, "child failed");
    c.pid()
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut p = [0; 2];
    assert_eq!(unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) }
}

fn udp() -> OwnedFd {
    sockpass::create::create_socket(&"udp:127.0.0.1:0".parse().unwrap())
        .unwrap()
        .fd
}

/// Put a copy of `fd` at exactly `n` (CLOEXEC, like every fd we hold).
fn at(fd: &OwnedFd, n: RawFd) -> OwnedFd {
    assert_eq!(unsafe { libc::dup3(fd.as_raw_fd(), n, libc::O_CLOEXEC) }, n);
    unsafe { OwnedFd::from_raw_fd(n) }
}

fn count_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn the_child_holds_exactly_the_plan() {
    let _serial = serial();
    let dir = temp_dir("spawn-plan");
    let out = dir.join("out");
    let before = count_fds();
    let sock = udp();
    let (r, _w) = pipe();
    let (sl, rl) = (link(sock.as_raw_fd()), link(r.as_raw_fd()));
    let mut s = probe(&out);
    s.fd(sock, Some("dns"))
        .slot(Slot::Empty { name: None })
        .fd(r, None)
        .slot(Slot::Inherit);
    let pid = run_ok(s);
    let p = read_probe(&out);
    let planned: Vec<RawFd> = p.fds.keys().copied().filter(|n| *n >= 3).collect();
    assert_eq!(planned, [3, 5], "fds >= 3 in the child: {:?}", p.fds);
    assert_eq!(p.fds[&3], (sl, false));
    assert_eq!(p.fds[&5], (rl, false));
    assert_eq!(p.env["LISTEN_FDS"], "4");
    assert_eq!(p.env["LISTEN_FDNAMES"], "dns:empty:unknown:unknown");
    assert_eq!(p.env["LISTEN_PID"], pid.to_string());
    assert_eq!(p.pid, pid);
    assert!(!p.env.contains_key("LISTEN_FDS_FIRST_FD"));
    drop(_w);
    assert_eq!(count_fds(), before, "the parent leaked fds");
}

#[test]
fn collisions_are_resolved() {
    let _serial = serial();
    let dir = temp_dir("spawn-collide");
    let out = dir.join("out");
    let (a, b, c) = (udp(), udp(), udp());
    // Sources swapped with each other's targets, one on its own target, and
    // one on the number right after the plan (where the sync channel would
    // go first).
    let base = 300;
    let a = at(&a, base + 1);
    let b = at(&b, base);
    let c = at(&c, base + 2);
    let d = at(&udp(), base + 3);
    let (la, lb, lc, ld) = (link(base + 1), link(base), link(base + 2), link(base + 3));
    let mut s = probe(&out);
    s.start(base).fd(a, None).fd(b, None).fd(c, None);
    let dcopy = d.try_clone().unwrap();
    s.fd(dcopy, Some("late"));
    run_ok(s);
    let p = read_probe(&out);
    let planned: Vec<RawFd> = p.fds.keys().copied().filter(|n| *n >= 3).collect();
    assert_eq!(planned, [base, base + 1, base + 2, base + 3]);
    assert_eq!(p.fds[&base].0, la);
    assert_eq!(p.fds[&(base + 1)].0, lb);
    assert_eq!(p.fds[&(base + 2)].0, lc, "a source on its own target");
    assert_eq!(p.fds[&(base + 3)].0, ld);
    assert!(p.fds.values().all(|(_, cloexec)| !cloexec));
    assert_eq!(p.env["LISTEN_FDS_FIRST_FD"], base.to_string());
    drop(d);
}

#[test]
fn a_source_on_the_sync_channel_number() {
    let _serial = serial();
    // With one slot at 400, the sync pipes are placed from 401: a source
    // sitting on 401 must still arrive, and the channel still work.
    let dir = temp_dir("spawn-sync");
    let out = dir.join("out");
    let x = at(&udp(), 401);
    let lx = link(401);
    let mut s = probe(&out);
    s.start(400).fd(x, None);
    run_ok(s);
    let p = read_probe(&out);
    assert_eq!(p.fds[&400].0, lx);
    assert!(!p.fds.contains_key(&401));
}

#[test]
fn start_zero_is_inetd_style() {
    let _serial = serial();
    let (mine, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let mut s = Spawn::new("sh");
    s.args(["-c", "echo \"hello $LISTEN_FDS_FIRST_FD\" >&0"])
        .start(0)
        .fd(theirs.into(), None);
    run_ok(s);
    let mut buf = String::new();
    let mut mine = mine;
    mine.set_read_timeout(Some(WAIT)).unwrap();
    mine.read_to_string(&mut buf).unwrap();
    assert_eq!(buf, "hello 0\n");
}

#[test]
fn start_ten() {
    let _serial = serial();
    let dir = temp_dir("spawn-ten");
    let out = dir.join("out");
    let mut s = probe(&out);
    s.start(10).fd(udp(), None).fd(udp(), None);
    run_ok(s);
    let p = read_probe(&out);
    let planned: Vec<RawFd> = p.fds.keys().copied().filter(|n| *n >= 3).collect();
    assert_eq!(planned, [10, 11]);
    assert_eq!(p.env["LISTEN_FDS_FIRST_FD"], "10");
}

fn listener() -> (OwnedFd, u16) {
    let c =
        sockpass::create::create_socket(&"tcp:127.0.0.1:0?backlog=16".parse().unwrap()).unwrap();
    (c.fd, c.port)
}

#[test]
fn python_socket_fileno_3_serves_a_connection() {
    let _serial = serial();
    let (fd, port) = listener();
    let mut s = Spawn::new("python3");
    s.args([
        "-S",
        "-c",
        "import socket,os\n\
         assert os.environ['LISTEN_PID'] == str(os.getpid())\n\
         l = socket.socket(fileno=3)\n\
         c, _ = l.accept()\n\
         c.sendall(b'served by python ' + os.environ['LISTEN_FDNAMES'].encode())\n\
         c.close()",
    ])
    .fd(fd, Some("web"));
    let mut child = s.spawn().unwrap();
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    conn.set_read_timeout(Some(WAIT)).unwrap();
    let mut got = String::new();
    conn.read_to_string(&mut got).unwrap();
    assert_eq!(got, "served by python web");
    assert_eq!(exit_code(child.wait().unwrap()), 0);
}

fn consumer_bin() -> Option<PathBuf> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/consumers/sd_listen.c");
    let out = temp_dir("sd-listen").join("sd_listen");
    let ok = Command::new("cc")
        .arg(&src)
        .arg("-o")
        .arg(&out)
        .arg("-lsystemd")
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    ok.then_some(out)
}

#[test]
fn libsystemd_sd_listen_fds_with_names() {
    let _serial = serial();
    let Some(bin) = consumer_bin() else {
        eprintln!("skipped: cannot build tests/consumers/sd_listen.c (libsystemd-dev missing)");
        return;
    };
    let (l, _) = listener();
    let dir = temp_dir("sd-listen-out");
    let out = dir.join("out");
    let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
    let mut s = Spawn::new("sh");
    s.args(["-c", "exec \"$0\" > \"$OUT\"", bin.to_str().unwrap()])
        .setenv("OUT", &out)
        .fd(l, Some("http"))
        .fd(udp(), Some("dns"))
        .fd(a.into(), Some("ctl"));
    run_ok(s);
    assert_eq!(
        std::fs::read_to_string(&out).unwrap().trim(),
        "3 http:inet-listening dns:inet ctl:unix"
    );
}

#[test]
fn environment_control() {
    let _serial = serial();
    let dir = temp_dir("spawn-env");
    let out = dir.join("out");
    let mut s = Spawn::new("/bin/sh");
    s.args(["-c", "env > \"$OUT\""])
        .env_base(EnvBase::Clear)
        .setenv("OUT", &out)
        .setenv("A", "1")
        .setenv("B", "2")
        .unsetenv("B")
        .listen_env(false)
        .fd(udp(), None);
    run_ok(s);
    let mut env: Vec<String> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("PWD=") && !l.starts_with("SHLVL=") && !l.starts_with("_="))
        .map(str::to_string)
        .collect();
    env.sort();
    assert_eq!(env, ["A=1".to_string(), format!("OUT={}", out.display())]);
}

#[test]
fn paused_start_then_resume() {
    let _serial = serial();
    let dir = temp_dir("spawn-pause");
    let out = dir.join("out");
    let mut s = Spawn::new("/bin/sh");
    s.args(["-c", "echo ran > \"$OUT\""])
        .setenv("OUT", &out)
        .paused(true);
    let mut c = s.spawn().unwrap();
    assert!(c.is_paused());
    assert!(c.pid() > 0);
    // Paused before exec: it is still a copy of this test binary.
    let exe = std::fs::read_link(format!("/proc/{}/exe", c.pid())).unwrap();
    assert_eq!(exe, std::env::current_exe().unwrap());
    assert!(!out.exists());
    c.resume().unwrap();
    assert_eq!(exit_code(c.wait().unwrap()), 0);
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "ran\n");
}

#[test]
fn exec_failure_is_an_error_with_step_and_errno() {
    let _serial = serial();
    let before = count_fds();
    let e = Spawn::new("/nonexistent/program").spawn().unwrap_err();
    assert_eq!(e.kind(), Kind::ChildFailed, "{e}");
    assert_eq!(e.errno(), libc::ENOENT);
    assert!(e.message().contains("exec"), "{e}");
    let dir = temp_dir("spawn-noexec");
    let f = dir.join("not-executable");
    std::fs::write(&f, "#!/bin/sh\n").unwrap();
    let e = Spawn::new(&f).spawn().unwrap_err();
    assert_eq!(e.errno(), libc::EACCES, "{e}");
    // A paused child whose exec fails reports at resume.
    let mut s = Spawn::new("/nonexistent/program");
    s.paused(true);
    let mut c = s.spawn().unwrap();
    let e = c.resume().unwrap_err();
    assert_eq!(e.errno(), libc::ENOENT);
    assert_eq!(count_fds(), before, "the parent leaked fds");
}

#[test]
fn bad_input_is_refused_before_spawning() {
    let _serial = serial();
    let before = count_fds();
    // A closed source fd.
    let mut s = Spawn::new("/bin/true");
    let closed = unsafe { std::os::fd::BorrowedFd::borrow_raw(999) };
    assert!(s.dup_fd(closed, None).is_err());
    // Invalid names.
    for bad in ["a:b", "", "tab\there", &"x".repeat(256), "é"] {
        let mut s = Spawn::new("/bin/true");
        s.fd(udp(), Some(bad));
        let e = s.spawn().unwrap_err();
        assert_eq!(e.kind(), Kind::BadRequest, "{bad:?}: {e}");
    }
    // Two fds planned at one number.
    let mut s = Spawn::new("/bin/true");
    s.fd(udp(), None).fd_at(udp(), 3);
    let e = s.spawn().unwrap_err();
    assert!(e.message().contains("two fds"), "{e}");
    // A start index past the fd limit.
    let mut s = Spawn::new("/bin/true");
    s.start(i32::MAX - 5).fd(udp(), None);
    let e = s.spawn().unwrap_err();
    assert!(e.message().contains("fd limit"), "{e}");
    let mut s = Spawn::new("/bin/true");
    s.start(-1);
    assert!(s.spawn().is_err());
    // A dead target pid.
    let e = Namespaces::open(i32::MAX - 7, NsSet::default_join()).unwrap_err();
    assert!(e.message().contains("does not exist"), "{e}");
    assert_eq!(count_fds(), before);
}

/// A process in fresh namespaces made by `unshare`; killed on drop.
struct Holder(std::process::Child);

impl Holder {
    fn start(flags: &[&str]) -> Option<Holder> {
        let c = Command::new("unshare")
            .args(flags)
            .args(["--", "sleep", "600"])
            .stdin(Stdio::null())
            .spawn()
            .ok()?;
        Some(Holder(c))
    }

    fn pid(&self) -> i32 {
        self.0.id() as i32
    }

    /// The first child of the holder (with --fork, the process inside).
    fn inner_pid(&self) -> i32 {
        wait_for("the namespaced process", || {
            let s =
                std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", self.pid())).ok()?;
            s.split_whitespace().next()?.parse().ok()
        })
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn joining_a_network_namespace() {
    let _serial = serial();
    if !is_root() {
        eprintln!("skipped: joining namespaces needs root");
        return;
    }
    let h = Holder::start(&["--net"]).expect("unshare --net");
    wait_for("the holder to be in its netns", || {
        let mine = std::fs::read_link("/proc/self/ns/net").ok()?;
        let its = std::fs::read_link(format!("/proc/{}/ns/net", h.pid())).ok()?;
        (mine != its).then_some(())
    });
    let (fd, port) = listener();
    let ns = Namespaces::open(h.pid(), "net".parse().unwrap()).unwrap();
    let mut s = Spawn::new("python3");
    s.args([
        "-S",
        "-c",
        "import socket\n\
         names = sorted(n for _, n in socket.if_nameindex())\n\
         l = socket.socket(fileno=3)\n\
         c, _ = l.accept()\n\
         c.sendall(','.join(names).encode())\n\
         c.close()",
    ])
    .fd(fd, None)
    .join(ns);
    let mut child = s.spawn().unwrap();
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    conn.set_read_timeout(Some(WAIT)).unwrap();
    let mut got = String::new();
    conn.read_to_string(&mut got).unwrap();
    assert_eq!(got, "lo", "the child sees only its namespace's interfaces");
    assert_eq!(exit_code(child.wait().unwrap()), 0);
}

#[test]
fn joining_a_pid_namespace() {
    let _serial = serial();
    if !is_root() {
        eprintln!("skipped: joining namespaces needs root");
        return;
    }
    let h = Holder::start(&["--pid", "--fork", "--mount-proc"]).expect("unshare --pid");
    let inner = h.inner_pid();
    let dir = temp_dir("spawn-pidns");
    let out = dir.join("out");
    let ns = Namespaces::open(inner, "pid,mnt".parse().unwrap()).unwrap();
    let mut s = Spawn::new("python3");
    s.args([
        "-S",
        "-c",
        "import os\nopen(os.environ['OUT'], 'w').write('%d %s' % (os.getpid(), os.environ['LISTEN_PID']))",
    ])
    .setenv("OUT", &out)
    .fd(udp(), None)
    .join(ns);
    let mut c = s.spawn().unwrap();
    let (host, nsp) = (c.pid(), c.ns_pid());
    assert_eq!(exit_code(c.wait().unwrap()), 0);
    // The out path is under /tmp, shared with the holder's mount namespace
    // (unshare --mount-proc only remounts /proc).
    let text = std::fs::read_to_string(&out).unwrap();
    let (me, listen_pid) = text.split_once(' ').unwrap();
    assert_eq!(me, listen_pid, "LISTEN_PID is the pid the child sees");
    assert_eq!(me, nsp.to_string());
    assert_ne!(host, nsp, "the host sees another pid");
    assert!(nsp < 10, "a small pid inside the new namespace: {nsp}");
}

#[test]
fn a_namespace_that_cannot_be_joined_names_it() {
    let _serial = serial();
    // Re-entering our own user namespace is EINVAL (setns(2)).
    let me = std::process::id() as i32;
    let ns = Namespaces::open(me, "user".parse().unwrap()).unwrap();
    let mut s = Spawn::new("/bin/true");
    s.join(ns);
    let e = s.spawn().unwrap_err();
    assert_eq!(e.kind(), Kind::ChildFailed);
    assert_eq!(e.errno(), libc::EINVAL);
    assert!(e.message().contains("user namespace"), "{e}");
}
