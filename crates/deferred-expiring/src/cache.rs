//! `ExpiringCache`: `deferred-cache` with deadlines, reclaimed through a timer wheel.

use std::{
    borrow::{Borrow, Cow},
    collections::{hash_map::RandomState, VecDeque},
    convert::Infallible,
    fmt,
    future::Future,
    hash::{BuildHasher, Hash},
    panic::{catch_unwind, AssertUnwindSafe},
    pin::Pin,
    sync::{atomic::AtomicUsize, Arc, Weak},
    task::{Context, Poll, Wake, Waker},
    time::Duration,
};

use deferred_cache::{Cache, Iter, RemovalCause, Stats};

use crate::{
    clock::{Clock, SystemClock},
    expiry::{now_nanos, Policy, NEVER},
    get::{GetWith, OptionallyGetWith},
    loom::{lock, AtomicU64, Mutex, Ordering::*},
    timer::{TimerHandle, TimerWheel},
    ExpiringBuilder,
};

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
pub(crate) type Weigher<K, V> = Box<dyn Fn(&K, &V) -> u32 + Send + Sync>;
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

/// The timer wheel and its summary for the fast path.
pub(crate) struct Timers<K> {
    wheel: Mutex<TimerWheel<(K, u64)>>,
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

    fn schedule(&self, deadline: u64, key: K, id: u64) -> u64 {
        if deadline == NEVER {
            return NEVER;
        }
        let tick = tick_at_or_after(deadline);
        let mut wheel = lock(&self.wheel);
        let handle = wheel.schedule(tick, (key, id));
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

/// How a read of the inner cache went.
pub(crate) enum Read<V, E> {
    Hit {
        value: V,
        refresh: Option<u64>,
    },
    /// A cached error, to a read that answers with it.
    Failed(Arc<E>),
    /// A cached error, to a read that takes it for no value (a miss, counted by the read).
    CachedError,
    Expired(u64),
    Absent,
}

/// What a read of the inner cache is for: which counters it moves, what a cached error is
/// to it, and whether a refresh that falls due may start with the caller's own loader.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadFor {
    /// `get_with` and `optionally_get_with`: a miss is counted by the load that follows; a
    /// cached error answers (a hit, and a negative hit); the caller's loader refreshes.
    Load,
    /// `get_with_blocking`: as `Load`, but only a cache-wide loader refreshes (the caller's
    /// runs on its own thread, and is neither `Send` nor `'static`).
    BlockingLoad,
    /// `get_or_insert_with`: as `Probe`, a hit or a miss is counted here (the insert that
    /// follows counts nothing, so that one call counts once); a cached error is no value
    /// (`Read::CachedError`, a miss), for the insert to replace.
    Insert,
    /// `get_if_present`: a miss is counted here; a cached error is no value.
    Probe,
}

impl ReadFor {
    /// Whether a cached error answers this read (as a hit and a negative hit).
    fn takes_errors(self) -> bool {
        matches!(self, ReadFor::Load | ReadFor::BlockingLoad)
    }

    /// Whether the caller brings a loader that a refresh may start with.
    fn brings_loader(self) -> bool {
        self == ReadFor::Load
    }
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

impl<K, V, E, S, C> ExpiringCache<K, V, E, S, C>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
    S: BuildHasher + Send + Sync + 'static,
    C: Clock,
{
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn from_parts(
        capacity: Option<u64>,
        weigher: Option<Weigher<K, V>>,
        initial_capacity: usize,
        hasher: S,
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
        let mut builder = Cache::builder()
            .initial_capacity(initial_capacity)
            .hasher(hasher)
            .eviction_listener(move |key: &K, entry: &Entry<V, E>, cause| {
                on_removal.cancel(entry.timer.load(Acquire));
                if let (Some(listener), Ok(value)) = (&listener, &entry.slot) {
                    listener(key, value, cause);
                }
            });
        if let Some(capacity) = capacity {
            builder = builder.max_capacity(capacity);
        }
        if let Some(weigher) = weigher {
            builder = builder.weigher(move |key: &K, entry: &Entry<V, E>| match &entry.slot {
                Ok(value) => weigher(key, value),
                Err(_) => 1,
            });
        }
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

    /// The value at `key`, loading it with `loader` on a miss or after expiry; one load per
    /// key at a time however many callers miss (see [`Cache::get_with`]). A value this call
    /// loaded or joined is returned even if its deadline has passed meanwhile; a stored
    /// value is returned only before its deadline.
    ///
    /// With refresh-ahead on, a hit on a value older than the refresh interval returns it at
    /// once and starts one background reload with `loader` (see
    /// [`ExpiringBuilder::refresh_after`]). With negative caching on, a cached error is
    /// returned as [`LoadError::Failed`](crate::LoadError::Failed) until its own deadline.
    ///
    /// The result is a named future, [`GetWith`]: it does nothing until polled, a hit is
    /// ready on its first poll (no loader call, no allocation), and
    /// [`with_source`](GetWith::with_source) tells whether the value was a hit, loaded by
    /// this caller's `loader`, or joined from another caller's load. It is `Send` when the
    /// key, value, error, hasher, clock and `loader` are (the loader stays in this
    /// caller's future; only the future it returns goes into the key's load). It is called
    /// only to start a load (a miss, an expired entry) or a refresh.
    ///
    /// ```
    /// use deferred_expiring::ExpiringCache;
    /// # futures::executor::block_on(async {
    /// let cache: ExpiringCache<u8, u8> = ExpiringCache::builder()
    ///     .time_to_live(std::time::Duration::from_secs(5))
    ///     .build();
    /// assert_eq!(cache.get_with(1, || async { Ok(10) }).await, Ok(10));
    /// assert_eq!(cache.get_with(1, || async { Ok(11) }).await, Ok(10));
    /// # });
    /// ```
    pub fn get_with<F, Fut>(&self, key: K, loader: F) -> GetWith<'_, K, V, E, S, C, F>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
    {
        GetWith::new(self, key, loader)
    }

    /// The value at `key`, loading it with `loader` on a miss or after expiry, where the
    /// loader may find no value: `Ok(None)` then, and nothing is cached (the next read
    /// loads again), as for an error without negative caching. A value it finds is stored
    /// with a deadline from the expiry policy, as [`get_with`](Self::get_with)'s is.
    ///
    /// Everything `get_with` says holds: one load per key at a time, whichever method
    /// started it (an `optionally_get_with` caller that joins a `get_with` load gets its
    /// value or error; a `get_with` caller that joins a load that finds nothing gets
    /// [`LoadError::NotFound`](crate::LoadError::NotFound), since it cannot return `None`,
    /// and so does every caller of an [`ExpiringLoadingCache`](crate::ExpiringLoadingCache)'s
    /// `get`); a stored value is returned only before its deadline; a refresh that falls
    /// due on a hit starts with `loader`, and one that finds nothing counts as a failed
    /// refresh (the old value stays until its deadline). Loads that found nothing are
    /// counted in [`Stats::loads_empty`](crate::Stats::loads_empty).
    ///
    /// The result is a named future, [`OptionallyGetWith`], `Send` when the key, value,
    /// error, hasher, clock and `loader` are.
    ///
    /// ```
    /// use deferred_expiring::{ExpiringCache, ManualClock};
    /// use std::time::Duration;
    /// # futures::executor::block_on(async {
    /// let clock = ManualClock::new();
    /// let users: ExpiringCache<u32, String, std::convert::Infallible, _, _> = ExpiringCache::builder()
    ///     .time_to_live(Duration::from_secs(60))
    ///     .clock(clock.clone())
    ///     .build();
    /// let find = |id: u32| async move { (id < 100).then(|| format!("user {id}")) };
    /// assert_eq!(users.optionally_get_with(7, || find(7)).await, Ok(Some("user 7".into())));
    /// assert_eq!(users.optionally_get_with(700, || find(700)).await, Ok(None));
    /// assert!(!users.contains_key(&700)); // not cached: the next read looks again
    /// clock.advance(Duration::from_secs(60)); // user 7 expires: loaded again
    /// let again = users.optionally_get_with(7, || async { Some("user 7, renamed".into()) });
    /// assert_eq!(again.await, Ok(Some("user 7, renamed".into())));
    /// assert_eq!(users.stats().cache.loads_empty, 1);
    /// # });
    /// ```
    pub fn optionally_get_with<F, Fut>(
        &self,
        key: K,
        loader: F,
    ) -> OptionallyGetWith<'_, K, V, E, S, C, F>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Option<V>> + Send + 'static,
    {
        OptionallyGetWith::new(self, key, loader)
    }

    /// The value at `key` if it is present and before its deadline, counting a hit or a
    /// miss (and renewing it under time-to-idle). Never loads, never waits. A cached error
    /// is no value: `None`, counted as a miss.
    ///
    /// `key` may be any borrowed form of `K` that makes a `K` with `to_owned`, such as a
    /// `&str` for a `String` key (see [borrowed keys](ExpiringCache#borrowed-keys)).
    /// The owned key is made only where one is needed: a custom [`Expiry`](crate::Expiry)
    /// policy's `expire_after_read`, a refresh started, an expired entry reclaimed.
    ///
    /// ```
    /// use deferred_expiring::{ExpiringCache, ManualClock};
    /// use std::time::Duration;
    /// let clock = ManualClock::new();
    /// let cache: ExpiringCache<u8, u8, std::convert::Infallible, _, _> = ExpiringCache::builder()
    ///     .time_to_idle(Duration::from_secs(10))
    ///     .clock(clock.clone())
    ///     .build();
    /// cache.insert(1, 1);
    /// clock.advance(Duration::from_secs(9));
    /// assert_eq!(cache.get_if_present(&1), Some(1)); // renewed until 19 s
    /// clock.advance(Duration::from_secs(9));
    /// assert_eq!(cache.get_if_present(&1), Some(1));
    /// clock.advance(Duration::from_secs(10));
    /// assert_eq!(cache.get_if_present(&1), None);
    ///
    /// let names: ExpiringCache<String, u8> = ExpiringCache::builder().build();
    /// names.insert("ada".to_string(), 36);
    /// assert_eq!(names.get_if_present("ada"), Some(36));
    /// ```
    pub fn get_if_present<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let core = &*self.core;
        let now = core.tend();
        match core.read(key, || Cow::Owned(key.to_owned()), now, ReadFor::Probe) {
            Read::Hit { value, refresh } => {
                if let Some(id) = refresh {
                    Core::refresh_with_loader(&self.core, key.to_owned(), id);
                }
                Some(value)
            }
            Read::Failed(_) | Read::CachedError => None,
            Read::Expired(id) => {
                core.expire(key, id, now);
                None
            }
            Read::Absent => None,
        }
    }

    /// The value at `key` if present and before its deadline, without counting a read,
    /// renewing it, or starting a refresh.
    ///
    /// `key` may be any borrowed form of `K`, such as a `&str` for a `String` key (see
    /// [borrowed keys](ExpiringCache#borrowed-keys)).
    ///
    /// ```
    /// let cache: deferred_expiring::ExpiringCache<u8, u8> =
    ///     deferred_expiring::ExpiringCache::builder().build();
    /// cache.insert(1, 5);
    /// assert_eq!(cache.peek(&1), Some(5));
    /// assert_eq!(cache.stats().cache.hits, 0);
    ///
    /// let names: deferred_expiring::ExpiringCache<String, u8> =
    ///     deferred_expiring::ExpiringCache::builder().build();
    /// names.insert("ada".to_string(), 36);
    /// assert_eq!(names.peek("ada"), Some(36));
    /// ```
    pub fn peek<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.peek_with(key, V::clone)
    }

    /// The value at `key` seen through a reference, if present and before its deadline,
    /// without counting a read, renewing it, or starting a refresh (as
    /// [`peek`](Self::peek), with no clone): `f` runs on the value. A cached error is no
    /// value, and an entry past its deadline is absent (`None`) even before it is
    /// reclaimed. `f` runs under the key's shard lock (shared with other readers): keep it
    /// short, and never touch this cache from inside it.
    ///
    /// `key` may be any borrowed form of `K`, such as a `&str` for a `String` key (see
    /// [borrowed keys](ExpiringCache#borrowed-keys)).
    ///
    /// ```
    /// use deferred_expiring::{ExpiringCache, ManualClock};
    /// use std::time::Duration;
    /// let clock = ManualClock::new();
    /// let cache: ExpiringCache<u8, String, std::convert::Infallible, _, _> = ExpiringCache::builder()
    ///     .time_to_live(Duration::from_secs(10))
    ///     .clock(clock.clone())
    ///     .build();
    /// cache.insert(1, "hello".to_string());
    /// assert_eq!(cache.peek_with(&1, |s| s.len()), Some(5));
    /// clock.advance(Duration::from_secs(10));
    /// assert_eq!(cache.peek_with(&1, |s| s.len()), None); // at its deadline: absent
    /// assert_eq!(cache.stats().cache.hits, 0);
    ///
    /// let names: ExpiringCache<String, u8> = ExpiringCache::builder().build();
    /// names.insert("ada".to_string(), 36);
    /// assert_eq!(names.peek_with("ada", |age| *age + 1), Some(37));
    /// ```
    pub fn peek_with<Q, R>(&self, key: &Q, f: impl FnOnce(&V) -> R) -> Option<R>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let now = now_nanos(self.core.clock.now());
        self.core
            .inner
            .peek_with(key, |entry| match &entry.slot {
                Ok(value) if entry.deadline.load(Acquire) > now => Some(f(value)),
                _ => None,
            })
            .flatten()
    }

    /// Whether `key` has a value before its deadline. Counts nothing, renews nothing,
    /// starts no refresh. An entry past its deadline is absent even before it is reclaimed
    /// (and [`len`](Self::len) may still count it); a cached error (negative caching) and a
    /// load in flight are no value.
    ///
    /// `key` may be any borrowed form of `K`, such as a `&str` for a `String` key (see
    /// [borrowed keys](ExpiringCache#borrowed-keys)).
    ///
    /// ```
    /// use deferred_expiring::{ExpiringCache, ManualClock};
    /// use std::time::Duration;
    /// let clock = ManualClock::new();
    /// let cache: ExpiringCache<u8, u8, std::convert::Infallible, _, _> = ExpiringCache::builder()
    ///     .time_to_live(Duration::from_secs(10))
    ///     .clock(clock.clone())
    ///     .build();
    /// cache.insert(1, 10);
    /// assert!(cache.contains_key(&1) && !cache.contains_key(&2));
    /// clock.advance(Duration::from_secs(10));
    /// assert!(!cache.contains_key(&1)); // expired...
    /// assert_eq!(cache.len(), 1); // ...not reclaimed yet
    ///
    /// let names: ExpiringCache<String, u8> = ExpiringCache::builder().build();
    /// names.insert("ada".to_string(), 36);
    /// assert!(names.contains_key("ada") && !names.contains_key("bob"));
    /// ```
    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.peek_with(key, |_| ()).is_some()
    }

    /// Stores `value` at `key` with a fresh deadline (time-to-live / time-to-idle, or the
    /// [`Expiry`](crate::Expiry) policy's `expire_after_update` over an old value, else
    /// `expire_after_create`). A load or refresh in flight for `key` does not overwrite it.
    ///
    /// ```
    /// let cache: deferred_expiring::ExpiringCache<u8, u8> =
    ///     deferred_expiring::ExpiringCache::builder().build();
    /// cache.insert(1, 5);
    /// assert_eq!(cache.get_if_present(&1), Some(5));
    /// ```
    pub fn insert(&self, key: K, value: V) {
        let core = &*self.core;
        let now = core.tend();
        let previous = core.live_deadline(&key, now);
        let entry = core.new_entry(&key, Ok(value), previous);
        core.inner.insert(key, entry);
    }

    /// Removes the entry at `key`; returns whether there was one (expired or not).
    ///
    /// `key` may be any borrowed form of `K` that makes a `K` with `to_owned`, such as a
    /// `&str` for a `String` key (see [borrowed keys](ExpiringCache#borrowed-keys)).
    ///
    /// ```
    /// let cache: deferred_expiring::ExpiringCache<u8, u8> =
    ///     deferred_expiring::ExpiringCache::builder().build();
    /// cache.insert(1, 5);
    /// assert!(cache.invalidate(&1));
    ///
    /// let names: deferred_expiring::ExpiringCache<String, u8> =
    ///     deferred_expiring::ExpiringCache::builder().build();
    /// names.insert("ada".to_string(), 36);
    /// assert!(names.invalidate("ada"));
    /// assert!(!names.invalidate("ada"));
    /// ```
    pub fn invalidate<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        self.core.tend();
        self.core.inner.invalidate(key)
    }

    /// Removes the value at `key` if it is before its deadline and `pred` says so for it,
    /// atomically (nothing can replace the value between the test and the removal); returns
    /// whether it did. The listener hears [`RemovalCause::Explicit`]. An entry past its
    /// deadline is absent: `pred` is not called, `false` is returned, and the entry is
    /// reclaimed as expired ([`RemovalCause::Expired`]), as a read that finds it does. A
    /// cached error and a load in flight are no value: never removed here. `pred` runs
    /// under the key's shard lock: keep it short, and never touch this cache from inside it.
    ///
    /// `key` may be any borrowed form of `K` that makes a `K` with `to_owned`, such as a
    /// `&str` for a `String` key (see [borrowed keys](ExpiringCache#borrowed-keys)).
    ///
    /// ```
    /// use deferred_expiring::{ExpiringCache, ManualClock};
    /// use std::time::Duration;
    /// let clock = ManualClock::new();
    /// let cache: ExpiringCache<u8, u8, std::convert::Infallible, _, _> = ExpiringCache::builder()
    ///     .time_to_live(Duration::from_secs(10))
    ///     .clock(clock.clone())
    ///     .build();
    /// cache.insert(1, 10);
    /// assert!(!cache.invalidate_if(&1, |v| *v == 11));
    /// assert!(cache.invalidate_if(&1, |v| *v == 10));
    /// cache.insert(2, 20);
    /// clock.advance(Duration::from_secs(10));
    /// assert!(!cache.invalidate_if(&2, |_| true)); // expired: absent, and reclaimed
    /// assert!(cache.is_empty());
    /// assert_eq!((cache.stats().cache.invalidated, cache.stats().cache.expired), (1, 1));
    ///
    /// let names: ExpiringCache<String, u8> = ExpiringCache::builder().build();
    /// names.insert("ada".to_string(), 36);
    /// assert!(names.invalidate_if("ada", |age| *age == 36));
    /// ```
    pub fn invalidate_if<Q>(&self, key: &Q, pred: impl FnOnce(&V) -> bool) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let core = &*self.core;
        let now = core.tend();
        let now_nanos = now_nanos(now);
        let mut expired = None;
        let removed = core.inner.invalidate_if(key, |entry| {
            if entry.deadline.load(Acquire) <= now_nanos {
                expired = Some(entry.id);
                return false;
            }
            entry.slot.as_ref().is_ok_and(pred)
        });
        if let Some(id) = expired {
            core.expire(key, id, now);
        }
        removed
    }

    /// Removes the entry at `key` and returns its value if it was live (present, before its
    /// deadline, and a value): [`invalidate`](Self::invalidate) that gives back what it
    /// removed (a clone). Counted in `invalidated` and told to the listener as
    /// [`RemovalCause::Explicit`], as `invalidate` is.
    ///
    /// Expiry applies: an entry past its deadline is absent, so `remove` returns `None` for
    /// it, and reclaims it as expired ([`RemovalCause::Expired`], counted in `expired`), as a
    /// read that finds it does. A cached error (negative caching) and a load in flight have
    /// no value: `remove` returns `None` for them, but removes them all the same, as
    /// `invalidate` does (a load goes on for the callers already waiting on it; its value
    /// is not stored, and the next read loads afresh).
    ///
    /// `key` may be any borrowed form of `K` that makes a `K` with `to_owned`, such as a
    /// `&str` for a `String` key (see [borrowed keys](ExpiringCache#borrowed-keys)).
    ///
    /// ```
    /// use deferred_expiring::{ExpiringCache, ManualClock};
    /// use std::time::Duration;
    /// let clock = ManualClock::new();
    /// let cache: ExpiringCache<String, u8, std::convert::Infallible, _, _> = ExpiringCache::builder()
    ///     .time_to_live(Duration::from_secs(10))
    ///     .clock(clock.clone())
    ///     .build();
    /// cache.insert("ada".to_string(), 36);
    /// assert_eq!(cache.remove("ada"), Some(36));
    /// assert_eq!(cache.remove("ada"), None);
    /// cache.insert("bob".to_string(), 40);
    /// clock.advance(Duration::from_secs(10));
    /// assert_eq!(cache.remove("bob"), None); // expired: absent, and reclaimed
    /// assert!(cache.is_empty());
    /// assert_eq!((cache.stats().cache.invalidated, cache.stats().cache.expired), (1, 1));
    /// ```
    pub fn remove<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let core = &*self.core;
        let now = core.tend();
        let now_nanos = now_nanos(now);
        let mut expired = None;
        let mut value = None;
        // A complete entry (a value or a cached error) is tested and removed atomically, so
        // one whose deadline passed is never taken for a live one.
        let removed = core.inner.invalidate_if(key, |entry| {
            if entry.deadline.load(Acquire) <= now_nanos {
                expired = Some(entry.id);
                return false;
            }
            value = entry.slot.as_ref().ok().cloned();
            true
        });
        if removed {
            return value;
        }
        if let Some(id) = expired {
            core.expire(key, id, now);
            return None;
        }
        // Absent, or a load in flight, which `invalidate_if` leaves: removed as `invalidate`
        // removes it. (Had it completed just now, what is removed is its fresh entry.)
        let entry = core.inner.remove(key)?;
        match entry.slot {
            Ok(value) if entry.deadline.load(Acquire) > now_nanos => Some(value),
            _ => None,
        }
    }

    /// The live entries (present, before their deadline, and values), as `(key, value)`
    /// clones, without counting reads, renewing deadlines or starting refreshes.
    ///
    /// Expiry applies: an entry past its deadline at the time of the call is left out even
    /// before it is reclaimed (so the count may be below [`len`](Self::len)); cached errors
    /// and loads in flight are no values, and are left out too.
    ///
    /// **Weakly consistent**, as [`Cache::iter`] is (a snapshot taken shard by shard, no lock
    /// held while the caller iterates): an entry present and live for the whole call is
    /// seen exactly once; one written or removed meanwhile may or may not be.
    ///
    /// ```
    /// use deferred_expiring::{ExpiringCache, ManualClock};
    /// use std::time::Duration;
    /// let clock = ManualClock::new();
    /// let cache: ExpiringCache<u8, u8, std::convert::Infallible, _, _> = ExpiringCache::builder()
    ///     .time_to_live(Duration::from_secs(10))
    ///     .clock(clock.clone())
    ///     .build();
    /// cache.insert(1, 10);
    /// clock.advance(Duration::from_secs(5));
    /// cache.insert(2, 20);
    /// let mut all: Vec<(u8, u8)> = cache.iter().collect();
    /// all.sort();
    /// assert_eq!(all, [(1, 10), (2, 20)]);
    /// clock.advance(Duration::from_secs(5)); // 1 expires
    /// assert_eq!(cache.iter().collect::<Vec<_>>(), [(2, 20)]);
    /// assert_eq!(cache.stats().cache.hits, 0);
    /// ```
    pub fn iter(&self) -> Iter<K, V> {
        let now = self.core.tend();
        let now_nanos = now_nanos(now);
        self.core
            .inner
            .iter()
            .filter_map(|(key, entry)| {
                let live = entry.deadline.load(Acquire) > now_nanos;
                match entry.slot {
                    Ok(value) if live => Some((key, value)),
                    _ => None,
                }
            })
            .collect()
    }

    /// Keeps only the live values for which `keep(key, value)` says `true`; removes the
    /// others as [`invalidate`](Self::invalidate) does (counted in `invalidated`, told as
    /// [`RemovalCause::Explicit`]).
    ///
    /// Expiry applies: an entry past its deadline is absent, so `keep` is not called for it
    /// and it is not removed here; it leaves with reclamation, as expired
    /// ([`RemovalCause::Expired`]). Cached errors and loads in flight are no values: they
    /// stay, and `keep` is not called for them. `keep` runs with no lock held, on a snapshot
    /// of each shard (weakly consistent, as [`iter`](Self::iter)); a value replaced after
    /// `keep` saw it is not removed.
    ///
    /// ```
    /// let cache: deferred_expiring::ExpiringCache<u8, u8> =
    ///     deferred_expiring::ExpiringCache::builder().build();
    /// for k in 0..10 {
    ///     cache.insert(k, k * 10);
    /// }
    /// cache.retain(|_, v| *v >= 50);
    /// assert_eq!(cache.len(), 5);
    /// assert_eq!(cache.stats().cache.invalidated, 5);
    /// ```
    pub fn retain(&self, mut keep: impl FnMut(&K, &V) -> bool) {
        self.invalidate_entries_if(|k, v| !keep(k, v));
    }

    /// Removes the live values for which `pred(key, value)` says `true`, as
    /// [`invalidate`](Self::invalidate) does (counted in `invalidated`, told as
    /// [`RemovalCause::Explicit`]); returns how many it removed. Expiry applies as in
    /// [`retain`](Self::retain): `pred` is never called for an entry past its deadline (nor
    /// for a cached error or a load in flight), and such an entry is not removed here.
    ///
    /// Deadlines are judged against the clock as read once, at the start of the call.
    ///
    /// ```
    /// use deferred_expiring::{ExpiringCache, ManualClock};
    /// use std::time::Duration;
    /// let clock = ManualClock::new();
    /// let cache: ExpiringCache<String, u32, std::convert::Infallible, _, _> = ExpiringCache::builder()
    ///     .time_to_live(Duration::from_secs(10))
    ///     .clock(clock.clone())
    ///     .build();
    /// cache.insert("user:1".into(), 1);
    /// clock.advance(Duration::from_secs(5));
    /// cache.insert("user:2".into(), 2);
    /// cache.insert("team:1".into(), 1);
    /// clock.advance(Duration::from_secs(5)); // user:1 expires
    /// assert_eq!(cache.invalidate_entries_if(|k, _| k.starts_with("user:")), 1);
    /// assert!(cache.contains_key("team:1"));
    /// assert_eq!(cache.stats().cache.invalidated, 1);
    /// ```
    pub fn invalidate_entries_if(&self, mut pred: impl FnMut(&K, &V) -> bool) -> usize {
        let now = self.core.tend();
        let now_nanos = now_nanos(now);
        self.core.inner.invalidate_entries_if(|key, entry| {
            entry.deadline.load(Acquire) > now_nanos
                && entry.slot.as_ref().is_ok_and(|value| pred(key, value))
        })
    }

    /// Removes every entry.
    ///
    /// ```
    /// let cache: deferred_expiring::ExpiringCache<u8, u8> =
    ///     deferred_expiring::ExpiringCache::builder().build();
    /// cache.insert(1, 5);
    /// cache.invalidate_all();
    /// assert!(cache.is_empty());
    /// ```
    pub fn invalidate_all(&self) {
        self.core.inner.invalidate_all();
    }

    /// Reclaims every entry whose deadline has passed now, telling the listener, and polls
    /// the refreshes that have no spawner; returns how many entries it removed. Optional:
    /// the cache's own operations do the same whenever something is due (one wheel tick,
    /// [`TICK`], after a deadline at the latest), within the
    /// [`maintenance_budget`](ExpiringBuilder::maintenance_budget); this pass ignores the
    /// budget and waits for no tick, so a [`len`](Self::len) right after it counts live
    /// entries only.
    ///
    /// ```
    /// use deferred_expiring::{ExpiringCache, ManualClock};
    /// use std::time::Duration;
    /// let clock = ManualClock::new();
    /// let cache: ExpiringCache<u8, u8, std::convert::Infallible, _, _> = ExpiringCache::builder()
    ///     .time_to_live(Duration::from_secs(1))
    ///     .clock(clock.clone())
    ///     .build();
    /// cache.insert(1, 1);
    /// clock.advance(Duration::from_secs(1));
    /// assert_eq!(cache.peek(&1), None); // invisible at its deadline
    /// assert_eq!(cache.len(), 1); // not reclaimed yet
    /// assert_eq!(cache.run_maintenance(), 1);
    /// assert!(cache.is_empty());
    /// ```
    pub fn run_maintenance(&self) -> usize {
        let now = self.core.clock.now();
        self.core.drive_refreshes();
        self.core.reclaim(now, true)
    }
}

impl<K, V, E, S, C> Core<K, V, E, S, C>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
    S: BuildHasher + Send + Sync + 'static,
    C: Clock,
{
    /// The start of every operation: reads the clock, reclaims what is due (if anything
    /// is: one atomic load otherwise), polls reader-driven refreshes.
    #[inline]
    pub(crate) fn tend(&self) -> Duration {
        let now = self.clock.now();
        // Acquire: pairs with the Release stores of `due`, so the wheel state behind it is
        // the one the lock will show.
        if tick_of(now_nanos(now)) >= self.timers.due.load(Acquire) {
            self.reclaim(now, false);
        }
        if self.pending_len.load(Relaxed) != 0 {
            self.drive_refreshes();
        }
        now
    }

    /// Advances the wheel to `now` and removes the entries it fires whose deadline has
    /// passed; reschedules those renewed since. An operation's pass (`explicit` false) goes
    /// to the tick `now` is in, within the maintenance budget, and gives up if another
    /// thread is at it. An explicit pass (`run_maintenance`) waits for the lock, does it
    /// all, and goes one tick further when `now` is inside a tick: a deadline that passed
    /// earlier in this tick has its timer on the next one, and an explicit pass reclaims
    /// every entry whose deadline has passed, so `len()` after it counts live ones only.
    #[cold]
    fn reclaim(&self, now: Duration, explicit: bool) -> usize {
        let now_nanos = now_nanos(now);
        let to_tick = if explicit {
            // Timers of that next tick whose deadline has not come yet are fired early
            // only to be rescheduled below: on the wheel's due list, which `due` keeps
            // ordinary operations off until the clock enters that tick.
            tick_at_or_after(now_nanos)
        } else {
            tick_of(now_nanos)
        };
        let fired = {
            let mut wheel = if explicit {
                lock(&self.timers.wheel)
            } else {
                match self.timers.wheel.try_lock() {
                    Ok(wheel) => wheel,
                    Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
                    Err(std::sync::TryLockError::WouldBlock) => return 0,
                }
            };
            let mut fired = Vec::new();
            // An operation does at most the budgeted work; an explicit pass does it all.
            let budget = if explicit {
                usize::MAX
            } else {
                self.policy.maintenance_budget
            };
            wheel.advance_within(to_tick, budget, |_, item| fired.push(item));
            let due = wheel.next_due().unwrap_or(NEVER);
            self.timers.due.store(due, Release);
            fired
        };
        let mut removed = 0;
        for (key, id) in fired {
            let mut renewed = None;
            let gone = self.inner.expire_if(&key, |entry| {
                if entry.id != id {
                    return false;
                }
                let deadline = entry.deadline.load(Acquire);
                if deadline <= now_nanos {
                    return true;
                }
                renewed = Some(deadline);
                false
            });
            removed += usize::from(gone);
            if let Some(deadline) = renewed {
                // Read since it was scheduled: a new timer for its new deadline. Stored
                // into the entry under its shard lock, so a removal that comes after
                // cancels this one.
                let timers = &self.timers;
                let key2 = key.clone();
                self.inner.peek_with(&key, |entry| {
                    if entry.id == id {
                        let bits = timers.schedule(deadline, key2, id);
                        let old = entry.timer.swap(bits, AcqRel);
                        timers.cancel(old);
                    }
                });
            }
        }
        removed
    }

    /// Reads `key` at `now`: a hit (renewed under time-to-idle, perhaps claiming a refresh),
    /// a cached error, an expired entry, or nothing.
    #[inline]
    ///
    /// `key_of` gives the key as a `K` where one is needed (an `Expiry` policy's
    /// `expire_after_read`, a timer): borrowed when the caller has a `&K`, made owned from a
    /// borrowed form only then.
    pub(crate) fn read<'k, Q>(
        &self,
        key: &Q,
        key_of: impl Fn() -> Cow<'k, K>,
        now: Duration,
        mode: ReadFor,
    ) -> Read<V, E>
    where
        K: Borrow<Q> + 'k,
        Q: Hash + Eq + ?Sized,
    {
        let now_nanos = now_nanos(now);
        let mut expired = None;
        let mut cached_error = false;
        let policy = &self.policy;
        let f = |entry: &Entry<V, E>| {
            let deadline = entry.deadline.load(Acquire);
            if deadline <= now_nanos {
                expired = Some(entry.id);
                return None;
            }
            let value = match &entry.slot {
                Ok(value) => value,
                // A cached error answers a load; a probe for a value, or an insert, finds none.
                Err(error) => {
                    cached_error = !mode.takes_errors();
                    return mode.takes_errors().then(|| Read::Failed(Arc::clone(error)));
                }
            };
            if let Some(next) = policy.on_read(&key_of, value, now, deadline, entry.hard) {
                if policy.custom.is_some() {
                    entry.deadline.store(next, Release);
                    if next < deadline {
                        // Sooner than its timer: a timer for the new deadline (a later one
                        // is found when the old timer fires, and rescheduled then). Under
                        // the shard lock, as every timer swap is.
                        let bits = self.timers.schedule(next, key_of().into_owned(), entry.id);
                        self.timers.cancel(entry.timer.swap(bits, AcqRel));
                    }
                } else {
                    // Time-to-idle only moves forward: of two racing readers, the later
                    // deadline stays. Release: pairs with the Acquire loads of readers.
                    entry.deadline.fetch_max(next, AcqRel);
                }
            }
            // A read that brings no loader (`get_if_present`), on a cache without a
            // cache-wide one, has nothing to refresh with: it leaves the refresh to the next
            // `get_with` rather than claiming it and starting nothing.
            let refresh = if policy.refresh_after.is_some()
                && (mode.brings_loader() || self.loader.is_some())
            {
                let at = entry.refresh_at.load(Relaxed);
                // One reader wins the swap to `NEVER` and starts the refresh.
                (at <= now_nanos
                    && entry
                        .refresh_at
                        .compare_exchange(at, NEVER, Acquire, Relaxed)
                        .is_ok())
                .then_some(entry.id)
            } else {
                None
            };
            Some(Read::Hit {
                value: value.clone(),
                refresh,
            })
        };
        let found = if matches!(mode, ReadFor::Probe | ReadFor::Insert) {
            self.inner.get_if_present_with(key, f)
        } else {
            self.inner.hit_with(key, f)
        };
        match found {
            Some(Read::Failed(error)) => {
                self.counters.negative_hits.fetch_add(1, Relaxed);
                Read::Failed(error)
            }
            Some(read) => read,
            None if cached_error => Read::CachedError,
            None => expired.map_or(Read::Absent, Read::Expired),
        }
    }

    /// Before a write at `key`: the deadline of the value there if it is live at `now` (for
    /// `Expiry::expire_after_update`), and an expired one, not yet reclaimed, removed as
    /// expired (not as replaced).
    fn live_deadline(&self, key: &K, now: Duration) -> Option<u64> {
        let now_nanos = now_nanos(now);
        let old = self
            .inner
            .peek_with(key, |old| (old.id, old.deadline.load(Acquire)))?;
        match old {
            (_, deadline) if deadline > now_nanos => Some(deadline),
            (id, _) => {
                self.expire(key, id, now);
                None
            }
        }
    }

    /// Removes the cached error at `key`, if one is there before its deadline at `now`: it
    /// is no value, for a write that takes its place. Counted as invalidated (not told to
    /// the listener, which hears of values only).
    pub(crate) fn drop_cached_error(&self, key: &K, now: Duration) {
        let now = now_nanos(now);
        self.inner.invalidate_if(key, |entry| {
            entry.slot.is_err() && entry.deadline.load(Acquire) > now
        });
    }

    /// Removes the entry `id` at `key` if its deadline has passed at `now`.
    pub(crate) fn expire<Q>(&self, key: &Q, id: u64, now: Duration)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let now = now_nanos(now);
        self.inner.expire_if(key, |entry| {
            entry.id == id && entry.deadline.load(Acquire) <= now
        });
    }

    /// The entry a load's outcome makes: a value, or an error kept under negative caching
    /// (counted then); an error not kept is given back.
    pub(crate) fn loaded(&self, key: &K, outcome: Result<V, E>) -> Result<Entry<V, E>, E> {
        match outcome {
            Ok(value) => Ok(self.new_entry(key, Ok(value), None)),
            Err(error) if self.policy.negative_ttl.is_some() => {
                self.counters.negative_loads.fetch_add(1, Relaxed);
                Ok(self.new_entry(key, Err(Arc::new(error)), None))
            }
            Err(error) => Err(error),
        }
    }

    /// Cancels the timer of `entry` (its id and timer), made for `key` by a load or an
    /// insert that has ended, if the entry stored at `key` is not it: it was never stored
    /// (another value settled the key, or the load was invalidated in flight), or it was
    /// and has gone (its removal cancelled the timer already; cancelling again does
    /// nothing). Once its load has ended, an entry not stored now never will be.
    pub(crate) fn discard_unless_stored(&self, key: &K, entry: Option<(u64, u64)>) {
        if let Some((id, timer)) = entry {
            if timer != NEVER && self.inner.peek_with(key, |stored| stored.id) != Some(id) {
                self.timers.cancel(timer);
            }
        }
    }

    /// A new entry for `slot` at `key`, with its deadline and its timer.
    pub(crate) fn new_entry(
        &self,
        key: &K,
        slot: Result<V, Arc<E>>,
        previous: Option<u64>,
    ) -> Entry<V, E> {
        let now = self.clock.now();
        let id = self.next_id.fetch_add(1, Relaxed);
        let (deadline, hard, refresh_at) = match &slot {
            Ok(value) => {
                let (deadline, hard) = self.policy.on_write(key, value, now, previous);
                let refresh = crate::expiry::deadline(now, self.policy.refresh_after);
                (deadline, hard, refresh)
            }
            Err(_) => {
                let deadline = crate::expiry::deadline(now, self.policy.negative_ttl);
                (deadline, deadline, NEVER)
            }
        };
        let timer = self.timers.schedule(deadline, key.clone(), id);
        Entry {
            slot,
            id,
            deadline: AtomicU64::new(deadline),
            hard,
            refresh_at: AtomicU64::new(refresh_at),
            timer: AtomicU64::new(timer),
        }
    }

    /// Starts the refresh of entry `id` at `key` with the cache-wide loader, if there is
    /// one (a read claims a refresh with no loader of its own only when there is).
    pub(crate) fn refresh_with_loader(this: &Arc<Self>, key: K, id: u64) {
        if let Some(loader) = &this.loader {
            let load = loader(&key);
            Core::refresh(this, key, id, async move { load.await.ok() });
        }
    }

    /// Starts the refresh of entry `id` at `key` with `load` (`None`: it failed): on the
    /// spawner, or polled once here and then by later operations.
    pub(crate) fn refresh<Fut>(this: &Arc<Self>, key: K, id: u64, load: Fut)
    where
        Fut: Future<Output = Option<V>> + Send + 'static,
    {
        this.counters.refreshes_started.fetch_add(1, Relaxed);
        // Weak: a task waiting in `pending` must not keep its own cache alive, and one on a
        // spawner that outlives the cache just drops its result.
        let (core, fail_core, fail_key) = (Arc::downgrade(this), Arc::downgrade(this), key.clone());
        let guard = FailGuard(Some(Box::new(move || {
            if let Some(core) = fail_core.upgrade() {
                core.refresh_failed(&fail_key, id);
            }
        })));
        let task: Task = Box::pin(async move {
            let guard = guard;
            let result = load.await;
            guard.disarm();
            let Some(core) = Weak::upgrade(&core) else {
                return;
            };
            match result {
                Some(value) => core.refresh_done(&key, id, value),
                None => core.refresh_failed(&key, id),
            }
        });
        match &this.spawner {
            Some(spawn) => spawn(task),
            None => {
                {
                    let mut pending = lock_std(&this.pending);
                    pending.push_back(task);
                    this.pending_len.store(pending.len(), Relaxed);
                }
                this.drive_refreshes();
            }
        }
    }

    /// Stores a refreshed value if the entry it refreshes is still the one at its key: a
    /// write, invalidation or expiry since the refresh started wins, and the value goes.
    fn refresh_done(&self, key: &K, id: u64, value: V) {
        let previous = self.live_deadline(key, self.clock.now());
        let entry = self.new_entry(key, Ok(value), previous);
        let timer = entry.timer.load(Relaxed);
        if self.inner.replace_if(key, entry, |old| old.id == id) {
            self.counters.refreshes_ok.fetch_add(1, Relaxed);
        } else {
            self.timers.cancel(timer);
            self.counters.refreshes_discarded.fetch_add(1, Relaxed);
        }
    }

    /// A refresh failed: the old value stays, and the next refresh may start one interval
    /// from now.
    fn refresh_failed(&self, key: &K, id: u64) {
        self.counters.refreshes_failed.fetch_add(1, Relaxed);
        let next = crate::expiry::deadline(self.clock.now(), self.policy.refresh_after);
        self.inner.peek_with(key, |entry| {
            if entry.id == id {
                // The next refresh may start at `next`.
                entry.refresh_at.store(next, Release);
            }
        });
    }

    /// Polls up to `DRIVE_BATCH` of the refreshes that have no spawner, oldest first, once
    /// each; the unfinished go to the back. A panic in one counts as its failure (through
    /// its guard) and does not reach this caller.
    fn drive_refreshes(&self) {
        let Ok(mut pending) = self.pending.try_lock() else {
            return; // another thread is at it
        };
        let take = pending.len().min(DRIVE_BATCH);
        let mut tasks: Vec<Task> = pending.drain(..take).collect();
        drop(pending);
        let waker = Waker::from(Arc::new(NoopWake));
        let mut cx = Context::from_waker(&waker);
        tasks.retain_mut(|task| {
            let polled = catch_unwind(AssertUnwindSafe(|| task.as_mut().poll(&mut cx)));
            matches!(polled, Ok(Poll::Pending))
        });
        let mut pending = lock_std(&self.pending);
        pending.extend(tasks);
        self.pending_len.store(pending.len(), Relaxed);
    }

    /// The future stored in an inner entry: the user's load, turned into an `Entry`.
    pub(crate) async fn load_entry<Fut>(self: Arc<Self>, key: K, fut: Fut) -> Result<Entry<V, E>, E>
    where
        Fut: Future<Output = Result<V, E>> + Send + 'static,
    {
        self.loaded(&key, fut.await)
    }

    /// The future stored in an inner entry by `optionally_get_with`: the user's load, its
    /// value turned into an `Entry` (`None`, no value, is not stored).
    pub(crate) async fn load_optional_entry<Fut>(
        self: Arc<Self>,
        key: K,
        fut: Fut,
    ) -> Option<Entry<V, E>>
    where
        Fut: Future<Output = Option<V>> + Send + 'static,
    {
        let value = fut.await?;
        Some(self.new_entry(&key, Ok(value), None))
    }
}

/// The most reader-driven refreshes one operation polls.
const DRIVE_BATCH: usize = 8;

/// Locks a std mutex, past poisoning (nothing in this crate leaves its data inconsistent
/// when a panic crosses a lock).
pub(crate) fn lock_std<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

struct NoopWake;

impl Wake for NoopWake {
    fn wake(self: Arc<Self>) {}
}

/// Counts a refresh as failed if it ends without finishing: its loader panicked, or its
/// task was dropped.
struct FailGuard(Option<Box<dyn FnOnce() + Send>>);

impl FailGuard {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for FailGuard {
    fn drop(&mut self) {
        if let Some(failed) = self.0.take() {
            failed();
        }
    }
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
