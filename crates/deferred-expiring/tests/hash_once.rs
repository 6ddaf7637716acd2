//! Issue #13: one operation hashes its key once, in the expiring layer too. The hash is
//! computed where the operation starts and travels down with the key: the expiring layer's
//! read, the inner cache's lookup, load, insert or removal (and through it the map and the
//! eviction policy), the check that the entry made is the one stored, and the timer that
//! reclaims the entry at its deadline (which keeps the hash beside the key).
//!
//! The key type counts the calls of its `Hash` impl on this thread (every operation here
//! runs on the test's thread: `block_on`, no pool, no spawner), so each count is the number
//! of times one call hashed its key. Time comes from a `ManualClock`, moved only where a
//! test expires something, so no operation reclaims another key meanwhile.
//!
//! Each test collects its counts and checks them all at the end, so that a failure lists
//! every operation that missed its goal with the count it got (`--nocapture` prints them
//! all). Before the hash travelled down, a miss + load hashed 3 times, an insert 2, a read
//! that found an expired entry and loaded anew 4, and the timer wheel hashed each key it
//! reclaimed (twice for a timer it moved).

#![allow(clippy::std_instead_of_core)]

use std::{collections::hash_map::RandomState, convert::Infallible, time::Duration};

use deferred_expiring::{ExpiringBuilder, ExpiringCache, Expiry, ManualClock, Source};
use deferred_test_support::{hashes, Counted};
use futures::executor::block_on;

type Cache = ExpiringCache<Counted, u64, String, RandomState, ManualClock>;
type Builder = ExpiringBuilder<Counted, u64, String, RandomState, ManualClock>;
/// A kind of cache: its name, and what its builder is given.
type Kind = (&'static str, fn(Builder) -> Builder);

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// A per-entry policy that moves the deadline on every read (and so schedules a timer
/// under the read's shard lock): the custom-`Expiry` read path.
struct Sliding;

impl Expiry<Counted, u64> for Sliding {
    fn expire_after_create(&self, _: &Counted, _: &u64, _: Duration) -> Option<Duration> {
        Some(secs(60))
    }

    fn expire_after_read(
        &self,
        _: &Counted,
        _: &u64,
        _: Duration,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(secs(30))
    }
}

/// The kinds of expiring cache whose paths differ: time-to-live, unbounded and bounded
/// (S3-FIFO admission of what is loaded or inserted), time-to-idle (a read moves the
/// deadline), and a custom `Expiry` (a read may schedule a sooner timer). Every entry lives
/// 60 s of the clock returned with it.
fn caches() -> Vec<(&'static str, ManualClock, Cache)> {
    let kinds: [Kind; 4] = [
        ("ttl", |b| b.time_to_live(secs(60))),
        ("ttl bounded", |b| {
            b.time_to_live(secs(60)).max_capacity(1000)
        }),
        ("tti", |b| b.time_to_idle(secs(60))),
        ("expiry", |b| b.expire_after(Sliding)),
    ];
    kinds
        .into_iter()
        .map(|(kind, more)| {
            let clock = ManualClock::new();
            let builder = ExpiringCache::builder().clock(clock.clone());
            (kind, clock.clone(), more(builder).build())
        })
        .collect()
}

/// The counts of one test, checked together at its end against their goals.
#[derive(Default)]
struct Tally(Vec<(String, usize, usize)>);

impl Tally {
    /// Records that `op` on a cache of `kind` hashed `n` times, where the goal is `goal`.
    fn count(&mut self, kind: &str, op: &str, n: usize, goal: usize) {
        println!("{kind:>12}: {op:<44} {n}");
        self.0.push((format!("{kind}: {op}"), n, goal));
    }

    /// Fails, listing every count that missed its goal.
    fn check(self) {
        let missed: Vec<String> = self
            .0
            .iter()
            .filter(|(_, n, goal)| n != goal)
            .map(|(op, n, goal)| format!("{op}: hashed {n} times, goal {goal}"))
            .collect();
        assert!(missed.is_empty(), "\n{}", missed.join("\n"));
    }
}

/// The goal of every operation here: one hash.
const ONCE: usize = 1;

#[test]
fn get_with_miss_and_load_and_hit_hash_once() {
    let mut tally = Tally::default();
    for (kind, _clock, cache) in caches() {
        let get = cache
            .get_with(Counted(1), || async { Ok(10) })
            .with_source();
        let (n, v) = hashes(|| block_on(get));
        assert_eq!(v, (Ok(10), Source::Loaded));
        tally.count(kind, "get_with miss + load", n, ONCE);
        let get = cache
            .get_with(Counted(1), || async { Ok(11) })
            .with_source();
        let (n, v) = hashes(|| block_on(get));
        assert_eq!(v, (Ok(10), Source::Hit));
        tally.count(kind, "get_with hit", n, ONCE);
    }
    tally.check();
}

#[test]
fn get_with_key_and_optionally_get_with_hash_once() {
    let mut tally = Tally::default();
    for (kind, _clock, cache) in caches() {
        let get = cache.get_with_key(Counted(1), |key| {
            let v = key.0 * 10;
            async move { Ok(v) }
        });
        let (n, v) = hashes(|| block_on(get));
        assert_eq!(v, Ok(10));
        tally.count(kind, "get_with_key miss + load", n, ONCE);
        let get = cache.optionally_get_with(Counted(2), || async { Some(20) });
        let (n, v) = hashes(|| block_on(get));
        assert_eq!(v, Ok(Some(20)));
        tally.count(kind, "optionally_get_with miss + load", n, ONCE);
        let get = cache.optionally_get_with(Counted(3), || async { None });
        let (n, v) = hashes(|| block_on(get));
        assert_eq!(v, Ok(None));
        tally.count(kind, "optionally_get_with miss, none found", n, ONCE);
        let get = cache.optionally_get_with(Counted(2), || async { Some(21) });
        let (n, v) = hashes(|| block_on(get));
        assert_eq!(v, Ok(Some(20)));
        tally.count(kind, "optionally_get_with hit", n, ONCE);
    }
    tally.check();
}

#[test]
fn get_with_blocking_miss_and_hit_hash_once() {
    let mut tally = Tally::default();
    for (kind, _clock, cache) in caches() {
        let (n, v) = hashes(|| cache.get_with_blocking(Counted(1), || Ok(10)));
        assert_eq!(v, Ok(10));
        tally.count(kind, "get_with_blocking miss + load", n, ONCE);
        let (n, v) = hashes(|| cache.get_with_blocking(Counted(1), || Ok(11)));
        assert_eq!(v, Ok(10));
        tally.count(kind, "get_with_blocking hit", n, ONCE);
    }
    tally.check();
}

#[test]
fn loading_cache_get_hashes_once() {
    let mut tally = Tally::default();
    let clock = ManualClock::new();
    let cache = ExpiringCache::builder()
        .time_to_live(secs(60))
        .clock(clock.clone())
        .build_with_loader(|key: &Counted| {
            let v = key.0 * 10;
            async move { Ok::<_, String>(v) }
        });
    let (n, v) = hashes(|| block_on(cache.get(Counted(1))));
    assert_eq!(v, Ok(10));
    tally.count("loading", "get miss + load", n, ONCE);
    let (n, v) = hashes(|| block_on(cache.get(Counted(1))));
    assert_eq!(v, Ok(10));
    tally.count("loading", "get hit", n, ONCE);
    tally.check();
}

#[test]
fn insert_hashes_once() {
    let mut tally = Tally::default();
    for (kind, _clock, cache) in caches() {
        let (n, ()) = hashes(|| cache.insert(Counted(1), 10));
        tally.count(kind, "insert of an absent key", n, ONCE);
        let (n, ()) = hashes(|| cache.insert(Counted(1), 11));
        tally.count(kind, "insert over a live value", n, ONCE);
        assert_eq!(cache.peek(&Counted(1)), Some(11));
    }
    tally.check();
}

#[test]
fn get_or_insert_with_hashes_once() {
    let mut tally = Tally::default();
    for (kind, _clock, cache) in caches() {
        let (n, v) = hashes(|| cache.get_or_insert_with(Counted(1), || 10));
        assert_eq!(v, 10);
        tally.count(kind, "get_or_insert_with of an absent key", n, ONCE);
        let (n, v) = hashes(|| cache.get_or_insert_with(Counted(1), || 11));
        assert_eq!(v, 10);
        tally.count(kind, "get_or_insert_with of a live value", n, ONCE);
    }
    tally.check();
}

#[test]
fn reads_hash_once() {
    let mut tally = Tally::default();
    for (kind, _clock, cache) in caches() {
        let (n, v) = hashes(|| cache.get_if_present(&Counted(1)));
        assert_eq!(v, None);
        tally.count(kind, "get_if_present miss", n, ONCE);
        cache.insert(Counted(1), 10);
        let (n, v) = hashes(|| cache.get_if_present(&Counted(1)));
        assert_eq!(v, Some(10));
        tally.count(kind, "get_if_present hit", n, ONCE);
        let (n, v) = hashes(|| cache.peek(&Counted(1)));
        assert_eq!(v, Some(10));
        tally.count(kind, "peek", n, ONCE);
        let (n, v) = hashes(|| cache.contains_key(&Counted(1)));
        assert!(v);
        tally.count(kind, "contains_key", n, ONCE);
    }
    tally.check();
}

#[test]
fn removals_hash_once() {
    let mut tally = Tally::default();
    for (kind, _clock, cache) in caches() {
        cache.insert(Counted(1), 10);
        let (n, removed) = hashes(|| cache.invalidate(&Counted(1)));
        assert!(removed);
        tally.count(kind, "invalidate of a present key", n, ONCE);
        let (n, removed) = hashes(|| cache.invalidate(&Counted(1)));
        assert!(!removed);
        tally.count(kind, "invalidate of an absent key", n, ONCE);
        cache.insert(Counted(1), 10);
        let (n, removed) = hashes(|| cache.invalidate_if(&Counted(1), |v| *v == 10));
        assert!(removed);
        tally.count(kind, "invalidate_if of a live value", n, ONCE);
        cache.insert(Counted(1), 11);
        let (n, removed) = hashes(|| cache.remove(&Counted(1)));
        assert_eq!(removed, Some(11));
        tally.count(kind, "remove of a live value", n, ONCE);
        let (n, removed) = hashes(|| cache.remove(&Counted(1)));
        assert_eq!(removed, None);
        tally.count(kind, "remove of an absent key", n, ONCE);
    }
    tally.check();
}

#[test]
fn expiry_driven_removals_hash_once() {
    let mut tally = Tally::default();
    for (kind, clock, cache) in caches() {
        // A read that finds the entry past its deadline reclaims it, then loads anew.
        cache.insert(Counted(1), 10);
        clock.advance(secs(60));
        let get = cache
            .get_with(Counted(1), || async { Ok(11) })
            .with_source();
        let (n, v) = hashes(|| block_on(get));
        assert_eq!(v, (Ok(11), Source::Loaded));
        tally.count(kind, "get_with of an expired entry + load", n, ONCE);
        // A probe that finds it past its deadline reclaims it.
        clock.advance(secs(60));
        let (n, v) = hashes(|| cache.get_if_present(&Counted(1)));
        assert_eq!(v, None);
        tally.count(kind, "get_if_present of an expired entry", n, ONCE);
        assert!(cache.is_empty());
        // An insert over an expired entry reclaims it (as expired) and stores anew.
        cache.insert(Counted(1), 12);
        clock.advance(secs(60));
        let (n, ()) = hashes(|| cache.insert(Counted(1), 13));
        tally.count(kind, "insert over an expired entry", n, ONCE);
        assert_eq!(cache.peek(&Counted(1)), Some(13));
        // Reclamation by the timer wheel: the timer keeps the key's hash, so the removal
        // hashes nothing at all.
        clock.advance(secs(60));
        let (n, removed) = hashes(|| cache.run_maintenance());
        assert_eq!(removed, 1);
        tally.count(kind, "run_maintenance reclaiming one entry", n, 0);
        assert!(cache.is_empty());
    }
    tally.check();
}

/// The hit path of a time-to-idle cache moves the deadline, and maintenance reschedules a
/// timer whose entry was renewed since: that rescheduling hashes nothing either.
#[test]
fn maintenance_that_reschedules_hashes_nothing() {
    let mut tally = Tally::default();
    let clock = ManualClock::new();
    let cache: ExpiringCache<Counted, u64, Infallible, RandomState, ManualClock> =
        ExpiringCache::builder()
            .time_to_idle(secs(60))
            .clock(clock.clone())
            .build();
    cache.insert(Counted(1), 10);
    clock.advance(secs(59));
    assert_eq!(cache.get_if_present(&Counted(1)), Some(10)); // renewed until 119 s
    clock.advance(secs(1));
    let (n, removed) = hashes(|| cache.run_maintenance());
    assert_eq!(removed, 0, "renewed: its timer is moved, not fired");
    tally.count("tti", "run_maintenance rescheduling one timer", n, 0);
    assert_eq!(cache.peek(&Counted(1)), Some(10));
    tally.check();
}

/// Refresh-ahead: a hit past the refresh interval starts a reload (polled at once here,
/// with no spawner, and ready at once), whose value replaces the entry. The refresh keeps
/// the hash of the read that started it, so the whole call hashes once.
#[test]
fn refresh_ahead_hashes_once() {
    let mut tally = Tally::default();
    let clock = ManualClock::new();
    let cache: Cache = ExpiringCache::builder()
        .time_to_live(secs(60))
        .refresh_after(secs(10))
        .clock(clock.clone())
        .build();
    cache.insert(Counted(1), 10);
    clock.advance(secs(10));
    let get = cache
        .get_with(Counted(1), || async { Ok(11) })
        .with_source();
    let (n, v) = hashes(|| block_on(get));
    assert_eq!(v, (Ok(10), Source::Hit), "the old value serves");
    assert_eq!(cache.stats().refreshes_ok, 1, "refreshed within the call");
    assert_eq!(cache.peek(&Counted(1)), Some(11));
    tally.count("refresh", "get_with hit + refresh", n, ONCE);
    clock.advance(secs(10));
    let (n, v) = hashes(|| cache.get_with_blocking(Counted(1), || Ok(12)));
    assert_eq!(v, Ok(11), "no cache-wide loader: no refresh");
    tally.count("refresh", "get_with_blocking hit, refresh due", n, ONCE);
    tally.check();
}

/// Negative caching: a cached error answers a load, and is no value to an insert-if-absent,
/// which removes it and stores its own.
#[test]
fn cached_errors_hash_once() {
    let mut tally = Tally::default();
    let clock = ManualClock::new();
    let cache: Cache = ExpiringCache::builder()
        .time_to_live(secs(60))
        .cache_errors_for(secs(5))
        .clock(clock.clone())
        .build();
    let get = cache.get_with(Counted(1), || async { Err("down".to_string()) });
    let (n, v) = hashes(|| block_on(get));
    assert!(v.is_err());
    tally.count("negative", "get_with miss + failed load, kept", n, ONCE);
    let get = cache.get_with(Counted(1), || async { Ok(10) });
    let (n, v) = hashes(|| block_on(get));
    assert!(v.is_err(), "the cached error answers");
    tally.count("negative", "get_with hit on a cached error", n, ONCE);
    let (n, v) = hashes(|| cache.get_or_insert_with(Counted(1), || 10));
    assert_eq!(v, 10);
    tally.count("negative", "get_or_insert_with over an error", n, ONCE);
    tally.check();
}
