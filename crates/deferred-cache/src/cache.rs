//! `Cache`: single-flight loads on the cache's own `Store`, with S3-FIFO capacity and
//! counters.

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

use crate::{
    error::Failure,
    listener::Listener,
    stats::{Counters, Outcome, Stats},
    store::Store,
    trace, Builder, Key, RemovalCause, Shared, Value,
};

/// How much of the capacity a value takes.
pub(crate) type Weigher<K, V> = Box<dyn Fn(&K, &V) -> u32 + Send + Sync>;

/// A concurrent loading cache: N callers that miss one key at the same time run one load,
/// and every one of them gets its outcome.
///
/// * **Single flight.** The load lives in the key's entry (a `deferred-core` cell, kept
///   only while it is in flight) and is driven by whichever waiting caller is polled, so a caller
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
///   a `&K`. A removal tells the listener the key its entry kept, moved out with the value
///   (no copy); `replace_if` keeps the entry's key, so `key.to_owned()` is made for it, and
///   only when one is there to be given it (a weigher, or a listener).
///
/// As with `HashMap`, `Q`'s `Hash` and `Eq` must agree with `K`'s (the [`Borrow`] contract,
/// which `String`/`str`, `Vec<T>`/`[T]` and `K`/`K` keep), and `to_owned` must give a key
/// equal to the borrowed one. The cache hashes the borrowed form with the same hasher as
/// the stored key, for the table and for the eviction policy's books alike. If a type breaks
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

/// What the handles of one cache share: the store (its table, books, weigher, listener
/// and counters).
pub(crate) type Inner<K, V, E, S> = Store<K, V, E, S>;

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
        Cache {
            inner: Arc::new(Store::new(
                initial_capacity,
                hasher,
                capacity,
                weigher,
                listener,
            )),
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
        self.inner.capacity()
    }

    /// The number of entries: values, and loads in flight. A snapshot.
    ///
    /// ```
    /// let cache: deferred_cache::Cache<u8, u8> = deferred_cache::Cache::new();
    /// cache.insert(1, 1);
    /// assert_eq!(cache.len(), 1);
    /// ```
    pub fn len(&self) -> usize {
        self.inner.len()
    }

    /// Whether the cache has no entries.
    ///
    /// ```
    /// let cache: deferred_cache::Cache<u8, u8> = deferred_cache::Cache::new();
    /// assert!(cache.is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.inner.len() == 0
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
        self.inner.weight()
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
        // Weighed before the lock is taken (the weigher is user code).
        let weight = self.inner.weigh(&key, &value);
        self.inner.put_absent(hash, key, value, weight)
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
            .read(self.hash(key), key, false, |v| Some(v.clone()))
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
        self.inner.read(hash, key, false, |v| Some(f(v)))
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
            .read(self.hash(key), key, false, |_| Some(()))
            .is_some()
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
        // Weighed before the lock is taken (the weigher is user code).
        let weight = self.inner.weigh(&key, &value);
        self.inner.insert(hash, key, value, weight);
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
        self.inner
            .remove(hash, key, |_| true, RemovalCause::Explicit, true)
            .flatten()
    }

    /// Removes the entry at `key` (whose hash is `hash`), value or load in flight, with the
    /// books kept; returns whether there was one.
    fn remove_entry<Q>(&self, hash: u64, key: &Q) -> Option<()>
    where
        K: Borrow<Q>,
        Q: Eq + ToOwned<Owned = K> + ?Sized,
    {
        self.inner
            .remove(hash, key, |_| true, RemovalCause::Explicit, false)
            .map(drop)
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
        Iter {
            entries: self.inner.snapshot().into_iter(),
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
    pub fn invalidate_entries_if(&self, pred: impl FnMut(&K, &V) -> bool) -> usize {
        self.inner.remove_all_if(pred)
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
        self.inner.clear();
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
        let weighs = self.inner.weighs();
        let listens = self.inner.has_listener();
        let owned = (weighs || listens).then(|| key.to_owned());
        let weight = match &owned {
            Some(owned) if weighs => self.inner.weigh(owned, &value),
            _ => self.inner.weigh_loaded(None, &value),
        };
        let told = owned.filter(|_| listens);
        self.inner.replace_if(hash, key, value, weight, told, pred)
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
        // A load in flight is not a value: never removed here. `pred` is asked once, of the
        // key's value.
        let mut pred = Some(pred);
        let matches = |v: Option<&V>| v.is_some_and(|v| pred.take().is_some_and(|p| p(v)));
        self.inner
            .remove(hash, key, matches, cause, false)
            .is_some()
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
        // Cloned under the shard's read lock: the value is inline in the table's slot.
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
        self.inner.read(hash, key, true, f)
    }

    /// The hash of a key, or of a borrowed form of it: the store's hasher over `key`, so that
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
        self.inner.hash(key)
    }
}

/// Runs user code that must not unwind through the cache's bookkeeping (a listener, a
/// weigher): `None` if it panicked. The panic hook has reported the panic already.
pub(crate) fn caught<R>(f: impl FnOnce() -> R) -> Option<R> {
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
) -> impl Future<Output = Result<V, Failure<E>>> + Send + 'static
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
        result
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
            .field("len", &self.inner.len())
            .field("store", &self.inner)
            .field("stats", &self.inner.counters.snapshot())
            .finish_non_exhaustive()
    }
}
