//! The soak's books: what every task counts (operations, callers, loader futures, panics,
//! clock moves) and the violations it records, in one [`Books`] shared by the whole process.
//!
//! One `static` rather than a handle passed around: the panic hook and the drop guards of
//! callers and loader futures count into it too, and they can only reach a `'static`.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use crate::loaders::Probes;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layer {
    Core,
    Map,
    Cache,
    Expiring,
}

pub const LAYERS: [Layer; 4] = [Layer::Core, Layer::Map, Layer::Cache, Layer::Expiring];

impl Layer {
    pub fn name(self) -> &'static str {
        match self {
            Layer::Core => "core",
            Layer::Map => "map",
            Layer::Cache => "cache",
            Layer::Expiring => "expiring",
        }
    }
}

pub struct PerLayer([AtomicU64; 4]);

impl PerLayer {
    const fn new() -> Self {
        PerLayer([const { AtomicU64::new(0) }; 4])
    }
    pub fn add(&self, layer: Layer, n: u64) {
        self.0[layer as usize].fetch_add(n, Relaxed);
    }
    pub fn get(&self, layer: Layer) -> u64 {
        self.0[layer as usize].load(Relaxed)
    }
    pub fn total(&self) -> u64 {
        LAYERS.iter().map(|l| self.get(*l)).sum()
    }
}

/// The loader futures of each family.
pub struct Loads {
    pub init: Probes,
    pub lazy: Probes,
    pub map: Probes,
    pub cache: Probes,
    pub exp: Probes,
    pub sys: Probes,
}

impl Loads {
    pub fn all(&self) -> [&Probes; 6] {
        [
            &self.init,
            &self.lazy,
            &self.map,
            &self.cache,
            &self.exp,
            &self.sys,
        ]
    }
}

pub struct Books {
    pub ops: PerLayer,
    pub started: PerLayer,
    pub finished: PerLayer,
    pub dropped: PerLayer,
    pub panicked: PerLayer,
    /// Callers whose future was dropped unfinished outside the soak's control (a hang abort).
    pub aborted: PerLayer,

    pub hung: AtomicU64,
    pub violations: AtomicU64,
    pub messages: Mutex<Vec<String>>,
    /// Panics raised by the soak's loaders on purpose (counted by the panic hook).
    pub panics_raised: AtomicU64,
    /// Panics with any other payload: a bug somewhere.
    pub panics_unexpected: AtomicU64,

    pub clock_forward: AtomicU64,
    pub clock_back: AtomicU64,
    pub clock_leap: AtomicU64,

    /// `Cache::get_if_present` calls that found nothing (each counts a miss and no load).
    pub cache_empty_reads: AtomicU64,
    /// `ExpiringRef` races run.
    pub ref_races: AtomicU64,

    /// Seed of the loaders that run without a worker's generator (the cache-wide loader).
    pub loader_seed: AtomicU64,

    pub loads: Loads,
}

pub static BOOKS: Books = Books {
    ops: PerLayer::new(),
    started: PerLayer::new(),
    finished: PerLayer::new(),
    dropped: PerLayer::new(),
    panicked: PerLayer::new(),
    aborted: PerLayer::new(),
    hung: AtomicU64::new(0),
    violations: AtomicU64::new(0),
    messages: Mutex::new(Vec::new()),
    panics_raised: AtomicU64::new(0),
    panics_unexpected: AtomicU64::new(0),
    clock_forward: AtomicU64::new(0),
    clock_back: AtomicU64::new(0),
    clock_leap: AtomicU64::new(0),
    cache_empty_reads: AtomicU64::new(0),
    ref_races: AtomicU64::new(0),
    loader_seed: AtomicU64::new(0),
    loads: Loads {
        init: Probes::new("core init"),
        lazy: Probes::new("core lazy"),
        map: Probes::new("map"),
        cache: Probes::new("cache"),
        exp: Probes::new("expiring/man"),
        sys: Probes::new("expiring/sys"),
    },
};

/// What each worker's operation is, for reports.
pub struct Ctx {
    pub worker: usize,
    pub seed: u64,
    pub op: &'static str,
}

pub fn violation(ctx: &Ctx, what: impl std::fmt::Display) {
    let n = BOOKS.violations.fetch_add(1, Relaxed);
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
    let mut messages = BOOKS.messages.lock().unwrap_or_else(|p| p.into_inner());
    if messages.len() < 50 {
        messages.push(line);
    }
}
