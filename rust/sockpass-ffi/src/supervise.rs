//! Supervising one program across restarts (the core's `supervise`
//! module): a `sockpass_supervisor` starts a `sockpass_spawn` plan as its
//! first instance and restarts it with old and new instance overlapping on
//! the same fds.

use crate::boundary::{c_str, call, fault};
use crate::spawn::sockpass_spawn;
use sockpass::{Error, Kind, Method, SuperviseOptions, Supervisor};
use std::os::raw::{c_char, c_int};
use std::sync::Mutex;
use std::time::Duration;

/// A supervised program: the recipe (a `sockpass_spawn` plan and the fds
/// it holds), the readiness method and the current instance. Thread-safe:
/// calls are serialised (a blocking restart or wait holds the others back).
pub struct sockpass_supervisor {
    inner: Mutex<State>,
}

struct State {
    sup: Supervisor,
    /// The raw wait status of the last failed restart's new instance.
    failed_status: Option<i32>,
}

fn lock(s: &sockpass_supervisor) -> std::sync::MutexGuard<'_, State> {
    s.inner.lock().unwrap_or_else(|p| p.into_inner())
}

unsafe fn sup_ref<'a>(s: *mut sockpass_supervisor) -> sockpass::Result<&'a sockpass_supervisor> {
    s.as_ref().ok_or_else(|| fault("supervisor"))
}

fn ms(v: c_int) -> Option<Duration> {
    u64::try_from(v).ok().map(Duration::from_millis)
}

/// Start the first instance of `spawn` (consumed, freed with its fds
/// whether or not this succeeds) under a supervisor. `ready_method` is
/// `"notify"`, `"pipe"` or `"fd:N"` (each instance gets its own channel,
/// as `sockpass_readiness_new` makes), or NULL: a new instance alive
/// through the grace period counts as ready. Defaults: ready timeout 60 s,
/// grace 1 s, stop signal `SIGTERM`, drain timeout 30 s (see
/// `sockpass_supervisor_set_timeouts`).
///
/// On success writes a new supervisor to `*supervisor_out` and returns the
/// first instance's pid. Errors: `-EFAULT`, `-EINVAL` (unknown method), and
/// those of `sockpass_spawn_start`.
#[no_mangle]
pub unsafe extern "C" fn sockpass_supervisor_start(
    spawn: *mut sockpass_spawn,
    ready_method: *const c_char,
    supervisor_out: *mut *mut sockpass_supervisor,
) -> c_int {
    call(|| {
        if spawn.is_null() {
            return Err(fault("spawn"));
        }
        let recipe = crate::spawn::take_builder(spawn);
        if supervisor_out.is_null() {
            return Err(fault("supervisor_out"));
        }
        let ready: Option<Method> = if ready_method.is_null() {
            None
        } else {
            Some(c_str(ready_method, "ready_method", crate::SOCKPASS_MAX_STRING)?.parse()?)
        };
        let opts = SuperviseOptions {
            ready,
            ..SuperviseOptions::default()
        };
        let sup = Supervisor::start(recipe, opts)?;
        let pid = sup.pid().unwrap_or(0);
        *supervisor_out = Box::into_raw(Box::new(sockpass_supervisor {
            inner: Mutex::new(State {
                sup,
                failed_status: None,
            }),
        }));
        Ok(pid)
    })
}

/// Free the handle and the fds it holds. It neither stops nor reaps the
/// instances (stop them first: `sockpass_supervisor_terminate` and
/// `sockpass_supervisor_wait`). NULL is a no-op.
#[no_mangle]
pub unsafe extern "C" fn sockpass_supervisor_free(supervisor: *mut sockpass_supervisor) {
    if supervisor.is_null() {
        return;
    }
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        drop(Box::from_raw(supervisor));
    }));
}

/// Set the restart timings, in milliseconds (negative: keep the current
/// one): how long a new instance may take to be ready, the grace period
/// that stands in without a readiness method, and how long a stopped
/// instance may take to exit before `SIGKILL`. Returns 0. Errors:
/// `-EFAULT`.
#[no_mangle]
pub unsafe extern "C" fn sockpass_supervisor_set_timeouts(
    supervisor: *mut sockpass_supervisor,
    ready_timeout_ms: c_int,
    grace_ms: c_int,
    drain_timeout_ms: c_int,
) -> c_int {
    call(|| {
        let mut g = lock(sup_ref(supervisor)?);
        let o = g.sup.options_mut();
        if let Some(d) = ms(ready_timeout_ms) {
            o.ready_timeout = d;
        }
        if let Some(d) = ms(grace_ms) {
            o.grace = d;
        }
        if let Some(d) = ms(drain_timeout_ms) {
            o.drain_timeout = d;
        }
        Ok(0)
    })
}

/// The signal that stops an old instance after a handover (and a new one
/// that failed); default `SIGTERM`. Returns 0. Errors: `-EFAULT`,
/// `-EINVAL` (not a signal number).
#[no_mangle]
pub unsafe extern "C" fn sockpass_supervisor_set_stop_signal(
    supervisor: *mut sockpass_supervisor,
    sig: c_int,
) -> c_int {
    call(|| {
        let mut g = lock(sup_ref(supervisor)?);
        if !(1..=64).contains(&sig) {
            return Err(Error::bad_request(format!("{sig} is not a signal number")));
        }
        g.sup.options_mut().stop_signal = sig;
        Ok(0)
    })
}

/// The current instance's pid. Errors: `-EFAULT`, `-ESRCH` (none is left).
#[no_mangle]
pub unsafe extern "C" fn sockpass_supervisor_pid(supervisor: *mut sockpass_supervisor) -> c_int {
    call(|| {
        lock(sup_ref(supervisor)?)
            .sup
            .pid()
            .ok_or_else(|| Error::with_errno(Kind::Os, libc::ESRCH, "no instance is running"))
    })
}

/// Wait until the first instance is ready, at most `timeout_ms` (negative:
/// no limit); without a readiness method this returns at once. Returns 0.
/// Errors: `-EFAULT`, `-SOCKPASS_E_CHILD_FAILED` (it exited first),
/// `-ETIMEDOUT` (it is left running), `-SOCKPASS_E_NOT_READY`,
/// `-SOCKPASS_E_PROTOCOL`.
#[no_mangle]
pub unsafe extern "C" fn sockpass_supervisor_wait_ready(
    supervisor: *mut sockpass_supervisor,
    timeout_ms: c_int,
) -> c_int {
    call(|| {
        lock(sup_ref(supervisor)?)
            .sup
            .wait_ready(ms(timeout_ms))
            .map(|()| 0)
    })
}

/// Restart: start a new instance with the same fds, wait until it is ready,
/// make it current, stop the old one (stop signal, then `SIGKILL` after the
/// drain timeout) and reap it. Blocks until then; returns the new pid.
///
/// On failure the new instance has been stopped and reaped and the old one
/// serves on; `sockpass_supervisor_failed_status` gives the new instance's
/// wait status. Errors: `-EFAULT`, `-SOCKPASS_E_CHILD_FAILED` (it exited
/// before it was ready, or could not start), `-ETIMEDOUT` (not ready within
/// the ready timeout), `-SOCKPASS_E_NOT_READY`, `-EINVAL` (no instance is
/// running, or terminating).
#[no_mangle]
pub unsafe extern "C" fn sockpass_supervisor_restart(
    supervisor: *mut sockpass_supervisor,
) -> c_int {
    call(|| {
        let mut g = lock(sup_ref(supervisor)?);
        match g.sup.restart() {
            Ok(r) => Ok(r.new_pid),
            Err(f) => {
                g.failed_status = f.status;
                Err(f.error)
            }
        }
    })
}

/// The raw wait status (`WIFEXITED`, ...) of the new instance of the last
/// restart that failed: returns 1 and writes it to `*status_out`, or 0 if
/// there is none (no restart failed, or its instance never started).
/// Errors: `-EFAULT`.
#[no_mangle]
pub unsafe extern "C" fn sockpass_supervisor_failed_status(
    supervisor: *mut sockpass_supervisor,
    status_out: *mut c_int,
) -> c_int {
    call(|| {
        let g = lock(sup_ref(supervisor)?);
        if status_out.is_null() {
            return Err(fault("status_out"));
        }
        match g.failed_status {
            Some(st) => {
                *status_out = st;
                Ok(1)
            }
            None => Ok(0),
        }
    })
}

/// Send `sig` to the current instance. Returns 0. Errors: `-EFAULT`,
/// `-EINVAL`.
#[no_mangle]
pub unsafe extern "C" fn sockpass_supervisor_kill(
    supervisor: *mut sockpass_supervisor,
    sig: c_int,
) -> c_int {
    call(|| lock(sup_ref(supervisor)?).sup.signal(sig).map(|()| 0))
}

/// Shut down: send `sig` to every instance and refuse further restarts;
/// then `sockpass_supervisor_wait`. Returns 0. Errors: `-EFAULT`.
#[no_mangle]
pub unsafe extern "C" fn sockpass_supervisor_terminate(
    supervisor: *mut sockpass_supervisor,
    sig: c_int,
) -> c_int {
    call(|| {
        lock(sup_ref(supervisor)?).sup.terminate(sig);
        Ok(0)
    })
}

/// Wait until no instance is left, at most `timeout_ms` (negative: no
/// limit). Returns 1 and writes the last current instance's raw wait status
/// to `*status_out` (if not NULL), or 0 if one still runs. Errors:
/// `-EFAULT`.
#[no_mangle]
pub unsafe extern "C" fn sockpass_supervisor_wait(
    supervisor: *mut sockpass_supervisor,
    timeout_ms: c_int,
    status_out: *mut c_int,
) -> c_int {
    call(|| {
        let mut g = lock(sup_ref(supervisor)?);
        match g.sup.wait_timeout(ms(timeout_ms))? {
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
