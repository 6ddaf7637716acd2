//! `cargo xtask sanitize [--short]`: each library's stress and most concurrent tests under
//! ThreadSanitizer and AddressSanitizer (with LeakSanitizer), on nightly with `-Zbuild-std` so
//! that `std` itself is instrumented (an uninstrumented `Arc` or `Mutex` makes TSAN report
//! races that are not there).
//!
//! The stress tests drive every public operation of their crate at random, with loader
//! errors, panics and cancellations: under AddressSanitizer, LeakSanitizer checks at exit that
//! no allocation was lost along the way. `--short` shrinks the randomized runs (CI); without
//! it they run at a size meant for a developer with a few minutes to spare.
//!
//! Each sanitizer builds into its own target directory (`target/sanitize-<name>`), so that
//! these builds, whose flags differ, do not evict the normal ones from the cache.

use std::process::Command;
use std::time::Instant;

use crate::cmd::{self, cargo, command, Result};
use crate::LIBRARIES;

/// Printed when rustup cannot add the component, so the fix is one copy-paste away.
const INSTALL_HINT: &str = "\
the sanitizers need the nightly toolchain with the `rust-src` component (to rebuild `std`
with -Zbuild-std), and installing it failed. Install it by hand, then rerun
`cargo xtask sanitize`:

    rustup toolchain install nightly --component rust-src
";

/// The test files each library runs under the sanitizers: its stress test, and the test files
/// that race threads or tasks on one structure. The property tests (`model.rs`, `timer.rs`)
/// are single-threaded and slow under instrumentation; loom's models only exist under
/// `--cfg loom`. A library that is missing here fails the task, so a new layer picks its own.
const SUITES: &[(&str, &[&str])] = &[
    // No stress test of its own: the thread races on one cell (wait, claim, complete, blocking
    // waits with time-outs), the spin locks, lazy cells raced by threads, and callbacks.
    ("deferred-core", &["behaviour", "sync", "lazy", "callbacks"]),
    // Seeded random run of every operation with errors, panics and cancellations, plus the
    // black-box tests and the pinned regressions (clear/remove racing pending entries).
    ("deferred-map", &["stress", "behaviour", "regressions"]),
    // Two seeded random phases on a two-worker tokio runtime (every operation, errors, panics,
    // cancellations, stalled callers, eviction), plus stampedes of up to 100 000 callers on
    // tokio, futures' thread pool and smol.
    ("deferred-cache", &["stress", "behaviour"]),
    // No stress test of its own: 64 tokio tasks reloading one expired key, refreshes on a
    // spawner, timers, maintenance and evictions.
    ("deferred-expiring", &["behaviour"]),
];

/// `STRESS_OPS` (operations per task, 64 tasks) for the libraries whose stress test reads it,
/// as (short, full). The tests' own defaults are 2 000 (map) and 20 000 (cache), sized for
/// uninstrumented builds. Under TSAN on two cores the cache's two phases, run side by side,
/// take about 8 s at 500, 66 s at 3 000 and 85 s at 5 000, against the test's 120 s hang
/// deadline: the full run stays well below that. 500 is also the least at which the cache's
/// test insists that the run saw coalesced loads, panics, cancellations and evictions.
const STRESS_OPS: &[(&str, (u64, u64))] = &[
    ("deferred-map", (500, 5_000)),
    ("deferred-cache", (500, 3_000)),
];

struct Sanitizer {
    /// The `-Zsanitizer=` value, also the target directory's suffix.
    name: &'static str,
    /// The runtime's options variable and its value.
    options: (&'static str, &'static str),
}

const SANITIZERS: &[Sanitizer] = &[
    Sanitizer {
        name: "thread",
        // Stop at the first report (the test then fails), and show where the other thread of
        // a lock-order inversion took its lock.
        options: ("TSAN_OPTIONS", "halt_on_error=1:second_deadlock_stack=1"),
    },
    Sanitizer {
        name: "address",
        // LeakSanitizer runs at exit (it is part of ASan on Linux); asked for explicitly so a
        // platform default cannot turn it off. Use-after-return checks catch a future that
        // outlives a stack frame it borrowed from.
        options: (
            "ASAN_OPTIONS",
            "detect_leaks=1:halt_on_error=1:detect_stack_use_after_return=1",
        ),
    },
];

/// One (library, sanitizer) pair's outcome, for the summary.
struct Outcome {
    lib: &'static str,
    sanitizer: &'static str,
    build_s: f64,
    run_s: f64,
    result: Result,
}

pub fn run(args: &[String]) -> Result {
    let short = match args {
        [] => false,
        [flag] if flag == "--short" => true,
        _ => {
            return Err(format!(
                "`sanitize` takes only `--short`, got `{}`",
                args.join(" ")
            ))
        }
    };
    let components = ["component", "add", "--toolchain", "nightly", "rust-src"];
    cmd::run(&mut command("rustup", components)).map_err(|e| format!("{e}\n\n{INSTALL_HINT}"))?;
    let host = host()?;

    let start = Instant::now();
    let mut outcomes = Vec::new();
    for sanitizer in SANITIZERS {
        for lib in LIBRARIES {
            let tests = suite(lib.name)?;
            println!(
                "\n==> sanitize: {} under {} sanitizer",
                lib.name, sanitizer.name
            );
            let test_cmd = |extra: &[&str]| {
                let mut cmd = cargo(["+nightly", "test", "-Zbuild-std", "--target", &host]);
                cmd.args(["-p", lib.name]);
                for test in tests {
                    cmd.args(["--test", test]);
                }
                cmd.args(extra);
                configure(&mut cmd, sanitizer, lib.name, short);
                cmd
            };
            // Built first and timed apart: the first library's build includes `std`'s.
            let began = Instant::now();
            let built = cmd::run(&mut test_cmd(&["--no-run"]));
            let build_s = began.elapsed().as_secs_f64();
            let began = Instant::now();
            let result = built.and_then(|()| cmd::run(&mut test_cmd(&[])));
            let run_s = began.elapsed().as_secs_f64();
            let verdict = if result.is_ok() { "ok" } else { "FAILED" };
            println!(
                "==> sanitize: {} under {} sanitizer {verdict} (build {build_s:.1}s, run {run_s:.1}s)",
                lib.name, sanitizer.name
            );
            outcomes.push(Outcome {
                lib: lib.name,
                sanitizer: sanitizer.name,
                build_s,
                run_s,
                result,
            });
        }
    }

    println!(
        "\nsanitize summary ({}):",
        if short { "short" } else { "full" }
    );
    println!(
        "  {:<18} {:<9} {:>8} {:>8}  result",
        "library", "sanitizer", "build s", "run s"
    );
    for o in &outcomes {
        let verdict = if o.result.is_ok() { "ok" } else { "FAILED" };
        println!(
            "  {:<18} {:<9} {:>8.1} {:>8.1}  {verdict}",
            o.lib, o.sanitizer, o.build_s, o.run_s
        );
    }
    let total = start.elapsed().as_secs_f64();
    // Every pair runs even after a failure, so one report shows everything that is wrong; the
    // sanitizer's own report is in the output above the summary.
    let failures: Vec<String> = outcomes
        .iter()
        .filter_map(|o| {
            let error = o.result.as_ref().err()?;
            Some(format!("{} under {}: {error}", o.lib, o.sanitizer))
        })
        .collect();
    if failures.is_empty() {
        println!(
            "\nsanitize: all {} runs clean in {total:.1}s",
            outcomes.len()
        );
        Ok(())
    } else {
        Err(format!(
            "sanitize FAILED ({} of {} runs) after {total:.1}s; the sanitizer reports are \
             above the summary:\n  {}",
            failures.len(),
            outcomes.len(),
            failures.join("\n  ")
        ))
    }
}

/// Sets the flags, target directory and runtime options for one sanitizer's build and run.
fn configure(cmd: &mut Command, sanitizer: &Sanitizer, lib: &str, short: bool) {
    // Instrumenting every crate, `std` included (-Zbuild-std), is what keeps the ABI check of
    // -Zsanitizer satisfied; build scripts and proc macros are host code, built without these
    // flags because of the explicit `--target`. Debug assertions stay on for the libraries'
    // own checks, as in the other test runs.
    let flags = format!("-Zsanitizer={} -Cdebug-assertions", sanitizer.name);
    let dir = cmd::root()
        .join("target")
        .join(format!("sanitize-{}", sanitizer.name));
    cmd.env("RUSTFLAGS", &flags)
        .env("RUSTDOCFLAGS", &flags)
        .env("CARGO_TARGET_DIR", dir)
        .env(sanitizer.options.0, sanitizer.options.1)
        // The tests panic on purpose, many times; backtraces would only slow them down.
        .env("RUST_BACKTRACE", "0");
    if let Some((_, (short_ops, full_ops))) = STRESS_OPS.iter().find(|(name, _)| *name == lib) {
        let ops = if short { short_ops } else { full_ops };
        cmd.env("STRESS_OPS", ops.to_string());
    }
}

/// The test files `lib` runs under the sanitizers.
fn suite(lib: &str) -> Result<&'static [&'static str]> {
    SUITES
        .iter()
        .find(|(name, _)| *name == lib)
        .map(|(_, tests)| *tests)
        .ok_or_else(|| {
            format!(
                "`{lib}` has no sanitizer suite: add its stress test (or its most concurrent \
                 test files) to SUITES in xtask/src/sanitize.rs"
            )
        })
}

/// The nightly toolchain's host triple, if the sanitizers support it.
fn host() -> Result<String> {
    let version = cmd::read(&mut command("rustc", ["+nightly", "-vV"]))?;
    let host = version
        .lines()
        .find_map(|line| line.strip_prefix("host: "))
        .ok_or_else(|| format!("`rustc +nightly -vV` printed no `host:` line:\n{version}"))?
        .trim()
        .to_string();
    // Both sanitizers (and LeakSanitizer within ASan) exist on these; elsewhere rustc refuses
    // -Zsanitizer=thread or the leak check is silently missing, which would pass for clean.
    const SUPPORTED: &[&str] = &["x86_64-unknown-linux-gnu", "aarch64-unknown-linux-gnu"];
    if SUPPORTED.contains(&host.as_str()) {
        Ok(host)
    } else {
        Err(format!(
            "`cargo xtask sanitize` runs on {} only (thread and address sanitizers with \
             LeakSanitizer); this host is {host}. Run it on Linux, e.g. in CI.",
            SUPPORTED.join(" or ")
        ))
    }
}
