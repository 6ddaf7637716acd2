//! Review (branch review-core): loom models of races the README's table leaves unmodelled.
//! Run: RUSTFLAGS="--cfg loom -C debug-assertions" LOOM_MAX_PREEMPTIONS=3 \
//!   cargo test --profile loom -p deferred-core --test review_loom -- --test-threads=2
#![cfg(loom)]
#![allow(clippy::std_instead_of_core)]

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use deferred_core::{Deferred, Lazy};
use futures::task::noop_waker;
use loom::{future::block_on, thread};

fn poll_once<F: Future>(fut: Pin<&mut F>) -> Poll<F::Output> {
    fut.poll(&mut Context::from_waker(&noop_waker()))
}

fn leaked_cell() -> &'static Deferred<usize> {
    Box::leak(Box::new(Deferred::new()))
}

/// A relay round (try_attach's notify_waiters) vs the only waiter leaving, while the
/// producer waits on `closed()`: `closed` must resolve (a parked producer is a deadlock).
#[test]
fn review_relay_round_vs_last_waiter_leaving_vs_closed() {
    loom::model(|| {
        let lazy: &'static Lazy<usize, ()> = Box::leak(Box::new(Lazy::pending()));
        let mut producer = lazy.deferred().producer().unwrap();
        let mut w = Box::pin(lazy.wait());
        assert!(poll_once(w.as_mut()).is_pending());
        let relay = thread::spawn(move || {
            let _ = lazy.try_attach(Box::pin(std::future::pending::<Result<usize, ()>>()));
        });
        let leaver = thread::spawn(move || drop(w));
        block_on(producer.closed());
        relay.join().unwrap();
        leaver.join().unwrap();
        drop(producer);
    });
}

/// Two unlinkers at once (a waiter dropped, a callback disposed), each of which may be
/// "the last one", while the producer waits on `closed()`.
#[test]
fn review_two_last_unlinkers_vs_closed() {
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
/// takes the closer off the list: the fast path of `cancel_node` (is_notified, no lock) vs
/// `take_lone_closer`'s pop; loom flags a touch of the freed node as a data race.
#[test]
fn review_closed_dropped_vs_last_waiter_leaving() {
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
