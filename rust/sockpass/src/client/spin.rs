//! A short, bounded spin on a reply before blocking (issue 25, item 4).
//! When the broker runs on another CPU, a client that blocks in `recvmsg`
//! is woken by a cross-CPU wake-up, which on VMs costs tens of µs (an idle
//! vCPU being woken); polling the socket for a few µs first catches a
//! reply that comes back within them. A client spins only while its
//! replies come quickly ([`Pacing`]): under load, when replies wait their
//! turn behind other clients, it blocks at once and takes no CPU from
//! them. On by default ([`DEFAULT_SPIN_US`]); the environment variable
//! `SOCKPASS_SPIN_US` (µs, at most [`MAX_SPIN_US`]; 0: off) sets a
//! process's default, [`super::Client::set_reply_spin`] a client's.

use crate::fdpass::RecvError;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The longest spin a client may be given: past it, blocking costs less.
pub const MAX_SPIN_US: u64 = 1000;

/// The spin of a client nothing else sets: a broker answering a cached
/// request from another, idle, vCPU took 20-30 µs (docs/BENCHMARKS.md).
pub const DEFAULT_SPIN_US: u64 = 50;

/// The process's default from `SOCKPASS_SPIN_US` (read once; 0: no spin;
/// unset or unreadable: [`DEFAULT_SPIN_US`]; more than [`MAX_SPIN_US`] is
/// cut to it).
pub(super) fn default_spin() -> Option<Duration> {
    static SPIN: OnceLock<Option<Duration>> = OnceLock::new();
    *SPIN.get_or_init(|| {
        let us = std::env::var("SOCKPASS_SPIN_US")
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(DEFAULT_SPIN_US);
        (us > 0).then(|| Duration::from_micros(us.min(MAX_SPIN_US)))
    })
}

/// Past the spin, what a blocking wait adds at most when the reply was
/// quick: the wake-up of an idle vCPU, 60-150 µs on the VMs measured.
const WAKE_US: u32 = 150;

/// Whether to spin, from how long replies have been taking: a moving
/// average of this client's recent waits (spun or blocking). Replies
/// that come within the spin plus a wake-up (one client, a broker on
/// another CPU) are spun on; replies that wait their turn behind other
/// clients (a busy broker, more clients than CPUs) are not, so spinning
/// never takes a CPU that others are waiting for. A new client spins on
/// its first reply; one wait of a millisecond stops it.
#[derive(Debug, Default)]
pub(super) struct Pacing {
    /// Recent waits, µs (3/4 the last average, 1/4 the newest).
    wait_us: u32,
}

impl Pacing {
    /// Whether a spin of `spin` is worth it on this reply.
    pub(super) fn spin_now(&self, spin: Duration) -> bool {
        self.wait_us < gate_us(spin)
    }

    /// How long the reply took (from the start of the wait).
    pub(super) fn record(&mut self, waited: Duration) {
        let w = waited.as_micros().min(u128::from(u32::MAX / 4)) as u32;
        self.wait_us = (self.wait_us / 4) * 3 + w / 4;
    }
}

fn gate_us(spin: Duration) -> u32 {
    spin.as_micros() as u32 + WAKE_US
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Quick replies (one client, a broker on another CPU) are spun on;
    /// replies that wait behind other clients are not, until quick ones
    /// come back.
    #[test]
    fn pacing_spins_while_replies_come_quickly() {
        let spin = Duration::from_micros(50);
        let mut p = Pacing::default();
        assert!(p.spin_now(spin), "a new client spins");
        p.record(Duration::from_micros(70)); // a blocking wait across CPUs
        assert!(p.spin_now(spin));
        p.record(Duration::from_micros(25)); // caught by the spin
        assert!(p.spin_now(spin));
        // A busy broker: waits of a millisecond stop the spinning at once.
        p.record(Duration::from_millis(1));
        assert!(!p.spin_now(spin));
        // Quick replies again: spinning resumes within a few.
        let back = (1..20)
            .find(|_| {
                p.record(Duration::from_micros(60));
                p.spin_now(spin)
            })
            .unwrap();
        assert!(back <= 4, "resumed after {back} quick replies");
        // A wait of hours does not overflow.
        p.record(Duration::from_secs(10_000));
        assert!(!p.spin_now(spin));
        assert!(!p.spin_now(Duration::from_micros(1000)));
    }
}
