//! The one way this project forks, and the waits that go with it.
//!
//! [`fork`] blocks every signal across `fork(2)`, so no handler of the
//! parent runs in the child before the child has reset the handled signals
//! to `SIG_DFL` (as `posix_spawn` with `POSIX_SPAWN_SETSIGDEF` does;
//! ignored ones stay ignored, except `SIGPIPE`, which Rust's runtime
//! ignores and an exec'd program expects at its default). Only then does
//! the child set its mask ([`ChildMask`]) and run the caller's code. The
//! parent's mask is restored right after the fork.
//!
//! The child of a multithreaded parent may only make async-signal-safe
//! calls on memory prepared before the fork (no allocation, no locks, no
//! `std` I/O) and must end in `_exit` or `execve`: [`fork`] is `unsafe` for
//! that contract, which every caller states where it forks.

use crate::error::{Error, Result};
use crate::sys::errno;

/// The signal mask the child runs with once its handlers are reset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChildMask {
    /// The mask the parent had before the fork.
    Parent,
    /// Nothing blocked: what a program started by exec should see.
    Empty,
}

/// Fork with every signal blocked. In the parent, the child's pid. In the
/// child, `child` runs with the handled signals reset to `SIG_DFL` and the
/// mask set as `mask` says; it gets `Err(errno)` if that failed (it should
/// report it and `_exit`), and it never returns.
///
/// # Safety
/// `child` runs in the forked child: only async-signal-safe calls on data
/// prepared before the fork, unless the process is known to have one
/// thread; it must end with `_exit` or `execve`.
pub unsafe fn fork<F>(mask: ChildMask, child: F) -> Result<i32>
where
    F: FnOnce(std::result::Result<(), i32>) -> std::convert::Infallible,
{
    // Prepared before the fork: the child only reads them.
    // SAFETY: all-zero is a valid sigset_t and sigaction; sigfillset and
    // sigemptyset initialise them.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut empty: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above; SIG_DFL with no flags and an empty mask.
    let mut default_action: libc::sigaction = unsafe { std::mem::zeroed() };
    default_action.sa_sigaction = libc::SIG_DFL;
    // SAFETY: each call initialises a local set; pthread_sigmask changes
    // only this thread's mask, restored below in the parent.
    unsafe {
        libc::sigfillset(&mut all);
        libc::sigemptyset(&mut empty);
        libc::sigemptyset(&mut default_action.sa_mask);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
    }
    // SAFETY: the child only runs `reset_signals` (async-signal-safe, on the
    // locals above) and then `child`, whose contract the caller keeps.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let want = match mask {
            ChildMask::Parent => &old,
            ChildMask::Empty => &empty,
        };
        // SAFETY: in the child, on data prepared before the fork.
        let r = unsafe { reset_signals(&default_action, want) };
        // Infallible: `child` never returns.
        child(r);
    }
    let fork_errno = errno();
    // SAFETY: restores the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    if pid < 0 {
        return Err(Error::os(fork_errno, "fork"));
    }
    Ok(pid)
}

/// In a child forked with every signal blocked: reset each handled signal
/// to `SIG_DFL`, then set the mask to `mask`. Async-signal-safe.
///
/// # Safety
/// Call only in a freshly forked child, with every signal blocked.
unsafe fn reset_signals(
    default_action: &libc::sigaction,
    mask: &libc::sigset_t,
) -> std::result::Result<(), i32> {
    // 1..65 is every Linux signal; glibc's internal ones give EINVAL and
    // are skipped.
    for sig in 1..65 {
        // SAFETY: all-zero is a valid sigaction to read into.
        let mut cur: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: sigaction reads and writes the valid structs given.
        unsafe {
            if libc::sigaction(sig, std::ptr::null(), &mut cur) == 0
                && cur.sa_sigaction != libc::SIG_DFL
                && (cur.sa_sigaction != libc::SIG_IGN || sig == libc::SIGPIPE)
                && libc::sigaction(sig, default_action, std::ptr::null_mut()) != 0
            {
                return Err(errno());
            }
        }
    }
    // SAFETY: mask is a valid, initialised set.
    if unsafe { libc::sigprocmask(libc::SIG_SETMASK, mask, std::ptr::null_mut()) } != 0 {
        return Err(errno());
    }
    Ok(())
}

/// `waitpid(pid, flags)`, retried on `EINTR`: `Some(status)` once it has
/// exited, `None` under `WNOHANG` while it runs, else the errno.
pub fn wait_pid(pid: i32, flags: i32) -> std::result::Result<Option<i32>, i32> {
    let mut st = 0;
    loop {
        // SAFETY: waitpid writes the status into a local.
        let r = unsafe { libc::waitpid(pid, &mut st, flags) };
        if r == pid {
            return Ok(Some(st));
        }
        if r == 0 {
            return Ok(None);
        }
        let e = errno();
        if e != libc::EINTR {
            return Err(e);
        }
    }
}

/// Wait until `pid` (our child) has exited; its raw wait status.
pub fn reap(pid: i32) -> Result<i32> {
    match wait_pid(pid, 0) {
        Ok(Some(st)) => Ok(st),
        Ok(None) => Err(Error::os(libc::ECHILD, format!("waitpid {pid}"))),
        Err(e) => Err(Error::os(e, format!("waitpid {pid}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_runs_with_default_handlers_and_the_chosen_mask() {
        // SIGUSR1 handled here; in the child it must be back at SIG_DFL.
        extern "C" fn h(_: libc::c_int) {}
        // SAFETY: installs a no-op handler for SIGUSR1 in the test process.
        unsafe { libc::signal(libc::SIGUSR1, h as *const () as libc::sighandler_t) };
        // SAFETY: the child only calls sigaction/sigprocmask and _exit.
        let pid = unsafe {
            fork(ChildMask::Empty, |r| {
                let mut cur: libc::sigaction = std::mem::zeroed();
                let mut m: libc::sigset_t = std::mem::zeroed();
                libc::sigaction(libc::SIGUSR1, std::ptr::null(), &mut cur);
                libc::sigprocmask(libc::SIG_SETMASK, std::ptr::null(), &mut m);
                let ok = r.is_ok()
                    && cur.sa_sigaction == libc::SIG_DFL
                    && libc::sigismember(&m, libc::SIGTERM) == 0;
                libc::_exit(if ok { 0 } else { 1 })
            })
        }
        .unwrap();
        let st = reap(pid).unwrap();
        assert!(libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0, "{st}");
        // SAFETY: restores the default for SIGUSR1.
        unsafe { libc::signal(libc::SIGUSR1, libc::SIG_DFL) };
        assert_eq!(wait_pid(pid, libc::WNOHANG), Err(libc::ECHILD));
    }
}
