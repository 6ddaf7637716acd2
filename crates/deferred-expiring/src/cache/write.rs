//! Writes: the entries that loads and inserts make (each with its deadline and timer), and
//! the public inserts and invalidations.

use std::{borrow::Borrow, future::Future, hash::Hash, sync::Arc, time::Duration};

use super::{Core, Entry, ExpiringCache};
use crate::{
    clock::Clock,
    expiry::{now_nanos, NEVER},
    loom::{AtomicU64, Ordering::*},
    ExpiringHasher, ExpiringKey, Shared, Value,
};

// Named in docs only.
#[cfg(doc)]
use deferred_cache::RemovalCause;

impl<K: ExpiringKey, V: Value, E: Shared, S: ExpiringHasher, C: Clock>
    ExpiringCache<K, V, E, S, C>
{
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
        // The one hash of this call: the old entry's deadline, the new one's timer, and the
        // inner cache's insert all take it.
        let hash = core.inner.hash(&key);
        let previous = core.live_deadline(hash, &key, now);
        let entry = core.new_entry(hash, &key, Ok(value), previous);
        core.inner.insert_hashed(hash, key, entry);
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
        let hash = self.core.inner.hash(key);
        self.core.inner.invalidate_hashed(hash, key)
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
        let hash = core.inner.hash(key);
        let (removed, _expired) =
            core.invalidate_live_if(hash, key, now, |entry| entry.slot.as_ref().is_ok_and(pred));
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
        let mut value = None;
        // The one hash of this call, for both of its removals.
        let hash = core.inner.hash(key);
        let (removed, expired) = core.invalidate_live_if(hash, key, now, |entry| {
            value = entry.slot.as_ref().ok().cloned();
            true
        });
        if removed {
            return value;
        }
        if expired {
            return None;
        }
        // Absent, or a load in flight, which `invalidate_if` leaves: removed as `invalidate`
        // removes it. (Had it completed just now, what is removed is its fresh entry.)
        let entry = core.inner.remove_hashed(hash, key)?;
        match entry.slot {
            Ok(value) if entry.deadline.load(Acquire) > now_nanos(now) => Some(value),
            _ => None,
        }
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
}

impl<K: ExpiringKey, V: Value, E: Shared, S: ExpiringHasher, C: Clock> Core<K, V, E, S, C> {
    /// Removes the complete entry (a value or a cached error) at `key` (whose hash is
    /// `hash`) if it is live at `now` and `pred` says so; one past its deadline is left to
    /// `pred` unseen and reclaimed as expired instead. Tested and removed atomically, so an
    /// entry whose deadline passed is never taken for a live one. Returns whether `pred`'s
    /// entry was removed, and whether an expired one was found (and reclaimed).
    fn invalidate_live_if<Q>(
        &self,
        hash: u64,
        key: &Q,
        now: Duration,
        pred: impl FnOnce(&Entry<V, E>) -> bool,
    ) -> (bool, bool)
    where
        K: Borrow<Q>,
        Q: Eq + ToOwned<Owned = K> + ?Sized,
    {
        let now_nanos = now_nanos(now);
        let mut expired = None;
        let removed = self.inner.invalidate_if_hashed(hash, key, |entry| {
            if entry.deadline.load(Acquire) <= now_nanos {
                expired = Some(entry.id);
                return false;
            }
            pred(entry)
        });
        if let Some(id) = expired {
            self.expire(hash, key, id, now);
        }
        (removed, expired.is_some())
    }

    /// The future stored in an inner entry: the user's load at `key` (whose hash is
    /// `hash`), turned into an `Entry`.
    pub(crate) async fn load_entry<Fut>(
        self: Arc<Self>,
        hash: u64,
        key: K,
        fut: Fut,
    ) -> Result<Entry<V, E>, E>
    where
        Fut: Future<Output = Result<V, E>> + Send + 'static,
    {
        self.loaded(hash, &key, fut.await)
    }

    /// The future stored in an inner entry by `optionally_get_with`: the user's load, its
    /// value turned into an `Entry` (`None`, no value, is not stored).
    pub(crate) async fn load_optional_entry<Fut>(
        self: Arc<Self>,
        hash: u64,
        key: K,
        fut: Fut,
    ) -> Option<Entry<V, E>>
    where
        Fut: Future<Output = Option<V>> + Send + 'static,
    {
        let value = fut.await?;
        Some(self.new_entry(hash, &key, Ok(value), None))
    }

    /// The entry a load's outcome at `key` (whose hash is `hash`) makes: a value, or an
    /// error kept under negative caching (counted then); an error not kept is given back.
    pub(crate) fn loaded(
        &self,
        hash: u64,
        key: &K,
        outcome: Result<V, E>,
    ) -> Result<Entry<V, E>, E> {
        match outcome {
            Ok(value) => Ok(self.new_entry(hash, key, Ok(value), None)),
            Err(error) if self.policy.negative_ttl.is_some() => {
                self.counters.negative_loads.fetch_add(1, Relaxed);
                Ok(self.new_entry(hash, key, Err(Arc::new(error)), None))
            }
            Err(error) => Err(error),
        }
    }

    /// Cancels the timer of `entry` (its id and timer), made for `key` (whose hash is
    /// `hash`) by a load or an insert that has ended, if the entry stored at `key` is not
    /// it: it was never stored (another value settled the key, or the load was invalidated
    /// in flight), or it was and has gone (its removal cancelled the timer already;
    /// cancelling again does nothing). Once its load has ended, an entry not stored now
    /// never will be.
    pub(crate) fn discard_unless_stored(&self, hash: u64, key: &K, entry: Option<(u64, u64)>) {
        if let Some((id, timer)) = entry {
            if timer != NEVER
                && self.inner.peek_with_hashed(hash, key, |stored| stored.id) != Some(id)
            {
                self.timers.cancel(timer);
            }
        }
    }

    /// A new entry for `slot` at `key` (whose hash is `hash`, kept with its timer), with its
    /// deadline and its timer.
    pub(crate) fn new_entry(
        &self,
        hash: u64,
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
        let timer = self.timers.schedule(deadline, key.clone(), hash, id);
        Entry {
            slot,
            id,
            deadline: AtomicU64::new(deadline),
            hard,
            refresh_at: AtomicU64::new(refresh_at),
            timer: AtomicU64::new(timer),
        }
    }
}
