//! Review of the #12 additions: deterministic demonstrations of bugs. Each test states the
//! behaviour the crate promises; a failing test is a finding. Events are ordered with gates,
//! channels and a key whose `Hash` can pause one thread; sleeps only bound a hang
//! (`recv_timeout`).

#![allow(clippy::std_instead_of_core)]

mod common;

use std::{
    cell::Cell as StdCell,
    hash::{Hash, Hasher},
    panic::{catch_unwind, AssertUnwindSafe},
    sync::{mpsc, Arc, Mutex},
    task::Poll,
    thread,
    time::Duration,
};

use common::{poll_once, Gate};
use deferred_cache::{Cache, LoadError, RemovalCause};
use futures::executor::block_on;

/// How long a caller may take before it is deemed parked for good.
const HANG: Duration = Duration::from_secs(5);

fn quiet_panics() {
    // Expected panics are noise; keep the hook's default for anything else.
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info.to_string();
        if !msg.contains("review:") {
            default(info);
        }
    }));
}

// ---------------------------------------------------------------------------------------
// F1. get_with_blocking: a panic in `V::clone` after the loader returned strands the key.
// ---------------------------------------------------------------------------------------

/// A value whose `Clone` panics if it says so.
#[derive(Debug)]
struct Touchy {
    v: u32,
    clone_panics: bool,
}

impl Clone for Touchy {
    fn clone(&self) -> Self {
        assert!(!self.clone_panics, "review: Touchy refuses to be cloned");
        Touchy {
            v: self.v,
            clone_panics: false,
        }
    }
}

/// blocking.rs: `load.finished = true; drop(load)` disarms the `Running` guard, then
/// `mine.succeed(Stored::new(value.clone()))` runs `V::clone`. If it panics, the pending
/// `Kept` cell stays in the map, never completed: every later caller of the key (blocking
/// or async) joins it and waits forever.
#[test]
fn f1_blocking_value_clone_panic_strands_the_key() {
    quiet_panics();
    let cache: Cache<u32, Touchy, String> = Cache::new();
    let c = cache.clone();
    let first = thread::spawn(move || {
        c.get_with_blocking(1, || {
            Ok(Touchy {
                v: 1,
                clone_panics: true,
            })
        })
    });
    assert!(
        first.join().is_err(),
        "the first caller unwinds from V::clone"
    );

    let (tx, rx) = mpsc::channel();
    let c = cache.clone();
    thread::spawn(move || {
        let got = c.get_with_blocking(1, || {
            Ok(Touchy {
                v: 2,
                clone_panics: false,
            })
        });
        let _ = tx.send(got.map(|t| t.v));
    });
    let got = rx.recv_timeout(HANG);
    assert!(
        got.is_ok(),
        "a later get_with_blocking of the key is parked for good (len = {}, stats = {:?})",
        cache.len(),
        cache.stats()
    );
}

// ---------------------------------------------------------------------------------------
// F2/F3. get_with_blocking whose load get_or_insert_with settled, then the loader fails
// or panics: the settled value is removed from the map with no bookkeeping.
// ---------------------------------------------------------------------------------------

type Events = Arc<Mutex<Vec<(u32, u32, RemovalCause)>>>;

fn listened(capacity: u64) -> (Cache<u32, u32, String>, Events) {
    let events: Events = Arc::default();
    let e = Arc::clone(&events);
    let cache = Cache::builder()
        .max_capacity(capacity)
        .eviction_listener(move |k: &u32, v: &u32, cause| e.lock().unwrap().push((*k, *v, cause)))
        .build();
    (cache, events)
}

/// Runs `get_with_blocking(1)` on a thread whose loader waits until `get_or_insert_with(1,
/// || 5)` has settled the key, then ends with `end` (an error, or a panic).
fn settle_then(end: fn() -> Result<u32, String>) -> (Cache<u32, u32, String>, Events) {
    let (cache, events) = listened(10);
    let (started_tx, started_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let c = cache.clone();
    let blocking = thread::spawn(move || {
        c.get_with_blocking(1, move || {
            started_tx.send(()).unwrap();
            go_rx.recv().unwrap();
            end()
        })
    });
    started_rx.recv().unwrap();
    assert_eq!(cache.get_or_insert_with(1, || 5), 5);
    // Documented: make's value settles the key, is stored and admitted.
    assert_eq!(cache.peek(&1), Some(5));
    assert_eq!((cache.len(), cache.weighted_size()), (1, Some(1)));
    go_tx.send(()).unwrap();
    let _ = blocking.join();
    (cache, events)
}

fn assert_books(cache: &Cache<u32, u32, String>, events: &Events) {
    let stats = cache.stats();
    let told = events.lock().unwrap().clone();
    eprintln!(
        "after: peek = {:?}, len = {}, weighted_size = {:?}, invalidated = {}, evicted = {}, \
         listener = {:?}",
        cache.peek(&1),
        cache.len(),
        cache.weighted_size(),
        stats.invalidated,
        stats.evicted,
        told
    );
    assert_eq!(
        cache.weighted_size(),
        Some(cache.len() as u64),
        "weighted_size counts a value that is no longer in the map"
    );
    // One value went in (get_or_insert_with's): either it is still there, or its leaving
    // was counted and told.
    let left = u64::from(cache.len() == 0);
    assert_eq!(
        stats.invalidated + stats.evicted,
        left,
        "a removal no counter saw"
    );
    assert_eq!(
        told.len() as u64,
        left,
        "a removal the listener was not told of"
    );
}

/// blocking.rs Err arm: `remove_if(&key, ptr_eq(mine))` runs without checking that `mine`
/// still pending: get_or_insert_with completed it with its (admitted) value, so that value
/// is taken out of the map, never retired from the policy, not counted, not told.
#[test]
fn f2_blocking_error_after_get_or_insert_with_loses_the_value_off_the_books() {
    let (cache, events) = settle_then(|| Err("down".to_string()));
    assert_books(&cache, &events);
}

/// The same through the `Running` guard (loader panics): `remove_if` + `die()`.
#[test]
fn f3_blocking_panic_after_get_or_insert_with_loses_the_value_off_the_books() {
    quiet_panics();
    let (cache, events) = settle_then(|| panic!("review: loader panics"));
    assert_books(&cache, &events);
}

// ---------------------------------------------------------------------------------------
// F4. invalidate_entries_if / retain: a panicking predicate after a shard was processed.
// ---------------------------------------------------------------------------------------

/// cache.rs `invalidate_entries_if`: `map.extract_if` removes shard after shard; a panic in
/// `pred` in a later shard unwinds out of `extract_if`, dropping the `Vec` of entries
/// already removed: they leave the map but are never retired (weighted_size keeps them),
/// counted (`invalidated`) or told to the listener.
#[test]
fn f4_a_panicking_predicate_leaves_removed_values_on_the_books() {
    quiet_panics();
    let (cache, events) = listened(1_000);
    for k in 0..200 {
        cache.insert(k, k);
    }
    let mut calls = 0;
    let result = catch_unwind(AssertUnwindSafe(|| {
        cache.invalidate_entries_if(|_, _| {
            calls += 1;
            assert!(calls < 200, "review: predicate panics");
            true
        })
    }));
    assert!(result.is_err());
    let (len, stats) = (cache.len() as u64, cache.stats());
    eprintln!(
        "after: len = {len}, weighted_size = {:?}, invalidated = {}, told = {}",
        cache.weighted_size(),
        stats.invalidated,
        events.lock().unwrap().len()
    );
    assert!(len < 200, "precondition: earlier shards were emptied");
    assert_eq!(
        cache.weighted_size(),
        Some(len),
        "removed values still weighed"
    );
    assert_eq!(stats.invalidated, 200 - len, "removed values not counted");
}

// ---------------------------------------------------------------------------------------
// F5. get_or_insert_with pins someone else's load as `Kept`: its error is then cached.
// ---------------------------------------------------------------------------------------

thread_local! {
    /// Hash calls on this thread until the key pauses it (0: never).
    static ARM: StdCell<u32> = const { StdCell::new(0) };
}

/// Pauses the thread that hashes a key when `ARM` runs out, until the test resumes it.
struct Pause {
    paused: Mutex<Option<mpsc::Sender<()>>>,
    resume: Mutex<Option<mpsc::Receiver<()>>>,
}

#[derive(Clone)]
struct GatedKey {
    id: u32,
    pause: Arc<Pause>,
}

impl PartialEq for GatedKey {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl Eq for GatedKey {}

impl Hash for GatedKey {
    fn hash<H: Hasher>(&self, h: &mut H) {
        let n = ARM.with(StdCell::get);
        if n > 0 {
            ARM.with(|a| a.set(n - 1));
            if n == 1 {
                let paused = self.pause.paused.lock().unwrap().take().unwrap();
                paused.send(()).unwrap();
                let resume = self.pause.resume.lock().unwrap().take().unwrap();
                resume.recv().unwrap();
            }
        }
        self.id.hash(h);
    }
}

/// cache.rs `get_or_insert_with`: after `add_value` stored make's value, it looks the key
/// up again with `cell_if_present` (a `Lookup::Hold` lookup, which makes the entry `Kept`).
/// If the value was invalidated and another caller started a load in between, that load's
/// transient entry becomes `Kept`: when it fails, its error is no longer removed (neither
/// by its waiters' settle nor by `find(Live)`), and every later `get_with` is served the
/// cached error instead of loading again.
///
/// The pause: `get_or_insert_with` hashes the key in `add_value`, then in
/// `cell_if_present`; `make` arms the key to pause on the second.
#[test]
fn f5_get_or_insert_with_pins_a_new_load_and_its_error_is_cached() {
    let cache: Cache<GatedKey, u32, String> = Cache::new();
    let (paused_tx, paused_rx) = mpsc::channel();
    let (resume_tx, resume_rx) = mpsc::channel();
    let key = GatedKey {
        id: 1,
        pause: Arc::new(Pause {
            paused: Mutex::new(Some(paused_tx)),
            resume: Mutex::new(Some(resume_rx)),
        }),
    };
    let (c, k) = (cache.clone(), key.clone());
    let inserter = thread::spawn(move || {
        let got = c.get_or_insert_with(k.clone(), || {
            ARM.with(|a| a.set(2));
            5
        });
        // If the call hashed the key only once after `make` (nothing left to look up once
        // its value is stored), it never paused: the window is then after it returned,
        // which the rest of the test goes through all the same.
        ARM.with(|a| a.set(0));
        if let Some(paused) = k.pause.paused.lock().unwrap().take() {
            paused.send(()).unwrap();
        }
        got
    });
    // The inserter stored 5 and is about to look the key up again (or has returned).
    paused_rx.recv().unwrap();
    assert!(cache.invalidate(&key));
    let gate = Gate::new();
    let g = gate.clone();
    let mut load = cache.get_with(key.clone(), move || async move {
        g.wait().await;
        Err::<u32, String>("down".to_string())
    });
    assert!(poll_once(&mut load).is_pending(), "a new load in flight");
    resume_tx.send(()).unwrap();
    assert_eq!(inserter.join().unwrap(), 5);
    gate.open();
    let mut outcome = Poll::Pending;
    for _ in 0..10 {
        outcome = poll_once(&mut load);
        if outcome.is_ready() {
            break;
        }
    }
    assert!(
        matches!(outcome, Poll::Ready(Err(LoadError::Failed(_)))),
        "the load failed: {outcome:?}"
    );
    drop(load);
    eprintln!("after the failed load: len = {}", cache.len());
    // Errors are not kept: the next read loads again.
    let next = block_on(cache.get_with(key.clone(), || async { Ok(7) }));
    assert_eq!(next, Ok(7), "a failed load's error was cached");
}

// ---------------------------------------------------------------------------------------
// F6. A blocking joiner drives an async load without entering the re-entrancy guard.
// ---------------------------------------------------------------------------------------

/// A load whose future, once the gate opens, reads its own key through `get_with`.
fn reentrant_load(
    cache: &Cache<u32, u32, String>,
    gate: &Gate,
) -> impl std::future::Future<Output = Result<u32, String>> + Send + 'static {
    let (c, opened) = (cache.clone(), gate.wait());
    async move {
        opened.await;
        match c.get_with(1, || async { Ok(0) }).await {
            Ok(v) => Ok(v + 100),
            Err(e) => Err(format!("inner: {e:?}")),
        }
    }
}

/// Control: driven by an async caller, the re-entrant read gets `Reentrant`, as documented.
#[test]
fn f6_control_an_async_driver_gets_reentrant() {
    let cache: Cache<u32, u32, String> = Cache::new();
    let gate = Gate::new();
    let load = reentrant_load(&cache, &gate);
    let mut leader = cache.get_with(1, move || load);
    assert!(poll_once(&mut leader).is_pending());
    gate.open();
    let got = poll_once(&mut leader);
    assert!(
        matches!(&got, Poll::Ready(Err(LoadError::Failed(e))) if **e == "inner: Reentrant"),
        "{got:?}"
    );
}

/// blocking.rs joiner arm: `block_on(get)` polls the map's `Get` (which drives the async
/// computation on this thread) without `reentrancy::enter(id)`, unlike `GetWith::poll_with`.
/// When the load re-reads its own key, the inner `get_with` does not see `is_inside`, waits
/// on the computation this very thread is running, and the thread parks forever (the
/// leader, stalled, never polls again).
#[test]
fn f6_a_blocking_joiner_driving_a_reentrant_async_load_parks_forever() {
    let cache: Cache<u32, u32, String> = Cache::new();
    let gate = Gate::new();
    let load = reentrant_load(&cache, &gate);
    let mut leader = cache.get_with(1, move || load);
    assert!(
        poll_once(&mut leader).is_pending(),
        "the leader stalls from here on"
    );
    let (tx, rx) = mpsc::channel();
    let c = cache.clone();
    thread::spawn(move || {
        let _ = tx.send(c.get_with_blocking(1, || Ok(9)));
    });
    // Only the joining thread can drive the load now, whenever it polls.
    gate.open();
    let got = rx.recv_timeout(HANG);
    assert!(
        got.is_ok(),
        "the blocking joiner is parked for good (stats = {:?})",
        cache.stats()
    );
    drop(leader);
}
