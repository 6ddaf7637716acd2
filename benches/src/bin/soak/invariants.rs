//! What every read must satisfy (its value belongs to its key, no `Cancelled` or `Reentrant`
//! ends), and the checks at the end of the run: counters agree, nothing is left behind.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use deferred_cache::{LoadError, Stats};
use deferred_core::Error;
use deferred_expiring::{ExpiringStats, TICK};
use tokio::task::JoinHandle;

use crate::callers::join;
use crate::counters::{violation, Ctx, BOOKS};
use crate::loaders::Fail;
use crate::state::State;
use crate::{CACHE_CAP, KEY_MULT};

/// A read's outcome, whatever the layer's error type.
#[derive(Debug)]
pub enum Outcome {
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
    pub fn from_core(r: Result<u64, Error<Fail>>) -> Self {
        match r {
            Ok(v) => Outcome::Value(v),
            Err(Error::Failed(Fail(k))) => Outcome::Failed(k),
            Err(Error::Panicked) => Outcome::Panicked,
            Err(Error::Cancelled) => Outcome::Cancelled,
        }
    }
    pub fn from_load(r: Result<u64, LoadError<Fail>>) -> Self {
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

pub fn check_value(ctx: &Ctx, key: u64, value: u64, what: impl std::fmt::Display) {
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

pub fn check_outcome(ctx: &Ctx, key: u64, outcome: &Outcome) {
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
pub async fn join_reads(ctx: &Ctx, key: u64, handles: Vec<JoinHandle<Option<Outcome>>>) {
    for handle in handles {
        if let Some(Some(outcome)) = join(ctx, handle).await {
            check_outcome(ctx, key, &outcome);
        }
    }
}

/// Background refreshes end (polled by maintenance, or on the spawner) and every loader
/// future finishes or is dropped; gives up after 10 s (the checks then report what is left).
pub async fn drain(s: &State) {
    let drain_started = std::time::Instant::now();
    loop {
        s.exp.run_maintenance();
        s.sys.run_maintenance();
        let quiet = settled(&s.exp.stats())
            && settled(&s.sys.stats())
            && BOOKS.loads.all().iter().all(|p| p.alive() == 0);
        if quiet || drain_started.elapsed() > Duration::from_secs(10) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Every refresh started has ended.
pub fn settled(st: &ExpiringStats) -> bool {
    st.refreshes_started == st.refreshes_ok + st.refreshes_failed + st.refreshes_discarded
}

/// Every loader future made has finished or been dropped (`when`: at which point).
pub fn check_loader_futures(ctx: &Ctx, when: &str) {
    for p in BOOKS.loads.all() {
        if p.alive() != 0 {
            violation(
                ctx,
                format!("{}: {} loader futures {when}", p.name, p.alive()),
            );
        }
    }
}

/// The layers' statistics, read once the callers are gone.
pub struct Counted {
    /// Callers started = finished + dropped + panicked, none aborted.
    pub callers_ok: bool,
    pub cache: Stats,
    pub exp: ExpiringStats,
    pub sys: ExpiringStats,
}

/// Counters agree: callers, loader futures, and the layers' statistics with what the loaders
/// themselves counted.
pub fn check_counters(s: &State, ctx: &Ctx) -> Counted {
    let (st, fi, dr, pa, ab) = (
        BOOKS.started.total(),
        BOOKS.finished.total(),
        BOOKS.dropped.total(),
        BOOKS.panicked.total(),
        BOOKS.aborted.total(),
    );
    if st != fi + dr + pa + ab {
        violation(
            ctx,
            format!("callers: {st} started but {fi} finished + {dr} dropped + {pa} panicked + {ab} aborted"),
        );
    }
    if ab != 0 {
        violation(ctx, format!("{ab} callers were aborted (hung)"));
    }
    let callers_ok = st == fi + dr + pa && ab == 0;
    check_loader_futures(ctx, "neither finished nor dropped");
    let cache = s.cache.stats();
    check_cache_stats(ctx, &cache);
    let (exp, sys) = (s.exp.stats(), s.sys.stats());
    for (name, st, p) in [
        ("expiring/man", &exp, &BOOKS.loads.exp),
        ("expiring/sys", &sys, &BOOKS.loads.sys),
    ] {
        if !settled(st) {
            violation(
                ctx,
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
                ctx,
                format!(
                    "{name}: the loaders ran {run} times, the stats count {} loads and {} refreshes",
                    st.cache.loads(),
                    st.refreshes_started
                ),
            );
        }
    }
    Counted {
        callers_ok,
        cache,
        exp,
        sys,
    }
}

/// The cache's load counts equal what its loaders counted, and misses − coalesced = loads +
/// empty `get_if_present` reads.
fn check_cache_stats(ctx: &Ctx, stats: &Stats) {
    let probes = &BOOKS.loads.cache;
    let pairs = [
        ("loads_ok", stats.loads_ok, probes.get(|p| &p.ok)),
        ("loads_failed", stats.loads_failed, probes.get(|p| &p.err)),
        (
            "loads_panicked",
            stats.loads_panicked,
            probes.get(|p| &p.panicked),
        ),
        (
            "loads_cancelled",
            stats.loads_cancelled,
            probes.get(|p| &p.cancelled),
        ),
    ];
    for (name, stat, seen) in pairs {
        if stat != seen {
            violation(
                ctx,
                format!("cache stats {name} = {stat}, the loaders counted {seen}"),
            );
        }
    }
    let started = stats.misses - stats.coalesced;
    let empty_reads = BOOKS.cache_empty_reads.load(Relaxed);
    let want = stats.loads() + empty_reads;
    if started != want {
        violation(
            ctx,
            format!(
                "cache stats: misses {} - coalesced {} = {started}, but loads {} + empty reads {empty_reads} = {want}",
                stats.misses,
                stats.coalesced,
                stats.loads(),
            ),
        );
    }
}

/// What the structures hold once every caller is gone.
pub struct AtRest {
    pub map_len: usize,
    pub cache_len: usize,
    pub cache_weight: Option<u64>,
    pub exp_len: usize,
    pub exp_timers: usize,
    pub sys_len: usize,
    pub sys_timers: usize,
}

/// No pending or failed map entry is left with no caller, every map value belongs to its key,
/// and the bounded cache's weight is its length, within its capacity.
pub fn check_at_rest(s: &State, ctx: &Ctx) -> AtRest {
    let (mut pending, mut failed) = (0u64, 0u64);
    let map_len = s.map.len();
    s.map.retain(|key, cell| {
        match cell.try_get() {
            None => pending += 1,
            Some(Err(_)) => failed += 1,
            Some(Ok(v)) => check_value(ctx, *key, *v, "map entry at the end"),
        }
        true
    });
    if pending + failed != 0 {
        violation(
            ctx,
            format!("map: {pending} pending and {failed} failed entries left with no caller"),
        );
    }
    let cache_len = s.cache.len();
    let cache_weight = s.cache.weighted_size();
    if cache_weight != Some(cache_len as u64) || cache_len as u64 > CACHE_CAP {
        violation(
            ctx,
            format!("cache at rest: len {cache_len}, weighted size {cache_weight:?}, capacity {CACHE_CAP}"),
        );
    }
    AtRest {
        map_len,
        cache_len,
        cache_weight,
        exp_len: s.exp.len(),
        exp_timers: s.exp.timers(),
        sys_len: s.sys.len(),
        sys_timers: s.sys.timers(),
    }
}

/// What clearing left.
pub struct Cleared {
    /// Timers right after `invalidate_all`, before the clocks passed their deadlines.
    pub exp_timers: usize,
    pub sys_timers: usize,
    /// Every length and timer count was 0 in the end.
    pub all_zero: bool,
}

/// Clears every structure and lets both clocks pass every deadline: nothing may stay.
pub async fn clear(s: &State, ctx: &Ctx) -> Cleared {
    s.map.clear();
    s.cache.invalidate_all();
    s.exp.invalidate_all();
    let exp_timers = s.exp.timers();
    s.clock.advance(Duration::from_secs(3600));
    s.exp.run_maintenance();
    s.sys.invalidate_all();
    let sys_timers = s.sys.timers();
    tokio::time::sleep(Duration::from_millis(60) + TICK * 4).await;
    s.sys.run_maintenance();
    let left = [
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
    for (what, n) in left {
        if n != 0 {
            violation(ctx, format!("after clearing: {what} = {n}"));
        }
    }
    Cleared {
        exp_timers,
        sys_timers,
        all_zero: left.iter().all(|(_, n)| *n == 0),
    }
}
