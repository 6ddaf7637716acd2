//! The cell itself: its state word, its payload, completion, probes, the lock over its wait
//! lists, and the drain that wakes them. The waiter protocol built on these is in `waiter`,
//! the claim hand-off in `claim`.

use core::{
    convert::Infallible,
    fmt,
    mem::{ManuallyDrop, MaybeUninit},
};

use crossbeam_utils::Backoff;

use crate::{
    list::{List, Notify, Status},
    loom::{AtomicUsize, LockWaits, Ordering::*, UnsafeCell},
    waiter::{on_unwind, Which},
    Error,
};

// The state word. Every transition is one atomic read-modify-write on it.
//
// WON     a completer has won the race and is writing (or has written) the payload.
// DONE    the payload and KIND are published; set once, after WON, with Release.
// KIND    which outcome (valid once DONE): OK, ERR, CANCELLED, PANICKED.
// LOCKED  the wait lists are being changed. Held for O(1) pointer writes, never across
//         user code (wakers, initializers, `Drop` of values).
// WAITERS / CLAIMANTS  the list of plain waiters / of waiting initializers is non-empty.
//         Changed only by the lock holder, as it unlocks, so a completer that sees both clear
//         knows there is no one to wake (see `unlock` for the one race this leaves).
// CLAIMED an initializer holds the right to complete the cell.
pub(crate) const WON: usize = 1;
pub(crate) const DONE: usize = 1 << 1;
const KIND_SHIFT: u32 = 2;
const KIND_MASK: usize = 0b11 << KIND_SHIFT;
const LOCKED: usize = 1 << 4;
const WAITERS: usize = 1 << 5;
const CLAIMANTS: usize = 1 << 6;
pub(crate) const CLAIMED: usize = 1 << 7;
// The two handles of a `Deferred::pair` (`pair.rs`); never set on any other cell. Each is set
// once, by the one read-modify-write with which its handle lets go of the cell; whoever sets
// the second frees it (or, seeing the other's already set, frees it without setting its own).
//
// COMPLETER_GONE  the completer has published (or cancelled) and touches the cell no more.
// AWAITER_GONE    the awaiter has been dropped and touches the cell no more.
// TAKEN           the awaiter moved the payload out: whoever frees the cell must not drop it.
#[cfg(feature = "alloc")]
pub(crate) const COMPLETER_GONE: usize = 1 << 8;
#[cfg(feature = "alloc")]
pub(crate) const AWAITER_GONE: usize = 1 << 9;
#[cfg(feature = "alloc")]
pub(crate) const TAKEN: usize = 1 << 10;

pub(crate) const OK: usize = 0;
pub(crate) const ERR: usize = 1;
pub(crate) const CANCELLED: usize = 2;
const PANICKED: usize = 3;

/// Whether a producer's work is wanted by no one now (`Producer::is_closed`): the cell is
/// complete or being completed (WON), or no node waits in either list. While the cell is
/// pending, closers (the producer's, and those of leaked `Closed` futures) are linked only
/// beside a node that is not a closer (see `take_lone_closers`), so the list bits alone tell.
#[inline]
pub(crate) fn is_closed(state: usize) -> bool {
    state & (WON | DONE) != 0 || state & (WAITERS | CLAIMANTS) == 0
}

/// How many waiters a completion wakes per lock acquisition. Small under loom so that the
/// models can span more than one batch with three waiters.
#[cfg(not(loom))]
pub(crate) const BATCH: usize = 32;
#[cfg(loom)]
pub(crate) const BATCH: usize = 2;

/// The cell's two wait lists. Guarded by LOCKED.
pub(crate) struct Lists {
    pub(crate) waiters: List,
    pub(crate) claimants: List,
}

impl Lists {
    pub(crate) fn get(&mut self, which: Which) -> &mut List {
        match which {
            Which::Waiters => &mut self.waiters,
            Which::Claimants => &mut self.claimants,
        }
    }

    fn bits(&self) -> usize {
        (if self.waiters.is_empty() { 0 } else { WAITERS })
            | (if self.claimants.is_empty() {
                0
            } else {
                CLAIMANTS
            })
    }
}

/// What [`Deferred::pair_complete`] did once it published.
#[cfg(feature = "alloc")]
pub(crate) enum PairPublished {
    /// Published and let go in one exchange (nothing was linked).
    LetGo,
    /// Published; the completer still holds the cell, drains it if `drain`, then lets go.
    Holding { drain: bool },
}

pub(crate) union Payload<T, E> {
    ok: ManuallyDrop<T>,
    err: ManuallyDrop<E>,
}

/// A cell that is completed at most once, with a value, an error, cancellation or a panic,
/// and that any number of tasks (and, with `std`, threads) can await.
///
/// See the [crate documentation](crate) for an overview.
///
/// # Interrupts
///
/// Without `std`, a contender for the cell's lock spins: it has no thread to yield. On one
/// core, never use a cell from an interrupt handler (or a higher-priority executor) in a way
/// that takes its lock if the code it interrupts may hold that lock: polling or dropping a
/// waiting future, [`on_complete`](Self::on_complete) (and disposing its handle), dropping a [`Claim`](crate::Claim)
/// without completing, or a completion that wins while something waits. Keep all use of one
/// cell at one priority level, or run the lower level's lock-taking operations inside
/// `critical_section::with`. The probes ([`try_get`](Self::try_get) and friends), a losing
/// completion, and a winning one with nothing waiting never take the lock, so they are safe
/// anywhere. The [crate documentation](crate#interrupts-and-single-core-no_std) lists every
/// case, with an example.
///
/// # Examples
///
/// ```
/// use deferred_core::Deferred;
///
/// static CONFIG: Deferred<&str> = Deferred::new();
///
/// # futures::executor::block_on(async {
/// assert!(CONFIG.succeed("prod").is_ok());
/// assert_eq!(CONFIG.succeed("dev"), Err("dev")); // the second completion loses
/// assert_eq!((&CONFIG).await, Ok(&"prod"));
/// # });
/// ```
pub struct Deferred<T, E = Infallible> {
    state: AtomicUsize,
    lists: UnsafeCell<Lists>,
    slot: UnsafeCell<MaybeUninit<Payload<T, E>>>,
    /// Where contenders for LOCKED wait (nothing, outside loom: see `LockWaits`).
    lock_waits: LockWaits,
}

// SAFETY: a `Deferred` owns its `T` or `E` and may drop it on another thread, so it is
// `Send` when they are. Its wait lists hold raw pointers to nodes whose owners keep them
// alive while linked; those are only touched under the cell's lock.
unsafe impl<T: Send, E: Send> Send for Deferred<T, E> {}
// SAFETY: `&Deferred` moves a `T`/`E` in (`Send`) and hands `&T`/`&E` to many threads
// (`Sync`); the payload is written once before DONE (Release) and read only after DONE is
// seen (Acquire); every other shared change is atomic or under LOCKED.
unsafe impl<T: Send + Sync, E: Send + Sync> Sync for Deferred<T, E> {}

impl<T, E> Deferred<T, E> {
    /// Creates an empty cell. `const`, so a `static` can hold one; allocates nothing.
    ///
    /// ```
    /// use deferred_core::Deferred;
    /// static READY: Deferred<()> = Deferred::new();
    /// assert!(!READY.is_done());
    /// ```
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        Deferred {
            state: AtomicUsize::new(0),
            lists: UnsafeCell::new(Lists {
                waiters: List::new(),
                claimants: List::new(),
            }),
            slot: UnsafeCell::new(MaybeUninit::uninit()),
            lock_waits: LockWaits::new(),
        }
    }

    /// Creates an empty cell (loom's atomics are not `const`).
    #[cfg(loom)]
    pub fn new() -> Self {
        Deferred {
            state: AtomicUsize::new(0),
            lists: UnsafeCell::new(Lists {
                waiters: List::new(),
                claimants: List::new(),
            }),
            slot: UnsafeCell::new(MaybeUninit::uninit()),
            lock_waits: LockWaits::new(),
        }
    }

    /// Creates a cell that is already completed with `value`.
    ///
    /// ```
    /// use deferred_core::Deferred;
    /// let cell: Deferred<i32> = Deferred::with_value(5);
    /// assert_eq!(cell.get(), Some(&5));
    /// ```
    pub fn with_value(value: T) -> Self {
        let cell = Self::new();
        let _ = cell.succeed(value);
        cell
    }

    // ----- completion -------------------------------------------------------------------

    /// Completes the cell with `value`. Returns `Ok(())` if this call won, or gives `value`
    /// back if the cell was already completed (or is being completed) by someone else.
    ///
    /// Wakes every waiter. Completing with nobody waiting is two atomic operations and the
    /// write of the value: no lock.
    ///
    /// ```
    /// use deferred_core::Deferred;
    /// let cell: Deferred<String> = Deferred::new();
    /// assert_eq!(cell.succeed("a".into()), Ok(()));
    /// assert_eq!(cell.succeed("b".into()), Err("b".to_string()));
    /// assert_eq!(cell.get().map(String::as_str), Some("a"));
    /// ```
    pub fn succeed(&self, value: T) -> Result<(), T> {
        if !self.win() {
            return Err(value);
        }
        self.write(Payload {
            ok: ManuallyDrop::new(value),
        });
        self.publish(OK);
        Ok(())
    }

    /// Completes the cell with the error `error` (Kotlin `completeExceptionally`, Effect
    /// `fail`). Returns `Ok(())` if this call won, or gives `error` back.
    ///
    /// ```
    /// use deferred_core::{Deferred, Error};
    /// let cell: Deferred<u8, &str> = Deferred::new();
    /// assert_eq!(cell.fail("nope"), Ok(()));
    /// assert_eq!(cell.try_get(), Some(Err(Error::Failed(&"nope"))));
    /// ```
    pub fn fail(&self, error: E) -> Result<(), E> {
        if !self.win() {
            return Err(error);
        }
        self.write(Payload {
            err: ManuallyDrop::new(error),
        });
        self.publish(ERR);
        Ok(())
    }

    /// Completes the cell with `result`: `Ok` as [`succeed`](Self::succeed), `Err` as
    /// [`fail`](Self::fail). Gives `result` back if this call lost.
    ///
    /// ```
    /// use deferred_core::Deferred;
    /// let cell: Deferred<u8, ()> = Deferred::new();
    /// assert_eq!(cell.complete(Ok(1)), Ok(()));
    /// assert_eq!(cell.complete(Err(())), Err(Err(())));
    /// ```
    pub fn complete(&self, result: Result<T, E>) -> Result<(), Result<T, E>> {
        match result {
            Ok(v) => self.succeed(v).map_err(Ok),
            Err(e) => self.fail(e).map_err(Err),
        }
    }

    /// Cancels the cell (Kotlin `cancel`, Effect `interrupt`): waiters get
    /// [`Error::Cancelled`]. Returns whether this call won.
    ///
    /// ```
    /// use deferred_core::{Deferred, Error};
    /// let cell: Deferred<u8> = Deferred::new();
    /// assert!(cell.cancel());
    /// assert!(!cell.cancel());
    /// assert!(cell.is_cancelled());
    /// assert_eq!(cell.try_get(), Some(Err(Error::Cancelled)));
    /// ```
    pub fn cancel(&self) -> bool {
        self.complete_empty(CANCELLED)
    }

    /// Completes the cell as panicked (Effect `die`): waiters get [`Error::Panicked`].
    /// Returns whether this call won. Layers above use it when the computation that was to
    /// complete the cell panics.
    ///
    /// ```
    /// use deferred_core::{Deferred, Error};
    /// let cell: Deferred<u8> = Deferred::new();
    /// assert!(cell.die());
    /// assert_eq!(cell.try_get(), Some(Err(Error::Panicked)));
    /// ```
    #[doc(alias = "panicked")]
    pub fn die(&self) -> bool {
        self.complete_empty(PANICKED)
    }

    fn complete_empty(&self, kind: usize) -> bool {
        if !self.win() {
            return false;
        }
        self.publish(kind);
        true
    }

    /// Writes the payload.
    #[inline]
    fn write(&self, payload: Payload<T, E>) {
        // SAFETY: only called between a successful `win` (WON is ours: no one else writes
        // the slot) and `publish` (no one reads it before DONE is published).
        self.slot.with_mut(|slot| unsafe { (*slot).write(payload) });
    }

    /// Takes the right to write the payload. Exactly one caller ever gets `true`, and must
    /// then `publish` (after `write`, for a value or an error).
    ///
    /// WON alone is taken, never the list lock: waiters keep linking (and the lock holder
    /// keeps its O(1) hold) while the value is written, so no one spins on a completer. The
    /// cost is that publishing is a read-modify-write rather than a plain store (the word may
    /// have changed meanwhile).
    #[inline]
    fn win(&self) -> bool {
        // A plain load first keeps losers off the cache line's exclusive state.
        // Relaxed: WON only arbitrates who writes; the payload is published by DONE.
        if self.state.load(Relaxed) & WON != 0 {
            return false;
        }
        // Relaxed: the RMW alone decides the winner (one total order per atomic); nothing
        // is read on the strength of it.
        self.state.fetch_or(WON, Relaxed) & WON == 0
    }

    /// Takes the claim if it is free and the cell is not being completed.
    #[inline]
    pub(crate) fn try_claim_bit(&self) -> bool {
        let mut state = self.state.load(Relaxed);
        loop {
            if state & (CLAIMED | WON) != 0 {
                return false;
            }
            // Acquire: pairs with the Release in `unlock` of the claim's previous holder.
            match self
                .state
                .compare_exchange_weak(state, state | CLAIMED, Acquire, Relaxed)
            {
                Ok(_) => return true,
                Err(actual) => state = actual,
            }
        }
    }

    /// Publishes the payload written by the winner and wakes everyone who waits.
    #[inline]
    fn publish(&self, kind: usize) {
        // Release: pairs with the Acquire loads that see DONE (`try_get`, `Waiter::poll`,
        // `lock`), which then read the payload.
        //
        // An add that sets the bits an or would: DONE and KIND are clear until this call, the
        // one publish of the one winner of WON (and only `take`, under `&mut`, clears them
        // again), so the add carries into nothing. It is one `lock xadd` on x86, where a
        // `fetch_or` whose old value is used is a load and a compare-and-swap loop.
        let prev = self.state.fetch_add(DONE | (kind << KIND_SHIFT), Release);
        debug_assert_eq!(prev & (DONE | KIND_MASK), 0, "published twice");
        if prev & (WAITERS | CLAIMANTS) != 0 {
            self.drain();
        }
    }

    // ----- the pair's completer (`pair.rs`) ----------------------------------------------

    /// The payload of a value, for [`pair_complete`](Self::pair_complete).
    #[cfg(feature = "alloc")]
    #[inline]
    pub(crate) fn ok_payload(value: T) -> Payload<T, E> {
        Payload {
            ok: ManuallyDrop::new(value),
        }
    }

    /// The payload of an error, for [`pair_complete`](Self::pair_complete).
    #[cfg(feature = "alloc")]
    #[inline]
    pub(crate) fn err_payload(error: E) -> Payload<T, E> {
        Payload {
            err: ManuallyDrop::new(error),
        }
    }

    /// The value of an `ok_payload` that was never published, handed back.
    ///
    /// # Safety
    ///
    /// `payload` was made by `ok_payload`.
    #[cfg(feature = "alloc")]
    #[inline]
    pub(crate) unsafe fn into_ok(payload: Payload<T, E>) -> T {
        // SAFETY: made by `ok_payload` (caller), so `ok` is the initialized field.
        ManuallyDrop::into_inner(unsafe { payload.ok })
    }

    /// The error of an `err_payload` that was never published, handed back.
    ///
    /// # Safety
    ///
    /// `payload` was made by `err_payload`.
    #[cfg(feature = "alloc")]
    #[inline]
    pub(crate) unsafe fn into_err(payload: Payload<T, E>) -> E {
        // SAFETY: made by `err_payload` (caller), so `err` is the initialized field.
        ManuallyDrop::into_inner(unsafe { payload.err })
    }

    /// Completes a pair's cell (with `payload`, or as cancelled when it is `None`), and lets
    /// go of the completer's handle in the same read-modify-write when nothing is linked.
    ///
    /// Returns `Err(payload)` (nothing published) if the awaiter is already gone: the caller
    /// is then the cell's last handle and must free it. `Ok(PairPublished::LetGo)`: published
    /// and let go; the caller touches the cell no more. `Ok(PairPublished::Holding { drain })`:
    /// published, still holding the cell: the caller drains it if `drain`, and then (also if
    /// a waker of the drain panics) lets go with
    /// [`pair_completer_leave`](Self::pair_completer_leave).
    ///
    /// WON is not taken: the completer is the only handle that completes a pair's cell, and
    /// it does so once (it is consumed), so no one else ever writes the payload.
    ///
    /// # Safety
    ///
    /// The cell was made by `Deferred::pair`, the caller is its completer, and calls this at
    /// most once; `kind` is OK for an `ok_payload`, ERR for an `err_payload`, CANCELLED for
    /// `None`.
    #[cfg(feature = "alloc")]
    #[inline]
    pub(crate) unsafe fn pair_complete(
        &self,
        payload: Option<Payload<T, E>>,
        kind: usize,
    ) -> Result<PairPublished, Option<Payload<T, E>>> {
        // Acquire: pairs with the awaiter's AcqRel read-modify-write that set AWAITER_GONE,
        // so that if we see it, all its accesses happen before we free the cell.
        let mut state = self.state.load(Acquire);
        if state & AWAITER_GONE != 0 {
            return Err(payload);
        }
        let written = payload.is_some();
        if let Some(payload) = payload {
            self.write(payload);
        }
        loop {
            if state & AWAITER_GONE != 0 {
                // The awaiter let go before we published: no one will read the payload, so
                // take it back. We wrote it just above and published nothing (DONE is clear),
                // and we are the cell's last handle (the Acquire of the load or failed
                // exchange that read `state`, as above).
                let back = written.then(|| {
                    // SAFETY: written and not published (above); read out once, and the cell
                    // is freed with DONE clear, so it is not dropped again.
                    let read = |slot: *const MaybeUninit<Payload<T, E>>| unsafe {
                        core::ptr::read((*slot).as_ptr())
                    };
                    self.slot.with(read)
                });
                return Err(back);
            }
            if state & (WAITERS | CLAIMANTS) != 0 {
                break;
            }
            // No one is linked: publish and let go in one step. Release: pairs with the
            // Acquire loads that see DONE (`Waiter::poll`, `lock`), which read the payload, and
            // with the awaiter's Acquire load (or AcqRel read-modify-write) that sees
            // COMPLETER_GONE before it frees the cell. Acquire (on failure too): for a state
            // with AWAITER_GONE, as above. DONE, KIND and WON are clear (only this call sets
            // them), so the add carries into nothing. A lock holder (the awaiter, linking) may
            // hold LOCKED: it sees DONE when it unlocks and drains its own node (`owes_drain`).
            let add = WON | DONE | (kind << KIND_SHIFT) | COMPLETER_GONE;
            match self
                .state
                .compare_exchange_weak(state, state + add, AcqRel, Acquire)
            {
                Ok(_) => return Ok(PairPublished::LetGo),
                Err(actual) => state = actual,
            }
        }
        // Someone is linked: publish; the caller drains, and only then lets go (the drain
        // touches the cell). Release: as in `publish`.
        let prev = self
            .state
            .fetch_add(WON | DONE | (kind << KIND_SHIFT), Release);
        debug_assert_eq!(prev & (WON | DONE | KIND_MASK), 0, "published twice");
        Ok(PairPublished::Holding {
            drain: prev & (WAITERS | CLAIMANTS) != 0,
        })
    }

    /// Lets go of a pair's completer handle after a `Holding` publish (and its drain).
    /// Returns the state word to free the cell with if the caller is its last handle.
    ///
    /// # Safety
    ///
    /// The cell was made by `Deferred::pair`, the caller is its completer, `pair_complete`
    /// returned `Holding`, this is called once, and the caller touches the cell no more
    /// unless this returns `Some`.
    #[cfg(feature = "alloc")]
    #[inline]
    pub(crate) unsafe fn pair_completer_leave(&self) -> Option<usize> {
        // AcqRel: Release pairs with the awaiter's Acquire that sees COMPLETER_GONE (our
        // drain's accesses happen before it frees the cell); Acquire pairs with the awaiter's
        // AcqRel that set AWAITER_GONE (its accesses happen before we free it).
        let prev = self.state.fetch_or(COMPLETER_GONE, AcqRel);
        (prev & AWAITER_GONE != 0).then_some(prev | COMPLETER_GONE)
    }

    /// Whether a pair's awaiter is gone (`Completer::is_closed`).
    #[cfg(feature = "alloc")]
    #[inline]
    pub(crate) fn pair_awaiter_gone(&self) -> bool {
        // Relaxed: a hint; nothing is read on the strength of it.
        self.state.load(Relaxed) & AWAITER_GONE != 0
    }

    /// Lets go of a pair's awaiter handle; `taken` says whether it moved the payload out.
    /// Returns the state word to free the cell with if the caller is its last handle.
    ///
    /// # Safety
    ///
    /// The cell was made by `Deferred::pair`, the caller is its awaiter, calls this at most
    /// once, has unlinked its node, and touches the cell no more unless this returns `Some`.
    #[cfg(feature = "alloc")]
    #[inline]
    pub(crate) unsafe fn pair_awaiter_leave(&self, taken: bool) -> Option<usize> {
        let taken = if taken { TAKEN } else { 0 };
        // Acquire: pairs with the Release of the completer's read-modify-write that set
        // COMPLETER_GONE, its last touch; seeing it, we are the last handle and need no
        // read-modify-write of our own (the bit is never cleared).
        let state = self.state.load(Acquire);
        if state & COMPLETER_GONE != 0 {
            return Some(state | taken);
        }
        // AcqRel: Release pairs with the completer's Acquire that sees AWAITER_GONE (our
        // accesses, the move of the payload included, happen before it frees the cell);
        // Acquire pairs with the Release that set COMPLETER_GONE if it came first.
        let prev = self.state.fetch_or(AWAITER_GONE | taken, AcqRel);
        (prev & COMPLETER_GONE != 0).then_some(prev | taken)
    }

    /// Moves the outcome out of a complete pair's cell, for its one awaiter.
    ///
    /// # Safety
    ///
    /// `state` has DONE and was loaded with Acquire; the caller is the pair's awaiter, calls
    /// this at most once, and makes sure the cell is freed with TAKEN, so the payload is not
    /// dropped again.
    #[cfg(feature = "alloc")]
    #[inline]
    pub(crate) unsafe fn pair_take(&self, state: usize) -> Result<T, Error<E>> {
        // SAFETY: the payload `state` names was written before the Release that published
        // DONE, which the caller's Acquire saw; moved out once (caller), not dropped again (TAKEN).
        let read = |slot| unsafe { Self::read_outcome(slot, state) };
        self.slot.with(read)
    }

    /// Makes the cell forget a payload that was moved out (TAKEN in `state`), before it is
    /// dropped.
    #[cfg(feature = "alloc")]
    #[inline]
    pub(crate) fn pair_forget_taken(&mut self, state: usize) {
        if state & TAKEN != 0 {
            // The payload is gone; the lists are empty (both handles let go, and the awaiter
            // unlinked before it did). Clearing DONE is all `Drop` reads.
            self.state.store_mut(0);
        }
    }

    // ----- probes -----------------------------------------------------------------------

    /// Whether the cell is complete (with anything). Never waits.
    ///
    /// ```
    /// use deferred_core::Deferred;
    /// let cell: Deferred<()> = Deferred::new();
    /// assert!(!cell.is_done());
    /// cell.succeed(()).unwrap();
    /// assert!(cell.is_done());
    /// ```
    #[inline]
    pub fn is_done(&self) -> bool {
        // Acquire: pairs with the Release in `publish`, so a caller that sees `true` may
        // go on to read the value.
        self.state.load(Acquire) & DONE != 0
    }

    /// Whether the cell was cancelled (Kotlin `isCancelled`).
    ///
    /// ```
    /// use deferred_core::Deferred;
    /// let cell: Deferred<()> = Deferred::new();
    /// cell.cancel();
    /// assert!(cell.is_cancelled());
    /// ```
    pub fn is_cancelled(&self) -> bool {
        matches!(self.try_get(), Some(Err(Error::Cancelled)))
    }

    /// The outcome, if the cell is complete (cats-effect `tryGet`, Effect `poll`). Never
    /// waits; one Acquire load and a branch.
    ///
    /// ```
    /// use deferred_core::Deferred;
    /// let cell: Deferred<u8> = Deferred::new();
    /// assert_eq!(cell.try_get(), None);
    /// cell.succeed(3).unwrap();
    /// assert_eq!(cell.try_get(), Some(Ok(&3)));
    /// ```
    #[inline]
    pub fn try_get(&self) -> Option<Result<&T, Error<&E>>> {
        // Acquire: pairs with the Release in `publish`.
        let state = self.state.load(Acquire);
        if state & DONE == 0 {
            return None;
        }
        // SAFETY: DONE was observed with Acquire.
        Some(unsafe { self.outcome(state) })
    }

    /// The value, if the cell completed successfully (Kotlin `getCompleted`).
    ///
    /// ```
    /// use deferred_core::Deferred;
    /// let cell: Deferred<u8> = Deferred::with_value(9);
    /// assert_eq!(cell.get(), Some(&9));
    /// ```
    #[inline]
    pub fn get(&self) -> Option<&T> {
        match self.try_get() {
            Some(Ok(v)) => Some(v),
            _ => None,
        }
    }

    /// Takes the outcome out of the cell, leaving it empty and ready for reuse. Needs
    /// `&mut self`, so no future can be waiting. Completion callbacks registered on a
    /// pending cell stay registered and run at its next completion.
    ///
    /// ```
    /// use deferred_core::Deferred;
    /// let mut cell: Deferred<String> = Deferred::with_value("x".into());
    /// assert_eq!(cell.take(), Some(Ok("x".to_string())));
    /// assert!(!cell.is_done());
    /// ```
    pub fn take(&mut self) -> Option<Result<T, Error<E>>> {
        let state = self.state.with_mut_value();
        // Reset everything, a claim leaked with `mem::forget` included, except the record of
        // what is still linked: a pending cell may hold completion callbacks (and nodes of
        // futures leaked with `mem::forget`), which the next completion must still reach.
        // SAFETY: `&mut self`: no one else touches the lists.
        let linked = unsafe { self.with_lists(|lists| lists.bits()) };
        self.state.store_mut(linked);
        if state & DONE == 0 {
            return None;
        }
        // SAFETY: DONE was set and we have `&mut self`; the payload is read out once and
        // the state reset to empty, so it is neither read nor dropped again.
        Some(unsafe { self.take_payload(state) })
    }

    /// Consumes the cell and returns its outcome, if any.
    ///
    /// ```
    /// use deferred_core::Deferred;
    /// let cell: Deferred<u8> = Deferred::with_value(1);
    /// assert_eq!(cell.into_inner(), Some(Ok(1)));
    /// ```
    pub fn into_inner(mut self) -> Option<Result<T, Error<E>>> {
        self.take()
    }

    /// Reads the outcome.
    ///
    /// # Safety
    ///
    /// `state` has DONE and was loaded with Acquire (or under `&mut self`).
    #[inline]
    unsafe fn outcome(&self, state: usize) -> Result<&T, Error<&E>> {
        match (state & KIND_MASK) >> KIND_SHIFT {
            // SAFETY: DONE with kind OK means `ok` was written before the Release that the
            // caller's Acquire observed, and it is never written again while `&self` lives.
            OK => Ok(self.slot.with(|slot| unsafe { &*(*(*slot).as_ptr()).ok })),
            // SAFETY: as above, for `err`.
            ERR => Err(Error::Failed(
                self.slot.with(|slot| unsafe { &*(*(*slot).as_ptr()).err }),
            )),
            CANCELLED => Err(Error::Cancelled),
            _ => Err(Error::Panicked),
        }
    }

    /// Moves the payload out.
    ///
    /// # Safety
    ///
    /// Exclusive access, `state` has DONE, and the caller makes sure the payload is not
    /// read or dropped again.
    unsafe fn take_payload(&mut self, state: usize) -> Result<T, Error<E>> {
        // SAFETY: exclusive access, and the payload `state` names is initialized (caller);
        // moved out once.
        self.slot
            .with_mut(|slot| unsafe { Self::read_outcome(slot, state) })
    }

    /// Reads the outcome that `state` names out of `slot`: the value or the error moved out
    /// of the payload, or the empty outcomes.
    ///
    /// # Safety
    ///
    /// `slot` is this cell's, `state` has DONE, the payload of its kind is initialized and
    /// visible to the caller, and the caller makes sure it is not read or dropped again.
    #[inline]
    unsafe fn read_outcome(
        slot: *const MaybeUninit<Payload<T, E>>,
        state: usize,
    ) -> Result<T, Error<E>> {
        match (state & KIND_MASK) >> KIND_SHIFT {
            // SAFETY: kind OK: `ok` is initialized (caller); read out once.
            OK => Ok(unsafe { ManuallyDrop::into_inner(core::ptr::read(&(*(*slot).as_ptr()).ok)) }),
            // SAFETY: kind ERR: `err` is initialized (caller); read out once.
            ERR => Err(Error::Failed(unsafe {
                ManuallyDrop::into_inner(core::ptr::read(&(*(*slot).as_ptr()).err))
            })),
            CANCELLED => Err(Error::Cancelled),
            _ => Err(Error::Panicked),
        }
    }

    /// The state word, loaded with Acquire (pairs with the Release that publishes DONE, and
    /// with the Release in `unlock` that publishes the list bits).
    #[inline]
    pub(crate) fn state_acquire(&self) -> usize {
        self.state.load(Acquire)
    }

    /// The outcome for a state that has DONE.
    ///
    /// # Safety
    ///
    /// As for `outcome`.
    #[inline]
    pub(crate) unsafe fn outcome_of(&self, state: usize) -> Result<&T, Error<&E>> {
        // SAFETY: forwarded to the caller.
        unsafe { self.outcome(state) }
    }

    // ----- the lock and the lists -------------------------------------------------------

    /// Takes the list lock and returns the state word as it was when taken.
    pub(crate) fn lock(&self) -> usize {
        let backoff = Backoff::new();
        let mut state = self.state.load(Relaxed);
        loop {
            if state & LOCKED == 0 {
                // Acquire: pairs with the Release in `unlock`, so the previous holder's list
                // writes are visible; and with the Release in `publish`, so a DONE seen here
                // lets us read the payload.
                match self
                    .state
                    .compare_exchange_weak(state, state | LOCKED, Acquire, Relaxed)
                {
                    Ok(_) => return state,
                    Err(actual) => {
                        state = actual;
                        continue;
                    }
                }
            }
            self.lock_waits.contended(&backoff, || {
                crate::loom::spin_load(&self.state) & LOCKED != 0
            });
            state = crate::loom::spin_load(&self.state);
        }
    }

    /// Releases the lock, publishing which lists are non-empty, setting `set` and clearing
    /// `clear`. Returns the state word as it was just before.
    ///
    /// A completer decides whether to wake anyone from the WAITERS/CLAIMANTS bits it sees
    /// when it publishes DONE. Those bits only change here, so if DONE was published while
    /// this lock was held and the bits were clear then, nobody is draining; if the holder
    /// has since linked a node, it owes the drain: see `owes_drain`.
    ///
    /// # Safety
    ///
    /// The lock is held by the caller.
    pub(crate) unsafe fn unlock(&self, set: usize, clear: usize) -> usize {
        // SAFETY: the lock is held (caller).
        let bits = self.lists.with(|lists| unsafe { (*lists).bits() });
        let mut state = self.state.load(Relaxed);
        loop {
            let new = ((state & !(LOCKED | WAITERS | CLAIMANTS | clear)) | bits) | set;
            // Release: pairs with the Acquire in `lock`.
            match self
                .state
                .compare_exchange_weak(state, new, Release, Relaxed)
            {
                Ok(_) => {
                    self.lock_waits.released();
                    return state;
                }
                Err(actual) => state = actual,
            }
        }
    }

    /// Whether the holder that just unlocked (`before` is `unlock`'s return) must drain:
    /// DONE was published during its hold while the lists looked empty, and it linked one.
    #[inline]
    pub(crate) fn owes_drain(&self, before: usize, linked: bool) -> bool {
        linked && before & DONE != 0 && before & (WAITERS | CLAIMANTS) == 0
    }

    /// Runs `f` on the lists.
    ///
    /// # Safety
    ///
    /// The lock is held by the caller.
    #[inline]
    pub(crate) unsafe fn with_lists<R>(&self, f: impl FnOnce(&mut Lists) -> R) -> R {
        // SAFETY: the lock is held (caller), so the lists are ours.
        self.lists.with_mut(|lists| f(unsafe { &mut *lists }))
    }

    /// Wakes every node of both lists, a batch per lock acquisition, wakers called with
    /// the lock released. If a waker panics, the rest are still woken (the batch wakes what
    /// it holds as it is dropped, and `on_unwind` drains the rest); a second panic while
    /// unwinding aborts, as any panic in `Drop` during unwinding does.
    #[cold]
    pub(crate) fn drain(&self) {
        on_unwind(|| self.drain_batches(), || self.drain_batches());
    }

    fn drain_batches(&self) {
        loop {
            let mut batch = Batch::new(self);
            self.lock();
            // SAFETY: the lock is held. Popped nodes are marked Notified, so their owners
            // will not unlink them, and we never touch them again. After DONE no node is
            // linked again, so this ends.
            let more = unsafe {
                self.with_lists(|lists| {
                    while !batch.is_full() {
                        // Each notify moves from its node straight into the batch.
                        if !lists
                            .waiters
                            .pop_front_into(Status::Notified, |n| batch.take_from(n))
                            && !lists
                                .claimants
                                .pop_front_into(Status::Notified, |n| batch.take_from(n))
                        {
                            break;
                        }
                    }
                    lists.bits() != 0
                })
            };
            // SAFETY: we hold the lock.
            unsafe { self.unlock(0, 0) };
            batch.wake_all();
            if !more {
                return;
            }
        }
    }
}

/// Up to `BATCH` notifies taken from the lists under the lock, woken after it is released.
/// Dropping a batch wakes whatever it still holds, so a panicking waker does not strand the
/// rest of its batch. The slots are left uninitialized until used, so a completion that
/// wakes one waiter does not pay for 32.
pub(crate) struct Batch {
    /// The cell, handed to callbacks.
    cell: *const (),
    items: [MaybeUninit<Notify>; BATCH],
    /// `items[next..len]` are initialized and not yet woken.
    len: usize,
    next: usize,
}

impl Batch {
    #[inline]
    pub(crate) fn new<T, E>(cell: &Deferred<T, E>) -> Self {
        Batch {
            cell: (cell as *const Deferred<T, E>).cast(),
            items: [const { MaybeUninit::uninit() }; BATCH],
            len: 0,
            next: 0,
        }
    }

    #[inline]
    pub(crate) fn is_full(&self) -> bool {
        self.len == BATCH
    }

    /// (A relay round's push: `Lazy` needs `alloc`.)
    #[cfg(feature = "alloc")]
    #[inline]
    pub(crate) fn push(&mut self, notify: Notify) {
        self.items[self.len].write(notify);
        self.len += 1;
    }

    /// Takes `notify` (leaving `Notify::None`) into the next slot, moved there in place.
    #[inline]
    pub(crate) fn take_from(&mut self, notify: &mut Notify) {
        self.items[self.len].write(core::mem::replace(notify, Notify::None));
        self.len += 1;
    }

    #[inline]
    pub(crate) fn wake_all(&mut self) {
        while self.next < self.len {
            // SAFETY: `items[next..len]` are initialized; `next` moves past this one before
            // it is woken, so it is read exactly once even if the wake panics.
            let item = unsafe { self.items[self.next].assume_init_read() };
            self.next += 1;
            // SAFETY: every item came off a list of `cell` under its lock, once, and `cell`
            // is complete whenever a callback can be among them (only a drain takes those).
            unsafe { item.notify(self.cell) };
        }
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        self.wake_all();
    }
}

impl<T, E> Drop for Deferred<T, E> {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: `&mut self`: no one else touches the lists.
        let linked = unsafe {
            self.with_lists(|lists| !lists.waiters.is_empty() || !lists.claimants.is_empty())
        };
        if linked {
            self.discard_linked();
        }
        let state = self.state.with_mut_value();
        if state & DONE != 0 {
            // SAFETY: exclusive access, DONE set; the cell is going away, so the payload is
            // dropped exactly once here.
            drop(unsafe { self.take_payload(state) });
        }
    }
}

impl<T, E> Deferred<T, E> {
    /// The rare part of `Drop`: what can still be linked is completion callbacks, which are
    /// freed without being run, and the nodes of futures that were leaked (`mem::forget`)
    /// while linked, whose memory is leaked with them and whose wakers are dropped here,
    /// unwoken. Out of line, so that dropping a cell with empty lists (the usual case) is a
    /// check of two list heads and the payload's drop.
    #[cold]
    #[inline(never)]
    fn discard_linked(&mut self) {
        // SAFETY: `&mut self`: no one else touches the lists.
        unsafe {
            self.with_lists(|lists| {
                while let Some((_, notify)) = lists.waiters.pop_front(Status::Notified) {
                    notify.discard();
                }
                while let Some((_, notify)) = lists.claimants.pop_front(Status::Notified) {
                    notify.discard();
                }
            })
        };
    }
}

impl<T, E> Default for Deferred<T, E> {
    /// An empty cell, as [`Deferred::new`].
    fn default() -> Self {
        Self::new()
    }
}

impl<T, E> From<T> for Deferred<T, E> {
    /// A cell completed with `value`, as [`Deferred::with_value`].
    fn from(value: T) -> Self {
        Self::with_value(value)
    }
}

impl<T: fmt::Debug, E: fmt::Debug> fmt::Debug for Deferred<T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Deferred");
        match self.try_get() {
            None => d.field("state", &"pending"),
            Some(Ok(v)) => d.field("value", v),
            Some(Err(Error::Failed(e))) => d.field("error", e),
            Some(Err(Error::Cancelled)) => d.field("state", &"cancelled"),
            Some(Err(Error::Panicked)) => d.field("state", &"panicked"),
        };
        d.finish()
    }
}

/// Plain access to an atomic through `&mut`, spelled the same for loom and core.
trait MutValue {
    fn with_mut_value(&mut self) -> usize;
    fn store_mut(&mut self, value: usize);
}

impl MutValue for AtomicUsize {
    #[inline]
    fn with_mut_value(&mut self) -> usize {
        #[cfg(loom)]
        {
            self.with_mut(|v| *v)
        }
        #[cfg(not(loom))]
        {
            *self.get_mut()
        }
    }

    #[inline]
    fn store_mut(&mut self, value: usize) {
        #[cfg(loom)]
        self.with_mut(|v| *v = value);
        #[cfg(not(loom))]
        {
            *self.get_mut() = value;
        }
    }
}
