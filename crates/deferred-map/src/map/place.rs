//! Placement and interest: inserting an entry or finding the one already there (and claiming
//! it), and settling a transient entry when an interested caller finishes or goes away.

use core::hash::{BuildHasher, Hash};

use super::{
    entry::{Claim, Kind, Slot},
    DeferredMap,
};
use crate::Lazy;

/// What an insertion found, with the lock released.
pub(super) struct Placed<K, V, E> {
    /// The cell now at the key.
    pub(super) cell: Lazy<V, E>,
    /// Whether it is the one given.
    pub(super) inserted: bool,
    /// Whether the caller now counts as interest in it.
    pub(super) interest: bool,
    /// The key and cell given, when the key was already there.
    pub(super) unused: Option<(K, Lazy<V, E>)>,
    /// Whether the claim took a `wait` placeholder (made it `Kept`): the caller is now the
    /// only one who can complete it.
    pub(super) claimed_placeholder: bool,
}

impl<K, V, E, S> DeferredMap<K, V, E, S>
where
    K: Hash + Eq,
    S: BuildHasher,
{
    /// Inserts `cell` under `key`, as an entry of `kind`, unless the key is present; then
    /// claims the entry there if `claim` says so. Whatever was not used (the key and `cell`
    /// when the key was present) comes back in `Placed::unused`, for the caller to drop after
    /// the lock is released: dropping them runs user code.
    pub(super) fn insert_or_find(
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
                        slot.interested();
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
                        interest: u32::from(interest),
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
}

impl<K, V, E, S> DeferredMap<K, V, E, S> {
    /// Settles a transient entry after one of its interested callers finished or went away:
    /// counts the interest down, and removes the entry if it failed, or if no one is left
    /// waiting for it (then its computation is dropped and its cell cancelled). Finds the
    /// entry by identity, so a newer entry under the same key is never touched.
    pub(crate) fn settle(&self, hash: u64, cell: &Lazy<V, E>, had_interest: bool) {
        self.release(hash, cell, had_interest, false)
    }

    /// As `settle`, and pins the entry first if `pin` (one lock: no window).
    pub(super) fn release(&self, hash: u64, cell: &Lazy<V, E>, had_interest: bool, pin: bool) {
        let removed = self.shard(hash).write(|t| {
            let Ok(mut entry) = t.find_entry(hash, |s| Lazy::ptr_eq(&s.cell, cell)) else {
                return None;
            };
            let slot = entry.get_mut();
            if pin {
                slot.kind = Kind::Kept;
            }
            if had_interest {
                slot.uninterested();
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
