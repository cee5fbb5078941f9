//! Closing the fds a spawned child must not inherit, between fork and exec.

use crate::sys::errno;
use std::os::fd::RawFd;

/// Close every fd in `lo..=hi` except `skip`, with close_range where the
/// kernel has it, else one by one up to the fd limit. Async-signal-safe.
pub(super) fn close_between(
    lo: RawFd,
    hi: RawFd,
    skip: [RawFd; 2],
    limit: RawFd,
) -> std::result::Result<(), i32> {
    let (a, b) = if skip[0] < skip[1] {
        (skip[0], skip[1])
    } else {
        (skip[1], skip[0])
    };
    let mut from = lo;
    for s in [a, b, RawFd::MAX] {
        let to = if s == RawFd::MAX { hi } else { hi.min(s - 1) };
        if s != RawFd::MAX && (s < from || s > hi) {
            continue;
        }
        if to >= from {
            close_range(from, to, limit)?;
        }
        if s == RawFd::MAX {
            break;
        }
        from = s + 1;
    }
    Ok(())
}

fn close_range(lo: RawFd, hi: RawFd, limit: RawFd) -> std::result::Result<(), i32> {
    // SAFETY: close_range only closes fds; the caller keeps what it needs.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            lo as libc::c_uint,
            hi as libc::c_uint,
            0 as libc::c_uint,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let e = errno();
    if e != libc::ENOSYS {
        return Err(e);
    }
    let end = hi.min(limit.saturating_sub(1));
    let mut fd = lo;
    while fd <= end {
        // SAFETY: closing numbers the plan does not keep.
        unsafe { libc::close(fd) };
        fd += 1;
    }
    Ok(())
}
