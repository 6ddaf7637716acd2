//! The one place that chooses between `loom`'s instrumented primitives and the real ones.
//!
//! Everything in this crate that is shared between threads goes through this module, so
//! that `cargo xtask test-loom` (which builds with `--cfg loom`) explores every interleaving
//! of every atomic access and checks every `UnsafeCell` access for data races.

#[cfg(loom)]
pub(crate) use loom::{
    cell::UnsafeCell,
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
};

#[cfg(all(not(loom), not(feature = "portable-atomic")))]
pub(crate) use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
// Cores without compare-and-swap (`thumbv6m-none-eabi`) have no read-modify-writes in
// `core`; portable-atomic makes them (in a critical section, or with interrupts masked) and
// is the native atomics where the target has them. `Ordering` is `core`'s own type.
#[cfg(all(not(loom), feature = "portable-atomic"))]
pub(crate) use portable_atomic::{AtomicBool, AtomicUsize, Ordering};

#[cfg(all(feature = "std", loom))]
pub(crate) use loom::thread;
#[cfg(all(feature = "std", not(loom)))]
pub(crate) use std::thread;

/// `core::cell::UnsafeCell` with loom's closure-based API, so that the same code compiles
/// under both configurations.
#[cfg(not(loom))]
#[derive(Debug)]
#[repr(transparent)]
pub(crate) struct UnsafeCell<T>(core::cell::UnsafeCell<T>);

#[cfg(not(loom))]
impl<T> UnsafeCell<T> {
    #[inline(always)]
    pub(crate) const fn new(value: T) -> Self {
        Self(core::cell::UnsafeCell::new(value))
    }

    /// Runs `f` with a shared raw pointer to the contents.
    #[inline(always)]
    pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }

    /// Runs `f` with a unique raw pointer to the contents.
    #[inline(always)]
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}

/// Where the contenders of one spin lock wait for it.
///
/// On real hardware (and outside loom) a contender spins with backoff and then yields its
/// thread ([`backoff`]): the lock is held for O(1) pointer writes, the holder runs, and the
/// contender gets in. loom assumes no fairness: with two contenders yielding to each other
/// it explores schedules where the preempted holder never runs again, an endless path that
/// says nothing about the protocol and exhausts loom's branch limit (at three preemptions a
/// model with three threads reaches it). Under loom a contender therefore blocks until the
/// lock is released, which loom schedules fairly; every access to the lock word itself (the
/// CAS that takes it, the one that releases it) is still the real one.
#[cfg(not(loom))]
#[derive(Debug, Default)]
pub(crate) struct LockWaits;

#[cfg(not(loom))]
impl LockWaits {
    pub(crate) const fn new() -> Self {
        LockWaits
    }

    /// Waits a little: spins, then yields the thread (`std`). The caller re-reads the lock.
    #[inline]
    pub(crate) fn contended(
        &self,
        backoff: &crossbeam_utils::Backoff,
        _is_locked: impl Fn() -> bool,
    ) {
        backoff.snooze();
    }

    /// The lock was released.
    #[inline(always)]
    pub(crate) fn released(&self) {}
}

/// See the non-loom `LockWaits`. Contenders park (loom's `park`/`unpark`) and list
/// themselves in a std mutex, which loom does not see: loom runs one thread at a time and
/// switches only at its own operations, none of which happen while that mutex is held. No
/// loom `Mutex` here: the lock is released during unwinding too (a waiting future dropped by a
/// panic), and a loom mutex guard dropped while panicking poisons it for good.
///
/// A contender parks on its thread's one park token, which the code around the lock may use
/// too (a blocking wait parks on it, a waker unparks it). Two rules keep the lock's waits
/// from changing what that code sees, as on hardware, where a contender only spins and
/// yields and never touches the token:
/// - a releaser unparks only the contenders that are parked (marked just before `park`,
///   with no loom operation between the mark and the park), so no unpark of the lock's is
///   left over as a token for a later `park` of the caller's (which would hide a lost
///   wake-up there);
/// - a contender whose `park` returned with no releaser behind it used up an unpark meant
///   for the caller (loom keeps no token for a blocked thread: the unpark just ends its
///   `park`), and unparks itself before it returns, so the caller's next `park` still sees
///   it (a lost token would be a deadlock no hardware has).
#[cfg(loom)]
#[derive(Debug, Default)]
pub(crate) struct LockWaits {
    contenders: std::sync::Mutex<std::vec::Vec<Contender>>,
}

/// A listed contender: its thread, and whether it is parked (or about to, with no loom
/// operation left before its `park`).
#[cfg(loom)]
#[derive(Debug)]
struct Contender {
    thread: loom::thread::Thread,
    parked: bool,
}

#[cfg(loom)]
impl LockWaits {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    fn contenders(&self) -> std::sync::MutexGuard<'_, std::vec::Vec<Contender>> {
        self.contenders
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Blocks while `is_locked` returns true. It must read the latest value of the lock word,
    /// or be an attempt to take the lock (then this returns with the lock taken).
    pub(crate) fn contended(
        &self,
        _backoff: &crossbeam_utils::Backoff,
        is_locked: impl Fn() -> bool,
    ) {
        let me = loom::thread::current();
        // Whether a `park` here ended by an unpark meant for the caller (see the type).
        let mut owed = false;
        loop {
            // Listed before the lock word is read, and the releaser takes the list after it
            // cleared the word: either the check below sees the lock free, or this contender
            // is on the list the releaser takes, parked.
            {
                let mut contenders = self.contenders();
                if !contenders.iter().any(|c| c.thread.id() == me.id()) {
                    contenders.push(Contender {
                        thread: me.clone(),
                        parked: false,
                    });
                }
            }
            if !is_locked() {
                self.contenders().retain(|c| c.thread.id() != me.id());
                if owed {
                    me.unpark();
                }
                return;
            }
            // No loom operation from here to the `park`: a releaser sees this mark only
            // once this thread is blocked in it. (Still listed: a releaser takes only the
            // parked contenders.)
            if let Some(c) = self
                .contenders()
                .iter_mut()
                .find(|c| c.thread.id() == me.id())
            {
                c.parked = true;
            }
            loom::thread::park();
            // Still listed as parked: no releaser took the list, so another thread's unpark
            // (or a token it left earlier) ended the `park`. A releaser that took the list
            // unparked this thread itself; if another unpark came too, loom kept one of the
            // two as a token, and the caller gets it.
            let mut contenders = self.contenders();
            if let Some(c) = contenders.iter_mut().find(|c| c.thread.id() == me.id()) {
                if c.parked {
                    owed = true;
                    c.parked = false;
                }
            }
        }
    }

    /// The lock was released: wake the parked contenders, taking them off the list. Those
    /// listed but not parked have not read the lock word yet and stay listed: what they read
    /// may still say "wait" (a reader-writer lock's WAITING bit, other readers), and then
    /// they park, to be woken by a later release.
    pub(crate) fn released(&self) {
        let mut woken = std::vec::Vec::new();
        self.contenders().retain(|c| {
            if c.parked {
                woken.push(c.thread.clone());
            }
            !c.parked
        });
        for thread in woken {
            thread.unpark();
        }
    }
}

/// Under loom only: what `SpinMutex` and `SpinRwLock` put in front of their spin protocol
/// (unless made by `new_unmodelled`), so that the models of the layers above explore their
/// own protocols rather than every way two threads can meet inside a lock: one holder at a
/// time, readers included. That removes schedules hardware allows: two read sections that
/// overlap (a cache hit's use counter, a load then a store under the read lock, can lose an
/// increment to a second hit; under the gate it never does). No model above asserts on what
/// two overlapping readers do; a protocol that comes to depend on it needs a model with
/// `new_unmodelled` locks (see the core README, "What the models do not see").
///
/// The gate's flag is a loom atomic, so taking the gate is one of loom's operations: loom may
/// switch threads right before it, and another thread may take the lock between this thread's
/// previous operation and its lock. An earlier gate kept its flag in a std mutex loom could not
/// see, taken between two loom operations: the lock then went, in effect, to whichever thread
/// had run last before it, and the models of the layers above lost every schedule in which a
/// second thread takes the lock first (a cache race that failed at two preemptions passed
/// under it). Not a loom `Mutex` either: a loom mutex guard keeps a std mutex guard inside,
/// so a guard dropped while a panic unwinds (a map's user code that panics under its shard
/// lock, caught by the model) poisons it, and the next `lock` in the model panics; an atomic
/// flag cannot be poisoned. Contenders park through [`LockWaits`].
///
/// The gate stands for the lock: taking it is an Acquire, releasing it a Release, so one
/// holder's accesses to the value happen before the next one's, and the spin protocol behind
/// it is skipped (it is checked on its own, with no gate, by the `new_unmodelled` models).
/// Running it too would add four operations per critical section whose outcome is fixed
/// (nothing contends behind the gate), and every added operation multiplies the schedules
/// loom explores in the models above.
#[cfg(loom)]
#[derive(Debug)]
pub(crate) struct Gate {
    held: AtomicBool,
    waits: LockWaits,
}

#[cfg(loom)]
impl Default for Gate {
    fn default() -> Self {
        Self {
            held: AtomicBool::new(false),
            waits: LockWaits::new(),
        }
    }
}

#[cfg(loom)]
impl Gate {
    /// Takes the gate, parking while someone else holds it; released when the guard drops,
    /// unwinding included.
    pub(crate) fn enter(&self) -> GateGuard<'_> {
        // Acquire: pairs with the Release in `GateGuard::drop`, so the last holder's
        // accesses to the lock's value happen before this holder's. A compare-and-swap reads
        // the latest value of the flag, so a free gate is never seen as held.
        let take = || {
            self.held
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
        };
        if !take() {
            // Parks until a retry takes the gate. The retry is the compare-and-swap itself,
            // not a `fetch_or(false)` re-read: that read-modify-write stores `true` again, and
            // loom does not order the store with a holder's release that did not see it, so
            // a later read-modify-write may read it back after the release: a deadlock that no
            // hardware has.
            self.waits
                .contended(&crossbeam_utils::Backoff::new(), || !take());
        }
        GateGuard(self)
    }
}

/// Holds a [`Gate`]; dropping it (also while unwinding) lets the next holder in.
#[cfg(loom)]
#[derive(Debug)]
pub(crate) struct GateGuard<'a>(&'a Gate);

#[cfg(loom)]
impl Drop for GateGuard<'_> {
    fn drop(&mut self) {
        // Release: pairs with the Acquire in `Gate::enter`. A swap rather than a store, as
        // in `SpinMutex`'s unlock: loom orders a plain store only partially against other
        // threads' read-modify-writes of the flag. Cleared before the contenders are listed
        // and unparked (`LockWaits`).
        self.0.held.swap(false, Ordering::Release);
        self.0.waits.released();
    }
}

/// Waits a little before the caller retries a short spin (an attacher of a `Lazy`
/// computation waiting for another attacher, a hold of a few instructions). On `std`,
/// `Backoff::snooze` spins a few rounds and then yields the thread to the OS, so a holder
/// that was preempted gets to run: the spin is bounded. Under loom it yields so that the model
/// checker schedules the holder. The locks wait through [`LockWaits`] instead.
#[cfg(feature = "alloc")]
#[inline]
pub(crate) fn backoff(backoff: &crossbeam_utils::Backoff) {
    #[cfg(loom)]
    {
        let _ = backoff;
        loom::thread::yield_now();
    }
    #[cfg(not(loom))]
    backoff.snooze();
}

/// Re-reads `atomic` after a backoff, in a spin wait.
///
/// Hardware makes every store visible to a spinning reader eventually; loom cannot model
/// "eventually" and lets a Relaxed load in a loop read the same stale value forever, which
/// turns every spin into an unbounded branch. Under loom the re-read is a read-modify-write
/// that changes nothing (`fetch_or(0)`), which reads the latest value, as the spin would
/// on real hardware after a while.
#[inline(always)]
pub(crate) fn spin_load(atomic: &AtomicUsize) -> usize {
    #[cfg(loom)]
    {
        atomic.fetch_or(0, Ordering::Relaxed)
    }
    #[cfg(not(loom))]
    atomic.load(Ordering::Relaxed)
}
