//! `Deferred::pair`: a completer and an awaiter over one heap cell.

#![allow(clippy::std_instead_of_core)] // tests run on std; `core::` paths matter in the library only.

use std::{
    panic::{catch_unwind, AssertUnwindSafe},
    pin::pin,
    sync::{
        atomic::{AtomicBool, Ordering::SeqCst},
        Arc,
    },
    task::{Poll, Wake, Waker},
};

use deferred_core::{Deferred, Error};
use deferred_test_support::{poll_once, poll_with, quiet_panics_saying};
use futures::future::FusedFuture;

#[test]
fn a_value_sent_before_the_first_poll_is_moved_out() {
    let (completer, awaiter) = Deferred::<String>::pair();
    completer.succeed("a".to_string()).unwrap();
    assert_eq!(futures::executor::block_on(awaiter), Ok("a".to_string()));
}

#[test]
fn a_waiting_awaiter_is_woken_by_the_completion() {
    let (completer, awaiter) = Deferred::<u32>::pair();
    let mut awaiter = pin!(awaiter);
    assert!(poll_once(awaiter.as_mut()).is_pending());
    completer.succeed(5).unwrap();
    assert_eq!(poll_once(awaiter.as_mut()), Poll::Ready(Ok(5)));
    assert!(awaiter.is_terminated());
    // Fused: polled again, it stays pending and takes nothing twice.
    assert!(poll_once(awaiter.as_mut()).is_pending());
}

#[test]
fn an_error_reaches_the_awaiter() {
    let (completer, awaiter) = Deferred::<u8, &str>::pair();
    completer.fail("no").unwrap();
    assert_eq!(
        futures::executor::block_on(awaiter),
        Err(Error::Failed("no"))
    );
}

#[test]
fn a_dropped_completer_cancels_a_waiting_awaiter() {
    let (completer, awaiter) = Deferred::<u8>::pair();
    let mut awaiter = pin!(awaiter);
    assert!(poll_once(awaiter.as_mut()).is_pending());
    drop(completer);
    assert_eq!(
        poll_once(awaiter.as_mut()),
        Poll::Ready(Err(Error::Cancelled))
    );
}

#[test]
fn a_completion_after_the_awaiter_is_gone_is_handed_back() {
    let (completer, awaiter) = Deferred::<String>::pair();
    assert!(!completer.is_closed());
    drop(awaiter);
    assert!(completer.is_closed());
    assert_eq!(completer.succeed("x".into()), Err("x".to_string()));

    let (completer, awaiter) = Deferred::<u8, String>::pair();
    {
        let mut awaiter = pin!(awaiter);
        assert!(poll_once(awaiter.as_mut()).is_pending()); // linked, then unlinked by drop
    }
    assert_eq!(completer.fail("e".into()), Err("e".to_string()));

    let (completer, awaiter) = Deferred::<u8, u8>::pair();
    drop(awaiter);
    assert_eq!(completer.complete(Err(1)), Err(Err(1)));
}

#[test]
fn values_are_dropped_exactly_once() {
    let value = Arc::new(());
    // Completed, never awaited: dropped with the cell by whichever handle goes last.
    let (completer, awaiter) = Deferred::<Arc<()>>::pair();
    completer.succeed(value.clone()).unwrap();
    drop(awaiter);
    assert_eq!(Arc::strong_count(&value), 1);
    // Completed, then awaited: moved out, and the cell does not drop it again.
    let (completer, awaiter) = Deferred::<Arc<()>>::pair();
    let mut awaiter = pin!(awaiter);
    assert!(poll_once(awaiter.as_mut()).is_pending());
    completer.succeed(value.clone()).unwrap();
    let got = match poll_once(awaiter.as_mut()) {
        Poll::Ready(got) => got.unwrap(),
        Poll::Pending => panic!("woken and complete"),
    };
    assert_eq!(Arc::strong_count(&value), 2);
    drop(got);
    assert_eq!(Arc::strong_count(&value), 1);
    // Awaiter gone first: handed back.
    let (completer, awaiter) = Deferred::<Arc<()>>::pair();
    drop(awaiter);
    drop(completer.succeed(value.clone()));
    assert_eq!(Arc::strong_count(&value), 1);
    // Neither completed nor awaited.
    let (completer, awaiter) = Deferred::<Arc<()>>::pair();
    drop(completer);
    drop(awaiter);
    assert_eq!(Arc::strong_count(&value), 1);
}

#[test]
fn pairs_across_threads() {
    let rounds = if cfg!(miri) { 20 } else { 2_000 };
    for i in 0..rounds {
        let (completer, awaiter) = Deferred::<usize>::pair();
        let t = std::thread::spawn(move || completer.succeed(i).unwrap());
        assert_eq!(futures::executor::block_on(awaiter), Ok(i));
        t.join().unwrap();
        // The awaiter dropped while the completer may still be publishing.
        let (completer, awaiter) = Deferred::<Arc<usize>>::pair();
        let value = Arc::new(i);
        let v = value.clone();
        let t = std::thread::spawn(move || drop(completer.succeed(v)));
        drop(awaiter);
        t.join().unwrap();
        assert_eq!(Arc::strong_count(&value), 1);
    }
}

#[test]
fn debug_says_what_it_can() {
    let (completer, awaiter) = Deferred::<u8>::pair();
    assert_eq!(format!("{completer:?}"), "Completer { closed: false, .. }");
    assert_eq!(
        format!("{awaiter:?}"),
        "Awaiter { linked: false, done: false, .. }"
    );
}

/// A waker whose `wake` panics.
struct PanicsOnWake;

impl Wake for PanicsOnWake {
    fn wake(self: Arc<Self>) {
        panic!("pair waker panics in wake");
    }
}

/// A waker whose last `Drop` panics, once armed.
struct PanicsOnDrop(AtomicBool);

impl Wake for PanicsOnDrop {
    fn wake(self: Arc<Self>) {}
}

impl Drop for PanicsOnDrop {
    fn drop(&mut self) {
        if self.0.load(SeqCst) {
            panic!("pair waker panics in drop");
        }
    }
}

#[test]
fn a_waker_panicking_in_the_completers_drain_does_not_leak_the_cell() {
    // The completer publishes, drains (the awaiter's waker panics), and must still let go
    // as the panic leaves it: the awaiter, dropped later, then frees the cell and the value.
    quiet_panics_saying("pair waker panics in wake");
    let value = Arc::new(());
    let (completer, awaiter) = Deferred::<Arc<()>>::pair();
    let mut awaiter = Box::pin(awaiter);
    let waker = Waker::from(Arc::new(PanicsOnWake));
    assert!(poll_with(awaiter.as_mut(), &waker).is_pending());
    let v = value.clone();
    assert!(catch_unwind(AssertUnwindSafe(|| completer.succeed(v))).is_err());
    drop(awaiter);
    assert_eq!(
        Arc::strong_count(&value),
        1,
        "the cell (and the value) leaked"
    );

    // The same for a completer dropped without completing (its drain cancels).
    let (completer, awaiter) = Deferred::<Arc<()>>::pair();
    let mut awaiter = Box::pin(awaiter);
    assert!(poll_with(awaiter.as_mut(), &waker).is_pending());
    assert!(catch_unwind(AssertUnwindSafe(|| drop(completer))).is_err());
    assert_eq!(
        poll_once(awaiter.as_mut()),
        Poll::Ready(Err(Error::Cancelled))
    );
    drop(awaiter);
}

#[test]
fn a_waker_panicking_in_the_awaiters_unlink_still_lets_the_awaiter_go() {
    // The awaiter's drop unlinks its node and drops the waker it carried (user code), which
    // panics: the awaiter must still let go, so the completer sees it closed, gets its value
    // back, and frees the cell.
    quiet_panics_saying("pair waker panics in drop");
    let (completer, awaiter) = Deferred::<Arc<()>>::pair();
    let mut awaiter = Box::pin(awaiter);
    let inner = Arc::new(PanicsOnDrop(AtomicBool::new(false)));
    let waker = Waker::from(inner.clone());
    assert!(poll_with(awaiter.as_mut(), &waker).is_pending());
    // The node's clone is now the last one.
    inner.0.store(true, SeqCst);
    drop(inner);
    drop(waker);
    assert!(catch_unwind(AssertUnwindSafe(|| drop(awaiter))).is_err());
    assert!(completer.is_closed(), "the awaiter never let go");
    let value = Arc::new(());
    assert!(completer.succeed(value.clone()).is_err());
    assert_eq!(Arc::strong_count(&value), 1);
}
