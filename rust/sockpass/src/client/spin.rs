//! A short, bounded spin on a reply before blocking (issue 25, item 4).
//! When the broker runs on another CPU, a client that blocks in `recvmsg`
//! is woken by a cross-CPU wake-up, which on VMs costs tens of µs (an idle
//! vCPU being woken); polling the socket for a few µs first catches a
//! reply that comes back within them. Off by default: the environment
//! variable `SOCKPASS_SPIN_US` (µs, at most [`MAX_SPIN_US`]) sets a
//! process's default, [`super::Client::set_reply_spin`] a client's.

use crate::fdpass::RecvError;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The longest spin a client may be given: past it, blocking costs less.
pub const MAX_SPIN_US: u64 = 1000;

/// The process's default from `SOCKPASS_SPIN_US` (read once; unset, 0 or
/// unreadable: no spin; more than [`MAX_SPIN_US`] is cut to it).
pub(super) fn default_spin() -> Option<Duration> {
    static SPIN: OnceLock<Option<Duration>> = OnceLock::new();
    *SPIN.get_or_init(|| {
        let us: u64 = std::env::var("SOCKPASS_SPIN_US")
            .ok()?
            .trim()
            .parse()
            .ok()?;
        (us > 0).then(|| Duration::from_micros(us.min(MAX_SPIN_US)))
    })
}

/// Call `recv` (a nonblocking receive) until it returns anything but
/// `EAGAIN` or `spin` has passed (None: block now). Between tries the CPU
/// is offered to others (`sched_yield`), so a broker waiting to run on this
/// CPU is not held up by the spin.
pub(super) fn spin_recv<T>(
    spin: Duration,
    mut recv: impl FnMut() -> Result<T, RecvError>,
) -> Option<Result<T, RecvError>> {
    let start = Instant::now();
    loop {
        match recv() {
            Err(RecvError::Os(libc::EAGAIN)) => {}
            r => return Some(r),
        }
        if start.elapsed() >= spin {
            return None;
        }
        std::thread::yield_now();
    }
}
