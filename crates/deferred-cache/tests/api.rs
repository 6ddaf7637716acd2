//! The everyday API of issue #12: cheap handles, `remove`, iteration and bulk removal,
//! insert-if-absent and optional loads, errors, and misconfiguration refused at `build()`.
//! Nothing here sleeps to order events: gates do.

#![allow(clippy::std_instead_of_core)]

mod common;

use common::{Gate, Runs};
use deferred_cache::{Cache, LoadingCache, Source};

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
