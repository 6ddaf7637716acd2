//! The spin locks of `deferred_core::sync` on real threads: readers never see a writer's
//! half-done change, and every write lands.
#![cfg(all(feature = "std", not(loom)))]
#![allow(clippy::std_instead_of_core)] // tests run on std

use std::{panic::AssertUnwindSafe, sync::Arc, thread};

use deferred_core::sync::{SpinMutex, SpinRwLock};

const OPS: usize = if cfg!(miri) { 50 } else { 20_000 };

#[test]
fn rwlock_readers_and_writers_on_four_threads() {
    let lock = Arc::new(SpinRwLock::new((0usize, 0usize)));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let lock = lock.clone();
            thread::spawn(move || {
                for i in 0..OPS {
                    if (i + t) % 4 == 0 {
                        lock.write(|v| {
                            v.0 += 1;
                            v.1 += 1;
                        });
                    } else {
                        lock.read(|v| assert_eq!(v.0, v.1, "a reader saw a half-done write"));
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let writes = (0..4)
        .map(|t| (0..OPS).filter(|i| (i + t) % 4 == 0).count())
        .sum();
    assert_eq!(lock.read(|v| *v), (writes, writes));
}

#[test]
fn a_panicking_closure_releases_either_lock() {
    let rw = SpinRwLock::new(1);
    let m = SpinMutex::new(1);
    let _ = std::panic::catch_unwind(AssertUnwindSafe(|| rw.write(|_| panic!("in write"))));
    let _ = std::panic::catch_unwind(AssertUnwindSafe(|| rw.read(|_| panic!("in read"))));
    let _ = std::panic::catch_unwind(AssertUnwindSafe(|| m.with(|_| panic!("in with"))));
    rw.write(|v| *v += 1);
    m.with(|v| *v += 1);
    assert_eq!((rw.read(|v| *v), m.with(|v| *v)), (2, 2));
}
