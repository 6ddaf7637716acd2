//! The shard lock, chosen at compile time.
//!
//! With `std` it is `std::sync::RwLock` (a futex lock: a contender that finds the holder
//! preempted sleeps instead of spinning and yielding), behind `SpinRwLock`'s closure API.
//! Issue #13 measured it against `deferred_core::sync::SpinRwLock` in `cache_mixed` on a
//! 2-core machine with 16 and 64 threads: the futex lock had the shorter p99.99 in both
//! alternated pairs of runs, and the single-thread hit was the same within the noise.
//!
//! Without `std` there is no futex, and under `--cfg loom` the models must see the lock
//! through `SpinRwLock`'s gate: both keep `deferred_core`'s `SpinRwLock`.

#[cfg(any(loom, not(feature = "std")))]
pub(crate) use deferred_core::sync::SpinRwLock as ShardLock;

#[cfg(all(not(loom), feature = "std"))]
pub(crate) use self::futex::ShardLock;

#[cfg(all(not(loom), feature = "std"))]
mod futex {
    use std::sync::{PoisonError, RwLock};

    /// `std::sync::RwLock` with `SpinRwLock`'s API: reached through closures, so no guard
    /// outlives a call, and not poisoned by a panicking closure (as `SpinRwLock` is not:
    /// the map's books are exact before any user code runs under the lock).
    #[derive(Debug, Default)]
    pub(crate) struct ShardLock<T>(RwLock<T>);

    impl<T> ShardLock<T> {
        pub(crate) const fn new(value: T) -> Self {
            ShardLock(RwLock::new(value))
        }

        #[inline]
        pub(crate) fn read<R>(&self, f: impl FnOnce(&T) -> R) -> R {
            f(&self.0.read().unwrap_or_else(PoisonError::into_inner))
        }

        #[inline]
        pub(crate) fn write<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
            f(&mut self.0.write().unwrap_or_else(PoisonError::into_inner))
        }
    }
}
