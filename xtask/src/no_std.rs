//! `cargo xtask no-std`: proves the libraries are `no_std` by building them for bare-metal
//! targets, which have no `std` to fall back on by accident: every no-std feature set for a
//! core with compare-and-swap (`thumbv7em-none-eabihf`, a Cortex-M4F), and the feature sets
//! that take their atomics from `portable-atomic` for a core without it (`thumbv6m-none-eabi`,
//! a Cortex-M0).

use crate::cmd::{self, cargo, command, Result};
use crate::LIBRARIES;

const TARGET: &str = "thumbv7em-none-eabihf";

/// A core whose `core::sync::atomic` has loads and stores but no read-modify-writes.
pub const NO_CAS_TARGET: &str = "thumbv6m-none-eabi";

/// The libraries that build for [`NO_CAS_TARGET`], each with its feature set (default
/// features off). `critical-section` is what firmware turns on; the binary links the
/// implementation, and a library build links nothing, so none is needed here. `alloc` is
/// not among them: `alloc::sync::Arc` needs compare-and-swap.
pub const NO_CAS: &[(&str, &str)] = &[("deferred-core", "critical-section")];

pub fn run() -> Result {
    for target in [TARGET, NO_CAS_TARGET] {
        add_target(target)?;
    }
    let mut built = Vec::new();
    for lib in LIBRARIES {
        for &features in lib.no_std_features {
            build(lib.name, features, TARGET)?;
            built.push(shown(lib.name, features, TARGET));
        }
    }
    for &(name, features) in NO_CAS {
        build(name, features, NO_CAS_TARGET)?;
        built.push(shown(name, features, NO_CAS_TARGET));
    }
    println!("no-std: built without std:");
    for line in built {
        println!("  {line}");
    }
    Ok(())
}

fn add_target(target: &str) -> Result {
    cmd::run(&mut command("rustup", ["target", "add", target])).map_err(|e| {
        format!(
            "{e}\n\nThe no-std check builds for `{target}`, and adding that target failed. \
             Add it by hand, then rerun `cargo xtask no-std`:\n\n    rustup target add {target}\n"
        )
    })
}

fn build(name: &str, features: &str, target: &str) -> Result {
    let mut cmd = cargo(["build", "-p", name, "--no-default-features"]);
    cmd.args(["--target", target]);
    if !features.is_empty() {
        cmd.args(["--features", features]);
    }
    cmd::run(&mut cmd)
}

fn shown(name: &str, features: &str, target: &str) -> String {
    let features = if features.is_empty() {
        "no features"
    } else {
        features
    };
    format!("{name} ({features}) for {target}")
}
