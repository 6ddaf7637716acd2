//! The atomics and locks of this crate, through which loom sees them under `--cfg loom`.

#[cfg(not(loom))]
pub(crate) use std::sync::{
    atomic::{AtomicU64, Ordering},
    Mutex, MutexGuard,
};

#[cfg(loom)]
pub(crate) use loom::sync::{
    atomic::{AtomicU64, Ordering},
    Mutex, MutexGuard,
};

/// Locks `mutex`, going on past poisoning: every critical section in this crate leaves its
/// data consistent before it runs user code (it runs none), so a poisoned lock only means
/// some thread panicked elsewhere while holding it.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
