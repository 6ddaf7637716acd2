//! `TimerWheel`: a hierarchical timing wheel, the structure that makes reclaiming expired
//! entries cost O(expired).
//!
//! Six levels of 64 slots: level `l` slot `s` holds the timers whose tick differs from the
//! wheel's current tick first in bits `6l..6l+6`, and has that group equal to `s`. A timer
//! is placed by one XOR and one leading-zero count, cancelled by unlinking it from its slot's
//! list, and moves down a level at most five times before it fires. Advancing finds the next
//! occupied slot through a 64-bit mask per level, so a jump of any length costs only the
//! slots that hold timers.

use std::fmt;

const LEVELS: usize = 6;
const SLOT_BITS: u32 = 6;
const SLOTS: usize = 1 << SLOT_BITS;
/// The ticks of one top-level block: timers beyond the current block wait on the overflow
/// list until the wheel enters theirs.
const BLOCK_BITS: u32 = SLOT_BITS * LEVELS as u32;
/// The list of timers already due when scheduled.
const DUE: usize = LEVELS * SLOTS;
/// The list of timers beyond the current top-level block (2^36 ticks, two years of
/// milliseconds): walked when the wheel jumps to the block of the earliest of them.
const OVERFLOW: usize = DUE + 1;
const NONE: u32 = u32::MAX;

/// A scheduled timer, for [`TimerWheel::cancel`] and [`TimerWheel::reschedule`]. A handle
/// outlives its timer harmlessly: once the timer fired or was cancelled, the handle is stale
/// and every call with it does nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TimerHandle {
    index: u32,
    generation: u32,
}

impl TimerHandle {
    /// The handle as one word, for an atomic.
    pub(crate) fn to_bits(self) -> u64 {
        (u64::from(self.generation) << 32) | u64::from(self.index)
    }

    /// A handle from [`to_bits`](Self::to_bits).
    pub(crate) fn from_bits(bits: u64) -> Self {
        TimerHandle {
            index: bits as u32,
            generation: (bits >> 32) as u32,
        }
    }
}

struct Node<T> {
    item: Option<T>,
    tick: u64,
    generation: u32,
    list: u32,
    prev: u32,
    next: u32,
}

/// A hierarchical timing wheel over ticks (`u64`): [`schedule`](Self::schedule) an item for a
/// tick, [`cancel`](Self::cancel) or [`reschedule`](Self::reschedule) it in O(1), and
/// [`advance`](Self::advance) to a tick, taking every item due by then. Advancing costs the
/// items it fires plus the few it moves between levels, never the items that stay.
///
/// Single-threaded: the expiring cache keeps one behind a lock. Items scheduled for a tick
/// at or before the current one fire on the next `advance`.
///
/// Public on purpose, as a building block: a caller with deadlines of its own (sessions,
/// leases, retries) can keep one beside the cache; the fuzz target and the miri subset check
/// it as such. Its API follows the crate's semver like the caches'.
///
/// ```
/// use deferred_expiring::TimerWheel;
/// let mut wheel = TimerWheel::new();
/// let a = wheel.schedule(10, "a");
/// wheel.schedule(1_000_000, "far");
/// wheel.schedule(5, "b");
/// wheel.cancel(a);
/// let mut fired = Vec::new();
/// wheel.advance(20, |tick, item| fired.push((tick, item)));
/// assert_eq!(fired, [(5, "b")]);
/// assert_eq!(wheel.len(), 1);
/// wheel.advance(u64::MAX, |_, item| fired.push((0, item)));
/// assert_eq!(fired.last(), Some(&(0, "far")));
/// ```
pub struct TimerWheel<T> {
    nodes: Vec<Node<T>>,
    /// Head of the free list of `nodes`.
    free: u32,
    /// Head of each slot's list, levels in order, then the due list.
    heads: Box<[u32]>,
    /// Which slots of each level hold timers.
    occupied: [u64; LEVELS],
    now: u64,
    /// The slot list an `advance_within` stopped in, to finish first.
    held: Option<usize>,
    len: usize,
    /// Nodes looked at by `advance` (fired or moved), for the benchmarks' "touched" count.
    touched: u64,
}

impl<T> Default for TimerWheel<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> TimerWheel<T> {
    /// An empty wheel at tick 0.
    ///
    /// ```
    /// let wheel: deferred_expiring::TimerWheel<u8> = deferred_expiring::TimerWheel::new();
    /// assert!(wheel.is_empty() && wheel.now() == 0);
    /// ```
    pub fn new() -> Self {
        TimerWheel {
            nodes: Vec::new(),
            free: NONE,
            heads: vec![NONE; OVERFLOW + 1].into_boxed_slice(),
            occupied: [0; LEVELS],
            now: 0,
            held: None,
            len: 0,
            touched: 0,
        }
    }

    /// The current tick: every timer for this tick or before has fired.
    ///
    /// ```
    /// let mut wheel: deferred_expiring::TimerWheel<u8> = deferred_expiring::TimerWheel::new();
    /// wheel.advance(7, |_, _| {});
    /// assert_eq!(wheel.now(), 7);
    /// ```
    pub fn now(&self) -> u64 {
        self.now
    }

    /// The number of timers scheduled.
    ///
    /// ```
    /// let mut wheel = deferred_expiring::TimerWheel::new();
    /// wheel.schedule(3, ());
    /// assert_eq!(wheel.len(), 1);
    /// ```
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no timer is scheduled.
    ///
    /// ```
    /// assert!(deferred_expiring::TimerWheel::<u8>::new().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How many timers `advance` has looked at so far, fired or moved down a level.
    ///
    /// ```
    /// let mut wheel = deferred_expiring::TimerWheel::new();
    /// wheel.schedule(1, ());
    /// wheel.advance(1, |_, _| {});
    /// assert_eq!(wheel.touched(), 1);
    /// ```
    pub fn touched(&self) -> u64 {
        self.touched
    }

    /// Schedules `item` for `tick`.
    ///
    /// ```
    /// let mut wheel = deferred_expiring::TimerWheel::new();
    /// let handle = wheel.schedule(3, 'x');
    /// assert_eq!(wheel.tick_of(handle), Some(3));
    /// ```
    pub fn schedule(&mut self, tick: u64, item: T) -> TimerHandle {
        let index = if self.free != NONE {
            let index = self.free;
            let node = &mut self.nodes[index as usize];
            self.free = node.next;
            node.item = Some(item);
            node.tick = tick;
            index
        } else {
            let index = u32::try_from(self.nodes.len()).expect("over 4 billion timers");
            self.nodes.push(Node {
                item: Some(item),
                tick,
                generation: 0,
                list: NONE,
                prev: NONE,
                next: NONE,
            });
            index
        };
        self.len += 1;
        self.link(index);
        TimerHandle {
            index,
            generation: self.nodes[index as usize].generation,
        }
    }

    /// Removes the timer of `handle` and returns its item; `None` if it already fired or
    /// was cancelled.
    ///
    /// ```
    /// let mut wheel = deferred_expiring::TimerWheel::new();
    /// let handle = wheel.schedule(3, 'x');
    /// assert_eq!(wheel.cancel(handle), Some('x'));
    /// assert_eq!(wheel.cancel(handle), None);
    /// ```
    pub fn cancel(&mut self, handle: TimerHandle) -> Option<T> {
        self.live(handle)?;
        self.unlink(handle.index);
        Some(self.release(handle.index))
    }

    /// Moves the timer of `handle` to `tick`; returns whether it was still scheduled.
    ///
    /// ```
    /// let mut wheel = deferred_expiring::TimerWheel::new();
    /// let handle = wheel.schedule(3, 'x');
    /// assert!(wheel.reschedule(handle, 9));
    /// let mut fired = Vec::new();
    /// wheel.advance(8, |_, item| fired.push(item));
    /// assert!(fired.is_empty());
    /// wheel.advance(9, |_, item| fired.push(item));
    /// assert_eq!(fired, ['x']);
    /// ```
    pub fn reschedule(&mut self, handle: TimerHandle, tick: u64) -> bool {
        if self.live(handle).is_none() {
            return false;
        }
        self.unlink(handle.index);
        self.nodes[handle.index as usize].tick = tick;
        self.link(handle.index);
        true
    }

    /// The tick the timer of `handle` is scheduled for; `None` if it fired or was cancelled.
    ///
    /// ```
    /// let mut wheel = deferred_expiring::TimerWheel::new();
    /// let handle = wheel.schedule(3, ());
    /// wheel.advance(3, |_, _| {});
    /// assert_eq!(wheel.tick_of(handle), None);
    /// ```
    pub fn tick_of(&self, handle: TimerHandle) -> Option<u64> {
        self.live(handle).map(|node| node.tick)
    }

    /// The earliest tick at which some timer may be due: the current tick if a timer is due
    /// already (it was scheduled for a tick that had passed), else a lower bound on the
    /// ticks of the timers (exact for those in the lowest level); `None` if the wheel is
    /// empty. `advance` to a tick before it fires nothing.
    ///
    /// ```
    /// let mut wheel = deferred_expiring::TimerWheel::new();
    /// assert_eq!(wheel.next_due(), None);
    /// wheel.schedule(40, ());
    /// assert_eq!(wheel.next_due(), Some(40));
    /// ```
    pub fn next_due(&self) -> Option<u64> {
        let holding = self.held.is_some_and(|list| self.heads[list] != NONE);
        if self.heads[DUE] != NONE || holding {
            return Some(self.now);
        }
        self.next_slot().map(|(_, _, start)| start)
    }

    /// Moves the wheel to `now` and calls `fire(tick, item)` for every timer due by then
    /// (scheduled for `now` or before), earliest slot first; the order within a slot is
    /// unspecified. A `now` before the current tick fires only what is already due.
    ///
    /// ```
    /// let mut wheel = deferred_expiring::TimerWheel::new();
    /// for tick in [5, 3, 70, 4_000] {
    ///     wheel.schedule(tick, tick);
    /// }
    /// let mut fired = Vec::new();
    /// wheel.advance(100, |_, item| fired.push(item));
    /// fired.sort();
    /// assert_eq!(fired, [3, 5, 70]);
    /// ```
    pub fn advance(&mut self, now: u64, fire: impl FnMut(u64, T)) {
        self.advance_within(now, usize::MAX, fire);
    }

    /// As [`advance`](Self::advance), but looks at no more than `budget` timers (fired or
    /// moved down a level): returns `true` if it reached `now`, `false` if it stopped
    /// early, in which case the wheel stands where it stopped (`now()` may be earlier than
    /// `now`, and [`next_due`](Self::next_due) says the current tick) and the next call
    /// goes on from there. For callers that must bound the pause one call may cause.
    ///
    /// ```
    /// let mut wheel = deferred_expiring::TimerWheel::new();
    /// for tick in 0..10 {
    ///     wheel.schedule(5, tick);
    /// }
    /// let mut fired = 0;
    /// assert!(!wheel.advance_within(5, 4, |_, _| fired += 1));
    /// assert_eq!((fired, wheel.next_due()), (4, Some(wheel.now())));
    /// while !wheel.advance_within(5, 4, |_, _| fired += 1) {}
    /// assert_eq!(fired, 10);
    /// ```
    pub fn advance_within(
        &mut self,
        now: u64,
        budget: usize,
        mut fire: impl FnMut(u64, T),
    ) -> bool {
        let mut budget = budget;
        loop {
            // First what is in hand: timers due, then the rest of a slot begun.
            if !self.drain(DUE, &mut budget, &mut fire) {
                return false;
            }
            if let Some(list) = self.held {
                if !self.drain(list, &mut budget, &mut fire) {
                    return false;
                }
                self.held = None;
                continue;
            }
            if now <= self.now {
                return true;
            }
            let Some((level, slot, start)) = self.next_slot() else {
                self.now = now;
                return true;
            };
            if start > now {
                self.now = now;
                return true;
            }
            // Every timer before this slot has fired: the wheel may stand at its start.
            self.now = start;
            if level == LEVELS {
                self.spill_overflow();
            } else {
                self.occupied[level] &= !(1 << slot);
                // Its timers fire (tick == start) or move down a level; none moves into
                // this same slot while the wheel stands at its start, so the slot keeps
                // whatever is left of its list if the budget runs out midway.
                self.held = Some(level * SLOTS + slot);
            }
        }
    }

    /// Takes timers off the head of `list` (the due list, or the slot the wheel stands at),
    /// firing those due and moving the rest down, until it is empty (`true`) or the budget
    /// is spent (`false`).
    fn drain(&mut self, list: usize, budget: &mut usize, fire: &mut impl FnMut(u64, T)) -> bool {
        loop {
            let index = self.heads[list];
            if index == NONE {
                return true;
            }
            if *budget == 0 {
                return false;
            }
            *budget -= 1;
            self.touched += 1;
            self.unlink(index);
            let tick = self.nodes[index as usize].tick;
            if tick <= self.now {
                fire(tick, self.release(index));
            } else {
                self.link(index);
            }
        }
    }

    /// Relinks every overflow timer relative to the current tick (the start of the block
    /// of the earliest of them): those of this block move into the levels, the others go
    /// back. Done whole, whatever the budget: it happens once per block the wheel enters.
    fn spill_overflow(&mut self) {
        let mut index = core::mem::replace(&mut self.heads[OVERFLOW], NONE);
        while index != NONE {
            let next = self.nodes[index as usize].next;
            self.touched += 1;
            self.nodes[index as usize].list = NONE;
            self.link(index);
            index = next;
        }
    }

    /// The first occupied slot after the current tick, as (level, slot, first tick).
    fn next_slot(&self) -> Option<(usize, usize, u64)> {
        let mut best: Option<(usize, usize, u64)> = None;
        for level in 0..LEVELS {
            let shift = SLOT_BITS * level as u32;
            let here = (self.now >> shift) as usize & (SLOTS - 1);
            // Timers in this level sit after the current slot (they differ from `now`
            // first in this level's bits, and are later).
            let after = self.occupied[level] & u64::MAX.checked_shl(here as u32 + 1).unwrap_or(0);
            if after == 0 {
                continue;
            }
            let slot = after.trailing_zeros() as usize;
            let block = self.now & !((1u64 << (shift + SLOT_BITS)) - 1);
            let start = block | ((slot as u64) << shift);
            if best.map_or(true, |(_, _, s)| start < s) {
                best = Some((level, slot, start));
            }
        }
        if best.is_none() && self.heads[OVERFLOW] != NONE {
            // Every level is empty: the next thing is the block of the earliest overflow
            // timer (a later block than the current one), however far away.
            let mut earliest = u64::MAX;
            let mut index = self.heads[OVERFLOW];
            while index != NONE {
                earliest = earliest.min(self.nodes[index as usize].tick);
                index = self.nodes[index as usize].next;
            }
            best = Some((LEVELS, 0, earliest & !((1 << BLOCK_BITS) - 1)));
        }
        best
    }

    fn live(&self, handle: TimerHandle) -> Option<&Node<T>> {
        let node = self.nodes.get(handle.index as usize)?;
        (node.generation == handle.generation && node.item.is_some()).then_some(node)
    }

    /// Puts node `index` on the list its tick belongs to, relative to the current tick.
    fn link(&mut self, index: u32) {
        let tick = self.nodes[index as usize].tick;
        let differ = tick ^ self.now;
        let list = if tick <= self.now {
            DUE
        } else if differ >> BLOCK_BITS != 0 {
            OVERFLOW
        } else {
            // `differ` is not 0 (tick > now): its top bit picks the level.
            let level = ((63 - differ.leading_zeros()) / SLOT_BITS) as usize;
            let slot = (tick >> (SLOT_BITS * level as u32)) as usize & (SLOTS - 1);
            self.occupied[level] |= 1 << slot;
            level * SLOTS + slot
        };
        let head = self.heads[list];
        let node = &mut self.nodes[index as usize];
        node.list = list as u32;
        node.prev = NONE;
        node.next = head;
        if head != NONE {
            self.nodes[head as usize].prev = index;
        }
        self.heads[list] = index;
    }

    /// Takes node `index` off its list.
    fn unlink(&mut self, index: u32) {
        let (list, prev, next) = {
            let node = &self.nodes[index as usize];
            (node.list as usize, node.prev, node.next)
        };
        if prev != NONE {
            self.nodes[prev as usize].next = next;
        } else {
            self.heads[list] = next;
            if next == NONE && list < DUE {
                self.occupied[list / SLOTS] &= !(1 << (list % SLOTS));
            }
        }
        if next != NONE {
            self.nodes[next as usize].prev = prev;
        }
        self.nodes[index as usize].list = NONE;
    }

    /// Frees node `index` (already unlinked) and returns its item.
    fn release(&mut self, index: u32) -> T {
        let node = &mut self.nodes[index as usize];
        node.generation = node.generation.wrapping_add(1);
        node.next = self.free;
        self.free = index;
        self.len -= 1;
        node.item.take().expect("a linked timer holds its item")
    }
}

impl<T> fmt::Debug for TimerWheel<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimerWheel")
            .field("now", &self.now)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}
