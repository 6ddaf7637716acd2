//! An owned pair over one heap cell: a [`Completer`] and an [`Awaiter`], whose liveness is
//! kept in the cell's own state word (COMPLETER_GONE, AWAITER_GONE) rather than in an
//! `Arc`'s counts. Completing while nothing is linked publishes the outcome and lets go of
//! the completer in one read-modify-write; an awaiter that finds the completer gone frees the
//! cell with none.

use alloc::boxed::Box;
use core::{
    fmt,
    future::Future,
    marker::PhantomData,
    pin::Pin,
    ptr::NonNull,
    task::{Context, Poll},
};

use futures_core::FusedFuture;

use crate::{
    cell::{PairPublished, Payload, CANCELLED, ERR, OK},
    waiter::{CellRef, Polled, Waiter, WakeBy, Which},
    Deferred, Error,
};

/// Frees a pair's cell, given the state word its last handle saw as it let go.
///
/// # Safety
///
/// `cell` came from `Box::into_raw` in `Deferred::pair`, both handles have let go (the
/// caller is the last, and the Acquire that told it so has made every access of the other
/// handle happen before this), and `state` is that word (TAKEN if the payload was moved out).
unsafe fn free<T, E>(cell: NonNull<Deferred<T, E>>, state: usize) {
    // SAFETY: from `Box::into_raw`, and no one else reaches it any more (caller).
    let mut cell = unsafe { Box::from_raw(cell.as_ptr()) };
    cell.pair_forget_taken(state);
    drop(cell);
}

/// Completes (or cancels, with `None`) and lets go of the completer's share of `cell`; hands
/// the payload back if the awaiter was gone, having freed the cell.
///
/// A waker of the drain may panic: the completer's share still lets go (and frees the cell if
/// the awaiter went first) as the panic leaves, so nothing leaks and the awaiter, woken or
/// not, finds the cell complete and frees it when it goes.
///
/// # Safety
///
/// `cell` is a pair's, alive (the completer's share), and this is its completer's one
/// completion; the caller touches the cell no more.
unsafe fn complete<T, E>(
    cell: NonNull<Deferred<T, E>>,
    payload: Option<Payload<T, E>>,
    kind: usize,
) -> Result<(), Option<Payload<T, E>>> {
    // SAFETY: the cell is alive (our share); we are its completer, and this is our one
    // completion (caller).
    match unsafe { cell.as_ref().pair_complete(payload, kind) } {
        Ok(PairPublished::LetGo) => Ok(()),
        Ok(PairPublished::Holding { drain }) => {
            // Let go as the guard is dropped: after the drain, or while a waker's panic
            // unwinds out of it.
            let share = CompleterShare(cell);
            if drain {
                // SAFETY: alive: our share is let go only below (or by the guard).
                unsafe { cell.as_ref() }.drain();
            }
            drop(share);
            Ok(())
        }
        Err(back) => {
            // SAFETY: the awaiter was gone before we published anything: we are the last
            // handle, and the slot holds nothing (DONE clear, TAKEN irrelevant).
            unsafe { free(cell, 0) };
            Err(back)
        }
    }
}

/// The completer's share of a cell it has published to and still holds (to drain it): lets
/// go when dropped, and frees the cell if the awaiter let go first.
struct CompleterShare<T, E>(NonNull<Deferred<T, E>>);

impl<T, E> Drop for CompleterShare<T, E> {
    fn drop(&mut self) {
        // SAFETY: the cell is alive (our share); `pair_complete` returned `Holding`, and this
        // guard is made once per completion and dropped once.
        if let Some(state) = unsafe { self.0.as_ref().pair_completer_leave() } {
            // SAFETY: we let go last; `state` is the word we saw as we did.
            unsafe { free(self.0, state) };
        }
    }
}

/// The awaiter's share of its cell, let go when dropped: after its node is unlinked, and
/// also if dropping the waker the node carried (user code) panics after that.
struct AwaiterShare<T, E> {
    cell: NonNull<Deferred<T, E>>,
    taken: bool,
}

impl<T, E> Drop for AwaiterShare<T, E> {
    fn drop(&mut self) {
        // SAFETY: the cell is alive (our share); we are its awaiter, our node is unlinked (the
        // guard drops after `unlink`, whose only user code runs once the node is off the list
        // and `linked` is cleared); we touch the cell no more unless told we are last.
        if let Some(state) = unsafe { self.cell.as_ref().pair_awaiter_leave(self.taken) } {
            // SAFETY: we let go last; `state` is the word we saw as we did.
            unsafe { free(self.cell, state) };
        }
    }
}

/// The awaiter's way to its cell: a pointer that the awaiter's share keeps valid.
struct PairRef<T, E>(NonNull<Deferred<T, E>>);

// SAFETY: the pointer never changes, and the cell is freed only after the awaiter lets go
// (`Awaiter::drop`, which unlinks its waiter first), so it is alive while the handle is.
unsafe impl<T, E> CellRef for PairRef<T, E> {
    type T = T;
    type E = E;
    #[inline]
    fn cell(&self) -> &Deferred<T, E> {
        // SAFETY: alive while the awaiter holds its share (above).
        unsafe { self.0.as_ref() }
    }
}

impl<T, E> Deferred<T, E> {
    /// Makes a cell on the heap with exactly two handles: a [`Completer`], which completes
    /// it once, and an [`Awaiter`], a `'static` future that moves the outcome out. One
    /// allocation; the handles' liveness is kept in the cell's state word, so a completion
    /// that nothing awaits yet is one read-modify-write and the awaiter's drop after it none.
    ///
    /// Use it where one task hands one result to one other (a `oneshot` channel); use an
    /// `Arc<Deferred>` with [`wait_owned`](Deferred::wait_owned) where more wait or more
    /// complete.
    ///
    /// ```
    /// use deferred_core::{Deferred, Error};
    /// # futures::executor::block_on(async {
    /// let (completer, awaiter) = Deferred::<String, &str>::pair();
    /// std::thread::spawn(move || completer.succeed("done".to_string()).unwrap());
    /// assert_eq!(awaiter.await, Ok("done".to_string()));
    ///
    /// let (completer, awaiter) = Deferred::<u8>::pair();
    /// drop(completer); // dropped without completing: cancelled
    /// assert_eq!(awaiter.await, Err(Error::Cancelled));
    /// # });
    /// ```
    pub fn pair() -> (Completer<T, E>, Awaiter<T, E>) {
        let cell = NonNull::from(Box::leak(Box::new(Deferred::new())));
        (
            Completer {
                cell,
                _owns: PhantomData,
            },
            Awaiter {
                waiter: Waiter::new(PairRef(cell)),
                done: false,
            },
        )
    }
}

/// The completing half of [`Deferred::pair`]. Completing consumes it; dropping it without
/// completing cancels the cell (the awaiter gets [`Error::Cancelled`]).
///
/// ```
/// use deferred_core::Deferred;
/// let (completer, awaiter) = Deferred::<u8>::pair();
/// assert!(!completer.is_closed());
/// drop(awaiter);
/// assert!(completer.is_closed());
/// assert_eq!(completer.succeed(1), Err(1)); // no one to take it: handed back
/// ```
pub struct Completer<T, E = core::convert::Infallible> {
    cell: NonNull<Deferred<T, E>>,
    _owns: PhantomData<Deferred<T, E>>,
}

// SAFETY: the completer moves a `T`/`E` into the cell and may drop the cell (and the value
// in it) on its own thread: `Send` when they are. It shares nothing through `&self` but a
// load of the state word.
unsafe impl<T: Send, E: Send> Send for Completer<T, E> {}
// SAFETY: `&Completer` gives access to nothing but `is_closed` (an atomic load) and `Debug`.
unsafe impl<T, E> Sync for Completer<T, E> {}

impl<T, E> Completer<T, E> {
    /// The cell, alive while this handle is.
    #[inline]
    fn cell(&self) -> &Deferred<T, E> {
        // SAFETY: the completer's share keeps the cell alive until `finish` lets go.
        unsafe { self.cell.as_ref() }
    }

    /// Completes the cell with `value`. Gives `value` back if the awaiter was already
    /// dropped (no one would take it).
    ///
    /// ```
    /// use deferred_core::Deferred;
    /// # futures::executor::block_on(async {
    /// let (completer, awaiter) = Deferred::<u32>::pair();
    /// completer.succeed(7).unwrap();
    /// assert_eq!(awaiter.await, Ok(7));
    /// # });
    /// ```
    #[inline]
    pub fn succeed(self, value: T) -> Result<(), T> {
        let payload = Deferred::ok_payload(value);
        match self.finish(Some(payload), OK) {
            Ok(()) => Ok(()),
            // SAFETY: the payload handed back is the `ok_payload` made above.
            Err(Some(back)) => Err(unsafe { Deferred::into_ok(back) }),
            // `finish` hands back what it was given, and it was given `Some`.
            Err(None) => Ok(()),
        }
    }

    /// Completes the cell with the error `error`. Gives `error` back if the awaiter was
    /// already dropped.
    ///
    /// ```
    /// use deferred_core::{Deferred, Error};
    /// # futures::executor::block_on(async {
    /// let (completer, awaiter) = Deferred::<u32, &str>::pair();
    /// completer.fail("nope").unwrap();
    /// assert_eq!(awaiter.await, Err(Error::Failed("nope")));
    /// # });
    /// ```
    #[inline]
    pub fn fail(self, error: E) -> Result<(), E> {
        let payload = Deferred::err_payload(error);
        match self.finish(Some(payload), ERR) {
            Ok(()) => Ok(()),
            // SAFETY: the payload handed back is the `err_payload` made above.
            Err(Some(back)) => Err(unsafe { Deferred::into_err(back) }),
            // As in `succeed`.
            Err(None) => Ok(()),
        }
    }

    /// Completes the cell with `result`: `Ok` as [`succeed`](Self::succeed), `Err` as
    /// [`fail`](Self::fail). Gives `result` back if the awaiter was already dropped.
    ///
    /// ```
    /// use deferred_core::Deferred;
    /// # futures::executor::block_on(async {
    /// let (completer, awaiter) = Deferred::<u8, ()>::pair();
    /// completer.complete(Ok(3)).unwrap();
    /// assert_eq!(awaiter.await, Ok(3));
    /// # });
    /// ```
    pub fn complete(self, result: Result<T, E>) -> Result<(), Result<T, E>> {
        match result {
            Ok(v) => self.succeed(v).map_err(Ok),
            Err(e) => self.fail(e).map_err(Err),
        }
    }

    /// Whether the awaiter has been dropped, so that a completion would be handed back.
    /// Once `true`, stays `true`.
    ///
    /// ```
    /// use deferred_core::Deferred;
    /// let (completer, awaiter) = Deferred::<u8>::pair();
    /// drop(awaiter);
    /// assert!(completer.is_closed());
    /// ```
    #[inline]
    pub fn is_closed(&self) -> bool {
        self.cell().pair_awaiter_gone()
    }

    /// Completes (or cancels, with `None`) and lets go of the cell; hands the payload back
    /// if the awaiter was gone. Consumes the handle without running its `Drop`.
    #[inline]
    fn finish(
        self,
        payload: Option<Payload<T, E>>,
        kind: usize,
    ) -> Result<(), Option<Payload<T, E>>> {
        let cell = self.cell;
        core::mem::forget(self);
        // SAFETY: the cell is alive (our share); this is our one completion (the handle is
        // consumed, and its `Drop` does not run).
        unsafe { complete(cell, payload, kind) }
    }
}

impl<T, E> Drop for Completer<T, E> {
    /// Dropped without completing: cancels the cell.
    fn drop(&mut self) {
        // SAFETY: as in `finish`: our one completion, as the handle goes away. (Nothing to
        // hand back: `None` was given.)
        let _ = unsafe { complete(self.cell, None, CANCELLED) };
    }
}

impl<T, E> fmt::Debug for Completer<T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Completer")
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

/// The awaiting half of [`Deferred::pair`]: a `'static` future that resolves to the
/// outcome, moved out of the cell (no `Clone` needed).
///
/// Once it has resolved it is terminated ([`FusedFuture`]): polling it again returns
/// `Pending` for ever.
///
/// # Cancel safety
///
/// Dropping it at any point is safe: it unlinks itself, and a completion after that hands
/// its value back to the completer.
///
/// ```
/// use deferred_core::Deferred;
/// # futures::executor::block_on(async {
/// let (completer, awaiter) = Deferred::<Vec<u8>>::pair();
/// let (got, ()) = futures::join!(awaiter, async { completer.succeed(vec![1]).unwrap() });
/// assert_eq!(got, Ok(vec![1]));
/// # });
/// ```
#[must_use = "futures do nothing unless polled"]
pub struct Awaiter<T, E = core::convert::Infallible> {
    waiter: Waiter<PairRef<T, E>>,
    /// The outcome was moved out (or the awaiter resolved with an empty outcome).
    done: bool,
}

// SAFETY: the awaiter receives a `T`/`E` by value and may drop the cell (and a value in it)
// on its own thread: `Send` when they are. Its node is reached by the completer's thread only
// under the cell's lock.
unsafe impl<T: Send, E: Send> Send for Awaiter<T, E> {}
// SAFETY: `&Awaiter` gives access to nothing but `is_terminated` and `Debug`.
unsafe impl<T, E> Sync for Awaiter<T, E> {}

impl<T, E> Future for Awaiter<T, E> {
    type Output = Result<T, Error<E>>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // SAFETY: we never move out of the pinned future.
        let this = unsafe { self.get_unchecked_mut() };
        if this.done {
            return Poll::Pending;
        }
        // SAFETY: the waiter is a field of the pinned future (structural pinning).
        let waiter = unsafe { Pin::new_unchecked(&mut this.waiter) };
        match waiter.poll(Which::Waiters, WakeBy::Task(cx.waker())) {
            Polled::Done(state) => {
                this.done = true;
                // SAFETY: `state` has DONE, loaded with Acquire; this is the one take (`done`
                // is set), and `drop` lets go with TAKEN.
                Poll::Ready(unsafe { this.waiter.handle().cell().pair_take(state) })
            }
            // Plain waiters are never granted the claim.
            Polled::Granted | Polled::Pending => Poll::Pending,
        }
    }
}

impl<T, E> FusedFuture for Awaiter<T, E> {
    fn is_terminated(&self) -> bool {
        self.done
    }
}

impl<T, E> Drop for Awaiter<T, E> {
    #[inline]
    fn drop(&mut self) {
        // Let go as the guard is dropped, after the node is unlinked: once we let go the
        // completer may free the cell. A guard, so that the awaiter lets go even if the
        // waker its node carried panics as `unlink` drops it (the node is off the list by
        // then). The waiter's own `Drop` then finds it unlinked and touches nothing.
        let share = AwaiterShare {
            cell: self.waiter.handle().0,
            taken: self.done,
        };
        if self.waiter.is_linked() {
            self.waiter.unlink();
        }
        drop(share);
    }
}

impl<T, E> fmt::Debug for Awaiter<T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Awaiter")
            .field("linked", &self.waiter.is_linked())
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}
