//! Completion callbacks: each runs exactly once, with the outcome, even if another panics;
//! a cell dropped incomplete drops them unrun.

#![allow(clippy::std_instead_of_core)] // tests run on std; `core::` paths matter in the library only.

mod common;

use std::sync::{
    atomic::{AtomicUsize, Ordering::SeqCst},
    Arc, Mutex,
};

use common::{counting_waker, Counts};
use deferred_core::{Deferred, Error};
use deferred_test_support::poll_with;

type Log = Arc<Mutex<Vec<String>>>;
type Recorder = Box<dyn Fn(String) + Send>;

/// A shared log, and a maker of callbacks that append `name:outcome` to it.
fn recorder() -> (Log, impl Fn(&str) -> Recorder) {
    let log: Log = Arc::new(Mutex::new(Vec::new()));
    let l = log.clone();
    (log, move |name: &str| -> Recorder {
        let (l, name) = (l.clone(), name.to_string());
        Box::new(move |s: String| l.lock().unwrap().push(format!("{name}:{s}")))
    })
}

#[test]
fn a_callback_on_a_completed_cell_runs_at_once() {
    let cell: Deferred<u8> = Deferred::with_value(3);
    let (log, rec) = recorder();
    let r = rec("a");
    cell.on_complete(move |o| r(format!("{o:?}")));
    assert_eq!(*log.lock().unwrap(), ["a:Ok(3)"]);
}

#[test]
fn callbacks_run_once_with_the_outcome_in_order_with_waiters() {
    let cell: Deferred<u8, &'static str> = Deferred::new();
    let (log, rec) = recorder();
    let (a, b) = (rec("a"), rec("b"));
    cell.on_complete(move |o| a(format!("{o:?}")));
    let counts = Arc::new(Counts::default());
    let mut wait = Box::pin(cell.wait());
    assert!(poll_with(wait.as_mut(), &counting_waker(&counts)).is_pending());
    cell.on_complete(move |o| b(format!("{o:?}")));
    assert!(log.lock().unwrap().is_empty());
    cell.fail("e").unwrap();
    assert_eq!(
        *log.lock().unwrap(),
        [r#"a:Err(Failed("e"))"#, r#"b:Err(Failed("e"))"#]
    );
    assert_eq!(counts.wakes(), 1);
    cell.cancel();
    assert_eq!(log.lock().unwrap().len(), 2, "no callback runs twice");
}

#[test]
fn a_panicking_callback_does_not_stop_the_others() {
    let cell: Deferred<u8> = Deferred::new();
    let ran = Arc::new(AtomicUsize::new(0));
    for i in 0..40 {
        let ran = ran.clone();
        cell.on_complete(move |_| {
            ran.fetch_add(1, SeqCst);
            assert!(i != 5, "callback 5 panics");
        });
    }
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cell.succeed(1)));
    assert!(r.is_err());
    assert_eq!(ran.load(SeqCst), 40);
}

#[test]
fn a_cell_dropped_incomplete_drops_its_callbacks_unrun() {
    struct Token(Arc<AtomicUsize>);
    impl Drop for Token {
        fn drop(&mut self) {
            self.0.fetch_add(1, SeqCst);
        }
    }
    let drops = Arc::new(AtomicUsize::new(0));
    let runs = Arc::new(AtomicUsize::new(0));
    {
        let cell: Deferred<u8> = Deferred::new();
        for _ in 0..3 {
            let (t, r) = (Token(drops.clone()), runs.clone());
            cell.on_complete(move |_| {
                let _t = &t;
                r.fetch_add(1, SeqCst);
            });
        }
    }
    assert_eq!((drops.load(SeqCst), runs.load(SeqCst)), (3, 0));
}

#[test]
fn a_lazy_relay_wake_does_not_run_callbacks() {
    use std::{
        future::Future,
        pin::Pin,
        task::{Context, Poll},
    };
    // A computation that wakes itself once before finishing.
    struct YieldOnce(bool);
    impl Future for YieldOnce {
        type Output = Result<u8, ()>;
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            if self.0 {
                return Poll::Ready(Ok(5));
            }
            self.0 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
    let lazy = deferred_core::Lazy::new(|| YieldOnce(false));
    let (log, rec) = recorder();
    let r = rec("cb");
    lazy.deferred().on_complete(move |o| r(format!("{o:?}")));
    let mut w = Box::pin(lazy.wait());
    assert!(poll_with(w.as_mut(), &futures::task::noop_waker()).is_pending());
    assert!(log.lock().unwrap().is_empty(), "woken, not completed");
    assert_eq!(
        poll_with(w.as_mut(), &futures::task::noop_waker()),
        std::task::Poll::Ready(Ok(&5))
    );
    assert_eq!(*log.lock().unwrap(), ["cb:Ok(5)"]);
    assert_eq!(lazy.deferred().try_get(), Some(Ok(&5)));
    let _ = Error::<u8>::Cancelled;
}

#[test]
fn a_disposed_callback_is_dropped_unrun_and_the_others_still_run() {
    let cell: Deferred<u8> = Deferred::new();
    let (log, rec) = recorder();
    let (a, b, c) = (rec("a"), rec("b"), rec("c"));
    let dropped = Arc::new(AtomicUsize::new(0));
    struct CountDrop(Arc<AtomicUsize>);
    impl Drop for CountDrop {
        fn drop(&mut self) {
            self.0.fetch_add(1, SeqCst);
        }
    }
    let guard = CountDrop(dropped.clone());
    let _ha = cell.on_complete(move |o| a(format!("{o:?}")));
    let hb = cell.on_complete(move |o| {
        let _guard = &guard;
        b(format!("{o:?}"))
    });
    let hc = cell.on_complete(move |o| c(format!("{o:?}")));
    assert!(hb.dispose());
    assert_eq!(dropped.load(SeqCst), 1, "dropped by dispose, unrun");
    cell.succeed(4).unwrap();
    assert_eq!(*log.lock().unwrap(), ["a:Ok(4)", "c:Ok(4)"]);
    assert!(!hc.dispose(), "it ran");
}

#[test]
fn dispose_after_completion_or_on_a_complete_cell_says_false() {
    let cell: Deferred<u8> = Deferred::with_value(1);
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    let handle = cell.on_complete(move |_| {
        r.fetch_add(1, SeqCst);
    });
    assert_eq!(runs.load(SeqCst), 1);
    assert!(!handle.dispose());
    assert_eq!(
        format!("{:?}", cell.on_complete(|_| {})),
        "CallbackHandle { held: false, .. }"
    );
}

#[test]
fn a_dropped_handle_leaves_the_callback_registered() {
    let cell: Deferred<u8> = Deferred::new();
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    let handle = cell.on_complete(move |_| {
        r.fetch_add(1, SeqCst);
    });
    assert_eq!(format!("{handle:?}"), "CallbackHandle { held: true, .. }");
    drop(handle);
    cell.succeed(1).unwrap();
    assert_eq!(runs.load(SeqCst), 1);
}

#[test]
fn dispose_races_completion_on_threads_exactly_one_happens() {
    let rounds = if cfg!(miri) { 8 } else { 500 };
    for _ in 0..rounds {
        let cell: Arc<Deferred<u8>> = Arc::new(Deferred::new());
        let runs = Arc::new(AtomicUsize::new(0));
        let r = runs.clone();
        // Another callback ahead, so the completer is busy waking when dispose may come.
        cell.on_complete(|_| {});
        let handle = cell.on_complete(move |_| {
            r.fetch_add(1, SeqCst);
        });
        let c = Arc::clone(&cell);
        let t = std::thread::spawn(move || c.succeed(1).unwrap());
        let disposed = handle.dispose();
        t.join().unwrap();
        assert_eq!(usize::from(disposed) + runs.load(SeqCst), 1);
    }
}

#[test]
fn a_disposed_callback_on_a_dropped_cell_is_freed_once() {
    // Disposing, then dropping the cell pending: nothing is freed twice (miri checks).
    let cell: Deferred<String> = Deferred::new();
    let h1 = cell.on_complete(|_| {});
    let h2 = cell.on_complete(|_| {});
    assert!(h1.dispose());
    drop(h2);
    drop(cell);
}
