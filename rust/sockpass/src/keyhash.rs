//! A fast keyed hasher for the broker's tables whose keys clients choose
//! (socket specs, ports).
//!
//! std's SipHash was a fifth of the broker's instructions per cached request:
//! a `SocketSpec` hashes as a dozen small writes, and SipHash pays a round per
//! write. This hasher folds each write in with a multiply and finishes with a
//! full avalanche, starting from a per-process random key, so which keys
//! share a bucket is not known in advance. The tables it serves are bounded
//! by the broker's limits, so even a bad spread stays bounded work.

use std::hash::{BuildHasher, Hasher};
use std::sync::OnceLock;

const K: u64 = 0xf135_7aea_2e62_a9c5;

/// The running state of one hash.
#[derive(Clone, Copy, Debug)]
pub struct KeyedHasher(u64);

impl KeyedHasher {
    #[inline]
    fn add(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(26) ^ v).wrapping_mul(K);
    }
}

impl Hasher for KeyedHasher {
    #[inline]
    fn finish(&self) -> u64 {
        // murmur3's fmix64: every input bit reaches every output bit, which
        // the table needs (it uses both the low and the top bits).
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }

    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes(c.try_into().unwrap()));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            // The length keeps "a" and "a\0" apart.
            self.add(u64::from_le_bytes(w) ^ ((rest.len() as u64) << 59));
        }
    }

    #[inline]
    fn write_u8(&mut self, v: u8) {
        self.add(u64::from(v));
    }

    #[inline]
    fn write_u16(&mut self, v: u16) {
        self.add(u64::from(v));
    }

    #[inline]
    fn write_u32(&mut self, v: u32) {
        self.add(u64::from(v));
    }

    #[inline]
    fn write_u64(&mut self, v: u64) {
        self.add(v);
    }

    #[inline]
    fn write_usize(&mut self, v: usize) {
        self.add(v as u64);
    }
}

/// Builds [`KeyedHasher`]s from this process's random key.
#[derive(Clone, Copy, Debug)]
pub struct KeyedState(u64);

impl Default for KeyedState {
    fn default() -> KeyedState {
        static KEY: OnceLock<u64> = OnceLock::new();
        // std's RandomState is seeded from the OS's random source.
        KeyedState(
            *KEY.get_or_init(|| std::collections::hash_map::RandomState::new().hash_one(0u64)),
        )
    }
}

impl BuildHasher for KeyedState {
    type Hasher = KeyedHasher;

    #[inline]
    fn build_hasher(&self) -> KeyedHasher {
        KeyedHasher(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::SocketSpec;
    use std::collections::HashSet;

    #[test]
    fn equal_keys_hash_equal_and_near_keys_spread() {
        let s = KeyedState::default();
        let a: SocketSpec = "udp:127.0.0.1:53".parse().unwrap();
        assert_eq!(s.hash_one(&a), s.hash_one(a.clone()));
        // Ports next to each other land in different low bits (the table's
        // bucket index) and different top 7 bits (its control byte).
        let mut low = HashSet::new();
        let mut top = HashSet::new();
        for p in 1..=1024u16 {
            let h = s.hash_one(SocketSpec::new(a.proto, a.addr, p));
            low.insert(h & 1023);
            top.insert(h >> 57);
        }
        // A uniform hash gives about 647 of 1024 and 128 of 128 (all 128
        // is not certain: the key is random, so leave room).
        assert!(low.len() > 550, "{} distinct buckets of 1024", low.len());
        assert!(
            top.len() > 120,
            "{} distinct top-7-bit values of 128",
            top.len()
        );
        assert_ne!(s.hash_one("a"), s.hash_one("a\0"));
    }
}
