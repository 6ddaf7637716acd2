//! The one place that chooses between `loom`'s instrumented primitives and the real ones.
//!
//! Everything in this crate that is shared between threads goes through this module, so
//! that `cargo xtask test-loom` (which builds with `--cfg loom`) explores every interleaving
//! of every atomic access and checks every `UnsafeCell` access for data races.

#[cfg(loom)]
pub(crate) use loom::{
    cell::UnsafeCell,
    sync::atomic::{AtomicUsize, Ordering},
};

#[cfg(not(loom))]
pub(crate) use core::sync::atomic::{AtomicUsize, Ordering};

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
