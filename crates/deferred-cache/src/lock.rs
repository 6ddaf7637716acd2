//! The policy shard lock, chosen at compile time, as the map's shard lock is (see
//! `deferred_map`'s `lock.rs` for the measurement of issue #13): `std::sync::Mutex`, a
//! futex lock, behind `SpinMutex`'s closure API; under `--cfg loom`, `deferred_core`'s
//! `SpinMutex`, which the loom models see through its gate.

#[cfg(loom)]
pub(crate) use deferred_core::sync::SpinMutex as ShardMutex;

#[cfg(not(loom))]
pub(crate) use self::futex::ShardMutex;

#[cfg(not(loom))]
mod futex {
    use std::sync::{Mutex, PoisonError};

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
}
