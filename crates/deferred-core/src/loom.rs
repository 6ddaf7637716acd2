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

#[cfg(all(not(loom), not(feature = "portable-atomic")))]
pub(crate) use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
// Cores without compare-and-swap (`thumbv6m-none-eabi`) have no read-modify-writes in
// `core`; portable-atomic makes them (in a critical section, or with interrupts masked) and
// is the native atomics where the target has them. `Ordering` is `core`'s own type.
#[cfg(all(not(loom), feature = "portable-atomic"))]
pub(crate) use portable_atomic::{AtomicBool, AtomicUsize, Ordering};

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

/// Where the contenders of one spin lock wait for it.
///
/// On real hardware (and outside loom) a contender spins with backoff and then yields its
/// thread ([`backoff`]): the lock is held for O(1) pointer writes, the holder runs, and the
/// contender gets in. loom assumes no fairness: with two contenders yielding to each other
/// it explores schedules where the preempted holder never runs again, an endless path that
/// says nothing about the protocol and exhausts loom's branch limit (at three preemptions a
/// model with three threads reaches it). Under loom a contender therefore blocks until the
/// lock is released, which loom schedules fairly; every access to the lock word itself (the
/// CAS that takes it, the one that releases it) is still the real one.
#[cfg(not(loom))]
#[derive(Debug, Default)]
pub(crate) struct LockWaits;

#[cfg(not(loom))]
impl LockWaits {
    pub(crate) const fn new() -> Self {
        LockWaits
    }

    /// Waits a little: spins, then yields the thread (`std`). The caller re-reads the lock.
    #[inline]
    pub(crate) fn contended(
        &self,
        backoff: &crossbeam_utils::Backoff,
        _is_locked: impl Fn() -> bool,
    ) {
        backoff.snooze();
    }

    /// The lock was released.
    #[inline(always)]
    pub(crate) fn released(&self) {}
}

/// See the non-loom `LockWaits`.
#[cfg(loom)]
#[derive(Debug, Default)]
pub(crate) struct LockWaits {
    mutex: loom::sync::Mutex<()>,
    condvar: loom::sync::Condvar,
    /// How many contenders wait. A plain (not loom) atomic: loom runs one thread at a time,
    /// and this is bookkeeping of the model, not part of the protocol it checks.
    waiting: core::sync::atomic::AtomicUsize,
}

#[cfg(loom)]
impl LockWaits {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Blocks while `is_locked` (which must read the latest value of the lock word).
    pub(crate) fn contended(
        &self,
        _backoff: &crossbeam_utils::Backoff,
        is_locked: impl Fn() -> bool,
    ) {
        use core::sync::atomic::Ordering::SeqCst;
        let mut guard = self.mutex.lock().unwrap();
        // Counted before the lock word is read, and the releaser reads the count after it
        // cleared the word: either the check below sees the lock free, or the releaser sees
        // this contender and notifies it (under the mutex, so not before it waits).
        self.waiting.fetch_add(1, SeqCst);
        while is_locked() {
            guard = self.condvar.wait(guard).unwrap();
        }
        self.waiting.fetch_sub(1, SeqCst);
    }

    /// The lock was released: wake the contenders, if any.
    pub(crate) fn released(&self) {
        if self.waiting.load(core::sync::atomic::Ordering::SeqCst) > 0 {
            let _guard = self.mutex.lock().unwrap();
            self.condvar.notify_all();
        }
    }
}

/// Waits a little before the caller retries a short spin (an attacher of a `Lazy`
/// computation waiting for another attacher, a hold of a few instructions). On `std`,
/// `Backoff::snooze` spins a few rounds and then yields the thread to the OS, so a holder
/// that was preempted gets to run: the spin is bounded. Under loom it yields so that the model
/// checker schedules the holder. The locks wait through [`LockWaits`] instead.
#[cfg(feature = "alloc")]
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
