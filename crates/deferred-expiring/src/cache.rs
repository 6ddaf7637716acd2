//! `ExpiringCache`: `deferred-cache` with deadlines, reclaimed through a timer wheel.

mod read;
mod reclaim;
mod refresh;
mod write;

use std::{
    collections::{hash_map::RandomState, VecDeque},
    convert::Infallible,
    fmt,
    future::Future,
    pin::Pin,
    sync::{atomic::AtomicUsize, Arc},
    time::Duration,
};

use deferred_cache::{Cache, RemovalCause, Stats};

use crate::{
    clock::{Clock, SystemClock},
    expiry::{Policy, NEVER},
    loom::{lock, AtomicU64, Mutex, Ordering::*},
    timer::{TimerHandle, TimerWheel},
    ExpiringBuilder, ExpiringHasher, ExpiringKey, Shared, Value,
};

// Named in docs only.
#[cfg(doc)]
use std::borrow::Borrow;

pub(crate) use self::read::{Read, ReadFor};

/// Nanoseconds per wheel tick, as a shift: 2^20 ns, about a millisecond.
pub(crate) const TICK_SHIFT: u32 = 20;

/// The resolution of reclamation (one timer-wheel tick, 2^20 ns, about 1.05 ms): an expired
/// entry that no one reads is removed, and told to the listener, by the first operation
/// once this much time has passed after its deadline's tick began. Visibility does not
/// wait for it: a read compares the exact deadline with the clock.
///
/// ```
/// assert_eq!(deferred_expiring::TICK.as_nanos(), 1 << 20);
/// ```
pub const TICK: Duration = Duration::from_nanos(1 << TICK_SHIFT);

/// The tick a deadline fires on: the first tick that starts at or after it, so that a
/// timer never fires before its deadline.
fn tick_at_or_after(nanos: u64) -> u64 {
    nanos.div_ceil(1 << TICK_SHIFT)
}

/// The tick that `now` is in.
fn tick_of(now: u64) -> u64 {
    now >> TICK_SHIFT
}

/// A boxed future that resolves a load, as a cache-wide loader returns it.
pub type BoxLoad<V, E> = Pin<Box<dyn Future<Output = Result<V, E>> + Send>>;

/// A cache-wide loader.
pub(crate) type DynLoader<K, V, E> = Arc<dyn Fn(&K) -> BoxLoad<V, E> + Send + Sync>;

/// A task handed to a spawner: a refresh.
pub type Task = Pin<Box<dyn Future<Output = ()> + Send>>;

pub(crate) type Spawner = Box<dyn Fn(Task) + Send + Sync>;

pub(crate) type UserListener<K, V> = Arc<dyn Fn(&K, &V, RemovalCause) + Send + Sync>;

/// What the inner cache stores: a value (or a cached error) with its deadlines. In
/// declaration order (`repr(C)`): what a hit reads first, what only writes and maintenance
/// read last, so that a hit touches as few cache lines as the value allows.
#[repr(C)]
pub(crate) struct Entry<V, E> {
    /// Nanoseconds on the cache's clock; `NEVER` if it does not expire. Moves on reads
    /// under time-to-idle or an `Expiry` policy.
    pub(crate) deadline: AtomicU64,
    /// When a read starts a refresh; `NEVER` if none is due, and while one runs (the read
    /// that starts it swaps this to `NEVER`, so only one does).
    refresh_at: AtomicU64,
    /// The time-to-live cap on `deadline`.
    hard: u64,
    pub(crate) slot: Result<V, Arc<E>>,
    /// Which write made it: expiry and refresh act only on the entry they were for.
    pub(crate) id: u64,
    /// Its timer in the wheel (`TimerHandle` bits), `NEVER` if none.
    pub(crate) timer: AtomicU64,
}

impl<V: Clone, E> Clone for Entry<V, E> {
    /// A snapshot for a caller (the inner cache hands out clones), or the copy the inner
    /// cache stores (`get_with_blocking` and `get_or_insert_with` store a clone of the entry
    /// made here): it keeps the timer handle, so that the listener cancels the timer of
    /// whichever copy is removed. A handle on a snapshot is never acted on while its entry
    /// is stored (only the stored entry's timer is swapped, under the shard lock), and a
    /// stale one cancels nothing.
    fn clone(&self) -> Self {
        Entry {
            slot: self.slot.clone(),
            id: self.id,
            deadline: AtomicU64::new(self.deadline.load(Acquire)),
            hard: self.hard,
            refresh_at: AtomicU64::new(self.refresh_at.load(Relaxed)),
            timer: AtomicU64::new(self.timer.load(Acquire)),
        }
    }
}

/// What a timer holds: the entry it is for (its key and the write that made it, `id`), and
/// the key's hash, so that reclaiming the entry, or moving its timer, never hashes the key
/// again (issue #13: hash once).
pub(crate) struct Timed<K> {
    key: K,
    hash: u64,
    id: u64,
}

/// The timer wheel and its summary for the fast path.
pub(crate) struct Timers<K> {
    wheel: Mutex<TimerWheel<Timed<K>>>,
    /// The first tick at which the wheel may have something due (`NEVER` if empty): an
    /// operation in an earlier tick skips maintenance with one load. Written under the
    /// wheel lock.
    due: AtomicU64,
}

impl<K> Timers<K> {
    fn cancel(&self, bits: u64) {
        if bits != NEVER {
            let item = lock(&self.wheel).cancel(TimerHandle::from_bits(bits));
            drop(item); // the key, outside the lock
        }
    }

    /// Schedules the timer of entry `id` at `key` (whose hash is `hash`) for `deadline`;
    /// returns its handle's bits, `NEVER` if the entry never expires.
    fn schedule(&self, deadline: u64, key: K, hash: u64, id: u64) -> u64 {
        if deadline == NEVER {
            return NEVER;
        }
        let tick = tick_at_or_after(deadline);
        let mut wheel = lock(&self.wheel);
        let handle = wheel.schedule(tick, Timed { key, hash, id });
        // Under the lock, as maintenance's store is: the summary never misses a timer.
        if tick < self.due.load(Relaxed) {
            self.due.store(tick, Release);
        }
        handle.to_bits()
    }
}

/// Counters of the expiring layer.
#[derive(Default)]
struct Counters {
    negative_loads: AtomicUsize,
    negative_hits: AtomicUsize,
    refreshes_started: AtomicUsize,
    refreshes_ok: AtomicUsize,
    refreshes_failed: AtomicUsize,
    refreshes_discarded: AtomicUsize,
}

/// Everything a refresh task needs, shared with it.
pub(crate) struct Core<K, V, E, S, C> {
    pub(crate) inner: Cache<K, Entry<V, E>, E, S>,
    timers: Arc<Timers<K>>,
    clock: C,
    policy: Policy<K, V>,
    next_id: AtomicU64,
    counters: Counters,
    loader: Option<DynLoader<K, V, E>>,
    spawner: Option<Spawner>,
    /// Refreshes with no spawner: polled by the cache's operations.
    pending: std::sync::Mutex<VecDeque<Task>>,
    pending_len: AtomicUsize,
}

/// A loading cache whose entries expire: time-to-live, time-to-idle or a per-entry
/// [`Expiry`](crate::Expiry) policy; optional caching of loader errors for a while
/// (negative caching) and refresh-ahead. Built on [`deferred_cache::Cache`], so loads are
/// single-flight with the same guarantees (errors shared and, unless negative caching is on,
/// not kept; panics and cancelled callers strand no one).
///
/// * **No stale reads.** A read compares the entry's exact deadline with the clock: an
///   entry is invisible from the first read at or after its deadline. A time-to-idle
///   renewal by one reader is seen by the next.
/// * **Reclamation costs O(expired)**: a timer wheel holds each entry's deadline, and the
///   cache's own operations advance it when something is due (one atomic load when not),
///   removing exactly the entries whose deadline passed, never a successor under the same
///   key. No background thread, no required maintenance call;
///   [`run_maintenance`](Self::run_maintenance) exists for those who want one.
/// * **Listener**: every value that leaves, with its [`RemovalCause`], told within the
///   operation that removed it.
/// * **A cheap `Clone`**: a handle is an `Arc`; clones share one cache.
///
/// ```
/// use deferred_expiring::{ExpiringCache, ManualClock};
/// use std::time::Duration;
/// # futures::executor::block_on(async {
/// let clock = ManualClock::new();
/// let cache: ExpiringCache<&str, u32, std::convert::Infallible, _, _> = ExpiringCache::builder()
///     .time_to_live(Duration::from_secs(60))
///     .clock(clock.clone())
///     .build();
/// assert_eq!(cache.get_with("a", || async { Ok(1) }).await, Ok(1));
/// clock.advance(Duration::from_secs(59));
/// assert_eq!(cache.get_with("a", || async { Ok(2) }).await, Ok(1)); // still fresh
/// clock.advance(Duration::from_secs(1));
/// assert_eq!(cache.get_with("a", || async { Ok(3) }).await, Ok(3)); // expired: reloaded
/// # });
/// ```
///
/// # Borrowed keys
///
/// As in [`Cache`](deferred_cache::Cache#borrowed-keys), calls that store a key take it
/// owned, and calls that look a key up or remove its entry take `&Q` for any `Q` that `K`
/// borrows as, so an `ExpiringCache<String, _>` is read with a `&str`:
///
/// * [`peek`](Self::peek), [`peek_with`](Self::peek_with) and
///   [`contains_key`](Self::contains_key) need `K: Borrow<Q>, Q: Hash + Eq + ?Sized`, and
///   never allocate;
/// * [`get_if_present`](Self::get_if_present), [`invalidate`](Self::invalidate),
///   [`invalidate_if`](Self::invalidate_if) and [`remove`](Self::remove) also need
///   `Q: ToOwned<Owned = K>` (`str` → `String`, `[T]` → `Vec<T>`, any `K: Clone` itself),
///   because what they may hand a key to takes a `K`: the eviction listener, an
///   [`Expiry`](crate::Expiry) policy's `expire_after_read`, a refresh's loader, the timer
///   wheel. `key.to_owned()` is made only then: a hit under time-to-live or time-to-idle
///   alone, with no refresh due, allocates nothing; a value removed, a custom `Expiry`
///   read, or a refresh started makes one owned key.
///
/// `Q`'s `Hash` and `Eq` must agree with `K`'s (the [`Borrow`] contract) and `to_owned`
/// must give an equal key; the borrowed form is hashed with the cache's hasher.
///
/// ```
/// use deferred_expiring::{ExpiringCache, ManualClock};
/// use std::time::Duration;
/// let clock = ManualClock::new();
/// let cache: ExpiringCache<String, u32, std::convert::Infallible, _, _> = ExpiringCache::builder()
///     .time_to_live(Duration::from_secs(60))
///     .clock(clock.clone())
///     .build();
/// cache.insert("ada".to_string(), 36);
/// let name: &str = "ada"; // no `String` built to read it
/// assert_eq!(cache.get_if_present(name), Some(36));
/// assert_eq!(cache.peek(name), Some(36));
/// assert!(cache.contains_key(name));
/// clock.advance(Duration::from_secs(60));
/// assert!(!cache.contains_key(name)); // expired
/// cache.insert("bob".to_string(), 40);
/// assert!(cache.invalidate("bob"));
/// ```
pub struct ExpiringCache<K, V, E = Infallible, S = RandomState, C = SystemClock> {
    pub(crate) core: Arc<Core<K, V, E, S, C>>,
}

/// A snapshot of an [`ExpiringCache`]'s counters: the inner cache's, and the expiring
/// layer's own.
///
/// ```
/// let stats = deferred_expiring::ExpiringStats::default();
/// assert_eq!(stats.negative_hits, 0);
/// ```
///
/// With the `serde` feature it implements `Serialize` and `Deserialize`, as the inner
/// [`Stats`] does: the inner counters under `cache`, a counter missing from the input read
/// as 0.
///
/// ```
/// # #[cfg(feature = "serde")] {
/// let stats = deferred_expiring::ExpiringStats::default();
/// let json = serde_json::to_string(&stats).unwrap();
/// assert!(json.starts_with(r#"{"cache":{"hits":0,"#));
/// assert!(json.ends_with(r#""refreshes_discarded":0}"#));
/// let back: deferred_expiring::ExpiringStats = serde_json::from_str(&json).unwrap();
/// assert_eq!(back, stats);
/// # }
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default))]
#[non_exhaustive]
pub struct ExpiringStats {
    /// The inner cache's counters. `loads_ok` counts loads that produced a value and
    /// `loads_failed` loader errors, cached or not; `expired` counts entries removed at
    /// their deadline; `hits` includes hits on cached errors.
    pub cache: Stats,
    /// Reads answered by a cached loader error (negative caching).
    pub negative_hits: u64,
    /// Refreshes started (at most one per entry at a time).
    pub refreshes_started: u64,
    /// Refreshes whose value replaced the entry.
    pub refreshes_ok: u64,
    /// Refreshes whose loader failed or panicked (the old value stays).
    pub refreshes_failed: u64,
    /// Refreshes whose value was dropped because the entry was written, invalidated or
    /// expired while they ran.
    pub refreshes_discarded: u64,
}

impl<K, V, E> ExpiringCache<K, V, E, RandomState, SystemClock> {
    /// A builder: expiry, capacity, clock, listener, loader.
    ///
    /// ```
    /// use deferred_expiring::ExpiringCache;
    /// use std::time::Duration;
    /// let cache: ExpiringCache<u64, String> = ExpiringCache::builder()
    ///     .max_capacity(10_000)
    ///     .time_to_idle(Duration::from_secs(300))
    ///     .build();
    /// assert_eq!(cache.len(), 0);
    /// ```
    pub fn builder() -> ExpiringBuilder<K, V, E, RandomState, SystemClock> {
        ExpiringBuilder::new()
    }
}

impl<K, V, E, S, C> ExpiringCache<K, V, E, S, C> {
    /// The number of entries stored: values, cached errors and loads in flight. A snapshot,
    /// and an upper bound on the live entries, as moka's `entry_count` is: it **counts
    /// entries whose deadline has passed but which are not reclaimed yet**. Those are
    /// invisible to every read, and leave with the read that finds them, the first
    /// operation one wheel tick ([`TICK`]) after their deadline, or
    /// [`run_maintenance`](Self::run_maintenance). `len` itself reclaims nothing (it sums
    /// the shards' sizes, never reads the clock, never calls the listener); for a count of
    /// live entries only, call `run_maintenance` first.
    ///
    /// ```
    /// use deferred_expiring::{ExpiringCache, ManualClock};
    /// use std::time::Duration;
    /// let clock = ManualClock::new();
    /// let cache: ExpiringCache<u8, u8, std::convert::Infallible, _, _> = ExpiringCache::builder()
    ///     .time_to_live(Duration::ZERO)
    ///     .clock(clock.clone())
    ///     .build();
    /// cache.insert(1, 1);
    /// assert_eq!(cache.peek(&1), None); // expired at once...
    /// assert_eq!(cache.len(), 1); // ...and counted until reclaimed
    /// cache.run_maintenance();
    /// assert_eq!(cache.len(), 0);
    /// ```
    pub fn len(&self) -> usize {
        self.core.inner.len()
    }

    /// Whether the cache stores no entries; as [`len`](Self::len), expired entries not yet
    /// reclaimed count.
    ///
    /// ```
    /// let cache: deferred_expiring::ExpiringCache<u8, u8> =
    ///     deferred_expiring::ExpiringCache::builder().build();
    /// assert!(cache.is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.core.inner.is_empty()
    }

    /// The capacity (in entries, or in weight units when a weigher is set); `None` if
    /// unbounded.
    ///
    /// ```
    /// let cache: deferred_expiring::ExpiringCache<u8, u8> =
    ///     deferred_expiring::ExpiringCache::builder().max_capacity(5).build();
    /// assert_eq!(cache.capacity(), Some(5));
    /// ```
    pub fn capacity(&self) -> Option<u64> {
        self.core.inner.capacity()
    }

    /// The weight counted against capacity (the number of entries when no weigher is set);
    /// `None` if unbounded. A snapshot. As [`len`](Self::len), it counts what is stored:
    /// entries whose deadline has passed but which are not reclaimed yet are included, and a
    /// cached error (negative caching) weighs 1.
    ///
    /// ```
    /// use deferred_expiring::{ExpiringCache, ManualClock};
    /// use std::time::Duration;
    /// let clock = ManualClock::new();
    /// let cache: ExpiringCache<u8, String, std::convert::Infallible, _, _> = ExpiringCache::builder()
    ///     .max_capacity(100)
    ///     .weigher(|_, v: &String| v.len() as u32)
    ///     .time_to_live(Duration::from_secs(1))
    ///     .clock(clock.clone())
    ///     .build();
    /// cache.insert(1, "four".to_string());
    /// assert_eq!(cache.weighted_size(), Some(4));
    /// clock.advance(Duration::from_secs(1));
    /// assert_eq!(cache.weighted_size(), Some(4)); // expired, not reclaimed yet
    /// cache.run_maintenance();
    /// assert_eq!(cache.weighted_size(), Some(0));
    /// ```
    pub fn weighted_size(&self) -> Option<u64> {
        self.core.inner.weighted_size()
    }

    /// The number of timers in the wheel (entries with a deadline, and timers of entries
    /// that left and were not cancelled yet).
    ///
    /// ```
    /// let cache: deferred_expiring::ExpiringCache<u8, u8> = deferred_expiring::ExpiringCache::builder()
    ///     .time_to_live(std::time::Duration::from_secs(1))
    ///     .build();
    /// cache.insert(1, 1);
    /// assert_eq!(cache.timers(), 1);
    /// ```
    pub fn timers(&self) -> usize {
        lock(&self.core.timers.wheel).len()
    }

    /// How many timers maintenance has looked at so far (fired or moved in the wheel): the
    /// cost of reclamation, which grows with what expired, not with what is stored.
    ///
    /// ```
    /// let cache: deferred_expiring::ExpiringCache<u8, u8> =
    ///     deferred_expiring::ExpiringCache::builder().build();
    /// assert_eq!(cache.timers_touched(), 0);
    /// ```
    pub fn timers_touched(&self) -> u64 {
        lock(&self.core.timers.wheel).touched()
    }

    /// A snapshot of the counters.
    ///
    /// ```
    /// let cache: deferred_expiring::ExpiringCache<u8, u8> =
    ///     deferred_expiring::ExpiringCache::builder().build();
    /// assert_eq!(cache.stats().cache.hits, 0);
    /// ```
    pub fn stats(&self) -> ExpiringStats {
        let c = &self.core.counters;
        let n = |a: &AtomicUsize| a.load(Relaxed) as u64;
        let mut cache = self.core.inner.stats();
        // A cached error is a value to the inner cache: count it as what it was.
        let negative = n(&c.negative_loads);
        cache.loads_ok = cache.loads_ok.saturating_sub(negative);
        cache.loads_failed += negative;
        ExpiringStats {
            cache,
            negative_hits: n(&c.negative_hits),
            refreshes_started: n(&c.refreshes_started),
            refreshes_ok: n(&c.refreshes_ok),
            refreshes_failed: n(&c.refreshes_failed),
            refreshes_discarded: n(&c.refreshes_discarded),
        }
    }
}

impl<K: ExpiringKey, V: Value, E: Shared, S: ExpiringHasher, C: Clock>
    ExpiringCache<K, V, E, S, C>
{
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn from_parts(
        inner: deferred_cache::Builder<K, Entry<V, E>, E, S>,
        clock: C,
        policy: Policy<K, V>,
        listener: Option<UserListener<K, V>>,
        loader: Option<DynLoader<K, V, E>>,
        spawner: Option<Spawner>,
    ) -> Result<Self, deferred_cache::BuildError> {
        let timers = Arc::new(Timers {
            wheel: Mutex::new(TimerWheel::new()),
            due: AtomicU64::new(NEVER),
        });
        let on_removal = Arc::clone(&timers);
        let builder = inner.eviction_listener(move |key: &K, entry: &Entry<V, E>, cause| {
            on_removal.cancel(entry.timer.load(Acquire));
            if let (Some(listener), Ok(value)) = (&listener, &entry.slot) {
                listener(key, value, cause);
            }
        });
        Ok(ExpiringCache {
            core: Arc::new(Core {
                inner: builder.try_build()?,
                timers,
                clock,
                policy,
                next_id: AtomicU64::new(0),
                counters: Counters::default(),
                loader,
                spawner,
                pending: std::sync::Mutex::new(VecDeque::new()),
                pending_len: AtomicUsize::new(0),
            }),
        })
    }
}

/// Locks a std mutex, past poisoning (nothing in this crate leaves its data inconsistent
/// when a panic crosses a lock).
pub(crate) fn lock_std<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<K, V, E, S, C> Clone for ExpiringCache<K, V, E, S, C> {
    /// Another handle on the same cache (one `Arc` increment): entries, loads, timers,
    /// counters and listener are shared, so a value inserted through one handle is read
    /// through every other. The cache (and its pending refreshes) goes with the last handle.
    ///
    /// ```
    /// let cache: deferred_expiring::ExpiringCache<u8, u8> =
    ///     deferred_expiring::ExpiringCache::builder().build();
    /// let handle = cache.clone();
    /// std::thread::spawn(move || handle.insert(1, 10)).join().unwrap();
    /// assert_eq!(cache.peek(&1), Some(10));
    /// ```
    fn clone(&self) -> Self {
        ExpiringCache {
            core: Arc::clone(&self.core),
        }
    }
}

impl<K, V, E, S, C> fmt::Debug for ExpiringCache<K, V, E, S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExpiringCache")
            .field("len", &self.len())
            .field("policy", &self.core.policy)
            .field("timers", &self.timers())
            .finish_non_exhaustive()
    }
}
