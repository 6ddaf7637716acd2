//! `cargo xtask clippy`: lints the whole workspace, then each library with its `std` features
//! off, because `cfg`-gated code that only compiles without `std` is invisible to the first run,
//! and each library with its optional features (`serde`, `tracing`) on, for the same reason.

use crate::cmd::{self, cargo, Result};
use crate::LIBRARIES;

pub fn run() -> Result {
    // The source says `warn`; CI is where warnings become errors.
    cmd::run(&mut cargo([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    for lib in LIBRARIES {
        for &features in lib.no_std_features {
            let mut cmd = cargo(["clippy", "-p", lib.name, "--no-default-features"]);
            if !features.is_empty() {
                cmd.args(["--features", features]);
            }
            cmd::run(cmd.args(["--", "-D", "warnings"]))?;
        }
        if !lib.optional_features.is_empty() {
            let features = lib.optional_features.join(",");
            let mut cmd = cargo(["clippy", "-p", lib.name, "--all-targets", "--features"]);
            cmd::run(cmd.args([features.as_str(), "--", "-D", "warnings"]))?;
        }
    }
    for &(name, features) in crate::OTHER_OPTIONAL_FEATURES {
        let features = features.join(",");
        let mut cmd = cargo(["clippy", "-p", name, "--all-targets", "--features"]);
        cmd::run(cmd.args([features.as_str(), "--", "-D", "warnings"]))?;
    }
    Ok(())
}
