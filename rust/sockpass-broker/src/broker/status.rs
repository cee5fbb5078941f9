//! STATUS: the table of sockets, references and per-uid use, sent as a
//! sealed memfd, and the bound on what those memfds can pin.
//!
//! A memfd outlives its reply: it sits in the client's receive queue until
//! read, then in the client's fd table until closed, and a client may keep
//! it (or reopen it through /proc) for as long as it likes. So the broker
//! counts a table as live until the kernel frees it: an inotify watch on
//! each memfd reports `IN_IGNORED` when its inode goes (the last fd and the
//! last queued message holding it gone, wherever they were). A uid may have
//! `--max-status-per-uid` tables live, all uids together [`MAX_REPLY_FDS`]
//! (less the privileged reserve for others). An unchanged table is built
//! once: the requests of one uid share its memfd until something the table
//! shows changes (`Broker::gen`), so a flood of STATUS costs one table, not
//! one per request, and the rows are encoded without copies.

use super::conn::Attach;
use super::dispatch::Reply;
use super::limits::{Limits, MAX_REPLY_FDS};
use super::Broker;
use crate::holders::Owner;
use sockpass::proto::{self, ty, UidCounts, UidRow};
use sockpass::{Error, Kind, Result};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// A table built for one uid at one generation.
struct Built {
    gen: u64,
    user: usize,
    fd: Rc<OwnedFd>,
}

/// The status tables alive and the last one built per uid.
pub(super) struct StatusTables {
    /// Reports each table's end (`IN_IGNORED`); None if inotify failed.
    inotify: Option<OwnedFd>,
    /// Tables still open anywhere: (watch, uid row charged).
    live: Vec<(i32, usize)>,
    /// The last table built for each uid that asked, while current.
    built: Vec<Built>,
    /// The encoded rows and the generation they show.
    rows: Vec<u8>,
    rows_gen: Option<u64>,
    /// The broker's fd count for unprivileged askers: read at most every
    /// [`FD_COUNT_EVERY`] (a directory read per request is not free).
    fds: Option<(Instant, u32)>,
}

const FD_COUNT_EVERY: Duration = Duration::from_millis(100);

impl StatusTables {
    pub(super) fn new() -> StatusTables {
        // SAFETY: plain syscall; the result is a new fd or -1.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        StatusTables {
            // SAFETY: fd is new when non-negative.
            inotify: (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) }),
            live: Vec::new(),
            built: Vec::new(),
            rows: Vec::new(),
            rows_gen: None,
            fds: None,
        }
    }

    pub(super) fn inotify_fd(&self) -> Option<i32> {
        self.inotify.as_ref().map(|f| f.as_raw_fd())
    }

    /// Stop sharing the tables built so far (the state changed).
    #[inline]
    pub(super) fn forget_built(&mut self) {
        if !self.built.is_empty() {
            self.built.clear();
        }
    }

    /// Tables alive, anywhere.
    pub(super) fn live(&self) -> usize {
        self.live.len()
    }

    /// Watch `fd` until the kernel frees it; its watch, or None.
    fn watch(&self, fd: &OwnedFd) -> Option<i32> {
        let ino = self.inotify.as_ref()?;
        let path = format!("/proc/self/fd/{}\0", fd.as_raw_fd());
        // SAFETY: a NUL-terminated path; IN_IGNORED comes with any mask.
        let wd = unsafe {
            libc::inotify_add_watch(ino.as_raw_fd(), path.as_ptr().cast(), libc::IN_DELETE_SELF)
        };
        (wd >= 0).then_some(wd)
    }
}

impl Broker {
    pub(super) fn status(&mut self, slot: usize, id: u32) -> Result<Reply> {
        let user = self.conns.get(slot).unwrap().user;
        let fd = match self
            .status
            .built
            .iter()
            .find(|b| b.user == user && b.gen == self.gen)
        {
            Some(b) => b.fd.clone(),
            None => self.build_status(user)?,
        };
        let privileged = self.users.get(user).privileged;
        proto::begin(&mut self.wbuf, ty::STATUS_OK, id);
        let mut counters = self.counters_without_fds();
        counters.broker_fds = self.broker_fds(privileged);
        counters.encode(&mut self.wbuf);
        Ok(Reply {
            attach: Some(Attach::Table(fd)),
        })
    }

    /// The fd count: fresh for a privileged asker, else at most
    /// [`FD_COUNT_EVERY`] old.
    fn broker_fds(&mut self, privileged: bool) -> u32 {
        let now = Instant::now();
        match self.status.fds {
            Some((at, n)) if !privileged && now.duration_since(at) < FD_COUNT_EVERY => n,
            _ => {
                let n = super::broker_fds();
                self.status.fds = Some((now, n));
                n
            }
        }
    }

    /// Build the table for uid row `user`, within the bounds on live ones.
    fn build_status(&mut self, user: usize) -> Result<Rc<OwnedFd>> {
        let gen = self.gen;
        let u = self.users.get(user);
        let room = Limits::global_room(MAX_REPLY_FDS, u.privileged);
        if self.status.live() >= room {
            return Err(Error::with_errno(
                Kind::LimitReached,
                libc::EMFILE,
                format!(
                    "{} status tables are still open or unread, the limit; try again",
                    self.status.live()
                ),
            ));
        }
        u.room("status tables", u.status, u.quota.status)?;
        if self.status.rows_gen != Some(gen) {
            self.encode_rows();
            self.status.rows_gen = Some(gen);
        }
        let mut table = std::mem::take(&mut self.status.rows);
        let rows_len = table.len();
        self.encode_users(&mut table);
        let made = sockpass::memfd::from_bytes("sockpass-status", &table);
        table.truncate(rows_len);
        self.status.rows = table;
        let fd = made?;
        match self.status.watch(&fd) {
            Some(wd) => self.track_table(wd, user),
            None if self.users.get(user).privileged => {
                // Untracked: counted only while the broker holds it.
            }
            None => {
                return Err(Error::with_errno(
                    Kind::LimitReached,
                    libc::ENOSPC,
                    "status is unavailable to unprivileged uids: the broker cannot watch its status tables (inotify)",
                ))
            }
        }
        let fd = Rc::new(fd);
        self.status.built.push(Built {
            gen,
            user,
            fd: fd.clone(),
        });
        Ok(fd)
    }

    /// Count a table as live for uid row `user` until its watch ends.
    fn track_table(&mut self, wd: i32, user: usize) {
        // The same memfd handed over twice (an upgrade) has one watch.
        if !self.status.live.iter().any(|(w, _)| *w == wd) {
            self.status.live.push((wd, user));
            self.users.get_mut(user).status += 1;
        }
    }

    /// A status memfd handed over by an upgrade, queued for `user`.
    pub(super) fn adopt_table(&mut self, fd: OwnedFd, user: usize) -> Rc<OwnedFd> {
        if let Some(wd) = self.status.watch(&fd) {
            self.track_table(wd, user);
        }
        Rc::new(fd)
    }

    /// inotify says tables went: uncharge them.
    pub(super) fn tables_gone(&mut self) {
        let Some(ino) = self.status.inotify.as_ref().map(|f| f.as_raw_fd()) else {
            return;
        };
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: reading into a local buffer of its length.
            let n = unsafe { libc::read(ino, buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                return;
            }
            let mut at = 0usize;
            let hdr = std::mem::size_of::<libc::inotify_event>();
            while at + hdr <= n as usize {
                // SAFETY: the kernel wrote whole events; read unaligned.
                let ev: libc::inotify_event =
                    unsafe { std::ptr::read_unaligned(buf[at..].as_ptr().cast()) };
                at += hdr + ev.len as usize;
                if ev.mask & libc::IN_IGNORED != 0 {
                    if let Some(i) = self.status.live.iter().position(|(w, _)| *w == ev.wd) {
                        let (_, user) = self.status.live.swap_remove(i);
                        self.users.get_mut(user).status -= 1;
                        self.users.forget_if_idle(user);
                    }
                }
            }
        }
    }

    /// Every reference, one row each, into `status.rows`.
    fn encode_rows(&mut self) {
        let out = &mut self.status.rows;
        out.clear();
        let mut rows = 0u32;
        out.extend_from_slice(&0u32.to_le_bytes());
        for (_, e) in self.sockets.iter() {
            for h in &e.holders {
                proto::StatusRowRef {
                    socket_id: e.id,
                    spec: &e.spec,
                    port: e.port,
                    refs: e.holders.len() as u32,
                    conn_id: h.conn_id,
                    pid: h.creds.pid,
                    uid: h.creds.uid,
                    gid: h.creds.gid,
                    share: h.share,
                    reserved: matches!(h.owner, Owner::Reserved(_)),
                    app: &h.app,
                }
                .encode(out);
                rows += 1;
            }
        }
        out[..4].copy_from_slice(&rows.to_le_bytes());
    }

    /// The per-uid section: u32 n, n [`UidRow`]s by uid.
    fn encode_users(&self, out: &mut Vec<u8>) {
        let users = self.users.sorted();
        out.extend_from_slice(&(users.len() as u32).to_le_bytes());
        let c = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        for u in users {
            UidRow {
                uid: u.uid,
                used: UidCounts {
                    connections: c(u.conns),
                    sockets: c(u.sockets),
                    references: c(u.refs),
                    reservations: c(u.reservations),
                    status: c(u.status),
                },
                quota: UidCounts {
                    connections: c(u.quota.connections),
                    sockets: c(u.quota.sockets),
                    references: c(u.quota.references),
                    reservations: c(u.quota.reservations),
                    status: c(u.quota.status),
                },
            }
            .encode(out);
        }
    }
}
