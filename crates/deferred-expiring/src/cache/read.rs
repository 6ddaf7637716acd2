//! Reads and deadlines: what a read of the inner cache finds at a moment (a live value, renewed
//! under time-to-idle; a cached error; an expired entry; nothing), and the public reads built
//! on it.

use std::{
    borrow::{Borrow, Cow},
    future::Future,
    hash::Hash,
    sync::Arc,
    time::Duration,
};

use deferred_cache::Iter;

use super::{Core, Entry, ExpiringCache};
use crate::{
    clock::Clock,
    expiry::{now_nanos, NEVER},
    get::{GetWith, OptionallyGetWith},
    loom::Ordering::*,
    ExpiringHasher, ExpiringKey, Shared, Value,
};

// Named in docs only.
#[cfg(doc)]
use crate::ExpiringBuilder;
#[cfg(doc)]
use deferred_cache::Cache;

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

impl<K: ExpiringKey, V: Value, E: Shared, S: ExpiringHasher, C: Clock>
    ExpiringCache<K, V, E, S, C>
{
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

    /// [`get_with`](Self::get_with) whose `loader` is given the key: a caller that hands its
    /// key over need not clone it into the loader, a clone every hit would pay for.
    ///
    /// ```
    /// use deferred_expiring::ExpiringCache;
    /// # futures::executor::block_on(async {
    /// let lengths: ExpiringCache<String, usize> = ExpiringCache::builder()
    ///     .time_to_live(std::time::Duration::from_secs(5))
    ///     .build();
    /// let len = lengths.get_with_key("four".to_string(), |key| {
    ///     let len = key.len();
    ///     async move { Ok(len) }
    /// });
    /// assert_eq!(len.await, Ok(4));
    /// # });
    /// ```
    pub fn get_with_key<F, Fut>(
        &self,
        key: K,
        loader: F,
    ) -> GetWith<'_, K, V, E, S, C, deferred_cache::WithKey<F>>
    where
        F: FnOnce(&K) -> Fut,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
    {
        GetWith::new(self, key, deferred_cache::WithKey::new(loader))
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
        // The one hash of this call: the read, and the reclamation or refresh it may start.
        let hash = core.inner.hash(key);
        match core.read(
            hash,
            key,
            || Cow::Owned(key.to_owned()),
            now,
            ReadFor::Probe,
        ) {
            Read::Hit { value, refresh } => {
                if let Some(id) = refresh {
                    Core::refresh_with_loader(&self.core, key.to_owned(), hash, id);
                }
                Some(value)
            }
            Read::Failed(_) | Read::CachedError => None,
            Read::Expired(id) => {
                core.expire(hash, key, id, now);
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
}

impl<K: ExpiringKey, V: Value, E: Shared, S: ExpiringHasher, C: Clock> Core<K, V, E, S, C> {
    /// Reads `key` (whose hash is `hash`: the caller's one hash of its operation) at `now`:
    /// a hit (renewed under time-to-idle, perhaps claiming a refresh), a cached error, an
    /// expired entry, or nothing.
    ///
    /// `key_of` gives the key as a `K` where one is needed (an `Expiry` policy's
    /// `expire_after_read`, a timer): borrowed when the caller has a `&K`, made owned from a
    /// borrowed form only then.
    #[inline]
    pub(crate) fn read<'k, Q>(
        &self,
        hash: u64,
        key: &Q,
        key_of: impl Fn() -> Cow<'k, K>,
        now: Duration,
        mode: ReadFor,
    ) -> Read<V, E>
    where
        K: Borrow<Q> + 'k,
        Q: Eq + ?Sized,
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
                        let key = key_of().into_owned();
                        let bits = self.timers.schedule(next, key, hash, entry.id);
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
            self.inner.get_if_present_with_hashed(hash, key, f)
        } else {
            self.inner.hit_with_hashed(hash, key, f)
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

    /// Before a write at `key` (whose hash is `hash`): the deadline of the value there if it
    /// is live at `now` (for `Expiry::expire_after_update`), and an expired one, not yet
    /// reclaimed, removed as expired (not as replaced).
    pub(super) fn live_deadline(&self, hash: u64, key: &K, now: Duration) -> Option<u64> {
        let now_nanos = now_nanos(now);
        let old = self
            .inner
            .peek_with_hashed(hash, key, |old| (old.id, old.deadline.load(Acquire)))?;
        match old {
            (_, deadline) if deadline > now_nanos => Some(deadline),
            (id, _) => {
                self.expire(hash, key, id, now);
                None
            }
        }
    }

    /// Removes the cached error at `key` (whose hash is `hash`), if one is there before its
    /// deadline at `now`: it is no value, for a write that takes its place. Counted as
    /// invalidated (not told to the listener, which hears of values only).
    pub(crate) fn drop_cached_error(&self, hash: u64, key: &K, now: Duration) {
        let now = now_nanos(now);
        self.inner.invalidate_if_hashed(hash, key, |entry| {
            entry.slot.is_err() && entry.deadline.load(Acquire) > now
        });
    }
}
