//! A stampede absorbed by one load: many tasks ask for a value that is slow to compute,
//! at the same moment. Through `get_or_init` the load runs once and every caller gets its
//! result; a naive check-then-load runs it once per caller that got there first.
//!
//! ```text
//! cargo run --release -p deferred-core --example stampede [callers]
//! ```

#![allow(clippy::std_instead_of_core)] // an example on std

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering::Relaxed},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use deferred_core::Deferred;
use futures::{executor::ThreadPool, future::join_all};

/// How long one load takes: think of a database query or an HTTP call.
const LOAD_TIME: Duration = Duration::from_millis(50);

/// A slow load, without an async runtime: a helper thread completes a cell after
/// `LOAD_TIME`, and the load awaits that cell.
async fn slow_load(loads: &AtomicUsize) -> u64 {
    loads.fetch_add(1, Relaxed);
    let done = Arc::new(Deferred::<()>::new());
    let d = Arc::clone(&done);
    thread::spawn(move || {
        thread::sleep(LOAD_TIME);
        d.succeed(()).unwrap();
    });
    Deferred::wait_owned(done).await.unwrap();
    42
}

fn run(callers: usize, coalesced: bool) -> (usize, usize, Duration) {
    let pool = ThreadPool::builder().pool_size(4).create().unwrap();
    let cell = Arc::new(Deferred::<u64>::new());
    let naive = Arc::new(std::sync::Mutex::new(None::<u64>));
    let loads = Arc::new(AtomicUsize::new(0));
    let served = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let tasks = (0..callers).map(|_| {
        let (cell, naive, loads, served) =
            (cell.clone(), naive.clone(), loads.clone(), served.clone());
        let (tx, rx) = futures::channel::oneshot::channel();
        pool.spawn_ok(async move {
            let value = if coalesced {
                *cell.get_or_init(|| slow_load(&loads)).await.unwrap()
            } else {
                // Check, then load: every caller that arrives before the first load ends
                // runs its own.
                let cached = *naive.lock().unwrap();
                match cached {
                    Some(v) => v,
                    None => {
                        let v = slow_load(&loads).await;
                        *naive.lock().unwrap() = Some(v);
                        v
                    }
                }
            };
            assert_eq!(value, 42);
            served.fetch_add(1, Relaxed);
            let _ = tx.send(());
        });
        rx
    });
    futures::executor::block_on(join_all(tasks.collect::<Vec<_>>()));
    (loads.load(Relaxed), served.load(Relaxed), start.elapsed())
}

fn main() {
    let callers: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2_000);
    println!("{callers} concurrent callers, one key, a {LOAD_TIME:?} load\n");
    println!("{:<28} {:>8} {:>10} {:>10}", "", "loads", "served", "wall");
    for (name, coalesced) in [
        ("deferred get_or_init", true),
        ("naive check-then-load", false),
    ] {
        let (loads, served, wall) = run(callers, coalesced);
        println!(
            "{name:<28} {loads:>8} {served:>10} {:>8.1}ms",
            wall.as_secs_f64() * 1e3
        );
    }
}
