//! `sockpass.notify`: server sockets handed in by a manager (with an
//! optional "bound and listening" notifier), and the manager's side. A
//! translation of `sockpass::notify` only.

use crate::{closed, timeout_arg, to_pyerr};
use pyo3::prelude::*;
use sockpass::inherited_fd;
use sockpass::{BindOptions, LazyServer, ServerSocket, Target};
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd};
use std::sync::{Mutex, RwLock};

fn own_fd(fd: i32) -> PyResult<OwnedFd> {
    inherited_fd(fd).map_err(to_pyerr)
}

/// A unix stream server socket handed in by a manager.
#[pyclass(module = "sockpass._sockpass", name = "ServerSocket", frozen)]
pub struct PyServerSocket {
    // accept() takes the read lock (accepts may run at once); check/wait the
    // write lock; always with the GIL released.
    inner: RwLock<Option<ServerSocket>>,
}

impl PyServerSocket {
    fn read<R: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&ServerSocket) -> sockpass::Result<R> + Send,
    ) -> PyResult<R> {
        let r = py.detach(|| {
            let g = self.inner.read().unwrap_or_else(|p| p.into_inner());
            g.as_ref().map(f)
        });
        r.ok_or_else(|| closed("server socket"))?.map_err(to_pyerr)
    }

    fn write<R: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut ServerSocket) -> sockpass::Result<R> + Send,
    ) -> PyResult<R> {
        let r = py.detach(|| {
            let mut g = self.inner.write().unwrap_or_else(|p| p.into_inner());
            g.as_mut().map(f)
        });
        r.ok_or_else(|| closed("server socket"))?.map_err(to_pyerr)
    }
}

#[pymethods]
impl PyServerSocket {
    /// Adopt fd `fd` (and `notifier`, the read end of a pipe); both are
    /// taken over, and closed if they are refused.
    /// `ty`: `SOCK_STREAM` or `SOCK_SEQPACKET`.
    #[new]
    #[pyo3(signature = (fd, notifier, ty))]
    fn new(fd: i32, notifier: Option<i32>, ty: i32) -> PyResult<Self> {
        let fd = own_fd(fd)?;
        let notifier = notifier.map(own_fd).transpose()?;
        let s = ServerSocket::adopt_type(fd, notifier, ty).map_err(to_pyerr)?;
        Ok(PyServerSocket {
            inner: RwLock::new(Some(s)),
        })
    }

    /// The one listening unix socket of type `ty` that socket activation
    /// passed (LISTEN_PID/LISTEN_FDS), or None without activation.
    #[staticmethod]
    fn from_activation(ty: i32, unset_env: bool) -> PyResult<Option<Self>> {
        let s = sockpass::adopt_listen_socket(unset_env, ty).map_err(to_pyerr)?;
        Ok(s.map(|s| PyServerSocket {
            inner: RwLock::new(Some(s)),
        }))
    }

    /// The address: path bytes, or a NUL byte then the abstract name; empty
    /// while the notifier is pending.
    #[getter]
    fn path(&self, py: Python<'_>) -> PyResult<Vec<u8>> {
        self.read(py, |s| Ok(s.path().to_vec()))
    }

    #[getter]
    fn dbus_address(&self, py: Python<'_>) -> PyResult<String> {
        self.read(py, |s| Ok(s.dbus_address().to_string()))
    }

    #[getter]
    fn ready(&self, py: Python<'_>) -> PyResult<bool> {
        self.read(py, |s| Ok(s.is_ready()))
    }

    fn notifier_fileno(&self, py: Python<'_>) -> PyResult<Option<i32>> {
        self.read(py, |s| Ok(s.notifier_fd().map(|f| f.as_raw_fd())))
    }

    fn fileno(&self, py: Python<'_>) -> PyResult<i32> {
        self.read(py, |s| Ok(s.as_fd().as_raw_fd()))
    }

    fn check(&self, py: Python<'_>) -> PyResult<bool> {
        self.write(py, |s| s.check())
    }

    #[pyo3(signature = (timeout=None))]
    fn wait(&self, py: Python<'_>, timeout: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        let t = timeout_arg(timeout)?;
        self.write(py, |s| s.wait(t))
    }

    /// One connection: (fd, pid, uid, gid); the fd is the caller's.
    fn accept(&self, py: Python<'_>) -> PyResult<(i32, i32, u32, u32)> {
        self.read(py, |s| {
            s.accept()
                .map(|(fd, c)| (fd.into_raw_fd(), c.pid, c.uid, c.gid))
        })
    }

    /// Give up the socket: its fd is the caller's (a pending notifier is closed).
    fn detach(&self, py: Python<'_>) -> PyResult<i32> {
        let s = py.detach(|| self.inner.write().unwrap_or_else(|p| p.into_inner()).take());
        s.map(|s| s.into_fd().into_raw_fd())
            .ok_or_else(|| closed("server socket"))
    }

    fn close(&self, py: Python<'_>) {
        let s = py.detach(|| self.inner.write().unwrap_or_else(|p| p.into_inner()).take());
        drop(s);
    }
}

fn bind_options(mode: i64, owner: Option<(i64, i64)>, backlog: i64) -> PyResult<BindOptions> {
    let out_of_range = |what: &str, v: i64| {
        to_pyerr(sockpass::Error::bad_request(format!(
            "{what} {v} out of range"
        )))
    };
    let id = |v: i64| u32::try_from(v).map_err(|_| out_of_range("owner id", v));
    Ok(BindOptions {
        mode: u32::try_from(mode).map_err(|_| out_of_range("mode", mode))?,
        owner: owner
            .map(|(u, g)| Ok::<_, PyErr>((id(u)?, id(g)?)))
            .transpose()?,
        backlog: i32::try_from(backlog).map_err(|_| out_of_range("backlog", backlog))?,
    })
}

/// (read end for the daemon, write end for the manager); both the caller's.
#[pyfunction]
pub fn notifier_pair() -> PyResult<(i32, i32)> {
    let (r, w) = sockpass::notifier_pair().map_err(to_pyerr)?;
    Ok((r.into_raw_fd(), w.into_raw_fd()))
}

/// Bind `path` in `target`'s (a pid's; None: ours) namespace and listen;
/// returns the listening socket's fd, the caller's.
#[pyfunction]
#[pyo3(signature = (path, target, mode, owner, backlog))]
pub fn bind_in_namespace(
    py: Python<'_>,
    path: Vec<u8>,
    target: Target,
    mode: i64,
    owner: Option<(i64, i64)>,
    backlog: i64,
) -> PyResult<i32> {
    let o = bind_options(mode, owner, backlog)?;
    py.detach(|| sockpass::bind_in_namespace(target, &path, &o))
        .map(|fd| fd.into_raw_fd())
        .map_err(to_pyerr)
}

/// A socket handed over before it is bound (the manager's side).
#[pyclass(module = "sockpass._sockpass", name = "LazyServer", frozen)]
pub struct PyLazyServer {
    inner: Mutex<Option<LazyServer>>,
}

impl PyLazyServer {
    fn with<R>(&self, f: impl FnOnce(&mut LazyServer) -> R) -> PyResult<R> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.as_mut().map(f).ok_or_else(|| closed("lazy server"))
    }
}

#[pymethods]
impl PyLazyServer {
    /// An unbound socket (made in `target`'s network namespace when it will
    /// get an abstract name) and its notifier pair.
    #[staticmethod]
    fn prepare(py: Python<'_>, target: Target, abstract_name: bool) -> PyResult<PyLazyServer> {
        let l = py
            .detach(|| sockpass::prepare_lazy(target, abstract_name))
            .map_err(to_pyerr)?;
        Ok(PyLazyServer {
            inner: Mutex::new(Some(l)),
        })
    }

    /// The daemon's copy of the socket (once; then None); the caller's.
    fn take_daemon_socket(&self) -> PyResult<Option<i32>> {
        self.with(|l| l.daemon_socket.take().map(|f| f.into_raw_fd()))
    }

    /// The notifier's read end for the daemon (once; then None); the caller's.
    fn take_daemon_notifier(&self) -> PyResult<Option<i32>> {
        self.with(|l| l.daemon_notifier.take().map(|f| f.into_raw_fd()))
    }

    /// The manager's copy of the socket.
    fn fileno(&self) -> PyResult<i32> {
        self.with(|l| l.socket().as_raw_fd())
    }

    /// Bind `path` in `target`'s namespace, listen, then fire the notifier
    /// (on error it fires too, on a socket that does not listen). Once.
    #[pyo3(signature = (path, target, mode, owner, backlog))]
    fn bind_and_notify(
        &self,
        py: Python<'_>,
        path: Vec<u8>,
        target: Target,
        mode: i64,
        owner: Option<(i64, i64)>,
        backlog: i64,
    ) -> PyResult<()> {
        let l = self
            .inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .ok_or_else(|| closed("lazy server"))?;
        let o = bind_options(mode, owner, backlog)?;
        py.detach(|| l.bind_and_notify(target, &path, &o))
            .map_err(to_pyerr)
    }

    /// Drop it unbound: the daemon's notifier fires on a socket that does not listen.
    fn close(&self) {
        drop(self.inner.lock().unwrap_or_else(|p| p.into_inner()).take());
    }
}
