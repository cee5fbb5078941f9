//! Closing fds a client could have touched without blocking the event loop.
//!
//! `close()` can block: the last close of a TCP socket with `SO_LINGER` on,
//! unsent data and a peer that never reads waits up to the linger time
//! (about 2^31 s); closing a file on FUSE or NFS may wait for its server
//! (FLUSH). A client can arrange either for fds it sends us (refused at the
//! kernel with `SO_PASSRIGHTS=0` where the kernel has it, see
//! [`refuse_passed_fds`]) and for broker sockets it shares (it holds the
//! same open file description, so it can set `SO_LINGER` on ours).
//!
//! Switching linger off right before `close()` alone is not sound: a client
//! that still holds the socket can switch it back on between our
//! `setsockopt` and our `close`, then close its own fd first so ours is the
//! last. So such fds are closed by a dedicated closer thread fed through a
//! bounded queue. Linger is still switched off first ([`linger_off`]), so
//! winning that race is the only way to stall the closer, and a stalled
//! closer delays only other closes. When the queue is full the fds are
//! parked and handed over on a later call ([`settle`]); nothing is ever
//! closed on the loop. Not even the UDP and raw sockets the broker made,
//! whose close ignores linger: a client can join multicast groups on one
//! (no privilege needed), and the last close then leaves them under
//! `rtnl_lock`, which anyone can keep busy from a network namespace of
//! their own. Closing those on the loop made a release 32 -> 12 µs and
//! was undone for that (benches/notes.md, "Issue 25, tenth pass").
//!
//! A broker socket's port should be free when the client reads RELEASED, so
//! for those the loop waits for the closer, at most [`SETTLE`]. The wait is
//! taken once for all the closes a request or a hang-up made
//! ([`settle_pending`], before the next reply goes out and after each
//! event): a release of 64 sockets is one hand-over and one wait, not 64.
//! The wait yields the CPU for its first 50 µs (`YIELDING`) and sleeps only
//! after: on one CPU the closer's close and its going back to sleep then
//! both come before the reply, not after it in the client's next request.
//! The closer takes the newest batch first, one fd at a time, so the
//! closes a wait is for overtake a backlog (the thousands of sockets of a
//! client that went): a release is answered with its port free even then.
//! A closer stuck in one close is left alone: after a wait in which it
//! closed nothing, no wait is taken until it has closed another fd, so a
//! stuck closer costs the loop one wait, not one per reply.
//!
//! A new socket whose bind finds its port taken may be waiting for a
//! socket still in that backlog (a supervisor restarting a daemon that held
//! thousands): [`hurry`] moves the queued sockets bound to that port to the
//! top and waits for them, within the same bounds, before the bind is
//! tried again.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

/// How long the loop waits for a broker socket's close (see the module doc).
pub const SETTLE: Duration = Duration::from_millis(20);

/// Batches of fds waiting for the closer thread, at most (then parked).
const QUEUE: usize = 4096;

/// `SO_PASSRIGHTS` (Linux 6.16+, `include/uapi/asm-generic/socket.h`):
/// 0 makes the kernel refuse `SCM_RIGHTS` sent to this socket (the sender
/// gets EPERM); accepted sockets inherit it from the listener. Defined
/// here because the libc crate does not have it yet.
const SO_PASSRIGHTS: libc::c_int = 83;

/// Refuse fds sent to `fd` (a listening socket) and to every connection
/// made to it from now on. False on kernels without `SO_PASSRIGHTS`: fds
/// still arrive there and are closed through [`close_off_loop`].
pub fn refuse_passed_fds(fd: &impl AsFd) -> bool {
    sockpass::sys::setsockopt_int(fd, libc::SOL_SOCKET, SO_PASSRIGHTS, 0).is_ok()
}

/// Does the kernel refuse fds sent to `fd`, and has it since the socket was
/// made (`SO_PASSRIGHTS` reads 0)? A connection takes the flag from its
/// listener when the client connects, not when it is accepted: one queued
/// before the listener refused (socket activation) may hold fds already.
/// False on kernels without the option.
pub fn refuses_passed_fds(fd: &impl AsFd) -> bool {
    sockpass::sys::getsockopt_int(fd, libc::SOL_SOCKET, SO_PASSRIGHTS) == Ok(0)
}

/// Switch `SO_LINGER` off (`l_onoff = 0`): close returns at once and the
/// kernel finishes the connection in the background. Harmless on fds that
/// are not sockets (ENOTSOCK) or not TCP.
pub fn linger_off(fd: &impl AsRawFd) {
    let l = libc::linger {
        l_onoff: 0,
        l_linger: 0,
    };
    // SAFETY: setsockopt with a valid linger struct.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// The loop's side: what it has handed over and waited for.
struct Closer {
    /// The closer thread is running.
    started: bool,
    /// Fds not handed over yet (the queue was full, or a drop waits for
    /// the next [`settle`]).
    parked: Vec<Queued>,
    /// The id of the last batch handed over.
    sent: u64,
    /// Batches up to this id were waited for, or given up on, by a settle.
    settled: u64,
    /// A wait timed out when the closer had closed this many fds: no more
    /// waits until it closes another.
    stalled_at: Option<u64>,
}

/// A queued fd and the port it is bound to ([`port_key`]; 0: unknown).
type Queued = (OwnedFd, u32);

struct Batch {
    id: u64,
    fds: Vec<Queued>,
}

/// The key [`hurry`] finds a queued broker socket by: its type and port
/// (TCP and UDP on a fixed port; 0, never found, for anything else).
/// Sockets on the same port but another address match too: closing them
/// early is harmless.
pub fn port_key(spec: &sockpass::SocketSpec, port: u16) -> u32 {
    match spec.proto {
        sockpass::Proto::Udp | sockpass::Proto::Tcp if port != 0 => {
            ((spec.proto.sock_type() as u32) << 16) | u32::from(port)
        }
        _ => 0,
    }
}

/// What the closer thread has to close, shared with the loop.
struct Lane {
    /// Batches not closed yet, newest last: the closer works from the end.
    /// A batch stays here until its last fd is closed.
    stack: Vec<Batch>,
    /// Fds closed since the start (tells a busy closer from a stuck one).
    closed: u64,
    /// The loop sleeps on `done` (past its yielding): the closer wakes it.
    sleeping: bool,
}

struct Shared {
    lane: Mutex<Lane>,
    /// The loop handed over a batch.
    work: Condvar,
    /// The closer finished a batch.
    done: Condvar,
}

static CLOSER: OnceLock<Mutex<Closer>> = OnceLock::new();
static SHARED: OnceLock<Shared> = OnceLock::new();
/// Broker sockets were dropped since the last [`settle`]: parked, not yet
/// handed over or waited for.
static PENDING: AtomicBool = AtomicBool::new(false);

/// A poisoned lock still guards consistent data here (no code panics while
/// holding one), so it is used as it is.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn shared() -> &'static Shared {
    SHARED.get_or_init(|| Shared {
        lane: Mutex::new(Lane {
            stack: Vec::new(),
            closed: 0,
            sleeping: false,
        }),
        work: Condvar::new(),
        done: Condvar::new(),
    })
}

fn closer() -> &'static Mutex<Closer> {
    CLOSER.get_or_init(|| {
        let started = std::thread::Builder::new()
            .name("sockpassd-close".into())
            .spawn(|| {
                crate::log::block_signals();
                close_forever(shared());
            })
            .is_ok();
        Mutex::new(Closer {
            started,
            parked: Vec::new(),
            sent: 0,
            settled: 0,
            stalled_at: None,
        })
    })
}

/// The closer thread: the newest batch's fds one by one, so a batch handed
/// over later overtakes the rest of an older one.
fn close_forever(sh: &Shared) -> ! {
    let mut lane = lock(&sh.lane);
    loop {
        let Some(top) = lane.stack.last_mut() else {
            lane = sh.work.wait(lane).unwrap_or_else(|p| p.into_inner());
            continue;
        };
        let id = top.id;
        // Empty when [`hurry`] took its fds.
        let fd = top.fds.pop();
        let last = top.fds.is_empty();
        drop(lane);
        let closed_one = fd.is_some();
        drop(fd);
        lane = lock(&sh.lane);
        lane.closed += u64::from(closed_one);
        if last {
            // Newer batches may sit above it by now.
            if let Some(i) = lane.stack.iter().rposition(|b| b.id == id) {
                lane.stack.remove(i);
            }
            // A loop still yielding (see [`wait`]) sees the batch gone when
            // this thread sleeps; one asleep is woken, with the lock free
            // so it need not block on it and switch straight back.
            if lane.sleeping {
                drop(lane);
                sh.done.notify_all();
                lane = lock(&sh.lane);
            }
        }
    }
}

/// Close `fds` on the closer thread, with linger switched off first.
/// Returns false when the closer's queue is full (the fds are parked and
/// go with a later call): the caller should stop taking fds from whoever
/// sent these (drop that connection).
pub fn close_off_loop(fds: Vec<OwnedFd>) -> bool {
    for fd in &fds {
        linger_off(fd);
    }
    let mut c = lock(closer());
    c.parked.extend(fds.into_iter().map(|fd| (fd, 0)));
    hand_over(&mut c)
}

/// Hand parked fds to the closer as one batch; true if none are left parked.
fn hand_over(c: &mut Closer) -> bool {
    if c.parked.is_empty() {
        return true;
    }
    if !c.started {
        // No closer thread could be started: keep them (bounded by the fd
        // limit) rather than block.
        return false;
    }
    let sh = shared();
    let mut lane = lock(&sh.lane);
    if lane.stack.len() >= QUEUE {
        return false;
    }
    c.sent += 1;
    lane.stack.push(Batch {
        id: c.sent,
        fds: std::mem::take(&mut c.parked),
    });
    // Notified after the unlock: on one CPU the closer runs at once, and
    // would otherwise find the lock held and switch straight back.
    drop(lane);
    sh.work.notify_one();
    true
}

/// [`settle`] if a broker socket was dropped since the last one (an atomic
/// load otherwise: this runs before every reply).
pub fn settle_pending() {
    if PENDING.load(Ordering::Relaxed) {
        settle();
    }
}

/// Hand over what is parked, then wait (at most [`SETTLE`]) until the
/// closer has closed every batch handed over since the last settle, unless
/// it is stuck in a close since an earlier wait timed out.
pub fn settle() {
    settle_from(None);
}

/// [`settle`], waiting for the whole queue (an older backlog too): before
/// the broker counts its open fds.
pub fn settle_all() {
    settle_from(Some(0));
}

fn settle_from(from: Option<u64>) {
    let sh = shared();
    let from = {
        let mut c = lock(closer());
        PENDING.store(false, Ordering::Relaxed);
        hand_over(&mut c);
        let from = from.unwrap_or(c.settled);
        c.settled = c.sent;
        if !c.parked.is_empty() {
            // The queue is full: far behind, waiting would not help.
            return;
        }
        let lane = lock(&sh.lane);
        if let Some(at) = c.stalled_at {
            if lane.closed == at && !lane.stack.is_empty() {
                return;
            }
            c.stalled_at = None;
        }
        from
    };
    wait(|l| l.stack.iter().any(|b| b.id > from));
}

/// Wait (at most [`SETTLE`]) while `busy` holds. A closer that closed
/// nothing in all that time is stuck in one close: no more waits until it
/// closes another fd. (One that closed some is busy, or short of CPU on a
/// loaded machine: later waits are still taken, and with the newest
/// closes first they are short.)
fn wait(mut busy: impl FnMut(&mut Lane) -> bool) -> bool {
    let sh = shared();
    let start = std::time::Instant::now();
    let mut lane = lock(&sh.lane);
    let before = lane.closed;
    // Yield first: on the loop's CPU the closer then runs its close and
    // goes back to sleep before the loop goes on, where a wake-up would
    // have switched back to it after the reply (into the client's next
    // request); on another CPU the loop sees the close without a second
    // wake-up.
    while busy(&mut lane) {
        if start.elapsed() >= YIELDING {
            lane.sleeping = true;
            let left = SETTLE.saturating_sub(start.elapsed());
            let (mut lane, r) = sh
                .done
                .wait_timeout_while(lane, left, &mut busy)
                .unwrap_or_else(|p| p.into_inner());
            lane.sleeping = false;
            if r.timed_out() && lane.closed == before {
                drop(lane);
                lock(closer()).stalled_at = Some(before);
            }
            return !r.timed_out();
        }
        drop(lane);
        std::thread::yield_now();
        lane = lock(&sh.lane);
    }
    true
}

/// How long [`wait`] yields before it sleeps.
const YIELDING: Duration = Duration::from_micros(50);

/// A bind found its port taken: have the closer close the queued broker
/// sockets with this [`port_key`] next, and wait for them (at most
/// [`SETTLE`], not while the closer is stuck). True if there were some and
/// they are closed: the bind is worth trying again. One pass over the
/// queue, so a request costs the loop at most that.
pub fn hurry(key: u32) -> bool {
    if key == 0 {
        return false;
    }
    let sh = shared();
    let id = {
        let mut c = lock(closer());
        hand_over(&mut c);
        if !c.parked.is_empty() {
            return false;
        }
        let mut lane = lock(&sh.lane);
        if c.stalled_at == Some(lane.closed) && !lane.stack.is_empty() || lane.stack.len() >= QUEUE
        {
            return false;
        }
        let mut found = Vec::new();
        for b in lane.stack.iter_mut() {
            let mut i = 0;
            while i < b.fds.len() {
                if b.fds[i].1 == key {
                    found.push(b.fds.swap_remove(i));
                } else {
                    i += 1;
                }
            }
        }
        if found.is_empty() {
            return false;
        }
        c.sent += 1;
        lane.stack.push(Batch {
            id: c.sent,
            fds: found,
        });
        drop(lane);
        sh.work.notify_one();
        c.sent
    };
    wait(|l| l.stack.iter().any(|b| b.id == id))
}

/// Whether the last close of a `proto` socket can wait on `SO_LINGER`.
/// Only TCP's does: UDP's and raw sockets' close ignores the linger time,
/// and unix sockets have none.
pub fn lingers(proto: sockpass::Proto) -> bool {
    use sockpass::Proto::*;
    match proto {
        Tcp => true,
        Udp | Raw | UnixStream | UnixDgram | UnixSeqpacket => false,
    }
}

/// An fd a client could have touched (a broker socket it shares): dropping
/// it parks it for the closer (linger off) and [`settle_pending`] hands it
/// over and waits for it within [`settle`]'s bound, so the port is free
/// when the release is answered.
#[derive(Debug)]
pub struct OffLoopFd {
    fd: Option<OwnedFd>,
    key: u32,
    /// Switch linger off when it goes (false only where closing cannot
    /// linger: one `setsockopt` less a release).
    lingers: bool,
}

impl OffLoopFd {
    /// `key`: the port it is bound to ([`port_key`]), 0 if none. Linger
    /// is switched off when it goes, whatever it is.
    pub fn new(fd: OwnedFd, key: u32) -> OffLoopFd {
        OffLoopFd {
            fd: Some(fd),
            key,
            lingers: true,
        }
    }

    /// A socket the broker made itself for `proto` (so of that type):
    /// linger is switched off when it goes only if it [`lingers`].
    pub fn made(fd: OwnedFd, key: u32, proto: sockpass::Proto) -> OffLoopFd {
        OffLoopFd {
            fd: Some(fd),
            key,
            lingers: lingers(proto),
        }
    }

    /// The fd itself, no longer closed off the loop (handed over in an
    /// upgrade).
    pub fn into_inner(mut self) -> OwnedFd {
        self.fd.take().expect("OffLoopFd holds its fd until taken")
    }
}

impl AsFd for OffLoopFd {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd
            .as_ref()
            .expect("OffLoopFd holds its fd until taken")
            .as_fd()
    }
}

impl AsRawFd for OffLoopFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.as_fd().as_raw_fd()
    }
}

impl Drop for OffLoopFd {
    fn drop(&mut self) {
        if let Some(fd) = self.fd.take() {
            if self.lingers {
                linger_off(&fd);
            }
            lock(closer()).parked.push((fd, self.key));
            PENDING.store(true, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::FromRawFd;
    use std::time::{Duration, Instant};

    fn sock(ty: i32) -> OwnedFd {
        // SAFETY: a new socket fd or -1.
        let fd = unsafe { libc::socket(libc::AF_INET, ty | libc::SOCK_CLOEXEC, 0) };
        assert!(fd >= 0);
        // SAFETY: fd is new.
        unsafe { OwnedFd::from_raw_fd(fd) }
    }

    fn linger_of(fd: &OwnedFd) -> libc::linger {
        let mut l = libc::linger {
            l_onoff: 0,
            l_linger: 0,
        };
        let mut len = std::mem::size_of::<libc::linger>() as libc::socklen_t;
        // SAFETY: valid out pointers.
        unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&mut l as *mut libc::linger).cast(),
                &mut len,
            )
        };
        l
    }

    /// A TCP socket with linger {1, 1000 s}, unsent data and a peer that
    /// never reads: the call returns at once (the close happens on the
    /// closer thread, linger off), and the fd is closed soon after.
    #[test]
    fn a_lingering_socket_is_closed_without_waiting() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let s = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (_peer, _) = l.accept().unwrap();
        s.set_nonblocking(true).unwrap();
        let fd: OwnedFd = s.into();
        let on = libc::linger {
            l_onoff: 1,
            l_linger: 1000,
        };
        // SAFETY: valid linger struct.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&on as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            )
        };
        assert_eq!(linger_of(&fd).l_onoff, 1);
        let junk = [0u8; 65536];
        // Fill the send buffer and the peer's receive buffer.
        // SAFETY: sending from a valid buffer.
        while unsafe { libc::send(fd.as_raw_fd(), junk.as_ptr().cast(), junk.len(), 0) } > 0 {}
        let raw = fd.as_raw_fd();
        let ino = |fd: i32| {
            // SAFETY: all-zero is a valid stat.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            // SAFETY: fstat of a number that may be closed (then EBADF).
            (unsafe { libc::fstat(fd, &mut st) } == 0).then_some(st.st_ino)
        };
        let mine = ino(raw);
        let t0 = Instant::now();
        assert!(close_off_loop(vec![fd]));
        assert!(t0.elapsed() < Duration::from_secs(1));
        // Closed soon after on the closer thread (the number may be reused
        // by another test's fd: compare inodes).
        let t0 = Instant::now();
        while ino(raw) == mine {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "closer did not close"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn linger_off_switches_it_off() {
        let s = sock(libc::SOCK_STREAM);
        let on = libc::linger {
            l_onoff: 1,
            l_linger: 5,
        };
        // SAFETY: valid linger struct.
        unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&on as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            )
        };
        linger_off(&s);
        assert_eq!(linger_of(&s).l_onoff, 0);
    }
}
