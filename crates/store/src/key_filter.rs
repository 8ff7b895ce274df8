//! A small Bloom filter over the keys of one write-behind layer.
//!
//! A point lookup searches every layer not yet written, newest first, before
//! the database; under load that is tens of layers, and most lookups (is this
//! transaction id or nonce already known?) find nothing in any of them. The
//! filter lets a lookup pass over a layer after two bit tests instead of a
//! search of its map.

use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};

/// Bits per key: with two probes, about 1.4 % false positives.
const BITS_PER_KEY: usize = 16;

/// The hash a lookup computes once and tests against each layer.
#[derive(Clone, Copy)]
pub(crate) struct FilterHash(u64);

impl FilterHash {
    pub fn of(table: usize, key: &[u8]) -> Self {
        Self(BuildHasherDefault::<DefaultHasher>::default().hash_one((table, key)))
    }

    /// Two bit positions in a filter of `mask + 1` bits.
    fn probes(self, mask: u64) -> [usize; 2] {
        [(self.0 & mask) as usize, ((self.0 >> 32) & mask) as usize]
    }
}

/// Empty (the default) until built: an unbuilt filter may hold any key.
#[derive(Default)]
pub(crate) struct KeyFilter {
    bits: Vec<u64>,
}

impl KeyFilter {
    /// A filter holding the `n` keys of `keys` (and, by chance, a few others).
    pub fn build(n: usize, keys: impl Iterator<Item = FilterHash>) -> Self {
        let words = (n * BITS_PER_KEY).div_ceil(64).next_power_of_two().max(1);
        let mut bits = vec![0u64; words];
        let mask = (words * 64 - 1) as u64;
        for h in keys {
            for p in h.probes(mask) {
                bits[p / 64] |= 1 << (p % 64);
            }
        }
        Self { bits }
    }

    /// False only if the key is certainly absent.
    pub fn may_contain(&self, h: FilterHash) -> bool {
        if self.bits.is_empty() {
            return true;
        }
        let mask = (self.bits.len() * 64 - 1) as u64;
        h.probes(mask)
            .iter()
            .all(|&p| self.bits[p / 64] & (1 << (p % 64)) != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_every_key_built_into_it_and_passes_over_most_others() {
        let keys: Vec<Vec<u8>> = (0..500u32)
            .map(|i| format!("tx/{i:064}").into_bytes())
            .collect();
        let f = KeyFilter::build(keys.len(), keys.iter().map(|k| FilterHash::of(1, k)));
        assert!(keys.iter().all(|k| f.may_contain(FilterHash::of(1, k))));
        let strangers = (500..10_500u32)
            .filter(|i| f.may_contain(FilterHash::of(1, format!("tx/{i:064}").as_bytes())))
            .count();
        assert!(strangers < 400, "{strangers} of 10,000 absent keys passed");
        // The table is part of the key.
        let other_table = keys
            .iter()
            .filter(|k| f.may_contain(FilterHash::of(0, k)))
            .count();
        assert!(
            other_table < 40,
            "{other_table} of 500 passed for another table"
        );
        // Unbuilt: anything may be there.
        assert!(KeyFilter::default().may_contain(FilterHash::of(0, b"x")));
        // Built from nothing: nothing is there.
        let empty = KeyFilter::build(0, std::iter::empty());
        assert!(!empty.may_contain(FilterHash::of(0, b"x")));
    }
}
