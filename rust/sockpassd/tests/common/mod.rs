//! Shared test harness: a real `sockpassd` in a temp directory, bounded waits,
//! free ports, and child client processes (this test binary re-executed).
#![allow(dead_code)]

pub mod load;
pub mod restartd;

use sockpass::{Client, Status};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod daemons;
mod nobody;
mod rendezvous;
#[allow(unused_imports)]
pub use daemons::*;
#[allow(unused_imports)]
pub use nobody::*;
#[allow(unused_imports)]
pub use rendezvous::Rendezvous;

/// Generous bound for any wait on a condition in these tests.
pub const WAIT: Duration = Duration::from_secs(30);

pub fn temp_dir(tag: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let base = std::env::var_os("TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/tmp".into());
    let d = base.join(format!(
        "sockpass-test-{}-{}-{}",
        tag,
        std::process::id(),
        n
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The CPU time `pid`'s main thread has run, from /proc/PID/schedstat (to
/// the nanosecond, where /proc/PID/stat counts clock ticks).
pub fn cpu_time(pid: i32) -> Duration {
    let s = std::fs::read_to_string(format!("/proc/{pid}/schedstat")).unwrap();
    Duration::from_nanos(s.split_whitespace().next().unwrap().parse().unwrap())
}

/// Poll `f` until it returns Some, or panic after `WAIT`.
pub fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if t0.elapsed() > WAIT {
            panic!("timed out after {WAIT:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub fn sockpassd_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sockpassd"))
}

pub fn sockpass_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sockpass"))
}

/// A running broker, killed and reaped on drop.
pub struct Broker {
    pub child: Option<Child>,
    pub dir: PathBuf,
    pub path: PathBuf,
    pub log: PathBuf,
}

impl Broker {
    pub fn start(tag: &str) -> Broker {
        Broker::start_with(tag, &[])
    }

    pub fn start_with(tag: &str, extra: &[&str]) -> Broker {
        let dir = temp_dir(tag);
        let path = dir.join("sockpassd.sock");
        Broker::start_at(dir, path, extra)
    }

    pub fn start_at(dir: PathBuf, path: PathBuf, extra: &[&str]) -> Broker {
        Broker::start_env(dir, path, extra, &[])
    }

    /// With environment variables set; the host's default policy file
    /// (/etc/sockpass/policy.conf) is never read unless `env` names one.
    pub fn start_env(dir: PathBuf, path: PathBuf, extra: &[&str], env: &[(&str, &str)]) -> Broker {
        let log = dir.join("sockpassd.log");
        let logf = std::fs::File::create(&log).unwrap();
        let child = Command::new(sockpassd_bin())
            .arg("--socket")
            .arg(&path)
            .args(extra)
            .env("SOCKPASSD_DEFAULT_POLICY", "")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(logf)
            .spawn()
            .expect("start sockpassd");
        let mut b = Broker {
            child: Some(child),
            dir,
            path,
            log,
        };
        b.wait_ready();
        b
    }

    fn wait_ready(&mut self) {
        let path = self.path.clone();
        let child = self.child.as_mut().unwrap();
        wait_for("sockpassd to accept connections", || {
            if let Ok(Some(st)) = child.try_wait() {
                panic!("sockpassd exited early with {st}");
            }
            Client::connect(&path).ok().map(|_| ())
        });
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    /// A client the broker has accepted (the handshake done), so fd and
    /// connection counts taken next include it.
    pub fn client(&self) -> Client {
        connect_hello(&self.path).expect("connect to the broker and handshake")
    }

    pub fn status(&self) -> Status {
        self.client().status().expect("status")
    }

    /// Whether the broker holds an io_uring instance (its outbox:
    /// `anon_inode:[io_uring]` among its fds). After a handshake: the
    /// listener takes connections before the loop (and its ring) exists.
    pub fn uses_io_uring(&self) -> bool {
        drop(self.client());
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .any(|l| l.to_string_lossy() == "anon_inode:[io_uring]")
    }

    /// Open fds of the broker process, from /proc.
    pub fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .unwrap()
            .count()
    }

    /// The broker's log so far. Lines are written by its logger thread a
    /// moment after the event: wait until the file stops growing (30 ms,
    /// at most 300 ms) so a line logged before a reply is there.
    pub fn log_text(&self) -> String {
        let size = || std::fs::metadata(&self.log).map_or(0, |m| m.len());
        let t0 = Instant::now();
        let mut last = size();
        while t0.elapsed() < Duration::from_millis(300) {
            std::thread::sleep(Duration::from_millis(30));
            let now = size();
            if now == last {
                break;
            }
            last = now;
        }
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM and wait; returns the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().unwrap();
        // SAFETY: signalling our own child.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        wait_child(&mut c)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Wait for a child with a bound; kill it if it overstays.
pub fn wait_child(c: &mut Child) -> std::process::ExitStatus {
    let t0 = Instant::now();
    loop {
        if let Some(st) = c.try_wait().unwrap() {
            return st;
        }
        if t0.elapsed() > WAIT {
            let _ = c.kill();
            let _ = c.wait();
            panic!("child {} did not exit within {WAIT:?}", c.id());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `N` different free ports, below the kernel's ephemeral range (see
/// [`free_low_ports`]) and none given to another test of this binary before.
pub fn free_ports<const N: usize>(udp: bool) -> [u16; N] {
    let ports = free_low_ports(udp, N);
    std::array::from_fn(|k| ports[k])
}

/// A port free a moment ago for `proto` on 127.0.0.1, that no other test of
/// this binary was given, below the kernel's ephemeral range: a port the
/// kernel picked for a port-0 bind could be picked again, before the test
/// asks for it, for a port-0 socket another test's broker makes meanwhile
/// (`hostile_bind_share` lost a port so, once in CI).
pub fn free_port(udp: bool) -> u16 {
    free_low_ports(udp, 1)[0]
}

/// Whether `port` was never handed out before in this process.
fn first_time(udp: bool, port: u16) -> bool {
    static GIVEN: std::sync::Mutex<Vec<(bool, u16)>> = std::sync::Mutex::new(Vec::new());
    let mut g = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    if g.contains(&(udp, port)) {
        return false;
    }
    g.push((udp, port));
    true
}

/// `n` distinct ports on 127.0.0.1 free now for `udp` (else TCP), below the
/// kernel's ephemeral range (32768 up), so no port-0 socket made meanwhile,
/// by the broker for another test or by anyone, takes one before the test
/// asks for it.
pub fn free_low_ports(udp: bool, n: usize) -> Vec<u16> {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    let mut x = std::process::id() as u64 ^ (seed << 16);
    let mut out: Vec<u16> = Vec::new();
    while out.len() < n {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let p = 10_000 + ((x >> 33) % 22_000) as u16;
        if !out.contains(&p) && port_unused(udp, p) && first_time(udp, p) {
            out.push(p);
        }
    }
    out
}

/// Whether no socket of this protocol in this network namespace has local
/// port `port`, on any address and in any state (`/proc/net/tcp` and
/// `tcp6`, or `udp` and `udp6`). Ports are picked by this, not by binding a
/// probe: a probe that is open while another test thread forks lives on in
/// the child until it execs, and a broker asked for the port in that moment
/// found it taken (`hostile_bind_share`, 3 runs in 90 on 7 December).
/// The tables do not list a TCP socket that is bound but neither listens
/// nor is connected (the broker's TCP sockets without a backlog): those of
/// this binary's tests are on ports it gave out, which `first_time` keeps
/// apart.
pub fn port_unused(udp: bool, port: u16) -> bool {
    let tables = if udp {
        ["/proc/net/udp", "/proc/net/udp6"]
    } else {
        ["/proc/net/tcp", "/proc/net/tcp6"]
    };
    let suffix = format!(":{port:04X}");
    tables.iter().all(|t| {
        let text = std::fs::read_to_string(t).unwrap_or_default();
        !text.lines().skip(1).any(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|local| local.ends_with(&suffix))
        })
    })
}

/// Can this port be bound on 127.0.0.1 right now, by a socket without
/// SO_REUSEADDR (std's TcpListener sets it, which lets it coexist with a
/// bound, non-listening socket and so proves nothing)?
pub fn can_bind(udp: bool, port: u16) -> bool {
    let ty = if udp {
        libc::SOCK_DGRAM
    } else {
        libc::SOCK_STREAM
    };
    // SAFETY: a fresh socket, bound once, closed on return.
    unsafe {
        let fd = libc::socket(libc::AF_INET, ty | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0);
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes([127, 0, 0, 1]),
            },
            sin_zero: [0; 8],
        };
        let r = libc::bind(
            fd,
            (&sin as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        );
        libc::close(fd);
        r == 0
    }
}

/// Inode of a socket fd, to tell whether two fds are the same socket.
pub fn inode(fd: &OwnedFd) -> u64 {
    // SAFETY: all-zero is a valid stat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat writes into the local.
    assert_eq!(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) }, 0);
    st.st_ino
}

/// Re-run this test binary as a child process that runs only `test_name`
/// (an #[ignore]d test that acts on the env var SOCKPASS_CHILD).
pub fn spawn_self(test_name: &str, env: &[(&str, String)]) -> Child {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new(exe);
    cmd.args([
        test_name,
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("SOCKPASS_CHILD", "1")
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap()
}

/// uid and gid of `nobody`, whom hostile clients run as.
pub const NOBODY: u32 = 65534;

/// Start the child test `name` (see [`spawn_self`]) as uid/gid `uid` (no
/// supplementary groups: std drops them when root sets a uid) with `env`,
/// its stdout piped for its "@@ " lines and its stdin as given (a piped
/// stdin lets the parent end a child that holds what it made).
pub fn spawn_child_as(uid: u32, name: &str, env: &[(&str, String)], stdin: Stdio) -> Child {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        name,
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("SOCKPASS_CHILD", "1")
    .uid(uid)
    .gid(uid)
    .stdin(stdin)
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap()
}

/// Run the child test `name` as [`NOBODY`] with `env`; return its "@@ "
/// line. The child must succeed.
pub fn run_as_nobody(name: &str, env: &[(&str, String)]) -> String {
    let mut c = spawn_child_as(NOBODY, name, env, Stdio::null());
    let line = read_line(&mut c);
    let st = wait_child(&mut c);
    assert!(st.success(), "child {name} failed: {st}");
    line
}

pub fn is_child() -> bool {
    std::env::var_os("SOCKPASS_CHILD").is_some()
}

pub fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Read the first line a child writes to stdout holding "@@ " (the test
/// harness prints text of its own around it), bounded. Takes the pipe: children
/// in these tests report one such line.
pub fn read_line(c: &mut Child) -> String {
    use std::io::BufRead;
    let out = c.stdout.take().expect("child stdout is piped and unread");
    let (tx, rx) = std::sync::mpsc::channel();
    // Read on a thread so the wait is bounded even if the child hangs.
    std::thread::spawn(move || {
        let mut sent = false;
        // Keep draining after the marked line so the child never hits EPIPE.
        for line in std::io::BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if let (false, Some(i)) = (sent, line.find("@@ ")) {
                let _ = tx.send(line[i + 3..].to_string());
                sent = true;
            }
        }
        if !sent {
            let _ = tx.send(String::new());
        }
    });
    rx.recv_timeout(WAIT).expect("child wrote no line in time")
}

pub fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// Like [`can_bind`], for any address (IPv4 or IPv6), without SO_REUSEADDR.
pub fn can_bind_addr(udp: bool, addr: std::net::IpAddr, port: u16) -> bool {
    let ty = if udp {
        libc::SOCK_DGRAM
    } else {
        libc::SOCK_STREAM
    };
    let fam = match addr {
        std::net::IpAddr::V4(_) => libc::AF_INET,
        std::net::IpAddr::V6(_) => libc::AF_INET6,
    };
    let (sa, len) = sockpass::sys::sockaddr_from(addr, port);
    // SAFETY: a fresh socket, bound once with a sockaddr sockaddr_from
    // filled in, and closed on return.
    unsafe {
        let fd = libc::socket(fam, ty | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0);
        let r = libc::bind(fd, (&sa as *const libc::sockaddr_storage).cast(), len);
        libc::close(fd);
        r == 0
    }
}

/// Inodes of the sockets process `pid` holds open (from /proc/PID/fd).
pub fn socket_inodes(pid: i32) -> std::collections::HashSet<u64> {
    let mut set = std::collections::HashSet::new();
    if let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for e in rd.flatten() {
            if let Ok(l) = std::fs::read_link(e.path()) {
                let l = l.to_string_lossy();
                if let Some(n) = l.strip_prefix("socket:[").and_then(|s| s.strip_suffix(']')) {
                    set.extend(n.parse::<u64>().ok());
                }
            }
        }
    }
    set
}

/// Inodes of the sockets in this network namespace bound to local `port`
/// (from /proc/net/{tcp,tcp6,udp,udp6}).
pub fn sockets_on_port(udp: bool, port: u16) -> Vec<u64> {
    proc_net_sockets(udp, port)
        .into_iter()
        .map(|(_, inode)| inode)
        .collect()
}

/// Inodes of the TCP sockets listening on local `port` in this network
/// namespace (accepted connections share the port; they are left out).
pub fn listening_on_port(port: u16) -> Vec<u64> {
    const TCP_LISTEN: u8 = 0x0a;
    proc_net_sockets(false, port)
        .into_iter()
        .filter(|&(state, _)| state == TCP_LISTEN)
        .map(|(_, inode)| inode)
        .collect()
}

/// (state, inode) of each socket on local `port`, from /proc/net.
fn proc_net_sockets(udp: bool, port: u16) -> Vec<(u8, u64)> {
    let mut v = Vec::new();
    let files: [&str; 2] = if udp {
        ["/proc/net/udp", "/proc/net/udp6"]
    } else {
        ["/proc/net/tcp", "/proc/net/tcp6"]
    };
    for f in files {
        let Ok(text) = std::fs::read_to_string(f) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let Some(local) = cols.get(1) else { continue };
            let p = local
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            let state = cols.get(3).and_then(|s| u8::from_str_radix(s, 16).ok());
            let inode = cols.get(9).and_then(|i| i.parse::<u64>().ok());
            if let (true, Some(state), Some(inode)) = (p == Some(port), state, inode) {
                v.push((state, inode));
            }
        }
    }
    v
}

/// Connect and do the handshake: the broker (or a fake one) has then
/// accepted this client, and a refusal shows here rather than later.
pub fn connect_hello(p: &Path) -> sockpass::Result<Client> {
    let mut c = Client::connect(p)?;
    c.hello()?;
    Ok(c)
}

/// The fds of `pid` without FD_CLOEXEC.
pub fn inherited_fds(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap()
        .flatten()
    {
        let n: i32 = e.file_name().to_string_lossy().parse().unwrap();
        let Ok(info) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        let flags = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .map(|f| u32::from_str_radix(f.trim(), 8).unwrap())
            .unwrap();
        if flags & libc::O_CLOEXEC as u32 == 0 {
            out.push(n);
        }
    }
    out.sort_unstable();
    out
}

/// Write an executable shell script `name` in `dir`.
pub fn script(dir: &std::path::Path, name: &str, body: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// A privileged port on 127.0.0.1 free for both UDP and TCP a moment ago,
/// other than `not` (None when every one is taken). Needs root to bind.
/// The search starts at a port that differs from run to run: test runs
/// side by side (two worktrees, or helpers on one machine) that all took
/// the highest free port met each other there. Never 443: unbound serves
/// DNS over HTTPS there by default (`https-port`) and closes every plain
/// DNS-over-TCP connection on it (the port is one of 1,023 a test could
/// draw: restart_load's unbound test drew it in a CI run).
pub fn free_privileged_port(not: &[u16]) -> Option<u16> {
    let first_free = std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|s| s.trim().parse::<u16>().ok())
        .unwrap_or(1024)
        .min(1024);
    if first_free <= 1 {
        return None;
    }
    let n = u32::from(first_free - 1);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let start = (nanos ^ std::process::id().wrapping_mul(2_654_435_761)) % n;
    (0..n)
        .map(|k| 1 + ((start + k) % n) as u16)
        .find(|p| *p != 443 && !not.contains(p) && port_unused(true, *p) && port_unused(false, *p))
}
