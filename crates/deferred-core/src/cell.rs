//! The cell itself: its state word, its payload, completion, probes, and the wait-list
//! protocol that the futures, the claim and the blocking waits share.

use core::{
    convert::Infallible,
    fmt,
    mem::{self, ManuallyDrop, MaybeUninit},
    task::Waker,
};

use crossbeam_utils::Backoff;

use crate::{
    list::{List, Node, Notify, Status},
    loom::{AtomicUsize, LockWaits, Ordering::*, UnsafeCell},
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

const OK: usize = 0;
const ERR: usize = 1;
const CANCELLED: usize = 2;
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
const BATCH: usize = 32;
#[cfg(loom)]
const BATCH: usize = 2;

/// Which of the two wait lists a node waits in.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Which {
    /// Plain waiters: woken only by completion.
    Waiters,
    /// Waiting initializers: woken by completion, and one at a time by a released claim.
    Claimants,
}

pub(crate) struct Lists {
    pub(crate) waiters: List,
    claimants: List,
}

impl Lists {
    fn get(&mut self, which: Which) -> &mut List {
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

union Payload<T, E> {
    ok: ManuallyDrop<T>,
    err: ManuallyDrop<E>,
}

/// What polling a node found.
pub(crate) enum Polled {
    /// The cell is complete; the state word as read with Acquire.
    Done(usize),
    /// The node was handed the claim (claimant nodes only).
    Granted,
    /// Still waiting; the node is linked with the caller's current waker.
    Pending,
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

    /// Publishes the payload written by the winner and wakes everyone who waits.
    #[inline]
    fn publish(&self, kind: usize) {
        // Release: pairs with the Acquire loads that see DONE (`try_get`, `poll_node`,
        // `lock`), which then read the payload.
        let prev = self.state.fetch_or(DONE | (kind << KIND_SHIFT), Release);
        if prev & (WAITERS | CLAIMANTS) != 0 {
            self.drain();
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
        match (state & KIND_MASK) >> KIND_SHIFT {
            // SAFETY: kind OK: `ok` is initialized (caller); moved out once.
            OK => Ok(self.slot.with_mut(|slot| unsafe {
                ManuallyDrop::into_inner(core::ptr::read(&(*(*slot).as_ptr()).ok))
            })),
            // SAFETY: kind ERR: `err` is initialized (caller); moved out once.
            ERR => Err(Error::Failed(self.slot.with_mut(|slot| unsafe {
                ManuallyDrop::into_inner(core::ptr::read(&(*(*slot).as_ptr()).err))
            }))),
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

    /// Wakes every plain waiter linked now, without completing the cell: each one that is
    /// polled again sees the cell still pending and links itself anew, behind a sentinel
    /// node that marks where this round ends (so waiters that relink at once are not woken
    /// again and again). `Lazy` uses it to let any waiter drive the computation.
    ///
    /// Completion callbacks stay: a round re-queues each one it meets behind its sentinel.
    /// Rounds may overlap one another and a completion's drain; a round ends as soon as its
    /// sentinel is off the list, whoever took it off, since whoever did woke every node
    /// ahead of it. It always ends: nodes are only ever linked at the back, so the nodes
    /// ahead of a linked sentinel only ever get fewer (a re-queued callback goes behind it).
    #[cfg(feature = "alloc")]
    pub(crate) fn notify_waiters(&self) {
        let sentinel = core::pin::pin!(Node::new());
        let sentinel: &Node = &sentinel;
        let state = self.lock();
        if state & DONE != 0 {
            // SAFETY: we hold the lock and changed nothing.
            unsafe { self.unlock(0, 0) };
            // The completion wakes (or woke) everyone.
            return;
        }
        // SAFETY: the lock is held; the sentinel is pinned on this frame, and `Notifier`
        // below does not let the frame end before the sentinel is off the list.
        unsafe { self.with_lists(|lists| lists.waiters.push_back(sentinel)) };
        // SAFETY: we hold the lock.
        let before = unsafe { self.unlock(0, 0) };
        if self.owes_drain(before, true) {
            // Completed while we linked the sentinel: the drain takes it off with the rest.
            self.drain();
            return;
        }

        struct Notifier<'a, T, E> {
            cell: &'a Deferred<T, E>,
            sentinel: &'a Node,
        }
        impl<T, E> Notifier<'_, T, E> {
            fn run(&self) {
                loop {
                    let mut batch = Batch::new(self.cell);
                    let state = self.cell.lock();
                    let sentinel: *const Node = self.sentinel;
                    // SAFETY: the lock is held; popped nodes are marked Notified and never
                    // touched again.
                    let finished = unsafe {
                        self.cell.with_lists(|lists| loop {
                            // Another round (whose sentinel is behind ours) or a completion's
                            // drain may have taken our sentinel: then every node that was ahead
                            // of it has been woken, and this round is over. Going on would
                            // re-queue a callback behind no sentinel of ours, for ever.
                            // SAFETY: the lock is held and the sentinel is ours.
                            if self.sentinel.with_links(|l| l.status) != Status::Linked {
                                break true;
                            }
                            if batch.len == BATCH {
                                break false;
                            }
                            match lists.waiters.pop_front(Status::Notified) {
                                Some((node, _)) if node == sentinel => break true,
                                Some((node, notify)) if notify.is_callback() => {
                                    // Callbacks wait for the completion itself: put it
                                    // back, behind the sentinel. (A producer's closer is
                                    // woken like a waiter, and looks again: its owner may
                                    // skip the lock once it is marked Notified, so it must
                                    // not be linked again here.)
                                    // SAFETY: callback nodes live on the heap until run.
                                    let node = &*node;
                                    node.with_links(|l| l.notify = notify);
                                    lists.waiters.push_back(node);
                                }
                                Some((_, notify)) => batch.push(notify),
                                // Unreachable while our sentinel is linked; kept total.
                                None => break true,
                            }
                        })
                    };
                    // The round took waiters off the list; if only closers are left, the
                    // producer's is owed its wake (see `take_lone_closers`). A guard: if a
                    // waker of the batch panics, unwinding still wakes it.
                    // SAFETY: we hold the lock.
                    let closer = unsafe { self.cell.take_lone_closers(state) };
                    // SAFETY: we hold the lock.
                    unsafe { self.cell.unlock(0, 0) };
                    batch.wake_all();
                    drop(closer);
                    if finished {
                        return;
                    }
                }
            }
        }
        impl<T, E> Drop for Notifier<'_, T, E> {
            fn drop(&mut self) {
                // Only reached while unwinding from a panicking waker: finish the round, so
                // the sentinel is off the list before its frame goes away.
                self.run();
            }
        }
        let notifier = Notifier {
            cell: self,
            sentinel,
        };
        notifier.run();
        mem::forget(notifier);
    }

    /// Wakes every node of both lists, a batch per lock acquisition, wakers called with
    /// the lock released. If a waker panics, the rest are still woken (the guards below);
    /// a second panic while unwinding aborts, as any panic in `Drop` during unwinding does.
    #[cold]
    pub(crate) fn drain(&self) {
        struct Finish<'a, T, E>(&'a Deferred<T, E>);
        impl<T, E> Drop for Finish<'_, T, E> {
            fn drop(&mut self) {
                // Only reached while unwinding from a panicking waker: finish the job.
                self.0.drain_batches();
            }
        }
        let finish = Finish(self);
        self.drain_batches();
        mem::forget(finish);
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
                    while batch.len < BATCH {
                        let next = match lists.waiters.pop_front(Status::Notified) {
                            Some((_, n)) => n,
                            None => match lists.claimants.pop_front(Status::Notified) {
                                Some((_, n)) => n,
                                None => break,
                            },
                        };
                        batch.push(next);
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

    /// Polls `node` as a waiter in list `which`: returns `Done` if the cell is complete,
    /// `Granted` if a claimant node was handed the claim (or took a free one), and
    /// otherwise makes sure the node is linked with a notify that `is_current` accepts,
    /// made by `make` (outside the lock), and returns `Pending`.
    ///
    /// A node that is linked in one list stays there (only its notify is renewed), whatever
    /// `which` says: an initializer holding the claim waits in the plain list, and if its
    /// completion then loses to one still being published, it is woken from there.
    ///
    /// # Safety
    ///
    /// `node` belongs to this cell alone, is pinned, and `cancel_node` runs before it is
    /// moved or freed. `linked` is the caller's record of which list it is in, if any; it
    /// is only ever changed here and in `cancel_node`.
    pub(crate) unsafe fn poll_node(
        &self,
        node: &Node,
        linked: &mut Option<Which>,
        which: Which,
        is_current: impl Fn(&Notify) -> bool,
        make: impl FnOnce() -> Notify,
    ) -> Polled {
        // Acquire: pairs with the Release in `publish`.
        let state = self.state.load(Acquire);
        if state & DONE != 0 {
            return Polled::Done(state);
        }
        if linked.is_some() {
            let state = self.lock();
            // SAFETY: the lock is held; the node is ours and belongs to this cell.
            let (status, current) = unsafe {
                node.with_links(|l| {
                    (
                        l.status,
                        l.status == Status::Linked && is_current(&l.notify),
                    )
                })
            };
            if state & DONE != 0 || status == Status::Granted || current {
                if state & DONE == 0 && status == Status::Granted {
                    // SAFETY: the lock is held. The grant is consumed here, so a later poll
                    // cannot take it a second time.
                    unsafe { node.with_links(|l| l.status = Status::Idle) };
                }
                // SAFETY: we hold the lock and changed no list.
                unsafe { self.unlock(0, 0) };
                if state & DONE != 0 {
                    return Polled::Done(state);
                }
                if status == Status::Granted {
                    *linked = None;
                    return Polled::Granted;
                }
                return Polled::Pending;
            }
            // SAFETY: as above.
            unsafe { self.unlock(0, 0) };
        } else if which == Which::Claimants && self.try_claim_bit() {
            return Polled::Granted;
        }

        // Make the notify with no lock held: cloning a waker runs user code.
        let fresh = make();
        let state = self.lock();
        let mut stale = Notify::None;
        let mut granted = false;
        let mut pushed = false;
        if state & DONE == 0 {
            // SAFETY: the lock is held; the node is ours and, per the caller, pinned and
            // unlinked before it is freed.
            unsafe {
                let status = node.with_links(|l| l.status);
                match status {
                    Status::Granted => {
                        // Consumed here, so a later poll cannot take it a second time.
                        node.with_links(|l| l.status = Status::Idle);
                        granted = true;
                        stale = fresh;
                    }
                    Status::Linked => {
                        node.with_links(|l| stale = mem::replace(&mut l.notify, fresh))
                    }
                    Status::Idle | Status::Notified => {
                        // Take the claim if it is free: no one is queued for it then (a
                        // released claim goes straight to the head of the queue). It must
                        // be taken atomically here, not judged from `state`: `try_claim`
                        // does not wait for the lock.
                        if which == Which::Claimants && self.try_claim_bit() {
                            granted = true;
                            stale = fresh;
                        } else {
                            self.with_lists(|lists| lists.get(which).push_back(node));
                            node.with_links(|l| l.notify = fresh);
                            pushed = true;
                        }
                    }
                }
            }
        } else {
            stale = fresh;
        }
        // SAFETY: we hold the lock.
        let before = unsafe { self.unlock(0, 0) };
        if granted {
            // Our unused waker clone is dropped (user code) while we hold a claim that no
            // `Claim` guard owns yet: if that panics, pass the claim on rather than leak it.
            struct Release<'a, T, E>(&'a Deferred<T, E>);
            impl<T, E> Drop for Release<'_, T, E> {
                fn drop(&mut self) {
                    self.0.release_claim();
                }
            }
            let release = Release(self);
            drop(stale);
            mem::forget(release);
        } else {
            drop(stale);
        }
        if pushed {
            *linked = Some(which);
        }
        if granted {
            *linked = None;
            return Polled::Granted;
        }
        if state & DONE != 0 {
            return Polled::Done(state);
        }
        if self.owes_drain(before, pushed) {
            // The cell completed while we linked, unseen by its completer: wake the lists
            // (our own node included) and report the outcome now.
            self.drain();
            // Acquire: pairs with the Release in `publish` (DONE was in `before`).
            return Polled::Done(self.state.load(Acquire));
        }
        Polled::Pending
    }

    /// Unlinks `node` if it is linked; if it had been handed the claim, passes the claim on.
    /// After this returns the cell never touches `node` again.
    ///
    /// # Safety
    ///
    /// As for `poll_node`.
    pub(crate) unsafe fn cancel_node(&self, node: &Node, linked: &mut Option<Which>) {
        let Some(which) = linked.take() else {
            return;
        };
        if node.is_notified() {
            // A completion took the node off the list and took its waker: nothing to undo,
            // and no lock needed.
            return;
        }
        let state = self.lock();
        // SAFETY: the lock is held; the node belongs to this cell.
        let (status, notify) =
            unsafe { node.with_links(|l| (l.status, mem::replace(&mut l.notify, Notify::None))) };
        let mut handoff = WakeOnDrop::NONE;
        let mut clear = 0;
        let mut closer = WakeOnDrop::NONE;
        match status {
            // SAFETY: the lock is held and the node is linked in `which`.
            Status::Linked => unsafe {
                self.with_lists(|lists| lists.get(which).remove(node));
                closer = self.take_lone_closers(state);
            },
            // (No closer can be linked: closers exist only under a `Producer`, which never
            // passes the claim on: it completes or cancels.) SAFETY: the lock is held, and the
            // granted node's owner (us) holds the claim. `next` comes off the claimant list,
            // which holds no callbacks, and is woken once, by the guard.
            Status::Granted => unsafe {
                let next;
                (next, clear) = self.pass_claim_locked(state);
                handoff = WakeOnDrop::new(next);
            },
            Status::Idle | Status::Notified => {}
        }
        // SAFETY: we hold the lock.
        unsafe { self.unlock(0, clear) };
        // Both wakes before the leaving node's own waker is dropped (user code that may
        // panic); the guards wake them even if one of these wakes panics.
        drop(handoff);
        drop(closer);
        // A future's own waker (callbacks have no future, so none is ever cancelled here).
        drop(notify);
    }

    /// With the lock held, after a node was taken off a list: if the cell is pending and
    /// every node left is a producer's closer (`Producer::closed`), takes them all off and
    /// returns a guard that wakes the last of them once dropped (after the lock is
    /// released): no one waits any more.
    ///
    /// This keeps the invariant that `Producer::is_closed` reads from the state word alone:
    /// while the cell is pending, a closer is linked only beside a node that is not a closer
    /// (it links itself only then, under the lock, and every path that unlinks a node of a
    /// pending cell calls this before it unlocks), so WAITERS | CLAIMANTS clear means no one
    /// waits. A completion (WON) wakes closers itself: it drains every list.
    ///
    /// There is usually one closer. More are linked only if a `Closed` was leaked while
    /// linked (`mem::forget`, safe code): that ends its `&mut Producer` borrow, so another
    /// `Closed` can link. A leaked future is never polled or dropped again, so at most one
    /// closer in the list can still be polled: the one linked last (the list is FIFO and a
    /// `Closed` can only be made once every earlier one is leaked or dropped, and a dropped
    /// one unlinks itself). That one's notify is taken and woken; the ones ahead of it are
    /// unlinked with their wakers left in their (leaked) nodes, never dropped, as a leaked
    /// future's waker never is. This is liveness, not safety: were an earlier one still
    /// live, it would only miss its wake (its node is marked Notified, so its owner frees it
    /// without the lock, dropping the waker with it).
    ///
    /// # Safety
    ///
    /// The lock is held; `state` is the word `lock` returned.
    pub(crate) unsafe fn take_lone_closers(&self, state: usize) -> WakeOnDrop {
        if state & (WON | DONE) != 0 {
            return WakeOnDrop::NONE;
        }
        // SAFETY: the lock is held (caller). Linked nodes are alive (list invariant); each
        // popped one is marked Notified and not touched again. The last notify taken is a
        // closer's (not a callback), taken off its node under the lock: the guard's one call.
        unsafe {
            let last = self.with_lists(|lists| {
                if !lists.claimants.is_empty()
                    || lists.waiters.is_empty()
                    || !lists.waiters.all_closers()
                {
                    return None;
                }
                while lists.waiters.single().is_none() {
                    lists.waiters.pop_front_leaving_notify(Status::Notified);
                }
                lists
                    .waiters
                    .pop_front(Status::Notified)
                    .map(|(_, notify)| notify)
            });
            WakeOnDrop::new(last)
        }
    }

    /// Polls a producer's closer `node` (`Producer::closed`): returns `true` once the cell is
    /// complete or being completed, or no waiter is linked; otherwise links the node (or
    /// renews its waker) beside the waiters and returns `false`.
    ///
    /// # Safety
    ///
    /// As for `poll_node`; and the caller holds the claim (through `&mut Producer`), so no
    /// claim is passed on while the node is linked. Other closers may be linked: those of
    /// `Closed` futures leaked while linked (safe code), never polled or dropped again. That
    /// is a liveness matter, not a safety one: every closer is a node of this cell, and each
    /// is handled as any node is (see `take_lone_closers`).
    pub(crate) unsafe fn poll_closer(
        &self,
        node: &Node,
        linked: &mut Option<Which>,
        waker: &Waker,
    ) -> bool {
        if linked.is_some() && node.is_notified() {
            // Taken off by a completion or by the last waiter to leave, which woke us; the
            // cell does not touch the node again.
            *linked = None;
        }
        if linked.is_none() {
            // Acquire: pairs with the Release in `unlock` (the list bits) and in `publish`.
            if is_closed(self.state.load(Acquire)) {
                return true;
            }
        }
        // Cloning a waker runs user code: outside the lock.
        let fresh = Notify::Closer(waker.clone());
        let state = self.lock();
        let mut stale = Notify::None;
        let mut pushed = false;
        let mut unlinked = false;
        let closed = if state & (WON | DONE) != 0 {
            stale = fresh;
            true
        } else {
            // SAFETY: the lock is held; the node is ours, pinned, and unlinked before it is
            // freed (the caller's contract).
            unsafe {
                let is_linked = node.with_links(|l| l.status) == Status::Linked;
                self.with_lists(|lists| {
                    // Whether a node that is not a closer waits (leaked closers do not count).
                    let others = !lists.claimants.is_empty() || !lists.waiters.all_closers();
                    if !others {
                        if is_linked {
                            // Unreachable while the invariant of `take_lone_closers`
                            // holds; kept total.
                            lists.waiters.remove(node);
                            node.with_links(|l| stale = mem::replace(&mut l.notify, fresh));
                            unlinked = true;
                        } else {
                            stale = fresh;
                        }
                        true
                    } else {
                        if is_linked {
                            node.with_links(|l| stale = mem::replace(&mut l.notify, fresh));
                        } else {
                            lists.waiters.push_back(node);
                            node.with_links(|l| l.notify = fresh);
                            pushed = true;
                        }
                        false
                    }
                })
            }
        };
        // Leaked closers left alone by our unlinking (unreachable with ours, kept total).
        let leaked = if unlinked {
            // SAFETY: we hold the lock; `state` is the word `lock` returned.
            unsafe { self.take_lone_closers(state) }
        } else {
            WakeOnDrop::NONE
        };
        // SAFETY: we hold the lock.
        let before = unsafe { self.unlock(0, 0) };
        // Set before any user code (a wake, the stale waker's drop) can unwind: `Drop`
        // unlinks by it.
        if pushed {
            *linked = Some(Which::Waiters);
        }
        if unlinked {
            *linked = None;
        }
        drop(leaked);
        drop(stale);
        if closed {
            return true;
        }
        if self.owes_drain(before, pushed) {
            // The cell completed while we linked, unseen by its completer.
            self.drain();
            return true;
        }
        false
    }

    /// With the lock held by a claim holder who is giving up without completing: hands the
    /// claim to the oldest waiting claimant (returned, to be notified once unlocked), or
    /// says to clear CLAIMED if there is none or the cell is already being completed.
    ///
    /// # Safety
    ///
    /// The lock is held and the caller holds the claim.
    unsafe fn pass_claim_locked(&self, state: usize) -> (Option<Notify>, usize) {
        if state & WON != 0 {
            // A completion is under way: it will wake every claimant with the outcome.
            return (None, CLAIMED);
        }
        // SAFETY: the lock is held.
        match unsafe { self.with_lists(|lists| lists.claimants.pop_front(Status::Granted)) } {
            Some((_, next)) => (Some(next), 0),
            None => (None, CLAIMED),
        }
    }

    /// Releases a claim without completing: the oldest waiting claimant gets it, and only
    /// that one is woken; plain waiters sleep on.
    pub(crate) fn release_claim(&self) {
        let state = self.lock();
        // SAFETY: the lock is held and the caller holds the claim.
        let (handoff, clear) = unsafe { self.pass_claim_locked(state) };
        // SAFETY: `handoff` came off the claimant list under the lock (no callbacks there)
        // and is woken once, by the guard.
        let handoff = unsafe { WakeOnDrop::new(handoff) };
        // SAFETY: we hold the lock.
        unsafe { self.unlock(0, clear) };
        drop(handoff);
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

    /// A polled waker's notify.
    pub(crate) fn waker_notify(waker: &Waker) -> Notify {
        Notify::Waker(waker.clone())
    }
}

/// A notify taken off a list under the lock, woken (with no cell: never a callback) when the
/// guard is dropped, after the lock is released. Dropped during unwinding too, so a panic in
/// user code that runs first (a waker's drop or wake) does not strand it.
#[must_use]
pub(crate) struct WakeOnDrop(Option<Notify>);

impl WakeOnDrop {
    pub(crate) const NONE: WakeOnDrop = WakeOnDrop(None);

    /// # Safety
    ///
    /// `notify` was taken off its node under the cell's lock, is not a callback, and is
    /// given to no one else (this guard makes its one call). The guard is dropped only
    /// once the lock is released.
    pub(crate) unsafe fn new(notify: Option<Notify>) -> Self {
        WakeOnDrop(notify)
    }
}

impl Drop for WakeOnDrop {
    fn drop(&mut self) {
        if let Some(notify) = self.0.take() {
            // SAFETY: the contract of `new`: taken off its node, not a callback (so a null
            // cell is fine), and this is its one call, made with the lock released.
            unsafe { notify.notify(core::ptr::null()) };
        }
    }
}

/// Up to `BATCH` notifies taken from the lists under the lock, woken after it is released.
/// Dropping a batch wakes whatever it still holds, so a panicking waker does not strand the
/// rest of its batch. The slots are left uninitialized until used, so a completion that
/// wakes one waiter does not pay for 32.
struct Batch {
    /// The cell, handed to callbacks.
    cell: *const (),
    items: [MaybeUninit<Notify>; BATCH],
    /// `items[next..len]` are initialized and not yet woken.
    len: usize,
    next: usize,
}

impl Batch {
    fn new<T, E>(cell: &Deferred<T, E>) -> Self {
        Batch {
            cell: (cell as *const Deferred<T, E>).cast(),
            items: [const { MaybeUninit::uninit() }; BATCH],
            len: 0,
            next: 0,
        }
    }

    fn push(&mut self, notify: Notify) {
        self.items[self.len].write(notify);
        self.len += 1;
    }

    fn wake_all(&mut self) {
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
    fn drop(&mut self) {
        // What can still be linked: completion callbacks, which are freed without being run,
        // and the nodes of futures that were leaked (`mem::forget`) while linked, whose
        // memory is leaked with them and whose wakers are dropped here, unwoken.
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
        let state = self.state.with_mut_value();
        if state & DONE != 0 {
            // SAFETY: exclusive access, DONE set; the cell is going away, so the payload is
            // dropped exactly once here.
            drop(unsafe { self.take_payload(state) });
        }
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
