//! Per-uid use of the broker's tables and each uid's quota.
//!
//! A uid gets a row when its first connection is accepted (one hash lookup
//! per connection); the connection, its references, the sockets its
//! requests created and its status tables keep the row's slot, so every
//! charge on the request path is an index, no hash and no allocation. The
//! row goes when nothing is charged to it any more.

use super::slab::Slab;
use crate::quota::{self, Quota};
use sockpass::keyhash::KeyedState;
use sockpass::{Error, Kind, Result};
use std::collections::HashMap;

/// One uid's use and quota.
#[derive(Debug)]
pub(super) struct UserUse {
    pub(super) uid: u32,
    /// Root or the broker's own uid: may use the reserve of every table.
    pub(super) privileged: bool,
    pub(super) quota: Quota,
    pub(super) conns: usize,
    /// Sockets its requests created (a socket stays charged to its creator
    /// while it lives, whoever else joins it).
    pub(super) sockets: usize,
    /// References it holds or reserved (reservations included).
    pub(super) refs: usize,
    pub(super) reservations: usize,
    /// Status tables made for it that are still open anywhere.
    pub(super) status: usize,
    /// The loop turn `ready` counts for.
    turn: u64,
    /// Its connections with requests waiting in that turn.
    ready: u32,
}

impl UserUse {
    fn idle(&self) -> bool {
        self.conns == 0
            && self.sockets == 0
            && self.refs == 0
            && self.reservations == 0
            && self.status == 0
    }

    /// Refuse if this uid's use of `what` (`used`) is at its quota `max`.
    pub(super) fn room(&self, what: &str, used: usize, max: usize) -> Result<()> {
        if used >= max {
            return Err(Error::with_errno(
                Kind::LimitReached,
                libc::EUSERS,
                format!(
                    "uid {} holds {used} {what}, its limit (per-uid quota; see sockpassd --max-{}-per-uid and the policy's limit lines)",
                    self.uid,
                    flag_word(what)
                ),
            ));
        }
        Ok(())
    }
}

fn flag_word(what: &str) -> &str {
    match what {
        "status tables" => "status",
        w => w,
    }
}

/// Every uid with something charged to it.
pub(super) struct Users {
    slab: Slab<UserUse>,
    by_uid: HashMap<u32, usize, KeyedState>,
}

impl Users {
    pub(super) fn new() -> Users {
        Users {
            slab: Slab::new(),
            by_uid: HashMap::default(),
        }
    }

    /// The row of `uid`, made with its quota if it has none.
    pub(super) fn slot(&mut self, uid: u32, cfg: &super::Config, broker_uid: u32) -> usize {
        if let Some(&s) = self.by_uid.get(&uid) {
            return s;
        }
        let privileged = uid == 0 || uid == broker_uid;
        let quota = quota::resolve(cfg.limits.uid_quota(), &cfg.policy.limits, uid, privileged);
        let s = self.slab.insert(UserUse {
            uid,
            privileged,
            quota,
            conns: 0,
            sockets: 0,
            refs: 0,
            reservations: 0,
            status: 0,
            turn: 0,
            ready: 0,
        });
        self.by_uid.insert(uid, s);
        s
    }

    pub(super) fn get(&self, s: usize) -> &UserUse {
        self.slab.get(s).expect("a charged uid has a row")
    }

    pub(super) fn get_mut(&mut self, s: usize) -> &mut UserUse {
        self.slab.get_mut(s).expect("a charged uid has a row")
    }

    /// Count one of row `s`'s connections as ready in loop turn `turn`.
    pub(super) fn count_ready(&mut self, s: usize, turn: u64) {
        if let Some(u) = self.slab.get_mut(s) {
            if u.turn != turn {
                u.turn = turn;
                u.ready = 0;
            }
            u.ready += 1;
        }
    }

    /// What one of row `s`'s connections may read in loop turn `turn`:
    /// its part of `share` among the uid's connections ready then, at
    /// least one.
    pub(super) fn turn_share(&self, s: usize, turn: u64, share: usize) -> usize {
        let ready = match self.slab.get(s) {
            Some(u) if u.turn == turn => u.ready.max(1) as usize,
            _ => 1,
        };
        (share / ready).max(1)
    }

    /// Drop the row if nothing is charged to it any more.
    pub(super) fn forget_if_idle(&mut self, s: usize) {
        if self.slab.get(s).is_some_and(UserUse::idle) {
            let u = self.slab.remove(s).unwrap();
            self.by_uid.remove(&u.uid);
        }
    }

    /// Rows in uid order (status).
    pub(super) fn sorted(&self) -> Vec<&UserUse> {
        let mut v: Vec<&UserUse> = self.slab.iter().map(|(_, u)| u).collect();
        v.sort_by_key(|u| u.uid);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A uid's connections ready in a turn share it, at least one each; a
    /// count from an earlier turn does not hold.
    #[test]
    fn a_turn_is_shared_among_a_uids_ready_connections() {
        let mut u = Users::new();
        let cfg = crate::broker::Config::default();
        let s = u.slot(65534, &cfg, 0);
        assert_eq!(u.turn_share(s, 1, 256), 256, "not counted: one ready");
        for _ in 0..64 {
            u.count_ready(s, 1);
        }
        assert_eq!(u.turn_share(s, 1, 256), 4);
        for _ in 0..1000 {
            u.count_ready(s, 1);
        }
        assert_eq!(u.turn_share(s, 1, 256), 1, "at least one each");
        assert_eq!(u.turn_share(s, 2, 256), 256, "a new turn");
        u.count_ready(s, 2);
        assert_eq!(u.turn_share(s, 2, 256), 256);
    }
}
