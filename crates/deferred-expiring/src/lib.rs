#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![allow(clippy::std_instead_of_core, clippy::alloc_instead_of_core)] // a `std` crate

mod blocking;
mod bounds;
mod builder;
mod cache;
mod clock;
mod expiring_ref;
mod expiry;
mod get;
mod insert;
mod loading;
mod loom;
mod timer;

pub use bounds::{ExpiringHasher, ExpiringKey};
pub use builder::{ExpiringBuildError, ExpiringBuilder};
pub use cache::{BoxLoad, ExpiringCache, ExpiringStats, Task, TICK};
pub use clock::{Clock, ManualClock, SystemClock};
pub use deferred_cache::{
    Iter, Key, LoadError, Loader, RemovalCause, Shared, Source, Stats, Value, WithKey,
};
pub use expiring_ref::{Expired, ExpiringRef, Use};
pub use expiry::Expiry;
pub use get::{Get, GetWith, OptionallyGetWith, SharedLoader, WithSource};
pub use loading::ExpiringLoadingCache;
pub use timer::{TimerHandle, TimerWheel};
