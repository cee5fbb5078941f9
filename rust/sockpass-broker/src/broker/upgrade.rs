//! Upgrade in place: the pending upgrade, and the broker flattened to
//! `handoff::State` and rebuilt from it.

use super::cache::Entry;
use super::config::Config;
use super::conn::{Attach, Conn, Outgoing};
use super::dispatch::Reply;
use super::event_loop::{set_nonblock, EV_CONN_BASE};
use super::refs::{References, TokenInfo, NO_CONN};
use super::Broker;
use crate::closer::OffLoopFd;
use crate::handoff;
use crate::holders::{Holder, Holders, Owner};
use sockpass::proto::{self, ty};
use sockpass::ShareMode;
use sockpass::SocketSpec;
use sockpass::{Error, Kind, Result};
use std::cell::Cell;
use std::collections::VecDeque;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// An upgrade waiting for the daemon to carry it out.
#[derive(Clone, Debug)]
pub(super) struct PendingUpgrade {
    /// The requester's connection slot and request id (None: a signal).
    pub(super) from: Option<(usize, u32)>,
    /// The binary to execute (None: the daemon's default).
    pub(super) exe: Option<PathBuf>,
}

impl Broker {
    pub(super) fn ask_upgrade(&mut self, slot: usize, id: u32, exe: &str) -> Result<Reply> {
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
                self.conns.len(),
                self.sockets.len(),
                self.refs.len(),
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
    pub fn into_state(mut self, activated: bool) -> (handoff::State, Config) {
        // Held replies are sent, not handed over (the new image has none).
        self.flush_outbox();
        let upgrade_from = self
            .upgrade
            .as_ref()
            .and_then(|u| u.from)
            .map(|(s, id)| (s as u64, id));
        let now = Instant::now();
        let mut entries = Vec::new();
        for (slot, e) in self.sockets.into_entries() {
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
                fd: e.fd.into_inner(),
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
                        // Shared with other replies: each gets its own fd.
                        Some(Attach::Table(t)) => match Rc::try_unwrap(t) {
                            Ok(fd) => handoff::AttachState::Owned(fd),
                            Err(t) => match t.try_clone() {
                                Ok(fd) => handoff::AttachState::Owned(fd),
                                Err(_) => handoff::AttachState::None,
                            },
                        },
                        Some(Attach::Entries(v)) => handoff::AttachState::Entries(
                            v.into_iter().map(|(s, id)| (s as u64, id)).collect(),
                        ),
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
                tokens: c.refs.iter().map(|&r| self.refs.token(r)).collect(),
                outq,
                pipelining: c.pipelining,
            });
        }
        let st = handoff::State {
            listener: self.listener,
            activated,
            next_conn_id: self.next_conn_id,
            next_entry_id: self.next_entry_id,
            next_token_seq: self.refs.handoff_seq(),
            token_key: self.refs.key(),
            conns,
            entries,
            expired: self.refs.expired().copied().collect(),
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
        b.refs = References::resume(st.next_token_seq, st.token_key);
        b.refs.set_expired(st.expired);
        let now = Instant::now();
        for e in st.entries {
            let spec: SocketSpec = e.spec.parse()?;
            let mut holders = Holders::default();
            // The creator is not handed over: the socket is charged to its
            // first holder's uid (root's if none).
            let first_uid = e.holders.first().map_or(0, |h| h.creds.uid);
            let owner_user = b.users.slot(first_uid, &b.cfg, b.broker_uid);
            b.users.get_mut(owner_user).sockets += 1;
            for h in e.holders {
                let user = b.users.slot(h.creds.uid, &b.cfg, b.broker_uid);
                let u = b.users.get_mut(user);
                u.refs += 1;
                u.reservations += usize::from(h.conn_slot.is_none());
                let owner = match h.conn_slot {
                    Some(c) => Owner::Conn(c as usize),
                    None => Owner::Reserved(now + Duration::from_millis(h.reserved_ms)),
                };
                let due = match owner {
                    Owner::Reserved(d) => Some(d),
                    Owner::Conn(_) => None,
                };
                let pos = holders.len() as u32;
                let rslot = b.refs.adopt(
                    h.token,
                    TokenInfo {
                        entry: e.slot as usize,
                        holder: pos,
                        conn_pos: NO_CONN,
                        user: user as u32,
                    },
                    due,
                );
                holders.push(Holder {
                    token: h.token,
                    rslot,
                    owner,
                    share: ShareMode::from_wire(h.share)?,
                    app: Rc::from(h.app.as_str()),
                    creds: h.creds,
                    conn_id: h.conn_id,
                });
            }
            let key = crate::closer::port_key(&spec, e.port);
            b.sockets.insert_at(
                e.slot as usize,
                Entry {
                    id: e.id,
                    spec,
                    fd: OffLoopFd::new(e.fd, key),
                    port: e.port,
                    holders,
                    keyed: e.keyed,
                    per_worker: e.per_worker,
                    unix_ino: e.unix_ino,
                    store_name: e.store_name,
                    adopted: e.adopted,
                    user: owner_user,
                    allowed: Cell::new(None),
                },
            );
        }
        for c in st.conns {
            let slot = c.slot as usize;
            set_nonblock(&c.fd)?;
            let user = b.users.slot(c.creds.uid, &b.cfg, b.broker_uid);
            b.users.get_mut(user).conns += 1;
            let mut outq = VecDeque::with_capacity(c.outq.len());
            for (bytes, a) in c.outq {
                let attach = match a {
                    handoff::AttachState::None => None,
                    handoff::AttachState::Entry(s, id) => Some(Attach::Entry(s as usize, id)),
                    handoff::AttachState::Entries(v) => Some(Attach::Entries(
                        v.into_iter().map(|(s, id)| (s as usize, id)).collect(),
                    )),
                    handoff::AttachState::Owned(fd) => Some(Attach::Table(b.adopt_table(fd, user))),
                };
                outq.push_back(Outgoing { bytes, attach });
            }
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
                    refuses_fds: crate::closer::refuses_passed_fds(&c.fd),
                    fd: c.fd,
                    id: c.id,
                    creds: c.creds,
                    user,
                    default_app: c.default_app.map(|a| Rc::from(a.as_str())),
                    last_app: Rc::from(c.last_app.as_str()),
                    // Filled from the holders below: they say who holds what.
                    refs: Vec::new(),
                    outq,
                    paused,
                    pipelining: c.pipelining,
                    wakeups: 0,
                    credit: 0,
                    seen: 0,
                },
            );
            b.epoll.ctl(
                libc::EPOLL_CTL_ADD,
                raw,
                ev as u32,
                EV_CONN_BASE + slot as u64,
            )?;
        }
        b.sockets.rebuild_free();
        b.refs.adopted();
        b.conns.rebuild_free();
        // Each connection's list, from its holders (positions in slot order).
        for (_, e) in b.sockets.iter() {
            for h in &e.holders {
                if let Owner::Conn(slot) = h.owner {
                    if let Some(c) = b.conns.get_mut(slot) {
                        b.refs.info_mut(h.rslot).conn_pos = c.refs.len() as u32;
                        c.refs.push(h.rslot);
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
}
