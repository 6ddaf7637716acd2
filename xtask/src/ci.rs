//! `cargo xtask ci`: every check, cheapest first, so a formatting slip fails in seconds rather
//! than after a miri run.

use std::time::Instant;

use crate::cmd::Result;

type Step = fn() -> Result;

/// The CI steps in order; `.github/workflows/ci.yml` has one job per entry.
const STEPS: &[(&str, Step)] = &[
    ("fmt", crate::fmt::run),
    ("clippy", crate::clippy::run),
    ("test", crate::test::run),
    ("doc", crate::doc::run),
    ("no-std", crate::no_std::run),
    ("msrv", crate::msrv::run),
    ("test-loom", || crate::loom::run(None, None)),
    ("miri", crate::miri::run),
    ("sanitize --short", || {
        crate::sanitize::run(&["--short".to_string()])
    }),
    ("fuzz", crate::fuzz::short),
    ("bench --no-run", crate::bench::build),
];

pub fn run() -> Result {
    let start = Instant::now();
    // Seconds taken by each step that ran; the last one failed if `failure` is set.
    let mut times = Vec::new();
    let mut failure = None;
    for (name, step) in STEPS {
        println!("\n==> ci: {name}");
        let step_start = Instant::now();
        let result = step();
        let seconds = step_start.elapsed().as_secs_f64();
        times.push(seconds);
        let verdict = if result.is_ok() { "ok" } else { "FAILED" };
        println!("==> ci: {name} {verdict} in {seconds:.1}s");
        if let Err(error) = result {
            failure = Some((name, error));
            break;
        }
    }

    println!("\nci summary:");
    println!("  {:<16} {:>8}  result", "step", "seconds");
    for (i, (name, _)) in STEPS.iter().enumerate() {
        match times.get(i) {
            None => println!("  {name:<16} {:>8}  not run", "-"),
            Some(seconds) if failure.is_some() && i + 1 == times.len() => {
                println!("  {name:<16} {seconds:>8.1}  FAILED");
            }
            Some(seconds) => println!("  {name:<16} {seconds:>8.1}  ok"),
        }
    }
    let total = start.elapsed().as_secs_f64();
    match failure {
        // The caller prints this as the last line, after the summary.
        Some((name, error)) => Err(format!(
            "ci FAILED at step `{name}` after {total:.1}s: {error}"
        )),
        None => {
            println!("\nci: all {} steps passed in {total:.1}s", STEPS.len());
            Ok(())
        }
    }
}
