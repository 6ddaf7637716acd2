//! Regressions of issue #11, points 8 to 11: capacity belongs to the cache (not to a policy
//! shard), a value too heavy for it is refused without touching anything else, a panicking
//! eviction listener leaves the books exact, and weightless values at capacity 0 and above;
//! and (issue #12) a panicking weigher strands no caller and leaves the books exact; and the
//! review of the #12 additions (module `review_12`); and review 13's findings in the
//! `tracing` feature's blocking loads (module `review_13`).

#![allow(clippy::std_instead_of_core)]

mod common;

use std::{
    panic::{catch_unwind, AssertUnwindSafe},
    sync::{
        atomic::{AtomicUsize, Ordering::SeqCst},
        Arc, Mutex,
    },
};

use deferred_cache::{Cache, RemovalCause};
use deferred_test_support::quiet_panics_saying;

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
    quiet_panics_saying(LISTENER_PANIC);
    quiet_panics_saying(WEIGHER_PANIC);
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

// ---------------------------------------------------------------------------------------
// The review of the #12 additions (`get_with_blocking`, `get_or_insert_with`,
// `retain` / `invalidate_entries_if`): each test failed before its fix (F1 to F5, and F2's
// control, which passed). Events are ordered with gates, channels and a key whose `Hash`
// can pause one thread; sleeps only bound a hang (`recv_timeout`).
// ---------------------------------------------------------------------------------------

mod review_12 {
    use std::{
        cell::Cell as StdCell,
        future::Future,
        hash::{Hash, Hasher},
        panic::{catch_unwind, AssertUnwindSafe},
        pin::Pin,
        sync::{
            atomic::{AtomicBool, Ordering::SeqCst},
            mpsc, Arc, Mutex,
        },
        task::{Context, Poll, Wake, Waker},
        thread,
        time::Duration,
    };

    use crate::common::{poll_once, Gate};
    use deferred_cache::{Cache, LoadError, RemovalCause};
    use futures::executor::block_on;

    /// How long a caller may take before it is deemed parked for good.
    const HANG: Duration = Duration::from_secs(5);

    fn quiet_panics() {
        // Expected panics are noise; any other panic still prints.
        deferred_test_support::quiet_panics_containing("review:");
    }

    // ---------------------------------------------------------------------------------------
    // F1. get_with_blocking: a panic in `V::clone` after the loader returned stranded the key.
    // ---------------------------------------------------------------------------------------

    /// A value whose `Clone` panics if it says so.
    #[derive(Debug)]
    struct Touchy {
        v: u32,
        clone_panics: bool,
    }

    impl Clone for Touchy {
        fn clone(&self) -> Self {
            assert!(!self.clone_panics, "review: Touchy refuses to be cloned");
            Touchy {
                v: self.v,
                clone_panics: false,
            }
        }
    }

    /// blocking.rs: `load.finished = true; drop(load)` disarms the `Running` guard, then
    /// `mine.succeed(Stored::new(value.clone()))` runs `V::clone`. If it panics, the pending
    /// `Kept` cell stays in the map, never completed: every later caller of the key (blocking
    /// or async) joins it and waits forever.
    #[test]
    fn blocking_load_whose_value_clone_panics_strands_no_caller() {
        quiet_panics();
        let cache: Cache<u32, Touchy, String> = Cache::new();
        let c = cache.clone();
        let first = thread::spawn(move || {
            c.get_with_blocking(1, || {
                Ok(Touchy {
                    v: 1,
                    clone_panics: true,
                })
            })
        });
        assert!(
            first.join().is_err(),
            "the first caller unwinds from V::clone"
        );

        let (tx, rx) = mpsc::channel();
        let c = cache.clone();
        thread::spawn(move || {
            let got = c.get_with_blocking(1, || {
                Ok(Touchy {
                    v: 2,
                    clone_panics: false,
                })
            });
            let _ = tx.send(got.map(|t| t.v));
        });
        let got = rx.recv_timeout(HANG);
        assert!(
            got.is_ok(),
            "a later get_with_blocking of the key is parked for good (len = {}, stats = {:?})",
            cache.len(),
            cache.stats()
        );
    }

    // ---------------------------------------------------------------------------------------
    // F4. get_with_blocking whose load get_or_insert_with settled, then the loader fails
    // or panics: the settled value was removed from the map with no bookkeeping.
    // ---------------------------------------------------------------------------------------

    type Events = Arc<Mutex<Vec<(u32, u32, RemovalCause)>>>;

    fn listened(capacity: u64) -> (Cache<u32, u32, String>, Events) {
        let events: Events = Arc::default();
        let e = Arc::clone(&events);
        let cache = Cache::builder()
            .max_capacity(capacity)
            .eviction_listener(move |k: &u32, v: &u32, cause| {
                e.lock().unwrap().push((*k, *v, cause))
            })
            .build();
        (cache, events)
    }

    /// Runs `get_with_blocking(1)` on a thread whose loader waits until `get_or_insert_with(1,
    /// || 5)` has settled the key, then ends with `end` (an error, or a panic).
    fn settle_then(end: fn() -> Result<u32, String>) -> (Cache<u32, u32, String>, Events) {
        let (cache, events, _) = settle_then_with(end);
        (cache, events)
    }

    /// What a blocking caller's thread gave: `Err` if it unwound.
    type Joined = thread::Result<Result<u32, LoadError<String>>>;

    /// `settle_then`, with what the blocking caller got.
    fn settle_then_with(
        end: fn() -> Result<u32, String>,
    ) -> (Cache<u32, u32, String>, Events, Joined) {
        let (cache, events) = listened(10);
        let (started_tx, started_rx) = mpsc::channel();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let c = cache.clone();
        let blocking = thread::spawn(move || {
            c.get_with_blocking(1, move || {
                started_tx.send(()).unwrap();
                go_rx.recv().unwrap();
                end()
            })
        });
        started_rx.recv().unwrap();
        assert_eq!(cache.get_or_insert_with(1, || 5), 5);
        // Documented: make's value settles the key, is stored and admitted.
        assert_eq!(cache.peek(&1), Some(5));
        assert_eq!((cache.len(), cache.weighted_size()), (1, Some(1)));
        go_tx.send(()).unwrap();
        let got = blocking.join();
        (cache, events, got)
    }

    fn assert_books(cache: &Cache<u32, u32, String>, events: &Events) {
        let stats = cache.stats();
        let told = events.lock().unwrap().clone();
        eprintln!(
            "after: peek = {:?}, len = {}, weighted_size = {:?}, invalidated = {}, evicted = {}, \
             listener = {:?}",
            cache.peek(&1),
            cache.len(),
            cache.weighted_size(),
            stats.invalidated,
            stats.evicted,
            told
        );
        assert_eq!(
            cache.weighted_size(),
            Some(cache.len() as u64),
            "weighted_size counts a value that is no longer in the map"
        );
        // One value went in (get_or_insert_with's): either it is still there, or its leaving
        // was counted and told.
        let left = u64::from(cache.is_empty());
        assert_eq!(
            stats.invalidated + stats.evicted,
            left,
            "a removal no counter saw"
        );
        assert_eq!(
            told.len() as u64,
            left,
            "a removal the listener was not told of"
        );
    }

    /// blocking.rs Err arm: `remove_if(&key, ptr_eq(mine))` runs without checking that `mine`
    /// still pending: get_or_insert_with completed it with its (admitted) value, so that value
    /// is taken out of the map, never retired from the policy, not counted, not told.
    #[test]
    fn blocking_load_failing_after_get_or_insert_with_settled_it_keeps_the_value_and_the_books() {
        let (cache, events) = settle_then(|| Err("down".to_string()));
        assert_books(&cache, &events);
    }

    /// The same through the `Running` guard (loader panics): `remove_if` + `die()`.
    #[test]
    fn blocking_load_panicking_after_get_or_insert_with_settled_it_keeps_the_value_and_the_books() {
        quiet_panics();
        let (cache, events) = settle_then(|| panic!("review: loader panics"));
        assert_books(&cache, &events);
    }

    /// What the fix documents: the value `get_or_insert_with` settled the key with is the
    /// key's, and the blocking caller whose loader then failed gets it too, as the load's
    /// other callers do; its load is counted as failed (by how the loader ended).
    #[test]
    fn blocking_caller_whose_loader_fails_after_get_or_insert_with_settled_it_gets_the_value() {
        let (cache, _, got) = settle_then_with(|| Err("down".to_string()));
        assert_eq!(got.unwrap(), Ok(5));
        assert_eq!(cache.peek(&1), Some(5));
        assert_eq!((cache.stats().loads_failed, cache.stats().loads()), (1, 1));
    }

    // ---------------------------------------------------------------------------------------
    // F5. invalidate_entries_if / retain: a panicking predicate after a shard was processed.
    // ---------------------------------------------------------------------------------------

    /// cache.rs `invalidate_entries_if`: `map.extract_if` removes shard after shard; a panic in
    /// `pred` in a later shard unwinds out of `extract_if`, dropping the `Vec` of entries
    /// already removed: they leave the map but are never retired (weighted_size keeps them),
    /// counted (`invalidated`) or told to the listener.
    #[test]
    fn a_panicking_invalidate_entries_if_predicate_books_what_it_removed() {
        quiet_panics();
        let (cache, events) = listened(1_000);
        for k in 0..200 {
            cache.insert(k, k);
        }
        let mut calls = 0;
        let result = catch_unwind(AssertUnwindSafe(|| {
            cache.invalidate_entries_if(|_, _| {
                calls += 1;
                assert!(calls < 200, "review: predicate panics");
                true
            })
        }));
        assert!(result.is_err());
        let (len, stats) = (cache.len() as u64, cache.stats());
        eprintln!(
            "after: len = {len}, weighted_size = {:?}, invalidated = {}, told = {}",
            cache.weighted_size(),
            stats.invalidated,
            events.lock().unwrap().len()
        );
        assert!(len < 200, "precondition: earlier shards were emptied");
        assert_eq!(
            cache.weighted_size(),
            Some(len),
            "removed values still weighed"
        );
        assert_eq!(stats.invalidated, 200 - len, "removed values not counted");
    }

    // ---------------------------------------------------------------------------------------
    // F3. get_or_insert_with pinned someone else's load as `Kept`: its error was then cached.
    // ---------------------------------------------------------------------------------------

    thread_local! {
        /// Hash calls on this thread until the key pauses it (0: never).
        static ARM: StdCell<u32> = const { StdCell::new(0) };
    }

    /// Pauses the thread that hashes a key when `ARM` runs out, until the test resumes it.
    struct Pause {
        paused: Mutex<Option<mpsc::Sender<()>>>,
        resume: Mutex<Option<mpsc::Receiver<()>>>,
    }

    #[derive(Clone)]
    struct GatedKey {
        id: u32,
        pause: Arc<Pause>,
    }

    impl PartialEq for GatedKey {
        fn eq(&self, other: &Self) -> bool {
            self.id == other.id
        }
    }

    impl Eq for GatedKey {}

    impl Hash for GatedKey {
        fn hash<H: Hasher>(&self, h: &mut H) {
            let n = ARM.with(StdCell::get);
            if n > 0 {
                ARM.with(|a| a.set(n - 1));
                if n == 1 {
                    let paused = self.pause.paused.lock().unwrap().take().unwrap();
                    paused.send(()).unwrap();
                    let resume = self.pause.resume.lock().unwrap().take().unwrap();
                    resume.recv().unwrap();
                }
            }
            self.id.hash(h);
        }
    }

    /// cache.rs `get_or_insert_with`: after `add_value` stored make's value, it looks the key
    /// up again with `cell_if_present` (a `Lookup::Hold` lookup, which makes the entry `Kept`).
    /// If the value was invalidated and another caller started a load in between, that load's
    /// transient entry becomes `Kept`: when it fails, its error is no longer removed (neither
    /// by its waiters' settle nor by `find(Live)`), and every later `get_with` is served the
    /// cached error instead of loading again.
    ///
    /// The pause: before the fix, `get_or_insert_with` hashed the key in `add_value`, then in
    /// `cell_if_present`; `make` arms the key to pause on the second. Since the fix it admits
    /// the cell it stored, so a bounded cache hashes the key again to admit it (the pause
    /// lands there), and an unbounded one does not (the window is after the call).
    #[test]
    fn get_or_insert_with_does_not_pin_a_later_load_so_its_error_is_not_cached() {
        later_load_not_pinned(Cache::new());
    }

    /// The same, bounded: the pause lands in the admission of the stored value, which must
    /// neither admit nor claim the later load's entry.
    #[test]
    fn bounded_get_or_insert_with_does_not_pin_a_later_load_so_its_error_is_not_cached() {
        let cache = later_load_not_pinned(Cache::bounded(10));
        assert_eq!(cache.weighted_size(), Some(cache.len() as u64));
    }

    fn later_load_not_pinned(cache: Cache<GatedKey, u32, String>) -> Cache<GatedKey, u32, String> {
        let (paused_tx, paused_rx) = mpsc::channel();
        let (resume_tx, resume_rx) = mpsc::channel();
        let key = GatedKey {
            id: 1,
            pause: Arc::new(Pause {
                paused: Mutex::new(Some(paused_tx)),
                resume: Mutex::new(Some(resume_rx)),
            }),
        };
        let (c, k) = (cache.clone(), key.clone());
        let inserter = thread::spawn(move || {
            let got = c.get_or_insert_with(k.clone(), || {
                ARM.with(|a| a.set(2));
                5
            });
            // If the call hashed the key only once after `make` (nothing left to look up once
            // its value is stored), it never paused: the window is then after it returned,
            // which the rest of the test goes through all the same.
            ARM.with(|a| a.set(0));
            if let Some(paused) = k.pause.paused.lock().unwrap().take() {
                paused.send(()).unwrap();
            }
            got
        });
        // The inserter stored 5 and is about to look the key up again (or has returned).
        paused_rx.recv().unwrap();
        assert!(cache.invalidate(&key));
        let gate = Gate::new();
        let g = gate.clone();
        let mut load = cache.get_with(key.clone(), move || async move {
            g.wait().await;
            Err::<u32, String>("down".to_string())
        });
        assert!(poll_once(&mut load).is_pending(), "a new load in flight");
        resume_tx.send(()).unwrap();
        assert_eq!(inserter.join().unwrap(), 5);
        gate.open();
        let mut outcome = Poll::Pending;
        for _ in 0..10 {
            outcome = poll_once(&mut load);
            if outcome.is_ready() {
                break;
            }
        }
        assert!(
            matches!(outcome, Poll::Ready(Err(LoadError::Failed(_)))),
            "the load failed: {outcome:?}"
        );
        drop(load);
        eprintln!("after the failed load: len = {}", cache.len());
        // Errors are not kept: the next read loads again.
        let next = block_on(cache.get_with(key.clone(), || async { Ok(7) }));
        assert_eq!(next, Ok(7), "a failed load's error was cached");
        cache
    }

    // ---------------------------------------------------------------------------------------
    // F6. get_or_insert_with returned a value it had not stored.
    // ---------------------------------------------------------------------------------------

    /// A waker that, once armed, calls `get_or_insert_with(1, || 5)` (once) when woken and
    /// keeps what it returned: user code that runs the instant a load's cell completes,
    /// before the load's entry is settled.
    struct InsertOnWake {
        cache: Cache<u32, u32, String>,
        /// Set by the load as it returns: wakes before that do nothing.
        armed: Arc<AtomicBool>,
        got: Mutex<Option<u32>>,
    }

    impl Wake for InsertOnWake {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }

        fn wake_by_ref(self: &Arc<Self>) {
            let mut got = self.got.lock().unwrap();
            if got.is_none() && self.armed.load(SeqCst) {
                *got = Some(self.cache.get_or_insert_with(1, || 5));
            }
        }
    }

    /// cache.rs `get_or_insert_with`: `add_value` refuses a complete cell, and the fallback
    /// `peek(&key).unwrap_or(value)` then returned `make`'s value, stored nowhere, when the
    /// cell found was a load that had just failed (as when it is being completed: the loom
    /// race). Insert-if-absent must return the value stored: a failed load is no value, so
    /// `make`'s value is stored in its place.
    ///
    /// The load is pending (waking no one) until the test lets it fail: the leader and then
    /// the joiner poll it, the joiner with a waker that runs `get_or_insert_with` when the
    /// failure wakes it; then the leader polls it again, and it fails.
    #[test]
    fn get_or_insert_with_meeting_a_just_failed_load_returns_what_it_stored() {
        let cache: Cache<u32, u32, String> = Cache::new();
        let armed = Arc::new(AtomicBool::new(false));
        let fail = Arc::new(AtomicBool::new(false));
        let (a, f) = (Arc::clone(&armed), Arc::clone(&fail));
        let mut leader = cache.get_with(1, move || {
            std::future::poll_fn(move |_| {
                if !f.load(SeqCst) {
                    return Poll::Pending;
                }
                a.store(true, SeqCst);
                Poll::Ready(Err::<u32, String>("down".to_string()))
            })
        });
        assert!(poll_once(&mut leader).is_pending());
        let inserter = Arc::new(InsertOnWake {
            cache: cache.clone(),
            armed,
            got: Mutex::new(None),
        });
        let waker = Waker::from(Arc::clone(&inserter));
        let mut joiner = cache.get_with(1, || async { Ok(9) });
        let polled = Pin::new(&mut joiner).poll(&mut Context::from_waker(&waker));
        assert!(polled.is_pending(), "the joiner waits: {polled:?}");
        fail.store(true, SeqCst);
        let outcome = poll_once(&mut leader);
        assert!(
            matches!(outcome, Poll::Ready(Err(LoadError::Failed(_)))),
            "the load failed: {outcome:?}"
        );
        let got = *inserter.got.lock().unwrap();
        assert_eq!(got, Some(5), "the failure woke the joiner, which inserted");
        assert_eq!(
            cache.peek(&1),
            got,
            "get_or_insert_with returned a value not stored"
        );
        drop((leader, joiner));
        assert_eq!(cache.peek(&1), Some(5));
    }

    // ---------------------------------------------------------------------------------------
    // F2. A blocking joiner drove an async load without entering the re-entrancy guard.
    // ---------------------------------------------------------------------------------------

    /// A load whose future, once the gate opens, reads its own key through `get_with`.
    fn reentrant_load(
        cache: &Cache<u32, u32, String>,
        gate: &Gate,
    ) -> impl std::future::Future<Output = Result<u32, String>> + Send + 'static {
        let (c, opened) = (cache.clone(), gate.wait());
        async move {
            opened.await;
            match c.get_with(1, || async { Ok(0) }).await {
                Ok(v) => Ok(v + 100),
                Err(e) => Err(format!("inner: {e:?}")),
            }
        }
    }

    /// Control: driven by an async caller, the re-entrant read gets `Reentrant`, as documented.
    #[test]
    fn an_async_driver_of_a_reentrant_load_gets_reentrant() {
        let cache: Cache<u32, u32, String> = Cache::new();
        let gate = Gate::new();
        let load = reentrant_load(&cache, &gate);
        let mut leader = cache.get_with(1, move || load);
        assert!(poll_once(&mut leader).is_pending());
        gate.open();
        let got = poll_once(&mut leader);
        assert!(
            matches!(&got, Poll::Ready(Err(LoadError::Failed(e))) if **e == "inner: Reentrant"),
            "{got:?}"
        );
    }

    /// blocking.rs joiner arm: `block_on(get)` polls the map's `Get` (which drives the async
    /// computation on this thread) without `reentrancy::enter(id)`, unlike `GetWith::poll_with`.
    /// When the load re-reads its own key, the inner `get_with` does not see `is_inside`, waits
    /// on the computation this very thread is running, and the thread parks forever (the
    /// leader, stalled, never polls again).
    #[test]
    fn a_blocking_joiner_driving_a_reentrant_async_load_gets_reentrant_not_a_hang() {
        let cache: Cache<u32, u32, String> = Cache::new();
        let gate = Gate::new();
        let load = reentrant_load(&cache, &gate);
        let mut leader = cache.get_with(1, move || load);
        assert!(
            poll_once(&mut leader).is_pending(),
            "the leader stalls from here on"
        );
        let (tx, rx) = mpsc::channel();
        let c = cache.clone();
        thread::spawn(move || {
            let _ = tx.send(c.get_with_blocking(1, || Ok(9)));
        });
        // Only the joining thread can drive the load now, whenever it polls.
        gate.open();
        let got = rx.recv_timeout(HANG);
        assert!(
            got.is_ok(),
            "the blocking joiner is parked for good (stats = {:?})",
            cache.stats()
        );
        drop(leader);
    }
}

/// Review 13: with the `tracing` feature, `get_with_blocking` ran subscriber code (the
/// `enabled!` check in `trace::Load::new`, and `new_span` in `trace::Load::start`) after the
/// caller's pending cell was in the map and before the `Running` guard and the re-entrancy
/// scope: a panicking subscriber stranded the key, and one reading the key deadlocked its
/// thread. The span is now opened inside both. A timeout only bounds a hang; it orders
/// nothing.
#[cfg(feature = "tracing")]
mod review_13 {
    use std::{
        panic::{catch_unwind, AssertUnwindSafe},
        sync::{
            atomic::{AtomicBool, AtomicU64, Ordering::SeqCst},
            mpsc::channel,
        },
        thread,
        time::Duration,
    };

    use deferred_cache::{Cache, LoadError};
    use tracing::{span, Event, Metadata, Subscriber};

    type C = Cache<u64, u64, String>;

    /// A subscriber that runs `on_load` when a `load` span is made.
    struct OnLoad<F: Fn() + Send + Sync + 'static> {
        on_load: F,
        next: AtomicU64,
    }

    impl<F: Fn() + Send + Sync + 'static> OnLoad<F> {
        fn new(on_load: F) -> Self {
            OnLoad {
                on_load,
                next: AtomicU64::new(1),
            }
        }
    }

    impl<F: Fn() + Send + Sync + 'static> Subscriber for OnLoad<F> {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, attrs: &span::Attributes<'_>) -> span::Id {
            if attrs.metadata().name() == "load" {
                (self.on_load)();
            }
            span::Id::from_u64(self.next.fetch_add(1, SeqCst))
        }
        fn record(&self, _: &span::Id, _: &span::Record<'_>) {}
        fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}
        fn event(&self, _: &Event<'_>) {}
        fn enter(&self, _: &span::Id) {}
        fn exit(&self, _: &span::Id) {}
    }

    /// The outcome of `get_with_blocking(key)` on another thread (no subscriber), or `None` if
    /// it has not returned within 10 s (it is stranded).
    fn blocking_get_elsewhere(
        cache: &C,
        key: u64,
        value: u64,
    ) -> Option<Result<u64, LoadError<String>>> {
        let (tx, rx) = channel();
        let cache = cache.clone();
        thread::spawn(move || {
            let _ = tx.send(cache.get_with_blocking(key, || Ok(value)));
        });
        rx.recv_timeout(Duration::from_secs(10)).ok()
    }

    /// Control: a panicking *loader* leaves the cache usable (documented).
    #[test]
    fn control_a_panicking_loader_strands_no_one() {
        let cache: C = Cache::new();
        let panicked = catch_unwind(AssertUnwindSafe(|| {
            cache.get_with_blocking(1, || -> Result<u64, String> { panic!("loader") })
        }));
        assert!(panicked.is_err());
        assert_eq!(blocking_get_elsewhere(&cache, 1, 2), Some(Ok(2)));
    }

    /// A subscriber that panics in `new_span` for the load: the load fails as a panicking loader
    /// does (the pending cell once stayed in the map, and the next caller never returned).
    #[test]
    fn a_panicking_subscriber_strands_no_key() {
        let cache: C = Cache::new();
        let armed = AtomicBool::new(true);
        let subscriber = OnLoad::new(move || {
            if armed.swap(false, SeqCst) {
                panic!("subscriber");
            }
        });
        let panicked = catch_unwind(AssertUnwindSafe(|| {
            tracing::subscriber::with_default(subscriber, || cache.get_with_blocking(1, || Ok(1)))
        }));
        assert!(
            panicked.is_err(),
            "the subscriber's panic unwinds out of the call"
        );
        assert_eq!(
            blocking_get_elsewhere(&cache, 1, 2),
            Some(Ok(2)),
            "the next caller of the key is stranded behind a load that never ran"
        );
    }

    /// A subscriber that reads the key being loaded, on the loading thread, in `new_span`: it
    /// gets `Reentrant`, as a loader doing the same does (the call once waited on its own load
    /// for ever).
    #[test]
    fn a_subscriber_reading_the_key_gets_reentrant() {
        let cache: C = Cache::new();
        let (tx, rx) = channel();
        {
            let cache = cache.clone();
            thread::spawn(move || {
                let inner_cache = cache.clone();
                let armed = AtomicBool::new(true);
                let subscriber = OnLoad::new(move || {
                    if armed.swap(false, SeqCst) {
                        let nested = inner_cache.get_with_blocking(1, || Ok(3));
                        assert_eq!(nested, Err(LoadError::Reentrant));
                    }
                });
                let got = tracing::subscriber::with_default(subscriber, || {
                    cache.get_with_blocking(1, || Ok(1))
                });
                let _ = tx.send(got);
            });
        }
        let got = rx.recv_timeout(Duration::from_secs(10));
        assert_eq!(
            got,
            Ok(Ok(1)),
            "the loading thread never returned (waits on its own load)"
        );
    }
}
