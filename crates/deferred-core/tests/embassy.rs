//! `Deferred` on a `no_std`-style executor: embassy's thread-mode executor (its `std` arch, so
//! it runs on the host). Its tasks are statically allocated and `'static`, and nothing here
//! allocates: cells in `static`s, awaited by tasks from a fixed pool, completed by another
//! task, the way firmware would use them. A harness-less test (`main` never returns from the
//! executor; it exits when every waiter has checked in).
//!
//! It follows the interrupt rule of the crate docs ("Interrupts and single-core `no_std`"):
//! every use of a cell, the waits and the completions, is a task of the one thread-mode
//! executor, so nothing that touches a cell can interrupt a holder of its lock. Firmware that
//! learns the value in an interrupt handler signals a task (embassy-sync's `Signal`), and the
//! task completes the cell, or masks interrupts around the waits (`critical_section::with`).

#![allow(clippy::std_instead_of_core)]

use core::sync::atomic::{AtomicUsize, Ordering::SeqCst};

use deferred_core::{Deferred, Error};
use embassy_executor::{Executor, Spawner};

const WAITERS: usize = 4;

static READY: Deferred<u32, &str> = Deferred::new();
static FAILED: Deferred<u32, &str> = Deferred::new();
static SEEN: AtomicUsize = AtomicUsize::new(0);

#[embassy_executor::task(pool_size = WAITERS)]
async fn waiter(id: usize) {
    assert_eq!(READY.wait().await, Ok(&42), "waiter {id}");
    assert_eq!(
        FAILED.wait().await,
        Err(Error::Failed(&"sensor offline")),
        "waiter {id}"
    );
    if SEEN.fetch_add(1, SeqCst) + 1 == WAITERS {
        println!("embassy: {WAITERS} waiters saw both outcomes");
        std::process::exit(0);
    }
}

// A task, not an interrupt handler: it completes cells that tasks wait on (their polls and
// drops take the cell's lock), so it must run at their priority level, never preempt them.
#[embassy_executor::task]
async fn completer() {
    // Every waiter has parked on `READY` by the time this first runs (tasks run in spawn
    // order): completing wakes them all.
    assert_eq!(READY.succeed(42), Ok(()));
    assert_eq!(READY.succeed(7), Err(7), "completed twice");
    assert_eq!(FAILED.fail("sensor offline"), Ok(()));
}

fn spawn_all(spawner: Spawner) {
    for id in 0..WAITERS {
        spawner
            .spawn(waiter(id))
            .expect("the pool holds every waiter");
    }
    spawner.spawn(completer()).expect("one completer");
}

fn main() {
    // A watchdog: the executor never returns, so a lost wake-up would hang the test.
    let (_never, hang) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let _ = hang.recv_timeout(std::time::Duration::from_secs(60));
        eprintln!("embassy: waiters still parked after 60 s: a lost wake-up");
        std::process::exit(1);
    });
    let executor: &'static mut Executor = Box::leak(Box::new(Executor::new()));
    executor.run(spawn_all);
}
