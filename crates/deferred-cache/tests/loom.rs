//! Loom models of the cache's protocols: `cargo xtask test-loom`.
//!
//! Two or three threads each. The map's shard locks, the cells' state words, the policy's
//! locks and the cache's own atomics and thread-locals all come through loom, so loom
//! explores their interleavings: claim, complete, error, panic, cancel hand-off, stalled
//! leader, cancel-all, and admission racing invalidation. Without `--cfg loom` each model
//! runs once on std threads (`deferred_test_support::loom`), a plain test.
#![allow(clippy::std_instead_of_core)]

use std::{
    future::Future,
    panic::{catch_unwind, AssertUnwindSafe},
    pin::{pin, Pin},
    sync::atomic::Ordering::SeqCst,
    task::Poll,
};

use deferred_cache::{Cache, LoadError, Source};
use deferred_test_support::loom::{
    self,
    future::block_on,
    sync::{atomic::AtomicUsize, Arc},
    thread,
};
use deferred_test_support::{poll_once, quiet_panics_saying, FixedHasher};

type C = Cache<u8, usize, &'static str, FixedHasher>;

fn cache(capacity: Option<u64>) -> Arc<C> {
    let builder = Cache::builder().hasher(FixedHasher::default());
    Arc::new(match capacity {
        Some(c) => builder.max_capacity(c).build(),
        None => builder.build(),
    })
}

/// The message of the panics the models raise on purpose.
const EXPECTED_PANIC: &str = "loader panics";

/// Counts a loader's start and its drop (finished or not).
#[derive(Clone)]
struct Runs {
    started: Arc<AtomicUsize>,
    dropped: Arc<AtomicUsize>,
}

struct Guard(Arc<AtomicUsize>);

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.fetch_add(1, SeqCst);
    }
}

impl Runs {
    fn new() -> Self {
        Runs {
            started: Arc::new(AtomicUsize::new(0)),
            dropped: Arc::new(AtomicUsize::new(0)),
        }
    }

    fn started(&self) -> usize {
        self.started.load(SeqCst)
    }

    fn dropped(&self) -> usize {
        self.dropped.load(SeqCst)
    }

    /// A loader that yields `yields` times (waking itself), then returns `outcome`, or
    /// panics if `outcome` is `None`.
    fn loader(
        &self,
        yields: usize,
        outcome: Option<Result<usize, &'static str>>,
    ) -> impl FnOnce() -> Pin<Box<dyn Future<Output = Result<usize, &'static str>> + Send>> {
        let runs = self.clone();
        move || {
            Box::pin(async move {
                runs.started.fetch_add(1, SeqCst);
                let _guard = Guard(runs.dropped.clone());
                let mut left = yields;
                futures::future::poll_fn(|cx| {
                    if left == 0 {
                        Poll::Ready(())
                    } else {
                        left -= 1;
                        cx.waker().wake_by_ref();
                        Poll::Pending
                    }
                })
                .await;
                match outcome {
                    Some(outcome) => outcome,
                    None => std::panic::panic_any(EXPECTED_PANIC),
                }
            })
        }
    }
}

/// A gate a loader waits on; its cell's atomics are loom's (through `deferred-core`).
type Gate = std::sync::Arc<deferred_core::Deferred<()>>;

impl Runs {
    /// A loader that waits for `gate`, then returns `value`.
    fn gated(
        &self,
        gate: &Gate,
        value: usize,
    ) -> impl FnOnce() -> Pin<Box<dyn Future<Output = Result<usize, &'static str>> + Send>> {
        let (runs, gate) = (self.clone(), gate.clone());
        move || {
            Box::pin(async move {
                runs.started.fetch_add(1, SeqCst);
                let _guard = Guard(runs.dropped.clone());
                let _ = deferred_core::Deferred::wait_owned(gate).await;
                Ok(value)
            })
        }
    }
}

#[test]
fn two_callers_claim_one_load() {
    loom::model(|| {
        let cache = cache(None);
        let runs = Runs::new();
        let (c, r) = (cache.clone(), runs.clone());
        let t =
            thread::spawn(move || block_on(c.get_with(1, r.loader(0, Some(Ok(1)))).with_source()));
        let mine = block_on(cache.get_with(1, runs.loader(0, Some(Ok(2)))).with_source());
        let theirs = t.join().unwrap();
        assert_eq!(mine.0, theirs.0, "both see one value");
        assert_eq!(runs.started(), 1, "one load");
        let sources = [mine.1, theirs.1];
        assert_eq!(sources.iter().filter(|s| **s == Source::Loaded).count(), 1);
        assert_eq!(cache.peek(&1), mine.0.ok());
        let stats = cache.stats();
        assert_eq!((stats.loads_ok, stats.hits + stats.misses), (1, 2));
    });
}

#[test]
fn an_error_reaches_the_waiter_and_is_not_kept() {
    loom::model(|| {
        let cache = cache(None);
        let runs = Runs::new();
        let (c, r) = (cache.clone(), runs.clone());
        let t = thread::spawn(move || block_on(c.get_with(1, r.loader(0, Some(Err("a"))))));
        let mine = block_on(cache.get_with(1, runs.loader(0, Some(Err("b")))));
        let theirs = t.join().unwrap();
        let (Err(LoadError::Failed(a)), Err(LoadError::Failed(b))) = (&mine, &theirs) else {
            panic!("both fail: {mine:?} {theirs:?}");
        };
        // One shared load, or two loads one after the other: never a kept error.
        assert_eq!(std::sync::Arc::ptr_eq(a, b), runs.started() == 1);
        assert!(runs.started() <= 2);
        assert!(cache.is_empty(), "a failure leaves no entry");
    });
}

#[test]
fn a_panic_unwinds_only_the_driver() {
    quiet_panics_saying(EXPECTED_PANIC);
    // One preemption: loom runs its threads as fibers of one OS thread, which share
    // `std::thread::panicking()`. With more preemptions, loom can switch from a thread that
    // is unwinding to one that drops a lock guard taken before the panic; the std mutex
    // inside loom's `Mutex` then counts as poisoned and loom's own `unwrap` fails. That
    // is loom's limitation, not the cache's: real threads each have their own
    // `panicking()`.
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(1);
    builder.check(|| {
        let cache = cache(None);
        let runs = Runs::new();
        let (c, r) = (cache.clone(), runs.clone());
        let t = thread::spawn(move || {
            catch_unwind(AssertUnwindSafe(|| {
                block_on(c.get_with(1, r.loader(0, None)))
            }))
        });
        let mine = catch_unwind(AssertUnwindSafe(|| {
            block_on(cache.get_with(1, runs.loader(0, None)))
        }));
        let theirs = t.join().unwrap();
        let unwound = usize::from(mine.is_err()) + usize::from(theirs.is_err());
        for outcome in [mine, theirs].into_iter().flatten() {
            assert_eq!(
                outcome,
                Err(LoadError::Panicked),
                "not unwound: gets Panicked"
            );
        }
        assert!(unwound >= 1);
        assert_eq!(
            runs.started(),
            unwound,
            "every run unwinds exactly one caller"
        );
        assert_eq!(runs.dropped(), runs.started());
        assert!(cache.is_empty(), "a panicked load leaves no entry");
    });
}

#[test]
fn a_dropped_driver_hands_the_load_on() {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(1);
    builder.check(|| {
        let cache = cache(None);
        let runs = Runs::new();
        let (c, r) = (cache.clone(), runs.clone());
        let t = thread::spawn(move || {
            let mut driver = pin!(c.get_with(1, r.loader(1, Some(Ok(1)))));
            let _ = poll_once(driver.as_mut());
            // Dropped after one poll.
        });
        let got = block_on(cache.get_with(1, runs.loader(1, Some(Ok(2)))));
        t.join().unwrap();
        assert!(got.is_ok());
        assert!(runs.started() <= 2, "at most one extra run");
        assert_eq!(runs.dropped(), runs.started(), "no load left running");
        assert_eq!(cache.len(), 1);
    });
}

#[test]
fn a_stalled_leader_does_not_block_the_second_caller() {
    loom::model(|| {
        let cache = cache(None);
        let runs = Runs::new();
        let gate = Gate::default();
        // Polled once on this thread (its load waits for the gate), then never again.
        let mut stalled = Box::pin(cache.get_with(1, runs.gated(&gate, 1)));
        assert!(poll_once(stalled.as_mut()).is_pending());
        let (c, r, g) = (cache.clone(), runs.clone(), gate.clone());
        let t = thread::spawn(move || block_on(c.get_with(1, r.gated(&g, 2)).with_source()));
        gate.succeed(()).unwrap();
        // Only the second caller is polled from here on: it drives the load to its end.
        assert_eq!(t.join().unwrap(), (Ok(1), Source::Joined));
        assert_eq!(runs.started(), 1);
        drop(stalled);
    });
}

#[test]
fn when_every_caller_leaves_the_load_goes() {
    loom::model(|| {
        let cache = cache(None);
        let runs = Runs::new();
        let gate = Gate::default(); // never opened: the load cannot finish
        let (c, r, g) = (cache.clone(), runs.clone(), gate.clone());
        let t = thread::spawn(move || {
            let mut get = pin!(c.get_with(1, r.gated(&g, 1)));
            assert!(poll_once(get.as_mut()).is_pending());
        });
        {
            let mut get = pin!(cache.get_with(1, runs.gated(&gate, 2)));
            assert!(poll_once(get.as_mut()).is_pending());
        }
        t.join().unwrap();
        assert!(cache.is_empty(), "an abandoned load leaves no entry");
        assert!(runs.started() >= 1);
        assert_eq!(
            runs.dropped(),
            runs.started(),
            "every load started was dropped"
        );
        assert_eq!(cache.stats().loads_cancelled as usize, runs.started());
    });
}

#[test]
fn admission_vs_invalidate_keeps_the_books() {
    loom::model(|| {
        let cache = cache(Some(1));
        let runs = Runs::new();
        let c = cache.clone();
        let t = thread::spawn(move || c.invalidate(&1));
        let got = block_on(cache.get_with(1, runs.loader(0, Some(Ok(1)))));
        t.join().unwrap();
        assert_eq!(got, Ok(1));
        // Whatever the order, the policy counts exactly the values the map holds.
        assert_eq!(cache.weighted_size(), Some(cache.len() as u64));
        // And a second key still fits by evicting: the books never leak capacity.
        cache.insert(2, 2);
        assert_eq!(cache.weighted_size(), Some(1));
        assert_eq!(cache.len(), 1);
    });
}

/// The same with `invalidate_all`, which once retired each entry before removing it: a load
/// that completed and was admitted in between was removed without being retired, and its
/// weight stayed counted for good (found by the soak).
#[test]
fn admission_vs_invalidate_all_keeps_the_books() {
    loom::model(|| {
        let cache = cache(Some(1));
        let runs = Runs::new();
        let c = cache.clone();
        let t = thread::spawn(move || c.invalidate_all());
        let got = block_on(cache.get_with(1, runs.loader(0, Some(Ok(1)))));
        t.join().unwrap();
        assert_eq!(got, Ok(1));
        assert_eq!(cache.weighted_size(), Some(cache.len() as u64));
        cache.invalidate_all();
        assert_eq!(cache.weighted_size(), Some(0));
    });
}

#[test]
fn concurrent_inserts_stay_within_capacity() {
    loom::model(|| {
        let cache = cache(Some(1));
        let c = cache.clone();
        let t = thread::spawn(move || c.insert(1, 1));
        cache.insert(2, 2);
        t.join().unwrap();
        assert_eq!(cache.weighted_size(), Some(1));
        assert_eq!(cache.len(), 1);
    });
}

/// `insert` racing an `invalidate` of the same key. `insert` admits its cell without looking
/// it up in the map again: a cell complete before it enters the map is retired (under the
/// policy lock `admit` takes) by whatever removes it, so either the admission comes first and
/// the retire takes its weight off, or the retire comes first and the admission skips it.
/// Either way the policy weighs exactly what the map holds, and nothing is counted twice.
#[test]
fn insert_vs_invalidate_of_the_same_key_keeps_the_books() {
    loom::model(|| {
        let cache = cache(Some(1));
        let c = cache.clone();
        let t = thread::spawn(move || c.insert(1, 1));
        let removed = cache.invalidate(&1);
        t.join().unwrap();
        assert_eq!(cache.weighted_size(), Some(cache.len() as u64));
        // The value is either still there or was counted once as it left.
        assert_eq!(cache.stats().invalidated + cache.len() as u64, 1);
        assert_eq!(removed, cache.is_empty());
        // No capacity leaked: another key fits, evicting the first if it is there.
        cache.insert(2, 2);
        assert_eq!((cache.len(), cache.weighted_size()), (1, Some(1)));
        assert_eq!(cache.get_if_present(&2), Some(2));
    });
}

/// The same with `replace_if`, the other caller of `admit` that does not look its cell up
/// again: the replacing value and the invalidate race; the books match the map.
#[test]
fn replace_if_vs_invalidate_of_the_same_key_keeps_the_books() {
    loom::model(|| {
        let cache = cache(Some(1));
        cache.insert(1, 1);
        let c = cache.clone();
        let t = thread::spawn(move || c.replace_if(&1, 2, |_| true));
        cache.invalidate(&1);
        let replaced = t.join().unwrap();
        assert_eq!(cache.weighted_size(), Some(cache.len() as u64));
        // Two values went in (one by `replace_if` only if it found the first): each is
        // either still there or was counted once as it left.
        assert_eq!(
            cache.stats().invalidated + cache.len() as u64,
            1 + u64::from(replaced)
        );
        cache.insert(2, 2);
        assert_eq!((cache.len(), cache.weighted_size()), (1, Some(1)));
    });
}

/// From the review of 8df94b9 (the policy's books as a slab of entries, a value's
/// `Meta::slot` its index): an eviction racing an `invalidate` of its victim. The eviction
/// frees the victim's entry, and the next admission reuses it; the `invalidate`, if it took
/// the victim out of the map first, retires it after that, and must find it REMOVED rather
/// than kill the entry that now belongs to another value. The books match the map.
#[test]
fn eviction_vs_invalidate_of_the_victim_keeps_the_books() {
    loom::model(|| {
        let cache = cache(Some(1));
        cache.insert(1, 1);
        let c = cache.clone();
        let t = thread::spawn(move || c.invalidate(&1));
        cache.insert(2, 2); // evicts 1, freeing its entry
        cache.insert(3, 3); // takes that entry, evicts 2
        t.join().unwrap();
        assert_eq!((cache.len(), cache.weighted_size()), (1, Some(1)));
        assert_eq!(cache.get_if_present(&3), Some(3));
        // 1 left once (evicted or invalidated), 2 was evicted.
        let stats = cache.stats();
        assert_eq!(stats.invalidated + stats.evicted, 2);
        // The entry 3 holds is its own: invalidating it empties the books.
        cache.invalidate(&3);
        assert_eq!((cache.len(), cache.weighted_size()), (0, Some(0)));
    });
}

/// Models from the review of the #12 additions: races the models above did not cover.
///
/// The two `get_or_insert_with` models pin the F6 fix (the value returned is the value
/// stored). They also pass on the code before the fix (at `LOOM_MAX_PREEMPTIONS=2`, and 3 and
/// 4 for the async one: 14 and 23 or 24 iterations; loom does not reach the window in which
/// the load's cell is being completed); the deterministic demonstration of F6 is
/// `get_or_insert_with_meeting_a_just_failed_load_returns_what_it_stored` in
/// tests/regressions.rs.
mod review_12 {
    use std::{pin::Pin, sync::atomic::Ordering::SeqCst, task::Poll};

    use deferred_cache::Cache;
    use deferred_test_support::loom::{
        self,
        future::block_on,
        sync::{atomic::AtomicUsize, Arc},
        thread,
    };
    use deferred_test_support::FixedHasher;

    type C = Cache<u8, usize, &'static str, FixedHasher>;

    fn cache(capacity: u64) -> C {
        Cache::builder()
            .hasher(FixedHasher::default())
            .max_capacity(capacity)
            .build()
    }

    /// A loader that counts its start, yields once (waking itself), then returns `value`.
    fn loader(
        started: &Arc<AtomicUsize>,
        value: usize,
    ) -> impl FnOnce() -> Pin<Box<dyn std::future::Future<Output = Result<usize, &'static str>> + Send>>
    {
        let started = started.clone();
        move || {
            Box::pin(async move {
                started.fetch_add(1, SeqCst);
                let mut yielded = false;
                futures::future::poll_fn(|cx| {
                    if yielded {
                        Poll::Ready(())
                    } else {
                        yielded = true;
                        cx.waker().wake_by_ref();
                        Poll::Pending
                    }
                })
                .await;
                Ok(value)
            })
        }
    }

    /// F6 (and F7's counting). `get_or_insert_with` racing a load of the same key (absent, in flight, or completing):
    /// both callers agree on one value, the map holds it, the policy counts it once, and every
    /// load that started is counted once.
    #[test]
    fn get_or_insert_with_vs_a_load_returns_the_stored_value_and_keeps_the_books() {
        loom::model(|| {
            let cache = cache(4);
            let started = Arc::new(AtomicUsize::new(0));
            let c = cache.clone();
            let t = thread::spawn(move || c.get_or_insert_with(1, || 5));
            let got = block_on(cache.get_with(1, loader(&started, 7))).unwrap();
            let inserted = t.join().unwrap();
            // The books first (they hold), then agreement (which does not).
            assert_eq!(cache.peek(&1), Some(got));
            assert_eq!((cache.len(), cache.weighted_size()), (1, Some(1)));
            assert_eq!(cache.stats().loads() as usize, started.load(SeqCst));
            assert_eq!(
                got,
                inserted,
                "the two callers disagree (get_with, get_or_insert_with); peek = {:?}, len = {}, \
                 stats = {:?}",
                cache.peek(&1),
                cache.len(),
                cache.stats()
            );
        });
    }

    /// F6 for a blocking load: `get_or_insert_with` racing the completion of a
    /// `get_with_blocking` load of the same key (absent, pending, or being completed): both
    /// callers return the value stored, and the books hold it once.
    #[test]
    fn get_or_insert_with_vs_a_blocking_load_returns_the_stored_value() {
        loom::model(|| {
            let cache = cache(4);
            let c = cache.clone();
            let t = thread::spawn(move || c.get_or_insert_with(1, || 5));
            let ran = Arc::new(AtomicUsize::new(0));
            let counted = ran.clone();
            let got = cache
                .get_with_blocking(1, move || {
                    counted.fetch_add(1, SeqCst);
                    Ok(7)
                })
                .unwrap();
            let inserted = t.join().unwrap();
            assert_eq!(cache.peek(&1), Some(got));
            assert_eq!((cache.len(), cache.weighted_size()), (1, Some(1)));
            // Every loader that ran is one load (`Stats::loads`: loads that ran to an end),
            // also one whose value lost to `get_or_insert_with` settling the key first: then
            // neither caller returns 7, and the load still counts. (An earlier oracle,
            // `loads == (either got 7)`, held only in the schedules a thinner lock gate let
            // loom reach.)
            assert_eq!(cache.stats().loads() as usize, ran.load(SeqCst));
            assert_eq!(got, inserted, "the two callers disagree");
        });
    }

    /// `invalidate_entries_if` racing an `insert` over the same key: two values went in; each
    /// is either still there or counted as it left, and the policy weighs exactly what the map
    /// holds.
    #[test]
    fn invalidate_entries_if_vs_insert_keeps_the_books() {
        loom::model(|| {
            let cache = cache(4);
            cache.insert(1, 1);
            let c = cache.clone();
            let t = thread::spawn(move || c.insert(1, 2));
            cache.invalidate_entries_if(|_, _| true);
            t.join().unwrap();
            assert_eq!(cache.weighted_size(), Some(cache.len() as u64));
            assert_eq!(cache.stats().invalidated + cache.len() as u64, 2);
        });
    }

    /// `remove` racing a load of the same key: the books stay exact.
    #[test]
    fn remove_vs_a_load_keeps_the_books() {
        loom::model(|| {
            let cache = cache(1);
            let started = Arc::new(AtomicUsize::new(0));
            let c = cache.clone();
            let t = thread::spawn(move || c.remove(&1));
            let got = block_on(cache.get_with(1, loader(&started, 7)));
            let removed = t.join().unwrap();
            assert_eq!(got, Ok(7));
            assert!(removed.is_none() || removed == Some(7));
            assert_eq!(cache.weighted_size(), Some(cache.len() as u64));
            cache.insert(2, 2);
            assert_eq!((cache.len(), cache.weighted_size()), (1, Some(1)));
        });
    }
}

/// Models of docs/value-slots.md step 2: one write lock per store shard over its table and
/// its S3-FIFO books (a queue position is a value's hash and stamp), and the cache's total
/// reclaimed across shards with no lock held.
mod store_books {
    use std::hash::BuildHasher;

    use deferred_cache::Cache;
    use deferred_test_support::loom::{self, future::block_on, sync::Arc, thread};
    use deferred_test_support::FixedHasher;

    type C = Cache<u8, usize, &'static str, FixedHasher>;

    /// A cache bounded at `capacity`, each value weighing itself.
    pub(super) fn weighed(capacity: u64) -> Arc<C> {
        Arc::new(
            Cache::builder()
                .hasher(FixedHasher::default())
                .max_capacity(capacity)
                .weigher(|_, v: &usize| *v as u32)
                .build(),
        )
    }

    /// The weight of the values the cache holds, read value by value.
    fn held(cache: &C, keys: &[u8]) -> u64 {
        keys.iter()
            .filter_map(|k| cache.peek(k))
            .map(|v| v as u64)
            .sum()
    }

    /// The store shard of `key` in a store of two shards (bit 56 of its hash: the store
    /// picks shards by the bits just below hashbrown's top 7).
    fn top_bit(key: u8) -> u64 {
        (FixedHasher::default().hash_one(key) >> 56) & 1
    }

    /// A load's settle races an `invalidate` of its key. An invalidate that removed
    /// something (the load in flight, or the value it stored) leaves the key absent: the
    /// settle of a removed load stores nothing. Either way the books count exactly what the
    /// table holds. (Broken variant shown failing: a settle that stores its value in a new
    /// slot when its load's slot is gone, as step 1's `put_absent` once did.)
    #[test]
    fn settle_vs_invalidate_keeps_the_books() {
        loom::model(|| {
            let cache = weighed(4);
            let c = cache.clone();
            let t = thread::spawn(move || block_on(c.get_with(1, || async { Ok(3) })));
            let removed = cache.invalidate(&1);
            assert_eq!(t.join().unwrap(), Ok(3), "the load's caller gets its value");
            if removed {
                assert!(
                    !cache.contains_key(&1),
                    "the write won: nothing stored after it"
                );
            }
            assert_eq!(cache.weighted_size(), Some(held(&cache, &[1])));
            assert_eq!(cache.len() as u64, u64::from(cache.contains_key(&1)));
        });
    }

    /// A key that was stored, invalidated and loaded again has a dead position (its old
    /// stamp) on the books while its new value settles; an eviction racing the settle pops
    /// that dead position and must not take it for the new value (a position names its
    /// value by hash and stamp). The books count exactly what the table holds. (Broken
    /// variant shown failing: a step that finds a position's value by hash alone evicts the
    /// reloaded value under the old position's weight, and the total keeps the difference.)
    #[test]
    fn eviction_vs_settle_of_a_reloaded_key_keeps_the_books() {
        loom::model(|| {
            let cache = weighed(2);
            cache.insert(1, 1);
            assert!(cache.invalidate(&1)); // its position stays, dead
            let c = cache.clone();
            let t = thread::spawn(move || block_on(c.get_with(1, || async { Ok(2) })));
            cache.insert(2, 1);
            assert_eq!(t.join().unwrap(), Ok(2));
            let weight = cache.weighted_size().unwrap();
            assert!(weight <= 2, "within capacity: {weight}");
            assert_eq!(weight, held(&cache, &[1, 2]), "the books are the table's");
            assert_eq!(cache.stats().evicted, 1, "one eviction for one overflow");
        });
    }

    /// Two admissions into one store shard, under its share, push the cache's total over
    /// capacity while another shard is over its share: the admission that sees the
    /// overflow reclaims from that shard, with no lock of its own held, and the total ends
    /// within capacity, with exactly one eviction. (Broken variant shown failing: no
    /// reclaim in other shards, the total left over capacity.)
    #[test]
    fn cross_shard_reclaim_vs_admission_keeps_total_within_capacity() {
        // Capacity 512 in two store shards of 256 each, picked by bit 56 of the hash.
        let x = 0u8;
        let mut others = (1..=u8::MAX).filter(|&k| top_bit(k) != top_bit(x));
        let (a, b) = (others.next().unwrap(), others.next().unwrap());
        loom::model(move || {
            let cache = weighed(512);
            cache.insert(x, 300); // over its shard's share, within the capacity
            let c = cache.clone();
            let t = thread::spawn(move || c.insert(a, 150));
            cache.insert(b, 100);
            t.join().unwrap();
            let weight = cache.weighted_size().unwrap();
            assert!(weight <= 512, "within capacity: {weight}");
            assert_eq!(weight, held(&cache, &[x, a, b]));
            assert_eq!(cache.stats().evicted, 1);
            assert_eq!(cache.peek(&x), None, "the shard over its share gave way");
        });
    }
}

/// From the review of the bounded store's storage (rev5): a queue position keeps no weight
/// and no queue; a value's slot says which queue its position is in by the `IN_MAIN` bit of
/// its use count byte, which reads store back (under the read lock) while only the write
/// lock's holder changes it.
mod rev5 {
    use deferred_cache::Cache;
    use deferred_test_support::loom::{self, sync::Arc, thread};
    use deferred_test_support::FixedHasher;

    type C = Cache<u8, usize, &'static str, FixedHasher>;

    /// Stores 1 and 2 in `cache` (full at 2), then reads 1 twice in another thread while
    /// this one stores 3 and runs `then`.
    pub(super) fn reads_vs_a_second_chance(cache: &Arc<C>, then: impl FnOnce()) {
        cache.insert(1, 1);
        cache.insert(2, 1);
        let c = cache.clone();
        let t = thread::spawn(move || {
            let _ = c.get_if_present(&1);
            let _ = c.get_if_present(&1);
        });
        // Over capacity: the step pops 1 (read: to the main queue; not yet read: evicted),
        // then 2 if 1 was spared.
        cache.insert(3, 1);
        then();
        t.join().unwrap();
    }

    /// Reads of a value (each records a use: a load and a store of its use count byte)
    /// race an admission whose eviction step gives the value a second chance, moving its
    /// position to the main queue (the bit set, under the write lock). A read that stored
    /// back a byte without the bit would send the value's weight, when it leaves, off the
    /// small queue's: both invalidations below then take more off it than it holds (a debug
    /// overflow), and the books would not be the table's. (Broken variant shown failing: a
    /// `touch` that stores the use count alone, `(n & !IN_MAIN) + 1`.)
    #[test]
    fn reads_vs_a_second_chance_keep_the_queue_bit() {
        loom::model(|| {
            let cache: Arc<C> = Arc::new(
                Cache::builder()
                    .hasher(FixedHasher::default())
                    .max_capacity(2)
                    .weigher(|_, v: &usize| *v as u32)
                    .build(),
            );
            reads_vs_a_second_chance(&cache, || {});
            cache.invalidate(&1);
            cache.invalidate(&2);
            cache.invalidate(&3);
            assert_eq!(cache.weighted_size(), Some(0), "the books are the table's");
            cache.insert(4, 1);
            cache.insert(5, 1);
            cache.insert(6, 1);
            assert_eq!(cache.weighted_size(), Some(2));
        });
    }
}

/// From the review of step 2 (rev4): the store's shard is picked by high bits of a key's
/// hash (the policy's shards were picked by the low bits), so the two keys of the model
/// this module's first one replaces (`admissions_in_two_shards_evict_once_for_one_overflow`,
/// 0 and 5, told apart by the low bit) shared a store shard at capacity 512 (two shards):
/// it ran both admissions in one shard and never reached the cross-shard reclaim. These
/// models pick keys by the store's shard bit (bit 56, just below hashbrown's top 7 bits).
mod rev4 {
    use std::hash::BuildHasher;

    use deferred_cache::Cache;
    use deferred_test_support::{
        loom::{self, sync::Arc, thread},
        FixedHasher,
    };

    type C = Cache<u8, usize, &'static str, FixedHasher>;

    /// Two keys in the two store shards of a cache of capacity 512.
    fn keys_in_two_shards() -> (u8, u8) {
        let top = |k: u8| (FixedHasher::default().hash_one(k) >> 56) & 1;
        let a = 0u8;
        let b = (1..=u8::MAX)
            .find(|&k| top(k) != top(a))
            .expect("a key in the other shard");
        (a, b)
    }

    fn weighed() -> Arc<C> {
        Arc::new(
            Cache::builder()
                .hasher(FixedHasher::default())
                .max_capacity(512)
                .weigher(|_, v: &usize| *v as u32)
                .build(),
        )
    }

    /// Capacity is the cache's, not a shard's (issue #11): two values, each heavier than a
    /// shard's share (256) and lighter than the capacity, admitted at once into the two
    /// shards: each admission's reclaim reaches the other shard with no lock held; one
    /// value goes (not both), and the total is the one left.
    #[test]
    fn admissions_in_two_store_shards_evict_once_for_one_overflow() {
        let (a, b) = keys_in_two_shards();
        loom::model(move || {
            let cache = weighed();
            let c = cache.clone();
            let t = thread::spawn(move || c.insert(a, 300));
            cache.insert(b, 300);
            t.join().unwrap();
            assert_eq!(cache.len(), 1, "evicted {}", cache.stats().evicted);
            assert_eq!(cache.weighted_size(), Some(300));
            assert_eq!(cache.stats().evicted, 1);
        });
    }

    /// The cross-shard reclaim racing an `invalidate` of its victim: the victim leaves
    /// once (evicted or invalidated), and the total is the value stored.
    #[test]
    fn cross_shard_reclaim_vs_invalidate_of_the_victim_keeps_the_books() {
        let (a, b) = keys_in_two_shards();
        loom::model(move || {
            let cache = weighed();
            cache.insert(a, 300);
            let c = cache.clone();
            let t = thread::spawn(move || c.insert(b, 300));
            cache.invalidate(&a);
            t.join().unwrap();
            assert_eq!((cache.len(), cache.weighted_size()), (1, Some(300)));
            assert_eq!(cache.get_if_present(&b), Some(300));
            let stats = cache.stats();
            assert_eq!(stats.invalidated + stats.evicted, 1);
        });
    }
}

/// From the review of `insert`'s replace in place (rev6): an `insert` over a complete value
/// that stands as the new one does on the books keeps its slot, takes a new stamp, and
/// re-queues its position at the tail of the queue its slot's `IN_MAIN` bit names (the old
/// position dead). None of the models above inserts over a value that is there.
///
/// The caches are `store_books::weighed`'s: one shard (capacity under 512), each value
/// weighing itself.
mod rev6 {
    use deferred_test_support::loom::{self, thread};

    use super::{rev5::reads_vs_a_second_chance, store_books::weighed};

    /// Reads of a value (under the read lock, each a load and a store of its use count
    /// byte) race an eviction step that gives it a second chance (its `IN_MAIN` bit set
    /// under the write lock) and then an `insert` over it in place, which re-queues it by
    /// that bit. Every value then leaves by `invalidate`, taking its weight off the queue
    /// its bit names: a wrong bit overflows a queue's weight (a debug panic) or leaves
    /// weight behind. (Broken variant shown failing: a replace in place that re-queues in
    /// the small queue whatever the bit says.)
    #[test]
    fn replace_in_place_vs_reads_and_a_second_chance_keep_the_queue_bit() {
        loom::model(|| {
            let cache = weighed(2);
            // After 3, over 1 in place if it is there (else stored anew, evicting 2 or 3),
            // the reads still racing.
            reads_vs_a_second_chance(&cache, || cache.insert(1, 1));
            assert_eq!(cache.get_if_present(&1), Some(1));
            assert_eq!(cache.weighted_size(), Some(cache.len() as u64));
            for k in 1..=3 {
                cache.invalidate(&k);
            }
            assert_eq!(cache.weighted_size(), Some(0), "the books are the table's");
            for k in 4..=6 {
                cache.insert(k, 1);
            }
            assert_eq!((cache.len(), cache.weighted_size()), (2, Some(2)));
        });
    }

    /// `invalidate_entries_if` saw the old value (its snapshot, under the read lock) and
    /// removes by that value's stamp (under the write lock): an `insert` in place between
    /// the two gave the slot a new stamp, so the new value, which the predicate never saw,
    /// stays. Whatever the order, the old value leaves once (invalidated or replaced) and
    /// the new one is there. (Broken variant shown failing: a replace in place that keeps
    /// the old stamp.)
    #[test]
    fn replace_in_place_vs_invalidate_entries_if_leaves_the_new_value() {
        loom::model(|| {
            let cache = weighed(8);
            cache.insert(1, 1);
            let c = cache.clone();
            let t = thread::spawn(move || c.invalidate_entries_if(|_, v| *v == 1));
            cache.insert(1, 2);
            let removed = t.join().unwrap();
            assert!(removed <= 1);
            assert_eq!(cache.get_if_present(&1), Some(2), "the new value stays");
            assert_eq!(cache.weighted_size(), Some(2));
            assert_eq!(cache.stats().invalidated, 1, "the old value left once");
        });
    }

    /// An eviction step in one thread (storing 2 over a full cache) races an `insert` over
    /// 1 in place in another: the step finds 1 by its old stamp (evicting it) or finds that
    /// position dead (1 re-queued behind it under its new stamp) and goes on to the next.
    /// One eviction for one overflow, and the books are the table's.
    #[test]
    fn replace_in_place_vs_eviction_of_the_old_value_keeps_the_books() {
        loom::model(|| {
            let cache = weighed(2);
            cache.insert(1, 1);
            cache.insert(3, 1);
            let c = cache.clone();
            let t = thread::spawn(move || c.insert(2, 1));
            cache.insert(1, 1);
            t.join().unwrap();
            assert_eq!((cache.len(), cache.weighted_size()), (2, Some(2)));
            // Four values stored, two held: the other two left once each (1 replaced or
            // evicted, 3 evicted).
            let stats = cache.stats();
            assert_eq!(stats.evicted + stats.invalidated, 2);
            for k in 1..=3 {
                cache.invalidate(&k);
            }
            assert_eq!((cache.len(), cache.weighted_size()), (0, Some(0)));
        });
    }
}
