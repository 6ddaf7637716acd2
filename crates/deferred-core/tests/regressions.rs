//! Regression tests for defects a review found (issue #11), each forced on one thread where
//! it is a race, so it fails without loom. A hang is bounded by `bounded`, never ordered by
//! a sleep.
#![allow(clippy::std_instead_of_core)] // tests run on std; `core::` paths matter in the library only.

mod common;

use std::{
    cell::RefCell,
    future::Future,
    panic::{catch_unwind, AssertUnwindSafe},
    pin::{pin, Pin},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst},
        mpsc, Arc, Mutex, OnceLock,
    },
    task::{Context, Poll, Wake, Waker},
    time::Duration,
};

use common::{counting_waker, Counts};
use deferred_core::{Closed, Deferred, Lazy};
use deferred_test_support::{poll_once, poll_with};
use futures::task::{noop_waker, ArcWake};

/// Runs `f` on its own thread and fails if it has not returned within 20 s (a hang, such as
/// a loop with the cell's lock held, would otherwise stall the whole test run).
fn bounded(name: &str, f: impl FnOnce() + Send + 'static) {
    let (done, finished) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        f();
        let _ = done.send(());
    });
    match finished.recv_timeout(Duration::from_secs(20)) {
        Ok(()) => worker.join().unwrap(),
        // The worker panicked: report its panic.
        Err(mpsc::RecvTimeoutError::Disconnected) => worker.join().unwrap(),
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{name}: hung for 20 s"),
    }
}

/// A computation that never finishes and keeps the waker it is polled with (the lazy cell's
/// relay), so the test can wake it as the computation's I/O would.
struct KeepsWaker(Arc<Mutex<Option<Waker>>>);

impl Future for KeepsWaker {
    type Output = Result<u32, ()>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        *self.0.lock().unwrap() = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// A task waker that, on its first wake, wakes the lazy computation again: a second
/// `notify_waiters` round starting inside the first one's batch.
struct WakesTheComputation {
    relay: OnceLock<Waker>,
    fired: AtomicBool,
}

impl Wake for WakesTheComputation {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        if !self.fired.swap(true, SeqCst) {
            self.relay.get().expect("relay set").wake_by_ref();
        }
    }
}

/// #11.1: a wake-waiters round whose sentinel was taken by a later round (which started
/// inside the first one's batch) must end, not re-queue a linked callback forever with the
/// lock held. 33 waiters fill the first round's batch of 32, so it relocks after waking them.
#[test]
fn a_notify_round_whose_sentinel_a_later_round_took_ends() {
    bounded("notify round", || {
        let slot = Arc::new(Mutex::new(None));
        let lazy: Lazy<u32, ()> = Lazy::boxed(KeepsWaker(Arc::clone(&slot)));
        let calls = Arc::new(AtomicUsize::new(0));
        let c = Arc::clone(&calls);
        lazy.on_complete(move |outcome| {
            assert_eq!(outcome, Ok(&7));
            c.fetch_add(1, SeqCst);
        });
        let reentrant = Arc::new(WakesTheComputation {
            relay: OnceLock::new(),
            fired: AtomicBool::new(false),
        });
        let first = Waker::from(Arc::clone(&reentrant));
        let mut waits: Vec<_> = (0..33).map(|_| Box::pin(lazy.wait())).collect();
        assert!(poll_with(waits[0].as_mut(), &first).is_pending());
        for w in &mut waits[1..] {
            assert!(poll_once(w.as_mut()).is_pending());
        }
        let relay = slot
            .lock()
            .unwrap()
            .clone()
            .expect("the computation was polled");
        reentrant.relay.set(relay.clone()).unwrap();
        relay.wake_by_ref();
        assert!(reentrant.fired.load(SeqCst), "the re-entrant round ran");
        assert!(lazy.succeed(7).is_ok());
        assert_eq!(
            calls.load(SeqCst),
            1,
            "the callback runs once, at completion"
        );
        for w in &mut waits {
            assert_eq!(poll_once(w.as_mut()), Poll::Ready(Ok(&7)));
        }
    });
}

/// #11.2: `take` on a pending cell must keep the callbacks linked to it: the next completion
/// runs them.
#[test]
fn take_on_a_pending_cell_keeps_its_callbacks() {
    let mut cell: Deferred<u32> = Deferred::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&calls);
    cell.on_complete(move |outcome| {
        assert_eq!(outcome, Ok(&3));
        c.fetch_add(1, SeqCst);
    });
    assert_eq!(cell.take(), None);
    assert!(cell.succeed(3).is_ok());
    assert_eq!(calls.load(SeqCst), 1, "the callback ran at the completion");
}

/// #11.3: a `get_or_init` caller whose initializer is running must be woken by a direct
/// completion of the cell, see the value on its next poll, and drop its initializer.
#[test]
fn get_or_init_sees_a_direct_completion_while_its_initializer_runs() {
    struct Flag(Arc<AtomicBool>);
    impl Drop for Flag {
        fn drop(&mut self) {
            self.0.store(true, SeqCst);
        }
    }
    let cell: Deferred<u32> = Deferred::new();
    let dropped = Arc::new(AtomicBool::new(false));
    let d = Arc::clone(&dropped);
    let mut fut = pin!(cell.get_or_init(move || async move {
        let _flag = Flag(d);
        std::future::pending::<u32>().await
    }));
    let counts = Arc::new(Counts::default());
    let waker = counting_waker(&counts);
    assert!(poll_with(fut.as_mut(), &waker).is_pending());
    assert!(cell.succeed(5).is_ok());
    assert!(
        counts.wakes() >= 1,
        "the completion wakes the initializing caller"
    );
    assert_eq!(poll_with(fut.as_mut(), &waker), Poll::Ready(Ok(&5)));
    assert!(
        dropped.load(SeqCst),
        "its initializer is dropped once the cell is done"
    );
}

// ----- `Producer::closed` wake-ups lost to a panicking waker or a leaked `Closed` --------
// (a review of the `Closed` protocol: findings F1, F1b, F2; each doc below describes the
// defect as it was.)

/// A waker whose last clone panics when dropped.
struct BombOnDrop;
impl ArcWake for BombOnDrop {
    fn wake_by_ref(_: &Arc<Self>) {}
}
impl Drop for BombOnDrop {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            panic!("waker dropped: boom");
        }
    }
}

/// F1: `Waiter::unlink` (the leaving waiter's `Drop`) takes the lone closer off the list
/// under the lock, then dropped (before the fix) the leaving waiter's waker (user code)
/// BEFORE waking the closer. If that drop panics, the closer's notify (already popped,
/// node marked Notified) is dropped unwoken: the producer's task is never woken, although
/// no one waits any more, and no later event can wake it (its node is off the list).
#[test]
fn closer_is_woken_even_if_the_leaving_waiters_waker_panics_on_drop() {
    let cell: Deferred<u8> = Deferred::new();
    let mut producer = cell.producer().unwrap();
    let mut wait = Box::pin(cell.wait());
    {
        let bomb = futures::task::waker(Arc::new(BombOnDrop));
        assert!(poll_with(wait.as_mut(), &bomb).is_pending());
        // `bomb` dropped here: the clone in the node is the last reference.
    }
    let counts = Arc::new(Counts::default());
    let waker = counting_waker(&counts);
    let mut closed = Box::pin(producer.closed());
    assert!(
        poll_with(closed.as_mut(), &waker).is_pending(),
        "a waiter waits"
    );
    let r = catch_unwind(AssertUnwindSafe(|| drop(wait)));
    assert!(r.is_err(), "the waker's drop panicked (user code)");
    // The closer was taken off the list by the waiter's leaving: it is closed now...
    let now_ready = {
        // (peek without consuming the wake count)
        let noop = noop_waker();
        poll_with(closed.as_mut(), &noop).is_ready()
    };
    assert!(
        now_ready,
        "the closer is off the list and the cell has no waiter"
    );
    // ...but the producer's task was never told (README: "A waker that panics does not
    // stop the others being woken").
    assert_eq!(
        counts.wakes(),
        1,
        "LOST WAKE-UP: the closer was unlinked but never woken"
    );
}

/// F2: a `Closed` leaked while linked (`mem::forget` of a `Box::pin`, safe code) ends the
/// producer's `&mut` borrow, so a second `Closed` can be made and linked. Now two closer
/// nodes sit in the list; when the last real waiter leaves, `take_lone_closer` sees two
/// nodes (`single()` is `None`) and takes neither: WAITERS stays set and the second
/// `closed()` is never woken, though no one waits (it hangs until it is dropped; dropping
/// it then pops the leaked one).
#[test]
fn a_leaked_closed_does_not_make_the_next_closed_hang() {
    let cell: Deferred<u8> = Deferred::new();
    let mut producer = cell.producer().unwrap();
    let mut wait = Box::pin(cell.wait());
    assert!(poll_once(wait.as_mut()).is_pending());
    let mut leaked = Box::pin(producer.closed());
    assert!(poll_once(leaked.as_mut()).is_pending());
    // As `mem::forget(leaked)` (safe: the node stays linked, never dropped), but keeping the
    // address, untyped (so the borrow of `producer` ends), to free the memory at the end
    // (miri's leak check).
    let layout = std::alloc::Layout::for_value(&*leaked);
    // SAFETY: the value is never moved (nor dropped); only its memory is freed, below.
    let leaked = Box::into_raw(unsafe { Pin::into_inner_unchecked(leaked) }).cast::<u8>();
    let counts = Arc::new(Counts::default());
    let mut closed = Box::pin(producer.closed());
    assert!(poll_with(closed.as_mut(), &counting_waker(&counts)).is_pending());
    drop(wait); // the last (only) waiter leaves
    assert_eq!(
        counts.wakes(),
        1,
        "LOST WAKE-UP: the last waiter left but the second closer was not woken"
    );
    drop(closed);
    assert!(producer.is_closed(), "both closers are off the list");
    // Its `Drop` never runs, as for a leaked future; its waker (a noop waker) owns nothing.
    // SAFETY: allocated by the `Box` above with this layout; the leaked `Closed` was taken
    // off the list with the second one (were it still linked, the cell's drop below would
    // touch freed memory, which miri reports), and nothing reads it again.
    unsafe { std::alloc::dealloc(leaked, layout) };
}

// ----- F1b: the same stranding at the end of a Lazy relay round ------------------------

type L = Lazy<u8, ()>;
/// The producer's `Closed`, polled from a waiter's wake.
type PinnedClosed = Pin<Box<Closed<'static, u8, ()>>>;

thread_local! {
    static CLOSER: RefCell<Option<PinnedClosed>> = const { RefCell::new(None) };
    static CLOSER_COUNTS: RefCell<Option<Arc<Counts>>> = const { RefCell::new(None) };
}

/// Polls the producer's `Closed` (re-entrantly, from a waiter's wake): it links behind the
/// round's sentinel.
struct PollCloserOnWake;
impl ArcWake for PollCloserOnWake {
    fn wake_by_ref(_: &Arc<Self>) {
        let counts = CLOSER_COUNTS.with(|c| c.borrow().clone()).unwrap();
        CLOSER.with(|c| {
            if let Some(closed) = c.borrow_mut().as_mut() {
                let r = poll_with(closed.as_mut(), &counting_waker(&counts));
                assert!(r.is_pending(), "waiters are still linked");
            }
        });
    }
}

struct PanicOnWake;
impl ArcWake for PanicOnWake {
    fn wake_by_ref(_: &Arc<Self>) {
        panic!("waker panics on wake");
    }
}

/// F1b: in `notify_waiters`, the iteration that pops the round's sentinel also takes the
/// lone closer (`take_lone_closer`) into a local `Option<Notify>` that is woken only AFTER
/// `batch.wake_all()`. If a waiter's waker in that batch panics, the local is dropped
/// during unwinding: the closer is off the list and never woken (the batch's own Drop
/// guard wakes the rest of the batch, not the closer). 33 waiters so the round spans two
/// batches (BATCH = 32); the closer links between them (re-entrantly, from the first
/// waiter's wake), i.e. behind the sentinel.
#[test]
fn closer_is_woken_even_if_a_waker_in_the_last_relay_batch_panics() {
    // Leaked for `'static` (the thread-local holds the `Closed`), freed at the end (miri's
    // leak check).
    let lazy_ptr = Box::into_raw(Box::new(L::pending()));
    // SAFETY: freed only at the end, once nothing borrows it.
    let lazy: &'static L = unsafe { &*lazy_ptr };
    let producer_ptr = Box::into_raw(Box::new(lazy.deferred().producer().unwrap()));
    // SAFETY: as for `lazy`; this is the one reference made from the pointer.
    let producer = unsafe { &mut *producer_ptr };
    let mut waits: Vec<_> = (0..33).map(|_| Box::pin(lazy.wait())).collect();
    let reentrant = futures::task::waker(Arc::new(PollCloserOnWake));
    let bomb = futures::task::waker(Arc::new(PanicOnWake));
    for (i, w) in waits.iter_mut().enumerate() {
        let waker: Waker = match i {
            0 => reentrant.clone(),
            32 => bomb.clone(),
            _ => noop_waker(),
        };
        assert!(poll_with(w.as_mut(), &waker).is_pending());
    }
    let counts = Arc::new(Counts::default());
    CLOSER_COUNTS.with(|c| *c.borrow_mut() = Some(counts.clone()));
    CLOSER.with(|c| *c.borrow_mut() = Some(Box::pin(producer.closed())));
    let r = catch_unwind(AssertUnwindSafe(|| {
        let _ = lazy.try_attach(Box::pin(std::future::pending::<Result<u8, ()>>()));
    }));
    assert!(r.is_err(), "the last batch's waker panicked");
    assert!(
        counts.clones() >= 1,
        "the closer was polled (and linked) mid-round"
    );
    // Every waiter goes away without polling again: no one waits at all now.
    drop(waits);
    let ready = CLOSER.with(|c| {
        let mut c = c.borrow_mut();
        poll_once(c.as_mut().unwrap().as_mut()).is_ready()
    });
    assert!(
        ready,
        "the closer is off the list: it would resolve if polled"
    );
    assert_eq!(
        counts.wakes(),
        1,
        "LOST WAKE-UP: the relay round unlinked the closer but never woke it"
    );
    CLOSER.with(|c| drop(c.borrow_mut().take()));
    // SAFETY: made by `Box::into_raw` above; the waiters and the `Closed` that borrowed them
    // are dropped, and nothing uses `lazy` or `producer` again. The producer first (it
    // borrows the cell).
    unsafe {
        drop(Box::from_raw(producer_ptr));
        drop(Box::from_raw(lazy_ptr));
    }
}

// ----- issue #15 review: the `Waiter` refactor's drop order and `on_unwind` --------------

/// The futures that hold their cell's handle (an `Arc`, a `Lazy`) keep it inside their
/// `Waiter`, which unlinks its node in its own `Drop`, before its fields (the handle) are
/// dropped. Were the handle dropped first, a future holding the last one would free the
/// cell and then unlink from it: miri reports the use after free. A second waiter behind
/// the first makes the unlink write into the freed cell's list and the neighbour's links.
#[test]
fn an_owned_wait_holding_the_last_arc_unlinks_before_the_cell_goes() {
    let cell = Arc::new(Deferred::<u8>::new());
    let mut first = Box::pin(Deferred::wait_owned(Arc::clone(&cell)));
    let mut second = Box::pin(Deferred::wait_owned(Arc::clone(&cell)));
    assert!(poll_with(first.as_mut(), &noop_waker()).is_pending());
    assert!(poll_with(second.as_mut(), &noop_waker()).is_pending());
    drop(cell);
    drop(first); // unlinks from between the list's head and `second`
    drop(second); // holds the last `Arc`: unlinks, then frees the cell
}

/// As `an_owned_wait_holding_the_last_arc_unlinks_before_the_cell_goes`, for an
/// `OwnedLazyWait` holding the last `Lazy` handle (its cell lives in the handle's shared
/// allocation).
#[test]
fn an_owned_lazy_wait_holding_the_last_handle_unlinks_before_the_cell_goes() {
    let lazy: Lazy<u8, ()> = Lazy::pending();
    let mut first = Box::pin(lazy.clone().wait_owned());
    let mut second = Box::pin(lazy.clone().wait_owned());
    assert!(poll_with(first.as_mut(), &noop_waker()).is_pending());
    assert!(poll_with(second.as_mut(), &noop_waker()).is_pending());
    drop(lazy);
    drop(second); // the tail leaves: the list's tail moves back to `first`
    drop(first); // holds the last handle: unlinks, then frees the cell
}

// A waker whose clone releases the claim a test holds (so the claimant's link, just after
// the clone, finds the claim free and takes it under the lock: `Waiter::link`'s granted
// path), and whose drop panics while `PANIC_ON_DROP` is set.
thread_local! {
    static HELD_CLAIM: RefCell<Option<deferred_core::Claim<'static, u8>>> =
        const { RefCell::new(None) };
    static PANIC_ON_DROP: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

static RELEASING_VTABLE: std::task::RawWakerVTable =
    std::task::RawWakerVTable::new(releasing_clone, |_| {}, |_| {}, releasing_drop);

fn releasing_clone(_: *const ()) -> std::task::RawWaker {
    drop(HELD_CLAIM.with(|c| c.borrow_mut().take()));
    std::task::RawWaker::new(std::ptr::null(), &RELEASING_VTABLE)
}

fn releasing_drop(_: *const ()) {
    if PANIC_ON_DROP.with(|p| p.replace(false)) {
        panic!("waker dropped: boom");
    }
}

fn releasing_waker() -> Waker {
    // SAFETY: the vtable's functions ignore the (null) data pointer and own nothing.
    unsafe {
        Waker::from_raw(std::task::RawWaker::new(
            std::ptr::null(),
            &RELEASING_VTABLE,
        ))
    }
}

/// `Waiter::link` takes a claim freed while it cloned the waker, then drops its unused
/// clone inside `on_unwind(.., release_claim)`. That cleanup must run only if the drop
/// unwinds: run on the normal path, it would release the claim the caller was just handed,
/// and a second caller could take it (two holders).
#[test]
fn a_claim_taken_while_linking_is_not_released_on_the_normal_path() {
    // A static (`new` is `const`): the `Claim` the waker holds borrows it for `'static`.
    static CELL: Deferred<u8> = Deferred::new();
    let cell = &CELL;
    HELD_CLAIM.with(|c| *c.borrow_mut() = Some(cell.try_claim().unwrap()));
    let mut claimant = Box::pin(cell.claim());
    let waker = releasing_waker();
    let claim = match poll_with(claimant.as_mut(), &waker) {
        Poll::Ready(Ok(claim)) => claim,
        _ => panic!("the claim freed by the waker's clone is taken while linking"),
    };
    assert!(cell.try_claim().is_none(), "two claim holders");
    drop(claim);
    assert!(cell.try_claim().is_some(), "the claim is free once dropped");
}

/// The unwinding path of the same `on_unwind`: the unused clone's drop panics after the
/// claim was taken under the lock and before any `Claim` guard owns it. The claim must be
/// passed on (here: freed, no one queued), not leaked with CLAIMED set for ever.
#[test]
fn a_claim_taken_while_linking_is_released_if_the_waker_drop_panics() {
    static CELL: Deferred<u8> = Deferred::new();
    let cell = &CELL;
    HELD_CLAIM.with(|c| *c.borrow_mut() = Some(cell.try_claim().unwrap()));
    let mut claimant = Box::pin(cell.claim());
    let waker = releasing_waker();
    PANIC_ON_DROP.with(|p| p.set(true));
    let polled = catch_unwind(AssertUnwindSafe(|| poll_with(claimant.as_mut(), &waker)));
    assert!(polled.is_err(), "the clone's drop panicked");
    assert!(
        !PANIC_ON_DROP.with(std::cell::Cell::get),
        "the panic came from the unused clone's drop"
    );
    drop(claimant);
    let claim = cell.try_claim();
    assert!(
        claim.is_some(),
        "LEAKED CLAIM: the panicking drop stranded it"
    );
}
