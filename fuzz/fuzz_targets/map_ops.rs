//! `DeferredMap<u8, u16, u8>` under random operation sequences, driven on one thread, against
//! a sequential model.
//!
//! The model is the map as its documentation describes it: each key holds one cell (by
//! identity), of a kind (a `wait` placeholder, the map's own computation, or kept), with a
//! count of the `Get` futures interested in it; each cell is pending or complete (value,
//! error, cancelled, panicked) and may carry a computation (one that is ready at once, one
//! that never finishes, or one that follows another cell). A placeholder taken out of the map
//! is settled: a removal cancels it, a replacement makes it follow the new cell (it completes
//! when a waiter drives it); a placeholder that an added cell claimed is cancelled when that
//! cell is dropped pending. `Get` futures are
//! polled by hand with a no-op waker, so nothing ever blocks: a future that is not ready is
//! kept (or dropped) by later operations. Handles to cells (from `cell`, `insert`, ...) are
//! kept and completed, aborted or given computations later.
//!
//! Checked: every return value, every `Get` outcome and `added()`, and after every operation
//! `len`, `is_empty`, `keys`, `try_get` and `is_completed` of every key, and the outcome of
//! every held handle.

#![no_main]

use std::{
    collections::{hash_map::DefaultHasher, HashMap},
    future::Future,
    hash::BuildHasherDefault,
    pin::Pin,
    task::{Context, Poll, Waker},
};

use arbitrary::{Arbitrary, Unstructured};
use deferred_map::{DeferredMap, Error, Get, Lazy};
use libfuzzer_sys::fuzz_target;

/// A fixed hasher, so that a crashing input reproduces.
type Hasher = BuildHasherDefault<DefaultHasher>;
type Map = DeferredMap<u8, u16, u8, Hasher>;
type MapGet<'a> = Get<'a, u8, u16, u8, Hasher>;
type Outcome = Result<u16, Error<u8>>;

const MAX_OPS: usize = 64;
/// Keys are taken modulo this: few keys, so operations meet on them.
const KEYS: u8 = 6;
/// Held handles and futures, at most (the oldest goes first).
const MAX_HELD: usize = 12;

/// A computation given to the map.
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
enum Comp {
    Ok(u16),
    Err(u8),
    /// Never finishes.
    Never,
}

/// How to complete a held cell from outside.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Finish {
    Succeed(u16),
    Fail(u8),
    Cancel,
    Die,
}

/// A predicate on the cell at a key.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Pred {
    Always,
    Never,
    Done,
    Pending,
    /// The cell is the held handle at this index.
    Is(u8),
}

/// A fresh cell: complete with a value, or pending.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Fresh {
    Ready(u16),
    Pending,
}

#[derive(Arbitrary, Debug)]
enum Op {
    AddValue(u8, u16),
    AddCell(u8, Fresh),
    AddWith(u8, Comp),
    /// `wait`, polled at once if `bool`.
    Wait(u8, bool),
    WaitIfPresent(u8, bool),
    GetOrAddValue(u8, u16, bool),
    GetOrAddWith(u8, Comp, bool),
    GetOrAddCell(u8, Fresh, bool),
    /// Polls the held future at this index once.
    Poll(u8),
    /// Drops the held future at this index.
    DropGet(u8),
    CellOf(u8),
    CellOrAdd(u8, Fresh),
    CellIfPresent(u8),
    Insert(u8, Fresh),
    ReplaceIf(u8, Fresh, Pred),
    Remove(u8),
    RemoveIf(u8, Pred),
    RemoveIfCompleted(u8),
    RemoveIfIncomplete(u8),
    Complete(u8, Result<u16, u8>),
    /// Completes the held handle at this index from outside.
    Finish(u8, Finish),
    Abort(u8),
    Attach(u8, Comp),
    DriveNow(u8),
    DropHandle(u8),
    /// Keeps the keys whose bit is set in the mask.
    Retain(u8),
    /// Keeps the complete entries.
    RetainDone,
    Clear,
}

struct Input(Vec<Op>);

impl std::fmt::Debug for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(&self.0).finish()
    }
}

impl<'a> Arbitrary<'a> for Input {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let mut ops = Vec::new();
        while ops.len() < MAX_OPS && !u.is_empty() {
            ops.push(u.arbitrary()?);
        }
        Ok(Input(ops))
    }
}

// ---------------------------------------------------------------------------------------------
// The model.

/// A cell's computation, as the model sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MComp {
    /// None attached (or it finished, or was dropped).
    None,
    Ready(Result<u16, u8>),
    Never,
    /// Awaits the cell with this id and completes with its outcome (a replaced placeholder).
    Follow(usize),
}

#[derive(Debug)]
struct MCell {
    outcome: Option<Outcome>,
    comp: MComp,
    /// Cells this one's outcome is forwarded to when it completes (`add_cell`), each with
    /// whether it was a claimed placeholder (cancelled if this cell is dropped pending).
    forwards: Vec<(usize, bool)>,
}

/// Who can complete an entry's cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Placeholder,
    Computation,
    Kept,
}

impl Kind {
    fn transient(self) -> bool {
        self != Kind::Kept
    }
}

/// Which entry found at the key an insertion makes `Kept`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Claim {
    Never,
    PendingPlaceholder,
    Pending,
    Always,
}

#[derive(Debug, Clone, Copy)]
struct MSlot {
    cell: usize,
    kind: Kind,
    interest: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Lookup {
    Peek,
    Wait,
    Live,
    /// A handle is given out: the entry becomes `Kept`.
    Hold,
}

#[derive(Default)]
struct Model {
    cells: Vec<MCell>,
    slots: HashMap<u8, MSlot>,
}

struct Placed {
    cell: usize,
    inserted: bool,
    interest: bool,
    claimed_placeholder: bool,
}

impl Model {
    fn new_cell(&mut self, outcome: Option<Outcome>, comp: MComp) -> usize {
        self.cells.push(MCell {
            outcome,
            comp,
            forwards: Vec::new(),
        });
        self.cells.len() - 1
    }

    fn fresh(&mut self, fresh: Fresh) -> usize {
        match fresh {
            Fresh::Ready(v) => self.new_cell(Some(Ok(v)), MComp::None),
            Fresh::Pending => self.new_cell(None, MComp::None),
        }
    }

    fn done(&self, id: usize) -> bool {
        self.cells[id].outcome.is_some()
    }

    fn failed(&self, id: usize) -> bool {
        matches!(self.cells[id].outcome, Some(Err(_)))
    }

    /// Completes cell `id` unless it is complete; runs its forwards. Whether this won.
    fn complete(&mut self, id: usize, outcome: Outcome) -> bool {
        if self.done(id) {
            return false;
        }
        self.cells[id].outcome = Some(outcome);
        for (target, _) in std::mem::take(&mut self.cells[id].forwards) {
            self.complete(target, outcome);
            self.cells[target].comp = MComp::None;
        }
        true
    }

    /// `Lazy::abort`: cancels, drops the computation.
    fn abort(&mut self, id: usize) -> bool {
        let won = self.complete(id, Err(Error::Cancelled));
        self.cells[id].comp = MComp::None;
        won
    }

    /// Polls the computation of cell `id` once, if it is not complete.
    fn drive(&mut self, id: usize) {
        if self.done(id) {
            self.cells[id].comp = MComp::None;
            return;
        }
        match self.cells[id].comp {
            MComp::Ready(result) => {
                self.cells[id].comp = MComp::None;
                self.complete(id, result.map_err(Error::Failed));
            }
            MComp::Follow(other) => {
                // Awaiting the other cell drives its computation.
                self.drive(other);
                if let Some(outcome) = self.cells[other].outcome {
                    self.cells[id].comp = MComp::None;
                    self.complete(id, outcome);
                }
            }
            MComp::None | MComp::Never => {}
        }
    }

    /// A cell no one holds any more: if it is pending, the placeholders it was to complete
    /// as their only completer are cancelled.
    fn dropped(&mut self, id: usize) {
        if self.done(id) {
            return;
        }
        for (target, only) in std::mem::take(&mut self.cells[id].forwards) {
            if only {
                self.abort(target);
            }
        }
    }

    /// Takes the entry at `key` out of the map; a placeholder is cancelled.
    fn remove(&mut self, key: u8) -> Option<usize> {
        let slot = self.slots.remove(&key)?;
        if slot.kind == Kind::Placeholder {
            self.abort(slot.cell);
        }
        Some(slot.cell)
    }

    /// Removes the entries for which `remove` says so, as `remove` does.
    fn remove_all(&mut self, mut remove: impl FnMut(&Self, u8, &MSlot) -> bool) {
        let mut keys: Vec<u8> = self
            .slots
            .iter()
            .filter(|(k, s)| remove(self, **k, s))
            .map(|(k, _)| *k)
            .collect();
        keys.sort_unstable();
        for k in keys {
            self.remove(k);
        }
    }

    /// Stores cell `new` at `key` (kept); a placeholder replaced follows it. The old cell.
    fn replace(&mut self, key: u8, new: usize) -> Option<usize> {
        let fresh = MSlot {
            cell: new,
            kind: Kind::Kept,
            interest: 0,
        };
        let old = self.slots.insert(key, fresh)?;
        if old.kind == Kind::Placeholder
            && old.cell != new
            && !self.done(old.cell)
            && self.cells[old.cell].comp == MComp::None
        {
            self.cells[old.cell].comp = MComp::Follow(new);
        }
        Some(old.cell)
    }

    /// `Lazy::try_attach`.
    fn attach(&mut self, id: usize, comp: Comp) -> bool {
        if self.done(id) || self.cells[id].comp != MComp::None {
            return false;
        }
        self.cells[id].comp = match comp {
            Comp::Ok(v) => MComp::Ready(Ok(v)),
            Comp::Err(e) => MComp::Ready(Err(e)),
            Comp::Never => MComp::Never,
        };
        true
    }

    fn find(&mut self, key: u8, how: Lookup) -> Option<(usize, bool)> {
        let slot = *self.slots.get(&key)?;
        if how == Lookup::Live && slot.kind.transient() && self.failed(slot.cell) {
            self.slots.remove(&key);
            return None;
        }
        if how == Lookup::Hold {
            self.slots.get_mut(&key).unwrap().kind = Kind::Kept;
            return Some((slot.cell, false));
        }
        let interest = how != Lookup::Peek && slot.kind.transient() && !self.done(slot.cell);
        if interest {
            self.slots.get_mut(&key).unwrap().interest += 1;
        }
        Some((slot.cell, interest))
    }

    fn insert_or_find(
        &mut self,
        key: u8,
        cell: usize,
        kind: Kind,
        interested: bool,
        claim: Claim,
    ) -> Placed {
        if let Some(slot) = self.slots.get(&key).copied() {
            let pending = !self.done(slot.cell);
            let claimed = match claim {
                Claim::Never => false,
                Claim::PendingPlaceholder => slot.kind == Kind::Placeholder && pending,
                Claim::Pending => pending,
                Claim::Always => true,
            };
            let slot = self.slots.get_mut(&key).unwrap();
            let claimed_placeholder = claimed && slot.kind == Kind::Placeholder;
            if claimed {
                slot.kind = Kind::Kept;
            }
            let interest = interested && slot.kind.transient() && pending;
            if interest {
                slot.interest += 1;
            }
            return Placed {
                cell: slot.cell,
                inserted: false,
                interest,
                claimed_placeholder,
            };
        }
        let interest = kind.transient() && interested;
        self.slots.insert(
            key,
            MSlot {
                cell,
                kind,
                interest: usize::from(interest),
            },
        );
        Placed {
            cell,
            inserted: true,
            interest,
            claimed_placeholder: false,
        }
    }

    /// Settles the entry that holds cell `id`, if any (found by identity).
    fn release(&mut self, id: usize, had_interest: bool, pin: bool) {
        let Some(key) = self
            .slots
            .iter()
            .find(|(_, s)| s.cell == id)
            .map(|(k, _)| *k)
        else {
            return;
        };
        let slot = self.slots.get_mut(&key).unwrap();
        if pin {
            slot.kind = Kind::Kept;
        }
        if had_interest {
            slot.interest = slot.interest.saturating_sub(1);
        }
        let slot = *slot;
        let failed = self.failed(id);
        let abandoned = slot.interest == 0 && !self.done(id);
        if slot.kind.transient() && (failed || abandoned) {
            self.slots.remove(&key);
            self.abort(id);
        }
    }

    fn pred(&self, pred: Pred, id: usize, handles: &[(Lazy<u16, u8>, usize)]) -> bool {
        match pred {
            Pred::Always => true,
            Pred::Never => false,
            Pred::Done => self.done(id),
            Pred::Pending => !self.done(id),
            Pred::Is(i) => pick(handles.len(), i).is_some_and(|i| handles[i].1 == id),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The harness.

/// A `Get` future being held, with the model's view of it.
struct Held<'a> {
    get: MapGet<'a>,
    cell: usize,
    interest: bool,
}

fn pick(len: usize, index: u8) -> Option<usize> {
    (len > 0).then(|| usize::from(index) % len)
}

fn real_cell(fresh: Fresh) -> Lazy<u16, u8> {
    match fresh {
        Fresh::Ready(v) => Lazy::ready(v),
        Fresh::Pending => Lazy::pending(),
    }
}

fn future(comp: Comp) -> Pin<Box<dyn Future<Output = Result<u16, u8>> + Send>> {
    match comp {
        Comp::Ok(v) => Box::pin(async move { Ok(v) }),
        Comp::Err(e) => Box::pin(async move { Err(e) }),
        Comp::Never => Box::pin(std::future::pending()),
    }
}

fn cell_outcome(cell: &Lazy<u16, u8>) -> Option<Outcome> {
    cell.try_get()
        .map(|o| o.copied().map_err(|e| e.map(|e| *e)))
}

fn real_pred(pred: Pred, cell: &Lazy<u16, u8>, handles: &[(Lazy<u16, u8>, usize)]) -> bool {
    match pred {
        Pred::Always => true,
        Pred::Never => false,
        Pred::Done => cell.is_done(),
        Pred::Pending => !cell.is_done(),
        Pred::Is(i) => pick(handles.len(), i).is_some_and(|i| Lazy::ptr_eq(cell, &handles[i].0)),
    }
}

struct Harness<'a> {
    map: &'a Map,
    model: Model,
    handles: Vec<(Lazy<u16, u8>, usize)>,
    gets: Vec<Held<'a>>,
}

impl<'a> Harness<'a> {
    fn hold_handle(&mut self, cell: Lazy<u16, u8>, id: usize) {
        if self.handles.len() == MAX_HELD {
            self.drop_handle(0);
        }
        self.handles.push((cell, id));
    }

    /// Drops the held handle at `i`; the model's cell goes with the last one (a cell the map
    /// holds is never dropped: handles are only ever the last holders of cells that
    /// `add_cell` did not store).
    fn drop_handle(&mut self, i: usize) {
        let (_, id) = self.handles.remove(i);
        let held = self.handles.iter().any(|(_, h)| *h == id)
            || self.model.slots.values().any(|s| s.cell == id)
            || self.gets.iter().any(|g| g.cell == id)
            || self
                .model
                .cells
                .iter()
                .any(|c| c.comp == MComp::Follow(id) || c.forwards.iter().any(|f| f.0 == id));
        if !held {
            self.model.dropped(id);
        }
    }

    /// Checks that `cell` is the model's cell `id`, as far as can be seen: same outcome.
    fn same_cell(&self, what: &str, cell: &Lazy<u16, u8>, id: usize) {
        assert_eq!(
            cell_outcome(cell),
            self.model.cells[id].outcome,
            "{what}: the cell's outcome"
        );
        if let Some((held, _)) = self.handles.iter().find(|(_, h)| *h == id) {
            assert!(
                Lazy::ptr_eq(cell, held),
                "{what}: not the cell the model has"
            );
        }
    }

    /// A `Get` the map just made, and the model's (cell, interest, added); polled now if
    /// `poll`, else held.
    fn got(
        &mut self,
        what: &str,
        get: MapGet<'a>,
        cell: usize,
        interest: bool,
        added: bool,
        poll: bool,
    ) {
        assert_eq!(get.added(), added, "{what}: added()");
        self.same_cell(what, get.cell(), cell);
        let mut held = Held {
            get,
            cell,
            interest,
        };
        if poll && self.poll(what, &mut held) {
            return;
        }
        if self.gets.len() == MAX_HELD {
            let oldest = self.gets.remove(0);
            self.drop_get(oldest);
        }
        self.gets.push(held);
    }

    /// Polls `held` once; whether it is complete (then it must not be polled again).
    fn poll(&mut self, what: &str, held: &mut Held<'a>) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        let polled = Pin::new(&mut held.get).poll(&mut cx);
        self.model.drive(held.cell);
        let expect = self.model.cells[held.cell].outcome;
        match polled {
            Poll::Ready(outcome) => {
                assert_eq!(Some(outcome), expect, "{what}: the future's outcome");
                if held.interest {
                    held.interest = false;
                    self.model.release(held.cell, true, false);
                }
                true
            }
            Poll::Pending => {
                assert_eq!(
                    expect, None,
                    "{what}: pending, but the model's cell is complete"
                );
                false
            }
        }
    }

    fn drop_get(&mut self, held: Held<'a>) {
        drop(held.get);
        if held.interest {
            self.model.release(held.cell, true, false);
        }
    }

    fn step(&mut self, op: &Op) {
        let map = self.map;
        let key = |k: &u8| *k % KEYS;
        match *op {
            Op::AddValue(k, v) => {
                let k = key(&k);
                let fresh = self.model.new_cell(None, MComp::None);
                let placed = self.model.insert_or_find(
                    k,
                    fresh,
                    Kind::Kept,
                    true,
                    Claim::PendingPlaceholder,
                );
                let stored = self.model.complete(placed.cell, Ok(v));
                self.model
                    .release(placed.cell, placed.interest, stored && !placed.inserted);
                if stored && !placed.inserted {
                    self.model.abort(placed.cell);
                }
                assert_eq!(map.add_value(k, v), stored, "add_value({k}, {v})");
            }
            Op::AddCell(k, fresh) => {
                let k = key(&k);
                let cell = real_cell(fresh);
                let id = self.model.fresh(fresh);
                let placed = self
                    .model
                    .insert_or_find(k, id, Kind::Kept, false, Claim::Pending);
                let expect = if placed.inserted {
                    true
                } else {
                    let existing = placed.cell;
                    if !self.model.done(existing) {
                        match self.model.cells[id].outcome {
                            Some(outcome) => {
                                self.model.complete(existing, outcome);
                                self.model.cells[existing].comp = MComp::None;
                            }
                            None => self.model.cells[id]
                                .forwards
                                .push((existing, placed.claimed_placeholder)),
                        }
                    }
                    false
                };
                assert_eq!(
                    map.add_cell(k, cell.clone()),
                    expect,
                    "add_cell({k}, {fresh:?})"
                );
                self.hold_handle(cell, id);
            }
            Op::AddWith(k, comp) => {
                let k = key(&k);
                let fresh = self.model.new_cell(None, MComp::None);
                let placed = self.model.insert_or_find(
                    k,
                    fresh,
                    Kind::Kept,
                    false,
                    Claim::PendingPlaceholder,
                );
                let taken = self.model.attach(placed.cell, comp);
                assert_eq!(
                    map.add_with(k, future(comp)),
                    taken,
                    "add_with({k}, {comp:?})"
                );
            }
            Op::Wait(k, poll) => {
                let k = key(&k);
                let get = map.wait(k);
                let (cell, interest, added) = match self.model.find(k, Lookup::Wait) {
                    Some((cell, interest)) => (cell, interest, false),
                    None => {
                        let fresh = self.model.new_cell(None, MComp::None);
                        let placed = self.model.insert_or_find(
                            k,
                            fresh,
                            Kind::Placeholder,
                            true,
                            Claim::Never,
                        );
                        (placed.cell, placed.interest, placed.inserted)
                    }
                };
                self.got(&format!("get({k})"), get, cell, interest, added, poll);
            }
            Op::WaitIfPresent(k, poll) => {
                let k = key(&k);
                let get = map.wait_if_present(&k);
                let found = self.model.find(k, Lookup::Wait);
                match (get, found) {
                    (Some(get), Some((cell, interest))) => {
                        self.got(
                            &format!("wait_if_present({k})"),
                            get,
                            cell,
                            interest,
                            false,
                            poll,
                        );
                    }
                    (None, None) => {}
                    (get, found) => panic!(
                        "wait_if_present({k}): got {}, the model has {found:?}",
                        if get.is_some() { "Some" } else { "None" }
                    ),
                }
            }
            Op::GetOrAddValue(k, v, poll) => {
                let k = key(&k);
                let get = map.get_or_add_value(k, v);
                let (cell, interest, added) = match self.model.find(k, Lookup::Wait) {
                    Some((cell, interest)) => (cell, interest, false),
                    None => {
                        let fresh = self.model.new_cell(Some(Ok(v)), MComp::None);
                        let placed =
                            self.model
                                .insert_or_find(k, fresh, Kind::Kept, true, Claim::Never);
                        (placed.cell, placed.interest, placed.inserted)
                    }
                };
                self.got(
                    &format!("get_or_add_value({k}, {v})"),
                    get,
                    cell,
                    interest,
                    added,
                    poll,
                );
            }
            Op::GetOrAddWith(k, comp, poll) => {
                let k = key(&k);
                let get = map.get_or_add_with(k, || future(comp));
                let (cell, interest, added) = match self.model.find(k, Lookup::Live) {
                    Some((cell, interest)) => (cell, interest, false),
                    None => {
                        let fresh = self.model.new_cell(None, MComp::None);
                        self.model.attach(fresh, comp);
                        let placed = self.model.insert_or_find(
                            k,
                            fresh,
                            Kind::Computation,
                            true,
                            Claim::Never,
                        );
                        (placed.cell, placed.interest, placed.inserted)
                    }
                };
                self.got(
                    &format!("get_or_add_with({k}, {comp:?})"),
                    get,
                    cell,
                    interest,
                    added,
                    poll,
                );
            }
            Op::GetOrAddCell(k, fresh, poll) => {
                let k = key(&k);
                let cell = real_cell(fresh);
                let id = self.model.fresh(fresh);
                let get = map.get_or_add_cell(k, cell.clone());
                self.hold_handle(cell, id);
                let placed = self
                    .model
                    .insert_or_find(k, id, Kind::Kept, true, Claim::Never);
                let what = format!("get_or_add_cell({k}, {fresh:?})");
                self.got(
                    &what,
                    get,
                    placed.cell,
                    placed.interest,
                    placed.inserted,
                    poll,
                );
            }
            Op::Poll(i) => {
                if let Some(i) = pick(self.gets.len(), i) {
                    let mut held = self.gets.remove(i);
                    if !self.poll("poll of a held future", &mut held) {
                        self.gets.insert(i, held);
                    }
                }
            }
            Op::DropGet(i) => {
                if let Some(i) = pick(self.gets.len(), i) {
                    let held = self.gets.remove(i);
                    self.drop_get(held);
                }
            }
            Op::CellOf(k) => {
                let k = key(&k);
                let cell = map.cell(k);
                let fresh = self.model.new_cell(None, MComp::None);
                let id = self.cell_or_add(k, fresh);
                self.same_cell(&format!("cell({k})"), &cell, id);
                self.hold_handle(cell, id);
            }
            Op::CellOrAdd(k, fresh) => {
                let k = key(&k);
                let mine = real_cell(fresh);
                let fresh_id = self.model.fresh(fresh);
                let cell = map.cell_or_add(k, mine.clone());
                let id = self.cell_or_add(k, fresh_id);
                assert_eq!(
                    Lazy::ptr_eq(&cell, &mine),
                    id == fresh_id,
                    "cell_or_add({k}): which cell"
                );
                self.same_cell(&format!("cell_or_add({k})"), &cell, id);
                self.hold_handle(cell, id);
            }
            Op::CellIfPresent(k) => {
                let k = key(&k);
                let cell = map.cell_if_present(&k);
                let found = self.model.find(k, Lookup::Hold);
                match (cell, found) {
                    (Some(cell), Some((id, _))) => {
                        self.same_cell(&format!("cell_if_present({k})"), &cell, id);
                        self.hold_handle(cell, id);
                    }
                    (None, None) => {}
                    (cell, found) => {
                        panic!("cell_if_present({k}): {cell:?}, the model has {found:?}")
                    }
                }
            }
            Op::Insert(k, fresh) => {
                let k = key(&k);
                let cell = real_cell(fresh);
                let id = self.model.fresh(fresh);
                let old = map.insert(k, cell.clone());
                let expect = self.model.replace(k, id);
                self.check_removed(&format!("insert({k})"), old, expect);
                self.hold_handle(cell, id);
            }
            Op::ReplaceIf(k, fresh, pred) => {
                let k = key(&k);
                let cell = real_cell(fresh);
                let id = self.model.fresh(fresh);
                let handles = &self.handles;
                let result = map.replace_if(&k, cell.clone(), |c| real_pred(pred, c, handles));
                let expect = match self.model.slots.get(&k).copied() {
                    Some(slot) if self.model.pred(pred, slot.cell, &self.handles) => {
                        self.model.replace(k, id)
                    }
                    _ => None,
                };
                let what = format!("replace_if({k}, {pred:?})");
                match result {
                    Ok(old) => self.check_removed(&what, Some(old), expect),
                    Err(back) => {
                        assert!(Lazy::ptr_eq(&back, &cell), "{what}: gave back another cell");
                        self.check_removed(&what, None, expect);
                    }
                }
                self.hold_handle(cell, id);
            }
            Op::Remove(k) => {
                let k = key(&k);
                let old = map.remove(&k);
                let expect = self.model.remove(k);
                self.check_removed(&format!("remove({k})"), old, expect);
            }
            Op::RemoveIf(k, pred) => {
                let k = key(&k);
                let handles = &self.handles;
                let old = map.remove_if(&k, |c| real_pred(pred, c, handles));
                let expect = match self.model.slots.get(&k).copied() {
                    Some(slot) if self.model.pred(pred, slot.cell, &self.handles) => {
                        self.model.remove(k)
                    }
                    _ => None,
                };
                self.check_removed(&format!("remove_if({k}, {pred:?})"), old, expect);
            }
            Op::RemoveIfCompleted(k) | Op::RemoveIfIncomplete(k) => {
                let k = key(&k);
                let want_done = matches!(op, Op::RemoveIfCompleted(_));
                let got = if want_done {
                    map.remove_if_completed(&k)
                } else {
                    map.remove_if_incomplete(&k)
                };
                let expect = self.model.slots.get(&k).copied().map(|slot| {
                    let remove = self.model.done(slot.cell) == want_done;
                    if remove {
                        self.model.remove(k);
                    }
                    remove
                });
                assert_eq!(got, expect, "{op:?}");
            }
            Op::Complete(k, result) => {
                let k = key(&k);
                let expect = match self.model.find(k, Lookup::Peek) {
                    Some((id, _)) => {
                        let completed = self.model.complete(id, result.map_err(Error::Failed));
                        self.model.abort(id);
                        self.model.release(id, false, false);
                        completed
                    }
                    None => false,
                };
                assert_eq!(
                    map.complete(&k, result),
                    expect,
                    "complete({k}, {result:?})"
                );
            }
            Op::Finish(i, finish) => {
                let Some(i) = pick(self.handles.len(), i) else {
                    return;
                };
                let (cell, id) = (self.handles[i].0.clone(), self.handles[i].1);
                let (got, outcome) = match finish {
                    Finish::Succeed(v) => (cell.succeed(v).is_ok(), Ok(v)),
                    Finish::Fail(e) => (cell.fail(e).is_ok(), Err(Error::Failed(e))),
                    Finish::Cancel => (cell.cancel(), Err(Error::Cancelled)),
                    Finish::Die => (cell.die(), Err(Error::Panicked)),
                };
                assert_eq!(
                    got,
                    self.model.complete(id, outcome),
                    "{finish:?} on handle #{i}"
                );
            }
            Op::Abort(i) => {
                let Some(i) = pick(self.handles.len(), i) else {
                    return;
                };
                let id = self.handles[i].1;
                assert_eq!(
                    self.handles[i].0.abort(),
                    self.model.abort(id),
                    "abort of handle #{i}"
                );
            }
            Op::Attach(i, comp) => {
                let Some(i) = pick(self.handles.len(), i) else {
                    return;
                };
                let id = self.handles[i].1;
                let got = self.handles[i].0.try_attach(future(comp)).is_ok();
                assert_eq!(
                    got,
                    self.model.attach(id, comp),
                    "try_attach({comp:?}) on handle #{i}"
                );
            }
            Op::DriveNow(i) => {
                let Some(i) = pick(self.handles.len(), i) else {
                    return;
                };
                let id = self.handles[i].1;
                let got = self.handles[i].0.drive_now();
                self.model.drive(id);
                assert_eq!(got, self.model.done(id), "drive_now() on handle #{i}");
            }
            Op::DropHandle(i) => {
                if let Some(i) = pick(self.handles.len(), i) {
                    self.drop_handle(i);
                }
            }
            Op::Retain(mask) => {
                map.retain(|k, _| mask & (1 << (k % 8)) != 0);
                self.model.remove_all(|_, k, _| mask & (1 << (k % 8)) == 0);
            }
            Op::RetainDone => {
                map.retain(|_, c| c.is_done());
                self.model.remove_all(|m, _, s| !m.done(s.cell));
            }
            Op::Clear => {
                map.clear();
                self.model.remove_all(|_, _, _| true);
            }
        }
    }

    /// The model's `cell_or_add(key, fresh)`: the cell now at `key`.
    fn cell_or_add(&mut self, key: u8, fresh: usize) -> usize {
        self.model
            .insert_or_find(key, fresh, Kind::Kept, false, Claim::Always)
            .cell
    }

    fn check_removed(&self, what: &str, got: Option<Lazy<u16, u8>>, expect: Option<usize>) {
        match (got, expect) {
            (Some(cell), Some(id)) => self.same_cell(what, &cell, id),
            (None, None) => {}
            (got, expect) => panic!("{what}: returned {got:?}, the model says cell {expect:?}"),
        }
    }

    /// Every observable of the map and the held handles against the model.
    fn check(&self) {
        let map = self.map;
        assert_eq!(map.len(), self.model.slots.len(), "len()");
        assert_eq!(map.is_empty(), self.model.slots.is_empty(), "is_empty()");
        let mut keys = map.keys();
        keys.sort_unstable();
        let mut expect: Vec<u8> = self.model.slots.keys().copied().collect();
        expect.sort_unstable();
        assert_eq!(keys, expect, "keys()");
        for k in 0..KEYS {
            let slot = self.model.slots.get(&k);
            let outcome = slot.and_then(|s| self.model.cells[s.cell].outcome);
            assert_eq!(map.try_get(&k), outcome, "try_get({k})");
            let done = slot.map(|s| self.model.done(s.cell));
            assert_eq!(map.is_completed(&k), done, "is_completed({k})");
        }
        for (i, (cell, id)) in self.handles.iter().enumerate() {
            assert_eq!(
                cell_outcome(cell),
                self.model.cells[*id].outcome,
                "handle #{i}"
            );
        }
        for held in &self.gets {
            assert_eq!(
                cell_outcome(held.get.cell()),
                self.model.cells[held.cell].outcome,
                "a held future's cell"
            );
        }
    }
}

fuzz_target!(|input: Input| {
    let map: Map = DeferredMap::with_hasher(Hasher::default());
    let mut harness = Harness {
        map: &map,
        model: Model::default(),
        handles: Vec::new(),
        gets: Vec::new(),
    };
    for op in &input.0 {
        harness.step(op);
        harness.check();
    }
    // Dropping every future settles its interest: transient entries nobody waits on go.
    for held in std::mem::take(&mut harness.gets) {
        harness.drop_get(held);
    }
    harness.check();
});
