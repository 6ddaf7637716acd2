//! `cargo xtask test-loom [FILTER]`: runs each library's `tests/loom.rs` under loom with one
//! fixed invocation, so a model that passes locally passes in CI, and the models a library
//! keeps inside itself (`Library::loom_lib_models`, e.g. the cache's `store::tests::models`,
//! whose `Store` is crate-private) with `--lib`.

use crate::cmd::{self, cargo, Result};
use crate::LIBRARIES;

/// Loom models inside crates that are not in `LIBRARIES`: the package, its preemption bound
/// and the `--lib` test path filter, as `Library::loom_preemptions` and `loom_lib_models`.
const OTHER_LOOM_LIB_MODELS: &[(&str, u32, &str)] = &[("deferred-redis", 4, "epochs::rev7")];

/// `test-loom [--preemptions N] [FILTER]`.
pub fn run_args(args: &[String]) -> Result {
    let mut preemptions = None;
    let mut filter = None;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--preemptions" => {
                let n = args
                    .next()
                    .and_then(|n| n.parse::<u32>().ok())
                    .ok_or("--preemptions takes a number, e.g. --preemptions 3")?;
                preemptions = Some(n);
            }
            other if filter.is_none() && !other.starts_with('-') => filter = Some(other),
            other => {
                return Err(format!(
                    "test-loom: unexpected argument `{other}`; usage: test-loom [--preemptions N] [FILTER]"
                ))
            }
        }
    }
    run(preemptions, filter)
}

/// Runs every library's loom models: at `preemptions` if given, else at
/// `LOOM_MAX_PREEMPTIONS` if set, else at each library's own bound.
pub fn run(preemptions: Option<u32>, filter: Option<&str>) -> Result {
    // More preemptions explore exponentially more interleavings. Each crate runs at the
    // highest bound its models finish at in CI's budget; someone hunting a deeper bug raises
    // it with --preemptions or from the environment.
    let from_env = std::env::var("LOOM_MAX_PREEMPTIONS").ok();
    let mut ran = 0;
    for lib in LIBRARIES {
        let has_tests = lib.has("tests/loom.rs");
        if !has_tests && lib.loom_lib_models.is_none() {
            println!("skipping {}: it has no tests/loom.rs", lib.name);
            continue;
        }
        let preemptions = bound(preemptions, from_env.as_deref(), lib.loom_preemptions);
        if has_tests {
            println!(
                "test-loom: {} at LOOM_MAX_PREEMPTIONS={preemptions}",
                lib.name
            );
            let mut cmd = loom_test(lib.name, &["--test", "loom"], &preemptions);
            cmd::run(cmd.args(filter))?;
            ran += 1;
        }
        if let Some(models) = lib.loom_lib_models {
            println!(
                "test-loom: {} --lib {models} at LOOM_MAX_PREEMPTIONS={preemptions}",
                lib.name
            );
            // Only the models are built into the library's tests under loom; a FILTER picks
            // among them as among `tests/loom.rs`'s, without it they all run.
            let mut cmd = loom_test(lib.name, &["--lib"], &preemptions);
            cmd::run(cmd.arg(filter.unwrap_or(models)))?;
            ran += 1;
        }
    }
    // deferred-redis is not in `LIBRARIES` (see there); its models are its watchdog's
    // handshakes, kept inside it (the crate under `--cfg loom` is those alone).
    for &(name, lib_preemptions, models) in OTHER_LOOM_LIB_MODELS {
        let preemptions = bound(preemptions, from_env.as_deref(), lib_preemptions);
        println!("test-loom: {name} --lib {models} at LOOM_MAX_PREEMPTIONS={preemptions}");
        let mut cmd = loom_test(name, &["--lib"], &preemptions);
        cmd::run(cmd.arg(filter.unwrap_or(models)))?;
        ran += 1;
    }
    if ran == 0 {
        println!("test-loom: no library has a tests/loom.rs yet; nothing to run");
    }
    Ok(())
}

/// The preemption bound: `given` (`--preemptions`), else `from_env`, else the crate's own.
fn bound(given: Option<u32>, from_env: Option<&str>, own: u32) -> String {
    match (given, from_env) {
        (Some(n), _) => n.to_string(),
        (None, Some(env)) => env.to_owned(),
        (None, None) => own.to_string(),
    }
}

/// `cargo test --profile loom -p <lib> <target>` under `--cfg loom` at `preemptions`, up to
/// its `--`; the caller adds the test filter.
fn loom_test(lib: &str, target: &[&str], preemptions: &str) -> std::process::Command {
    // `--profile loom` (opt-level 3, debug assertions on) keeps these builds, whose
    // RUSTFLAGS differ, from evicting the normal test build from the cache.
    let mut cmd = cargo(["test", "--profile", "loom", "-p", lib]);
    cmd.args(target)
        .env("RUSTFLAGS", "--cfg loom -C debug-assertions")
        .env("LOOM_MAX_PREEMPTIONS", preemptions)
        // A model that panics on purpose does so on many of its runs: no backtraces.
        .env("RUST_BACKTRACE", "0")
        // Each model already runs many threads; two tests at a time keeps the machine usable.
        .args(["--", "--test-threads=2"]);
    cmd
}
