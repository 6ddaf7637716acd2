//! `ExpiringRef`: a value that expires after a time without use, or after a number of uses
//! (fs2-es `ExpiringRef`).

use std::{
    fmt,
    future::Future,
    ops::Deref,
    pin::Pin,
    task::{Context, Poll, Waker},
    time::Duration,
};

use crate::{
    clock::{Clock, SystemClock},
    loom::{lock, Mutex},
};

/// A value that expires: after `ttl` with no use in progress ([`timed`](Self::timed)), or
/// after `n` uses ([`uses`](Self::uses)). Once expired it stays expired: every later use is
/// refused, and the [`expired`](Self::expired) future completes.
///
/// A use is a [`Use`] guard from [`acquire`](Self::acquire) (or a closure run by
/// [`with`](Self::with)). It may span `.await`s. While any use is in progress a timed ref
/// cannot expire; its countdown starts again from the moment the last concurrent use ends.
/// A use ends when its guard drops, however that happens: normally, on an error, or while
/// unwinding from a panic (fs2-es never releases a use that fails, so such a ref never
/// expires; here it does).
///
/// The value itself is kept until the `ExpiringRef` is dropped (or taken back with
/// [`into_inner`](Self::into_inner)); expiry only refuses further uses.
///
/// ```
/// use deferred_expiring::{ExpiringRef, ManualClock, Clock};
/// use std::time::Duration;
/// let clock = ManualClock::new();
/// let token = ExpiringRef::timed_with_clock("secret", Duration::from_secs(60), clock.clone());
/// clock.advance(Duration::from_secs(59));
/// assert_eq!(token.with(|t| t.len()), Some(6)); // a use: the countdown starts again
/// clock.advance(Duration::from_secs(59));
/// assert!(!token.is_expired());
/// clock.advance(Duration::from_secs(1));
/// assert_eq!(token.with(|t| t.len()), None); // 60 s with no use
/// ```
pub struct ExpiringRef<T, C = SystemClock> {
    value: T,
    clock: C,
    state: Mutex<State>,
}

enum Kind {
    /// Expires `ttl` after `idle_since`, when no use is in progress.
    Timed { ttl: Duration, idle_since: Duration },
    /// `left` more uses may start.
    Uses { left: u64 },
}

struct State {
    kind: Kind,
    /// Uses in progress.
    in_use: usize,
    expired: bool,
    /// Tasks awaiting [`ExpiringRef::expired`], woken on every change that may end the wait
    /// (a use ending, expiry).
    waiters: Vec<Waker>,
}

impl State {
    /// Marks the ref expired if its time is up (or its uses are spent and none is in
    /// progress); returns whether it is expired.
    fn check(&mut self, now: Duration) -> bool {
        if !self.expired {
            self.expired = match self.kind {
                Kind::Timed { ttl, idle_since } => {
                    self.in_use == 0 && now >= idle_since.saturating_add(ttl)
                }
                Kind::Uses { left } => left == 0,
            };
        }
        self.expired
    }

    fn take_waiters(&mut self) -> Vec<Waker> {
        core::mem::take(&mut self.waiters)
    }
}

impl<T> ExpiringRef<T, SystemClock> {
    /// A value that expires once `ttl` has passed with no use in progress, on the
    /// [`SystemClock`].
    ///
    /// ```
    /// let r = deferred_expiring::ExpiringRef::timed(5, std::time::Duration::from_secs(30));
    /// assert_eq!(r.with(|v| v * 2), Some(10));
    /// ```
    pub fn timed(value: T, ttl: Duration) -> Self {
        Self::timed_with_clock(value, ttl, SystemClock)
    }

    /// A value that can be used `n` times: exactly `n` calls of [`acquire`](Self::acquire)
    /// (or [`with`](Self::with)) succeed, and every later one is refused. It counts as
    /// expired once the `n`-th use has started; [`expired`](Self::expired) completes when
    /// that use has also ended. `uses(value, 0)` is expired from the start.
    ///
    /// ```
    /// let r = deferred_expiring::ExpiringRef::uses("once", 1);
    /// assert_eq!(r.with(|v| *v), Some("once"));
    /// assert_eq!(r.with(|v| *v), None);
    /// ```
    pub fn uses(value: T, n: u64) -> Self {
        Self::uses_with_clock(value, n, SystemClock)
    }
}

impl<T, C: Clock> ExpiringRef<T, C> {
    /// As [`timed`](ExpiringRef::timed), on `clock`. The countdown starts now.
    ///
    /// ```
    /// use deferred_expiring::{ExpiringRef, ManualClock};
    /// use std::time::Duration;
    /// let clock = ManualClock::new();
    /// let r = ExpiringRef::timed_with_clock(1, Duration::from_secs(1), clock.clone());
    /// clock.advance(Duration::from_secs(1));
    /// assert!(r.is_expired());
    /// ```
    pub fn timed_with_clock(value: T, ttl: Duration, clock: C) -> Self {
        let idle_since = clock.now();
        Self::from_parts(value, clock, Kind::Timed { ttl, idle_since })
    }

    /// As [`uses`](ExpiringRef::uses), with `clock` (used only to wait in
    /// [`expired`](Self::expired), which a use-counted ref never does on time).
    ///
    /// ```
    /// use deferred_expiring::{ExpiringRef, ManualClock};
    /// let r = ExpiringRef::uses_with_clock('x', 2, ManualClock::new());
    /// assert_eq!(r.uses_left(), Some(2));
    /// ```
    pub fn uses_with_clock(value: T, n: u64, clock: C) -> Self {
        Self::from_parts(value, clock, Kind::Uses { left: n })
    }

    fn from_parts(value: T, clock: C, kind: Kind) -> Self {
        let expired = matches!(kind, Kind::Uses { left: 0 });
        ExpiringRef {
            value,
            clock,
            state: Mutex::new(State {
                kind,
                in_use: 0,
                expired,
                waiters: Vec::new(),
            }),
        }
    }

    /// Starts a use: a guard that reads the value, or `None` if the ref has expired. The use
    /// ends when the guard drops; for a timed ref, the countdown starts again then (if no
    /// other use is in progress).
    ///
    /// ```
    /// use deferred_expiring::ExpiringRef;
    /// let r = ExpiringRef::uses(vec![1, 2, 3], 2);
    /// let a = r.acquire().unwrap();
    /// let b = r.acquire().unwrap();
    /// assert!(r.acquire().is_none()); // both uses taken
    /// assert_eq!(a.len() + b.len(), 6);
    /// ```
    pub fn acquire(&self) -> Option<Use<'_, T, C>> {
        let now = self.clock.now();
        let (granted, wake) = {
            let mut state = lock(&self.state);
            if state.check(now) {
                // Expiry noticed here, perhaps first: waiters learn of it.
                (false, state.take_waiters())
            } else {
                if let Kind::Uses { left } = &mut state.kind {
                    *left -= 1;
                }
                state.in_use += 1;
                (true, Vec::new())
            }
        };
        wake.into_iter().for_each(Waker::wake);
        if granted {
            Some(Use { owner: self })
        } else {
            None
        }
    }

    /// Runs `f` on the value as one use; `None` (and `f` not run) if the ref has expired.
    /// The use ends when `f` returns or unwinds.
    ///
    /// ```
    /// let r = deferred_expiring::ExpiringRef::uses(10, 1);
    /// assert_eq!(r.with(|v| v + 1), Some(11));
    /// assert_eq!(r.with(|v| v + 1), None);
    /// ```
    pub fn with<R>(&self, f: impl FnOnce(&T) -> R) -> Option<R> {
        let guard = self.acquire()?;
        Some(f(&guard))
    }

    /// Whether the ref has expired (no use can start any more). Reads the clock.
    ///
    /// ```
    /// let r = deferred_expiring::ExpiringRef::uses((), 0);
    /// assert!(r.is_expired());
    /// ```
    pub fn is_expired(&self) -> bool {
        let now = self.clock.now();
        let (expired, wake) = {
            let mut state = lock(&self.state);
            let expired = state.check(now);
            (
                expired,
                if expired {
                    state.take_waiters()
                } else {
                    Vec::new()
                },
            )
        };
        wake.into_iter().for_each(Waker::wake);
        expired
    }

    /// How many more uses may start, for a use-counted ref; `None` for a timed one.
    ///
    /// ```
    /// let r = deferred_expiring::ExpiringRef::uses(1, 3);
    /// r.with(|_| ());
    /// assert_eq!(r.uses_left(), Some(2));
    /// ```
    pub fn uses_left(&self) -> Option<u64> {
        match lock(&self.state).kind {
            Kind::Uses { left } => Some(left),
            Kind::Timed { .. } => None,
        }
    }

    /// The deadline of a timed ref with no use in progress, in the clock's time; `None`
    /// while a use is in progress, once expired, and for a use-counted ref.
    ///
    /// ```
    /// use deferred_expiring::{ExpiringRef, ManualClock};
    /// use std::time::Duration;
    /// let r = ExpiringRef::timed_with_clock(1, Duration::from_secs(5), ManualClock::new());
    /// assert_eq!(r.deadline(), Some(Duration::from_secs(5)));
    /// let guard = r.acquire().unwrap();
    /// assert_eq!(r.deadline(), None);
    /// # drop(guard);
    /// ```
    pub fn deadline(&self) -> Option<Duration> {
        let state = lock(&self.state);
        match state.kind {
            Kind::Timed { ttl, idle_since } if state.in_use == 0 && !state.expired => {
                Some(idle_since.saturating_add(ttl))
            }
            _ => None,
        }
    }

    /// A future that completes once the ref has expired and no use is in progress. For a
    /// timed ref it wakes through the clock's [`wake_at`](Clock::wake_at): within one clock
    /// tick of the deadline (at the deadline, with a [`ManualClock`](crate::ManualClock)).
    ///
    /// ```
    /// use deferred_expiring::{ExpiringRef, ManualClock};
    /// use futures::FutureExt;
    /// use std::time::Duration;
    /// let clock = ManualClock::new();
    /// let r = ExpiringRef::timed_with_clock((), Duration::from_secs(5), clock.clone());
    /// let mut expired = Box::pin(r.expired());
    /// assert!(expired.as_mut().now_or_never().is_none());
    /// clock.advance(Duration::from_secs(5));
    /// assert!(expired.now_or_never().is_some());
    /// ```
    pub fn expired(&self) -> Expired<'_, T, C> {
        Expired { owner: self }
    }

    /// The value, whether or not the ref has expired.
    ///
    /// ```
    /// let r = deferred_expiring::ExpiringRef::uses(String::from("v"), 0);
    /// assert_eq!(r.into_inner(), "v");
    /// ```
    pub fn into_inner(self) -> T {
        self.value
    }

    /// Ends one use (a guard dropped).
    fn release(&self) {
        let now = self.clock.now();
        let wake = {
            let mut state = lock(&self.state);
            state.in_use -= 1;
            if state.in_use == 0 {
                if let Kind::Timed { idle_since, .. } = &mut state.kind {
                    // The countdown starts again from here. A clock read before another
                    // use's release may come after it: keep the latest.
                    *idle_since = (*idle_since).max(now);
                }
                state.check(now);
                // Waiters re-arm for the new deadline, or see the expiry.
                state.take_waiters()
            } else {
                Vec::new()
            }
        };
        wake.into_iter().for_each(Waker::wake);
    }
}

impl<T: fmt::Debug, C> fmt::Debug for ExpiringRef<T, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = lock(&self.state);
        let mut out = f.debug_struct("ExpiringRef");
        out.field("value", &self.value);
        match state.kind {
            Kind::Timed { ttl, idle_since } => {
                out.field("ttl", &ttl).field("idle_since", &idle_since)
            }
            Kind::Uses { left } => out.field("uses_left", &left),
        };
        out.field("in_use", &state.in_use)
            .field("expired", &state.expired)
            .finish()
    }
}

/// A use of an [`ExpiringRef`]'s value, from [`ExpiringRef::acquire`]: derefs to the value,
/// and ends the use when dropped (also while unwinding).
///
/// ```
/// let r = deferred_expiring::ExpiringRef::uses(7, 1);
/// let value = r.acquire().unwrap();
/// assert_eq!(*value, 7);
/// ```
pub struct Use<'a, T, C: Clock = SystemClock> {
    owner: &'a ExpiringRef<T, C>,
}

impl<T, C: Clock> Deref for Use<'_, T, C> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.owner.value
    }
}

impl<T, C: Clock> Drop for Use<'_, T, C> {
    fn drop(&mut self) {
        self.owner.release();
    }
}

impl<T: fmt::Debug, C: Clock> fmt::Debug for Use<'_, T, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Use").field(&self.owner.value).finish()
    }
}

/// The future of [`ExpiringRef::expired`].
#[must_use = "futures do nothing unless polled"]
pub struct Expired<'a, T, C: Clock = SystemClock> {
    owner: &'a ExpiringRef<T, C>,
}

impl<T, C: Clock> Future for Expired<'_, T, C> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let owner = self.owner;
        let now = owner.clock.now();
        let (ready, deadline, wake) = {
            let mut state = lock(&owner.state);
            let expired = state.check(now);
            if expired && state.in_use == 0 {
                (true, None, state.take_waiters())
            } else {
                if !state.waiters.iter().any(|w| w.will_wake(cx.waker())) {
                    state.waiters.push(cx.waker().clone());
                }
                let deadline = match state.kind {
                    Kind::Timed { ttl, idle_since } if state.in_use == 0 => {
                        Some(idle_since.saturating_add(ttl))
                    }
                    _ => None,
                };
                (false, deadline, Vec::new())
            }
        };
        wake.into_iter().for_each(Waker::wake);
        if ready {
            return Poll::Ready(());
        }
        if let Some(deadline) = deadline {
            // Woken at the deadline to look again; a use that ends meanwhile wakes it
            // sooner (through `waiters`) and it re-arms for the new deadline.
            owner.clock.wake_at(deadline, cx.waker().clone());
        }
        Poll::Pending
    }
}

impl<T, C: Clock> fmt::Debug for Expired<'_, T, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Expired")
    }
}
