#![forbid(unsafe_code)]
//! Criterion benchmarks of `deferred-core` against anchor crates.
//!
//! Every group is named `core/<workload>`; our cell's function is always `deferred`, the
//! anchors have short names (`tokio_oncecell`, `oneshot`, ...). `cargo xtask bench` reads
//! the estimates criterion writes and prints `deferred`'s ratio to each anchor.
//!
//! No executor is involved: futures are polled by hand (see `deferred_benches`), with a
//! no-op waker where they complete at once, and with a counting waker where they must
//! register and be woken, so the figures are those of the cells and not of a runtime.
//!
//! Workloads:
//!
//! * `core/read_completed`: read a completed cell (`get`);
//! * `core/create_complete_await`: make a cell on the stack, complete it, await it once;
//! * `core/arc_create_complete_await`: the same with the cell behind an `Arc` and an owned
//!   (`'static`) waiter, and `deferred_pair`, `Deferred::pair`'s completer and awaiter, against
//!   one-shot channels;
//! * `core/wake_all/<name>/<N>`: one completer wakes N registered waiters; the estimate is
//!   the time per waiter (whole round divided by N);
//! * `core/get_or_init`: `get_or_init` with a ready initializer on a fresh cell.

use core::{
    hint::black_box,
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};
use std::{sync::Arc, time::Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use deferred_benches::{chain, group, ready_now, WakeCounter};
use deferred_core::Deferred;
use futures::FutureExt as _;

/// The value every cell is completed with.
const VALUE: u64 = 7;

/// Waiter counts of `core/wake_all`.
const WAKE_ALL_N: [usize; 4] = [1, 16, 256, 4096];

// ---------------------------------------------------------------------------------------
// core/read_completed

/// The floor for reading a completed cell: one `Acquire` load and a branch.
struct Flagged {
    state: AtomicUsize,
    value: u64,
}

impl Flagged {
    const DONE: usize = 1;

    #[inline]
    fn get(&self) -> Option<&u64> {
        if self.state.load(Ordering::Acquire) == Self::DONE {
            Some(&self.value)
        } else {
            None
        }
    }
}

fn read_completed(c: &mut Criterion) {
    let mut g = group(c, "core", "read_completed");

    let cell: Deferred<u64> = Deferred::new();
    cell.succeed(VALUE).unwrap();
    g.bench_function("deferred", |b| {
        b.iter(|| match black_box(&cell).get() {
            Some(v) => *v,
            None => 0,
        })
    });

    let flagged = Flagged {
        state: AtomicUsize::new(Flagged::DONE),
        value: VALUE,
    };
    g.bench_function("atomic_load", |b| {
        b.iter(|| match black_box(&flagged).get() {
            Some(v) => *v,
            None => 0,
        })
    });

    let once = tokio::sync::OnceCell::new_with(Some(VALUE));
    g.bench_function("tokio_oncecell", |b| {
        b.iter(|| match black_box(&once).get() {
            Some(v) => *v,
            None => 0,
        })
    });

    let set_once = tokio::sync::SetOnce::new_with(Some(VALUE));
    g.bench_function("tokio_setonce", |b| {
        b.iter(|| match black_box(&set_once).get() {
            Some(v) => *v,
            None => 0,
        })
    });

    g.finish();
}

// ---------------------------------------------------------------------------------------
// core/create_complete_await

fn create_complete_await(c: &mut Criterion) {
    let mut g = group(c, "core", "create_complete_await");

    g.bench_function("deferred", |b| {
        b.iter(|| {
            let cell: Deferred<u64> = Deferred::new();
            let cell = black_box(&cell);
            cell.succeed(black_box(VALUE)).unwrap();
            *ready_now(cell).unwrap()
        })
    });

    g.bench_function("tokio_setonce", |b| {
        b.iter(|| {
            let cell = tokio::sync::SetOnce::new();
            let cell = black_box(&cell);
            cell.set(black_box(VALUE)).unwrap();
            *ready_now(cell.wait())
        })
    });

    // `OnceCell` has no wait: set, then get.
    g.bench_function("tokio_oncecell", |b| {
        b.iter(|| {
            let cell = tokio::sync::OnceCell::new();
            let cell = black_box(&cell);
            cell.set(black_box(VALUE)).unwrap();
            *cell.get().unwrap()
        })
    });

    g.finish();
}

// ---------------------------------------------------------------------------------------
// core/arc_create_complete_await

fn arc_create_complete_await(c: &mut Criterion) {
    let mut g = group(c, "core", "arc_create_complete_await");

    // The `Arc` is the channel; `wait_owned` is the receiver, made before the value is
    // sent, and the completer's handle is dropped after sending, as a `Sender` is.
    g.bench_function("deferred", |b| {
        b.iter(|| {
            let tx: Arc<Deferred<u64>> = Arc::new(Deferred::new());
            let rx = Deferred::wait_owned(Arc::clone(&tx));
            black_box(&*tx).succeed(black_box(VALUE)).unwrap();
            drop(tx);
            ready_now(rx).unwrap()
        })
    });

    // The owned pair: one allocation whose two handles live in the cell's state word.
    g.bench_function("deferred_pair", |b| {
        b.iter(|| {
            let (tx, rx) = Deferred::<u64>::pair();
            tx.succeed(black_box(VALUE)).unwrap();
            ready_now(rx).unwrap()
        })
    });

    g.bench_function("oneshot", |b| {
        b.iter(|| {
            let (tx, rx) = oneshot::channel::<u64>();
            tx.send(black_box(VALUE)).unwrap();
            ready_now(rx).unwrap()
        })
    });

    g.bench_function("tokio_oneshot", |b| {
        b.iter(|| {
            let (tx, rx) = tokio::sync::oneshot::channel::<u64>();
            tx.send(black_box(VALUE)).unwrap();
            ready_now(rx).unwrap()
        })
    });

    g.bench_function("futures_oneshot", |b| {
        b.iter(|| {
            let (tx, rx) = futures::channel::oneshot::channel::<u64>();
            tx.send(black_box(VALUE)).unwrap();
            ready_now(rx).unwrap()
        })
    });

    g.finish();
}

// ---------------------------------------------------------------------------------------
// core/wake_all

/// One round of `core/wake_all`, `iters` times over, for one implementation: make a cell,
/// make `n` waiters and poll each once (each must be pending and registers the counting
/// waker), complete the cell, poll each again (each must be ready) and drop it.
///
/// The waiters are pinned on the stack by [`chain`] (a few per frame of a recursion, so
/// N is bounded by the stack: 4096 take some 400 KiB), which registers them in the
/// order they were made and completes and drops them in the reverse order; they need no
/// storage of ours, so whatever is allocated in the timed loop is the implementation's.
///
/// Returns the time per waiter.
macro_rules! wake_all_rounds {
    (
        iters: $iters:expr,
        n: $n:expr,
        cell: |$cell:ident| $make:expr,
        waiter: $waiter:expr,
        complete: $complete:expr,
        ready: |$out:ident| $check:expr $(,)?
    ) => {{
        let (iters, n): (u64, usize) = ($iters, $n);
        let wakes = Arc::new(WakeCounter::new());
        let waker = wakes.waker();
        let start = Instant::now();
        for _ in 0..iters {
            let $cell = $make;
            let $cell = black_box(&$cell);
            chain(
                n,
                &waker,
                &mut || $waiter,
                &mut || {
                    $complete;
                },
                &mut |$out| {
                    black_box($check);
                },
            );
        }
        let elapsed = start.elapsed();
        // At least one wake per waiter (`Shared` wakes its first waiter twice).
        let wakes = wakes.take() as u64;
        assert!(
            wakes >= iters * n as u64,
            "{wakes} wakes for {iters} x {n} waiters"
        );
        per_waiter(elapsed, n)
    }};
}

fn per_waiter(elapsed: Duration, n: usize) -> Duration {
    elapsed.div_f64(n as f64)
}

fn wake_all_deferred(iters: u64, n: usize) -> Duration {
    wake_all_rounds! {
        iters: iters,
        n: n,
        cell: |cell| Deferred::<u64>::new(),
        waiter: cell.wait(),
        complete: cell.succeed(VALUE).unwrap(),
        ready: |out| *out.unwrap(),
    }
}

fn wake_all_tokio_notify(iters: u64, n: usize) -> Duration {
    wake_all_rounds! {
        iters: iters,
        n: n,
        cell: |notify| tokio::sync::Notify::new(),
        waiter: notify.notified(),
        complete: notify.notify_waiters(),
        ready: |out| out,
    }
}

fn wake_all_futures_shared(iters: u64, n: usize) -> Duration {
    wake_all_rounds! {
        iters: iters,
        n: n,
        cell: |chan| {
            let (tx, rx) = futures::channel::oneshot::channel::<u64>();
            (core::cell::Cell::new(Some(tx)), rx.shared())
        },
        waiter: chan.1.clone(),
        complete: chan.0.take().unwrap().send(VALUE).unwrap(),
        ready: |out| out.unwrap(),
    }
}

fn wake_all_event_listener(iters: u64, n: usize) -> Duration {
    wake_all_rounds! {
        iters: iters,
        n: n,
        cell: |event| event_listener::Event::new(),
        waiter: event.listen(),
        complete: event.notify(usize::MAX),
        ready: |out| out,
    }
}

fn wake_all(c: &mut Criterion) {
    let mut g = group(c, "core", "wake_all");
    // The estimate of each benchmark is already per waiter (see `wake_all_rounds!`), so
    // one "element" per iteration makes criterion's throughput read as waiters/s.
    g.throughput(Throughput::Elements(1));
    type Round = fn(u64, usize) -> Duration;
    let impls: [(&str, Round); 4] = [
        ("deferred", wake_all_deferred),
        ("tokio_notify", wake_all_tokio_notify),
        ("futures_shared", wake_all_futures_shared),
        ("event_listener", wake_all_event_listener),
    ];
    for n in WAKE_ALL_N {
        for (name, round) in impls {
            g.bench_with_input(BenchmarkId::new(name, n), &n, |b, &n| {
                b.iter_custom(|iters| round(iters, n))
            });
        }
    }
    g.finish();
}

// ---------------------------------------------------------------------------------------
// core/get_or_init

fn get_or_init(c: &mut Criterion) {
    let mut g = group(c, "core", "get_or_init");

    g.bench_function("deferred", |b| {
        b.iter(|| {
            let cell: Deferred<u64> = Deferred::new();
            let cell = black_box(&cell);
            *ready_now(cell.get_or_init(|| async { black_box(VALUE) })).unwrap()
        })
    });

    g.bench_function("tokio_oncecell", |b| {
        b.iter(|| {
            let cell = tokio::sync::OnceCell::<u64>::new();
            let cell = black_box(&cell);
            *ready_now(cell.get_or_init(|| async { black_box(VALUE) }))
        })
    });

    g.bench_function("async_once_cell", |b| {
        b.iter(|| {
            let cell = async_once_cell::OnceCell::<u64>::new();
            let cell = black_box(&cell);
            *ready_now(cell.get_or_init(async { black_box(VALUE) }))
        })
    });

    g.finish();
}

deferred_benches::criterion_suite!(
    read_completed,
    create_complete_await,
    arc_create_complete_await,
    wake_all,
    get_or_init
);
