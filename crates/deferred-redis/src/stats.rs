//! The tier's counters.

use std::sync::atomic::{AtomicU64, Ordering};

use deferred_expiring::ExpiringStats;

/// What a [`HybridCache`](crate::HybridCache) has done: the L1's own counters, and the tier's.
///
/// Every counter only grows. A read that ends in the L1 (a hit, or a caller that joined a
/// local load) counts nothing here beyond `l1`; the rest describe the one L1 load that went
/// to Redis for it.
///
/// ```
/// let stats = deferred_redis::HybridStats::default();
/// assert_eq!(stats.l2_errors, 0);
/// assert_eq!(stats.l1.cache.hits, 0);
/// ```
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct HybridStats {
    /// The local cache's counters (hits, misses, loads by outcome, expiries...). A load
    /// there is one trip to the tier: `l1.cache.loads_ok` counts those that gave a value,
    /// from Redis or from a loader.
    pub l1: ExpiringStats,
    /// L1 loads answered by a value in Redis that decoded.
    pub l2_hits: u64,
    /// L1 loads that found no value in Redis (counted once per load, however long it waited).
    pub l2_misses: u64,
    /// Values in Redis that did not decode, or value keys of another Redis type: each made
    /// its read a miss, loaded once across the processes like any other.
    pub decode_errors: u64,
    /// Values the codec could not encode: a loaded one is returned and kept in L1, not
    /// written; one given to `insert` is kept in this L1, and Redis keeps its old value.
    pub encode_errors: u64,
    /// Loads that took the key's lease on their first try and ran the loader.
    pub lease_wins: u64,
    /// Loads that found the lease held by another load (here or in another process) and
    /// waited for its value.
    pub lease_waits: u64,
    /// Waiting loads that took the lease over because it went away without a value (its
    /// holder failed, died or stalled past the lease), and then ran the loader.
    pub takeovers: u64,
    /// Lease renewals that kept a slow loader's lease alive.
    pub lease_renewals: u64,
    /// Leases found gone or taken by someone else while their loader was still running.
    pub leases_lost: u64,
    /// Loaded values written to Redis (and announced).
    pub l2_writes: u64,
    /// Writes refused because the writer's lease was no longer its own (a write or another
    /// load took it), or because an `invalidate_all` began after the lease was taken (the
    /// prefix's generation changed): fencing. Its value went to its own callers, but
    /// neither to Redis nor to this L1.
    pub fenced_writes: u64,
    /// Redis round trips that failed or ran past the per-operation timeout.
    pub l2_errors: u64,
    /// Loads that ran the loader locally, without a lease, because Redis failed
    /// (fail-safe) or because the wait for another process's value ran past its bound.
    pub local_fallbacks: u64,
    /// Of `local_fallbacks`, those whose wait for another load ran past `max_wait`.
    pub wait_timeouts: u64,
    /// Backplane messages received from other caches and applied to this L1 (this cache's
    /// own, and malformed ones, are not counted). Counted after the message is applied.
    pub backplane_received: u64,
    /// Times the backplane subscription was made (the first time, then after each loss).
    /// Each one after the first dropped the whole L1, since messages may have been missed.
    pub backplane_subscriptions: u64,
    /// Times the backplane task was spawned again, on the runtime of the operation that
    /// found it gone: it had ended while the cache lived on (the runtime it ran on shut
    /// down, or it panicked). Its subscription then dropped the L1, as every one does.
    pub backplane_respawns: u64,
}

macro_rules! counters {
    ($($name:ident),* $(,)?) => {
        /// The live counters behind [`HybridStats`].
        #[derive(Debug, Default)]
        pub(crate) struct Counters {
            $(pub(crate) $name: AtomicU64,)*
        }

        impl Counters {
            pub(crate) fn snapshot(&self, l1: ExpiringStats) -> HybridStats {
                HybridStats {
                    l1,
                    // Relaxed: each counter stands alone; nothing is published through them.
                    $($name: self.$name.load(Ordering::Relaxed),)*
                }
            }
        }
    };
}

counters!(
    l2_hits,
    l2_misses,
    decode_errors,
    encode_errors,
    lease_wins,
    lease_waits,
    takeovers,
    lease_renewals,
    leases_lost,
    l2_writes,
    fenced_writes,
    l2_errors,
    local_fallbacks,
    wait_timeouts,
    backplane_received,
    backplane_subscriptions,
    backplane_respawns,
);

/// Adds one to a counter.
pub(crate) fn bump(counter: &AtomicU64) {
    // Relaxed: see `snapshot`.
    counter.fetch_add(1, Ordering::Relaxed);
}
