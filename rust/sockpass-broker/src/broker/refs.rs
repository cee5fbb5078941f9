//! References: the token table, reservations and their deadline (kept in
//! step by [`References`]' own methods); release, pick-up and expiry.

use super::cache::{Entry, Sockets};
use super::conn::Attach;
use super::dispatch::Reply;
use super::limits::EXPIRED_MEMORY;
use super::{Broker, Noisy};
use crate::holders::{Holder, Owner};
use crate::log::Level;
use crate::policy::Op;
use sockpass::proto::{self, ty};
use sockpass::{Error, Kind, Result};
use sockpass::{Token, TokenBuildHasher};
use std::collections::{HashMap, VecDeque};
use std::time::Instant;

/// Every reference by token, how many are reservations, when the first of
/// those expires, and the tokens of those that expired lately.
pub(super) struct References {
    tokens: HashMap<Token, TokenInfo, TokenBuildHasher>,
    reservations: usize,
    /// The earliest reservation deadline once scanned (None: scan again;
    /// reset whenever reservations change).
    deadline: Option<Option<Instant>>,
    /// Recently expired reservation tokens, so a late pick-up is told
    /// "expired" rather than "unknown" (bounded).
    expired: VecDeque<Token>,
}

impl References {
    pub(super) fn new() -> References {
        References {
            tokens: HashMap::default(),
            reservations: 0,
            deadline: None,
            expired: VecDeque::new(),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.tokens.len()
    }

    pub(super) fn reservations(&self) -> usize {
        self.reservations
    }

    pub(super) fn get(&self, t: &Token) -> Option<TokenInfo> {
        self.tokens.get(t).copied()
    }

    pub(super) fn get_mut(&mut self, t: &Token) -> Option<&mut TokenInfo> {
        self.tokens.get_mut(t)
    }

    /// Record a reference; a `reserved` one counts as a reservation.
    pub(super) fn insert(&mut self, t: Token, info: TokenInfo, reserved: bool) {
        self.tokens.insert(t, info);
        if reserved {
            self.reservations += 1;
            self.deadline = None;
        }
    }

    /// Forget a reference's token; say whether it was reserved with
    /// [`References::reservation_ended`].
    pub(super) fn remove(&mut self, t: &Token) -> Option<TokenInfo> {
        let info = self.tokens.remove(t);
        // A table keeps the size it grew to. Once mostly empty, shrink it:
        // tokens are random, so in a large table every new one lands on a
        // cold cache line (a 64-spec batch after 10,000 references came
        // and went: 42 -> 53 us). Amortized O(1): a shrink rehashes at most
        // an eighth of what was removed since the table last grew.
        let cap = self.tokens.capacity();
        if cap > SHRINK_ABOVE && self.tokens.len() * 8 < cap {
            self.tokens.shrink_to(self.tokens.len() * 2);
        }
        info
    }

    /// A reservation ended: picked up, released, expired or claimed.
    pub(super) fn reservation_ended(&mut self) {
        self.reservations -= 1;
        self.deadline = None;
    }

    /// The earliest reservation deadline: scanned once after reservations
    /// change, not on every turn of the loop.
    pub(super) fn earliest_deadline(&mut self, sockets: &Sockets) -> Option<Instant> {
        if self.reservations == 0 {
            return None;
        }
        if let Some(d) = self.deadline {
            return d;
        }
        let d = sockets
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

    /// Remember an expired reservation's token (the last [`EXPIRED_MEMORY`]).
    fn note_expired(&mut self, t: Token) {
        if self.expired.len() >= EXPIRED_MEMORY {
            self.expired.pop_front();
        }
        self.expired.push_back(t);
    }

    pub(super) fn was_expired(&self, t: &Token) -> bool {
        self.expired.contains(t)
    }

    /// The remembered expired tokens (an upgrade's handoff), oldest first.
    pub(super) fn expired(&self) -> impl Iterator<Item = &Token> {
        self.expired.iter()
    }

    pub(super) fn set_expired(&mut self, ts: Vec<Token>) {
        self.expired = ts.into_iter().collect();
    }
}

/// A token's places: its entry slot, its holder's position in that entry,
/// and its position in its connection's `refs` ([`NO_CONN`] while reserved).
/// One hash lookup finds all three, so a request and a release each touch
/// one hash table (the token map), not one per structure.
#[derive(Clone, Copy, Debug)]
pub(super) struct TokenInfo {
    pub(super) entry: usize,
    pub(super) holder: u32,
    pub(super) conn_pos: u32,
    /// The uid row it is charged to (the holder's; the reserver's while
    /// reserved).
    pub(super) user: u32,
}

/// The one answer for a token this client may not use, whether it exists
/// (another client's) or not: the two must not be told apart.
fn unknown_token(t: &Token) -> Error {
    Error::with_errno(
        Kind::UnknownToken,
        libc::ENOENT,
        format!("unknown token {}", t.short()),
    )
}

/// Token tables larger than this shrink once at most an eighth full.
const SHRINK_ABOVE: usize = 1024;

/// `TokenInfo::conn_pos` of a reference no connection holds (a reservation).
pub(super) const NO_CONN: u32 = u32::MAX;

impl Broker {
    pub(super) fn earliest_deadline(&mut self) -> Option<Instant> {
        self.refs.earliest_deadline(&self.sockets)
    }

    pub(super) fn expire_reservations(&mut self) {
        // No clock read on a turn of the loop with no reservation pending.
        let Some(first) = self.earliest_deadline() else {
            return;
        };
        let now = Instant::now();
        if first > now {
            return;
        }
        let mut expired = Vec::new();
        for (_, e) in self.sockets.iter() {
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
            self.refs.note_expired(t);
            self.log_noisy(
                Noisy::Expired,
                Level::Info,
                format_args!(
                    "reservation {} expired uncollected; reference dropped",
                    t.short()
                ),
            );
        }
    }

    /// What a socket leaves outside the table when it goes: its name in
    /// the fd store, its unix socket file.
    pub(super) fn forget_entry(&mut self, e: &Entry) {
        self.users.get_mut(e.user).sockets -= 1;
        self.users.forget_if_idle(e.user);
        if let (Some(st), Some(name)) = (&self.fd_store, &e.store_name) {
            if let Err(err) = st.remove(name) {
                let line = format!("fd store: cannot remove {name}: {err}");
                self.log_noisy(Noisy::Store, Level::Warning, format_args!("{line}"));
            }
        }
        if let Some(ino) = e.unix_ino {
            // The path is free again once the last reference goes, as a
            // port is.
            crate::unixsock::unlink_if_ours(&e.spec.path, ino);
        }
    }

    pub(super) fn close_if_unheld(&mut self, entry_slot: usize) {
        if self
            .sockets
            .get(entry_slot)
            .is_some_and(|e| e.holders.is_empty())
        {
            let e = self.sockets.remove(entry_slot).unwrap();
            self.forget_entry(&e);
        }
    }

    pub(super) fn release(&mut self, slot: usize, id: u32, t: &Token) -> Result<Reply> {
        let remaining = self.release_one(slot, t)?;
        proto::begin(&mut self.wbuf, ty::RELEASED, id);
        self.wbuf.extend_from_slice(&remaining.to_le_bytes());
        Ok(Reply { attach: None })
    }

    /// Each token as RELEASE would, in order, answered in one reply.
    pub(super) fn release_many(
        &mut self,
        slot: usize,
        id: u32,
        ts: proto::Tokens<'_>,
    ) -> Result<Reply> {
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
    pub(super) fn release_one(&mut self, slot: usize, t: &Token) -> Result<u32> {
        let Some(info) = self.refs.get(t) else {
            return Err(unknown_token(t));
        };
        let c = self.conns.get(slot).unwrap();
        let (creds, my_id) = (c.creds, c.id);
        let e = self.sockets.get(info.entry).unwrap();
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
            // The same answer as a token that does not exist, so a client
            // cannot learn which tokens do.
            return Err(unknown_token(t));
        }
        Ok(self.drop_reference(t))
    }

    /// Collect a reservation: the reference moves to this connection, once.
    pub(super) fn pickup(&mut self, slot: usize, id: u32, t: &Token) -> Result<Reply> {
        let unknown = || unknown_token(t);
        let expired = || {
            Error::with_errno(
                Kind::TokenExpired,
                libc::ETIME,
                format!("reservation {} expired before it was picked up", t.short()),
            )
        };
        let Some(info) = self.refs.get(t) else {
            return Err(if self.refs.was_expired(t) {
                expired()
            } else {
                unknown()
            });
        };
        let c = self.conns.get(slot).unwrap();
        let (conn_creds, conn_id, to) = (c.creds, c.id, c.user);
        // Moving to another uid charges it one more reference.
        self.ref_room(slot, true, info.user as usize != to)?;
        let e = self.sockets.get_mut(info.entry).unwrap();
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
        self.refs.reservation_ended();
        let from = info.user as usize;
        let u = self.users.get_mut(from);
        u.refs -= 1;
        u.reservations -= 1;
        self.users.get_mut(to).refs += 1;
        self.users.forget_if_idle(from);
        self.changed();
        let c = self.conns.get_mut(slot).unwrap();
        if let Some(i) = self.refs.get_mut(t) {
            i.conn_pos = c.refs.len() as u32;
            i.user = to as u32;
        }
        c.refs.push(*t);
        proto::encode_socket_reply(&mut self.wbuf, ty::SOCKET, id, t, port, true);
        Ok(Reply {
            attach: Some(Attach::Entry(info.entry, eid)),
        })
    }

    /// May connection `slot`'s uid take one more reference: the global
    /// bound (less the privileged reserve for others) and its uid's quota;
    /// with `on_conn`, the connection's own bound (`--max-refs-per-client`).
    /// `charge` false: the uid's count would not grow (checked per
    /// connection only). O(1): the uid row is the connection's index.
    pub(super) fn ref_room(&self, slot: usize, on_conn: bool, charge: bool) -> Result<()> {
        self.refs_room_n(slot, on_conn, charge, 1)
    }

    /// May connection `slot` take `more` references at once (a batch): the
    /// same bounds as [`Broker::ref_room`], for all of them.
    pub(super) fn refs_room_for(&self, slot: usize, more: usize) -> Result<()> {
        self.refs_room_n(slot, true, true, more)
    }

    fn refs_room_n(&self, slot: usize, on_conn: bool, charge: bool, more: usize) -> Result<()> {
        let Some(c) = self.conns.get(slot) else {
            return Ok(());
        };
        let lim = &self.cfg.limits;
        let more = more.max(1);
        if on_conn && c.refs.len() + more > lim.max_refs_per_client {
            return Err(Error::with_errno(
                Kind::LimitReached,
                libc::EUSERS,
                format!(
                    "this client already holds {} references (limit {})",
                    c.refs.len(),
                    lim.max_refs_per_client
                ),
            ));
        }
        if !charge {
            return Ok(());
        }
        let u = self.users.get(c.user);
        if self.refs.len() + more > super::Limits::global_room(lim.max_references, u.privileged) {
            return Err(Error::with_errno(
                Kind::LimitReached,
                libc::EUSERS,
                format!(
                    "the broker holds {} references, its limit{}",
                    self.refs.len(),
                    if u.privileged {
                        ""
                    } else {
                        " for unprivileged uids"
                    }
                ),
            ));
        }
        u.room("references", u.refs + more - 1, u.quota.references)
    }

    /// May connection `slot` take one more reference (`--max-refs-per-client`)?
    pub(super) fn refs_room(&self, slot: usize) -> Result<()> {
        self.ref_room(slot, true, true)
    }

    /// Record a new reference: its holder joins entry `es`, and one that a
    /// connection holds joins that connection's list.
    pub(super) fn add_ref(&mut self, es: usize, h: Holder, user: usize) {
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
        let reserved = matches!(h.owner, Owner::Reserved(_));
        let holder = self.sockets.get_mut(es).unwrap().holders.push(h) as u32;
        self.refs.insert(
            token,
            TokenInfo {
                entry: es,
                holder,
                conn_pos,
                user: user as u32,
            },
            reserved,
        );
        let u = self.users.get_mut(user);
        u.refs += 1;
        u.reservations += usize::from(reserved);
        self.changed();
    }

    /// Forget a reference everywhere it is recorded (the token map, its
    /// connection's list, its socket's holders, the reservation count); the
    /// entry stays, even if empty. The entry slot and the holder that was
    /// removed.
    pub(super) fn remove_ref(&mut self, t: &Token) -> Option<(usize, Holder)> {
        let info = self.refs.remove(t)?;
        let e = self.sockets.get_mut(info.entry)?;
        let (h, moved) = e.holders.swap_remove(info.holder as usize)?;
        let reserved = matches!(h.owner, Owner::Reserved(_));
        if reserved {
            self.refs.reservation_ended();
        }
        let u = self.users.get_mut(info.user as usize);
        u.refs -= 1;
        u.reservations -= usize::from(reserved);
        self.users.forget_if_idle(info.user as usize);
        self.changed();
        // The last holder moved into the gap: its token says so.
        if let Some(m) = moved.and_then(|m| self.refs.get_mut(&m)) {
            m.holder = info.holder;
        }
        if let (Owner::Conn(slot), true) = (h.owner, info.conn_pos != NO_CONN) {
            // Gone already when the connection is being dropped.
            if let Some(c) = self.conns.get_mut(slot) {
                let pos = info.conn_pos as usize;
                if c.refs.get(pos) == Some(t) {
                    c.refs.swap_remove(pos);
                    if let Some(m) = c.refs.get(pos).and_then(|m| self.refs.get_mut(m)) {
                        m.conn_pos = info.conn_pos;
                    }
                }
            }
        }
        Some((info.entry, h))
    }

    /// Drop one reference; close the socket when it was the last. Returns the
    /// references left on that socket.
    pub(super) fn drop_reference(&mut self, t: &Token) -> u32 {
        let Some((es, _)) = self.remove_ref(t) else {
            return 0;
        };
        let Some(e) = self.sockets.get(es) else {
            return 0;
        };
        let left = e.holders.len() as u32;
        if left == 0 {
            let e = self.sockets.remove(es).unwrap();
            self.forget_entry(&e);
            // Dropping `e` closes the broker's copy; the port is free once
            // the clients close theirs.
        }
        left
    }
}
