//! A seeded randomized stress run of the cache: 64 tasks on a two-worker tokio runtime,
//! 10 000 keys (half the draws from 32 hot ones, so that loads collide), a bounded cache (so
//! that eviction runs), loaders that succeed, fail or panic, at once or after yielding, and
//! callers that await, give up after a few polls, or stall and are finished or dropped later.
//! `STRESS_OPS` (per task) scales it up; `STRESS_SEED` picks another seed.
//!
//! Two phases, each on a fresh cache:
//!
//! * **A**, `get_with` only: single flight. No load of a key is polled while another load of
//!   the same key is polled, nor after a newer load of that key started (a load that all its
//!   callers abandoned may still be being dropped when the next one starts, but it is never
//!   polled again). At the end, every entry is a value some load produced and no eviction
//!   removed (`len == loads_ok - evicted`), and every value is counted against capacity.
//! * **B**, everything: `get_with` as in A, plus `insert`, `peek`, `get_if_present` and
//!   `invalidate` (which may start a new load while callers still drive the old one, so A's
//!   single-flight check does not apply).
//!
//! Both phases check: every caller finishes (a 120 s bound fails the test otherwise); every
//! value read is the key's own; each loader panic unwinds out of exactly one poll, of a
//! caller of that key (so no other caller of the load unwinds: they end, with
//! `LoadError::Panicked`); a `Loaded` caller gets its own loader's outcome (value, its own
//! error, or `Panicked` when its panic unwound out of another caller's poll) and a `Joined`
//! one an outcome of its key; `Cancelled` and `Reentrant` never occur; the counters match
//! what the loaders and callers saw; at the end no load is left alive or held by the cache,
//! nothing is pending (every key has its value or is absent), and the cache is within
//! capacity with every value counted.

#![allow(clippy::std_instead_of_core)] // tests run on std; `core::` paths matter in the library only.

use std::{
    any::Any,
    collections::{HashSet, VecDeque},
    future::Future,
    panic::AssertUnwindSafe,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst},
        mpsc, Arc, Mutex,
    },
    task::Poll,
    time::{Duration, Instant},
};

use deferred_cache::{Cache, LoadError, Source};
use futures::FutureExt;

const TASKS: u64 = 64;
const KEYS: u64 = 10_000;
/// Keys that half the draws come from, so that callers meet on the same loads.
const HOT: u64 = 32;
const CAPACITY: u64 = 1_000;
/// Stalled callers a task holds at most before it finishes or drops the oldest.
const STALLED: usize = 4;
/// Bounds a hang; orders nothing.
const DEADLINE: Duration = Duration::from_secs(120);

/// splitmix64: a small deterministic generator, so that a task's operations can be replayed
/// by seed (their interleaving across threads cannot).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn coin(&mut self) -> bool {
        self.next() & 1 == 0
    }
}

/// The value every load and insert of `key` produces: one-to-one, so that another key's
/// value never passes for this one's.
fn value_of(key: u64) -> u64 {
    key.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5555_5555
}

/// A load's number as `task.op`, for messages.
fn show(load: u64) -> String {
    format!("{}.{}", (load >> 32).wrapping_sub(1), load & 0xffff_ffff)
}

/// A loader's error: whose key, and which load.
#[derive(Debug, PartialEq, Eq)]
struct Fail {
    key: u64,
    load: u64,
}

/// A loader's panic payload.
#[derive(Debug)]
struct LoaderPanic {
    key: u64,
    load: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Plan {
    Ok,
    Fail,
    Panic,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// `get_with` only.
    A,
    /// Everything.
    B,
}

/// What the loaders saw, shared by them all. Kept apart from the cache: a loader holds this,
/// and the cache holds loaders.
struct Probe {
    /// Phase A: check single flight.
    single_flight: bool,
    /// Per key: loads being polled right now.
    polling: Vec<AtomicUsize>,
    /// Per key: the last load started (0: none yet).
    current: Vec<AtomicU64>,
    /// Loads started (first polled) and not yet ended or dropped.
    alive: AtomicUsize,
    started: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
    /// Panics raised by loaders, and loaders dropped while unwinding.
    raised: AtomicU64,
    panicked: AtomicU64,
    /// Loaders dropped before they ended, not unwinding: cancelled.
    dropped: AtomicU64,
    violations: Mutex<(u64, Vec<String>)>,
}

impl Probe {
    fn new(single_flight: bool) -> Self {
        Probe {
            single_flight,
            polling: (0..KEYS).map(|_| AtomicUsize::new(0)).collect(),
            current: (0..KEYS).map(|_| AtomicU64::new(0)).collect(),
            alive: AtomicUsize::new(0),
            started: AtomicU64::new(0),
            ok: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            raised: AtomicU64::new(0),
            panicked: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            violations: Mutex::new((0, Vec::new())),
        }
    }

    /// Records a broken invariant (never panics: called from `Drop` too). The test fails at
    /// the end, listing the first few.
    fn violation(&self, what: String) {
        let mut v = self.violations.lock().unwrap_or_else(|e| e.into_inner());
        v.0 += 1;
        if v.1.len() < 20 {
            v.1.push(what);
        }
    }

    /// Marks load `load` of `key` as being polled until the guard drops.
    fn enter(&self, key: u64, load: u64) -> Polling<'_> {
        let before = self.polling[key as usize].fetch_add(1, SeqCst);
        if self.single_flight {
            if before != 0 {
                self.violation(format!(
                    "key {key}: load {} polled while another load of it was",
                    show(load)
                ));
            }
            let current = self.current[key as usize].load(SeqCst);
            if current != load {
                self.violation(format!(
                    "key {key}: load {} polled after a newer load ({}) started",
                    show(load),
                    show(current)
                ));
            }
        }
        Polling {
            probe: self,
            key,
            load,
        }
    }
}

struct Polling<'a> {
    probe: &'a Probe,
    key: u64,
    load: u64,
}

impl Drop for Polling<'_> {
    fn drop(&mut self) {
        let (probe, key, load) = (self.probe, self.key, self.load);
        if probe.single_flight {
            let current = probe.current[key as usize].load(SeqCst);
            if current != load {
                probe.violation(format!(
                    "key {key}: load {} started while load {} was being polled",
                    show(current),
                    show(load)
                ));
            }
        }
        probe.polling[key as usize].fetch_sub(1, SeqCst);
    }
}

/// One load's life, from its first poll to its end or drop.
struct Life {
    probe: Arc<Probe>,
    ended: bool,
}

impl Life {
    fn start(probe: Arc<Probe>, key: u64, load: u64) -> Self {
        probe.started.fetch_add(1, SeqCst);
        probe.alive.fetch_add(1, SeqCst);
        probe.current[key as usize].store(load, SeqCst);
        Life {
            probe,
            ended: false,
        }
    }

    fn end(&mut self, key: u64, load: u64, plan: Plan) -> Result<u64, Fail> {
        match plan {
            Plan::Ok => {
                self.ended = true;
                self.probe.ok.fetch_add(1, SeqCst);
                Ok(value_of(key))
            }
            Plan::Fail => {
                self.ended = true;
                self.probe.failed.fetch_add(1, SeqCst);
                Err(Fail { key, load })
            }
            Plan::Panic => {
                self.probe.raised.fetch_add(1, SeqCst);
                std::panic::panic_any(LoaderPanic { key, load })
            }
        }
    }
}

impl Drop for Life {
    fn drop(&mut self) {
        if !self.ended {
            if std::thread::panicking() {
                self.probe.panicked.fetch_add(1, SeqCst);
            } else {
                self.probe.dropped.fetch_add(1, SeqCst);
            }
        }
        self.probe.alive.fetch_sub(1, SeqCst);
    }
}

/// Load number `load` of `key`: yields `yields` times (`tokio::task::yield_now`), then ends
/// as `plan` says.
async fn loader(
    probe: Arc<Probe>,
    key: u64,
    load: u64,
    plan: Plan,
    yields: u64,
) -> Result<u64, Fail> {
    let mut life = Life::start(Arc::clone(&probe), key, load);
    let mut step = 0;
    loop {
        {
            let _polling = probe.enter(key, load);
            if step == yields {
                return life.end(key, load, plan);
            }
        }
        step += 1;
        tokio::task::yield_now().await;
    }
}

struct Shared {
    cache: Cache<u64, u64, Fail>,
    probe: Arc<Probe>,
}

type Outcome = (Result<u64, LoadError<Fail>>, Source);

/// A caller put aside after its first poll: key, plan, its load's number, the future.
type Held<'a> = (
    u64,
    Plan,
    u64,
    Pin<Box<dyn Future<Output = Outcome> + Send + 'a>>,
);

/// What one task's callers saw.
#[derive(Default, Debug)]
struct Tally {
    /// Reads (`get_with` first polls and `get_if_present`) that hit, and that missed.
    hits: u64,
    misses: u64,
    /// Loader panics that unwound out of this task's polls, by load number.
    caught: Vec<u64>,
    /// `get_if_present` calls that missed (they count a miss, but start no load).
    present_misses: u64,
    inserts: u64,
    /// `invalidate` calls that removed an entry.
    invalidations: u64,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.hits += other.hits;
        self.misses += other.misses;
        self.caught.extend(other.caught);
        self.present_misses += other.present_misses;
        self.inserts += other.inserts;
        self.invalidations += other.invalidations;
    }
}

enum Polled<T> {
    Ready(T),
    Pending,
    Unwound(Box<dyn Any + Send>),
}

/// Polls `fut` once (the waker is the task's), catching a panic out of the poll.
async fn poll_catch<F: Future + Unpin>(fut: &mut F) -> Polled<F::Output> {
    match AssertUnwindSafe(futures::future::poll_fn(|cx| {
        Poll::Ready(fut.poll_unpin(cx))
    }))
    .catch_unwind()
    .await
    {
        Ok(Poll::Ready(out)) => Polled::Ready(out),
        Ok(Poll::Pending) => Polled::Pending,
        Err(payload) => Polled::Unwound(payload),
    }
}

/// Awaits `fut` to its end, catching a panic out of any of its polls.
async fn finish<F: Future + Unpin>(fut: &mut F) -> Result<F::Output, Box<dyn Any + Send>> {
    AssertUnwindSafe(fut).catch_unwind().await
}

fn message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else if let Some(p) = payload.downcast_ref::<LoaderPanic>() {
        format!("{p:?}")
    } else {
        "(a non-string panic)".to_string()
    }
}

impl Shared {
    /// Checks what a caller of `key`, whose own loader would have been load `load` ending
    /// as `plan`, got.
    fn check(&self, key: u64, plan: Plan, load: u64, (result, source): Outcome) {
        let fine = match (&result, source) {
            (Ok(v), _) => *v == value_of(key) && (source != Source::Loaded || plan == Plan::Ok),
            (Err(_), Source::Hit) => false,
            (Err(LoadError::Failed(f)), Source::Loaded) => {
                plan == Plan::Fail && **f == Fail { key, load }
            }
            (Err(LoadError::Failed(f)), Source::Joined) => f.key == key && f.load != load,
            (Err(LoadError::Panicked), Source::Loaded) => plan == Plan::Panic,
            (Err(LoadError::Panicked), Source::Joined) => true,
            (Err(_), _) => false, // `Cancelled`, `Reentrant`
        };
        if !fine {
            self.probe.violation(format!(
                "key {key} (own load {}, {plan:?}): got {result:?} from {source:?}",
                show(load)
            ));
        }
    }

    /// Checks a panic that unwound out of a poll of a caller of `key`: it must be a loader's
    /// panic, from a load of that key.
    fn check_unwind(&self, key: u64, payload: &(dyn Any + Send), tally: &mut Tally) {
        match payload.downcast_ref::<LoaderPanic>() {
            Some(p) if p.key == key => tally.caught.push(p.load),
            Some(p) => self.probe.violation(format!(
                "a panic from a loader of key {} unwound out of a caller of key {key}",
                p.key
            )),
            None => self.probe.violation(format!(
                "a caller of key {key} unwound with a panic no loader raised: {}",
                message(payload)
            )),
        }
    }

    /// Finishes (or drops) a stalled caller.
    async fn settle_held(&self, held: Held<'_>, rng: &mut Rng, tally: &mut Tally) {
        let (key, plan, load, mut fut) = held;
        if rng.coin() {
            match finish(&mut fut).await {
                Ok(out) => self.check(key, plan, load, out),
                Err(payload) => self.check_unwind(key, &*payload, tally),
            }
        } else {
            drop(fut);
        }
    }

    /// One `get_with` caller: awaits (`how` 0), gives up after `how` polls (1..=3), or
    /// stalls (`how` 4).
    async fn get<'a>(
        &'a self,
        key: u64,
        load: u64,
        rng: &mut Rng,
        how: u64,
        held: &mut VecDeque<Held<'a>>,
        tally: &mut Tally,
    ) {
        let plan = match rng.below(10) {
            0..=5 => Plan::Ok,
            6..=8 => Plan::Fail,
            _ => Plan::Panic,
        };
        let yields = if rng.coin() { 0 } else { 1 + rng.below(3) };
        let probe = Arc::clone(&self.probe);
        let mut fut = self
            .cache
            .get_with(key, move || loader(probe, key, load, plan, yields))
            .with_source();
        // The first poll decides hit or miss.
        match poll_catch(&mut fut).await {
            Polled::Ready(out) => {
                if out.1 == Source::Hit {
                    tally.hits += 1;
                } else {
                    tally.misses += 1;
                }
                return self.check(key, plan, load, out);
            }
            Polled::Unwound(payload) => {
                tally.misses += 1;
                return self.check_unwind(key, &*payload, tally);
            }
            Polled::Pending => tally.misses += 1,
        }
        match how {
            0 => match finish(&mut fut).await {
                Ok(out) => self.check(key, plan, load, out),
                Err(payload) => self.check_unwind(key, &*payload, tally),
            },
            1..=3 => {
                for _ in 1..how {
                    tokio::task::yield_now().await;
                    match poll_catch(&mut fut).await {
                        Polled::Ready(out) => return self.check(key, plan, load, out),
                        Polled::Unwound(payload) => {
                            return self.check_unwind(key, &*payload, tally)
                        }
                        Polled::Pending => {}
                    }
                }
                drop(fut); // cancelled
            }
            _ => {
                held.push_back((key, plan, load, Box::pin(fut)));
                if held.len() > STALLED {
                    let oldest = held.pop_front().expect("more than STALLED held");
                    self.settle_held(oldest, rng, tally).await;
                }
            }
        }
    }

    async fn task(&self, phase: Phase, seed: u64, index: u64, ops: u64) -> Tally {
        let mut rng = Rng(seed ^ index.wrapping_mul(0xd1b5_4a32_d192_ed03));
        let mut tally = Tally::default();
        let mut held: VecDeque<Held<'_>> = VecDeque::new();
        for op in 0..ops {
            let key = if rng.coin() {
                rng.below(HOT)
            } else {
                rng.below(KEYS)
            };
            // Unique per call, never 0.
            let load = ((index + 1) << 32) | op;
            let pick = rng.below(100);
            match (phase, pick) {
                (Phase::A, 0..=64) | (Phase::B, 0..=39) => {
                    self.get(key, load, &mut rng, 0, &mut held, &mut tally)
                        .await;
                }
                (Phase::A, 65..=84) | (Phase::B, 40..=49) => {
                    let polls = 1 + rng.below(3);
                    self.get(key, load, &mut rng, polls, &mut held, &mut tally)
                        .await;
                }
                (Phase::A, _) | (Phase::B, 50..=54) => {
                    self.get(key, load, &mut rng, 4, &mut held, &mut tally)
                        .await;
                }
                (Phase::B, 55..=66) => {
                    self.cache.insert(key, value_of(key));
                    tally.inserts += 1;
                }
                (Phase::B, 67..=76) => {
                    if let Some(v) = self.cache.peek(&key) {
                        if v != value_of(key) {
                            self.probe.violation(format!("peek of key {key} gave {v}"));
                        }
                    }
                }
                (Phase::B, 77..=86) => match self.cache.get_if_present(&key) {
                    Some(v) => {
                        tally.hits += 1;
                        if v != value_of(key) {
                            self.probe
                                .violation(format!("get_if_present of key {key} gave {v}"));
                        }
                    }
                    None => {
                        tally.misses += 1;
                        tally.present_misses += 1;
                    }
                },
                (Phase::B, _) => tally.invalidations += u64::from(self.cache.invalidate(&key)),
            }
        }
        while let Some(h) = held.pop_front() {
            self.settle_held(h, &mut rng, &mut tally).await;
        }
        tally
    }
}

/// Silences the panic hook for loader panics (expected, and many); any other panic prints.
fn quiet_loader_panics() {
    deferred_test_support::quiet_panics_of::<LoaderPanic>();
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| {
        let v = v.trim();
        match v.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16).ok(),
            None => v.parse().ok(),
        }
    })
}

fn run(phase: Phase) {
    quiet_loader_panics();
    let ops = env_u64("STRESS_OPS").unwrap_or(if cfg!(miri) { 20 } else { 20_000 });
    let seed = env_u64("STRESS_SEED").unwrap_or(0x5eed_cafe_f00d_d00d);
    let ctx = format!("phase {phase:?}, STRESS_SEED={seed:#x}, STRESS_OPS={ops}");
    let probe = Arc::new(Probe::new(phase == Phase::A));
    let shared = Arc::new(Shared {
        cache: Cache::bounded(CAPACITY),
        probe: Arc::clone(&probe),
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("a tokio runtime");
    let began = Instant::now();
    let (done_tx, done_rx) = mpsc::channel();
    let handles: Vec<_> = (0..TASKS)
        .map(|index| {
            let (shared, done_tx) = (Arc::clone(&shared), done_tx.clone());
            rt.spawn(async move {
                let tally = AssertUnwindSafe(shared.task(phase, seed, index, ops))
                    .catch_unwind()
                    .await
                    .map_err(|payload| message(&*payload));
                done_tx.send(tally).expect("the test waits for every task");
            })
        })
        .collect();
    let mut tally = Tally::default();
    for finished in 0..TASKS {
        // The deadline only bounds a hang; it orders nothing.
        match done_rx.recv_timeout(DEADLINE.saturating_sub(began.elapsed())) {
            Ok(Ok(t)) => tally.merge(t),
            Ok(Err(msg)) => {
                rt.shutdown_background();
                panic!("{ctx}: a task panicked: {msg}");
            }
            Err(_) => {
                rt.shutdown_background();
                panic!("{ctx}: only {finished} of {TASKS} tasks finished in {DEADLINE:?}: a caller hangs");
            }
        }
    }
    rt.block_on(async {
        for h in handles {
            h.await.expect("the task sent its tally, then ended");
        }
    });
    drop(rt);
    let took = began.elapsed();

    let cache = &shared.cache;
    let stats = cache.stats();
    eprintln!("{ctx}: {took:?}, {stats:?}, len {}", cache.len());
    {
        let v = probe.violations.lock().unwrap();
        assert!(
            v.0 == 0,
            "{ctx}: {} violations, the first ones:\n{}",
            v.0,
            v.1.join("\n")
        );
    }

    // Panics: each loader panic unwound out of exactly one poll, and was counted.
    let raised = probe.raised.load(SeqCst);
    let caught: HashSet<u64> = tally.caught.iter().copied().collect();
    assert_eq!(
        caught.len(),
        tally.caught.len(),
        "{ctx}: a loader panic unwound out of two polls"
    );
    assert_eq!(
        tally.caught.len() as u64,
        raised,
        "{ctx}: loader panics raised vs unwound out of a caller's poll"
    );
    assert_eq!(
        probe.panicked.load(SeqCst),
        raised,
        "{ctx}: loaders dropped while unwinding vs panics raised"
    );

    // Loads: the cache counted what the loaders did.
    assert_eq!(
        probe.alive.load(SeqCst),
        0,
        "{ctx}: a load outlived every caller"
    );
    assert_eq!(
        stats.loads(),
        probe.started.load(SeqCst),
        "{ctx}: loads counted vs started"
    );
    assert_eq!(stats.loads_ok, probe.ok.load(SeqCst), "{ctx}: loads_ok");
    assert_eq!(
        stats.loads_failed,
        probe.failed.load(SeqCst),
        "{ctx}: loads_failed"
    );
    assert_eq!(stats.loads_panicked, raised, "{ctx}: loads_panicked");
    assert_eq!(
        stats.loads_cancelled,
        probe.dropped.load(SeqCst),
        "{ctx}: loads_cancelled"
    );
    // Every caller was polled at least once, so each of its misses either started a load
    // that was polled (and so counted when it ended) or joined one; `get_if_present` misses
    // start nothing.
    assert_eq!(
        stats.misses - stats.coalesced,
        stats.loads() + tally.present_misses,
        "{ctx}: misses - coalesced vs loads + get_if_present misses"
    );
    assert_eq!(
        (stats.hits, stats.misses),
        (tally.hits, tally.misses),
        "{ctx}: (hits, misses)"
    );
    // Nothing holds a loader any more (a stored one would hold the probe).
    assert_eq!(
        Arc::strong_count(&probe),
        2,
        "{ctx}: the cache still holds a loader"
    );

    // Nothing pending: every key has a value (its own) or is absent.
    let mut values = 0;
    for key in 0..KEYS {
        if let Some(v) = cache.peek(&key) {
            assert_eq!(v, value_of(key), "{ctx}: key {key} holds another value");
            assert!(
                cache.contains_key(&key),
                "{ctx}: key {key}: peek and contains_key disagree"
            );
            values += 1;
        }
    }
    assert_eq!(
        cache.len(),
        values,
        "{ctx}: entries left that are not values (pending or failed)"
    );
    assert!(
        cache.len() as u64 <= CAPACITY,
        "{ctx}: {} entries over a capacity of {CAPACITY}",
        cache.len()
    );
    assert_eq!(
        cache.weighted_size(),
        Some(cache.len() as u64),
        "{ctx}: weighted size vs entries"
    );
    match phase {
        Phase::A => {
            assert_eq!(
                stats.invalidated, 0,
                "{ctx}: invalidated without invalidations"
            );
            assert_eq!(
                cache.len() as u64,
                stats.loads_ok - stats.evicted,
                "{ctx}: entries vs loads_ok - evicted"
            );
        }
        Phase::B => {
            assert!(
                (tally.invalidations..=tally.invalidations + tally.inserts)
                    .contains(&stats.invalidated),
                "{ctx}: invalidated {} outside {}..={} (invalidations..=invalidations + inserts)",
                stats.invalidated,
                tally.invalidations,
                tally.invalidations + tally.inserts
            );
        }
    }

    if ops >= 500 {
        // The run exercised what it is for.
        assert!(
            stats.coalesced > 0
                && stats.loads_panicked > 0
                && stats.loads_cancelled > 0
                && stats.evicted > 0,
            "{ctx}: a weak run: {stats:?}"
        );
    }
}

#[test]
fn phase_a_get_with_only_keeps_single_flight() {
    run(Phase::A);
}

#[test]
fn phase_b_all_operations() {
    run(Phase::B);
}
