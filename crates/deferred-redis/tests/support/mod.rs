//! Test support: a real `redis-server` per test, on a Unix socket in a fresh directory.

#![allow(dead_code)] // each test file uses its own part of the helpers

pub mod server;

use std::{
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use tokio::sync::Semaphore;

/// Polls `condition` every millisecond until it holds or `limit` passes; `true` if it held.
/// Only for conditions that real time decides (a lease expiring in Redis, a message
/// crossing the backplane): the poll bounds the wait, it never orders two events.
pub async fn eventually(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if condition() {
            return true;
        }
        if start.elapsed() >= limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// An `optionally_get_with` loader that counts its runs, waits for `gate`, then answers
/// `value`.
pub fn gated_optional(
    runs: &Arc<AtomicUsize>,
    gate: &Arc<Semaphore>,
    value: Option<&'static str>,
) -> impl FnOnce() -> Pin<Box<dyn Future<Output = Option<String>> + Send>> {
    let (runs, gate) = (Arc::clone(runs), Arc::clone(gate));
    move || {
        Box::pin(async move {
            runs.fetch_add(1, Ordering::SeqCst);
            let _permit = gate.acquire().await.ok()?;
            value.map(str::to_string)
        })
    }
}
