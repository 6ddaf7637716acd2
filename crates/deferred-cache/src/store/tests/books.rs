//! Seeded random runs of every write the store makes (inserts, removals, `replace_if`,
//! `put_absent`, bulk removals, `clear`, async loads that succeed, fail, find nothing, are
//! cancelled or are overtaken by a write, blocking loads), with weights that are 0, light,
//! heavier than a shard's share, heavier than the capacity, or of a weigher that panics;
//! `Store::check_books` after each one (one thread) or at the end (several).

use std::{
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst},
        Arc,
    },
    task::Poll,
};

use deferred_test_support::{poll_once, quiet_panics_saying, FixedHasher};

use crate::{
    books::tests::xorshift,
    error::Failure,
    store::{Claim, Lookup, Store, Waiter},
    RemovalCause,
};

type S = Store<u16, u32, &'static str, FixedHasher>;
type W<'a> = Waiter<'a, u16, u32, &'static str, FixedHasher>;

/// A value the weigher panics on.
const POISON: u32 = 77_777;
const WEIGHER_PANIC: &str = "books weigher panics";

/// A bounded store whose values are their own weights (`POISON` panics), with a listener
/// that counts what it is told.
fn store(capacity: u64, told: &Arc<AtomicUsize>) -> Arc<S> {
    quiet_panics_saying(WEIGHER_PANIC);
    let told = Arc::clone(told);
    Arc::new(Store::new(
        0,
        FixedHasher::default(),
        Some(capacity),
        Some(Box::new(|_: &u16, v: &u32| {
            if *v == POISON {
                std::panic::panic_any(WEIGHER_PANIC);
            }
            *v
        })),
        Some(Box::new(move |_: &u16, _: &u32, _: RemovalCause| {
            told.fetch_add(1, SeqCst);
        })),
    ))
}

/// A boxed load of these runs (and of `panics.rs`'s).
pub(super) type GatedLoad<T> =
    Pin<Box<dyn Future<Output = Result<T, Failure<&'static str>>> + Send>>;

/// A load held open until its gate opens, then returning `outcome`.
pub(super) fn gated<T: Send + 'static>(
    gate: Arc<AtomicBool>,
    outcome: Result<T, Failure<&'static str>>,
) -> GatedLoad<T> {
    let mut outcome = Some(outcome);
    Box::pin(std::future::poll_fn(move |cx| {
        if gate.load(SeqCst) {
            Poll::Ready(outcome.take().expect("polled once more after Ready"))
        } else {
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }))
}

/// A weight: 0, light, heavier than a shard's share, heavier than the capacity, or poison.
fn weight(next: &mut impl FnMut() -> u64, capacity: u64) -> u32 {
    let w = match next() % 20 {
        0 | 1 => 0,
        2 => capacity + 1 + next() % 100,
        3 => u64::from(POISON),
        4 | 5 => 300 + next() % 700,
        _ => 1 + next() % 40,
    };
    u32::try_from(w).unwrap()
}

/// One operation of a run on `store`; `open` are the loads this thread holds open.
#[allow(clippy::too_many_lines)]
fn step<'a>(
    store: &'a Arc<S>,
    next: &mut impl FnMut() -> u64,
    open: &mut Vec<(W<'a>, Arc<AtomicBool>)>,
    keys: u64,
    capacity: u64,
    may_clear: bool,
) {
    let key = u16::try_from(next() % keys).unwrap();
    let hash = store.hash(&key);
    let v = weight(next, capacity);
    match next() % 16 {
        0..=2 => {
            let weight = store.weigh(&key, &v);
            store.insert(hash, key, v, weight);
        }
        3 => {
            let cause = if next() % 2 == 0 {
                RemovalCause::Explicit
            } else {
                RemovalCause::Expired
            };
            let any = next() % 3 != 0;
            let _ = store.remove(hash, &key, |v| any || v.is_some(), cause, true);
        }
        4 => {
            let weight = store.weigh(&key, &v);
            store.replace_if(hash, &key, v, weight, Some(key), |_| true);
        }
        5 => {
            let weight = store.weigh(&key, &v);
            let _ = store.put_absent(hash, key, v, weight);
        }
        6 => {
            let _ = store.read(hash, &key, true, |v| Some(*v));
        }
        7 => {
            if may_clear && next() % 8 == 0 {
                store.clear();
            } else {
                let m = next() % 7 + 2;
                store.remove_all_if(|k, _| u64::from(*k) % m == 0);
            }
        }
        8..=10 => {
            // A load held open: it succeeds, fails, or finds nothing, later (or is
            // cancelled, or overtaken by a write meanwhile).
            let gate = Arc::new(AtomicBool::new(false));
            let outcome = match next() % 4 {
                0 => Err(Failure::error("no")),
                1 => Err(Failure::Absent),
                _ => Ok(v),
            };
            let load = gated(Arc::clone(&gate), outcome);
            match store.get_or_load(hash, key, move |_| load) {
                Lookup::Ready(_) => {}
                // A load joined is another's, behind another gate: left at once.
                Lookup::Wait(mut waiter) => {
                    if poll_once(Pin::new(&mut waiter)).is_pending() && waiter.added() {
                        open.push((waiter, gate));
                    }
                }
            }
        }
        11..=13 => {
            // One held open ends: its gate opens and it is driven, or it is dropped.
            if !open.is_empty() {
                let i = usize::try_from(next()).unwrap() % open.len();
                let (mut waiter, gate) = open.swap_remove(i);
                if next() % 4 == 0 {
                    drop(waiter);
                } else {
                    gate.store(true, SeqCst);
                    // Ready now, unless another thread's waiter is the one driving it.
                    while poll_once(Pin::new(&mut waiter)).is_pending() {
                        std::thread::yield_now();
                    }
                }
            }
        }
        _ => match store.claim(hash, key) {
            Claim::Ready(_) => {}
            Claim::Joined(mut waiter) => {
                if poll_once(Pin::new(&mut waiter)).is_pending() {
                    // Another thread's load (gated): drop the wait.
                    drop(waiter);
                }
            }
            Claim::Mine(cell, id, kept) => match next() % 3 {
                0 => {
                    if cell.fail(Failure::error("blocking")).is_ok() {
                        store.settle(hash, id, None);
                    }
                }
                1 => {
                    if cell.die() {
                        store.drop_load(hash, id);
                    }
                }
                _ => {
                    let weight = store.weigh_loaded(kept.as_ref(), &v);
                    if cell.succeed(v).is_ok() {
                        store.settle(hash, id, Some((v, weight)));
                    }
                }
            },
        },
    }
}

/// Ends the loads still open: opened and driven.
fn finish(open: Vec<(W<'_>, Arc<AtomicBool>)>) {
    for (mut waiter, gate) in open {
        gate.store(true, SeqCst);
        while poll_once(Pin::new(&mut waiter)).is_pending() {
            std::thread::yield_now();
        }
    }
}

#[test]
fn the_books_stay_exact_through_random_runs_of_the_store() {
    for seed in 1..=12 {
        let told = Arc::new(AtomicUsize::new(0));
        // 2048: several shards of 256 (one per 256 of capacity, at most the default).
        let capacity = 2_048;
        let store = store(capacity, &told);
        let mut next = xorshift(seed);
        let mut open = Vec::new();
        for _ in 0..3_000 {
            step(&store, &mut next, &mut open, 400, capacity, true);
            store.check_books();
        }
        finish(open);
        store.check_books();
        let stats = store.counters.snapshot();
        assert!(stats.evicted > 0, "seed {seed}: the run evicts");
    }
}

#[test]
fn the_books_stay_exact_in_one_small_shard() {
    for seed in 1..=12 {
        let told = Arc::new(AtomicUsize::new(0));
        let capacity = 100;
        let store = store(capacity, &told);
        assert_eq!(store.shard_count(), 1);
        let mut next = xorshift(seed);
        let mut open = Vec::new();
        for _ in 0..2_000 {
            step(&store, &mut next, &mut open, 60, capacity, true);
            store.check_books();
        }
        finish(open);
        store.check_books();
    }
}

/// Several threads at once on one store (a few keys, so that they meet on them), checked
/// once they are done.
#[test]
fn the_books_stay_exact_under_threads() {
    let threads = 4;
    for round in 0..6u64 {
        let told = Arc::new(AtomicUsize::new(0));
        let capacity = if round % 2 == 0 { 2_048 } else { 300 };
        let store = store(capacity, &told);
        std::thread::scope(|scope| {
            for t in 0..threads {
                let store = &store;
                scope.spawn(move || {
                    let mut next = xorshift(round * 100 + t + 1);
                    let mut open = Vec::new();
                    for _ in 0..4_000 {
                        step(store, &mut next, &mut open, 120, capacity, false);
                    }
                    finish(open);
                });
            }
        });
        store.check_books();
    }
}
