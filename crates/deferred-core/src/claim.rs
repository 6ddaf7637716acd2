//! Claiming the right to complete a cell: `Claim`, `Producer`, the `claim` future and
//! `get_or_init` / `get_or_try_init`.

use core::{
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use futures_core::FusedFuture;

use crate::{
    cell::{CLAIMED, WON},
    list::{Notify, Status},
    waiter::{Polled, Waiter, WakeBy, WakeOnDrop, Which},
    Deferred, Error,
};

/// The right to complete a [`Deferred`], held by one caller at a time.
///
/// While a `Claim` is held, every other [`claim`](Deferred::claim) and
/// [`get_or_init`](Deferred::get_or_init) waits (anyone may still complete the cell
/// directly with [`Deferred::succeed`] and friends; then the claim's own completion loses).
///
/// Dropping a `Claim` without completing **passes it on**: the oldest waiting claimant
/// (first in, first out) gets it and only that one is woken; plain waiters sleep on. So an
/// initializer that is cancelled or panics (the `Claim` is dropped while unwinding) never
/// strands the others. To cancel the cell when the holder goes away instead, use
/// [`Claim::into_producer`].
///
/// ```
/// use deferred_core::Deferred;
/// let cell: Deferred<u8> = Deferred::new();
/// let claim = cell.try_claim().unwrap();
/// assert!(cell.try_claim().is_none()); // one holder at a time
/// claim.succeed(1).unwrap();
/// assert_eq!(cell.get(), Some(&1));
/// ```
#[must_use = "dropping a claim passes it on without completing the cell"]
pub struct Claim<'a, T, E = core::convert::Infallible> {
    cell: &'a Deferred<T, E>,
}

impl<'a, T, E> Claim<'a, T, E> {
    /// The cell this claim is for.
    ///
    /// ```
    /// use deferred_core::Deferred;
    /// let cell: Deferred<u8> = Deferred::new();
    /// let claim = cell.try_claim().unwrap();
    /// assert!(core::ptr::eq(claim.deferred(), &cell));
    /// ```
    pub fn deferred(&self) -> &'a Deferred<T, E> {
        self.cell
    }

    /// Completes the cell with `value`, as [`Deferred::succeed`]; gives `value` back if the
    /// cell was completed by someone else meanwhile.
    ///
    /// ```
    /// use deferred_core::Deferred;
    /// let cell: Deferred<u8> = Deferred::new();
    /// cell.try_claim().unwrap().succeed(5).unwrap();
    /// assert_eq!(cell.get(), Some(&5));
    /// ```
    pub fn succeed(self, value: T) -> Result<(), T> {
        self.defuse().succeed(value)
    }

    /// Completes the cell with `error`, as [`Deferred::fail`].
    ///
    /// ```
    /// use deferred_core::{Deferred, Error};
    /// let cell: Deferred<u8, &str> = Deferred::new();
    /// cell.try_claim().unwrap().fail("bad").unwrap();
    /// assert_eq!(cell.try_get(), Some(Err(Error::Failed(&"bad"))));
    /// ```
    pub fn fail(self, error: E) -> Result<(), E> {
        self.defuse().fail(error)
    }

    /// Completes the cell with `result`, as [`Deferred::complete`].
    ///
    /// ```
    /// use deferred_core::Deferred;
    /// let cell: Deferred<u8, ()> = Deferred::new();
    /// cell.try_claim().unwrap().complete(Ok(2)).unwrap();
    /// assert_eq!(cell.get(), Some(&2));
    /// ```
    pub fn complete(self, result: Result<T, E>) -> Result<(), Result<T, E>> {
        self.defuse().complete(result)
    }

    /// Cancels the cell, as [`Deferred::cancel`].
    ///
    /// ```
    /// use deferred_core::Deferred;
    /// let cell: Deferred<u8> = Deferred::new();
    /// assert!(cell.try_claim().unwrap().cancel());
    /// assert!(cell.is_cancelled());
    /// ```
    pub fn cancel(self) -> bool {
        self.defuse().cancel()
    }

    /// Completes the cell as panicked, as [`Deferred::die`].
    ///
    /// ```
    /// use deferred_core::{Deferred, Error};
    /// let cell: Deferred<u8> = Deferred::new();
    /// assert!(cell.try_claim().unwrap().die());
    /// assert_eq!(cell.try_get(), Some(Err(Error::Panicked)));
    /// ```
    pub fn die(self) -> bool {
        self.defuse().die()
    }

    /// Turns the claim into a [`Producer`], which cancels the cell if dropped without
    /// completing instead of passing the claim on.
    ///
    /// ```
    /// use deferred_core::Deferred;
    /// let cell: Deferred<u8> = Deferred::new();
    /// drop(cell.try_claim().unwrap().into_producer());
    /// assert!(cell.is_cancelled());
    /// ```
    pub fn into_producer(self) -> Producer<'a, T, E> {
        Producer {
            cell: Some(self.defuse()),
        }
    }

    /// Gives up the claim without releasing it; the caller completes the cell.
    fn defuse(self) -> &'a Deferred<T, E> {
        let cell = self.cell;
        core::mem::forget(self);
        cell
    }
}

impl<T, E> Drop for Claim<'_, T, E> {
    fn drop(&mut self) {
        self.cell.release_claim();
    }
}

impl<T, E> fmt::Debug for Claim<'_, T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Claim").finish_non_exhaustive()
    }
}

/// The right to complete a [`Deferred`], which **cancels** the cell if dropped without
/// completing it, so no awaiter is left hanging by a producer that went away.
///
/// Made by [`Deferred::producer`] or [`Claim::into_producer`]. Contrast [`Claim`], which
/// passes itself on when dropped.
///
/// ```
/// use deferred_core::{Deferred, Error};
/// let cell: Deferred<u8> = Deferred::new();
/// {
///     let _producer = cell.producer().unwrap();
///     // ... the work is abandoned ...
/// }
/// assert_eq!(cell.try_get(), Some(Err(Error::Cancelled)));
/// ```
#[must_use = "dropping a producer cancels the cell"]
pub struct Producer<'a, T, E = core::convert::Infallible> {
    cell: Option<&'a Deferred<T, E>>,
}

impl<T, E> Producer<'_, T, E> {
    fn take(&mut self) -> Option<&Deferred<T, E>> {
        self.cell.take()
    }

    /// Completes the cell with `value`; gives it back if the cell was completed by someone
    /// else meanwhile.
    ///
    /// ```
    /// use deferred_core::Deferred;
    /// let cell: Deferred<u8> = Deferred::new();
    /// cell.producer().unwrap().succeed(3).unwrap();
    /// assert_eq!(cell.get(), Some(&3));
    /// ```
    pub fn succeed(mut self, value: T) -> Result<(), T> {
        match self.take() {
            Some(cell) => cell.succeed(value),
            None => Err(value),
        }
    }

    /// Completes the cell with `error`.
    ///
    /// ```
    /// use deferred_core::{Deferred, Error};
    /// let cell: Deferred<u8, char> = Deferred::new();
    /// cell.producer().unwrap().fail('x').unwrap();
    /// assert_eq!(cell.try_get(), Some(Err(Error::Failed(&'x'))));
    /// ```
    pub fn fail(mut self, error: E) -> Result<(), E> {
        match self.take() {
            Some(cell) => cell.fail(error),
            None => Err(error),
        }
    }

    /// Completes the cell with `result`.
    ///
    /// ```
    /// use deferred_core::Deferred;
    /// let cell: Deferred<u8, ()> = Deferred::new();
    /// cell.producer().unwrap().complete(Err(())).unwrap();
    /// assert!(cell.is_done());
    /// ```
    pub fn complete(mut self, result: Result<T, E>) -> Result<(), Result<T, E>> {
        match self.take() {
            Some(cell) => cell.complete(result),
            None => Err(result),
        }
    }

    /// Completes the cell as panicked.
    ///
    /// ```
    /// use deferred_core::{Deferred, Error};
    /// let cell: Deferred<u8> = Deferred::new();
    /// assert!(cell.producer().unwrap().die());
    /// assert_eq!(cell.try_get(), Some(Err(Error::Panicked)));
    /// ```
    pub fn die(mut self) -> bool {
        self.take().is_some_and(Deferred::die)
    }
}

impl<'a, T, E> Producer<'a, T, E> {
    /// Whether the value this producer would make is wanted by no one now: no one waits on
    /// the cell, or it has been completed (or is being completed) by someone else, so a
    /// completion by this producer would lose. A producer can then stop its work (as with
    /// tokio's `oneshot::Sender::is_closed`). Never waits: one Acquire load.
    ///
    /// **Who waits.** Everything linked in the cell: a [`Wait`](crate::Wait),
    /// [`WaitCloned`](crate::WaitCloned), `OwnedWait` or `LazyWait` polled at least once and
    /// neither finished nor dropped; a [`ClaimWait`] or [`GetOrInit`] waiting for the claim
    /// (or for the value); a thread in `wait_blocking*`; an
    /// [`on_complete`](Deferred::on_complete) callback that has not run nor been disposed.
    /// Not counted: a future made but not polled yet, code that only probes the cell
    /// ([`try_get`](Deferred::try_get) and friends), and a [`Closed`] future (this producer's
    /// own).
    ///
    /// **Not final.** The cell is shared: anyone holding it may start waiting at any time,
    /// and then this returns `false` again. A producer made before its waiters have polled
    /// sees `true` until they do. Waiters a `Lazy`'s relay wake has just woken are unlinked
    /// until they are polled again.
    ///
    /// ```
    /// use deferred_core::Deferred;
    /// # futures::executor::block_on(async {
    /// let cell: Deferred<u8> = Deferred::new();
    /// let producer = cell.producer().unwrap();
    /// assert!(producer.is_closed()); // no one waits yet
    /// let mut waiter = Box::pin(cell.wait());
    /// assert!(futures::poll!(waiter.as_mut()).is_pending());
    /// assert!(!producer.is_closed()); // someone does now
    /// drop(waiter);
    /// assert!(producer.is_closed()); // and no longer
    /// # });
    /// ```
    pub fn is_closed(&self) -> bool {
        self.cell
            .map_or(true, |cell| crate::cell::is_closed(cell.state_acquire()))
    }

    /// Resolves when [`is_closed`](Self::is_closed) holds: at once if it does, otherwise
    /// when the last waiter goes (the one whose leaving makes the cell have no waiter wakes
    /// this future) or the cell is completed by someone else (the completion wakes it). As
    /// tokio's `oneshot::Sender::closed`, for racing the work against it:
    /// `select!` on `producer.closed()` and the computation, and drop the computation (and the
    /// producer, which cancels the cell) if `closed` wins.
    ///
    /// The same caveats as [`is_closed`](Self::is_closed): the state is not final (a waiter
    /// may come after this resolves), and a producer made before its waiters have polled
    /// resolves at once, so start waiting on it after they have. It takes `&mut self`: one
    /// `Closed` at a time per producer (and so per cell).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future unlinks it; nothing is lost.
    ///
    /// ```
    /// use deferred_core::Deferred;
    /// # futures::executor::block_on(async {
    /// let cell: Deferred<u8> = Deferred::new();
    /// let mut producer = cell.producer().unwrap();
    /// let mut waiter = Box::pin(cell.wait());
    /// assert!(futures::poll!(waiter.as_mut()).is_pending());
    ///
    /// let mut closed = Box::pin(producer.closed());
    /// assert!(futures::poll!(closed.as_mut()).is_pending()); // someone waits
    /// drop(waiter); // the last waiter goes: `closed` is woken
    /// closed.await;
    /// assert!(producer.is_closed());
    /// drop(producer); // cancels the cell
    /// # });
    /// ```
    pub fn closed(&mut self) -> Closed<'_, T, E> {
        Closed {
            waiter: self.cell.map(Waiter::new),
            done: false,
        }
    }
}

/// A future that resolves when no one waits on a [`Producer`]'s cell any more, or the cell
/// is completed by someone else. Made by [`Producer::closed`].
///
/// # Cancel safety
///
/// Dropping it unlinks it; nothing is lost.
///
/// ```
/// use deferred_core::Deferred;
/// # futures::executor::block_on(async {
/// let cell: Deferred<u8> = Deferred::new();
/// let mut producer = cell.producer().unwrap();
/// producer.closed().await; // no one waits: resolves at once
/// # drop(producer);
/// # });
/// ```
#[must_use = "futures do nothing unless polled"]
pub struct Closed<'p, T, E = core::convert::Infallible> {
    /// `None` only for a producer that has already completed (never seen from outside).
    waiter: Option<Waiter<&'p Deferred<T, E>>>,
    done: bool,
}

// SAFETY: as for `Wait`: the node is only reached by other threads through the cell's lock,
// and the future hands out nothing.
unsafe impl<T: Send + Sync, E: Send + Sync> Send for Closed<'_, T, E> {}
// SAFETY: `&Closed` gives access to nothing but `is_terminated` and `Debug`.
unsafe impl<T: Send + Sync, E: Send + Sync> Sync for Closed<'_, T, E> {}

impl<T, E> Future for Closed<'_, T, E> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // SAFETY: we never move out of the pinned future.
        let this = unsafe { self.get_unchecked_mut() };
        let Some(waiter) = this.waiter.as_mut() else {
            this.done = true;
            return Poll::Ready(());
        };
        // SAFETY: the waiter is a field of the pinned future (structural pinning: the
        // `Option` is set once, when the future is made, and never replaced); the producer
        // this future borrows mutably holds the claim for as long as it lives.
        if unsafe { Pin::new_unchecked(waiter).poll_closer(cx.waker()) } {
            this.done = true;
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

impl<T, E> FusedFuture for Closed<'_, T, E> {
    fn is_terminated(&self) -> bool {
        self.done
    }
}

impl<T, E> fmt::Debug for Closed<'_, T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Closed")
            .field(
                "linked",
                &self.waiter.as_ref().is_some_and(Waiter::is_linked),
            )
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl<T, E> Drop for Producer<'_, T, E> {
    fn drop(&mut self) {
        if let Some(cell) = self.take() {
            cell.cancel();
        }
    }
}

impl<T, E> fmt::Debug for Producer<'_, T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Producer")
            .field("completed", &self.cell.is_none())
            .finish_non_exhaustive()
    }
}

impl<T, E> Deferred<T, E> {
    /// Takes the claim if no one holds it and the cell is not complete. Never waits.
    ///
    /// ```
    /// use deferred_core::Deferred;
    /// let cell: Deferred<u8> = Deferred::new();
    /// let c = cell.try_claim().unwrap();
    /// assert!(cell.try_claim().is_none());
    /// drop(c); // passed on; no one was waiting, so it is free again
    /// assert!(cell.try_claim().is_some());
    /// ```
    pub fn try_claim(&self) -> Option<Claim<'_, T, E>> {
        // Not `then_some`: that would build (and drop, releasing the holder's claim) a
        // `Claim` even when the bit was not taken.
        if self.try_claim_bit() {
            Some(Claim { cell: self })
        } else {
            None
        }
    }

    /// Takes the claim as a [`Producer`], which cancels the cell if dropped without
    /// completing it. `None` if the claim is held or the cell is complete.
    ///
    /// ```
    /// use deferred_core::Deferred;
    /// let cell: Deferred<u8> = Deferred::new();
    /// let p = cell.producer().unwrap();
    /// assert!(cell.producer().is_none());
    /// p.succeed(1).unwrap();
    /// ```
    pub fn producer(&self) -> Option<Producer<'_, T, E>> {
        self.try_claim().map(Claim::into_producer)
    }

    /// Waits for the claim: resolves to `Ok(Claim)` when this caller may complete the cell,
    /// or to `Err(outcome)` if the cell completes first. Claimants are served first in,
    /// first out.
    ///
    /// ```
    /// use deferred_core::Deferred;
    /// # futures::executor::block_on(async {
    /// let cell: Deferred<u8> = Deferred::new();
    /// let claim = cell.claim().await.unwrap();
    /// claim.succeed(8).unwrap();
    /// assert_eq!(cell.claim().await.unwrap_err(), Ok(&8));
    /// # });
    /// ```
    pub fn claim(&self) -> ClaimWait<'_, T, E> {
        ClaimWait {
            waiter: Waiter::new(self),
            done: false,
        }
    }

    /// Returns the value, running `init` to produce it if the cell is empty and no one else
    /// is producing it (`OnceCell::get_or_init`; Effect `complete(effect)`).
    ///
    /// One initializer runs at a time. If its future is dropped (or panics) before it
    /// completes, the claim passes to the oldest waiting `get_or_init` caller, which runs its
    /// own `init`: no caller is stranded. If the cell is completed by someone else (with a
    /// value, or failed, cancelled or marked panicked), that outcome is returned, also while
    /// this caller's `init` runs: the completion wakes it, and its `init` future is dropped
    /// unfinished.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future drops the initializer's future (if this caller was running it)
    /// and passes the claim on; nothing else is lost.
    ///
    /// ```
    /// use deferred_core::Deferred;
    /// # futures::executor::block_on(async {
    /// let cell: Deferred<u32> = Deferred::new();
    /// assert_eq!(cell.get_or_init(|| async { 1 }).await, Ok(&1));
    /// assert_eq!(cell.get_or_init(|| async { 2 }).await, Ok(&1)); // not run
    /// # });
    /// ```
    pub fn get_or_init<F, Fut>(&self, init: F) -> GetOrInit<'_, T, E, F, Fut>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = T>,
    {
        GetOrInit::new(self, init, Ok)
    }

    /// As [`get_or_init`](Self::get_or_init), with an initializer that can fail: `Err(e)`
    /// completes the cell with the error (every waiter sees `Error::Failed(e)`).
    ///
    /// ```
    /// use deferred_core::{Deferred, Error};
    /// # futures::executor::block_on(async {
    /// let cell: Deferred<u32, String> = Deferred::new();
    /// let r = cell.get_or_try_init(|| async { Err("offline".to_string()) }).await;
    /// assert_eq!(r, Err(Error::Failed(&"offline".to_string())));
    /// # });
    /// ```
    pub fn get_or_try_init<F, Fut>(&self, init: F) -> GetOrInit<'_, T, E, F, Fut>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        GetOrInit::new(self, init, core::convert::identity)
    }
}

/// A future that waits for the claim of a [`Deferred`]. Made by [`Deferred::claim`].
///
/// # Cancel safety
///
/// Dropping it unlinks it; if it had just been handed the claim, the claim passes on to
/// the next claimant, so nothing is lost.
///
/// ```
/// use deferred_core::Deferred;
/// # futures::executor::block_on(async {
/// let cell: Deferred<u8> = Deferred::new();
/// let first = cell.try_claim().unwrap();
/// let mut second = Box::pin(cell.claim());
/// assert!(futures::poll!(second.as_mut()).is_pending());
/// drop(first); // handed to `second`
/// let claim = second.await.unwrap();
/// claim.succeed(1).unwrap();
/// # });
/// ```
#[must_use = "futures do nothing unless polled"]
pub struct ClaimWait<'a, T, E = core::convert::Infallible> {
    waiter: Waiter<&'a Deferred<T, E>>,
    done: bool,
}

// SAFETY: as for `Wait`.
unsafe impl<T: Send + Sync, E: Send + Sync> Send for ClaimWait<'_, T, E> {}
// SAFETY: `&ClaimWait` gives access to nothing.
unsafe impl<T: Send + Sync, E: Send + Sync> Sync for ClaimWait<'_, T, E> {}

impl<'a, T, E> Future for ClaimWait<'a, T, E> {
    /// `Ok` with the claim, or `Err` with the outcome if the cell completed first.
    type Output = Result<Claim<'a, T, E>, Result<&'a T, Error<&'a E>>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // SAFETY: we never move out of the pinned future.
        let this = unsafe { self.get_unchecked_mut() };
        let cell: &'a Deferred<T, E> = this.waiter.handle();
        // SAFETY: the waiter is a field of the pinned future (structural pinning).
        let waiter = unsafe { Pin::new_unchecked(&mut this.waiter) };
        match waiter.poll(Which::Claimants, WakeBy::Task(cx.waker())) {
            Polled::Done(state) => {
                this.done = true;
                // SAFETY: `state` has DONE, loaded with Acquire.
                Poll::Ready(Err(unsafe { cell.outcome_of(state) }))
            }
            Polled::Granted => {
                this.done = true;
                Poll::Ready(Ok(Claim { cell }))
            }
            Polled::Pending => Poll::Pending,
        }
    }
}

impl<T, E> FusedFuture for ClaimWait<'_, T, E> {
    fn is_terminated(&self) -> bool {
        self.done
    }
}

impl<T, E> fmt::Debug for ClaimWait<'_, T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClaimWait")
            .field("linked", &self.waiter.is_linked())
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

/// The future of [`Deferred::get_or_init`] and [`Deferred::get_or_try_init`].
///
/// # Cancel safety
///
/// Dropping it drops the initializer's future if this caller was running it, and passes
/// the claim to the oldest waiting initializer. Nothing else is lost.
///
/// ```
/// use deferred_core::Deferred;
/// # futures::executor::block_on(async {
/// let cell: Deferred<&str> = Deferred::new();
/// let fut = cell.get_or_init(|| async { "made" });
/// assert_eq!(fut.await, Ok(&"made"));
/// # });
/// ```
#[must_use = "futures do nothing unless polled"]
pub struct GetOrInit<'a, T, E, F, Fut: Future> {
    // Field order matters: the waiter is unlinked (passing on a claim it was handed and did
    // not take) before `fut` and `claim` are dropped.
    waiter: Waiter<&'a Deferred<T, E>>,
    done: bool,
    init: Option<F>,
    convert: fn(Fut::Output) -> Result<T, E>,
    // Field order matters: `fut` is dropped before `claim`, and `claim` is still released
    // (passed on) if dropping `fut` panics.
    fut: Option<Fut>,
    claim: Option<Claim<'a, T, E>>,
}

// SAFETY: as for `Wait`, plus the initializer and its future, which move with it.
unsafe impl<T: Send + Sync, E: Send + Sync, F: Send, Fut: Future + Send> Send
    for GetOrInit<'_, T, E, F, Fut>
{
}

impl<'a, T, E, F, Fut> GetOrInit<'a, T, E, F, Fut>
where
    F: FnOnce() -> Fut,
    Fut: Future,
{
    fn new(cell: &'a Deferred<T, E>, init: F, convert: fn(Fut::Output) -> Result<T, E>) -> Self {
        GetOrInit {
            waiter: Waiter::new(cell),
            done: false,
            init: Some(init),
            convert,
            fut: None,
            claim: None,
        }
    }
}

impl<'a, T, E, F, Fut> Future for GetOrInit<'a, T, E, F, Fut>
where
    F: FnOnce() -> Fut,
    Fut: Future,
{
    type Output = Result<&'a T, Error<&'a E>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // SAFETY: we never move `waiter` or `fut` out of the pinned future; `fut` is only
        // dropped in place.
        let this = unsafe { self.get_unchecked_mut() };
        let cell: &'a Deferred<T, E> = this.waiter.handle();
        let wake = WakeBy::Task(cx.waker());
        loop {
            if this.fut.is_some() && cell.is_done() {
                // Completed directly (not through our claim) while our initializer ran: its
                // work is not wanted. Dropped in place (pinning holds), then the claim is
                // given up, which hands nothing on: the cell is complete.
                this.fut = None;
                this.claim = None;
            }
            if let Some(fut) = this.fut.as_mut() {
                // SAFETY: `fut` lives inside the pinned `self` and is never moved.
                match unsafe { Pin::new_unchecked(fut) }.poll(cx) {
                    Poll::Ready(out) => {
                        this.fut = None;
                        let result = (this.convert)(out);
                        // The claim is spent whether or not this completion wins (someone
                        // may have completed the cell directly meanwhile): with WON set no
                        // claim matters.
                        match this.claim.take() {
                            Some(claim) => drop(claim.complete(result)),
                            None => drop(cell.complete(result)),
                        }
                        // Fall through: wait for DONE (it is set unless another completer
                        // is between its WON and its DONE, which then wakes us).
                    }
                    Poll::Pending => {
                        // Wait as a plain waiter meanwhile, so that a direct completion of
                        // the cell wakes us too, not only our initializer's progress.
                        // SAFETY: the waiter is a field of the pinned future (structural
                        // pinning).
                        let waiter = unsafe { Pin::new_unchecked(&mut this.waiter) };
                        if let Polled::Done(_) = waiter.poll(Which::Waiters, wake) {
                            // Go round: drop the initializer and report the outcome.
                            continue;
                        }
                        return Poll::Pending;
                    }
                }
            }
            // SAFETY: the waiter is a field of the pinned future (structural pinning).
            let waiter = unsafe { Pin::new_unchecked(&mut this.waiter) };
            match waiter.poll(Which::Claimants, wake) {
                Polled::Done(state) => {
                    this.done = true;
                    // SAFETY: `state` has DONE, loaded with Acquire.
                    return Poll::Ready(unsafe { cell.outcome_of(state) });
                }
                Polled::Granted => {
                    let claim = Claim { cell };
                    match this.init.take() {
                        Some(init) => {
                            // Hold the claim before running user code, so a panic in
                            // `init` passes it on.
                            this.claim = Some(claim);
                            this.fut = Some(init());
                        }
                        // Our initializer already ran and its completion lost to one still
                        // being published; give the claim straight back and wait.
                        None => drop(claim),
                    }
                }
                Polled::Pending => return Poll::Pending,
            }
        }
    }
}

impl<T, E, F, Fut> FusedFuture for GetOrInit<'_, T, E, F, Fut>
where
    F: FnOnce() -> Fut,
    Fut: Future,
{
    fn is_terminated(&self) -> bool {
        self.done
    }
}

impl<T, E, F, Fut: Future> fmt::Debug for GetOrInit<'_, T, E, F, Fut> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GetOrInit")
            .field("running", &self.fut.is_some())
            .field("linked", &self.waiter.is_linked())
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

// ----- the hand-off of a released claim -------------------------------------------------

impl<T, E> Deferred<T, E> {
    /// With the lock held by a claim holder who is giving up without completing: hands the
    /// claim to the oldest waiting claimant (returned, to be notified once unlocked), or
    /// says to clear CLAIMED if there is none or the cell is already being completed.
    ///
    /// # Safety
    ///
    /// The lock is held and the caller holds the claim.
    pub(crate) unsafe fn pass_claim_locked(&self, state: usize) -> (Option<Notify>, usize) {
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
}
