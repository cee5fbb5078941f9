//! Upgrades that lose nothing: `sockpassd` re-executes itself in place (same
//! pid) on SIGHUP or `sockpass upgrade`, handing over every socket, reference,
//! reservation and client connection, while clients keep sending requests.

mod common;

use common::*;
use sockpass::Client;
use sockpass::{Kind, ShareMode, SocketSpec};
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

fn spec(s: &str) -> SocketSpec {
    s.parse().unwrap()
}

/// Inodes of the sockets the broker process has open.
fn broker_socket_inodes(pid: i32) -> Vec<u64> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        if let Ok(t) = std::fs::read_link(e.path()) {
            let t = t.to_string_lossy().into_owned();
            if let Some(n) = t.strip_prefix("socket:[") {
                out.push(n.trim_end_matches(']').parse().unwrap());
            }
        }
    }
    out
}

fn upgrades_logged(b: &Broker) -> usize {
    b.log_text().matches("upgraded in place").count()
}

struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    errors: Arc<std::sync::Mutex<Vec<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// Several clients in request/release loops: some on one long connection,
/// one connecting afresh for every request (so accepts race the exec too).
fn start_load(b: &Broker, shared: &SocketSpec) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut threads = Vec::new();
    for i in 0..4 {
        let (stop, ok, failed, errors) = (stop.clone(), ok.clone(), failed.clone(), errors.clone());
        let path = b.path.clone();
        let shared = shared.clone();
        threads.push(std::thread::spawn(move || {
            let mut c = Client::connect(&path).unwrap();
            let eph = spec("udp:127.0.0.1:0");
            while !stop.load(Ordering::SeqCst) {
                let res = (|| -> sockpass::Result<()> {
                    if i == 3 {
                        c = Client::connect(&path)?;
                    }
                    let g1 = c.request_socket(&eph, ShareMode::None, "load")?;
                    let g2 = c.request_socket(&shared, ShareMode::Any, "load")?;
                    c.release(&g1.token)?;
                    c.release(&g2.token)?;
                    Ok(())
                })();
                match res {
                    Ok(()) => ok.fetch_add(1, Ordering::SeqCst),
                    Err(e) => {
                        errors.lock().unwrap().push(e.to_string());
                        failed.fetch_add(1, Ordering::SeqCst)
                    }
                };
            }
        }));
    }
    Load {
        stop,
        ok,
        failed,
        errors,
        threads,
    }
}

impl Load {
    fn wait_more(&self, n: u64) {
        let start = self.ok.load(Ordering::SeqCst);
        wait_for("the load clients to make progress", || {
            (self.ok.load(Ordering::SeqCst) >= start + n).then_some(())
        });
    }
    fn finish(self) -> (u64, u64, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            t.join().unwrap();
        }
        let errs = self.errors.lock().unwrap().clone();
        (
            self.ok.load(Ordering::SeqCst),
            self.failed.load(Ordering::SeqCst),
            errs,
        )
    }
}

#[test]
fn upgrade_under_load_by_sighup_and_cli_loses_nothing() {
    let b = Broker::start("upgrade-load");
    let pid = b.pid();
    // Sockets held across the upgrades by a client that stays connected.
    let mut holder = b.client();
    let held: Vec<sockpass::Grant> = [
        "udp:127.0.0.1:0",
        "tcp:127.0.0.1:0?listen=16",
        "udp:127.0.0.1:0",
    ]
    .iter()
    .map(|s| {
        holder
            .request_socket(&spec(s), ShareMode::None, "holder")
            .unwrap()
    })
    .collect();
    let held_inodes: Vec<u64> = held.iter().map(|g| inode(&g.fd)).collect();
    let mut manager = b.client();
    let resv = manager
        .reserve_socket(&spec("udp:127.0.0.1:0"), ShareMode::None, "resv")
        .unwrap();
    let shared = spec(&format!("tcp:127.0.0.1:{}", free_port(false)));
    let before = b.status();
    let inherited_before = inherited_fds(pid);

    let load = start_load(&b, &shared);
    load.wait_more(50);

    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    wait_for("the SIGHUP upgrade", || {
        (upgrades_logged(&b) == 1).then_some(())
    });
    load.wait_more(50);

    let out = Command::new(sockpass_bin())
        .args(["upgrade", "--socket"])
        .arg(&b.path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sockpass upgrade failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("upgraded sockpassd (pid {pid})")
    );
    assert_eq!(upgrades_logged(&b), 2);
    load.wait_more(50);
    let (ok, failed, errs) = load.finish();
    assert_eq!(failed, 0, "failed requests across the upgrades: {errs:?}");
    assert!(ok >= 150);

    // Same process, same sockets, same references.
    assert_eq!(b.pid(), pid);
    // Executed by fd, yet still named after the binary (pidof, journald).
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .unwrap()
            .trim(),
        "sockpassd"
    );
    assert_eq!(holder.broker_pid().unwrap() as i32, pid);
    let inodes = broker_socket_inodes(pid);
    for ino in &held_inodes {
        assert!(inodes.contains(ino), "held socket {ino} was not kept");
    }
    // The load's connections are gone once the broker saw their hang-ups
    // (a child another test forks may hold a copy for a moment).
    wait_for("the load's connections to go", || {
        (b.status().counters.connections == before.counters.connections).then_some(())
    });
    let after = b.status();
    assert_eq!(after.counters.sockets, before.counters.sockets);
    assert_eq!(after.counters.references, before.counters.references);
    assert_eq!(after.counters.reservations, 1);
    assert_eq!(after.counters.connections, before.counters.connections);

    // Tokens still name their references: releasing works, and closes the
    // sockets (no other holder).
    for g in &held {
        assert_eq!(holder.release(&g.token).unwrap(), 0);
    }
    // The reservation survived with its remaining time and is picked up.
    let mut taker = b.client();
    let g = taker.pickup(&resv.token).unwrap();
    assert_eq!(g.port, resv.port);
    let st = b.status();
    assert_eq!(st.counters.reservations, 0);
    assert_eq!(st.counters.references, 1);
    drop(g);
    // A fresh request is served by the upgraded image, on a CLOEXEC fd.
    let g = taker
        .request_socket(&spec("udp:127.0.0.1:0"), ShareMode::None, "")
        .unwrap();
    assert!(sockpass::sys::is_cloexec(g.fd.as_raw_fd()));
    assert_eq!(b.log_text().matches("upgrading: executing").count(), 2);
    // Every fd the broker made is CLOEXEC again after the handover: the
    // only ones without it are those it inherited (stdio and whatever the
    // test harness leaves open), the same set as before the upgrades.
    assert_eq!(inherited_fds(pid), inherited_before);
}

#[test]
fn cache_identity_and_conflicts_survive_an_upgrade() {
    let b = Broker::start("upgrade-conflict");
    let mut c = b.client();
    let port = free_port(true);
    let s = spec(&format!("udp:127.0.0.1:{port}"));
    let g = c.request_socket(&s, ShareMode::Any, "a").unwrap();
    assert_eq!(c.upgrade(None).unwrap() as i32, b.pid());
    // Same spec: the same cached socket.
    let g2 = c.request_socket(&s, ShareMode::Any, "a").unwrap();
    assert!(g2.cached);
    assert_eq!(inode(&g2.fd), inode(&g.fd));
    // Same address, other options: still a conflict naming the option.
    let e = c
        .request_socket(
            &spec(&format!("udp:127.0.0.1:{port}?reuseport=1")),
            ShareMode::Any,
            "a",
        )
        .unwrap_err();
    assert_eq!(e.kind(), Kind::ShareConflict, "{e}");
    assert!(e.message().contains("reuseport"), "{e}");
    // Share modes too.
    let mut other = b.client();
    let e = other.request_socket(&s, ShareMode::None, "b").unwrap_err();
    assert_eq!(e.kind(), Kind::ShareConflict, "{e}");
}

#[test]
fn upgrade_to_a_missing_or_broken_binary_is_refused_and_serving_goes_on() {
    let b = Broker::start("upgrade-refused");
    let mut c = b.client();
    let g = c
        .request_socket(&spec("udp:127.0.0.1:0"), ShareMode::None, "keep")
        .unwrap();
    let before = b.status().counters;
    let inherited_before = inherited_fds(b.pid());

    let e = c
        .upgrade(Some(std::path::Path::new("/nonexistent/sockpassd")))
        .unwrap_err();
    assert_eq!(e.kind(), Kind::BadRequest, "{e}");
    assert!(e.message().contains("/nonexistent/sockpassd"), "{e}");

    let e = c
        .upgrade(Some(std::path::Path::new("relative/sockpassd")))
        .unwrap_err();
    assert_eq!(e.kind(), Kind::BadRequest, "{e}");

    // An executable file execve refuses (no ELF header, no #!): the
    // pre-flight does not get the format from it.
    let bad = b.dir.join("not-a-binary");
    std::fs::write(&bad, b"\0\0\0\0garbage").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&bad, std::fs::Permissions::from_mode(0o755)).unwrap();
    let e = c.upgrade(Some(&bad)).unwrap_err();
    assert!(e.message().contains("not a compatible sockpassd"), "{e}");

    // A binary that passes the pre-flight and the probe but that execve
    // then refuses (it takes its own execute bit away during the probe):
    // the exec fails after the state was written, and the old image
    // rebuilds its broker from it and carries on.
    let vanishing_path = b.dir.join("vanishing");
    let vanishing = script(
        &b.dir,
        "vanishing",
        &format!(
            "[ \"$1\" = --handoff-version ] && {{ echo {}; exit 0; }}\n[ \"$1\" = --handoff-check ] && {{ chmod a-x {}; exec {} \"$@\"; }}\nexit 1\n",
            sockpass_broker::handoff::FORMAT,
            vanishing_path.display(),
            sockpassd_bin().display()
        ),
    );
    let e = c.upgrade(Some(&vanishing)).unwrap_err();
    assert!(e.message().contains("execve"), "{e}");

    let out = Command::new(sockpass_bin())
        .args(["upgrade", "--exe", "/nonexistent/sockpassd", "--socket"])
        .arg(&b.path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/sockpassd"));

    // Nothing changed, and the reference still works.
    let after = b.status().counters;
    assert_eq!(after.sockets, before.sockets);
    assert_eq!(after.references, before.references);
    assert_eq!(after.connections, before.connections);
    assert_eq!(c.release(&g.token).unwrap(), 0);
    assert_eq!(upgrades_logged(&b), 0);
    // The failed exec left no fd without CLOEXEC (the state's, the target's,
    // the running image's).
    assert_eq!(inherited_fds(b.pid()), inherited_before);
    // The relative path is refused when the request arrives; the other
    // four by the daemon's checks or the failed exec.
    assert_eq!(b.log_text().matches("upgrade refused").count(), 4);
    let g2 = c
        .request_socket(&spec("udp:127.0.0.1:0"), ShareMode::None, "")
        .unwrap();
    drop::<OwnedFd>(g2.fd);
}

#[test]
fn upgrade_to_a_program_that_is_not_a_compatible_sockpassd_is_refused_before_the_exec() {
    let b = Broker::start("upgrade-preflight");
    let pid = b.pid();
    let mut c = b.client();
    let g = c
        .request_socket(&spec("udp:127.0.0.1:0"), ShareMode::None, "keep")
        .unwrap();
    let inodes = broker_socket_inodes(pid);
    let before = b.status().counters;
    let old_format = script(&b.dir, "old-format", "echo SPHANDv0\n");
    let failing = script(
        &b.dir,
        "failing",
        "echo \"unknown option $1\" >&2\nexit 2\n",
    );
    for (exe, why) in [
        (std::path::Path::new("/bin/true"), "printed \"\""),
        (
            &old_format,
            "printed \"SPHANDv0\", this broker hands over SPHANDv2",
        ),
        (&failing, "ended with exit status: 2"),
    ] {
        let e = c.upgrade(Some(exe)).unwrap_err();
        assert_eq!(e.kind(), Kind::BadRequest, "{e}");
        assert!(
            e.message().contains(&format!(
                "upgrade binary {} is not a compatible sockpassd",
                exe.display()
            )) && e.message().contains(why),
            "{why}: {e}"
        );
    }
    // The CLI says so too, and fails.
    let out = Command::new(sockpass_bin())
        .args(["upgrade", "--exe", "/bin/true", "--socket"])
        .arg(&b.path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a compatible sockpassd"), "{err}");
    // Same process, nothing exec'd, every socket and connection kept.
    assert_eq!(b.pid(), pid);
    assert_eq!(upgrades_logged(&b), 0);
    assert!(
        !b.log_text().contains("upgrading: executing"),
        "{}",
        b.log_text()
    );
    let now = broker_socket_inodes(pid);
    assert!(inodes.iter().all(|i| now.contains(i)), "{inodes:?} {now:?}");
    let after = b.status().counters;
    assert_eq!(
        (after.sockets, after.references, after.connections),
        (before.sockets, before.references, before.connections)
    );
    assert_eq!(c.release(&g.token).unwrap(), 0);
    // The real binary passes the pre-flight and the upgrade goes through.
    assert_eq!(c.upgrade(None).unwrap() as i32, pid);
    assert_eq!(upgrades_logged(&b), 1);
}

#[test]
fn handoff_version_flag_prints_the_format() {
    let out = Command::new(sockpassd_bin())
        .arg("--handoff-version")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        sockpass_broker::handoff::FORMAT
    );
}

#[test]
fn upgrade_refused_when_the_policy_file_no_longer_parses() {
    let dir = temp_dir("upgrade-policy");
    let policy = dir.join("policy");
    std::fs::write(&policy, "allow * ops=request\nallow * ops=pickup\n").unwrap();
    let path = dir.join("sockpassd.sock");
    let b = Broker::start_at(dir.clone(), path, &["--policy", policy.to_str().unwrap()]);
    std::fs::write(&policy, "this is not a rule\n").unwrap();
    let mut c = b.client();
    let e = c.upgrade(None).unwrap_err();
    assert!(e.message().contains("policy:1"), "{e}");
    // Still serving, on the old policy.
    c.request_socket(&spec("udp:127.0.0.1:0"), ShareMode::None, "")
        .unwrap();
    std::fs::write(&policy, "allow * ops=request\nallow * ops=pickup\n").unwrap();
    assert_eq!(c.upgrade(None).unwrap() as i32, b.pid());
    assert_eq!(upgrades_logged(&b), 1);
}

#[test]
fn upgrade_needs_root_or_the_brokers_uid() {
    if !is_root() {
        eprintln!("skipping: running a client as another uid needs root");
        return;
    }
    let b = Broker::start("upgrade-perm");
    // A client as nobody (uid 65534), through the CLI.
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(sockpass_bin())
        .args(["upgrade", "--socket"])
        .arg(&b.path)
        .output();
    let Ok(out) = out else {
        eprintln!("skipping: setpriv is not available");
        return;
    };
    // Refused: the "denied" exit code (EX_NOPERM).
    assert_eq!(out.status.code(), Some(77), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("only root or uid"),
        "{out:?}"
    );
    assert_eq!(upgrades_logged(&b), 0);
    b.client()
        .request_socket(&spec("udp:127.0.0.1:0"), ShareMode::None, "")
        .unwrap();
}

// ---- the systemd fd store (no systemd needed: the test plays its part) ----

/// A datagram socket standing in for systemd's notify socket.
/// A sockpassd in a temp dir whose `$NOTIFY_SOCKET` is a datagram socket
/// the test reads (`rx`), with `env` set too; its log is `dir/log`.
fn notified_broker(
    tag: &str,
    env: &[(&str, &str)],
) -> (std::path::PathBuf, OwnedFd, std::path::PathBuf, Reap) {
    let dir = temp_dir(tag);
    let notify = dir.join("notify");
    let rx = notify_receiver(&notify);
    let path = dir.join("sockpassd.sock");
    let mut cmd = Command::new(sockpassd_bin());
    cmd.arg("--socket")
        .arg(&path)
        .env("NOTIFY_SOCKET", &notify)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join("log")).unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = Reap(cmd.spawn().unwrap());
    (dir, rx, path, child)
}

fn notify_receiver(path: &std::path::Path) -> OwnedFd {
    let fd = sockpass::sys::unix_socket(libc::SOCK_DGRAM, false).unwrap();
    sockpass::sys::bind_unix(&fd, path.as_os_str().as_encoded_bytes()).unwrap();
    fd
}

/// The next fd store message (READY=1 and the like are skipped), with its fd.
fn next_store_msg(rx: &OwnedFd) -> (String, Option<OwnedFd>) {
    use std::os::fd::AsFd;
    loop {
        let ready = sockpass::sys::poll_one(rx.as_fd(), libc::POLLIN, 30_000).unwrap();
        assert!(ready != 0, "no fd store message within 30 s");
        let mut buf = [0u8; 4096];
        let r = sockpass::fdpass::recv_fds(rx.as_fd(), &mut buf, 1, 0).unwrap();
        let text = String::from_utf8_lossy(&buf[..r.len]).into_owned();
        if text.contains("FDSTORE") {
            return (text, r.fds.into_iter().next());
        }
    }
}

fn no_store_msg(rx: &OwnedFd) {
    use std::os::fd::AsFd;
    while sockpass::sys::poll_one(rx.as_fd(), libc::POLLIN, 200).unwrap() != 0 {
        let mut buf = [0u8; 4096];
        let r = sockpass::fdpass::recv_fds(rx.as_fd(), &mut buf, 1, 0).unwrap();
        let text = String::from_utf8_lossy(&buf[..r.len]).into_owned();
        assert!(!text.contains("FDSTORE"), "unexpected {text:?}");
    }
}

fn field<'a>(msg: &'a str, key: &str) -> &'a str {
    msg.lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("{key} missing in {msg:?}"))
}

#[test]
fn cached_sockets_go_to_the_fd_store_and_leave_it_on_last_close() {
    let (_dir, rx, path, mut child) = notified_broker("fdstore-push", &[("FDSTORE", "64")]);
    let mut c = wait_for("broker", || Client::connect(&path).ok());
    let port = free_port(true);
    let s = spec(&format!("udp:127.0.0.1:{port}"));
    let g = c.request_socket(&s, ShareMode::Any, "a").unwrap();
    let (msg, fd) = next_store_msg(&rx);
    assert!(msg.contains("FDSTORE=1"), "{msg:?}");
    let name = field(&msg, "FDNAME=").to_string();
    assert!(name.starts_with("sp.") && !name.contains(':'), "{name}");
    let canonical = g.token; // the reference, released below
    assert_eq!(
        sockpass_broker::fdstore::spec_of_name(&name)
            .unwrap()
            .parse::<SocketSpec>()
            .unwrap()
            .canonical(),
        s.canonical()
    );
    assert_eq!(inode(&fd.expect("stored fd")), inode(&g.fd));
    // A second reference to the same socket stores nothing more; an
    // ephemeral socket is never stored (nobody could ask for it again).
    let mut c2 = wait_for("second client", || Client::connect(&path).ok());
    let g2 = c2.request_socket(&s, ShareMode::Any, "a").unwrap();
    let e = c.request_socket(&eph_spec(), ShareMode::None, "").unwrap();
    no_store_msg(&rx);
    c2.release(&g2.token).unwrap();
    no_store_msg(&rx);
    c.release(&canonical).unwrap();
    let (msg, fd) = next_store_msg(&rx);
    assert!(msg.contains("FDSTOREREMOVE=1"), "{msg:?}");
    assert_eq!(field(&msg, "FDNAME="), name);
    assert!(fd.is_none());
    drop(e);
    child.0.kill().unwrap();
    child.0.wait().unwrap();
}

#[test]
fn fd_store_flag_pushes_without_fdstore_env() {
    // systemd before 254 keeps stored fds (FileDescriptorStoreMax=, since
    // 219) but sets no $FDSTORE: --fd-store is what the unit passes then.
    let dir = temp_dir("fdstore-flag");
    let notify = dir.join("notify");
    let rx = notify_receiver(&notify);
    let start = |path: &std::path::Path, flag: bool| {
        let mut cmd = Command::new(sockpassd_bin());
        cmd.arg("--socket").arg(path);
        if flag {
            cmd.arg("--fd-store");
        }
        Reap(
            cmd.env("NOTIFY_SOCKET", &notify)
                .env_remove("FDSTORE")
                .stdout(std::process::Stdio::null())
                .stderr(std::fs::File::create(path.with_extension("log")).unwrap())
                .spawn()
                .unwrap(),
        )
    };
    // Without the flag nor $FDSTORE, nothing is stored.
    let path = dir.join("plain.sock");
    let child = start(&path, false);
    let mut c = wait_for("broker", || Client::connect(&path).ok());
    let s = spec(&format!("udp:127.0.0.1:{}", free_port(true)));
    let g = c.request_socket(&s, ShareMode::Any, "a").unwrap();
    no_store_msg(&rx);
    drop((g, c, child));
    // With it, the socket goes to the store.
    let path = dir.join("flag.sock");
    let _child = start(&path, true);
    let mut c = wait_for("broker", || Client::connect(&path).ok());
    let s = spec(&format!("udp:127.0.0.1:{}", free_port(true)));
    let g = c.request_socket(&s, ShareMode::Any, "a").unwrap();
    let (msg, fd) = next_store_msg(&rx);
    assert!(msg.contains("FDSTORE=1"), "{msg:?}");
    assert_eq!(inode(&fd.expect("stored fd")), inode(&g.fd));
}

/// A child killed and reaped even when the test fails.
struct Reap(std::process::Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn eph_spec() -> SocketSpec {
    spec("udp:127.0.0.1:0")
}

#[test]
fn stored_sockets_are_adopted_after_a_crash_and_expire_unclaimed() {
    use std::os::unix::process::CommandExt;
    let dir = temp_dir("fdstore-adopt");
    let path = dir.join("sockpassd.sock");
    // What systemd would pass: the socket unit's listener, then two stored
    // sockets named by their specs.
    let listener = sockpass_broker::broker::bind_listener(&path, 0o666).unwrap();
    let (p1, p2) = (free_port(true), free_port(false));
    let s1 = format!("udp:127.0.0.1:{p1}");
    let s2 = format!("tcp:127.0.0.1:{p2}?backlog=8");
    let u1 = std::net::UdpSocket::bind(("127.0.0.1", p1)).unwrap();
    let t2 = std::net::TcpListener::bind(("127.0.0.1", p2)).unwrap();
    let (ino1, ino2) = (
        inode(&OwnedFd::from(u1.try_clone().unwrap())),
        inode(&OwnedFd::from(t2.try_clone().unwrap())),
    );
    let names = format!(
        "sockpassd.socket:{}:{}",
        sockpass_broker::fdstore::fd_name(3, &s1).unwrap(),
        sockpass_broker::fdstore::fd_name(9, &s2).unwrap()
    );
    let fds = [listener.as_raw_fd(), u1.as_raw_fd(), t2.as_raw_fd()];
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "LISTEN_PID=$$ exec \"$0\" \"$@\""])
        .arg(sockpassd_bin())
        .args(["--reservation-ttl", "1"])
        .env("LISTEN_FDS", "3")
        .env("LISTEN_FDNAMES", &names)
        .stderr(std::fs::File::create(dir.join("log")).unwrap());
    // SAFETY: dup2 is async-signal-safe; the fd numbers were read before fork.
    unsafe {
        cmd.pre_exec(move || {
            // Move them out of the way first, then into 3, 4, 5.
            let mut tmp = [0; 3];
            for (i, fd) in fds.iter().enumerate() {
                tmp[i] = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 100);
            }
            for (i, fd) in tmp.iter().enumerate() {
                libc::dup2(*fd, 3 + i as i32);
            }
            Ok(())
        });
    }
    let mut child = Reap(cmd.stdout(std::process::Stdio::null()).spawn().unwrap());
    drop((listener, u1, t2));
    let mut c = wait_for("adopting broker", || Client::connect(&path).ok());
    let st = c.status().unwrap();
    assert_eq!(st.counters.sockets, 2, "both stored sockets adopted");
    assert_eq!(st.counters.reservations, 2);
    // A request for the spec gets the very same socket, exclusively.
    let g = c
        .request_socket(&spec(&s1), ShareMode::None, "back")
        .unwrap();
    assert!(g.cached);
    assert_eq!(inode(&g.fd), ino1);
    let st = c.status().unwrap();
    assert_eq!(st.counters.reservations, 1);
    assert_eq!(st.counters.references, 2);
    // The one nobody asks for is closed after the reservation lifetime.
    wait_for("the unclaimed socket to expire", || {
        (c.status().unwrap().counters.sockets == 1).then_some(())
    });
    assert!(std::net::TcpListener::bind(("127.0.0.1", p2)).is_ok());
    let _ = ino2;
    c.release(&g.token).unwrap();
    assert_eq!(c.status().unwrap().counters.sockets, 0);
    child.0.kill().unwrap();
    child.0.wait().unwrap();
}

#[test]
fn queued_replies_survive_an_upgrade_in_order() {
    use std::os::fd::AsFd;
    let b = Broker::start("upgrade-queue");
    // A client that sends STATUS requests without reading replies: the
    // broker's per-client queue fills (its replies carry memfds) and it
    // stops reading; the rest wait in the kernel.
    let raw = sockpass::sys::unix_socket(libc::SOCK_SEQPACKET, false).unwrap();
    sockpass::sys::connect_unix(&raw, b.path.as_os_str().as_encoded_bytes()).unwrap();
    // A large send buffer (root may force one) lets far more requests wait
    // than the broker's replies can fill its own buffer with.
    if is_root() {
        sockpass::sys::setsockopt_int(&raw, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, 8 << 20)
            .unwrap();
    } else {
        eprintln!("note: not root, the send buffer stays small; the queue may not fill");
    }
    let mut buf = Vec::new();
    let mut sent = 0u32;
    while sent < 20000 {
        sockpass::proto::encode_status(&mut buf, sent + 1);
        match sockpass::fdpass::send_fds(raw.as_fd(), &buf, &[], libc::MSG_DONTWAIT) {
            Ok(_) => sent += 1,
            Err(libc::EAGAIN) => break,
            Err(e) => panic!("send: {e}"),
        }
    }
    assert!(sent > 32, "only {sent} requests fit");
    // Wait until the broker stops reading us (its queue for us is full):
    // our unread requests (SIOCOUTQ) stop shrinking.
    let outq = || {
        let mut n: libc::c_int = 0;
        // SAFETY: ioctl into a local int.
        unsafe { libc::ioctl(raw.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
        n
    };
    let mut last = -1;
    wait_for("the broker to pause this client", || {
        let n = outq();
        let steady = n > 0 && n == last;
        last = n;
        std::thread::sleep(std::time::Duration::from_millis(20));
        steady.then_some(())
    });
    let mut c = b.client();
    assert_eq!(c.upgrade(None).unwrap() as i32, b.pid());
    // Every request gets its reply, in order, each with its memfd.
    let mut rbuf = [0u8; 1024];
    for want in 1..=sent {
        let ready = sockpass::sys::poll_one(raw.as_fd(), libc::POLLIN, 30_000).unwrap();
        assert!(ready != 0, "reply {want} of {sent} missing");
        let r = sockpass::fdpass::recv_fds(raw.as_fd(), &mut rbuf, 1, 0).unwrap();
        let h = sockpass::proto::Header::parse(&rbuf[..r.len]).unwrap();
        assert_eq!(h.id, want);
        assert_eq!(h.ty, sockpass::proto::ty::STATUS_OK);
        assert_eq!(r.fds.len(), 1);
    }
    assert_eq!(upgrades_logged(&b), 1);
    // The handover did carry replies that were still queued in the broker.
    let log = b.log_text();
    let kept: usize = log
        .split(" queued replies kept")
        .next()
        .and_then(|s| s.rsplit(", ").next())
        .and_then(|n| n.parse().ok())
        .expect("queued replies in the upgrade log line");
    assert!(kept > 0, "no reply was queued at the handover: {log}");
}

/// The next notify message, whatever it says.
fn next_notify_msg(rx: &OwnedFd) -> String {
    use std::os::fd::AsFd;
    let ready = sockpass::sys::poll_one(rx.as_fd(), libc::POLLIN, 30_000).unwrap();
    assert!(ready != 0, "no notify message within 30 s");
    let mut buf = [0u8; 4096];
    let r = sockpass::fdpass::recv_fds(rx.as_fd(), &mut buf, 1, 0).unwrap();
    String::from_utf8_lossy(&buf[..r.len]).into_owned()
}

#[test]
fn the_service_manager_sees_reloading_then_ready_around_an_upgrade() {
    let (_dir, rx, path, mut child) =
        notified_broker("notify-reload", &[("SOCKPASSD_DEFAULT_POLICY", "")]);
    assert!(next_notify_msg(&rx).starts_with("READY=1\n"));
    let upgrade = |exe: Option<&str>| {
        let mut c = Command::new(sockpass_bin());
        c.arg("upgrade");
        if let Some(e) = exe {
            c.args(["--exe", e]);
        }
        c.arg("--socket").arg(&path).output().unwrap()
    };
    // Refused (not a sockpassd): ExecReload's command fails, and the
    // service is ready again, on the old image.
    let out = upgrade(Some("/bin/true"));
    assert!(!out.status.success(), "{out:?}");
    let msg = next_notify_msg(&rx);
    let usec: u64 = field(&msg, "MONOTONIC_USEC=").parse().unwrap();
    assert!(msg.starts_with("RELOADING=1\n") && usec > 0, "{msg:?}");
    assert_eq!(next_notify_msg(&rx), "READY=1\n");
    // Done: the command succeeds, and READY=1 comes from the new image
    // (with its MAINPID, the same pid).
    let out = upgrade(None);
    assert!(out.status.success(), "{out:?}");
    let msg = next_notify_msg(&rx);
    assert!(msg.starts_with("RELOADING=1\n"), "{msg:?}");
    let msg = next_notify_msg(&rx);
    assert!(msg.starts_with("READY=1\n"), "{msg:?}");
    assert_eq!(field(&msg, "MAINPID="), child.0.id().to_string());
    child.0.kill().unwrap();
    child.0.wait().unwrap();
}

/// A token names its slot in the broker's reference table: a released
/// token stays unknown after its slot is reused (by the same image or the
/// next), a token differing in its random bytes or in its slot part is
/// unknown, and tokens made before an upgrade keep working after it.
#[test]
fn reused_slots_give_new_tokens_and_old_ones_stay_unknown_across_upgrades() {
    let b = Broker::start("upgrade-slots");
    let mut c = b.client();
    let port = free_port(true);
    let s = spec(&format!("udp:127.0.0.1:{port}"));
    let get = |c: &mut sockpass::Client| c.request_socket(&s, ShareMode::Any, "a").unwrap().token;
    let unknown = |c: &mut sockpass::Client, t: &sockpass::Token| {
        let e = c.release(t).unwrap_err();
        assert_eq!(e.kind(), Kind::UnknownToken, "{e}");
    };
    let (t1, t2, t3) = (get(&mut c), get(&mut c), get(&mut c));
    assert_eq!(c.release(&t2).unwrap(), 2);
    let t4 = get(&mut c);
    assert!(![t1, t2, t3].contains(&t4));
    unknown(&mut c, &t2);
    // t4's slot and generation with other random bytes; t2's random bytes
    // with t4's slot part: neither is anything.
    let mut forged = *t4.as_bytes();
    forged[0] ^= 0x80;
    unknown(&mut c, &sockpass::Token::from_bytes(forged));
    let mut forged = *t2.as_bytes();
    forged[16..].copy_from_slice(&t4.as_bytes()[16..]);
    unknown(&mut c, &sockpass::Token::from_bytes(forged));
    assert_eq!(b.status().counters.references, 3);
    assert_eq!(c.upgrade(None).unwrap() as i32, b.pid());
    // Made before the upgrade: still good, once.
    assert_eq!(c.release(&t1).unwrap(), 2);
    unknown(&mut c, &t1);
    unknown(&mut c, &t2);
    let t5 = get(&mut c);
    assert!(![t1, t2, t3, t4].contains(&t5));
    unknown(&mut c, &t1);
    assert_eq!(c.upgrade(None).unwrap() as i32, b.pid());
    for (t, left) in [(&t3, 2), (&t5, 1), (&t4, 0)] {
        assert_eq!(c.release(t).unwrap(), left);
        unknown(&mut c, t);
    }
    assert_eq!(b.status().counters.references, 0);
    let t6 = get(&mut c);
    assert!(![t1, t2, t3, t4, t5].contains(&t6));
    assert_eq!(c.release(&t6).unwrap(), 0);
}
