//! Start a process with a planned set of fds (socket activation), optionally
//! inside another process's namespaces and paused until released.
//!
//! The plan is an ordered list of slots renumbered from a start index
//! (default 3). Everything is computed before `fork`; between `fork` and
//! `exec` the child only makes async-signal-safe syscalls on memory prepared
//! before the fork. A child that fails before `exec` reports the step and
//! errno over a CLOEXEC pipe, so the caller gets an error, never a silent
//! exit status 127.
//!
//! **Empty slots and `LISTEN_FDS`.** An empty slot leaves its number closed
//! in the child, and the later slots keep their numbers. `LISTEN_FDS` counts
//! every slot, empty ones included, so that `LISTEN_FDS_FIRST_FD +
//! LISTEN_FDS - 1` is the last planned number and names line up with
//! numbers; an empty slot is named `empty` in `LISTEN_FDNAMES` (unless it
//! was given a name). **A libsystemd consumer rejects a set with a hole:**
//! `sd_listen_fds()` (and `sd_listen_fds_with_names()`) fail with `-EBADF`
//! for the whole set, handing the program no fd at all, when any number in
//! `[3, 3 + LISTEN_FDS)` is closed (libsystemd 252). Use empty slots only
//! with consumers that take fds by number (e.g. `socket.socket(fileno=N)`),
//! or put them last and turn `LISTEN_FDS` off. An inherit slot keeps
//! whatever the parent has open at that number (its `FD_CLOEXEC` cleared)
//! and is named `unknown`, as is an unnamed fd; if the parent has nothing
//! open there it is a hole like an empty slot.
//!
//! **Signals.** The parent blocks every signal across the `fork`; the child
//! resets every handled signal to `SIG_DFL` (as `posix_spawn` with
//! `POSIX_SPAWN_SETSIGDEF` does; ignored ones stay ignored, except
//! `SIGPIPE`, which is set to default) before it unblocks them, so no
//! handler of the parent ever runs in the child, and a paused child that
//! gets a signal with a default action of "ignore" keeps waiting.
//!
//! In short, for bindings: `let mut s = Spawn::new(prog); s.args(..)
//! .start(3).dup_fd(borrowed, Some("name"))?; s.join(Namespaces::open(pid,
//! "net,mnt".parse()?)?); s.paused(true); let mut c = s.spawn()?;
//! c.pid(); c.ns_pid(); c.resume()?; exit_code(c.wait()?)`. Every error is a
//! [`crate::Error`]: `BadRequest` for bad input found before the fork,
//! `ChildFailed` (errno set) for a step the child failed at. Waiting on a
//! paused child, or dropping it, resumes it first.

use crate::catchbind::CatchBind;
use crate::error::{Error, Kind, Result};
use crate::forking::{reap, wait_pid, ChildMask};
use crate::ns::Namespaces;
use crate::sys::errno;
use std::ffi::{CString, OsStr, OsString};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;
use std::time::Duration;

mod close;
use close::close_between;

/// One slot of the fd plan.
#[derive(Debug)]
pub enum Slot {
    /// Pass this fd (the plan owns it) at the slot's number, named.
    Fd { fd: OwnedFd, name: Option<String> },
    /// Leave the slot's number closed in the child.
    Empty { name: Option<String> },
    /// Keep whatever the parent has open at the slot's number.
    Inherit,
}

impl Slot {
    /// An inherit slot, for callers whose slots may come with a name: an
    /// inherit slot has none of its own (`LISTEN_FDNAMES` says `unknown`),
    /// so a name is refused here, once for every binding.
    pub fn inherit_named(name: Option<&str>) -> Result<Slot> {
        match name {
            None => Ok(Slot::Inherit),
            Some(n) => Err(Error::bad_request(format!(
                "fd name {n:?} for an INHERIT slot: it has no name of its own \
                 (it is named unknown)"
            ))),
        }
    }
}

/// What the child's environment starts from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnvBase {
    Inherit,
    Clear,
}

/// A process to start. Build it, then [`Spawn::spawn`].
#[derive(Debug)]
pub struct Spawn {
    program: OsString,
    args: Vec<OsString>,
    env_base: EnvBase,
    env_ops: Vec<(OsString, Option<OsString>)>,
    slots: Vec<Slot>,
    /// Fds at fixed numbers outside the LISTEN_FDS range.
    extra: Vec<(OwnedFd, RawFd)>,
    start: RawFd,
    listen_env: bool,
    join: Option<Namespaces>,
    paused: bool,
    catch: Option<CatchBind>,
}

/// Steps the child reports failures at.
const STEP_NAMES: [&str; 9] = [
    "join a namespace",
    "fork into the pid namespace",
    "place an fd",
    "clear FD_CLOEXEC",
    "close other fds",
    "wait to be resumed",
    "exec",
    "reset signals",
    "install the seccomp filter that catches bind()",
];
/// Namespace steps are STEP_NS + the index the namespace code reports.
const STEP_NS: i32 = 100;
const STEP_FORK: i32 = 1;
const STEP_DUP: i32 = 2;
const STEP_CLOEXEC: i32 = 3;
const STEP_CLOSE: i32 = 4;
const STEP_RESUME: i32 = 5;
const STEP_EXEC: i32 = 6;
const STEP_SIGNALS: i32 = 7;
const STEP_CATCH: i32 = 8;

/// Records on the report pipe: tag, a, b (native-endian i32s).
const TAG_PID: i32 = 1;
const TAG_ERROR: i32 = 2;
/// From the intermediate child of a pid-namespace spawn: the real child's
/// pid as the caller sees it.
const TAG_HOST_PID: i32 = 3;

/// Longest fd name, as systemd.
pub const MAX_NAME: usize = 255;

/// Check a name as systemd does: printable ASCII except `:`, at most 255
/// bytes (empty is allowed).
pub fn validate_name(name: &str) -> Result<()> {
    // As systemd's fdname_is_valid: the empty name is a valid one.
    if name.len() > MAX_NAME {
        return Err(Error::bad_request(format!(
            "fd name {name:?} is longer than {MAX_NAME} bytes"
        )));
    }
    if let Some(c) = name
        .bytes()
        .find(|&c| !(0x20..0x7f).contains(&c) || c == b':')
    {
        return Err(Error::bad_request(format!(
            "fd name {name:?} has byte {c:#04x}: names are printable ASCII without ':'"
        )));
    }
    Ok(())
}

impl Spawn {
    pub fn new(program: impl AsRef<OsStr>) -> Spawn {
        let program = program.as_ref().to_os_string();
        Spawn {
            args: vec![program.clone()],
            program,
            env_base: EnvBase::Inherit,
            env_ops: Vec::new(),
            slots: Vec::new(),
            extra: Vec::new(),
            start: 3,
            listen_env: true,
            join: None,
            paused: false,
            catch: None,
        }
    }

    /// Append an argument (argv[0] is the program as given).
    pub fn arg(&mut self, a: impl AsRef<OsStr>) -> &mut Spawn {
        self.args.push(a.as_ref().to_os_string());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(&mut self, it: I) -> &mut Spawn {
        for a in it {
            self.arg(a);
        }
        self
    }

    /// Start from the caller's environment (the default) or an empty one.
    pub fn env_base(&mut self, b: EnvBase) -> &mut Spawn {
        self.env_base = b;
        self
    }

    pub fn setenv(&mut self, k: impl AsRef<OsStr>, v: impl AsRef<OsStr>) -> &mut Spawn {
        self.env_ops
            .push((k.as_ref().to_os_string(), Some(v.as_ref().to_os_string())));
        self
    }

    pub fn unsetenv(&mut self, k: impl AsRef<OsStr>) -> &mut Spawn {
        self.env_ops.push((k.as_ref().to_os_string(), None));
        self
    }

    /// Append a slot holding `fd` (owned by the plan until the spawn).
    pub fn fd(&mut self, fd: OwnedFd, name: Option<&str>) -> &mut Spawn {
        self.slots.push(Slot::Fd {
            fd,
            name: name.map(str::to_string),
        });
        self
    }

    /// Append a slot for a copy of a borrowed fd (`F_DUPFD_CLOEXEC` now:
    /// a closed fd is an error here, before anything is spawned).
    pub fn dup_fd(&mut self, fd: BorrowedFd<'_>, name: Option<&str>) -> Result<&mut Spawn> {
        let d = crate::sys::dup_cloexec(fd)
            .map_err(|e| Error::os(e, format!("source fd {} is not usable", fd.as_raw_fd())))?;
        Ok(self.fd(d, name))
    }

    /// Put `fd` at exactly number `target` in the child, outside the
    /// socket-activation range: not counted in `LISTEN_FDS` (e.g. s6's
    /// notification fd). A target used twice is an error at spawn.
    pub fn fd_at(&mut self, fd: OwnedFd, target: RawFd) -> &mut Spawn {
        self.extra.push((fd, target));
        self
    }

    pub fn slot(&mut self, s: Slot) -> &mut Spawn {
        self.slots.push(s);
        self
    }

    /// The number the first slot gets (default 3; 0 is inetd style).
    pub fn start(&mut self, n: RawFd) -> &mut Spawn {
        self.start = n;
        self
    }

    /// Set `LISTEN_FDS`, `LISTEN_PID`, `LISTEN_FDNAMES` (default: yes when
    /// the plan has slots).
    pub fn listen_env(&mut self, on: bool) -> &mut Spawn {
        self.listen_env = on;
        self
    }

    /// Start the child inside these namespaces (see [`crate::ns`]).
    pub fn join(&mut self, ns: Namespaces) -> &mut Spawn {
        self.join = Some(ns);
        self
    }

    /// Catch the program's own `bind()` calls and answer them with broker
    /// sockets (see [`CatchBind`]). Checked at spawn: where the
    /// kernel cannot do it the spawn fails and nothing is started.
    pub fn catch_bind(&mut self, c: CatchBind) -> &mut Spawn {
        self.catch = Some(c);
        self
    }

    /// Stop the child before `exec` until [`Child::resume`].
    pub fn paused(&mut self, on: bool) -> &mut Spawn {
        self.paused = on;
        self
    }

    fn names(&self) -> Result<Vec<String>> {
        self.slots
            .iter()
            .map(|s| {
                let n = match s {
                    Slot::Fd { name: Some(n), .. } | Slot::Empty { name: Some(n) } => n.clone(),
                    Slot::Empty { name: None } => "empty".into(),
                    _ => "unknown".into(),
                };
                validate_name(&n)?;
                Ok(n)
            })
            .collect()
    }

    /// Start the process. On return the child runs (or, paused, waits for
    /// [`Child::resume`]); an error means no process is left behind.
    pub fn spawn(mut self) -> Result<Child> {
        let catch = self.catch.as_ref().map(CatchBind::prepare).transpose()?;
        let plan = Plan::prepare(&mut self)?;
        plan.run(self, catch)
    }
}

fn cstring(s: &OsStr, what: &str) -> Result<CString> {
    CString::new(s.as_bytes())
        .map_err(|_| Error::bad_request(format!("{what} {s:?} contains a NUL byte")))
}

fn fd_limit() -> RawFd {
    rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .map_or(RawFd::MAX, |n| n.min(i32::MAX as u64) as RawFd)
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| Error::os(e.raw_os_error(), "pipe2"))
}

/// The go channel: (child's end, parent's end), both CLOEXEC.
fn go_channel() -> Result<(OwnedFd, OwnedFd)> {
    crate::fdpass::socketpair(libc::SOCK_STREAM)
}

/// Move `fd` to a number >= `min` (CLOEXEC), closing the old number.
fn move_above(fd: OwnedFd, min: RawFd) -> Result<OwnedFd> {
    rustix::io::fcntl_dupfd_cloexec(&fd, min)
        .map_err(|e| Error::os(e.raw_os_error(), "F_DUPFD_CLOEXEC"))
}

/// Look a bare program name up in PATH, as execvp would, but before the
/// fork (execvp may allocate). Not found: the name as given, and exec
/// reports ENOENT.
fn resolve(program: &OsStr, path: Option<&OsStr>) -> PathBuf {
    if program.as_bytes().contains(&b'/') {
        return PathBuf::from(program);
    }
    let path = path.unwrap_or(OsStr::new("/usr/local/bin:/usr/bin:/bin"));
    for dir in std::env::split_paths(path) {
        let p = dir.join(program);
        if let Ok(c) = CString::new(p.as_os_str().as_bytes()) {
            // SAFETY: access on a valid C string.
            if unsafe { libc::access(c.as_ptr(), libc::X_OK) } == 0 && p.is_file() {
                return p;
            }
        }
    }
    PathBuf::from(program)
}

/// Everything the child needs, prepared before the fork.
struct Plan {
    exe: CString,
    _argv_owned: Vec<CString>,
    argv: Vec<*const libc::c_char>,
    _env_owned: Vec<CString>,
    envp: Vec<*const libc::c_char>,
    /// Index in `_env_owned` of `LISTEN_PID=`, filled in by the child.
    listen_pid: Option<usize>,
    /// One above every planned number: where the sync pipes go.
    top: RawFd,
    /// (source, target) for fd slots; target for empty and inherit slots.
    moves: Vec<(RawFd, RawFd)>,
    empties: Vec<RawFd>,
    inherits: Vec<RawFd>,
    /// Sorted numbers that stay open through exec (targets), for close_range.
    keep: Vec<RawFd>,
    limit: RawFd,
}

impl Plan {
    fn prepare(s: &mut Spawn) -> Result<Plan> {
        let limit = fd_limit();
        if s.start < 0 {
            return Err(Error::bad_request(format!(
                "start index {} is negative",
                s.start
            )));
        }
        let past_limit = |need: i64| {
            Error::with_errno(
                Kind::BadRequest,
                libc::EMFILE,
                format!(
                    "start index {} with {} slot(s) would reach the fd limit {limit} \
                     (the plan and its sync channel need numbers up to {need})",
                    s.start,
                    s.slots.len() + s.extra.len(),
                ),
            )
        };
        // Checked: a start near i32::MAX must be refused, not wrap.
        let mut targets: Vec<RawFd> = (0..s.slots.len())
            .map(|i| RawFd::try_from(i).ok().and_then(|i| s.start.checked_add(i)))
            .collect::<Option<_>>()
            .ok_or_else(|| past_limit(s.start as i64 + s.slots.len() as i64 + 8))?;
        for &(_, t) in &s.extra {
            if t < 0 {
                return Err(Error::bad_request(format!("target fd {t} is negative")));
            }
            if targets.contains(&t) {
                return Err(Error::bad_request(format!(
                    "two fds are planned at number {t}"
                )));
            }
            targets.push(t);
        }
        let n = targets.len() as i64;
        // Room above the targets for the sync pipes and moved sources.
        let top = targets
            .iter()
            .map(|&t| t as i64 + 1)
            .max()
            .unwrap_or(s.start as i64);
        if top + n + 8 > limit as i64 {
            return Err(past_limit(top + n + 8));
        }
        let names = s.names()?;
        let in_targets = |fd: RawFd| targets.contains(&fd);

        // Sources on another slot's number (or on 0-2 when the plan maps
        // them) move above every number in use; one on its own number stays.
        let above = top as RawFd;
        let mut moves = Vec::new();
        let mut empties = Vec::new();
        let mut inherits = Vec::new();
        for (i, slot) in s.slots.iter_mut().enumerate() {
            let t = targets[i];
            match slot {
                Slot::Fd { fd, .. } => {
                    let raw = fd.as_raw_fd();
                    if raw != t && in_targets(raw) {
                        let old = std::mem::replace(fd, move_above(fd.try_clone()?, above)?);
                        drop(old);
                    }
                    moves.push((fd.as_raw_fd(), t));
                }
                Slot::Empty { .. } => empties.push(t),
                Slot::Inherit => inherits.push(t),
            }
        }
        for (fd, t) in s.extra.iter_mut() {
            let raw = fd.as_raw_fd();
            if raw != *t && in_targets(raw) {
                let old = std::mem::replace(fd, move_above(fd.try_clone()?, above)?);
                drop(old);
            }
            moves.push((fd.as_raw_fd(), *t));
        }
        // Namespace fds are used before the fds are placed, so a target may
        // overwrite them; only an inherit slot must not pass one on.
        if let Some(ns) = &s.join {
            if let Some(fd) = ns.raw_fds().find(|f| inherits.contains(f)) {
                return Err(Error::bad_request(format!(
                    "inherit slot {fd} holds a namespace fd of the target"
                )));
            }
        }
        let mut keep: Vec<RawFd> = targets
            .iter()
            .copied()
            .filter(|t| !empties.contains(t))
            .collect();
        keep.sort_unstable();

        // argv, envp.
        let mut env: Vec<(OsString, OsString)> = match s.env_base {
            EnvBase::Inherit => std::env::vars_os().collect(),
            EnvBase::Clear => Vec::new(),
        };
        let mut set = |k: &OsStr, v: Option<&OsStr>| {
            env.retain(|(x, _)| x != k);
            if let Some(v) = v {
                env.push((k.to_os_string(), v.to_os_string()));
            }
        };
        let listen = s.listen_env && !s.slots.is_empty();
        let n = s.slots.len();
        for k in [
            "LISTEN_FDS",
            "LISTEN_PID",
            "LISTEN_FDNAMES",
            "LISTEN_FDS_FIRST_FD",
        ] {
            if listen {
                set(OsStr::new(k), None);
            }
        }
        for (k, v) in &s.env_ops {
            if k.is_empty() || k.as_bytes().contains(&b'=') {
                return Err(Error::bad_request(format!(
                    "invalid environment variable name {k:?}"
                )));
            }
            set(k, v.as_deref());
        }
        if listen {
            set(OsStr::new("LISTEN_FDS"), Some(OsStr::new(&n.to_string())));
            set(
                OsStr::new("LISTEN_FDNAMES"),
                Some(OsStr::new(&names.join(":"))),
            );
            if s.start != 3 {
                set(
                    OsStr::new("LISTEN_FDS_FIRST_FD"),
                    Some(OsStr::new(&s.start.to_string())),
                );
            }
        }
        let path = env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.clone());
        let exe = resolve(&s.program, path.as_deref());
        let mut env_owned: Vec<CString> = env
            .into_iter()
            .map(|(k, v)| {
                let mut b = k.into_vec();
                b.push(b'=');
                b.extend(v.into_vec());
                CString::new(b)
                    .map_err(|_| Error::bad_request("an environment value contains a NUL byte"))
            })
            .collect::<Result<_>>()?;
        let listen_pid = listen.then(|| {
            // Room for any pid; the child writes its own over the blanks.
            env_owned.push(CString::new("LISTEN_PID=           ").unwrap());
            env_owned.len() - 1
        });
        let argv_owned: Vec<CString> = s
            .args
            .iter()
            .map(|a| cstring(a, "argument"))
            .collect::<Result<_>>()?;
        let mut argv: Vec<*const libc::c_char> = argv_owned.iter().map(|c| c.as_ptr()).collect();
        argv.push(std::ptr::null());
        let mut envp: Vec<*const libc::c_char> = env_owned.iter().map(|c| c.as_ptr()).collect();
        envp.push(std::ptr::null());
        // SAFETY: sigemptyset initialises the set.
        Ok(Plan {
            exe: cstring(exe.as_os_str(), "program")?,
            _argv_owned: argv_owned,
            argv,
            _env_owned: env_owned,
            envp,
            listen_pid,
            top: above,
            moves,
            empties,
            inherits,
            keep,
            limit,
        })
    }

    fn run(self, s: Spawn, catch: Option<crate::catchbind::Prepared>) -> Result<Child> {
        // Sync channel: the child reports on `report`; a paused child waits
        // on `go`. Both above every planned number, CLOEXEC.
        let above = self.top;
        let (rr, rw) = pipe()?;
        let (rr, rw) = (move_above(rr, above)?, move_above(rw, above)?);
        // A socket pair, not a pipe: the go byte is sent with MSG_NOSIGNAL,
        // so resuming a child that died meanwhile is EPIPE, not SIGPIPE.
        let (gr, gw) = go_channel()?;
        let (gr, gw) = (move_above(gr, above)?, move_above(gw, above)?);
        let ns = s.join.as_ref();
        let pid_ns = ns.is_some_and(|n| n.joins_pid());
        let catching = catch.is_some();

        let (report_raw, go_raw) = (rw.as_raw_fd(), gr.as_raw_fd());
        // SAFETY: the child runs only `child_main` (async-signal-safe
        // syscalls on `self`, prepared above) and never returns.
        let pid = unsafe {
            crate::forking::fork(ChildMask::Empty, |reset| {
                self.child_main(reset, ns, pid_ns, catching, report_raw, go_raw)
            })
        }?;
        drop(rw);
        drop(gr);
        let paused = s.paused;
        // The plan's fds were copied into the child; ours close now.
        drop(s);
        drop(self);
        let mut child = Child {
            pid,
            ns_pid: pid,
            report: Some(rr),
            go: Some(gw),
            status: None,
            intermediate: pid_ns.then_some(pid),
            catch: None,
        };
        if let Err(e) = child.read_pid() {
            child.kill_and_reap();
            return Err(e);
        }
        if let Some(p) = catch {
            // The child sent its filter's listener before its pid record.
            let go = child.go.as_ref().expect("go channel");
            let started = crate::fdpass::recv_fd(go, &mut [0u8; 1]).and_then(|(_, l)| p.start(l));
            match started {
                Ok(s) => child.catch = Some(s),
                Err(e) => {
                    child.kill_and_reap();
                    return Err(e.context("--catch-bind: the filter's listener"));
                }
            }
        }
        if !paused {
            child.resume()?;
        }
        Ok(child)
    }

    /// The child: join namespaces, fork into a pid namespace, place the
    /// fds, close the rest, report, wait if paused, exec. Only
    /// async-signal-safe calls; nothing allocates.
    unsafe fn child_main(
        &self,
        reset: std::result::Result<(), i32>,
        ns: Option<&Namespaces>,
        pid_ns: bool,
        catch: bool,
        report: RawFd,
        go: RawFd,
    ) -> ! {
        let fail = |step: i32, err: i32| -> ! {
            let rec = [TAG_ERROR, step, err];
            libc::write(report, rec.as_ptr().cast(), 12);
            libc::_exit(127);
        };
        // Handlers reset and the mask emptied by forking::fork: no handler
        // of the parent runs here, nor makes the wait for the go byte fail
        // with EINTR.
        if let Err(e) = reset {
            fail(STEP_SIGNALS, e);
        }
        if let Some(ns) = ns {
            if let Err((i, e)) = ns.enter() {
                fail(STEP_NS + i as i32, e);
            }
        }
        if pid_ns {
            // The real child, in the pid namespace, a child of our parent.
            let r = libc::syscall(
                libc::SYS_clone,
                (libc::CLONE_PARENT | libc::SIGCHLD) as libc::c_ulong,
                0usize,
                0usize,
                0usize,
                0usize,
            );
            if r < 0 {
                fail(STEP_FORK, errno());
            }
            if r > 0 {
                // Tell the parent the real child's pid (as the parent sees
                // it: we still are in its pid namespace), then leave.
                let rec = [TAG_HOST_PID, r as i32, 0];
                libc::write(report, rec.as_ptr().cast(), 12);
                libc::_exit(0);
            }
        }
        for &(src, t) in &self.moves {
            if src == t {
                // dup2(n, n) does nothing: clear FD_CLOEXEC by hand.
                if libc::fcntl(t, libc::F_SETFD, 0) != 0 {
                    fail(STEP_CLOEXEC, errno());
                }
            } else if libc::dup2(src, t) < 0 {
                fail(STEP_DUP, errno());
            }
        }
        for &t in &self.inherits {
            // Not open is fine: the slot then stays closed.
            libc::fcntl(t, libc::F_SETFD, 0);
        }
        for &t in &self.empties {
            libc::close(t);
        }
        // Close every fd >= 3 that is not planned, except the sync pipes
        // (CLOEXEC: they close at exec).
        let mut lo: RawFd = 3;
        for &k in &self.keep {
            if k >= lo {
                if k > lo {
                    close_between(lo, k - 1, [report, go], self.limit)
                        .unwrap_or_else(|e| fail(STEP_CLOSE, e));
                }
                lo = k + 1;
            }
        }
        close_between(lo, RawFd::MAX, [report, go], self.limit)
            .unwrap_or_else(|e| fail(STEP_CLOSE, e));
        // Last before exec's wait: the filter catches binds from here on,
        // and its listener goes to the parent on the go channel.
        if catch {
            if let Err(e) = crate::catchbind::install_and_send(go) {
                fail(STEP_CATCH, e);
            }
        }
        let me = libc::getpid();
        if let Some(i) = self.listen_pid {
            // Write our pid over the blanks of "LISTEN_PID=           ".
            let p = self.envp[i] as *mut u8;
            let mut digits = [0u8; 11];
            let mut n = me as u32;
            let mut len = 0;
            loop {
                digits[len] = b'0' + (n % 10) as u8;
                n /= 10;
                len += 1;
                if n == 0 {
                    break;
                }
            }
            for j in 0..len {
                *p.add(11 + j) = digits[len - 1 - j];
            }
            *p.add(11 + len) = 0;
        }
        let rec = [TAG_PID, 0, me];
        libc::write(report, rec.as_ptr().cast(), 12);
        let mut b = 0u8;
        // Wait for the parent's word: a byte means exec; EOF means the
        // parent is gone (it resumes a paused child it drops or waits for).
        let r = loop {
            let r = libc::read(go, (&mut b as *mut u8).cast(), 1);
            if r >= 0 || errno() != libc::EINTR {
                break r;
            }
        };
        if r < 0 {
            fail(STEP_RESUME, errno());
        }
        if r == 0 {
            libc::_exit(127);
        }
        libc::execve(self.exe.as_ptr(), self.argv.as_ptr(), self.envp.as_ptr());
        fail(STEP_EXEC, errno());
    }
}

/// A started process. Dropping it neither kills nor reaps a running process
/// (call [`Child::wait`]); a paused one is resumed first, as by
/// [`Child::resume`] (which waits until it has exec'd; an exec failure is
/// then lost, and that child reaped).
#[derive(Debug)]
pub struct Child {
    pid: i32,
    ns_pid: i32,
    report: Option<OwnedFd>,
    go: Option<OwnedFd>,
    status: Option<i32>,
    /// With a pid namespace: the first child, which forks the real one.
    intermediate: Option<i32>,
    /// With [`Spawn::catch_bind`]: the thread answering its binds.
    catch: Option<crate::catchbind::Supervisor>,
}

fn read_record(fd: &OwnedFd) -> Result<Option<[i32; 3]>> {
    let mut b = [0u8; 12];
    let r = loop {
        match rustix::io::read(fd, &mut b) {
            Err(rustix::io::Errno::INTR) => continue,
            r => break r,
        }
    };
    match r {
        Ok(12) => {
            Ok(Some([0, 4, 8].map(|i| {
                i32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
            })))
        }
        Ok(0) => Ok(None),
        Err(e) => Err(Error::os(e.raw_os_error(), "reading the child's report")),
        Ok(_) => Err(Error::protocol("short record from the child")),
    }
}

fn step_error(rec: [i32; 3]) -> Error {
    let (step, err) = (rec[1], rec[2]);
    let what = if (STEP_NS..STEP_NS + 9).contains(&step) {
        format!(
            "join the {} namespace",
            Namespaces::step_name((step - STEP_NS) as usize)
        )
    } else {
        STEP_NAMES
            .get(step as usize)
            .unwrap_or(&"set up")
            .to_string()
    };
    Error::with_errno(
        Kind::ChildFailed,
        err,
        format!(
            "the child failed to {what}: {}",
            crate::error::strerror(err)
        ),
    )
}

impl Child {
    /// The pid as the caller sees it.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The pid as the child sees itself (differs inside a pid namespace);
    /// this is what its `LISTEN_PID` says.
    pub fn ns_pid(&self) -> i32 {
        self.ns_pid
    }

    /// Whether the child still waits for [`Child::resume`].
    pub fn is_paused(&self) -> bool {
        self.go.is_some()
    }

    /// Read the child's pid record(s). With a pid namespace the
    /// intermediate (host pid) and the real child (its own pid) write in
    /// either order; the intermediate is reaped here.
    fn read_pid(&mut self) -> Result<()> {
        let mut need_host = self.intermediate.is_some();
        let mut need_ns = true;
        let mut failed = None;
        // After an error, still read the host pid so that child is reaped.
        while need_host || (need_ns && failed.is_none()) {
            let rec = read_record(self.report.as_ref().expect("report pipe"))?;
            match rec {
                Some(r) if r[0] == TAG_HOST_PID => {
                    self.pid = r[1];
                    need_host = false;
                }
                Some(r) if r[0] == TAG_PID => {
                    self.ns_pid = r[2];
                    need_ns = false;
                }
                Some(r) if r[0] == TAG_ERROR => failed = Some(step_error(r)),
                // EOF: every writer is gone without a word.
                _ => break,
            }
        }
        if let Some(first) = self.intermediate.take() {
            let st = reap(first)?;
            if need_host {
                // The real child never existed: its status is the first's.
                self.status = Some(st);
            }
        }
        if let Some(e) = failed {
            if self.status.is_none() && !need_host {
                if let Ok(st) = reap(self.pid) {
                    self.status = Some(st);
                }
            }
            return Err(e);
        }
        if need_host || need_ns {
            if !need_host && self.status.is_none() {
                if let Ok(st) = reap(self.pid) {
                    self.status = Some(st);
                }
            }
            return Err(Error::new(
                Kind::ChildFailed,
                "the child exited before reporting",
            ));
        }
        Ok(())
    }

    /// Let a paused child go on to `exec`, and wait until it has: an exec
    /// failure is returned as an error (and the child reaped). A no-op for
    /// a child already resumed.
    pub fn resume(&mut self) -> Result<()> {
        let Some(go) = self.go.take() else {
            return Ok(());
        };
        // MSG_NOSIGNAL (always, in send_fds): a child that died meanwhile
        // gives EPIPE, not SIGPIPE here.
        if let Err(e) = crate::fdpass::send_fds(go.as_fd(), &[1], &[], 0) {
            let e = Error::os(e, "resuming the child");
            self.kill_and_reap();
            return Err(e);
        }
        drop(go);
        let report = self.report.take().expect("report pipe");
        match read_record(&report)? {
            None => Ok(()),
            Some(r) if r[0] == TAG_ERROR => {
                let st = reap(self.pid)?;
                self.status = Some(st);
                Err(step_error(r))
            }
            Some(_) => Err(Error::protocol("unexpected record from the child")),
        }
    }

    /// Wait for the child to exit; the raw wait status (see `WIFEXITED`).
    /// A paused child is resumed first: its exec failure is the error, as
    /// from [`Child::resume`] (a later wait gives its status).
    pub fn wait(&mut self) -> Result<i32> {
        if let Some(st) = self.status {
            return Ok(st);
        }
        self.resume()?;
        let st = reap(self.pid)?;
        self.status = Some(st);
        Ok(st)
    }

    /// Wait at most `timeout`; `None` if it is still running. A paused
    /// child stays paused (and is still running).
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<i32>> {
        if let Some(st) = self.status {
            return Ok(Some(st));
        }
        let end = std::time::Instant::now() + timeout;
        loop {
            match wait_pid(self.pid, libc::WNOHANG) {
                Ok(Some(st)) => {
                    self.status = Some(st);
                    return Ok(Some(st));
                }
                Ok(None) => {}
                Err(e) => return Err(Error::os(e, "waitpid")),
            }
            if std::time::Instant::now() >= end {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Send a signal.
    pub fn kill(&self, sig: i32) -> Result<()> {
        if self.status.is_some() {
            return Ok(());
        }
        // SAFETY: kill on our child's pid, which is not reaped yet.
        if unsafe { libc::kill(self.pid, sig) } != 0 {
            return Err(Error::last_os("kill"));
        }
        Ok(())
    }

    fn kill_and_reap(&mut self) {
        // Nothing is left to resume.
        self.go = None;
        if let Some(first) = self.intermediate.take() {
            let _ = reap(first);
        }
        if self.status.is_none() {
            let _ = self.kill(libc::SIGKILL);
            if let Ok(st) = reap(self.pid) {
                self.status = Some(st);
            }
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if self.go.is_some() && self.status.is_none() {
            // Let a paused child go to exec, as the bindings promise.
            let _ = self.resume();
        }
    }
}

/// Exit code of a wait status as a shell reports it: the code, or 128 + the
/// signal.
pub fn exit_code(status: i32) -> i32 {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        1
    }
}

// `Spawn::try_clone`, for a supervisor's next instance.
mod copy;
