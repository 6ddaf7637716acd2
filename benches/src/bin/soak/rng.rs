//! Random numbers: each worker's own generator (the seed fixes its sequence of operations)
//! and the values stored at a key.

use std::sync::atomic::Ordering::Relaxed;

use crate::counters::BOOKS;
use crate::KEY_MULT;

/// SplitMix64: small, fast, and good enough to pick operations.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub fn percent(&mut self) -> u64 {
        self.below(100)
    }
}

/// A generator for a loader that runs without a worker's (the cache-wide loader).
pub fn loader_rng() -> Rng {
    Rng::new(BOOKS.loader_seed.fetch_add(0x9E37_79B9_7F4A_7C15, Relaxed))
}

/// A value that belongs to `key` (see [`KEY_MULT`]).
pub fn value_for(key: u64, rng: &mut Rng) -> u64 {
    key * KEY_MULT + rng.below(KEY_MULT)
}
