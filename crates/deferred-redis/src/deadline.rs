//! Bounds every Redis operation by `op_timeout` without registering a timer per operation.
//!
//! Time is cut into ticks of a quarter of `op_timeout`, numbered from when the cache was
//! built (an operation's epoch: the tick it started in). A watchdog thread per cache wakes
//! at each tick, publishes it, and wakes the operations that started [`TICKS`](crate::epochs::TICKS) ticks before
//! (a `Notify` per epoch, in a ring of [`SLOTS`]); each of them fails with a timeout. So an
//! operation ends with a timeout between 3/4 of `op_timeout` and `op_timeout` after it
//! started; what it costs is a clock read, a few atomic loads and a `Notify` registration (no
//! lock of a runtime's timer driver, no wake of it).
//!
//! An OS thread, not a task: a tokio timer belongs to the runtime it was made in, a cache may
//! be used from several, and a task on a current-thread runtime runs only while a thread
//! drives that runtime. The thread belongs to none; a `Notify` wakes a task on whatever
//! runtime it runs. It parks when no operation started for two `op_timeout`s (an operation
//! that finds it parked unparks it; it looks again by itself every `op_timeout`, at least
//! every 100 ms, a backstop for an unpark that never came) and ends when the cache is
//! dropped. If it cannot be started, each operation takes a timer of its own runtime, as
//! before.

use std::{
    future::Future,
    sync::{Arc, OnceLock, Weak},
    thread::Thread,
    time::{Duration, Instant},
};

use tokio::sync::Notify;

pub(crate) use crate::epochs::Elapsed;
use crate::epochs::{Epochs, SLOTS};

/// The deadlines of one cache's Redis operations.
pub(crate) struct Deadlines {
    op_timeout: Duration,
    tick: Duration,
    base: Instant,
    epochs: Epochs,
    /// The watchdog thread, once started (`None` in it: it could not be started).
    watchdog: OnceLock<Option<Thread>>,
    slots: [Notify; SLOTS as usize],
}

impl Deadlines {
    pub(crate) fn new(op_timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            op_timeout,
            tick: (op_timeout / 4).max(Duration::from_millis(1)),
            base: Instant::now(),
            epochs: Epochs::new(),
            watchdog: OnceLock::new(),
            slots: core::array::from_fn(|_| Notify::new()),
        })
    }

    /// The epoch of `at`.
    fn epoch_at(&self, at: Instant) -> u64 {
        let ticks = at.saturating_duration_since(self.base).as_nanos() / self.tick.as_nanos();
        u64::try_from(ticks).unwrap_or(u64::MAX)
    }

    /// The instant epoch `epoch` begins.
    fn start_of(&self, epoch: u64) -> Instant {
        let nanos = self.tick.as_nanos().saturating_mul(u128::from(epoch));
        let offset = Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX));
        self.base.checked_add(offset).unwrap_or(self.base)
    }

    fn slot(&self, epoch: u64) -> &Notify {
        &self.slots[usize::try_from(epoch % SLOTS).unwrap_or(0)]
    }

    /// `op`, or `Elapsed` once it ran past its time.
    pub(crate) async fn bound<T>(
        self: &Arc<Self>,
        op: impl Future<Output = T>,
    ) -> Result<T, Elapsed> {
        let epoch = self.epoch_at(Instant::now());
        let watchdog = self.watchdog.get_or_init(|| self.start());
        let Some(watchdog) = watchdog else {
            return self.bound_by_timer(epoch, op).await;
        };
        if self.epochs.start(epoch) {
            watchdog.unpark();
        }
        let mut op = core::pin::pin!(op);
        loop {
            let notified = self.epochs.arm(epoch, || self.slot(epoch).notified())?;
            tokio::select! {
                biased;
                out = &mut op => return Ok(out),
                () = notified => {}
            }
            if self.epochs.expired(epoch) {
                return Err(Elapsed);
            }
            // Woken early, by a late watchdog firing the slot's previous epoch: again.
        }
    }

    /// `op` within its time by a timer of the current runtime.
    async fn bound_by_timer<T>(
        &self,
        epoch: u64,
        op: impl Future<Output = T>,
    ) -> Result<T, Elapsed> {
        let deadline = self.start_of(epoch).checked_add(self.op_timeout);
        let deadline = deadline.unwrap_or_else(|| crate::hybrid::after(self.op_timeout).into_std());
        tokio::time::timeout_at(deadline.into(), op)
            .await
            .map_err(|_| Elapsed)
    }

    /// Starts the watchdog thread.
    fn start(self: &Arc<Self>) -> Option<Thread> {
        let deadlines = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("deferred-redis-deadlines".into())
            .spawn(move || watch(&deadlines))
            .ok()
            .map(|handle| handle.thread().clone())
    }

    /// Publishes `now` and fails the operations of the epochs that it puts past their time
    /// (`fired`: the last epoch fired so far, or `None`).
    fn tick(&self, now: u64, fired: &mut Option<u64>) {
        self.epochs
            .tick(now, fired, |epoch| self.slot(epoch).notify_waiters());
    }
}

impl Drop for Deadlines {
    fn drop(&mut self) {
        // Its watchdog, parked or asleep, ends at its next look.
        if let Some(Some(watchdog)) = self.watchdog.get() {
            watchdog.unpark();
        }
    }
}

/// How often a parked watchdog looks again by itself at least (see `watch`): no finer, so
/// that a short `op_timeout` does not wake an idle cache's thread more than 10 times a
/// second.
const BACKSTOP_FLOOR: Duration = Duration::from_millis(100);

/// The watchdog: a tick each `tick` while operations start, parked in between (looking
/// again every `op_timeout`, at least `BACKSTOP_FLOOR`); ends with the cache.
fn watch(deadlines: &Weak<Deadlines>) {
    let mut fired = None;
    loop {
        let Some(d) = deadlines.upgrade() else {
            return;
        };
        let now = d.epoch_at(Instant::now());
        d.tick(now, &mut fired);
        if d.epochs.may_park(now) {
            let backstop = d.op_timeout.max(BACKSTOP_FLOOR);
            drop(d);
            // A backstop, not the wake: an operation that finds the watchdog parked unparks
            // it, and the handshakes that decide it (`epochs`: `start` against `may_park`,
            // `arm` against `tick`) are loom-checked; an unpark before the park leaves a
            // token. What they rest on beyond that: a starting operation that read its
            // clock long before (descheduled) and finds the watchdog not yet parked relies
            // on reading `published` as recent as real time says it is, to fail at once in
            // `arm`; sequential consistency alone allows an older value (nothing orders
            // its load after the watchdog's recent publishes). Should any such unpark be
            // lost, the operation would wait until another one started. With the timeout,
            // the next look finds it started (`last_start`) and ticks on until it is past
            // its time (within `backstop` + `op_timeout`); one whose epoch was already past
            // is woken within two looks (each fires at least 4 of the 8 slots). The cost:
            // one look per `backstop` while idle (a clock read, a few atomics, up to 8
            // `notify_waiters` on empty `Notify`s), at most 10 a second per cache
            // (`an_operation_whose_unpark_is_lost_still_fails_in_time`).
            std::thread::park_timeout(backstop);
            continue;
        }
        let next = d.start_of(now + 1);
        drop(d);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// A round trip that never answers fails between 3/4 of its time and (the watchdog's
    /// wake allowing) not much after all of it; one that answers is untouched. On a
    /// current-thread runtime, whose timers play no part.
    #[tokio::test(flavor = "current_thread")]
    async fn a_pending_operation_fails_within_its_time() {
        let deadlines = Deadlines::new(Duration::from_millis(40));
        assert_eq!(deadlines.bound(async { 7 }).await.ok(), Some(7));
        for _ in 0..3 {
            let started = Instant::now();
            let out = deadlines.bound(core::future::pending::<()>()).await;
            let took = started.elapsed();
            assert!(out.is_err());
            assert!(took >= Duration::from_millis(29), "{took:?}");
            assert!(took < Duration::from_secs(1), "{took:?}");
        }
        // After an idle spell (the watchdog parked), the next one is bounded as well.
        std::thread::sleep(Duration::from_millis(150));
        let started = Instant::now();
        assert!(deadlines
            .bound(core::future::pending::<()>())
            .await
            .is_err());
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    /// An operation whose unpark of the parked watchdog is lost (emulated: the `parked` flag
    /// taken, as an operation's `start` takes it, and no unpark) still fails within a few
    /// `op_timeout`s: the parked watchdog looks again every `op_timeout` (at least
    /// `BACKSTOP_FLOOR`) on its own.
    #[tokio::test(flavor = "current_thread")]
    async fn an_operation_whose_unpark_is_lost_still_fails_in_time() {
        let deadlines = Deadlines::new(Duration::from_millis(40));
        assert_eq!(deadlines.bound(async { 7 }).await.ok(), Some(7));
        // Bounded: the watchdog parks two `op_timeout`s after that operation.
        let parks = async {
            while !deadlines.epochs.parked() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), parks)
            .await
            .expect("the watchdog parks when idle");
        // What an operation's `start` does when it finds the watchdog parked, without the
        // unpark that follows it.
        let epoch = deadlines.epoch_at(Instant::now());
        assert!(deadlines.epochs.start(epoch));
        let started = Instant::now();
        let out = tokio::time::timeout(
            Duration::from_secs(5),
            deadlines.bound(core::future::pending::<()>()),
        )
        .await;
        let took = started.elapsed();
        assert!(matches!(out, Ok(Err(Elapsed))), "not bounded: {took:?}");
        assert!(took < Duration::from_secs(2), "{took:?}");
    }
}
