#![doc = include_str!("../README.md")]
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

mod get;
mod map;

pub use deferred_core::{Error, Lazy};
pub use get::Get;
pub use map::{DefaultHashBuilder, DeferredMap};

/// A shared handle to the cell at a key: cheap to clone (one `Arc`), derefs to
/// [`Deferred<V, E>`](deferred_core::Deferred) for probes and completion, and can carry the
/// computation that will complete it (driven by whoever awaits it).
///
/// ```
/// use deferred_map::Cell;
/// let cell: Cell<u8> = Cell::pending();
/// cell.succeed(1).unwrap(); // `Deferred::succeed`, through `Deref`
/// assert_eq!(cell.get(), Some(&1));
/// ```
pub type Cell<V, E = core::convert::Infallible> = Lazy<V, E>;
