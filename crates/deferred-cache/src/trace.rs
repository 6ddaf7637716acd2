//! The `tracing` feature's hooks: a span per load, an event per eviction or expiry.
//!
//! Every hook is a one-line call in the code it watches; the `cfg`s live here only. With the
//! feature off, `Load` is a zero-sized type, the closures that would compute a key's hash are
//! never called, and every function is an empty inline one: nothing is left in the build
//! (nor is the `tracing` crate built).
//!
//! What is traced, under the target `deferred_cache`:
//! * a `load` span at `DEBUG` for each load a loader runs (`get_with`, `get`,
//!   `optionally_get_with`, `get_with_blocking`), with `key_hash` (the cache's hasher over
//!   the key, so keys need not be `Debug`), and, when it ends, `outcome` (`ok`, `error`,
//!   `panic`, `cancelled` or `empty`) and `elapsed_us`. The loader runs inside it.
//! * an `evicted` (capacity or weight) or `expired` event at `TRACE`, with `key_hash` and
//!   `cause`. `TRACE`, below the load spans: a full cache evicts about once per admission,
//!   which would drown the loads at `DEBUG`.

use core::time::Duration;

use crate::{stats::Outcome, RemovalCause};

/// The target of every span and event, whatever module they come from.
#[cfg(feature = "tracing")]
const TARGET: &str = "deferred_cache";

/// The span of one load, opened when the load starts running (nothing with the feature
/// off).
#[cfg(feature = "tracing")]
pub(crate) struct Load {
    /// The key's hash, if a subscriber wanted `DEBUG` spans when the load was made.
    hash: Option<u64>,
    /// `Span::none()` until `start`.
    span: tracing::Span,
}

/// The span of one load (nothing with the feature off).
#[cfg(not(feature = "tracing"))]
pub(crate) struct Load;

#[cfg(feature = "tracing")]
impl Load {
    /// A load's span-to-be, made before the load runs: callers that race on a miss may each
    /// make a load, of which only one ever runs, so only `start` opens the span. `hash` is
    /// called only if some subscriber takes `DEBUG` spans of this target.
    #[inline]
    pub(crate) fn new(hash: impl FnOnce() -> u64) -> Self {
        let wanted = tracing::enabled!(target: TARGET, tracing::Level::DEBUG);
        Load {
            hash: wanted.then(hash),
            span: tracing::Span::none(),
        }
    }

    /// The load starts running: opens its span, a child of the caller's current span.
    #[inline]
    pub(crate) fn start(&mut self) {
        self.span = tracing::debug_span!(
            target: TARGET,
            "load",
            key_hash = self.hash,
            outcome = tracing::field::Empty,
            elapsed_us = tracing::field::Empty,
        );
    }

    /// `fut`, run inside the span each time it is polled.
    #[inline]
    pub(crate) fn instrument<F>(&self, fut: F) -> tracing::instrument::Instrumented<F> {
        tracing::Instrument::instrument(fut, self.span.clone())
    }

    /// Runs `f` (a blocking loader) inside the span.
    #[inline]
    pub(crate) fn in_scope<R>(&self, f: impl FnOnce() -> R) -> R {
        self.span.in_scope(f)
    }

    /// Records how the load ended and how long it ran.
    #[inline]
    pub(crate) fn finish(&self, outcome: Outcome, took: Duration) {
        let outcome = match outcome {
            Outcome::Ok => "ok",
            Outcome::Failed => "error",
            Outcome::Panicked => "panic",
            Outcome::Cancelled => "cancelled",
            Outcome::Absent => "empty",
        };
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.span.record("outcome", outcome);
        self.span.record("elapsed_us", micros);
    }
}

#[cfg(not(feature = "tracing"))]
impl Load {
    #[inline(always)]
    pub(crate) fn new(_hash: impl FnOnce() -> u64) -> Self {
        Load
    }

    #[inline(always)]
    pub(crate) fn start(&mut self) {}

    #[inline(always)]
    pub(crate) fn instrument<F>(&self, fut: F) -> F {
        fut
    }

    #[inline(always)]
    pub(crate) fn in_scope<R>(&self, f: impl FnOnce() -> R) -> R {
        f()
    }

    #[inline(always)]
    pub(crate) fn finish(&self, _outcome: Outcome, _took: Duration) {}
}

/// A value the cache removed by itself: an event for an eviction (`Size`) or an expiry
/// (`Expired`); nothing for the removals a caller asked for.
#[cfg(feature = "tracing")]
#[inline]
pub(crate) fn removed(hash: u64, cause: RemovalCause) {
    match cause {
        RemovalCause::Size => {
            tracing::trace!(target: TARGET, key_hash = hash, cause = "size", "evicted")
        }
        RemovalCause::Expired => {
            tracing::trace!(target: TARGET, key_hash = hash, cause = "expired", "expired");
        }
        _ => {}
    }
}

/// A value the cache removed by itself (nothing with the feature off).
#[cfg(not(feature = "tracing"))]
#[inline(always)]
pub(crate) fn removed(_hash: u64, _cause: RemovalCause) {}
