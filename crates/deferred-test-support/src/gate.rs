//! A gate a test opens, to order events without sleeping.

use core::{
    future::{poll_fn, Future},
    task::{Poll, Waker},
};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// A one-shot gate: the futures from [`wait`](Gate::wait) stay pending until the test calls
/// [`open`](Gate::open), which wakes every one of them. Clones share the gate.
///
/// A loader that awaits a gate stays in flight exactly as long as the test wants, so the
/// test, not the scheduler, decides what happens while it is.
///
/// ```
/// use std::task::Poll;
/// use deferred_test_support::{poll_once, Gate};
///
/// let gate = Gate::new();
/// let mut wait = Box::pin(gate.wait());
/// assert_eq!(poll_once(wait.as_mut()), Poll::Pending);
/// gate.open();
/// assert_eq!(poll_once(wait.as_mut()), Poll::Ready(()));
/// ```
#[derive(Clone, Default, Debug)]
pub struct Gate(Arc<Mutex<State>>);

#[derive(Default, Debug)]
struct State {
    open: bool,
    /// One slot per waiting future (its latest waker), so a future polled again replaces
    /// its own waker instead of adding one.
    waiters: Vec<Option<Waker>>,
}

impl Gate {
    /// A closed gate.
    pub fn new() -> Self {
        Gate::default()
    }

    /// Opens the gate and wakes every future waiting on it; later waits are ready at once.
    pub fn open(&self) {
        let waiters = {
            let mut state = self.state();
            state.open = true;
            core::mem::take(&mut state.waiters)
        };
        // Woken outside the lock: a waker may poll the waiter (and so this gate) at once.
        for waker in waiters.into_iter().flatten() {
            waker.wake();
        }
    }

    /// A future that is ready once the gate is open.
    pub fn wait(&self) -> impl Future<Output = ()> + Send + 'static {
        let gate = self.clone();
        let mut slot = None;
        poll_fn(move |cx| {
            let mut state = gate.state();
            if state.open {
                return Poll::Ready(());
            }
            let slot = *slot.get_or_insert_with(|| {
                state.waiters.push(None);
                state.waiters.len() - 1
            });
            state.waiters[slot] = Some(cx.waker().clone());
            Poll::Pending
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
