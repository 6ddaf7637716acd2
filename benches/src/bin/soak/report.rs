//! What the soak prints: a progress line every 10 s while it runs (with the memory samples it
//! takes on the way), and the summary at the end.

use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use crate::counters::{BOOKS, LAYERS};
use crate::invariants::{AtRest, Cleared, Counted};
use crate::state::State;
use crate::{Args, CACHE_CAP, RSS_GROWTH_LIMIT};
use deferred_expiring::Clock as _;

/// VmRSS in KiB, from `/proc/self/status` (Linux only).
pub fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or_else(|| "n/a".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
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
        ops: LAYERS.map(|l| BOOKS.ops.get(l)),
        started: BOOKS.started.total(),
        finished: BOOKS.finished.total(),
        dropped: BOOKS.dropped.total(),
        panicked: BOOKS.panicked.total(),
    }
}

pub fn loads_run(s: &State) -> [u64; 4] {
    let exp = s.exp.stats();
    let sys = s.sys.stats();
    [
        BOOKS.loads.init.get(|p| &p.started) + BOOKS.loads.lazy.get(|p| &p.started),
        BOOKS.loads.map.get(|p| &p.started),
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

/// What [`watch`] saw while the workers ran.
pub struct Run {
    elapsed: Duration,
    /// After the warm-up and at the end of the run.
    warm: Snapshot,
    end: Snapshot,
    /// VmRSS right after the warm-up, in the middle of the rest, and at the end.
    rss_start: Option<u64>,
    rss_mid: Option<u64>,
    rss_end: Option<u64>,
}

/// Waits out the run (`duration` from now), sampling memory after `warmup` and halfway through
/// the rest, and printing a progress line every 10 s.
pub async fn watch(s: &State, duration: Duration, warmup: Duration) -> Run {
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
            println!("{}", progress(s, start, now, last, snap));
            last = (now, snap);
        }
    }
    Run {
        rss_end: rss_kib(),
        end: snapshot(),
        elapsed: start.elapsed(),
        warm,
        rss_start,
        rss_mid,
    }
}

/// The progress line at `now`: rates since `last`, counts so far.
fn progress(
    s: &State,
    start: Instant,
    now: Instant,
    last: (Instant, Snapshot),
    snap: Snapshot,
) -> String {
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
        loads_run(s).iter().sum::<u64>(),
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
    let (violations, hung, unexpected) = (
        BOOKS.violations.load(Relaxed),
        BOOKS.hung.load(Relaxed),
        BOOKS.panics_unexpected.load(Relaxed),
    );
    if violations + hung + unexpected > 0 {
        let _ = write!(
            line,
            " | VIOLATIONS {violations} hung {hung} unexpected panics {unexpected}"
        );
    }
    line
}

/// Everything the summary reports, gathered after the checks.
pub struct Summary<'a> {
    pub args: &'a Args,
    pub runtime_threads: usize,
    pub warmup: Duration,
    pub run: Run,
    pub stop_time: Duration,
    pub loads: [u64; 4],
    pub counted: Counted,
    pub at_rest: AtRest,
    pub cleared: Cleared,
    pub rss_launch: Option<u64>,
    pub rss_cleared: Option<u64>,
}

/// Prints the summary; whether the run passed.
pub fn summary(sum: &Summary<'_>) -> bool {
    let Summary {
        args,
        runtime_threads,
        warmup,
        ref run,
        stop_time,
        loads,
        ref counted,
        ref at_rest,
        ref cleared,
        rss_launch,
        rss_cleared,
    } = *sum;
    let mut report = String::new();
    let secs = run.elapsed.as_secs_f64();
    let growth = match (run.rss_start, run.rss_end) {
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
    layer_table(&mut report, run, &loads, secs);
    callers_and_panics(&mut report, run, warmup, secs, counted.callers_ok);
    stats(&mut report, counted);
    at_rest_and_cleared(&mut report, at_rest, cleared);
    let _ = writeln!(
        report,
        "memory (VmRSS): launch {}, start (after warm-up) {}, middle {}, end {}, growth {} (limit +{:.0}%); after clearing {}",
        mib(rss_launch),
        mib(run.rss_start),
        mib(run.rss_mid),
        mib(run.rss_end),
        growth.map_or_else(|| "n/a".into(), |g| format!("{:+.1}%", g * 100.0)),
        RSS_GROWTH_LIMIT * 100.0,
        mib(rss_cleared),
    );
    let violations = BOOKS.violations.load(Relaxed);
    let hung = BOOKS.hung.load(Relaxed);
    let unexpected = BOOKS.panics_unexpected.load(Relaxed);
    let pass = violations == 0 && hung == 0 && unexpected == 0 && counted.callers_ok && rss_ok;
    let _ = writeln!(
        report,
        "checks: {violations} violations, {hung} hung, {unexpected} unexpected panics, memory {}",
        if rss_ok { "flat" } else { "GREW" }
    );
    if violations > 0 {
        let messages = BOOKS.messages.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(report, "first violations:");
        for m in messages.iter() {
            let _ = writeln!(report, "  {m}");
        }
    }
    let _ = writeln!(report, "RESULT: {}", if pass { "PASS" } else { "FAIL" });
    print!("{report}");
    pass
}

/// The table of operations, loads and callers per layer.
fn layer_table(report: &mut String, run: &Run, loads: &[u64; 4], secs: f64) {
    let end_snap = run.end;
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
            BOOKS.started.get(l),
            BOOKS.finished.get(l),
            BOOKS.dropped.get(l),
            BOOKS.panicked.get(l),
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
        BOOKS.started.total(),
        BOOKS.finished.total(),
        BOOKS.dropped.total(),
        BOOKS.panicked.total(),
    );
}

/// Callers after the warm-up and in all, and the panics raised.
fn callers_and_panics(
    report: &mut String,
    run: &Run,
    warmup: Duration,
    secs: f64,
    callers_ok: bool,
) {
    let (end_snap, warm) = (run.end, run.warm);
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
        BOOKS.started.total(),
        BOOKS.finished.total(),
        BOOKS.dropped.total(),
        BOOKS.panicked.total(),
        if BOOKS.aborted.total() > 0 {
            format!(" + aborted {}", BOOKS.aborted.total())
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
        BOOKS.panics_raised.load(Relaxed),
        BOOKS.panicked.total(),
        BOOKS.panics_unexpected.load(Relaxed),
    );
}

/// What became of the loader futures, the layers' statistics, the clock's moves.
fn stats(report: &mut String, counted: &Counted) {
    let _ = writeln!(report, "loader futures:");
    for p in BOOKS.loads.all() {
        let _ = writeln!(report, "  {}", p.summary());
    }
    let _ = writeln!(
        report,
        "cache stats: hits {} misses {} coalesced {} loads ok {} failed {} panicked {} cancelled {} evicted {} invalidated {}",
        counted.cache.hits,
        counted.cache.misses,
        counted.cache.coalesced,
        counted.cache.loads_ok,
        counted.cache.loads_failed,
        counted.cache.loads_panicked,
        counted.cache.loads_cancelled,
        counted.cache.evicted,
        counted.cache.invalidated,
    );
    for (name, st) in [
        ("expiring/man", &counted.exp),
        ("expiring/sys", &counted.sys),
    ] {
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
        BOOKS.clock_forward.load(Relaxed),
        BOOKS.clock_back.load(Relaxed),
        BOOKS.clock_leap.load(Relaxed),
        BOOKS.ref_races.load(Relaxed),
    );
}

/// What was left once the callers were gone, and after clearing.
fn at_rest_and_cleared(report: &mut String, at_rest: &AtRest, cleared: &Cleared) {
    let _ = writeln!(
        report,
        "at the end: map len {}; cache len {} (weighted {}, capacity {CACHE_CAP}); \
         expiring/man len {} timers {}; expiring/sys len {} timers {}",
        at_rest.map_len,
        at_rest.cache_len,
        at_rest
            .cache_weight
            .map_or_else(|| "n/a".into(), |w| w.to_string()),
        at_rest.exp_len,
        at_rest.exp_timers,
        at_rest.sys_len,
        at_rest.sys_timers,
    );
    let _ = writeln!(
        report,
        "cleared: all len 0 and timers 0 {} (timers right after invalidate_all: man {}, sys {}; \
         the rest fired once the clocks passed their deadlines)",
        if cleared.all_zero { "yes" } else { "NO" },
        cleared.exp_timers,
        cleared.sys_timers,
    );
}
