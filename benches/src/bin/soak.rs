//! The soak: every layer of the workspace under random load for a while, with loaders that
//! fail, panic and stall, callers that are dropped mid-load or stop polling, and a manual clock
//! that jumps forwards and backwards. Run it with `cargo xtask soak --minutes N [--threads T]
//! [--seed S] [--layers core,map,cache,expiring]` (release build); it is not part of `ci`.
//!
//! # What runs
//!
//! `T` worker tasks (default: 32 per CPU) on a tokio multi-thread runtime (one thread per
//! CPU) loop until the deadline, each picking a random layer (among `--layers`, all by
//! default) and a random operation on the structures all workers share, which are filled to
//! their working size before the start:
//!
//! * **core**: a `Deferred` completed (value, error, cancel, die, dropped producer) while up
//!   to 16 owned waiters wait, with `on_complete` callbacks; `get_or_try_init` raced by up to 8
//!   initializers that fail, panic or are dropped; `Lazy` cells awaited by many, aborted,
//!   completed from outside, or given their computation late (`try_attach`).
//! * **map**: one `DeferredMap`: `get_or_add_with` bursts, `insert`, `add_value`, `remove`,
//!   `try_get`; on keys private to each worker, `wait` waiters that are then served by
//!   `add_value` or all give up (a `wait` placeholder that someone else's `insert` or `remove`
//!   replaced would strand its waiters, as documented, so those keys are not shared), and
//!   sequential read-your-write checks.
//! * **cache**: one bounded `Cache` (1 024 entries over 4 096 keys): `get_with` bursts,
//!   `get_if_present`, `peek`, `insert`, `invalidate`, rarely `invalidate_all`.
//! * **expiring**: an `ExpiringCache` on a `ManualClock` (TTL 5 s, TTI 2 s, errors cached
//!   500 ms, refresh after 1 s, maintenance budget 64, 2 048 entries) that a dedicated task
//!   moves every millisecond: forward 0-50 ms, 1 % of the time back by up to 1 s, 0.2 % forward
//!   by 10-30 s; an `ExpiringLoadingCache` on the system clock (TTL 50 ms, errors cached
//!   10 ms, refresh after 20 ms on a tokio spawner); `ExpiringRef`s (use-counted, timed on
//!   either clock) raced by several tasks.
//!
//! Every loader sleeps, yields or returns at once, then succeeds (80 %), fails (14 %) or
//! panics (6 %). Every caller runs in its own task and is, at random, awaited normally (70 %),
//! dropped by a 0-5 ms timeout (15 %), or stalled: polled once, left alone 1-30 ms, then
//! dropped or resumed (15 %).
//!
//! # What is checked (any failure makes the exit status non-zero)
//!
//! * No caller hangs: each is joined with a 20 s limit; at the end callers started = finished
//!   + dropped (deliberately) + panicked (a loader's panic unwinding through its poll).
//! * No panic escapes but the soak's own (`DeliberatePanic` payloads); no violation of what
//!   the layers promise: values belong to their key, every waiter of a cell sees its one
//!   outcome, at most one initializer completes a cell, exactly `n` uses of a use-counted
//!   `ExpiringRef`, no use after expiry was observed, no `Cancelled`/`Reentrant` load errors.
//! * Counters agree: every loader future made was finished or dropped; the cache's
//!   `loads_ok/failed/panicked/cancelled` equal what the loaders themselves counted, and
//!   misses − coalesced = loads + empty `get_if_present` reads; every refresh started ended.
//! * Nothing is left behind: no pending or failed entry in the map once callers are gone;
//!   after clearing, every structure has `len() == 0` and the expiring caches `timers() == 0`
//!   (once their clocks pass every deadline); the bounded cache's `weighted_size` matches.
//! * Memory is flat: VmRSS (Linux, `/proc/self/status`; no custom allocator, as the crates
//!   outside `deferred-core` have no `unsafe`) at the end of the run is at most
//!   [`RSS_GROWTH_LIMIT`] (20 %) above VmRSS right after the warm-up (10 % of the run, 5 to
//!   60 s). The structures are at their working size by then, so what grows after is a leak
//!   (or fragmentation). The middle sample is reported too; off Linux the check is skipped.
//!
//! The seed fixes each worker's sequence of operations (printed at the start; pass it back with
//! `--seed` to replay), not the interleaving of threads.

#![forbid(unsafe_code)]
// A `std` program: tokio, threads, /proc.
#![allow(clippy::std_instead_of_core, clippy::alloc_instead_of_core)]

use std::collections::hash_map::RandomState;
use std::fmt::Write as _;
use std::future::{poll_fn, Future};
use std::pin::pin;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use deferred_cache::{Cache, LoadError};
use deferred_core::{Deferred, Error, Lazy};
use deferred_expiring::{
    Clock, ExpiringCache, ExpiringLoadingCache, ExpiringRef, ManualClock, SystemClock, TICK,
};
use deferred_map::DeferredMap;
use tokio::task::JoinHandle;

// ----- settings -----------------------------------------------------------------------------

/// The run fails if VmRSS at the end exceeds VmRSS after the warm-up by more than this.
const RSS_GROWTH_LIMIT: f64 = 0.20;
/// A caller (or an `expired()` wait) that has not finished after this long is reported hung.
const HANG_AFTER: Duration = Duration::from_secs(20);
/// Values stored at key `k` are `k * KEY_MULT + r` with `r < KEY_MULT`: a value read at the
/// wrong key is caught.
const KEY_MULT: u64 = 1_000_000;
const MAP_KEYS: u64 = 2048;
const CACHE_CAP: u64 = 1024;
const CACHE_KEYS: u64 = 4096;
const EXP_CAP: u64 = 2048;
const EXP_KEYS: u64 = 4096;
const SYS_CAP: u64 = 1024;
const SYS_KEYS: u64 = 2048;
/// Private map keys (one small range per worker) start here.
const PRIVATE_BASE: u64 = 1 << 32;

// ----- counters -----------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layer {
    Core,
    Map,
    Cache,
    Expiring,
}

const LAYERS: [Layer; 4] = [Layer::Core, Layer::Map, Layer::Cache, Layer::Expiring];

impl Layer {
    fn name(self) -> &'static str {
        match self {
            Layer::Core => "core",
            Layer::Map => "map",
            Layer::Cache => "cache",
            Layer::Expiring => "expiring",
        }
    }
}

struct PerLayer([AtomicU64; 4]);

impl PerLayer {
    const fn new() -> Self {
        PerLayer([const { AtomicU64::new(0) }; 4])
    }
    fn add(&self, layer: Layer, n: u64) {
        self.0[layer as usize].fetch_add(n, Relaxed);
    }
    fn get(&self, layer: Layer) -> u64 {
        self.0[layer as usize].load(Relaxed)
    }
    fn total(&self) -> u64 {
        LAYERS.iter().map(|l| self.get(*l)).sum()
    }
}

static OPS: PerLayer = PerLayer::new();
static STARTED: PerLayer = PerLayer::new();
static FINISHED: PerLayer = PerLayer::new();
static DROPPED: PerLayer = PerLayer::new();
static PANICKED: PerLayer = PerLayer::new();
/// Callers whose future was dropped unfinished outside the soak's control (a hang abort).
static ABORTED: PerLayer = PerLayer::new();

static HUNG: AtomicU64 = AtomicU64::new(0);
static VIOLATIONS: AtomicU64 = AtomicU64::new(0);
static MESSAGES: Mutex<Vec<String>> = Mutex::new(Vec::new());
/// Panics raised by the soak's loaders on purpose (counted by the panic hook).
static PANICS_RAISED: AtomicU64 = AtomicU64::new(0);
/// Panics with any other payload: a bug somewhere.
static PANICS_UNEXPECTED: AtomicU64 = AtomicU64::new(0);

static CLOCK_FORWARD: AtomicU64 = AtomicU64::new(0);
static CLOCK_BACK: AtomicU64 = AtomicU64::new(0);
static CLOCK_LEAP: AtomicU64 = AtomicU64::new(0);

/// `Cache::get_if_present` calls that found nothing (each counts a miss and no load).
static CACHE_EMPTY_READS: AtomicU64 = AtomicU64::new(0);
/// `ExpiringRef` races run.
static REF_RACES: AtomicU64 = AtomicU64::new(0);

/// Seed of the loaders that run without a worker's generator (the cache-wide loader).
static LOADER_SEED: AtomicU64 = AtomicU64::new(0);

fn violation(ctx: &Ctx, what: impl std::fmt::Display) {
    let n = VIOLATIONS.fetch_add(1, Relaxed);
    let line = if ctx.worker == usize::MAX {
        format!("VIOLATION [seed {:#x}, {}]: {what}", ctx.seed, ctx.op)
    } else {
        format!(
            "VIOLATION [seed {:#x}, worker {}, op {}]: {what}",
            ctx.seed, ctx.worker, ctx.op
        )
    };
    if n < 20 {
        eprintln!("{line}");
    }
    let mut messages = MESSAGES.lock().unwrap_or_else(|p| p.into_inner());
    if messages.len() < 50 {
        messages.push(line);
    }
}

/// The panic payload of every panic the soak raises on purpose.
#[derive(Debug)]
struct DeliberatePanic;

/// What each worker's operation is, for reports.
struct Ctx {
    worker: usize,
    seed: u64,
    op: &'static str,
}

// ----- random numbers -----------------------------------------------------------------------

/// SplitMix64: small, fast, and good enough to pick operations.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed)
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn percent(&mut self) -> u64 {
        self.below(100)
    }
}

fn loader_rng() -> Rng {
    Rng::new(LOADER_SEED.fetch_add(0x9E37_79B9_7F4A_7C15, Relaxed))
}

fn value_for(key: u64, rng: &mut Rng) -> u64 {
    key * KEY_MULT + rng.below(KEY_MULT)
}

// ----- loaders ------------------------------------------------------------------------------

/// A loader's error: the key it was loading.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Fail(u64);

#[derive(Clone, Copy, Debug)]
enum Delay {
    Now,
    Yield,
    Sleep(u64),
}

#[derive(Clone, Copy, Debug)]
enum End {
    Ok,
    Err,
    Panic,
}

#[derive(Clone, Copy, Debug)]
struct Plan {
    delay: Delay,
    end: End,
    value: u64,
}

fn plan(rng: &mut Rng, key: u64) -> Plan {
    let delay = match rng.percent() {
        0..=39 => Delay::Now,
        40..=59 => Delay::Yield,
        60..=95 => Delay::Sleep(1 + rng.below(10)),
        _ => Delay::Sleep(50 + rng.below(150)),
    };
    let end = match rng.percent() {
        0..=79 => End::Ok,
        80..=93 => End::Err,
        _ => End::Panic,
    };
    Plan {
        delay,
        end,
        value: value_for(key, rng),
    }
}

async fn run_plan(key: u64, plan: Plan) -> Result<u64, Fail> {
    match plan.delay {
        Delay::Now => {}
        Delay::Yield => tokio::task::yield_now().await,
        Delay::Sleep(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
    }
    match plan.end {
        End::Ok => Ok(plan.value),
        End::Err => Err(Fail(key)),
        End::Panic => std::panic::panic_any(DeliberatePanic),
    }
}

/// What became of the loader futures of one family: every future made must, by the end, have
/// finished (ok / err), panicked, or been dropped (after or before its first poll).
struct Probes {
    name: &'static str,
    made: AtomicU64,
    started: AtomicU64,
    ok: AtomicU64,
    err: AtomicU64,
    panicked: AtomicU64,
    cancelled: AtomicU64,
    unpolled: AtomicU64,
}

impl Probes {
    const fn new(name: &'static str) -> Self {
        Probes {
            name,
            made: AtomicU64::new(0),
            started: AtomicU64::new(0),
            ok: AtomicU64::new(0),
            err: AtomicU64::new(0),
            panicked: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            unpolled: AtomicU64::new(0),
        }
    }
    fn get(&self, counter: fn(&Probes) -> &AtomicU64) -> u64 {
        counter(self).load(Relaxed)
    }
    /// Loader futures neither finished nor dropped yet.
    fn alive(&self) -> i128 {
        let ended = self.get(|p| &p.ok)
            + self.get(|p| &p.err)
            + self.get(|p| &p.panicked)
            + self.get(|p| &p.cancelled)
            + self.get(|p| &p.unpolled);
        i128::from(self.get(|p| &p.made)) - i128::from(ended)
    }
    fn summary(&self) -> String {
        format!(
            "{:<14} made {:>9}  run {:>9}  ok {:>9}  err {:>8}  panicked {:>7}  cancelled {:>7}  never polled {:>8}",
            self.name,
            self.get(|p| &p.made),
            self.get(|p| &p.started),
            self.get(|p| &p.ok),
            self.get(|p| &p.err),
            self.get(|p| &p.panicked),
            self.get(|p| &p.cancelled),
            self.get(|p| &p.unpolled),
        )
    }
}

static P_INIT: Probes = Probes::new("core init");
static P_LAZY: Probes = Probes::new("core lazy");
static P_MAP: Probes = Probes::new("map");
static P_CACHE: Probes = Probes::new("cache");
static P_EXP: Probes = Probes::new("expiring/man");
static P_SYS: Probes = Probes::new("expiring/sys");
static PROBES: [&Probes; 6] = [&P_INIT, &P_LAZY, &P_MAP, &P_CACHE, &P_EXP, &P_SYS];

#[derive(Clone, Copy)]
enum ProbeState {
    Unpolled,
    Running,
    Ended,
}

struct ProbeGuard {
    probes: &'static Probes,
    state: ProbeState,
}

impl Drop for ProbeGuard {
    fn drop(&mut self) {
        let p = self.probes;
        match self.state {
            ProbeState::Unpolled => p.unpolled.fetch_add(1, Relaxed),
            ProbeState::Running if std::thread::panicking() => p.panicked.fetch_add(1, Relaxed),
            ProbeState::Running => p.cancelled.fetch_add(1, Relaxed),
            ProbeState::Ended => 0,
        };
    }
}

/// `fut`, counted in `probes`.
fn probed<F>(probes: &'static Probes, fut: F) -> impl Future<Output = F::Output> + Send + 'static
where
    F: Future<Output = Result<u64, Fail>> + Send + 'static,
{
    probes.made.fetch_add(1, Relaxed);
    let guard = ProbeGuard {
        probes,
        state: ProbeState::Unpolled,
    };
    async move {
        // The whole guard moves in (a closure would capture only the field it writes).
        let mut guard = guard;
        guard.state = ProbeState::Running;
        probes.started.fetch_add(1, Relaxed);
        let out = fut.await;
        guard.state = ProbeState::Ended;
        match &out {
            Ok(_) => probes.ok.fetch_add(1, Relaxed),
            Err(_) => probes.err.fetch_add(1, Relaxed),
        };
        out
    }
}

// ----- callers ------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Style {
    Normal,
    /// Dropped if not done within this many microseconds.
    Timeout(u64),
    /// Polled once, then left alone for `ms`, then dropped or (if `resume`) awaited.
    Stall {
        ms: u64,
        resume: bool,
    },
}

fn style(rng: &mut Rng) -> Style {
    match rng.percent() {
        0..=69 => Style::Normal,
        70..=84 => Style::Timeout(rng.below(5000)),
        _ => Style::Stall {
            ms: 1 + rng.below(30),
            resume: rng.below(2) == 0,
        },
    }
}

/// Awaits `fut` in `style`; `None` if it was dropped on purpose.
async fn drive<F: Future>(style: Style, fut: F) -> Option<F::Output> {
    match style {
        Style::Normal => Some(fut.await),
        Style::Timeout(us) => tokio::time::timeout(Duration::from_micros(us), fut)
            .await
            .ok(),
        Style::Stall { ms, resume } => {
            let mut fut = pin!(fut);
            if let Poll::Ready(out) = poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await {
                return Some(out);
            }
            tokio::time::sleep(Duration::from_millis(ms)).await;
            if resume {
                Some(fut.await)
            } else {
                None
            }
        }
    }
}

enum CallerEnd {
    Pending,
    Finished,
    Dropped,
}

struct CallerGuard {
    layer: Layer,
    end: CallerEnd,
}

impl Drop for CallerGuard {
    fn drop(&mut self) {
        let counter = match self.end {
            CallerEnd::Finished => &FINISHED,
            CallerEnd::Dropped => &DROPPED,
            CallerEnd::Pending if std::thread::panicking() => &PANICKED,
            CallerEnd::Pending => &ABORTED,
        };
        counter.add(self.layer, 1);
    }
}

/// One caller: `fut` awaited in `style`, counted as started, and then as finished, dropped on
/// purpose, or panicked.
async fn caller<F: Future>(layer: Layer, style: Style, fut: F) -> Option<F::Output> {
    STARTED.add(layer, 1);
    let mut guard = CallerGuard {
        layer,
        end: CallerEnd::Pending,
    };
    let out = drive(style, fut).await;
    guard.end = if out.is_some() {
        CallerEnd::Finished
    } else {
        CallerEnd::Dropped
    };
    out
}

/// Joins a caller task: its output, or `None` if it panicked (on purpose; anything else is a
/// violation) or hung (reported, then aborted).
async fn join<R>(ctx: &Ctx, handle: JoinHandle<R>) -> Option<R> {
    let abort = handle.abort_handle();
    match tokio::time::timeout(HANG_AFTER, handle).await {
        Ok(Ok(out)) => Some(out),
        Ok(Err(e)) if e.is_panic() => {
            let payload = e.into_panic();
            if !payload.is::<DeliberatePanic>() {
                let text = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "(non-string payload)".into());
                violation(ctx, format!("a caller panicked: {text}"));
            }
            None
        }
        Ok(Err(e)) => {
            violation(ctx, format!("a caller task was cancelled: {e}"));
            None
        }
        Err(_) => {
            HUNG.fetch_add(1, Relaxed);
            violation(
                ctx,
                format!("a caller did not finish within {HANG_AFTER:?}: hung (aborted)"),
            );
            abort.abort();
            None
        }
    }
}

/// A short pause: nothing, a yield, or a millisecond or two.
async fn pause(rng: &mut Rng) {
    match rng.percent() {
        0..=29 => {}
        30..=79 => tokio::task::yield_now().await,
        _ => tokio::time::sleep(Duration::from_millis(1 + rng.below(2))).await,
    }
}

// ----- outcomes -----------------------------------------------------------------------------

/// A read's outcome, whatever the layer's error type.
#[derive(Debug)]
enum Outcome {
    Value(u64),
    Failed(u64),
    Panicked,
    Cancelled,
    Reentrant,
    /// Any other `LoadError` (`NotFound`, which only optional loads give, or one added
    /// later): a read here never ends so.
    Other(String),
}

impl Outcome {
    fn from_core(r: Result<u64, Error<Fail>>) -> Self {
        match r {
            Ok(v) => Outcome::Value(v),
            Err(Error::Failed(Fail(k))) => Outcome::Failed(k),
            Err(Error::Panicked) => Outcome::Panicked,
            Err(Error::Cancelled) => Outcome::Cancelled,
        }
    }
    fn from_load(r: Result<u64, LoadError<Fail>>) -> Self {
        match r {
            Ok(v) => Outcome::Value(v),
            Err(LoadError::Failed(e)) => Outcome::Failed(e.0),
            Err(LoadError::Panicked) => Outcome::Panicked,
            Err(LoadError::Cancelled) => Outcome::Cancelled,
            Err(LoadError::Reentrant) => Outcome::Reentrant,
            Err(other) => Outcome::Other(format!("{other:?}")),
        }
    }
}

fn check_value(ctx: &Ctx, key: u64, value: u64, what: &str) {
    if value / KEY_MULT != key {
        violation(
            ctx,
            format!(
                "{what}: key {key} gave value {value}, which belongs to key {}",
                value / KEY_MULT
            ),
        );
    }
}

fn check_outcome(ctx: &Ctx, key: u64, outcome: &Outcome) {
    match *outcome {
        Outcome::Value(v) => check_value(ctx, key, v, "read"),
        Outcome::Failed(k) if k != key => {
            violation(ctx, format!("key {key} failed with the error of key {k}"))
        }
        Outcome::Failed(_) | Outcome::Panicked => {}
        Outcome::Cancelled => violation(ctx, format!("key {key}: a read ended Cancelled")),
        Outcome::Reentrant => violation(ctx, format!("key {key}: a read ended Reentrant")),
        Outcome::Other(ref error) => violation(ctx, format!("key {key}: a read ended {error}")),
    }
}

/// Joins read callers of `key` and checks what each got.
async fn join_reads(ctx: &Ctx, key: u64, handles: Vec<JoinHandle<Option<Outcome>>>) {
    for handle in handles {
        if let Some(Some(outcome)) = join(ctx, handle).await {
            check_outcome(ctx, key, &outcome);
        }
    }
}

// ----- the shared structures ----------------------------------------------------------------

type ExpCache = ExpiringCache<u64, u64, Fail, RandomState, ManualClock>;
type SysCache = ExpiringLoadingCache<u64, u64, Fail>;

struct State {
    map: DeferredMap<u64, u64, Fail>,
    cache: Cache<u64, u64, Fail>,
    exp: ExpCache,
    sys: SysCache,
    clock: ManualClock,
    /// Workers stop at their next operation.
    stop: AtomicBool,
    /// The clock task stops (after the workers, whose `ExpiringRef` waits need it).
    clock_stop: AtomicBool,
}

impl State {
    fn new() -> Self {
        let clock = ManualClock::new();
        let exp = ExpiringCache::<u64, u64, Fail>::builder()
            .max_capacity(EXP_CAP)
            .time_to_live(Duration::from_secs(5))
            .time_to_idle(Duration::from_secs(2))
            .cache_errors_for(Duration::from_millis(500))
            .refresh_after(Duration::from_secs(1))
            .maintenance_budget(64)
            .clock(clock.clone())
            .build();
        let sys = ExpiringCache::<u64, u64, Fail>::builder()
            .max_capacity(SYS_CAP)
            .time_to_live(Duration::from_millis(50))
            .cache_errors_for(Duration::from_millis(10))
            .refresh_after(Duration::from_millis(20))
            .spawner(|task| {
                tokio::spawn(task);
            })
            .build_with_loader(|key: &u64| {
                let key = *key;
                let plan = plan(&mut loader_rng(), key);
                probed(&P_SYS, run_plan(key, plan))
            });
        State {
            map: DeferredMap::new(),
            cache: Cache::bounded(CACHE_CAP),
            exp,
            sys,
            clock,
            stop: AtomicBool::new(false),
            clock_stop: AtomicBool::new(false),
        }
    }

    /// Fills every structure to its working size, so that the warm-up ends at a steady state
    /// and the memory check compares like with like.
    fn fill(&self, seed: u64) {
        let mut rng = Rng::new(seed ^ 0xF111);
        for key in 0..MAP_KEYS {
            self.map.add_value(key, value_for(key, &mut rng));
        }
        for key in 0..CACHE_KEYS {
            self.cache.insert(key, value_for(key, &mut rng));
        }
        for key in 0..EXP_KEYS {
            self.exp.insert(key, value_for(key, &mut rng));
        }
        for key in 0..SYS_KEYS {
            self.sys.insert(key, value_for(key, &mut rng));
        }
    }
}

// ----- core ---------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum How {
    Succeed(u64),
    Fail,
    Cancel,
    Die,
    DropProducer,
}

fn expected(how: How, key: u64) -> Result<u64, Error<Fail>> {
    match how {
        How::Succeed(v) => Ok(v),
        How::Fail => Err(Error::Failed(Fail(key))),
        How::Cancel | How::DropProducer => Err(Error::Cancelled),
        How::Die => Err(Error::Panicked),
    }
}

fn complete(ctx: &Ctx, cell: &Deferred<u64, Fail>, how: How, key: u64) {
    let won = match how {
        How::Succeed(v) => cell.succeed(v).is_ok(),
        How::Fail => cell.fail(Fail(key)).is_ok(),
        How::Cancel => cell.cancel(),
        How::Die => cell.die(),
        How::DropProducer => cell.producer().map(drop).is_some(),
    };
    if !won {
        violation(ctx, format!("the only completer lost ({how:?})"));
    }
    if cell.succeed(0).is_ok() || cell.cancel() || cell.die() {
        violation(ctx, "a second completion won");
    }
    let seen = cell.try_get().map(|r| r.copied().map_err(|e| e.cloned()));
    if seen != Some(expected(how, key)) {
        violation(ctx, format!("try_get {seen:?} after {how:?}"));
    }
}

/// A `Deferred` with many owned waiters (some dropped, some stalled) and callbacks.
async fn core_waiters(ctx: &Ctx, rng: &mut Rng) -> u64 {
    let key = rng.below(1 << 20);
    let cell: Arc<Deferred<u64, Fail>> = Arc::new(Deferred::new());
    let how = match rng.percent() {
        0..=54 => How::Succeed(value_for(key, rng)),
        55..=69 => How::Fail,
        70..=81 => How::Cancel,
        82..=91 => How::Die,
        _ => How::DropProducer,
    };
    let callbacks = rng.below(4);
    let called = Arc::new(AtomicU64::new(0));
    for _ in 0..callbacks {
        let (called, want) = (Arc::clone(&called), expected(how, key));
        cell.on_complete(move |outcome| {
            if outcome.copied().map_err(|e| e.cloned()) == want {
                called.fetch_add(1, Relaxed);
            } else {
                called.fetch_add(1 << 32, Relaxed); // a wrong outcome: shows as a mismatch
            }
        });
    }
    let early = rng.below(10) == 0;
    if early {
        complete(ctx, &cell, how, key);
    }
    let n = 1 + rng.below(16);
    let mut handles = Vec::new();
    for _ in 0..n {
        let style = style(rng);
        let wait = Deferred::wait_owned(Arc::clone(&cell));
        handles.push(tokio::spawn(caller(Layer::Core, style, wait)));
    }
    pause(rng).await;
    if !early {
        complete(ctx, &cell, how, key);
    }
    let want = expected(how, key);
    for handle in handles {
        if let Some(Some(got)) = join(ctx, handle).await {
            if got != want {
                violation(ctx, format!("a waiter got {got:?}, the cell was {how:?}"));
            }
        }
    }
    // Callbacks run on the completing thread; give a concurrent drain a moment.
    let since = Instant::now();
    while called.load(Relaxed) != callbacks && since.elapsed() < Duration::from_secs(1) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let called = called.load(Relaxed);
    if called != callbacks {
        violation(
            ctx,
            format!(
                "{callbacks} on_complete callbacks, {called:#x} ran (high half: wrong outcome)"
            ),
        );
    }
    n + 2 + callbacks
}

/// `get_or_try_init` raced by several initializers that fail, panic, stall or are dropped.
async fn core_get_or_init(ctx: &Ctx, rng: &mut Rng) -> u64 {
    let key = rng.below(1 << 20);
    let cell: Arc<Deferred<u64, Fail>> = Arc::new(Deferred::new());
    let inits_done = Arc::new(AtomicU64::new(0));
    let n = 1 + rng.below(8);
    let mut handles = Vec::new();
    for _ in 0..n {
        let (plan, style) = (plan(rng, key), style(rng));
        let (cell, inits_done) = (Arc::clone(&cell), Arc::clone(&inits_done));
        handles.push(tokio::spawn(async move {
            let init = cell.get_or_try_init(move || {
                probed(&P_INIT, async move {
                    let r = run_plan(key, plan).await;
                    inits_done.fetch_add(1, Relaxed);
                    r
                })
            });
            caller(Layer::Core, style, init)
                .await
                .map(|r| r.copied().map_err(|e| e.cloned()))
        }));
    }
    let mut seen: Option<Result<u64, Error<Fail>>> = None;
    for handle in handles {
        if let Some(Some(got)) = join(ctx, handle).await {
            if let Ok(v) = got {
                check_value(ctx, key, v, "get_or_init");
            }
            match &seen {
                Some(first) if *first != got => violation(
                    ctx,
                    format!("get_or_init callers disagree: {first:?} and {got:?}"),
                ),
                _ => seen = Some(got),
            }
        }
    }
    let done = inits_done.load(Relaxed);
    if done > 1 {
        violation(ctx, format!("{done} initializers completed one cell"));
    }
    if (seen.is_some() || done == 1) && !cell.is_done() {
        violation(ctx, "a caller got an outcome but the cell is not complete");
    }
    n
}

/// A `Lazy` awaited by many: aborted, completed from outside, or given its computation late.
async fn core_lazy(ctx: &Ctx, rng: &mut Rng) -> u64 {
    let key = rng.below(1 << 20);
    let plan = plan(rng, key);
    let late = rng.below(4) == 0;
    let lazy: Lazy<u64, Fail> = if late {
        Lazy::pending()
    } else {
        Lazy::boxed(probed(&P_LAZY, run_plan(key, plan)))
    };
    let n = 1 + rng.below(12);
    let mut handles = Vec::new();
    for _ in 0..n {
        let style = style(rng);
        handles.push(tokio::spawn(caller(
            Layer::Core,
            style,
            lazy.clone().wait_owned(),
        )));
    }
    pause(rng).await;
    let mut ops = n + 1;
    if late
        && lazy
            .try_attach(Box::pin(probed(&P_LAZY, run_plan(key, plan))))
            .is_err()
    {
        violation(
            ctx,
            "try_attach refused on a pending cell with no computation",
        );
    }
    let mut forced: Option<Result<u64, Error<Fail>>> = None;
    match rng.percent() {
        0..=9 => {
            ops += 1;
            if lazy.abort() {
                forced = Some(Err(Error::Cancelled));
            }
        }
        10..=19 => {
            ops += 1;
            let v = value_for(key, rng);
            if lazy.succeed(v).is_ok() {
                forced = Some(Ok(v));
            }
        }
        _ => {}
    }
    let mut seen: Option<Result<u64, Error<Fail>>> = None;
    for handle in handles {
        if let Some(Some(got)) = join(ctx, handle).await {
            if let Ok(v) = got {
                check_value(ctx, key, v, "lazy");
            }
            if forced.as_ref().is_some_and(|f| *f != got) {
                violation(
                    ctx,
                    format!("a lazy awaiter got {got:?}, forced {forced:?}"),
                );
            }
            match &seen {
                Some(first) if *first != got => violation(
                    ctx,
                    format!("lazy awaiters disagree: {first:?} and {got:?}"),
                ),
                _ => seen = Some(got),
            }
        }
    }
    if let Some(first) = seen {
        let now = lazy.try_get().map(|r| r.copied().map_err(|e| e.cloned()));
        if now != Some(first.clone()) {
            violation(
                ctx,
                format!("lazy awaiters got {first:?}, the cell holds {now:?}"),
            );
        }
    }
    ops
}

async fn core_op(ctx: &mut Ctx, rng: &mut Rng) -> u64 {
    match rng.percent() {
        0..=39 => {
            ctx.op = "core/waiters";
            core_waiters(ctx, rng).await
        }
        40..=69 => {
            ctx.op = "core/get_or_init";
            core_get_or_init(ctx, rng).await
        }
        _ => {
            ctx.op = "core/lazy";
            core_lazy(ctx, rng).await
        }
    }
}

// ----- map ----------------------------------------------------------------------------------

async fn map_op(s: &Arc<State>, ctx: &mut Ctx, rng: &mut Rng) -> u64 {
    let key = rng.below(MAP_KEYS);
    let map = &s.map;
    match rng.percent() {
        0..=44 => {
            ctx.op = "map/get_or_add_with";
            let n = 1 + rng.below(6);
            let mut handles = Vec::new();
            for _ in 0..n {
                let (plan, style, s) = (plan(rng, key), style(rng), Arc::clone(s));
                handles.push(tokio::spawn(async move {
                    let get = s
                        .map
                        .get_or_add_with(key, move || probed(&P_MAP, run_plan(key, plan)));
                    caller(Layer::Map, style, get).await.map(Outcome::from_core)
                }));
            }
            join_reads(ctx, key, handles).await;
            n
        }
        45..=49 => {
            // Waiters on a key with nothing there (`wait` leaves a placeholder), on a key of
            // this worker's own: `insert` or `remove` by someone else would strand them, as
            // documented. Either the worker then adds the value, and every waiter that
            // finished must have it, or all give up, and the placeholder must be gone.
            ctx.op = "map/get";
            let key = PRIVATE_BASE + (1 << 20) + (ctx.worker as u64) * 16 + rng.below(16);
            let produce = rng.percent() < 80;
            let n = 1 + rng.below(6);
            let mut handles = Vec::new();
            for _ in 0..n {
                let style = match (produce, style(rng)) {
                    (false, Style::Normal | Style::Stall { resume: true, .. }) => {
                        Style::Timeout(rng.below(3000))
                    }
                    (_, style) => style,
                };
                let s = Arc::clone(s);
                handles.push(tokio::spawn(async move {
                    caller(Layer::Map, style, s.map.wait(key)).await
                }));
            }
            pause(rng).await;
            let v = value_for(key, rng);
            if produce {
                map.add_value(key, v);
            }
            for handle in handles {
                match join(ctx, handle).await {
                    Some(Some(got)) if !produce || got != Ok(v) => violation(
                        ctx,
                        format!(
                            "a get waiter on private key {key} got {got:?} (added: {produce}, {v})"
                        ),
                    ),
                    _ => {}
                }
            }
            if produce {
                drop(map.remove(&key));
            } else if map.cell_if_present(&key).is_some() {
                violation(
                    ctx,
                    format!("private key {key}: placeholder left after every waiter gave up"),
                );
            }
            n + 2
        }
        50..=64 => {
            ctx.op = "map/insert";
            drop(map.insert(key, Lazy::ready(value_for(key, rng))));
            1
        }
        65..=72 => {
            ctx.op = "map/add_value";
            map.add_value(key, value_for(key, rng));
            1
        }
        73..=82 => {
            ctx.op = "map/remove";
            drop(map.remove(&key));
            1
        }
        83..=92 => {
            ctx.op = "map/try_get";
            match map.try_get(&key) {
                Some(Ok(v)) => check_value(ctx, key, v, "map try_get"),
                Some(Err(Error::Failed(Fail(k)))) if k != key => {
                    violation(ctx, format!("map try_get of {key}: error of key {k}"))
                }
                _ => {}
            }
            1
        }
        _ => {
            ctx.op = "map/private";
            // A key only this worker touches: sequential semantics must hold exactly.
            let key = PRIVATE_BASE + (ctx.worker as u64) * 16 + rng.below(16);
            let v = value_for(key, rng);
            drop(map.insert(key, Lazy::ready(v)));
            if map.try_get(&key) != Some(Ok(v)) {
                violation(
                    ctx,
                    format!(
                        "private key {key}: inserted {v}, read {:?}",
                        map.try_get(&key)
                    ),
                );
            }
            if rng.below(2) == 0 {
                let got = map.get_or_add_with(key, || async { Ok(0) }).await;
                if got != Ok(v) {
                    violation(
                        ctx,
                        format!("private key {key}: get_or_add_with gave {got:?}, want {v}"),
                    );
                }
            }
            if map.remove(&key).is_none() || map.try_get(&key).is_some() {
                violation(ctx, format!("private key {key}: remove did not remove"));
            }
            4
        }
    }
}

// ----- cache --------------------------------------------------------------------------------

fn cache_key(rng: &mut Rng, keys: u64) -> u64 {
    if rng.percent() < 70 {
        rng.below(keys / 16)
    } else {
        rng.below(keys)
    }
}

async fn cache_op(s: &Arc<State>, ctx: &mut Ctx, rng: &mut Rng) -> u64 {
    let key = cache_key(rng, CACHE_KEYS);
    let cache = &s.cache;
    match rng.below(1000) {
        0..=449 => {
            ctx.op = "cache/get_with";
            let n = 1 + rng.below(6);
            let mut handles = Vec::new();
            for _ in 0..n {
                let (plan, style, s) = (plan(rng, key), style(rng), Arc::clone(s));
                handles.push(tokio::spawn(async move {
                    let get = s
                        .cache
                        .get_with(key, move || probed(&P_CACHE, run_plan(key, plan)));
                    caller(Layer::Cache, style, get)
                        .await
                        .map(Outcome::from_load)
                }));
            }
            join_reads(ctx, key, handles).await;
            n
        }
        450..=599 => {
            ctx.op = "cache/get_if_present";
            match cache.get_if_present(&key) {
                Some(v) => check_value(ctx, key, v, "cache get_if_present"),
                None => {
                    CACHE_EMPTY_READS.fetch_add(1, Relaxed);
                }
            }
            1
        }
        600..=699 => {
            ctx.op = "cache/peek";
            if let Some(v) = cache.peek(&key) {
                check_value(ctx, key, v, "cache peek");
            }
            1
        }
        700..=899 => {
            ctx.op = "cache/insert";
            cache.insert(key, value_for(key, rng));
            1
        }
        900..=998 => {
            ctx.op = "cache/invalidate";
            cache.invalidate(&key);
            1
        }
        _ => {
            ctx.op = "cache/invalidate_all";
            cache.invalidate_all();
            1
        }
    }
}

// ----- expiring -----------------------------------------------------------------------------

async fn exp_op(s: &Arc<State>, ctx: &mut Ctx, rng: &mut Rng) -> u64 {
    let key = cache_key(rng, EXP_KEYS);
    let exp = &s.exp;
    match rng.below(1000) {
        0..=449 => {
            ctx.op = "expiring/get_with";
            let n = 1 + rng.below(6);
            let mut handles = Vec::new();
            for _ in 0..n {
                let (plan, style, s) = (plan(rng, key), style(rng), Arc::clone(s));
                handles.push(tokio::spawn(async move {
                    let get = s
                        .exp
                        .get_with(key, move || probed(&P_EXP, run_plan(key, plan)));
                    caller(Layer::Expiring, style, get)
                        .await
                        .map(Outcome::from_load)
                }));
            }
            join_reads(ctx, key, handles).await;
            n
        }
        450..=649 => {
            ctx.op = "expiring/get_if_present";
            if let Some(v) = exp.get_if_present(&key) {
                check_value(ctx, key, v, "expiring get_if_present");
            }
            1
        }
        650..=749 => {
            ctx.op = "expiring/peek";
            if let Some(v) = exp.peek(&key) {
                check_value(ctx, key, v, "expiring peek");
            }
            1
        }
        750..=849 => {
            ctx.op = "expiring/insert";
            exp.insert(key, value_for(key, rng));
            1
        }
        850..=993 => {
            ctx.op = "expiring/invalidate";
            exp.invalidate(&key);
            1
        }
        994..=998 => {
            ctx.op = "expiring/run_maintenance";
            exp.run_maintenance();
            1
        }
        _ => {
            ctx.op = "expiring/invalidate_all";
            exp.invalidate_all();
            1
        }
    }
}

async fn sys_op(s: &Arc<State>, ctx: &mut Ctx, rng: &mut Rng) -> u64 {
    let key = cache_key(rng, SYS_KEYS);
    let sys = &s.sys;
    match rng.percent() {
        0..=49 => {
            ctx.op = "expiring-sys/get";
            let n = 1 + rng.below(6);
            let mut handles = Vec::new();
            for _ in 0..n {
                let (plan, style, s) = (plan(rng, key), style(rng), Arc::clone(s));
                let own_loader = rng.below(4) == 0;
                handles.push(tokio::spawn(async move {
                    let outcome = if own_loader {
                        let get = s
                            .sys
                            .get_with(key, move || probed(&P_SYS, run_plan(key, plan)));
                        caller(Layer::Expiring, style, get).await
                    } else {
                        caller(Layer::Expiring, style, s.sys.get(key)).await
                    };
                    outcome.map(Outcome::from_load)
                }));
            }
            join_reads(ctx, key, handles).await;
            n
        }
        50..=74 => {
            // May start a refresh with the cache-wide loader, on the spawner.
            ctx.op = "expiring-sys/get_if_present";
            if let Some(v) = sys.get_if_present(&key) {
                check_value(ctx, key, v, "expiring-sys get_if_present");
            }
            1
        }
        75..=84 => {
            ctx.op = "expiring-sys/insert";
            sys.insert(key, value_for(key, rng));
            1
        }
        85..=94 => {
            ctx.op = "expiring-sys/invalidate";
            sys.invalidate(&key);
            1
        }
        _ => {
            ctx.op = "expiring-sys/peek";
            if let Some(v) = sys.peek(&key) {
                check_value(ctx, key, v, "expiring-sys peek");
            }
            1
        }
    }
}

/// Several tasks race for the uses of a use-counted ref: exactly `n` must get one.
async fn ref_uses(s: &Arc<State>, ctx: &Ctx, rng: &mut Rng) -> u64 {
    let key = rng.below(1 << 20);
    let n = rng.below(20);
    let r = Arc::new(ExpiringRef::uses_with_clock(key, n, s.clock.clone()));
    let tasks = 1 + rng.below(6);
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let (r, hold) = (Arc::clone(&r), rng.below(2) == 0);
        handles.push(tokio::spawn(async move {
            let mut mine = 0u64;
            let mut wrong = 0u64;
            while let Some(guard) = r.acquire() {
                mine += 1;
                if *guard != key {
                    wrong += 1;
                }
                if hold {
                    tokio::task::yield_now().await;
                }
                drop(guard);
            }
            (mine, wrong)
        }));
    }
    let mut total = 0;
    for handle in handles {
        if let Some((mine, wrong)) = join(ctx, handle).await {
            total += mine;
            if wrong != 0 {
                violation(
                    ctx,
                    format!("ExpiringRef::uses: {wrong} uses read a wrong value"),
                );
            }
        }
    }
    if total != n {
        violation(
            ctx,
            format!("ExpiringRef::uses({n}): {total} uses were granted"),
        );
    }
    if r.uses_left() != Some(0) || !r.is_expired() {
        violation(ctx, format!("ExpiringRef::uses({n}) spent but not expired"));
    }
    let r2 = Arc::clone(&r);
    let wait =
        tokio::spawn(async move { caller(Layer::Expiring, Style::Normal, r2.expired()).await });
    join(ctx, wait).await;
    total + tasks + 1
}

/// Tasks use a timed ref while its clock runs (the manual one jumps, also backwards): once a
/// task has seen it expired, it must never grant a use again.
async fn ref_timed(s: &Arc<State>, ctx: &Ctx, rng: &mut Rng, manual: bool) -> u64 {
    let key = rng.below(1 << 20);
    let tasks = 1 + rng.below(6);
    let iterations = 20 + rng.below(100);
    let r = if manual {
        let ttl = Duration::from_millis(20 + rng.below(300));
        Arc::new(RefOn::Manual(ExpiringRef::timed_with_clock(
            key,
            ttl,
            s.clock.clone(),
        )))
    } else {
        let ttl = Duration::from_micros(500 + rng.below(4500));
        Arc::new(RefOn::System(ExpiringRef::timed(key, ttl)))
    };
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let (r, hold) = (Arc::clone(&r), rng.below(3) == 0);
        handles.push(tokio::spawn(async move {
            let mut seen_expired = false;
            let mut late = 0u64;
            let mut uses = 0u64;
            for i in 0..iterations {
                match r.use_once(key, hold).await {
                    Some(true) => {
                        uses += 1;
                        if seen_expired {
                            late += 1;
                        }
                    }
                    Some(false) => return (uses, late, 1u64),
                    None => seen_expired = true,
                }
                if i % 4 == 3 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            (uses, late, 0)
        }));
    }
    let mut ops = 0;
    for handle in handles {
        if let Some((uses, late, wrong)) = join(ctx, handle).await {
            ops += uses;
            if late != 0 {
                violation(
                    ctx,
                    format!("a timed ExpiringRef granted {late} uses after it was seen expired"),
                );
            }
            if wrong != 0 {
                violation(ctx, "a timed ExpiringRef use read a wrong value");
            }
        }
    }
    let r2 = Arc::clone(&r);
    let wait =
        tokio::spawn(async move { caller(Layer::Expiring, Style::Normal, r2.expired()).await });
    if join(ctx, wait).await.is_some() && (!r.is_expired() || r.use_now()) {
        violation(
            ctx,
            "a timed ExpiringRef whose expired() completed still grants uses",
        );
    }
    ops + tasks + 1
}

/// A timed ref on either clock (their types differ).
enum RefOn {
    Manual(ExpiringRef<u64, ManualClock>),
    System(ExpiringRef<u64, SystemClock>),
}

impl RefOn {
    /// One use: `Some(true)` granted (right value), `Some(false)` granted with a wrong value,
    /// `None` refused.
    async fn use_once(&self, key: u64, hold: bool) -> Option<bool> {
        match self {
            RefOn::Manual(r) => use_once(r, key, hold).await,
            RefOn::System(r) => use_once(r, key, hold).await,
        }
    }
    fn is_expired(&self) -> bool {
        match self {
            RefOn::Manual(r) => r.is_expired(),
            RefOn::System(r) => r.is_expired(),
        }
    }
    fn use_now(&self) -> bool {
        match self {
            RefOn::Manual(r) => r.with(|_| ()).is_some(),
            RefOn::System(r) => r.with(|_| ()).is_some(),
        }
    }
    async fn expired(&self) {
        match self {
            RefOn::Manual(r) => r.expired().await,
            RefOn::System(r) => r.expired().await,
        }
    }
}

async fn use_once<C: Clock>(r: &ExpiringRef<u64, C>, key: u64, hold: bool) -> Option<bool> {
    let guard = r.acquire()?;
    let right = *guard == key;
    if hold {
        tokio::task::yield_now().await;
    }
    drop(guard);
    Some(right)
}

async fn expiring_op(s: &Arc<State>, ctx: &mut Ctx, rng: &mut Rng) -> u64 {
    match rng.percent() {
        0..=49 => exp_op(s, ctx, rng).await,
        50..=84 => sys_op(s, ctx, rng).await,
        85..=89 => {
            ctx.op = "expiring/ref_uses";
            REF_RACES.fetch_add(1, Relaxed);
            ref_uses(s, ctx, rng).await
        }
        90..=94 => {
            ctx.op = "expiring/ref_timed_manual";
            REF_RACES.fetch_add(1, Relaxed);
            ref_timed(s, ctx, rng, true).await
        }
        _ => {
            ctx.op = "expiring/ref_timed_system";
            REF_RACES.fetch_add(1, Relaxed);
            ref_timed(s, ctx, rng, false).await
        }
    }
}

// ----- tasks --------------------------------------------------------------------------------

async fn worker(s: Arc<State>, worker: usize, seed: u64, layers: Vec<Layer>) {
    let mut rng = Rng::new(seed ^ (worker as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93));
    let mut ctx = Ctx {
        worker,
        seed,
        op: "",
    };
    while !s.stop.load(Relaxed) {
        let layer = layers[rng.below(layers.len() as u64) as usize];
        let ops = match layer {
            Layer::Core => core_op(&mut ctx, &mut rng).await,
            Layer::Map => map_op(&s, &mut ctx, &mut rng).await,
            Layer::Cache => cache_op(&s, &mut ctx, &mut rng).await,
            Layer::Expiring => expiring_op(&s, &mut ctx, &mut rng).await,
        };
        OPS.add(layer, ops);
    }
}

/// Moves the manual clock every millisecond: mostly forward a little, sometimes back, now and
/// then far forward (past every deadline of the manual cache).
async fn clock_task(s: Arc<State>, seed: u64) {
    let mut rng = Rng::new(seed ^ 0xC10C);
    while !s.clock_stop.load(Relaxed) {
        tokio::time::sleep(Duration::from_millis(1)).await;
        match rng.below(1000) {
            0..=9 => {
                let back = Duration::from_millis(rng.below(1000));
                s.clock.set(s.clock.now().saturating_sub(back));
                CLOCK_BACK.fetch_add(1, Relaxed);
            }
            10..=11 => {
                s.clock.advance(Duration::from_secs(10 + rng.below(20)));
                CLOCK_LEAP.fetch_add(1, Relaxed);
            }
            _ => {
                s.clock.advance(Duration::from_millis(rng.below(50)));
                CLOCK_FORWARD.fetch_add(1, Relaxed);
            }
        }
    }
}

// ----- memory -------------------------------------------------------------------------------

/// VmRSS in KiB, from `/proc/self/status` (Linux only).
fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or_else(|| "n/a".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
}

// ----- main ---------------------------------------------------------------------------------

struct Args {
    minutes: f64,
    threads: usize,
    seed: u64,
    /// The layers the workers load (all by default; `--layers core,map` to narrow a finding).
    layers: Vec<Layer>,
}

fn parse_args() -> Result<Args, String> {
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut args = Args {
        minutes: 1.0,
        threads: 32 * cpus,
        seed: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x5EED, |d| d.as_nanos() as u64),
        layers: LAYERS.to_vec(),
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut it = argv.iter();
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("`{flag}` needs a value"))?;
        match flag.as_str() {
            "--minutes" => {
                args.minutes = value
                    .parse()
                    .ok()
                    .filter(|m: &f64| m.is_finite() && *m > 0.0)
                    .ok_or_else(|| format!("--minutes {value}: expected a positive number"))?
            }
            "--threads" => {
                args.threads = value
                    .parse()
                    .ok()
                    .filter(|t| *t > 0)
                    .ok_or_else(|| format!("--threads {value}: expected a positive integer"))?
            }
            "--seed" => {
                let (digits, radix) = match value.strip_prefix("0x") {
                    Some(hex) => (hex, 16),
                    None => (value.as_str(), 10),
                };
                args.seed = u64::from_str_radix(digits, radix)
                    .map_err(|_| format!("--seed {value}: expected an integer"))?;
            }
            "--layers" => {
                args.layers = value
                    .split(',')
                    .map(|name| {
                        LAYERS
                            .into_iter()
                            .find(|l| l.name() == name)
                            .ok_or_else(|| format!("--layers: unknown layer `{name}`"))
                    })
                    .collect::<Result<_, _>>()?;
            }
            _ => {
                return Err(format!(
                    "unknown argument `{flag}`; usage: soak --minutes N [--threads T] [--seed S] \
                     [--layers core,map,cache,expiring]"
                ))
            }
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("soak: {e}");
            return ExitCode::from(2);
        }
    };
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if info.payload().is::<DeliberatePanic>() {
            PANICS_RAISED.fetch_add(1, Relaxed);
        } else {
            PANICS_UNEXPECTED.fetch_add(1, Relaxed);
            default_hook(info);
        }
    }));
    LOADER_SEED.store(args.seed ^ 0x10AD, Relaxed);
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cpus.max(2))
        .enable_time()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("soak: could not start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let duration = Duration::from_secs_f64(args.minutes * 60.0);
    // A watchdog outside the runtime, in case the runtime itself stops making progress.
    let finished = Arc::new(AtomicBool::new(false));
    {
        let finished = Arc::clone(&finished);
        let limit = duration + HANG_AFTER * 4 + Duration::from_secs(60);
        std::thread::spawn(move || {
            let since = Instant::now();
            while since.elapsed() < limit {
                std::thread::sleep(Duration::from_millis(200));
                if finished.load(Relaxed) {
                    return;
                }
            }
            eprintln!(
                "soak: WATCHDOG: still running {:.0} s after the start ({:.0} s planned): \
                 something hung. ops {}, callers started {} finished {} dropped {} panicked {}",
                limit.as_secs_f64(),
                duration.as_secs_f64(),
                OPS.total(),
                STARTED.total(),
                FINISHED.total(),
                DROPPED.total(),
                PANICKED.total(),
            );
            std::process::exit(3);
        });
    }
    let pass = runtime.block_on(soak(&args, duration, cpus.max(2)));
    finished.store(true, Relaxed);
    // Tasks still parked on the runtime (none, if all went well) are dropped here.
    runtime.shutdown_timeout(Duration::from_secs(5));
    if pass {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[derive(Clone, Copy, Default)]
struct Snapshot {
    ops: [u64; 4],
    started: u64,
    finished: u64,
    dropped: u64,
    panicked: u64,
}

fn snapshot() -> Snapshot {
    Snapshot {
        ops: LAYERS.map(|l| OPS.get(l)),
        started: STARTED.total(),
        finished: FINISHED.total(),
        dropped: DROPPED.total(),
        panicked: PANICKED.total(),
    }
}

fn loads_run(s: &State) -> [u64; 4] {
    let exp = s.exp.stats();
    let sys = s.sys.stats();
    [
        P_INIT.get(|p| &p.started) + P_LAZY.get(|p| &p.started),
        P_MAP.get(|p| &p.started),
        s.cache.stats().loads(),
        exp.cache.loads() + exp.refreshes_started + sys.cache.loads() + sys.refreshes_started,
    ]
}

fn rate(n: u64, secs: f64) -> String {
    let r = n as f64 / secs.max(1e-9);
    if r >= 10_000.0 {
        format!("{:.1}k", r / 1000.0)
    } else {
        format!("{r:.0}")
    }
}

async fn soak(args: &Args, duration: Duration, runtime_threads: usize) -> bool {
    let warmup = duration
        .mul_f64(0.10)
        .clamp(Duration::from_secs(5), Duration::from_secs(60))
        .min(duration / 2);
    println!(
        "soak: {:.1} min, seed {:#x}, {} workers on {} runtime threads, warm-up {:.0} s; \
         replay the operation sequence with --seed {:#x}",
        args.minutes,
        args.seed,
        args.threads,
        runtime_threads,
        warmup.as_secs_f64(),
        args.seed,
    );
    let rss_launch = rss_kib();
    let s = Arc::new(State::new());
    s.fill(args.seed);
    let clock = tokio::spawn(clock_task(Arc::clone(&s), args.seed));
    let workers: Vec<_> = (0..args.threads)
        .map(|w| tokio::spawn(worker(Arc::clone(&s), w, args.seed, args.layers.clone())))
        .collect();

    let start = Instant::now();
    let deadline = start + duration;
    let warm_end = start + warmup;
    let middle = warm_end + (deadline - warm_end) / 2;
    let (mut rss_start, mut rss_mid) = (None, None);
    let mut warm = Snapshot::default();
    let mut last = (start, snapshot());
    let mut next_print = start + Duration::from_secs(10);
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        tokio::time::sleep((deadline - now).min(Duration::from_millis(100))).await;
        let now = Instant::now();
        if rss_start.is_none() && now >= warm_end {
            rss_start = rss_kib();
            warm = snapshot();
        }
        if rss_mid.is_none() && now >= middle {
            rss_mid = rss_kib();
        }
        if now >= next_print {
            next_print += Duration::from_secs(10);
            let snap = snapshot();
            let secs = (now - last.0).as_secs_f64();
            let mut line = format!("[{:>6.1}s] ops/s", (now - start).as_secs_f64());
            for l in LAYERS {
                let d = snap.ops[l as usize] - last.1.ops[l as usize];
                let _ = write!(line, " {} {}", l.name(), rate(d, secs));
            }
            let total: u64 = snap.ops.iter().sum::<u64>() - last.1.ops.iter().sum::<u64>();
            let in_flight = snap.started - snap.finished - snap.dropped - snap.panicked;
            let _ = write!(
                line,
                " total {} | loads {} | callers {} started, {} finished, {} dropped, {} panicked, {} in flight | tasks {} | len map {} cache {} exp {}/{} timers {}/{} | clock {:.0}s | rss {}",
                rate(total, secs),
                loads_run(&s).iter().sum::<u64>(),
                snap.started,
                snap.finished,
                snap.dropped,
                snap.panicked,
                in_flight,
                tokio::runtime::Handle::current().metrics().num_alive_tasks(),
                s.map.len(),
                s.cache.len(),
                s.exp.len(),
                s.sys.len(),
                s.exp.timers(),
                s.sys.timers(),
                s.clock.now().as_secs_f64(),
                mib(rss_kib()),
            );
            if VIOLATIONS.load(Relaxed) + HUNG.load(Relaxed) + PANICS_UNEXPECTED.load(Relaxed) > 0 {
                let _ = write!(
                    line,
                    " | VIOLATIONS {} hung {} unexpected panics {}",
                    VIOLATIONS.load(Relaxed),
                    HUNG.load(Relaxed),
                    PANICS_UNEXPECTED.load(Relaxed)
                );
            }
            println!("{line}");
            last = (now, snap);
        }
    }
    let rss_end = rss_kib();
    let end_snap = snapshot();
    let elapsed = start.elapsed();
    let end_ctx = Ctx {
        worker: usize::MAX,
        seed: args.seed,
        op: "final checks",
    };

    // ---- stop: workers first (they finish their operation), then the clock ----
    s.stop.store(true, Relaxed);
    let stop_started = Instant::now();
    for (w, handle) in workers.into_iter().enumerate() {
        match tokio::time::timeout(HANG_AFTER * 3, handle).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => violation(&end_ctx, format!("worker {w} ended with {e}")),
            Err(_) => {
                HUNG.fetch_add(1, Relaxed);
                violation(&end_ctx, format!("worker {w} did not stop: hung"));
            }
        }
    }
    let stop_time = stop_started.elapsed();
    s.clock_stop.store(true, Relaxed);
    if tokio::time::timeout(Duration::from_secs(5), clock)
        .await
        .is_err()
    {
        violation(&end_ctx, "the clock task did not stop");
    }

    // ---- drain: background refreshes end (polled by maintenance, or on the spawner) ----
    let settled = |st: &deferred_expiring::ExpiringStats| {
        st.refreshes_started == st.refreshes_ok + st.refreshes_failed + st.refreshes_discarded
    };
    let drain_started = Instant::now();
    loop {
        s.exp.run_maintenance();
        s.sys.run_maintenance();
        let quiet = settled(&s.exp.stats())
            && settled(&s.sys.stats())
            && PROBES.iter().all(|p| p.alive() == 0);
        if quiet || drain_started.elapsed() > Duration::from_secs(10) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }

    // ---- counters ----
    let mut report = String::new();
    let callers_ok = {
        let (st, fi, dr, pa, ab) = (
            STARTED.total(),
            FINISHED.total(),
            DROPPED.total(),
            PANICKED.total(),
            ABORTED.total(),
        );
        if st != fi + dr + pa + ab {
            violation(
                &end_ctx,
                format!("callers: {st} started but {fi} finished + {dr} dropped + {pa} panicked + {ab} aborted"),
            );
        }
        if ab != 0 {
            violation(&end_ctx, format!("{ab} callers were aborted (hung)"));
        }
        st == fi + dr + pa && ab == 0
    };
    for p in PROBES {
        if p.alive() != 0 {
            violation(
                &end_ctx,
                format!(
                    "{}: {} loader futures neither finished nor dropped",
                    p.name,
                    p.alive()
                ),
            );
        }
    }
    let cache_stats = s.cache.stats();
    {
        let pairs = [
            ("loads_ok", cache_stats.loads_ok, P_CACHE.get(|p| &p.ok)),
            (
                "loads_failed",
                cache_stats.loads_failed,
                P_CACHE.get(|p| &p.err),
            ),
            (
                "loads_panicked",
                cache_stats.loads_panicked,
                P_CACHE.get(|p| &p.panicked),
            ),
            (
                "loads_cancelled",
                cache_stats.loads_cancelled,
                P_CACHE.get(|p| &p.cancelled),
            ),
        ];
        for (name, stat, seen) in pairs {
            if stat != seen {
                violation(
                    &end_ctx,
                    format!("cache stats {name} = {stat}, the loaders counted {seen}"),
                );
            }
        }
        let started = cache_stats.misses - cache_stats.coalesced;
        let want = cache_stats.loads() + CACHE_EMPTY_READS.load(Relaxed);
        if started != want {
            violation(
                &end_ctx,
                format!(
                    "cache stats: misses {} - coalesced {} = {started}, but loads {} + empty reads {} = {want}",
                    cache_stats.misses,
                    cache_stats.coalesced,
                    cache_stats.loads(),
                    CACHE_EMPTY_READS.load(Relaxed)
                ),
            );
        }
    }
    let exp_stats = s.exp.stats();
    let sys_stats = s.sys.stats();
    for (name, st, p) in [
        ("expiring/man", &exp_stats, &P_EXP),
        ("expiring/sys", &sys_stats, &P_SYS),
    ] {
        if !settled(st) {
            violation(
                &end_ctx,
                format!(
                    "{name}: {} refreshes started, {} ok + {} failed + {} discarded",
                    st.refreshes_started,
                    st.refreshes_ok,
                    st.refreshes_failed,
                    st.refreshes_discarded
                ),
            );
        }
        let run = p.get(|p| &p.started);
        if st.cache.loads() > run || run > st.cache.loads() + st.refreshes_started {
            violation(
                &end_ctx,
                format!(
                    "{name}: the loaders ran {run} times, the stats count {} loads and {} refreshes",
                    st.cache.loads(),
                    st.refreshes_started
                ),
            );
        }
    }

    // ---- what is left once every caller is gone ----
    let (mut pending, mut failed) = (0u64, 0u64);
    let map_len = s.map.len();
    s.map.retain(|key, cell| {
        match cell.try_get() {
            None => pending += 1,
            Some(Err(_)) => failed += 1,
            Some(Ok(v)) => check_value(&end_ctx, *key, *v, "map entry at the end"),
        }
        true
    });
    if pending + failed != 0 {
        violation(
            &end_ctx,
            format!("map: {pending} pending and {failed} failed entries left with no caller"),
        );
    }
    let cache_len = s.cache.len();
    let cache_weight = s.cache.weighted_size();
    if cache_weight != Some(cache_len as u64) || cache_len as u64 > CACHE_CAP {
        violation(
            &end_ctx,
            format!("cache at rest: len {cache_len}, weighted size {cache_weight:?}, capacity {CACHE_CAP}"),
        );
    }
    let (exp_len, exp_timers) = (s.exp.len(), s.exp.timers());
    let (sys_len, sys_timers) = (s.sys.len(), s.sys.timers());

    // ---- clear everything: nothing may stay ----
    s.map.clear();
    s.cache.invalidate_all();
    s.exp.invalidate_all();
    let exp_timers_cleared = s.exp.timers();
    s.clock.advance(Duration::from_secs(3600));
    s.exp.run_maintenance();
    s.sys.invalidate_all();
    let sys_timers_cleared = s.sys.timers();
    tokio::time::sleep(Duration::from_millis(60) + TICK * 4).await;
    s.sys.run_maintenance();
    let cleared = [
        ("map len", s.map.len() as u64),
        ("cache len", s.cache.len() as u64),
        (
            "cache weighted size",
            s.cache.weighted_size().unwrap_or(u64::MAX),
        ),
        ("expiring/man len", s.exp.len() as u64),
        ("expiring/man timers", s.exp.timers() as u64),
        ("expiring/sys len", s.sys.len() as u64),
        ("expiring/sys timers", s.sys.timers() as u64),
    ];
    for (what, n) in cleared {
        if n != 0 {
            violation(&end_ctx, format!("after clearing: {what} = {n}"));
        }
    }
    let rss_cleared = rss_kib();
    let loads = loads_run(&s);
    drop(s);
    for p in PROBES {
        if p.alive() != 0 {
            violation(
                &end_ctx,
                format!(
                    "{}: {} loader futures alive after every structure was dropped",
                    p.name,
                    p.alive()
                ),
            );
        }
    }

    // ---- summary ----
    let secs = elapsed.as_secs_f64();
    let growth = match (rss_start, rss_end) {
        (Some(a), Some(b)) if a > 0 => Some((b as f64 - a as f64) / a as f64),
        _ => None,
    };
    let rss_ok = !matches!(growth, Some(g) if g > RSS_GROWTH_LIMIT);
    let _ = writeln!(report, "\n==== soak summary ====");
    let _ = writeln!(
        report,
        "seed {:#x}, {} workers, {} runtime threads",
        args.seed, args.threads, runtime_threads
    );
    let _ = writeln!(
        report,
        "duration {:.1} s (warm-up {:.1} s); workers stopped in {:.2} s",
        secs,
        warmup.as_secs_f64(),
        stop_time.as_secs_f64()
    );
    let _ = writeln!(
        report,
        "{:<10} {:>12} {:>10} {:>11} {:>10} {:>10} {:>10} {:>10}",
        "layer", "ops", "ops/s", "loads run", "callers", "finished", "dropped", "panicked"
    );
    for l in LAYERS {
        let i = l as usize;
        let _ = writeln!(
            report,
            "{:<10} {:>12} {:>10} {:>11} {:>10} {:>10} {:>10} {:>10}",
            l.name(),
            end_snap.ops[i],
            rate(end_snap.ops[i], secs),
            loads[i],
            STARTED.get(l),
            FINISHED.get(l),
            DROPPED.get(l),
            PANICKED.get(l),
        );
    }
    let total_ops: u64 = end_snap.ops.iter().sum();
    let _ = writeln!(
        report,
        "{:<10} {:>12} {:>10} {:>11} {:>10} {:>10} {:>10} {:>10}",
        "total",
        total_ops,
        rate(total_ops, secs),
        loads.iter().sum::<u64>(),
        STARTED.total(),
        FINISHED.total(),
        DROPPED.total(),
        PANICKED.total(),
    );
    let after_warm: u64 = end_snap.ops.iter().sum::<u64>() - warm.ops.iter().sum::<u64>();
    let _ = writeln!(
        report,
        "after warm-up: {} ops/s; callers {} started, {} finished, {} dropped, {} panicked",
        rate(after_warm, secs - warmup.as_secs_f64()),
        end_snap.started - warm.started,
        end_snap.finished - warm.finished,
        end_snap.dropped - warm.dropped,
        end_snap.panicked - warm.panicked,
    );
    let _ = writeln!(
        report,
        "callers: started {} = finished {} + dropped {} + panicked {}{} ({})",
        STARTED.total(),
        FINISHED.total(),
        DROPPED.total(),
        PANICKED.total(),
        if ABORTED.total() > 0 {
            format!(" + aborted {}", ABORTED.total())
        } else {
            String::new()
        },
        if callers_ok {
            "nobody hung"
        } else {
            "MISMATCH"
        },
    );
    let _ = writeln!(
        report,
        "panics: {} raised by loaders (caught: {} in callers, the rest inside the layers), {} unexpected",
        PANICS_RAISED.load(Relaxed),
        PANICKED.total(),
        PANICS_UNEXPECTED.load(Relaxed),
    );
    let _ = writeln!(report, "loader futures:");
    for p in PROBES {
        let _ = writeln!(report, "  {}", p.summary());
    }
    let _ = writeln!(
        report,
        "cache stats: hits {} misses {} coalesced {} loads ok {} failed {} panicked {} cancelled {} evicted {} invalidated {}",
        cache_stats.hits,
        cache_stats.misses,
        cache_stats.coalesced,
        cache_stats.loads_ok,
        cache_stats.loads_failed,
        cache_stats.loads_panicked,
        cache_stats.loads_cancelled,
        cache_stats.evicted,
        cache_stats.invalidated,
    );
    for (name, st) in [("expiring/man", &exp_stats), ("expiring/sys", &sys_stats)] {
        let _ = writeln!(
            report,
            "{name} stats: hits {} misses {} loads {} expired {} evicted {} negative hits {} refreshes {} (ok {} failed {} discarded {})",
            st.cache.hits,
            st.cache.misses,
            st.cache.loads(),
            st.cache.expired,
            st.cache.evicted,
            st.negative_hits,
            st.refreshes_started,
            st.refreshes_ok,
            st.refreshes_failed,
            st.refreshes_discarded,
        );
    }
    let _ = writeln!(
        report,
        "manual clock: {} small steps, {} jumps back, {} leaps forward; ExpiringRef races {}",
        CLOCK_FORWARD.load(Relaxed),
        CLOCK_BACK.load(Relaxed),
        CLOCK_LEAP.load(Relaxed),
        REF_RACES.load(Relaxed),
    );
    let _ = writeln!(
        report,
        "at the end: map len {map_len}; cache len {cache_len} (weighted {}, capacity {CACHE_CAP}); \
         expiring/man len {exp_len} timers {exp_timers}; expiring/sys len {sys_len} timers {sys_timers}",
        cache_weight.map_or_else(|| "n/a".into(), |w| w.to_string()),
    );
    let _ = writeln!(
        report,
        "cleared: all len 0 and timers 0 {} (timers right after invalidate_all: man {exp_timers_cleared}, sys {sys_timers_cleared}; \
         the rest fired once the clocks passed their deadlines)",
        if cleared.iter().all(|(_, n)| *n == 0) { "yes" } else { "NO" },
    );
    let _ = writeln!(
        report,
        "memory (VmRSS): launch {}, start (after warm-up) {}, middle {}, end {}, growth {} (limit +{:.0}%); after clearing {}",
        mib(rss_launch),
        mib(rss_start),
        mib(rss_mid),
        mib(rss_end),
        growth.map_or_else(|| "n/a".into(), |g| format!("{:+.1}%", g * 100.0)),
        RSS_GROWTH_LIMIT * 100.0,
        mib(rss_cleared),
    );
    let violations = VIOLATIONS.load(Relaxed);
    let hung = HUNG.load(Relaxed);
    let unexpected = PANICS_UNEXPECTED.load(Relaxed);
    let pass = violations == 0 && hung == 0 && unexpected == 0 && callers_ok && rss_ok;
    let _ = writeln!(
        report,
        "checks: {violations} violations, {hung} hung, {unexpected} unexpected panics, memory {}",
        if rss_ok { "flat" } else { "GREW" }
    );
    if violations > 0 {
        let messages = MESSAGES.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(report, "first violations:");
        for m in messages.iter() {
            let _ = writeln!(report, "  {m}");
        }
    }
    let _ = writeln!(report, "RESULT: {}", if pass { "PASS" } else { "FAIL" });
    print!("{report}");
    pass
}
