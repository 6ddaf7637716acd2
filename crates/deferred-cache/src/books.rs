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
//!   ghost (it was evicted lately and came back); a value that `insert` replaces in its
//!   slot goes to the tail of the queue the old one was in, with its use count;
//! * leaving the small queue, a value that was read there moves to the main queue, and one
//!   that was not is evicted (its hash becomes a ghost): one-hit wonders and scans pass
//!   through without pushing out the working set;
//! * leaving the main queue, a value that was read goes round again with one use fewer, and
//!   one that was not is evicted.
//!
//! A queue position is a [`Pos`]: the key's hash and the value's `stamp` (unique in its
//! shard, never reused), 16 bytes; no key, no handle, no weight. A step finds the value by
//! probing the table for (hash, stamp) under the write lock it already holds, and reads its
//! weight there: absent, the position is dead (the value was invalidated, replaced or
//! expired: counted in `stale` when it left), weighs nothing, and is dropped. Once half the
//! positions are dead, a compaction drops them all.
//!
//! The queues' weights count live positions only: a value that leaves the table otherwise
//! than by eviction takes its weight off the queue its position is in, which its slot
//! tells by the [`IN_MAIN`] bit of its use count byte (set when its position goes to the
//! main queue, only ever changed under the write lock).
//!
//! The books are exact by construction: every change to them is made under the write lock
//! of the table they describe, in the same critical section as the table's change.

use std::collections::VecDeque;

use hashbrown::HashTable;

use crate::loom::{AtomicU64, AtomicU8, Ordering::Relaxed};

/// The most uses a read records (the low bits of a value's use count byte).
pub(crate) const MAX_FREQ: u8 = 3;

/// The use count byte's bit saying that the value's position is in the main queue (clear:
/// in the small one, or not queued). Changed only under the shard's write lock, where no
/// reader runs; readers keep it as they found it (see [`touch`]).
pub(crate) const IN_MAIN: u8 = 0x80;

/// The uses recorded in a use count byte.
fn uses(byte: u8) -> u8 {
    byte & !IN_MAIN
}

/// Records a read in a value's use count byte. Stores only when the count changes, so that
/// readers of a hot key do not keep writing its cache line. Relaxed: a hint to the policy,
/// racy by design (a lost bump costs nothing but accuracy); the [`IN_MAIN`] bit, which only
/// the write lock's holder changes (no reader then), is stored back as it was read.
#[inline]
pub(crate) fn touch(freq: &AtomicU8) {
    let n = freq.load(Relaxed);
    if uses(n) < MAX_FREQ {
        freq.store(n + 1, Relaxed);
    }
}

/// Whether a value's position is in the main queue, by its use count byte (under the
/// write lock).
pub(crate) fn in_main(freq: &AtomicU8) -> bool {
    freq.load(Relaxed) & IN_MAIN != 0
}

/// A value's place in a queue: where to find it in the table (its key's hash and its
/// stamp). Its weight is read from its slot (a dead position weighs nothing).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Pos {
    pub(crate) hash: u64,
    pub(crate) stamp: u64,
}

/// What a step reads of a live position's value in the table: its use count byte and its
/// weight.
pub(crate) type Live<'t> = (&'t AtomicU8, u32);

/// A ghost: a hash folded to 32 bits (a false match only sends a new value to the main
/// queue).
fn fingerprint(hash: u64) -> u32 {
    (hash ^ (hash >> 32)) as u32
}

/// The ghost table's hash of a fingerprint: its bits in both halves, so that hashbrown's
/// h1 (low bits) and h2 (top 7) both vary.
fn ghost_hash(fp: u32) -> u64 {
    u64::from(fp) << 32 | u64::from(fp)
}

/// What one eviction step found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// A victim, off the books: the caller takes it out of the table.
    Out(Pos),
    /// The value being stored, which its own admission never evicts: set aside (with
    /// whether it came from the small queue, and its weight), to be put back where it was.
    Held(Pos, bool, u32),
    /// Both queues are empty.
    Empty,
    /// The cache was back within capacity when a victim came up (other threads made room
    /// meanwhile): it was put back, untouched.
    Enough,
}

/// Hashes of values lately evicted from a small queue, as 32-bit fingerprints, oldest
/// first, and the same fingerprints in a table for membership tests (one evicted twice is
/// there twice: about ten bytes a ghost, no counts).
#[derive(Debug)]
struct Ghost {
    order: VecDeque<u32>,
    set: HashTable<u32>,
}

impl Ghost {
    fn new() -> Self {
        Ghost {
            order: VecDeque::new(),
            set: HashTable::new(),
        }
    }

    fn contains(&self, hash: u64) -> bool {
        let fp = fingerprint(hash);
        self.set.find(ghost_hash(fp), |&h| h == fp).is_some()
    }

    fn push(&mut self, hash: u64, cap: usize) {
        let fp = fingerprint(hash);
        self.order.push_back(fp);
        self.set
            .insert_unique(ghost_hash(fp), fp, |&h| ghost_hash(h));
        while self.order.len() > cap {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Ok(entry) = self.set.find_entry(ghost_hash(old), |&h| h == old) {
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
    /// Weight of the live positions queued in each (a dead one weighs nothing): the queue
    /// sizes S3-FIFO steers by.
    small_weight: u64,
    main_weight: u64,
    /// Weight of the values of this shard on the books (its part of the cache's total).
    live: u64,
    /// Dead positions (values that left the table while queued): dropped when a step pops
    /// them, or by a compaction.
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

    /// Whether a value stored at `hash` goes to the main queue (its hash is a ghost): its
    /// slot's use count byte starts with [`IN_MAIN`] then.
    pub(crate) fn to_main(&self, hash: u64) -> bool {
        self.ghost.contains(hash)
    }

    /// Puts a stored value of `weight` on the books: queued in the main queue if `main`
    /// (what [`to_main`](Self::to_main) said, as its slot says), in the small one
    /// otherwise. A value that weighs nothing is never queued (evicting it would free
    /// nothing): the caller does not push it.
    pub(crate) fn push(&mut self, pos: Pos, weight: u32, main: bool) {
        debug_assert!(weight > 0, "a weightless value is never queued");
        let weight = u64::from(weight);
        if main {
            self.main_weight += weight;
            self.main.push_back(pos);
        } else {
            self.small_weight += weight;
            self.small.push_back(pos);
        }
        self.live += weight;
    }

    /// A value of `weight` (on the books: weighing something), queued in the main queue if
    /// `main`, left the table otherwise than by eviction: its weight goes off `live` and off
    /// its queue's, and its position is dead until a step pops it or a compaction drops it.
    /// Returns whether the queues are worth compacting now (see [`compact`](Self::compact)).
    #[must_use]
    pub(crate) fn left(&mut self, weight: u32, main: bool) -> bool {
        debug_assert!(weight > 0, "a weightless value is never queued");
        let weight = u64::from(weight);
        self.live -= weight;
        if main {
            self.main_weight -= weight;
        } else {
            self.small_weight -= weight;
        }
        self.stale += 1;
        // At least half the queues dead (and more than a few): the retirements since the
        // last compaction pay for this one.
        self.stale > 32 && self.stale * 2 > self.small.len() + self.main.len()
    }

    /// One eviction step: takes positions off the queues' heads, dropping dead ones and
    /// giving second chances to the values read since they were queued, until one is
    /// evicted, the value stamped `exempt` (being stored) comes up, or both queues are
    /// empty. `freq` finds a position's value in the table (by hash and stamp) and gives
    /// its use count byte and weight, or `None` if the value is gone. A victim is evicted
    /// only if its
    /// weight can still be taken off a `total` over `capacity` (the cache's); if not, it is
    /// put back and the step says `Enough`.
    pub(crate) fn step<'t>(
        &mut self,
        exempt: Option<u64>,
        total: &AtomicU64,
        capacity: u64,
        freq: impl Fn(&Pos) -> Option<Live<'t>>,
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
            let Some((uses, w)) = freq(&pos) else {
                // Dead: its value left the table (counted stale then, its weight taken
                // off its queue's).
                self.stale = self.stale.saturating_sub(1);
                continue;
            };
            let weight = u64::from(w);
            if from_small {
                self.small_weight -= weight;
            } else {
                self.main_weight -= weight;
            }
            if exempt == Some(pos.stamp) {
                return Step::Held(pos, from_small, w);
            }
            let byte = uses.load(Relaxed);
            let f = self::uses(byte);
            if f > 0 && chances > 0 {
                chances -= 1;
                // Read while queued: a second chance, in the main queue (its slot says so).
                uses.store(IN_MAIN | if from_small { 0 } else { f - 1 }, Relaxed);
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
                self.restore(pos, from_small, w);
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
    pub(crate) fn restore(&mut self, pos: Pos, from_small: bool, weight: u32) {
        let weight = u64::from(weight);
        if from_small {
            self.small_weight += weight;
            self.small.push_front(pos);
        } else {
            self.main_weight += weight;
            self.main.push_front(pos);
        }
    }

    /// Drops the dead positions from both queues: `alive` says whether a position's value
    /// is still in the table (by hash and stamp). They weigh nothing already.
    pub(crate) fn compact(&mut self, alive: impl Fn(&Pos) -> bool) {
        self.small.retain(|pos| alive(pos));
        self.main.retain(|pos| alive(pos));
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

    /// The books' own sums, checked against `positions`: each queue's weight is its live
    /// positions', whose values' slots say they are in that queue; `live` is both queues';
    /// `stale` the number of dead positions. `alive` gives a live position's value's weight
    /// and whether its slot says it is in the main queue.
    #[cfg(all(test, not(loom)))]
    pub(crate) fn check(&self, alive: impl Fn(&Pos) -> Option<(u32, bool)>) {
        let mut dead = 0;
        for (queue, weight, main) in [
            (&self.small, self.small_weight, false),
            (&self.main, self.main_weight, true),
        ] {
            let mut sum = 0u64;
            for p in queue {
                match alive(p) {
                    Some((w, m)) => {
                        assert_eq!(m, main, "{p:?}'s slot says which queue it is in");
                        sum += u64::from(w);
                    }
                    None => dead += 1,
                }
            }
            let name = if main { "main" } else { "small" };
            assert_eq!(sum, weight, "the {name} queue's weight");
        }
        assert_eq!(
            self.small_weight + self.main_weight,
            self.live,
            "live weight"
        );
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

    use super::{in_main, touch, Books, Ghost, Pos, Step, IN_MAIN};
    use crate::loom::{AtomicU64, AtomicU8, Ordering::Relaxed};

    /// A one-shard "table": hash -> (stamp, weight, freq).
    type Table = HashMap<u64, (u64, u32, AtomicU8)>;

    fn alive(table: &Table) -> impl Fn(&Pos) -> bool + '_ {
        |p| table.get(&p.hash).is_some_and(|(s, ..)| *s == p.stamp)
    }

    fn check(books: &Books, table: &Table, total: &AtomicU64) {
        books.check(|p| {
            let (s, w, f) = table.get(&p.hash)?;
            (*s == p.stamp).then(|| (*w, in_main(f)))
        });
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
                    if let Some((_, w, f)) = table.remove(&hash) {
                        total.fetch_sub(u64::from(w), Relaxed);
                        if w > 0 && books.left(w, in_main(&f)) {
                            books.compact(alive(&table));
                        }
                    }
                    if capacity == 0 || u64::from(weight) > capacity {
                        refused += 1;
                        check(&books, &table, &total);
                        continue;
                    }
                    let main = weight > 0 && books.to_main(hash);
                    let byte = if main { IN_MAIN } else { 0 };
                    table.insert(hash, (stamp, weight, AtomicU8::new(byte)));
                    if weight > 0 {
                        books.push(Pos { hash, stamp }, weight, main);
                        total.fetch_add(u64::from(weight), Relaxed);
                    }
                    let mut held = None;
                    while total.load(Relaxed) > capacity {
                        let step = books.step(Some(stamp), &total, capacity, |p| {
                            table
                                .get(&p.hash)
                                .filter(|(s, ..)| *s == p.stamp)
                                .map(|(_, w, f)| (f, *w))
                        });
                        match step {
                            Step::Out(pos) => {
                                assert_ne!(pos.stamp, stamp, "never its own admission");
                                table.remove(&pos.hash);
                                evicted += 1;
                            }
                            // Set aside, put back after the pass, as the store does.
                            Step::Held(pos, small, w) => held = Some((pos, small, w)),
                            Step::Empty | Step::Enough => break,
                        }
                    }
                    if let Some((pos, small, w)) = held {
                        books.restore(pos, small, w);
                    }
                }
                6..=7 => {
                    if let Some((.., f)) = table.get(&hash) {
                        touch(f);
                    }
                }
                _ => {
                    if let Some((_, w, f)) = table.remove(&hash) {
                        total.fetch_sub(u64::from(w), Relaxed);
                        if w > 0 && books.left(w, in_main(&f)) {
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
                let main = books.to_main(hash);
                let byte = AtomicU8::new(if main { IN_MAIN } else { 0 });
                if let Some((_, w, f)) = table.insert(hash, (stamp, 1, byte)) {
                    if books.left(w, in_main(&f)) {
                        books.compact(alive(&table));
                    }
                }
                books.push(Pos { hash, stamp }, 1, main);
            }
        }
        books.check(|p| {
            let (s, w, f) = table.get(&p.hash)?;
            (*s == p.stamp).then(|| (*w, in_main(f)))
        });
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
