//! Review (branch review-core): demonstrations of lost wake-ups of `Producer::closed`.
//!
//! Each test asserts the behaviour the README promises; each FAILS on the reviewed code.
//! Run: `cargo test -p deferred-core --test review_closer`
//! (or `cargo +nightly miri test -p deferred-core --test review_closer`).
#![allow(clippy::std_instead_of_core)]

mod common;

use std::{
    cell::RefCell,
    panic::{catch_unwind, AssertUnwindSafe},
    pin::Pin,
    sync::Arc,
    task::Waker,
};

use common::{counting_waker, poll_once, Counts};
use deferred_core::{Closed, Deferred, Lazy};
use futures::task::{noop_waker, ArcWake};

/// A waker whose last clone panics when dropped.
struct BombOnDrop;
impl ArcWake for BombOnDrop {
    fn wake_by_ref(_: &Arc<Self>) {}
}
impl Drop for BombOnDrop {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            panic!("waker dropped: boom");
        }
    }
}

/// F1: `cancel_node` takes the lone closer off the list under the lock, then drops the
/// leaving waiter's waker (user code) BEFORE waking the closer. If that drop panics, the
/// closer's notify (already popped, node marked Notified) is dropped unwoken: the
/// producer's task is never woken, although no one waits any more, and no later event
/// can wake it (its node is off the list).
#[test]
fn closer_is_woken_even_if_the_leaving_waiters_waker_panics_on_drop() {
    let cell: Deferred<u8> = Deferred::new();
    let mut producer = cell.producer().unwrap();
    let mut wait = Box::pin(cell.wait());
    {
        let bomb = futures::task::waker(Arc::new(BombOnDrop));
        assert!(poll_once(wait.as_mut(), &bomb).is_pending());
        // `bomb` dropped here: the clone in the node is the last reference.
    }
    let counts = Arc::new(Counts::default());
    let waker = counting_waker(&counts);
    let mut closed = Box::pin(producer.closed());
    assert!(poll_once(closed.as_mut(), &waker).is_pending(), "a waiter waits");
    let r = catch_unwind(AssertUnwindSafe(|| drop(wait)));
    assert!(r.is_err(), "the waker's drop panicked (user code)");
    // The closer was taken off the list by the waiter's leaving: it is closed now...
    let now_ready = {
        // (peek without consuming the wake count)
        let noop = noop_waker();
        poll_once(closed.as_mut(), &noop).is_ready()
    };
    assert!(now_ready, "the closer is off the list and the cell has no waiter");
    // ...but the producer's task was never told (README: "A waker that panics does not
    // stop the others being woken").
    assert_eq!(
        counts.wakes(),
        1,
        "LOST WAKE-UP: the closer was unlinked but never woken"
    );
}

/// F2: a `Closed` leaked while linked (`mem::forget` of a `Box::pin`, safe code) ends the
/// producer's `&mut` borrow, so a second `Closed` can be made and linked. Now two closer
/// nodes sit in the list; when the last real waiter leaves, `take_lone_closer` sees two
/// nodes (`single()` is `None`) and takes neither: WAITERS stays set and the second
/// `closed()` is never woken, though no one waits (it hangs until it is dropped; dropping
/// it then pops the leaked one).
#[test]
fn a_leaked_closed_does_not_make_the_next_closed_hang() {
    let cell: Deferred<u8> = Deferred::new();
    let mut producer = cell.producer().unwrap();
    let mut wait = Box::pin(cell.wait());
    assert!(poll_once(wait.as_mut(), &noop_waker()).is_pending());
    let mut leaked = Box::pin(producer.closed());
    assert!(poll_once(leaked.as_mut(), &noop_waker()).is_pending());
    std::mem::forget(leaked); // safe: the node stays linked (heap memory leaked)
    let counts = Arc::new(Counts::default());
    let mut closed = Box::pin(producer.closed());
    assert!(poll_once(closed.as_mut(), &counting_waker(&counts)).is_pending());
    drop(wait); // the last (only) waiter leaves
    assert_eq!(
        counts.wakes(),
        1,
        "LOST WAKE-UP: the last waiter left but the second closer was not woken"
    );
}

// ----- F1b: the same stranding at the end of a Lazy relay round ------------------------

type L = Lazy<u8, ()>;

thread_local! {
    static CLOSER: RefCell<Option<Pin<Box<Closed<'static, u8, ()>>>>> = const { RefCell::new(None) };
    static CLOSER_COUNTS: RefCell<Option<Arc<Counts>>> = const { RefCell::new(None) };
}

/// Polls the producer's `Closed` (re-entrantly, from a waiter's wake): it links behind the
/// round's sentinel.
struct PollCloserOnWake;
impl ArcWake for PollCloserOnWake {
    fn wake_by_ref(_: &Arc<Self>) {
        let counts = CLOSER_COUNTS.with(|c| c.borrow().clone()).unwrap();
        CLOSER.with(|c| {
            if let Some(closed) = c.borrow_mut().as_mut() {
                let r = poll_once(closed.as_mut(), &counting_waker(&counts));
                assert!(r.is_pending(), "waiters are still linked");
            }
        });
    }
}

struct PanicOnWake;
impl ArcWake for PanicOnWake {
    fn wake_by_ref(_: &Arc<Self>) {
        panic!("waker panics on wake");
    }
}

/// F1b: in `notify_waiters`, the iteration that pops the round's sentinel also takes the
/// lone closer (`take_lone_closer`) into a local `Option<Notify>` that is woken only AFTER
/// `batch.wake_all()`. If a waiter's waker in that batch panics, the local is dropped
/// during unwinding: the closer is off the list and never woken (the batch's own Drop
/// guard wakes the rest of the batch, not the closer). 33 waiters so the round spans two
/// batches (BATCH = 32); the closer links between them (re-entrantly, from the first
/// waiter's wake), i.e. behind the sentinel.
#[test]
fn closer_is_woken_even_if_a_waker_in_the_last_relay_batch_panics() {
    let lazy: &'static L = Box::leak(Box::new(L::pending()));
    let producer = Box::leak(Box::new(lazy.deferred().producer().unwrap()));
    let mut waits: Vec<_> = (0..33).map(|_| Box::pin(lazy.wait())).collect();
    let reentrant = futures::task::waker(Arc::new(PollCloserOnWake));
    let bomb = futures::task::waker(Arc::new(PanicOnWake));
    for (i, w) in waits.iter_mut().enumerate() {
        let waker: Waker = match i {
            0 => reentrant.clone(),
            32 => bomb.clone(),
            _ => noop_waker(),
        };
        assert!(poll_once(w.as_mut(), &waker).is_pending());
    }
    let counts = Arc::new(Counts::default());
    CLOSER_COUNTS.with(|c| *c.borrow_mut() = Some(counts.clone()));
    CLOSER.with(|c| *c.borrow_mut() = Some(Box::pin(producer.closed())));
    let r = catch_unwind(AssertUnwindSafe(|| {
        let _ = lazy.try_attach(Box::pin(std::future::pending::<Result<u8, ()>>()));
    }));
    assert!(r.is_err(), "the last batch's waker panicked");
    assert!(counts.clones() >= 1, "the closer was polled (and linked) mid-round");
    // Every waiter goes away without polling again: no one waits at all now.
    drop(waits);
    let ready = CLOSER.with(|c| {
        let mut c = c.borrow_mut();
        poll_once(c.as_mut().unwrap().as_mut(), &noop_waker()).is_ready()
    });
    assert!(ready, "the closer is off the list: it would resolve if polled");
    assert_eq!(
        counts.wakes(),
        1,
        "LOST WAKE-UP: the relay round unlinked the closer but never woke it"
    );
    CLOSER.with(|c| drop(c.borrow_mut().take()));
}
