//! An entry of the map: what it holds, who may complete its cell (its `Kind`), when a caller
//! may take it over (`Claim`), and how a placeholder follows the cell that replaced it.

use alloc::boxed::Box;

use deferred_core::Error;

use crate::Lazy;

/// One entry.
pub(super) struct Slot<K, V, E> {
    pub(super) key: K,
    pub(super) hash: u64,
    pub(super) cell: Lazy<V, E>,
    /// Who can complete the cell, which decides what the map does with the entry.
    pub(super) kind: Kind,
    /// Live `Get` futures counting on a transient entry. A `u32`, so that the slot is four
    /// words for a word-sized key, not five (the map's tables are most of its memory); see
    /// [`Slot::interested`] for what happens at `u32::MAX`.
    pub(super) interest: u32,
}

impl<K, V, E> Slot<K, V, E> {
    /// Counts one more `Get` future on the entry. The count sticks at `u32::MAX` (4 294 967 295
    /// futures on one key at once, each some words of memory): from there on it is never
    /// decremented, so the entry is no longer removed when its interest runs out. Its load
    /// then runs to its end for whoever waits on it: a cost, never a lost load or waiter.
    pub(super) fn interested(&mut self) {
        self.interest = self.interest.saturating_add(1);
    }

    /// Counts one `Get` future less (see [`interested`](Self::interested)).
    pub(super) fn uninterested(&mut self) {
        if self.interest != u32::MAX {
            self.interest = self.interest.saturating_sub(1);
        }
    }
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
pub(super) enum Kind {
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
    pub(super) fn transient(self) -> bool {
        self != Kind::Kept
    }
}

/// Which entry an insertion that finds the key present claims (makes `Kept`), under the
/// lock of its lookup: the entries it is about to give a completer to.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Claim {
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
    pub(super) fn applies<K, V, E>(self, slot: &Slot<K, V, E>) -> bool {
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
pub(super) fn cancel_if_placeholder<V, E>(cell: &Lazy<V, E>, kind: Kind) {
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
pub(super) fn follow<V, E>(placeholder: &Lazy<V, E>, new: &Lazy<V, E>)
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
pub(super) struct Forward<V, E> {
    pub(super) into: Lazy<V, E>,
    /// Whether `into` was a `wait` placeholder when the add claimed it.
    pub(super) only_completer: bool,
    /// Set by `run` before it completes `into`: a `Forward` dropped with it unset was never
    /// run (the added cell was dropped pending).
    pub(super) ran: bool,
}

impl<V: Clone, E: Clone> Forward<V, E> {
    pub(super) fn run(mut self, outcome: Result<&V, Error<&E>>) {
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

#[cfg(test)]
mod tests {
    use super::{Kind, Slot};
    use crate::Lazy;

    fn slot(interest: u32) -> Slot<u64, u64, ()> {
        Slot {
            key: 1,
            hash: 1,
            cell: Lazy::pending(),
            kind: Kind::Computation,
            interest,
        }
    }

    #[cfg(target_pointer_width = "64")]
    #[test]
    fn a_slot_of_a_word_sized_key_is_four_words() {
        assert_eq!(core::mem::size_of::<Slot<u64, u64, ()>>(), 32);
    }

    #[test]
    fn interest_counts_up_and_down() {
        let mut s = slot(0);
        s.interested();
        s.interested();
        s.uninterested();
        assert_eq!(s.interest, 1);
        s.uninterested();
        s.uninterested(); // never below zero
        assert_eq!(s.interest, 0);
    }

    #[test]
    fn interest_sticks_at_its_maximum() {
        let mut s = slot(u32::MAX - 1);
        s.interested();
        s.interested();
        assert_eq!(s.interest, u32::MAX);
        s.uninterested();
        assert_eq!(s.interest, u32::MAX, "never decremented from the maximum");
    }
}
