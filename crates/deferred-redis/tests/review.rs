//! Findings of a review of the protocol, each a test that failed before its fix (see the
//! commit that added it): huge durations, invalidate_all and this cache's own L1, nested
//! prefixes, fenced values kept in the loader's L1, a lease taken by a cancelled probe, and an
//! insert that did not encode.

#![allow(clippy::std_instead_of_core)] // a `std` test

mod support;

use std::{
    future::Future,
    pin::{pin, Pin},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use deferred_redis::{HybridCache, LoadError, Utf8};
use redis::Commands;
use support::{eventually, framed, read_value, server::RedisServer};
use tokio::{sync::Semaphore, task::JoinHandle};

type Strings = HybridCache<String, String, String, Utf8>;

/// A bound for waits on conditions that real time decides; never reached when all is well.
const PATIENCE: Duration = Duration::from_secs(5);

/// A cache whose round trips outlast a short pause of the server, and whose backplane does
/// not ping during one (a failed ping would drop the L1 and hide what a test looks at).
fn cache(server: &RedisServer, prefix: &str) -> Strings {
    HybridCache::builder(server.client(), prefix, Utf8)
        .lease(Duration::from_secs(30))
        .op_timeout(Duration::from_secs(5))
        .poll_interval(Duration::from_millis(20))
        .backplane_ping(Duration::from_secs(60))
        .build()
        .expect("build inside a runtime")
}

fn ok(
    value: &'static str,
) -> impl FnOnce() -> Pin<Box<dyn Future<Output = Result<String, String>> + Send>> {
    move || Box::pin(async move { Ok(value.to_string()) })
}

/// Loaders that count their runs and then wait for the gate to open before answering.
struct Gated {
    runs: Arc<AtomicUsize>,
    gate: Arc<Semaphore>,
}

impl Gated {
    fn new() -> Self {
        Gated {
            runs: Arc::new(AtomicUsize::new(0)),
            gate: Arc::new(Semaphore::new(0)),
        }
    }

    /// A loader that counts its run and then waits for the gate before answering `value`.
    fn loader(
        &self,
        value: &'static str,
    ) -> impl FnOnce() -> Pin<Box<dyn Future<Output = Result<String, String>> + Send>> {
        let (runs, gate) = (Arc::clone(&self.runs), Arc::clone(&self.gate));
        move || {
            Box::pin(async move {
                runs.fetch_add(1, Ordering::SeqCst);
                let _permit = gate.acquire().await.map_err(|e| e.to_string())?;
                Ok(value.to_string())
            })
        }
    }

    /// How many of the loaders ran.
    fn runs(&self) -> usize {
        self.runs.load(Ordering::SeqCst)
    }

    /// Waits until one loader runs (and waits at the gate).
    async fn first_running(&self) {
        assert!(eventually(PATIENCE, || self.runs() == 1).await);
    }

    /// Lets `n` loaders through.
    fn open(&self, n: usize) {
        self.gate.add_permits(n);
    }

    /// `cache.get_with("k", ..)` on a task of its own, with a loader answering `value`.
    fn spawn_get(
        &self,
        cache: &Strings,
        value: &'static str,
    ) -> JoinHandle<Result<String, LoadError<String>>> {
        let (cache, loader) = (cache.clone(), self.loader(value));
        tokio::spawn(async move { cache.get_with("k", loader).await })
    }
}

/// Kills every pub/sub connection (`CLIENT KILL TYPE pubsub`) and waits until `cache`'s
/// backplane has seen its subscription go.
async fn cut_backplane(raw: &mut redis::Connection, cache: &Strings) {
    let _: redis::Value = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query(raw)
        .unwrap();
    let mut down = false;
    for _ in 0..5000 {
        if !cache.backplane_ready(Duration::ZERO).await {
            down = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(down, "the subscription was lost");
}

/// Cuts `a`'s backplane, inserts "new" at "k" through `b` while `a` is not subscribed (so
/// that its announcement is lost to `a`), and waits until `a` has subscribed again.
async fn insert_while_unsubscribed(raw: &mut redis::Connection, a: &Strings, b: &Strings) {
    cut_backplane(raw, a).await;
    b.insert("k", "new".to_string()).await.unwrap();
    assert!(eventually(PATIENCE, || a.stats().backplane_subscriptions == 2).await);
}

/// `CLIENT PAUSE 10000 WRITE`: reads go on; writes (and scripts that may write) wait, and
/// then run in the order they came, at [`unpause`].
fn pause_writes(raw: &mut redis::Connection) {
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(10_000)
        .arg("WRITE")
        .query(raw)
        .unwrap();
}

/// `CLIENT UNPAUSE`.
fn unpause(raw: &mut redis::Connection) {
    let _: () = redis::cmd("CLIENT").arg("UNPAUSE").query(raw).unwrap();
}

/// Polls `future` exactly once (it must not finish: the server is paused).
async fn poll_once<F: Future>(future: Pin<&mut F>) {
    let mut future = future;
    tokio::select! {
        biased;
        _ = &mut future => panic!("finished while the server was paused"),
        () = std::future::ready(()) => {}
    }
}

/// Finding 1: `Duration::MAX` (a natural "no bound") as `max_wait`, `lease`,
/// `time_to_live` or `backplane_ping` panicked (`Instant + Duration` overflow) on every
/// L1 miss, or made every Redis write fail (`PX` out of Redis' range).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_1_unbounded_durations_neither_panic_nor_fail_redis() {
    let server = RedisServer::start();
    let a: Strings = HybridCache::builder(server.client(), "huge:", Utf8)
        .max_wait(Duration::MAX)
        .lease(Duration::MAX)
        .time_to_live(Duration::MAX)
        .backplane_ping(Duration::MAX)
        .op_timeout(Duration::from_secs(5))
        .build()
        .expect("build");
    assert!(
        a.backplane_ready(PATIENCE).await,
        "the backplane task is alive"
    );
    assert_eq!(a.get_with("k", ok("v")).await, Ok("v".to_string()));
    a.insert("j", "w".to_string())
        .await
        .expect("insert reaches Redis");
    let stats = a.stats();
    assert_eq!((stats.l2_writes, stats.l2_errors), (1, 0));
    let mut raw = server.connection();
    let (k, j): (Option<String>, Option<String>) = (
        read_value(&mut raw, "huge:v:k"),
        read_value(&mut raw, "huge:v:j"),
    );
    assert_eq!((k.as_deref(), j.as_deref()), (Some("v"), Some("w")));
}

/// Finding 2: `invalidate_all` clears this L1 first and then deletes in Redis over several
/// round trips, and ignores its own announcement: a read of this cache in between copied a
/// value from before the invalidation into the L1, where it stayed after `Ok`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_2_invalidate_all_leaves_no_older_value_in_its_own_l1() {
    let server = RedisServer::start();
    let a = cache(&server, "all:");
    assert!(a.backplane_ready(PATIENCE).await);
    assert_eq!(a.get_with("k", ok("old")).await, Ok("old".to_string()));
    server.pause();
    let mut clear = pin!(a.invalidate_all());
    poll_once(clear.as_mut()).await; // L1 cleared, SCAN sent
    assert!(!a.contains_local("k"));
    let mut read = pin!(a.get_with("k", ok("loaded")));
    poll_once(read.as_mut()).await; // an L1 miss: its read of Redis sent after the SCAN
    server.resume();
    let (cleared, _concurrent) = tokio::join!(clear, read);
    cleared.expect("invalidate_all reached Redis");
    // "new" as a rule; "loaded" if the concurrent read reached Redis only after the deletes
    // (then it loaded, legitimately): never the value from before.
    assert_ne!(
        a.get_with("k", ok("new")).await,
        Ok("old".to_string()),
        "a read that starts after invalidate_all returned sees no value from before it"
    );
}

/// Finding 3: `invalidate_all` scanned `{prefix}*`, which also matches the keys of every
/// cache whose prefix starts with this one's (`app:` and `app:users:`, `users` and
/// `users2`): it deleted their values and leases too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_3_invalidate_all_spares_caches_whose_prefix_extends_this_one() {
    let server = RedisServer::start();
    let app = cache(&server, "app:");
    let users = cache(&server, "app:users:");
    let plain = cache(&server, "users");
    let plain2 = cache(&server, "users2");
    app.insert("x", "1".to_string()).await.unwrap();
    users.insert("7", "Ada".to_string()).await.unwrap();
    plain.insert("x", "2".to_string()).await.unwrap();
    plain2.insert("7", "Bob".to_string()).await.unwrap();
    app.invalidate_all().await.unwrap();
    plain.invalidate_all().await.unwrap();
    let mut raw = server.connection();
    let got: Vec<Option<String>> = ["app:v:x", "app:users:v:7", "usersv:x", "users2v:7"]
        .iter()
        .map(|key| read_value(&mut raw, key))
        .collect();
    assert_eq!(
        got,
        [None, Some("Ada".to_string()), None, Some("Bob".to_string())],
        "invalidate_all deletes only its own prefix's keys"
    );
}

/// Checked sound (no fix needed): glob characters in a prefix are escaped for `SCAN MATCH`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn glob_characters_in_a_prefix_match_only_themselves() {
    let server = RedisServer::start();
    let (glob, plain) = (cache(&server, "g[1]*?\\:"), cache(&server, "g1x\\:"));
    glob.insert("k", "a".to_string()).await.unwrap();
    plain.insert("k", "b".to_string()).await.unwrap();
    glob.invalidate_all().await.unwrap();
    let mut raw = server.connection();
    let got: (Option<String>, Option<String>) = (
        read_value(&mut raw, "g[1]*?\\:v:k"),
        read_value(&mut raw, "g1x\\:v:k"),
    );
    assert_eq!(got, (None, Some("b".to_string())));
}

/// Finding 4: a load whose COMMIT was fenced (an `insert` elsewhere deleted its lease:
/// writes win) still left its value in its own L1; only the backplane's message about the
/// insert removed it. Without the backplane, or with the message lost to a resubscription
/// during the load, the loser's value stayed in the L1 over the insert that won.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_4_a_fenced_value_does_not_stay_in_the_loaders_l1() {
    let server = RedisServer::start();
    let a: Strings = HybridCache::builder(server.client(), "wins:", Utf8)
        .backplane(false)
        .op_timeout(Duration::from_secs(5))
        .build()
        .expect("build");
    let b = cache(&server, "wins:");
    let gated = Gated::new();
    let load = gated.spawn_get(&a, "old");
    gated.first_running().await;
    b.insert("k", "new".to_string()).await.unwrap();
    gated.open(1);
    assert_eq!(
        load.await.unwrap(),
        Ok("old".to_string()),
        "its callers get its value"
    );
    assert_eq!(a.stats().fenced_writes, 1);
    assert_eq!(
        a.get_with("k", ok("loaded")).await,
        Ok("new".to_string()),
        "the insert won in Redis; the loader's L1 keeps no value over it"
    );
}

/// Finding 4 across a resubscription: the backplane is cut while the load runs, the insert
/// elsewhere is announced while this cache is not subscribed, and the resubscription's L1
/// purge skips loads in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_4_a_resubscription_during_a_fenced_load_keeps_no_stale_value() {
    let server = RedisServer::start();
    let (a, b) = (cache(&server, "resub:"), cache(&server, "resub:"));
    assert!(a.backplane_ready(PATIENCE).await);
    let gated = Gated::new();
    let load = gated.spawn_get(&a, "old");
    gated.first_running().await;
    insert_while_unsubscribed(&mut server.connection(), &a, &b).await;
    gated.open(1);
    assert_eq!(load.await.unwrap(), Ok("old".to_string()));
    assert_eq!(
        a.get_with("k", ok("loaded")).await,
        Ok("new".to_string()),
        "the insert that won is what this cache reads next"
    );
}

/// Finding 5: a load dropped by its last caller while its `GET_OR_LEASE` was in flight
/// left the lease that script took in Redis until it expired (`lease`, here 30 s), so
/// every other process waited that long: the release on drop covered only the loader.
/// Ordered with `CLIENT PAUSE WRITE`: the load's first round (a plain read) is answered,
/// its lease script waits on the pause, and the load is dropped then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_5_a_load_dropped_during_its_lease_probe_hands_the_lease_back() {
    let server = RedisServer::start();
    let a = cache(&server, "probe:");
    // Connected, and the lease script loaded (so GET_OR_LEASE is one EVALSHA).
    assert_eq!(a.get_with("warm", ok("w")).await, Ok("w".to_string()));
    let mut raw = server.connection();
    pause_writes(&mut raw);
    {
        let mut read = pin!(a.get_with("k", ok("never")));
        tokio::select! {
            _ = read.as_mut() => panic!("a load cannot end while its lease script waits"),
            sent = eventually(PATIENCE, || blocked_clients(&mut raw) == 1) => {
                assert!(sent, "GET_OR_LEASE sent, and waiting on the pause");
            }
        }
    } // dropped: its answer is never read
    unpause(&mut raw);
    assert!(
        eventually(PATIENCE, || !raw.exists::<_, bool>("probe:l:k").unwrap()).await,
        "the lease taken for a load nobody waits for any more is handed back"
    );
}

/// `INFO clients`' `blocked_clients`: clients whose command waits (here: on `CLIENT PAUSE`).
fn blocked_clients(raw: &mut redis::Connection) -> usize {
    let info: String = redis::cmd("INFO").arg("clients").query(raw).unwrap();
    info.lines()
        .find_map(|line| line.strip_prefix("blocked_clients:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// Finding 6: a load in flight elsewhere could overwrite `invalidate_all`. Its COMMIT landing
/// between the SCAN (which found only its lease) and the DEL wrote its value, from before the
/// invalidation, where nothing deleted it: it outlived the `Ok`, in Redis and so in every L1.
/// `invalidate` fences such a load (it deletes the lease); `invalidate_all` did not.
/// Ordered with `CLIENT PAUSE WRITE`: reads (SCAN) go on, writes wait and then run in the
/// order they came (COMMIT, then DEL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_6_a_load_in_flight_cannot_overwrite_invalidate_all() {
    let server = RedisServer::start();
    let (a, b) = (cache(&server, "scan:"), cache(&server, "scan:"));
    assert!(a.backplane_ready(PATIENCE).await && b.backplane_ready(PATIENCE).await);
    // Scripts loaded on B's connection (the COMMIT below is then one EVALSHA).
    assert_eq!(b.get_with("warm", ok("w")).await, Ok("w".to_string()));
    let gated = Gated::new();
    let load = gated.spawn_get(&b, "before");
    gated.first_running().await;
    let mut raw = server.connection();
    pause_writes(&mut raw);
    gated.open(1); // B's COMMIT waits on the pause
    assert!(eventually(PATIENCE, || blocked_clients(&mut raw) == 1).await);
    let clear = {
        let a = a.clone();
        tokio::spawn(async move { a.invalidate_all().await })
    };
    // A's SCAN ran (it found B's lease); its DEL waits behind B's COMMIT.
    assert!(eventually(PATIENCE, || blocked_clients(&mut raw) == 2).await);
    unpause(&mut raw);
    clear.await.unwrap().expect("invalidate_all reached Redis");
    assert_eq!(load.await.unwrap(), Ok("before".to_string()));
    let left = read_value(&mut raw, "scan:v:k");
    assert_eq!(
        left, None,
        "no value from before invalidate_all outlives it in Redis"
    );
    assert_eq!(a.get_with("k", ok("after")).await, Ok("after".to_string()));
}

/// Finding 6, the fence itself: `invalidate_all` begins (its first write waits on the
/// pause), then the load's COMMIT comes; the COMMIT runs after the new generation and is
/// refused, although its lease is still in place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_6_a_commit_after_invalidate_all_began_is_refused() {
    let server = RedisServer::start();
    let (a, b) = (cache(&server, "gen:"), cache(&server, "gen:"));
    assert!(a.backplane_ready(PATIENCE).await && b.backplane_ready(PATIENCE).await);
    assert_eq!(b.get_with("warm", ok("w")).await, Ok("w".to_string()));
    let gated = Gated::new();
    let load = gated.spawn_get(&b, "before");
    gated.first_running().await;
    let mut raw = server.connection();
    pause_writes(&mut raw);
    let clear = {
        let a = a.clone();
        tokio::spawn(async move { a.invalidate_all().await })
    };
    assert!(eventually(PATIENCE, || blocked_clients(&mut raw) == 1).await);
    gated.open(1);
    assert!(eventually(PATIENCE, || blocked_clients(&mut raw) == 2).await);
    unpause(&mut raw);
    clear.await.unwrap().expect("invalidate_all reached Redis");
    assert_eq!(load.await.unwrap(), Ok("before".to_string()));
    assert_eq!((b.stats().fenced_writes, b.stats().l2_writes), (1, 1));
    let left: (Option<String>, bool) = (
        read_value(&mut raw, "gen:v:k"),
        raw.exists("gen:l:k").unwrap(),
    );
    assert_eq!(
        left,
        (None, false),
        "no value written, and the lease given up"
    );
}

/// Finding 8: a `GET_OR_LEASE` that ran past `op_timeout` (a paused, slow or partitioned
/// server) fell back to the loader here, and when Redis got to the script later it took the
/// lease, for nobody: every other process waited the whole lease (here 30 s) for a value
/// that was never coming. Finding 5's cancellation, reached through the timeout. The
/// script is held by `CLIENT PAUSE WRITE` (the load's plain read before it is answered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_8_a_lease_probe_that_timed_out_hands_the_lease_back() {
    let server = RedisServer::start();
    let a: Strings = HybridCache::builder(server.client(), "late:", Utf8)
        .lease(Duration::from_secs(30))
        .op_timeout(Duration::from_millis(200))
        .backplane_ping(Duration::from_secs(60))
        .build()
        .expect("build");
    assert_eq!(a.get_with("warm", ok("w")).await, Ok("w".to_string()));
    let mut raw = server.connection();
    pause_writes(&mut raw);
    assert_eq!(a.get_with("k", ok("local")).await, Ok("local".to_string()));
    assert_eq!((a.stats().local_fallbacks, a.stats().l2_errors), (1, 1));
    assert_eq!(
        blocked_clients(&mut raw),
        1,
        "the timed-out GET_OR_LEASE still waits"
    );
    unpause(&mut raw);
    assert!(
        eventually(PATIENCE, || !raw.exists::<_, bool>("late:l:k").unwrap()).await,
        "a lease taken by a probe that timed out is handed back"
    );
}

/// Finding 9: a value key of another type (a list where a string belongs: written by hand,
/// or by another program sharing the prefix) made `GET_OR_LEASE` fail with WRONGTYPE on
/// every read: each read cost a failed round trip and ran its loader locally, forever,
/// and the key was never replaced. Now it is a value that does not decode: a miss whose
/// loaded value replaces it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_9_a_value_key_of_another_type_is_a_miss_and_replaced() {
    let server = RedisServer::start();
    let a = cache(&server, "type:");
    let mut raw = server.connection();
    let _: i64 = raw.lpush("type:v:k", "x").unwrap();
    assert_eq!(a.get_with("k", ok("v")).await, Ok("v".to_string()));
    let stats = a.stats();
    assert_eq!(
        (stats.l2_errors, stats.decode_errors, stats.l2_writes),
        (0, 1, 1)
    );
    let stored = read_value(&mut raw, "type:v:k");
    assert_eq!(
        stored.as_deref(),
        Some("v"),
        "the loaded value replaced the foreign key"
    );
}

/// Finding 10: a value that does not decode was a miss without single flight: the first
/// load took the lease to replace it, and every other process that read the bad bytes
/// meanwhile found the lease taken and ran its own loader at once instead of waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_10_a_value_that_does_not_decode_is_loaded_once_across_caches() {
    let server = RedisServer::start();
    let mut raw = server.connection();
    let _: () = raw
        .set("bad:v:k", framed(&[0xff, 0xfe], Duration::from_secs(60)))
        .unwrap();
    let (a, b) = (cache(&server, "bad:"), cache(&server, "bad:"));
    let gated = Gated::new();
    let first = gated.spawn_get(&a, "fresh");
    gated.first_running().await;
    let second = gated.spawn_get(&b, "other");
    assert!(eventually(PATIENCE, || b.stats().decode_errors == 1).await);
    gated.open(10);
    assert_eq!(first.await.unwrap(), Ok("fresh".to_string()));
    assert_eq!(second.await.unwrap(), Ok("fresh".to_string()));
    assert_eq!(gated.runs(), 1, "one loader run for the bad bytes");
    assert_eq!((b.stats().lease_waits, b.stats().local_fallbacks), (1, 0));
}

/// The number of GET calls the server has run (`INFO commandstats`; a load's first round
/// is a plain GET).
fn get_calls(raw: &mut redis::Connection) -> u64 {
    let info: String = redis::cmd("INFO").arg("commandstats").query(raw).unwrap();
    info.lines()
        .find_map(|line| line.strip_prefix("cmdstat_get:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Polls `read` once, while the server is paused so that the poll cannot also see the
/// answer (it sends its first round, a GET), and waits until Redis has run that GET.
async fn read_redis_once<F: Future>(
    server: &RedisServer,
    raw: &mut redis::Connection,
    read: Pin<&mut F>,
) {
    let before = get_calls(raw);
    server.pause();
    poll_once(read).await; // its GET sent
    server.resume();
    assert!(eventually(PATIENCE, || get_calls(raw) > before).await);
}

/// Finding 11: a resubscription drops the L1's values because messages may have been
/// missed, but it skipped loads in flight: a load that read Redis before an insert elsewhere
/// (announced while this cache was not subscribed) stored that older value after the
/// resubscription, where it stayed. Ordered by driving the read by hand: its GET
/// has run in Redis (counted there) before the insert, and its L1 store comes after the
/// resubscription.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_11_a_load_across_a_resubscription_keeps_nothing_it_read_before() {
    let server = RedisServer::start();
    let (a, b) = (cache(&server, "epoch:"), cache(&server, "epoch:"));
    assert!(a.backplane_ready(PATIENCE).await);
    b.insert("k", "old".to_string()).await.unwrap();
    assert_eq!(a.get_with("warm", ok("w")).await, Ok("w".to_string()));
    assert!(!a.contains_local("k"));
    let mut raw = server.connection();
    let mut read = pin!(a.get_with("k", ok("loaded")));
    read_redis_once(&server, &mut raw, read.as_mut()).await;
    insert_while_unsubscribed(&mut raw, &a, &b).await;
    assert_eq!(
        read.await,
        Ok("old".to_string()),
        "it read Redis before the insert"
    );
    assert_eq!(
        a.get_with("k", ok("loaded")).await,
        Ok("new".to_string()),
        "no value read before the resubscription stays in the L1 after it"
    );
}

/// The first subscription drops loads in flight as every later one does: messages sent
/// before it were missed too. It used to skip them (only resubscriptions counted), so a load
/// that began before the backplane was up stored its value after the subscription, which
/// then stayed in the L1 whatever the messages it had missed. Ordered on one thread: the
/// load's entry is made by the first poll, before the backplane task has run at all, and
/// the load is driven only after the subscription.
#[tokio::test(flavor = "current_thread")]
async fn a_load_in_flight_across_the_first_subscription_keeps_nothing() {
    let server = RedisServer::start();
    let a = cache(&server, "first:");
    let mut read = pin!(a.get_with("k", ok("loaded")));
    poll_once(read.as_mut()).await;
    assert_eq!(
        a.stats().backplane_subscriptions,
        0,
        "the load began before the first subscription"
    );
    assert!(a.backplane_ready(PATIENCE).await);
    assert_eq!(
        read.await,
        Ok("loaded".to_string()),
        "its callers get its value"
    );
    assert!(
        !a.contains_local("k"),
        "a load in flight across the first subscription keeps nothing in the L1"
    );
    assert_eq!(a.get_with("k", ok("again")).await, Ok("loaded".to_string()));
    assert!(a.contains_local("k"), "a load after it keeps its value");
}

/// Checked sound (no fix needed): an invalidation elsewhere that lands between another
/// cache's Redis read and its L1 store (the read driven by hand, as in finding 11, with the
/// backplane up) detaches that load in the L1: its value goes to its callers only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_between_a_read_and_its_l1_store_wins() {
    let server = RedisServer::start();
    let (a, b) = (cache(&server, "gap:"), cache(&server, "gap:"));
    assert!(a.backplane_ready(PATIENCE).await);
    b.insert("k", "old".to_string()).await.unwrap();
    assert_eq!(a.get_with("warm", ok("w")).await, Ok("w".to_string()));
    let mut read = pin!(a.get_with("k", ok("loaded")));
    read_redis_once(&server, &mut server.connection(), read.as_mut()).await;
    let received = a.stats().backplane_received;
    b.invalidate("k").await.unwrap();
    assert!(eventually(PATIENCE, || a.stats().backplane_received > received).await);
    assert_eq!(read.await, Ok("old".to_string()));
    assert!(!a.contains_local("k"));
    assert_eq!(
        a.get_with("k", ok("loaded")).await,
        Ok("loaded".to_string())
    );
}

/// Checked sound (no fix needed): the last caller cancelled while its load's COMMIT is in
/// flight. The COMMIT still lands (it was sent), the guard's RELEASE after it does nothing,
/// and another cache reads the value without loading; in no case is the lease left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_cancelled_during_its_commit_still_writes_and_leaks_no_lease() {
    let server = RedisServer::start();
    let (a, b) = (cache(&server, "cc:"), cache(&server, "cc:"));
    // The scripts loaded (COMMIT is then one EVALSHA, which runs once sent).
    assert_eq!(a.get_with("warm", ok("w")).await, Ok("w".to_string()));
    let gated = Gated::new();
    {
        let mut read = pin!(a.get_with("k", gated.loader("v")));
        for _ in 0..5000 {
            poll_once(read.as_mut()).await;
            if gated.runs() == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(gated.runs(), 1, "the loader runs, holding the lease");
        server.pause();
        gated.open(1);
        poll_once(read.as_mut()).await; // the loader ends; COMMIT sent
    } // the last caller goes
    server.resume();
    let mut raw = server.connection();
    assert!(
        eventually(PATIENCE, || !raw.exists::<_, bool>("cc:l:k").unwrap()).await,
        "no lease left behind"
    );
    // Written when the COMMIT left in that last poll (as a rule); a COMMIT dropped before
    // it was sent writes nothing, which is allowed: the lease went back all the same.
    let written = read_value(&mut raw, "cc:v:k");
    let expected = written.clone().unwrap_or_else(|| "other".to_string());
    assert!(written.is_none() || written.as_deref() == Some("v"));
    assert_eq!(b.get_with("k", ok("other")).await, Ok(expected));
}

/// Utf8, except that it refuses to encode "unencodable".
struct Picky;

impl deferred_redis::Codec<String> for Picky {
    fn encode(&self, value: &String) -> Result<Vec<u8>, deferred_redis::CodecError> {
        if value == "unencodable" {
            return Err(deferred_redis::CodecError::new("refused"));
        }
        deferred_redis::Codec::<String>::encode(&Utf8, value)
    }

    fn decode(&self, bytes: &[u8]) -> Result<String, deferred_redis::CodecError> {
        deferred_redis::Codec::<String>::decode(&Utf8, bytes)
    }
}

/// An `insert` whose value the codec cannot encode changed this L1 and not Redis: this
/// process read the new value while every other read the old one, with nothing to bring
/// them back in step but the L1 TTL. Now it changes nothing anywhere and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_insert_that_does_not_encode_changes_nothing_anywhere() {
    let server = RedisServer::start();
    let build = || {
        HybridCache::<String, String, String, Picky>::builder(server.client(), "picky:", Picky)
            .op_timeout(Duration::from_secs(5))
            .build()
            .expect("build inside a runtime")
    };
    let (a, b) = (build(), build());
    a.insert("k", "old".to_string()).await.expect("encodes");
    let result = a.insert("k", "unencodable".to_string()).await;
    assert!(
        matches!(result, Err(deferred_redis::L2Error::Codec(_))),
        "{result:?}"
    );
    assert_eq!(a.stats().encode_errors, 1);
    let mine = a.get_with("k", ok("loaded")).await.expect("a value");
    let theirs = b.get_with("k", ok("loaded")).await.expect("a value");
    assert_eq!((mine.as_str(), theirs.as_str()), ("old", "old"));
}

// Review of the plain first read (`Inner::peek`: a pipelined `GET` + `PTTL`, no script, no
// lease, no waiter registration) that an L1 miss makes before the lease script's rounds.

/// A cache whose Redis round trips give up after 200 ms: a lease script held by
/// `CLIENT PAUSE WRITE` then fails the load over to its loader here, as in finding 8.
fn impatient(server: &RedisServer, prefix: &str) -> Strings {
    HybridCache::builder(server.client(), prefix, Utf8)
        .lease(Duration::from_secs(30))
        .op_timeout(Duration::from_millis(200))
        .backplane_ping(Duration::from_secs(60))
        .build()
        .expect("build")
}

/// The number of calls of `command` the server has run (`INFO commandstats`).
fn calls(raw: &mut redis::Connection, command: &str) -> u64 {
    let info: String = redis::cmd("INFO").arg("commandstats").query(raw).unwrap();
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|line| line.strip_prefix(prefix.as_str()))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Peek finding 1: a load whose plain read found no value, and whose lease script after it
/// then failed (here: held by `CLIENT PAUSE WRITE` past `op_timeout`), counted no miss,
/// although it found no value in Redis (`l2_misses`: "L1 loads that found no value in
/// Redis"). The plain read's nil was "not counted: the lease script's round says what it is",
/// and that round never answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peek_1_a_miss_seen_by_the_plain_read_is_counted_when_the_lease_script_fails() {
    let server = RedisServer::start();
    let a = impatient(&server, "pmiss:");
    assert_eq!(a.get_with("warm", ok("w")).await, Ok("w".to_string()));
    let before = a.stats();
    let mut raw = server.connection();
    pause_writes(&mut raw);
    assert_eq!(a.get_with("k", ok("local")).await, Ok("local".to_string()));
    unpause(&mut raw);
    let after = a.stats();
    assert_eq!(
        (
            after.local_fallbacks - before.local_fallbacks,
            after.l2_errors - before.l2_errors
        ),
        (1, 1),
        "the lease script timed out: the loader ran here"
    );
    assert_eq!(
        after.l2_misses - before.l2_misses,
        1,
        "the plain read found no value in Redis: one miss"
    );
}

/// Peek finding 1, a value key of another type: the plain read's WRONGTYPE was taken for
/// "no value" and left to the lease script to count; with that script failing, the key of
/// another type that made the read a miss was counted nowhere (`decode_errors`, `l2_misses`).
/// It also cost one round trip more than a value that does not decode (the script's first
/// answer only said what the plain read had already found).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peek_1_a_foreign_key_seen_by_the_plain_read_is_counted_when_the_lease_script_fails() {
    let server = RedisServer::start();
    let a = impatient(&server, "pforeign:");
    assert_eq!(a.get_with("warm", ok("w")).await, Ok("w".to_string()));
    let before = a.stats();
    let mut raw = server.connection();
    let _: i64 = raw.lpush("pforeign:v:k", "x").unwrap();
    pause_writes(&mut raw);
    assert_eq!(a.get_with("k", ok("local")).await, Ok("local".to_string()));
    unpause(&mut raw);
    let after = a.stats();
    assert_eq!(
        (
            after.local_fallbacks - before.local_fallbacks,
            after.l2_errors - before.l2_errors
        ),
        (1, 1),
        "the lease script timed out (a WRONGTYPE is no L2 error)"
    );
    assert_eq!(
        (
            after.decode_errors - before.decode_errors,
            after.l2_misses - before.l2_misses
        ),
        (1, 1),
        "the plain read found a key of another type: one decode error, one miss"
    );
}

/// Peek finding 1, the round trips: a value key of another type costs what a value that
/// does not decode costs (the plain read, then the lease script told what it found, then
/// `COMMIT`: 2 `EVALSHA`), not one lease script more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peek_1_a_foreign_key_costs_no_more_round_trips_than_bad_bytes() {
    let server = RedisServer::start();
    let a = cache(&server, "ptrips:");
    assert_eq!(a.get_with("warm", ok("w")).await, Ok("w".to_string()));
    let mut raw = server.connection();
    let _: () = raw
        .set("ptrips:v:bad", framed(&[0xff], Duration::from_secs(60)))
        .unwrap();
    let _: i64 = raw.lpush("ptrips:v:list", "x").unwrap();
    let before = calls(&mut raw, "evalsha");
    assert_eq!(a.get_with("bad", ok("b")).await, Ok("b".to_string()));
    let bad = calls(&mut raw, "evalsha") - before;
    let before = calls(&mut raw, "evalsha");
    assert_eq!(a.get_with("list", ok("l")).await, Ok("l".to_string()));
    let foreign = calls(&mut raw, "evalsha") - before;
    assert_eq!(
        (bad, foreign),
        (2, 2),
        "GET_OR_LEASE (taking the lease) and COMMIT, for either unreadable value"
    );
    assert_eq!(a.stats().decode_errors, 2);
}

/// Checked sound: an L2 hit is the plain read alone. It runs no script (so `CLIENT PAUSE
/// WRITE`, which holds scripts, does not hold it), touches no lease (nothing to leak or
/// release), registers no waiter, and counts one hit and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peek_checked_an_l2_hit_is_the_plain_read_alone() {
    let server = RedisServer::start();
    let (a, b) = (cache(&server, "phit:"), cache(&server, "phit:"));
    // Subscribed first: the first subscription takes loads in flight out of the L1.
    assert!(a.backplane_ready(PATIENCE).await);
    b.insert("k", "v".to_string()).await.unwrap();
    let mut raw = server.connection();
    let scripts = calls(&mut raw, "evalsha") + calls(&mut raw, "eval");
    pause_writes(&mut raw);
    assert_eq!(a.get_with("k", ok("loaded")).await, Ok("v".to_string()));
    unpause(&mut raw);
    assert_eq!(
        calls(&mut raw, "evalsha") + calls(&mut raw, "eval"),
        scripts
    );
    assert!(
        !raw.exists::<_, bool>("phit:l:k").unwrap(),
        "no lease taken"
    );
    let stats = a.stats();
    assert_eq!(
        (
            stats.l2_hits,
            stats.l2_misses,
            stats.l2_errors,
            stats.decode_errors,
            stats.lease_wins + stats.lease_waits + stats.takeovers,
            stats.local_fallbacks
        ),
        (1, 0, 0, 0, 0, 0)
    );
    assert!(a.contains_local("k"));
}

/// Checked sound: `invalidate_all` elsewhere that lands between another cache's plain read
/// (its `GET` has run in Redis) and that read's L1 store: its announcement detaches the load
/// in the L1 (`invalidate_all` there removes loads in flight), so the value from before goes
/// to that load's callers only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peek_checked_invalidate_all_between_a_plain_read_and_its_l1_store_wins() {
    let server = RedisServer::start();
    let (a, b) = (cache(&server, "pall:"), cache(&server, "pall:"));
    assert!(a.backplane_ready(PATIENCE).await);
    b.insert("k", "old".to_string()).await.unwrap();
    assert_eq!(a.get_with("warm", ok("w")).await, Ok("w".to_string()));
    let mut raw = server.connection();
    let mut read = pin!(a.get_with("k", ok("loaded")));
    read_redis_once(&server, &mut raw, read.as_mut()).await;
    let received = a.stats().backplane_received;
    b.invalidate_all().await.unwrap();
    assert!(eventually(PATIENCE, || a.stats().backplane_received > received).await);
    assert_eq!(read.await, Ok("old".to_string()), "it read Redis before");
    assert!(!a.contains_local("k"));
    assert_eq!(
        a.get_with("k", ok("loaded")).await,
        Ok("loaded".to_string())
    );
}

/// Checked sound: this cache's own `invalidate` while one of its reads has done its plain
/// read (the `GET` ran in Redis before the invalidation's write) but not stored it: the
/// invalidation's L1 drop detaches that load, so after `Ok` this L1 keeps nothing from
/// before, and the next read loads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peek_checked_own_invalidate_between_a_plain_read_and_its_l1_store_wins() {
    let server = RedisServer::start();
    let (a, b) = (cache(&server, "pown:"), cache(&server, "pown:"));
    // Subscribed first: the first subscription takes loads in flight out of the L1.
    assert!(a.backplane_ready(PATIENCE).await);
    b.insert("k", "old".to_string()).await.unwrap();
    assert_eq!(a.get_with("warm", ok("w")).await, Ok("w".to_string()));
    let mut raw = server.connection();
    let mut read = pin!(a.get_with("k", ok("loaded")));
    read_redis_once(&server, &mut raw, read.as_mut()).await;
    a.invalidate("k").await.unwrap();
    assert_eq!(read.await, Ok("old".to_string()), "it read Redis before");
    assert!(!a.contains_local("k"));
    assert_eq!(
        a.get_with("k", ok("loaded")).await,
        Ok("loaded".to_string())
    );
}

/// Review of 3568cf6 (rev1): a load that holds no lease, here one that fell back to its
/// loader because Redis did not answer within `op_timeout` (the outage that a
/// resubscription follows), is taken out of the L1's map by the subscription after the
/// outage. A caller that comes after it has no lease to wait on: it takes one and runs its
/// loader while the first load still runs, and its value (written to Redis) is the one the
/// L1 keeps. The README said such a caller "waits on it (one loader run still)", which
/// this test, asserting one run, showed false (runs 2, second got Ok("second"),
/// lease_wins 2); before 3568cf6 the later caller joined the load in flight (one run).
/// Ordered by the server's pause, the loaders' gate and the subscription count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rev1_a_caller_after_a_subscription_reruns_a_load_without_a_lease() {
    let server = RedisServer::start();
    let a: Strings = HybridCache::builder(server.client(), "rev1:", Utf8)
        .lease(Duration::from_secs(30))
        .op_timeout(Duration::from_millis(200))
        .reconnect_backoff(Duration::from_millis(1))
        .poll_interval(Duration::from_millis(20))
        .backplane_ping(Duration::from_secs(60))
        .build()
        .expect("build inside a runtime");
    assert!(a.backplane_ready(PATIENCE).await);
    assert_eq!(a.get_with("warm", ok("w")).await, Ok("w".to_string()));
    let gated = Gated::new();
    server.pause();
    let first = gated.spawn_get(&a, "first");
    // Redis does not answer: the first load runs its loader here, with no lease.
    gated.first_running().await;
    server.resume();
    assert_eq!(a.stats().local_fallbacks, 1);
    let mut raw = server.connection();
    cut_backplane(&mut raw, &a).await;
    assert!(eventually(PATIENCE, || a.stats().backplane_subscriptions == 2).await);
    let second = gated.spawn_get(&a, "second");
    // No lease to wait on: the later load takes it and runs its loader too.
    assert!(eventually(PATIENCE, || gated.runs() == 2).await);
    assert_eq!(
        a.stats().lease_wins,
        2,
        "the warm-up's and the later load's"
    );
    gated.open(2);
    assert_eq!(first.await.unwrap(), Ok("first".to_string()));
    assert_eq!(second.await.unwrap(), Ok("second".to_string()));
    assert!(
        a.contains_local("k"),
        "the later load read after the subscription"
    );
    assert_eq!(
        a.get_with("k", ok("unused")).await,
        Ok("second".to_string())
    );
}

/// Review of 3568cf6 (rev1), checked sound: a load holding its lease, whose only caller
/// stalls (not polled, not dropped) and which a resubscription takes out of the L1, holds
/// a caller that comes after it up no longer than the lease (nothing renews it while the
/// load is not polled): that caller takes over and runs its loader, its value is kept; the
/// stalled load, driven to its end afterwards, gives its caller its own value, its write
/// fenced, and the L1 keeps the later one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rev1_checked_a_stalled_detached_leader_holds_a_later_caller_up_for_a_lease_at_most() {
    let server = RedisServer::start();
    let a: Strings = HybridCache::builder(server.client(), "rev1s:", Utf8)
        .lease(Duration::from_millis(600))
        .op_timeout(Duration::from_secs(5))
        .poll_interval(Duration::from_millis(20))
        .backplane_ping(Duration::from_secs(60))
        .build()
        .expect("build inside a runtime");
    assert!(a.backplane_ready(PATIENCE).await);
    let gated = Gated::new();
    let mut stalled = Box::pin(a.get_with("k", gated.loader("first")));
    tokio::select! {
        _ = &mut stalled => panic!("the load cannot finish before the gate opens"),
        () = gated.first_running() => {}
    }
    assert_eq!(a.stats().lease_wins, 1);
    let mut raw = server.connection();
    cut_backplane(&mut raw, &a).await;
    assert!(eventually(PATIENCE, || a.stats().backplane_subscriptions == 2).await);
    let started = std::time::Instant::now();
    let later = a.get_with("k", ok("second"));
    let got = tokio::time::timeout(PATIENCE, later).await;
    let waited = started.elapsed();
    assert_eq!(got.ok(), Some(Ok("second".to_string())));
    assert!(
        waited < Duration::from_millis(600 + 20 + 400),
        "waited {waited:?}"
    );
    assert_eq!((a.stats().lease_waits, a.stats().takeovers), (1, 1));
    assert!(a.contains_local("k"));
    gated.open(1);
    assert_eq!(
        tokio::time::timeout(PATIENCE, stalled).await.ok(),
        Some(Ok("first".to_string()))
    );
    assert_eq!(a.stats().fenced_writes, 1);
    assert_eq!(
        a.get_with("k", ok("unused")).await,
        Ok("second".to_string())
    );
    let stored = read_value(&mut raw, "rev1s:v:k");
    assert_eq!(stored.as_deref(), Some("second"));
}

/// Review of 3568cf6 (rev1), checked sound: a load holding its lease and taken out of the
/// L1 by a resubscription is waited on by a caller that comes after it (one loader run),
/// and its `COMMIT`'s announcement, this cache's own, wakes that waiter well before its
/// next poll (`poll_interval` 10 s here); the waiter's read, made after the subscription,
/// is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rev1_checked_a_detached_leaders_commit_wakes_the_later_caller() {
    let server = RedisServer::start();
    let a: Strings = HybridCache::builder(server.client(), "rev1w:", Utf8)
        .lease(Duration::from_secs(30))
        .op_timeout(Duration::from_secs(5))
        .poll_interval(Duration::from_secs(10))
        .backplane_ping(Duration::from_secs(60))
        .build()
        .expect("build inside a runtime");
    assert!(a.backplane_ready(PATIENCE).await);
    let gated = Gated::new();
    let first = gated.spawn_get(&a, "first");
    gated.first_running().await;
    let mut raw = server.connection();
    cut_backplane(&mut raw, &a).await;
    assert!(eventually(PATIENCE, || a.stats().backplane_subscriptions == 2).await);
    let second = gated.spawn_get(&a, "second");
    assert!(eventually(PATIENCE, || a.stats().lease_waits == 1).await);
    gated.open(1);
    let got = tokio::time::timeout(Duration::from_secs(5), second).await;
    assert_eq!(got.ok().map(Result::unwrap), Some(Ok("first".to_string())));
    assert_eq!(first.await.unwrap(), Ok("first".to_string()));
    assert_eq!(gated.runs(), 1);
    assert!(
        a.contains_local("k"),
        "the waiter read Redis after the subscription"
    );
}

/// Review of 3568cf6 (rev1): a load of this process waiting on `k` keeps another process's
/// announcement of a load of `k` (`L`) from dropping the L1's copy, on the grounds that the
/// waiting load is the key's entry, about to read that value. A load that a subscription
/// took out of the L1's map is no longer the key's entry, yet stays registered as a waiter
/// while it waits, for as long as its callers stall: a copy that a later load of the key
/// put in the L1 then outlives a load elsewhere that replaced it in Redis after the copy's
/// value left without a message (an eviction, a `DEL` from outside), up to its L1 TTL.
/// Before 3568cf6 the later caller joined the waiting load (one entry, one waiter: it
/// drove the load to its end, which unregistered it), so the announcement dropped the copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rev1_a_detached_waiter_does_not_shield_a_copy_from_a_load_elsewhere() {
    let server = RedisServer::start();
    let (a, b) = (cache(&server, "rev1l:"), cache(&server, "rev1l:"));
    assert!(a.backplane_ready(PATIENCE).await);
    let mut raw = server.connection();
    // `b` loads `k` (its loader held at the gate, the lease taken)...
    let gated = Gated::new();
    let leader = gated.spawn_get(&b, "v1");
    gated.first_running().await;
    // ...and a load of `a` waits on its lease, then stalls (its one caller neither polled
    // nor dropped).
    let mut stalled = Box::pin(a.get_with("k", ok("unused")));
    tokio::select! {
        _ = &mut stalled => panic!("it waits on the lease"),
        waiting = eventually(PATIENCE, || a.stats().lease_waits == 1) => assert!(waiting),
    }
    // A resubscription of `a`.
    cut_backplane(&mut raw, &a).await;
    assert!(eventually(PATIENCE, || a.stats().backplane_subscriptions == 2).await);
    // `b`'s load writes "v1", announced; a caller of `a` reads it into `a`'s L1.
    gated.open(1);
    assert_eq!(leader.await.unwrap(), Ok("v1".to_string()));
    assert!(eventually(PATIENCE, || a.stats().backplane_received == 1).await);
    assert_eq!(a.get_with("k", ok("unused")).await, Ok("v1".to_string()));
    // "v1" leaves Redis without a message; another process loads "v2", announced.
    let _: () = raw.del("rev1l:v:k").unwrap();
    let c = cache(&server, "rev1l:");
    assert_eq!(c.get_with("k", ok("v2")).await, Ok("v2".to_string()));
    assert!(eventually(PATIENCE, || a.stats().backplane_received == 2).await);
    assert_eq!(
        a.get_with("k", ok("unused")).await,
        Ok("v2".to_string()),
        "another process's load drops this L1's older copy"
    );
    drop(stalled);
}
