//! Reclamation: every operation first advances the timer wheel to the clock and removes the
//! entries whose deadline has passed, telling the listener; `run_maintenance` does only that.

use std::{borrow::Borrow, time::Duration};

use super::{tick_at_or_after, tick_of, Core, ExpiringCache, Timed};
use crate::{
    clock::Clock,
    expiry::{now_nanos, NEVER},
    loom::{lock, Ordering::*},
    ExpiringHasher, ExpiringKey, Shared, Value,
};

// Named in docs only.
#[cfg(doc)]
use super::TICK;
#[cfg(doc)]
use crate::ExpiringBuilder;

impl<K: ExpiringKey, V: Value, E: Shared, S: ExpiringHasher, C: Clock>
    ExpiringCache<K, V, E, S, C>
{
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

impl<K: ExpiringKey, V: Value, E: Shared, S: ExpiringHasher, C: Clock> Core<K, V, E, S, C> {
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
    pub(super) fn reclaim(&self, now: Duration, explicit: bool) -> usize {
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
        for Timed { key, hash, id } in fired {
            let mut renewed = None;
            // The hash kept with the timer: reclaiming hashes no key.
            let gone = self.inner.expire_if_hashed(hash, &key, |entry| {
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
                self.inner.peek_with_hashed(hash, &key, |entry| {
                    if entry.id == id {
                        let bits = timers.schedule(deadline, key2, hash, id);
                        let old = entry.timer.swap(bits, AcqRel);
                        timers.cancel(old);
                    }
                });
            }
        }
        removed
    }

    /// Removes the entry `id` at `key` (whose hash is `hash`) if its deadline has passed at
    /// `now`.
    pub(crate) fn expire<Q>(&self, hash: u64, key: &Q, id: u64, now: Duration)
    where
        K: Borrow<Q>,
        Q: Eq + ToOwned<Owned = K> + ?Sized,
    {
        let now = now_nanos(now);
        self.inner.expire_if_hashed(hash, key, |entry| {
            entry.id == id && entry.deadline.load(Acquire) <= now
        });
    }
}
