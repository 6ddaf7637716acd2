//! `ExpiringBuilder`: expiry, capacity, clock, listener, loader.

use std::{
    collections::hash_map::RandomState,
    fmt,
    future::Future,
    hash::{BuildHasher, Hash},
    marker::PhantomData,
    sync::Arc,
    time::Duration,
};

use deferred_cache::RemovalCause;

use crate::{
    cache::{BoxLoad, DynLoader, Spawner, Task, UserListener, Weigher},
    expiry::Policy,
    Clock, ExpiringCache, ExpiringLoadingCache, Expiry, SystemClock,
};

/// Configures an [`ExpiringCache`]. Made by [`ExpiringCache::builder`].
///
/// ```
/// use deferred_expiring::ExpiringCache;
/// use std::time::Duration;
/// # futures::executor::block_on(async {
/// let cache = ExpiringCache::builder()
///     .max_capacity(10_000)
///     .time_to_live(Duration::from_secs(600))
///     .time_to_idle(Duration::from_secs(60))
///     .cache_errors_for(Duration::from_secs(5))
///     .build_with_loader(|id: &u64| {
///         let id = *id;
///         async move { Ok::<_, std::io::Error>(format!("user {id}")) }
///     });
/// assert_eq!(cache.get(7).await.unwrap(), "user 7");
/// # });
/// ```
pub struct ExpiringBuilder<K, V, E, S = RandomState, C = SystemClock> {
    capacity: Option<u64>,
    weigher: Option<Weigher<K, V>>,
    hasher: S,
    clock: C,
    policy: Policy<K, V>,
    listener: Option<UserListener<K, V>>,
    spawner: Option<Spawner>,
    _error: PhantomData<fn() -> E>,
}

impl<K, V, E> ExpiringBuilder<K, V, E, RandomState, SystemClock> {
    pub(crate) fn new() -> Self {
        ExpiringBuilder {
            capacity: None,
            weigher: None,
            hasher: RandomState::new(),
            clock: SystemClock,
            policy: Policy::new(),
            listener: None,
            spawner: None,
            _error: PhantomData,
        }
    }
}

impl<K, V, E, S, C> ExpiringBuilder<K, V, E, S, C> {
    /// Bounds the cache (entries, or weight with a [`weigher`](Self::weigher)); evicts with
    /// S3-FIFO, as [`deferred_cache::Builder::max_capacity`].
    ///
    /// ```
    /// let cache: deferred_expiring::ExpiringCache<u8, u8> =
    ///     deferred_expiring::ExpiringCache::builder().max_capacity(2).build();
    /// for k in 0..10 { cache.insert(k, k); }
    /// assert!(cache.len() <= 2);
    /// ```
    pub fn max_capacity(mut self, capacity: u64) -> Self {
        self.capacity = Some(capacity);
        self
    }

    /// Weighs values for the capacity (a cached error weighs 1).
    ///
    /// ```
    /// let cache: deferred_expiring::ExpiringCache<u8, Vec<u8>> = deferred_expiring::ExpiringCache::builder()
    ///     .max_capacity(1024)
    ///     .weigher(|_, v: &Vec<u8>| v.len() as u32)
    ///     .build();
    /// cache.insert(1, vec![0; 2048]); // heavier than the whole cache: not kept
    /// assert_eq!(cache.get_if_present(&1), None);
    /// ```
    pub fn weigher(mut self, weigher: impl Fn(&K, &V) -> u32 + Send + Sync + 'static) -> Self {
        self.weigher = Some(Box::new(weigher));
        self
    }

    /// Entries expire `ttl` after they were loaded, inserted or refreshed.
    ///
    /// ```
    /// let cache: deferred_expiring::ExpiringCache<u8, u8> = deferred_expiring::ExpiringCache::builder()
    ///     .time_to_live(std::time::Duration::from_secs(30))
    ///     .build();
    /// # let _ = cache;
    /// ```
    pub fn time_to_live(mut self, ttl: Duration) -> Self {
        self.policy.ttl = Some(ttl);
        self
    }

    /// Entries expire `tti` after they were last read or written (and never later than
    /// the time-to-live, if one is set too).
    ///
    /// ```
    /// let cache: deferred_expiring::ExpiringCache<u8, u8> = deferred_expiring::ExpiringCache::builder()
    ///     .time_to_idle(std::time::Duration::from_secs(30))
    ///     .build();
    /// # let _ = cache;
    /// ```
    pub fn time_to_idle(mut self, tti: Duration) -> Self {
        self.policy.tti = Some(tti);
        self
    }

    /// A per-entry expiry policy, called on create, read and update; it replaces
    /// time-to-live and time-to-idle. See [`Expiry`].
    ///
    /// ```
    /// use deferred_expiring::{Expiry, ExpiringCache};
    /// use std::time::Duration;
    /// struct TenSeconds;
    /// impl Expiry<u8, u8> for TenSeconds {
    ///     fn expire_after_create(&self, _: &u8, _: &u8, _: Duration) -> Option<Duration> {
    ///         Some(Duration::from_secs(10))
    ///     }
    /// }
    /// let cache: ExpiringCache<u8, u8> = ExpiringCache::builder().expire_after(TenSeconds).build();
    /// # let _ = cache;
    /// ```
    pub fn expire_after(mut self, expiry: impl Expiry<K, V>) -> Self {
        self.policy.custom = Some(Box::new(expiry));
        self
    }

    /// Negative caching: a loader error is kept for `ttl` and returned to every read of its
    /// key until then (as [`LoadError::Failed`](crate::LoadError::Failed), the same `Arc`),
    /// instead of being dropped at once. Each such read counts in
    /// [`ExpiringStats::negative_hits`](crate::ExpiringStats).
    ///
    /// ```
    /// let cache: deferred_expiring::ExpiringCache<u8, u8, String> = deferred_expiring::ExpiringCache::builder()
    ///     .cache_errors_for(std::time::Duration::from_secs(5))
    ///     .build();
    /// # let _ = cache;
    /// ```
    pub fn cache_errors_for(mut self, ttl: Duration) -> Self {
        self.policy.negative_ttl = Some(ttl);
        self
    }

    /// Refresh-ahead: a read of a value older than `interval` returns it at once and starts
    /// one reload of its key in the background (the `get_with` caller's loader, or the
    /// cache-wide one). While it runs, reads go on getting the old value. A reload that
    /// fails keeps the old value (counted in
    /// [`ExpiringStats::refreshes_failed`](crate::ExpiringStats)) and the next may start one
    /// interval later; a write to the key while it runs wins over its result.
    ///
    /// Reloads run on the [`spawner`](Self::spawner) if one is set; otherwise the cache's
    /// own operations poll them.
    ///
    /// ```
    /// let cache: deferred_expiring::ExpiringCache<u8, u8> = deferred_expiring::ExpiringCache::builder()
    ///     .refresh_after(std::time::Duration::from_secs(60))
    ///     .time_to_live(std::time::Duration::from_secs(600))
    ///     .build();
    /// # let _ = cache;
    /// ```
    pub fn refresh_after(mut self, interval: Duration) -> Self {
        self.policy.refresh_after = Some(interval);
        self
    }

    /// Bounds the reclamation work of one operation: it looks at no more than `timers`
    /// timers (each that fires costs a removal from the cache), and the next operations go
    /// on with the rest. Reads never see an expired entry meanwhile. Use it when many
    /// entries may expire at once and no caller should pay for all of them: on a 1M-entry
    /// cache, reclaiming 10 000 expired entries in one operation takes milliseconds.
    ///
    /// Without a bound (the default), the first operation one wheel tick after a deadline
    /// reclaims everything due then, so the listener hears of each expiry within one
    /// operation. [`run_maintenance`](ExpiringCache::run_maintenance) is never bounded.
    ///
    /// ```
    /// use deferred_expiring::{ExpiringCache, ManualClock, TICK};
    /// use std::time::Duration;
    /// let clock = ManualClock::new();
    /// let cache: ExpiringCache<u32, u32, std::convert::Infallible, _, _> = ExpiringCache::builder()
    ///     .time_to_live(Duration::from_secs(1))
    ///     .maintenance_budget(10)
    ///     .clock(clock.clone())
    ///     .build();
    /// for k in 0..100 { cache.insert(k, k); }
    /// clock.advance(Duration::from_secs(1) + TICK);
    /// cache.insert(1000, 0); // reclaims at most 10 of the 100 expired
    /// assert!(cache.len() >= 91);
    /// cache.run_maintenance(); // reclaims the rest
    /// assert_eq!(cache.len(), 1);
    /// ```
    pub fn maintenance_budget(mut self, timers: usize) -> Self {
        self.policy.maintenance_budget = timers.max(1);
        self
    }

    /// Where background refreshes run: `spawn` gets each as a boxed `Send` future, e.g.
    /// `|task| { tokio::spawn(task); }`. Without one, the cache's operations poll them.
    ///
    /// ```
    /// let cache: deferred_expiring::ExpiringCache<u8, u8> = deferred_expiring::ExpiringCache::builder()
    ///     .spawner(|task| std::thread::spawn(move || futures::executor::block_on(task)).join().unwrap())
    ///     .build();
    /// # let _ = cache;
    /// ```
    pub fn spawner(mut self, spawn: impl Fn(Task) + Send + Sync + 'static) -> Self {
        self.spawner = Some(Box::new(spawn));
        self
    }

    /// Calls `listener` with each value that leaves the cache and why (see
    /// [`RemovalCause`]): with no lock held, within the operation that removed it (for an
    /// expiry, the first operation at or after the deadline's clock tick that reclaims it,
    /// or the read that finds it expired).
    ///
    /// ```
    /// use deferred_expiring::{ExpiringCache, ManualClock};
    /// use deferred_expiring::RemovalCause;
    /// use std::{sync::{Arc, Mutex}, time::Duration};
    /// let clock = ManualClock::new();
    /// let seen = Arc::new(Mutex::new(Vec::new()));
    /// let log = Arc::clone(&seen);
    /// let cache: ExpiringCache<u8, u8, std::convert::Infallible, _, _> = ExpiringCache::builder()
    ///     .time_to_live(Duration::from_secs(1))
    ///     .clock(clock.clone())
    ///     .eviction_listener(move |k: &u8, _: &u8, cause| log.lock().unwrap().push((*k, cause)))
    ///     .build();
    /// cache.insert(1, 1);
    /// clock.advance(Duration::from_secs(2));
    /// cache.insert(2, 2); // any operation reclaims what is due
    /// assert_eq!(*seen.lock().unwrap(), [(1, RemovalCause::Expired)]);
    /// ```
    pub fn eviction_listener(
        mut self,
        listener: impl Fn(&K, &V, RemovalCause) + Send + Sync + 'static,
    ) -> Self {
        self.listener = Some(Arc::new(listener));
        self
    }

    /// The hasher of keys.
    ///
    /// ```
    /// let cache: deferred_expiring::ExpiringCache<u8, u8, std::convert::Infallible, _> =
    ///     deferred_expiring::ExpiringCache::builder()
    ///         .hasher(std::collections::hash_map::RandomState::new())
    ///         .build();
    /// # let _ = cache;
    /// ```
    pub fn hasher<H>(self, hasher: H) -> ExpiringBuilder<K, V, E, H, C> {
        ExpiringBuilder {
            capacity: self.capacity,
            weigher: self.weigher,
            hasher,
            clock: self.clock,
            policy: self.policy,
            listener: self.listener,
            spawner: self.spawner,
            _error: PhantomData,
        }
    }

    /// The clock deadlines are read from: a [`ManualClock`](crate::ManualClock) in tests.
    ///
    /// ```
    /// use deferred_expiring::{ExpiringCache, ManualClock};
    /// let cache: ExpiringCache<u8, u8, std::convert::Infallible, _, ManualClock> =
    ///     ExpiringCache::builder().clock(ManualClock::new()).build();
    /// # let _ = cache;
    /// ```
    pub fn clock<C2: Clock>(self, clock: C2) -> ExpiringBuilder<K, V, E, S, C2> {
        ExpiringBuilder {
            capacity: self.capacity,
            weigher: self.weigher,
            hasher: self.hasher,
            clock,
            policy: self.policy,
            listener: self.listener,
            spawner: self.spawner,
            _error: PhantomData,
        }
    }
}

impl<K, V, E, S, C> ExpiringBuilder<K, V, E, S, C>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
    S: BuildHasher + Send + Sync + 'static,
    C: Clock,
{
    /// A cache whose loads are given per call ([`ExpiringCache::get_with`]).
    ///
    /// ```
    /// let cache: deferred_expiring::ExpiringCache<u8, u8> =
    ///     deferred_expiring::ExpiringCache::builder().build();
    /// # let _ = cache;
    /// ```
    pub fn build(self) -> ExpiringCache<K, V, E, S, C> {
        self.build_inner(None)
    }

    /// A cache with one loader for every key ([`ExpiringLoadingCache::get`]), which
    /// refresh-ahead also uses for reads that bring no loader (`get_if_present`).
    ///
    /// ```
    /// # futures::executor::block_on(async {
    /// let squares = deferred_expiring::ExpiringCache::builder()
    ///     .time_to_live(std::time::Duration::from_secs(60))
    ///     .build_with_loader(|n: &u64| {
    ///         let n = *n;
    ///         async move { Ok::<_, String>(n * n) }
    ///     });
    /// assert_eq!(squares.get(12).await, Ok(144));
    /// # });
    /// ```
    pub fn build_with_loader<F, Fut>(self, loader: F) -> ExpiringLoadingCache<K, V, E, S, C>
    where
        F: Fn(&K) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
    {
        let loader: DynLoader<K, V, E> =
            Arc::new(move |key: &K| -> BoxLoad<V, E> { Box::pin(loader(key)) });
        let cache = self.build_inner(Some(Arc::clone(&loader)));
        ExpiringLoadingCache::from_parts(cache, loader)
    }

    fn build_inner(self, loader: Option<DynLoader<K, V, E>>) -> ExpiringCache<K, V, E, S, C> {
        ExpiringCache::from_parts(
            self.capacity,
            self.weigher,
            self.hasher,
            self.clock,
            self.policy,
            self.listener,
            loader,
            self.spawner,
        )
    }
}

impl<K, V, E, S, C: fmt::Debug> fmt::Debug for ExpiringBuilder<K, V, E, S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExpiringBuilder")
            .field("capacity", &self.capacity)
            .field("policy", &self.policy)
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}
