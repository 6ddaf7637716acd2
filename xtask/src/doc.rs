//! `cargo xtask doc`: rustdoc with warnings denied, so broken intra-doc links fail CI.

use crate::cmd::{self, cargo, Result};

pub fn run() -> Result {
    let mut cmd = cargo([
        "doc",
        "--workspace",
        "--no-deps",
        "--exclude",
        "xtask",
        "--exclude",
        "deferred-benches",
    ]);
    cmd::run(cmd.env("RUSTDOCFLAGS", "-D warnings"))
}
