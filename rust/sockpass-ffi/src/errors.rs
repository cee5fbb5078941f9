//! Error codes, their messages, and this thread's last error detail.

use once_cell::sync::Lazy;
use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::CString;
use std::os::raw::{c_char, c_int};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// A socket is held under a share mode that does not admit this request.
pub const SOCKPASS_E_SHARE_CONFLICT: c_int = 2001;
/// The token is unknown to the broker, or held by another client.
pub const SOCKPASS_E_UNKNOWN_TOKEN: c_int = 2002;
/// A configured limit of the broker was reached.
pub const SOCKPASS_E_LIMIT_REACHED: c_int = 2003;
/// The broker is not running, or the connection to it was lost.
pub const SOCKPASS_E_BROKER_UNAVAILABLE: c_int = 2004;
/// The broker answered something this library does not understand.
pub const SOCKPASS_E_PROTOCOL: c_int = 2005;
/// A reservation token expired before it was picked up.
pub const SOCKPASS_E_TOKEN_EXPIRED: c_int = 2006;
/// A server socket or child is not ready.
pub const SOCKPASS_E_NOT_READY: c_int = 2007;
/// A spawned child failed before it ran its program.
pub const SOCKPASS_E_CHILD_FAILED: c_int = 2008;
/// A panic inside the library was caught at the C boundary (a bug).
pub const SOCKPASS_E_PANIC: c_int = 2099;

thread_local! {
    // None is "": a successful call, the common case, then costs no
    // allocation.
    static LAST: RefCell<Option<CString>> = const { RefCell::new(None) };
    static LAST_ERRNO: std::cell::Cell<c_int> = const { std::cell::Cell::new(0) };
}

/// Record this thread's last error: its message and the OS errno behind it
/// (0 if none).
pub(crate) fn set_last_error_errno(msg: Option<&str>, errno: c_int) {
    if errno != 0 {
        ANY_RECORDED.store(true, Ordering::Relaxed);
    }
    set_last_error(msg);
    let _ = LAST_ERRNO.try_with(|e| e.set(errno));
}

/// Has any thread recorded an error? Until one has, every thread's last
/// error is already "" and errno 0, and a success leaves the thread-locals
/// alone: their page is one more a request touches, a cold one after each
/// wake-up once hundreds of client processes share a CPU.
static ANY_RECORDED: AtomicBool = AtomicBool::new(false);

#[inline]
pub(crate) fn set_last_error(msg: Option<&str>) {
    if msg.is_none() && !ANY_RECORDED.load(Ordering::Relaxed) {
        return;
    }
    record_last_error(msg);
}

/// [`set_last_error`] once there is something to record or clear: out of
/// line, off the request path's pages.
#[cold]
#[inline(never)]
fn record_last_error(msg: Option<&str>) {
    // Before this thread's own record: its later calls see the flag set
    // (program order), whatever other threads see.
    ANY_RECORDED.store(true, Ordering::Relaxed);
    let c = msg.map(|m| CString::new(m.replace('\0', " ")).unwrap_or_default());
    // try_with: during thread teardown there is nothing left to record into.
    let _ = LAST.try_with(|l| {
        let mut l = l.borrow_mut();
        if l.is_some() || c.is_some() {
            *l = c;
        }
    });
    let _ = LAST_ERRNO.try_with(|e| e.set(0));
}

/// The detail of the last failed sockpass call in this thread ("" after a
/// successful one). The pointer stays valid until the next sockpass call in
/// this thread; do not free it.
#[no_mangle]
pub extern "C" fn sockpass_last_error_message() -> *const c_char {
    // Never unwinds into C: during thread teardown (or on a bug) it is "".
    std::panic::catch_unwind(|| {
        LAST.try_with(|l| l.borrow().as_ref().map(|c| c.as_ptr()))
            .ok()
            .flatten()
    })
    .ok()
    .flatten()
    .unwrap_or(c"".as_ptr())
}

/// The OS errno behind the last failed sockpass call in this thread, when
/// the returned code does not carry it: for `-SOCKPASS_E_CHILD_FAILED`, the
/// errno of the step that failed in the child (e.g. `ENOENT` from exec; the
/// message names the step); for `-SOCKPASS_E_BROKER_UNAVAILABLE`, why:
/// `ENOENT` or `ECONNREFUSED` (no broker there), `EACCES` (not allowed to
/// connect), `ECONNRESET`/`EPIPE` (the connection was lost), `ENOTCONN`
/// (the client's connection was closed after an earlier error, or by its
/// owner), `ECHILD` (the client was made before `fork()`: see
/// `sockpass_client`). 0 if there is none, or after a success.
#[no_mangle]
pub extern "C" fn sockpass_last_error_errno() -> c_int {
    std::panic::catch_unwind(|| LAST_ERRNO.try_with(|e| e.get()).unwrap_or(0)).unwrap_or(0)
}

/// Messages are made once per code and kept: the pointers never dangle.
static MESSAGES: Lazy<Mutex<HashMap<c_int, CString>>> = Lazy::new(|| Mutex::new(HashMap::new()));

/// The message for a code returned by any sockpass function (negative or
/// positive: the sign is ignored). The string is static: never free it, it
/// stays valid for the life of the process. Thread-safe.
#[no_mangle]
pub extern "C" fn sockpass_strerror(code: c_int) -> *const c_char {
    std::panic::catch_unwind(|| strerror(code)).unwrap_or(c"internal error (panic caught)".as_ptr())
}

fn strerror(code: c_int) -> *const c_char {
    // INT_MIN has no absolute value: it is no code, not "success".
    let Some(code) = code.checked_abs() else {
        return c"unknown error code".as_ptr();
    };
    if code >= 4096 {
        return c"unknown error code".as_ptr();
    }
    let msg = if code == SOCKPASS_E_PANIC {
        "internal error (panic caught)".to_string()
    } else {
        sockpass::code_message(code)
    };
    let mut m = MESSAGES.lock().unwrap_or_else(|p| p.into_inner());
    m.entry(code)
        .or_insert_with(|| CString::new(msg).unwrap_or_default())
        .as_ptr()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sockpass as e;

    // The header needs literals; these are the core's codes, never reused.
    #[test]
    fn codes_are_the_cores() {
        assert_eq!(SOCKPASS_E_SHARE_CONFLICT, e::CODE_SHARE_CONFLICT);
        assert_eq!(SOCKPASS_E_UNKNOWN_TOKEN, e::CODE_UNKNOWN_TOKEN);
        assert_eq!(SOCKPASS_E_LIMIT_REACHED, e::CODE_LIMIT_REACHED);
        assert_eq!(SOCKPASS_E_BROKER_UNAVAILABLE, e::CODE_BROKER_UNAVAILABLE);
        assert_eq!(SOCKPASS_E_PROTOCOL, e::CODE_PROTOCOL);
        assert_eq!(SOCKPASS_E_TOKEN_EXPIRED, e::CODE_TOKEN_EXPIRED);
        assert_eq!(SOCKPASS_E_NOT_READY, e::CODE_NOT_READY);
        assert_eq!(SOCKPASS_E_CHILD_FAILED, e::CODE_CHILD_FAILED);
    }

    #[test]
    fn strerror_is_stable_and_named() {
        let a = sockpass_strerror(-SOCKPASS_E_SHARE_CONFLICT);
        let b = sockpass_strerror(SOCKPASS_E_SHARE_CONFLICT);
        assert_eq!(a, b);
        // SAFETY: static NUL-terminated strings.
        let s = unsafe { std::ffi::CStr::from_ptr(a) };
        assert_eq!(s.to_str().unwrap(), "sharing conflict");
        // SAFETY: sockpass_strerror returns a static NUL-terminated string.
        let s = unsafe { std::ffi::CStr::from_ptr(sockpass_strerror(i32::MIN)) };
        assert_eq!(s.to_str().unwrap(), "unknown error code");
    }
}
