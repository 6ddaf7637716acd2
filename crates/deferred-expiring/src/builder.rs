//! `ExpiringBuilder`: expiry, capacity, clock, listener, loader.

use std::{collections::hash_map::RandomState, fmt, future::Future, sync::Arc, time::Duration};

use deferred_cache::{Cache, RemovalCause};

use crate::{
    cache::{BoxLoad, DynLoader, Entry, Spawner, Task, UserListener},
    expiry::Policy,
    Clock, ExpiringCache, ExpiringHasher, ExpiringKey, ExpiringLoadingCache, Expiry, Shared,
    SystemClock, Value,
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
    /// The inner cache's settings: capacity, weigher, initial capacity and hasher, set
    /// through it, so that they are stored and checked in one place. Its weigher weighs an
    /// entry by its value (a cached error weighs 1); its listener is set at build time,
    /// where the timers it cancels are made.
    inner: deferred_cache::Builder<K, Entry<V, E>, E, S>,
    clock: C,
    policy: Policy<K, V>,
    listener: Option<UserListener<K, V>>,
    spawner: Option<Spawner>,
}

impl<K, V, E> ExpiringBuilder<K, V, E, RandomState, SystemClock> {
    pub(crate) fn new() -> Self {
        ExpiringBuilder {
            inner: Cache::builder(),
            clock: SystemClock,
            policy: Policy::new(),
            listener: None,
            spawner: None,
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
        self.inner = self.inner.max_capacity(capacity);
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
        self.inner = self
            .inner
            .weigher(move |key: &K, entry: &Entry<V, E>| match &entry.slot {
                Ok(value) => weigher(key, value),
                Err(_) => 1,
            });
        self
    }

    /// Room for `entries` entries up front, as
    /// [`deferred_cache::Builder::initial_capacity`]. [`build`](Self::build) refuses more
    /// than the cache may ever hold (more than [`max_capacity`](Self::max_capacity)
    /// entries, when it bounds entries: without a weigher), and more than can be allocated
    /// ([`ExpiringBuildError::Cache`]).
    ///
    /// ```
    /// let cache: deferred_expiring::ExpiringCache<u8, u8> = deferred_expiring::ExpiringCache::builder()
    ///     .max_capacity(1_000)
    ///     .initial_capacity(100)
    ///     .build();
    /// assert!(cache.is_empty());
    /// ```
    pub fn initial_capacity(mut self, entries: usize) -> Self {
        self.inner = self.inner.initial_capacity(entries);
        self
    }

    /// Entries expire `ttl` after they were loaded, inserted or refreshed.
    ///
    /// **A time-to-live of zero is accepted**, and means *shared, never seen again*: each
    /// value expires the moment it is stored. Callers waiting on one load still share its
    /// value (loads stay single-flight), but no later read sees it: each `get_with` after it
    /// loads again, and `get_if_present` finds nothing. The expired entry counts in
    /// [`len`](ExpiringCache::len) until it is reclaimed (by a read that finds it expired,
    /// an operation one wheel tick later, or
    /// [`run_maintenance`](ExpiringCache::run_maintenance)). With
    /// [`refresh_after`](Self::refresh_after) set, a time-to-live of zero is refused, as any
    /// time-to-live not above the refresh interval is.
    ///
    /// ```
    /// let cache: deferred_expiring::ExpiringCache<u8, u8> = deferred_expiring::ExpiringCache::builder()
    ///     .time_to_live(std::time::Duration::from_secs(30))
    ///     .build();
    /// # let _ = cache;
    /// ```
    ///
    /// A time-to-live of zero:
    ///
    /// ```
    /// # futures::executor::block_on(async {
    /// let cache: deferred_expiring::ExpiringCache<u8, u8> = deferred_expiring::ExpiringCache::builder()
    ///     .time_to_live(std::time::Duration::ZERO)
    ///     .build();
    /// assert_eq!(cache.get_with(1, || async { Ok(10) }).await, Ok(10)); // its callers get it
    /// assert_eq!(cache.get_if_present(&1), None); // no later read does
    /// assert_eq!(cache.get_with(1, || async { Ok(11) }).await, Ok(11)); // loaded again
    /// # });
    /// ```
    pub fn time_to_live(mut self, ttl: Duration) -> Self {
        self.policy.ttl = Some(ttl);
        self
    }

    /// Entries expire `tti` after they were last read or written (and never later than
    /// the time-to-live, if one is set too).
    ///
    /// **A time-to-idle of zero is accepted**, and means what a time-to-live of zero does
    /// (see [`time_to_live`](Self::time_to_live)): each value expires the moment it is
    /// stored, before any read could renew it; the callers of its load share it, no later
    /// read sees it.
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
    /// Without a cache-wide loader ([`build`](Self::build) rather than
    /// [`build_with_loader`](Self::build_with_loader)), only [`get_with`](ExpiringCache::get_with)
    /// reads start a reload, with the loader they bring; `get_if_present` has none and
    /// starts nothing. Without a time-to-live, values never expire and are kept fresh by
    /// refreshes alone. Both are accepted.
    ///
    /// [`build`](Self::build) refuses (and [`try_build`](Self::try_build) returns an
    /// [`ExpiringBuildError`] for):
    /// * an interval of zero ([`ExpiringBuildError::RefreshAfterZero`]): every read would
    ///   start a reload;
    /// * an interval not below the [`time_to_live`](Self::time_to_live)
    ///   ([`ExpiringBuildError::RefreshAfterNotBelowTimeToLive`]): every entry would expire
    ///   before its refresh could start. (With [`expire_after`](Self::expire_after), which
    ///   replaces the time-to-live, nothing is compared.) A
    ///   [`time_to_idle`](Self::time_to_idle) is not compared either: reads renew it, so an
    ///   entry read often enough lives to be refreshed.
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
            inner: self.inner.hasher(hasher),
            clock: self.clock,
            policy: self.policy,
            listener: self.listener,
            spawner: self.spawner,
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
            inner: self.inner,
            clock,
            policy: self.policy,
            listener: self.listener,
            spawner: self.spawner,
        }
    }
}

impl<K: ExpiringKey, V: Value, E: Shared, S: ExpiringHasher, C: Clock>
    ExpiringBuilder<K, V, E, S, C>
{
    /// A cache whose loads are given per call ([`ExpiringCache::get_with`]).
    ///
    /// # Panics
    ///
    /// If the configuration is refused (see [`ExpiringBuildError`] for what is): the panic
    /// message is the error's. [`try_build`](Self::try_build) returns the error instead,
    /// for a configuration that comes from outside the program.
    ///
    /// ```
    /// let cache: deferred_expiring::ExpiringCache<u8, u8> =
    ///     deferred_expiring::ExpiringCache::builder().build();
    /// # let _ = cache;
    /// ```
    ///
    /// ```should_panic
    /// // refresh_after (60s) is not below time_to_live (60s) ...
    /// let _: deferred_expiring::ExpiringCache<u8, u8> = deferred_expiring::ExpiringCache::builder()
    ///     .time_to_live(std::time::Duration::from_secs(60))
    ///     .refresh_after(std::time::Duration::from_secs(60))
    ///     .build();
    /// ```
    #[track_caller]
    pub fn build(self) -> ExpiringCache<K, V, E, S, C> {
        match self.try_build() {
            Ok(cache) => cache,
            Err(error) => panic!("{error}"),
        }
    }

    /// As [`build`](Self::build), but a configuration it refuses is returned as an
    /// [`ExpiringBuildError`] rather than a panic.
    ///
    /// ```
    /// use deferred_expiring::{ExpiringBuildError, ExpiringCache};
    /// use std::time::Duration;
    /// let refused = ExpiringCache::<u8, u8>::builder()
    ///     .refresh_after(Duration::ZERO)
    ///     .try_build();
    /// assert!(matches!(refused, Err(ExpiringBuildError::RefreshAfterZero)));
    /// let cache = ExpiringCache::<u8, u8>::builder()
    ///     .time_to_live(Duration::from_secs(60))
    ///     .refresh_after(Duration::from_secs(30))
    ///     .try_build();
    /// assert!(cache.is_ok());
    /// ```
    pub fn try_build(self) -> Result<ExpiringCache<K, V, E, S, C>, ExpiringBuildError> {
        self.build_inner(None)
    }

    /// A cache with one loader for every key ([`ExpiringLoadingCache::get`]), which
    /// refresh-ahead also uses for reads that bring no loader (`get_if_present`).
    ///
    /// # Panics
    ///
    /// As [`build`](Self::build), if the configuration is refused;
    /// [`try_build_with_loader`](Self::try_build_with_loader) returns the error instead.
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
    #[track_caller]
    pub fn build_with_loader<F, Fut>(self, loader: F) -> ExpiringLoadingCache<K, V, E, S, C>
    where
        F: Fn(&K) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
    {
        match self.try_build_with_loader(loader) {
            Ok(cache) => cache,
            Err(error) => panic!("{error}"),
        }
    }

    /// As [`build_with_loader`](Self::build_with_loader), but a configuration it refuses
    /// is returned as an [`ExpiringBuildError`] rather than a panic.
    ///
    /// ```
    /// use deferred_expiring::{ExpiringBuildError, ExpiringCache};
    /// let refused = ExpiringCache::builder()
    ///     .max_capacity(10)
    ///     .initial_capacity(100)
    ///     .try_build_with_loader(|n: &u64| {
    ///         let n = *n;
    ///         async move { Ok::<_, String>(n + 1) }
    ///     });
    /// assert!(matches!(refused, Err(ExpiringBuildError::Cache(_))));
    /// let cache = ExpiringCache::builder()
    ///     .max_capacity(100)
    ///     .try_build_with_loader(|n: &u64| {
    ///         let n = *n;
    ///         async move { Ok::<_, String>(n + 1) }
    ///     })
    ///     .expect("a valid configuration");
    /// # futures::executor::block_on(async {
    /// assert_eq!(cache.get(1).await, Ok(2));
    /// # });
    /// ```
    pub fn try_build_with_loader<F, Fut>(
        self,
        loader: F,
    ) -> Result<ExpiringLoadingCache<K, V, E, S, C>, ExpiringBuildError>
    where
        F: Fn(&K) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
    {
        let loader: DynLoader<K, V, E> =
            Arc::new(move |key: &K| -> BoxLoad<V, E> { Box::pin(loader(key)) });
        let cache = self.build_inner(Some(Arc::clone(&loader)))?;
        Ok(ExpiringLoadingCache::from_parts(cache, loader))
    }

    fn build_inner(
        self,
        loader: Option<DynLoader<K, V, E>>,
    ) -> Result<ExpiringCache<K, V, E, S, C>, ExpiringBuildError> {
        self.check()?;
        ExpiringCache::from_parts(
            self.inner,
            self.clock,
            self.policy,
            self.listener,
            loader,
            self.spawner,
        )
        .map_err(ExpiringBuildError::Cache)
    }

    /// What `try_build` refuses of the expiry settings (the inner cache checks the rest).
    fn check(&self) -> Result<(), ExpiringBuildError> {
        let Some(refresh_after) = self.policy.refresh_after else {
            return Ok(());
        };
        if refresh_after.is_zero() {
            return Err(ExpiringBuildError::RefreshAfterZero);
        }
        // An `Expiry` policy replaces the time-to-live: nothing to compare with.
        if let (Some(time_to_live), None) = (self.policy.ttl, &self.policy.custom) {
            if refresh_after >= time_to_live {
                return Err(ExpiringBuildError::RefreshAfterNotBelowTimeToLive {
                    refresh_after,
                    time_to_live,
                });
            }
        }
        Ok(())
    }
}

/// A cache configuration that [`ExpiringBuilder::try_build`] refuses (and
/// [`ExpiringBuilder::build`] panics on), with what to change. Its message names the
/// setting and its value.
///
/// ```
/// use std::time::Duration;
/// let error = deferred_expiring::ExpiringCache::<u8, u8>::builder()
///     .time_to_live(Duration::from_secs(10))
///     .refresh_after(Duration::from_secs(30))
///     .try_build()
///     .unwrap_err();
/// assert_eq!(
///     error.to_string(),
///     "refresh_after (30s) is not below time_to_live (10s): every entry would expire \
///      before its refresh could start; lower refresh_after, or raise time_to_live"
/// );
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExpiringBuildError {
    /// [`ExpiringBuilder::refresh_after`] was given zero: every read would start a reload.
    RefreshAfterZero,
    /// [`ExpiringBuilder::refresh_after`] is not below [`ExpiringBuilder::time_to_live`]:
    /// every entry would expire before its refresh could start.
    RefreshAfterNotBelowTimeToLive {
        /// What [`ExpiringBuilder::refresh_after`] asked for.
        refresh_after: Duration,
        /// What [`ExpiringBuilder::time_to_live`] allows.
        time_to_live: Duration,
    },
    /// The inner [`deferred_cache::Cache`] refused its part of the configuration (the
    /// [`initial_capacity`](ExpiringBuilder::initial_capacity) against the
    /// [`max_capacity`](ExpiringBuilder::max_capacity), or too large to allocate). Its
    /// message is the inner error's, which [`source`](std::error::Error::source) also
    /// returns.
    ///
    /// ```
    /// use deferred_expiring::ExpiringBuildError;
    /// use std::error::Error;
    /// let error = deferred_expiring::ExpiringCache::<u8, u8>::builder()
    ///     .max_capacity(0)
    ///     .initial_capacity(1)
    ///     .try_build()
    ///     .unwrap_err();
    /// assert!(matches!(
    ///     error,
    ///     ExpiringBuildError::Cache(deferred_cache::BuildError::InitialCapacityAboveMax { .. })
    /// ));
    /// assert!(error.to_string().starts_with("initial_capacity (1 entries) is more than max_capacity (0 entries)"));
    /// assert!(error.source().is_some());
    /// ```
    Cache(deferred_cache::BuildError),
}

impl fmt::Display for ExpiringBuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpiringBuildError::RefreshAfterZero => f.write_str(
                "refresh_after (0ns) is zero, so every read would start a reload: give it \
                 a positive interval, or leave refresh-ahead off",
            ),
            ExpiringBuildError::RefreshAfterNotBelowTimeToLive {
                refresh_after,
                time_to_live,
            } => write!(
                f,
                "refresh_after ({refresh_after:?}) is not below time_to_live \
                 ({time_to_live:?}): every entry would expire before its refresh could \
                 start; lower refresh_after, or raise time_to_live"
            ),
            ExpiringBuildError::Cache(error) => fmt::Display::fmt(error, f),
        }
    }
}

impl std::error::Error for ExpiringBuildError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ExpiringBuildError::Cache(error) => Some(error),
            _ => None,
        }
    }
}

impl<K, V, E, S, C: fmt::Debug> fmt::Debug for ExpiringBuilder<K, V, E, S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExpiringBuilder")
            .field("inner", &self.inner)
            .field("policy", &self.policy)
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}
