//! One process of a two-process service, driven line by line on stdin, so that two of them
//! on one Redis show the README's claims: one load across both processes, and an
//! invalidation on one reaching the other's L1.
//!
//! `cargo xtask redis-demo` sets it all up (a redis-server in a temporary directory, two of
//! these processes, the script below) and stops the server at the end. By hand:
//! `REDIS_URL=unix:///tmp/r.sock DEMO_NAME=a cargo run -p deferred-redis --example
//! two_processes`, then type commands. Each command prints one line:
//!
//! | command | does | prints |
//! |---|---|---|
//! | `load` | `get_with("greeting")`, its loader taking 50 ms | `loaded value=… loads=N ms=…` |
//! | `invalidate` | `invalidate("greeting")` | `invalidated` |
//! | `wait-gone` | waits (at most 2 s) until this L1 no longer holds `greeting` | `already gone`, `gone … ms after`, or `still held` |
//! | `stats` | the cache's counters | `stats …` |
//! | `quit` | exits | nothing |

#![allow(clippy::std_instead_of_core)] // a `std` program

use std::{
    io::{BufRead, Write},
    sync::atomic::{AtomicUsize, Ordering},
    sync::Arc,
    time::{Duration, Instant},
};

use deferred_redis::{HybridCache, Utf8};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into());
    let name = std::env::var("DEMO_NAME").unwrap_or_else(|_| "?".into());
    let prefix = std::env::var("DEMO_PREFIX").unwrap_or_else(|_| "demo:".into());
    let cache: HybridCache<String, String, std::io::Error, Utf8> =
        HybridCache::builder(redis::Client::open(url.as_str())?, prefix, Utf8)
            .time_to_live(Duration::from_secs(60))
            .build()?;
    let subscribed = cache.backplane_ready(Duration::from_secs(5)).await;
    println!("[{name}] ready, backplane subscribed: {subscribed}");
    let loads = Arc::new(AtomicUsize::new(0));
    // Commands come from a blocking thread, so the runtime (and the backplane) keeps running.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(8);
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    while let Some(line) = rx.recv().await {
        match line.trim() {
            "load" => {
                let start = Instant::now();
                let counter = Arc::clone(&loads);
                let value = cache
                    .get_with("greeting", move || async move {
                        counter.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await; // a slow backend
                        Ok(format!("hello from {}", std::process::id()))
                    })
                    .await
                    .map_err(|e| e.to_string());
                println!(
                    "[{name}] loaded value={value:?} loads_here={} in {:.1} ms",
                    loads.load(Ordering::SeqCst),
                    start.elapsed().as_secs_f64() * 1e3
                );
            }
            "invalidate" => match cache.invalidate("greeting").await {
                Ok(()) => println!("[{name}] invalidated greeting (here, in Redis, announced)"),
                Err(e) => println!("[{name}] invalidate failed in Redis: {e}"),
            },
            "wait-gone" => {
                let start = Instant::now();
                let held_at_first = cache.contains_local("greeting");
                // Bounded: 2 s of 1 ms naps at most.
                while cache.contains_local("greeting") && start.elapsed() < Duration::from_secs(2) {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                if cache.contains_local("greeting") {
                    println!("[{name}] greeting still held in this L1 after 2 s");
                } else if !held_at_first {
                    println!("[{name}] greeting already gone from this L1 when asked");
                } else {
                    println!(
                        "[{name}] greeting gone from this L1 {:.1} ms after the check began",
                        start.elapsed().as_secs_f64() * 1e3
                    );
                }
            }
            "stats" => {
                let s = cache.stats();
                println!(
                    "[{name}] stats: l2_hits={} l2_misses={} lease_wins={} lease_waits={} \
                     l2_writes={} l2_errors={} local_fallbacks={}",
                    s.l2_hits,
                    s.l2_misses,
                    s.lease_wins,
                    s.lease_waits,
                    s.l2_writes,
                    s.l2_errors,
                    s.local_fallbacks
                );
            }
            "quit" => break,
            other => println!("[{name}] unknown command {other:?}"),
        }
        std::io::stdout().flush()?;
    }
    Ok(())
}
