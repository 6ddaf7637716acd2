//! The bounds an expiring cache puts on its type parameters, each named once:
//! `ExpiringCache<K, V, E, S, C>`'s methods need `K: ExpiringKey, V: Value, E: Shared,
//! S: ExpiringHasher, C: Clock`. A refresh runs as a task apart from every caller, holding
//! the cache's core, so keys and the hasher must be [`Shared`] too, beyond what
//! [`deferred_cache`]'s bounds ask. Every trait here is implemented for every type that
//! meets its bounds, so a user never implements one.

use std::hash::BuildHasher;

use deferred_cache::{Key, Shared};

/// A key of an expiring cache: a [`Key`] (`Hash + Eq + Clone`) that is also [`Shared`]
/// (`Send + Sync + 'static`), since a refresh task carries it. Implemented for every type
/// that is both.
///
/// ```
/// fn key<K: deferred_expiring::ExpiringKey>() {}
/// key::<String>();
/// key::<(u64, &'static str)>();
/// ```
pub trait ExpiringKey: Key + Shared {}

impl<T: Key + Shared> ExpiringKey for T {}

/// The hasher of an expiring cache: a [`BuildHasher`] that is also [`Shared`]
/// (`Send + Sync + 'static`), since a refresh task reaches the inner cache through it.
/// Implemented for every type that is both.
///
/// ```
/// fn hasher<S: deferred_expiring::ExpiringHasher>() {}
/// hasher::<std::collections::hash_map::RandomState>();
/// hasher::<std::hash::BuildHasherDefault<std::collections::hash_map::DefaultHasher>>();
/// ```
pub trait ExpiringHasher: BuildHasher + Shared {}

impl<T: BuildHasher + Shared> ExpiringHasher for T {}
