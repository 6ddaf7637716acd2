//! Removal notifications.

/// Why a value left the cache, as told to an
/// [eviction listener](crate::Builder::eviction_listener).
///
/// ```
/// use deferred_cache::RemovalCause;
/// assert!(RemovalCause::Size.was_evicted());
/// assert!(!RemovalCause::Explicit.was_evicted());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RemovalCause {
    /// Evicted to stay within capacity; or refused on admission, heavier than the whole
    /// capacity (any value, at capacity 0). Never a value that weighs nothing, whose
    /// eviction would free nothing.
    Size,
    /// Removed by `invalidate`, `remove`, `invalidate_all`, `invalidate_if`, `retain` or
    /// `invalidate_entries_if`.
    Explicit,
    /// Replaced by `insert` or `replace_if`.
    Replaced,
    /// Expired (removed by `expire_if`, as an expiring layer does).
    Expired,
}

impl RemovalCause {
    /// Whether the cache removed the value by itself (size or expiry), not on a caller's
    /// request.
    ///
    /// ```
    /// assert!(deferred_cache::RemovalCause::Expired.was_evicted());
    /// ```
    pub fn was_evicted(self) -> bool {
        matches!(self, RemovalCause::Size | RemovalCause::Expired)
    }
}

/// A listener: called with no lock held, on the thread whose operation removed the value;
/// its panics are caught (see `Cache::notify`).
pub(crate) type Listener<K, V> = Box<dyn Fn(&K, &V, RemovalCause) + Send + Sync>;
