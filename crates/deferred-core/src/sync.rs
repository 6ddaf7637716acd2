//! A small lock for short critical sections, shared with the layers above (`deferred-map`
//! keeps its shards behind it), so that they need no `unsafe` and no `std`.

use core::fmt;

use crossbeam_utils::Backoff;

use crate::loom::{AtomicUsize, Ordering::*, UnsafeCell};

/// A spin lock for critical sections of a few instructions (a hash-table probe), usable
/// without `std`.
///
/// The value is reached through a closure ([`with`](Self::with)), so no guard can be held
/// across an `.await` or leak. A contender spins a few rounds and then, on `std`, yields its
/// thread ([`crossbeam_utils::Backoff::snooze`]): the spinning is bounded. Never run user
/// code that can block or take long inside `with`. If the closure panics, the lock is
/// released (it is not poisoned: keep the value consistent at every step, as the hash
/// tables here do).
///
/// ```
/// use deferred_core::sync::SpinMutex;
/// let counter = SpinMutex::new(0);
/// counter.with(|n| *n += 1);
/// assert_eq!(counter.with(|n| *n), 1);
/// ```
pub struct SpinMutex<T> {
    locked: AtomicUsize,
    value: UnsafeCell<T>,
    /// Under loom the lock is loom's own mutex (see `with`).
    #[cfg(loom)]
    model: loom::sync::Mutex<()>,
}

// SAFETY: the lock hands out `&mut T` to one thread at a time, so sharing the mutex moves
// access to `T` between threads: `T: Send` is what that needs (as for `std::sync::Mutex`).
unsafe impl<T: Send> Sync for SpinMutex<T> {}
// SAFETY: owning the mutex is owning the `T`.
unsafe impl<T: Send> Send for SpinMutex<T> {}

impl<T> SpinMutex<T> {
    /// A new, unlocked mutex holding `value`.
    ///
    /// ```
    /// use deferred_core::sync::SpinMutex;
    /// static NAMES: SpinMutex<Vec<&str>> = SpinMutex::new(Vec::new());
    /// NAMES.with(|v| v.push("a"));
    /// ```
    #[cfg(not(loom))]
    pub const fn new(value: T) -> Self {
        SpinMutex {
            locked: AtomicUsize::new(0),
            value: UnsafeCell::new(value),
        }
    }

    /// A new, unlocked mutex holding `value` (loom's atomics are not `const`).
    #[cfg(loom)]
    pub fn new(value: T) -> Self {
        SpinMutex {
            locked: AtomicUsize::new(0),
            value: UnsafeCell::new(value),
            model: loom::sync::Mutex::new(()),
        }
    }

    /// Runs `f` with exclusive access to the value, waiting for the lock if needed.
    ///
    /// ```
    /// use deferred_core::sync::SpinMutex;
    /// let m = SpinMutex::new(vec![1]);
    /// let len = m.with(|v| {
    ///     v.push(2);
    ///     v.len()
    /// });
    /// assert_eq!(len, 2);
    /// ```
    #[inline]
    pub fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        // Under loom, the layers above are modelled with loom's blocking mutex in front of
        // the spin lock: a spin wait is an unbounded branch for loom (it cannot model "the
        // holder eventually runs"), which drowns models of the protocols built on top. The
        // spin lock itself is then uncontended but still taken, so its accesses to the value
        // are still checked.
        #[cfg(loom)]
        let _model = self.model.lock().unwrap_or_else(|e| e.into_inner());
        self.acquire();
        let _unlock = Unlock(&self.locked);
        // SAFETY: `acquire` gave this thread the lock, held until `_unlock` drops (also on
        // unwinding), so no other `&mut T` exists meanwhile.
        self.value.with_mut(|value| f(unsafe { &mut *value }))
    }

    /// Mutable access without locking: `&mut self` proves no one else can lock.
    ///
    /// ```
    /// use deferred_core::sync::SpinMutex;
    /// let mut m = SpinMutex::new(1);
    /// *m.get_mut() += 1;
    /// assert_eq!(m.with(|n| *n), 2);
    /// ```
    pub fn get_mut(&mut self) -> &mut T {
        // SAFETY: `&mut self` excludes every other access.
        self.value.with_mut(|value| unsafe { &mut *value })
    }

    #[inline]
    fn acquire(&self) {
        // Acquire: pairs with the Release in `Unlock::drop`, so the last holder's writes to
        // the value are visible.
        if self.locked.compare_exchange(0, 1, Acquire, Relaxed).is_ok() {
            return;
        }
        let backoff = Backoff::new();
        loop {
            crate::loom::backoff(&backoff);
            if crate::loom::spin_load(&self.locked) == 0
                && self.locked.compare_exchange(0, 1, Acquire, Relaxed).is_ok()
            {
                return;
            }
        }
    }
}

struct Unlock<'a>(&'a AtomicUsize);

impl Drop for Unlock<'_> {
    #[inline]
    fn drop(&mut self) {
        // Release: pairs with the Acquire in `acquire`.
        self.0.store(0, Release);
    }
}

impl<T: Default> Default for SpinMutex<T> {
    fn default() -> Self {
        Self::new(T::default())
    }
}

impl<T> fmt::Debug for SpinMutex<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpinMutex")
            .field("locked", &(self.locked.load(Relaxed) != 0))
            .finish_non_exhaustive()
    }
}
