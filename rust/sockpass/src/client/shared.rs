//! A client several threads share, and that stays correct across `fork()`:
//! the process-wide default client, the C API's `sockpass_client`, and
//! Python's clients.
//!
//! Its connection lives in a slot made in one fork generation
//! ([`crate::forkgen`]). A call first compares the slot's generation with
//! the process's (one load, no syscall); in a child the slot is its
//! parent's, so the child installs a fresh one and never takes the parent's
//! lock (another thread of the parent may have held it at the fork, and that
//! thread does not exist in the child), never reads the parent's client
//! (which that thread may have left half-changed), and only closes the
//! child's copy of the parent's connection: the parent's lease and
//! references are untouched. The parent's slot is leaked in the child.
//!
//! Two behaviours:
//! - automatic (the default client, Python's module clients): connects on
//!   first use; after a lost connection, a protocol error or a timeout the
//!   connection is dropped and the next call connects anew (a new lease); a
//!   call whose send failed before the broker got anything (a broker that
//!   restarted) is retried once on a new connection; in a fork's child the
//!   first call connects anew;
//! - explicit (`sockpass_client`, Python's `Client`): connected when made;
//!   after an error, and in a fork's child, calls fail with
//!   [`Kind::BrokerUnavailable`] (errno `ENOTCONN`, or `ECHILD` in a child)
//!   until [`SharedClient::reconnect`].

use super::Client;
use crate::error::{Error, Kind, Result};
use crate::forkgen;
use std::path::{Path, PathBuf};
use std::ptr;
use std::sync::atomic::{AtomicI32, AtomicPtr, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Where a shared client connects.
enum Target {
    /// The default paths ([`super::path::candidates`]).
    Default,
    Path(PathBuf),
    /// A connection handed in: it cannot be made again.
    Handed,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Why {
    /// Not connected yet (or dropped after an error: automatic clients).
    NotYet,
    /// Closed by its owner.
    Closed,
    /// The connection was the parent's, before a fork.
    Forked,
}

struct State {
    client: Option<Client>,
    why: Why,
}

struct Slot {
    gen: u64,
    /// The connection's fd number, for a child to close its copy.
    fd: Arc<AtomicI32>,
    state: Mutex<State>,
    /// The parent's slot this one replaced in a fork's child: leaked, and
    /// kept reachable (from here, then from [`ORPHANS`]) so a leak checker
    /// does not take it for lost memory.
    parent: *mut Slot,
    /// The next slot in [`ORPHANS`].
    next_orphan: AtomicPtr<Slot>,
}

// SAFETY: `parent` is only ever stored and moved into ORPHANS, never
// dereferenced but to link it there; the rest of a slot is Send and Sync.
unsafe impl Send for Slot {}
// SAFETY: as for Send: `parent` is never read through from another thread.
unsafe impl Sync for Slot {}

/// Parents' slots whose child slot was freed: a lock-free stack (a child
/// must not take a lock its parent may have held), never popped.
static ORPHANS: AtomicPtr<Slot> = AtomicPtr::new(ptr::null_mut());

impl Slot {
    fn new(why: Why, parent: *mut Slot) -> Slot {
        Slot {
            gen: forkgen::at_connect(),
            fd: Arc::new(AtomicI32::new(-1)),
            state: Mutex::new(State { client: None, why }),
            parent,
            next_orphan: AtomicPtr::new(ptr::null_mut()),
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        orphan(self.parent);
    }
}

/// Keep a leaked parent's slot reachable (`p` may be null).
fn orphan(p: *mut Slot) {
    // SAFETY: a parent's slot is leaked: it is never freed.
    let Some(s) = (unsafe { p.as_ref() }) else {
        return;
    };
    let mut head = ORPHANS.load(Ordering::Acquire);
    loop {
        s.next_orphan.store(head, Ordering::Relaxed);
        match ORPHANS.compare_exchange(head, p, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return,
            Err(h) => head = h,
        }
    }
}

/// No timeout, in [`SharedClient::timeout`]'s field.
const NO_TIMEOUT: u64 = u64::MAX;

/// No reply spin set, in [`SharedClient`]'s field: the process's default.
const SPIN_UNSET: u64 = u64::MAX;

pub struct SharedClient {
    slot: AtomicPtr<Slot>,
    target: Target,
    auto: bool,
    /// Nanoseconds, or [`NO_TIMEOUT`].
    timeout: AtomicU64,
    /// The reply spin in µs ([`Client::set_reply_spin`]), or [`SPIN_UNSET`]
    /// (the process's default, `SOCKPASS_SPIN_US`).
    spin: AtomicU64,
    /// The process-wide default client, whose fd the fork handler closes.
    is_default: bool,
}

static DEFAULT: SharedClient = SharedClient {
    slot: AtomicPtr::new(ptr::null_mut()),
    target: Target::Default,
    auto: true,
    timeout: AtomicU64::new(NO_TIMEOUT),
    spin: AtomicU64::new(SPIN_UNSET),
    is_default: true,
};

/// The process-wide default client (BIND10's library style): automatic
/// (see the module's description), connected to the default path on first
/// use.
pub fn default_client() -> &'static SharedClient {
    &DEFAULT
}

/// Run `f` on the process-wide default client.
pub fn with_default<R>(f: impl FnMut(&mut Client) -> Result<R>) -> Result<R> {
    DEFAULT.with(f)
}

fn encode_timeout(t: Option<Duration>) -> u64 {
    t.map_or(NO_TIMEOUT, |d| {
        u64::try_from(d.as_nanos())
            .unwrap_or(NO_TIMEOUT - 1)
            .min(NO_TIMEOUT - 1)
    })
}

impl SharedClient {
    /// A client for `path` (None: the default paths), connected now.
    /// `auto`: reconnect by itself (see the module's description).
    pub fn connect(path: Option<&Path>, timeout: Option<Duration>, auto: bool) -> Result<Self> {
        let target = path.map_or(Target::Default, |p| Target::Path(p.to_path_buf()));
        let s = SharedClient::unconnected(target, timeout, auto);
        s.reconnect()?;
        Ok(s)
    }

    /// An explicit client around a connection already made (handed in).
    pub fn from_client(c: Client) -> Self {
        let s = SharedClient::unconnected(Target::Handed, c.timeout(), false);
        let slot = s.current();
        let mut st = lock(slot);
        s.install(slot, &mut st, c);
        drop(st);
        s
    }

    fn unconnected(target: Target, timeout: Option<Duration>, auto: bool) -> Self {
        SharedClient {
            slot: AtomicPtr::new(ptr::null_mut()),
            target,
            auto,
            timeout: AtomicU64::new(encode_timeout(timeout)),
            spin: AtomicU64::new(SPIN_UNSET),
            is_default: false,
        }
    }

    /// This process's slot, made anew in a fork's child. Inlined: every
    /// call takes this path, and it is one load and a compare (the slot is
    /// made out of line).
    #[inline]
    fn current(&self) -> &Slot {
        let p = self.slot.load(Ordering::Acquire);
        // SAFETY: a published slot is freed only by Drop (&mut self).
        match unsafe { p.as_ref() } {
            Some(s) if s.gen == forkgen::current() => s,
            _ => self.make_current(),
        }
    }

    /// [`SharedClient::current`] when there is no slot for this process yet.
    #[cold]
    #[inline(never)]
    fn make_current(&self) -> &Slot {
        let gen = forkgen::current();
        loop {
            let p = self.slot.load(Ordering::Acquire);
            // SAFETY: a published slot is freed only by Drop (&mut self).
            if let Some(s) = unsafe { p.as_ref() } {
                if s.gen == gen {
                    return s;
                }
            }
            let why = if p.is_null() {
                Why::NotYet
            } else {
                Why::Forked
            };
            let new = Box::into_raw(Box::new(Slot::new(why, p)));
            match self
                .slot
                .compare_exchange(p, new, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    // SAFETY: as above; the old slot is the parent's and is
                    // leaked here, never dropped (its lock may be held by a
                    // thread that is not in this process).
                    if let Some(old) = unsafe { p.as_ref() } {
                        close_copy(&old.fd);
                    }
                    if self.is_default {
                        // SAFETY: `new` is never freed (DEFAULT is static).
                        let cell = unsafe { Arc::as_ptr(&(*new).fd) };
                        forkgen::DEFAULT_CELL.store(cell.cast_mut(), Ordering::Release);
                    }
                    // SAFETY: just published, freed only by Drop.
                    return unsafe { &*new };
                }
                // Another thread of this process won: use its slot.
                Err(_) => {
                    // SAFETY: `new` was never published; its `parent` is
                    // the winner's too, so it is not orphaned here.
                    let mut b = unsafe { Box::from_raw(new) };
                    b.parent = ptr::null_mut();
                    drop(b);
                }
            }
        }
    }

    fn install(&self, slot: &Slot, st: &mut State, mut c: Client) {
        c.publish_into(slot.fd.clone());
        st.client = Some(c);
        st.why = Why::NotYet;
    }

    fn open(&self) -> Result<Client> {
        let t = self.timeout();
        match &self.target {
            Target::Default => Client::connect_default_timeout(t),
            Target::Path(p) => Client::connect_timeout(p, t),
            Target::Handed => Err(Error::with_errno(
                Kind::BadRequest,
                libc::EINVAL,
                "a client made from a handed-in connection has no path to reconnect to",
            )),
        }
    }

    /// Run `f` on the client, with this client's timeout.
    pub fn with<R>(&self, f: impl FnMut(&mut Client) -> Result<R>) -> Result<R> {
        self.with_timeout(self.timeout(), f)
    }

    /// Run `f` on the client with timeout `t` for this call's waits.
    pub fn with_timeout<R>(
        &self,
        t: Option<Duration>,
        mut f: impl FnMut(&mut Client) -> Result<R>,
    ) -> Result<R> {
        let slot = self.current();
        let mut st = lock(slot);
        let mut retried = false;
        loop {
            if st.client.is_none() {
                self.connect_for_call(slot, &mut st)?;
            }
            let Some(c) = st.client.as_mut() else {
                unreachable!("connected above")
            };
            c.set_timeout(t)?;
            match self.spin.load(Ordering::Relaxed) {
                SPIN_UNSET => {}
                us => c.set_reply_spin(Some(Duration::from_micros(us))),
            }
            let res = f(c);
            if res.is_ok() || !self.auto || c.is_usable() {
                return res;
            }
            // Dropped (its Drop unpublishes the fd first): a new lease next.
            let retry = c.send_failed() && !retried;
            drop_client(&mut st);
            if !retry {
                return res;
            }
            retried = true;
        }
    }

    /// A call's connection when the slot has none: made now if this client
    /// reconnects by itself. Out of line, as is [`drop_client`]: a `Client`
    /// held by value in the caller's frame made every call's stack frame
    /// over 1 KiB deeper, a stack page more for each request to touch.
    #[cold]
    #[inline(never)]
    fn connect_for_call(&self, slot: &Slot, st: &mut State) -> Result<()> {
        if !self.auto || st.why == Why::Closed {
            return Err(not_connected(st.why));
        }
        let c = self.open()?;
        self.install(slot, st, c);
        Ok(())
    }

    /// `f` on the client if it has one, without connecting or calling the
    /// broker (say, to look up what it holds).
    pub fn peek<R>(&self, f: impl FnOnce(&Client) -> R) -> Option<R> {
        let st = lock(self.current());
        st.client.as_ref().map(f)
    }

    /// Connect anew: a new lease holding nothing. In the same process the
    /// broker drops the old connection's references; in a fork's child the
    /// parent's are untouched. Also after [`SharedClient::close`].
    pub fn reconnect(&self) -> Result<()> {
        let slot = self.current();
        let mut st = lock(slot);
        match st.client.as_mut() {
            Some(c) if !matches!(self.target, Target::Handed) => {
                c.set_timeout(self.timeout())?;
                c.reconnect()
            }
            Some(c) => c.reconnect(),
            None => {
                let c = self.open()?;
                self.install(slot, &mut st, c);
                Ok(())
            }
        }
    }

    /// Close the connection: the broker drops every reference it held. The
    /// client stays closed until [`SharedClient::reconnect`].
    pub fn close(&self) {
        let slot = self.current();
        let mut st = lock(slot);
        st.client = None;
        st.why = Why::Closed;
    }

    /// Is there a connection this process can use?
    pub fn is_open(&self) -> bool {
        let slot = self.current();
        let st = lock(slot);
        st.client.as_ref().is_some_and(Client::is_usable)
    }

    /// The path given, or the one the default client connected to (None
    /// for a handed-in connection, or a default client not connected).
    pub fn path(&self) -> Option<PathBuf> {
        match &self.target {
            Target::Path(p) => Some(p.clone()),
            Target::Handed => None,
            Target::Default => {
                let st = lock(self.current());
                st.client.as_ref().map(|c| c.path().to_path_buf())
            }
        }
    }

    /// Time out every wait for the broker after `t` (None: wait forever).
    pub fn set_timeout(&self, t: Option<Duration>) {
        self.timeout.store(encode_timeout(t), Ordering::Relaxed);
    }

    pub fn timeout(&self) -> Option<Duration> {
        match self.timeout.load(Ordering::Relaxed) {
            NO_TIMEOUT => None,
            n => Some(Duration::from_nanos(n)),
        }
    }

    /// Poll for each reply up to `us` µs before blocking, while replies
    /// come quickly (0: block at once; see [`Client::set_reply_spin`]).
    pub fn set_reply_spin(&self, us: u64) {
        let us = us.min(super::MAX_SPIN_US);
        self.spin.store(us, Ordering::Relaxed);
    }
}

impl Drop for SharedClient {
    fn drop(&mut self) {
        let p = *self.slot.get_mut();
        // SAFETY: the slot was published by `current` and nothing else
        // frees it.
        let Some(s) = (unsafe { p.as_ref() }) else {
            return;
        };
        if s.gen == forkgen::current() {
            // SAFETY: ours, and no one else can reach it (&mut self).
            drop(unsafe { Box::from_raw(p) });
        } else {
            // The parent's: leak it, close only this process's copy.
            close_copy(&s.fd);
            orphan(p);
        }
    }
}

impl std::fmt::Debug for SharedClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedClient")
            .field("auto", &self.auto)
            .finish()
    }
}

/// Let the slot's client go (see [`SharedClient::connect_for_call`]).
#[cold]
#[inline(never)]
fn drop_client(st: &mut State) {
    st.client = None;
}

#[inline]
fn lock(s: &Slot) -> std::sync::MutexGuard<'_, State> {
    s.state.lock().unwrap_or_else(|p| p.into_inner())
}

/// Close this process's copy of a connection made before a fork.
fn close_copy(cell: &AtomicI32) {
    let fd = cell.swap(-1, Ordering::AcqRel);
    if fd >= 0 {
        // SAFETY: the number is the inherited connection's, published by
        // its client (which unpublishes before it closes it) and never
        // closed by that client here: its slot is leaked.
        unsafe { libc::close(fd) };
    }
}

fn not_connected(why: Why) -> Error {
    match why {
        Why::Forked => Error::with_errno(
            Kind::BrokerUnavailable,
            libc::ECHILD,
            "this sockpass client was made before fork(): its connection is the parent's; reconnect for one of this process's own",
        ),
        _ => Error::with_errno(
            Kind::BrokerUnavailable,
            libc::ENOTCONN,
            "this sockpass client is closed; reconnect to use it again",
        ),
    }
}
