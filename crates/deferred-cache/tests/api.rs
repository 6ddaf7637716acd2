//! The everyday API of issue #12: cheap handles, `remove`, iteration and bulk removal,
//! insert-if-absent and optional loads, errors, and misconfiguration refused at `build()`.
//! Nothing here sleeps to order events: gates do.

#![allow(clippy::std_instead_of_core)]

mod common;

use std::sync::{Arc, Mutex};

use common::{poll_once, Gate, Runs};
use deferred_cache::{BuildError, Cache, LoadError, LoadingCache, RemovalCause, Source};
use futures::executor::block_on;

/// Fails to compile unless `T` can be spawned.
fn assert_send_static<T: Send + 'static>(t: T) -> T {
    t
}

// ---------------------------------------------------------------------------------------
// 1. A cheap `Clone` handle.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cloned_handles_get_with_future_is_spawned_on_tokio() {
    let cache: Cache<u64, String, String> = Cache::bounded(100);
    let gate = Gate::new();
    let runs = Runs::default();
    let (first, second) = (cache.clone(), cache.clone());
    let (g, r) = (gate.clone(), runs.clone());
    let a = tokio::spawn(assert_send_static(async move {
        first
            .get_with(1, || r.gated(&g, "one".to_string()))
            .with_source()
            .await
    }));
    // Wait for the first task's load to be in the entry, then join it from another task.
    while cache.is_empty() {
        tokio::task::yield_now().await;
    }
    let b = tokio::spawn(assert_send_static(async move {
        second
            .get_with(1, || async { Ok("other".to_string()) })
            .with_source()
            .await
    }));
    while cache.stats().coalesced == 0 {
        tokio::task::yield_now().await;
    }
    gate.open();
    let (a, b) = (a.await.unwrap(), b.await.unwrap());
    assert_eq!(a, (Ok("one".to_string()), Source::Loaded));
    assert_eq!(b, (Ok("one".to_string()), Source::Joined));
    assert_eq!(
        runs.started(),
        1,
        "the two handles' callers shared one load"
    );
    assert_eq!(cache.peek(&1), Some("one".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cloned_loading_caches_get_future_is_spawned_on_tokio() {
    let cache: LoadingCache<u64, u64> = Cache::builder().build_with_loader(|k: &u64| {
        let k = *k;
        async move { Ok(k * 2) }
    });
    let handle = cache.clone();
    let task = tokio::spawn(assert_send_static(async move { handle.get(21).await }));
    assert_eq!(task.await.unwrap(), Ok(42));
    assert_eq!(cache.peek(&21), Some(42));
    assert_eq!(cache.stats().loads_ok, 1);
}

#[test]
fn clones_share_entries_stats_and_capacity() {
    let cache: Cache<u64, u64> = Cache::bounded(2);
    let other = cache.clone();
    other.insert(1, 10);
    assert_eq!(cache.get_if_present(&1), Some(10));
    assert_eq!(other.get_if_present(&2), None);
    assert_eq!(cache.stats(), other.stats());
    assert_eq!((cache.stats().hits, cache.stats().misses), (1, 1));
    cache.insert(2, 20);
    other.insert(3, 30); // one capacity: evicts from what both handles put in
    assert_eq!((cache.len(), other.weighted_size()), (2, Some(2)));
    assert_eq!(cache.stats().evicted, 1);
    drop(cache); // the last handle keeps the cache
    assert_eq!(other.peek(&3), Some(30));
}

// ---------------------------------------------------------------------------------------
// 2. `remove` returns the value.
// ---------------------------------------------------------------------------------------

type Log = Arc<Mutex<Vec<(u64, u64, RemovalCause)>>>;

/// A bounded cache with a listener that logs every removal.
fn logged(capacity: u64) -> (Cache<u64, u64, String>, Log) {
    let log: Log = Arc::default();
    let sink = Arc::clone(&log);
    let cache = Cache::builder()
        .max_capacity(capacity)
        .eviction_listener(move |k: &u64, v: &u64, cause| {
            sink.lock().unwrap().push((*k, *v, cause))
        })
        .build();
    (cache, log)
}

#[test]
fn remove_returns_the_value_and_keeps_the_books_as_invalidate_does() {
    let (cache, log) = logged(10);
    cache.insert(1, 10);
    cache.insert(2, 20);
    assert_eq!(cache.remove(&1), Some(10));
    assert_eq!(cache.remove(&1), None);
    assert_eq!((cache.len(), cache.weighted_size()), (1, Some(1)));
    assert_eq!(cache.stats().invalidated, 1);
    assert_eq!(*log.lock().unwrap(), [(1, 10, RemovalCause::Explicit)]);
}

#[test]
fn remove_of_a_load_in_flight_returns_none_and_the_load_is_not_stored() {
    let (cache, log) = logged(10);
    let gate = Gate::new();
    let runs = Runs::default();
    let mut get = cache.get_with(1, || runs.gated(&gate, 7));
    assert!(poll_once(&mut get).is_pending());
    assert_eq!(cache.remove(&1), None, "a load in flight has no value yet");
    assert!(cache.is_empty(), "the load was not removed");
    gate.open();
    assert_eq!(block_on(get), Ok(7), "its caller still gets its value");
    assert_eq!(cache.peek(&1), None, "the removed load's value was stored");
    assert_eq!((cache.len(), cache.weighted_size()), (0, Some(0)));
    assert_eq!(cache.stats().invalidated, 1);
    assert!(log.lock().unwrap().is_empty(), "a load is not a value");
}

// ---------------------------------------------------------------------------------------
// 3. Iteration and bulk removal.
// ---------------------------------------------------------------------------------------

#[test]
fn iter_yields_loaded_entries_once_skips_loads_and_counts_nothing() {
    let cache: Cache<u64, u64, String> = Cache::bounded(100);
    for k in 0..50 {
        cache.insert(k, k * 10);
    }
    let gate = Gate::new();
    let runs = Runs::default();
    let mut get = cache.get_with(1000, || runs.gated(&gate, 1));
    assert!(poll_once(&mut get).is_pending());
    let iter = cache.iter();
    assert_eq!(iter.len(), 50);
    let mut all: Vec<(u64, u64)> = iter.collect();
    all.sort_unstable();
    assert_eq!(all, (0..50).map(|k| (k, k * 10)).collect::<Vec<_>>());
    let stats = cache.stats();
    assert_eq!((stats.hits, stats.misses), (0, 1), "iter counted reads");
    gate.open();
    assert_eq!(block_on(get), Ok(1));
}

#[test]
fn iter_holds_no_lock_while_the_caller_works() {
    let cache: Cache<u64, u64> = Cache::new();
    for k in 0..100 {
        cache.insert(k, k);
    }
    let mut seen = 0;
    for (k, v) in cache.iter() {
        // Writes to the same shards from inside the loop: a held lock would deadlock.
        cache.insert(k + 1000, v);
        assert!(cache.invalidate(&k));
        seen += 1;
    }
    assert_eq!(seen, 100);
    assert_eq!(cache.len(), 100);
    assert!(cache.iter().all(|(k, v)| k == v + 1000));
}

#[test]
fn retain_and_invalidate_entries_if_keep_the_books_as_invalidate_does() {
    let (cache, log) = logged(100);
    for k in 0..10 {
        cache.insert(k, k);
    }
    let gate = Gate::new();
    let runs = Runs::default();
    let mut get = cache.get_with(99, || runs.gated(&gate, 99));
    assert!(poll_once(&mut get).is_pending());
    let mut asked = Vec::new();
    cache.retain(|k, _| {
        asked.push(*k);
        k % 2 == 0
    });
    asked.sort_unstable();
    assert_eq!(asked, (0..10).collect::<Vec<_>>(), "asked about a load");
    assert_eq!(cache.invalidate_entries_if(|k, _| *k >= 6), 2);
    assert_eq!(cache.invalidate_entries_if(|_, _| false), 0);
    let mut left: Vec<u64> = cache.iter().map(|(k, _)| k).collect();
    left.sort_unstable();
    assert_eq!(left, [0, 2, 4]);
    assert_eq!(cache.len(), 4, "the load in flight was removed");
    assert_eq!(cache.weighted_size(), Some(3));
    assert_eq!(cache.stats().invalidated, 7);
    let mut told = log.lock().unwrap().clone();
    told.sort_unstable_by_key(|&(k, _, _)| k);
    let expected: Vec<_> = [1, 3, 5, 6, 7, 8, 9]
        .into_iter()
        .map(|k| (k, k, RemovalCause::Explicit))
        .collect();
    assert_eq!(told, expected);
    // The load kept goes on, and its value is stored.
    gate.open();
    assert_eq!(block_on(get), Ok(99));
    assert_eq!(cache.peek(&99), Some(99));
    assert_eq!(cache.weighted_size(), Some(4));
}

#[test]
fn the_predicate_of_a_bulk_removal_may_use_the_cache() {
    let cache: Cache<u64, u64> = Cache::bounded(100);
    for k in 0..20 {
        cache.insert(k, k);
    }
    // Runs with no lock held: reading and writing the cache from inside it does not
    // deadlock, and a value replaced after the predicate saw it is not removed.
    let removed = cache.invalidate_entries_if(|k, _| {
        if *k == 3 {
            cache.insert(3, 300);
        }
        cache.peek(k).is_some()
    });
    assert_eq!(removed, 19);
    assert_eq!(cache.iter().collect::<Vec<_>>(), [(3, 300)]);
    assert_eq!(cache.weighted_size(), Some(1));
}

// ---------------------------------------------------------------------------------------
// 4. Optional loads and insert-if-absent.
// ---------------------------------------------------------------------------------------

#[test]
fn an_optional_load_that_finds_nothing_reaches_every_waiter_and_is_not_cached() {
    let cache: Cache<u64, u64, String> = Cache::bounded(10);
    let gate = Gate::new();
    let runs = Runs::default();
    let found = |runs: &Runs, gate: &Gate| {
        let load = runs.gated::<_, ()>(gate, ());
        || async move { load.await.ok().and(None::<u64>) }
    };
    let mut a = cache.optionally_get_with(1, found(&runs, &gate));
    let mut b = cache.optionally_get_with(1, found(&runs, &gate));
    assert!(poll_once(&mut a).is_pending() && poll_once(&mut b).is_pending());
    gate.open();
    assert_eq!((block_on(a), block_on(b)), (Ok(None), Ok(None)));
    assert_eq!(runs.started(), 1, "single flight broke");
    assert!(cache.is_empty(), "`None` was cached");
    let stats = cache.stats();
    assert_eq!(
        (stats.loads_empty, stats.loads_ok, stats.coalesced),
        (1, 0, 1)
    );
    assert_eq!(stats.loads(), 1);
    // Not cached: the next read loads again, and a value found is cached.
    let got = block_on(cache.optionally_get_with(1, || async { Some(5) }));
    assert_eq!(got, Ok(Some(5)));
    assert_eq!((cache.peek(&1), cache.weighted_size()), (Some(5), Some(1)));
    let hit = block_on(cache.optionally_get_with(1, || async { unreachable!() }));
    assert_eq!(hit, Ok(Some(5)));
}

#[test]
fn loads_are_shared_between_optional_and_plain_callers() {
    let cache: Cache<u64, u64, String> = Cache::new();
    // A plain caller that joins an optional load that finds nothing: `NotFound`.
    let gate = Gate::new();
    let opened = gate.wait();
    let mut optional = cache.optionally_get_with(1, || async move {
        opened.await;
        None
    });
    assert!(poll_once(&mut optional).is_pending());
    let mut plain = cache.get_with(1, || async { Ok(9) }).with_source();
    assert!(poll_once(&mut plain).is_pending());
    gate.open();
    assert_eq!(block_on(optional), Ok(None));
    assert_eq!(block_on(plain), (Err(LoadError::NotFound), Source::Joined));
    // An optional caller that joins a plain load that fails: the shared error.
    let gate = Gate::new();
    let opened = gate.wait();
    let mut plain = cache.get_with(2, || async move {
        opened.await;
        Err("down".to_string())
    });
    assert!(poll_once(&mut plain).is_pending());
    let mut optional = cache.optionally_get_with(2, || async { Some(1) });
    assert!(poll_once(&mut optional).is_pending());
    gate.open();
    let (a, b) = (block_on(plain), block_on(optional));
    assert!(
        matches!((&a, &b), (Err(LoadError::Failed(x)), Err(LoadError::Failed(y))) if Arc::ptr_eq(x, y))
    );
    assert!(cache.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_optional_load_is_spawned_on_tokio() {
    let cache: Cache<u64, u64> = Cache::new();
    let handle = cache.clone();
    let task = tokio::spawn(assert_send_static(async move {
        handle.optionally_get_with(3, || async { Some(30) }).await
    }));
    assert_eq!(task.await.unwrap(), Ok(Some(30)));
    assert_eq!(cache.peek(&3), Some(30));
}

#[test]
fn get_or_insert_with_inserts_only_if_absent_and_books_the_value() {
    let (cache, log) = logged(2);
    assert_eq!(cache.get_or_insert_with(1, || 10), 10);
    assert_eq!(cache.get_or_insert_with(1, || unreachable!()), 10);
    assert_eq!(cache.get_or_insert_with(2, || 20), 20);
    assert_eq!(cache.get_or_insert_with(3, || 30), 30); // evicts one: the capacity holds
    assert_eq!((cache.len(), cache.weighted_size()), (2, Some(2)));
    let stats = cache.stats();
    assert_eq!((stats.hits, stats.misses, stats.evicted), (1, 3, 1));
    assert_eq!(log.lock().unwrap().len(), 1);
}

#[test]
fn get_or_insert_with_settles_a_load_in_flight_with_its_value() {
    let (cache, log) = logged(10);
    let gate = Gate::new();
    let runs = Runs::default();
    let mut get = cache.get_with(1, || runs.gated(&gate, 7)).with_source();
    assert!(poll_once(&mut get).is_pending());
    assert_eq!(runs.started(), 1);
    assert_eq!(cache.get_or_insert_with(1, || 5), 5);
    assert_eq!(runs.dropped(), 1, "the load was not dropped");
    assert_eq!(
        block_on(get),
        (Ok(5), Source::Loaded),
        "the load's caller disagrees with the cache"
    );
    assert_eq!(cache.peek(&1), Some(5));
    assert_eq!((cache.len(), cache.weighted_size()), (1, Some(1)));
    let stats = cache.stats();
    assert_eq!((stats.loads_cancelled, stats.loads_ok), (1, 0));
    assert!(log.lock().unwrap().is_empty());
    gate.open(); // nothing is waiting on it any more
    assert_eq!(cache.peek(&1), Some(5));
}

// ---------------------------------------------------------------------------------------
// 5. Errors.
// ---------------------------------------------------------------------------------------

/// The loader's error in these tests, with a cause of its own.
#[derive(Debug)]
struct DiskError(RootCause);

#[derive(Debug)]
struct RootCause;

impl std::fmt::Display for DiskError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("disk on fire")
    }
}

impl std::error::Error for DiskError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

impl std::fmt::Display for RootCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("sector 7 unreadable")
    }
}

impl std::error::Error for RootCause {}

/// What anyhow's `{:#}` prints: each error of the `source()` chain, joined by ": ".
fn chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut next = error.source();
    while let Some(cause) = next {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        next = cause.source();
    }
    out
}

#[test]
fn an_error_chain_prints_each_message_once() {
    let cache: Cache<u8, u8, DiskError> = Cache::new();
    let error: deferred_cache::LoadError<DiskError> =
        block_on(cache.get_with(1, || async { Err(DiskError(RootCause)) })).unwrap_err();
    let text = chain(&error);
    assert_eq!(text.matches("disk on fire").count(), 1, "{text}");
    assert_eq!(text.matches("sector 7 unreadable").count(), 1, "{text}");
    assert_eq!(text, "the loader failed: disk on fire: sector 7 unreadable");
    // The loader's error itself is reached by matching, as the same `Arc`.
    assert!(matches!(&error, LoadError::Failed(e) if e.0.to_string() == "sector 7 unreadable"));
}

#[test]
fn errors_without_a_source_keep_their_message() {
    let cache: Cache<u8, u8, String> = Cache::new();
    let error =
        block_on(cache.get_with(1, || async { Err("backend down".to_string()) })).unwrap_err();
    assert_eq!(error.to_string(), "the loader failed: backend down");
    for (error, text) in [
        (LoadError::<String>::Panicked, "the loader panicked"),
        (LoadError::Cancelled, "the load was cancelled"),
        (
            LoadError::NotFound,
            "the optional load this caller joined found no value",
        ),
    ] {
        assert_eq!(error.to_string(), text);
    }
}

// ---------------------------------------------------------------------------------------
// 6. Misconfiguration refused at `build()`.
// ---------------------------------------------------------------------------------------

#[test]
fn an_initial_capacity_above_the_max_is_refused_with_a_clear_message() {
    let refused = Cache::<u64, u64>::builder()
        .max_capacity(10)
        .initial_capacity(11)
        .try_build()
        .unwrap_err();
    assert_eq!(
        refused,
        BuildError::InitialCapacityAboveMax {
            initial_capacity: 11,
            max_capacity: 10
        }
    );
    let message = refused.to_string();
    assert!(
        message.contains("initial_capacity (11 entries)")
            && message.contains("max_capacity (10 entries)")
    );
    let panicked = std::panic::catch_unwind(|| {
        Cache::<u64, u64>::builder()
            .max_capacity(0)
            .initial_capacity(1)
            .build()
    });
    let payload = panicked.unwrap_err();
    let text = payload
        .downcast_ref::<String>()
        .expect("a formatted message");
    assert!(text.starts_with("initial_capacity (1 entries) is more than max_capacity (0 entries)"));
    // With a loader too.
    let refused = Cache::<u64, u64>::builder()
        .max_capacity(1)
        .initial_capacity(2)
        .try_build_with_loader(|k: &u64| {
            let k = *k;
            async move { Ok(k) }
        });
    assert!(matches!(
        refused,
        Err(BuildError::InitialCapacityAboveMax { .. })
    ));
}

#[test]
fn what_fits_is_built() {
    // Up to the max, and any number with a weigher (values may weigh nothing).
    let at_max = Cache::<u64, u64>::builder()
        .max_capacity(10)
        .initial_capacity(10)
        .try_build();
    assert_eq!(at_max.unwrap().capacity(), Some(10));
    let weighed = Cache::<u64, u64>::builder()
        .max_capacity(10)
        .weigher(|_, _| 0)
        .initial_capacity(100)
        .try_build();
    assert!(weighed.is_ok());
    // A weigher without a capacity has no effect, and is never called: not refused.
    let unbounded: Cache<u64, u64> = Cache::builder()
        .weigher(|_, _| unreachable!("a weigher without a capacity was called"))
        .try_build()
        .unwrap();
    unbounded.insert(1, 1);
    assert_eq!(
        (unbounded.peek(&1), unbounded.weighted_size()),
        (Some(1), None)
    );
}

#[test]
fn an_initial_capacity_that_cannot_be_allocated_is_refused() {
    let refused = Cache::<u64, u64>::builder()
        .initial_capacity(usize::MAX / 4)
        .try_build()
        .unwrap_err();
    assert_eq!(
        refused,
        BuildError::InitialCapacityTooLarge {
            initial_capacity: usize::MAX / 4
        }
    );
    assert!(refused
        .to_string()
        .contains("more than this machine can allocate"));
}

// ---------------------------------------------------------------------------------------
// 7. Blocking loads for plain threads.
// ---------------------------------------------------------------------------------------

/// Waits (spinning politely) until `done` says yes; a deadline only bounds a hang.
fn until(what: &str, done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::yield_now();
    }
}

#[test]
fn blocking_loads_are_single_flight_across_threads() {
    const N: u64 = 8;
    let cache: Cache<u64, u64, String> = Cache::bounded(10);
    let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let threads: Vec<_> = (0..N)
        .map(|i| {
            let (cache, runs) = (cache.clone(), Arc::clone(&runs));
            std::thread::spawn(move || {
                cache.get_with_blocking(1, || {
                    runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    // Hold the load until every other thread has joined it.
                    until("the other threads to join", || {
                        cache.stats().coalesced == N - 1
                    });
                    Ok(100 + i)
                })
            })
        })
        .collect();
    let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(
        runs.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "single flight broke"
    );
    let first = results[0].clone();
    assert!(
        first.is_ok() && results.iter().all(|r| *r == first),
        "{results:?}"
    );
    assert_eq!(cache.peek(&1), first.ok());
    let stats = cache.stats();
    assert_eq!(
        (stats.loads_ok, stats.misses, stats.coalesced),
        (1, N, N - 1)
    );
    assert_eq!(cache.weighted_size(), Some(1));
}

#[test]
fn a_blocking_load_is_shared_with_async_callers() {
    let cache: Cache<u64, u64, String> = Cache::new();
    let joined = Gate::new();
    let (c, j) = (cache.clone(), joined.clone());
    let loader = std::thread::spawn(move || {
        c.get_with_blocking(1, || {
            block_on(j.wait()); // until the async caller has joined
            Ok(5)
        })
    });
    until("the blocking load to start", || !cache.is_empty());
    let mut get = cache.get_with(1, || async { Ok(6) }).with_source();
    assert!(poll_once(&mut get).is_pending());
    joined.open();
    assert_eq!(loader.join().unwrap(), Ok(5));
    assert_eq!(block_on(get), (Ok(5), Source::Joined));
    assert_eq!(cache.stats().loads_ok, 1);
}

#[test]
fn a_blocking_caller_drives_an_async_load_whose_callers_stalled() {
    let cache: Cache<u64, u64, String> = Cache::new();
    let gate = Gate::new();
    let runs = Runs::default();
    let mut stalled = cache.get_with(1, || runs.gated(&gate, 9));
    assert!(poll_once(&mut stalled).is_pending()); // and never polled again
    gate.open();
    let got = cache.get_with_blocking(1, || unreachable!("joined, so its loader never runs"));
    assert_eq!(got, Ok(9));
    assert_eq!(runs.started(), 1);
    assert_eq!(cache.peek(&1), Some(9));
    drop(stalled);
}

#[test]
fn a_blocking_loads_error_is_shared_and_not_cached() {
    let cache: Cache<u64, u64, String> = Cache::new();
    let (c, joined) = (cache.clone(), Gate::new());
    let j = joined.clone();
    let loader = std::thread::spawn(move || {
        c.get_with_blocking(1, || {
            block_on(j.wait());
            Err("down".to_string())
        })
    });
    until("the blocking load to start", || !cache.is_empty());
    let mut get = cache.get_with(1, || async { Ok(0) });
    assert!(poll_once(&mut get).is_pending());
    joined.open();
    let (a, b) = (loader.join().unwrap(), block_on(get));
    assert!(
        matches!((&a, &b), (Err(LoadError::Failed(x)), Err(LoadError::Failed(y))) if Arc::ptr_eq(x, y) && **x == "down"),
        "{a:?} {b:?}"
    );
    assert!(cache.is_empty(), "the error was cached");
    assert_eq!(cache.get_with_blocking(1, || Ok(2)), Ok(2));
    assert_eq!(cache.stats().loads_failed, 1);
}

#[test]
fn a_panicking_blocking_loader_unwinds_its_caller_and_fails_the_others() {
    let cache: Cache<u64, u64, String> = Cache::new();
    let (c, joined) = (cache.clone(), Gate::new());
    let j = joined.clone();
    let loader = std::thread::spawn(move || {
        c.get_with_blocking(1, || {
            block_on(j.wait());
            panic!("a blocking loader panics on purpose")
        })
    });
    until("the blocking load to start", || !cache.is_empty());
    let mut get = cache.get_with(1, || async { Ok(0) });
    assert!(poll_once(&mut get).is_pending());
    joined.open();
    assert!(
        loader.join().is_err(),
        "the panic did not reach the loader's caller"
    );
    assert_eq!(block_on(get), Err(LoadError::Panicked));
    assert!(cache.is_empty());
    assert_eq!(cache.stats().loads_panicked, 1);
    assert_eq!(
        cache.get_with_blocking(1, || Ok(3)),
        Ok(3),
        "the cache is unusable"
    );
}

#[test]
fn a_blocking_loader_that_reads_its_own_key_gets_reentrant() {
    let cache: Cache<u64, u64, String> = Cache::new();
    let got = cache.get_with_blocking(1, || {
        let inner = cache.get_with_blocking(1, || Ok(0));
        assert_eq!(inner, Err(LoadError::Reentrant));
        let inner = block_on(cache.get_with(1, || async { Ok(0) }));
        assert_eq!(inner, Err(LoadError::Reentrant));
        Ok(7)
    });
    assert_eq!(got, Ok(7));
    assert_eq!(cache.peek(&1), Some(7));
}
