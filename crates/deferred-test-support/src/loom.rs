//! One test source, two modes: `loom` under `--cfg loom`, std and a plain run otherwise.
//!
//! A `tests/loom.rs` imports `loom`, `thread`, `sync` and `future::block_on` from here
//! instead of from the `loom` crate. Built with `--cfg loom` (`cargo xtask test-loom`) they
//! are loom's, and `loom::model(f)` explores every interleaving of `f` up to the preemption
//! bound. Built without it, they are std's (and `futures`' executor), and `model(f)` runs
//! `f` once on real threads: each model becomes a quick plain test, run by `cargo test` and
//! by miri, which checks the one interleaving it gets for undefined behaviour and data races.
//! A plain run proves far less than loom does, and costs about as little as one unit test.

#[cfg(loom)]
pub use ::loom::*;

#[cfg(not(loom))]
pub use self::plain::*;

#[cfg(not(loom))]
mod plain {
    pub use std::{sync, thread};

    /// `block_on`, std's way.
    pub mod future {
        pub use futures::executor::block_on;
    }

    /// Runs `f` once (loom would run it once per interleaving). The bounds are loom's, so a
    /// model that builds in one mode builds in the other.
    pub fn model<F>(f: F)
    where
        F: Fn() + Sync + Send + 'static,
    {
        f();
    }

    /// `loom::model::Builder`'s settings that the models use, and its `check`.
    pub mod model {
        /// A model's settings: loom's bounds, which a plain run has no use for.
        #[derive(Debug, Default)]
        pub struct Builder {
            /// Loom's preemption bound (`None`: `LOOM_MAX_PREEMPTIONS`).
            pub preemption_bound: Option<usize>,
            /// Loom's limit on the branches of one execution.
            pub max_branches: usize,
        }

        impl Builder {
            /// Default settings.
            pub fn new() -> Self {
                Builder::default()
            }

            /// Runs `f` once, as [`model`](fn@super::model) does.
            pub fn check<F>(&self, f: F)
            where
                F: Fn() + Sync + Send + 'static,
            {
                f();
            }
        }
    }
}
