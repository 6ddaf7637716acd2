//! The expiring layer's behaviour, one test per promise (issue #5). Time comes from a
//! `ManualClock`: nothing here sleeps, and every deadline is hit exactly.

#![allow(clippy::std_instead_of_core)]

use std::{
    panic::{catch_unwind, AssertUnwindSafe},
    sync::{
        atomic::{AtomicUsize, Ordering::SeqCst},
        Arc, Mutex,
    },
    time::Duration,
};

use deferred_cache::{LoadError, RemovalCause};
use deferred_expiring::{ExpiringCache, ExpiringRef, Expiry, ManualClock, TICK};
use futures::{executor::block_on, FutureExt};

const NS: Duration = Duration::from_nanos(1);

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

// ---------------------------------------------------------------------------------------
// ExpiringRef
// ---------------------------------------------------------------------------------------

/// `timed(value, d)` expires after exactly `d` with no use: not one nanosecond before.
#[test]
fn timed_ref_expires_after_its_duration_with_no_use() {
    let clock = ManualClock::new();
    let r = ExpiringRef::timed_with_clock(1, secs(10), clock.clone());
    clock.advance(secs(10) - NS);
    assert!(!r.is_expired());
    clock.advance(NS);
    assert!(r.is_expired());
    assert_eq!(r.with(|v| *v), None);
    // Expired stays expired, even if the clock goes back.
    clock.set(Duration::ZERO);
    assert_eq!(r.with(|v| *v), None);
}

/// A use in progress holds the ref alive past its deadline; the countdown restarts when
/// the last of several concurrent uses ends, not the first.
#[test]
fn uses_in_progress_hold_the_ref_and_the_last_release_restarts_the_countdown() {
    let clock = ManualClock::new();
    let r = ExpiringRef::timed_with_clock("v", secs(10), clock.clone());
    let a = r.acquire().expect("fresh");
    clock.advance(secs(5));
    let b = r.acquire().expect("in use");
    clock.advance(secs(20)); // far past 10 s, but in use
    assert!(!r.is_expired());
    drop(a); // t = 25: b still in use
    clock.advance(secs(20));
    assert!(!r.is_expired());
    drop(b); // t = 45: the countdown starts here
    assert_eq!(r.deadline(), Some(secs(55)));
    clock.advance(secs(10) - NS);
    assert_eq!(r.with(|v| *v), Some("v")); // a use at 54.999…: restarts again
    clock.advance(secs(10) - NS);
    assert!(!r.is_expired());
    clock.advance(NS);
    assert!(r.is_expired());
}

/// `uses(value, n)`: exactly n uses succeed (fs2-es allows n − 1); the (n+1)-th is refused.
#[test]
fn uses_ref_allows_exactly_n_uses() {
    for n in [0u64, 1, 2, 5] {
        let r = ExpiringRef::uses(n, n);
        let granted = (0..n + 3).filter(|_| r.with(|_| ()).is_some()).count();
        assert_eq!(granted as u64, n, "n = {n}");
        assert!(r.is_expired());
        assert_eq!(r.uses_left(), Some(0));
    }
}

/// A use that panics still ends (fs2-es never releases a failed use, so such a ref never
/// expires): the ref expires on time afterwards, and is not poisoned.
#[test]
fn a_use_that_panics_is_released() {
    let clock = ManualClock::new();
    let r = ExpiringRef::timed_with_clock(5, secs(1), clock.clone());
    let caught = catch_unwind(AssertUnwindSafe(|| {
        r.with(|_| panic!("use failed"));
    }));
    assert!(caught.is_err());
    assert_eq!(r.deadline(), Some(secs(1)));
    clock.advance(secs(1));
    assert!(r.is_expired());
}

/// A task awaiting expiry completes at the deadline (the manual clock's tick), not before,
/// and a use in progress at the deadline pushes it to that use's end + ttl.
#[test]
fn awaiting_expiry_completes_at_the_deadline() {
    let clock = ManualClock::new();
    let r = ExpiringRef::timed_with_clock((), secs(3), clock.clone());
    let woken = Arc::new(WakeCount::default());
    let waker = futures::task::waker(Arc::clone(&woken));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut expired = Box::pin(r.expired());
    assert!(expired.as_mut().poll(&mut cx).is_pending());
    clock.advance(secs(2));
    let guard = r.acquire().unwrap();
    clock.advance(secs(1)); // the old deadline: woken, but a use is in progress
    assert!(woken.0.load(SeqCst) >= 1);
    assert!(expired.as_mut().poll(&mut cx).is_pending());
    drop(guard); // t = 3: new deadline 6
    assert!(expired.as_mut().poll(&mut cx).is_pending());
    let before = woken.0.load(SeqCst);
    clock.advance(secs(3) - NS);
    assert_eq!(woken.0.load(SeqCst), before, "woken before the deadline");
    clock.advance(NS);
    assert!(woken.0.load(SeqCst) > before, "not woken at the deadline");
    assert!(expired.as_mut().poll(&mut cx).is_ready());
}

/// `uses`: `expired()` completes once the n-th use has ended.
#[test]
fn awaiting_expiry_of_a_uses_ref_waits_for_the_last_use() {
    let r = ExpiringRef::uses_with_clock(1, 1, ManualClock::new());
    let guard = r.acquire().unwrap();
    assert!(r.is_expired());
    let mut expired = Box::pin(r.expired());
    assert!(expired.as_mut().now_or_never().is_none());
    drop(guard);
    assert!(expired.now_or_never().is_some());
}

#[derive(Default)]
struct WakeCount(AtomicUsize);

impl futures::task::ArcWake for WakeCount {
    fn wake_by_ref(arc_self: &Arc<Self>) {
        arc_self.0.fetch_add(1, SeqCst);
    }
}

use std::future::Future;

// ---------------------------------------------------------------------------------------
// ExpiringCache
// ---------------------------------------------------------------------------------------

type Log = Arc<Mutex<Vec<(u32, u32, RemovalCause)>>>;

fn logged(
    builder: deferred_expiring::ExpiringBuilder<
        u32,
        u32,
        String,
        std::collections::hash_map::RandomState,
        ManualClock,
    >,
) -> (
    ExpiringCache<u32, u32, String, std::collections::hash_map::RandomState, ManualClock>,
    Log,
) {
    let log: Log = Arc::default();
    let sink = Arc::clone(&log);
    let cache = builder
        .eviction_listener(move |k: &u32, v: &u32, cause| {
            sink.lock().unwrap().push((*k, *v, cause))
        })
        .build();
    (cache, log)
}

fn with_clock() -> (
    ManualClock,
    deferred_expiring::ExpiringBuilder<
        u32,
        u32,
        String,
        std::collections::hash_map::RandomState,
        ManualClock,
    >,
) {
    let clock = ManualClock::new();
    let builder = ExpiringCache::builder().clock(clock.clone());
    (clock, builder)
}

/// TTL: visible until one nanosecond before the deadline, invisible on the first read at
/// it; reclaimed and told to the listener by the first operation one tick later.
#[test]
fn ttl_entry_is_invisible_at_its_deadline_and_reclaimed_within_a_tick() {
    let (clock, builder) = with_clock();
    let (cache, log) = logged(builder.time_to_live(secs(5)));
    cache.insert(1, 10);
    clock.advance(secs(5) - NS);
    assert_eq!(cache.get_if_present(&1), Some(10));
    assert_eq!(cache.peek(&1), Some(10));
    clock.advance(NS);
    assert_eq!(cache.peek(&1), None);
    assert_eq!(cache.len(), 1, "peek does not reclaim");
    clock.advance(TICK);
    cache.insert(2, 20); // any operation
    assert_eq!(*log.lock().unwrap(), [(1, 10, RemovalCause::Expired)]);
    assert_eq!(cache.len(), 1);
    assert_eq!(cache.stats().cache.expired, 1);
}

/// `len()` counts what is stored, expired entries not yet reclaimed included (issue #11,
/// point 14: a time-to-live of zero is invisible at once, but counted until reclaimed);
/// `run_maintenance()` reclaims every entry whose deadline has passed, also one that passed
/// within the current wheel tick, so a `len()` right after it counts live entries only. An
/// entry not yet at its deadline stays, and is still reclaimed on time afterwards.
#[test]
fn run_maintenance_reclaims_every_expired_entry_so_len_counts_live_ones() {
    let (clock, builder) = with_clock();
    let (cache, log) = logged(builder.time_to_live(Duration::ZERO));
    clock.advance(secs(1)); // 1 s is not on a wheel tick's boundary
    cache.insert(1, 10);
    assert_eq!(cache.peek(&1), None, "invisible at once");
    assert_eq!(cache.len(), 1, "counted until reclaimed");
    assert_eq!(cache.run_maintenance(), 1);
    assert_eq!(cache.len(), 0);
    assert_eq!(*log.lock().unwrap(), [(1, 10, RemovalCause::Expired)]);

    // An entry whose deadline is later in the same tick: not reclaimed early, then reclaimed
    // by an ordinary operation one tick after its deadline, as any other.
    let (clock, builder) = with_clock();
    let (cache, log) = logged(builder.time_to_live(secs(5)));
    cache.insert(1, 10);
    cache.insert(2, 20);
    clock.advance(secs(5) - NS);
    assert_eq!(cache.run_maintenance(), 0, "nothing is at its deadline yet");
    assert_eq!((cache.len(), cache.peek(&1)), (2, Some(10)));
    clock.advance(NS);
    assert_eq!(cache.peek(&1), None);
    assert_eq!(cache.get_if_present(&2), None); // a read that finds it expired removes it
    assert_eq!(cache.len(), 1);
    clock.advance(TICK);
    cache.insert(3, 30); // any operation
    assert_eq!(cache.len(), 1);
    assert_eq!(
        *log.lock().unwrap(),
        [
            (2, 20, RemovalCause::Expired),
            (1, 10, RemovalCause::Expired)
        ]
    );
}

/// TTI: a read renews, and the next reader sees the renewal at once; TTL caps it.
#[test]
fn tti_renewal_is_seen_by_the_next_reader_and_capped_by_ttl() {
    let (clock, builder) = with_clock();
    let cache = builder
        .time_to_idle(secs(10))
        .time_to_live(secs(25))
        .build();
    cache.insert(1, 1);
    for _ in 0..2 {
        clock.advance(secs(10) - NS);
        assert_eq!(cache.get_if_present(&1), Some(1));
    }
    // t = 20 s − 2 ns; last read renewed to 30 s − 2 ns, but the TTL caps it at 25 s.
    clock.advance(secs(5) + 2 * NS - NS);
    assert_eq!(cache.peek(&1), Some(1));
    clock.advance(NS);
    assert_eq!(cache.get_if_present(&1), None);
}

/// An expiry removes the entry it was scheduled for, never the one that replaced it.
#[test]
fn expiry_never_removes_a_successor() {
    let (clock, builder) = with_clock();
    let (cache, log) = logged(builder.time_to_live(secs(5)));
    cache.insert(1, 10);
    clock.advance(secs(4));
    cache.insert(1, 11); // deadline 9 s
    clock.advance(secs(1) + TICK); // past the first deadline's tick
    assert_eq!(cache.run_maintenance(), 0);
    assert_eq!(cache.get_if_present(&1), Some(11));
    assert_eq!(*log.lock().unwrap(), [(1, 10, RemovalCause::Replaced)]);
    clock.advance(secs(4));
    assert_eq!(cache.run_maintenance(), 1);
    assert_eq!(
        log.lock().unwrap().last(),
        Some(&(1, 11, RemovalCause::Expired))
    );
}

/// Per-entry expiry: the policy sets each entry's deadline on create, read and update.
#[test]
fn per_entry_expiry_on_create_read_and_update() {
    struct Policy;
    impl Expiry<u32, u32> for Policy {
        fn expire_after_create(&self, _: &u32, v: &u32, _: Duration) -> Option<Duration> {
            (*v != 0).then(|| secs(u64::from(*v)))
        }
        fn expire_after_read(
            &self,
            k: &u32,
            _: &u32,
            _: Duration,
            left: Option<Duration>,
        ) -> Option<Duration> {
            if *k == 7 {
                Some(secs(100))
            } else {
                left
            }
        }
        fn expire_after_update(
            &self,
            _: &u32,
            _: &u32,
            _: Duration,
            left: Option<Duration>,
        ) -> Option<Duration> {
            left.map(|d| d + secs(1))
        }
    }
    let (clock, builder) = with_clock();
    let cache = builder.expire_after(Policy).build();
    cache.insert(1, 3); // 3 s
    cache.insert(2, 0); // never
    cache.insert(7, 1); // 1 s, but each read sets 100 s
    clock.advance(secs(1) - NS);
    assert_eq!(cache.get_if_present(&7), Some(1));
    cache.insert(1, 50); // update: what was left (2 s + 1 ns) + 1 s, so 4 s
    clock.advance(secs(3));
    assert_eq!(cache.peek(&1), Some(50));
    clock.advance(NS);
    assert_eq!(
        cache.get_if_present(&1),
        None,
        "the updated deadline, 4 s, passed"
    );
    assert_eq!(cache.get_if_present(&7), Some(1));
    clock.advance(secs(10_000));
    assert_eq!(cache.get_if_present(&2), Some(0));
    assert_eq!(cache.get_if_present(&7), None);
}

/// Negative caching: an error is kept for its TTL, every read gets the same `Arc`, those
/// reads are their own stat, and after the TTL the next read loads again.
#[test]
fn negative_caching_keeps_an_error_for_its_ttl() {
    let (clock, builder) = with_clock();
    let cache = builder
        .cache_errors_for(secs(2))
        .time_to_live(secs(60))
        .build();
    let runs = AtomicUsize::new(0);
    let load = |ok: bool| {
        runs.fetch_add(1, SeqCst);
        async move {
            if ok {
                Ok(5)
            } else {
                Err("down".to_string())
            }
        }
    };
    let first = block_on(cache.get_with(1, || load(false)));
    let Err(LoadError::Failed(e1)) = first else {
        panic!("{first:?}")
    };
    clock.advance(secs(2) - NS);
    let again = block_on(cache.get_with(1, || load(true)));
    let Err(LoadError::Failed(e2)) = again else {
        panic!("{again:?}")
    };
    assert!(Arc::ptr_eq(&e1, &e2));
    assert_eq!(cache.get_if_present(&1), None);
    assert_eq!(runs.load(SeqCst), 1);
    let stats = cache.stats();
    assert_eq!(
        (
            stats.negative_hits,
            stats.cache.loads_failed,
            stats.cache.loads_ok
        ),
        (1, 1, 0)
    );
    clock.advance(NS);
    assert_eq!(block_on(cache.get_with(1, || load(true))), Ok(5));
    assert_eq!(runs.load(SeqCst), 2);
    assert_eq!(cache.stats().cache.loads_ok, 1);
}

/// Without negative caching, errors are not kept (as in deferred-cache).
#[test]
fn errors_are_not_kept_without_negative_caching() {
    let (_clock, builder) = with_clock();
    let cache = builder.time_to_live(secs(60)).build();
    let err = block_on(cache.get_with(1, || async { Err("x".to_string()) }));
    assert!(matches!(err, Err(LoadError::Failed(_))));
    assert!(cache.is_empty());
    assert_eq!(block_on(cache.get_with(1, || async { Ok(1) })), Ok(1));
}

/// A gate that a refresh's loader waits on.
fn gated(
    value: Result<u32, String>,
) -> (
    futures::channel::oneshot::Sender<()>,
    impl Future<Output = Result<u32, String>>,
) {
    let (open, gate) = futures::channel::oneshot::channel::<()>();
    (open, async move {
        let _ = gate.await;
        value
    })
}

/// Refresh-ahead: after the interval a read returns the current value at once and starts
/// exactly one reload, however many reads come while it runs; its value then replaces the
/// old one. Driven by the cache's operations (no spawner).
#[test]
fn refresh_ahead_serves_the_old_value_and_runs_one_reload() {
    let (clock, builder) = with_clock();
    let (cache, log) = logged(builder.refresh_after(secs(10)).time_to_live(secs(100)));
    cache.insert(1, 1);
    clock.advance(secs(10));
    let (open, reload) = gated(Ok(2));
    let started = AtomicUsize::new(0);
    let mut reload = Some(reload);
    for _ in 0..5 {
        let got = block_on(cache.get_with(1, || {
            started.fetch_add(1, SeqCst);
            reload.take().expect("one reload only")
        }));
        assert_eq!(got, Ok(1), "the old value, at once");
    }
    assert_eq!(started.load(SeqCst), 1);
    assert_eq!(cache.stats().refreshes_started, 1);
    open.send(()).unwrap();
    // The next operation drives the reload to its end before it reads.
    assert_eq!(cache.get_if_present(&1), Some(2));
    let stats = cache.stats();
    assert_eq!((stats.refreshes_ok, stats.refreshes_failed), (1, 0));
    assert_eq!(*log.lock().unwrap(), [(1, 1, RemovalCause::Replaced)]);
    // The refreshed value has a fresh TTL and refresh time.
    clock.advance(secs(10) - NS);
    assert_eq!(
        block_on(cache.get_with(1, || async { panic!("not due") })),
        Ok(2)
    );
}

/// A failed refresh keeps the old value and is counted; the next may start one interval
/// later. A panicking refresh is a failure too, and does not reach the reader.
#[test]
fn a_failed_refresh_keeps_the_old_value() {
    let (clock, builder) = with_clock();
    let cache = builder.refresh_after(secs(10)).build();
    cache.insert(1, 1);
    clock.advance(secs(10));
    assert_eq!(
        block_on(cache.get_with(1, || async { Err("down".to_string()) })),
        Ok(1)
    );
    assert_eq!(cache.get_if_present(&1), Some(1));
    assert_eq!(cache.stats().refreshes_failed, 1);
    // Not retried before one more interval.
    assert_eq!(
        block_on(cache.get_with(1, || async { panic!("too soon") })),
        Ok(1)
    );
    clock.advance(secs(10));
    assert_eq!(
        block_on(cache.get_with(1, || async { panic!("loader panicked") })),
        Ok(1)
    );
    let stats = cache.stats();
    assert_eq!(
        (
            stats.refreshes_started,
            stats.refreshes_failed,
            stats.refreshes_ok
        ),
        (2, 2, 0)
    );
    assert_eq!(cache.get_if_present(&1), Some(1));
}

/// A write during a refresh wins over the refresh's result; so does an invalidation.
#[test]
fn a_write_during_a_refresh_wins() {
    let (clock, builder) = with_clock();
    let cache = builder.refresh_after(secs(10)).build();
    for (k, write) in [(1u32, true), (2, false)] {
        cache.insert(k, 1);
        clock.advance(secs(10));
        let (open, reload) = gated(Ok(2));
        assert_eq!(block_on(cache.get_with(k, || reload)), Ok(1));
        if write {
            cache.insert(k, 3);
        } else {
            cache.invalidate(&k);
        }
        open.send(()).unwrap();
        cache.run_maintenance(); // drives the reload to its end
        assert_eq!(cache.get_if_present(&k), write.then_some(3));
    }
    let stats = cache.stats();
    assert_eq!((stats.refreshes_discarded, stats.refreshes_ok), (2, 0));
}

/// With a spawner, the reload runs there.
#[test]
fn refresh_runs_on_the_given_spawner() {
    let spawned = Arc::new(Mutex::new(Vec::new()));
    let tasks = Arc::clone(&spawned);
    let clock = ManualClock::new();
    let cache: ExpiringCache<u32, u32, String, _, _> = ExpiringCache::builder()
        .clock(clock.clone())
        .refresh_after(secs(1))
        .spawner(move |task| tasks.lock().unwrap().push(task))
        .build();
    cache.insert(1, 1);
    clock.advance(secs(1));
    assert_eq!(block_on(cache.get_with(1, || async { Ok(2) })), Ok(1));
    assert_eq!(
        cache.get_if_present(&1),
        Some(1),
        "not run until the spawner runs it"
    );
    let task = spawned.lock().unwrap().pop().expect("spawned");
    block_on(task);
    assert_eq!(cache.get_if_present(&1), Some(2));
}

/// Reclamation costs O(expired): with 100 000 entries far from their deadlines, reclaiming
/// 100 expired ones looks at no more than twice that many timers.
#[test]
fn reclamation_touches_only_what_expired() {
    struct ByValue;
    impl Expiry<u32, u32> for ByValue {
        fn expire_after_create(&self, _: &u32, v: &u32, _: Duration) -> Option<Duration> {
            Some(secs(u64::from(*v)))
        }
    }
    let clock = ManualClock::new();
    let cache: ExpiringCache<u32, u32, String, _, _> = ExpiringCache::builder()
        .clock(clock.clone())
        .expire_after(ByValue)
        .build();
    for k in 0..100_000u32 {
        cache.insert(k, if k % 1000 == 0 { 1 } else { 3600 });
    }
    clock.advance(secs(1) + TICK);
    let before = cache.timers_touched();
    assert_eq!(cache.run_maintenance(), 100);
    let touched = cache.timers_touched() - before;
    assert!(touched <= 200, "touched {touched} timers to reclaim 100");
    assert_eq!(cache.len(), 99_900);
}

/// A clock that goes backwards: nothing panics, nothing expires early, and expiry resumes
/// when the clock passes the deadlines again.
#[test]
fn a_clock_going_backwards_is_tolerated() {
    let (clock, builder) = with_clock();
    let cache = builder.time_to_live(secs(10)).build();
    clock.set(secs(100));
    cache.insert(1, 1); // deadline 110 s
    clock.set(secs(50));
    cache.insert(2, 2); // deadline 60 s
    assert_eq!(cache.run_maintenance(), 0);
    assert_eq!(
        (cache.get_if_present(&1), cache.get_if_present(&2)),
        (Some(1), Some(2))
    );
    clock.set(secs(60) + TICK);
    assert_eq!(cache.run_maintenance(), 1);
    assert_eq!(cache.get_if_present(&1), Some(1));
    clock.set(secs(110) + TICK);
    assert_eq!(cache.run_maintenance(), 1);
    assert!(cache.is_empty());
}

/// Never means never (issue #11, point 13): a clock moved as far as it goes (`ManualClock`
/// saturates at `u64::MAX` nanoseconds) removes no entry that does not expire: no expiry
/// set, an `Expiry` that says `None`, a time-to-live too long to count. Entries with a
/// deadline are gone, and reclaimed.
#[test]
fn entries_that_never_expire_survive_a_saturated_clock() {
    struct EvenNever;
    impl Expiry<u32, u32> for EvenNever {
        fn expire_after_create(&self, k: &u32, _: &u32, _: Duration) -> Option<Duration> {
            (k % 2 == 1).then(|| secs(1))
        }
    }
    type Builder = deferred_expiring::ExpiringBuilder<
        u32,
        u32,
        String,
        std::collections::hash_map::RandomState,
        ManualClock,
    >;
    /// A configuration's name, its settings, and the keys that never expire.
    type Config = (&'static str, fn(Builder) -> Builder, &'static [u32]);
    let configs: [Config; 3] = [
        ("no expiry", |b| b, &[1, 2]),
        (
            "Expiry: None for even keys",
            |b| b.expire_after(EvenNever),
            &[2],
        ),
        (
            "time_to_live(Duration::MAX)",
            |b| b.time_to_live(Duration::MAX),
            &[1, 2],
        ),
    ];
    for (name, configure, never) in configs {
        let (clock, builder) = with_clock();
        let cache = configure(builder).build();
        cache.insert(1, 10);
        cache.insert(2, 20);
        for jump in [
            |c: &ManualClock| c.advance(Duration::MAX),
            |c: &ManualClock| c.set(Duration::MAX),
        ] {
            jump(&clock);
            for k in [1u32, 2] {
                let want = never.contains(&k).then_some(k * 10);
                assert_eq!(cache.peek(&k), want, "{name}: peek {k}");
                assert_eq!(cache.get_if_present(&k), want, "{name}: get_if_present {k}");
                if let Some(v) = want {
                    let got = cache.get_with(k, || async { Ok(0) }).now_or_never();
                    assert_eq!(got, Some(Ok(v)), "{name}: get_with {k} reloaded");
                }
            }
            assert_eq!(cache.run_maintenance(), 0, "{name}");
            assert_eq!(cache.len(), never.len(), "{name}: len");
        }
        assert_eq!(cache.stats().cache.loads_ok, 0, "{name}: loads");
    }
}

/// At a saturated clock, refresh-ahead starts one reload at a time, as at any other time:
/// the mark of a refresh in progress is not a time the clock can reach.
#[test]
fn a_saturated_clock_starts_one_refresh_at_a_time() {
    let (clock, builder) = with_clock();
    let cache = builder.refresh_after(secs(1)).build();
    cache.insert(1, 10);
    clock.advance(Duration::MAX);
    for _ in 0..3 {
        // A reload that never finishes: the refresh stays in progress.
        let got = cache
            .get_with(1, futures::future::pending::<Result<u32, String>>)
            .now_or_never();
        assert_eq!(got, Some(Ok(10)));
    }
    assert_eq!(cache.stats().refreshes_started, 1);
}

type Reload = Result<u32, LoadError<String>>;

/// Starts `n` callers of one expired key through `spawn`, waits until every one of them has
/// missed, opens the loader's gate, and checks: one load ran (counted inside the load, which
/// only the polled future reaches), every caller got its value, the expired entry was
/// removed once.
async fn expired_key_stampede<H, J>(
    n: u64,
    spawn: impl Fn(futures::future::BoxFuture<'static, Reload>) -> H,
    join: impl Fn(H) -> J,
    yield_now: impl Fn() -> futures::future::BoxFuture<'static, ()>,
) where
    J: Future<Output = Reload>,
{
    let clock = ManualClock::new();
    let cache: Arc<ExpiringCache<u32, u32, String, _, _>> = Arc::new(
        ExpiringCache::builder()
            .clock(clock.clone())
            .time_to_live(secs(1))
            .build(),
    );
    cache.insert(1, 0);
    clock.advance(secs(1));
    let runs = Arc::new(AtomicUsize::new(0));
    let (open, gate) = futures::channel::oneshot::channel::<()>();
    let gate = gate.shared();
    let handles: Vec<H> = (0..n)
        .map(|_| {
            let (cache, runs, gate) = (Arc::clone(&cache), Arc::clone(&runs), gate.clone());
            spawn(
                async move {
                    let load = async move {
                        runs.fetch_add(1, SeqCst);
                        let _ = gate.await;
                        Ok(7)
                    };
                    cache.get_with(1, move || load).await
                }
                .boxed(),
            )
        })
        .collect();
    while cache.stats().cache.misses < n {
        yield_now().await;
    }
    open.send(()).unwrap();
    for handle in handles {
        assert_eq!(join(handle).await, Ok(7));
    }
    assert_eq!(runs.load(SeqCst), 1, "n = {n}: more than one load ran");
    let stats = cache.stats();
    assert_eq!(
        (
            stats.cache.misses,
            stats.cache.loads_ok,
            stats.cache.expired
        ),
        (n, 1, 1),
        "{stats:?}"
    );
}

const CALLERS: [u64; 2] = [64, 1000];

/// Loads stay single flight under expiry, on every executor: tokio multi-thread and
/// current-thread, a `futures` thread pool, smol.
#[test]
fn an_expired_key_is_reloaded_once_on_tokio() {
    for rt in [
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap(),
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap(),
    ] {
        for n in CALLERS {
            rt.block_on(expired_key_stampede(
                n,
                tokio::spawn,
                |h| async move { h.await.unwrap() },
                || tokio::task::yield_now().boxed(),
            ));
        }
    }
}

#[test]
fn an_expired_key_is_reloaded_once_on_futures_executor() {
    use futures::task::SpawnExt;
    let pool = futures::executor::ThreadPool::builder()
        .pool_size(2)
        .create()
        .unwrap();
    for n in CALLERS {
        let spawner = pool.clone();
        block_on(expired_key_stampede(
            n,
            move |fut| spawner.spawn_with_handle(fut).unwrap(),
            |h| h,
            || YieldOnce(false).boxed(),
        ));
    }
}

#[test]
fn an_expired_key_is_reloaded_once_on_smol() {
    for n in CALLERS {
        smol::block_on(expired_key_stampede(
            n,
            smol::spawn,
            |task| task,
            || smol::future::yield_now().boxed(),
        ));
    }
}

/// Yields once to the executor.
struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.0 {
            return std::task::Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}

/// A reader-driven refresh that never finishes does not keep its cache alive: dropping the
/// cache drops the refresh (and what its loader holds).
#[test]
fn dropping_the_cache_drops_its_pending_refreshes() {
    let (clock, builder) = with_clock();
    let cache = builder.refresh_after(secs(1)).build();
    cache.insert(1, 1);
    clock.advance(secs(1));
    let held = Arc::new(());
    let token = Arc::clone(&held);
    let never = async move {
        let _token = token;
        futures::future::pending::<Result<u32, String>>().await
    };
    assert_eq!(block_on(cache.get_with(1, || never)), Ok(1));
    assert_eq!(Arc::strong_count(&held), 2, "the refresh is pending");
    drop(cache);
    assert_eq!(
        Arc::strong_count(&held),
        1,
        "the refresh outlived its cache"
    );
}

/// The futures are `Send` when keys, values, errors and loaders are, so they can be spawned.
#[test]
fn futures_are_send() {
    fn send<T: Send>(_: &T) {}
    let cache: ExpiringCache<u32, u32, String> = ExpiringCache::builder().build();
    let get = cache.get_with(1, || async { Ok(1) });
    send(&get);
    let loading = ExpiringCache::builder().build_with_loader(|k: &u32| {
        let k = *k;
        async move { Ok::<_, String>(k) }
    });
    let get = loading.get(1);
    send(&get);
}

/// On the real clock, awaiting expiry is woken by the clock's timer thread (no runtime).
/// The 10 s bound only stops a hang; the wake-up itself orders nothing here.
#[test]
fn awaiting_expiry_on_the_system_clock() {
    let r = Arc::new(ExpiringRef::timed((), Duration::from_millis(20)));
    let (done, finished) = std::sync::mpsc::channel();
    let waiter = Arc::clone(&r);
    std::thread::spawn(move || {
        block_on(waiter.expired());
        let _ = done.send(());
    });
    finished
        .recv_timeout(secs(10))
        .expect("expired() did not complete within 10 s of a 20 ms deadline");
    assert!(r.is_expired());
}

/// Capacity evictions reach the listener as `Size`, and cancel the evicted entry's timer
/// (so that churn through a bounded cache does not pile up timers until their deadlines).
#[test]
fn size_evictions_are_told_and_cancel_their_timers() {
    let (_clock, builder) = with_clock();
    let (cache, log) = logged(builder.max_capacity(2).time_to_live(secs(3600)));
    for k in 0..100 {
        cache.insert(k, k);
    }
    let log = log.lock().unwrap();
    assert_eq!(log.len(), 98);
    assert!(log.iter().all(|(_, _, cause)| *cause == RemovalCause::Size));
    assert_eq!(cache.len(), 2);
    assert_eq!(
        cache.timers(),
        2,
        "evicted entries left their timers behind"
    );
}

/// With a maintenance budget, one operation reclaims a bounded share of what expired at
/// once; the next operations go on with the rest, and reads never see an expired entry.
#[test]
fn a_maintenance_budget_spreads_reclamation_over_operations() {
    let (clock, builder) = with_clock();
    let (cache, log) = logged(builder.time_to_live(secs(1)).maintenance_budget(16));
    for k in 0..200 {
        cache.insert(k, k);
    }
    clock.advance(secs(1) + TICK);
    let mut ops = 0;
    while !cache.is_empty() {
        let before = cache.len();
        assert_eq!(cache.get_if_present(&1_000), None); // an operation
        ops += 1;
        assert!(
            before - cache.len() <= 16,
            "one operation reclaimed {}",
            before - cache.len()
        );
        assert!(
            ops < 1_000,
            "reclamation stalled at {} entries",
            cache.len()
        );
    }
    assert!(ops >= 200 / 16, "{ops} operations");
    assert_eq!(log.lock().unwrap().len(), 200);
    assert_eq!(cache.stats().cache.expired, 200);
}

/// Capacity belongs to the cache, not to one of its policy shards (issue #11, point 9): a
/// value heavier than a shard's share (4096 is split into shards of 1024 at most) but
/// lighter than the capacity is kept, and evicts nothing from a cache with room for it.
#[test]
fn a_value_heavier_than_a_shards_share_but_lighter_than_the_capacity_is_kept() {
    let (_clock, builder) = with_clock();
    let (cache, log) = logged(
        builder
            .max_capacity(4096)
            .weigher(|_, v: &u32| *v)
            .time_to_live(secs(3600)),
    );
    cache.insert(1, 1000);
    cache.insert(2, 2049);
    assert_eq!(cache.peek(&1), Some(1000));
    assert_eq!(cache.peek(&2), Some(2049));
    assert!(log.lock().unwrap().is_empty(), "{:?}", log.lock().unwrap());
    assert_eq!(cache.stats().cache.evicted, 0);
}
