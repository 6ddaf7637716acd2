//! Regressions of issue #11, points 8 to 11: capacity belongs to the cache (not to a policy
//! shard), a value too heavy for it is refused without touching anything else, a panicking
//! eviction listener leaves the books exact, and weightless values at capacity 0 and above;
//! and (issue #12) a panicking weigher strands no caller and leaves the books exact.

#![allow(clippy::std_instead_of_core)]

use std::{
    panic::{catch_unwind, AssertUnwindSafe},
    sync::{
        atomic::{AtomicUsize, Ordering::SeqCst},
        Arc, Mutex, Once,
    },
};

use deferred_cache::{Cache, RemovalCause};

type Log = Arc<Mutex<Vec<(u64, u32, RemovalCause)>>>;

/// A cache whose values are their own weights, with a listener that logs every removal.
fn weighed(capacity: u64) -> (Cache<u64, u32, String>, Log) {
    let log: Log = Arc::default();
    let sink = Arc::clone(&log);
    let cache = Cache::builder()
        .max_capacity(capacity)
        .weigher(|_, v: &u32| *v)
        .eviction_listener(move |k: &u64, v: &u32, cause| {
            sink.lock().unwrap().push((*k, *v, cause))
        })
        .build();
    (cache, log)
}

/// The message of the panics the listeners here raise on purpose.
const LISTENER_PANIC: &str = "listener panics on purpose";

/// The message of the panics the weighers here raise on purpose.
const WEIGHER_PANIC: &str = "weigher panics on purpose";

/// Keeps the panics raised here on purpose quiet; any other panic goes to the default hook.
fn quiet_expected_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let expected = info
                .payload()
                .downcast_ref::<&str>()
                .is_some_and(|msg| *msg == LISTENER_PANIC || *msg == WEIGHER_PANIC);
            if !expected {
                default(info);
            }
        }));
    });
}

// ---------------------------------------------------------------------------------------
// 8. A value heavier than the whole capacity is refused without touching anything else.
// ---------------------------------------------------------------------------------------

#[test]
fn a_value_heavier_than_the_capacity_is_refused_without_evicting_others() {
    let (cache, log) = weighed(10);
    for k in 0..5 {
        cache.insert(k, 1);
    }
    cache.insert(99, u32::MAX);
    for k in 0..5 {
        assert!(
            cache.contains_key(&k),
            "key {k} was evicted for a value that never fit"
        );
    }
    assert!(!cache.contains_key(&99));
    assert_eq!(cache.len(), 5);
    assert_eq!(cache.weighted_size(), Some(5));
    assert_eq!(cache.stats().evicted, 1, "only the refused value counts");
    assert_eq!(*log.lock().unwrap(), [(99, u32::MAX, RemovalCause::Size)]);
}

#[test]
fn a_loaded_value_heavier_than_the_capacity_reaches_its_callers_and_evicts_nothing() {
    let (cache, log) = weighed(10);
    for k in 0..5 {
        cache.insert(k, 2);
    }
    let got = futures::executor::block_on(cache.get_with(99, || async { Ok(11) }));
    assert_eq!(got, Ok(11));
    assert!(!cache.contains_key(&99));
    assert_eq!((cache.len(), cache.weighted_size()), (5, Some(10)));
    assert_eq!(cache.stats().evicted, 1);
    assert_eq!(*log.lock().unwrap(), [(99, 11, RemovalCause::Size)]);
}

// ---------------------------------------------------------------------------------------
// 9. Capacity is the cache's, not a shard's.
// ---------------------------------------------------------------------------------------

/// 4096 is split into policy shards of at most 1024 (8 of 512 on 2 CPUs, 16 of 256 on 16):
/// each of these values is heavier than a shard's share, and lighter than the capacity.
#[test]
fn a_value_lighter_than_the_capacity_is_kept_whatever_the_shard_split() {
    for weight in [1000, 2049, 4095, 4096] {
        let (cache, log) = weighed(4096);
        cache.insert(1, weight);
        assert_eq!(
            cache.peek(&1),
            Some(weight),
            "a value of weight {weight} was dropped"
        );
        assert_eq!(cache.weighted_size(), Some(u64::from(weight)));
        assert!(log.lock().unwrap().is_empty(), "{:?}", log.lock().unwrap());
        assert_eq!(cache.stats().evicted, 0);
    }
}

/// The same in a full cache: room is made by evicting other values, from any shard, and
/// the cache ends within its capacity.
#[test]
fn a_heavy_value_makes_room_across_shards_in_a_full_cache() {
    let (cache, log) = weighed(4096);
    for k in 0..4096 {
        cache.insert(10_000 + k, 1);
    }
    assert_eq!(cache.weighted_size(), Some(4096));
    cache.insert(1, 3000);
    assert_eq!(cache.peek(&1), Some(3000));
    assert_eq!(cache.weighted_size(), Some(4096));
    assert_eq!(cache.len(), 1 + 1096);
    let log = log.lock().unwrap();
    assert_eq!(log.len(), 3000);
    assert!(log
        .iter()
        .all(|&(k, _, cause)| k != 1 && cause == RemovalCause::Size));
    assert_eq!(cache.stats().evicted, 3000);
}

/// A loaded value goes through the same admission as an inserted one.
#[test]
fn a_loaded_value_lighter_than_the_capacity_is_kept_whatever_the_shard_split() {
    let (cache, _log) = weighed(4096);
    let got = futures::executor::block_on(cache.get_with(1, || async { Ok(2000) }));
    assert_eq!(got, Ok(2000));
    assert_eq!(cache.peek(&1), Some(2000));
    assert_eq!(cache.weighted_size(), Some(2000));
}

// ---------------------------------------------------------------------------------------
// 10. A panicking eviction listener leaves every count exact.
// ---------------------------------------------------------------------------------------

/// A cache of capacity `capacity` whose listener counts its calls and panics on those
/// `panics_on` says yes to.
fn panicky(
    capacity: u64,
    panics_on: impl Fn(usize, RemovalCause) -> bool + Send + Sync + 'static,
) -> (Cache<u64, u32, String>, Arc<AtomicUsize>) {
    quiet_expected_panics();
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&calls);
    let cache = Cache::builder()
        .max_capacity(capacity)
        .weigher(|_, v: &u32| *v)
        .eviction_listener(move |_: &u64, _: &u32, cause| {
            let n = seen.fetch_add(1, SeqCst);
            if panics_on(n, cause) {
                std::panic::panic_any(LISTENER_PANIC);
            }
        })
        .build();
    (cache, calls)
}

#[test]
fn a_listener_panicking_on_a_replace_leaves_the_books_exact() {
    let (cache, calls) = panicky(1, |_, _| true);
    cache.insert(1, 1);
    let replaced = catch_unwind(AssertUnwindSafe(|| cache.insert(1, 1)));
    assert_eq!(cache.weighted_size(), Some(1), "the new value is untracked");
    assert_eq!(cache.len(), 1);
    let evicting = catch_unwind(AssertUnwindSafe(|| cache.insert(2, 1)));
    assert_eq!(cache.len(), 1, "two entries in a cache of capacity 1");
    assert_eq!(cache.weighted_size(), Some(1));
    assert_eq!(cache.stats().evicted, 1);
    assert_eq!(calls.load(SeqCst), 2);
    assert_eq!(cache.stats().listener_panics, 2, "each panic is reported");
    assert!(replaced.is_ok(), "the listener's panic escaped `insert`");
    assert!(evicting.is_ok(), "the listener's panic escaped `insert`");
}

#[test]
fn a_listener_panicking_on_a_replace_if_leaves_the_books_exact() {
    let (cache, calls) = panicky(1, |_, _| true);
    cache.insert(1, 1);
    let replaced = catch_unwind(AssertUnwindSafe(|| cache.replace_if(&1, 1, |_| true)));
    assert_eq!(cache.weighted_size(), Some(1), "the new value is untracked");
    let evicting = catch_unwind(AssertUnwindSafe(|| cache.insert(2, 1)));
    assert_eq!(cache.len(), 1, "two entries in a cache of capacity 1");
    assert_eq!(cache.weighted_size(), Some(1));
    assert_eq!(cache.stats().evicted, 1);
    assert_eq!(calls.load(SeqCst), 2);
    assert_eq!(cache.stats().listener_panics, 2, "each panic is reported");
    assert!(
        matches!(replaced, Ok(true)),
        "the listener's panic escaped `replace_if`"
    );
    assert!(evicting.is_ok(), "the listener's panic escaped `insert`");
}

#[test]
fn a_listener_panicking_on_the_first_of_two_victims_still_evicts_the_second() {
    let (cache, calls) = panicky(2, |n, cause| n == 0 && cause == RemovalCause::Size);
    cache.insert(1, 1);
    cache.insert(2, 1);
    let evicting = catch_unwind(AssertUnwindSafe(|| cache.insert(3, 2)));
    assert!(
        !cache.contains_key(&1) && !cache.contains_key(&2),
        "a victim stayed"
    );
    assert_eq!(cache.peek(&3), Some(2));
    assert_eq!(cache.len(), 1);
    assert_eq!(cache.weighted_size(), Some(2));
    assert_eq!(cache.stats().evicted, 2);
    assert_eq!(calls.load(SeqCst), 2, "the second victim was not told");
    assert_eq!(cache.stats().listener_panics, 1);
    assert!(evicting.is_ok(), "the listener's panic escaped `insert`");
}

#[test]
fn listener_panics_on_every_path_leave_the_books_exact() {
    let (cache, calls) = panicky(4, |_, _| true);
    for k in 0..4 {
        cache.insert(k, 1);
    }
    let ops: [&dyn Fn(); 5] = [
        &|| cache.insert(0, 1),            // Replaced
        &|| assert!(cache.invalidate(&1)), // Explicit
        &|| assert!(cache.invalidate_if(&2, |_| true)),
        &|| assert!(cache.expire_if(&3, |_| true)), // Expired
        &|| cache.insert(9, 4),                     // Size: evicts 0
    ];
    for op in ops {
        assert!(catch_unwind(AssertUnwindSafe(op)).is_ok());
    }
    assert_eq!(cache.len(), 1);
    assert_eq!(cache.weighted_size(), Some(4));
    cache.insert(10, 1);
    cache.insert(11, 1);
    cache.invalidate_all();
    assert!(cache.is_empty());
    assert_eq!(cache.weighted_size(), Some(0));
    let stats = cache.stats();
    // Size: 0 (for 9), then 9 (for 10); Replaced 1, Explicit 1 + 1 + 2; Expired 1.
    assert_eq!((stats.evicted, stats.invalidated, stats.expired), (2, 5, 1));
    assert_eq!(calls.load(SeqCst), 8);
    assert_eq!(
        stats.listener_panics, 8,
        "and the listener is still called after a panic"
    );
}

// ---------------------------------------------------------------------------------------
// 11. Weightless values.
// ---------------------------------------------------------------------------------------

/// Capacity 0 keeps nothing, as documented, not even a value that weighs nothing.
#[test]
fn capacity_zero_keeps_nothing_even_weightless_values() {
    let log: Log = Arc::default();
    let sink = Arc::clone(&log);
    let cache: Cache<u64, u32, String> = Cache::builder()
        .max_capacity(0)
        .weigher(|_, _| 0)
        .eviction_listener(move |k: &u64, v: &u32, cause| {
            sink.lock().unwrap().push((*k, *v, cause))
        })
        .build();
    cache.insert(1, 1);
    let got = futures::executor::block_on(cache.get_with(2, || async { Ok(2) }));
    assert_eq!(got, Ok(2), "the load's caller still gets its value");
    assert!(!cache.contains_key(&1) && !cache.contains_key(&2));
    assert_eq!((cache.len(), cache.weighted_size()), (0, Some(0)));
    assert_eq!(cache.stats().evicted, 2);
    assert_eq!(
        *log.lock().unwrap(),
        [(1, 1, RemovalCause::Size), (2, 2, RemovalCause::Size)]
    );
}

/// Evicting a value that weighs nothing frees nothing, so it is never evicted for size:
/// it stays until it is invalidated, replaced or expired.
#[test]
fn a_weightless_value_is_never_evicted_for_size() {
    let (cache, log) = weighed(1);
    cache.insert(0, 0);
    for k in 1..10 {
        cache.insert(k, 1);
        assert_eq!(cache.peek(&0), Some(0), "evicted for size, freeing nothing");
    }
    assert_eq!((cache.len(), cache.weighted_size()), (2, Some(1)));
    assert_eq!(cache.stats().evicted, 8);
    assert!(log.lock().unwrap().iter().all(|&(k, _, _)| k != 0));
    // It still leaves the ordinary ways, and its removal takes nothing off the books.
    cache.insert(0, 0);
    assert!(cache.invalidate(&0));
    assert_eq!((cache.len(), cache.weighted_size()), (1, Some(1)));
    cache.invalidate_all();
    assert_eq!((cache.len(), cache.weighted_size()), (0, Some(0)));
}

/// Many weightless values in a bounded cache: none is a candidate, so admitting a heavy
/// value never loops over them, and they all stay.
#[test]
fn weightless_values_do_not_count_and_are_not_candidates() {
    let (cache, _log) = weighed(2);
    for k in 0..1000 {
        cache.insert(k, 0);
    }
    cache.insert(5000, 2);
    cache.insert(5001, 1);
    assert_eq!(cache.weighted_size(), Some(1));
    assert_eq!(cache.len(), 1001);
    assert!((0..1000).all(|k| cache.contains_key(&k)));
}

// ---------------------------------------------------------------------------------------
// 12 (issue #12). A panicking weigher strands no caller and leaves the books exact.
// ---------------------------------------------------------------------------------------

/// The weight at which `weighed_panicky`'s weigher panics.
const POISON: u32 = 13;

/// As `weighed`, but the weigher panics on the value `POISON`.
fn weighed_panicky(capacity: u64) -> (Cache<u64, u32, String>, Log) {
    quiet_expected_panics();
    let log: Log = Arc::default();
    let sink = Arc::clone(&log);
    let cache = Cache::builder()
        .max_capacity(capacity)
        .weigher(|_, v: &u32| {
            if *v == POISON {
                std::panic::panic_any(WEIGHER_PANIC);
            }
            *v
        })
        .eviction_listener(move |k: &u64, v: &u32, cause| {
            sink.lock().unwrap().push((*k, *v, cause))
        })
        .build();
    (cache, log)
}

#[test]
fn a_weigher_panicking_on_insert_refuses_the_value_and_keeps_the_books() {
    let (cache, log) = weighed_panicky(10);
    cache.insert(1, 2);
    let inserted = catch_unwind(AssertUnwindSafe(|| cache.insert(2, POISON)));
    assert!(inserted.is_ok(), "the weigher's panic escaped `insert`");
    assert!(
        !cache.contains_key(&2),
        "a value of unknown weight was kept"
    );
    assert_eq!((cache.len(), cache.weighted_size()), (1, Some(2)));
    // Replacing with a value the weigher panics on: the old value goes, the new is refused.
    let replaced = catch_unwind(AssertUnwindSafe(|| cache.insert(1, POISON)));
    assert!(replaced.is_ok(), "the weigher's panic escaped `insert`");
    assert_eq!((cache.len(), cache.weighted_size()), (0, Some(0)));
    let stats = cache.stats();
    assert_eq!((stats.evicted, stats.invalidated), (2, 1));
    assert_eq!(stats.weigher_panics, 2);
    assert_eq!(
        *log.lock().unwrap(),
        [
            (2, POISON, RemovalCause::Size),
            (1, 2, RemovalCause::Replaced),
            (1, POISON, RemovalCause::Size)
        ]
    );
    // The cache goes on working.
    cache.insert(3, 10);
    assert_eq!((cache.len(), cache.weighted_size()), (1, Some(10)));
}

#[test]
fn a_weigher_panicking_on_replace_if_refuses_the_value_and_keeps_the_books() {
    let (cache, log) = weighed_panicky(10);
    cache.insert(1, 2);
    let replaced = catch_unwind(AssertUnwindSafe(|| cache.replace_if(&1, POISON, |_| true)));
    assert!(
        matches!(replaced, Ok(true)),
        "the weigher's panic escaped `replace_if`"
    );
    assert!(!cache.contains_key(&1));
    assert_eq!((cache.len(), cache.weighted_size()), (0, Some(0)));
    assert_eq!(cache.stats().weigher_panics, 1);
    assert_eq!(
        *log.lock().unwrap(),
        [
            (1, 2, RemovalCause::Replaced),
            (1, POISON, RemovalCause::Size)
        ]
    );
}

/// The weigher runs when a loaded value is admitted, inside the `poll` of whichever caller
/// gets there first: every caller of the load still gets its value, none unwinds, and the
/// value (whose weight is unknown) is not kept, so the next read loads again.
#[test]
fn a_weigher_panicking_on_a_loaded_value_strands_no_caller_and_keeps_the_books() {
    let (cache, log) = weighed_panicky(10);
    cache.insert(1, 2);
    let (go, gate) = futures::channel::oneshot::channel::<()>();
    let got = catch_unwind(AssertUnwindSafe(|| {
        futures::executor::block_on(async {
            futures::join!(
                cache.get_with(7, move || async move {
                    gate.await.ok();
                    Ok(POISON)
                }),
                cache.get_with(7, || async { Ok(0) }),
                async { go.send(()).unwrap() },
            )
        })
    }));
    let Ok((a, b, ())) = got else {
        panic!("the weigher's panic reached a caller of the load");
    };
    assert_eq!((a, b), (Ok(POISON), Ok(POISON)));
    assert!(
        !cache.contains_key(&7),
        "a value of unknown weight was kept"
    );
    assert_eq!((cache.len(), cache.weighted_size()), (1, Some(2)));
    let stats = cache.stats();
    assert_eq!(
        (stats.loads_ok, stats.evicted, stats.weigher_panics),
        (1, 1, 1)
    );
    assert_eq!(*log.lock().unwrap(), [(7, POISON, RemovalCause::Size)]);
    let again = futures::executor::block_on(cache.get_with(7, || async { Ok(3) }));
    assert_eq!(again, Ok(3));
    assert_eq!((cache.len(), cache.weighted_size()), (2, Some(5)));
}
