//! Running programs as uid nobody under `sockpass run` against a root
//! broker whose policy grants nobody what a test names: third-party
//! daemons and `--catch-bind` tests share these.

use super::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// One test at a time in a test binary: a free privileged port one picks
/// stays free until its program binds it, so another could pick it too.
pub static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The program's path, or None (skip) when it is not installed; in CI a
/// missing program is a failure, since setup installs it.
pub fn installed(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file());
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{name} is not installed (tests/lib/setup.sh installs it)"
        );
        eprintln!("skipped: {name} is not installed (tests/lib/setup.sh installs it)");
    }
    found
}

/// The daemon's path when its test can run: as root, with it installed.
pub fn daemon_to_test(name: &str) -> Option<PathBuf> {
    if !is_root() {
        eprintln!("skipped: needs root to run the broker and switch to uid 65534");
        return None;
    }
    installed(name)
}

/// A free privileged port, for this test alone while the guard lives.
pub fn privileged_port() -> Option<(std::sync::MutexGuard<'static, ()>, u16)> {
    let one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    match free_privileged_port(&[]) {
        Some(port) => Some((one, port)),
        None => {
            eprintln!("skipped: no privileged port is free on 127.0.0.1");
            None
        }
    }
}

/// A root broker in a temp directory uid nobody may enter (0755), whose
/// policy grants nobody `grants`.
pub fn broker_for_nobody(tag: &str, grants: &[String]) -> (PathBuf, Broker) {
    let rules: String = grants
        .iter()
        .map(|g| format!("allow uid={NOBODY} {g}\n"))
        .collect();
    broker_with_policy(tag, &rules)
}

/// A root broker in a temp directory uid nobody may enter (0755), with the
/// policy file `rules` (policy.conf in that directory).
pub fn broker_with_policy(tag: &str, rules: &str) -> (PathBuf, Broker) {
    let dir = temp_dir(tag);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let pol = dir.join("policy.conf");
    std::fs::write(&pol, rules).unwrap();
    let path = dir.join("sockpassd.sock");
    let b = Broker::start_at(dir.clone(), path, &["--policy", &path_str(&pol)]);
    (dir, b)
}

/// `sockpass run ARGS` as uid nobody (setpriv: no PAM session), its output
/// in `log`. With `systemd_booted`, in a mount namespace of its own where
/// /run/systemd/system exists: daemons such as unbound take socket
/// activation only when sd_booted() says systemd runs.
pub fn sockpass_run_as_nobody(args: &[String], log: &Path, systemd_booted: bool) -> Child {
    sockpass_run_as_nobody_cmd(args, log, systemd_booted)
        .spawn()
        .expect("start sockpass run")
}

/// The command [`sockpass_run_as_nobody`] runs, to add to before it starts.
pub fn sockpass_run_as_nobody_cmd(args: &[String], log: &Path, systemd_booted: bool) -> Command {
    let out = std::fs::File::create(log).unwrap();
    let mut cmd = if systemd_booted {
        let mut c = Command::new("unshare");
        c.args([
            "-m",
            "sh",
            "-c",
            "mount --make-rprivate / && \
             if [ -d /run/systemd ]; then d=/run/systemd; else d=/run; fi && \
             mount -t tmpfs -o mode=755 tmpfs $d && mkdir -p /run/systemd/system && \
             exec \"$@\"",
            "sh",
        ]);
        c
    } else {
        Command::new("env")
    };
    cmd.args([
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
    ])
    .arg(sockpass_bin())
    .arg("run")
    .args(args)
    .stdin(Stdio::null())
    .stdout(out.try_clone().unwrap())
    .stderr(out);
    cmd
}

/// Wait, bounded, for `f` to give a value while `c` runs; a child that
/// exits first or a wait that runs out fails with the daemon's log.
pub fn until<T>(c: &mut Child, log: &Path, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let t0 = std::time::Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        let text = || std::fs::read_to_string(log).unwrap_or_default();
        if let Some(st) = c.try_wait().unwrap() {
            panic!(
                "waiting for {what}: sockpass run exited ({st}):\n{}",
                text()
            );
        }
        if t0.elapsed() > WAIT {
            let _ = c.kill();
            let _ = c.wait();
            panic!("timed out after {WAIT:?} waiting for {what}:\n{}", text());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Stop `sockpass run` (it forwards SIGTERM to the daemon) and return its
/// exit code.
pub fn stop(mut c: Child) -> i32 {
    // SAFETY: kill on our own child's pid.
    unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    wait_child(&mut c).code().unwrap_or(-1)
}
