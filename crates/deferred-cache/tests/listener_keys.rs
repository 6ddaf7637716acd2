//! Which key the eviction listener is told. The cache keeps one key per entry, the one
//! its entry was made with: an `insert` that replaces a value under an equal key keeps the
//! key already there (as `HashMap::insert` does), and every later report of that entry
//! (eviction for size, `invalidate_all`) names the kept key. This matters only for a key
//! whose `Eq` looks at part of it; the test pins it with such a key. (Before issue #13's
//! change to key-less eviction queues, a value evicted for size was reported under the key
//! of the insert that stored it: the independent review showed this test failing there,
//! with "second" where it now says "first".)

#![allow(clippy::std_instead_of_core)]

use std::{
    hash::{Hash, Hasher},
    sync::{Arc, Mutex},
};

use deferred_cache::{Cache, RemovalCause};

/// A key equal (and hashed) by `id` alone; `tag` tells two equal keys apart.
#[derive(Clone, Debug)]
struct Tagged {
    id: u64,
    tag: &'static str,
}

impl PartialEq for Tagged {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}
impl Eq for Tagged {}
impl Hash for Tagged {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.id.hash(state);
    }
}

fn key(id: u64, tag: &'static str) -> Tagged {
    Tagged { id, tag }
}

type Log = Arc<Mutex<Vec<(u64, &'static str, u32, RemovalCause)>>>;

#[test]
fn a_value_evicted_for_size_is_reported_under_the_key_the_map_kept() {
    let log: Log = Arc::default();
    let sink = Arc::clone(&log);
    let cache: Cache<Tagged, u32> = Cache::builder()
        .max_capacity(1)
        .eviction_listener(move |k: &Tagged, v: &u32, cause| {
            sink.lock().unwrap().push((k.id, k.tag, *v, cause))
        })
        .build();
    cache.insert(key(1, "first"), 10);
    cache.insert(key(1, "second"), 11);
    // Over capacity: the value at id 1 (older, in the small queue) goes for size.
    cache.insert(key(2, "other"), 20);
    let log = log.lock().unwrap().clone();
    println!("listener log: {log:?}");
    assert_eq!(log[0], (1, "second", 10, RemovalCause::Replaced));
    assert_eq!(log.len(), 2, "{log:?}");
    let (id, tag, value, cause) = log[1];
    assert_eq!((id, value, cause), (1, 11, RemovalCause::Size));
    // Before ea13498: "second" (the node's copy of the replacing insert's key). Now:
    assert_eq!(tag, "first", "the map's kept key");
}
