//! Every limit on what clients can make the broker hold, in one place: the
//! configurable ones with their `sockpassd` flag, default and help line (a
//! new limit is a field, a default and one `FLAGS` row), and the fixed ones.

use std::time::Duration;

/// Bounds on what clients can make the broker hold.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_connections: usize,
    /// References (tokens) one connection may hold.
    pub max_refs_per_client: usize,
    /// Replies queued for a client that is not reading.
    pub max_queued_replies: usize,
    /// Distinct sockets the broker holds open.
    pub max_sockets: usize,
    /// Reservations awaiting pick-up, over all clients.
    pub max_reservations: usize,
    /// How long a reservation waits for its pick-up.
    pub reservation_ttl: Duration,
    /// Requests handled per readable event, for fairness between clients.
    pub batch: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 8192,
            max_refs_per_client: 16384,
            max_queued_replies: 32,
            max_sockets: 65536,
            max_reservations: 1024,
            reservation_ttl: Duration::from_secs(30),
            batch: 32,
        }
    }
}

impl Limits {
    /// Clamp the limits so the broker's fds stay below `nofile` with headroom:
    /// every connection and every cached socket is one fd.
    pub fn fit_fd_limit(&mut self, nofile: u64) {
        let budget = nofile.saturating_sub(FD_HEADROOM as u64) as usize;
        self.max_connections = self.max_connections.min(budget / 2).max(1);
        self.max_sockets = self.max_sockets.min(budget - self.max_connections).max(1);
    }
}

/// A configurable limit's `sockpassd` flag: its name, its value's name,
/// its help line and how a value sets it.
pub struct LimitFlag {
    pub flag: &'static str,
    pub value: &'static str,
    pub help: &'static str,
    set: fn(&mut Limits, &str, &str) -> Result<(), String>,
}

/// The flags of the configurable limits, in the order `--help` lists them.
pub const FLAGS: &[LimitFlag] = &[
    LimitFlag {
        flag: "--max-connections",
        value: "N",
        help: "concurrent clients (default 8192, fitted to RLIMIT_NOFILE)",
        set: |l, k, v| positive(k, v).map(|n| l.max_connections = n),
    },
    LimitFlag {
        flag: "--max-refs-per-client",
        value: "N",
        help: "references one client may hold (default 16384)",
        set: |l, k, v| positive(k, v).map(|n| l.max_refs_per_client = n),
    },
    LimitFlag {
        flag: "--max-sockets",
        value: "N",
        help: "sockets the broker holds (default 65536, fitted)",
        set: |l, k, v| positive(k, v).map(|n| l.max_sockets = n),
    },
    LimitFlag {
        flag: "--max-reservations",
        value: "N",
        help: "reservations pending pick-up (default 1024)",
        set: |l, k, v| positive(k, v).map(|n| l.max_reservations = n),
    },
    LimitFlag {
        flag: "--reservation-ttl",
        value: "SECONDS",
        help: "how long a reservation waits (default 30; fractions allowed)",
        set: |l, k, v| {
            let secs: f64 = number(k, v)?;
            if !(secs > 0.0 && secs <= 86400.0) {
                return Err(format!("{k} must be between 0 and 86400 seconds"));
            }
            l.reservation_ttl = Duration::from_secs_f64(secs);
            Ok(())
        },
    },
];

impl LimitFlag {
    /// The flag's `--help` line.
    pub fn usage(&self) -> String {
        format!(
            "  {:<27}{}\n",
            format!("{} {}", self.flag, self.value),
            self.help
        )
    }
}

impl Limits {
    /// Set the limit whose flag is `flag` from `value`; None when `flag` is
    /// no limit's.
    pub fn set_flag(&mut self, flag: &str, value: &str) -> Option<Result<(), String>> {
        let f = FLAGS.iter().find(|f| f.flag == flag)?;
        Some((f.set)(self, flag, value))
    }

    /// Whether `flag` is a limit's.
    pub fn is_flag(flag: &str) -> bool {
        FLAGS.iter().any(|f| f.flag == flag)
    }

    /// The `--help` lines of every limit's flag.
    pub fn usage() -> String {
        FLAGS.iter().map(LimitFlag::usage).collect()
    }
}

fn number<T: std::str::FromStr>(name: &str, v: &str) -> Result<T, String> {
    v.parse::<T>()
        .map_err(|_| format!("{name}: {v:?} is not a valid number"))
}

fn positive(name: &str, v: &str) -> Result<usize, String> {
    match number(name, v)? {
        0 => Err(format!("{name} must be at least 1")),
        n => Ok(n),
    }
}

/// fds kept free for the broker's own use (epoll, logs, memfds, accept races).
pub const FD_HEADROOM: usize = 64;

/// Raise the soft RLIMIT_NOFILE to the hard limit; returns the new soft limit.
pub fn raise_fd_limit() -> u64 {
    // SAFETY: getrlimit/setrlimit with a valid struct.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return 1024;
        }
        if r.rlim_cur < r.rlim_max {
            let want = libc::rlimit {
                rlim_cur: r.rlim_max,
                rlim_max: r.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                return want.rlim_cur;
            }
        }
        r.rlim_cur
    }
}

/// Status memfds alive at once, at most: the rest of FD_HEADROOM stays for
/// the broker's own fds (epoll, signalfd, listener, reserve, logs).
pub(super) const MAX_REPLY_FDS: usize = FD_HEADROOM - 16;

/// How many expired reservation tokens are remembered.
pub(super) const EXPIRED_MEMORY: usize = 1024;

/// How many emptied reference vectors are kept for new connections, and
/// the most references one may have room for (16 × 16 tokens: 6 KiB).
pub(super) const SPARE_REFS: usize = 16;

/// A client not known to pipeline gets a batch read every this many wakeups.
pub(super) const PIPELINE_PROBE_EVERY: u32 = 16;
