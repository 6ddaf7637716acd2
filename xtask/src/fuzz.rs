//! `cargo xtask fuzz <target|all> [--seconds N]`: the cargo-fuzz targets in `fuzz/` (nightly,
//! libFuzzer with AddressSanitizer), each for a fixed time, from a corpus kept under the fuzz
//! crate's build directory so that nothing untracked appears in the repository.
//!
//! `fuzz/` is its own workspace, excluded from the root one, so the library builds never see
//! libfuzzer-sys. A crash stops the run: libFuzzer writes the input under
//! `fuzz/artifacts/<target>/` (ignored by git), and `cargo fuzz run <target> <file>` replays it.

use std::path::Path;

use crate::cmd::{self, cargo, command, Result};

/// The targets in `fuzz/fuzz_targets/`.
pub const TARGETS: &[&str] = &["map_ops", "cache_ops", "timer_wheel"];

/// Seconds per target for `cargo xtask fuzz` without `--seconds`.
const DEFAULT_SECONDS: u64 = 60;

/// Seconds per target in CI: a smoke run that catches a model or harness gone wrong and the
/// shallow bugs, within a minute for all of them.
const SHORT_SECONDS: u64 = 20;

/// The cargo-fuzz releases this was written against (`cargo fuzz run` flags, artifact paths).
const CARGO_FUZZ_VERSION: &str = "^0.13";

/// Flags for every `cargo fuzz build` / `run`: the same set, so `run` reuses the build.
/// Debug assertions and overflow checks stay on: the libraries' `debug_assert!`s are checks
/// too.
const BUILD_FLAGS: &[&str] = &["--fuzz-dir", "fuzz", "--debug-assertions"];

/// Options passed through to libFuzzer, beyond the time limit. Inputs are capped (the targets
/// also cap their operation counts) but allowed at full length from the start (a short run
/// would otherwise spend itself on inputs of a few operations), and one input running past
/// 10 s is reported as a hang instead of eating the whole run.
const LIBFUZZER_FLAGS: &[&str] = &[
    "-max_len=1024",
    "-len_control=0",
    "-timeout=10",
    "-print_final_stats=1",
];

/// Printed when cargo-fuzz cannot be installed, so the fix is one copy-paste away.
const INSTALL_HINT: &str = "\
fuzzing needs the nightly toolchain and cargo-fuzz, and installing them failed. Install them by
hand, then rerun `cargo xtask fuzz`:

    rustup toolchain install nightly --profile minimal
    cargo install cargo-fuzz --locked --version '^0.13'
";

/// `cargo xtask fuzz <target|all> [--seconds N]`.
pub fn run(args: &[String]) -> Result {
    let (targets, seconds) = parse(args)?;
    fuzz(&targets, seconds)
}

/// Every target for [`SHORT_SECONDS`]: the CI step.
pub fn short() -> Result {
    fuzz(TARGETS, SHORT_SECONDS)
}

fn parse(args: &[String]) -> Result<(Vec<&'static str>, u64)> {
    let mut target = None;
    let mut seconds = DEFAULT_SECONDS;
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--seconds" => {
                let value = rest.next().ok_or("`--seconds` needs a number of seconds")?;
                seconds = match value.parse() {
                    Ok(n) if n > 0 => n,
                    _ => return Err(format!("`--seconds {value}`: not a positive whole number")),
                };
            }
            name if target.is_none() && !name.starts_with('-') => target = Some(name),
            other => return Err(format!("fuzz: unexpected argument `{other}`")),
        }
    }
    let known = TARGETS.join(", ");
    let targets = match target {
        None => return Err(format!("fuzz needs a target: one of {known}, or `all`")),
        Some("all") => TARGETS.to_vec(),
        Some(name) => match TARGETS.iter().find(|t| **t == name) {
            Some(t) => vec![*t],
            None => return Err(format!("no fuzz target `{name}`; the targets are {known}")),
        },
    };
    Ok((targets, seconds))
}

fn fuzz(targets: &[&str], seconds: u64) -> Result {
    ensure_tools()?;
    // One build of every target first: its output does not interleave with a run's, and a
    // compile error fails before any time is spent fuzzing.
    cmd::run(cargo(["+nightly", "fuzz", "build"]).args(BUILD_FLAGS))?;
    for target in targets {
        // Under the fuzz crate's `target/` (ignored): a corpus that grows over local runs and
        // never shows up in `git status`. CI starts from an empty one.
        let corpus = Path::new("fuzz").join("target").join("corpus").join(target);
        std::fs::create_dir_all(cmd::root().join(&corpus))
            .map_err(|e| format!("could not create {}: {e}", corpus.display()))?;
        let mut run = cargo(["+nightly", "fuzz", "run"]);
        run.args(BUILD_FLAGS)
            .arg(target)
            .arg(&corpus)
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .args(LIBFUZZER_FLAGS);
        cmd::run(&mut run).map_err(|e| {
            format!(
                "{e}\n\nfuzz target `{target}` failed; the input that did it is under \
                 fuzz/artifacts/{target}/. Replay it with\n\n    \
                 cargo +nightly fuzz run --fuzz-dir fuzz --debug-assertions {target} <file>\n\n\
                 and shrink it with `cargo +nightly fuzz tmin --fuzz-dir fuzz --debug-assertions \
                 {target} <file>`."
            )
        })?;
    }
    Ok(())
}

/// Checks for nightly and cargo-fuzz, installing cargo-fuzz if it is missing.
fn ensure_tools() -> Result {
    if cmd::read(&mut command("rustc", ["+nightly", "--version"])).is_err() {
        let install = ["toolchain", "install", "nightly", "--profile", "minimal"];
        cmd::run(&mut command("rustup", install)).map_err(|e| format!("{e}\n\n{INSTALL_HINT}"))?;
    }
    if cmd::read(&mut cargo(["fuzz", "--version"])).is_ok() {
        return Ok(());
    }
    println!("cargo-fuzz is not installed; installing it (a couple of minutes)");
    let install = [
        "install",
        "cargo-fuzz",
        "--locked",
        "--version",
        CARGO_FUZZ_VERSION,
    ];
    cmd::run(&mut cargo(install)).map_err(|e| format!("{e}\n\n{INSTALL_HINT}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn parses_targets_and_seconds() {
        assert_eq!(
            parse(&args(&["all"])),
            Ok((TARGETS.to_vec(), DEFAULT_SECONDS))
        );
        assert_eq!(
            parse(&args(&["cache_ops", "--seconds", "5"])),
            Ok((vec!["cache_ops"], 5))
        );
        assert_eq!(
            parse(&args(&["--seconds", "7", "timer_wheel"])),
            Ok((vec!["timer_wheel"], 7))
        );
    }

    #[test]
    fn rejects_bad_arguments() {
        for bad in [
            &[][..],
            &["nope"],
            &["all", "map_ops"],
            &["all", "--seconds"],
            &["all", "--seconds", "0"],
            &["all", "--seconds", "x"],
            &["all", "--minutes", "1"],
        ] {
            assert!(parse(&args(bad)).is_err(), "{bad:?} was accepted");
        }
    }
}
