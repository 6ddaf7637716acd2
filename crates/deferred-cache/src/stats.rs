//! Counters: striped per thread on the read path, plain atomics elsewhere.

use std::{fmt, time::Duration};

use crossbeam_utils::CachePadded;

use crate::loom::{AtomicU64, Ordering::Relaxed};

/// A snapshot of a cache's counters, from [`Cache::stats`](crate::Cache::stats).
///
/// Every counter only grows. They are read one by one, so a snapshot taken while other
/// threads work is not one instant (a hit may show before the miss that preceded it).
///
/// ```
/// use deferred_cache::Cache;
/// # futures::executor::block_on(async {
/// let cache: Cache<u8, u8> = Cache::new();
/// cache.get_with(1, || async { Ok(1) }).await.unwrap(); // miss, load
/// cache.get_with(1, || async { Ok(2) }).await.unwrap(); // hit
/// let stats = cache.stats();
/// assert_eq!((stats.hits, stats.misses, stats.loads_ok), (1, 1, 1));
/// assert_eq!(stats.hit_ratio(), 0.5);
/// # });
/// ```
///
/// # Export
///
/// With the `serde` feature, `Stats` implements `Serialize` and `Deserialize`: a map of the
/// counters by field name, `load_time` as serde writes a `Duration` (`secs` and `nanos`).
/// A counter missing from the input reads as 0, so a snapshot exported by an older version
/// (before a counter was added) still reads; names it does not know are ignored.
///
/// ```
/// # #[cfg(feature = "serde")] {
/// let stats = deferred_cache::Stats::default();
/// let json = serde_json::to_string(&stats).unwrap();
/// assert!(json.starts_with(r#"{"hits":0,"misses":0,"coalesced":0,"#));
/// let back: deferred_cache::Stats = serde_json::from_str(&json).unwrap();
/// assert_eq!(back, stats);
/// # }
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default))]
#[non_exhaustive]
pub struct Stats {
    /// Reads that found a value.
    pub hits: u64,
    /// Reads that found no value: `get_with` / `get` / `optionally_get_with` calls that
    /// started or joined a load, `get_or_insert_with` calls that inserted, and
    /// `get_if_present` calls that came back empty.
    pub misses: u64,
    /// Misses that joined a load another caller had started, so that misses − coalesced =
    /// loads started + `get_or_insert_with` misses + empty `get_if_present` calls.
    pub coalesced: u64,
    /// Loads that produced a value.
    pub loads_ok: u64,
    /// Loads whose loader returned an error.
    pub loads_failed: u64,
    /// Loads whose loader panicked.
    pub loads_panicked: u64,
    /// Loads dropped before they finished, because every caller waiting on them went away
    /// (or a value stored by [`get_or_insert_with`](crate::Cache::get_or_insert_with)
    /// resolved them first).
    pub loads_cancelled: u64,
    /// Loads of [`optionally_get_with`](crate::Cache::optionally_get_with) whose loader
    /// found no value (`None`).
    pub loads_empty: u64,
    /// Time spent in loaders that finished (value, error or panic), summed, from first poll
    /// to the end.
    pub load_time: Duration,
    /// Values evicted to stay within capacity, and values refused on admission because
    /// they weigh more than the whole capacity (told as [`RemovalCause::Size`]).
    ///
    /// [`RemovalCause::Size`]: crate::RemovalCause::Size
    pub evicted: u64,
    /// Entries removed by `invalidate`, `remove`, `invalidate_all`, `invalidate_if`,
    /// `retain` or `invalidate_entries_if`, or replaced by `insert` or `replace_if`.
    pub invalidated: u64,
    /// Entries removed by `expire_if` (a layer's expiry, such as `deferred-expiring`'s).
    pub expired: u64,
    /// Calls of the [eviction listener](crate::Builder::eviction_listener) that panicked.
    /// Each panic was caught (after the panic hook reported it, as for any panic): the
    /// operation that removed the value completed, its counts are exact, and the listener
    /// is still called for later removals.
    pub listener_panics: u64,
    /// Calls of the [weigher](crate::Builder::weigher) that panicked. Each panic was caught
    /// (after the panic hook reported it): the value it was weighing was refused as if it
    /// were heavier than the capacity (counted in `evicted`, told as
    /// [`RemovalCause::Size`](crate::RemovalCause::Size)), and the operation completed.
    pub weigher_panics: u64,
}

impl Stats {
    /// Hits over reads (hits + misses); 1.0 when there were no reads.
    ///
    /// ```
    /// let stats = deferred_cache::Stats::default();
    /// assert_eq!(stats.hit_ratio(), 1.0);
    /// ```
    pub fn hit_ratio(&self) -> f64 {
        let reads = self.hits + self.misses;
        if reads == 0 {
            1.0
        } else {
            self.hits as f64 / reads as f64
        }
    }

    /// Loads that ran to an end or were dropped: ok + failed + panicked + cancelled + empty.
    ///
    /// ```
    /// let stats = deferred_cache::Stats::default();
    /// assert_eq!(stats.loads(), 0);
    /// ```
    pub fn loads(&self) -> u64 {
        self.loads_ok
            + self.loads_failed
            + self.loads_panicked
            + self.loads_cancelled
            + self.loads_empty
    }
}

/// How a load ended, for the counters.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Outcome {
    Ok,
    Failed,
    Panicked,
    Cancelled,
    Absent,
}

/// The read-path counters of one stripe.
#[derive(Default)]
struct Stripe {
    hits: AtomicU64,
    misses: AtomicU64,
    coalesced: AtomicU64,
}

/// The live counters. Read-path counts go to the stripe this thread owns (see
/// `StripeSlot`), so that a hit costs a plain load and store on a cache line no other
/// thread writes; the rest are rare events.
pub(crate) struct Counters {
    /// `SLOTS` owned stripes, then one shared stripe for threads beyond them.
    stripes: Box<[CachePadded<Stripe>]>,
    loads: [AtomicU64; 5],
    load_nanos: AtomicU64,
    evicted: AtomicU64,
    invalidated: AtomicU64,
    expired: AtomicU64,
    listener_panics: AtomicU64,
    weigher_panics: AtomicU64,
}

/// Threads that can own a stripe at once; more share the last stripe (with atomic adds).
#[cfg(not(loom))]
const SLOTS: usize = 32;
#[cfg(loom)]
const SLOTS: usize = 0;

/// Which stripe slots live threads own, process-wide: a thread takes a free slot at its
/// first counted read and frees it when it exits.
#[cfg(not(loom))]
static TAKEN: [std::sync::atomic::AtomicBool; SLOTS] =
    [const { std::sync::atomic::AtomicBool::new(false) }; SLOTS];

/// A thread's stripe slot; `None` if all were taken when it asked.
#[cfg(not(loom))]
struct StripeSlot(Option<usize>);

#[cfg(not(loom))]
impl StripeSlot {
    fn claim() -> Self {
        // Acquire: pairs with the Release in `drop`, so the new owner's plain adds start
        // from the last owner's counts.
        StripeSlot((0..SLOTS).find(|&i| !TAKEN[i].swap(true, std::sync::atomic::Ordering::Acquire)))
    }
}

#[cfg(not(loom))]
impl Drop for StripeSlot {
    fn drop(&mut self) {
        if let Some(i) = self.0 {
            // Release: pairs with the Acquire in `claim` (see there).
            TAKEN[i].store(false, std::sync::atomic::Ordering::Release);
        }
    }
}

#[cfg(not(loom))]
std::thread_local! {
    static SLOT: StripeSlot = StripeSlot::claim();
}

impl Counters {
    pub(crate) fn new() -> Self {
        Counters {
            stripes: (0..=SLOTS).map(|_| CachePadded::default()).collect(),
            loads: Default::default(),
            load_nanos: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
            invalidated: AtomicU64::new(0),
            expired: AtomicU64::new(0),
            listener_panics: AtomicU64::new(0),
            weigher_panics: AtomicU64::new(0),
        }
    }

    /// Adds one to a read-path counter: a plain load and store on this thread's own
    /// stripe, an atomic add on the shared one. Relaxed either way: statistics, read as a
    /// snapshot with no ordering promise (documented on `Stats`), publishing nothing.
    #[inline]
    fn bump(&self, counter: fn(&Stripe) -> &AtomicU64) {
        #[cfg(not(loom))]
        let owned = SLOT.try_with(|slot| slot.0).ok().flatten();
        #[cfg(loom)]
        let owned: Option<usize> = None; // one shared stripe: loom sees every add
        match owned {
            Some(i) => {
                // Only this thread writes stripe `i` while it owns the slot.
                let c = counter(&self.stripes[i]);
                c.store(c.load(Relaxed) + 1, Relaxed);
            }
            None => {
                counter(&self.stripes[SLOTS]).fetch_add(1, Relaxed);
            }
        }
    }

    #[inline]
    pub(crate) fn hit(&self) {
        self.bump(|s| &s.hits);
    }

    pub(crate) fn miss(&self, coalesced: bool) {
        self.bump(|s| &s.misses);
        if coalesced {
            self.bump(|s| &s.coalesced);
        }
    }

    pub(crate) fn load(&self, outcome: Outcome, took: Option<Duration>) {
        self.loads[outcome as usize].fetch_add(1, Relaxed);
        if let Some(took) = took {
            let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
            self.load_nanos.fetch_add(nanos, Relaxed);
        }
    }

    pub(crate) fn evicted(&self, n: u64) {
        if n > 0 {
            self.evicted.fetch_add(n, Relaxed);
        }
    }

    pub(crate) fn invalidated(&self, n: u64) {
        if n > 0 {
            self.invalidated.fetch_add(n, Relaxed);
        }
    }

    pub(crate) fn expired(&self, n: u64) {
        if n > 0 {
            self.expired.fetch_add(n, Relaxed);
        }
    }

    pub(crate) fn listener_panicked(&self) {
        self.listener_panics.fetch_add(1, Relaxed);
    }

    pub(crate) fn weigher_panicked(&self) {
        self.weigher_panics.fetch_add(1, Relaxed);
    }

    pub(crate) fn snapshot(&self) -> Stats {
        let sum = |f: fn(&Stripe) -> &AtomicU64| -> u64 {
            self.stripes.iter().map(|s| f(s).load(Relaxed)).sum()
        };
        let load = |o: Outcome| self.loads[o as usize].load(Relaxed);
        Stats {
            hits: sum(|s| &s.hits),
            misses: sum(|s| &s.misses),
            coalesced: sum(|s| &s.coalesced),
            loads_ok: load(Outcome::Ok),
            loads_failed: load(Outcome::Failed),
            loads_panicked: load(Outcome::Panicked),
            loads_cancelled: load(Outcome::Cancelled),
            loads_empty: load(Outcome::Absent),
            load_time: Duration::from_nanos(self.load_nanos.load(Relaxed)),
            evicted: self.evicted.load(Relaxed),
            invalidated: self.invalidated.load(Relaxed),
            expired: self.expired.load(Relaxed),
            listener_panics: self.listener_panics.load(Relaxed),
            weigher_panics: self.weigher_panics.load(Relaxed),
        }
    }
}

impl fmt::Debug for Counters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.snapshot().fmt(f)
    }
}

#[cfg(all(test, feature = "serde"))]
mod serde_tests {
    use super::*;

    fn sample() -> Stats {
        Stats {
            hits: 1,
            misses: 2,
            coalesced: 3,
            loads_ok: 4,
            loads_failed: 5,
            loads_panicked: 6,
            loads_cancelled: 7,
            loads_empty: 8,
            load_time: Duration::new(9, 10),
            evicted: 11,
            invalidated: 12,
            expired: 13,
            listener_panics: 14,
            weigher_panics: 15,
        }
    }

    #[test]
    fn exports_every_counter_by_name() {
        let json = serde_json::to_value(sample()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "hits": 1,
                "misses": 2,
                "coalesced": 3,
                "loads_ok": 4,
                "loads_failed": 5,
                "loads_panicked": 6,
                "loads_cancelled": 7,
                "loads_empty": 8,
                "load_time": { "secs": 9, "nanos": 10 },
                "evicted": 11,
                "invalidated": 12,
                "expired": 13,
                "listener_panics": 14,
                "weigher_panics": 15,
            })
        );
    }

    #[test]
    fn reads_back_what_it_wrote() {
        let json = serde_json::to_string(&sample()).unwrap();
        assert_eq!(serde_json::from_str::<Stats>(&json).unwrap(), sample());
    }

    #[test]
    fn missing_counters_read_as_zero_and_unknown_names_are_ignored() {
        let stats: Stats = serde_json::from_str(r#"{"hits": 7, "a_later_counter": 1}"#).unwrap();
        assert_eq!(
            stats,
            Stats {
                hits: 7,
                ..Stats::default()
            }
        );
    }
}
