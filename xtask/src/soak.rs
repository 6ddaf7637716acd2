//! `cargo xtask soak --minutes N [--threads T] [--seed S] [--layers L,..]`: every layer under
//! random load for `N` minutes (not part of `ci`: it takes as long as it is told to).
//!
//! The load itself is the `soak` program of the `deferred-benches` package
//! (`benches/src/bin/soak/`), built in release mode: loaders that fail, panic and stall,
//! callers that are dropped or stop polling, a manual clock that jumps both ways. It prints a
//! progress line every 10 s and a summary at the end (ops/s per layer, loads run, callers
//! started and finished, memory at the start, middle and end), and exits non-zero if a caller
//! hung, a counter disagrees, something leaked, or the resident memory grew past its limit.
//! This task checks the arguments and runs it.

use crate::cmd::{self, cargo, Result};

const PACKAGE: &str = "deferred-benches";
const PROGRAM: &str = "soak";
const LAYERS: &[&str] = &["core", "map", "cache", "expiring"];
const USAGE: &str =
    "usage: cargo xtask soak --minutes N [--threads T] [--seed S] [--layers core,map,cache,expiring]";

/// Runs the soak with `args` (`--minutes N`, required; `--threads T` (worker tasks),
/// `--seed S` (replays a run's sequence of operations) and `--layers core,map,cache,expiring`
/// (narrows a finding to some layers), optional).
pub fn run(args: &[String]) -> Result {
    let mut minutes = None;
    let mut forwarded: Vec<String> = Vec::new();
    let mut rest = args.iter();
    while let Some(flag) = rest.next() {
        let value = |rest: &mut std::slice::Iter<'_, String>| {
            rest.next()
                .cloned()
                .ok_or_else(|| format!("`{flag}` needs a value"))
        };
        match flag.as_str() {
            "--minutes" => {
                let v = value(&mut rest)?;
                let m: f64 = v
                    .parse()
                    .ok()
                    .filter(|m: &f64| m.is_finite() && *m > 0.0)
                    .ok_or_else(|| format!("`--minutes {v}`: expected a positive number"))?;
                minutes = Some(m);
                forwarded.extend(["--minutes".to_string(), v]);
            }
            "--threads" => {
                let v = value(&mut rest)?;
                v.parse::<usize>()
                    .ok()
                    .filter(|t| *t > 0)
                    .ok_or_else(|| format!("`--threads {v}`: expected a positive integer"))?;
                forwarded.extend(["--threads".to_string(), v]);
            }
            "--seed" => {
                let v = value(&mut rest)?;
                let digits = v.strip_prefix("0x").unwrap_or(&v);
                let radix = if digits.len() == v.len() { 10 } else { 16 };
                u64::from_str_radix(digits, radix).map_err(|_| {
                    format!("`--seed {v}`: expected an integer (decimal or 0x hex)")
                })?;
                forwarded.extend(["--seed".to_string(), v]);
            }
            "--layers" => {
                let v = value(&mut rest)?;
                if let Some(bad) = v.split(',').find(|l| !LAYERS.contains(l)) {
                    return Err(format!(
                        "`--layers {v}`: unknown layer `{bad}` (layers: {})",
                        LAYERS.join(",")
                    ));
                }
                forwarded.extend(["--layers".to_string(), v]);
            }
            other => return Err(format!("soak: unknown argument `{other}`; {USAGE}")),
        }
    }
    if minutes.is_none() {
        return Err(format!("soak: `--minutes N` is required; {USAGE}"));
    }
    let mut command = cargo([
        "run",
        "--release",
        "--package",
        PACKAGE,
        "--bin",
        PROGRAM,
        "--",
    ]);
    command.args(&forwarded);
    cmd::run(&mut command)
}
