//! A hit calls no loader and allocates nothing (issue #11, point 12): 1000 reads of one
//! loaded key, through `ExpiringLoadingCache::get` and `ExpiringCache::get_with`, each polled
//! once with a counting global allocator watching, and every loader call counted.
//!
//! Its own test binary, for the `#[global_allocator]`. Allocations are counted on the
//! measuring thread only, so the harness and other tests running beside it do not show.

#![allow(clippy::std_instead_of_core)] // tests run on std; `core::` paths matter in the library only.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
    convert::Infallible,
    future::Future,
    pin::pin,
    sync::{
        atomic::{AtomicUsize, Ordering::SeqCst},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use deferred_expiring::{ExpiringBuilder, ExpiringCache, ManualClock};
use futures::{executor::block_on, task::noop_waker};

struct Counting;

thread_local! {
    // `const` and no destructor: using them never allocates, so the allocator may.
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
}

fn count() {
    if COUNTING.with(Cell::get) {
        ALLOCS.with(|n| n.set(n.get() + 1));
    }
}

// SAFETY: forwards to `System`, only counting.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The allocations `f` makes on this thread.
fn allocations(f: impl FnOnce()) -> usize {
    let before = ALLOCS.with(Cell::get);
    COUNTING.with(|c| c.set(true));
    f();
    COUNTING.with(|c| c.set(false));
    ALLOCS.with(Cell::get) - before
}

/// Polls `fut` once: a hit must be ready on its first poll.
fn poll_once<F: Future>(fut: F) -> Poll<F::Output> {
    let waker = noop_waker();
    let mut cx = Context::from_waker(&waker);
    pin!(fut).poll(&mut cx)
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
