//! What waiting and cells cost on the heap, with a counting global allocator watching
//! (each test counts only its own thread's allocations, so the tests of this binary may run
//! side by side):
//!
//! * a waiter costs no allocation: 1000 waiters on a stack cell, registered, completed and
//!   all woken;
//! * a `Lazy` is one allocation, whether it is never driven (made ready, made pending and
//!   completed from outside) or driven many times: the waker its computation is polled
//!   with (the relay) is a weak handle to that same allocation.

#![allow(clippy::std_instead_of_core)] // tests run on std; `core::` paths matter in the library only.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
    future::{poll_fn, Future},
    pin::{pin, Pin},
    task::{Context, Poll},
};

use deferred_core::{Deferred, Lazy};
use futures::task::noop_waker;

struct Counting;

std::thread_local! {
    /// Whether this thread's allocations are counted, and how many there were.
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: forwards to `System`, only counting (in `const` thread-locals of plain `Cell`s,
// which allocate nothing, and are skipped once the thread's locals are gone).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.try_with(Cell::get).unwrap_or(false) {
            let _ = ALLOCS.try_with(|n| n.set(n.get() + 1));
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

/// How many allocations `f` makes on this thread.
fn allocations<R>(f: impl FnOnce() -> R) -> (usize, R) {
    ALLOCS.with(|n| n.set(0));
    COUNTING.with(|c| c.set(true));
    let r = f();
    COUNTING.with(|c| c.set(false));
    (ALLOCS.with(Cell::get), r)
}

#[test]
fn a_thousand_waiters_cost_no_allocation() {
    let cell: Deferred<u64> = Deferred::new();
    let waiters = if cfg!(miri) { 16 } else { 1000 };
    // The futures' storage is made up front: what is measured is the waiting itself.
    let mut futs: Vec<_> = (0..waiters).map(|_| cell.wait()).collect();
    let waker = noop_waker();
    let mut cx = Context::from_waker(&waker);

    let (n, ()) = allocations(|| {
        for fut in futs.iter_mut() {
            // SAFETY: the Vec is never resized or moved while the futures live, so each
            // future stays where it was pinned until it is dropped with the Vec.
            let fut = unsafe { Pin::new_unchecked(fut) };
            assert!(fut.poll(&mut cx).is_pending());
        }
        cell.succeed(7).unwrap();
        for fut in futs.iter_mut() {
            // SAFETY: as above.
            let fut = unsafe { Pin::new_unchecked(fut) };
            assert_eq!(fut.poll(&mut cx), Poll::Ready(Ok(&7)));
        }
    });
    drop(futs);

    assert_eq!(n, 0, "waiting allocated");
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
