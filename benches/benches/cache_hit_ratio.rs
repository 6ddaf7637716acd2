#![forbid(unsafe_code)]
//! Hit ratios of `deferred-cache` and anchor caches on synthetic key traces: a plain
//! program, not criterion (there is nothing to time; the figures are deterministic but for
//! the anchors' own randomness).
//!
//! Each trace is replayed through each cache on one thread, as a cache-aside client would:
//! read the key; on a miss, insert it. The caches:
//!
//! * `deferred`: `Cache::bounded(capacity)`, `get_if_present` then `insert` (S3-FIFO);
//! * `moka`: `sync::Cache` with `max_capacity`, `get` then `insert` (TinyLFU admission,
//!   LRU eviction). Moka applies its bookkeeping in batches (when 64 reads or writes have
//!   queued, or on `run_pending_tasks`), so between batches it may hold more than its
//!   capacity; to hold it to the same capacity as the others, this replay calls
//!   `run_pending_tasks` after every insert ([`MOKA_SYNC_EVERY`]);
//! * `quick_cache`: `sync::Cache::new(capacity)`, `get` then `insert` (CLOCK-Pro-like);
//! * `lru`: a plain LRU written here ([`Lru`]), for reference.
//!
//! The traces, over [`KEYS`] keys (rank `r` of the popularity order is key `mix(r)`, so
//! popular keys are not neighbours):
//!
//! * `zipf 0.9`, `zipf 1.0`, `zipf 1.1`: independent draws from a Zipf distribution with
//!   that exponent;
//! * `zipf 1.0 + scans`: the same as `zipf 1.0`, but every [`SCAN_PERIOD`] requests end with
//!   a sequential scan of [`SCAN_LEN`] keys never seen before or after (20% of requests).
//!   A scan key can never hit, so 80% is the ceiling there.
//!
//! Capacities are 0.5%, 1%, 5%, 10% and 25% of the key space. One table per trace goes to
//! stdout, and all of them to `target/bench-cache-hit-ratio.md` (or `--out PATH`). Each
//! trace's curves (hit ratio against capacity, one line per cache) are drawn as SVG
//! ([`deferred_benches::chart`]), dated and captioned with the CPU, to
//! `benches/charts/hit_ratio_<trace>.svg` (or `--charts DIR`): the cache README shows them.
//! `cargo bench` runs this program in `benches/`, so relative paths start there.
//!
//! `cargo bench` runs it with `--bench`: [`REQUESTS`] requests per trace (`--requests N`
//! changes that). Run without `--bench` (as `cargo test --benches` does) it replays short
//! traces as a smoke test: it draws the charts too, but writes no file.

use core::{
    fmt::Write as _,
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};
use std::{
    collections::{hash_map::RandomState, HashMap},
    sync::Mutex,
    thread,
    time::Instant,
};

use deferred_benches::chart::{self, HitRatioChart, Series};
use deferred_benches::{markdown_table, mix, Program, SplitMix64};
use deferred_cache::Cache;

/// The key space of every trace.
const KEYS: u64 = 100_000;

/// Requests per trace in a bench run.
const REQUESTS: usize = 1_000_000;

/// Requests per trace in a smoke run (no `--bench`).
const SMOKE_REQUESTS: usize = 20_000;

/// Capacities, in thousandths of the key space.
const CAPACITY_PERMILLE: [u64; 5] = [5, 10, 50, 100, 250];

/// A scan ends every this many requests of the scan trace...
const SCAN_PERIOD: usize = 25_000;

/// ... and is this long: 20% of the requests.
const SCAN_LEN: usize = 5_000;

/// Moka's `run_pending_tasks` runs after every this many inserts.
const MOKA_SYNC_EVERY: u64 = 1;

/// The seed of every trace's generator: the traces are the same on every run.
const SEED: u64 = 0x00de_fe77_ed00_cace;

// ---------------------------------------------------------------------------------------
// Traces

/// Draws ranks `0..n` with P(rank r) proportional to `1 / (r + 1)^exponent`: the
/// cumulative distribution, precomputed, searched for a uniform draw.
struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    fn new(n: u64, exponent: f64) -> Self {
        let mut cdf = Vec::with_capacity(n as usize);
        let mut sum = 0.0;
        for r in 1..=n {
            sum += (r as f64).powf(-exponent);
            cdf.push(sum);
        }
        for c in &mut cdf {
            *c /= sum;
        }
        Zipf { cdf }
    }

    fn sample(&self, rng: &mut SplitMix64) -> u64 {
        let u = rng.next_f64();
        let rank = self.cdf.partition_point(|&c| c <= u);
        rank.min(self.cdf.len() - 1) as u64
    }
}

struct Trace {
    name: String,
    keys: Vec<u64>,
}

fn zipf_trace(exponent: f64, requests: usize) -> Trace {
    let zipf = Zipf::new(KEYS, exponent);
    let mut rng = SplitMix64(SEED);
    Trace {
        name: format!("zipf {exponent:.1}"),
        keys: (0..requests).map(|_| mix(zipf.sample(&mut rng))).collect(),
    }
}

fn scan_trace(exponent: f64, requests: usize) -> Trace {
    let zipf = Zipf::new(KEYS, exponent);
    let mut rng = SplitMix64(SEED);
    // Scan keys are mixed from ranks past the key space: they never meet a Zipf key.
    let mut scanned = KEYS;
    let keys = (0..requests)
        .map(|i| {
            if i % SCAN_PERIOD >= SCAN_PERIOD - SCAN_LEN {
                scanned += 1;
                mix(scanned)
            } else {
                mix(zipf.sample(&mut rng))
            }
        })
        .collect();
    Trace {
        name: format!("zipf {exponent:.1} + scans"),
        keys,
    }
}

// ---------------------------------------------------------------------------------------
// The caches

/// A plain LRU: a hash map from key to slot, and the slots in a doubly linked list by
/// index, most recent first.
struct Lru {
    slots: HashMap<u64, u32, RandomState>,
    nodes: Vec<LruNode>,
    head: u32,
    tail: u32,
    capacity: usize,
}

struct LruNode {
    key: u64,
    prev: u32,
    next: u32,
}

const NIL: u32 = u32::MAX;

impl Lru {
    fn new(capacity: usize) -> Self {
        assert!(capacity > 0 && capacity < NIL as usize);
        Lru {
            slots: HashMap::with_capacity_and_hasher(capacity, RandomState::new()),
            nodes: Vec::with_capacity(capacity),
            head: NIL,
            tail: NIL,
            capacity,
        }
    }

    fn unlink(&mut self, i: u32) {
        let LruNode { prev, next, .. } = self.nodes[i as usize];
        match prev {
            NIL => self.head = next,
            p => self.nodes[p as usize].next = next,
        }
        match next {
            NIL => self.tail = prev,
            n => self.nodes[n as usize].prev = prev,
        }
    }

    fn push_front(&mut self, i: u32) {
        let head = self.head;
        self.nodes[i as usize].prev = NIL;
        self.nodes[i as usize].next = head;
        match head {
            NIL => self.tail = i,
            h => self.nodes[h as usize].prev = i,
        }
        self.head = i;
    }

    /// Reads `key`, inserting it on a miss (evicting the least recently used key if
    /// full); returns whether it was a hit.
    fn access(&mut self, key: u64) -> bool {
        if let Some(&i) = self.slots.get(&key) {
            if self.head != i {
                self.unlink(i);
                self.push_front(i);
            }
            return true;
        }
        let i = if self.nodes.len() < self.capacity {
            self.nodes.push(LruNode {
                key,
                prev: NIL,
                next: NIL,
            });
            (self.nodes.len() - 1) as u32
        } else {
            let victim = self.tail;
            self.unlink(victim);
            let old = core::mem::replace(&mut self.nodes[victim as usize].key, key);
            self.slots.remove(&old);
            victim
        };
        self.slots.insert(key, i);
        self.push_front(i);
        false
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Deferred,
    Moka,
    QuickCache,
    Lru,
}

const KINDS: [Kind; 4] = [Kind::Deferred, Kind::Moka, Kind::QuickCache, Kind::Lru];

/// Replays `keys` through a fresh cache of `kind` holding `capacity` entries; returns
/// the hits.
fn replay(kind: Kind, keys: &[u64], capacity: u64) -> u64 {
    let mut hits = 0;
    match kind {
        Kind::Deferred => {
            let cache: Cache<u64, u64> = Cache::bounded(capacity);
            for &k in keys {
                if cache.get_if_present(&k).is_some() {
                    hits += 1;
                } else {
                    cache.insert(k, k);
                }
            }
            // Our own counters must agree with what the client saw.
            let stats = cache.stats();
            assert_eq!(stats.hits, hits, "deferred counted other hits");
            assert_eq!(stats.misses, keys.len() as u64 - hits);
            let size = cache.weighted_size().unwrap_or(0);
            assert!(size <= capacity, "deferred holds {size} over {capacity}");
        }
        Kind::Moka => {
            let cache = moka::sync::Cache::builder()
                .max_capacity(capacity)
                .build_with_hasher(RandomState::new());
            let mut unsynced = 0_u64;
            for &k in keys {
                if cache.get(&k).is_some() {
                    hits += 1;
                } else {
                    cache.insert(k, k);
                    unsynced += 1;
                    if unsynced == MOKA_SYNC_EVERY {
                        cache.run_pending_tasks();
                        unsynced = 0;
                    }
                }
            }
        }
        Kind::QuickCache => {
            let cache = quick_cache::sync::Cache::<u64, u64>::new(capacity as usize);
            for &k in keys {
                if cache.get(&k).is_some() {
                    hits += 1;
                } else {
                    cache.insert(k, k);
                }
            }
        }
        Kind::Lru => {
            let mut lru = Lru::new(capacity as usize);
            for &k in keys {
                hits += u64::from(lru.access(k));
            }
        }
    }
    hits
}

// ---------------------------------------------------------------------------------------
// Running and reporting

struct Job {
    trace: usize,
    capacity: usize,
    kind: Kind,
}

struct Outcome {
    /// Hit ratio in percent, by `[trace][capacity][kind]`.
    ratios: Vec<[[f64; 4]; CAPACITY_PERMILLE.len()]>,
    /// Replay time per cache kind, summed over traces and capacities.
    times: [Duration; 4],
}

/// Runs every (trace, capacity, cache) replay on as many threads as there are cores.
fn run(traces: &[Trace]) -> Outcome {
    let mut jobs = Vec::new();
    // Moka's replays are the slowest: start them first, so the threads finish together.
    for kind in [Kind::Moka, Kind::Deferred, Kind::QuickCache, Kind::Lru] {
        for trace in 0..traces.len() {
            for capacity in 0..CAPACITY_PERMILLE.len() {
                jobs.push(Job {
                    trace,
                    capacity,
                    kind,
                });
            }
        }
    }
    let outcome = Mutex::new(Outcome {
        ratios: vec![[[0.0; 4]; CAPACITY_PERMILLE.len()]; traces.len()],
        times: [Duration::ZERO; 4],
    });
    let next = AtomicUsize::new(0);
    let threads = thread::available_parallelism().map_or(1, |n| n.get());
    thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                while let Some(job) = jobs.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let keys = &traces[job.trace].keys;
                    let capacity = KEYS * CAPACITY_PERMILLE[job.capacity] / 1000;
                    let start = Instant::now();
                    let hits = replay(job.kind, keys, capacity);
                    let took = start.elapsed();
                    let ratio = 100.0 * hits as f64 / keys.len() as f64;
                    let k = job.kind as usize;
                    let mut out = outcome.lock().expect("a replay panicked");
                    out.ratios[job.trace][job.capacity][k] = ratio;
                    out.times[k] += took;
                }
            });
        }
    });
    outcome.into_inner().expect("a replay panicked")
}

fn render(traces: &[Trace], outcome: &Outcome) -> String {
    let mut out = String::from("# cache hit ratios\n\n");
    let requests = traces.first().map_or(0, |t| t.keys.len());
    let _ = writeln!(
        out,
        "Hits per 100 requests, replaying each trace on one thread (read; on a miss, insert).\n\
         {KEYS} keys, {requests} requests per trace. The last column is deferred's lead over\n\
         the better of moka and quick_cache, in percentage points. Moka runs\n\
         `run_pending_tasks` after every {MOKA_SYNC_EVERY} insert(s), so it holds no more\n\
         than its capacity.",
    );
    for (t, trace) in traces.iter().enumerate() {
        let _ = writeln!(out, "\n## {}\n", trace.name);
        if trace.name.contains("scans") {
            let _ = writeln!(
                out,
                "Every {SCAN_PERIOD} requests end with a scan of {SCAN_LEN} new keys: at most {:.0}% can hit.\n",
                100.0 * (SCAN_PERIOD - SCAN_LEN) as f64 / SCAN_PERIOD as f64
            );
        }
        let header = [
            "capacity",
            "deferred",
            "moka",
            "quick_cache",
            "lru",
            "deferred−max(moka,qc) (pp)",
        ];
        let rows: Vec<[String; 6]> = CAPACITY_PERMILLE
            .iter()
            .enumerate()
            .map(|(c, &permille)| {
                let r = outcome.ratios[t][c];
                let best = r[Kind::Moka as usize].max(r[Kind::QuickCache as usize]);
                [
                    format!("{} ({}%)", KEYS * permille / 1000, permille as f64 / 10.0),
                    format!("{:.2}", r[Kind::Deferred as usize]),
                    format!("{:.2}", r[Kind::Moka as usize]),
                    format!("{:.2}", r[Kind::QuickCache as usize]),
                    format!("{:.2}", r[Kind::Lru as usize]),
                    format!("{:+.2}", r[Kind::Deferred as usize] - best),
                ]
            })
            .collect();
        out.push_str(&markdown_table(header, &rows));
    }
    let _ = write!(out, "\nReplay time, all traces and capacities:");
    for kind in KINDS {
        let _ = write!(
            out,
            " {} {:.1} s,",
            name(kind),
            outcome.times[kind as usize].as_secs_f64()
        );
    }
    out.pop();
    out.push_str(".\n");
    out
}

fn name(kind: Kind) -> &'static str {
    match kind {
        Kind::Deferred => "deferred",
        Kind::Moka => "moka",
        Kind::QuickCache => "quick_cache",
        Kind::Lru => "lru",
    }
}

fn main() {
    let program = Program::from_args("cache_hit_ratio", "requests");
    let mut requests = program.count.map_or(REQUESTS, |n| n as usize);
    if !program.bench {
        requests = requests.min(SMOKE_REQUESTS);
    }

    let start = Instant::now();
    let traces = [
        zipf_trace(0.9, requests),
        zipf_trace(1.0, requests),
        zipf_trace(1.1, requests),
        scan_trace(1.0, requests),
    ];
    let outcome = run(&traces);
    let report = render(&traces, &outcome);
    print!("{report}");
    println!("\n(total {:.1} s)", start.elapsed().as_secs_f64());

    let svgs = match draw_charts(&traces, &outcome) {
        Ok(svgs) => svgs,
        Err(e) => program.fail(&e),
    };
    program.save("bench-cache-hit-ratio.md", &report, &svgs);
}

/// One SVG chart per trace, with its file name: `hit_ratio_<trace>.svg`.
fn draw_charts(traces: &[Trace], outcome: &Outcome) -> Result<Vec<(String, String)>, String> {
    let capacities = CAPACITY_PERMILLE.map(|permille| permille as f64 / 10.0);
    let requests = traces.first().map_or(0, |t| t.keys.len());
    let caption = vec![
        format!(
            "Run {} on {}. Hit ratios depend on the trace and the caches, not on the CPU.",
            chart::today(),
            chart::cpu_model()
        ),
        format!(
            "{KEYS} keys, {requests} requests, one thread: read, insert on a miss. \
             moka runs its pending tasks after every insert."
        ),
    ];
    traces
        .iter()
        .enumerate()
        .map(|(t, trace)| {
            let chart = HitRatioChart {
                trace: &trace.name,
                capacities: &capacities,
                series: KINDS
                    .iter()
                    .map(|&kind| Series {
                        name: name(kind),
                        values: outcome.ratios[t].iter().map(|r| r[kind as usize]).collect(),
                    })
                    .collect(),
                ceiling: trace
                    .name
                    .contains("scans")
                    .then(|| 100.0 * (SCAN_PERIOD - SCAN_LEN) as f64 / SCAN_PERIOD as f64),
                caption: caption.clone(),
            };
            let file = format!("hit_ratio_{}.svg", chart::slug(&trace.name));
            Ok((file, chart::hit_ratio_svg(&chart)?))
        })
        .collect()
}
