#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![allow(clippy::std_instead_of_core, clippy::alloc_instead_of_core)] // a `std` crate

// Under `--cfg loom` (`cargo xtask test-loom`) the crate is its watchdog's handshakes alone
// (`epochs`, with their models): redis-rs does not build there (tokio leaves out `net`).
#[cfg(not(loom))]
mod backplane;
#[cfg(not(loom))]
mod codec;
#[cfg(not(loom))]
mod deadline;
// Under `--cfg loom` only its models use it.
#[cfg_attr(loom, allow(dead_code))]
mod epochs;
#[cfg(not(loom))]
mod error;
#[cfg(not(loom))]
mod expiry;
#[cfg(not(loom))]
mod hybrid;
#[cfg(not(loom))]
mod key;
#[cfg(not(loom))]
mod loading;
#[cfg(not(loom))]
mod local;
mod loom;
#[cfg(not(loom))]
mod stats;
#[cfg(not(loom))]
mod wire;

#[cfg(all(feature = "serde", not(loom)))]
pub use codec::Postcard;
#[cfg(not(loom))]
pub use {
    codec::{Codec, CodecError, Decimal, Raw, Utf8},
    deferred_cache::LoadError,
    error::{BuildError, L2Error},
    expiry::TtlPolicy,
    hybrid::{Builder, HybridCache},
    key::{RedisKey, WriteKey},
    loading::HybridLoadingCache,
    stats::HybridStats,
};
