//! The loading face (`build_with_loader`, `get`, `get_if_present`), `optionally_get_with`,
//! per-value TTLs (`expire_after`) and negative caching (`cache_errors_for`), against a real
//! `redis-server` started per test on a Unix socket.

#![allow(clippy::std_instead_of_core)] // a `std` test

mod support;

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use deferred_redis::{BuildError, HybridCache, HybridLoadingCache, LoadError, Utf8};
use redis::Commands;
use support::{eventually, gated_optional, read_value, server::RedisServer};
use tokio::sync::Semaphore;

/// A bound for waits on conditions that real time decides; never reached when all is well.
const PATIENCE: Duration = Duration::from_secs(5);

type Loading = HybridLoadingCache<String, String, String, Utf8>;

/// A loading cache whose loader counts its runs, and waits for `gate` before answering.
fn loading(server: &RedisServer, runs: &Arc<AtomicUsize>, gate: &Arc<Semaphore>) -> Loading {
    let (runs, gate) = (Arc::clone(runs), Arc::clone(gate));
    HybridCache::builder(server.client(), "face:", Utf8)
        .op_timeout(Duration::from_millis(500))
        .poll_interval(Duration::from_millis(20))
        .build_with_loader(move |key: &String| {
            let (runs, gate, key) = (Arc::clone(&runs), Arc::clone(&gate), key.clone());
            async move {
                runs.fetch_add(1, Ordering::SeqCst);
                let _permit = gate.acquire().await.map_err(|e| e.to_string())?;
                Ok(format!("value of {key}"))
            }
        })
        .expect("build inside a runtime")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loading_face_loads_once_across_caches_and_get_if_present_reads_the_l1_only() {
    let server = RedisServer::start();
    let runs = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(0));
    // Two caches with separate L1s: two processes of a service.
    let (a, b) = (
        loading(&server, &runs, &gate),
        loading(&server, &runs, &gate),
    );
    assert!(a.backplane_ready(PATIENCE).await && b.backplane_ready(PATIENCE).await);

    let first = tokio::spawn({
        let a = a.clone();
        async move { a.get("k").await }
    });
    // `a`'s loader has started (it holds the lease) before `b` asks.
    assert!(eventually(PATIENCE, || runs.load(Ordering::SeqCst) == 1).await);
    let second = tokio::spawn({
        let b = b.clone();
        async move { b.get("k").await }
    });
    assert!(eventually(PATIENCE, || b.stats().lease_waits == 1).await);
    gate.add_permits(1);
    let (x, y) = (first.await.expect("join"), second.await.expect("join"));
    assert_eq!(x.as_deref().ok(), Some("value of k"));
    assert_eq!(y.as_deref().ok(), Some("value of k"));
    assert_eq!(runs.load(Ordering::SeqCst), 1, "one load for both caches");

    // `get_if_present` is this process's L1 alone: a value only Redis holds is `None`.
    let c = loading(&server, &runs, &gate);
    assert!(c.backplane_ready(PATIENCE).await);
    assert_eq!(c.get_if_present("k"), None, "in Redis, not in c's L1");
    assert_eq!(c.stats().l2_hits, 0, "get_if_present asked Redis nothing");
    assert_eq!(c.get("k").await.as_deref().ok(), Some("value of k"));
    assert_eq!(c.stats().l2_hits, 1);
    assert_eq!(c.get_if_present("k").as_deref(), Some("value of k"));
    assert_eq!(runs.load(Ordering::SeqCst), 1);

    // `invalidate_local` drops c's copy alone: Redis keeps the value, so the next read is
    // an L2 hit, and the others' L1s keep theirs.
    assert!(c.invalidate_local("k"));
    assert_eq!(c.get_if_present("k"), None);
    assert_eq!(c.get("k").await.as_deref().ok(), Some("value of k"));
    assert_eq!(c.stats().l2_hits, 2);
    assert_eq!(a.get_if_present("k").as_deref(), Some("value of k"));
    assert_eq!(runs.load(Ordering::SeqCst), 1);

    // Deref: the rest of the HybridCache is there; an invalidation reaches the others.
    c.invalidate("k").await.expect("invalidate");
    assert!(eventually(PATIENCE, || a.get_if_present("k").is_none()).await);
    assert!(eventually(PATIENCE, || b.get_if_present("k").is_none()).await);
    assert!(!c.invalidate_local("k"), "already gone here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expire_after_sets_each_values_ttl_in_redis_and_in_the_l1() {
    let server = RedisServer::start();
    let cache: HybridCache<String, String, String, Utf8> =
        HybridCache::builder(server.client(), "ttl:", Utf8)
            .time_to_live(Duration::from_secs(300))
            .expire_after(|key: &String, _: &String| {
                if key.starts_with("short") {
                    Duration::from_millis(1000)
                } else {
                    Duration::from_secs(600)
                }
            })
            .build()
            .expect("build");
    assert!(cache.backplane_ready(PATIENCE).await);
    // One value through a load, one through an insert: both take the policy's TTL.
    let short = cache
        .get_with("short-loaded", || async { Ok("s".to_string()) })
        .await;
    assert_eq!(short.as_deref().ok(), Some("s"));
    cache
        .insert("long-inserted", "l".to_string())
        .await
        .expect("insert");
    let mut redis = server.connection();
    let short_ms: i64 = redis.pttl("ttl:v:short-loaded").expect("PTTL");
    let long_ms: i64 = redis.pttl("ttl:v:long-inserted").expect("PTTL");
    assert!((1..=1000).contains(&short_ms), "short: {short_ms} ms");
    assert!(
        (300_001..=600_000).contains(&long_ms),
        "long: {long_ms} ms, the policy's, not time_to_live's 300 s"
    );
    // The L1 copy goes with the short TTL; the long one stays.
    assert!(eventually(PATIENCE, || !cache.contains_local("short-loaded")).await);
    assert!(cache.contains_local("long-inserted"));

    // Another cache (another process) reads the long value from Redis and keeps it for
    // what it has left there: more than `time_to_live`'s 300 s, since no l1_time_to_live
    // was set.
    let other: HybridCache<String, String, String, Utf8> =
        HybridCache::builder(server.client(), "ttl:", Utf8)
            .time_to_live(Duration::from_millis(200))
            .build()
            .expect("build");
    // Its first subscription drops its L1: wait for it before the read it must keep.
    assert!(other.backplane_ready(PATIENCE).await);
    let read = other
        .get_with("long-inserted", || async { Err("no load".to_string()) })
        .await;
    assert_eq!(read.as_deref().ok(), Some("l"));
    assert_eq!(other.stats().l2_hits, 1);
    // Real time decides this one: twice the reader's time_to_live, then the copy is there.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        other.contains_local("long-inserted"),
        "kept for its PTTL, not for the reader's time_to_live"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_errors_for_keeps_an_error_in_the_l1_only() {
    let server = RedisServer::start();
    let runs = Arc::new(AtomicUsize::new(0));
    let make = |negative: Option<Duration>| {
        let builder =
            HybridCache::<String, String, String, Utf8>::builder(server.client(), "neg:", Utf8);
        match negative {
            Some(ttl) => builder.cache_errors_for(ttl),
            None => builder,
        }
        .build()
        .expect("build")
    };
    let failing = |runs: &Arc<AtomicUsize>| {
        let runs = Arc::clone(runs);
        move || async move {
            runs.fetch_add(1, Ordering::SeqCst);
            Err::<String, _>("backend down".to_string())
        }
    };
    let cache = make(Some(Duration::from_secs(60)));
    assert!(cache.backplane_ready(PATIENCE).await);
    let first = cache.get_with("k", failing(&runs)).await;
    let second = cache.get_with("k", failing(&runs)).await;
    let (Err(LoadError::Failed(e1)), Err(LoadError::Failed(e2))) = (first, second) else {
        panic!("two failures expected");
    };
    assert!(Arc::ptr_eq(&e1, &e2), "the same error, kept");
    assert_eq!(*e1, "backend down");
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "the second read ran no loader"
    );
    assert_eq!(cache.stats().l1.negative_hits, 1);
    // Nothing in Redis: no value, and the lease handed back.
    let mut redis = server.connection();
    let exists: i64 = redis.exists(&["neg:v:k", "neg:l:k"][..]).expect("EXISTS");
    assert_eq!(exists, 0, "errors are not written to Redis");

    // Another process (its own L1) does not see the error: it loads for itself.
    let other = make(None);
    let read = other
        .get_with("k", || async { Ok("fine".to_string()) })
        .await;
    assert_eq!(read.as_deref().ok(), Some("fine"));
    // Its write reaches this cache through the backplane, and drops the error (the
    // message is counted once applied).
    assert!(eventually(PATIENCE, || cache.stats().backplane_received >= 1).await);
    let now = cache.get_with("k", failing(&runs)).await;
    assert_eq!(now.as_deref().ok(), Some("fine"), "the error was dropped");
    assert_eq!(runs.load(Ordering::SeqCst), 1);

    // Without cache_errors_for, errors are cached nowhere: each read loads again.
    let plain = make(None);
    assert!(plain.get_with("e", failing(&runs)).await.is_err());
    assert!(plain.get_with("e", failing(&runs)).await.is_err());
    assert_eq!(runs.load(Ordering::SeqCst), 3);

    let zero = HybridCache::<String, String, String, Utf8>::builder(server.client(), "neg:", Utf8)
        .cache_errors_for(Duration::ZERO)
        .build();
    assert!(matches!(zero, Err(BuildError::Invalid(_))));
}

type Strings = HybridCache<String, String, String, Utf8>;

/// A cache on `optional:` whose lease outlasts every test's patience, so that no lease
/// left behind can expire in time to hide a waiter that hangs on it.
fn optional(server: &RedisServer, poll_interval: Duration) -> Strings {
    HybridCache::builder(server.client(), "optional:", Utf8)
        .lease(Duration::from_secs(30))
        .op_timeout(Duration::from_millis(500))
        .poll_interval(poll_interval)
        .max_wait(Duration::from_secs(60))
        .build()
        .expect("build inside a runtime")
}

/// Two caches on `optional:` with separate L1s on one Redis (two processes of a service),
/// both subscribed, and what their loaders share: a count of runs and a gate with
/// `permits`.
struct Two {
    server: RedisServer,
    runs: Arc<AtomicUsize>,
    gate: Arc<Semaphore>,
    a: Strings,
    b: Strings,
}

impl Two {
    async fn start(poll_interval: Duration, permits: usize) -> Two {
        let server = RedisServer::start();
        let (a, b) = (
            optional(&server, poll_interval),
            optional(&server, poll_interval),
        );
        assert!(a.backplane_ready(PATIENCE).await && b.backplane_ready(PATIENCE).await);
        Two {
            server,
            runs: Arc::new(AtomicUsize::new(0)),
            gate: Arc::new(Semaphore::new(permits)),
            a,
            b,
        }
    }
}

/// Whether Redis holds the key's value or its lease.
fn in_redis(server: &RedisServer, key: &str) -> (bool, bool) {
    let mut redis = server.connection();
    let value: bool = redis.exists(format!("optional:v:{key}")).expect("EXISTS");
    let lease: bool = redis.exists(format!("optional:l:{key}")).expect("EXISTS");
    (value, lease)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optionally_get_with_none_runs_once_per_cache_is_kept_nowhere_and_loads_again() {
    const CALLERS: u64 = 20;
    let Two {
        server,
        runs,
        gate,
        a,
        b,
    } = Two::start(Duration::from_millis(20), 0).await;
    let spawn_callers = |cache: &Strings| {
        (0..CALLERS)
            .map(|_| {
                let (cache, load) = (cache.clone(), gated_optional(&runs, &gate, None));
                tokio::spawn(async move { cache.optionally_get_with("k", load).await })
            })
            .collect::<Vec<_>>()
    };
    // `a`'s callers share one load, which holds the lease while its loader waits on the
    // gate; a `get_with` caller joins it too.
    let mut callers = spawn_callers(&a);
    assert!(eventually(PATIENCE, || a.stats().l1.cache.coalesced == CALLERS - 1).await);
    let joined = tokio::spawn({
        let a = a.clone();
        async move {
            a.get_with("k", || async { Ok("not run".to_string()) })
                .await
        }
    });
    assert!(eventually(PATIENCE, || a.stats().l1.cache.coalesced == CALLERS).await);
    // The callers join the L1's load at once; its loader runs only once the load holds the
    // lease, two Redis round trips later (a bare assert here saw 0 runs under load).
    assert!(eventually(PATIENCE, || runs.load(Ordering::SeqCst) == 1).await);
    assert_eq!(a.stats().lease_wins, 1);
    // `b`'s callers share one load, which waits on `a`'s lease.
    callers.extend(spawn_callers(&b));
    assert!(eventually(PATIENCE, || b.stats().lease_waits == 1).await);
    assert!(eventually(PATIENCE, || b.stats().l1.cache.coalesced == CALLERS - 1).await);
    assert_eq!(runs.load(Ordering::SeqCst), 1, "b waits, it does not load");

    // `a`'s loader finds nothing: its lease is handed back, `b`'s load takes it over and
    // runs its own loader, which finds nothing too.
    gate.add_permits(2);
    for caller in callers {
        let got = tokio::time::timeout(PATIENCE, caller).await;
        assert_eq!(got.expect("no caller hangs").expect("join"), Ok(None));
    }
    let joined = tokio::time::timeout(PATIENCE, joined).await;
    assert!(
        matches!(
            joined.expect("no hang").expect("join"),
            Err(LoadError::NotFound)
        ),
        "a get_with caller that joined a load that found nothing"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 2, "one run per cache");
    assert_eq!(b.stats().takeovers, 1, "b took the released lease over");
    for cache in [&a, &b] {
        assert_eq!(cache.stats().l1.cache.loads_empty, 1);
        assert!(!cache.contains_local("k"), "None is not kept in the L1");
        assert_eq!(cache.stats().l2_writes, 0);
    }
    assert_eq!(
        in_redis(&server, "k"),
        (false, false),
        "no value in Redis, no lease left behind"
    );

    // Nothing kept: the next read asks again, and a value it finds is kept as usual.
    let again = a.optionally_get_with("k", gated_optional(&runs, &gate, Some("found")));
    assert_eq!(again.await, Ok(Some("found".to_string())));
    assert_eq!(runs.load(Ordering::SeqCst), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optionally_get_with_some_is_kept_in_the_l1_and_in_redis_like_get_with() {
    let Two {
        server,
        runs,
        gate,
        a,
        b,
    } = Two::start(Duration::from_millis(20), 1).await;
    let got = a.optionally_get_with("k", gated_optional(&runs, &gate, Some("v")));
    assert_eq!(got.await, Ok(Some("v".to_string())));
    assert!(a.contains_local("k"), "kept in the L1");
    assert_eq!(
        in_redis(&server, "k"),
        (true, false),
        "written, lease released"
    );
    let stored = read_value(&mut server.connection(), "optional:v:k").expect("a value");
    assert_eq!(stored, "v");
    assert_eq!(a.stats().l2_writes, 1);
    // The L1 answers the next read (no loader run), whichever face asks.
    let hit = a.optionally_get_with("k", gated_optional(&runs, &gate, None));
    assert_eq!(hit.await, Ok(Some("v".to_string())));
    let hit = a.get_with("k", || async { Ok("not run".to_string()) });
    assert_eq!(hit.await.as_deref(), Ok("v"));
    // Another process reads it from Redis.
    let other = b.optionally_get_with("k", gated_optional(&runs, &gate, None));
    assert_eq!(other.await, Ok(Some("v".to_string())));
    assert_eq!(b.stats().l2_hits, 1);
    assert!(b.contains_local("k"));
    assert_eq!(runs.load(Ordering::SeqCst), 1, "one loader run in all");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_elsewhere_does_not_hang_when_the_leader_finds_nothing() {
    // Polls 20 s apart, a lease of 30 s and a wait of 60 s: only the backplane's message
    // that the lease was handed back can wake the waiter within the test's patience.
    let Two {
        server: _server,
        runs,
        gate,
        a,
        b,
    } = Two::start(Duration::from_secs(20), 0).await;
    let leader = tokio::spawn({
        let (a, load) = (a.clone(), gated_optional(&runs, &gate, None));
        async move { a.optionally_get_with("k", load).await }
    });
    assert!(eventually(PATIENCE, || runs.load(Ordering::SeqCst) == 1).await);
    // The waiter is a `get_with` caller: it takes the lease over and loads a value, which
    // it writes to Redis for everyone.
    let waiter = tokio::spawn({
        let b = b.clone();
        async move { b.get_with("k", || async { Ok("from b".to_string()) }).await }
    });
    assert!(eventually(PATIENCE, || b.stats().lease_waits == 1).await);
    gate.add_permits(1);
    let led = tokio::time::timeout(PATIENCE, leader).await;
    assert_eq!(led.expect("the leader ends").expect("join"), Ok(None));
    let waited = tokio::time::timeout(PATIENCE, waiter).await;
    let waited = waited.expect("the waiter does not hang").expect("join");
    assert_eq!(waited.as_deref(), Ok("from b"));
    assert_eq!(b.stats().takeovers, 1);
    assert_eq!(b.stats().wait_timeouts, 0);
    // `a` kept nothing: its next read finds `b`'s value in Redis.
    assert!(!a.contains_local("k"));
    let now = a.optionally_get_with("k", gated_optional(&runs, &gate, None));
    assert_eq!(now.await, Ok(Some("from b".to_string())));
    assert_eq!(a.stats().l2_hits, 1);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}
