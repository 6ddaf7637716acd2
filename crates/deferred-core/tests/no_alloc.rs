//! A waiter costs no heap allocation: 1000 waiters on a stack cell, registered, completed
//! and all woken, with a counting global allocator watching.

#![allow(clippy::std_instead_of_core)] // tests run on std; `core::` paths matter in the library only.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    future::Future,
    pin::Pin,
    sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst},
    task::{Context, Poll},
};

use deferred_core::Deferred;
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

#[test]
fn a_thousand_waiters_cost_no_allocation() {
    let cell: Deferred<u64> = Deferred::new();
    let waiters = if cfg!(miri) { 16 } else { 1000 };
    // The futures' storage is made up front: what is measured is the waiting itself.
    let mut futs: Vec<_> = (0..waiters).map(|_| cell.wait()).collect();
    let waker = noop_waker();
    let mut cx = Context::from_waker(&waker);

    COUNTING.store(true, SeqCst);
    for fut in futs.iter_mut() {
        // SAFETY: the Vec is never resized or moved while the futures live, so each future
        // stays where it was pinned until it is dropped with the Vec.
        let fut = unsafe { Pin::new_unchecked(fut) };
        assert!(fut.poll(&mut cx).is_pending());
    }
    cell.succeed(7).unwrap();
    for fut in futs.iter_mut() {
        // SAFETY: as above.
        let fut = unsafe { Pin::new_unchecked(fut) };
        assert_eq!(fut.poll(&mut cx), Poll::Ready(Ok(&7)));
    }
    COUNTING.store(false, SeqCst);
    drop(futs);

    assert_eq!(ALLOCS.load(SeqCst), 0, "waiting allocated");
}
