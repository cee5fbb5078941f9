//! `sockpass restart NAME`, and the control socket of `sockpass run --name
//! NAME` it talks to: a unix seqpacket socket at
//! `$XDG_RUNTIME_DIR/sockpass/run/NAME` (`/run/sockpass/run/NAME` as
//! root; a NAME with a `/` is the path itself), mode 0600, removed when
//! `run` exits. One request a connection: `restart`; the answer comes once
//! the restart is over: `ok ID OLD_PID NEW_PID OLD_STATUS` or
//! `failed ID NEW_PID STATUS|- CODE MESSAGE` (raw wait statuses).

use super::exit;
use clap::{Arg, ArgMatches, Command};
use sockpass::sys;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The request a client sends.
pub const RESTART: &[u8] = b"restart";

/// The directory of named control sockets: `/run/sockpass/run` as root,
/// else `$XDG_RUNTIME_DIR/sockpass/run` (`/run/user/UID/...` without it).
fn run_dir() -> PathBuf {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/run/sockpass/run");
    }
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|p| !p.is_empty()) {
        Some(d) => Path::new(&d).join("sockpass/run"),
        // SAFETY: getuid cannot fail.
        None => PathBuf::from(format!("/run/user/{}/sockpass/run", unsafe {
            libc::getuid()
        })),
    }
}

/// The control socket of the `sockpass run` with pid `pid`, or of the one
/// whose instance `pid` is: a listening seqpacket socket in [`run_dir`]
/// that process holds (`/proc/PID/fd` against `/proc/net/unix`).
fn path_of_pid(pid: i32) -> Result<PathBuf, String> {
    let held = |p: i32| -> Vec<u64> {
        std::fs::read_dir(format!("/proc/{p}/fd"))
            .into_iter()
            .flatten()
            .filter_map(|e| {
                let l = std::fs::read_link(e.ok()?.path()).ok()?;
                let l = l.to_str()?;
                l.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
            })
            .collect()
    };
    let parent = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("PPid:"))
                .and_then(|v| v.trim().parse::<i32>().ok())
        });
    let table = std::fs::read_to_string("/proc/net/unix").map_err(|e| e.to_string())?;
    let dir = run_dir();
    for p in std::iter::once(pid).chain(parent.filter(|&p| p > 1)) {
        let inodes = held(p);
        // "Num RefCount Protocol Flags Type St Inode Path": a listening
        // (flag __SO_ACCEPTCON) seqpacket (type 5) socket with a path.
        let found = table.lines().skip(1).find_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let (flags, ty, inode, path) = (w.get(3)?, w.get(4)?, w.get(6)?, w.get(7)?);
            let listening = u32::from_str_radix(flags, 16).ok()? & 0x10000 != 0;
            let ours = inodes.contains(&inode.parse().ok()?);
            (listening && ours && *ty == "0005" && Path::new(path).starts_with(&dir))
                .then(|| PathBuf::from(path))
        });
        if let Some(f) = found {
            return Ok(f);
        }
    }
    Err(format!(
        "process {pid} is not a sockpass run with a --name (nor one's instance) \
         that this user can see"
    ))
}

/// Where the control socket of instance NAME lives (a pid: that run's).
pub fn path_for(name: &str) -> Result<PathBuf, String> {
    if name.contains('/') {
        return Ok(PathBuf::from(name));
    }
    if name.is_empty()
        || name == "."
        || name == ".."
        || name.len() > 64
        || name.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(format!(
            "{name:?} is not a usable name (1 to 64 bytes, not . or .., not only digits, \
             which name a pid; a path has a /)"
        ));
    }
    Ok(run_dir().join(name))
}

/// The listening control socket; its file goes with it.
pub struct Endpoint {
    listener: OwnedFd,
    path: PathBuf,
    ino: (u64, u64),
}

fn os(e: i32, what: impl std::fmt::Display) -> sockpass::Error {
    sockpass::Error::os(e, what)
}

impl Endpoint {
    /// Bind the control socket at `path`, refusing if a live `run` holds
    /// it (a stale file left by a killed one is replaced).
    pub fn bind(path: &Path) -> sockpass::Result<Endpoint> {
        if let Some(dir) = path.parent() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| {
                    os(
                        e.raw_os_error().unwrap_or(libc::EIO),
                        format!("cannot create {}", dir.display()),
                    )
                })?;
        }
        let bytes = path.as_os_str().as_bytes();
        let sock = sys::unix_socket(libc::SOCK_SEQPACKET, true).map_err(|e| os(e, "socket"))?;
        match sys::bind_unix(&sock, bytes) {
            Ok(()) => {}
            Err(libc::EADDRINUSE) => {
                let probe =
                    sys::unix_socket(libc::SOCK_SEQPACKET, false).map_err(|e| os(e, "socket"))?;
                if sys::connect_unix(&probe, bytes).is_ok() {
                    return Err(sockpass::Error::with_errno(
                        sockpass::Kind::AddressInUse,
                        libc::EADDRINUSE,
                        format!(
                            "{} is held by a running sockpass run (pick another --name)",
                            path.display()
                        ),
                    ));
                }
                // Nobody listens: a file left by a run that was killed.
                let _ = std::fs::remove_file(path);
                sys::bind_unix(&sock, bytes)
                    .map_err(|e| os(e, format!("bind {}", path.display())))?;
            }
            Err(e) => return Err(os(e, format!("bind {}", path.display()))),
        }
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path)
            .and_then(|m| {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
                Ok(m)
            })
            .map_err(|e| {
                let _ = std::fs::remove_file(path);
                os(e.raw_os_error().unwrap_or(libc::EIO), path.display())
            })?;
        // SAFETY: listen on our own socket.
        if unsafe { libc::listen(sock.as_raw_fd(), 16) } < 0 {
            let _ = std::fs::remove_file(path);
            return Err(sockpass::Error::last_os("listen"));
        }
        Ok(Endpoint {
            listener: sock,
            path: path.to_path_buf(),
            ino: (meta.dev(), meta.ino()),
        })
    }

    pub fn fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Take one pending client and its request (waited for at most 200 ms:
    /// `sockpass restart` sends it with the connect; the loop waits meanwhile):
    /// only our own uid or root may ask. `None`: nothing usable.
    pub fn accept(&self) -> Option<(OwnedFd, Vec<u8>)> {
        // SAFETY: accept4 on our listener; a new fd is owned at once.
        let fd = unsafe {
            libc::accept4(
                self.listener.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            )
        };
        if fd < 0 {
            return None;
        }
        // SAFETY: accept4 returned a new fd that nothing else owns.
        let conn = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: geteuid cannot fail.
        let me = unsafe { libc::geteuid() };
        let creds = sys::peer_creds(&conn).ok()?;
        if creds.uid != me && creds.uid != 0 {
            let _ = send(
                &conn,
                b"failed 0 0 - 13 not allowed: another user's instance",
            );
            return None;
        }
        sys::poll_one(conn.as_fd(), libc::POLLIN, 200).ok()?;
        let mut buf = [0u8; 64];
        let n = recv(&conn, &mut buf, libc::MSG_DONTWAIT).ok()?;
        Some((conn, buf[..n].to_vec()))
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        // Only our own file: another run may have replaced a stale one.
        if std::fs::metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.ino) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Send one message (never blocks; a client that went away is fine).
pub fn send(conn: &OwnedFd, msg: &[u8]) -> std::io::Result<()> {
    // SAFETY: send from a valid buffer on our socket.
    let r = unsafe {
        libc::send(
            conn.as_raw_fd(),
            msg.as_ptr().cast(),
            msg.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn recv(conn: &OwnedFd, buf: &mut [u8], flags: i32) -> std::io::Result<usize> {
    // SAFETY: recv into a valid buffer on our socket.
    let r = unsafe { libc::recv(conn.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), flags) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(r as usize)
}

/// The answer for an outcome, as the module documentation spells it.
pub fn answer(ev: &sockpass::SuperviseEvent) -> Option<(u64, Vec<u8>)> {
    match ev {
        sockpass::SuperviseEvent::Restarted(r) => Some((
            r.id,
            format!("ok {} {} {} {}", r.id, r.old_pid, r.new_pid, r.old_status).into_bytes(),
        )),
        sockpass::SuperviseEvent::RestartFailed(f) => Some((
            f.id,
            format!(
                "failed {} {} {} {} {}",
                f.id,
                f.new_pid,
                f.status.map_or("-".into(), |s| s.to_string()),
                f.error.code(),
                f.error.message()
            )
            .into_bytes(),
        )),
        _ => None,
    }
}

pub fn command() -> Command {
    Command::new("restart")
        .about("Restart the program a `sockpass run --name NAME` runs, and wait for the outcome")
        .long_about(
            "Ask the `sockpass run --name NAME` that runs a program to restart it (as SIGUSR2 \
             does: a new instance on the same sockets, the old one stopped once the new one is \
             ready) and wait for the outcome. Prints the new instance's pid. Exits 0 once the \
             new instance is ready and the old one gone; if the restart failed (the old \
             instance keeps serving), the new instance's exit code (128+N for signal N) when \
             it had one, else 1.",
        )
        .arg(Arg::new("name").value_name("NAME").required(true).help(
            "The --name given to sockpass run (a path with a /: its control socket; a \
                     number: the pid of that sockpass run or of its program)",
        ))
        .arg(
            Arg::new("timeout")
                .long("timeout")
                .value_name("SECONDS")
                .value_parser(super::run::parse_seconds)
                .help("Give up waiting after this long (the restart itself goes on)"),
        )
}

pub fn run(m: &ArgMatches) -> Result<i32, String> {
    let name = m.get_one::<String>("name").expect("required");
    let path = match name.parse::<i32>() {
        Ok(pid) if pid > 0 => path_of_pid(pid)?,
        _ => path_for(name)?,
    };
    let timeout = m.get_one::<Duration>("timeout").copied();
    let sock = sys::unix_socket(libc::SOCK_SEQPACKET, false).map_err(|e| e.to_string())?;
    if let Err(e) = sys::connect_unix(&sock, path.as_os_str().as_bytes()) {
        let e = os(
            e,
            format!("no sockpass run --name {name} ({})", path.display()),
        );
        return Ok(super::fail("restart", &e));
    }
    if let Err(e) = send(&sock, RESTART) {
        return Ok(super::fail(
            "restart",
            &os(e.raw_os_error().unwrap_or(0), "send"),
        ));
    }
    let ms = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as i32);
    match sys::poll_one(sock.as_fd(), libc::POLLIN, ms) {
        Ok(0) => {
            eprintln!("sockpass: restart: no outcome within {timeout:?} (the restart goes on)");
            return Ok(exit::FAILURE);
        }
        Ok(_) => {}
        Err(e) => return Ok(super::fail("restart", &os(e, "poll"))),
    }
    let mut buf = [0u8; 4096];
    let n = recv(&sock, &mut buf, 0).unwrap_or(0);
    let reply = String::from_utf8_lossy(&buf[..n]).into_owned();
    let words: Vec<&str> = reply.splitn(6, ' ').collect();
    match words.as_slice() {
        ["ok", _id, _old, new, _st] => {
            println!("{new}");
            Ok(exit::OK)
        }
        ["failed", _id, _new, status, _code, msg] => {
            eprintln!("sockpass: restart {name} failed: {msg}");
            let code = status
                .parse::<i32>()
                .map(sockpass::exit_code)
                .unwrap_or(exit::FAILURE);
            Ok(if code == 0 { exit::FAILURE } else { code })
        }
        _ => {
            eprintln!("sockpass: restart {name}: the instance ended without an answer ({reply:?})");
            Ok(exit::FAILURE)
        }
    }
}
