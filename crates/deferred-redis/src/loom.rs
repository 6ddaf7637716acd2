//! The atomics and threads of the watchdog's handshakes (`deadline`), through which loom sees
//! them under `--cfg loom` (`cargo xtask test-loom`), std's otherwise.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU64};
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicU64};
