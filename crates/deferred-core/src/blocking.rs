//! Blocking waits for plain threads (`std` only).

use core::pin::pin;

use crate::{
    loom::thread,
    waiter::{Polled, Waiter, WakeBy, Which},
    Deferred, Error,
};

#[cfg(not(loom))]
type Deadline = Option<std::time::Instant>;
/// Under loom there is no clock: a deadline is one that has passed by the time the wait
/// first looks at it, as a zero timeout's has (the wait links its node once, finds the
/// deadline passed, unlinks and returns). That is the time-out path the models can force.
#[cfg(loom)]
type Deadline = Option<Passed>;
#[cfg(loom)]
#[derive(Clone, Copy)]
struct Passed;

impl<T, E> Deferred<T, E> {
    /// Blocks the current thread until the cell completes, and returns its outcome.
    ///
    /// The thread parks (no spinning) and is unparked by the completion. Do not call this
    /// from an async task: it blocks the executor's thread.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use deferred_core::Deferred;
    /// let cell = Arc::new(Deferred::<u32>::new());
    /// let c = Arc::clone(&cell);
    /// std::thread::spawn(move || c.succeed(42).unwrap());
    /// assert_eq!(cell.wait_blocking(), Ok(&42));
    /// ```
    pub fn wait_blocking(&self) -> Result<&T, Error<&E>> {
        loop {
            // Without a deadline the wait only returns once the cell is complete.
            if let Some(outcome) = self.block(None) {
                return outcome;
            }
        }
    }

    /// Blocks until the cell completes or `timeout` passes; `None` on time-out.
    ///
    /// ```
    /// use std::time::Duration;
    /// use deferred_core::Deferred;
    /// let cell: Deferred<u32> = Deferred::new();
    /// assert_eq!(cell.wait_blocking_timeout(Duration::from_millis(1)), None);
    /// cell.succeed(1).unwrap();
    /// assert_eq!(cell.wait_blocking_timeout(Duration::from_millis(1)), Some(Ok(&1)));
    /// ```
    #[cfg(not(loom))]
    pub fn wait_blocking_timeout(
        &self,
        timeout: core::time::Duration,
    ) -> Option<Result<&T, Error<&E>>> {
        match std::time::Instant::now().checked_add(timeout) {
            Some(deadline) => self.block(Some(deadline)),
            // A timeout too far out to represent is no timeout.
            None => Some(self.wait_blocking()),
        }
    }

    /// Under loom, which has no clock: `wait_blocking_timeout(Duration::ZERO)`, the one
    /// timeout a model can force. As outside loom, the wait links its node once, finds the
    /// deadline passed, unlinks it and returns the outcome if there is one by then (`None`
    /// otherwise). Any other timeout panics: loom cannot model time passing.
    #[cfg(loom)]
    #[doc(hidden)]
    pub fn wait_blocking_timeout(
        &self,
        timeout: core::time::Duration,
    ) -> Option<Result<&T, Error<&E>>> {
        assert!(
            timeout.is_zero(),
            "under loom only a zero timeout (a deadline already passed) is modelled"
        );
        self.block(Some(Passed))
    }

    /// Blocks until the cell completes or `deadline` passes; `None` on time-out.
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// use deferred_core::Deferred;
    /// let cell: Deferred<u32> = Deferred::new();
    /// let deadline = Instant::now() + Duration::from_millis(1);
    /// assert_eq!(cell.wait_blocking_deadline(deadline), None);
    /// ```
    #[cfg(not(loom))]
    pub fn wait_blocking_deadline(
        &self,
        deadline: std::time::Instant,
    ) -> Option<Result<&T, Error<&E>>> {
        self.block(Some(deadline))
    }

    fn block(&self, deadline: Deadline) -> Option<Result<&T, Error<&E>>> {
        if let Some(outcome) = self.try_get() {
            return Some(outcome);
        }
        // Pinned on this frame; its `Drop` unlinks it on every way out, unwinding included.
        let mut waiter = pin!(Waiter::new(self));
        loop {
            if let Polled::Done(state) = waiter.as_mut().poll(Which::Waiters, WakeBy::Thread) {
                // SAFETY: `state` has DONE, loaded with Acquire.
                return Some(unsafe { self.outcome_of(state) });
            }
            // A spurious unpark just loops: the node stays linked and is re-checked.
            #[cfg(not(loom))]
            match deadline {
                None => thread::park(),
                Some(deadline) => {
                    let now = std::time::Instant::now();
                    if now >= deadline {
                        waiter.as_mut().cancel();
                        return self.try_get();
                    }
                    thread::park_timeout(deadline - now);
                }
            }
            #[cfg(loom)]
            match deadline {
                None => thread::park(),
                Some(Passed) => {
                    // Passed: the time-out path above, with `now >= deadline`.
                    waiter.as_mut().cancel();
                    return self.try_get();
                }
            }
        }
    }
}
