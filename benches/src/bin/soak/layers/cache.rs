//! cache: one bounded `Cache` under `get_with` bursts, `get_if_present`, `peek`, `insert`,
//! `invalidate`, rarely `invalidate_all`.

use std::sync::Arc;

use super::keyed::{self, Call, Mix};
use super::{cache_key, read_burst};
use crate::counters::{Ctx, Layer, BOOKS};
use crate::invariants::Outcome;
use crate::loaders::{probed, run_plan};
use crate::rng::Rng;
use crate::state::State;
use crate::CACHE_KEYS;

const MIX: Mix = Mix {
    roll: 1000,
    calls: &[
        (449, "cache/get_with", Call::Burst),
        (599, "cache/get_if_present", Call::GetIfPresent),
        (699, "cache/peek", Call::Peek),
        (899, "cache/insert", Call::Insert),
        (998, "cache/invalidate", Call::Invalidate),
        (999, "cache/invalidate_all", Call::InvalidateAll),
    ],
    // Each counts a miss and no load, which the final checks account for.
    empty_reads: Some(&BOOKS.cache_empty_reads),
};

pub async fn cache_op(s: &Arc<State>, ctx: &mut Ctx, rng: &mut Rng) -> u64 {
    let key = cache_key(rng, CACHE_KEYS);
    match MIX.pick(ctx, rng) {
        Call::Burst => {
            read_burst(ctx, rng, Layer::Cache, key, |_, plan| {
                let s = Arc::clone(s);
                async move {
                    let load = move || probed(&BOOKS.loads.cache, run_plan(key, plan));
                    Outcome::from_load(s.cache.get_with(key, load).await)
                }
            })
            .await
        }
        call => keyed::run(ctx, rng, &MIX, &s.cache, key, call),
    }
}
