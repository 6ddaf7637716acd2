//! `HybridLoadingCache`: a [`HybridCache`] with one loader for every key, set at build.

use std::{fmt, future::Future, ops::Deref, pin::Pin, sync::Arc};

use crate::{BuildError, Builder, Codec, HybridCache, LoadError};

/// The loader's future, boxed: made only on an L1 miss that goes on to load.
type BoxFuture<V, E> = Pin<Box<dyn Future<Output = Result<V, E>> + Send>>;
type DynLoader<V, E> = Arc<dyn Fn(&str) -> BoxFuture<V, E> + Send + Sync>;

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
/// let lengths: HybridLoadingCache<u64, std::io::Error, Decimal> =
///     HybridCache::builder(client, "lengths:", Decimal).build_with_loader(|key: &str| {
///         let n = key.len() as u64;
///         async move { Ok(n) }
///     })?;
/// assert_eq!(lengths.get("four").await?, 4);
/// assert_eq!(lengths.get_if_present("four"), Some(4)); // now in this process's L1
/// # Ok(()) }
/// ```
pub struct HybridLoadingCache<V, E, C> {
    cache: HybridCache<V, E, C>,
    loader: DynLoader<V, E>,
}

impl<V, E, C> Builder<V, E, C>
where
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
    /// let users = deferred_redis::HybridCache::<String, std::io::Error, _>::builder(
    ///     client,
    ///     "users:",
    ///     deferred_redis::Utf8,
    /// )
    /// .build_with_loader(|id: &str| {
    ///     let id = id.to_string();
    ///     async move { Ok(format!("user {id}")) }
    /// })?;
    /// assert_eq!(users.get("7").await?, "user 7");
    /// # Ok(()) }
    /// ```
    pub fn build_with_loader<F, Fut>(
        self,
        loader: F,
    ) -> Result<HybridLoadingCache<V, E, C>, BuildError>
    where
        F: Fn(&str) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
    {
        let cache = self.build()?;
        let loader: DynLoader<V, E> = Arc::new(move |key: &str| {
            let load: BoxFuture<V, E> = Box::pin(loader(key));
            load
        });
        Ok(HybridLoadingCache { cache, loader })
    }
}

impl<V, E, C> HybridLoadingCache<V, E, C>
where
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
    /// let doubled = deferred_redis::HybridCache::<u64, String, _>::builder(
    ///     client,
    ///     "doubled:",
    ///     deferred_redis::Decimal,
    /// )
    /// .build_with_loader(|key: &str| {
    ///     let parsed = key.parse::<u64>().map_err(|e| e.to_string());
    ///     async move { parsed.map(|n| n * 2) }
    /// })?;
    /// assert_eq!(doubled.get("21").await.ok(), Some(42));
    /// assert!(doubled.get("x").await.is_err());
    /// # Ok(()) }
    /// ```
    pub fn get(
        &self,
        key: impl Into<String>,
    ) -> impl Future<Output = Result<V, LoadError<E>>> + Send + '_ {
        let key = key.into();
        let loader = Arc::clone(&self.loader);
        let for_loader = key.clone();
        self.cache.get_with(key, move || loader(&for_loader))
    }

    /// The [`HybridCache`] underneath (also reached through `Deref`).
    ///
    /// ```no_run
    /// // `no_run`: needs a Redis server at this address.
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// # let client = redis::Client::open("redis://127.0.0.1:6379/")?;
    /// let cache = deferred_redis::HybridCache::<String, (), _>::builder(
    ///     client, "app:", deferred_redis::Utf8,
    /// )
    /// .build_with_loader(|_: &str| async { Ok("v".to_string()) })?;
    /// let plain: &deferred_redis::HybridCache<String, (), _> = cache.as_hybrid();
    /// assert_eq!(plain.stats().l2_errors, 0);
    /// # Ok(()) }
    /// ```
    pub fn as_hybrid(&self) -> &HybridCache<V, E, C> {
        &self.cache
    }
}

impl<V, E, C> Clone for HybridLoadingCache<V, E, C> {
    /// Another handle on the same cache and loader (two `Arc` increments).
    fn clone(&self) -> Self {
        HybridLoadingCache {
            cache: self.cache.clone(),
            loader: Arc::clone(&self.loader),
        }
    }
}

impl<V, E, C> Deref for HybridLoadingCache<V, E, C> {
    type Target = HybridCache<V, E, C>;

    fn deref(&self) -> &Self::Target {
        &self.cache
    }
}

impl<V, E, C> fmt::Debug for HybridLoadingCache<V, E, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("HybridLoadingCache")
            .field(&self.cache)
            .finish()
    }
}
