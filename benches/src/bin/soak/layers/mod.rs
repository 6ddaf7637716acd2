//! The workloads, one module per layer: each picks a random operation on the shared
//! structures, checks what it can see at once, and returns how many operations it counted.

pub mod cache;
pub mod core;
pub mod expiring;
pub mod keyed;
pub mod map;

use std::future::Future;

use crate::callers::{caller, style};
use crate::counters::{Ctx, Layer};
use crate::invariants::{join_reads, Outcome};
use crate::loaders::{plan, Plan};
use crate::rng::Rng;

/// A key of a cache: 70 % among the hottest sixteenth of `keys`.
pub fn cache_key(rng: &mut Rng, keys: u64) -> u64 {
    if rng.percent() < 70 {
        rng.below(keys / 16)
    } else {
        rng.below(keys)
    }
}

/// The read burst of every layer with loads (map, cache, both expiring caches): `1..=6`
/// callers of `key` at once, each with its own loader plan and calling style, each in its own
/// task; `read` makes a caller's read from its plan (and may draw more from `rng`). Every
/// outcome is checked against `key`. Returns the operations run (one a caller).
pub async fn read_burst<R>(
    ctx: &Ctx,
    rng: &mut Rng,
    layer: Layer,
    key: u64,
    mut read: impl FnMut(&mut Rng, Plan) -> R,
) -> u64
where
    R: Future<Output = Outcome> + Send + 'static,
{
    let n = 1 + rng.below(6);
    let mut handles = Vec::new();
    for _ in 0..n {
        let (plan, style) = (plan(rng, key), style(rng));
        let read = read(rng, plan);
        handles.push(tokio::spawn(caller(layer, style, read)));
    }
    join_reads(ctx, key, handles).await;
    n
}
