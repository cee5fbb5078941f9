//! Readiness (the core's `readiness` module): a manager waits for a child
//! to say it is ready over a pipe, systemd's `sd_notify`, or s6's
//! notification fd; a daemon reports its own readiness.

use crate::boundary::{c_str, call, fault};
use sockpass::{Error, Kind};
use sockpass::{Method, Readiness};
use std::ffi::OsStr;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::os::raw::{c_char, c_int};
use std::os::unix::ffi::OsStrExt;
use std::sync::Mutex;
use std::time::Duration;

/// The parent's side of one readiness protocol, made before the child is
/// spawned. Thread-safe: calls on one handle from several threads are
/// serialised (a blocking wait holds the others back).
pub struct sockpass_readiness {
    inner: Mutex<Readiness>,
}

impl sockpass_readiness {
    fn with<R>(
        &self,
        f: impl FnOnce(&mut Readiness) -> sockpass::Result<R>,
    ) -> sockpass::Result<R> {
        let mut r = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut r)
    }
}

unsafe fn readiness_ref<'a>(
    r: *mut sockpass_readiness,
) -> sockpass::Result<&'a sockpass_readiness> {
    r.as_ref().ok_or_else(|| fault("readiness"))
}

fn timeout_of(ms: c_int) -> Option<Duration> {
    u64::try_from(ms).ok().map(Duration::from_millis)
}

fn nobufs(size: usize, need: usize) -> Error {
    Error::with_errno(
        Kind::Os,
        libc::ENOBUFS,
        format!("buffer is {size} bytes, {need} are needed"),
    )
}

/// Make the parent's side of readiness `method`: `"pipe"` (the child closes
/// or writes to its fd), `"notify"` (sd_notify: the child gets
/// `NOTIFY_SOCKET`, see `sockpass_readiness_notify_socket`) or `"fd:N"`
/// (s6: the child writes a newline to its fd N).
///
/// On success writes a new handle to `*readiness_out` (free it with
/// `sockpass_readiness_free`) and the fd the child must get to
/// `*child_fd_out` (`O_CLOEXEC`, owned by the caller: hand it to the child,
/// for `fd:N` as fd N, then close it in the parent; -1 for `notify`), and
/// returns 0. `method` is borrowed. Errors: `-EFAULT`, `-EINVAL` (unknown
/// method), `-ENAMETOOLONG`, `-EMFILE`.
#[no_mangle]
pub unsafe extern "C" fn sockpass_readiness_new(
    method: *const c_char,
    readiness_out: *mut *mut sockpass_readiness,
    child_fd_out: *mut c_int,
) -> c_int {
    call(|| {
        let m: Method = c_str(method, "method", crate::SOCKPASS_MAX_STRING)?.parse()?;
        if readiness_out.is_null() {
            return Err(fault("readiness_out"));
        }
        if child_fd_out.is_null() {
            return Err(fault("child_fd_out"));
        }
        let (r, child) = Readiness::new(m)?;
        *child_fd_out = child.map_or(-1, IntoRawFd::into_raw_fd);
        *readiness_out = Box::into_raw(Box::new(sockpass_readiness {
            inner: Mutex::new(r),
        }));
        Ok(0)
    })
}

/// Free the handle and close its fds (for `notify`, the socket and its
/// private directory are removed). NULL is a no-op.
#[no_mangle]
pub unsafe extern "C" fn sockpass_readiness_free(readiness: *mut sockpass_readiness) {
    if readiness.is_null() {
        return;
    }
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        drop(Box::from_raw(readiness));
    }));
}

/// The fd to watch in an event loop: readable or hung up means call
/// `sockpass_readiness_check`. It belongs to the handle: do not close it.
/// Errors: `-EFAULT`.
#[no_mangle]
pub unsafe extern "C" fn sockpass_readiness_fd(readiness: *mut sockpass_readiness) -> c_int {
    call(|| {
        let r = readiness_ref(readiness)?;
        r.with(|r| Ok(r.fd().as_raw_fd()))
    })
}

/// For `notify`: the value to put in the child's `NOTIFY_SOCKET`, written
/// NUL-terminated into `buf` of `size` bytes. Returns its length without
/// the NUL. Errors: `-EFAULT`, `-ENOENT` (not the `notify` method),
/// `-ENOBUFS` (`buf` too small: nothing written).
#[no_mangle]
pub unsafe extern "C" fn sockpass_readiness_notify_socket(
    readiness: *mut sockpass_readiness,
    buf: *mut c_char,
    size: usize,
) -> c_int {
    call(|| {
        let r = readiness_ref(readiness)?;
        if buf.is_null() {
            return Err(fault("buf"));
        }
        let v = r.with(|r| {
            r.notify_socket_env()
                .map(|v| v.as_bytes().to_vec())
                .ok_or_else(|| Error::with_errno(Kind::Os, libc::ENOENT, "not the notify method"))
        })?;
        if v.len() >= size {
            return Err(nobufs(size, v.len() + 1));
        }
        std::ptr::copy_nonoverlapping(v.as_ptr(), buf.cast::<u8>(), v.len());
        *buf.add(v.len()) = 0;
        Ok(v.len() as c_int)
    })
}

/// Without blocking, take in what the child sent: 1 once ready, 0 if not
/// yet. Errors: `-EFAULT`, `-SOCKPASS_E_NOT_READY` (the child closed its
/// `fd:N` without the newline), `-SOCKPASS_E_PROTOCOL` (a malformed
/// notify message).
#[no_mangle]
pub unsafe extern "C" fn sockpass_readiness_check(readiness: *mut sockpass_readiness) -> c_int {
    call(|| {
        let r = readiness_ref(readiness)?;
        r.with(|r| r.check().map(c_int::from))
    })
}

/// Block until ready, at most `timeout_ms` milliseconds (negative: no
/// limit). Returns 0. Errors: as `sockpass_readiness_check`, and
/// `-ETIMEDOUT` (wait again later).
#[no_mangle]
pub unsafe extern "C" fn sockpass_readiness_wait(
    readiness: *mut sockpass_readiness,
    timeout_ms: c_int,
) -> c_int {
    call(|| {
        let r = readiness_ref(readiness)?;
        r.with(|r| r.wait(timeout_of(timeout_ms)).map(|()| 0))
    })
}

/// As `sockpass_readiness_wait`, while watching child `pid` (not reaped
/// here: the caller still waits for it): if it exits first, that is
/// `-SOCKPASS_E_CHILD_FAILED` and `sockpass_last_error_message` gives its
/// status. Errors also: `-EINVAL` (`pid` not positive).
#[no_mangle]
pub unsafe extern "C" fn sockpass_readiness_wait_child(
    readiness: *mut sockpass_readiness,
    pid: c_int,
    timeout_ms: c_int,
) -> c_int {
    call(|| {
        let r = readiness_ref(readiness)?;
        if pid <= 0 {
            return Err(Error::bad_request(format!("pid {pid} is not a process id")));
        }
        r.with(|r| r.wait_child(pid, timeout_of(timeout_ms)).map(|()| 0))
    })
}

/// For a daemon: if `NOTIFY_SOCKET` is set, send `READY=1` and `MAINPID`
/// there and return 1; return 0 if it is not set. Errors: the errno of the
/// failed connect or send (e.g. `-ENOENT`, `-ECONNREFUSED`), `-EINVAL`
/// (malformed address).
#[no_mangle]
pub extern "C" fn sockpass_notify_ready() -> c_int {
    call(|| sockpass::notify_ready_from_env().map(c_int::from))
}

/// Send one sd_notify message of `len` bytes (borrowed; e.g.
/// `"STATUS=loading"`) to `address` as `NOTIFY_SOCKET` spells it (`/path`
/// or `@abstract`; NUL-terminated, borrowed). Returns 0. Errors: `-EFAULT`,
/// `-EINVAL` (malformed address, or `len` above 4096), `-ENAMETOOLONG`,
/// and the errno of the failed connect or send.
#[no_mangle]
pub unsafe extern "C" fn sockpass_notify_send(
    address: *const c_char,
    msg: *const c_char,
    len: usize,
) -> c_int {
    call(|| {
        let a = c_str(address, "address", crate::SOCKPASS_MAX_STRING)?;
        if msg.is_null() {
            return Err(fault("msg"));
        }
        if len > sockpass::MAX_NOTIFY_MESSAGE {
            return Err(Error::bad_request(format!(
                "notify message is {len} bytes; at most {} are allowed",
                sockpass::MAX_NOTIFY_MESSAGE
            )));
        }
        let m = std::slice::from_raw_parts(msg.cast::<u8>(), len);
        sockpass::send_notify(OsStr::new(a), m).map(|()| 0)
    })
}

/// For a daemon started with a readiness fd (s6's notification-fd, or the
/// write end of a `pipe`): write a newline to `fd` and close it. The fd is
/// taken over and closed whatever the outcome, unless it is negative or not
/// open (`-EBADF`, nothing closed). Returns 0. Errors: `-EBADF`, `-EPIPE`
/// (the reader is gone).
#[no_mangle]
pub extern "C" fn sockpass_report_ready_fd(fd: c_int) -> c_int {
    call(|| {
        if fd < 0 || !sockpass::sys::fd_is_open(fd) {
            return Err(Error::with_errno(
                Kind::Os,
                libc::EBADF,
                format!("fd {fd} is not an open fd"),
            ));
        }
        // SAFETY: fd is open and the caller hands it over.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        sockpass::report_ready_fd(fd).map(|()| 0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(method: &std::ffi::CStr) -> (c_int, *mut sockpass_readiness, c_int) {
        let mut r = std::ptr::null_mut();
        let mut fd = -7;
        let rc = unsafe { sockpass_readiness_new(method.as_ptr(), &mut r, &mut fd) };
        (rc, r, fd)
    }

    #[test]
    fn pipe_and_fd_methods_fire_on_the_child_side() {
        for m in [c"pipe", c"fd:5"] {
            let (rc, r, fd) = new(m);
            assert_eq!(rc, 0);
            assert!(fd >= 0);
            assert!(unsafe { sockpass_readiness_fd(r) } >= 0);
            assert_eq!(unsafe { sockpass_readiness_check(r) }, 0);
            assert_eq!(unsafe { sockpass_readiness_wait(r, 10) }, -libc::ETIMEDOUT);
            let mut b = [0 as c_char; 8];
            let n = unsafe { sockpass_readiness_notify_socket(r, b.as_mut_ptr(), b.len()) };
            assert_eq!(n, -libc::ENOENT);
            assert_eq!(sockpass_report_ready_fd(fd), 0);
            assert_eq!(unsafe { sockpass_readiness_wait(r, 30_000) }, 0);
            assert_eq!(unsafe { sockpass_readiness_check(r) }, 1);
            unsafe { sockpass_readiness_free(r) };
        }
    }

    #[test]
    fn notify_method_gets_ready_line() {
        let (rc, r, fd) = new(c"notify");
        assert_eq!((rc, fd), (0, -1));
        let mut b = [0 as c_char; 256];
        let n = unsafe { sockpass_readiness_notify_socket(r, b.as_mut_ptr(), b.len()) };
        assert!(n > 0);
        let mut small = [0 as c_char; 2];
        let rc = unsafe { sockpass_readiness_notify_socket(r, small.as_mut_ptr(), small.len()) };
        assert_eq!(rc, -libc::ENOBUFS);
        let s = c"STATUS=starting\n";
        let rc = unsafe { sockpass_notify_send(b.as_ptr(), s.as_ptr(), s.count_bytes()) };
        assert_eq!(rc, 0);
        assert_eq!(unsafe { sockpass_readiness_check(r) }, 0);
        let s = c"READY=1\n";
        let rc = unsafe { sockpass_notify_send(b.as_ptr(), s.as_ptr(), s.count_bytes()) };
        assert_eq!(rc, 0);
        assert_eq!(unsafe { sockpass_readiness_wait(r, 30_000) }, 0);
        unsafe { sockpass_readiness_free(r) };
    }

    #[test]
    fn bad_input_gets_its_code() {
        for m in [c"", c"fd:-1", c"fd:x", c"systemd"] {
            let (rc, r, fd) = new(m);
            assert_eq!((rc, r, fd), (-libc::EINVAL, std::ptr::null_mut(), -7));
        }
        let mut r = std::ptr::null_mut();
        let mut fd = -7;
        let null: *mut sockpass_readiness = std::ptr::null_mut();
        assert_eq!(
            unsafe { sockpass_readiness_new(std::ptr::null(), &mut r, &mut fd) },
            -libc::EFAULT
        );
        assert_eq!(
            unsafe { sockpass_readiness_new(c"pipe".as_ptr(), std::ptr::null_mut(), &mut fd) },
            -libc::EFAULT
        );
        assert_eq!(
            unsafe { sockpass_readiness_new(c"pipe".as_ptr(), &mut r, std::ptr::null_mut()) },
            -libc::EFAULT
        );
        assert_eq!((r, fd), (null, -7));
        assert_eq!(unsafe { sockpass_readiness_check(null) }, -libc::EFAULT);
        assert_eq!(unsafe { sockpass_readiness_wait(null, 0) }, -libc::EFAULT);
        assert_eq!(unsafe { sockpass_readiness_fd(null) }, -libc::EFAULT);
        let (_, r, fd) = new(c"pipe");
        assert_eq!(
            unsafe { sockpass_readiness_wait_child(r, 0, 0) },
            -libc::EINVAL
        );
        assert_eq!(
            unsafe { sockpass_readiness_wait_child(r, -3, 0) },
            -libc::EINVAL
        );
        assert_eq!(sockpass_report_ready_fd(fd), 0);
        unsafe { sockpass_readiness_free(r) };
        unsafe { sockpass_readiness_free(null) };
        assert_eq!(sockpass_report_ready_fd(-1), -libc::EBADF);
        assert_eq!(sockpass_report_ready_fd(1_000_000), -libc::EBADF);
        let big = vec![b'x'; 5000];
        let rc = unsafe {
            sockpass_notify_send(c"/nonexistent".as_ptr(), big.as_ptr().cast(), big.len())
        };
        assert_eq!(rc, -libc::EINVAL);
        let rc = unsafe { sockpass_notify_send(c"/nonexistent".as_ptr(), std::ptr::null(), 1) };
        assert_eq!(rc, -libc::EFAULT);
        let rc =
            unsafe { sockpass_notify_send(c"/nonexistent/x".as_ptr(), c"READY=1".as_ptr(), 7) };
        assert_eq!(rc, -libc::ENOENT);
    }
}
