//! cache: one bounded `Cache` under `get_with` bursts, `get_if_present`, `peek`, `insert`,
//! `invalidate`, rarely `invalidate_all`.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use super::{cache_key, read_burst};
use crate::counters::{Ctx, Layer, BOOKS};
use crate::invariants::{check_value, Outcome};
use crate::loaders::{probed, run_plan};
use crate::rng::{value_for, Rng};
use crate::state::State;
use crate::CACHE_KEYS;

pub async fn cache_op(s: &Arc<State>, ctx: &mut Ctx, rng: &mut Rng) -> u64 {
    let key = cache_key(rng, CACHE_KEYS);
    let cache = &s.cache;
    match rng.below(1000) {
        0..=449 => {
            ctx.op = "cache/get_with";
            read_burst(ctx, rng, Layer::Cache, key, |_, plan| {
                let s = Arc::clone(s);
                async move {
                    let load = move || probed(&BOOKS.loads.cache, run_plan(key, plan));
                    Outcome::from_load(s.cache.get_with(key, load).await)
                }
            })
            .await
        }
        450..=599 => {
            ctx.op = "cache/get_if_present";
            match cache.get_if_present(&key) {
                Some(v) => check_value(ctx, key, v, "cache get_if_present"),
                None => {
                    BOOKS.cache_empty_reads.fetch_add(1, Relaxed);
                }
            }
            1
        }
        600..=699 => {
            ctx.op = "cache/peek";
            if let Some(v) = cache.peek(&key) {
                check_value(ctx, key, v, "cache peek");
            }
            1
        }
        700..=899 => {
            ctx.op = "cache/insert";
            cache.insert(key, value_for(key, rng));
            1
        }
        900..=998 => {
            ctx.op = "cache/invalidate";
            cache.invalidate(&key);
            1
        }
        _ => {
            ctx.op = "cache/invalidate_all";
            cache.invalidate_all();
            1
        }
    }
}
