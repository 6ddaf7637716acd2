//! One store shard's eviction books: S3-FIFO (Yang et al., SOSP 2023) over the values of
//! that shard's table, kept under the same write lock as the table (docs/value-slots.md,
//! "The policy").
//!
//! A shard keeps a small FIFO for new values (a tenth of its share of the capacity), a main
//! FIFO, and a ghost FIFO of the hashes of values lately evicted from the small queue. Reads
//! only bump a 2-bit use count (`freq`) in the value's slot (no lock but the read lock, no
//! queue move); the queues move only when something is stored:
//!
//! * a new value goes to the small queue, or straight to the main queue if its hash is a
//!   ghost (it was evicted lately and came back);
//! * leaving the small queue, a value that was read there moves to the main queue, and one
//!   that was not is evicted (its hash becomes a ghost): one-hit wonders and scans pass
//!   through without pushing out the working set;
//! * leaving the main queue, a value that was read goes round again with one use fewer, and
//!   one that was not is evicted.
//!
//! A queue position is a [`Pos`]: the key's hash, the value's `stamp` (unique in its shard,
//! never reused) and its weight; no key, no handle. A step finds the value by probing the
//! table for (hash, stamp) under the write lock it already holds: absent, the position is
//! dead (the value was invalidated, replaced or expired: counted in `stale` when it left),
//! and is dropped. Once half the positions are dead, a compaction drops them all.
//!
//! The books are exact by construction: every change to them is made under the write lock
//! of the table they describe, in the same critical section as the table's change.

use std::collections::VecDeque;

use hashbrown::HashTable;

use crate::loom::{AtomicU64, AtomicU8, Ordering::Relaxed};

/// A value's place in a queue: where to find it in the table (its key's hash and its
/// stamp), and what it weighs (the queue's weight counts dead positions too, until they
/// are popped or compacted away).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Pos {
    pub(crate) hash: u64,
    pub(crate) stamp: u64,
    pub(crate) weight: u32,
}

/// What one eviction step found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// A victim, off the books: the caller takes it out of the table.
    Out(Pos),
    /// The value being stored, which its own admission never evicts: set aside (with
    /// whether it came from the small queue), to be put back where it was.
    Held(Pos, bool),
    /// Both queues are empty.
    Empty,
    /// The cache was back within capacity when a victim came up (other threads made room
    /// meanwhile): it was put back, untouched.
    Enough,
}

/// Hashes of values lately evicted from a small queue, oldest first, and the same hashes
/// in a table for membership tests (a hash evicted twice is there twice: eight bytes a
/// ghost, no counts).
#[derive(Debug)]
struct Ghost {
    order: VecDeque<u64>,
    set: HashTable<u64>,
}

impl Ghost {
    fn new() -> Self {
        Ghost {
            order: VecDeque::new(),
            set: HashTable::new(),
        }
    }

    fn contains(&self, hash: u64) -> bool {
        self.set.find(hash, |&h| h == hash).is_some()
    }

    fn push(&mut self, hash: u64, cap: usize) {
        self.order.push_back(hash);
        self.set.insert_unique(hash, hash, |&h| h);
        while self.order.len() > cap {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Ok(entry) = self.set.find_entry(old, |&h| h == old) {
                entry.remove();
            }
        }
    }
}

/// One shard's books and queues.
#[derive(Debug)]
pub(crate) struct Books {
    small: VecDeque<Pos>,
    main: VecDeque<Pos>,
    ghost: Ghost,
    /// Weight of the positions queued in each, dead ones included: the queue sizes S3-FIFO
    /// steers by.
    small_weight: u64,
    main_weight: u64,
    /// Weight of the values of this shard on the books (its part of the cache's total).
    live: u64,
    /// Dead positions (values that left the table while queued): dead weight until a step
    /// pops them, or a compaction drops them.
    stale: usize,
    /// This shard's share of the cache's capacity: what steers where room is made.
    capacity: u64,
    small_capacity: u64,
}

impl Books {
    pub(crate) fn new(capacity: u64) -> Self {
        Books {
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

    /// The weight of this shard's values on the books.
    #[cfg(all(test, not(loom)))]
    pub(crate) fn live(&self) -> u64 {
        self.live
    }

    /// Whether this shard holds more than its share.
    pub(crate) fn over_share(&self) -> bool {
        self.live > self.capacity
    }

    /// Puts a stored value on the books: queued in the main queue if its hash is a ghost,
    /// in the small one otherwise. A value that weighs nothing is never queued (evicting
    /// it would free nothing): the caller does not push it.
    pub(crate) fn push(&mut self, pos: Pos) {
        debug_assert!(pos.weight > 0, "a weightless value is never queued");
        let weight = u64::from(pos.weight);
        if self.ghost.contains(pos.hash) {
            self.main_weight += weight;
            self.main.push_back(pos);
        } else {
            self.small_weight += weight;
            self.small.push_back(pos);
        }
        self.live += weight;
    }

    /// A value of `weight` (on the books: weighing something) left the table otherwise
    /// than by eviction: its weight goes off `live`, and its position is dead until a step
    /// pops it or a compaction drops it. Returns whether the queues are worth compacting
    /// now (see [`compact`](Self::compact)).
    #[must_use]
    pub(crate) fn left(&mut self, weight: u32) -> bool {
        debug_assert!(weight > 0, "a weightless value is never queued");
        self.live -= u64::from(weight);
        self.stale += 1;
        // At least half the queues dead (and more than a few): the retirements since the
        // last compaction pay for this one.
        self.stale > 32 && self.stale * 2 > self.small.len() + self.main.len()
    }

    /// One eviction step: takes positions off the queues' heads, dropping dead ones and
    /// giving second chances to the values read since they were queued, until one is
    /// evicted, the value stamped `exempt` (being stored) comes up, or both queues are
    /// empty. `freq` finds a position's value in the table (by hash and stamp) and gives
    /// its use count, or `None` if the value is gone. A victim is evicted only if its
    /// weight can still be taken off a `total` over `capacity` (the cache's); if not, it is
    /// put back and the step says `Enough`.
    pub(crate) fn step<'t>(
        &mut self,
        exempt: Option<u64>,
        total: &AtomicU64,
        capacity: u64,
        freq: impl Fn(&Pos) -> Option<&'t AtomicU8>,
    ) -> Step {
        // Bounds the second chances one step may give, in case readers keep re-marking
        // values while it runs (a position it re-queues is one it may meet again).
        let mut chances = 4 * (self.small.len() + self.main.len()) + 1;
        loop {
            let from_small = self.small_weight > self.small_capacity || self.main.is_empty();
            let popped = if from_small {
                self.small.pop_front()
            } else {
                self.main.pop_front()
            };
            let Some(pos) = popped else {
                return Step::Empty;
            };
            let weight = u64::from(pos.weight);
            if from_small {
                self.small_weight -= weight;
            } else {
                self.main_weight -= weight;
            }
            let Some(uses) = freq(&pos) else {
                // Dead: its value left the table (counted stale then).
                self.stale = self.stale.saturating_sub(1);
                continue;
            };
            if exempt == Some(pos.stamp) {
                return Step::Held(pos, from_small);
            }
            let f = uses.load(Relaxed);
            if f > 0 && chances > 0 {
                chances -= 1;
                // Read while queued: a second chance, in the main queue.
                uses.store(if from_small { 0 } else { f - 1 }, Relaxed);
                self.main_weight += weight;
                self.main.push_back(pos);
                continue;
            }
            // Claims the room this eviction makes, in one read-modify-write: two threads
            // that both saw the cache over capacity (each storing into its own shard) do
            // not both evict for one overflow. Relaxed: the total orders nothing (see
            // `Store::total`).
            let claimed =
                total.fetch_update(Relaxed, Relaxed, |t| (t > capacity).then(|| t - weight));
            if claimed.is_err() {
                self.restore(pos, from_small);
                return Step::Enough;
            }
            if from_small {
                let ghosts = (self.small.len() + self.main.len()).max(8);
                self.ghost.push(pos.hash, ghosts);
            }
            self.live -= weight;
            return Step::Out(pos);
        }
    }

    /// Puts back a position that `step` held or could not evict: at the head of the queue
    /// it came from, where it was (every position ahead of it was popped; those behind it
    /// were queued after it).
    pub(crate) fn restore(&mut self, pos: Pos, from_small: bool) {
        let weight = u64::from(pos.weight);
        if from_small {
            self.small_weight += weight;
            self.small.push_front(pos);
        } else {
            self.main_weight += weight;
            self.main.push_front(pos);
        }
    }

    /// Drops the dead positions from both queues: `alive` says whether a position's value
    /// is still in the table (by hash and stamp).
    pub(crate) fn compact(&mut self, alive: impl Fn(&Pos) -> bool) {
        for (queue, weight) in [
            (&mut self.small, &mut self.small_weight),
            (&mut self.main, &mut self.main_weight),
        ] {
            queue.retain(|pos| {
                let keep = alive(pos);
                if !keep {
                    *weight -= u64::from(pos.weight);
                }
                keep
            });
        }
        self.stale = 0;
        if self.small.is_empty() && self.main.is_empty() {
            // Nothing on the books: give the memory back (after `invalidate_all`).
            self.small = VecDeque::new();
            self.main = VecDeque::new();
        }
    }

    /// Every value of the shard left its table (`invalidate_all`): the books are emptied,
    /// their memory given back; the ghost stays. Returns the weight that was live, for the
    /// caller to take off the cache's total.
    pub(crate) fn clear(&mut self) -> u64 {
        let live = self.live;
        self.small = VecDeque::new();
        self.main = VecDeque::new();
        self.small_weight = 0;
        self.main_weight = 0;
        self.live = 0;
        self.stale = 0;
        live
    }

    /// Every queued position, for the books' checks.
    #[cfg(all(test, not(loom)))]
    pub(crate) fn positions(&self) -> impl Iterator<Item = &Pos> {
        self.small.iter().chain(self.main.iter())
    }

    /// The books' own sums, checked against `positions`: (small weight, main weight,
    /// small positions, stale).
    #[cfg(all(test, not(loom)))]
    pub(crate) fn check(&self, alive: impl Fn(&Pos) -> bool) {
        let small: u64 = self.small.iter().map(|p| u64::from(p.weight)).sum();
        let main: u64 = self.main.iter().map(|p| u64::from(p.weight)).sum();
        assert_eq!(small, self.small_weight, "the small queue's weight");
        assert_eq!(main, self.main_weight, "the main queue's weight");
        let live: u64 = self
            .positions()
            .filter(|p| alive(p))
            .map(|p| u64::from(p.weight))
            .sum();
        assert_eq!(live, self.live, "live weight");
        let dead = self.positions().filter(|p| !alive(p)).count();
        assert_eq!(dead, self.stale, "stale count");
    }
}

#[cfg(all(test, not(loom)))]
pub(crate) mod tests {
    //! The books against a model table, checked after every operation of seeded random runs:
    //! each queue's weight is its positions'; `live` is the weight of the positions whose
    //! value is in the table and `stale` the number of the others; every value in the table
    //! that weighs something has exactly one position; the total stays within capacity.

    use std::collections::HashMap;

    use super::{Books, Ghost, Pos, Step};
    use crate::loom::{AtomicU64, AtomicU8, Ordering::Relaxed};

    /// A one-shard "table": hash -> (stamp, weight, freq).
    type Table = HashMap<u64, (u64, u32, AtomicU8)>;

    fn alive(table: &Table) -> impl Fn(&Pos) -> bool + '_ {
        |p| table.get(&p.hash).is_some_and(|(s, ..)| *s == p.stamp)
    }

    fn check(books: &Books, table: &Table, total: &AtomicU64) {
        books.check(alive(table));
        let mut queued: HashMap<(u64, u64), usize> = HashMap::new();
        for p in books.positions() {
            *queued.entry((p.hash, p.stamp)).or_default() += 1;
        }
        for (hash, (stamp, weight, _)) in table {
            let n = queued.get(&(*hash, *stamp)).copied().unwrap_or(0);
            assert_eq!(
                n,
                usize::from(*weight > 0),
                "one position per weighed value"
            );
        }
        let held: u64 = table.values().map(|(_, w, _)| u64::from(*w)).sum();
        assert_eq!(held, books.live(), "the table's weight is the books'");
        assert_eq!(
            held,
            total.load(Relaxed),
            "one shard: the total is its live"
        );
    }

    /// A seeded xorshift generator, for the random runs here and in the store's.
    pub(crate) fn xorshift(seed: u64) -> impl FnMut() -> u64 {
        let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        }
    }

    /// A seeded run of stores (some weightless, some refused), reads and removals, as the
    /// store makes them under one write lock.
    fn run(seed: u64, capacity: u64, ops: usize, max_weight: u64) {
        let mut books = Books::new(capacity);
        let total = AtomicU64::new(0);
        let mut table: Table = HashMap::new();
        let mut next = xorshift(seed);
        let mut stamp = 0;
        let (mut evicted, mut refused) = (0, 0);
        for _ in 0..ops {
            let hash = next() % (capacity * 3);
            match next() % 10 {
                0..=5 => {
                    let weight = match next() % 10 {
                        0 => 0,
                        1 => 1 + next() % max_weight,
                        _ => 1 + next() % 3,
                    };
                    let weight = u32::try_from(weight).unwrap();
                    stamp += 1;
                    if let Some((_, w, _)) = table.remove(&hash) {
                        total.fetch_sub(u64::from(w), Relaxed);
                        if w > 0 && books.left(w) {
                            books.compact(alive(&table));
                        }
                    }
                    if capacity == 0 || u64::from(weight) > capacity {
                        refused += 1;
                        check(&books, &table, &total);
                        continue;
                    }
                    table.insert(hash, (stamp, weight, AtomicU8::new(0)));
                    if weight > 0 {
                        books.push(Pos {
                            hash,
                            stamp,
                            weight,
                        });
                        total.fetch_add(u64::from(weight), Relaxed);
                    }
                    let mut held = None;
                    while total.load(Relaxed) > capacity {
                        let step = books.step(Some(stamp), &total, capacity, |p| {
                            table
                                .get(&p.hash)
                                .filter(|(s, ..)| *s == p.stamp)
                                .map(|(.., f)| f)
                        });
                        match step {
                            Step::Out(pos) => {
                                assert_ne!(pos.stamp, stamp, "never its own admission");
                                table.remove(&pos.hash);
                                evicted += 1;
                            }
                            // Set aside, put back after the pass, as the store does.
                            Step::Held(pos, small) => held = Some((pos, small)),
                            Step::Empty | Step::Enough => break,
                        }
                    }
                    if let Some((pos, small)) = held {
                        books.restore(pos, small);
                    }
                }
                6..=7 => {
                    if let Some((.., f)) = table.get(&hash) {
                        let n = f.load(Relaxed);
                        if n < 3 {
                            f.store(n + 1, Relaxed);
                        }
                    }
                }
                _ => {
                    if let Some((_, w, _)) = table.remove(&hash) {
                        total.fetch_sub(u64::from(w), Relaxed);
                        if w > 0 && books.left(w) {
                            books.compact(alive(&table));
                        }
                    }
                }
            }
            check(&books, &table, &total);
            assert!(total.load(Relaxed) <= capacity, "within capacity");
        }
        assert!(evicted > 0 && refused > 0, "the run evicts and refuses");
        // Everything out at once (as `invalidate_all`): `clear` gives the live weight.
        let held: u64 = table.drain().map(|(_, (_, w, _))| u64::from(w)).sum();
        assert_eq!(books.clear(), held);
        total.fetch_sub(held, Relaxed);
        check(&books, &table, &total);
    }

    #[test]
    fn the_books_stay_exact_through_random_runs() {
        for seed in 1..=if cfg!(miri) { 2 } else { 40 } {
            run(seed, 64, if cfg!(miri) { 200 } else { 2_000 }, 80);
        }
    }

    #[test]
    fn the_books_stay_exact_with_heavy_values() {
        for seed in 1..=if cfg!(miri) { 1 } else { 4 } {
            run(seed, 1_024, if cfg!(miri) { 300 } else { 3_000 }, 1_500);
        }
    }

    #[test]
    fn replacements_compact_without_growing() {
        let mut books = Books::new(1_000);
        let mut table: Table = HashMap::new();
        let mut stamp = 0;
        for _ in 0..50 {
            for hash in 0..100 {
                stamp += 1;
                if let Some((_, w, _)) = table.insert(hash, (stamp, 1, AtomicU8::new(0))) {
                    if books.left(w) {
                        books.compact(alive(&table));
                    }
                }
                books.push(Pos {
                    hash,
                    stamp,
                    weight: 1,
                });
            }
        }
        books.check(alive(&table));
        // 5000 stores of 100 keys: dead positions are compacted once half are dead.
        assert!(books.positions().count() <= 300, "the queues grew");
    }

    #[test]
    fn a_ghost_evicted_twice_stays_until_both_age_out() {
        let mut ghost = Ghost::new();
        ghost.push(7, 3);
        ghost.push(8, 3);
        ghost.push(7, 3); // 7 again: [7, 8, 7]
        assert!(ghost.contains(7) && ghost.contains(8) && !ghost.contains(9));
        ghost.push(9, 3); // the first 7 ages out: [8, 7, 9]
        assert!(ghost.contains(7), "its second copy is still there");
        ghost.push(10, 3); // 8 ages out: [7, 9, 10]
        assert!(!ghost.contains(8));
        ghost.push(11, 3); // the second 7 ages out: [9, 10, 11]
        assert!(!ghost.contains(7));
        assert_eq!((ghost.order.len(), ghost.set.len()), (3, 3));
    }
}
