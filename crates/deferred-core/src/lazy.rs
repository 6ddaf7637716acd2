//! `Lazy`: a cell whose computation starts on first await (Kotlin `CoroutineStart.LAZY`),
//! and that any of its awaiters can drive.

use alloc::boxed::Box;
use alloc::sync::{Arc, Weak};
use core::{
    borrow::Borrow,
    convert::Infallible,
    fmt,
    future::{Future, IntoFuture},
    mem::ManuallyDrop,
    ops::Deref,
    pin::Pin,
    task::{Context, Poll, RawWaker, RawWakerVTable, Waker},
};

use futures_core::FusedFuture;

use crate::{
    loom::{AtomicUsize, Ordering::*, UnsafeCell},
    waiter::{on_unwind, CellRef, Polled, Waiter, WakeBy, Which},
    Deferred, Error,
};

/// Someone is polling the computation; the computation is theirs alone.
const DRIVING: usize = 1;
/// The computation was woken since its driver started polling it.
const REPOLL: usize = 2;
/// There is no computation (it finished, was dropped, or never was): nothing to drive.
/// Changed only by the holder of DRIVING, as it releases it.
const EMPTY: usize = 4;
/// The computation is to be dropped (the cell was aborted while someone held DRIVING): the
/// holder drops it as it releases DRIVING. Set only while DRIVING is held, and cleared by
/// that release, so the one order of read-modify-writes on the word decides who drops it:
/// `abort` itself, if its RMW found DRIVING free, or else the holder.
const RETIRE: usize = 8;

enum Computation<F, Fut> {
    Init(F),
    Running(Fut),
    Finished,
}

struct Shared<T, E, F, Fut> {
    cell: Deferred<T, E>,
    drive: AtomicUsize,
    /// Guarded by DRIVING.
    computation: UnsafeCell<Computation<F, Fut>>,
    /// Under loom only: counts strong handles released. `Arc`'s own reference count is not
    /// loom's, so loom cannot see that the last drop happens after every other handle's
    /// accesses; each release adds to this (Release) and the final drop reads it
    /// (Acquire), which tells loom what `Arc` guarantees.
    #[cfg(loom)]
    released: AtomicUsize,
}

impl<T, E, F, Fut> Shared<T, E, F, Fut> {
    /// The shared state of a fresh cell with `computation` (none if `Finished`).
    fn with_computation(computation: Computation<F, Fut>) -> Self {
        let empty = matches!(computation, Computation::Finished);
        Shared {
            cell: Deferred::new(),
            drive: AtomicUsize::new(if empty { EMPTY } else { 0 }),
            computation: UnsafeCell::new(computation),
            #[cfg(loom)]
            released: AtomicUsize::new(0),
        }
    }
}

#[cfg(loom)]
impl<T, E, F, Fut> Shared<T, E, F, Fut> {
    /// Records that a strong handle is about to be released (see `released`).
    fn release_handle(&self) {
        self.released.fetch_add(1, Release);
    }
}

#[cfg(loom)]
impl<T, E, F, Fut> Drop for Shared<T, E, F, Fut> {
    fn drop(&mut self) {
        // Pairs with the Release in every `release_handle` (see `released`).
        self.released.load(Acquire);
    }
}

#[cfg(loom)]
impl<T, E, F, Fut> Drop for Lazy<T, E, F, Fut> {
    fn drop(&mut self) {
        self.shared.release_handle();
    }
}

// SAFETY: a `Lazy` always leads to the cell of the one `Shared` its `Arc` keeps alive.
unsafe impl<T, E, F, Fut> CellRef for Lazy<T, E, F, Fut> {
    type T = T;
    type E = E;
    #[inline]
    fn cell(&self) -> &Deferred<T, E> {
        &self.shared.cell
    }
}

// SAFETY: as for `Lazy`; the reference keeps the handle, and so the cell, alive.
unsafe impl<T, E, F, Fut> CellRef for &Lazy<T, E, F, Fut> {
    type T = T;
    type E = E;
    #[inline]
    fn cell(&self) -> &Deferred<T, E> {
        &self.shared.cell
    }
}

// SAFETY: `computation` is only reached by the thread holding DRIVING, which may be any
// thread (so `F` and `Fut` must be `Send`) but is only ever one at a time (so they need not
// be `Sync`). The cell is `Send + Sync` under the bounds on `T` and `E`.
unsafe impl<T: Send + Sync, E: Send + Sync, F: Send, Fut: Send> Sync for Shared<T, E, F, Fut> {}
// SAFETY: as above.
unsafe impl<T: Send + Sync, E: Send + Sync, F: Send, Fut: Send> Send for Shared<T, E, F, Fut> {}

/// A [`Deferred`] with its computation attached, started by the first await and driven by
/// whichever awaiter is polled (Kotlin `async(start = CoroutineStart.LAZY)`).
///
/// * The computation runs at most once, and only after something awaits the cell.
/// * Any awaiter can drive it: the computation is polled with a waker that wakes *every*
///   awaiter, and whichever of them is polled next moves it on. An awaiter that stalls
///   (is never polled again) or is dropped does not stop the others.
/// * If the computation panics, the cell completes as [`Error::Panicked`] and the panic
///   goes on in the awaiter whose poll ran it.
///
/// `Lazy` is a cheap handle (one `Arc`); clones share the cell. It needs `alloc`: the
/// computation lives in the shared allocation, which is also the waker it is polled with.
///
/// ```
/// use deferred_core::Lazy;
/// # futures::executor::block_on(async {
/// let lazy = Lazy::new(|| async { Ok::<_, ()>(6 * 7) });
/// assert!(!lazy.deferred().is_done()); // nothing ran yet
/// assert_eq!(lazy.wait().await, Ok(&42));
/// # });
/// ```
pub struct Lazy<T, E = Infallible, F = BoxInit<T, E>, Fut = BoxFuture<T, E>> {
    shared: Arc<Shared<T, E, F, Fut>>,
}

/// A boxed computation, so that cells with different computations have one type: the
/// default `Fut` of [`Lazy`], as made by [`Lazy::boxed`].
pub type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'static>>;

/// The initializer type of a [`Lazy`] made from a future ([`Lazy::from_future`],
/// [`Lazy::boxed`], [`Lazy::pending`]): never called.
pub type BoxInit<T, E> = fn() -> BoxFuture<T, E>;

impl<T, E, F, Fut> Clone for Lazy<T, E, F, Fut> {
    fn clone(&self) -> Self {
        Lazy {
            shared: Arc::clone(&self.shared),
        }
    }
}

/// A handle to a [`Lazy`] cell that does not keep it alive: when the last [`Lazy`] handle
/// goes, the cell, its outcome and its computation are dropped, and
/// [`upgrade`](WeakLazy::upgrade) returns `None` (only the allocation's memory waits for the
/// last `WeakLazy`). Made by [`Lazy::downgrade`]. For bookkeeping that points at cells it
/// does not own, such as a cache's eviction queues.
///
/// ```
/// use deferred_core::Lazy;
/// let cell: Lazy<u8> = Lazy::ready(1);
/// let weak = Lazy::downgrade(&cell);
/// assert_eq!(weak.upgrade().unwrap().get(), Some(&1));
/// drop(cell);
/// assert!(weak.upgrade().is_none());
/// ```
pub struct WeakLazy<T, E = Infallible, F = BoxInit<T, E>, Fut = BoxFuture<T, E>> {
    shared: Weak<Shared<T, E, F, Fut>>,
}

impl<T, E, F, Fut> Lazy<T, E, F, Fut> {
    /// A [`WeakLazy`] handle to this cell.
    ///
    /// ```
    /// use deferred_core::Lazy;
    /// let cell: Lazy<u8> = Lazy::pending();
    /// assert!(Lazy::ptr_eq(&Lazy::downgrade(&cell).upgrade().unwrap(), &cell));
    /// ```
    pub fn downgrade(this: &Self) -> WeakLazy<T, E, F, Fut> {
        WeakLazy {
            shared: Arc::downgrade(&this.shared),
        }
    }
}

impl<T, E, F, Fut> WeakLazy<T, E, F, Fut> {
    /// The address of the cell's shared state, as [`Lazy::as_ptr`] gives it.
    pub fn as_ptr(&self) -> *const () {
        self.shared.as_ptr().cast()
    }

    /// A [`Lazy`] handle to the cell, if one still exists.
    ///
    /// ```
    /// use deferred_core::Lazy;
    /// let weak = Lazy::downgrade(&Lazy::<u8>::ready(1));
    /// assert!(weak.upgrade().is_none()); // the only `Lazy` is gone
    /// ```
    pub fn upgrade(&self) -> Option<Lazy<T, E, F, Fut>> {
        self.shared.upgrade().map(|shared| Lazy { shared })
    }
}

impl<T, E, F, Fut> Clone for WeakLazy<T, E, F, Fut> {
    fn clone(&self) -> Self {
        WeakLazy {
            shared: Weak::clone(&self.shared),
        }
    }
}

impl<T, E, F, Fut> fmt::Debug for WeakLazy<T, E, F, Fut> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WeakLazy")
            .field("alive", &(self.shared.strong_count() > 0))
            .finish()
    }
}

impl<T, E, F, Fut> Lazy<T, E, F, Fut>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    /// A cell whose value `init` computes, once something awaits it.
    ///
    /// ```
    /// use deferred_core::{Error, Lazy};
    /// # futures::executor::block_on(async {
    /// let lazy = Lazy::new(|| async { Err::<u8, _>("no config") });
    /// assert_eq!(lazy.wait().await, Err(Error::Failed(&"no config")));
    /// # });
    /// ```
    pub fn new(init: F) -> Self {
        Self::with_computation(Computation::Init(init))
    }
}

impl<T, E, Fut> Lazy<T, E, fn() -> Fut, Fut>
where
    Fut: Future<Output = Result<T, E>>,
{
    /// A cell whose value `fut` computes, once something awaits it (a future does nothing
    /// until polled, so this is as lazy as [`Lazy::new`]).
    ///
    /// ```
    /// use deferred_core::Lazy;
    /// # futures::executor::block_on(async {
    /// let lazy = Lazy::from_future(async { Ok::<_, ()>(3) });
    /// assert_eq!(lazy.wait().await, Ok(&3));
    /// # });
    /// ```
    pub fn from_future(fut: Fut) -> Self {
        Self::with_computation(Computation::Running(fut))
    }
}

impl<T, E> Lazy<T, E> {
    /// A cell whose value the boxed `fut` computes: every such cell has the one type
    /// `Lazy<T, E>`, whatever its computation, so they can share a collection.
    ///
    /// ```
    /// use deferred_core::Lazy;
    /// # futures::executor::block_on(async {
    /// let cells: Vec<Lazy<u8, ()>> = vec![
    ///     Lazy::boxed(async { Ok(1) }),
    ///     Lazy::boxed(async { Ok(2) }),
    /// ];
    /// assert_eq!(cells[1].wait().await, Ok(&2));
    /// # });
    /// ```
    pub fn boxed(fut: impl Future<Output = Result<T, E>> + Send + 'static) -> Self {
        Self::with_computation(Computation::Running(Box::pin(fut)))
    }

    /// A cell whose boxed computation `make` builds from a [`WeakLazy`] handle to the cell
    /// itself (a computation that settles something about its own cell, and must not keep
    /// it alive): what [`pending`](Lazy::pending) then [`try_attach`](Lazy::try_attach)
    /// would make, in one step, with no awaiter to wake since no one else has a handle yet.
    /// `make` runs once, before the cell exists: its handle upgrades to nothing until this
    /// returns, but [`WeakLazy::as_ptr`] already names the cell.
    ///
    /// ```
    /// use deferred_core::Lazy;
    /// # futures::executor::block_on(async {
    /// let lazy: Lazy<bool, ()> = Lazy::boxed_cyclic(|me| async move { Ok(me.upgrade().is_some()) });
    /// assert_eq!(lazy.wait().await, Ok(&true)); // polled once the cell exists
    /// # });
    /// ```
    pub fn boxed_cyclic<Fut>(make: impl FnOnce(WeakLazy<T, E>) -> Fut) -> Self
    where
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        Lazy {
            shared: Arc::new_cyclic(|weak| {
                let fut: BoxFuture<T, E> = Box::pin(make(WeakLazy {
                    shared: weak.clone(),
                }));
                Shared::with_computation(Computation::Running(fut))
            }),
        }
    }

    /// A cell with no computation: it completes when someone completes it (through
    /// `Deref` to [`Deferred`]), or when a computation is attached with
    /// [`try_attach`](Lazy::try_attach).
    ///
    /// ```
    /// use deferred_core::Lazy;
    /// # futures::executor::block_on(async {
    /// let cell: Lazy<u8> = Lazy::pending();
    /// cell.succeed(4).unwrap();
    /// assert_eq!(cell.wait().await, Ok(&4));
    /// # });
    /// ```
    pub fn pending() -> Self {
        Self::with_computation(Computation::Finished)
    }

    /// A cell already complete with `value`.
    ///
    /// ```
    /// use deferred_core::Lazy;
    /// let cell: Lazy<u8> = Lazy::ready(4);
    /// assert_eq!(cell.get(), Some(&4));
    /// ```
    pub fn ready(value: T) -> Self {
        let lazy = Self::pending();
        // A fresh cell has no other handle: this completion always wins.
        let _ = lazy.shared.cell.succeed(value);
        lazy
    }
}

impl<T, E, F, Fut> Lazy<T, E, F, Fut> {
    fn with_computation(computation: Computation<F, Fut>) -> Self {
        Lazy {
            shared: Arc::new(Shared::with_computation(computation)),
        }
    }

    /// The address of the cell's shared state: the same for every handle to one cell,
    /// strong or weak, and no other cell's while a handle to this one lives.
    ///
    /// ```
    /// use deferred_core::Lazy;
    /// let cell: Lazy<u8> = Lazy::pending();
    /// assert_eq!(Lazy::as_ptr(&cell), Lazy::downgrade(&cell).as_ptr());
    /// let other: Lazy<u8> = Lazy::pending();
    /// assert_ne!(Lazy::as_ptr(&cell), Lazy::as_ptr(&other));
    /// ```
    pub fn as_ptr(this: &Self) -> *const () {
        Arc::as_ptr(&this.shared).cast()
    }

    /// Whether `a` and `b` are handles to the same cell.
    ///
    /// ```
    /// use deferred_core::Lazy;
    /// let a: Lazy<u8> = Lazy::pending();
    /// assert!(Lazy::ptr_eq(&a, &a.clone()));
    /// assert!(!Lazy::ptr_eq(&a, &Lazy::pending()));
    /// ```
    pub fn ptr_eq(a: &Self, b: &Self) -> bool {
        Arc::ptr_eq(&a.shared, &b.shared)
    }

    /// Attaches `fut` as the computation of a cell that has none and is not complete (one
    /// made by [`pending`](Lazy::pending), or whose computation finished without
    /// completing it), and wakes its awaiters so that they drive it. Gives `fut` back if
    /// the cell has a computation, is being driven, or is complete.
    ///
    /// ```
    /// use deferred_core::Lazy;
    /// # futures::executor::block_on(async {
    /// let busy: Lazy<u8, ()> = Lazy::boxed(async { Ok(1) });
    /// assert!(busy.try_attach(Box::pin(async { Ok(2) })).is_err()); // it has one
    /// let empty: Lazy<u8, ()> = Lazy::pending();
    /// assert!(empty.try_attach(Box::pin(async { Ok(2) })).is_ok());
    /// assert_eq!(empty.wait().await, Ok(&2));
    /// # });
    /// ```
    pub fn try_attach(&self, fut: Fut) -> Result<(), Fut> {
        let shared = &*self.shared;
        // The first check only saves work; the one after the release decides (see `retire`).
        if shared.cell.is_done() || !shared.try_take_empty() {
            return Err(fut);
        }
        shared.computation.with_mut(|c| {
            // SAFETY: DRIVING (taken over EMPTY) gives this thread sole access.
            unsafe { *c = Computation::Running(fut) }
        });
        shared.release_drive(false);
        if shared.cell.is_done() {
            // Completed meanwhile, so no one will drive it: drop it now (an `abort` that
            // came while we held DRIVING had it dropped by our release already).
            shared.retire();
            return Ok(());
        }
        shared.cell.notify_waiters();
        Ok(())
    }

    /// Cancels the cell (awaiters get [`Error::Cancelled`]) and drops its computation: now,
    /// if no one is polling it, or else as soon as that poll returns. Returns whether this
    /// call completed the cell.
    ///
    /// ```
    /// use deferred_core::{Error, Lazy};
    /// # futures::executor::block_on(async {
    /// let lazy: Lazy<u8, ()> = Lazy::boxed(std::future::pending());
    /// assert!(lazy.abort());
    /// assert_eq!(lazy.wait().await, Err(Error::Cancelled));
    /// # });
    /// ```
    pub fn abort(&self) -> bool {
        let shared = &*self.shared;
        let won = shared.cell.cancel();
        shared.retire();
        won
    }

    /// The underlying cell: probe it, or complete it from outside (which wins over the
    /// computation, whose result is then dropped). `Lazy` also derefs to it.
    ///
    /// ```
    /// use deferred_core::Lazy;
    /// let lazy = Lazy::new(|| async { Ok::<u8, ()>(1) });
    /// lazy.deferred().succeed(2).unwrap(); // the computation never runs
    /// assert_eq!(lazy.deferred().get(), Some(&2));
    /// ```
    pub fn deferred(&self) -> &Deferred<T, E> {
        &self.shared.cell
    }

    /// Waits for the value, starting or driving the computation as needed.
    ///
    /// ```
    /// use deferred_core::Lazy;
    /// # futures::executor::block_on(async {
    /// let lazy = Lazy::new(|| async { Ok::<_, ()>("v") });
    /// let (a, b) = futures::join!(lazy.wait(), lazy.wait());
    /// assert_eq!((a, b), (Ok(&"v"), Ok(&"v")));
    /// # });
    /// ```
    pub fn wait(&self) -> LazyWait<'_, T, E, F, Fut> {
        LazyWait {
            waiter: Waiter::new(self),
            done: false,
        }
    }
}

impl<'a, T, E, F, Fut> IntoFuture for &'a Lazy<T, E, F, Fut>
where
    T: Send + Sync + 'static,
    E: Send + Sync + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, E>> + Send + 'static,
{
    type Output = Result<&'a T, Error<&'a E>>;
    type IntoFuture = LazyWait<'a, T, E, F, Fut>;

    /// `(&lazy).await`, as [`Lazy::wait`].
    fn into_future(self) -> Self::IntoFuture {
        self.wait()
    }
}

impl<T, E, F, Fut> Shared<T, E, F, Fut> {
    /// Takes DRIVING if no one holds it and there is a computation, clearing REPOLL: the
    /// poll about to happen covers every wake so far.
    fn try_drive(&self) -> bool {
        let mut state = self.drive.load(Relaxed);
        loop {
            if state & (DRIVING | EMPTY) != 0 {
                return false;
            }
            // Acquire: pairs with the Release in `release_drive`, so the last driver's
            // writes to `computation` are visible, and with the Release of a wake's REPOLL
            // (`wake_by_ref`), so the poll that consumes that wake sees what caused it.
            match self
                .drive
                .compare_exchange_weak(state, DRIVING, Acquire, Relaxed)
            {
                Ok(_) => return true,
                Err(actual) => state = actual,
            }
        }
    }

    /// Takes DRIVING on a cell with no computation, to attach one. No driver holds DRIVING
    /// while EMPTY is set (`try_drive` refuses), so this only waits for another attacher,
    /// whose hold is a few instructions.
    fn try_take_empty(&self) -> bool {
        let backoff = crossbeam_utils::Backoff::new();
        let mut state = self.drive.load(Relaxed);
        loop {
            if state & EMPTY == 0 {
                return false;
            }
            if state & DRIVING == 0 {
                // Acquire: pairs with the Release in `release_drive`.
                match self
                    .drive
                    .compare_exchange_weak(state, DRIVING | EMPTY, Acquire, Relaxed)
                {
                    Ok(_) => return true,
                    Err(actual) => {
                        state = actual;
                        continue;
                    }
                }
            }
            crate::loom::backoff(&backoff);
            state = crate::loom::spin_load(&self.drive);
        }
    }

    /// Releases DRIVING, recording whether the computation is gone (`empty`); returns
    /// whether a wake came in while it was held. If `abort` asked meanwhile (RETIRE), the
    /// computation is dropped first: taken out while DRIVING is still held, dropped (user
    /// code) once it is released.
    fn release_drive(&self, empty: bool) -> bool {
        let mut state = self.drive.load(Relaxed);
        let mut retired = None;
        loop {
            let now_empty = empty || retired.is_some();
            if state & RETIRE != 0 && !now_empty {
                // SAFETY: DRIVING is still ours, so `computation` is ours alone.
                let old = self
                    .computation
                    .with_mut(|c| unsafe { core::mem::replace(&mut *c, Computation::Finished) });
                retired = Some(old);
                continue;
            }
            // Release: pairs with the Acquire in `try_drive`, `try_take_empty` and `retire`,
            // so the next holder sees what this one wrote to `computation`.
            match self.drive.compare_exchange_weak(
                state,
                if now_empty { EMPTY } else { 0 },
                Release,
                Relaxed,
            ) {
                Ok(prev) => {
                    drop(retired);
                    return prev & REPOLL != 0;
                }
                Err(actual) => state = actual,
            }
        }
    }

    /// Drops the computation, for `abort` (called after the cell is complete): now if no one
    /// holds DRIVING, or else by the holder as it releases DRIVING (RETIRE). Nothing to do if
    /// there is none.
    ///
    /// Every branch is decided by a read-modify-write (a plain load could be stale, and miss
    /// a computation just attached), and each is AcqRel: Release so that an attacher whose
    /// `try_take_empty` comes after it sees the cell complete once it has attached, and
    /// drops what it attached itself (`try_attach`); Acquire so that a computation taken
    /// here is the one the last holder wrote.
    fn retire(&self) {
        let mut state = self.drive.load(Relaxed);
        loop {
            let new = if state & DRIVING != 0 {
                // A driver or an attacher holds it: it drops the computation on release.
                state | RETIRE
            } else if state & EMPTY != 0 {
                // No computation: confirm that this is the latest value, and publish.
                state
            } else {
                DRIVING
            };
            match self
                .drive
                .compare_exchange_weak(state, new, AcqRel, Relaxed)
            {
                Ok(_) if new == DRIVING => {
                    // SAFETY: DRIVING, just taken, gives this thread sole access.
                    let old = self.computation.with_mut(|c| unsafe {
                        core::mem::replace(&mut *c, Computation::Finished)
                    });
                    self.release_drive(true);
                    // Dropping the computation runs user code: after DRIVING is released.
                    drop(old);
                    return;
                }
                Ok(_) => return,
                Err(actual) => state = actual,
            }
        }
    }
}

impl<T, E, F, Fut> Shared<T, E, F, Fut>
where
    T: Send + Sync + 'static,
    E: Send + Sync + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, E>> + Send + 'static,
{
    /// Polls the computation once; DRIVING is held by the caller and released here.
    fn drive(self: &Arc<Self>) {
        let waker = Self::relay(Arc::downgrade(self));
        let mut cx = Context::from_waker(&waker);
        // If the computation panics: the cell dies, the computation is dropped, DRIVING is
        // released, and the panic goes on.
        let (result, finished) = on_unwind(|| self.poll_computation(&mut cx), || self.bail());
        if let Some(result) = result {
            // A completion from outside may have won; our result is then dropped.
            drop(self.cell.complete(result));
        }
        if self.release_drive(finished) && !self.cell.is_done() {
            // Woken while we polled: that wake may have reached no one (a waiter that
            // linked later missed it), so pass it on to every waiter now.
            self.cell.notify_waiters();
        }
    }

    /// Polls the computation (starting it first if need be), unless the cell is already
    /// complete; returns its result if it finished, and whether it is gone. DRIVING is held
    /// by the caller.
    fn poll_computation(&self, cx: &mut Context<'_>) -> (Option<Result<T, E>>, bool) {
        // SAFETY: DRIVING gives this thread sole access to `computation`. The future lives
        // in the `Arc`'s allocation and is only ever dropped in place, so pinning holds.
        self.computation.with_mut(|c| unsafe {
            let c = &mut *c;
            if self.cell.is_done() {
                // Completed (or aborted) from outside: the computation has nothing left to
                // do; drop it rather than run it.
                *c = Computation::Finished;
                return (None, true);
            }
            if let Computation::Init(_) = c {
                if let Computation::Init(init) = core::mem::replace(c, Computation::Finished) {
                    *c = Computation::Running(init());
                }
            }
            let result = match c {
                Computation::Running(fut) => match Pin::new_unchecked(fut).poll(cx) {
                    Poll::Ready(result) => {
                        *c = Computation::Finished;
                        Some(result)
                    }
                    Poll::Pending => {
                        if self.cell.is_done() {
                            // Aborted while we polled: drop it now.
                            *c = Computation::Finished;
                        }
                        None
                    }
                },
                _ => None,
            };
            (result, matches!(c, Computation::Finished))
        })
    }

    /// The unwinding path of `drive`, when the computation panicked.
    fn bail(&self) {
        // SAFETY: DRIVING is held by this thread (we are unwinding out of `drive`).
        self.computation
            .with_mut(|c| unsafe { *c = Computation::Finished });
        self.cell.die();
        self.release_drive(true);
    }
}

/// The computation's waker (the relay): the shared state itself, held weakly. Its data
/// pointer is a `Weak<Shared>` (from `Weak::into_raw`), so the waker needs no allocation of
/// its own, and a computation that keeps its own waker does not keep itself alive: when
/// the last `Lazy` handle goes, the cell and its computation go too. Each `Waker` made
/// from this vtable owns one weak count of the allocation, released by its drop.
impl<T, E, F, Fut> Shared<T, E, F, Fut>
where
    T: Send + Sync + 'static,
    E: Send + Sync + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, E>> + Send + 'static,
{
    const RELAY: RawWakerVTable = RawWakerVTable::new(
        Self::relay_clone,
        Self::relay_wake,
        Self::relay_wake_by_ref,
        Self::relay_drop,
    );

    /// A waker that owns `weak`'s count.
    fn relay(weak: Weak<Self>) -> Waker {
        let data = Weak::into_raw(weak).cast::<()>();
        // SAFETY: `RELAY` keeps `RawWaker`'s contract for `data`, a `Weak::into_raw` pointer
        // whose count the waker owns (a clone takes one, a drop frees it); a `Weak` is
        // `Send + Sync` under the bounds on `Shared`, so the waker may go to any thread.
        unsafe { Waker::from_raw(RawWaker::new(data, &Self::RELAY)) }
    }

    /// # Safety
    /// `data` is the data pointer of a live waker made by `relay` (it owns a weak count).
    unsafe fn relay_clone(data: *const ()) -> RawWaker {
        // SAFETY: by the caller, `data` came from `Weak::into_raw` and its count is owned
        // by the waker being cloned: borrowed here, never released (`ManuallyDrop`).
        let weak = ManuallyDrop::new(unsafe { Weak::from_raw(data.cast::<Self>()) });
        RawWaker::new(Weak::into_raw(Weak::clone(&weak)).cast(), &Self::RELAY)
    }

    /// # Safety
    /// As for `relay_clone`; the waker is consumed.
    unsafe fn relay_wake(data: *const ()) {
        // SAFETY: as the caller promises: the consumed waker's count, owned here and
        // released once, as this returns or unwinds (a waiter's waker may panic in the
        // round, and `wake` consumes the waker even then).
        let weak = unsafe { Weak::from_raw(data.cast::<Self>()) };
        Self::wake_weak(&weak);
    }

    /// # Safety
    /// As for `relay_clone`.
    unsafe fn relay_wake_by_ref(data: *const ()) {
        // SAFETY: as in `relay_clone`: the waker's count, borrowed.
        let weak = ManuallyDrop::new(unsafe { Weak::from_raw(data.cast::<Self>()) });
        Self::wake_weak(&weak);
    }

    /// The computation can make progress: tell the driver, if one is polling, and wake
    /// every waiter, so whichever is polled next drives it. Nothing to do if every handle
    /// is gone.
    fn wake_weak(weak: &Weak<Self>) {
        if let Some(shared) = weak.upgrade() {
            // Release: pairs with the Acquire of `try_drive`, which clears REPOLL. A driver
            // that takes DRIVING after this wake (and so consumes it) must see whatever the
            // waker's caller did before waking (the event that lets the computation go
            // on); with Relaxed it could poll without seeing it, and with the wake consumed
            // no one would poll again (loom: `lazy_wake_during_a_drive_vs_a_late_waiter`).
            // A driver that took DRIVING before this wake sees REPOLL when it releases.
            shared.drive.fetch_or(REPOLL, Release);
            shared.cell.notify_waiters();
            #[cfg(loom)]
            shared.release_handle();
        }
    }

    /// # Safety
    /// As for `relay_clone`; the waker is dropped.
    unsafe fn relay_drop(data: *const ()) {
        // SAFETY: the dropped waker's count, released once, here.
        drop(unsafe { Weak::from_raw(data.cast::<Self>()) });
    }
}

/// The future of [`Lazy::wait`]: resolves to the outcome by reference, driving the
/// computation whenever it is polled and no one else is.
///
/// # Cancel safety
///
/// Dropping it unlinks it; the computation is not affected and other awaiters go on
/// driving it.
///
/// ```
/// use deferred_core::Lazy;
/// # futures::executor::block_on(async {
/// let lazy = Lazy::new(|| async { Ok::<_, ()>(1) });
/// assert_eq!(lazy.wait().await, Ok(&1));
/// # });
/// ```
#[must_use = "futures do nothing unless polled"]
pub struct LazyWait<'a, T, E, F, Fut> {
    waiter: Waiter<&'a Lazy<T, E, F, Fut>>,
    done: bool,
}

// SAFETY: as for `Lazy`; the node is only reached by other threads through the cell's lock.
unsafe impl<T: Send + Sync, E: Send + Sync, F: Send, Fut: Send> Send
    for LazyWait<'_, T, E, F, Fut>
{
}

impl<'a, T, E, F, Fut> Future for LazyWait<'a, T, E, F, Fut>
where
    T: Send + Sync + 'static,
    E: Send + Sync + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, E>> + Send + 'static,
{
    type Output = Result<&'a T, Error<&'a E>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // SAFETY: we never move out of the pinned future.
        let this = unsafe { self.get_unchecked_mut() };
        let lazy: &'a Lazy<T, E, F, Fut> = this.waiter.handle();
        // SAFETY: the waiter is a field of the pinned future (structural pinning).
        let waiter = unsafe { Pin::new_unchecked(&mut this.waiter) };
        let state = core::task::ready!(poll_lazy(waiter, cx));
        this.done = true;
        // SAFETY: `state` has DONE, loaded with Acquire.
        Poll::Ready(unsafe { lazy.shared.cell.outcome_of(state) })
    }
}

/// Polls an awaiter of a lazy cell (whose handle is a `Lazy` or a `&Lazy`): links it, then
/// drives the computation if no one else is. `Ready(state)` once the cell is complete.
fn poll_lazy<H, T, E, F, Fut>(mut waiter: Pin<&mut Waiter<H>>, cx: &Context<'_>) -> Poll<usize>
where
    H: CellRef<T = T, E = E> + Borrow<Lazy<T, E, F, Fut>>,
    T: Send + Sync + 'static,
    E: Send + Sync + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, E>> + Send + 'static,
{
    // Link first, then try to drive: a wake of the computation that lands after we linked
    // reaches us, and one that lands while someone drives is passed on by that driver
    // (REPOLL).
    let polled = waiter
        .as_mut()
        .poll(Which::Waiters, WakeBy::Task(cx.waker()));
    if let Polled::Done(state) = polled {
        return Poll::Ready(state);
    }
    let shared = &waiter.handle().borrow().shared;
    let cell = &shared.cell;
    if shared.try_drive() {
        shared.drive();
        if cell.is_done() {
            // Acquire: pairs with the Release in the completion (as in `try_get`).
            return Poll::Ready(cell.state_acquire());
        }
    }
    // Still linked: the next wake of the computation, or its completion, wakes us.
    Poll::Pending
}

impl<T, E, F, Fut> Lazy<T, E, F, Fut>
where
    T: Send + Sync + 'static,
    E: Send + Sync + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, E>> + Send + 'static,
{
    /// Polls the computation once, now, if the cell has one, is not complete, and no one
    /// else is polling it; returns whether the cell is complete afterwards. Never waits and
    /// registers nothing: if the computation is not done, it wakes the cell's awaiters when
    /// it can go on, so a caller that wants the value then awaits it as usual. This is the
    /// fast path for a computation that is ready at once: no awaiter is linked.
    ///
    /// If the computation panics, the cell completes as [`Error::Panicked`] and the panic
    /// goes on from here.
    ///
    /// ```
    /// use deferred_core::Lazy;
    /// let ready: Lazy<u8, ()> = Lazy::boxed(async { Ok(1) });
    /// assert!(ready.drive_now());
    /// assert_eq!(ready.get(), Some(&1));
    /// let never: Lazy<u8, ()> = Lazy::boxed(std::future::pending());
    /// assert!(!never.drive_now());
    /// ```
    pub fn drive_now(&self) -> bool {
        let shared = &self.shared;
        if shared.cell.is_done() {
            return true;
        }
        if shared.try_drive() {
            shared.drive();
        }
        shared.cell.is_done()
    }
}

impl<T, E, F, Fut> Deref for Lazy<T, E, F, Fut> {
    type Target = Deferred<T, E>;

    /// The cell, as [`Lazy::deferred`].
    fn deref(&self) -> &Deferred<T, E> {
        &self.shared.cell
    }
}

impl<T, E, F, Fut> Lazy<T, E, F, Fut> {
    /// Waits on the cell without borrowing the handle (the future owns a clone, so it is
    /// `'static` and can be spawned), driving the computation as [`wait`](Lazy::wait)
    /// does. Yields a clone of the outcome.
    ///
    /// ```
    /// use deferred_core::Lazy;
    /// # futures::executor::block_on(async {
    /// let lazy: Lazy<String, ()> = Lazy::boxed(async { Ok("v".to_string()) });
    /// let fut = lazy.clone().wait_owned();
    /// assert_eq!(fut.await, Ok("v".to_string()));
    /// # });
    /// ```
    pub fn wait_owned(self) -> OwnedLazyWait<T, E, F, Fut> {
        OwnedLazyWait {
            waiter: Waiter::new(self),
            done: false,
        }
    }
}

/// The future of [`Lazy::wait_owned`]: owns a handle, drives the computation like
/// [`LazyWait`], and resolves to a clone of the outcome.
///
/// # Cancel safety
///
/// Dropping it unlinks it; the computation is not affected.
///
/// ```
/// use deferred_core::Lazy;
/// # futures::executor::block_on(async {
/// let lazy: Lazy<u8, ()> = Lazy::boxed(async { Ok(1) });
/// assert_eq!(lazy.wait_owned().await, Ok(1));
/// # });
/// ```
#[must_use = "futures do nothing unless polled"]
pub struct OwnedLazyWait<T, E = Infallible, F = BoxInit<T, E>, Fut = BoxFuture<T, E>> {
    waiter: Waiter<Lazy<T, E, F, Fut>>,
    done: bool,
}

// SAFETY: as for `LazyWait`.
unsafe impl<T: Send + Sync, E: Send + Sync, F: Send, Fut: Send> Send
    for OwnedLazyWait<T, E, F, Fut>
{
}
// SAFETY: `&OwnedLazyWait` gives access to nothing but `is_terminated`, `lazy` and `Debug`.
unsafe impl<T: Send + Sync, E: Send + Sync, F: Send, Fut: Send> Sync
    for OwnedLazyWait<T, E, F, Fut>
{
}

impl<T, E, F, Fut> OwnedLazyWait<T, E, F, Fut> {
    /// The cell this future waits on.
    ///
    /// ```
    /// use deferred_core::Lazy;
    /// let lazy: Lazy<u8> = Lazy::pending();
    /// let fut = lazy.clone().wait_owned();
    /// assert!(Lazy::ptr_eq(fut.lazy(), &lazy));
    /// ```
    pub fn lazy(&self) -> &Lazy<T, E, F, Fut> {
        self.waiter.handle()
    }
}

impl<T, E, F, Fut> Future for OwnedLazyWait<T, E, F, Fut>
where
    T: Clone + Send + Sync + 'static,
    E: Clone + Send + Sync + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, E>> + Send + 'static,
{
    type Output = Result<T, Error<E>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // SAFETY: we never move out of the pinned future.
        let this = unsafe { self.get_unchecked_mut() };
        // SAFETY: the waiter is a field of the pinned future (structural pinning).
        let waiter = unsafe { Pin::new_unchecked(&mut this.waiter) };
        let state = core::task::ready!(poll_lazy(waiter, cx));
        this.done = true;
        // SAFETY: `state` has DONE, loaded with Acquire.
        let outcome = unsafe { this.waiter.handle().shared.cell.outcome_of(state) };
        Poll::Ready(outcome.cloned().map_err(Error::cloned))
    }
}

impl<T, E, F, Fut> FusedFuture for OwnedLazyWait<T, E, F, Fut>
where
    T: Clone + Send + Sync + 'static,
    E: Clone + Send + Sync + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, E>> + Send + 'static,
{
    fn is_terminated(&self) -> bool {
        self.done
    }
}

impl<T, E, F, Fut> fmt::Debug for OwnedLazyWait<T, E, F, Fut> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OwnedLazyWait")
            .field("linked", &self.waiter.is_linked())
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl<T, E, F, Fut> FusedFuture for LazyWait<'_, T, E, F, Fut>
where
    T: Send + Sync + 'static,
    E: Send + Sync + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, E>> + Send + 'static,
{
    fn is_terminated(&self) -> bool {
        self.done
    }
}

impl<T: fmt::Debug, E: fmt::Debug, F, Fut> fmt::Debug for Lazy<T, E, F, Fut> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lazy")
            .field("cell", &self.shared.cell)
            .finish_non_exhaustive()
    }
}

impl<T, E, F, Fut> fmt::Debug for LazyWait<'_, T, E, F, Fut> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LazyWait")
            .field("linked", &self.waiter.is_linked())
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}
