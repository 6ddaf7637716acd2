//! Property tests: random sequences of operations on one unbounded `ExpiringCache` with a
//! `ManualClock`, on one thread (`block_on`, loads finish at once), against a sequential
//! model that keeps, per key, the value (or cached error), its deadline and its hard
//! (time-to-live) deadline, and its own notion of now.
//!
//! Five configurations: time-to-live; time-to-idle; both; a per-entry [`Expiry`] policy
//! (time to live from the value, reads that extend or shorten it depending on the key,
//! updates that keep what was left for some values); negative caching with a time-to-live.
//!
//! Checked after every operation:
//! * every result equals the model's (`get_with`, `get_if_present`, `peek`, `invalidate`,
//!   `run_maintenance`), and a `get_with` calls its loader exactly on a miss; a cached error
//!   comes back as the very `Arc` the failing load returned, and is a miss to
//!   `get_if_present`;
//! * `peek` of every key equals the model's visible value (an entry is visible iff
//!   `now < deadline`);
//! * the counters: hits, misses, loads ok / failed, negative hits exactly, and nothing
//!   coalesced, evicted, panicked, cancelled or refreshed;
//! * `len()`: at least the entries certainly held (live, or expired since the last
//!   operation that reclaims), at most those plus the expired ones not certainly reclaimed.
//!   An expired entry is certainly gone once an operation that reclaims (all but `peek`,
//!   `len`, `stats`) runs in or after its deadline's wheel tick, or `run_maintenance` runs
//!   at or after its deadline (issue #11, point 14): right after `run_maintenance`,
//!   `len()` is the number of live entries, in every configuration. Where no read moves a
//!   deadline (time-to-live, negative caching) nothing goes early either, so `len()` and
//!   `invalidate`'s answer are exact;
//! * `expired` and `invalidated`: each at least the removals certainly of its kind, at most
//!   that plus those of either kind (an insert over an expired entry; an invalidation of one
//!   that may have been reclaimed) and any reclamations not yet in the model;
//! * accounting: entries stored (inserts, loads, cached errors) = `len()` + `expired` +
//!   `invalidated`.
//!
//! Times are whole milliseconds except where an operation lands on a deadline (soft or
//! hard), or on the wheel tick that reclaims it, exactly or one nanosecond either side.
//!
//! Two bugs this property found in the per-entry policy (a deadline cut by a read was
//! reclaimed late; an insert over an expired, unreclaimed entry was an update) are fixed;
//! the tests at the end pin each.

#![allow(clippy::std_instead_of_core)] // tests run on std; `core::` paths matter in the library only.

use std::{
    cell::Cell, collections::hash_map::RandomState, collections::BTreeMap, sync::Arc,
    time::Duration,
};

use deferred_cache::LoadError;
use deferred_expiring::{ExpiringCache, Expiry, ManualClock, TICK};
use futures::executor::block_on;
use proptest::prelude::*;

const MS: u64 = 1_000_000;
const NEVER: u64 = u64::MAX;
const KEYS: u8 = 8;

/// The wheel tick, in nanoseconds.
fn tick_ns() -> u64 {
    u64::try_from(TICK.as_nanos()).expect("a small tick")
}

/// The loader's error.
#[derive(Debug, PartialEq, Eq)]
struct Boom(u32);

type TestCache = ExpiringCache<u8, u32, Boom, RandomState, ManualClock>;

/// How reads of a per-entry policy move the deadline: odd keys get this much more.
const READ_BONUS_MS: u64 = 700;
/// Keys `2 mod 4`: a read cuts what is left to at most this.
const READ_CAP_MS: u64 = 500;

/// The per-entry policy of [`Mode::PerEntry`]:
/// * create: `value % 5` seconds (zero: invisible at once), never for `value % 13 == 12`;
/// * read: odd keys gain [`READ_BONUS_MS`]; keys `2 mod 4` keep at most [`READ_CAP_MS`];
///   keys `0 mod 4` keep what they had;
/// * update (an insert over a live value): values divisible by 3 keep what the old value
///   had left, others start afresh as on create.
struct PerEntryPolicy;

impl Expiry<u8, u32> for PerEntryPolicy {
    fn expire_after_create(&self, _: &u8, value: &u32, _: Duration) -> Option<Duration> {
        (value % 13 != 12).then(|| Duration::from_secs(u64::from(value % 5)))
    }

    fn expire_after_read(
        &self,
        key: &u8,
        _: &u32,
        _: Duration,
        remaining: Option<Duration>,
    ) -> Option<Duration> {
        match key % 4 {
            1 | 3 => remaining.map(|r| r + Duration::from_millis(READ_BONUS_MS)),
            2 => remaining.map(|r| r.min(Duration::from_millis(READ_CAP_MS))),
            _ => remaining,
        }
    }

    fn expire_after_update(
        &self,
        key: &u8,
        value: &u32,
        now: Duration,
        remaining: Option<Duration>,
    ) -> Option<Duration> {
        if value % 3 == 0 {
            remaining
        } else {
            self.expire_after_create(key, value, now)
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Time-to-live 2 s.
    Ttl,
    /// Time-to-idle 1 s.
    Tti,
    /// Time-to-live 1.5 s and time-to-idle 1 s: a second read renews up to the cap.
    TtlTti,
    /// [`PerEntryPolicy`].
    PerEntry,
    /// Time-to-live 3 s, errors cached for 1 s.
    Negative,
}

impl Mode {
    fn ttl(self) -> Option<u64> {
        match self {
            Mode::Ttl => Some(2000 * MS),
            Mode::TtlTti => Some(1500 * MS),
            Mode::Negative => Some(3000 * MS),
            Mode::Tti | Mode::PerEntry => None,
        }
    }

    fn tti(self) -> Option<u64> {
        match self {
            Mode::Tti | Mode::TtlTti => Some(1000 * MS),
            _ => None,
        }
    }

    fn negative(self) -> Option<u64> {
        (self == Mode::Negative).then_some(1000 * MS)
    }

    /// Whether reclamation is exactly predictable: no read moves a deadline, so each
    /// entry's timer is for its deadline's tick, no earlier and no later.
    fn exact_reclaim(self) -> bool {
        matches!(self, Mode::Ttl | Mode::Negative)
    }

    /// Durations worth advancing by exactly.
    fn periods(self) -> Vec<u64> {
        let mut periods: Vec<u64> = [self.ttl(), self.tti(), self.negative()]
            .into_iter()
            .flatten()
            .collect();
        if self == Mode::PerEntry {
            periods.extend([1000, 2000, 3000, 4000, READ_BONUS_MS, READ_CAP_MS].map(|ms| ms * MS));
        }
        periods
    }

    fn build(self, clock: ManualClock) -> TestCache {
        let ns = Duration::from_nanos;
        let mut builder = ExpiringCache::builder();
        if let Some(ttl) = self.ttl() {
            builder = builder.time_to_live(ns(ttl));
        }
        if let Some(tti) = self.tti() {
            builder = builder.time_to_idle(ns(tti));
        }
        if let Some(negative) = self.negative() {
            builder = builder.cache_errors_for(ns(negative));
        }
        if self == Mode::PerEntry {
            builder = builder.expire_after(PerEntryPolicy);
        }
        builder.clock(clock).build()
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// `get_with` whose loader returns `Err(Boom(v))` if the flag says so, else `Ok(v)`.
    GetWith(u8, u32, bool),
    GetIfPresent(u8),
    Peek(u8),
    Insert(u8, u32),
    Invalidate(u8),
    /// Advance by this many milliseconds (0 included).
    AdvanceMs(u64),
    /// Advance by exactly one of the mode's periods (`Mode::periods`, index modulo).
    AdvancePeriod(usize),
    /// Advance to one of the deadlines (soft or hard) of the stored entries, or to the
    /// start of the wheel tick that reclaims one (index modulo), nudged by -1, 0 or +1 ns.
    AdvanceToDeadline(usize, i8),
    /// Advance by one wheel tick.
    AdvanceTick,
    RunMaintenance,
}

fn op() -> impl Strategy<Value = Op> {
    let k = 0..KEYS;
    let v = 0..1000u32;
    prop_oneof![
        6 => (k.clone(), v.clone(), prop::bool::weighted(0.3)).prop_map(|(k, v, f)| Op::GetWith(k, v, f)),
        3 => k.clone().prop_map(Op::GetIfPresent),
        2 => k.clone().prop_map(Op::Peek),
        3 => (k.clone(), v).prop_map(|(k, v)| Op::Insert(k, v)),
        2 => k.prop_map(Op::Invalidate),
        1 => Just(Op::AdvanceMs(0)),
        2 => (1..5000u64).prop_map(Op::AdvanceMs),
        2 => (1..800u64).prop_map(Op::AdvanceMs),
        2 => (0..8usize).prop_map(Op::AdvancePeriod),
        4 => (0..8usize, -1..=1i8).prop_map(|(i, d)| Op::AdvanceToDeadline(i, d)),
        1 => Just(Op::AdvanceTick),
        2 => Just(Op::RunMaintenance),
    ]
}

/// One stored entry of the model.
#[derive(Debug, Clone)]
struct Slot {
    value: Result<u32, Arc<Boom>>,
    /// Visible iff `now < deadline`; `NEVER` for never.
    deadline: u64,
    /// The time-to-live cap on time-to-idle renewals.
    hard: u64,
    /// The latest deadline it has had (its timer is for no later tick than this one's).
    latest: u64,
}

/// What the counters must read.
#[derive(Debug, Default)]
struct Expect {
    hits: u64,
    misses: u64,
    loads_ok: u64,
    loads_failed: u64,
    negative_hits: u64,
    /// Entries stored: inserts, successful loads, cached errors.
    stored: u64,
    /// Removals that are certainly counted as expiries.
    expired: u64,
    /// Removals that are certainly counted as invalidations (or replacements).
    invalidated: u64,
    /// Removals counted as one or the other.
    either: u64,
}

struct Model {
    mode: Mode,
    now: u64,
    /// Every entry the cache may still hold: live ones, and expired ones that may not have
    /// been reclaimed yet (with `exact_reclaim`, expired ones that certainly were not).
    map: BTreeMap<u8, Slot>,
    /// When the last operation that reclaims ran: an entry whose deadline is after it is
    /// certainly still held.
    last_tend: Option<u64>,
    expect: Expect,
}

impl Model {
    fn new(mode: Mode) -> Self {
        Model {
            mode,
            now: 0,
            map: BTreeMap::new(),
            last_tend: None,
            expect: Expect::default(),
        }
    }

    fn live(&self, key: u8) -> Option<&Slot> {
        self.map.get(&key).filter(|slot| self.now < slot.deadline)
    }

    fn live_count(&self) -> usize {
        self.map.values().filter(|s| self.now < s.deadline).count()
    }

    /// Whether the cache certainly still holds `slot`: live, or expired after the last
    /// reclamation (or never reclaimed early at all).
    fn surely_held(&self, slot: &Slot) -> bool {
        self.now < slot.deadline
            || self.mode.exact_reclaim()
            || self.last_tend.map_or(true, |t| slot.deadline > t)
    }

    /// The reclamation at the start of every operation but `peek`: the entries whose
    /// deadline's tick has begun are certainly gone. Returns how many, and how many of
    /// those were certainly still held before.
    fn tend(&mut self) -> (usize, usize) {
        self.reclaim(false)
    }

    /// `run_maintenance`: every entry whose deadline has passed is certainly gone, also
    /// one whose deadline's tick has not begun yet.
    fn maintain(&mut self) -> (usize, usize) {
        self.reclaim(true)
    }

    fn reclaim(&mut self, explicit: bool) -> (usize, usize) {
        let (now, tick) = (self.now, self.now / tick_ns());
        let exact = self.mode.exact_reclaim();
        let previous = self.last_tend.replace(now);
        let (mut gone, mut fresh) = (0, 0);
        self.map.retain(|_, s| {
            let due = s.deadline <= now && (explicit || s.deadline.div_ceil(tick_ns()) <= tick);
            if due {
                gone += 1;
                fresh += usize::from(exact || previous.map_or(true, |t| s.deadline > t));
            }
            !due
        });
        self.expect.expired += gone as u64;
        (gone, fresh)
    }

    /// Removes `key`'s entry for an invalidation: returns whether the cache certainly held
    /// it (`Some(true)`), certainly did not (`Some(false)`), or either (`None`).
    fn invalidate(&mut self, key: u8) -> Option<bool> {
        let held = self.map.get(&key).map(|s| self.surely_held(s));
        match (self.map.remove(&key), held) {
            (None, _) => Some(false),
            (Some(_), Some(true)) => {
                self.expect.invalidated += 1;
                Some(true)
            }
            // Expired: removed now if still there, or reclaimed (as an expiry) before.
            (Some(_), _) => {
                self.expect.either += 1;
                None
            }
        }
    }

    /// Removes `key`'s entry for an insert over it; returns it.
    fn replace(&mut self, key: u8) -> Option<Slot> {
        let old = self.map.remove(&key)?;
        if self.now < old.deadline {
            self.expect.invalidated += 1;
        } else {
            // Expired: replaced if still there (an invalidation), or reclaimed before (an
            // expiry). Which of the two it counts as is left open.
            self.expect.either += 1;
        }
        Some(old)
    }

    /// A read found `key` missing or expired: the cache drops the expired entry.
    fn drop_expired(&mut self, key: u8) {
        if let Some(slot) = self.map.remove(&key) {
            assert!(slot.deadline <= self.now, "dropping a live entry");
            self.expect.expired += 1;
        }
    }

    /// A hit on the live value at `key`: time-to-idle renewal, or the policy's read.
    fn renew(&mut self, key: u8) {
        let (mode, now) = (self.mode, self.now);
        let slot = self.map.get_mut(&key).expect("a live entry");
        match mode {
            Mode::Ttl | Mode::Negative => {}
            Mode::Tti | Mode::TtlTti => {
                let tti = mode.tti().expect("time-to-idle");
                let next = (now + tti).min(slot.hard);
                if next > slot.deadline {
                    slot.deadline = next;
                    slot.latest = next;
                }
            }
            Mode::PerEntry => {
                if slot.deadline != NEVER {
                    match key % 4 {
                        1 | 3 => slot.deadline += READ_BONUS_MS * MS,
                        2 => slot.deadline = slot.deadline.min(now + READ_CAP_MS * MS),
                        _ => {}
                    }
                    slot.latest = slot.latest.max(slot.deadline);
                }
            }
        }
    }

    /// Stores `value` at `key` as written now; `previous` is the deadline of the live value
    /// it replaces, if any.
    fn write(&mut self, key: u8, value: u32, previous: Option<u64>) {
        let now = self.now;
        let slot = match self.mode {
            Mode::PerEntry => {
                let create = if value % 13 == 12 {
                    NEVER
                } else {
                    now + u64::from(value % 5) * 1000 * MS
                };
                let deadline = match previous {
                    // Keeps what was left (nothing, if expired): now + (old - now), or never.
                    Some(old) if value % 3 == 0 => old.max(now),
                    _ => create,
                };
                Slot {
                    value: Ok(value),
                    deadline,
                    hard: NEVER,
                    latest: deadline,
                }
            }
            mode => {
                let hard = mode.ttl().map_or(NEVER, |ttl| now + ttl);
                let deadline = mode.tti().map_or(NEVER, |tti| now + tti).min(hard);
                Slot {
                    value: Ok(value),
                    deadline,
                    hard,
                    latest: deadline,
                }
            }
        };
        self.expect.stored += 1;
        self.map.insert(key, slot);
    }

    /// Every deadline worth landing on: soft and hard deadlines of the stored entries, and
    /// the starts of the ticks that reclaim them, all after now.
    fn targets(&self) -> Vec<u64> {
        let tick = tick_ns();
        let mut targets: Vec<u64> = self
            .map
            .values()
            .flat_map(|s| [s.deadline, s.hard])
            .filter(|&d| d != NEVER)
            .flat_map(|d| [d, d.div_ceil(tick) * tick])
            .filter(|&t| t > self.now)
            .collect();
        targets.sort_unstable();
        targets.dedup();
        targets
    }

    /// Compares everything observable without side effects.
    fn check(&self, cache: &TestCache) -> Result<(), TestCaseError> {
        let s = cache.stats();
        let e = &self.expect;
        prop_assert_eq!(
            (
                s.cache.hits,
                s.cache.misses,
                s.cache.loads_ok,
                s.cache.loads_failed,
                s.negative_hits
            ),
            (
                e.hits,
                e.misses,
                e.loads_ok,
                e.loads_failed,
                e.negative_hits
            ),
            "(hits, misses, loads_ok, loads_failed, negative_hits)"
        );
        prop_assert_eq!(
            (
                s.cache.coalesced,
                s.cache.evicted,
                s.cache.loads_panicked,
                s.cache.loads_cancelled,
                s.refreshes_started
            ),
            (0, 0, 0, 0, 0),
            "(coalesced, evicted, panicked, cancelled, refreshes)"
        );

        let len = cache.len();
        let live = self.live_count();
        let held = self.map.values().filter(|s| self.surely_held(s)).count();
        if self.mode.exact_reclaim() {
            prop_assert_eq!(len, self.map.len(), "len (live {})", live);
        } else {
            prop_assert!(
                held <= len && len <= self.map.len(),
                "len {} outside [{}, {}] (entries certainly held ({} live), and those that \
                 may await reclamation)",
                len,
                held,
                self.map.len(),
                live
            );
        }
        // Entries that certainly left as expiries, or as invalidations, and those that left
        // as one or the other; with reclamation exactly predictable, none left unseen.
        let unseen = if self.mode.exact_reclaim() {
            0
        } else {
            self.map.len() - held
        };
        for (name, got, want) in [
            ("expired", s.cache.expired, e.expired),
            ("invalidated", s.cache.invalidated, e.invalidated),
        ] {
            prop_assert!(
                want <= got && got <= want + e.either + unseen as u64,
                "{} = {}, expected {} + up to {} + {} (unseen reclamations)",
                name,
                got,
                want,
                e.either,
                unseen
            );
        }
        prop_assert_eq!(
            e.stored,
            len as u64 + s.cache.expired + s.cache.invalidated,
            "stored = len + expired + invalidated"
        );

        for key in 0..KEYS {
            let want = self.live(key).and_then(|s| s.value.as_ref().ok().copied());
            prop_assert_eq!(cache.peek(&key), want, "peek({})", key);
        }
        Ok(())
    }
}

fn run(mode: Mode, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let clock = ManualClock::new();
    let cache = mode.build(clock.clone());
    let mut m = Model::new(mode);
    let advance = |m: &mut Model, by: u64| {
        m.now += by;
        clock.advance(Duration::from_nanos(by));
    };
    for op in ops {
        match op {
            Op::GetWith(k, v, fail) => {
                m.tend();
                let called = Cell::new(false);
                let out = block_on(cache.get_with(k, || {
                    called.set(true);
                    async move {
                        if fail {
                            Err(Boom(v))
                        } else {
                            Ok(v)
                        }
                    }
                }));
                match m.live(k).map(|s| s.value.clone()) {
                    Some(Ok(old)) => {
                        m.expect.hits += 1;
                        prop_assert_eq!(out, Ok(old), "get_with({}) on a live value", k);
                        prop_assert!(!called.get(), "the loader ran on a hit");
                        m.renew(k);
                    }
                    Some(Err(error)) => {
                        m.expect.hits += 1;
                        m.expect.negative_hits += 1;
                        prop_assert!(!called.get(), "the loader ran on a cached error");
                        match out {
                            Err(LoadError::Failed(got)) => prop_assert!(
                                Arc::ptr_eq(&got, &error),
                                "get_with({}) returned another error than the cached one",
                                k
                            ),
                            other => prop_assert!(
                                false,
                                "get_with({}) on a cached error: {:?}",
                                k,
                                other
                            ),
                        }
                    }
                    None => {
                        m.drop_expired(k);
                        m.expect.misses += 1;
                        prop_assert!(called.get(), "the loader did not run on a miss");
                        if fail {
                            m.expect.loads_failed += 1;
                            let error = match out {
                                Err(LoadError::Failed(error)) => error,
                                other => {
                                    return Err(TestCaseError::fail(format!(
                                        "get_with({k}) with a failing load: {other:?}"
                                    )))
                                }
                            };
                            prop_assert_eq!(&*error, &Boom(v));
                            if let Some(negative) = mode.negative() {
                                m.expect.stored += 1;
                                let deadline = m.now + negative;
                                m.map.insert(
                                    k,
                                    Slot {
                                        value: Err(error),
                                        deadline,
                                        hard: deadline,
                                        latest: deadline,
                                    },
                                );
                            }
                        } else {
                            m.expect.loads_ok += 1;
                            prop_assert_eq!(out, Ok(v), "get_with({}) that loaded", k);
                            m.write(k, v, None);
                        }
                    }
                }
            }
            Op::GetIfPresent(k) => {
                m.tend();
                let got = cache.get_if_present(&k);
                match m.live(k).map(|s| s.value.clone()) {
                    Some(Ok(old)) => {
                        m.expect.hits += 1;
                        prop_assert_eq!(got, Some(old), "get_if_present({})", k);
                        m.renew(k);
                    }
                    Some(Err(_)) => {
                        // A probe for a value finds none: a miss, and the error stays.
                        m.expect.misses += 1;
                        prop_assert_eq!(got, None, "get_if_present({}) on a cached error", k);
                    }
                    None => {
                        m.drop_expired(k);
                        m.expect.misses += 1;
                        prop_assert_eq!(got, None, "get_if_present({}) on nothing", k);
                    }
                }
            }
            Op::Peek(k) => {
                let want = m.live(k).and_then(|s| s.value.as_ref().ok().copied());
                prop_assert_eq!(cache.peek(&k), want, "peek({})", k);
            }
            Op::Insert(k, v) => {
                m.tend();
                cache.insert(k, v);
                let old = m.replace(k).map(|s| s.deadline);
                // An expired entry is gone: the new value is created, not an update.
                let live = old.filter(|&d| m.now < d);
                m.write(k, v, live);
            }
            Op::Invalidate(k) => {
                m.tend();
                let got = cache.invalidate(&k);
                if let Some(want) = m.invalidate(k) {
                    prop_assert_eq!(got, want, "invalidate({})", k);
                }
            }
            Op::AdvanceMs(ms) => advance(&mut m, ms * MS),
            Op::AdvancePeriod(i) => {
                let periods = mode.periods();
                advance(&mut m, periods[i % periods.len()]);
            }
            Op::AdvanceToDeadline(i, nudge) => {
                let targets = m.targets();
                if !targets.is_empty() {
                    let target = targets[i % targets.len()].saturating_add_signed(nudge.into());
                    if target > m.now {
                        let by = target - m.now;
                        advance(&mut m, by);
                    }
                }
            }
            Op::AdvanceTick => advance(&mut m, tick_ns()),
            Op::RunMaintenance => {
                let (gone, fresh) = m.maintain();
                let removed = cache.run_maintenance();
                let maybe = m.map.values().filter(|s| !m.surely_held(s)).count();
                prop_assert!(
                    fresh <= removed && removed <= gone + maybe,
                    "run_maintenance removed {}, expected [{}, {}]",
                    removed,
                    fresh,
                    gone + maybe
                );
                prop_assert_eq!(
                    cache.len(),
                    m.live_count(),
                    "len right after run_maintenance: live entries only"
                );
            }
        }
        m.check(&cache)?;
    }
    Ok(())
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(op(), 1..100)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Time-to-live only; loads may fail (not cached).
    #[test]
    fn time_to_live_matches_the_model(ops in ops()) {
        run(Mode::Ttl, ops)?;
    }

    /// Time-to-idle only; reads renew.
    #[test]
    fn time_to_idle_matches_the_model(ops in ops()) {
        run(Mode::Tti, ops)?;
    }

    /// Time-to-idle renewals capped by the time-to-live.
    #[test]
    fn time_to_live_and_idle_match_the_model(ops in ops()) {
        run(Mode::TtlTti, ops)?;
    }

    /// A per-entry `Expiry` policy.
    #[test]
    fn per_entry_expiry_matches_the_model(ops in ops()) {
        run(Mode::PerEntry, ops)?;
    }

    /// Negative caching with a time-to-live: failed loads stick for their own period.
    #[test]
    fn negative_caching_matches_the_model(ops in ops()) {
        run(Mode::Negative, ops)?;
    }
}

// ---------------------------------------------------------------------------------------
// The two bugs the per-entry property found, each minimal, pinned.
// ---------------------------------------------------------------------------------------

/// A read that cuts an entry's deadline (`expire_after_read` returning less than what was
/// left) must not delay its reclamation: once the clock is a tick past the new deadline,
/// `run_maintenance` removes it.
#[test]
fn a_deadline_cut_by_a_read_is_reclaimed_on_time() {
    let clock = ManualClock::new();
    let cache = Mode::PerEntry.build(clock.clone());
    cache.insert(2, 4); // 4 s
    assert_eq!(cache.get_if_present(&2), Some(4)); // key 2: cut to 500 ms
    clock.advance(Duration::from_secs(1));
    assert_eq!(cache.peek(&2), None);
    assert_eq!(cache.run_maintenance(), 1, "reclaimed at the cut deadline");
    assert_eq!(cache.len(), 0);
}

/// An insert over an entry whose deadline has passed creates the new value
/// (`expire_after_create`), whether or not the old one has been reclaimed yet.
#[test]
fn an_insert_over_an_expired_entry_is_a_create() {
    for past in [Duration::ZERO, TICK] {
        let clock = ManualClock::new();
        let cache = Mode::PerEntry.build(clock.clone());
        cache.insert(0, 1); // 1 s
        clock.advance(Duration::from_secs(1) + past);
        assert_eq!(cache.peek(&0), None);
        cache.insert(0, 3); // 3 s when created; keeps what was left when an update
        assert_eq!(
            cache.get_if_present(&0),
            Some(3),
            "{past:?} past the deadline"
        );
    }
}
