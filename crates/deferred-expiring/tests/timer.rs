//! Property and cost tests for [`TimerWheel`].
//!
//! * **Model**: random sequences of `schedule` / `cancel` / `reschedule` / `advance`, from a
//!   random starting tick (0, a block boundary, or near `u64::MAX`), against a map of live
//!   timers. After every operation: return values, `tick_of` of every handle ever issued
//!   (stale ones `None`), `len`, `is_empty` and `now` equal the model's; each `advance`
//!   fires exactly the live timers due by then, each once, with its scheduled tick; and
//!   `next_due` is `Some` iff a timer is live, not before `now`, and never after the earliest
//!   live tick (or `now`, for a timer scheduled in the past: it fires on the next `advance`).
//! * **Top of the range**: ticks up to `u64::MAX` schedule, fire and advance without
//!   overflow, panic or endless loop.
//! * **Cost** (`touched`): advancing costs the timers it fires plus at most one move per
//!   level for each, never the timers that stay, nor the distance jumped.

#![allow(clippy::std_instead_of_core)] // tests run on std; `core::` paths matter in the library only.

use std::{collections::BTreeMap, sync::mpsc, thread, time::Duration};

use deferred_expiring::{TimerHandle, TimerWheel};
use proptest::{prelude::*, sample::Index};

/// Levels of the wheel (six levels of 64 slots): how often a timer can be looked at by
/// `advance` before it fires, when it never waits for a later top-level block.
const LEVELS: u64 = 6;
/// Ticks in one top-level block (2^36).
const BLOCK: u64 = 1 << 36;
/// The longest single `advance` in the model test: a few dozen top-level blocks.
const MAX_JUMP: u64 = 1 << 41;

/// A tick, relative to the model's current tick when the operation runs.
#[derive(Debug, Clone)]
enum At {
    /// `now + d` (saturating).
    After(u64),
    /// `now - d` (saturating): already due.
    Before(u64),
    /// The next multiple of `64^level` after `now`, plus `delta`: slot and block edges.
    Edge { level: u32, delta: i64 },
    /// `u64::MAX - d`.
    FromTop(u64),
    /// An absolute tick.
    Abs(u64),
}

/// Where an `advance` goes.
#[derive(Debug, Clone)]
enum Target {
    /// `now + d`.
    By(u64),
    /// `now - d`: fires only what is already due.
    Back(u64),
    /// Next multiple of `64^level`, plus `delta`.
    Edge { level: u32, delta: i64 },
    /// The earliest live tick, plus `delta` (`now` when nothing is live).
    Earliest(i64),
}

#[derive(Debug, Clone)]
enum Op {
    Schedule(At),
    /// Cancel a handle issued so far (live or stale).
    Cancel(Index),
    /// Reschedule a handle issued so far (live or stale).
    Reschedule(Index, At),
    Advance(Target),
    /// One `advance_within` call with this budget: it may stop early.
    AdvanceWithin(Target, usize),
}

/// The next multiple of `64^level` after `now` (`u64::MAX` past the top), plus `delta`.
fn edge(now: u64, level: u32, delta: i64) -> u64 {
    let unit = 1u64 << (6 * level);
    let next = (now / unit + 1).saturating_mul(unit);
    next.saturating_add_signed(delta)
}

impl At {
    fn resolve(&self, now: u64) -> u64 {
        match *self {
            At::After(d) => now.saturating_add(d),
            At::Before(d) => now.saturating_sub(d),
            At::Edge { level, delta } => edge(now, level, delta),
            At::FromTop(d) => u64::MAX - d,
            At::Abs(t) => t,
        }
    }
}

fn at() -> impl Strategy<Value = At> {
    prop_oneof![
        4 => (0u64..100).prop_map(At::After),
        3 => (0u64..100_000).prop_map(At::After),
        2 => (0u64..=1 << 40).prop_map(At::After),
        1 => (0u64..1_000).prop_map(At::Before),
        2 => (1u32..=6, -3i64..=3).prop_map(|(level, delta)| At::Edge { level, delta }),
        1 => (0u64..1_000).prop_map(At::FromTop),
        1 => any::<u64>().prop_map(At::Abs),
    ]
}

fn target() -> impl Strategy<Value = Target> {
    prop_oneof![
        1 => Just(Target::By(0)),
        3 => (1u64..64).prop_map(Target::By),
        2 => (0u64..5_000).prop_map(Target::By),
        2 => (0u64..1 << 20).prop_map(Target::By),
        1 => (0u64..=1 << 40).prop_map(Target::By),
        1 => (0u64..1_000).prop_map(Target::Back),
        2 => (1u32..=6, -3i64..=3).prop_map(|(level, delta)| Target::Edge { level, delta }),
        2 => (-1i64..=1).prop_map(Target::Earliest),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => at().prop_map(Op::Schedule),
        2 => any::<Index>().prop_map(Op::Cancel),
        2 => (any::<Index>(), at()).prop_map(|(i, at)| Op::Reschedule(i, at)),
        4 => target().prop_map(Op::Advance),
        2 => (target(), 0usize..6).prop_map(|(t, budget)| Op::AdvanceWithin(t, budget)),
    ]
}

/// Where the wheel starts: advanced (empty) to this tick first.
fn start() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => Just(0u64),
        1 => Just(BLOCK - 50_000),
        1 => 0u64..1 << 45,
        1 => Just(u64::MAX - MAX_JUMP),
        1 => Just(u64::MAX - 100_000),
        1 => Just(u64::MAX - 100),
    ]
}

/// Runs `f` on its own thread and fails if it takes over `secs` seconds (an endless loop
/// fails the test instead of hanging it).
fn within<R: Send + 'static>(secs: u64, f: impl FnOnce() -> R + Send + 'static) -> R {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(r) => r,
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("still running after {secs} s"),
        // The thread panicked: its message is already printed.
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("the test body panicked"),
    }
}

/// Advances `wheel` to `to` and returns what fired, sorted. Fails if it fires more timers
/// than were scheduled (a corrupt list would otherwise make it loop).
fn fire<T: Ord>(wheel: &mut TimerWheel<T>, to: u64) -> Vec<(u64, T)> {
    let len = wheel.len();
    let mut fired = Vec::new();
    wheel.advance(to, |tick, item| {
        assert!(
            fired.len() < len,
            "advance({to}) fired over len() = {len} timers"
        );
        fired.push((tick, item));
    });
    fired.sort();
    fired
}

/// The tick an advance goes to.
fn resolve_target(target: &Target, now: u64, live: &BTreeMap<usize, u64>) -> u64 {
    match *target {
        Target::By(d) => now.saturating_add(d),
        Target::Back(d) => now.saturating_sub(d),
        Target::Edge { level, delta } => edge(now, level, delta),
        Target::Earliest(delta) => live
            .values()
            .copied()
            .min()
            .unwrap_or(now)
            .saturating_add_signed(delta),
    }
}

/// A small deterministic generator (SplitMix64) for the cost tests.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Checks every observable of `wheel` against the model: `live` maps the index of each
/// live handle in `handles` to its tick.
fn check_state(
    wheel: &TimerWheel<usize>,
    handles: &[TimerHandle],
    live: &BTreeMap<usize, u64>,
    now: u64,
) -> Result<(), TestCaseError> {
    prop_assert_eq!(wheel.now(), now);
    prop_assert_eq!(wheel.len(), live.len());
    prop_assert_eq!(wheel.is_empty(), live.is_empty());
    for (id, &handle) in handles.iter().enumerate() {
        prop_assert_eq!(
            wheel.tick_of(handle),
            live.get(&id).copied(),
            "tick_of #{}",
            id
        );
    }
    let earliest = live.values().copied().min();
    let next_due = wheel.next_due();
    match earliest {
        None => prop_assert_eq!(next_due, None),
        Some(earliest) => {
            let Some(next_due) = next_due else {
                return Err(TestCaseError::fail(format!(
                    "next_due() is None with {} live timers, the earliest at {earliest}",
                    live.len()
                )));
            };
            // A timer scheduled in the past fires on the next `advance`, and `next_due` says
            // `now` for it: the bound is on when the earliest timer can fire, its tick or
            // `now`, whichever is later.
            prop_assert!(
                next_due <= earliest.max(now),
                "next_due() {} is after the earliest live tick {} (now {})",
                next_due,
                earliest,
                now
            );
            prop_assert!(
                next_due >= now,
                "next_due() {} is before now {}",
                next_due,
                now
            );
            if earliest <= now {
                prop_assert!(
                    next_due <= now,
                    "a timer is due (tick {}) but next_due() {} is after now {}",
                    earliest,
                    next_due,
                    now
                );
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Random schedule / cancel / reschedule / advance sequences match a map of live
    /// timers: return values, `tick_of`, `len`, `now`, exactly which timers each `advance`
    /// fires (and with which tick), and `next_due` as a lower bound.
    #[test]
    fn matches_a_model(start in start(), ops in proptest::collection::vec(op(), 1..200)) {
        let mut wheel = TimerWheel::new();
        prop_assert_eq!(fire(&mut wheel, start), Vec::<(u64, usize)>::new());
        let mut now = start;
        // Every handle issued; the item of handle `i` is `i`.
        let mut handles: Vec<TimerHandle> = Vec::new();
        let mut live: BTreeMap<usize, u64> = BTreeMap::new();
        check_state(&wheel, &handles, &live, now)?;
        for op in ops {
            match op {
                Op::Schedule(at) => {
                    let tick = at.resolve(now);
                    let id = handles.len();
                    let handle = wheel.schedule(tick, id);
                    prop_assert!(!handles.contains(&handle), "handle {:?} issued twice", handle);
                    handles.push(handle);
                    live.insert(id, tick);
                }
                Op::Cancel(index) => {
                    if handles.is_empty() {
                        continue;
                    }
                    let id = index.index(handles.len());
                    let expect = live.remove(&id).map(|_| id);
                    prop_assert_eq!(wheel.cancel(handles[id]), expect, "cancel #{}", id);
                }
                Op::Reschedule(index, at) => {
                    if handles.is_empty() {
                        continue;
                    }
                    let id = index.index(handles.len());
                    let tick = at.resolve(now);
                    let expect = match live.get_mut(&id) {
                        Some(t) => {
                            *t = tick;
                            true
                        }
                        None => false,
                    };
                    prop_assert_eq!(wheel.reschedule(handles[id], tick), expect, "reschedule #{}", id);
                }
                Op::AdvanceWithin(target, budget) => {
                    let to = resolve_target(&target, now, &live).min(now.saturating_add(MAX_JUMP));
                    let mut fired = Vec::new();
                    let done = wheel.advance_within(to, budget, |tick, item| fired.push((tick, item)));
                    prop_assert!(
                        fired.len() <= budget,
                        "advance_within({}, {}) fired {} timers", to, budget, fired.len()
                    );
                    let reached = wheel.now();
                    prop_assert!(reached >= now && reached <= now.max(to), "now {} -> {}", now, reached);
                    for &(tick, id) in &fired {
                        prop_assert_eq!(live.remove(&id), Some(tick), "fired #{} not live at {}", id, tick);
                        prop_assert!(tick <= reached, "#{} fired early: tick {} at {}", id, tick, reached);
                    }
                    if done {
                        prop_assert_eq!(reached, now.max(to));
                        let late: Vec<_> = live.iter().filter(|&(_, &t)| t <= reached).collect();
                        prop_assert!(late.is_empty(), "done, but due timers left: {:?}", late);
                    } else {
                        prop_assert_eq!(wheel.next_due(), Some(reached), "stopped early");
                    }
                    now = reached;
                }
                Op::Advance(target) => {
                    let to = match target {
                        Target::By(d) => now.saturating_add(d),
                        Target::Back(d) => now.saturating_sub(d),
                        Target::Edge { level, delta } => edge(now, level, delta),
                        Target::Earliest(delta) => live
                            .values()
                            .copied()
                            .min()
                            .unwrap_or(now)
                            .saturating_add_signed(delta),
                    };
                    // Far jumps cost one step per top-level block crossed while timers wait
                    // beyond it: keep each jump to a few dozen blocks.
                    let to = to.min(now.saturating_add(MAX_JUMP));
                    let new_now = now.max(to);
                    let mut expect: Vec<(u64, usize)> = live
                        .iter()
                        .filter(|&(_, &tick)| tick <= new_now)
                        .map(|(&id, &tick)| (tick, id))
                        .collect();
                    expect.sort_unstable();
                    let fired = fire(&mut wheel, to);
                    prop_assert_eq!(
                        &fired, &expect,
                        "advance({}) from {} fired the wrong timers (tick, id)", to, now
                    );
                    for (_, id) in &fired {
                        live.remove(id);
                    }
                    now = new_now;
                }
            }
            check_state(&wheel, &handles, &live, now)?;
        }
    }
}

/// Near the top of the range: timers up to `u64::MAX` (one already due, one at exactly
/// `u64::MAX`) fire at their ticks, `advance(u64::MAX)` ends, and the wheel keeps working
/// at `now() == u64::MAX`.
#[test]
fn top_of_the_range() {
    within(30, || {
        let mut wheel = TimerWheel::new();
        let base = u64::MAX - 1000;
        assert_eq!(fire(&mut wheel, base), []);
        assert_eq!(wheel.now(), base);
        let ticks = [
            base - 5,
            base,
            base + 1,
            base + 63,
            base + 64,
            u64::MAX - 1,
            u64::MAX,
        ];
        let handles: Vec<TimerHandle> = ticks.iter().map(|&t| wheel.schedule(t, t)).collect();
        for (&handle, &tick) in handles.iter().zip(&ticks) {
            assert_eq!(wheel.tick_of(handle), Some(tick));
        }
        assert_eq!(wheel.next_due(), Some(base), "two timers are already due");
        assert_eq!(fire(&mut wheel, base), [(base - 5, base - 5), (base, base)]);
        assert_eq!(
            fire(&mut wheel, base + 63),
            [(base + 1, base + 1), (base + 63, base + 63)]
        );
        assert_eq!(fire(&mut wheel, u64::MAX - 2), [(base + 64, base + 64)]);
        let next = wheel.next_due().expect("two timers left");
        assert!(
            next < u64::MAX,
            "next_due() {next} is after the earliest tick"
        );
        assert_eq!(
            fire(&mut wheel, u64::MAX - 1),
            [(u64::MAX - 1, u64::MAX - 1)]
        );
        assert_eq!(wheel.len(), 1);
        assert_eq!(fire(&mut wheel, u64::MAX), [(u64::MAX, u64::MAX)]);
        assert!(wheel.is_empty());
        assert_eq!(wheel.now(), u64::MAX);
        assert_eq!(wheel.next_due(), None);
        // At the last tick, everything scheduled is already due.
        let late = wheel.schedule(u64::MAX, 1);
        wheel.schedule(3, 2);
        assert_eq!(wheel.next_due(), Some(u64::MAX));
        assert!(wheel.reschedule(late, 7));
        assert_eq!(fire(&mut wheel, u64::MAX), [(3, 2), (7, 1)]);
        assert!(wheel.is_empty());
        assert_eq!(wheel.now(), u64::MAX);
    });
}

/// From two top-level blocks below the top, a timer at `u64::MAX` waits beyond the block,
/// moves in when the wheel reaches the last block, and fires on `advance(u64::MAX)`.
#[test]
fn top_of_the_range_across_blocks() {
    within(30, || {
        let mut wheel = TimerWheel::new();
        let base = u64::MAX - 2 * BLOCK;
        assert_eq!(fire(&mut wheel, base), []);
        wheel.schedule(u64::MAX, 'z');
        wheel.schedule(u64::MAX - BLOCK, 'y');
        let next = wheel.next_due().expect("two timers");
        assert!(next <= u64::MAX - BLOCK, "next_due() {next}");
        assert_eq!(fire(&mut wheel, u64::MAX - 1), [(u64::MAX - BLOCK, 'y')]);
        assert_eq!(fire(&mut wheel, u64::MAX), [(u64::MAX, 'z')]);
        assert!(wheel.is_empty());
    });
}

/// 100 000 timers far ahead and 1 000 due by tick 500: `advance(1000)` fires exactly the
/// 1 000 and looks at no more than two nodes per fired timer (O(expired), not O(scheduled));
/// then the far ones fire at most `LEVELS` looks each.
#[test]
fn advance_touches_only_what_expires() {
    let mut wheel = TimerWheel::new();
    for i in 0..100_000u64 {
        wheel.schedule(1_000_000 + i * 10, i + 1_000_000);
    }
    let mut expect = Vec::new();
    for i in 0..1_000u64 {
        let tick = (i * 7) % 501;
        wheel.schedule(tick, i);
        expect.push((tick, i));
    }
    expect.sort_unstable();
    assert_eq!(wheel.touched(), 0, "nothing advanced yet");
    assert_eq!(fire(&mut wheel, 1000), expect);
    assert_eq!(wheel.len(), 100_000);
    let touched = wheel.touched();
    assert!(
        touched <= 2 * 1000,
        "advance(1000) touched {touched} nodes to fire 1000"
    );
    assert!(wheel.next_due().is_some_and(|t| t <= 1_000_000));

    let fired = fire(&mut wheel, 2_000_000);
    assert_eq!(fired.len(), 100_000);
    assert!(fired
        .iter()
        .all(|&(tick, item)| tick == 1_000_000 + (item - 1_000_000) * 10));
    let far = wheel.touched() - touched;
    assert!(
        far <= LEVELS * 100_000,
        "firing 100 000 timers touched {far} nodes"
    );
    assert!(wheel.is_empty());
}

/// Advances in `steps` small random steps over `span` ticks from `from`, with `n` timers
/// spread over the span: each fires exactly once, in the step that reaches its tick, with
/// at most `LEVELS` looks per timer in all.
fn small_steps(from: u64, span: u64, n: u64, max_step: u64, seed: u64) {
    let mut rng = Rng(seed);
    let mut wheel = TimerWheel::new();
    assert_eq!(fire(&mut wheel, from), []);
    let ticks: Vec<u64> = (0..n).map(|_| from + 1 + rng.below(span)).collect();
    for (id, &tick) in ticks.iter().enumerate() {
        wheel.schedule(tick, id);
    }
    let mut fired_at = vec![None; ticks.len()];
    let mut now = from;
    let end = from + span;
    while now < end {
        let to = (now + 1 + rng.below(max_step)).min(end);
        let before = now;
        wheel.advance(to, |tick, id| {
            assert_eq!(tick, ticks[id], "timer #{id} fired with the wrong tick");
            assert!(
                before < tick && tick <= to,
                "timer #{id} at {tick} fired in ({before}, {to}]"
            );
            assert!(
                fired_at[id].replace(to).is_none(),
                "timer #{id} fired twice"
            );
        });
        now = to;
        assert_eq!(wheel.now(), now);
        // Nothing due is left behind.
        let left = fired_at.iter().filter(|f| f.is_none()).count();
        assert_eq!(wheel.len(), left);
        if let Some(next) = wheel.next_due() {
            assert!(next > now, "next_due() {next} <= now {now} after advance");
        }
    }
    assert!(
        fired_at.iter().all(Option::is_some),
        "some timers never fired"
    );
    assert!(wheel.is_empty());
    let touched = wheel.touched();
    assert!(
        touched <= LEVELS * n,
        "{n} timers took {touched} looks in small steps"
    );
}

/// Small steps over 2^24 ticks from 0 with 4 000 timers spread over them.
#[test]
fn small_steps_fire_each_once() {
    small_steps(0, 1 << 24, 4_000, 8_192, 1);
}

/// Small steps across a top-level (2^36) block boundary: timers on both sides.
#[test]
fn small_steps_across_a_block_boundary() {
    small_steps(BLOCK - (1 << 22), 1 << 23, 4_000, 4_096, 2);
}

/// A single far timer costs a bounded number of looks however far the jump ("a jump of any
/// length costs only the slots that hold timers"): at most one when it enters its top-level
/// block and one per level after, `LEVELS + 1`. Distances up to 2^52 keep a linear cost
/// measurable (2^16 blocks) without making this test slow.
#[test]
fn far_jump_costs_the_timer_not_the_distance() {
    let mut costs = Vec::new();
    for bits in [30u32, 36, 37, 40, 44, 48, 52] {
        let tick = (1u64 << bits) + 12_345;
        let mut wheel = TimerWheel::new();
        wheel.schedule(tick, bits);
        assert!(wheel.next_due().is_some_and(|t| t <= tick));
        assert_eq!(fire(&mut wheel, tick - 1), []);
        assert_eq!(fire(&mut wheel, tick), [(tick, bits)]);
        costs.push((bits, wheel.touched()));
    }
    assert!(
        costs.iter().all(|&(_, touched)| touched <= LEVELS + 1),
        "touched() per distance 2^bits, (bits, touched): {costs:?}"
    );
}
