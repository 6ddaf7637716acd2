//! `cargo xtask miri`: the library tests under miri on nightly, once with the default (stacked)
//! borrow model and once with tree borrows, both with strict provenance so integer-to-pointer
//! casts are caught; then the tests whose threads race, under many scheduler seeds.

use crate::cmd::{self, cargo, command, Result};
use crate::LIBRARIES;

const STRICT: &str = "-Zmiri-strict-provenance";

/// Printed when rustup cannot add the components, so the fix is one copy-paste away.
const INSTALL_HINT: &str = "\
miri needs the nightly toolchain with the `miri` and `rust-src` components, and installing them
failed. Install them by hand, then rerun `cargo xtask miri`:

    rustup toolchain install nightly --component miri,rust-src
";

pub fn run() -> Result {
    let components = [
        "component",
        "add",
        "--toolchain",
        "nightly",
        "miri",
        "rust-src",
    ];
    cmd::run(&mut command("rustup", components)).map_err(|e| format!("{e}\n\n{INSTALL_HINT}"))?;
    // Builds miri's sysroot up front, so its output does not interleave with the first test run.
    cmd::run(&mut cargo(["+nightly", "miri", "setup"]))?;
    for lib in LIBRARIES {
        // The crates shrink their loops under `cfg(miri)` themselves; nothing to pass here.
        let full: &[&str] = if lib.miri_full_suite {
            &["--tests"]
        } else {
            &["--test", "miri_subset"]
        };
        let mut stacked = cargo(["+nightly", "miri", "test", "-p", lib.name]);
        cmd::run(stacked.args(full).env("MIRIFLAGS", STRICT))?;

        // Tree borrows is a second opinion on the aliasing rules. A crate whose suite is too
        // slow to run twice under miri picks a subset for it with `tests/miri_subset.rs`;
        // otherwise the whole suite runs again (the intrusive lists are exercised through
        // the black-box tests, not unit tests).
        let target: &[&str] = if lib.has("tests/miri_subset.rs") {
            &["--test", "miri_subset"]
        } else {
            &["--tests"]
        };
        let mut tree = cargo(["+nightly", "miri", "test", "-p", lib.name]);
        cmd::run(
            tree.args(target)
                .env("MIRIFLAGS", format!("{STRICT} -Zmiri-tree-borrows")),
        )?;
    }
    many_seeds()
}

/// The tests whose threads race (core's and the map's), each run under many scheduler seeds:
/// miri picks another interleaving (and another outcome for every weak memory read) per
/// seed, so a race that one schedule hides shows under another.
const INTERLEAVINGS: &[(&str, &str, &str)] = &[
    // (crate, test file, name filter)
    ("deferred-core", "behaviour", "threads"),
    ("deferred-core", "sync", ""),
    (
        "deferred-map",
        "behaviour",
        "remove_if_checks_and_removes_atomically",
    ),
    ("deferred-map", "behaviour", "threads_racing"),
];

/// Seeds per test in the many-seeds pass.
const SEEDS: u32 = 16;

fn many_seeds() -> Result {
    for &(lib, test, filter) in INTERLEAVINGS {
        let mut cmd = cargo(["+nightly", "miri", "test", "-p", lib, "--test", test]);
        cmd.env(
            "MIRIFLAGS",
            format!("{STRICT} -Zmiri-many-seeds=0..{SEEDS}"),
        );
        if !filter.is_empty() {
            cmd.args(["--", filter]);
        }
        cmd::run(&mut cmd)?;
    }
    Ok(())
}
