//! The process's fork generation: a number a `pthread_atfork` child handler
//! bumps, so a client can tell, with one load and no syscall, that it runs
//! in a child of the process that made its connection.
//!
//! A connection inherited across `fork()` is its parent's: the broker knows
//! it by the parent's lease, and the replies to a request may go to either
//! process. A client made before the fork must therefore never use it in
//! the child (see [`crate::client`] and [`crate::client::shared`]).

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicPtr, AtomicU64, Ordering};

static GENERATION: AtomicU64 = AtomicU64::new(0);
static REGISTERED: AtomicBool = AtomicBool::new(false);

/// Where the process-wide default client publishes its connection's fd
/// (-1 if none): the child handler closes it, so a child that never calls
/// sockpass does not keep its parent's lease open for as long as it lives.
pub(crate) static DEFAULT_CELL: AtomicPtr<AtomicI32> = AtomicPtr::new(std::ptr::null_mut());

extern "C" fn in_child() {
    // Async-signal-safe: atomics and close() only.
    GENERATION.fetch_add(1, Ordering::Relaxed);
    // SAFETY: the cell belongs to a slot of the static default client,
    // never freed.
    if let Some(cell) = unsafe { DEFAULT_CELL.load(Ordering::Acquire).as_ref() } {
        let fd = cell.swap(-1, Ordering::AcqRel);
        if fd >= 0 {
            // SAFETY: the default client's copy of its parent's connection;
            // the client that owns the number is never dropped in the child
            // (client::shared leaks the parent's slot), and it unpublishes
            // the number before it closes it.
            unsafe { libc::close(fd) };
        }
    }
}

/// Register the child handler (once per process; a child inherits it).
/// Not a `Once`: a fork while another thread is inside `call_once` leaves
/// the child's copy running forever, and the child would wait on it. Two
/// threads racing here may both register; the handler is idempotent enough
/// (the generation just moves by two).
pub(crate) fn register() {
    if REGISTERED.load(Ordering::Acquire) {
        return;
    }
    // SAFETY: a plain function with no captured state.
    unsafe { libc::pthread_atfork(None, None, Some(in_child)) };
    REGISTERED.store(true, Ordering::Release);
}

/// The current generation: 0 in the process that loaded the library, one
/// more in each generation of children forked since the handler was
/// registered. Compare it with the one a connection was made in.
#[inline]
pub fn current() -> u64 {
    GENERATION.load(Ordering::Relaxed)
}

/// The generation to record for a connection made now (registering the
/// handler first, so a fork after this returns is seen).
pub(crate) fn at_connect() -> u64 {
    register();
    current()
}
