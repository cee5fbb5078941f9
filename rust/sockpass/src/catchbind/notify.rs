//! The seccomp notification ioctls on a listener fd: receive a caught
//! call, check it is still pending, add an fd to the caller, answer.

use crate::sys::errno;
use std::os::fd::{AsFd, AsRawFd, RawFd};

/// One caught call, as the kernel describes it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Notif {
    pub id: u64,
    /// The calling thread, in our pid namespace.
    pub pid: u32,
    pub nr: i32,
    pub args: [u64; 6],
}

fn ioctl(fd: &impl AsFd, req: libc::Ioctl, arg: *mut libc::c_void) -> Result<(), i32> {
    // SAFETY: every caller passes the struct `req` expects.
    let r = unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), req, arg) };
    if r < 0 {
        Err(errno())
    } else {
        Ok(())
    }
}

/// Receive the next notification into `buf` (at least the kernel's
/// `struct seccomp_notif` size, zeroed here as the kernel requires).
pub(crate) fn recv(listener: &impl AsFd, buf: &mut [u64]) -> Result<Notif, i32> {
    buf.fill(0);
    ioctl(
        listener,
        libc::SECCOMP_IOCTL_NOTIF_RECV,
        buf.as_mut_ptr().cast(),
    )?;
    // SAFETY: buf is at least as large as seccomp_notif and 8-aligned; the
    // kernel filled it.
    let n = unsafe { &*(buf.as_ptr() as *const libc::seccomp_notif) };
    Ok(Notif {
        id: n.id,
        pid: n.pid,
        nr: n.data.nr,
        args: n.data.args,
    })
}

/// Is the notification still pending (its caller alive and waiting)?
/// Checked after reading the caller's memory or opening its pidfd: the pid
/// could have been reused by then.
pub(crate) fn id_valid(listener: &impl AsFd, id: u64) -> bool {
    let mut id = id;
    ioctl(
        listener,
        libc::SECCOMP_IOCTL_NOTIF_ID_VALID,
        (&mut id as *mut u64).cast(),
    )
    .is_ok()
}

/// Put our `src` at number `target` in the caller's fd table (replacing
/// what is there, as dup2), with `O_CLOEXEC` if `cloexec`.
pub(crate) fn addfd(
    listener: &impl AsFd,
    id: u64,
    src: RawFd,
    target: RawFd,
    cloexec: bool,
) -> Result<(), i32> {
    let mut a = libc::seccomp_notif_addfd {
        id,
        flags: libc::SECCOMP_ADDFD_FLAG_SETFD as u32,
        srcfd: src as u32,
        newfd: target as u32,
        newfd_flags: if cloexec { libc::O_CLOEXEC as u32 } else { 0 },
    };
    ioctl(
        listener,
        libc::SECCOMP_IOCTL_NOTIF_ADDFD,
        (&mut a as *mut libc::seccomp_notif_addfd).cast(),
    )
}

/// How a caught call ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    /// The call returns 0 (the socket is in place).
    Done,
    /// The call fails with this errno.
    Fail(i32),
    /// The kernel runs the call as if nothing had caught it.
    Continue,
}

pub(crate) fn respond(listener: &impl AsFd, id: u64, a: Answer) -> Result<(), i32> {
    let (error, flags) = match a {
        Answer::Done => (0, 0),
        Answer::Fail(e) => (-e, 0),
        Answer::Continue => (0, libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32),
    };
    let mut r = libc::seccomp_notif_resp {
        id,
        val: 0,
        error,
        flags,
    };
    ioctl(
        listener,
        libc::SECCOMP_IOCTL_NOTIF_SEND,
        (&mut r as *mut libc::seccomp_notif_resp).cast(),
    )
}
