//! The `tracing` feature (issue #12): one `load` span per load, whatever number of callers
//! share it, with the key's hash, the outcome and the duration; an event per eviction and
//! per expiry. Each test collects on its own thread (`with_default`) and drives its futures
//! there, so nothing depends on timing or on the other tests.

#![cfg(feature = "tracing")]
#![allow(clippy::std_instead_of_core)]

#[path = "support/collector.rs"]
mod collector;

use std::{
    collections::hash_map::RandomState,
    hash::BuildHasher,
    panic::{catch_unwind, AssertUnwindSafe},
    sync::{Arc, Mutex},
};

use collector::{Collector, Record};
use deferred_cache::{Cache, LoadError, RemovalCause};
use futures::{executor::block_on, future, FutureExt};
use tracing::Level;

/// A cache whose hasher the test keeps, to compute the hashes the spans should carry.
fn cache(capacity: Option<u64>) -> (Cache<u64, u64, String, RandomState>, RandomState) {
    let hasher = RandomState::new();
    let builder = Cache::builder().hasher(hasher.clone());
    let builder = match capacity {
        Some(capacity) => builder.max_capacity(capacity),
        None => builder,
    };
    (builder.build(), hasher)
}

/// The one `load` span collected; fails if there is not exactly one.
fn only_load(collector: &Collector) -> Record {
    let loads = collector.spans_named("load");
    assert_eq!(loads.len(), 1, "one load span: {loads:#?}");
    loads.into_iter().next().unwrap()
}

fn assert_load(span: &Record, hash: u64, outcome: &str) {
    assert_eq!(span.target, "deferred_cache");
    assert_eq!(span.level, Level::DEBUG);
    assert_eq!(span.field("key_hash"), Some(hash.to_string().as_str()));
    assert_eq!(span.field("outcome"), Some(outcome), "{span:#?}");
    let micros = span.field("elapsed_us").expect("elapsed_us recorded");
    micros.parse::<u64>().expect("elapsed_us is a number");
    assert!(span.closed, "the span ends with the load: {span:#?}");
}

#[test]
fn coalesced_callers_share_one_load_span() {
    let collector = Collector::default();
    let (cache, hasher) = cache(None);
    collector.run(|| {
        let (open, gate) = futures::channel::oneshot::channel::<()>();
        let first = cache.get_with(7, move || async move {
            gate.await.ok();
            tracing::info!("inside the loader");
            Ok(70)
        });
        let joiners =
            (0..7).map(|_| cache.get_with(7, || async { panic!("coalesced: never run") }));
        let callers =
            future::join_all(std::iter::once(first.boxed()).chain(joiners.map(FutureExt::boxed)));
        let (outcomes, ()) = block_on(future::join(callers, async move { open.send(()).unwrap() }));
        assert!(outcomes.iter().all(|o| *o == Ok(70)), "{outcomes:?}");
    });
    let span = only_load(&collector);
    assert_load(&span, hasher.hash_one(7u64), "ok");
    // The loader runs inside its span.
    let events = collector.events();
    let inside = events
        .iter()
        .find(|e| e.field("message") == Some("inside the loader"))
        .expect("the loader's event");
    let load = collector.spans().iter().position(|s| s.name == "load");
    assert_eq!(inside.in_span, load);
    // A hit loads nothing: no new span.
    collector.run(|| assert_eq!(block_on(cache.get_with(7, || async { Ok(0) })), Ok(70)));
    assert_eq!(collector.spans_named("load").len(), 1);
}

#[test]
fn a_failed_load_is_an_error_and_the_next_call_loads_again() {
    let collector = Collector::default();
    let (cache, hasher) = cache(None);
    collector.run(|| {
        let failed = block_on(cache.get_with(1, || async { Err("down".to_string()) }));
        assert!(matches!(failed, Err(LoadError::Failed(_))));
        assert_eq!(block_on(cache.get_with(1, || async { Ok(1) })), Ok(1));
    });
    let loads = collector.spans_named("load");
    assert_eq!(loads.len(), 2, "{loads:#?}");
    assert_load(&loads[0], hasher.hash_one(1u64), "error");
    assert_load(&loads[1], hasher.hash_one(1u64), "ok");
}

#[test]
fn a_panicking_load_is_a_panic() {
    let collector = Collector::default();
    let (cache, hasher) = cache(None);
    collector.run(|| {
        let unwound = catch_unwind(AssertUnwindSafe(|| {
            block_on(cache.get_with(2, || async { panic!("loader panics on purpose") }))
        }));
        assert!(unwound.is_err());
    });
    assert_load(&only_load(&collector), hasher.hash_one(2u64), "panic");
    assert_eq!(cache.stats().loads_panicked, 1);
}

#[test]
fn a_load_dropped_by_every_caller_is_cancelled() {
    let collector = Collector::default();
    let (cache, hasher) = cache(None);
    collector.run(|| {
        let mut get = cache.get_with(3, future::pending::<Result<u64, String>>);
        assert!((&mut get).now_or_never().is_none());
        drop(get);
    });
    assert_load(&only_load(&collector), hasher.hash_one(3u64), "cancelled");
}

#[test]
fn a_load_that_finds_nothing_is_empty() {
    let collector = Collector::default();
    let (cache, hasher) = cache(None);
    collector.run(|| {
        assert_eq!(
            block_on(cache.optionally_get_with(4, || async { None })),
            Ok(None)
        );
    });
    assert_load(&only_load(&collector), hasher.hash_one(4u64), "empty");
}

#[test]
fn a_loading_cache_traces_its_loads() {
    let collector = Collector::default();
    let hasher = RandomState::new();
    let cache = Cache::<u64, u64, String>::builder()
        .hasher(hasher.clone())
        .build_with_loader(|key: &u64| {
            let key = *key;
            async move { Ok(key * 2) }
        });
    collector.run(|| assert_eq!(block_on(cache.get(5)), Ok(10)));
    assert_load(&only_load(&collector), hasher.hash_one(5u64), "ok");
}

#[test]
fn blocking_loads_have_spans_too() {
    let collector = Collector::default();
    let (cache, hasher) = cache(None);
    collector.run(|| {
        let loaded = cache.get_with_blocking(6, || {
            tracing::info!("inside the blocking loader");
            Ok(60)
        });
        assert_eq!(loaded, Ok(60));
        let failed = cache.get_with_blocking(8, || Err("down".to_string()));
        assert!(matches!(failed, Err(LoadError::Failed(_))));
        let unwound = catch_unwind(AssertUnwindSafe(|| {
            cache.get_with_blocking(9, || panic!("blocking loader panics on purpose"))
        }));
        assert!(unwound.is_err());
    });
    let loads = collector.spans_named("load");
    assert_eq!(loads.len(), 3, "{loads:#?}");
    assert_load(&loads[0], hasher.hash_one(6u64), "ok");
    assert_load(&loads[1], hasher.hash_one(8u64), "error");
    assert_load(&loads[2], hasher.hash_one(9u64), "panic");
    let inside = collector.events();
    let inside = inside
        .iter()
        .find(|e| e.field("message") == Some("inside the blocking loader"))
        .expect("the loader's event");
    assert_eq!(
        inside.in_span,
        collector.spans().iter().position(|s| s.name == "load")
    );
}

#[test]
fn evictions_are_trace_events_with_the_key_hash() {
    let collector = Collector::default();
    let hasher = RandomState::new();
    let evicted = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&evicted);
    let cache: Cache<u64, u64, String, _> = Cache::builder()
        .hasher(hasher.clone())
        .max_capacity(2)
        .eviction_listener(move |key, _, cause| {
            if cause == RemovalCause::Size {
                seen.lock().unwrap().push(*key);
            }
        })
        .build();
    collector.run(|| {
        for key in 0..20 {
            cache.insert(key, key);
        }
        // Removals a caller asks for are not traced.
        cache.invalidate_all();
    });
    let events: Vec<Record> = collector
        .events()
        .into_iter()
        .filter(|e| e.target == "deferred_cache")
        .collect();
    assert!(!events.is_empty(), "a cache of 2 given 20 keys evicts");
    assert_eq!(events.len() as u64, cache.stats().evicted);
    let mut want: Vec<String> = evicted
        .lock()
        .unwrap()
        .iter()
        .map(|key| hasher.hash_one(key).to_string())
        .collect();
    let mut got: Vec<String> = events
        .iter()
        .map(|e| {
            assert_eq!(e.level, Level::TRACE);
            assert_eq!(e.field("message"), Some("evicted"));
            assert_eq!(e.field("cause"), Some("size"));
            e.field("key_hash").unwrap().to_string()
        })
        .collect();
    want.sort();
    got.sort();
    assert_eq!(got, want);
}

#[test]
fn expire_if_is_an_expired_event() {
    let collector = Collector::default();
    let (cache, hasher) = cache(None);
    cache.insert(1, 10);
    collector.run(|| assert!(cache.expire_if(&1, |_| true)));
    let events = collector.events();
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0].level, Level::TRACE);
    assert_eq!(events[0].field("message"), Some("expired"));
    assert_eq!(events[0].field("cause"), Some("expired"));
    assert_eq!(
        events[0].field("key_hash"),
        Some(hasher.hash_one(1u64).to_string().as_str())
    );
}
