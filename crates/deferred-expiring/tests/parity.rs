//! What `ExpiringCache` gained to match `deferred_cache::Cache` (issue #12): `remove`,
//! `iter`, `retain` and `invalidate_entries_if`, each with expiry applied (an entry past
//! its deadline is absent), cached errors and loads in flight being no values. Time comes
//! from a `ManualClock`; nothing sleeps.

#![forbid(unsafe_code)]
#![allow(clippy::std_instead_of_core)]

use std::{
    collections::hash_map::RandomState,
    sync::{Arc, Mutex},
    time::Duration,
};

use deferred_expiring::{ExpiringBuilder, ExpiringCache, LoadError, ManualClock, RemovalCause};
use deferred_test_support::poll_once;
use futures::{channel::oneshot, executor::block_on};

type Cache = ExpiringCache<u32, u32, String, RandomState, ManualClock>;
type Log = Arc<Mutex<Vec<(u32, u32, RemovalCause)>>>;

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// A cache with a time-to-live of 10 s (and `more` applied), whose listener is logged.
fn logged(
    more: impl FnOnce(
        ExpiringBuilder<u32, u32, String, RandomState, ManualClock>,
    ) -> ExpiringBuilder<u32, u32, String, RandomState, ManualClock>,
) -> (ManualClock, Cache, Log) {
    let clock = ManualClock::new();
    let log = Log::default();
    let sink = Arc::clone(&log);
    let builder = ExpiringCache::builder()
        .time_to_live(secs(10))
        .clock(clock.clone())
        .eviction_listener(move |k: &u32, v: &u32, cause| {
            sink.lock().unwrap().push((*k, *v, cause))
        });
    (clock, more(builder).build(), log)
}

// ---------------------------------------------------------------------------------------
// remove
// ---------------------------------------------------------------------------------------

#[test]
fn remove_returns_the_live_value_and_is_told_as_explicit() {
    let (_clock, cache, log) = logged(|b| b);
    cache.insert(1, 10);
    assert_eq!(cache.remove(&1), Some(10));
    assert_eq!(cache.remove(&1), None);
    assert!(cache.is_empty());
    assert_eq!(cache.timers(), 0, "its timer was cancelled");
    assert_eq!(cache.stats().cache.invalidated, 1);
    assert_eq!(*log.lock().unwrap(), [(1, 10, RemovalCause::Explicit)]);
}

#[test]
fn remove_of_an_expired_entry_returns_none_and_reclaims_it_as_expired() {
    let (clock, cache, log) = logged(|b| b);
    cache.insert(1, 10);
    clock.advance(secs(10));
    assert_eq!(cache.remove(&1), None);
    assert!(cache.is_empty());
    let stats = cache.stats().cache;
    assert_eq!((stats.invalidated, stats.expired), (0, 1));
    assert_eq!(*log.lock().unwrap(), [(1, 10, RemovalCause::Expired)]);
}

#[test]
fn remove_of_a_cached_error_returns_none_and_removes_it() {
    let (_clock, cache, log) = logged(|b| b.cache_errors_for(secs(5)));
    let failed = block_on(cache.get_with(1, || async { Err("down".to_string()) }));
    assert!(matches!(failed, Err(LoadError::Failed(_))));
    assert_eq!(cache.len(), 1, "the error is cached");
    assert_eq!(cache.remove(&1), None);
    assert!(cache.is_empty());
    // The next read loads again instead of getting the cached error.
    assert_eq!(block_on(cache.get_with(1, || async { Ok(7) })), Ok(7));
    assert!(
        log.lock().unwrap().is_empty(),
        "an error is no value: nothing told"
    );
}

#[test]
fn remove_of_a_load_in_flight_returns_none_removes_it_and_its_callers_still_get_the_value() {
    let (_clock, cache, _log) = logged(|b| b);
    let (go, gate) = oneshot::channel::<()>();
    let mut waiting = cache.get_with(1, move || async move {
        gate.await.ok();
        Ok(7)
    });
    assert!(poll_once(&mut waiting).is_pending());
    assert_eq!(cache.len(), 1);
    assert_eq!(cache.remove(&1), None);
    assert!(cache.is_empty(), "the load was removed");
    go.send(()).unwrap();
    assert_eq!(block_on(waiting), Ok(7), "its caller still gets its value");
    assert_eq!(cache.peek(&1), None, "which is not stored");
    assert_eq!(block_on(cache.get_with(1, || async { Ok(8) })), Ok(8));
}

// ---------------------------------------------------------------------------------------
// iter
// ---------------------------------------------------------------------------------------

#[test]
fn iter_yields_the_live_values_only() {
    let (clock, cache, _log) = logged(|b| b.cache_errors_for(secs(100)));
    cache.insert(1, 10);
    clock.advance(secs(5));
    cache.insert(2, 20);
    cache.insert(3, 30);
    let failed = block_on(cache.get_with(4, || async { Err("down".to_string()) }));
    assert!(failed.is_err());
    let (_go, gate) = oneshot::channel::<()>();
    let mut loading = cache.get_with(5, move || async move {
        gate.await.ok();
        Ok(50)
    });
    assert!(poll_once(&mut loading).is_pending());

    let mut all: Vec<(u32, u32)> = cache.iter().collect();
    all.sort_unstable();
    assert_eq!(all, [(1, 10), (2, 20), (3, 30)], "no cached error, no load");

    clock.advance(secs(5)); // 1 expires; not reclaimed yet by anything but `iter`'s tend
    let iter = cache.iter();
    assert_eq!(iter.len(), 2);
    let mut all: Vec<(u32, u32)> = iter.collect();
    all.sort_unstable();
    assert_eq!(all, [(2, 20), (3, 30)]);
    assert_eq!(cache.stats().cache.hits, 0, "iter counts no reads");
}

#[test]
fn iter_leaves_out_an_entry_past_its_deadline_before_it_is_reclaimed() {
    let (clock, cache, _log) = logged(|b| b);
    cache.insert(1, 10);
    // Inside the deadline's tick: the timer is not due yet, so nothing reclaims it.
    clock.advance(secs(10));
    assert_eq!(cache.len(), 1);
    assert_eq!(cache.iter().count(), 0);
}

#[test]
fn iter_does_not_renew_time_to_idle() {
    let clock = ManualClock::new();
    let cache: ExpiringCache<u32, u32, String, RandomState, ManualClock> = ExpiringCache::builder()
        .time_to_idle(secs(10))
        .clock(clock.clone())
        .build();
    cache.insert(1, 10);
    clock.advance(secs(9));
    assert_eq!(cache.iter().count(), 1);
    clock.advance(secs(1));
    assert_eq!(cache.iter().count(), 0, "iter renewed nothing");
}

// ---------------------------------------------------------------------------------------
// retain / invalidate_entries_if
// ---------------------------------------------------------------------------------------

#[test]
fn invalidate_entries_if_removes_live_values_only_and_never_asks_about_expired_ones() {
    let (clock, cache, log) = logged(|b| b.cache_errors_for(secs(100)));
    cache.insert(1, 10);
    clock.advance(secs(5));
    cache.insert(2, 20);
    cache.insert(3, 30);
    let failed = block_on(cache.get_with(4, || async { Err("down".to_string()) }));
    assert!(failed.is_err());
    clock.advance(secs(5)); // 1 expires

    let mut asked = Vec::new();
    let removed = cache.invalidate_entries_if(|k, v| {
        asked.push(*k);
        *v >= 20
    });
    asked.sort_unstable();
    assert_eq!(asked, [2, 3], "never an expired entry or a cached error");
    assert_eq!(removed, 2);
    assert_eq!(cache.stats().cache.invalidated, 2);
    assert_eq!(cache.iter().count(), 0);

    // The expired one leaves by reclamation, as expired; the cached error stays.
    cache.run_maintenance();
    assert_eq!(cache.len(), 1);
    let mut told = log.lock().unwrap().clone();
    told.sort_unstable_by_key(|t| t.0);
    assert_eq!(
        told,
        [
            (1, 10, RemovalCause::Expired),
            (2, 20, RemovalCause::Explicit),
            (3, 30, RemovalCause::Explicit),
        ]
    );
    assert!(matches!(
        block_on(cache.get_with(4, || async { Ok(4) })),
        Err(LoadError::Failed(_))
    ));
}

#[test]
fn retain_keeps_what_keep_says_and_leaves_loads_in_flight() {
    let (_clock, cache, log) = logged(|b| b);
    for k in 0..6 {
        cache.insert(k, k * 10);
    }
    let (go, gate) = oneshot::channel::<()>();
    let mut loading = cache.get_with(9, move || async move {
        gate.await.ok();
        Ok(90)
    });
    assert!(poll_once(&mut loading).is_pending());

    cache.retain(|k, _| k % 2 == 0);
    let mut left: Vec<(u32, u32)> = cache.iter().collect();
    left.sort_unstable();
    assert_eq!(left, [(0, 0), (2, 20), (4, 40)]);
    assert_eq!(cache.len(), 4, "three values and the load");
    assert_eq!(cache.stats().cache.invalidated, 3);
    assert_eq!(log.lock().unwrap().len(), 3);

    go.send(()).unwrap();
    assert_eq!(block_on(loading), Ok(90));
    assert_eq!(
        cache.peek(&9),
        Some(90),
        "the load was kept and stored its value"
    );
}
