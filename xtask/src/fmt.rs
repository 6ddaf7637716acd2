//! `cargo xtask fmt`: formatting is checked, never rewritten, so CI reports drift instead of
//! quietly fixing it.

use crate::cmd::{self, cargo, Result};

pub fn run() -> Result {
    cmd::run(&mut cargo(["fmt", "--all", "--", "--check"]))
}
