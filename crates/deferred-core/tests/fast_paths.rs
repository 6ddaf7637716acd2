//! Checks that an independent review of the fast paths (issue #13: `Waiter::poll` inline up
//! to its first load of the state, the inline `Drop` checks, `publish`'s `fetch_add`) wrote
//! beside the loom models: reusing a cell after `take` for every pair of outcomes (with a
//! claim forgotten, a callback and a waiter linked at the publish), dropping a pending cell
//! with a callback and a linked future, the payload dropped once, a polled future's drop
//! unlinking it, and a claimant handed the claim passing it on when dropped.

#![allow(clippy::std_instead_of_core)]
mod common;
use common::{counting_waker, Counts};
use deferred_core::{Deferred, Error};
use std::{
    future::Future,
    pin::pin,
    sync::{
        atomic::{AtomicUsize, Ordering::SeqCst},
        Arc,
    },
    task::{Context, Poll},
};

struct D(Arc<AtomicUsize>);
impl Drop for D {
    fn drop(&mut self) {
        self.0.fetch_add(1, SeqCst);
    }
}

fn complete(cell: &Deferred<u32, u32>, k: u32) {
    match k {
        0 => cell.succeed(10).unwrap(),
        1 => cell.fail(20).unwrap(),
        2 => assert!(cell.cancel()),
        _ => assert!(cell.die()),
    }
}
fn expect(cell: &Deferred<u32, u32>, k: u32) {
    let got = cell.try_get();
    match k {
        0 => assert_eq!(got, Some(Ok(&10))),
        1 => assert_eq!(got, Some(Err(Error::Failed(&20)))),
        2 => assert_eq!(got, Some(Err(Error::Cancelled))),
        _ => assert_eq!(got, Some(Err(Error::Panicked))),
    }
}

#[test]
fn reuse_after_take_every_kind_pair_with_claims_callbacks_and_waiters() {
    for a in 0..4 {
        for b in 0..4 {
            let mut cell: Deferred<u32, u32> = Deferred::new();
            // A callback stays linked across take (WAITERS set at the second publish).
            let ran = Arc::new(AtomicUsize::new(0));
            let r = ran.clone();
            cell.on_complete(move |_| {
                r.fetch_add(1, SeqCst);
            });
            // Leak a claim so CLAIMED is set at the publish.
            if let Some(c) = cell.try_claim() {
                std::mem::forget(c);
            }
            complete(&cell, a);
            expect(&cell, a);
            assert!(cell.take().is_some());
            assert!(cell.try_get().is_none());
            let r = ran.clone();
            cell.on_complete(move |_| {
                r.fetch_add(1, SeqCst);
            });
            if let Some(c) = cell.try_claim() {
                std::mem::forget(c);
            }
            // A waiting future linked at publish.
            let counts = Arc::new(Counts::default());
            let waker = counting_waker(&counts);
            {
                let mut fut = pin!(cell.wait());
                assert!(fut
                    .as_mut()
                    .poll(&mut Context::from_waker(&waker))
                    .is_pending());
                complete(&cell, b);
                assert!(matches!(
                    fut.as_mut().poll(&mut Context::from_waker(&waker)),
                    Poll::Ready(_)
                ));
            }
            assert_eq!(counts.wakes(), 1);
            expect(&cell, b);
            assert_eq!(ran.load(SeqCst), 2);
            // a second completion loses, state unchanged
            assert!(!cell.cancel());
            expect(&cell, b);
        }
    }
}

#[test]
// The future is leaked on purpose (its node stays linked when the cell drops): under miri
// that leak is an error of its own.
#[cfg_attr(miri, ignore)]
fn drop_of_a_cell_with_a_pending_callback_and_a_leaked_linked_future() {
    let drops = Arc::new(AtomicUsize::new(0));
    let counts = Arc::new(Counts::default());
    {
        let cell: Deferred<D, D> = Deferred::new();
        let d = D(drops.clone());
        cell.on_complete(move |_| drop(d));
        let waker = counting_waker(&counts);
        let mut fut = Box::pin(cell.wait());
        assert!(fut
            .as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_pending());
        std::mem::forget(fut);
        drop(waker);
        assert_eq!(drops.load(SeqCst), 0);
    }
    // the callback was dropped unrun (its captured D dropped), the leaked waker dropped unwoken
    assert_eq!(drops.load(SeqCst), 1);
    assert_eq!(counts.wakes(), 0);
    // the original waker plus the node's clone
    assert_eq!(counts.clones() + 1, counts.drops.load(SeqCst));
}

#[test]
fn drop_of_a_complete_cell_drops_payload_once_and_of_a_taken_one_not_again() {
    let drops = Arc::new(AtomicUsize::new(0));
    {
        let c: Deferred<D, D> = Deferred::with_value(D(drops.clone()));
        let _ = c;
    }
    assert_eq!(drops.load(SeqCst), 1);
    {
        let c: Deferred<D, D> = Deferred::new();
        c.fail(D(drops.clone())).ok().unwrap();
    }
    assert_eq!(drops.load(SeqCst), 2);
    {
        let mut c: Deferred<D, D> = Deferred::with_value(D(drops.clone()));
        drop(c.take());
    }
    assert_eq!(drops.load(SeqCst), 3);
}

#[test]
fn dropping_a_pending_polled_future_unlinks_it() {
    let counts = Arc::new(Counts::default());
    let waker = counting_waker(&counts);
    let cell: Deferred<u32> = Deferred::new();
    {
        let mut fut = Box::pin(cell.wait());
        assert!(fut
            .as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_pending());
        // repoll with same waker, then a different one
        assert!(fut
            .as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_pending());
    }
    assert_eq!(counts.clones(), counts.drops.load(SeqCst));
    cell.succeed(1).unwrap();
    assert_eq!(counts.wakes(), 0);
    // a claimant drop while granted passes the claim
    let cell: Deferred<u32> = Deferred::new();
    let c1 = cell.try_claim().unwrap();
    let mut g = Box::pin(cell.get_or_init(|| async { 7 }));
    assert!(g
        .as_mut()
        .poll(&mut Context::from_waker(&waker))
        .is_pending());
    drop(c1);
    drop(g); // granted node dropped: must pass the claim on (none waiting: frees it)
    assert!(cell.try_claim().is_some());
}
