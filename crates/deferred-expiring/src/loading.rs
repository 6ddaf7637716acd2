//! `ExpiringLoadingCache`: an `ExpiringCache` with one loader for every key.

use std::{
    collections::hash_map::RandomState,
    convert::Infallible,
    fmt,
    hash::{BuildHasher, Hash},
    ops::Deref,
};

use deferred_cache::LoadError;

use crate::{cache::DynLoader, Clock, ExpiringCache, SystemClock};

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

impl<K, V, E, S, C> ExpiringLoadingCache<K, V, E, S, C>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
    S: BuildHasher + Send + Sync + 'static,
    C: Clock,
{
    /// The value at `key`, loaded with the cache's loader on a miss or after expiry (see
    /// [`ExpiringCache::get_with`]). The loader is called only to start a load or a refresh:
    /// a hit calls nothing and allocates nothing (the loader's future is boxed on a miss).
    ///
    /// ```
    /// # futures::executor::block_on(async {
    /// let cache = deferred_expiring::ExpiringCache::builder()
    ///     .build_with_loader(|k: &u8| { let k = *k; async move { Ok::<_, String>(k + 1) } });
    /// assert_eq!(cache.get(1).await, Ok(2));
    /// # });
    /// ```
    pub async fn get(&self, key: K) -> Result<V, LoadError<E>> {
        let loader = &self.loader;
        self.cache.get_keyed(key, |key: &K| loader(key)).await
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
