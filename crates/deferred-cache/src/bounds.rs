//! The bounds a cache puts on its type parameters, each named once: `Cache<K, V, E, S>`'s
//! methods need `K: Key, V: Value, E: Shared, S: BuildHasher`. Every trait here is
//! implemented for every type that meets its bounds, so a user never implements one.

use std::hash::Hash;

/// A cache key: `Hash + Eq + Clone` (a key is cloned into the entry it loads). Implemented
/// for every type that is, so any such type is a key.
///
/// ```
/// fn key<K: deferred_cache::Key>() {}
/// key::<String>();
/// key::<(u64, &str)>();
/// ```
pub trait Key: Hash + Eq + Clone {}

impl<T: Hash + Eq + Clone> Key for T {}

/// What a cache hands from the task that loads to the tasks that wait and keeps beyond any
/// one call: `Send + Sync + 'static`. The loaders' error type `E` is one (waiters share it
/// as an `Arc<E>`), and every [`Value`] is. Implemented for every type that is.
///
/// ```
/// fn shared<T: deferred_cache::Shared>() {}
/// shared::<std::io::Error>();
/// shared::<std::sync::Arc<str>>();
/// ```
pub trait Shared: Send + Sync + 'static {}

impl<T: Send + Sync + 'static> Shared for T {}

/// A cached value: `Clone` and [`Shared`] (`Send + Sync + 'static`), since every reader gets
/// its own clone (wrap a large value in an `Arc`). Implemented for every type that is.
///
/// ```
/// fn value<V: deferred_cache::Value>() {}
/// value::<String>();
/// value::<std::sync::Arc<Vec<u8>>>();
/// ```
pub trait Value: Clone + Shared {}

impl<T: Clone + Shared> Value for T {}
