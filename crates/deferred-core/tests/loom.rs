//! Loom models of every atomic protocol in the cell: `cargo xtask test-loom`.
//!
//! Each model checks one property with at most three threads. Under `--cfg loom` the cell's
//! atomics and `UnsafeCell`s are loom's, so loom explores every interleaving (up to
//! `LOOM_MAX_PREEMPTIONS`) and flags any unsynchronized access; a wait list that touched a
//! dropped node, or a waiter left asleep, shows up as a failure or a deadlock.
#![cfg(loom)]
#![allow(clippy::std_instead_of_core)] // tests run on std; `core::` paths matter in the library only.

use std::{
    pin::pin,
    sync::atomic::Ordering::SeqCst,
    task::{Context, Poll},
};

use deferred_core::{Deferred, Error};
use futures::task::noop_waker;
use loom::{
    future::block_on,
    sync::{
        atomic::{AtomicBool, AtomicUsize},
        Arc,
    },
    thread,
};

fn poll_once<F: std::future::Future>(fut: std::pin::Pin<&mut F>) -> Poll<F::Output> {
    fut.poll(&mut Context::from_waker(&noop_waker()))
}

#[test]
fn complete_vs_await() {
    loom::model(|| {
        let cell = Arc::new(Deferred::<usize>::new());
        let c = cell.clone();
        let t = thread::spawn(move || c.succeed(1).unwrap());
        assert_eq!(block_on(cell.wait()), Ok(&1));
        t.join().unwrap();
    });
}

#[test]
fn complete_vs_drop_of_a_polled_waiter() {
    loom::model(|| {
        let cell = Arc::new(Deferred::<usize>::new());
        let c = cell.clone();
        let t = thread::spawn(move || c.succeed(1).unwrap());
        {
            let mut fut = pin!(cell.wait());
            let _ = poll_once(fut.as_mut());
            // Dropped here, possibly while the completer drains the list.
        }
        t.join().unwrap();
        assert_eq!(cell.get(), Some(&1));
    });
}

#[test]
fn two_completers_one_winner() {
    loom::model(|| {
        let cell = Arc::new(Deferred::<usize, usize>::new());
        let c = cell.clone();
        let t = thread::spawn(move || c.succeed(1).is_ok());
        let mine = cell.fail(2).is_ok();
        let theirs = t.join().unwrap();
        assert!(mine ^ theirs, "exactly one completion wins");
        let expected = if theirs {
            Ok(&1)
        } else {
            Err(Error::Failed(&2))
        };
        assert_eq!(cell.try_get(), Some(expected));
    });
}

#[test]
fn claim_holder_dropped_vs_waiter_taking_over() {
    loom::model(|| {
        let cell = Arc::new(Deferred::<usize>::new());
        let runs = Arc::new(AtomicUsize::new(0));
        let (c, r) = (cell.clone(), runs.clone());
        let holder = thread::spawn(move || {
            // Runs an initializer that is cancelled after its first poll.
            let mut fut = pin!(c.get_or_init(|| async {
                r.fetch_add(1, SeqCst);
                futures::pending!();
                1
            }));
            let _ = poll_once(fut.as_mut());
        });
        let r = runs.clone();
        let got = block_on(cell.get_or_init(|| async {
            r.fetch_add(1, SeqCst);
            2
        }));
        assert_eq!(
            got,
            Ok(&2),
            "the abandoned claim must reach the waiting initializer"
        );
        holder.join().unwrap();
        assert!(runs.load(SeqCst) <= 2);
    });
}

#[test]
fn wake_all_spanning_batches_while_a_waiter_drops() {
    // The loom build wakes in batches of two, so three waiters take two batches.
    loom::model(|| {
        let cell = Arc::new(Deferred::<usize>::new());
        let c = cell.clone();
        let mut a = Box::pin(cell.wait());
        let mut b = Box::pin(cell.wait());
        let mut d = Box::pin(cell.wait());
        assert!(poll_once(a.as_mut()).is_pending());
        assert!(poll_once(b.as_mut()).is_pending());
        assert!(poll_once(d.as_mut()).is_pending());
        let t = thread::spawn(move || c.succeed(5).unwrap());
        drop(b); // concurrently with the drain
        t.join().unwrap();
        assert_eq!(poll_once(a.as_mut()), Poll::Ready(Ok(&5)));
        assert_eq!(poll_once(d.as_mut()), Poll::Ready(Ok(&5)));
    });
}

#[test]
fn waiters_on_two_threads_are_all_woken() {
    // Three threads contending for the list lock (a completer's fast path holds it while it
    // moves the value in) make long executions and a large space: allow more than loom's
    // default 1000 branch points in one, and explore one preemption (not the suite's two)
    // so the model fits in CI. Two-thread models cover the same paths with two preemptions.
    let mut builder = loom::model::Builder::new();
    builder.max_branches = 50_000;
    builder.preemption_bound = Some(1);
    builder.check(|| {
        let cell = Arc::new(Deferred::<usize>::new());
        let (c1, c2) = (cell.clone(), cell.clone());
        let w1 = thread::spawn(move || *block_on(c1.wait()).unwrap());
        let w2 = thread::spawn(move || *block_on(c2.wait()).unwrap());
        cell.succeed(3).unwrap();
        assert_eq!(w1.join().unwrap(), 3);
        assert_eq!(w2.join().unwrap(), 3);
    });
}

#[test]
fn blocking_waiter_vs_completer() {
    loom::model(|| {
        let cell = Arc::new(Deferred::<usize>::new());
        let c = cell.clone();
        let t = thread::spawn(move || c.succeed(8).unwrap());
        assert_eq!(cell.wait_blocking(), Ok(&8));
        t.join().unwrap();
    });
}

#[test]
fn dropped_producer_vs_waiter() {
    loom::model(|| {
        let cell = Arc::new(Deferred::<usize>::new());
        let c = cell.clone();
        let t = thread::spawn(move || drop(c.producer()));
        assert_eq!(block_on(cell.wait()), Err(Error::Cancelled));
        t.join().unwrap();
    });
}

#[test]
fn claim_handoff_vs_completion() {
    // A claim is released while a third party completes the cell: the waiting claimant
    // either gets the claim (and loses its completion) or sees the outcome; never hangs.
    loom::model(|| {
        let cell = Arc::new(Deferred::<usize>::new());
        let claim = cell.try_claim().unwrap();
        let c = cell.clone();
        let t = thread::spawn(move || {
            let _ = c.succeed(1);
        });
        let c2 = cell.clone();
        let claimant = thread::spawn(move || match block_on(c2.claim()) {
            Ok(claim) => {
                let _ = claim.succeed(2);
            }
            Err(outcome) => assert!(outcome.is_ok()),
        });
        drop(claim);
        t.join().unwrap();
        claimant.join().unwrap();
        assert!(cell.get().is_some());
    });
}

#[test]
fn values_are_not_leaked() {
    // loom's Arc reports leaks at the end of each execution.
    loom::model(|| {
        let value = Arc::new(0usize);
        let cell = Arc::new(Deferred::<Arc<usize>, Arc<usize>>::new());
        let (c, v) = (cell.clone(), value.clone());
        let t = thread::spawn(move || {
            let _ = c.succeed(v);
        });
        let _ = cell.fail(value.clone());
        t.join().unwrap();
        drop(cell);
        assert_eq!(Arc::strong_count(&value), 1);
    });
}

#[test]
fn lazy_start_raced_by_two_awaiters() {
    loom::model(|| {
        let runs = Arc::new(AtomicUsize::new(0));
        let r = runs.clone();
        let lazy = deferred_core::Lazy::new(move || async move {
            r.fetch_add(1, SeqCst);
            Ok::<_, ()>(4usize)
        });
        let l = lazy.clone();
        let t = thread::spawn(move || *block_on(l.wait()).unwrap());
        assert_eq!(block_on(lazy.wait()), Ok(&4));
        assert_eq!(t.join().unwrap(), 4);
        assert_eq!(runs.load(SeqCst), 1);
    });
}

#[test]
fn try_claim_vs_a_claimant_taking_a_free_claim() {
    // A claimant that finds the claim free under the lock must take it atomically: a
    // concurrent `try_claim` does not wait for the lock. Never two holders.
    loom::model(|| {
        let cell = Arc::new(Deferred::<usize>::new());
        let first = cell.try_claim().unwrap();
        let claimant_got = Arc::new(AtomicBool::new(false));
        let (c, got) = (cell.clone(), claimant_got.clone());
        let t = thread::spawn(move || {
            let mut fut = pin!(c.claim());
            if let Poll::Ready(Ok(claim)) = poll_once(fut.as_mut()) {
                got.store(true, SeqCst);
                std::mem::forget(claim); // hold it to the end
            }
        });
        drop(first);
        let tried = cell.try_claim().map(std::mem::forget).is_some();
        t.join().unwrap();
        assert!(!(claimant_got.load(SeqCst) && tried), "two claim holders");
    });
}

#[test]
fn a_handed_over_initializer_losing_to_a_completer_does_not_spin() {
    loom::model(|| {
        let cell = Arc::new(Deferred::<usize>::new());
        let first = cell.try_claim().unwrap();
        let mut init = Box::pin(cell.get_or_init(|| async { 2 }));
        assert!(poll_once(init.as_mut()).is_pending());
        drop(first); // handed to `init`
        let c = cell.clone();
        let t = thread::spawn(move || {
            let _ = c.succeed(1);
        });
        let _ = poll_once(init.as_mut());
        t.join().unwrap();
        assert!(matches!(poll_once(init.as_mut()), Poll::Ready(Ok(_))));
    });
}

#[test]
fn on_complete_vs_complete_runs_the_callback_once() {
    loom::model(|| {
        let cell = Arc::new(Deferred::<usize>::new());
        let runs = Arc::new(AtomicUsize::new(0));
        let c = cell.clone();
        let t = thread::spawn(move || c.succeed(6).unwrap());
        let r = runs.clone();
        cell.on_complete(move |outcome| {
            assert_eq!(outcome, Ok(&6));
            r.fetch_add(1, SeqCst);
        });
        t.join().unwrap();
        assert_eq!(runs.load(SeqCst), 1);
    });
}

#[test]
fn lazy_abort_vs_a_driving_awaiter() {
    loom::model(|| {
        let lazy: deferred_core::Lazy<usize, ()> = deferred_core::Lazy::boxed(async {
            std::future::pending::<()>().await;
            Ok(1)
        });
        let l = lazy.clone();
        let t = thread::spawn(move || block_on(l.wait_owned()));
        assert!(lazy.abort());
        assert_eq!(t.join().unwrap(), Err(Error::Cancelled));
    });
}

#[test]
fn rwlock_readers_never_see_a_half_written_value() {
    // Under loom the spin lock sits behind loom's own `RwLock` (see `sync.rs`), so this
    // checks the access discipline (loom's `UnsafeCell` tracking), with two readers racing a
    // writer.
    loom::model(|| {
        let lock = Arc::new(deferred_core::sync::SpinRwLock::new((0usize, 0usize)));
        let l = lock.clone();
        let writer = thread::spawn(move || {
            l.write(|v| {
                v.0 += 1;
                v.1 += 1;
            })
        });
        let l = lock.clone();
        let reader = thread::spawn(move || l.read(|v| assert_eq!(v.0, v.1)));
        lock.read(|v| assert_eq!(v.0, v.1));
        writer.join().unwrap();
        reader.join().unwrap();
        assert_eq!(lock.read(|v| *v), (1, 1));
    });
}

/// A lazy cell whose computation never finishes and hands out the waker it is polled with
/// (the cell's relay), with a completion callback linked first and `waiters` awaiters polled
/// once behind it: the list is `[callback, waiters…]`.
struct RelayFixture {
    lazy: deferred_core::Lazy<usize, ()>,
    relay: std::task::Waker,
    callback_runs: Arc<AtomicUsize>,
    waits: Vec<std::pin::Pin<Box<deferred_core::OwnedLazyWait<usize, ()>>>>,
}

impl RelayFixture {
    /// Completes the cell and checks that the callback ran once and every awaiter sees it.
    fn complete_and_check(mut self) {
        let _ = self.lazy.succeed(1);
        self.check_completed();
    }

    fn check_completed(&mut self) {
        assert_eq!(self.callback_runs.load(SeqCst), 1, "the callback runs once");
        for wait in &mut self.waits {
            assert_eq!(poll_once(wait.as_mut()), Poll::Ready(Ok(1)));
        }
    }
}

fn relay_fixture(waiters: usize) -> RelayFixture {
    let slot: std::sync::Arc<std::sync::Mutex<Option<std::task::Waker>>> = Default::default();
    let s = std::sync::Arc::clone(&slot);
    let lazy: deferred_core::Lazy<usize, ()> =
        deferred_core::Lazy::boxed(futures::future::poll_fn(move |cx| {
            *s.lock().unwrap() = Some(cx.waker().clone());
            Poll::<Result<usize, ()>>::Pending
        }));
    let callback_runs = Arc::new(AtomicUsize::new(0));
    let r = callback_runs.clone();
    lazy.on_complete(move |_| {
        r.fetch_add(1, SeqCst);
    });
    let waits = (0..waiters)
        .map(|_| {
            let mut wait = Box::pin(lazy.clone().wait_owned());
            assert!(poll_once(wait.as_mut()).is_pending());
            wait
        })
        .collect();
    let relay = slot
        .lock()
        .unwrap()
        .clone()
        .expect("the computation was polled");
    RelayFixture {
        lazy,
        relay,
        callback_runs,
        waits,
    }
}

#[test]
fn two_relay_wakes_with_a_callback_linked() {
    // Two wake-waiters rounds at once, with a callback at the head of the list: a round
    // whose sentinel the other round took must end (#11.1: it re-queued the callback
    // forever with the lock held). Two waiters fill a loom batch of two, so the first round
    // relocks after its first batch.
    loom::model(|| {
        let fixture = relay_fixture(2);
        let relay = fixture.relay.clone();
        let t = thread::spawn(move || relay.wake_by_ref());
        fixture.relay.wake_by_ref();
        t.join().unwrap();
        fixture.complete_and_check();
    });
}

#[test]
fn relay_wake_vs_completion_with_a_callback_linked() {
    // A wake-waiters round against a completion whose drain takes the round's sentinel
    // while a callback is linked: the round ends, the callback runs once (#11.1). Three
    // waiters: the round's first batch takes the callback (re-queued) and two waiters, the
    // drain's first batch the third waiter and the sentinel, leaving the callback alone.
    loom::model(|| {
        let mut fixture = relay_fixture(3);
        let relay = fixture.relay.clone();
        let t = thread::spawn(move || relay.wake_by_ref());
        let _ = fixture.lazy.succeed(1);
        t.join().unwrap();
        fixture.check_completed();
    });
}
