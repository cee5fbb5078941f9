//! `sockpass._sockpass`: the native half of the `sockpass` Python package.
//!
//! It translates Python arguments into the core crate's types, calls the
//! core's blocking client with the GIL released, and translates results and
//! errors back. It decides nothing: every check and every number (including
//! `OSError.errno`, which is `sockpass::Error::code()`) comes from the core.
//! The friendly surface (enums, context managers, `socket.socket` objects)
//! lives in the Python package around this module.

// Every unsafe block says why it is sound.
#![deny(clippy::undocumented_unsafe_blocks)]

use pyo3::exceptions::{PyOSError, PyOverflowError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyInt, PyString};
use sockpass::{Client, SharedClient, Status};
use sockpass::{Error, Kind};
use sockpass::{ShareMode, SocketSpec, Token};
use std::os::fd::IntoRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

mod readiness;
mod server_socket;
mod spawn;
mod supervise;

/// The Python exception for a core error: `errno` is `Error::code()`,
/// `strerror` the core's message. Classes for sockpass's own kinds live in
/// `sockpass._errors`; the rest are plain `OSError(code, msg)`, which Python
/// itself turns into `PermissionError`, `TimeoutError`, ... by errno.
pub(crate) fn to_pyerr(e: Error) -> PyErr {
    let class = match e.kind() {
        Kind::ShareConflict => "ShareError",
        Kind::UnknownToken | Kind::TokenExpired => "TokenError",
        Kind::BrokerUnavailable => "BrokerUnavailableError",
        Kind::BadRequest => "BadRequestError",
        Kind::ChildFailed => "ChildFailedError",
        _ => return PyOSError::new_err((e.code(), e.message().to_string())),
    };
    Python::attach(|py| {
        let ty = match py
            .import("sockpass._errors")
            .and_then(|m| m.getattr(class))
            .and_then(|c| c.cast_into::<pyo3::types::PyType>().map_err(PyErr::from))
        {
            Ok(t) => t,
            Err(err) => return err,
        };
        let err = PyErr::from_type(ty, (e.code(), e.message().to_string()));
        if e.kind() == Kind::ChildFailed {
            // The failed step's own errno, which the code (2008) does not carry.
            let _ = err.value(py).setattr("child_errno", e.errno().max(0));
        }
        if e.kind() == Kind::BrokerUnavailable {
            // Why (ENOENT, ECONNREFUSED, EACCES, ...): the code is 2004.
            let _ = err.value(py).setattr("os_errno", e.errno().max(0));
        }
        err
    })
}

fn closed_err() -> PyErr {
    closed("client")
}

/// Using an object after close(): a ValueError, as for closed Python files.
pub(crate) fn closed(what: &str) -> PyErr {
    PyValueError::new_err(format!("operation on a closed sockpass {what}"))
}

/// A timeout in seconds (int or float; None: no limit).
pub(crate) fn timeout_arg(t: Option<&Bound<'_, PyAny>>) -> PyResult<Option<Duration>> {
    let Some(t) = t.filter(|t| !t.is_none()) else {
        return Ok(None);
    };
    if t.extract::<f64>().is_ok_and(|v| v == f64::INFINITY) {
        return Ok(None);
    }
    let secs: f64 = t.extract().map_err(|_| {
        PyTypeError::new_err(format!(
            "timeout must be a number of seconds or None, not {}",
            t.get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_default()
        ))
    })?;
    Duration::try_from_secs_f64(secs).map(Some).map_err(|_| {
        to_pyerr(Error::bad_request(format!(
            "timeout {secs} is not a number of seconds >= 0"
        )))
    })
}

/// A port or share mode: an `int` (subclasses such as `IntEnum` members
/// included); a value too wide for i64 is out of range like any other.
fn int_arg(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<Option<i64>> {
    if !obj.is_instance_of::<PyInt>() {
        return Err(PyTypeError::new_err(format!(
            "{name} must be an int, not {}",
            obj.get_type().name()?
        )));
    }
    match obj.extract::<i64>() {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.is_instance_of::<PyOverflowError>(obj.py()) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The core's request, from Python's arguments.
struct Request {
    spec: SocketSpec,
    share: ShareMode,
    app: String,
}

fn request_args(
    address: &Bound<'_, PyAny>,
    port: &Bound<'_, PyAny>,
    proto: &Bound<'_, PyAny>,
    share_mode: &Bound<'_, PyAny>,
    app_name: Option<&Bound<'_, PyAny>>,
) -> PyResult<Request> {
    let address: String = str_arg(address, "address")?;
    let proto: String = str_arg(proto, "proto")?;
    let port = match int_arg(port, "port")? {
        Some(p) => p,
        None => {
            return Err(to_pyerr(Error::bad_request(format!(
                "port {} out of range (0..=65535)",
                port.repr()?
            ))))
        }
    };
    let share = share_arg(share_mode)?;
    let app = app_arg(app_name)?;
    let spec = SocketSpec::from_parts(&proto, &address, port).map_err(to_pyerr)?;
    Ok(Request { spec, share, app })
}

/// A request given as a spec string (`udp:0.0.0.0:53?reuseport=1`), the
/// form that carries socket options.
fn spec_request_args(
    spec: &Bound<'_, PyAny>,
    share_mode: &Bound<'_, PyAny>,
    app_name: Option<&Bound<'_, PyAny>>,
    per_worker: bool,
) -> PyResult<(Request, u8)> {
    let spec: SocketSpec = str_arg(spec, "spec")?.parse().map_err(to_pyerr)?;
    let share = share_arg(share_mode)?;
    let app = app_arg(app_name)?;
    let flags = if per_worker {
        sockpass::proto::REQ_PER_WORKER
    } else {
        0
    };
    Ok((Request { spec, share, app }, flags))
}

/// The specs of a batch: each a spec string (with the call's share mode
/// and application name) or a tuple `(spec, share_mode[, app_name])`.
fn batch_args(
    specs: &Bound<'_, PyAny>,
    share_mode: &Bound<'_, PyAny>,
    app_name: Option<&Bound<'_, PyAny>>,
) -> PyResult<Vec<Request>> {
    if specs.is_instance_of::<PyString>() {
        return Err(PyTypeError::new_err(
            "specs must be an iterable of specs, not a str",
        ));
    }
    let share = share_arg(share_mode)?;
    let app = app_arg(app_name)?;
    let mut out = Vec::new();
    for (i, item) in specs.try_iter()?.enumerate() {
        let item = item?;
        let (spec, share, app) = if item.is_instance_of::<PyString>() {
            (item, share, app.clone())
        } else if let Ok(t) = item.cast::<pyo3::types::PyTuple>() {
            if !(2..=3).contains(&t.len()) {
                return Err(PyTypeError::new_err(format!(
                    "specs[{i}] must be a str or a tuple (spec, share_mode[, app_name])"
                )));
            }
            let app = if t.len() == 3 {
                app_arg(Some(&t.get_item(2)?))?
            } else {
                app.clone()
            };
            (t.get_item(0)?, share_arg(&t.get_item(1)?)?, app)
        } else {
            return Err(PyTypeError::new_err(format!(
                "specs[{i}] must be a str or a tuple (spec, share_mode[, app_name]), not {}",
                item.get_type().name()?
            )));
        };
        let spec: SocketSpec = str_arg(&spec, &format!("specs[{i}]"))?
            .parse()
            .map_err(|e: Error| to_pyerr(e.context(format_args!("specs[{i}]"))))?;
        out.push(Request { spec, share, app });
    }
    Ok(out)
}

fn do_request_many(c: &mut Client, rs: &[Request]) -> sockpass::Result<Vec<(i32, String)>> {
    let batch: Vec<_> = rs
        .iter()
        .map(|r| (r.spec.clone(), r.share, r.app.as_str()))
        .collect();
    let grants = c.request_many(&batch)?;
    Ok(grants
        .into_iter()
        .map(|g| (g.fd.into_raw_fd(), g.token.to_string()))
        .collect())
}

fn share_arg(share_mode: &Bound<'_, PyAny>) -> PyResult<ShareMode> {
    match int_arg(share_mode, "share_mode")? {
        Some(v) => ShareMode::from_int(v).map_err(to_pyerr),
        None => Err(to_pyerr(Error::bad_request(format!(
            "unknown share mode {}",
            share_mode.repr()?
        )))),
    }
}

fn app_arg(app_name: Option<&Bound<'_, PyAny>>) -> PyResult<String> {
    match app_name {
        None => Ok(String::new()),
        Some(a) if a.is_none() => Ok(String::new()),
        Some(a) => str_arg(a, "app_name"),
    }
}

pub(crate) fn str_arg(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<String> {
    match obj.cast::<PyString>() {
        Ok(s) => Ok(s.to_str()?.to_owned()),
        Err(_) => Err(PyTypeError::new_err(format!(
            "{name} must be a str, not {}",
            obj.get_type().name()?
        ))),
    }
}

/// What `release` is given: the fd the socket came with, or its token.
enum Release {
    Fd(i32),
    Token(Token),
}

fn release_arg(obj: &Bound<'_, PyAny>) -> PyResult<Release> {
    if obj.is_instance_of::<PyInt>() {
        return match obj.extract::<i32>() {
            Ok(fd) => Ok(Release::Fd(fd)),
            Err(_) => Err(to_pyerr(Error::bad_request(format!(
                "invalid file descriptor {}",
                obj.repr()?
            )))),
        };
    }
    if let Ok(s) = obj.cast::<PyString>() {
        let t: Token = s.to_str()?.parse().map_err(to_pyerr)?;
        return Ok(Release::Token(t));
    }
    Err(PyTypeError::new_err(format!(
        "fd_or_token must be an int (a file descriptor) or a str (a token), not {}",
        obj.get_type().name()?
    )))
}

fn do_request(c: &mut Client, r: &Request) -> sockpass::Result<(i32, String)> {
    do_request_flags(c, r, 0)
}

fn do_request_flags(c: &mut Client, r: &Request, flags: u8) -> sockpass::Result<(i32, String)> {
    let g = c.request_with_flags(&r.spec, r.share, &r.app, flags)?;
    // The caller owns the fd from here on (it is CLOEXEC, so Python sees it
    // as non-inheritable); the client keeps fd -> token for release by fd.
    Ok((g.fd.into_raw_fd(), g.token.to_string()))
}

fn do_reserve(c: &mut Client, r: &Request) -> sockpass::Result<(String, u16)> {
    let v = c.reserve_socket(&r.spec, r.share, &r.app)?;
    Ok((v.token.to_string(), v.port))
}

fn do_pickup(c: &mut Client, token: &Token) -> sockpass::Result<(i32, String)> {
    let g = c.pickup(token)?;
    Ok((g.fd.into_raw_fd(), g.token.to_string()))
}

fn token_arg(obj: &Bound<'_, PyAny>) -> PyResult<Token> {
    let s = str_arg(obj, "token")?;
    s.parse().map_err(to_pyerr)
}

fn do_release(c: &mut Client, r: &Release) -> sockpass::Result<u32> {
    match r {
        Release::Fd(fd) => c.release_fd(*fd),
        Release::Token(t) => c.release(t),
    }
}

/// One holder: (conn_id, pid, uid, gid, share, reserved, app).
type HolderRow = (u64, i32, u32, u32, u8, bool, String);
/// One socket: (id, spec, port, refs, holders).
type SocketRow = (u64, String, u16, u32, Vec<HolderRow>);
/// (sockets, references, connections, reservations, broker_fds).
type CountersRow = (u32, u32, u32, u32, u32);
/// One uid's counts: (connections, sockets, references, reservations,
/// status tables); `u32::MAX` in a quota is "no limit".
type UidCountsRow = (u32, u32, u32, u32, u32);
/// One uid: (uid, used, quota).
type UidRow = (u32, UidCountsRow, UidCountsRow);

fn uid_counts(c: sockpass::UidCounts) -> UidCountsRow {
    (
        c.connections,
        c.sockets,
        c.references,
        c.reservations,
        c.status,
    )
}

fn status_rows(s: Status) -> (Vec<SocketRow>, CountersRow, Vec<UidRow>) {
    let sockets = s
        .sockets
        .into_iter()
        .map(|k| {
            let holders = k
                .holders
                .into_iter()
                .map(|h| {
                    (
                        h.conn_id,
                        h.pid,
                        h.uid,
                        h.gid,
                        h.share.wire(),
                        h.reserved,
                        h.app,
                    )
                })
                .collect();
            (k.id, k.spec.to_string(), k.port, k.refs, holders)
        })
        .collect();
    let c = s.counters;
    let users = s
        .users
        .into_iter()
        .map(|u| (u.uid, uid_counts(u.used), uid_counts(u.quota)))
        .collect();
    (
        sockets,
        (
            c.sockets,
            c.references,
            c.connections,
            c.reservations,
            c.broker_fds,
        ),
        users,
    )
}

/// The paths the default client tries, in order.
#[pyfunction]
fn default_socket_paths() -> Vec<std::ffi::OsString> {
    sockpass::default_socket_paths()
        .into_iter()
        .map(PathBuf::into_os_string)
        .collect()
}

/// One connection to the broker; the connection is the lease. Fork and
/// recovery are the core's (`sockpass::client::shared`).
#[pyclass(module = "sockpass._sockpass", name = "Client", frozen)]
struct PyClient {
    inner: SharedClient,
    /// Closed by its owner: calls are a ValueError, as on a closed file.
    user_closed: AtomicBool,
}

/// A per-call timeout: absent is the client's own; `inf` none.
type CallTimeout<'a> = Option<&'a Bound<'a, PyAny>>;

impl PyClient {
    fn with<R>(
        &self,
        py: Python<'_>,
        f: impl FnMut(&mut Client) -> sockpass::Result<R> + Send,
    ) -> PyResult<R>
    where
        R: Send,
    {
        self.with_timeout(py, None, f)
    }

    fn with_timeout<R>(
        &self,
        py: Python<'_>,
        timeout: CallTimeout<'_>,
        f: impl FnMut(&mut Client) -> sockpass::Result<R> + Send,
    ) -> PyResult<R>
    where
        R: Send,
    {
        if self.user_closed.load(Ordering::Relaxed) {
            return Err(closed_err());
        }
        let t = match timeout {
            None => self.inner.timeout(),
            Some(t) => timeout_arg(Some(t))?,
        };
        py.detach(|| self.inner.with_timeout(t, f))
            .map_err(to_pyerr)
    }
}

#[pymethods]
impl PyClient {
    /// `auto`: a module client, which reconnects by itself (after an error,
    /// in a fork's child) instead of reporting.
    #[new]
    #[pyo3(signature = (path=None, timeout=None, auto=false))]
    fn new(
        py: Python<'_>,
        path: Option<PathBuf>,
        timeout: Option<&Bound<'_, PyAny>>,
        auto: bool,
    ) -> PyResult<Self> {
        let t = timeout_arg(timeout)?;
        let c = py
            .detach(|| SharedClient::connect(path.as_deref(), t, auto))
            .map_err(to_pyerr)?;
        Ok(PyClient {
            inner: c,
            user_closed: AtomicBool::new(false),
        })
    }

    /// The path connected to; None for a client made from a handed-in
    /// connection. A str, not a `pathlib.Path`: pyo3 imports that type on
    /// first use behind a lock a fork's child could inherit held.
    #[getter]
    fn path(&self, py: Python<'_>) -> Option<std::ffi::OsString> {
        py.detach(|| self.inner.path()).map(PathBuf::into_os_string)
    }

    /// The broker's pid (from the handshake, done on first use).
    #[getter]
    fn broker_pid(&self, py: Python<'_>) -> PyResult<u32> {
        self.with(py, |c| c.broker_pid())
    }

    /// The version handshake now; returns the broker's pid.
    fn hello(&self, py: Python<'_>) -> PyResult<u32> {
        self.with(py, |c| c.hello())
    }

    /// No connection this process can use: closed by its owner, closed
    /// after an error, or made before a fork (then reconnect()).
    #[getter]
    fn closed(&self, py: Python<'_>) -> bool {
        self.user_closed.load(Ordering::Relaxed) || !py.detach(|| self.inner.is_open())
    }

    /// Closed by close() (not only after an error).
    #[getter]
    fn user_closed(&self) -> bool {
        self.user_closed.load(Ordering::Relaxed)
    }

    /// A new connection (a new lease, holding nothing).
    fn reconnect(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| self.inner.reconnect()).map_err(to_pyerr)?;
        self.user_closed.store(false, Ordering::Relaxed);
        Ok(())
    }

    #[pyo3(signature = (timeout))]
    fn settimeout(&self, timeout: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        self.inner.set_timeout(timeout_arg(timeout)?);
        Ok(())
    }

    fn gettimeout(&self) -> Option<f64> {
        self.inner.timeout().map(|d| d.as_secs_f64())
    }

    /// Poll for each reply up to `us` microseconds before blocking, while
    /// replies come quickly (0: block at once; at most 1000).
    fn set_reply_spin(&self, us: u64) {
        self.inner.set_reply_spin(us);
    }

    /// Does this client hold the reference of `fd_or_token`?
    fn holds(&self, py: Python<'_>, fd_or_token: &Bound<'_, PyAny>) -> PyResult<bool> {
        let r = release_arg(fd_or_token)?;
        if self.user_closed.load(Ordering::Relaxed) {
            return Ok(false);
        }
        // Without connecting: a client with no connection holds nothing.
        Ok(py
            .detach(|| {
                self.inner.peek(|c| {
                    c.is_usable()
                        && match &r {
                            Release::Fd(fd) => c.token_of(*fd).is_some(),
                            Release::Token(t) => c.held().any(|(_, h)| h == *t),
                        }
                })
            })
            .unwrap_or(false))
    }

    #[pyo3(signature = (address, port, proto, share_mode, app_name=None, *, timeout=None))]
    #[allow(clippy::too_many_arguments)]
    fn request_socket(
        &self,
        py: Python<'_>,
        address: &Bound<'_, PyAny>,
        port: &Bound<'_, PyAny>,
        proto: &Bound<'_, PyAny>,
        share_mode: &Bound<'_, PyAny>,
        app_name: Option<&Bound<'_, PyAny>>,
        timeout: CallTimeout<'_>,
    ) -> PyResult<(i32, String)> {
        let r = request_args(address, port, proto, share_mode, app_name)?;
        self.with_timeout(py, timeout, |c| do_request(c, &r))
    }

    #[pyo3(signature = (spec, share_mode, app_name=None, per_worker=false, *, timeout=None))]
    fn request_spec(
        &self,
        py: Python<'_>,
        spec: &Bound<'_, PyAny>,
        share_mode: &Bound<'_, PyAny>,
        app_name: Option<&Bound<'_, PyAny>>,
        per_worker: bool,
        timeout: CallTimeout<'_>,
    ) -> PyResult<(i32, String)> {
        let (r, flags) = spec_request_args(spec, share_mode, app_name, per_worker)?;
        self.with_timeout(py, timeout, |c| do_request_flags(c, &r, flags))
    }

    /// Many sockets in one batch, all or nothing: `(fd, token)` each, in order.
    #[pyo3(signature = (specs, share_mode, app_name=None, *, timeout=None))]
    fn request_sockets(
        &self,
        py: Python<'_>,
        specs: &Bound<'_, PyAny>,
        share_mode: &Bound<'_, PyAny>,
        app_name: Option<&Bound<'_, PyAny>>,
        timeout: CallTimeout<'_>,
    ) -> PyResult<Vec<(i32, String)>> {
        let rs = batch_args(specs, share_mode, app_name)?;
        self.with_timeout(py, timeout, |c| do_request_many(c, &rs))
    }

    #[pyo3(signature = (address, port, proto, share_mode, app_name=None, *, timeout=None))]
    #[allow(clippy::too_many_arguments)]
    fn reserve_socket(
        &self,
        py: Python<'_>,
        address: &Bound<'_, PyAny>,
        port: &Bound<'_, PyAny>,
        proto: &Bound<'_, PyAny>,
        share_mode: &Bound<'_, PyAny>,
        app_name: Option<&Bound<'_, PyAny>>,
        timeout: CallTimeout<'_>,
    ) -> PyResult<(String, u16)> {
        let r = request_args(address, port, proto, share_mode, app_name)?;
        self.with_timeout(py, timeout, |c| do_reserve(c, &r))
    }

    #[pyo3(signature = (token, *, timeout=None))]
    fn pickup(
        &self,
        py: Python<'_>,
        token: &Bound<'_, PyAny>,
        timeout: CallTimeout<'_>,
    ) -> PyResult<(i32, String)> {
        let t = token_arg(token)?;
        self.with_timeout(py, timeout, |c| do_pickup(c, &t))
    }

    #[pyo3(signature = (fd_or_token, *, timeout=None))]
    fn release(
        &self,
        py: Python<'_>,
        fd_or_token: &Bound<'_, PyAny>,
        timeout: CallTimeout<'_>,
    ) -> PyResult<u32> {
        let r = release_arg(fd_or_token)?;
        self.with_timeout(py, timeout, |c| do_release(c, &r))
    }

    /// One result per token, in order: the references left, or the
    /// exception for that token. Every token is parsed before any is sent.
    fn release_many(&self, py: Python<'_>, tokens: &Bound<'_, PyAny>) -> PyResult<Vec<Py<PyAny>>> {
        if tokens.is_instance_of::<PyString>() {
            return Err(PyTypeError::new_err(
                "tokens must be an iterable of str tokens, not a str",
            ));
        }
        let strs = tokens
            .try_iter()?
            .enumerate()
            .map(|(i, t)| str_arg(&t?, &format!("tokens[{i}]")))
            .collect::<PyResult<Vec<String>>>()?;
        let parsed = Token::parse_all(strs).map_err(to_pyerr)?;
        let res = self.with(py, |c| c.release_many(&parsed))?;
        res.into_iter()
            .map(|r| match r {
                Ok(left) => Ok(left.into_pyobject(py)?.into_any().unbind()),
                Err(e) => Ok(to_pyerr(e).into_value(py).into_any()),
            })
            .collect()
    }

    fn release_all(&self, py: Python<'_>) -> PyResult<usize> {
        self.with(py, |c| c.release_all())
    }

    /// The (fd, token) pairs this client holds; fd -1 where the fd was
    /// closed and its number reused by a later grant.
    fn held(&self, py: Python<'_>) -> PyResult<Vec<(i32, String)>> {
        self.with(py, |c| {
            Ok(c.held()
                .map(|(fd, t)| (fd, t.to_string()))
                .collect::<Vec<_>>())
        })
    }

    #[pyo3(signature = (*, timeout=None))]
    fn status(
        &self,
        py: Python<'_>,
        timeout: CallTimeout<'_>,
    ) -> PyResult<(Vec<SocketRow>, CountersRow, Vec<UidRow>)> {
        self.with_timeout(py, timeout, |c| c.status())
            .map(status_rows)
    }

    /// Drop the connection, and with it every reference still held (in a
    /// fork's child, only the child's copy of its parent's connection).
    /// Closing twice is a no-op.
    fn close(&self, py: Python<'_>) {
        self.user_closed.store(true, Ordering::Relaxed);
        py.detach(|| self.inner.close());
    }

    /// A client on a broker connection handed in as fd `fd` (taken over).
    #[staticmethod]
    fn from_fd(py: Python<'_>, fd: i32) -> PyResult<Self> {
        let fd = sockpass::inherited_fd(fd).map_err(to_pyerr)?;
        let c = py.detach(|| Client::from_fd(fd)).map_err(to_pyerr)?;
        Ok(PyClient {
            inner: SharedClient::from_client(c),
            user_closed: AtomicBool::new(false),
        })
    }

    /// Ask the broker to re-execute itself in place (`exe`, or its own
    /// binary); returns its pid once it serves again.
    #[pyo3(signature = (exe=None))]
    fn upgrade(&self, py: Python<'_>, exe: Option<PathBuf>) -> PyResult<u32> {
        self.with(py, |c| c.upgrade(exe.as_deref()))
    }
}

#[pymodule]
fn _sockpass(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(default_socket_paths, m)?)?;
    m.add_class::<PyClient>()?;
    m.add_class::<readiness::PyReadiness>()?;
    m.add_function(wrap_pyfunction!(readiness::send_notify, m)?)?;
    m.add_function(wrap_pyfunction!(readiness::notify_ready, m)?)?;
    m.add_function(wrap_pyfunction!(readiness::report_ready_fd, m)?)?;
    m.add_function(wrap_pyfunction!(spawn::spawn, m)?)?;
    m.add_class::<spawn::PyChild>()?;
    m.add_function(wrap_pyfunction!(supervise::supervise, m)?)?;
    m.add_class::<supervise::PySupervisor>()?;
    m.add_class::<server_socket::PyServerSocket>()?;
    m.add_class::<server_socket::PyLazyServer>()?;
    m.add_function(wrap_pyfunction!(server_socket::notifier_pair, m)?)?;
    m.add_function(wrap_pyfunction!(server_socket::bind_in_namespace, m)?)?;
    m.setattr("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
