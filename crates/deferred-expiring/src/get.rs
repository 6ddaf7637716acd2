//! The futures that read through an `ExpiringCache`: `get_with`, `optionally_get_with` and
//! the loading cache's `get`.

use std::{
    borrow::Cow,
    fmt,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll, Waker},
    time::Duration,
};

use deferred_cache::{LoadError, Loader, Source};
use futures_core::FusedFuture;

use crate::{
    cache::{lock_std, BoxLoad, Core, DynLoader, Entry, Read, ReadFor},
    expiry::now_nanos,
    loom::Ordering::Relaxed,
    Clock, ExpiringCache, ExpiringHasher, ExpiringKey, Shared, Value,
};

/// What the inner cache calls on a miss to start the key's load, whose outcome is `T`. It
/// does not hold the caller's loader (so the inner future's type, and whether it is `Send`,
/// do not depend on it): it only claims the load for this caller, whose `poll` then starts
/// the loader and hands its future over through a [`Handover`]. Boxed, so that the inner
/// future has a type to name (one allocation, on a miss only).
type StartLoad<T> = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = T> + Send>> + Send>;

/// The [`StartLoad`] of an attempt whose loader's future comes through `slot`; `entry` turns
/// that future into the entry's load.
fn start_load<Fut, T, G>(
    slot: &Arc<Mutex<Slot<Fut>>>,
    entry: impl FnOnce(Fut) -> G + Send + 'static,
) -> StartLoad<T>
where
    Fut: Send + 'static,
    G: Future<Output = T> + Send + 'static,
{
    let slot = Arc::clone(slot);
    Box::new(move || {
        *lock_std(&slot) = Slot::Claimed(None);
        Box::pin(async move { entry(TakeLoader(slot).await).await })
    })
}

/// The inner cache's future for `get_with`.
type InnerGet<'a, K, V, E, S> =
    deferred_cache::WithSource<'a, K, Entry<V, E>, E, S, StartLoad<Result<Entry<V, E>, E>>>;

/// The inner cache's future for `optionally_get_with`.
type InnerOptional<'a, K, V, E, S> =
    deferred_cache::OptionallyGetWith<'a, K, Entry<V, E>, E, S, StartLoad<Option<Entry<V, E>>>>;

/// How an attempt ended in the inner cache: the entry or the error, and where it came from.
type Attempted<V, E> = (Result<Entry<V, E>, LoadError<E>>, Source);

/// The inner cache's future for one attempt: `get_with`'s, or `optionally_get_with`'s (with
/// whether it was polled yet).
enum Inner<'a, K, V, E, S> {
    Required(InnerGet<'a, K, V, E, S>),
    Optional(InnerOptional<'a, K, V, E, S>, bool),
}

impl<K: ExpiringKey, V: Value, E: Shared, S: ExpiringHasher> Inner<'_, K, V, E, S> {
    /// Polls the attempt; `started`: whether this caller's loader started the key's load.
    /// An optional load that found no value is `LoadError::NotFound` here.
    fn poll(&mut self, cx: &mut Context<'_>, started: bool) -> Poll<Attempted<V, E>> {
        match self {
            Inner::Required(get) => Pin::new(get).poll(cx),
            Inner::Optional(get, polled) => {
                let first = !core::mem::replace(polled, true);
                let Poll::Ready(outcome) = Pin::new(get).poll(cx) else {
                    return Poll::Pending;
                };
                // The inner optional future does not say where its outcome came from: this
                // caller's load if its loader started; else a value stored before its first
                // poll looked (a hit, or a load that ended between its two lookups: stored
                // by someone else either way, and judged as a hit is); else a load joined.
                let source = match (started, first) {
                    (true, _) => Source::Loaded,
                    (false, true) => Source::Hit,
                    (false, false) => Source::Joined,
                };
                let outcome = outcome.and_then(|entry| entry.ok_or(LoadError::NotFound));
                Poll::Ready((outcome, source))
            }
        }
    }
}

/// A caller's loader, as one kind of read uses it: [`get_with`](ExpiringCache::get_with)'s
/// ([`Required`]) or [`optionally_get_with`](ExpiringCache::optionally_get_with)'s
/// ([`Optional`]).
trait Attempt<K, V, E>: Handed<K, V, E> + Sized {
    /// Calls the loader.
    fn call(self, key: &K) -> Self::Fut;

    /// The value a refresh keeps from the loader's outcome; `None` if it failed.
    fn refreshed(outcome: <Self::Fut as Future>::Output) -> Option<V>;

    /// The inner cache's future for an attempt at `key` (whose hash is `hash`, passed down),
    /// whose load, if this caller starts it, takes the loader's future from `slot`.
    fn inner<'a, S: ExpiringHasher, C: Clock>(
        core: &'a Arc<Core<K, V, E, S, C>>,
        hash: u64,
        key: K,
        slot: &Arc<Mutex<Slot<Self::Fut>>>,
    ) -> Inner<'a, K, V, E, S>
    where
        K: ExpiringKey,
        V: Value,
        E: Shared;
}

/// The type of the future a caller's loader makes, which the key's load takes over. Apart
/// from [`Attempt`], so that naming it needs no bound on an optional loader (whose output
/// type stable Rust cannot name without one).
trait Handed<K, V, E> {
    type Fut: Future + Send;
}

/// The loader of [`ExpiringCache::get_with`] and of the loading cache's `get`: any
/// [`Loader`].
struct Required<L>(L);

impl<K, V, E, L: Loader<K, V, E>> Handed<K, V, E> for Required<L> {
    type Fut = L::Future;
}

impl<K, V, E, L: Loader<K, V, E>> Attempt<K, V, E> for Required<L> {
    fn call(self, key: &K) -> L::Future {
        self.0.start(key)
    }

    fn refreshed(outcome: Result<V, E>) -> Option<V> {
        outcome.ok()
    }

    fn inner<'a, S: ExpiringHasher, C: Clock>(
        core: &'a Arc<Core<K, V, E, S, C>>,
        hash: u64,
        key: K,
        slot: &Arc<Mutex<Slot<L::Future>>>,
    ) -> Inner<'a, K, V, E, S>
    where
        K: ExpiringKey,
        V: Value,
        E: Shared,
    {
        let (load_core, load_key) = (Arc::clone(core), key.clone());
        let start = start_load(slot, move |fut| {
            Core::load_entry(load_core, hash, load_key, fut)
        });
        Inner::Required(core.inner.get_with_hashed(hash, key, start).with_source())
    }
}

/// The loader of [`ExpiringCache::optionally_get_with`]: it may find no value.
struct Optional<F>(F);

/// An optional loader's future, boxed when its load starts (one allocation, beside those
/// every load makes), so that its type can be named without the loader's bound.
type OptionalLoad<V> = Pin<Box<dyn Future<Output = Option<V>> + Send>>;

impl<K, V, E, F> Handed<K, V, E> for Optional<F> {
    type Fut = OptionalLoad<V>;
}

impl<K, V, E, F, Fut> Attempt<K, V, E> for Optional<F>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Option<V>> + Send + 'static,
{
    fn call(self, _key: &K) -> OptionalLoad<V> {
        Box::pin((self.0)())
    }

    fn refreshed(outcome: Option<V>) -> Option<V> {
        outcome
    }

    fn inner<'a, S: ExpiringHasher, C: Clock>(
        core: &'a Arc<Core<K, V, E, S, C>>,
        hash: u64,
        key: K,
        slot: &Arc<Mutex<Slot<OptionalLoad<V>>>>,
    ) -> Inner<'a, K, V, E, S>
    where
        K: ExpiringKey,
        V: Value,
        E: Shared,
    {
        let (load_core, load_key) = (Arc::clone(core), key.clone());
        let start = start_load(slot, move |fut| {
            Core::load_optional_entry(load_core, hash, load_key, fut)
        });
        let get = core.inner.optionally_get_with_hashed(hash, key, start);
        Inner::Optional(get, false)
    }
}

/// Where the caller's loader future goes, once the inner cache has made this caller's load
/// the key's load.
enum Slot<F> {
    /// The inner cache has not started a load with this attempt's [`StartLoad`].
    Idle,
    /// It has: the load waits (with this waker, once polled) for the loader's future.
    Claimed(Option<Waker>),
    /// The loader's future, for the load to take.
    Filled(F),
    /// Taken by the load.
    Taken,
    /// The caller went away (or its loader panicked) between the claim and the handover.
    Abandoned,
}

/// The caller's side of a [`Slot`]: it fills it, or on drop marks it abandoned, so that a
/// load claimed for this caller never waits forever.
struct Handover<F>(Arc<Mutex<Slot<F>>>);

impl<F> Handover<F> {
    /// Whether the inner cache claimed the load and waits for the loader's future.
    fn claimed(&self) -> bool {
        matches!(*lock_std(&self.0), Slot::Claimed(_))
    }

    /// Ends a claim: with the loader's future (`Some`) or abandoned (`None`). The load's
    /// waker is woken outside the lock.
    fn settle(&self, fut: Option<F>) {
        let waker = {
            let mut slot = lock_std(&self.0);
            let Slot::Claimed(waker) = &mut *slot else {
                return;
            };
            let waker = waker.take();
            *slot = fut.map_or(Slot::Abandoned, Slot::Filled);
            waker
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl<F> Drop for Handover<F> {
    fn drop(&mut self) {
        self.settle(None);
    }
}

/// The load's side of a [`Slot`]: resolves to the loader's future once the caller hands it
/// over.
struct TakeLoader<F>(Arc<Mutex<Slot<F>>>);

impl<F> Future for TakeLoader<F> {
    type Output = F;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F> {
        let mut slot = lock_std(&self.0);
        match core::mem::replace(&mut *slot, Slot::Taken) {
            Slot::Filled(fut) => Poll::Ready(fut),
            Slot::Claimed(waker) => {
                let waker = match waker {
                    Some(w) if w.will_wake(cx.waker()) => w,
                    _ => cx.waker().clone(),
                };
                *slot = Slot::Claimed(Some(waker));
                Poll::Pending
            }
            // The caller's loader panicked, or the caller was dropped, after its load was
            // claimed and before it started: a panic here gives every other caller waiting
            // on this load `LoadError::Panicked`, as a panicking loader does.
            Slot::Abandoned | Slot::Idle | Slot::Taken => {
                drop(slot);
                panic!("the loader of this load panicked or was dropped before it started")
            }
        }
    }
}

enum State<'a, K, V, E, S, L: Handed<K, V, E>> {
    /// Not polled yet, or about to try again.
    Start {
        key: K,
        loader: L,
        /// The key's hash: computed on the first poll, kept for another try.
        hash: Option<u64>,
    },
    /// Missed: waiting on (and helping drive) the key's load in the inner cache.
    Wait {
        inner: Inner<'a, K, V, E, S>,
        key: K,
        /// The key's hash, the one of this call (issue #13: hash once).
        hash: u64,
        /// The clock reading this attempt started with.
        now: Duration,
        /// The caller's loader until the inner cache claims the load for it (then it starts
        /// it and hands the future over).
        loader: Option<L>,
        handover: Handover<L::Fut>,
    },
    Done,
}

/// A read through the cache that loads on a miss, with any kind of loader: the machinery of
/// [`GetWith`] and [`OptionallyGetWith`].
struct Run<'a, K, V, E, S, C, L: Handed<K, V, E>> {
    cache: &'a ExpiringCache<K, V, E, S, C>,
    state: State<'a, K, V, E, S, L>,
}

/// The future of [`ExpiringCache::get_with`] (and, through [`Get`],
/// [`ExpiringLoadingCache::get`](crate::ExpiringLoadingCache::get)): the value at a key,
/// loaded on a miss or after expiry.
///
/// It does nothing until polled. Its first poll reads the key: a live value is ready at once,
/// with no loader call and no allocation (a refresh-ahead that falls due starts its reload
/// with the loader then). On a miss, or an entry past its deadline, it joins the key's load
/// or starts one with its loader, exactly as [`deferred_cache::GetWith`] does, and is `Send`
/// when the key, value, error, hasher, clock and loader are.
///
/// # Cancel safety
///
/// As [`deferred_cache::GetWith`]: dropping it never fails anyone else; a load goes on as
/// long as some caller waits on it, driven by whichever is polled, and is dropped with the
/// last one.
///
/// # Panics
///
/// If the loader panics (the closure when called, or its future), the panic unwinds out of
/// the `poll` that ran it; every other caller gets [`LoadError::Panicked`]. The closure is
/// called by its own caller's `poll` right after the key's load was claimed for it: if it
/// panics when another caller has joined the load in that instant, the load fails as a
/// panicking load does (the `poll` that drives it next unwinds; the rest get
/// `Panicked`), so no one waits forever. Polling after completion panics.
///
/// ```
/// use deferred_expiring::{ExpiringCache, GetWith};
/// # futures::executor::block_on(async {
/// let cache: ExpiringCache<u8, u8> = ExpiringCache::builder().build();
/// let get = cache.get_with(1, || async { Ok(5) });
/// assert!(format!("{get:?}").contains("start"));
/// assert_eq!(get.await, Ok(5));
/// # });
/// ```
#[must_use = "futures do nothing unless polled"]
pub struct GetWith<'a, K, V, E, S, C, L: Loader<K, V, E>>(Run<'a, K, V, E, S, C, Required<L>>);

// No field is ever pinned: `poll` moves the key and the loader out by value, and the inner
// cache's future is `Unpin`.
impl<K, V, E, S, C, L: Loader<K, V, E>> Unpin for GetWith<'_, K, V, E, S, C, L> {}

impl<'a, K, V, E, S, C, L: Loader<K, V, E>> GetWith<'a, K, V, E, S, C, L> {
    pub(crate) fn new(cache: &'a ExpiringCache<K, V, E, S, C>, key: K, loader: L) -> Self {
        GetWith(Run::new(cache, key, Required(loader)))
    }

    /// A future that also says where the outcome came from: [`Source::Hit`] (a live value,
    /// or a cached error, was there; a refresh it started does not change that),
    /// [`Source::Loaded`] (this caller's loader ran), or [`Source::Joined`] (another
    /// caller's load).
    ///
    /// ```
    /// use deferred_expiring::{ExpiringCache, ManualClock, Source};
    /// use std::time::Duration;
    /// # futures::executor::block_on(async {
    /// let clock = ManualClock::new();
    /// let cache: ExpiringCache<u8, u8, std::convert::Infallible, _, _> = ExpiringCache::builder()
    ///     .time_to_live(Duration::from_secs(10))
    ///     .clock(clock.clone())
    ///     .build();
    /// let (go, gate) = futures::channel::oneshot::channel::<()>();
    /// let (a, b, ()) = futures::join!(
    ///     cache.get_with(1, move || async move { gate.await.ok(); Ok(1) }).with_source(),
    ///     cache.get_with(1, || async { Ok(2) }).with_source(),
    ///     async { go.send(()).unwrap() },
    /// );
    /// assert_eq!((a, b), ((Ok(1), Source::Loaded), (Ok(1), Source::Joined)));
    /// let hit = cache.get_with(1, || async { Ok(3) }).with_source().await;
    /// assert_eq!(hit, (Ok(1), Source::Hit));
    /// clock.advance(Duration::from_secs(10)); // expired: loaded again
    /// let again = cache.get_with(1, || async { Ok(4) }).with_source().await;
    /// assert_eq!(again, (Ok(4), Source::Loaded));
    /// # });
    /// ```
    pub fn with_source(self) -> WithSource<'a, K, V, E, S, C, L> {
        WithSource(self)
    }
}

impl<'a, K, V, E, S, C, L: Handed<K, V, E>> Run<'a, K, V, E, S, C, L> {
    fn new(cache: &'a ExpiringCache<K, V, E, S, C>, key: K, loader: L) -> Self {
        Run {
            cache,
            state: State::Start {
                key,
                loader,
                hash: None,
            },
        }
    }

    /// Where it is, for `Debug`.
    fn state(&self) -> &'static str {
        match &self.state {
            State::Start { .. } => "start",
            State::Wait { .. } => "waiting",
            State::Done => "done",
        }
    }

    fn is_terminated(&self) -> bool {
        matches!(self.state, State::Done)
    }
}

impl<'a, K: ExpiringKey, V: Value, E: Shared, S: ExpiringHasher, C: Clock, L>
    Run<'a, K, V, E, S, C, L>
where
    L: Attempt<K, V, E>,
    L::Fut: 'static,
{
    fn poll_source(&mut self, cx: &mut Context<'_>) -> Poll<(Result<V, LoadError<E>>, Source)> {
        let cache: &'a ExpiringCache<K, V, E, S, C> = self.cache;
        let core: &'a Core<K, V, E, S, C> = &cache.core;
        loop {
            if let State::Start { key, hash, .. } = &self.state {
                let now = core.tend();
                // The one hash of this call: the read, the reclamation of an expired entry,
                // the inner cache's load (its map, its policy), the new entry's timer, and
                // the check that it was stored all take it from here.
                let hash = hash.unwrap_or_else(|| core.inner.hash(key));
                match core.read(hash, key, || Cow::Borrowed(key), now, ReadFor::Load) {
                    Read::Hit { value, refresh } => {
                        let State::Start { key, loader, .. } =
                            core::mem::replace(&mut self.state, State::Done)
                        else {
                            unreachable!("matched above");
                        };
                        if let Some(id) = refresh {
                            let load = loader.call(&key);
                            let refresh = async move { L::refreshed(load.await) };
                            Core::refresh(&cache.core, key, hash, id, refresh);
                        }
                        return Poll::Ready((Ok(value), Source::Hit));
                    }
                    Read::Failed(error) => {
                        self.state = State::Done;
                        return Poll::Ready((Err(LoadError::Failed(error)), Source::Hit));
                    }
                    Read::Expired(id) => core.expire(hash, key, id, now),
                    Read::CachedError | Read::Absent => {}
                }
                let State::Start { key, loader, .. } =
                    core::mem::replace(&mut self.state, State::Done)
                else {
                    unreachable!("matched above");
                };
                let slot = Arc::new(Mutex::new(Slot::Idle));
                let inner = L::inner(&cache.core, hash, key.clone(), &slot);
                self.state = State::Wait {
                    inner,
                    key,
                    hash,
                    now,
                    loader: Some(loader),
                    handover: Handover(slot),
                };
            }
            let State::Wait {
                inner,
                key,
                loader,
                handover,
                ..
            } = &mut self.state
            else {
                panic!("`GetWith` or `OptionallyGetWith` polled after it completed");
            };
            let mut polled = inner.poll(cx, loader.is_none());
            if handover.claimed() {
                // The inner cache made this caller's load the key's load, which waits for
                // the loader's future: start the loader, with no lock held, and hand its
                // future over. If the loader panics, the handover is dropped with this
                // future and the load's other callers get `LoadError::Panicked`.
                let fut = loader.take().map(|loader| loader.call(key));
                handover.settle(fut);
                if polled.is_pending() {
                    // Drive the load now that it can run.
                    polled = inner.poll(cx, true);
                }
            }
            let Poll::Ready(done) = polled else {
                return Poll::Pending;
            };
            if let Some(out) = self.finish(done) {
                return Poll::Ready(out);
            }
        }
    }

    /// The end of an attempt with the inner cache's outcome: this call's outcome, or `None`
    /// to try again (the state is `Start` again then).
    fn finish(
        &mut self,
        (outcome, source): Attempted<V, E>,
    ) -> Option<(Result<V, LoadError<E>>, Source)> {
        let core: &Core<K, V, E, S, C> = &self.cache.core;
        let State::Wait {
            key,
            hash,
            now,
            loader,
            ..
        } = core::mem::replace(&mut self.state, State::Done)
        else {
            unreachable!("called in `Wait` only");
        };
        let entry = match outcome {
            Ok(entry) => entry,
            Err(error) => return Some((Err(error), source)),
        };
        if source != Source::Hit {
            // A load that ended: if its entry is not at the key (invalidated while the load
            // ran, so never stored), its timer goes with it. A hit's entry was stored.
            let made = Some((entry.id, entry.timer.load(Relaxed)));
            core.discard_unless_stored(hash, &key, made);
        }
        if source == Source::Hit && entry.deadline.load(Relaxed) <= now_nanos(now) {
            // Stored by someone else between the two reads, already past its deadline (a
            // clock read on another thread lagging this one's): look again. A hit never
            // started the loader, so this caller still has it.
            core.expire(hash, &key, entry.id, now);
            if let Some(loader) = loader {
                self.state = State::Start {
                    key,
                    loader,
                    hash: Some(hash),
                };
                return None;
            }
        }
        Some(match entry.slot {
            Ok(value) => (Ok(value), source),
            Err(error) => (Err(LoadError::Failed(error)), source),
        })
    }
}

impl<'a, K: ExpiringKey, V: Value, E: Shared, S: ExpiringHasher, C: Clock, L> Future
    for GetWith<'a, K, V, E, S, C, L>
where
    L: Loader<K, V, E>,
{
    type Output = Result<V, LoadError<E>>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.get_mut().0.poll_source(cx).map(|(outcome, _)| outcome)
    }
}

impl<'a, K: ExpiringKey, V: Value, E: Shared, S: ExpiringHasher, C: Clock, L> FusedFuture
    for GetWith<'a, K, V, E, S, C, L>
where
    L: Loader<K, V, E>,
{
    fn is_terminated(&self) -> bool {
        self.0.is_terminated()
    }
}

impl<K, V, E, S, C, L: Loader<K, V, E>> fmt::Debug for GetWith<'_, K, V, E, S, C, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GetWith")
            .field("state", &self.0.state())
            .finish_non_exhaustive()
    }
}

/// [`GetWith`], with where its outcome came from: see [`GetWith::with_source`].
///
/// ```
/// use deferred_expiring::{ExpiringCache, Source};
/// # futures::executor::block_on(async {
/// let cache: ExpiringCache<u8, u8> = ExpiringCache::builder().build();
/// cache.insert(1, 7);
/// let (value, source) = cache.get_with(1, || async { Ok(0) }).with_source().await;
/// assert_eq!((value, source), (Ok(7), Source::Hit));
/// # });
/// ```
#[must_use = "futures do nothing unless polled"]
pub struct WithSource<'a, K, V, E, S, C, L: Loader<K, V, E>>(GetWith<'a, K, V, E, S, C, L>);

impl<'a, K: ExpiringKey, V: Value, E: Shared, S: ExpiringHasher, C: Clock, L> Future
    for WithSource<'a, K, V, E, S, C, L>
where
    L: Loader<K, V, E>,
{
    type Output = (Result<V, LoadError<E>>, Source);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.get_mut().0 .0.poll_source(cx)
    }
}

impl<'a, K: ExpiringKey, V: Value, E: Shared, S: ExpiringHasher, C: Clock, L> FusedFuture
    for WithSource<'a, K, V, E, S, C, L>
where
    L: Loader<K, V, E>,
{
    fn is_terminated(&self) -> bool {
        self.0.is_terminated()
    }
}

impl<K, V, E, S, C, L: Loader<K, V, E>> fmt::Debug for WithSource<'_, K, V, E, S, C, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("WithSource").field(&self.0).finish()
    }
}

/// The future of [`ExpiringCache::optionally_get_with`]: the value at a key, loaded on a
/// miss or after expiry by a loader that may find none. `Ok(None)` when the load found none:
/// nothing is cached then, and the next read loads again.
///
/// Everything [`GetWith`] says holds (single flight, cancel safety, stalled callers, panics,
/// `Send` when the key, value, error, hasher, clock and loader are), with one addition: a
/// caller that joined this load through `get_with` or `get`, which cannot return `None`,
/// gets [`LoadError::NotFound`] if it found none.
///
/// ```
/// use deferred_expiring::{ExpiringCache, OptionallyGetWith};
/// # futures::executor::block_on(async {
/// let cache: ExpiringCache<u8, u8> = ExpiringCache::builder().build();
/// let get = cache.optionally_get_with(1, || async { None });
/// assert!(format!("{get:?}").contains("start"));
/// assert_eq!(get.await, Ok(None));
/// assert_eq!(cache.optionally_get_with(1, || async { Some(5) }).await, Ok(Some(5)));
/// # });
/// ```
#[must_use = "futures do nothing unless polled"]
pub struct OptionallyGetWith<'a, K, V, E, S, C, F>(Run<'a, K, V, E, S, C, Optional<F>>);

// No field is ever pinned, as in `GetWith`.
impl<K, V, E, S, C, F> Unpin for OptionallyGetWith<'_, K, V, E, S, C, F> {}

impl<'a, K, V, E, S, C, F> OptionallyGetWith<'a, K, V, E, S, C, F> {
    pub(crate) fn new(cache: &'a ExpiringCache<K, V, E, S, C>, key: K, loader: F) -> Self {
        OptionallyGetWith(Run::new(cache, key, Optional(loader)))
    }
}

impl<K: ExpiringKey, V: Value, E: Shared, S: ExpiringHasher, C: Clock, F, Fut> Future
    for OptionallyGetWith<'_, K, V, E, S, C, F>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Option<V>> + Send + 'static,
{
    type Output = Result<Option<V>, LoadError<E>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.get_mut()
            .0
            .poll_source(cx)
            .map(|(outcome, _)| match outcome {
                Ok(value) => Ok(Some(value)),
                Err(LoadError::NotFound) => Ok(None),
                Err(error) => Err(error),
            })
    }
}

impl<K: ExpiringKey, V: Value, E: Shared, S: ExpiringHasher, C: Clock, F, Fut> FusedFuture
    for OptionallyGetWith<'_, K, V, E, S, C, F>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Option<V>> + Send + 'static,
{
    fn is_terminated(&self) -> bool {
        self.0.is_terminated()
    }
}

impl<K, V, E, S, C, F> fmt::Debug for OptionallyGetWith<'_, K, V, E, S, C, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OptionallyGetWith")
            .field("state", &self.0.state())
            .finish_non_exhaustive()
    }
}

/// The cache-wide loader of an [`ExpiringLoadingCache`](crate::ExpiringLoadingCache), bound
/// for one call: the loader of the [`GetWith`] that its `get` returns.
///
/// ```
/// # futures::executor::block_on(async {
/// let cache = deferred_expiring::ExpiringCache::builder()
///     .build_with_loader(|k: &u8| { let k = *k; async move { Ok::<_, String>(k) } });
/// let get: deferred_expiring::Get<'_, u8, u8, String, _, _> = cache.get(3);
/// assert_eq!(get.await, Ok(3));
/// # });
/// ```
pub struct SharedLoader<'a, K, V, E>(&'a DynLoader<K, V, E>);

impl<'a, K, V, E> SharedLoader<'a, K, V, E> {
    pub(crate) fn new(loader: &'a DynLoader<K, V, E>) -> Self {
        SharedLoader(loader)
    }
}

impl<K, V: 'static, E: 'static> Loader<K, V, E> for SharedLoader<'_, K, V, E> {
    type Future = BoxLoad<V, E>;

    fn start(self, key: &K) -> BoxLoad<V, E> {
        (self.0)(key)
    }
}

impl<K, V, E> fmt::Debug for SharedLoader<'_, K, V, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SharedLoader")
    }
}

/// The future of [`ExpiringLoadingCache::get`](crate::ExpiringLoadingCache::get): a
/// [`GetWith`] with the cache-wide loader.
pub type Get<'a, K, V, E, S, C> = GetWith<'a, K, V, E, S, C, SharedLoader<'a, K, V, E>>;
