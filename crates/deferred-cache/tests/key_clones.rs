//! What a load costs in copies of its key: a miss moves the key into the entry, and its
//! loader borrows it there; a copy is made only for a weigher, which admission asks for
//! the loaded value's weight with the key beside it.

#![allow(clippy::std_instead_of_core)]

use std::{cell::Cell, convert::Infallible};

use deferred_cache::Cache;
use futures::executor::block_on;

std::thread_local! {
    static CLONES: Cell<usize> = const { Cell::new(0) };
}

/// A key that counts its clones on the calling thread.
#[derive(PartialEq, Eq, Hash, Debug)]
struct Key(u64);

impl Clone for Key {
    fn clone(&self) -> Self {
        CLONES.with(|c| c.set(c.get() + 1));
        Key(self.0)
    }
}

/// How many times `op` cloned a [`Key`] on this thread, and what it returned.
fn clones<R>(op: impl FnOnce() -> R) -> (usize, R) {
    CLONES.with(|c| c.set(0));
    let r = op();
    (CLONES.with(Cell::get), r)
}

#[test]
fn a_miss_clones_no_key_without_a_weigher() {
    for cache in [Cache::<Key, u64>::new(), Cache::bounded(100)] {
        let (n, v) = clones(|| block_on(cache.get_with(Key(1), || async { Ok(10) })));
        assert_eq!((n, v), (0, Ok(10)));
        // The loader given the key borrows the entry's.
        let loader = |key: &Key| std::future::ready(Ok::<_, Infallible>(key.0 * 2));
        let (n, v) = clones(|| block_on(cache.get_with_key(Key(2), loader)));
        assert_eq!((n, v), (0, Ok(4)));
        assert_eq!(cache.peek(&Key(2)), Some(4));
    }
}

#[test]
fn a_miss_keeps_one_copy_for_the_weigher() {
    let cache: Cache<Key, u64> = Cache::builder()
        .max_capacity(100)
        .weigher(|key: &Key, _: &u64| u32::try_from(key.0).unwrap())
        .build();
    let (n, v) = clones(|| block_on(cache.get_with(Key(3), || async { Ok(30) })));
    assert_eq!((n, v), (1, Ok(30)));
    assert_eq!(cache.weighted_size(), Some(3), "weighed with its key");
}
