#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![allow(clippy::std_instead_of_core, clippy::alloc_instead_of_core)] // a `std` crate

mod blocking;
mod bounds;
mod builder;
mod cache;
mod error;
mod get;
mod listener;
mod loading;
mod lock;
mod loom;
mod policy;
mod reentrancy;
mod stats;
mod stored;
// Step 1 of docs/value-slots.md: the store and its tests and models, unused by the cache
// until step 2 moves the cache onto it.
#[allow(dead_code)]
mod store;
mod trace;

pub use bounds::{Key, Shared, Value};
pub use builder::{BuildError, Builder};
pub use cache::{Cache, Iter};
pub use error::LoadError;
pub use get::{GetWith, Loader, OptionallyGetWith, Source, WithKey, WithSource};
pub use listener::RemovalCause;
pub use loading::{Get, LoadingCache, SharedLoader};
pub use stats::Stats;
