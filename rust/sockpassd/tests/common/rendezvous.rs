//! A barrier with a bound: `std::sync::Barrier` waits forever, so one thread
//! that panics before its turn hangs every other thread and the test binary
//! with them. Here a panicking party breaks the rendezvous for all (through
//! [`Party`]'s drop), and a wait longer than a generous bound fails.

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

pub struct Rendezvous {
    n: usize,
    state: Mutex<State>,
    cv: Condvar,
}

struct State {
    arrived: usize,
    generation: u64,
    broken: bool,
}

/// Held by each thread that takes part: if the thread unwinds, the
/// rendezvous breaks and every waiter panics at once instead of waiting.
pub struct Party<'a>(&'a Rendezvous);

impl Drop for Party<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0
                .state
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .broken = true;
            self.0.cv.notify_all();
        }
    }
}

impl Rendezvous {
    pub fn new(n: usize) -> Rendezvous {
        Rendezvous {
            n,
            state: Mutex::new(State {
                arrived: 0,
                generation: 0,
                broken: false,
            }),
            cv: Condvar::new(),
        }
    }

    pub fn party(&self) -> Party<'_> {
        Party(self)
    }

    /// Wait until all `n` have arrived (at most `bound`); panics if another
    /// party panicked or the bound passed.
    pub fn wait(&self, bound: Duration) {
        let deadline = Instant::now() + bound;
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let generation = st.generation;
        st.arrived += 1;
        if st.arrived == self.n {
            st.arrived = 0;
            st.generation += 1;
            self.cv.notify_all();
            return;
        }
        while st.generation == generation {
            assert!(!st.broken, "another thread of the test failed");
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "rendezvous: not everyone came within {bound:?}"
            );
            st = self
                .cv
                .wait_timeout(st, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}
