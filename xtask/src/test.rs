//! `cargo xtask test`: the test suites with default features plus the optional ones (`serde`,
//! `tracing`, whose tests are gated on them), then each library again with only its non-`std`
//! features, so the `alloc`-only build is exercised and not just compiled. The build without
//! the optional features is the one `clippy`, `doc` and `msrv` check. `redis-server` is
//! installed first when absent, for deferred-redis's tests (see `redis.rs`).

use crate::cmd::{self, cargo, Result};
use crate::LIBRARIES;

pub fn run() -> Result {
    // deferred-redis's tests start real `redis-server` processes.
    crate::redis::ensure_server()?;
    // The bench crate is excluded: its "tests" are criterion benches, built by `bench --no-run`.
    let mut all = cargo(["test", "--workspace", "--exclude", "deferred-benches"]);
    if let Some(features) = crate::optional_features() {
        all.args(["--features", &features]);
    }
    cmd::run(&mut all)?;
    for lib in LIBRARIES {
        // `--no-default-features` alone has no allocator, so there is nothing the test harness
        // could link against; clippy and no-std cover that build.
        for &features in lib.no_std_features.iter().filter(|f| !f.is_empty()) {
            // `--lib --tests` skips doctests, which are written against the `std` API; tests that
            // need `std` are cfg-gated inside the crate.
            cmd::run(&mut cargo([
                "test",
                "-p",
                lib.name,
                "--no-default-features",
                "--features",
                features,
                "--lib",
                "--tests",
            ]))?;
        }
    }
    Ok(())
}
