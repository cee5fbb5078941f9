//! Hostile local users against a root broker (issue 21): a client racing
//! symlink swaps under a granted `path=` (and the same race against the
//! broker's listener and the server-socket manager, which share the
//! binder), another uid binding a UDP port the broker handed out, and
//! another uid naming root's application to join its socket. Attackers run
//! as uid `nobody`; each attack is bounded to a few seconds.

mod common;

use common::*;
use sockpass::Client;
use sockpass::{Kind, ShareMode, SocketSpec};
use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

fn spec(s: &str) -> SocketSpec {
    s.parse().unwrap()
}

fn need_root(what: &str) -> bool {
    if !is_root() {
        eprintln!("skipping {what}: needs root (a root broker, clients as nobody)");
        return false;
    }
    true
}

/// How long each race runs.
const RACE: Duration = Duration::from_secs(2);

/// Sets the flag when dropped, so a racing thread stops even if the
/// test's own loop panics.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Swap the names `a` and `b` (a directory and a symlink) back and forth
/// with `renameat2(RENAME_EXCHANGE)` until `stop`; the number of swaps.
fn flip(a: &Path, b: &Path, stop: &AtomicBool) -> u64 {
    let (ca, cb) = (
        CString::new(a.as_os_str().as_encoded_bytes()).unwrap(),
        CString::new(b.as_os_str().as_encoded_bytes()).unwrap(),
    );
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: two valid C strings.
        let r = unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                ca.as_ptr(),
                libc::AT_FDCWD,
                cb.as_ptr(),
                libc::RENAME_EXCHANGE,
            )
        };
        assert_eq!(r, 0, "renameat2: {}", std::io::Error::last_os_error());
        n += 1;
    }
    n
}

/// Put the real directory back at `d` (the symlink at `l`), whichever way
/// the last swap left them.
fn settle(d: &Path, l: &Path) {
    if std::fs::symlink_metadata(d)
        .unwrap()
        .file_type()
        .is_symlink()
    {
        let (cd, cl) = (
            CString::new(d.as_os_str().as_encoded_bytes()).unwrap(),
            CString::new(l.as_os_str().as_encoded_bytes()).unwrap(),
        );
        // SAFETY: two valid C strings.
        let r = unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                cd.as_ptr(),
                libc::AT_FDCWD,
                cl.as_ptr(),
                libc::RENAME_EXCHANGE,
            )
        };
        assert_eq!(r, 0);
    }
    assert!(std::fs::symlink_metadata(d).unwrap().is_dir());
}

/// A granted directory `nobody` owns, holding a real directory `d` and a
/// symlink `l` to a root-only directory outside it.
struct Layout {
    top: PathBuf,
    granted: PathBuf,
    secret: PathBuf,
}

impl Layout {
    fn new(tag: &str) -> Layout {
        let top = temp_dir(tag);
        let granted = top.join("granted");
        let secret = top.join("secret");
        std::fs::create_dir(&granted).unwrap();
        std::fs::create_dir(&secret).unwrap();
        std::fs::set_permissions(&top, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::create_dir(granted.join("d")).unwrap();
        std::os::unix::fs::symlink(&secret, granted.join("l")).unwrap();
        for p in [granted.clone(), granted.join("d")] {
            std::os::unix::fs::chown(&p, Some(NOBODY), Some(NOBODY)).unwrap();
        }
        std::os::unix::fs::lchown(granted.join("l"), Some(NOBODY), Some(NOBODY)).unwrap();
        Layout {
            top,
            granted,
            secret,
        }
    }

    fn secret_is_empty(&self) {
        let left: Vec<_> = std::fs::read_dir(&self.secret)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(
            left.is_empty(),
            "files appeared in the root-only directory: {left:?}"
        );
    }
}

impl Drop for Layout {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.top);
    }
}

/// Is the socket file at `path` the one `fd` listens on? Connect to the path
/// and see the connection arrive on `fd`.
fn listens_at(fd: &std::os::fd::OwnedFd, path: &Path) -> bool {
    let c = sockpass::sys::unix_socket(libc::SOCK_STREAM, false).unwrap();
    if sockpass::sys::connect_unix(&c, path.as_os_str().as_encoded_bytes()).is_err() {
        return false;
    }
    use std::os::fd::AsFd;
    sockpass::sys::poll_one(fd.as_fd(), libc::POLLIN, 5000).unwrap() & libc::POLLIN != 0
}

/// Child, as nobody: while a thread swaps `$GRANTED/d` (a real directory)
/// with `$GRANTED/l` (a symlink to a root-only directory), request
/// `unix:$GRANTED/d/sN.sock?backlog=4` over and over. Every request must
/// succeed or be refused as a symlink on the way; afterwards each socket
/// granted must be in the real directory. Prints `ok refused swaps`.
#[test]
#[ignore]
fn child_race_unix_requests() {
    if !is_child() {
        return;
    }
    let granted = PathBuf::from(std::env::var("GRANTED").unwrap());
    let (d, l) = (granted.join("d"), granted.join("l"));
    let mut c = Client::connect(std::env::var("SOCK").unwrap()).unwrap();
    let stop = AtomicBool::new(false);
    let (mut got, mut refused) = (Vec::new(), 0u32);
    let swaps = std::thread::scope(|s| {
        let t = s.spawn(|| flip(&d, &l, &stop));
        let _stop = StopOnDrop(&stop);
        let t0 = Instant::now();
        let mut i = 0;
        // Bounded in time and in sockets (the broker's own table fits
        // under its RLIMIT_NOFILE).
        while t0.elapsed() < RACE && got.len() < 2000 {
            let name = format!("s{i}.sock");
            i += 1;
            let sp = spec(&format!("unix:{}/{name}?backlog=4", d.display()));
            match c.request_socket(&sp, ShareMode::None, "race") {
                Ok(g) => got.push((name, g)),
                Err(e) => {
                    assert!(
                        e.kind() == Kind::NotAllowed && e.message().contains("symlink"),
                        "unclear refusal: {:?}: {}",
                        e.kind(),
                        e.message()
                    );
                    refused += 1;
                }
            }
        }
        stop.store(true, Ordering::Relaxed);
        t.join().unwrap()
    });
    settle(&d, &l);
    for (name, g) in &got {
        assert!(
            listens_at(&g.fd, &d.join(name)),
            "{name} is not in the granted directory"
        );
    }
    println!("@@ {} {refused} {swaps}", got.len());
}

#[test]
fn unix_requests_racing_symlink_swaps_stay_in_the_granted_directory() {
    if !need_root("unix_requests_racing_symlink_swaps_stay_in_the_granted_directory") {
        return;
    }
    let lay = Layout::new("race-req");
    let pol = lay.top.join("policy.conf");
    std::fs::write(
        &pol,
        format!(
            // The race makes a socket a request, as fast as the machine
            // goes: nobody's socket quota (1/8 of what RLIMIT_NOFILE
            // allows) is not what this test is about.
            "allow uid=0 ops=all opts=all\nallow user=nobody path={}/\nlimit user=nobody sockets=unlimited references=unlimited\n",
            lay.granted.display()
        ),
    )
    .unwrap();
    let b = Broker::start_with("race-req-broker", &["--policy", &path_str(&pol)]);
    let mut root = b.client();
    let line = run_as_nobody(
        "child_race_unix_requests",
        &[
            ("SOCK", path_str(&b.path)),
            ("GRANTED", path_str(&lay.granted)),
        ],
    );
    let n: Vec<u64> = line.split(' ').map(|x| x.parse().unwrap()).collect();
    eprintln!("race: {} granted, {} refused, {} swaps", n[0], n[1], n[2]);
    assert!(n[0] > 0 && n[2] > 0, "the race ran: {line}");
    lay.secret_is_empty();
    // The root client was never disturbed.
    let g = root
        .request_socket(&spec("udp:127.0.0.1:0"), ShareMode::None, "root")
        .unwrap();
    root.release(&g.token).unwrap();
}

#[test]
fn listener_and_manager_binds_racing_symlink_swaps_stay_put() {
    if !need_root("listener_and_manager_binds_racing_symlink_swaps_stay_put") {
        return;
    }
    let lay = Layout::new("race-bind");
    let (d, l) = (lay.granted.join("d"), lay.granted.join("l"));
    let stop = AtomicBool::new(false);
    let (mut ok, mut refused) = (0, 0);
    let opts = sockpass::BindOptions {
        mode: 0o600,
        owner: Some((NOBODY, NOBODY)),
        ..Default::default()
    };
    std::thread::scope(|s| {
        let t = s.spawn(|| flip(&d, &l, &stop));
        let _stop = StopOnDrop(&stop);
        let t0 = Instant::now();
        let mut i = 0;
        while t0.elapsed() < RACE {
            i += 1;
            let p = d.join(format!("m{i}.sock"));
            let r = if i % 2 == 0 {
                sockpass_broker::broker::bind_listener_as(&p, 0o660, Some(NOBODY))
            } else {
                sockpass::bind_in_namespace(None, p.as_os_str().as_encoded_bytes(), &opts)
            };
            match r {
                Ok(fd) => {
                    ok += 1;
                    drop(fd);
                }
                Err(e) => {
                    assert!(e.message().contains("symlink"), "unclear refusal: {e}");
                    refused += 1;
                }
            }
        }
        stop.store(true, Ordering::Relaxed);
        t.join().unwrap();
    });
    eprintln!("listener/manager race: {ok} bound, {refused} refused");
    assert!(ok > 0);
    lay.secret_is_empty();
    settle(&d, &l);
    // Every file made is in the real directory, with its mode and owner.
    for e in std::fs::read_dir(&d).unwrap().flatten() {
        let m = std::fs::symlink_metadata(e.path()).unwrap();
        let n: u32 = e.file_name().to_string_lossy()[1..]
            .trim_end_matches(".sock")
            .parse()
            .unwrap();
        let (mode, uid) = if n % 2 == 0 {
            (0o660, 0)
        } else {
            (0o600, NOBODY)
        };
        assert_eq!(
            (m.mode() & 0o7777, m.uid(), m.gid()),
            (mode, uid, NOBODY),
            "{e:?}"
        );
    }
}

#[test]
fn broker_refuses_a_listener_path_through_a_symlink() {
    if !need_root("broker_refuses_a_listener_path_through_a_symlink") {
        return;
    }
    let lay = Layout::new("listen-link");
    let out = std::process::Command::new(sockpassd_bin())
        .arg("--socket")
        .arg(lay.granted.join("l/sockpassd.sock"))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("is a symlink"), "{err}");
    lay.secret_is_empty();
}

/// Child, as nobody: bind UDP 127.0.0.1:$PORT with SO_REUSEADDR set;
/// print `ok` or the errno.
#[test]
#[ignore]
fn child_bind_udp_reuseaddr() {
    if !is_child() {
        return;
    }
    let port: u16 = std::env::var("PORT").unwrap().parse().unwrap();
    // SAFETY: a fresh socket, owned at once.
    let fd = unsafe {
        use std::os::fd::FromRawFd;
        std::os::fd::OwnedFd::from_raw_fd(libc::socket(
            libc::AF_INET,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            0,
        ))
    };
    sockpass::sys::setsockopt_int(&fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1).unwrap();
    let (sa, len) = sockpass::sys::sockaddr_from("127.0.0.1".parse().unwrap(), port);
    // SAFETY: a valid sockaddr of length len.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_storage).cast(),
            len,
        )
    };
    if r == 0 {
        println!("@@ ok");
    } else {
        println!(
            "@@ {}",
            std::io::Error::last_os_error().raw_os_error().unwrap()
        );
    }
}

#[test]
fn another_uid_cannot_bind_over_a_udp_socket_held_with_share_none() {
    if !need_root("another_uid_cannot_bind_over_a_udp_socket_held_with_share_none") {
        return;
    }
    let b = Broker::start("udp-reuse");
    let mut root = b.client();
    let port = free_port(true);
    let g = root
        .request_socket(
            &spec(&format!("udp:127.0.0.1:{port}")),
            ShareMode::None,
            "dns",
        )
        .unwrap();
    assert_eq!(
        sockpass::sys::getsockopt_int(&g.fd, libc::SOL_SOCKET, libc::SO_REUSEADDR).unwrap(),
        0
    );
    let line = run_as_nobody("child_bind_udp_reuseaddr", &[("PORT", port.to_string())]);
    assert_eq!(
        line,
        libc::EADDRINUSE.to_string(),
        "nobody bound over root's socket"
    );
    // Asked for explicitly, SO_REUSEADDR is still there (and lets it in).
    let port2 = free_port(true);
    let g2 = root
        .request_socket(
            &spec(&format!("udp:127.0.0.1:{port2}?reuseaddr=1")),
            ShareMode::None,
            "dns",
        )
        .unwrap();
    let line = run_as_nobody("child_bind_udp_reuseaddr", &[("PORT", port2.to_string())]);
    assert_eq!(line, "ok");
    drop((g, g2));
}

/// Child, as nobody: request each `SPEC SHARE APP` in $REQS (`;`
/// separated), keeping what it gets; print `ok`/`cached` or the error's
/// kind and message per request, `|` separated.
#[test]
#[ignore]
fn child_share_requests() {
    if !is_child() {
        return;
    }
    let mut c = Client::connect(std::env::var("SOCK").unwrap()).unwrap();
    let mut out = Vec::new();
    let mut keep = Vec::new();
    for r in std::env::var("REQS").unwrap().split(';') {
        let w: Vec<&str> = r.split(' ').collect();
        match c.request_socket(&spec(w[0]), w[1].parse().unwrap(), w[2]) {
            Ok(g) => {
                out.push(if g.cached {
                    "cached".into()
                } else {
                    "ok".into()
                });
                keep.push(g);
            }
            Err(e) => out.push(format!("{:?}: {}", e.kind(), e.message())),
        }
    }
    println!("@@ {}", out.join("|"));
}

#[test]
fn sameapp_never_crosses_uids_and_any_needs_the_policys_consent() {
    if !need_root("sameapp_never_crosses_uids_and_any_needs_the_policys_consent") {
        return;
    }
    for across in [true, false] {
        let dir = temp_dir("share-uids");
        let pol = dir.join("policy.conf");
        std::fs::write(
            &pol,
            format!(
                "{}allow uid=0 ops=all opts=all\nallow * port=0,1024-65535\n",
                if across { "" } else { "share-across-uids no\n" }
            ),
        )
        .unwrap();
        let b = Broker::start_with("share-uids-broker", &["--policy", &path_str(&pol)]);
        let mut root = b.client();
        let [p1, p2] = free_ports(false);
        let (s1, s2) = (format!("tcp:127.0.0.1:{p1}"), format!("tcp:127.0.0.1:{p2}"));
        let g1 = root
            .request_socket(&spec(&s1), ShareMode::SameApp, "app")
            .unwrap();
        let g2 = root
            .request_socket(&spec(&s2), ShareMode::Any, "app")
            .unwrap();
        let reqs = [
            format!("{s1} sameapp app"),
            format!("{s1} any app"),
            format!("{s2} any other"),
        ];
        let line = run_as_nobody(
            "child_share_requests",
            &[("SOCK", path_str(&b.path)), ("REQS", reqs.join(";"))],
        );
        let r: Vec<&str> = line.split('|').collect();
        assert_eq!(r.len(), 3, "{line}");
        for x in &r[..2] {
            assert!(
                x.starts_with("ShareConflict") && x.contains("uid 65534 is not the holder's uid 0"),
                "{line}"
            );
        }
        if across {
            assert_eq!(r[2], "cached", "{line}");
        } else {
            assert!(
                r[2].starts_with("ShareConflict") && r[2].contains("forbids sharing across uids"),
                "{line}"
            );
        }
        // Root is undisturbed: its sockets are as they were, and within
        // one uid the BIND10 matrix still shares.
        let again = root
            .request_socket(&spec(&s1), ShareMode::SameApp, "app")
            .unwrap();
        assert!(again.cached && inode(&again.fd) == inode(&g1.fd));
        let st = b.status();
        let refs = |p: u16| st.sockets.iter().find(|s| s.spec.port == p).map(|s| s.refs);
        assert_eq!(refs(p1), Some(2));
        // The child has exited: only root's reference is left on s2.
        assert_eq!(refs(p2), Some(1));
        drop((g1, g2, again));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
