//! The futures that await a cell: by reference, cloned, and owned (`'static`).

use core::{
    fmt,
    future::{Future, IntoFuture},
    pin::Pin,
    task::{Context, Poll},
};

use futures_core::FusedFuture;

use crate::{
    waiter::{CellRef, Polled, Waiter, WakeBy, Which},
    Deferred, Error,
};

/// Polls `waiter` as a plain waiter of its cell; `Ready(state)` once the cell is complete.
#[inline]
fn poll_waiter<H: CellRef>(waiter: Pin<&mut Waiter<H>>, cx: &Context<'_>) -> Poll<usize> {
    match waiter.poll(Which::Waiters, WakeBy::Task(cx.waker())) {
        Polled::Done(state) => Poll::Ready(state),
        // Plain waiters are never granted the claim.
        Polled::Granted | Polled::Pending => Poll::Pending,
    }
}

/// A future that resolves to the outcome of a [`Deferred`], by reference.
///
/// Made by [`Deferred::wait`] or by awaiting `&Deferred`. Costs no allocation: the future
/// itself is the wait-list node.
///
/// # Cancel safety
///
/// Dropping it at any point is safe and loses nothing: it unlinks itself from the cell,
/// which never touches it again. The cell's value stays in the cell.
///
/// # Examples
///
/// ```
/// use deferred_core::Deferred;
/// # futures::executor::block_on(async {
/// let cell: Deferred<u32> = Deferred::new();
/// let (value, ()) = futures::join!(cell.wait(), async { cell.succeed(7).unwrap() });
/// assert_eq!(value, Ok(&7));
/// # });
/// ```
#[must_use = "futures do nothing unless polled"]
pub struct Wait<'a, T, E = core::convert::Infallible> {
    waiter: Waiter<&'a Deferred<T, E>>,
    done: bool,
}

// SAFETY: the future only hands out `&T`/`&E` of a `Deferred` that is `Sync` under these
// bounds; its node is only reached by other threads through the cell's lock.
unsafe impl<T: Send + Sync, E: Send + Sync> Send for Wait<'_, T, E> {}
// SAFETY: `&Wait` gives access to nothing but `is_terminated` and `Debug`.
unsafe impl<T: Send + Sync, E: Send + Sync> Sync for Wait<'_, T, E> {}

impl<T, E> Deferred<T, E> {
    /// Waits for the cell to complete and yields its outcome by reference. `(&cell).await`
    /// does the same.
    ///
    /// ```
    /// use deferred_core::{Deferred, Error};
    /// # futures::executor::block_on(async {
    /// let cell: Deferred<u8, &str> = Deferred::new();
    /// cell.fail("no").unwrap();
    /// assert_eq!(cell.wait().await, Err(Error::Failed(&"no")));
    /// # });
    /// ```
    pub fn wait(&self) -> Wait<'_, T, E> {
        Wait {
            waiter: Waiter::new(self),
            done: false,
        }
    }

    /// Waits for the cell to complete and yields a clone of its outcome.
    ///
    /// ```
    /// use deferred_core::Deferred;
    /// # futures::executor::block_on(async {
    /// let cell: Deferred<String> = Deferred::with_value("hi".into());
    /// let s: String = cell.wait_cloned().await.unwrap();
    /// assert_eq!(s, "hi");
    /// # });
    /// ```
    pub fn wait_cloned(&self) -> WaitCloned<'_, T, E>
    where
        T: Clone,
        E: Clone,
    {
        WaitCloned { inner: self.wait() }
    }
}

impl<'a, T, E> IntoFuture for &'a Deferred<T, E> {
    type Output = Result<&'a T, Error<&'a E>>;
    type IntoFuture = Wait<'a, T, E>;

    /// `(&cell).await` waits for the outcome, as [`Deferred::wait`].
    fn into_future(self) -> Wait<'a, T, E> {
        self.wait()
    }
}

impl<'a, T, E> Future for Wait<'a, T, E> {
    type Output = Result<&'a T, Error<&'a E>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // SAFETY: we never move out of the pinned future; the waiter stays where it is.
        let this = unsafe { self.get_unchecked_mut() };
        let cell: &'a Deferred<T, E> = this.waiter.handle();
        // SAFETY: the waiter is a field of the pinned future (structural pinning).
        let waiter = unsafe { Pin::new_unchecked(&mut this.waiter) };
        let state = core::task::ready!(poll_waiter(waiter, cx));
        this.done = true;
        // SAFETY: `poll_waiter` returns a state with DONE, loaded with Acquire.
        Poll::Ready(unsafe { cell.outcome_of(state) })
    }
}

impl<T, E> FusedFuture for Wait<'_, T, E> {
    fn is_terminated(&self) -> bool {
        self.done
    }
}

impl<T, E> fmt::Debug for Wait<'_, T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wait")
            .field("linked", &self.waiter.is_linked())
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

/// A future that resolves to a clone of a [`Deferred`]'s outcome. Made by
/// [`Deferred::wait_cloned`].
///
/// # Cancel safety
///
/// As [`Wait`]: dropping it unlinks it and loses nothing.
///
/// ```
/// use deferred_core::Deferred;
/// # futures::executor::block_on(async {
/// let cell: Deferred<Vec<u8>> = Deferred::with_value(vec![1]);
/// assert_eq!(cell.wait_cloned().await, Ok(vec![1]));
/// # });
/// ```
#[must_use = "futures do nothing unless polled"]
#[derive(Debug)]
pub struct WaitCloned<'a, T, E = core::convert::Infallible> {
    inner: Wait<'a, T, E>,
}

impl<T: Clone, E: Clone> Future for WaitCloned<'_, T, E> {
    type Output = Result<T, Error<E>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // SAFETY: structural pinning of the only field; we never move it.
        let inner = unsafe { self.map_unchecked_mut(|s| &mut s.inner) };
        inner.poll(cx).map(|r| r.cloned().map_err(Error::cloned))
    }
}

impl<T: Clone, E: Clone> FusedFuture for WaitCloned<'_, T, E> {
    fn is_terminated(&self) -> bool {
        self.inner.done
    }
}

#[cfg(feature = "alloc")]
pub use owned::OwnedWait;

#[cfg(feature = "alloc")]
mod owned {
    use super::*;
    use alloc::sync::Arc;

    /// A `'static` future that resolves to a clone of the outcome of an
    /// `Arc<Deferred>`, so it can be spawned. Made by [`Deferred::wait_owned`].
    ///
    /// # Cancel safety
    ///
    /// As [`Wait`]: dropping it unlinks it and loses nothing.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use deferred_core::Deferred;
    /// # futures::executor::block_on(async {
    /// let cell: Arc<Deferred<u8>> = Arc::new(Deferred::new());
    /// let waiter = Deferred::wait_owned(cell.clone()); // no borrow of `cell`
    /// cell.succeed(4).unwrap();
    /// assert_eq!(waiter.await, Ok(4));
    /// # });
    /// ```
    #[must_use = "futures do nothing unless polled"]
    pub struct OwnedWait<T, E = core::convert::Infallible> {
        waiter: Waiter<Arc<Deferred<T, E>>>,
        done: bool,
    }

    // SAFETY: as for `Wait`; the `Arc` is `Send` when the cell is `Send + Sync`.
    unsafe impl<T: Send + Sync, E: Send + Sync> Send for OwnedWait<T, E> {}
    // SAFETY: `&OwnedWait` gives access to nothing but `is_terminated` and `Debug`.
    unsafe impl<T: Send + Sync, E: Send + Sync> Sync for OwnedWait<T, E> {}

    impl<T, E> Deferred<T, E> {
        /// Waits on a shared cell without borrowing it: the future owns an `Arc` and is
        /// `'static`, so it can be spawned. Yields a clone of the outcome.
        ///
        /// ```
        /// use std::sync::Arc;
        /// use deferred_core::Deferred;
        /// let cell = Arc::new(Deferred::<u8>::new());
        /// let fut = Deferred::wait_owned(Arc::clone(&cell));
        /// std::thread::spawn(move || cell.succeed(1).unwrap());
        /// assert_eq!(futures::executor::block_on(fut), Ok(1));
        /// ```
        pub fn wait_owned(this: Arc<Self>) -> OwnedWait<T, E> {
            OwnedWait {
                waiter: Waiter::new(this),
                done: false,
            }
        }
    }

    impl<T: Clone, E: Clone> Future for OwnedWait<T, E> {
        type Output = Result<T, Error<E>>;

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            // SAFETY: we never move out of the pinned future.
            let this = unsafe { self.get_unchecked_mut() };
            // SAFETY: the waiter is a field of the pinned future (structural pinning).
            let waiter = unsafe { Pin::new_unchecked(&mut this.waiter) };
            let state = core::task::ready!(poll_waiter(waiter, cx));
            this.done = true;
            // SAFETY: `state` has DONE, loaded with Acquire.
            let outcome = unsafe { this.waiter.handle().outcome_of(state) };
            Poll::Ready(outcome.cloned().map_err(Error::cloned))
        }
    }

    impl<T: Clone, E: Clone> FusedFuture for OwnedWait<T, E> {
        fn is_terminated(&self) -> bool {
            self.done
        }
    }

    impl<T, E> fmt::Debug for OwnedWait<T, E> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("OwnedWait")
                .field("linked", &self.waiter.is_linked())
                .field("done", &self.done)
                .finish_non_exhaustive()
        }
    }
}
