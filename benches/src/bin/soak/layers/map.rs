//! map: one `DeferredMap` under `get_or_add_with` bursts, `insert`, `add_value`, `remove`,
//! `try_get`; `wait` waiters on keys private to each worker; sequential read-your-write checks.

use std::sync::Arc;

use deferred_core::{Error, Lazy};

use super::read_burst;
use crate::callers::{caller, join, pause, style, Style};
use crate::counters::{violation, Ctx, Layer, BOOKS};
use crate::invariants::{check_value, Outcome};
use crate::loaders::{probed, run_plan, Fail};
use crate::rng::{value_for, Rng};
use crate::state::{Map, State};
use crate::{MAP_KEYS, PRIVATE_BASE};

pub async fn map_op(s: &Arc<State>, ctx: &mut Ctx, rng: &mut Rng) -> u64 {
    let key = rng.below(MAP_KEYS);
    let map = &s.map;
    match rng.percent() {
        0..=44 => {
            ctx.op = "map/get_or_add_with";
            read_burst(ctx, rng, Layer::Map, key, |_, plan| {
                let s = Arc::clone(s);
                async move {
                    let load = move || probed(&BOOKS.loads.map, run_plan(key, plan));
                    Outcome::from_core(s.map.get_or_add_with(key, load).await)
                }
            })
            .await
        }
        45..=49 => map_wait_private(s, ctx, rng).await,
        50..=64 => {
            ctx.op = "map/insert";
            drop(map.insert(key, Lazy::ready(value_for(key, rng))));
            1
        }
        65..=72 => {
            ctx.op = "map/add_value";
            map.add_value(key, value_for(key, rng));
            1
        }
        73..=82 => {
            ctx.op = "map/remove";
            drop(map.remove(&key));
            1
        }
        83..=92 => {
            ctx.op = "map/try_get";
            match map.try_get(&key) {
                Some(Ok(v)) => check_value(ctx, key, v, "map try_get"),
                Some(Err(Error::Failed(Fail(k)))) if k != key => {
                    violation(ctx, format!("map try_get of {key}: error of key {k}"))
                }
                _ => {}
            }
            1
        }
        _ => map_private(map, ctx, rng).await,
    }
}

/// `wait` waiters on a private key, then served by `add_value` or all given up.
async fn map_wait_private(s: &Arc<State>, ctx: &mut Ctx, rng: &mut Rng) -> u64 {
    let map = &s.map;
    // Waiters on a key with nothing there (`wait` leaves a placeholder), on a key of
    // this worker's own: `insert` or `remove` by someone else would strand them, as
    // documented. Either the worker then adds the value, and every waiter that
    // finished must have it, or all give up, and the placeholder must be gone.
    ctx.op = "map/get";
    let key = PRIVATE_BASE + (1 << 20) + (ctx.worker as u64) * 16 + rng.below(16);
    let produce = rng.percent() < 80;
    let n = 1 + rng.below(6);
    let mut handles = Vec::new();
    for _ in 0..n {
        let style = match (produce, style(rng)) {
            (false, Style::Normal | Style::Stall { resume: true, .. }) => {
                Style::Timeout(rng.below(3000))
            }
            (_, style) => style,
        };
        let s = Arc::clone(s);
        handles.push(tokio::spawn(async move {
            caller(Layer::Map, style, s.map.wait(key)).await
        }));
    }
    pause(rng).await;
    let v = value_for(key, rng);
    if produce {
        map.add_value(key, v);
    }
    for handle in handles {
        match join(ctx, handle).await {
            Some(Some(got)) if !produce || got != Ok(v) => violation(
                ctx,
                format!("a get waiter on private key {key} got {got:?} (added: {produce}, {v})"),
            ),
            _ => {}
        }
    }
    if produce {
        drop(map.remove(&key));
    } else if map.cell_if_present(&key).is_some() {
        violation(
            ctx,
            format!("private key {key}: placeholder left after every waiter gave up"),
        );
    }
    n + 2
}

/// Sequential read-your-write checks on a private key.
async fn map_private(map: &Map, ctx: &mut Ctx, rng: &mut Rng) -> u64 {
    ctx.op = "map/private";
    // A key only this worker touches: sequential semantics must hold exactly.
    let key = PRIVATE_BASE + (ctx.worker as u64) * 16 + rng.below(16);
    let v = value_for(key, rng);
    drop(map.insert(key, Lazy::ready(v)));
    if map.try_get(&key) != Some(Ok(v)) {
        violation(
            ctx,
            format!(
                "private key {key}: inserted {v}, read {:?}",
                map.try_get(&key)
            ),
        );
    }
    if rng.below(2) == 0 {
        let got = map.get_or_add_with(key, || async { Ok(0) }).await;
        if got != Ok(v) {
            violation(
                ctx,
                format!("private key {key}: get_or_add_with gave {got:?}, want {v}"),
            );
        }
    }
    if map.remove(&key).is_none() || map.try_get(&key).is_some() {
        violation(ctx, format!("private key {key}: remove did not remove"));
    }
    4
}
