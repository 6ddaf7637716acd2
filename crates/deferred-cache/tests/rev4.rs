//! Findings of the review of step 2 (rev4: the cache on its own `Store`).
//!
//! **The window between a load's completion and its settle.** A load's computation
//! completes its cell first, then settles its slot (docs/value-slots.md, "Step 1"). In
//! between, the load's waiters have its value and `get_if_present` returns it (a caller
//! that got it must find it, rev3), but the slot is still `Loading`: the writes that act
//! on a value only (`invalidate_if`, `expire_if`, `replace_if`, `invalidate_entries_if`,
//! `retain`), `iter` and `remove`'s returned value take it for a load in flight, and the
//! settle then stores the value they did not remove. On `main` (the map's cell was the
//! entry) each of them saw the value.
//!
//! The tests stand in that window deterministically: the second waiter of a load is polled
//! with a waker that runs the operation, and the cell's completion wakes it before the
//! settle (on threads, the woken waiter returns and its caller writes while the driver is
//! between the two).

#![allow(clippy::std_instead_of_core)]

use std::{
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst},
        Arc, Mutex,
    },
    task::{Context, Poll, Wake, Waker},
};

use deferred_cache::{Cache, RemovalCause};
use deferred_test_support::poll_once;

type C = Cache<u64, u64>;

/// Runs `f` on a thread of its own; fails if it has not returned within 20 seconds (a
/// deadlock fails the test instead of hanging the suite; the thread is left behind).
fn within_timeout(what: &str, f: impl FnOnce() + Send + 'static) {
    let (done, finished) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        f();
        let _ = done.send(());
    });
    match finished.recv_timeout(std::time::Duration::from_secs(20)) {
        Ok(()) => {}
        // The thread unwound (its sender dropped): its panic is the test's.
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            std::panic::resume_unwind(thread.join().expect_err("it unwound"))
        }
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("{what}: no return within 20 s (a deadlock)")
        }
    }
}

/// A waker that runs its closure the first time it is woken.
struct OnWake(Mutex<Option<Box<dyn FnOnce() + Send>>>);

impl Wake for OnWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let f = self.0.lock().unwrap().take();
        if let Some(f) = f {
            f();
        }
    }
}

fn poll_with<F: Future + ?Sized>(fut: Pin<&mut F>, waker: &Waker) -> Poll<F::Output> {
    fut.poll(&mut Context::from_waker(waker))
}

/// Loads 7 at key 1 and runs `during` in the window between the load's completion and
/// its settle; returns what `during` returned, once both callers got 7.
fn in_the_settle_window<R: Send + 'static>(
    cache: &C,
    during: impl FnOnce(&C) -> R + Send + 'static,
) -> R {
    let gate = Arc::new(AtomicBool::new(false));
    let g = Arc::clone(&gate);
    let mut first = Box::pin(cache.get_with(1, move || {
        std::future::poll_fn(move |_| {
            if g.load(SeqCst) {
                Poll::Ready(Ok(7))
            } else {
                Poll::Pending
            }
        })
    }));
    assert!(poll_once(first.as_mut()).is_pending());
    let mut second = Box::pin(cache.get_with(1, || async { unreachable!("a joiner") }));
    let out = Arc::new(Mutex::new(None));
    let (o, c) = (Arc::clone(&out), cache.clone());
    let waker = Waker::from(Arc::new(OnWake(Mutex::new(Some(Box::new(move || {
        // The load's value is out: its waiters have it, and so does a read.
        assert_eq!(c.get_if_present(&1), Some(7), "the value is visible");
        *o.lock().unwrap() = Some(during(&c));
    }))))));
    assert!(poll_with(second.as_mut(), &waker).is_pending());
    gate.store(true, SeqCst);
    assert!(matches!(poll_once(first.as_mut()), Poll::Ready(Ok(7))));
    assert!(matches!(poll_once(second.as_mut()), Poll::Ready(Ok(7))));
    let taken = out.lock().unwrap().take();
    taken.expect("the completion woke the second waiter")
}

#[test]
fn invalidate_if_in_the_settle_window_removes_the_value() {
    let cache = C::new();
    let removed = in_the_settle_window(&cache, |c| c.invalidate_if(&1, |v| *v == 7));
    assert!(removed, "the value a caller got is the key's");
    assert_eq!(
        cache.get_if_present(&1),
        None,
        "invalidated, then stored by the settle"
    );
}

#[test]
fn expire_if_in_the_settle_window_removes_the_value() {
    let cache = C::new();
    let expired = in_the_settle_window(&cache, |c| c.expire_if(&1, |_| true));
    assert!(expired, "the value a caller got is the key's");
    assert_eq!(
        cache.get_if_present(&1),
        None,
        "expired, then stored by the settle"
    );
    assert_eq!(cache.stats().expired, 1);
}

#[test]
fn replace_if_in_the_settle_window_replaces_the_value() {
    let cache = C::bounded(10);
    let replaced = in_the_settle_window(&cache, |c| c.replace_if(&1, 8, |v| *v == 7));
    assert!(replaced, "the value a caller got is the key's");
    assert_eq!(cache.get_if_present(&1), Some(8), "the write wins");
    assert_eq!(cache.weighted_size(), Some(1));
}

#[test]
fn invalidate_entries_if_in_the_settle_window_removes_the_value() {
    let cache = C::bounded(10);
    let removed = in_the_settle_window(&cache, |c| c.invalidate_entries_if(|_, _| true));
    assert_eq!(removed, 1, "the value a caller got is the key's");
    assert_eq!(
        cache.get_if_present(&1),
        None,
        "removed, then stored by the settle"
    );
    assert_eq!((cache.len(), cache.weighted_size()), (0, Some(0)));
}

#[test]
fn retain_in_the_settle_window_removes_the_value() {
    let cache = C::new();
    in_the_settle_window(&cache, |c| c.retain(|_, _| false));
    assert_eq!(
        cache.get_if_present(&1),
        None,
        "removed, then stored by the settle"
    );
}

#[test]
fn iter_in_the_settle_window_sees_the_value() {
    let cache = C::new();
    let seen: Vec<_> = in_the_settle_window(&cache, |c| c.iter().collect());
    assert_eq!(seen, vec![(1, 7)], "a read finds it, so does a snapshot");
}

#[test]
fn remove_in_the_settle_window_returns_the_value_and_tells_it() {
    let told = Arc::new(AtomicUsize::new(0));
    let t = Arc::clone(&told);
    let cache: C = Cache::builder()
        .eviction_listener(move |_, v: &u64, cause| {
            assert_eq!((*v, cause), (7, RemovalCause::Explicit));
            t.fetch_add(1, SeqCst);
        })
        .build();
    let removed = in_the_settle_window(&cache, |c| c.remove(&1));
    assert_eq!(removed, Some(7), "the value a caller got is the key's");
    assert_eq!(cache.get_if_present(&1), None);
    assert_eq!(told.load(SeqCst), 1, "a value that leaves is told");
}

// ---------------------------------------------------------------------------------------
// User code that calls back into the cache: listeners and drops of values run with no
// lock held (README, "No lock is held ... around user code"). Each test runs on a thread
// of its own, bounded by a timeout: a deadlock fails it instead of hanging the suite.
// ---------------------------------------------------------------------------------------

mod reentry {
    use std::{
        panic::{catch_unwind, AssertUnwindSafe},
        sync::{
            atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering::SeqCst},
            Arc, OnceLock,
        },
    };

    use deferred_cache::Cache;
    use deferred_test_support::quiet_panics_saying;

    use super::within_timeout;

    const CLONE_PANIC: &str = "rev4: the value's clone panics on purpose";

    /// What a test's values share: the cache they call back into, whether their drop does,
    /// and how many clones are left before one panics.
    struct Ctl {
        cache: OnceLock<Cache<u64, Val>>,
        reenter: AtomicBool,
        clones_left: AtomicI64,
        reentered: AtomicUsize,
    }

    /// A value whose drop writes to its cache (when `reenter` is on) and whose clone panics
    /// once `clones_left` runs out.
    struct Val(u64, Option<Arc<Ctl>>);

    impl Clone for Val {
        fn clone(&self) -> Self {
            if let Some(ctl) = &self.1 {
                if ctl.clones_left.fetch_sub(1, SeqCst) == 0 {
                    std::panic::panic_any(CLONE_PANIC);
                }
            }
            Val(self.0, self.1.clone())
        }
    }

    impl Drop for Val {
        fn drop(&mut self) {
            if let Some(ctl) = &self.1 {
                if ctl.reenter.load(SeqCst) {
                    ctl.reentered.fetch_add(1, SeqCst);
                    let cache = ctl.cache.get().expect("set");
                    cache.insert(1_000 + self.0, Val(0, None));
                    cache.invalidate(&(2_000 + self.0));
                }
            }
        }
    }

    fn ctl() -> Arc<Ctl> {
        Arc::new(Ctl {
            cache: OnceLock::new(),
            reenter: AtomicBool::new(false),
            clones_left: AtomicI64::new(i64::MAX),
            reentered: AtomicUsize::new(0),
        })
    }

    #[test]
    fn a_listener_and_a_value_drop_that_write_to_the_cache_do_not_deadlock() {
        within_timeout("listener and drop", || {
            let ctl = ctl();
            let hook: Arc<OnceLock<Cache<u64, Val>>> = Arc::default();
            let h = Arc::clone(&hook);
            let calls = Arc::new(AtomicUsize::new(0));
            let n = Arc::clone(&calls);
            // One shard (a small capacity): every key meets the same lock.
            let cache: Cache<u64, Val> = Cache::builder()
                .max_capacity(4)
                .eviction_listener(move |k: &u64, _v: &Val, _| {
                    n.fetch_add(1, SeqCst);
                    if *k < 1_000 {
                        let cache = h.get().expect("set");
                        cache.insert(3_000 + k, Val(0, None));
                        cache.invalidate(&(3_000 + k));
                        drop(cache.get_if_present(&(k + 1)));
                    }
                })
                .build();
            assert!(hook.set(cache.clone()).is_ok());
            assert!(ctl.cache.set(cache.clone()).is_ok());
            ctl.reenter.store(true, SeqCst);
            for k in 0..20 {
                cache.insert(k, Val(k, Some(Arc::clone(&ctl)))); // evicts, replaces
                cache.insert(k, Val(k, Some(Arc::clone(&ctl))));
            }
            cache.invalidate(&19);
            cache.insert(18, Val(18, Some(Arc::clone(&ctl))));
            assert!(cache.replace_if(&18, Val(18, Some(Arc::clone(&ctl))), |_| true));
            cache.invalidate_entries_if(|k, _| *k % 2 == 0);
            drop(cache.get_or_insert_with(50, || Val(50, Some(Arc::clone(&ctl)))));
            let r = cache.get_with_blocking(51, || Ok(Val(51, Some(Arc::clone(&ctl)))));
            drop(r);
            cache.invalidate_all();
            assert!(calls.load(SeqCst) > 0 && ctl.reentered.load(SeqCst) > 0);
            ctl.reenter.store(false, SeqCst);
        });
    }

    /// A panicking clone of a value in `invalidate_entries_if`'s snapshot: the clones made
    /// before it must be dropped with no lock held (one whose drop writes to the cache would
    /// wait on the shard lock its own thread holds).
    #[test]
    fn a_panicking_clone_in_invalidate_entries_if_drops_the_other_clones_unlocked() {
        quiet_panics_saying(CLONE_PANIC);
        within_timeout("invalidate_entries_if", || {
            let ctl = ctl();
            let cache: Cache<u64, Val> = Cache::bounded(100); // one shard
            assert!(ctl.cache.set(cache.clone()).is_ok());
            for k in 0..3 {
                cache.insert(k, Val(k, Some(Arc::clone(&ctl))));
            }
            ctl.clones_left.store(1, SeqCst); // the second clone panics
            ctl.reenter.store(true, SeqCst);
            let unwound = catch_unwind(AssertUnwindSafe(|| {
                cache.invalidate_entries_if(|_, _| true)
            }));
            assert!(unwound.is_err(), "the clone's panic goes on");
            ctl.reenter.store(false, SeqCst);
        });
    }
}

// ---------------------------------------------------------------------------------------
// Keys dropped under a shard lock: a key whose drop writes to the cache waits on the lock
// its own thread holds.
// ---------------------------------------------------------------------------------------

mod keys {
    use std::{
        hash::{Hash, Hasher},
        panic::{catch_unwind, AssertUnwindSafe},
        sync::{
            atomic::{AtomicI64, Ordering::SeqCst},
            Arc, OnceLock,
        },
    };

    use deferred_cache::Cache;
    use deferred_test_support::{poll_once, quiet_panics_saying};

    use super::within_timeout;

    const EQ_PANIC: &str = "rev4: the key's Eq panics on purpose";

    type Hook = Arc<OnceLock<Cache<Key, u64>>>;

    /// A key compared and hashed by its number; with a hook, its drop invalidates key 999
    /// of the hooked cache; with a countdown, its `Eq` panics when the countdown is at 0
    /// (each comparison counts one down).
    #[derive(Clone)]
    struct Key(u64, Option<Hook>, Option<Arc<AtomicI64>>);

    impl PartialEq for Key {
        fn eq(&self, other: &Self) -> bool {
            for k in [self, other] {
                if k.2.as_ref().is_some_and(|n| n.fetch_sub(1, SeqCst) == 0) {
                    std::panic::panic_any(EQ_PANIC);
                }
            }
            self.0 == other.0
        }
    }

    impl Eq for Key {}

    impl Hash for Key {
        fn hash<H: Hasher>(&self, state: &mut H) {
            self.0.hash(state);
        }
    }

    impl Drop for Key {
        fn drop(&mut self) {
            if let Some(cache) = self.1.as_ref().and_then(|h| h.get()) {
                cache.invalidate(&Key(999, None, None));
            }
        }
    }

    /// `replace_if` that replaces nothing drops the copy of the key it made for the
    /// listener: with no lock held.
    #[test]
    fn replace_if_that_replaces_nothing_drops_the_key_copy_unlocked() {
        within_timeout("replace_if", || {
            let hook: Hook = Arc::default();
            let cache: Cache<Key, u64> = Cache::builder()
                .max_capacity(10) // one shard
                .eviction_listener(|_, _, _| {})
                .build();
            assert!(hook.set(cache.clone()).is_ok());
            cache.insert(Key(1, None, None), 10);
            let probe = Key(1, Some(Arc::clone(&hook)), None);
            assert!(!cache.replace_if(&probe, 11, |v| *v == 0));
            drop(probe);
        });
    }

    /// An `insert` whose key's `Eq` panics unwinds with its key and value: they are dropped
    /// with no lock held.
    #[test]
    fn an_insert_whose_key_eq_panics_drops_its_key_unlocked() {
        quiet_panics_saying(EQ_PANIC);
        within_timeout("insert", || {
            let hook: Hook = Arc::default();
            let cache: Cache<Key, u64> = Cache::bounded(10); // one shard
            assert!(hook.set(cache.clone()).is_ok());
            cache.insert(Key(1, None, None), 10);
            let countdown = Arc::new(AtomicI64::new(0));
            let key = Key(1, Some(Arc::clone(&hook)), Some(Arc::clone(&countdown)));
            let unwound = catch_unwind(AssertUnwindSafe(|| cache.insert(key, 11)));
            assert!(unwound.is_err(), "the Eq's panic goes on");
            assert_eq!(cache.get_if_present(&Key(1, None, None)), Some(10));
        });
    }

    /// `get_or_insert_with` over a load in flight, whose key's `Eq` passes the read probe and
    /// panics under the write lock: its key is dropped with no lock held.
    #[test]
    fn get_or_insert_with_whose_key_eq_panics_drops_its_key_unlocked() {
        quiet_panics_saying(EQ_PANIC);
        within_timeout("get_or_insert_with", || {
            let hook: Hook = Arc::default();
            let cache: Cache<Key, u64> = Cache::bounded(10); // one shard
            assert!(hook.set(cache.clone()).is_ok());
            // A load in flight: the read finds no value, and the write probes the key.
            let mut first = Box::pin(cache.get_with(Key(1, None, None), || {
                std::future::pending::<Result<u64, _>>()
            }));
            assert!(poll_once(first.as_mut()).is_pending());
            // The read probe's comparison passes (1 -> 0), the write's panics.
            let countdown = Arc::new(AtomicI64::new(1));
            let key = Key(1, Some(Arc::clone(&hook)), Some(countdown));
            let unwound = catch_unwind(AssertUnwindSafe(|| cache.get_or_insert_with(key, || 11)));
            assert!(unwound.is_err(), "the Eq's panic goes on");
            drop(first);
        });
    }

    /// `get_with` that joins a load in flight, whose key's `Eq` passes the read probe and
    /// panics under the write lock: its key is dropped with no lock held.
    #[test]
    fn get_with_whose_key_eq_panics_in_the_join_drops_its_key_unlocked() {
        quiet_panics_saying(EQ_PANIC);
        within_timeout("get_with", || {
            let hook: Hook = Arc::default();
            let cache: Cache<Key, u64> = Cache::bounded(10); // one shard
            assert!(hook.set(cache.clone()).is_ok());
            let mut first = Box::pin(cache.get_with(Key(1, None, None), || {
                std::future::pending::<Result<u64, _>>()
            }));
            assert!(poll_once(first.as_mut()).is_pending());
            // The read probe's comparison passes (1 -> 0), the join's panics.
            let countdown = Arc::new(AtomicI64::new(1));
            let key = Key(1, Some(Arc::clone(&hook)), Some(countdown));
            let unwound = catch_unwind(AssertUnwindSafe(|| {
                let second = cache.get_with(key, || async { Ok(11) });
                drop(poll_once(second));
            }));
            assert!(unwound.is_err(), "the Eq's panic goes on");
            drop(first);
        });
    }
}
