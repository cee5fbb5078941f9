//! The way back from an upgrade that fails after the exec.
//!
//! Before the exec the old image writes a plan ([`write_plan`]): the fd of
//! its own executable and its arguments, in a memfd named by [`PLAN_ENV`].
//! The new image arms the plan as soon as it has read the state's fd table
//! ([`arm`]), before it owns anything. Until it serves ([`disarm`]), an error
//! it catches ([`fall_back`]) or a panic (a hook, which runs before any
//! unwinding closes an fd) or a crash (SIGSEGV, SIGBUS, SIGILL, SIGFPE,
//! SIGABRT: a handler with everything prepared, async-signal-safe) or a hang
//! (no serving within [`SERVE_WITHIN`]: the old image set an alarm) executes
//! the old binary again with the same state memfd and fds and [`FAILED_ENV`]
//! saying why: the old image takes the broker back, answers the upgrade's
//! requester with the error, and serves on. A new image that is killed
//! (SIGKILL) or fails before it has read the state's fd table has no way back: the probe
//! (`--handoff-check`, see `exe`) is what keeps such a binary from being
//! executed in place.

use crate::exe::Exe;
use sockpass::{Error, Result};
use std::ffi::{CString, OsString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::Mutex;

/// The variable naming the plan memfd in the new image.
pub const PLAN_ENV: &str = "SOCKPASS_FALLBACK_FD";
/// The variable naming the new image's own executable fd (it closes it).
pub const EXE_ENV: &str = "SOCKPASS_EXE_FD";
/// How long a new image has from the exec until it serves, or it is taken
/// to hang and the old image is executed again.
pub const SERVE_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);
/// Set in an old image taken back after a failed upgrade: why it failed.
pub const FAILED_ENV: &str = "SOCKPASS_UPGRADE_FAILED";
const MAGIC: &[u8] = b"SPFALLv1";

/// Everything needed to execute the old image again.
struct Plan {
    exe: Exe,
    args: Vec<CString>,
    env: Vec<CString>,
    memfd: OwnedFd,
    fds: Vec<RawFd>,
}

static ARMED: Mutex<Option<Plan>> = Mutex::new(None);

/// Old image: the plan memfd for `running` and our arguments.
pub(crate) fn write_plan(running: &Exe, args: &[OsString]) -> Result<OwnedFd> {
    let mut blob = MAGIC.to_vec();
    blob.extend_from_slice(&running.raw().to_le_bytes());
    let path = running.path().as_os_str().as_bytes();
    blob.extend_from_slice(&(path.len() as u32).to_le_bytes());
    blob.extend_from_slice(path);
    for a in args {
        blob.extend_from_slice(&(a.len() as u32).to_le_bytes());
        blob.extend_from_slice(a.as_bytes());
    }
    sockpass::memfd::from_bytes("sockpassd-fallback", &blob)
}

fn take_fd_env(name: &str) -> Option<OwnedFd> {
    let v = std::env::var_os(name)?;
    std::env::remove_var(name);
    let n: RawFd = v.to_str()?.parse().ok().filter(|n| *n >= 0)?;
    if !sockpass::sys::fd_is_open(n) {
        return None;
    }
    crate::handoff::set_cloexec(n, true).ok()?;
    // SAFETY: the previous image left this fd for us; nothing else owns it.
    Some(unsafe { OwnedFd::from_raw_fd(n) })
}

/// New image: close the executable fd we were started from (it has served).
pub(crate) fn drop_exe_fd() {
    drop(take_fd_env(EXE_ENV));
}

/// New image, once the state's fd table is read and before anything is
/// owned: arm the way back to the old image, with the same `memfd` and
/// `fds`. Nothing happens without a plan (an old image that wrote none).
pub(crate) fn arm(memfd: &OwnedFd, fds: &[RawFd]) -> Result<()> {
    let Some(plan) = take_fd_env(PLAN_ENV) else {
        return Ok(());
    };
    let blob = sockpass::memfd::read_all(plan, 1 << 20)?;
    let bad = || Error::protocol("the fallback plan is corrupt");
    if blob.len() < 12 || &blob[..8] != MAGIC {
        return Err(bad());
    }
    let exe_fd = RawFd::from_le_bytes(blob[8..12].try_into().unwrap());
    let mut rest = &blob[12..];
    let mut items = Vec::new();
    while !rest.is_empty() {
        if rest.len() < 4 {
            return Err(bad());
        }
        let n = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
        if rest.len() < 4 + n {
            return Err(bad());
        }
        items.push(rest[4..4 + n].to_vec());
        rest = &rest[4 + n..];
    }
    if items.is_empty() || exe_fd < 0 || !sockpass::sys::fd_is_open(exe_fd) {
        return Err(bad());
    }
    crate::handoff::set_cloexec(exe_fd, true)?;
    // SAFETY: the old image left its executable's fd for us.
    let exe_fd = unsafe { OwnedFd::from_raw_fd(exe_fd) };
    let path = PathBuf::from(OsString::from_vec(items.remove(0)));
    let cstr = |b: Vec<u8>| CString::new(b).map_err(|_| bad());
    let args = std::iter::once(path.as_os_str().as_bytes().to_vec())
        .chain(items)
        .map(cstr)
        .collect::<Result<Vec<_>>>()?;
    let mut env = Vec::new();
    for (k, v) in std::env::vars_os() {
        if [crate::handoff::STATE_ENV, PLAN_ENV, EXE_ENV, FAILED_ENV]
            .iter()
            .any(|n| k == *n)
        {
            continue;
        }
        let mut kv = k.into_vec();
        kv.push(b'=');
        kv.extend_from_slice(v.as_bytes());
        env.push(cstr(kv)?);
    }
    let memfd = sockpass::sys::dup_cloexec(std::os::fd::AsFd::as_fd(memfd))
        .map_err(|e| Error::os(e, "dup the state memfd"))?;
    *ARMED.lock().unwrap_or_else(|p| p.into_inner()) = Some(Plan {
        exe: Exe::from_fd(exe_fd, path),
        args,
        env,
        memfd,
        fds: fds.to_vec(),
    });
    if let Some(plan) = ARMED.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
        arm_crash(plan);
    }
    // The hook runs before unwinding drops (and closes) anything.
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        prev(info);
        fall_back(&format!("the new image panicked: {info}"));
    }));
    Ok(())
}

/// New image, serving: the way back is no longer needed.
pub fn disarm() {
    disarm_crash();
    if let Ok(mut g) = ARMED.try_lock() {
        g.take();
    }
}

/// New image, failing before it serves: execute the old image again with
/// the handed-over state. Returns only when no way back is armed or the
/// exec failed; the handed-over fds must all still be open.
pub fn fall_back(reason: &str) {
    let Ok(mut g) = ARMED.try_lock() else { return };
    let Some(plan) = g.take() else { return };
    disarm_crash();
    // Never eprintln! here: it panics on a failing stderr, and this may
    // run in the panic hook.
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "sockpassd: upgrade failed in the new image ({reason}); executing {} again",
        plan.exe.path().display()
    );
    let reason: Vec<u8> = reason.bytes().filter(|b| *b != 0).take(1000).collect();
    let mut env = plan.env.clone();
    let mut extra = |k: &str, v: &[u8]| {
        let mut kv = format!("{k}=").into_bytes();
        kv.extend_from_slice(v);
        env.push(CString::new(kv).expect("no NUL"));
    };
    extra(
        crate::handoff::STATE_ENV,
        plan.memfd.as_raw_fd().to_string().as_bytes(),
    );
    extra(FAILED_ENV, &reason);
    // Exe::exec leaves its fd open for an interpreter: the old image closes it.
    extra(EXE_ENV, plan.exe.raw().to_string().as_bytes());
    let all: Vec<RawFd> = plan
        .fds
        .iter()
        .copied()
        .chain([plan.memfd.as_raw_fd()])
        .collect();
    for &fd in &all {
        let _ = crate::handoff::set_cloexec(fd, false);
    }
    let e = plan.exe.exec(&plan.args, &env);
    for &fd in &all {
        let _ = crate::handoff::set_cloexec(fd, true);
    }
    let _ = writeln!(
        std::io::stderr(),
        "sockpassd: cannot execute the old image again: {e}"
    );
}

/// An old image taken back: why the upgrade failed (None: not a fallback).
pub fn failure_from_env() -> Option<String> {
    let v = std::env::var_os(FAILED_ENV)?;
    std::env::remove_var(FAILED_ENV);
    Some(v.to_string_lossy().into_owned())
}

/// The signals a crash is: a handler for each executes the old image.
const CRASH_SIGNALS: [(libc::c_int, &str); 6] = [
    (libc::SIGSEGV, "was killed by SIGSEGV"),
    (libc::SIGBUS, "was killed by SIGBUS"),
    (libc::SIGILL, "was killed by SIGILL"),
    (libc::SIGFPE, "was killed by SIGFPE"),
    (libc::SIGABRT, "was killed by SIGABRT"),
    // The old image's alarm: the new image hangs.
    (libc::SIGALRM, "did not serve in time"),
];

/// The exec of the old image, prepared so that a signal handler has only
/// async-signal-safe work left (fcntl, sigprocmask, execveat).
struct CrashExec {
    exe: RawFd,
    /// Every fd to hand back: the state's, its memfd, the executable.
    fds: Vec<RawFd>,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    /// The slot of `envp` the handler points at its signal's reason.
    reason_at: usize,
    reasons: Vec<(libc::c_int, CString)>,
    _strings: Vec<CString>,
}

static CRASH: AtomicPtr<CrashExec> = AtomicPtr::new(std::ptr::null_mut());
/// The actions the crash handlers replaced (std's stack-overflow handler).
static REPLACED: Mutex<Vec<(libc::c_int, usize, libc::sigset_t, libc::c_int)>> =
    Mutex::new(Vec::new());

fn arm_crash(plan: &Plan) {
    let mut strings = plan.env.clone();
    strings.push(
        CString::new(format!(
            "{}={}",
            crate::handoff::STATE_ENV,
            plan.memfd.as_raw_fd()
        ))
        .expect("no NUL"),
    );
    strings.push(CString::new(format!("{EXE_ENV}={}", plan.exe.raw())).expect("no NUL"));
    let mut envp: Vec<*const libc::c_char> = strings.iter().map(|c| c.as_ptr()).collect();
    let reason_at = envp.len();
    let reasons: Vec<(libc::c_int, CString)> = CRASH_SIGNALS
        .iter()
        .map(|&(sig, what)| {
            let r = if sig == libc::SIGALRM {
                format!(
                    "{FAILED_ENV}=the new image did not serve within {} s",
                    SERVE_WITHIN.as_secs()
                )
            } else {
                format!("{FAILED_ENV}=the new image {what} before it served")
            };
            (sig, CString::new(r).expect("no NUL"))
        })
        .collect();
    envp.push(reasons[0].1.as_ptr());
    envp.push(std::ptr::null());
    let mut argv: Vec<*const libc::c_char> = plan.args.iter().map(|c| c.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut fds = plan.fds.clone();
    fds.push(plan.memfd.as_raw_fd());
    fds.push(plan.exe.raw());
    // The argv strings stay in the Plan, which outlives the handler (it is
    // disarmed first whenever the Plan goes).
    let c = Box::new(CrashExec {
        exe: plan.exe.raw(),
        fds,
        argv,
        envp,
        reason_at,
        reasons,
        _strings: strings,
    });
    let old = CRASH.swap(Box::into_raw(c), Ordering::SeqCst);
    if !old.is_null() {
        // SAFETY: a pointer from Box::into_raw that no handler holds anymore.
        drop(unsafe { Box::from_raw(old) });
    }
    let mut replaced = REPLACED.lock().unwrap_or_else(|p| p.into_inner());
    for (sig, _) in CRASH_SIGNALS {
        // SAFETY: sigaction with zeroed, then filled, structs.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_crash as *const () as usize;
            sa.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_RESETHAND;
            libc::sigemptyset(&mut sa.sa_mask);
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, &sa, &mut old) == 0 {
                replaced.push((sig, old.sa_sigaction, old.sa_mask, old.sa_flags));
            }
        }
    }
}

fn disarm_crash() {
    // SAFETY: cancelling our alarm cannot fail.
    unsafe { libc::alarm(0) };
    let mut replaced = REPLACED.lock().unwrap_or_else(|p| p.into_inner());
    for (sig, handler, mask, flags) in replaced.drain(..) {
        // The old image ignored SIGALRM only for the watchdog.
        let handler = if sig == libc::SIGALRM {
            libc::SIG_DFL
        } else {
            handler
        };
        // SAFETY: putting back the action sigaction gave us.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = handler;
            sa.sa_mask = mask;
            sa.sa_flags = flags;
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
    let old = CRASH.swap(std::ptr::null_mut(), Ordering::SeqCst);
    if !old.is_null() {
        // SAFETY: from Box::into_raw; the handlers are gone, nothing reads it.
        drop(unsafe { Box::from_raw(old) });
    }
}

/// A crash before serving: execute the old image (async-signal-safe calls
/// on data prepared by [`arm_crash`]); failing that, die of the signal.
extern "C" fn on_crash(sig: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let p = CRASH.swap(std::ptr::null_mut(), Ordering::SeqCst);
    if !p.is_null() {
        // SAFETY: prepared by arm_crash and never freed while a handler is
        // installed; swapped out, so no other handler uses it.
        let c = unsafe { &mut *p };
        for (s, r) in &c.reasons {
            if *s == sig {
                c.envp[c.reason_at] = r.as_ptr();
            }
        }
        // SAFETY: fcntl, sigprocmask and execveat are async-signal-safe; the
        // arrays are NULL-terminated and alive.
        unsafe {
            // The old image must not inherit a pending alarm.
            libc::alarm(0);
            for &fd in &c.fds {
                let fl = libc::fcntl(fd, libc::F_GETFD);
                if fl >= 0 {
                    libc::fcntl(fd, libc::F_SETFD, fl & !libc::FD_CLOEXEC);
                }
            }
            // The mask survives the exec: the old image must not start
            // with this signal blocked.
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, sig);
            libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            crate::exe::execveat_empty(c.exe, c.argv.as_ptr(), c.envp.as_ptr());
        }
    }
    // SA_RESETHAND put the default action back: die of the signal.
    // SAFETY: raise is async-signal-safe.
    unsafe { libc::raise(sig) };
}
