//! A small, fast, non-cryptographic hasher in the style of rustc's FxHash.
//!
//! Used for interning tables (user / item ids) where keys are not attacker-controlled in a way
//! that matters (worst case is a slow aggregate, never wrong results). Do not use where HashDoS
//! resistance is required.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// Multiplicative constant of FxHash (64-bit).
const K: u64 = 0x517c_c1b7_2722_0a95;

/// FxHash-style hasher: `h = (rotl(h, 5) ^ word) * K` per machine word.
///
/// `finish` adds one xor-shift-multiply round and rotates, so that the well-mixed high bits land in
/// the low bits that `HashMap` uses to pick a bucket.
#[derive(Clone, Copy, Default, Debug)]
pub struct FxHasher {
    hash: u64,
}

impl FxHasher {
    #[inline(always)]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(K);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut b = bytes;
        while b.len() >= 8 {
            self.add(u64::from_le_bytes([
                b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7],
            ]));
            b = &b[8..];
        }
        if b.len() >= 4 {
            self.add(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as u64);
            b = &b[4..];
        }
        if b.len() >= 2 {
            self.add(u16::from_le_bytes([b[0], b[1]]) as u64);
            b = &b[2..];
        }
        if let Some(&x) = b.first() {
            self.add(x as u64);
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(i as u64);
    }

    #[inline]
    fn write_u16(&mut self, i: u16) {
        self.add(i as u64);
    }

    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(i as u64);
    }

    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    #[inline]
    fn write_u128(&mut self, i: u128) {
        self.add(i as u64);
        self.add((i >> 64) as u64);
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    #[inline]
    fn write_i64(&mut self, i: i64) {
        self.add(i as u64);
    }

    #[inline]
    fn write_i32(&mut self, i: i32) {
        self.add(i as u32 as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        // One extra xor-shift-multiply round: cheap, and makes every output bit depend on every
        // input word (plain FxHash leaves the low bits weak for short string keys).
        let h = self.hash;
        (h ^ (h >> 32)).wrapping_mul(K).rotate_left(26)
    }
}

/// `BuildHasher` for [`FxHasher`] (zero-sized, deterministic: same hashes in every process).
pub type FxBuildHasher = BuildHasherDefault<FxHasher>;

/// `HashMap` using [`FxHasher`]. Construct with `FxHashMap::default()`.
pub type FxHashMap<K, V> = HashMap<K, V, FxBuildHasher>;

/// `HashSet` using [`FxHasher`]. Construct with `FxHashSet::default()`.
pub type FxHashSet<K> = HashSet<K, FxBuildHasher>;

/// Hashes one value with [`FxHasher`].
#[inline]
pub fn fx_hash<T: std::hash::Hash + ?Sized>(value: &T) -> u64 {
    let mut h = FxHasher::default();
    value.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_discriminating() {
        assert_eq!(fx_hash("user-1"), fx_hash("user-1"));
        assert_ne!(fx_hash("user-1"), fx_hash("user-2"));
        // str hashing appends a terminator, so concatenation boundaries matter for tuples
        assert_ne!(fx_hash(&("ab", "c")), fx_hash(&("a", "bc")));
        assert_ne!(fx_hash(&1u64), fx_hash(&2u64));
        // tail lengths 0..=15 are all consumed
        let s = "abcdefghijklmnop";
        let hs: Vec<u64> = (0..=16).map(|n| fx_hash(&s.as_bytes()[..n])).collect();
        for i in 0..hs.len() {
            for j in 0..i {
                assert_ne!(hs[i], hs[j], "prefix {i} vs {j}");
            }
        }
    }

    #[test]
    fn map_works_and_spreads_low_bits() {
        let mut m: FxHashMap<Box<str>, u32> = FxHashMap::default();
        for i in 0..10_000u32 {
            m.insert(format!("u{i:07}").into_boxed_str(), i);
        }
        assert_eq!(m.len(), 10_000);
        assert_eq!(m.get("u0001234"), Some(&1234));
        assert_eq!(m.get("u9999999"), None);
        // the low 10 bits of sequential-looking keys must not collapse onto few buckets
        let mut seen = FxHashSet::default();
        for i in 0..4096u32 {
            seen.insert(fx_hash(&format!("u{i:07}")) & 1023);
        }
        assert!(
            seen.len() > 900,
            "only {} distinct low-bit buckets",
            seen.len()
        );
    }
}
