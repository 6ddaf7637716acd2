//! Eviction: S3-FIFO (Yang et al., SOSP 2023) per policy shard.
//!
//! Each shard keeps a small FIFO for new entries (a tenth of its capacity), a main FIFO, and
//! a ghost FIFO of the hashes of entries recently evicted from the small queue. Reads only
//! bump a 2-bit use count in the entry's [`Meta`] (no lock, no queue move); the queues move
//! only when something is admitted:
//!
//! * a new entry goes to the small queue, or straight to the main queue if its hash is a
//!   ghost (it was evicted lately and came back);
//! * leaving the small queue, an entry that was read there moves to the main queue, and one
//!   that was not is evicted (its hash becomes a ghost): one-hit wonders and scans pass
//!   through without pushing out the working set;
//! * leaving the main queue, an entry that was read goes round again with one use fewer,
//!   and one that was not is evicted.
//!
//! Only complete values are admitted, so a load in flight is never evicted. Every state
//! change of a `Meta` happens under its shard's lock.

use std::{collections::VecDeque, fmt, sync::Arc};

use crossbeam_utils::CachePadded;
use deferred_core::{sync::SpinMutex, WeakLazy};
use deferred_map::Cell;
use hashbrown::HashTable;

use crate::{
    cache::Stored,
    loom::{AtomicU32, AtomicU8, Ordering::Relaxed},
};

/// Not admitted yet (a value that just finished loading, or was just inserted).
const NEW: u8 = 0;
/// In a queue of its policy shard, and counted in its weight.
const ADMITTED: u8 = 1;
/// Gone from the map (evicted, invalidated or replaced); its node, if any, is stale.
const REMOVED: u8 = 2;

/// The most uses a read records.
const MAX_FREQ: u8 = 3;

/// The policy's view of one stored value, kept beside the value in its cell (one cache
/// line away at most from what a hit reads anyway).
pub(crate) struct Meta {
    /// Reads since the entry last left a queue, saturating at `MAX_FREQ`. Relaxed: a hint
    /// to the policy, racy by design (a lost bump costs nothing but accuracy).
    freq: AtomicU8,
    /// NEW / ADMITTED / REMOVED; changed only under the policy shard's lock, which orders
    /// it. Read without the lock only as a hint (see `Policy::needs_admission`).
    state: AtomicU8,
    /// Set at admission, under the lock.
    weight: AtomicU32,
}

impl Meta {
    pub(crate) fn new() -> Self {
        Meta {
            freq: AtomicU8::new(0),
            state: AtomicU8::new(NEW),
            weight: AtomicU32::new(1),
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

    fn weight(&self) -> u64 {
        u64::from(self.weight.load(Relaxed))
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

/// The cells of a cache's map.
pub(crate) type CacheCell<V, E> = Cell<Stored<V>, Arc<E>>;

/// A queued entry: its key, and a weak handle to its cell, so that a value removed from the
/// map is dropped at once, not when its node comes round.
pub(crate) struct Node<K, V, E> {
    pub(crate) key: K,
    pub(crate) hash: u64,
    weight: u64,
    cell: WeakLazy<Stored<V>, Arc<E>>,
}

impl<K, V, E> Node<K, V, E> {
    pub(crate) fn new(key: K, hash: u64, cell: &CacheCell<V, E>) -> Self {
        Node {
            key,
            hash,
            weight: 1,
            cell: deferred_core::Lazy::downgrade(cell),
        }
    }
}

/// What eviction took out: the cache removes each victim from the map, and drops
/// everything after the policy lock is released (keys and values are user code).
pub(crate) struct Evicted<K, V, E> {
    pub(crate) node: Node<K, V, E>,
    /// The cell, upgraded from the node's weak handle; `None` if it was already gone.
    pub(crate) cell: Option<CacheCell<V, E>>,
    /// Whether the node was a live value to remove from the map (not a stale node).
    pub(crate) victim: bool,
}

/// The metadata of a live, complete cell.
fn meta_of<V, E>(cell: &CacheCell<V, E>) -> Option<&Meta> {
    cell.get().map(|stored| &stored.meta)
}

/// Hashes of entries lately evicted from a small queue, oldest first, with counts for
/// membership tests.
struct Ghost {
    order: VecDeque<u64>,
    counts: HashTable<(u64, u32)>,
}

impl Ghost {
    fn new() -> Self {
        Ghost {
            order: VecDeque::new(),
            counts: HashTable::new(),
        }
    }

    fn contains(&self, hash: u64) -> bool {
        self.counts.find(hash, |e| e.0 == hash).is_some()
    }

    fn push(&mut self, hash: u64, cap: usize) {
        self.order.push_back(hash);
        match self.counts.find_mut(hash, |e| e.0 == hash) {
            Some(e) => e.1 += 1,
            None => {
                self.counts.insert_unique(hash, (hash, 1), |e| e.0);
            }
        }
        while self.order.len() > cap {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Ok(mut e) = self.counts.find_entry(old, |e| e.0 == old) {
                e.get_mut().1 -= 1;
                if e.get().1 == 0 {
                    e.remove();
                }
            }
        }
    }
}

/// One shard's queues.
struct Fifo<K, V, E> {
    small: VecDeque<Node<K, V, E>>,
    main: VecDeque<Node<K, V, E>>,
    ghost: Ghost,
    /// Weight of the nodes in each queue, stale ones included: the queue sizes S3-FIFO
    /// steers by.
    small_weight: u64,
    main_weight: u64,
    /// Weight of the ADMITTED values: what counts against capacity.
    live: u64,
    /// Queued nodes whose values were retired (invalidated, replaced, expired) while
    /// queued: dead weight until a step pops them, or a compaction drops them.
    stale: usize,
    capacity: u64,
    small_capacity: u64,
}

impl<K, V, E> Fifo<K, V, E> {
    fn new(capacity: u64) -> Self {
        Fifo {
            small: VecDeque::new(),
            main: VecDeque::new(),
            ghost: Ghost::new(),
            small_weight: 0,
            main_weight: 0,
            live: 0,
            stale: 0,
            capacity,
            small_capacity: capacity / 10,
        }
    }

    fn push(&mut self, node: Node<K, V, E>) {
        if self.ghost.contains(node.hash) {
            self.main_weight += node.weight;
            self.main.push_back(node);
        } else {
            self.small_weight += node.weight;
            self.small.push_back(node);
        }
    }

    /// One eviction step: takes nodes off the queues' heads, giving second chances to the
    /// values read since they were queued, until one is evicted or found stale (`Some`), or
    /// both queues are empty (`None`).
    fn step(&mut self) -> Option<Evicted<K, V, E>> {
        // Bounds the second chances one step may give, in case readers keep re-marking
        // entries while it runs.
        let mut chances = 4 * (self.small.len() + self.main.len()) + 1;
        loop {
            let from_small = self.small_weight > self.small_capacity || self.main.is_empty();
            let node = if from_small {
                self.small.pop_front()?
            } else {
                self.main.pop_front()?
            };
            if from_small {
                self.small_weight -= node.weight;
            } else {
                self.main_weight -= node.weight;
            }
            let cell = node.cell.upgrade();
            let Some(meta) = cell.as_ref().and_then(meta_of) else {
                // Its value is gone from the map and dropped: retired already.
                self.stale = self.stale.saturating_sub(1);
                return Some(Evicted {
                    node,
                    cell,
                    victim: false,
                });
            };
            if meta.state.load(Relaxed) != ADMITTED {
                // Retired (invalidated or replaced) while queued.
                self.stale = self.stale.saturating_sub(1);
                return Some(Evicted {
                    node,
                    cell,
                    victim: false,
                });
            }
            let freq = meta.freq.load(Relaxed);
            if freq > 0 && chances > 0 {
                chances -= 1;
                // Read while queued: a second chance, in the main queue.
                let freq = if from_small { 0 } else { freq - 1 };
                meta.freq.store(freq, Relaxed);
                self.main_weight += node.weight;
                self.main.push_back(node);
                // The upgraded handle goes here, under the lock: the map still holds the
                // value (it is ADMITTED), so this is never the last handle.
                drop(cell);
                continue;
            }
            if from_small {
                let ghosts = (self.small.len() + self.main.len()).max(8);
                self.ghost.push(node.hash, ghosts);
            }
            meta.state.store(REMOVED, Relaxed);
            self.live -= node.weight;
            return Some(Evicted {
                node,
                cell,
                victim: true,
            });
        }
    }
}

/// A node dropped by a compaction, with the handle upgraded to check it: dropped after the
/// lock is released.
type Dead<K, V, E> = (Node<K, V, E>, Option<CacheCell<V, E>>);

impl<K, V, E> Fifo<K, V, E> {
    /// Whether dead nodes are at least half the queues (and more than a few): worth a
    /// compaction, whose cost the retirements since the last one then pay for.
    fn needs_compaction(&self) -> bool {
        self.stale > 32 && self.stale * 2 > self.small.len() + self.main.len()
    }

    /// Drops the nodes whose values are gone (handing them, and the handles upgraded to
    /// check them, to `dead`, for the caller to drop with no lock held).
    fn compact(&mut self, dead: &mut Vec<Dead<K, V, E>>) {
        for queue in [&mut self.small, &mut self.main] {
            let mut kept = VecDeque::with_capacity(queue.len());
            for node in queue.drain(..) {
                let cell = node.cell.upgrade();
                let live = cell
                    .as_ref()
                    .and_then(meta_of)
                    .is_some_and(|m| m.state.load(Relaxed) == ADMITTED);
                if live {
                    kept.push_back(node);
                    // Not the last handle: the map holds the live value.
                    drop(cell);
                } else {
                    dead.push((node, cell));
                }
            }
            *queue = kept;
        }
        self.small_weight = self.small.iter().map(|n| n.weight).sum();
        self.main_weight = self.main.iter().map(|n| n.weight).sum();
        self.stale = 0;
    }
}

/// One policy shard, on its own cache line.
type Shard<K, V, E> = CachePadded<SpinMutex<Fifo<K, V, E>>>;

/// The eviction policy of a bounded cache: S3-FIFO in shards picked by key hash.
pub(crate) struct Policy<K, V, E> {
    shards: Box<[Shard<K, V, E>]>,
}

impl<K, V, E> Policy<K, V, E> {
    /// A policy for `capacity` weight units in `shards` shards (a power of two; fewer when
    /// the capacity is small, so that each shard keeps a useful share).
    pub(crate) fn new(capacity: u64, shards: usize) -> Self {
        // At least 256 units per shard, so that per-shard queues behave like one.
        let mut count = shards.max(1).next_power_of_two();
        while count > 1 && capacity / (count as u64) < 256 {
            count /= 2;
        }
        let per_shard = capacity / count as u64;
        let extra = capacity % count as u64;
        Policy {
            shards: (0..count)
                .map(|i| {
                    let cap = per_shard + u64::from((i as u64) < extra);
                    CachePadded::new(SpinMutex::new(Fifo::new(cap)))
                })
                .collect(),
        }
    }

    fn shard(&self, hash: u64) -> &SpinMutex<Fifo<K, V, E>> {
        // Low bits: the map picks its shard by the top ones.
        &self.shards[(hash as usize) & (self.shards.len() - 1)]
    }

    /// Whether `meta` may still need admitting: a hint read without the lock, so that the
    /// many waiters of one load do not all queue on the lock after the first admitted it.
    pub(crate) fn needs_admission(meta: &Meta) -> bool {
        meta.state.load(Relaxed) == NEW
    }

    /// Admits the complete value in `cell` (unless it was admitted or removed meanwhile),
    /// then evicts until the shard is within capacity. What eviction took out goes to
    /// `out`, for the caller to remove from the map and drop with no lock held.
    pub(crate) fn admit(
        &self,
        mut node: Node<K, V, E>,
        cell: &CacheCell<V, E>,
        weight: u32,
        out: &mut Vec<Evicted<K, V, E>>,
    ) {
        let Some(meta) = meta_of(cell) else { return };
        node.weight = u64::from(weight);
        let mut unused = None;
        self.shard(node.hash).with(|fifo| {
            if meta.state.load(Relaxed) != NEW {
                // Admitted by another caller, or removed, meanwhile.
                unused = Some(node);
                return;
            }
            meta.weight.store(weight, Relaxed);
            meta.state.store(ADMITTED, Relaxed);
            fifo.live += node.weight;
            fifo.push(node);
            while fifo.live > fifo.capacity {
                match fifo.step() {
                    Some(evicted) => out.push(evicted),
                    None => break,
                }
            }
        });
        // Dropped outside the lock: its key is user code.
        drop(unused);
    }

    /// Takes a value that left the map (invalidated or replaced) off the books: it is never
    /// admitted after this, and if it was, it no longer counts against capacity. The caller
    /// holds `cell` until this returns.
    pub(crate) fn retire(&self, hash: u64, cell: &CacheCell<V, E>) {
        let Some(meta) = meta_of(cell) else { return };
        let mut dead = Vec::new();
        self.shard(hash).with(|fifo| {
            let was = meta.state.load(Relaxed);
            meta.state.store(REMOVED, Relaxed);
            if was == ADMITTED {
                fifo.live -= meta.weight();
                // Its node stays queued until a step pops it; values that leave this way
                // rather than by eviction would otherwise pile nodes up in a cache that
                // never fills, so the queues are compacted once half of them is dead.
                fifo.stale += 1;
                if fifo.needs_compaction() {
                    fifo.compact(&mut dead);
                }
            }
        });
        // Keys and values are user code: dropped with no lock held.
        drop(dead);
    }

    /// Drops the nodes whose values are gone, in every shard (after `invalidate_all`), so
    /// that their allocations go now rather than when new values push them out.
    pub(crate) fn purge(&self) {
        for shard in self.shards.iter() {
            let mut dead = Vec::new();
            shard.with(|fifo| fifo.compact(&mut dead));
            drop(dead); // keys and values are user code: outside the lock
        }
    }

    /// The weight of admitted values (for `weighted_size`).
    pub(crate) fn weight(&self) -> u64 {
        self.shards.iter().map(|s| s.with(|f| f.live)).sum()
    }

    /// The total capacity.
    pub(crate) fn capacity(&self) -> u64 {
        self.shards.iter().map(|s| s.with(|f| f.capacity)).sum()
    }
}

impl<K, V, E> fmt::Debug for Policy<K, V, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policy")
            .field("shards", &self.shards.len())
            .field("weight", &self.weight())
            .field("capacity", &self.capacity())
            .finish()
    }
}
