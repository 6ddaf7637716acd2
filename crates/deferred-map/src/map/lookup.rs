//! Shards and lookup: which shard a hash picks, and finding a key in it (counting the caller
//! as interest, or taking a handle, as the lookup asks); the reads built on it.

use core::{
    borrow::Borrow,
    hash::{BuildHasher, Hash},
};

use deferred_core::Error;
use hashbrown::HashTable;

use super::{
    entry::{Kind, Slot},
    DeferredMap,
};
use crate::{lock::ShardLock, Lazy};

impl<K, V, E, S> DeferredMap<K, V, E, S> {
    /// The shard that entries of `hash` live in.
    pub(super) fn shard(&self, hash: u64) -> &ShardLock<HashTable<Slot<K, V, E>>> {
        // The top bits pick the shard; hashbrown uses the low ones within it.
        let index = if self.shift == u64::BITS {
            0
        } else {
            (hash >> self.shift) as usize
        };
        &self.shards[index]
    }
}

/// How `find` treats what it finds.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Lookup {
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
pub(super) enum Found<V, E> {
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
    pub(super) fn hash<Q: Hash + ?Sized>(&self, key: &Q) -> u64 {
        self.hasher.hash_one(key)
    }

    /// Looks `key` up. With `Lookup::Wait` or `Live`, a hit on a pending transient entry
    /// counts the caller as interest in it; with `Live`, a transient entry that has already
    /// failed counts as absent and is removed (its waiters hold their own handles), so a
    /// failure is never served to a caller that came after it, even before the failed
    /// computation's waiters have settled.
    pub(super) fn find<Q>(&self, hash: u64, key: &Q, how: Lookup) -> Found<V, E>
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
                slot.interested();
            }
            Found::Hit(slot.cell.clone(), interest)
        });
        drop(stale); // outside the lock: dropping runs user code
        found
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
        self.try_get_with_hashed(self.hash(key), key, read)
    }

    /// As [`try_get_with`](Self::try_get_with), with the key's hash given: `hash` must be
    /// `self.hasher().hash_one(key)`. For layers built on this map, which hash a key once per
    /// operation and pass the hash down; not part of the stable API. A wrong hash makes the
    /// call miss the entry, or put it where lookups by key do not find it (never unsoundness).
    #[doc(hidden)]
    #[inline]
    pub fn try_get_with_hashed<Q, R>(
        &self,
        hash: u64,
        key: &Q,
        read: impl FnOnce(Result<&V, Error<&E>>) -> R,
    ) -> Option<R>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        self.shard(hash).read(|t| {
            let slot = t.find(hash, |s| Borrow::<Q>::borrow(&s.key) == key)?;
            slot.cell.try_get().map(read)
        })
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
}
