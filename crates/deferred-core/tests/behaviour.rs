//! Black-box behaviour of `Deferred`: completion, probes, waits, claims and producers.

#![allow(clippy::std_instead_of_core)] // tests run on std; `core::` paths matter in the library only.

mod common;

use std::{
    future::Future,
    pin::pin,
    sync::{
        atomic::{AtomicUsize, Ordering::SeqCst},
        Arc, Barrier,
    },
    task::Poll,
    thread,
};

use common::{counting_waker, Counts};
use deferred_core::{Deferred, Error};
use deferred_test_support::{poll_once, poll_with};
use futures::{executor::block_on, task::noop_waker};

/// Loop counts shrink under Miri, which is slow.
fn n(full: usize) -> usize {
    if cfg!(miri) {
        full.min(8)
    } else {
        full
    }
}

#[test]
fn size_of_u64_cell_is_at_most_40_bytes_plus_payload() {
    let size = core::mem::size_of::<Deferred<u64>>();
    assert!(size <= 40 + 8, "Deferred<u64> is {size} bytes");
    assert_eq!(
        size, 48,
        "update the size claims in the README if this changes"
    );
}

#[test]
fn a_static_cell_works() {
    static CELL: Deferred<u32> = Deferred::new();
    assert_eq!(CELL.try_get(), None);
    CELL.succeed(1).unwrap();
    assert_eq!(block_on(CELL.wait()), Ok(&1));
}

#[test]
fn exactly_one_completion_wins_and_losers_get_their_value_back() {
    let cell: Deferred<String, String> = Deferred::new();
    assert_eq!(cell.succeed("a".into()), Ok(()));
    assert_eq!(cell.succeed("b".into()), Err("b".to_string()));
    assert_eq!(cell.fail("e".into()), Err("e".to_string()));
    assert!(!cell.cancel());
    assert!(!cell.die());
    assert_eq!(cell.get().map(String::as_str), Some("a"));
}

#[test]
fn racing_completers_on_threads_have_one_winner() {
    for _ in 0..n(200) {
        let cell = Arc::new(Deferred::<usize>::new());
        let barrier = Arc::new(Barrier::new(4));
        let wins: Vec<_> = (0..4)
            .map(|i| {
                let (cell, barrier) = (cell.clone(), barrier.clone());
                thread::spawn(move || {
                    barrier.wait();
                    cell.succeed(i).is_ok().then_some(i)
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .filter_map(|h| h.join().unwrap())
            .collect();
        assert_eq!(wins.len(), 1);
        assert_eq!(cell.get(), Some(&wins[0]));
    }
}

#[test]
fn probes_report_each_outcome() {
    let ok: Deferred<u8, u8> = Deferred::new();
    assert!(!ok.is_done());
    ok.succeed(1).unwrap();
    assert!(ok.is_done() && !ok.is_cancelled());
    assert_eq!(ok.try_get(), Some(Ok(&1)));

    let err: Deferred<u8, u8> = Deferred::new();
    err.fail(2).unwrap();
    assert_eq!(err.try_get(), Some(Err(Error::Failed(&2))));
    assert_eq!(err.get(), None);

    let cancelled: Deferred<u8, u8> = Deferred::new();
    cancelled.cancel();
    assert!(cancelled.is_cancelled());
    assert_eq!(cancelled.try_get(), Some(Err(Error::Cancelled)));

    let died: Deferred<u8, u8> = Deferred::new();
    died.die();
    assert_eq!(died.try_get(), Some(Err(Error::Panicked)));
    assert!(!died.is_cancelled());
}

#[test]
fn debug_shows_the_state() {
    let cell: Deferred<u8, &str> = Deferred::new();
    assert_eq!(format!("{cell:?}"), r#"Deferred { state: "pending" }"#);
    cell.fail("x").unwrap();
    assert_eq!(format!("{cell:?}"), r#"Deferred { error: "x" }"#);
    assert_eq!(
        format!("{:?}", Deferred::<u8>::with_value(3)),
        "Deferred { value: 3 }"
    );
}

#[test]
fn values_are_dropped_exactly_once() {
    let drops = Arc::new(AtomicUsize::new(0));
    struct D(Arc<AtomicUsize>);
    impl Drop for D {
        fn drop(&mut self) {
            self.0.fetch_add(1, SeqCst);
        }
    }
    {
        let cell: Deferred<D, D> = Deferred::new();
        cell.succeed(D(drops.clone())).ok().unwrap();
        // The loser is handed back and dropped here.
        drop(cell.fail(D(drops.clone())));
        assert_eq!(drops.load(SeqCst), 1);
    }
    assert_eq!(drops.load(SeqCst), 2);
    let mut cell: Deferred<D, D> = Deferred::new();
    cell.fail(D(drops.clone())).ok().unwrap();
    let taken = cell.take();
    assert_eq!(drops.load(SeqCst), 2);
    drop(taken);
    drop(cell);
    assert_eq!(drops.load(SeqCst), 3);
}

#[test]
fn a_waiter_registered_after_completion_never_sleeps() {
    let cell: Deferred<u8> = Deferred::with_value(1);
    let counts = Arc::new(Counts::default());
    let waker = counting_waker(&counts);
    let mut fut = pin!(cell.wait());
    assert_eq!(poll_with(fut.as_mut(), &waker), Poll::Ready(Ok(&1)));
    assert_eq!(counts.clones(), 0, "a ready wait must not store a waker");
}

#[test]
fn every_waiter_is_woken_exactly_once() {
    let cell: Deferred<u8> = Deferred::new();
    let counts: Vec<_> = (0..n(100)).map(|_| Arc::new(Counts::default())).collect();
    let mut futs: Vec<_> = counts.iter().map(|_| Box::pin(cell.wait())).collect();
    for (fut, c) in futs.iter_mut().zip(&counts) {
        assert!(poll_with(fut.as_mut(), &counting_waker(c)).is_pending());
    }
    cell.succeed(9).unwrap();
    for c in &counts {
        assert_eq!(c.wakes(), 1);
    }
    for (fut, c) in futs.iter_mut().zip(&counts) {
        assert_eq!(
            poll_with(fut.as_mut(), &counting_waker(c)),
            Poll::Ready(Ok(&9))
        );
    }
    drop(futs);
    for c in &counts {
        assert_eq!(c.wakes(), 1, "no extra wake after completion");
        assert_eq!(Arc::strong_count(c), 1, "every stored waker was released");
    }
}

#[test]
fn repolling_with_the_same_waker_does_not_clone_it() {
    let cell: Deferred<u8> = Deferred::new();
    let counts = Arc::new(Counts::default());
    let waker = counting_waker(&counts);
    let mut fut = pin!(cell.wait());
    assert!(poll_with(fut.as_mut(), &waker).is_pending());
    assert_eq!(counts.clones(), 1);
    for _ in 0..5 {
        assert!(poll_with(fut.as_mut(), &waker).is_pending());
    }
    assert_eq!(counts.clones(), 1, "will_wake must spare the clone");

    // A different waker replaces the stored one, and only the new one is woken.
    let other = Arc::new(Counts::default());
    assert!(poll_with(fut.as_mut(), &counting_waker(&other)).is_pending());
    cell.succeed(1).unwrap();
    assert_eq!((counts.wakes(), other.wakes()), (0, 1));
}

#[test]
fn dropping_a_waiting_future_unlinks_it() {
    let cell: Deferred<u8> = Deferred::new();
    let counts: Vec<_> = (0..3).map(|_| Arc::new(Counts::default())).collect();
    let mut futs: Vec<_> = (0..3).map(|_| Some(Box::pin(cell.wait()))).collect();
    for (fut, c) in futs.iter_mut().zip(&counts) {
        assert!(poll_with(fut.as_mut().unwrap().as_mut(), &counting_waker(c)).is_pending());
    }
    futs[1] = None; // the middle one goes away
    futs[0] = None; // then the head
    cell.succeed(1).unwrap();
    assert_eq!(
        counts.iter().map(|c| c.wakes()).collect::<Vec<_>>(),
        vec![0, 0, 1]
    );
    assert_eq!(Arc::strong_count(&counts[1]), 1);
}

#[test]
fn a_panicking_waker_does_not_stop_the_others_being_woken() {
    let cell: Deferred<u8> = Deferred::new();
    // More than one wake batch, with the panicking waker in the middle of the first.
    let counts: Vec<_> = (0..n(70))
        .map(|i| {
            Arc::new(Counts {
                panic_on_wake: i == 3,
                ..Counts::default()
            })
        })
        .collect();
    let mut futs: Vec<_> = counts.iter().map(|_| Box::pin(cell.wait())).collect();
    for (fut, c) in futs.iter_mut().zip(&counts) {
        assert!(poll_with(fut.as_mut(), &counting_waker(c)).is_pending());
    }
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cell.succeed(5)));
    assert!(result.is_err(), "the waker's panic reaches the completer");
    for c in &counts {
        assert_eq!(c.wakes(), 1);
    }
    assert_eq!(cell.get(), Some(&5));
}

#[test]
#[cfg(feature = "std")]
fn many_threads_await_one_completion() {
    let cell = Arc::new(Deferred::<u64>::new());
    let barrier = Arc::new(Barrier::new(9));
    let waiters: Vec<_> = (0..8)
        .map(|i| {
            let (cell, barrier) = (cell.clone(), barrier.clone());
            thread::spawn(move || {
                barrier.wait();
                if i % 2 == 0 {
                    *cell.wait_blocking().unwrap()
                } else {
                    block_on(Deferred::wait_owned(cell)).unwrap()
                }
            })
        })
        .collect();
    barrier.wait();
    cell.succeed(77).unwrap();
    for w in waiters {
        assert_eq!(w.join().unwrap(), 77);
    }
}

#[test]
#[cfg(feature = "std")]
fn blocking_wait_times_out_and_unlinks() {
    let cell: Deferred<u8> = Deferred::new();
    assert_eq!(
        cell.wait_blocking_timeout(std::time::Duration::from_millis(5)),
        None
    );
    // The timed-out node must be gone: completing wakes nobody and touches nothing.
    cell.succeed(1).unwrap();
    assert_eq!(
        cell.wait_blocking_timeout(std::time::Duration::ZERO),
        Some(Ok(&1))
    );
}

#[test]
fn wait_cloned_and_owned_clone_the_outcome() {
    let cell = Arc::new(Deferred::<String, String>::new());
    cell.fail("bad".into()).unwrap();
    assert_eq!(
        block_on(cell.wait_cloned()),
        Err(Error::Failed("bad".to_string()))
    );
    assert_eq!(
        block_on(Deferred::wait_owned(cell.clone())),
        Err(Error::Failed("bad".to_string()))
    );
}

#[test]
fn futures_are_fused() {
    use futures::future::FusedFuture;
    let cell: Deferred<u8> = Deferred::with_value(1);
    let mut fut = pin!(cell.wait());
    assert!(!fut.is_terminated());
    assert!(poll_once(fut.as_mut()).is_ready());
    assert!(fut.is_terminated());
}

// ----- claims -------------------------------------------------------------------------

#[test]
fn one_claim_at_a_time_and_a_dropped_claim_passes_to_the_oldest_claimant() {
    let cell: Deferred<u8> = Deferred::new();
    let first = cell.try_claim().unwrap();
    let (a, b) = (Arc::new(Counts::default()), Arc::new(Counts::default()));
    let plain = Arc::new(Counts::default());
    let mut wait = pin!(cell.wait());
    assert!(poll_with(wait.as_mut(), &counting_waker(&plain)).is_pending());
    let mut claim_a = pin!(cell.claim());
    let mut claim_b = pin!(cell.claim());
    assert!(poll_with(claim_a.as_mut(), &counting_waker(&a)).is_pending());
    assert!(poll_with(claim_b.as_mut(), &counting_waker(&b)).is_pending());

    drop(first);
    assert_eq!(
        (a.wakes(), b.wakes(), plain.wakes()),
        (1, 0, 0),
        "only the oldest claimant wakes"
    );
    let Poll::Ready(Ok(claim)) = poll_with(claim_a.as_mut(), &counting_waker(&a)) else {
        panic!("the oldest claimant must hold the claim")
    };
    assert!(cell.try_claim().is_none());
    drop(claim);
    assert_eq!((a.wakes(), b.wakes(), plain.wakes()), (1, 1, 0));
    let Poll::Ready(Ok(claim)) = poll_with(claim_b.as_mut(), &counting_waker(&b)) else {
        panic!("the next claimant must hold the claim")
    };
    claim.succeed(3).unwrap();
    assert_eq!(plain.wakes(), 1);
    assert_eq!(poll_once(wait.as_mut()), Poll::Ready(Ok(&3)));
}

#[test]
fn a_granted_claimant_dropped_before_it_polls_passes_the_claim_on() {
    let cell: Deferred<u8> = Deferred::new();
    let first = cell.try_claim().unwrap();
    let mut a = Box::pin(cell.claim());
    let mut b = pin!(cell.claim());
    assert!(poll_once(a.as_mut()).is_pending());
    assert!(poll_once(b.as_mut()).is_pending());
    drop(first); // granted to `a`
    drop(a); // which never looks: the claim moves to `b`
    assert!(matches!(poll_once(b.as_mut()), Poll::Ready(Ok(_))));
}

#[test]
fn get_or_init_runs_one_initializer_and_hands_over_when_it_is_dropped() {
    let cell: Deferred<u32> = Deferred::new();
    let runs = AtomicUsize::new(0);
    let init = |v: u32| {
        let runs = &runs;
        move || async move {
            runs.fetch_add(1, SeqCst);
            futures::pending!(); // one yield so the initializer can be caught mid-flight
            v
        }
    };
    let mut first = Box::pin(cell.get_or_init(init(1)));
    let mut second = pin!(cell.get_or_init(init(2)));
    let mut third = pin!(cell.get_or_init(init(3)));
    let w = noop_waker();
    assert!(poll_with(first.as_mut(), &w).is_pending());
    assert!(poll_with(second.as_mut(), &w).is_pending());
    assert!(poll_with(third.as_mut(), &w).is_pending());
    assert_eq!(runs.load(SeqCst), 1, "one initializer at a time");
    drop(first); // cancelled mid-flight: the claim goes to `second`
    assert!(poll_with(second.as_mut(), &w).is_pending());
    assert_eq!(runs.load(SeqCst), 2);
    assert_eq!(poll_with(second.as_mut(), &w), Poll::Ready(Ok(&2)));
    assert_eq!(poll_with(third.as_mut(), &w), Poll::Ready(Ok(&2)));
    assert_eq!(runs.load(SeqCst), 2);
}

#[test]
fn a_panicking_initializer_releases_the_claim() {
    let cell: Deferred<u32> = Deferred::new();
    let w = noop_waker();
    let mut waiting = pin!(cell.get_or_init(|| async { 2 }));
    {
        let mut panicking = Box::pin(cell.get_or_init(|| async {
            futures::pending!();
            panic!("initializer failed")
        }));
        assert!(poll_with(panicking.as_mut(), &w).is_pending());
        assert!(poll_with(waiting.as_mut(), &w).is_pending());
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            poll_with(panicking.as_mut(), &w)
        }));
        assert!(r.is_err());
    }
    assert_eq!(poll_with(waiting.as_mut(), &w), Poll::Ready(Ok(&2)));
}

#[test]
fn get_or_try_init_error_reaches_every_waiter() {
    let cell: Deferred<u32, &str> = Deferred::new();
    let w = noop_waker();
    let mut plain = pin!(cell.wait());
    assert!(poll_with(plain.as_mut(), &w).is_pending());
    assert_eq!(
        block_on(cell.get_or_try_init(|| async { Err("nope") })),
        Err(Error::Failed(&"nope"))
    );
    assert_eq!(
        poll_with(plain.as_mut(), &w),
        Poll::Ready(Err(Error::Failed(&"nope")))
    );
}

#[test]
fn a_direct_completion_beats_a_running_initializer() {
    let cell: Deferred<u32> = Deferred::new();
    let w = noop_waker();
    let mut init = pin!(cell.get_or_init(|| async {
        futures::pending!();
        1
    }));
    assert!(poll_with(init.as_mut(), &w).is_pending());
    cell.succeed(9).unwrap();
    assert_eq!(poll_with(init.as_mut(), &w), Poll::Ready(Ok(&9)));
}

#[test]
fn a_dropped_producer_cancels_the_cell_and_wakes_waiters() {
    let cell: Deferred<u8> = Deferred::new();
    let counts = Arc::new(Counts::default());
    let mut wait = pin!(cell.wait());
    assert!(poll_with(wait.as_mut(), &counting_waker(&counts)).is_pending());
    drop(cell.producer().unwrap());
    assert_eq!(counts.wakes(), 1);
    assert_eq!(poll_once(wait.as_mut()), Poll::Ready(Err(Error::Cancelled)));
}

#[test]
fn a_claim_waiter_sees_a_completion_that_happens_while_it_waits() {
    let cell: Deferred<u8> = Deferred::new();
    let holder = cell.try_claim().unwrap();
    let mut c = pin!(cell.claim());
    assert!(poll_once(c.as_mut()).is_pending());
    holder.succeed(4).unwrap();
    assert!(matches!(poll_once(c.as_mut()), Poll::Ready(Err(Ok(&4)))));
}

#[test]
#[cfg(feature = "std")]
fn stress_threads_wait_claim_and_complete() {
    for round in 0..n(50) {
        let cell = Arc::new(Deferred::<usize>::new());
        let runs = Arc::new(AtomicUsize::new(0));
        let barrier = Arc::new(Barrier::new(6));
        let hs: Vec<_> = (0..6)
            .map(|i| {
                let (cell, runs, barrier) = (cell.clone(), runs.clone(), barrier.clone());
                thread::spawn(move || {
                    barrier.wait();
                    match (i + round) % 3 {
                        0 => *cell.wait_blocking().unwrap_or(&usize::MAX),
                        1 => *block_on(cell.get_or_init(|| async {
                            runs.fetch_add(1, SeqCst);
                            i
                        }))
                        .unwrap(),
                        _ => *block_on(cell.wait()).unwrap(),
                    }
                })
            })
            .collect();
        let seen: Vec<_> = hs.into_iter().map(|h| h.join().unwrap()).collect();
        assert_eq!(runs.load(SeqCst), 1);
        let v = *cell.get().unwrap();
        assert!(seen.iter().all(|&s| s == v), "{seen:?} vs {v}");
    }
}

#[test]
fn wait_is_send_when_the_cell_is_sync() {
    fn is_send<F: Future + Send>(_: F) {}
    let cell: Deferred<u8> = Deferred::new();
    is_send(cell.wait());
    is_send(cell.get_or_init(|| async { 1 }));
}

// ----- regressions found in review -------------------------------------------------------

#[test]
fn a_failed_try_claim_does_not_release_the_holders_claim() {
    let cell = Deferred::<u8>::new();
    let holder = cell.try_claim().unwrap();
    assert!(cell.try_claim().is_none());
    assert!(
        cell.try_claim().is_none(),
        "a second holder while `holder` is alive"
    );
    drop(holder);
    assert!(cell.try_claim().is_some());
}

#[test]
fn a_failed_producer_does_not_hand_the_claim_to_a_waiter() {
    let cell = Deferred::<u8>::new();
    let holder = cell.try_claim().unwrap();
    let mut claimant = pin!(cell.claim());
    assert!(poll_once(claimant.as_mut()).is_pending());
    assert!(cell.producer().is_none());
    assert!(
        poll_once(claimant.as_mut()).is_pending(),
        "the claimant was granted while `holder` is alive"
    );
    drop(holder);
    assert!(matches!(poll_once(claimant.as_mut()), Poll::Ready(Ok(_))));
}

#[test]
fn repolling_a_granted_claim_wait_does_not_mint_a_second_claim() {
    let cell = Deferred::<u8>::new();
    let first = cell.try_claim().unwrap();
    let mut claimant = pin!(cell.claim());
    assert!(poll_once(claimant.as_mut()).is_pending());
    drop(first); // handed to `claimant`
    let Poll::Ready(Ok(claim)) = poll_once(claimant.as_mut()) else {
        panic!("the claimant must hold the claim")
    };
    let again = poll_once(claimant.as_mut());
    assert!(
        !matches!(again, Poll::Ready(Ok(_))),
        "a second Claim while the first is held"
    );
    drop(claim);
}

#[test]
fn a_producer_is_closed_exactly_while_no_one_waits() {
    let cell: Deferred<u8> = Deferred::new();
    let producer = cell.producer().unwrap();
    assert!(producer.is_closed(), "no one has polled yet");
    let mut wait = Box::pin(cell.wait());
    let mut claim = Box::pin(cell.claim());
    let waker = noop_waker();
    assert!(poll_with(wait.as_mut(), &waker).is_pending());
    assert!(!producer.is_closed(), "a linked waiter");
    assert!(poll_with(claim.as_mut(), &waker).is_pending());
    drop(wait);
    assert!(!producer.is_closed(), "a claimant still waits");
    drop(claim);
    assert!(producer.is_closed(), "the last waiter went");
    // Not final: a new waiter opens it again.
    let mut again = Box::pin(cell.wait());
    assert!(poll_with(again.as_mut(), &waker).is_pending());
    assert!(!producer.is_closed());
    let handle = cell.on_complete(|_| {});
    drop(again);
    assert!(!producer.is_closed(), "a pending callback counts");
    assert!(handle.dispose());
    assert!(producer.is_closed());
}

#[test]
fn a_producer_is_closed_once_someone_else_completes_the_cell() {
    let cell: Deferred<u8> = Deferred::new();
    let producer = cell.producer().unwrap();
    let mut wait = Box::pin(cell.wait());
    assert!(poll_once(wait.as_mut()).is_pending());
    assert!(!producer.is_closed());
    cell.succeed(1).unwrap();
    assert!(producer.is_closed());
    assert_eq!(producer.succeed(2), Err(2));
}

#[test]
fn closed_is_woken_by_the_last_waiter_to_leave_and_not_before() {
    let cell: Deferred<u8> = Deferred::new();
    let mut producer = cell.producer().unwrap();
    let waker = noop_waker();
    let mut waits: Vec<_> = (0..3).map(|_| Some(Box::pin(cell.wait()))).collect();
    for w in &mut waits {
        assert!(poll_with(w.as_mut().unwrap().as_mut(), &waker).is_pending());
    }
    let counts = Arc::new(Counts::default());
    {
        let mut closed = pin!(producer.closed());
        assert!(poll_with(closed.as_mut(), &counting_waker(&counts)).is_pending());
        waits[1] = None;
        waits[0] = None;
        assert_eq!(counts.wakes(), 0, "a waiter is left");
        assert!(poll_with(closed.as_mut(), &counting_waker(&counts)).is_pending());
        waits[2] = None;
        assert_eq!(counts.wakes(), 1, "the last waiter woke it");
        assert!(poll_with(closed.as_mut(), &counting_waker(&counts)).is_ready());
    }
    assert!(producer.is_closed());
    drop(producer);
    assert!(cell.is_cancelled());
}

#[test]
fn closed_is_woken_by_a_completion_by_someone_else() {
    let cell: Deferred<u8> = Deferred::new();
    let mut producer = cell.producer().unwrap();
    let mut wait = Box::pin(cell.wait());
    assert!(poll_once(wait.as_mut()).is_pending());
    let counts = Arc::new(Counts::default());
    {
        let mut closed = pin!(producer.closed());
        assert!(poll_with(closed.as_mut(), &counting_waker(&counts)).is_pending());
        cell.succeed(3).unwrap();
        assert_eq!(counts.wakes(), 1);
        assert!(poll_with(closed.as_mut(), &counting_waker(&counts)).is_ready());
    }
    drop(producer);
}

#[test]
#[cfg(feature = "std")]
fn closed_is_woken_by_a_blocking_waiter_that_times_out() {
    let cell: Arc<Deferred<u8>> = Arc::new(Deferred::new());
    let mut producer = cell.producer().unwrap();
    let c = Arc::clone(&cell);
    let blocked = thread::spawn(move || {
        c.wait_blocking_timeout(std::time::Duration::from_millis(50))
            .is_none()
    });
    // Wait (bounded by the timeout) until the thread is linked, or it timed out already.
    while producer.is_closed() && !blocked.is_finished() {
        thread::yield_now();
    }
    block_on(producer.closed());
    assert!(blocked.join().unwrap());
    assert!(producer.is_closed());
    producer.succeed(1).unwrap();
}

#[test]
fn a_dropped_closed_future_unlinks_and_leaves_the_waiters_alone() {
    let cell: Deferred<u8> = Deferred::new();
    let mut producer = cell.producer().unwrap();
    let counts = Arc::new(Counts::default());
    let mut wait = Box::pin(cell.wait());
    assert!(poll_with(wait.as_mut(), &counting_waker(&counts)).is_pending());
    {
        let mut closed = Box::pin(producer.closed());
        assert!(poll_once(closed.as_mut()).is_pending());
        // Re-polled with another waker: renewed, still linked.
        assert!(poll_once(closed.as_mut()).is_pending());
    }
    assert!(!producer.is_closed());
    producer.succeed(5).unwrap();
    assert_eq!(counts.wakes(), 1);
    assert_eq!(poll_once(wait.as_mut()), Poll::Ready(Ok(&5)));
}

#[test]
fn closed_races_waiters_on_threads_without_hanging() {
    for _ in 0..n(200) {
        let cell: Arc<Deferred<u8>> = Arc::new(Deferred::new());
        let mut producer = cell.producer().unwrap();
        let start = Arc::new(Barrier::new(3));
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let (c, s) = (Arc::clone(&cell), Arc::clone(&start));
                thread::spawn(move || {
                    let mut w = Box::pin(c.wait());
                    let _ = poll_once(w.as_mut());
                    s.wait();
                    drop(w);
                })
            })
            .collect();
        start.wait();
        block_on(producer.closed());
        for t in threads {
            t.join().unwrap();
        }
        assert!(producer.is_closed());
        drop(producer);
    }
}

/// `OwnedWait`s (each holding an `Arc` of the cell) linked, then dropped or awaited on
/// their own threads while the cell completes and the test lets go of its own `Arc`: the
/// last `Arc` may go on any thread, and always after its `Waiter` unlinked (or was taken off
/// by the drain). Under miri's many seeds a cell freed before an unlink, or a node touched
/// after its future went, is a use after free.
#[test]
fn owned_waits_dropped_on_threads_while_the_cell_completes() {
    for _ in 0..n(50) {
        let cell = Arc::new(Deferred::<u32>::new());
        let waiters: Vec<_> = (0..3)
            .map(|i| {
                let mut wait = Box::pin(Deferred::wait_owned(Arc::clone(&cell)));
                assert!(poll_with(wait.as_mut(), &noop_waker()).is_pending());
                thread::spawn(move || {
                    if i == 1 {
                        assert_eq!(block_on(wait), Ok(5));
                    } else {
                        drop(wait);
                    }
                })
            })
            .collect();
        assert_eq!(cell.succeed(5), Ok(()));
        drop(cell);
        for waiter in waiters {
            waiter.join().unwrap();
        }
    }
}
