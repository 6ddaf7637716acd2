//! Borrowed keys (issue #12): every read and removal of `Cache` / `LoadingCache` takes any
//! borrowed form of the key (`&str` for `String`, `&[u8]` for `Vec<u8>`), finds what the
//! owned key stored, keeps the policy's books (hashed with the same hasher) and gives the
//! listener the key that left.

#![allow(clippy::std_instead_of_core)]

use std::{
    cell::Cell as StdCell,
    collections::hash_map::DefaultHasher,
    hash::BuildHasherDefault,
    sync::{Arc, Mutex},
};

use deferred_cache::{Cache, LoadingCache, RemovalCause};
use futures::executor::block_on;

type Told = Arc<Mutex<Vec<(String, u32, RemovalCause)>>>;

/// A bounded `String` cache whose listener records what leaves.
fn names(capacity: u64) -> (Cache<String, u32>, Told) {
    let told = Told::default();
    let t = Arc::clone(&told);
    let cache = Cache::builder()
        .max_capacity(capacity)
        .eviction_listener(move |k: &String, v: &u32, cause| {
            t.lock().unwrap().push((k.clone(), *v, cause));
        })
        .build();
    (cache, told)
}

#[test]
fn reads_by_str_find_what_a_string_key_stored_and_count_as_owned_reads_do() {
    let (cache, _) = names(100);
    cache.insert("ada".to_string(), 36);
    let ada: &str = "ada";

    assert_eq!(cache.get_if_present(ada), Some(36));
    assert_eq!(cache.get_if_present("bob"), None);
    assert_eq!(cache.get_if_present_with(ada, |v| Some(v + 1)), Some(37));
    assert_eq!(cache.get_if_present_with(ada, |_| None::<u32>), None);
    assert_eq!(cache.hit_with(ada, |v| Some(*v)), Some(36));
    assert_eq!(cache.hit_with("bob", |v| Some(*v)), None);
    let stats = cache.stats();
    // get_if_present: 1 hit, 1 miss; get_if_present_with: 1 hit, 1 miss; hit_with: 1 hit.
    assert_eq!((stats.hits, stats.misses), (3, 2));

    assert_eq!(cache.peek(ada), Some(36));
    assert_eq!(cache.peek("bob"), None);
    assert_eq!(cache.peek_with(ada, |v| v * 2), Some(72));
    assert_eq!(cache.peek_with("bob", |v| v * 2), None);
    assert!(cache.contains_key(ada));
    assert!(!cache.contains_key("bob"));
    let after = cache.stats();
    assert_eq!((after.hits, after.misses), (3, 2), "peeks count nothing");
}

#[test]
fn removals_by_str_remove_the_entry_and_tell_the_listener_the_owned_key() {
    let (cache, told) = names(100);
    for (name, age) in [
        ("ada", 36),
        ("bob", 40),
        ("cy", 50),
        ("dee", 60),
        ("eve", 70),
    ] {
        cache.insert(name.to_string(), age);
    }

    assert!(cache.invalidate("ada"));
    assert!(!cache.invalidate("ada"));
    assert_eq!(cache.remove("bob"), Some(40));
    assert_eq!(cache.remove("bob"), None);
    assert!(!cache.invalidate_if("cy", |v| *v == 0));
    assert!(cache.invalidate_if("cy", |v| *v == 50));
    assert!(!cache.expire_if("dee", |v| *v == 0));
    assert!(cache.expire_if("dee", |v| *v == 60));
    assert!(!cache.replace_if("eve", 71, |v| *v == 0));
    assert!(cache.replace_if("eve", 71, |v| *v == 70));
    assert!(
        !cache.replace_if("zed", 1, |_| true),
        "absent: nothing replaced"
    );

    assert_eq!(cache.peek("eve"), Some(71));
    assert_eq!(cache.len(), 1);
    assert_eq!(cache.weighted_size(), Some(1));
    let stats = cache.stats();
    assert_eq!((stats.invalidated, stats.expired), (4, 1));
    assert_eq!(
        *told.lock().unwrap(),
        [
            ("ada".to_string(), 36, RemovalCause::Explicit),
            ("bob".to_string(), 40, RemovalCause::Explicit),
            ("cy".to_string(), 50, RemovalCause::Explicit),
            ("dee".to_string(), 60, RemovalCause::Expired),
            ("eve".to_string(), 70, RemovalCause::Replaced),
        ]
    );
}

/// The policy shards and ghost hashes are keyed by hash: a removal by `&str` must retire the
/// value in the shard its `String` was admitted to, and a value put by `replace_if("k")`
/// must be admitted (and evictable) as one put by `insert("k".to_string())`.
#[test]
fn borrowed_removals_keep_the_eviction_books_exact() {
    let cache: Cache<String, u32> = Cache::builder()
        .max_capacity(40)
        .weigher(|_, v: &u32| *v)
        .build();
    let keys: Vec<String> = (0..8).map(|i| format!("key-{i}")).collect();
    for k in &keys {
        cache.insert(k.clone(), 4);
    }
    assert_eq!(cache.weighted_size(), Some(32));
    for k in &keys[..4] {
        assert!(cache.invalidate(k.as_str()));
    }
    assert_eq!(cache.weighted_size(), Some(16));
    assert!(cache.replace_if(keys[4].as_str(), 10, |v| *v == 4));
    assert_eq!(cache.weighted_size(), Some(22));
    assert_eq!(cache.remove(keys[5].as_str()), Some(4));
    assert_eq!(cache.weighted_size(), Some(18));

    // Fill past capacity: eviction must find room by the weights it was told.
    for i in 0..20 {
        cache.insert(format!("more-{i}"), 4);
        let w = cache.weighted_size().unwrap();
        assert!(w <= 40, "over capacity: {w}");
    }
    assert!(cache.stats().evicted > 0);
    let left: u64 = cache.iter().map(|(_, v)| u64::from(v)).sum();
    assert_eq!(
        Some(left),
        cache.weighted_size(),
        "books agree with the entries"
    );
}

#[test]
fn a_custom_hasher_hashes_the_borrowed_form_as_the_owned_one() {
    let cache: Cache<String, u32, std::convert::Infallible, BuildHasherDefault<DefaultHasher>> =
        Cache::builder()
            .max_capacity(10)
            .hasher(BuildHasherDefault::<DefaultHasher>::default())
            .build();
    for i in 0..10 {
        cache.insert(format!("k{i}"), i);
    }
    for i in 0..10 {
        assert_eq!(cache.peek(format!("k{i}").as_str()), Some(i));
    }
    assert!(cache.invalidate("k3"));
    assert_eq!(cache.weighted_size(), Some(9));
    assert_eq!(cache.len(), 9);
}

#[test]
fn a_vec_key_is_read_and_removed_by_slice() {
    let cache: Cache<Vec<u8>, &'static str> = Cache::bounded(10);
    cache.insert(vec![1, 2, 3], "abc");
    let key: &[u8] = &[1, 2, 3];
    assert_eq!(cache.get_if_present(key), Some("abc"));
    assert!(cache.contains_key(key));
    assert!(cache.replace_if(key, "xyz", |v| *v == "abc"));
    assert_eq!(cache.remove(key), Some("xyz"));
    assert!(!cache.contains_key(key));
}

#[test]
fn a_loading_cache_reads_and_removes_by_str_through_deref() {
    let lengths: LoadingCache<String, usize> =
        Cache::builder()
            .max_capacity(10)
            .build_with_loader(|s: &String| {
                let n = s.len();
                async move { Ok(n) }
            });
    assert_eq!(block_on(lengths.get("four".to_string())), Ok(4));
    assert_eq!(lengths.get_if_present("four"), Some(4));
    assert_eq!(lengths.peek("four"), Some(4));
    assert!(lengths.contains_key("four"));
    assert!(lengths.invalidate_if("four", |n| *n == 4));
    assert!(!lengths.contains_key("four"));
    assert_eq!(block_on(lengths.get("four".to_string())), Ok(4));
    assert_eq!(lengths.remove("four"), Some(4));
    assert_eq!(lengths.stats().loads_ok, 2);
}

/// A key whose clones are counted, to see when a removal by reference makes an owned key.
#[derive(PartialEq, Eq, Hash, Debug)]
struct Counted(u32);

thread_local! {
    static CLONES: StdCell<usize> = const { StdCell::new(0) };
}

impl Clone for Counted {
    fn clone(&self) -> Self {
        CLONES.with(|c| c.set(c.get() + 1));
        Counted(self.0)
    }
}

fn clones() -> usize {
    CLONES.with(StdCell::get)
}

#[test]
fn reads_never_make_an_owned_key_and_removals_make_one_only_for_a_listener() {
    // Unbounded, no listener: nothing needs an owned key.
    let plain: Cache<Counted, u32> = Cache::new();
    plain.insert(Counted(1), 10);
    plain.insert(Counted(2), 20);
    plain.insert(Counted(3), 30);
    let before = clones();
    assert_eq!(plain.get_if_present(&Counted(1)), Some(10));
    assert_eq!(plain.peek(&Counted(1)), Some(10));
    assert!(plain.contains_key(&Counted(1)));
    assert!(plain.replace_if(&Counted(1), 11, |_| true));
    assert!(plain.invalidate(&Counted(1)));
    assert_eq!(plain.remove(&Counted(2)), Some(20));
    assert!(plain.invalidate_if(&Counted(3), |_| true));
    assert_eq!(
        clones(),
        before,
        "no listener, no capacity: no key was cloned"
    );

    // With a listener: one owned key per value that left, none for a miss.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = Arc::clone(&seen);
    let listened: Cache<Counted, u32> = Cache::builder()
        .eviction_listener(move |k: &Counted, _: &u32, _| s.lock().unwrap().push(k.0))
        .build();
    listened.insert(Counted(1), 10);
    listened.insert(Counted(2), 20);
    let before = clones();
    assert_eq!(listened.peek(&Counted(1)), Some(10));
    assert!(!listened.invalidate(&Counted(9)));
    assert!(!listened.invalidate_if(&Counted(1), |_| false));
    assert_eq!(clones(), before, "reads and misses clone nothing");
    assert!(listened.invalidate(&Counted(1)));
    assert_eq!(listened.remove(&Counted(2)), Some(20));
    // The listener is told the key the entry kept, moved out of the table with its value:
    // no owned key is made. (On the map, which handed back only the value, each removal
    // made one with `to_owned`: `before + 2`.)
    assert_eq!(clones(), before);
    assert_eq!(*seen.lock().unwrap(), [1, 2]);
}
