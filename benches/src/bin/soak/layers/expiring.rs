//! expiring: the `ExpiringCache` on the manual clock, the `ExpiringLoadingCache` on the system
//! clock, and `ExpiringRef`s (use-counted, timed on either clock) raced by several tasks.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use deferred_expiring::{Clock, ExpiringRef, ManualClock, SystemClock};

use super::keyed::{self, Call, Mix};
use super::{cache_key, read_burst};
use crate::callers::{caller, join, Style};
use crate::counters::{violation, Ctx, Layer, BOOKS};
use crate::invariants::Outcome;
use crate::loaders::{probed, run_plan};
use crate::rng::Rng;
use crate::state::State;
use crate::{EXP_KEYS, SYS_KEYS};

const EXP_MIX: Mix = Mix {
    roll: 1000,
    calls: &[
        (449, "expiring/get_with", Call::Burst),
        (649, "expiring/get_if_present", Call::GetIfPresent),
        (749, "expiring/peek", Call::Peek),
        (849, "expiring/insert", Call::Insert),
        (993, "expiring/invalidate", Call::Invalidate),
        (998, "expiring/run_maintenance", Call::RunMaintenance),
        (999, "expiring/invalidate_all", Call::InvalidateAll),
    ],
    empty_reads: None,
};

/// The `ExpiringCache` on the manual clock.
async fn exp_op(s: &Arc<State>, ctx: &mut Ctx, rng: &mut Rng) -> u64 {
    let key = cache_key(rng, EXP_KEYS);
    match EXP_MIX.pick(ctx, rng) {
        Call::Burst => {
            read_burst(ctx, rng, Layer::Expiring, key, |_, plan| {
                let s = Arc::clone(s);
                async move {
                    let load = move || probed(&BOOKS.loads.exp, run_plan(key, plan));
                    Outcome::from_load(s.exp.get_with(key, load).await)
                }
            })
            .await
        }
        Call::RunMaintenance => {
            s.exp.run_maintenance();
            1
        }
        call => keyed::run(ctx, rng, &EXP_MIX, &s.exp, key, call),
    }
}

const SYS_MIX: Mix = Mix {
    roll: 100,
    calls: &[
        (49, "expiring-sys/get", Call::Burst),
        // May start a refresh with the cache-wide loader, on the spawner.
        (74, "expiring-sys/get_if_present", Call::GetIfPresent),
        (84, "expiring-sys/insert", Call::Insert),
        (94, "expiring-sys/invalidate", Call::Invalidate),
        (99, "expiring-sys/peek", Call::Peek),
    ],
    empty_reads: None,
};

/// The `ExpiringLoadingCache` on the system clock: a burst's callers use the cache-wide
/// loader, or (one in four) their own.
async fn sys_op(s: &Arc<State>, ctx: &mut Ctx, rng: &mut Rng) -> u64 {
    let key = cache_key(rng, SYS_KEYS);
    match SYS_MIX.pick(ctx, rng) {
        Call::Burst => {
            read_burst(ctx, rng, Layer::Expiring, key, |rng, plan| {
                let s = Arc::clone(s);
                let own_loader = rng.below(4) == 0;
                async move {
                    Outcome::from_load(if own_loader {
                        let load = move || probed(&BOOKS.loads.sys, run_plan(key, plan));
                        s.sys.get_with(key, load).await
                    } else {
                        s.sys.get(key).await
                    })
                }
            })
            .await
        }
        call => keyed::run(ctx, rng, &SYS_MIX, &s.sys, key, call),
    }
}

/// Several tasks race for the uses of a use-counted ref: exactly `n` must get one.
async fn ref_uses(s: &Arc<State>, ctx: &Ctx, rng: &mut Rng) -> u64 {
    let key = rng.below(1 << 20);
    let n = rng.below(20);
    let r = Arc::new(ExpiringRef::uses_with_clock(key, n, s.clock.clone()));
    let tasks = 1 + rng.below(6);
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let (r, hold) = (Arc::clone(&r), rng.below(2) == 0);
        handles.push(tokio::spawn(async move {
            let mut mine = 0u64;
            let mut wrong = 0u64;
            while let Some(guard) = r.acquire() {
                mine += 1;
                if *guard != key {
                    wrong += 1;
                }
                if hold {
                    tokio::task::yield_now().await;
                }
                drop(guard);
            }
            (mine, wrong)
        }));
    }
    let mut total = 0;
    for handle in handles {
        if let Some((mine, wrong)) = join(ctx, handle).await {
            total += mine;
            if wrong != 0 {
                violation(
                    ctx,
                    format!("ExpiringRef::uses: {wrong} uses read a wrong value"),
                );
            }
        }
    }
    if total != n {
        violation(
            ctx,
            format!("ExpiringRef::uses({n}): {total} uses were granted"),
        );
    }
    if r.uses_left() != Some(0) || !r.is_expired() {
        violation(ctx, format!("ExpiringRef::uses({n}) spent but not expired"));
    }
    let r2 = Arc::clone(&r);
    let wait =
        tokio::spawn(async move { caller(Layer::Expiring, Style::Normal, r2.expired()).await });
    join(ctx, wait).await;
    total + tasks + 1
}

/// Tasks use a timed ref while its clock runs (the manual one jumps, also backwards): once a
/// task has seen it expired, it must never grant a use again.
async fn ref_timed(s: &Arc<State>, ctx: &Ctx, rng: &mut Rng, manual: bool) -> u64 {
    let key = rng.below(1 << 20);
    let tasks = 1 + rng.below(6);
    let iterations = 20 + rng.below(100);
    let r = if manual {
        let ttl = Duration::from_millis(20 + rng.below(300));
        Arc::new(RefOn::Manual(ExpiringRef::timed_with_clock(
            key,
            ttl,
            s.clock.clone(),
        )))
    } else {
        let ttl = Duration::from_micros(500 + rng.below(4500));
        Arc::new(RefOn::System(ExpiringRef::timed(key, ttl)))
    };
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let (r, hold) = (Arc::clone(&r), rng.below(3) == 0);
        handles.push(tokio::spawn(async move {
            let mut seen_expired = false;
            let mut late = 0u64;
            let mut uses = 0u64;
            for i in 0..iterations {
                match r.use_once(key, hold).await {
                    Some(true) => {
                        uses += 1;
                        if seen_expired {
                            late += 1;
                        }
                    }
                    Some(false) => return (uses, late, 1u64),
                    None => seen_expired = true,
                }
                if i % 4 == 3 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            (uses, late, 0)
        }));
    }
    let mut ops = 0;
    for handle in handles {
        if let Some((uses, late, wrong)) = join(ctx, handle).await {
            ops += uses;
            if late != 0 {
                violation(
                    ctx,
                    format!("a timed ExpiringRef granted {late} uses after it was seen expired"),
                );
            }
            if wrong != 0 {
                violation(ctx, "a timed ExpiringRef use read a wrong value");
            }
        }
    }
    let r2 = Arc::clone(&r);
    let wait =
        tokio::spawn(async move { caller(Layer::Expiring, Style::Normal, r2.expired()).await });
    if join(ctx, wait).await.is_some() && (!r.is_expired() || r.use_now()) {
        violation(
            ctx,
            "a timed ExpiringRef whose expired() completed still grants uses",
        );
    }
    ops + tasks + 1
}

/// A timed ref on either clock (their types differ).
enum RefOn {
    Manual(ExpiringRef<u64, ManualClock>),
    System(ExpiringRef<u64, SystemClock>),
}

impl RefOn {
    /// One use: `Some(true)` granted (right value), `Some(false)` granted with a wrong value,
    /// `None` refused.
    async fn use_once(&self, key: u64, hold: bool) -> Option<bool> {
        match self {
            RefOn::Manual(r) => use_once(r, key, hold).await,
            RefOn::System(r) => use_once(r, key, hold).await,
        }
    }
    fn is_expired(&self) -> bool {
        match self {
            RefOn::Manual(r) => r.is_expired(),
            RefOn::System(r) => r.is_expired(),
        }
    }
    fn use_now(&self) -> bool {
        match self {
            RefOn::Manual(r) => r.with(|_| ()).is_some(),
            RefOn::System(r) => r.with(|_| ()).is_some(),
        }
    }
    async fn expired(&self) {
        match self {
            RefOn::Manual(r) => r.expired().await,
            RefOn::System(r) => r.expired().await,
        }
    }
}

async fn use_once<C: Clock>(r: &ExpiringRef<u64, C>, key: u64, hold: bool) -> Option<bool> {
    let guard = r.acquire()?;
    let right = *guard == key;
    if hold {
        tokio::task::yield_now().await;
    }
    drop(guard);
    Some(right)
}

pub async fn expiring_op(s: &Arc<State>, ctx: &mut Ctx, rng: &mut Rng) -> u64 {
    match rng.percent() {
        0..=49 => exp_op(s, ctx, rng).await,
        50..=84 => sys_op(s, ctx, rng).await,
        85..=89 => {
            ctx.op = "expiring/ref_uses";
            BOOKS.ref_races.fetch_add(1, Relaxed);
            ref_uses(s, ctx, rng).await
        }
        90..=94 => {
            ctx.op = "expiring/ref_timed_manual";
            BOOKS.ref_races.fetch_add(1, Relaxed);
            ref_timed(s, ctx, rng, true).await
        }
        _ => {
            ctx.op = "expiring/ref_timed_system";
            BOOKS.ref_races.fetch_add(1, Relaxed);
            ref_timed(s, ctx, rng, false).await
        }
    }
}
