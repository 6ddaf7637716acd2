//! The one place that chooses between `loom`'s instrumented primitives and the real ones.
//!
//! Everything in this crate that is shared between threads goes through this module, so
//! that `cargo xtask test-loom` (which builds with `--cfg loom`) explores every interleaving
//! of every atomic access and checks every `UnsafeCell` access for data races.

#[cfg(loom)]
pub(crate) use loom::{
    cell::UnsafeCell,
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
};

#[cfg(not(loom))]
pub(crate) use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

#[cfg(all(feature = "std", loom))]
pub(crate) use loom::thread;
#[cfg(all(feature = "std", not(loom)))]
pub(crate) use std::thread;

/// `core::cell::UnsafeCell` with loom's closure-based API, so that the same code compiles
/// under both configurations.
#[cfg(not(loom))]
#[derive(Debug)]
#[repr(transparent)]
pub(crate) struct UnsafeCell<T>(core::cell::UnsafeCell<T>);

#[cfg(not(loom))]
impl<T> UnsafeCell<T> {
    #[inline(always)]
    pub(crate) const fn new(value: T) -> Self {
        Self(core::cell::UnsafeCell::new(value))
    }

    /// Runs `f` with a shared raw pointer to the contents.
    #[inline(always)]
    pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }

    /// Runs `f` with a unique raw pointer to the contents.
    #[inline(always)]
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}

/// Waits a little before the caller retries a contended lock.
///
/// The only lock in this crate (the `LOCKED` bit of a cell's state word) is held for a
/// constant number of pointer writes and never around user code, so a contender waits at
/// most for that. On `std`, `Backoff::snooze` spins a few rounds and then yields the thread
/// to the OS, so a holder that was preempted gets to run: the spin is bounded. Under loom it
/// yields so that the model checker schedules the holder.
#[inline]
pub(crate) fn backoff(backoff: &crossbeam_utils::Backoff) {
    #[cfg(loom)]
    {
        let _ = backoff;
        loom::thread::yield_now();
    }
    #[cfg(not(loom))]
    backoff.snooze();
}

/// `atomic.store(value, order)`, for a word that other threads may be changing with
/// read-modify-writes that leave it as it is (a losing completer's `fetch_or(WON)`).
///
/// A plain store is correct there: an RMW always reads the latest value in the modification
/// order, so one ordered after the store reads and keeps the stored value. loom 0.7 does not
/// model that rule for stores (tokio-rs/loom#254, fix pending in #391) and lets the store
/// slip between an RMW's read and its write, losing it. Under loom we therefore use `swap`,
/// whose effect on the word is the same and which loom models correctly.
#[inline(always)]
pub(crate) fn store_over_rmws(atomic: &AtomicUsize, value: usize, order: Ordering) {
    #[cfg(loom)]
    {
        atomic.swap(value, order);
    }
    #[cfg(not(loom))]
    atomic.store(value, order);
}

/// Re-reads `atomic` after a backoff, in a spin wait.
///
/// Hardware makes every store visible to a spinning reader eventually; loom cannot model
/// "eventually" and lets a Relaxed load in a loop read the same stale value forever, which
/// turns every spin into an unbounded branch. Under loom the re-read is a read-modify-write
/// that changes nothing (`fetch_or(0)`), which reads the latest value, as the spin would
/// on real hardware after a while.
#[inline(always)]
pub(crate) fn spin_load(atomic: &AtomicUsize) -> usize {
    #[cfg(loom)]
    {
        atomic.fetch_or(0, Ordering::Relaxed)
    }
    #[cfg(not(loom))]
    atomic.load(Ordering::Relaxed)
}
