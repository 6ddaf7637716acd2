//! `HybridLoadingCache`: a [`HybridCache`] with one loader for every key, set at build.

use std::{fmt, future::Future, ops::Deref, pin::Pin, sync::Arc};

use crate::{BuildError, Builder, Codec, HybridCache, LoadError, RedisKey};

/// The loader's future, boxed: made only on an L1 miss that goes on to load.
type BoxFuture<V, E> = Pin<Box<dyn Future<Output = Result<V, E>> + Send>>;
type DynLoader<K, V, E> = Arc<dyn Fn(&K) -> BoxFuture<V, E> + Send + Sync>;

/// A [`HybridCache`] with one loader for every key, set at build
/// ([`Builder::build_with_loader`]): [`get`](Self::get) reads the L1, then Redis, and runs
/// that loader (once across every process on the prefix) on a miss. The face of
/// `deferred-cache`'s `LoadingCache` and `deferred-expiring`'s `ExpiringLoadingCache`;
/// everything else (`insert`, `invalidate`, [`get_if_present`](HybridCache::get_if_present),
/// `get_with` with another loader, `stats`) comes from the `HybridCache` it derefs to.
///
/// ```no_run
/// // `no_run`: needs a Redis server at this address.
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use deferred_redis::{HybridCache, HybridLoadingCache, Decimal};
/// let client = redis::Client::open("redis://127.0.0.1:6379/")?;
/// let lengths: HybridLoadingCache<String, u64, std::io::Error, Decimal> =
///     HybridCache::builder(client, "lengths:", Decimal).build_with_loader(|key: &String| {
///         let n = key.len() as u64;
///         async move { Ok(n) }
///     })?;
/// assert_eq!(lengths.get("four").await?, 4);
/// assert_eq!(lengths.get_if_present("four"), Some(4)); // now in this process's L1
/// # Ok(()) }
/// ```
pub struct HybridLoadingCache<K, V, E, C> {
    cache: HybridCache<K, V, E, C>,
    loader: DynLoader<K, V, E>,
}

impl<K, V, E, C> Builder<K, V, E, C>
where
    K: RedisKey,
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
    C: Codec<V>,
{
    /// A cache with one loader for every key: [`HybridLoadingCache::get`]. The loader gets
    /// the key and returns a `Send + 'static` future (clone what it needs out of the key).
    /// Fails as [`build`](Self::build) does.
    ///
    /// ```no_run
    /// // `no_run`: the loader runs only against a Redis server (this one connects later).
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let client = redis::Client::open("redis://127.0.0.1:6379/")?;
    /// let users = deferred_redis::HybridCache::<String, String, std::io::Error, _>::builder(
    ///     client,
    ///     "users:",
    ///     deferred_redis::Utf8,
    /// )
    /// .build_with_loader(|id: &String| {
    ///     let id = id.clone();
    ///     async move { Ok(format!("user {id}")) }
    /// })?;
    /// assert_eq!(users.get("7").await?, "user 7");
    /// # Ok(()) }
    /// ```
    pub fn build_with_loader<F, Fut>(
        self,
        loader: F,
    ) -> Result<HybridLoadingCache<K, V, E, C>, BuildError>
    where
        F: Fn(&K) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
    {
        let cache = self.build()?;
        let loader: DynLoader<K, V, E> = Arc::new(move |key: &K| {
            let load: BoxFuture<V, E> = Box::pin(loader(key));
            load
        });
        Ok(HybridLoadingCache { cache, loader })
    }
}

impl<K, V, E, C> HybridLoadingCache<K, V, E, C>
where
    K: RedisKey,
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
    C: Codec<V>,
{
    /// The value at `key`: from the L1, else from Redis, else loaded by the cache's loader
    /// (one run across every process on the prefix), as
    /// [`HybridCache::get_with`] with that loader. Errors and panics as there: a loader
    /// error reaches every caller of the load as one `Arc<E>`, cached only if the builder
    /// set [`cache_errors_for`](Builder::cache_errors_for).
    ///
    /// ```no_run
    /// // `no_run`: needs a Redis server at this address.
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// # let client = redis::Client::open("redis://127.0.0.1:6379/")?;
    /// // Keyed by `u64`: in Redis, `doubled:v:21`.
    /// let doubled = deferred_redis::HybridCache::<u64, u64, String, _>::builder(
    ///     client,
    ///     "doubled:",
    ///     deferred_redis::Decimal,
    /// )
    /// .build_with_loader(|n: &u64| {
    ///     let doubled = n.checked_mul(2).ok_or_else(|| format!("{n} is too big"));
    ///     async move { doubled }
    /// })?;
    /// assert_eq!(doubled.get(21_u64).await.ok(), Some(42));
    /// assert!(doubled.get(u64::MAX).await.is_err());
    /// # Ok(()) }
    /// ```
    pub fn get(
        &self,
        key: impl Into<K>,
    ) -> impl Future<Output = Result<V, LoadError<E>>> + Send + '_ {
        // The loader gets the L1's key, on a miss only: a hit clones nothing.
        let loader = &self.loader;
        self.cache
            .get_with_key(key.into(), move |key: &K| loader(key))
    }

    /// The [`HybridCache`] underneath (also reached through `Deref`).
    ///
    /// ```no_run
    /// // `no_run`: needs a Redis server at this address.
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// # let client = redis::Client::open("redis://127.0.0.1:6379/")?;
    /// let cache = deferred_redis::HybridCache::<String, String, (), _>::builder(
    ///     client, "app:", deferred_redis::Utf8,
    /// )
    /// .build_with_loader(|_: &String| async { Ok("v".to_string()) })?;
    /// let plain: &deferred_redis::HybridCache<String, String, (), _> = cache.as_hybrid();
    /// assert_eq!(plain.stats().l2_errors, 0);
    /// # Ok(()) }
    /// ```
    pub fn as_hybrid(&self) -> &HybridCache<K, V, E, C> {
        &self.cache
    }
}

impl<K, V, E, C> Clone for HybridLoadingCache<K, V, E, C> {
    /// Another handle on the same cache and loader (two `Arc` increments).
    fn clone(&self) -> Self {
        HybridLoadingCache {
            cache: self.cache.clone(),
            loader: Arc::clone(&self.loader),
        }
    }
}

impl<K, V, E, C> Deref for HybridLoadingCache<K, V, E, C> {
    type Target = HybridCache<K, V, E, C>;

    fn deref(&self) -> &Self::Target {
        &self.cache
    }
}

impl<K, V, E, C> fmt::Debug for HybridLoadingCache<K, V, E, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("HybridLoadingCache")
            .field(&self.cache)
            .finish()
    }
}
