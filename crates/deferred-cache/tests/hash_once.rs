//! Issue #13: one operation hashes its key once. The hash is computed where the operation
//! starts and travels down with the key (the map's shard and table probe, the policy's
//! shard and ghost, the admission check), never recomputed from the key.
//!
//! The key type counts the calls of its `Hash` impl on this thread (every operation here
//! runs on the test's thread: `block_on`, no pool), so each assertion is the number of
//! times one call hashed its key.

#![allow(clippy::std_instead_of_core)]

use deferred_cache::Cache;
use deferred_test_support::{hashes, Counted};
use futures::executor::block_on;

/// Both kinds of cache: unbounded (no policy) and bounded (S3-FIFO admission on a load or
/// an insert), where the admission path must not hash again either.
fn caches() -> [(&'static str, Cache<Counted, u64>); 2] {
    [
        ("unbounded", Cache::new()),
        ("bounded", Cache::bounded(1000)),
    ]
}

#[test]
fn get_with_miss_and_load_hashes_once() {
    for (kind, cache) in caches() {
        let (n, v) = hashes(|| block_on(cache.get_with(Counted(1), || async { Ok(10) })));
        assert_eq!(v, Ok(10));
        assert_eq!(n, 1, "{kind}: get_with miss + load");
    }
}

#[test]
fn get_with_hit_hashes_once() {
    for (kind, cache) in caches() {
        cache.insert(Counted(1), 10);
        let (n, v) = hashes(|| block_on(cache.get_with(Counted(1), || async { Ok(11) })));
        assert_eq!(v, Ok(10));
        assert_eq!(n, 1, "{kind}: get_with hit");
    }
}

#[test]
fn get_with_blocking_miss_and_hit_hash_once() {
    for (kind, cache) in caches() {
        let (n, v) = hashes(|| cache.get_with_blocking(Counted(1), || Ok(10)));
        assert_eq!(v, Ok(10));
        assert_eq!(n, 1, "{kind}: get_with_blocking miss + load");
        let (n, v) = hashes(|| cache.get_with_blocking(Counted(1), || Ok(11)));
        assert_eq!(v, Ok(10));
        assert_eq!(n, 1, "{kind}: get_with_blocking hit");
    }
}

#[test]
fn insert_hashes_once() {
    for (kind, cache) in caches() {
        let (n, ()) = hashes(|| cache.insert(Counted(1), 10));
        assert_eq!(n, 1, "{kind}: insert of an absent key");
        let (n, ()) = hashes(|| cache.insert(Counted(1), 11));
        assert_eq!(n, 1, "{kind}: insert over a present key");
        assert_eq!(cache.peek(&Counted(1)), Some(11));
    }
}

#[test]
fn invalidate_hashes_once() {
    for (kind, cache) in caches() {
        cache.insert(Counted(1), 10);
        let (n, removed) = hashes(|| cache.invalidate(&Counted(1)));
        assert!(removed);
        assert_eq!(n, 1, "{kind}: invalidate of a present key");
        let (n, removed) = hashes(|| cache.invalidate(&Counted(1)));
        assert!(!removed);
        assert_eq!(n, 1, "{kind}: invalidate of an absent key");
    }
}

#[test]
fn get_if_present_hashes_once() {
    for (kind, cache) in caches() {
        let (n, v) = hashes(|| cache.get_if_present(&Counted(1)));
        assert_eq!(v, None);
        assert_eq!(n, 1, "{kind}: get_if_present miss");
        cache.insert(Counted(1), 10);
        let (n, v) = hashes(|| cache.get_if_present(&Counted(1)));
        assert_eq!(v, Some(10));
        assert_eq!(n, 1, "{kind}: get_if_present hit");
    }
}

#[test]
fn removals_and_replace_hash_once() {
    for (kind, cache) in caches() {
        cache.insert(Counted(1), 10);
        let (n, swapped) = hashes(|| cache.replace_if(&Counted(1), 11, |v| *v == 10));
        assert!(swapped);
        assert_eq!(n, 1, "{kind}: replace_if");
        let (n, removed) = hashes(|| cache.invalidate_if(&Counted(1), |v| *v == 11));
        assert!(removed);
        assert_eq!(n, 1, "{kind}: invalidate_if");
        cache.insert(Counted(1), 12);
        let (n, removed) = hashes(|| cache.remove(&Counted(1)));
        assert_eq!(removed, Some(12));
        assert_eq!(n, 1, "{kind}: remove");
        let (n, v) = hashes(|| cache.get_or_insert_with(Counted(2), || 20));
        assert_eq!(v, 20);
        assert_eq!(n, 1, "{kind}: get_or_insert_with of an absent key");
    }
}
