//! Starting a process with a planned set of fds (the core's `spawn`
//! module): a `sockpass_spawn` builder, consumed by `sockpass_spawn_start`,
//! which gives a `sockpass_child`.

use crate::boundary::{c_os_str, c_str, call, fault, opt_c_os_str, opt_c_str};
use sockpass::{CatchBind, Child, EnvBase, Slot, Spawn};
use sockpass::{Error, Kind};
use sockpass::{Namespaces, NsSet};
use std::ffi::OsStr;
use std::os::fd::BorrowedFd;
use std::os::raw::{c_char, c_int};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

/// Longest fd name (`LISTEN_FDNAMES` entry), as systemd: 255 bytes.
pub const SOCKPASS_MAX_FD_NAME: usize = 255;

/// In the `fds` of `sockpass_spawn_add_fds`: an empty slot (its number
/// stays closed in the child).
pub const SOCKPASS_SPAWN_EMPTY: c_int = -1;

/// In the `fds` of `sockpass_spawn_add_fds`: an inherit slot (the child
/// keeps whatever this process has open at the slot's number).
pub const SOCKPASS_SPAWN_INHERIT: c_int = -2;

/// A process to start: program, arguments, environment and an ordered fd
/// plan whose slots are numbered from 3 (see `sockpass_spawn_set_start`),
/// with `LISTEN_FDS`/`LISTEN_PID`/`LISTEN_FDNAMES` set as systemd socket
/// activation does. Everything is copied in; nothing runs until
/// `sockpass_spawn_start`. Thread-safe (calls are serialised), though a
/// builder is normally filled by one thread.
pub struct sockpass_spawn {
    inner: Mutex<Builder>,
}

/// The core's builder, and how many slots it has (the core keeps that
/// private; the C API returns each new slot's index).
struct Builder {
    s: Spawn,
    slots: c_int,
}

impl Builder {
    /// Count one more slot; its index.
    fn added(&mut self) -> c_int {
        self.slots += 1;
        self.slots - 1
    }
}

/// A started process. Thread-safe: calls on one child from several threads
/// are serialised (a blocking wait holds the others back).
pub struct sockpass_child {
    inner: Mutex<Child>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

unsafe fn spawn_ref<'a>(s: *mut sockpass_spawn) -> sockpass::Result<&'a sockpass_spawn> {
    s.as_ref().ok_or_else(|| fault("spawn"))
}

unsafe fn child_ref<'a>(c: *mut sockpass_child) -> sockpass::Result<&'a sockpass_child> {
    c.as_ref().ok_or_else(|| fault("child"))
}

/// A NUL-terminated byte string, at most `SOCKPASS_MAX_STRING` bytes.
unsafe fn c_bytes<'a>(p: *const c_char, what: &str) -> sockpass::Result<&'a OsStr> {
    c_os_str(p, what, crate::SOCKPASS_MAX_STRING)
}

/// An optional fd name, checked now (printable ASCII without ':').
unsafe fn fd_name<'a>(p: *const c_char) -> sockpass::Result<Option<&'a str>> {
    if p.is_null() {
        return Ok(None);
    }
    let n = c_str(p, "name", SOCKPASS_MAX_FD_NAME)?;
    sockpass::validate_name(n)?;
    Ok(Some(n))
}

/// Start describing a process running `program` (a path, or a name looked
/// up in `PATH` before the fork; argv[0] is `program` as given; borrowed).
///
/// On success writes a new builder to `*spawn_out` (pass it to
/// `sockpass_spawn_start` or free it with `sockpass_spawn_free`) and returns
/// 0. Errors: `-EFAULT`, `-ENAMETOOLONG`.
#[no_mangle]
pub unsafe extern "C" fn sockpass_spawn_new(
    program: *const c_char,
    spawn_out: *mut *mut sockpass_spawn,
) -> c_int {
    call(|| {
        let p = c_bytes(program, "program")?;
        if spawn_out.is_null() {
            return Err(fault("spawn_out"));
        }
        *spawn_out = Box::into_raw(Box::new(sockpass_spawn {
            inner: Mutex::new(Builder {
                s: Spawn::new(p),
                slots: 0,
            }),
        }));
        Ok(0)
    })
}

/// Free a builder that was not started, closing the fds it copied. NULL is
/// a no-op.
#[no_mangle]
pub unsafe extern "C" fn sockpass_spawn_free(spawn: *mut sockpass_spawn) {
    if spawn.is_null() {
        return;
    }
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        drop(Box::from_raw(spawn));
    }));
}

/// Append an argument (borrowed, copied). Returns 0. Errors: `-EFAULT`,
/// `-ENAMETOOLONG`.
#[no_mangle]
pub unsafe extern "C" fn sockpass_spawn_arg(
    spawn: *mut sockpass_spawn,
    arg: *const c_char,
) -> c_int {
    call(|| {
        let s = spawn_ref(spawn)?;
        let a = c_bytes(arg, "arg")?;
        lock(&s.inner).s.arg(a);
        Ok(0)
    })
}

/// Start the child's environment empty instead of from this process's.
/// Returns 0. Errors: `-EFAULT`.
#[no_mangle]
pub unsafe extern "C" fn sockpass_spawn_clear_env(spawn: *mut sockpass_spawn) -> c_int {
    call(|| {
        lock(&spawn_ref(spawn)?.inner).s.env_base(EnvBase::Clear);
        Ok(0)
    })
}

/// Set `key`=`value` in the child's environment (both borrowed, copied).
/// Returns 0. Errors: `-EFAULT`, `-ENAMETOOLONG`, `-EINVAL` (an empty key
/// or one containing '=').
#[no_mangle]
pub unsafe extern "C" fn sockpass_spawn_setenv(
    spawn: *mut sockpass_spawn,
    key: *const c_char,
    value: *const c_char,
) -> c_int {
    call(|| {
        let s = spawn_ref(spawn)?;
        let k = env_key(key)?;
        let v = c_bytes(value, "value")?;
        lock(&s.inner).s.setenv(k, v);
        Ok(0)
    })
}

/// Remove `key` (borrowed) from the child's environment. Returns 0.
/// Errors: as `sockpass_spawn_setenv`.
#[no_mangle]
pub unsafe extern "C" fn sockpass_spawn_unsetenv(
    spawn: *mut sockpass_spawn,
    key: *const c_char,
) -> c_int {
    call(|| {
        let s = spawn_ref(spawn)?;
        let k = env_key(key)?;
        lock(&s.inner).s.unsetenv(k);
        Ok(0)
    })
}

unsafe fn env_key<'a>(p: *const c_char) -> sockpass::Result<&'a OsStr> {
    let k = c_bytes(p, "key")?;
    if k.is_empty() || k.as_bytes().contains(&b'=') {
        return Err(Error::bad_request(format!(
            "environment name {k:?} is empty or contains '='"
        )));
    }
    Ok(k)
}

/// Append a slot passing a copy of `fd` (borrowed: duplicated now,
/// `O_CLOEXEC`, so the caller may close its fd at once), named `name`
/// (borrowed; NULL: "unknown"). Returns the slot's index (0 for the first).
/// Errors: `-EFAULT`, `-EBADF` (`fd` negative or not open), `-EINVAL` (a
/// name that is not printable ASCII without ':'; "" is a valid name),
/// `-ENAMETOOLONG` (a name over `SOCKPASS_MAX_FD_NAME`).
#[no_mangle]
pub unsafe extern "C" fn sockpass_spawn_add_fd(
    spawn: *mut sockpass_spawn,
    fd: c_int,
    name: *const c_char,
) -> c_int {
    call(|| {
        let s = spawn_ref(spawn)?;
        let name = fd_name(name)?;
        if fd < 0 {
            return Err(Error::with_errno(
                Kind::Os,
                libc::EBADF,
                format!("fd {fd} is negative"),
            ));
        }
        let mut g = lock(&s.inner);
        // SAFETY: borrowed for the dup only; a closed fd fails the dup.
        g.s.dup_fd(BorrowedFd::borrow_raw(fd), name)?;
        Ok(g.added())
    })
}

/// Append a slot whose number stays closed in the child, named `name`
/// (borrowed; NULL: "empty"). Returns the slot's index. Errors: as
/// `sockpass_spawn_add_fd` for the name.
///
/// `LISTEN_FDS` counts empty slots, so later slots keep their numbers; but
/// a libsystemd consumer rejects a set with a hole: `sd_listen_fds()`
/// returns `-EBADF` and hands over no fd at all when a number in
/// `[3, 3 + LISTEN_FDS)` is closed. Use empty slots only with programs
/// that take their fds by number.
#[no_mangle]
pub unsafe extern "C" fn sockpass_spawn_add_empty(
    spawn: *mut sockpass_spawn,
    name: *const c_char,
) -> c_int {
    call(|| {
        let s = spawn_ref(spawn)?;
        let name = fd_name(name)?.map(str::to_string);
        let mut g = lock(&s.inner);
        g.s.slot(Slot::Empty { name });
        Ok(g.added())
    })
}

/// Append a slot that keeps whatever this process has open at the slot's
/// number (named "unknown"; `FD_CLOEXEC` cleared in the child; nothing open
/// there is a hole, as an empty slot). Returns the slot's index. Errors:
/// `-EFAULT`.
#[no_mangle]
pub unsafe extern "C" fn sockpass_spawn_add_inherit(spawn: *mut sockpass_spawn) -> c_int {
    call(|| {
        let s = spawn_ref(spawn)?;
        let mut g = lock(&s.inner);
        g.s.slot(Slot::Inherit);
        Ok(g.added())
    })
}

/// Append `n_fds` slots at once, in order: `fds[i]` is a source fd
/// (borrowed: duplicated now, as `sockpass_spawn_add_fd`),
/// `SOCKPASS_SPAWN_EMPTY` (-1) for an empty slot or `SOCKPASS_SPAWN_INHERIT`
/// (-2) for an inherit slot. `names` (borrowed) is NULL or `n_fds` names,
/// each NULL for the default ("unknown", or "empty" for an empty slot); an
/// inherit slot takes no name. All or nothing: on error no slot is added.
/// Returns the index of the first slot added (the slot count when `n_fds`
/// is 0). Errors: `-EFAULT` (`fds` NULL with `n_fds` > 0), `-EBADF` (a
/// source not open, or a negative fd other than the two markers),
/// `-EINVAL` (an invalid name, or a name for an inherit slot),
/// `-ENAMETOOLONG`. See `sockpass_spawn_add_empty` on empty slots and
/// libsystemd.
#[no_mangle]
pub unsafe extern "C" fn sockpass_spawn_add_fds(
    spawn: *mut sockpass_spawn,
    fds: *const c_int,
    n_fds: std::os::raw::c_uint,
    names: *const *const c_char,
) -> c_int {
    call(|| {
        let s = spawn_ref(spawn)?;
        let n = n_fds as usize;
        if fds.is_null() && n > 0 {
            return Err(fault("fds"));
        }
        let fds: &[c_int] = if n == 0 {
            &[]
        } else {
            std::slice::from_raw_parts(fds, n)
        };
        // Check and copy everything first: a refused entry adds nothing
        // (the copies made so far close on return).
        let mut slots = Vec::with_capacity(n);
        for (i, &fd) in fds.iter().enumerate() {
            let name = if names.is_null() {
                None
            } else {
                fd_name(*names.add(i))?
            };
            slots.push(match fd {
                SOCKPASS_SPAWN_EMPTY => Slot::Empty {
                    name: name.map(str::to_string),
                },
                SOCKPASS_SPAWN_INHERIT => Slot::inherit_named(name)?,
                fd if fd < 0 => {
                    return Err(Error::with_errno(
                        Kind::Os,
                        libc::EBADF,
                        format!("fds[{i}] = {fd} is neither an fd nor a marker"),
                    ))
                }
                fd => {
                    // SAFETY: borrowed for the dup only; a closed fd fails.
                    let copy = sockpass::sys::dup_cloexec(BorrowedFd::borrow_raw(fd))
                        .map_err(|e| Error::os(e, format!("fds[{i}] = {fd} is not usable")))?;
                    Slot::Fd {
                        fd: copy,
                        name: name.map(str::to_string),
                    }
                }
            });
        }
        let mut g = lock(&s.inner);
        let first = g.slots;
        for slot in slots {
            g.s.slot(slot);
            g.added();
        }
        Ok(first)
    })
}

/// The number the first slot gets (default 3; 0 is inetd style). Returns
/// 0. Errors: `-EFAULT`, `-EINVAL` (negative).
#[no_mangle]
pub unsafe extern "C" fn sockpass_spawn_set_start(
    spawn: *mut sockpass_spawn,
    first_fd: c_int,
) -> c_int {
    call(|| {
        let s = spawn_ref(spawn)?;
        if first_fd < 0 {
            return Err(Error::bad_request(format!(
                "first fd {first_fd} is negative"
            )));
        }
        lock(&s.inner).s.start(first_fd);
        Ok(0)
    })
}

/// Whether to set `LISTEN_FDS`, `LISTEN_PID` and `LISTEN_FDNAMES` (non-zero:
/// yes, the default when there are slots). Returns 0. Errors: `-EFAULT`.
#[no_mangle]
pub unsafe extern "C" fn sockpass_spawn_set_listen_env(
    spawn: *mut sockpass_spawn,
    on: c_int,
) -> c_int {
    call(|| {
        lock(&spawn_ref(spawn)?.inner).s.listen_env(on != 0);
        Ok(0)
    })
}

/// Whether the child stops before `exec` until `sockpass_child_resume`
/// (non-zero: yes). Returns 0. Errors: `-EFAULT`.
#[no_mangle]
pub unsafe extern "C" fn sockpass_spawn_set_paused(spawn: *mut sockpass_spawn, on: c_int) -> c_int {
    call(|| {
        lock(&spawn_ref(spawn)?.inner).s.paused(on != 0);
        Ok(0)
    })
}

/// Catch the program's own `bind()` calls and answer them with sockets
/// from the broker (seccomp user notification; see `sockpass run
/// --catch-bind`). `ports` (borrowed; NULL or "": `privileged`) is
/// `privileged` (ports below `ip_unprivileged_port_start`), `inet` (every
/// non-zero port) or ports and ranges such as `53,80,8000-8099`;
/// `socket_path` (NULL: the default broker paths), `share`
/// (`SOCKPASS_SHARE_*`) and `app` (NULL or "": the executable's name) are
/// those of every request. Binds not caught, and those the broker refuses,
/// are the kernel's to judge (a log line on stderr says why). The
/// process's filter and the thread that answers it live as long as the
/// `sockpass_child`. Whether the kernel can do it, and the broker
/// connection, are checked by `sockpass_spawn_start`, which fails (and
/// starts nothing) if not. Returns 0. Errors: `-EFAULT`, `-EINVAL` (bad
/// `ports` or `share`), `-ENAMETOOLONG`.
#[no_mangle]
pub unsafe extern "C" fn sockpass_spawn_catch_bind(
    spawn: *mut sockpass_spawn,
    ports: *const c_char,
    socket_path: *const c_char,
    share: c_int,
    app: *const c_char,
) -> c_int {
    call(|| {
        let s = spawn_ref(spawn)?;
        let ports = opt_c_str(ports, "ports", crate::SOCKPASS_MAX_STRING)?.unwrap_or("");
        let mut c = CatchBind::new(ports.parse()?);
        c.socket = opt_c_os_str(socket_path, "socket_path", crate::SOCKPASS_MAX_STRING)?
            .map(PathBuf::from);
        c.share = crate::client::share_mode(share)?;
        c.app = opt_c_str(app, "app", crate::SOCKPASS_MAX_APP_NAME)?
            .unwrap_or("")
            .to_string();
        lock(&s.inner).s.catch_bind(c);
        Ok(0)
    })
}

/// Start the child inside the namespaces of process `pid`, as named by
/// `namespaces` (borrowed): a comma-separated list of `user`, `ipc`, `uts`,
/// `net`, `pid`, `cgroup`, `mnt` (or `all`); NULL: all but `user`. They are
/// opened now, so a dead `pid` fails here. A namespace `pid` shares with
/// this process is skipped (as `nsenter` does), so `all` also works for a
/// target without its own user namespace. Returns 0. Errors: `-EFAULT`,
/// `-EINVAL` (unknown name, `pid` not positive), `-ESRCH` (no such
/// process), `-EACCES`/`-EPERM` (not allowed to open them).
#[no_mangle]
pub unsafe extern "C" fn sockpass_spawn_join(
    spawn: *mut sockpass_spawn,
    pid: c_int,
    namespaces: *const c_char,
) -> c_int {
    call(|| {
        let s = spawn_ref(spawn)?;
        let set = if namespaces.is_null() {
            NsSet::default_join()
        } else {
            c_str(namespaces, "namespaces", crate::SOCKPASS_MAX_STRING)?.parse()?
        };
        let ns = Namespaces::open(pid, set)?;
        lock(&s.inner).s.join(ns);
        Ok(0)
    })
}

/// Start the process. The builder is consumed (freed, with the fds it
/// copied) whether or not this succeeds: do not use or free it again.
///
/// On success writes a new child to `*child_out` and returns its pid. An
/// error leaves no process behind. Errors: `-EFAULT` (`spawn` or
/// `child_out` NULL; a NULL `child_out` still consumes the builder),
/// `-SOCKPASS_E_CHILD_FAILED` (the child failed before `exec`;
/// `sockpass_last_error_message` names the step and errno), `-EINVAL`
/// (a NUL in an environment entry), `-EMFILE` (a start index and slot
/// count that would reach the fd limit), `-EAGAIN`/`-ENOMEM`.
#[no_mangle]
pub unsafe extern "C" fn sockpass_spawn_start(
    spawn: *mut sockpass_spawn,
    child_out: *mut *mut sockpass_child,
) -> c_int {
    call(|| {
        if spawn.is_null() {
            return Err(fault("spawn"));
        }
        let s = take_builder(spawn);
        if child_out.is_null() {
            return Err(fault("child_out"));
        }
        let c = s.spawn()?;
        let pid = c.pid();
        *child_out = Box::into_raw(Box::new(sockpass_child {
            inner: Mutex::new(c),
        }));
        Ok(pid)
    })
}

/// Take the plan out of a (non-NULL) builder, freeing the handle.
pub(crate) unsafe fn take_builder(spawn: *mut sockpass_spawn) -> Spawn {
    let s = Box::from_raw(spawn);
    s.inner.into_inner().unwrap_or_else(|p| p.into_inner()).s
}

/// Free the handle. It neither kills nor reaps a running process: wait for
/// it first (`sockpass_child_wait`), or reap it later with `waitpid(pid)`.
/// A child still paused is resumed first, as by `sockpass_child_resume`
/// (this waits until it has exec'd; an exec failure is then not reported,
/// and that child is reaped). NULL is a no-op.
#[no_mangle]
pub unsafe extern "C" fn sockpass_child_free(child: *mut sockpass_child) {
    if child.is_null() {
        return;
    }
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        drop(Box::from_raw(child));
    }));
}

/// The child's pid as this process sees it. Errors: `-EFAULT`.
#[no_mangle]
pub unsafe extern "C" fn sockpass_child_pid(child: *mut sockpass_child) -> c_int {
    call(|| Ok(lock(&child_ref(child)?.inner).pid()))
}

/// The child's pid as it sees itself (differs inside a pid namespace; its
/// `LISTEN_PID`). Errors: `-EFAULT`.
#[no_mangle]
pub unsafe extern "C" fn sockpass_child_ns_pid(child: *mut sockpass_child) -> c_int {
    call(|| Ok(lock(&child_ref(child)?.inner).ns_pid()))
}

/// Let a paused child go on to `exec` and wait until it has. Returns 0 (also
/// for a child not paused). Errors: `-EFAULT`, `-SOCKPASS_E_CHILD_FAILED`
/// (exec failed; the child is reaped).
#[no_mangle]
pub unsafe extern "C" fn sockpass_child_resume(child: *mut sockpass_child) -> c_int {
    call(|| lock(&child_ref(child)?.inner).resume().map(|()| 0))
}

/// Wait for the child to exit, at most `timeout_ms` milliseconds. Negative:
/// no limit, and a paused child is resumed first (its exec failure is then
/// this call's error, `-SOCKPASS_E_CHILD_FAILED`; waiting again gives its
/// status); with a limit a paused child stays paused (and 0 is returned).
/// Returns 1 and writes the raw wait status (`WIFEXITED`, ...) to
/// `*status_out` if it is not NULL, or 0 if the child still runs
/// (`*status_out` untouched). Waiting again after the exit gives the same
/// status. Errors: `-EFAULT`, `-ECHILD`, `-SOCKPASS_E_CHILD_FAILED`.
#[no_mangle]
pub unsafe extern "C" fn sockpass_child_wait(
    child: *mut sockpass_child,
    timeout_ms: c_int,
    status_out: *mut c_int,
) -> c_int {
    call(|| {
        let c = child_ref(child)?;
        let mut g = lock(&c.inner);
        let st = match u64::try_from(timeout_ms) {
            Err(_) => Some(g.wait()?),
            Ok(ms) => g.wait_timeout(Duration::from_millis(ms))?,
        };
        match st {
            Some(st) => {
                if let Some(out) = status_out.as_mut() {
                    *out = st;
                }
                Ok(1)
            }
            None => Ok(0),
        }
    })
}

/// Send signal `sig` to the child (a no-op once it was reaped). Returns 0.
/// Errors: `-EFAULT`, `-EINVAL` (bad signal).
#[no_mangle]
pub unsafe extern "C" fn sockpass_child_kill(child: *mut sockpass_child, sig: c_int) -> c_int {
    call(|| lock(&child_ref(child)?.inner).kill(sig).map(|()| 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn true_runs_and_exits_zero() {
        let mut s = std::ptr::null_mut();
        assert_eq!(
            // SAFETY: the C API as C calls it: pointers to live locals, handles this test owns.
            unsafe { sockpass_spawn_new(c"/bin/true".as_ptr(), &mut s) },
            0
        );
        // SAFETY: the C API as C calls it; the null pointer is one it must refuse.
        assert_eq!(unsafe { sockpass_spawn_add_empty(s, std::ptr::null()) }, 0);
        // SAFETY: the C API as C calls it: pointers to live locals, handles this test owns.
        assert_eq!(unsafe { sockpass_spawn_add_inherit(s) }, 1);
        let mut c = std::ptr::null_mut();
        // SAFETY: the C API as C calls it: pointers to live locals, handles this test owns.
        let pid = unsafe { sockpass_spawn_start(s, &mut c) };
        assert!(pid > 0);
        let mut st = -1;
        // SAFETY: the C API as C calls it: pointers to live locals, handles this test owns.
        assert_eq!(unsafe { sockpass_child_wait(c, 30_000, &mut st) }, 1);
        assert!(libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0);
        // SAFETY: frees a handle this test made, once (or null, a no-op).
        unsafe { sockpass_child_free(c) };
    }

    #[test]
    fn add_fds_is_all_or_nothing() {
        let mut s = std::ptr::null_mut();
        assert_eq!(
            // SAFETY: the C API as C calls it: pointers to live locals, handles this test owns.
            unsafe { sockpass_spawn_new(c"/bin/true".as_ptr(), &mut s) },
            0
        );
        let bad: [(&[c_int], c_int); 3] = [
            (&[0, SOCKPASS_SPAWN_EMPTY, 1_000_000], -libc::EBADF),
            (&[0, -3], -libc::EBADF),
            (&[SOCKPASS_SPAWN_INHERIT, 0], -libc::EINVAL),
        ];
        let names = [c"x".as_ptr(), std::ptr::null()];
        for (fds, want) in bad {
            let nm = if want == -libc::EINVAL {
                names.as_ptr()
            } else {
                std::ptr::null()
            };
            // SAFETY: the C API as C calls it: pointers to live locals, handles this test owns.
            let rc = unsafe { sockpass_spawn_add_fds(s, fds.as_ptr(), fds.len() as _, nm) };
            assert_eq!(rc, want, "{fds:?}");
        }
        let fds = [0, SOCKPASS_SPAWN_EMPTY, SOCKPASS_SPAWN_INHERIT];
        // SAFETY: the C API as C calls it; the null pointer is one it must refuse.
        let rc = unsafe { sockpass_spawn_add_fds(s, fds.as_ptr(), 3, std::ptr::null()) };
        assert_eq!(rc, 0, "nothing was added by the refused calls");
        // SAFETY: the C API as C calls it: pointers to live locals, handles this test owns.
        assert_eq!(unsafe { sockpass_spawn_add_inherit(s) }, 3);
        assert_eq!(
            // SAFETY: the C API as C calls it; the null pointer is one it must refuse.
            unsafe { sockpass_spawn_add_fds(s, std::ptr::null(), 0, std::ptr::null()) },
            4
        );
        assert_eq!(
            // SAFETY: the C API as C calls it; the null pointer is one it must refuse.
            unsafe { sockpass_spawn_add_fds(s, std::ptr::null(), 1, std::ptr::null()) },
            -libc::EFAULT
        );
        // SAFETY: frees a handle this test made, once (or null, a no-op).
        unsafe { sockpass_spawn_free(s) };
    }

    #[test]
    fn bad_input_gets_its_code() {
        let mut s = std::ptr::null_mut();
        assert_eq!(
            // SAFETY: the C API as C calls it; the null pointer is one it must refuse.
            unsafe { sockpass_spawn_new(std::ptr::null(), &mut s) },
            -libc::EFAULT
        );
        assert!(s.is_null());
        assert_eq!(
            // SAFETY: the C API as C calls it: pointers to live locals, handles this test owns.
            unsafe { sockpass_spawn_new(c"/bin/true".as_ptr(), &mut s) },
            0
        );
        let bad: [(&std::ffi::CStr, c_int); 3] = [
            (c"a:b", -libc::EINVAL),
            (c"tab\there", -libc::EINVAL),
            (c"\x7f", -libc::EINVAL),
        ];
        for (name, want) in bad {
            // SAFETY: the C API as C calls it: pointers to live locals, handles this test owns.
            assert_eq!(unsafe { sockpass_spawn_add_fd(s, 0, name.as_ptr()) }, want);
        }
        assert_eq!(
            // SAFETY: the C API as C calls it; the null pointer is one it must refuse.
            unsafe { sockpass_spawn_add_fd(s, -1, std::ptr::null()) },
            -libc::EBADF
        );
        // SAFETY: the C API as C calls it: pointers to live locals, handles this test owns.
        assert_eq!(unsafe { sockpass_spawn_set_start(s, -3) }, -libc::EINVAL);
        assert_eq!(
            // SAFETY: the C API as C calls it: pointers to live locals, handles this test owns.
            unsafe { sockpass_spawn_setenv(s, c"K=V".as_ptr(), c"v".as_ptr()) },
            -libc::EINVAL
        );
        assert_eq!(
            // SAFETY: the C API as C calls it; the null pointer is one it must refuse.
            unsafe { sockpass_spawn_join(s, -1, std::ptr::null()) },
            -libc::EINVAL
        );
        // SAFETY: the C API as C calls it: pointers to live locals, handles this test owns.
        assert_eq!(unsafe { sockpass_spawn_add_fd(s, 0, c"ok".as_ptr()) }, 0);
        // SAFETY: frees a handle this test made, once (or null, a no-op).
        unsafe { sockpass_spawn_free(s) };
        let mut c = std::ptr::null_mut();
        assert_eq!(
            // SAFETY: the C API as C calls it; the null pointer is one it must refuse.
            unsafe { sockpass_spawn_start(std::ptr::null_mut(), &mut c) },
            -libc::EFAULT
        );
        assert_eq!(
            // SAFETY: the C API as C calls it; the null pointer is one it must refuse.
            unsafe { sockpass_child_wait(c, 0, std::ptr::null_mut()) },
            -libc::EFAULT
        );
    }
}
