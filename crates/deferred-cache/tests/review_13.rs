//! Review 13: the `tracing` feature in `get_with_blocking` runs subscriber code (the
//! `enabled!` check in `trace::Load::new`, and `new_span` in `trace::Load::start`) after
//! the caller's pending cell is in the map and before the `Running` guard exists and before
//! the re-entrancy scope is entered (src/blocking.rs, `trace::Load::new` / `trace.start()`
//! ahead of `let mut load = Running { .. }` and `reentrancy::enter`). So:
//! * a subscriber that panics there leaves the pending cell in the map for ever: every
//!   later caller of the key waits on a load that will never run;
//! * a subscriber that reads the key there (same thread) waits on its own load, for ever,
//!   where a loader doing the same gets `LoadError::Reentrant`.
//! A timeout only bounds the hang; it orders nothing.

#![cfg(feature = "tracing")]
#![allow(clippy::std_instead_of_core)]

use std::{
    panic::{catch_unwind, AssertUnwindSafe},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::SeqCst},
        mpsc::channel,
    },
    thread,
    time::Duration,
};

use deferred_cache::{Cache, LoadError};
use tracing::{span, Event, Metadata, Subscriber};

type C = Cache<u64, u64, String>;

/// A subscriber that runs `on_load` when a `load` span is made.
struct OnLoad<F: Fn() + Send + Sync + 'static> {
    on_load: F,
    next: AtomicU64,
}

impl<F: Fn() + Send + Sync + 'static> OnLoad<F> {
    fn new(on_load: F) -> Self {
        OnLoad {
            on_load,
            next: AtomicU64::new(1),
        }
    }
}

impl<F: Fn() + Send + Sync + 'static> Subscriber for OnLoad<F> {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, attrs: &span::Attributes<'_>) -> span::Id {
        if attrs.metadata().name() == "load" {
            (self.on_load)();
        }
        span::Id::from_u64(self.next.fetch_add(1, SeqCst))
    }
    fn record(&self, _: &span::Id, _: &span::Record<'_>) {}
    fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}
    fn event(&self, _: &Event<'_>) {}
    fn enter(&self, _: &span::Id) {}
    fn exit(&self, _: &span::Id) {}
}

/// The outcome of `get_with_blocking(key)` on another thread (no subscriber), or `None` if
/// it has not returned within 10 s (it is stranded).
fn blocking_get_elsewhere(cache: &C, key: u64, value: u64) -> Option<Result<u64, LoadError<String>>> {
    let (tx, rx) = channel();
    let cache = cache.clone();
    thread::spawn(move || {
        let _ = tx.send(cache.get_with_blocking(key, || Ok(value)));
    });
    rx.recv_timeout(Duration::from_secs(10)).ok()
}

/// Control: a panicking *loader* leaves the cache usable (documented).
#[test]
fn control_a_panicking_loader_strands_no_one() {
    let cache: C = Cache::new();
    let panicked = catch_unwind(AssertUnwindSafe(|| {
        cache.get_with_blocking(1, || -> Result<u64, String> { panic!("loader") })
    }));
    assert!(panicked.is_err());
    assert_eq!(blocking_get_elsewhere(&cache, 1, 2), Some(Ok(2)));
}

/// A subscriber that panics in `new_span` for the load: the pending cell stays in the map,
/// and the next caller of the key (another thread, no subscriber) never returns.
#[test]
fn a_panicking_subscriber_strands_the_key() {
    let cache: C = Cache::new();
    let armed = AtomicBool::new(true);
    let subscriber = OnLoad::new(move || {
        if armed.swap(false, SeqCst) {
            panic!("subscriber");
        }
    });
    let panicked = catch_unwind(AssertUnwindSafe(|| {
        tracing::subscriber::with_default(subscriber, || cache.get_with_blocking(1, || Ok(1)))
    }));
    assert!(panicked.is_err(), "the subscriber's panic unwinds out of the call");
    assert_eq!(
        blocking_get_elsewhere(&cache, 1, 2),
        Some(Ok(2)),
        "the next caller of the key is stranded behind a load that never ran"
    );
}

/// A subscriber that reads the key being loaded, on the loading thread, in `new_span`:
/// the call waits on its own load for ever (a loader doing the same gets `Reentrant`).
#[test]
fn a_subscriber_reading_the_key_deadlocks_its_thread() {
    let cache: C = Cache::new();
    let (tx, rx) = channel();
    {
        let cache = cache.clone();
        thread::spawn(move || {
            let inner_cache = cache.clone();
            let armed = AtomicBool::new(true);
            let subscriber = OnLoad::new(move || {
                if armed.swap(false, SeqCst) {
                    let nested = inner_cache.get_with_blocking(1, || Ok(3));
                    assert_eq!(nested, Err(LoadError::Reentrant));
                }
            });
            let got =
                tracing::subscriber::with_default(subscriber, || cache.get_with_blocking(1, || Ok(1)));
            let _ = tx.send(got);
        });
    }
    let got = rx.recv_timeout(Duration::from_secs(10));
    assert_eq!(got, Ok(Ok(1)), "the loading thread never returned (waits on its own load)");
}
