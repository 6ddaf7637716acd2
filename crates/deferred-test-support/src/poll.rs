//! Polling a future by hand, to stop it at a chosen point.

use core::{
    future::Future,
    pin::pin,
    task::{Context, Poll, Waker},
};

/// Polls `fut` once with a waker that does nothing.
///
/// It takes any future by value, so one function serves each way a test holds its future:
/// a fresh one (`poll_once(cache.get(&k))`), a pinned one (`poll_once(fut.as_mut())`, as
/// `Pin<&mut F>` is a future too) and an `Unpin` one behind `&mut` (`poll_once(&mut fut)`).
///
/// ```
/// use std::{future::ready, pin::pin, task::Poll};
/// use deferred_test_support::poll_once;
///
/// assert_eq!(poll_once(ready(1)), Poll::Ready(1));
/// let mut pending = pin!(std::future::pending::<()>());
/// assert_eq!(poll_once(pending.as_mut()), Poll::Pending);
/// ```
pub fn poll_once<F: Future>(fut: F) -> Poll<F::Output> {
    poll_with(fut, futures::task::noop_waker_ref())
}

/// Polls `fut` once with `waker`, for a test that watches what the future does with it.
///
/// ```
/// use std::{future::ready, task::Poll};
/// use deferred_test_support::poll_with;
///
/// assert_eq!(poll_with(ready(1), futures::task::noop_waker_ref()), Poll::Ready(1));
/// ```
pub fn poll_with<F: Future>(fut: F, waker: &Waker) -> Poll<F::Output> {
    pin!(fut).poll(&mut Context::from_waker(waker))
}
