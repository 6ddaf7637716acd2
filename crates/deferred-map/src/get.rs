//! The future that awaits the value at a key.

use alloc::boxed::Box;
use core::{
    fmt,
    future::Future,
    hash::{BuildHasher, Hash},
    pin::Pin,
    task::{Context, Poll},
};

use deferred_core::{Error, OwnedLazyWait};
use futures_core::FusedFuture;

use crate::{DeferredMap, Lazy};

/// A future that resolves to a clone of the outcome at a key. Made by
/// [`DeferredMap::wait`], [`get_or_add_with`](DeferredMap::get_or_add_with) and friends.
///
/// Awaiting it drives the key's computation if it has one and no one else is polling it,
/// so a caller that stalls does not hold up the others.
///
/// It never waits on a cell that no one can complete. If it waits on the placeholder of a
/// key that no one has added yet and the placeholder is taken out of the map, it resolves
/// all the same: to the new cell's outcome if the placeholder was replaced
/// ([`insert`](DeferredMap::insert), [`replace_if`](DeferredMap::replace_if)), to
/// [`Error::Cancelled`](deferred_core::Error::Cancelled) if it was removed
/// ([`remove`](DeferredMap::remove), [`clear`](DeferredMap::clear) and the other removals).
///
/// # Cancel safety
///
/// Dropping it loses nothing for anyone else. If it was the last interested caller of a
/// computation (or placeholder) that the map made for a `wait`/`get_or_add_with`, the
/// computation is dropped, the cell cancelled, and the entry removed: nothing is left
/// behind.
///
/// ```
/// use deferred_map::DeferredMap;
/// # futures::executor::block_on(async {
/// let map: DeferredMap<&str, u32> = DeferredMap::new();
/// let get = map.get_or_add_with("k", || async { Ok(1) });
/// assert_eq!(get.await, Ok(1));
/// # });
/// ```
#[must_use = "futures do nothing unless polled"]
pub struct Get<'a, K, V, E, S> {
    map: &'a DeferredMap<K, V, E, S>,
    hash: u64,
    cell: Lazy<V, E>,
    /// Whether this future counts as interest in a transient entry (see `Slot`).
    interest: bool,
    /// Whether the call that made this future added the entry.
    added: bool,
    /// Made on the first `Pending`, so reading a complete value allocates nothing.
    wait: Option<Pin<Box<OwnedLazyWait<V, E>>>>,
    done: bool,
}

impl<'a, K, V, E, S> Get<'a, K, V, E, S> {
    pub(crate) fn new(
        map: &'a DeferredMap<K, V, E, S>,
        hash: u64,
        cell: Lazy<V, E>,
        interest: bool,
        added: bool,
    ) -> Self {
        Get {
            map,
            hash,
            cell,
            interest,
            added,
            wait: None,
            done: false,
        }
    }

    /// The cell this future waits on.
    ///
    /// ```
    /// use deferred_map::DeferredMap;
    /// let map: DeferredMap<u8, u8> = DeferredMap::new();
    /// map.add_value(1, 10);
    /// assert_eq!(map.wait(1).cell().get(), Some(&10));
    /// ```
    pub fn cell(&self) -> &Lazy<V, E> {
        &self.cell
    }

    /// Whether the call that made this future added the key's entry: for
    /// [`get_or_add_with`](DeferredMap::get_or_add_with), whether the computation that runs
    /// is the one this caller gave (the others' are dropped unrun).
    ///
    /// ```
    /// use deferred_map::DeferredMap;
    /// let map: DeferredMap<u8, u8> = DeferredMap::new();
    /// let first = map.get_or_add_with(1, || async { Ok(1) });
    /// let second = map.get_or_add_with(1, || async { Ok(2) });
    /// assert!(first.added() && !second.added());
    /// ```
    pub fn added(&self) -> bool {
        self.added
    }
}

impl<K, V, E, S> Future for Get<'_, K, V, E, S>
where
    K: Hash + Eq,
    V: Clone + Send + Sync + 'static,
    E: Clone + Send + Sync + 'static,
    S: BuildHasher,
{
    type Output = Result<V, Error<E>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        // On the first poll, a computation that is ready at once completes here, before
        // this caller links itself as an awaiter (which allocates).
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
        this.done = true;
        this.wait = None;
        if this.interest {
            this.interest = false;
            this.map.settle(this.hash, &this.cell, true);
        }
        Poll::Ready(outcome)
    }
}

impl<K, V, E, S> FusedFuture for Get<'_, K, V, E, S>
where
    K: Hash + Eq,
    V: Clone + Send + Sync + 'static,
    E: Clone + Send + Sync + 'static,
    S: BuildHasher,
{
    fn is_terminated(&self) -> bool {
        self.done
    }
}

impl<K, V, E, S> Drop for Get<'_, K, V, E, S> {
    fn drop(&mut self) {
        // Unlink first, so that an abort below wakes no one it need not.
        self.wait = None;
        if self.interest {
            self.map.settle(self.hash, &self.cell, true);
        }
    }
}

impl<K, V, E, S> fmt::Debug for Get<'_, K, V, E, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Get")
            .field("interest", &self.interest)
            .field("added", &self.added)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}
