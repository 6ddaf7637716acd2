#![doc = include_str!("../README.md")]
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

mod get;
mod lock;
mod map;

pub use deferred_core::{Error, Lazy};
pub use get::Get;
pub use map::{DefaultHashBuilder, DeferredMap};
