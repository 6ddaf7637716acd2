#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

mod counted;
mod gate;
#[cfg(feature = "futures")]
pub mod loom;
mod panic;
#[cfg(feature = "futures")]
mod poll;
#[cfg(all(feature = "redis", unix))]
pub mod redis;

pub use counted::{hashes, Counted};
pub use gate::Gate;
pub use panic::{quiet_panics_containing, quiet_panics_of, quiet_panics_saying};
#[cfg(feature = "futures")]
pub use poll::{poll_once, poll_with};

/// A hasher that picks the same shards on every run: `RandomState` would put a key in
/// another shard (another loom object) each time, and a loom model must be deterministic.
///
/// ```
/// use std::hash::BuildHasher;
/// use deferred_test_support::FixedHasher;
///
/// assert_eq!(FixedHasher::default().hash_one(7), FixedHasher::default().hash_one(7));
/// ```
pub type FixedHasher = core::hash::BuildHasherDefault<std::collections::hash_map::DefaultHasher>;
