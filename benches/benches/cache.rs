#![forbid(unsafe_code)]
//! Criterion benchmarks of `deferred-cache` against anchor crates.
//!
//! Every group is named `cache/<workload>`; our cache's function is always `deferred` (with
//! a `deferred_<path>` row where a second path of ours is worth seeing beside it), the
//! anchors are `moka`, `quick_cache` and `dashmap` (a plain map: the floor, with no
//! eviction bookkeeping). `cargo xtask bench cache` reads the estimates criterion writes
//! and prints `deferred`'s ratio to each anchor, then runs `cache_hit_ratio`, `cache_mixed`
//! (the mixed workload `cache/mixed`, by thread count) and `cache_footprint` (resident bytes
//! per entry and the time of a fill).
//!
//! Every cache and map here hashes with `std`'s `RandomState`, so no row wins on a faster
//! hash. Keys and values are `u64`, so a read's clone is a copy. Bounded caches are bounded
//! alike (entries, unit weight), so ours pays its eviction bookkeeping (recording a use on
//! every hit) as moka and quick_cache pay theirs.
//!
//! Workloads:
//!
//! * `cache/hit`: read a present value, [`KEYS`] warm keys visited in a scattered cycle
//!   (see [`CYCLE`]), on one thread: `deferred` is the synchronous `get_if_present`,
//!   `moka` polls `future::Cache::get` once with a no-op waker, `quick_cache` is `get`,
//!   `dashmap` is `get` and a copy;
//! * `cache/hit_2t`: the same reads from two threads at once (see
//!   [`deferred_benches::two_threads`] for what the figure means);
//! * `cache/get_with_hit`: get-or-load of a present key, polled once with a no-op waker
//!   (it must be ready, and the loader must not run): `deferred` is `get_with`,
//!   `deferred_get_if_present` the synchronous read for scale, `moka` is `get_with`,
//!   `quick_cache` is `get_value_or_guard_async`;
//! * `cache/miss_ready`: get-or-load of a fresh key whose loader is ready at once, polled
//!   once, into a cache of [`MISS_CAPACITY`] entries that was filled beforehand, so every
//!   miss also evicts (steady state);
//! * `cache/stampede`: [`CALLERS`] tokio tasks (2 workers) ask for one missing key at
//!   once; its loader sleeps [`LOAD_TIME`] and must run exactly once. The estimate is the
//!   wall time of a whole stampede (spawning and joining the tasks included, the sleep
//!   too), not per caller: the overhead is the figure minus [`LOAD_TIME`].

use core::{
    convert::Infallible,
    hint::black_box,
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};
use std::{collections::hash_map::RandomState, sync::Arc};

use criterion::{Criterion, SamplingMode};
use dashmap::DashMap;
use deferred_benches::{
    bench_reads, bench_stampede, deferred_cache, drive, group, quick_cache, ready_now, value_of,
    DeferredCache, KeyCycle, QuickCache, Read, Readers, HOT_KEY,
};
use deferred_cache::Source;

/// Warm keys of the read workloads.
const KEYS: u64 = 10_000;

/// The step of the read workloads' cycle over `0..KEYS`: odd and not a multiple of 5, so
/// it visits every key once per cycle, and large, so consecutive reads land far apart.
const STRIDE: u64 = 7_919;

/// The capacity of the caches of `cache/miss_ready`.
const MISS_CAPACITY: u64 = 100_000;

/// Concurrent callers in `cache/stampede`.
const CALLERS: usize = 1000;

/// How long the loader of `cache/stampede` sleeps.
const LOAD_TIME: Duration = Duration::from_millis(50);

type Ours = DeferredCache;
type Moka = moka::future::Cache<u64, u64, RandomState>;

fn ours(capacity: u64) -> Ours {
    deferred_cache(capacity)
}

fn moka(capacity: u64) -> Moka {
    moka::future::Cache::builder()
        .max_capacity(capacity)
        .build_with_hasher(RandomState::new())
}

/// The read cycle over `0..KEYS` (see [`STRIDE`]).
const CYCLE: KeyCycle = KeyCycle {
    keys: KEYS,
    stride: STRIDE,
};

/// The caches of the read workloads, each holding `KEYS` values (bounded at twice that, so
/// nothing is evicted).
struct ReadCaches {
    deferred: Ours,
    moka: Moka,
    quick_cache: QuickCache,
    dashmap: DashMap<u64, u64, RandomState>,
}

impl ReadCaches {
    fn new() -> Self {
        let caches = ReadCaches {
            deferred: ours(2 * KEYS),
            moka: moka(2 * KEYS),
            quick_cache: quick_cache(2 * KEYS),
            dashmap: DashMap::with_hasher(RandomState::new()),
        };
        for k in 0..KEYS {
            caches.deferred.insert(k, value_of(k));
            drive(caches.moka.insert(k, value_of(k)));
            caches.quick_cache.insert(k, value_of(k));
            caches.dashmap.insert(k, value_of(k));
        }
        drive(caches.moka.run_pending_tasks());
        for k in 0..KEYS {
            assert_eq!(caches.deferred.peek(&k), Some(value_of(k)));
            assert_eq!(drive(caches.moka.get(&k)), Some(value_of(k)));
            assert_eq!(caches.quick_cache.get(&k), Some(value_of(k)));
            assert_eq!(caches.dashmap.get(&k).map(|r| *r), Some(value_of(k)));
        }
        assert_eq!(caches.deferred.stats().evicted, 0);
        caches
    }

    /// Checks that every read of ours so far was a hit (and counted as one).
    fn assert_only_hits(&self, at_least: u64) {
        let stats = self.deferred.stats();
        assert_eq!(stats.misses, 0, "a read of a warm key missed");
        assert_eq!(stats.evicted, 0, "a warm key was evicted");
        assert!(stats.hits >= at_least, "{} hits counted", stats.hits);
    }
}

// The read paths, one per function id, shared by the one- and two-thread workloads. A miss
// reads as 0, which `check_reads` rules out before anything is measured.

#[inline]
fn read_deferred(caches: &ReadCaches, k: u64) -> u64 {
    caches.deferred.get_if_present(&k).unwrap_or(0)
}

#[inline]
fn read_moka(caches: &ReadCaches, k: u64) -> u64 {
    drive(caches.moka.get(&k)).unwrap_or(0)
}

#[inline]
fn read_quick_cache(caches: &ReadCaches, k: u64) -> u64 {
    caches.quick_cache.get(&k).unwrap_or(0)
}

#[inline]
fn read_dashmap(caches: &ReadCaches, k: u64) -> u64 {
    caches.dashmap.get(&k).map(|r| *r).unwrap_or(0)
}

const READS: [(&str, Read<ReadCaches>); 4] = [
    ("deferred", read_deferred),
    ("moka", read_moka),
    ("quick_cache", read_quick_cache),
    ("dashmap", read_dashmap),
];

/// Every read path finds every warm key (`value_of` is never 0 on `0..KEYS`).
fn check_reads(caches: &ReadCaches) {
    for (name, read) in READS {
        for k in 0..KEYS {
            assert_eq!(read(caches, k), value_of(k), "{name} missed key {k}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// cache/hit

fn hit(c: &mut Criterion, caches: &ReadCaches) {
    let mut g = group(c, "cache", "hit");
    bench_reads(&mut g, caches, CYCLE, Readers::One, &READS);
    g.finish();
}

// ---------------------------------------------------------------------------------------
// cache/hit_2t

fn hit_2t(c: &mut Criterion, caches: &ReadCaches) {
    let mut g = group(c, "cache", "hit_2t");
    bench_reads(&mut g, caches, CYCLE, Readers::Two, &READS);
    g.finish();
}

// ---------------------------------------------------------------------------------------
// cache/get_with_hit

/// The loader of a read that must hit: running it is a bug in the cache.
async fn must_not_load() -> Result<u64, Infallible> {
    panic!("get_with ran its loader on a warm key")
}

fn get_with_hit(c: &mut Criterion, caches: &ReadCaches) {
    for k in 0..KEYS {
        let (value, source) = ready_now(caches.deferred.get_with(k, must_not_load).with_source());
        assert_eq!((value, source), (Ok(value_of(k)), Source::Hit));
    }

    let mut g = group(c, "cache", "get_with_hit");
    g.bench_function("deferred", |b| {
        let mut key = 0;
        b.iter(|| {
            let k = black_box(CYCLE.next(&mut key));
            ready_now(caches.deferred.get_with(k, must_not_load)).unwrap()
        })
    });
    g.bench_function("deferred_get_if_present", |b| {
        let mut key = 0;
        b.iter(|| read_deferred(black_box(caches), black_box(CYCLE.next(&mut key))))
    });
    g.bench_function("moka", |b| {
        let mut key = 0;
        b.iter(|| {
            let k = black_box(CYCLE.next(&mut key));
            drive(
                caches
                    .moka
                    .get_with(k, async { panic!("moka ran its init on a warm key") }),
            )
        })
    });
    g.bench_function("quick_cache", |b| {
        let mut key = 0;
        b.iter(|| {
            let k = black_box(CYCLE.next(&mut key));
            match drive(caches.quick_cache.get_value_or_guard_async(&k)) {
                Ok(v) => v,
                Err(_guard) => panic!("quick_cache missed a warm key"),
            }
        })
    });
    g.finish();
}

fn reads(c: &mut Criterion) {
    let caches = ReadCaches::new();
    check_reads(&caches);
    caches.assert_only_hits(KEYS);
    hit(c, &caches);
    hit_2t(c, &caches);
    caches.assert_only_hits(KEYS);
    get_with_hit(c, &caches);
    // `get_with_hit` checks every key with `get_with` before it measures.
    caches.assert_only_hits(2 * KEYS);
}

// ---------------------------------------------------------------------------------------
// cache/miss_ready

fn miss_ready(c: &mut Criterion) {
    let mut g = group(c, "cache", "miss_ready");

    // Each cache is filled to capacity first, so that every measured miss also evicts. The
    // caches live across criterion's calls of each routine, and keys only grow: each
    // iteration's key was never seen before.
    let cache = ours(MISS_CAPACITY);
    for k in 0..MISS_CAPACITY {
        cache.insert(k, value_of(k));
    }
    let (filled, before) = (cache.weighted_size(), cache.stats());
    let mut next = MISS_CAPACITY;
    g.bench_function("deferred", |b| {
        b.iter(|| {
            let k = next;
            next += 1;
            ready_now(cache.get_with(black_box(k), || async move { Ok(value_of(k)) })).unwrap()
        })
    });
    // Every iteration missed, loaded once and was admitted; what was evicted balances the
    // books: weight now = weight before + admitted - evicted, within capacity.
    let (misses, stats) = (next - MISS_CAPACITY, cache.stats());
    assert_eq!(
        (stats.hits, stats.misses, stats.loads_ok),
        (
            before.hits,
            before.misses + misses,
            before.loads_ok + misses
        )
    );
    let (filled, now) = (filled.unwrap_or(0), cache.weighted_size().unwrap_or(0));
    assert!(now <= MISS_CAPACITY, "{now} entries over {MISS_CAPACITY}");
    // (Skipped by a filter, the routine ran no iteration: nothing to check.)
    assert!(
        misses == 0 || stats.evicted > before.evicted,
        "nothing was evicted"
    );
    assert_eq!(now + (stats.evicted - before.evicted), filled + misses);
    assert_eq!(cache.len() as u64, now);
    drop(cache);

    let cache = moka(MISS_CAPACITY);
    for k in 0..MISS_CAPACITY {
        drive(cache.insert(k, value_of(k)));
    }
    drive(cache.run_pending_tasks());
    let mut next = MISS_CAPACITY;
    g.bench_function("moka", |b| {
        b.iter(|| {
            let k = next;
            next += 1;
            drive(cache.get_with(black_box(k), async move { value_of(k) }))
        })
    });
    drop(cache);

    let cache = quick_cache(MISS_CAPACITY);
    for k in 0..MISS_CAPACITY {
        cache.insert(k, value_of(k));
    }
    let mut next = MISS_CAPACITY;
    g.bench_function("quick_cache", |b| {
        b.iter(|| {
            let k = next;
            next += 1;
            cache
                .get_or_insert_with(&black_box(k), || Ok::<_, Infallible>(value_of(k)))
                .unwrap()
        })
    });
    drop(cache);

    g.finish();
}

// ---------------------------------------------------------------------------------------
// cache/stampede

/// The stampede's loader: counts its run, sleeps `LOAD_TIME`, returns the value.
async fn load(runs: Arc<AtomicUsize>) -> u64 {
    runs.fetch_add(1, Ordering::Relaxed);
    tokio::time::sleep(LOAD_TIME).await;
    value_of(HOT_KEY)
}

fn stampede(c: &mut Criterion) {
    let mut g = group(c, "cache", "stampede");
    // Each iteration takes at least `LOAD_TIME`: flat sampling and few samples keep the
    // group to seconds (criterion's default linear sampling would need 55 iterations).
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .expect("tokio runtime");

    bench_stampede(
        &mut g,
        "deferred",
        &rt,
        CALLERS,
        || ours(16),
        |cache, runs| async move {
            cache
                .get_with(HOT_KEY, || async move { Ok(load(runs).await) })
                .await
                .expect("load failed")
        },
    );

    bench_stampede(
        &mut g,
        "moka",
        &rt,
        CALLERS,
        || moka(16),
        |cache, runs| async move { cache.get_with(HOT_KEY, load(runs)).await },
    );

    bench_stampede(
        &mut g,
        "quick_cache",
        &rt,
        CALLERS,
        || quick_cache(16),
        |cache, runs| async move {
            match cache.get_value_or_guard_async(&HOT_KEY).await {
                Ok(v) => v,
                Err(guard) => {
                    let v = load(runs).await;
                    let _ = guard.insert(v);
                    v
                }
            }
        },
    );

    g.finish();
}

deferred_benches::criterion_suite!(reads, miss_ready, stampede);
