//! The waiter protocol: a [`Waiter`] is one node of a cell's wait lists together with the
//! handle that leads to its cell. It links itself when polled, is woken by a completion (or,
//! in the claimant list, by a released claim), and unlinks itself when dropped. Every future
//! that waits (and the blocking waits) is a `Waiter` plus its own bookkeeping, so the
//! unlinking `Drop` is written once, here.

use core::{mem, pin::Pin, task::Waker};

#[cfg(feature = "alloc")]
use crate::cell::Batch;
use crate::{
    cell::{is_closed, DONE, WON},
    list::{Node, Notify, Status},
    Deferred,
};

/// Which of the two wait lists a node waits in.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Which {
    /// Plain waiters: woken only by completion.
    Waiters,
    /// Waiting initializers: woken by completion, and one at a time by a released claim.
    Claimants,
}

/// What polling a waiter found.
pub(crate) enum Polled {
    /// The cell is complete; the state word as read with Acquire.
    Done(usize),
    /// The waiter was handed the claim (claimant waiters only).
    Granted,
    /// Still waiting; the waiter is linked with the caller's current waker.
    Pending,
}

/// How a waiter wants to be woken: by waking an async task, or by unparking the thread
/// that blocks on the cell. Decides which [`Notify`] its node carries.
#[derive(Clone, Copy)]
pub(crate) enum WakeBy<'a> {
    /// The task whose waker this is.
    Task(&'a Waker),
    /// The current thread, parked in a blocking wait.
    #[cfg(feature = "std")]
    Thread,
}

impl WakeBy<'_> {
    /// Whether `notify` already wakes this waiter, so a re-poll need not make a new one.
    #[inline]
    fn is_current(self, notify: &Notify) -> bool {
        match self {
            WakeBy::Task(waker) => matches!(notify, Notify::Waker(w) if w.will_wake(waker)),
            #[cfg(feature = "std")]
            WakeBy::Thread => matches!(notify, Notify::Thread(_)),
        }
    }

    /// A fresh notify. Cloning a waker runs user code: called with no lock held.
    #[inline]
    fn notify(self) -> Notify {
        match self {
            WakeBy::Task(waker) => Notify::Waker(waker.clone()),
            #[cfg(feature = "std")]
            WakeBy::Thread => Notify::Thread(crate::loom::thread::current()),
        }
    }
}

/// A handle that leads to the cell a [`Waiter`] waits on: `&Deferred`, `Arc<Deferred>`, or
/// a lazy cell's handle.
///
/// # Safety
///
/// `cell` returns the same cell every time it is called on one handle, and the handle keeps
/// that cell alive for as long as it lives. (A waiter's node is linked into the cell that
/// `cell` returns, and unlinked from the cell that `cell` returns when it is dropped.)
pub(crate) unsafe trait CellRef {
    type T;
    type E;
    fn cell(&self) -> &Deferred<Self::T, Self::E>;
}

// SAFETY: a shared reference always points at the same cell, alive for its lifetime.
unsafe impl<T, E> CellRef for &Deferred<T, E> {
    type T = T;
    type E = E;
    #[inline]
    fn cell(&self) -> &Deferred<T, E> {
        self
    }
}

// SAFETY: an `Arc` always points at the same cell, and keeps it alive.
#[cfg(feature = "alloc")]
unsafe impl<T, E> CellRef for alloc::sync::Arc<Deferred<T, E>> {
    type T = T;
    type E = E;
    #[inline]
    fn cell(&self) -> &Deferred<T, E> {
        self
    }
}

/// One waiter of one cell: a wait-list node, the handle that leads to its cell, and the
/// record of which list the node is in (if any).
///
/// It is `!Unpin` (the node is) and links its node only through `Pin<&mut Self>`, so a
/// linked node never moves; its `Drop` unlinks the node (and passes on a claim it was
/// handed and did not take), so a linked node is never freed either. After `Drop` the cell
/// never touches the node again.
pub(crate) struct Waiter<H: CellRef> {
    handle: H,
    node: Node,
    /// Which list the node is in, if any: set only by `poll`/`poll_closer` (as they link
    /// it), cleared by them (when it is granted, or was taken off) and by `unlink`.
    linked: Option<Which>,
}

impl<H: CellRef> Waiter<H> {
    /// A waiter of the cell `handle` leads to, not linked yet.
    pub(crate) fn new(handle: H) -> Self {
        Waiter {
            handle,
            node: Node::new(),
            linked: None,
        }
    }

    /// The handle this waiter was made with.
    #[inline]
    pub(crate) fn handle(&self) -> &H {
        &self.handle
    }

    /// Whether the node is (as far as this waiter knows) in one of the cell's lists.
    pub(crate) fn is_linked(&self) -> bool {
        self.linked.is_some()
    }

    /// Polls the waiter in list `which`: returns `Done` if the cell is complete, `Granted`
    /// if a claimant was handed the claim (or took a free one), and otherwise makes sure
    /// the node is linked with a notify for `wake` and returns `Pending`.
    ///
    /// A node that is linked in one list stays there (only its notify is renewed), whatever
    /// `which` says: an initializer holding the claim waits in the plain list, and if its
    /// completion then loses to one still being published, it is woken from there.
    ///
    /// Inlined up to the first look at the state, so that polling a complete cell (every
    /// poll of a future that finds its outcome ready) costs one load and a branch at the
    /// call site; the rest is `poll_pending`, out of line.
    #[inline]
    pub(crate) fn poll(self: Pin<&mut Self>, which: Which, wake: WakeBy<'_>) -> Polled {
        // Acquire (`state_acquire`): pairs with the Release in `publish`.
        let state = self.handle.cell().state_acquire();
        if state & DONE != 0 {
            return Polled::Done(state);
        }
        self.poll_pending(which, wake)
    }

    /// The rest of `poll`, once a load of the state has found the cell pending.
    #[inline(never)]
    fn poll_pending(self: Pin<&mut Self>, which: Which, wake: WakeBy<'_>) -> Polled {
        // SAFETY: nothing is moved out of the pinned waiter; the node stays where it is.
        let this = unsafe { self.get_unchecked_mut() };
        let cell = this.handle.cell();
        if this.linked.is_some() {
            if let Some(polled) = this.repoll_linked(wake) {
                return polled;
            }
        } else if which == Which::Waiters {
            // SAFETY: `self` is pinned (this method takes `Pin<&mut Self>`).
            return unsafe { this.link_fresh(wake) };
        } else if cell.try_claim_bit() {
            return Polled::Granted;
        }
        // SAFETY: `self` is pinned (this method takes `Pin<&mut Self>`).
        unsafe { this.link(which, wake) }
    }

    /// `link` for a plain waiter that is in no list (`linked` is `None`): the first poll of
    /// every waiting future. Its node is reachable by no one but us (only this waiter links
    /// it, and a completion or hand-off that took it off is done with it once we know), so
    /// its notify is made in place before the lock is taken, rather than made beside it and
    /// moved in under the lock; under the lock there is only the push.
    ///
    /// # Safety
    ///
    /// `self` is pinned (its node may be linked here, and must not move until `Drop`), and
    /// `self.linked` is `None`.
    unsafe fn link_fresh(&mut self, wake: WakeBy<'_>) -> Polled {
        debug_assert!(self.linked.is_none());
        let cell = self.handle.cell();
        let node = &self.node;
        // Cloning a waker runs user code, and so may dropping the notify this replaces
        // (`None`: whatever takes a plain waiter's node off a list takes its notify too): no
        // lock is held.
        // SAFETY: the node is in no list and no one else reaches it (above), so its links
        // are ours without the lock.
        unsafe { node.with_links(|l| l.notify = wake.notify()) };
        let state = cell.lock();
        if state & DONE != 0 {
            // SAFETY: we hold the lock and changed no list.
            unsafe { cell.unlock(0, 0) };
            // SAFETY: the node is still in no list; the notify is dropped with no lock held.
            drop(unsafe { node.with_links(|l| mem::replace(&mut l.notify, Notify::None)) });
            return Polled::Done(state);
        }
        // The node is in no list: `Idle`, or `Notified` only if a relay round took it off
        // before a claim was taken at it in `link` (never by a completion: a complete cell
        // returned above). Its notify, written before the lock was taken, is published with
        // the list by the Release in `unlock`.
        // SAFETY: the lock is held; the node is ours, in no list (above), pinned (the
        // caller), and unlinked by `Drop` before it is freed.
        unsafe {
            debug_assert!(matches!(
                node.with_links(|l| l.status),
                Status::Idle | Status::Notified
            ));
            cell.with_lists(|lists| lists.waiters.push_back(node));
        }
        // SAFETY: we hold the lock.
        let before = unsafe { cell.unlock(0, 0) };
        // Nothing runs between the unlock and this, so `Drop` always knows the node linked.
        self.linked = Some(Which::Waiters);
        if cell.owes_drain(before, true) {
            // The cell completed while we linked, unseen by its completer: wake the lists
            // (our own node included) and report the outcome now.
            cell.drain();
            // Acquire: pairs with the Release in `publish` (DONE was in `before`).
            return Polled::Done(cell.state_acquire());
        }
        Polled::Pending
    }

    /// A re-poll of a linked waiter, decided under the lock without touching the lists if
    /// it can be: the cell has completed, the claim was handed to this node, or the node
    /// already carries a notify for `wake`. `None` if the notify must be renewed (`link`).
    fn repoll_linked(&mut self, wake: WakeBy<'_>) -> Option<Polled> {
        let cell = self.handle.cell();
        let node = &self.node;
        let state = cell.lock();
        // SAFETY: the lock is held; the node is ours and belongs to this cell.
        let (status, current) = unsafe {
            node.with_links(|l| {
                (
                    l.status,
                    l.status == Status::Linked && wake.is_current(&l.notify),
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
            unsafe { cell.unlock(0, 0) };
            if state & DONE != 0 {
                return Some(Polled::Done(state));
            }
            if status == Status::Granted {
                self.linked = None;
                return Some(Polled::Granted);
            }
            return Some(Polled::Pending);
        }
        // SAFETY: as above.
        unsafe { cell.unlock(0, 0) };
        None
    }

    /// The slow path of `poll` for a claimant, and for a re-poll that must renew its
    /// notify (a plain waiter's first link is `link_fresh`): links the node in list `which`
    /// with a fresh notify for `wake`, or renews the notify of a node that is linked
    /// already, unless the cell has completed or (for a claimant) the claim has come to
    /// this node meanwhile.
    ///
    /// # Safety
    ///
    /// `self` is pinned (its node may be linked here, and must not move until `Drop`).
    unsafe fn link(&mut self, which: Which, wake: WakeBy<'_>) -> Polled {
        let cell = self.handle.cell();
        let node = &self.node;
        // Make the notify with no lock held: cloning a waker runs user code.
        let fresh = wake.notify();
        let state = cell.lock();
        let mut stale = Notify::None;
        let mut granted = false;
        let mut pushed = false;
        if state & DONE == 0 {
            // SAFETY: the lock is held; the node is ours, pinned (the caller), and unlinked
            // by `Drop` before it is freed.
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
                        if which == Which::Claimants && cell.try_claim_bit() {
                            granted = true;
                            stale = fresh;
                        } else {
                            cell.with_lists(|lists| lists.get(which).push_back(node));
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
        let before = unsafe { cell.unlock(0, 0) };
        if granted {
            // Our unused waker clone is dropped (user code) while we hold a claim that no
            // `Claim` guard owns yet: if that panics, pass the claim on rather than leak it.
            on_unwind(|| drop(stale), || cell.release_claim());
        } else {
            // (Nothing when `pushed`: a freshly linked node had no notify to replace, so
            // `linked` can be set after this without a panic here leaving it unrecorded.)
            drop(stale);
        }
        if pushed {
            self.linked = Some(which);
        }
        if granted {
            self.linked = None;
            return Polled::Granted;
        }
        if state & DONE != 0 {
            return Polled::Done(state);
        }
        if cell.owes_drain(before, pushed) {
            // The cell completed while we linked, unseen by its completer: wake the lists
            // (our own node included) and report the outcome now.
            cell.drain();
            // Acquire: pairs with the Release in `publish` (DONE was in `before`).
            return Polled::Done(cell.state_acquire());
        }
        Polled::Pending
    }

    /// Polls a producer's closer (`Producer::closed`): returns `true` once the cell is
    /// complete or being completed, or no waiter is linked; otherwise links the node (or
    /// renews its waker) beside the waiters and returns `false`.
    ///
    /// # Safety
    ///
    /// The caller holds the claim (through `&mut Producer`), so no claim is passed on while
    /// the node is linked. Other closers may be linked: those of `Closed` futures leaked
    /// while linked (safe code), never polled or dropped again. That is a liveness matter,
    /// not a safety one: every closer is a node of this cell, and each is handled as any
    /// node is (see `take_lone_closers`).
    pub(crate) unsafe fn poll_closer(self: Pin<&mut Self>, waker: &Waker) -> bool {
        // SAFETY: nothing is moved out of the pinned waiter; the node stays where it is.
        let this = unsafe { self.get_unchecked_mut() };
        let cell = this.handle.cell();
        let node = &this.node;
        if this.linked.is_some() && node.is_notified() {
            // Taken off by a completion or by the last waiter to leave, which woke us; the
            // cell does not touch the node again.
            this.linked = None;
        }
        if this.linked.is_none() {
            // Acquire (`state_acquire`): pairs with the Release in `unlock` (the list bits)
            // and in `publish`.
            if is_closed(cell.state_acquire()) {
                return true;
            }
        }
        // Cloning a waker runs user code: outside the lock.
        let fresh = Notify::Closer(waker.clone());
        let state = cell.lock();
        let (closer, stale) = if state & (WON | DONE) != 0 {
            (Closer::Closed { unlinked: false }, fresh)
        } else {
            // SAFETY: the lock is held; the node is ours, pinned (`self: Pin`), and unlinked
            // by `Drop` before it is freed.
            unsafe { cell.relink_closer(node, fresh) }
        };
        let (closed, pushed, unlinked) = match closer {
            Closer::Closed { unlinked } => (true, false, unlinked),
            Closer::Waiting { pushed } => (false, pushed, false),
        };
        // Leaked closers left alone by our unlinking (unreachable with ours, kept total).
        let leaked = if unlinked {
            // SAFETY: we hold the lock; `state` is the word `lock` returned.
            unsafe { cell.take_lone_closers(state) }
        } else {
            WakeOnDrop::NONE
        };
        // SAFETY: we hold the lock.
        let before = unsafe { cell.unlock(0, 0) };
        // Set before any user code (a wake, the stale waker's drop) can unwind: `Drop`
        // unlinks by it.
        if pushed {
            this.linked = Some(Which::Waiters);
        }
        if unlinked {
            this.linked = None;
        }
        drop(leaked);
        drop(stale);
        if closed {
            return true;
        }
        if cell.owes_drain(before, pushed) {
            // The cell completed while we linked, unseen by its completer.
            cell.drain();
            return true;
        }
        false
    }

    /// Unlinks the node now, as `Drop` would (a blocking wait that times out stops waiting
    /// before it reads the outcome). `Drop` then has nothing left to do.
    #[cfg(feature = "std")]
    pub(crate) fn cancel(self: Pin<&mut Self>) {
        // SAFETY: nothing is moved out of the pinned waiter.
        unsafe { self.get_unchecked_mut() }.unlink();
    }

    /// Unlinks the node if it is linked; if it had been handed the claim, passes the claim
    /// on. After this returns the cell never touches the node again. Out of line: `Drop`
    /// calls it only for a node it knows linked.
    #[inline(never)]
    pub(crate) fn unlink(&mut self) {
        let Some(which) = self.linked.take() else {
            return;
        };
        let node = &self.node;
        if node.is_notified() {
            // A completion took the node off the list and took its waker: nothing to undo,
            // and no lock needed.
            return;
        }
        let cell = self.handle.cell();
        let state = cell.lock();
        // SAFETY: the lock is held; the node belongs to this cell.
        let (status, notify) =
            unsafe { node.with_links(|l| (l.status, mem::replace(&mut l.notify, Notify::None))) };
        let mut handoff = WakeOnDrop::NONE;
        let mut clear = 0;
        let mut closer = WakeOnDrop::NONE;
        match status {
            // SAFETY: the lock is held and the node is linked in `which`. It has not moved
            // since it was linked: only `poll`/`poll_closer` link it, through `Pin`.
            Status::Linked => unsafe {
                cell.with_lists(|lists| lists.get(which).remove(node));
                closer = cell.take_lone_closers(state);
            },
            // (No closer can be linked: closers exist only under a `Producer`, which never
            // passes the claim on: it completes or cancels.) SAFETY: the lock is held, and the
            // granted node's owner (us) holds the claim. `next` comes off the claimant list,
            // which holds no callbacks, and is woken once, by the guard.
            Status::Granted => unsafe {
                let next;
                (next, clear) = cell.pass_claim_locked(state);
                handoff = WakeOnDrop::new(next);
            },
            Status::Idle | Status::Notified => {}
        }
        // SAFETY: we hold the lock.
        unsafe { cell.unlock(0, clear) };
        // Both wakes before the leaving node's own waker is dropped (user code that may
        // panic); the guards wake them even if one of these wakes panics.
        drop(handoff);
        drop(closer);
        // A future's own waker (callbacks have no future, so none is ever cancelled here).
        drop(notify);
    }
}

impl<H: CellRef> Drop for Waiter<H> {
    #[inline]
    fn drop(&mut self) {
        // A linked node was linked through `Pin<&mut Self>` and so has not moved since; this
        // is the last moment it is alive, and after `unlink` the cell never touches it. A
        // waiter that never linked (or was taken off and knows it) has nothing to undo: the
        // check is inline, so dropping a future that found its cell complete costs a branch.
        // (Only that: with `unlink`'s look at `notified` inline too, the drop glue grew past
        // what the compiler inlines, and every such drop paid a call.)
        if self.linked.is_some() {
            self.unlink();
        }
    }
}

/// What `poll_closer` did with a producer's closer under the lock of a pending cell.
enum Closer {
    /// No node that is not a closer waits: the producer's work is wanted by no one.
    /// `unlinked`: the closer was linked, and has been taken off.
    Closed { unlinked: bool },
    /// Someone waits: the closer is linked beside them. `pushed`: it was linked just now.
    Waiting { pushed: bool },
}

impl<T, E> Deferred<T, E> {
    /// The locked step of `Waiter::poll_closer` on a pending cell: links the closer `node`
    /// with `fresh` (or renews its notify) if a node that is not a closer waits, or else
    /// takes it off the list if it is linked. Returns what it did and the notify replaced
    /// (or `fresh` unused), to be dropped once the lock is released.
    ///
    /// # Safety
    ///
    /// The lock is held and the cell is pending; `node` is a closer's of this cell, pinned,
    /// and unlinked by its owner before it is freed.
    unsafe fn relink_closer(&self, node: &Node, fresh: Notify) -> (Closer, Notify) {
        // SAFETY: the lock is held (caller); `node` is this cell's and pinned (caller).
        unsafe {
            let is_linked = node.with_links(|l| l.status) == Status::Linked;
            self.with_lists(|lists| {
                // Whether a node that is not a closer waits (leaked closers do not count).
                let others = !lists.claimants.is_empty() || !lists.waiters.all_closers();
                match (others, is_linked) {
                    (false, true) => {
                        // Unreachable while the invariant of `take_lone_closers` holds;
                        // kept total.
                        lists.waiters.remove(node);
                        let stale = node.with_links(|l| mem::replace(&mut l.notify, fresh));
                        (Closer::Closed { unlinked: true }, stale)
                    }
                    (false, false) => (Closer::Closed { unlinked: false }, fresh),
                    (true, true) => {
                        let stale = node.with_links(|l| mem::replace(&mut l.notify, fresh));
                        (Closer::Waiting { pushed: false }, stale)
                    }
                    (true, false) => {
                        lists.waiters.push_back(node);
                        node.with_links(|l| l.notify = fresh);
                        (Closer::Waiting { pushed: true }, Notify::None)
                    }
                }
            })
        }
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
        // SAFETY: the lock is held; the sentinel is pinned on this frame, and the round
        // below does not let the frame end before the sentinel is off the list (if a waker
        // panics, it is finished while unwinding).
        unsafe { self.with_lists(|lists| lists.waiters.push_back(sentinel)) };
        // SAFETY: we hold the lock.
        let before = unsafe { self.unlock(0, 0) };
        if self.owes_drain(before, true) {
            // Completed while we linked the sentinel: the drain takes it off with the rest.
            self.drain();
            return;
        }
        on_unwind(
            || self.notify_round(sentinel),
            || self.notify_round(sentinel),
        );
    }

    /// Wakes the plain waiters ahead of `sentinel`, a batch per lock acquisition, until the
    /// sentinel is off the list (see `notify_waiters`).
    #[cfg(feature = "alloc")]
    fn notify_round(&self, sentinel: &Node) {
        loop {
            let mut batch = Batch::new(self);
            let state = self.lock();
            let sentinel_ptr: *const Node = sentinel;
            // SAFETY: the lock is held; popped nodes are marked Notified and never
            // touched again.
            let finished = unsafe {
                self.with_lists(|lists| loop {
                    // Another round (whose sentinel is behind ours) or a completion's
                    // drain may have taken our sentinel: then every node that was ahead
                    // of it has been woken, and this round is over. Going on would
                    // re-queue a callback behind no sentinel of ours, for ever.
                    // SAFETY: the lock is held and the sentinel is ours.
                    if sentinel.with_links(|l| l.status) != Status::Linked {
                        break true;
                    }
                    if batch.is_full() {
                        break false;
                    }
                    match lists.waiters.pop_front(Status::Notified) {
                        Some((node, _)) if node == sentinel_ptr => break true,
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
            let closer = unsafe { self.take_lone_closers(state) };
            // SAFETY: we hold the lock.
            unsafe { self.unlock(0, 0) };
            batch.wake_all();
            drop(closer);
            if finished {
                return;
            }
        }
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

/// Runs `body`; if it unwinds, runs `cleanup` on the way out, and the unwinding goes on.
/// This is how the cell keeps its books exact when user code (a waker, a computation)
/// panics in the middle of an operation: `cleanup` finishes or undoes the operation.
#[inline]
pub(crate) fn on_unwind<R>(body: impl FnOnce() -> R, cleanup: impl FnOnce()) -> R {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            // Only armed while unwinding out of `body`: it is disarmed once `body` returns.
            if let Some(cleanup) = self.0.take() {
                cleanup();
            }
        }
    }
    let mut guard = Guard(Some(cleanup));
    let result = body();
    guard.0 = None;
    result
}
