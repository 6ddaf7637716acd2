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

use crate::{
    error::Failure,
    reentrancy,
    stats::Outcome,
    store::{Claim, LoadCell, LoadId, Waiter},
    trace, Cache, Key, LoadError, Shared, Value,
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
        // The load's span-to-be, made before this caller's cell can be in the table: what a
        // subscriber does here (panic, read the key) strands no one.
        let trace = trace::Load::new(|| hash);
        match self.inner.claim(hash, key) {
            Claim::Ready(value) => {
                self.inner.counters.hit();
                Ok(value)
            }
            Claim::Joined(waiter) => {
                self.inner.counters.miss(true);
                join_blocking(waiter)
            }
            Claim::Mine(cell, id, kept) => {
                self.inner.counters.miss(false);
                self.load_blocking(hash, &cell, id, kept, trace, loader)
            }
        }
    }

    /// `get_with_blocking`'s own load: runs `loader` on this thread for `cell`, the load
    /// this caller put in the key's slot (counting its interest), completes the cell with
    /// the outcome and settles the slot: whoever completes a load's cell settles its slot.
    fn load_blocking(
        &self,
        hash: u64,
        cell: &LoadCell<V, E>,
        id: LoadId,
        kept: Option<K>,
        trace: trace::Load,
        loader: impl FnOnce() -> Result<V, E>,
    ) -> Result<V, LoadError<E>> {
        // The guard settles the load if the span's subscriber, the loader, or the clones of
        // its value, unwind: it stays armed until they are done.
        let mut load = Running {
            cache: self,
            hash,
            cell,
            id,
            started: Instant::now(),
            finished: false,
            trace,
        };
        let result = {
            let _inside = reentrancy::enter(id);
            // Opened inside the guard and the re-entrancy scope: a subscriber that panics
            // fails the load as a panicking loader does, and one that reads the key gets
            // `LoadError::Reentrant`, as the async path's span (opened in the load's poll).
            load.trace.start();
            load.trace.in_scope(loader)
        };
        match result {
            Ok(value) => {
                // The copies for the cell's waiters and for the slot, under the guard.
                let copies = (value.clone(), value.clone());
                let took = Some(load.finish(Outcome::Ok));
                drop(load);
                self.inner.counters.load(Outcome::Ok, took);
                let (waiters, stored) = copies;
                // Weighed with no lock held, before the settle.
                let weight = self.inner.weigh_loaded(kept.as_ref(), &value);
                if cell.succeed(waiters).is_ok() {
                    self.inner.settle(hash, id, Some((stored, weight)));
                    return Ok(value);
                }
                // `get_or_insert_with` settled the key first (its completion may still be
                // under way: this waits for its write only): its value is the key's, and its
                // callers', so it is this caller's too.
                settled_value(cell)
            }
            Err(error) => {
                let took = Some(load.finish(Outcome::Failed));
                drop(load);
                self.inner.counters.load(Outcome::Failed, took);
                let error = Arc::new(error);
                // The cell first, then the slot, as an async load's failure: until the slot
                // goes, a read finds no value, and a caller that misses replaces it.
                if cell.fail(Failure::Error(Arc::clone(&error))).is_ok() {
                    self.inner.settle(hash, id, None);
                    return Err(LoadError::Failed(error));
                }
                // As in the `Ok` arm: `get_or_insert_with` settled the key first.
                settled_value(cell)
            }
        }
    }
}

/// `get_with_blocking` on a key whose load another caller started: waits for it, parked.
fn join_blocking<K, V: Value, E: Shared, S>(
    waiter: Waiter<'_, K, V, E, S>,
) -> Result<V, LoadError<E>> {
    let id = waiter.id();
    if reentrancy::is_inside(id) {
        return Err(LoadError::Reentrant);
    }
    // Polling the waiter may drive an async load on this thread: inside the load's
    // re-entrancy scope, as an async caller's poll is, so that the load reading its own key
    // gets `LoadError::Reentrant` instead of waiting on itself.
    block_on(waiter, id).map_err(Into::into)
}

/// The outcome of this caller's cell once someone else completed it (or is completing it:
/// the wait is for that write only). Only `get_or_insert_with` completes another caller's
/// blocking cell, with a value.
fn settled_value<V: Clone, E>(cell: &LoadCell<V, E>) -> Result<V, LoadError<E>> {
    match cell.wait_blocking() {
        Ok(value) => Ok(value.clone()),
        Err(error) => Err(error.cloned().into()),
    }
}

/// A blocking load in progress. If the loader (or the clone of its value) unwinds, it
/// completes the cell as panicked and, if that won, takes the load's slot out (unless
/// `get_or_insert_with` settled it with a value first: its completer settles it), so that
/// the callers who joined it get `LoadError::Panicked` instead of waiting forever.
struct Running<'a, K, V, E, S> {
    cache: &'a Cache<K, V, E, S>,
    hash: u64,
    cell: &'a LoadCell<V, E>,
    id: LoadId,
    started: Instant,
    finished: bool,
    trace: trace::Load,
}

impl<K, V, E, S> Running<'_, K, V, E, S> {
    /// The loader returned: disarms the guard, records `outcome` on the span, and returns
    /// how long the load took.
    fn finish(&mut self, outcome: Outcome) -> Duration {
        self.finished = true;
        let took = self.started.elapsed();
        self.trace.finish(outcome, took);
        took
    }
}

impl<K, V, E, S> Drop for Running<'_, K, V, E, S> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        if self.cell.die() {
            self.cache.inner.drop_load(self.hash, self.id);
        }
        let took = self.started.elapsed();
        self.trace.finish(Outcome::Panicked, took);
        self.cache
            .inner
            .counters
            .load(Outcome::Panicked, Some(took));
    }
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
fn block_on<F: Future + Unpin>(mut fut: F, id: LoadId) -> F::Output {
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
