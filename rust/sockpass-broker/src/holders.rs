//! The references to one cached socket, and what they allow together.
//!
//! Every holder was checked against every other when it joined, so the set is
//! pairwise compatible, and a new request can be judged from a summary instead
//! of a scan: a `none` holder excludes everyone, a `sameapp` holder means every
//! holder has that one application name, and otherwise only the distinct
//! application names matter. Judging is O(distinct names) and removing a
//! reference is O(1), however many references a socket has: holders are
//! addressed by position, which the broker keeps with each token (a
//! removal moves the last holder into the gap and says which it was).
//!
//! Sharing never crosses users implicitly: holders of different uids may
//! share only if every one of them asked for `any` and the policy allows
//! sharing across uids (`sockpass::compatible_users`). So a set that
//! spans two uids holds only `any` references, and a request from a uid is
//! judged by whether any other uid holds a reference at all. Each holder's
//! uid is recorded when it joins (the requester's, also for a reservation a
//! pick-up hands on: the reserver consented to the sharing).

use sockpass::sys::Creds;
use sockpass::ShareMode;
use sockpass::Token;
use std::rc::Rc;
use std::time::Instant;

/// Who holds a reference.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Owner {
    /// A live connection, by slot.
    Conn(usize),
    /// A reservation awaiting pick-up, until the deadline.
    Reserved(Instant),
}

#[derive(Debug)]
pub(crate) struct Holder {
    pub token: Token,
    /// Its slot in the broker's reference table (set when it joins).
    pub rslot: u32,
    pub owner: Owner,
    pub share: ShareMode,
    pub app: Rc<str>,
    /// Credentials of the client that made the reference (for status).
    pub creds: Creds,
    pub conn_id: u64,
}

impl Holder {
    /// The sharing conflict a request `(share, app)` from `uid` meets in
    /// this holder of `spec`, which joined as `huid` (`across`: the policy
    /// allows sharing between uids).
    pub fn refusal(
        &self,
        spec: &sockpass::SocketSpec,
        huid: u32,
        (share, app, uid): (ShareMode, &str, u32),
        across: bool,
    ) -> sockpass::Error {
        let why = if uid == huid {
            String::new()
        } else if across {
            format!(
                " (uid {uid} is not the holder's uid {huid}; across uids only any with any shares)"
            )
        } else {
            format!(
                " (uid {uid} is not the holder's uid {huid}, and the policy forbids sharing across uids)"
            )
        };
        sockpass::Error::with_errno(
            sockpass::Kind::ShareConflict,
            libc::EADDRINUSE,
            format!(
                "{spec} is held by {:?} with share mode {}; a request by {app:?} with share mode {share} may not share it{why}",
                &*self.app, self.share
            ),
        )
    }
}

/// Distinct keys with their counts. The first needs no allocation: nearly
/// every socket has one application name and one uid among its holders, and
/// a new socket's tables were four of the six allocations of its request.
#[derive(Debug)]
struct Tally<K> {
    first: Option<(K, u32)>,
    more: Vec<(K, u32)>,
}

impl<K> Default for Tally<K> {
    fn default() -> Self {
        Tally {
            first: None,
            more: Vec::new(),
        }
    }
}

impl<K: PartialEq> Tally<K> {
    fn add(&mut self, k: K) {
        let Some((f, n)) = &mut self.first else {
            self.first = Some((k, 1));
            return;
        };
        if *f == k {
            *n += 1;
            return;
        }
        match self.more.iter_mut().find(|(m, _)| *m == k) {
            Some((_, n)) => *n += 1,
            None => self.more.push((k, 1)),
        }
    }

    fn remove(&mut self, k: &K) {
        if let Some((f, n)) = &mut self.first {
            if f == k {
                *n -= 1;
                if *n == 0 {
                    self.first = self.more.pop();
                }
                return;
            }
        }
        if let Some(p) = self.more.iter().position(|(m, _)| m == k) {
            self.more[p].1 -= 1;
            if self.more[p].1 == 0 {
                self.more.swap_remove(p);
            }
        }
    }

    /// The key, when there is exactly one.
    fn only(&self) -> Option<&K> {
        self.more
            .is_empty()
            .then_some(self.first.as_ref().map(|(k, _)| k))
            .flatten()
    }

    /// Some key (None when empty).
    fn any_key(&self) -> Option<&K> {
        self.first.as_ref().map(|(k, _)| k)
    }

    fn has_other_than(&self, k: &K) -> bool {
        self.first.iter().chain(&self.more).any(|(m, _)| m != k)
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.first.is_none()
    }
}

/// A holder and the uid it joined as (its `creds` change when a
/// reservation is picked up; sharing stays judged on the joining uid).
#[derive(Debug)]
pub(crate) struct Member {
    h: Holder,
    uid: u32,
}

/// The memory of an empty set of holders, kept for another.
#[derive(Debug)]
pub(crate) struct Allocation(Vec<Member>);

#[derive(Debug, Default)]
pub(crate) struct Holders {
    list: Vec<Member>,
    nones: u32,
    sameapps: u32,
    /// Distinct application names with their reference counts.
    apps: Tally<Rc<str>>,
    /// Distinct uids with their reference counts.
    uids: Tally<u32>,
}

impl Holders {
    pub fn with_capacity(n: usize) -> Holders {
        Holders {
            list: Vec::with_capacity(n),
            ..Holders::default()
        }
    }

    /// An empty set that holds its first members in `list`'s allocation
    /// (one a set that went left behind: [`Holders::take_allocation`]).
    pub fn in_allocation(mut list: Allocation) -> Holders {
        list.0.clear();
        Holders {
            list: list.0,
            ..Holders::default()
        }
    }

    /// The allocation of an empty set, for a new set to reuse; None when
    /// there is none, or one a large set grew (not worth keeping).
    pub fn take_allocation(&mut self) -> Option<Allocation> {
        (self.list.is_empty() && (1..=4).contains(&self.list.capacity()))
            .then(|| Allocation(std::mem::take(&mut self.list)))
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn iter(&self) -> HolderIter<'_> {
        self.list.iter().map(|m| &m.h)
    }

    /// A holder (and the uid it joined as) that would refuse to share with
    /// `(share, app)` from `uid`, or that the request would refuse; None
    /// when the request may join. `across` is the policy's consent to
    /// sharing between uids at all.
    pub fn find_incompatible(
        &self,
        share: ShareMode,
        app: &str,
        uid: u32,
        across: bool,
    ) -> Option<(&Holder, u32)> {
        let first = self.list.first().map(|m| (&m.h, m.uid))?;
        let others = self.uids.has_other_than(&uid);
        let ok = match share {
            ShareMode::None => false,
            _ if self.nones > 0 => false,
            // Another uid holds it: only `any` on every side, with consent.
            _ if others => share == ShareMode::Any && across && self.sameapps == 0,
            // Every holder must carry this name.
            ShareMode::SameApp => self.apps.only().is_some_and(|a| &**a == app),
            // A sameapp holder means one name for all; it must be ours.
            ShareMode::Any => {
                self.sameapps == 0 || self.apps.any_key().is_some_and(|a| &**a == app)
            }
        };
        if ok {
            return None;
        }
        // Refused: name a witness (the error path may scan).
        self.list
            .iter()
            .find(|m| {
                !sockpass::compatible_users(share, app, uid, m.h.share, &m.h.app, m.uid, across)
            })
            .map(|m| (&m.h, m.uid))
            .or(Some(first))
    }

    /// Add a holder; its position.
    pub fn push(&mut self, h: Holder) -> usize {
        match h.share {
            ShareMode::None => self.nones += 1,
            ShareMode::SameApp => self.sameapps += 1,
            ShareMode::Any => {}
        }
        self.apps.add(h.app.clone());
        let uid = h.creds.uid;
        self.uids.add(uid);
        self.list.push(Member { h, uid });
        self.list.len() - 1
    }

    pub fn get(&self, pos: usize) -> Option<&Holder> {
        self.list.get(pos).map(|m| &m.h)
    }

    pub fn get_mut(&mut self, pos: usize) -> Option<&mut Holder> {
        self.list.get_mut(pos).map(|m| &mut m.h)
    }

    /// Remove the holder at `pos`. The last holder moves into its place:
    /// the second value is that holder's reference slot, whose position is
    /// now `pos`.
    pub fn swap_remove(&mut self, pos: usize) -> Option<(Holder, Option<u32>)> {
        if pos >= self.list.len() {
            return None;
        }
        let Member { h, uid } = self.list.swap_remove(pos);
        self.uids.remove(&uid);
        match h.share {
            ShareMode::None => self.nones -= 1,
            ShareMode::SameApp => self.sameapps -= 1,
            ShareMode::Any => {}
        }
        self.apps.remove(&h.app);
        let moved = self.list.get(pos).map(|m| m.h.rslot);
        Some((h, moved))
    }
}

/// The holders of a socket, in position order.
pub(crate) type HolderIter<'a> =
    std::iter::Map<std::slice::Iter<'a, Member>, fn(&Member) -> &Holder>;

impl<'a> IntoIterator for &'a Holders {
    type Item = &'a Holder;
    type IntoIter = HolderIter<'a>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sockpass::{compatible_users, ShareMode::*};

    fn holder(n: u8, share: ShareMode, app: &str, uid: u32) -> Holder {
        let mut b = [0u8; Token::LEN];
        b[0] = n;
        Holder {
            token: Token::from_bytes(b),
            rslot: u32::from(n),
            owner: Owner::Conn(0),
            share,
            app: Rc::from(app),
            creds: Creds {
                uid,
                ..Creds::default()
            },
            conn_id: 0,
        }
    }

    /// The summary must judge exactly as checking every holder would,
    /// across uids too, with and without the policy's consent.
    #[test]
    fn summary_agrees_with_a_full_scan() {
        let modes = [None, SameApp, Any];
        let apps = ["a", "b"];
        let uids = [0u32, 7];
        for across in [true, false] {
            let ok = |m, a, u, s: &[(ShareMode, &str, u32)]| {
                s.iter()
                    .all(|&(hm, ha, hu)| compatible_users(m, a, u, hm, ha, hu, across))
            };
            // Build every reachable holder set of up to 3 joins, then judge
            // every possible next request both ways.
            let mut sets: Vec<Vec<(ShareMode, &str, u32)>> = vec![vec![]];
            for _ in 0..3 {
                let mut next = Vec::new();
                for s in &sets {
                    for m in modes {
                        for a in apps {
                            for u in uids {
                                if ok(m, a, u, s) {
                                    let mut t = s.clone();
                                    t.push((m, a, u));
                                    next.push(t);
                                }
                            }
                        }
                    }
                }
                sets.extend(next);
            }
            for s in &sets {
                let mut hs = Holders::default();
                for (i, (m, a, u)) in s.iter().enumerate() {
                    hs.push(holder(i as u8, *m, a, *u));
                }
                for m in modes {
                    for a in apps {
                        for u in uids {
                            assert_eq!(
                                hs.find_incompatible(m, a, u, across).is_none(),
                                ok(m, a, u, s),
                                "{s:?} + {m:?}({a}, uid {u}), across {across}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn positions_survive_pushes_and_removals() {
        let mut hs = Holders::default();
        // token byte -> position, kept as a caller keeps it
        let mut at = std::collections::HashMap::new();
        for i in 0..40u8 {
            let p = hs.push(holder(i, Any, if i % 2 == 0 { "a" } else { "b" }, 0));
            at.insert(i, p);
        }
        for i in (0..40u8).step_by(3) {
            let p = at.remove(&i).unwrap();
            let (h, moved) = hs.swap_remove(p).unwrap();
            assert_eq!(h.token.as_bytes()[0], i);
            if let Some(m) = moved {
                at.insert(m as u8, p);
            }
        }
        assert!(hs.swap_remove(hs.len()).is_none());
        assert_eq!(hs.len(), at.len());
        for (i, p) in &at {
            assert_eq!(hs.get(*p).unwrap().token.as_bytes()[0], *i, "{i} at {p}");
        }
        while !hs.is_empty() {
            hs.swap_remove(0).unwrap();
        }
        assert!(hs.is_empty() && hs.apps.is_empty() && hs.uids.is_empty());
        assert!(hs.find_incompatible(None, "x", 0, false).is_none());
    }
}
