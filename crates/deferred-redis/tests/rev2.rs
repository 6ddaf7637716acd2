//! Review 2 of `optionally_get_with` and generic keys, against a real `redis-server`.

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
use support::{eventually, gated_optional, read_value, server::RedisServer};
use tokio::sync::Semaphore;

type Strings = HybridCache<String, String, String, Utf8>;

const PATIENCE: Duration = Duration::from_secs(5);

fn strings(server: &RedisServer, prefix: &str, backplane: bool) -> Strings {
    HybridCache::builder(server.client(), prefix, Utf8)
        .op_timeout(Duration::from_millis(500))
        .poll_interval(Duration::from_millis(20))
        .lease(Duration::from_secs(30))
        .backplane(backplane)
        .build()
        .expect("build inside a runtime")
}

async fn ready(cache: &Strings) {
    assert!(cache.backplane_ready(PATIENCE).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_none_after_an_insert_in_the_same_process_leaves_the_insert() {
    let server = RedisServer::start();
    let a = strings(&server, "p:", true);
    ready(&a).await;
    let (runs, gate) = (Arc::new(AtomicUsize::new(0)), Arc::new(Semaphore::new(0)));
    let loading = tokio::spawn({
        let (a, load) = (a.clone(), gated_optional(&runs, &gate, None));
        async move { a.optionally_get_with("k", load).await }
    });
    assert!(eventually(PATIENCE, || runs.load(Ordering::SeqCst) == 1).await);
    a.insert("k", "v".to_string()).await.unwrap();
    gate.add_permits(1);
    assert_eq!(loading.await.unwrap(), Ok(None));
    assert_eq!(
        a.get_if_present("k").as_deref(),
        Some("v"),
        "{:?}",
        a.stats()
    );
    let stored = read_value(&mut server.connection(), "p:v:k").unwrap();
    assert_eq!(stored, "v");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_optional_value_fenced_by_an_insert_elsewhere_is_not_kept() {
    let server = RedisServer::start();
    // `a` without a backplane: only the fence keeps the loser's value out of its L1.
    let (a, b) = (strings(&server, "p:", false), strings(&server, "p:", true));
    ready(&b).await;
    let (runs, gate) = (Arc::new(AtomicUsize::new(0)), Arc::new(Semaphore::new(0)));
    let loading = tokio::spawn({
        let (a, load) = (a.clone(), gated_optional(&runs, &gate, Some("old")));
        async move { a.optionally_get_with("k", load).await }
    });
    assert!(eventually(PATIENCE, || runs.load(Ordering::SeqCst) == 1).await);
    b.insert("k", "new".to_string()).await.unwrap();
    gate.add_permits(1);
    assert_eq!(loading.await.unwrap(), Ok(Some("old".to_string())));
    assert_eq!(a.stats().fenced_writes, 1);
    assert!(!a.contains_local("k") || a.get_if_present("k").is_none());
    let stored = read_value(&mut server.connection(), "p:v:k").unwrap();
    assert_eq!(stored, "new");
    let next = a.optionally_get_with("k", || async { None }).await;
    assert_eq!(next, Ok(Some("new".to_string())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_string_key_crosses_the_backplane() {
    let server = RedisServer::start();
    let (a, b) = (strings(&server, "p:", true), strings(&server, "p:", true));
    ready(&a).await;
    ready(&b).await;
    let received = b.stats().backplane_received;
    a.insert("", "empty".to_string()).await.unwrap();
    assert!(eventually(PATIENCE, || b.stats().backplane_received > received).await);
    let got = b
        .get_with("", || async { Err("b reads Redis".to_string()) })
        .await;
    assert_eq!(got.as_deref(), Ok("empty"));
    assert!(b.contains_local(""));
    a.invalidate("").await.unwrap();
    assert!(eventually(PATIENCE, || !b.contains_local("")).await);
}

/// A prefix that starts with another followed by `v:` (or `l:`) shares keys with it, not
/// only one that equals it plus `v:` (what the README said before review 2): `app:v:users:`'s
/// key `1` is `app:`'s key `users:v:1`, and `app:`'s `invalidate_all` deletes it. Prefixes
/// that extend one another otherwise (`app:` and `app:users:`) stay apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefixes_that_extend_another_past_v_or_l_share_keys() {
    let server = RedisServer::start();
    let (app, users, apart) = (
        strings(&server, "app:", true),
        strings(&server, "app:v:users:", true),
        strings(&server, "app:users:", true),
    );
    for cache in [&app, &users, &apart] {
        ready(cache).await;
    }
    users.insert("1", "ada".to_string()).await.unwrap();
    apart.insert("1", "grace".to_string()).await.unwrap();
    let got = app
        .get_with("users:v:1", || async { Ok("app's own".to_string()) })
        .await;
    assert_eq!(
        got.as_deref(),
        Ok("ada"),
        "one key in Redis: app:v:users:v:1"
    );
    let got = app
        .get_with("users:1", || async { Ok("app's own".to_string()) })
        .await;
    assert_eq!(got.as_deref(), Ok("app's own"), "app:users: stays apart");
    app.invalidate_all().await.unwrap();
    let mut raw = server.connection();
    assert!(!raw.exists::<_, bool>("app:v:users:v:1").unwrap());
    assert!(raw.exists::<_, bool>("app:users:v:1").unwrap());
}

/// `A` (invalidate-all) names no key: whatever follows its origin is not read. Before
/// review 2, an `A` followed by bytes that are not UTF-8 was dropped (the text check came
/// before the kind's), while one followed by other text cleared the L1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidate_all_message_clears_the_l1_whatever_follows_its_origin() {
    let server = RedisServer::start();
    let (a, b) = (strings(&server, "p:", true), strings(&server, "p:", true));
    ready(&a).await;
    ready(&b).await;
    let mut raw = server.connection();
    for tail in [&b"\xff"[..], b"junk", b""] {
        let received = b.stats().backplane_received;
        a.insert("k", "v".to_string()).await.unwrap();
        assert!(eventually(PATIENCE, || b.stats().backplane_received > received).await);
        let got = b
            .get_with("k", || async { Err("b reads Redis".to_string()) })
            .await;
        assert_eq!(got.as_deref(), Ok("v"));
        assert!(b.contains_local("k"));
        let message = [&b"A"[..], b"0123456789abcdef", tail].concat();
        let _: i64 = redis::cmd("PUBLISH")
            .arg("p:bp")
            .arg(message)
            .query(&mut raw)
            .unwrap();
        assert!(
            eventually(PATIENCE, || !b.contains_local("k")).await,
            "an A followed by {tail:?} left the L1 as it was"
        );
    }
}

/// The README's "Not done yet": an `Arc<str>` key is looked up by `&Arc<str>` (the L1's
/// `ToOwned` bound), except by `contains_local`, which takes `&str` too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_arc_str_key_is_looked_up_by_arc_and_contains_local_takes_str() {
    let server = RedisServer::start();
    let cache: HybridCache<Arc<str>, String, String, Utf8> =
        HybridCache::builder(server.client(), "arc:", Utf8)
            .op_timeout(Duration::from_millis(500))
            .build()
            .expect("build inside a runtime");
    assert!(cache.backplane_ready(PATIENCE).await);
    let key: Arc<str> = "k".into();
    cache
        .insert(Arc::clone(&key), "v".to_string())
        .await
        .unwrap();
    assert!(cache.contains_local("k"));
    assert_eq!(cache.get_if_present(&key).as_deref(), Some("v"));
    let stored = read_value(&mut server.connection(), "arc:v:k").unwrap();
    assert_eq!(stored, "v");
    cache.invalidate(&key).await.unwrap();
    assert!(!cache.contains_local("k"));
}

/// `expire_after` decides a loaded value's TTL once, for Redis and the L1 alike: a policy
/// that answers differently from call to call (jitter) must not give the L1 copy longer
/// than the Redis value. Before review 2 the leader asked the policy twice, once for the
/// `COMMIT`'s `PX` and once for its own L1, so its L1 copy could outlive the Redis value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loaded_values_ttl_is_decided_once_for_redis_and_the_l1() {
    let server = RedisServer::start();
    let calls = Arc::new(AtomicUsize::new(0));
    let policy = {
        let calls = Arc::clone(&calls);
        // Jitter at its worst: short, then long, then short...
        move |_: &String, _: &String| {
            if calls.fetch_add(1, Ordering::SeqCst) % 2 == 0 {
                Duration::from_millis(200)
            } else {
                Duration::from_secs(60)
            }
        }
    };
    let cache: Strings = HybridCache::builder(server.client(), "jitter:", Utf8)
        .op_timeout(Duration::from_millis(500))
        .expire_after(policy)
        .build()
        .expect("build inside a runtime");
    ready(&cache).await;
    let got = cache.get_with("k", || async { Ok("v".to_string()) }).await;
    assert_eq!(got.as_deref(), Ok("v"));
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the policy decides once per loaded value"
    );
    let pttl: i64 = server.connection().pttl("jitter:v:k").unwrap();
    assert!(pttl > 0 && pttl <= 200, "{pttl}");
    // Once the Redis value is gone, the L1 copy is gone too (give or take the COMMIT's
    // reply: the L1 counts its TTL from when it got the value; 50 ms covers that).
    assert!(
        eventually(PATIENCE, || server
            .connection()
            .pttl::<_, i64>("jitter:v:k")
            .unwrap()
            == -2)
        .await
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        cache.get_if_present("k"),
        None,
        "the L1 copy outlived the Redis value"
    );
}
