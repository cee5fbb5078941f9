//! The broker's life as a process: one broker a path (a second is refused,
//! a stale socket replaced), default paths, and clean stops on SIGTERM and
//! SIGINT (split from broker.rs).

mod common;
use common::*;
use sockpass::Client;
use sockpass::ShareMode;
use std::path::PathBuf;
use std::process::Command;

#[test]
fn refuses_a_second_broker_and_replaces_a_stale_socket() {
    let mut b = Broker::start("twice");
    let out = Command::new(sockpassd_bin())
        .arg("--socket")
        .arg(&b.path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("a live broker already answers"), "{err}");
    // Kill -9 leaves a stale socket file behind; a new broker replaces it.
    let mut c = b.child.take().unwrap();
    c.kill().unwrap();
    c.wait().unwrap();
    assert!(b.path.exists());
    let b2 = Broker::start_at(b.dir.clone(), b.path.clone(), &[]);
    b2.client()
        .request_socket(
            &"udp:127.0.0.1:0".parse::<sockpass::SocketSpec>().unwrap(),
            ShareMode::None,
            "x",
        )
        .unwrap();
}

#[test]
fn sigterm_shuts_down_cleanly() {
    let mut b = Broker::start("sigterm");
    let _c = b.client();
    let st = b.stop();
    assert!(st.success(), "exit status {st}");
    assert!(!b.path.exists(), "socket file removed on shutdown");
    let log = b.log_text();
    assert!(log.contains("listening on"), "{log}");
    assert!(log.contains("SIGTERM received, shutting down"), "{log}");
}

#[test]
fn default_path_comes_from_the_environment() {
    let dir = temp_dir("envpath");
    let path = dir.join("via-env.sock");
    let mut child = Command::new(sockpassd_bin())
        .env("SOCKPASS_SOCKET", &path)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for("broker at $SOCKPASS_SOCKET", || Client::connect(&path).ok());
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

/// Start sockpassd through `cmd` (which execs it, so the pid is the
/// broker's), wait for `path` (a function of the pid) to answer, then stop
/// it with SIGINT: it must exit 0 and say why.
fn run_default_path_broker(tag: &str, mut cmd: Command, path: impl Fn(u32) -> PathBuf) {
    let dir = temp_dir(tag);
    let log = dir.join("log");
    cmd.env_remove("SOCKPASS_SOCKET")
        .stdin(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    let mut child = cmd.spawn().unwrap();
    let p = path(child.id());
    wait_for(&format!("a broker at {}", p.display()), || {
        if let Ok(Some(st)) = child.try_wait() {
            panic!(
                "{tag}: sockpassd exited with {st}: {}",
                std::fs::read_to_string(&log).unwrap()
            );
        }
        Client::connect(&p).ok()
    });
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let st = wait_child(&mut child);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(st.success(), "{tag}: exit status {st}: {text}");
    assert!(
        text.contains("SIGINT received, shutting down"),
        "{tag}: {text}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// With neither --socket nor $SOCKPASS_SOCKET: root listens at
/// /run/sockpass/sockpassd.sock and others at
/// $XDG_RUNTIME_DIR/sockpass/sockpassd.sock, creating the missing directories;
/// a --socket in a directory that does not exist yet works too. Each broker
/// stops on SIGINT.
#[test]
fn default_paths_create_their_directories_and_sigint_stops() {
    if !is_root() {
        eprintln!(
            "skipped: needs root (runs one broker as root in its own /run, one as uid 65534)"
        );
        return;
    }
    // Root: in a private mount namespace with an empty /run, reached from
    // here through /proc/PID/root, so the host's /run is never touched.
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg("mount -t tmpfs -o mode=0755 tmpfs /run && exec \"$0\"")
        .arg(sockpassd_bin());
    run_default_path_broker("default-root", cmd, |pid| {
        PathBuf::from(format!("/proc/{pid}/root/run/sockpass/sockpassd.sock"))
    });

    // Not root: $XDG_RUNTIME_DIR, which does not exist yet.
    let top = temp_dir("default-xdg");
    std::fs::set_permissions(&top, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let xdg = top.join("xdg");
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(sockpassd_bin())
        .env("XDG_RUNTIME_DIR", &xdg);
    let want = xdg.join("sockpass/sockpassd.sock");
    run_default_path_broker("default-xdg-run", cmd, |_| want.clone());

    // --socket in directories that do not exist yet.
    let deep = top.join("a/b/c/s.sock");
    let mut cmd = Command::new(sockpassd_bin());
    cmd.arg("--socket").arg(&deep);
    run_default_path_broker("deep-socket", cmd, |_| deep.clone());
    let _ = std::fs::remove_dir_all(top);
}
