//! An L1 hit on an integer-keyed cache allocates nothing (the README's "Keys": "an L1 hit
//! writes no text (an integer key allocates nothing)"): 1000 hits of one `u64` key with a
//! `u64` value, through `get_with`, `optionally_get_with`, `HybridLoadingCache::get` and
//! `get_if_present`, each polled once with a counting global allocator watching.
//!
//! Its own test binary, for the global allocator `allocation-counter` installs. It counts
//! the measuring thread's allocations only (thread-local counters), so the backplane task
//! and the runtime's other threads do not show.

#![allow(clippy::std_instead_of_core)] // a `std` test

mod support;

use std::{hint::black_box, task::Poll, time::Duration};

use deferred_redis::{Decimal, HybridCache, HybridLoadingCache};
use deferred_test_support::poll_once;
use support::server::RedisServer;

const HITS: usize = 1000;

/// The allocations `f` makes on this thread, after checking that the counter counts.
fn allocations(f: impl FnOnce()) -> u64 {
    let live = allocation_counter::measure(|| {
        black_box(Box::new(black_box(7_u64)));
    });
    assert_eq!(
        live.count_total, 1,
        "the counting allocator is not installed"
    );
    allocation_counter::measure(f).count_total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_l1_hit_on_a_u64_key_allocates_nothing() {
    let server = RedisServer::start();
    let cache: HybridLoadingCache<u64, u64, String, Decimal> =
        HybridCache::builder(server.client(), "alloc:", Decimal)
            .op_timeout(Duration::from_millis(500))
            .build_with_loader(|id: &u64| {
                let id = *id;
                async move { Ok(id * 10) }
            })
            .expect("build inside a runtime");
    assert!(cache.backplane_ready(Duration::from_secs(5)).await);
    assert_eq!(cache.get(7_u64).await, Ok(70), "the miss");
    assert!(cache.contains_local(&7));
    let allocs = allocations(|| {
        for _ in 0..HITS {
            assert_eq!(poll_once(cache.get(7_u64)), Poll::Ready(Ok(70)));
            let get = cache.get_with(7_u64, || async { Err("not run".to_string()) });
            assert_eq!(poll_once(get), Poll::Ready(Ok(70)));
            let get = cache.optionally_get_with(7_u64, || async { None });
            assert_eq!(poll_once(get), Poll::Ready(Ok(Some(70))));
            assert_eq!(cache.get_if_present(&7), Some(70));
        }
    });
    assert_eq!(allocs, 0, "allocations for {} L1 hits", 4 * HITS);
    assert_eq!(cache.stats().l1.cache.loads_ok, 1);
}
