//! Removal by key: what leaves the map, and what becomes of the waiters of what left.

use core::{
    borrow::Borrow,
    hash::{BuildHasher, Hash},
};

use super::{entry::cancel_if_placeholder, DeferredMap};
#[cfg(doc)]
use crate::Error;
use crate::Lazy;

impl<K, V, E, S> DeferredMap<K, V, E, S>
where
    K: Hash + Eq,
    S: BuildHasher,
{
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
        self.remove_where(self.hash(key), key, |_| true)
            .map(|(cell, _)| cell)
    }

    /// As [`remove`](Self::remove), with the key's hash given: `hash` must be
    /// `self.hasher().hash_one(key)`. For layers built on this map, which hash a key once per
    /// operation and pass the hash down; not part of the stable API. A wrong hash makes the
    /// call miss the entry, or put it where lookups by key do not find it (never unsoundness).
    #[doc(hidden)]
    pub fn remove_hashed<Q>(&self, hash: u64, key: &Q) -> Option<Lazy<V, E>>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        self.remove_where(hash, key, |_| true).map(|(cell, _)| cell)
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
        hash: u64,
        key: &Q,
        pred: impl FnOnce(&Lazy<V, E>) -> bool,
    ) -> Option<(Lazy<V, E>, K)>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
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
        self.remove_where(self.hash(key), key, pred)
            .map(|(cell, _)| cell)
    }

    /// As [`remove_if`](Self::remove_if), with the key's hash given: `hash` must be
    /// `self.hasher().hash_one(key)`. For layers built on this map, which hash a key once per
    /// operation and pass the hash down; not part of the stable API. A wrong hash makes the
    /// call miss the entry, or put it where lookups by key do not find it (never unsoundness).
    #[doc(hidden)]
    pub fn remove_if_hashed<Q>(
        &self,
        hash: u64,
        key: &Q,
        pred: impl FnOnce(&Lazy<V, E>) -> bool,
    ) -> Option<Lazy<V, E>>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        self.remove_where(hash, key, pred).map(|(cell, _)| cell)
    }
}
