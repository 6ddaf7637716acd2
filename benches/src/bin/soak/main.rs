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

mod callers;
mod counters;
mod invariants;
mod layers;
mod loaders;
mod report;
mod rng;
mod state;

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use deferred_expiring::Clock as _;

use crate::counters::{violation, Ctx, Layer, BOOKS, LAYERS};
use crate::layers::{cache::cache_op, core::core_op, expiring::expiring_op, map::map_op};
use crate::loaders::DeliberatePanic;
use crate::report::{rss_kib, Summary};
use crate::rng::Rng;
use crate::state::State;

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
        BOOKS.ops.add(layer, ops);
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
                BOOKS.clock_back.fetch_add(1, Relaxed);
            }
            10..=11 => {
                s.clock.advance(Duration::from_secs(10 + rng.below(20)));
                BOOKS.clock_leap.fetch_add(1, Relaxed);
            }
            _ => {
                s.clock.advance(Duration::from_millis(rng.below(50)));
                BOOKS.clock_forward.fetch_add(1, Relaxed);
            }
        }
    }
}

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
            BOOKS.panics_raised.fetch_add(1, Relaxed);
        } else {
            BOOKS.panics_unexpected.fetch_add(1, Relaxed);
            default_hook(info);
        }
    }));
    BOOKS.loader_seed.store(args.seed ^ 0x10AD, Relaxed);
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
                BOOKS.ops.total(),
                BOOKS.started.total(),
                BOOKS.finished.total(),
                BOOKS.dropped.total(),
                BOOKS.panicked.total(),
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

    let run = report::watch(&s, duration, warmup).await;
    let end_ctx = Ctx {
        worker: usize::MAX,
        seed: args.seed,
        op: "final checks",
    };
    let stop_time = stop(&s, workers, clock, &end_ctx).await;
    invariants::drain(&s).await;
    let counted = invariants::check_counters(&s, &end_ctx);
    let at_rest = invariants::check_at_rest(&s, &end_ctx);
    let cleared = invariants::clear(&s, &end_ctx).await;
    let rss_cleared = rss_kib();
    let loads = report::loads_run(&s);
    drop(s);
    invariants::check_loader_futures(&end_ctx, "alive after every structure was dropped");
    report::summary(&Summary {
        args,
        runtime_threads,
        warmup,
        run,
        stop_time,
        loads,
        counted,
        at_rest,
        cleared,
        rss_launch,
        rss_cleared,
    })
}

/// Stops the workers first (they finish their operation), then the clock (their `ExpiringRef`
/// waits need it); how long the workers took.
async fn stop(
    s: &State,
    workers: Vec<tokio::task::JoinHandle<()>>,
    clock: tokio::task::JoinHandle<()>,
    ctx: &Ctx,
) -> Duration {
    s.stop.store(true, Relaxed);
    let stop_started = Instant::now();
    for (w, handle) in workers.into_iter().enumerate() {
        match tokio::time::timeout(HANG_AFTER * 3, handle).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => violation(ctx, format!("worker {w} ended with {e}")),
            Err(_) => {
                BOOKS.hung.fetch_add(1, Relaxed);
                violation(ctx, format!("worker {w} did not stop: hung"));
            }
        }
    }
    let stop_time = stop_started.elapsed();
    s.clock_stop.store(true, Relaxed);
    if tokio::time::timeout(Duration::from_secs(5), clock)
        .await
        .is_err()
    {
        violation(ctx, "the clock task did not stop");
    }
    stop_time
}
