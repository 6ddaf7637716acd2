//! The calls of issue #12 that `deferred-cache` had and the expiring cache lacked:
//! `optionally_get_with` (a loader that may find nothing), `get_or_insert_with`
//! (synchronous insert-if-absent) and `get_with_blocking` (single flight for plain
//! threads). Expiry semantics apply to each: a value stored gets its deadline from the
//! policy, and an entry past its deadline is absent. Time comes from a `ManualClock`;
//! ordering comes from gates, barriers and the cache's own counters; nothing sleeps.

#![forbid(unsafe_code)]
#![allow(clippy::std_instead_of_core)]

mod support;

use std::{
    convert::Infallible,
    panic::{catch_unwind, AssertUnwindSafe},
    rc::Rc,
    sync::{
        atomic::{AtomicUsize, Ordering::SeqCst},
        Arc, Barrier,
    },
    task::Poll,
    thread,
    time::{Duration, Instant},
};

use deferred_expiring::{
    ExpiringCache, Expiry, LoadError, ManualClock, OptionallyGetWith, RemovalCause, Source,
    SystemClock,
};
use deferred_test_support::poll_once;
use futures::{channel::oneshot, executor::block_on, future::FusedFuture};
use support::{secs, ttl_cache, Cache};

/// Waits (yielding) until `done` says yes; the deadline only bounds a hang, it orders
/// nothing.
fn until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::yield_now();
    }
}

// ---------------------------------------------------------------------------------------
// optionally_get_with
// ---------------------------------------------------------------------------------------

/// A load that finds nothing reaches every caller waiting on it: `Ok(None)` to the optional
/// callers, `NotFound` to a `get_with` caller (which cannot return `None`); one loader
/// ran, nothing is cached, and the next read loads again.
#[test]
fn optional_none_reaches_every_waiter_and_is_not_cached() {
    let (_clock, cache) = ttl_cache::<String>(10);
    let runs = AtomicUsize::new(0);
    let (go, gate) = oneshot::channel::<()>();
    let mut a = cache.optionally_get_with(1, || {
        runs.fetch_add(1, SeqCst);
        async move {
            gate.await.ok();
            None
        }
    });
    let mut b = cache.optionally_get_with(1, || {
        runs.fetch_add(1, SeqCst);
        async { Some(2) }
    });
    let mut plain = cache.get_with(1, || async { Ok(3) }).with_source();
    assert!(poll_once(&mut a).is_pending());
    assert!(poll_once(&mut b).is_pending());
    assert!(poll_once(&mut plain).is_pending());
    go.send(()).unwrap();
    assert_eq!(poll_once(&mut b), Poll::Ready(Ok(None)));
    assert_eq!(poll_once(&mut a), Poll::Ready(Ok(None)));
    assert_eq!(
        poll_once(&mut plain),
        Poll::Ready((Err(LoadError::NotFound), Source::Joined))
    );
    assert_eq!(runs.load(SeqCst), 1, "single flight broke");
    assert!(cache.is_empty(), "`None` was cached");
    assert_eq!(cache.timers(), 0, "`None` left a timer behind");
    let stats = cache.stats().cache;
    assert_eq!(
        (
            stats.loads_empty,
            stats.loads_ok,
            stats.misses,
            stats.coalesced
        ),
        (1, 0, 3, 2)
    );
    // Not cached: the next read loads.
    let got = block_on(cache.optionally_get_with(1, || async { Some(4) }));
    assert_eq!(got, Ok(Some(4)));
}

/// A value found is cached with the policy's deadline (time-to-live here): a hit until
/// then (no loader call), absent at the deadline, and loaded again.
#[test]
fn optional_some_is_cached_with_its_ttl_and_expires() {
    let (clock, cache) = ttl_cache::<String>(10);
    let got = block_on(cache.optionally_get_with(1, || async { Some(10) }));
    assert_eq!(got, Ok(Some(10)));
    assert_eq!(cache.timers(), 1);
    clock.advance(secs(9));
    let hit = block_on(cache.optionally_get_with(1, || async { unreachable!("a hit") }));
    assert_eq!(hit, Ok(Some(10)));
    clock.advance(secs(1));
    assert_eq!(cache.peek(&1), None, "visible at its deadline");
    let again = block_on(cache.optionally_get_with(1, || async { Some(11) }));
    assert_eq!(again, Ok(Some(11)));
    // After expiry the optional loader may find nothing: the expired value is gone, and
    // nothing takes its place.
    clock.advance(secs(10));
    let gone = block_on(cache.optionally_get_with(1, || async { None }));
    assert_eq!(gone, Ok(None));
    assert!(cache.is_empty());
    let stats = cache.stats().cache;
    assert_eq!(
        (stats.hits, stats.loads_ok, stats.loads_empty, stats.expired),
        (1, 2, 1, 2)
    );
}

/// An optional caller that joins a `get_with` load gets its outcome: the value, or the
/// shared error (not kept without negative caching).
#[test]
fn optional_callers_join_plain_loads() {
    let (_clock, cache) = ttl_cache::<String>(10);
    let (go, gate) = oneshot::channel::<()>();
    let mut plain = cache.get_with(1, move || async move {
        gate.await.ok();
        Err("down".to_string())
    });
    let mut optional = cache.optionally_get_with(1, || async { Some(1) });
    assert!(poll_once(&mut plain).is_pending());
    assert!(poll_once(&mut optional).is_pending());
    go.send(()).unwrap();
    let (Poll::Ready(Err(LoadError::Failed(x))), Poll::Ready(Err(LoadError::Failed(y)))) =
        (poll_once(&mut plain), poll_once(&mut optional))
    else {
        panic!("both callers get the load's error");
    };
    assert!(Arc::ptr_eq(&x, &y) && *x == "down");
    assert!(cache.is_empty(), "the error was kept");
}

/// Under negative caching a cached error answers an optional read too, until its own
/// deadline; then the optional loader runs.
#[test]
fn optional_reads_see_a_cached_error_until_it_expires() {
    let clock = ManualClock::new();
    let cache: Cache<String> = ExpiringCache::builder()
        .time_to_live(secs(60))
        .cache_errors_for(secs(5))
        .clock(clock.clone())
        .build();
    let failed = block_on(cache.get_with(1, || async { Err("down".to_string()) }));
    assert!(matches!(failed, Err(LoadError::Failed(_))));
    let cached = block_on(cache.optionally_get_with(1, || async { unreachable!("cached") }));
    assert!(matches!(cached, Err(LoadError::Failed(e)) if *e == "down"));
    clock.advance(secs(5));
    let loaded = block_on(cache.optionally_get_with(1, || async { Some(7) }));
    assert_eq!(loaded, Ok(Some(7)));
    assert_eq!(cache.stats().negative_hits, 1);
}

/// A refresh that falls due on an optional read starts with its loader; one that finds
/// nothing counts as failed, and the old value stays until its deadline.
#[test]
fn optional_refresh_that_finds_nothing_keeps_the_old_value() {
    let clock = ManualClock::new();
    let cache: Cache = ExpiringCache::builder()
        .time_to_live(secs(60))
        .refresh_after(secs(10))
        .clock(clock.clone())
        .build();
    assert_eq!(
        block_on(cache.optionally_get_with(1, || async { Some(1) })),
        Ok(Some(1))
    );
    clock.advance(secs(10));
    let old = block_on(cache.optionally_get_with(1, || async { None }));
    assert_eq!(old, Ok(Some(1)), "a hit serves the old value");
    cache.run_maintenance(); // polls the reload, which has no spawner
    assert_eq!(cache.peek(&1), Some(1));
    let stats = cache.stats();
    assert_eq!((stats.refreshes_started, stats.refreshes_failed), (1, 1));
    clock.advance(secs(10));
    let old = block_on(cache.optionally_get_with(1, || async { Some(2) }));
    assert_eq!(old, Ok(Some(1)));
    cache.run_maintenance();
    assert_eq!(cache.peek(&1), Some(2), "the next refresh stores its value");
}

/// The future is fused and says what it is doing.
#[test]
fn optionally_get_with_is_fused_and_debug() {
    let (_clock, cache) = ttl_cache::<Infallible>(10);
    let mut get = cache.optionally_get_with(1, || async { Some(1) });
    assert!(!get.is_terminated());
    assert!(format!("{get:?}").starts_with("OptionallyGetWith"));
    assert_eq!(poll_once(&mut get), Poll::Ready(Ok(Some(1))));
    assert!(get.is_terminated());
    assert!(format!("{get:?}").contains("done"));
}

/// `OptionallyGetWith` is `Send` when its parts are, and spawnable on a multi-threaded
/// runtime; a loader that is not `Send` is still accepted (its future then is not `Send`).
#[test]
fn optionally_get_with_is_send_when_its_parts_are() {
    fn send<T: Send>(_: &T) {}
    let cache: Arc<ExpiringCache<u32, u32, String, _, SystemClock>> =
        Arc::new(ExpiringCache::builder().time_to_live(secs(60)).build());
    let get: OptionallyGetWith<'_, u32, u32, String, _, SystemClock, _> =
        cache.optionally_get_with(1, || async { Some(1) });
    send(&get);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let spawned = Arc::clone(&cache);
    let out = rt.block_on(async move {
        tokio::spawn(async move { spawned.optionally_get_with(2, || async { Some(20) }).await })
            .await
            .unwrap()
    });
    assert_eq!(out, Ok(Some(20)));

    let not_send = Rc::new(5);
    let local = block_on(cache.optionally_get_with(3, move || {
        let v = *not_send;
        async move { Some(v) }
    }));
    assert_eq!(local, Ok(Some(5)));
}

// ---------------------------------------------------------------------------------------
// get_or_insert_with
// ---------------------------------------------------------------------------------------

/// Absent: `make` runs once and its value is stored with the time-to-live. Present: the
/// stored value, `make` not called. Expired: absent, so inserted anew (the old value
/// reclaimed as expired). Hits and misses are counted as `get_with` counts them.
#[test]
fn get_or_insert_with_inserts_once_returns_existing_and_inserts_after_expiry() {
    let removed = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = Arc::clone(&removed);
    let clock = ManualClock::new();
    let cache: Cache = ExpiringCache::builder()
        .time_to_live(secs(10))
        .eviction_listener(move |k: &u32, v: &u32, cause| log.lock().unwrap().push((*k, *v, cause)))
        .clock(clock.clone())
        .build();
    let makes = AtomicUsize::new(0);
    let make = |v: u32| {
        makes.fetch_add(1, SeqCst);
        v
    };
    assert_eq!(cache.get_or_insert_with(1, || make(10)), 10);
    assert_eq!(cache.timers(), 1, "stored with its deadline");
    clock.advance(secs(9));
    assert_eq!(cache.get_or_insert_with(1, || make(11)), 10);
    assert_eq!(makes.load(SeqCst), 1, "`make` ran on a hit");
    clock.advance(secs(1)); // at the deadline: absent
    assert_eq!(cache.get_or_insert_with(1, || make(12)), 12);
    assert_eq!(makes.load(SeqCst), 2);
    assert_eq!(cache.peek(&1), Some(12));
    assert_eq!(*removed.lock().unwrap(), [(1, 10, RemovalCause::Expired)]);
    // The new value has a fresh deadline of its own.
    clock.advance(secs(9));
    assert_eq!(cache.peek(&1), Some(12));
    clock.advance(secs(1));
    assert_eq!(cache.peek(&1), None);
    let stats = cache.stats().cache;
    assert_eq!(
        (stats.hits, stats.misses, stats.expired, stats.loads()),
        (1, 2, 1, 0)
    );
}

/// A hit renews under time-to-idle, as any read does; a value inserted takes its deadline
/// from a per-entry `Expiry` (`expire_after_create`).
#[test]
fn get_or_insert_with_follows_the_expiry_policy() {
    let clock = ManualClock::new();
    let cache: Cache = ExpiringCache::builder()
        .time_to_idle(secs(10))
        .clock(clock.clone())
        .build();
    assert_eq!(cache.get_or_insert_with(1, || 1), 1);
    clock.advance(secs(9));
    assert_eq!(cache.get_or_insert_with(1, || 2), 1); // renewed until 19 s
    clock.advance(secs(9));
    assert_eq!(cache.peek(&1), Some(1));
    clock.advance(secs(1));
    assert_eq!(cache.peek(&1), None);

    struct ValueSeconds;
    impl Expiry<u32, u32> for ValueSeconds {
        fn expire_after_create(&self, _: &u32, v: &u32, _: Duration) -> Option<Duration> {
            Some(secs(u64::from(*v)))
        }
    }
    let clock = ManualClock::new();
    let cache: Cache = ExpiringCache::builder()
        .expire_after(ValueSeconds)
        .clock(clock.clone())
        .build();
    assert_eq!(cache.get_or_insert_with(1, || 3), 3);
    assert_eq!(cache.get_or_insert_with(2, || 5), 5);
    clock.advance(secs(3));
    assert_eq!((cache.peek(&1), cache.peek(&2)), (None, Some(5)));
}

/// A cached error (negative caching) is no value: `make`'s value takes its place, and
/// every later read sees the value.
#[test]
fn get_or_insert_with_replaces_a_cached_error() {
    let clock = ManualClock::new();
    let cache: Cache<String> = ExpiringCache::builder()
        .time_to_live(secs(60))
        .cache_errors_for(secs(30))
        .clock(clock.clone())
        .build();
    let failed = block_on(cache.get_with(1, || async { Err("down".to_string()) }));
    assert!(matches!(failed, Err(LoadError::Failed(_))));
    assert_eq!(cache.get_or_insert_with(1, || 5), 5);
    assert_eq!(block_on(cache.get_with(1, || async { Ok(6) })), Ok(5));
    let stats = cache.stats();
    assert_eq!((stats.negative_hits, stats.cache.invalidated), (0, 1));
}

/// A load in flight is not waited for: `make`'s value settles it, and the load's callers
/// get that value too.
#[test]
fn get_or_insert_with_settles_a_load_in_flight() {
    let (clock, cache) = ttl_cache::<Infallible>(10);
    let (_go, gate) = oneshot::channel::<()>();
    let mut loading = cache
        .get_with(1, move || async move {
            gate.await.ok();
            Ok(1)
        })
        .with_source();
    assert!(poll_once(&mut loading).is_pending());
    assert_eq!(cache.get_or_insert_with(1, || 2), 2);
    assert_eq!(
        poll_once(&mut loading),
        Poll::Ready((Ok(2), Source::Loaded))
    );
    assert_eq!(cache.peek(&1), Some(2));
    clock.advance(secs(10));
    assert_eq!(cache.peek(&1), None, "the settled value has its deadline");
}

/// A `make` that panics unwinds out of the call and stores nothing; the next call inserts.
#[test]
fn a_panicking_make_stores_nothing() {
    let (_clock, cache) = ttl_cache::<Infallible>(10);
    let caught = catch_unwind(AssertUnwindSafe(|| {
        cache.get_or_insert_with(1, || panic!("make panics on purpose"))
    }));
    assert!(caught.is_err());
    assert!(cache.is_empty() && cache.timers() == 0);
    assert_eq!(cache.get_or_insert_with(1, || 4), 4);
}

// ---------------------------------------------------------------------------------------
// get_with_blocking
// ---------------------------------------------------------------------------------------

const THREADS: u64 = 6;

/// Starts `THREADS` threads at a barrier, each calling `call` on the cache, and returns
/// their results (a panic as `Err`).
fn race<T: Send + 'static>(
    cache: &Cache<String>,
    call: impl Fn(&Cache<String>, u64) -> T + Send + Sync + 'static,
) -> Vec<thread::Result<T>> {
    let ready = Arc::new(Barrier::new(THREADS as usize));
    let call = Arc::new(call);
    let threads: Vec<_> = (0..THREADS)
        .map(|i| {
            let (cache, ready, call) = (cache.clone(), Arc::clone(&ready), Arc::clone(&call));
            thread::spawn(move || {
                ready.wait();
                call(&cache, i)
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join()).collect()
}

/// `THREADS` threads miss one key at once: one loader runs (it holds the load until every
/// other thread has joined it), all get its value, which is stored with the time-to-live
/// and loaded again once it expires.
#[test]
fn blocking_loads_are_single_flight_across_threads() {
    let (clock, cache) = ttl_cache::<String>(10);
    let runs = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&runs);
    let results = race(&cache, move |cache, i| {
        cache.get_with_blocking(1, || {
            counted.fetch_add(1, SeqCst);
            until("the other threads to join", || {
                cache.stats().cache.coalesced == THREADS - 1
            });
            Ok(100 + i as u32)
        })
    });
    assert_eq!(runs.load(SeqCst), 1, "single flight broke");
    let results: Vec<_> = results.into_iter().map(Result::unwrap).collect();
    let first = results[0].clone();
    assert!(
        first.is_ok() && results.iter().all(|r| *r == first),
        "{results:?}"
    );
    assert_eq!(cache.peek(&1), first.clone().ok());
    let stats = cache.stats().cache;
    assert_eq!(
        (stats.loads_ok, stats.misses, stats.coalesced),
        (1, THREADS, THREADS - 1)
    );
    // A hit until the deadline, loaded again from it.
    clock.advance(secs(9));
    assert_eq!(cache.get_with_blocking(1, || unreachable!("a hit")), first);
    clock.advance(secs(1));
    assert_eq!(cache.get_with_blocking(1, || Ok(7)), Ok(7));
    assert_eq!(cache.stats().cache.expired, 1);
}

/// A loader error reaches every thread that joined the load (one shared `Arc`), and is not
/// kept: the next call loads.
#[test]
fn a_blocking_loads_error_is_shared_and_not_cached() {
    let (_clock, cache) = ttl_cache::<String>(10);
    let runs = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&runs);
    let results = race(&cache, move |cache, _| {
        cache.get_with_blocking(1, || {
            counted.fetch_add(1, SeqCst);
            until("the other threads to join", || {
                cache.stats().cache.coalesced == THREADS - 1
            });
            Err("down".to_string())
        })
    });
    assert_eq!(runs.load(SeqCst), 1, "single flight broke");
    let errors: Vec<Arc<String>> = results
        .into_iter()
        .map(|r| match r.unwrap() {
            Err(LoadError::Failed(e)) => e,
            other => panic!("expected the shared error, got {other:?}"),
        })
        .collect();
    assert!(errors
        .iter()
        .all(|e| Arc::ptr_eq(e, &errors[0]) && **e == "down"));
    assert!(cache.is_empty(), "the error was cached");
    assert_eq!(cache.get_with_blocking(1, || Ok(2)), Ok(2));
    assert_eq!(cache.stats().cache.loads_failed, 1);
}

/// With negative caching a blocking load's error is kept for its own time-to-live, as
/// `get_with`'s is, and answers blocking and async reads alike.
#[test]
fn a_blocking_loads_error_is_kept_under_negative_caching() {
    let clock = ManualClock::new();
    let cache: Cache<String> = ExpiringCache::builder()
        .time_to_live(secs(60))
        .cache_errors_for(secs(5))
        .clock(clock.clone())
        .build();
    let first = match cache.get_with_blocking(1, || Err("down".to_string())) {
        Err(LoadError::Failed(error)) => error,
        other => panic!("expected the error, got {other:?}"),
    };
    let again = cache.get_with_blocking(1, || unreachable!("cached"));
    assert!(matches!(&again, Err(LoadError::Failed(e)) if Arc::ptr_eq(e, &first)));
    let from_async = block_on(cache.get_with(1, || async { Ok(0) }));
    assert!(matches!(&from_async, Err(LoadError::Failed(e)) if Arc::ptr_eq(e, &first)));
    clock.advance(secs(5));
    assert_eq!(cache.get_with_blocking(1, || Ok(3)), Ok(3));
    let stats = cache.stats();
    assert_eq!(
        (
            stats.cache.loads_failed,
            stats.cache.loads_ok,
            stats.negative_hits
        ),
        (1, 1, 2)
    );
}

/// A panicking blocking loader unwinds out of its own thread only: every thread that
/// joined its load gets `Panicked` rather than waiting forever, nothing is left stored,
/// and the cache stays usable.
#[test]
fn a_panicking_blocking_loader_strands_no_one() {
    let (_clock, cache) = ttl_cache::<String>(10);
    let runs = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&runs);
    let results = race(&cache, move |cache, _| {
        cache.get_with_blocking(1, || {
            counted.fetch_add(1, SeqCst);
            until("the other threads to join", || {
                cache.stats().cache.coalesced == THREADS - 1
            });
            panic!("a blocking loader panics on purpose")
        })
    });
    assert_eq!(runs.load(SeqCst), 1, "single flight broke");
    let unwound = results.iter().filter(|r| r.is_err()).count();
    let panicked = results
        .iter()
        .filter(|r| matches!(r, Ok(Err(LoadError::Panicked))))
        .count();
    assert_eq!((unwound, panicked), (1, THREADS as usize - 1));
    assert!(cache.is_empty());
    assert_eq!(cache.stats().cache.loads_panicked, 1);
    assert_eq!(
        cache.get_with_blocking(1, || Ok(3)),
        Ok(3),
        "the cache is unusable"
    );
}

/// A blocking load is shared with async callers: a `get_with` that joins it gets its
/// value, and a loader that reads its own key gets `Reentrant`, not a deadlock.
#[test]
fn a_blocking_load_is_shared_with_async_callers_and_reentry_is_refused() {
    let (_clock, cache) = ttl_cache::<String>(10);
    let (go, gate) = std::sync::mpsc::channel::<()>();
    let loader = {
        let cache = cache.clone();
        thread::spawn(move || {
            cache.get_with_blocking(1, || {
                gate.recv().unwrap(); // until the async caller has joined
                Ok(5)
            })
        })
    };
    until("the blocking load to start", || !cache.is_empty());
    let mut get = cache.get_with(1, || async { Ok(6) }).with_source();
    assert!(poll_once(&mut get).is_pending());
    go.send(()).unwrap();
    assert_eq!(loader.join().unwrap(), Ok(5));
    assert_eq!(block_on(get), (Ok(5), Source::Joined));

    let got = cache.get_with_blocking(2, || {
        assert_eq!(
            cache.get_with_blocking(2, || Ok(0)),
            Err(LoadError::Reentrant)
        );
        Ok(7)
    });
    assert_eq!(got, Ok(7));
    let caught = catch_unwind(AssertUnwindSafe(|| {
        cache.get_with_blocking(3, || panic!("on purpose"))
    }));
    assert!(caught.is_err() && !cache.contains_key(&3));
}
