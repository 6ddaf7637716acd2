//! Completion callbacks (Kotlin `invokeOnCompletion`), behind `alloc`.
//!
//! A callback is a heap node linked into the cell's waiter list like any waiter, so it
//! costs the hot paths nothing: completing a cell with no waiters never looks at it, and a
//! completion with waiters wakes callbacks in the same batches, outside the lock.
//!
//! The node is shared (an `Arc`) by the list and the [`CallbackHandle`], so the handle can
//! look at it under the cell's lock whatever happened meanwhile. Who runs or drops the
//! callback is decided under that lock, by who takes the node off the list: a completion's
//! drain (it runs), [`CallbackHandle::dispose`] (dropped unrun), or the cell's `Drop`
//! (dropped unrun; no handle can outlive the cell, it borrows it).

use alloc::sync::Arc;
use core::{fmt, marker::PhantomData, mem::ManuallyDrop, ptr};

use crate::{
    cell::DONE,
    list::{Node, Notify, Status},
    loom::UnsafeCell,
    Deferred, Error,
};

/// A callback and the list node it waits in.
struct CallbackNode<T, E, F> {
    node: Node,
    /// Taken out exactly once, by `call`, whose one call is made by whoever took the node
    /// off the list under the cell's lock.
    f: UnsafeCell<ManuallyDrop<F>>,
    _cell: PhantomData<fn(&T, &E)>,
}

/// Runs (or, with a null `cell`, only drops) the callback of the node at `node`, and gives
/// up the list's reference to it.
///
/// # Safety
///
/// `node` came from `Arc::into_raw` of an `Arc<CallbackNode<T, E, F>>` (the list's
/// reference), the node is in no list, and this is the one call made for it. A non-null
/// `cell` is the `Deferred<T, E>` it waited on, complete.
unsafe fn call<T, E, F>(node: *const (), cell: *const ())
where
    F: FnOnce(Result<&T, Error<&E>>),
{
    // SAFETY: per the contract, this is the list's reference, given up here.
    let node = unsafe { Arc::from_raw(node.cast::<CallbackNode<T, E, F>>()) };
    // SAFETY: the node is off the list and this is its one call: no one else reads `f`,
    // and it is never read again.
    let f = node.f.with_mut(|f| unsafe { ManuallyDrop::take(&mut *f) });
    drop(node);
    if cell.is_null() {
        return;
    }
    // SAFETY: a non-null `cell` is the completed `Deferred<T, E>`, alive for this call.
    let cell = unsafe { &*cell.cast::<Deferred<T, E>>() };
    if let Some(outcome) = cell.try_get() {
        f(outcome);
    }
}

/// Gives up a handle's reference to a callback node.
///
/// # Safety
///
/// `node` came from `Arc::into_raw` of an `Arc<CallbackNode<T, E, F>>`, and this is the
/// one release made for that reference.
unsafe fn release<T, E, F>(node: *const ()) {
    // SAFETY: per the contract.
    drop(unsafe { Arc::from_raw(node.cast::<CallbackNode<T, E, F>>()) });
}

/// A handle's reference to its callback node, with the type of the callback erased.
struct NodeRef {
    /// From `Arc::into_raw`: the handle's reference.
    arc: *const (),
    /// The node inside it.
    node: *const Node,
    release: unsafe fn(*const ()),
}

/// What [`Deferred::on_complete`] returns: a handle that can take the callback back before
/// it runs (Kotlin's `DisposableHandle`).
///
/// Dropping the handle keeps the callback registered: ignore it if you never need to take
/// the callback back. It borrows the cell, and costs one reference count on the callback's
/// node until dropped.
///
/// ```
/// use deferred_core::Deferred;
///
/// let cell: Deferred<u32> = Deferred::new();
/// let handle = cell.on_complete(|_| unreachable!("disposed before the cell completed"));
/// assert!(handle.dispose()); // removed: it will never run
/// cell.succeed(1).unwrap();
/// ```
pub struct CallbackHandle<'a, T, E = core::convert::Infallible> {
    cell: &'a Deferred<T, E>,
    /// `None` once disposed, or if the callback ran when it was registered.
    node: Option<NodeRef>,
}

// The handle gives access to the cell (as `&Deferred`, which is `Send` when the cell is
// `Sync`) and holds a reference to a callback node that is only touched under the cell's lock.
// SAFETY: the callback itself is `Send`, and it is dropped (by `dispose`) or freed on whatever
// thread releases the last reference; the rest is shared as said above.
unsafe impl<T: Send + Sync, E: Send + Sync> Send for CallbackHandle<'_, T, E> {}
// SAFETY: `&CallbackHandle` gives access to nothing but `Debug`.
unsafe impl<T: Send + Sync, E: Send + Sync> Sync for CallbackHandle<'_, T, E> {}

impl<T, E> CallbackHandle<'_, T, E> {
    /// Takes the callback back if it has not run: returns `true` if it was removed, and
    /// then it never runs (it is dropped here, on this thread); `false` if it has run, is
    /// running, or is about to run on the thread completing the cell, or it ran when it was
    /// registered (the cell was complete then).
    ///
    /// Against a concurrent completion exactly one of the two happens: the callback runs,
    /// or `dispose` returns `true`. Both are decided by who takes the callback off the cell's
    /// list, under its lock. A cell whose completion is still waking its waiters may have
    /// a callback not yet reached: disposing it then returns `true`, and it does not run.
    ///
    /// ```
    /// use std::sync::{Arc, atomic::{AtomicBool, Ordering}};
    /// use deferred_core::Deferred;
    ///
    /// let cell: Deferred<u32> = Deferred::new();
    /// let ran = Arc::new(AtomicBool::new(false));
    /// let r = Arc::clone(&ran);
    /// let handle = cell.on_complete(move |_| r.store(true, Ordering::Relaxed));
    /// cell.succeed(1).unwrap();
    /// assert!(!handle.dispose()); // too late: it ran
    /// assert!(ran.load(Ordering::Relaxed));
    /// ```
    pub fn dispose(mut self) -> bool {
        let Some(node_ref) = self.node.as_ref() else {
            return false;
        };
        let cell = self.cell;
        // SAFETY: our reference keeps the node alive.
        let node: &Node = unsafe { &*node_ref.node };
        let state = cell.lock();
        // SAFETY: the lock is held and the node belongs to this cell. A callback node is
        // only ever linked in the waiter list.
        let (removed, notify, closer) = unsafe {
            if node.with_links(|l| l.status) == Status::Linked {
                let notify = node.with_links(|l| core::mem::replace(&mut l.notify, Notify::None));
                cell.with_lists(|lists| lists.waiters.remove(node));
                (true, notify, cell.take_lone_closers(state))
            } else {
                (false, Notify::None, crate::waiter::WakeOnDrop::NONE)
            }
        };
        // SAFETY: we hold the lock.
        unsafe { cell.unlock(0, 0) };
        // Our reference first, so a panicking callback's drop leaves nothing held.
        drop(self.node.take());
        // The closer's wake before the callback is dropped (user code); the guard wakes it
        // even if dropping our reference panics.
        drop(closer);
        // SAFETY: the callback's notify, taken off its node under the lock (the node is in
        // no list now): its one call. Discarding drops the callback unrun.
        unsafe { notify.discard() };
        removed
    }
}

impl Drop for NodeRef {
    fn drop(&mut self) {
        // SAFETY: `arc` is this handle's reference, released once, here.
        unsafe { (self.release)(self.arc) };
    }
}

impl<T, E> fmt::Debug for CallbackHandle<'_, T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallbackHandle")
            .field("held", &self.node.is_some())
            .finish_non_exhaustive()
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
    /// The returned [`CallbackHandle`] takes the callback back
    /// ([`dispose`](CallbackHandle::dispose)); dropping it leaves the callback registered.
    /// A pending callback counts as a waiter for [`Producer::is_closed`](crate::Producer::is_closed).
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
    pub fn on_complete<F>(&self, f: F) -> CallbackHandle<'_, T, E>
    where
        F: FnOnce(Result<&T, Error<&E>>) + Send + 'static,
    {
        if let Some(outcome) = self.try_get() {
            f(outcome);
            return CallbackHandle {
                cell: self,
                node: None,
            };
        }
        let node = Arc::new(CallbackNode {
            node: Node::new(),
            f: UnsafeCell::new(ManuallyDrop::new(f)),
            _cell: PhantomData,
        });
        // The handle's reference, made before the lock is taken.
        let handle_raw: *const CallbackNode<T, E, F> = Arc::into_raw(Arc::clone(&node));
        let handle = NodeRef {
            arc: handle_raw.cast(),
            // SAFETY: `handle_raw` points to a live node (we hold two references).
            node: unsafe { ptr::addr_of!((*handle_raw).node) },
            release: release::<T, E, F>,
        };
        // The list's reference.
        let raw: *const CallbackNode<T, E, F> = Arc::into_raw(node);
        let state = self.lock();
        if state & DONE != 0 {
            // SAFETY: we hold the lock and changed nothing.
            unsafe { self.unlock(0, 0) };
            drop(handle);
            // SAFETY: the node was never linked; this is its one call; the cell is done.
            unsafe { call::<T, E, F>(raw.cast(), (self as *const Self).cast()) };
            return CallbackHandle {
                cell: self,
                node: None,
            };
        }
        // SAFETY: the lock is held. The node is on the heap, never moves, and lives while
        // the list's reference does, which only `call` gives up, after the node has been
        // taken off the list (by a completion, `dispose`, or `Drop`).
        unsafe {
            let node: &Node = &(*raw).node;
            node.with_links(|l| {
                l.notify = Notify::Callback {
                    node: raw.cast(),
                    call: call::<T, E, F>,
                }
            });
            self.with_lists(|lists| lists.waiters.push_back(node));
        }
        // SAFETY: we hold the lock.
        let before = unsafe { self.unlock(0, 0) };
        let handle = CallbackHandle {
            cell: self,
            node: Some(handle),
        };
        if self.owes_drain(before, true) {
            self.drain();
        }
        handle
    }
}
