//! Time to live per value (`Builder::expire_after`) and negative caching
//! (`Builder::cache_errors_for`).

use std::{sync::Arc, time::Duration};

use crate::{hybrid::Inner, Builder, Codec, RedisKey};

/// How long each value lives in Redis: the tier's counterpart of `deferred-expiring`'s
/// `Expiry`, set with [`Builder::expire_after`]. It decides once per value written (a load's
/// value, or an `insert`); the value's key in Redis gets that `PX`, and the L1 keeps its copy
/// no longer (nor longer than [`l1_time_to_live`](Builder::l1_time_to_live), if set). Other
/// processes reading the value from Redis keep it for what it has left there (the
/// expiry stored in its header, on their clock).
///
/// `K` is the cache's key type: the policy gets the key itself (`&String`, `&u64`), not its
/// text in Redis.
///
/// Implemented for every `Fn(&K, &V) -> Duration + Send + Sync + 'static`. It runs on the
/// path of a load or an insert, with no lock held: keep it short. A zero is taken as 1 ms.
///
/// ```
/// use std::time::Duration;
/// use deferred_redis::TtlPolicy;
/// /// Drafts live a minute, the rest an hour.
/// struct ByKind;
/// impl TtlPolicy<String, String> for ByKind {
///     fn time_to_live(&self, _key: &String, value: &String) -> Duration {
///         if value.starts_with("draft:") { Duration::from_secs(60) } else { Duration::from_secs(3600) }
///     }
/// }
/// assert_eq!(ByKind.time_to_live(&"k".into(), &"draft:x".into()), Duration::from_secs(60));
/// // Keyed by `u64`: the first thousand ids are hot, kept briefly.
/// let closure = |id: &u64, _: &String| Duration::from_secs(if *id < 1000 { 5 } else { 60 });
/// assert_eq!(closure.time_to_live(&7, &String::new()), Duration::from_secs(5));
/// ```
pub trait TtlPolicy<K, V>: Send + Sync + 'static {
    /// The time to live of `value`, just loaded or inserted at `key`.
    fn time_to_live(&self, key: &K, value: &V) -> Duration;
}

impl<K, V, F> TtlPolicy<K, V> for F
where
    F: Fn(&K, &V) -> Duration + Send + Sync + 'static,
{
    fn time_to_live(&self, key: &K, value: &V) -> Duration {
        self(key, value)
    }
}

impl<K, V, E, C> Builder<K, V, E, C>
where
    K: RedisKey,
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
    C: Codec<V>,
{
    /// A time to live per value, in Redis and in the L1 (see [`TtlPolicy`]), in place of
    /// [`time_to_live`](Self::time_to_live) for every value written. `time_to_live` still
    /// bounds the L1's copy of a value read from Redis that has no expiry.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), deferred_redis::BuildError> {
    /// use std::time::Duration;
    /// use deferred_redis::{HybridCache, Utf8};
    /// let client = redis::Client::open("redis://127.0.0.1:6379/").unwrap(); // connects later
    /// let sessions: HybridCache<String, String, String, _> = HybridCache::builder(client, "s:", Utf8)
    ///     .expire_after(|_key: &String, value: &String| {
    ///         if value.is_empty() { Duration::from_secs(5) } else { Duration::from_secs(600) }
    ///     })
    ///     .build()?;
    /// # let _ = sessions;
    /// # Ok(()) }
    /// ```
    pub fn expire_after(mut self, policy: impl TtlPolicy<K, V>) -> Self {
        self.ttl_policy = Some(Arc::new(policy));
        self
    }

    /// Negative caching: a loader error is kept in this process's L1 for `ttl`, and every
    /// read of its key here gets it (the same `Arc<E>`, as [`LoadError::Failed`](crate::LoadError))
    /// without running the loader or asking Redis, until it expires or the key is
    /// written or invalidated (here, or elsewhere through the backplane). Counted in
    /// `stats().l1.negative_hits`. Off by default: errors are cached nowhere.
    ///
    /// Errors are **not** written to Redis: a [`Codec`] encodes values, not errors, so the
    /// error stays in the process whose loader returned it. Another process waiting on the
    /// failed load takes the lease (released at once) and runs its own loader; so each
    /// process runs the loader at most once per `ttl` while the error lasts. Must be more
    /// than zero ([`BuildError::Invalid`](crate::BuildError) otherwise).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), deferred_redis::BuildError> {
    /// use std::time::Duration;
    /// let client = redis::Client::open("redis://127.0.0.1:6379/").unwrap(); // connects later
    /// let users = deferred_redis::HybridCache::<String, String, String, _>::builder(
    ///     client,
    ///     "users:",
    ///     deferred_redis::Utf8,
    /// )
    /// .cache_errors_for(Duration::from_secs(2))
    /// .build()?;
    /// # let _ = users;
    /// # Ok(()) }
    /// ```
    pub fn cache_errors_for(mut self, ttl: Duration) -> Self {
        self.config.negative_ttl = Some(ttl);
        self
    }
}

impl<K: 'static, V: 'static, E, C> Inner<K, V, E, C> {
    /// The time to live in Redis of `value` at `key`: the policy's, else `time_to_live`.
    pub(crate) fn ttl_for(&self, key: &K, value: &V) -> Duration {
        self.ttl_policy
            .as_ref()
            .map_or(self.config.ttl, |policy| policy.time_to_live(key, value))
            .max(Duration::from_millis(1))
    }

    /// How long the L1 keeps a value that lives `ttl` in Redis: that, at most
    /// `l1_time_to_live` when one was set.
    pub(crate) fn l1_ttl_for(&self, ttl: Duration) -> Duration {
        self.config.l1_ttl.map_or(ttl, |most| ttl.min(most))
    }
}
