//! Spawn with fds: real children that list /proc/self/fd, real consumers of
//! the systemd protocol that are not ours (Python's socket.socket(fileno=3),
//! libsystemd's sd_listen_fds_with_names), real namespaces.

mod common;

use common::*;
use sockpass::Kind;
use sockpass::{exit_code, EnvBase, Slot, Spawn};
use sockpass::{Namespaces, NsSet};
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

/// A paused child that, once resumed, writes "ran\n" to `out`.
fn paused_echo(out: &Path) -> Spawn {
    let mut s = Spawn::new("/bin/sh");
    s.args(["-c", "echo ran > \"$OUT\""])
        .setenv("OUT", out)
        .paused(true);
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
    sockpass_broker::create::create_socket(&"udp:127.0.0.1:0".parse().unwrap())
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
    let c = sockpass_broker::create::create_socket(&"tcp:127.0.0.1:0?backlog=16".parse().unwrap())
        .unwrap();
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

/// Pins what a hole in the set does to a libsystemd consumer: the empty
/// slot's number is closed, and sd_listen_fds_with_names refuses the whole
/// set with -EBADF (the documented cost of the empty-slot semantics).
#[test]
fn libsystemd_rejects_a_set_with_an_empty_slot() {
    let _serial = serial();
    let Some(bin) = consumer_bin() else {
        eprintln!("skipped: cannot build tests/consumers/sd_listen.c (libsystemd-dev missing)");
        return;
    };
    let dir = temp_dir("sd-listen-hole");
    let (out, err) = (dir.join("out"), dir.join("err"));
    let mut s = Spawn::new("sh");
    s.args([
        "-c",
        "exec \"$0\" > \"$OUT\" 2> \"$ERR\"",
        bin.to_str().unwrap(),
    ])
    .setenv("OUT", &out)
    .setenv("ERR", &err)
    .fd(udp(), Some("dns"))
    .slot(Slot::Empty { name: None })
    .fd(udp(), Some("late"));
    let mut c = s.spawn().unwrap();
    assert_eq!(
        exit_code(c.wait().unwrap()),
        1,
        "sd_listen.c exits 1 on error"
    );
    assert_eq!(
        std::fs::read_to_string(&err).unwrap().trim(),
        format!("sd_listen_fds_with_names: {}", -libc::EBADF)
    );
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "");
    // The same consumer takes the set without the hole.
    let mut s = Spawn::new("sh");
    s.args(["-c", "exec \"$0\" > \"$OUT\"", bin.to_str().unwrap()])
        .setenv("OUT", &out)
        .fd(udp(), Some("dns"))
        .fd(udp(), Some("late"));
    run_ok(s);
    assert_eq!(
        std::fs::read_to_string(&out).unwrap().trim(),
        "2 dns:inet late:inet"
    );
}

#[test]
fn an_inherit_slot_keeps_the_parents_fd() {
    let _serial = serial();
    let dir = temp_dir("spawn-inherit");
    let out = dir.join("out");
    // A CLOEXEC pipe at 7, as every fd of ours is; 6 is planned, 7 is
    // inherited and must arrive without CLOEXEC.
    let (r, _w) = pipe();
    let seven = at(&r, 7);
    assert!(sockpass::sys::is_cloexec(7));
    let (sock, lseven) = (udp(), link(7));
    let lsock = link(sock.as_raw_fd());
    let mut s = probe(&out);
    s.start(6).fd(sock, Some("first")).slot(Slot::Inherit);
    run_ok(s);
    let p = read_probe(&out);
    let planned: Vec<RawFd> = p.fds.keys().copied().filter(|n| *n >= 3).collect();
    assert_eq!(planned, [6, 7], "{:?}", p.fds);
    assert_eq!(p.fds[&6], (lsock, false));
    assert_eq!(p.fds[&7], (lseven, false), "inherited, CLOEXEC cleared");
    assert_eq!(p.env["LISTEN_FDNAMES"], "first:unknown");
    // Ours is untouched.
    assert!(sockpass::sys::is_cloexec(7));
    drop(seven);
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
    let s = paused_echo(&out);
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
fn waiting_on_a_paused_child_resumes_it() {
    let _serial = serial();
    let dir = temp_dir("spawn-pause-wait");
    let out = dir.join("out");
    let s = paused_echo(&out);
    let mut c = s.spawn().unwrap();
    // A bounded wait leaves it paused.
    assert_eq!(c.wait_timeout(std::time::Duration::ZERO).unwrap(), None);
    assert!(c.is_paused());
    assert_eq!(exit_code(c.wait().unwrap()), 0, "the program ran, no 127");
    assert!(!c.is_paused());
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "ran\n");
    // A paused child whose exec fails: wait gives that error, then its status.
    let mut s = Spawn::new("/nonexistent/program");
    s.paused(true);
    let mut c = s.spawn().unwrap();
    let e = c.wait().unwrap_err();
    assert_eq!(
        (e.kind(), e.errno()),
        (Kind::ChildFailed, libc::ENOENT),
        "{e}"
    );
    assert_eq!(exit_code(c.wait().unwrap()), 127);
}

#[test]
fn dropping_a_paused_child_resumes_it() {
    let _serial = serial();
    let dir = temp_dir("spawn-pause-drop");
    let out = dir.join("out");
    let s = paused_echo(&out);
    let c = s.spawn().unwrap();
    let pid = c.pid();
    drop(c);
    // Not reaped by the drop: reap it here.
    let mut st = 0;
    assert_eq!(unsafe { libc::waitpid(pid, &mut st, 0) }, pid);
    assert_eq!(exit_code(st), 0, "the program ran, no 127");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "ran\n");
}

extern "C" fn on_winch(_: libc::c_int) {}

/// The signal fields of /proc/PID/status, as hex masks.
fn signal_masks(pid: i32) -> BTreeMap<String, u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            let v = u64::from_str_radix(v.trim(), 16).ok()?;
            k.starts_with("Sig")
                .then(|| (k.to_string(), v))
                .or_else(|| (k == "ShdPnd").then(|| (k.to_string(), v)))
        })
        .collect()
}

#[test]
fn a_paused_child_has_no_handlers_and_survives_signals() {
    let _serial = serial();
    // A handler without SA_RESTART in the parent (as CPython's SIGINT
    // handler): it must not run in the child nor break its wait with EINTR.
    let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
    act.sa_sigaction = on_winch as *const () as usize;
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    assert_eq!(
        unsafe { libc::sigaction(libc::SIGWINCH, &act, &mut old) },
        0
    );
    let dir = temp_dir("spawn-signals");
    let out = dir.join("out");
    let s = paused_echo(&out);
    let mut c = s.spawn().unwrap();
    let m = signal_masks(c.pid());
    let winch = 1u64 << (libc::SIGWINCH - 1);
    // Signals 32 and 33 are glibc's own (thread cancel, setxid): its
    // sigaction refuses them, and nothing sends them to this process.
    let glibc = 3u64 << 31;
    assert_eq!(
        m["SigCgt"] & !glibc,
        0,
        "no handler is left in the child: {m:?}"
    );
    assert_eq!(m["SigBlk"], 0, "nothing blocked: {m:?}");
    assert_ne!(
        m["SigIgn"] & (1 << (libc::SIGPIPE - 1)),
        1 << (libc::SIGPIPE - 1)
    );
    for _ in 0..3 {
        c.kill(libc::SIGWINCH).unwrap();
    }
    // Default action (ignore): discarded at once, never pending.
    wait_for("SIGWINCH to be consumed", || {
        let m = signal_masks(c.pid());
        (m["SigPnd"] & winch == 0 && m["ShdPnd"] & winch == 0).then_some(())
    });
    c.resume().unwrap();
    assert_eq!(exit_code(c.wait().unwrap()), 0);
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "ran\n");
    assert_eq!(
        unsafe { libc::sigaction(libc::SIGWINCH, &old, std::ptr::null_mut()) },
        0
    );
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
    // Invalid names (the empty name is valid, as in systemd).
    for bad in ["a:b", "tab\there", &"x".repeat(256), "é"] {
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
    // A start index past the fd limit; with two slots from i32::MAX the
    // second number does not exist (checked, no overflow).
    let mut s = Spawn::new("/bin/true");
    s.start(i32::MAX - 5).fd(udp(), None);
    let e = s.spawn().unwrap_err();
    assert!(e.message().contains("fd limit"), "{e}");
    for start in [i32::MAX, i32::MAX - 1] {
        let mut s = Spawn::new("/bin/true");
        s.start(start)
            .fd(udp(), None)
            .slot(Slot::Empty { name: None });
        s.fd(udp(), None);
        let e = s.spawn().unwrap_err();
        assert_eq!(
            (e.kind(), e.errno()),
            (Kind::BadRequest, libc::EMFILE),
            "{e}"
        );
        assert!(e.message().contains("fd limit"), "{e}");
    }
    let mut s = Spawn::new("/bin/true");
    s.start(-1);
    assert!(s.spawn().is_err());
    // A dead target pid.
    let e = Namespaces::open(i32::MAX - 7, NsSet::default_join()).unwrap_err();
    assert!(e.message().contains("does not exist"), "{e}");
    assert_eq!(e.code(), libc::ESRCH, "the code the bindings carry");
    assert_eq!(count_fds(), before);
}

/// A process in fresh namespaces made by `unshare`; killed on drop, with
/// the process it forked (with `--fork`, the init of a new pid namespace,
/// which killing unshare alone would leave behind).
struct Holder(std::process::Child);

impl Holder {
    fn start(flags: &[&str]) -> Option<Holder> {
        // --kill-child: should the test die before Drop runs, the kernel
        // kills the forked child when unshare goes (PR_SET_PDEATHSIG).
        let kill_child: &[&str] = if flags.contains(&"--fork") {
            &["--kill-child"]
        } else {
            &[]
        };
        let c = Command::new("unshare")
            .args(flags)
            .args(kill_child)
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
        // The forked child first: it is unshare's to reap, and killing the
        // init of a pid namespace ends everything in it.
        let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", self.pid()))
            .unwrap_or_default();
        for pid in children.split_whitespace().filter_map(|p| p.parse().ok()) {
            // SAFETY: plain kill(2) on a pid that is our child's child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
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
fn namespaces_we_share_are_skipped() {
    let _serial = serial();
    if !is_root() {
        eprintln!("skipped: taking the target's root (chroot) needs root");
        return;
    }
    // Our own user namespace cannot be re-entered (setns: EINVAL); `all`
    // of a target that shares every namespace with us joins none of them.
    let me = std::process::id() as i32;
    let ns = Namespaces::open(me, "all".parse().unwrap()).unwrap();
    assert_eq!(ns.joined().count(), 0);
    let mut s = Spawn::new("/bin/true");
    s.join(ns);
    run_ok(s);
}

#[test]
fn a_namespace_that_cannot_be_joined_names_it() {
    let _serial = serial();
    if !is_root() {
        eprintln!("skipped: making a user namespace with unshare needs root here");
        return;
    }
    // A target in its own user namespace whose network namespace belongs
    // to ours: once the child has joined the user namespace it has no
    // capability over that network namespace, so joining it is EPERM.
    let h = Command::new("unshare")
        .args(["--net", "--", "unshare", "--user", "--", "sleep", "600"])
        .stdin(Stdio::null())
        .spawn()
        .map(Holder)
        .expect("unshare --net -- unshare --user");
    wait_for("the holder to be in its user namespace", || {
        let mine = std::fs::read_link("/proc/self/ns/user").ok()?;
        let its = std::fs::read_link(format!("/proc/{}/ns/user", h.pid())).ok()?;
        (mine != its).then_some(())
    });
    let ns = Namespaces::open(h.pid(), "user,net".parse().unwrap()).unwrap();
    assert_eq!(ns.joined().collect::<Vec<_>>(), ["user", "net"]);
    let mut s = Spawn::new("/bin/true");
    s.join(ns);
    let e = s.spawn().unwrap_err();
    assert_eq!(e.kind(), Kind::ChildFailed);
    assert_eq!(e.errno(), libc::EPERM, "{e}");
    assert!(e.message().contains("net namespace"), "{e}");
}

#[test]
fn after_joining_mnt_the_child_has_the_targets_root_and_cwd() {
    let _serial = serial();
    if !is_root() {
        eprintln!("skipped: unshare -m and chroot need root");
        return;
    }
    // The holder: its own mount namespace, chrooted into `root` (with /usr
    // bound in, so programs run there), cwd /sub.
    let root = temp_dir("spawn-mnt-root");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::create_dir_all(root.join("usr")).unwrap();
    std::fs::write(root.join("marker"), "here").unwrap();
    for l in ["bin", "lib", "lib64", "sbin"] {
        if let Ok(t) = std::fs::read_link(Path::new("/").join(l)) {
            std::os::unix::fs::symlink(t, root.join(l)).unwrap();
        }
    }
    let h = Command::new("unshare")
        .args([
            "-m",
            "--",
            "sh",
            "-c",
            "mount --make-rprivate / && mount --rbind /usr \"$0/usr\" && \
             exec chroot \"$0\" /bin/sh -c 'cd /sub && exec sleep 600'",
        ])
        .arg(&root)
        .stdin(Stdio::null())
        .spawn()
        .map(Holder)
        .expect("unshare -m");
    wait_for("the holder to be chrooted in /sub", || {
        let cwd = std::fs::read_link(format!("/proc/{}/cwd", h.pid())).ok()?;
        let exe = std::fs::read_link(format!("/proc/{}/exe", h.pid())).ok()?;
        (cwd == root.join("sub") && exe.ends_with("sleep")).then_some(())
    });
    let ns = Namespaces::open(h.pid(), "mnt".parse().unwrap()).unwrap();
    assert_eq!(ns.joined().collect::<Vec<_>>(), ["mnt"]);
    let mut s = Spawn::new("/bin/sh");
    s.args(["-c", "test \"$(cat /marker)\" = here && pwd > out"])
        .env_base(EnvBase::Clear)
        .join(ns);
    run_ok(s);
    // Written relative to its cwd: /sub inside, root/sub here.
    assert_eq!(
        std::fs::read_to_string(root.join("sub/out")).unwrap(),
        "/sub\n"
    );
}

/// Where cgroup v2 is mounted, if it is.
fn cgroup2_mount() -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        if post.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        pre.split(' ').nth(4).map(PathBuf::from)
    })
}

#[test]
fn a_paused_child_in_a_pid_namespace_is_configured_then_resumed() {
    let _serial = serial();
    if !is_root() {
        eprintln!("skipped: joining namespaces needs root");
        return;
    }
    let Some(base) = cgroup2_mount() else {
        eprintln!("skipped: cgroup v2 is not mounted");
        return;
    };
    let cg = base.join(format!("sockpass-test-{}", std::process::id()));
    if std::fs::create_dir(&cg).is_err() {
        eprintln!("skipped: cgroup v2 at {} is not writable", base.display());
        return;
    }
    struct Rmdir(PathBuf);
    impl Drop for Rmdir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir(&self.0);
        }
    }
    let _cg = Rmdir(cg.clone());
    let h = Holder::start(&["--pid", "--fork", "--mount-proc"]).expect("unshare --pid");
    let inner = h.inner_pid();
    let dir = temp_dir("spawn-pidns-paused");
    let out = dir.join("out");
    let ns = Namespaces::open(inner, "pid".parse().unwrap()).unwrap();
    let mut s = Spawn::new("python3");
    s.args([
        "-S",
        "-c",
        "import os\n\
         cg = [l for l in open('/proc/self/cgroup').read().split('\\n') if l.startswith('0::')]\n\
         open(os.environ['OUT'], 'w').write('%d %s %s' % (os.getpid(), os.environ['LISTEN_PID'], cg[0]))",
    ])
    .setenv("OUT", &out)
    .fd(udp(), None)
    .join(ns)
    .paused(true);
    let mut c = s.spawn().unwrap();
    let (host, nsp) = (c.pid(), c.ns_pid());
    assert!(c.is_paused());
    assert_ne!(host, nsp, "paused: the host and in-namespace pids differ");
    // Configure it from outside while it waits: move it to the new cgroup.
    if let Err(e) = std::fs::write(cg.join("cgroup.procs"), host.to_string()) {
        drop(c);
        eprintln!("skipped: cannot move a process into {}: {e}", cg.display());
        return;
    }
    c.resume().unwrap();
    assert_eq!(exit_code(c.wait().unwrap()), 0);
    let text = std::fs::read_to_string(&out).unwrap();
    let w: Vec<&str> = text.splitn(3, ' ').collect();
    assert_eq!(w[0], nsp.to_string(), "the pid it sees is ns_pid");
    assert_eq!(w[1], w[0], "LISTEN_PID is the pid it sees");
    let rel = cg.strip_prefix(&base).unwrap();
    assert_eq!(
        w[2],
        format!("0::/{}", rel.display()),
        "it runs in the cgroup"
    );
}
