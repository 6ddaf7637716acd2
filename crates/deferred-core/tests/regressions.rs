//! Regression tests for defects a review found (issue #11), each forced on one thread where
//! it is a race, so it fails without loom. A hang is bounded by `bounded`, never ordered by
//! a sleep.
#![allow(clippy::std_instead_of_core)] // tests run on std; `core::` paths matter in the library only.

mod common;

use std::{
    future::Future,
    pin::{pin, Pin},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst},
        mpsc, Arc, Mutex, OnceLock,
    },
    task::{Context, Poll, Wake, Waker},
    time::Duration,
};

use common::{counting_waker, poll_once, Counts};
use deferred_core::{Deferred, Lazy};
use futures::task::noop_waker;

/// Runs `f` on its own thread and fails if it has not returned within 20 s (a hang, such as
/// a loop with the cell's lock held, would otherwise stall the whole test run).
fn bounded(name: &str, f: impl FnOnce() + Send + 'static) {
    let (done, finished) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        f();
        let _ = done.send(());
    });
    match finished.recv_timeout(Duration::from_secs(20)) {
        Ok(()) => worker.join().unwrap(),
        // The worker panicked: report its panic.
        Err(mpsc::RecvTimeoutError::Disconnected) => worker.join().unwrap(),
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{name}: hung for 20 s"),
    }
}

/// A computation that never finishes and keeps the waker it is polled with (the lazy cell's
/// relay), so the test can wake it as the computation's I/O would.
struct KeepsWaker(Arc<Mutex<Option<Waker>>>);

impl Future for KeepsWaker {
    type Output = Result<u32, ()>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        *self.0.lock().unwrap() = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// A task waker that, on its first wake, wakes the lazy computation again: a second
/// `notify_waiters` round starting inside the first one's batch.
struct WakesTheComputation {
    relay: OnceLock<Waker>,
    fired: AtomicBool,
}

impl Wake for WakesTheComputation {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        if !self.fired.swap(true, SeqCst) {
            self.relay.get().expect("relay set").wake_by_ref();
        }
    }
}

/// #11.1: a wake-waiters round whose sentinel was taken by a later round (which started
/// inside the first one's batch) must end, not re-queue a linked callback forever with the
/// lock held. 33 waiters fill the first round's batch of 32, so it relocks after waking them.
#[test]
fn a_notify_round_whose_sentinel_a_later_round_took_ends() {
    bounded("notify round", || {
        let slot = Arc::new(Mutex::new(None));
        let lazy: Lazy<u32, ()> = Lazy::boxed(KeepsWaker(Arc::clone(&slot)));
        let calls = Arc::new(AtomicUsize::new(0));
        let c = Arc::clone(&calls);
        lazy.on_complete(move |outcome| {
            assert_eq!(outcome, Ok(&7));
            c.fetch_add(1, SeqCst);
        });
        let reentrant = Arc::new(WakesTheComputation {
            relay: OnceLock::new(),
            fired: AtomicBool::new(false),
        });
        let first = Waker::from(Arc::clone(&reentrant));
        let mut waits: Vec<_> = (0..33).map(|_| Box::pin(lazy.wait())).collect();
        assert!(poll_once(waits[0].as_mut(), &first).is_pending());
        for w in &mut waits[1..] {
            assert!(poll_once(w.as_mut(), &noop_waker()).is_pending());
        }
        let relay = slot
            .lock()
            .unwrap()
            .clone()
            .expect("the computation was polled");
        reentrant.relay.set(relay.clone()).unwrap();
        relay.wake_by_ref();
        assert!(reentrant.fired.load(SeqCst), "the re-entrant round ran");
        assert!(lazy.succeed(7).is_ok());
        assert_eq!(
            calls.load(SeqCst),
            1,
            "the callback runs once, at completion"
        );
        for w in &mut waits {
            assert_eq!(poll_once(w.as_mut(), &noop_waker()), Poll::Ready(Ok(&7)));
        }
    });
}

/// #11.2: `take` on a pending cell must keep the callbacks linked to it: the next completion
/// runs them.
#[test]
fn take_on_a_pending_cell_keeps_its_callbacks() {
    let mut cell: Deferred<u32> = Deferred::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&calls);
    cell.on_complete(move |outcome| {
        assert_eq!(outcome, Ok(&3));
        c.fetch_add(1, SeqCst);
    });
    assert_eq!(cell.take(), None);
    assert!(cell.succeed(3).is_ok());
    assert_eq!(calls.load(SeqCst), 1, "the callback ran at the completion");
}

/// #11.3: a `get_or_init` caller whose initializer is running must be woken by a direct
/// completion of the cell, see the value on its next poll, and drop its initializer.
#[test]
fn get_or_init_sees_a_direct_completion_while_its_initializer_runs() {
    struct Flag(Arc<AtomicBool>);
    impl Drop for Flag {
        fn drop(&mut self) {
            self.0.store(true, SeqCst);
        }
    }
    let cell: Deferred<u32> = Deferred::new();
    let dropped = Arc::new(AtomicBool::new(false));
    let d = Arc::clone(&dropped);
    let mut fut = pin!(cell.get_or_init(move || async move {
        let _flag = Flag(d);
        std::future::pending::<u32>().await
    }));
    let counts = Arc::new(Counts::default());
    let waker = counting_waker(&counts);
    assert!(poll_once(fut.as_mut(), &waker).is_pending());
    assert!(cell.succeed(5).is_ok());
    assert!(
        counts.wakes() >= 1,
        "the completion wakes the initializing caller"
    );
    assert_eq!(poll_once(fut.as_mut(), &waker), Poll::Ready(Ok(&5)));
    assert!(
        dropped.load(SeqCst),
        "its initializer is dropped once the cell is done"
    );
}
