//! Borrowed keys (issue #12): the reads and removals of `ExpiringCache` /
//! `ExpiringLoadingCache` take any borrowed form of the key (`&str` for `String`), with
//! expiry applied as for the owned key; the key is made owned only where something takes a
//! `K` (the listener, an `Expiry` policy, a refresh's loader, the timer wheel). Time comes
//! from a `ManualClock`; nothing sleeps.

#![forbid(unsafe_code)]
#![allow(clippy::std_instead_of_core)]

use std::{
    cell::Cell as StdCell,
    collections::hash_map::RandomState,
    convert::Infallible,
    sync::{Arc, Mutex},
    time::Duration,
};

use deferred_expiring::{
    ExpiringBuilder, ExpiringCache, ExpiringLoadingCache, Expiry, ManualClock, RemovalCause,
};
use futures::executor::block_on;

type Names = ExpiringCache<String, u32, Infallible, RandomState, ManualClock>;
type Told = Arc<Mutex<Vec<(String, u32, RemovalCause)>>>;

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn builder() -> (
    ManualClock,
    ExpiringBuilder<String, u32, Infallible, RandomState, ManualClock>,
) {
    let clock = ManualClock::new();
    (clock.clone(), ExpiringCache::builder().clock(clock))
}

fn listened(
    b: ExpiringBuilder<String, u32, Infallible, RandomState, ManualClock>,
) -> (Names, Told) {
    let told = Told::default();
    let t = Arc::clone(&told);
    let cache = b
        .eviction_listener(move |k: &String, v: &u32, cause| {
            t.lock().unwrap().push((k.clone(), *v, cause));
        })
        .build();
    (cache, told)
}

#[test]
fn reads_by_str_see_a_string_keys_value_until_its_deadline() {
    let (clock, b) = builder();
    let cache = b.time_to_live(secs(10)).max_capacity(100).build();
    cache.insert("ada".to_string(), 36);
    let ada: &str = "ada";

    assert_eq!(cache.get_if_present(ada), Some(36));
    assert_eq!(cache.get_if_present("bob"), None);
    assert_eq!(cache.peek(ada), Some(36));
    assert_eq!(cache.peek_with(ada, |v| v + 1), Some(37));
    assert!(cache.contains_key(ada));
    assert!(!cache.contains_key("bob"));
    let stats = cache.stats().cache;
    assert_eq!(
        (stats.hits, stats.misses),
        (1, 1),
        "only get_if_present counts"
    );

    clock.advance(secs(10));
    assert_eq!(cache.peek(ada), None);
    assert_eq!(cache.peek_with(ada, |v| v + 1), None);
    assert!(!cache.contains_key(ada));
    assert_eq!(cache.len(), 1, "peeks reclaim nothing");
    assert_eq!(cache.get_if_present(ada), None);
    assert_eq!(cache.len(), 0, "a read that finds it expired reclaims it");
    assert_eq!(cache.stats().cache.expired, 1);
    assert_eq!(cache.weighted_size(), Some(0));
}

#[test]
fn a_read_by_str_renews_time_to_idle() {
    let (clock, b) = builder();
    let cache = b.time_to_idle(secs(10)).build();
    cache.insert("ada".to_string(), 36);
    for _ in 0..3 {
        clock.advance(secs(9));
        assert_eq!(cache.get_if_present("ada"), Some(36));
    }
    clock.advance(secs(9));
    assert_eq!(cache.peek("ada"), Some(36), "27 s in: still alive, renewed");
    clock.advance(secs(1));
    assert_eq!(cache.get_if_present("ada"), None);
}

#[test]
fn removals_by_str_remove_and_tell_the_listener_the_owned_key() {
    let (clock, b) = builder();
    let (cache, told) = listened(b.time_to_live(secs(10)));
    for (name, age) in [("ada", 36), ("bob", 40), ("cy", 50), ("dee", 60)] {
        cache.insert(name.to_string(), age);
    }
    assert!(cache.invalidate("ada"));
    assert!(!cache.invalidate("ada"));
    assert!(!cache.invalidate_if("bob", |v| *v == 0));
    assert!(cache.invalidate_if("bob", |v| *v == 40));
    assert_eq!(cache.remove("cy"), Some(50));
    clock.advance(secs(10));
    assert!(!cache.invalidate_if("dee", |_| true), "expired: absent");
    assert!(cache.is_empty(), "and reclaimed");
    assert_eq!(
        *told.lock().unwrap(),
        [
            ("ada".to_string(), 36, RemovalCause::Explicit),
            ("bob".to_string(), 40, RemovalCause::Explicit),
            ("cy".to_string(), 50, RemovalCause::Explicit),
            ("dee".to_string(), 60, RemovalCause::Expired),
        ]
    );
    assert_eq!(cache.timers(), 0, "every timer cancelled or fired");
}

/// Reads expire an entry by its key's length: an `Expiry` policy that looks at the key,
/// which a read by `&str` has to hand over as a `String`.
struct ByKeyLength;

impl Expiry<String, u32> for ByKeyLength {
    fn expire_after_create(&self, _: &String, _: &u32, _: Duration) -> Option<Duration> {
        Some(secs(100))
    }

    fn expire_after_read(
        &self,
        key: &String,
        _: &u32,
        _: Duration,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(secs(key.len() as u64))
    }
}

#[test]
fn an_expiry_policy_gets_the_key_of_a_read_by_str_and_its_timer_reclaims_the_entry() {
    let (clock, b) = builder();
    let (cache, told) = listened(b.expire_after(ByKeyLength));
    cache.insert("ada".to_string(), 36);
    cache.insert("bobby".to_string(), 40);
    assert_eq!(cache.get_if_present("ada"), Some(36)); // now 3 s left
    assert_eq!(cache.get_if_present("bobby"), Some(40)); // now 5 s left
    clock.advance(secs(3));
    assert_eq!(cache.peek("ada"), None);
    assert_eq!(cache.peek("bobby"), Some(40));
    // Reclaimed by the sooner timers the reads scheduled, under the owned keys.
    assert_eq!(cache.run_maintenance(), 1);
    clock.advance(secs(2));
    assert_eq!(cache.run_maintenance(), 1);
    assert!(cache.is_empty());
    assert_eq!(
        *told.lock().unwrap(),
        [
            ("ada".to_string(), 36, RemovalCause::Expired),
            ("bobby".to_string(), 40, RemovalCause::Expired),
        ]
    );
}

#[test]
fn a_read_by_str_starts_a_refresh_with_the_owned_key() {
    let clock = ManualClock::new();
    let asked = Arc::new(Mutex::new(Vec::new()));
    let a = Arc::clone(&asked);
    let cache: ExpiringLoadingCache<String, usize, Infallible, RandomState, ManualClock> =
        ExpiringCache::builder()
            .clock(clock.clone())
            .refresh_after(secs(10))
            .time_to_live(secs(100))
            .build_with_loader(move |k: &String| {
                a.lock().unwrap().push(k.clone());
                let n = k.len() * 10;
                async move { Ok(n) }
            });
    cache.insert("four".to_string(), 4);
    clock.advance(secs(10));
    // The hit returns the old value and starts the refresh (polled here: no spawner).
    assert_eq!(cache.get_if_present("four"), Some(4));
    assert_eq!(*asked.lock().unwrap(), ["four".to_string()]);
    assert_eq!(cache.peek("four"), Some(40));
    assert_eq!(cache.stats().refreshes_ok, 1);
}

#[test]
fn a_loading_cache_reads_and_removes_by_str_through_deref() {
    let cache: ExpiringLoadingCache<String, usize> = ExpiringCache::builder()
        .time_to_live(secs(60))
        .build_with_loader(|k: &String| {
            let n = k.len();
            async move { Ok(n) }
        });
    assert_eq!(block_on(cache.get("four".to_string())), Ok(4));
    assert_eq!(cache.get_if_present("four"), Some(4));
    assert_eq!(cache.peek("four"), Some(4));
    assert_eq!(cache.peek_with("four", |n| n * 2), Some(8));
    assert!(cache.contains_key("four"));
    assert!(cache.invalidate_if("four", |n| *n == 4));
    assert!(!cache.contains_key("four"));
    assert_eq!(block_on(cache.get("four".to_string())), Ok(4));
    assert!(cache.invalidate("four"));
    assert_eq!(block_on(cache.get("four".to_string())), Ok(4));
    assert_eq!(cache.remove("four"), Some(4));
    assert!(cache.is_empty());
}

/// A key whose clones are counted, to see when a read by reference makes an owned key.
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
fn a_hit_under_ttl_or_tti_makes_no_owned_key() {
    let clock = ManualClock::new();
    let cache: ExpiringCache<Counted, u32, Infallible, RandomState, ManualClock> =
        ExpiringCache::builder()
            .clock(clock.clone())
            .time_to_live(secs(100))
            .time_to_idle(secs(30))
            .build();
    cache.insert(Counted(1), 10);
    // (No timer comes due within these 25 s: a timer that fires on a renewed entry is
    // rescheduled with a clone of its key, which is maintenance's, not the read's.)
    let before = clones();
    for _ in 0..5 {
        clock.advance(secs(5));
        assert_eq!(cache.get_if_present(&Counted(1)), Some(10));
        assert_eq!(cache.peek(&Counted(1)), Some(10));
        assert!(cache.contains_key(&Counted(1)));
    }
    assert_eq!(cache.get_if_present(&Counted(2)), None);
    assert_eq!(clones(), before, "reads cloned a key");
    // A removal hands the (inner) listener the key the entry kept, moved out of the
    // cache's table with its value: no clone. (On the map, which handed back only the
    // value, the removal made an owned key with `to_owned`: `before + 1`.)
    assert!(cache.invalidate(&Counted(1)));
    assert_eq!(clones(), before);
}
