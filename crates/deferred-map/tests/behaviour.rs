//! Black-box behaviour of `DeferredMap`: fs2-es semantics, and the traps where fs2-es
//! hangs or leaks.

#![allow(clippy::std_instead_of_core)] // tests run on std; `core::` paths matter in the library only.

use std::{
    future::Future,
    pin::pin,
    sync::{
        atomic::{AtomicUsize, Ordering::SeqCst},
        mpsc, Arc, Barrier,
    },
    task::Poll,
    thread,
    time::Duration,
};

use deferred_map::{DeferredMap, Error, Lazy};
use deferred_test_support::{poll_once, Gate};
use futures::executor::block_on;

/// A computation counting its runs, finishing when `gate` opens.
fn counted(
    runs: &Arc<AtomicUsize>,
    gate: &Gate,
    value: u32,
) -> impl Future<Output = Result<u32, String>> + Send + 'static {
    let (runs, gate) = (runs.clone(), gate.clone());
    async move {
        runs.fetch_add(1, SeqCst);
        gate.wait().await;
        Ok(value)
    }
}

#[test]
fn get_or_add_with_runs_once_for_racing_callers() {
    let map: DeferredMap<u8, u32, String> = DeferredMap::new();
    let runs = Arc::new(AtomicUsize::new(0));
    let gate = Gate::default();
    let mut a = pin!(map.get_or_add_with(1, || counted(&runs, &gate, 10)));
    let mut b = pin!(map.get_or_add_with(1, || counted(&runs, &gate, 20)));
    assert!(poll_once(a.as_mut()).is_pending());
    assert!(poll_once(b.as_mut()).is_pending());
    gate.open();
    assert_eq!(poll_once(b.as_mut()), Poll::Ready(Ok(10)));
    assert_eq!(poll_once(a.as_mut()), Poll::Ready(Ok(10)));
    assert_eq!(runs.load(SeqCst), 1);
    assert_eq!(map.try_get(&1), Some(Ok(10)), "a success is kept");
}

#[test]
fn a_stalled_driver_does_not_block_a_second_caller() {
    let map: DeferredMap<u8, u32, String> = DeferredMap::new();
    let runs = Arc::new(AtomicUsize::new(0));
    let gate = Gate::default();
    // `stalled` starts the computation and is never polled again (nor dropped).
    let mut stalled = Box::pin(map.get_or_add_with(1, || counted(&runs, &gate, 1)));
    assert!(poll_once(stalled.as_mut()).is_pending());
    let mut second = pin!(map.get_or_add_with(1, || counted(&runs, &gate, 2)));
    assert!(poll_once(second.as_mut()).is_pending());
    gate.open();
    assert_eq!(poll_once(second.as_mut()), Poll::Ready(Ok(1)));
    assert_eq!(runs.load(SeqCst), 1);
    drop(stalled);
}

#[test]
fn a_dropped_driver_leaves_the_work_to_the_others_without_a_rerun() {
    let map: DeferredMap<u8, u32, String> = DeferredMap::new();
    let runs = Arc::new(AtomicUsize::new(0));
    let gate = Gate::default();
    let mut driver = Box::pin(map.get_or_add_with(1, || counted(&runs, &gate, 1)));
    let mut other = pin!(map.get_or_add_with(1, || counted(&runs, &gate, 2)));
    assert!(poll_once(driver.as_mut()).is_pending());
    assert!(poll_once(other.as_mut()).is_pending());
    drop(driver);
    gate.open();
    assert_eq!(poll_once(other.as_mut()), Poll::Ready(Ok(1)));
    assert_eq!(
        runs.load(SeqCst),
        1,
        "the computation lives in the entry: no extra run"
    );
}

#[test]
fn the_last_interested_caller_leaving_drops_the_work_and_the_entry() {
    let map: DeferredMap<u8, u32, String> = DeferredMap::new();
    let dropped = Arc::new(AtomicUsize::new(0));
    struct OnDrop(Arc<AtomicUsize>);
    impl Drop for OnDrop {
        fn drop(&mut self) {
            self.0.fetch_add(1, SeqCst);
        }
    }
    let token = OnDrop(dropped.clone());
    let mut a = Box::pin(map.get_or_add_with(1, move || async move {
        let _token = token;
        std::future::pending::<()>().await;
        Ok(1)
    }));
    let mut b = Box::pin(map.get_or_add_with(1, || async { Ok(2) }));
    assert!(poll_once(a.as_mut()).is_pending());
    assert!(poll_once(b.as_mut()).is_pending());
    drop(a);
    assert_eq!(map.len(), 1, "b still waits");
    assert_eq!(dropped.load(SeqCst), 0);
    drop(b);
    assert_eq!(map.len(), 0, "nothing is left behind");
    assert_eq!(dropped.load(SeqCst), 1, "the computation was dropped");
    // The key works afresh.
    assert_eq!(block_on(map.get_or_add_with(1, || async { Ok(3) })), Ok(3));
}

#[test]
fn an_error_reaches_every_waiter_and_the_entry_goes() {
    // fs2-es getOrAddF: a failed computation leaves every other caller hanging.
    let map: DeferredMap<u8, u32, String> = DeferredMap::new();
    let gate = Gate::default();
    let g = gate.clone();
    let mut a = pin!(map.get_or_add_with(1, move || async move {
        g.wait().await;
        Err("boom".to_string())
    }));
    let mut b = pin!(map.wait(1));
    assert!(poll_once(a.as_mut()).is_pending());
    assert!(poll_once(b.as_mut()).is_pending());
    gate.open();
    let boom = Error::Failed("boom".to_string());
    assert_eq!(poll_once(a.as_mut()), Poll::Ready(Err(boom.clone())));
    assert_eq!(poll_once(b.as_mut()), Poll::Ready(Err(boom)));
    assert!(
        map.is_empty(),
        "a failure is not kept: the next call retries"
    );
    assert_eq!(block_on(map.get_or_add_with(1, || async { Ok(5) })), Ok(5));
}

#[test]
fn a_panic_gives_every_waiter_panicked_and_the_entry_goes() {
    let map: DeferredMap<u8, u32, String> = DeferredMap::new();
    let mut driver = Box::pin(map.get_or_add_with(1, || async {
        if true {
            panic!("computation panics");
        }
        Ok(0)
    }));
    let mut other = Box::pin(map.wait(1));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| poll_once(driver.as_mut())));
    assert!(
        r.is_err(),
        "the panic unwinds in the caller whose poll ran it"
    );
    drop(driver);
    assert_eq!(poll_once(other.as_mut()), Poll::Ready(Err(Error::Panicked)));
    drop(other);
    assert!(map.is_empty(), "the panicked entry is removed");
    assert_eq!(block_on(map.get_or_add_with(1, || async { Ok(7) })), Ok(7));
}

#[test]
fn wait_on_an_absent_key_waits_and_its_placeholder_goes_if_abandoned() {
    let map: DeferredMap<&str, u32> = DeferredMap::new();
    {
        let mut g = pin!(map.wait("k"));
        assert!(poll_once(g.as_mut()).is_pending());
        assert_eq!(map.len(), 1);
    }
    assert!(
        map.is_empty(),
        "fs2-es leaves the placeholder behind; we remove it"
    );
    let mut g = pin!(map.wait("k"));
    assert!(poll_once(g.as_mut()).is_pending());
    assert!(map.add_value("k", 4));
    assert_eq!(poll_once(g.as_mut()), Poll::Ready(Ok(4)));
}

#[test]
fn add_on_a_present_key_never_waits_and_completes_the_existing_cell() {
    // fs2-es `add(k)(d)` on a present key blocks the caller until `d` completes.
    let map: DeferredMap<&str, u32> = DeferredMap::new();
    let mut waiting = pin!(map.wait("k"));
    assert!(poll_once(waiting.as_mut()).is_pending());
    let d: Lazy<u32> = Lazy::pending();
    assert!(!map.add_cell("k", d.clone()), "returns at once");
    assert!(poll_once(waiting.as_mut()).is_pending());
    d.succeed(8).unwrap();
    assert_eq!(poll_once(waiting.as_mut()), Poll::Ready(Ok(8)));
    assert_eq!(map.try_get(&"k"), Some(Ok(8)));
}

#[test]
fn add_value_does_not_overwrite_a_complete_value() {
    let map: DeferredMap<u8, u32> = DeferredMap::new();
    assert!(map.add_value(1, 1));
    assert!(!map.add_value(1, 2));
    assert_eq!(map.try_get(&1), Some(Ok(1)));
}

#[test]
fn remove_if_checks_and_removes_atomically() {
    let map = Arc::new(DeferredMap::<u32, u32>::new());
    for round in 0..if cfg!(miri) { 4 } else { 200 } {
        let cell = map.cell(round);
        let barrier = Arc::new(Barrier::new(2));
        let (m, b) = (map.clone(), barrier.clone());
        let remover = thread::spawn(move || {
            b.wait();
            m.remove_if_incomplete(&round)
        });
        barrier.wait();
        let completed = cell.succeed(1).is_ok();
        let removed = remover.join().unwrap();
        assert!(completed);
        // Either it was removed while pending, or it stayed because it was complete.
        match removed {
            Some(true) => assert_eq!(map.is_completed(&round), None),
            Some(false) => assert_eq!(map.is_completed(&round), Some(true)),
            None => panic!("the key was present"),
        }
    }
}

#[test]
fn probes_and_fs2_es_helpers() {
    let map: DeferredMap<u8, u32, String> = DeferredMap::from_values([(1, 10)]);
    assert_eq!(map.is_completed(&1), Some(true));
    assert_eq!(map.is_completed(&2), None);
    let two = map.cell(2);
    assert_eq!(map.is_completed(&2), Some(false));
    assert_eq!(map.try_get(&2), None);
    assert!(map.complete(&2, Err("x".into())));
    assert_eq!(map.try_get(&2), Some(Err(Error::Failed("x".into()))));
    assert!(two.is_done());
    assert!(map.wait_if_present(&3).is_none());
    assert_eq!(block_on(map.get_or_add_value(3, 30)), Ok(30));
    let mut keys = map.keys();
    keys.sort();
    assert_eq!(keys, vec![1, 2, 3]);
    map.retain(|k, _| *k != 2);
    assert_eq!(map.len(), 2);
    assert!(map.remove(&1).is_some());
    assert_eq!(map.remove_if_completed(&3), Some(true));
    assert!(map.is_empty());
}

#[test]
fn user_held_cells_stay_when_their_waiters_go() {
    let map: DeferredMap<u8, u32> = DeferredMap::new();
    let handle = map.cell(1);
    {
        let mut g = pin!(map.wait(1));
        assert!(poll_once(g.as_mut()).is_pending());
    }
    assert_eq!(map.len(), 1, "a handle is out: the entry stays");
    handle.succeed(1).unwrap();
    assert_eq!(map.try_get(&1), Some(Ok(1)));
}

#[test]
fn threads_racing_get_or_add_with_run_each_key_once() {
    let map = Arc::new(DeferredMap::<u32, u32>::new());
    let runs = Arc::new(AtomicUsize::new(0));
    let threads = 4;
    let keys = if cfg!(miri) { 4 } else { 200 };
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (map, runs, barrier) = (map.clone(), runs.clone(), barrier.clone());
            thread::spawn(move || {
                barrier.wait();
                for k in 0..keys {
                    let r = runs.clone();
                    let v = block_on(map.get_or_add_with(k, move || async move {
                        r.fetch_add(1, SeqCst);
                        Ok(k * 2)
                    }));
                    assert_eq!(v, Ok(k * 2));
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(runs.load(SeqCst), keys as usize);
}

#[test]
fn futures_are_send() {
    fn is_send<T: Send>(_: T) {}
    let map: DeferredMap<u8, u32> = DeferredMap::new();
    is_send(map.wait(1));
    is_send(map.get_or_add_with(2, || async { Ok(1) }));
}

// Waiters on a key whose placeholder is taken out of the map. fs2-es `del` while a `get`
// waits orphans the waiter: the removed placeholder is a cell no one can complete any more,
// and a later add goes to a new entry. Here every such waiter resolves: with the value of
// the cell that replaced the placeholder, or with `Cancelled`.

type Shared = Arc<DeferredMap<u8, u32, String>>;

/// How long a waiter may take to resolve once it must have: it bounds a hang, it orders
/// nothing (the tests order events with messages, never with sleeps).
const HANG: Duration = Duration::from_secs(10);

/// A `wait(key)` driven by `futures`' executor on a thread of its own.
struct Waiter {
    outcome: mpsc::Receiver<Result<u32, Error<String>>>,
    thread: thread::JoinHandle<()>,
}

/// Starts a `wait(key)` and returns once it waits on the key's cell (its first poll returned
/// `Pending`, so it is linked as an awaiter).
fn waiter(map: &Shared, key: u8) -> Waiter {
    let map = map.clone();
    let (linked_tx, linked) = mpsc::channel();
    let (outcome_tx, outcome) = mpsc::channel();
    let thread = thread::spawn(move || {
        let mut get = pin!(map.wait(key));
        let got = block_on(futures::future::poll_fn(|cx| {
            let polled = get.as_mut().poll(cx);
            if polled.is_pending() {
                let _ = linked_tx.send(());
            }
            polled
        }));
        let _ = outcome_tx.send(got);
    });
    linked
        .recv_timeout(HANG)
        .expect("a wait on a pending key waits");
    Waiter { outcome, thread }
}

impl Waiter {
    /// The waiter's outcome. Panics if it does not come: the waiter hangs.
    fn outcome(self, after: &str) -> Result<u32, Error<String>> {
        let got = self
            .outcome
            .recv_timeout(HANG)
            .unwrap_or_else(|_| panic!("after {after}: the waiting `wait` hangs (orphaned)"));
        self.thread.join().unwrap();
        got
    }
}

#[test]
fn remove_cancels_the_placeholder_a_wait_waits_on() {
    let map: Shared = Arc::new(DeferredMap::new());
    let w = waiter(&map, 1);
    let removed = map.remove(&1).expect("the wait's placeholder is an entry");
    // A later value goes to a new entry: it cannot reach the removed placeholder.
    assert!(map.add_value(1, 5));
    assert_eq!(w.outcome("remove"), Err(Error::Cancelled));
    assert!(matches!(removed.try_get(), Some(Err(Error::Cancelled))));
    assert_eq!(map.try_get(&1), Some(Ok(5)));
}

#[test]
fn insert_over_a_placeholder_gives_its_waiters_the_new_cells_outcome() {
    let map: Shared = Arc::new(DeferredMap::new());
    // A ready cell.
    let w = waiter(&map, 1);
    let old = map
        .insert(1, Lazy::ready(7))
        .expect("the wait's placeholder");
    assert_eq!(w.outcome("insert of a ready cell"), Ok(7));
    assert!(
        matches!(old.try_get(), Some(Ok(7))),
        "the placeholder follows the new cell"
    );
    assert_eq!(map.try_get(&1), Some(Ok(7)));
    // A pending cell that its owner fails later.
    let w = waiter(&map, 2);
    let mine: Lazy<u32, String> = Lazy::pending();
    map.insert(2, mine.clone());
    mine.fail("no".into()).unwrap();
    assert_eq!(
        w.outcome("insert of a pending cell"),
        Err(Error::Failed("no".into()))
    );
    // Cancellation and a panic reach the waiters as such.
    let w = waiter(&map, 3);
    let mine: Lazy<u32, String> = Lazy::pending();
    map.insert(3, mine.clone());
    assert!(mine.cancel());
    assert_eq!(
        w.outcome("insert of a cancelled cell"),
        Err(Error::Cancelled)
    );
    let w = waiter(&map, 4);
    let mine: Lazy<u32, String> = Lazy::pending();
    map.insert(4, mine.clone());
    assert!(mine.die());
    assert_eq!(w.outcome("insert of a dead cell"), Err(Error::Panicked));
    // A cell with a computation that nothing else awaits: the waiters drive it.
    let w = waiter(&map, 5);
    map.insert(5, Lazy::boxed(async { Ok(9) }));
    assert_eq!(w.outcome("insert of a computation"), Ok(9));
    assert_eq!(map.try_get(&5), Some(Ok(9)));
}

#[test]
fn clear_cancels_every_placeholder_and_leaves_cells_with_an_owner() {
    let map: Shared = Arc::new(DeferredMap::new());
    let (a, b) = (waiter(&map, 1), waiter(&map, 2));
    let mine = map.cell(3);
    let c = waiter(&map, 3);
    map.clear();
    assert_eq!(a.outcome("clear"), Err(Error::Cancelled));
    assert_eq!(b.outcome("clear"), Err(Error::Cancelled));
    // A cell a handle was given out for is its owner's to complete, in the map or not.
    assert!(!mine.is_done());
    mine.succeed(3).unwrap();
    assert_eq!(c.outcome("clear, then the owner's completion"), Ok(3));
    assert!(map.is_empty());
}

#[test]
fn every_other_path_that_takes_a_placeholder_out_resolves_its_waiters() {
    let map: Shared = Arc::new(DeferredMap::new());
    let w = waiter(&map, 1);
    assert!(map.remove_if(&1, |_| true).is_some());
    assert_eq!(w.outcome("remove_if"), Err(Error::Cancelled));
    let w = waiter(&map, 1);
    assert_eq!(map.remove_if_incomplete(&1), Some(true));
    assert_eq!(w.outcome("remove_if_incomplete"), Err(Error::Cancelled));
    let w = waiter(&map, 1);
    let out = map.extract_if(|_, _| true);
    assert_eq!(out.len(), 1);
    assert!(matches!(out[0].1.try_get(), Some(Err(Error::Cancelled))));
    assert_eq!(w.outcome("extract_if"), Err(Error::Cancelled));
    let w = waiter(&map, 1);
    map.retain(|_, _| false);
    assert_eq!(w.outcome("retain"), Err(Error::Cancelled));
    let w = waiter(&map, 1);
    assert!(map.replace_if(&1, Lazy::ready(4), |_| true).is_ok());
    assert_eq!(w.outcome("replace_if"), Ok(4));
    assert_eq!(map.try_get(&1), Some(Ok(4)));
    assert_eq!(map.remove_if_completed(&1), Some(true));
    assert!(map.is_empty());
}

#[test]
fn removal_leaves_cells_that_someone_else_completes_to_them() {
    let map: Shared = Arc::new(DeferredMap::new());
    // A placeholder whose handle was given out: its holder completes it.
    let w = waiter(&map, 1);
    let handle = map.cell_if_present(&1).unwrap();
    assert!(map.remove(&1).is_some());
    assert!(!handle.is_done(), "not cancelled from under its holder");
    handle.succeed(3).unwrap();
    assert_eq!(w.outcome("remove of a held cell"), Ok(3));
    // A placeholder that an added cell forwards into: the added cell's owner completes it.
    let w = waiter(&map, 2);
    let mine: Lazy<u32, String> = Lazy::pending();
    assert!(!map.add_cell(2, mine.clone()));
    assert!(map.remove(&2).is_some());
    mine.succeed(4).unwrap();
    assert_eq!(w.outcome("remove of a forwarded placeholder"), Ok(4));
    // A computation: its waiters drive it wherever it is, and get its value.
    let gate = Gate::default();
    let runs = Arc::new(AtomicUsize::new(0));
    let starter = map.get_or_add_with(3, || counted(&runs, &gate, 30));
    let w = waiter(&map, 3);
    drop(starter);
    assert!(map.remove(&3).is_some());
    gate.open();
    assert_eq!(w.outcome("remove of a computation"), Ok(30));
    assert_eq!(runs.load(SeqCst), 1);
    assert!(map.is_empty(), "its value is not stored: it was removed");
}

#[test]
fn for_each_sees_every_entry_once_with_its_cell() {
    let map: DeferredMap<u32, u32> = DeferredMap::new();
    for k in 0..300 {
        map.add_value(k, k * 2);
    }
    let _pending = map.cell(1000);
    let mut seen = Vec::new();
    map.for_each(|k, cell| seen.push((*k, cell.get().copied())));
    seen.sort_unstable();
    let mut expected: Vec<_> = (0..300).map(|k| (k, Some(k * 2))).collect();
    expected.push((1000, None));
    assert_eq!(seen, expected);
}

#[test]
fn for_each_holds_no_lock_while_its_callback_runs() {
    let map: DeferredMap<u32, u32> = DeferredMap::new();
    for k in 0..100 {
        map.add_value(k, k);
    }
    let mut seen = 0;
    // Writing to the key's own shard from the callback would deadlock under a held lock.
    map.for_each(|k, _| {
        seen += 1;
        assert!(map.remove(k).is_some());
    });
    assert_eq!(seen, 100);
    assert!(map.is_empty());
}

#[test]
fn for_each_does_not_claim_a_placeholder() {
    let map: DeferredMap<u8, u8> = DeferredMap::new();
    let waiting = map.wait(1);
    let mut seen = Vec::new();
    map.for_each(|k, cell| seen.push((*k, cell.is_done())));
    assert_eq!(seen, [(1, false)]);
    // Still a placeholder: its last waiter leaving removes it, and a removal cancels it.
    drop(waiting);
    assert!(map.is_empty());
    let waiting = map.wait(2);
    map.for_each(|_, _| {});
    assert!(map.remove(&2).is_some());
    assert_eq!(block_on(waiting), Err(Error::Cancelled));
}
