//! `get_or_insert_with`: insert-if-absent for synchronous code, deadline-aware.

use std::borrow::Cow;

use crate::{
    cache::{Core, Read, ReadFor},
    expiry::now_nanos,
    loom::Ordering::{Acquire, Relaxed},
    Clock, ExpiringCache, ExpiringHasher, ExpiringKey, Shared, Value,
};

impl<K: ExpiringKey, V: Value, E: Shared, S: ExpiringHasher, C: Clock>
    ExpiringCache<K, V, E, S, C>
{
    /// The live value at `key`, or, if there is none, the value `make` returns, stored
    /// atomically with a fresh deadline: for synchronous code that must insert only if
    /// absent. Never waits for a load. Counts a hit or a miss, as
    /// [`get_with`](Self::get_with) does.
    ///
    /// Expiry applies: an entry past its deadline is absent, so `make`'s value takes its
    /// place (the old one is reclaimed as [`Expired`](crate::RemovalCause::Expired)), and
    /// so is a cached error (negative caching), which is no value: it is removed (counted in
    /// `invalidated`) and `make`'s value stored. A value found live is a hit, renewed under
    /// time-to-idle as any read renews it (a refresh that falls due starts only with the
    /// cache-wide loader of an [`ExpiringLoadingCache`](crate::ExpiringLoadingCache)). A
    /// value stored here gets its deadline from the policy as a new entry: time-to-live,
    /// time-to-idle, or [`Expiry::expire_after_create`](crate::Expiry::expire_after_create).
    ///
    /// `make` runs at most once, only on a miss, with no lock held; then its value is
    /// stored unless a live value came meanwhile, in which case that value is returned and
    /// `make`'s is dropped. Either way **the value returned is the one stored**. A load in
    /// flight for `key` is not waited for: `make`'s value settles it, and its callers get
    /// that value too, as in [`Cache::get_or_insert_with`](deferred_cache::Cache::get_or_insert_with).
    ///
    /// ```
    /// use deferred_expiring::{ExpiringCache, ManualClock};
    /// use std::time::Duration;
    /// let clock = ManualClock::new();
    /// let cache: ExpiringCache<u8, String, std::convert::Infallible, _, _> = ExpiringCache::builder()
    ///     .time_to_live(Duration::from_secs(10))
    ///     .clock(clock.clone())
    ///     .build();
    /// assert_eq!(cache.get_or_insert_with(1, || "first".into()), "first");
    /// assert_eq!(cache.get_or_insert_with(1, || unreachable!()), "first");
    /// clock.advance(Duration::from_secs(10)); // expired: absent, so inserted anew
    /// assert_eq!(cache.get_or_insert_with(1, || "second".into()), "second");
    /// assert_eq!((cache.stats().cache.hits, cache.stats().cache.misses), (1, 2));
    /// assert_eq!(cache.stats().cache.expired, 1);
    /// ```
    pub fn get_or_insert_with(&self, key: K, make: impl FnOnce() -> V) -> V {
        let core = &*self.core;
        let mut make = Some(make);
        // `make`'s value, kept for another try if the entry it went into was dropped.
        let mut made: Option<V> = None;
        // The one read that counts this call (a hit, or a miss); what follows counts nothing.
        let mut now = core.tend();
        // The one hash of this call: every step below takes it from here.
        let hash = core.inner.hash(&key);
        match core.read(hash, &key, || Cow::Borrowed(&key), now, ReadFor::Insert) {
            Read::Hit { value, refresh } => {
                if let Some(id) = refresh {
                    Core::refresh_with_loader(&self.core, key, hash, id);
                }
                return value;
            }
            Read::Expired(id) => core.expire(hash, &key, id, now),
            Read::CachedError => core.drop_cached_error(hash, &key, now),
            Read::Failed(_) | Read::Absent => {}
        }
        loop {
            // The entry this call made, if the inner cache asked for one: its id and timer.
            let mut mine = None;
            let found = core
                .inner
                .get_or_insert_with_uncounted_hashed(hash, key.clone(), || {
                    let value = match made.take() {
                        Some(value) => value,
                        None => make.take().expect("`make` runs at most once")(),
                    };
                    made = Some(value.clone());
                    let entry = core.new_entry(hash, &key, Ok(value), None);
                    mine = Some((entry.id, entry.timer.load(Relaxed)));
                    entry
                });
            core.discard_unless_stored(hash, &key, mine);
            let ours = mine.is_some_and(|(id, _)| id == found.id);
            match found.slot {
                // This call's value is returned even if its deadline has passed (a
                // time-to-live of zero): it is the one stored, if only for an instant.
                Ok(value) if ours || found.deadline.load(Acquire) > now_nanos(now) => return value,
                // Stored by someone else since this call looked, and already expired, or a
                // cached error: no value. Out with it, and try again.
                Ok(_) => core.expire(hash, &key, found.id, now),
                Err(_) => core.drop_cached_error(hash, &key, now),
            }
            now = core.tend();
        }
    }
}
