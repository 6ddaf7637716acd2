//! The everyday API of issue #12: the named `GetWith` future and its `with_source`, the
//! probes (`contains_key`, `peek_with`), `capacity` / `weighted_size`, `invalidate_if`,
//! the re-exports, and `Clone`. Expiry semantics apply to each: an entry past its deadline
//! is absent. Time comes from a `ManualClock`; nothing sleeps.

#![forbid(unsafe_code)]
#![allow(clippy::std_instead_of_core)]

mod support;

use std::{
    convert::Infallible,
    panic::{catch_unwind, AssertUnwindSafe},
    rc::Rc,
    sync::{
        atomic::{AtomicUsize, Ordering::SeqCst},
        Arc,
    },
    task::Poll,
    time::Duration,
};

use deferred_expiring::{ExpiringCache, GetWith, LoadError, ManualClock, Source, SystemClock};
use deferred_test_support::poll_once;
use futures::{channel::oneshot, executor::block_on, future::FusedFuture};
use support::{secs, ttl_cache};

// ---------------------------------------------------------------------------------------
// GetWith
// ---------------------------------------------------------------------------------------

/// `with_source` says where each outcome came from: this caller's load, a load it joined,
/// a live value, a reload after expiry, and a cached error (a hit, with no loader call).
#[test]
fn with_source_tells_loaded_joined_hit_and_expired() {
    let (clock, cache) = ttl_cache::<Infallible>(10);
    let calls = AtomicUsize::new(0);
    let (go, gate) = oneshot::channel::<()>();
    let mut a = cache
        .get_with(1, || {
            calls.fetch_add(1, SeqCst);
            async move {
                gate.await.ok();
                Ok(1)
            }
        })
        .with_source();
    let mut b = cache
        .get_with(1, || {
            calls.fetch_add(1, SeqCst);
            async { Ok(2) }
        })
        .with_source();
    assert!(poll_once(&mut a).is_pending());
    assert!(poll_once(&mut b).is_pending());
    go.send(()).unwrap();
    assert_eq!(poll_once(&mut b), Poll::Ready((Ok(1), Source::Joined)));
    assert_eq!(poll_once(&mut a), Poll::Ready((Ok(1), Source::Loaded)));
    assert_eq!(
        calls.load(SeqCst),
        1,
        "only the first caller's loader was called"
    );
    let hit = block_on(cache.get_with(1, || async { Ok(3) }).with_source());
    assert_eq!(hit, (Ok(1), Source::Hit));
    clock.advance(secs(10));
    let reloaded = block_on(cache.get_with(1, || async { Ok(4) }).with_source());
    assert_eq!(reloaded, (Ok(4), Source::Loaded));

    let negative: ExpiringCache<u32, u32, String, _, _> = ExpiringCache::builder()
        .cache_errors_for(secs(5))
        .clock(clock.clone())
        .build();
    let first = block_on(
        negative
            .get_with(1, || async { Err("down".to_string()) })
            .with_source(),
    );
    assert!(matches!(first, (Err(LoadError::Failed(_)), Source::Loaded)));
    let cached = block_on(negative.get_with(1, || async { Ok(1) }).with_source());
    assert!(matches!(cached, (Err(LoadError::Failed(e)), Source::Hit) if *e == "down"));
}

/// The stalled caller: the one whose loader runs is polled once and never again; a caller
/// that joined drives the load to its end alone.
#[test]
fn a_stalled_loader_caller_holds_no_one_up() {
    let (_clock, cache) = ttl_cache::<Infallible>(10);
    let (go, gate) = oneshot::channel::<()>();
    let mut stalled = cache.get_with(1, move || async move {
        gate.await.ok();
        Ok(7)
    });
    assert!(poll_once(&mut stalled).is_pending());
    let joined = cache.get_with(1, || async { Ok(8) });
    go.send(()).unwrap();
    assert_eq!(block_on(joined), Ok(7));
    assert_eq!(cache.peek(&1), Some(7));
    drop(stalled);
    assert_eq!(cache.stats().cache.loads_ok, 1);
}

/// A loader closure that panics when called (not its future) unwinds out of that caller's
/// poll, leaves no entry behind, and the next call loads.
#[test]
fn a_loader_that_panics_when_called_leaves_nothing_behind() {
    let (_clock, cache) = ttl_cache::<Infallible>(10);
    let panicked = catch_unwind(AssertUnwindSafe(|| {
        let mut get = cache.get_with(1, || -> std::future::Ready<Result<u32, Infallible>> {
            panic!("loader closure")
        });
        poll_once(&mut get)
    }));
    assert!(panicked.is_err());
    assert!(cache.is_empty(), "the claimed load went with its caller");
    assert_eq!(block_on(cache.get_with(1, || async { Ok(2) })), Ok(2));
}

/// Callers that joined a load whose loader closure panicked after the load was claimed (the
/// panicking caller kept alive, then dropped) are not stranded: the load fails as a
/// panicking load does (the panic unwinds out of the poll that drives it, the other callers
/// get `LoadError::Panicked`), and the cache stays usable.
#[test]
fn callers_joined_to_an_abandoned_load_are_not_stranded() {
    let (_clock, cache) = ttl_cache::<Infallible>(10);
    let mut first = cache.get_with(1, || -> std::future::Ready<Result<u32, Infallible>> {
        panic!("loader closure")
    });
    assert!(catch_unwind(AssertUnwindSafe(|| poll_once(&mut first))).is_err());
    // `first` is alive: its claimed load waits for the handover.
    let mut driver = cache.get_with(1, || async { Ok(3) }).with_source();
    let mut other = cache.get_with(1, || async { Ok(3) }).with_source();
    assert!(poll_once(&mut driver).is_pending());
    assert!(poll_once(&mut other).is_pending());
    drop(first); // abandons the handover
    let driven = catch_unwind(AssertUnwindSafe(|| poll_once(&mut driver)));
    assert!(
        driven.is_err(),
        "the abandoned load's panic unwinds out of its driver"
    );
    assert_eq!(
        poll_once(&mut other),
        Poll::Ready((Err(LoadError::Panicked), Source::Joined))
    );
    assert!(cache.is_empty());
    assert_eq!(block_on(cache.get_with(1, || async { Ok(4) })), Ok(4));
}

/// The future is fused and says what it is doing.
#[test]
fn get_with_is_fused_and_debug() {
    let (_clock, cache) = ttl_cache::<Infallible>(10);
    let mut get = cache.get_with(1, || async { Ok(1) });
    assert!(!get.is_terminated());
    assert!(format!("{get:?}").contains("start"));
    assert_eq!(poll_once(&mut get), Poll::Ready(Ok(1)));
    assert!(get.is_terminated());
    assert!(format!("{get:?}").contains("done"));
    let with_source = cache.get_with(1, || async { Ok(1) }).with_source();
    assert!(format!("{with_source:?}").starts_with("WithSource"));
}

/// `GetWith` is `Send` when its parts are, and spawnable on a multi-threaded runtime; a
/// loader that is not `Send` is still accepted (its future then is not `Send`).
#[test]
fn get_with_is_send_when_its_parts_are() {
    fn send<T: Send>(_: &T) {}
    let cache: Arc<ExpiringCache<u32, u32, String, _, SystemClock>> =
        Arc::new(ExpiringCache::builder().time_to_live(secs(60)).build());
    let get: GetWith<'_, u32, u32, String, _, SystemClock, _> =
        cache.get_with(1, || async { Ok(1) });
    send(&get);
    send(&get.with_source());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let spawned = Arc::clone(&cache);
    let out = rt.block_on(async move {
        tokio::spawn(async move { spawned.get_with(2, || async { Ok(20) }).await })
            .await
            .unwrap()
    });
    assert_eq!(out, Ok(20));

    let not_send = Rc::new(5);
    let local = block_on(cache.get_with(3, move || {
        let v = *not_send;
        async move { Ok(v) }
    }));
    assert_eq!(local, Ok(5));
}

// ---------------------------------------------------------------------------------------
// Probes, size, conditional invalidation
// ---------------------------------------------------------------------------------------

/// `contains_key` and `peek_with` see a value before its deadline only: absent from the
/// deadline on (not one nanosecond before), before reclamation too; a cached error and a
/// load in flight are no value; neither counts a read nor renews under time-to-idle.
#[test]
fn probes_see_live_values_only_and_renew_nothing() {
    let clock = ManualClock::new();
    let cache: ExpiringCache<u32, String, String, _, _> = ExpiringCache::builder()
        .time_to_idle(secs(10))
        .cache_errors_for(secs(5))
        .clock(clock.clone())
        .build();
    cache.insert(1, "one".to_string());
    clock.advance(secs(10) - Duration::from_nanos(1));
    assert!(cache.contains_key(&1));
    assert_eq!(cache.peek_with(&1, |s| s.len()), Some(3));
    clock.advance(Duration::from_nanos(1));
    // The probes renewed nothing: the idle deadline is where the insert set it.
    assert!(!cache.contains_key(&1));
    assert_eq!(cache.peek_with(&1, |s| s.len()), None);
    assert_eq!(cache.len(), 1, "expired, not reclaimed yet");

    let failed = block_on(cache.get_with(2, || async { Err("down".to_string()) }));
    assert!(matches!(failed, Err(LoadError::Failed(_))));
    assert!(!cache.contains_key(&2), "a cached error is no value");
    assert_eq!(cache.peek_with(&2, |_| ()), None);

    let (go, gate) = oneshot::channel::<()>();
    let mut loading = cache.get_with(3, move || async move {
        gate.await.ok();
        Ok("three".to_string())
    });
    assert!(poll_once(&mut loading).is_pending());
    assert!(!cache.contains_key(&3), "a load in flight is no value");
    assert_eq!(cache.peek_with(&3, |_| ()), None);
    go.send(()).unwrap();
    assert_eq!(
        poll_once(&mut loading),
        Poll::Ready(Ok("three".to_string()))
    );
    assert!(cache.contains_key(&3));

    let stats = cache.stats().cache;
    assert_eq!(
        (stats.hits, stats.misses),
        (0, 2),
        "only the two loads counted"
    );
}

/// `capacity` is the configured bound; `weighted_size` is the weight stored, expired but
/// unreclaimed entries included, a cached error weighing 1; both `None` unbounded.
#[test]
fn capacity_and_weighted_size() {
    let (_clock, unbounded) = ttl_cache::<Infallible>(10);
    assert_eq!(
        (unbounded.capacity(), unbounded.weighted_size()),
        (None, None)
    );

    let clock = ManualClock::new();
    let cache: ExpiringCache<u32, String, String, _, _> = ExpiringCache::builder()
        .max_capacity(1_000)
        .weigher(|_, v: &String| v.len() as u32)
        .time_to_live(secs(10))
        .cache_errors_for(secs(20))
        .clock(clock.clone())
        .build();
    assert_eq!(
        (cache.capacity(), cache.weighted_size()),
        (Some(1_000), Some(0))
    );
    cache.insert(1, "abc".to_string());
    cache.insert(2, "defgh".to_string());
    assert_eq!(cache.weighted_size(), Some(8));
    let failed = block_on(cache.get_with(3, || async { Err("down".to_string()) }));
    assert!(failed.is_err());
    assert_eq!(cache.weighted_size(), Some(9), "a cached error weighs 1");
    clock.advance(secs(10));
    assert_eq!(
        cache.weighted_size(),
        Some(9),
        "expired values still stored"
    );
    assert_eq!(cache.run_maintenance(), 2);
    assert_eq!(cache.weighted_size(), Some(1));
    assert!(cache.invalidate(&3));
    assert_eq!(cache.weighted_size(), Some(0));
}

/// `invalidate_if` removes a live value only when the predicate says so, as an explicit
/// removal; an expired entry is absent (the predicate is not called) and is reclaimed as
/// expired; a cached error and a load in flight are never removed by it.
#[test]
fn invalidate_if_removes_live_values_and_reclaims_expired_ones() {
    let clock = ManualClock::new();
    let heard = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = Arc::clone(&heard);
    let cache: ExpiringCache<u32, u32, String, _, _> = ExpiringCache::builder()
        .time_to_live(secs(10))
        .cache_errors_for(secs(5))
        .eviction_listener(move |k: &u32, v: &u32, cause| {
            log.lock().unwrap().push((*k, *v, cause));
        })
        .clock(clock.clone())
        .build();
    cache.insert(1, 10);
    cache.insert(2, 20);
    assert!(!cache.invalidate_if(&1, |v| *v == 11));
    assert!(cache.contains_key(&1));
    assert!(cache.invalidate_if(&1, |v| *v == 10));
    assert!(!cache.contains_key(&1));
    assert!(!cache.invalidate_if(&1, |_| true), "absent");

    let failed = block_on(cache.get_with(3, || async { Err("down".to_string()) }));
    assert!(failed.is_err());
    let called = AtomicUsize::new(0);
    assert!(!cache.invalidate_if(&3, |_| {
        called.fetch_add(1, SeqCst);
        true
    }));
    assert_eq!(called.load(SeqCst), 0, "a cached error is no value");
    assert_eq!(cache.len(), 2);

    clock.advance(secs(10));
    assert!(!cache.invalidate_if(&2, |_| {
        called.fetch_add(1, SeqCst);
        true
    }));
    assert_eq!(called.load(SeqCst), 0, "an expired value is absent");
    assert!(!cache.contains_key(&2));

    let (go, gate) = oneshot::channel::<()>();
    let mut loading = cache.get_with(4, move || async move {
        gate.await.ok();
        Ok(40)
    });
    assert!(poll_once(&mut loading).is_pending());
    assert!(
        !cache.invalidate_if(&4, |_| true),
        "a load in flight is no value"
    );
    go.send(()).unwrap();
    assert_eq!(poll_once(&mut loading), Poll::Ready(Ok(40)));
    assert_eq!(cache.peek(&4), Some(40));

    use deferred_expiring::RemovalCause::{Expired, Explicit};
    let heard = heard.lock().unwrap().clone();
    assert_eq!(heard, vec![(1, 10, Explicit), (2, 20, Expired)]);
    let stats = cache.stats().cache;
    assert_eq!(
        (stats.invalidated, stats.expired),
        (1, 2),
        "key 2, and the error of key 3"
    );
}

// ---------------------------------------------------------------------------------------
// Clone
// ---------------------------------------------------------------------------------------

/// Clones are handles on one cache: what one writes, loads or invalidates the others see,
/// loads stay single-flight across handles, and the counters are shared.
#[test]
fn clones_share_one_cache() {
    let (clock, cache) = ttl_cache::<Infallible>(10);
    let other = cache.clone();
    cache.insert(1, 10);
    assert_eq!(other.peek(&1), Some(10));
    let (go, gate) = oneshot::channel::<()>();
    let mut a = cache
        .get_with(2, move || async move {
            gate.await.ok();
            Ok(20)
        })
        .with_source();
    let mut b = other.get_with(2, || async { Ok(21) }).with_source();
    assert!(poll_once(&mut a).is_pending());
    assert!(poll_once(&mut b).is_pending());
    go.send(()).unwrap();
    assert_eq!(poll_once(&mut b), Poll::Ready((Ok(20), Source::Joined)));
    assert_eq!(poll_once(&mut a), Poll::Ready((Ok(20), Source::Loaded)));
    drop((a, b));
    assert!(other.invalidate(&1));
    assert!(!cache.contains_key(&1));
    clock.advance(secs(10));
    assert!(!other.contains_key(&2), "one clock, one deadline");
    assert_eq!(cache.stats(), other.stats());
    assert_eq!(cache.stats().cache.loads_ok, 1);
    drop(cache);
    other.insert(3, 30);
    assert_eq!(other.peek(&3), Some(30), "the last handle keeps the cache");

    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let loading = ExpiringCache::builder()
        .clock(clock.clone())
        .build_with_loader(move |k: &u32| {
            counter.fetch_add(1, SeqCst);
            let k = *k;
            async move { Ok::<_, Infallible>(k + 1) }
        });
    let handle = loading.clone();
    assert_eq!(block_on(handle.get(1)), Ok(2));
    assert_eq!(block_on(loading.get(1)).map(|v| v * 10), Ok(20));
    assert_eq!(calls.load(SeqCst), 1, "one load for both handles");
}
