//! Single flight across OS processes: this test binary re-invoked as worker processes (the
//! `worker` test, which does nothing unless `WORKER_URL` is set) on a real `redis-server`.
//! 4 workers x 1000 tasks on one cold key: exactly one load. A leader killed (SIGKILL) while
//! loading: exactly one other process takes over.

#![allow(clippy::std_instead_of_core)] // a `std` test

mod support;

use std::{
    process::{Child, Command},
    time::{Duration, Instant},
};

use deferred_redis::{HybridCache, Utf8};
use redis::{AsyncCommands, Commands};
use support::server::RedisServer;

const WORKER_URL: &str = "DEFERRED_REDIS_WORKER_URL";
/// `dies` (a leader that loads until it is killed) or `takes-over`; unset: the 1000-task
/// worker.
const WORKER_ROLE: &str = "DEFERRED_REDIS_WORKER_ROLE";
const PROCESSES: usize = 4;
const TASKS: usize = 1000;
/// The bound on every wait in this test; a healthy run takes a fraction of a second.
const LIMIT: Duration = Duration::from_secs(30);

/// Waits (bounded) until the integer at `key` reaches `n`.
async fn wait_count(redis: &mut redis::aio::MultiplexedConnection, key: &str, n: i64) {
    let start = Instant::now();
    loop {
        let now: Option<i64> = redis.get(key).await.expect("read a test counter");
        if now.unwrap_or(0) >= n {
            return;
        }
        assert!(start.elapsed() < LIMIT, "{key} stayed below {n}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The worker's body: one cache, 1000 tasks on the key once every worker is ready.
async fn work(url: String) {
    let client = redis::Client::open(url).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();
    let cache: HybridCache<String, String, String, Utf8> =
        HybridCache::builder(client.clone(), "proc:", Utf8)
            .op_timeout(Duration::from_secs(2))
            .poll_interval(Duration::from_millis(20))
            .build()
            .unwrap();
    assert!(cache.backplane_ready(LIMIT).await);
    let _: i64 = redis.incr("test:ready", 1).await.unwrap();
    wait_count(&mut redis, "test:go", 1).await;

    // Tell the others when this process is waiting on someone else's lease.
    let watcher = {
        let (cache, mut redis) = (cache.clone(), redis.clone());
        tokio::spawn(async move {
            let start = Instant::now();
            while cache.stats().lease_waits == 0 && cache.stats().lease_wins == 0 {
                assert!(start.elapsed() < LIMIT);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            if cache.stats().lease_waits > 0 {
                let _: i64 = redis.incr("test:waiting", 1).await.unwrap();
            }
        })
    };
    let mut tasks = Vec::with_capacity(TASKS);
    for _ in 0..TASKS {
        let (cache, redis) = (cache.clone(), redis.clone());
        tasks.push(tokio::spawn(async move {
            cache
                .get_with("cold", move || async move {
                    let mut redis = redis;
                    let _: i64 = redis.incr("test:loads", 1).await.unwrap();
                    // The loader holds on until every other process waits on its lease,
                    // so the test shows waiting, not only reading a value already there.
                    wait_count(&mut redis, "test:waiting", PROCESSES as i64 - 1).await;
                    Ok("the value".to_string())
                })
                .await
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), Ok("the value".to_string()));
    }
    watcher.await.unwrap();
    let _: i64 = redis.incr("test:served", TASKS as i64).await.unwrap();
    let stats = cache.stats();
    println!(
        "worker {}: l1 loads {}, lease wins {}, lease waits {}, l2 hits {}, takeovers {}, l2 errors {}",
        std::process::id(),
        stats.l1.cache.loads_ok,
        stats.lease_wins,
        stats.lease_waits,
        stats.l2_hits,
        stats.takeovers,
        stats.l2_errors
    );
}

/// The lease in the leader-dies test: short, so the takeover comes soon.
const SHORT_LEASE: Duration = Duration::from_millis(400);

/// The worker of the leader-dies test: `dies` takes the lease and loads until killed;
/// `takes-over` waits on that lease, and loads when it expires.
async fn die_or_take_over(url: String, dies: bool) {
    let client = redis::Client::open(url).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();
    let cache: HybridCache<String, String, String, Utf8> =
        HybridCache::builder(client.clone(), "dies:", Utf8)
            .lease(SHORT_LEASE)
            .poll_interval(Duration::from_millis(20))
            .op_timeout(Duration::from_secs(2))
            .build()
            .unwrap();
    assert!(cache.backplane_ready(LIMIT).await);
    if !dies {
        // Tell the test when this process waits on the leader's lease.
        let (cache, mut redis) = (cache.clone(), redis.clone());
        tokio::spawn(async move {
            let start = Instant::now();
            while cache.stats().lease_waits == 0 {
                assert!(start.elapsed() < LIMIT);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let _: i64 = redis.incr("test:waiting", 1).await.unwrap();
        });
    }
    let mut loader_redis = redis.clone();
    let value = cache
        .get_with("cold", move || async move {
            let _: i64 = loader_redis.incr("test:loads", 1).await.unwrap();
            if dies {
                // Loads "forever" (bounded): the test kills this process meanwhile.
                tokio::time::sleep(LIMIT).await;
                return Err("the leader was not killed".to_string());
            }
            Ok("taken over".to_string())
        })
        .await;
    assert_eq!(value, Ok("taken over".to_string()));
    let stats = cache.stats();
    println!(
        "worker {}: lease waits {}, takeovers {}, l2 hits {}",
        std::process::id(),
        stats.lease_waits,
        stats.takeovers,
        stats.l2_hits
    );
    assert_eq!(stats.lease_waits, 1);
    let _: i64 = redis.incr("test:takeovers", stats.takeovers).await.unwrap();
}

/// Not a test of its own: the body of each worker process (see the module docs).
#[test]
fn worker() {
    let Ok(url) = std::env::var(WORKER_URL) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    match std::env::var(WORKER_ROLE).as_deref() {
        Ok("dies") => runtime.block_on(die_or_take_over(url, true)),
        Ok("takes-over") => runtime.block_on(die_or_take_over(url, false)),
        _ => runtime.block_on(work(url)),
    }
}

fn spawn_worker(server: &RedisServer, role: Option<&str>) -> Child {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args(["worker", "--exact", "--nocapture", "--test-threads=1"])
        .env(WORKER_URL, server.url());
    if let Some(role) = role {
        command.env(WORKER_ROLE, role);
    }
    command.spawn().expect("start a worker process")
}

/// Waits (bounded) until the integer at `key` is `n`, failing if `child` exits meanwhile.
fn wait_for(redis: &mut redis::Connection, key: &str, n: i64, child: &mut Child) {
    let start = Instant::now();
    loop {
        let now: Option<i64> = redis.get(key).unwrap();
        if now == Some(n) {
            return;
        }
        let exited = matches!(child.try_wait(), Ok(Some(_)));
        assert!(
            !exited && start.elapsed() < LIMIT,
            "waiting for {key} = {n}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn a_killed_leader_is_taken_over_by_exactly_one_process() {
    let server = RedisServer::start();
    let mut redis = server.connection();
    let mut leader = spawn_worker(&server, Some("dies"));
    // The leader holds the lease and is loading...
    wait_for(&mut redis, "test:loads", 1, &mut leader);
    let exists: bool = redis.exists("dies:l:cold").unwrap();
    assert!(exists, "the leader holds the lease");
    // ...while two more processes come for the key and wait on its lease; then the leader
    // is killed.
    let mut others = [
        spawn_worker(&server, Some("takes-over")),
        spawn_worker(&server, Some("takes-over")),
    ];
    wait_for(&mut redis, "test:waiting", 2, &mut leader);
    let killed_at = Instant::now();
    leader.kill().unwrap();
    let _ = leader.wait();
    let deadline = Instant::now() + LIMIT;
    let ok: Vec<bool> = others.iter_mut().map(|c| wait_child(c, deadline)).collect();
    let took = killed_at.elapsed();
    assert!(
        ok.iter().all(|&ok| ok),
        "both processes got the value: {ok:?}"
    );
    let loads: i64 = redis.get("test:loads").unwrap();
    let takeovers: i64 = redis.get("test:takeovers").unwrap();
    println!(
        "killed leader: {loads} loads in all, {takeovers} takeover, the others done {took:?} \
         after the kill (lease {SHORT_LEASE:?})"
    );
    assert_eq!(loads, 2, "the killed leader's load and exactly one more");
    assert_eq!(takeovers, 1, "exactly one process took over");
}

fn wait_child(child: &mut Child, deadline: Instant) -> bool {
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return status.success();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
    false
}

#[test]
fn four_processes_a_thousand_tasks_each_one_load() {
    let server = RedisServer::start();
    let started = Instant::now();
    let mut children: Vec<Child> = (0..PROCESSES)
        .map(|_| spawn_worker(&server, None))
        .collect();
    let mut redis = server.connection();
    let ready_by = Instant::now() + LIMIT;
    loop {
        let ready: Option<i64> = redis.get("test:ready").unwrap();
        if ready == Some(PROCESSES as i64) {
            break;
        }
        let failed = children
            .iter_mut()
            .any(|c| matches!(c.try_wait(), Ok(Some(_))));
        assert!(
            !failed && Instant::now() < ready_by,
            "a worker died or never got ready"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let _: () = redis.set("test:go", 1).unwrap();
    let deadline = Instant::now() + LIMIT;
    let ok: Vec<bool> = children
        .iter_mut()
        .map(|c| wait_child(c, deadline))
        .collect();
    assert!(
        ok.iter().all(|&ok| ok),
        "every worker exits successfully: {ok:?}"
    );
    let loads: i64 = redis.get("test:loads").unwrap();
    let served: i64 = redis.get("test:served").unwrap();
    let waiting: i64 = redis.get("test:waiting").unwrap();
    println!(
        "{PROCESSES} processes x {TASKS} tasks: {loads} load(s), {served} values served, \
         {waiting} processes waited on the lease, {:?} in all",
        started.elapsed()
    );
    assert_eq!(loads, 1, "exactly one load across the processes");
    assert_eq!(served, (PROCESSES * TASKS) as i64);
    assert_eq!(waiting, PROCESSES as i64 - 1);
}
