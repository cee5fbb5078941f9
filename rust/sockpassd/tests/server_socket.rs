//! Server sockets handed into daemons: the whole handover between two
//! processes (eager, lazy, lazy with the daemon waiting first, manager
//! killed before listen()), binding inside a mount namespace the test makes,
//! the serve-in CLI, and bad input.

mod common;

use common::*;
use sockpass::fdpass;
use sockpass::Kind;
use sockpass::{BindOptions, ServerSocket};
use std::io::{BufRead, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Command, Stdio};
use std::time::Duration;

fn bytes(p: &std::path::Path) -> &[u8] {
    p.as_os_str().as_bytes()
}

/// Receive the handed-over fds (socket, then maybe the notifier) on a
/// rendezvous connection.
fn recv_handover(c: &UnixStream) -> (OwnedFd, Option<OwnedFd>) {
    let mut buf = [0u8; 16];
    let r = fdpass::recv_fds(c.as_fd(), &mut buf, 2, 0).unwrap();
    let mut fds = r.fds.into_iter();
    (fds.next().expect("a server socket"), fds.next())
}

/// The daemon side, in its own process: receive the fds on $RV, adopt,
/// (say it is waiting), wait, accept one client, write its pid back, and
/// report "@@ ok ADDRESS" or "@@ err KIND ERRNO".
#[test]
#[ignore]
fn daemon_child() {
    if !is_child() {
        return;
    }
    let rv = std::env::var("RV").unwrap();
    let mut c = UnixStream::connect(rv).unwrap();
    let (sock, notifier) = recv_handover(&c);
    let mut s = ServerSocket::adopt(sock, notifier).unwrap();
    let pending = !s.is_ready();
    // Tell the manager we are about to wait (the lazy order under test).
    c.write_all(if pending { b"w" } else { b"r" }).unwrap();
    match s.wait(Some(WAIT)) {
        Ok(()) => {
            let (conn, creds) = s.accept().unwrap();
            let mut conn = std::fs::File::from(conn);
            writeln!(conn, "{}", std::process::id()).unwrap();
            println!("@@ ok {} {} {}", pending, s.dbus_address(), creds.pid);
        }
        Err(e) => println!("@@ err {} {}", e.kind().name(), e.errno()),
    }
}

struct Rendezvous {
    dir: std::path::PathBuf,
    listener: UnixListener,
}

impl Rendezvous {
    fn new(tag: &str) -> Rendezvous {
        let dir = temp_dir(tag);
        let listener = UnixListener::bind(dir.join("rv")).unwrap();
        Rendezvous { dir, listener }
    }
    fn env(&self) -> Vec<(&'static str, String)> {
        vec![("RV", path_str(&self.dir.join("rv")))]
    }
    /// Accept the daemon and hand it `fds`.
    fn hand_over(&self, fds: &[&OwnedFd]) -> UnixStream {
        let (c, _) = self.listener.accept().unwrap();
        let b: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
        fdpass::send_fds(c.as_fd(), b"x", &b, 0).unwrap();
        c
    }
}

impl Drop for Rendezvous {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Connect to the daemon's socket and read the pid it writes back.
fn talk(path: &[u8]) -> i32 {
    let mut c = UnixStream::connect(std::ffi::OsStr::from_bytes(path)).unwrap();
    let mut s = String::new();
    c.read_to_string(&mut s).unwrap();
    s.trim().parse().unwrap()
}

#[test]
fn eager_handover_between_processes() {
    if is_child() {
        return;
    }
    let rv = Rendezvous::new("eager");
    let path = rv.dir.join("bus sock\u{e9}");
    let sock = sockpass::bind_in_namespace(None, bytes(&path), &BindOptions::default()).unwrap();
    let mut d = spawn_self("daemon_child", &rv.env());
    let mut c = rv.hand_over(&[&sock]);
    drop(sock);
    let mut b = [0u8; 1];
    c.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"r", "an eager socket is ready at once");
    let daemon_pid = talk(bytes(&path));
    assert_eq!(daemon_pid, d.id() as i32);
    let line = read_line(&mut d);
    assert!(wait_child(&mut d).success());
    let f: Vec<&str> = line.split(' ').collect();
    assert_eq!(f[0], "ok", "{line}");
    assert_eq!(f[1], "false");
    // The temp dir's own name has only bytes D-Bus leaves as they are.
    assert_eq!(
        f[2],
        format!("unix:path={}/bus%20sock%c3%a9", path_str(&rv.dir))
    );
    assert_eq!(f[3], std::process::id().to_string(), "SO_PEERCRED pid");
}

/// Whether a thread of `pid` is blocked in poll(2)/ppoll(2) on one fd (the
/// notifier), from /proc/PID/task/TID/syscall: "NR ARG1 ARG2 ...", or
/// "running" while on a CPU.
fn blocked_in_poll(pid: i32) -> bool {
    #[cfg(target_arch = "x86_64")]
    let polls = [libc::SYS_poll, libc::SYS_ppoll];
    #[cfg(not(target_arch = "x86_64"))]
    let polls = [libc::SYS_ppoll];
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().any(|t| {
        let Ok(s) = std::fs::read_to_string(t.path().join("syscall")) else {
            return false;
        };
        let w: Vec<&str> = s.split_whitespace().collect();
        w.len() > 2
            && w[0]
                .parse::<libc::c_long>()
                .is_ok_and(|nr| polls.contains(&nr))
            && w[2] == "0x1"
    })
}

fn lazy(tag: &str, bind_before_daemon_waits: bool) {
    let rv = Rendezvous::new(tag);
    let path = rv.dir.join("s");
    let mut l = sockpass::prepare_lazy(None, false).unwrap();
    let (s, n) = (
        l.daemon_socket.take().unwrap(),
        l.daemon_notifier.take().unwrap(),
    );
    let mut d = spawn_self("daemon_child", &rv.env());
    let mut c = rv.hand_over(&[&s, &n]);
    drop((s, n));
    let mut b = [0u8; 1];
    if bind_before_daemon_waits {
        l.bind_and_notify(None, bytes(&path), &BindOptions::default())
            .unwrap();
        c.read_exact(&mut b).unwrap();
    } else {
        // The daemon says it is about to wait; then make sure it really is
        // blocked in poll on the notifier before we bind, so this is the
        // order under test and not a race the bind may win.
        c.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"w");
        wait_for("the daemon to block in poll", || {
            blocked_in_poll(d.id() as i32).then_some(())
        });
        assert!(!path.exists());
        l.bind_and_notify(None, bytes(&path), &BindOptions::default())
            .unwrap();
    }
    assert_eq!(talk(bytes(&path)), d.id() as i32);
    let line = read_line(&mut d);
    assert!(wait_child(&mut d).success());
    assert!(line.starts_with("ok true unix:path="), "{line}");
}

#[test]
fn lazy_handover_daemon_waits_before_the_bind() {
    if is_child() {
        return;
    }
    lazy("lazy-wait", false);
}

#[test]
fn lazy_handover_bound_before_the_daemon_waits() {
    if is_child() {
        return;
    }
    lazy("lazy-early", true);
}

/// The manager, in its own process: prepare a lazy socket, hand it over on
/// $RV, say so, then stay until killed (never binding).
#[test]
#[ignore]
fn manager_child() {
    if !is_child() {
        return;
    }
    let mut l = sockpass::prepare_lazy(None, false).unwrap();
    let s = l.daemon_socket.take().unwrap();
    let n = l.daemon_notifier.take().unwrap();
    let c = UnixStream::connect(std::env::var("RV").unwrap()).unwrap();
    fdpass::send_fds(c.as_fd(), b"x", &[s.as_fd(), n.as_fd()], 0).unwrap();
    drop((s, n));
    println!("@@ handed");
    loop {
        // SAFETY: pause until the test kills us.
        unsafe { libc::pause() };
    }
}

#[test]
fn manager_killed_before_listen_is_a_distinct_error() {
    if is_child() {
        return;
    }
    let rv = Rendezvous::new("killed");
    let mut m = spawn_self("manager_child", &rv.env());
    let (c, _) = rv.listener.accept().unwrap();
    let (sock, notifier) = recv_handover(&c);
    let mut s = ServerSocket::adopt(sock, notifier).unwrap();
    assert_eq!(read_line(&mut m), "handed");
    assert!(!s.check().unwrap());
    m.kill().unwrap();
    let t0 = std::time::Instant::now();
    let e = s.wait(Some(WAIT)).unwrap_err();
    assert!(
        t0.elapsed() < WAIT,
        "a dead manager must not look like a timeout"
    );
    assert_eq!(
        (e.kind(), e.errno()),
        (Kind::NotReady, libc::ENOTCONN),
        "{e}"
    );
    assert!(e.message().contains("not listening"), "{e}");
    assert_eq!(s.accept().unwrap_err().kind(), Kind::NotReady);
    wait_child(&mut m);
}

#[test]
fn notifier_that_never_fires_times_out_and_stays_pending() {
    let mut l = sockpass::prepare_lazy(None, false).unwrap();
    let mut s =
        ServerSocket::adopt(l.daemon_socket.take().unwrap(), l.daemon_notifier.take()).unwrap();
    let e = s.wait(Some(Duration::from_millis(100))).unwrap_err();
    assert_eq!((e.kind(), e.errno()), (Kind::Timeout, libc::ETIMEDOUT));
    assert!(s.notifier_fd().is_some());
    let dir = temp_dir("never");
    l.bind_and_notify(None, bytes(&dir.join("s")), &BindOptions::default())
        .unwrap();
    s.wait(Some(WAIT)).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Run in a single-threaded child so the fd count is not disturbed by other
/// tests' threads.
#[test]
fn bad_input_distinct_errors_and_no_fd_leaked() {
    if is_child() {
        return;
    }
    let mut c = spawn_self("bad_input_child", &[]);
    assert_eq!(read_line(&mut c), "ok");
    assert!(wait_child(&mut c).success());
}

#[test]
#[ignore]
fn bad_input_child() {
    if !is_child() {
        return;
    }
    // SAFETY: plain socket calls; checked.
    let inet = |ty| unsafe {
        let r = libc::socket(libc::AF_INET, ty | libc::SOCK_CLOEXEC, 0);
        assert!(r >= 0);
        <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(r)
    };
    let dir = temp_dir("bad");
    std::fs::write(dir.join("f"), b"x").unwrap();
    let before = sockpass::sys::count_open_fds();
    let mut seen = Vec::new();
    for _ in 0..3 {
        let file: OwnedFd = std::fs::File::open(dir.join("f")).unwrap().into();
        let (pair, _other) = fdpass::socketpair(libc::SOCK_STREAM).unwrap();
        let udp_unix = sockpass::sys::unix_socket(libc::SOCK_DGRAM, false).unwrap();
        for (fd, what) in [
            (file, "regular file"),
            (inet(libc::SOCK_DGRAM), "udp"),
            (inet(libc::SOCK_STREAM), "tcp"),
            (pair, "socketpair end"),
            (udp_unix, "unix dgram"),
        ] {
            let e = ServerSocket::adopt(fd, None).unwrap_err();
            assert_eq!(e.kind(), Kind::BadRequest, "{what}: {e}");
            seen.push((what, e.errno()));
        }
        // The write end of a pipe as the notifier.
        let (r, w) = sockpass::notifier_pair().unwrap();
        let s = sockpass::sys::unix_socket(libc::SOCK_STREAM, false).unwrap();
        let e = ServerSocket::adopt(s, Some(w)).unwrap_err();
        assert!(e.message().contains("write end"), "{e}");
        seen.push(("pipe write end", e.errno()));
        drop(r);
        // Manager-side failures leave nothing open either.
        let taken = dir.join("taken");
        let _ = std::fs::remove_file(&taken);
        let ok = sockpass::bind_in_namespace(None, bytes(&taken), &BindOptions::default()).unwrap();
        let e =
            sockpass::bind_in_namespace(None, bytes(&taken), &BindOptions::default()).unwrap_err();
        assert_eq!(e.errno(), libc::EADDRINUSE, "{e}");
        let e = sockpass::bind_in_namespace(Some(i32::MAX), bytes(&taken), &BindOptions::default())
            .unwrap_err();
        assert_eq!(e.errno(), libc::ESRCH, "{e}");
        let l = sockpass::prepare_lazy(None, false).unwrap();
        let e = l
            .bind_and_notify(None, bytes(&taken), &BindOptions::default())
            .unwrap_err();
        assert_eq!(e.errno(), libc::EADDRINUSE, "{e}");
        drop(ok);
    }
    seen.truncate(6);
    let mut errnos: Vec<i32> = seen.iter().map(|s| s.1).collect();
    errnos.sort();
    errnos.dedup();
    // udp (AF_INET dgram) and unix dgram share EPROTOTYPE: the same reason.
    assert_eq!(errnos.len(), 5, "{seen:?}");
    assert_eq!(sockpass::sys::count_open_fds(), before, "fds leaked");
    let _ = std::fs::remove_dir_all(&dir);
    println!("@@ ok");
}

/// A process holding a new mount namespace with a tmpfs at `dir`; killed
/// and reaped on drop.
struct NsHolder {
    child: std::process::Child,
}

impl NsHolder {
    fn start(dir: &std::path::Path) -> NsHolder {
        let mut child = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c"])
            .arg(format!(
                "mount -t tmpfs sockpass-test '{}' && echo mounted && exec sleep 600",
                path_str(dir)
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run unshare");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "mounted");
        NsHolder { child }
    }
    fn pid(&self) -> i32 {
        self.child.id() as i32
    }
    /// Run python3 inside the namespace.
    fn python(&self, code: &str) -> std::process::Output {
        Command::new("nsenter")
            .args(["-t", &self.pid().to_string(), "-m", "python3", "-c", code])
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }
}

impl Drop for NsHolder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn root_or_skip(what: &str) -> bool {
    if !is_root() {
        eprintln!("SKIP {what}: needs root (mount namespaces, setns)");
    }
    is_root()
}

const CONNECT_PY: &str = "import socket,sys\n\
s=socket.socket(socket.AF_UNIX)\n\
s.connect(sys.argv[1] if len(sys.argv)>1 else PATH)\n\
s.sendall(b'hello')\n\
print(s.recv(100).decode())\n";

#[test]
fn bind_inside_a_mount_namespace_and_connect_from_inside() {
    if is_child() || !root_or_skip("bind_inside_a_mount_namespace") {
        return;
    }
    let dir = temp_dir("mntns");
    let ns = NsHolder::start(&dir);
    let path = dir.join("bus socket");
    let opts = BindOptions {
        mode: 0o600,
        owner: Some((65534, 65534)),
        ..BindOptions::default()
    };
    let fd = sockpass::bind_in_namespace(Some(ns.pid()), bytes(&path), &opts).unwrap();
    // Only inside the namespace: the host's directory stays empty.
    assert!(!path.exists());
    let s = ServerSocket::adopt(fd, None).unwrap();
    assert_eq!(s.path(), bytes(&path));
    let code = CONNECT_PY.replace("PATH", &format!("{:?}", path_str(&path)));
    let client = std::thread::spawn({
        let code = code.clone();
        let pid = ns.pid();
        move || {
            Command::new("nsenter")
                .args(["-t", &pid.to_string(), "-m", "python3", "-c", &code])
                .stdin(Stdio::null())
                .output()
                .unwrap()
        }
    });
    let (conn, creds) = s.accept().unwrap();
    let mut conn = std::fs::File::from(conn);
    let mut b = [0u8; 5];
    conn.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"hello");
    conn.write_all(b"welcome").unwrap();
    drop(conn);
    let out = client.join().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "welcome");
    assert!(creds.pid > 0 && creds.pid != std::process::id() as i32);
    // Mode and owner as asked, seen from inside.
    let st = ns.python(&format!(
        "import os; s=os.stat({:?}); print(oct(s.st_mode & 0o7777), s.st_uid, s.st_gid)",
        path_str(&path)
    ));
    assert_eq!(
        String::from_utf8_lossy(&st.stdout).trim(),
        "0o600 65534 65534"
    );
    // A missing directory fails, naming the target.
    let host_only = temp_dir("hostonly");
    let e = sockpass::bind_in_namespace(
        Some(ns.pid()),
        bytes(&host_only.join("deeper/s")),
        &BindOptions::default(),
    )
    .unwrap_err();
    assert_eq!(e.errno(), libc::ENOENT, "{e}");
    assert!(e.message().contains(&format!("pid {}", ns.pid())), "{e}");
    drop(ns);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&host_only);
}

#[test]
fn lazy_bind_inside_a_mount_namespace() {
    if is_child() || !root_or_skip("lazy_bind_inside_a_mount_namespace") {
        return;
    }
    let dir = temp_dir("mntns-lazy");
    let ns = NsHolder::start(&dir);
    let path = dir.join("lazy");
    let mut l = sockpass::prepare_lazy(Some(ns.pid()), false).unwrap();
    let mut s =
        ServerSocket::adopt(l.daemon_socket.take().unwrap(), l.daemon_notifier.take()).unwrap();
    assert!(!s.check().unwrap());
    l.bind_and_notify(Some(ns.pid()), bytes(&path), &BindOptions::default())
        .unwrap();
    s.wait(Some(WAIT)).unwrap();
    assert_eq!(s.path(), bytes(&path));
    let code = CONNECT_PY.replace("PATH", &format!("{:?}", path_str(&path)));
    let t = std::thread::spawn(move || ns.python(&code));
    let (conn, _) = s.accept().unwrap();
    let mut conn = std::fs::File::from(conn);
    let mut b = [0u8; 5];
    conn.read_exact(&mut b).unwrap();
    conn.write_all(b"lazy ok").unwrap();
    drop(conn);
    let out = t.join().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "lazy ok");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn abstract_name_in_another_network_namespace() {
    if is_child() || !root_or_skip("abstract_name_in_another_network_namespace") {
        return;
    }
    let mut holder = Reaped(
        Command::new("unshare")
            .args(["-n", "sh", "-c", "echo up && exec sleep 600"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    std::io::BufReader::new(holder.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let pid = holder.0.id() as i32;
    let name = format!("\0sockpass-test-netns-{}", std::process::id());
    let fd =
        sockpass::bind_in_namespace(Some(pid), name.as_bytes(), &BindOptions::default()).unwrap();
    let s = ServerSocket::adopt(fd, None).unwrap();
    assert_eq!(s.dbus_address(), format!("unix:abstract={}", &name[1..]));
    // Not reachable from our network namespace.
    let c = sockpass::sys::unix_socket(libc::SOCK_STREAM, false).unwrap();
    assert_eq!(
        sockpass::sys::connect_unix(&c, name.as_bytes()),
        Err(libc::ECONNREFUSED)
    );
    // Reachable from inside.
    let out = Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-n", "python3", "-c"])
        .arg(format!(
            "import socket; s=socket.socket(socket.AF_UNIX); s.connect({:?}); print('in')",
            format!("\0{}", &name[1..])
        ))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    s.accept().unwrap();
    // Lazy: the socket is made in the target's network namespace (abstract
    // names belong to the namespace a socket was created in), bound later.
    let lazy_name = format!("{name}-lazy");
    let mut l = sockpass::prepare_lazy(Some(pid), true).unwrap();
    let mut s =
        ServerSocket::adopt(l.daemon_socket.take().unwrap(), l.daemon_notifier.take()).unwrap();
    l.bind_and_notify(Some(pid), lazy_name.as_bytes(), &BindOptions::default())
        .unwrap();
    s.wait(Some(WAIT)).unwrap();
    assert_eq!(s.path(), lazy_name.as_bytes());
    assert_eq!(
        sockpass::sys::connect_unix(&c, lazy_name.as_bytes()),
        Err(libc::ECONNREFUSED)
    );
    drop(holder);
}

/// A child killed and reaped on drop, so a failing test leaves nothing.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `sockpass serve-in` eager and lazy: PROGRAM (python3) gets fd 3 with
/// LISTEN_FDS=1 and LISTEN_PID = its pid, and a client inside the
/// namespace talks to it.
#[test]
fn serve_in_cli_eager_and_lazy() {
    if is_child() || !root_or_skip("serve_in_cli") {
        return;
    }
    let dir = temp_dir("servein");
    let ns = NsHolder::start(&dir);
    let server = "import socket,os\n\
assert os.environ['LISTEN_FDS']=='1' and os.environ['LISTEN_PID']==str(os.getpid())\n\
n=os.environ.get('SOCKPASS_NOTIFIER_FD')\n\
if n: assert os.read(int(n),1)==b''\n\
s=socket.socket(fileno=3)\n\
c,_=s.accept(); c.recv(5); c.sendall(b'served '+s.getsockname().encode()); c.close()\n";
    for (lazy, name) in [(false, "eager sock"), (true, "lazy sock")] {
        let path = dir.join(name);
        let mut cmd = Command::new(sockpass_bin());
        cmd.args(["serve-in", &ns.pid().to_string(), &path_str(&path)])
            .args(["--mode", "0660"]);
        if lazy {
            cmd.arg("--lazy");
        }
        let mut srv = Reaped(
            cmd.args(["--", "python3", "-c", server])
                .stdin(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let code = r#"
import socket, time
for i in range(3000):
    try:
        s = socket.socket(socket.AF_UNIX)
        s.connect(PATH)
        break
    except OSError:
        time.sleep(0.01)
s.sendall(b'hello')
print(s.recv(200).decode())
"#
        .replace("PATH", &format!("{:?}", path_str(&path)));
        let out = ns.python(&code);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!("served {}", path_str(&path)),
            "{out:?}"
        );
        assert!(wait_child(&mut srv.0).success());
        let st = ns.python(&format!(
            "import os; print(oct(os.stat({:?}).st_mode & 0o777))",
            path_str(&path)
        ));
        assert_eq!(String::from_utf8_lossy(&st.stdout).trim(), "0o660");
    }
    // Usage errors exit 2; a pid with no process exits 1, naming it.
    let out = Command::new(sockpass_bin())
        .args(["serve-in", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(sockpass_bin())
        .args(["serve-in", "2147483647", "/tmp/x", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("process 2147483647 does not exist"),
        "{out:?}"
    );
    drop(ns);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn fd_of_notifier_is_pollable_in_an_event_loop() {
    // The notifier fd is what an event loop watches: it polls readable or
    // hung up exactly when the manager is done.
    let mut l = sockpass::prepare_lazy(None, false).unwrap();
    let mut s =
        ServerSocket::adopt(l.daemon_socket.take().unwrap(), l.daemon_notifier.take()).unwrap();
    let raw = s.notifier_fd().unwrap().as_raw_fd();
    let mut p = libc::pollfd {
        fd: raw,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    assert_eq!(unsafe { libc::poll(&mut p, 1, 0) }, 0);
    let dir = temp_dir("evloop");
    l.bind_and_notify(None, bytes(&dir.join("s")), &BindOptions::default())
        .unwrap();
    // SAFETY: as above.
    assert_eq!(unsafe { libc::poll(&mut p, 1, 30_000) }, 1);
    assert_ne!(p.revents & libc::POLLHUP, 0, "writer closed: POLLHUP");
    assert!(s.check().unwrap());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bind_options_mode_on_the_host() {
    let dir = temp_dir("mode");
    let p = dir.join("s");
    let fd = sockpass::bind_in_namespace(
        None,
        bytes(&p),
        &BindOptions {
            mode: 0o604,
            ..BindOptions::default()
        },
    )
    .unwrap();
    let m = std::fs::metadata(&p).unwrap();
    assert_eq!(m.permissions().mode() & 0o777, 0o604);
    assert_eq!(m.uid(), unsafe { libc::geteuid() });
    drop(fd);
    let _ = std::fs::remove_dir_all(&dir);
}
