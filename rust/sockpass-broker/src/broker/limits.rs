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
    /// References (tokens, reservations included), over all clients.
    pub max_references: usize,
    /// Per-uid quotas set by flags; None: a share of the global limit.
    pub per_uid: PerUid,
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
            max_references: 262_144,
            per_uid: PerUid::default(),
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

/// Per-uid quotas given as flags (None: the default share).
#[derive(Clone, Copy, Debug, Default)]
pub struct PerUid {
    pub connections: Option<usize>,
    pub sockets: Option<usize>,
    pub references: Option<usize>,
    pub reservations: Option<usize>,
    pub status: Option<usize>,
}

/// A uid's default share of each global table: one uid at its quota leaves
/// seven eighths to the others (as dbus-daemon's per-user quotas, or
/// s6-ipcserverd's `-C` beside `-c`).
pub const UID_SHARE: usize = 8;

/// Each global table keeps this fraction (1/16) for privileged uids: other
/// uids together are refused before it is full, so root is still served
/// when many uids sit at their quotas.
pub const PRIVILEGED_RESERVE: usize = 16;

/// STATUS tables one uid may have open at once, by default.
pub const STATUS_PER_UID: usize = 4;

impl Limits {
    /// The quota of a uid without a `limit` line (the flags, or a share of
    /// each global limit as fitted).
    pub fn uid_quota(&self) -> crate::quota::Quota {
        let share = |n: usize| (n / UID_SHARE).max(1);
        let p = &self.per_uid;
        crate::quota::Quota {
            connections: p.connections.unwrap_or(share(self.max_connections)),
            sockets: p.sockets.unwrap_or(share(self.max_sockets)),
            references: p.references.unwrap_or(share(self.max_references)),
            reservations: p.reservations.unwrap_or(share(self.max_reservations)),
            status: p.status.unwrap_or(STATUS_PER_UID),
        }
    }

    /// The most of a global table (`max`) a uid may fill: all of it for a
    /// privileged uid, all but [`PRIVILEGED_RESERVE`] for others.
    pub fn global_room(max: usize, privileged: bool) -> usize {
        if privileged {
            max
        } else {
            max - max / PRIVILEGED_RESERVE
        }
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
        flag: "--max-references",
        value: "N",
        help: "references over all clients (default 262144)",
        set: |l, k, v| positive(k, v).map(|n| l.max_references = n),
    },
    LimitFlag {
        flag: "--max-connections-per-uid",
        value: "N",
        help: "connections of one uid (default 1/8 of --max-connections)",
        set: |l, k, v| positive(k, v).map(|n| l.per_uid.connections = Some(n)),
    },
    LimitFlag {
        flag: "--max-sockets-per-uid",
        value: "N",
        help: "sockets one uid's requests created (default 1/8)",
        set: |l, k, v| positive(k, v).map(|n| l.per_uid.sockets = Some(n)),
    },
    LimitFlag {
        flag: "--max-references-per-uid",
        value: "N",
        help: "references of one uid (default 1/8 of --max-references)",
        set: |l, k, v| positive(k, v).map(|n| l.per_uid.references = Some(n)),
    },
    LimitFlag {
        flag: "--max-reservations-per-uid",
        value: "N",
        help: "reservations one uid made (default 1/8)",
        set: |l, k, v| positive(k, v).map(|n| l.per_uid.reservations = Some(n)),
    },
    LimitFlag {
        flag: "--max-status-per-uid",
        value: "N",
        help: "STATUS tables of one uid open at once (default 4)",
        set: |l, k, v| positive(k, v).map(|n| l.per_uid.status = Some(n)),
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
        let head = format!("{} {}", self.flag, self.value);
        if head.len() < 27 {
            format!("  {head:<27}{}\n", self.help)
        } else {
            // Too long for the column: the help goes on the next line.
            format!("  {head}\n  {:<27}{}\n", "", self.help)
        }
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

/// Status tables (memfds) alive at once, anywhere (in the broker, in a
/// client's receive queue or fd table), at most: the rest of FD_HEADROOM
/// stays for the broker's own fds (epoll, signalfd, listener, reserve,
/// logs, inotify).
pub(super) const MAX_REPLY_FDS: usize = FD_HEADROOM - 16;

/// How many expired reservation tokens are remembered.
pub(super) const EXPIRED_MEMORY: usize = 1024;

/// How many emptied reference vectors are kept for new connections, and
/// the most references one may have room for (16 × 16 tokens: 6 KiB).
pub(super) const SPARE_REFS: usize = 16;

/// A client not known to pipeline gets a batch read every this many wakeups.
pub(super) const PIPELINE_PROBE_EVERY: u32 = 16;

/// What a loop turn reads for one uid, in message costs (one for a
/// single request, one more per 64 bytes: `conn.rs`'s `message_cost`),
/// shared among the uid's connections ready in that turn (at least one
/// each). A connection adds its part at each wakeup (saving at most one
/// part), pays for each message it reads, and once at zero waits for later
/// turns. So a uid whose many connections all pipeline cannot make a turn
/// 32 requests, or 32 batches of 170 tokens, a connection, with everyone
/// else's requests behind it: root waited 88-101 ms at the median (debug
/// build) behind 256 connections of nobody pipelining HELLOs, 25-29 ms
/// (release build) behind 64 or 256 pipelining RELEASE_MANY of 170
/// tokens; 6 ms and 1.0-1.3 ms now (`hostile_faults.rs`). As many as a
/// turn has events (`event_loop`'s 256), so clients that send one request
/// per wakeup are never held back.
pub(super) const TURN_SHARE: usize = 256;
