//! `LoadingCache`: a `Cache` with one loader for every key.

use std::{
    collections::hash_map::RandomState, convert::Infallible, fmt, future::Future,
    hash::BuildHasher, ops::Deref, sync::Arc,
};

use deferred_core::BoxFuture;

use crate::{get::Loader, Cache, GetWith, Key, Shared, Value};

type DynLoader<K, V, E> = Box<dyn Fn(&K) -> BoxFuture<V, E> + Send + Sync>;

/// A [`Cache`] with one loader for every key: `get(key)` loads what is missing. Everything
/// else comes from the `Cache` it derefs to.
///
/// ```
/// use deferred_cache::{Cache, LoadingCache};
/// # futures::executor::block_on(async {
/// let lengths: LoadingCache<String, usize> = Cache::builder()
///     .max_capacity(100)
///     .build_with_loader(|s: &String| {
///         let n = s.len();
///         async move { Ok(n) }
///     });
/// assert_eq!(lengths.get("four".to_string()).await, Ok(4));
/// assert_eq!(lengths.peek(&"four".to_string()), Some(4)); // through Deref to Cache
/// # });
/// ```
pub struct LoadingCache<K, V, E = Infallible, S = RandomState> {
    cache: Cache<K, V, E, S>,
    loader: Arc<DynLoader<K, V, E>>,
}

impl<K, V, E, S> Clone for LoadingCache<K, V, E, S> {
    /// Another handle to the same cache and loader: two reference-count increments. Share
    /// a loading cache between tasks this way (see [`Cache`]'s "Sharing a cache").
    ///
    /// ```
    /// # futures::executor::block_on(async {
    /// let cache = deferred_cache::Cache::<u8, u8>::builder()
    ///     .build_with_loader(|k: &u8| { let k = *k; async move { Ok(k + 1) } });
    /// let other = cache.clone();
    /// assert_eq!(other.get(1).await, Ok(2));
    /// assert_eq!(cache.peek(&1), Some(2)); // one cache, two handles
    /// # });
    /// ```
    fn clone(&self) -> Self {
        LoadingCache {
            cache: self.cache.clone(),
            loader: Arc::clone(&self.loader),
        }
    }
}

/// The cache-wide loader of a [`LoadingCache`], bound for one call.
pub struct SharedLoader<'a, K, V, E>(&'a DynLoader<K, V, E>);

impl<K, V: 'static, E: 'static> Loader<K, V, E> for SharedLoader<'_, K, V, E> {
    type Future = BoxFuture<V, E>;

    fn start(self, key: &K) -> BoxFuture<V, E> {
        (self.0)(key)
    }
}

impl<K, V, E> fmt::Debug for SharedLoader<'_, K, V, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SharedLoader")
    }
}

/// The future of [`LoadingCache::get`].
pub type Get<'a, K, V, E, S> = GetWith<'a, K, V, E, S, SharedLoader<'a, K, V, E>>;

impl<K, V, E, S> LoadingCache<K, V, E, S> {
    pub(crate) fn from_parts<F, Fut>(cache: Cache<K, V, E, S>, loader: F) -> Self
    where
        F: Fn(&K) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
    {
        LoadingCache {
            cache,
            loader: Arc::new(Box::new(move |key| Box::pin(loader(key)))),
        }
    }

    /// The underlying cache (also reached through `Deref`).
    ///
    /// ```
    /// let c = deferred_cache::Cache::<u8, u8>::builder()
    ///     .build_with_loader(|k: &u8| { let k = *k; async move { Ok(k) } });
    /// assert!(c.cache().is_empty());
    /// ```
    pub fn cache(&self) -> &Cache<K, V, E, S> {
        &self.cache
    }
}

impl<K: Key + Shared, V: Value, E: Shared, S: BuildHasher + Shared> LoadingCache<K, V, E, S> {
    /// The value at `key`, loaded with the cache's loader on a miss: one load however many
    /// callers miss at once. See [`Cache::get_with`] and [`GetWith`].
    ///
    /// ```
    /// # futures::executor::block_on(async {
    /// let cache = deferred_cache::Cache::<u32, String>::builder()
    ///     .build_with_loader(|id: &u32| {
    ///         let id = *id;
    ///         async move { Ok(format!("#{id}")) }
    ///     });
    /// let (a, b) = futures::join!(cache.get(1), cache.get(1));
    /// assert_eq!((a.unwrap(), b.unwrap()), ("#1".to_string(), "#1".to_string()));
    /// assert_eq!(cache.stats().loads_ok, 1);
    /// # });
    /// ```
    pub fn get(&self, key: K) -> Get<'_, K, V, E, S> {
        GetWith::new(&self.cache, key, SharedLoader(&self.loader))
    }
}

impl<K, V, E, S> Deref for LoadingCache<K, V, E, S> {
    type Target = Cache<K, V, E, S>;

    fn deref(&self) -> &Cache<K, V, E, S> {
        &self.cache
    }
}

impl<K, V, E, S> fmt::Debug for LoadingCache<K, V, E, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadingCache")
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}
