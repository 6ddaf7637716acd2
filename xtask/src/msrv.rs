//! `cargo xtask msrv`: builds every library with the oldest Rust the workspace promises
//! (`rust-version` in the root `Cargo.toml`), with the features each is built with in
//! `no-std` too, and with its optional features (`serde`, `tracing`) on, so a newer API slipping in fails here rather than for a user. The feature
//! sets for cores without compare-and-swap are checked for such a core, since what they
//! change (portable-atomic's own atomics) only exists there.

use crate::cmd::{self, cargo, command, Result};
use crate::no_std::{NO_CAS, NO_CAS_TARGET};
use crate::{LIBRARIES, OTHER_OPTIONAL_FEATURES};

pub fn run() -> Result {
    let version = rust_version()?;
    let toolchain = version.clone();
    cmd::run(&mut command(
        "rustup",
        [
            "toolchain",
            "install",
            &toolchain,
            "--profile",
            "minimal",
            "--target",
            NO_CAS_TARGET,
        ],
    ))
    .map_err(|e| {
        format!(
            "{e}\n\nThe MSRV check needs Rust {version} with the `{NO_CAS_TARGET}` target, and \
             installing it failed. Install it by hand, then rerun `cargo xtask msrv`:\n\n    \
             rustup toolchain install {version} --profile minimal --target {NO_CAS_TARGET}\n"
        )
    })?;
    let plus = format!("+{toolchain}");
    // Its own target directory: another compiler's artifacts would evict the normal ones.
    let target_dir = cmd::root().join("target").join("msrv");
    for lib in LIBRARIES {
        // The library itself (not its tests: dev-dependencies such as tokio follow their own
        // MSRV), with default features and with each no-std feature set.
        let mut sets: Vec<Option<&str>> = vec![None];
        sets.extend(lib.no_std_features.iter().map(|&f| Some(f)));
        for features in sets {
            let mut cmd = cargo([plus.as_str(), "check", "--lib", "-p", lib.name]);
            cmd.arg("--target-dir").arg(&target_dir);
            if let Some(features) = features {
                cmd.arg("--no-default-features");
                if !features.is_empty() {
                    cmd.args(["--features", features]);
                }
            }
            cmd::run(&mut cmd)?;
        }
        if !lib.optional_features.is_empty() {
            let mut cmd = cargo([plus.as_str(), "check", "--lib", "-p", lib.name]);
            cmd.arg("--target-dir").arg(&target_dir);
            cmd.args(["--features", &lib.optional_features.join(",")]);
            cmd::run(&mut cmd)?;
        }
    }
    // The crates beside the stack (deferred-redis): std only, so default features and the
    // optional ones. Their dependencies as locked fit this Rust too: the lock holds tokio on
    // its 1.47 LTS line and url's IDNA on the unicode-rs backend (see `LIBRARIES`).
    for &(name, features) in OTHER_OPTIONAL_FEATURES {
        let mut cmd = cargo([plus.as_str(), "check", "--lib", "-p", name]);
        cmd.arg("--target-dir").arg(&target_dir);
        cmd::run(&mut cmd)?;
        let mut cmd = cargo([plus.as_str(), "check", "--lib", "-p", name]);
        cmd.arg("--target-dir").arg(&target_dir);
        cmd.args(["--features", &features.join(",")]);
        cmd::run(&mut cmd)?;
    }
    for &(name, features) in NO_CAS {
        let mut cmd = cargo([plus.as_str(), "check", "--lib", "-p", name]);
        cmd.arg("--target-dir").arg(&target_dir);
        cmd.args(["--no-default-features", "--features", features]);
        cmd.args(["--target", NO_CAS_TARGET]);
        cmd::run(&mut cmd)?;
    }
    println!("msrv: every library builds with Rust {version}");
    Ok(())
}

/// `rust-version` from the workspace's `Cargo.toml`.
fn rust_version() -> Result<String> {
    let manifest = cmd::root().join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest)
        .map_err(|e| format!("reading {}: {e}", manifest.display()))?;
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("rust-version"))
        .filter_map(|rest| rest.trim().strip_prefix('='))
        .map(|value| value.trim().trim_matches('"').to_string())
        .next()
        .ok_or_else(|| format!("no `rust-version` in {}", manifest.display()))
}
