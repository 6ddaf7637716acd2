//! The intrusive wait list: pinned nodes that live inside the futures' `Waiter`s (or on the
//! stack of a blocking waiter) and are linked into a cell's list while they wait.
//!
//! Every field here is guarded by the `LOCKED` bit of the owning cell's state word. A node
//! is linked and unlinked in O(1); it is never touched by the cell after the cell has set its
//! status to `Notified` or `Granted` and released the lock, so its owner may free it then.

use core::{marker::PhantomPinned, ptr, task::Waker};

use crate::loom::{AtomicBool, Ordering::*, UnsafeCell};

/// How a waiter wants to be told.
pub(crate) enum Notify {
    /// Nothing registered yet (or already taken by the waker of the list).
    None,
    /// An async task.
    Waker(Waker),
    /// The task of a producer waiting in `Producer::closed` for the cell to have no waiter
    /// left (or to complete). It is not itself a waiter: it is linked only while a node that
    /// is not a closer is, and whoever unlinks the last such node of a pending cell takes
    /// every closer off and wakes the one that can still be polled
    /// (`Deferred::take_lone_closers`).
    Closer(Waker),
    /// A thread parked in a blocking wait.
    #[cfg(feature = "std")]
    Thread(crate::loom::thread::Thread),
    /// A completion callback: `call(node, cell)` runs it with the outcome of `cell` (or, with
    /// a null `cell`, only frees it) and frees the heap node it lives in.
    #[cfg(feature = "alloc")]
    Callback {
        node: *const (),
        call: unsafe fn(*const (), *const ()),
    },
}

impl Notify {
    /// Wakes the waiter. This runs user code (a waker or a callback), so it is only ever
    /// called with the cell's lock released. `cell` is the completed cell, for callbacks
    /// (null when the notify cannot be a callback, or to free a callback unrun).
    ///
    /// # Safety
    ///
    /// The notify was taken off its node (a callback's node is then in no list), and this
    /// is the one call made for it. If it is a callback, `cell` is null or points to the
    /// `Deferred` the callback was registered on, alive and complete.
    #[inline]
    pub(crate) unsafe fn notify(self, cell: *const ()) {
        #[cfg(not(feature = "alloc"))]
        let _ = cell;
        match self {
            Notify::None => {}
            Notify::Waker(waker) | Notify::Closer(waker) => waker.wake(),
            #[cfg(feature = "std")]
            Notify::Thread(thread) => thread.unpark(),
            #[cfg(feature = "alloc")]
            // SAFETY: `node` and `call` were made together by `on_complete`; the caller
            // guarantees the node is off every list, that this is its one call, and what
            // `cell` is.
            Notify::Callback { node, call } => unsafe { call(node, cell) },
        }
    }

    /// Drops the notify without waking anyone; a callback is freed without being run.
    ///
    /// # Safety
    ///
    /// As for [`notify`](Self::notify).
    pub(crate) unsafe fn discard(self) {
        match self {
            #[cfg(feature = "alloc")]
            // SAFETY: forwarded to the caller; a null cell only frees the callback.
            callback @ Notify::Callback { .. } => unsafe { callback.notify(core::ptr::null()) },
            _ => {}
        }
    }

    /// Whether this is a completion callback (which only a completion may run).
    #[cfg(feature = "alloc")]
    #[inline]
    pub(crate) fn is_callback(&self) -> bool {
        matches!(self, Notify::Callback { .. })
    }

    /// Whether this is a producer's closer.
    #[inline]
    pub(crate) fn is_closer(&self) -> bool {
        matches!(self, Notify::Closer(_))
    }
}

/// Where a node stands. Guarded by the cell's lock.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Status {
    /// Not in any list.
    Idle,
    /// Linked into one of the cell's lists.
    Linked,
    /// Removed from its list by a completion, which has taken its waker.
    Notified,
    /// Removed from the claimant list by a released claim: this node now holds the claim.
    Granted,
}

pub(crate) struct Links {
    pub(crate) prev: *const Node,
    pub(crate) next: *const Node,
    pub(crate) notify: Notify,
    pub(crate) status: Status,
}

/// One waiter. `!Unpin`: once linked, it must not move until it is unlinked, which its
/// owner guarantees (a `Waiter`, pinned while linked, unlinks it in its `Drop`; a
/// callback's node lives on the heap until it is run or freed; `notify_waiters`' sentinel
/// is pinned on a frame that ends only once it is off the list).
pub(crate) struct Node {
    pub(crate) links: UnsafeCell<Links>,
    /// Set (with Release, under the lock, as the very last touch) when a completion takes the
    /// node off its list. Its owner may then skip the lock when it drops the node.
    notified: AtomicBool,
    _pin: PhantomPinned,
}

impl Node {
    pub(crate) fn new() -> Self {
        Node {
            links: UnsafeCell::new(Links {
                prev: ptr::null(),
                next: ptr::null(),
                notify: Notify::None,
                status: Status::Idle,
            }),
            notified: AtomicBool::new(false),
            _pin: PhantomPinned,
        }
    }

    /// Whether a completion has taken this node off its list and is done with it. If so the
    /// node is no longer reachable from the cell and may be freed without the lock.
    #[inline]
    pub(crate) fn is_notified(&self) -> bool {
        // Acquire: pairs with the Release in `pop_front`, the completer's last touch.
        self.notified.load(Acquire)
    }

    /// Runs `f` on the node's guarded fields.
    ///
    /// # Safety
    ///
    /// The caller holds the lock of the cell this node belongs to (or is its only user: the
    /// node is `Idle` and not reachable from any list), and `f` does not reach this node's
    /// links again through another path.
    #[inline]
    pub(crate) unsafe fn with_links<R>(&self, f: impl FnOnce(&mut Links) -> R) -> R {
        // SAFETY: the caller guarantees exclusive access through the lock.
        self.links.with_mut(|links| f(unsafe { &mut *links }))
    }
}

/// A doubly linked FIFO of nodes. Guarded by the cell's lock.
pub(crate) struct List {
    head: *const Node,
    tail: *const Node,
}

impl List {
    pub(crate) const fn new() -> Self {
        List {
            head: ptr::null(),
            tail: ptr::null(),
        }
    }

    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.head.is_null()
    }

    /// The node, if the list holds exactly one.
    #[inline]
    pub(crate) fn single(&self) -> Option<*const Node> {
        (!self.head.is_null() && self.head == self.tail).then_some(self.head)
    }

    /// Whether every linked node is a producer's closer (`true` for an empty list). Walks
    /// only past leading closers, so it costs O(1 + closers linked): one closer normally,
    /// more only while `Closed` futures leaked (`mem::forget`) while linked stay in the list.
    ///
    /// # Safety
    ///
    /// The cell's lock is held.
    pub(crate) unsafe fn all_closers(&self) -> bool {
        let mut at = self.head;
        while !at.is_null() {
            // SAFETY: linked nodes are alive (list invariant) and the lock is held.
            let (closer, next) = unsafe { (*at).with_links(|l| (l.notify.is_closer(), l.next)) };
            if !closer {
                return false;
            }
            at = next;
        }
        true
    }

    /// Links `node` at the back.
    ///
    /// # Safety
    ///
    /// The cell's lock is held; `node` is `Idle`, pinned, and stays alive until it is
    /// unlinked (by `remove` or `pop_front`).
    #[inline]
    pub(crate) unsafe fn push_back(&mut self, node: &Node) {
        let node_ptr: *const Node = node;
        let old_tail = self.tail;
        // Relaxed: only read by the owner (this thread, under the lock now) or by the
        // owner after a later Release store.
        node.notified.store(false, Relaxed);
        // SAFETY: the lock is held (caller), so the node's links are ours.
        unsafe {
            node.with_links(|l| {
                l.prev = old_tail;
                l.next = ptr::null();
                l.status = Status::Linked;
            });
        }
        if old_tail.is_null() {
            self.head = node_ptr;
        } else {
            // SAFETY: every linked node is alive (list invariant) and the lock is held.
            unsafe { (*old_tail).with_links(|l| l.next = node_ptr) };
        }
        self.tail = node_ptr;
    }

    /// Unlinks the front node, sets its status to `status` and takes its `Notify`. Returns
    /// the node's address too, for identity checks only (it may be freed once the lock is
    /// released).
    ///
    /// # Safety
    ///
    /// The cell's lock is held.
    #[inline]
    pub(crate) unsafe fn pop_front(&mut self, status: Status) -> Option<(*const Node, Notify)> {
        // SAFETY: forwarded to the caller.
        unsafe { self.pop_front_with(status, |n| core::mem::replace(n, Notify::None)) }
    }

    /// As [`pop_front`](Self::pop_front), but hands the node's `Notify` to `take` where it
    /// lies, for a drain to move it straight into its batch. Returned by value instead, the
    /// 24-byte enum went through stack temporaries written in pieces of other widths than
    /// they were read in (a store-forwarding stall per node, most of a drain's time).
    /// Returns whether a node was popped.
    ///
    /// # Safety
    ///
    /// The cell's lock is held; `take` takes the notify out, leaving `Notify::None` (as
    /// `pop_front` does): the node's owner may free the node, and drop what is left in it,
    /// as soon as it is marked `Notified`, with no wake.
    #[inline]
    pub(crate) unsafe fn pop_front_into(
        &mut self,
        status: Status,
        take: impl FnOnce(&mut Notify),
    ) -> bool {
        // SAFETY: forwarded to the caller.
        unsafe { self.pop_front_with(status, take) }.is_some()
    }

    /// As [`pop_front`](Self::pop_front), but leaves the node's `Notify` in the node (it is
    /// dropped with the node, never woken): for the closers of leaked `Closed` futures,
    /// whose wakers must not be dropped under the lock (user code) and need no wake.
    ///
    /// # Safety
    ///
    /// The cell's lock is held.
    pub(crate) unsafe fn pop_front_leaving_notify(&mut self, status: Status) -> bool {
        // SAFETY: forwarded to the caller.
        unsafe { self.pop_front_with(status, |_| ()) }.is_some()
    }

    /// Unlinks the front node, sets its status to `status`, and runs `take` on its notify
    /// (under the lock, before the node's last touch).
    ///
    /// # Safety
    ///
    /// The cell's lock is held.
    #[inline]
    unsafe fn pop_front_with<R>(
        &mut self,
        status: Status,
        take: impl FnOnce(&mut Notify) -> R,
    ) -> Option<(*const Node, R)> {
        let head = self.head;
        if head.is_null() {
            return None;
        }
        // SAFETY: linked nodes are alive and the lock is held. After this block the node is
        // out of the list and marked, and the list never touches it again.
        let (next, taken) = unsafe {
            (*head).with_links(|l| {
                l.status = status;
                let next = l.next;
                l.prev = ptr::null();
                l.next = ptr::null();
                (next, take(&mut l.notify))
            })
        };
        self.head = next;
        if next.is_null() {
            self.tail = ptr::null();
        } else {
            // SAFETY: as above, `next` is linked and alive.
            unsafe { (*next).with_links(|l| l.prev = ptr::null()) };
        }
        if status == Status::Notified {
            // SAFETY: still linked-alive until this store; it is the last touch of the node.
            // Release: pairs with the Acquire in `is_notified`.
            unsafe { (*head).notified.store(true, Release) };
        }
        Some((head, taken))
    }

    /// Unlinks `node`, which must be in this list.
    ///
    /// # Safety
    ///
    /// The cell's lock is held and `node` is `Linked` in this list.
    #[inline]
    pub(crate) unsafe fn remove(&mut self, node: &Node) {
        // SAFETY: the lock is held; `node` and its neighbours are linked, hence alive.
        unsafe {
            let (prev, next) = node.with_links(|l| {
                let pn = (l.prev, l.next);
                l.prev = ptr::null();
                l.next = ptr::null();
                l.status = Status::Idle;
                pn
            });
            if prev.is_null() {
                self.head = next;
            } else {
                (*prev).with_links(|l| l.next = next);
            }
            if next.is_null() {
                self.tail = prev;
            } else {
                (*next).with_links(|l| l.prev = prev);
            }
        }
    }
}
