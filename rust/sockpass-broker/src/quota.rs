//! Per-uid quotas: how much of each broker table one uid may take, and the
//! policy file's `limit` lines that set them.
//!
//! A uid's quota starts from the `sockpassd` flags (by default an eighth of
//! each global table, so one uid at its limit leaves the rest to others);
//! privileged uids (root and the broker's own) have none unless a line names
//! them. `limit * KEY=N ...` sets keys for every other uid, and
//! `limit uid=N|user=NAME KEY=N ...` for one uid (over `*`), key by key.

use sockpass::{Error, Result};

/// What one uid may hold at once. `usize::MAX` is no limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    pub connections: usize,
    /// Sockets the uid's requests created (see `docs/SECURITY.md`).
    pub sockets: usize,
    /// References, its reservations included.
    pub references: usize,
    pub reservations: usize,
    /// STATUS tables (memfds) made for it and still open anywhere.
    pub status: usize,
}

impl Quota {
    pub const UNLIMITED: Quota = Quota {
        connections: usize::MAX,
        sockets: usize::MAX,
        references: usize::MAX,
        reservations: usize::MAX,
        status: usize::MAX,
    };

    /// The keys of a `limit` line, in the order `status` prints them.
    pub const KEYS: [&'static str; 5] = [
        "connections",
        "sockets",
        "references",
        "reservations",
        "status",
    ];

    fn field(&mut self, key: &str) -> Option<&mut usize> {
        Some(match key {
            "connections" => &mut self.connections,
            "sockets" => &mut self.sockets,
            "references" => &mut self.references,
            "reservations" => &mut self.reservations,
            "status" => &mut self.status,
            _ => return None,
        })
    }
}

/// Whom a `limit` line is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuotaWho {
    /// Every uid but the privileged ones.
    Others,
    Uid(u32),
}

/// One `limit` line: the keys it sets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuotaLine {
    pub who: QuotaWho,
    /// (key, value); `unlimited` is `usize::MAX`.
    pub set: Vec<(&'static str, usize)>,
}

impl QuotaLine {
    /// Parse the words after `limit`: `WHO KEY=N ...`.
    pub fn parse(rest: &str) -> Result<QuotaLine> {
        let mut words = rest.split_whitespace();
        let who = match words.next() {
            Some("*") | Some("anyone") => QuotaWho::Others,
            Some(w) => match w.split_once('=') {
                Some(("uid", v)) => QuotaWho::Uid(
                    v.parse()
                        .map_err(|_| Error::bad_request(format!("uid={v}: not a number")))?,
                ),
                Some(("user", v)) => QuotaWho::Uid(crate::policy::lookup_user(v)?),
                _ => {
                    return Err(Error::bad_request(format!(
                        "a limit is per uid: expected *, uid=N or user=NAME, got {w:?}"
                    )))
                }
            },
            None => {
                return Err(Error::bad_request(
                    "limit: missing whom it is for (*, uid=N, user=NAME)",
                ))
            }
        };
        let mut set: Vec<(&'static str, usize)> = Vec::new();
        for w in words {
            let (k, v) = w
                .split_once('=')
                .ok_or_else(|| Error::bad_request(format!("expected KEY=N, got {w:?}")))?;
            let Some(key) = Quota::KEYS.iter().copied().find(|x| *x == k) else {
                return Err(Error::bad_request(format!(
                    "unknown limit {k:?} (expected connections, sockets, references, reservations or status)"
                )));
            };
            if set.iter().any(|(x, _)| *x == key) {
                return Err(Error::bad_request(format!("{k}= given twice")));
            }
            let n = match v {
                "unlimited" => usize::MAX,
                _ => v.parse::<usize>().map_err(|_| {
                    Error::bad_request(format!("{k}={v}: not a number (or unlimited)"))
                })?,
            };
            set.push((key, n));
        }
        if set.is_empty() {
            return Err(Error::bad_request(
                "limit: no KEY=N (connections, sockets, references, reservations, status)",
            ));
        }
        Ok(QuotaLine { who, set })
    }

    fn apply(&self, q: &mut Quota) {
        for (k, n) in &self.set {
            if let Some(f) = q.field(k) {
                *f = *n;
            }
        }
    }
}

/// Check that no uid (and not `*`) has two lines.
pub fn check_unique(lines: &[QuotaLine], new: &QuotaLine) -> Result<()> {
    if lines.iter().any(|l| l.who == new.who) {
        return Err(Error::bad_request(match new.who {
            QuotaWho::Others => "a second 'limit *' line".to_string(),
            QuotaWho::Uid(u) => format!("a second limit line for uid {u}"),
        }));
    }
    Ok(())
}

/// The quota of `uid`: `base` (from the flags) for others, none for a
/// privileged uid, then the `*` line (others only), then the uid's own line.
pub fn resolve(base: Quota, lines: &[QuotaLine], uid: u32, privileged: bool) -> Quota {
    let mut q = if privileged { Quota::UNLIMITED } else { base };
    if !privileged {
        if let Some(l) = lines.iter().find(|l| l.who == QuotaWho::Others) {
            l.apply(&mut q);
        }
    }
    if let Some(l) = lines.iter().find(|l| l.who == QuotaWho::Uid(uid)) {
        l.apply(&mut q);
    }
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_resolve_key_by_key_and_root_is_exempt() {
        let base = Quota {
            connections: 1024,
            sockets: 8192,
            references: 32768,
            reservations: 128,
            status: 4,
        };
        let star = QuotaLine::parse("* connections=64 reservations=8").unwrap();
        let one = QuotaLine::parse("uid=1000 connections=unlimited sockets=5").unwrap();
        let root = QuotaLine::parse("uid=0 status=2").unwrap();
        let lines = vec![star, one, root];
        let q = resolve(base, &lines, 65534, false);
        assert_eq!((q.connections, q.reservations, q.sockets), (64, 8, 8192));
        let q = resolve(base, &lines, 1000, false);
        assert_eq!(
            (q.connections, q.sockets, q.reservations),
            (usize::MAX, 5, 8)
        );
        let q = resolve(base, &lines, 0, true);
        assert_eq!(
            q,
            Quota {
                status: 2,
                ..Quota::UNLIMITED
            }
        );
        assert!(check_unique(&lines, &QuotaLine::parse("uid=1000 status=1").unwrap()).is_err());
        for (bad, what) in [
            ("", "missing whom"),
            ("gid=5 sockets=1", "per uid"),
            ("* colour=1", "unknown limit"),
            ("* sockets=x", "not a number"),
            ("* sockets=1 sockets=2", "given twice"),
            ("*", "no KEY=N"),
            ("* sockets", "expected KEY=N"),
        ] {
            let e = QuotaLine::parse(bad).unwrap_err();
            assert!(e.message().contains(what), "{bad}: {e}");
        }
    }
}
