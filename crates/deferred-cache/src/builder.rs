//! `Builder`: capacity, weigher, hasher, loader.

use std::{collections::hash_map::RandomState, fmt, future::Future, marker::PhantomData};

use crate::{cache::Weigher, listener::Listener, Cache, LoadingCache, RemovalCause};

/// Configures a [`Cache`] or a [`LoadingCache`]. Made by [`Cache::builder`].
///
/// ```
/// use deferred_cache::Cache;
/// # futures::executor::block_on(async {
/// let cache = Cache::builder()
///     .max_capacity(1_000)
///     .build_with_loader(|id: &u64| {
///         let id = *id;
///         async move { Ok::<_, std::io::Error>(id * 2) }
///     });
/// assert_eq!(cache.get(21).await.unwrap(), 42);
/// # });
/// ```
pub struct Builder<K, V, E, S = RandomState> {
    capacity: Option<u64>,
    weigher: Option<Weigher<K, V>>,
    listener: Option<Listener<K, V>>,
    hasher: S,
    initial_capacity: usize,
    _error: PhantomData<fn() -> E>,
}

impl<K, V, E> Builder<K, V, E, RandomState> {
    pub(crate) fn new() -> Self {
        Builder {
            capacity: None,
            weigher: None,
            listener: None,
            hasher: RandomState::new(),
            initial_capacity: 0,
            _error: PhantomData,
        }
    }
}

impl<K, V, E, S> Builder<K, V, E, S> {
    /// Bounds the cache: at most `capacity` entries, or weight units if a
    /// [`weigher`](Self::weigher) is set. Evicts with S3-FIFO. The capacity is the whole
    /// cache's, however its policy is split into shards inside: any value that fits in it
    /// is admitted, making room by evicting others. A capacity of 0 keeps nothing, not
    /// even values that weigh nothing (loads are still shared by the callers that wait on
    /// them).
    ///
    /// ```
    /// let cache: deferred_cache::Cache<u8, u8> =
    ///     deferred_cache::Cache::builder().max_capacity(3).build();
    /// assert_eq!(cache.capacity(), Some(3));
    /// ```
    pub fn max_capacity(mut self, capacity: u64) -> Self {
        self.capacity = Some(capacity);
        self
    }

    /// Weighs each value against [`max_capacity`](Self::max_capacity) (without one, a
    /// weigher has no effect and is never called). It runs once per value, when the value
    /// is stored (by `insert`, `replace_if`, or the first caller of a load to see its
    /// value), with no lock held.
    ///
    /// * A value no heavier than the capacity is kept: room is made by evicting other
    ///   values, never the one being stored.
    /// * A value heavier than the whole capacity is refused: it is not kept, and nothing
    ///   else is evicted for it. It counts as an eviction ([`Stats::evicted`]) and the
    ///   listener is told [`RemovalCause::Size`]; the callers of a load that produced it
    ///   still get it.
    /// * A value that weighs 0 counts nothing against the capacity, and is never evicted
    ///   for size (that would free nothing): it stays until it is invalidated, replaced or
    ///   expired. At capacity 0 it is refused like any other value.
    ///
    /// * **A panicking weigher** is caught, as a panicking
    ///   [listener](Self::eviction_listener) is: the panic never leaves the cache's
    ///   operation (the panic hook reports it as usual). The value, whose weight is
    ///   unknown, is refused as if it were heavier than the capacity: not kept (a value it
    ///   replaces is still removed), counted in [`Stats::evicted`] and told as
    ///   [`RemovalCause::Size`]; the callers of a load that produced it still get it, none
    ///   of them unwinds, and the next read loads again. Each such panic is counted in
    ///   [`Stats::weigher_panics`].
    ///
    /// ```
    /// let cache: deferred_cache::Cache<u8, String> = deferred_cache::Cache::builder()
    ///     .max_capacity(10)
    ///     .weigher(|_, v: &String| v.len() as u32)
    ///     .build();
    /// cache.insert(1, "four".into());
    /// assert_eq!(cache.weighted_size(), Some(4));
    /// cache.insert(2, "eleven long".into()); // heavier than the capacity: refused
    /// assert!(!cache.contains_key(&2) && cache.contains_key(&1));
    /// cache.insert(3, String::new()); // weighs nothing: never evicted for size
    /// cache.insert(4, "ten  chars".into()); // evicts 1 to make room, not 3
    /// assert!(cache.contains_key(&3) && cache.contains_key(&4) && !cache.contains_key(&1));
    /// assert_eq!(cache.weighted_size(), Some(10));
    /// assert_eq!(cache.stats().evicted, 2);
    /// ```
    ///
    /// A weigher that panics:
    ///
    /// ```
    /// use deferred_cache::Cache;
    /// # std::panic::set_hook(Box::new(|_| {})); // keep the doctest's output clean
    /// let cache: Cache<u8, String> = Cache::builder()
    ///     .max_capacity(10)
    ///     .weigher(|_, v: &String| {
    ///         assert!(!v.is_empty(), "a weigher bug");
    ///         v.len() as u32
    ///     })
    ///     .build();
    /// cache.insert(1, "one".into());
    /// cache.insert(1, String::new()); // the weigher panics: refused, and 1 is replaced
    /// assert!(cache.is_empty() && cache.weighted_size() == Some(0));
    /// # futures::executor::block_on(async {
    /// let loaded = cache.get_with(2, || async { Ok(String::new()) }).await;
    /// assert_eq!(loaded, Ok(String::new())); // its caller still gets it
    /// # });
    /// assert!(!cache.contains_key(&2));
    /// let stats = cache.stats();
    /// assert_eq!((stats.weigher_panics, stats.evicted, stats.invalidated), (2, 2, 1));
    /// ```
    ///
    /// [`Stats::evicted`]: crate::Stats::evicted
    /// [`Stats::weigher_panics`]: crate::Stats::weigher_panics
    pub fn weigher(mut self, weigher: impl Fn(&K, &V) -> u32 + Send + Sync + 'static) -> Self {
        self.weigher = Some(Box::new(weigher));
        self
    }

    /// Room for `entries` entries up front. [`build`](Self::build) refuses more than the
    /// cache may ever hold (more than [`max_capacity`](Self::max_capacity) entries, when it
    /// bounds entries: without a weigher), and more than can be allocated.
    ///
    /// ```
    /// let cache: deferred_cache::Cache<u8, u8> =
    ///     deferred_cache::Cache::builder().initial_capacity(100).build();
    /// assert!(cache.is_empty());
    /// ```
    pub fn initial_capacity(mut self, entries: usize) -> Self {
        self.initial_capacity = entries;
        self
    }

    /// The hasher for keys (the default is `std`'s HashDoS-resistant `RandomState`).
    ///
    /// ```
    /// use std::hash::BuildHasherDefault;
    /// use std::collections::hash_map::DefaultHasher;
    /// let cache: deferred_cache::Cache<u8, u8, _, _> = deferred_cache::Cache::<u8, u8>::builder()
    ///     .hasher(BuildHasherDefault::<DefaultHasher>::default())
    ///     .build();
    /// assert!(cache.is_empty());
    /// ```
    pub fn hasher<H>(self, hasher: H) -> Builder<K, V, E, H> {
        Builder {
            capacity: self.capacity,
            weigher: self.weigher,
            listener: self.listener,
            hasher,
            initial_capacity: self.initial_capacity,
            _error: PhantomData,
        }
    }

    /// Calls `listener` with each value that leaves the cache, and why: evicted for space
    /// (or refused, heavier than the capacity), invalidated, replaced, or expired. It runs
    /// with no lock held, on the thread whose operation removed the value, before that
    /// operation returns. Loads in flight and failed loads are not values: nothing is told
    /// about them.
    ///
    /// Of two equal keys (which differ only if `Eq` looks at part of a key), a removal by
    /// key (`invalidate`, `remove`, and the value an `insert` or `replace_if` replaces) is
    /// told the key of its call; a removal the cache makes itself (an eviction, `retain`,
    /// `invalidate_all`, `invalidate_entries_if`) is told the key the cache kept for the
    /// entry, the key of the call that made it: an `insert` over an equal key does not
    /// replace it, as `HashMap::insert` does not.
    ///
    /// **A panicking listener** is caught, as moka does: the panic never leaves the cache's
    /// operation, which completes with every count exact (the value is removed and counted,
    /// the new value of a replace is admitted, the other victims of the same eviction are
    /// removed and told). Each such panic is counted in [`Stats::listener_panics`], after
    /// the panic hook has reported it as it does any panic, and the listener is still
    /// called for later removals.
    ///
    /// ```
    /// use deferred_cache::Cache;
    /// # std::panic::set_hook(Box::new(|_| {})); // keep the doctest's output clean
    /// let cache: Cache<u8, u8> = Cache::builder()
    ///     .max_capacity(1)
    ///     .eviction_listener(|_, _, _| panic!("listener bug"))
    ///     .build();
    /// cache.insert(1, 10);
    /// cache.insert(1, 11); // replaces: the listener panics, the insert completes
    /// cache.insert(2, 20); // evicts 1: the same
    /// assert_eq!((cache.len(), cache.weighted_size()), (1, Some(1)));
    /// let stats = cache.stats();
    /// assert_eq!((stats.evicted, stats.invalidated, stats.listener_panics), (1, 1, 2));
    /// ```
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use deferred_cache::{Cache, RemovalCause};
    /// let seen = Arc::new(Mutex::new(Vec::new()));
    /// let log = Arc::clone(&seen);
    /// let cache: Cache<u8, u8> = Cache::builder()
    ///     .eviction_listener(move |k: &u8, v: &u8, cause| log.lock().unwrap().push((*k, *v, cause)))
    ///     .build();
    /// cache.insert(1, 10);
    /// cache.insert(1, 11);
    /// cache.invalidate(&1);
    /// assert_eq!(
    ///     *seen.lock().unwrap(),
    ///     [(1, 10, RemovalCause::Replaced), (1, 11, RemovalCause::Explicit)]
    /// );
    /// ```
    ///
    /// [`Stats::listener_panics`]: crate::Stats::listener_panics
    pub fn eviction_listener(
        mut self,
        listener: impl Fn(&K, &V, RemovalCause) + Send + Sync + 'static,
    ) -> Self {
        self.listener = Some(Box::new(listener));
        self
    }

    /// A cache whose loads are given per call ([`Cache::get_with`]).
    ///
    /// # Panics
    ///
    /// If the configuration is refused (see [`BuildError`] for what is): the panic message
    /// is the error's. [`try_build`](Self::try_build) returns the error instead, for a
    /// configuration that comes from outside the program.
    ///
    /// ```
    /// let cache: deferred_cache::Cache<u8, u8> = deferred_cache::Cache::builder().build();
    /// assert!(cache.capacity().is_none());
    /// ```
    ///
    /// ```should_panic
    /// // initial_capacity (100 entries) is more than max_capacity (10 entries) ...
    /// let _: deferred_cache::Cache<u8, u8> = deferred_cache::Cache::builder()
    ///     .max_capacity(10)
    ///     .initial_capacity(100)
    ///     .build();
    /// ```
    #[track_caller]
    pub fn build(self) -> Cache<K, V, E, S> {
        match self.try_build() {
            Ok(cache) => cache,
            Err(error) => panic!("{error}"),
        }
    }

    /// As [`build`](Self::build), but a configuration it refuses is returned as a
    /// [`BuildError`] rather than a panic.
    ///
    /// A weigher without a capacity is not refused: it has no effect (as documented on
    /// [`weigher`](Self::weigher)), and a layer that forwards an optional weigher and an
    /// optional capacity (as `deferred-expiring` does) need not pair them itself.
    ///
    /// ```
    /// use deferred_cache::{BuildError, Cache};
    /// let refused = Cache::<u8, u8>::builder().max_capacity(10).initial_capacity(100).try_build();
    /// assert!(matches!(
    ///     refused,
    ///     Err(BuildError::InitialCapacityAboveMax { initial_capacity: 100, max_capacity: 10 })
    /// ));
    /// let cache = Cache::<u8, u8>::builder().max_capacity(10).initial_capacity(10).try_build();
    /// assert!(cache.is_ok());
    /// ```
    pub fn try_build(self) -> Result<Cache<K, V, E, S>, BuildError> {
        self.check()?;
        Ok(Cache::from_parts(
            self.capacity,
            self.weigher,
            self.listener,
            self.hasher,
            self.initial_capacity,
        ))
    }

    /// What `try_build` refuses.
    fn check(&self) -> Result<(), BuildError> {
        // A lower bound of what one entry of the store's table takes: its key, its hash and
        // at least a word of state. Room for more than `isize::MAX` bytes can never be allocated.
        let per_entry = core::mem::size_of::<K>() + 8 + core::mem::size_of::<usize>();
        let bytes = self.initial_capacity.checked_mul(per_entry);
        if bytes.map_or(true, |b| b > isize::MAX as usize) {
            return Err(BuildError::InitialCapacityTooLarge {
                initial_capacity: self.initial_capacity,
            });
        }
        // Entries and weight units do not compare: with a weigher, any number of values
        // that weigh nothing fits.
        if let (Some(max), None) = (self.capacity, &self.weigher) {
            if self.initial_capacity as u64 > max {
                return Err(BuildError::InitialCapacityAboveMax {
                    initial_capacity: self.initial_capacity,
                    max_capacity: max,
                });
            }
        }
        Ok(())
    }

    /// A cache with one loader for every key ([`LoadingCache::get`]).
    ///
    /// # Panics
    ///
    /// As [`build`](Self::build), if the configuration is refused;
    /// [`try_build_with_loader`](Self::try_build_with_loader) returns the error instead.
    ///
    /// ```
    /// # futures::executor::block_on(async {
    /// let squares = deferred_cache::Cache::builder()
    ///     .build_with_loader(|n: &u64| {
    ///         let n = *n;
    ///         async move { Ok::<_, String>(n * n) }
    ///     });
    /// assert_eq!(squares.get(12).await, Ok(144));
    /// # });
    /// ```
    pub fn build_with_loader<F, Fut>(self, loader: F) -> LoadingCache<K, V, E, S>
    where
        F: Fn(&K) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
    {
        LoadingCache::from_parts(self.build(), loader)
    }

    /// As [`build_with_loader`](Self::build_with_loader), but a configuration it refuses
    /// is returned as a [`BuildError`] rather than a panic.
    ///
    /// ```
    /// let cache = deferred_cache::Cache::builder()
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
    ) -> Result<LoadingCache<K, V, E, S>, BuildError>
    where
        F: Fn(&K) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
    {
        Ok(LoadingCache::from_parts(self.try_build()?, loader))
    }
}

/// A cache configuration that [`Builder::try_build`] refuses (and [`Builder::build`]
/// panics on), with what to change.
///
/// ```
/// let error = deferred_cache::Cache::<u8, u8>::builder()
///     .max_capacity(10)
///     .initial_capacity(100)
///     .try_build()
///     .unwrap_err();
/// assert_eq!(
///     error.to_string(),
///     "initial_capacity (100 entries) is more than max_capacity (10 entries), which the \
///      cache never exceeds: lower initial_capacity, or raise max_capacity"
/// );
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BuildError {
    /// Room for more entries was asked up front than the cache may ever hold (a cache
    /// bounded by entries, without a weigher).
    InitialCapacityAboveMax {
        /// What [`Builder::initial_capacity`] asked for.
        initial_capacity: usize,
        /// What [`Builder::max_capacity`] allows.
        max_capacity: u64,
    },
    /// Room for so many entries up front cannot be allocated on this machine (more than
    /// `isize::MAX` bytes).
    InitialCapacityTooLarge {
        /// What [`Builder::initial_capacity`] asked for.
        initial_capacity: usize,
    },
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildError::InitialCapacityAboveMax {
                initial_capacity,
                max_capacity,
            } => write!(
                f,
                "initial_capacity ({initial_capacity} entries) is more than max_capacity \
                 ({max_capacity} entries), which the cache never exceeds: lower \
                 initial_capacity, or raise max_capacity"
            ),
            BuildError::InitialCapacityTooLarge { initial_capacity } => write!(
                f,
                "initial_capacity ({initial_capacity} entries) is more than this machine \
                 can allocate: lower it (the cache grows as it fills)"
            ),
        }
    }
}

impl std::error::Error for BuildError {}

impl<K, V, E, S> fmt::Debug for Builder<K, V, E, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("capacity", &self.capacity)
            .field("weigher", &self.weigher.is_some())
            .field("listener", &self.listener.is_some())
            .field("initial_capacity", &self.initial_capacity)
            .finish_non_exhaustive()
    }
}
