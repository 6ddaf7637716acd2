//! The policy shard lock, chosen at compile time (issue #13, point B), as the map's is.
//!
//! Under `--cfg loom` it is always `deferred_core`'s `SpinMutex`, which the loom models see
//! through its gate. The `std-shard-lock` feature (an experiment, for the benches only)
//! makes it `std::sync::Mutex` behind the same closure API.

#[cfg(any(loom, not(feature = "std-shard-lock")))]
pub(crate) use deferred_core::sync::SpinMutex as ShardMutex;

#[cfg(all(not(loom), feature = "std-shard-lock"))]
pub(crate) use self::futex::ShardMutex;

#[cfg(all(not(loom), feature = "std-shard-lock"))]
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
