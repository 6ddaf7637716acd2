//! Helpers shared by the benchmarks of the deferred workspace (`benches/core.rs`).
//!
//! The benchmarks drive futures by hand rather than through an executor, so that they
//! measure the cell (or the anchor crate it is compared with) and not a runtime:
//!
//! * [`poll_noop`] and [`ready_now`] poll a future with a waker that does nothing;
//! * [`WakeCounter`] is a waker that only counts its wake-ups, and is as cheap to clone
//!   as a waker can be (a pointer copy), so that registering with a wait list costs the
//!   list, not the waker;
//! * [`PinVec`] keeps many `!Unpin` futures pinned in one reusable allocation, so a
//!   workload with N waiters allocates nothing per waiter (beyond what the crate under
//!   test allocates itself).

use core::{
    future::{Future, IntoFuture},
    pin::{pin, Pin},
    sync::atomic::{AtomicUsize, Ordering},
    task::{Context, Poll, RawWaker, RawWakerVTable, Waker},
};

/// Polls `fut` once with a waker that does nothing ([`Waker::noop`]).
#[inline]
pub fn poll_noop<F: Future + ?Sized>(fut: Pin<&mut F>) -> Poll<F::Output> {
    fut.poll(&mut Context::from_waker(Waker::noop()))
}

/// Polls `fut` once (pinned on the stack, with a no-op waker) and returns its output.
///
/// # Panics
///
/// If `fut` is not ready on its first poll.
#[inline]
#[track_caller]
pub fn ready_now<F: IntoFuture>(fut: F) -> F::Output {
    match poll_noop(pin!(fut.into_future())) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("future was expected to be ready on its first poll"),
    }
}

/// A waker target that counts how many times it was woken.
///
/// Its [`waker`](Self::waker) clones by copying a pointer and wakes with one relaxed
/// `fetch_add`, and all its wakers [`will_wake`](Waker::will_wake) each other.
///
/// ```
/// use core::sync::atomic::Ordering;
/// use deferred_benches::WakeCounter;
///
/// static WAKES: WakeCounter = WakeCounter::new();
/// let waker = WAKES.waker();
/// waker.wake_by_ref();
/// waker.clone().wake();
/// assert_eq!(WAKES.take(), 2);
/// assert_eq!(WAKES.take(), 0);
/// ```
#[derive(Debug, Default)]
pub struct WakeCounter {
    wakes: AtomicUsize,
}

impl WakeCounter {
    const VTABLE: RawWakerVTable = RawWakerVTable::new(
        Self::raw_clone,
        Self::raw_wake,
        Self::raw_wake,
        Self::raw_drop,
    );

    /// A counter at zero.
    pub const fn new() -> Self {
        WakeCounter {
            wakes: AtomicUsize::new(0),
        }
    }

    /// A waker that adds one to this counter each time it is woken.
    pub fn waker(&'static self) -> Waker {
        let data: *const Self = self;
        // SAFETY: the vtable's functions only read `data` as a `&'static WakeCounter`,
        // which it is, and `WakeCounter` is `Sync`, so the waker may be sent anywhere.
        unsafe { Waker::from_raw(RawWaker::new(data.cast(), &Self::VTABLE)) }
    }

    /// Returns the number of wake-ups so far and resets the count to zero.
    pub fn take(&self) -> usize {
        self.wakes.swap(0, Ordering::Relaxed)
    }

    /// # Safety
    ///
    /// `data` comes from [`WakeCounter::waker`]: a `&'static WakeCounter`.
    unsafe fn raw_clone(data: *const ()) -> RawWaker {
        RawWaker::new(data, &Self::VTABLE)
    }

    /// # Safety
    ///
    /// `data` comes from [`WakeCounter::waker`]: a `&'static WakeCounter`.
    unsafe fn raw_wake(data: *const ()) {
        // SAFETY: per this function's contract `data` is a live `&'static WakeCounter`.
        let this = unsafe { &*data.cast::<Self>() };
        this.wakes.fetch_add(1, Ordering::Relaxed);
    }

    /// Nothing to release: the counter is `'static`.
    unsafe fn raw_drop(_: *const ()) {}
}

/// A vector of futures (or any values) that stay pinned where they were pushed.
///
/// It never grows past the capacity it was made with (pushing past it panics instead of
/// moving the elements), hands elements out only as `Pin<&mut F>`, and drops them in
/// place. [`recycle`](Self::recycle) empties it and reuses its allocation for another
/// element type of the same layout, typically the same future type borrowing a
/// different (fresh) cell, so a benchmark loop allocates its storage once.
///
/// ```
/// use deferred_benches::{poll_noop, PinVec};
///
/// let mut futs = PinVec::with_capacity(2);
/// futs.push(core::future::ready(1));
/// futs.push(core::future::ready(2));
/// assert!(poll_noop(futs.get(1)).is_ready());
/// let spare: PinVec<()> = futs.recycle();
/// assert_eq!(spare.len(), 0);
/// ```
#[derive(Debug)]
pub struct PinVec<F> {
    items: Vec<F>,
}

impl<F> PinVec<F> {
    /// An empty vector with room for `capacity` elements.
    pub fn with_capacity(capacity: usize) -> Self {
        PinVec {
            items: Vec::with_capacity(capacity),
        }
    }

    /// How many elements it holds.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether it holds no element.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// How many elements it can hold.
    pub fn capacity(&self) -> usize {
        self.items.capacity()
    }

    /// Appends `item`.
    ///
    /// # Panics
    ///
    /// If the vector is full: growing would move the pinned elements.
    #[inline]
    #[track_caller]
    pub fn push(&mut self, item: F) {
        assert!(
            self.items.len() < self.items.capacity(),
            "PinVec is full (capacity {})",
            self.items.capacity()
        );
        self.items.push(item);
    }

    /// The element at `index`, pinned.
    ///
    /// # Panics
    ///
    /// If `index` is out of bounds.
    #[inline]
    #[track_caller]
    pub fn get(&mut self, index: usize) -> Pin<&mut F> {
        // SAFETY: elements are never moved once pushed: the buffer never reallocates
        // (`push` refuses to grow it), nothing moves an element out, and elements are
        // dropped in place (`clear`, `recycle` and `Vec`'s own drop) before the buffer
        // is freed or reused.
        unsafe { Pin::new_unchecked(&mut self.items[index]) }
    }

    /// Drops every element in place, keeping the allocation.
    pub fn clear(&mut self) {
        self.items.clear();
    }

    /// Drops every element in place and returns the emptied storage as a vector of `G`.
    ///
    /// Where `G` has the layout of `F` (the same future type with another lifetime, say)
    /// the allocation and its capacity are kept; otherwise this allocates anew.
    pub fn recycle<G>(mut self) -> PinVec<G> {
        self.items.clear();
        // In-place collection: an empty source, so the closure never runs, and the
        // buffer is reused when the layouts match.
        let items = self
            .items
            .into_iter()
            .map(|_| -> G { unreachable!("the vector was cleared") })
            .collect();
        PinVec { items }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::{cell::Cell, future::pending, ptr};

    #[test]
    fn recycle_keeps_the_allocation() {
        struct Borrowing<'a>(&'a Cell<u32>, [u64; 3]);
        impl Drop for Borrowing<'_> {
            fn drop(&mut self) {
                self.0
                    .set(self.0.get() + 1 + u32::from(self.1 == [u64::MAX; 3]));
            }
        }

        let mut spare: PinVec<Borrowing<'static>> = PinVec::with_capacity(16);
        let buf = spare.items.as_ptr();
        for round in 0..3 {
            let drops = Cell::new(0);
            let mut v: PinVec<Borrowing<'_>> = spare.recycle();
            assert_eq!(v.capacity(), 16);
            assert!(ptr::eq(v.items.as_ptr().cast(), buf));
            for _ in 0..16 {
                v.push(Borrowing(&drops, [round; 3]));
            }
            assert_eq!(v.len(), 16);
            spare = v.recycle();
            assert_eq!(drops.get(), 16);
        }
        assert!(spare.is_empty());
    }

    #[test]
    #[should_panic(expected = "PinVec is full")]
    fn push_past_capacity_panics() {
        let mut v = PinVec::with_capacity(1);
        v.push(1_u64);
        v.push(2_u64);
    }

    #[test]
    fn counting_waker_counts() {
        static WAKES: WakeCounter = WakeCounter::new();
        let w = WAKES.waker();
        assert!(w.will_wake(&w.clone()));
        w.wake_by_ref();
        let clone = w.clone();
        clone.wake();
        drop(w.clone());
        assert_eq!(WAKES.take(), 2);
    }

    #[test]
    #[should_panic(expected = "ready on its first poll")]
    fn ready_now_panics_when_pending() {
        ready_now(pending::<()>());
    }
}
