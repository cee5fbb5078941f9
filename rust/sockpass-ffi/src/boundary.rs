//! The panic boundary and argument translation shared by every exported
//! function: C strings and pointers in, `int` results out.

use crate::errors::{set_last_error, set_last_error_errno, SOCKPASS_E_PANIC};
use sockpass::{Error, Kind};
use std::ffi::OsStr;
use std::os::raw::{c_char, c_int};
use std::os::unix::ffi::OsStrExt;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Run `f`, turning its error into `-code` (and this thread's last error)
/// and a panic into `-SOCKPASS_E_PANIC`.
pub(crate) fn call(f: impl FnOnce() -> sockpass::Result<c_int>) -> c_int {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => {
            set_last_error(None);
            v
        }
        Ok(Err(e)) => {
            let code = e.code();
            set_last_error_errno(Some(e.message()), e.errno().max(0));
            -code
        }
        Err(_) => {
            set_last_error(Some("internal error: a panic was caught at the C boundary"));
            -SOCKPASS_E_PANIC
        }
    }
}

#[cold]
pub(crate) fn fault(what: &str) -> Error {
    Error::with_errno(Kind::Os, libc::EFAULT, format!("{what} is NULL"))
}

/// A NUL-terminated string of at most `max` bytes, as UTF-8.
#[link_section = ".text.hot.sockpass"]
pub(crate) unsafe fn c_str<'a>(
    p: *const c_char,
    what: &str,
    max: usize,
) -> sockpass::Result<&'a str> {
    let b = c_bytes(p, what, max)?;
    // Addresses and names are ASCII, which is UTF-8: one pass over a short
    // string, not the decoder's (half the cost of a request's two strings).
    if b.is_ascii() {
        // SAFETY: ASCII bytes are valid UTF-8.
        return Ok(std::str::from_utf8_unchecked(b));
    }
    utf8(b, what)
}

/// [`c_str`]'s bytes that are not all ASCII, checked as UTF-8 (out of line:
/// addresses and names are ASCII).
#[cold]
fn utf8<'a>(b: &'a [u8], what: &str) -> sockpass::Result<&'a str> {
    std::str::from_utf8(b).map_err(|_| Error::bad_request(format!("{what} is not UTF-8")))
}

/// A NUL-terminated string of at most `max` bytes, as bytes (for inputs
/// the core checks byte by byte anyway, such as tokens).
#[link_section = ".text.hot.sockpass"]
pub(crate) unsafe fn c_bytes<'a>(
    p: *const c_char,
    what: &str,
    max: usize,
) -> sockpass::Result<&'a [u8]> {
    if p.is_null() {
        return Err(fault(what));
    }
    // The NUL within max + 1 bytes. The first 16 by a loop kept inline:
    // addresses and names are that short, and libc's strnlen is one more
    // code page for a request to touch (a cold one when many client
    // processes share a CPU); longer strings (specs, paths) by strnlen.
    const INLINE: usize = 16;
    let inline_end = (max + 1).min(INLINE);
    let mut n = 0;
    // SAFETY: p is NUL-terminated (the caller's promise): every byte up to
    // and including the NUL is readable, and the loop stops at the NUL.
    while n < inline_end && unsafe { *p.add(n) } != 0 {
        n += 1;
    }
    if n == inline_end && n <= max {
        // SAFETY: as above; the NUL is further on.
        n += unsafe { libc::strnlen(p.add(n), max + 1 - n) };
    }
    if n > max {
        return Err(too_long(what, max));
    }
    // The NUL is at n: no second strlen.
    Ok(std::slice::from_raw_parts(p.cast::<u8>(), n))
}

#[cold]
fn too_long(what: &str, max: usize) -> Error {
    Error::with_errno(
        Kind::Os,
        libc::ENAMETOOLONG,
        format!("{what} is longer than {max} bytes (or not NUL-terminated)"),
    )
}

/// A NUL-terminated byte string of at most `max` bytes, not necessarily
/// UTF-8: paths, arguments and environment are bytes.
pub(crate) unsafe fn c_os_str<'a>(
    p: *const c_char,
    what: &str,
    max: usize,
) -> sockpass::Result<&'a OsStr> {
    c_bytes(p, what, max).map(OsStr::from_bytes)
}

/// Like [`c_os_str`], with NULL meaning "none".
pub(crate) unsafe fn opt_c_os_str<'a>(
    p: *const c_char,
    what: &str,
    max: usize,
) -> sockpass::Result<Option<&'a OsStr>> {
    unless_null(p, || c_os_str(p, what, max))
}

/// Like [`c_str`], with NULL meaning "none".
pub(crate) unsafe fn opt_c_str<'a>(
    p: *const c_char,
    what: &str,
    max: usize,
) -> sockpass::Result<Option<&'a str>> {
    unless_null(p, || c_str(p, what, max))
}

fn unless_null<T>(
    p: *const c_char,
    f: impl FnOnce() -> sockpass::Result<T>,
) -> sockpass::Result<Option<T>> {
    if p.is_null() {
        Ok(None)
    } else {
        f().map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The boundary needs unwinding, which the workspace profile keeps
    // (panic = "unwind"): an abort profile fails the build of this test.
    const _: () = assert!(cfg!(panic = "unwind"));

    #[test]
    fn c_str_takes_utf8_and_refuses_the_rest() {
        let ok = |b: &[u8]| {
            let c = std::ffi::CString::new(b).unwrap();
            // SAFETY: c is a NUL-terminated string that outlives the call.
            unsafe { c_str(c.as_ptr(), "name", 64).map(str::to_owned) }
        };
        assert_eq!(ok(b"127.0.0.1").unwrap(), "127.0.0.1");
        assert_eq!(ok("caf\u{e9}".as_bytes()).unwrap(), "caf\u{e9}");
        let e = ok(b"\xff\xfe").unwrap_err();
        assert_eq!(e.kind(), sockpass::Kind::BadRequest);
        assert!(e.message().contains("name is not UTF-8"), "{e}");
        assert_eq!(ok(&[b'a'; 65]).unwrap_err().errno(), libc::ENAMETOOLONG);
        // Around the 16 bytes looked at inline, and the limit among them.
        for n in [15, 16, 17, 64] {
            assert_eq!(ok(&vec![b'a'; n]).unwrap().len(), n);
        }
        let short = |b: &[u8], max| {
            let c = std::ffi::CString::new(b).unwrap();
            // SAFETY: c is a NUL-terminated string that outlives the call.
            unsafe { c_str(c.as_ptr(), "name", max).map(str::len) }
        };
        assert_eq!(short(&[b'a'; 15], 15).unwrap(), 15);
        assert_eq!(
            short(&[b'a'; 16], 15).unwrap_err().errno(),
            libc::ENAMETOOLONG
        );
        assert_eq!(short(&[b'a'; 16], 16).unwrap(), 16);
        assert_eq!(
            short(&[b'a'; 17], 16).unwrap_err().errno(),
            libc::ENAMETOOLONG
        );
    }

    /// A panic inside an exported function's body is an error code and a
    /// message, never an abort.
    #[test]
    fn a_panic_becomes_an_error_code() {
        let quiet = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let r = call(|| panic!("boom"));
        std::panic::set_hook(quiet);
        assert_eq!(r, -SOCKPASS_E_PANIC);
        // SAFETY: the last error is a NUL-terminated string owned by this thread.
        let msg = unsafe { std::ffi::CStr::from_ptr(crate::errors::sockpass_last_error_message()) };
        assert!(msg.to_str().unwrap().contains("panic"), "{msg:?}");
        // The next successful call clears it.
        assert_eq!(call(|| Ok(7)), 7);
        // SAFETY: as above.
        let msg = unsafe { std::ffi::CStr::from_ptr(crate::errors::sockpass_last_error_message()) };
        assert_eq!(msg.to_bytes(), b"");
    }

    /// A success leaves "" and errno 0 in its thread: before any error was
    /// recorded (the thread-locals are not touched then), and after one, in
    /// this thread or another.
    #[test]
    fn a_success_clears_the_last_error_of_its_thread() {
        use crate::errors::{sockpass_last_error_errno, sockpass_last_error_message};
        let last = || {
            // SAFETY: the last error is a NUL-terminated string owned by this thread.
            let m = unsafe { std::ffi::CStr::from_ptr(sockpass_last_error_message()) };
            (
                m.to_string_lossy().into_owned(),
                sockpass_last_error_errno(),
            )
        };
        let fail = || call(|| Err(Error::with_errno(Kind::Os, libc::EBADF, "bad fd")));
        std::thread::scope(|s| {
            s.spawn(|| {
                assert_eq!(call(|| Ok(1)), 1);
                assert_eq!(last(), (String::new(), 0));
                assert!(fail() < 0);
                assert_eq!(last(), ("bad fd".to_owned(), libc::EBADF));
                assert_eq!(call(|| Ok(2)), 2);
                assert_eq!(last(), (String::new(), 0));
            })
            .join()
            .unwrap();
            // Another thread, after an error was recorded elsewhere.
            s.spawn(|| {
                assert_eq!(last(), (String::new(), 0));
                assert!(fail() < 0);
                assert_eq!(call(|| Ok(3)), 3);
                assert_eq!(last(), (String::new(), 0));
            });
        });
    }
}
