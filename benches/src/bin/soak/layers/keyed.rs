//! The calls every cache layer answers at once (`get_if_present`, `peek`, `insert`,
//! `invalidate`, ...): one runner for the three caches, each with its own mix of calls.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use deferred_cache::Cache;

use crate::counters::Ctx;
use crate::invariants::check_value;
use crate::loaders::Fail;
use crate::rng::{value_for, Rng};
use crate::state::{ExpCache, SysCache};

/// A call of a cache layer's mix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    /// A burst of loading reads ([`super::read_burst`]): the layer runs it itself.
    Burst,
    GetIfPresent,
    Peek,
    Insert,
    Invalidate,
    /// Only the manual-clock expiring cache has it: the layer runs it itself.
    RunMaintenance,
    InvalidateAll,
}

/// A cache layer's mix: a roll of `0..roll` picks the first call whose `last` it does not
/// exceed.
pub struct Mix {
    pub roll: u64,
    /// `(last, op name, call)`, `last` ascending, the final one `roll - 1`.
    pub calls: &'static [(u64, &'static str, Call)],
    /// Where the `get_if_present` calls that found nothing are counted, if anywhere.
    pub empty_reads: Option<&'static AtomicU64>,
}

impl Mix {
    /// Rolls the next call and names it in `ctx`.
    pub fn pick(&self, ctx: &mut Ctx, rng: &mut Rng) -> Call {
        let roll = rng.below(self.roll);
        let &(_, op, call) = self
            .calls
            .iter()
            .find(|(last, _, _)| roll <= *last)
            .expect("a mix covers its whole roll");
        ctx.op = op;
        call
    }
}

/// The calls of [`Call`] but `Burst`, on any of the three caches.
/// (Named apart from the caches' own methods, which they call.)
pub trait Keyed {
    fn read_present(&self, key: u64) -> Option<u64>;
    fn read_peek(&self, key: u64) -> Option<u64>;
    fn write(&self, key: u64, value: u64);
    fn drop_key(&self, key: u64);
    fn drop_all(&self);
}

/// The same inherent calls on each cache type (their signatures agree, their types do not).
macro_rules! keyed {
    ($($cache:ty),+) => {$(
        impl Keyed for $cache {
            fn read_present(&self, key: u64) -> Option<u64> {
                self.get_if_present(&key)
            }
            fn read_peek(&self, key: u64) -> Option<u64> {
                self.peek(&key)
            }
            fn write(&self, key: u64, value: u64) {
                self.insert(key, value)
            }
            fn drop_key(&self, key: u64) {
                self.invalidate(&key);
            }
            fn drop_all(&self) {
                self.invalidate_all()
            }
        }
    )+};
}

keyed!(Cache<u64, u64, Fail>, ExpCache, SysCache);

/// Runs `call` (not `Burst` or `RunMaintenance`) on `cache` at `key`; a value read must belong to `key`. One
/// operation.
pub fn run<C: Keyed>(ctx: &Ctx, rng: &mut Rng, mix: &Mix, cache: &C, key: u64, call: Call) -> u64 {
    let read = match call {
        Call::GetIfPresent => {
            let read = cache.read_present(key);
            if let (None, Some(empty)) = (read, mix.empty_reads) {
                empty.fetch_add(1, Relaxed);
            }
            read
        }
        Call::Peek => cache.read_peek(key),
        Call::Insert => {
            cache.write(key, value_for(key, rng));
            None
        }
        Call::Invalidate => {
            cache.drop_key(key);
            None
        }
        Call::InvalidateAll => {
            cache.drop_all();
            None
        }
        Call::Burst | Call::RunMaintenance => unreachable!("the layer runs {call:?} itself"),
    };
    if let Some(v) = read {
        check_value(ctx, key, v, Spaced(ctx.op));
    }
    1
}

/// An op name as a read's report names it: `cache/peek` reads `cache peek`.
struct Spaced(&'static str);

impl fmt::Display for Spaced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.replace('/', " "))
    }
}
