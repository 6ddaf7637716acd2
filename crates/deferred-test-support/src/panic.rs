//! A panic hook that keeps the panics a test raises on purpose quiet.
//!
//! A loom model runs thousands of times, and a stress test panics on purpose many times: the
//! default hook would print (and the harness keep) every message. Each test names what it
//! expects; any other panic still goes to the hook that was there before.

use core::any::{Any, TypeId};
use std::sync::{Mutex, Once, PoisonError};

#[derive(PartialEq, Debug)]
enum Expected {
    /// A message equal to this one.
    Saying(&'static str),
    /// A message that contains this.
    Containing(&'static str),
    /// A payload of this type (`std::panic::panic_any`).
    Of(TypeId),
}

/// What the tests of this binary expect so far. A test adds to it; nothing is taken out,
/// as another test may still run and panic the same way.
static EXPECTED: Mutex<Vec<Expected>> = Mutex::new(Vec::new());

/// Keeps quiet the panics whose message is `message` (`panic!("{message}")`).
///
/// ```
/// deferred_test_support::quiet_panics_saying("loader panics");
/// assert!(std::panic::catch_unwind(|| panic!("loader panics")).is_err()); // prints nothing
/// ```
pub fn quiet_panics_saying(message: &'static str) {
    expect(Expected::Saying(message));
}

/// Keeps quiet the panics whose message contains `fragment`.
///
/// ```
/// deferred_test_support::quiet_panics_containing("on purpose");
/// assert!(std::panic::catch_unwind(|| panic!("panics on purpose: {}", 1)).is_err());
/// ```
pub fn quiet_panics_containing(fragment: &'static str) {
    expect(Expected::Containing(fragment));
}

/// Keeps quiet the panics whose payload is a `T` (raised with `std::panic::panic_any`).
///
/// ```
/// struct LoaderPanic;
/// deferred_test_support::quiet_panics_of::<LoaderPanic>();
/// assert!(std::panic::catch_unwind(|| std::panic::panic_any(LoaderPanic)).is_err());
/// ```
pub fn quiet_panics_of<T: Any>() {
    expect(Expected::Of(TypeId::of::<T>()));
}

fn expect(what: Expected) {
    install();
    let mut expected = EXPECTED.lock().unwrap_or_else(PoisonError::into_inner);
    // A model calls this on each of its runs: the list stays as long as its distinct entries.
    if !expected.contains(&what) {
        expected.push(what);
    }
}

/// Installs the hook, once per test binary, in front of the one that was there.
fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let payload = info.payload();
            let message = payload
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| payload.downcast_ref::<String>().map(String::as_str));
            let expected = EXPECTED
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .any(|what| match *what {
                    Expected::Saying(m) => message == Some(m),
                    Expected::Containing(f) => message.is_some_and(|m| m.contains(f)),
                    Expected::Of(id) => (*payload).type_id() == id,
                });
            if !expected {
                previous(info);
            }
        }));
    });
}
