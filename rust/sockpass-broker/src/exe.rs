//! The binaries an upgrade runs, each opened once and executed by fd.
//!
//! An upgrade target is opened once ([`Exe::open_target`]), checked on the
//! open file (a regular executable owned by root or the broker's uid that
//! group and others cannot write), and everything after that runs that
//! same file: the `--handoff-version` pre-flight and the `--handoff-check`
//! probe through `/proc/self/fd/N`, the exec itself by `execveat(fd, "",
//! AT_EMPTY_PATH)`. A path renamed over afterwards changes nothing. The
//! running image is kept the same way ([`Exe::running`]), so a new image
//! that fails can execute the old one again (see `fallback`).

use sockpass::{Error, Kind, Result};
use std::ffi::{CString, OsString};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The environment variables an upgrade must not pass to a check: the
/// checked binary is a child, not the service.
const NOT_FOR_CHECKS: [&str; 5] = [
    "LISTEN_PID",
    "LISTEN_FDS",
    "LISTEN_FDNAMES",
    "NOTIFY_SOCKET",
    "FDSTORE",
];

/// An executable held open by fd.
#[derive(Debug)]
pub struct Exe {
    fd: OwnedFd,
    /// Where it was opened from: for messages and argv[0] only.
    path: PathBuf,
}

fn refuse(kind: Kind, errno: i32, msg: String) -> Error {
    Error::with_errno(kind, errno, msg)
}

impl Exe {
    /// Open the upgrade target `path` once and check the file opened:
    /// symlinks are followed (a chain of root's links is fine), the file at
    /// the end must be a regular file with an execute bit, owned by root or
    /// by this process's uid, and writable by neither group nor others (its
    /// contents could change between the checks and the exec otherwise).
    pub fn open_target(path: &Path) -> Result<Exe> {
        let c = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| Error::bad_request("upgrade binary path contains NUL"))?;
        // O_PATH: no read permission needed, no side effect of opening a
        // FIFO or a device; fstat and execveat work on it.
        // SAFETY: valid C string; the result is checked.
        let r = unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            return Err(refuse(
                Kind::BadRequest,
                e.raw_os_error().unwrap_or(libc::ENOENT),
                format!("upgrade binary {}: {e}", path.display()),
            ));
        }
        // SAFETY: r is a new fd.
        let fd = unsafe { OwnedFd::from_raw_fd(r) };
        let exe = Exe {
            fd,
            path: path.to_path_buf(),
        };
        exe.check_file()?;
        Ok(exe)
    }

    /// The image this process runs (`/proc/self/exe`), kept for a fallback.
    pub fn running() -> Result<Exe> {
        let path = std::env::current_exe().unwrap_or_else(|_| "/proc/self/exe".into());
        // SAFETY: a literal C string; the result is checked.
        let r = unsafe { libc::open(c"/proc/self/exe".as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
        if r < 0 {
            return Err(Error::last_os("open /proc/self/exe"));
        }
        // SAFETY: r is a new fd.
        Ok(Exe {
            fd: unsafe { OwnedFd::from_raw_fd(r) },
            path,
        })
    }

    /// Adopt an executable fd handed over by the previous image.
    pub(crate) fn from_fd(fd: OwnedFd, path: PathBuf) -> Exe {
        Exe { fd, path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    fn check_file(&self) -> Result<()> {
        // SAFETY: fstat into a zeroed struct on our fd.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstat(self.fd.as_raw_fd(), &mut st) } != 0 {
            return Err(Error::last_os(format!("fstat {}", self.path.display())));
        }
        let mode = st.st_mode & 0o7777;
        let name = self.path.display();
        if st.st_mode & libc::S_IFMT != libc::S_IFREG || mode & 0o111 == 0 {
            return Err(refuse(
                Kind::BadRequest,
                libc::EACCES,
                format!("upgrade binary {name} is not an executable file"),
            ));
        }
        // SAFETY: geteuid cannot fail.
        let me = unsafe { libc::geteuid() };
        if st.st_uid != 0 && st.st_uid != me {
            return Err(refuse(
                Kind::NotAllowed,
                libc::EPERM,
                format!(
                    "upgrade binary {name} is owned by uid {}: it must belong to root{}",
                    st.st_uid,
                    if me == 0 {
                        String::new()
                    } else {
                        format!(" or uid {me}")
                    }
                ),
            ));
        }
        if mode & 0o022 != 0 {
            return Err(refuse(
                Kind::NotAllowed,
                libc::EPERM,
                format!(
                    "upgrade binary {name} has mode {mode:04o}: group or others could change it"
                ),
            ));
        }
        Ok(())
    }

    /// A command running this very file (through `/proc/self/fd/N`, kept
    /// open across the child's exec so an interpreter can read a script).
    fn command(&self, keep: Vec<RawFd>) -> Command {
        let n = self.fd.as_raw_fd();
        let mut cmd = Command::new(format!("/proc/self/fd/{n}"));
        cmd.arg0(self.path.as_os_str());
        for v in NOT_FOR_CHECKS
            .iter()
            .chain([crate::handoff::STATE_ENV, crate::fallback::PLAN_ENV].iter())
        {
            cmd.env_remove(v);
        }
        let mut keep = keep;
        keep.push(n);
        // SAFETY: only fcntl (async-signal-safe) on numbers listed before the fork.
        unsafe {
            cmd.pre_exec(move || {
                for &fd in &keep {
                    let fl = libc::fcntl(fd, libc::F_GETFD);
                    if fl < 0 || libc::fcntl(fd, libc::F_SETFD, fl & !libc::FD_CLOEXEC) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        cmd
    }

    /// Check, before anything is handed over, that this is a sockpassd that
    /// reads the state this build writes: run it with `--handoff-version`
    /// and require it to exit 0 within `timeout` having printed
    /// [`crate::handoff::FORMAT`].
    pub fn preflight(&self, timeout: Duration) -> Result<()> {
        let mut cmd = self.command(Vec::new());
        cmd.arg("--handoff-version").stderr(Stdio::null());
        let (status, said) = self.run_bounded(cmd, timeout, "--handoff-version", false)?;
        let said = String::from_utf8_lossy(&said);
        let said = said.trim();
        if !status.success() {
            return Err(self.incompatible(format!(
                "'--handoff-version' ended with {status}{}",
                if said.is_empty() {
                    String::new()
                } else {
                    format!(
                        " (it printed {:?})",
                        said.chars().take(80).collect::<String>()
                    )
                }
            )));
        }
        if said != crate::handoff::FORMAT {
            return Err(self.incompatible(format!(
                "'--handoff-version' printed {:?}, this broker hands over {}",
                said.chars().take(80).collect::<String>(),
                crate::handoff::FORMAT
            )));
        }
        Ok(())
    }

    /// The probe: run this file as `--handoff-check ARGS` with the state
    /// memfd and every fd it names inherited. The new image restores the
    /// broker exactly as it would after the exec, without touching a
    /// socket, prints [`crate::handoff::FORMAT`] and exits 0. A binary that
    /// exits, crashes or hangs on the real state fails here, while the old
    /// image still owns everything.
    pub(crate) fn probe(
        &self,
        args: &[OsString],
        memfd: RawFd,
        fds: &[RawFd],
        timeout: Duration,
    ) -> Result<()> {
        let mut keep = fds.to_vec();
        keep.push(memfd);
        let mut cmd = self.command(keep);
        cmd.arg("--handoff-check")
            .args(args)
            .env(crate::handoff::STATE_ENV, memfd.to_string());
        // Its error messages are the reason given to the requester.
        let (status, said) = self.run_bounded(cmd, timeout, "--handoff-check", true)?;
        let said = String::from_utf8_lossy(&said);
        if status.success() && said.lines().any(|l| l.trim() == crate::handoff::FORMAT) {
            return Ok(());
        }
        let last = said
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .chars()
            .take(200)
            .collect::<String>();
        Err(refuse(
            Kind::BadRequest,
            libc::ENOEXEC,
            format!(
                "upgrade binary {} failed the handover check (it would have lost the broker): '--handoff-check' ended with {status}{}; nothing was handed over",
                self.path.display(),
                if last.is_empty() {
                    String::new()
                } else {
                    format!(" ({last:?})")
                }
            ),
        ))
    }

    fn incompatible(&self, why: String) -> Error {
        refuse(
            Kind::BadRequest,
            libc::ENOEXEC,
            format!(
                "upgrade binary {} is not a compatible sockpassd: {why}",
                self.path.display()
            ),
        )
    }

    /// Run `cmd` (stdin null, stdout into a pipe, stderr too if
    /// `join_stderr`) and collect at most a few KiB of its output; kill it if
    /// it has not exited within `timeout`.
    fn run_bounded(
        &self,
        mut cmd: Command,
        timeout: Duration,
        what: &str,
        join_stderr: bool,
    ) -> Result<(ExitStatus, Vec<u8>)> {
        use std::io::Read;
        const MAX_OUT: usize = 4096;
        let mut p = [0; 2];
        // SAFETY: pipe2 into a local array; the fds are owned right after.
        if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(Error::last_os("pipe2"));
        }
        // SAFETY: two new fds we own.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) };
        let w2 = w
            .try_clone()
            .map_err(|e| Error::os(e.raw_os_error().unwrap_or(0), "dup"))?;
        cmd.stdin(Stdio::null()).stdout(w);
        if join_stderr {
            cmd.stderr(w2);
        } else {
            drop(w2);
        }
        let spawned = cmd
            .spawn()
            .map_err(|e| self.incompatible(format!("cannot run it: {e}")));
        // Our copies of the write end go, so its exit shows as end of file.
        drop(cmd);
        let mut child = spawned?;
        let deadline = Instant::now() + timeout;
        let left_ms = || {
            let d = deadline.saturating_duration_since(Instant::now());
            d.as_millis().min(i32::MAX as u128) as i32
        };
        let mut out = std::fs::File::from(r);
        let mut got = Vec::new();
        let mut eof = false;
        while !eof && left_ms() > 0 && got.len() <= MAX_OUT {
            match sockpass::sys::poll_one(out.as_fd(), libc::POLLIN, left_ms()) {
                Ok(0) => break,
                Ok(_) => {
                    let mut buf = [0u8; 1024];
                    match out.read(&mut buf) {
                        Ok(0) => eof = true,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(_) => eof = true,
                    }
                }
                Err(libc::EINTR) => {}
                Err(_) => break,
            }
        }
        drop(out);
        // Its exit, within what is left of the deadline (a pidfd to wait on;
        // without one, a child that closed its output is about to exit).
        let mut status = child.try_wait().ok().flatten();
        if status.is_none() && eof {
            // SAFETY: plain syscall; the result is checked before it is owned.
            let pidfd =
                unsafe { libc::syscall(libc::SYS_pidfd_open, child.id() as libc::pid_t, 0) };
            if pidfd >= 0 {
                // SAFETY: pidfd is a new fd we own.
                let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as RawFd) };
                while status.is_none() && left_ms() > 0 {
                    match sockpass::sys::poll_one(pidfd.as_fd(), libc::POLLIN, left_ms()) {
                        Ok(0) => break,
                        Ok(_) => status = child.try_wait().ok().flatten(),
                        Err(libc::EINTR) => {}
                        Err(_) => break,
                    }
                }
            }
        }
        match status {
            Some(s) => Ok((s, got)),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                Err(self.incompatible(if got.len() > MAX_OUT {
                    format!("'{what}' printed more than a few KiB")
                } else {
                    format!(
                        "it did not answer {what} within {} s",
                        timeout.as_secs_f64()
                    )
                }))
            }
        }
    }

    /// Execute this file in place of the current image, by fd. Its fd loses
    /// CLOEXEC first: an interpreter reads a script through `/dev/fd/N`.
    /// Returns only on failure (CLOEXEC set again).
    pub(crate) fn exec(&self, argv: &[CString], envp: &[CString]) -> Error {
        let argp: Vec<*const libc::c_char> = argv
            .iter()
            .map(|c| c.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect();
        let envpp: Vec<*const libc::c_char> = envp
            .iter()
            .map(|c| c.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect();
        if let Err(e) = crate::handoff::set_cloexec(self.raw(), false) {
            return e;
        }
        // SAFETY: NUL-terminated arrays of valid C strings that outlive the call.
        unsafe { execveat_empty(self.raw(), argp.as_ptr(), envpp.as_ptr()) };
        let e = Error::last_os(format!("execve {}", self.path.display()));
        let _ = crate::handoff::set_cloexec(self.raw(), true);
        e
    }
}

/// `execveat(fd, "", argv, envp, AT_EMPTY_PATH)`; async-signal-safe.
///
/// # Safety
/// `argv` and `envp` are NULL-terminated arrays of valid C strings.
pub(crate) unsafe fn execveat_empty(
    fd: RawFd,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
) {
    libc::syscall(
        libc::SYS_execveat,
        fd,
        c"".as_ptr(),
        argv,
        envp,
        libc::AT_EMPTY_PATH,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn script(d: &Path, name: &str, body: &str, mode: u32) -> PathBuf {
        let p = d.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn preflight_bounds_a_binary_that_never_answers() {
        let d = std::env::temp_dir().join(format!("sp-preflight-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let hang = script(&d, "hang", "exec sleep 30\n", 0o755);
        let good = script(
            &d,
            "good",
            &format!("echo {}\n", crate::handoff::FORMAT),
            0o755,
        );
        let t0 = Instant::now();
        let e = Exe::open_target(&hang)
            .unwrap()
            .preflight(Duration::from_millis(300))
            .unwrap_err();
        assert!(t0.elapsed() < Duration::from_secs(5));
        assert!(
            e.message().contains("did not answer --handoff-version"),
            "{e}"
        );
        Exe::open_target(&good)
            .unwrap()
            .preflight(Duration::from_secs(5))
            .unwrap();
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn targets_others_could_change_are_refused() {
        let d = std::env::temp_dir().join(format!("sp-target-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        for mode in [0o775, 0o757, 0o777] {
            let p = script(&d, &format!("m{mode:o}"), "exit 0\n", mode);
            let e = Exe::open_target(&p).unwrap_err();
            assert_eq!(e.kind(), Kind::NotAllowed, "{e}");
            assert!(
                e.message().contains("group or others could change it"),
                "{e}"
            );
        }
        let p = script(&d, "plain", "exit 0\n", 0o644);
        let e = Exe::open_target(&p).unwrap_err();
        assert!(e.message().contains("not an executable file"), "{e}");
        let e = Exe::open_target(&d).unwrap_err();
        assert!(e.message().contains("not an executable file"), "{e}");
        Exe::open_target(&script(&d, "ok", "exit 0\n", 0o755)).unwrap();
        let _ = std::fs::remove_dir_all(&d);
    }
}
