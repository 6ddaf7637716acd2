//! Pins which types are `Send`, `Sync` and `Unpin`, so a change to them is a visible,
//! deliberate decision.

#![allow(clippy::std_instead_of_core)] // tests run on std; `core::` paths matter in the library only.

use std::{cell::Cell, rc::Rc};

use std::future::Ready;

use deferred_core::{
    sync::{SpinMutex, SpinRwLock},
    Awaiter, CallbackHandle, Claim, ClaimWait, Closed, Completer, Deferred, Error, GetOrInit, Lazy,
    LazyWait, OwnedLazyWait, OwnedWait, Producer, Wait, WaitCloned, WeakLazy,
};

/// The initializer and future types of a `get_or_init` whose future is `Ready<u8>`.
type Init = fn() -> Ready<u8>;
/// A lazy cell whose computation is not `Send`.
type RcLazy = Lazy<u8, u8, fn() -> Rc<u8>, Rc<u8>>;

fn send<T: Send>() {}
fn sync<T: Sync>() {}
fn unpin<T: Unpin>() {}

/// Compiles only if `T` is *not* `Trait` (ambiguity when it is).
macro_rules! assert_not_impl {
    ($ty:ty, $trait:path) => {
        const _: fn() = || {
            trait AmbiguousIfImpl<A> {
                fn some_item() {}
            }
            impl<T: ?Sized> AmbiguousIfImpl<()> for T {}
            #[allow(dead_code)]
            struct Invalid;
            impl<T: ?Sized + $trait> AmbiguousIfImpl<Invalid> for T {}
            let _ = <$ty as AmbiguousIfImpl<_>>::some_item;
        };
    };
}

#[test]
fn send_and_sync_exactly_when_sound() {
    send::<Deferred<u8, u8>>();
    sync::<Deferred<u8, u8>>();
    unpin::<Deferred<u8, u8>>();
    send::<Wait<'static, u8, u8>>();
    sync::<Wait<'static, u8, u8>>();
    send::<WaitCloned<'static, u8, u8>>();
    send::<OwnedWait<u8, u8>>();
    send::<ClaimWait<'static, u8, u8>>();
    send::<Claim<'static, u8, u8>>();
    sync::<Claim<'static, u8, u8>>();
    send::<Producer<'static, u8, u8>>();
    send::<Closed<'static, u8, u8>>();
    sync::<Closed<'static, u8, u8>>();
    send::<CallbackHandle<'static, u8, u8>>();
    sync::<CallbackHandle<'static, u8, u8>>();
    unpin::<CallbackHandle<'static, u8, u8>>();
    send::<Error<u8>>();
    sync::<Error<u8>>();
    send::<GetOrInit<'static, u8, u8, Init, Ready<u8>>>();
    // A pair's handles: `Send` with their values (they move them), and `Sync` (`&self`
    // reaches nothing but a load of the state word).
    send::<Completer<u8, u8>>();
    sync::<Completer<u8, u8>>();
    unpin::<Completer<u8, u8>>();
    send::<Awaiter<u8, u8>>();
    sync::<Awaiter<u8, u8>>();
    // A handle to the shared allocation: movable, shareable, `Unpin`.
    send::<Lazy<u8, u8>>();
    sync::<Lazy<u8, u8>>();
    unpin::<Lazy<u8, u8>>();
    send::<WeakLazy<u8, u8>>();
    sync::<WeakLazy<u8, u8>>();
    unpin::<WeakLazy<u8, u8>>();
    send::<LazyWait<'static, u8, u8, Init, Ready<u8>>>();
    send::<OwnedLazyWait<u8, u8>>();
    sync::<OwnedLazyWait<u8, u8>>();
    // The locks: `Mutex`-like and `RwLock`-like bounds.
    send::<SpinMutex<Cell<u8>>>();
    sync::<SpinMutex<Cell<u8>>>();
    unpin::<SpinMutex<u8>>();
    send::<SpinRwLock<Cell<u8>>>();
    sync::<SpinRwLock<u8>>();
    unpin::<SpinRwLock<u8>>();
}

// A value that is Send but not Sync (Cell) makes the cell Send but not Sync: shared
// references to it would reach several threads.
assert_not_impl!(Deferred<Cell<u8>>, Sync);
assert_not_impl!(Deferred<u8, Cell<u8>>, Sync);
assert_not_impl!(Wait<'static, Cell<u8>>, Send);
// A value that is not Send makes nothing Send.
assert_not_impl!(Deferred<Rc<u8>>, Send);
assert_not_impl!(Deferred<Rc<u8>>, Sync);
// Waiters are list nodes: pinned while linked.
assert_not_impl!(Wait<'static, u8>, Unpin);
assert_not_impl!(WaitCloned<'static, u8>, Unpin);
assert_not_impl!(OwnedWait<u8>, Unpin);
assert_not_impl!(Awaiter<u8>, Unpin);
assert_not_impl!(Awaiter<Rc<u8>>, Send);
assert_not_impl!(Completer<Rc<u8>>, Send);
assert_not_impl!(ClaimWait<'static, u8>, Unpin);
assert_not_impl!(Closed<'static, u8>, Unpin);
assert_not_impl!(Closed<'static, Cell<u8>>, Send);
assert_not_impl!(CallbackHandle<'static, Cell<u8>>, Send);
assert_not_impl!(GetOrInit<'static, u8, u8, Init, Ready<u8>>, Unpin);
assert_not_impl!(LazyWait<'static, u8, u8, Init, Ready<u8>>, Unpin);
assert_not_impl!(OwnedLazyWait<u8, u8>, Unpin);
// A future that borrows its node to the cell's list is not shared across threads.
assert_not_impl!(GetOrInit<'static, u8, u8, Init, Ready<u8>>, Sync);
assert_not_impl!(LazyWait<'static, u8, u8, Init, Ready<u8>>, Sync);
// A computation that is not `Send` makes the lazy cell neither `Send` nor `Sync`.
assert_not_impl!(RcLazy, Send);
assert_not_impl!(RcLazy, Sync);
assert_not_impl!(WeakLazy<u8, u8, fn() -> Rc<u8>, Rc<u8>>, Send);
// A lock hands `&mut T` across threads (needs `T: Send`); a read lock also shares `&T`.
assert_not_impl!(SpinMutex<Rc<u8>>, Sync);
assert_not_impl!(SpinMutex<Rc<u8>>, Send);
assert_not_impl!(SpinRwLock<Cell<u8>>, Sync);

#[test]
fn send_but_not_sync_values_still_make_a_send_cell() {
    send::<Deferred<Cell<u8>>>();
}
