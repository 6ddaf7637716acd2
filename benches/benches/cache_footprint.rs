#![forbid(unsafe_code)]
//! `cache/footprint`: resident bytes per entry and the time of a fill, for `deferred-cache`
//! and the anchors `quick_cache`, `moka` and `dashmap` (issue #13: bytes per entry at most
//! 1.5x quick_cache's; a fill of 1M inserts at most 1.5x quick_cache's time and at most 0.3x
//! moka's). A plain program, not criterion: each figure comes from one whole fill in a
//! process of its own, which criterion's per-iteration model does not give.
//!
//! The workload, on `u64` keys and values (every cache hashing with `std`'s `RandomState`):
//!
//! * [`ENTRIES`] distinct keys (`i * 0x9E3779B97F4A7C15`, wrapping: scattered, and distinct
//!   since the multiplier is odd), built in a `Vec` before anything is measured, then
//!   inserted once each with `insert(k, k)`, in that order, on one thread;
//! * **unbounded**: every key is held. `deferred` is `Cache::new()`'s kind (no bound),
//!   `moka` `Cache::builder().build()`, `dashmap` a plain `DashMap`. quick_cache has no
//!   unbounded mode: it is sized for [`ENTRIES`] items (its `estimated_items_capacity`, which
//!   is what it allocates for) and bounded at [`QUICK_CACHE_HEADROOM`] times as many. A bound
//!   of exactly [`ENTRIES`] would not do: each of its shards enforces an equal share of the
//!   bound, the keys do not fall exactly evenly on the shards, and such a cache held 998 535
//!   of 1M keys (9 890 of 10 000 in the smoke run), having evicted the rest. The bound
//!   allocates nothing; it only keeps every shard from evicting;
//! * **bounded**: every cache but dashmap (a map, with no bound: its row shows "—") is
//!   bounded at [`CAPACITY`] entries of weight one and sees the same [`ENTRIES`] inserts, so
//!   it ends up holding about [`CAPACITY`] of them and evicted the rest on the way.
//!
//! moka applies its bound (and its entry count) in `run_pending_tasks`: it is called once
//! after the last insert, and its time is part of moka's fill, since that is work the fill
//! left to do. The fill's time over the inserts is the `ns/insert` figure. It includes the
//! page faults of the memory the fill first touches, as every cache's does (a fresh process
//! has no warm heap to reuse), and the table's growth from empty: no cache is pre-sized but
//! quick_cache, whose constructor takes its size.
//!
//! ## The measure: resident bytes, not requested bytes
//!
//! The workspace forbids `unsafe` outside `deferred-core`, and a counting global allocator
//! needs an `unsafe impl GlobalAlloc`; so instead of counting the bytes the caches ask for,
//! this program reads the process's **resident memory** (`/proc/self/statm`, its second
//! field, times a 4096-byte page) just before the fill and just after it. Bytes per entry
//! is that difference over the entries the cache holds at the end. It is what the process
//! holds for the cache: unused table slots, the allocator's rounding and its free but
//! unreturned chunks are all in it (and, for a bounded cache, what its evicted entries left
//! behind), which is what a user pays but not a count of the structure's own bytes. A page
//! is resident once touched, so the figure has a granularity of 4 KiB over the whole fill,
//! far below one byte per entry at these sizes. On a system without `/proc` (not Linux) the
//! figure reads "n/a".
//!
//! Freed memory that one cache left to the allocator would make the next cache's fill look
//! cheaper, so every (cache, mode) runs in a **fresh process**: the program re-executes
//! itself (`--worker CACHE MODE ENTRIES CAPACITY`), the child builds its keys, measures one
//! fill, prints one `key=value` line and exits, and the parent reads that line. Each child
//! runs [`REPS`] times, interleaved across caches and modes (so that a noisy stretch of the
//! machine spreads over all of them), and the report shows the median of each figure.
//!
//! `cargo bench` runs it with `--bench` ([`ENTRIES`] keys; `--entries N` changes that): it
//! prints one Markdown table and the verdicts against the targets, and saves them as
//! `target/bench-cache-footprint.md` (or `--out PATH`); it draws no chart. Run without
//! `--bench` (as `cargo test --benches` does) it makes a short smoke run ([`SMOKE_ENTRIES`]
//! keys, bounded at [`SMOKE_CAPACITY`], once each), checks that every child ran and that each
//! cache held what it should, and writes no file. Both kinds of run check that: an unbounded
//! cache holds every key, a bounded one at least one and at most its bound. `cargo xtask
//! bench cache` runs it after the other cache programs.

use core::{fmt::Write as _, hint::black_box, time::Duration};
use std::{
    collections::hash_map::RandomState,
    process::Command,
    time::{Instant, SystemTime},
};

use dashmap::DashMap;
use deferred_benches::{chart, deferred_cache, markdown_table, DeferredCache, Program};
use quick_cache::{sync::DefaultLifecycle, UnitWeighter};

/// Keys inserted in a bench run, in both modes.
const ENTRIES: u64 = 1_000_000;

/// The bound of the bounded mode in a bench run, in entries.
const CAPACITY: u64 = 100_000;

/// Keys inserted in a smoke run (no `--bench`).
const SMOKE_ENTRIES: u64 = 10_000;

/// The bound of the bounded mode in a smoke run.
const SMOKE_CAPACITY: u64 = 1_000;

/// Runs of each (cache, mode) in a bench run; the report shows the median of each figure.
const REPS: usize = 3;

/// quick_cache's bound in the unbounded mode, in multiples of the keys inserted (see the
/// module docs).
const QUICK_CACHE_HEADROOM: u64 = 2;

/// The page size `/proc/self/statm` counts in (4 KiB on the machines this runs on).
const PAGE: u64 = 4096;

/// The first argument of a child process.
const WORKER: &str = "--worker";

/// The start of the line a child prints its figures on.
const LINE: &str = "footprint:";

type Moka = moka::sync::Cache<u64, u64, RandomState>;

// ---------------------------------------------------------------------------------------
// The caches and modes

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Deferred,
    QuickCache,
    Moka,
    DashMap,
}

/// Ours first, then the anchors.
const KINDS: [Kind; 4] = [Kind::Deferred, Kind::QuickCache, Kind::Moka, Kind::DashMap];

/// The name of `kind`, in the report and on a child's command line.
fn name(kind: Kind) -> &'static str {
    match kind {
        Kind::Deferred => "deferred",
        Kind::QuickCache => "quick_cache",
        Kind::Moka => "moka",
        Kind::DashMap => "dashmap",
    }
}

/// The kind a child's command line names.
fn kind_named(text: &str) -> Option<Kind> {
    KINDS.into_iter().find(|&k| name(k) == text)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Unbounded,
    Bounded,
}

const MODES: [Mode; 2] = [Mode::Unbounded, Mode::Bounded];

/// The name of `mode` on a child's command line.
fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Unbounded => "unbounded",
        Mode::Bounded => "bounded",
    }
}

/// The mode a child's command line names.
fn mode_named(text: &str) -> Option<Mode> {
    MODES.into_iter().find(|&m| mode_name(m) == text)
}

/// Whether `kind` is measured in `mode` (dashmap has no bound).
fn measured(kind: Kind, mode: Mode) -> bool {
    !(kind == Kind::DashMap && mode == Mode::Bounded)
}

/// A cache under test, as a child fills it.
trait Filled {
    /// A fresh, empty cache for `mode`: `entries` keys will be inserted, `capacity` is the
    /// bound of the bounded mode.
    fn fresh(mode: Mode, entries: u64, capacity: u64) -> Self;
    /// One insert.
    fn put(&self, key: u64, value: u64);
    /// The work the fill left to do (moka's pending tasks); timed with the fill.
    fn settle(&self) {}
    /// The entries held now.
    fn held(&self) -> u64;
}

impl Filled for DeferredCache {
    fn fresh(mode: Mode, _entries: u64, capacity: u64) -> Self {
        match mode {
            Mode::Unbounded => deferred_cache::Cache::builder()
                .hasher(RandomState::new())
                .build(),
            Mode::Bounded => deferred_cache(capacity),
        }
    }

    #[inline]
    fn put(&self, key: u64, value: u64) {
        self.insert(key, value);
    }

    fn held(&self) -> u64 {
        self.len() as u64
    }
}

impl Filled for deferred_benches::QuickCache {
    fn fresh(mode: Mode, entries: u64, capacity: u64) -> Self {
        match mode {
            // No unbounded mode: sized for every key, and bounded at twice as many, since
            // each shard applies its share of the bound on its own (see the module docs).
            Mode::Unbounded => quick_cache::sync::Cache::with(
                entries as usize,
                QUICK_CACHE_HEADROOM * entries,
                UnitWeighter,
                RandomState::new(),
                DefaultLifecycle::default(),
            ),
            Mode::Bounded => deferred_benches::quick_cache(capacity),
        }
    }

    #[inline]
    fn put(&self, key: u64, value: u64) {
        self.insert(key, value);
    }

    fn held(&self) -> u64 {
        self.len() as u64
    }
}

impl Filled for Moka {
    fn fresh(mode: Mode, _entries: u64, capacity: u64) -> Self {
        let builder = moka::sync::Cache::builder();
        match mode {
            Mode::Unbounded => builder.build_with_hasher(RandomState::new()),
            Mode::Bounded => builder
                .max_capacity(capacity)
                .build_with_hasher(RandomState::new()),
        }
    }

    #[inline]
    fn put(&self, key: u64, value: u64) {
        self.insert(key, value);
    }

    fn settle(&self) {
        self.run_pending_tasks();
    }

    fn held(&self) -> u64 {
        self.entry_count()
    }
}

impl Filled for DashMap<u64, u64, RandomState> {
    fn fresh(_mode: Mode, _entries: u64, _capacity: u64) -> Self {
        DashMap::with_hasher(RandomState::new())
    }

    #[inline]
    fn put(&self, key: u64, value: u64) {
        self.insert(key, value);
    }

    fn held(&self) -> u64 {
        self.len() as u64
    }
}

// ---------------------------------------------------------------------------------------
// The child: one fill

/// This process's resident bytes (`/proc/self/statm`); `None` where there is no such file.
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * PAGE)
}

/// A figure for a child's line: the number, or `n/a`.
fn figure(value: Option<u64>) -> String {
    value.map_or_else(|| "n/a".to_owned(), |v| v.to_string())
}

/// Fills a fresh `C` with `entries` keys and prints what it measured as one [`LINE`].
fn fill<C: Filled>(mode: Mode, entries: u64, capacity: u64) {
    let keys: Vec<u64> = (0..entries)
        .map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .collect();
    let cache = C::fresh(mode, entries, capacity);
    let before = resident_bytes();
    let start = Instant::now();
    for &key in &keys {
        cache.put(key, key);
    }
    cache.settle();
    let took = start.elapsed();
    let after = resident_bytes();
    let held = cache.held();
    black_box(&cache);
    println!(
        "{LINE} ns_per_insert={:.3} rss_before={} rss_after={} held={held}",
        took.as_nanos() as f64 / entries as f64,
        figure(before),
        figure(after),
    );
}

/// The child's `main`: `--worker CACHE MODE ENTRIES CAPACITY` (the arguments after
/// [`WORKER`]).
fn worker(args: &[String]) {
    let usage = "usage: --worker CACHE MODE ENTRIES CAPACITY";
    let [kind, mode, entries, capacity] = args else {
        panic!("{usage}");
    };
    let kind = kind_named(kind).unwrap_or_else(|| panic!("unknown cache `{kind}`; {usage}"));
    let mode = mode_named(mode).unwrap_or_else(|| panic!("unknown mode `{mode}`; {usage}"));
    let entries: u64 = entries.parse().expect(usage);
    let capacity: u64 = capacity.parse().expect(usage);
    match kind {
        Kind::Deferred => fill::<DeferredCache>(mode, entries, capacity),
        Kind::QuickCache => fill::<deferred_benches::QuickCache>(mode, entries, capacity),
        Kind::Moka => fill::<Moka>(mode, entries, capacity),
        Kind::DashMap => fill::<DashMap<u64, u64, RandomState>>(mode, entries, capacity),
    }
}

// ---------------------------------------------------------------------------------------
// The parent: one child per (cache, mode, repetition)

/// What one child measured.
#[derive(Clone, Copy, Debug)]
struct Run {
    ns_per_insert: f64,
    /// The resident growth over the fill, per entry held; `None` without `/proc`.
    bytes_per_entry: Option<f64>,
    held: u64,
}

/// The value of `key=` in a child's line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
}

/// Parses a child's [`LINE`] out of its standard output.
fn parse(stdout: &str) -> Option<Run> {
    let line = stdout.lines().find_map(|l| l.strip_prefix(LINE))?;
    let held: u64 = field(line, "held")?.parse().ok()?;
    let rss = |key| field(line, key).and_then(|v| v.parse::<u64>().ok());
    let bytes_per_entry = rss("rss_before")
        .zip(rss("rss_after"))
        .filter(|_| held > 0)
        .map(|(before, after)| after.saturating_sub(before) as f64 / held as f64);
    Some(Run {
        ns_per_insert: field(line, "ns_per_insert")?.parse().ok()?,
        bytes_per_entry,
        held,
    })
}

/// Runs one child for `(kind, mode)` and returns what it measured; fails the program if the
/// child fails or prints no figures.
fn child(program: &Program, kind: Kind, mode: Mode, entries: u64, capacity: u64) -> Run {
    let exe = std::env::current_exe()
        .unwrap_or_else(|e| program.fail(&format!("cannot find this program: {e}")));
    let out = Command::new(exe)
        .args([WORKER, name(kind), mode_name(mode)])
        .args([entries.to_string(), capacity.to_string()])
        .output()
        .unwrap_or_else(|e| program.fail(&format!("cannot start a child: {e}")));
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        program.fail(&format!(
            "the child for {} {} failed ({}):\n{stdout}{}",
            name(kind),
            mode_name(mode),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    parse(&stdout).unwrap_or_else(|| {
        program.fail(&format!(
            "the child for {} {} printed no figures:\n{stdout}",
            name(kind),
            mode_name(mode)
        ))
    })
}

/// The median of `values` (the upper one of an even count); `None` if empty.
fn median(values: impl Iterator<Item = f64>) -> Option<f64> {
    let mut sorted: Vec<f64> = values.collect();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied()
}

/// The medians of one (cache, mode)'s runs.
#[derive(Clone, Copy, Debug, Default)]
struct Medians {
    ns_per_insert: Option<f64>,
    bytes_per_entry: Option<f64>,
    held: Option<f64>,
}

impl Medians {
    /// The medians of `runs`, figure by figure (a figure missing from any run is missing).
    fn of(runs: &[Run]) -> Self {
        let bytes: Option<Vec<f64>> = runs.iter().map(|r| r.bytes_per_entry).collect();
        Medians {
            ns_per_insert: median(runs.iter().map(|r| r.ns_per_insert)),
            bytes_per_entry: bytes.and_then(|b| median(b.into_iter())),
            held: median(runs.iter().map(|r| r.held as f64)),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Report

/// The date and time now (UTC), as `YYYY-MM-DD HH:MM UTC`.
fn now_utc() -> String {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let of_day = secs % 86_400;
    format!(
        "{} {:02}:{:02} UTC",
        chart::today(),
        of_day / 3_600,
        of_day % 3_600 / 60
    )
}

/// A ratio as `1.23x`, with a third decimal below 0.1 so that it never reads `0.00x`.
fn times(ratio: f64) -> String {
    if ratio < 0.1 {
        format!("{ratio:.3}x")
    } else {
        format!("{ratio:.2}x")
    }
}

/// `a / b` as [`times`] writes it, or `n/a` where either is missing.
fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    a.zip(b)
        .map_or_else(|| "n/a".to_owned(), |(a, b)| times(a / b))
}

/// A figure with `decimals` decimals, or `n/a`.
fn shown(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.decimals$}"))
}

/// The report: the table of every (mode, cache), then the verdicts against the targets.
/// `medians[m][k]` is mode `MODES[m]`, cache `KINDS[k]`; `None` where not measured.
fn render(
    entries: u64,
    capacity: u64,
    reps: usize,
    medians: &[[Option<Medians>; 4]; 2],
    took: Duration,
) -> String {
    let mut out = String::from("# cache/footprint: bytes per entry and the time of a fill\n\n");
    let _ = writeln!(
        out,
        "Run {} on {}. u64 keys and values, {entries} distinct keys inserted once each on one \
         thread; unbounded (every key held; quick_cache sized for {entries} and bounded at \
         {QUICK_CACHE_HEADROOM}x as many, so that no shard evicts) and bounded at {capacity} \
         (dashmap has no bound). `bytes/entry`: resident memory (`/proc/self/statm`) \
         after the fill less before it, over the entries held, in a fresh process per run: it \
         counts table slack, allocator rounding and fragmentation, not requested bytes. \
         `ns/insert`: the whole fill's time over {entries} (moka's includes one \
         `run_pending_tasks` after it). Medians of {reps} run(s) each; `÷ quick_cache` and \
         `÷ moka` divide the row's figure by the anchor's in the same mode: below 1.00x the \
         row uses less.\n",
        now_utc(),
        chart::cpu_model(),
    );
    let anchor = |m: usize, kind: Kind| {
        let k = KINDS.iter().position(|&x| x == kind).expect("an anchor");
        medians[m][k]
    };
    let mut rows = Vec::new();
    for (m, &mode) in MODES.iter().enumerate() {
        let mode_label = match mode {
            Mode::Unbounded => "unbounded".to_owned(),
            Mode::Bounded => format!("bounded {capacity}"),
        };
        let qc = anchor(m, Kind::QuickCache).unwrap_or_default();
        let moka = anchor(m, Kind::Moka).unwrap_or_default();
        for (k, &kind) in KINDS.iter().enumerate() {
            let row = match medians[m][k] {
                None => {
                    let mut row: [String; 9] = core::array::from_fn(|_| "—".to_owned());
                    row[0] = mode_label.clone();
                    row[1] = name(kind).to_owned();
                    row
                }
                Some(f) => [
                    mode_label.clone(),
                    name(kind).to_owned(),
                    shown(f.held, 0),
                    shown(f.ns_per_insert, 1),
                    ratio(f.ns_per_insert, qc.ns_per_insert),
                    ratio(f.ns_per_insert, moka.ns_per_insert),
                    shown(f.bytes_per_entry, 1),
                    ratio(f.bytes_per_entry, qc.bytes_per_entry),
                    ratio(f.bytes_per_entry, moka.bytes_per_entry),
                ],
            };
            rows.push(row);
        }
    }
    out.push_str(&markdown_table(
        [
            "mode",
            "cache",
            "held",
            "ns/insert",
            "÷ quick_cache",
            "÷ moka",
            "bytes/entry",
            "÷ quick_cache",
            "÷ moka",
        ],
        &rows,
    ));

    // Issue #13's targets for ours.
    let ours = KINDS
        .iter()
        .position(|&k| k == Kind::Deferred)
        .expect("ours is measured");
    let mut verdicts = Vec::new();
    for (m, &mode) in MODES.iter().enumerate() {
        let f = medians[m][ours].unwrap_or_default();
        let qc = anchor(m, Kind::QuickCache).unwrap_or_default();
        let moka = anchor(m, Kind::Moka).unwrap_or_default();
        let targets = [
            (
                "bytes/entry <= 1.5x quick_cache",
                f.bytes_per_entry,
                qc.bytes_per_entry,
                1.5,
            ),
            (
                "insert (fill) <= 1.5x quick_cache",
                f.ns_per_insert,
                qc.ns_per_insert,
                1.5,
            ),
            (
                "insert (fill) <= 0.3x moka",
                f.ns_per_insert,
                moka.ns_per_insert,
                0.3,
            ),
        ];
        for (goal, a, b, limit) in targets {
            let verdict = match a.zip(b) {
                None => "no data",
                Some((a, b)) if a / b <= limit => "met",
                Some(_) => "**missed**",
            };
            verdicts.push([
                goal.to_owned(),
                mode_name(mode).to_owned(),
                ratio(a, b),
                verdict.to_owned(),
            ]);
        }
    }
    out.push_str("\nTargets (issue #13), deferred against the anchors:\n\n");
    out.push_str(&markdown_table(
        ["target", "mode", "this run", "verdict"],
        &verdicts,
    ));
    let _ = writeln!(out, "\n(whole bench: {:.1} s)", took.as_secs_f64());
    out
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(rest) = args.strip_prefix(&[WORKER.to_owned()]) {
        worker(rest);
        return;
    }

    let program = Program::from_args("cache_footprint", "entries");
    let entries = match (program.bench, program.count) {
        (_, Some(n)) => n,
        (true, None) => ENTRIES,
        (false, None) => SMOKE_ENTRIES,
    };
    let capacity = if program.bench {
        CAPACITY
    } else {
        SMOKE_CAPACITY
    }
    .min(entries);
    let reps = if program.bench { REPS } else { 1 };

    let start = Instant::now();
    let mut runs: [[Vec<Run>; 4]; 2] = Default::default();
    // Repetitions outermost, so that a noisy stretch of the machine spreads over every cache
    // and mode rather than spoiling one of them.
    for _ in 0..reps {
        for (m, &mode) in MODES.iter().enumerate() {
            for (k, &kind) in KINDS.iter().enumerate() {
                if !measured(kind, mode) {
                    continue;
                }
                let run = child(&program, kind, mode, entries, capacity);
                // Each cache must hold what its mode says, or its bytes per entry mean
                // something else.
                match mode {
                    Mode::Unbounded => assert_eq!(
                        run.held,
                        entries,
                        "{} unbounded held {} of {entries}",
                        name(kind),
                        run.held
                    ),
                    Mode::Bounded => assert!(
                        run.held > 0 && run.held <= capacity,
                        "{} bounded at {capacity} held {}",
                        name(kind),
                        run.held
                    ),
                }
                runs[m][k].push(run);
            }
        }
    }
    for (m, &mode) in MODES.iter().enumerate() {
        for (k, &kind) in KINDS.iter().enumerate() {
            assert_eq!(
                runs[m][k].len(),
                if measured(kind, mode) { reps } else { 0 },
                "every child ran"
            );
        }
    }
    let medians: [[Option<Medians>; 4]; 2] = core::array::from_fn(|m| {
        core::array::from_fn(|k| (!runs[m][k].is_empty()).then(|| Medians::of(&runs[m][k])))
    });

    let report = render(entries, capacity, reps, &medians, start.elapsed());
    print!("{report}");
    program.save("bench-cache-footprint.md", &report, &[]);
}
