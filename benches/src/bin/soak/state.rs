//! The structures all workers share, filled to their working size before the start.

use std::collections::hash_map::RandomState;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use deferred_cache::Cache;
use deferred_expiring::{ExpiringCache, ExpiringLoadingCache, ManualClock};
use deferred_map::DeferredMap;

use crate::counters::BOOKS;
use crate::loaders::{plan, probed, run_plan, Fail};
use crate::rng::{loader_rng, value_for, Rng};
use crate::{CACHE_CAP, CACHE_KEYS, EXP_CAP, EXP_KEYS, MAP_KEYS, SYS_CAP, SYS_KEYS};

pub type ExpCache = ExpiringCache<u64, u64, Fail, RandomState, ManualClock>;
pub type SysCache = ExpiringLoadingCache<u64, u64, Fail>;
pub type Map = DeferredMap<u64, u64, Fail>;

pub struct State {
    pub map: Map,
    pub cache: Cache<u64, u64, Fail>,
    pub exp: ExpCache,
    pub sys: SysCache,
    pub clock: ManualClock,
    /// Workers stop at their next operation.
    pub stop: AtomicBool,
    /// The clock task stops (after the workers, whose `ExpiringRef` waits need it).
    pub clock_stop: AtomicBool,
}

impl State {
    pub fn new() -> Self {
        let clock = ManualClock::new();
        let exp = ExpiringCache::<u64, u64, Fail>::builder()
            .max_capacity(EXP_CAP)
            .time_to_live(Duration::from_secs(5))
            .time_to_idle(Duration::from_secs(2))
            .cache_errors_for(Duration::from_millis(500))
            .refresh_after(Duration::from_secs(1))
            .maintenance_budget(64)
            .clock(clock.clone())
            .build();
        let sys = ExpiringCache::<u64, u64, Fail>::builder()
            .max_capacity(SYS_CAP)
            .time_to_live(Duration::from_millis(50))
            .cache_errors_for(Duration::from_millis(10))
            .refresh_after(Duration::from_millis(20))
            .spawner(|task| {
                tokio::spawn(task);
            })
            .build_with_loader(|key: &u64| {
                let key = *key;
                let plan = plan(&mut loader_rng(), key);
                probed(&BOOKS.loads.sys, run_plan(key, plan))
            });
        State {
            map: DeferredMap::new(),
            cache: Cache::bounded(CACHE_CAP),
            exp,
            sys,
            clock,
            stop: AtomicBool::new(false),
            clock_stop: AtomicBool::new(false),
        }
    }

    /// Fills every structure to its working size, so that the warm-up ends at a steady state
    /// and the memory check compares like with like.
    pub fn fill(&self, seed: u64) {
        let mut rng = Rng::new(seed ^ 0xF111);
        for key in 0..MAP_KEYS {
            self.map.add_value(key, value_for(key, &mut rng));
        }
        for key in 0..CACHE_KEYS {
            self.cache.insert(key, value_for(key, &mut rng));
        }
        for key in 0..EXP_KEYS {
            self.exp.insert(key, value_for(key, &mut rng));
        }
        for key in 0..SYS_KEYS {
            self.sys.insert(key, value_for(key, &mut rng));
        }
    }
}
