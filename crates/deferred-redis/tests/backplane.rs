//! The backplane against a real `redis-server`: writes on one cache reach another cache's
//! L1 (with the time it took measured and bounded), and a lost subscription drops the L1.

#![allow(clippy::std_instead_of_core)] // a `std` test

mod support;

use std::time::{Duration, Instant};

use deferred_redis::{HybridCache, Utf8};
use support::{eventually, server::RedisServer};

type Strings = HybridCache<String, String, String, Utf8>;

/// The bound the tests hold the backplane to (the README states it): far above what is
/// measured, so a loaded machine does not fail it, and still a bound.
const BOUND: Duration = Duration::from_secs(1);

async fn ready_cache(server: &RedisServer, prefix: &str) -> Strings {
    let cache = HybridCache::builder(server.client(), prefix, Utf8)
        .op_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    assert!(cache.backplane_ready(Duration::from_secs(5)).await);
    cache
}

/// Loads `key` into both L1s: `a` runs the loader, then `b` reads it from Redis once `a`'s
/// announcement of the load has reached `b` (so that it cannot drop `b`'s copy later).
async fn load_both(a: &Strings, b: &Strings, key: &str, value: &str) {
    let received = b.stats().backplane_received;
    let v = value.to_string();
    assert_eq!(
        a.get_with(key, || async move { Ok(v) }).await,
        Ok(value.to_string())
    );
    assert!(eventually(BOUND, || b.stats().backplane_received > received).await);
    let got = b
        .get_with(key, || async { Err("b must read Redis".to_string()) })
        .await;
    assert_eq!(got, Ok(value.to_string()));
    assert!(
        a.contains_local(key) && b.contains_local(key),
        "a: {} {:?}\nb: {} {:?}",
        a.contains_local(key),
        a.stats(),
        b.contains_local(key),
        b.stats()
    );
}

/// How long after `start` (the write's call) `b`'s L1 has lost `key` (`None`: not within
/// `BOUND`). The message may arrive before the writer's own reply does.
async fn reach(b: &Strings, key: &str, start: Instant) -> Option<Duration> {
    eventually(BOUND, || !b.contains_local(key))
        .await
        .then(|| start.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_on_one_cache_reach_the_other_l1_within_the_bound() {
    let server = RedisServer::start();
    let (a, b) = (
        ready_cache(&server, "bp:").await,
        ready_cache(&server, "bp:").await,
    );
    let mut times = Vec::new();
    for round in 0..20 {
        let key = format!("k{round}");
        load_both(&a, &b, &key, "old").await;
        let start = Instant::now();
        match round % 3 {
            0 => a.invalidate(&key).await.unwrap(),
            1 => a.insert(key.clone(), "new".to_string()).await.unwrap(),
            _ => a.invalidate_all().await.unwrap(),
        }
        let took = reach(&b, &key, start).await;
        assert!(took.is_some(), "round {round}: b still holds {key}");
        times.extend(took);
        // After an insert, `b` reads the new value from Redis; after the others, nothing.
        let expect = if round % 3 == 1 { "new" } else { "reloaded" };
        let got = b
            .get_with(&key, || async { Ok("reloaded".to_string()) })
            .await;
        assert_eq!(got, Ok(expect.to_string()), "round {round}");
    }
    times.sort();
    println!(
        "backplane: write to other L1 over 20 rounds: median {:?}, max {:?} (bound {BOUND:?})",
        times[times.len() / 2],
        times[times.len() - 1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_lost_subscription_the_l1_is_dropped() {
    let mut server = RedisServer::start();
    let (a, b) = (
        ready_cache(&server, "re:").await,
        ready_cache(&server, "re:").await,
    );
    load_both(&a, &b, "k", "v").await;
    assert_eq!(b.stats().backplane_subscriptions, 1);
    // A restart loses the subscription (and whatever was published meanwhile).
    server.restart();
    assert!(
        eventually(Duration::from_secs(5), || b.stats().backplane_subscriptions
            == 2)
        .await
    );
    assert!(
        !b.contains_local("k"),
        "the L1 went with the lost subscription"
    );
    // The new, empty server is used from then on: the value is loaded again, once.
    let got = b.get_with("k", || async { Ok("again".to_string()) }).await;
    assert_eq!(got, Ok("again".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_on_the_channel_are_ignored() {
    let server = RedisServer::start();
    let (a, b) = (
        ready_cache(&server, "junk:").await,
        ready_cache(&server, "junk:").await,
    );
    load_both(&a, &b, "k", "v").await;
    let mut raw = server.connection();
    let received = b.stats().backplane_received;
    for junk in [&b""[..], b"I", b"Ishort", &[0xff; 40][..]] {
        let _: i64 = redis::cmd("PUBLISH")
            .arg("junk:bp")
            .arg(junk)
            .query(&mut raw)
            .unwrap();
    }
    // The backplane goes on: a real invalidation still arrives, and `k` was kept until then.
    let start = Instant::now();
    assert!(b.contains_local("k"));
    a.invalidate("k").await.unwrap();
    assert!(reach(&b, "k", start).await.is_some());
    // The junk was dropped before being counted: only the invalidation counts. (It is
    // counted just after it is applied: wait for that count. Messages on the channel arrive
    // in order, so every piece of junk was handled before it.)
    let counted = || b.stats().backplane_received == received + 1;
    assert!(
        eventually(BOUND, counted).await,
        "the invalidation counted, no junk"
    );
    assert_eq!(b.stats().backplane_received, received + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_connection_is_noticed_by_the_ping_and_drops_the_l1() {
    let server = RedisServer::start();
    let a = ready_cache(&server, "hung:").await;
    let b = HybridCache::builder(server.client(), "hung:", Utf8)
        .op_timeout(Duration::from_millis(200))
        .backplane_ping(Duration::from_millis(100))
        .build()
        .unwrap();
    assert!(b.backplane_ready(Duration::from_secs(5)).await);
    load_both(&a, &b, "k", "v").await;
    // A paused server keeps the socket open: only the unanswered PING shows the loss.
    server.pause();
    let noticed = tokio::time::timeout(Duration::from_secs(5), async {
        while b.backplane_ready(Duration::from_millis(1)).await {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    server.resume();
    assert!(noticed.is_ok(), "the ping did not notice the paused server");
    // The L1 goes when the backplane subscribes again, once the server answers.
    assert!(
        eventually(Duration::from_secs(5), || b.stats().backplane_subscriptions
            == 2)
        .await
    );
    assert!(
        !b.contains_local("k"),
        "the L1 went with the lost subscription"
    );
}
