//! Loom models of the expiring layer's races: `cargo xtask test-loom`.
//!
//! The clock, the entries' deadlines and refresh flags, the timer wheel's lock, and
//! everything beneath (the inner cache's map locks and cells) come through loom. Without
//! `--cfg loom` each model runs once on std threads (`deferred_test_support::loom`), a plain
//! test.
#![allow(clippy::std_instead_of_core)]

use std::time::Duration;

use deferred_expiring::{ExpiringCache, ExpiringRef, ManualClock, TICK};
use deferred_test_support::loom::{self, future::block_on, sync::Arc, thread};
use deferred_test_support::FixedHasher;

type C = ExpiringCache<u8, u32, &'static str, FixedHasher, ManualClock>;

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Renewal against expiry: a reader renews an entry (time-to-idle) just before its
/// deadline while another thread moves the clock past it and reclaims. The reader's
/// renewal and the reclaimer's check-and-remove are atomic with respect to each other:
/// a reader that got the value renewed it, so the entry stays (with a timer for its new
/// deadline); a reader that got nothing saw it expired, and the entry is gone.
#[test]
fn renewal_races_expiry() {
    loom::model(|| {
        let clock = ManualClock::new();
        let cache: Arc<C> = Arc::new(
            ExpiringCache::builder()
                .hasher(FixedHasher::default())
                .clock(clock.clone())
                .time_to_idle(secs(10))
                .build(),
        );
        cache.insert(1, 7);
        clock.advance(secs(9));
        let reader = {
            let cache = Arc::clone(&cache);
            thread::spawn(move || cache.get_if_present(&1))
        };
        clock.advance(secs(1) + TICK);
        cache.run_maintenance();
        let read = reader.join().unwrap();
        cache.run_maintenance();
        match read {
            Some(v) => {
                assert_eq!(v, 7);
                assert_eq!(cache.peek(&1), Some(7), "renewed, yet removed");
                assert_eq!(cache.timers(), 1, "no timer for the renewed deadline");
            }
            None => {
                assert!(cache.is_empty(), "expired, yet kept");
                assert_eq!(cache.stats().cache.expired, 1);
            }
        }
    });
}

/// Refresh against write: a reader past the refresh interval starts a reload (driven at
/// once, its loader ready) while another thread writes the key. Whatever the order, the
/// write wins: the refresh's value never replaces it (it may land before the write, which
/// then replaces it in turn).
#[test]
fn refresh_races_write() {
    loom::model(|| {
        let clock = ManualClock::new();
        let cache: Arc<C> = Arc::new(
            ExpiringCache::builder()
                .hasher(FixedHasher::default())
                .clock(clock.clone())
                .refresh_after(secs(1))
                .build(),
        );
        cache.insert(1, 1);
        clock.advance(secs(1));
        let reader = {
            let cache = Arc::clone(&cache);
            thread::spawn(move || block_on(cache.get_with(1, || async { Ok(2) })))
        };
        cache.insert(1, 3);
        let read = reader.join().unwrap();
        assert!(matches!(read, Ok(1) | Ok(3)), "{read:?}");
        assert_eq!(cache.peek(&1), Some(3), "the refresh overwrote the write");
        // Every refresh ended: stored before the write came, or dropped after.
        let stats = cache.stats();
        assert_eq!(
            stats.refreshes_started,
            stats.refreshes_ok + stats.refreshes_discarded,
            "{stats:?}"
        );
        assert_eq!(stats.refreshes_failed, 0);
    });
}

/// An `ExpiringRef` use racing its expiry: a use that starts holds the ref, and the
/// countdown restarts at its end; a use refused means the ref had expired for good.
#[test]
fn expiring_ref_use_races_expiry() {
    loom::model(|| {
        let clock = ManualClock::new();
        let r = Arc::new(ExpiringRef::timed_with_clock(5u8, secs(10), clock.clone()));
        let user = {
            let r = Arc::clone(&r);
            thread::spawn(move || r.with(|v| *v))
        };
        clock.advance(secs(10));
        let expired_now = r.is_expired();
        let used = user.join().unwrap();
        match used {
            // Used at 0 s or 10 s: at 10 s only if no one had seen it expired first.
            Some(v) => assert_eq!(v, 5),
            None => assert!(expired_now),
        }
        if used.is_some() && !expired_now {
            // The use ended at 10 s at the latest: the ref lives to 20 s at most.
            clock.advance(secs(10));
            assert!(r.is_expired());
        }
    });
}
