//! `get_with_blocking`: single-flight loads for plain threads, with the loader on the
//! caller's thread.

use std::{
    future::Future,
    hash::BuildHasher,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, Wake, Waker},
    thread::{self, Thread},
    time::{Duration, Instant},
};

use deferred_core::Deferred;
use deferred_map::Lazy;

use crate::{
    error::Failure,
    reentrancy,
    stats::Outcome,
    stored::{CacheCell, Stored},
    trace, Cache, Key, LoadError, RemovalCause, Shared, Value,
};

impl<K: Key, V: Value, E: Shared, S: BuildHasher> Cache<K, V, E, S> {
    /// The value at `key`, loading it with `loader` on a miss, for a thread with no async
    /// executor: it blocks (parks) until the value is there. Single flight holds across
    /// threads and with async callers: callers that miss the key at once share one load,
    /// whether they came through `get_with_blocking`, [`get_with`](Self::get_with) or
    /// [`get`](crate::LoadingCache::get), and every one of them gets its outcome. Errors
    /// are shared and not cached, as for `get_with`. Do not call it from an async task: it
    /// blocks the executor's thread.
    ///
    /// **The loader runs on the caller's thread**, synchronously, with no lock held; it is
    /// not stored in the entry, so no one else can take it over. What that means:
    ///
    /// * A loader that stalls (blocks on I/O without a timeout, say) holds up every caller
    ///   that joined its load, blocking or async, until it returns: bound its waits
    ///   yourself. (An async load, by contrast, can be driven by any of its callers.)
    /// * If it panics (or the clone of the value it returned does), the panic unwinds out
    ///   of this call, and every caller that joined the load gets [`LoadError::Panicked`];
    ///   the entry goes, and the cache stays usable.
    /// * If [`get_or_insert_with`](Self::get_or_insert_with) settles the key while the
    ///   loader runs, its value is the key's: it stays stored whatever the loader then
    ///   does, every caller that joined the load gets it, and so does this one if the
    ///   loader returns (a value or an error; a panic still unwinds). The load is counted
    ///   by how the loader ended.
    /// * If it calls `get_with_blocking` (or `get_with`) for its own key on the same
    ///   thread, that call gets [`LoadError::Reentrant`] rather than a deadlock.
    ///
    /// A caller that joins a load another caller started waits for it. If that load is an
    /// async one (from `get_with`), this thread helps drive it, as any of its callers may,
    /// so it must not need a particular runtime's context (tokio's I/O or timers, say) to
    /// make progress: join such loads from a task, not from a plain thread. If that load
    /// reads its own key while this thread drives it, the read gets
    /// [`LoadError::Reentrant`], as it would under an async caller.
    ///
    /// ```
    /// use std::sync::{Arc, Barrier};
    /// use deferred_cache::Cache;
    /// let cache: Cache<u32, String> = Cache::bounded(100);
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
    /// assert_eq!(cache.stats().loads_ok, 1); // one load, however the threads raced
    /// ```
    pub fn get_with_blocking(
        &self,
        key: K,
        loader: impl FnOnce() -> Result<V, E>,
    ) -> Result<V, LoadError<E>> {
        // The one hash of this call: every step below takes it from here.
        self.get_with_blocking_hashed(self.hash(&key), key, loader)
    }

    /// As [`get_with_blocking`](Self::get_with_blocking), with the key's hash given: `hash`
    /// must be `self.hash(&key)` (see [`hash`](Self::hash)).
    #[doc(hidden)]
    pub fn get_with_blocking_hashed(
        &self,
        hash: u64,
        key: K,
        loader: impl FnOnce() -> Result<V, E>,
    ) -> Result<V, LoadError<E>> {
        if let Some(value) = self.read_hashed(hash, &key) {
            self.inner.counters.hit();
            return Ok(value);
        }
        // The load's span-to-be, made before this caller's cell can be in the map: what a
        // subscriber does here (panic, read the key) strands no one.
        let trace = trace::Load::new(|| hash);
        let mine: CacheCell<V, E> = Lazy::pending();
        let get = self
            .inner
            .map
            .get_or_add_cell_hashed(hash, key.clone(), mine.clone());
        self.inner.counters.miss(!get.added());
        if get.added() {
            self.load_blocking(key, hash, &mine, get, trace, loader)
        } else {
            self.join_blocking(key, hash, get)
        }
    }

    /// `get_with_blocking` on a key whose load another caller started: waits for it (`get`),
    /// parked.
    fn join_blocking(
        &self,
        key: K,
        hash: u64,
        get: deferred_map::Get<'_, K, Stored<V>, Failure<E>, S>,
    ) -> Result<V, LoadError<E>> {
        let id = id(get.cell());
        if reentrancy::is_inside(id) {
            return Err(LoadError::Reentrant);
        }
        let cell = get.cell().clone();
        // Polling the map's future may drive an async load on this thread: inside the load's
        // re-entrancy scope, as an async caller's poll is, so that the load reading its own
        // key gets `LoadError::Reentrant` instead of waiting on itself.
        match block_on(get, id) {
            Ok(stored) => {
                self.admit_loaded(Some(&key), hash, &cell);
                Ok(stored.value)
            }
            Err(error) => Err(error.into()),
        }
    }

    /// `get_with_blocking`'s own load: runs `loader` on this thread for `mine`, the entry
    /// this caller added (`get` holds its interest in it), and settles the entry with the
    /// outcome.
    fn load_blocking(
        &self,
        key: K,
        hash: u64,
        mine: &CacheCell<V, E>,
        get: deferred_map::Get<'_, K, Stored<V>, Failure<E>, S>,
        trace: trace::Load,
        loader: impl FnOnce() -> Result<V, E>,
    ) -> Result<V, LoadError<E>> {
        // The guard settles the entry if the span's subscriber, the loader, or the clone of
        // its value, unwinds: it stays armed until the cell is completed.
        let mut load = Running {
            cache: self,
            key: &key,
            hash,
            cell: mine,
            started: Instant::now(),
            finished: false,
            trace,
        };
        let result = {
            let _inside = reentrancy::enter(id(mine));
            // Opened inside the guard and the re-entrancy scope: a subscriber that panics
            // fails the load as a panicking loader does, and one that reads the key gets
            // `LoadError::Reentrant`, as the async path's span (opened in the load's poll).
            load.trace.start();
            load.trace.in_scope(loader)
        };
        match result {
            Ok(value) => {
                let won = mine.succeed(Stored::new(value.clone())).is_ok();
                let took = Some(load.finish(Outcome::Ok));
                drop(load);
                self.inner.counters.load(Outcome::Ok, took);
                drop(get);
                if won {
                    self.admit_loaded(Some(&key), hash, mine);
                    return Ok(value);
                }
                // `get_or_insert_with` settled the key first (its completion may still be
                // under way: this waits for its write only): its value is the key's, and its
                // callers', so it is this caller's too.
                let settled = settled_value(mine);
                self.admit_loaded(Some(&key), hash, mine);
                settled
            }
            Err(error) => {
                let took = Some(load.finish(Outcome::Failed));
                drop(load);
                self.inner.counters.load(Outcome::Failed, took);
                drop(get);
                let error = Arc::new(error);
                let failed = self.settle_failed(&key, hash, mine, |cell| {
                    cell.fail(Failure::Error(Arc::clone(&error))).is_ok()
                });
                if failed {
                    return Err(LoadError::Failed(error));
                }
                // As in the `Ok` arm: `get_or_insert_with` settled the key first.
                let settled = settled_value(mine);
                self.admit_loaded(Some(&key), hash, mine);
                settled
            }
        }
    }

    /// Completes this caller's load `mine` as failed (`fail` does it; `true` if it won),
    /// taking its entry out of the map first, so that no later caller is served the
    /// failure. Unless `get_or_insert_with` completed `mine` with a value first: then the
    /// value stays (returns `false`). Only the entry with no value yet is removed; if the
    /// value lands in it between the removal and `fail` (which then loses), the value has
    /// left the map, and that is booked as a removal (policy, counter, listener).
    fn settle_failed(
        &self,
        key: &K,
        hash: u64,
        mine: &CacheCell<V, E>,
        fail: impl FnOnce(&Deferred<Stored<V>, Failure<E>>) -> bool,
    ) -> bool {
        let removed = self.inner.map.remove_if_hashed(hash, key, |cell| {
            Lazy::ptr_eq(cell, mine) && cell.try_get().is_none()
        });
        if fail(mine.deferred()) {
            return true;
        }
        if let Some(old) = removed {
            // Lost to a completion under way: wait for its write, then book it.
            let _ = old.deferred().wait_blocking();
            self.book_removed(key, hash, &old, RemovalCause::Explicit);
        }
        false
    }
}

/// The outcome of this caller's cell once someone else completed it (or is completing it:
/// the wait is for that write only). Only `get_or_insert_with` completes another caller's
/// blocking cell, with a value.
fn settled_value<V: Clone, E>(mine: &CacheCell<V, E>) -> Result<V, LoadError<E>> {
    match mine.deferred().wait_blocking() {
        Ok(stored) => Ok(stored.value.clone()),
        Err(error) => Err(error.cloned().into()),
    }
}

/// A blocking load in progress. If the loader (or the clone of its value) unwinds, it
/// completes the cell as panicked and takes the entry out of the map (as `settle_failed`
/// does: unless `get_or_insert_with` settled it with a value first), so that the callers
/// who joined it get `LoadError::Panicked` instead of waiting forever.
struct Running<'a, K: Key, V: Value, E: Shared, S: BuildHasher> {
    cache: &'a Cache<K, V, E, S>,
    key: &'a K,
    hash: u64,
    cell: &'a CacheCell<V, E>,
    started: Instant,
    finished: bool,
    trace: trace::Load,
}

impl<K: Key, V: Value, E: Shared, S: BuildHasher> Running<'_, K, V, E, S> {
    /// The loader returned: disarms the guard, records `outcome` on the span, and returns
    /// how long the load took.
    fn finish(&mut self, outcome: Outcome) -> Duration {
        self.finished = true;
        let took = self.started.elapsed();
        self.trace.finish(outcome, took);
        took
    }
}

impl<K: Key, V: Value, E: Shared, S: BuildHasher> Drop for Running<'_, K, V, E, S> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        self.cache
            .settle_failed(self.key, self.hash, self.cell, Deferred::die);
        let took = self.started.elapsed();
        self.trace.finish(Outcome::Panicked, took);
        self.cache
            .inner
            .counters
            .load(Outcome::Panicked, Some(took));
    }
}

/// The identity of a cell, as the re-entrancy guard knows it.
fn id<V, E>(cell: &CacheCell<V, E>) -> usize {
    cell.deferred() as *const Deferred<Stored<V>, Failure<E>> as usize
}

/// Wakes a parked thread.
struct Unpark(Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// Polls `fut` on this thread until it is ready, parking in between.
/// Each poll runs inside the re-entrancy scope of the load of cell `id`, which it may
/// drive.
fn block_on<F: Future + Unpin>(mut fut: F, id: usize) -> F::Output {
    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        let polled = {
            let _inside = reentrancy::enter(id);
            Pin::new(&mut fut).poll(&mut cx)
        };
        if let Poll::Ready(output) = polled {
            return output;
        }
        // A wake-up may be spurious: the loop polls again and parks again if need be.
        thread::park();
    }
}
