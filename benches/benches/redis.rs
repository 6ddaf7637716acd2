//! `redis`: what the hybrid tier costs against what it stands on, in the same run.
//!
//! * `redis/l2_hit`: an L1 miss served by Redis (`get_with` after
//!   `invalidate_local`, the drop outside the timing) against a bare `GET` of the same
//!   value key, on the same connection kind (a redis-rs `ConnectionManager` on the same
//!   Unix socket). Target: at most 1.1x. Two rows with no target split the cost:
//!   `get_pttl`, the tier's first round alone (`GET` and `PTTL` in one pipeline) on that
//!   connection, and `l1_miss_alone`, the L1's own miss and load (the plain expiring cache,
//!   a loader ready at once). Each timing loop runs in a spawned task, as a service's
//!   handler does (see `in_task`). The same target is also checked by a paired measurement
//!   (`l2_hit_paired`), robust to the VM's swings between criterion rows.
//! * `redis/l1_hit`: an L1 hit with the tier on against `deferred-expiring`'s own hit, built
//!   with the L1's settings (10 000 entries, a per-entry `Expiry`), both polled once by hand.
//!   Target: at most 1.05x.
//! * the stampede (a plain measurement, not criterion): 4 processes (this program
//!   re-invoked as workers) x 1000 tasks on one cold key, a 50 ms loader. Targets: 1 load,
//!   wall at most 60 ms from the start signal to the last process done. Its figures go to
//!   the extras file (`DEFERRED_BENCH_EXTRAS`) for `cargo xtask bench redis`.
//!
//! The program starts its own `redis-server` (Unix socket only, `--port 0`, in a temporary
//! directory, persistence off) and kills it at the end.

#![allow(clippy::std_instead_of_core)] // a `std` program

use std::{
    io::{BufRead, BufReader, Write},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use criterion::Criterion;
use deferred_benches::ready_now;
use deferred_expiring::{ExpiringCache, Expiry};
use deferred_redis::{HybridCache, Raw};
use deferred_test_support::redis::RedisServer;
use redis::aio::ConnectionManager;

const EXTRAS_VAR: &str = "DEFERRED_BENCH_EXTRAS";
/// Set in a worker process: the server's URL.
const WORKER_VAR: &str = "DEFERRED_REDIS_BENCH_WORKER";
/// Set in a worker process: the key prefix of this run.
const PREFIX_VAR: &str = "DEFERRED_REDIS_BENCH_PREFIX";
const PROCESSES: usize = 4;
const TASKS: usize = 1000;
const LOAD: Duration = Duration::from_millis(50);
/// A value of 64 bytes, the same for every workload.
const VALUE: [u8; 64] = [7; 64];
/// The bytes a bare `GET` of the tier's key reads: the value behind its 9-byte header (its
/// absolute expiry, deferred-redis's wire format).
const HEADER_LEN: usize = 9;
const STORED_LEN: usize = HEADER_LEN + VALUE.len();

/// The bench's `redis-server`, with the client the bench reaches it through.
struct Server(RedisServer);

impl Server {
    fn start() -> Server {
        Server(RedisServer::start("deferred-redis-bench"))
    }

    fn client(&self) -> redis::Client {
        redis::Client::open(self.0.url()).expect("a valid unix socket URL")
    }
}

type Cache = HybridCache<String, Vec<u8>, std::io::Error, Raw>;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// The L1's settings, for the plain cache: a per-entry TTL (here the same for all).
struct Fixed(Duration);

impl<V> Expiry<String, V> for Fixed {
    fn expire_after_create(&self, _: &String, _: &V, _: Duration) -> Option<Duration> {
        Some(self.0)
    }
}

/// Runs a timing loop as a spawned task, as a service's handler runs: a wake from the
/// runtime's own thread is then a push on its run queue. (A `block_on` root future is
/// woken through the driver instead, an eventfd write and an `epoll_wait` per wake, which
/// would weigh every wake of the tier's read path, not Redis.)
async fn in_task<F>(timing: F) -> Duration
where
    F: std::future::Future<Output = Duration> + Send + 'static,
{
    in_task_with(timing).await
}

/// [`in_task`] for any output.
async fn in_task_with<F>(work: F) -> F::Output
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(work).await.expect("the timing task")
}

/// The plain expiring cache with the L1's value and error types.
type Plain = ExpiringCache<String, Vec<u8>, std::io::Error>;

/// Times `read` one call at a time (`iter_custom`) in a spawned task (`in_task`), each on a
/// clone of `target` (a cheap handle) made outside the timing, after `before`: the L1 drop
/// before each read must come right before it, where criterion's batched setup would run all
/// the drops of a batch first. Every row of `redis/l2_hit` is timed this same way.
fn time_reads<T, R, Fut>(
    b: &mut criterion::Bencher<'_>,
    rt: &tokio::runtime::Runtime,
    target: &T,
    before: fn(&T) -> R,
    read: impl Fn(T) -> Fut + Clone + Send + 'static,
) where
    T: Clone + Send + 'static,
    R: 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    b.to_async(rt).iter_custom(|iters| {
        let (target, read) = (target.clone(), read.clone());
        in_task(async move {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                before(&target);
                let handle = target.clone();
                let start = Instant::now();
                read(handle).await;
                total += start.elapsed();
            }
            total
        })
    });
}

fn l2_hit(c: &mut Criterion, server: &Server, rt: &tokio::runtime::Runtime) {
    let cache: Cache = {
        let _enter = rt.enter();
        HybridCache::builder(server.client(), "bench-l2:", Raw)
            .build()
            .expect("build")
    };
    let mut bare = rt
        .block_on(server.client().get_connection_manager())
        .expect("connect");
    rt.block_on(async {
        // The first subscription drops the L1: wait for it before filling the L1.
        assert!(cache.backplane_ready(Duration::from_secs(5)).await);
        cache.insert("k", VALUE.to_vec()).await.expect("insert");
        let got = cache
            .get_with("k", || async { Ok(Vec::new()) })
            .await
            .expect("read");
        assert_eq!(got, VALUE);
        let bytes: Vec<u8> = redis::cmd("GET")
            .arg("bench-l2:v:k")
            .query_async(&mut bare)
            .await
            .expect("GET");
        assert_eq!(
            bytes[HEADER_LEN..],
            VALUE,
            "the anchor reads the same bytes"
        );
    });
    let mut group = c.benchmark_group("redis/l2_hit");
    group.bench_function("deferred", |b| {
        let read = |cache: Cache| async move {
            let v = cache.get_with("k", || async { Ok(Vec::new()) }).await;
            assert_eq!(v.expect("read").len(), VALUE.len(), "an L2 hit, not a load");
        };
        time_reads(b, rt, &cache, |cache| cache.invalidate_local("k"), read);
    });
    group.bench_function("redis_get", |b| {
        let read = |mut conn: ConnectionManager| async move {
            let v: Vec<u8> = redis::cmd("GET")
                .arg("bench-l2:v:k")
                .query_async(&mut conn)
                .await
                .expect("GET");
            assert_eq!(v.len(), STORED_LEN);
        };
        time_reads(b, rt, &bare, |_| (), read);
    });
    // Not an anchor with a target: what the tier's first round cost before each value carried
    // its expiry in a header (`GET` and `PTTL` of the value in one pipeline, on the same
    // connection); since then that round is the bare `GET` above.
    group.bench_function("get_pttl", |b| {
        let read = |mut conn: ConnectionManager| async move {
            let (v, ttl): (Vec<u8>, i64) = redis::pipe()
                .get("bench-l2:v:k")
                .pttl("bench-l2:v:k")
                .query_async(&mut conn)
                .await
                .expect("GET and PTTL");
            assert_eq!((v.len(), ttl > 0), (STORED_LEN, true));
        };
        time_reads(b, rt, &bare, |_| (), read);
    });
    // Not an anchor either: the L1's own miss (the plain expiring cache with the L1's
    // settings, a loader that is ready at once), the other part of an L2 hit's cost.
    let plain: Plain = ExpiringCache::builder()
        .max_capacity(10_000)
        .expire_after(Fixed(Duration::from_secs(300)))
        .build();
    group.bench_function("l1_miss_alone", |b| {
        let read = |plain: Plain| async move {
            let v = plain
                .get_with("k".to_string(), || async { Ok(VALUE.to_vec()) })
                .await;
            assert_eq!(v.expect("a load").len(), VALUE.len());
        };
        time_reads(b, rt, &plain, |plain| plain.invalidate("k"), read);
    });
    group.finish();
    let stats = cache.stats();
    println!(
        "redis/l2_hit: deferred made {} L2 hits, {} loads fell back to the loader",
        stats.l2_hits, stats.local_fallbacks
    );
}

/// The L1 hit's two caches, each holding `k`: the tier's, and the plain expiring cache with
/// the L1's settings.
fn l1_caches(server: &Server, rt: &tokio::runtime::Runtime) -> (Cache, Plain) {
    let ttl = Duration::from_secs(300);
    let cache: Cache = {
        let _enter = rt.enter();
        HybridCache::builder(server.client(), "bench-l1:", Raw)
            .time_to_live(ttl)
            .l1_max_capacity(10_000)
            .build()
            .expect("build")
    };
    let plain: Plain = ExpiringCache::builder()
        .max_capacity(10_000)
        .expire_after(Fixed(ttl))
        .build();
    rt.block_on(async {
        assert!(cache.backplane_ready(Duration::from_secs(5)).await);
        cache.insert("k", VALUE.to_vec()).await.expect("insert");
    });
    plain.insert("k".to_string(), VALUE.to_vec());
    assert!(cache.contains_local("k"));
    (cache, plain)
}

/// Rounds of the paired L1 hit, and the hits of each cache per round.
const L1_ROUNDS: usize = 400;
const L1_BATCH: u32 = 2_000;

/// The L1 hit measured as the L2 hit is in `l2_hit_paired`: each round times a batch of
/// hits on each cache, one batch beside the other (alternating which goes first), so that
/// both see the same state of the machine. Its figures (medians of the rounds' batches, in
/// ns per batch) as extras lines.
fn l1_hit_paired(server: &Server, rt: &tokio::runtime::Runtime) -> String {
    let (cache, plain) = l1_caches(server, rt);
    let (mut ours, mut theirs) = (Vec::with_capacity(L1_ROUNDS), Vec::new());
    for round in 0..L1_ROUNDS {
        for tier_now in [round % 2 == 0, round % 2 == 1] {
            let start = Instant::now();
            for _ in 0..L1_BATCH {
                let got = if tier_now {
                    ready_now(cache.get_with("k", || async { Ok(Vec::new()) }))
                } else {
                    ready_now(plain.get_with("k".to_string(), || async { Ok(Vec::new()) }))
                };
                std::hint::black_box(got.expect("a hit"));
            }
            let batch = start.elapsed();
            if tier_now {
                ours.push(batch);
            } else {
                theirs.push(batch);
            }
        }
    }
    ours.sort_unstable();
    theirs.sort_unstable();
    let (ours, theirs) = (ours[L1_ROUNDS / 2], theirs[L1_ROUNDS / 2]);
    println!(
        "redis/l1_hit paired: {L1_ROUNDS} rounds of {L1_BATCH} hits on each cache: medians \
         {:.2} ns / {:.2} ns a hit = {:.2}x; target <= 1.05x",
        ours.as_secs_f64() * 1e9 / f64::from(L1_BATCH),
        theirs.as_secs_f64() * 1e9 / f64::from(L1_BATCH),
        ours.as_secs_f64() / theirs.as_secs_f64()
    );
    format!(
        "l1_paired_deferred_ns={}\nl1_paired_expiring_ns={}\n",
        ours.as_nanos(),
        theirs.as_nanos()
    )
}

fn l1_hit(c: &mut Criterion, server: &Server, rt: &tokio::runtime::Runtime) {
    let (cache, plain) = l1_caches(server, rt);
    let mut group = c.benchmark_group("redis/l1_hit");
    group.bench_function("deferred", |b| {
        b.iter(|| ready_now(cache.get_with("k", || async { Ok(Vec::new()) })).expect("an L1 hit"));
    });
    group.bench_function("expiring", |b| {
        b.iter(|| {
            ready_now(plain.get_with("k".to_string(), || async { Ok(Vec::new()) })).expect("a hit")
        });
    });
    group.finish();
}

/// The worker's side of the stampede: connect, say `ready`, wait for `go` on stdin, run
/// 1000 tasks on the cold key, print `done <loads> <nanos>`.
fn worker(url: &str) {
    let prefix = std::env::var(PREFIX_VAR).expect("the prefix");
    let rt = runtime();
    rt.block_on(async {
        let client = redis::Client::open(url).expect("url");
        let cache: Cache = HybridCache::builder(client, prefix, Raw)
            .build()
            .expect("build");
        // Connected and subscribed before the start, as a running service would be.
        cache
            .get_with("warm", || async { Ok(b"w".to_vec()) })
            .await
            .expect("warm-up");
        assert!(cache.backplane_ready(Duration::from_secs(5)).await);
        println!("ready");
        std::io::stdout().flush().expect("stdout");
        let go = tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).map(|_| line)
        })
        .await
        .expect("join")
        .expect("stdin");
        assert_eq!(go.trim(), "go");
        let start = Instant::now();
        let loads = Arc::new(AtomicU64::new(0));
        // When the first caller of this process got its value, from the start.
        let first = Arc::new(AtomicU64::new(u64::MAX));
        let tasks: Vec<_> = (0..TASKS)
            .map(|_| {
                let (cache, loads, first) = (cache.clone(), Arc::clone(&loads), Arc::clone(&first));
                tokio::spawn(async move {
                    let read = cache
                        .get_with("cold", move || async move {
                            loads.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(LOAD).await;
                            Ok(VALUE.to_vec())
                        })
                        .await
                        .map(|v| v.len());
                    let at = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
                    first.fetch_min(at, Ordering::SeqCst);
                    read
                })
            })
            .collect();
        for task in tasks {
            let len = task.await.expect("a task").expect("a value");
            assert_eq!(len, VALUE.len());
        }
        let nanos = start.elapsed().as_nanos();
        println!(
            "done {} {nanos} {}",
            loads.load(Ordering::SeqCst),
            first.load(Ordering::SeqCst)
        );
        std::io::stdout().flush().expect("stdout");
    });
}

/// The stampede, from the parent: its figures as extras lines.
fn stampede(server: &Server) -> String {
    let exe = std::env::current_exe().expect("this program's path");
    let prefix = format!("bench-stampede-{}:", std::process::id());
    let mut workers: Vec<_> = (0..PROCESSES)
        .map(|_| {
            let mut child = Command::new(&exe)
                .env(WORKER_VAR, server.0.url())
                .env(PREFIX_VAR, &prefix)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("spawn a worker");
            let stdout = BufReader::new(child.stdout.take().expect("piped"));
            (child, stdout)
        })
        .collect();
    let mut line = String::new();
    for (_, out) in &mut workers {
        line.clear();
        out.read_line(&mut line).expect("a worker's line");
        assert_eq!(line.trim(), "ready", "a worker failed to start");
    }
    let go = Instant::now();
    for (child, _) in &mut workers {
        let stdin = child.stdin.as_mut().expect("piped");
        stdin
            .write_all(b"go\n")
            .and_then(|()| stdin.flush())
            .expect("go");
    }
    let (mut loads, mut slowest) = (0_u64, 0_u128);
    let mut each = Vec::new();
    for (_, out) in &mut workers {
        line.clear();
        out.read_line(&mut line).expect("a worker's line");
        let mut words = line.split_whitespace();
        assert_eq!(words.next(), Some("done"), "a worker failed: {line:?}");
        loads += words
            .next()
            .and_then(|w| w.parse::<u64>().ok())
            .expect("loads");
        let own = words
            .next()
            .and_then(|w| w.parse::<u128>().ok())
            .expect("nanos");
        slowest = slowest.max(own);
        let first = words
            .next()
            .and_then(|w| w.parse::<u128>().ok())
            .expect("first");
        each.push(format!("{:.1}/{:.1}", first as f64 / 1e6, own as f64 / 1e6));
    }
    let wall = go.elapsed();
    for (mut child, _) in workers {
        let status = child.wait().expect("wait for a worker");
        assert!(status.success(), "a worker exited with {status}");
    }
    println!(
        "redis/stampede: {PROCESSES} processes x {TASKS} tasks, one cold key, {LOAD:?} loader: \
         {loads} load(s), wall {:.1} ms (each worker's first value / last, ms: {}); \
         targets 1 load, <= 60 ms",
        wall.as_secs_f64() * 1e3,
        each.join(", ")
    );
    format!(
        "stampede_loads={loads}\nstampede_wall_ns={}\nstampede_worker_max_ns={slowest}\n\
         stampede_processes={PROCESSES}\nstampede_tasks={TASKS}\n",
        wall.as_nanos()
    )
}

/// How many L2 hits, each beside one bare `GET`, the paired measurement times.
const PAIRS: usize = 20_000;

/// The L2 hit measured a second way, robust to the VM's swings: each round times one L2 hit
/// and one bare `GET` (alternating which goes first), so both see the same state of the
/// machine (where the scheduler put this thread and `redis-server`, which moves a round
/// trip between about 15 and 50 µs here from one criterion row to the next). Its figures
/// (medians of the `PAIRS` rounds) as extras lines.
fn l2_hit_paired(server: &Server, rt: &tokio::runtime::Runtime) -> String {
    let cache: Cache = {
        let _enter = rt.enter();
        HybridCache::builder(server.client(), "bench-l2p:", Raw)
            .build()
            .expect("build")
    };
    let bare = rt
        .block_on(server.client().get_connection_manager())
        .expect("connect");
    let (mut ours, mut gets) = rt.block_on(in_task_with(async move {
        let mut bare = bare;
        assert!(cache.backplane_ready(Duration::from_secs(5)).await);
        cache.insert("k", VALUE.to_vec()).await.expect("insert");
        let (mut ours, mut gets) = (Vec::with_capacity(PAIRS), Vec::with_capacity(PAIRS));
        for round in 0..PAIRS {
            for get_now in [round % 2 == 1, round % 2 == 0] {
                if get_now {
                    let start = Instant::now();
                    let v: Vec<u8> = redis::cmd("GET")
                        .arg("bench-l2p:v:k")
                        .query_async(&mut bare)
                        .await
                        .expect("GET");
                    gets.push(start.elapsed());
                    assert_eq!(v.len(), STORED_LEN);
                } else {
                    cache.invalidate_local("k");
                    let start = Instant::now();
                    let v = cache
                        .get_with("k", || async { Ok(Vec::new()) })
                        .await
                        .expect("read");
                    ours.push(start.elapsed());
                    assert_eq!(v.len(), VALUE.len(), "an L2 hit, not a load");
                }
            }
        }
        assert_eq!(cache.stats().local_fallbacks, 0);
        (ours, gets)
    }));
    ours.sort_unstable();
    gets.sort_unstable();
    let (ours, gets) = (ours[PAIRS / 2], gets[PAIRS / 2]);
    println!(
        "redis/l2_hit paired: {PAIRS} rounds of one L2 hit and one GET: medians {:.2} µs / \
         {:.2} µs = {:.2}x; target <= 1.1x",
        ours.as_secs_f64() * 1e6,
        gets.as_secs_f64() * 1e6,
        ours.as_secs_f64() / gets.as_secs_f64()
    );
    format!(
        "l2_paired_deferred_ns={}\nl2_paired_get_ns={}\n",
        ours.as_nanos(),
        gets.as_nanos()
    )
}

fn main() {
    if let Ok(url) = std::env::var(WORKER_VAR) {
        worker(&url);
        return;
    }
    let server = Server::start();
    let rt = runtime();
    let mut extras = stampede(&server);
    extras.push_str(&l2_hit_paired(&server, &rt));
    extras.push_str(&l1_hit_paired(&server, &rt));
    if let Some(path) = std::env::var_os(EXTRAS_VAR) {
        std::fs::write(&path, &extras).unwrap_or_else(|e| {
            panic!(
                "could not write {}: {e}",
                std::path::Path::new(&path).display()
            )
        });
    }
    let mut c = deferred_benches::criterion_config().configure_from_args();
    l2_hit(&mut c, &server, &rt);
    l1_hit(&mut c, &server, &rt);
    c.final_summary();
}
