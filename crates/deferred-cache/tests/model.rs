//! Property tests: random sequences of operations on one thread (`block_on`, or one poll
//! with a no-op waker) against a sequential model.
//!
//! * **Unbounded**: every result equals a `HashMap<u8, u32>` model's, the `Source` of each
//!   `get_with` included (`Hit` when present, with the loader not called; `Loaded` when
//!   absent), and so does every counter after every operation.
//! * **Bounded** (capacity 1..=16): eviction is not modelled, so invariants only. After every
//!   operation: `len() <= capacity` (no load is in flight between operations);
//!   `weighted_size() == Some(len())`; every key holds nothing or the value last written to
//!   it (inserted or loaded), never an older or another key's one; reads hit exactly when the
//!   key was present just before, and the read counters follow; entries are accounted for:
//!   `inserts + loads_ok == len + evicted + invalidated` (each insert or successful load adds
//!   one entry, each eviction, invalidation or replacement removes one); and an operation
//!   evicts only to make room: at most one entry (all weigh 1), and then the cache is full.

#![allow(clippy::std_instead_of_core)] // tests run on std; `core::` paths matter in the library only.

use std::{cell::Cell, collections::HashMap, sync::Arc, task::Poll, time::Duration};

use deferred_cache::{Cache, LoadError, Source, Stats};
use deferred_test_support::poll_once;
use futures::executor::block_on;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    /// `get_with` whose loader returns `Ok(v)`.
    LoadOk(u8, u32),
    /// `get_with` whose loader returns `Err(e)`.
    LoadErr(u8, u32),
    /// `get_with` whose loader never finishes, polled once and dropped.
    LoadCancelled(u8),
    Insert(u8, u32),
    Peek(u8),
    GetIfPresent(u8),
    Invalidate(u8),
    InvalidateAll,
    Len,
    ContainsKey(u8),
}

fn op(keys: u8) -> impl Strategy<Value = Op> {
    let k = 0..keys;
    prop_oneof![
        4 => (k.clone(), any::<u32>()).prop_map(|(k, v)| Op::LoadOk(k, v)),
        2 => (k.clone(), any::<u32>()).prop_map(|(k, e)| Op::LoadErr(k, e)),
        1 => k.clone().prop_map(Op::LoadCancelled),
        3 => (k.clone(), any::<u32>()).prop_map(|(k, v)| Op::Insert(k, v)),
        2 => k.clone().prop_map(Op::Peek),
        2 => k.clone().prop_map(Op::GetIfPresent),
        2 => k.clone().prop_map(Op::Invalidate),
        1 => Just(Op::InvalidateAll),
        1 => Just(Op::Len),
        1 => k.prop_map(Op::ContainsKey),
    ]
}

type TestCache = Cache<u8, u32, u32>;
type Outcome = (Result<u32, LoadError<u32>>, Source);

/// `get_with(k)` with a loader that returns `result`; also whether the loader was called.
fn load(cache: &TestCache, k: u8, result: Result<u32, u32>) -> (Outcome, bool) {
    let called = Cell::new(false);
    let out = block_on(
        cache
            .get_with(k, || {
                called.set(true);
                async move { result }
            })
            .with_source(),
    );
    (out, called.get())
}

/// `get_with(k)` with a loader that never finishes, polled once and dropped; also `len()`
/// while it was pending.
fn load_cancelled(cache: &TestCache, k: u8) -> (Poll<Outcome>, usize) {
    let mut get = cache
        .get_with(k, futures::future::pending::<Result<u32, u32>>)
        .with_source();
    let polled = poll_once(&mut get);
    let len = cache.len();
    drop(get);
    (polled, len)
}

/// The counters, with the one that depends on time zeroed.
fn counters(cache: &TestCache) -> Stats {
    let mut stats = cache.stats();
    stats.load_time = Duration::ZERO;
    stats
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: if cfg!(miri) { 4 } else { 256 },
        // No regression files: they need the file system, which miri isolates.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn unbounded_matches_a_sequential_model(ops in proptest::collection::vec(op(8), 1..60)) {
        let cache: TestCache = Cache::new();
        let mut model: HashMap<u8, u32> = HashMap::new();
        let mut expect = Stats::default();
        for op in ops {
            match op {
                Op::LoadOk(k, v) => {
                    let (out, called) = load(&cache, k, Ok(v));
                    match model.get(&k) {
                        Some(&old) => {
                            expect.hits += 1;
                            prop_assert_eq!(out, (Ok(old), Source::Hit));
                            prop_assert!(!called, "the loader ran on a hit");
                        }
                        None => {
                            expect.misses += 1;
                            expect.loads_ok += 1;
                            model.insert(k, v);
                            prop_assert_eq!(out, (Ok(v), Source::Loaded));
                            prop_assert!(called);
                        }
                    }
                }
                Op::LoadErr(k, e) => {
                    let (out, called) = load(&cache, k, Err(e));
                    match model.get(&k) {
                        Some(&old) => {
                            expect.hits += 1;
                            prop_assert_eq!(out, (Ok(old), Source::Hit));
                            prop_assert!(!called, "the loader ran on a hit");
                        }
                        None => {
                            expect.misses += 1;
                            expect.loads_failed += 1;
                            prop_assert_eq!(out, (Err(LoadError::Failed(Arc::new(e))), Source::Loaded));
                            prop_assert!(called);
                        }
                    }
                }
                Op::LoadCancelled(k) => {
                    let (polled, len) = load_cancelled(&cache, k);
                    match model.get(&k) {
                        Some(&old) => {
                            expect.hits += 1;
                            prop_assert_eq!(polled, Poll::Ready((Ok(old), Source::Hit)));
                            prop_assert_eq!(len, model.len());
                        }
                        None => {
                            expect.misses += 1;
                            expect.loads_cancelled += 1;
                            prop_assert!(polled.is_pending());
                            // The load in flight is an entry until its last caller goes.
                            prop_assert_eq!(len, model.len() + 1);
                        }
                    }
                }
                Op::Insert(k, v) => {
                    cache.insert(k, v);
                    if model.insert(k, v).is_some() {
                        expect.invalidated += 1;
                    }
                }
                Op::Peek(k) => prop_assert_eq!(cache.peek(&k), model.get(&k).copied()),
                Op::GetIfPresent(k) => {
                    let expected = model.get(&k).copied();
                    match expected {
                        Some(_) => expect.hits += 1,
                        None => expect.misses += 1,
                    }
                    prop_assert_eq!(cache.get_if_present(&k), expected);
                }
                Op::Invalidate(k) => {
                    let removed = model.remove(&k).is_some();
                    expect.invalidated += u64::from(removed);
                    prop_assert_eq!(cache.invalidate(&k), removed);
                }
                Op::InvalidateAll => {
                    expect.invalidated += model.len() as u64;
                    model.clear();
                    cache.invalidate_all();
                }
                Op::Len => prop_assert_eq!(cache.len(), model.len()),
                Op::ContainsKey(k) => {
                    prop_assert_eq!(cache.contains_key(&k), model.contains_key(&k));
                }
            }
            prop_assert_eq!(cache.len(), model.len());
            prop_assert_eq!(cache.is_empty(), model.is_empty());
            prop_assert_eq!(counters(&cache), expect);
        }
        prop_assert_eq!(cache.capacity(), None);
        prop_assert_eq!(cache.weighted_size(), None);
        for k in 0..8 {
            prop_assert_eq!(cache.peek(&k), model.get(&k).copied());
        }
    }

    #[test]
    fn bounded_keeps_its_invariants(
        capacity in 1u64..=16,
        ops in proptest::collection::vec(op(24), 1..120),
    ) {
        let cache: TestCache = Cache::bounded(capacity);
        prop_assert_eq!(cache.capacity(), Some(capacity));
        // The value last written to each key (it may since have been evicted).
        let mut last: HashMap<u8, u32> = HashMap::new();
        // Entries added: inserts and successful loads.
        let mut added = 0u64;
        // Read counters, which do not depend on eviction given what was present.
        let (mut hits, mut misses) = (0u64, 0u64);
        for op in ops {
            let before = cache.stats();
            // What the key held just before (`peek` counts nothing and moves nothing).
            // (Whether that value is the right one was checked after the last operation.)
            let present = op_key(&op).and_then(|k| cache.peek(&k));
            let len_before = cache.len();
            match op {
                Op::LoadOk(k, v) => {
                    let (out, called) = load(&cache, k, Ok(v));
                    match present {
                        Some(old) => {
                            hits += 1;
                            prop_assert_eq!(out, (Ok(old), Source::Hit));
                            prop_assert!(!called, "the loader ran on a hit");
                        }
                        None => {
                            misses += 1;
                            added += 1;
                            last.insert(k, v);
                            prop_assert_eq!(out, (Ok(v), Source::Loaded));
                            prop_assert!(called);
                        }
                    }
                }
                Op::LoadErr(k, e) => {
                    let (out, _) = load(&cache, k, Err(e));
                    match present {
                        Some(old) => {
                            hits += 1;
                            prop_assert_eq!(out, (Ok(old), Source::Hit));
                        }
                        None => {
                            misses += 1;
                            prop_assert_eq!(out, (Err(LoadError::Failed(Arc::new(e))), Source::Loaded));
                            prop_assert_eq!(cache.peek(&k), None, "a failed load left a value");
                        }
                    }
                }
                Op::LoadCancelled(k) => {
                    let (polled, len) = load_cancelled(&cache, k);
                    match present {
                        Some(old) => {
                            hits += 1;
                            prop_assert_eq!(polled, Poll::Ready((Ok(old), Source::Hit)));
                        }
                        None => {
                            misses += 1;
                            prop_assert!(polled.is_pending());
                            prop_assert_eq!(len, len_before + 1);
                            prop_assert_eq!(cache.len(), len_before, "a cancelled load left its entry");
                        }
                    }
                }
                Op::Insert(k, v) => {
                    cache.insert(k, v);
                    added += 1;
                    last.insert(k, v);
                }
                Op::Peek(_) => {} // `present` was a peek; the checks below cover it.
                Op::GetIfPresent(k) => {
                    match present {
                        Some(_) => hits += 1,
                        None => misses += 1,
                    }
                    prop_assert_eq!(cache.get_if_present(&k), present);
                }
                Op::Invalidate(k) => {
                    prop_assert_eq!(cache.invalidate(&k), present.is_some());
                    last.remove(&k);
                }
                Op::InvalidateAll => {
                    cache.invalidate_all();
                    last.clear();
                    prop_assert!(cache.is_empty());
                    prop_assert_eq!(cache.stats().invalidated - before.invalidated, len_before as u64);
                }
                Op::Len => {}
                Op::ContainsKey(k) => prop_assert_eq!(cache.contains_key(&k), present.is_some()),
            }
            let len = cache.len();
            let stats = cache.stats();
            prop_assert!(len as u64 <= capacity, "len {} over capacity {}", len, capacity);
            prop_assert_eq!(cache.weighted_size(), Some(len as u64));
            for k in 0..24u8 {
                if let Some(v) = cache.peek(&k) {
                    prop_assert_eq!(Some(&v), last.get(&k), "key {} holds a value never last written to it", k);
                }
            }
            prop_assert_eq!((stats.hits, stats.misses), (hits, misses));
            prop_assert_eq!(stats.coalesced, 0);
            prop_assert_eq!(stats.loads_panicked, 0);
            prop_assert_eq!(
                added,
                len as u64 + stats.evicted + stats.invalidated,
                "entries added vs held + evicted + invalidated: {:?}", stats
            );
            let evicted = stats.evicted - before.evicted;
            prop_assert!(evicted <= 1, "{} evicted by one {:?}", evicted, op);
            if evicted > 0 {
                prop_assert_eq!(len as u64, capacity, "evicted by {:?} without need", op);
            }
        }
    }
}

/// The key an operation reads or writes, if it has one.
fn op_key(op: &Op) -> Option<u8> {
    match *op {
        Op::LoadOk(k, _)
        | Op::LoadErr(k, _)
        | Op::LoadCancelled(k)
        | Op::Insert(k, _)
        | Op::Peek(k)
        | Op::GetIfPresent(k)
        | Op::Invalidate(k)
        | Op::ContainsKey(k) => Some(k),
        Op::InvalidateAll | Op::Len => None,
    }
}
