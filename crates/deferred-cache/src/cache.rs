//! `Cache`: single-flight loads on a `DeferredMap`, with S3-FIFO capacity and counters.

use std::{
    borrow::Borrow,
    collections::hash_map::RandomState,
    convert::Infallible,
    fmt,
    future::Future,
    hash::{BuildHasher, Hash},
    panic::{self, AssertUnwindSafe},
    sync::Arc,
    time::Instant,
};

use deferred_map::{DeferredMap, Lazy};

use crate::{
    error::Failure,
    listener::Listener,
    policy::{Evicted, Policy},
    stats::{Counters, Outcome, Stats},
    stored::{CacheCell, Stored},
    trace, Builder, Key, RemovalCause, Shared, Value,
};

pub(crate) type Map<K, V, E, S> = DeferredMap<K, Stored<V>, Failure<E>, S>;

/// How much of the capacity a value takes.
pub(crate) type Weigher<K, V> = Box<dyn Fn(&K, &V) -> u32 + Send + Sync>;

/// A concurrent loading cache: N callers that miss one key at the same time run one load,
/// and every one of them gets its outcome.
///
/// * **Single flight.** The load lives in the key's entry (a
///   [`DeferredMap`] cell) and is driven by whichever waiting caller is polled, so a caller
///   that is dropped or stalls holds no one up, and no load runs twice.
/// * **Failures are shared and not kept.** A loader error reaches every waiter as the same
///   `Arc<E>`; a panic reaches every other waiter as [`LoadError::Panicked`](crate::LoadError)
///   (the caller whose poll ran the loader unwinds). Either way the entry goes, and the next
///   read loads again.
/// * **Bounded** (optionally): S3-FIFO eviction by entries or by weight. Only complete values
///   are admitted, so a load in flight is never evicted from under its waiters.
///
/// Values come out as clones: wrap large ones in `Arc`.
///
/// # Sharing a cache
///
/// A `Cache` is a handle: [`clone`](Clone::clone) it (one reference-count increment, as
/// moka's caches are) and move the clone into each task or thread that uses the cache. All
/// handles share the entries, the loads in flight and the statistics; the cache is dropped
/// with its last handle. The future of [`get_with`](Self::get_with) borrows the handle it
/// was called on, so call it inside the task, on the task's own clone:
///
/// ```
/// use deferred_cache::Cache;
/// # tokio::runtime::Builder::new_multi_thread().build().unwrap().block_on(async {
/// let cache: Cache<u64, String> = Cache::bounded(1_000);
/// let tasks: Vec<_> = (0..4)
///     .map(|_| {
///         let cache = cache.clone();
///         tokio::spawn(async move {
///             cache.get_with(7, || async { Ok("seven".to_string()) }).await
///         })
///     })
///     .collect();
/// for task in tasks {
///     assert_eq!(task.await.unwrap().unwrap(), "seven");
/// }
/// assert_eq!(cache.stats().loads_ok, 1); // the four tasks shared one load
/// # });
/// ```
///
/// ```
/// use deferred_cache::Cache;
/// # futures::executor::block_on(async {
/// let cache: Cache<u64, String> = Cache::bounded(10_000);
/// let load = |id: u64| async move { Ok(format!("user {id}")) };
/// let (a, b) = futures::join!(
///     cache.get_with(7, || load(7)),
///     cache.get_with(7, || load(7)), // joins the first load
/// );
/// assert_eq!((a.unwrap(), b.unwrap()), ("user 7".to_string(), "user 7".to_string()));
/// assert_eq!(cache.stats().loads_ok, 1);
/// # });
/// ```
///
/// # Borrowed keys
///
/// Calls that store a key (`get_with` and the other loads, `insert`) take it owned. Calls
/// that look a key up or remove its entry take `&Q` for any `Q` that `K` borrows as, as
/// `HashMap::get` does, so a `Cache<String, _>` is read with a `&str` and no `String` is
/// built:
///
/// * **reads** ([`get_if_present`](Self::get_if_present),
///   [`get_if_present_with`](Self::get_if_present_with), [`hit_with`](Self::hit_with),
///   [`peek`](Self::peek), [`peek_with`](Self::peek_with),
///   [`contains_key`](Self::contains_key)) need `K: Borrow<Q>, Q: Hash + Eq + ?Sized`, and
///   never allocate;
/// * **removals** ([`invalidate`](Self::invalidate), [`remove`](Self::remove),
///   [`invalidate_if`](Self::invalidate_if), [`expire_if`](Self::expire_if),
///   [`replace_if`](Self::replace_if)) also need `Q: ToOwned<Owned = K>` (`str` → `String`,
///   `[T]` → `Vec<T>`, and any `K: Clone` as itself): the eviction listener and weigher take
///   a `&K`, and the map hands back only the removed value, so `key.to_owned()` is made for
///   them, and only when one is there to be given it (a listener, and a value that left;
///   for `replace_if`, a capacity or a listener).
///
/// As with `HashMap`, `Q`'s `Hash` and `Eq` must agree with `K`'s (the [`Borrow`] contract,
/// which `String`/`str`, `Vec<T>`/`[T]` and `K`/`K` keep), and `to_owned` must give a key
/// equal to the borrowed one. The cache hashes the borrowed form with the same hasher as
/// the stored key, for the map and for the eviction policy's books alike. If a type breaks
/// the contract, lookups may miss entries that are there: never a panic or unsoundness.
///
/// ```
/// use deferred_cache::Cache;
/// let cache: Cache<String, u32> = Cache::bounded(100);
/// cache.insert("ada".to_string(), 36);
/// let name: &str = "ada"; // no `String` built to read it
/// assert_eq!(cache.get_if_present(name), Some(36));
/// assert_eq!(cache.peek(name), Some(36));
/// assert!(cache.contains_key(name));
/// assert!(cache.replace_if(name, 37, |age| *age == 36));
/// assert_eq!(cache.remove(name), Some(37));
/// assert!(!cache.contains_key("ada"));
/// ```
pub struct Cache<K, V, E = Infallible, S = RandomState> {
    pub(crate) inner: Arc<Inner<K, V, E, S>>,
}

/// What the handles of one cache share.
pub(crate) struct Inner<K, V, E, S> {
    pub(crate) map: Map<K, V, E, S>,
    policy: Option<Policy<V, E>>,
    weigher: Option<Weigher<K, V>>,
    listener: Option<Listener<K, V>>,
    pub(crate) counters: Arc<Counters>,
}

impl<K, V, E, S> Clone for Cache<K, V, E, S> {
    /// Another handle to the same cache: one reference-count increment. Every handle sees
    /// the same entries, loads and statistics; the cache goes when its last handle does.
    ///
    /// ```
    /// let cache: deferred_cache::Cache<u8, u8> = deferred_cache::Cache::new();
    /// let other = cache.clone();
    /// other.insert(1, 10);
    /// assert_eq!(cache.peek(&1), Some(10));
    /// ```
    fn clone(&self) -> Self {
        Cache {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<K, V, E> Cache<K, V, E, RandomState> {
    /// An unbounded cache (nothing is evicted; entries go when invalidated) with the default
    /// hasher.
    ///
    /// ```
    /// let cache: deferred_cache::Cache<u8, u8> = deferred_cache::Cache::new();
    /// assert!(cache.capacity().is_none());
    /// ```
    pub fn new() -> Self {
        Builder::new().build()
    }

    /// A cache that holds at most `max_entries` values, evicting with S3-FIFO.
    ///
    /// ```
    /// let cache: deferred_cache::Cache<u8, u8> = deferred_cache::Cache::bounded(100);
    /// assert_eq!(cache.capacity(), Some(100));
    /// ```
    pub fn bounded(max_entries: u64) -> Self {
        Builder::new().max_capacity(max_entries).build()
    }

    /// A builder, for capacity by weight, a hasher, or a cache-wide loader.
    ///
    /// ```
    /// let cache: deferred_cache::Cache<String, Vec<u8>> = deferred_cache::Cache::builder()
    ///     .max_capacity(1 << 20)
    ///     .weigher(|_key, value: &Vec<u8>| value.len() as u32)
    ///     .build();
    /// assert_eq!(cache.capacity(), Some(1 << 20));
    /// ```
    pub fn builder() -> Builder<K, V, E, RandomState> {
        Builder::new()
    }
}

impl<K, V, E> Default for Cache<K, V, E, RandomState> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K, V, E, S> Cache<K, V, E, S> {
    pub(crate) fn from_parts(
        capacity: Option<u64>,
        weigher: Option<Weigher<K, V>>,
        listener: Option<Listener<K, V>>,
        hasher: S,
        initial_capacity: usize,
    ) -> Self {
        let map = DeferredMap::with_capacity_and_hasher(initial_capacity, hasher);
        let policy = capacity.map(|c| Policy::new(c, map.shard_count()));
        Cache {
            inner: Arc::new(Inner {
                map,
                policy,
                weigher,
                listener,
                counters: Arc::new(Counters::new()),
            }),
        }
    }

    /// The capacity (in entries, or in weight units when a weigher is set); `None` if
    /// unbounded.
    ///
    /// ```
    /// let cache: deferred_cache::Cache<u8, u8> = deferred_cache::Cache::bounded(5);
    /// assert_eq!(cache.capacity(), Some(5));
    /// ```
    pub fn capacity(&self) -> Option<u64> {
        self.inner.policy.as_ref().map(Policy::capacity)
    }

    /// The number of entries: values, and loads in flight. A snapshot.
    ///
    /// ```
    /// let cache: deferred_cache::Cache<u8, u8> = deferred_cache::Cache::new();
    /// cache.insert(1, 1);
    /// assert_eq!(cache.len(), 1);
    /// ```
    pub fn len(&self) -> usize {
        self.inner.map.len()
    }

    /// Whether the cache has no entries.
    ///
    /// ```
    /// let cache: deferred_cache::Cache<u8, u8> = deferred_cache::Cache::new();
    /// assert!(cache.is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.inner.map.is_empty()
    }

    /// The weight of the values counted against capacity (their number when no weigher is
    /// set); `None` if unbounded. A snapshot.
    ///
    /// ```
    /// let cache: deferred_cache::Cache<u8, u8> = deferred_cache::Cache::bounded(5);
    /// cache.insert(1, 1);
    /// assert_eq!(cache.weighted_size(), Some(1));
    /// ```
    pub fn weighted_size(&self) -> Option<u64> {
        self.inner.policy.as_ref().map(Policy::weight)
    }

    /// A snapshot of the counters.
    ///
    /// ```
    /// let cache: deferred_cache::Cache<u8, u8> = deferred_cache::Cache::new();
    /// assert_eq!(cache.stats().hits, 0);
    /// ```
    pub fn stats(&self) -> Stats {
        self.inner.counters.snapshot()
    }
}

impl<K: Key, V: Value, E: Shared, S: BuildHasher> Cache<K, V, E, S> {
    /// The value at `key`, or, if there is none, the value `make` returns, stored
    /// atomically: for synchronous code that must insert only if absent. Never waits for a
    /// load. Counts a hit or a miss, as [`get_with`](Self::get_with) does.
    ///
    /// `make` runs only on a miss, with no lock held; then its value is stored unless a
    /// value came meanwhile, in which case that value is returned and `make`'s is dropped.
    /// Either way **the value returned is the one stored** (at that moment: a later write
    /// or invalidation may replace it, as for any value).
    ///
    /// **A load in flight** for `key` is not waited for (synchronous code cannot wait for
    /// it without risking a deadlock: the load may need this very thread to run). `make`'s
    /// value settles the key instead: it is stored, and it is what the load's callers get
    /// too, at once, so that every caller of the key agrees on one value (a
    /// [`get_with_blocking`](Self::get_with_blocking) caller whose loader then fails or
    /// panics included: it gets this value). If the load is completing at that very
    /// instant, its value wins, and is returned: the only wait is for that completion,
    /// already under way (a write, no user code). A load that failed is no value: `make`'s
    /// value is stored in its place.
    ///
    /// How the load is counted: an async load still running is dropped unfinished and
    /// counted in [`Stats::loads_cancelled`] if it had started; one whose loader had already
    /// returned, and a blocking load (whose loader runs to its end on its caller's thread),
    /// are counted by how the loader ended ([`Stats::loads_ok`], `loads_failed`,
    /// `loads_panicked`), though `make`'s value is the one kept. Every load that started is
    /// counted exactly once.
    ///
    /// ```
    /// let cache: deferred_cache::Cache<u8, String> = deferred_cache::Cache::new();
    /// assert_eq!(cache.get_or_insert_with(1, || "first".into()), "first");
    /// assert_eq!(cache.get_or_insert_with(1, || unreachable!()), "first");
    /// assert_eq!((cache.stats().hits, cache.stats().misses), (1, 1));
    /// ```
    ///
    /// [`Stats::loads_cancelled`]: crate::Stats::loads_cancelled
    /// [`Stats::loads_ok`]: crate::Stats::loads_ok
    pub fn get_or_insert_with(&self, key: K, make: impl FnOnce() -> V) -> V {
        let hash = self.hash(&key);
        if let Some(value) = self.read_hashed(hash, &key) {
            self.inner.counters.hit();
            return value;
        }
        self.inner.counters.miss(false);
        self.put_absent(key, hash, make())
    }

    /// As [`get_or_insert_with`](Self::get_or_insert_with), but counts nothing (neither a
    /// hit nor a miss): for a layer that reads the key, and counts that read, itself, and
    /// may come here more than once for one call of its own. `make` runs only if no value
    /// is there; the value returned is the one stored, as for `get_or_insert_with`, and a
    /// load in flight is settled the same way.
    ///
    /// ```
    /// let cache: deferred_cache::Cache<u8, u8> = deferred_cache::Cache::new();
    /// assert_eq!(cache.get_or_insert_with_uncounted(1, || 10), 10);
    /// assert_eq!(cache.get_or_insert_with_uncounted(1, || unreachable!()), 10);
    /// assert_eq!((cache.stats().hits, cache.stats().misses), (0, 0));
    /// ```
    pub fn get_or_insert_with_uncounted(&self, key: K, make: impl FnOnce() -> V) -> V {
        self.get_or_insert_with_uncounted_hashed(self.hash(&key), key, make)
    }

    /// As [`get_or_insert_with_uncounted`](Self::get_or_insert_with_uncounted), with the
    /// key's hash given: `hash` must be `self.hash(&key)` (see [`hash`](Self::hash)).
    #[doc(hidden)]
    pub fn get_or_insert_with_uncounted_hashed(
        &self,
        hash: u64,
        key: K,
        make: impl FnOnce() -> V,
    ) -> V {
        if let Some(value) = self.read_hashed(hash, &key) {
            return value;
        }
        self.put_absent(key, hash, make())
    }

    /// The heart of `get_or_insert_with`: stores `value` at `key` unless a value is there
    /// (or a load in flight completes first), and returns the one stored. Counts nothing.
    fn put_absent(&self, key: K, hash: u64, value: V) -> V {
        loop {
            // A ready cell of our own, stored if the key is absent. Found otherwise: the
            // entry there, held (`Get`) so that a load in flight is not dropped as abandoned
            // meanwhile, and never claimed (made `Kept`): a load's failure must still go.
            let mine: CacheCell<V, E> = Lazy::ready(Stored::new(value.clone()));
            let get = self
                .inner
                .map
                .get_or_add_cell_hashed(hash, key.clone(), mine.clone());
            if get.added() {
                drop(get);
                self.admit_loaded(Some(&key), hash, &mine);
                return value;
            }
            let cell = get.cell().clone();
            drop(mine);
            if cell.succeed(Stored::new(value.clone())).is_ok() {
                // A load in flight, settled with `value`: its computation has nothing left
                // to do. Admitted through this very cell, never through a later lookup
                // (which could find, and claim, another entry).
                cell.abort();
                drop(get);
                self.admit_loaded(Some(&key), hash, &cell);
                return value;
            }
            // Complete, or being completed right now by its load (the completion is under
            // way: this waits for its write only): its outcome is the key's.
            let stored = match cell.deferred().wait_blocking() {
                Ok(stored) => Some(stored.value.clone()),
                Err(_) => None,
            };
            drop(get);
            if let Some(stored) = stored {
                self.admit_loaded(Some(&key), hash, &cell);
                return stored;
            }
            // A failed load is no value: out with it (its callers hold their own handles),
            // and try again.
            self.inner.map.remove_if_hashed(hash, &key, |c| {
                Lazy::ptr_eq(c, &cell) && matches!(c.try_get(), Some(Err(_)))
            });
        }
    }

    /// The value at `key` if it is present and loaded, counting a hit or a miss and
    /// recording the use for eviction. Never loads, never waits.
    ///
    /// `key` may be any borrowed form of `K`, such as a `&str` for a `String` key (see
    /// [borrowed keys](Cache#borrowed-keys)).
    ///
    /// ```
    /// let cache: deferred_cache::Cache<u8, u8> = deferred_cache::Cache::new();
    /// assert_eq!(cache.get_if_present(&1), None);
    /// cache.insert(1, 10);
    /// assert_eq!(cache.get_if_present(&1), Some(10));
    /// assert_eq!((cache.stats().hits, cache.stats().misses), (1, 1));
    ///
    /// let names: deferred_cache::Cache<String, u8> = deferred_cache::Cache::new();
    /// names.insert("ada".to_string(), 36);
    /// assert_eq!(names.get_if_present("ada"), Some(36)); // a `&str`: nothing allocated
    /// ```
    pub fn get_if_present<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let value = self.read(key);
        match value {
            Some(_) => self.inner.counters.hit(),
            None => self.inner.counters.miss(false),
        }
        value
    }

    /// The value at `key` if it is present and loaded, without counting a read or recording
    /// a use: the cache's statistics and eviction order do not change.
    ///
    /// `key` may be any borrowed form of `K`, such as a `&str` for a `String` key (see
    /// [borrowed keys](Cache#borrowed-keys)).
    ///
    /// ```
    /// let cache: deferred_cache::Cache<u8, u8> = deferred_cache::Cache::new();
    /// cache.insert(1, 10);
    /// assert_eq!(cache.peek(&1), Some(10));
    /// assert_eq!(cache.stats().hits, 0);
    ///
    /// let names: deferred_cache::Cache<String, u8> = deferred_cache::Cache::new();
    /// names.insert("ada".to_string(), 36);
    /// assert_eq!(names.peek("ada"), Some(36));
    /// ```
    pub fn peek<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.inner
            .map
            .try_get_with(key, |outcome| outcome.ok().map(|s| s.value.clone()))
            .flatten()
    }

    /// The value at `key` seen through a reference, without counting a read or recording a
    /// use: `f` runs on the value if it is present and loaded. `f` runs under the key's shard
    /// lock (shared with other readers): keep it short, and never touch this cache from
    /// inside it.
    ///
    /// `key` may be any borrowed form of `K`, such as a `&str` for a `String` key (see
    /// [borrowed keys](Cache#borrowed-keys)).
    ///
    /// ```
    /// let cache: deferred_cache::Cache<u8, String> = deferred_cache::Cache::new();
    /// cache.insert(1, "hello".to_string());
    /// assert_eq!(cache.peek_with(&1, |s| s.len()), Some(5));
    /// assert_eq!(cache.stats().hits, 0);
    ///
    /// let names: deferred_cache::Cache<String, u8> = deferred_cache::Cache::new();
    /// names.insert("ada".to_string(), 36);
    /// assert_eq!(names.peek_with("ada", |age| *age + 1), Some(37));
    /// ```
    pub fn peek_with<Q, R>(&self, key: &Q, f: impl FnOnce(&V) -> R) -> Option<R>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.peek_with_hashed(self.hash(key), key, f)
    }

    /// As [`peek_with`](Self::peek_with), with the key's hash given: `hash` must be
    /// `self.hash(key)` (see [`hash`](Self::hash)).
    #[doc(hidden)]
    pub fn peek_with_hashed<Q, R>(&self, hash: u64, key: &Q, f: impl FnOnce(&V) -> R) -> Option<R>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        self.inner
            .map
            .try_get_with_hashed(hash, key, |outcome| outcome.ok().map(|s| f(&s.value)))
            .flatten()
    }

    /// Whether `key` has a loaded value. Counts nothing.
    ///
    /// `key` may be any borrowed form of `K`, such as a `&str` for a `String` key (see
    /// [borrowed keys](Cache#borrowed-keys)).
    ///
    /// ```
    /// let cache: deferred_cache::Cache<u8, u8> = deferred_cache::Cache::new();
    /// cache.insert(1, 10);
    /// assert!(cache.contains_key(&1) && !cache.contains_key(&2));
    ///
    /// let names: deferred_cache::Cache<String, u8> = deferred_cache::Cache::new();
    /// names.insert("ada".to_string(), 36);
    /// assert!(names.contains_key("ada") && !names.contains_key("bob"));
    /// ```
    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.inner
            .map
            .try_get_with(key, |outcome| outcome.is_ok())
            .unwrap_or(false)
    }

    /// Stores `value` at `key`, replacing what was there. A load in flight for `key` goes on
    /// for the callers already waiting on it (they get its value), but its value is not
    /// stored: the write wins.
    ///
    /// ```
    /// let cache: deferred_cache::Cache<u8, u8> = deferred_cache::Cache::new();
    /// cache.insert(1, 10);
    /// cache.insert(1, 11);
    /// assert_eq!(cache.peek(&1), Some(11));
    /// ```
    pub fn insert(&self, key: K, value: V) {
        self.insert_hashed(self.hash(&key), key, value);
    }

    /// As [`insert`](Self::insert), with the key's hash given: `hash` must be
    /// `self.hash(&key)` (see [`hash`](Self::hash)).
    #[doc(hidden)]
    pub fn insert_hashed(&self, hash: u64, key: K, value: V) {
        let weight = self.weigh(&key, &value);
        let cell = Lazy::ready(Stored::new(value));
        // The key goes into the map; a copy is made only for a listener, to tell it of a
        // value this one replaces.
        let listened = self.inner.listener.as_ref().map(|_| key.clone());
        let old = self.inner.map.insert_hashed(hash, key, cell.clone());
        if let Some(old) = old {
            self.retire(hash, &old);
            self.inner.counters.invalidated(1);
            if let Some(key) = &listened {
                self.notify(key, &old, RemovalCause::Replaced);
            }
            drop(old);
        }
        self.admit(hash, &cell, weight);
    }

    /// Removes the entry at `key`; returns whether there was one. A load in flight goes on
    /// for the callers already waiting on it, but its value is not stored, and the next read
    /// loads afresh.
    ///
    /// `key` may be any borrowed form of `K` that makes a `K` with `to_owned`, such as a
    /// `&str` for a `String` key (see [borrowed keys](Cache#borrowed-keys)).
    /// The listener, if any, gets that owned key.
    ///
    /// ```
    /// let cache: deferred_cache::Cache<u8, u8> = deferred_cache::Cache::new();
    /// cache.insert(1, 10);
    /// assert!(cache.invalidate(&1));
    /// assert!(!cache.invalidate(&1));
    ///
    /// let names: deferred_cache::Cache<String, u8> = deferred_cache::Cache::new();
    /// names.insert("ada".to_string(), 36);
    /// assert!(names.invalidate("ada"));
    /// ```
    pub fn invalidate<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        self.remove_entry(self.hash(key), key).is_some()
    }

    /// As [`invalidate`](Self::invalidate), with the key's hash given: `hash` must be
    /// `self.hash(key)` (see [`hash`](Self::hash)).
    #[doc(hidden)]
    pub fn invalidate_hashed<Q>(&self, hash: u64, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Eq + ToOwned<Owned = K> + ?Sized,
    {
        self.remove_entry(hash, key).is_some()
    }

    /// Removes the entry at `key` and returns its value: [`invalidate`](Self::invalidate)
    /// that gives back what it removed (a clone: other holders of the value, such as a
    /// caller of the load that produced it, may still see it). Counted and told to the
    /// listener as `invalidate` is ([`RemovalCause::Explicit`]).
    ///
    /// A load in flight for `key` has no value yet: `remove` returns `None` for it, but
    /// removes it all the same, as `invalidate` does: the load goes on for the callers
    /// already waiting on it (they get its value), its value is not stored, and the next
    /// read loads afresh.
    ///
    /// `key` may be any borrowed form of `K` that makes a `K` with `to_owned`, such as a
    /// `&str` for a `String` key (see [borrowed keys](Cache#borrowed-keys)).
    ///
    /// ```
    /// let cache: deferred_cache::Cache<u8, String> = deferred_cache::Cache::new();
    /// cache.insert(1, "one".to_string());
    /// assert_eq!(cache.remove(&1), Some("one".to_string()));
    /// assert_eq!(cache.remove(&1), None);
    /// assert_eq!(cache.stats().invalidated, 1);
    ///
    /// let names: deferred_cache::Cache<String, u8> = deferred_cache::Cache::new();
    /// names.insert("ada".to_string(), 36);
    /// assert_eq!(names.remove("ada"), Some(36));
    /// ```
    pub fn remove<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        self.remove_hashed(self.hash(key), key)
    }

    /// As [`remove`](Self::remove), with the key's hash given: `hash` must be
    /// `self.hash(key)` (see [`hash`](Self::hash)).
    #[doc(hidden)]
    pub fn remove_hashed<Q>(&self, hash: u64, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Eq + ToOwned<Owned = K> + ?Sized,
    {
        let old = self.remove_entry(hash, key)?;
        let value = old.get().map(|stored| stored.value.clone());
        drop(old);
        value
    }

    /// Removes the entry at `key` (whose hash is `hash`), value or load in flight, with the
    /// books kept; returns its cell.
    fn remove_entry<Q>(&self, hash: u64, key: &Q) -> Option<CacheCell<V, E>>
    where
        K: Borrow<Q>,
        Q: Eq + ToOwned<Owned = K> + ?Sized,
    {
        let old = self.inner.map.remove_hashed(hash, key)?;
        self.retire(hash, &old);
        self.inner.counters.invalidated(1);
        self.notify_borrowed(key, &old, RemovalCause::Explicit);
        Some(old)
    }

    /// The loaded entries, as `(key, value)` clones, without counting reads or recording
    /// uses. Loads in flight are skipped.
    ///
    /// **Weakly consistent**, as the iterators of concurrent maps are: the entries are
    /// copied one shard at a time, each shard under its read lock for as long as cloning its
    /// keys and value handles takes, so the result is not one instant of the whole cache.
    /// An entry present for the whole call is seen exactly once; one inserted, replaced or
    /// removed meanwhile may or may not be. No key is seen twice.
    ///
    /// Why a snapshot and not a lazy iterator over the live tables: no lock is held while
    /// the caller works through the entries (it may touch the cache, block or await in its
    /// loop), and a slow consumer holds no writer up. The cost is one copy of the entries,
    /// which the cheap clones this cache asks of values (wrap large ones in `Arc`) keep
    /// small. [`Iter`] is its own type, so that a lazier walk can come without an API
    /// change.
    ///
    /// ```
    /// let cache: deferred_cache::Cache<u8, u8> = deferred_cache::Cache::new();
    /// cache.insert(1, 10);
    /// cache.insert(2, 20);
    /// let mut all: Vec<(u8, u8)> = cache.iter().collect();
    /// all.sort();
    /// assert_eq!(all, [(1, 10), (2, 20)]);
    /// assert_eq!(cache.stats().hits, 0);
    /// ```
    pub fn iter(&self) -> Iter<K, V> {
        let mut entries = Vec::new();
        // `for_each` hands each shard's snapshot to the closure with no lock held.
        self.inner.map.for_each(|key, cell| {
            if let Some(stored) = cell.get() {
                entries.push((key.clone(), stored.value.clone()));
            }
        });
        Iter {
            entries: entries.into_iter(),
        }
    }

    /// Keeps only the loaded values for which `keep(key, value)` says `true`; removes the
    /// others as [`invalidate`](Self::invalidate) does (counted in [`Stats::invalidated`],
    /// told to the listener as [`RemovalCause::Explicit`]). Loads in flight are not values:
    /// they are kept, and `keep` is not called for them.
    ///
    /// `keep` runs with no lock held, on a snapshot of each shard (weakly consistent, as
    /// [`iter`](Self::iter)): a value replaced after `keep` saw it is not removed.
    ///
    /// If `keep` panics, it is not called again: the values it said `false` to before are
    /// removed (counted and told as above), the others stay, and then the panic propagates.
    ///
    /// ```
    /// let cache: deferred_cache::Cache<u8, u8> = deferred_cache::Cache::new();
    /// for k in 0..10 {
    ///     cache.insert(k, k * 10);
    /// }
    /// cache.retain(|_, v| *v >= 50);
    /// assert_eq!(cache.len(), 5);
    /// assert_eq!(cache.stats().invalidated, 5);
    /// ```
    ///
    /// [`Stats::invalidated`]: crate::Stats::invalidated
    pub fn retain(&self, mut keep: impl FnMut(&K, &V) -> bool) {
        self.invalidate_entries_if(|k, v| !keep(k, v));
    }

    /// Removes the loaded values for which `pred(key, value)` says `true`, as
    /// [`invalidate`](Self::invalidate) does (counted in [`Stats::invalidated`], told as
    /// [`RemovalCause::Explicit`]); returns how many it removed. Loads in flight are not
    /// values: they stay, and `pred` is not called for them. `pred` runs with no lock held,
    /// on a snapshot of each shard, as in [`retain`](Self::retain).
    ///
    /// If `pred` panics, it is not called again: the values it said `true` to before are
    /// removed, counted and told as above, the others stay, and then the panic propagates.
    ///
    /// ```
    /// let cache: deferred_cache::Cache<String, u32> = deferred_cache::Cache::new();
    /// cache.insert("user:1".into(), 1);
    /// cache.insert("user:2".into(), 2);
    /// cache.insert("team:1".into(), 1);
    /// assert_eq!(cache.invalidate_entries_if(|k, _| k.starts_with("user:")), 2);
    /// assert_eq!(cache.len(), 1);
    /// ```
    ///
    /// [`Stats::invalidated`]: crate::Stats::invalidated
    pub fn invalidate_entries_if(&self, mut pred: impl FnMut(&K, &V) -> bool) -> usize {
        // `extract_if` goes shard by shard: a panic in `pred` unwinding through it would drop
        // the entries of the shards already done, out of the map but not off the books. So
        // the panic is caught here: `pred` is not called again, the entries it already said
        // `true` to are removed and booked as usual, and then the panic goes on.
        let mut panicked = None;
        let gone = self.inner.map.extract_if(|key, cell| {
            if panicked.is_some() {
                return false;
            }
            let Some(stored) = cell.get() else {
                return false;
            };
            match panic::catch_unwind(AssertUnwindSafe(|| pred(key, &stored.value))) {
                Ok(remove) => remove,
                Err(payload) => {
                    panicked = Some(payload);
                    false
                }
            }
        });
        // As in `invalidate_all`: off the policy's books once out of the map.
        for (key, cell) in &gone {
            self.retire(self.hash(key), cell);
        }
        self.inner.counters.invalidated(gone.len() as u64);
        for (key, cell) in &gone {
            self.notify(key, cell, RemovalCause::Explicit);
        }
        let removed = gone.len();
        drop(gone);
        if let Some(payload) = panicked {
            panic::resume_unwind(payload);
        }
        removed
    }

    /// Removes every entry. Loads in flight go on for the callers already waiting on them;
    /// their values are not stored. Entries added while it runs may stay.
    ///
    /// ```
    /// let cache: deferred_cache::Cache<u8, u8> = deferred_cache::Cache::bounded(8);
    /// cache.insert(1, 1);
    /// cache.invalidate_all();
    /// assert!(cache.is_empty());
    /// assert_eq!(cache.weighted_size(), Some(0));
    /// ```
    pub fn invalidate_all(&self) {
        // Each value is taken off the policy's books only once it is out of the map, as
        // `invalidate` does: retired before, a load that completed and was admitted in
        // between would leave without being retired, its weight counted for good.
        let gone = self.inner.map.extract_if(|_, _| true);
        for (key, cell) in &gone {
            self.retire(self.hash(key), cell);
        }
        if let Some(policy) = &self.inner.policy {
            policy.purge();
        }
        self.inner.counters.invalidated(gone.len() as u64);
        for (key, cell) in &gone {
            self.notify(key, cell, RemovalCause::Explicit);
        }
    }

    /// The value at `key` seen through a reference, for reads that want part of a value, or
    /// decide whether it counts: `f` runs on the value if it is present and loaded, and what
    /// it returns is the result. `Some` counts a hit and records a use; `None` (or no value)
    /// counts a miss. `f` runs under the key's shard lock (shared with other readers): keep
    /// it short, and never touch this cache from inside it.
    ///
    /// `key` may be any borrowed form of `K`, such as a `&str` for a `String` key (see
    /// [borrowed keys](Cache#borrowed-keys)).
    ///
    /// ```
    /// let cache: deferred_cache::Cache<u8, String> = deferred_cache::Cache::new();
    /// cache.insert(1, "hello".to_string());
    /// assert_eq!(cache.get_if_present_with(&1, |s| Some(s.len())), Some(5));
    /// assert_eq!(cache.get_if_present_with(&1, |s| s.strip_prefix("x").map(str::len)), None);
    /// assert_eq!((cache.stats().hits, cache.stats().misses), (1, 1));
    ///
    /// let names: deferred_cache::Cache<String, u8> = deferred_cache::Cache::new();
    /// names.insert("ada".to_string(), 36);
    /// assert_eq!(names.get_if_present_with("ada", |age| Some(*age)), Some(36));
    /// ```
    pub fn get_if_present_with<Q, R>(&self, key: &Q, f: impl FnOnce(&V) -> Option<R>) -> Option<R>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.get_if_present_with_hashed(self.hash(key), key, f)
    }

    /// As [`get_if_present_with`](Self::get_if_present_with), with the key's hash given: `hash` must be
    /// `self.hash(key)` (see [`hash`](Self::hash)).
    #[doc(hidden)]
    pub fn get_if_present_with_hashed<Q, R>(
        &self,
        hash: u64,
        key: &Q,
        f: impl FnOnce(&V) -> Option<R>,
    ) -> Option<R>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        let found = self.read_with_hashed(hash, key, f);
        match found {
            Some(_) => self.inner.counters.hit(),
            None => self.inner.counters.miss(false),
        }
        found
    }

    /// As [`get_if_present_with`](Self::get_if_present_with), but `None` counts nothing:
    /// for a layer that goes on to [`get_with`](Self::get_with) on a miss, which counts the
    /// miss itself.
    ///
    /// `key` may be any borrowed form of `K`, such as a `&str` for a `String` key (see
    /// [borrowed keys](Cache#borrowed-keys)).
    ///
    /// ```
    /// let cache: deferred_cache::Cache<u8, u8> = deferred_cache::Cache::new();
    /// assert_eq!(cache.hit_with(&1, |v| Some(*v)), None);
    /// cache.insert(1, 10);
    /// assert_eq!(cache.hit_with(&1, |v| Some(*v)), Some(10));
    /// assert_eq!((cache.stats().hits, cache.stats().misses), (1, 0));
    ///
    /// let names: deferred_cache::Cache<String, u8> = deferred_cache::Cache::new();
    /// names.insert("ada".to_string(), 36);
    /// assert_eq!(names.hit_with("ada", |age| Some(*age)), Some(36));
    /// ```
    pub fn hit_with<Q, R>(&self, key: &Q, f: impl FnOnce(&V) -> Option<R>) -> Option<R>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.hit_with_hashed(self.hash(key), key, f)
    }

    /// As [`hit_with`](Self::hit_with), with the key's hash given: `hash` must be
    /// `self.hash(key)` (see [`hash`](Self::hash)).
    #[doc(hidden)]
    pub fn hit_with_hashed<Q, R>(
        &self,
        hash: u64,
        key: &Q,
        f: impl FnOnce(&V) -> Option<R>,
    ) -> Option<R>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        let found = self.read_with_hashed(hash, key, f);
        if found.is_some() {
            self.inner.counters.hit();
        }
        found
    }

    /// Removes the value at `key` if `pred` says so for it, atomically (nothing can replace
    /// the value between the test and the removal); returns whether it did. A load in flight
    /// is not a value: it is never removed here. `pred` runs under the key's shard lock:
    /// keep it short, and never touch this cache from inside it.
    ///
    /// `key` may be any borrowed form of `K` that makes a `K` with `to_owned`, such as a
    /// `&str` for a `String` key (see [borrowed keys](Cache#borrowed-keys)).
    ///
    /// ```
    /// let cache: deferred_cache::Cache<u8, u8> = deferred_cache::Cache::new();
    /// cache.insert(1, 10);
    /// assert!(!cache.invalidate_if(&1, |v| *v == 11));
    /// assert!(cache.invalidate_if(&1, |v| *v == 10));
    /// assert_eq!(cache.stats().invalidated, 1);
    ///
    /// let names: deferred_cache::Cache<String, u8> = deferred_cache::Cache::new();
    /// names.insert("ada".to_string(), 36);
    /// assert!(names.invalidate_if("ada", |age| *age == 36));
    /// ```
    pub fn invalidate_if<Q>(&self, key: &Q, pred: impl FnOnce(&V) -> bool) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        self.remove_where(self.hash(key), key, pred, RemovalCause::Explicit)
    }

    /// As [`invalidate_if`](Self::invalidate_if), with the key's hash given: `hash` must be
    /// `self.hash(key)` (see [`hash`](Self::hash)).
    #[doc(hidden)]
    pub fn invalidate_if_hashed<Q>(&self, hash: u64, key: &Q, pred: impl FnOnce(&V) -> bool) -> bool
    where
        K: Borrow<Q>,
        Q: Eq + ToOwned<Owned = K> + ?Sized,
    {
        self.remove_where(hash, key, pred, RemovalCause::Explicit)
    }

    /// As [`invalidate_if`](Self::invalidate_if), but counted as an expiry
    /// ([`Stats::expired`]) and told to the listener as [`RemovalCause::Expired`]: for a
    /// layer that expires values, removing exactly the value whose deadline passed and never
    /// one that replaced it. `key` may be a borrowed form of `K`, as for `invalidate_if`.
    ///
    /// ```
    /// let cache: deferred_cache::Cache<u8, (u8, u64)> = deferred_cache::Cache::new();
    /// cache.insert(1, (10, 5)); // a value and its deadline
    /// let now = 7;
    /// assert!(cache.expire_if(&1, |(_, deadline)| *deadline <= now));
    /// assert_eq!(cache.stats().expired, 1);
    ///
    /// let names: deferred_cache::Cache<String, u64> = deferred_cache::Cache::new();
    /// names.insert("ada".to_string(), 5);
    /// assert!(names.expire_if("ada", |deadline| *deadline <= now));
    /// ```
    pub fn expire_if<Q>(&self, key: &Q, pred: impl FnOnce(&V) -> bool) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        self.remove_where(self.hash(key), key, pred, RemovalCause::Expired)
    }

    /// As [`expire_if`](Self::expire_if), with the key's hash given: `hash` must be
    /// `self.hash(key)` (see [`hash`](Self::hash)).
    #[doc(hidden)]
    pub fn expire_if_hashed<Q>(&self, hash: u64, key: &Q, pred: impl FnOnce(&V) -> bool) -> bool
    where
        K: Borrow<Q>,
        Q: Eq + ToOwned<Owned = K> + ?Sized,
    {
        self.remove_where(hash, key, pred, RemovalCause::Expired)
    }

    /// Puts `value` at `key` in place of the value there, if there is one and `pred` says
    /// so for it, atomically: a compare-and-swap by key, for a refresh that must not
    /// overwrite a write made while it ran. Returns whether it replaced; `value` is dropped
    /// if not. A load in flight is never replaced.
    ///
    /// `key` may be any borrowed form of `K` that makes a `K` with `to_owned`, such as a
    /// `&str` for a `String` key (see [borrowed keys](Cache#borrowed-keys)).
    /// (The owned key is made only for a bounded cache, whose eviction queue holds keys, or
    /// for a listener; the key stored stays the one already there.)
    ///
    /// ```
    /// let cache: deferred_cache::Cache<u8, u8> = deferred_cache::Cache::new();
    /// cache.insert(1, 10);
    /// assert!(cache.replace_if(&1, 11, |v| *v == 10));
    /// assert!(!cache.replace_if(&1, 12, |v| *v == 10)); // 11 is there now
    /// assert!(!cache.replace_if(&2, 12, |_| true)); // absent
    /// assert_eq!(cache.peek(&1), Some(11));
    ///
    /// let names: deferred_cache::Cache<String, u8> = deferred_cache::Cache::bounded(10);
    /// names.insert("ada".to_string(), 36);
    /// assert!(names.replace_if("ada", 37, |age| *age == 36));
    /// assert_eq!(names.peek("ada"), Some(37));
    /// ```
    pub fn replace_if<Q>(&self, key: &Q, value: V, pred: impl FnOnce(&V) -> bool) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        self.replace_if_hashed(self.hash(key), key, value, pred)
    }

    /// As [`replace_if`](Self::replace_if), with the key's hash given: `hash` must be
    /// `self.hash(key)` (see [`hash`](Self::hash)).
    #[doc(hidden)]
    pub fn replace_if_hashed<Q>(
        &self,
        hash: u64,
        key: &Q,
        value: V,
        pred: impl FnOnce(&V) -> bool,
    ) -> bool
    where
        K: Borrow<Q>,
        Q: Eq + ToOwned<Owned = K> + ?Sized,
    {
        // An owned key only for what takes one: the weigher (when bounded) and the
        // listener. Without either, a borrowed key allocates nothing.
        let owned = (self.weighs() || self.inner.listener.is_some()).then(|| key.to_owned());
        let weight = match &owned {
            Some(owned) => self.weigh(owned, &value),
            None => Some(1), // no weigher: every value weighs one
        };
        let cell = Lazy::ready(Stored::new(value));
        let swapped = self
            .inner
            .map
            .replace_if_hashed(hash, key, cell.clone(), |old| {
                old.get().is_some_and(|stored| pred(&stored.value))
            });
        let Ok(old) = swapped else { return false };
        self.retire(hash, &old);
        self.inner.counters.invalidated(1);
        if let Some(owned) = &owned {
            self.notify(owned, &old, RemovalCause::Replaced);
        }
        drop(old);
        self.admit(hash, &cell, weight);
        true
    }

    fn remove_where<Q>(
        &self,
        hash: u64,
        key: &Q,
        pred: impl FnOnce(&V) -> bool,
        cause: RemovalCause,
    ) -> bool
    where
        K: Borrow<Q>,
        Q: Eq + ToOwned<Owned = K> + ?Sized,
    {
        let removed = self.inner.map.remove_if_hashed(hash, key, |cell| {
            cell.get().is_some_and(|stored| pred(&stored.value))
        });
        let Some(old) = removed else { return false };
        self.retire(hash, &old);
        trace::removed(hash, cause);
        if cause == RemovalCause::Expired {
            self.inner.counters.expired(1);
        } else {
            self.inner.counters.invalidated(1);
        }
        self.notify_borrowed(key, &old, cause);
        drop(old);
        true
    }

    /// Books a value that left the map by another way than the cache's removals (a blocking
    /// load's entry taken out just as `get_or_insert_with` settled it): off the policy's
    /// books, counted as invalidated, told to the listener as `cause`.
    pub(crate) fn book_removed(
        &self,
        key: &K,
        hash: u64,
        cell: &CacheCell<V, E>,
        cause: RemovalCause,
    ) {
        self.retire(hash, cell);
        self.inner.counters.invalidated(1);
        self.notify(key, cell, cause);
    }

    /// Tells the listener, if any, that the value in `cell` left the cache. No lock held.
    ///
    /// A panic in the listener is caught here and counted (`Stats::listener_panics`; the
    /// panic hook has printed it already), never let out: the operation that removed the
    /// value finishes its bookkeeping and the rest of its removals, whatever the listener
    /// does, and the listener is called again for the next removal.
    fn notify(&self, key: &K, cell: &CacheCell<V, E>, cause: RemovalCause) {
        if let (Some(listener), Some(stored)) = (&self.inner.listener, cell.get()) {
            if caught(|| listener(key, &stored.value, cause)).is_none() {
                self.inner.counters.listener_panicked();
            }
        }
    }

    /// [`notify`](Self::notify) for a removal by a borrowed key: the listener takes a `&K`,
    /// so the key is made owned (`to_owned`), but only when there is a listener to tell and
    /// a value that left.
    fn notify_borrowed<Q>(&self, key: &Q, cell: &CacheCell<V, E>, cause: RemovalCause)
    where
        Q: ToOwned<Owned = K> + ?Sized,
    {
        if self.inner.listener.is_some() && cell.get().is_some() {
            self.notify(&key.to_owned(), cell, cause);
        }
    }

    /// Reads the value at `key` for a hit, recording the use.
    #[inline]
    pub(crate) fn read<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.read_hashed(self.hash(key), key)
    }

    /// As [`read`](Self::read), with the key's hash given (`self.hash(key)`).
    #[inline]
    pub(crate) fn read_hashed<Q>(&self, hash: u64, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        // Cloned under the shard lock, as `DeferredMap::try_get` does: taking a handle to
        // clone after unlocking would bounce the cell's reference count between readers.
        self.read_with_hashed(hash, key, |value| Some(value.clone()))
    }

    /// Runs `f` on the value at `key` (whose hash is `hash`) under the shard lock, recording a
    /// use if it says `Some`.
    #[inline]
    fn read_with_hashed<Q, R>(
        &self,
        hash: u64,
        key: &Q,
        f: impl FnOnce(&V) -> Option<R>,
    ) -> Option<R>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        self.inner
            .map
            .try_get_with_hashed(hash, key, |outcome| match outcome {
                Ok(stored) => {
                    let found = f(&stored.value);
                    if found.is_some() {
                        stored.meta.touch();
                    }
                    found
                }
                Err(_) => None,
            })
            .flatten()
    }

    /// Whether values are weighed (bounded, with a weigher): the one use admission has for
    /// a key.
    pub(crate) fn weighs(&self) -> bool {
        self.inner.policy.is_some() && self.inner.weigher.is_some()
    }

    /// The weight of `value`, or `None` if the weigher panicked (caught and counted here:
    /// the caller refuses the value, whose weight is unknown). Without a capacity the
    /// weigher has no effect, and is not called.
    fn weigh(&self, key: &K, value: &V) -> Option<u32> {
        match (&self.inner.policy, &self.inner.weigher) {
            (Some(_), Some(weigher)) => {
                let weight = caught(|| weigher(key, value));
                if weight.is_none() {
                    self.inner.counters.weigher_panicked();
                }
                weight
            }
            _ => Some(1),
        }
    }

    /// The hash of a key, or of a borrowed form of it: the map's hasher over `key`, so that
    /// the policy's books (its shards and ghost hashes) see one hash per key whichever form
    /// it came in (`K: Borrow<Q>` promises that `Q` hashes as `K` does).
    ///
    /// The hash that the `*_hashed` variants of the methods take: for layers built on this
    /// cache, which hash a key once per operation and pass the hash down; not part of the
    /// stable API. A wrong hash makes such a call miss the entry, or put it where lookups by
    /// key do not find it (never unsoundness).
    #[doc(hidden)]
    #[inline]
    pub fn hash<Q: Hash + ?Sized>(&self, key: &Q) -> u64 {
        self.inner.map.hasher().hash_one(key)
    }

    /// Takes a value that left the map (invalidated or replaced) off the policy's books.
    fn retire(&self, hash: u64, old: &CacheCell<V, E>) {
        if let Some(policy) = &self.inner.policy {
            policy.retire(hash, old);
        }
    }

    /// Counts the value that a load just put in `cell` against capacity, evicting as
    /// needed. Any caller that saw the value may call this; the first one that gets here
    /// admits it, if it is still the key's value.
    /// `hash` is the key's (`self.hash(&key)`), computed once by the caller's operation.
    /// `key` is needed only for the weigher: a caller may pass `None` when the cache does
    /// not [`weigh`](Self::weighs) its values.
    pub(crate) fn admit_loaded(&self, key: Option<&K>, hash: u64, cell: &CacheCell<V, E>) {
        let Some(stored) = cell.get() else { return };
        if self.inner.policy.is_none() || !Policy::<V, E>::needs_admission(&stored.meta) {
            return;
        }
        // Still the key's value? An invalidate or insert may have replaced it while it
        // loaded, and a removal of a pending cell has no value to take off the books (its
        // `retire` finds none), so a value that left before this check must not be
        // admitted. One that leaves after it is retired under the policy lock, which
        // `admit` sees. The cell is the entry's identity: no key comparison.
        if !self.inner.map.contains_cell_hashed(hash, cell) {
            return;
        }
        let weight = match key {
            Some(key) => self.weigh(key, &stored.value),
            None => {
                debug_assert!(
                    !self.weighs(),
                    "admit_loaded: a weighed value needs its key"
                );
                Some(1)
            }
        };
        self.admit(hash, cell, weight);
    }

    /// Admits the complete value in `cell`, the entry at the key of `hash`, unless it was
    /// admitted or removed already; evicts, then removes the victims from the map and tells
    /// the listener.
    ///
    /// `cell` must have been complete before it went into the map (as `insert` and
    /// `replace_if` make it), or checked to be in the map since it completed (as
    /// `admit_loaded` does): then every removal of it from the map retires it afterwards
    /// (every removal path calls `retire` on what it took out), and `retire` marks it
    /// REMOVED under the policy lock that `Policy::admit` takes, so a removed value is
    /// never admitted, and one removed after its admission is taken off the books.
    fn admit(&self, hash: u64, cell: &CacheCell<V, E>, weight: Option<u32>) {
        let Some(policy) = &self.inner.policy else {
            return;
        };
        let mut evicted: Vec<Evicted<V, E>> = Vec::new();
        policy.admit(hash, cell, weight, &mut evicted);
        let mut removed = 0;
        for out in &evicted {
            // Found by its hash and cell; the map hands back the victim's key.
            if let Some(key) = self.inner.map.remove_cell_hashed(out.hash, &out.cell) {
                removed += 1;
                trace::removed(out.hash, RemovalCause::Size);
                self.notify(&key, &out.cell, RemovalCause::Size);
            }
        }
        self.inner.counters.evicted(removed);
        // Values are dropped here, with no lock held.
        drop(evicted);
    }
}

/// Runs user code that must not unwind through the cache's bookkeeping (a listener, a
/// weigher): `None` if it panicked. The panic hook has reported the panic already.
fn caught<R>(f: impl FnOnce() -> R) -> Option<R> {
    match panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => Some(r),
        Err(payload) => {
            // The payload is user code too: a `Drop` that panics stays in here as well (and
            // its own payload is leaked rather than dropped, to end the regress).
            if let Err(again) = panic::catch_unwind(AssertUnwindSafe(move || drop(payload))) {
                std::mem::forget(again);
            }
            None
        }
    }
}

/// The future stored in an entry: the user's load (its error already a `Failure`), with
/// the counters kept, run inside its span `trace`.
pub(crate) fn load<V, E, Fut>(
    fut: Fut,
    counters: Arc<Counters>,
    trace: trace::Load,
) -> impl Future<Output = Result<Stored<V>, Failure<E>>> + Send + 'static
where
    Fut: Future<Output = Result<V, Failure<E>>> + Send + 'static,
    V: Send + 'static,
    E: Send + Sync + 'static,
{
    let watch = LoadWatch {
        counters,
        started: None,
        trace,
    };
    async move {
        let mut watch = watch;
        watch.started = Some(Instant::now());
        watch.trace.start();
        let result = watch.trace.instrument(fut).await;
        watch.finish(match &result {
            Ok(_) => Outcome::Ok,
            Err(Failure::Error(_)) => Outcome::Failed,
            Err(Failure::Absent) => Outcome::Absent,
        });
        result.map(Stored::new)
    }
}

/// Counts how a load ended: finished, or dropped (unwinding from a panic, or abandoned).
struct LoadWatch {
    counters: Arc<Counters>,
    /// When the load was first polled; `None` before, and after it was counted.
    started: Option<Instant>,
    trace: trace::Load,
}

impl LoadWatch {
    fn finish(&mut self, outcome: Outcome) {
        if let Some(started) = self.started.take() {
            let took = started.elapsed();
            self.counters.load(outcome, Some(took));
            self.trace.finish(outcome, took);
        }
    }
}

impl Drop for LoadWatch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.finish(Outcome::Panicked);
        } else if let Some(started) = self.started.take() {
            // Dropped after it started, before it ended: every caller went away.
            self.counters.load(Outcome::Cancelled, None);
            self.trace.finish(Outcome::Cancelled, started.elapsed());
        }
    }
}

/// The entries of a cache, from [`Cache::iter`]: `(key, value)` clones from a weakly
/// consistent snapshot. It holds no lock and no reference to the cache.
///
/// ```
/// let cache: deferred_cache::Cache<u8, u8> = deferred_cache::Cache::new();
/// cache.insert(1, 10);
/// let iter = cache.iter();
/// cache.invalidate_all(); // the snapshot is the caller's
/// assert_eq!(iter.collect::<Vec<_>>(), [(1, 10)]);
/// ```
pub struct Iter<K, V> {
    entries: std::vec::IntoIter<(K, V)>,
}

impl<K, V> Iterator for Iter<K, V> {
    type Item = (K, V);

    fn next(&mut self) -> Option<(K, V)> {
        self.entries.next()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.entries.size_hint()
    }
}

impl<K, V> ExactSizeIterator for Iter<K, V> {}

/// A snapshot made from `(key, value)` pairs: how the layers above (the expiring cache)
/// hand out theirs.
///
/// ```
/// let iter: deferred_cache::Iter<u8, u8> = [(1, 10), (2, 20)].into_iter().collect();
/// assert_eq!(iter.len(), 2);
/// ```
impl<K, V> FromIterator<(K, V)> for Iter<K, V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(pairs: I) -> Self {
        Iter {
            entries: pairs.into_iter().collect::<Vec<_>>().into_iter(),
        }
    }
}

impl<K, V> core::iter::FusedIterator for Iter<K, V> {}

impl<K: fmt::Debug, V: fmt::Debug> fmt::Debug for Iter<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.entries.as_slice()).finish()
    }
}

impl<K, V, E, S> fmt::Debug for Cache<K, V, E, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("len", &self.inner.map.len())
            .field("policy", &self.inner.policy)
            .field("stats", &self.inner.counters.snapshot())
            .finish_non_exhaustive()
    }
}
