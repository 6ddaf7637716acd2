//! What `cargo xtask miri` runs for this crate: the cache's own code is all safe Rust, but it
//! drives `deferred-core`'s cells through paths of its own (a load driven before any waiter
//! links, waiters that unlink mid-load, a panicking load, eviction dropping cells), so miri
//! checks those paths here on a small scale, without a runtime.

#![allow(clippy::std_instead_of_core)]

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};

use common::{poll_once, Gate, Runs};
use deferred_cache::{Cache, LoadError, Source};
use futures::{executor::block_on, FutureExt};

#[test]
fn single_flight_with_waiters_that_leave() {
    let cache: Cache<u8, String, String> = Cache::bounded(4);
    let gate = Gate::new();
    let runs = Runs::default();
    let loader = || runs.gated(&gate, "v".to_string());
    let mut first = cache.get_with(1, loader).with_source().boxed();
    let mut second = cache.get_with(1, || async { Ok(String::new()) }).boxed();
    let mut third = cache
        .get_with(1, || async { Ok(String::new()) })
        .with_source()
        .boxed();
    assert!(poll_once(&mut first).is_pending());
    assert!(poll_once(&mut second).is_pending());
    assert!(poll_once(&mut third).is_pending());
    drop(first);
    drop(second);
    gate.open();
    assert_eq!(block_on(third), (Ok("v".to_string()), Source::Joined));
    assert_eq!(runs.started(), 1);
    assert_eq!(runs.dropped(), 1);
}

#[test]
fn ready_loads_errors_and_eviction() {
    let cache: Cache<u8, Vec<u8>, String> = Cache::bounded(3);
    block_on(async {
        for k in 0..20u8 {
            assert_eq!(
                cache.get_with(k, || async move { Ok(vec![k]) }).await,
                Ok(vec![k])
            );
        }
        let err = cache.get_with(50, || async { Err("no".to_string()) }).await;
        assert!(matches!(err, Err(LoadError::Failed(_))));
    });
    assert!(cache.len() <= 3);
    cache.invalidate_all();
    assert!(cache.is_empty());
}

#[test]
fn a_panic_reaches_the_waiter() {
    let cache: Cache<u8, u8, String> = Cache::new();
    let gate = Gate::new();
    let opened = gate.wait();
    let mut driver = cache
        .get_with(1, move || async move {
            opened.await;
            panic!("loader panics")
        })
        .boxed();
    let mut waiter = cache.get_with(1, || async { Ok(0) }).boxed();
    assert!(poll_once(&mut driver).is_pending());
    assert!(poll_once(&mut waiter).is_pending());
    gate.open();
    let unwound = catch_unwind(AssertUnwindSafe(|| poll_once(&mut driver)));
    assert!(unwound.is_err());
    drop(driver);
    assert_eq!(block_on(waiter), Err(LoadError::Panicked));
    assert!(cache.is_empty());
}

#[test]
fn abandoned_and_reentrant_loads() {
    let cache = std::sync::Arc::new(Cache::<u8, u8, String>::new());
    let gate = Gate::new();
    let opened = gate.wait();
    let mut only = cache
        .get_with(1, move || async move {
            opened.await;
            Ok(1)
        })
        .boxed();
    assert!(poll_once(&mut only).is_pending());
    drop(only);
    assert!(cache.is_empty());
    let inner = cache.clone();
    let outcome = block_on(cache.get_with(2, move || async move {
        inner
            .get_with(2, || async { Ok(0) })
            .await
            .map_err(|e| e.to_string())
    }));
    assert!(matches!(outcome, Err(LoadError::Failed(_))));
}
