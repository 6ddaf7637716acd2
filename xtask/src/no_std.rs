//! `cargo xtask no-std`: proves the libraries are `no_std` by building them for a bare-metal
//! target, which has no `std` to fall back on by accident.

use crate::cmd::{self, cargo, command, Result};
use crate::LIBRARIES;

const TARGET: &str = "thumbv7em-none-eabihf";

pub fn run() -> Result {
    cmd::run(&mut command("rustup", ["target", "add", TARGET])).map_err(|e| {
        format!(
            "{e}\n\nThe no-std check builds for `{TARGET}`, and adding that target failed. \
             Add it by hand, then rerun `cargo xtask no-std`:\n\n    rustup target add {TARGET}\n"
        )
    })?;
    for lib in LIBRARIES {
        for &features in lib.no_std_features {
            let mut cmd = cargo(["build", "-p", lib.name, "--no-default-features"]);
            cmd.args(["--target", TARGET]);
            if !features.is_empty() {
                cmd.args(["--features", features]);
            }
            cmd::run(&mut cmd)?;
        }
    }
    Ok(())
}
