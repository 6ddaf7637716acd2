//! What a cell of the cache's map holds: the value, and the eviction policy's metadata
//! beside it.
//!
//! The cache (`cache`, `get`, `blocking`) makes and reads these; the policy (`policy`) owns
//! the metadata's state: `NEW`, `ADMITTED` and `REMOVED` change only under a policy shard's
//! lock, and only the policy changes them. Both sides import from here, and this module
//! imports neither, so the modules depend one way: `stored` <- `policy` <- `cache` <- `get`.

use std::fmt;

use deferred_map::Lazy;

use crate::{
    error::Failure,
    loom::{AtomicU32, AtomicU8, Ordering::Relaxed},
};

/// A value in the map, with the policy's view of it beside it: the metadata first
/// (`repr(C)`), so that a large value does not push it onto another cache line than the
/// value's first bytes, which a hit reads too.
#[repr(C)]
pub(crate) struct Stored<V> {
    pub(crate) meta: Meta,
    pub(crate) value: V,
}

impl<V: Clone> Clone for Stored<V> {
    /// A copy of the value for a caller. The policy only ever reads the metadata of the
    /// `Stored` inside the cell, so the copy gets fresh metadata.
    fn clone(&self) -> Self {
        Stored {
            value: self.value.clone(),
            meta: Meta::new(),
        }
    }
}

impl<V> Stored<V> {
    pub(crate) fn new(value: V) -> Self {
        Stored {
            value,
            meta: Meta::new(),
        }
    }
}

/// The cells of a cache's map.
pub(crate) type CacheCell<V, E> = Lazy<Stored<V>, Failure<E>>;

/// Not admitted yet (a value that just finished loading, or was just inserted).
pub(crate) const NEW: u8 = 0;
/// In a queue of its policy shard, and counted in its weight.
pub(crate) const ADMITTED: u8 = 1;
/// Gone from the map (evicted, invalidated or replaced); its policy entry, if any, is dead.
pub(crate) const REMOVED: u8 = 2;

/// The `Meta::slot` of a value that is on no policy shard's books (not admitted yet, or
/// weighing nothing, so never queued), and the one index a shard never hands out.
pub(crate) const NO_SLOT: u32 = u32::MAX;

/// The most uses a read records.
const MAX_FREQ: u8 = 3;

/// The policy's view of one stored value, kept beside the value in its cell (one cache
/// line away at most from what a hit reads anyway).
pub(crate) struct Meta {
    /// Reads since the entry last left a queue, saturating at `MAX_FREQ`. Relaxed: a hint
    /// to the policy, racy by design (a lost bump costs nothing but accuracy).
    pub(crate) freq: AtomicU8,
    /// NEW / ADMITTED / REMOVED; changed only under the policy shard's lock, which orders
    /// it. Read without the lock only as a hint (see `Policy::needs_admission`).
    pub(crate) state: AtomicU8,
    /// The index of the value's entry on its policy shard's books (where its weight and
    /// queue position are) while it is ADMITTED, or [`NO_SLOT`] for a value that
    /// weighs nothing. Set at admission, under the shard's lock, and read under it.
    pub(crate) slot: AtomicU32,
}

impl Meta {
    pub(crate) fn new() -> Self {
        Meta {
            freq: AtomicU8::new(0),
            state: AtomicU8::new(NEW),
            slot: AtomicU32::new(NO_SLOT),
        }
    }

    /// Records a read. Stores only when the count changes, so that readers of a hot key do
    /// not keep writing its cache line.
    #[inline]
    pub(crate) fn touch(&self) {
        let freq = self.freq.load(Relaxed);
        if freq < MAX_FREQ {
            self.freq.store(freq + 1, Relaxed);
        }
    }
}

impl fmt::Debug for Meta {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Meta")
            .field("freq", &self.freq.load(Relaxed))
            .field("state", &self.state.load(Relaxed))
            .finish_non_exhaustive()
    }
}
