//! `DeferredMap`: sharded hash tables of shared cells.

use alloc::{boxed::Box, vec::Vec};
use core::{
    borrow::Borrow,
    convert::Infallible,
    fmt,
    future::Future,
    hash::{BuildHasher, Hash},
};

use crossbeam_utils::CachePadded;
use deferred_core::{sync::SpinRwLock, BoxFuture, Error};
use hashbrown::HashTable;

use crate::{Get, Lazy};

/// The default hasher: `std`'s `RandomState` (SipHash with a random key per map), which
/// resists HashDoS. Without the `std` feature there is no default; give one with
/// [`DeferredMap::with_hasher`].
#[cfg(feature = "std")]
pub type DefaultHashBuilder = std::collections::hash_map::RandomState;

/// Without `std` there is no random source for a default hasher: this type has no
/// `BuildHasher` impl, so a map must be made with [`DeferredMap::with_hasher`].
#[cfg(not(feature = "std"))]
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultHashBuilder(());

/// One entry.
struct Slot<K, V, E> {
    key: K,
    hash: u64,
    cell: Lazy<V, E>,
    /// Who can complete the cell, which decides what the map does with the entry.
    kind: Kind,
    /// Live `Get` futures counting on a transient entry.
    interest: usize,
}

/// Who can complete an entry's cell. Entries the map made itself for a waiting caller
/// (`Placeholder`, `Computation`) are *transient* until they succeed: they go away when
/// their last interested caller does, or when they fail. Entries a user added, or was
/// given a way to complete (`Kept`), stay until removed.
///
/// Every change of kind happens under the shard lock, in the same critical section as the
/// lookup that decided it, so a removal (which reads the kind under the same lock) never
/// mistakes a cell that someone is about to complete for an orphan.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    /// A pending cell the map made for `wait` on an absent key. Nothing but the map can
    /// complete it: no handle to it was given out, it has no computation and no added cell
    /// forwards into it. Taken out of the map, it would leave its waiters waiting forever (the
    /// fs2-es `del` trap), so the path that takes it out settles it: a removal cancels it
    /// (`cancel_if_placeholder`), a replacement makes it follow the new cell (`follow`). An
    /// added cell that claims it and is then dropped unrun cancels it (`Forward`).
    Placeholder,
    /// The map's own computation (`get_or_add_with`). Its waiters drive it, so it completes
    /// wherever it is: a removal leaves it to them.
    Computation,
    /// Added by a user, or made completable by one: a handle was given out (`cell`,
    /// `cell_or_add`, `cell_if_present`), a computation attached (`add_with`), an added cell
    /// forwards into it (`add_cell`), or a value is being stored in it (`add_value`). The map
    /// never completes or cancels it on its own, with one exception: a placeholder that
    /// `add_cell` claimed is cancelled if the added cell is dropped without completing, since
    /// its forwarding was the completer the claim counted on (`Forward`).
    Kept,
}

impl Kind {
    fn transient(self) -> bool {
        self != Kind::Kept
    }
}

/// Which entry an insertion that finds the key present claims (makes `Kept`), under the
/// lock of its lookup: the entries it is about to give a completer to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Claim {
    /// None.
    Never,
    /// A pending placeholder (the caller completes it, or attaches a computation to it).
    PendingPlaceholder,
    /// Any pending entry (the caller forwards a cell into it).
    Pending,
    /// Any entry (the caller gives out a handle to it).
    Always,
}

impl Claim {
    fn applies<K, V, E>(self, slot: &Slot<K, V, E>) -> bool {
        match self {
            Claim::Never => false,
            Claim::PendingPlaceholder => slot.kind == Kind::Placeholder && !slot.cell.is_done(),
            Claim::Pending => !slot.cell.is_done(),
            Claim::Always => true,
        }
    }
}

/// What the map does with a cell it has just taken out (removed or replaced), with no lock
/// held: a placeholder is the one cell that nothing else can complete, so it is cancelled,
/// and its waiters get [`Error::Cancelled`] instead of waiting forever. Any other cell is
/// left to whoever can complete it. A no-op on a complete cell.
fn cancel_if_placeholder<V, E>(cell: &Lazy<V, E>, kind: Kind) {
    if kind == Kind::Placeholder {
        cell.abort();
    }
}

/// Makes a placeholder that `new` replaced follow `new`, with no lock held: its waiters get
/// `new`'s outcome (a value, an error, cancellation or `Panicked`), and drive `new`'s
/// computation if it has one, as if they had awaited `new`. Done by attaching to the
/// placeholder a computation that awaits `new`: the waiters drive it like any other, so
/// nothing waits on anyone who is not polled, and a `new` that nothing else awaits still
/// runs. The computation holds `new`; `new` does not hold the placeholder, so there is no
/// cycle: when the placeholder's last waiter goes, both can go.
fn follow<V, E>(placeholder: &Lazy<V, E>, new: &Lazy<V, E>)
where
    V: Clone + Send + Sync + 'static,
    E: Clone + Send + Sync + 'static,
{
    // Weak: a strong handle inside its own computation would keep the cell alive forever.
    let this = Lazy::downgrade(placeholder);
    let new = new.clone();
    let forward = async move {
        match new.wait_owned().await {
            Ok(value) => Ok(value),
            Err(Error::Failed(error)) => Err(error),
            // A computation ends in a value or an error: cancellation and a panic elsewhere
            // are set on the cell itself, which drops this computation on its next poll.
            outcome => {
                if let Some(this) = this.upgrade() {
                    if matches!(outcome, Err(Error::Panicked)) {
                        this.die();
                    } else {
                        this.cancel();
                    }
                }
                core::future::pending().await
            }
        }
    };
    // Refused only if the placeholder is complete already (its waiters have their outcome),
    // or if its own waiter attached a computation through `Get::cell` (theirs to drive).
    drop(placeholder.try_attach(Box::pin(forward)));
}

/// The completion callback by which a cell given to `add_cell` completes the pending cell it
/// found at the key (`into`) with its own outcome.
///
/// `on_complete` runs a callback exactly once, when the added cell completes, or drops it
/// unrun if the added cell is dropped while pending. If `into` was a `wait` placeholder that
/// the add claimed (`Kind::Kept` from then on, so a removal leaves it alone), this callback
/// is the one completer it has: dropped unrun, it would leave `into`'s waiters waiting
/// forever. So its `Drop` settles such a cell, as the added cell's outcome would have: an
/// added cell dropped pending counts as cancelled, and a forwarding that unwinds (a panicking
/// `Clone` of the value) counts as panicked. A cell that had another completer before the
/// add (a handle, a computation) is left to it, as before.
struct Forward<V, E> {
    into: Lazy<V, E>,
    /// Whether `into` was a `wait` placeholder when the add claimed it.
    only_completer: bool,
    /// Set by `run` before it completes `into`: a `Forward` dropped with it unset was never
    /// run (the added cell was dropped pending).
    ran: bool,
}

impl<V: Clone, E: Clone> Forward<V, E> {
    fn run(mut self, outcome: Result<&V, Error<&E>>) {
        self.ran = true;
        let into = &self.into;
        let _ = match outcome {
            Ok(v) => into.succeed(v.clone()).is_ok(),
            Err(Error::Failed(e)) => into.fail(e.clone()).is_ok(),
            Err(Error::Cancelled) => into.cancel(),
            Err(Error::Panicked) => into.die(),
        };
        // Drops a computation the cell may carry: it has nothing left to do.
        into.abort();
    }
}

impl<V, E> Drop for Forward<V, E> {
    fn drop(&mut self) {
        if !self.only_completer {
            return;
        }
        if !self.ran {
            // The added cell was dropped pending: as if it had been cancelled.
            self.into.abort();
        } else if !self.into.is_done() {
            // `run` unwound before completing `into` (only a panicking `Clone` can): as if
            // the added cell had panicked. A no-op if someone else is completing it now.
            self.into.die();
            self.into.abort();
        }
    }
}

type Shard<K, V, E> = CachePadded<SpinRwLock<HashTable<Slot<K, V, E>>>>;

/// A concurrent map whose values are shared [`Lazy`]s (`Deferred` cells that may carry
/// the computation that completes them): await a value by key while it is still being
/// computed, and get-or-add that computes each key once (fs2-es `DeferredMap`).
///
/// See the [crate documentation](crate) for the guarantees and the mapping from fs2-es.
///
/// ```
/// use deferred_map::DeferredMap;
/// # futures::executor::block_on(async {
/// let map: DeferredMap<&str, String> = DeferredMap::new();
/// let (a, b) = futures::join!(
///     map.get_or_add_with("user:1", || async { Ok("ada".to_string()) }),
///     map.get_or_add_with("user:1", || async { Ok("not run".to_string()) }),
/// );
/// assert_eq!((a.unwrap(), b.unwrap()), ("ada".to_string(), "ada".to_string()));
/// # });
/// ```
///
/// # Borrowed keys
///
/// Calls that take an owned key (`wait`, the `add_*` and `get_or_add_*` calls, `insert`,
/// `cell`, `cell_or_add`) may store it. Calls that only look a key up or remove its entry
/// (`wait_if_present`, `cell_if_present`, `try_get`, `try_get_with`, `is_completed`,
/// `complete`, `remove`, `remove_if`, `remove_if_completed`, `remove_if_incomplete`,
/// `replace_if`) take `&Q` for any `Q` that `K` borrows as, as `HashMap::get` does: a
/// `DeferredMap<String, _>` is read with a `&str`, without allocating a `String`. As with
/// `HashMap`, `Q`'s `Hash` and `Eq` must agree with `K`'s (the [`Borrow`] contract, which
/// `String`/`str`, `Vec<T>`/`[T]`, `Box<T>`/`T` and `K`/`K` keep); if they do not, the key
/// lookups may miss entries that are there (never a panic or unsoundness).
///
/// ```
/// use deferred_map::DeferredMap;
/// # futures::executor::block_on(async {
/// let map: DeferredMap<String, u32> = DeferredMap::new();
/// map.add_value("ada".to_string(), 36);
/// let name: &str = "ada";
/// assert_eq!(map.try_get(name), Some(Ok(36)));
/// assert_eq!(map.wait_if_present(name).unwrap().await, Ok(36));
/// assert_eq!(map.is_completed("grace"), None);
/// assert!(map.remove(name).is_some());
/// # });
/// ```
pub struct DeferredMap<K, V, E = Infallible, S = DefaultHashBuilder> {
    hasher: S,
    shards: Box<[Shard<K, V, E>]>,
    shift: u32,
}

#[cfg(feature = "std")]
impl<K, V, E> DeferredMap<K, V, E, DefaultHashBuilder> {
    /// An empty map with the default, HashDoS-resistant hasher and one shard per few
    /// threads of available parallelism.
    ///
    /// ```
    /// use deferred_map::DeferredMap;
    /// let map: DeferredMap<u64, String> = DeferredMap::new();
    /// assert!(map.is_empty());
    /// ```
    pub fn new() -> Self {
        Self::with_hasher(DefaultHashBuilder::default())
    }

    /// An empty map with room for `capacity` entries before it reallocates.
    ///
    /// ```
    /// use deferred_map::DeferredMap;
    /// let map: DeferredMap<u64, u64> = DeferredMap::with_capacity(1000);
    /// assert_eq!(map.len(), 0);
    /// ```
    pub fn with_capacity(capacity: usize) -> Self {
        Self::with_capacity_and_hasher(capacity, DefaultHashBuilder::default())
    }
}

#[cfg(feature = "std")]
impl<K, V, E> Default for DeferredMap<K, V, E, DefaultHashBuilder> {
    /// As [`DeferredMap::new`].
    fn default() -> Self {
        Self::new()
    }
}

/// The shard count: a power of two, about four per thread, so that threads rarely meet.
fn default_shards() -> usize {
    #[cfg(feature = "std")]
    let threads = std::thread::available_parallelism().map_or(4, usize::from);
    #[cfg(not(feature = "std"))]
    let threads: usize = 4;
    (threads * 4).next_power_of_two().clamp(4, 256)
}

impl<K, V, E, S> DeferredMap<K, V, E, S> {
    /// An empty map that hashes keys with `hasher` (the only way to make one without the
    /// `std` feature).
    ///
    /// ```
    /// use std::collections::hash_map::RandomState;
    /// use deferred_map::DeferredMap;
    /// let map: DeferredMap<u8, u8, (), RandomState> = DeferredMap::with_hasher(RandomState::new());
    /// assert!(map.is_empty());
    /// ```
    pub fn with_hasher(hasher: S) -> Self {
        Self::with_capacity_and_hasher(0, hasher)
    }

    /// An empty map with room for `capacity` entries, hashing keys with `hasher`.
    ///
    /// ```
    /// use std::collections::hash_map::RandomState;
    /// use deferred_map::DeferredMap;
    /// let map: DeferredMap<u8, u8, (), _> =
    ///     DeferredMap::with_capacity_and_hasher(64, RandomState::new());
    /// assert!(map.is_empty());
    /// ```
    pub fn with_capacity_and_hasher(capacity: usize, hasher: S) -> Self {
        let shards = default_shards();
        let per_shard = capacity.div_ceil(shards);
        DeferredMap {
            hasher,
            shards: (0..shards)
                .map(|_| CachePadded::new(SpinRwLock::new(HashTable::with_capacity(per_shard))))
                .collect(),
            shift: u64::BITS - shards.trailing_zeros(),
        }
    }

    /// The map's hasher.
    ///
    /// ```
    /// use std::hash::BuildHasher;
    /// use deferred_map::DeferredMap;
    /// let map: DeferredMap<u8, u8> = DeferredMap::new();
    /// assert_eq!(map.hasher().hash_one(1u8), map.hasher().hash_one(1u8));
    /// ```
    pub fn hasher(&self) -> &S {
        &self.hasher
    }

    /// The number of shards (each behind its own lock): a power of two.
    ///
    /// ```
    /// use deferred_map::DeferredMap;
    /// let map: DeferredMap<u8, u8> = DeferredMap::new();
    /// assert!(map.shard_count().is_power_of_two());
    /// ```
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    fn shard(&self, hash: u64) -> &SpinRwLock<HashTable<Slot<K, V, E>>> {
        // The top bits pick the shard; hashbrown uses the low ones within it.
        let index = if self.shift == u64::BITS {
            0
        } else {
            (hash >> self.shift) as usize
        };
        &self.shards[index]
    }

    /// The number of entries (complete or not). A snapshot: other threads may change it.
    ///
    /// ```
    /// use deferred_map::DeferredMap;
    /// let map: DeferredMap<u8, u8> = DeferredMap::new();
    /// map.add_value(1, 1);
    /// assert_eq!(map.len(), 1);
    /// ```
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.read(|t| t.len())).sum()
    }

    /// Whether the map has no entries.
    ///
    /// ```
    /// use deferred_map::DeferredMap;
    /// let map: DeferredMap<u8, u8> = DeferredMap::new();
    /// assert!(map.is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.shards.iter().all(|s| s.read(|t| t.is_empty()))
    }

    /// Removes every entry. Callers of `wait` on a key that no one had added yet (on the
    /// placeholder the map made for them, which nothing else can complete) get
    /// [`Error::Cancelled`], as with [`remove`](Self::remove). Every other pending cell is
    /// left to whoever can complete it: its holder, an added cell forwarding into it, or its
    /// waiters driving its computation.
    ///
    /// ```
    /// use deferred_map::{DeferredMap, Error};
    /// # futures::executor::block_on(async {
    /// let map: DeferredMap<u8, u8> = DeferredMap::new();
    /// map.add_value(1, 1);
    /// let waiting = map.wait(2);
    /// map.clear();
    /// assert!(map.is_empty());
    /// assert_eq!(waiting.await, Err(Error::Cancelled));
    /// # });
    /// ```
    pub fn clear(&self) {
        for shard in self.shards.iter() {
            // Settled and dropped outside the lock: cancelling wakes waiters, and dropping
            // keys and cells runs user code.
            let old = shard.write(core::mem::take);
            for slot in &old {
                cancel_if_placeholder(&slot.cell, slot.kind);
            }
            drop(old);
        }
    }

    /// Keeps only the entries for which `keep(key, cell)` says `true`. `keep` runs with no
    /// lock held, on a snapshot of each shard (keys are cloned for it, under the lock); an
    /// entry replaced meanwhile is not touched. `wait` callers on a removed placeholder get
    /// [`Error::Cancelled`], as with [`remove`](Self::remove).
    ///
    /// ```
    /// use deferred_map::DeferredMap;
    /// let map: DeferredMap<u8, u8> = DeferredMap::new();
    /// map.add_value(1, 1);
    /// map.add_value(2, 2);
    /// map.retain(|k, _| *k == 2);
    /// assert_eq!(map.keys(), vec![2]);
    /// ```
    pub fn retain(&self, mut keep: impl FnMut(&K, &Lazy<V, E>) -> bool)
    where
        K: Clone,
    {
        drop(self.extract_if(|key, cell| !keep(key, cell)));
    }

    /// Removes the entries for which `remove(key, cell)` says `true` and returns them: exactly
    /// the entries this call removed (one replaced after `remove` saw it is left alone, and is
    /// not returned). `remove` runs with no lock held, on a snapshot of each shard, as in
    /// [`retain`](Self::retain). A removed placeholder that callers of `wait` wait on is
    /// cancelled, as in [`remove`](Self::remove), before it is returned.
    ///
    /// ```
    /// use deferred_map::DeferredMap;
    /// let map: DeferredMap<u8, u8> = DeferredMap::new();
    /// map.add_value(1, 1);
    /// map.add_value(2, 2);
    /// let removed = map.extract_if(|k, _| *k == 1);
    /// assert_eq!(removed.iter().map(|(k, _)| *k).collect::<Vec<_>>(), [1]);
    /// assert_eq!(map.keys(), vec![2]);
    /// ```
    pub fn extract_if(
        &self,
        mut remove: impl FnMut(&K, &Lazy<V, E>) -> bool,
    ) -> Vec<(K, Lazy<V, E>)>
    where
        K: Clone,
    {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let snapshot: Vec<(K, u64, Lazy<V, E>)> = shard.read(|t| {
                t.iter()
                    .map(|s| (s.key.clone(), s.hash, s.cell.clone()))
                    .collect()
            });
            let doomed: Vec<(u64, Lazy<V, E>)> = snapshot
                .iter()
                .filter(|(key, _, cell)| remove(key, cell))
                .map(|(_, hash, cell)| (*hash, cell.clone()))
                .collect();
            if doomed.is_empty() {
                continue;
            }
            // Removed entries go back to the caller, who drops them with no lock held: that
            // runs user code.
            let removed: Vec<Slot<K, V, E>> = shard.write(|t| {
                doomed
                    .iter()
                    .filter_map(|(hash, cell)| {
                        let entry = t.find_entry(*hash, |s| Lazy::ptr_eq(&s.cell, cell)).ok()?;
                        Some(entry.remove().0)
                    })
                    .collect()
            });
            drop((doomed, snapshot));
            out.extend(removed.into_iter().map(|slot| {
                cancel_if_placeholder(&slot.cell, slot.kind);
                (slot.key, slot.cell)
            }));
        }
        out
    }

    /// A snapshot of the keys. The keys are cloned under their shard's lock.
    ///
    /// ```
    /// use deferred_map::DeferredMap;
    /// let map: DeferredMap<u8, u8> = DeferredMap::new();
    /// map.add_value(7, 1);
    /// assert_eq!(map.keys(), vec![7]);
    /// ```
    pub fn keys(&self) -> Vec<K>
    where
        K: Clone,
    {
        let mut keys = Vec::new();
        for shard in self.shards.iter() {
            shard.read(|t| keys.extend(t.iter().map(|slot| slot.key.clone())));
        }
        keys
    }

    /// Calls `f(key, cell)` for every entry, with no lock held, on a snapshot of each shard
    /// in turn (its keys cloned and its cells' handles taken under the shard's read lock,
    /// as in [`retain`](Self::retain)).
    ///
    /// Weakly consistent: a key present for the whole call is seen exactly once, with the cell it had when its shard was read; a
    /// key added or removed during the call may or may not be seen; the shards are read one
    /// after another, so the whole is not one point-in-time view of the map. `f` may touch
    /// the map (no lock is held while it runs); what it changes in a shard already read is
    /// not seen.
    ///
    /// Seeing a cell here leaves its entry as it was: it does not count as taking a handle,
    /// as [`cell_if_present`](Self::cell_if_present) does. So a clone of a `wait`
    /// placeholder kept from here to complete later may be cancelled first, by a removal
    /// or by its last waiter leaving; take the handle with `cell_if_present` for that.
    ///
    /// ```
    /// use deferred_map::DeferredMap;
    /// let map: DeferredMap<String, u32> = DeferredMap::new();
    /// map.add_value("ada".to_string(), 36);
    /// map.add_value("grace".to_string(), 85);
    /// let _pending = map.cell("alan".to_string());
    ///
    /// let mut done = Vec::new();
    /// map.for_each(|name, cell| {
    ///     if let Some(age) = cell.get() {
    ///         done.push((name.clone(), *age));
    ///     }
    /// });
    /// done.sort();
    /// assert_eq!(done, [("ada".to_string(), 36), ("grace".to_string(), 85)]);
    /// ```
    pub fn for_each(&self, mut f: impl FnMut(&K, &Lazy<V, E>))
    where
        K: Clone,
    {
        for shard in self.shards.iter() {
            let snapshot: Vec<(K, Lazy<V, E>)> =
                shard.read(|t| t.iter().map(|s| (s.key.clone(), s.cell.clone())).collect());
            for (key, cell) in &snapshot {
                f(key, cell);
            }
            // Dropped here, with no lock held: the last handle to a cell removed meanwhile
            // drops its computation, which runs user code.
            drop(snapshot);
        }
    }

    /// Settles a transient entry after one of its interested callers finished or went away:
    /// counts the interest down, and removes the entry if it failed, or if no one is left
    /// waiting for it (then its computation is dropped and its cell cancelled). Finds the
    /// entry by identity, so a newer entry under the same key is never touched.
    pub(crate) fn settle(&self, hash: u64, cell: &Lazy<V, E>, had_interest: bool) {
        self.release(hash, cell, had_interest, false)
    }

    /// As `settle`, and pins the entry first if `pin` (one lock: no window).
    fn release(&self, hash: u64, cell: &Lazy<V, E>, had_interest: bool, pin: bool) {
        let removed = self.shard(hash).write(|t| {
            let Ok(mut entry) = t.find_entry(hash, |s| Lazy::ptr_eq(&s.cell, cell)) else {
                return None;
            };
            let slot = entry.get_mut();
            if pin {
                slot.kind = Kind::Kept;
            }
            if had_interest {
                slot.interest = slot.interest.saturating_sub(1);
            }
            let failed = matches!(slot.cell.try_get(), Some(Err(_)));
            let abandoned = slot.interest == 0 && !slot.cell.is_done();
            (slot.kind.transient() && (failed || abandoned)).then(|| entry.remove().0)
        });
        if let Some(slot) = removed {
            // Outside the lock: cancelling wakes waiters, dropping runs user code.
            slot.cell.abort();
            drop(slot);
        }
    }
}

/// What an insertion found, with the lock released.
struct Placed<K, V, E> {
    /// The cell now at the key.
    cell: Lazy<V, E>,
    /// Whether it is the one given.
    inserted: bool,
    /// Whether the caller now counts as interest in it.
    interest: bool,
    /// The key and cell given, when the key was already there.
    unused: Option<(K, Lazy<V, E>)>,
    /// Whether the claim took a `wait` placeholder (made it `Kept`): the caller is now the
    /// only one who can complete it.
    claimed_placeholder: bool,
}

/// How `find` treats what it finds.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Lookup {
    /// Only look.
    Peek,
    /// Count the caller as interest in a pending transient entry.
    Wait,
    /// As `Wait`, and a transient entry that failed counts as absent (and is removed).
    Live,
    /// The caller takes a handle: the entry becomes `Kept`.
    Hold,
}

/// What a lookup found, with the lock released.
enum Found<V, E> {
    /// The cell, and whether the caller now counts as interest in it.
    Hit(Lazy<V, E>, bool),
    Miss,
}

impl<K, V, E, S> DeferredMap<K, V, E, S>
where
    K: Hash + Eq,
    S: BuildHasher,
{
    /// The hash of a key, or of any borrowed form of it: `K: Borrow<Q>` promises that `Q`
    /// hashes as `K` does (and `hash_one(&q)` hashes `q` itself, as `Hash for &T` forwards).
    fn hash<Q: Hash + ?Sized>(&self, key: &Q) -> u64 {
        self.hasher.hash_one(key)
    }

    /// Looks `key` up. With `Lookup::Wait` or `Live`, a hit on a pending transient entry
    /// counts the caller as interest in it; with `Live`, a transient entry that has already
    /// failed counts as absent and is removed (its waiters hold their own handles), so a
    /// failure is never served to a caller that came after it, even before the failed
    /// computation's waiters have settled.
    fn find<Q>(&self, hash: u64, key: &Q, how: Lookup) -> Found<V, E>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hold = how == Lookup::Hold;
        let interested = matches!(how, Lookup::Wait | Lookup::Live);
        let drop_failed = how == Lookup::Live;
        let must_write = |slot: &Slot<K, V, E>| {
            slot.kind.transient()
                && (hold
                    || (interested && !slot.cell.is_done())
                    || (drop_failed && matches!(slot.cell.try_get(), Some(Err(_)))))
        };
        // Under the read lock first: only counting interest or removing a failure writes.
        let shared =
            self.shard(hash).read(
                |t| match t.find(hash, |s| Borrow::<Q>::borrow(&s.key) == key) {
                    Some(slot) if must_write(slot) => None,
                    Some(slot) => Some(Found::Hit(slot.cell.clone(), false)),
                    None => Some(Found::Miss),
                },
            );
        if let Some(found) = shared {
            return found;
        }
        let mut stale = None;
        let found = self.shard(hash).write(|t| {
            let Ok(mut entry) = t.find_entry(hash, |s| Borrow::<Q>::borrow(&s.key) == key) else {
                return Found::Miss;
            };
            let slot = entry.get_mut();
            if drop_failed && slot.kind.transient() && matches!(slot.cell.try_get(), Some(Err(_))) {
                stale = Some(entry.remove().0);
                return Found::Miss;
            }
            if hold {
                slot.kind = Kind::Kept;
            }
            let interest = interested && slot.kind.transient() && !slot.cell.is_done();
            if interest {
                slot.interest += 1;
            }
            Found::Hit(slot.cell.clone(), interest)
        });
        drop(stale); // outside the lock: dropping runs user code
        found
    }

    /// Inserts `cell` under `key`, as an entry of `kind`, unless the key is present; then
    /// claims the entry there if `claim` says so. Whatever was not used (the key and `cell`
    /// when the key was present) comes back in `Placed::unused`, for the caller to drop after
    /// the lock is released: dropping them runs user code.
    fn insert_or_find(
        &self,
        hash: u64,
        key: K,
        cell: Lazy<V, E>,
        kind: Kind,
        interested: bool,
        claim: Claim,
    ) -> Placed<K, V, E> {
        self.shard(hash)
            .write(|t| match t.entry(hash, |s| s.key == key, |s| s.hash) {
                hashbrown::hash_table::Entry::Occupied(mut o) => {
                    let slot = o.get_mut();
                    let claimed = claim.applies(slot);
                    let claimed_placeholder = claimed && slot.kind == Kind::Placeholder;
                    if claimed {
                        slot.kind = Kind::Kept;
                    }
                    let interest = interested && slot.kind.transient() && !slot.cell.is_done();
                    if interest {
                        slot.interest += 1;
                    }
                    Placed {
                        cell: slot.cell.clone(),
                        inserted: false,
                        interest,
                        unused: Some((key, cell)),
                        claimed_placeholder,
                    }
                }
                hashbrown::hash_table::Entry::Vacant(v) => {
                    let interest = kind.transient() && interested;
                    v.insert(Slot {
                        key,
                        hash,
                        cell: cell.clone(),
                        kind,
                        interest: usize::from(interest),
                    });
                    Placed {
                        cell,
                        inserted: true,
                        interest,
                        unused: None,
                        claimed_placeholder: false,
                    }
                }
            })
    }

    /// Awaits the value at `key`; if the key is absent, waits until someone adds it
    /// (fs2-es `get`). The placeholder this leaves is removed again if every caller waiting
    /// on it goes away before the key is added.
    ///
    /// If the placeholder is taken out of the map before anyone adds the key, the waiters
    /// are not left waiting on a cell no one can complete (fs2-es `del` orphans them):
    /// [`insert`](Self::insert) or [`replace_if`](Self::replace_if) over it gives them the
    /// new cell's outcome, and [`remove`](Self::remove), [`clear`](Self::clear) and the
    /// other removals give them [`Error::Cancelled`].
    ///
    /// ```
    /// use deferred_map::DeferredMap;
    /// # futures::executor::block_on(async {
    /// let map: DeferredMap<&str, u8> = DeferredMap::new();
    /// let (got, ()) = futures::join!(map.wait("job"), async { map.add_value("job", 3); });
    /// assert_eq!(got, Ok(3));
    /// # });
    /// ```
    pub fn wait(&self, key: K) -> Get<'_, K, V, E, S> {
        let hash = self.hash(&key);
        if let Found::Hit(cell, interest) = self.find(hash, &key, Lookup::Wait) {
            return Get::new(self, hash, cell, interest, false);
        }
        let placed = self.insert_or_find(
            hash,
            key,
            Lazy::pending(),
            Kind::Placeholder,
            true,
            Claim::Never,
        );
        Get::new(self, hash, placed.cell, placed.interest, placed.inserted)
    }

    /// Awaits the value at `key` if the key is present; `None` at once if not (fs2-es
    /// `getOpt`).
    ///
    /// `key` may be any borrowed form of `K`, such as a `&str` for a `String` key (see
    /// [borrowed keys](DeferredMap#borrowed-keys)).
    ///
    /// ```
    /// use deferred_map::DeferredMap;
    /// # futures::executor::block_on(async {
    /// let map: DeferredMap<String, u8> = DeferredMap::new();
    /// assert!(map.wait_if_present("k").is_none());
    /// map.add_value("k".to_string(), 1);
    /// assert_eq!(map.wait_if_present("k").unwrap().await, Ok(1));
    /// # });
    /// ```
    pub fn wait_if_present<Q>(&self, key: &Q) -> Option<Get<'_, K, V, E, S>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = self.hash(key);
        match self.find(hash, key, Lookup::Wait) {
            Found::Hit(cell, interest) => Some(Get::new(self, hash, cell, interest, false)),
            Found::Miss => None,
        }
    }

    /// Awaits the value at `key`, or, if the key is absent, the value that the future made by
    /// `make` computes (fs2-es `getOrAddF`). The computation runs at most once per key at a
    /// time, however many callers race: it lives in the entry, and whichever caller is
    /// polled drives it, so a caller that stalls or is dropped does not hold up the rest.
    /// `make` is called only on a miss, with no lock held. Callers that miss at the same
    /// moment may each call their `make`, but only the future of the one whose entry lands
    /// is ever polled; the others are dropped unpolled ([`Get::added`] tells which).
    ///
    /// If the computation fails or panics, every waiter gets the error (or
    /// [`Error::Panicked`]) and the entry is removed, so the next call computes afresh. If
    /// every caller waiting on it goes away first, the computation is dropped and the entry
    /// removed.
    ///
    /// ```
    /// use deferred_map::{DeferredMap, Error};
    /// # futures::executor::block_on(async {
    /// let map: DeferredMap<u32, u32, String> = DeferredMap::new();
    /// assert_eq!(map.get_or_add_with(1, || async { Ok(10) }).await, Ok(10));
    /// let failed = map.get_or_add_with(2, || async { Err("down".to_string()) }).await;
    /// assert_eq!(failed, Err(Error::Failed("down".to_string())));
    /// assert!(map.cell_if_present(&2).is_none()); // not kept: the next call retries
    /// # });
    /// ```
    pub fn get_or_add_with<F, Fut>(&self, key: K, make: F) -> Get<'_, K, V, E, S>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
    {
        let hash = self.hash(&key);
        if let Found::Hit(cell, interest) = self.find(hash, &key, Lookup::Live) {
            return Get::new(self, hash, cell, interest, false);
        }
        // Made with no lock held. If another caller's entry landed meanwhile, this future
        // is dropped unpolled: only one computation per miss ever runs.
        let fresh = Lazy::boxed(make());
        let placed = self.insert_or_find(hash, key, fresh, Kind::Computation, true, Claim::Never);
        Get::new(self, hash, placed.cell, placed.interest, placed.inserted)
    }

    /// Awaits the value at `key`, or, if the key is absent, adds `cell` there and awaits it
    /// (fs2-es `getOrAdd`). An added cell stays until removed.
    ///
    /// ```
    /// use deferred_map::{Lazy, DeferredMap};
    /// # futures::executor::block_on(async {
    /// let map: DeferredMap<u8, u8> = DeferredMap::new();
    /// let cell: Lazy<u8> = Lazy::pending();
    /// let get = map.get_or_add_cell(1, cell.clone());
    /// cell.succeed(5).unwrap();
    /// assert_eq!(get.await, Ok(5));
    /// # });
    /// ```
    pub fn get_or_add_cell(&self, key: K, cell: Lazy<V, E>) -> Get<'_, K, V, E, S> {
        let hash = self.hash(&key);
        let placed = self.insert_or_find(hash, key, cell, Kind::Kept, true, Claim::Never);
        Get::new(self, hash, placed.cell, placed.interest, placed.inserted)
    }

    /// Awaits the value at `key`, or, if the key is absent, stores `value` there and returns
    /// it (fs2-es `getOrAddPure`).
    ///
    /// ```
    /// use deferred_map::DeferredMap;
    /// # futures::executor::block_on(async {
    /// let map: DeferredMap<u8, u8> = DeferredMap::new();
    /// assert_eq!(map.get_or_add_value(1, 5).await, Ok(5));
    /// assert_eq!(map.get_or_add_value(1, 6).await, Ok(5));
    /// # });
    /// ```
    pub fn get_or_add_value(&self, key: K, value: V) -> Get<'_, K, V, E, S> {
        let hash = self.hash(&key);
        if let Found::Hit(cell, interest) = self.find(hash, &key, Lookup::Wait) {
            return Get::new(self, hash, cell, interest, false);
        }
        let fresh = Lazy::pending();
        let _ = fresh.succeed(value);
        let placed = self.insert_or_find(hash, key, fresh, Kind::Kept, true, Claim::Never);
        Get::new(self, hash, placed.cell, placed.interest, placed.inserted)
    }

    /// The cell at `key`, adding an empty one if the key is absent (fs2-es `getDeferred`).
    /// The caller holds a handle, so the entry stays until removed.
    ///
    /// ```
    /// use deferred_map::DeferredMap;
    /// let map: DeferredMap<&str, u8> = DeferredMap::new();
    /// let cell = map.cell("k");
    /// cell.succeed(1).unwrap();
    /// assert_eq!(map.try_get(&"k"), Some(Ok(1)));
    /// ```
    pub fn cell(&self, key: K) -> Lazy<V, E> {
        self.cell_or_add(key, Lazy::pending())
    }

    /// The cell at `key`, or `cell` after adding it if the key is absent (fs2-es
    /// `getDeferredOrAdd`).
    ///
    /// ```
    /// use deferred_map::{Lazy, DeferredMap};
    /// let map: DeferredMap<u8, u8> = DeferredMap::new();
    /// let mine: Lazy<u8> = Lazy::pending();
    /// assert!(Lazy::ptr_eq(&map.cell_or_add(1, mine.clone()), &mine));
    /// assert!(Lazy::ptr_eq(&map.cell_or_add(1, Lazy::pending()), &mine));
    /// ```
    pub fn cell_or_add(&self, key: K, cell: Lazy<V, E>) -> Lazy<V, E> {
        let hash = self.hash(&key);
        // A handle now lives outside the map: the entry must not vanish under it, and the
        // holder may complete it, so it is no placeholder any more (claimed in the lookup).
        let placed = self.insert_or_find(hash, key, cell, Kind::Kept, false, Claim::Always);
        drop(placed.unused);
        placed.cell
    }

    /// The cell at `key`, if the key is present (fs2-es `getDeferredOpt`).
    ///
    /// `key` may be any borrowed form of `K`, such as a `&str` for a `String` key (see
    /// [borrowed keys](DeferredMap#borrowed-keys)).
    ///
    /// ```
    /// use deferred_map::DeferredMap;
    /// let map: DeferredMap<u8, u8> = DeferredMap::new();
    /// assert!(map.cell_if_present(&1).is_none());
    /// map.add_value(1, 1);
    /// assert_eq!(map.cell_if_present(&1).unwrap().get(), Some(&1));
    ///
    /// let names: DeferredMap<String, u8> = DeferredMap::new();
    /// names.add_value("ada".to_string(), 2);
    /// assert_eq!(names.cell_if_present("ada").unwrap().get(), Some(&2));
    /// ```
    pub fn cell_if_present<Q>(&self, key: &Q) -> Option<Lazy<V, E>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = self.hash(key);
        // As in `cell_or_add`: the lookup makes the entry `Kept`.
        match self.find(hash, key, Lookup::Hold) {
            Found::Hit(cell, _) => Some(cell),
            Found::Miss => None,
        }
    }

    /// Stores the ready `value` at `key` (fs2-es `addPure`). If the key is present and still
    /// pending, completes that cell instead, so its waiters get `value`; if it is present and
    /// complete, leaves it as it is. Returns whether `value` was stored. Never waits.
    ///
    /// ```
    /// use deferred_map::DeferredMap;
    /// # futures::executor::block_on(async {
    /// let map: DeferredMap<&str, u8> = DeferredMap::new();
    /// let waiting = map.wait("k");
    /// assert!(map.add_value("k", 1)); // completes the awaited cell
    /// assert!(!map.add_value("k", 2)); // already complete: kept
    /// assert_eq!(waiting.await, Ok(1));
    /// # });
    /// ```
    pub fn add_value(&self, key: K, value: V) -> bool {
        let hash = self.hash(&key);
        // Place a pending cell (or find the one there) and complete it: one path for
        // "absent" and "present and pending". A placeholder found is claimed in the lookup,
        // so a removal that comes between the lookup and the completion leaves it to us
        // (its waiters get the value) rather than cancelling it.
        let placed = self.insert_or_find(
            hash,
            key,
            Lazy::pending(),
            Kind::Kept,
            true,
            Claim::PendingPlaceholder,
        );
        let cell = placed.cell;
        drop(placed.unused);
        let stored = cell.succeed(value).is_ok();
        self.release(hash, &cell, placed.interest, stored && !placed.inserted);
        if stored && !placed.inserted {
            // A computation the cell may carry has nothing left to do: drop it now rather
            // than when the entry goes.
            cell.abort();
        }
        stored
    }

    /// Adds `cell` under `key` (fs2-es `add`). If the key is present and still pending, the
    /// existing cell is completed with `cell`'s outcome when `cell` completes (through a
    /// completion callback: nothing waits); if it is present and complete, nothing changes.
    /// Returns whether `cell` became the key's cell. Never waits.
    ///
    /// If the existing cell is the placeholder that a [`wait`](Self::wait) on an absent key
    /// left, `cell` becomes its completer, and a removal leaves it to `cell`. So if `cell` is
    /// dropped without completing (every handle to it gone, its forwarding callback dropped
    /// unrun), the placeholder is cancelled, as if `cell` had been cancelled: its waiters get
    /// [`Error::Cancelled`], and the entry stays, cancelled, until removed, as an added entry
    /// does. Likewise, if cloning `cell`'s value for it panics, the placeholder completes as
    /// [`Error::Panicked`]. An existing cell that something else could complete when `cell`
    /// was added (the holder of a handle, its computation) is left to it when `cell` is
    /// dropped. Whatever comes first completes the cell: a later
    /// [`add_value`](Self::add_value) or [`complete`](Self::complete) does if `cell` has not,
    /// and finds it cancelled if `cell` was dropped first.
    ///
    /// ```
    /// use deferred_map::{Lazy, DeferredMap, Error};
    /// # futures::executor::block_on(async {
    /// let map: DeferredMap<&str, u8> = DeferredMap::new();
    /// let waiting = map.wait("job");
    /// let job: Lazy<u8> = Lazy::pending();
    /// assert!(!map.add_cell("job", job.clone())); // "job" is awaited: forwarded instead
    /// job.succeed(9).unwrap();
    /// assert_eq!(waiting.await, Ok(9));
    ///
    /// let waiting = map.wait("lost");
    /// assert!(!map.add_cell("lost", Lazy::pending())); // dropped at once, never completed
    /// assert_eq!(waiting.await, Err(Error::Cancelled));
    /// # });
    /// ```
    pub fn add_cell(&self, key: K, cell: Lazy<V, E>) -> bool
    where
        V: Clone + Send + Sync + 'static,
        E: Clone + Send + Sync + 'static,
    {
        let hash = self.hash(&key);
        // A pending cell found is claimed in the lookup (made `Kept`: `cell` will complete
        // it), so that neither its waiters leaving nor a removal settle it meanwhile.
        let placed =
            self.insert_or_find(hash, key, cell.clone(), Kind::Kept, false, Claim::Pending);
        if placed.inserted {
            return true;
        }
        drop(placed.unused);
        let existing = placed.cell;
        // `cell` added over itself (a handle from `cell` or `Get::cell`) is not made to
        // forward into itself: the callback would hold its own cell, a cycle that leaks it.
        if !existing.is_done() && !Lazy::ptr_eq(&existing, &cell) {
            // Run once if `cell` completes (at once if it has), dropped unrun if `cell` is
            // dropped pending: either way a claimed placeholder is settled (see `Forward`).
            let forward = Forward {
                into: existing,
                only_completer: placed.claimed_placeholder,
                ran: false,
            };
            cell.on_complete(move |outcome| forward.run(outcome));
        }
        false
    }

    /// Adds the computation `fut` under `key` (fs2-es `addF`): it runs when the key is first
    /// awaited, driven by whoever awaits it (Rust futures do nothing until polled, and the
    /// map has no runtime to spawn on). If the key is present and pending without a
    /// computation (a `wait` placeholder), `fut` becomes its computation and the waiters start
    /// it. Returns whether `fut` was taken; otherwise it is dropped unrun.
    ///
    /// ```
    /// use deferred_map::DeferredMap;
    /// # futures::executor::block_on(async {
    /// let map: DeferredMap<&str, u8> = DeferredMap::new();
    /// let waiting = map.wait("k");
    /// assert!(map.add_with("k", async { Ok(4) }));
    /// assert_eq!(waiting.await, Ok(4));
    /// # });
    /// ```
    pub fn add_with<Fut>(&self, key: K, fut: Fut) -> bool
    where
        Fut: Future<Output = Result<V, E>> + Send + 'static,
    {
        let hash = self.hash(&key);
        let boxed: BoxFuture<V, E> = Box::pin(fut);
        // A placeholder found is claimed in the lookup (made `Kept`: the computation will
        // complete it), so that neither its waiters leaving nor a removal settle it before
        // `fut` is attached. Any other cell found either has a computation, is complete, or is
        // `Kept` already.
        let placed = self.insert_or_find(
            hash,
            key,
            Lazy::pending(),
            Kind::Kept,
            false,
            Claim::PendingPlaceholder,
        );
        drop(placed.unused);
        placed.cell.try_attach(boxed).is_ok()
    }

    /// Removes the entry at `key` and returns its cell (fs2-es `del`, which returns whether
    /// the key was there).
    ///
    /// If the entry is the placeholder that a [`wait`](Self::wait) on an absent key left (a
    /// pending cell that nothing but the map can complete), it is cancelled: the `wait`
    /// callers on it get [`Error::Cancelled`] instead of waiting forever (fs2-es `del`
    /// orphans them), and a later add of the key makes a new entry, which a new `wait` finds.
    /// Any other cell is left as it is, to its waiters and to whoever can complete it: the
    /// holder of a handle to it, an added cell forwarding into it, or its waiters driving
    /// its computation (which goes on; its value is not stored).
    ///
    /// `key` may be any borrowed form of `K`, such as a `&str` for a `String` key (see
    /// [borrowed keys](DeferredMap#borrowed-keys)).
    ///
    /// ```
    /// use deferred_map::{DeferredMap, Error};
    /// # futures::executor::block_on(async {
    /// let map: DeferredMap<u8, u8> = DeferredMap::new();
    /// map.add_value(1, 1);
    /// assert!(map.remove(&1).is_some());
    /// assert!(map.remove(&1).is_none());
    ///
    /// let waiting = map.wait(2);
    /// map.remove(&2); // the placeholder `wait` left
    /// assert_eq!(waiting.await, Err(Error::Cancelled));
    ///
    /// let names: DeferredMap<String, u8> = DeferredMap::new();
    /// names.add_value("ada".to_string(), 1);
    /// assert!(names.remove("ada").is_some());
    /// # });
    /// ```
    pub fn remove<Q>(&self, key: &Q) -> Option<Lazy<V, E>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.remove_where(key, |_| true).map(|(cell, _)| cell)
    }

    /// Removes the entry at `key` if its cell is complete, atomically (fs2-es
    /// `delIfComplete`, which checks and deletes in two steps that can race). `None` if the
    /// key is absent, else whether it was removed.
    ///
    /// `key` may be any borrowed form of `K`, such as a `&str` for a `String` key (see
    /// [borrowed keys](DeferredMap#borrowed-keys)).
    ///
    /// ```
    /// use deferred_map::DeferredMap;
    /// let map: DeferredMap<u8, u8> = DeferredMap::new();
    /// let _pending = map.cell(1);
    /// map.add_value(2, 2);
    /// assert_eq!(map.remove_if_completed(&1), Some(false));
    /// assert_eq!(map.remove_if_completed(&2), Some(true));
    /// assert_eq!(map.remove_if_completed(&3), None);
    ///
    /// let names: DeferredMap<String, u8> = DeferredMap::new();
    /// names.add_value("ada".to_string(), 1);
    /// assert_eq!(names.remove_if_completed("ada"), Some(true));
    /// ```
    pub fn remove_if_completed<Q>(&self, key: &Q) -> Option<bool>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.remove_checked(key, |cell| cell.is_done())
    }

    /// Removes the entry at `key` if its cell is not complete, atomically (fs2-es
    /// `delIfIncomplete`). `None` if the key is absent, else whether it was removed. A
    /// removed placeholder is cancelled, as in [`remove`](Self::remove).
    ///
    /// `key` may be any borrowed form of `K`, such as a `&str` for a `String` key (see
    /// [borrowed keys](DeferredMap#borrowed-keys)).
    ///
    /// ```
    /// use deferred_map::DeferredMap;
    /// let map: DeferredMap<u8, u8> = DeferredMap::new();
    /// let _pending = map.cell(1);
    /// assert_eq!(map.remove_if_incomplete(&1), Some(true));
    ///
    /// let names: DeferredMap<String, u8> = DeferredMap::new();
    /// let _pending = names.cell("ada".to_string());
    /// assert_eq!(names.remove_if_incomplete("ada"), Some(true));
    /// ```
    pub fn remove_if_incomplete<Q>(&self, key: &Q) -> Option<bool>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.remove_checked(key, |cell| !cell.is_done())
    }

    fn remove_checked<Q>(&self, key: &Q, pred: impl Fn(&Lazy<V, E>) -> bool) -> Option<bool>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = self.hash(key);
        let mut present = false;
        let removed = self.shard(hash).write(|t| {
            let Ok(entry) = t.find_entry(hash, |s| Borrow::<Q>::borrow(&s.key) == key) else {
                return None;
            };
            present = true;
            pred(&entry.get().cell).then(|| entry.remove().0)
        });
        let was_removed = removed.is_some();
        // Outside the lock: cancelling wakes waiters, dropping runs user code.
        if let Some(slot) = removed {
            cancel_if_placeholder(&slot.cell, slot.kind);
        }
        present.then_some(was_removed)
    }

    fn remove_where<Q>(
        &self,
        key: &Q,
        pred: impl FnOnce(&Lazy<V, E>) -> bool,
    ) -> Option<(Lazy<V, E>, K)>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = self.hash(key);
        let removed = self.shard(hash).write(|t| {
            let entry = t
                .find_entry(hash, |s| Borrow::<Q>::borrow(&s.key) == key)
                .ok()?;
            pred(&entry.get().cell).then(|| entry.remove().0)
        })?;
        // Outside the lock: cancelling wakes waiters.
        cancel_if_placeholder(&removed.cell, removed.kind);
        Some((removed.cell, removed.key))
    }

    /// A clone of the outcome at `key`, if the key is present and complete (fs2-es `tryGet`).
    /// Never waits. The clone is made under the key's shard lock: keep `Clone` cheap.
    ///
    /// `key` may be any borrowed form of `K`, such as a `&str` for a `String` key (see
    /// [borrowed keys](DeferredMap#borrowed-keys)).
    ///
    /// ```
    /// use deferred_map::DeferredMap;
    /// let map: DeferredMap<u8, u8> = DeferredMap::new();
    /// assert_eq!(map.try_get(&1), None);
    /// map.add_value(1, 3);
    /// assert_eq!(map.try_get(&1), Some(Ok(3)));
    ///
    /// let names: DeferredMap<String, u8> = DeferredMap::new();
    /// names.add_value("ada".to_string(), 3);
    /// assert_eq!(names.try_get("ada"), Some(Ok(3)));
    /// ```
    pub fn try_get<Q>(&self, key: &Q) -> Option<Result<V, Error<E>>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
        V: Clone,
        E: Clone,
    {
        let hash = self.hash(key);
        // The value is cloned under the shard lock, as dashmap's guard does: taking a
        // handle to the cell instead, to clone after unlocking, would make every reader of
        // a hot key bounce the cell's reference count between cores. Keep `Clone` cheap
        // (wrap large values in `Arc`).
        self.shard(hash).read(|t| {
            let slot = t.find(hash, |s| Borrow::<Q>::borrow(&s.key) == key)?;
            slot.cell
                .try_get()
                .map(|outcome| outcome.cloned().map_err(Error::cloned))
        })
    }

    /// Runs `read` on the outcome at `key` under the key's shard lock (shared with other
    /// readers), if the key is present and complete; `None` otherwise. Never waits, never
    /// clones a handle: this is the read path for layers that keep their own bookkeeping
    /// beside the value (a cache bumping a use counter, say). `read` runs with the shard
    /// read-locked: keep it short, and never write to this map from inside it.
    ///
    /// `key` may be any borrowed form of `K`, such as a `&str` for a `String` key (see
    /// [borrowed keys](DeferredMap#borrowed-keys)).
    ///
    /// ```
    /// use deferred_map::DeferredMap;
    /// let map: DeferredMap<u8, String> = DeferredMap::new();
    /// map.add_value(1, "one".to_string());
    /// assert_eq!(map.try_get_with(&1, |outcome| outcome.map(|s| s.len()).ok()), Some(Some(3)));
    /// assert_eq!(map.try_get_with(&2, |_| ()), None);
    ///
    /// let names: DeferredMap<String, u8> = DeferredMap::new();
    /// names.add_value("ada".to_string(), 3);
    /// assert_eq!(names.try_get_with("ada", |outcome| outcome.ok().copied()), Some(Some(3)));
    /// ```
    #[inline]
    pub fn try_get_with<Q, R>(
        &self,
        key: &Q,
        read: impl FnOnce(Result<&V, Error<&E>>) -> R,
    ) -> Option<R>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = self.hash(key);
        self.shard(hash).read(|t| {
            let slot = t.find(hash, |s| Borrow::<Q>::borrow(&s.key) == key)?;
            slot.cell.try_get().map(read)
        })
    }

    /// Stores `cell` at `key`, replacing and returning whatever cell was there. The new entry
    /// stays until removed.
    ///
    /// If the old cell is the placeholder that a [`wait`](Self::wait) on an absent key left (a
    /// pending cell that nothing but the map can complete), its waiters get `cell`'s
    /// outcome, as if they had awaited `cell`: the placeholder follows `cell`, and its
    /// waiters drive `cell`'s computation if it has one. Any other old cell is neither
    /// completed nor cancelled here: its waiters keep it, and whoever can complete it (the
    /// holder of a handle, an added cell forwarding into it, or its waiters driving its
    /// computation) still does.
    ///
    /// ```
    /// use deferred_map::{Lazy, DeferredMap};
    /// # futures::executor::block_on(async {
    /// let map: DeferredMap<u8, u8> = DeferredMap::new();
    /// assert!(map.insert(1, Lazy::ready(1)).is_none());
    /// let old = map.insert(1, Lazy::ready(2)).unwrap();
    /// assert_eq!((old.get(), map.try_get(&1)), (Some(&1), Some(Ok(2))));
    ///
    /// let waiting = map.wait(2);
    /// map.insert(2, Lazy::ready(5)); // over the placeholder `wait` left
    /// assert_eq!(waiting.await, Ok(5));
    /// # });
    /// ```
    pub fn insert(&self, key: K, cell: Lazy<V, E>) -> Option<Lazy<V, E>>
    where
        V: Clone + Send + Sync + 'static,
        E: Clone + Send + Sync + 'static,
    {
        let hash = self.hash(&key);
        let replaced = self.shard(hash).write(|t| {
            match t.entry(hash, |s| s.key == key, |s| s.hash) {
                hashbrown::hash_table::Entry::Occupied(mut o) => {
                    let slot = o.get_mut();
                    // The placeholder put back in its own place (a handle from `Get::cell`)
                    // is not made to follow itself: that would be a cycle.
                    let placeholder =
                        slot.kind == Kind::Placeholder && !Lazy::ptr_eq(&slot.cell, &cell);
                    slot.kind = Kind::Kept;
                    slot.interest = 0;
                    let new = placeholder.then(|| cell.clone());
                    // The old key is kept (it is equal); the given one goes back to be
                    // dropped outside the lock with the old cell.
                    Some((core::mem::replace(&mut slot.cell, cell), new, key))
                }
                hashbrown::hash_table::Entry::Vacant(v) => {
                    v.insert(Slot {
                        key,
                        hash,
                        cell,
                        kind: Kind::Kept,
                        interest: 0,
                    });
                    None
                }
            }
        });
        let (old, new, _key) = replaced?;
        if let Some(new) = new {
            // Outside the lock: attaching wakes the waiters.
            follow(&old, &new);
        }
        Some(old)
    }

    /// Removes the entry at `key` if `pred` says so for its cell, atomically; returns the
    /// removed cell. `pred` runs under the key's shard lock: keep it short, and never touch
    /// this map from inside it. The cell is handed back (and so dropped) after the lock is
    /// released. A removed placeholder is cancelled, as in [`remove`](Self::remove).
    ///
    /// `key` may be any borrowed form of `K`, such as a `&str` for a `String` key (see
    /// [borrowed keys](DeferredMap#borrowed-keys)).
    ///
    /// ```
    /// use deferred_map::{Lazy, DeferredMap};
    /// let map: DeferredMap<u8, u8> = DeferredMap::new();
    /// let mine: Lazy<u8> = Lazy::ready(1);
    /// map.insert(1, mine.clone());
    /// assert!(map.remove_if(&1, |c| !Lazy::ptr_eq(c, &mine)).is_none());
    /// assert!(map.remove_if(&1, |c| Lazy::ptr_eq(c, &mine)).is_some());
    ///
    /// let names: DeferredMap<String, u8> = DeferredMap::new();
    /// names.add_value("ada".to_string(), 1);
    /// assert!(names.remove_if("ada", |c| c.get() == Some(&1)).is_some());
    /// ```
    pub fn remove_if<Q>(
        &self,
        key: &Q,
        pred: impl FnOnce(&Lazy<V, E>) -> bool,
    ) -> Option<Lazy<V, E>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.remove_where(key, pred).map(|(cell, _)| cell)
    }

    /// Puts `cell` at `key` in place of the cell there, if there is one and `pred` says so
    /// for it, atomically: a compare-and-swap by key. Returns the replaced cell, or gives
    /// `cell` back if the key is absent or `pred` refused. `pred` runs under the key's shard
    /// lock: keep it short, and never touch this map from inside it. Whatever is handed back
    /// is dropped after the lock is released. A replaced placeholder follows `cell`, as in
    /// [`insert`](Self::insert). The key stored is the one already there, so `key` may be
    /// any borrowed form of `K`, such as a `&str` for a `String` key (see
    /// [borrowed keys](DeferredMap#borrowed-keys)).
    ///
    /// ```
    /// use deferred_map::{Lazy, DeferredMap};
    /// let map: DeferredMap<u8, u8> = DeferredMap::new();
    /// let first: Lazy<u8> = Lazy::ready(1);
    /// map.insert(1, first.clone());
    /// // Replaces only the cell this caller saw.
    /// assert!(map.replace_if(&1, Lazy::ready(2), |c| Lazy::ptr_eq(c, &first)).is_ok());
    /// assert!(map.replace_if(&1, Lazy::ready(3), |c| Lazy::ptr_eq(c, &first)).is_err());
    /// assert!(map.replace_if(&9, Lazy::ready(3), |_| true).is_err()); // absent
    ///
    /// let names: DeferredMap<String, u8> = DeferredMap::new();
    /// names.add_value("ada".to_string(), 1);
    /// assert!(names.replace_if("ada", Lazy::ready(2), |_| true).is_ok());
    /// assert_eq!(names.try_get("ada"), Some(Ok(2)));
    /// ```
    pub fn replace_if<Q>(
        &self,
        key: &Q,
        cell: Lazy<V, E>,
        pred: impl FnOnce(&Lazy<V, E>) -> bool,
    ) -> Result<Lazy<V, E>, Lazy<V, E>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
        V: Clone + Send + Sync + 'static,
        E: Clone + Send + Sync + 'static,
    {
        let hash = self.hash(key);
        let (old, new) = self.shard(hash).write(|t| {
            match t.find_mut(hash, |s| Borrow::<Q>::borrow(&s.key) == key) {
                Some(slot) if pred(&slot.cell) => {
                    // As in `insert`.
                    let placeholder =
                        slot.kind == Kind::Placeholder && !Lazy::ptr_eq(&slot.cell, &cell);
                    slot.kind = Kind::Kept;
                    slot.interest = 0;
                    let new = placeholder.then(|| cell.clone());
                    Ok((core::mem::replace(&mut slot.cell, cell), new))
                }
                _ => Err(cell),
            }
        })?;
        if let Some(new) = new {
            // Outside the lock: attaching wakes the waiters.
            follow(&old, &new);
        }
        Ok(old)
    }

    /// Whether the cell at `key` is complete; `None` if the key is absent (fs2-es
    /// `checkCompleted`).
    ///
    /// `key` may be any borrowed form of `K`, such as a `&str` for a `String` key (see
    /// [borrowed keys](DeferredMap#borrowed-keys)).
    ///
    /// ```
    /// use deferred_map::DeferredMap;
    /// let map: DeferredMap<u8, u8> = DeferredMap::new();
    /// assert_eq!(map.is_completed(&1), None);
    /// let cell = map.cell(1);
    /// assert_eq!(map.is_completed(&1), Some(false));
    /// cell.succeed(1).unwrap();
    /// assert_eq!(map.is_completed(&1), Some(true));
    ///
    /// let names: DeferredMap<String, u8> = DeferredMap::new();
    /// let _pending = names.cell("ada".to_string());
    /// assert_eq!(names.is_completed("ada"), Some(false));
    /// ```
    pub fn is_completed<Q>(&self, key: &Q) -> Option<bool>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = self.hash(key);
        self.shard(hash).read(|t| {
            t.find(hash, |s| Borrow::<Q>::borrow(&s.key) == key)
                .map(|s| s.cell.is_done())
        })
    }

    /// Completes the cell at `key` with `result`, if the key is present and pending. Returns
    /// whether this call completed it.
    ///
    /// `key` may be any borrowed form of `K`, such as a `&str` for a `String` key (see
    /// [borrowed keys](DeferredMap#borrowed-keys)).
    ///
    /// ```
    /// use deferred_map::DeferredMap;
    /// # futures::executor::block_on(async {
    /// let map: DeferredMap<&str, u8, &str> = DeferredMap::new();
    /// let waiting = map.wait("k");
    /// assert!(map.complete(&"k", Err("nope")));
    /// assert!(waiting.await.is_err());
    ///
    /// let names: DeferredMap<String, u8> = DeferredMap::new();
    /// let waiting = names.wait("ada".to_string());
    /// assert!(names.complete("ada", Ok(7)));
    /// assert_eq!(waiting.await, Ok(7));
    /// # });
    /// ```
    pub fn complete<Q>(&self, key: &Q, result: Result<V, E>) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = self.hash(key);
        match self.find(hash, key, Lookup::Peek) {
            Found::Hit(cell, _) => {
                let completed = cell.complete(result).is_ok();
                // Drops a computation the cell may carry: it has nothing left to do.
                cell.abort();
                self.settle(hash, &cell, false);
                completed
            }
            Found::Miss => false,
        }
    }

    /// A map of the given cells (fs2-es `DeferredMap.of`). A later duplicate key is ignored.
    ///
    /// ```
    /// use deferred_map::{Lazy, DeferredMap};
    /// let map: DeferredMap<u8, u8> = DeferredMap::from_cells_with_hasher(
    ///     [(1, Lazy::pending())],
    ///     std::collections::hash_map::RandomState::new(),
    /// );
    /// assert_eq!(map.is_completed(&1), Some(false));
    /// ```
    pub fn from_cells_with_hasher(
        cells: impl IntoIterator<Item = (K, Lazy<V, E>)>,
        hasher: S,
    ) -> Self {
        let map = Self::with_hasher(hasher);
        for (key, cell) in cells {
            let hash = map.hash(&key);
            let placed = map.insert_or_find(hash, key, cell, Kind::Kept, false, Claim::Never);
            drop(placed);
        }
        map
    }
}

#[cfg(feature = "std")]
impl<K: Hash + Eq, V, E> DeferredMap<K, V, E, DefaultHashBuilder> {
    /// A map of the given cells (fs2-es `DeferredMap.of`). A later duplicate key is ignored.
    ///
    /// ```
    /// use deferred_map::{Lazy, DeferredMap};
    /// let map: DeferredMap<u8, u8> = DeferredMap::from_cells([(1, Lazy::pending())]);
    /// assert_eq!(map.len(), 1);
    /// ```
    pub fn from_cells(cells: impl IntoIterator<Item = (K, Lazy<V, E>)>) -> Self {
        Self::from_cells_with_hasher(cells, DefaultHashBuilder::default())
    }

    /// A map of ready values (fs2-es `DeferredMap.ofPure`). A later duplicate key is
    /// ignored.
    ///
    /// ```
    /// use deferred_map::DeferredMap;
    /// let map: DeferredMap<&str, u8> = DeferredMap::from_values([("a", 1), ("b", 2)]);
    /// assert_eq!(map.try_get(&"b"), Some(Ok(2)));
    /// ```
    pub fn from_values(values: impl IntoIterator<Item = (K, V)>) -> Self {
        Self::from_cells(values.into_iter().map(|(k, v)| {
            let cell = Lazy::pending();
            let _ = cell.succeed(v);
            (k, cell)
        }))
    }
}

impl<K, V, E, S> fmt::Debug for DeferredMap<K, V, E, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeferredMap")
            .field("len", &self.len())
            .field("shards", &self.shards.len())
            .finish_non_exhaustive()
    }
}
