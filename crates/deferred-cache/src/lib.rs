#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![allow(clippy::std_instead_of_core, clippy::alloc_instead_of_core)] // a `std` crate

mod blocking;
mod books;
mod bounds;
mod builder;
mod cache;
mod error;
mod get;
mod listener;
mod loading;
mod lock;
mod loom;
mod reentrancy;
mod stats;
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
