//! `TimerWheel<u32>` under random schedule / cancel / reschedule / advance / advance_within
//! sequences, against a `BTreeMap` of live timers (the model of
//! `crates/deferred-expiring/tests/timer.rs`, driven by the fuzzer's bytes).
//!
//! After every operation: `now`, `len`, `is_empty`, `tick_of` of every handle ever issued
//! (stale ones `None`) and `next_due` (a lower bound: `Some` iff a timer is live, never before
//! `now`, never after the earliest live tick or `now`). `advance` fires exactly the live timers
//! due by then, each once, with its tick; `advance_within` fires a subset of those, at most
//! `budget` of them, and when it says it is done nothing due is left.

#![no_main]

use std::collections::BTreeMap;

use arbitrary::{Arbitrary, Unstructured};
use deferred_expiring::{TimerHandle, TimerWheel};
use libfuzzer_sys::fuzz_target;

/// Operations per input: enough for every level of the wheel, few enough that an input runs in
/// microseconds.
const MAX_OPS: usize = 128;
/// The longest single advance: a few dozen top-level (2^36) blocks, as in the proptest model.
/// Each block crossed while timers wait beyond it costs one step.
const MAX_JUMP: u64 = 1 << 41;
/// Ticks in one top-level block.
const BLOCK: u64 = 1 << 36;

/// A tick, relative to the model's current tick when the operation runs.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum At {
    /// `now + d` for a small `d`: the lowest levels.
    Near(u8),
    /// `now + d`.
    After(u32),
    /// `now + d`, up to 2^40 ahead.
    Far(u64),
    /// `now - d`: already due.
    Before(u16),
    /// The next multiple of `64^level` after `now`, plus `delta`: slot and block edges.
    Edge { level: u8, delta: i8 },
    /// `u64::MAX - d`.
    FromTop(u16),
    /// An absolute tick.
    Abs(u64),
}

/// Where an advance goes.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Target {
    /// `now + d`.
    By(u16),
    /// `now + d`, up to 2^40 ahead.
    Far(u64),
    /// `now - d`: fires only what is already due.
    Back(u16),
    /// The next multiple of `64^level`, plus `delta`.
    Edge { level: u8, delta: i8 },
    /// The earliest live tick, plus `delta` (`now` when nothing is live).
    Earliest(i8),
}

#[derive(Arbitrary, Debug)]
enum Op {
    Schedule(At),
    /// Cancel a handle issued so far (live or stale), by index.
    Cancel(u16),
    /// Reschedule a handle issued so far (live or stale), by index.
    Reschedule(u16, At),
    Advance(Target),
    /// One `advance_within` call with a budget of `0..8`: it may stop early.
    AdvanceWithin(Target, u8),
}

#[derive(Debug)]
struct Input {
    /// Where the wheel starts: advanced, empty, to this tick first.
    start: u64,
    ops: Vec<Op>,
}

impl<'a> Arbitrary<'a> for Input {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let start = match u.int_in_range(0u8..=5)? {
            0 => 0,
            1 => BLOCK - 50_000,
            2 => u.int_in_range(0..=(1u64 << 45))?,
            3 => u64::MAX - MAX_JUMP,
            4 => u64::MAX - 100_000,
            _ => u64::MAX - 100,
        };
        let mut ops = Vec::new();
        while ops.len() < MAX_OPS && !u.is_empty() {
            ops.push(u.arbitrary()?);
        }
        Ok(Input { start, ops })
    }
}

/// The next multiple of `64^level` after `now` (saturating past the top), plus `delta`.
fn edge(now: u64, level: u8, delta: i8) -> u64 {
    let level = u32::from(level % 6) + 1;
    let unit = 1u64 << (6 * level);
    let next = (now / unit + 1).saturating_mul(unit);
    next.saturating_add_signed(i64::from(delta))
}

impl At {
    fn resolve(self, now: u64) -> u64 {
        match self {
            At::Near(d) => now.saturating_add(u64::from(d)),
            At::After(d) => now.saturating_add(u64::from(d)),
            At::Far(d) => now.saturating_add(d % ((1 << 40) + 1)),
            At::Before(d) => now.saturating_sub(u64::from(d)),
            At::Edge { level, delta } => edge(now, level, delta),
            At::FromTop(d) => u64::MAX - u64::from(d),
            At::Abs(t) => t,
        }
    }
}

impl Target {
    /// The tick to advance to, capped at `MAX_JUMP` ahead of `now`.
    fn resolve(self, now: u64, live: &BTreeMap<usize, u64>) -> u64 {
        let to = match self {
            Target::By(d) => now.saturating_add(u64::from(d)),
            Target::Far(d) => now.saturating_add(d % ((1 << 40) + 1)),
            Target::Back(d) => now.saturating_sub(u64::from(d)),
            Target::Edge { level, delta } => edge(now, level, delta),
            Target::Earliest(delta) => live
                .values()
                .copied()
                .min()
                .unwrap_or(now)
                .saturating_add_signed(i64::from(delta)),
        };
        to.min(now.saturating_add(MAX_JUMP))
    }
}

/// Every observable of `wheel` against the model: `live` maps the index of each live handle
/// in `handles` to its tick.
fn check_state(
    wheel: &TimerWheel<u32>,
    handles: &[TimerHandle],
    live: &BTreeMap<usize, u64>,
    now: u64,
) {
    assert_eq!(wheel.now(), now, "now()");
    assert_eq!(wheel.len(), live.len(), "len()");
    assert_eq!(wheel.is_empty(), live.is_empty(), "is_empty()");
    for (id, &handle) in handles.iter().enumerate() {
        assert_eq!(
            wheel.tick_of(handle),
            live.get(&id).copied(),
            "tick_of #{id}"
        );
    }
    let next_due = wheel.next_due();
    match live.values().copied().min() {
        None => assert_eq!(next_due, None, "next_due() of an empty wheel"),
        Some(earliest) => {
            let next_due = next_due
                .unwrap_or_else(|| panic!("next_due() is None with {} live timers", live.len()));
            assert!(
                next_due <= earliest.max(now),
                "next_due() {next_due} is after the earliest live tick {earliest} (now {now})"
            );
            assert!(next_due >= now, "next_due() {next_due} is before now {now}");
        }
    }
}

fuzz_target!(|input: Input| {
    let mut wheel: TimerWheel<u32> = TimerWheel::new();
    let mut fired = Vec::new();
    wheel.advance(input.start, |tick, item| fired.push((tick, item)));
    assert!(fired.is_empty(), "an empty wheel fired {fired:?}");
    let mut now = input.start;
    // Every handle issued; the item of handle `i` is `i`.
    let mut handles: Vec<TimerHandle> = Vec::new();
    let mut live: BTreeMap<usize, u64> = BTreeMap::new();
    check_state(&wheel, &handles, &live, now);
    for op in input.ops {
        match op {
            Op::Schedule(at) => {
                let tick = at.resolve(now);
                let id = handles.len();
                let handle = wheel.schedule(tick, id as u32);
                assert!(!handles.contains(&handle), "handle {handle:?} issued twice");
                handles.push(handle);
                live.insert(id, tick);
            }
            Op::Cancel(index) => {
                if handles.is_empty() {
                    continue;
                }
                let id = usize::from(index) % handles.len();
                let expect = live.remove(&id).map(|_| id as u32);
                assert_eq!(wheel.cancel(handles[id]), expect, "cancel #{id}");
            }
            Op::Reschedule(index, at) => {
                if handles.is_empty() {
                    continue;
                }
                let id = usize::from(index) % handles.len();
                let tick = at.resolve(now);
                let expect = match live.get_mut(&id) {
                    Some(t) => {
                        *t = tick;
                        true
                    }
                    None => false,
                };
                assert_eq!(
                    wheel.reschedule(handles[id], tick),
                    expect,
                    "reschedule #{id}"
                );
            }
            Op::Advance(target) => {
                let to = target.resolve(now, &live);
                let new_now = now.max(to);
                let mut expect: Vec<(u64, u32)> = live
                    .iter()
                    .filter(|&(_, &tick)| tick <= new_now)
                    .map(|(&id, &tick)| (tick, id as u32))
                    .collect();
                expect.sort_unstable();
                let len = wheel.len();
                let mut fired = Vec::new();
                wheel.advance(to, |tick, item| {
                    assert!(
                        fired.len() < len,
                        "advance({to}) fired over len() = {len} timers"
                    );
                    fired.push((tick, item));
                });
                fired.sort_unstable();
                assert_eq!(
                    fired, expect,
                    "advance({to}) from {now} fired the wrong timers (tick, id)"
                );
                for (_, id) in &fired {
                    live.remove(&(*id as usize));
                }
                now = new_now;
            }
            Op::AdvanceWithin(target, budget) => {
                let budget = usize::from(budget % 8);
                let to = target.resolve(now, &live);
                let mut fired = Vec::new();
                let done = wheel.advance_within(to, budget, |tick, item| fired.push((tick, item)));
                assert!(
                    fired.len() <= budget,
                    "advance_within({to}, {budget}) fired {} timers",
                    fired.len()
                );
                let reached = wheel.now();
                assert!(
                    reached >= now && reached <= now.max(to),
                    "advance_within({to}, {budget}): now {now} -> {reached}"
                );
                for &(tick, id) in &fired {
                    assert_eq!(
                        live.remove(&(id as usize)),
                        Some(tick),
                        "fired #{id} is not live at tick {tick}"
                    );
                    assert!(
                        tick <= reached,
                        "#{id} fired early: tick {tick} at {reached}"
                    );
                }
                if done {
                    assert_eq!(
                        reached,
                        now.max(to),
                        "advance_within({to}, {budget}) done short"
                    );
                    let late: Vec<_> = live.iter().filter(|&(_, &t)| t <= reached).collect();
                    assert!(late.is_empty(), "done, but due timers left: {late:?}");
                } else {
                    assert_eq!(wheel.next_due(), Some(reached), "stopped early: next_due()");
                }
                now = reached;
            }
        }
        check_state(&wheel, &handles, &live, now);
    }
    // Draining everything left ends, and fires each live timer once.
    let len = wheel.len();
    let mut rest = Vec::new();
    wheel.advance(u64::MAX, |tick, item| {
        assert!(
            rest.len() < len,
            "advance(u64::MAX) fired over len() = {len} timers"
        );
        rest.push((tick, item));
    });
    rest.sort_unstable();
    let mut expect: Vec<(u64, u32)> = live.iter().map(|(&id, &tick)| (tick, id as u32)).collect();
    expect.sort_unstable();
    assert_eq!(rest, expect, "advance(u64::MAX) at the end");
    assert!(wheel.is_empty());
});
