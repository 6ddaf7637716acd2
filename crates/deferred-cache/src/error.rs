//! What a load can end in, besides a value.

use std::{fmt, sync::Arc};

/// Why a cache read that had to load produced no value.
///
/// A loader error is shared, not cloned: every caller that waited on the same load gets the
/// same `Arc<E>` (compare with [`Arc::ptr_eq`]). Errors are never cached: the next read of
/// the key loads again.
///
/// ```
/// use std::sync::Arc;
/// use deferred_cache::{Cache, LoadError};
/// # futures::executor::block_on(async {
/// let cache: Cache<u32, String, &str> = Cache::new();
/// let err = cache.get_with(1, || async { Err("backend down") }).await.unwrap_err();
/// assert_eq!(err, LoadError::Failed(Arc::new("backend down")));
/// assert_eq!(err.to_string(), "the loader failed: backend down");
/// # });
/// ```
///
/// New variants may come: match with a wildcard arm.
#[non_exhaustive]
pub enum LoadError<E> {
    /// The loader returned this error. Every caller that shared the load gets the same one.
    Failed(Arc<E>),
    /// The loader panicked. The caller whose poll ran it unwinds with the panic; every other
    /// caller that shared the load gets this. The entry is removed; the cache stays usable.
    Panicked,
    /// The load was cancelled before it produced a value: its cell was completed as
    /// cancelled from outside. The cache itself never does this to a load that has callers;
    /// the variant exists so that such a cell ends in an error instead of a hang.
    Cancelled,
    /// The loader (or code it called) awaited the key it is loading, on the thread that is
    /// running it: a wait that could never end. The loader gets this instead of a deadlock;
    /// whatever it then returns becomes the load's outcome.
    Reentrant,
    /// This caller joined a load started by
    /// [`optionally_get_with`](crate::Cache::optionally_get_with), whose loader found no
    /// value (`None`). Only a caller that does not expect `None` (`get_with`, `get`) and
    /// joined such a load sees this; an `optionally_get_with` caller gets `Ok(None)`.
    /// Nothing was cached: the next read loads again.
    NotFound,
}

/// How a load that produced no value ended, as kept in its cell: the loader's error, or
/// `None` from an optional loader. Cloned for each waiter (an `Arc` clone at most).
pub(crate) enum Failure<E> {
    Error(Arc<E>),
    Absent,
}

impl<E> Failure<E> {
    pub(crate) fn error(error: E) -> Self {
        Failure::Error(Arc::new(error))
    }
}

impl<E> Clone for Failure<E> {
    fn clone(&self) -> Self {
        match self {
            Failure::Error(e) => Failure::Error(Arc::clone(e)),
            Failure::Absent => Failure::Absent,
        }
    }
}

impl<E> From<deferred_core::Error<Failure<E>>> for LoadError<E> {
    fn from(error: deferred_core::Error<Failure<E>>) -> Self {
        match error {
            deferred_core::Error::Failed(Failure::Error(e)) => LoadError::Failed(e),
            deferred_core::Error::Failed(Failure::Absent) => LoadError::NotFound,
            deferred_core::Error::Panicked => LoadError::Panicked,
            deferred_core::Error::Cancelled => LoadError::Cancelled,
        }
    }
}

impl<E> LoadError<E> {
    /// The loader's error, if that is what this is.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use deferred_cache::LoadError;
    /// assert_eq!(LoadError::Failed(Arc::new(7)).failed().map(|e| **e), Some(7));
    /// assert!(LoadError::<u8>::Panicked.failed().is_none());
    /// ```
    pub fn failed(&self) -> Option<&Arc<E>> {
        match self {
            LoadError::Failed(e) => Some(e),
            _ => None,
        }
    }

    /// Whether the loader panicked.
    ///
    /// ```
    /// use deferred_cache::LoadError;
    /// assert!(LoadError::<()>::Panicked.is_panicked());
    /// ```
    pub fn is_panicked(&self) -> bool {
        matches!(self, LoadError::Panicked)
    }
}

impl<E> From<deferred_core::Error<Arc<E>>> for LoadError<E> {
    fn from(error: deferred_core::Error<Arc<E>>) -> Self {
        match error {
            deferred_core::Error::Failed(e) => LoadError::Failed(e),
            deferred_core::Error::Panicked => LoadError::Panicked,
            deferred_core::Error::Cancelled => LoadError::Cancelled,
        }
    }
}

impl<E> Clone for LoadError<E> {
    fn clone(&self) -> Self {
        match self {
            LoadError::Failed(e) => LoadError::Failed(Arc::clone(e)),
            LoadError::Panicked => LoadError::Panicked,
            LoadError::Cancelled => LoadError::Cancelled,
            LoadError::Reentrant => LoadError::Reentrant,
            LoadError::NotFound => LoadError::NotFound,
        }
    }
}

impl<E: PartialEq> PartialEq for LoadError<E> {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (LoadError::Failed(a), LoadError::Failed(b)) => a == b,
            (LoadError::Panicked, LoadError::Panicked)
            | (LoadError::Cancelled, LoadError::Cancelled)
            | (LoadError::Reentrant, LoadError::Reentrant)
            | (LoadError::NotFound, LoadError::NotFound) => true,
            _ => false,
        }
    }
}

impl<E: Eq> Eq for LoadError<E> {}

impl<E: fmt::Debug> fmt::Debug for LoadError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Failed(e) => f.debug_tuple("Failed").field(e).finish(),
            LoadError::Panicked => f.write_str("Panicked"),
            LoadError::Cancelled => f.write_str("Cancelled"),
            LoadError::Reentrant => f.write_str("Reentrant"),
            LoadError::NotFound => f.write_str("NotFound"),
        }
    }
}

impl<E: fmt::Display> fmt::Display for LoadError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Failed(e) => write!(f, "the loader failed: {e}"),
            LoadError::Panicked => f.write_str("the loader panicked"),
            LoadError::Cancelled => f.write_str("the load was cancelled"),
            LoadError::Reentrant => {
                f.write_str("the loader awaited its own key (that wait could never end)")
            }
            LoadError::NotFound => {
                f.write_str("the optional load this caller joined found no value")
            }
        }
    }
}

/// The loader's error's message is part of this error's (`the loader failed: {e}`), so
/// `source()` goes on from the loader's error's own source: walking the chain (as anyhow's
/// `{:#}` and error reporters do) prints each message once. Why the message is in
/// `Display` rather than behind `source()`: a `LoadError<E>` is a `std::error::Error` only
/// when `E` is, and loader errors are often plain `String`s, whose text `Display` alone can
/// show. The loader's error itself is [`LoadError::Failed`] (or [`LoadError::failed`]).
///
/// ```
/// use std::error::Error;
/// use deferred_cache::LoadError;
/// let io = std::io::Error::new(std::io::ErrorKind::Other, "disk on fire");
/// let error = LoadError::Failed(std::sync::Arc::new(io));
/// assert_eq!(error.to_string(), "the loader failed: disk on fire");
/// assert!(error.source().is_none()); // the io error has no cause of its own
/// ```
impl<E: std::error::Error + 'static> std::error::Error for LoadError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LoadError::Failed(e) => e.source(),
            _ => None,
        }
    }
}
