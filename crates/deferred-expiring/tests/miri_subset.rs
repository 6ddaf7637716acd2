//! The subset of the suite that `cargo xtask miri` runs for this crate: the timer wheel's
//! linking, the clock, `ExpiringRef` across threads, and an expiring cache's write, read,
//! expiry and refresh paths (the inner crates' own suites cover their internals).

#![allow(clippy::std_instead_of_core)]

use std::{sync::Arc, time::Duration};

use deferred_expiring::{ExpiringCache, ExpiringRef, ManualClock, TimerWheel, TICK};
use futures::executor::block_on;

/// Schedules, cancels, reschedules and fires across levels and the overflow list.
#[test]
fn wheel_links_and_fires() {
    let mut wheel = TimerWheel::new();
    let handles: Vec<_> = [1u64, 70, 5_000, 300_000, 1 << 40, 3]
        .iter()
        .map(|&t| wheel.schedule(t, t))
        .collect();
    assert_eq!(wheel.cancel(handles[1]), Some(70));
    assert!(wheel.reschedule(handles[2], 2));
    let mut fired = Vec::new();
    wheel.advance(400_000, |_, t| fired.push(t));
    fired.sort();
    assert_eq!(fired, [1, 3, 5_000, 300_000]);
    wheel.advance(u64::MAX, |_, t| fired.push(t));
    assert_eq!(fired.last(), Some(&(1 << 40)));
    assert!(wheel.is_empty());
}

/// Uses from two threads, then expiry.
#[test]
fn expiring_ref_across_threads() {
    let clock = ManualClock::new();
    let r = Arc::new(ExpiringRef::timed_with_clock(
        vec![1, 2],
        Duration::from_secs(1),
        clock.clone(),
    ));
    let other = Arc::clone(&r);
    let t = std::thread::spawn(move || other.with(|v| v.len()));
    assert_eq!(r.with(|v| v.len()), Some(2));
    assert_eq!(t.join().unwrap(), Some(2));
    clock.advance(Duration::from_secs(1));
    assert!(r.is_expired());
}

/// Load, hit, expire, reclaim, refresh.
#[test]
fn cache_paths() {
    let clock = ManualClock::new();
    let cache: ExpiringCache<u32, String, String, _, _> = ExpiringCache::builder()
        .clock(clock.clone())
        .time_to_live(Duration::from_secs(10))
        .refresh_after(Duration::from_secs(5))
        .max_capacity(4)
        .build();
    assert_eq!(
        block_on(cache.get_with(1, || async { Ok("a".to_string()) })).unwrap(),
        "a"
    );
    cache.insert(2, "b".to_string());
    clock.advance(Duration::from_secs(5));
    assert_eq!(
        block_on(cache.get_with(1, || async { Ok("c".to_string()) })).unwrap(),
        "a"
    );
    assert_eq!(cache.get_if_present(&1).as_deref(), Some("c"));
    clock.advance(Duration::from_secs(5) + TICK);
    assert_eq!(cache.run_maintenance(), 1);
    assert_eq!(cache.get_if_present(&2), None);
    cache.invalidate_all();
    assert!(cache.is_empty());
}

/// The real clock under miri: coarsetime's `clock_gettime(CLOCK_MONOTONIC_COARSE)` is one of
/// the clocks miri emulates, so `SystemClock` needs no fallback there. Monotonic, and a hit
/// with time-to-idle on it reads it.
#[test]
fn system_clock_reads() {
    use deferred_expiring::{Clock, SystemClock};
    let a = SystemClock.now();
    let b = SystemClock.now();
    assert!(b >= a);
    let cache: ExpiringCache<u32, u32> = ExpiringCache::builder()
        .time_to_idle(Duration::from_secs(3600))
        .build();
    cache.insert(1, 10);
    assert_eq!(cache.get_if_present(&1), Some(10));
}
