//! SOCKET requests: policy, sharing, the cache, and the reference granted.

use super::cache::Entry;
use super::conn::Attach;
use super::dispatch::Reply;
use super::{Broker, Limits};
use crate::closer::OffLoopFd;
use crate::create::create_canonical;
use crate::holders::{Holder, Owner};
use sockpass::proto::{self, ty, SocketRequest};
use sockpass::ShareMode;
use sockpass::SocketSpec;
use sockpass::Token;
use sockpass::{Error, Kind, Result};
use std::cell::Cell;
use std::rc::Rc;
use std::time::Instant;

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

/// A reference just made, before its reply is encoded.
pub(super) struct Granted {
    token: Token,
    es: usize,
    eid: u64,
    port: u16,
    cached: bool,
    reserve: bool,
}

impl Broker {
    pub(super) fn app_for(&mut self, slot: usize, app: &str) -> Rc<str> {
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

    pub(super) fn request_socket(
        &mut self,
        slot: usize,
        id: u32,
        r: SocketRequest<'_>,
    ) -> Result<Reply> {
        let creds = self.conns.get(slot).unwrap().creds;
        self.cfg.policy.check(&creds, &r.spec, r.share)?;
        let g = self.obtain(slot, r)?;
        Ok(self.encode_grant(id, &g))
    }

    /// A REQUEST_MANY, all or nothing: policy and the per-client limit are
    /// checked for every spec first; then each is served in order as a
    /// REQUEST would be (so a later spec is judged against the references
    /// the earlier ones made), and on a refusal the references already made
    /// are dropped again, which closes the sockets created for this batch.
    pub(super) fn request_many(
        &mut self,
        slot: usize,
        id: u32,
        reqs: Vec<SocketRequest<'_>>,
    ) -> Result<Reply> {
        let n = reqs.len();
        let at = |i: usize, e: Error| e.context(format_args!("spec {i} of {n}"));
        let creds = self.conns.get(slot).unwrap().creds;
        for (i, r) in reqs.iter().enumerate() {
            self.cfg
                .policy
                .check(&creds, &r.spec, r.share)
                .map_err(|e| at(i, e))?;
        }
        let plain = reqs
            .iter()
            .filter(|r| r.flags & proto::REQ_RESERVE == 0)
            .count();
        self.refs_room_for(slot, plain)?;
        let mut got: Vec<Granted> = Vec::with_capacity(n);
        for (i, r) in reqs.into_iter().enumerate() {
            // A spec whose bytes hit the cache before skips decoding, as a
            // single REQUEST does.
            let hit = if r.flags == 0 {
                self.grant_hit(slot, r.wire, r.share, r.app)
            } else {
                None
            };
            match hit.unwrap_or_else(|| self.obtain(slot, r)) {
                Ok(g) => got.push(g),
                Err(e) => {
                    for g in got.iter().rev() {
                        self.drop_token(&g.token);
                    }
                    return Err(at(i, e));
                }
            }
        }
        Ok(self.encode_sockets(id, &got, plain))
    }

    /// The SOCKETS reply to a batch: an entry per grant, in order, and the
    /// fds of the `plain` (not reserved) ones.
    fn encode_sockets(&mut self, id: u32, got: &[Granted], plain: usize) -> Reply {
        proto::begin(&mut self.wbuf, ty::SOCKETS, id);
        self.wbuf
            .extend_from_slice(&(got.len() as u16).to_le_bytes());
        let mut fds = Vec::with_capacity(plain);
        for g in got {
            proto::encode_grant_entry(&mut self.wbuf, &g.token, g.port, g.cached, g.reserve);
            if !g.reserve {
                fds.push((g.es, g.eid));
            }
        }
        Reply {
            attach: Some(Attach::Entries(fds)),
        }
    }

    /// A REQUEST_MANY whose specs are all plain (no flags) and whose spec
    /// bytes each hit the cache before, answered as `request_many` would
    /// without decoding a spec again: bytes that hit were decoded and
    /// validated when they first did, and the policy is checked once a
    /// spec (against the cached spec, as for a single request by wire).
    /// None when any spec does not qualify or anything would be refused,
    /// references made so far dropped again: the full path then decides,
    /// and words any refusal as it always does.
    pub(super) fn request_many_by_wire(
        &mut self,
        slot: usize,
        id: u32,
        payload: &[u8],
    ) -> Option<Result<Reply>> {
        let [lo, hi, body @ ..] = payload else {
            return None;
        };
        let mut rest: &[u8] = body;
        let n = usize::from(u16::from_le_bytes([*lo, *hi]));
        if n == 0 || n > proto::MAX_REQUEST_BATCH {
            return None;
        }
        let creds = self.conns.get(slot)?.creds;
        let mut items = Vec::with_capacity(n);
        for _ in 0..n {
            let [share, 0, alen, tail @ ..] = rest else {
                return None;
            };
            let (app, tail) = tail.split_at_checked(usize::from(*alen))?;
            let [slo, shi, tail @ ..] = tail else {
                return None;
            };
            let slen = usize::from(u16::from_le_bytes([*slo, *shi]));
            let (wire, tail) = tail.split_at_checked(slen)?;
            rest = tail;
            let share = ShareMode::from_wire(*share).ok()?;
            let app = proto::app_name(app).ok()?;
            let (es, eid) = self.sockets.hit(wire)?;
            let e = self.sockets.get(es).filter(|e| e.id == eid && !e.adopted)?;
            if !e.allows(&self.cfg.policy, &creds, share) {
                return None;
            }
            items.push((share, app, es));
        }
        if !rest.is_empty() || self.refs_room_for(slot, n).is_err() {
            return None;
        }
        let mut got: Vec<Granted> = Vec::with_capacity(n);
        for (share, app, es) in items {
            match self.grant_cached(slot, es, share, app) {
                Some(Ok(g)) => got.push(g),
                _ => {
                    for g in got.iter().rev() {
                        self.drop_token(&g.token);
                    }
                    return None;
                }
            }
        }
        Some(Ok(self.encode_sockets(id, &got, n)))
    }

    /// Serve one socket request the policy allowed: sharing, the cache or
    /// a new socket, and the reference made (not yet encoded). The policy
    /// is the caller's to check: a batch checks every spec before serving
    /// any, and once is enough (the policy is fixed for the broker's life).
    fn obtain(&mut self, slot: usize, r: SocketRequest<'_>) -> Result<Granted> {
        let creds = self.conns.get(slot).unwrap().creds;
        let reserve = r.flags & proto::REQ_RESERVE != 0;
        let per_worker = r.flags & proto::REQ_PER_WORKER != 0;
        let user = self.conns.get(slot).unwrap().user;
        if reserve {
            let u = self.users.get(user);
            let max = self.cfg.limits.max_reservations;
            if self.refs.reservations() >= Limits::global_room(max, u.privileged) {
                return Err(Error::with_errno(
                    Kind::LimitReached,
                    libc::EUSERS,
                    format!(
                        "{} reservations are pending, the limit{}",
                        self.refs.reservations(),
                        if u.privileged {
                            ""
                        } else {
                            " for unprivileged uids"
                        }
                    ),
                ));
            }
            u.room("reservations", u.reservations, u.quota.reservations)?;
        }
        // A reservation is a reference too, but not the connection's.
        self.ref_room(slot, !reserve, true)?;
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
            rslot: 0,
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
            self.sockets.cached(&spec)
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
                    if let Some(other) = self.sockets.same_address(&spec) {
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
                let u = self.users.get(user);
                let max = self.cfg.limits.max_sockets;
                if self.sockets.len() >= Limits::global_room(max, u.privileged) {
                    return Err(Error::with_errno(
                        Kind::LimitReached,
                        libc::EMFILE,
                        format!(
                            "the broker holds {} sockets, its limit{}",
                            self.sockets.len(),
                            if u.privileged {
                                ""
                            } else {
                                " for unprivileged uids"
                            }
                        ),
                    ));
                }
                u.room("sockets", u.sockets, u.quota.sockets)?;
                // A socket this request dropped may hold the address.
                crate::closer::settle_pending();
                let created = match create_canonical(&spec) {
                    // Perhaps taken by a socket still queued for the
                    // closer (a holder of thousands that just went).
                    Err(e)
                        if e.errno() == libc::EADDRINUSE
                            && crate::closer::hurry(crate::closer::port_key(&spec, spec.port)) =>
                    {
                        create_canonical(&spec)?
                    }
                    r => r?,
                };
                let key = crate::closer::port_key(&spec, created.port);
                let proto = spec.proto;
                let eid = self.next_entry_id;
                self.next_entry_id += 1;
                let keyed = !spec.is_ephemeral() && !per_worker;
                let unix_ino = spec
                    .proto
                    .is_unix()
                    .then(|| crate::unixsock::path_ino(&spec.path))
                    .flatten();
                // The spec stays as requested (port 0 for an ephemeral
                // socket), so status never shows an ephemeral socket under
                // the identity of a cached one the kernel's pick collides with.
                let holders = self.sockets.new_holders();
                let es = self.sockets.insert(Entry {
                    id: eid,
                    spec,
                    fd: OffLoopFd::made(created.fd, key, proto),
                    port: created.port,
                    holders,
                    keyed,
                    per_worker,
                    unix_ino,
                    store_name: None,
                    adopted: false,
                    user,
                    allowed: Cell::new(None),
                });
                self.users.get_mut(user).sockets += 1;
                if keyed {
                    self.store_entry(es);
                }
                (es, false)
            }
        };
        if cached_hit && r.flags == 0 {
            self.sockets.remember_hit(r.wire, entry_slot);
        }
        self.grant(entry_slot, holder, user, reserve, cached_hit)
    }

    /// Make a reference to entry `es` (its holder is `mk(token)`).
    pub(super) fn grant(
        &mut self,
        es: usize,
        mk: impl FnOnce(Token) -> Holder,
        user: usize,
        reserve: bool,
        cached: bool,
    ) -> Result<Granted> {
        let token = match self.add_ref(es, mk, user) {
            Ok(t) => t,
            Err(e) => {
                self.close_if_unheld(es);
                return Err(e);
            }
        };
        let e = self.sockets.get(es).unwrap();
        Ok(Granted {
            token,
            es,
            eid: e.id,
            port: e.port,
            cached,
            reserve,
        })
    }

    /// The reply to a REQUEST: RESERVED for a reservation (held by the
    /// broker until picked up), else SOCKET with the fd.
    fn encode_grant(&mut self, id: u32, g: &Granted) -> Reply {
        if g.reserve {
            proto::encode_socket_reply(
                &mut self.wbuf,
                ty::RESERVED,
                id,
                &g.token,
                g.port,
                g.cached,
            );
            return Reply { attach: None };
        }
        proto::encode_socket_reply(&mut self.wbuf, ty::SOCKET, id, &g.token, g.port, g.cached);
        Reply {
            attach: Some(Attach::Entry(g.es, g.eid)),
        }
    }

    /// A plain REQUEST (no flags) whose spec bytes hit the cache before,
    /// answered without decoding the spec again: the same checks as
    /// `request_socket` on a cache hit, against the cached spec (the
    /// canonical form of what these bytes decode to). None when it does not
    /// apply or would be refused: the full path then decides, and words any
    /// refusal exactly as it always does.
    pub(super) fn request_by_wire(
        &mut self,
        slot: usize,
        id: u32,
        payload: &[u8],
    ) -> Option<Result<Reply>> {
        let [share, 0, n, rest @ ..] = payload else {
            return None;
        };
        let (app, wire) = rest.split_at_checked(usize::from(*n))?;
        let share = ShareMode::from_wire(*share).ok()?;
        let app = proto::app_name(app).ok()?;
        let g = self.grant_hit(slot, wire, share, app)?;
        Some(g.map(|g| self.encode_grant(id, &g)))
    }

    /// A reference to the cached socket that spec bytes `wire` hit before
    /// (a plain request: no flags), if nothing would refuse it.
    fn grant_hit(
        &mut self,
        slot: usize,
        wire: &[u8],
        share: ShareMode,
        app: &str,
    ) -> Option<Result<Granted>> {
        let (es, eid) = self.sockets.hit(wire)?;
        let e = self.sockets.get(es).filter(|e| e.id == eid && !e.adopted)?;
        let creds = self.conns.get(slot)?.creds;
        if self.refs_room(slot).is_err() || !e.allows(&self.cfg.policy, &creds, share) {
            return None;
        }
        self.grant_cached(slot, es, share, app)
    }

    /// [`Broker::grant_hit`] for the entry its bytes hit, once the policy
    /// and the reference bounds were checked (a batch checks them for all
    /// its specs first).
    fn grant_cached(
        &mut self,
        slot: usize,
        es: usize,
        share: ShareMode,
        app: &str,
    ) -> Option<Result<Granted>> {
        let c = self.conns.get(slot)?;
        let (creds, conn_id, user) = (c.creds, c.id, c.user);
        // Sharing is judged on the name the reference will carry (an empty
        // one is the client's executable's), as on the full path.
        let app = self.app_for(slot, app);
        let spec = &self.sockets.get(es)?.spec;
        if self
            .check_sharing(spec, share, &app, creds.uid, Some(es))
            .is_err()
        {
            return None;
        }
        let holder = |token| Holder {
            token,
            rslot: 0,
            owner: Owner::Conn(slot),
            share,
            app,
            creds,
            conn_id,
        };
        Some(self.grant(es, holder, user, false, true))
    }

    /// Does a request `(share, app)` from `uid` for `spec` agree with every
    /// holder of the socket (or reuseport group) it would join? Both
    /// directions; across uids only `any` with the policy's consent.
    pub(super) fn check_sharing(
        &self,
        spec: &SocketSpec,
        share: ShareMode,
        app: &str,
        uid: u32,
        cached: Option<usize>,
    ) -> Result<()> {
        let keyed = cached.and_then(|es| self.sockets.get(es));
        let group = self.sockets.per_worker_group(spec);
        let across = self.cfg.policy.share_across_uids;
        for e in keyed.into_iter().chain(group) {
            if let Some((h, huid)) = e.holders.find_incompatible(share, app, uid, across) {
                return Err(h.refusal(&e.spec, huid, (share, app, uid), across));
            }
        }
        Ok(())
    }
}
