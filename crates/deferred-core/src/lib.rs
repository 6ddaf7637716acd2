#![doc = include_str!("../README.md")]
#![no_std]
#![cfg_attr(docsrs, feature(doc_auto_cfg))]

#[cfg(feature = "alloc")]
extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

#[cfg(feature = "alloc")]
mod callback;
mod cell;
mod claim;
mod error;
#[cfg(feature = "alloc")]
mod lazy;
mod list;
pub(crate) mod loom;
#[cfg(feature = "alloc")]
mod pair;
pub mod sync;
mod wait;
mod waiter;

#[cfg(feature = "std")]
mod blocking;

#[cfg(feature = "alloc")]
pub use callback::CallbackHandle;
pub use cell::Deferred;
pub use claim::{Claim, ClaimWait, Closed, GetOrInit, Producer};
pub use error::Error;
#[cfg(feature = "alloc")]
pub use lazy::{BoxFuture, BoxInit, Lazy, LazyWait, OwnedLazyWait, WeakLazy};
#[cfg(feature = "alloc")]
pub use pair::{Awaiter, Completer};
#[cfg(feature = "alloc")]
pub use wait::OwnedWait;
pub use wait::{Wait, WaitCloned};
