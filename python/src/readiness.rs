//! `sockpass.readiness`: waiting for a child to say it is ready (pipe,
//! sd_notify, s6 fd:N), and reporting one's own readiness. Translation of
//! `sockpass::readiness` only.

use crate::{closed, timeout_arg, to_pyerr};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use sockpass::Method;
use std::ffi::OsString;
use std::os::fd::{AsRawFd, IntoRawFd};
use std::sync::Mutex;

/// The parent's side of one readiness protocol.
#[pyclass(module = "sockpass._sockpass", name = "Readiness", frozen)]
pub struct PyReadiness {
    // Locked only with the GIL released (waits block).
    inner: Mutex<Option<sockpass::Readiness>>,
    method: String,
}

impl PyReadiness {
    fn with<R: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut sockpass::Readiness) -> sockpass::Result<R> + Send,
    ) -> PyResult<R> {
        let r = py.detach(|| {
            let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            g.as_mut().map(f)
        });
        match r {
            None => Err(closed("readiness")),
            Some(r) => r.map_err(to_pyerr),
        }
    }
}

#[pymethods]
impl PyReadiness {
    /// Make the parent's side for `method` ("pipe", "notify" or "fd:N");
    /// returns it and the fd the child must get (None for notify), which the
    /// caller owns.
    #[staticmethod]
    fn create(method: &Bound<'_, PyAny>) -> PyResult<(PyReadiness, Option<i32>)> {
        let name = crate::str_arg(method, "method")?;
        let m: Method = name.parse().map_err(to_pyerr)?;
        let (r, child) = sockpass::Readiness::new(m).map_err(to_pyerr)?;
        Ok((
            PyReadiness {
                inner: Mutex::new(Some(r)),
                method: name,
            },
            child.map(|fd| fd.into_raw_fd()),
        ))
    }

    #[getter]
    fn method(&self) -> String {
        self.method.clone()
    }

    /// The value for the child's NOTIFY_SOCKET (notify only).
    #[getter]
    fn notify_socket(&self, py: Python<'_>) -> PyResult<Option<OsString>> {
        self.with(py, |r| Ok(r.notify_socket_env().map(|s| s.to_os_string())))
    }

    /// The fd to watch in an event loop: readable or hung up means check().
    fn fileno(&self, py: Python<'_>) -> PyResult<i32> {
        self.with(py, |r| Ok(r.fd().as_raw_fd()))
    }

    #[getter]
    fn ready(&self, py: Python<'_>) -> PyResult<bool> {
        self.with(py, |r| Ok(r.is_ready()))
    }

    fn check(&self, py: Python<'_>) -> PyResult<bool> {
        self.with(py, |r| r.check())
    }

    #[pyo3(signature = (timeout=None))]
    fn wait(&self, py: Python<'_>, timeout: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        let t = timeout_arg(timeout)?;
        self.with(py, |r| r.wait(t))
    }

    #[pyo3(signature = (pid, timeout=None))]
    fn wait_child(
        &self,
        py: Python<'_>,
        pid: i32,
        timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let t = timeout_arg(timeout)?;
        self.with(py, |r| r.wait_child(pid, t))
    }

    /// Close the fd (and remove a notify socket's private directory).
    fn close(&self, py: Python<'_>) {
        let r = py.detach(|| self.inner.lock().unwrap_or_else(|p| p.into_inner()).take());
        drop(r);
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __exit__(
        &self,
        py: Python<'_>,
        _ty: &Bound<'_, PyAny>,
        _value: &Bound<'_, PyAny>,
        _tb: &Bound<'_, PyAny>,
    ) {
        self.close(py)
    }
}

/// Send one sd_notify message to `addr` (a path, or `@name`).
#[pyfunction]
pub fn send_notify(py: Python<'_>, addr: OsString, msg: &Bound<'_, PyBytes>) -> PyResult<()> {
    let m = msg.as_bytes().to_vec();
    py.detach(|| sockpass::send_notify(&addr, &m))
        .map_err(to_pyerr)
}

/// If NOTIFY_SOCKET is set, send READY=1 (and MAINPID) there; True if it was.
#[pyfunction]
pub fn notify_ready(py: Python<'_>) -> PyResult<bool> {
    py.detach(sockpass::notify_ready_from_env).map_err(to_pyerr)
}

/// s6 / pipe: write a newline to fd `fd` and close it (the fd is taken over).
#[pyfunction]
pub fn report_ready_fd(py: Python<'_>, fd: i32) -> PyResult<()> {
    let fd = sockpass::inherited_fd(fd).map_err(to_pyerr)?;
    py.detach(|| sockpass::report_ready_fd(fd))
        .map_err(to_pyerr)
}
