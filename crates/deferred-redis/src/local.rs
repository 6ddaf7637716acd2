//! Reads and removals in this process's L1 alone: no Redis round trip, no backplane message.

use std::{borrow::Borrow, hash::Hash};

use crate::{Codec, HybridCache, RedisKey};

impl<K, V, E, C> HybridCache<K, V, E, C>
where
    K: RedisKey,
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
    C: Codec<V>,
{
    /// The value at `key` if this process's L1 holds it, counting an L1 hit or miss. Never
    /// asks Redis, never loads, never waits, never blocks: a value that only Redis (or
    /// another process) holds is `None`. Use [`get_with`](Self::get_with) to go on to Redis.
    ///
    /// ```no_run
    /// // `no_run`: needs a Redis server at this address.
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// # let client = redis::Client::open("redis://127.0.0.1:6379/")?;
    /// # let cache: deferred_redis::HybridCache<String, String, (), _> =
    /// #     deferred_redis::HybridCache::builder(client, "app:", deferred_redis::Utf8).build()?;
    /// assert_eq!(cache.get_if_present("k"), None);
    /// cache.insert("k", "v".to_string()).await?;
    /// assert_eq!(cache.get_if_present("k").as_deref(), Some("v"));
    /// # Ok(()) }
    /// ```
    pub fn get_if_present<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        // One relaxed load (see `Inner::keep_backplane`): a hit serves the L1 as this does.
        self.inner.keep_backplane();
        self.inner.l1.get_if_present(key).map(|tiered| tiered.value)
    }

    /// Drops `key` from this process's L1 only; `true` if it held a value. Redis and the
    /// other processes keep theirs, so the next read here is an L1 miss served by Redis.
    /// For diagnostics and benchmarks (an L2 hit on demand); use
    /// [`invalidate`](Self::invalidate) to remove a value everywhere.
    ///
    /// ```no_run
    /// // `no_run`: needs a Redis server at this address.
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// # let client = redis::Client::open("redis://127.0.0.1:6379/")?;
    /// # let cache: deferred_redis::HybridCache<String, String, (), _> =
    /// #     deferred_redis::HybridCache::builder(client, "app:", deferred_redis::Utf8).build()?;
    /// cache.insert("k", "v".to_string()).await?;
    /// assert!(cache.invalidate_local("k"));
    /// assert!(!cache.contains_local("k"));
    /// // Still in Redis: this read is an L2 hit, and the loader does not run.
    /// let v = cache.get_with("k", || async { Err(()) }).await;
    /// assert_eq!(v.ok().as_deref(), Some("v"));
    /// # Ok(()) }
    /// ```
    pub fn invalidate_local<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        self.inner.l1.invalidate(key)
    }
}
