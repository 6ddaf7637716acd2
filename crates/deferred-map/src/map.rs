//! `DeferredMap`: sharded hash tables of shared cells.

mod add;
mod entry;
mod get_or_add;
mod lookup;
mod place;
mod remove;

use alloc::{boxed::Box, vec::Vec};
use core::{
    convert::Infallible,
    fmt,
    hash::{BuildHasher, Hash},
};

use crossbeam_utils::CachePadded;
use hashbrown::HashTable;

use self::entry::{cancel_if_placeholder, Claim, Kind, Slot};
#[cfg(doc)]
use crate::Error;
use crate::{lock::ShardLock, Lazy};
#[cfg(doc)]
use core::borrow::Borrow;

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

type Shard<K, V, E> = CachePadded<ShardLock<HashTable<Slot<K, V, E>>>>;

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
                .map(|_| CachePadded::new(ShardLock::new(HashTable::with_capacity(per_shard))))
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
}

impl<K, V, E, S> DeferredMap<K, V, E, S>
where
    K: Hash + Eq,
    S: BuildHasher,
{
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
