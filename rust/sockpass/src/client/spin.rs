//! A short, bounded spin on a reply before blocking (issue 25, item 4).
//! When the broker runs on another CPU, a client that blocks in `recvmsg`
//! is woken by a cross-CPU wake-up, which on VMs costs tens of µs (an idle
//! vCPU being woken); polling the socket for a few µs first catches a
//! reply that comes back within them. A client spins only while its
//! replies come quickly ([`Pacing`]): under load, when replies wait their
//! turn behind other clients, it blocks at once and takes no CPU from
//! them. Off by default: with 1,000 client processes on one CPU, B5 ran
//! about 8 % slower with it on, though only a few dozen replies a second
//! were spun on (docs/BENCHMARKS.md). The environment variable `SOCKPASS_SPIN_US` (µs,
//! at most [`MAX_SPIN_US`]; 50 is what the figures used) sets a process's
//! default, [`super::Client::set_reply_spin`] a client's.

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

/// Past the spin, what a blocking round trip adds at most when the broker
/// was quick: the wake-up of an idle vCPU, 60-150 µs on the VMs measured.
const WAKE_US: u32 = 150;

/// After a spin that did not pay, a client skips at most this many replies
/// before it spins again (a probe, in case its broker moved to another
/// CPU).
pub(super) const MAX_SKIP: u32 = 64;

/// How a spin went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Spun {
    /// The reply came after this many yields.
    Caught(u32),
    /// The spin ran out: the caller blocks.
    Missed,
}

/// Whether to spin on a reply, from two signals:
/// - the round trips: a moving average of this client's recent ones (from
///   the send to the reply, spun or blocking). Past the spin plus a
///   wake-up, replies wait their turn behind other clients' (a busy
///   broker, more clients than CPUs), and the client blocks at once: a
///   spin would take a CPU others are waiting for.
/// - the spins: one that ran out, or whose reply came right after its
///   first yield (the broker ran on this CPU in it: blocking would have
///   let it run as well, one `recvmsg` and one `sched_yield` cheaper),
///   did not pay, and the client skips the next replies, twice as many
///   after each such spin (up to [`MAX_SKIP`]); one caught after more
///   yields (a broker on another CPU) starts over.
///
/// A new client blocks on its first reply and spins from the second if
/// the first came quickly: a thousand workers started at once and
/// spinning on their first replies would take turns from their broker.
#[derive(Debug, Default)]
pub(super) struct Pacing {
    /// Recent round trips, µs (3/4 the last average, 1/4 the newest; None
    /// before the first).
    rtt_us: Option<u32>,
    skip: u32,
    backoff: u32,
}

impl Pacing {
    /// Whether a spin of `spin` is worth it on this reply.
    pub(super) fn spin_now(&mut self, spin: Duration) -> bool {
        match self.rtt_us {
            Some(rtt) if rtt < spin.as_micros() as u32 + WAKE_US => {}
            _ => return false,
        }
        if self.skip > 0 {
            self.skip -= 1;
            return false;
        }
        true
    }

    /// How long the round trip took, and how the spin went (None: no
    /// spin).
    pub(super) fn record(&mut self, rtt: Duration, spun: Option<Spun>) {
        let w = rtt.as_micros().min(u128::from(u32::MAX / 4)) as u32;
        self.rtt_us = Some(match self.rtt_us {
            Some(a) => (a / 4) * 3 + w / 4,
            None => w,
        });
        match spun {
            Some(Spun::Missed | Spun::Caught(1)) => {
                self.backoff = (self.backoff * 2).clamp(1, MAX_SKIP);
                self.skip = self.backoff;
            }
            Some(Spun::Caught(n)) if n > 1 => self.backoff = 0,
            // The reply was there at the first try: the spin cost nothing.
            _ => {}
        }
    }
}

/// Call `recv` (a nonblocking receive) until it returns anything but
/// `EAGAIN` or `spin` has passed (then `Missed`: block now). Between tries
/// the CPU is offered to others (`sched_yield`), so a broker waiting to
/// run on this CPU is not held up by the spin.
pub(super) fn spin_recv<T>(
    spin: Duration,
    mut recv: impl FnMut() -> Result<T, RecvError>,
) -> (Option<Result<T, RecvError>>, Spun) {
    let start = Instant::now();
    let mut yields = 0;
    loop {
        match recv() {
            Err(RecvError::Os(libc::EAGAIN)) => {}
            r => return (Some(r), Spun::Caught(yields)),
        }
        if start.elapsed() >= spin {
            return (None, Spun::Missed);
        }
        std::thread::yield_now();
        yields += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPIN: Duration = Duration::from_micros(50);

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    /// Quick round trips (one client, a broker on another CPU) are spun
    /// on; round trips that wait behind other clients' are not, until
    /// quick ones come back.
    #[test]
    fn pacing_spins_while_round_trips_are_quick() {
        let mut p = Pacing::default();
        assert!(!p.spin_now(SPIN), "a new client blocks first");
        p.record(us(70), None); // a blocking round trip across CPUs
        assert!(p.spin_now(SPIN));
        p.record(us(25), Some(Spun::Caught(30))); // caught across CPUs
        assert!(p.spin_now(SPIN));
        // A busy broker: a round trip of a millisecond stops the spinning.
        p.record(us(1000), Some(Spun::Caught(0)));
        assert!(!p.spin_now(SPIN));
        // Quick round trips again (blocking ones, with the wake-up): the
        // spinning resumes within a few.
        let back = (1..20)
            .find(|_| {
                p.record(us(70), None);
                p.spin_now(SPIN)
            })
            .unwrap();
        assert!(back <= 4, "resumed after {back} quick round trips");
        // A wait of hours does not overflow.
        p.record(Duration::from_secs(10_000), None);
        assert!(!p.spin_now(SPIN));
        assert!(!p.spin_now(us(1000)));
    }

    /// Spins that do not pay (ran out, or the broker ran in the first
    /// yield: the same CPU) space the spins out, doubling up to MAX_SKIP;
    /// one caught across CPUs brings back a spin on every reply.
    #[test]
    fn pacing_backs_off_from_spins_that_do_not_pay() {
        let mut p = Pacing::default();
        p.record(us(12), None);
        let mut gaps = Vec::new();
        for i in 0..9 {
            let spun = if i % 2 == 0 {
                Spun::Caught(1)
            } else {
                Spun::Missed
            };
            p.record(us(12), Some(spun));
            let mut skipped = 0;
            while !p.spin_now(SPIN) {
                skipped += 1;
            }
            gaps.push(skipped);
        }
        assert_eq!(gaps, [1, 2, 4, 8, 16, 32, 64, 64, 64]);
        // The reply there at the first try: neither way.
        p.record(us(12), Some(Spun::Caught(0)));
        assert!(p.spin_now(SPIN));
        p.record(us(12), Some(Spun::Caught(1)));
        assert_eq!(
            (0..64).filter(|_| !p.spin_now(SPIN)).count(),
            64,
            "still backed off"
        );
        p.record(us(22), Some(Spun::Caught(40)));
        assert!(
            (0..10).all(|_| p.spin_now(SPIN)),
            "a catch across CPUs starts over"
        );
        p.record(us(22), Some(Spun::Missed));
        assert!(
            !p.spin_now(SPIN) && p.spin_now(SPIN),
            "and a new miss starts at 1"
        );
    }

    /// A spin on a reply that does not come ends after its length, having
    /// yielded the CPU between tries; one that comes is taken at once.
    #[test]
    fn a_spin_is_bounded_and_takes_what_comes() {
        // Long enough that a preemption after the first try still leaves
        // room for a second.
        let spin = Duration::from_millis(20);
        let t = Instant::now();
        let mut tries = 0;
        let (got, how) = spin_recv(spin, || -> Result<(), RecvError> {
            tries += 1;
            Err(RecvError::Os(libc::EAGAIN))
        });
        let took = t.elapsed();
        assert!(got.is_none() && how == Spun::Missed);
        assert!(took >= spin && took < Duration::from_secs(5), "{took:?}");
        assert!(tries > 1);
        // A reply that comes at the third try is taken then, however long
        // the two yields before it took on a busy machine (a bound of 1 ms
        // could run out first).
        let mut n = 0;
        let (got, how) = spin_recv(Duration::from_secs(60), || {
            n += 1;
            if n < 3 {
                Err(RecvError::Os(libc::EAGAIN))
            } else {
                Ok(n)
            }
        });
        assert_eq!((got.unwrap().ok(), how), (Some(3), Spun::Caught(2)));
        let (got, how) = spin_recv(Duration::from_secs(60), || {
            Err::<(), _>(RecvError::Os(libc::ECONNRESET))
        });
        assert!(matches!(got, Some(Err(RecvError::Os(libc::ECONNRESET)))));
        assert_eq!(
            how,
            Spun::Caught(0),
            "an error ends the spin as a reply does"
        );
    }
}
