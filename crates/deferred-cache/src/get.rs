//! The futures that read through the cache.

use std::{
    fmt,
    future::Future,
    hash::{BuildHasher, Hash},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use futures_core::FusedFuture;

use crate::{
    cache::load,
    error::Failure,
    reentrancy,
    store::{Lookup, Seen, Waiter},
    trace, Cache, Key, LoadError, Shared, Value,
};

/// Where a read's outcome came from: see [`GetWith::with_source`].
///
/// ```
/// use deferred_cache::{Cache, Source};
/// # futures::executor::block_on(async {
/// let cache: Cache<u8, u8> = Cache::new();
/// let (_, source) = cache.get_with(1, || async { Ok(1) }).with_source().await;
/// assert_eq!(source, Source::Loaded);
/// let (_, source) = cache.get_with(1, || async { Ok(1) }).with_source().await;
/// assert_eq!(source, Source::Hit);
/// # });
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    /// The value was in the cache; no loader ran.
    Hit,
    /// This caller's loader ran (its outcome is this load's, error or value).
    Loaded,
    /// This caller waited on a load another caller's loader ran; its own was dropped unrun.
    Joined,
}

// The loading reads live here, beside the futures they return (the blocking one is in
// `blocking.rs`), so that `cache.rs` need not know these futures.
impl<K: Key + Shared, V: Value, E: Shared, S: BuildHasher + Shared> Cache<K, V, E, S> {
    /// The value at `key`, loading it with `loader` on a miss. However many callers miss the
    /// same key at once, one loader runs (the first caller's; the others' are dropped
    /// unrun) and all of them get its outcome. See [`GetWith`] for cancellation and
    /// [`GetWith::with_source`] to learn whether this caller's loader ran.
    ///
    /// `loader` is called only on a miss, with no lock held. The future it returns is stored
    /// in the entry and driven by whichever waiting caller is polled. Callers that miss at
    /// the same instant may each call their `loader`, but only one of the futures is ever
    /// polled (the others are dropped unpolled): keep side effects inside the future.
    ///
    /// ```
    /// use deferred_cache::{Cache, LoadError};
    /// # futures::executor::block_on(async {
    /// let cache: Cache<&str, u32, String> = Cache::new();
    /// assert_eq!(cache.get_with("a", || async { Ok(1) }).await, Ok(1));
    /// assert_eq!(cache.get_with("a", || async { Ok(2) }).await, Ok(1)); // a hit
    /// let err = cache.get_with("b", || async { Err("down".to_string()) }).await;
    /// assert!(matches!(err, Err(LoadError::Failed(e)) if *e == "down"));
    /// assert_eq!(cache.get_with("b", || async { Ok(3) }).await, Ok(3)); // not kept
    /// # });
    /// ```
    ///
    /// One cache has one error type, so two calls on one key cannot disagree about it:
    ///
    /// ```compile_fail
    /// use deferred_cache::Cache;
    /// let cache: Cache<u8, u8, String> = Cache::new();
    /// let _ = cache.get_with(1, || async { Err::<u8, std::io::Error>(std::io::ErrorKind::Other.into()) });
    /// ```
    pub fn get_with<F, Fut>(&self, key: K, loader: F) -> GetWith<'_, K, V, E, S, F>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
    {
        GetWith::new(self, key, loader)
    }

    /// As [`get_with`](Self::get_with), with the key's hash given: `hash` must be
    /// `self.hash(&key)` (see [`hash`](Self::hash)).
    #[doc(hidden)]
    pub fn get_with_hashed<F, Fut>(
        &self,
        hash: u64,
        key: K,
        loader: F,
    ) -> GetWith<'_, K, V, E, S, F>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
    {
        GetWith::hashed(self, hash, key, loader)
    }

    /// [`get_with`](Self::get_with) whose `loader` is given the key: a caller that hands its
    /// key over need not clone it into the loader, a clone every hit would pay for.
    ///
    /// ```
    /// use deferred_cache::Cache;
    /// # futures::executor::block_on(async {
    /// let lengths: Cache<String, usize> = Cache::new();
    /// let key = "four".to_string();
    /// let len = lengths.get_with_key(key, |key| {
    ///     let len = key.len();
    ///     async move { Ok(len) }
    /// });
    /// assert_eq!(len.await, Ok(4));
    /// # });
    /// ```
    pub fn get_with_key<F, Fut>(&self, key: K, loader: F) -> GetWith<'_, K, V, E, S, WithKey<F>>
    where
        F: FnOnce(&K) -> Fut,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
    {
        GetWith::new(self, key, WithKey(loader))
    }

    /// The value at `key`, loading it with `loader` on a miss, where the loader may find no
    /// value: `Ok(None)` then, and nothing is cached (the next read loads again), as for an
    /// error. Single flight holds as in [`get_with`](Self::get_with): callers that miss the
    /// key at once share one load, and every one of them gets its `None` too.
    ///
    /// Loads are shared by key whichever method started them: an `optionally_get_with`
    /// caller that joins a `get_with` load gets its value or error; a `get_with` (or
    /// `LoadingCache::get`) caller that joins an optional load that finds nothing gets
    /// [`LoadError::NotFound`](crate::LoadError::NotFound), since it cannot return `None`.
    /// Loads that found nothing are counted in [`Stats::loads_empty`].
    ///
    /// ```
    /// use deferred_cache::Cache;
    /// # futures::executor::block_on(async {
    /// let users: Cache<u32, String> = Cache::new();
    /// let find = |id: u32| async move { (id < 100).then(|| format!("user {id}")) };
    /// assert_eq!(users.optionally_get_with(7, || find(7)).await, Ok(Some("user 7".into())));
    /// assert_eq!(users.optionally_get_with(700, || find(700)).await, Ok(None));
    /// assert!(!users.contains_key(&700)); // not cached: the next read looks again
    /// assert_eq!(users.stats().loads_empty, 1);
    /// # });
    /// ```
    ///
    /// [`Stats::loads_empty`]: crate::Stats::loads_empty
    pub fn optionally_get_with<F, Fut>(
        &self,
        key: K,
        loader: F,
    ) -> OptionallyGetWith<'_, K, V, E, S, F>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Option<V>> + Send + 'static,
    {
        OptionallyGetWith::new(self, key, loader)
    }

    /// As [`optionally_get_with`](Self::optionally_get_with), with the key's hash given:
    /// `hash` must be `self.hash(&key)` (see [`hash`](Self::hash)).
    #[doc(hidden)]
    pub fn optionally_get_with_hashed<F, Fut>(
        &self,
        hash: u64,
        key: K,
        loader: F,
    ) -> OptionallyGetWith<'_, K, V, E, S, F>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Option<V>> + Send + 'static,
    {
        OptionallyGetWith(GetWith::hashed(self, hash, key, loader))
    }
}

/// Something that starts a load: a closure given to [`Cache::get_with`], or a
/// [`LoadingCache`](crate::LoadingCache)'s loader.
pub trait Loader<K, V, E> {
    /// The load.
    type Future: Future<Output = Result<V, E>> + Send + 'static;

    /// Starts the load of `key`.
    fn start(self, key: &K) -> Self::Future;
}

impl<K, V, E, F, Fut> Loader<K, V, E> for F
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<V, E>> + Send + 'static,
{
    type Future = Fut;

    fn start(self, _key: &K) -> Fut {
        self()
    }
}

/// A [`Loader`] that is given the key: the loader of [`Cache::get_with_key`] (and of the
/// expiring layer's `get_with_key`).
///
/// ```
/// use deferred_cache::{Loader, WithKey};
/// let loader = WithKey::new(|key: &u32| {
///     let doubled = key * 2;
///     async move { Ok::<_, ()>(doubled) }
/// });
/// let load = Loader::<u32, u32, ()>::start(loader, &21);
/// assert_eq!(futures::executor::block_on(load), Ok(42));
/// ```
pub struct WithKey<F>(F);

impl<F> WithKey<F> {
    /// Wraps `loader`, called with the key when a load starts.
    ///
    /// ```
    /// # use deferred_cache::WithKey;
    /// let _loader = WithKey::new(|key: &String| std::future::ready(Ok::<_, ()>(key.len())));
    /// ```
    pub fn new(loader: F) -> Self {
        WithKey(loader)
    }
}

impl<K, V, E, F, Fut> Loader<K, V, E> for WithKey<F>
where
    F: FnOnce(&K) -> Fut,
    Fut: Future<Output = Result<V, E>> + Send + 'static,
{
    type Future = Fut;

    fn start(self, key: &K) -> Fut {
        (self.0)(key)
    }
}

impl<F> fmt::Debug for WithKey<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WithKey").finish_non_exhaustive()
    }
}

enum State<'a, K, V, E, S, L> {
    /// Not polled yet.
    Start {
        key: K,
        loader: L,
        /// The key's hash if the caller computed it already (a layer above, hashing once
        /// per operation); else it is computed on the first poll.
        hash: Option<u64>,
    },
    /// Missed: waiting on (and helping drive) the key's load, which settles its own slot
    /// (and weighs its value, with a copy of the key it keeps only when the cache weighs).
    Wait {
        waiter: Waiter<'a, K, V, E, S>,
        source: Source,
    },
    Done,
}

/// The future of [`Cache::get_with`] and [`LoadingCache::get`](crate::LoadingCache::get):
/// the value at a key, loaded on a miss.
///
/// It does nothing until polled. Its first poll looks the key up: a hit is ready at once,
/// with no allocation and no lock but the key's shard lock. On a miss it joins the key's
/// load, or starts one with its loader.
///
/// # Cancel safety
///
/// Dropping it never fails anyone else. A load goes on as long as some caller waits on it,
/// driven by whichever of them is polled (so a caller that stalls, polled once and then
/// never again, holds no one up). When the last caller waiting on a load is dropped, the
/// load is dropped too and the entry removed: nothing is left running or stored.
///
/// # Panics
///
/// If the loader panics, the panic unwinds out of the `poll` that ran it; every other caller
/// gets [`LoadError::Panicked`]. Polling after completion panics.
///
/// ```
/// use deferred_cache::Cache;
/// # futures::executor::block_on(async {
/// let cache: Cache<u8, u8> = Cache::new();
/// let get = cache.get_with(1, || async { Ok(5) });
/// assert_eq!(get.await, Ok(5));
/// # });
/// ```
#[must_use = "futures do nothing unless polled"]
pub struct GetWith<'a, K, V, E, S, L> {
    cache: &'a Cache<K, V, E, S>,
    state: State<'a, K, V, E, S, L>,
}

// No field is ever pinned: `poll` moves the key and the loader out by value, and the store's
// future it holds is `Unpin`.
impl<K, V, E, S, L> Unpin for GetWith<'_, K, V, E, S, L> {}

impl<'a, K, V, E, S, L> GetWith<'a, K, V, E, S, L> {
    pub(crate) fn new(cache: &'a Cache<K, V, E, S>, key: K, loader: L) -> Self {
        GetWith {
            cache,
            state: State::Start {
                key,
                loader,
                hash: None,
            },
        }
    }

    /// As [`new`](Self::new), with the key's hash given (`cache.hash(&key)`).
    pub(crate) fn hashed(cache: &'a Cache<K, V, E, S>, hash: u64, key: K, loader: L) -> Self {
        GetWith {
            cache,
            state: State::Start {
                key,
                loader,
                hash: Some(hash),
            },
        }
    }

    /// A future that also says where the outcome came from: a hit, this caller's loader, or
    /// a load it joined.
    ///
    /// ```
    /// use deferred_cache::{Cache, Source};
    /// # futures::executor::block_on(async {
    /// let cache: Cache<u8, u8> = Cache::new();
    /// let (go, gate) = futures::channel::oneshot::channel::<()>();
    /// let (a, b, ()) = futures::join!(
    ///     cache.get_with(1, move || async move { gate.await.ok(); Ok(1) }).with_source(),
    ///     cache.get_with(1, || async { Ok(2) }).with_source(),
    ///     async { go.send(()).unwrap() },
    /// );
    /// assert_eq!(a, (Ok(1), Source::Loaded));
    /// assert_eq!(b, (Ok(1), Source::Joined));
    /// # });
    /// ```
    pub fn with_source(self) -> WithSource<'a, K, V, E, S, L> {
        WithSource(self)
    }
}

impl<K: Key + Shared, V: Value, E: Shared, S: BuildHasher + Shared, L> GetWith<'_, K, V, E, S, L>
where
    L: Loader<K, V, E>,
{
    #[inline]
    fn poll_source(&mut self, cx: &mut Context<'_>) -> Poll<(Result<V, LoadError<E>>, Source)> {
        self.poll_with(cx, start_loader)
    }
}

/// Starts a [`Loader`]'s load, its error made a `Failure`.
fn start_loader<K, V, E, L>(
    loader: L,
    key: &K,
) -> impl Future<Output = Result<V, Failure<E>>> + Send + 'static
where
    L: Loader<K, V, E>,
{
    let fut = loader.start(key);
    async move { fut.await.map_err(Failure::error) }
}

impl<K: Key + Shared, V: Value, E: Shared, S: BuildHasher + Shared, L> GetWith<'_, K, V, E, S, L> {
    /// The read, with `start` making the load from the loader on a miss.
    #[inline]
    fn poll_with<Fut>(
        &mut self,
        cx: &mut Context<'_>,
        start: impl FnOnce(L, &K) -> Fut,
    ) -> Poll<(Result<V, LoadError<E>>, Source)>
    where
        Fut: Future<Output = Result<V, Failure<E>>> + Send + 'static,
    {
        let cache = self.cache;
        if let State::Start { key, hash, .. } = &mut self.state {
            // The one hash of this read (given by the layer above, or computed here): the
            // probe, the load's slot and its settle all take it from here.
            let hash = *hash.get_or_insert_with(|| cache.hash(key));
            // The hit under the read lock, probed in place: a hit moves neither the key nor
            // the loader (they are dropped where they are).
            let seen = match cache.inner.seen(hash, key) {
                Seen::Value(value) => {
                    self.state = State::Done;
                    cache.inner.counters.hit();
                    return Poll::Ready((Ok(value), Source::Hit));
                }
                seen => seen,
            };
            let State::Start { key, loader, .. } = core::mem::replace(&mut self.state, State::Done)
            else {
                unreachable!("matched above");
            };
            // On a miss, the key goes into the load's slot (the loader borrows it there).
            let lookup = cache.inner.get_or_load_seen(hash, key, seen, |key| {
                let trace = trace::Load::new(|| hash);
                load(start(loader, key), Arc::clone(&cache.inner.counters), trace)
            });
            let waiter = match lookup {
                Lookup::Ready(value) => {
                    cache.inner.counters.hit();
                    return Poll::Ready((Ok(value), Source::Hit));
                }
                Lookup::Wait(waiter) => waiter,
            };
            let source = if waiter.added() {
                Source::Loaded
            } else {
                Source::Joined
            };
            cache.inner.counters.miss(source == Source::Joined);
            self.state = State::Wait { waiter, source };
        }
        let State::Wait { waiter, source } = &mut self.state else {
            panic!("`GetWith` polled after it completed");
        };
        let source = *source;
        let outcome = if waiter.is_done() {
            // Ready on this poll: it drives nothing.
            match Pin::new(waiter).poll(cx) {
                Poll::Ready(outcome) => outcome,
                Poll::Pending => return Poll::Pending,
            }
        } else {
            let id = waiter.id();
            if reentrancy::is_inside(id) {
                self.state = State::Done;
                return Poll::Ready((Err(LoadError::Reentrant), source));
            }
            let _inside = reentrancy::enter(id);
            match Pin::new(waiter).poll(cx) {
                Poll::Ready(outcome) => outcome,
                Poll::Pending => return Poll::Pending,
            }
        };
        self.state = State::Done;
        Poll::Ready((outcome.map_err(Into::into), source))
    }
}

impl<K: Key + Shared, V: Value, E: Shared, S: BuildHasher + Shared, L> Future
    for GetWith<'_, K, V, E, S, L>
where
    L: Loader<K, V, E>,
{
    type Output = Result<V, LoadError<E>>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.get_mut().poll_source(cx).map(|(outcome, _)| outcome)
    }
}

impl<K: Key + Shared, V: Value, E: Shared, S: BuildHasher + Shared, L> FusedFuture
    for GetWith<'_, K, V, E, S, L>
where
    L: Loader<K, V, E>,
{
    fn is_terminated(&self) -> bool {
        matches!(self.state, State::Done)
    }
}

impl<K, V, E, S, L> fmt::Debug for GetWith<'_, K, V, E, S, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Start { .. } => "start",
            State::Wait {
                source: Source::Loaded,
                ..
            } => "loading",
            State::Wait { .. } => "joined",
            State::Done => "done",
        };
        f.debug_struct("GetWith")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

/// [`GetWith`], with where its outcome came from: see [`GetWith::with_source`].
#[must_use = "futures do nothing unless polled"]
pub struct WithSource<'a, K, V, E, S, L>(GetWith<'a, K, V, E, S, L>);

impl<K: Key + Shared, V: Value, E: Shared, S: BuildHasher + Shared, L> Future
    for WithSource<'_, K, V, E, S, L>
where
    L: Loader<K, V, E>,
{
    type Output = (Result<V, LoadError<E>>, Source);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.get_mut().0.poll_source(cx)
    }
}

impl<K: Key + Shared, V: Value, E: Shared, S: BuildHasher + Shared, L> FusedFuture
    for WithSource<'_, K, V, E, S, L>
where
    L: Loader<K, V, E>,
{
    fn is_terminated(&self) -> bool {
        self.0.is_terminated()
    }
}

impl<K, V, E, S, L> fmt::Debug for WithSource<'_, K, V, E, S, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("WithSource").field(&self.0).finish()
    }
}

/// The future of [`Cache::optionally_get_with`]: the value at a key, loaded on a miss by a
/// loader that may find none. `Ok(None)` when the load found none (nothing is cached).
///
/// Everything [`GetWith`] says holds (single flight, cancel safety, stalled callers,
/// panics), with one addition: a caller that joins this load through `get_with` or `get`,
/// which cannot return `None`, gets [`LoadError::NotFound`] if it finds none.
///
/// ```
/// use deferred_cache::Cache;
/// # futures::executor::block_on(async {
/// let cache: Cache<u8, u8> = Cache::new();
/// assert_eq!(cache.optionally_get_with(1, || async { None }).await, Ok(None));
/// assert_eq!(cache.optionally_get_with(1, || async { Some(5) }).await, Ok(Some(5)));
/// # });
/// ```
#[must_use = "futures do nothing unless polled"]
pub struct OptionallyGetWith<'a, K, V, E, S, F>(GetWith<'a, K, V, E, S, F>);

impl<'a, K, V, E, S, F> OptionallyGetWith<'a, K, V, E, S, F> {
    pub(crate) fn new(cache: &'a Cache<K, V, E, S>, key: K, loader: F) -> Self {
        OptionallyGetWith(GetWith::new(cache, key, loader))
    }
}

impl<K: Key + Shared, V: Value, E: Shared, S: BuildHasher + Shared, F, Fut> Future
    for OptionallyGetWith<'_, K, V, E, S, F>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Option<V>> + Send + 'static,
{
    type Output = Result<Option<V>, LoadError<E>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let start = |loader: F, _: &K| {
            let fut = loader();
            async move { fut.await.ok_or(Failure::Absent) }
        };
        self.get_mut()
            .0
            .poll_with(cx, start)
            .map(|(outcome, _)| match outcome {
                Ok(value) => Ok(Some(value)),
                Err(LoadError::NotFound) => Ok(None),
                Err(error) => Err(error),
            })
    }
}

impl<K: Key + Shared, V: Value, E: Shared, S: BuildHasher + Shared, F, Fut> FusedFuture
    for OptionallyGetWith<'_, K, V, E, S, F>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Option<V>> + Send + 'static,
{
    fn is_terminated(&self) -> bool {
        matches!(self.0.state, State::Done)
    }
}

impl<K, V, E, S, F> fmt::Debug for OptionallyGetWith<'_, K, V, E, S, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("OptionallyGetWith").field(&self.0).finish()
    }
}
