use core::fmt;

/// Why a [`Deferred`](crate::Deferred) holds no value: it failed with an error, it was
/// cancelled, or the computation meant to complete it panicked.
///
/// Awaiting a cell yields `Result<&T, Error<&E>>`; the cloning forms yield
/// `Result<T, Error<E>>`. The three cases are distinct on purpose: a caller can retry after
/// `Cancelled`, report `Failed(e)`, and treat `Panicked` as a bug in the computation.
///
/// ```
/// use deferred_core::{Deferred, Error};
///
/// let cell: Deferred<u32, &str> = Deferred::new();
/// cell.fail("disk on fire").unwrap();
/// assert_eq!(cell.try_get(), Some(Err(Error::Failed(&"disk on fire"))));
/// assert_eq!(
///     Error::Failed("disk on fire").to_string(),
///     "the deferred computation failed: disk on fire",
/// );
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Error<E> {
    /// The cell was completed with an error (Kotlin `completeExceptionally`, Effect `fail`).
    Failed(E),
    /// The cell was cancelled before a value was set (Kotlin `cancel`, Effect `interrupt`),
    /// explicitly or because its [`Producer`](crate::Producer) was dropped.
    Cancelled,
    /// The computation that was to complete the cell panicked (Effect `die`).
    Panicked,
}

impl<E> Error<E> {
    /// Borrows the error: `&Error<E>` to `Error<&E>`.
    ///
    /// ```
    /// use deferred_core::Error;
    /// let e: Error<String> = Error::Failed("boom".into());
    /// assert_eq!(e.as_ref(), Error::Failed(&"boom".to_string()));
    /// ```
    pub fn as_ref(&self) -> Error<&E> {
        match self {
            Error::Failed(e) => Error::Failed(e),
            Error::Cancelled => Error::Cancelled,
            Error::Panicked => Error::Panicked,
        }
    }

    /// Maps the error of `Failed`, leaving `Cancelled` and `Panicked` as they are.
    ///
    /// ```
    /// use deferred_core::Error;
    /// assert_eq!(Error::Failed(2).map(|n| n * 10), Error::Failed(20));
    /// assert_eq!(Error::<i32>::Cancelled.map(|n| n * 10), Error::Cancelled);
    /// ```
    pub fn map<F, O: FnOnce(E) -> F>(self, op: O) -> Error<F> {
        match self {
            Error::Failed(e) => Error::Failed(op(e)),
            Error::Cancelled => Error::Cancelled,
            Error::Panicked => Error::Panicked,
        }
    }

    /// The error of `Failed`, if it is that.
    ///
    /// ```
    /// use deferred_core::Error;
    /// assert_eq!(Error::Failed(7).failed(), Some(7));
    /// assert_eq!(Error::<i32>::Panicked.failed(), None);
    /// ```
    pub fn failed(self) -> Option<E> {
        match self {
            Error::Failed(e) => Some(e),
            _ => None,
        }
    }

    /// Whether this is `Cancelled`.
    ///
    /// ```
    /// use deferred_core::Error;
    /// assert!(Error::<()>::Cancelled.is_cancelled());
    /// ```
    pub fn is_cancelled(&self) -> bool {
        matches!(self, Error::Cancelled)
    }

    /// Whether this is `Panicked`.
    ///
    /// ```
    /// use deferred_core::Error;
    /// assert!(Error::<()>::Panicked.is_panicked());
    /// ```
    pub fn is_panicked(&self) -> bool {
        matches!(self, Error::Panicked)
    }
}

impl<E: Clone> Error<&E> {
    /// Clones the borrowed error: `Error<&E>` to `Error<E>`.
    ///
    /// ```
    /// use deferred_core::Error;
    /// let s = String::from("x");
    /// assert_eq!(Error::Failed(&s).cloned(), Error::Failed(s.clone()));
    /// ```
    pub fn cloned(self) -> Error<E> {
        self.map(E::clone)
    }
}

impl<E: fmt::Display> fmt::Display for Error<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Failed(e) => write!(f, "the deferred computation failed: {e}"),
            Error::Cancelled => f.write_str("the deferred value was cancelled before it was set"),
            Error::Panicked => f.write_str("the computation of the deferred value panicked"),
        }
    }
}

impl<E: core::error::Error + 'static> core::error::Error for Error<E> {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            Error::Failed(e) => Some(e),
            _ => None,
        }
    }
}
