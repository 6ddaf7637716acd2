//! `ExpiringLoadingCache`: an `ExpiringCache` with one loader for every key.

use std::{collections::hash_map::RandomState, convert::Infallible, fmt, ops::Deref, sync::Arc};

use crate::{
    cache::DynLoader,
    get::{Get, GetWith, SharedLoader},
    Clock, ExpiringCache, ExpiringHasher, ExpiringKey, Shared, SystemClock, Value,
};

/// An [`ExpiringCache`] with one loader for every key: `get(key)` loads what is missing or
/// expired, and refresh-ahead reloads with it. Everything else comes from the
/// `ExpiringCache` it derefs to.
///
/// ```
/// use deferred_expiring::{ExpiringCache, ExpiringLoadingCache};
/// use std::time::Duration;
/// # futures::executor::block_on(async {
/// let lengths: ExpiringLoadingCache<String, usize> = ExpiringCache::builder()
///     .time_to_idle(Duration::from_secs(60))
///     .build_with_loader(|s: &String| {
///         let n = s.len();
///         async move { Ok(n) }
///     });
/// assert_eq!(lengths.get("four".to_string()).await, Ok(4));
/// assert_eq!(lengths.peek(&"four".to_string()), Some(4));
/// # });
/// ```
pub struct ExpiringLoadingCache<K, V, E = Infallible, S = RandomState, C = SystemClock> {
    cache: ExpiringCache<K, V, E, S, C>,
    loader: DynLoader<K, V, E>,
}

impl<K, V, E, S, C> ExpiringLoadingCache<K, V, E, S, C> {
    pub(crate) fn from_parts(
        cache: ExpiringCache<K, V, E, S, C>,
        loader: DynLoader<K, V, E>,
    ) -> Self {
        ExpiringLoadingCache { cache, loader }
    }
}

impl<K: ExpiringKey, V: Value, E: Shared, S: ExpiringHasher, C: Clock>
    ExpiringLoadingCache<K, V, E, S, C>
{
    /// The value at `key`, loaded with the cache's loader on a miss or after expiry (see
    /// [`ExpiringCache::get_with`]): a named future, [`Get`], with
    /// [`with_source`](GetWith::with_source). The loader is called only to start a load or
    /// a refresh: a hit calls nothing and allocates nothing (the loader's future is boxed
    /// on a miss).
    ///
    /// ```
    /// use deferred_expiring::Source;
    /// # futures::executor::block_on(async {
    /// let cache = deferred_expiring::ExpiringCache::builder()
    ///     .build_with_loader(|k: &u8| { let k = *k; async move { Ok::<_, String>(k + 1) } });
    /// assert_eq!(cache.get(1).await, Ok(2));
    /// assert_eq!(cache.get(1).with_source().await, (Ok(2), Source::Hit));
    /// # });
    /// ```
    pub fn get(&self, key: K) -> Get<'_, K, V, E, S, C> {
        GetWith::new(&self.cache, key, SharedLoader::new(&self.loader))
    }
}

impl<K, V, E, S, C> Clone for ExpiringLoadingCache<K, V, E, S, C> {
    /// Another handle on the same cache and loader (two `Arc` increments), as
    /// [`ExpiringCache`]'s `clone`: clones share entries, loads, timers and counters.
    ///
    /// ```
    /// # futures::executor::block_on(async {
    /// let cache = deferred_expiring::ExpiringCache::builder()
    ///     .build_with_loader(|k: &u8| { let k = *k; async move { Ok::<_, String>(k * 2) } });
    /// let handle = cache.clone();
    /// assert_eq!(handle.get(4).await, Ok(8));
    /// assert_eq!(cache.peek(&4), Some(8)); // loaded through the other handle
    /// assert_eq!(cache.stats().cache.loads_ok, 1);
    /// # });
    /// ```
    fn clone(&self) -> Self {
        ExpiringLoadingCache {
            cache: self.cache.clone(),
            loader: Arc::clone(&self.loader),
        }
    }
}

impl<K, V, E, S, C> Deref for ExpiringLoadingCache<K, V, E, S, C> {
    type Target = ExpiringCache<K, V, E, S, C>;

    fn deref(&self) -> &Self::Target {
        &self.cache
    }
}

impl<K, V, E, S, C> fmt::Debug for ExpiringLoadingCache<K, V, E, S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ExpiringLoadingCache")
            .field(&self.cache)
            .finish()
    }
}
