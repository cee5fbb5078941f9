//! References: the token table, reservations and their deadline (kept in
//! step by [`References`]' own methods); release, pick-up and expiry.

use super::cache::Entry;
use super::conn::Attach;
use super::dispatch::Reply;
use super::limits::EXPIRED_MEMORY;
use super::{Broker, Noisy};
use crate::holders::{Holder, Owner};
use crate::log::Level;
use crate::policy::Op;
use sockpass::proto::{self, ty};
use sockpass::{Error, Kind, Result};
use sockpass::{Token, TokenBuildHasher, TokenSource};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::Instant;

/// Every reference, in a table of slots its token locates; how many are
/// reservations, when the first of those expires, and the tokens of those
/// that expired lately.
///
/// A token's last 8 bytes encipher (epoch, slot, generation) under the
/// broker's key (see [`block`]), so a lookup deciphers them, goes to that
/// slot and compares the whole token: no hash table of random keys, whose
/// inserts and removals missed the cache once it held tens of thousands.
/// A slot's generation grows on every reuse and the slot retires before
/// it would wrap, so no (epoch, slot, generation) is issued twice; each
/// broker image takes a fresh epoch (an upgrade hands the next one on,
/// in the old sequence field), so free slots' generations need not be
/// handed over. Tokens that do not locate themselves (made by an older
/// broker as a sequence, or under a key since replaced) are found through
/// `legacy`, empty otherwise.
pub(super) struct References {
    src: TokenSource,
    epoch: u64,
    /// The key is the one earlier images used (false once replaced: their
    /// tokens no longer decipher to their slots).
    same_key: bool,
    slots: Vec<Slot>,
    /// Each slot's next generation (kept when the slots are cut back, so
    /// a slot made again does not repeat one).
    gens: Vec<u32>,
    /// Free slots; the last freed is reused first (its lines are warm).
    free: Vec<u32>,
    legacy: HashMap<Token, u32, TokenBuildHasher>,
    len: usize,
    /// Try cutting the table back only below this many references.
    shrink_below: usize,
    /// The reservations pending pick-up, by (deadline, slot): the earliest
    /// is the first, and expiry takes a prefix. Scanning every holder for
    /// the next deadline each time a reservation came or went let one
    /// client, reserving and releasing in a loop, cost the broker 4 ms an
    /// operation against 100,000 references held, and every other client
    /// wait behind it (tests/hostile_quota.rs).
    pending: BTreeSet<(Instant, u32)>,
    /// Recently expired reservation tokens, so a late pick-up is told
    /// "expired" rather than "unknown" (bounded).
    expired: VecDeque<Token>,
}

#[derive(Clone, Copy)]
struct Slot {
    token: Token,
    info: TokenInfo,
}

/// `TokenInfo::entry` of a free slot, and of one retired for good.
const FREE: usize = usize::MAX;
const RETIRED: usize = usize::MAX - 1;
const FREE_SLOT: Slot = Slot {
    token: Token::from_bytes([0; Token::LEN]),
    info: TokenInfo {
        entry: FREE,
        holder: 0,
        conn_pos: NO_CONN,
        user: 0,
    },
};

/// A slot token's block: bit 63 set (a sequence, as older brokers made,
/// never has it), then the epoch, the slot and the slot's generation.
const EPOCH_BITS: u32 = 9;
const SLOT_BITS: u32 = 22;
const MAX_SLOTS: usize = 1 << SLOT_BITS;
const EPOCHS: u64 = 1 << EPOCH_BITS;
const TAG: u64 = 1 << 63;

fn block(epoch: u64, slot: u32, gen: u32) -> u64 {
    TAG | epoch << (SLOT_BITS + 32) | u64::from(slot) << 32 | u64::from(gen)
}

/// The slot a block names, if it is a slot token's.
fn slot_of(b: u64) -> Option<usize> {
    (b & TAG != 0).then_some(((b >> 32) as usize) & (MAX_SLOTS - 1))
}

impl References {
    pub(super) fn new() -> References {
        References::with_source(TokenSource::new(), 0, true)
    }

    fn with_source(src: TokenSource, epoch: u64, same_key: bool) -> References {
        References {
            src,
            epoch,
            same_key,
            slots: Vec::new(),
            gens: Vec::new(),
            free: Vec::new(),
            legacy: HashMap::default(),
            len: 0,
            shrink_below: usize::MAX,
            pending: BTreeSet::new(),
            expired: VecDeque::new(),
        }
    }

    /// Carry on after an upgrade from the handed-over sequence field and
    /// key: an older broker's sequence (bit 63 clear) leaves epoch 0 free
    /// (its tokens are found through `legacy`); ours names the next epoch,
    /// rounded up past any an older broker in between may have used. Once
    /// the epochs run out, a new key, and every token before it is legacy.
    pub(super) fn resume(seq: u64, key: [u64; 2]) -> References {
        if seq & TAG == 0 {
            return References::with_source(TokenSource::resume(seq, key), 0, true);
        }
        let epoch = (seq & !TAG).div_ceil(1 << (SLOT_BITS + 32));
        if epoch < EPOCHS {
            References::with_source(TokenSource::resume(1, key), epoch, true)
        } else {
            References::with_source(TokenSource::new(), 0, false)
        }
    }

    /// The sequence field an upgrade hands over: the next image's epoch
    /// (all ones once they run out, which makes it take a new key).
    pub(super) fn handoff_seq(&self) -> u64 {
        match self.epoch + 1 {
            e if e < EPOCHS => TAG | e << (SLOT_BITS + 32),
            _ => u64::MAX,
        }
    }

    pub(super) fn key(&self) -> [u64; 2] {
        self.src.key()
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn reservations(&self) -> usize {
        self.pending.len()
    }

    /// The slot holding token `t`, if it is live.
    pub(super) fn find(&self, t: &Token) -> Option<u32> {
        if let Some(r) = slot_of(self.src.block_of(t)) {
            if let Some(s) = self.slots.get(r) {
                if s.token == *t && s.info.entry < RETIRED {
                    return Some(r as u32);
                }
            }
        }
        if self.legacy.is_empty() {
            return None;
        }
        self.legacy.get(t).copied()
    }

    pub(super) fn info(&self, r: u32) -> TokenInfo {
        self.slots[r as usize].info
    }

    pub(super) fn info_mut(&mut self, r: u32) -> &mut TokenInfo {
        &mut self.slots[r as usize].info
    }

    pub(super) fn token(&self, r: u32) -> Token {
        self.slots[r as usize].token
    }

    /// A new reference: its slot and token (a reservation is recorded by
    /// [`References::reservation_started`]).
    pub(super) fn issue(&mut self, info: TokenInfo) -> Result<(u32, Token)> {
        let r = match self.free.last() {
            Some(&r) => r,
            None if self.slots.len() < MAX_SLOTS => self.slots.len() as u32,
            None => {
                return Err(Error::with_errno(
                    Kind::LimitReached,
                    libc::EUSERS,
                    format!("the broker's {MAX_SLOTS} reference slots are all taken"),
                ))
            }
        };
        let gen = self.gens.get(r as usize).copied().unwrap_or(0);
        let token = self.src.make_for(block(self.epoch, r, gen))?;
        if self.free.pop().is_none() {
            self.slots.push(FREE_SLOT);
            if self.gens.len() < self.slots.len() {
                self.gens.push(0);
            }
            self.shrink_below = usize::MAX;
        }
        // Wraps to 0 only after the last generation: then the slot retires.
        self.gens[r as usize] = gen.wrapping_add(1);
        self.slots[r as usize] = Slot { token, info };
        self.len += 1;
        Ok((r, token))
    }

    /// Slot `r` holds a reservation until `deadline`.
    pub(super) fn reservation_started(&mut self, deadline: Instant, r: u32) {
        self.pending.insert((deadline, r));
    }

    /// Take over a token an earlier broker image issued (a reservation's
    /// with its deadline): in its own slot when it names a free one, else
    /// found through `legacy`. Call [`References::adopted`] once all are in.
    pub(super) fn adopt(&mut self, t: Token, info: TokenInfo, reserved: Option<Instant>) -> u32 {
        let at = slot_of(self.src.block_of(&t))
            .filter(|&r| self.same_key && self.slots.get(r).is_none_or(|s| s.info.entry == FREE));
        let r = match at {
            Some(r) => {
                if r >= self.slots.len() {
                    self.slots.resize(r + 1, FREE_SLOT);
                }
                r
            }
            None => {
                self.slots.push(FREE_SLOT);
                let r = self.slots.len() - 1;
                self.legacy.insert(t, r as u32);
                r
            }
        };
        self.slots[r] = Slot { token: t, info };
        self.len += 1;
        if let Some(d) = reserved {
            self.reservation_started(d, r as u32);
        }
        r as u32
    }

    /// After [`References::adopt`]: the free list (lowest slots first), and
    /// a fresh epoch's generations.
    pub(super) fn adopted(&mut self) {
        self.gens = vec![0; self.slots.len()];
        self.free = (0..self.slots.len() as u32)
            .rev()
            .filter(|&r| self.slots[r as usize].info.entry == FREE)
            .collect();
    }

    /// Forget the reference in slot `r`, if live; say whether it was
    /// reserved with [`References::reservation_ended`].
    pub(super) fn remove(&mut self, r: u32) -> Option<TokenInfo> {
        let live = self.slots.get(r as usize)?.info.entry < RETIRED;
        if !live {
            return None;
        }
        let s = std::mem::replace(&mut self.slots[r as usize], FREE_SLOT);
        self.len -= 1;
        if !self.legacy.is_empty() {
            self.legacy.remove(&s.token);
        }
        if self.gens[r as usize] == 0 {
            // Every generation issued: never again.
            self.slots[r as usize].info.entry = RETIRED;
        } else {
            self.free.push(r);
        }
        if self.slots.len() > SHRINK_ABOVE
            && self.len * 8 < self.slots.len()
            && (self.len < self.shrink_below || self.len == 0)
        {
            self.shrink();
        }
        Some(s.info)
    }

    /// Once mostly empty, cut the free tail off: a table keeps the size it
    /// grew to, and its memory with it. The free list then hands out the
    /// lowest slots first, so the live ones gather low for the next cut.
    /// Amortized O(1): a try scans the table, and the next waits until
    /// half the references left are gone, the table grows, or it empties.
    fn shrink(&mut self) {
        self.shrink_below = self.len / 2;
        let keep = self
            .slots
            .iter()
            .rposition(|s| s.info.entry != FREE)
            .map_or(0, |i| i + 1);
        self.slots.truncate(keep);
        self.slots.shrink_to(keep.max(self.len * 2));
        // The free slots are exactly those marked FREE: one pass over the
        // table lists them highest first, so the lowest is handed out first.
        // Sorting the old list instead held the loop 1 ms a try at 64,000
        // slots (0.4 ms now), 14 tries as 64 clients with 1,000 each left.
        self.free.clear();
        let slots = &self.slots;
        self.free.extend(
            (0..keep as u32)
                .rev()
                .filter(|&r| slots[r as usize].info.entry == FREE),
        );
        self.free.shrink_to(self.free.len() * 2);
    }

    /// The reservation in slot `r`, due at `deadline`, ended: picked up,
    /// released, expired or claimed.
    pub(super) fn reservation_ended(&mut self, deadline: Instant, r: u32) {
        let was = self.pending.remove(&(deadline, r));
        debug_assert!(was, "slot {r} had no reservation due then");
    }

    /// The earliest reservation deadline.
    pub(super) fn earliest_deadline(&self) -> Option<Instant> {
        self.pending.first().map(|&(d, _)| d)
    }

    /// The slots of the reservations due by `now`, earliest first.
    fn due(&self, now: Instant) -> Vec<u32> {
        self.pending
            .range(..=(now, u32::MAX))
            .map(|&(_, r)| r)
            .collect()
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

/// Reference tables larger than this shrink once at most an eighth full.
const SHRINK_ABOVE: usize = 1024;

/// `TokenInfo::conn_pos` of a reference no connection holds (a reservation).
pub(super) const NO_CONN: u32 = u32::MAX;

impl Broker {
    pub(super) fn earliest_deadline(&self) -> Option<Instant> {
        self.refs.earliest_deadline()
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
        for r in self.refs.due(now) {
            let t = self.refs.token(r);
            self.drop_reference(r);
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
        let Some(r) = self.refs.find(t) else {
            return Err(unknown_token(t));
        };
        let info = self.refs.info(r);
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
        Ok(self.drop_reference(r))
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
        let Some(r) = self.refs.find(t) else {
            return Err(if self.refs.was_expired(t) {
                expired()
            } else {
                unknown()
            });
        };
        let c = self.conns.get(slot).unwrap();
        let (conn_creds, conn_id, to) = (c.creds, c.id, c.user);
        let info = self.refs.info(r);
        // Moving to another uid charges it one more reference.
        self.ref_room(slot, true, info.user as usize != to)?;
        let e = self.sockets.get_mut(info.entry).unwrap();
        let h = e.holders.get_mut(info.holder as usize).unwrap();
        if matches!(h.owner, Owner::Reserved(_)) {
            self.cfg
                .policy
                .check_op(Op::Pickup, &conn_creds, &e.spec, h.share)?;
        }
        let due = match h.owner {
            Owner::Reserved(d) if d > Instant::now() => d,
            Owner::Reserved(_) => {
                self.expire_reservations();
                return Err(expired());
            }
            // Already picked up (pick-up is one use only) or a plain reference.
            Owner::Conn(_) => return Err(unknown()),
        };
        h.owner = Owner::Conn(slot);
        h.creds = conn_creds;
        h.conn_id = conn_id;
        let (eid, port) = (e.id, e.port);
        self.refs.reservation_ended(due, r);
        let from = info.user as usize;
        let u = self.users.get_mut(from);
        u.refs -= 1;
        u.reservations -= 1;
        self.users.get_mut(to).refs += 1;
        self.users.forget_if_idle(from);
        self.changed();
        let c = self.conns.get_mut(slot).unwrap();
        let i = self.refs.info_mut(r);
        i.conn_pos = c.refs.len() as u32;
        i.user = to as u32;
        c.refs.push(r);
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

    /// Record a new reference: its holder, `mk(token)`, joins entry `es`,
    /// and one that a connection holds joins that connection's list. The
    /// token, or why none could be made (entry `es` is left as it was).
    pub(super) fn add_ref(
        &mut self,
        es: usize,
        mk: impl FnOnce(Token) -> Holder,
        user: usize,
    ) -> Result<Token> {
        let info = TokenInfo {
            entry: es,
            holder: 0,
            conn_pos: NO_CONN,
            user: user as u32,
        };
        // Whether it is reserved is known once the holder is: counted below.
        let (r, token) = self.refs.issue(info)?;
        let mut h = mk(token);
        h.rslot = r;
        let conn_pos = match h.owner {
            Owner::Conn(slot) => match self.conns.get_mut(slot) {
                Some(c) => {
                    c.refs.push(r);
                    (c.refs.len() - 1) as u32
                }
                None => NO_CONN,
            },
            Owner::Reserved(_) => NO_CONN,
        };
        let reserved = matches!(h.owner, Owner::Reserved(_));
        if let Owner::Reserved(d) = h.owner {
            self.refs.reservation_started(d, r);
        }
        let holder = self.sockets.get_mut(es).unwrap().holders.push(h) as u32;
        let i = self.refs.info_mut(r);
        i.holder = holder;
        i.conn_pos = conn_pos;
        let u = self.users.get_mut(user);
        u.refs += 1;
        u.reservations += usize::from(reserved);
        self.changed();
        Ok(token)
    }

    /// Forget the reference in slot `r` everywhere it is recorded (the
    /// reference table, its connection's list, its socket's holders, the
    /// reservation count); the entry stays, even if empty. The entry slot
    /// and the holder that was removed.
    pub(super) fn remove_ref(&mut self, r: u32) -> Option<(usize, Holder)> {
        let info = self.refs.remove(r)?;
        let e = self.sockets.get_mut(info.entry)?;
        let (h, moved) = e.holders.swap_remove(info.holder as usize)?;
        let reserved = matches!(h.owner, Owner::Reserved(_));
        if let Owner::Reserved(d) = h.owner {
            self.refs.reservation_ended(d, r);
        }
        let u = self.users.get_mut(info.user as usize);
        u.refs -= 1;
        u.reservations -= usize::from(reserved);
        self.users.forget_if_idle(info.user as usize);
        self.changed();
        // The last holder moved into the gap: its slot says so.
        if let Some(m) = moved {
            self.refs.info_mut(m).holder = info.holder;
        }
        if let (Owner::Conn(slot), true) = (h.owner, info.conn_pos != NO_CONN) {
            // Gone already when the connection is being dropped.
            if let Some(c) = self.conns.get_mut(slot) {
                let pos = info.conn_pos as usize;
                if c.refs.get(pos) == Some(&r) {
                    c.refs.swap_remove(pos);
                    if let Some(&m) = c.refs.get(pos) {
                        self.refs.info_mut(m).conn_pos = info.conn_pos;
                    }
                }
            }
        }
        Some((info.entry, h))
    }

    /// Drop the reference in slot `r`; close the socket when it was the
    /// last. Returns the references left on that socket.
    pub(super) fn drop_reference(&mut self, r: u32) -> u32 {
        let Some((es, _)) = self.remove_ref(r) else {
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

    /// Drop a reference by token, if it is live (a grant taken back).
    pub(super) fn drop_token(&mut self, t: &Token) {
        if let Some(r) = self.refs.find(t) {
            self.drop_reference(r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn info(entry: usize) -> TokenInfo {
        TokenInfo {
            entry,
            holder: 0,
            conn_pos: NO_CONN,
            user: 0,
        }
    }

    /// A released slot is reused first, under a new token; the old token,
    /// and the new one with other random bytes, find nothing.
    #[test]
    fn reuse_gives_a_new_token_and_the_old_is_unknown() {
        let mut refs = References::new();
        let (r, old) = refs.issue(info(1)).unwrap();
        assert_eq!(refs.find(&old), Some(r));
        assert_eq!(refs.remove(r).unwrap().entry, 1);
        assert_eq!(refs.find(&old), None);
        assert!(refs.remove(r).is_none(), "a free slot removed twice");
        let (r2, new) = refs.issue(info(2)).unwrap();
        assert_eq!(r2, r, "the last freed slot is reused");
        assert_ne!(new, old);
        assert_ne!(new.as_bytes()[16..], old.as_bytes()[16..]);
        assert_eq!(refs.find(&old), None, "stale generation");
        assert_eq!(refs.find(&new), Some(r));
        // Right slot and generation, wrong random bytes.
        let mut b = *new.as_bytes();
        b[3] ^= 1;
        assert_eq!(refs.find(&Token::from_bytes(b)), None);
        // Random bytes right, the block another slot's.
        let (_, other) = refs.issue(info(3)).unwrap();
        b = *new.as_bytes();
        b[16..].copy_from_slice(&other.as_bytes()[16..]);
        assert_eq!(refs.find(&Token::from_bytes(b)), None);
        assert_eq!(refs.find(&Token::from_bytes([0; Token::LEN])), None);
        assert_eq!(refs.len(), 2);
    }

    /// Many cycles: every token ever issued is distinct (its block too),
    /// live ones are found, released ones are not.
    #[test]
    fn many_cycles_never_repeat_a_token() {
        let mut refs = References::new();
        let mut seen = HashSet::new();
        let mut live: Vec<(u32, Token)> = Vec::new();
        let mut gone = Vec::new();
        for i in 0..20_000usize {
            if i % 3 != 2 || live.is_empty() {
                let (r, t) = refs.issue(info(i)).unwrap();
                assert!(seen.insert(*t.as_bytes()));
                assert!(seen.insert({
                    let mut k = [0xffu8; Token::LEN];
                    k[16..].copy_from_slice(&t.as_bytes()[16..]);
                    k
                }));
                live.push((r, t));
            } else {
                let (r, t) = live.swap_remove(i * 7919 % live.len());
                refs.remove(r).unwrap();
                gone.push(t);
            }
        }
        assert_eq!(refs.len(), live.len());
        for (r, t) in &live {
            assert_eq!(refs.find(t), Some(*r));
            assert_eq!(refs.token(*r), *t);
        }
        assert!(gone.iter().all(|t| refs.find(t).is_none()));
    }

    /// A slot that issued its last generation retires: never reused.
    #[test]
    fn a_slot_retires_before_its_generation_wraps() {
        let mut refs = References::new();
        let (r, _) = refs.issue(info(0)).unwrap();
        refs.remove(r).unwrap();
        refs.gens[r as usize] = u32::MAX;
        let (r1, t) = refs.issue(info(0)).unwrap();
        assert_eq!(r1, r);
        refs.remove(r).unwrap();
        assert_eq!(refs.find(&t), None);
        let (r2, _) = refs.issue(info(0)).unwrap();
        assert_ne!(r2, r, "a retired slot was reused");
        assert!(refs.remove(r).is_none());
    }

    /// Once mostly empty the table is cut back to its last live slot;
    /// the live tokens still work and a slot made again does not repeat a
    /// generation.
    #[test]
    fn shrinks_when_mostly_empty() {
        let mut refs = References::new();
        let all: Vec<(u32, Token)> = (0..10_000).map(|i| refs.issue(info(i)).unwrap()).collect();
        let keep = [3usize, 40];
        for (i, (r, _)) in all.iter().enumerate().rev() {
            if !keep.contains(&i) {
                refs.remove(*r).unwrap();
            }
        }
        assert!(
            refs.slots.len() <= SHRINK_ABOVE,
            "{} slots",
            refs.slots.len()
        );
        assert!(
            refs.slots.capacity() <= SHRINK_ABOVE,
            "{}",
            refs.slots.capacity()
        );
        for &i in &keep {
            assert_eq!(refs.find(&all[i].1), Some(all[i].0));
        }
        // The lowest free slots come first, and made again, a cut slot's
        // token is new.
        let (r, _) = refs.issue(info(0)).unwrap();
        assert_eq!(r, 0);
        assert!(refs.gens[200] > 0, "a cut slot's generation was lost");
        let again: Vec<(u32, Token)> = (0..200).map(|i| refs.issue(info(i)).unwrap()).collect();
        assert!(again.windows(2).all(|w| w[0].0 < w[1].0), "lowest first");
        assert!(again.iter().all(|(r, _)| *r != all[3].0 && *r != all[40].0));
        for (r, t) in &again {
            assert_eq!(refs.find(t), Some(*r));
            assert!(all.iter().all(|(_, o)| o != t));
            assert!(all
                .iter()
                .all(|(_, o)| o.as_bytes()[16..] != t.as_bytes()[16..]));
        }
        // Grown again and emptied, in any order: nothing is kept.
        let more: Vec<(u32, Token)> = (0..5000).map(|i| refs.issue(info(i)).unwrap()).collect();
        let live: Vec<u32> = again.iter().chain(&more).map(|(r, _)| *r).collect();
        for i in 0..live.len() {
            let r = live[(i * 7919) % live.len()];
            refs.remove(r).unwrap_or_else(|| panic!("slot {r}"));
        }
        refs.remove(0).unwrap();
        refs.remove(all[3].0).unwrap();
        refs.remove(all[40].0).unwrap();
        assert_eq!(refs.len(), 0);
        // Cut back to the last live slot once empty (a table this small
        // is not cut further).
        assert!(refs.slots.len() <= 41, "{} slots", refs.slots.len());
        assert!(refs.slots.capacity() <= SHRINK_ABOVE);
    }

    /// Across an upgrade: every live token keeps working (in its own slot,
    /// or through `legacy` when an older broker made it as a sequence), the
    /// new image never repeats a block, and once the epochs run out it
    /// takes a new key.
    #[test]
    fn tokens_survive_an_upgrade() {
        let mut old = References::new();
        let live: Vec<(u32, Token)> = (0..100).map(|i| old.issue(info(i)).unwrap()).collect();
        for (r, _) in &live[50..] {
            old.remove(*r).unwrap();
        }
        let mut new = References::resume(old.handoff_seq(), old.key());
        assert_eq!(new.epoch, old.epoch + 1);
        for (i, (r, t)) in live[..50].iter().enumerate() {
            assert_eq!(new.adopt(*t, info(i), None), *r, "not in its own slot");
        }
        // An older broker's sequence token.
        let mut seq = TokenSource::resume(5, old.key());
        let legacy = seq.make().unwrap();
        let lr = new.adopt(legacy, info(7), Some(Instant::now()));
        new.adopted();
        assert_eq!(new.reservations(), 1);
        assert_eq!(new.find(&legacy), Some(lr));
        for (r, t) in &live[..50] {
            assert_eq!(new.find(t), Some(*r));
        }
        let blocks: HashSet<_> = live
            .iter()
            .map(|(_, t)| t.as_bytes()[16..].to_vec())
            .collect();
        for i in 0..200 {
            let (r, t) = new.issue(info(i)).unwrap();
            assert!(!blocks.contains(&t.as_bytes()[16..]), "a block repeated");
            assert_eq!(new.find(&t), Some(r));
        }
        new.remove(lr).unwrap();
        assert!(new.legacy.is_empty() && new.find(&legacy).is_none());
        // From an older broker: epoch 0, tokens found through `legacy`.
        let from_old = References::resume(77, old.key());
        assert_eq!(from_old.epoch, 0);
        // The last epoch hands on a new key.
        let mut last = References::resume(TAG | (EPOCHS - 1) << (SLOT_BITS + 32), old.key());
        assert_eq!(last.epoch, EPOCHS - 1);
        let (_, t) = last.issue(info(0)).unwrap();
        let mut next = References::resume(last.handoff_seq(), last.key());
        assert_ne!(next.key(), last.key());
        let r = next.adopt(t, info(0), None);
        next.adopted();
        assert_eq!(next.find(&t), Some(r));
        assert!(!next.legacy.is_empty());
    }
}
