//! Two small spin locks, [`SpinMutex`] and [`SpinRwLock`]: a building block for the layers
//! above this crate, not a general-purpose lock.
//!
//! # Why it is public
//!
//! `deferred-map` keeps its shards behind a [`SpinRwLock`] (and so `deferred-cache` and
//! `deferred-expiring`, built on it, do too). Those crates are `#![forbid(unsafe_code)]`,
//! and a lock that hands out `&mut T` needs `unsafe` (an `UnsafeCell` and `unsafe impl
//! Sync`); the map must also build without `std`, where `std::sync` does not exist. So the
//! locks live here, with the rest of the workspace's `unsafe`, checked by the same loom
//! models and miri runs (`tests/loom.rs`, `tests/sync.rs`), and are public so that the
//! crates above can use them. Anyone else may use them too, knowing what they are and are
//! not (below).
//!
//! # What they are not
//!
//! - **Not for long critical sections, nor for user code.** A contender never sleeps or
//!   parks: it backs off with [`crossbeam_utils::Backoff::snooze`], seven rounds of 1, 2,
//!   4 … 64 spin hints, then, with `std`, one `std::thread::yield_now` per try for as long
//!   as the lock is held; without `std` it keeps spinning, in rounds of up to 2048 hints. A
//!   holder that blocks, sleeps or runs long keeps every contender busy on its core. Hold
//!   one for a few instructions (a hash-table probe), never around code you do not control.
//! - **Not fair.** No queue: whoever's compare-and-swap lands first gets it. [`SpinRwLock`]
//!   only keeps a waiting writer from being starved by a stream of new readers.
//! - **Not poisoned.** A closure that panics releases the lock on unwinding, and the next
//!   holder sees the value as the panic left it: keep it consistent at every step.
//! - **Not re-entrant.** Taking a lock again inside its own closure (a `write` inside a
//!   `read` or `write` of the same [`SpinRwLock`], a `with` inside a `with`) spins for ever.
//! - **No guards, no `try_lock`, no time-outs.** The value is reached only through a
//!   closure, so no guard can be held across an `.await` or leaked.
//! - **Not for interrupt handlers** on `no_std`: a handler that spins on a lock held by the
//!   code it interrupted never returns (see "Interrupts and single-core `no_std`" in the
//!   README).
//!
//! # Stability
//!
//! The module is covered by semver like the rest of the crate: [`SpinMutex`] and
//! [`SpinRwLock`], their constructors and closure methods, and the guarantees above will
//! not change in a patch or minor release. How they spin, how they are laid out, and
//! whether the crates above keep using them are not part of that promise (another lock can
//! replace them in `deferred-map` without a major release of this crate).

use core::fmt;

use crossbeam_utils::Backoff;

#[cfg(loom)]
use crate::loom::Gate;
use crate::loom::{AtomicUsize, LockWaits, Ordering::*, UnsafeCell};

/// A spin lock for critical sections of a few instructions (a hash-table probe), usable
/// without `std`.
///
/// The value is reached through a closure ([`with`](Self::with)), so no guard can be held
/// across an `.await` or leak. A contender spins a few rounds and then, on `std`, yields its
/// thread ([`crossbeam_utils::Backoff::snooze`]): the spinning is bounded. Never run user
/// code that can block or take long inside `with`. If the closure panics, the lock is
/// released (it is not poisoned: keep the value consistent at every step, as the hash
/// tables here do).
///
/// ```
/// use deferred_core::sync::SpinMutex;
/// let counter = SpinMutex::new(0);
/// counter.with(|n| *n += 1);
/// assert_eq!(counter.with(|n| *n), 1);
/// ```
pub struct SpinMutex<T> {
    locked: AtomicUsize,
    value: UnsafeCell<T>,
    /// Where contenders wait (nothing, outside loom: see `LockWaits`).
    waits: LockWaits,
    /// Under loom a gate that stands for the spin lock (see `with`), unless made by
    /// `new_unmodelled`.
    #[cfg(loom)]
    model: Option<Gate>,
}

// SAFETY: the lock hands out `&mut T` to one thread at a time, so sharing the mutex moves
// access to `T` between threads: `T: Send` is what that needs (as for `std::sync::Mutex`).
unsafe impl<T: Send> Sync for SpinMutex<T> {}
// SAFETY: owning the mutex is owning the `T`.
unsafe impl<T: Send> Send for SpinMutex<T> {}

impl<T> SpinMutex<T> {
    /// A new, unlocked mutex holding `value`.
    ///
    /// ```
    /// use deferred_core::sync::SpinMutex;
    /// static NAMES: SpinMutex<Vec<&str>> = SpinMutex::new(Vec::new());
    /// NAMES.with(|v| v.push("a"));
    /// ```
    #[cfg(not(loom))]
    pub const fn new(value: T) -> Self {
        SpinMutex {
            locked: AtomicUsize::new(0),
            value: UnsafeCell::new(value),
            waits: LockWaits::new(),
        }
    }

    /// A new, unlocked mutex holding `value` (loom's atomics are not `const`).
    #[cfg(loom)]
    pub fn new(value: T) -> Self {
        SpinMutex {
            locked: AtomicUsize::new(0),
            value: UnsafeCell::new(value),
            waits: LockWaits::new(),
            model: Some(Gate::default()),
        }
    }

    /// Under loom only: a mutex with no gate in front of the spin lock, so that a model
    /// explores the spin lock's own protocol (`tests/loom.rs`).
    #[cfg(loom)]
    #[doc(hidden)]
    pub fn new_unmodelled(value: T) -> Self {
        SpinMutex {
            locked: AtomicUsize::new(0),
            value: UnsafeCell::new(value),
            waits: LockWaits::new(),
            model: None,
        }
    }

    /// Runs `f` with exclusive access to the value, waiting for the lock if needed.
    ///
    /// ```
    /// use deferred_core::sync::SpinMutex;
    /// let m = SpinMutex::new(vec![1]);
    /// let len = m.with(|v| {
    ///     v.push(2);
    ///     v.len()
    /// });
    /// assert_eq!(len, 2);
    /// ```
    #[inline]
    pub fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        // Under loom, the layers above are modelled with a blocking gate in front of the
        // spin lock (`loom::Gate`; not a loom `Mutex`, which a panicking closure would
        // poison for the rest of the model): the protocols built on top are what their models
        // check, not every way two threads meet inside the lock. The gate stands for the
        // lock there: its Acquire and Release order the holders' accesses to the value for
        // loom, and the spin protocol (checked on its own by the `new_unmodelled` models) is
        // skipped, as it would only add operations whose outcome is fixed.
        #[cfg(loom)]
        let _model = self.model.as_ref().map(Gate::enter);
        let _unlock = (!self.gated()).then(|| {
            self.acquire();
            Unlock(self)
        });
        // SAFETY: `acquire` gave this thread the lock (under loom, the gate may stand for
        // it), held until `_unlock` and `_model` drop (also on unwinding), so no other
        // `&mut T` exists meanwhile.
        self.value.with_mut(|value| f(unsafe { &mut *value }))
    }

    /// Mutable access without locking: `&mut self` proves no one else can lock.
    ///
    /// ```
    /// use deferred_core::sync::SpinMutex;
    /// let mut m = SpinMutex::new(1);
    /// *m.get_mut() += 1;
    /// assert_eq!(m.with(|n| *n), 2);
    /// ```
    pub fn get_mut(&mut self) -> &mut T {
        // SAFETY: `&mut self` excludes every other access.
        self.value.with_mut(|value| unsafe { &mut *value })
    }

    /// Whether a loom gate stands for this lock (never, outside loom): then the spin
    /// protocol is skipped (see `with`).
    #[inline(always)]
    fn gated(&self) -> bool {
        #[cfg(loom)]
        {
            self.model.is_some()
        }
        #[cfg(not(loom))]
        false
    }

    #[inline]
    fn acquire(&self) {
        // Acquire: pairs with the Release in `Unlock::drop`, so the last holder's writes to
        // the value are visible.
        if self.locked.compare_exchange(0, 1, Acquire, Relaxed).is_ok() {
            return;
        }
        let backoff = Backoff::new();
        loop {
            self.waits
                .contended(&backoff, || crate::loom::spin_load(&self.locked) != 0);
            if crate::loom::spin_load(&self.locked) == 0
                && self.locked.compare_exchange(0, 1, Acquire, Relaxed).is_ok()
            {
                return;
            }
        }
    }
}

struct Unlock<'a, T>(&'a SpinMutex<T>);

impl<T> Drop for Unlock<'_, T> {
    #[inline]
    fn drop(&mut self) {
        // Release: pairs with the Acquire in `acquire`.
        #[cfg(not(loom))]
        self.0.locked.store(0, Release);
        // Under loom a swap, which orders the same way: loom keeps the order of writes to
        // one atomic partial, so a plain store and a contender's `spin_load` (a
        // read-modify-write that read the held lock) come out unordered, and loom then lets
        // the contender's later reads return its own stale write for ever after the store
        // (a deadlock no hardware has: there the order is total and the store comes last).
        #[cfg(loom)]
        self.0.locked.swap(0, Release);
        self.0.waits.released();
    }
}

impl<T: Default> Default for SpinMutex<T> {
    fn default() -> Self {
        Self::new(T::default())
    }
}

impl<T> fmt::Debug for SpinMutex<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpinMutex")
            .field("locked", &(self.locked.load(Relaxed) != 0))
            .finish_non_exhaustive()
    }
}

/// A reader-writer spin lock for short critical sections, usable without `std`: any number
/// of readers at once, or one writer. The map's shards use it so that readers of one shard
/// do not wait for each other.
///
/// As [`SpinMutex`], the value is reached through closures ([`read`](Self::read),
/// [`write`](Self::write)), so no guard can be held across an `.await`; waiting spins a few
/// rounds and then yields the thread on `std` (bounded spinning); a panicking closure
/// releases the lock without poisoning it. A waiting writer holds off new readers, so a
/// stream of readers cannot starve it.
///
/// ```
/// use deferred_core::sync::SpinRwLock;
/// let lock = SpinRwLock::new(vec![1]);
/// lock.write(|v| v.push(2));
/// assert_eq!(lock.read(|v| v.len()), 2);
/// ```
pub struct SpinRwLock<T> {
    /// WRITER | WAITING | readers × READER.
    state: AtomicUsize,
    value: UnsafeCell<T>,
    /// Where contenders wait (nothing, outside loom: see `LockWaits`).
    waits: LockWaits,
    /// Under loom a gate in front of the lock, for readers too (see `SpinMutex::with`):
    /// one holder at a time keeps the interleavings of the models above down, and what the
    /// layers above need checked is their own protocol. The gate stands for the lock (its
    /// Acquire and Release order the holders for loom) and the spin protocol is skipped.
    /// `None` if made by `new_unmodelled`: then readers and writers meet in the protocol.
    #[cfg(loom)]
    model: Option<Gate>,
}

// `LockWaits` is zero-sized outside loom: each lock is still one word beside its value.
#[cfg(not(loom))]
const _: () = {
    use core::mem::size_of;
    assert!(size_of::<SpinMutex<usize>>() == 2 * size_of::<usize>());
    assert!(size_of::<SpinRwLock<usize>>() == 2 * size_of::<usize>());
};

/// A writer holds the lock.
const WRITER: usize = 1;
/// A writer waits: no new reader may enter.
const WAITING: usize = 2;
/// One reader.
const READER: usize = 4;

// SAFETY: readers share `&T` across threads (`T: Sync`), and a writer gets `&mut T` on any
// thread (`T: Send`), one at a time, as for `std::sync::RwLock`.
unsafe impl<T: Send + Sync> Sync for SpinRwLock<T> {}
// SAFETY: owning the lock is owning the `T`.
unsafe impl<T: Send> Send for SpinRwLock<T> {}

impl<T> SpinRwLock<T> {
    /// A new, unlocked lock holding `value`.
    ///
    /// ```
    /// use deferred_core::sync::SpinRwLock;
    /// static COUNT: SpinRwLock<u32> = SpinRwLock::new(0);
    /// COUNT.write(|n| *n += 1);
    /// ```
    #[cfg(not(loom))]
    pub const fn new(value: T) -> Self {
        SpinRwLock {
            state: AtomicUsize::new(0),
            value: UnsafeCell::new(value),
            waits: LockWaits::new(),
        }
    }

    /// A new, unlocked lock holding `value` (loom's atomics are not `const`).
    #[cfg(loom)]
    pub fn new(value: T) -> Self {
        SpinRwLock {
            state: AtomicUsize::new(0),
            value: UnsafeCell::new(value),
            waits: LockWaits::new(),
            model: Some(Gate::default()),
        }
    }

    /// Under loom only: a lock with no gate in front of the spin protocol, so that a model
    /// explores the protocol itself, writer preference included (`tests/loom.rs`).
    #[cfg(loom)]
    #[doc(hidden)]
    pub fn new_unmodelled(value: T) -> Self {
        SpinRwLock {
            state: AtomicUsize::new(0),
            value: UnsafeCell::new(value),
            waits: LockWaits::new(),
            model: None,
        }
    }

    /// Runs `f` with shared access to the value, alongside other readers.
    ///
    /// ```
    /// use deferred_core::sync::SpinRwLock;
    /// let lock = SpinRwLock::new(3);
    /// assert_eq!(lock.read(|n| *n * 2), 6);
    /// ```
    #[inline]
    pub fn read<R>(&self, f: impl FnOnce(&T) -> R) -> R {
        // Under loom, the gate in front stands for the lock (see `model`).
        #[cfg(loom)]
        let _model = self.model.as_ref().map(Gate::enter);
        let _unlock = (!self.gated()).then(|| {
            self.acquire_read();
            ReadUnlock(self)
        });
        // SAFETY: a read lock (under loom, maybe the gate) is held until `_unlock` and
        // `_model` drop (also on unwinding): no writer has `&mut T` meanwhile, and readers
        // only get `&T`.
        self.value.with(|value| f(unsafe { &*value }))
    }

    /// Runs `f` with exclusive access to the value.
    ///
    /// ```
    /// use deferred_core::sync::SpinRwLock;
    /// let lock = SpinRwLock::new(3);
    /// lock.write(|n| *n += 1);
    /// assert_eq!(lock.read(|n| *n), 4);
    /// ```
    #[inline]
    pub fn write<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        // Under loom, the gate in front stands for the lock (see `model`).
        #[cfg(loom)]
        let _model = self.model.as_ref().map(Gate::enter);
        let _unlock = (!self.gated()).then(|| {
            self.acquire_write();
            WriteUnlock(self)
        });
        // SAFETY: the write lock (under loom, maybe the gate) is held until `_unlock` and
        // `_model` drop (also on unwinding): no other `&T` or `&mut T` exists meanwhile.
        self.value.with_mut(|value| f(unsafe { &mut *value }))
    }

    /// Mutable access without locking: `&mut self` proves no one else can lock.
    ///
    /// ```
    /// use deferred_core::sync::SpinRwLock;
    /// let mut lock = SpinRwLock::new(1);
    /// *lock.get_mut() += 1;
    /// assert_eq!(lock.read(|n| *n), 2);
    /// ```
    pub fn get_mut(&mut self) -> &mut T {
        // SAFETY: `&mut self` excludes every other access.
        self.value.with_mut(|value| unsafe { &mut *value })
    }

    /// Whether a loom gate stands for this lock (never, outside loom): then the spin
    /// protocol is skipped (see `with`).
    #[inline(always)]
    fn gated(&self) -> bool {
        #[cfg(loom)]
        {
            self.model.is_some()
        }
        #[cfg(not(loom))]
        false
    }

    #[inline]
    fn acquire_read(&self) {
        let mut state = self.state.load(Relaxed);
        let backoff = Backoff::new();
        loop {
            if state & (WRITER | WAITING) == 0 {
                // Acquire: pairs with the Release in `WriteUnlock::drop`, so the last
                // writer's changes are visible.
                match self
                    .state
                    .compare_exchange_weak(state, state + READER, Acquire, Relaxed)
                {
                    Ok(_) => return,
                    Err(actual) => {
                        state = actual;
                        continue;
                    }
                }
            }
            self.waits.contended(&backoff, || {
                crate::loom::spin_load(&self.state) & (WRITER | WAITING) != 0
            });
            state = crate::loom::spin_load(&self.state);
        }
    }

    #[inline]
    fn acquire_write(&self) {
        // Acquire: pairs with the Release in `WriteUnlock::drop` and `ReadUnlock::drop`,
        // so the last writer's changes are visible and every reader is done reading.
        if self
            .state
            .compare_exchange(0, WRITER, Acquire, Relaxed)
            .is_ok()
        {
            return;
        }
        let backoff = Backoff::new();
        loop {
            let state = crate::loom::spin_load(&self.state);
            if state & WRITER == 0 && state < READER {
                // No writer, no reader: take it, clearing WAITING (a writer still waiting
                // sets it again). Acquire: as above.
                if self
                    .state
                    .compare_exchange(state, WRITER, Acquire, Relaxed)
                    .is_ok()
                {
                    return;
                }
                continue;
            }
            if state & WAITING == 0 {
                // Relaxed: only a hint that holds new readers off; the lock itself is
                // taken by the CAS above.
                self.state.fetch_or(WAITING, Relaxed);
            }
            self.waits.contended(&backoff, || {
                let state = crate::loom::spin_load(&self.state);
                state & WRITER != 0 || state >= READER
            });
        }
    }
}

struct ReadUnlock<'a, T>(&'a SpinRwLock<T>);

impl<T> Drop for ReadUnlock<'_, T> {
    #[inline]
    fn drop(&mut self) {
        // Release: pairs with the Acquire in `acquire_write`, so this reader's reads happen
        // before the next writer's writes.
        self.0.state.fetch_sub(READER, Release);
        self.0.waits.released();
    }
}

struct WriteUnlock<'a, T>(&'a SpinRwLock<T>);

impl<T> Drop for WriteUnlock<'_, T> {
    #[inline]
    fn drop(&mut self) {
        // Release: pairs with the Acquires in `acquire_read` and `acquire_write`. An RMW,
        // not a store: a waiting writer's WAITING bit must survive.
        self.0.state.fetch_and(!WRITER, Release);
        self.0.waits.released();
    }
}

impl<T: Default> Default for SpinRwLock<T> {
    fn default() -> Self {
        Self::new(T::default())
    }
}

impl<T> fmt::Debug for SpinRwLock<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state.load(Relaxed);
        f.debug_struct("SpinRwLock")
            .field("writer", &(state & WRITER != 0))
            .field("readers", &(state / READER))
            .finish_non_exhaustive()
    }
}
