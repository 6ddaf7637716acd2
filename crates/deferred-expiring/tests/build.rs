//! What `ExpiringBuilder::build` refuses, and how (issue #12): one test per refused
//! configuration, its message asserted, through `try_build`, `try_build_with_loader` and the
//! panics of `build` / `build_with_loader`; the configurations it accepts on purpose (a
//! time-to-live or time-to-idle of zero, refresh-ahead without a loader or a time-to-live)
//! still build and behave as documented. Time comes from a `ManualClock`; nothing sleeps.

#![forbid(unsafe_code)]
#![allow(clippy::std_instead_of_core)]

use std::{
    collections::hash_map::RandomState,
    error::Error,
    panic::{catch_unwind, AssertUnwindSafe},
    sync::{
        atomic::{AtomicUsize, Ordering::SeqCst},
        Arc,
    },
    time::Duration,
};

use deferred_cache::BuildError;
use deferred_expiring::{ExpiringBuildError, ExpiringBuilder, ExpiringCache, Expiry, ManualClock};
use futures::{channel::oneshot, executor::block_on};

type Builder = ExpiringBuilder<u32, u32, String, RandomState, ManualClock>;
type Configure = fn(Builder) -> Builder;

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn builder() -> (ManualClock, Builder) {
    let clock = ManualClock::new();
    (clock.clone(), ExpiringCache::builder().clock(clock))
}

fn loader(key: &u32) -> impl std::future::Future<Output = Result<u32, String>> {
    let key = *key;
    async move { Ok(key * 10) }
}

/// The message `build` panics with.
fn build_panic(builder: Builder) -> String {
    let payload = catch_unwind(AssertUnwindSafe(|| drop(builder.build()))).unwrap_err();
    payload
        .downcast_ref::<String>()
        .cloned()
        .expect("a formatted panic message")
}

/// The message `build_with_loader` panics with.
fn build_with_loader_panic(builder: Builder) -> String {
    let payload =
        catch_unwind(AssertUnwindSafe(|| drop(builder.build_with_loader(loader)))).unwrap_err();
    payload
        .downcast_ref::<String>()
        .cloned()
        .expect("a formatted panic message")
}

/// Every way of building refuses `make()`'s configuration with `expected`, and says so
/// with `message`.
fn refused_everywhere(make: impl Fn() -> Builder, expected: &ExpiringBuildError, message: &str) {
    let error = make().try_build().unwrap_err();
    assert_eq!(&error, expected);
    assert_eq!(error.to_string(), message);
    let error = make().try_build_with_loader(loader).unwrap_err();
    assert_eq!(&error, expected);
    assert_eq!(build_panic(make()), message);
    assert_eq!(build_with_loader_panic(make()), message);
}

#[test]
fn a_refresh_interval_of_zero_is_refused() {
    let message = "refresh_after (0ns) is zero, so every read would start a reload: give it \
                   a positive interval, or leave refresh-ahead off";
    refused_everywhere(
        || builder().1.refresh_after(Duration::ZERO),
        &ExpiringBuildError::RefreshAfterZero,
        message,
    );
    // With a time-to-live too: the zero is what is named.
    refused_everywhere(
        || {
            builder()
                .1
                .time_to_live(secs(60))
                .refresh_after(Duration::ZERO)
        },
        &ExpiringBuildError::RefreshAfterZero,
        message,
    );
    let error = builder()
        .1
        .refresh_after(Duration::ZERO)
        .try_build()
        .unwrap_err();
    assert!(error.source().is_none());
}

#[test]
fn a_refresh_interval_not_below_the_time_to_live_is_refused() {
    for (refresh, ttl) in [
        (secs(60), secs(60)),
        (secs(61), secs(60)),
        (secs(1), Duration::ZERO),
    ] {
        refused_everywhere(
            || builder().1.time_to_live(ttl).refresh_after(refresh),
            &ExpiringBuildError::RefreshAfterNotBelowTimeToLive {
                refresh_after: refresh,
                time_to_live: ttl,
            },
            &format!(
                "refresh_after ({refresh:?}) is not below time_to_live ({ttl:?}): every entry \
                 would expire before its refresh could start; lower refresh_after, or raise \
                 time_to_live"
            ),
        );
    }
    // The order of the calls does not matter.
    let error = builder()
        .1
        .refresh_after(secs(90))
        .time_to_live(secs(30))
        .try_build()
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "refresh_after (90s) is not below time_to_live (30s): every entry would expire before \
         its refresh could start; lower refresh_after, or raise time_to_live"
    );
}

#[test]
fn an_initial_capacity_above_the_max_capacity_is_refused() {
    let inner = BuildError::InitialCapacityAboveMax {
        initial_capacity: 11,
        max_capacity: 10,
    };
    let message = inner.to_string();
    assert!(
        message.starts_with("initial_capacity (11 entries) is more than max_capacity (10 entries)")
    );
    refused_everywhere(
        || builder().1.max_capacity(10).initial_capacity(11),
        &ExpiringBuildError::Cache(inner.clone()),
        &message,
    );
    let error = builder()
        .1
        .max_capacity(10)
        .initial_capacity(11)
        .try_build()
        .unwrap_err();
    let source = error.source().expect("the inner error");
    assert_eq!(source.downcast_ref::<BuildError>(), Some(&inner));
}

#[test]
fn an_initial_capacity_that_cannot_be_allocated_is_refused() {
    let inner = BuildError::InitialCapacityTooLarge {
        initial_capacity: usize::MAX / 4,
    };
    let message = inner.to_string();
    assert!(message.starts_with(&format!("initial_capacity ({} entries)", usize::MAX / 4)));
    refused_everywhere(
        || builder().1.initial_capacity(usize::MAX / 4),
        &ExpiringBuildError::Cache(inner),
        &message,
    );
}

#[test]
fn valid_configurations_still_build() {
    let valid: Vec<(&str, Configure)> = vec![
        ("defaults", |b| b),
        ("refresh below ttl", |b| {
            b.time_to_live(secs(60))
                .refresh_after(secs(60) - Duration::from_nanos(1))
        }),
        ("refresh without ttl", |b| b.refresh_after(secs(10))),
        ("refresh above tti", |b| {
            b.time_to_idle(secs(5)).refresh_after(secs(10))
        }),
        ("refresh with an expiry policy", |b| {
            b.time_to_live(secs(1))
                .expire_after(Forever)
                .refresh_after(secs(10))
        }),
        ("ttl 0", |b| b.time_to_live(Duration::ZERO)),
        ("tti 0", |b| b.time_to_idle(Duration::ZERO)),
        ("initial == max", |b| {
            b.max_capacity(10).initial_capacity(10)
        }),
        ("initial above max, weighed", |b| {
            b.max_capacity(10).weigher(|_, _| 1).initial_capacity(100)
        }),
        ("initial without max", |b| b.initial_capacity(1_000)),
    ];
    for (name, configure) in valid {
        let (_, b) = builder();
        assert!(configure(b).try_build().is_ok(), "{name}");
        let (_, b) = builder();
        assert!(configure(b).try_build_with_loader(loader).is_ok(), "{name}");
        let (_, b) = builder();
        drop(configure(b).build());
        let (_, b) = builder();
        let cache = configure(b).build_with_loader(loader);
        assert_eq!(block_on(cache.get(2)), Ok(20), "{name}");
    }
}

/// Never expires: an `Expiry` that replaces the time-to-live it is set with.
struct Forever;
impl Expiry<u32, u32> for Forever {
    fn expire_after_create(&self, _: &u32, _: &u32, _: Duration) -> Option<Duration> {
        None
    }
}

/// Refresh-ahead with an `Expiry` policy: the policy, not the time-to-live it replaces,
/// says when entries expire, so the refresh comes.
#[test]
fn refresh_with_an_expiry_policy_ignores_the_replaced_time_to_live() {
    let (clock, b) = builder();
    let cache = b
        .time_to_live(secs(1))
        .expire_after(Forever)
        .refresh_after(secs(10))
        .build_with_loader(loader);
    cache.insert(1, 1);
    clock.advance(secs(10));
    assert_eq!(cache.get_if_present(&1), Some(1)); // starts the refresh
    cache.run_maintenance();
    assert_eq!(cache.get_if_present(&1), Some(10));
    assert_eq!(cache.stats().refreshes_ok, 1);
}

/// Refresh-ahead without a cache-wide loader is accepted: `get_with` brings its loader and
/// refreshes with it; `get_if_present` has none and starts nothing.
#[test]
fn refresh_without_a_loader_refreshes_through_get_with_only() {
    let (clock, b) = builder();
    let cache = b.refresh_after(secs(10)).build();
    cache.insert(1, 1);
    clock.advance(secs(10));
    assert_eq!(cache.get_if_present(&1), Some(1));
    assert_eq!(cache.stats().refreshes_started, 0);
    assert_eq!(block_on(cache.get_with(1, || async { Ok(2) })), Ok(1));
    cache.run_maintenance();
    assert_eq!(cache.get_if_present(&1), Some(2));
    assert_eq!(cache.stats().refreshes_ok, 1);
}

/// A time-to-live of zero (and a time-to-idle of zero): shared, never seen again. The
/// callers waiting on one load share its value; no later read sees it, each `get_with`
/// loads again, and the entry counts in `len` until it is reclaimed (by a read that finds
/// it expired, or `run_maintenance`).
#[test]
fn a_zero_time_to_live_or_idle_shares_loads_and_keeps_nothing_visible() {
    for zero_ttl in [true, false] {
        let (_, b) = builder();
        let b = if zero_ttl {
            b.time_to_live(Duration::ZERO)
        } else {
            b.time_to_idle(Duration::ZERO)
        };
        let cache: ExpiringCache<u32, u32, String, _, _> = b.build();
        let loads = Arc::new(AtomicUsize::new(0));
        let (open, gate) = oneshot::channel::<()>();
        let counted = Arc::clone(&loads);
        let first = cache.get_with(1, move || {
            counted.fetch_add(1, SeqCst);
            async move {
                let _ = gate.await;
                Ok(10)
            }
        });
        let second = cache.get_with(1, || async { panic!("joins the first load") });
        let both = async {
            let opener = async {
                open.send(()).unwrap();
                Ok::<u32, String>(0)
            };
            futures::join!(first, second, opener)
        };
        let (a, b, _) = block_on(both);
        assert_eq!((a, b), (Ok(10), Ok(10)), "zero_ttl = {zero_ttl}");
        assert_eq!(loads.load(SeqCst), 1);
        assert_eq!(cache.len(), 1, "counted until reclaimed");
        assert_eq!(cache.peek(&1), None);
        assert_eq!(cache.get_if_present(&1), None); // and reclaims it
        assert_eq!(cache.len(), 0);
        assert_eq!(block_on(cache.get_with(1, || async { Ok(11) })), Ok(11));
        cache.insert(2, 20);
        assert_eq!(cache.get_if_present(&2), None);
        cache.run_maintenance();
        assert_eq!(cache.len(), 0);
    }
}
