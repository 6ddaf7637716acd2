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
use deferred_core::sync::SpinMutex;
use hashbrown::HashTable;

use crate::loom::{AtomicU32, AtomicU8, Ordering::Relaxed};

/// Not admitted yet (a value that just finished loading, or was just inserted).
const NEW: u8 = 0;
/// In a queue of its policy shard, and counted in its weight.
const ADMITTED: u8 = 1;
/// Gone from the map (evicted, invalidated or replaced); its node, if any, is stale.
const REMOVED: u8 = 2;

/// The most uses a read records.
const MAX_FREQ: u8 = 3;

/// The policy's view of one stored value, shared by the value and its queue node.
pub(crate) struct Meta {
    /// Reads since the entry last left a queue, saturating at `MAX_FREQ`. Relaxed: a hint
    /// to the policy, racy by design (a lost bump costs nothing but accuracy).
    freq: AtomicU8,
    /// NEW / ADMITTED / REMOVED; changed only under the policy shard's lock, which orders
    /// it. Read without the lock only as a hint (see `Policy::admit`).
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

/// A queued entry.
pub(crate) struct Node<K> {
    pub(crate) key: K,
    pub(crate) hash: u64,
    pub(crate) meta: Arc<Meta>,
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

    fn clear(&mut self) {
        self.order.clear();
        self.counts.clear();
    }
}

/// One shard's queues.
struct Fifo<K> {
    small: VecDeque<Node<K>>,
    main: VecDeque<Node<K>>,
    ghost: Ghost,
    /// Weight of the nodes in each queue, stale ones included.
    small_weight: u64,
    main_weight: u64,
    /// Weight of the stale nodes (REMOVED after they were admitted), still queued.
    stale: u64,
    capacity: u64,
    small_capacity: u64,
}

/// What one eviction step did.
enum Step<K> {
    /// Took this node out: remove its entry from the map.
    Victim(Node<K>),
    /// Dropped a stale node.
    Discarded,
    /// Both queues are empty.
    Empty,
}

impl<K> Fifo<K> {
    fn new(capacity: u64) -> Self {
        Fifo {
            small: VecDeque::new(),
            main: VecDeque::new(),
            ghost: Ghost::new(),
            small_weight: 0,
            main_weight: 0,
            stale: 0,
            capacity,
            small_capacity: capacity / 10,
        }
    }

    fn live(&self) -> u64 {
        (self.small_weight + self.main_weight).saturating_sub(self.stale)
    }

    fn push(&mut self, node: Node<K>) {
        let weight = node.meta.weight();
        if self.ghost.contains(node.hash) {
            self.main_weight += weight;
            self.main.push_back(node);
        } else {
            self.small_weight += weight;
            self.small.push_back(node);
        }
    }

    /// Takes a popped node whose entry is gone: it only leaves the books.
    fn is_stale(&mut self, node: &Node<K>) -> bool {
        if node.meta.state.load(Relaxed) == REMOVED {
            self.stale = self.stale.saturating_sub(node.meta.weight());
            true
        } else {
            false
        }
    }

    fn step(&mut self) -> Step<K> {
        // Bounds the second chances one step may give, in case readers keep re-marking
        // entries while it runs.
        let mut chances = 4 * (self.small.len() + self.main.len()) + 1;
        loop {
            if self.small_weight > self.small_capacity || self.main.is_empty() {
                let Some(node) = self.small.pop_front() else {
                    return Step::Empty;
                };
                let weight = node.meta.weight();
                self.small_weight -= weight;
                if self.is_stale(&node) {
                    return Step::Discarded;
                }
                if node.meta.freq.load(Relaxed) > 0 && chances > 0 {
                    chances -= 1;
                    node.meta.freq.store(0, Relaxed);
                    self.main_weight += weight;
                    self.main.push_back(node);
                    continue;
                }
                let ghosts = (self.small.len() + self.main.len()).max(8);
                self.ghost.push(node.hash, ghosts);
                node.meta.state.store(REMOVED, Relaxed);
                return Step::Victim(node);
            }
            let Some(node) = self.main.pop_front() else {
                return Step::Empty;
            };
            let weight = node.meta.weight();
            self.main_weight -= weight;
            if self.is_stale(&node) {
                return Step::Discarded;
            }
            let freq = node.meta.freq.load(Relaxed);
            if freq > 0 && chances > 0 {
                chances -= 1;
                node.meta.freq.store(freq - 1, Relaxed);
                self.main_weight += weight;
                self.main.push_back(node);
                continue;
            }
            node.meta.state.store(REMOVED, Relaxed);
            return Step::Victim(node);
        }
    }
}

/// The eviction policy of a bounded cache: S3-FIFO in shards picked by key hash.
pub(crate) struct Policy<K> {
    shards: Box<[CachePadded<SpinMutex<Fifo<K>>>]>,
    shift: u32,
}

impl<K> Policy<K> {
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
            shift: u64::BITS - count.trailing_zeros(),
        }
    }

    fn shard(&self, hash: u64) -> &SpinMutex<Fifo<K>> {
        // Low bits: the map picks its shard by the top ones.
        let index = if self.shift == u64::BITS {
            0
        } else {
            (hash as usize) & (self.shards.len() - 1)
        };
        &self.shards[index]
    }

    /// Whether `meta` may still need admitting: a hint read without the lock, so that the
    /// many waiters of one load do not all queue on the lock after the first admitted it.
    pub(crate) fn needs_admission(meta: &Meta) -> bool {
        meta.state.load(Relaxed) == NEW
    }

    /// Admits a complete value (unless it was removed meanwhile), then evicts until the
    /// shard is within capacity. Returns the nodes evicted, whose entries the caller removes
    /// from the map (after the lock is released: that drops user values).
    pub(crate) fn admit(&self, node: Node<K>, weight: u32, evicted: &mut Vec<Node<K>>) {
        let mut node = Some(node);
        self.shard(node.as_ref().map_or(0, |n| n.hash))
            .with(|fifo| {
                let Some(n) = node.take() else { return };
                if n.meta.state.load(Relaxed) != NEW {
                    // Removed (or admitted by another caller) meanwhile.
                    node = Some(n);
                    return;
                }
                n.meta.weight.store(weight, Relaxed);
                n.meta.state.store(ADMITTED, Relaxed);
                fifo.push(n);
                while fifo.live() > fifo.capacity {
                    match fifo.step() {
                        Step::Victim(v) => evicted.push(v),
                        Step::Discarded => {}
                        Step::Empty => break,
                    }
                }
            });
        // A node not admitted is dropped here, outside the lock (its key is user code).
        drop(node);
    }

    /// Marks a value removed from the map (invalidated or replaced), so that it is never
    /// admitted and, if it already was, no longer counts against capacity.
    pub(crate) fn retire(&self, hash: u64, meta: &Meta) {
        self.shard(hash).with(|fifo| {
            if meta.state.load(Relaxed) == ADMITTED {
                fifo.stale += meta.weight();
            }
            meta.state.store(REMOVED, Relaxed);
        });
    }

    /// Forgets every queued node. The caller clears the map.
    pub(crate) fn clear(&self) {
        for shard in self.shards.iter() {
            let (small, main) = shard.with(|fifo| {
                for node in fifo.small.iter().chain(fifo.main.iter()) {
                    node.meta.state.store(REMOVED, Relaxed);
                }
                fifo.small_weight = 0;
                fifo.main_weight = 0;
                fifo.stale = 0;
                fifo.ghost.clear();
                (
                    core::mem::take(&mut fifo.small),
                    core::mem::take(&mut fifo.main),
                )
            });
            drop((small, main)); // keys are user code: outside the lock
        }
    }

    /// The weight of admitted values still counted (for tests and `Debug`).
    pub(crate) fn weight(&self) -> u64 {
        self.shards.iter().map(|s| s.with(|f| f.live())).sum()
    }

    /// The total capacity.
    pub(crate) fn capacity(&self) -> u64 {
        self.shards.iter().map(|s| s.with(|f| f.capacity)).sum()
    }
}

impl<K> fmt::Debug for Policy<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policy")
            .field("shards", &self.shards.len())
            .field("weight", &self.weight())
            .field("capacity", &self.capacity())
            .finish()
    }
}
