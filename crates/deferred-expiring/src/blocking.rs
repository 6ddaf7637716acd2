//! `get_with_blocking`: single-flight loads for plain threads, deadline-aware.

use std::borrow::Cow;

use deferred_cache::LoadError;

use crate::{
    cache::{Core, Read, ReadFor},
    expiry::now_nanos,
    loom::Ordering::{Acquire, Relaxed},
    Clock, ExpiringCache, ExpiringHasher, ExpiringKey, Shared, Value,
};

impl<K: ExpiringKey, V: Value, E: Shared, S: ExpiringHasher, C: Clock>
    ExpiringCache<K, V, E, S, C>
{
    /// The value at `key`, loading it with `loader` on a miss or after expiry, for a thread
    /// with no async executor: it blocks (parks) until the value is there. Single flight
    /// holds across threads and with async callers: callers that miss the key at once share
    /// one load, whether they came through `get_with_blocking`,
    /// [`get_with`](Self::get_with) or [`optionally_get_with`](Self::optionally_get_with),
    /// and every one of them gets its outcome. Do not call it from an async task: it blocks
    /// the executor's thread.
    ///
    /// Expiry applies as for `get_with`: a stored value is returned only before its
    /// deadline, an expired one is loaded anew, and a loaded value gets its deadline from
    /// the policy. Errors are shared by the callers of the load and not kept, unless
    /// negative caching is on ([`cache_errors_for`](crate::ExpiringBuilder::cache_errors_for)):
    /// then the error is kept for its own time-to-live and answers every read until then,
    /// as for `get_with`. A refresh that falls due on a hit starts only with the cache-wide
    /// loader of an [`ExpiringLoadingCache`](crate::ExpiringLoadingCache): this `loader`
    /// runs on the caller's thread, never in the background.
    ///
    /// **The loader runs on the caller's thread**, synchronously, with no lock held, as in
    /// [`Cache::get_with_blocking`](deferred_cache::Cache::get_with_blocking), whose notes
    /// all hold here:
    ///
    /// * A loader that stalls (blocks on I/O without a timeout, say) holds up every caller
    ///   that joined its load, blocking or async, until it returns: no one else can take it
    ///   over, so bound its waits yourself.
    /// * If it panics, the panic unwinds out of this call, and every caller that joined the
    ///   load gets [`LoadError::Panicked`]; the entry goes, and the cache stays usable.
    /// * If it calls `get_with_blocking` (or `get_with`) for its own key on the same thread,
    ///   that call gets [`LoadError::Reentrant`] rather than a deadlock.
    /// * A caller that joins an async load helps drive it on this thread: join such loads
    ///   from a task if they need a particular runtime's context.
    ///
    /// ```
    /// use deferred_expiring::{ExpiringCache, ManualClock};
    /// use std::{sync::{Arc, Barrier}, time::Duration};
    /// let clock = ManualClock::new();
    /// let cache: ExpiringCache<u32, String, String, _, _> = ExpiringCache::builder()
    ///     .time_to_live(Duration::from_secs(60))
    ///     .clock(clock.clone())
    ///     .build();
    /// let ready = Arc::new(Barrier::new(4));
    /// let threads: Vec<_> = (0..4)
    ///     .map(|_| {
    ///         let (cache, ready) = (cache.clone(), Arc::clone(&ready));
    ///         std::thread::spawn(move || {
    ///             ready.wait();
    ///             cache.get_with_blocking(7, || Ok("seven".to_string()))
    ///         })
    ///     })
    ///     .collect();
    /// for thread in threads {
    ///     assert_eq!(thread.join().unwrap(), Ok("seven".to_string()));
    /// }
    /// assert_eq!(cache.stats().cache.loads_ok, 1); // one load, however the threads raced
    /// clock.advance(Duration::from_secs(60)); // expired: loaded again
    /// assert_eq!(cache.get_with_blocking(7, || Ok("SEVEN".to_string())), Ok("SEVEN".to_string()));
    /// ```
    pub fn get_with_blocking(
        &self,
        key: K,
        loader: impl FnOnce() -> Result<V, E>,
    ) -> Result<V, LoadError<E>> {
        let core = &*self.core;
        let start = core.tend();
        let mut now = start;
        let mut loader = Some(loader);
        // Tries left after this one for a value found already expired (see below): a bound,
        // so that writers racing this call with lagging clocks cannot keep it looping.
        let mut retries = RETRIES;
        // The one hash of this call, however many times it looks again: every step below
        // takes it from here.
        let hash = core.inner.hash(&key);
        loop {
            match core.read(
                hash,
                &key,
                || Cow::Borrowed(&key),
                now,
                ReadFor::BlockingLoad,
            ) {
                Read::Hit { value, refresh } => {
                    if let Some(id) = refresh {
                        Core::refresh_with_loader(&self.core, key, hash, id);
                    }
                    return Ok(value);
                }
                Read::Failed(error) => return Err(LoadError::Failed(error)),
                Read::Expired(id) => core.expire(hash, &key, id, now),
                Read::CachedError | Read::Absent => {}
            }
            // The entry this call's loader made, if it ran: its id and timer.
            let mut mine = None;
            let loaded = core.inner.get_with_blocking_hashed(hash, key.clone(), || {
                let loader = loader.take().expect("the loader runs at most once");
                let entry = core.loaded(hash, &key, loader())?;
                mine = Some((entry.id, entry.timer.load(Relaxed)));
                Ok(entry)
            });
            // The entry made here, if the key does not hold it now: a value that came
            // another way (`get_or_insert_with` settled the load) is the key's, and this
            // caller's; or the load was invalidated while it ran. Its timer goes.
            core.discard_unless_stored(hash, &key, mine);
            let entry = loaded?;
            if loader.is_some() && retries > 0 && entry.deadline.load(Acquire) <= now_nanos(start) {
                // This caller's loader did not run, and the value it got had expired before
                // the call began: stored by someone else between the read above and the
                // inner cache's own (a clock read on another thread lagging this one's), as
                // `get_with` checks. Out with it, and look again. (Joined loads started after
                // this call did, so their values have later deadlines, unless the
                // time-to-live is zero and the clock has not moved.)
                core.expire(hash, &key, entry.id, now);
                retries -= 1;
                now = core.tend();
                continue;
            }
            return entry.slot.map_err(LoadError::Failed);
        }
    }
}

/// How many times one `get_with_blocking` call looks again after getting a value that had
/// expired before it began.
const RETRIES: u32 = 2;
