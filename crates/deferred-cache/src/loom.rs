//! The atomics of this crate, through which loom sees them under `--cfg loom` (the lock and
//! the cells come from `deferred-core`, which has its own shim; the one thread-local with
//! a protocol, in `reentrancy`, picks loom's itself).

#[cfg(not(loom))]
pub(crate) use core::sync::atomic::{AtomicU64, AtomicU8, Ordering};
#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicU64, AtomicU8, Ordering};
