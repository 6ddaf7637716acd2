//! When entries expire: time-to-live, time-to-idle, or a per-entry `Expiry` policy.

use std::{borrow::Cow, fmt, time::Duration};

use crate::cache::TICK_SHIFT;

/// A per-entry expiry policy: how long an entry lives from the moment it is created,
/// read or updated. Each method returns the time to live from `now` (`None`: never
/// expires). Set it with [`ExpiringBuilder::expire_after`](crate::ExpiringBuilder::expire_after).
///
/// The methods run with a shard lock of the cache held (read for `expire_after_read`):
/// keep them short, and never touch the cache from inside them.
///
/// ```
/// use deferred_expiring::{Expiry, ExpiringCache, ManualClock};
/// use std::time::Duration;
///
/// /// Sessions live as long as they say; reads do not extend them.
/// struct ByField;
/// impl Expiry<u32, (String, Duration)> for ByField {
///     fn expire_after_create(&self, _: &u32, v: &(String, Duration), _now: Duration) -> Option<Duration> {
///         Some(v.1)
///     }
/// }
/// let clock = ManualClock::new();
/// let cache: ExpiringCache<u32, (String, Duration), std::convert::Infallible, _, _> =
///     ExpiringCache::builder().expire_after(ByField).clock(clock.clone()).build();
/// cache.insert(1, ("a".into(), Duration::from_secs(1)));
/// cache.insert(2, ("b".into(), Duration::from_secs(9)));
/// clock.advance(Duration::from_secs(1));
/// assert!(cache.get_if_present(&1).is_none());
/// assert!(cache.get_if_present(&2).is_some());
/// ```
pub trait Expiry<K, V>: Send + Sync + 'static {
    /// The time to live of a value just loaded or inserted at `key`.
    fn expire_after_create(&self, key: &K, value: &V, now: Duration) -> Option<Duration>;

    /// The time to live after a read; `remaining` is what was left (`None`: never
    /// expires). By default a read changes nothing.
    fn expire_after_read(
        &self,
        key: &K,
        value: &V,
        now: Duration,
        remaining: Option<Duration>,
    ) -> Option<Duration> {
        let _ = (key, value, now);
        remaining
    }

    /// The time to live of a value that replaces one (an insert over it, or a refresh);
    /// `remaining` is what the old one had left. By default, as for a new value.
    fn expire_after_update(
        &self,
        key: &K,
        value: &V,
        now: Duration,
        remaining: Option<Duration>,
    ) -> Option<Duration> {
        let _ = remaining;
        self.expire_after_create(key, value, now)
    }
}

/// Never: the deadline of an entry that does not expire. No reading of the clock reaches
/// it: readings count as at most [`END`].
pub(crate) const NEVER: u64 = u64::MAX;

/// The end of time, as far as expiry goes: a reading of the clock later than this (a
/// `ManualClock` advanced by `Duration::MAX` saturates at `u64::MAX` ns; a `Clock` may
/// return anything) counts as this one, so that it stays below [`NEVER`] and an entry that
/// never expires never does. It starts a wheel tick (2^64 ns less one tick, about 584
/// years), so the wheel reaches the tick of every deadline up to it.
pub(crate) const END: u64 = NEVER >> TICK_SHIFT << TICK_SHIFT;

/// A duration in nanoseconds, `u64::MAX` (the same as [`NEVER`]) if it has more.
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(NEVER)
}

/// A reading of the clock in nanoseconds, for comparison with deadlines: at most [`END`].
/// Every comparison of a deadline with the clock goes through here.
#[inline]
pub(crate) fn now_nanos(now: Duration) -> u64 {
    nanos(now).min(END)
}

/// `now + ttl` in nanoseconds; `NEVER` for `None`, and for a deadline after [`END`], which
/// the clock cannot reach (a time-to-live of `Duration::MAX` is never, as `None` is).
pub(crate) fn deadline(now: Duration, ttl: Option<Duration>) -> u64 {
    ttl.and_then(|ttl| now_nanos(now).checked_add(nanos(ttl)))
        .filter(|&deadline| deadline <= END)
        .unwrap_or(NEVER)
}

/// What remains from `now` to `deadline`; `None` for `NEVER`.
pub(crate) fn remaining(now: Duration, deadline: u64) -> Option<Duration> {
    (deadline != NEVER).then(|| Duration::from_nanos(deadline.saturating_sub(now_nanos(now))))
}

/// The expiry settings of a cache.
pub(crate) struct Policy<K, V> {
    pub(crate) ttl: Option<Duration>,
    pub(crate) tti: Option<Duration>,
    pub(crate) custom: Option<Box<dyn Expiry<K, V>>>,
    pub(crate) negative_ttl: Option<Duration>,
    pub(crate) refresh_after: Option<Duration>,
    /// The most timers one operation's reclamation looks at.
    pub(crate) maintenance_budget: usize,
}

impl<K, V> Policy<K, V> {
    pub(crate) fn new() -> Self {
        Policy {
            ttl: None,
            tti: None,
            custom: None,
            negative_ttl: None,
            refresh_after: None,
            maintenance_budget: usize::MAX,
        }
    }
}

impl<K: 'static, V: 'static> Policy<K, V> {
    /// Deadlines (soft, hard) for a value created or updated at `now`; the hard one caps
    /// what time-to-idle renewals may reach (the time-to-live).
    pub(crate) fn on_write(
        &self,
        key: &K,
        value: &V,
        now: Duration,
        previous: Option<u64>,
    ) -> (u64, u64) {
        if let Some(custom) = &self.custom {
            let ttl = match previous {
                Some(old) => custom.expire_after_update(key, value, now, remaining(now, old)),
                None => custom.expire_after_create(key, value, now),
            };
            return (deadline(now, ttl), NEVER);
        }
        let hard = deadline(now, self.ttl);
        (deadline(now, self.tti).min(hard), hard)
    }

    /// The deadline after a read at `now` of a value whose deadline is `current`; `None`
    /// if it does not change.
    ///
    /// `key` gives the key only if the custom policy asks for it: a read by a borrowed form
    /// of the key makes an owned one for `Expiry::expire_after_read`, and for nothing else.
    #[inline]
    pub(crate) fn on_read<'k>(
        &self,
        key: impl FnOnce() -> Cow<'k, K>,
        value: &V,
        now: Duration,
        current: u64,
        hard: u64,
    ) -> Option<u64>
    where
        K: Clone + 'k,
    {
        if let Some(custom) = &self.custom {
            let next = deadline(
                now,
                custom.expire_after_read(&key(), value, now, remaining(now, current)),
            );
            return (next != current).then_some(next);
        }
        let tti = self.tti?;
        let next = deadline(now, Some(tti)).min(hard);
        (next > current).then_some(next)
    }
}

impl<K, V> fmt::Debug for Policy<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policy")
            .field("ttl", &self.ttl)
            .field("tti", &self.tti)
            .field("custom", &self.custom.is_some())
            .field("negative_ttl", &self.negative_ttl)
            .field("refresh_after", &self.refresh_after)
            .field("maintenance_budget", &self.maintenance_budget)
            .finish()
    }
}
