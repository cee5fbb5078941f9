//! The loop mechanics: epoll, its event tags, the wait and its timeout.
//! What an event does is the broker's (accept, connection I/O, expiry).

use super::Broker;
use rustix::event::epoll::{self, Event, EventData, EventFlags};
use rustix::event::Timespec;
use sockpass::{Error, Result};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::Instant;

/// An epoll instance.
pub(super) struct Epoll(OwnedFd);

impl Epoll {
    pub(super) fn new() -> Result<Epoll> {
        // SAFETY: plain syscall.
        let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if ep < 0 {
            return Err(Error::last_os("epoll_create1"));
        }
        // SAFETY: ep is a new fd.
        Ok(Epoll(unsafe { OwnedFd::from_raw_fd(ep) }))
    }

    pub(super) fn ctl(&self, op: i32, fd: i32, events: u32, data: u64) -> Result<()> {
        let mut ev = libc::epoll_event { events, u64: data };
        // SAFETY: valid epoll fd and event struct.
        if unsafe { libc::epoll_ctl(self.0.as_raw_fd(), op, fd, &mut ev) } < 0 {
            return Err(Error::last_os("epoll_ctl"));
        }
        Ok(())
    }

    /// Wait for events; the count, or the errno. Through rustix, a plain
    /// `epoll_pwait`: glibc's `epoll_wait` is a cancellation point, which
    /// costs every turn two calls into pthread (the broker never cancels).
    fn wait(&self, events: &mut [Event], timeout: i32) -> std::result::Result<usize, i32> {
        let timeout = (timeout >= 0).then(|| Timespec {
            tv_sec: i64::from(timeout / 1000),
            tv_nsec: i64::from(timeout % 1000) * 1_000_000,
        });
        epoll::wait(&self.0, events, timeout.as_ref()).map_err(|e| e.raw_os_error())
    }
}

pub(super) const EV_LISTENER: u64 = 0;
pub(super) const EV_STOP: u64 = 1;
/// The inotify fd that reports status tables gone.
pub(super) const EV_STATUS_GONE: u64 = 2;
pub(super) const EV_CONN_BASE: u64 = 16;

impl Broker {
    /// A new turn: count each uid's connections with requests waiting in
    /// it, whose reads share the uid's part of the turn
    /// ([`TURN_SHARE`](super::limits::TURN_SHARE)).
    fn count_ready(&mut self, events: &[Event]) {
        self.turn += 1;
        for ev in events {
            let (data, flags) = ({ ev.data }.u64(), { ev.flags }.bits());
            if data >= EV_CONN_BASE && flags & libc::EPOLLIN as u32 != 0 {
                if let Some(c) = self.conns.get((data - EV_CONN_BASE) as usize) {
                    self.users.count_ready(c.user, self.turn);
                }
            }
        }
    }

    /// Serve until `stop` polls readable (a signalfd, an eventfd, a pipe).
    pub fn run(&mut self, stop: Option<BorrowedFd<'_>>) -> Result<()> {
        if let Some(s) = stop {
            self.epoll.ctl(
                libc::EPOLL_CTL_ADD,
                s.as_raw_fd(),
                libc::EPOLLIN as u32,
                EV_STOP,
            )?;
        }
        let none = Event {
            flags: EventFlags::empty(),
            data: EventData::new_u64(0),
        };
        let mut events = vec![none; 256];
        loop {
            // Replies made outside a turn (an upgrade's answer) go out
            // before the loop sleeps.
            self.flush_outbox();
            let timeout = self.next_timeout_ms();
            let n = match self.epoll.wait(&mut events, timeout) {
                Ok(n) => n,
                Err(libc::EINTR) => continue,
                Err(e) => return Err(Error::os(e, "epoll_wait")),
            };
            if let Some(ob) = &mut self.outbox {
                ob.turn(n);
            }
            self.count_ready(&events[..n]);
            for &ev in &events[..n] {
                // Copied out: the event is packed on x86_64.
                let (data, flags) = ({ ev.data }.u64(), { ev.flags }.bits());
                match data {
                    EV_STOP => {
                        self.flush_outbox();
                        if let Some(s) = stop {
                            let _ = self.epoll.ctl(libc::EPOLL_CTL_DEL, s.as_raw_fd(), 0, 0);
                        }
                        return Ok(());
                    }
                    EV_LISTENER => self.accept_client(),
                    EV_STATUS_GONE => self.tables_gone(),
                    d => self.conn_event((d - EV_CONN_BASE) as usize, flags),
                }
                // Sockets a hang-up dropped are closed before the next
                // event, as a request for their address may be in it.
                crate::closer::settle_pending();
            }
            // The turn's replies, together.
            self.flush_outbox();
            self.expire_reservations();
            crate::closer::settle_pending();
            if self.upgrade.is_some() {
                // Hand over between events: every request read so far is
                // answered or queued; the rest wait in the kernel for the
                // new image.
                if let Some(s) = stop {
                    let _ = self.epoll.ctl(libc::EPOLL_CTL_DEL, s.as_raw_fd(), 0, 0);
                }
                return Ok(());
            }
        }
    }

    pub(super) fn next_timeout_ms(&mut self) -> i32 {
        self.earliest_deadline().map_or(-1, |d| {
            let left = d.saturating_duration_since(Instant::now());
            (left.as_millis().min(i32::MAX as u128) as i32).saturating_add(1)
        })
    }
}

pub(super) fn set_nonblock(fd: &OwnedFd) -> Result<()> {
    sockpass::sys::set_nonblocking(std::os::fd::AsFd::as_fd(fd))
        .map_err(|e| Error::os(e, "fcntl O_NONBLOCK"))
}
