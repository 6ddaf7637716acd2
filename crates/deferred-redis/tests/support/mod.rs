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

/// The header a cache writes before each value's bytes in Redis (the crate's `wire`
/// format, written out here on its own): the tag 0xD1, then the absolute expiry in
/// milliseconds since the Unix epoch, big-endian (0: none).
pub const HEADER_LEN: usize = 9;

/// The value a cache stored at `key`, its header checked and taken off, as text; `None` if
/// the key holds nothing. Panics on a value without the header (or not UTF-8).
pub fn read_value(raw: &mut redis::Connection, key: &str) -> Option<String> {
    let stored: Option<Vec<u8>> = redis::Commands::get(raw, key).expect("GET");
    stored.map(|stored| {
        assert!(
            stored.len() >= HEADER_LEN && stored[0] == 0xD1,
            "{stored:?}"
        );
        String::from_utf8(stored[HEADER_LEN..].to_vec()).expect("UTF-8")
    })
}

/// `bytes` as a cache writes them: the header, expiring `ttl` from now on this clock, then
/// the bytes.
pub fn framed(bytes: &[u8], ttl: Duration) -> Vec<u8> {
    let expiry = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("a clock after 1970")
        + ttl;
    let expiry = u64::try_from(expiry.as_millis()).expect("in range");
    let mut framed = vec![0xD1];
    framed.extend_from_slice(&expiry.to_be_bytes());
    framed.extend_from_slice(bytes);
    framed
}
