//! core: a `Deferred` completed (value, error, cancel, die, dropped producer) while owned
//! waiters wait, with `on_complete` callbacks; `get_or_try_init` raced by initializers that
//! fail, panic or are dropped; `Lazy` cells awaited by many, aborted, completed from outside, or
//! given their computation late.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use deferred_core::{Deferred, Error, Lazy};

use crate::callers::{caller, join, pause, style};
use crate::counters::{violation, Ctx, Layer, BOOKS};
use crate::invariants::check_value;
use crate::loaders::{plan, probed, run_plan, Fail};
use crate::rng::{value_for, Rng};

#[derive(Clone, Copy, Debug)]
enum How {
    Succeed(u64),
    Fail,
    Cancel,
    Die,
    DropProducer,
}

fn expected(how: How, key: u64) -> Result<u64, Error<Fail>> {
    match how {
        How::Succeed(v) => Ok(v),
        How::Fail => Err(Error::Failed(Fail(key))),
        How::Cancel | How::DropProducer => Err(Error::Cancelled),
        How::Die => Err(Error::Panicked),
    }
}

fn complete(ctx: &Ctx, cell: &Deferred<u64, Fail>, how: How, key: u64) {
    let won = match how {
        How::Succeed(v) => cell.succeed(v).is_ok(),
        How::Fail => cell.fail(Fail(key)).is_ok(),
        How::Cancel => cell.cancel(),
        How::Die => cell.die(),
        How::DropProducer => cell.producer().map(drop).is_some(),
    };
    if !won {
        violation(ctx, format!("the only completer lost ({how:?})"));
    }
    if cell.succeed(0).is_ok() || cell.cancel() || cell.die() {
        violation(ctx, "a second completion won");
    }
    let seen = cell.try_get().map(|r| r.copied().map_err(|e| e.cloned()));
    if seen != Some(expected(how, key)) {
        violation(ctx, format!("try_get {seen:?} after {how:?}"));
    }
}

/// A `Deferred` with many owned waiters (some dropped, some stalled) and callbacks.
async fn core_waiters(ctx: &Ctx, rng: &mut Rng) -> u64 {
    let key = rng.below(1 << 20);
    let cell: Arc<Deferred<u64, Fail>> = Arc::new(Deferred::new());
    let how = match rng.percent() {
        0..=54 => How::Succeed(value_for(key, rng)),
        55..=69 => How::Fail,
        70..=81 => How::Cancel,
        82..=91 => How::Die,
        _ => How::DropProducer,
    };
    let callbacks = rng.below(4);
    let called = Arc::new(AtomicU64::new(0));
    for _ in 0..callbacks {
        let (called, want) = (Arc::clone(&called), expected(how, key));
        cell.on_complete(move |outcome| {
            if outcome.copied().map_err(|e| e.cloned()) == want {
                called.fetch_add(1, Relaxed);
            } else {
                called.fetch_add(1 << 32, Relaxed); // a wrong outcome: shows as a mismatch
            }
        });
    }
    let early = rng.below(10) == 0;
    if early {
        complete(ctx, &cell, how, key);
    }
    let n = 1 + rng.below(16);
    let mut handles = Vec::new();
    for _ in 0..n {
        let style = style(rng);
        let wait = Deferred::wait_owned(Arc::clone(&cell));
        handles.push(tokio::spawn(caller(Layer::Core, style, wait)));
    }
    pause(rng).await;
    if !early {
        complete(ctx, &cell, how, key);
    }
    let want = expected(how, key);
    for handle in handles {
        if let Some(Some(got)) = join(ctx, handle).await {
            if got != want {
                violation(ctx, format!("a waiter got {got:?}, the cell was {how:?}"));
            }
        }
    }
    // Callbacks run on the completing thread; give a concurrent drain a moment.
    let since = Instant::now();
    while called.load(Relaxed) != callbacks && since.elapsed() < Duration::from_secs(1) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let called = called.load(Relaxed);
    if called != callbacks {
        violation(
            ctx,
            format!(
                "{callbacks} on_complete callbacks, {called:#x} ran (high half: wrong outcome)"
            ),
        );
    }
    n + 2 + callbacks
}

/// `get_or_try_init` raced by several initializers that fail, panic, stall or are dropped.
async fn core_get_or_init(ctx: &Ctx, rng: &mut Rng) -> u64 {
    let key = rng.below(1 << 20);
    let cell: Arc<Deferred<u64, Fail>> = Arc::new(Deferred::new());
    let inits_done = Arc::new(AtomicU64::new(0));
    let n = 1 + rng.below(8);
    let mut handles = Vec::new();
    for _ in 0..n {
        let (plan, style) = (plan(rng, key), style(rng));
        let (cell, inits_done) = (Arc::clone(&cell), Arc::clone(&inits_done));
        handles.push(tokio::spawn(async move {
            let init = cell.get_or_try_init(move || {
                probed(&BOOKS.loads.init, async move {
                    let r = run_plan(key, plan).await;
                    inits_done.fetch_add(1, Relaxed);
                    r
                })
            });
            caller(Layer::Core, style, init)
                .await
                .map(|r| r.copied().map_err(|e| e.cloned()))
        }));
    }
    let mut seen: Option<Result<u64, Error<Fail>>> = None;
    for handle in handles {
        if let Some(Some(got)) = join(ctx, handle).await {
            if let Ok(v) = got {
                check_value(ctx, key, v, "get_or_init");
            }
            match &seen {
                Some(first) if *first != got => violation(
                    ctx,
                    format!("get_or_init callers disagree: {first:?} and {got:?}"),
                ),
                _ => seen = Some(got),
            }
        }
    }
    let done = inits_done.load(Relaxed);
    if done > 1 {
        violation(ctx, format!("{done} initializers completed one cell"));
    }
    if (seen.is_some() || done == 1) && !cell.is_done() {
        violation(ctx, "a caller got an outcome but the cell is not complete");
    }
    n
}

/// A `Lazy` awaited by many: aborted, completed from outside, or given its computation late.
async fn core_lazy(ctx: &Ctx, rng: &mut Rng) -> u64 {
    let key = rng.below(1 << 20);
    let plan = plan(rng, key);
    let late = rng.below(4) == 0;
    let lazy: Lazy<u64, Fail> = if late {
        Lazy::pending()
    } else {
        Lazy::boxed(probed(&BOOKS.loads.lazy, run_plan(key, plan)))
    };
    let n = 1 + rng.below(12);
    let mut handles = Vec::new();
    for _ in 0..n {
        let style = style(rng);
        handles.push(tokio::spawn(caller(
            Layer::Core,
            style,
            lazy.clone().wait_owned(),
        )));
    }
    pause(rng).await;
    let mut ops = n + 1;
    if late
        && lazy
            .try_attach(Box::pin(probed(&BOOKS.loads.lazy, run_plan(key, plan))))
            .is_err()
    {
        violation(
            ctx,
            "try_attach refused on a pending cell with no computation",
        );
    }
    let mut forced: Option<Result<u64, Error<Fail>>> = None;
    match rng.percent() {
        0..=9 => {
            ops += 1;
            if lazy.abort() {
                forced = Some(Err(Error::Cancelled));
            }
        }
        10..=19 => {
            ops += 1;
            let v = value_for(key, rng);
            if lazy.succeed(v).is_ok() {
                forced = Some(Ok(v));
            }
        }
        _ => {}
    }
    let mut seen: Option<Result<u64, Error<Fail>>> = None;
    for handle in handles {
        if let Some(Some(got)) = join(ctx, handle).await {
            if let Ok(v) = got {
                check_value(ctx, key, v, "lazy");
            }
            if forced.as_ref().is_some_and(|f| *f != got) {
                violation(
                    ctx,
                    format!("a lazy awaiter got {got:?}, forced {forced:?}"),
                );
            }
            match &seen {
                Some(first) if *first != got => violation(
                    ctx,
                    format!("lazy awaiters disagree: {first:?} and {got:?}"),
                ),
                _ => seen = Some(got),
            }
        }
    }
    if let Some(first) = seen {
        let now = lazy.try_get().map(|r| r.copied().map_err(|e| e.cloned()));
        if now != Some(first.clone()) {
            violation(
                ctx,
                format!("lazy awaiters got {first:?}, the cell holds {now:?}"),
            );
        }
    }
    ops
}

pub async fn core_op(ctx: &mut Ctx, rng: &mut Rng) -> u64 {
    match rng.percent() {
        0..=39 => {
            ctx.op = "core/waiters";
            core_waiters(ctx, rng).await
        }
        40..=69 => {
            ctx.op = "core/get_or_init";
            core_get_or_init(ctx, rng).await
        }
        _ => {
            ctx.op = "core/lazy";
            core_lazy(ctx, rng).await
        }
    }
}
