//! Test support: a real `redis-server` per test, on a Unix socket in a fresh directory.

#![allow(dead_code)] // each test file uses its own part of the helpers

pub mod server;

use std::time::{Duration, Instant};

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
