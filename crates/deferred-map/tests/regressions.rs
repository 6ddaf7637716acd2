//! Regressions found in review: entries added to a key that its last waiter is leaving,
//! failures set from outside, and computations that keep their own waker.

#![allow(clippy::std_instead_of_core)] // tests run on std; `core::` paths matter in the library only.

use std::{
    cell::RefCell,
    hash::{Hash, Hasher},
    pin::Pin,
    sync::{
        atomic::{AtomicUsize, Ordering::SeqCst},
        mpsc, Arc, OnceLock,
    },
    task::Poll,
    thread,
    time::Duration,
};

use deferred_map::{DeferredMap, Error, Lazy};
use deferred_test_support::poll_once;
use futures::executor::block_on;

// The window between finding an entry and acting on it, opened deterministically: the
// unused key's `Drop` (user code, run after the lookup) drops the entry's last waiter.
thread_local! {
    static VICTIM: RefCell<Option<Box<dyn std::any::Any>>> = const { RefCell::new(None) };
}

struct Key(u8, bool);
impl PartialEq for Key {
    fn eq(&self, o: &Self) -> bool {
        self.0 == o.0
    }
}
impl Eq for Key {}
impl Hash for Key {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.0.hash(h);
    }
}
impl Drop for Key {
    fn drop(&mut self) {
        if self.1 {
            let victim = VICTIM.with(|v| v.borrow_mut().take());
            drop(victim);
        }
    }
}

/// A map that lives as long as the test binary (a waiter borrowing it is parked in a
/// thread-local), one per test. Reachable from a static, so miri does not call it a leak.
fn static_map(slot: &'static OnceLock<DeferredMap<Key, u32>>) -> &'static DeferredMap<Key, u32> {
    slot.get_or_init(DeferredMap::new)
}

fn stall_placeholder(map: &'static DeferredMap<Key, u32>) {
    let mut g = Box::pin(map.wait(Key(1, false)));
    assert!(poll_once(g.as_mut()).is_pending());
    VICTIM.with(|v| *v.borrow_mut() = Some(Box::new(g)));
}

#[test]
fn add_with_on_a_placeholder_survives_its_waiters() {
    let map: DeferredMap<u8, u32, String> = DeferredMap::new();
    let mut g = Box::pin(map.wait(1));
    assert!(poll_once(g.as_mut()).is_pending());
    assert!(map.add_with(1, std::future::pending())); // "taken"
    drop(g);
    assert_eq!(
        map.is_completed(&1),
        Some(false),
        "an added computation stays until removed"
    );
}

#[test]
fn add_with_on_a_placeholder_keeps_its_failure_like_other_added_entries() {
    let map: DeferredMap<u8, u32, String> = DeferredMap::new();
    let mut g = Box::pin(map.wait(1));
    assert!(poll_once(g.as_mut()).is_pending());
    assert!(map.add_with(1, async { Err("e".to_string()) }));
    assert_eq!(
        poll_once(g.as_mut()),
        Poll::Ready(Err(Error::Failed("e".to_string())))
    );
    // Without a waiter, add_with inserts a permanent entry whose failure is kept;
    // on a placeholder the same call yields a transient one.
    assert_eq!(map.try_get(&1), Some(Err(Error::Failed("e".to_string()))));
}

#[test]
fn add_value_racing_the_last_waiter_keeps_the_value() {
    static MAP: OnceLock<DeferredMap<Key, u32>> = OnceLock::new();
    let map = static_map(&MAP);
    stall_placeholder(map);
    let stored = map.add_value(Key(1, true), 7);
    // Linearizable outcomes: (waiter left first) key absent -> inserted, true;
    // (add first) placeholder completed, true. Either way the value is at the key.
    assert_eq!(
        map.try_get(&Key(1, false)),
        Some(Ok(7)),
        "stored = {stored}"
    );
}

#[test]
fn add_cell_racing_the_last_waiter_still_lands() {
    static MAP: OnceLock<DeferredMap<Key, u32>> = OnceLock::new();
    let map = static_map(&MAP);
    stall_placeholder(map);
    let mine: Lazy<u32> = Lazy::pending();
    let became = map.add_cell(Key(1, true), mine.clone());
    mine.succeed(9).unwrap();
    assert_eq!(
        map.try_get(&Key(1, false)),
        Some(Ok(9)),
        "add_cell -> {became}"
    );
}

#[test]
fn complete_err_on_a_transient_entry_is_not_kept() {
    let map: DeferredMap<u8, u32, String> = DeferredMap::new();
    let mut stalled = Box::pin(map.get_or_add_with(1, std::future::pending));
    assert!(poll_once(stalled.as_mut()).is_pending());
    assert!(map.complete(&1, Err("down".into())));
    assert_eq!(
        block_on(map.get_or_add_with(1, || async { Ok(2) })),
        Ok(2),
        "failures are not kept: the next call computes afresh"
    );
    drop(stalled);
}

#[test]
fn a_removed_computation_that_keeps_its_own_waker_is_dropped_when_its_waiters_go() {
    struct OnDrop(Arc<AtomicUsize>);
    impl Drop for OnDrop {
        fn drop(&mut self) {
            self.0.fetch_add(1, SeqCst);
        }
    }
    let map: DeferredMap<u8, u32> = DeferredMap::new();
    let dropped = Arc::new(AtomicUsize::new(0));
    let token = OnDrop(dropped.clone());
    let mut g = Box::pin(map.get_or_add_with(1, move || {
        let parked: Arc<std::sync::Mutex<Option<std::task::Waker>>> = Default::default();
        futures::future::poll_fn(move |cx| {
            let _ = &token;
            *parked.lock().unwrap() = Some(cx.waker().clone()); // co-owned: a cycle
            Poll::<Result<u32, _>>::Pending
        })
    }));
    assert!(poll_once(g.as_mut()).is_pending());
    drop(map.remove(&1));
    drop(g);
    assert_eq!(dropped.load(SeqCst), 1, "the computation leaked");
}

/// Removes `Key(1)` from its map when dropped. Parked in `VICTIM`, it runs in the window
/// between an add's lookup (which found a `wait` placeholder) and its completing, attaching
/// or forwarding to it.
struct RemoveOnDrop(&'static DeferredMap<Key, u32>);
impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        drop(self.0.remove(&Key(1, false)));
    }
}

/// A `wait` waiting on the placeholder at `Key(1)`, and a removal of that key armed to run
/// inside the next add's window.
fn placeholder_and_armed_removal(
    map: &'static DeferredMap<Key, u32>,
) -> Pin<Box<deferred_map::Get<'static, Key, u32, std::convert::Infallible, std::hash::RandomState>>>
{
    let mut g = Box::pin(map.wait(Key(1, false)));
    assert!(poll_once(g.as_mut()).is_pending());
    VICTIM.with(|v| *v.borrow_mut() = Some(Box::new(RemoveOnDrop(map))));
    g
}

// Linearizable outcomes below: the add found the placeholder, so it came first and the
// removal after: the waiter gets what was added, and the key is gone.

#[test]
fn add_value_racing_a_removal_of_the_placeholder_still_reaches_its_waiter() {
    static MAP: OnceLock<DeferredMap<Key, u32>> = OnceLock::new();
    let map = static_map(&MAP);
    let mut g = placeholder_and_armed_removal(map);
    assert!(map.add_value(Key(1, true), 7));
    assert_eq!(poll_once(g.as_mut()), Poll::Ready(Ok(7)));
    assert_eq!(map.try_get(&Key(1, false)), None);
}

#[test]
fn add_with_racing_a_removal_of_the_placeholder_still_reaches_its_waiter() {
    static MAP: OnceLock<DeferredMap<Key, u32>> = OnceLock::new();
    let map = static_map(&MAP);
    let mut g = placeholder_and_armed_removal(map);
    assert!(map.add_with(Key(1, true), async { Ok(8) }), "taken");
    assert_eq!(poll_once(g.as_mut()), Poll::Ready(Ok(8)));
    assert_eq!(map.try_get(&Key(1, false)), None);
}

#[test]
fn add_cell_racing_a_removal_of_the_placeholder_still_reaches_its_waiter() {
    static MAP: OnceLock<DeferredMap<Key, u32>> = OnceLock::new();
    let map = static_map(&MAP);
    let mut g = placeholder_and_armed_removal(map);
    let mine: Lazy<u32> = Lazy::pending();
    assert!(!map.add_cell(Key(1, true), mine.clone()), "forwarded");
    mine.succeed(9).unwrap();
    assert_eq!(poll_once(g.as_mut()), Poll::Ready(Ok(9)));
    assert_eq!(map.try_get(&Key(1, false)), None);
}

#[test]
fn a_placeholder_put_back_in_its_own_place_is_left_to_its_holder_and_not_leaked() {
    let map: DeferredMap<u8, u32> = DeferredMap::new();
    let mut g = Box::pin(map.wait(1));
    assert!(poll_once(g.as_mut()).is_pending());
    let handle = g.cell().clone();
    let weak = Lazy::downgrade(&handle);
    // Replacing the placeholder with itself: it must not be made to follow itself (a
    // computation awaiting its own cell, and holding it: a cycle).
    assert!(map.insert(1, handle.clone()).is_some());
    handle.succeed(3).unwrap();
    assert_eq!(poll_once(g.as_mut()), Poll::Ready(Ok(3)));
    drop((g, handle, map.remove(&1)));
    assert!(weak.upgrade().is_none(), "the cell leaked");
}

#[test]
fn a_pending_cell_added_over_itself_is_not_leaked() {
    let map: DeferredMap<u8, u32> = DeferredMap::new();
    let handle = map.cell(1);
    let weak = Lazy::downgrade(&handle);
    // Forwarding the cell into itself would store, in the cell, a callback holding it.
    assert!(!map.add_cell(1, handle.clone()), "the key is there");
    drop((handle, map.remove(&1)));
    assert!(weak.upgrade().is_none(), "the cell leaked");
}

/// Awaits `wait` on a thread of its own; its outcome comes back through the receiver. The
/// thread is not joined: a `wait` that never resolves shows as a timeout, not a hung test.
fn on_its_own_thread(
    get: deferred_map::Get<'static, Key, u32, std::convert::Infallible, std::hash::RandomState>,
) -> mpsc::Receiver<Result<u32, Error<std::convert::Infallible>>> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        // The receiver is gone only if the test has already failed.
        let _ = tx.send(block_on(get));
    });
    rx
}

/// Long enough for a loaded machine; a `wait` that resolves does so at once.
const BOUND: Duration = Duration::from_secs(10);

#[test]
fn an_added_cell_dropped_unrun_cancels_the_placeholder_it_forwarded_into() {
    static MAP: OnceLock<DeferredMap<Key, u32>> = OnceLock::new();
    let map = static_map(&MAP);
    // Made here, so that the placeholder is there before the add: one `wait` waits on it as
    // a placeholder, the other finds it after the add claimed it.
    let before = on_its_own_thread(map.wait(Key(1, false)));
    let mine: Lazy<u32> = Lazy::pending();
    assert!(!map.add_cell(Key(1, false), mine.clone()), "forwarded");
    let after = on_its_own_thread(map.wait(Key(1, false)));
    // Dropped pending: the forwarding callback is dropped unrun. Then a removal, which
    // leaves a forwarded-into cell to its forwarder: nothing else could complete it.
    drop(mine);
    drop(map.remove(&Key(1, false)));
    assert_eq!(
        before.recv_timeout(BOUND),
        Ok(Err(Error::Cancelled)),
        "the wait from before the add"
    );
    assert_eq!(
        after.recv_timeout(BOUND),
        Ok(Err(Error::Cancelled)),
        "the wait from after the add"
    );
}

#[test]
fn an_added_cell_dropped_unrun_leaves_a_cell_with_another_completer_to_it() {
    static MAP: OnceLock<DeferredMap<Key, u32>> = OnceLock::new();
    let map = static_map(&MAP);
    let waiting = on_its_own_thread(map.wait(Key(1, false)));
    // A handle was given out before the add: its holder can complete the cell.
    let handle = map.cell(Key(1, false));
    assert!(
        !map.add_cell(Key(1, false), Lazy::pending()),
        "forwarded, then dropped"
    );
    assert!(!handle.is_done(), "not cancelled from under its holder");
    handle.succeed(3).unwrap();
    assert_eq!(waiting.recv_timeout(BOUND), Ok(Ok(3)));
}

#[test]
fn a_forwarding_that_panics_cloning_the_value_gives_the_placeholder_panicked() {
    #[derive(Debug, PartialEq)]
    struct Bomb;
    impl Clone for Bomb {
        fn clone(&self) -> Self {
            panic!("Bomb::clone");
        }
    }
    let map: DeferredMap<u8, Bomb> = DeferredMap::new();
    let mut g = Box::pin(map.wait(1));
    assert!(poll_once(g.as_mut()).is_pending());
    let mine: Lazy<Bomb> = Lazy::pending();
    assert!(!map.add_cell(1, mine.clone()), "forwarded");
    // The forwarding runs on this thread, and its clone of the value panics: the panic
    // reaches the completer, and the placeholder, which nothing else can complete, must
    // not be left pending.
    let completed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| mine.succeed(Bomb)));
    assert!(
        completed.is_err(),
        "the callback's panic reaches the completer"
    );
    assert_eq!(poll_once(g.as_mut()), Poll::Ready(Err(Error::Panicked)));
}
