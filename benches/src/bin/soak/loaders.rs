//! Faults of the loaders: every loader sleeps, yields or returns at once, then succeeds,
//! fails or panics ([`plan`]); [`Probes`] count what became of each loader future.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::rng::{value_for, Rng};

/// The panic payload of every panic the soak raises on purpose.
#[derive(Debug)]
pub struct DeliberatePanic;

/// A loader's error: the key it was loading.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fail(pub u64);

#[derive(Clone, Copy, Debug)]
pub enum Delay {
    Now,
    Yield,
    Sleep(u64),
}

#[derive(Clone, Copy, Debug)]
pub enum End {
    Ok,
    Err,
    Panic,
}

#[derive(Clone, Copy, Debug)]
pub struct Plan {
    delay: Delay,
    end: End,
    value: u64,
}

pub fn plan(rng: &mut Rng, key: u64) -> Plan {
    let delay = match rng.percent() {
        0..=39 => Delay::Now,
        40..=59 => Delay::Yield,
        60..=95 => Delay::Sleep(1 + rng.below(10)),
        _ => Delay::Sleep(50 + rng.below(150)),
    };
    let end = match rng.percent() {
        0..=79 => End::Ok,
        80..=93 => End::Err,
        _ => End::Panic,
    };
    Plan {
        delay,
        end,
        value: value_for(key, rng),
    }
}

pub async fn run_plan(key: u64, plan: Plan) -> Result<u64, Fail> {
    match plan.delay {
        Delay::Now => {}
        Delay::Yield => tokio::task::yield_now().await,
        Delay::Sleep(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
    }
    match plan.end {
        End::Ok => Ok(plan.value),
        End::Err => Err(Fail(key)),
        End::Panic => std::panic::panic_any(DeliberatePanic),
    }
}

/// What became of the loader futures of one family: every future made must, by the end, have
/// finished (ok / err), panicked, or been dropped (after or before its first poll).
pub struct Probes {
    pub name: &'static str,
    pub made: AtomicU64,
    pub started: AtomicU64,
    pub ok: AtomicU64,
    pub err: AtomicU64,
    pub panicked: AtomicU64,
    pub cancelled: AtomicU64,
    pub unpolled: AtomicU64,
}

impl Probes {
    pub const fn new(name: &'static str) -> Self {
        Probes {
            name,
            made: AtomicU64::new(0),
            started: AtomicU64::new(0),
            ok: AtomicU64::new(0),
            err: AtomicU64::new(0),
            panicked: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            unpolled: AtomicU64::new(0),
        }
    }
    pub fn get(&self, counter: fn(&Probes) -> &AtomicU64) -> u64 {
        counter(self).load(Relaxed)
    }
    /// Loader futures neither finished nor dropped yet.
    pub fn alive(&self) -> i128 {
        let ended = self.get(|p| &p.ok)
            + self.get(|p| &p.err)
            + self.get(|p| &p.panicked)
            + self.get(|p| &p.cancelled)
            + self.get(|p| &p.unpolled);
        i128::from(self.get(|p| &p.made)) - i128::from(ended)
    }
    pub fn summary(&self) -> String {
        format!(
            "{:<14} made {:>9}  run {:>9}  ok {:>9}  err {:>8}  panicked {:>7}  cancelled {:>7}  never polled {:>8}",
            self.name,
            self.get(|p| &p.made),
            self.get(|p| &p.started),
            self.get(|p| &p.ok),
            self.get(|p| &p.err),
            self.get(|p| &p.panicked),
            self.get(|p| &p.cancelled),
            self.get(|p| &p.unpolled),
        )
    }
}

#[derive(Clone, Copy)]
enum ProbeState {
    Unpolled,
    Running,
    Ended,
}

struct ProbeGuard {
    probes: &'static Probes,
    state: ProbeState,
}

impl Drop for ProbeGuard {
    fn drop(&mut self) {
        let p = self.probes;
        match self.state {
            ProbeState::Unpolled => p.unpolled.fetch_add(1, Relaxed),
            ProbeState::Running if std::thread::panicking() => p.panicked.fetch_add(1, Relaxed),
            ProbeState::Running => p.cancelled.fetch_add(1, Relaxed),
            ProbeState::Ended => 0,
        };
    }
}

/// `fut`, counted in `probes`.
pub fn probed<F>(
    probes: &'static Probes,
    fut: F,
) -> impl Future<Output = F::Output> + Send + 'static
where
    F: Future<Output = Result<u64, Fail>> + Send + 'static,
{
    probes.made.fetch_add(1, Relaxed);
    let guard = ProbeGuard {
        probes,
        state: ProbeState::Unpolled,
    };
    async move {
        // The whole guard moves in (a closure would capture only the field it writes).
        let mut guard = guard;
        guard.state = ProbeState::Running;
        probes.started.fetch_add(1, Relaxed);
        let out = fut.await;
        guard.state = ProbeState::Ended;
        match &out {
            Ok(_) => probes.ok.fetch_add(1, Relaxed),
            Err(_) => probes.err.fetch_add(1, Relaxed),
        };
        out
    }
}
