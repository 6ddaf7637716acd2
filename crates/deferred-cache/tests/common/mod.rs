//! Helpers shared by the cache's tests.
#![allow(clippy::std_instead_of_core)]
#![allow(dead_code)]

use std::{
    future::Future,
    sync::{
        atomic::{AtomicUsize, Ordering::SeqCst},
        Arc,
    },
};

pub use deferred_test_support::{poll_once, Gate};

/// Counts loads that ran (a loader's future polled) and those dropped after they started.
/// Loaders call `enter` inside their future, so a future that is dropped unpolled (a caller
/// that lost the race for a miss) counts as nothing.
#[derive(Clone, Default)]
pub struct Runs {
    pub started: Arc<AtomicUsize>,
    pub dropped: Arc<AtomicUsize>,
}

impl Runs {
    pub fn started(&self) -> usize {
        self.started.load(SeqCst)
    }

    pub fn dropped(&self) -> usize {
        self.dropped.load(SeqCst)
    }

    /// A load that counts itself, waits for `gate`, then returns `value`.
    pub fn gated<T, E>(
        &self,
        gate: &Gate,
        value: T,
    ) -> impl Future<Output = Result<T, E>> + Send + 'static
    where
        T: Send + 'static,
    {
        let (runs, opened) = (self.clone(), gate.wait());
        async move {
            let guard = runs.enter();
            opened.await;
            drop(guard);
            Ok(value)
        }
    }

    /// A guard, to hold in a loader, that counts the start now and the drop later.
    pub fn enter(&self) -> RunGuard {
        self.started.fetch_add(1, SeqCst);
        RunGuard(Arc::clone(&self.dropped))
    }
}

pub struct RunGuard(Arc<AtomicUsize>);

impl Drop for RunGuard {
    fn drop(&mut self) {
        self.0.fetch_add(1, SeqCst);
    }
}
