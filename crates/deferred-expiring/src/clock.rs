//! Where time comes from: the `Clock` trait, a real clock and a manual one.

use std::{
    cmp::Reverse,
    collections::BinaryHeap,
    fmt,
    sync::{Arc, Condvar, OnceLock},
    task::Waker,
    time::Duration,
};

use crate::loom::{lock, AtomicU64, Mutex, Ordering::*};

/// A source of time for expiry: monotonic readings since some origin, and wake-ups at a
/// reading. Everything in this crate that expires reads time from a `Clock`, so that tests
/// can use a [`ManualClock`] and never sleep.
///
/// A clock that goes backwards is tolerated: deadlines are compared with each reading as it
/// comes, so nothing expires until the clock passes the deadline again, and nothing panics.
///
/// ```
/// use deferred_expiring::{Clock, ManualClock};
/// use std::time::Duration;
/// let clock = ManualClock::new();
/// let t0 = clock.now();
/// clock.advance(Duration::from_secs(1));
/// assert_eq!(clock.now() - t0, Duration::from_secs(1));
/// ```
pub trait Clock: Send + Sync + 'static {
    /// The time since this clock's origin.
    fn now(&self) -> Duration;

    /// Wakes `waker` once [`now`](Self::now) reads `deadline` or later (at once if it does
    /// already). Used only by futures that wait for a deadline, such as
    /// [`ExpiringRef::expired`](crate::ExpiringRef::expired).
    fn wake_at(&self, deadline: Duration, waker: Waker);
}

/// The real clock: the coarse monotonic clock of the OS (`CLOCK_MONOTONIC_COARSE` on
/// Linux, read through the [`coarsetime`] crate), a few nanoseconds a reading, with the
/// resolution of the kernel tick (1 to 4 ms on Linux; `GetTickCount64`'s 10 to 16 ms on
/// Windows; the OS's cheap monotonic clock on macOS, FreeBSD and DragonFly). On other Unix
/// systems, where coarsetime would read the wall clock, it is [`std::time::Instant`]. Its
/// readings never go backwards. Deadlines are met within one such tick.
///
/// [`wake_at`](Clock::wake_at) is served by one timer thread for the process, started on
/// its first use; reading the time never starts it.
///
/// ```
/// use deferred_expiring::{Clock, SystemClock};
/// let clock = SystemClock;
/// let a = clock.now();
/// assert!(clock.now() >= a);
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[inline]
    fn now(&self) -> Duration {
        coarse_now()
    }

    fn wake_at(&self, deadline: Duration, waker: Waker) {
        if self.now() >= deadline {
            waker.wake();
            return;
        }
        timer_thread().add(deadline, waker);
    }
}

/// [`SystemClock`]'s reading: the time since an unspecified fixed point, the same for the
/// whole process (on Linux, boot).
///
/// `now_without_cache_update`, not `now`: coarsetime's `now` also stores each reading in a
/// process-wide atomic (for its `recent`, which this crate does not use), a write to one
/// shared cache line on every cache hit of every thread. The origin is coarsetime's tick 0,
/// so no origin needs storing either; the conversion from its 32.32 fixed point to
/// nanoseconds is monotonic (within a nanosecond of the OS's reading).
#[cfg(not(all(
    unix,
    not(any(
        target_os = "linux",
        target_os = "android",
        target_os = "macos",
        target_os = "freebsd",
        target_os = "dragonfly"
    ))
)))]
#[inline]
fn coarse_now() -> Duration {
    let since_origin = coarsetime::Instant::now_without_cache_update()
        .duration_since(coarsetime::Instant::from_ticks(0));
    Duration::new(since_origin.as_secs(), since_origin.subsec_nanos())
}

/// On the Unix systems where coarsetime reads `gettimeofday` (the wall clock, which can
/// step back), `Instant` against a process-wide origin, as the clock promises monotonic
/// readings.
#[cfg(all(
    unix,
    not(any(
        target_os = "linux",
        target_os = "android",
        target_os = "macos",
        target_os = "freebsd",
        target_os = "dragonfly"
    ))
))]
fn coarse_now() -> Duration {
    static ORIGIN: OnceLock<std::time::Instant> = OnceLock::new();
    ORIGIN.get_or_init(std::time::Instant::now).elapsed()
}

/// The wake-ups that [`SystemClock`] owes, served by one thread.
struct TimerThread {
    queue: std::sync::Mutex<Pending>,
    changed: Condvar,
}

#[derive(Default)]
struct Pending {
    heap: BinaryHeap<Reverse<(Duration, u64)>>,
    wakers: std::collections::HashMap<u64, Waker>,
    next_id: u64,
}

impl TimerThread {
    fn add(&self, deadline: Duration, waker: Waker) {
        let mut pending = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let id = pending.next_id;
        pending.next_id += 1;
        pending.heap.push(Reverse((deadline, id)));
        pending.wakers.insert(id, waker);
        drop(pending);
        self.changed.notify_one();
    }

    fn run(&self) {
        let mut pending = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let now = coarse_now();
            let mut due = Vec::new();
            while let Some(Reverse((deadline, id))) = pending.heap.peek().copied() {
                if deadline > now {
                    break;
                }
                pending.heap.pop();
                due.extend(pending.wakers.remove(&id));
            }
            let wait = pending.heap.peek().map(|Reverse((deadline, _))| {
                // The coarse clock moves in ticks: never wait less than a millisecond, or
                // this thread would spin until the tick comes.
                (*deadline - now).max(Duration::from_millis(1))
            });
            if !due.is_empty() {
                drop(pending);
                due.into_iter().for_each(Waker::wake);
                pending = self.queue.lock().unwrap_or_else(|e| e.into_inner());
                continue;
            }
            pending = match wait {
                Some(wait) => {
                    self.changed
                        .wait_timeout(pending, wait)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
                None => self
                    .changed
                    .wait(pending)
                    .unwrap_or_else(|e| e.into_inner()),
            };
        }
    }
}

fn timer_thread() -> &'static TimerThread {
    static THREAD: OnceLock<&'static TimerThread> = OnceLock::new();
    THREAD.get_or_init(|| {
        let timers: &'static TimerThread = Box::leak(Box::new(TimerThread {
            queue: std::sync::Mutex::new(Pending::default()),
            changed: Condvar::new(),
        }));
        std::thread::Builder::new()
            .name("deferred-expiring-timer".into())
            .spawn(move || timers.run())
            .expect("deferred-expiring: could not start the timer thread");
        timers
    })
}

/// A clock that moves only when told to: for tests, and for anything that wants time to be
/// data. Clones share one time. Waiters registered with [`wake_at`](Clock::wake_at) are
/// woken by the [`advance`](Self::advance) or [`set`](Self::set) that reaches their
/// deadline, on the thread that calls it.
///
/// ```
/// use deferred_expiring::{Clock, ManualClock};
/// use std::time::Duration;
/// let clock = ManualClock::new();
/// let shared = clock.clone();
/// clock.advance(Duration::from_millis(5));
/// assert_eq!(shared.now(), Duration::from_millis(5));
/// ```
#[derive(Clone)]
pub struct ManualClock {
    inner: Arc<ManualInner>,
}

impl Default for ManualClock {
    fn default() -> Self {
        ManualClock {
            inner: Arc::new(ManualInner {
                nanos: AtomicU64::new(0),
                waiters: Mutex::new(Vec::new()),
            }),
        }
    }
}

struct ManualInner {
    nanos: AtomicU64,
    waiters: Mutex<Vec<(Duration, Waker)>>,
}

impl ManualClock {
    /// A clock reading zero.
    ///
    /// ```
    /// use deferred_expiring::{Clock, ManualClock};
    /// assert_eq!(ManualClock::new().now(), std::time::Duration::ZERO);
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves the clock forward by `by`, waking the waiters it reaches.
    ///
    /// ```
    /// use deferred_expiring::{Clock, ManualClock};
    /// use std::time::Duration;
    /// let clock = ManualClock::new();
    /// clock.advance(Duration::from_secs(2));
    /// assert_eq!(clock.now(), Duration::from_secs(2));
    /// ```
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        // AcqRel: orders this move after earlier ones and before the wake-ups below.
        let before = self.inner.nanos.fetch_add(by, AcqRel);
        if before.checked_add(by).is_none() {
            self.inner.nanos.store(u64::MAX, Release);
        }
        self.wake_due();
    }

    /// Sets the clock to `to`, forwards or backwards (to test a clock that jumps back).
    ///
    /// ```
    /// use deferred_expiring::{Clock, ManualClock};
    /// use std::time::Duration;
    /// let clock = ManualClock::new();
    /// clock.set(Duration::from_secs(9));
    /// clock.set(Duration::from_secs(1));
    /// assert_eq!(clock.now(), Duration::from_secs(1));
    /// ```
    pub fn set(&self, to: Duration) {
        let nanos = u64::try_from(to.as_nanos()).unwrap_or(u64::MAX);
        // Release: pairs with the Acquire in `now`.
        self.inner.nanos.store(nanos, Release);
        self.wake_due();
    }

    fn wake_due(&self) {
        let now = self.now();
        let due: Vec<Waker> = {
            let mut waiters = lock(&self.inner.waiters);
            let mut due = Vec::new();
            waiters.retain(|(deadline, waker)| {
                let ready = *deadline <= now;
                if ready {
                    due.push(waker.clone());
                }
                !ready
            });
            due
        };
        due.into_iter().for_each(Waker::wake);
    }
}

impl Clock for ManualClock {
    #[inline]
    fn now(&self) -> Duration {
        // Acquire: pairs with the Release of `advance` / `set`, so a reader that sees a
        // time also sees what was done before the clock was moved there.
        Duration::from_nanos(self.inner.nanos.load(Acquire))
    }

    fn wake_at(&self, deadline: Duration, waker: Waker) {
        {
            let mut waiters = lock(&self.inner.waiters);
            if self.now() < deadline {
                // A waker that will wake the same task replaces its older entry.
                if let Some(slot) = waiters
                    .iter_mut()
                    .find(|(d, w)| *d == deadline && w.will_wake(&waker))
                {
                    slot.1 = waker;
                } else {
                    waiters.push((deadline, waker));
                }
                return;
            }
        }
        // The clock is there already (checked under the lock that `wake_due` takes after
        // moving it, so no move is missed).
        waker.wake();
    }
}

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManualClock")
            .field("now", &self.now())
            .field("waiters", &lock(&self.inner.waiters).len())
            .finish()
    }
}

impl<C: Clock> Clock for Arc<C> {
    fn now(&self) -> Duration {
        (**self).now()
    }

    fn wake_at(&self, deadline: Duration, waker: Waker) {
        (**self).wake_at(deadline, waker);
    }
}
