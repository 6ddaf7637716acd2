//! The shard locks, chosen at compile time, as the map's shard lock is (see
//! `deferred_map`'s `lock.rs` for the measurement of issue #13): `std::sync::Mutex` and
//! `RwLock`, futex locks, behind `SpinMutex`'s and `SpinRwLock`'s closure APIs; under
//! `--cfg loom`, `deferred_core`'s spin locks, which the loom models see through their gate.
//! The policy's shards take the mutex; the store's tables (`store`) the read-write lock.

#[cfg(loom)]
pub(crate) use deferred_core::sync::{SpinMutex as ShardMutex, SpinRwLock as ShardLock};

#[cfg(not(loom))]
pub(crate) use self::futex::{ShardLock, ShardMutex};

#[cfg(not(loom))]
mod futex {
    use std::sync::{Mutex, PoisonError, RwLock};

    /// `std::sync::Mutex` with `SpinMutex`'s API: reached through a closure, and not
    /// poisoned by a panicking closure (as `SpinMutex` is not).
    #[derive(Debug, Default)]
    pub(crate) struct ShardMutex<T>(Mutex<T>);

    impl<T> ShardMutex<T> {
        pub(crate) const fn new(value: T) -> Self {
            ShardMutex(Mutex::new(value))
        }

        #[inline]
        pub(crate) fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
            f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner))
        }
    }

    /// `std::sync::RwLock` with `SpinRwLock`'s API: reached through closures, so no guard
    /// outlives a call, and not poisoned by a panicking closure (no user code runs under
    /// it: the store drops what it takes out after the lock is released).
    #[derive(Debug, Default)]
    pub(crate) struct ShardLock<T>(RwLock<T>);

    // Unused until the cache moves onto `Store` (docs/value-slots.md, step 2).
    #[allow(dead_code)]
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
