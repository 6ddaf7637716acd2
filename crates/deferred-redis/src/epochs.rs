//! The atomic protocols between a cache's Redis operations and its watchdog thread
//! (`deadline`), with time as epochs passed in: std's atomics, loom's under `--cfg loom`,
//! where the loom models of `rev7` run them as they are.

use std::sync::atomic::Ordering::SeqCst;

use crate::loom::{AtomicBool, AtomicU64};

/// Ticks per `op_timeout`.
pub(crate) const TICKS: u64 = 4;

/// The ring of epochs' `Notify`s: more than `TICKS`, so that one is fired before it is used
/// again (a wake that comes early, from a late watchdog, is checked and waited again).
pub(crate) const SLOTS: u64 = 8;

/// The operation ran past its time.
#[derive(Debug)]
pub(crate) struct Elapsed;

/// The atomic protocols between the operations and the watchdog, with time as epochs passed
/// in (so that the loom models of `rev7` run them as they are).
pub(crate) struct Epochs {
    /// The last epoch the watchdog published (`u64::MAX` before the first).
    published: AtomicU64,
    /// The epoch of the last operation that started.
    last_start: AtomicU64,
    /// Whether the watchdog is parked (or about to park): the next operation unparks it.
    parked: AtomicBool,
}

impl Epochs {
    pub(crate) fn new() -> Self {
        Self {
            published: AtomicU64::new(u64::MAX),
            last_start: AtomicU64::new(0),
            parked: AtomicBool::new(false),
        }
    }

    /// An operation starts in `epoch`: whether it must unpark the watchdog.
    ///
    /// Against [`Epochs::may_park`], a store-buffering pair: this writes `last_start` then
    /// reads `parked`, the watchdog writes `parked` then reads `last_start`, all `SeqCst`, so
    /// at least one of them sees the other's write: the watchdog does not park, or this
    /// unparks it (`rev7::an_operation_starting_as_the_watchdog_parks_unparks_it`).
    pub(crate) fn start(&self, epoch: u64) -> bool {
        // Mostly loads: the first operation of an epoch writes it, the first after an idle
        // spell unparks the watchdog.
        if self.last_start.load(SeqCst) < epoch {
            self.last_start.fetch_max(epoch, SeqCst);
        }
        self.parked.load(SeqCst) && self.parked.swap(false, SeqCst)
    }

    /// Whether an operation that started in `epoch` is past its time.
    pub(crate) fn expired(&self, epoch: u64) -> bool {
        let published = self.published.load(SeqCst);
        published != u64::MAX && published >= epoch.saturating_add(TICKS)
    }

    /// The wait of an operation of `epoch` (`register`: its slot's `notified()`), or `Elapsed`
    /// if it is past its time. Registered before the check: a wake after the check is not
    /// missed, and the epoch published before one before it is seen by the check
    /// (`rev7::a_wake_as_an_operation_arms_is_not_lost`).
    pub(crate) fn arm<N>(&self, epoch: u64, register: impl FnOnce() -> N) -> Result<N, Elapsed> {
        let wait = register();
        if self.expired(epoch) {
            return Err(Elapsed);
        }
        Ok(wait)
    }

    /// Publishes `now`, then `fire`s the epochs that it puts past their time (`fired`: the
    /// last epoch fired so far, or `None`), at most [`SLOTS`] of them (one per slot).
    pub(crate) fn tick(&self, now: u64, fired: &mut Option<u64>, mut fire: impl FnMut(u64)) {
        self.published.store(now, SeqCst);
        let Some(due) = now.checked_sub(TICKS) else {
            return;
        };
        let first = fired
            .map_or(0, |f| f + 1)
            .max(due.saturating_sub(SLOTS - 1));
        for epoch in first..=due {
            fire(epoch);
        }
        *fired = Some(due);
    }

    /// Whether the watchdog, at `now`, may park: no operation started for two `op_timeout`s
    /// before (so none is running), and none since it said it parks (one that did saw
    /// `parked` and unparks it).
    pub(crate) fn may_park(&self, now: u64) -> bool {
        if !self.idle(now) {
            return false;
        }
        self.parked.store(true, SeqCst);
        if self.idle(now) {
            return true;
        }
        self.parked.store(false, SeqCst);
        false
    }

    /// Whether the watchdog said it parks (for `deadline`'s tests).
    #[cfg(all(test, not(loom)))]
    pub(crate) fn parked(&self) -> bool {
        self.parked.load(SeqCst)
    }

    /// Whether no operation started for two `op_timeout`s before `now`.
    fn idle(&self, now: u64) -> bool {
        self.last_start.load(SeqCst).saturating_add(2 * TICKS) < now
    }
}

/// Loom models of the two handshakes between the operations and the watchdog, run by
/// `cargo xtask test-loom` (`--lib epochs::rev7`). Time is epochs passed in; a `Notify` is
/// not loom's, so its count of `notify_waiters` calls stands for it: `notified()` reads it
/// (`SeqCst`) when made, `notify_waiters` adds to it (`SeqCst`), and a `Notified` made before
/// that call completes (tokio 1.47's `sync/notify.rs`).
#[cfg(all(test, loom))]
mod rev7 {
    use std::sync::atomic::Ordering::SeqCst;

    use loom::{sync::Arc, thread};

    use super::{Epochs, TICKS};
    use crate::loom::AtomicU64;

    /// The last epoch an operation started in before the model: the watchdog, at
    /// `IDLE_AT`, is idle.
    const IDLE_AT: u64 = 2 * TICKS + 1;

    /// New epochs whose first values are `SeqCst` stores: loom makes an atomic's first value
    /// a `Release` store, which a `SeqCst` load may read after a `SeqCst` store (loom's
    /// "SeqCst accesses are regarded as AcqRel"), a false alarm on a store-buffering pair;
    /// in C11 the first value happens before every access, so it is never read then.
    fn epochs() -> Arc<Epochs> {
        let epochs = Epochs::new();
        epochs.published.store(u64::MAX, SeqCst);
        epochs.last_start.store(0, SeqCst);
        epochs.parked.store(false, SeqCst);
        Arc::new(epochs)
    }

    /// The watchdog as `watch` runs it, from epoch `now` on: a tick, parked while
    /// `may_park`, one epoch later after each wake (a park may wake for nothing, as std's
    /// may); it ends once it published `until`.
    fn watchdog(epochs: &Epochs, mut now: u64, until: u64) {
        let mut fired = None;
        loop {
            epochs.tick(now, &mut fired, |_| {});
            if now >= until {
                return;
            }
            if epochs.may_park(now) {
                thread::park();
            }
            now += 1;
        }
    }

    /// An operation starts (in the epoch the watchdog reached, or in one it has long
    /// passed, having read its clock and been descheduled) as the watchdog, idle, parks:
    /// the watchdog goes on until the operation's time is up, or the operation finds it
    /// up already. Parked for good, it would never end: loom reports the deadlock.
    #[test]
    fn an_operation_starting_as_the_watchdog_parks_unparks_it() {
        for (first, second) in [(IDLE_AT, IDLE_AT), (IDLE_AT, 0)] {
            loom::model(move || {
                let epochs = epochs();
                let watchdog = {
                    let epochs = Arc::clone(&epochs);
                    thread::spawn(move || watchdog(&epochs, IDLE_AT, first + TICKS))
                };
                let unpark = |epoch| {
                    let epochs = Arc::clone(&epochs);
                    let watchdog = watchdog.thread().clone();
                    thread::spawn(move || {
                        if epochs.start(epoch) {
                            watchdog.unpark();
                        }
                    })
                };
                let ops = [unpark(first), unpark(second)];
                for op in ops {
                    op.join().unwrap();
                }
                watchdog.join().unwrap();
                assert!(epochs.expired(first) && epochs.expired(second));
            });
        }
    }

    /// The watchdog publishes an operation's time up and fires its slot as the operation
    /// arms its wait: the operation sees its time up, or is woken.
    #[test]
    fn a_wake_as_an_operation_arms_is_not_lost() {
        loom::model(|| {
            let epochs = epochs();
            let calls = Arc::new(AtomicU64::new(0));
            let watchdog = {
                let (epochs, calls) = (Arc::clone(&epochs), Arc::clone(&calls));
                thread::spawn(move || {
                    let mut fired = None;
                    for now in [TICKS - 1, TICKS] {
                        epochs.tick(now, &mut fired, |_| {
                            calls.fetch_add(1, SeqCst);
                        });
                    }
                })
            };
            let armed = epochs.arm(0, || calls.load(SeqCst));
            watchdog.join().unwrap();
            if let Ok(made_at) = armed {
                assert_ne!(calls.load(SeqCst), made_at, "a wake was lost");
            }
            assert!(epochs.expired(0));
        });
    }
}
