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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Reads that found a value.
    pub hits: u64,
    /// Reads that found no value: `get_with` / `get` calls that started or joined a load,
    /// and `get_if_present` calls that came back empty.
    pub misses: u64,
    /// Misses that joined a load another caller had started, so that misses − coalesced =
    /// loads started + empty `get_if_present` calls.
    pub coalesced: u64,
    /// Loads that produced a value.
    pub loads_ok: u64,
    /// Loads whose loader returned an error.
    pub loads_failed: u64,
    /// Loads whose loader panicked.
    pub loads_panicked: u64,
    /// Loads dropped before they finished, because every caller waiting on them went away.
    pub loads_cancelled: u64,
    /// Time spent in loaders that finished (value, error or panic), summed, from first poll
    /// to the end.
    pub load_time: Duration,
    /// Values evicted to stay within capacity.
    pub evicted: u64,
    /// Entries removed by `invalidate`, `invalidate_all`, or replaced by `insert`.
    pub invalidated: u64,
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

    /// Loads that ran to an end or were dropped: ok + failed + panicked + cancelled.
    ///
    /// ```
    /// let stats = deferred_cache::Stats::default();
    /// assert_eq!(stats.loads(), 0);
    /// ```
    pub fn loads(&self) -> u64 {
        self.loads_ok + self.loads_failed + self.loads_panicked + self.loads_cancelled
    }
}

/// How a load ended, for the counters.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Outcome {
    Ok,
    Failed,
    Panicked,
    Cancelled,
}

/// The read-path counters of one stripe: written by the threads that map to it.
#[derive(Default)]
struct Stripe {
    hits: AtomicU64,
    misses: AtomicU64,
    coalesced: AtomicU64,
}

/// The live counters. Read-path counts go to a per-thread stripe, so that two threads
/// hitting the same key never write the same cache line; the rest are rare events.
pub(crate) struct Counters {
    stripes: Box<[CachePadded<Stripe>]>,
    loads: [AtomicU64; 4],
    load_nanos: AtomicU64,
    evicted: AtomicU64,
    invalidated: AtomicU64,
}

/// Stripes per cache: a power of two, enough that threads rarely share one.
const STRIPES: usize = 32;

#[cfg(not(loom))]
std::thread_local! {
    /// This thread's stripe, handed out round-robin at first use.
    static STRIPE: usize = {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        // Relaxed: any distinct-enough number will do; nothing is published through it.
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) & (STRIPES - 1)
    };
}

impl Counters {
    pub(crate) fn new() -> Self {
        Counters {
            stripes: (0..STRIPES).map(|_| CachePadded::default()).collect(),
            loads: Default::default(),
            load_nanos: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
            invalidated: AtomicU64::new(0),
        }
    }

    fn stripe(&self) -> &Stripe {
        // Under loom, one stripe: a model must touch the same atomics on every run, and the
        // round-robin numbering goes on across runs.
        #[cfg(loom)]
        let index = 0;
        #[cfg(not(loom))]
        let index = STRIPE.with(|s| *s);
        &self.stripes[index]
    }

    // All counters are Relaxed: they are statistics, read as a snapshot with no ordering
    // promise (documented on `Stats`), and publish nothing.

    pub(crate) fn hit(&self) {
        self.stripe().hits.fetch_add(1, Relaxed);
    }

    pub(crate) fn miss(&self, coalesced: bool) {
        let stripe = self.stripe();
        stripe.misses.fetch_add(1, Relaxed);
        if coalesced {
            stripe.coalesced.fetch_add(1, Relaxed);
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
            load_time: Duration::from_nanos(self.load_nanos.load(Relaxed)),
            evicted: self.evicted.load(Relaxed),
            invalidated: self.invalidated.load(Relaxed),
        }
    }
}

impl fmt::Debug for Counters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.snapshot().fmt(f)
    }
}
