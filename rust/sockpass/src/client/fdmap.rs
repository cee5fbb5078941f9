//! A client's held references by the fd number each came with.
//!
//! The kernel hands out the lowest free fd number, so a client's sockets
//! sit at small numbers: those are slots of a vector indexed by the number
//! (a grant costs a store, not a hash-table insert); numbers from
//! [`DENSE`] up (a process with many files open, or one that moved an fd
//! high with `dup2`) go to a map. Either way the vector stays at most
//! [`DENSE`] slots long.

use crate::keyhash::KeyedState;
use crate::token::Token;
use std::collections::HashMap;
use std::os::fd::RawFd;

/// fd numbers below this are kept in the vector (at most about 100 KiB).
const DENSE: usize = 4096;

#[derive(Default)]
pub(super) struct FdTokens {
    dense: Vec<Option<Token>>,
    sparse: HashMap<RawFd, Token, KeyedState>,
    /// Entries in `dense` that hold a token.
    dense_len: usize,
}

fn dense_index(fd: RawFd) -> Option<usize> {
    usize::try_from(fd).ok().filter(|&i| i < DENSE)
}

impl FdTokens {
    /// Keep `token` under `fd`; returns the token that was there.
    pub(super) fn insert(&mut self, fd: RawFd, token: Token) -> Option<Token> {
        let Some(i) = dense_index(fd) else {
            return self.sparse.insert(fd, token);
        };
        if i >= self.dense.len() {
            self.dense.resize(i + 1, None);
        }
        let old = self.dense[i].replace(token);
        self.dense_len += usize::from(old.is_none());
        old
    }

    pub(super) fn get(&self, fd: RawFd) -> Option<Token> {
        match dense_index(fd) {
            Some(i) => self.dense.get(i).copied().flatten(),
            None => self.sparse.get(&fd).copied(),
        }
    }

    /// Keep only the entries whose token passes `keep`.
    pub(super) fn retain(&mut self, mut keep: impl FnMut(&Token) -> bool) {
        for slot in &mut self.dense {
            if slot.as_ref().is_some_and(|t| !keep(t)) {
                *slot = None;
                self.dense_len -= 1;
            }
        }
        if !self.sparse.is_empty() {
            self.sparse.retain(|_, t| keep(t));
        }
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (RawFd, Token)> + '_ {
        let dense = self.dense.iter().enumerate();
        // Indexes are below DENSE, so they fit an fd number.
        let dense = dense.filter_map(|(i, t)| t.map(|t| (i as RawFd, t)));
        dense.chain(self.sparse.iter().map(|(f, t)| (*f, *t)))
    }

    pub(super) fn len(&self) -> usize {
        self.dense_len + self.sparse.len()
    }

    pub(super) fn clear(&mut self) {
        self.dense.clear();
        self.sparse.clear();
        self.dense_len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok(n: u8) -> Token {
        Token::from_bytes([n; Token::LEN])
    }

    #[test]
    fn low_and_high_numbers_alike() {
        let mut m = FdTokens::default();
        let high = DENSE as RawFd + 5;
        for (fd, n) in [
            (3, 1),
            (0, 2),
            (DENSE as RawFd - 1, 3),
            (high, 4),
            (i32::MAX, 5),
        ] {
            assert_eq!(m.insert(fd, tok(n)), None);
            assert_eq!(m.get(fd), Some(tok(n)));
        }
        assert_eq!(m.len(), 5);
        assert!(m.dense.len() <= DENSE);
        // A number reused: the old token comes back, the count stays.
        assert_eq!(m.insert(3, tok(9)), Some(tok(1)));
        assert_eq!(m.insert(high, tok(8)), Some(tok(4)));
        assert_eq!(m.len(), 5);
        assert_eq!(m.get(4), None);
        assert_eq!(m.get(-1), None);
        assert_eq!(m.get(DENSE as RawFd + 1), None);
        m.retain(|t| *t != tok(9) && *t != tok(8));
        assert_eq!((m.get(3), m.get(high), m.len()), (None, None, 3));
        let mut all: Vec<_> = m.iter().collect();
        all.sort_by_key(|(f, _)| *f);
        let want = [
            (0, tok(2)),
            (DENSE as RawFd - 1, tok(3)),
            (i32::MAX, tok(5)),
        ];
        assert_eq!(all, want);
        m.clear();
        assert_eq!((m.len(), m.iter().count(), m.get(0)), (0, 0, None));
    }
}
