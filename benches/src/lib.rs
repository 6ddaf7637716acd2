#![forbid(unsafe_code)]
//! Helpers shared by the benchmarks of the deferred workspace (`benches/core.rs`).
//!
//! The benchmarks drive futures by hand rather than through an executor, so that they
//! measure the cell (or the anchor crate it is compared with) and not a runtime:
//!
//! * [`poll_noop`] and [`ready_now`] poll a future with a waker that does nothing;
//! * [`WakeCounter`] is a waker that only counts its wake-ups; it is an [`Arc`] waker
//!   ([`Wake`]), so a clone costs one reference-count increment, paid alike by every
//!   implementation under test;
//! * [`chain`] keeps many `!Unpin` futures pinned at once on the stack (a few per frame
//!   of a recursion), so a workload with N waiters allocates nothing per waiter (beyond
//!   what the crate under test allocates itself).
//!
//! [`chart`] draws the hit-ratio curves of `benches/cache_hit_ratio.rs` as SVG.
//!
//! This crate, like every crate of the workspace but `deferred-core`, has no `unsafe`.

pub mod chart;

use core::time::Duration;
use core::{
    future::{Future, IntoFuture},
    pin::{pin, Pin},
    sync::atomic::{AtomicUsize, Ordering},
    task::{Context, Poll, Waker},
};
use std::{sync::Arc, task::Wake};

/// The criterion settings every bench target uses: short runs (1 s warm-up, 2 s
/// measurement, 50 samples) keep a whole suite to a few minutes; criterion's command line
/// can still override them.
pub fn criterion_config() -> criterion::Criterion {
    criterion::Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50)
}

/// Polls `fut` once with a waker that does nothing ([`Waker::noop`]).
#[inline]
pub fn poll_noop<F: Future + ?Sized>(fut: Pin<&mut F>) -> Poll<F::Output> {
    fut.poll(&mut Context::from_waker(Waker::noop()))
}

/// Polls `fut` once (pinned on the stack, with a no-op waker) and returns its output.
///
/// # Panics
///
/// If `fut` is not ready on its first poll.
#[inline]
#[track_caller]
pub fn ready_now<F: IntoFuture>(fut: F) -> F::Output {
    match poll_noop(pin!(fut.into_future())) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("future was expected to be ready on its first poll"),
    }
}

/// A waker target that counts how many times it was woken.
///
/// Its [`waker`](Self::waker) is an [`Arc`] waker: a clone increments the reference
/// count, a wake-up is one relaxed `fetch_add`, and all its wakers
/// [`will_wake`](Waker::will_wake) each other.
///
/// ```
/// use std::sync::Arc;
/// use deferred_benches::WakeCounter;
///
/// let wakes = Arc::new(WakeCounter::new());
/// let waker = wakes.waker();
/// waker.wake_by_ref();
/// waker.clone().wake();
/// assert_eq!(wakes.take(), 2);
/// assert_eq!(wakes.take(), 0);
/// ```
#[derive(Debug, Default)]
pub struct WakeCounter {
    wakes: AtomicUsize,
}

impl WakeCounter {
    /// A counter at zero.
    pub const fn new() -> Self {
        WakeCounter {
            wakes: AtomicUsize::new(0),
        }
    }

    /// A waker that adds one to this counter each time it is woken.
    pub fn waker(self: &Arc<Self>) -> Waker {
        Waker::from(Arc::clone(self))
    }

    /// Returns the number of wake-ups so far and resets the count to zero.
    pub fn take(&self) -> usize {
        self.wakes.swap(0, Ordering::Relaxed)
    }
}

impl Wake for WakeCounter {
    #[inline]
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    #[inline]
    fn wake_by_ref(self: &Arc<Self>) {
        self.wakes.fetch_add(1, Ordering::Relaxed);
    }
}

/// Keeps `n` futures pinned at once on the stack and drives them through one
/// wait-and-wake round.
///
/// Each level of the recursion makes up to four futures with `make` (four while at least
/// four remain, else one), pins each on its own stack frame ([`pin!`]) and polls each
/// once with `waker`, which must leave it pending (registered); then it recurses. At the
/// bottom, after the `n`-th future was polled, `bottom` runs (it completes or notifies
/// whatever the futures wait for). On the way back each level polls its futures again,
/// last made first, each of which must now be ready, hands each output to `ready`, and
/// drops them. So the futures are registered in the order they were made, and polled to
/// completion and dropped in the reverse order.
///
/// Nothing is allocated here. A waiter costs its future plus a share of a stack frame:
/// four futures per frame keep that share (and the call overhead, which a benchmark times
/// alike for every implementation) to a few words, and `n` is bounded by the stack of the
/// calling thread.
///
/// ```
/// use std::sync::Arc;
/// use deferred_benches::{chain, WakeCounter};
/// use deferred_core::Deferred;
///
/// let wakes = Arc::new(WakeCounter::new());
/// let cell = Deferred::<u64>::new();
/// let mut sum = 0;
/// chain(
///     3,
///     &wakes.waker(),
///     &mut || cell.wait(),
///     &mut || cell.succeed(7).unwrap(),
///     &mut |out| sum += *out.unwrap(),
/// );
/// assert_eq!(sum, 21);
/// assert!(wakes.take() >= 3);
/// ```
///
/// # Panics
///
/// If a future is ready on its first poll, or still pending on its second.
pub fn chain<F: Future>(
    n: usize,
    waker: &Waker,
    make: &mut impl FnMut() -> F,
    bottom: &mut impl FnMut(),
    ready: &mut impl FnMut(F::Output),
) {
    let cx = &mut Context::from_waker(waker);
    if n >= 4 {
        let mut a = pin!(make());
        register(a.as_mut(), cx);
        let mut b = pin!(make());
        register(b.as_mut(), cx);
        let mut c = pin!(make());
        register(c.as_mut(), cx);
        let mut d = pin!(make());
        register(d.as_mut(), cx);
        chain(n - 4, waker, make, bottom, ready);
        ready(woken(d, cx));
        ready(woken(c, cx));
        ready(woken(b, cx));
        ready(woken(a, cx));
    } else if n > 0 {
        let mut a = pin!(make());
        register(a.as_mut(), cx);
        chain(n - 1, waker, make, bottom, ready);
        ready(woken(a, cx));
    } else {
        bottom();
    }
}

/// The first poll of a [`chain`] waiter: it must be pending.
#[inline(always)]
fn register<F: Future>(fut: Pin<&mut F>, cx: &mut Context<'_>) {
    if fut.poll(cx).is_ready() {
        panic!("a waiter was ready before the wake-up");
    }
}

/// The second poll of a [`chain`] waiter: it must be ready.
#[inline(always)]
fn woken<F: Future>(fut: Pin<&mut F>, cx: &mut Context<'_>) -> F::Output {
    match fut.poll(cx) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("a waiter was not woken"),
    }
}

/// The value the map and cache benches store under `key`.
#[inline]
pub fn value_of(key: u64) -> u64 {
    key ^ 0x5eed
}

/// The key every caller of a stampede asks for.
pub const HOT_KEY: u64 = 42;

/// Times `iters` stampedes on `rt`: each makes a fresh map or cache and run counter (not
/// measured), spawns `callers` tasks that each call `get(it, runs)` and awaits them all,
/// then checks every caller got `value_of(HOT_KEY)` and the load ran exactly once.
///
/// # Panics
///
/// If a caller panics, gets another value, or the load ran more than once.
pub fn stampedes<C, F>(
    rt: &tokio::runtime::Runtime,
    iters: u64,
    callers: usize,
    fresh: impl Fn() -> C,
    get: fn(Arc<C>, Arc<AtomicUsize>) -> F,
) -> Duration
where
    C: Send + Sync + 'static,
    F: Future<Output = u64> + Send + 'static,
{
    let mut elapsed = Duration::ZERO;
    let mut handles = Vec::with_capacity(callers);
    for _ in 0..iters {
        let it = Arc::new(fresh());
        let runs = Arc::new(AtomicUsize::new(0));
        let start = std::time::Instant::now();
        rt.block_on(async {
            for _ in 0..callers {
                handles.push(tokio::spawn(get(Arc::clone(&it), Arc::clone(&runs))));
            }
            for handle in handles.drain(..) {
                assert_eq!(handle.await.expect("caller panicked"), value_of(HOT_KEY));
            }
        });
        elapsed += start.elapsed();
        assert_eq!(
            runs.load(Ordering::Relaxed),
            1,
            "the load ran more than once"
        );
    }
    elapsed
}

/// Polls `fut` once with a no-op waker; if it is not ready (an anchor that may park on an
/// uncontended async lock, or run housekeeping), finishes it on `futures`' executor instead
/// of panicking.
///
/// ```
/// assert_eq!(deferred_benches::drive(async { 3 }), 3);
/// ```
#[inline]
pub fn drive<F: Future>(fut: F) -> F::Output {
    let mut fut = core::pin::pin!(fut);
    match poll_noop(fut.as_mut()) {
        Poll::Ready(out) => out,
        Poll::Pending => futures::executor::block_on(fut),
    }
}

/// The next key of a scattered read cycle over `0..keys`: steps of `stride` (coprime with
/// `keys`), so that every key comes once per cycle and consecutive reads land far apart.
///
/// ```
/// let mut key = 0;
/// let seen: Vec<u64> = (0..5).map(|_| deferred_benches::next_scattered(&mut key, 5, 3)).collect();
/// assert_eq!(seen, [0, 3, 1, 4, 2]);
/// ```
#[inline]
pub fn next_scattered(key: &mut u64, keys: u64, stride: u64) -> u64 {
    let k = *key;
    let next = k + stride;
    *key = if next >= keys { next - keys } else { next };
    k
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::{cell::Cell, future::pending, hint::black_box};
    use deferred_core::Deferred;
    use std::thread;

    #[test]
    fn counting_waker_counts() {
        let wakes = Arc::new(WakeCounter::new());
        let w = wakes.waker();
        assert!(w.will_wake(&w.clone()));
        w.wake_by_ref();
        let clone = w.clone();
        clone.wake();
        drop(w.clone());
        assert_eq!(wakes.take(), 2);
        drop(w);
        // Every waker released its reference.
        assert_eq!(Arc::strong_count(&wakes), 1);
    }

    #[test]
    fn chain_registers_in_order_and_completes_in_reverse() {
        // Both shapes of level (four futures, one future) and their mixes.
        for n in 0..=10 {
            let wakes = Arc::new(WakeCounter::new());
            let cell = Deferred::<u64>::new();
            let made = Cell::new(0_usize);
            let mut order = Vec::new();
            let mut bottom_runs = 0;
            chain(
                n,
                &wakes.waker(),
                &mut || {
                    made.set(made.get() + 1);
                    let tag = made.get();
                    let wait = cell.wait();
                    async move { (tag, *wait.await.unwrap()) }
                },
                &mut || {
                    bottom_runs += 1;
                    assert_eq!(made.get(), n, "every waiter is made before the bottom");
                    cell.succeed(7).unwrap();
                },
                &mut |out| order.push(out),
            );
            assert_eq!(bottom_runs, 1);
            let expected: Vec<_> = (1..=n).rev().map(|tag| (tag, 7)).collect();
            assert_eq!(order, expected, "n = {n}");
            assert!(wakes.take() >= n);
        }
    }

    #[test]
    fn chain_of_zero_only_runs_the_bottom() {
        let mut bottom_runs = 0;
        chain(
            0,
            Waker::noop(),
            &mut pending::<()>,
            &mut || bottom_runs += 1,
            &mut |()| unreachable!(),
        );
        assert_eq!(bottom_runs, 1);
    }

    #[test]
    #[should_panic(expected = "not woken")]
    fn chain_panics_when_a_waiter_is_not_woken() {
        chain(
            5,
            Waker::noop(),
            &mut pending::<()>,
            &mut || {},
            &mut |()| {},
        );
    }

    #[test]
    #[should_panic(expected = "ready before the wake-up")]
    fn chain_panics_when_a_waiter_is_ready_at_once() {
        chain(
            4,
            Waker::noop(),
            &mut || core::future::ready(()),
            &mut || {},
            &mut |()| {},
        );
    }

    /// `core/wake_all` goes up to 4096 waiters on criterion's thread (the main thread, 8 MiB
    /// of stack on usual Linux settings). A waiter takes its future plus a few words of
    /// stack in the bench profile (about 100 bytes for `Wait`, some 400 KiB for 4096) and
    /// three to four times that unoptimized (some 1.5 MiB), so 4096 unoptimized waiters
    /// fitting in 4 MiB leaves the bench ample margin.
    #[test]
    fn chain_of_4096_fits_a_small_stack() {
        thread::Builder::new()
            .stack_size(4 << 20)
            .spawn(|| {
                let wakes = Arc::new(WakeCounter::new());
                let cell = Deferred::<u64>::new();
                let mut sum = 0;
                chain(
                    4096,
                    &wakes.waker(),
                    &mut || cell.wait(),
                    &mut || cell.succeed(1).unwrap(),
                    &mut |out| sum += *black_box(out).unwrap(),
                );
                assert_eq!(sum, 4096);
            })
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    #[should_panic(expected = "ready on its first poll")]
    fn ready_now_panics_when_pending() {
        ready_now(pending::<()>());
    }
}
