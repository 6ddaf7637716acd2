//! `cargo xtask test-loom [FILTER]`: runs each library's `tests/loom.rs` under loom with one
//! fixed invocation, so a model that passes locally passes in CI.

use crate::cmd::{self, cargo, Result};
use crate::LIBRARIES;

pub fn run(filter: Option<&str>) -> Result {
    // More preemptions explore exponentially more interleavings; 2 finds the usual ordering bugs
    // in seconds. Someone hunting a deeper bug can raise it from the environment.
    let preemptions = std::env::var("LOOM_MAX_PREEMPTIONS").unwrap_or_else(|_| "2".into());
    let mut ran = 0;
    for lib in LIBRARIES {
        if !lib.has("tests/loom.rs") {
            println!("skipping {}: it has no tests/loom.rs", lib.name);
            continue;
        }
        // `--profile loom` (opt-level 3, debug assertions on) keeps these builds, whose
        // RUSTFLAGS differ, from evicting the normal test build from the cache.
        let mut cmd = cargo([
            "test",
            "--profile",
            "loom",
            "-p",
            lib.name,
            "--test",
            "loom",
        ]);
        cmd.env("RUSTFLAGS", "--cfg loom -C debug-assertions")
            .env("LOOM_MAX_PREEMPTIONS", &preemptions)
            // A model that panics on purpose does so on many of its runs: no backtraces.
            .env("RUST_BACKTRACE", "0")
            // Each model already runs many threads; two tests at a time keeps the machine usable.
            .args(["--", "--test-threads=2"])
            .args(filter);
        cmd::run(&mut cmd)?;
        ran += 1;
    }
    if ran == 0 {
        println!("test-loom: no library has a tests/loom.rs yet; nothing to run");
    }
    Ok(())
}
