//! Supervise one program across restarts: the supervisor holds the
//! sockets (a [`Spawn`] plan used as a recipe; every instance gets copies of
//! the same open files at the same numbers, with the same `LISTEN_*`), the
//! readiness method, and the current instance.
//!
//! A restart starts a new instance from the recipe, waits until it is ready
//! (its own [`Readiness`]; without a method, until it has lived through a
//! grace period), makes it current, then sends the old one the stop signal
//! and waits for it to exit within the drain timeout before `SIGKILL`. A
//! new instance that exits first, or is not ready in time, is stopped the
//! same way and reaped; the old one stays current and the restart fails
//! with the new instance's wait status. Restarts never overlap: a request
//! made during one is queued (at most one; later requests join the queued
//! one), and it starts once the running one is over, old instance reaped.
//!
//! Two ways to drive it: [`Supervisor::restart`] blocks until the outcome;
//! an event loop calls [`Supervisor::request_restart`], polls
//! [`Supervisor::poll_fds`] until [`Supervisor::deadline`], and calls
//! [`Supervisor::advance`], which never blocks, for the [`Event`]s. Every
//! instance is reaped by the supervisor; none is left behind by a failure.

use crate::error::{Error, Kind, Result};
use crate::readiness::{pidfd_open, Method, Readiness};
use crate::spawn::{Child, Spawn};
use crate::sys;
use std::collections::VecDeque;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

/// How instances are started and stopped.
#[derive(Clone, Debug)]
pub struct Options {
    /// How an instance says it is ready; `None`: [`Options::grace`].
    pub ready: Option<Method>,
    /// How long a new instance may take to be ready on a restart.
    pub ready_timeout: Duration,
    /// Without a readiness method: a new instance alive this long is taken
    /// as ready.
    pub grace: Duration,
    /// Sent to an instance being stopped (the old one after a handover, a
    /// new one that failed).
    pub stop_signal: i32,
    /// How long a stopped instance may take to exit before `SIGKILL`.
    pub drain_timeout: Duration,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            ready: None,
            ready_timeout: Duration::from_secs(60),
            grace: Duration::from_secs(1),
            stop_signal: libc::SIGTERM,
            drain_timeout: Duration::from_secs(30),
        }
    }
}

/// A restart that went through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restarted {
    /// The request's number (see [`Supervisor::request_restart`]).
    pub id: u64,
    pub old_pid: i32,
    pub new_pid: i32,
    /// The old instance's raw wait status once it exited (`WIFEXITED`...).
    pub old_status: i32,
}

/// A restart that failed: the old instance (if still running) serves on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestartFailure {
    pub id: u64,
    /// The new instance's pid, 0 if it never started.
    pub new_pid: i32,
    /// The new instance's raw wait status, once reaped (`None` if it never
    /// started).
    pub status: Option<i32>,
    /// `ChildFailed` (it exited, or could not start), `Timeout` (not ready
    /// in time), `NotReady` (its readiness channel failed) or `BadRequest`
    /// (cancelled: nothing to restart, or shutting down).
    pub error: Error,
}

impl From<RestartFailure> for Error {
    fn from(f: RestartFailure) -> Error {
        f.error
    }
}

/// What [`Supervisor::advance`] reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A new instance is ready and current; the old one is being stopped.
    HandedOver {
        id: u64,
        old_pid: i32,
        new_pid: i32,
    },
    Restarted(Restarted),
    RestartFailed(RestartFailure),
    /// No instance is left: the current one exited with this raw wait
    /// status (and no restart is under way to replace it).
    Exited(i32),
}

/// One running instance: its process, a pidfd to watch it (none where the
/// kernel has no `pidfd_open`: its exit is then looked for every
/// [`NO_PIDFD_TICK`]), and (while it starts) its readiness channel.
#[derive(Debug)]
struct Instance {
    child: Child,
    pidfd: Option<OwnedFd>,
    ready: Option<Readiness>,
}

/// How often instances without a pidfd are looked at.
const NO_PIDFD_TICK: Duration = Duration::from_millis(50);

impl Instance {
    fn exited(&self) -> bool {
        match &self.pidfd {
            Some(p) => sys::poll_one(p.as_fd(), libc::POLLIN, 0).is_ok_and(|r| r != 0),
            None => exited_nowait(self.child.pid()),
        }
    }

    /// Reap an instance whose pidfd said it exited (does not block then).
    fn reap(mut self) -> i32 {
        self.child.wait().unwrap_or(0)
    }
}

#[derive(Debug)]
enum Phase {
    Idle,
    /// A new instance waits to be ready; `by_grace`: no readiness method,
    /// the deadline is the grace period.
    Starting {
        id: u64,
        new: Instance,
        deadline: Instant,
        by_grace: bool,
    },
    /// An instance was sent the stop signal; SIGKILL at `kill_at`.
    Stopping {
        inst: Instance,
        kill_at: Instant,
        killed: bool,
        then: After,
    },
}

/// What a stopped instance's exit completes.
#[derive(Debug)]
enum After {
    /// The old instance after a handover.
    Restarted { id: u64, new_pid: i32 },
    /// A new instance that failed.
    Failed { id: u64, error: Error },
}

/// See the module documentation.
#[derive(Debug)]
pub struct Supervisor {
    recipe: Spawn,
    opts: Options,
    current: Option<Instance>,
    /// The last current instance's status once it exited.
    status: Option<i32>,
    exit_reported: bool,
    phase: Phase,
    /// The id of the queued restart, if one is queued.
    queued: Option<u64>,
    last_id: u64,
    terminating: bool,
    events: VecDeque<Event>,
}

/// Add the readiness channel for `method` to a plan (the child's end:
/// `NOTIFY_SOCKET`, the fd at N for `fd:N`, or a last slot named `ready`
/// for `pipe`); the parent's side is returned.
pub fn attach_readiness(sp: &mut Spawn, method: Method) -> Result<Readiness> {
    let (r, w) = Readiness::new(method)?;
    match (method, w) {
        (Method::Notify, _) => {
            if let Some(v) = r.notify_socket_env() {
                sp.setenv("NOTIFY_SOCKET", v);
            }
        }
        (Method::Fd(n), Some(w)) => {
            sp.fd_at(w, n);
        }
        (_, Some(w)) => {
            sp.fd(w, Some("ready"));
        }
        (_, None) => {}
    }
    Ok(r)
}

/// A raw wait status in words: "exited with status N" or "was killed by
/// signal N".
pub fn describe_status(st: i32) -> String {
    if libc::WIFEXITED(st) {
        format!("exited with status {}", libc::WEXITSTATUS(st))
    } else if libc::WIFSIGNALED(st) {
        format!("was killed by signal {}", libc::WTERMSIG(st))
    } else {
        format!("ended with wait status {st:#x}")
    }
}

impl Supervisor {
    /// Start the first instance from `recipe` (kept, and copied for every
    /// instance; a paused recipe's instances are resumed at once). It is
    /// not waited for: see [`Supervisor::wait_ready`].
    pub fn start(recipe: Spawn, opts: Options) -> Result<Supervisor> {
        let first = spawn_instance(&recipe, &opts)?;
        Ok(Supervisor {
            recipe,
            opts,
            current: Some(first),
            status: None,
            exit_reported: false,
            phase: Phase::Idle,
            queued: None,
            last_id: 0,
            terminating: false,
            events: VecDeque::new(),
        })
    }

    pub fn options(&self) -> &Options {
        &self.opts
    }

    /// Change the options; they apply from the next restart on.
    pub fn options_mut(&mut self) -> &mut Options {
        &mut self.opts
    }

    /// The current instance's pid; `None` once none is left.
    pub fn pid(&self) -> Option<i32> {
        self.current.as_ref().map(|i| i.child.pid())
    }

    /// Whether a restart is under way (or queued).
    pub fn restarting(&self) -> bool {
        !matches!(self.phase, Phase::Idle) || self.queued.is_some()
    }

    /// Wait until the first instance is ready (its method; without one this
    /// returns at once), at most `timeout`. It exiting first is a
    /// `ChildFailed` error, running out of time a `Timeout` (it is left
    /// running: stop it with [`Supervisor::terminate`]).
    pub fn wait_ready(&mut self, timeout: Option<Duration>) -> Result<()> {
        self.wait_ready_inner(timeout, None)
    }

    /// [`Supervisor::wait_ready`], also polling `extra` and calling
    /// `on_extra(self)` each time it is readable (a signalfd to forward
    /// signals from, say).
    pub fn wait_ready_watching(
        &mut self,
        timeout: Option<Duration>,
        extra: std::os::fd::BorrowedFd<'_>,
        on_extra: &mut dyn FnMut() -> Result<()>,
    ) -> Result<()> {
        self.wait_ready_inner(timeout, Some((extra, on_extra)))
    }

    fn wait_ready_inner(
        &mut self,
        timeout: Option<Duration>,
        extra: Option<(std::os::fd::BorrowedFd<'_>, &mut dyn FnMut() -> Result<()>)>,
    ) -> Result<()> {
        let Some(cur) = self.current.as_mut() else {
            return Err(self.gone());
        };
        let pid = cur.child.pid();
        let Some(r) = cur.ready.as_mut() else {
            return Ok(());
        };
        let res = match (&cur.pidfd, extra) {
            (None, extra) => r.wait_inner(None, extra, timeout),
            (Some(_), Some((fd, f))) => r.wait_child_watching(pid, timeout, fd, f),
            (Some(_), None) => r.wait_child(pid, timeout),
        };
        if res.is_ok() {
            // Its channel is done with (a notify socket's directory goes).
            cur.ready = None;
        }
        res
    }

    fn gone(&self) -> Error {
        Error::new(
            Kind::BadRequest,
            format!(
                "no instance is running (the last one {})",
                self.status.map_or("exited".into(), describe_status)
            ),
        )
    }

    /// Send `sig` to the current instance.
    pub fn signal(&self, sig: i32) -> Result<()> {
        match &self.current {
            Some(i) => i.child.kill(sig),
            None => Ok(()),
        }
    }

    /// Shut down: send `sig` to every instance (current, starting and
    /// stopping), cancel a queued restart and refuse new ones. The
    /// supervisor is done when [`Event::Exited`] comes.
    pub fn terminate(&mut self, sig: i32) {
        self.terminating = true;
        if let Some(id) = self.queued.take() {
            self.cancelled(id, "the supervisor is shutting down");
        }
        for i in self.instances() {
            let _ = i.child.kill(sig);
        }
    }

    fn instances(&self) -> impl Iterator<Item = &Instance> {
        let other = match &self.phase {
            Phase::Idle => None,
            Phase::Starting { new, .. } => Some(new),
            Phase::Stopping { inst, .. } => Some(inst),
        };
        self.current.iter().chain(other)
    }

    fn cancelled(&mut self, id: u64, why: &str) {
        self.events.push_back(Event::RestartFailed(RestartFailure {
            id,
            new_pid: 0,
            status: None,
            error: Error::new(Kind::BadRequest, format!("restart cancelled: {why}")),
        }));
    }

    /// Ask for a restart: it starts now, or after the one under way (one
    /// queued at most; asking again joins it). The number returned is the
    /// restart's id, which its [`Event`] carries. Refused (`BadRequest`)
    /// once no instance runs or [`Supervisor::terminate`] was called.
    pub fn request_restart(&mut self) -> Result<u64> {
        if self.terminating {
            return Err(Error::bad_request(
                "cannot restart: the supervisor is shutting down",
            ));
        }
        if self.current.is_none() {
            return Err(self.gone());
        }
        if matches!(self.phase, Phase::Idle) {
            self.last_id += 1;
            let id = self.last_id;
            self.begin(id);
            return Ok(id);
        }
        Ok(*self.queued.get_or_insert_with(|| {
            self.last_id += 1;
            self.last_id
        }))
    }

    fn begin(&mut self, id: u64) {
        match spawn_instance(&self.recipe, &self.opts) {
            Ok(new) => {
                let by_grace = new.ready.is_none();
                let wait = if by_grace {
                    self.opts.grace
                } else {
                    self.opts.ready_timeout
                };
                self.phase = Phase::Starting {
                    id,
                    new,
                    deadline: Instant::now() + wait,
                    by_grace,
                };
            }
            Err(error) => self.events.push_back(Event::RestartFailed(RestartFailure {
                id,
                new_pid: 0,
                status: None,
                error: error.context("restart: starting the new instance"),
            })),
        }
    }

    /// The fds an event loop should poll for `POLLIN` before calling
    /// [`Supervisor::advance`] (valid until then).
    pub fn poll_fds(&self) -> Vec<RawFd> {
        let mut v: Vec<RawFd> = self
            .instances()
            .filter_map(|i| i.pidfd.as_ref().map(|p| p.as_raw_fd()))
            .collect();
        if let Phase::Starting { new, .. } = &self.phase {
            if let Some(r) = &new.ready {
                v.push(r.fd().as_raw_fd());
            }
        }
        v
    }

    /// When [`Supervisor::advance`] must be called even if no fd is
    /// readable (`None`: only on fds). Already-pending events: now.
    pub fn deadline(&self) -> Option<Instant> {
        if !self.events.is_empty() {
            return Some(Instant::now());
        }
        let at = match &self.phase {
            Phase::Idle => None,
            Phase::Starting { deadline, .. } => Some(*deadline),
            Phase::Stopping {
                kill_at, killed, ..
            } => (!killed).then_some(*kill_at),
        };
        if self.instances().any(|i| i.pidfd.is_none()) {
            let tick = Instant::now() + NO_PIDFD_TICK;
            return Some(at.map_or(tick, |a| a.min(tick)));
        }
        at
    }

    /// Take in what happened, without blocking: readiness, exits, timeouts.
    pub fn advance(&mut self) -> Vec<Event> {
        // A loop, as one step may make the next possible (a handover to an
        // old instance already gone completes the restart at once).
        for _ in 0..4 {
            if !self.step() {
                break;
            }
        }
        if self.current.as_ref().is_some_and(Instance::exited) {
            let st = self.current.take().expect("checked").reap();
            self.status = Some(st);
        }
        if self.current.is_none() && matches!(self.phase, Phase::Idle) {
            if let Some(id) = self.queued.take() {
                self.cancelled(id, "no instance is running");
            }
            if !self.exit_reported {
                self.exit_reported = true;
                self.events
                    .push_back(Event::Exited(self.status.unwrap_or(0)));
            }
        }
        self.events.drain(..).collect()
    }

    /// One step of the phase; true if the phase changed.
    fn step(&mut self) -> bool {
        let now = Instant::now();
        match std::mem::replace(&mut self.phase, Phase::Idle) {
            Phase::Idle => {
                if let (Some(id), Some(_)) = (self.queued, &self.current) {
                    if !self.terminating {
                        self.queued = None;
                        self.begin(id);
                        return true;
                    }
                }
                false
            }
            Phase::Starting {
                id,
                mut new,
                deadline,
                by_grace,
            } => {
                let pid = new.child.pid();
                let verdict = match new.ready.as_mut() {
                    Some(r) => r.check_child(new.pidfd.as_ref().map(|p| (pid, p.as_fd()))),
                    None => Ok(false),
                };
                match verdict {
                    Ok(true) => {
                        new.ready = None;
                        self.hand_over(id, new);
                        true
                    }
                    Ok(false) if new.exited() => {
                        let st = new.reap();
                        self.fail(
                            id,
                            pid,
                            st,
                            Error::new(
                                Kind::ChildFailed,
                                format!(
                                    "new instance {pid} {} before it was ready",
                                    describe_status(st)
                                ),
                            ),
                        );
                        true
                    }
                    Ok(false) if now >= deadline && by_grace => {
                        self.hand_over(id, new);
                        true
                    }
                    Ok(false) if now >= deadline => {
                        let e = Error::with_errno(
                            Kind::Timeout,
                            libc::ETIMEDOUT,
                            format!(
                                "new instance {pid} was not ready within {:?}",
                                self.opts.ready_timeout
                            ),
                        );
                        self.stop(new, After::Failed { id, error: e });
                        true
                    }
                    Ok(false) => {
                        self.phase = Phase::Starting {
                            id,
                            new,
                            deadline,
                            by_grace,
                        };
                        false
                    }
                    Err(e) => {
                        let e = e.context(format_args!("new instance {pid}"));
                        if new.exited() {
                            let st = new.reap();
                            self.fail(id, pid, st, e);
                        } else {
                            self.stop(new, After::Failed { id, error: e });
                        }
                        true
                    }
                }
            }
            Phase::Stopping {
                inst,
                kill_at,
                mut killed,
                then,
            } => {
                if inst.exited() {
                    let pid = inst.child.pid();
                    let st = inst.reap();
                    match then {
                        After::Restarted { id, new_pid } => {
                            self.events.push_back(Event::Restarted(Restarted {
                                id,
                                old_pid: pid,
                                new_pid,
                                old_status: st,
                            }))
                        }
                        After::Failed { id, error } => {
                            let error = Error::with_errno(
                                error.kind(),
                                error.errno(),
                                format!("{}; stopped, it {}", error.message(), describe_status(st)),
                            );
                            self.fail(id, pid, st, error)
                        }
                    }
                    return true;
                }
                if !killed && now >= kill_at {
                    let _ = inst.child.kill(libc::SIGKILL);
                    killed = true;
                }
                self.phase = Phase::Stopping {
                    inst,
                    kill_at,
                    killed,
                    then,
                };
                false
            }
        }
    }

    fn fail(&mut self, id: u64, new_pid: i32, st: i32, error: Error) {
        self.events.push_back(Event::RestartFailed(RestartFailure {
            id,
            new_pid,
            status: Some(st),
            error,
        }));
    }

    /// Make `new` current; stop the old one (if it still runs).
    fn hand_over(&mut self, id: u64, new: Instance) {
        let new_pid = new.child.pid();
        let old = self.current.replace(new);
        let old_pid = old.as_ref().map_or(0, |o| o.child.pid());
        self.events.push_back(Event::HandedOver {
            id,
            old_pid,
            new_pid,
        });
        match old {
            Some(old) => self.stop(old, After::Restarted { id, new_pid }),
            None => self.events.push_back(Event::Restarted(Restarted {
                id,
                old_pid,
                new_pid,
                old_status: self.status.unwrap_or(0),
            })),
        }
    }

    fn stop(&mut self, inst: Instance, then: After) {
        let _ = inst.child.kill(self.opts.stop_signal);
        self.phase = Phase::Stopping {
            inst,
            kill_at: Instant::now() + self.opts.drain_timeout,
            killed: false,
            then,
        };
    }

    /// Block until `deadline()` or one of `poll_fds()` (or `extra`) is
    /// readable; true if `extra` is.
    pub fn poll(&self, extra: Option<RawFd>, cap: Option<Duration>) -> Result<bool> {
        let mut p: Vec<libc::pollfd> = extra
            .into_iter()
            .chain(self.poll_fds())
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let mut deadline = self.deadline();
        if let Some(c) = cap {
            let d = Instant::now() + c;
            deadline = Some(deadline.map_or(d, |x| x.min(d)));
        }
        let ms = crate::readiness::remaining_ms(deadline);
        // SAFETY: poll on a vector of valid pollfds.
        let n = unsafe { libc::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, ms) };
        if n < 0 && sys::errno() != libc::EINTR {
            return Err(Error::last_os("poll"));
        }
        Ok(extra.is_some() && p[0].revents != 0)
    }

    /// Restart now and block until the outcome: the new instance ready and
    /// the old one gone (`Ok`), or the new one stopped and reaped (`Err`,
    /// the old one serves on).
    pub fn restart(&mut self) -> std::result::Result<Restarted, RestartFailure> {
        let id = self.request_restart().map_err(|error| RestartFailure {
            id: 0,
            new_pid: 0,
            status: None,
            error,
        })?;
        loop {
            for ev in self.advance() {
                match ev {
                    Event::Restarted(r) if r.id == id => return Ok(r),
                    Event::RestartFailed(f) if f.id == id => return Err(f),
                    // Kept for wait(): the current one may have exited.
                    Event::Exited(_) => self.exit_reported = false,
                    _ => {}
                }
            }
            if let Err(error) = self.poll(None, None) {
                return Err(RestartFailure {
                    id,
                    new_pid: 0,
                    status: None,
                    error,
                });
            }
        }
    }

    /// Wait until no instance is left (a restart under way goes on), at
    /// most `timeout` (`None`: no limit); the last current instance's raw
    /// wait status, or `None` on timeout.
    pub fn wait_timeout(&mut self, timeout: Option<Duration>) -> Result<Option<i32>> {
        let end = timeout.map(|t| Instant::now() + t);
        loop {
            for ev in self.advance() {
                if let Event::Exited(st) = ev {
                    // Waiting again gives the same status.
                    self.exit_reported = false;
                    return Ok(Some(st));
                }
            }
            let left = match end {
                Some(e) if Instant::now() >= e => return Ok(None),
                Some(e) => Some(e - Instant::now()),
                None => None,
            };
            self.poll(None, left)?;
        }
    }

    /// [`Supervisor::wait_timeout`] without a limit.
    pub fn wait(&mut self) -> Result<i32> {
        Ok(self.wait_timeout(None)?.unwrap_or(0))
    }
}

fn spawn_instance(recipe: &Spawn, opts: &Options) -> Result<Instance> {
    let mut sp = recipe.try_clone()?;
    let ready = opts
        .ready
        .map(|m| attach_readiness(&mut sp, m))
        .transpose()?;
    let mut child = sp.spawn()?;
    let pidfd = match child.resume().and_then(|()| pidfd_open(child.pid())) {
        Ok(p) => Some(p),
        // No pidfds here (an old kernel, valgrind): looked at by waitid.
        Err(e) if e.errno() == libc::ENOSYS => None,
        Err(e) => {
            let _ = child.kill(libc::SIGKILL);
            let _ = child.wait();
            return Err(e);
        }
    };
    Ok(Instance {
        child,
        pidfd,
        ready,
    })
}

/// Whether child `pid` has exited, without reaping it.
fn exited_nowait(pid: i32) -> bool {
    // SAFETY: all-zero is a valid siginfo_t.
    let mut si: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid writes into si; WNOWAIT leaves the child waitable.
    let r = unsafe {
        libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut si,
            libc::WEXITED | libc::WNOWAIT | libc::WNOHANG,
        )
    };
    // SAFETY: si_pid is set by waitid (0 while the child runs).
    r == 0 && unsafe { si.si_pid() } != 0
}
