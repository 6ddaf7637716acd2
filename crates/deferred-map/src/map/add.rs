//! Adding, replacing and completing: the calls that put a value or a cell at a key (forwarding
//! it into a placeholder that callers already wait on).

use alloc::boxed::Box;
use core::{
    borrow::Borrow,
    future::Future,
    hash::{BuildHasher, Hash},
};

use deferred_core::BoxFuture;

use super::{
    entry::{follow, Claim, Forward, Kind, Slot},
    lookup::{Found, Lookup},
    DeferredMap,
};
#[cfg(doc)]
use crate::Error;
use crate::Lazy;

impl<K, V, E, S> DeferredMap<K, V, E, S>
where
    K: Hash + Eq,
    S: BuildHasher,
{
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
        self.insert_hashed(self.hash(&key), key, cell)
    }

    /// As [`insert`](Self::insert), with the key's hash given: `hash` must be
    /// `self.hasher().hash_one(key)`. For layers built on this map, which hash a key once per
    /// operation and pass the hash down; not part of the stable API. A wrong hash makes the
    /// call miss the entry, or put it where lookups by key do not find it (never unsoundness).
    #[doc(hidden)]
    pub fn insert_hashed(&self, hash: u64, key: K, cell: Lazy<V, E>) -> Option<Lazy<V, E>>
    where
        V: Clone + Send + Sync + 'static,
        E: Clone + Send + Sync + 'static,
    {
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
        self.replace_if_hashed(self.hash(key), key, cell, pred)
    }

    /// As [`replace_if`](Self::replace_if), with the key's hash given: `hash` must be
    /// `self.hasher().hash_one(key)`. For layers built on this map, which hash a key once per
    /// operation and pass the hash down; not part of the stable API. A wrong hash makes the
    /// call miss the entry, or put it where lookups by key do not find it (never unsoundness).
    #[doc(hidden)]
    pub fn replace_if_hashed<Q>(
        &self,
        hash: u64,
        key: &Q,
        cell: Lazy<V, E>,
        pred: impl FnOnce(&Lazy<V, E>) -> bool,
    ) -> Result<Lazy<V, E>, Lazy<V, E>>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
        V: Clone + Send + Sync + 'static,
        E: Clone + Send + Sync + 'static,
    {
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
}
