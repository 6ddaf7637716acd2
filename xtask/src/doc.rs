//! `cargo xtask doc`: rustdoc with warnings denied, so broken intra-doc links fail CI. The
//! libraries' optional features (`serde`, `tracing`) are on, so the docs of what they add are
//! checked too.

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
    if let Some(features) = crate::optional_features() {
        cmd.args(["--features", &features]);
    }
    cmd::run(cmd.env("RUSTDOCFLAGS", "-D warnings"))
}
