//! Loom models of every atomic protocol in the cell: `cargo xtask test-loom`.
//!
//! Each model checks one property with at most three threads. Under `--cfg loom` the cell's
//! atomics and `UnsafeCell`s are loom's, so loom explores every interleaving (up to
//! `LOOM_MAX_PREEMPTIONS`) and flags any unsynchronized access; a wait list that touched a
//! dropped node, or a waiter left asleep, shows up as a failure or a deadlock. Without
//! `--cfg loom` each model runs once on std threads (`deferred_test_support::loom`), a plain
//! test that `cargo test` and miri run too. Five models are loom's alone: four of
//! `new_unmodelled` locks (a loom-only constructor), and one that counts loom's schedules.

// The models use blocking waits and std threads: a build without the `std` feature (xtask's
// `test` runs one, `--no-default-features --features alloc`) has neither.
#![cfg(any(loom, feature = "std"))]
#![allow(clippy::std_instead_of_core)] // tests run on std; `core::` paths matter in the library only.

use std::{
    future::Future,
    pin::{pin, Pin},
    sync::atomic::Ordering::{Acquire, Release, SeqCst},
    task::{Context, Poll, Waker},
    time::Duration,
};

use deferred_core::{Deferred, Error, Lazy};
use deferred_test_support::loom::{
    self,
    future::block_on,
    sync::{
        atomic::{AtomicBool, AtomicUsize},
        Arc,
    },
    thread,
};
use deferred_test_support::{poll_once, poll_with};
use futures::task::ArcWake;

/// A waker that counts its wakes, so a model can tell which of a future's wakers the cell
/// kept.
struct CountingWaker(AtomicUsize);

impl ArcWake for CountingWaker {
    fn wake_by_ref(this: &std::sync::Arc<Self>) {
        // Release: pairs with the Acquire in `wakes`.
        this.0.fetch_add(1, Release);
    }
}

impl CountingWaker {
    fn new() -> (Waker, std::sync::Arc<Self>) {
        let count = std::sync::Arc::new(CountingWaker(AtomicUsize::new(0)));
        (futures::task::waker(count.clone()), count)
    }

    fn wakes(&self) -> usize {
        self.0.load(Acquire)
    }
}

/// A cell that outlives every thread of the execution, so that futures and claims that
/// borrow it can move into spawned threads (loom has no scoped threads). Leaked: loom only
/// checks its own `Arc`s and allocations for leaks, and this is a few bytes per execution.
fn leaked_cell() -> &'static Deferred<usize> {
    keep_reachable(Box::leak(Box::new(Deferred::new())))
}

/// In a plain run, keeps what a model leaks reachable from a static, so that miri's leak
/// check (which ignores memory a static reaches) does not report it. Under loom: as given.
fn keep_reachable<T: Sync>(leaked: &'static T) -> &'static T {
    #[cfg(not(loom))]
    {
        static KEPT: std::sync::Mutex<Vec<&'static dyn Sync>> = std::sync::Mutex::new(Vec::new());
        KEPT.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(leaked);
    }
    leaked
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

/// A claim handed over by another thread, whose own completion then races the taker's. The
/// taker's initializer is ready at once, so a taker that loses to a completion not yet
/// published waits again as a claimant (`Waiter::link`, under the lock): it never waits as a
/// plain waiter, and never reaches `Waiter::link_fresh` (the next model does).
#[test]
fn a_claim_granted_by_another_thread_then_a_plain_wait_vs_its_completion() {
    loom::model(|| {
        let cell = leaked_cell();
        let first = cell.try_claim().unwrap();
        let mut init = Box::pin(cell.get_or_init(|| async { 2 }));
        assert!(poll_once(init.as_mut()).is_pending()); // queued for the claim
        let t = thread::spawn(move || {
            drop(first); // handed to `init`, from this thread
            let _ = cell.succeed(1);
        });
        let got = *block_on(init.as_mut()).unwrap();
        t.join().unwrap();
        assert_eq!(cell.get(), Some(&got));
    });
}

/// The same hand-over, to an initializer that is pending: its caller then waits as a plain
/// waiter, and that first plain link writes its node's notify with no lock held
/// (`Waiter::link_fresh`), in a node the granter last touched under the lock, while the
/// granter completes the cell directly and drains the lists. (The model above completes its
/// initializer at once, so it never waits as a plain waiter and never reaches
/// `link_fresh`.)
#[test]
fn a_claim_granted_by_another_thread_to_a_pending_initializer_vs_a_direct_completion() {
    loom::model(|| {
        let cell = leaked_cell();
        let first = cell.try_claim().unwrap();
        let mut init = Box::pin(cell.get_or_init(std::future::pending::<usize>));
        assert!(poll_once(init.as_mut()).is_pending()); // queued for the claim
        let t = thread::spawn(move || {
            drop(first); // handed to `init`, from this thread
            let _ = cell.succeed(1);
        });
        // Woken by the hand-over, it runs its initializer and links as a plain waiter;
        // woken again by the completion, it drops the initializer and reads the outcome.
        assert_eq!(block_on(init.as_mut()), Ok(&1));
        t.join().unwrap();
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
    // Under loom the spin lock made by `new` sits behind a gate, readers included
    // (see `sync.rs`), so this checks the access discipline (loom's `UnsafeCell` tracking),
    // with two readers racing a writer; the `spin_*` models below check the spin protocol.
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

#[test]
fn lazy_wake_during_a_drive_vs_a_late_waiter() {
    // The computation's event fires and wakes it (REPOLL, and a notify round that finds no
    // one linked) while a driver may be polling it, and then an awaiter links and finds the
    // driver busy, so it returns Pending. The driver's poll must see the event (a wake that
    // landed before it took DRIVING is one its poll covers), or the driver, as it releases
    // DRIVING, must see the wake and run a notify round of its own; otherwise the awaiter
    // sleeps for ever beside a computation that can finish. The driver is `drive_now`,
    // which links no node of its own (an awaiting driver would be woken by the event's
    // round itself); the event is over before the awaiter links (joined), so its round
    // cannot reach the awaiter.
    loom::model(|| {
        let fired = Arc::new(AtomicBool::new(false));
        let waker_slot: std::sync::Arc<std::sync::Mutex<Option<Waker>>> = Default::default();
        let (f, slot) = (fired.clone(), waker_slot.clone());
        let lazy: Lazy<usize, ()> = Lazy::boxed(futures::future::poll_fn(move |cx| {
            *slot.lock().unwrap() = Some(cx.waker().clone());
            // Acquire: pairs with the Release of the event below.
            if f.load(Acquire) {
                Poll::Ready(Ok(1))
            } else {
                Poll::Pending
            }
        }));
        // A first poll before the threads start, which hands out the computation's waker
        // (the cell's relay, the same on every poll) for the event to wake.
        assert!(!lazy.drive_now());
        let relay = waker_slot.lock().unwrap().clone().unwrap();
        let l = lazy.clone();
        let driver = thread::spawn(move || {
            l.drive_now();
        });
        let event = thread::spawn(move || {
            fired.store(true, Release);
            relay.wake();
        });
        event.join().unwrap();
        let mut wait = Box::pin(lazy.wait());
        let (waker, wakes) = CountingWaker::new();
        let polled = poll_with(wait.as_mut(), &waker);
        driver.join().unwrap();
        if polled.is_pending() {
            assert!(
                wakes.wakes() > 0,
                "the awaiter sleeps beside a computation that can finish"
            );
            assert_eq!(poll_with(wait.as_mut(), &waker), Poll::Ready(Ok(&1)));
        } else {
            assert_eq!(polled, Poll::Ready(Ok(&1)));
        }
    });
}

#[test]
fn granted_claimant_dropped_during_hand_off() {
    // A released claim is handed to the oldest claimant (its node marked Granted) just as
    // that claimant's future is dropped, before it polls again: the drop must pass the
    // claim on to the next claimant. Lost, the next claimant waits for ever; passed on
    // twice (or freed as well as passed), two callers hold it at once. The dropped
    // claimant is a `get_or_init`, whose initializer must then never run.
    loom::model(|| {
        let cell = leaked_cell();
        let holder = cell.try_claim().unwrap();
        let mut first = Box::pin(cell.get_or_init(|| -> std::future::Ready<usize> {
            unreachable!("a claimant dropped before it polls runs nothing")
        }));
        assert!(poll_once(first.as_mut()).is_pending());
        let mut second = Box::pin(cell.claim());
        assert!(poll_once(second.as_mut()).is_pending());
        let dropper = thread::spawn(move || drop(first));
        drop(holder); // handed to `first` (if it is still linked), or else to `second`
        let claim = block_on(second).expect("the claim reaches the second claimant");
        assert!(cell.try_claim().is_none(), "two claim holders");
        dropper.join().unwrap();
        assert!(cell.try_claim().is_none(), "two claim holders");
        drop(claim); // no one waits: the claim is free again
        assert!(cell.try_claim().is_some());
    });
}

#[test]
fn repoll_with_a_new_waker_vs_drain() {
    // A waiter polled with one waker is polled again with another while the cell completes:
    // the drain may take the node before, between or after the steps that swap its waker.
    // The re-poll must return Ready, or else leave the new waker to be woken; if the drain
    // woke the old one and the re-poll returned Pending, the task would sleep for ever.
    loom::model(|| {
        let cell = Arc::new(Deferred::<usize>::new());
        let mut wait = Box::pin(cell.wait());
        let (old, _) = CountingWaker::new();
        assert!(poll_with(wait.as_mut(), &old).is_pending());
        let c = cell.clone();
        let completer = thread::spawn(move || c.succeed(1).unwrap());
        let (new, new_wakes) = CountingWaker::new();
        let polled = poll_with(wait.as_mut(), &new);
        completer.join().unwrap();
        if polled.is_pending() {
            assert_eq!(new_wakes.wakes(), 1, "the newest waker is woken");
            assert_eq!(poll_with(wait.as_mut(), &new), Poll::Ready(Ok(&1)));
        } else {
            assert_eq!(polled, Poll::Ready(Ok(&1)));
        }
    });
}

#[test]
fn repoll_with_a_new_waker_vs_grant() {
    // As `repoll_with_a_new_waker_vs_drain`, for a claimant polled again with a new waker
    // while the holder releases the claim to it: the re-poll takes the grant, or the grant
    // wakes the new waker; never the old waker alone with the re-poll Pending.
    loom::model(|| {
        let cell = leaked_cell();
        let holder = cell.try_claim().unwrap();
        let mut claimant = Box::pin(cell.claim());
        let (old, _) = CountingWaker::new();
        assert!(poll_with(claimant.as_mut(), &old).is_pending());
        let releaser = thread::spawn(move || drop(holder));
        let (new, new_wakes) = CountingWaker::new();
        let polled = poll_with(claimant.as_mut(), &new);
        releaser.join().unwrap();
        let claim = match polled {
            Poll::Ready(claim) => claim,
            Poll::Pending => {
                assert_eq!(new_wakes.wakes(), 1, "the newest waker is woken");
                match poll_with(claimant.as_mut(), &new) {
                    Poll::Ready(claim) => claim,
                    Poll::Pending => panic!("woken, but not granted"),
                }
            }
        };
        assert!(claim.is_ok(), "nobody completes the cell");
        assert!(cell.try_claim().is_none(), "two claim holders");
    });
}

#[test]
fn lazy_try_attach_vs_a_polling_awaiter() {
    // A computation is attached to a pending `Lazy` while its awaiter polls: the awaiter
    // either finds it attached and drives it, or is linked before the attacher's notify
    // round and is woken to drive it. Missed by both, the awaiter sleeps for ever beside a
    // computation no one runs.
    loom::model(|| {
        let lazy: Lazy<usize, ()> = Lazy::pending();
        let l = lazy.clone();
        let awaiter = thread::spawn(move || block_on(l.wait_owned()));
        let runs = Arc::new(AtomicUsize::new(0));
        let r = runs.clone();
        let attached = lazy.try_attach(Box::pin(async move {
            r.fetch_add(1, SeqCst);
            Ok(1)
        }));
        assert!(
            attached.is_ok(),
            "a pending cell with no computation takes one"
        );
        assert_eq!(awaiter.join().unwrap(), Ok(1));
        assert_eq!(runs.load(SeqCst), 1);
    });
}

#[test]
fn lazy_try_attach_vs_abort() {
    // A computation is attached while another thread aborts the cell and an awaiter waits.
    // The attacher may pass its check of the cell just before the abort, and the abort may
    // find no computation to drop, or find the awaiter polling it. Nothing may start the
    // computation once the abort has taken effect: the one poll that may still run after
    // `abort` returns is the one already under way (`abort` drops the computation "as soon
    // as that poll returns"), and it must then drop the computation. The awaiter resolves
    // with the abort, or with the computation's value if that came first.
    loom::model(|| {
        let lazy: Lazy<usize, ()> = Lazy::pending();
        let aborted = Arc::new(AtomicBool::new(false));
        let late_polls = Arc::new(AtomicUsize::new(0));
        let dropped = Arc::new(AtomicBool::new(false));
        let (l, a, p) = (lazy.clone(), aborted.clone(), late_polls.clone());
        let guard = SetOnDrop(dropped.clone());
        let attacher = thread::spawn(move || {
            let _ = l.try_attach(Box::pin(futures::future::poll_fn(move |_| {
                let _owned = &guard;
                // Acquire: pairs with the Release after `abort` below.
                if a.load(Acquire) {
                    p.fetch_add(1, SeqCst);
                    // Aborted: this computation would wait for ever; it must be dropped.
                    Poll::Pending
                } else {
                    Poll::Ready(Ok(1))
                }
            })));
        });
        let l = lazy.clone();
        let awaiter = thread::spawn(move || {
            let mut wait = Box::pin(l.wait_owned());
            let (waker, wakes) = CountingWaker::new();
            (poll_with(wait.as_mut(), &waker), wait, wakes)
        });
        let won = lazy.abort();
        aborted.store(true, Release);
        let (polled, mut wait, wakes) = awaiter.join().unwrap();
        attacher.join().unwrap();
        let outcome = match polled {
            Poll::Ready(outcome) => outcome,
            Poll::Pending => {
                assert!(wakes.wakes() > 0, "the awaiter is never woken");
                match poll_once(wait.as_mut()) {
                    Poll::Ready(outcome) => outcome,
                    Poll::Pending => panic!("woken, but the cell is not complete"),
                }
            }
        };
        // The abort loses only to the computation's own completion.
        let expected = if won { Err(Error::Cancelled) } else { Ok(1) };
        assert_eq!(outcome, expected);
        match late_polls.load(SeqCst) {
            0 => {}
            1 => assert!(
                dropped.load(Acquire),
                "the poll under way at the abort drops the computation"
            ),
            n => panic!("{n} polls after abort returned"),
        }
    });
}

/// Sets its flag when dropped: tells a model that a computation was dropped.
struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        // Release: pairs with the Acquire that checks the flag.
        self.0.store(true, Release);
    }
}

#[test]
#[cfg(loom)] // `new_unmodelled` (the spin protocol under loom) exists under loom only
fn spin_mutex_two_lockers_never_overlap() {
    // The spin mutex without the loom mutex in front: its CAS (Acquire) and its release
    // (Release) alone must order the two critical sections. Overlapping sections show up as
    // a data race on the value (loom's `UnsafeCell` tracking) or a lost increment.
    loom::model(|| {
        let mutex = Arc::new(deferred_core::sync::SpinMutex::new_unmodelled(0usize));
        let m = mutex.clone();
        let t = thread::spawn(move || m.with(|n| *n += 1));
        mutex.with(|n| *n += 1);
        t.join().unwrap();
        assert_eq!(mutex.with(|n| *n), 2);
    });
}

#[test]
#[cfg(loom)] // `new_unmodelled` (the spin protocol under loom) exists under loom only
fn spin_rwlock_reader_never_sees_a_half_written_pair() {
    // The spin reader-writer lock without the loom mutex in front: a reader's CAS and a
    // writer's must exclude each other, and the writer's release must publish both halves
    // of its write to the next reader. A reader inside a write shows up as a data race or
    // as a pair with unequal halves.
    loom::model(|| {
        let lock = Arc::new(deferred_core::sync::SpinRwLock::new_unmodelled((
            0usize, 0usize,
        )));
        let l = lock.clone();
        let writer = thread::spawn(move || {
            l.write(|v| {
                v.0 += 1;
                v.1 += 1;
            })
        });
        let seen = lock.read(|v| {
            assert_eq!(v.0, v.1, "half a write");
            v.0
        });
        writer.join().unwrap();
        assert!(seen <= 1);
        assert_eq!(lock.read(|v| *v), (1, 1));
    });
}

#[test]
#[cfg(loom)] // `new_unmodelled` (the spin protocol under loom) exists under loom only
fn spin_rwlock_two_writers_never_overlap() {
    // Two writers on the spin reader-writer lock with no gate in front: the second writer's
    // CAS (and its WAITING bit, set while the first holds the lock) must exclude the first,
    // and the first's release must publish both halves of its write to the second.
    loom::model(|| {
        let lock = Arc::new(deferred_core::sync::SpinRwLock::new_unmodelled((
            0usize, 0usize,
        )));
        let l = lock.clone();
        let add = |v: &mut (usize, usize)| {
            assert_eq!(v.0, v.1, "half a write");
            v.0 += 1;
            v.1 += 1;
        };
        let writer = thread::spawn(move || l.write(add));
        lock.write(add);
        writer.join().unwrap();
        assert_eq!(lock.read(|v| *v), (2, 2));
    });
}

/// A thread that waits for a lock under loom parks on its one park token, which the code
/// around the lock uses too: here a future's waker unparks the thread that polls it, and that
/// thread takes a lock before it parks for the wake. If the wake lands while the thread is
/// parked in the lock's wait, the lock's wait must hand it on (on hardware a contender only
/// spins, and the token is untouched): an earlier wait used it up, and the caller's `park`
/// then never returned, a deadlock no hardware has.
#[test]
fn a_lock_wait_keeps_the_callers_park_token() {
    struct Unparker(loom::thread::Thread);
    impl ArcWake for Unparker {
        fn wake_by_ref(this: &std::sync::Arc<Self>) {
            this.0.unpark();
        }
    }
    loom::model(|| {
        let cell = leaked_cell();
        let lock = Arc::new(deferred_core::sync::SpinMutex::new(()));
        let l = lock.clone();
        let holder = thread::spawn(move || l.with(|_| ()));
        let completer = thread::spawn(move || cell.succeed(1).unwrap());
        let waker = futures::task::waker(std::sync::Arc::new(Unparker(thread::current())));
        let mut wait = pin!(cell.wait());
        let mut first = true;
        loop {
            if let Poll::Ready(got) = poll_with(wait.as_mut(), &waker) {
                assert_eq!(got, Ok(&1));
                break;
            }
            if first {
                first = false;
                lock.with(|_| ());
            }
            thread::park();
        }
        holder.join().unwrap();
        completer.join().unwrap();
    });
}

#[test]
#[cfg(loom)] // `new_unmodelled` (the spin protocol under loom) exists under loom only
fn spin_rwlock_writer_preference_vs_a_late_reader() {
    // A writer that finds a reader inside sets WAITING, which holds new readers off; a
    // reader arriving then waits behind the writer. If the first reader's unlock did not
    // let the writer in, or the writer took the lock and left its WAITING bit set (new
    // readers would wait for a writer that is gone), or the writer's unlock did not let the
    // late reader in, the threads would deadlock, which loom reports.
    loom::model(|| {
        let lock = Arc::new(deferred_core::sync::SpinRwLock::new_unmodelled((
            0usize, 0usize,
        )));
        let l = lock.clone();
        let reader = thread::spawn(move || l.read(|v| assert_eq!(v.0, v.1, "half a write")));
        let l = lock.clone();
        let writer = thread::spawn(move || {
            l.write(|v| {
                v.0 += 1;
                v.1 += 1;
            })
        });
        lock.read(|v| assert_eq!(v.0, v.1, "half a write"));
        reader.join().unwrap();
        writer.join().unwrap();
        assert_eq!(lock.read(|v| *v), (1, 1));
    });
}

/// A computation that never finishes and owns a `SetOnDrop`, so a model sees it dropped.
struct NeverReady(#[allow(dead_code)] SetOnDrop);

impl Future for NeverReady {
    type Output = Result<usize, ()>;
    fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Pending
    }
}

#[test]
fn lazy_abort_vs_drive_now_drops_the_computation() {
    // `abort` finds a driver polling the computation (DRIVING held, its poll about to return
    // Pending with the cell not yet cancelled), so it cannot drop the computation itself; the
    // driver must drop it as it releases DRIVING. Before RETIRE, nobody did: a complete cell
    // is never driven again, so the computation lived until the last handle (found by an
    // independent review; fails at one preemption without the fix).
    loom::model(|| {
        let dropped = Arc::new(AtomicBool::new(false));
        let lazy: Lazy<usize, (), fn() -> NeverReady, NeverReady> =
            Lazy::from_future(NeverReady(SetOnDrop(dropped.clone())));
        let l = lazy.clone();
        let driver = thread::spawn(move || {
            l.drive_now();
        });
        assert!(lazy.abort());
        driver.join().unwrap();
        assert_eq!(lazy.try_get(), Some(Err(Error::Cancelled)));
        assert!(
            dropped.load(Acquire),
            "the computation outlives abort and its driver"
        );
    });
}

#[test]
fn lazy_try_attach_vs_abort_drops_the_attached_computation() {
    // The attacher passes its `is_done` check and takes DRIVING over EMPTY; `abort` cancels
    // and finds DRIVING held. Whichever way it goes, once both return an attached
    // computation is gone: no one drives a complete cell, so no later poll would drop it
    // (found by an independent review; the zero-poll case `lazy_try_attach_vs_abort` missed).
    loom::model(|| {
        let lazy: Lazy<usize, ()> = Lazy::pending();
        let dropped = Arc::new(AtomicBool::new(false));
        let (l, d) = (lazy.clone(), dropped.clone());
        let attacher =
            thread::spawn(move || l.try_attach(Box::pin(NeverReady(SetOnDrop(d)))).is_ok());
        assert!(lazy.abort());
        let attached = attacher.join().unwrap();
        assert!(lazy.drive_now(), "complete: nothing to drive");
        if attached {
            assert!(
                dropped.load(Acquire),
                "the attached computation outlives the abort"
            );
        }
    });
}

#[test]
fn get_or_init_running_vs_direct_completion_and_a_claimant() {
    // A `get_or_init` holds the claim with its initializer pending (its node waits in the
    // plain list meanwhile) while another thread completes the cell directly and a third
    // waits for the claim. The initializer's caller must be woken (or see the value on its
    // next poll) and drop its initializer; the claimant must see the outcome, never the
    // claim of a complete cell (#11.3).
    loom::model(|| {
        let cell = leaked_cell();
        let dropped = Arc::new(AtomicBool::new(false));
        let guard = SetOnDrop(dropped.clone());
        let mut init = Box::pin(cell.get_or_init(move || async move {
            let _guard = guard;
            std::future::pending::<usize>().await
        }));
        let (waker, wakes) = CountingWaker::new();
        assert!(poll_with(init.as_mut(), &waker).is_pending());
        let completer = thread::spawn(move || {
            let _ = cell.succeed(7);
        });
        let claimant = thread::spawn(move || match block_on(cell.claim()) {
            Ok(_) => panic!("a claim of a cell completed by someone else"),
            Err(outcome) => outcome.copied(),
        });
        let polled = poll_with(init.as_mut(), &waker);
        completer.join().unwrap();
        assert_eq!(claimant.join().unwrap(), Ok(7));
        if polled.is_pending() {
            assert!(wakes.wakes() > 0, "the initializing caller is never woken");
            assert_eq!(poll_with(init.as_mut(), &waker), Poll::Ready(Ok(&7)));
        } else {
            assert_eq!(polled, Poll::Ready(Ok(&7)));
        }
        assert!(
            dropped.load(Acquire),
            "the initializer is dropped once the cell is done"
        );
    });
}

#[test]
fn last_waiter_leaving_vs_producer_parking_on_closed() {
    // The producer parks on `closed()` while the only waiter, linked, is dropped on another
    // thread. Whichever comes first, `closed` resolves: at once if it found no waiter, else
    // woken by the waiter's leaving (a producer left parked is a loom deadlock).
    loom::model(|| {
        let cell = leaked_cell();
        let mut producer = cell.producer().unwrap();
        let mut wait = Box::pin(cell.wait());
        assert!(poll_once(wait.as_mut()).is_pending());
        let waiter = thread::spawn(move || drop(wait));
        block_on(producer.closed());
        waiter.join().unwrap();
        assert!(producer.is_closed());
        drop(producer);
        assert!(cell.is_cancelled());
    });
}

#[test]
fn new_waiter_arriving_vs_closed_resolving() {
    // The producer waits on `closed()` beside a linked waiter, which then goes, while a new
    // waiter arrives (links, then goes) on another thread. Closed is not final: the new
    // waiter may link after the first one's leaving woke the producer (which then finds it
    // and waits again) or before (so that leaving wakes no one). In every order `closed`
    // resolves (a producer left parked is a loom deadlock), and once both are gone the
    // producer is closed.
    loom::model(|| {
        let cell = leaked_cell();
        let mut producer = cell.producer().unwrap();
        let mut first = Box::pin(cell.wait());
        assert!(poll_once(first.as_mut()).is_pending());
        let arriving = thread::spawn(move || {
            let mut wait = pin!(cell.wait());
            let _ = poll_once(wait.as_mut());
        });
        {
            let mut closed = pin!(producer.closed());
            let (waker, _) = CountingWaker::new();
            if poll_with(closed.as_mut(), &waker).is_pending() {
                drop(first);
                block_on(closed);
            }
        }
        arriving.join().unwrap();
        assert!(producer.is_closed());
    });
}

#[test]
fn direct_completion_vs_closed_wakes_the_producer() {
    // Someone else completes the cell while a waiter waits and the producer waits on
    // `closed()`: the completion's drain (or the waiter's leaving) wakes the producer, and
    // the producer's own completion then loses.
    loom::model(|| {
        let cell = leaked_cell();
        let mut producer = cell.producer().unwrap();
        let mut wait = Box::pin(cell.wait());
        assert!(poll_once(wait.as_mut()).is_pending());
        let completer = thread::spawn(move || {
            let _ = cell.succeed(1);
        });
        block_on(producer.closed());
        assert!(producer.is_closed());
        completer.join().unwrap();
        assert_eq!(producer.succeed(2), Err(2));
        drop(wait);
    });
}

#[test]
fn dispose_vs_closed_wakes_the_producer() {
    // A callback is all that waits; disposing it on another thread is the last waiter
    // leaving: the producer parked on `closed()` is woken.
    loom::model(|| {
        let cell = leaked_cell();
        let mut producer = cell.producer().unwrap();
        let handle = cell.on_complete(|_| {});
        let disposer = thread::spawn(move || assert!(handle.dispose()));
        block_on(producer.closed());
        disposer.join().unwrap();
        assert!(producer.is_closed());
    });
}

#[test]
fn dispose_vs_completion_exactly_one_happens() {
    // Of a callback's run and its `dispose` returning `true`, exactly one happens, however
    // the dispose and the completion's drain interleave (a callback ahead of it keeps the
    // drain busy across a batch boundary).
    loom::model(|| {
        let cell = Arc::new(Deferred::<usize>::new());
        let runs = Arc::new(AtomicUsize::new(0));
        let r = runs.clone();
        cell.on_complete(|_| {});
        let handle = cell.on_complete(move |outcome| {
            assert_eq!(outcome, Ok(&6));
            r.fetch_add(1, SeqCst);
        });
        let c = cell.clone();
        let t = thread::spawn(move || c.succeed(6).unwrap());
        let disposed = handle.dispose();
        t.join().unwrap();
        assert_eq!(usize::from(disposed) + runs.load(SeqCst), 1);
    });
}

#[test]
fn spin_locks_released_by_a_panicking_closure_do_not_poison_the_model() {
    // `SpinMutex::new` / `SpinRwLock::new` sit behind a gate under loom; a loom `Mutex`
    // there was poisoned by a guard dropped while unwinding, and the next lock panicked.
    // A closure that panics (caught, as the map's user-code paths do) must leave both locks
    // usable by the other thread and by this one.
    loom::model(|| {
        let mutex = Arc::new(deferred_core::sync::SpinMutex::new(0usize));
        let rwlock = Arc::new(deferred_core::sync::SpinRwLock::new(0usize));
        let (m, l) = (mutex.clone(), rwlock.clone());
        let t = thread::spawn(move || {
            m.with(|n| *n += 1);
            l.write(|n| *n += 1);
        });
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            mutex.with(|_| panic!("user code"));
        }));
        assert!(caught.is_err());
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            rwlock.read(|_| panic!("user code"));
        }));
        assert!(caught.is_err());
        t.join().unwrap();
        assert_eq!(mutex.with(|n| *n), 1);
        assert_eq!(rwlock.read(|n| *n), 1);
    });
}

/// The gate in front of the spin locks must not thin the models above it: another thread
/// may take a lock between a thread's previous operation and that thread's own lock. Each
/// thread here counts itself in (`fetch_add`) and then locks; a model must reach the schedule
/// in which the thread that counted itself in second locks first. A gate whose flag loom
/// could not see (taken between two loom operations) glued each lock to the operation before
/// it and never reached that schedule, and a cache race that fails at two preemptions passed
/// under it. This checks loom's coverage, not our code: it counts, across loom's runs, the
/// schedules that reach that point.
#[test]
#[cfg(loom)] // counts schedules across loom's runs: a plain run has one schedule
fn the_lock_gate_lets_another_thread_in_between_a_threads_last_operation_and_its_lock() {
    static REACHED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    type Section = dyn Fn(&mut dyn FnMut(&mut Vec<usize>)) + Send + Sync;
    let locks: [(&str, fn() -> std::sync::Arc<Section>); 2] = [
        ("SpinMutex", || {
            let lock = deferred_core::sync::SpinMutex::new(Vec::new());
            std::sync::Arc::new(move |f: &mut dyn FnMut(&mut Vec<usize>)| lock.with(|v| f(v)))
        }),
        ("SpinRwLock", || {
            let lock = deferred_core::sync::SpinRwLock::new(Vec::new());
            std::sync::Arc::new(move |f: &mut dyn FnMut(&mut Vec<usize>)| lock.write(|v| f(v)))
        }),
    ];
    for (name, make) in locks {
        REACHED.store(0, SeqCst);
        loom::model(move || {
            let turn = Arc::new(AtomicUsize::new(0));
            let section = make();
            let enter = move |turn: &AtomicUsize, section: &Section| {
                let mine = turn.fetch_add(1, SeqCst);
                section(&mut |order| {
                    if mine == 1 && order.is_empty() {
                        REACHED.fetch_add(1, SeqCst);
                    }
                    order.push(mine);
                });
            };
            let (t, s) = (turn.clone(), section.clone());
            let other = thread::spawn(move || enter(&t, &*s));
            enter(&turn, &*section);
            other.join().unwrap();
        });
        assert!(
            REACHED.load(SeqCst) > 0,
            "{name}: no schedule let the thread that counted itself in second lock first"
        );
    }
}

/// A relay round (`try_attach`'s `notify_waiters`) vs the only waiter leaving, while the
/// producer's `closed()` is linked: `closed` must resolve (a parked producer is a deadlock).
/// Two threads: the producer links its closer, runs the round, then waits on `closed`; the
/// waiter leaves on the other thread. (A review's three-thread model, with the round on a
/// third thread, took 398 s at two preemptions; this one keeps the closer linked across the
/// whole round and races both unlinkers, the round's pops and the waiter's leaving.)
#[test]
fn relay_round_vs_the_last_waiter_leaving_wakes_closed() {
    loom::model(|| {
        let lazy: &'static Lazy<usize, ()> = keep_reachable(Box::leak(Box::new(Lazy::pending())));
        let mut producer = lazy.deferred().producer().unwrap();
        let mut w = Box::pin(lazy.wait());
        assert!(poll_once(w.as_mut()).is_pending());
        let leaver = thread::spawn(move || drop(w));
        {
            let mut closed = pin!(producer.closed());
            if poll_once(closed.as_mut()).is_pending() {
                let _ = lazy.try_attach(Box::pin(std::future::pending::<Result<usize, ()>>()));
                block_on(closed);
            }
        }
        leaver.join().unwrap();
        assert!(producer.is_closed());
        drop(producer);
    });
}

/// Two unlinkers at once (a waiter dropped, a callback disposed), each of which may be
/// "the last one", while the producer waits on `closed()`.
#[test]
fn two_last_unlinkers_vs_closed() {
    loom::model(|| {
        let cell = leaked_cell();
        let mut producer = cell.producer().unwrap();
        let handle = cell.on_complete(|_| {});
        let mut w = Box::pin(cell.wait());
        assert!(poll_once(w.as_mut()).is_pending());
        let disposer = thread::spawn(move || assert!(handle.dispose()));
        let leaver = thread::spawn(move || drop(w));
        block_on(producer.closed());
        disposer.join().unwrap();
        leaver.join().unwrap();
        assert!(producer.is_closed());
    });
}

/// The producer drops its `Closed` unwoken (select! lost) while the last waiter's leaving
/// takes the closer off the list: the fast path of `Waiter::unlink` (the `Closed`'s `Drop`:
/// is_notified, no lock) vs `take_lone_closers`'s pop; loom flags a touch of the freed node
/// as a data race.
#[test]
fn closed_dropped_vs_the_last_waiter_leaving() {
    loom::model(|| {
        let cell = leaked_cell();
        let mut producer = cell.producer().unwrap();
        let mut w = Box::pin(cell.wait());
        assert!(poll_once(w.as_mut()).is_pending());
        {
            let mut closed = Box::pin(producer.closed());
            assert!(poll_once(closed.as_mut()).is_pending());
            let leaver = thread::spawn(move || drop(w));
            // dropped (and freed) here, racing the leaver
            drop(closed);
            leaver.join().unwrap();
        }
        assert!(producer.is_closed());
    });
}

/// The producer parks on `closed()` while the only other node, a `get_or_init` waiting for
/// the claim (the producer holds it, so the initializer waits in the claimant list, not
/// beside the closer), is dropped on another thread: the claimant's leaving must take the
/// closer off and wake it, whichever list it left (a parked producer is a loom deadlock).
#[test]
fn last_claimant_leaving_vs_producer_parking_on_closed() {
    loom::model(|| {
        let cell = leaked_cell();
        let mut producer = cell.producer().unwrap();
        let mut init = Box::pin(cell.get_or_init(|| -> std::future::Ready<usize> {
            unreachable!("the producer holds the claim")
        }));
        assert!(poll_once(init.as_mut()).is_pending());
        let leaver = thread::spawn(move || drop(init));
        block_on(producer.closed());
        leaver.join().unwrap();
        assert!(producer.is_closed());
        assert_eq!(producer.succeed(1), Ok(()));
        assert_eq!(cell.get(), Some(&1));
    });
}

/// A claimant (`claim()`, in the claimant list) and a plain waiter (in the waiter list,
/// beside the closer) leave at once on two threads while the producer waits on `closed()`:
/// each may be the last one, judged from the other list; whichever is, wakes the closer.
#[test]
fn a_claimant_and_a_waiter_leaving_vs_closed() {
    loom::model(|| {
        let cell = leaked_cell();
        let mut producer = cell.producer().unwrap();
        let mut claimant = Box::pin(cell.claim());
        assert!(poll_once(claimant.as_mut()).is_pending());
        let mut w = Box::pin(cell.wait());
        assert!(poll_once(w.as_mut()).is_pending());
        let claimant_leaves = thread::spawn(move || drop(claimant));
        let waiter_leaves = thread::spawn(move || drop(w));
        block_on(producer.closed());
        claimant_leaves.join().unwrap();
        waiter_leaves.join().unwrap();
        assert!(producer.is_closed());
    });
}

/// A blocking waiter whose deadline has passed (under loom the time-out is forced: a zero
/// timeout, which links the node once, then unlinks it) races a plain waiter's leaving
/// while the producer waits on `closed()`: whichever of the two leaves last (the timed-out
/// one, unlinking itself, or the plain one) must wake the closer, and the blocking waiter
/// times out (no one completes the cell). The plain waiter is linked first and the closer
/// polled beside it, so that the producer's side starts with the lock (a read-modify-write):
/// with a lone `closed()` poll (a load) first, loom, which keeps only an atomic's last access
/// for its race detection, lets the waiter thread's own loads hide it and explores one
/// schedule.
#[test]
fn timed_out_blocking_waiter_leaving_vs_closed() {
    loom::model(|| {
        let cell = leaked_cell();
        let mut producer = cell.producer().unwrap();
        let mut w = Box::pin(cell.wait());
        assert!(poll_once(w.as_mut()).is_pending());
        let blocking = thread::spawn(move || cell.wait_blocking_timeout(Duration::ZERO).is_none());
        {
            let mut closed = pin!(producer.closed());
            assert!(poll_once(closed.as_mut()).is_pending(), "`w` waits");
            drop(w);
            block_on(closed);
        }
        assert!(blocking.join().unwrap(), "no one completes the cell");
        assert!(producer.is_closed());
    });
}

/// A completion races a blocking waiter that times out (zero timeout: it links once, then
/// unlinks): the drain may pop its node (and unpark its thread) before, while or after it
/// unlinks. The waiter gets the value or times out, never hangs, and the drain never
/// touches its node after it has left (its stack frame is gone). The waiter is the spawned
/// thread, which ends once it returns: the drain may unpark it after it has left, and loom
/// (unlike std, where an unpark only ever ends a `park`) lets such a stray unpark end
/// whatever the thread blocks in next, a `join` included, and then fails its own assertion.
#[test]
fn completion_vs_a_timing_out_blocking_waiter() {
    loom::model(|| {
        let cell = leaked_cell();
        let waiter = thread::spawn(move || cell.wait_blocking_timeout(Duration::ZERO));
        cell.succeed(3).unwrap();
        match waiter.join().unwrap() {
            None | Some(Ok(&3)) => {}
            other => panic!("a timed-out wait saw {other:?}"),
        }
        assert_eq!(cell.wait_blocking_timeout(Duration::ZERO), Some(Ok(&3)));
    });
}

/// A lazy cell whose computation never finishes and hands out the waker it is polled with,
/// with a disposable callback linked first, then two awaiters: the list is
/// `[callback, waiter, waiter]`. A relay wake (the computation's waker) runs a wake-waiters
/// round, which re-queues the callback behind its sentinel and, under loom's batches of two,
/// relocks after the two waiters; `dispose` races it. Exactly one of "the callback ran" and
/// "`dispose` returned `true`" happens once the cell completes.
#[test]
fn dispose_vs_a_relay_round_requeueing_the_callback() {
    loom::model(|| {
        let slot: std::sync::Arc<std::sync::Mutex<Option<Waker>>> = Default::default();
        let s = std::sync::Arc::clone(&slot);
        let lazy: &'static Lazy<usize, ()> = keep_reachable(Box::leak(Box::new(Lazy::boxed(
            futures::future::poll_fn(move |cx| {
                *s.lock().unwrap() = Some(cx.waker().clone());
                Poll::<Result<usize, ()>>::Pending
            }),
        ))));
        let runs = Arc::new(AtomicUsize::new(0));
        let r = runs.clone();
        let handle = lazy.on_complete(move |outcome| {
            assert_eq!(outcome, Ok(&1));
            r.fetch_add(1, SeqCst);
        });
        let mut waits: Vec<_> = (0..2)
            .map(|_| {
                let mut wait = Box::pin(lazy.wait());
                assert!(poll_once(wait.as_mut()).is_pending());
                wait
            })
            .collect();
        let relay = slot
            .lock()
            .unwrap()
            .clone()
            .expect("the computation was polled");
        let round = thread::spawn(move || relay.wake_by_ref());
        let disposed = handle.dispose();
        round.join().unwrap();
        assert!(
            disposed,
            "nothing completed the cell: the callback is still linked"
        );
        let _ = lazy.succeed(1);
        assert_eq!(usize::from(disposed) + runs.load(SeqCst), 1);
        for wait in &mut waits {
            assert_eq!(poll_once(wait.as_mut()), Poll::Ready(Ok(&1)));
        }
    });
}

/// As `dispose_vs_a_relay_round_requeueing_the_callback`, with the producer's `closed()`
/// linked and the callback the only other node: `[callback, closer]`. The round (a
/// `try_attach`) re-queues the callback and wakes the closer, which looks again; `dispose`
/// of the callback, on another thread, is the last waiter leaving, at any point of the
/// round. `closed` must resolve, and the callback never runs.
#[test]
fn dispose_vs_a_relay_round_with_closed_linked() {
    loom::model(|| {
        let lazy: &'static Lazy<usize, ()> = keep_reachable(Box::leak(Box::new(Lazy::pending())));
        let mut producer = lazy.deferred().producer().unwrap();
        let runs = Arc::new(AtomicUsize::new(0));
        let r = runs.clone();
        let handle = lazy.on_complete(move |_| {
            r.fetch_add(1, SeqCst);
        });
        {
            let mut closed = pin!(producer.closed());
            assert!(
                poll_once(closed.as_mut()).is_pending(),
                "the callback waits"
            );
            let disposer = thread::spawn(move || handle.dispose());
            let _ = lazy.try_attach(Box::pin(std::future::pending::<Result<usize, ()>>()));
            block_on(closed);
            assert!(disposer.join().unwrap(), "nothing completed the cell");
        }
        assert!(producer.is_closed());
        assert_eq!(producer.succeed(1), Ok(()));
        assert_eq!(runs.load(SeqCst), 0, "a disposed callback ran");
    });
}

/// The producer re-polls its `Closed` with a new waker (the closer's notify is renewed in
/// place, `relink_closer`) while the last waiter leaves on another thread, whose unlink
/// takes the closer off (`take_lone_closers`). The re-poll resolves, or leaves the new
/// waker to be woken: if the leaving woke the old waker and the re-poll returned Pending,
/// the producer would sleep for ever (a lost wake, as for `repoll_with_a_new_waker_vs_drain`).
#[test]
fn closed_repolled_with_a_new_waker_vs_the_last_waiter_leaving() {
    loom::model(|| {
        let cell = leaked_cell();
        let mut producer = cell.producer().unwrap();
        let mut wait = Box::pin(cell.wait());
        assert!(poll_once(wait.as_mut()).is_pending());
        {
            let mut closed = pin!(producer.closed());
            let (old, _) = CountingWaker::new();
            assert!(
                poll_with(closed.as_mut(), &old).is_pending(),
                "a waiter waits"
            );
            let leaver = thread::spawn(move || drop(wait));
            let (new, new_wakes) = CountingWaker::new();
            let polled = poll_with(closed.as_mut(), &new);
            leaver.join().unwrap();
            if polled.is_pending() {
                assert_eq!(new_wakes.wakes(), 1, "the newest waker is woken");
                assert_eq!(poll_with(closed.as_mut(), &new), Poll::Ready(()));
            }
        }
        assert!(producer.is_closed());
    });
}

/// A lazy cell's awaiter is re-polled with a new waker while a relay round (the
/// computation woken) takes its node off the list: the re-poll renews the notify of a node
/// the round may have just marked Notified, and must then link it anew (behind the round's
/// sentinel) rather than believe it still linked; the round must end. The completion that
/// follows wakes and resolves the awaiter (a node left off the list, or linked twice, shows
/// up as a hang or a data race).
#[test]
fn repoll_with_a_new_waker_vs_a_relay_round() {
    loom::model(|| {
        let mut fixture = relay_fixture(1);
        let relay = fixture.relay.clone();
        let round = thread::spawn(move || relay.wake_by_ref());
        let (new, new_wakes) = CountingWaker::new();
        assert!(poll_with(fixture.waits[0].as_mut(), &new).is_pending());
        round.join().unwrap();
        let _ = fixture.lazy.succeed(1);
        assert!(
            new_wakes.wakes() >= 1,
            "the completion wakes the newest waker"
        );
        fixture.check_completed();
    });
}

/// A `get_or_init` whose initializer is running (it holds the claim; its node waits in the
/// plain list meanwhile) is dropped on one thread while a claimant waits: the `Waiter`
/// unlinks first, then the initializer is dropped, then the claim is passed on (the
/// fields' drop order). The claimant gets the claim; the initializer is dropped once.
#[test]
fn get_or_init_dropped_while_initializing_vs_a_claimant() {
    loom::model(|| {
        let cell = leaked_cell();
        let dropped = Arc::new(AtomicUsize::new(0));
        let guard = CountOnDrop(dropped.clone());
        let mut init = Box::pin(cell.get_or_init(move || async move {
            let _guard = guard;
            std::future::pending::<usize>().await
        }));
        assert!(poll_once(init.as_mut()).is_pending());
        let mut claimant = Box::pin(cell.claim());
        assert!(poll_once(claimant.as_mut()).is_pending());
        let dropper = thread::spawn(move || drop(init));
        let claim = block_on(claimant).expect("the claim is passed on, the cell is pending");
        assert!(cell.try_claim().is_none(), "two claim holders");
        dropper.join().unwrap();
        assert_eq!(dropped.load(Acquire), 1, "the initializer is dropped once");
        assert_eq!(claim.succeed(3), Ok(()));
        assert_eq!(cell.try_get(), Some(Ok(&3)));
    });
}

/// Counts its drops (Release: pairs with the model's Acquire load).
struct CountOnDrop(Arc<AtomicUsize>);

impl Drop for CountOnDrop {
    fn drop(&mut self) {
        self.0.fetch_add(1, Release);
    }
}

/// A blocking waiter (`wait_blocking` on a lazy cell's `Deferred`: a node with a thread's
/// notify) is unparked by a relay round, which takes its node off the list without
/// completing the cell; it polls again, finds its node Notified, links it anew with a fresh
/// thread notify and parks; the completion that follows must unpark it again. A node that
/// believed itself still linked would park for ever (a loom deadlock).
#[test]
fn a_blocking_waiter_woken_by_a_relay_round_relinks_and_sees_the_completion() {
    loom::model(|| {
        let slot: std::sync::Arc<std::sync::Mutex<Option<Waker>>> = Default::default();
        let s = std::sync::Arc::clone(&slot);
        let lazy: Lazy<usize, ()> = Lazy::boxed(futures::future::poll_fn(move |cx| {
            *s.lock().unwrap() = Some(cx.waker().clone());
            Poll::<Result<usize, ()>>::Pending
        }));
        // A first poll hands out the computation's waker (the cell's relay).
        assert!(!lazy.drive_now());
        let relay = slot.lock().unwrap().clone().unwrap();
        let l = lazy.clone();
        let blocker = thread::spawn(move || *l.deferred().wait_blocking().unwrap());
        let round = thread::spawn(move || relay.wake_by_ref());
        round.join().unwrap();
        let _ = lazy.succeed(1);
        assert_eq!(blocker.join().unwrap(), 1);
    });
}

/// Two threads drive a fresh cell in turn, with no other synchronization between them (the
/// waker slot is a std `Mutex`, which loom does not see): the computation, started by one
/// and polled again by the other, is ordered by DRIVING's release/acquire alone (loom flags
/// the `computation` cell's accesses otherwise), and both polls get a waker to the same
/// relay (the cell itself, weakly), not one each. Every other model that drives a cell
/// twice makes its first drive on the main thread before it spawns anyone. (Written by the
/// review of issue #13's relay change, when the relay was an `Arc` made by the first
/// drive; it holds as well for the relay without an allocation of its own.)
#[test]
fn two_threads_drive_a_fresh_cell_in_turn_with_one_relay() {
    loom::model(|| {
        let slot: std::sync::Arc<std::sync::Mutex<Vec<Waker>>> = Default::default();
        let s = std::sync::Arc::clone(&slot);
        let lazy: Lazy<usize, ()> = Lazy::boxed(futures::future::poll_fn(move |cx| {
            let mut wakers = s.lock().unwrap();
            wakers.push(cx.waker().clone());
            if wakers.len() < 2 {
                Poll::Pending
            } else {
                Poll::Ready(Ok(wakers.len()))
            }
        }));
        let (l1, l2) = (lazy.clone(), lazy.clone());
        let first = thread::spawn(move || {
            l1.drive_now();
        });
        let second = thread::spawn(move || {
            l2.drive_now();
        });
        first.join().unwrap();
        second.join().unwrap();
        // At least one of them drove it; finish here if they did not both.
        while !lazy.drive_now() {}
        assert_eq!(lazy.try_get(), Some(Ok(&2)));
        let wakers = slot.lock().unwrap();
        assert!(
            wakers[0].will_wake(&wakers[1]),
            "the second drive polled with a waker to another relay"
        );
    });
}

/// The computation's waker (the relay, the cell held weakly) woken by value on another
/// thread while the last `Lazy` handle is dropped. Either the wake upgrades first, and its
/// handle may be the last (the cell and its computation are then dropped on the waking
/// thread, after the wake's own accesses), or the drop comes first and the wake finds no
/// cell. Either way the computation is dropped exactly once, and the allocation outlives
/// the relay's last use (its `Weak`, released by the wake). (Review of the relay as a
/// `RawWaker` over `Weak<Shared>`.)
#[test]
fn relay_wake_vs_the_last_handle_drop() {
    loom::model(|| {
        let slot: std::sync::Arc<std::sync::Mutex<Option<Waker>>> = Default::default();
        let s = std::sync::Arc::clone(&slot);
        let dropped = Arc::new(AtomicUsize::new(0));
        let guard = CountOnDrop(dropped.clone());
        let lazy: Lazy<usize, ()> = Lazy::boxed(futures::future::poll_fn(move |cx| {
            let _keep = &guard;
            *s.lock().unwrap() = Some(cx.waker().clone());
            Poll::Pending
        }));
        assert!(!lazy.drive_now());
        let relay = slot.lock().unwrap().take().expect("polled once");
        let again = relay.clone();
        let t = thread::spawn(move || {
            again.wake_by_ref();
            again.wake();
        });
        drop(lazy);
        t.join().unwrap();
        // Acquire: pairs with the Release of `CountOnDrop`.
        assert_eq!(dropped.load(Acquire), 1, "the computation is dropped once");
        // The relay kept here outlives the cell: waking it finds nothing.
        relay.wake();
    });
}

// ----- `Deferred::pair`: the two handles' liveness in the state word ------------------------
//
// The value is a loom `Arc`, so a pair that leaks its cell (or the value) fails the model at
// its end, and one that drops the value twice fails on the count.

#[test]
fn pair_completion_vs_the_awaiter_dropped() {
    // The completer's one exchange (publish + COMPLETER_GONE) vs the awaiter letting go
    // unpolled: exactly one of them frees the cell, and the value is dropped once (in the
    // cell, or handed back to the completer).
    loom::model(|| {
        let value = Arc::new(0usize);
        let (completer, awaiter) = Deferred::<Arc<usize>>::pair();
        let v = value.clone();
        let t = thread::spawn(move || drop(completer.succeed(v)));
        drop(awaiter);
        t.join().unwrap();
        assert_eq!(Arc::strong_count(&value), 1);
    });
}

#[test]
fn pair_completion_vs_a_polled_awaiter_dropped() {
    // The awaiter links (or finds the cell complete, or owes a drain), then unlinks and lets
    // go, while the completer publishes, drains and lets go: the node is never touched after
    // its drop, the cell is freed once.
    loom::model(|| {
        let value = Arc::new(0usize);
        let (completer, awaiter) = Deferred::<Arc<usize>>::pair();
        let v = value.clone();
        let t = thread::spawn(move || drop(completer.succeed(v)));
        {
            let mut awaiter = pin!(awaiter);
            if let Poll::Ready(got) = poll_once(awaiter.as_mut()) {
                assert!(got.is_ok());
            }
        }
        t.join().unwrap();
        assert_eq!(Arc::strong_count(&value), 1);
    });
}

#[test]
fn pair_awaiter_taking_the_value_vs_the_completers_drain() {
    // The awaiter is linked before the completer runs, so the completer publishes, drains
    // and only then lets go; the woken awaiter may move the value out and let go in between
    // (TAKEN): the completer then frees the cell without dropping the value again.
    loom::model(|| {
        let value = Arc::new(0usize);
        let (completer, awaiter) = Deferred::<Arc<usize>>::pair();
        let mut awaiter = Box::pin(awaiter);
        assert!(poll_once(awaiter.as_mut()).is_pending());
        let v = value.clone();
        let t = thread::spawn(move || completer.succeed(v).unwrap());
        let got = block_on(awaiter.as_mut()).unwrap();
        drop(awaiter);
        assert_eq!(Arc::strong_count(&got), 2);
        drop(got);
        t.join().unwrap();
        assert_eq!(Arc::strong_count(&value), 1);
    });
}

#[test]
fn pair_completer_dropped_vs_await() {
    // A completer dropped without completing cancels the cell, in the same exchange that
    // lets it go: the awaiter is woken (or finds it at once) and frees the cell.
    loom::model(|| {
        let (completer, awaiter) = Deferred::<usize>::pair();
        let t = thread::spawn(move || drop(completer));
        assert_eq!(block_on(awaiter), Err(Error::Cancelled));
        t.join().unwrap();
    });
}

/// A waker whose `wake` panics (user code in the completer's drain).
struct PanicsOnWake;

impl std::task::Wake for PanicsOnWake {
    fn wake(self: std::sync::Arc<Self>) {
        panic!("a pair's waker panics in wake");
    }
}

#[test]
fn pair_a_waker_panicking_in_the_drain_vs_the_awaiter_dropped() {
    // The awaiter is linked with a waker that panics when woken; the completer publishes and
    // drains (the wake panics, caught) while the awaiter unlinks and lets go. The completer's
    // share is let go as the panic leaves the drain, so whichever handle goes last frees the
    // cell and the value is dropped once: none leaks.
    deferred_test_support::quiet_panics_saying("a pair's waker panics in wake");
    loom::model(|| {
        let value = Arc::new(0usize);
        let (completer, awaiter) = Deferred::<Arc<usize>>::pair();
        let mut awaiter = Box::pin(awaiter);
        let waker = Waker::from(std::sync::Arc::new(PanicsOnWake));
        assert!(poll_with(awaiter.as_mut(), &waker).is_pending());
        let v = value.clone();
        let t = thread::spawn(move || {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| completer.succeed(v)));
        });
        drop(awaiter);
        t.join().unwrap();
        assert_eq!(Arc::strong_count(&value), 1);
    });
}
