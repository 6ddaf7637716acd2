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
//!
//! Capacity belongs to the cache, not to a shard. Each shard has a share of it, which
//! steers where room is made, but the bound is the cache's total weight (one atomic):
//!
//! * a value heavier than the whole capacity (or any value, at capacity 0) is refused before
//!   it is queued, so that it takes nothing else with it;
//! * while the total is over capacity, the admitting shard evicts from itself if it is over
//!   its share, then shards over their share give way, then any shard does: a value lighter
//!   than the capacity is kept whatever the split, and a value is never evicted by its own
//!   admission;
//! * a value that weighs nothing frees nothing: it is never queued, so never a candidate.
//!
//! Only one shard lock is held at a time.

use std::{collections::VecDeque, fmt};

use crossbeam_utils::CachePadded;
use deferred_core::WeakLazy;
use deferred_map::Lazy;
use hashbrown::HashTable;

use crate::{
    error::Failure,
    lock::ShardMutex,
    loom::{AtomicU64, Ordering::Relaxed},
    stored::{CacheCell, Meta, Stored, ADMITTED, NEW, REMOVED},
};

/// A queued entry: its key's hash, and a weak handle to its cell, so that a value removed
/// from the map is dropped at once, not when its node comes round. No key: the hash and
/// the cell find the entry in the map (`DeferredMap::remove_cell_hashed`), and the map
/// hands back the key of what it removed, so a bounded cache keeps each key once.
pub(crate) struct Node<V, E> {
    pub(crate) hash: u64,
    weight: u64,
    cell: WeakLazy<Stored<V>, Failure<E>>,
}

impl<V, E> Node<V, E> {
    pub(crate) fn new(hash: u64, cell: &CacheCell<V, E>) -> Self {
        Node {
            hash,
            weight: 1,
            cell: Lazy::downgrade(cell),
        }
    }
}

/// What eviction took out: the cache removes each victim from the map, and drops
/// everything after the policy lock is released (values are user code).
pub(crate) struct Evicted<V, E> {
    pub(crate) node: Node<V, E>,
    /// The cell, upgraded from the node's weak handle; `None` if it was already gone.
    pub(crate) cell: Option<CacheCell<V, E>>,
    /// Whether the node was a live value to remove from the map (not a stale node).
    pub(crate) victim: bool,
}

/// What one eviction step found.
enum Step<V, E> {
    /// A victim, or a stale node.
    Out(Evicted<V, E>),
    /// The value being admitted, which its own admission never evicts: set aside (with
    /// whether it came from the small queue), to be put back where it was.
    Held(Node<V, E>, bool),
    /// Both queues are empty.
    Empty,
    /// The cache was back within capacity when a victim came up (other threads made room
    /// meanwhile): it was put back, untouched.
    Enough,
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
struct Fifo<V, E> {
    small: VecDeque<Node<V, E>>,
    main: VecDeque<Node<V, E>>,
    ghost: Ghost,
    /// Weight of the nodes in each queue, stale ones included: the queue sizes S3-FIFO
    /// steers by.
    small_weight: u64,
    main_weight: u64,
    /// Weight of the ADMITTED values in this shard (their share of the cache's total).
    live: u64,
    /// Queued nodes whose values were retired (invalidated, replaced, expired) while
    /// queued: dead weight until a step pops them, or a compaction drops them.
    stale: usize,
    /// This shard's share of the cache's capacity: what steers where room is made.
    capacity: u64,
    small_capacity: u64,
}

impl<V, E> Fifo<V, E> {
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

    fn push(&mut self, node: Node<V, E>) {
        if self.ghost.contains(node.hash) {
            self.main_weight += node.weight;
            self.main.push_back(node);
        } else {
            self.small_weight += node.weight;
            self.small.push_back(node);
        }
    }

    /// One eviction step: takes nodes off the queues' heads, giving second chances to the
    /// values read since they were queued, until one is evicted or found stale, the value
    /// `exempt` (being admitted) comes up, or both queues are empty. A victim is evicted
    /// only if its weight can still be taken off a `total` over `capacity` (the cache's);
    /// if not, it is put back and the step says `Enough`.
    fn step(&mut self, exempt: Option<&Meta>, total: &AtomicU64, capacity: u64) -> Step<V, E> {
        // Bounds the second chances one step may give, in case readers keep re-marking
        // entries while it runs.
        let mut chances = 4 * (self.small.len() + self.main.len()) + 1;
        loop {
            let from_small = self.small_weight > self.small_capacity || self.main.is_empty();
            let popped = if from_small {
                self.small.pop_front()
            } else {
                self.main.pop_front()
            };
            let Some(node) = popped else {
                return Step::Empty;
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
                return Step::Out(Evicted {
                    node,
                    cell,
                    victim: false,
                });
            };
            if meta.state.load(Relaxed) != ADMITTED {
                // Retired (invalidated or replaced) while queued.
                self.stale = self.stale.saturating_sub(1);
                return Step::Out(Evicted {
                    node,
                    cell,
                    victim: false,
                });
            }
            if exempt.is_some_and(|m| core::ptr::eq(m, meta)) {
                // Not the last handle: the map holds the value (it is ADMITTED).
                drop(cell);
                return Step::Held(node, from_small);
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
            // Claims the room this eviction makes, in one read-modify-write: two threads
            // that both saw the cache over capacity (each admitting into its own shard) do
            // not both evict for one overflow.
            let claimed = total.fetch_update(Relaxed, Relaxed, |t| {
                (t > capacity).then(|| t - node.weight)
            });
            if claimed.is_err() {
                drop(cell); // not the last handle: the map holds the value
                self.restore(node, from_small);
                return Step::Enough;
            }
            if from_small {
                let ghosts = (self.small.len() + self.main.len()).max(8);
                self.ghost.push(node.hash, ghosts);
            }
            meta.state.store(REMOVED, Relaxed);
            self.live -= node.weight;
            return Step::Out(Evicted {
                node,
                cell,
                victim: true,
            });
        }
    }

    /// Puts back a node that `step` held: at the head of the queue it came from, where it
    /// was (every node ahead of it was popped; those behind it were queued after it).
    fn restore(&mut self, node: Node<V, E>, from_small: bool) {
        if from_small {
            self.small_weight += node.weight;
            self.small.push_front(node);
        } else {
            self.main_weight += node.weight;
            self.main.push_front(node);
        }
    }
}

/// A node dropped by a compaction, with the handle upgraded to check it: dropped after the
/// lock is released.
type Dead<V, E> = (Node<V, E>, Option<CacheCell<V, E>>);

impl<V, E> Fifo<V, E> {
    /// Whether dead nodes are at least half the queues (and more than a few): worth a
    /// compaction, whose cost the retirements since the last one then pay for.
    fn needs_compaction(&self) -> bool {
        self.stale > 32 && self.stale * 2 > self.small.len() + self.main.len()
    }

    /// Drops the nodes whose values are gone (handing them, and the handles upgraded to
    /// check them, to `dead`, for the caller to drop with no lock held).
    fn compact(&mut self, dead: &mut Vec<Dead<V, E>>) {
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
type Shard<V, E> = CachePadded<ShardMutex<Fifo<V, E>>>;

/// The eviction policy of a bounded cache: S3-FIFO in shards picked by key hash, bounded
/// by the cache's total weight.
pub(crate) struct Policy<V, E> {
    shards: Box<[Shard<V, E>]>,
    /// The cache's capacity: the sum of the shards' shares.
    capacity: u64,
    /// The weight of the ADMITTED values, all shards together: the sum of the shards'
    /// `live`, changed with them under a shard lock. Relaxed: it orders nothing (each
    /// `Meta` is ordered by its shard's lock); every change is a read-modify-write, so a
    /// thread that added weight reads a total that includes its addition (the last one to
    /// add makes room for all), and an eviction takes its weight off only while the total
    /// is over capacity (so that concurrent admissions do not evict twice for one overflow).
    total: CachePadded<AtomicU64>,
}

impl<V, E> Policy<V, E> {
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
                    CachePadded::new(ShardMutex::new(Fifo::new(cap)))
                })
                .collect(),
            capacity,
            total: CachePadded::new(AtomicU64::new(0)),
        }
    }

    /// Whether the admitted values weigh more than the capacity.
    fn over(&self) -> bool {
        self.total.load(Relaxed) > self.capacity
    }

    /// Evicts from `fifo` while the cache is over capacity and, unless `any`, this shard
    /// is over its share; never `exempt` (the value being admitted). Victims go to `out`.
    fn shrink(
        &self,
        fifo: &mut Fifo<V, E>,
        exempt: Option<&Meta>,
        any: bool,
        out: &mut Vec<Evicted<V, E>>,
    ) {
        let mut held = None;
        // Each turn takes a node off the queues for good, or sets `exempt` aside (once):
        // bounded by the queues' length, whatever readers do meanwhile.
        while (any || fifo.live > fifo.capacity) && self.over() {
            match fifo.step(exempt, &self.total, self.capacity) {
                Step::Out(evicted) => out.push(evicted),
                Step::Held(node, from_small) => held = Some((node, from_small)),
                Step::Empty | Step::Enough => break,
            }
        }
        if let Some((node, from_small)) = held {
            fifo.restore(node, from_small);
        }
    }

    /// Makes room in the shards other than `home` (whose own pass is done), one lock at a
    /// time: first in the shards over their share, then, if that is not enough (a value
    /// heavier than its shard's share), in any shard, `home` last. Ends within capacity
    /// unless the queues run out, which they do only for a value heavier than the
    /// capacity (refused before it gets here).
    fn reclaim(&self, home: usize, exempt: &Meta, out: &mut Vec<Evicted<V, E>>) {
        let n = self.shards.len();
        for any in [false, true] {
            for k in 1..=n {
                let j = (home + k) & (n - 1);
                if j == home && !any {
                    continue;
                }
                self.shards[j].with(|fifo| self.shrink(fifo, Some(exempt), any, out));
                if !self.over() {
                    return;
                }
            }
        }
    }

    /// The index of the shard for `hash`.
    fn index(&self, hash: u64) -> usize {
        // Low bits: the map picks its shard by the top ones.
        (hash as usize) & (self.shards.len() - 1)
    }

    fn shard(&self, hash: u64) -> &ShardMutex<Fifo<V, E>> {
        &self.shards[self.index(hash)]
    }

    /// Whether `meta` may still need admitting: a hint read without the lock, so that the
    /// many waiters of one load do not all queue on the lock after the first admitted it.
    pub(crate) fn needs_admission(meta: &Meta) -> bool {
        meta.state.load(Relaxed) == NEW
    }

    /// Admits the complete value in `cell` (unless it was admitted or removed meanwhile),
    /// then evicts other values until the cache is within capacity. A value heavier than
    /// the capacity, any value at capacity 0, or a value of unknown weight (`None`: its
    /// weigher panicked) is refused instead: it goes to `out` as a victim, and nothing else
    /// moves. What eviction took out goes to `out`, for the caller to remove from the map
    /// and drop with no lock held.
    pub(crate) fn admit(
        &self,
        mut node: Node<V, E>,
        cell: &CacheCell<V, E>,
        weight: Option<u32>,
        out: &mut Vec<Evicted<V, E>>,
    ) {
        let Some(meta) = meta_of(cell) else { return };
        let refuse = weight.map_or(true, |w| self.capacity == 0 || u64::from(w) > self.capacity);
        let weight = weight.unwrap_or(0);
        node.weight = u64::from(weight);
        let home = self.index(node.hash);
        let mut unused = None;
        let mut admitted = false;
        self.shards[home].with(|fifo| {
            if meta.state.load(Relaxed) != NEW {
                // Admitted by another caller, or removed, meanwhile.
                unused = Some(node);
                return;
            }
            if refuse {
                // Never queued, never counted: it takes nothing else with it.
                meta.state.store(REMOVED, Relaxed);
                out.push(Evicted {
                    node,
                    cell: Some(cell.clone()),
                    victim: true,
                });
                return;
            }
            meta.weight.store(weight, Relaxed);
            meta.state.store(ADMITTED, Relaxed);
            if node.weight == 0 {
                // Evicting it would free nothing: counted (as nothing), never queued, so
                // never a candidate. It leaves when it is invalidated, replaced or expired.
                unused = Some(node);
                return;
            }
            admitted = true;
            fifo.live += node.weight;
            self.total.fetch_add(node.weight, Relaxed);
            fifo.push(node);
            self.shrink(fifo, Some(meta), false, out);
        });
        if admitted && self.over() {
            self.reclaim(home, meta, out);
        }
        // A weak handle: dropped outside the lock, with nothing that needs it.
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
            let weight = meta.weight();
            if was == ADMITTED && weight > 0 {
                fifo.live -= weight;
                self.total.fetch_sub(weight, Relaxed);
                // Its node stays queued until a step pops it; values that leave this way
                // rather than by eviction would otherwise pile nodes up in a cache that
                // never fills, so the queues are compacted once half of them is dead.
                // (A value that weighs nothing was never queued.)
                fifo.stale += 1;
                if fifo.needs_compaction() {
                    fifo.compact(&mut dead);
                }
            }
        });
        // Values are user code: dropped with no lock held.
        drop(dead);
    }

    /// Drops the nodes whose values are gone, in every shard (after `invalidate_all`), so
    /// that their allocations go now rather than when new values push them out.
    pub(crate) fn purge(&self) {
        for shard in self.shards.iter() {
            let mut dead = Vec::new();
            shard.with(|fifo| fifo.compact(&mut dead));
            drop(dead); // values are user code: outside the lock
        }
    }

    /// The weight of admitted values (for `weighted_size`).
    pub(crate) fn weight(&self) -> u64 {
        self.total.load(Relaxed)
    }

    /// The total capacity.
    pub(crate) fn capacity(&self) -> u64 {
        self.capacity
    }
}

impl<V, E> fmt::Debug for Policy<V, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policy")
            .field("shards", &self.shards.len())
            .field("weight", &self.weight())
            .field("capacity", &self.capacity())
            .finish()
    }
}
