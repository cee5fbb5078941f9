//! `sockpass.Supervisor`: one program across restarts, old and new
//! instance overlapping on the same fds. A translation of
//! `sockpass::supervise` only.

use crate::spawn::{plan, PlanArgs, PyCatch};
use crate::{closed, timeout_arg, to_pyerr};
use pyo3::prelude::*;
use sockpass::{SuperviseOptions, Supervisor};
use std::sync::Mutex;
use std::time::Duration;

fn secs(v: f64, what: &str) -> PyResult<Duration> {
    Duration::try_from_secs_f64(v).map_err(|_| {
        to_pyerr(sockpass::Error::bad_request(format!(
            "{what} {v} is not a number of seconds >= 0"
        )))
    })
}

/// Start the first instance; see `sockpass.Supervisor` for the arguments.
#[pyfunction]
#[pyo3(signature = (plan_args, ready, ready_timeout, grace, stop_signal, drain_timeout, catch=None))]
#[allow(clippy::too_many_arguments)]
pub fn supervise(
    py: Python<'_>,
    plan_args: PlanArgs,
    ready: Option<String>,
    ready_timeout: f64,
    grace: f64,
    stop_signal: i32,
    drain_timeout: f64,
    catch: Option<PyCatch>,
) -> PyResult<PySupervisor> {
    let opts = SuperviseOptions {
        ready: ready.map(|m| m.parse()).transpose().map_err(to_pyerr)?,
        ready_timeout: secs(ready_timeout, "ready_timeout")?,
        grace: secs(grace, "grace")?,
        stop_signal,
        drain_timeout: secs(drain_timeout, "drain_timeout")?,
    };
    let sup = py
        .detach(|| {
            let (argv, slots, env, setenv, start, listen_env, join_pid, namespaces) = plan_args;
            let recipe = plan(
                argv, slots, env, setenv, start, listen_env, join_pid, namespaces, false, catch,
            )?;
            Supervisor::start(recipe, opts)
        })
        .map_err(to_pyerr)?;
    Ok(PySupervisor {
        inner: Mutex::new(Some(sup)),
    })
}

/// A supervised program.
#[pyclass(module = "sockpass._sockpass", name = "Supervisor", frozen)]
pub struct PySupervisor {
    // Locked only with the GIL released (restart and wait block).
    inner: Mutex<Option<Supervisor>>,
}

impl PySupervisor {
    fn with<R: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut Supervisor) -> PyResult<R> + Send,
    ) -> PyResult<R> {
        py.detach(|| {
            let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            g.as_mut().map(f)
        })
        .ok_or_else(|| closed("supervisor"))?
    }
}

#[pymethods]
impl PySupervisor {
    #[getter]
    fn pid(&self, py: Python<'_>) -> PyResult<Option<i32>> {
        self.with(py, |s| Ok(s.pid()))
    }

    #[pyo3(signature = (timeout=None))]
    fn wait_ready(&self, py: Python<'_>, timeout: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        let t = timeout_arg(timeout)?;
        self.with(py, |s| s.wait_ready(t).map_err(to_pyerr))
    }

    /// The new pid; a failure raises with `status` (the new instance's raw
    /// wait status, or None) set on the exception.
    fn restart(&self, py: Python<'_>) -> PyResult<i32> {
        let r = self.with(py, |s| Ok(s.restart()))?;
        match r {
            Ok(r) => Ok(r.new_pid),
            Err(f) => {
                let err = to_pyerr(f.error);
                let _ = err.value(py).setattr("status", f.status);
                Err(err)
            }
        }
    }

    fn signal(&self, py: Python<'_>, sig: i32) -> PyResult<()> {
        self.with(py, |s| s.signal(sig).map_err(to_pyerr))
    }

    fn terminate(&self, py: Python<'_>, sig: i32) -> PyResult<()> {
        self.with(py, |s| {
            s.terminate(sig);
            Ok(())
        })
    }

    /// The last current instance's raw wait status once none is left, or
    /// None after `timeout` seconds.
    #[pyo3(signature = (timeout=None))]
    fn wait(&self, py: Python<'_>, timeout: Option<&Bound<'_, PyAny>>) -> PyResult<Option<i32>> {
        let t = timeout_arg(timeout)?;
        self.with(py, |s| s.wait_timeout(t).map_err(to_pyerr))
    }

    /// Drop the recipe's fds (instances are neither stopped nor reaped).
    fn close(&self, py: Python<'_>) {
        py.detach(|| {
            self.inner.lock().unwrap_or_else(|p| p.into_inner()).take();
        });
    }
}
