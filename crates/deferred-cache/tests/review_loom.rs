//! Review of #12: loom models of races the existing models (tests/loom.rs) do not cover.
//! `RUSTFLAGS='--cfg loom -C debug-assertions' LOOM_MAX_PREEMPTIONS=2 cargo test --profile loom
//! -p deferred-cache --test review_loom`
#![cfg(loom)]
#![allow(clippy::std_instead_of_core)]

use std::{pin::Pin, sync::atomic::Ordering::SeqCst, task::Poll};

use deferred_cache::Cache;
use loom::{
    future::block_on,
    sync::{atomic::AtomicUsize, Arc},
    thread,
};

type Hasher = std::hash::BuildHasherDefault<std::collections::hash_map::DefaultHasher>;
type C = Cache<u8, usize, &'static str, Hasher>;

fn cache(capacity: u64) -> C {
    Cache::builder()
        .hasher(Hasher::default())
        .max_capacity(capacity)
        .build()
}

/// A loader that counts its start, yields once (waking itself), then returns `value`.
fn loader(
    started: &Arc<AtomicUsize>,
    value: usize,
) -> impl FnOnce() -> Pin<Box<dyn std::future::Future<Output = Result<usize, &'static str>> + Send>>
{
    let started = started.clone();
    move || {
        Box::pin(async move {
            started.fetch_add(1, SeqCst);
            let mut yielded = false;
            futures::future::poll_fn(|cx| {
                if yielded {
                    Poll::Ready(())
                } else {
                    yielded = true;
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
            })
            .await;
            Ok(value)
        })
    }
}

/// F7. `get_or_insert_with` racing a load of the same key (absent, in flight, or completing):
/// both callers agree on one value, the map holds it, the policy counts it once, and every
/// load that started is counted once.
#[test]
fn get_or_insert_with_vs_a_load_keeps_one_value_and_the_books() {
    loom::model(|| {
        let cache = cache(4);
        let started = Arc::new(AtomicUsize::new(0));
        let c = cache.clone();
        let t = thread::spawn(move || c.get_or_insert_with(1, || 5));
        let got = block_on(cache.get_with(1, loader(&started, 7))).unwrap();
        let inserted = t.join().unwrap();
        // The books first (they hold), then agreement (which does not).
        assert_eq!(cache.peek(&1), Some(got));
        assert_eq!((cache.len(), cache.weighted_size()), (1, Some(1)));
        assert_eq!(cache.stats().loads() as usize, started.load(SeqCst));
        assert_eq!(
            got,
            inserted,
            "the two callers disagree (get_with, get_or_insert_with); peek = {:?}, len = {}, \
             stats = {:?}",
            cache.peek(&1),
            cache.len(),
            cache.stats()
        );
    });
}

/// `invalidate_entries_if` racing an `insert` over the same key: two values went in; each
/// is either still there or counted as it left, and the policy weighs exactly what the map
/// holds.
#[test]
fn invalidate_entries_if_vs_insert_keeps_the_books() {
    loom::model(|| {
        let cache = cache(4);
        cache.insert(1, 1);
        let c = cache.clone();
        let t = thread::spawn(move || c.insert(1, 2));
        cache.invalidate_entries_if(|_, _| true);
        t.join().unwrap();
        assert_eq!(cache.weighted_size(), Some(cache.len() as u64));
        assert_eq!(cache.stats().invalidated + cache.len() as u64, 2);
    });
}

/// `remove` racing a load of the same key: the books stay exact.
#[test]
fn remove_vs_a_load_keeps_the_books() {
    loom::model(|| {
        let cache = cache(1);
        let started = Arc::new(AtomicUsize::new(0));
        let c = cache.clone();
        let t = thread::spawn(move || c.remove(&1));
        let got = block_on(cache.get_with(1, loader(&started, 7)));
        let removed = t.join().unwrap();
        assert_eq!(got, Ok(7));
        assert!(removed.is_none() || removed == Some(7));
        assert_eq!(cache.weighted_size(), Some(cache.len() as u64));
        cache.insert(2, 2);
        assert_eq!((cache.len(), cache.weighted_size()), (1, Some(1)));
    });
}
