#![forbid(unsafe_code)]
//! Criterion benchmarks of `deferred-map` against anchor crates.
//!
//! Every group is named `map/<workload>`; our map's function is always `deferred` (and
//! `deferred_await` where the async read path is measured too), the anchors are `dashmap`,
//! `moka` and `quick_cache`. `cargo xtask bench map` reads the estimates criterion writes
//! and prints `deferred`'s ratio to each anchor.
//!
//! Every map uses its crate's default hasher (`RandomState` for ours and `dashmap`).
//! Keys and values are `u64`, so a read's clone is a copy and the figures are those of
//! the maps.
//!
//! Workloads:
//!
//! * `map/get_completed_1t`: read a completed value, cycling through [`KEYS`] warm keys,
//!   on one thread: `deferred` is the synchronous `try_get`, `deferred_await` polls
//!   `get(k)` once with a no-op waker (ready at once);
//! * `map/get_completed_2t`: the same reads from two threads at once (see
//!   [`deferred_benches::two_threads`] for what the figure means);
//! * `map/miss_ready`: get-or-add of a fresh key whose computation is ready at once,
//!   polled once with a no-op waker; maps are made anew every [`CHUNK`] keys, outside the
//!   measurement, so memory stays bounded;
//! * `map/stampede_1000`: 1000 tokio tasks (2 workers) ask for one missing key at once;
//!   the computation yields once before it completes, and must run exactly once. The
//!   estimate is the time of a whole stampede (spawning and joining the 1000 tasks
//!   included), not per caller.

use core::{
    hint::black_box,
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};
use std::{sync::Arc, time::Instant};

use criterion::Criterion;
use dashmap::DashMap;
use deferred_benches::{
    bench_reads, bench_stampede, drive, group, ready_now, value_of, KeyCycle, Read, Readers,
    HOT_KEY,
};
use deferred_map::DeferredMap;
use quick_cache::sync::GuardResult;

/// Warm keys of the read workloads.
const KEYS: u64 = 10_000;

/// Fresh keys per map in `map/miss_ready`: the map is made anew after this many misses.
const CHUNK: u64 = 10_000;

/// Concurrent callers in `map/stampede_1000`.
const CALLERS: usize = 1000;

/// The read cycle over `0..KEYS`, in order.
const CYCLE: KeyCycle = KeyCycle {
    keys: KEYS,
    stride: 1,
};

/// The maps of the read workloads, each holding `KEYS` completed values.
struct ReadMaps {
    deferred: DeferredMap<u64, u64>,
    dashmap: DashMap<u64, u64>,
    moka: moka::sync::Cache<u64, u64>,
    quick_cache: quick_cache::sync::Cache<u64, u64>,
}

impl ReadMaps {
    fn new() -> Self {
        let maps = ReadMaps {
            deferred: DeferredMap::new(),
            dashmap: DashMap::new(),
            moka: moka::sync::Cache::new(2 * KEYS),
            quick_cache: quick_cache::sync::Cache::new(2 * KEYS as usize),
        };
        for k in 0..KEYS {
            assert!(maps.deferred.add_value(k, value_of(k)));
            maps.dashmap.insert(k, value_of(k));
            maps.moka.insert(k, value_of(k));
            maps.quick_cache.insert(k, value_of(k));
        }
        maps.moka.run_pending_tasks();
        for k in 0..KEYS {
            assert_eq!(maps.deferred.try_get(&k), Some(Ok(value_of(k))));
            assert_eq!(ready_now(maps.deferred.wait(k)), Ok(value_of(k)));
            assert_eq!(maps.dashmap.get(&k).map(|r| *r), Some(value_of(k)));
            assert_eq!(maps.moka.get(&k), Some(value_of(k)));
            assert_eq!(maps.quick_cache.get(&k), Some(value_of(k)));
        }
        maps
    }
}

// The read paths, one per function id, shared by the one- and two-thread workloads.

#[inline]
fn read_deferred(maps: &ReadMaps, k: u64) -> u64 {
    match maps.deferred.try_get(&k) {
        Some(Ok(v)) => v,
        _ => 0,
    }
}

#[inline]
fn read_deferred_await(maps: &ReadMaps, k: u64) -> u64 {
    ready_now(maps.deferred.wait(k)).unwrap_or(0)
}

#[inline]
fn read_dashmap(maps: &ReadMaps, k: u64) -> u64 {
    maps.dashmap.get(&k).map(|r| *r.value()).unwrap_or(0)
}

#[inline]
fn read_moka(maps: &ReadMaps, k: u64) -> u64 {
    maps.moka.get(&k).unwrap_or(0)
}

#[inline]
fn read_quick_cache(maps: &ReadMaps, k: u64) -> u64 {
    maps.quick_cache.get(&k).unwrap_or(0)
}

// ---------------------------------------------------------------------------------------
// map/get_completed_1t

fn get_completed_1t(c: &mut Criterion, maps: &ReadMaps) {
    let mut g = group(c, "map", "get_completed_1t");
    let reads: [(&str, Read<ReadMaps>); 5] = [
        ("deferred", read_deferred),
        ("deferred_await", read_deferred_await),
        ("dashmap", read_dashmap),
        ("moka", read_moka),
        ("quick_cache", read_quick_cache),
    ];
    bench_reads(&mut g, maps, CYCLE, Readers::One, &reads);
    g.finish();
}

// ---------------------------------------------------------------------------------------
// map/get_completed_2t

fn get_completed_2t(c: &mut Criterion, maps: &ReadMaps) {
    let mut g = group(c, "map", "get_completed_2t");
    let reads: [(&str, Read<ReadMaps>); 3] = [
        ("deferred", read_deferred),
        ("deferred_await", read_deferred_await),
        ("dashmap", read_dashmap),
    ];
    bench_reads(&mut g, maps, CYCLE, Readers::Two, &reads);
    g.finish();
}

fn reads(c: &mut Criterion) {
    let maps = ReadMaps::new();
    get_completed_1t(c, &maps);
    get_completed_2t(c, &maps);
}

// ---------------------------------------------------------------------------------------
// map/miss_ready

/// Times `iters` misses on fresh keys: `fresh()` makes an empty map (room for `CHUNK`
/// entries) every `CHUNK` keys, and `miss(map, key)` does one get-or-add of `key` and
/// returns the value. Making and dropping the maps is not measured.
fn misses<M>(iters: u64, fresh: impl Fn() -> M, miss: impl Fn(&M, u64) -> u64) -> Duration {
    let mut elapsed = Duration::ZERO;
    let mut done = 0;
    while done < iters {
        let n = (iters - done).min(CHUNK);
        let map = fresh();
        let map = black_box(&map);
        let start = Instant::now();
        for k in 0..n {
            black_box(miss(map, black_box(k)));
        }
        elapsed += start.elapsed();
        done += n;
    }
    elapsed
}

fn miss_ready(c: &mut Criterion) {
    let mut g = group(c, "map", "miss_ready");

    g.bench_function("deferred", |b| {
        b.iter_custom(|iters| {
            misses(
                iters,
                || DeferredMap::<u64, u64>::with_capacity(CHUNK as usize),
                |map, k| {
                    let v = value_of(k);
                    ready_now(map.get_or_add_with(k, || async move { Ok(v) })).unwrap()
                },
            )
        })
    });

    g.bench_function("moka", |b| {
        b.iter_custom(|iters| {
            misses(
                iters,
                || {
                    moka::future::Cache::<u64, u64>::builder()
                        .max_capacity(2 * CHUNK)
                        .initial_capacity(CHUNK as usize)
                        .build()
                },
                |cache, k| {
                    let v = value_of(k);
                    drive(cache.get_with(k, async move { v }))
                },
            )
        })
    });

    g.bench_function("quick_cache", |b| {
        b.iter_custom(|iters| {
            misses(
                iters,
                || quick_cache::sync::Cache::<u64, u64>::new(2 * CHUNK as usize),
                |cache, k| match cache.get_value_or_guard(&k, None) {
                    GuardResult::Value(v) => v,
                    GuardResult::Guard(guard) => {
                        let v = value_of(k);
                        let _ = guard.insert(v);
                        v
                    }
                    GuardResult::Timeout => unreachable!("no timeout was given"),
                },
            )
        })
    });

    // The floor: a synchronous insert-if-absent, no computation and no waiting.
    g.bench_function("dashmap", |b| {
        b.iter_custom(|iters| {
            misses(
                iters,
                || DashMap::<u64, u64>::with_capacity(CHUNK as usize),
                |map, k| *map.entry(k).or_insert_with(|| value_of(k)),
            )
        })
    });

    g.finish();
}

// ---------------------------------------------------------------------------------------
// map/stampede_1000

/// The stampede's computation: counts its run, yields once to the runtime, completes.
async fn compute(runs: Arc<AtomicUsize>) -> u64 {
    runs.fetch_add(1, Ordering::Relaxed);
    tokio::task::yield_now().await;
    value_of(HOT_KEY)
}

fn stampede_1000(c: &mut Criterion) {
    let mut g = group(c, "map", "stampede_1000");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("tokio runtime");

    bench_stampede(
        &mut g,
        "deferred",
        &rt,
        CALLERS,
        DeferredMap::<u64, u64>::new,
        |map, runs| async move {
            map.get_or_add_with(HOT_KEY, || async move { Ok(compute(runs).await) })
                .await
                .expect("computation failed")
        },
    );

    bench_stampede(
        &mut g,
        "moka",
        &rt,
        CALLERS,
        || moka::future::Cache::<u64, u64>::new(16),
        |cache, runs| async move { cache.get_with(HOT_KEY, compute(runs)).await },
    );

    g.finish();
}

deferred_benches::criterion_suite!(reads, miss_ready, stampede_1000);
