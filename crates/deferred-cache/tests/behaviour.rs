//! The cache's behaviour, one test per promise (issue #4): single flight on four executors
//! (tokio multi-thread and current-thread, a `futures` thread pool, smol),
//! shared and uncached errors, panics, cancellation, stalled callers, re-entrant loaders,
//! capacity, and the counters. Nothing here sleeps to order events: gates do, and tokio's
//! paused clock stands in for time.

#![allow(clippy::std_instead_of_core)]

mod common;

use std::{
    collections::HashSet,
    sync::{
        atomic::{AtomicUsize, Ordering::SeqCst},
        Arc,
    },
    time::Duration,
};

use common::{poll_once, Gate, Runs};
use deferred_cache::{Cache, LoadError, Source};
use futures::FutureExt;

type Shared = Arc<Cache<u64, u64, String>>;

/// Starts `n` callers of one key through `spawn`, waits until every one of them has polled
/// (missed), opens the loader's gate, and checks: one loader run, one `Loaded`, n − 1
/// `Joined`, the same value for all.
async fn stampede<H, J>(
    n: u64,
    spawn: impl Fn(futures::future::BoxFuture<'static, (Result<u64, LoadError<String>>, Source)>) -> H,
    join: impl Fn(H) -> J,
    yield_now: impl Fn() -> futures::future::BoxFuture<'static, ()>,
) where
    J: std::future::Future<Output = (Result<u64, LoadError<String>>, Source)>,
{
    let cache: Shared = Arc::new(Cache::new());
    let gate = Gate::new();
    let runs = Runs::default();
    let handles: Vec<H> = (0..n)
        .map(|_| {
            let (cache, gate, runs) = (cache.clone(), gate.clone(), runs.clone());
            spawn(
                async move {
                    cache
                        .get_with(7, || runs.gated(&gate, 49))
                        .with_source()
                        .await
                }
                .boxed(),
            )
        })
        .collect();
    while cache.stats().misses < n {
        yield_now().await;
    }
    gate.open();
    let mut loaded = 0;
    for handle in handles {
        let (value, source) = join(handle).await;
        assert_eq!(value, Ok(49));
        assert_ne!(source, Source::Hit);
        loaded += usize::from(source == Source::Loaded);
    }
    assert_eq!(runs.started(), 1, "n = {n}: the loader ran more than once");
    assert_eq!(loaded, 1, "n = {n}: exactly one caller's loader ran");
    let stats = cache.stats();
    assert_eq!(
        (stats.misses, stats.coalesced, stats.loads_ok),
        (n, n - 1, 1)
    );
}

const SIZES: [u64; 4] = [2, 16, 1000, 100_000];

/// Every stampede size on one tokio runtime.
fn stampedes_on(rt: tokio::runtime::Runtime) {
    for n in SIZES {
        rt.block_on(stampede(
            n,
            tokio::spawn,
            |h| async move { h.await.unwrap() },
            || tokio::task::yield_now().boxed(),
        ));
    }
}

#[test]
fn one_load_for_n_callers_on_tokio_multi_thread() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build();
    stampedes_on(rt.unwrap());
}

#[test]
fn one_load_for_n_callers_on_tokio_current_thread() {
    stampedes_on(
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap(),
    );
}

#[test]
fn one_load_for_n_callers_on_futures_executor() {
    use futures::task::SpawnExt;
    let pool = futures::executor::ThreadPool::builder()
        .pool_size(2)
        .create()
        .unwrap();
    for n in SIZES {
        let spawner = pool.clone();
        futures::executor::block_on(stampede(
            n,
            move |fut| spawner.spawn_with_handle(fut).unwrap(),
            |h| h,
            || YieldNow(false).boxed(),
        ));
    }
}

#[test]
fn one_load_for_n_callers_on_smol() {
    // smol's global executor (its own threads), driven from `smol::block_on`.
    for n in SIZES {
        smol::block_on(stampede(
            n,
            smol::spawn,
            |task| task,
            || smol::future::yield_now().boxed(),
        ));
    }
}

/// Yields once to the executor.
struct YieldNow(bool);

impl std::future::Future for YieldNow {
    type Output = ();
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.0 {
            return std::task::Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}

#[test]
fn a_loader_error_reaches_every_waiter_promptly_and_is_not_cached() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let cache: Shared = Arc::new(Cache::new());
        let runs = Runs::default();
        let start = tokio::time::Instant::now();
        let tasks: Vec<_> = (0..100)
            .map(|_| {
                let (cache, runs) = (cache.clone(), runs.clone());
                tokio::spawn(async move {
                    let outcome = cache
                        .get_with(1, || {
                            let runs = runs.clone();
                            async move {
                                let guard = runs.enter();
                                tokio::time::sleep(Duration::from_millis(20)).await;
                                drop(guard);
                                Err("backend down".to_string())
                            }
                        })
                        .await;
                    (outcome, start.elapsed())
                })
            })
            .collect();
        let mut errors = Vec::new();
        for task in tasks {
            let (outcome, took) = task.await.unwrap();
            assert!(took <= Duration::from_millis(25), "an error took {took:?}");
            match outcome {
                Err(LoadError::Failed(e)) => errors.push(e),
                other => panic!("expected the loader's error, got {other:?}"),
            }
        }
        assert_eq!(runs.started(), 1);
        assert_eq!(errors.len(), 100);
        assert!(
            errors.iter().all(|e| Arc::ptr_eq(e, &errors[0])),
            "one shared error"
        );
        assert_eq!(*errors[0], "backend down");
        assert_eq!(cache.len(), 0, "a failed load leaves no entry");
        // Not cached: the next call loads again.
        let again = cache.get_with(1, || async { Ok(5) }).with_source().await;
        assert_eq!(again, (Ok(5), Source::Loaded));
        let stats = cache.stats();
        assert_eq!((stats.loads_failed, stats.loads_ok), (1, 1));
    });
}

#[test]
fn a_failure_is_not_served_to_a_caller_that_comes_after_it() {
    futures::executor::block_on(async {
        let cache: Cache<u64, u64, String> = Cache::new();
        // The load fails when the gate opens; `waiter` joins it and is then not polled
        // again until after a later caller came.
        let gate = Gate::new();
        let opened = gate.wait();
        let mut driver = cache
            .get_with(1, move || async move {
                opened.await;
                Err("first".to_string())
            })
            .boxed();
        let mut waiter = cache.get_with(1, || async { Ok(0) }).boxed();
        assert!(poll_once(&mut driver).is_pending());
        assert!(poll_once(&mut waiter).is_pending());
        gate.open();
        assert!(poll_once(&mut driver).is_ready()); // runs the loader to its error
                                                    // `waiter` has not been polled since; a new caller must load afresh regardless.
        let fresh = cache.get_with(1, || async { Ok(2) }).with_source().await;
        assert_eq!(fresh, (Ok(2), Source::Loaded));
        assert!(matches!(
            poll_once(&mut waiter),
            std::task::Poll::Ready(Err(LoadError::Failed(_)))
        ));
    });
}

#[test]
fn a_panicking_loader_unwinds_one_caller_and_fails_the_others() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let cache: Shared = Arc::new(Cache::new());
        let gate = Gate::new();
        let runs = Runs::default();
        let tasks: Vec<_> = (0..10)
            .map(|_| {
                let (cache, gate, runs) = (cache.clone(), gate.clone(), runs.clone());
                tokio::spawn(async move {
                    cache
                        .get_with(3, || {
                            let runs = runs.clone();
                            let opened = gate.wait();
                            async move {
                                let guard = runs.enter();
                                opened.await;
                                let _guard = guard;
                                panic!("loader bug")
                            }
                        })
                        .await
                })
            })
            .collect();
        while cache.stats().misses < 10 {
            tokio::task::yield_now().await;
        }
        gate.open();
        let (mut unwound, mut panicked) = (0, 0);
        for task in tasks {
            match task.await {
                Err(join) if join.is_panic() => unwound += 1,
                Ok(Err(LoadError::Panicked)) => panicked += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(
            (unwound, panicked),
            (1, 9),
            "only the driving caller unwinds"
        );
        assert_eq!(runs.started(), 1, "no extra run after the panic");
        assert_eq!(runs.dropped(), 1, "the panicked loader was dropped");
        assert_eq!(cache.len(), 0, "the entry is removed");
        assert_eq!(cache.stats().loads_panicked, 1);
        assert_eq!(
            cache.get_with(3, || async { Ok(4) }).await,
            Ok(4),
            "still usable"
        );
    });
}

#[test]
fn a_dropped_caller_never_fails_the_others_and_the_load_goes_on_without_its_driver() {
    futures::executor::block_on(async {
        let cache: Cache<u64, u64, String> = Cache::new();
        let gate = Gate::new();
        let runs = Runs::default();
        let loader = || runs.gated(&gate, 8);
        let mut driver = cache.get_with(2, loader).with_source().boxed();
        let mut middle = cache.get_with(2, || async { Ok(0) }).boxed();
        let mut last = cache.get_with(2, || async { Ok(0) }).with_source().boxed();
        assert!(poll_once(&mut driver).is_pending()); // starts the load
        assert!(poll_once(&mut middle).is_pending());
        assert!(poll_once(&mut last).is_pending());
        drop(middle); // one waiter leaves
        drop(driver); // the caller whose loader runs leaves too
        assert_eq!(runs.dropped(), 0, "the load goes on while someone waits");
        gate.open();
        assert_eq!(last.await, (Ok(8), Source::Joined));
        assert_eq!(runs.started(), 1, "no second run");
        assert_eq!(cache.peek(&2), Some(8));
    });
}

#[test]
fn when_the_last_caller_leaves_the_load_is_dropped_and_the_entry_goes() {
    futures::executor::block_on(async {
        let cache: Cache<u64, u64, String> = Cache::new();
        let gate = Gate::new();
        let runs = Runs::default();
        let mut a = cache.get_with(5, || runs.gated(&gate, 1)).boxed();
        let mut b = cache.get_with(5, || async { Ok(2) }).boxed();
        assert!(poll_once(&mut a).is_pending());
        assert!(poll_once(&mut b).is_pending());
        assert_eq!(cache.len(), 1);
        drop(a);
        assert_eq!(runs.dropped(), 0);
        drop(b);
        assert_eq!(
            runs.dropped(),
            1,
            "the load is dropped with its last caller"
        );
        assert_eq!(cache.len(), 0, "and the entry is gone");
        assert_eq!(cache.stats().loads_cancelled, 1);
        // The next caller loads afresh.
        assert_eq!(cache.get_with(5, || async { Ok(3) }).await, Ok(3));
    });
}

#[test]
fn a_stalled_leader_does_not_block_the_next_caller() {
    // `leader` is polled once (it starts the load) and then never again, but kept alive:
    // moka, quick_cache and the singleflight crates hang the second caller here.
    let pool = futures::executor::ThreadPool::builder()
        .pool_size(1)
        .create()
        .unwrap();
    let cache: Arc<Cache<u64, u64, String>> = Arc::new(Cache::new());
    let gate = Gate::new();
    let runs = Runs::default();
    let mut leader = cache.get_with(9, || runs.gated(&gate, 11)).boxed();
    assert!(poll_once(&mut leader).is_pending());
    let (tx, rx) = std::sync::mpsc::channel();
    {
        let cache = cache.clone();
        pool.spawn_ok(async move {
            let got = cache.get_with(9, || async { Ok(0) }).with_source().await;
            let _ = tx.send(got);
        });
    }
    gate.open(); // the load can finish now: only the second caller is there to drive it
                 // The time-out only bounds a hang; it orders nothing.
    let got = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the second caller hung behind a stalled leader");
    assert_eq!(got, (Ok(11), Source::Joined));
    assert_eq!(runs.started(), 1);
    drop(leader);
}

#[test]
fn a_loader_that_awaits_its_own_key_gets_an_error_not_a_deadlock() {
    futures::executor::block_on(async {
        let cache: Arc<Cache<u64, u64, String>> = Arc::new(Cache::new());
        let inner = cache.clone();
        let seen = Arc::new(std::sync::Mutex::new(None));
        let seen2 = seen.clone();
        let outcome = cache
            .get_with(1, move || async move {
                let nested = inner.get_with(1, || async { Ok(0) }).await;
                *seen2.lock().unwrap() = Some(nested.clone());
                match nested {
                    Err(e) => Err(format!("nested: {e}")),
                    Ok(v) => Ok(v),
                }
            })
            .await;
        assert_eq!(*seen.lock().unwrap(), Some(Err(LoadError::Reentrant)));
        assert!(
            matches!(outcome, Err(LoadError::Failed(e)) if e.starts_with("nested: the loader awaited its own key"))
        );
        assert_eq!(cache.len(), 0);
    });
}

#[test]
fn a_cycle_between_two_keys_on_one_thread_gets_an_error() {
    futures::executor::block_on(async {
        let cache: Arc<Cache<u64, u64, String>> = Arc::new(Cache::new());
        let (c1, c2) = (cache.clone(), cache.clone());
        let outcome = cache
            .get_with(1, move || async move {
                c1.get_with(2, move || async move {
                    c2.get_with(1, || async { Ok(0) })
                        .await
                        .map_err(|e| e.to_string())
                })
                .await
                .map_err(|e| e.to_string())
            })
            .await;
        let Err(LoadError::Failed(e)) = outcome else {
            panic!("expected a failure, got {outcome:?}")
        };
        assert!(e.contains("awaited its own key"), "{e}");
    });
}

#[test]
fn the_get_with_future_is_send_and_small() {
    fn assert_send<T: Send>(_: &T) {}
    let cache: Cache<u64, String, std::io::Error> = Cache::bounded(10);
    let payload = [0u8; 64];
    let loader = move || async move { Ok(format!("{}", payload.len())) };
    let loader_size = std::mem::size_of_val(&loader);
    let fut = cache.get_with(1, loader);
    assert_send(&fut);
    let size = std::mem::size_of_val(&fut);
    assert!(
        size <= loader_size + 256,
        "GetWith is {size} bytes for a {loader_size}-byte loader"
    );
}

#[test]
fn loads_in_flight_are_never_evicted() {
    futures::executor::block_on(async {
        let cache: Cache<u64, u64, String> = Cache::bounded(2);
        let gate = Gate::new();
        let opened = gate.wait();
        let mut slow = cache
            .get_with(100, move || async move {
                opened.await;
                Ok(100)
            })
            .boxed();
        assert!(poll_once(&mut slow).is_pending());
        for k in 0..50 {
            cache.insert(k, k);
            assert!(cache.weighted_size().unwrap() <= 2);
        }
        assert!(cache.stats().evicted >= 48);
        // The load is still there, and its waiter gets its value.
        let mut joined = cache
            .get_with(100, || async { Ok(0) })
            .with_source()
            .boxed();
        assert!(poll_once(&mut joined).is_pending());
        gate.open();
        assert_eq!(slow.await, Ok(100));
        assert_eq!(joined.await, (Ok(100), Source::Joined));
        assert!(cache.weighted_size().unwrap() <= 2);
        assert_eq!(cache.len(), 2);
    });
}

#[test]
fn capacity_zero_keeps_nothing_but_still_shares_loads() {
    futures::executor::block_on(async {
        let cache: Cache<u64, u64, String> = Cache::bounded(0);
        let runs = Runs::default();
        let gate = Gate::new();
        let loader = || runs.gated(&gate, 1);
        let (a, b, ()) = futures::join!(
            cache.get_with(1, loader),
            cache.get_with(1, || async { Ok(2) }),
            async { gate.open() }
        );
        assert_eq!((a, b), (Ok(1), Ok(1)));
        assert_eq!(runs.started(), 1);
        assert_eq!(cache.len(), 0);
        assert_eq!(cache.weighted_size(), Some(0));
    });
}

#[test]
fn a_weigher_bounds_by_weight_and_drops_what_cannot_fit() {
    let cache: Cache<u64, String> = Cache::builder()
        .max_capacity(10)
        .weigher(|_, v: &String| v.len() as u32)
        .build();
    cache.insert(1, "aaaa".into());
    cache.insert(2, "bbbb".into());
    assert_eq!(cache.weighted_size(), Some(8));
    cache.insert(3, "cccc".into());
    assert!(cache.weighted_size().unwrap() <= 10);
    assert_eq!(cache.len(), 2);
    cache.insert(4, "x".repeat(11));
    assert!(
        !cache.contains_key(&4),
        "a value heavier than the capacity is not kept"
    );
    assert!(cache.weighted_size().unwrap() <= 10);
}

#[test]
fn s3_fifo_keeps_the_keys_that_are_read_over_a_scan() {
    let cache: Cache<u64, u64> = Cache::bounded(100);
    for k in 0..50 {
        cache.insert(k, k);
    }
    for _ in 0..3 {
        for k in 0..50 {
            assert_eq!(cache.get_if_present(&k), Some(k));
        }
    }
    // A scan of one-hit keys, ten times the capacity.
    for k in 1000..2000 {
        cache.insert(k, k);
    }
    let kept = (0..50).filter(|k| cache.contains_key(k)).count();
    assert!(kept >= 45, "only {kept} of 50 hot keys survived a scan");
    assert!(cache.weighted_size().unwrap() <= 100);
}

#[test]
fn insert_peek_invalidate_and_the_counters() {
    futures::executor::block_on(async {
        let cache: Cache<u64, u64, String> = Cache::bounded(10);
        cache.insert(1, 10);
        assert_eq!(cache.peek(&1), Some(10));
        assert_eq!(
            cache.stats().hits + cache.stats().misses,
            0,
            "peek counts nothing"
        );
        assert_eq!(cache.get_if_present(&1), Some(10));
        assert_eq!(cache.get_if_present(&2), None);
        assert_eq!(cache.get_with(2, || async { Ok(20) }).await, Ok(20));
        assert_eq!(cache.get_with(2, || async { Ok(0) }).await, Ok(20));
        assert!(cache.invalidate(&1));
        assert!(!cache.invalidate(&1));
        assert_eq!(cache.peek(&1), None);
        cache.insert(2, 21); // replaces
        assert_eq!(cache.peek(&2), Some(21));
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.weighted_size(), Some(1));
        cache.invalidate_all();
        assert!(cache.is_empty());
        assert_eq!(cache.weighted_size(), Some(0));
        let stats = cache.stats();
        assert_eq!(stats.hits, 2);
        assert_eq!(stats.misses, 2);
        assert_eq!(stats.loads_ok, 1);
        assert_eq!(stats.invalidated, 3); // invalidate, replace, invalidate_all
        assert!(stats.load_time > Duration::ZERO);
        let distinct: HashSet<u64> = [stats.hits, stats.misses].into_iter().collect();
        assert!(!distinct.is_empty());
    });
}

#[test]
fn an_insert_during_a_load_wins() {
    futures::executor::block_on(async {
        let cache: Cache<u64, u64, String> = Cache::bounded(10);
        let gate = Gate::new();
        let opened = gate.wait();
        let mut loading = cache
            .get_with(1, move || async move {
                opened.await;
                Ok(1)
            })
            .boxed();
        assert!(poll_once(&mut loading).is_pending());
        cache.insert(1, 2);
        gate.open();
        assert_eq!(loading.await, Ok(1), "its waiters get the load's value");
        assert_eq!(cache.peek(&1), Some(2), "the write wins");
        assert_eq!(cache.weighted_size(), Some(1));
    });
}

#[test]
fn a_loading_cache_loads_each_key_once() {
    futures::executor::block_on(async {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let cache = Cache::<u64, u64>::builder()
            .max_capacity(100)
            .build_with_loader(move |k: &u64| {
                counted.fetch_add(1, SeqCst);
                let k = *k;
                async move { Ok(k + 1) }
            });
        let (a, b) = futures::join!(cache.get(1), cache.get(1));
        assert_eq!((a, b), (Ok(2), Ok(2)));
        assert_eq!(cache.get(1).with_source().await, (Ok(2), Source::Hit));
        assert_eq!(calls.load(SeqCst), 1);
    });
}

/// Every value that leaves the cache reaches the listener once, with its cause, and the
/// counters agree with what the listener saw.
#[test]
fn listener_sees_every_removal_with_its_cause() {
    use deferred_cache::RemovalCause;
    use std::sync::Mutex;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    let cache: Cache<u32, u32> = Cache::builder()
        .max_capacity(2)
        .eviction_listener(move |k: &u32, v: &u32, cause| log.lock().unwrap().push((*k, *v, cause)))
        .build();
    for k in 0..3 {
        cache.insert(k, k * 10);
    }
    let evicted: Vec<_> = seen.lock().unwrap().drain(..).collect();
    assert_eq!(evicted.len(), 1, "{evicted:?}");
    assert_eq!(evicted[0].2, RemovalCause::Size);
    let (gone, _, _) = evicted[0];
    let live: Vec<u32> = (0..3).filter(|k| *k != gone).collect();
    cache.insert(live[0], 99);
    assert!(cache.replace_if(&live[0], 98, |v| *v == 99));
    assert!(cache.expire_if(&live[1], |_| true));
    assert!(!cache.invalidate_if(&live[0], |v| *v == 99));
    cache.invalidate_all();
    let log: Vec<_> = seen.lock().unwrap().drain(..).collect();
    assert_eq!(
        log,
        [
            (live[0], live[0] * 10, RemovalCause::Replaced),
            (live[0], 99, RemovalCause::Replaced),
            (live[1], live[1] * 10, RemovalCause::Expired),
            (live[0], 98, RemovalCause::Explicit),
        ]
    );
    let stats = cache.stats();
    assert_eq!((stats.evicted, stats.expired, stats.invalidated), (1, 1, 3));
    assert!(cache.is_empty());
}

/// Values that leave a bounded cache by invalidation (or replacement, or expiry) rather than
/// by eviction do not pile up queue nodes in a cache that never fills: found by the soak,
/// where every write followed by an invalidate left a node (and a key clone) behind forever.
#[test]
fn invalidated_values_leave_no_queue_nodes_behind() {
    use std::sync::atomic::AtomicIsize;
    static LIVE_KEYS: AtomicIsize = AtomicIsize::new(0);
    #[derive(PartialEq, Eq, Hash, Debug)]
    struct Key(u64);
    impl Clone for Key {
        fn clone(&self) -> Self {
            LIVE_KEYS.fetch_add(1, SeqCst);
            Key(self.0)
        }
    }
    impl Drop for Key {
        fn drop(&mut self) {
            LIVE_KEYS.fetch_sub(1, SeqCst);
        }
    }
    let cache: Cache<Key, u64> = Cache::bounded(1024);
    for i in 0..100_000u64 {
        LIVE_KEYS.fetch_add(1, SeqCst); // the key made here
        cache.insert(Key(i % 100), i);
        cache.invalidate(&Key(i % 100));
        LIVE_KEYS.fetch_add(1, SeqCst); // the key made for `invalidate`, dropped there
    }
    assert!(cache.is_empty());
    assert_eq!(cache.weighted_size(), Some(0));
    // Each clone the cache keeps (map key, queue node) counts one; 100 000 writes must not
    // leave anywhere near that many behind.
    let live = LIVE_KEYS.load(SeqCst);
    assert!(
        live <= 256,
        "{live} key clones still alive after 100 000 insert + invalidate"
    );
}
