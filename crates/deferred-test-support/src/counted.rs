//! A key that counts how often it is hashed, for the tests that check each operation hashes
//! its key once (issue #13).

use core::{
    cell::Cell,
    hash::{Hash, Hasher},
};

thread_local! {
    static HASHED: Cell<usize> = const { Cell::new(0) };
}

/// A key whose `Hash` impl counts its calls on the calling thread (see [`hashes`]).
///
/// ```
/// use deferred_test_support::{hashes, Counted};
/// use std::hash::BuildHasher;
///
/// let state = std::collections::hash_map::RandomState::new();
/// let (count, _) = hashes(|| state.hash_one(Counted(7)));
/// assert_eq!(count, 1);
/// ```
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Counted(pub u64);

impl Hash for Counted {
    fn hash<H: Hasher>(&self, state: &mut H) {
        HASHED.with(|h| h.set(h.get() + 1));
        self.0.hash(state);
    }
}

/// How many times `op` hashed a [`Counted`] key on this thread, and what it returned.
///
/// ```
/// use deferred_test_support::{hashes, Counted};
///
/// let (count, len) = hashes(|| vec![Counted(1)].len());
/// assert_eq!((count, len), (0, 1)); // built, never hashed
/// ```
pub fn hashes<R>(op: impl FnOnce() -> R) -> (usize, R) {
    HASHED.with(|h| h.set(0));
    let r = op();
    (HASHED.with(Cell::get), r)
}
