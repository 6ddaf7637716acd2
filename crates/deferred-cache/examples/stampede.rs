//! A stampede absorbed by one load per key: thousands of concurrent requests for a few hot
//! keys, against a loader that takes 50 ms (a database query, say). Through the cache, each
//! key loads once and every request is served from that load; through a naive
//! check-then-load map, every request that misses before the first load lands runs its own.
//!
//! ```text
//! cargo run --release -p deferred-cache --example stampede [requests] [hot keys]
//! ```

#![allow(clippy::std_instead_of_core)] // an example on std

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicUsize, Ordering::Relaxed},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use deferred_cache::{Cache, Source};

/// How long one load takes.
const LOAD_TIME: Duration = Duration::from_millis(50);

/// The slow backend: counts its loads.
async fn load(key: u64, loads: Arc<AtomicUsize>) -> Result<String, String> {
    loads.fetch_add(1, Relaxed);
    tokio::time::sleep(LOAD_TIME).await;
    Ok(format!("profile #{key}"))
}

struct Report {
    loads: usize,
    served: usize,
    wall: Duration,
}

async fn through_cache(requests: u64, keys: u64) -> (Report, deferred_cache::Stats, usize) {
    // A `Cache` is a handle: each task gets a clone (one reference-count increment).
    let cache: Cache<u64, String, String> = Cache::bounded(1_000);
    let loads = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..requests)
        .map(|i| {
            let (cache, loads) = (cache.clone(), loads.clone());
            tokio::spawn(async move {
                let key = i % keys;
                cache.get_with(key, || load(key, loads)).with_source().await
            })
        })
        .collect();
    let (mut served, mut loaded_here) = (0, 0);
    for task in tasks {
        let (value, source) = task.await.expect("no request panics");
        served += usize::from(value.is_ok());
        loaded_here += usize::from(source == Source::Loaded);
    }
    let report = Report {
        loads: loads.load(Relaxed),
        served,
        wall: start.elapsed(),
    };
    (report, cache.stats(), loaded_here)
}

async fn through_naive_map(requests: u64, keys: u64) -> Report {
    let map: Arc<Mutex<HashMap<u64, String>>> = Arc::default();
    let loads = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..requests)
        .map(|i| {
            let (map, loads) = (map.clone(), loads.clone());
            tokio::spawn(async move {
                let key = i % keys;
                let cached = map.lock().unwrap().get(&key).cloned();
                match cached {
                    Some(value) => Ok(value),
                    None => {
                        let value = load(key, loads).await?;
                        map.lock().unwrap().insert(key, value.clone());
                        Ok::<_, String>(value)
                    }
                }
            })
        })
        .collect();
    let mut served = 0;
    for task in tasks {
        served += usize::from(task.await.expect("no request panics").is_ok());
    }
    Report {
        loads: loads.load(Relaxed),
        served,
        wall: start.elapsed(),
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let requests: u64 = args
        .next()
        .map_or(10_000, |a| a.parse().expect("requests: a number"));
    let keys: u64 = args
        .next()
        .map_or(8, |a| a.parse().expect("hot keys: a number"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_time()
        .build()
        .expect("a tokio runtime");

    println!(
        "{requests} concurrent requests over {keys} hot keys; each load takes {} ms\n",
        LOAD_TIME.as_millis()
    );
    println!("{:<28} {:>7} {:>9} {:>10}", "", "loads", "served", "wall");
    let (cache, stats, loaded_here) = runtime.block_on(through_cache(requests, keys));
    let naive = runtime.block_on(through_naive_map(requests, keys));
    for (name, r) in [
        ("deferred-cache get_with", &cache),
        ("naive check-then-load map", &naive),
    ] {
        println!(
            "{name:<28} {:>7} {:>9} {:>7.1} ms",
            r.loads,
            r.served,
            r.wall.as_secs_f64() * 1e3
        );
    }
    println!(
        "\ncache stats: {} misses, {} of them joined a load in flight ({} callers ran their own loader); {} loads ok",
        stats.misses, stats.coalesced, loaded_here, stats.loads_ok
    );
    assert_eq!(cache.loads, keys.min(requests) as usize, "one load per key");
    assert_eq!(cache.served, requests as usize, "every request served");
}
