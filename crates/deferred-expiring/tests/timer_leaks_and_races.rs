//! Regressions of review 13 (expiring layer): timers left in the wheel for values that are
//! gone (stored copies made by `get_or_insert_with` / `get_with_blocking`, and loads
//! invalidated in flight), `get_with_blocking` returning a value expired before the call
//! began, and `get_or_insert_with` counting one call as a hit and a miss.
//! Manual clock; ordering by channels and the cache's own hooks (listener, weigher); a
//! timeout only bounds a hang, it orders nothing.

#![allow(clippy::std_instead_of_core)]

mod support;

use std::{
    convert::Infallible,
    sync::{
        mpsc::{channel, Receiver, Sender},
        Mutex,
    },
    thread,
};

use deferred_expiring::{Clock, ExpiringCache, ManualClock, RemovalCause};
use support::{secs, ttl_cache, Cache};

// ---------------------------------------------------------------------------------------
// The entry the inner cache stores for get_or_insert_with / get_with_blocking is a *clone*
// of the entry the expiring layer built. `Entry::clone` once set `timer: NEVER`, so the
// removal listener cancelled nothing and the wheel kept the timer (and a clone of the key)
// of a value that was gone, until its deadline. The clone now keeps the timer handle.
// ---------------------------------------------------------------------------------------

/// Control: `insert` then `invalidate` leaves no timer.
#[test]
fn control_insert_then_invalidate_leaves_no_timer() {
    let (_clock, cache) = ttl_cache::<Infallible>(86_400);
    cache.insert(1, 10);
    assert_eq!(cache.timers(), 1);
    assert!(cache.invalidate(&1));
    assert_eq!(cache.timers(), 0);
}

/// `get_or_insert_with` then `invalidate`: no timer stays in the wheel.
#[test]
fn get_or_insert_with_then_invalidate_leaves_no_timer() {
    let (_clock, cache) = ttl_cache::<Infallible>(86_400);
    assert_eq!(cache.get_or_insert_with(1, || 10), 10);
    assert_eq!(cache.timers(), 1);
    assert!(cache.invalidate(&1));
    assert_eq!(
        cache.timers(),
        0,
        "the invalidated value's timer was not cancelled"
    );
}

/// `get_with_blocking` then `invalidate`: no timer stays in the wheel.
#[test]
fn get_with_blocking_then_invalidate_leaves_no_timer() {
    let (_clock, cache) = ttl_cache::<Infallible>(86_400);
    assert_eq!(cache.get_with_blocking(1, || Ok(10)), Ok(10));
    assert_eq!(cache.timers(), 1);
    assert!(cache.invalidate(&1));
    assert_eq!(
        cache.timers(),
        0,
        "the invalidated value's timer was not cancelled"
    );
}

/// The leak grew with churn, not with what is stored: one stored value, a thousand timers
/// (each holding a key), until the deadlines a day from now. Replacement by `insert` must
/// cancel the old timer too.
#[test]
fn churn_through_get_or_insert_with_leaves_no_timer() {
    let (_clock, cache) = ttl_cache::<Infallible>(86_400);
    for round in 0..1000 {
        cache.get_or_insert_with(1, || round);
        cache.insert(1, round); // replaces: the old timer should be cancelled
        cache.invalidate(&1);
    }
    assert!(cache.is_empty());
    assert_eq!(
        cache.timers(),
        0,
        "timers of values long gone are still in the wheel"
    );
}

// ---------------------------------------------------------------------------------------
// get_with_blocking returned a value whose deadline had passed before the call began (the
// race, made deterministic): a value stored by another thread, whose clock reading lags
// this call's, between this call's read and the inner cache's. `get_with` catches that case
// (`finish` re-checks a `Source::Hit`); the blocking call now does too.
// The window is opened with the cache's own hooks: the writer is held in the weigher
// (after its entry got its deadline, before it is stored), and the reader's read of an
// expired entry removes it and tells the listener, on the reader's thread, between the
// read and the inner lookup.
// ---------------------------------------------------------------------------------------

struct Window {
    clock: ManualClock,
    cache: Cache,
    /// The writer (inserting 99 at t=0) is held in the weigher.
    writer: thread::JoinHandle<()>,
}

/// Sets up: key 1 holds `1` (deadline t=10s); a writer thread has read the clock at t=0
/// for `insert(1, 99)` (deadline t=10s) and waits in the weigher; the clock is at t=10s.
/// The first listener call for the value `1` as `Expired` (on the reader's thread) lets
/// the writer store its value and waits until it has.
fn window() -> Window {
    let clock = ManualClock::new();
    let (reached_tx, reached_rx) = channel::<()>();
    let (go_tx, go_rx) = channel::<()>();
    let (stored_tx, stored_rx) = channel::<()>();
    let reached_tx = Mutex::new(Some(reached_tx));
    let go_rx = Mutex::new(Some(go_rx));
    let go_tx = Mutex::new(Some(go_tx));
    let stored_rx: Mutex<Option<Receiver<()>>> = Mutex::new(Some(stored_rx));
    let cache: Cache = ExpiringCache::builder()
        .time_to_live(secs(10))
        .max_capacity(1_000)
        .weigher(move |_k: &u32, v: &u32| {
            if *v == 99 {
                if let Some(tx) = reached_tx.lock().unwrap().take() {
                    tx.send(()).unwrap();
                    let rx = go_rx.lock().unwrap().take().unwrap();
                    rx.recv_timeout(secs(30)).expect("writer never released");
                }
            }
            1
        })
        .eviction_listener(move |_k: &u32, v: &u32, cause| {
            if *v == 1 && cause == RemovalCause::Expired {
                if let Some(go) = go_tx.lock().unwrap().take() {
                    go.send(()).unwrap();
                    let rx = stored_rx.lock().unwrap().take().unwrap();
                    rx.recv_timeout(secs(30)).expect("writer never stored");
                }
            }
        })
        .clock(clock.clone())
        .build();
    cache.insert(1, 1); // t=0, deadline t=10s
    let writer = {
        let cache = cache.clone();
        let stored_tx: Sender<()> = stored_tx;
        thread::spawn(move || {
            cache.insert(1, 99); // clock read at t=0: deadline t=10s
            stored_tx.send(()).unwrap();
        })
    };
    reached_rx
        .recv_timeout(secs(30))
        .expect("writer never reached the weigher");
    // t=10s exactly: both deadlines have come (a read at the deadline finds no value), and
    // their tick (the first at or after 10s) has not begun, so no maintenance pass runs
    // first: the reader's own read finds `1` expired.
    clock.advance(secs(10));
    Window {
        clock,
        cache,
        writer,
    }
}

/// At t=10s the value 99 (deadline t=10s) is expired: `get_with_blocking`, which began at
/// t=10s, must not return it, and loads instead.
#[test]
fn get_with_blocking_loads_over_a_value_expired_before_the_call_began() {
    let Window {
        clock,
        cache,
        writer,
    } = window();
    let got = cache.get_with_blocking(1, || Ok(7));
    writer.join().unwrap();
    assert_eq!(
        clock.now(),
        secs(10),
        "the clock did not move during the call"
    );
    // Oracle corrected: `None` held only while the expired 99 was returned; once it is expired and 7 loaded, 7 is stored.
    assert_eq!(
        cache.peek(&1),
        Some(7),
        "the expired value was not replaced by the load"
    );
    assert_eq!(
        got,
        Ok(7),
        "get_with_blocking (started at t=10s) returned a value whose deadline was t=10s"
    );
}

/// Control: `get_with` in the very same window re-checks and loads.
#[test]
fn control_get_with_in_the_same_window_loads() {
    let Window { cache, writer, .. } = window();
    let got = futures::executor::block_on(cache.get_with(1, || async { Ok(7) }));
    writer.join().unwrap();
    assert_eq!(got, Ok(7));
}

/// The same window for `get_or_insert_with`: it retries (returns `make`'s value), and the
/// one call counts one miss (it once counted a hit and a miss).
#[test]
fn get_or_insert_with_counts_one_call_once() {
    let Window { cache, writer, .. } = window();
    let before = cache.stats().cache;
    let got = cache.get_or_insert_with(1, || 7);
    writer.join().unwrap();
    assert_eq!(got, 7);
    let after = cache.stats().cache;
    assert_eq!(
        (after.hits - before.hits, after.misses - before.misses),
        (0, 1),
        "one get_or_insert_with call, one miss"
    );
}

// ---------------------------------------------------------------------------------------
// A load invalidated while in flight is not stored, and the entry its completion built
// (`load_entry` / `load_optional_entry` call `new_entry`, which schedules a timer) was
// dropped without cancelling that timer; the load's callers now cancel it.
// ---------------------------------------------------------------------------------------

/// Starts a load with `start` (its loader waits for the gate), invalidates the key while
/// the load is in flight, lets the load finish and checks that its caller gets `expected`,
/// that nothing is stored and that no timer is left for the unstored value.
fn load_invalidated_in_flight<T: PartialEq + std::fmt::Debug>(
    start: impl for<'c> FnOnce(
        &'c Cache,
        futures::channel::oneshot::Receiver<()>,
    ) -> futures::future::LocalBoxFuture<'c, T>,
    expected: T,
) {
    use futures::{channel::oneshot, future::FutureExt};
    let (_clock, cache) = ttl_cache::<Infallible>(86_400);
    let (go, gate) = oneshot::channel::<()>();
    let mut get = start(&cache, gate);
    let waker = futures::task::noop_waker();
    let mut cx = std::task::Context::from_waker(&waker);
    assert!(get.poll_unpin(&mut cx).is_pending());
    cache.invalidate(&1);
    go.send(()).unwrap();
    assert_eq!(get.poll_unpin(&mut cx), std::task::Poll::Ready(expected));
    assert!(cache.is_empty(), "an invalidated load's value was stored");
    assert_eq!(
        cache.timers(),
        0,
        "the unstored value's timer is still in the wheel"
    );
}

/// `optionally_get_with` whose load is invalidated in flight: its value goes to its
/// caller, is not stored, and its timer should not stay in the wheel.
#[test]
fn optional_load_invalidated_in_flight_leaves_no_timer() {
    use futures::future::FutureExt;
    load_invalidated_in_flight(
        |cache, gate| {
            cache
                .optionally_get_with(1, || async move {
                    gate.await.ok();
                    Some(5)
                })
                .boxed_local()
        },
        Ok(Some(5)),
    );
}

/// The same with `get_with` (the shared cause, older than `optionally_get_with`'s).
#[test]
fn get_with_load_invalidated_in_flight_leaves_no_timer() {
    use futures::future::FutureExt;
    load_invalidated_in_flight(
        |cache, gate| {
            cache
                .get_with(1, || async move {
                    gate.await.ok();
                    Ok(5)
                })
                .boxed_local()
        },
        Ok(5),
    );
}
