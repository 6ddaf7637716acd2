//! `Store`: the cache's own sharded table, whose slots hold complete values inline and a
//! `Lazy` cell only while a load is in flight (docs/value-slots.md).
//!
//! A slot is `Ready { value, meta }` (no allocation of its own) or
//! `Loading { cell, interest }`. The protocols, each under one shard's write lock:
//!
//! * **Load.** A miss puts a `Loading` slot with a fresh cell whose computation is the
//!   loader; the load is known by its cell's address (its [`LoadId`]); callers that miss
//!   meanwhile join it (`interest += 1`) without making a loader (the read probe tells a
//!   load from an absent key). A load that failed counts as absent: a caller that misses
//!   makes a loader, and its load takes the slot. The cell is driven by its waiters,
//!   outside the lock.
//! * **Settle.** When the loader returns, the computation settles its own slot, once,
//!   inside the poll that ran it: a value first completes the cell (so that a value put
//!   by [`Store::put_absent`] and the load's value cannot both win), then, if that won,
//!   replaces the slot that is still `Loading` with this cell by `Ready`; an error or a
//!   `None` likewise fails the cell first, then, if that won, removes that slot (until
//!   then the slot reads as absent, and a caller that misses replaces it). A slot that is
//!   gone (removed) or is another (a write replaced it, a new load) is left alone: nothing
//!   is stored. Whoever completes a load's cell settles its slot; waiters that get the
//!   outcome take no lock.
//! * **Cancellation.** A waiter that leaves before the load ends takes one `interest`
//!   back; the last one removes the `Loading` slot with its cell and aborts the cell, which
//!   drops the computation (unless the cell is complete: its completer settles the slot).
//!   `put_absent` holds one interest while it completes the cell and stores its value.
//! * **Panics.** The computation's drop guard (`Unsettled`), run while the panic unwinds
//!   through the poll that drove it (the loader's, or the clone of its value's), completes
//!   the cell as panicked and, if that won, removes the `Loading` slot with its cell, so
//!   the next read loads again.
//!
//! No user code runs under a shard lock but keys' `Eq` and values' `Clone` (as in the
//! map): loaders are made before it is taken, and what a call takes out of the table
//! (values, keys, cells, whose drops may drop a computation and so run its guard, which
//! takes the lock again) is dropped after it is released.

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

use crate::{error::Failure, lock::ShardLock, stored::Meta};

/// The cell of a load in flight.
pub(crate) type LoadCell<V, E> = Lazy<V, Failure<E>>;

/// A load in flight, as its settle, its drop guard and its waiters find its slot: the
/// address of its cell. Whoever compares one holds a handle to that cell (a waiter a
/// `Lazy`, the computation and its guard a `WeakLazy`, which keeps the allocation), so no
/// other cell can have that address meanwhile: unlike a counter, it never wraps onto a
/// newer load (rev3: a `u32` per shard did, after 2^32 misses in the shard).
type LoadId = usize;

fn load_id<V, E>(cell: &LoadCell<V, E>) -> LoadId {
    std::ptr::from_ref(cell.deferred()).cast::<()>() as usize
}

/// A waiter's link on a load's cell.
type LoadWait<V, E> = Pin<Box<OwnedLazyWait<V, Failure<E>>>>;

/// What a slot holds.
pub(crate) enum State<V, E> {
    /// A complete value, with the policy's view of it.
    Ready { value: V, meta: Meta },
    /// A load in flight: its cell (driven by its waiters; its address is the load's
    /// [`LoadId`]), and the number of waiters counting on it (see [`Store::uninterested`]).
    Loading { cell: LoadCell<V, E>, interest: u32 },
}

impl<V, E> State<V, E> {
    fn ready(value: V) -> Self {
        State::Ready {
            value,
            meta: Meta::new(),
        }
    }

    /// Whether this is the load `id`.
    fn is_load(&self, id: LoadId) -> bool {
        matches!(self, State::Loading { cell, .. } if load_id(cell) == id)
    }
}

/// One entry.
struct Slot<K, V, E> {
    hash: u64,
    key: K,
    state: State<V, E>,
}

/// One shard: its table behind its lock.
struct Shard<K, V, E> {
    table: ShardLock<HashTable<Slot<K, V, E>>>,
}

/// The cache's table: `[CachePadded<Shard>; shards]`, the top bits of a hash picking the
/// shard.
pub(crate) struct Store<K, V, E, S> {
    hasher: S,
    shards: Box<[CachePadded<Shard<K, V, E>>]>,
    /// `64 - log2(shards)`: a hash shifted right by it is its shard's index.
    shift: u32,
}

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
    /// An empty store with room for `capacity` entries, hashing keys with `hasher`.
    pub(crate) fn with_capacity_and_hasher(capacity: usize, hasher: S) -> Self {
        Self::with_shards(default_shards(), capacity, hasher)
    }

    /// As [`with_capacity_and_hasher`](Self::with_capacity_and_hasher), with `shards`
    /// shards (a power of two).
    fn with_shards(shards: usize, capacity: usize, hasher: S) -> Self {
        debug_assert!(shards.is_power_of_two());
        let per_shard = capacity.div_ceil(shards);
        Store {
            hasher,
            shards: (0..shards)
                .map(|_| {
                    CachePadded::new(Shard {
                        table: ShardLock::new(HashTable::with_capacity(per_shard)),
                    })
                })
                .collect(),
            shift: u64::BITS - shards.trailing_zeros(),
        }
    }

    pub(crate) fn hasher(&self) -> &S {
        &self.hasher
    }

    pub(crate) fn shard_count(&self) -> usize {
        self.shards.len()
    }

    fn shard(&self, hash: u64) -> &Shard<K, V, E> {
        // `checked_shr`: one shard shifts by 64.
        let index = hash.checked_shr(self.shift).unwrap_or(0);
        &self.shards[index as usize]
    }

    /// The number of entries: values and loads in flight. A snapshot.
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.table.read(HashTable::len))
            .sum()
    }
}

impl<K, V, E, S: BuildHasher> Store<K, V, E, S> {
    pub(crate) fn hash<Q: Hash + ?Sized>(&self, key: &Q) -> u64 {
        self.hasher.hash_one(key)
    }
}

impl<K: Eq, V: Clone, E, S> Store<K, V, E, S> {
    /// `f` on the value at `key` (whose hash is `hash`) if it is complete, under the
    /// shard's read lock: keep `f` short. A load whose cell has its value but whose settle
    /// has not stored it yet counts as complete (with a fresh `Meta`): its waiters may
    /// have it already, and a caller that got it must find it (rev3).
    pub(crate) fn read<Q, R>(&self, hash: u64, key: &Q, f: impl FnOnce(&V, &Meta) -> R) -> Option<R>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        self.shard(hash)
            .table
            .read(|t| match &t.find(hash, |s| s.key.borrow() == key)?.state {
                State::Ready { value, meta } => Some(f(value, meta)),
                State::Loading { cell, .. } => match cell.try_get()? {
                    Ok(value) => Some(f(value, &Meta::new())),
                    Err(_) => None,
                },
            })
    }

    /// Stores `value` at `key`, replacing what was there; returns what it replaced. A load
    /// in flight that is replaced goes on for its waiters, but its settle finds another
    /// slot and stores nothing: the write wins.
    pub(crate) fn insert(&self, hash: u64, key: K, value: V) -> Option<State<V, E>> {
        let (old, _unused_key) =
            self.shard(hash)
                .table
                .write(|t| match t.find_mut(hash, |s| s.key == key) {
                    Some(slot) => (
                        Some(std::mem::replace(&mut slot.state, State::ready(value))),
                        Some(key),
                    ),
                    None => {
                        let state = State::ready(value);
                        t.insert_unique(hash, Slot { hash, key, state }, |s| s.hash);
                        (None, None)
                    }
                });
        old
    }

    /// Removes the entry at `key`, value or load in flight; returns its key and state. A
    /// load removed goes on for its waiters, and its settle stores nothing.
    pub(crate) fn remove<Q>(&self, hash: u64, key: &Q) -> Option<(K, State<V, E>)>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        let slot = self.shard(hash).table.write(|t| {
            let entry = t.find_entry(hash, |s| s.key.borrow() == key).ok()?;
            Some(entry.remove().0)
        })?;
        Some((slot.key, slot.state))
    }

    /// Stores `value` at `key` unless a value is there, and returns the one stored. A load
    /// in flight is settled with `value` (its waiters get it too) unless it is completing
    /// at this very instant, in which case its value wins and is returned (this thread
    /// parks for that completion, a write already under way); a load that failed is no
    /// value, and `value` takes its place. A write or an invalidation that comes after the
    /// load's waiters got `value` wins: `value` is returned, and not stored after it.
    pub(crate) fn put_absent(&self, hash: u64, key: K, value: V) -> V {
        let shard = self.shard(hash);
        let put = shard.table.write(|t| {
            let Some(slot) = t.find_mut(hash, |s| s.key == key) else {
                let state = State::ready(value.clone());
                t.insert_unique(hash, Slot { hash, key, state }, |s| s.hash);
                return Put::Stored(None, None);
            };
            match &mut slot.state {
                State::Ready { value: there, .. } => Put::There(there.clone(), key),
                State::Loading { cell, interest } => match cell.try_get() {
                    // One interest more while this call completes the cell and stores
                    // `value` (rev3): the load's last waiter, leaving meanwhile, must not
                    // remove the slot, which is how an invalidation is told apart.
                    None => {
                        *interest = interest.saturating_add(1);
                        Put::Settle(cell.clone(), load_id(cell), key)
                    }
                    // Complete with a value: the load's settle, which completes the cell
                    // first, is about to store it; it is the key's.
                    Some(Ok(loaded)) => Put::There(loaded.clone(), key),
                    // Failed (its remover is on its way: the load's failure completes the
                    // cell first, then removes its slot): no value, `value` takes its place.
                    Some(Err(_)) => Put::Stored(
                        Some(std::mem::replace(
                            &mut slot.state,
                            State::ready(value.clone()),
                        )),
                        Some(key),
                    ),
                },
            }
        });
        // What the lock took out (a replaced load, an unused key) is dropped here.
        let (cell, id, key) = match put {
            Put::Stored(..) => return value,
            Put::There(there, _) => return there,
            Put::Settle(cell, id, key) => (cell, id, key),
        };
        // Outside the lock: completing the cell wakes its waiters (user code).
        if cell.succeed(value.clone()).is_ok() {
            // Its settle (or its failure) will find the cell complete and leave the slot to
            // us, and our interest keeps its last waiter from removing it: `value` goes in
            // the slot that is still this load. A slot gone or another is a write or an
            // invalidation since (after the waiters got `value`): it wins, left alone.
            let copy = value.clone();
            let (_old, _copy) = shard.table.write(|t| {
                match t.find_entry(hash, |s| s.hash == hash && s.state.is_load(id)) {
                    Ok(entry) => {
                        let state = &mut entry.into_mut().state;
                        (Some(std::mem::replace(state, State::ready(copy))), None)
                    }
                    Err(_) => (None, Some(copy)),
                }
            });
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
                self.put_absent(hash, key, value)
            }
        }
    }

    /// Settles the load `id` at `hash`: its slot, if it is still that load, becomes
    /// `Ready(value)`, or is removed for `None`. Returns whether the slot was the load's.
    fn settle(&self, hash: u64, id: LoadId, value: Option<V>) -> bool {
        let (old, _unused) = self.shard(hash).table.write(|t| {
            let Ok(entry) = t.find_entry(hash, |s| s.hash == hash && s.state.is_load(id)) else {
                return (None, value);
            };
            match value {
                Some(value) => {
                    let old = std::mem::replace(&mut entry.into_mut().state, State::ready(value));
                    (Some(old), None)
                }
                None => (Some(entry.remove().0.state), None),
            }
        });
        old.is_some()
    }

    #[cfg(test)]
    fn probe<Q>(&self, key: &Q) -> Probe<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
        S: BuildHasher,
    {
        let hash = self.hash(key);
        self.shard(hash).table.read(|t| {
            match t.find(hash, |s| s.key.borrow() == key).map(|s| &s.state) {
                None => Probe::Absent,
                Some(State::Ready { value, .. }) => Probe::Ready(value.clone()),
                Some(State::Loading { cell, interest }) => Probe::Loading(load_id(cell), *interest),
            }
        })
    }
}

/// What a test sees at a key.
#[cfg(test)]
#[derive(Debug, PartialEq, Eq)]
enum Probe<V> {
    Absent,
    Ready(V),
    /// A load in flight: its id and interest.
    Loading(LoadId, u32),
}

impl<K, V, E, S> Store<K, V, E, S>
where
    K: Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
    S: Send + Sync + 'static,
{
    /// The value at `key` (whose hash is `hash`), or a waiter on its load: joined if one is
    /// in flight (`start` is not called), else started with the future `start` makes
    /// (called with no lock held; if another caller's load landed meanwhile, that future is
    /// dropped unpolled). A load that failed, whose slot its failure is about to remove,
    /// counts as none: this call's load takes its place.
    pub(crate) fn get_or_load<Fut>(
        self: &Arc<Self>,
        hash: u64,
        key: K,
        start: impl FnOnce(&K) -> Fut,
    ) -> Lookup<'_, K, V, E, S>
    where
        Fut: Future<Output = Result<V, Failure<E>>> + Send + 'static,
    {
        // The hit, under the read lock (a load whose cell has its value counts, as in
        // `read`). A load in flight is joined under the write lock without making a loader
        // (e4cc24a); only a key with neither, or whose load failed, makes one.
        let shard = self.shard(hash);
        let probe = shard
            .table
            .read(|t| match t.find(hash, |s| s.key == key).map(|s| &s.state) {
                None => Ok(false),
                Some(State::Ready { value, .. }) => Err(value.clone()),
                Some(State::Loading { cell, .. }) => match cell.try_get() {
                    None => Ok(true),
                    Some(Ok(value)) => Err(value.clone()),
                    Some(Err(_)) => Ok(false),
                },
            });
        let key = match probe {
            Err(value) => return Lookup::Ready(value),
            Ok(true) => match self.join_or_add(hash, key, None) {
                Found::Absent(key) => key,
                found => return self.lookup(hash, found, None),
            },
            Ok(false) => key,
        };
        let cell = LoadCell::pending();
        let load = run_load(
            start(&key),
            Arc::downgrade(self),
            Lazy::downgrade(&cell),
            hash,
            load_id(&cell),
        );
        // Attaching to a fresh cell cannot be refused.
        drop(cell.try_attach(Box::pin(load)));
        let found = self.join_or_add(hash, key, Some(&cell));
        // Our cell, and its unpolled loader if another load landed first, are dropped
        // with no lock held.
        self.lookup(hash, found, Some(cell))
    }

    /// Under the write lock: the value at `key`, or its load in flight joined, or, if
    /// there is neither and `add` is given, that load put there. A load that failed is
    /// no value (its failure completes the cell, then removes the slot): the load given
    /// takes its place (rev3), so that no later caller is served that failure; with none
    /// given it counts as absent, and the caller makes one.
    fn join_or_add(&self, hash: u64, key: K, add: Option<&LoadCell<V, E>>) -> Found<K, V, E> {
        self.shard(hash).table.write(|t| {
            if let Some(slot) = t.find_mut(hash, |s| s.key == key) {
                return match &mut slot.state {
                    State::Ready { value, .. } => Found::Ready(value.clone(), key),
                    State::Loading { cell: theirs, .. }
                        if matches!(theirs.try_get(), Some(Err(_))) =>
                    {
                        let Some(cell) = add else {
                            return Found::Absent(key);
                        };
                        let state = State::Loading {
                            cell: cell.clone(),
                            interest: 1,
                        };
                        Found::AddedOver(std::mem::replace(&mut slot.state, state), key)
                    }
                    State::Loading { cell, interest } => {
                        *interest = interest.saturating_add(1);
                        Found::Joined(cell.clone(), load_id(cell), key)
                    }
                };
            }
            let Some(cell) = add else {
                return Found::Absent(key);
            };
            let state = State::Loading {
                cell: cell.clone(),
                interest: 1,
            };
            t.insert_unique(hash, Slot { hash, key, state }, |s| s.hash);
            Found::Added
        })
    }

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
    /// `value` is stored (in place of the failed load, if any).
    Stored(Option<State<V, E>>, Option<K>),
    /// The key's value (there, or its load's just completed).
    There(V, K),
    /// A load in flight, to be settled with `value`.
    Settle(LoadCell<V, E>, LoadId, K),
}

/// The computation of the load `id` at `hash`: the loader, then the settle.
async fn run_load<K, V, E, S, Fut>(
    load: Fut,
    store: Weak<Store<K, V, E, S>>,
    cell: WeakLazy<V, Failure<E>>,
    hash: u64,
    id: LoadId,
) -> Result<V, Failure<E>>
where
    K: Eq,
    V: Clone,
    Fut: Future<Output = Result<V, Failure<E>>>,
{
    let mut guard = Unsettled {
        store,
        cell: cell.clone(),
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
    let (Some(store), Some(cell)) = (store.upgrade(), cell.upgrade()) else {
        // The store is gone, or the cell (no one is driving it then): nothing to settle.
        return outcome.map(|(value, _)| value);
    };
    match outcome {
        Ok((value, copy)) => {
            // The cell first: if a value given by `put_absent` completed it meanwhile,
            // that value is the key's and `put_absent` stores it; ours is dropped.
            if cell.succeed(copy).is_ok() {
                store.settle(hash, id, Some(value));
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
}

impl<K, V, E, S> Future for Waiter<'_, K, V, E, S>
where
    K: Eq,
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
    /// Removes the slot at `hash` if it is the load `id`; returns it, to be dropped with no
    /// lock held.
    fn remove_load(&self, hash: u64, id: LoadId) -> Option<Slot<K, V, E>> {
        self.shard(hash).table.write(|t| {
            let entry = t
                .find_entry(hash, |s| s.hash == hash && s.state.is_load(id))
                .ok()?;
            Some(entry.remove().0)
        })
    }

    /// One waiter of the load `id` at `hash` less (a waiter dropped before the load ended,
    /// or `put_absent` done with it); the last one removes its slot (if it is still that
    /// load, and the load is not complete: its completer settles it) and aborts its cell,
    /// which drops the computation.
    fn uninterested(&self, hash: u64, id: LoadId) {
        let removed = self.shard(hash).table.write(|t| {
            let Ok(mut entry) = t.find_entry(hash, |s| s.hash == hash && s.state.is_load(id))
            else {
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
            let State::Loading { cell, interest } = &entry.get().state else {
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

#[cfg(test)]
mod tests;
