//! A relay (the computation's waker) woken by value must release its count of the cell's
//! allocation even when the wake unwinds: `RawWaker`'s `wake` consumes the waker, and a
//! waiter's waker that panics in the relay's round unwinds through it. A global allocator
//! watches the cell's allocation and reports when it is freed; one test function, so that
//! no other test of this binary allocates while it watches.

#![allow(clippy::std_instead_of_core)] // tests run on std; `core::` paths matter in the library only.

mod common;

use std::{
    alloc::{GlobalAlloc, Layout, System},
    future::poll_fn,
    panic::{catch_unwind, AssertUnwindSafe},
    pin::pin,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst},
        Arc, Mutex,
    },
    task::{Poll, Waker},
};

use common::{counting_waker, Counts};
use deferred_core::Lazy;
use deferred_test_support::poll_with;

struct Watching;

/// Set: the next allocation is the one watched.
static RECORD: AtomicBool = AtomicBool::new(false);
/// The watched allocation's address.
static WATCHED: AtomicUsize = AtomicUsize::new(0);
/// Whether the watched allocation was freed.
static FREED: AtomicBool = AtomicBool::new(false);

// SAFETY: forwards to `System`, only watching one address.
unsafe impl GlobalAlloc for Watching {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let ptr = unsafe { System.alloc(layout) };
        if RECORD.swap(false, SeqCst) {
            WATCHED.store(ptr as usize, SeqCst);
        }
        ptr
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if ptr as usize == WATCHED.load(SeqCst) {
            FREED.store(true, SeqCst);
        }
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Watching = Watching;

#[test]
fn a_relay_woken_by_value_releases_the_cell_even_when_a_waiters_waker_panics() {
    let kept: Arc<Mutex<Option<Waker>>> = Arc::default();
    let k = Arc::clone(&kept);
    let counts = Arc::new(Counts {
        panic_on_wake: true,
        ..Counts::default()
    });
    let waiter = counting_waker(&counts);
    RECORD.store(true, SeqCst);
    // `Lazy::new` makes one allocation, the cell's (see tests/no_alloc.rs).
    let lazy = Lazy::new(move || {
        poll_fn(move |cx| {
            *k.lock().unwrap() = Some(cx.waker().clone());
            Poll::<Result<u32, ()>>::Pending
        })
    });
    assert!(!RECORD.load(SeqCst), "the cell allocated");
    {
        // A waiter whose waker panics on its first wake is linked; the computation, polled
        // by its first poll, keeps the relay.
        let mut wait = pin!(lazy.wait());
        assert!(poll_with(wait.as_mut(), &waiter).is_pending());
        let relay = kept
            .lock()
            .unwrap()
            .take()
            .expect("the computation was polled");
        // The relay's round wakes the waiter, whose waker panics: the wake unwinds.
        let unwound = catch_unwind(AssertUnwindSafe(move || relay.wake()));
        assert!(unwound.is_err(), "the waiter's waker panicked");
    }
    // The last handle goes, the computation with it; no relay is left.
    drop(lazy);
    assert!(kept.lock().unwrap().is_none());
    assert!(
        FREED.load(SeqCst),
        "the cell's allocation is freed once its last handle and every relay are gone"
    );
    drop(waiter);
}
