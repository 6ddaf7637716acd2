//! `Cache<u8, u16, u8>` under random operation sequences on one thread, unbounded or bounded
//! (capacity 0 to 7, chosen by the input).
//!
//! * **Unbounded**: an exact model, a `HashMap` of the values plus every counter of `Stats`.
//!   After every operation, each key's `peek` and `contains_key`, `len` and the stats equal
//!   the model's.
//! * **Bounded**: eviction is the policy's business, so the model keeps, per key, the last value
//!   written and whether it may still be there. Checked: `len` and `weighted_size` never above
//!   the capacity (and equal: one unit per value); a value read (by any path) is the last one
//!   written to its key, and never one invalidated since; invalidate / replace_if never find a
//!   key that cannot be there; the read counters are exact; and every value stored is
//!   accounted for: stored = len + evicted + invalidated + expired.
//!
//! Loads are futures that are ready at once (a value or an error), polled once by hand; one
//! more kind never finishes and is dropped after its first poll (a cancelled load).

#![no_main]

use std::{
    collections::{hash_map::DefaultHasher, HashMap},
    future::Future,
    hash::BuildHasherDefault,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, Waker},
};

use arbitrary::{Arbitrary, Unstructured};
use deferred_cache::{Cache, LoadError, Source, Stats};
use libfuzzer_sys::fuzz_target;

/// A fixed hasher, so that a crashing input reproduces.
type Hasher = BuildHasherDefault<DefaultHasher>;
type TheCache = Cache<u8, u16, u8, Hasher>;

const MAX_OPS: usize = 96;
/// Keys are taken modulo this: more keys than the largest capacity, so eviction happens.
const KEYS: u8 = 12;

/// A predicate on a value.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Pred {
    Always,
    Never,
    Is(u16),
    Even,
}

impl Pred {
    fn test(self, v: u16) -> bool {
        match self {
            Pred::Always => true,
            Pred::Never => false,
            Pred::Is(x) => v == x,
            Pred::Even => v.is_multiple_of(2),
        }
    }
}

/// A loader for `get_with`.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Load {
    Ok(u16),
    Err(u8),
    /// Never finishes: the caller is dropped after one poll.
    Never,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Insert(u8, u16),
    GetIfPresent(u8),
    GetIfPresentWith(u8, Pred),
    HitWith(u8, Pred),
    Peek(u8),
    ContainsKey(u8),
    Invalidate(u8),
    InvalidateIf(u8, Pred),
    ExpireIf(u8, Pred),
    ReplaceIf(u8, u16, Pred),
    GetWith(u8, Load),
    InvalidateAll,
}

#[derive(Debug)]
struct Input {
    /// `None`: unbounded.
    capacity: Option<u64>,
    ops: Vec<Op>,
}

impl<'a> Arbitrary<'a> for Input {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let capacity = match u.int_in_range(0u8..=15)? {
            c @ 0..=7 => Some(u64::from(c)),
            _ => None,
        };
        let mut ops = Vec::new();
        while ops.len() < MAX_OPS && !u.is_empty() {
            ops.push(u.arbitrary()?);
        }
        Ok(Input { capacity, ops })
    }
}

/// What the model knows of a key.
#[derive(Clone, Copy, Debug)]
struct Known {
    /// The last value written (inserted, replaced or loaded).
    value: u16,
    /// Unbounded: it is there. Bounded: it may be there (it was written and not removed by
    /// anything but eviction, which the model cannot see).
    present: bool,
}

struct Model {
    bounded: bool,
    keys: HashMap<u8, Known>,
    stats: Stats,
    /// Values stored so far: each one is either still there, or was evicted, invalidated
    /// (also by a replacement) or expired.
    stored: u64,
}

impl Model {
    fn present(&self, k: u8) -> Option<u16> {
        self.keys.get(&k).filter(|kn| kn.present).map(|kn| kn.value)
    }

    fn write(&mut self, k: u8, v: u16) {
        self.keys.insert(
            k,
            Known {
                value: v,
                present: true,
            },
        );
        self.stored += 1;
    }

    fn remove(&mut self, k: u8) {
        if let Some(kn) = self.keys.get_mut(&k) {
            kn.present = false;
        }
    }

    /// A read of `k` saw `got` (`None`: no value). Checks it against the model and learns
    /// from it: in a bounded cache, a value missing may have been evicted.
    fn saw(&mut self, what: &str, k: u8, got: Option<u16>) {
        let expect = self.present(k);
        match (got, expect) {
            (Some(v), Some(e)) => assert_eq!(v, e, "{what}: a stale value"),
            (Some(v), None) => panic!("{what}: read {v}, but the key holds no value"),
            (None, Some(e)) if !self.bounded => panic!("{what}: no value, but {e} is there"),
            (None, _) => self.remove(k),
        }
    }
}

fn poll_once<F: Future>(fut: Pin<&mut F>) -> Poll<F::Output> {
    fut.poll(&mut Context::from_waker(Waker::noop()))
}

fn step(cache: &TheCache, model: &mut Model, op: &Op) {
    let key = |k: u8| k % KEYS;
    match *op {
        Op::Insert(k, v) => {
            let k = key(k);
            cache.insert(k, v);
            if model.present(k).is_some() && !model.bounded {
                model.stats.invalidated += 1;
            }
            model.write(k, v);
            // The value just written is there, unless the policy refused it at once.
            let got = cache.peek(&k);
            model.saw(&format!("peek after insert({k}, {v})"), k, got);
        }
        Op::GetIfPresent(k) => {
            let k = key(k);
            let got = cache.get_if_present(&k);
            model.saw(&format!("get_if_present({k})"), k, got);
            if got.is_some() {
                model.stats.hits += 1;
            } else {
                model.stats.misses += 1;
            }
        }
        Op::GetIfPresentWith(k, pred) => {
            let k = key(k);
            let mut seen = None;
            let got = cache.get_if_present_with(&k, |v| {
                seen = Some(*v);
                pred.test(*v).then_some(*v)
            });
            model.saw(&format!("get_if_present_with({k})"), k, seen);
            assert_eq!(
                got,
                seen.filter(|v| pred.test(*v)),
                "get_if_present_with({k}, {pred:?})"
            );
            if got.is_some() {
                model.stats.hits += 1;
            } else {
                model.stats.misses += 1;
            }
        }
        Op::HitWith(k, pred) => {
            let k = key(k);
            let mut seen = None;
            let got = cache.hit_with(&k, |v| {
                seen = Some(*v);
                pred.test(*v).then_some(*v)
            });
            model.saw(&format!("hit_with({k})"), k, seen);
            assert_eq!(
                got,
                seen.filter(|v| pred.test(*v)),
                "hit_with({k}, {pred:?})"
            );
            if got.is_some() {
                model.stats.hits += 1;
            }
        }
        Op::Peek(k) => {
            let k = key(k);
            let got = cache.peek(&k);
            model.saw(&format!("peek({k})"), k, got);
            assert_eq!(cache.peek_with(&k, |v| *v), got, "peek_with({k})");
        }
        Op::ContainsKey(k) => {
            let k = key(k);
            let got = cache.contains_key(&k);
            assert_eq!(
                got,
                cache.peek(&k).is_some(),
                "contains_key({k}) against peek"
            );
            if !got {
                model.saw(&format!("contains_key({k})"), k, None);
            }
        }
        Op::Invalidate(k) => {
            let k = key(k);
            let removed = cache.invalidate(&k);
            let expect = model.present(k).is_some();
            if model.bounded {
                assert!(
                    !removed || expect,
                    "invalidate({k}) removed a value never there"
                );
            } else {
                assert_eq!(removed, expect, "invalidate({k})");
            }
            if removed {
                model.stats.invalidated += 1;
            }
            model.remove(k);
        }
        Op::InvalidateIf(k, pred) | Op::ExpireIf(k, pred) => {
            let k = key(k);
            let expire = matches!(op, Op::ExpireIf(..));
            let removed = if expire {
                cache.expire_if(&k, |v| pred.test(*v))
            } else {
                cache.invalidate_if(&k, |v| pred.test(*v))
            };
            let expect = model.present(k).is_some_and(|v| pred.test(v));
            if model.bounded {
                assert!(
                    !removed || expect,
                    "{op:?} removed a value that is not there"
                );
            } else {
                assert_eq!(removed, expect, "{op:?}");
            }
            if removed {
                if expire {
                    model.stats.expired += 1;
                } else {
                    model.stats.invalidated += 1;
                }
                model.remove(k);
            } else if expect {
                // Bounded: it was evicted.
                model.remove(k);
            }
        }
        Op::ReplaceIf(k, v, pred) => {
            let k = key(k);
            let replaced = cache.replace_if(&k, v, |old| pred.test(*old));
            let expect = model.present(k).is_some_and(|old| pred.test(old));
            if model.bounded {
                assert!(
                    !replaced || expect,
                    "{op:?} replaced a value that is not there"
                );
            } else {
                assert_eq!(replaced, expect, "{op:?}");
            }
            if replaced {
                model.stats.invalidated += 1;
                model.write(k, v);
            } else if expect {
                model.remove(k);
            }
        }
        Op::GetWith(k, load) => {
            let k = key(k);
            let what = format!("get_with({k}, {load:?})");
            let mut get = Box::pin(
                cache
                    .get_with(k, move || async move {
                        match load {
                            Load::Ok(v) => Ok(v),
                            Load::Err(e) => Err(e),
                            Load::Never => std::future::pending().await,
                        }
                    })
                    .with_source(),
            );
            match poll_once(get.as_mut()) {
                Poll::Ready((outcome, Source::Hit)) => {
                    let v = outcome.unwrap_or_else(|e| panic!("{what}: a hit with {e:?}"));
                    model.saw(&what, k, Some(v));
                    model.stats.hits += 1;
                }
                Poll::Ready((outcome, Source::Loaded)) => {
                    model.saw(&what, k, None);
                    model.stats.misses += 1;
                    match (outcome, load) {
                        (Ok(v), Load::Ok(l)) => {
                            assert_eq!(v, l, "{what}: not the loaded value");
                            model.stats.loads_ok += 1;
                            model.write(k, v);
                        }
                        (Err(LoadError::Failed(e)), Load::Err(l)) => {
                            assert_eq!(e, Arc::new(l), "{what}: not the loader's error");
                            model.stats.loads_failed += 1;
                        }
                        (outcome, _) => panic!("{what}: loaded {outcome:?}"),
                    }
                }
                Poll::Ready((outcome, Source::Joined)) => {
                    panic!("{what}: joined a load, but none is in flight ({outcome:?})")
                }
                Poll::Pending => {
                    assert!(
                        matches!(load, Load::Never),
                        "{what}: a ready load is pending"
                    );
                    model.saw(&what, k, None);
                    model.stats.misses += 1;
                    if !model.bounded {
                        // While the load is in flight, its entry counts in `len`.
                        let values = model.keys.values().filter(|kn| kn.present).count();
                        assert_eq!(
                            cache.len(),
                            values + 1,
                            "{what}: len() with a load in flight"
                        );
                    }
                    // Dropping the only caller drops the load, and its entry.
                    drop(get);
                    model.stats.loads_cancelled += 1;
                }
            }
        }
        Op::InvalidateAll => {
            let len = cache.len() as u64;
            cache.invalidate_all();
            model.stats.invalidated += len;
            for kn in model.keys.values_mut() {
                kn.present = false;
            }
        }
    }
}

fn check(cache: &TheCache, model: &mut Model, capacity: Option<u64>) {
    for k in 0..KEYS {
        let got = cache.peek(&k);
        model.saw(&format!("peek({k}) after the operation"), k, got);
        assert_eq!(cache.contains_key(&k), got.is_some(), "contains_key({k})");
    }
    let len = cache.len();
    let stats = cache.stats();
    assert_eq!(stats.hits, model.stats.hits, "stats().hits");
    assert_eq!(stats.misses, model.stats.misses, "stats().misses");
    assert_eq!(
        stats.coalesced, 0,
        "stats().coalesced: one caller at a time"
    );
    assert_eq!(stats.loads_ok, model.stats.loads_ok, "stats().loads_ok");
    assert_eq!(
        stats.loads_failed, model.stats.loads_failed,
        "stats().loads_failed"
    );
    assert_eq!(stats.loads_panicked, 0, "stats().loads_panicked");
    assert_eq!(
        stats.loads_cancelled, model.stats.loads_cancelled,
        "stats().loads_cancelled"
    );
    assert_eq!(stats.expired, model.stats.expired, "stats().expired");
    assert_eq!(
        model.stored,
        len as u64 + stats.evicted + stats.invalidated + stats.expired,
        "values stored = len + evicted + invalidated + expired ({stats:?}, len {len})"
    );
    match capacity {
        None => {
            let present = model.keys.values().filter(|kn| kn.present).count();
            assert_eq!(len, present, "len()");
            assert_eq!(
                stats.invalidated, model.stats.invalidated,
                "stats().invalidated"
            );
            assert_eq!(stats.evicted, 0, "stats().evicted of an unbounded cache");
            assert_eq!(cache.weighted_size(), None);
            assert_eq!(cache.capacity(), None);
        }
        Some(capacity) => {
            assert_eq!(cache.capacity(), Some(capacity));
            assert!(
                len as u64 <= capacity,
                "len() {len} over the capacity {capacity}"
            );
            assert_eq!(
                cache.weighted_size(),
                Some(len as u64),
                "weighted_size(), len() {len}"
            );
            // Invalidations the model saw happen are a floor (an insert over a value that may
            // have been evicted counts one or none).
            assert!(
                stats.invalidated >= model.stats.invalidated,
                "stats().invalidated {} below the {} seen",
                stats.invalidated,
                model.stats.invalidated
            );
        }
    }
    assert_eq!(cache.is_empty(), len == 0, "is_empty()");
}

fuzz_target!(|input: Input| {
    let builder = Cache::<u8, u16, u8>::builder();
    let builder = match input.capacity {
        Some(c) => builder.max_capacity(c),
        None => builder,
    };
    let cache: TheCache = builder.hasher(Hasher::default()).build();
    let mut model = Model {
        bounded: input.capacity.is_some(),
        keys: HashMap::new(),
        stats: Stats::default(),
        stored: 0,
    };
    for op in &input.ops {
        step(&cache, &mut model, op);
        check(&cache, &mut model, input.capacity);
    }
});
