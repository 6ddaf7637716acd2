//! Seeded random runs of every write the store makes, loads included, on keys whose `Hash`,
//! `Eq` and `Clone` and values whose `Clone` (and a weigher) panic now and then:
//! `Store::check_books` after each operation, and no key or value dropped while this thread
//! holds a shard lock (their `Drop` is user code too). One thread, so that a fuse set before
//! an operation fires inside it (rev5: room_in's rebuild, settle in place, `Pos` without a
//! weight, the `IN_MAIN` bit).

use std::{
    cell::{Cell, RefCell},
    hash::{Hash, Hasher},
    panic::{catch_unwind, AssertUnwindSafe},
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering::SeqCst},
        Arc,
    },
    task::Poll,
};

use deferred_test_support::{poll_once, quiet_panics_saying, FixedHasher};

use super::books::gated;
use crate::{
    books::tests::xorshift,
    error::Failure,
    store::{Claim, Lookup, Store, Waiter},
    RemovalCause,
};

const USER_PANIC: &str = "store user code panics";

thread_local! {
    /// User calls left before one panics (`None`: never). Spent once it fires.
    static FUSE: Cell<Option<u32>> = const { Cell::new(None) };
    /// Whether this thread holds a shard lock of the store under test.
    static HELD: RefCell<Option<Box<dyn Fn() -> bool>>> = const { RefCell::new(None) };
    /// Keys and values dropped while a shard lock was held, and listener calls made so.
    static UNDER_LOCK: RefCell<Vec<&'static str>> = const { RefCell::new(Vec::new()) };
}

/// A user call: panics if the fuse says so.
fn burn() {
    FUSE.with(|f| match f.get() {
        Some(0) => {
            f.set(None);
            std::panic::panic_any(USER_PANIC);
        }
        Some(n) => f.set(Some(n - 1)),
        None => {}
    });
}

/// Records `what` if a shard lock is held (a drop, a listener call).
fn probe(what: &'static str) {
    let held = HELD.with(|h| h.try_borrow().ok().and_then(|h| h.as_ref().map(|f| f())));
    if held == Some(true) {
        if std::env::var_os("REV5_BT").is_some() {
            eprintln!("{what}: {}", std::backtrace::Backtrace::force_capture());
        }
        UNDER_LOCK.with(|u| u.borrow_mut().push(what));
    }
}

#[derive(Debug)]
struct Key(u16);

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        burn();
        self.0.hash(state);
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        burn();
        self.0 == other.0
    }
}

impl Eq for Key {}

impl Clone for Key {
    fn clone(&self) -> Self {
        burn();
        Key(self.0)
    }
}

impl Drop for Key {
    fn drop(&mut self) {
        probe("a key dropped");
    }
}

#[derive(Debug)]
struct Val(u32);

impl Clone for Val {
    fn clone(&self) -> Self {
        burn();
        Val(self.0)
    }
}

impl Drop for Val {
    fn drop(&mut self) {
        probe("a value dropped");
    }
}

type S = Store<Key, Val, &'static str, FixedHasher>;
type W<'a> = Waiter<'a, Key, Val, &'static str, FixedHasher>;

/// A bounded store: unit weights (tables rebuilt at their size once full) or weighed by a
/// weigher that is user code too.
fn store(capacity: u64, weighed: bool) -> Arc<S> {
    let weigher: Option<crate::cache::Weigher<Key, Val>> = weighed.then(|| {
        Box::new(|_: &Key, v: &Val| {
            burn();
            v.0 % 40 + 1
        }) as _
    });
    let store = Arc::new(Store::new(
        0,
        FixedHasher::default(),
        Some(capacity),
        weigher,
        Some(Box::new(|_: &Key, _: &Val, _: RemovalCause| {
            probe("the listener called");
        })),
    ));
    let weak = Arc::downgrade(&store);
    HELD.with(|h| {
        *h.borrow_mut() = Some(Box::new(move || {
            weak.upgrade().is_some_and(|s| s.any_shard_held())
        }));
    });
    store
}

/// Drives `waiter` to its end (its gate open), unless a poll panics (user code: the
/// waiter is dropped then).
fn drive(mut waiter: W<'_>) {
    loop {
        match catch_unwind(AssertUnwindSafe(|| poll_once(Pin::new(&mut waiter)))) {
            Ok(Poll::Pending) => {}
            Ok(Poll::Ready(_)) | Err(_) => return,
        }
    }
}

#[allow(clippy::too_many_lines)]
fn step<'a>(
    store: &'a Arc<S>,
    next: &mut impl FnMut() -> u64,
    open: &mut Vec<(W<'a>, Arc<AtomicBool>)>,
    keys: u64,
) -> (u64, Option<u32>, bool) {
    let k = u16::try_from(next() % keys).unwrap();
    let v = u32::try_from(next() % 1_000).unwrap();
    let op = next() % 16;
    let hash = store.hash(&Key(k));
    // Weighed before the fuse is set (as the cache does, outside the store).
    let weight = store.weigh(&Key(k), &Val(v));
    let fuse = (next() % 3 == 0).then(|| u32::try_from(next() % 6).unwrap());
    FUSE.with(|f| f.set(fuse));
    let caught = catch_unwind(AssertUnwindSafe(|| match op {
        0..=2 => store.insert(hash, Key(k), Val(v), weight),
        3 => {
            let _ = store.remove(hash, &Key(k), |_| true, RemovalCause::Explicit, true);
        }
        4 => {
            store.replace_if(hash, &Key(k), Val(v), weight, Some(Key(k)), |_| true);
        }
        5 => {
            let _ = store.put_absent(hash, Key(k), Val(v), weight);
        }
        6 => {
            let _ = store.read(hash, &Key(k), true, |v| Some(v.0));
            let _ = store.seen(hash, &Key(k));
        }
        7 => {
            if next() % 6 == 0 {
                store.clear();
            } else {
                let m = next() % 5 + 2;
                store.remove_all_if(|k, _| u64::from(k.0) % m == 0);
            }
        }
        8..=10 => {
            let gate = Arc::new(AtomicBool::new(false));
            let outcome = match next() % 5 {
                0 => Err(Failure::error("no")),
                1 => Err(Failure::Absent),
                _ => Ok(v),
            };
            let load = gated(Arc::clone(&gate), outcome.map(Val));
            match store.get_or_load(hash, Key(k), move |_| load) {
                Lookup::Ready(_) => {}
                Lookup::Wait(mut waiter) => {
                    if poll_once(Pin::new(&mut waiter)).is_pending() && waiter.added() {
                        open.push((waiter, gate));
                    }
                }
            }
        }
        11..=13 => {
            if !open.is_empty() {
                let i = usize::try_from(next()).unwrap() % open.len();
                let (waiter, gate) = open.swap_remove(i);
                if next() % 4 == 0 {
                    drop(waiter);
                } else {
                    gate.store(true, SeqCst);
                    drive(waiter);
                }
            }
        }
        _ => match store.claim(hash, Key(k)) {
            Claim::Ready(_) => {}
            Claim::Joined(waiter) => drop(waiter),
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
                    let weight = store.weigh_loaded(kept.as_ref(), &Val(v));
                    if cell.succeed(Val(v)).is_ok() {
                        store.settle(hash, id, Some((Val(v), weight)));
                    } else {
                        store.drop_load(hash, id);
                    }
                }
            },
        },
    }));
    FUSE.with(|f| f.set(None));
    (op, fuse, caught.is_err())
}

fn run(seed: u64, capacity: u64, keys: u64, weighed: bool, ops: usize) {
    quiet_panics_saying(USER_PANIC);
    let store = store(capacity, weighed);
    let mut next = xorshift(seed);
    let mut open = Vec::new();
    for i in 0..ops {
        let (op, fuse, panicked) = step(&store, &mut next, &mut open, keys);
        let under = UNDER_LOCK.with(|u| std::mem::take(&mut *u.borrow_mut()));
        assert!(
            under.is_empty(),
            "seed {seed}, op #{i} ({op}, fuse {fuse:?}, panicked: {panicked}): under a lock: {under:?}"
        );
        store.check_books();
    }
    for (waiter, gate) in open {
        gate.store(true, SeqCst);
        drive(waiter);
    }
    store.check_books();
    HELD.with(|h| drop(h.borrow_mut().take()));
}

#[test]
fn the_books_stay_exact_when_user_code_panics_unit_weights() {
    for seed in 1..=16 {
        // One shard of 256 (rebuilt at its size), many keys: steady eviction.
        run(seed, 256, 700, false, 4_000);
    }
}

#[test]
fn the_books_stay_exact_when_user_code_panics_weighed() {
    for seed in 1..=16 {
        // Several shards: eviction in the others (`reclaim`).
        run(seed, 2_048, 1_200, true, 4_000);
    }
}

/// rev6: `replace_if` over a value in a table with no room left: a key's `Hash` that
/// panics while room is made must drop neither the new value nor the listener's key copy
/// under the lock. Room was made only in `admit`, after the old slot was taken out: an
/// erase that left a tombstone left no room, and the rebuild's `Hash` panicked with the
/// value and key owned under the lock (`insert` and `put_absent` make room first, 8d9111a).
#[test]
fn replace_if_makes_room_before_it_takes_the_old_value() {
    quiet_panics_saying(USER_PANIC);
    // Unit weights, one shard of 256, never full: no eviction, the table grows as it fills.
    let store = store(100_000, false);
    let mut key = 0u16;
    let mut panicked = 0;
    for _ in 0..2_000 {
        // Filled until the next key's table has no room left (and holds a few).
        loop {
            let hash = store.hash(&Key(key));
            if store
                .shard(hash)
                .read(|d| d.table.len() == d.table.capacity() && d.table.len() > 20)
            {
                break;
            }
            store.insert(hash, Key(key), Val(0), Some(1));
            key += 1;
        }
        // Over a key in that shard (the newest there): two `Eq` (the probes) run first,
        // then the rebuild's `Hash` panics.
        let shard = store.index(store.hash(&Key(key)));
        let Some(k) = (0..key)
            .rev()
            .find(|&k| store.index(store.hash(&Key(k))) == shard)
        else {
            unreachable!("a full shard holds a key");
        };
        let hash = store.hash(&Key(k));
        FUSE.with(|f| f.set(Some(2)));
        let caught = catch_unwind(AssertUnwindSafe(|| {
            store.replace_if(hash, &Key(k), Val(1), Some(1), Some(Key(k)), |_| true);
        }));
        FUSE.with(|f| f.set(None));
        let under = UNDER_LOCK.with(|u| std::mem::take(&mut *u.borrow_mut()));
        assert!(under.is_empty(), "key {k}: under a lock: {under:?}");
        store.check_books();
        if caught.is_err() {
            panicked += 1;
            if panicked == 8 {
                break;
            }
        } else {
            // Replaced: the next key fills the room the erase made, if any.
            store.insert(store.hash(&Key(key)), Key(key), Val(0), Some(1));
            key += 1;
        }
    }
    assert!(panicked > 0, "no replace_if met a table with no room left");
    HELD.with(|h| drop(h.borrow_mut().take()));
}
