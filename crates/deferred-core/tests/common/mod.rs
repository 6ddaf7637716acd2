//! Test helpers shared by the black-box tests: wakers that count what is done to them.
#![allow(dead_code)]
#![allow(clippy::std_instead_of_core)] // tests run on std; `core::` paths matter in the library only.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering::SeqCst},
        Arc,
    },
    task::{RawWaker, RawWakerVTable, Waker},
};

/// What happened to the clones of one counting waker.
#[derive(Default, Debug)]
pub struct Counts {
    pub clones: AtomicUsize,
    pub wakes: AtomicUsize,
    pub drops: AtomicUsize,
    /// Panic on the first wake (to test that the others are still woken).
    pub panic_on_wake: bool,
}

impl Counts {
    pub fn clones(&self) -> usize {
        self.clones.load(SeqCst)
    }
    pub fn wakes(&self) -> usize {
        self.wakes.load(SeqCst)
    }
}

/// A waker whose clone, wake and drop are counted in `Counts`.
pub fn counting_waker(counts: &Arc<Counts>) -> Waker {
    let ptr = Arc::into_raw(Arc::clone(counts)).cast::<()>();
    // SAFETY: `ptr` came from `Arc::into_raw` of an `Arc<Counts>`, which is what VTABLE's
    // functions expect, and the strong count it carries is released by `drop`/`wake`.
    unsafe { Waker::from_raw(RawWaker::new(ptr, &VTABLE)) }
}

static VTABLE: RawWakerVTable = RawWakerVTable::new(clone, wake, wake_by_ref, drop_waker);

unsafe fn clone(ptr: *const ()) -> RawWaker {
    // SAFETY: `ptr` is an `Arc<Counts>` pointer with a strong count of its own (see above).
    let counts = unsafe { &*ptr.cast::<Counts>() };
    counts.clones.fetch_add(1, SeqCst);
    // SAFETY: as above; the new RawWaker gets a strong count of its own.
    unsafe { Arc::increment_strong_count(ptr.cast::<Counts>()) };
    RawWaker::new(ptr, &VTABLE)
}

unsafe fn wake(ptr: *const ()) {
    /// `wake` consumes the waker, even when it panics.
    struct Consume(*const ());
    impl Drop for Consume {
        fn drop(&mut self) {
            // SAFETY: the waker being consumed carries this strong count.
            unsafe { drop_waker(self.0) }
        }
    }
    let _consume = Consume(ptr);
    // SAFETY: forwarded; the waker is alive until `_consume` drops.
    unsafe { wake_by_ref(ptr) }
}

unsafe fn wake_by_ref(ptr: *const ()) {
    // SAFETY: `ptr` is a live `Arc<Counts>` pointer.
    let counts = unsafe { &*ptr.cast::<Counts>() };
    let n = counts.wakes.fetch_add(1, SeqCst);
    if counts.panic_on_wake && n == 0 {
        panic!("this waker panics on its first wake");
    }
}

unsafe fn drop_waker(ptr: *const ()) {
    // SAFETY: `ptr` is a live `Arc<Counts>` pointer.
    unsafe { &*ptr.cast::<Counts>() }.drops.fetch_add(1, SeqCst);
    // SAFETY: releases the strong count this waker carried.
    unsafe { Arc::decrement_strong_count(ptr.cast::<Counts>()) };
}
