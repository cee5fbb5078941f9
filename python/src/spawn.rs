//! `sockpass.spawn`: start a process with a planned set of fds (socket
//! activation), optionally in another process's namespaces and paused until
//! resumed. A translation of `sockpass::spawn` only.

use crate::{closed, timeout_arg, to_pyerr};
use pyo3::prelude::*;
use sockpass::Error;
use sockpass::{CatchBind, Child, EnvBase, ShareMode, Slot, Spawn};
use sockpass::{Namespaces, NsSet};
use std::ffi::OsString;
use std::os::fd::BorrowedFd;
use std::path::PathBuf;
use std::sync::Mutex;

/// One slot as the Python side hands it over: (fd or None for an empty
/// slot, name, inherit).
pub(crate) type PySlot = (Option<i32>, Option<String>, bool);

/// `plan`'s arguments but `paused`, as `sockpass._spawn._plan_args` makes
/// them (for `supervise`).
pub(crate) type PlanArgs = (
    Vec<OsString>,
    Vec<PySlot>,
    Option<Vec<(OsString, OsString)>>,
    Vec<(OsString, Option<OsString>)>,
    i32,
    bool,
    Option<i32>,
    Option<String>,
);

/// `catch_bind=` as the Python side hands it over: (ports, broker socket,
/// share mode, application name).
pub(crate) type PyCatch = (String, Option<OsString>, i64, String);

/// Build the plan. The fds are duplicated now, so the caller keeps its own.
/// `env` replaces the environment; `setenv` sets (or, with None, unsets)
/// variables over that base or the inherited one.
#[allow(clippy::too_many_arguments)]
pub(crate) fn plan(
    argv: Vec<OsString>,
    slots: Vec<PySlot>,
    env: Option<Vec<(OsString, OsString)>>,
    setenv: Vec<(OsString, Option<OsString>)>,
    start: i32,
    listen_env: bool,
    join_pid: Option<i32>,
    namespaces: Option<String>,
    paused: bool,
    catch: Option<PyCatch>,
) -> sockpass::Result<Spawn> {
    let mut it = argv.into_iter();
    let program = it
        .next()
        .ok_or_else(|| Error::bad_request("argv is empty: it needs at least the program"))?;
    let mut s = Spawn::new(program);
    s.args(it);
    if let Some(env) = env {
        s.env_base(EnvBase::Clear);
        for (k, v) in env {
            s.setenv(k, v);
        }
    }
    for (k, v) in setenv {
        match v {
            Some(v) => s.setenv(k, v),
            None => s.unsetenv(k),
        };
    }
    for (fd, name, inherit) in slots {
        match fd {
            _ if inherit => {
                s.slot(Slot::inherit_named(name.as_deref())?);
            }
            None => {
                s.slot(Slot::Empty { name });
            }
            Some(fd) if fd < 0 => {
                return Err(Error::bad_request(format!("invalid file descriptor {fd}")))
            }
            Some(fd) => {
                // SAFETY: only duplicated (F_DUPFD_CLOEXEC) at once; a closed
                // fd makes that fail with EBADF, which is reported.
                let b = unsafe { BorrowedFd::borrow_raw(fd) };
                s.dup_fd(b, name.as_deref())?;
            }
        }
    }
    s.start(start).listen_env(listen_env).paused(paused);
    if namespaces.is_some() && join_pid.is_none() {
        return Err(Error::bad_request(
            "namespaces= needs join_pid=: whose namespaces to join",
        ));
    }
    if let Some(pid) = join_pid {
        let set = match namespaces {
            Some(n) => n.parse()?,
            None => NsSet::default_join(),
        };
        s.join(Namespaces::open(pid, set)?);
    }
    if let Some((ports, socket, share, app)) = catch {
        let mut c = CatchBind::new(ports.parse()?);
        c.socket = socket.map(PathBuf::from);
        c.share = ShareMode::from_int(share)?;
        c.app = app;
        s.catch_bind(c);
    }
    Ok(s)
}

/// Start a process; see `sockpass.spawn` for the arguments.
#[pyfunction]
#[pyo3(signature = (argv, slots, env, setenv, start, listen_env, join_pid, namespaces, paused, catch=None))]
#[allow(clippy::too_many_arguments)]
pub fn spawn(
    py: Python<'_>,
    argv: Vec<OsString>,
    slots: Vec<PySlot>,
    env: Option<Vec<(OsString, OsString)>>,
    setenv: Vec<(OsString, Option<OsString>)>,
    start: i32,
    listen_env: bool,
    join_pid: Option<i32>,
    namespaces: Option<String>,
    paused: bool,
    catch: Option<PyCatch>,
) -> PyResult<PyChild> {
    let child = py
        .detach(|| {
            plan(
                argv, slots, env, setenv, start, listen_env, join_pid, namespaces, paused, catch,
            )?
            .spawn()
        })
        .map_err(to_pyerr)?;
    Ok(PyChild {
        pid: child.pid(),
        ns_pid: child.ns_pid(),
        inner: Mutex::new(Some(child)),
    })
}

/// A started process.
#[pyclass(module = "sockpass._sockpass", name = "Child", frozen)]
pub struct PyChild {
    pid: i32,
    ns_pid: i32,
    // Locked only with the GIL released (wait blocks).
    inner: Mutex<Option<Child>>,
}

impl PyChild {
    fn with<R: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut Child) -> sockpass::Result<R> + Send,
    ) -> PyResult<R> {
        let r = py.detach(|| {
            let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            g.as_mut().map(f)
        });
        r.ok_or_else(|| closed("child"))?.map_err(to_pyerr)
    }
}

#[pymethods]
impl PyChild {
    #[getter]
    fn pid(&self) -> i32 {
        self.pid
    }

    /// The pid as the child sees itself (its LISTEN_PID).
    #[getter]
    fn ns_pid(&self) -> i32 {
        self.ns_pid
    }

    #[getter]
    fn paused(&self, py: Python<'_>) -> PyResult<bool> {
        self.with(py, |c| Ok(c.is_paused()))
    }

    /// Let a paused child exec; an exec failure is raised here.
    fn resume(&self, py: Python<'_>) -> PyResult<()> {
        self.with(py, |c| c.resume())
    }

    /// The raw wait status, or None if still running after `timeout` seconds.
    #[pyo3(signature = (timeout=None))]
    fn wait(&self, py: Python<'_>, timeout: Option<&Bound<'_, PyAny>>) -> PyResult<Option<i32>> {
        match timeout_arg(timeout)? {
            None => self.with(py, |c| c.wait().map(Some)),
            Some(t) => self.with(py, |c| c.wait_timeout(t)),
        }
    }

    fn kill(&self, py: Python<'_>, sig: i32) -> PyResult<()> {
        self.with(py, |c| c.kill(sig))
    }
}
