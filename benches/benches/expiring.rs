#![forbid(unsafe_code)]
//! Criterion benchmarks of `deferred-expiring` against moka (and our plain cache).
//!
//! Every group is named `expiring/<workload>`; our expiring cache's function is always
//! `deferred`, the anchors are `moka` and, for reads, `deferred_cache_no_expiry` (our
//! `deferred_cache::Cache` with no deadlines at all: what expiry adds to a hit). `cargo xtask
//! bench expiring` reads the estimates criterion writes, prints `deferred`'s ratio to each
//! anchor and checks the targets, with the figures this bench writes itself (timers
//! touched, the p99 of a maintenance pass) to the file named by `DEFERRED_BENCH_EXTRAS`.
//!
//! Every cache hashes with `std`'s `RandomState`; keys and values are `u64`.
//!
//! Workloads:
//!
//! * `expiring/hit_tti`: read a present value with time-to-idle on ([`TTI`], so nothing
//!   expires, but every hit may renew its deadline), [`KEYS`] warm keys visited in a
//!   scattered cycle (as `cache/hit`), on one thread. `deferred` is `get_if_present` on the
//!   real clock (`SystemClock`: the clock read is part of the cost), `moka` polls
//!   `future::Cache::get` (built with `time_to_idle`) once with a no-op waker,
//!   `deferred_cache_no_expiry` is `get_if_present` on a plain `deferred_cache::Cache`, and
//!   `deferred_no_tti` is ours with no expiry set at all (what the expiring layer costs
//!   before any deadline: the rest of `deferred`'s figure is time-to-idle's).
//! * `expiring/maintenance_1m_1pct`: one maintenance pass over a cache of [`ENTRIES`]
//!   entries of which 1% ([`EXPIRED`]) are past their deadline. Each pass has a fresh cache
//!   (built and filled outside the timed region, so there are few passes: the group samples
//!   [`PASSES`] of them, one per sample). `deferred` uses a `ManualClock` and a per-entry
//!   `Expiry` (1% of keys live [`SHORT`], the rest [`LONG`]); the clock is moved past the
//!   short deadlines by one wheel tick and `run_maintenance` is timed; each pass must remove
//!   exactly [`EXPIRED`] entries and touch at most twice as many timers. `moka` (no mock
//!   clock) gets the same `Expiry` on the real clock: its short entries are inserted last,
//!   the setup sleeps until its timer wheel (buckets of 1.07 s) has them due, and
//!   `run_pending_tasks` is timed. Every pass's time is kept (the warm-up's too) for the
//!   p50 / p99 / max this bench prints and writes to the extras file; the p99 is by nearest
//!   rank, so over a dozen passes it is the slowest one.
//! * `expiring/insert_per_entry`: insert a fresh key into a cache bounded at
//!   [`INSERT_CAPACITY`] entries, filled beforehand (so every insert also evicts), with a
//!   per-entry `Expiry` (`key % 100 + 1` seconds): `deferred` is `insert`, `moka` is
//!   `sync::Cache::insert` with `expire_after`.

use core::{convert::Infallible, fmt::Write as _, hint::black_box, time::Duration};
use std::{collections::hash_map::RandomState, thread, time::Instant};

use criterion::{Criterion, SamplingMode};
use deferred_benches::{drive, group, value_of, KeyCycle};
use deferred_cache::Cache;
use deferred_expiring::{ExpiringCache, ManualClock, SystemClock, TICK};

/// Warm keys of `expiring/hit_tti`.
const KEYS: u64 = 10_000;

/// The step of the read cycle over `0..KEYS` (as in `cache.rs`): visits every key once per
/// cycle, consecutive reads far apart.
const STRIDE: u64 = 7_919;

/// The time-to-idle of `expiring/hit_tti`: long enough that nothing expires during the run.
const TTI: Duration = Duration::from_secs(3600);

/// Entries in the cache of a maintenance pass.
const ENTRIES: u64 = 1_000_000;

/// One key in `EXPIRED_EVERY` lives [`SHORT`]: 1% of [`ENTRIES`] expire.
const EXPIRED_EVERY: u64 = 100;

/// Entries past their deadline at each maintenance pass.
const EXPIRED: u64 = ENTRIES / EXPIRED_EVERY;

/// The time to live of the entries that expire in a maintenance pass.
const SHORT: Duration = Duration::from_secs(1);

/// The time to live of every other entry of a maintenance pass.
const LONG: Duration = Duration::from_secs(3600);

/// How long moka's setup waits after inserting its short entries: their deadline plus one
/// bucket of moka's finest timer-wheel level (2^30 ns) plus a margin, so that every short
/// entry is due when `run_pending_tasks` runs.
const MOKA_WAIT: Duration = Duration::from_millis(1000 + 1074 + 150);

/// Maintenance passes timed per implementation (criterion's minimum sample size; each pass
/// needs a fresh cache of [`ENTRIES`]).
const PASSES: usize = 10;

/// The capacity of the caches of `expiring/insert_per_entry`.
const INSERT_CAPACITY: u64 = 100_000;

/// Where this bench writes its own figures (`key=value` lines), if set.
const EXTRAS_VAR: &str = "DEFERRED_BENCH_EXTRAS";

/// The read cycle over `0..KEYS` (see [`STRIDE`]).
const CYCLE: KeyCycle = KeyCycle {
    keys: KEYS,
    stride: STRIDE,
};

// ---------------------------------------------------------------------------------------
// expiring/hit_tti

type OursReal = ExpiringCache<u64, u64, Infallible, RandomState, SystemClock>;
type Plain = Cache<u64, u64, Infallible, RandomState>;
type MokaFuture = moka::future::Cache<u64, u64, RandomState>;

fn hit_tti(c: &mut Criterion) {
    // Bounded at twice the keys, as `cache/hit`: nothing is evicted, but each cache pays its
    // eviction bookkeeping on a hit.
    let ours: OursReal = ExpiringCache::builder()
        .max_capacity(2 * KEYS)
        .time_to_idle(TTI)
        .build();
    // For the analysis of the row above: the expiring layer with no deadline to keep.
    let no_tti: OursReal = ExpiringCache::builder().max_capacity(2 * KEYS).build();
    let plain: Plain = Cache::builder()
        .max_capacity(2 * KEYS)
        .hasher(RandomState::new())
        .build();
    let moka: MokaFuture = moka::future::Cache::builder()
        .max_capacity(2 * KEYS)
        .time_to_idle(TTI)
        .build_with_hasher(RandomState::new());
    for k in 0..KEYS {
        ours.insert(k, value_of(k));
        no_tti.insert(k, value_of(k));
        plain.insert(k, value_of(k));
        drive(moka.insert(k, value_of(k)));
    }
    drive(moka.run_pending_tasks());
    // `value_of` is never 0 on `0..KEYS`, so a miss (read as 0 below) cannot pass.
    for k in 0..KEYS {
        assert_eq!(ours.get_if_present(&k), Some(value_of(k)));
        assert_eq!(no_tti.get_if_present(&k), Some(value_of(k)));
        assert_eq!(plain.get_if_present(&k), Some(value_of(k)));
        assert_eq!(drive(moka.get(&k)), Some(value_of(k)));
    }

    let mut g = group(c, "expiring", "hit_tti");
    g.bench_function("deferred", |b| {
        let mut key = 0;
        b.iter(|| {
            let k = black_box(CYCLE.next(&mut key));
            black_box(&ours).get_if_present(&k).unwrap_or(0)
        })
    });
    g.bench_function("deferred_no_tti", |b| {
        let mut key = 0;
        b.iter(|| {
            let k = black_box(CYCLE.next(&mut key));
            black_box(&no_tti).get_if_present(&k).unwrap_or(0)
        })
    });
    g.bench_function("deferred_cache_no_expiry", |b| {
        let mut key = 0;
        b.iter(|| {
            let k = black_box(CYCLE.next(&mut key));
            black_box(&plain).get_if_present(&k).unwrap_or(0)
        })
    });
    g.bench_function("moka", |b| {
        let mut key = 0;
        b.iter(|| {
            let k = black_box(CYCLE.next(&mut key));
            drive(black_box(&moka).get(&k)).unwrap_or(0)
        })
    });
    g.finish();

    let stats = ours.stats().cache;
    assert_eq!(stats.misses, 0, "a read of a warm key missed");
    assert_eq!((stats.evicted, stats.expired), (0, 0), "a warm key left");
    assert_eq!(ours.len() as u64, KEYS);
}

// ---------------------------------------------------------------------------------------
// expiring/maintenance_1m_1pct

/// The maintenance workload's per-entry expiry: one key in [`EXPIRED_EVERY`] lives
/// [`SHORT`], every other [`LONG`]. The same policy for ours and moka.
struct OnePercentShort;

fn maintenance_ttl(key: u64) -> Duration {
    if key.is_multiple_of(EXPIRED_EVERY) {
        SHORT
    } else {
        LONG
    }
}

impl deferred_expiring::Expiry<u64, u64> for OnePercentShort {
    fn expire_after_create(&self, key: &u64, _: &u64, _: Duration) -> Option<Duration> {
        Some(maintenance_ttl(*key))
    }
}

impl moka::Expiry<u64, u64> for OnePercentShort {
    fn expire_after_create(&self, key: &u64, _: &u64, _: Instant) -> Option<Duration> {
        Some(maintenance_ttl(*key))
    }
}

/// The keys of a maintenance cache, long-lived ones first: moka's short entries must be
/// inserted last, so that none expires (and is reclaimed by moka's own housekeeping) while
/// the rest is inserted. Ours does the same, though its clock stands still.
fn maintenance_keys() -> impl Iterator<Item = u64> {
    let long = (0..ENTRIES).filter(|k| !k.is_multiple_of(EXPIRED_EVERY));
    long.chain((0..ENTRIES).step_by(EXPIRED_EVERY as usize))
}

type OursManual = ExpiringCache<u64, u64, Infallible, RandomState, ManualClock>;
type MokaSync = moka::sync::Cache<u64, u64, RandomState>;

/// The maintenance budget of the `deferred_op_budget` row: the most timers one operation
/// looks at.
const BUDGET: usize = 1024;

/// A cache of [`ENTRIES`] whose clock stands one wheel tick past the short deadlines; with
/// `budget`, an operation reclaims at most that many timers' worth.
fn our_maintenance_cache(budget: Option<usize>) -> OursManual {
    let clock = ManualClock::new();
    let builder = ExpiringCache::builder()
        .expire_after(OnePercentShort)
        .clock(clock.clone());
    let builder = match budget {
        Some(timers) => builder.maintenance_budget(timers),
        None => builder,
    };
    let cache: OursManual = builder.build();
    for k in maintenance_keys() {
        cache.insert(k, value_of(k));
    }
    assert_eq!(cache.len() as u64, ENTRIES);
    assert_eq!(cache.timers() as u64, ENTRIES);
    clock.advance(SHORT + TICK);
    cache
}

/// A moka cache of [`ENTRIES`] whose short entries are all due.
fn moka_maintenance_cache() -> MokaSync {
    let cache: MokaSync = moka::sync::Cache::builder()
        .expire_after(OnePercentShort)
        .build_with_hasher(RandomState::new());
    let mut short_from = None;
    for k in maintenance_keys() {
        if k.is_multiple_of(EXPIRED_EVERY) && short_from.is_none() {
            // Moka applies its write log in housekeeping: the long entries are settled
            // before the short ones start their clock.
            cache.run_pending_tasks();
            short_from = Some(Instant::now());
        }
        cache.insert(k, value_of(k));
    }
    cache.run_pending_tasks();
    assert_eq!(cache.entry_count(), ENTRIES, "moka lost entries in setup");
    let waited = short_from.map_or(Duration::ZERO, |t| t.elapsed());
    thread::sleep(MOKA_WAIT.saturating_sub(waited));
    cache
}

/// Drops a spent maintenance cache on another thread, while the next one is built: a
/// million entries take a while to free. [`join`]ed before the next timed pass, so that it
/// never competes with one.
fn drop_aside<T: Send + 'static>(cache: T) -> thread::JoinHandle<()> {
    thread::spawn(move || drop(cache))
}

/// Waits for a [`drop_aside`], if any.
fn join(dropping: Option<thread::JoinHandle<()>>) {
    if let Some(handle) = dropping {
        handle.join().expect("dropping a cache panicked");
    }
}

/// What the maintenance passes of one implementation measured.
#[derive(Default)]
struct Passes {
    times: Vec<Duration>,
    /// Timers the wheel looked at in each pass (ours only).
    touched: Vec<u64>,
    /// Entries each pass removed.
    removed: Vec<u64>,
}

impl Passes {
    /// The nearest-rank `p`-th percentile of the pass times (`p` in `0..=100`).
    fn percentile(&self, p: usize) -> Duration {
        let mut sorted = self.times.clone();
        sorted.sort_unstable();
        let rank = (p * sorted.len()).div_ceil(100).max(1);
        sorted.get(rank - 1).copied().unwrap_or_default()
    }

    fn max_of(values: &[u64]) -> u64 {
        values.iter().copied().max().unwrap_or(0)
    }

    fn min_of(values: &[u64]) -> u64 {
        values.iter().copied().min().unwrap_or(0)
    }

    /// `key=value` lines under `prefix`, for the extras file.
    fn write(&self, prefix: &str, out: &mut String) {
        if self.times.is_empty() {
            return; // filtered out: nothing measured
        }
        let ns = |d: Duration| d.as_nanos();
        let _ = writeln!(out, "{prefix}_passes={}", self.times.len());
        let _ = writeln!(out, "{prefix}_p50_ns={}", ns(self.percentile(50)));
        let _ = writeln!(out, "{prefix}_p99_ns={}", ns(self.percentile(99)));
        let _ = writeln!(out, "{prefix}_max_ns={}", ns(self.percentile(100)));
        let _ = writeln!(out, "{prefix}_removed_min={}", Self::min_of(&self.removed));
        let _ = writeln!(out, "{prefix}_removed_max={}", Self::max_of(&self.removed));
        if !self.touched.is_empty() {
            let _ = writeln!(out, "{prefix}_touched_max={}", Self::max_of(&self.touched));
        }
    }
}

fn maintenance(c: &mut Criterion) -> String {
    let mut g = group(c, "expiring", "maintenance_1m_1pct");
    // Each pass needs a fresh cache of a million entries (about a second to build): one pass
    // per sample, a warm-up of one pass. Criterion warns that it cannot fit the samples in
    // the (deliberately tiny) measurement time; that is what keeps the group short.
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(PASSES)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_millis(1));

    let mut ours = Passes::default();
    g.bench_function("deferred", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut dropping = None;
            for _ in 0..iters {
                let cache = our_maintenance_cache(None);
                join(dropping.take());
                let before = cache.timers_touched();
                let start = Instant::now();
                let removed = black_box(&cache).run_maintenance() as u64;
                let elapsed = start.elapsed();
                let touched = cache.timers_touched() - before;
                assert_eq!(removed, EXPIRED, "a pass removed {removed} entries");
                assert!(
                    touched <= 2 * EXPIRED,
                    "a pass touched {touched} timers for {EXPIRED} expired entries"
                );
                assert_eq!(cache.len() as u64, ENTRIES - EXPIRED);
                ours.times.push(elapsed);
                ours.touched.push(touched);
                ours.removed.push(removed);
                total += elapsed;
                dropping = Some(drop_aside(cache));
            }
            join(dropping);
            total
        })
    });

    // The pauses operations pay when a budget bounds each one's share of the reclamation:
    // reads of an absent key, from the first after the deadlines until all expired entries
    // are gone; every operation's time is one sample of the p99.
    let mut budgeted = Passes::default();
    g.bench_function("deferred_op_budget", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut dropping = None;
            for _ in 0..iters {
                let cache = our_maintenance_cache(Some(BUDGET));
                join(dropping.take());
                let mut ops = 0;
                while cache.len() as u64 > ENTRIES - EXPIRED {
                    let before = cache.timers_touched();
                    let start = Instant::now();
                    let miss = black_box(&cache).get_if_present(&u64::MAX);
                    let elapsed = start.elapsed();
                    assert_eq!(miss, None);
                    let touched = cache.timers_touched() - before;
                    assert!(
                        touched <= BUDGET as u64,
                        "an operation touched {touched} timers"
                    );
                    budgeted.times.push(elapsed);
                    budgeted.touched.push(touched);
                    total += elapsed;
                    ops += 1;
                    assert!(ops <= 4 * EXPIRED / BUDGET as u64, "reclamation stalled");
                }
                budgeted.removed.push(EXPIRED);
                dropping = Some(drop_aside(cache));
            }
            join(dropping);
            total
        })
    });

    let mut moka = Passes::default();
    g.bench_function("moka", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut dropping = None;
            for _ in 0..iters {
                let cache = moka_maintenance_cache();
                join(dropping.take());
                let start = Instant::now();
                black_box(&cache).run_pending_tasks();
                let elapsed = start.elapsed();
                let removed = ENTRIES - cache.entry_count();
                moka.times.push(elapsed);
                moka.removed.push(removed);
                total += elapsed;
                dropping = Some(drop_aside(cache));
            }
            join(dropping);
            total
        })
    });
    g.finish();

    let mut extras = String::new();
    let _ = writeln!(extras, "maintenance_entries={ENTRIES}");
    let _ = writeln!(extras, "maintenance_expired={EXPIRED}");
    ours.write("maintenance_deferred", &mut extras);
    budgeted.write("maintenance_deferred_op_budget", &mut extras);
    moka.write("maintenance_moka", &mut extras);
    for (name, passes) in [
        ("deferred", &ours),
        ("deferred_op_budget", &budgeted),
        ("moka", &moka),
    ] {
        if passes.times.is_empty() {
            continue;
        }
        println!(
            "expiring/maintenance_1m_1pct/{name}: {} passes, p50 {:?}, p99 {:?}, max {:?}, \
             removed {}..={}{}",
            passes.times.len(),
            passes.percentile(50),
            passes.percentile(99),
            passes.percentile(100),
            Passes::min_of(&passes.removed),
            Passes::max_of(&passes.removed),
            if passes.touched.is_empty() {
                String::new()
            } else {
                format!(
                    ", timers touched at most {}",
                    Passes::max_of(&passes.touched)
                )
            },
        );
    }
    extras
}

// ---------------------------------------------------------------------------------------
// expiring/insert_per_entry

/// The insert workload's per-entry expiry: `key % 100 + 1` seconds.
struct Spread;

fn spread_ttl(key: u64) -> Duration {
    Duration::from_secs(key % 100 + 1)
}

impl deferred_expiring::Expiry<u64, u64> for Spread {
    fn expire_after_create(&self, key: &u64, _: &u64, _: Duration) -> Option<Duration> {
        Some(spread_ttl(*key))
    }
}

impl moka::Expiry<u64, u64> for Spread {
    fn expire_after_create(&self, key: &u64, _: &u64, _: Instant) -> Option<Duration> {
        Some(spread_ttl(*key))
    }
}

fn insert_per_entry(c: &mut Criterion) {
    let mut g = group(c, "expiring", "insert_per_entry");

    // Each cache is filled to capacity first, so every measured insert also evicts. Keys
    // only grow: each iteration's key was never seen before.
    let cache: OursReal = ExpiringCache::builder()
        .max_capacity(INSERT_CAPACITY)
        .expire_after(Spread)
        .build();
    for k in 0..INSERT_CAPACITY {
        cache.insert(k, value_of(k));
    }
    let mut next = INSERT_CAPACITY;
    g.bench_function("deferred", |b| {
        b.iter(|| {
            let k = next;
            next += 1;
            black_box(&cache).insert(black_box(k), value_of(k));
        })
    });
    assert!(
        cache.len() as u64 <= INSERT_CAPACITY,
        "{} entries",
        cache.len()
    );
    drop(cache);

    let cache: MokaSync = moka::sync::Cache::builder()
        .max_capacity(INSERT_CAPACITY)
        .expire_after(Spread)
        .build_with_hasher(RandomState::new());
    for k in 0..INSERT_CAPACITY {
        cache.insert(k, value_of(k));
    }
    cache.run_pending_tasks();
    let mut next = INSERT_CAPACITY;
    g.bench_function("moka", |b| {
        b.iter(|| {
            let k = next;
            next += 1;
            black_box(&cache).insert(black_box(k), value_of(k));
        })
    });
    drop(cache);

    g.finish();
}

// ---------------------------------------------------------------------------------------

/// All three workloads, in one criterion run; then the extras file, if asked for.
fn expiring(c: &mut Criterion) {
    hit_tti(c);
    let extras = maintenance(c);
    insert_per_entry(c);
    if let Some(path) = std::env::var_os(EXTRAS_VAR) {
        if let Err(e) = std::fs::write(&path, extras) {
            panic!(
                "could not write {}: {e}",
                std::path::Path::new(&path).display()
            );
        }
    }
}

deferred_benches::criterion_suite!(expiring);
