//! Two caches on one Redis, as two processes of a service would have: one load for both,
//! and an invalidation on one that reaches the other.
//!
//! Needs a Redis server: `REDIS_URL` (default `redis://127.0.0.1:6379/`), for example
//! `redis-server --port 0 --unixsocket /tmp/r.sock --save ''` and
//! `REDIS_URL=unix:///tmp/r.sock cargo run -p deferred-redis --example two_caches`.
//! Without one it still runs: every read falls back to its loader, and the stats say so.

#![allow(clippy::std_instead_of_core)] // a `std` program

use std::{
    sync::atomic::{AtomicUsize, Ordering},
    sync::Arc,
    time::Duration,
};

use deferred_redis::{HybridCache, Utf8};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into());
    let client = redis::Client::open(url.as_str())?;
    let prefix = format!("example-{}:", std::process::id());
    let make = || {
        HybridCache::<String, String, std::io::Error, Utf8>::builder(
            client.clone(),
            prefix.as_str(),
            Utf8,
        )
        .time_to_live(Duration::from_secs(60))
        .build()
    };
    let (a, b) = (make()?, make()?);
    let ready = a.backplane_ready(Duration::from_secs(1)).await
        && b.backplane_ready(Duration::from_secs(1)).await;
    println!("backplane subscribed: {ready}");

    // Both caches miss "greeting" at once: one loader runs.
    let loads = Arc::new(AtomicUsize::new(0));
    let loader = |loads: Arc<AtomicUsize>| {
        move || async move {
            loads.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await; // a slow backend
            Ok("hello".to_string())
        }
    };
    let (x, y) = tokio::join!(
        a.get_with("greeting", loader(Arc::clone(&loads))),
        b.get_with("greeting", loader(Arc::clone(&loads))),
    );
    println!(
        "a: {x:?}, b: {y:?}, loads: {}",
        loads.load(Ordering::SeqCst)
    );

    // An invalidation on `a` reaches `b`'s L1 through the backplane.
    a.invalidate("greeting").await.ok();
    tokio::time::sleep(Duration::from_millis(50)).await; // only to let the message arrive
    println!(
        "b still holds it after a's invalidation: {}",
        b.contains_local("greeting")
    );

    let (sa, sb) = (a.stats(), b.stats());
    println!(
        "a: lease wins {}, l2 writes {}, l2 errors {}; b: lease waits {}, l2 hits {}, l2 errors {}",
        sa.lease_wins, sa.l2_writes, sa.l2_errors, sb.lease_waits, sb.l2_hits, sb.l2_errors
    );
    a.invalidate_all().await.ok(); // leave nothing behind
    Ok(())
}
