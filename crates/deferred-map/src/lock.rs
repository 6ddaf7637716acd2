//! The shard lock, chosen at compile time (issue #13, point B: measure the core spin lock
//! against `std`'s futex `RwLock` under oversubscription).
//!
//! Under `--cfg loom`, and without `std`, it is always `deferred_core`'s `SpinRwLock`, which
//! the loom models see through its gate. The `std-shard-lock` feature (an experiment, for
//! the benches only) makes it `std::sync::RwLock` behind the same closure API.

#[cfg(any(loom, not(feature = "std-shard-lock")))]
pub(crate) use deferred_core::sync::SpinRwLock as ShardLock;

#[cfg(all(not(loom), feature = "std-shard-lock"))]
pub(crate) use self::futex::ShardLock;

#[cfg(all(not(loom), feature = "std-shard-lock"))]
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
