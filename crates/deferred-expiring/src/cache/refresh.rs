//! Refresh-ahead: a read past the refresh interval starts a reload in the background (on the
//! spawner, or polled by later operations when there is none); the old value serves until the
//! new one is stored, and a failed refresh leaves it in place.

use std::{
    future::Future,
    panic::{catch_unwind, AssertUnwindSafe},
    sync::{Arc, Weak},
    task::{Context, Poll, Wake, Waker},
};

use super::{lock_std, Core, Task};
use crate::{clock::Clock, loom::Ordering::*, ExpiringHasher, ExpiringKey, Shared, Value};

impl<K: ExpiringKey, V: Value, E: Shared, S: ExpiringHasher, C: Clock> Core<K, V, E, S, C> {
    /// Starts the refresh of entry `id` at `key` (whose hash is `hash`) with the cache-wide
    /// loader, if there is one (a read claims a refresh with no loader of its own only when
    /// there is).
    pub(crate) fn refresh_with_loader(this: &Arc<Self>, key: K, hash: u64, id: u64) {
        if let Some(loader) = &this.loader {
            let load = loader(&key);
            Core::refresh(this, key, hash, id, async move { load.await.ok() });
        }
    }

    /// Starts the refresh of entry `id` at `key` (whose hash is `hash`, kept for the refresh's
    /// end) with `load` (`None`: it failed): on the spawner, or polled once here and then by
    /// later operations.
    pub(crate) fn refresh<Fut>(this: &Arc<Self>, key: K, hash: u64, id: u64, load: Fut)
    where
        Fut: Future<Output = Option<V>> + Send + 'static,
    {
        this.counters.refreshes_started.fetch_add(1, Relaxed);
        // Weak: a task waiting in `pending` must not keep its own cache alive, and one on a
        // spawner that outlives the cache just drops its result.
        let (core, fail_core, fail_key) = (Arc::downgrade(this), Arc::downgrade(this), key.clone());
        let guard = FailGuard(Some(Box::new(move || {
            if let Some(core) = fail_core.upgrade() {
                core.refresh_failed(hash, &fail_key, id);
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
                Some(value) => core.refresh_done(hash, &key, id, value),
                None => core.refresh_failed(hash, &key, id),
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
    fn refresh_done(&self, hash: u64, key: &K, id: u64, value: V) {
        let previous = self.live_deadline(hash, key, self.clock.now());
        let entry = self.new_entry(hash, key, Ok(value), previous);
        let timer = entry.timer.load(Relaxed);
        if self
            .inner
            .replace_if_hashed(hash, key, entry, |old| old.id == id)
        {
            self.counters.refreshes_ok.fetch_add(1, Relaxed);
        } else {
            self.timers.cancel(timer);
            self.counters.refreshes_discarded.fetch_add(1, Relaxed);
        }
    }

    /// A refresh failed: the old value stays, and the next refresh may start one interval
    /// from now.
    fn refresh_failed(&self, hash: u64, key: &K, id: u64) {
        self.counters.refreshes_failed.fetch_add(1, Relaxed);
        let next = crate::expiry::deadline(self.clock.now(), self.policy.refresh_after);
        self.inner.peek_with_hashed(hash, key, |entry| {
            if entry.id == id {
                // The next refresh may start at `next`.
                entry.refresh_at.store(next, Release);
            }
        });
    }

    /// Polls up to `DRIVE_BATCH` of the refreshes that have no spawner, oldest first, once
    /// each; the unfinished go to the back. A panic in one counts as its failure (through
    /// its guard) and does not reach this caller.
    pub(super) fn drive_refreshes(&self) {
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
}

/// The most reader-driven refreshes one operation polls.
const DRIVE_BATCH: usize = 8;

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
