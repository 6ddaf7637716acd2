//! Keys other than `String` against a real `redis-server`: a `u64`-keyed cache shares one
//! load across separate L1s and its invalidations cross the backplane; a message whose key
//! text is no key of the cache's type is ignored; and `String` keys keep their Redis key
//! names and message format.

#![allow(clippy::std_instead_of_core)] // a `std` test

mod support;

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use deferred_redis::{HybridCache, Utf8};
use redis::Commands;
use support::{eventually, read_value, server::RedisServer};
use tokio::sync::Semaphore;

type ById = HybridCache<u64, String, String, Utf8>;
type Strings = HybridCache<String, String, String, Utf8>;

/// A bound for waits on conditions that real time decides; never reached when all is well.
const PATIENCE: Duration = Duration::from_secs(5);

/// A cache on `prefix` whose backplane is subscribed, with a TTL per value by key: ids
/// below 100 live a minute, the others ten.
async fn by_id(server: &RedisServer, prefix: &str) -> ById {
    let cache: ById = HybridCache::builder(server.client(), prefix, Utf8)
        .op_timeout(Duration::from_millis(500))
        .poll_interval(Duration::from_millis(20))
        .expire_after(|id: &u64, _: &String| Duration::from_secs(if *id < 100 { 60 } else { 600 }))
        .build()
        .expect("build inside a runtime");
    assert!(cache.backplane_ready(PATIENCE).await);
    cache
}

async fn strings(server: &RedisServer, prefix: &str) -> Strings {
    let cache: Strings = HybridCache::builder(server.client(), prefix, Utf8)
        .op_timeout(Duration::from_millis(500))
        .poll_interval(Duration::from_millis(20))
        .build()
        .expect("build inside a runtime");
    assert!(cache.backplane_ready(PATIENCE).await);
    cache
}

/// Puts `id` in `b`'s L1 through Redis: `a` inserts it, `b` sees the insert's announcement
/// (so it cannot drop `b`'s copy later), then `b` reads it from Redis.
async fn in_both(a: &ById, b: &ById, id: u64, value: &str) {
    let received = b.stats().backplane_received;
    a.insert(id, value.to_string()).await.unwrap();
    assert!(eventually(PATIENCE, || b.stats().backplane_received > received).await);
    let got = b
        .get_with(id, || async { Err("b must read Redis".to_string()) })
        .await;
    assert_eq!(got, Ok(value.to_string()));
    assert!(a.contains_local(&id) && b.contains_local(&id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn u64_keys_share_one_load_across_l1s_and_invalidations_cross_the_backplane() {
    let server = RedisServer::start();
    let (a, b) = (by_id(&server, "ids:").await, by_id(&server, "ids:").await);
    let runs = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(0));
    let load = |cache: &ById| {
        let (cache, runs, gate) = (cache.clone(), Arc::clone(&runs), Arc::clone(&gate));
        tokio::spawn(async move {
            cache
                .get_with(7_u64, move || async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    let _permit = gate.acquire().await.map_err(|e| e.to_string())?;
                    Ok("seven".to_string())
                })
                .await
        })
    };
    let (first, second) = (load(&a), load(&b));
    // One of them runs the loader; the other waits on its lease.
    let waiting = || a.stats().lease_waits + b.stats().lease_waits == 1;
    assert!(eventually(PATIENCE, || runs.load(Ordering::SeqCst) == 1 && waiting()).await);
    gate.add_permits(1);
    assert_eq!(first.await.unwrap(), Ok("seven".to_string()));
    assert_eq!(second.await.unwrap(), Ok("seven".to_string()));
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    // In Redis under the key's decimal text, with the policy's TTL for id 7 (a minute).
    let mut raw = server.connection();
    let stored = read_value(&mut raw, "ids:v:7").unwrap();
    assert_eq!(stored, "seven");
    let pttl: i64 = raw.pttl("ids:v:7").unwrap();
    assert!(pttl > 0 && pttl <= 60_000, "{pttl}");

    // An invalidation on `a` reaches `b`'s L1: the message's "1234" reads back as 1234.
    in_both(&a, &b, 1234, "old").await;
    a.invalidate(&1234).await.unwrap();
    assert!(eventually(PATIENCE, || !b.contains_local(&1234)).await);
    assert!(!a.contains_local(&1234));
    let pttl: i64 = raw.pttl("ids:v:1234").unwrap();
    assert_eq!(pttl, -2, "gone from Redis");
    // An insert on `b` reaches `a`'s L1 the same way, and only that key's entry goes.
    in_both(&a, &b, 5, "five").await;
    in_both(&a, &b, 6, "six").await;
    b.insert(5_u64, "FIVE".to_string()).await.unwrap();
    assert!(eventually(PATIENCE, || !a.contains_local(&5)).await);
    assert!(a.contains_local(&6));
    assert_eq!(a.get_if_present(&6).as_deref(), Some("six"));
    let got = a
        .get_with(5_u64, || async { Err("a must read Redis".to_string()) })
        .await;
    assert_eq!(got, Ok("FIVE".to_string()));
    let pttl: i64 = raw.pttl("ids:v:5").unwrap();
    assert!(pttl > 0 && pttl <= 60_000, "{pttl}");
    b.insert(500_u64, "big".to_string()).await.unwrap();
    let pttl: i64 = raw.pttl("ids:v:500").unwrap();
    assert!(pttl > 60_000 && pttl <= 600_000, "{pttl}");
    // `invalidate_all`'s message names no key (its text is empty, no `u64`'s): it still
    // clears the other L1.
    assert!(b.contains_local(&6));
    a.invalidate_all().await.unwrap();
    assert!(eventually(PATIENCE, || !b.contains_local(&6)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_whose_key_text_is_no_u64_is_ignored() {
    let server = RedisServer::start();
    // Both on one prefix: a `String` cache's keys are the `u64` cache's where the text is a
    // `u64`'s, and nothing of it otherwise.
    let (ids, other, texts) = (
        by_id(&server, "mixed:").await,
        by_id(&server, "mixed:").await,
        strings(&server, "mixed:").await,
    );
    in_both(&other, &ids, 5, "five").await;
    in_both(&other, &ids, 7, "seven").await;
    let received = ids.stats().backplane_received;
    // Text that no `u64` writes: not a number, loose forms of 5 and 7, out of range, not
    // UTF-8, an empty key. Sent by another cache and by hand, in that order, on the channel.
    texts.invalidate("abc").await.unwrap();
    texts.invalidate("05").await.unwrap();
    texts.insert("+7", "x".to_string()).await.unwrap();
    let mut raw = server.connection();
    let origin = "0123456789abcdef";
    for key in [&b"-0"[..], b"18446744073709551616", b"\xff5", b"", b"5 "] {
        let message = [&b"I"[..], origin.as_bytes(), key].concat();
        let _: i64 = redis::cmd("PUBLISH")
            .arg("mixed:bp")
            .arg(message)
            .query(&mut raw)
            .unwrap();
    }
    // Then a key that is a `u64`'s: once its message is applied, every one before it was
    // (one channel, in order), and none of them dropped 5 or 7, or stopped the backplane.
    texts.invalidate("7").await.unwrap();
    assert!(eventually(PATIENCE, || !ids.contains_local(&7)).await);
    assert!(ids.contains_local(&5), "{:?}", ids.stats());
    assert_eq!(ids.get_if_present(&5).as_deref(), Some("five"));
    // Only the last message counts as received: the others were ignored before it.
    assert_eq!(ids.stats().backplane_received, received + 1);
    // The backplane still runs: the next invalidation reaches this L1 too.
    other.invalidate(&5).await.unwrap();
    assert!(eventually(PATIENCE, || !ids.contains_local(&5)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn string_keys_keep_their_redis_names_and_message_format() {
    let server = RedisServer::start();
    let cache = strings(&server, "names:").await;
    let mut sub = server.connection();
    sub.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut sub = sub.as_pubsub();
    sub.subscribe("names:bp").unwrap();
    let origin = format!("{cache:?}");
    let origin = origin
        .split("origin: \"")
        .nth(1)
        .and_then(|rest| rest.get(..16))
        .expect("the origin in the Debug output")
        .to_string();
    let message = |sub: &mut redis::PubSub<'_>| {
        let message = sub.get_message().expect("a message within the bound");
        message.get_payload_bytes().to_vec()
    };
    let mut raw = server.connection();

    cache.insert("k", "v".to_string()).await.unwrap();
    let stored = read_value(&mut raw, "names:v:k").unwrap();
    assert_eq!(stored, "v");
    assert_eq!(message(&mut sub), format!("S{origin}k").into_bytes());

    // A load: the lease at `names:l:{key}` while the loader runs, then the value and `L`.
    let runs = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(0));
    let loading = {
        let (cache, runs, gate) = (cache.clone(), Arc::clone(&runs), Arc::clone(&gate));
        tokio::spawn(async move {
            cache
                .get_with("a b/é", move || async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    let _permit = gate.acquire().await.map_err(|e| e.to_string())?;
                    Ok("loaded".to_string())
                })
                .await
        })
    };
    assert!(eventually(PATIENCE, || runs.load(Ordering::SeqCst) == 1).await);
    let lease: Option<String> = raw.get("names:l:a b/é").unwrap();
    assert!(lease.is_some_and(|token| token.starts_with(&origin)));
    gate.add_permits(1);
    assert_eq!(loading.await.unwrap(), Ok("loaded".to_string()));
    let stored = read_value(&mut raw, "names:v:a b/é").unwrap();
    assert_eq!(stored, "loaded");
    assert_eq!(message(&mut sub), format!("L{origin}a b/é").into_bytes());

    cache.invalidate("k").await.unwrap();
    assert!(!raw.exists::<_, bool>("names:v:k").unwrap());
    assert_eq!(message(&mut sub), format!("I{origin}k").into_bytes());
    cache.invalidate_all().await.unwrap();
    assert_eq!(message(&mut sub), format!("A{origin}").into_bytes());
}
