//! The `tracing` feature (issue #12) on the expiring cache: its loads are the inner cache's
//! (one `load` span each), and an entry removed at its deadline is an `expired` event with
//! its key's hash, under a manual clock (nothing sleeps). The subscriber is deferred-cache's
//! test collector, included by path.

#![cfg(feature = "tracing")]
#![allow(clippy::std_instead_of_core)]

// Shared with deferred-cache's tests, which read the fields these do not.
#[allow(dead_code)]
#[path = "../../deferred-cache/tests/support/collector.rs"]
mod collector;

use std::{collections::hash_map::RandomState, hash::BuildHasher, time::Duration};

use collector::Collector;
use deferred_expiring::{ExpiringCache, ManualClock};
use futures::executor::block_on;
use tracing::Level;

type Cache = ExpiringCache<u64, u64, String, RandomState, ManualClock>;

fn cache(clock: &ManualClock, hasher: &RandomState) -> Cache {
    ExpiringCache::builder()
        .time_to_live(Duration::from_secs(10))
        .hasher(hasher.clone())
        .clock(clock.clone())
        .build()
}

#[test]
fn an_entry_reclaimed_at_its_deadline_is_an_expired_event() {
    let (clock, hasher) = (ManualClock::new(), RandomState::new());
    let cache = cache(&clock, &hasher);
    let collector = Collector::default();
    collector.run(|| {
        cache.insert(1, 10);
        cache.insert(2, 20);
        clock.advance(Duration::from_secs(10) - Duration::from_nanos(1));
        assert_eq!(cache.run_maintenance(), 0, "not due yet");
    });
    assert!(collector.events().is_empty(), "{:#?}", collector.events());
    collector.run(|| {
        clock.advance(Duration::from_nanos(1));
        assert_eq!(cache.run_maintenance(), 2);
    });
    let events = collector.events();
    assert_eq!(events.len(), 2, "{events:#?}");
    let mut got: Vec<&str> = events
        .iter()
        .map(|e| {
            assert_eq!(e.target, "deferred_cache");
            assert_eq!(e.level, Level::TRACE);
            assert_eq!(e.field("message"), Some("expired"));
            assert_eq!(e.field("cause"), Some("expired"));
            e.field("key_hash").unwrap()
        })
        .collect();
    let mut want = [
        hasher.hash_one(1u64).to_string(),
        hasher.hash_one(2u64).to_string(),
    ];
    got.sort_unstable();
    want.sort_unstable();
    assert_eq!(got, want);
    assert_eq!(cache.stats().cache.expired, 2);
}

#[test]
fn a_read_at_the_deadline_expires_the_entry_and_reloads_it() {
    let (clock, hasher) = (ManualClock::new(), RandomState::new());
    let cache = cache(&clock, &hasher);
    let collector = Collector::default();
    collector.run(|| {
        assert_eq!(block_on(cache.get_with(3, || async { Ok(30) })), Ok(30));
        clock.advance(Duration::from_secs(10));
        assert_eq!(block_on(cache.get_with(3, || async { Ok(31) })), Ok(31));
    });
    let hash = hasher.hash_one(3u64).to_string();
    let loads = collector.spans_named("load");
    assert_eq!(loads.len(), 2, "{loads:#?}");
    for load in &loads {
        assert_eq!(load.field("key_hash"), Some(hash.as_str()));
        assert_eq!(load.field("outcome"), Some("ok"));
    }
    let expired: Vec<_> = collector
        .events()
        .into_iter()
        .filter(|e| e.field("message") == Some("expired"))
        .collect();
    assert_eq!(expired.len(), 1, "{expired:#?}");
    assert_eq!(expired[0].field("key_hash"), Some(hash.as_str()));
}
