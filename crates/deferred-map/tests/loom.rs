//! Loom models of the map's single-flight protocol: `cargo xtask test-loom`.
//!
//! Two or three threads each; the map's shard locks and the cells' state words are loom's
//! (through `deferred-core`'s shim), so loom explores their interleavings. Without
//! `--cfg loom` each model runs once on std threads (`deferred_test_support::loom`), a plain
//! test that `cargo test` and miri run too.
#![allow(clippy::std_instead_of_core)] // tests run on std; `core::` paths matter in the library only.

use std::{future::Future, pin::pin, sync::atomic::Ordering::SeqCst, task::Poll};

use deferred_map::{DeferredMap, Error, Lazy};
use deferred_test_support::loom::{
    self,
    future::block_on,
    sync::{atomic::AtomicUsize, Arc},
    thread,
};
use deferred_test_support::{poll_once, quiet_panics_saying, FixedHasher};

/// The message of the panics the models raise on purpose.
const EXPECTED_PANIC: &str = "computation panics";

/// A computation that returns `value` at once.
fn ready(runs: &Arc<AtomicUsize>, value: usize) -> impl Future<Output = Result<usize, ()>> {
    let runs = runs.clone();
    async move {
        runs.fetch_add(1, SeqCst);
        Ok(value)
    }
}

/// A computation that yields once (waking itself) before it returns `value`.
fn yielding(runs: &Arc<AtomicUsize>, value: usize) -> impl Future<Output = Result<usize, ()>> {
    let runs = runs.clone();
    async move {
        runs.fetch_add(1, SeqCst);
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
    }
}

type Map = DeferredMap<u8, usize, (), FixedHasher>;

fn new_map() -> Map {
    Map::with_hasher(FixedHasher::default())
}

#[test]
fn get_or_add_race_runs_once() {
    loom::model(|| {
        let map = Arc::new(new_map());
        let runs = Arc::new(AtomicUsize::new(0));
        let made = Arc::new(AtomicUsize::new(0));
        let (m, r, md) = (map.clone(), runs.clone(), made.clone());
        let t = thread::spawn(move || {
            block_on(m.get_or_add_with(1, || {
                md.fetch_add(1, SeqCst);
                ready(&r, 1)
            }))
        });
        let mine = block_on(map.get_or_add_with(1, || {
            made.fetch_add(1, SeqCst);
            ready(&runs, 2)
        }));
        let theirs = t.join().unwrap();
        assert_eq!(mine, theirs);
        assert_eq!(runs.load(SeqCst), 1);
        // A loser may have made a computation too, but it never ran (`runs` above).
        assert!((1..=2).contains(&made.load(SeqCst)));
    });
}

#[test]
fn dropped_driver_vs_waiter_taking_over() {
    // A yielding computation, a driver and a waiter make long executions: one preemption
    // keeps the model within CI's time.
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(1);
    builder.check(|| {
        let map = Arc::new(new_map());
        let runs = Arc::new(AtomicUsize::new(0));
        let (m, r) = (map.clone(), runs.clone());
        let t = thread::spawn(move || {
            let mut driver = pin!(m.get_or_add_with(1, || yielding(&r, 1)));
            let _ = poll_once(driver.as_mut());
            // Dropped after one poll.
        });
        let got = block_on(map.get_or_add_with(1, || yielding(&runs, 2)));
        t.join().unwrap();
        assert!(got.is_ok());
        assert!(runs.load(SeqCst) <= 2, "at most one extra run");
    });
}

#[test]
fn stalled_driver_vs_second_caller() {
    loom::model(|| {
        let map = Arc::new(new_map());
        let runs = Arc::new(AtomicUsize::new(0));
        // The stalled caller: polled once on this thread, then never again until the end.
        let mut stalled = Box::pin(map.get_or_add_with(1, || yielding(&runs, 1)));
        let _ = poll_once(stalled.as_mut());
        let (m, r) = (map.clone(), runs.clone());
        let t = thread::spawn(move || block_on(m.get_or_add_with(1, || yielding(&r, 2))));
        assert_eq!(t.join().unwrap(), Ok(1));
        assert_eq!(runs.load(SeqCst), 1);
        drop(stalled);
    });
}

#[test]
fn a_panicking_computation_reaches_the_other_waiter_as_panicked() {
    quiet_panics_saying(EXPECTED_PANIC);
    loom::model(|| {
        let map = Arc::new(new_map());
        let cell: Lazy<usize, ()> = Lazy::pending();
        // The key holds a cell that a waiter on another thread awaits through the map.
        let (m, c) = (map.clone(), cell.clone());
        let t = thread::spawn(move || {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                block_on(m.get_or_add_cell(1, c))
            }))
        });
        assert!(cell
            .try_attach(Box::pin(async {
                if true {
                    std::panic::panic_any(EXPECTED_PANIC);
                }
                Ok(0)
            }))
            .is_ok());
        let driver = cell.clone().wait_owned();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| block_on(driver)));
        // Either this thread ran it (and unwound) or the waiter did (and it unwinds there).
        let theirs = t.join().unwrap();
        match (r, theirs) {
            (Err(_), Ok(outcome)) => assert_eq!(outcome, Err(Error::Panicked)),
            (Ok(outcome), Err(_)) => assert_eq!(outcome, Err(Error::Panicked)),
            (Err(_), Err(_)) => panic!("only the poll that ran it may unwind"),
            (Ok(a), Ok(b)) => panic!("someone must have run it: {a:?} {b:?}"),
        }
    });
}

#[test]
fn last_waiters_leaving_remove_the_entry() {
    loom::model(|| {
        let map = Arc::new(new_map());
        let m = map.clone();
        let t = thread::spawn(move || {
            let mut g = pin!(m.wait(1));
            let _ = poll_once(g.as_mut());
        });
        {
            let mut g = pin!(map.wait(1));
            let _ = poll_once(g.as_mut());
        }
        t.join().unwrap();
        assert!(map.is_empty(), "an abandoned placeholder is removed");
    });
}

#[test]
fn remove_if_incomplete_vs_complete() {
    loom::model(|| {
        let map = Arc::new(new_map());
        let cell = map.cell(1);
        let m = map.clone();
        let t = thread::spawn(move || m.remove_if_incomplete(&1));
        assert!(cell.succeed(5).is_ok());
        match t.join().unwrap() {
            Some(true) => assert_eq!(map.is_completed(&1), None),
            Some(false) => assert_eq!(map.try_get(&1), Some(Ok(5))),
            None => panic!("the key was present"),
        }
    });
}

#[test]
fn removal_vs_wait_linking_resolves_the_wait() {
    loom::model(|| {
        let map = Arc::new(new_map());
        let m = map.clone();
        let t = thread::spawn(move || block_on(m.wait(1)));
        drop(map.remove(&1));
        map.add_value(1, 5);
        // The wait came before the removal (its placeholder was removed: cancelled), or
        // after it (it waits for, or finds, the later value). Never a hang.
        let got = t.join().unwrap();
        assert!(matches!(got, Ok(5) | Err(Error::Cancelled)), "{got:?}");
    });
}

#[test]
fn replacement_vs_wait_linking_gives_the_wait_the_new_value() {
    loom::model(|| {
        let map = Arc::new(new_map());
        let m = map.clone();
        let t = thread::spawn(move || block_on(m.wait(1)));
        drop(map.insert(1, Lazy::ready(5)));
        // Before the insert, the wait waits on a placeholder that then follows the new cell;
        // after it, it finds the new cell.
        assert_eq!(t.join().unwrap(), Ok(5));
    });
}

#[test]
fn removal_vs_add_value_on_a_placeholder_loses_nothing() {
    loom::model(|| {
        let map = Arc::new(new_map());
        let get = map.wait(1); // the placeholder
        let m = map.clone();
        let t = thread::spawn(move || drop(m.remove(&1)));
        let stored = map.add_value(1, 5);
        let got = block_on(get);
        t.join().unwrap();
        // The add found the placeholder and gave the waiter its value (then the removal
        // took it out), or the removal came first: the waiter was cancelled, and the add
        // made a new entry. Either way the value was stored somewhere it can be seen.
        assert!(stored, "{got:?}");
        match got {
            Ok(5) => {}
            Err(Error::Cancelled) => assert_eq!(map.try_get(&1), Some(Ok(5))),
            other => panic!("{other:?}"),
        }
    });
}

#[test]
fn dropped_added_cell_vs_wait_linking_cancels_the_wait() {
    loom::model(|| {
        let map = Arc::new(new_map());
        let first = map.wait(1); // the placeholder, there before the add
        let m = map.clone();
        // Links to the placeholder, to the cell the add claimed, or to the cancelled cell.
        let t = thread::spawn(move || block_on(m.wait(1)));
        let mine: Lazy<usize, ()> = Lazy::pending();
        assert!(!map.add_cell(1, mine.clone()), "forwarded");
        drop(mine); // pending: its forwarding callback is dropped unrun
        assert_eq!(t.join().unwrap(), Err(Error::Cancelled));
        assert_eq!(block_on(first), Err(Error::Cancelled));
    });
}
