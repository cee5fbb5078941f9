//! Tokens name one reference to a socket held by the broker.
//!
//! A token is 24 bytes: 16 from the kernel's random source (getrandom) and an
//! 8-byte block that the broker never repeats while it runs (a sequence
//! number, or the broker's own numbering: see [`TokenSource::make_for`]), so
//! a token is unguessable and never reused. The block is enciphered with a
//! per-broker random key (Speck64/128, a permutation of 64-bit blocks), so it
//! stays unique but does not tell a client how many tokens were issued. Its
//! text form is 48 lowercase hex digits.

use crate::error::{Error, Result};
use std::fmt;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::str::FromStr;

#[derive(Clone, Copy, Eq, PartialOrd, Ord)]
pub struct Token([u8; Token::LEN]);

/// Three word compares, not a call to `memcmp` (the broker compares a
/// token on every lookup).
impl PartialEq for Token {
    #[inline]
    fn eq(&self, other: &Token) -> bool {
        let w = |t: &Token, i: usize| u64::from_ne_bytes(t.0[i..i + 8].try_into().unwrap());
        (w(self, 0) ^ w(other, 0)) | (w(self, 8) ^ w(other, 8)) | (w(self, 16) ^ w(other, 16)) == 0
    }
}

impl Token {
    pub const LEN: usize = 24;

    pub const fn from_bytes(b: [u8; Token::LEN]) -> Token {
        Token(b)
    }

    pub fn as_bytes(&self) -> &[u8; Token::LEN] {
        &self.0
    }
}

/// A token hashes as its first 8 bytes: they are random, so equal tokens
/// hash equal and distinct ones spread evenly.
impl Hash for Token {
    fn hash<H: Hasher>(&self, h: &mut H) {
        h.write_u64(u64::from_ne_bytes(self.0[..8].try_into().unwrap()));
    }
}

/// The hasher for the broker's token maps: a token's first 8 bytes are
/// already uniformly random (getrandom), so hashing them again (SipHash, a
/// third of the broker's instructions per request) buys nothing. Keys are
/// only ever inserted by the broker, from its random source; its clients
/// only look tokens up, so they cannot pile keys into one bucket. (The
/// client, which cannot vouch for its broker's tokens, hashes them whole.)
#[derive(Clone, Copy, Debug, Default)]
pub struct TokenHasher(u64);

impl Hasher for TokenHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not used by Token; a plain FNV-1a fold keeps other keys working.
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 ^= v;
    }
}

/// `BuildHasher` for maps and sets keyed by [`Token`].
pub type TokenBuildHasher = BuildHasherDefault<TokenHasher>;

impl Token {
    /// Length of the text form: two lowercase hex digits a byte.
    pub const HEX_LEN: usize = 2 * Token::LEN;

    /// The text form without formatting machinery: the C and Python
    /// layers hand a token out on every request, and `write!` per byte was
    /// a third of the client's instructions. No table: a 512-byte table of
    /// digit pairs took 144 instructions and most of its 8 cache lines for
    /// every token, which a client process woken among hundreds finds cold.
    #[link_section = ".text.hot.sockpass"]
    pub fn to_hex(&self) -> [u8; Token::HEX_LEN] {
        #[cfg(target_arch = "x86_64")]
        return hex_sse2(&self.0);
        #[cfg(not(target_arch = "x86_64"))]
        return hex_words(&self.0);
    }
}

/// [`Token::to_hex`] 16 digits at a time in SSE2 registers (part of every
/// x86_64 CPU): about 30 instructions, with its constants on one line.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn hex_sse2(b: &[u8; Token::LEN]) -> [u8; Token::HEX_LEN] {
    use std::arch::x86_64::*;
    let mut out = [0u8; Token::HEX_LEN];
    // SAFETY: SSE2 is in the x86_64 baseline. The unaligned loads read
    // bytes 0..16 and 16..24 of `b` (24 long), the unaligned stores write
    // bytes 0..16, 16..32 and 32..48 of `out` (48 long).
    unsafe {
        let nibbles = _mm_set1_epi8(0x0f);
        // Each byte's high nibble, then its low one, as 16 values 0..=15.
        let split = |x: __m128i| {
            let hi = _mm_and_si128(_mm_srli_epi16::<4>(x), nibbles);
            (hi, _mm_and_si128(x, nibbles))
        };
        // 0..=9 to '0'..='9', 10..=15 to 'a'..='f'.
        let digits = |v: __m128i| {
            let letter = _mm_cmpgt_epi8(v, _mm_set1_epi8(9));
            let gap = _mm_and_si128(letter, _mm_set1_epi8((b'a' - b'0' - 10) as i8));
            _mm_add_epi8(_mm_add_epi8(v, _mm_set1_epi8(b'0' as i8)), gap)
        };
        let o = out.as_mut_ptr();
        let (hi, lo) = split(_mm_loadu_si128(b.as_ptr().cast()));
        _mm_storeu_si128(o.cast(), digits(_mm_unpacklo_epi8(hi, lo)));
        _mm_storeu_si128(o.add(16).cast(), digits(_mm_unpackhi_epi8(hi, lo)));
        let (hi, lo) = split(_mm_loadl_epi64(b.as_ptr().add(16).cast()));
        _mm_storeu_si128(o.add(32).cast(), digits(_mm_unpacklo_epi8(hi, lo)));
    }
    out
}

/// [`Token::to_hex`] four bytes at a time in a word, for other machines.
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
fn hex_words(b: &[u8; Token::LEN]) -> [u8; Token::HEX_LEN] {
    const LOW: u64 = 0x000F_000F_000F_000F;
    let mut out = [0u8; Token::HEX_LEN];
    for (o, i) in out.chunks_exact_mut(8).zip(b.chunks_exact(4)) {
        // Byte k of the four to the low byte of 16-bit lane k.
        let x = u64::from(u32::from_le_bytes([i[0], i[1], i[2], i[3]]));
        let x = (x | (x << 16)) & 0x0000_FFFF_0000_FFFF;
        let x = (x | (x << 8)) & 0x00FF_00FF_00FF_00FF;
        // Each lane: its high nibble in the first byte, its low in the second.
        let n = ((x >> 4) & LOW) | ((x & LOW) << 8);
        // 0x0a-0x0f carry into bit 4 when 6 is added: those become letters.
        let letters = ((n + 0x0606_0606_0606_0606) >> 4) & 0x0101_0101_0101_0101;
        let d = n + 0x3030_3030_3030_3030 + letters * u64::from(b'a' - b'0' - 10);
        o.copy_from_slice(&d.to_le_bytes());
    }
    out
}

impl Token {
    /// The first 12 hex digits, enough to tell tokens apart in a message.
    pub fn short(&self) -> String {
        String::from_utf8_lossy(&self.to_hex()[..12]).into_owned()
    }

    /// Parse every token of a list, or fail naming the first bad one
    /// (`tokens[i]: ...`): a call that takes many tokens checks them all
    /// before it sends any.
    pub fn parse_all<S: AsRef<[u8]>>(items: impl IntoIterator<Item = S>) -> Result<Vec<Token>> {
        items
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                Token::from_hex(s.as_ref()).map_err(|e| e.context(format_args!("tokens[{i}]")))
            })
            .collect()
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex = self.to_hex();
        // The digits are ASCII.
        f.write_str(std::str::from_utf8(&hex).unwrap_or_default())
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token({self})")
    }
}

/// Four bytes (byte 0 in the low bits) from eight hex digits in memory
/// order (digit 0 in `w`'s low byte), either case; false if any byte is not
/// a hex digit.
#[inline]
fn unhex_word(w: u64) -> (u32, bool) {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // Each test leaves bit 7 of each byte. For bytes below 0x80, adding
    // 0x80 - k sets bit 7 exactly when the byte is >= k, with no carry into
    // the next byte; bytes from 0x80 up are refused by `ascii`.
    let ge = |x: u64, k: u8| x.wrapping_add(ONES * u64::from(0x80 - k)) & HIGH;
    let ascii = !w & HIGH;
    let digit = ge(w, b'0') & !ge(w, b'9' + 1);
    // OR 0x20 folds 'A'..='F' onto 'a'..='f' and nothing else onto them.
    let l = w | (ONES * 0x20);
    let letter = ge(l, b'a') & !ge(l, b'f' + 1);
    let ok = ascii & (digit | letter) == HIGH;
    // A digit's value is its low nibble; a letter's is that plus 9.
    let v = (w & (ONES * 0x0f)) + (letter >> 7) * 9;
    // Byte 2i becomes (digit 2i << 4) | digit 2i+1, then the even bytes
    // close up.
    let mut x = ((v << 4) | (v >> 8)) & 0x00ff_00ff_00ff_00ff;
    x = (x | x >> 8) & 0x0000_ffff_0000_ffff;
    x = (x | x >> 16) & 0xffff_ffff;
    (x as u32, ok)
}

impl FromStr for Token {
    type Err = Error;
    fn from_str(s: &str) -> Result<Token> {
        Token::from_hex(s.as_bytes())
    }
}

impl Token {
    /// Parse the text form from bytes (the C layer's strings need no UTF-8
    /// check first: anything but 48 hex digits is refused here).
    pub fn from_hex(hex: &[u8]) -> Result<Token> {
        let bad = || {
            Error::bad_request(format!(
                "invalid token {:?} (expected {} hex digits)",
                String::from_utf8_lossy(hex),
                Token::LEN * 2
            ))
        };
        // Eight digits at a time in a word, not u8::from_str_radix (which
        // also takes a '+' sign) nor a table lookup a digit, and one check
        // at the end instead of a branch a digit: every release from C and
        // Python parses one.
        if hex.len() != Token::LEN * 2 {
            return Err(bad());
        }
        let mut b = [0u8; Token::LEN];
        let mut valid = true;
        for (out, digits) in b.chunks_exact_mut(4).zip(hex.chunks_exact(8)) {
            let w = u64::from_le_bytes(digits.try_into().unwrap_or([0; 8]));
            let (bytes, ok) = unhex_word(w);
            valid &= ok;
            out.copy_from_slice(&bytes.to_le_bytes());
        }
        if !valid {
            return Err(bad());
        }
        Ok(Token(b))
    }
}

/// Makes tokens: random bytes from getrandom, read in batches so that the
/// hot path does not make a syscall per token, plus a sequence number
/// enciphered with this source's key.
pub struct TokenSource {
    pool: Box<[u8; 4096]>,
    used: usize,
    next_seq: u64,
    key: [u64; 2],
    rounds: [u32; SPECK_ROUNDS],
}

impl TokenSource {
    /// A source with a fresh random key (all zero if getrandom fails: the
    /// sequence is then visible, still unique).
    pub fn new() -> TokenSource {
        let mut k = [0u8; 16];
        let _ = crate::sys::fill_random(&mut k);
        let key = [
            u64::from_le_bytes(k[..8].try_into().unwrap()),
            u64::from_le_bytes(k[8..].try_into().unwrap()),
        ];
        TokenSource::resume(1, key)
    }

    /// Continue a sequence under its key (when a broker takes over from
    /// another), so no token repeats.
    pub fn resume(seq: u64, key: [u64; 2]) -> TokenSource {
        TokenSource {
            pool: Box::new([0u8; 4096]),
            used: 4096,
            next_seq: seq.max(1),
            key,
            rounds: speck_schedule(key),
        }
    }

    /// The key that hides the sequence (handed over on upgrade).
    pub fn key(&self) -> [u64; 2] {
        self.key
    }

    pub fn next_sequence(&self) -> u64 {
        self.next_seq
    }

    pub fn make(&mut self) -> Result<Token> {
        let t = self.make_for(self.next_seq)?;
        self.next_seq += 1;
        Ok(t)
    }

    /// A token whose last 8 bytes encipher `block` under this source's
    /// key: the broker's own numbering (a slot and its generation), which
    /// it must never repeat, and reads back with [`TokenSource::block_of`].
    pub fn make_for(&mut self, block: u64) -> Result<Token> {
        if self.used + 16 > self.pool.len() {
            crate::sys::fill_random(&mut self.pool[..]).map_err(|e| Error::os(e, "getrandom"))?;
            self.used = 0;
        }
        let mut b = [0u8; Token::LEN];
        b[..16].copy_from_slice(&self.pool[self.used..self.used + 16]);
        // Random bytes are used once: wipe them from the pool.
        self.pool[self.used..self.used + 16].fill(0);
        self.used += 16;
        // A permutation: distinct blocks give distinct bytes.
        b[16..].copy_from_slice(&speck_encrypt(&self.rounds, block).to_le_bytes());
        Ok(Token(b))
    }

    /// The block a token of this source's key was made for (any 8 bytes
    /// decipher to some block: the caller checks the whole token).
    pub fn block_of(&self, t: &Token) -> u64 {
        speck_decrypt(
            &self.rounds,
            u64::from_le_bytes(t.0[16..].try_into().unwrap()),
        )
    }
}

impl Default for TokenSource {
    fn default() -> Self {
        Self::new()
    }
}

/// Speck64/128 (Beaulieu et al., "The SIMON and SPECK families of
/// lightweight block ciphers", 2013): 64-bit blocks, 128-bit key.
const SPECK_ROUNDS: usize = 27;

fn speck_schedule(key: [u64; 2]) -> [u32; SPECK_ROUNDS] {
    // Key words k0 (round key 0) and l0, l1, l2.
    let mut k = key[0] as u32;
    let mut l = [(key[0] >> 32) as u32, key[1] as u32, (key[1] >> 32) as u32];
    let mut rk = [0u32; SPECK_ROUNDS];
    for (i, r) in rk.iter_mut().enumerate() {
        *r = k;
        let li = (k.wrapping_add(l[i % 3].rotate_right(8))) ^ i as u32;
        l[i % 3] = li;
        k = k.rotate_left(3) ^ li;
    }
    rk
}

fn speck_encrypt(rk: &[u32; SPECK_ROUNDS], block: u64) -> u64 {
    let (mut x, mut y) = ((block >> 32) as u32, block as u32);
    for &k in rk {
        x = x.rotate_right(8).wrapping_add(y) ^ k;
        y = y.rotate_left(3) ^ x;
    }
    (u64::from(x) << 32) | u64::from(y)
}

fn speck_decrypt(rk: &[u32; SPECK_ROUNDS], block: u64) -> u64 {
    let (mut x, mut y) = ((block >> 32) as u32, block as u32);
    for &k in rk.iter().rev() {
        y = (y ^ x).rotate_right(3);
        x = (x ^ k).wrapping_sub(y).rotate_left(8);
    }
    (u64::from(x) << 32) | u64::from(y)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The paper's test vector: key 1b1a1918 13121110 0b0a0908 03020100,
    /// plaintext 3b726574 7475432d, ciphertext 8c6fa548 454e028b.
    #[test]
    fn speck_test_vector() {
        let key = [0x0b0a0908_03020100u64, 0x1b1a1918_13121110u64];
        let rk = speck_schedule(key);
        assert_eq!(speck_encrypt(&rk, 0x3b726574_7475432d), 0x8c6fa548_454e028b);
        assert_eq!(speck_decrypt(&rk, 0x8c6fa548_454e028b), 0x3b726574_7475432d);
    }

    /// A token made for a block gives that block back, under its key only.
    #[test]
    fn block_round_trip() {
        let mut a = TokenSource::new();
        let b = TokenSource::new();
        for block in [0, 1, 1 << 63, u64::MAX, 0x8000_0001_0000_0002] {
            let t = a.make_for(block).unwrap();
            assert_eq!(a.block_of(&t), block);
            assert_ne!(b.block_of(&t), block);
        }
    }

    /// The visible sequence bytes are not the count, differ between
    /// brokers (keys), and stay distinct across a resumed source.
    #[test]
    fn sequence_is_hidden_and_unique_across_resume() {
        let mut a = TokenSource::new();
        let mut seen = std::collections::HashSet::new();
        let tail = |t: &Token| u64::from_le_bytes(t.as_bytes()[16..].try_into().unwrap());
        for _ in 0..1000 {
            assert!(seen.insert(tail(&a.make().unwrap())));
        }
        let mut b = TokenSource::resume(a.next_sequence(), a.key());
        for _ in 0..1000 {
            assert!(
                seen.insert(tail(&b.make().unwrap())),
                "resumed source repeated"
            );
        }
        // Small counts would show as small numbers; enciphered they do not.
        assert!(seen.iter().filter(|&&v| v < 1 << 32).count() < 5);
        let mut c = TokenSource::new();
        assert_ne!(tail(&c.make().unwrap()), {
            let mut a2 = TokenSource::resume(1, a.key());
            tail(&a2.make().unwrap())
        });
    }

    #[test]
    fn unique_and_round_trip() {
        let mut src = TokenSource::new();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            let t = src.make().unwrap();
            assert!(seen.insert(t));
            assert_eq!(t.to_string().parse::<Token>().unwrap(), t);
        }
        let all: [u8; Token::LEN] = std::array::from_fn(|i| (i * 11) as u8 ^ 0xa5);
        let t = Token::from_bytes(all);
        let slow: String = all.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(t.to_string(), slow);
        assert!("zz".parse::<Token>().is_err());
        assert!("é".repeat(24).parse::<Token>().is_err());
        // upper case is the same token; a sign or any other digit is not
        assert_eq!(slow.to_uppercase().parse::<Token>().unwrap(), t);
        for bad in ["+f", "0g", "g0", " 0", "0 "] {
            let s = format!("{bad}{}", &slow[2..]);
            assert!(s.parse::<Token>().is_err(), "{s}");
        }
        assert!(slow[..46].parse::<Token>().is_err());
        assert!(Token::from_hex(b"\xff").is_err());
        assert_eq!(Token::from_hex(slow.as_bytes()).unwrap(), t);
        // Every byte at every place: only hex digits pass, and parse to
        // their value (bytes from 0x80 up must not carry into a neighbour).
        for c in 0u8..=255 {
            for at in 0..Token::HEX_LEN {
                let mut s = slow.clone().into_bytes();
                s[at] = c;
                let r = Token::from_hex(&s);
                assert_eq!(r.is_ok(), c.is_ascii_hexdigit(), "{c:#x} at {at}");
                if let Ok(p) = r {
                    assert_eq!(p.to_string(), String::from_utf8(s).unwrap().to_lowercase());
                }
            }
        }
        // Every byte value at every place, in text form (both ways of
        // writing it, whichever this machine uses).
        for v in 0u8..=255 {
            let t = Token::from_bytes(std::array::from_fn(|i| v ^ (i as u8)));
            let slow: String = t.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(t.to_string(), slow);
            assert_eq!(&super::hex_words(t.as_bytes())[..], slow.as_bytes());
        }
        // A list: all parsed, or the first bad one named by index.
        assert_eq!(Token::parse_all([&slow, &slow]).unwrap(), vec![t, t]);
        let e = Token::parse_all([&slow, "zz"]).unwrap_err();
        assert!(e.message().starts_with("tokens[1]: "), "{e}");
        assert_eq!(e.kind(), crate::Kind::BadRequest);
        assert!(format!("{slow}0").parse::<Token>().is_err());
    }
}
