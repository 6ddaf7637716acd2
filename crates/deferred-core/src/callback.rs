//! Completion callbacks (Kotlin `invokeOnCompletion`), behind `alloc`.
//!
//! A callback is a heap node linked into the cell's waiter list like any waiter, so it
//! costs the hot paths nothing: completing a cell with no waiters never looks at it, and a
//! completion with waiters wakes callbacks in the same batches, outside the lock.

use alloc::boxed::Box;
use core::marker::PhantomData;

use crate::{
    cell::DONE,
    list::{Node, Notify},
    Deferred, Error,
};

/// A callback and the list node it waits in. `repr(C)` keeps `node` first, though nothing
/// depends on it: the node pointer and the box pointer are kept apart.
#[repr(C)]
struct CallbackNode<T, E, F> {
    node: Node,
    f: F,
    _cell: PhantomData<fn(&T, &E)>,
}

/// Runs (or, with a null `cell`, only frees) the callback in the box at `node`.
///
/// # Safety
///
/// `node` came from `Box::into_raw` of a `CallbackNode<T, E, F>` that is in no list, and
/// this is the one call made for it. A non-null `cell` is the `Deferred<T, E>` it waited on,
/// complete.
unsafe fn call<T, E, F>(node: *const (), cell: *const ())
where
    F: FnOnce(Result<&T, Error<&E>>),
{
    // SAFETY: per the contract, the box is ours now and is freed when `boxed` drops.
    let boxed = unsafe { Box::from_raw(node.cast::<CallbackNode<T, E, F>>().cast_mut()) };
    if cell.is_null() {
        return;
    }
    // SAFETY: a non-null `cell` is the completed `Deferred<T, E>`, alive for this call.
    let cell = unsafe { &*cell.cast::<Deferred<T, E>>() };
    if let Some(outcome) = cell.try_get() {
        (boxed.f)(outcome);
    }
}

impl<T, E> Deferred<T, E> {
    /// Runs `f` with the outcome once the cell completes (Kotlin `invokeOnCompletion`); at
    /// once, on this thread, if it already has.
    ///
    /// Otherwise `f` runs on the thread that completes the cell, after the value is
    /// published and with no lock held, in first-in first-out order with the cell's other
    /// waiters. A panicking callback does not stop the others (the panic goes on to the
    /// completer once every waiter is woken). If the cell is dropped without being
    /// completed, `f` is dropped without being run. Costs one allocation unless the cell is
    /// already complete.
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use deferred_core::Deferred;
    ///
    /// let cell: Deferred<u32> = Deferred::new();
    /// let seen = Arc::new(Mutex::new(None));
    /// let s = Arc::clone(&seen);
    /// cell.on_complete(move |outcome| *s.lock().unwrap() = Some(*outcome.unwrap()));
    /// assert_eq!(*seen.lock().unwrap(), None);
    /// cell.succeed(7).unwrap();
    /// assert_eq!(*seen.lock().unwrap(), Some(7));
    /// ```
    pub fn on_complete<F>(&self, f: F)
    where
        F: FnOnce(Result<&T, Error<&E>>) + Send + 'static,
    {
        if let Some(outcome) = self.try_get() {
            return f(outcome);
        }
        let raw: *mut CallbackNode<T, E, F> = Box::into_raw(Box::new(CallbackNode {
            node: Node::new(),
            f,
            _cell: PhantomData,
        }));
        let state = self.lock();
        if state & DONE != 0 {
            // SAFETY: we hold the lock and changed nothing.
            unsafe { self.unlock(0, 0) };
            // SAFETY: the box was never linked; this is its one call; the cell is done.
            unsafe { call::<T, E, F>(raw.cast_const().cast(), (self as *const Self).cast()) };
            return;
        }
        // SAFETY: the lock is held. The node is on the heap, never moves, and is freed only
        // by `call`, after it has been taken off the list (by a completion, or by `Drop`).
        unsafe {
            let node: &Node = &(*raw).node;
            node.with_links(|l| {
                l.notify = Notify::Callback {
                    node: raw.cast_const().cast(),
                    call: call::<T, E, F>,
                }
            });
            self.with_lists(|lists| lists.waiters.push_back(node));
        }
        // SAFETY: we hold the lock.
        let before = unsafe { self.unlock(0, 0) };
        if self.owes_drain(before, true) {
            self.drain();
        }
    }
}
