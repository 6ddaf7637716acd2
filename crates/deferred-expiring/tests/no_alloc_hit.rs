//! A hit calls no loader and allocates nothing (issue #11, point 12): 1000 reads of one
//! loaded key, through `ExpiringLoadingCache::get` and `ExpiringCache::get_with`, each polled
//! once with a counting global allocator watching, and every loader call counted.
//!
//! Its own test binary, for the global allocator that `allocation-counter` installs (a
//! dev-dependency: a counting allocator must implement `GlobalAlloc`, an unchecked trait
//! that only `deferred-core` may implement). It counts the measuring thread's allocations only
//! (thread-local counters), so the harness and other tests running beside it do not show;
//! `the_counter_counts_this_threads_allocations_only` checks that it is installed and counts,
//! so a zero below cannot come from a counter that is not there.

#![forbid(unsafe_code)]
#![allow(clippy::std_instead_of_core)] // tests run on std; `core::` paths matter in the library only.

use std::{
    convert::Infallible,
    hint::black_box,
    sync::{
        atomic::{AtomicUsize, Ordering::SeqCst},
        Arc,
    },
    task::Poll,
    time::Duration,
};

use deferred_expiring::{ExpiringBuilder, ExpiringCache, ManualClock};
use deferred_test_support::poll_once;
use futures::executor::block_on;

/// The allocations (and reallocations: the allocator's `realloc` goes through `alloc`) that
/// `f` makes on this thread, after checking that the counter counts: one known allocation is
/// seen as exactly one.
fn allocations(f: impl FnOnce()) -> u64 {
    assert_counter_is_live();
    allocation_counter::measure(f).count_total
}

/// The counting allocator is installed and counts this thread's allocations: a box made
/// inside `measure` is one allocation of its size.
fn assert_counter_is_live() {
    let info = allocation_counter::measure(|| {
        black_box(Box::new(black_box(7_u64)));
    });
    assert_eq!(
        (info.count_total, info.bytes_total),
        (1, 8),
        "the counting allocator is not installed or does not count"
    );
}

/// The counter works, and counts only the measuring thread: a thread that allocates while
/// this one measures adds nothing, and a measured allocation is seen however many threads
/// allocate beside it.
#[test]
fn the_counter_counts_this_threads_allocations_only() {
    assert_counter_is_live();
    let (started, stop) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (s, t) = (Arc::clone(&started), Arc::clone(&stop));
    let noisy = std::thread::spawn(move || {
        let mut n = 0_u64;
        while t.load(SeqCst) == 0 {
            n += black_box(vec![n; 4]).len() as u64;
            s.fetch_add(1, SeqCst);
        }
        n
    });
    // The other thread is allocating before and all through the measurement below.
    while started.load(SeqCst) < 100 {
        std::thread::yield_now();
    }
    let before = started.load(SeqCst);
    let info = allocation_counter::measure(|| {
        // Measure until the other thread has made at least 100 more allocations.
        while started.load(SeqCst) < before + 100 {
            std::thread::yield_now();
        }
        black_box(Box::new(black_box(1_u32)));
    });
    stop.store(1, SeqCst);
    assert!(noisy.join().unwrap() > 0);
    assert_eq!(info.count_total, 1, "only this thread's one box is counted");
}

type Builder =
    ExpiringBuilder<u64, u64, Infallible, std::collections::hash_map::RandomState, ManualClock>;

/// The expiry settings a hit goes through: a time-to-live (a deadline compared), a
/// time-to-idle (a deadline renewed), and refresh-ahead not yet due (its flag read).
fn configurations() -> Vec<(&'static str, Builder)> {
    let clock = || ManualClock::new();
    vec![
        (
            "ttl",
            ExpiringCache::builder()
                .clock(clock())
                .time_to_live(Duration::from_secs(60)),
        ),
        (
            "tti + ttl + refresh_after",
            ExpiringCache::builder()
                .clock(clock())
                .time_to_idle(Duration::from_secs(10))
                .time_to_live(Duration::from_secs(60))
                .refresh_after(Duration::from_secs(30)),
        ),
    ]
}

const HITS: usize = 1000;

/// `ExpiringLoadingCache::get`: the cache-wide loader runs on the miss only (one call, one
/// load for 1000 gets); a hit neither calls it nor allocates (no boxed future).
#[test]
fn loading_cache_hits_call_no_loader_and_allocate_nothing() {
    for (name, builder) in configurations() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&calls);
        let cache = builder.build_with_loader(move |k: &u64| {
            counter.fetch_add(1, SeqCst);
            let v = k * 2;
            async move { Ok(v) }
        });
        assert_eq!(block_on(cache.get(7)), Ok(14), "{name}: the miss");
        let allocs = allocations(|| {
            for _ in 0..HITS {
                assert_eq!(poll_once(cache.get(7)), Poll::Ready(Ok(14)), "{name}");
            }
        });
        let stats = cache.stats().cache;
        assert_eq!(
            (calls.load(SeqCst), stats.loads_ok, stats.hits, allocs),
            (1, 1, HITS as u64, 0),
            "{name}: (loader closure calls, loads, hits, allocations) for {} gets of one key",
            HITS + 1
        );
    }
}

/// `ExpiringCache::get_with`: the caller's loader runs on the miss only; a hit neither calls
/// it nor allocates.
#[test]
fn get_with_hits_call_no_loader_and_allocate_nothing() {
    for (name, builder) in configurations() {
        let cache = builder.build();
        let calls = AtomicUsize::new(0);
        let loader = || {
            calls.fetch_add(1, SeqCst);
            async { Ok(14) }
        };
        assert_eq!(
            block_on(cache.get_with(7, loader)),
            Ok(14),
            "{name}: the miss"
        );
        let allocs = allocations(|| {
            for _ in 0..HITS {
                let get = cache.get_with(7, loader);
                assert_eq!(poll_once(get), Poll::Ready(Ok(14)), "{name}");
            }
        });
        assert_eq!(
            (calls.load(SeqCst), cache.stats().cache.loads_ok, allocs),
            (1, 1, 0),
            "{name}: (loader calls, loads, allocations) for {} gets of one key",
            HITS + 1
        );
    }
}
