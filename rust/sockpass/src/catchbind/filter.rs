//! The seccomp filter that turns `bind()` into a notification, checking
//! first that the kernel can do what `--catch-bind` needs, and installing
//! it in a forked child before `exec`.
//!
//! The program is six classic BPF instructions, written here by hand: no
//! well-kept Rust crate builds filters with `SECCOMP_RET_USER_NOTIF` and
//! `SECCOMP_IOCTL_NOTIF_ADDFD` without a dependency on the C libseccomp
//! (seccompiler has no user-notification action; the libseccomp crate
//! links the C library), and six instructions are easier to check than a
//! dependency.
//!
//! Only the native ABI's `bind` is sent to the supervisor. Another
//! architecture (i386's `socketcall`/`bind` in a 64-bit process) and the
//! x32 ABI (`nr` with bit 0x40000000) are allowed: the kernel judges them
//! as it would without sockpass, so a miss never grants anything.

use crate::error::{Error, Kind, Result};
use crate::sys::errno;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E; // AUDIT_ARCH_X86_64
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7; // AUDIT_ARCH_AARCH64

/// `offsetof(struct seccomp_data, nr)` and `arch`.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;

const fn stmt(code: u32, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

const fn jeq(k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt,
        jf,
        k,
    }
}

const LD_ABS: u32 = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
const RET: u32 = libc::BPF_RET | libc::BPF_K;

/// arch == native ? (nr == bind ? USER_NOTIF : ALLOW) : ALLOW.
const PROGRAM: [libc::sock_filter; 6] = [
    stmt(LD_ABS, OFF_ARCH),
    jeq(AUDIT_ARCH, 0, 3),
    stmt(LD_ABS, OFF_NR),
    jeq(libc::SYS_bind as u32, 0, 1),
    stmt(RET, libc::SECCOMP_RET_USER_NOTIF),
    stmt(RET, libc::SECCOMP_RET_ALLOW),
];

/// `seccomp(2)`.
///
/// # Safety
/// `args` must be what `op` expects.
unsafe fn seccomp(op: libc::c_uint, flags: libc::c_ulong, args: *const libc::c_void) -> i64 {
    // SAFETY: the caller passes what `op` expects.
    unsafe { libc::syscall(libc::SYS_seccomp, op, flags, args) }
}

/// Install a filter with `flags` on the calling thread; the listener fd.
/// Async-signal-safe.
///
/// # Safety
/// Filters the calling thread for the rest of its life.
unsafe fn install(
    prog: &[libc::sock_filter],
    flags: libc::c_ulong,
) -> std::result::Result<RawFd, i32> {
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    let try_flags = |f| {
        // SAFETY: a valid sock_fprog on a live array.
        let r = unsafe {
            seccomp(
                libc::SECCOMP_SET_MODE_FILTER,
                f,
                (&fprog as *const libc::sock_fprog).cast(),
            )
        };
        if r < 0 {
            Err(errno())
        } else {
            Ok(r as RawFd)
        }
    };
    // Without CAP_SYS_ADMIN the kernel wants no_new_privs; a root
    // supervisor spares its program that (setuid helpers keep working).
    let mut r = try_flags(flags);
    if r == Err(libc::EACCES) {
        // SAFETY: prctl on the calling thread.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(errno());
        }
        r = try_flags(flags);
    }
    r
}

/// Received notifications wait killably: a non-fatal signal (the
/// program's SIGCHLD, a timer) no longer interrupts a bind the supervisor
/// is answering, which would leave the fd replaced and the bind failed.
/// Linux 5.19; without it the filter is installed as before.
const FLAGS: libc::c_ulong =
    libc::SECCOMP_FILTER_FLAG_NEW_LISTENER | libc::SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV;

/// In a forked child, before exec: install the bind filter and send its
/// listener to the parent over `chan` (a unix socket), then close ours.
/// Only async-signal-safe calls, on constants and the stack.
///
/// # Safety
/// Call only in a forked child about to exec: it filters the process.
pub(crate) unsafe fn install_and_send(chan: RawFd) -> std::result::Result<(), i32> {
    // SAFETY: in the child, as the caller promises.
    let fd = match unsafe { install(&PROGRAM, FLAGS) } {
        // SAFETY: as above. Before Linux 5.19 the killable wait is unknown.
        Err(libc::EINVAL) => unsafe { install(&PROGRAM, libc::SECCOMP_FILTER_FLAG_NEW_LISTENER) }?,
        r => r?,
    };
    #[repr(C)]
    struct Cmsg {
        hdr: libc::cmsghdr,
        fd: RawFd,
        pad: i32,
    }
    // SAFETY: all-zero is a valid msghdr and cmsghdr.
    let mut cm: Cmsg = unsafe { std::mem::zeroed() };
    cm.hdr.cmsg_len = (std::mem::size_of::<libc::cmsghdr>() + 4) as _;
    cm.hdr.cmsg_level = libc::SOL_SOCKET;
    cm.hdr.cmsg_type = libc::SCM_RIGHTS;
    cm.fd = fd;
    let mut byte = [b'L'];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // SAFETY: as above.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = (&mut cm as *mut Cmsg).cast();
    msg.msg_controllen = std::mem::size_of::<Cmsg>() as _;
    // SAFETY: sendmsg on stack buffers; close our copy of the listener.
    let r = unsafe { libc::sendmsg(chan, &msg, libc::MSG_NOSIGNAL) };
    let e = errno();
    // SAFETY: the listener is ours and not used after.
    unsafe { libc::close(fd) };
    if r != 1 {
        return Err(if r < 0 { e } else { libc::EPIPE });
    }
    Ok(())
}

/// Check, before any program starts, that this kernel and this process can
/// catch binds: seccomp user notification with `SECCOMP_IOCTL_NOTIF_ADDFD`
/// (Linux 5.9), `seccomp()` allowed (a container's own filter may forbid
/// it), and no listener already on our filters. Returns the size of
/// `struct seccomp_notif` the kernel writes. A success is kept for the
/// process: the kernel does not change, and a restart loop need not pay a
/// thread and a filter each time (should a listener appear on our filters
/// later, the child's install fails, and nothing starts). A failure is
/// probed again next time.
pub(crate) fn probe() -> Result<usize> {
    static DONE: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    if let Some(&n) = DONE.get() {
        return Ok(n);
    }
    let n = probe_now()?;
    Ok(*DONE.get_or_init(|| n))
}

fn probe_now() -> Result<usize> {
    let cannot = |e: i32, why: &str| {
        Error::with_errno(
            Kind::Os,
            e,
            format!(
                "--catch-bind cannot work here: {why} ({})",
                crate::error::strerror(e)
            ),
        )
    };
    // SAFETY: all-zero is a valid seccomp_notif_sizes to fill.
    let mut sizes: libc::seccomp_notif_sizes = unsafe { std::mem::zeroed() };
    // SAFETY: GET_NOTIF_SIZES writes the struct.
    if unsafe {
        seccomp(
            libc::SECCOMP_GET_NOTIF_SIZES,
            0,
            (&mut sizes as *mut libc::seccomp_notif_sizes).cast(),
        )
    } < 0
    {
        let e = errno();
        return Err(match e {
            libc::ENOSYS => cannot(e, "the kernel has no seccomp() (or a filter forbids it)"),
            libc::EINVAL => cannot(e, "the kernel has no seccomp user notification (Linux 5.0)"),
            _ => cannot(e, "seccomp() is refused (a container's seccomp policy?)"),
        });
    }
    let action = libc::SECCOMP_RET_USER_NOTIF;
    // SAFETY: GET_ACTION_AVAIL reads a u32.
    if unsafe {
        seccomp(
            libc::SECCOMP_GET_ACTION_AVAIL,
            0,
            (&action as *const u32).cast(),
        )
    } < 0
    {
        return Err(cannot(
            errno(),
            "the kernel does not offer SECCOMP_RET_USER_NOTIF",
        ));
    }
    // Try the whole mechanism on a thread of its own (filters and
    // no_new_privs are per thread, and it ends at once): install an
    // allow-all filter with a listener and ask for ADDFD on a notification
    // that does not exist, which a kernel with ADDFD answers ENOENT.
    let allow = [stmt(RET, libc::SECCOMP_RET_ALLOW)];
    // SAFETY: filters this short-lived thread only.
    let tried = super::supervisor::spawn_blocked("sockpass-probe", move || unsafe {
        install(&allow, libc::SECCOMP_FILTER_FLAG_NEW_LISTENER)
    })?
    .join()
    .unwrap_or(Err(libc::EIO));
    let listener = match tried {
        // SAFETY: seccomp returned a new fd, ours now.
        Ok(fd) => unsafe { OwnedFd::from_raw_fd(fd) },
        Err(libc::EBUSY) => {
            return Err(cannot(
                libc::EBUSY,
                "this process already runs under a seccomp filter with a listener (a \
                 --catch-bind inside another?)",
            ))
        }
        Err(e) => {
            return Err(cannot(
                e,
                "installing a seccomp filter with a listener failed",
            ))
        }
    };
    let src = std::os::fd::AsRawFd::as_raw_fd(&listener);
    if let Err(e) = super::notify::addfd(&listener, 0, src, 0, false) {
        if e != libc::ENOENT {
            return Err(cannot(
                e,
                "the kernel has no SECCOMP_IOCTL_NOTIF_ADDFD (Linux 5.9)",
            ));
        }
    }
    Ok((sizes.seccomp_notif as usize).max(std::mem::size_of::<libc::seccomp_notif>()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn jumps_land_on_the_returns() {
        let p = super::PROGRAM;
        // Not native: skip 3 to ALLOW; not bind: skip 1 to ALLOW.
        assert_eq!(1 + 1 + p[1].jf as usize, 5);
        assert_eq!(3 + 1 + p[3].jf as usize, 5);
        assert_eq!(p[5].k, libc::SECCOMP_RET_ALLOW);
        assert_eq!(p[4].k, libc::SECCOMP_RET_USER_NOTIF);
    }
}
