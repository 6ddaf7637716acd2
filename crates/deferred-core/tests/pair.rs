//! `Deferred::pair`: a completer and an awaiter over one heap cell.

#![allow(clippy::std_instead_of_core)] // tests run on std; `core::` paths matter in the library only.

use std::{pin::pin, sync::Arc, task::Poll};

use deferred_core::{Deferred, Error};
use deferred_test_support::poll_once;
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
