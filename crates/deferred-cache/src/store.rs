//! `Store`: the cache's own sharded table, whose slots hold complete values inline and a
//! `Lazy` cell only while a load is in flight (docs/value-slots.md).
//!
//! A shard is one lock over its table and its eviction books ([`Books`]): every write
//! stores its slot, puts it on the books and evicts within its shard under that one write
//! lock, so the books are exact per shard by construction. A slot is `Ready` (the value,
//! its use count, its weight and its `stamp`, unique in the shard: no allocation of its
//! own) or `Loading { cell, interest }`. The load protocols, each under one shard's write
//! lock:
//!
//! * **Load.** A miss puts a `Loading` slot with a fresh cell whose computation is the
//!   loader; the load is known by its cell's address (its [`LoadId`]); callers that miss
//!   meanwhile join it (`interest += 1`). The cell is driven by its waiters, outside the lock.
//! * **Settle.** When the loader returns, the computation weighs the value (no lock held),
//!   then settles its own slot, once, inside the poll that ran it: a value first completes
//!   the cell (so that a value put by [`Store::put_absent`] and the load's value cannot
//!   both win), then, if that won, replaces the slot that is still `Loading` with this
//!   cell by `Ready` (on the books, evicting as need be); an error or a `None` likewise
//!   fails the cell first, then, if that won, removes that slot (until then the slot reads
//!   as absent, and a caller that misses replaces it). A slot that is gone (removed) or is
//!   another (a write replaced it, a new load) is left alone: nothing is stored. Whoever
//!   completes a load's cell settles its slot; waiters that get the outcome take no lock.
//! * **Cancellation.** A waiter that leaves before the load ends takes one `interest`
//!   back; the last one removes the `Loading` slot with its cell and aborts the cell, which
//!   drops the computation (unless the cell is complete: its completer settles the slot).
//!   `put_absent` holds one interest while it completes the cell and stores its value; a
//!   blocking load ([`Store::claim`]) holds one until its loader returns.
//! * **Panics.** The computation's drop guard (`Unsettled`), run while the panic unwinds
//!   through the poll that drove it (the loader's, or the clone of its value's), completes
//!   the cell as panicked and, if that won, removes the `Loading` slot with its cell, so
//!   the next read loads again.
//!
//! Capacity is the cache's (one total, `Bound::total`): a write that leaves the total over
//! capacity evicts in its own shard while that shard is over its share, then, with no lock
//! held, in the others one write lock at a time (`reclaim`).
//!
//! No user code runs under a shard lock but keys' `Eq` and values' `Clone` (as in the
//! map): loaders and the weigher run before it is taken, and what a call takes out of the
//! table (values, keys, cells, whose drops may drop a computation and so run its guard,
//! which takes the lock again) is told to the listener and dropped after it is released.

use std::{
    borrow::Borrow,
    fmt,
    future::Future,
    hash::{BuildHasher, Hash},
    pin::Pin,
    sync::{Arc, Weak},
    task::{Context, Poll},
};

use crossbeam_utils::CachePadded;
use deferred_core::{Error, Lazy, OwnedLazyWait, WeakLazy};
use hashbrown::HashTable;

use crate::{
    books::{in_main, touch, Books, Live, Pos, Step, IN_MAIN},
    cache::{caught, Weigher},
    error::Failure,
    listener::Listener,
    lock::ShardLock,
    loom::{AtomicU64, AtomicU8, Ordering::Relaxed},
    stats::Counters,
    trace, RemovalCause,
};

/// The cell of a load in flight.
pub(crate) type LoadCell<V, E> = Lazy<V, Failure<E>>;

/// A load in flight, as its settle, its drop guard and its waiters find its slot: the
/// address of its cell. Whoever compares one holds a handle to that cell (a waiter a
/// `Lazy`, the computation and its guard a `WeakLazy`, which keeps the allocation), so no
/// other cell can have that address meanwhile: unlike a counter, it never wraps onto a
/// newer load (rev3: a `u32` per shard did, after 2^32 misses in the shard).
pub(crate) type LoadId = usize;

pub(crate) fn load_id<V, E>(cell: &LoadCell<V, E>) -> LoadId {
    LoadCell::as_ptr(cell) as usize
}

/// A waiter's link on a load's cell.
type LoadWait<V, E> = Pin<Box<OwnedLazyWait<V, Failure<E>>>>;

/// What a slot holds.
pub(crate) enum State<V, E> {
    /// A complete value, with the policy's view of it (its fields inline, so that the
    /// small ones share the tag's word: 24 bytes for a `u64` value).
    Ready {
        value: V,
        /// Reads since the value last left a queue, saturating at `MAX_FREQ` (see
        /// [`touch`]); read and reset by eviction steps under the write lock, which also
        /// keep its [`IN_MAIN`] bit (which queue the value's position is in).
        freq: AtomicU8,
        /// What it counts against capacity (0 when unbounded, or weightless: never
        /// queued).
        weight: u32,
        /// Unique in its shard (a `u64` counter that never wraps): this stored value, as
        /// the books and `remove_all_if` find it.
        stamp: u64,
    },
    /// A load in flight: its cell (driven by its waiters; its address is the load's
    /// [`LoadId`]), the number of waiters counting on it (see [`Store::uninterested`]), and
    /// the stamp its value takes when it settles (rev4: so that `remove_all_if` finds by
    /// one stamp a load whose value is out, settled or not).
    Loading {
        cell: LoadCell<V, E>,
        interest: u32,
        stamp: u64,
    },
}

impl<V, E> State<V, E> {
    /// Whether this is the load `id`.
    fn is_load(&self, id: LoadId) -> bool {
        matches!(self, State::Loading { cell, .. } if load_id(cell) == id)
    }

    /// Whether this is the value (or the load that settles as the value) stamped `stamp`.
    fn is_stamp(&self, stamp: u64) -> bool {
        self.stamp() == stamp
    }

    fn stamp(&self) -> u64 {
        match self {
            State::Ready { stamp, .. } | State::Loading { stamp, .. } => *stamp,
        }
    }

    /// The value this state holds: a `Ready` value, or the value of a load whose cell has
    /// it but whose settle has not stored it yet. Its waiters may have it already, and a
    /// caller that got it must find it (rev3): a read finds it, and so must every write
    /// that acts on values, `iter`, and the listener when it leaves (rev4).
    fn value(&self) -> Option<&V> {
        match self {
            State::Ready { value, .. } => Some(value),
            State::Loading { cell, .. } => match cell.try_get() {
                Some(Ok(value)) => Some(value),
                _ => None,
            },
        }
    }
}

/// One entry: no hash of its own (8 bytes an entry); the table rehashes keys when it grows,
/// under the write lock (keys' `Hash` is one of the user code a shard lock covers).
pub(crate) struct Slot<K, V, E> {
    pub(crate) key: K,
    pub(crate) state: State<V, E>,
}

/// What one shard's lock covers: the table, its books, and the source of its stamps.
pub(crate) struct ShardData<K, V, E> {
    pub(crate) table: HashTable<Slot<K, V, E>>,
    /// The table's capacity when it was last built (allocated or resized, see
    /// [`room_in`](Self::room_in)): what it falls short of now is its tombstones.
    full: usize,
    books: Books,
    next_stamp: u64,
    /// `next_stamp` when `room_in` last rebuilt the table: the stamps handed out since
    /// count the values stored since (loads and writes), what the rebuild's room bought.
    rebuilt_at: u64,
    /// How many times `room_in` rebuilt the table at its size (for the tests' bound on
    /// what rebuilds cost per insert).
    #[cfg(all(test, not(loom)))]
    rebuilds: usize,
}

/// The weight a value is stored with (0 unbounded), or `None` if the cache refuses it
/// (heavier than the capacity, any value at capacity 0, or of unknown weight: `None`).
fn admitted(bound: Option<&Bound>, weight: Option<u32>) -> Option<u32> {
    match bound {
        None => Some(0),
        Some(b) => weight.filter(|&w| b.capacity != 0 && u64::from(w) <= b.capacity),
    }
}

/// A complete value's state: queued in the main queue if `main` (its use count byte says
/// so).
fn ready<V, E>(value: V, weight: u32, stamp: u64, main: bool) -> State<V, E> {
    State::Ready {
        value,
        freq: AtomicU8::new(if main { IN_MAIN } else { 0 }),
        weight,
        stamp,
    }
}

/// One shard, on its own cache line.
type Shard<K, V, E> = CachePadded<ShardLock<ShardData<K, V, E>>>;

/// What a bounded store counts against.
struct Bound {
    capacity: u64,
    /// The weight of the values on the books, all shards together: the sum of the shards'
    /// `live`, changed with them under a shard's write lock. Relaxed: it orders nothing
    /// (each shard's books are ordered by its lock); every change is a read-modify-write,
    /// so a thread that added weight reads a total that includes its addition (the last one
    /// to add makes room for all), and an eviction takes its weight off only while the
    /// total is over capacity (so that concurrent admissions do not evict twice for one
    /// overflow).
    total: CachePadded<AtomicU64>,
}

impl Bound {
    fn over(&self) -> bool {
        self.total.load(Relaxed) > self.capacity
    }
}

/// What [`ShardData::replace_in_place`] did.
enum Replace<K, V, E> {
    /// Replaced where it was: the stamp to make room for in other shards, as `admit`'s.
    Done(Option<u64>),
    /// Taken out of the table and off the books: the caller stores the new value anew.
    Taken(Gone<K, V, E>),
    /// No slot at the key.
    Absent,
}

/// A slot that left the table under a lock: told (counted, traced, given to the listener)
/// and dropped after the lock is released.
pub(crate) struct Gone<K, V, E> {
    hash: u64,
    /// The key the listener is told (none where the caller made no copy for it).
    key: Option<K>,
    state: State<V, E>,
    cause: RemovalCause,
}

/// What one operation took out of the table, to be told and dropped with no lock held.
/// Most writes take out at most one slot (the value they replace, or one victim): it is kept
/// inline, so that a full cache's insert allocates nothing for it.
pub(crate) struct Out<K, V, E> {
    first: Option<Gone<K, V, E>>,
    rest: Vec<Gone<K, V, E>>,
}

impl<K, V, E> Out<K, V, E> {
    fn new() -> Self {
        Out {
            first: None,
            rest: Vec::new(),
        }
    }

    fn one(gone: Gone<K, V, E>) -> Self {
        Out {
            first: Some(gone),
            rest: Vec::new(),
        }
    }

    fn push(&mut self, gone: Gone<K, V, E>) {
        if self.first.is_none() {
            self.first = Some(gone);
        } else {
            self.rest.push(gone);
        }
    }

    fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.rest.len()
    }

    fn iter(&self) -> impl Iterator<Item = &Gone<K, V, E>> {
        self.first.iter().chain(self.rest.iter())
    }
}

impl<K, V, E> FromIterator<Gone<K, V, E>> for Out<K, V, E> {
    fn from_iter<I: IntoIterator<Item = Gone<K, V, E>>>(gones: I) -> Self {
        let mut out = Out::new();
        for gone in gones {
            out.push(gone);
        }
        out
    }
}

/// The cache's table: `[CachePadded<ShardLock<ShardData>>; shards]`, the top bits of a
/// hash picking the shard; and what its writes need: the capacity, the weigher, the
/// listener and the counters.
pub(crate) struct Store<K, V, E, S> {
    hasher: S,
    shards: Box<[Shard<K, V, E>]>,
    /// `57 - log2(shards)`: a hash shifted right by it, masked by `shards - 1`, is its
    /// shard's index (see [`index`](Self::index)).
    shift: u32,
    bound: Option<Bound>,
    weigher: Option<Weigher<K, V>>,
    listener: Option<Listener<K, V>>,
    pub(crate) counters: Arc<Counters>,
}

/// Where a hash's shard bits end, counting from the low end: below the top 7 bits
/// (hashbrown's h2), see [`Store::index`].
const SHARD_BITS_END: u32 = u64::BITS - 7;

/// The shard count: a power of two, about four per thread, as the map's.
fn default_shards() -> usize {
    let threads = std::thread::available_parallelism().map_or(4, usize::from);
    (threads * 4).next_power_of_two().clamp(4, 256)
}

/// What a read that may load found.
pub(crate) enum Lookup<'a, K, V, E, S> {
    /// A complete value (a clone), with no load started or joined.
    Ready(V),
    /// A load in flight, joined or started (see [`Waiter::added`]).
    Wait(Waiter<'a, K, V, E, S>),
}

impl<K, V, E, S> Store<K, V, E, S> {
    /// An unbounded store with no weigher or listener, with room for `capacity` entries.
    #[cfg(test)]
    pub(crate) fn with_capacity_and_hasher(capacity: usize, hasher: S) -> Self {
        Self::new(capacity, hasher, None, None, None)
    }

    /// A store with room for `initial` entries; bounded by `capacity` if given, each value
    /// weighed by `weigher` (if given: one unit each otherwise); `listener` told of every
    /// value that leaves. A bounded store has fewer shards when the capacity is small, so
    /// that each shard's share is at least 256 units and its queues behave like one.
    pub(crate) fn new(
        initial: usize,
        hasher: S,
        capacity: Option<u64>,
        weigher: Option<Weigher<K, V>>,
        listener: Option<Listener<K, V>>,
    ) -> Self {
        let mut count = default_shards();
        if let Some(capacity) = capacity {
            while count > 1 && capacity / (count as u64) < 256 {
                count /= 2;
            }
        }
        let share = |i: usize| {
            capacity.map_or(0, |c| {
                c / count as u64 + u64::from((i as u64) < c % count as u64)
            })
        };
        // No table is reserved for its share of a bound up front: the tables grow as they
        // fill (hashbrown's doubling), and at steady state `room_in` rebuilds them at their
        // size. A bound reserved for made a cache that is not full sparse: its hits on one
        // thread went from 0.93x quick_cache's to 1.58x, its keys spread over twice the
        // memory (the bench's 10 000 keys in a cache of 20 000), for 3 % fewer bytes when
        // full and a fill 10 % faster or so.
        Store {
            hasher,
            shards: (0..count)
                .map(|i| {
                    let table = HashTable::with_capacity(initial.div_ceil(count));
                    CachePadded::new(ShardLock::new(ShardData {
                        full: table.capacity(),
                        table,
                        books: Books::new(share(i)),
                        next_stamp: 0,
                        rebuilt_at: 0,
                        #[cfg(all(test, not(loom)))]
                        rebuilds: 0,
                    }))
                })
                .collect(),
            shift: SHARD_BITS_END - count.trailing_zeros(),
            bound: capacity.map(|capacity| Bound {
                capacity,
                total: CachePadded::new(AtomicU64::new(0)),
            }),
            weigher: if capacity.is_some() { weigher } else { None },
            listener,
            counters: Arc::new(Counters::new()),
        }
    }

    fn index(&self, hash: u64) -> usize {
        // The bits just below the top 7, which hashbrown keeps in each slot's control byte
        // (h2) to tell keys apart in a probe: picked by the top bits, every key of a shard
        // would share them, and with 8 shards a probe's group of 16 would match a wrong key
        // about once (16 tags of 16 values) instead of once in 8 probes. Tables of fewer
        // than 2^49 buckets never index by these bits (h1 is the low ones).
        ((hash >> self.shift) as usize) & (self.shards.len() - 1)
    }

    pub(crate) fn shard(&self, hash: u64) -> &ShardLock<ShardData<K, V, E>> {
        &self.shards[self.index(hash)]
    }

    /// The number of entries: values and loads in flight. A snapshot.
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.read(|d| d.table.len())).sum()
    }

    /// The capacity, if bounded.
    pub(crate) fn capacity(&self) -> Option<u64> {
        self.bound.as_ref().map(|b| b.capacity)
    }

    /// The weight of the values on the books, if bounded. A snapshot.
    pub(crate) fn weight(&self) -> Option<u64> {
        self.bound.as_ref().map(|b| b.total.load(Relaxed))
    }

    /// Whether values are weighed with their key (bounded, with a weigher).
    pub(crate) fn weighs(&self) -> bool {
        self.weigher.is_some()
    }

    pub(crate) fn has_listener(&self) -> bool {
        self.listener.is_some()
    }

    /// The weight of `value` at `key`, or `None` if the weigher panicked (caught and
    /// counted here: the value is refused, its weight unknown). No lock held. Unbounded: 0,
    /// and the weigher is not called; bounded with no weigher: 1.
    pub(crate) fn weigh(&self, key: &K, value: &V) -> Option<u32> {
        match (&self.bound, &self.weigher) {
            (None, _) => Some(0),
            (Some(_), None) => Some(1),
            (Some(_), Some(weigher)) => {
                let weight = caught(|| weigher(key, value));
                if weight.is_none() {
                    self.counters.weigher_panicked();
                }
                weight
            }
        }
    }

    /// Counts, traces and tells the listener of what left the table, then drops it: with
    /// no lock held. A panicking listener is caught and counted, and the rest are told.
    pub(crate) fn tell(&self, gone: Out<K, V, E>) {
        if gone.is_empty() {
            return;
        }
        let (mut evicted, mut invalidated, mut expired) = (0, 0, 0);
        for g in gone.iter() {
            match g.cause {
                RemovalCause::Size => evicted += 1,
                RemovalCause::Expired => expired += 1,
                _ => invalidated += 1,
            }
        }
        self.counters.evicted(evicted);
        self.counters.invalidated(invalidated);
        self.counters.expired(expired);
        for g in gone.iter() {
            if g.cause.was_evicted() {
                trace::removed(g.hash, g.cause);
            }
            if let (Some(listener), Some(key), Some(value)) =
                (&self.listener, &g.key, g.state.value())
            {
                if caught(|| listener(key, value, g.cause)).is_none() {
                    self.counters.listener_panicked();
                }
            }
        }
        drop(gone);
    }

    /// Makes room in the shards other than `home` (whose own pass is done), one write lock
    /// at a time: first in the shards over their share, then, if that is not enough (a
    /// value heavier than its shard's share), in any shard, `home` last (never evicting
    /// `stamp` there, the value being stored). Victims go to `out`.
    fn reclaim(&self, home: usize, stamp: u64, out: &mut Out<K, V, E>) {
        let Some(bound) = &self.bound else { return };
        let n = self.shards.len();
        for any in [false, true] {
            for k in 1..=n {
                let j = (home + k) & (n - 1);
                if j == home && !any {
                    continue;
                }
                let exempt = (j == home).then_some(stamp);
                self.shards[j].write(|d| d.shrink(bound, exempt, any, out));
                if !bound.over() {
                    return;
                }
            }
        }
    }

    /// After a write that stored `stamp` in shard `home` and left the cache over capacity
    /// (`over`): reclaims in the other shards, then tells what left. No lock held.
    fn finish(&self, hash: u64, stored: Option<u64>, mut out: Out<K, V, E>) {
        if let (Some(stamp), Some(bound)) = (stored, &self.bound) {
            if bound.over() {
                self.reclaim(self.index(hash), stamp, &mut out);
            }
        }
        self.tell(out);
    }
}

/// The books' invariants, for tests at quiescence (no write in flight).
#[cfg(all(test, not(loom)))]
impl<K: Hash, V, E, S: BuildHasher> Store<K, V, E, S> {
    /// Checks, shard by shard under its read lock: each shard's queue weights, `live` and
    /// `stale` are what its positions say ([`Books::check`]); every `Ready` value of a
    /// bounded store that weighs something has exactly one position, and no other slot
    /// has one (weightless values and loads are never queued, nor is anything when
    /// unbounded); stamps are unique and below the shard's next one; `live` is the weight
    /// of the shard's `Ready` values. Then the cache's total is the sum of the shards'
    /// `live`, and within capacity. Returns the total weight held.
    pub(crate) fn check_books(&self) -> u64 {
        use std::collections::HashMap;
        let mut sum = 0u64;
        for shard in self.shards.iter() {
            sum += shard.read(|d| {
                let table = &d.table;
                d.books.check(|pos| {
                    let (freq, weight) = ShardData::<K, V, E>::find(table, pos)?;
                    Some((weight, in_main(freq)))
                });
                let mut queued: HashMap<(u64, u64), usize> = HashMap::new();
                for p in d.books.positions() {
                    *queued.entry((p.hash, p.stamp)).or_default() += 1;
                }
                let mut stamps = std::collections::HashSet::new();
                let mut held = 0u64;
                for slot in table.iter() {
                    let State::Ready { weight, stamp, .. } = &slot.state else {
                        continue;
                    };
                    assert!(
                        stamps.insert(*stamp),
                        "stamp {stamp} is unique in its shard"
                    );
                    assert!(*stamp <= d.next_stamp, "stamp {stamp} was handed out");
                    // The slot keeps no hash: its key's, as the position names it.
                    let hash = self.hasher.hash_one(&slot.key);
                    let n = queued.remove(&(hash, *stamp)).unwrap_or(0);
                    if self.bound.is_some() {
                        assert_eq!(
                            n,
                            usize::from(*weight > 0),
                            "one position per weighed value"
                        );
                        held += u64::from(*weight);
                    } else {
                        assert_eq!((n, *weight), (0, 0), "unbounded: weightless, never queued");
                    }
                }
                // What is left are dead positions: counted by `Books::check`'s stale.
                assert_eq!(held, d.books.live(), "a shard's live weight is its values'");
                held
            });
        }
        if let Some(bound) = &self.bound {
            let total = bound.total.load(Relaxed);
            assert_eq!(total, sum, "the total is the sum of the shards' weights");
            assert!(
                total <= bound.capacity,
                "within capacity: {total} > {}",
                bound.capacity
            );
        }
        sum
    }

    /// The number of shards.
    pub(crate) fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// Whether this thread (or another) holds any shard's lock, for tests that check no
    /// user code runs under it.
    pub(crate) fn any_shard_held(&self) -> bool {
        self.shards.iter().any(|s| s.is_held())
    }
}

impl<K, V, E> ShardData<K, V, E> {
    /// The live value of a queue position, if it is still in the table: its use count
    /// byte and its weight.
    fn find<'t>(table: &'t HashTable<Slot<K, V, E>>, pos: &Pos) -> Option<Live<'t>> {
        match &table.find(pos.hash, |s| s.state.is_stamp(pos.stamp))?.state {
            State::Ready { freq, weight, .. } => Some((freq, *weight)),
            State::Loading { .. } => None,
        }
    }

    /// Makes room in the table for one more slot, so that the insert that follows neither
    /// grows nor rehashes it (all of which happens here, before anything is put on the
    /// books: keys' `Hash` runs here, and if it panics the new value is not on the books,
    /// the table as it was).
    ///
    /// A table with no room left whose items are well under its capacity when it was last
    /// built is full of tombstones (hashbrown's `erase` leaves one where a probe may have
    /// passed; a bounded shard at steady state erases one for each insert): it is rebuilt
    /// at the same size, where hashbrown would double it (its items being over half its
    /// capacity) or rehash it in place (which drops slots if `Hash` panics). Otherwise it
    /// grows, as hashbrown would.
    ///
    /// "Well under" is at most 7/8 of it, and only if the last rebuild bought room for a
    /// quarter as many stores as the table has slots: a rebuild moves every slot, and buys
    /// room for the tombstones of the stores that follow, which the fuller the table, the
    /// fewer (and the more of its erases leave one). A shard held at 15/16 of its table
    /// rebuilt every 50 stores or so (5.6 slots moved per store, rev5); now a rebuild moves
    /// at most four slots per store since the last one, and a table that would need
    /// more grows instead (`rebuilds_at_a_full_share_stay_rare`). A store here is a stamp
    /// taken: an in-place replace takes one and no slot, so per store that takes a slot
    /// the bound is looser, under eight (the 7/8 rule's: a rebuild leaves over an
    /// eighth of the table free for the stores that follow; rev6). A table at most half full
    /// is always rebuilt: hashbrown would rehash it in place.
    #[inline]
    fn room_in<S: BuildHasher>(&mut self, hasher: &S)
    where
        K: Hash,
    {
        if self.table.len() < self.table.capacity() {
            return;
        }
        self.make_room(hasher);
    }

    /// `room_in`'s slow path: the table has no room left.
    #[cold]
    #[inline(never)]
    fn make_room<S: BuildHasher>(&mut self, hasher: &S)
    where
        K: Hash,
    {
        let table = &mut self.table;
        let len = table.len();
        self.full = self.full.max(table.capacity());
        let since = usize::try_from(self.next_stamp - self.rebuilt_at).unwrap_or(usize::MAX);
        // Strictly under: a rebuild must make room (a small table's eighth is 0).
        let worth = len < self.full - self.full / 8 && since.saturating_mul(4) >= len;
        if len < self.full && (worth || len <= self.full / 2) {
            // Hashed first, by reference: if a key's `Hash` panics, nothing has moved. With
            // each slot's stamp (unique in the shard), to check the order below without
            // user code: a `Hash` run again there, mid-`drain`, that panicked dropped every
            // slot under the lock, on the books (rev5).
            let hashes: Vec<(u64, u64)> = table
                .iter()
                .map(|s| (hasher.hash_one(&s.key), s.state.stamp()))
                .collect();
            let mut fresh = HashTable::with_capacity(self.full);
            // `drain` yields the slots in `iter`'s order (both walk the buckets in order).
            for (slot, (hash, stamp)) in table.drain().zip(hashes) {
                debug_assert_eq!(stamp, slot.state.stamp(), "drained as iterated");
                // Never grows (room for all): the hasher is not called.
                fresh.insert_unique(hash, slot, |s| hasher.hash_one(&s.key));
            }
            *table = fresh;
            self.rebuilt_at = self.next_stamp;
            #[cfg(all(test, not(loom)))]
            {
                self.rebuilds += 1;
            }
        } else {
            table.reserve(1, |s| hasher.hash_one(&s.key));
        }
        self.full = table.capacity();
    }

    /// Takes a state that left the table otherwise than by eviction off the books.
    fn unbook(&mut self, bound: Option<&Bound>, state: &State<V, E>) {
        let (Some(bound), State::Ready { weight, freq, .. }) = (bound, state) else {
            return;
        };
        let weight = *weight;
        if weight == 0 {
            return;
        }
        bound.total.fetch_sub(u64::from(weight), Relaxed);
        if self.books.left(weight, in_main(freq)) {
            let table = &self.table;
            self.books.compact(|pos| Self::find(table, pos).is_some());
        }
    }

    /// Removes the entry at `hash` that `eq` finds, off the books, as a [`Gone`] of `cause`.
    fn take(
        &mut self,
        bound: Option<&Bound>,
        hash: u64,
        eq: impl FnMut(&Slot<K, V, E>) -> bool,
        cause: RemovalCause,
    ) -> Option<Gone<K, V, E>> {
        let slot = self.table.find_entry(hash, eq).ok()?.remove().0;
        Some(self.taken_out(bound, hash, slot, cause))
    }

    /// A slot just removed from the table at `hash`, off the books, as a [`Gone`] of
    /// `cause`.
    fn taken_out(
        &mut self,
        bound: Option<&Bound>,
        hash: u64,
        slot: Slot<K, V, E>,
        cause: RemovalCause,
    ) -> Gone<K, V, E> {
        self.unbook(bound, &slot.state);
        Gone {
            hash,
            key: Some(slot.key),
            state: slot.state,
            cause,
        }
    }

    /// `insert`'s probe: the slot at the key carried in, if there is one, replaced in place
    /// when it holds a complete value and the new one stands as it did on the books (both
    /// weigh something, or both nothing): the new value takes the old one's place in the
    /// slot (no erase, no insert; the caller made room before this probe, as it must before
    /// anything is taken out, so a full table is rebuilt or grown a store early even when
    /// the replace goes in place: rev6) with a new stamp, its position goes to the
    /// tail of the queue it was in (the use count kept), the weights move by the difference
    /// (evicting others in this shard if it grew), and the old value goes to `out` as
    /// replaced (told with the key given, equal to the one kept). Otherwise the
    /// slot is taken out, off the books (as [`take`](Self::take)), for the caller to store
    /// the new value anew: a load in flight (which goes on for its waiters), a value the
    /// cache refuses, or one that starts or stops weighing something.
    ///
    /// The key and value are taken from `carry` only once the probe (keys' `Eq`) is done.
    fn replace_in_place(
        &mut self,
        bound: Option<&Bound>,
        hash: u64,
        weight: Option<u32>,
        carry: &mut Option<(K, V)>,
        out: &mut Out<K, V, E>,
    ) -> Replace<K, V, E>
    where
        K: Eq,
    {
        let Some((key, _)) = carry.as_ref() else {
            unreachable!("taken below only")
        };
        let Ok(mut entry) = self.table.find_entry(hash, |s| s.key == *key) else {
            return Replace::Absent;
        };
        let new = admitted(bound, weight);
        let fits = matches!(
            (&entry.get().state, new),
            (State::Ready { weight: old, .. }, Some(new)) if (*old > 0) == (new > 0)
        );
        let Some(new) = new.filter(|_| fits) else {
            let slot = entry.remove().0;
            return Replace::Taken(self.taken_out(bound, hash, slot, RemovalCause::Replaced));
        };
        let (key, value) = taken(carry);
        // A new value, a new stamp: a write that acts on the value it saw (by its stamp:
        // `invalidate_entries_if`, `retain`) leaves this one alone.
        self.next_stamp += 1;
        let fresh = self.next_stamp;
        let State::Ready {
            value: there,
            weight: was,
            freq,
            stamp,
        } = &mut entry.get_mut().state
        else {
            unreachable!("fits: a complete value");
        };
        let old = std::mem::replace(there, value);
        let old_weight = std::mem::replace(was, new);
        let old_stamp = std::mem::replace(stamp, fresh);
        let main = in_main(freq);
        out.push(Gone {
            hash,
            key: Some(key),
            state: ready(old, old_weight, old_stamp, main),
            cause: RemovalCause::Replaced,
        });
        let Some(bound) = bound.filter(|_| new > 0) else {
            return Replace::Done(None);
        };
        // Re-queued at the tail of the queue it was in (its use count kept): the old
        // position is dead.
        self.books.push(Pos { hash, stamp: fresh }, new, main);
        if self.books.left(old_weight, main) {
            let table = &self.table;
            self.books.compact(|pos| Self::find(table, pos).is_some());
        }
        if new >= old_weight {
            bound.total.fetch_add(u64::from(new - old_weight), Relaxed);
            self.shrink(bound, Some(fresh), false, out);
        } else {
            bound.total.fetch_sub(u64::from(old_weight - new), Relaxed);
        }
        Replace::Done(Some(fresh))
    }

    /// Stores `value` at `key`, whose slot the caller took out of the table (or which had
    /// none): on the books, evicting in this shard while it is over its share and the cache
    /// over capacity. A value the cache refuses (heavier than the capacity, any value at
    /// capacity 0, or of unknown weight: `None`) is not stored, and goes to `out` as
    /// evicted. Returns the stored value's stamp, if it weighs something (for `reclaim`).
    /// `stamp` is the value's if it has one (a settling load's own), else a fresh one is
    /// taken.
    #[allow(clippy::too_many_arguments)]
    fn admit<S: BuildHasher>(
        &mut self,
        store: &Store<K, V, E, S>,
        hash: u64,
        key: K,
        value: V,
        weight: Option<u32>,
        stamp: Option<u64>,
        out: &mut Out<K, V, E>,
    ) -> Option<u64>
    where
        K: Hash,
    {
        let (hasher, bound) = (&store.hasher, store.bound.as_ref());
        let stamp = stamp.unwrap_or_else(|| self.stamp());
        let Some(weight) = admitted(bound, weight) else {
            // Never queued, never counted: it takes nothing else with it.
            out.push(Gone {
                hash,
                key: Some(key),
                state: ready(value, 0, stamp, false),
                cause: RemovalCause::Size,
            });
            return None;
        };
        // Room first (keys' `Hash` may run): a panic leaves the value off the books. The
        // callers made it already, before they took anything out of the table or the key
        // and value they carry in, so that none of these is dropped under the lock then
        // (rev5): a no-op check here (an erase since never uses room up).
        self.room_in(hasher);
        let main = weight > 0 && self.books.to_main(hash);
        let state = ready(value, weight, stamp, main);
        self.table
            .insert_unique(hash, Slot { key, state }, |s| hasher.hash_one(&s.key));
        self.book(bound, hash, stamp, weight, main, out)
    }

    /// Puts a value just stored (stamped `stamp`, of `weight`, queued in the main queue
    /// if `main`, as its slot says) on the books, evicting in this shard while it is over
    /// its share and the cache over capacity. Returns its stamp if it weighs something
    /// (for `reclaim`).
    fn book(
        &mut self,
        bound: Option<&Bound>,
        hash: u64,
        stamp: u64,
        weight: u32,
        main: bool,
        out: &mut Out<K, V, E>,
    ) -> Option<u64> {
        // A value that weighs nothing frees nothing: never queued, so never a candidate.
        let bound = bound.filter(|_| weight > 0)?;
        self.books.push(Pos { hash, stamp }, weight, main);
        bound.total.fetch_add(u64::from(weight), Relaxed);
        self.shrink(bound, Some(stamp), false, out);
        Some(stamp)
    }

    /// A fresh stamp of this shard.
    fn stamp(&mut self) -> u64 {
        self.next_stamp += 1;
        self.next_stamp
    }

    /// Evicts from this shard while the cache is over capacity and, unless `any`, this
    /// shard is over its share; never `exempt` (the value being stored). Victims go to
    /// `out`.
    fn shrink(&mut self, bound: &Bound, exempt: Option<u64>, any: bool, out: &mut Out<K, V, E>) {
        let mut held = None;
        // Each turn takes a position off the queues for good, or sets `exempt` aside
        // (once): bounded by the queues' length, whatever readers do meanwhile.
        while (any || self.books.over_share()) && bound.over() {
            let ShardData { table, books, .. } = self;
            let step = books.step(exempt, &bound.total, bound.capacity, |pos| {
                Self::find(table, pos)
            });
            match step {
                Step::Out(pos) => {
                    let Ok(entry) = table.find_entry(pos.hash, |s| s.state.is_stamp(pos.stamp))
                    else {
                        unreachable!("a step evicts only a value it found");
                    };
                    let slot = entry.remove().0;
                    out.push(Gone {
                        hash: pos.hash,
                        key: Some(slot.key),
                        state: slot.state,
                        cause: RemovalCause::Size,
                    });
                }
                Step::Held(pos, from_small, weight) => held = Some((pos, from_small, weight)),
                Step::Empty | Step::Enough => break,
            }
        }
        if let Some((pos, from_small, weight)) = held {
            self.books.restore(pos, from_small, weight);
        }
    }
}

impl<K, V, E, S: BuildHasher> Store<K, V, E, S> {
    pub(crate) fn hash<Q: Hash + ?Sized>(&self, key: &Q) -> u64 {
        self.hasher.hash_one(key)
    }
}

impl<K: Eq + Hash, V: Clone, E, S: BuildHasher> Store<K, V, E, S> {
    /// `f` on the value at `key` (whose hash is `hash`) if it is complete, under the
    /// shard's read lock: keep `f` short. If `touch` and `f` says `Some`, the use is
    /// recorded. A load whose cell has its value but whose settle has not stored it yet
    /// counts as complete: its waiters may have it already, and a caller that got it must
    /// find it (rev3).
    #[inline]
    pub(crate) fn read<Q, R>(
        &self,
        hash: u64,
        key: &Q,
        touch: bool,
        f: impl FnOnce(&V) -> Option<R>,
    ) -> Option<R>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        self.shard(hash).read(
            |d| match &d.table.find(hash, |s| s.key.borrow() == key)?.state {
                State::Ready { value, freq, .. } => {
                    let found = f(value);
                    if touch && found.is_some() {
                        self::touch(freq);
                    }
                    found
                }
                State::Loading { cell, .. } => match cell.try_get()? {
                    Ok(value) => f(value),
                    Err(_) => None,
                },
            },
        )
    }

    /// Stores `value` (of `weight`, `None` if its weigher panicked) at `key`, replacing
    /// what was there (a value, told as `Replaced`; a load in flight, which goes on for
    /// its waiters, but whose settle finds another slot and stores nothing: the write
    /// wins).
    pub(crate) fn insert(&self, hash: u64, key: K, value: V, weight: Option<u32>) {
        let bound = self.bound.as_ref();
        let mut out = Out::new();
        // Carried in, taken only once the probe (keys' `Eq`, user code) is done: if it
        // panics, the key and value are dropped here, after the lock (rev4).
        let mut carry = Some((key, value));
        let stored = self.shard(hash).write(|d| {
            // Room before anything is taken (keys' `Hash` may run): if it panics, the key
            // and value carried in are dropped after the lock (rev5), and the table holds
            // what it held. After it, no erase takes the room away (an erase leaves a
            // tombstone or frees a slot; it never uses one up).
            d.room_in(&self.hasher);
            let old = match d.replace_in_place(bound, hash, weight, &mut carry, &mut out) {
                Replace::Done(stored) => return stored,
                Replace::Taken(old) => Some(old),
                Replace::Absent => None,
            };
            let Some((key, value)) = carry.take() else {
                unreachable!("taken here only")
            };
            // The key already there stays (as `HashMap::insert` keeps it); the value it held
            // is told with the key given, which is equal.
            let key = match old {
                Some(mut old) => {
                    let kept = old.key.replace(key);
                    out.push(old);
                    kept.unwrap_or_else(|| unreachable!("`take` gives the slot's key"))
                }
                None => key,
            };
            d.admit(self, hash, key, value, weight, None, &mut out)
        });
        self.finish(hash, stored, out);
    }

    /// Removes the entry at `key`, value or load in flight, if `pred` says so for it (a
    /// load is offered as `None`; one whose cell has its value, not yet settled, as that
    /// value: see [`State::value`]); tells it as `cause` and returns a clone of its value if
    /// `give` (`Some(None)` for a load, or without `give`). A load removed goes on for its waiters, and its settle
    /// stores nothing.
    pub(crate) fn remove<Q>(
        &self,
        hash: u64,
        key: &Q,
        mut pred: impl FnMut(Option<&V>) -> bool,
        cause: RemovalCause,
        give: bool,
    ) -> Option<Option<V>>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        let bound = self.bound.as_ref();
        let gone = self.shard(hash).write(|d| {
            let matches = |s: &Slot<K, V, E>| s.key.borrow() == key && pred(s.state.value());
            d.take(bound, hash, matches, cause)
        })?;
        let value = gone.state.value().filter(|_| give).cloned();
        self.tell(Out::one(gone));
        Some(value)
    }

    /// Puts `value` (of `weight`) at `key` in place of the value there (or of a load whose
    /// cell has its value: see [`State::value`]), if there is one and `pred` says so for it
    /// (under the lock); the old value is told as `Replaced`, with
    /// the key `told` (the caller's copy, made only for a listener). The key stored stays
    /// the one there. Returns whether it replaced.
    pub(crate) fn replace_if<Q>(
        &self,
        hash: u64,
        key: &Q,
        value: V,
        weight: Option<u32>,
        told: Option<K>,
        pred: impl FnOnce(&V) -> bool,
    ) -> bool
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        let bound = self.bound.as_ref();
        let mut out = Out::new();
        // The value and the listener's key copy are taken only once the lock's user code
        // (keys' `Eq`, `pred`) is done and the value is replaced: otherwise they are dropped
        // here, after the lock (rev4).
        let mut carry = Some((value, told));
        let replaced = self.shard(hash).write(|d| {
            let yes = d
                .table
                .find(hash, |s| s.key.borrow() == key)
                .is_some_and(|s| s.state.value().is_some_and(pred));
            if !yes {
                return None;
            }
            // Room before the old value is taken out (keys' `Hash` may run): if it panics,
            // the table holds what it held, and the value and key carried in are dropped
            // after the lock (rev6: made in `admit` only, after an erase that left a
            // tombstone, it dropped them under the lock).
            d.room_in(&self.hasher);
            let Some(old) = d.take(
                bound,
                hash,
                |s| s.key.borrow() == key,
                RemovalCause::Replaced,
            ) else {
                unreachable!("found above");
            };
            let Some((value, told)) = carry.take() else {
                unreachable!("taken here only")
            };
            let Gone {
                key: Some(stored_key),
                state,
                ..
            } = old
            else {
                unreachable!("`take` gives the slot's key");
            };
            out.push(Gone {
                hash,
                key: told,
                state,
                cause: RemovalCause::Replaced,
            });
            Some(d.admit(self, hash, stored_key, value, weight, None, &mut out))
        });
        match replaced {
            Some(stored) => {
                self.finish(hash, stored, out);
                true
            }
            // `carry` is dropped with no lock held.
            None => false,
        }
    }

    /// Stores `value` (of `weight`) at `key` unless a value is there, and returns the one
    /// stored. A load in flight is settled with `value` (its waiters get it too) unless it
    /// is completing at this very instant, in which case its value wins and is returned
    /// (this thread parks for that completion, a write already under way); a load that
    /// failed is no value, and `value` takes its place. A write or an invalidation that
    /// comes after the load's waiters got `value` wins: `value` is returned, and not stored
    /// after it.
    pub(crate) fn put_absent(&self, hash: u64, key: K, value: V, weight: Option<u32>) -> V {
        let shard = self.shard(hash);
        let mut out = Out::new();
        // The key is carried in and taken only once the user code under the lock (keys'
        // `Eq`, the value's `Clone`) is done: if it panics, the key is dropped here, after
        // the lock (rev4).
        let mut carry = Some(key);
        let put = shard.write(|d| {
            let Some(k) = &carry else {
                unreachable!("taken below only")
            };
            let Some(slot) = d.table.find_mut(hash, |s| s.key == *k) else {
                // Room before the key is taken and the value cloned (keys' `Hash` may run):
                // if it panics, the key is dropped after the lock (rev5).
                d.room_in(&self.hasher);
                let copy = value.clone();
                let key = taken(&mut carry);
                let stored = d.admit(self, hash, key, copy, weight, None, &mut out);
                return Put::Stored(stored, None);
            };
            match &mut slot.state {
                State::Ready { value: there, .. } => Put::There(there.clone()),
                State::Loading { cell, interest, .. } => match cell.try_get() {
                    // One interest more while this call completes the cell and stores
                    // `value` (rev3): the load's last waiter, leaving meanwhile, must not
                    // remove the slot, which is how an invalidation is told apart.
                    None => {
                        *interest = interest.saturating_add(1);
                        Put::Settle(cell.clone(), load_id(cell))
                    }
                    // Complete with a value: the load's settle, which completes the cell
                    // first, is about to store it; it is the key's.
                    Some(Ok(loaded)) => Put::There(loaded.clone()),
                    // Failed (its remover is on its way: the load's failure completes the
                    // cell first, then removes its slot): no value, `value` takes its place.
                    Some(Err(_)) => {
                        let id = load_id(cell);
                        let copy = value.clone();
                        // Room before the failed load's slot is taken out (keys' `Hash` may
                        // run): if it panics, that slot stays, and the key and the copy are
                        // dropped after the lock.
                        d.room_in(&self.hasher);
                        let Ok(entry) = d.table.find_entry(hash, |s| s.state.is_load(id)) else {
                            unreachable!("found above");
                        };
                        // The failed load leaves unannounced, as its own removal would
                        // (dropped with no lock held).
                        let old = entry.remove().0;
                        let key = taken(&mut carry);
                        let stored = d.admit(self, hash, key, copy, weight, None, &mut out);
                        Put::Stored(stored, Some(old))
                    }
                },
            }
        });
        // What the lock took out (a replaced load, victims) goes here, and `carry` (the key,
        // unless stored) when this call returns.
        let (cell, id) = match put {
            Put::Stored(stored, _failed) => {
                self.finish(hash, stored, out);
                return value;
            }
            Put::There(there) => return there,
            Put::Settle(cell, id) => (cell, id),
        };
        // Outside the lock: completing the cell wakes its waiters (user code).
        if cell.succeed(value.clone()).is_ok() {
            // Its settle (or its failure) will find the cell complete and leave the slot to
            // us, and our interest keeps its last waiter from removing it: `value` goes in
            // the slot that is still this load. A slot gone or another is a write or an
            // invalidation since (after the waiters got `value`): it wins, left alone.
            drop(carry);
            self.settle(hash, id, Some((value.clone(), weight)));
            // The computation has nothing left to do (after the slot is stored, so that
            // its drop guard finds no load to remove).
            cell.abort();
            return value;
        }
        // Being completed right now by its load (this waits for that write only): its
        // value is the key's; if it failed, `value` takes its place. Our interest is given
        // back once the cell is complete, so that it removes nothing (see `uninterested`).
        let outcome = cell.wait_blocking().cloned().map_err(drop);
        self.uninterested(hash, id);
        match outcome {
            Ok(loaded) => loaded,
            Err(()) => {
                drop(cell);
                self.put_absent(hash, taken(&mut carry), value, weight)
            }
        }
    }

    /// The loaded entries, as `(key, value)` clones, one shard at a time under its read
    /// lock.
    pub(crate) fn snapshot(&self) -> Vec<(K, V)>
    where
        K: Clone,
    {
        // Keys and values apart, each clone owned out here as soon as it is made: if a
        // clone panics, those made before it (the key of its pair too) are dropped after
        // the lock (rev5: a key cloned in a pair whose value's clone panicked was dropped
        // under it).
        let (mut keys, mut values) = (Vec::new(), Vec::new());
        for shard in self.shards.iter() {
            shard.read(|d| {
                for s in d.table.iter() {
                    if let Some(value) = s.state.value() {
                        keys.push(s.key.clone());
                        values.push(value.clone());
                    }
                }
            });
        }
        keys.into_iter().zip(values).collect()
    }

    /// Removes the values for which `pred(key, value)` says `true`, as `Explicit`
    /// removals: `pred` runs with no lock held on a snapshot of each shard (key and value
    /// clones), and a value replaced after `pred` saw it is not removed (its stamp is
    /// another). If `pred` panics it is not called again: the values it said `true` to
    /// are removed and told, then the panic goes on. Returns how many were removed.
    pub(crate) fn remove_all_if(&self, mut pred: impl FnMut(&K, &V) -> bool) -> usize
    where
        K: Clone,
    {
        let bound = self.bound.as_ref();
        let mut removed = 0;
        for shard in self.shards.iter() {
            // Built outside the lock (rev4): if a clone panics, the clones made before it
            // are dropped after the lock is released; keys and values apart, so that this
            // holds for the key of a pair whose value's clone panics (rev5).
            let mut keys: Vec<(u64, K)> = Vec::new();
            let mut values: Vec<V> = Vec::new();
            shard.read(|d| {
                for s in d.table.iter() {
                    if let Some(value) = s.state.value() {
                        keys.push((s.state.stamp(), s.key.clone()));
                        values.push(value.clone());
                    }
                }
            });
            let mut doomed = Vec::new();
            let mut panicked = None;
            for ((stamp, key), value) in keys.iter().zip(&values) {
                match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| pred(key, value))) {
                    // Hashed here, with no lock held: the slot keeps no hash.
                    Ok(true) => doomed.push((self.hash(key), *stamp)),
                    Ok(false) => {}
                    Err(payload) => {
                        panicked = Some(payload);
                        break;
                    }
                }
            }
            let gone: Out<K, V, E> = shard.write(|d| {
                doomed
                    .iter()
                    .filter_map(|&(hash, stamp)| {
                        d.take(
                            bound,
                            hash,
                            |s| s.state.is_stamp(stamp),
                            RemovalCause::Explicit,
                        )
                    })
                    .collect()
            });
            drop((keys, values));
            removed += gone.len();
            self.tell(gone);
            if let Some(payload) = panicked {
                std::panic::resume_unwind(payload);
            }
        }
        removed
    }

    /// Removes every entry, values and loads in flight (which go on for their waiters,
    /// storing nothing), shard by shard; each removal told as `Explicit`.
    pub(crate) fn clear(&self) {
        for shard in self.shards.iter() {
            let gone: Out<K, V, E> = shard.write(|d| {
                if let Some(bound) = &self.bound {
                    bound.total.fetch_sub(d.books.clear(), Relaxed);
                }
                d.table
                    .drain()
                    .map(|s| Gone {
                        // Not hashed: only evictions and expiries are traced by hash.
                        hash: 0,
                        key: Some(s.key),
                        state: s.state,
                        cause: RemovalCause::Explicit,
                    })
                    .collect()
            });
            self.tell(gone);
        }
    }

    /// Settles the load `id` at `hash`: its slot, if it is still that load, becomes
    /// `Ready(value)` in place (on the books), or is removed if the value is refused (told
    /// as evicted) or for `None`. Returns whether the slot was the load's.
    pub(crate) fn settle(&self, hash: u64, id: LoadId, value: Option<(V, Option<u32>)>) -> bool {
        let bound = self.bound.as_ref();
        let mut out = Out::new();
        // Carried in, taken only once the slot is found to be the load's: a slot gone or
        // another (an invalidation, a write since) leaves the value here, dropped with no
        // lock held (rev5: moved into the closure, it was dropped under the write lock).
        let mut carry = value;
        let settled = self.shard(hash).write(|d| {
            let mut entry = d.table.find_entry(hash, |s| s.state.is_load(id)).ok()?;
            let Some((value, weight)) = carry.take() else {
                // Dropped with no lock held: its cell, its key.
                return Some((None, Some(entry.remove().0), None));
            };
            let stamp = entry.get().state.stamp();
            let Some(weight) = admitted(bound, weight) else {
                // Refused: never queued, never counted; the load's slot goes.
                let slot = entry.remove().0;
                out.push(Gone {
                    hash,
                    key: Some(slot.key),
                    state: ready(value, 0, stamp, false),
                    cause: RemovalCause::Size,
                });
                return Some((None, None, Some(slot.state)));
            };
            // In place: the table neither grows nor rehashes.
            let main = weight > 0 && d.books.to_main(hash);
            let load = std::mem::replace(
                &mut entry.get_mut().state,
                ready(value, weight, stamp, main),
            );
            let stored = d.book(bound, hash, stamp, weight, main, &mut out);
            // The load's state (its cell) is dropped with no lock held.
            Some((stored, None, Some(load)))
        });
        let Some((stored, _removed, _load)) = settled else {
            return false;
        };
        self.finish(hash, stored, out);
        true
    }

    #[cfg(test)]
    pub(crate) fn probe<Q>(&self, key: &Q) -> Probe<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
        S: BuildHasher,
    {
        let hash = self.hash(key);
        self.shard(hash).read(|d| {
            match d
                .table
                .find(hash, |s| s.key.borrow() == key)
                .map(|s| &s.state)
            {
                None => Probe::Absent,
                Some(State::Ready { value, .. }) => Probe::Ready(value.clone()),
                Some(State::Loading { cell, interest, .. }) => {
                    Probe::Loading(load_id(cell), *interest)
                }
            }
        })
    }
}

/// What a test sees at a key.
#[cfg(test)]
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Probe<V> {
    Absent,
    Ready(V),
    /// A load in flight: its id and interest.
    Loading(LoadId, u32),
}

/// What a probe under the read lock found, for a read that may load.
pub(crate) enum Seen<V> {
    Value(V),
    Loading,
    Absent,
}

impl<K: Eq + Hash, V: Clone, E, S: BuildHasher> Store<K, V, E, S> {
    /// The read lock's probe of a read that may load: a value (its use recorded), a load
    /// in flight, or neither (a load that failed, whose slot its failure is about to
    /// remove, counts as none; one whose cell has its value counts as that value).
    #[inline]
    pub(crate) fn seen(&self, hash: u64, key: &K) -> Seen<V> {
        self.shard(hash).read(
            |d| match d.table.find(hash, |s| s.key == *key).map(|s| &s.state) {
                None => Seen::Absent,
                Some(State::Ready { value, freq, .. }) => {
                    touch(freq);
                    Seen::Value(value.clone())
                }
                Some(State::Loading { cell, .. }) => match cell.try_get() {
                    None => Seen::Loading,
                    Some(Ok(value)) => Seen::Value(value.clone()),
                    Some(Err(_)) => Seen::Absent,
                },
            },
        )
    }

    /// Under the write lock: the value at `key`, or its load in flight joined, or, if
    /// there is neither and `add` is given, that load put there. A load that failed is
    /// no value (its failure completes the cell, then removes the slot): the load given
    /// takes its place (rev3), so that no later caller is served that failure; with none
    /// given it counts as absent, and the caller makes one.
    fn join_or_add(&self, hash: u64, key: K, add: Option<&LoadCell<V, E>>) -> Found<K, V, E> {
        // The key is carried in and taken only once the user code under the lock (keys'
        // `Eq`, the value's `Clone`) is done: if it panics, the key is dropped here, after
        // the lock (rev4).
        let mut carry = Some(key);
        self.shard(hash).write(|d| {
            let Some(k) = &carry else {
                unreachable!("taken below only")
            };
            if let Some(slot) = d.table.find_mut(hash, |s| s.key == *k) {
                return match &mut slot.state {
                    State::Ready { value, .. } => {
                        let value = value.clone();
                        Found::Ready(value, taken(&mut carry))
                    }
                    State::Loading { cell, .. } if matches!(cell.try_get(), Some(Err(_))) => {
                        let Some(cell) = add else {
                            return Found::Absent(taken(&mut carry));
                        };
                        d.next_stamp += 1;
                        let state = State::Loading {
                            cell: cell.clone(),
                            interest: 1,
                            stamp: d.next_stamp,
                        };
                        Found::AddedOver(
                            std::mem::replace(&mut slot.state, state),
                            taken(&mut carry),
                        )
                    }
                    State::Loading { cell, interest, .. } => {
                        *interest = interest.saturating_add(1);
                        Found::Joined(cell.clone(), load_id(cell), taken(&mut carry))
                    }
                };
            }
            let Some(cell) = add else {
                return Found::Absent(taken(&mut carry));
            };
            let hasher = &self.hasher;
            // Room first (keys' `Hash` may run), the key taken after it.
            d.room_in(hasher);
            let state = State::Loading {
                cell: cell.clone(),
                interest: 1,
                stamp: d.stamp(),
            };
            let key = taken(&mut carry);
            d.table
                .insert_unique(hash, Slot { key, state }, |s| hasher.hash_one(&s.key));
            Found::Added
        })
    }

    /// The value at `key` for a blocking caller, or the load in flight joined, or this
    /// caller's own load put there (a pending cell with no computation: the caller runs
    /// its loader, completes the cell and settles the slot itself). `Claim::Mine` carries
    /// a copy of the key for the weigher, made only when the store weighs.
    pub(crate) fn claim(&self, hash: u64, key: K) -> Claim<'_, K, V, E, S>
    where
        K: Clone,
    {
        match self.seen(hash, &key) {
            Seen::Value(value) => Claim::Ready(value),
            Seen::Loading => match self.join_or_add(hash, key, None) {
                Found::Absent(k) => self.claim_new(hash, k),
                found => self.claimed(hash, found, None),
            },
            Seen::Absent => self.claim_new(hash, key),
        }
    }

    fn claim_new(&self, hash: u64, key: K) -> Claim<'_, K, V, E, S>
    where
        K: Clone,
    {
        let kept = self.weighs().then(|| key.clone());
        let cell = LoadCell::pending();
        let found = self.join_or_add(hash, key, Some(&cell));
        self.claimed(hash, found, Some((cell, kept)))
    }

    fn claimed(
        &self,
        hash: u64,
        found: Found<K, V, E>,
        added: Option<(LoadCell<V, E>, Option<K>)>,
    ) -> Claim<'_, K, V, E, S> {
        match (found, added) {
            (Found::Ready(value, _key), _) => Claim::Ready(value),
            (Found::Joined(theirs, id, _key), _) => {
                Claim::Joined(Waiter::new(self, hash, id, theirs, false))
            }
            (Found::Added | Found::AddedOver(..), Some((cell, kept))) => {
                let id = load_id(&cell);
                Claim::Mine(cell, id, kept)
            }
            (Found::Added | Found::AddedOver(..) | Found::Absent(_), _) => {
                unreachable!("added only when given a load")
            }
        }
    }

    /// The weight of a loaded `value`: weighed with `key` if the store weighs (the load
    /// kept a copy for it), else the unit weight (1 bounded, 0 unbounded).
    pub(crate) fn weigh_loaded(&self, key: Option<&K>, value: &V) -> Option<u32> {
        match (key, &self.weigher) {
            (Some(key), Some(_)) => self.weigh(key, value),
            _ => Some(u32::from(self.bound.is_some())),
        }
    }
}

/// What a blocking caller found: see [`Store::claim`].
pub(crate) enum Claim<'a, K, V, E, S> {
    /// A complete value (a clone).
    Ready(V),
    /// A load in flight, joined.
    Joined(Waiter<'a, K, V, E, S>),
    /// This caller's own load: its cell is in the slot, counting this caller's interest;
    /// the caller completes it and settles the slot ([`Store::settle`]). With a copy of
    /// the key for the weigher.
    Mine(LoadCell<V, E>, LoadId, Option<K>),
}

impl<K, V, E, S> Store<K, V, E, S>
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
    S: BuildHasher + Send + Sync + 'static,
{
    /// The value at `key` (whose hash is `hash`), or a waiter on its load: joined if one is
    /// in flight (`start` is not called), else started with the future `start` makes
    /// (called with no lock held; if another caller's load landed meanwhile, that future is
    /// dropped unpolled). A load that failed, whose slot its failure is about to remove,
    /// counts as none: this call's load takes its place. The load carries a copy of the key
    /// only when the store weighs its values.
    #[cfg(test)]
    pub(crate) fn get_or_load<Fut>(
        self: &Arc<Self>,
        hash: u64,
        key: K,
        start: impl FnOnce(&K) -> Fut,
    ) -> Lookup<'_, K, V, E, S>
    where
        Fut: Future<Output = Result<V, Failure<E>>> + Send + 'static,
    {
        // The hit, under the read lock.
        match self.seen(hash, &key) {
            Seen::Value(value) => Lookup::Ready(value),
            seen => self.get_or_load_seen(hash, key, seen, start),
        }
    }

    /// [`get_or_load`](Self::get_or_load) after the caller's own probe ([`seen`](Self::seen))
    /// found no value: `seen` is what it found (a `Seen::Value` is handed back as ready).
    /// The hit stays in the caller's code, with no call and no move of its key and loader.
    pub(crate) fn get_or_load_seen<Fut>(
        self: &Arc<Self>,
        hash: u64,
        key: K,
        seen: Seen<V>,
        start: impl FnOnce(&K) -> Fut,
    ) -> Lookup<'_, K, V, E, S>
    where
        Fut: Future<Output = Result<V, Failure<E>>> + Send + 'static,
    {
        // A load in flight is joined under the write lock without making a loader
        // (e4cc24a); only a key with neither, or whose load failed, makes one.
        let key = match seen {
            Seen::Value(value) => return Lookup::Ready(value),
            Seen::Loading => match self.join_or_add(hash, key, None) {
                Found::Absent(key) => key,
                found => return self.lookup(hash, found, None),
            },
            Seen::Absent => key,
        };
        let kept = self.weighs().then(|| key.clone());
        let load = start(&key);
        // The cell made with its computation, which knows it by a weak handle and its
        // address (its id), in one step: no computation to attach, no one to wake.
        let cell = LoadCell::boxed_cyclic(|me| {
            let id = me.as_ptr() as LoadId;
            run_load(load, Arc::downgrade(self), me, hash, id, kept)
        });
        let found = self.join_or_add(hash, key, Some(&cell));
        // Our cell, and its unpolled loader if another load landed first, are dropped
        // with no lock held.
        self.lookup(hash, found, Some(cell))
    }
}

impl<K, V, E, S> Store<K, V, E, S> {
    /// What `join_or_add` found, as a lookup; `added` is the load it was given, if any.
    fn lookup(
        &self,
        hash: u64,
        found: Found<K, V, E>,
        added: Option<LoadCell<V, E>>,
    ) -> Lookup<'_, K, V, E, S> {
        match (found, added) {
            (Found::Ready(value, _key), _) => Lookup::Ready(value),
            (Found::Joined(theirs, id, _key), _) => {
                Lookup::Wait(Waiter::new(self, hash, id, theirs, false))
            }
            (Found::Added | Found::AddedOver(..), Some(cell)) => {
                Lookup::Wait(Waiter::new(self, hash, load_id(&cell), cell, true))
            }
            (Found::Added | Found::AddedOver(..) | Found::Absent(_), _) => {
                unreachable!("added only when given a load")
            }
        }
    }
}

/// Takes what a write carried into its lock (its key, its value), once the user code that
/// may panic under the lock is done (rev4).
fn taken<T>(carry: &mut Option<T>) -> T {
    carry
        .take()
        .unwrap_or_else(|| unreachable!("taken once, after the probe"))
}

/// What the write-locked step of [`Store::get_or_load`] (`join_or_add`) found; what it
/// carries out of the lock (an unused key, a replaced load) is dropped with no lock held.
enum Found<K, V, E> {
    /// A value (and the key, unused).
    Ready(V, K),
    /// A load in flight, joined.
    Joined(LoadCell<V, E>, LoadId, K),
    /// The load given, put there.
    Added,
    /// The load given, put in place of a failed load (carried out, with the unused key).
    AddedOver(State<V, E>, K),
    /// Neither a value nor a load (or a failed one), and no load given.
    Absent(K),
}

/// What the write-locked step of [`Store::put_absent`] found; what it carries out of the
/// lock (a replaced load, an unused key) is dropped with no lock held.
enum Put<K, V, E> {
    /// `value` is stored (its stamp if on the books), in place of the failed load, if any.
    Stored(Option<u64>, Option<Slot<K, V, E>>),
    /// The key's value (there, or its load's just completed).
    There(V),
    /// A load in flight, to be settled with `value`.
    Settle(LoadCell<V, E>, LoadId),
}

/// The computation of the load `id` at `hash`: the loader, then the weigher (with `key`,
/// kept for it), then the settle.
async fn run_load<K, V, E, S, Fut>(
    load: Fut,
    store: Weak<Store<K, V, E, S>>,
    cell: WeakLazy<V, Failure<E>>,
    hash: u64,
    id: LoadId,
    key: Option<K>,
) -> Result<V, Failure<E>>
where
    K: Eq + Hash,
    V: Clone,
    S: BuildHasher,
    Fut: Future<Output = Result<V, Failure<E>>>,
{
    // The guard keeps the cell's weak handle (and its allocation) until the computation
    // is dropped; the settle below upgrades it from there.
    let mut guard = Unsettled {
        store,
        cell,
        hash,
        id,
    };
    let outcome = load.await;
    // The clone for the cell is user code: taken while the guard is armed, so that a
    // clone that panics is the load's panic (its slot goes, as the cache's README says of
    // "the clone of the value it returned"; rev3).
    let outcome = outcome.map(|value| {
        let copy = value.clone();
        (value, copy)
    });
    // From here on this function settles the slot itself: the guard is disarmed.
    let store = std::mem::take(&mut guard.store);
    let (Some(store), Some(cell)) = (store.upgrade(), guard.cell.upgrade()) else {
        // The store is gone, or the cell (no one is driving it then): nothing to settle.
        return outcome.map(|(value, _)| value);
    };
    match outcome {
        Ok((value, copy)) => {
            // Weighed with no lock held (a panic is caught: the value is refused).
            let weight = store.weigh_loaded(key.as_ref(), &value);
            drop(key);
            // The cell first: if a value given by `put_absent` completed it meanwhile,
            // that value is the key's and `put_absent` stores it; ours is dropped.
            if cell.succeed(copy).is_ok() {
                store.settle(hash, id, Some((value, weight)));
            }
            drop((cell, store));
            // Complete: the driver drops this computation on seeing it pending.
            std::future::pending().await
        }
        Err(failure) => {
            // The cell first (rev3), as for a value: if `put_absent` completed it meanwhile,
            // its value is the key's and it stores it. If this failure won, the slot goes;
            // until then a read finds no value and a caller that misses replaces it
            // (`get_or_load`), so that no later caller is served this failure.
            if cell.fail(failure).is_ok() {
                store.settle(hash, id, None);
            }
            drop((cell, store));
            std::future::pending().await
        }
    }
}

/// Completes the load `id` as panicked and removes its `Loading` slot if its computation
/// is dropped before its loader returned (a panic unwinding through it, or the load
/// dropped unfinished) and no one completed its cell (its last waiter's abort or
/// `put_absent` did: a no-op then, as with the store gone).
struct Unsettled<K, V, E, S> {
    store: Weak<Store<K, V, E, S>>,
    /// The load's cell; it also keeps the cell's allocation, so that `id` names no other
    /// cell while this lives.
    cell: WeakLazy<V, Failure<E>>,
    hash: u64,
    id: LoadId,
}

impl<K, V, E, S> Drop for Unsettled<K, V, E, S> {
    fn drop(&mut self) {
        // The cell first, as every completer of a load (rev3): a panic (or an unfinished
        // drop of a cell no one completed) completes it as panicked, and only if that won
        // does the slot go. A cell completed already (by `put_absent`, whose value the
        // waiters got, or an abort, whose caller removed the slot) is its completer's to
        // settle: removing its slot here made `put_absent` store nothing. With no strong
        // handle left (the cell is being dropped), no slot holds it either.
        let (Some(store), Some(cell)) = (self.store.upgrade(), self.cell.upgrade()) else {
            return;
        };
        if cell.die() {
            // Dropped with no lock held; the cell in it is this computation's own, which
            // its driver (or aborter) still holds, as it holds `cell`'s.
            drop(store.remove_load(self.hash, self.id));
        }
    }
}

/// A caller waiting on a load: resolves to a clone of its outcome, driving it when no one
/// else is. Counts as one interest in the load until it resolves (the load is complete
/// then, and its completer settles the slot: nothing is taken back) or is dropped
/// unresolved (one interest is taken back, see [`Store::uninterested`]).
pub(crate) struct Waiter<'a, K, V, E, S> {
    store: &'a Store<K, V, E, S>,
    hash: u64,
    id: LoadId,
    cell: LoadCell<V, E>,
    /// Made on the first `Pending`, so that reading a complete load allocates nothing.
    wait: Option<LoadWait<V, E>>,
    interested: bool,
    added: bool,
}

impl<'a, K, V, E, S> Waiter<'a, K, V, E, S> {
    fn new(
        store: &'a Store<K, V, E, S>,
        hash: u64,
        id: LoadId,
        cell: LoadCell<V, E>,
        added: bool,
    ) -> Self {
        Waiter {
            store,
            hash,
            id,
            cell,
            wait: None,
            interested: true,
            added,
        }
    }

    /// Whether the call that made this waiter started the load (its loader is the one
    /// that runs).
    pub(crate) fn added(&self) -> bool {
        self.added
    }

    /// The load's id (its cell's address): what the re-entrancy guard knows it by.
    pub(crate) fn id(&self) -> LoadId {
        self.id
    }

    /// Whether the load is complete (a poll then drives nothing).
    pub(crate) fn is_done(&self) -> bool {
        self.cell.is_done()
    }
}

impl<K, V, E, S> Future for Waiter<'_, K, V, E, S>
where
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
{
    type Output = Result<V, Error<Failure<E>>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        // On the first poll, a load that is ready at once completes here, before this
        // waiter links itself (which allocates).
        if this.wait.is_none() && !this.cell.is_done() {
            this.cell.drive_now();
        }
        let outcome = match this.cell.try_get() {
            Some(outcome) => outcome.cloned().map_err(Error::cloned),
            None => {
                let cell = &this.cell;
                let wait = this
                    .wait
                    .get_or_insert_with(|| Box::pin(cell.clone().wait_owned()));
                match wait.as_mut().poll(cx) {
                    Poll::Ready(outcome) => outcome,
                    Poll::Pending => return Poll::Pending,
                }
            }
        };
        this.wait = None;
        // The load is complete: whoever completed it settles its slot (rev3). Taking the
        // interest back here took the write lock once per waiter, and the last one removed
        // a slot that `put_absent` was about to store.
        this.interested = false;
        Poll::Ready(outcome)
    }
}

impl<K, V, E, S> Drop for Waiter<'_, K, V, E, S> {
    fn drop(&mut self) {
        // Unlink first, so that an abort below wakes no one it need not.
        self.wait = None;
        if self.interested {
            self.store.uninterested(self.hash, self.id);
        }
    }
}

// Found by hash and load id (the cell's address), never by key: no bounds, so that
// `Waiter`'s and `Unsettled`'s `Drop` can call them.
impl<K, V, E, S> Store<K, V, E, S> {
    /// Removes the slot at `hash` if it is the load `id` (a blocking load that panicked),
    /// dropping it with no lock held.
    pub(crate) fn drop_load(&self, hash: u64, id: LoadId) {
        drop(self.remove_load(hash, id));
    }

    /// Removes the slot at `hash` if it is the load `id`; returns it, to be dropped with no
    /// lock held.
    fn remove_load(&self, hash: u64, id: LoadId) -> Option<Slot<K, V, E>> {
        self.shard(hash).write(|d| {
            let entry = d.table.find_entry(hash, |s| s.state.is_load(id)).ok()?;
            Some(entry.remove().0)
        })
    }

    /// One waiter of the load `id` at `hash` less (a waiter dropped before the load ended,
    /// or `put_absent` done with it); the last one removes its slot (if it is still that
    /// load, and the load is not complete: its completer settles it) and aborts its cell,
    /// which drops the computation.
    fn uninterested(&self, hash: u64, id: LoadId) {
        let removed = self.shard(hash).write(|d| {
            let Ok(mut entry) = d.table.find_entry(hash, |s| s.state.is_load(id)) else {
                return None;
            };
            let State::Loading { interest, .. } = &mut entry.get_mut().state else {
                unreachable!("found as a load");
            };
            // Stuck at its maximum, as the map's: never decremented from there (the load
            // then runs to its end for whoever waits: a cost, never a lost load).
            if *interest != u32::MAX {
                *interest -= 1;
            }
            // A complete load's slot is its completer's to settle (rev3).
            let State::Loading { cell, interest, .. } = &entry.get().state else {
                unreachable!("found as a load");
            };
            (*interest == 0 && !cell.is_done()).then(|| entry.remove().0)
        });
        if let Some(Slot {
            state: State::Loading { cell, .. },
            ..
        }) = &removed
        {
            cell.abort();
        }
    }
}

impl<K, V, E, S> fmt::Debug for Waiter<'_, K, V, E, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Waiter")
            .field("id", &self.id)
            .field("interested", &self.interested)
            .field("added", &self.added)
            .finish_non_exhaustive()
    }
}

impl<K, V, E, S> fmt::Debug for Store<K, V, E, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("shards", &self.shards.len())
            .field("weight", &self.weight())
            .field("capacity", &self.capacity())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
