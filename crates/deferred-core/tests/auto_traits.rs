//! Pins which types are `Send`, `Sync` and `Unpin`, so a change to them is a visible,
//! deliberate decision.

#![allow(clippy::std_instead_of_core)] // tests run on std; `core::` paths matter in the library only.

use std::{cell::Cell, rc::Rc};

use deferred_core::{Claim, ClaimWait, Deferred, Error, OwnedWait, Producer, Wait, WaitCloned};

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
    send::<Error<u8>>();
    sync::<Error<u8>>();
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
assert_not_impl!(OwnedWait<u8>, Unpin);
assert_not_impl!(ClaimWait<'static, u8>, Unpin);

#[test]
fn send_but_not_sync_values_still_make_a_send_cell() {
    send::<Deferred<Cell<u8>>>();
}
