//! The broker: one epoll loop that accepts clients on a `SOCK_SEQPACKET`
//! listener, creates and caches bound sockets, counts references, enforces
//! share modes and hands sockets out with `SCM_RIGHTS`.
//!
//! A client's connection is its lease: when it closes, every reference it
//! holds is dropped. The loop never blocks on a client: replies that do not
//! fit in a client's socket buffer wait in a bounded per-client queue, and a
//! client whose queue is full is not read from until it drains.

use crate::create::create_socket;
use crate::error::{Error, Kind, Result};
use crate::fdpass::{recv_fds, send_fds, RecvError};
use crate::fdstore::{self, FdStore};
use crate::handoff;
use crate::holders::{Holder, Holders, Owner};
use crate::keyhash::KeyedState;
use crate::policy::{Op, Policy};
use crate::proto::{self, ty, Header, Request, SocketRequest};
use crate::share::ShareMode;
use crate::spec::SocketSpec;
use crate::sys::{self, Creds};
use crate::token::{Token, TokenBuildHasher, TokenSource};
use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

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

/// How the broker is set up.
#[derive(Clone, Debug)]
pub struct Config {
    pub limits: Limits,
    pub policy: Policy,
    /// Mode of the listening socket file.
    pub socket_mode: u32,
    /// Group of the listening socket file (None: the broker's own).
    pub socket_group: Option<u32>,
    /// Write one line per event that matters to stderr.
    pub log: bool,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            limits: Limits::default(),
            policy: Policy::builtin(),
            socket_mode: 0o666,
            socket_group: None,
            log: true,
        }
    }
}

/// The default broker socket path: `$SOCKPASS_SOCKET`, else
/// `/run/sockpass/sockpassd.sock` for root and
/// `$XDG_RUNTIME_DIR/sockpass/sockpassd.sock` for others.
pub fn default_socket_path() -> PathBuf {
    if let Some(p) = std::env::var_os("SOCKPASS_SOCKET").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/run/sockpass/sockpassd.sock");
    }
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|p| !p.is_empty()) {
        Some(d) => Path::new(&d).join("sockpass/sockpassd.sock"),
        // SAFETY: getuid cannot fail.
        None => PathBuf::from(format!("/run/user/{}/sockpass/sockpassd.sock", unsafe {
            libc::getuid()
        })),
    }
}

/// Bind the broker's listening socket at `path`: create the directory,
/// refuse if a live broker answers there, replace a stale socket file.
pub fn bind_listener(path: &Path, mode: u32) -> Result<OwnedFd> {
    bind_listener_as(path, mode, None)
}

/// [`bind_listener`], and give the socket file to `group` (its mode then
/// decides what that group may do). Bound by the hardened binder
/// ([`crate::unixsock::UnixBinder`]): no symlink is followed, and the file
/// is created with its mode and changed only through an fd to it.
pub fn bind_listener_as(path: &Path, mode: u32, group: Option<u32>) -> Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt;
    let mut b = crate::unixsock::UnixBinder::new(path.as_os_str().as_bytes())?;
    b.mode = mode & 0o777;
    b.owner = group.map(|g| (u32::MAX, g));
    b.backlog = Some(1024);
    b.existing = crate::unixsock::Existing::ReplaceStale;
    b.make_dirs = Some(0o755);
    let fd = sys::unix_socket(libc::SOCK_SEQPACKET, true).map_err(|e| Error::os(e, "socket"))?;
    b.bind(fd.as_fd()).map_err(|e| match e.errno() {
        libc::EADDRINUSE => Error::with_errno(
            Kind::AddressInUse,
            libc::EADDRINUSE,
            format!("a live broker already answers at {}", path.display()),
        ),
        _ => e,
    })?;
    Ok(fd)
}

#[derive(Debug)]
struct Entry {
    id: u64,
    spec: SocketSpec,
    fd: OwnedFd,
    port: u16,
    /// One per reference.
    holders: Holders,
    /// In the cache map (shareable); false for ephemeral and per-worker ones.
    keyed: bool,
    /// One member of a reuseport group, made for one requester.
    per_worker: bool,
    /// Unix sockets: the inode of the socket file the broker made, removed
    /// with the socket if it is still that file.
    unix_ino: Option<u64>,
    /// Its name in the systemd fd store, if it was stored there.
    store_name: Option<String>,
    /// Taken from the fd store at start: held by the broker (an anonymous
    /// reservation) until the first request for its spec claims it.
    adopted: bool,
}

/// The fd a reply carries.
enum Attach {
    /// A cached socket, by entry slot and id. The entry outlives a queued
    /// reply because the reply's token keeps a reference, so no dup is needed.
    Entry(usize, u64),
    /// An fd made for this reply (the status memfd).
    Owned(CountedFd),
}

/// An fd the broker made for a reply, counted while it lives, so the fds
/// that queued replies hold stay within the headroom under RLIMIT_NOFILE.
struct CountedFd {
    /// Always Some until `into_fd` takes it.
    fd: Option<OwnedFd>,
    live: Rc<Cell<usize>>,
}

impl CountedFd {
    fn new(fd: OwnedFd, live: &Rc<Cell<usize>>) -> CountedFd {
        live.set(live.get() + 1);
        CountedFd {
            fd: Some(fd),
            live: live.clone(),
        }
    }

    fn as_fd(&self) -> Option<BorrowedFd<'_>> {
        self.fd.as_ref().map(|f| f.as_fd())
    }

    /// The fd, no longer counted (handed over in an upgrade).
    fn into_fd(mut self) -> Option<OwnedFd> {
        self.fd.take()
    }
}

impl Drop for CountedFd {
    fn drop(&mut self) {
        self.live.set(self.live.get() - 1);
    }
}

/// Status memfds alive at once, at most: the rest of FD_HEADROOM stays for
/// the broker's own fds (epoll, signalfd, listener, reserve, logs).
const MAX_REPLY_FDS: usize = FD_HEADROOM - 16;

/// A reply waiting for the client to read.
struct Outgoing {
    bytes: Vec<u8>,
    attach: Option<Attach>,
}

struct Conn {
    fd: OwnedFd,
    id: u64,
    creds: Creds,
    default_app: Option<Rc<str>>,
    last_app: Rc<str>,
    /// The references this connection holds; each token's `TokenInfo`
    /// knows its place here, so a release takes it out in O(1).
    refs: Vec<Token>,
    outq: VecDeque<Outgoing>,
    /// EPOLLIN is off because the queue is full.
    paused: bool,
    /// Seen to send requests without waiting for replies: read in batches.
    pipelining: bool,
    wakeups: u32,
}

/// A token's places: its entry slot, its holder's position in that entry,
/// and its position in its connection's `refs` ([`NO_CONN`] while reserved).
/// One hash lookup finds all three, so a request and a release each touch
/// one hash table (the token map), not one per structure.
#[derive(Clone, Copy, Debug)]
struct TokenInfo {
    entry: usize,
    holder: u32,
    conn_pos: u32,
}

/// `TokenInfo::conn_pos` of a reference no connection holds (a reservation).
const NO_CONN: u32 = u32::MAX;

/// A spec's exact wire bytes (up to 32: an IPv6 address with a few options),
/// the key under which a cache hit is remembered.
#[derive(Clone, Copy, PartialEq, Eq)]
struct WireSpec {
    len: u8,
    bytes: [u8; 32],
}

impl WireSpec {
    fn new(b: &[u8]) -> Option<WireSpec> {
        let mut w = WireSpec {
            len: u8::try_from(b.len()).ok().filter(|&n| n <= 32)?,
            bytes: [0; 32],
        };
        w.bytes[..b.len()].copy_from_slice(b);
        Some(w)
    }
}

impl std::hash::Hash for WireSpec {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        h.write(&self.bytes[..usize::from(self.len)]);
    }
}

/// How many expired reservation tokens are remembered.
const EXPIRED_MEMORY: usize = 1024;

/// How many emptied reference vectors are kept for new connections, and
/// the most references one may have room for (16 × 16 tokens: 6 KiB).
const SPARE_REFS: usize = 16;

/// A client not known to pipeline gets a batch read every this many wakeups.
const PIPELINE_PROBE_EVERY: u32 = 16;

const EV_LISTENER: u64 = 0;
const EV_STOP: u64 = 1;
const EV_CONN_BASE: u64 = 16;

/// A slab: stable indexes, reused after removal.
struct Slab<T> {
    items: Vec<Option<T>>,
    free: Vec<usize>,
    len: usize,
}

impl<T> Slab<T> {
    fn new() -> Slab<T> {
        Slab {
            items: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }
    fn insert(&mut self, v: T) -> usize {
        self.len += 1;
        if let Some(i) = self.free.pop() {
            self.items[i] = Some(v);
            i
        } else {
            self.items.push(Some(v));
            self.items.len() - 1
        }
    }
    fn remove(&mut self, i: usize) -> Option<T> {
        let v = self.items.get_mut(i)?.take();
        if v.is_some() {
            self.len -= 1;
            self.free.push(i);
        }
        v
    }
    fn get(&self, i: usize) -> Option<&T> {
        self.items.get(i)?.as_ref()
    }
    /// Put `v` at index `i` (rebuilding a handed-over broker); `i` is free.
    /// Call `rebuild_free` after the last one.
    fn insert_at(&mut self, i: usize, v: T) {
        if self.items.len() <= i {
            self.items.resize_with(i + 1, || None);
        }
        debug_assert!(self.items[i].is_none());
        self.items[i] = Some(v);
        self.len += 1;
    }
    /// Recompute the free list after a run of `insert_at`.
    fn rebuild_free(&mut self) {
        self.free.clear();
        self.free
            .extend((0..self.items.len()).filter(|&j| self.items[j].is_none()));
    }
    fn get_mut(&mut self, i: usize) -> Option<&mut T> {
        self.items.get_mut(i)?.as_mut()
    }
    fn iter(&self) -> impl Iterator<Item = (usize, &T)> {
        self.items
            .iter()
            .enumerate()
            .filter_map(|(i, v)| v.as_ref().map(|v| (i, v)))
    }
}

/// The broker state and its event loop.
pub struct Broker {
    cfg: Config,
    listener: OwnedFd,
    epoll: OwnedFd,
    conns: Slab<Conn>,
    entries: Slab<Entry>,
    cache: HashMap<SocketSpec, usize, KeyedState>,
    /// Cache hits by the spec's wire bytes: (entry slot, entry id). The same
    /// bytes decode to the same spec, so a request whose bytes hit here is
    /// answered without decoding and canonicalizing the spec again. Checked
    /// on use (a gone entry's id no longer matches), bounded by clearing.
    hits: HashMap<WireSpec, (usize, u64), KeyedState>,
    tokens: HashMap<Token, TokenInfo, TokenBuildHasher>,
    token_src: TokenSource,
    next_conn_id: u64,
    next_entry_id: u64,
    reservations: usize,
    /// Live per-worker (reuseport group member) entries.
    per_worker_entries: usize,
    /// Keyed and per-worker entries by bound port, so a cache miss on a
    /// port nobody holds skips the scan in `same_address_entry`.
    held_ports: HashMap<u16, u32, KeyedState>,
    /// Recently expired reservation tokens, so a late pick-up is told
    /// "expired" rather than "unknown" (bounded).
    expired: VecDeque<Token>,
    /// Scratch buffers reused on the hot path.
    /// Receive buffer, `MAX_MSG` long (empty while lent to a request).
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    /// The application name a connection last named, shared by the next
    /// connection that names it too: the workers of one application
    /// connect with the same name, and each would allocate its own copy.
    app_memo: Rc<str>,
    /// Emptied `Conn::refs` vectors of closed connections, for new ones
    /// (at most [`SPARE_REFS`], each at most that long): a client that
    /// connects, asks once and goes allocates nothing for its references.
    spare_refs: Vec<Vec<Token>>,
    /// Connections refused since the last log line about it.
    refused_conns: u64,
    last_refusal_log: Option<Instant>,
    /// Refused requests: each is logged, up to a budget a second.
    refused_requests: LogBudget,
    /// An upgrade asked for (by SIGHUP through the daemon, or UPGRADE).
    upgrade: Option<PendingUpgrade>,
    /// The systemd fd store, when running under systemd with one.
    fd_store: Option<FdStore>,
    /// An fd held in reserve (`/dev/null`): out of fds, the broker closes it
    /// to accept the waiting client, tells it why and closes it, instead of
    /// leaving the listener readable and spinning on EMFILE.
    reserve: Option<OwnedFd>,
    /// Live [`CountedFd`]s (status memfds in flight).
    reply_fds: Rc<Cell<usize>>,
    /// The earliest reservation deadline once scanned (None: scan again;
    /// reset whenever reservations change).
    deadline: Option<Option<Instant>>,
    /// Our pid, for HELLO_OK and log lines (an upgrade keeps it: the new
    /// binary runs in this process).
    pid: u32,
}

/// An upgrade waiting for the daemon to carry it out.
#[derive(Clone, Debug)]
struct PendingUpgrade {
    /// The requester's connection slot and request id (None: a signal).
    from: Option<(usize, u32)>,
    /// The binary to execute (None: the daemon's default).
    exe: Option<PathBuf>,
}

/// The result of handling one request: the reply is in `wbuf`; this says
/// which fd goes with it.
struct Reply {
    attach: Option<Attach>,
}

/// The fd kept in reserve for [`Broker::shed_one_connection`].
fn open_reserve() -> Option<OwnedFd> {
    // SAFETY: open with a constant path; the result is a new fd or -1.
    let fd = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    // SAFETY: fd is a new fd when non-negative.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The file name of a process's executable, whole (comm is cut to 15
/// bytes, so two long names could pass as one SAMEAPP application).
fn exe_name(pid: i32) -> Option<String> {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    let name = exe.file_name()?.to_string_lossy();
    let name = name.strip_suffix(" (deleted)").unwrap_or(&name);
    // Application names carry no control characters (they reach logs).
    Some(
        name.chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect(),
    )
}

/// At most `LogBudget::LINES` lines a second for one kind of event.
#[derive(Debug, Default)]
struct LogBudget {
    window: Option<Instant>,
    lines: u32,
    suppressed: u64,
}

impl LogBudget {
    const LINES: u32 = 20;

    /// Whether this event may be logged, and how many were suppressed in
    /// the window that just ended (to be reported once).
    fn take(&mut self, now: Instant) -> (bool, u64) {
        let mut ended = 0;
        if self
            .window
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            ended = std::mem::take(&mut self.suppressed);
            self.window = Some(now);
            self.lines = 0;
        }
        if self.lines < LogBudget::LINES {
            self.lines += 1;
            (true, ended)
        } else {
            self.suppressed += 1;
            (false, ended)
        }
    }
}

impl Broker {
    /// A broker serving on an already-listening `SOCK_SEQPACKET` socket (from
    /// [`bind_listener`] or socket activation).
    pub fn new(listener: OwnedFd, cfg: Config) -> Result<Broker> {
        set_nonblock(&listener)?;
        // SAFETY: plain syscall.
        let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if ep < 0 {
            return Err(Error::last_os("epoll_create1"));
        }
        // SAFETY: ep is a new fd.
        let epoll = unsafe { OwnedFd::from_raw_fd(ep) };
        let b = Broker {
            cfg,
            listener,
            epoll,
            conns: Slab::new(),
            entries: Slab::new(),
            cache: HashMap::default(),
            hits: HashMap::default(),
            tokens: HashMap::default(),
            token_src: TokenSource::new(),
            next_conn_id: 1,
            next_entry_id: 1,
            reservations: 0,
            per_worker_entries: 0,
            held_ports: HashMap::default(),
            expired: VecDeque::new(),
            rbuf: vec![0u8; proto::MAX_MSG],
            wbuf: Vec::with_capacity(proto::MAX_MSG),
            app_memo: Rc::from(""),
            spare_refs: Vec::new(),
            refused_conns: 0,
            last_refusal_log: None,
            refused_requests: LogBudget::default(),
            upgrade: None,
            fd_store: None,
            reserve: open_reserve(),
            reply_fds: Rc::new(Cell::new(0)),
            deadline: None,
            pid: std::process::id(),
        };
        b.ep_ctl(
            libc::EPOLL_CTL_ADD,
            b.listener.as_raw_fd(),
            libc::EPOLLIN as u32,
            EV_LISTENER,
        )?;
        Ok(b)
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    fn log(&self, msg: std::fmt::Arguments<'_>) {
        if self.cfg.log {
            eprintln!("sockpassd[{}]: {}", self.pid, msg);
        }
    }

    fn ep_ctl(&self, op: i32, fd: i32, events: u32, data: u64) -> Result<()> {
        let mut ev = libc::epoll_event { events, u64: data };
        // SAFETY: valid epoll fd and event struct.
        if unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), op, fd, &mut ev) } < 0 {
            return Err(Error::last_os("epoll_ctl"));
        }
        Ok(())
    }

    /// Counters for status and tests.
    pub fn counters(&self) -> proto::Counters {
        proto::Counters {
            sockets: self.entries.len as u32,
            references: self.tokens.len() as u32,
            connections: self.conns.len as u32,
            reservations: self.reservations as u32,
            broker_fds: sys::count_open_fds() as u32,
        }
    }

    /// Serve until `stop` polls readable (a signalfd, an eventfd, a pipe).
    pub fn run(&mut self, stop: Option<BorrowedFd<'_>>) -> Result<()> {
        if let Some(s) = stop {
            self.ep_ctl(
                libc::EPOLL_CTL_ADD,
                s.as_raw_fd(),
                libc::EPOLLIN as u32,
                EV_STOP,
            )?;
        }
        let mut events: Vec<libc::epoll_event> = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
        loop {
            let timeout = self.next_timeout_ms();
            // SAFETY: events has room for its length.
            let n = unsafe {
                libc::epoll_wait(
                    self.epoll.as_raw_fd(),
                    events.as_mut_ptr(),
                    events.len() as i32,
                    timeout,
                )
            };
            if n < 0 {
                let e = sys::errno();
                if e == libc::EINTR {
                    continue;
                }
                return Err(Error::os(e, "epoll_wait"));
            }
            for ev in &events[..n as usize] {
                let (data, flags) = (ev.u64, ev.events);
                match data {
                    EV_STOP => {
                        if let Some(s) = stop {
                            let _ = self.ep_ctl(libc::EPOLL_CTL_DEL, s.as_raw_fd(), 0, 0);
                        }
                        return Ok(());
                    }
                    EV_LISTENER => self.accept_client(),
                    d => self.conn_event((d - EV_CONN_BASE) as usize, flags),
                }
            }
            self.expire_reservations();
            if self.upgrade.is_some() {
                // Hand over between events: every request read so far is
                // answered or queued; the rest wait in the kernel for the
                // new image.
                if let Some(s) = stop {
                    let _ = self.ep_ctl(libc::EPOLL_CTL_DEL, s.as_raw_fd(), 0, 0);
                }
                return Ok(());
            }
        }
    }

    /// The earliest reservation deadline: scanned once after reservations
    /// change, not on every turn of the loop.
    fn earliest_deadline(&mut self) -> Option<Instant> {
        if self.reservations == 0 {
            return None;
        }
        if let Some(d) = self.deadline {
            return d;
        }
        let d = self
            .entries
            .iter()
            .flat_map(|(_, e)| e.holders.iter())
            .filter_map(|h| match h.owner {
                Owner::Reserved(d) => Some(d),
                Owner::Conn(_) => None,
            })
            .min();
        self.deadline = Some(d);
        d
    }

    fn next_timeout_ms(&mut self) -> i32 {
        self.earliest_deadline().map_or(-1, |d| {
            let left = d.saturating_duration_since(Instant::now());
            (left.as_millis().min(i32::MAX as u128) as i32).saturating_add(1)
        })
    }

    fn expire_reservations(&mut self) {
        // No clock read on a turn of the loop with no reservation pending.
        let Some(first) = self.earliest_deadline() else {
            return;
        };
        let now = Instant::now();
        if first > now {
            return;
        }
        let mut expired = Vec::new();
        for (_, e) in self.entries.iter() {
            for h in &e.holders {
                if let Owner::Reserved(d) = h.owner {
                    if d <= now {
                        expired.push(h.token);
                    }
                }
            }
        }
        for t in expired {
            self.drop_reference(&t);
            if self.expired.len() >= EXPIRED_MEMORY {
                self.expired.pop_front();
            }
            self.expired.push_back(t);
            self.log(format_args!(
                "reservation {} expired uncollected; reference dropped",
                t.short()
            ));
        }
    }

    fn accept_client(&mut self) {
        // Refused clients (the connection limit, no fds) do not count.
        for _ in 0..64 {
            // SAFETY: accept4 returns a new fd we own, or -1.
            let r = unsafe {
                libc::accept4(
                    self.listener.as_raw_fd(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                )
            };
            if r < 0 {
                let e = sys::errno();
                match e {
                    libc::EAGAIN | libc::EINTR | libc::ECONNABORTED => return,
                    libc::EMFILE | libc::ENFILE => {
                        self.note_refusal("out of file descriptors");
                        if !self.shed_one_connection(e) {
                            return;
                        }
                        continue;
                    }
                    _ => {
                        self.log(format_args!("accept failed: {}", crate::error::strerror(e)));
                        return;
                    }
                }
            }
            // SAFETY: r is a new fd.
            let fd = unsafe { OwnedFd::from_raw_fd(r) };
            if self.conns.len >= self.cfg.limits.max_connections {
                // Closing at once keeps the backlog from filling with clients
                // that would only wait. The ERROR with id 0 (best effort)
                // tells the client why instead of a bare hang-up.
                let e = Error::with_errno(
                    Kind::LimitReached,
                    libc::EUSERS,
                    format!(
                        "the broker serves {} connections, its limit",
                        self.conns.len
                    ),
                );
                let mut msg = Vec::new();
                proto::encode_error(&mut msg, 0, &e);
                let _ = send_fds(fd.as_fd(), &msg, &[], libc::MSG_DONTWAIT);
                drop(fd);
                self.note_refusal("connection limit reached");
                continue;
            }
            let creds = sys::peer_creds(&fd).unwrap_or_default();
            let id = self.next_conn_id;
            self.next_conn_id += 1;
            let conn = self.new_conn(fd, id, creds);
            let slot = self.conns.insert(conn);
            let raw = self.conns.get(slot).unwrap().fd.as_raw_fd();
            if self
                .ep_ctl(
                    libc::EPOLL_CTL_ADD,
                    raw,
                    (libc::EPOLLIN | libc::EPOLLRDHUP) as u32,
                    EV_CONN_BASE + slot as u64,
                )
                .is_err()
            {
                self.conns.remove(slot);
                return;
            }
            // A client sends its first request right after connecting, so it
            // is usually waiting already: read it now rather than after one
            // more epoll_wait (if not, one recvmsg says EAGAIN).
            self.read_requests(slot);
            // One client per wakeup: the listener is level-triggered, so
            // more waiting wake the loop again, and the usual single client
            // costs no accept4 that fails with EAGAIN.
            return;
        }
    }

    /// A new connection, starting with the last application name named
    /// and a spare reference list (neither allocates).
    fn new_conn(&mut self, fd: OwnedFd, id: u64, creds: Creds) -> Conn {
        Conn {
            fd,
            id,
            creds,
            default_app: None,
            last_app: self.app_memo.clone(),
            refs: self.spare_refs.pop().unwrap_or_default(),
            outq: VecDeque::new(),
            paused: false,
            pipelining: false,
            wakeups: 0,
        }
    }

    /// Out of fds (`errno`) with a client waiting: spend the reserve fd to
    /// accept it, send it an ERROR saying so and close it, then take the
    /// reserve back. False when there is no reserve to spend (then the
    /// listener stays readable and the next loop turn tries again).
    fn shed_one_connection(&mut self, errno: i32) -> bool {
        let Some(r) = self.reserve.take() else {
            self.reserve = open_reserve();
            return false;
        };
        drop(r);
        // SAFETY: accept4 returns a new fd we own, or -1.
        let a = unsafe {
            libc::accept4(
                self.listener.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            )
        };
        if a >= 0 {
            // SAFETY: a is a new fd.
            let fd = unsafe { OwnedFd::from_raw_fd(a) };
            let e = Error::with_errno(
                Kind::LimitReached,
                errno,
                "the broker is out of file descriptors; try again later",
            );
            let mut msg = Vec::new();
            proto::encode_error(&mut msg, 0, &e);
            let _ = send_fds(fd.as_fd(), &msg, &[], libc::MSG_DONTWAIT);
        }
        self.reserve = open_reserve();
        a >= 0 && self.reserve.is_some()
    }

    /// One line per refused request, so an operator sees why a service got
    /// nothing; past the budget a client flooding bad requests costs one
    /// summary line a second instead.
    fn log_refusal(&mut self, slot: usize, e: &Error) {
        if !self.cfg.log {
            return;
        }
        let (allowed, suppressed) = self.refused_requests.take(Instant::now());
        if suppressed > 0 {
            self.log(format_args!(
                "{suppressed} more refused request(s) not logged in the last second"
            ));
        }
        if allowed {
            let c = self.conns.get(slot).unwrap();
            self.log(format_args!(
                "refused request from pid {} uid {}: {}",
                c.creds.pid, c.creds.uid, e
            ));
        }
    }

    fn note_refusal(&mut self, why: &str) {
        self.refused_conns += 1;
        let now = Instant::now();
        if self
            .last_refusal_log
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            self.log(format_args!(
                "refused {} connection(s): {why} ({} connections open)",
                self.refused_conns, self.conns.len
            ));
            self.refused_conns = 0;
            self.last_refusal_log = Some(now);
        }
    }

    fn conn_event(&mut self, slot: usize, flags: u32) {
        if self.conns.get(slot).is_none() {
            return;
        }
        if flags & libc::EPOLLOUT as u32 != 0 && !self.flush(slot) {
            return;
        }
        if flags & libc::EPOLLIN as u32 != 0 {
            self.read_requests(slot);
        } else if flags & (libc::EPOLLHUP | libc::EPOLLERR | libc::EPOLLRDHUP) as u32 != 0 {
            // Nothing left to read and the peer is gone.
            self.drop_conn(slot, "hung up");
        }
    }

    fn read_requests(&mut self, slot: usize) {
        // A synchronous client cannot send its next request before reading
        // this reply, so reading on after one message mostly buys a recvmsg
        // that returns EAGAIN. Read one per wakeup (level-triggered epoll
        // wakes again if more wait) unless the client pipelines; probe now
        // and then to notice when it starts.
        let limit = match self.conns.get_mut(slot) {
            Some(c) => {
                c.wakeups = c.wakeups.wrapping_add(1);
                if c.pipelining || c.wakeups % PIPELINE_PROBE_EVERY == 0 {
                    self.cfg.limits.batch
                } else {
                    1
                }
            }
            None => return,
        };
        let mut got = 0;
        if self.rbuf.len() < proto::MAX_MSG {
            // Still lent out: a request's handling read again.
            self.rbuf = vec![0u8; proto::MAX_MSG];
        }
        for _ in 0..limit {
            let Some(c) = self.conns.get(slot) else {
                return;
            };
            if c.paused {
                return;
            }
            let res = recv_fds(
                c.fd.as_fd(),
                &mut self.rbuf[..],
                crate::fdpass::MAX_FDS,
                libc::MSG_DONTWAIT,
            );
            let (len, unexpected_fds) = match res {
                Ok(r) if r.len == 0 && r.fds.is_empty() => {
                    self.drop_conn(slot, "disconnected");
                    return;
                }
                Ok(r) => (r.len, r.fds.len()),
                Err(RecvError::Os(libc::EAGAIN)) => {
                    if let Some(c) = self.conns.get_mut(slot) {
                        c.pipelining = got > 1;
                    }
                    return;
                }
                Err(RecvError::Os(e)) => {
                    let why = format!("receive failed: {}", crate::error::strerror(e));
                    self.drop_conn(slot, &why);
                    return;
                }
                Err(RecvError::TruncatedPayload) => {
                    let id = Header::parse(&self.rbuf[..]).map(|h| h.id).unwrap_or(0);
                    let e =
                        Error::protocol(format!("message larger than {} bytes", proto::MAX_MSG));
                    self.reply_error(slot, id, &e);
                    continue;
                }
                Err(RecvError::TruncatedFds) => {
                    let id = Header::parse(&self.rbuf[..]).map(|h| h.id).unwrap_or(0);
                    let e = Error::bad_request("file descriptors attached to a request are not accepted (closed; some were lost to MSG_CTRUNC)");
                    self.reply_error(slot, id, &e);
                    continue;
                }
            };
            got += 1;
            // Any fds that came with the request were closed when `res` was
            // consumed above; the request is refused as a whole.
            let msg_len = len;
            let header = match Header::parse(&self.rbuf[..msg_len]) {
                Ok(h) => h,
                Err(e) => {
                    // Not even a header: this peer does not speak the protocol.
                    self.reply_error(slot, 0, &e);
                    self.drop_conn(slot, "sent a message without a valid header");
                    return;
                }
            };
            if unexpected_fds > 0 {
                let e = Error::bad_request(format!(
                    "{unexpected_fds} file descriptor(s) attached to a request are not accepted (closed)"
                ));
                self.reply_error(slot, header.id, &e);
                continue;
            }
            if header.version != proto::VERSION {
                let e = Error::protocol(format!(
                    "unsupported protocol version {} (this broker speaks version {})",
                    header.version,
                    proto::VERSION
                ));
                self.reply_error(slot, header.id, &e);
                continue;
            }
            // Lend the buffer out so the request can borrow it while self
            // is mutated (a copy into a zeroed 1 KiB array cost a tenth of
            // the broker's instructions per request).
            let msg = std::mem::take(&mut self.rbuf);
            let payload = &msg[proto::HEADER_LEN..msg_len];
            let known = if header.ty == ty::REQUEST {
                self.request_by_wire(slot, header.id, payload)
            } else {
                None
            };
            match known {
                Some(res) => self.answer(slot, header.id, res),
                None => match proto::decode_request(&header, payload) {
                    Ok(req) => self.handle(slot, header.id, req),
                    Err(e) => self.reply_error(slot, header.id, &e),
                },
            }
            self.rbuf = msg;
        }
        // A full batch without running dry: the client pipelines.
        if limit > 1 {
            if let Some(c) = self.conns.get_mut(slot) {
                c.pipelining = true;
            }
        }
    }

    fn handle(&mut self, slot: usize, id: u32, req: Request<'_>) {
        let res = match req {
            Request::Hello {
                min_version,
                max_version,
            } => {
                if min_version > proto::VERSION || max_version < proto::VERSION {
                    Err(Error::protocol(format!(
                        "client speaks versions {min_version}..={max_version}; this broker speaks {}",
                        proto::VERSION
                    )))
                } else {
                    proto::begin(&mut self.wbuf, ty::HELLO_OK, id);
                    self.wbuf.extend_from_slice(&[proto::VERSION, 0, 0, 0]);
                    self.wbuf
                        .extend_from_slice(&(proto::MAX_MSG as u32).to_le_bytes());
                    self.wbuf.extend_from_slice(&self.pid.to_le_bytes());
                    Ok(Reply { attach: None })
                }
            }
            Request::Socket(r) => self.request_socket(slot, id, r),
            Request::Release(t) => self.release(slot, id, &t),
            Request::ReleaseMany(ts) => self.release_many(slot, id, ts),
            Request::Pickup(t) => self.pickup(slot, id, &t),
            Request::Status => self.status(id),
            Request::Upgrade(exe) => self.ask_upgrade(slot, id, exe),
        };
        self.answer(slot, id, res);
    }

    /// Send a request's reply, or its error.
    fn answer(&mut self, slot: usize, id: u32, res: Result<Reply>) {
        match res {
            // An accepted UPGRADE is answered once the upgrade is done.
            Ok(_)
                if self
                    .upgrade
                    .as_ref()
                    .is_some_and(|u| u.from == Some((slot, id))) => {}
            Ok(reply) => {
                let bytes = std::mem::take(&mut self.wbuf);
                self.send(slot, bytes, reply.attach);
            }
            Err(e) => {
                self.log_refusal(slot, &e);
                self.reply_error(slot, id, &e);
            }
        }
    }

    fn ask_upgrade(&mut self, slot: usize, id: u32, exe: &str) -> Result<Reply> {
        let uid = self.conns.get(slot).unwrap().creds.uid;
        // SAFETY: geteuid cannot fail.
        let me = unsafe { libc::geteuid() };
        if uid != 0 && uid != me {
            return Err(Error::with_errno(
                Kind::NotAllowed,
                libc::EPERM,
                format!("only root or uid {me} may upgrade the broker"),
            ));
        }
        if self.upgrade.is_some() {
            return Err(Error::with_errno(
                Kind::LimitReached,
                libc::EBUSY,
                "an upgrade is already under way",
            ));
        }
        if !exe.is_empty() && !exe.starts_with('/') {
            return Err(Error::bad_request(format!(
                "upgrade binary {exe:?} must be an absolute path"
            )));
        }
        self.upgrade = Some(PendingUpgrade {
            from: Some((slot, id)),
            exe: (!exe.is_empty()).then(|| PathBuf::from(exe)),
        });
        Ok(Reply { attach: None })
    }

    /// Ask for an upgrade (on SIGHUP); false if one is already pending.
    pub fn request_upgrade(&mut self) -> bool {
        if self.upgrade.is_some() {
            return false;
        }
        self.upgrade = Some(PendingUpgrade {
            from: None,
            exe: None,
        });
        true
    }

    /// The pending upgrade, if any: `Some(binary asked for)`, where an inner
    /// None means the daemon's default.
    pub fn pending_upgrade(&self) -> Option<Option<PathBuf>> {
        self.upgrade.as_ref().map(|u| u.exe.clone())
    }

    /// End the pending upgrade: answer its requester with UPGRADED (this is
    /// the new image) or the error (the upgrade was refused or failed).
    pub fn finish_upgrade(&mut self, res: Result<()>) {
        let Some(u) = self.upgrade.take() else {
            return;
        };
        match &res {
            Ok(()) => self.log(format_args!(
                "upgraded in place (version {}): {} connections, {} sockets, {} references, {} queued replies kept",
                env!("CARGO_PKG_VERSION"),
                self.conns.len,
                self.entries.len,
                self.tokens.len(),
                self.conns.iter().map(|(_, c)| c.outq.len()).sum::<usize>()
            )),
            Err(e) => self.log(format_args!("upgrade refused: {e}")),
        }
        let Some((slot, id)) = u.from else { return };
        if self.conns.get(slot).is_none() {
            return;
        }
        match res {
            Ok(()) => {
                self.wbuf.clear();
                proto::begin(&mut self.wbuf, ty::UPGRADED, id);
                self.wbuf.extend_from_slice(&self.pid.to_le_bytes());
                let bytes = std::mem::take(&mut self.wbuf);
                self.send(slot, bytes, None);
            }
            Err(e) => self.reply_error(slot, id, &e),
        }
    }

    /// Flatten the broker for [`handoff::exec`] (or a rebuild in place).
    pub fn into_state(self, activated: bool) -> (handoff::State, Config) {
        let upgrade_from = self
            .upgrade
            .as_ref()
            .and_then(|u| u.from)
            .map(|(s, id)| (s as u64, id));
        let now = Instant::now();
        let mut entries = Vec::new();
        let mut ent_slab = self.entries;
        let mut slots: Vec<usize> = ent_slab.iter().map(|(i, _)| i).collect();
        slots.sort_unstable();
        for slot in slots {
            let e = ent_slab.remove(slot).unwrap();
            let holders = e
                .holders
                .iter()
                .map(|h| handoff::HolderState {
                    token: h.token,
                    conn_slot: match h.owner {
                        Owner::Conn(c) => Some(c as u64),
                        Owner::Reserved(_) => None,
                    },
                    reserved_ms: match h.owner {
                        Owner::Conn(_) => 0,
                        Owner::Reserved(d) => d.saturating_duration_since(now).as_millis() as u64,
                    },
                    share: h.share.wire(),
                    app: h.app.to_string(),
                    creds: h.creds,
                    conn_id: h.conn_id,
                })
                .collect();
            entries.push(handoff::EntryState {
                slot: slot as u64,
                id: e.id,
                spec: e.spec.to_string(),
                fd: e.fd,
                port: e.port,
                keyed: e.keyed,
                per_worker: e.per_worker,
                unix_ino: e.unix_ino,
                store_name: e.store_name,
                adopted: e.adopted,
                holders,
            });
        }
        let mut conns = Vec::new();
        let mut conn_slab = self.conns;
        let mut slots: Vec<usize> = conn_slab.iter().map(|(i, _)| i).collect();
        slots.sort_unstable();
        for slot in slots {
            let c = conn_slab.remove(slot).unwrap();
            let outq = c
                .outq
                .into_iter()
                .map(|o| {
                    let a = match o.attach {
                        None => handoff::AttachState::None,
                        Some(Attach::Entry(s, id)) => handoff::AttachState::Entry(s as u64, id),
                        Some(Attach::Owned(fd)) => match fd.into_fd() {
                            Some(fd) => handoff::AttachState::Owned(fd),
                            None => handoff::AttachState::None,
                        },
                    };
                    (o.bytes, a)
                })
                .collect();
            conns.push(handoff::ConnState {
                slot: slot as u64,
                fd: c.fd,
                id: c.id,
                creds: c.creds,
                default_app: c.default_app.map(|a| a.to_string()),
                last_app: c.last_app.to_string(),
                tokens: c.refs,
                outq,
                pipelining: c.pipelining,
            });
        }
        let st = handoff::State {
            listener: self.listener,
            activated,
            next_conn_id: self.next_conn_id,
            next_entry_id: self.next_entry_id,
            next_token_seq: self.token_src.next_sequence(),
            conns,
            entries,
            expired: self.expired.into_iter().collect(),
            upgrade_from,
        };
        (st, self.cfg)
    }

    /// Rebuild a broker from handed-over state. A pending upgrade stays
    /// pending: answer it with [`Broker::finish_upgrade`].
    pub fn from_state(st: handoff::State, cfg: Config) -> Result<Broker> {
        let mut b = Broker::new(st.listener, cfg)?;
        b.next_conn_id = st.next_conn_id;
        b.next_entry_id = st.next_entry_id;
        b.token_src = TokenSource::with_next_sequence(st.next_token_seq);
        b.expired = st.expired.into_iter().collect();
        let now = Instant::now();
        for e in st.entries {
            let spec: SocketSpec = e.spec.parse()?;
            let mut holders = Holders::default();
            for h in e.holders {
                let owner = match h.conn_slot {
                    Some(c) => Owner::Conn(c as usize),
                    None => {
                        b.reservations += 1;
                        b.deadline = None;
                        Owner::Reserved(now + Duration::from_millis(h.reserved_ms))
                    }
                };
                let pos = holders.len() as u32;
                b.tokens.insert(
                    h.token,
                    TokenInfo {
                        entry: e.slot as usize,
                        holder: pos,
                        conn_pos: NO_CONN,
                    },
                );
                holders.push(Holder {
                    token: h.token,
                    owner,
                    share: ShareMode::from_wire(h.share)?,
                    app: Rc::from(h.app.as_str()),
                    creds: h.creds,
                    conn_id: h.conn_id,
                });
            }
            if e.keyed {
                b.cache.insert(spec.clone(), e.slot as usize);
            }
            if e.per_worker {
                b.per_worker_entries += 1;
            }
            b.entries.insert_at(
                e.slot as usize,
                Entry {
                    id: e.id,
                    spec,
                    fd: e.fd,
                    port: e.port,
                    holders,
                    keyed: e.keyed,
                    per_worker: e.per_worker,
                    unix_ino: e.unix_ino,
                    store_name: e.store_name,
                    adopted: e.adopted,
                },
            );
            if e.keyed || e.per_worker {
                *b.held_ports.entry(e.port).or_insert(0) += 1;
            }
        }
        for c in st.conns {
            let slot = c.slot as usize;
            set_nonblock(&c.fd)?;
            let outq: VecDeque<Outgoing> = c
                .outq
                .into_iter()
                .map(|(bytes, a)| Outgoing {
                    bytes,
                    attach: match a {
                        handoff::AttachState::None => None,
                        handoff::AttachState::Entry(s, id) => Some(Attach::Entry(s as usize, id)),
                        handoff::AttachState::Owned(fd) => {
                            Some(Attach::Owned(CountedFd::new(fd, &b.reply_fds)))
                        }
                    },
                })
                .collect();
            let paused = outq.len() >= b.cfg.limits.max_queued_replies;
            let mut ev = libc::EPOLLRDHUP;
            if !outq.is_empty() {
                ev |= libc::EPOLLOUT;
            }
            if !paused {
                ev |= libc::EPOLLIN;
            }
            let raw = c.fd.as_raw_fd();
            b.conns.insert_at(
                slot,
                Conn {
                    fd: c.fd,
                    id: c.id,
                    creds: c.creds,
                    default_app: c.default_app.map(|a| Rc::from(a.as_str())),
                    last_app: Rc::from(c.last_app.as_str()),
                    // Filled from the holders below: they say who holds what.
                    refs: Vec::new(),
                    outq,
                    paused,
                    pipelining: c.pipelining,
                    wakeups: 0,
                },
            );
            b.ep_ctl(
                libc::EPOLL_CTL_ADD,
                raw,
                ev as u32,
                EV_CONN_BASE + slot as u64,
            )?;
        }
        b.entries.rebuild_free();
        b.conns.rebuild_free();
        // Each connection's list, from its holders (positions in slot order).
        for (_, e) in b.entries.iter() {
            for h in &e.holders {
                if let Owner::Conn(slot) = h.owner {
                    if let (Some(c), Some(info)) =
                        (b.conns.get_mut(slot), b.tokens.get_mut(&h.token))
                    {
                        info.conn_pos = c.refs.len() as u32;
                        c.refs.push(h.token);
                    }
                }
            }
        }
        // Pending even for a signal, so finish_upgrade logs the outcome.
        b.upgrade = Some(PendingUpgrade {
            from: st.upgrade_from.map(|(slot, id)| (slot as usize, id)),
            exe: None,
        });
        Ok(b)
    }

    /// Keep cached sockets in the systemd fd store from now on; the ones
    /// already cached and not yet stored are pushed now.
    pub fn use_fd_store(&mut self, st: FdStore) {
        self.fd_store = Some(st);
        let slots: Vec<usize> = self
            .entries
            .iter()
            .filter(|(_, e)| e.keyed && e.store_name.is_none())
            .map(|(i, _)| i)
            .collect();
        for es in slots {
            self.store_entry(es);
        }
    }

    /// Push a cached socket to the fd store (best effort: a failure is
    /// logged and only costs the socket's survival of a crash).
    fn store_entry(&mut self, es: usize) {
        let Some(st) = &self.fd_store else { return };
        let e = self.entries.get(es).unwrap();
        let Some(name) = fdstore::fd_name(e.id, &e.spec.to_string()) else {
            self.log(format_args!(
                "fd store: {} has too long a name to store",
                e.spec
            ));
            return;
        };
        match st.store(&name, e.fd.as_fd()) {
            Ok(()) => self.entries.get_mut(es).unwrap().store_name = Some(name),
            Err(err) => self.log(format_args!("fd store: cannot store {name}: {err}")),
        }
    }

    /// Re-populate the cache with sockets from the fd store (after a crash).
    /// Each is held by an anonymous reservation: the first request for its
    /// spec claims it (it is served from the cache, same socket), and one
    /// nobody asks for within the reservation lifetime is closed. Returns
    /// how many were adopted; duplicates and unparsable ones are closed.
    pub fn adopt_stored(&mut self, stored: Vec<(String, String, OwnedFd)>) -> usize {
        let mut n = 0;
        for (name, spec, fd) in stored {
            let spec: SocketSpec = match spec.parse::<SocketSpec>() {
                Ok(s) => s.canonical(),
                Err(err) => {
                    self.log(format_args!("fd store: dropping {name}: {err}"));
                    self.unstore(&name);
                    continue;
                }
            };
            if spec.is_ephemeral() || self.cache.contains_key(&spec) {
                self.unstore(&name);
                continue;
            }
            let port = if spec.proto.is_unix() {
                0
            } else {
                sys::local_port(&fd).unwrap_or(spec.port)
            };
            let Ok(token) = self.token_src.make() else {
                continue;
            };
            let eid = self.next_entry_id;
            self.next_entry_id += 1;
            let holder = Holder {
                token,
                owner: Owner::Reserved(Instant::now() + self.cfg.limits.reservation_ttl),
                share: ShareMode::Any,
                app: Rc::from("(fd store)"),
                creds: Creds::default(),
                conn_id: 0,
            };
            let unix_ino = spec
                .proto
                .is_unix()
                .then(|| crate::unixsock::path_ino(&spec.path))
                .flatten();
            let es = self.entries.insert(Entry {
                id: eid,
                spec: spec.clone(),
                fd,
                port,
                holders: Holders::with_capacity(1),
                keyed: true,
                per_worker: false,
                unix_ino,
                store_name: Some(name),
                adopted: true,
            });
            self.cache.insert(spec, es);
            *self.held_ports.entry(port).or_insert(0) += 1;
            self.add_ref(es, holder);
            self.reservations += 1;
            self.deadline = None;
            n += 1;
        }
        if n > 0 {
            self.log(format_args!(
                "adopted {n} socket(s) from the fd store; each is kept for {:?} unless requested",
                self.cfg.limits.reservation_ttl
            ));
        }
        n
    }

    fn unstore(&self, name: &str) {
        if let Some(st) = &self.fd_store {
            let _ = st.remove(name);
        }
    }

    /// A request for an adopted socket's spec: drop the broker's own
    /// reference so the requester gets it as if it were freshly cached.
    fn claim_adopted(&mut self, es: usize) {
        let Some(e) = self.entries.get_mut(es) else {
            return;
        };
        if !e.adopted {
            return;
        }
        e.adopted = false;
        let mine: Vec<Token> = e
            .holders
            .iter()
            .filter(|h| h.conn_id == 0 && matches!(h.owner, Owner::Reserved(_)))
            .map(|h| h.token)
            .collect();
        for t in mine {
            self.remove_ref(&t);
            self.reservations -= 1;
            self.deadline = None;
        }
    }

    fn app_for(&mut self, slot: usize, app: &str) -> Rc<str> {
        let c = self.conns.get_mut(slot).unwrap();
        if app.is_empty() {
            if let Some(d) = &c.default_app {
                return d.clone();
            }
            let name = exe_name(c.creds.pid)
                .or_else(|| {
                    // No exe link (a kernel thread, or not ours to read):
                    // comm, which the kernel cuts to 15 bytes.
                    std::fs::read_to_string(format!("/proc/{}/comm", c.creds.pid))
                        .map(|s| s.trim_end().to_string())
                        .ok()
                })
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| format!("pid{}", c.creds.pid));
            let rc: Rc<str> = Rc::from(name.as_str());
            c.default_app = Some(rc.clone());
            return rc;
        }
        if &*c.last_app != app {
            if &*self.app_memo != app {
                self.app_memo = Rc::from(app);
            }
            c.last_app = self.app_memo.clone();
        }
        c.last_app.clone()
    }

    fn request_socket(&mut self, slot: usize, id: u32, r: SocketRequest<'_>) -> Result<Reply> {
        let creds = self.conns.get(slot).unwrap().creds;
        self.cfg.policy.check(&creds, &r.spec, r.share)?;
        let reserve = r.flags & proto::REQ_RESERVE != 0;
        let per_worker = r.flags & proto::REQ_PER_WORKER != 0;
        if reserve && self.reservations >= self.cfg.limits.max_reservations {
            return Err(Error::with_errno(
                Kind::LimitReached,
                libc::EUSERS,
                format!("{} reservations are pending, the limit", self.reservations),
            ));
        }
        if !reserve {
            self.refs_room(slot)?;
        }
        let app = self.app_for(slot, r.app);
        let spec = r.spec.into_canonical();
        let conn_id = self.conns.get(slot).unwrap().id;
        let owner = if reserve {
            Owner::Reserved(Instant::now() + self.cfg.limits.reservation_ttl)
        } else {
            Owner::Conn(slot)
        };
        let holder = |token| Holder {
            token,
            owner,
            share: r.share,
            app: app.clone(),
            creds,
            conn_id,
        };
        if per_worker {
            if spec.options.reuseport != Some(true) {
                return Err(Error::bad_request(format!(
                    "per-worker sockets need reuseport=1 ({spec} has reuseport off)"
                )));
            }
            if spec.is_ephemeral() {
                return Err(Error::bad_request(
                    "per-worker sockets need a fixed port: a reuseport group is one port",
                ));
            }
        }
        // A cached socket with the same identity?
        let cached = if spec.is_ephemeral() {
            None
        } else {
            self.cache.get(&spec).copied()
        };
        if let Some(es) = cached {
            self.claim_adopted(es);
        }
        if !spec.is_ephemeral() {
            self.check_sharing(&spec, r.share, &app, creds.uid, cached)?;
        }
        let (entry_slot, cached_hit) = match cached {
            Some(es) if !per_worker => (es, true),
            _ => {
                if !spec.is_ephemeral() {
                    if let Some(other) = self.same_address_entry(&spec) {
                        let opt = other.spec.differing_option(&spec).unwrap_or("options");
                        return Err(Error::with_errno(
                            Kind::ShareConflict,
                            libc::EADDRINUSE,
                            format!(
                                "{} is held with a different {opt} than requested ({spec})",
                                other.spec
                            ),
                        ));
                    }
                }
                if self.entries.len >= self.cfg.limits.max_sockets {
                    return Err(Error::with_errno(
                        Kind::LimitReached,
                        libc::EMFILE,
                        format!("the broker holds {} sockets, its limit", self.entries.len),
                    ));
                }
                let created = create_socket(&spec)?;
                let eid = self.next_entry_id;
                self.next_entry_id += 1;
                // The spec stays as requested (port 0 for an ephemeral
                // socket), so status never shows an ephemeral socket under
                // the identity of a cached one the kernel's pick collides with.
                let stored = spec.clone();
                let keyed = !spec.is_ephemeral() && !per_worker;
                let es = self.entries.insert(Entry {
                    id: eid,
                    spec: stored,
                    fd: created.fd,
                    port: created.port,
                    holders: Holders::with_capacity(1),
                    keyed,
                    per_worker,
                    unix_ino: spec
                        .proto
                        .is_unix()
                        .then(|| crate::unixsock::path_ino(&spec.path))
                        .flatten(),
                    store_name: None,
                    adopted: false,
                });
                if keyed {
                    self.cache.insert(spec, es);
                    self.store_entry(es);
                }
                if per_worker {
                    self.per_worker_entries += 1;
                }
                if keyed || per_worker {
                    *self.held_ports.entry(created.port).or_insert(0) += 1;
                }
                (es, false)
            }
        };
        if cached_hit && r.flags == 0 {
            self.remember_hit(r.wire, entry_slot);
        }
        self.grant(id, entry_slot, holder, reserve, cached_hit)
    }

    /// Make a reference to entry `es` (its holder is `mk(token)`) and encode
    /// the reply: RESERVED for a reservation, else SOCKET with the fd.
    fn grant(
        &mut self,
        id: u32,
        es: usize,
        mk: impl FnOnce(Token) -> Holder,
        reserve: bool,
        cached_hit: bool,
    ) -> Result<Reply> {
        let token = match self.token_src.make() {
            Ok(t) => t,
            Err(e) => {
                self.close_if_unheld(es);
                return Err(e);
            }
        };
        self.add_ref(es, mk(token));
        let e = self.entries.get(es).unwrap();
        let (eid, port) = (e.id, e.port);
        if reserve {
            // Held by nobody until picked up; the broker keeps the reference.
            self.reservations += 1;
            self.deadline = None;
            proto::encode_socket_reply(&mut self.wbuf, ty::RESERVED, id, &token, port, cached_hit);
            return Ok(Reply { attach: None });
        }
        proto::encode_socket_reply(&mut self.wbuf, ty::SOCKET, id, &token, port, cached_hit);
        Ok(Reply {
            attach: Some(Attach::Entry(es, eid)),
        })
    }

    /// Remember that a plain request's spec bytes hit entry `es`.
    fn remember_hit(&mut self, wire: &[u8], es: usize) {
        let (Some(w), Some(e)) = (WireSpec::new(wire), self.entries.get(es)) else {
            return;
        };
        // Bounded: entries that went leave their keys behind until the
        // table outgrows the cache and starts over.
        if self.hits.len() >= 2 * self.cache.len() + 64 && !self.hits.contains_key(&w) {
            self.hits.clear();
        }
        self.hits.insert(w, (es, e.id));
    }

    /// A plain REQUEST (no flags) whose spec bytes hit the cache before,
    /// answered without decoding the spec again: the same checks as
    /// `request_socket` on a cache hit, against the cached spec (the
    /// canonical form of what these bytes decode to). None when it does not
    /// apply or would be refused: the full path then decides, and words any
    /// refusal exactly as it always does.
    fn request_by_wire(&mut self, slot: usize, id: u32, payload: &[u8]) -> Option<Result<Reply>> {
        let [share, 0, n, rest @ ..] = payload else {
            return None;
        };
        let (app, wire) = rest.split_at_checked(usize::from(*n))?;
        let &(es, eid) = self.hits.get(&WireSpec::new(wire)?)?;
        let e = self.entries.get(es).filter(|e| e.id == eid && !e.adopted)?;
        let share = ShareMode::from_wire(*share).ok()?;
        let app = proto::app_name(app).ok()?;
        let c = self.conns.get(slot)?;
        let (creds, conn_id) = (c.creds, c.id);
        if self.refs_room(slot).is_err() || self.cfg.policy.check(&creds, &e.spec, share).is_err() {
            return None;
        }
        // Sharing is judged on the name the reference will carry (an empty
        // one is the client's executable's), as on the full path.
        let app = self.app_for(slot, app);
        let spec = &self.entries.get(es)?.spec;
        if self
            .check_sharing(spec, share, &app, creds.uid, Some(es))
            .is_err()
        {
            return None;
        }
        let holder = |token| Holder {
            token,
            owner: Owner::Conn(slot),
            share,
            app,
            creds,
            conn_id,
        };
        Some(self.grant(id, es, holder, false, true))
    }

    /// Does a request `(share, app)` from `uid` for `spec` agree with every
    /// holder of the socket (or reuseport group) it would join? Both
    /// directions; across uids only `any` with the policy's consent.
    fn check_sharing(
        &self,
        spec: &SocketSpec,
        share: ShareMode,
        app: &str,
        uid: u32,
        cached: Option<usize>,
    ) -> Result<()> {
        let keyed = cached.and_then(|es| self.entries.get(es));
        // Per-worker members are scanned only while some exist, so the plain
        // cached path stays one hash lookup. (Not even an iterator over the
        // slab: after many sockets went, its first live slot can be
        // thousands of empty ones in, which cost B2 4.5 µs.)
        let group = (self.per_worker_entries > 0)
            .then(|| {
                self.entries
                    .iter()
                    .map(|(_, e)| e)
                    .filter(|e| e.per_worker && e.spec == *spec)
            })
            .into_iter()
            .flatten();
        let across = self.cfg.policy.share_across_uids;
        for e in keyed.into_iter().chain(group) {
            if let Some((h, huid)) = e.holders.find_incompatible(share, app, uid, across) {
                return Err(h.refusal(&e.spec, huid, (share, app, uid), across));
            }
        }
        Ok(())
    }

    /// A socket the broker holds at the same address with other options.
    fn same_address_entry(&self, spec: &SocketSpec) -> Option<&Entry> {
        // Only reached on a cache miss for a specific port. Most misses are
        // for a port nobody holds: O(1); otherwise scan, port first.
        if !self.held_ports.contains_key(&spec.port) {
            return None;
        }
        self.entries.iter().map(|(_, e)| e).find(|e| {
            (e.keyed || e.per_worker)
                && e.port == spec.port
                && e.spec.same_address(spec)
                && e.spec != *spec
        })
    }

    /// Drop a removed entry from the indexes.
    fn forget_entry(&mut self, e: &Entry) {
        if let (Some(st), Some(name)) = (&self.fd_store, &e.store_name) {
            if let Err(err) = st.remove(name) {
                self.log(format_args!("fd store: cannot remove {name}: {err}"));
            }
        }
        if let Some(ino) = e.unix_ino {
            // The path is free again once the last reference goes, as a
            // port is.
            crate::unixsock::unlink_if_ours(&e.spec.path, ino);
        }
        if e.keyed {
            self.cache.remove(&e.spec_key());
        }
        if e.per_worker {
            self.per_worker_entries -= 1;
        }
        if e.keyed || e.per_worker {
            if let Some(n) = self.held_ports.get_mut(&e.port) {
                *n -= 1;
                if *n == 0 {
                    self.held_ports.remove(&e.port);
                }
            }
        }
    }

    fn close_if_unheld(&mut self, entry_slot: usize) {
        if self
            .entries
            .get(entry_slot)
            .is_some_and(|e| e.holders.is_empty())
        {
            let e = self.entries.remove(entry_slot).unwrap();
            self.forget_entry(&e);
        }
    }

    fn release(&mut self, slot: usize, id: u32, t: &Token) -> Result<Reply> {
        let remaining = self.release_one(slot, t)?;
        proto::begin(&mut self.wbuf, ty::RELEASED, id);
        self.wbuf.extend_from_slice(&remaining.to_le_bytes());
        Ok(Reply { attach: None })
    }

    /// Each token as RELEASE would, in order, answered in one reply.
    fn release_many(&mut self, slot: usize, id: u32, ts: proto::Tokens<'_>) -> Result<Reply> {
        let mut out = std::mem::take(&mut self.wbuf);
        proto::begin(&mut out, ty::RELEASED_MANY, id);
        out.extend_from_slice(&(ts.len() as u16).to_le_bytes());
        for t in ts.iter() {
            let r = self.release_one(slot, &t);
            if let Err(e) = &r {
                self.log_refusal(slot, e);
            }
            proto::encode_released_entry(&mut out, &r);
        }
        self.wbuf = out;
        Ok(Reply { attach: None })
    }

    /// Drop one reference by token; the references left on its socket.
    fn release_one(&mut self, slot: usize, t: &Token) -> Result<u32> {
        let Some(info) = self.tokens.get(t).copied() else {
            return Err(Error::with_errno(
                Kind::UnknownToken,
                libc::ENOENT,
                format!("unknown token {}", t.short()),
            ));
        };
        let c = self.conns.get(slot).unwrap();
        let (creds, my_id) = (c.creds, c.id);
        let e = self.entries.get(info.entry).unwrap();
        let h = e.holders.get(info.holder as usize).unwrap();
        // Ours: held on this connection, or reserved by it and not yet
        // picked up.
        let mine = h.owner == Owner::Conn(slot)
            || (matches!(h.owner, Owner::Reserved(_)) && h.conn_id == my_id);
        // Another client's token: only if the policy lets this client
        // release others' references (an operator, a container manager).
        if !mine
            && self
                .cfg
                .policy
                .check_op(Op::ReleaseOther, &creds, &e.spec, h.share)
                .is_err()
        {
            return Err(Error::with_errno(
                Kind::UnknownToken,
                libc::ENOENT,
                "that token belongs to another client; only its holder may release it",
            ));
        }
        Ok(self.drop_reference(t))
    }

    /// Collect a reservation: the reference moves to this connection, once.
    fn pickup(&mut self, slot: usize, id: u32, t: &Token) -> Result<Reply> {
        let unknown = || {
            Error::with_errno(
                Kind::UnknownToken,
                libc::ENOENT,
                format!("unknown token {}", t.short()),
            )
        };
        let expired = || {
            Error::with_errno(
                Kind::TokenExpired,
                libc::ETIME,
                format!("reservation {} expired before it was picked up", t.short()),
            )
        };
        let Some(info) = self.tokens.get(t).copied() else {
            return Err(if self.expired.contains(t) {
                expired()
            } else {
                unknown()
            });
        };
        self.refs_room(slot)?;
        let c = self.conns.get(slot).unwrap();
        let (conn_creds, conn_id) = (c.creds, c.id);
        let e = self.entries.get_mut(info.entry).unwrap();
        let h = e.holders.get_mut(info.holder as usize).unwrap();
        if matches!(h.owner, Owner::Reserved(_)) {
            self.cfg
                .policy
                .check_op(Op::Pickup, &conn_creds, &e.spec, h.share)?;
        }
        match h.owner {
            Owner::Reserved(d) if d > Instant::now() => {}
            Owner::Reserved(_) => {
                self.expire_reservations();
                return Err(expired());
            }
            // Already picked up (pick-up is one use only) or a plain reference.
            Owner::Conn(_) => return Err(unknown()),
        }
        h.owner = Owner::Conn(slot);
        h.creds = conn_creds;
        h.conn_id = conn_id;
        let (eid, port) = (e.id, e.port);
        self.reservations -= 1;
        self.deadline = None;
        let c = self.conns.get_mut(slot).unwrap();
        if let Some(i) = self.tokens.get_mut(t) {
            i.conn_pos = c.refs.len() as u32;
        }
        c.refs.push(*t);
        proto::encode_socket_reply(&mut self.wbuf, ty::SOCKET, id, t, port, true);
        Ok(Reply {
            attach: Some(Attach::Entry(info.entry, eid)),
        })
    }

    /// May connection `slot` take one more reference (`--max-refs-per-client`)?
    fn refs_room(&self, slot: usize) -> Result<()> {
        let held = self.conns.get(slot).map_or(0, |c| c.refs.len());
        if held >= self.cfg.limits.max_refs_per_client {
            return Err(Error::with_errno(
                Kind::LimitReached,
                libc::EUSERS,
                format!(
                    "this client already holds {held} references (limit {})",
                    self.cfg.limits.max_refs_per_client
                ),
            ));
        }
        Ok(())
    }

    /// Record a new reference: its holder joins entry `es`, and one that a
    /// connection holds joins that connection's list.
    fn add_ref(&mut self, es: usize, h: Holder) {
        let token = h.token;
        let conn_pos = match h.owner {
            Owner::Conn(slot) => match self.conns.get_mut(slot) {
                Some(c) => {
                    c.refs.push(token);
                    (c.refs.len() - 1) as u32
                }
                None => NO_CONN,
            },
            Owner::Reserved(_) => NO_CONN,
        };
        let holder = self.entries.get_mut(es).unwrap().holders.push(h) as u32;
        self.tokens.insert(
            token,
            TokenInfo {
                entry: es,
                holder,
                conn_pos,
            },
        );
    }

    /// Forget a reference everywhere it is recorded (the token map, its
    /// connection's list, its socket's holders); the entry stays, even if
    /// empty. The entry slot and the holder that was removed.
    fn remove_ref(&mut self, t: &Token) -> Option<(usize, Holder)> {
        let info = self.tokens.remove(t)?;
        let e = self.entries.get_mut(info.entry)?;
        let (h, moved) = e.holders.swap_remove(info.holder as usize)?;
        // The last holder moved into the gap: its token says so.
        if let Some(m) = moved.and_then(|m| self.tokens.get_mut(&m)) {
            m.holder = info.holder;
        }
        if let (Owner::Conn(slot), true) = (h.owner, info.conn_pos != NO_CONN) {
            // Gone already when the connection is being dropped.
            if let Some(c) = self.conns.get_mut(slot) {
                let pos = info.conn_pos as usize;
                if c.refs.get(pos) == Some(t) {
                    c.refs.swap_remove(pos);
                    if let Some(m) = c.refs.get(pos).and_then(|m| self.tokens.get_mut(m)) {
                        m.conn_pos = info.conn_pos;
                    }
                }
            }
        }
        Some((info.entry, h))
    }

    /// Drop one reference; close the socket when it was the last. Returns the
    /// references left on that socket.
    fn drop_reference(&mut self, t: &Token) -> u32 {
        let Some((es, h)) = self.remove_ref(t) else {
            return 0;
        };
        if matches!(h.owner, Owner::Reserved(_)) {
            self.reservations -= 1;
            self.deadline = None;
        }
        let Some(e) = self.entries.get(es) else {
            return 0;
        };
        let left = e.holders.len() as u32;
        if left == 0 {
            let e = self.entries.remove(es).unwrap();
            self.forget_entry(&e);
            // Dropping `e` closes the broker's copy; the port is free once
            // the clients close theirs.
        }
        left
    }

    fn status(&mut self, id: u32) -> Result<Reply> {
        if self.reply_fds.get() >= MAX_REPLY_FDS {
            return Err(Error::with_errno(
                Kind::LimitReached,
                libc::EMFILE,
                format!(
                    "{} status replies wait for their clients to read them, the limit; try again",
                    self.reply_fds.get()
                ),
            ));
        }
        let mut table = Vec::new();
        let mut rows = 0u32;
        table.extend_from_slice(&0u32.to_le_bytes());
        for (_, e) in self.entries.iter() {
            for h in &e.holders {
                proto::StatusRow {
                    socket_id: e.id,
                    spec: e.spec.clone(),
                    port: e.port,
                    refs: e.holders.len() as u32,
                    conn_id: h.conn_id,
                    pid: h.creds.pid,
                    uid: h.creds.uid,
                    gid: h.creds.gid,
                    share: h.share,
                    reserved: matches!(h.owner, Owner::Reserved(_)),
                    app: h.app.to_string(),
                }
                .encode(&mut table);
                rows += 1;
            }
        }
        table[..4].copy_from_slice(&rows.to_le_bytes());
        // The table can be far larger than a packet, so it travels as a
        // sealed memfd: one atomic snapshot, nothing kept in the broker.
        let memfd = CountedFd::new(
            crate::memfd::from_bytes("sockpass-status", &table)?,
            &self.reply_fds,
        );
        proto::begin(&mut self.wbuf, ty::STATUS_OK, id);
        self.counters().encode(&mut self.wbuf);
        Ok(Reply {
            attach: Some(Attach::Owned(memfd)),
        })
    }

    fn reply_error(&mut self, slot: usize, id: u32, e: &Error) {
        let mut out = std::mem::take(&mut self.wbuf);
        proto::encode_error(&mut out, id, e);
        self.send(slot, out, None);
    }

    /// Send a reply now, or queue it if the client's buffer is full.
    fn attached_fd<'a>(&'a self, a: &'a Option<Attach>) -> Option<BorrowedFd<'a>> {
        match a {
            Some(Attach::Entry(es, eid)) => self
                .entries
                .get(*es)
                .filter(|e| e.id == *eid)
                .map(|e| e.fd.as_fd()),
            Some(Attach::Owned(c)) => c.as_fd(),
            None => None,
        }
    }

    fn send(&mut self, slot: usize, bytes: Vec<u8>, attach: Option<Attach>) {
        let Some(c) = self.conns.get(slot) else {
            self.wbuf = bytes;
            return;
        };
        if c.outq.is_empty() {
            let fd = self.attached_fd(&attach);
            let fds: &[BorrowedFd<'_>] = match &fd {
                Some(f) => std::slice::from_ref(f),
                None => &[],
            };
            match send_fds(c.fd.as_fd(), &bytes, fds, libc::MSG_DONTWAIT) {
                Ok(_) => {
                    self.wbuf = bytes;
                    self.wbuf.clear();
                    return;
                }
                Err(libc::EAGAIN) => {}
                Err(e) => {
                    self.wbuf = Vec::with_capacity(proto::MAX_MSG);
                    let why = format!("send failed: {}", crate::error::strerror(e));
                    self.drop_conn(slot, &why);
                    return;
                }
            }
        }
        self.wbuf = Vec::with_capacity(proto::MAX_MSG);
        let max = self.cfg.limits.max_queued_replies;
        let c = self.conns.get_mut(slot).unwrap();
        c.outq.push_back(Outgoing { bytes, attach });
        let raw = c.fd.as_raw_fd();
        let mut ev = libc::EPOLLOUT | libc::EPOLLRDHUP;
        if c.outq.len() >= max {
            c.paused = true;
        } else {
            ev |= libc::EPOLLIN;
        }
        let _ = self.ep_ctl(
            libc::EPOLL_CTL_MOD,
            raw,
            ev as u32,
            EV_CONN_BASE + slot as u64,
        );
    }

    /// Send queued replies; returns false if the connection was dropped.
    fn flush(&mut self, slot: usize) -> bool {
        loop {
            let Some(c) = self.conns.get(slot) else {
                return false;
            };
            let Some(o) = c.outq.front() else { break };
            let fd = self.attached_fd(&o.attach);
            let fds: &[BorrowedFd<'_>] = match &fd {
                Some(f) => std::slice::from_ref(f),
                None => &[],
            };
            match send_fds(c.fd.as_fd(), &o.bytes, fds, libc::MSG_DONTWAIT) {
                Ok(_) => {
                    self.conns.get_mut(slot).unwrap().outq.pop_front();
                }
                Err(libc::EAGAIN) => return true,
                Err(e) => {
                    let why = format!("send failed: {}", crate::error::strerror(e));
                    self.drop_conn(slot, &why);
                    return false;
                }
            }
        }
        let c = self.conns.get_mut(slot).unwrap();
        let was_paused = c.paused;
        c.paused = false;
        let raw = c.fd.as_raw_fd();
        let _ = self.ep_ctl(
            libc::EPOLL_CTL_MOD,
            raw,
            (libc::EPOLLIN | libc::EPOLLRDHUP) as u32,
            EV_CONN_BASE + slot as u64,
        );
        if was_paused {
            // Requests may be waiting that no new EPOLLIN edge will announce.
            self.read_requests(slot);
        }
        self.conns.get(slot).is_some()
    }

    fn drop_conn(&mut self, slot: usize, why: &str) {
        let Some(c) = self.conns.remove(slot) else {
            return;
        };
        let _ = self.ep_ctl(libc::EPOLL_CTL_DEL, c.fd.as_raw_fd(), 0, 0);
        let n = c.refs.len();
        for t in &c.refs {
            self.drop_reference(t);
        }
        if self.spare_refs.len() < SPARE_REFS && c.refs.capacity() <= SPARE_REFS {
            let mut refs = c.refs;
            refs.clear();
            self.spare_refs.push(refs);
        }
        if n > 0 || why != "disconnected" {
            self.log(format_args!(
                "client {} (pid {} uid {}) gone ({why}), {n} reference(s) dropped",
                c.id, c.creds.pid, c.creds.uid
            ));
        }
    }

    /// Close every client and socket (on shutdown).
    pub fn shutdown(&mut self) {
        let slots: Vec<usize> = self.conns.iter().map(|(i, _)| i).collect();
        for s in slots {
            self.drop_conn(s, "broker shutting down");
        }
    }
}

impl Entry {
    fn spec_key(&self) -> SocketSpec {
        // The cache key is the canonical spec as requested (port as asked).
        self.spec.clone()
    }
}

fn set_nonblock(fd: &OwnedFd) -> Result<()> {
    // SAFETY: fcntl on our fd.
    unsafe {
        let fl = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        if fl < 0 || libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK) < 0 {
            return Err(Error::last_os("fcntl O_NONBLOCK"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// However many spec encodings clients make the broker remember, `hits`
    /// stays within twice the cache plus 64, and what it remembers last
    /// leads to its entry.
    #[test]
    fn remembered_hits_are_bounded() {
        let (listener, _peer) = crate::fdpass::socketpair(libc::SOCK_SEQPACKET).unwrap();
        let mut b = Broker::new(listener, Config::default()).unwrap();
        let spec: SocketSpec = "udp:127.0.0.1:9".parse().unwrap();
        let es = b.entries.insert(Entry {
            id: 7,
            spec: spec.clone(),
            fd: std::fs::File::open("/dev/null").unwrap().into(),
            port: 9,
            holders: Holders::default(),
            keyed: true,
            per_worker: false,
            unix_ino: None,
            store_name: None,
            adopted: false,
        });
        b.cache.insert(spec, es);
        for i in 0..1000u32 {
            b.remember_hit(&i.to_le_bytes(), es);
            assert!(b.hits.len() <= 2 * b.cache.len() + 64, "{i}");
        }
        let last = WireSpec::new(&999u32.to_le_bytes()).unwrap();
        assert_eq!(b.hits.get(&last), Some(&(es, 7)));
        // Longer than 32 bytes: never remembered.
        let n = b.hits.len();
        b.remember_hit(&[1u8; 33], es);
        assert_eq!(b.hits.len(), n);
    }

    /// Closed connections leave at most `SPARE_REFS` emptied reference
    /// vectors, none with room for more than `SPARE_REFS` tokens, and new
    /// connections take them.
    #[test]
    fn spare_reference_vectors_are_bounded() {
        let (listener, _peer) = crate::fdpass::socketpair(libc::SOCK_SEQPACKET).unwrap();
        let mut b = Broker::new(listener, Config::default()).unwrap();
        let t = Token::from_hex(&[b'a'; 48]).unwrap();
        let mut peers = Vec::new();
        let mut open = |b: &mut Broker, n: usize| {
            let (fd, peer) = crate::fdpass::socketpair(libc::SOCK_SEQPACKET).unwrap();
            peers.push(peer);
            let conn = b.new_conn(fd, peers.len() as u64, Creds::default());
            let slot = b.conns.insert(conn);
            b.conns
                .get_mut(slot)
                .unwrap()
                .refs
                .extend(std::iter::repeat_n(t, n));
            slot
        };
        let sizes = [0usize, 1, 5, 16, 17, 100];
        let slots: Vec<usize> = (0..60).map(|i| open(&mut b, sizes[i % 6])).collect();
        for s in slots {
            b.drop_conn(s, "disconnected");
            assert!(b.spare_refs.len() <= SPARE_REFS);
        }
        assert_eq!(b.spare_refs.len(), SPARE_REFS);
        let fits = |v: &Vec<Token>| v.is_empty() && v.capacity() <= SPARE_REFS;
        assert!(b.spare_refs.iter().all(fits));
        for i in 1..=4 {
            open(&mut b, 1);
            assert_eq!(b.spare_refs.len(), SPARE_REFS - i);
        }
    }
}
