//! Waiting on a key and get-or-add: the calls that hand out a `Get` future or a cell, adding
//! a placeholder, a computation or a value when the key is absent.

use core::{
    borrow::Borrow,
    future::Future,
    hash::{BuildHasher, Hash},
};

use super::{
    entry::{Claim, Kind},
    lookup::{Found, Lookup},
    DeferredMap,
};
#[cfg(doc)]
use crate::Error;
use crate::{Get, Lazy};

impl<K, V, E, S> DeferredMap<K, V, E, S>
where
    K: Hash + Eq,
    S: BuildHasher,
{
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
        self.get_or_add_with_hashed(self.hash(&key), key, |_| make())
    }

    /// As [`get_or_add_with`](Self::get_or_add_with), with the key's hash given: `hash` must be
    /// `self.hasher().hash_one(key)`, and with `make` given the key (so that a layer whose
    /// computation needs it need not clone it). For layers built on this map, which hash a
    /// key once per operation and pass the hash down; not part of the stable API. A wrong
    /// hash makes the call miss the entry, or put it where lookups by key do not find it
    /// (never unsoundness).
    #[doc(hidden)]
    pub fn get_or_add_with_hashed<F, Fut>(&self, hash: u64, key: K, make: F) -> Get<'_, K, V, E, S>
    where
        F: FnOnce(&K) -> Fut,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
    {
        if let Found::Hit(cell, interest) = self.find(hash, &key, Lookup::Live) {
            return Get::new(self, hash, cell, interest, false);
        }
        // Made with no lock held. If another caller's entry landed meanwhile, this future
        // is dropped unpolled: only one computation per miss ever runs.
        let fresh = Lazy::boxed(make(&key));
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
}
