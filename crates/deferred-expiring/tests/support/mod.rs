//! What several of these tests share: a cache of `u32`s on a `ManualClock`, and one built
//! with a time-to-live.

#![allow(dead_code)] // each test file uses its own part of the helpers

use std::{collections::hash_map::RandomState, convert::Infallible, time::Duration};

use deferred_expiring::{ExpiringCache, ManualClock, Shared};

/// A cache of `u32`s on a manual clock, with loaders that fail with `E`.
pub type Cache<E = Infallible> = ExpiringCache<u32, u32, E, RandomState, ManualClock>;

pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// A cache whose entries live `ttl` seconds of the clock returned with it.
pub fn ttl_cache<E: Shared>(ttl: u64) -> (ManualClock, Cache<E>) {
    let clock = ManualClock::new();
    let cache = ExpiringCache::builder()
        .time_to_live(secs(ttl))
        .clock(clock.clone())
        .build();
    (clock, cache)
}
