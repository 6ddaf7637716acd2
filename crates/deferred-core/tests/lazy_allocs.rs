//! What a `Lazy` allocates: one allocation, whether it is never driven (made ready, made
//! pending and completed from outside) or driven many times: the waker its computation is
//! polled with (the relay) is a weak handle to that same allocation, and allocates nothing
//! of its own. A counting global allocator watches; one test function, so that no other
//! test of this binary allocates while it counts.

#![allow(clippy::std_instead_of_core)] // tests run on std; `core::` paths matter in the library only.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    future::{poll_fn, Future},
    pin::pin,
    sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst},
    task::{Context, Poll},
};

use deferred_core::Lazy;
use futures::task::noop_waker;

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to `System`, only counting.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(SeqCst) {
            ALLOCS.fetch_add(1, SeqCst);
        }
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// How many allocations `f` makes.
fn allocations<R>(f: impl FnOnce() -> R) -> (usize, R) {
    ALLOCS.store(0, SeqCst);
    COUNTING.store(true, SeqCst);
    let r = f();
    COUNTING.store(false, SeqCst);
    (ALLOCS.load(SeqCst), r)
}

#[test]
fn a_cell_is_one_allocation_whether_driven_or_not() {
    let waker = noop_waker();
    let mut cx = Context::from_waker(&waker);

    // Never driven: the cell's own allocation, nothing else.
    let (n, ready) = allocations(|| Lazy::<u64>::ready(7));
    assert_eq!(n, 1, "a ready cell");
    assert_eq!(ready.get(), Some(&7));
    let (n, pending) = allocations(|| {
        let cell = Lazy::<u64>::pending();
        cell.succeed(8).unwrap();
        cell
    });
    assert_eq!(n, 1, "a pending cell completed from outside");
    assert_eq!(pending.get(), Some(&8));

    // Driven three times (the computation is pending twice, and clones and drops its
    // waker each time): the relay allocates nothing.
    let (n, lazy) = allocations(|| {
        let mut polls = 0;
        let lazy = Lazy::new(move || {
            poll_fn(move |cx| {
                polls += 1;
                if polls < 3 {
                    let kept = cx.waker().clone();
                    kept.wake_by_ref();
                    drop(kept);
                    cx.waker().wake_by_ref();
                    Poll::Pending
                } else {
                    Poll::Ready(Ok::<u64, ()>(9))
                }
            })
        });
        {
            let mut wait = pin!(lazy.wait());
            let mut outcome = None;
            for _ in 0..3 {
                if let Poll::Ready(o) = wait.as_mut().poll(&mut cx) {
                    outcome = Some(o.copied());
                    break;
                }
            }
            assert_eq!(outcome, Some(Ok(9)), "three polls complete it");
        }
        lazy
    });
    assert_eq!(n, 1, "a driven cell");
    assert_eq!(lazy.get(), Some(&9));
}
