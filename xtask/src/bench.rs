//! `cargo xtask bench [LAYER] [--no-run]`: runs a layer's criterion benches, then prints how
//! deferred compares with each alternative; then runs the layer's plain bench programs, if any
//! ([`PROGRAMS`]: `cache` replays key traces and prints hit ratios, saved as
//! `target/bench-cache-hit-ratio.md`, then runs the mixed workload `cache/mixed` at 1, 2, 16 and
//! 64 threads and prints throughput and p99.99 with their ratios to quick_cache, saved as
//! `target/bench-cache-mixed.md`; both draw SVG charts in `benches/charts/`, which the cache
//! README shows; last it measures resident bytes per entry and the time of a 1M-insert fill,
//! unbounded and bounded, each in a child process of its own, saved as
//! `target/bench-cache-footprint.md`). It saves the layer's tables, then each program's
//! report, as `target/bench-<LAYER>.md`.
//!
//! Criterion's own output lists each benchmark on its own; the question we ask of a bench run is
//! "how much faster or slower than the alternatives", so the table puts every function of a
//! group next to ours. Results are read from criterion's files (`<group>/<function>/<value>/new/`)
//! with a few lines of hand parsing instead of pulling serde into xtask.
//!
//! A layer with targets ([`TARGETS`]: the issues' tables, for `cache`, `expiring` and
//! `redis`) gets a last table that checks each one, met or missed. Some targets are figures criterion does not measure (how
//! many timers a pass touched, a pass's p99): the bench writes those itself, as `key=value` lines,
//! to the file that `DEFERRED_BENCH_EXTRAS` names (`target/bench-<LAYER>-extras.txt`).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::cmd::{self, cargo, Result};

/// One bench target per layer, `benches/benches/<layer>.rs`, in layer order.
const LAYERS: &[&str] = &["core", "map", "cache", "expiring", "redis"];
const PACKAGE: &str = "deferred-benches";

/// Plain programs (`harness = false`, not criterion) that a layer runs after its criterion
/// benches: `(layer, bench target, report file, charts folder)`. Each prints its own report and
/// saves it as the report file in the target directory (given to it as `--out PATH`); one with a
/// charts folder (relative to the repository root) draws SVG charts there (`--charts DIR`).
const PROGRAMS: &[(&str, &str, &str, Option<&str>)] = &[
    (
        "cache",
        "cache_hit_ratio",
        "bench-cache-hit-ratio.md",
        Some("benches/charts"),
    ),
    // `cache/mixed`: throughput and p99.99 at 1, 2, 16 and 64 threads, with the ratios to
    // quick_cache and issue #13's targets, drawn as `throughput_mixed.svg`.
    (
        "cache",
        "cache_mixed",
        "bench-cache-mixed.md",
        Some("benches/charts"),
    ),
    // `cache/footprint`: resident bytes per entry and the time of a 1M-insert fill, unbounded
    // and bounded, against quick_cache, moka and dashmap, with issue #13's targets; no chart.
    ("cache", "cache_footprint", "bench-cache-footprint.md", None),
];

/// The environment variable that names the file a bench writes its own figures to.
const EXTRAS_VAR: &str = "DEFERRED_BENCH_EXTRAS";

/// What a [`Target`] checks.
enum Measure {
    /// Our median divided by `anchor`'s, two functions of criterion group `group`.
    Ratio {
        group: &'static str,
        ours: &'static str,
        anchor: &'static str,
    },
    /// An extras figure divided by another (`per` = `None`: the figure itself).
    Extra {
        /// What the figure is, for the table.
        label: &'static str,
        key: &'static str,
        per: Option<&'static str>,
        /// How the figure reads: a count, or nanoseconds.
        nanos: bool,
        /// The extras figure that says over how many passes it was taken, if any.
        passes: Option<&'static str>,
    },
}

/// One row of an issue's benchmark table: `measure` must be at most `at_most` (`None`: an
/// anchor shown for scale, with no target).
struct Target {
    layer: &'static str,
    workload: &'static str,
    measure: Measure,
    at_most: Option<f64>,
    /// The target as the issue words it.
    goal: &'static str,
}

/// The targets checked after a layer's run, in the order of the issue's table.
const TARGETS: &[Target] = &[
    // Issue #13's criterion targets for the cache (its bytes per entry and fill targets are
    // checked by the `cache_footprint` program, its mixed-workload ones by `cache_mixed`).
    Target {
        layer: "cache",
        workload: "hit on a warm key, 1 thread",
        measure: Measure::Ratio {
            group: "cache/hit",
            ours: "deferred",
            anchor: "quick_cache",
        },
        at_most: Some(1.1),
        goal: "<= 1.1x quick_cache",
    },
    Target {
        layer: "cache",
        workload: "get_with on a hit",
        measure: Measure::Ratio {
            group: "cache/get_with_hit",
            ours: "deferred",
            anchor: "deferred_get_if_present",
        },
        at_most: Some(1.1),
        goal: "<= 1.1x our get_if_present",
    },
    Target {
        layer: "cache",
        workload: "miss with a ready loader, full cache (evicts)",
        measure: Measure::Ratio {
            group: "cache/miss_ready",
            ours: "deferred",
            anchor: "quick_cache",
        },
        at_most: Some(1.5),
        goal: "<= 1.5x quick_cache",
    },
    Target {
        layer: "cache",
        workload: "miss with a ready loader, full cache (evicts)",
        measure: Measure::Ratio {
            group: "cache/miss_ready",
            ours: "deferred",
            anchor: "moka",
        },
        at_most: Some(0.3),
        goal: "<= 0.3x moka",
    },
    Target {
        layer: "expiring",
        workload: "hit with TTI on",
        measure: Measure::Ratio {
            group: "expiring/hit_tti",
            ours: "deferred",
            anchor: "moka",
        },
        at_most: Some(0.2),
        goal: ">= 5x faster than moka (<= 0.20x)",
    },
    Target {
        layer: "expiring",
        workload: "hit with TTI on",
        measure: Measure::Ratio {
            group: "expiring/hit_tti",
            ours: "deferred",
            anchor: "deferred_cache_no_expiry",
        },
        at_most: Some(1.3),
        goal: "<= 1.3x our plain hit",
    },
    Target {
        layer: "expiring",
        workload: "maintenance pass, 1M entries, 1% expired",
        measure: Measure::Extra {
            label:
                "expiring/maintenance_1m_1pct: deferred timers touched (most in a pass) / expired",
            key: "maintenance_deferred_touched_max",
            per: Some("maintenance_expired"),
            nanos: false,
            passes: Some("maintenance_deferred_passes"),
        },
        at_most: Some(2.0),
        goal: "touches <= 2x the expired count",
    },
    Target {
        layer: "expiring",
        workload: "maintenance pass, 1M entries, 1% expired",
        measure: Measure::Extra {
            label: "expiring/maintenance_1m_1pct: deferred p99 of a pass",
            key: "maintenance_deferred_p99_ns",
            per: None,
            nanos: true,
            passes: Some("maintenance_deferred_passes"),
        },
        at_most: Some(1e6),
        goal: "p99 <= 1 ms",
    },
    Target {
        layer: "expiring",
        workload: "maintenance pass, 1M entries, 1% expired",
        measure: Measure::Extra {
            label: "expiring/maintenance_1m_1pct: deferred p99 of one operation, maintenance_budget(1024)",
            key: "maintenance_deferred_op_budget_p99_ns",
            per: None,
            nanos: true,
            passes: Some("maintenance_deferred_op_budget_passes"),
        },
        at_most: Some(1e6),
        goal: "p99 <= 1 ms (the pause one caller pays)",
    },
    Target {
        layer: "expiring",
        workload: "maintenance pass, 1M entries, 1% expired",
        measure: Measure::Extra {
            label: "expiring/maintenance_1m_1pct: moka p99 of a pass",
            key: "maintenance_moka_p99_ns",
            per: None,
            nanos: true,
            passes: Some("maintenance_moka_passes"),
        },
        at_most: None,
        goal: "anchor: moka run_pending_tasks p99",
    },
    Target {
        layer: "expiring",
        workload: "maintenance pass, 1M entries, 1% expired",
        measure: Measure::Ratio {
            group: "expiring/maintenance_1m_1pct",
            ours: "deferred",
            anchor: "moka",
        },
        at_most: None,
        goal: "anchor: moka run_pending_tasks median",
    },
    Target {
        layer: "expiring",
        workload: "insert with per-entry expiry",
        measure: Measure::Ratio {
            group: "expiring/insert_per_entry",
            ours: "deferred",
            anchor: "moka",
        },
        at_most: Some(0.5),
        goal: "<= 0.5x moka",
    },
    // Issue #14: the hybrid tier against what it stands on, in the same run
    // (`benches/benches/redis.rs`, which starts its own redis-server on a Unix socket).
    Target {
        layer: "redis",
        workload: "L2 hit (L1 miss)",
        measure: Measure::Ratio {
            group: "redis/l2_hit",
            ours: "deferred",
            anchor: "redis_get",
        },
        at_most: Some(1.1),
        goal: "<= 1.1x a bare GET on the same connection kind",
    },
    Target {
        layer: "redis",
        workload: "L2 hit (L1 miss), paired",
        measure: Measure::Extra {
            label: "redis/l2_hit paired: median L2 hit / median GET, one beside the other",
            key: "l2_paired_deferred_ns",
            per: Some("l2_paired_get_ns"),
            nanos: false,
            passes: None,
        },
        at_most: Some(1.1),
        goal: "<= 1.1x a bare GET, timed in the same rounds",
    },
    Target {
        layer: "redis",
        workload: "L1 hit, tier on",
        measure: Measure::Ratio {
            group: "redis/l1_hit",
            ours: "deferred",
            anchor: "expiring",
        },
        at_most: Some(1.05),
        goal: "<= 1.05x deferred-expiring's hit, same settings",
    },
    Target {
        layer: "redis",
        workload: "L1 hit, tier on, paired",
        measure: Measure::Extra {
            label: "redis/l1_hit paired: median batch of 2000 hits / the plain cache's, side by side",
            key: "l1_paired_deferred_ns",
            per: Some("l1_paired_expiring_ns"),
            nanos: false,
            passes: None,
        },
        at_most: Some(1.05),
        goal: "<= 1.05x deferred-expiring's hit, timed in the same rounds",
    },
    Target {
        layer: "redis",
        workload: "4 processes x 1000 tasks, one cold key, 50 ms loader",
        measure: Measure::Extra {
            label: "redis/stampede: loader runs across the 4 processes",
            key: "stampede_loads",
            per: None,
            nanos: false,
            passes: None,
        },
        at_most: Some(1.0),
        goal: "1 load",
    },
    Target {
        layer: "redis",
        workload: "4 processes x 1000 tasks, one cold key, 50 ms loader",
        measure: Measure::Extra {
            label: "redis/stampede: wall, start signal to the last process done",
            key: "stampede_wall_ns",
            per: None,
            nanos: true,
            passes: None,
        },
        at_most: Some(60e6),
        goal: "wall <= 60 ms",
    },
];

/// The programs of `layer`: see [`PROGRAMS`].
fn programs(
    layer: &str,
) -> impl Iterator<Item = (&'static str, &'static str, Option<&'static str>)> + '_ {
    PROGRAMS
        .iter()
        .filter(move |(of, ..)| *of == layer)
        .map(|&(_, target, report, charts)| (target, report, charts))
}

/// The `.svg` files of `dir` written at or after `since`, by name.
fn charts_since(dir: &Path, since: SystemTime) -> Result<Vec<PathBuf>> {
    let entries =
        fs::read_dir(dir).map_err(|e| format!("could not list {}: {e}", dir.display()))?;
    let mut charts = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("could not list {}: {e}", dir.display()))?;
        let path = entry.path();
        if !matches!(path.extension(), Some(ext) if ext == "svg") {
            continue;
        }
        let modified = entry
            .metadata()
            .and_then(|m| m.modified())
            .map_err(|e| format!("could not read the time of {}: {e}", path.display()))?;
        if modified >= since {
            charts.push(path);
        }
    }
    charts.sort();
    Ok(charts)
}

/// `cargo xtask bench --no-run`, the CI step: compiles every bench without running it.
pub fn build() -> Result {
    cmd::run(&mut cargo(["bench", "-p", PACKAGE, "--no-run"]))
}

pub fn run(args: &[String]) -> Result {
    let mut no_run = false;
    let mut layer = None;
    for arg in args {
        match arg.as_str() {
            "--no-run" => no_run = true,
            name if layer.is_none() && LAYERS.contains(&name) => layer = Some(name),
            other => {
                return Err(format!(
                    "unexpected bench argument `{other}`: expected one layer ({}) and/or --no-run",
                    LAYERS.join(", ")
                ))
            }
        }
    }
    let bench_file = |layer: &str| cmd::root().join(format!("benches/benches/{layer}.rs"));
    let layers = match layer {
        Some(layer) if !bench_file(layer).exists() => {
            return Err(format!(
                "layer `{layer}` has no benches yet (no benches/benches/{layer}.rs)"
            ))
        }
        Some(layer) => vec![layer],
        // Layers are written bottom-up; the ones without benches yet are simply not there.
        None => LAYERS
            .iter()
            .copied()
            .filter(|layer| bench_file(layer).exists())
            .collect(),
    };

    if no_run {
        let mut cmd = cargo(["bench", "-p", PACKAGE, "--no-run"]);
        if let Some(layer) = layer {
            cmd.args(["--bench", layer]);
            for (program, ..) in programs(layer) {
                cmd.args(["--bench", program]);
            }
        }
        return cmd::run(&mut cmd);
    }

    if layers.contains(&"redis") {
        // The redis bench starts its own server; install it first if it is missing.
        crate::redis::ensure_server()?;
    }
    let target = target_dir()?;
    let every_layer = layer.is_none();
    let mut all: Vec<(&str, Vec<Sample>)> = Vec::new();
    // Criterion honours CRITERION_HOME before the target directory.
    let results =
        std::env::var_os("CRITERION_HOME").map_or_else(|| target.join("criterion"), PathBuf::from);
    for layer in layers {
        // Anything criterion wrote after this moment came from this run. That keeps results of
        // benchmarks since renamed or removed out of the table, which a name filter would not.
        // Every benchmark warms up for longer than any file system's timestamp resolution.
        let started = SystemTime::now();
        let extras_path = target.join(format!("bench-{layer}-extras.txt"));
        match fs::remove_file(&extras_path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("could not remove {}: {e}", extras_path.display())),
        }
        let mut bench = cargo(["bench", "-p", PACKAGE, "--bench", layer]);
        cmd::run(bench.env(EXTRAS_VAR, &extras_path))?;

        let mut samples = Vec::new();
        collect(&results, started, &mut samples)?;
        // A bench with no figures of its own writes no file.
        let extras = fs::read_to_string(&extras_path).unwrap_or_default();
        let mut report = render(layer, &samples);
        report.push_str(&check_targets(layer, &samples, &parse_extras(&extras)));
        print!("\n{report}");

        // Charts already listed for an earlier program of this layer: the slack below would
        // otherwise list them again for the next one.
        let mut listed = Vec::new();
        for (program, file, charts) in programs(layer) {
            let path = target.join(file);
            let mut cmd = cargo(["bench", "-p", PACKAGE, "--bench", program, "--", "--out"]);
            cmd.arg(&path);
            match charts {
                None => cmd::run(&mut cmd)?,
                Some(charts) => {
                    let dir = cmd::root().join(charts);
                    // A little slack for file systems with coarse timestamps: the program
                    // measures for seconds before it writes a chart.
                    let started = SystemTime::now();
                    let started = started
                        .checked_sub(Duration::from_secs(2))
                        .unwrap_or(started);
                    cmd::run(cmd.arg("--charts").arg(&dir))?;
                    let mut written = charts_since(&dir, started)?;
                    written.retain(|chart| !listed.contains(chart));
                    if written.is_empty() {
                        return Err(format!("{program} wrote no charts in {}", dir.display()));
                    }
                    println!("\n{program}: {} charts in {charts}/:", written.len());
                    for chart in &written {
                        let shown = chart.strip_prefix(cmd::root()).unwrap_or(chart);
                        println!("  {}", shown.display());
                    }
                    listed.extend(written);
                }
            }
            // The layer's report carries the programs' reports after its own tables.
            let text = fs::read_to_string(&path)
                .map_err(|e| format!("{program} wrote no report at {}: {e}", path.display()))?;
            report.push('\n');
            report.push_str(&text);
        }
        let path = target.join(format!("bench-{layer}.md"));
        fs::write(&path, &report)
            .map_err(|e| format!("could not write {}: {e}", path.display()))?;
        println!(
            "\nwrote {} (with the reports of {layer}'s programs)",
            path.display()
        );
        all.push((layer, samples));
    }
    if every_layer {
        let report = summary(&all);
        print!("\n{report}");
        let path = target.join("bench-all.md");
        fs::write(&path, &report)
            .map_err(|e| format!("could not write {}: {e}", path.display()))?;
        println!(
            "\nwrote {} (criterion's plots: {})",
            path.display(),
            results.join("report").display()
        );
    }
    Ok(())
}

/// One table for every layer: each of our benchmarks against each anchor in its group, as
/// the ratio of medians, headed by the machine and the date (the figures mean little without
/// them).
fn summary(layers: &[(&str, Vec<Sample>)]) -> String {
    let mut out = String::from("# cargo xtask bench: every layer against its anchors\n\n");
    out.push_str(&format!(
        "Machine: {}. Date: {} (UTC).\n\n",
        machine(),
        today()
    ));
    out.push_str(
        "`deferred / anchor` divides our median by the anchor's, in the same run: below 1.00x we \
         are faster. Groups with no anchor (our own variants only) are left out.\n\n",
    );
    let mut rows = Vec::new();
    for (layer, samples) in layers {
        let mut groups: BTreeMap<(&str, Option<&str>), Vec<&Sample>> = BTreeMap::new();
        for sample in samples {
            groups
                .entry((&sample.group, sample.value.as_deref()))
                .or_default()
                .push(sample);
        }
        for ((group, value), members) in groups {
            let Some(ours) = reference(&members).map(|i| members[i]) else {
                continue;
            };
            let workload = match value {
                Some(value) => format!("{group} ({value})"),
                None => group.to_owned(),
            };
            for anchor in members
                .iter()
                .filter(|m| !m.function.starts_with("deferred"))
            {
                rows.push([
                    (*layer).to_owned(),
                    workload.clone(),
                    human(ours.median_ns),
                    anchor.function.replace('|', r"\|"),
                    human(anchor.median_ns),
                    format!("{:.2}x", ours.median_ns / anchor.median_ns),
                ]);
            }
        }
    }
    out.push_str(&table_aligned(
        [
            "layer",
            "workload",
            "deferred",
            "anchor",
            "anchor median",
            "deferred / anchor",
        ],
        [false, false, true, false, true, true],
        &rows,
    ));
    out
}

/// The CPU model and the number of CPUs this process may use.
fn machine() -> String {
    let model = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("model name"))
                .map(|rest| rest.trim_start_matches([' ', '\t', ':']).trim().to_owned())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_owned());
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    format!("{model}, {cpus} CPUs")
}

/// Today's date (UTC) as `YYYY-MM-DD`, from the system clock.
fn today() -> String {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Asks cargo, so `CARGO_TARGET_DIR` and `build.target-dir` in any config file are honoured.
fn target_dir() -> Result<PathBuf> {
    let metadata = cmd::read(&mut cargo([
        "metadata",
        "--format-version",
        "1",
        "--no-deps",
    ]))?;
    match json_str(&metadata, "target_directory") {
        Some(Some(dir)) => Ok(PathBuf::from(dir)),
        _ => Err("`cargo metadata` did not report a target_directory".into()),
    }
}

/// One measured function: a row of the table for `(group, value)`.
#[derive(Debug, PartialEq)]
struct Sample {
    group: String,
    /// The benchmark parameter (`BenchmarkId::new(function, value)`), if any.
    value: Option<String>,
    function: String,
    median_ns: f64,
}

/// Walks criterion's directory for `new/estimates.json` files written after `since`.
fn collect(dir: &Path, since: SystemTime, out: &mut Vec<Sample>) -> Result {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        // No results directory at all: the run measured nothing, which `render` reports.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("could not read {}: {e}", dir.display())),
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if !path.is_dir() {
            continue;
        }
        let estimates = path.join("estimates.json");
        if path.file_name().is_some_and(|name| name == "new") && estimates.is_file() {
            let fresh = fs::metadata(&estimates)
                .and_then(|m| m.modified())
                .map_or(true, |t| t >= since);
            if fresh {
                out.push(read_sample(&path)?);
            }
        } else {
            collect(&path, since, out)?;
        }
    }
    Ok(())
}

/// Reads one benchmark's ids from `benchmark.json` (the directory names are sanitized: `/`
/// becomes `_`, so they cannot be mapped back) and its median from `estimates.json`.
fn read_sample(new_dir: &Path) -> Result<Sample> {
    let read = |name: &str| {
        let path = new_dir.join(name);
        fs::read_to_string(&path).map_err(|e| format!("could not read {}: {e}", path.display()))
    };
    let (ids, estimates) = (read("benchmark.json")?, read("estimates.json")?);
    let malformed = |what: &str| format!("unexpected {what} in {}", new_dir.display());
    let group = json_str(&ids, "group_id")
        .flatten()
        .ok_or_else(|| malformed("benchmark.json"))?;
    let value = json_str(&ids, "value_str").flatten();
    // `BenchmarkId::from_parameter(p)` has no function id; its parameter names the row instead.
    let (function, value) = match json_str(&ids, "function_id").flatten() {
        Some(function) => (function, value),
        None => (value.unwrap_or_else(|| group.clone()), None),
    };
    let median_ns = median_ns(&estimates).ok_or_else(|| malformed("estimates.json"))?;
    Ok(Sample {
        group,
        value,
        function,
        median_ns,
    })
}

/// The text right after `"key":`. Good enough for criterion's flat, compact JSON, where every key
/// we look for occurs once (or, for `point_estimate`, first after the key we start from).
fn after_key<'a>(json: &'a str, key: &str) -> Option<&'a str> {
    let pattern = format!("\"{key}\":");
    let at = json.find(&pattern)? + pattern.len();
    Some(json[at..].trim_start())
}

/// A string field: `None` if absent or not a string, `Some(None)` if `null`.
fn json_str(json: &str, key: &str) -> Option<Option<String>> {
    let rest = after_key(json, key)?;
    if rest.starts_with("null") {
        return Some(None);
    }
    let mut chars = rest.strip_prefix('"')?.chars();
    let mut out = String::new();
    loop {
        match chars.next()? {
            '"' => return Some(Some(out)),
            '\\' => match chars.next()? {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                'r' => out.push('\r'),
                'b' => out.push('\u{8}'),
                'f' => out.push('\u{c}'),
                'u' => {
                    let hex: String = chars.by_ref().take(4).collect();
                    let code = u32::from_str_radix(&hex, 16).ok()?;
                    // A lone half of a surrogate pair is not a char; names are for display only.
                    out.push(char::from_u32(code).unwrap_or(char::REPLACEMENT_CHARACTER));
                }
                escaped => out.push(escaped), // `"`, `\` and `/` stand for themselves.
            },
            c => out.push(c),
        }
    }
}

/// `median.point_estimate`, in nanoseconds. `"median":` with the colon does not match the
/// `median_abs_dev` key, and the median's confidence interval holds no `point_estimate`.
fn median_ns(estimates: &str) -> Option<f64> {
    let number = after_key(after_key(estimates, "median")?, "point_estimate")?;
    let end = number
        .find(|c: char| !(c.is_ascii_digit() || "+-.eE".contains(c)))
        .unwrap_or(number.len());
    number[..end].parse().ok()
}

/// The report as Markdown, which also reads well in a terminal: one table per group and value.
fn render(layer: &str, samples: &[Sample]) -> String {
    let mut out = format!("# cargo xtask bench {layer}\n\n");
    if samples.is_empty() {
        out.push_str("Criterion wrote no results in this run.\n");
        return out;
    }
    out.push_str(
        "Median time per iteration. `deferred / this` divides deferred's median by the row's:\n\
         below 1.00x deferred is faster, above it slower.\n",
    );

    let mut tables: BTreeMap<(&str, Option<&str>), Vec<&Sample>> = BTreeMap::new();
    for sample in samples {
        tables
            .entry((&sample.group, sample.value.as_deref()))
            .or_default()
            .push(sample);
    }
    let mut keys: Vec<_> = tables.keys().copied().collect();
    // Numeric parameters (thread counts, sizes) read best in numeric order: 2 before 16.
    keys.sort_by_key(|&(group, value)| (group, value.and_then(|v| v.parse::<u64>().ok()), value));

    for key in keys {
        let mut rows = tables.remove(&key).unwrap_or_default();
        rows.sort_by(|a, b| a.function.cmp(&b.function));
        let reference = reference(&rows);
        // Ours first, then the alternatives by name.
        if let Some(i) = reference {
            let ours = rows.remove(i);
            rows.insert(0, ours);
        }
        let ours = reference.map(|_| rows[0].median_ns);

        let title = match key.1 {
            Some(value) => format!("{} ({value})", key.0),
            None => key.0.to_owned(),
        };
        out.push_str(&format!("\n## {title}\n\n"));
        let cells: Vec<[String; 3]> = rows
            .iter()
            .map(|row| {
                let ratio = ours.map_or_else(
                    || "-".to_owned(),
                    |ours| format!("{:.2}x", ours / row.median_ns),
                );
                [
                    row.function.replace('|', r"\|"),
                    human(row.median_ns),
                    ratio,
                ]
            })
            .collect();
        out.push_str(&table(["function", "median", "deferred / this"], &cells));
        if ours.is_none() {
            out.push_str("\nNo function here is named `deferred…`, so there is no ratio.\n");
        }
    }
    out
}

/// The `key=value` lines of an extras file; other lines are ignored.
fn parse_extras(text: &str) -> BTreeMap<&str, f64> {
    text.lines()
        .filter_map(|line| {
            let (key, value) = line.split_once('=')?;
            Some((key.trim(), value.trim().parse().ok()?))
        })
        .collect()
}

/// The median of `function` in `group` (criterion runs with no parameter only).
fn median_of(samples: &[Sample], group: &str, function: &str) -> Option<f64> {
    samples
        .iter()
        .find(|s| s.group == group && s.function == function && s.value.is_none())
        .map(|s| s.median_ns)
}

/// The table of `layer`'s [`TARGETS`], met or missed; empty if it has none.
fn check_targets(layer: &str, samples: &[Sample], extras: &BTreeMap<&str, f64>) -> String {
    let rows: Vec<[String; 5]> = TARGETS
        .iter()
        .filter(|t| t.layer == layer)
        .map(|t| {
            let (what, figure) = match t.measure {
                Measure::Ratio {
                    group,
                    ours,
                    anchor,
                } => {
                    let what = format!("{group}: {ours} / {anchor} (medians)");
                    let figure = median_of(samples, group, ours)
                        .zip(median_of(samples, group, anchor))
                        .map(|(a, b)| {
                            (
                                a / b,
                                format!("{} / {} = {:.2}x", human(a), human(b), a / b),
                            )
                        });
                    (what, figure)
                }
                Measure::Extra {
                    label,
                    key,
                    per,
                    nanos,
                    passes,
                } => {
                    let show = |v: f64| {
                        if nanos {
                            human(v)
                        } else {
                            format!("{v}")
                        }
                    };
                    let figure = match per {
                        None => extras.get(key).map(|&v| (v, show(v))),
                        Some(per) => extras.get(key).zip(extras.get(per)).map(|(&a, &b)| {
                            (a / b, format!("{} / {} = {:.2}x", show(a), show(b), a / b))
                        }),
                    };
                    let of = passes.and_then(|p| extras.get(p));
                    let figure = figure.map(|(value, shown)| match of {
                        Some(n) => (value, format!("{shown} ({n} passes)")),
                        None => (value, shown),
                    });
                    (label.to_owned(), figure)
                }
            };
            let verdict = match (figure.as_ref(), t.at_most) {
                (None, _) => "no data",
                (Some(_), None) => "-",
                (Some(&(value, _)), Some(limit)) if value <= limit => "met",
                (Some(_), Some(_)) => "MISSED",
            };
            let figure = figure.map_or_else(|| "-".to_owned(), |(_, shown)| shown);
            [
                t.workload.to_owned(),
                what,
                figure,
                t.goal.to_owned(),
                verdict.to_owned(),
            ]
            .map(|cell| cell.replace('|', r"\|"))
        })
        .collect();
    if rows.is_empty() {
        return String::new();
    }
    let mut out = String::from(
        "\n## targets\n\nThe issue's table, checked against this run (`no data`: filtered out, or \
         the bench wrote no extras file).\n\n",
    );
    out.push_str(&table_aligned(
        ["workload", "measure", "this run", "target", "verdict"],
        [false, false, true, false, false],
        &rows,
    ));
    out
}

/// The row to compare against: the function named `deferred`, else the first whose name starts
/// with it. Expects `rows` sorted by function name.
fn reference(rows: &[&Sample]) -> Option<usize> {
    rows.iter()
        .position(|row| row.function == "deferred")
        .or_else(|| {
            rows.iter()
                .position(|row| row.function.starts_with("deferred"))
        })
}

/// A Markdown table with padded columns: name left-aligned, numbers right-aligned.
fn table(header: [&str; 3], rows: &[[String; 3]]) -> String {
    table_aligned(header, [false, true, true], rows)
}

/// A Markdown table with padded columns, each right-aligned where `right` says so.
fn table_aligned<const N: usize>(
    header: [&str; N],
    right: [bool; N],
    rows: &[[String; N]],
) -> String {
    let widths: [usize; N] = core::array::from_fn(|i| {
        rows.iter()
            .map(|row| row[i].chars().count())
            .chain([header[i].chars().count()])
            .max()
            .unwrap_or(0)
            .max(2)
    });
    let line = |cells: [&str; N]| {
        let mut out = String::from("|");
        for ((cell, width), right) in cells.iter().zip(widths).zip(right) {
            if right {
                out.push_str(&format!(" {cell:>width$} |"));
            } else {
                out.push_str(&format!(" {cell:<width$} |"));
            }
        }
        out.push('\n');
        out
    };
    let mut out = line(header);
    out.push('|');
    for (width, right) in widths.into_iter().zip(right) {
        let dashes = "-".repeat(width - 1);
        if right {
            out.push_str(&format!(" {dashes}: |"));
        } else {
            out.push_str(&format!(" :{dashes} |"));
        }
    }
    out.push('\n');
    for row in rows {
        out.push_str(&line(core::array::from_fn(|i| row[i].as_str())));
    }
    out
}

/// Criterion reports nanoseconds; scaled to the unit that keeps the number short.
fn human(ns: f64) -> String {
    let (value, unit) = match ns {
        ns if ns < 1e3 => (ns, "ns"),
        ns if ns < 1e6 => (ns / 1e3, "µs"),
        ns if ns < 1e9 => (ns / 1e6, "ms"),
        ns => (ns / 1e9, "s"),
    };
    format!("{value:.2} {unit}")
}

#[cfg(test)]
mod tests {
    use super::*;

    // Trimmed from what criterion 0.5 wrote for `group.bench_with_input(BenchmarkId::new(..))`.
    const IDS: &str = r#"{"group_id":"core/oneshot","function_id":"flume/x","value_str":"16 threads","throughput":null,"full_id":"core/oneshot/flume/x/16 threads","directory_name":"core_oneshot/flume_x/16 threads"}"#;
    const ESTIMATES: &str = r#"{"mean":{"confidence_interval":{"confidence_level":0.95,"lower_bound":0.70,"upper_bound":0.72},"point_estimate":0.715,"standard_error":0.004},"median":{"confidence_interval":{"confidence_level":0.95,"lower_bound":0.70,"upper_bound":0.72},"point_estimate":1.5e3,"standard_error":0.006},"median_abs_dev":{"confidence_interval":{"confidence_level":0.95,"lower_bound":0.003,"upper_bound":0.02},"point_estimate":0.017,"standard_error":0.005}}"#;

    #[test]
    fn dates_from_day_counts() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_783), (2026, 11, 26));
    }

    #[test]
    fn parses_criterion_files() {
        assert_eq!(json_str(IDS, "group_id"), Some(Some("core/oneshot".into())));
        assert_eq!(json_str(IDS, "throughput"), Some(None));
        assert_eq!(json_str(IDS, "missing"), None);
        assert_eq!(
            json_str(r#"{"a":"q\"\\\u00b5"}"#, "a"),
            Some(Some("q\"\\µ".into()))
        );
        assert_eq!(median_ns(ESTIMATES), Some(1500.0));
    }

    #[test]
    fn formats_times() {
        assert_eq!(human(0.717), "0.72 ns");
        assert_eq!(human(1500.0), "1.50 µs");
        assert_eq!(human(2.5e7), "25.00 ms");
    }

    fn sample(group: &str, value: Option<&str>, function: &str, median_ns: f64) -> Sample {
        Sample {
            group: group.into(),
            value: value.map(Into::into),
            function: function.into(),
            median_ns,
        }
    }

    #[test]
    fn renders_ratios_against_deferred() {
        let samples = [
            sample("core/oneshot", Some("16"), "tokio", 20.0),
            sample("core/oneshot", Some("16"), "deferred_spin", 8.0),
            sample("core/oneshot", Some("16"), "deferred", 10.0),
            sample("core/oneshot", Some("2"), "deferred", 10.0),
            sample("core/other", None, "flume", 1.0),
        ];
        let report = render("core", &samples);
        let two = report.find("## core/oneshot (2)").unwrap();
        let sixteen = report.find("## core/oneshot (16)").unwrap();
        assert!(
            two < sixteen,
            "numeric parameters sort numerically:\n{report}"
        );
        assert!(
            report.contains("| deferred      | 10.00 ns |           1.00x |"),
            "{report}"
        );
        assert!(
            report.contains("| deferred_spin |  8.00 ns |           1.25x |"),
            "{report}"
        );
        assert!(
            report.contains("| tokio         | 20.00 ns |           0.50x |"),
            "{report}"
        );
        assert!(
            report.contains("| flume    | 1.00 ns |               - |"),
            "{report}"
        );
    }

    #[test]
    fn checks_targets() {
        let samples = [
            sample("expiring/hit_tti", None, "deferred", 10.0),
            sample("expiring/hit_tti", None, "moka", 100.0),
            sample("expiring/hit_tti", None, "deferred_cache_no_expiry", 5.0),
            sample("expiring/insert_per_entry", None, "deferred", 40.0),
            sample("expiring/insert_per_entry", None, "moka", 100.0),
        ];
        let extras = parse_extras(
            "maintenance_expired=10000\nmaintenance_deferred_touched_max=20000\n\
             maintenance_deferred_p99_ns=2.5e6\nmaintenance_deferred_passes=11\nnot a figure\n",
        );
        assert_eq!(extras.len(), 4);
        let report = check_targets("expiring", &samples, &extras);
        let row = |measure: &str| {
            report
                .lines()
                .find(|line| line.contains(measure))
                .unwrap_or_else(|| panic!("no row for {measure}:\n{report}"))
                .to_owned()
        };
        let verdict = |line: String| line.rsplit('|').nth(1).unwrap().trim().to_owned();
        assert_eq!(verdict(row("deferred / moka (medians)")), "met", "{report}");
        assert!(row("deferred / moka (medians)").contains("10.00 ns / 100.00 ns = 0.10x"));
        assert_eq!(
            verdict(row("deferred_cache_no_expiry")),
            "MISSED",
            "{report}"
        );
        assert_eq!(verdict(row("timers touched")), "met", "{report}");
        assert!(
            row("timers touched").contains("20000 / 10000 = 2.00x (11 passes)"),
            "{report}"
        );
        assert_eq!(verdict(row("deferred p99")), "MISSED", "{report}");
        assert!(
            row("deferred p99").contains("2.50 ms (11 passes)"),
            "{report}"
        );
        // Filtered out of this run: no data, not a pass or a miss.
        assert_eq!(verdict(row("moka p99")), "no data", "{report}");
        assert_eq!(
            verdict(row("maintenance_1m_1pct: deferred / moka")),
            "no data",
            "{report}"
        );
        assert_eq!(verdict(row("insert_per_entry")), "met", "{report}");
        assert_eq!(check_targets("core", &samples, &extras), "");
    }

    #[test]
    fn lists_new_charts() {
        let dir = std::env::temp_dir().join(format!("xtask-charts-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("b.svg"), "<svg/>").unwrap();
        fs::write(dir.join("a.svg"), "<svg/>").unwrap();
        fs::write(dir.join("notes.txt"), "").unwrap();
        let listed = charts_since(&dir, SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(listed, [dir.join("a.svg"), dir.join("b.svg")]);
        let later = SystemTime::now() + Duration::from_secs(3600);
        assert_eq!(charts_since(&dir, later).unwrap(), Vec::<PathBuf>::new());
        fs::remove_dir_all(&dir).unwrap();
        let err = charts_since(&dir, SystemTime::UNIX_EPOCH).unwrap_err();
        assert!(err.starts_with("could not list "), "{err}");
    }

    #[test]
    fn aligns_table_columns() {
        let rows = [
            ["a".to_owned(), "1".to_owned()],
            ["bcd".to_owned(), "22".to_owned()],
        ];
        assert_eq!(
            table_aligned(["x", "y"], [false, true], &rows),
            "| x   |  y |\n| :-- | -: |\n| a   |  1 |\n| bcd | 22 |\n"
        );
    }
}
