//! The replies of one loop turn sent together, by one `io_uring_enter`.
//!
//! With many clients each `sendmsg` wakes one, and its return to user space
//! is where that client can take the broker's CPU; one submission sends
//! every reply of the turn before any of them runs. The epoll floor server
//! of B5 (64 clients) served 1.15x as many requests so, pinned and
//! unpinned (benches/notes.md, "Issue 25, fifth pass").
//!
//! Held here: replies with at most one fd (a cached socket), to a client
//! whose queue is empty, until the turn ends or something could change
//! what they name (a connection dropped, a reply that cannot wait here: a
//! status table, a batch's fds; the broker flushes first). Each is looked
//! up again when sent, its connection by id and its socket by entry id, as
//! a queued reply is. The replies of one client are linked in order: one
//! that finds the client's buffer full (`EAGAIN`) cancels the rest, and
//! they all go to its queue in order. Where io_uring is refused (the
//! sysctl `kernel.io_uring_disabled`, seccomp, a kernel before 5.11) or
//! `--no-io-uring` is given, each reply is sent at once, as before; so
//! too while more than [`HOLD_MAX_ACTIVE`] clients keep the broker busy,
//! and in a turn of one event (one client: nothing to send together).

use io_uring::{opcode, squeue, types, IoUring};
use sockpass::fdpass::OneFdCmsg;
use std::os::fd::RawFd;

/// Replies held at most; a full outbox is sent before one more is held.
pub(super) const CAPACITY: usize = 128;
// A held reply's index fits the 8 bits `Outbox::arrange` packs it in.
const _: () = assert!(CAPACITY <= 256);
/// Replies are held while at most this many clients were active (woke the
/// broker) within the last [`ACTIVITY_WINDOW`] wakeups. With more, each
/// reply is sent as it is made: B5 (each client a process) at 512 and
/// 1,000 clients lost a tenth to holding (0.79 against 0.89-0.94 of the
/// floor, pinned; 0.75 against 0.89 unpinned at 1,000), even 8 at a time,
/// where 64 to 256 clients gained a tenth or more; 384 was even. Sent at
/// once, a reply goes out while its client's socket is still in the cache,
/// which the state of hundreds of busy clients evicts. Idle connections
/// (leases) do not count.
pub(super) const HOLD_MAX_ACTIVE: u32 = 384;
/// Wakeups a window of activity spans (at 1,000 busy clients, about 4 each).
pub(super) const ACTIVITY_WINDOW: u32 = 4096;
/// The longest reply held (a SOCKET reply is 48 bytes; longer ones, error
/// texts, are sent at once).
pub(super) const MAX_HELD_BYTES: usize = 256;

/// One held reply: its client (slot and connection id), its bytes in the
/// outbox's buffer, and the cached socket it carries (slot, entry id).
pub(super) struct Held {
    pub(super) slot: usize,
    pub(super) conn: u64,
    start: usize,
    len: usize,
    pub(super) entry: Option<(usize, u64)>,
}

/// What one `sendmsg` submission points at; lives in a boxed slice that
/// does not move while the kernel reads it.
#[repr(C)]
struct Wire {
    msg: libc::msghdr,
    iov: libc::iovec,
    cmsg: OneFdCmsg,
}

/// How one held reply went.
pub(super) enum Outcome {
    Sent,
    /// The client's buffer was full (or an earlier reply of its was):
    /// queue it.
    Full,
    /// The send failed (the errno): drop the client.
    Failed(i32),
    /// Its client is gone: nothing to do.
    Gone,
}

/// What the broker tells the outbox about a held reply at send time.
pub(super) struct Target {
    /// The client's socket, or None if the client is gone.
    pub(super) sock: Option<RawFd>,
    /// The cached socket's fd, or None if it is gone (sent without).
    pub(super) fd: Option<RawFd>,
}

pub(super) struct Outbox {
    ring: IoUring,
    held: Vec<Held>,
    bytes: Vec<u8>,
    wire: Box<[Wire]>,
    /// Indexes into `held`, grouped by client (in order within each).
    order: Vec<usize>,
    /// The client slots held for, one bit each (cleared by `clear`), and
    /// whether a client has more than one reply held: only then is there
    /// anything to group.
    slots_held: Vec<u64>,
    repeats: bool,
    /// `order`'s sort keys when a client repeats: slot, then index.
    keys: Vec<u64>,
    targets: Vec<Target>,
    outcomes: Vec<Option<i32>>,
    /// Replies are held this turn.
    pub(super) holding: bool,
    /// The activity window: its number (a client's `seen` names the last
    /// one it woke the broker in; 0 is none), wakeups so far, distinct
    /// clients so far, and distinct clients in the window before.
    epoch: u32,
    wakeups: u32,
    distinct: u32,
    recent: u32,
}

impl Outbox {
    /// An outbox, or None where io_uring cannot serve (the reason).
    pub(super) fn new() -> Result<Outbox, String> {
        let entries = CAPACITY as u32;
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .build(entries)
            .or_else(|_| IoUring::new(entries)) // before Linux 6.1
            .map_err(|e| format!("io_uring_setup: {e}"))?;
        if !ring.params().is_feature_ext_arg() {
            return Err("io_uring without IORING_FEAT_EXT_ARG (Linux 5.11)".into());
        }
        let mut probe = io_uring::Probe::new();
        ring.submitter()
            .register_probe(&mut probe)
            .map_err(|e| format!("io_uring probe: {e}"))?;
        if !probe.is_supported(opcode::SendMsg::CODE) {
            return Err("io_uring without SENDMSG".into());
        }
        // SAFETY: an all-zero msghdr, iovec and cmsghdr are valid values
        // (null pointers, zero lengths); each is filled before it is used.
        let blank = || unsafe { std::mem::zeroed::<Wire>() };
        Ok(Outbox {
            ring,
            held: Vec::with_capacity(CAPACITY),
            bytes: Vec::with_capacity(CAPACITY * 64),
            wire: (0..CAPACITY).map(|_| blank()).collect(),
            order: Vec::with_capacity(CAPACITY),
            slots_held: Vec::new(),
            repeats: false,
            keys: Vec::with_capacity(CAPACITY),
            targets: Vec::with_capacity(CAPACITY),
            outcomes: Vec::with_capacity(CAPACITY),
            holding: true,
            epoch: 1,
            wakeups: 0,
            distinct: 0,
            recent: 0,
        })
    }

    /// A client woke the broker; `seen` is its activity mark.
    #[inline]
    pub(super) fn active(&mut self, seen: &mut u32) {
        if *seen != self.epoch {
            *seen = self.epoch;
            self.distinct += 1;
        }
        self.wakeups += 1;
        if self.wakeups >= ACTIVITY_WINDOW {
            self.recent = self.distinct;
            self.distinct = 0;
            self.wakeups = 0;
            self.epoch = self.epoch.wrapping_add(1).max(1);
        }
    }

    /// A loop turn of `events` events starts: hold its replies unless it
    /// has one event (one client's replies gain nothing from being sent
    /// together, and holding one costs about 300 instructions more than
    /// sending it: a tenth of a cached request) or many clients are busy.
    pub(super) fn turn(&mut self, events: usize) {
        self.holding = events > 1 && self.recent.max(self.distinct) <= HOLD_MAX_ACTIVE;
    }

    pub(super) fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    pub(super) fn is_full(&self) -> bool {
        self.held.len() >= CAPACITY
    }

    /// Hold a reply (the caller checked there is room).
    pub(super) fn hold(
        &mut self,
        slot: usize,
        conn: u64,
        bytes: &[u8],
        entry: Option<(usize, u64)>,
    ) {
        debug_assert!(!self.is_full() && bytes.len() <= MAX_HELD_BYTES);
        let (word, bit) = (slot / 64, 1u64 << (slot % 64));
        if word >= self.slots_held.len() {
            self.slots_held.resize(word + 1, 0);
        }
        self.repeats |= self.slots_held[word] & bit != 0;
        self.slots_held[word] |= bit;
        let start = self.bytes.len();
        self.bytes.extend_from_slice(bytes);
        self.held.push(Held {
            slot,
            conn,
            start,
            len: bytes.len(),
            entry,
        });
    }

    /// The replies held, in the order they go out (a client's in order).
    pub(super) fn held(&self) -> impl Iterator<Item = &Held> {
        self.order.iter().map(|&i| &self.held[i])
    }

    /// A held reply's bytes.
    pub(super) fn bytes_of(&self, h: &Held) -> &[u8] {
        &self.bytes[h.start..h.start + h.len]
    }

    /// Put the held replies in sending order (by client, each client's in
    /// the order held) and ask `target` where each goes.
    pub(super) fn arrange(&mut self, mut target: impl FnMut(&Held) -> Target) {
        self.order.clear();
        if self.repeats {
            // A client's replies go out together, in the order held: sort
            // (slot, index) packed in one integer (an index is below 128).
            self.keys.clear();
            let held = self.held.iter().enumerate();
            self.keys
                .extend(held.map(|(i, h)| (h.slot as u64) << 8 | i as u64));
            self.keys.sort_unstable();
            self.order
                .extend(self.keys.iter().map(|&k| (k & 0xff) as usize));
        } else {
            // One reply a client (as under many busy clients): the order
            // held will do, and a sort of up to 128 would cost more than
            // the rest of the turn's bookkeeping.
            self.order.extend(0..self.held.len());
        }
        self.targets.clear();
        for &i in &self.order {
            self.targets.push(target(&self.held[i]));
        }
    }

    /// Send every held reply where [`Outbox::arrange`] said, and return how
    /// each went, in the order of [`Outbox::held`].
    /// Err: the ring failed; the replies' fate is unknown and the outbox
    /// must not be used again (the caller leaks it: the kernel may still
    /// read its buffers).
    pub(super) fn send(&mut self) -> Result<(), String> {
        let targets = &self.targets;
        self.outcomes.clear();
        self.outcomes.resize(self.order.len(), None);
        let mut submitted = 0usize;
        for (k, (&i, t)) in self.order.iter().zip(targets).enumerate() {
            let Some(sock) = t.sock else { continue };
            let h = &self.held[i];
            let w = &mut self.wire[k];
            w.iov = libc::iovec {
                iov_base: self.bytes[h.start..].as_ptr() as *mut libc::c_void,
                iov_len: h.len,
            };
            w.msg.msg_name = std::ptr::null_mut();
            w.msg.msg_namelen = 0;
            w.msg.msg_iov = &mut w.iov;
            w.msg.msg_iovlen = 1;
            w.msg.msg_flags = 0;
            match t.fd {
                Some(fd) => {
                    w.cmsg = OneFdCmsg::new(fd);
                    w.msg.msg_control = (&mut w.cmsg as *mut OneFdCmsg).cast();
                    w.msg.msg_controllen = std::mem::size_of::<OneFdCmsg>() as _;
                }
                None => {
                    w.msg.msg_control = std::ptr::null_mut();
                    w.msg.msg_controllen = 0;
                }
            }
            // The next one to the same client waits for this one; a failure
            // cancels it (ECANCELED), so a client's replies never overtake.
            let same_next = self
                .order
                .get(k + 1)
                .is_some_and(|&j| self.held[j].slot == h.slot && targets[k + 1].sock.is_some());
            let mut sqe = opcode::SendMsg::new(types::Fd(sock), &w.msg)
                .flags((libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) as u32)
                .build()
                .user_data(k as u64);
            if same_next {
                sqe = sqe.flags(squeue::Flags::IO_LINK);
            }
            // SAFETY: the msghdr, its iovec, control data and bytes live in
            // this outbox, unmoved and unchanged until every submission is
            // complete (waited for below; on a failure the outbox is leaked).
            // The fds are open: the broker holds the client's connection and
            // the cached socket (a reference in this reply keeps it) until
            // this returns. The queue has room: CAPACITY entries, drained.
            unsafe { self.ring.submission().push(&sqe) }
                .map_err(|_| "io_uring submission queue full".to_string())?;
            submitted += 1;
        }
        let mut done = 0usize;
        // MSG_DONTWAIT: every send completes within the enter (sent, or
        // EAGAIN); the timeout only guards against a kernel that would not.
        let ts = types::Timespec::new().sec(1);
        let args = types::SubmitArgs::new().timespec(&ts);
        while done < submitted {
            match self
                .ring
                .submitter()
                .submit_with_args(submitted - done, &args)
            {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) if e.raw_os_error() == Some(libc::ETIME) => {
                    return Err(format!(
                        "io_uring: {} of {submitted} sends not complete after 1 s",
                        submitted - done
                    ));
                }
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
                Err(e) => return Err(format!("io_uring_enter: {e}")),
            }
            for cqe in self.ring.completion() {
                if let Some(o) = self.outcomes.get_mut(cqe.user_data() as usize) {
                    *o = Some(cqe.result());
                    done += 1;
                }
            }
        }
        Ok(())
    }

    /// How the one held reply went, when the broker sent it itself.
    pub(super) fn sent_one(&mut self, result: Option<i32>) {
        self.outcomes.clear();
        self.outcomes.push(result);
    }

    /// The held replies in sending order, each with how it went.
    pub(super) fn results(&self) -> impl Iterator<Item = (&Held, Outcome)> {
        self.held().zip(self.outcomes.iter().map(|&r| outcome(r)))
    }

    /// Forget what was held (after [`Outbox::send`]).
    pub(super) fn clear(&mut self) {
        for h in &self.held {
            self.slots_held[h.slot / 64] = 0;
        }
        self.repeats = false;
        self.held.clear();
        self.bytes.clear();
        self.order.clear();
        self.targets.clear();
    }
}

/// How a held reply went, from its send's result.
fn outcome(result: Option<i32>) -> Outcome {
    match result {
        None => Outcome::Gone,
        Some(r) if r >= 0 => Outcome::Sent,
        Some(r) if -r == libc::EAGAIN || -r == libc::ECANCELED => Outcome::Full,
        Some(r) => Outcome::Failed(-r),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Holding stops while many clients are busy, and starts again when
    /// few are, however many idle connections there are.
    #[test]
    fn holding_follows_the_busy_clients_not_the_connections() {
        let Ok(mut ob) = Outbox::new() else {
            eprintln!("SKIP: io_uring is not available here");
            return;
        };
        // 64 busy clients: held. (Idle connections never wake the broker,
        // so they never reach `active`: there is nothing of theirs to count.)
        let mut busy = vec![0u32; 64];
        for i in 0..3 * ACTIVITY_WINDOW as usize {
            ob.active(&mut busy[i % 64]);
            ob.turn(2);
            assert!(ob.holding, "64 busy clients, wakeup {i}");
        }
        // 1,000 busy ones: not held once more than 384 woke the broker.
        let mut many = vec![0u32; 1000];
        for (i, seen) in many.iter_mut().enumerate() {
            ob.active(seen);
            ob.turn(2);
            assert_eq!(ob.holding, i < HOLD_MAX_ACTIVE as usize, "client {i}");
        }
        for i in 0..2 * ACTIVITY_WINDOW as usize {
            ob.active(&mut many[i % 1000]);
            ob.turn(2);
            assert!(!ob.holding, "1,000 busy clients, wakeup {i}");
        }
        // Back to 64: held again once a whole window had only them.
        for i in 0..3 * ACTIVITY_WINDOW as usize {
            ob.active(&mut busy[i % 64]);
        }
        ob.turn(2);
        assert!(ob.holding);
        // A turn of one event sends at once.
        ob.turn(1);
        assert!(!ob.holding);
    }

    /// Replies go out grouped by client, each client's in the order held;
    /// with one reply a client, in the order held.
    #[test]
    fn arrange_groups_a_clients_replies_in_order() {
        let Ok(mut ob) = Outbox::new() else {
            eprintln!("SKIP: io_uring is not available here");
            return;
        };
        let turn = |ob: &mut Outbox, slots: &[usize]| -> Vec<(usize, u8)> {
            for (i, &s) in slots.iter().enumerate() {
                ob.hold(s, s as u64, &[i as u8], None);
            }
            ob.arrange(|_| Target {
                sock: None,
                fd: None,
            });
            let got = ob.held().map(|h| (h.slot, ob.bytes_of(h)[0])).collect();
            ob.clear();
            got
        };
        assert_eq!(
            turn(&mut ob, &[5, 3, 5, 70, 3, 5]),
            [(3, 1), (3, 4), (5, 0), (5, 2), (5, 5), (70, 3)]
        );
        // The marks of the turn before are gone: nothing repeats here.
        assert_eq!(turn(&mut ob, &[70, 5, 3]), [(70, 0), (5, 1), (3, 2)]);
        let many: Vec<usize> = (0..CAPACITY).map(|i| (i * 37) % 1000).collect();
        let got = turn(&mut ob, &many);
        let want: Vec<(usize, u8)> = many
            .iter()
            .enumerate()
            .map(|(i, &s)| (s, i as u8))
            .collect();
        assert_eq!(got, want);
        let mut twice: Vec<usize> = (0..CAPACITY / 2).rev().collect();
        twice.extend(0..CAPACITY / 2);
        let got = turn(&mut ob, &twice);
        for (k, pair) in got.chunks(2).enumerate() {
            let first = (CAPACITY / 2 - 1 - k) as u8;
            assert_eq!(pair, [(k, first), (k, (CAPACITY / 2 + k) as u8)]);
        }
    }
}
