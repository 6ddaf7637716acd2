#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![allow(clippy::std_instead_of_core, clippy::alloc_instead_of_core)] // a `std` crate

mod backplane;
mod codec;
mod deadline;
mod error;
mod expiry;
mod hybrid;
mod key;
mod loading;
mod local;
mod stats;
mod wire;

#[cfg(feature = "serde")]
pub use codec::Postcard;
pub use codec::{Codec, CodecError, Decimal, Raw, Utf8};
pub use deferred_cache::LoadError;
pub use error::{BuildError, L2Error};
pub use expiry::TtlPolicy;
pub use hybrid::{Builder, HybridCache};
pub use key::{RedisKey, WriteKey};
pub use loading::HybridLoadingCache;
pub use stats::HybridStats;
