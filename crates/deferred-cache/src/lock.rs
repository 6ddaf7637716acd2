//! The store's shard lock, chosen at compile time, as the map's shard lock is (see
//! `deferred_map`'s `lock.rs` for the measurement of issue #13): `std::sync::RwLock`, a
//! futex lock, behind `SpinRwLock`'s closure API; under `--cfg loom`, `deferred_core`'s
//! `SpinRwLock`, which the loom models see through its gate.

#[cfg(loom)]
pub(crate) use deferred_core::sync::SpinRwLock as ShardLock;

#[cfg(not(loom))]
pub(crate) use self::futex::ShardLock;

#[cfg(not(loom))]
mod futex {
    use std::sync::{PoisonError, RwLock};

    /// `std::sync::RwLock` with `SpinRwLock`'s API: reached through closures, so no guard
    /// outlives a call, and not poisoned by a panicking closure (no user code runs under
    /// it but keys' `Eq` and `Hash` and values' `Clone`; the store drops what it takes out
    /// after the lock is released).
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

        /// Whether the lock is held (read or write), for tests that check no user code
        /// runs under it (from the holder's thread: `try_write` never blocks).
        #[cfg(test)]
        pub(crate) fn is_held(&self) -> bool {
            matches!(self.0.try_write(), Err(std::sync::TryLockError::WouldBlock))
        }
    }
}
