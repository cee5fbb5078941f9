//! The way back from an upgrade that fails after the exec.
//!
//! Before the exec the old image writes a plan ([`write_plan`]): the fd of
//! its own executable and its arguments, in a memfd named by [`PLAN_ENV`].
//! The new image arms the plan as soon as it has read the state's fd table
//! ([`arm`]), before it owns anything. Until it serves ([`disarm`]), an error
//! it catches ([`fall_back`]) or a panic (a hook, which runs before any
//! unwinding closes an fd) executes the old binary again with the same state
//! memfd and fds and [`FAILED_ENV`] saying why: the old image takes the
//! broker back, answers the upgrade's requester with the error, and serves
//! on. A new image killed by a signal after the exec runs no code: the probe
//! (`--handoff-check`, see `exe`) is what keeps such a binary from being
//! executed in place.

use crate::exe::Exe;
use sockpass::{Error, Result};
use std::ffi::{CString, OsString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;
use std::sync::Mutex;

/// The variable naming the plan memfd in the new image.
pub const PLAN_ENV: &str = "SOCKPASS_FALLBACK_FD";
/// The variable naming the new image's own executable fd (it closes it).
pub const EXE_ENV: &str = "SOCKPASS_EXE_FD";
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
