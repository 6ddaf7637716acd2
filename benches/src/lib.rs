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
//! The plain bench programs (`cache_hit_ratio`, `cache_mixed`, `cache_footprint`) share
//! [`SplitMix64`] for their deterministic key streams, the cache constructors
//! ([`deferred_cache`], [`quick_cache`]), [`markdown_table`], [`report_path`] and [`Program`];
//! [`chart`] draws their SVG charts (and names the machine and the date).
//!
//! The criterion benches share their scaffolding here too: [`group`] names a group
//! `<layer>/<workload>`, [`criterion_suite!`] is their `main`, [`KeyCycle`] walks the warm
//! keys of a read workload, [`bench_reads`] times a list of read paths on one thread or two
//! ([`two_threads`]), and [`bench_stampede`] times [`stampedes`].
//!
//! This crate, like every crate of the workspace but `deferred-core`, has no `unsafe`.

pub mod chart;

use core::time::Duration;
use core::{
    future::{Future, IntoFuture},
    hint::black_box,
    pin::{pin, Pin},
    sync::atomic::{AtomicUsize, Ordering},
    task::{Context, Poll, Waker},
};
use std::{
    collections::hash_map::RandomState,
    path::PathBuf,
    sync::{Arc, Barrier},
    task::Wake,
    thread,
    time::Instant,
};

use criterion::{measurement::WallTime, BenchmarkGroup, Criterion};

use quick_cache::{sync::DefaultLifecycle, UnitWeighter};

/// The criterion settings every bench target uses: short runs (1 s warm-up, 2 s
/// measurement, 50 samples) keep a whole suite to a few minutes; criterion's command line
/// can still override them.
pub fn criterion_config() -> criterion::Criterion {
    criterion::Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50)
}

/// The `main` of a criterion bench, `deferred_benches::criterion_suite!(reads, stampede);`:
/// runs the targets (functions taking `&mut Criterion`) with [`criterion_config`].
#[macro_export]
macro_rules! criterion_suite {
    ($($target:path),+ $(,)?) => {
        /// The shared settings: `deferred_benches::criterion_config`.
        mod suite {
            use super::*;

            ::criterion::criterion_group! {
                name = benches;
                config = $crate::criterion_config();
                targets = $($target),+
            }
        }
        ::criterion::criterion_main!(suite::benches);
    };
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

/// Function `name` of group `g`: [`stampedes`] of `callers` on `rt`, each on a fresh
/// structure from `fresh`, its callers all calling `get`.
pub fn bench_stampede<C, F>(
    g: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    rt: &tokio::runtime::Runtime,
    callers: usize,
    fresh: impl Fn() -> C,
    get: fn(Arc<C>, Arc<AtomicUsize>) -> F,
) where
    C: Send + Sync + 'static,
    F: Future<Output = u64> + Send + 'static,
{
    g.bench_function(name, |b| {
        b.iter_custom(|iters| stampedes(rt, iters, callers, &fresh, get))
    });
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

/// The criterion group `<layer>/<workload>`: every criterion bench names its groups so
/// (`cargo xtask bench` finds a layer's groups by that prefix).
pub fn group<'c>(
    c: &'c mut Criterion,
    layer: &str,
    workload: &str,
) -> BenchmarkGroup<'c, WallTime> {
    c.benchmark_group(format!("{layer}/{workload}"))
}

/// The key cycle of a read workload: every key of `0..keys` once per cycle, in steps of
/// `stride` (coprime with `keys`; 1 reads them in order), see [`next_scattered`].
///
/// ```
/// use deferred_benches::KeyCycle;
///
/// let cycle = KeyCycle { keys: 5, stride: 3 };
/// let mut key = 0;
/// let seen: Vec<u64> = (0..5).map(|_| cycle.next(&mut key)).collect();
/// assert_eq!(seen, [0, 3, 1, 4, 2]);
/// ```
#[derive(Clone, Copy, Debug)]
pub struct KeyCycle {
    /// The warm keys, `0..keys`.
    pub keys: u64,
    /// The step between consecutive reads.
    pub stride: u64,
}

impl KeyCycle {
    /// The key after `key` in the cycle; returns `key` and moves it on.
    #[inline]
    pub fn next(self, key: &mut u64) -> u64 {
        next_scattered(key, self.keys, self.stride)
    }
}

/// A read of a bench's warm structures (`target`) at a key, as a plain function: the read
/// workloads list theirs as `(function name, read)`.
pub type Read<T> = fn(&T, u64) -> u64;

/// How many threads read at once in [`bench_reads`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Readers {
    /// One thread: the figure is one read's time.
    One,
    /// Two threads at once: see [`two_threads`] for what the figure means.
    Two,
}

/// One function of group `g` per `(name, read)`: each iteration reads the next key of
/// `cycle` from `target`, on one thread or on two at once.
pub fn bench_reads<T: Sync + ?Sized>(
    g: &mut BenchmarkGroup<'_, WallTime>,
    target: &T,
    cycle: KeyCycle,
    readers: Readers,
    reads: &[(&str, Read<T>)],
) {
    for &(name, read) in reads {
        g.bench_function(name, |b| match readers {
            Readers::One => {
                let mut key = 0;
                b.iter(|| read(black_box(target), black_box(cycle.next(&mut key))))
            }
            Readers::Two => b.iter_custom(|iters| two_threads(target, iters, cycle, read)),
        });
    }
}

/// Two threads each do `iters` reads of `target` at once; returns the longer thread's time.
///
/// The figure is therefore the *latency of one read while another thread reads the same
/// structure* (`iters` reads per thread in that time), not the throughput of both threads
/// together, which would be half of it: it compares directly with the one-thread figure
/// ([`bench_reads`]), and a structure whose threads get in each other's way shows it as a
/// higher figure. Each thread times itself from the moment a barrier releases both, so
/// spawning and joining the threads are not measured; the threads start half the key cycle
/// apart, so they do not walk the same keys in lockstep.
pub fn two_threads<T: Sync + ?Sized>(
    target: &T,
    iters: u64,
    cycle: KeyCycle,
    read: Read<T>,
) -> Duration {
    let barrier = Barrier::new(2);
    thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|t| {
                let barrier = &barrier;
                s.spawn(move || {
                    let mut key = t * (cycle.keys / 2);
                    barrier.wait();
                    let start = Instant::now();
                    for _ in 0..iters {
                        black_box(read(black_box(target), black_box(cycle.next(&mut key))));
                    }
                    start.elapsed()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("reader thread panicked"))
            .max()
            .unwrap_or_default()
    })
}

/// Our cache as every cache bench builds it: bounded at `capacity` entries of weight one,
/// hashing with `std`'s [`RandomState`] like the anchors.
pub type DeferredCache = deferred_cache::Cache<u64, u64, core::convert::Infallible, RandomState>;

/// quick_cache's sync cache as every cache bench builds it (see [`quick_cache`]).
pub type QuickCache =
    quick_cache::sync::Cache<u64, u64, UnitWeighter, RandomState, DefaultLifecycle<u64, u64>>;

/// A [`DeferredCache`] bounded at `capacity` entries.
pub fn deferred_cache(capacity: u64) -> DeferredCache {
    deferred_cache::Cache::builder()
        .max_capacity(capacity)
        .hasher(RandomState::new())
        .build()
}

/// A [`QuickCache`] bounded at `capacity` entries of weight one, sized for as many.
pub fn quick_cache(capacity: u64) -> QuickCache {
    quick_cache::sync::Cache::with(
        capacity as usize,
        capacity,
        UnitWeighter,
        RandomState::new(),
        DefaultLifecycle::default(),
    )
}

/// splitmix64: a small seeded generator for deterministic key streams, and (through
/// [`mix`]) a bijective mixer of `u64`s.
///
/// ```
/// use deferred_benches::SplitMix64;
///
/// let (mut a, mut b) = (SplitMix64(7), SplitMix64(7));
/// assert_eq!(a.next_u64(), b.next_u64());
/// assert!((0.0..1.0).contains(&a.next_f64()));
/// ```
#[derive(Clone, Debug)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    /// The next 64 random bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }

    /// Uniform in `[0, 1)`, from the top 53 bits.
    #[inline]
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// splitmix64's finalizer: a bijection, so distinct inputs give distinct outputs.
#[inline]
pub fn mix(x: u64) -> u64 {
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A Markdown table with padded columns, the first left-aligned and the others
/// right-aligned (numbers).
///
/// ```
/// let t = deferred_benches::markdown_table(["a", "b"], &[["x".into(), "1.5".into()]]);
/// assert_eq!(t, "| a  |   b |\n| :- | --: |\n| x  | 1.5 |\n");
/// ```
pub fn markdown_table<const N: usize>(header: [&str; N], rows: &[[String; N]]) -> String {
    let widths: Vec<usize> = (0..N)
        .map(|i| {
            rows.iter()
                .map(|row| row[i].chars().count())
                .chain([header[i].chars().count()])
                .max()
                .unwrap_or(1)
                .max(2)
        })
        .collect();
    let line = |cells: &mut dyn Iterator<Item = String>| {
        let mut s = String::from("|");
        for s_cell in cells {
            s.push_str(&s_cell);
            s.push('|');
        }
        s.push('\n');
        s
    };
    let pad = |i: usize, text: &str| {
        let fill = " ".repeat(widths[i] - text.chars().count());
        if i == 0 {
            format!(" {text}{fill} ")
        } else {
            format!(" {fill}{text} ")
        }
    };
    let mut out = line(&mut header.iter().enumerate().map(|(i, h)| pad(i, h)));
    out.push_str(&line(&mut (0..N).map(|i| {
        let dashes = "-".repeat(widths[i] - 1);
        if i == 0 {
            format!(" :{dashes} ")
        } else {
            format!(" {dashes}: ")
        }
    })));
    for row in rows {
        out.push_str(&line(&mut row.iter().enumerate().map(|(i, c)| pad(i, c))));
    }
    out
}

/// Where a bench program saves its report by default: `file` in the target directory this
/// program was built in (the nearest ancestor that cargo marked with `CACHEDIR.TAG`).
pub fn report_path(file: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let target = exe
        .ancestors()
        .skip(1)
        .find(|dir| dir.join("CACHEDIR.TAG").is_file())?;
    Some(target.join(file))
}

/// The command line of a plain bench program (`harness = false`, not criterion), and where
/// its outputs go.
///
/// `cargo bench` passes `--bench`: a full run, which saves the report (`--out PATH`, else
/// [`report_path`]) and the charts (`--charts DIR`, else `benches/charts/`). Without it (as
/// `cargo test --benches` runs it) the program makes a short smoke run and writes no file.
/// `--<count> N` sets the program's own size parameter (requests, operations).
#[derive(Debug)]
pub struct Program {
    /// The program's name, for messages.
    pub name: &'static str,
    /// A full run (`--bench`), rather than a smoke run.
    pub bench: bool,
    /// The value of `--<count>`, if given.
    pub count: Option<u64>,
    out: Option<PathBuf>,
    charts: Option<PathBuf>,
}

impl Program {
    /// Parses this process's arguments; `count` names the size flag (without `--`). Other
    /// arguments, meant for the criterion benches of the same `cargo bench` run, are ignored
    /// with a note.
    pub fn from_args(name: &'static str, count: &str) -> Self {
        let mut program = Program {
            name,
            bench: false,
            count: None,
            out: None,
            charts: None,
        };
        let count_flag = format!("--{count}");
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--bench" => program.bench = true,
                "--out" => program.out = args.next().map(PathBuf::from),
                "--charts" => program.charts = args.next().map(PathBuf::from),
                flag if flag == count_flag => {
                    let n = args.next().and_then(|n| n.parse().ok()).filter(|&n| n > 0);
                    program.count = Some(n.unwrap_or_else(|| {
                        program.fail(&format!("{count_flag} takes a positive number"))
                    }));
                }
                other => eprintln!("{name}: ignoring argument `{other}`"),
            }
        }
        program
    }

    /// Prints `message` as this program's error and exits with status 1.
    pub fn fail(&self, message: &str) -> ! {
        eprintln!("{}: {message}", self.name);
        std::process::exit(1)
    }

    /// In a full run, saves `report` (as `--out`, else `report_file` in the target
    /// directory) and each `(file name, SVG)` of `charts`; a smoke run writes nothing.
    pub fn save(&self, report_file: &str, report: &str, charts: &[(String, String)]) {
        if !self.bench {
            return;
        }
        match self.out.clone().or_else(|| report_path(report_file)) {
            Some(path) => self.write(&path, report),
            None => eprintln!("{}: no target directory found; report not saved", self.name),
        }
        let dir = self
            .charts
            .clone()
            .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("charts"));
        if let Err(e) = std::fs::create_dir_all(&dir) {
            self.fail(&format!("could not create {}: {e}", dir.display()));
        }
        for (file, svg) in charts {
            self.write(&dir.join(file), svg);
        }
    }

    fn write(&self, path: &std::path::Path, text: &str) {
        match std::fs::write(path, text) {
            Ok(()) => println!("wrote {}", path.display()),
            Err(e) => self.fail(&format!("could not write {}: {e}", path.display())),
        }
    }
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
