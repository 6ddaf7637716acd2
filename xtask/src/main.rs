//! `cargo xtask <task>`: the repository's checks, runnable locally exactly as CI runs them.
//!
//! Each task lives in its own module. Every command is printed before it runs, and nested cargo
//! invocations start from a cleaned environment (see `cmd`), so a local run and a CI run build
//! the same thing.

#![forbid(unsafe_code)]

mod bench;
mod ci;
mod clippy;
mod cmd;
mod doc;
mod fmt;
mod fuzz;
mod loom;
mod miri;
mod msrv;
mod no_std;
mod redis;
mod redis_demo;
mod sanitize;
mod soak;
mod test;

use std::process::ExitCode;

use cmd::Result;

/// A library crate of the workspace.
pub struct Library {
    /// The package name, which is also its directory under `crates/`.
    pub name: &'static str,
    /// Feature sets that must work without `std`; `""` means `--no-default-features` alone.
    /// Empty for a `std`-only crate.
    pub no_std_features: &'static [&'static str],
    /// Whether miri runs the whole suite under stacked borrows. A crate without `unsafe`
    /// whose suite is heavy (runtimes, 100 000 tasks) sets `false` and names what miri runs
    /// in `tests/miri_subset.rs`.
    pub miri_full_suite: bool,
    /// The preemption bound its loom models run at in CI (`cargo xtask test-loom`): the
    /// highest at which the whole set finishes in minutes on two cores.
    pub loom_preemptions: u32,
    /// Loom models inside the library (unit-level, for crate-private types), as a test
    /// path filter for `--lib`: `test-loom` runs them too, at `loom_preemptions`.
    pub loom_lib_models: Option<&'static str>,
    /// Optional features, off by default, that `test`, `clippy`, `doc` and `msrv` turn on
    /// too, so code behind them is tested, linted, documented and built like the rest.
    pub optional_features: &'static [&'static str],
}

impl Library {
    /// Whether the crate has `file` (relative to its directory), for the checks that a crate opts
    /// into by adding a file, such as `tests/loom.rs`.
    pub fn has(&self, file: &str) -> bool {
        cmd::root()
            .join("crates")
            .join(self.name)
            .join(file)
            .exists()
    }
}

/// Every library's optional features as one `--features` value for a workspace-wide command
/// (`deferred-cache/serde,deferred-cache/tracing,...`); `None` when no library has any.
pub fn optional_features() -> Option<String> {
    let libraries = LIBRARIES
        .iter()
        .map(|lib| (lib.name, lib.optional_features));
    let all: Vec<String> = libraries
        .chain(OTHER_OPTIONAL_FEATURES.iter().copied())
        .flat_map(|(name, features)| {
            features
                .iter()
                .map(move |feature| format!("{name}/{feature}"))
        })
        .collect();
    (!all.is_empty()).then(|| all.join(","))
}

/// Optional features of the workspace's crates that are not in [`LIBRARIES`] (see there why
/// deferred-redis is not): `test`, `doc` and `clippy` turn them on as they do the libraries'.
pub const OTHER_OPTIONAL_FEATURES: &[(&str, &[&str])] = &[("deferred-redis", &["serde"])];

/// The library crates, bottom layer first. A new layer is one line here: clippy, test, no-std
/// and miri pick it up, and test-loom does as soon as it has a `tests/loom.rs`.
///
/// `deferred-redis` is not listed: it is a workspace member, so `fmt`, `clippy`, `test` and
/// `doc` (which run over `--workspace`) cover it, while the per-library steps would not fit
/// it: it is `std`-only with no `unsafe` and no loom models, and its tests start a
/// `redis-server` process, which miri and the sanitizers cannot run (`test` installs the
/// server first: see `redis.rs`). `msrv` builds it through [`OTHER_OPTIONAL_FEATURES`]. Its
/// dependencies as first locked did not fit Rust 1.81 (icu 2.x through url's IDNA, backon 1.6
/// and tokio 1.54, checked on 2026-12-06); the lock holds them where they do: `idna_adapter`
/// 1.1 (the unicode-rs backend, no icu), backon 1.5, tokio 1.47 (its LTS line), tokio-util
/// 0.7.16, utf8_iter 1.0.4. A `cargo update` that moves them up fails `msrv`, not a user.
pub const LIBRARIES: &[Library] = &[
    Library {
        name: "deferred-core",
        no_std_features: &["", "alloc"],
        miri_full_suite: true,
        loom_preemptions: 3,
        loom_lib_models: None,
        optional_features: &[],
    },
    Library {
        name: "deferred-map",
        no_std_features: &[""],
        miri_full_suite: true,
        loom_preemptions: 2,
        loom_lib_models: None,
        optional_features: &[],
    },
    Library {
        name: "deferred-cache",
        no_std_features: &[],
        miri_full_suite: false,
        loom_preemptions: 2,
        loom_lib_models: Some("store::tests::models"),
        optional_features: &["serde", "tracing"],
    },
    Library {
        name: "deferred-expiring",
        no_std_features: &[],
        miri_full_suite: false,
        loom_preemptions: 2,
        loom_lib_models: None,
        optional_features: &["serde", "tracing"],
    },
];

const USAGE: &str = "\
usage: cargo xtask <task> [args]

tasks:
  fmt                      cargo fmt --check over the workspace
  clippy                   clippy with -D warnings, also with default features off and
                           with the optional ones (`serde`, `tracing`) on
  test                     the test suites with the optional features (`serde`, `tracing`)
                           on, also with only the `alloc` feature; installs redis-server
                           (apt-get) first if absent, for deferred-redis's tests
  redis-server             install redis-server (apt-get) if it is not on PATH; `test`
                           does this first
  redis-demo               deferred-redis's two-process example, whole: installs and
                           starts redis-server (Unix socket, temp dir), runs two processes
                           (one load across both, an invalidation reaching the other),
                           stops the server
  test-loom [--preemptions N] [FILTER]
                           loom models, each crate at its bound (core 3, the rest 2);
                           --preemptions N (or LOOM_MAX_PREEMPTIONS) runs every crate at N
  miri                     the library tests under miri (nightly), stacked and tree borrows
  msrv                     build the libraries with the workspace's rust-version
  no-std                   build the libraries for thumbv7em-none-eabihf, and the core for
                           thumbv6m-none-eabi (no compare-and-swap) with critical-section
  sanitize [--short]       stress tests under thread and address (+leak) sanitizers (nightly)
  doc                      rustdoc with -D warnings, optional features (`serde`, `tracing`)
                           on
  bench [LAYER] [--no-run] run criterion benches (core, map, cache, expiring, redis) and print
                           ratio tables (cache: hit ratios, mixed-load throughput and
                           bytes per entry too; redis: starts its own redis-server, adds
                           a 4-process stampede); --no-run only builds them
  fuzz TARGET|all [--seconds N]
                           cargo-fuzz (nightly) on map_ops, cache_ops or timer_wheel
                           against sequential models; 60 s each by default
  ci                       all of the above in CI order, with timings
  soak --minutes N [--threads T] [--seed S] [--layers L,..]
                           every layer under random load with failures, panics,
                           cancellations, stalls and clock jumps (not in ci)
  help                     this text
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((task, rest)) = args.split_first() else {
        print!("{USAGE}");
        return ExitCode::SUCCESS;
    };
    let result = match task.as_str() {
        "help" | "-h" | "--help" => {
            print!("{USAGE}");
            Ok(())
        }
        "fmt" => no_args(task, rest).and_then(|()| fmt::run()),
        "clippy" => no_args(task, rest).and_then(|()| clippy::run()),
        "test" => no_args(task, rest).and_then(|()| test::run()),
        "redis-server" => no_args(task, rest).and_then(|()| redis::ensure_server()),
        "redis-demo" => no_args(task, rest).and_then(|()| redis_demo::run()),
        "test-loom" => loom::run_args(rest),
        "miri" => no_args(task, rest).and_then(|()| miri::run()),
        "msrv" => no_args(task, rest).and_then(|()| msrv::run()),
        "no-std" => no_args(task, rest).and_then(|()| no_std::run()),
        "sanitize" => sanitize::run(rest),
        "doc" => no_args(task, rest).and_then(|()| doc::run()),
        "bench" => bench::run(rest),
        "fuzz" => fuzz::run(rest),
        "ci" => no_args(task, rest).and_then(|()| ci::run()),
        "soak" => soak::run(rest),
        other => Err(format!(
            "unknown task `{other}`; run `cargo xtask help` for the list"
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Rejects stray arguments instead of silently ignoring a typo such as `cargo xtask test loom`.
fn no_args(task: &str, rest: &[String]) -> Result {
    match rest {
        [] => Ok(()),
        _ => Err(format!(
            "`{task}` takes no arguments, got `{}`",
            rest.join(" ")
        )),
    }
}
