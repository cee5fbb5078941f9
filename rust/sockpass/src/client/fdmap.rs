//! The client's map from the fd numbers of the sockets it received to
//! their tokens, with the newest entry kept beside the map.
//!
//! A process that closes each socket before its next request (a worker
//! that hands it on) gets the same fd number every time: that entry is
//! replaced in place, in the client's own memory, without hashing into a
//! table elsewhere. Once hundreds of client processes take turns on a CPU,
//! each line a request touches after its wake-up is a cache miss; the
//! table's lines were about 0.5 µs of a request (B5 at 1,000 clients).

use crate::keyhash::KeyedState;
use crate::token::Token;
use std::collections::HashMap;
use std::os::fd::RawFd;

#[derive(Default)]
pub(super) struct FdTokens {
    /// The entry made first while there was none here: its fd is never
    /// also a key of `rest`.
    recent: Option<(RawFd, Token)>,
    rest: HashMap<RawFd, Token, KeyedState>,
}

impl FdTokens {
    /// Map `fd` to `token`; returns the token `fd` had.
    #[link_section = ".text.hot.sockpass"]
    pub(super) fn insert(&mut self, fd: RawFd, token: Token) -> Option<Token> {
        match &mut self.recent {
            Some((f, t)) if *f == fd => Some(std::mem::replace(t, token)),
            None if !self.rest.contains_key(&fd) => {
                self.recent = Some((fd, token));
                None
            }
            _ => self.insert_rest(fd, token),
        }
    }

    /// [`FdTokens::insert`] into the table: out of line, off the request
    /// path of a process that closes each socket before its next request.
    #[inline(never)]
    fn insert_rest(&mut self, fd: RawFd, token: Token) -> Option<Token> {
        self.rest.insert(fd, token)
    }

    pub(super) fn get(&self, fd: RawFd) -> Option<&Token> {
        match &self.recent {
            Some((f, t)) if *f == fd => Some(t),
            _ => self.rest.get(&fd),
        }
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (RawFd, Token)> + '_ {
        let rest = self.rest.iter().map(|(f, t)| (*f, *t));
        self.recent.iter().copied().chain(rest)
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &Token> + '_ {
        self.recent.iter().map(|(_, t)| t).chain(self.rest.values())
    }

    /// Keep the entries whose token `keep` accepts.
    pub(super) fn retain(&mut self, mut keep: impl FnMut(&Token) -> bool) {
        if matches!(&self.recent, Some((_, t)) if !keep(t)) {
            self.recent = None;
        }
        self.rest.retain(|_, t| keep(t));
    }

    pub(super) fn clear(&mut self) {
        self.recent = None;
        self.rest.clear();
    }

    pub(super) fn len(&self) -> usize {
        usize::from(self.recent.is_some()) + self.rest.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok(n: u8) -> Token {
        Token::from_bytes([n; Token::LEN])
    }

    /// Whatever the order of inserts, reused numbers and removals, it
    /// answers as a plain map does.
    #[test]
    fn answers_as_a_plain_map() {
        let mut m = FdTokens::default();
        let mut plain: HashMap<RawFd, Token> = HashMap::new();
        // A small, fixed walk over fds 3..7: reuse, new numbers, removals.
        let mut x = 12345u32;
        for i in 0..5000u32 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let fd = 3 + (x >> 16) as RawFd % 5;
            if (x >> 8) % 7 == 0 {
                let gone = tok((x >> 20) as u8);
                m.retain(|t| *t != gone);
                plain.retain(|_, t| *t != gone);
            } else {
                let t = tok((i % 251) as u8);
                assert_eq!(m.insert(fd, t), plain.insert(fd, t), "step {i}");
            }
            assert_eq!(m.len(), plain.len());
            for f in 0..10 {
                assert_eq!(m.get(f), plain.get(&f), "fd {f} at step {i}");
            }
            let mut a: Vec<_> = m.iter().collect();
            let mut b: Vec<_> = plain.iter().map(|(f, t)| (*f, *t)).collect();
            a.sort_by_key(|p| p.0);
            b.sort_by_key(|p| p.0);
            assert_eq!(a, b);
            assert_eq!(m.values().count(), plain.len());
        }
        m.clear();
        assert_eq!((m.len(), m.get(3)), (0, None));
    }
}
