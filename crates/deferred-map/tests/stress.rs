//! A seeded randomized stress run: many tasks, many keys, random operations with errors,
//! panics and cancellations. Invariants: at most one computation per key is running (being
//! polled) at any moment, every caller finishes, and no computation outlives the map's
//! entries. `STRESS_OPS` (per task) scales it up.

#![allow(clippy::std_instead_of_core)] // tests run on std; `core::` paths matter in the library only.

use std::{
    panic::AssertUnwindSafe,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst},
        mpsc, Arc,
    },
    task::Poll,
    time::Duration,
};

use deferred_map::{DeferredMap, Error};
use futures::FutureExt;

/// xorshift64*: a small deterministic generator, so a failure can be replayed by seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Counts one thing for as long as it lives, however it ends, and flags a second one.
struct Counted<'a>(&'a AtomicUsize);

impl<'a> Counted<'a> {
    fn start(counter: &'a AtomicUsize, violated: Option<&AtomicBool>) -> Self {
        if counter.fetch_add(1, SeqCst) != 0 {
            if let Some(violated) = violated {
                violated.store(true, SeqCst);
            }
        }
        Counted(counter)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

struct Shared {
    map: DeferredMap<u64, u64, String>,
    /// Per key: computations being polled right now.
    polling: Vec<AtomicUsize>,
    violated: AtomicBool,
    /// Computations started and not yet dropped.
    alive: AtomicUsize,
    runs: AtomicUsize,
}

/// What the computations' panics say (they are expected).
const EXPECTED_PANIC: &str = "computation panics at";

/// A computation for `key` that yields a few times, then succeeds, fails or panics. Each of
/// its polls is counted in `polling[key]`.
async fn compute(shared: Arc<Shared>, key: u64, mode: u64, yields: u64) -> Result<u64, String> {
    let _alive = Counted(&shared.alive);
    shared.alive.fetch_add(1, SeqCst);
    shared.runs.fetch_add(1, SeqCst);
    let mut yielded = 0;
    futures::future::poll_fn(|cx| {
        let _polling = Counted::start(&shared.polling[key as usize], Some(&shared.violated));
        if yielded < yields {
            yielded += 1;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        Poll::Ready(match mode {
            0 => Err(format!("error at {key}")),
            1 => panic!("{EXPECTED_PANIC} {key}"),
            _ => Ok(key * 10),
        })
    })
    .await
}

async fn task(shared: Arc<Shared>, seed: u64, ops: usize, keys: u64) {
    let mut rng = Rng(seed | 1);
    for _ in 0..ops {
        let key = rng.below(keys);
        let mode = rng.below(10);
        let yields = rng.below(3);
        match rng.below(8) {
            // Get-or-add, awaited to the end (the common case).
            0..=3 => {
                let s = shared.clone();
                let get = shared
                    .map
                    .get_or_add_with(key, move || compute(s, key, mode, yields));
                match AssertUnwindSafe(get).catch_unwind().await {
                    Ok(Ok(v)) => assert_eq!(v, key * 10),
                    Ok(Err(Error::Failed(e))) => assert_eq!(e, format!("error at {key}")),
                    Ok(Err(Error::Panicked | Error::Cancelled)) | Err(_) => {}
                }
            }
            // A caller that gives up after one poll.
            4 => {
                let s = shared.clone();
                let mut get = Box::pin(
                    shared
                        .map
                        .get_or_add_with(key, move || compute(s, key, mode, yields)),
                );
                let _ = AssertUnwindSafe(futures::future::poll_fn(|cx| {
                    Poll::Ready(get.as_mut().poll_unpin(cx))
                }))
                .catch_unwind()
                .await;
            }
            5 => drop(shared.map.try_get(&key)),
            6 => drop(shared.map.remove_if_completed(&key)),
            _ => drop(shared.map.add_value(key, key * 10)),
        }
    }
}

#[test]
fn seeded_stress_keeps_single_flight_and_finishes() {
    let tasks = if cfg!(miri) { 4 } else { 64 };
    let keys: u64 = if cfg!(miri) { 8 } else { 10_000 };
    let ops: usize = std::env::var("STRESS_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if cfg!(miri) { 20 } else { 2_000 });
    let shared = Arc::new(Shared {
        map: DeferredMap::new(),
        polling: (0..keys).map(|_| AtomicUsize::new(0)).collect(),
        violated: AtomicBool::new(false),
        alive: AtomicUsize::new(0),
        runs: AtomicUsize::new(0),
    });
    // The computations' panics are expected; keep the output readable (any other panic prints).
    deferred_test_support::quiet_panics_containing(EXPECTED_PANIC);
    // Four scoped threads, each running its share of the tasks to the end: every thread is
    // joined before the test returns (miri checks that no thread outlives `main`).
    let (done_tx, done_rx) = mpsc::channel();
    let finished = std::thread::scope(|s| {
        for i in 0..4 {
            let (shared, done_tx) = (shared.clone(), done_tx.clone());
            s.spawn(move || {
                let mine = (i..tasks).step_by(4).map(|t| {
                    let (shared, done_tx) = (shared.clone(), done_tx.clone());
                    async move {
                        task(shared, 0x9e37_79b9_7f4a_7c15 ^ (t as u64 + 1), ops, keys).await;
                        done_tx.send(()).unwrap();
                    }
                });
                futures::executor::block_on(futures::future::join_all(mine));
            });
        }
        for finished in 0..tasks {
            // A time-out only bounds a hang; it orders nothing. A hung thread cannot be
            // joined, so the process ends here with the message.
            if done_rx.recv_timeout(Duration::from_secs(120)).is_err() {
                eprintln!("only {finished} of {tasks} tasks finished: a caller hangs");
                std::process::abort();
            }
        }
        tasks
    });
    assert_eq!(finished, tasks);
    assert!(
        !shared.violated.load(SeqCst),
        "two computations of one key ran at once"
    );
    assert!(shared.runs.load(SeqCst) > 0);
    // Every computation still alive belongs to an entry (a stored `add_value` race aside,
    // entries keep theirs only while pending): clearing the map drops them all.
    shared.map.clear();
    assert_eq!(
        shared.alive.load(SeqCst),
        0,
        "a computation outlived its entry"
    );
}
