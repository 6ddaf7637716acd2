//! `DeferredMap<u8, u16, u8>` under random operation sequences, driven on one thread, against
//! a model of what its user can observe.
//!
//! The model knows only what the documentation promises (the README's guarantees and each
//! method's docs), not how the map keeps its entries. Per key: the cell there (by identity),
//! and whether the map made that entry itself for a caller that waits on it (`wait` on an
//! absent key, `get_or_add_with` on a miss) with nobody since adding to it, taking a handle to
//! it or giving it a completer. Such an entry goes away by itself once it fails, or once it is
//! pending and no unfinished `Get` made on it is left: the harness knows which `Get`s it still
//! holds, so the model counts no interest of its own. A `wait` placeholder that is taken out
//! is settled: a removal cancels it, a replacement makes it follow the new cell; one left to
//! an added cell is cancelled if that cell is dropped pending. Cells are modelled as `Lazy`
//! documents them: pending or complete (value, error, cancelled, panicked), with a
//! computation (ready at once, never finishing, or following another cell) that runs when
//! someone awaits the cell. `Get` futures are polled by hand with a no-op waker, so nothing
//! ever blocks: a future that is not ready is kept (or dropped) by later operations. Handles
//! to cells (from `cell`, `insert`, ...) are kept and completed, aborted or given
//! computations later.
//!
//! Checked: every return value, every `Get` outcome and `added()`, how many times
//! `get_or_add_with` ran `make` (once on a miss, never on a hit), and after every operation
//! `len`, `is_empty`, `keys`, `try_get` and `is_completed` of every key, the outcome of every
//! held handle and future, and how many computations have run to their end (each at most
//! once, and only when awaited).

#![no_main]

use std::{
    collections::{hash_map::DefaultHasher, HashMap},
    future::Future,
    hash::BuildHasherDefault,
    pin::Pin,
    sync::atomic::{AtomicUsize, Ordering::Relaxed},
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

/// Why the map made an entry itself, for a caller that waits on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Made {
    /// `wait` on an absent key: a placeholder that only a later add can complete.
    ForWait,
    /// `get_or_add_with` on an absent key: its waiters drive the work.
    ForWork,
}

/// The entry at a key, as a user can tell it apart (README, "Which entries go away by
/// themselves"): its cell, and whether the map made it for a waiting caller and nobody has
/// since added to it, taken a handle to it or given it a completer. Such an entry goes away
/// by itself once it fails, or once it is pending and its last waiter has gone.
#[derive(Clone, Copy, Debug)]
struct Entry {
    cell: usize,
    made: Option<Made>,
}

#[derive(Default)]
struct Model {
    cells: Vec<MCell>,
    entries: HashMap<u8, Entry>,
    /// Computations given to the map (or to a held cell) that have run to their end.
    runs: usize,
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
                self.runs += 1;
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

    /// A `wait` placeholder still pending: the one cell nothing but the map can complete.
    fn placeholder(&self, entry: Entry) -> bool {
        entry.made == Some(Made::ForWait) && !self.done(entry.cell)
    }

    /// Whether a `Get` made now on `entry` is one of the waiters that keep it (README,
    /// "Nothing is left behind"): it is the map's own and pending.
    fn waits_on(&self, entry: Entry) -> bool {
        entry.made.is_some() && !self.done(entry.cell)
    }

    /// A new entry at `key`.
    fn add(&mut self, key: u8, cell: usize, made: Option<Made>) {
        assert!(self.entries.insert(key, Entry { cell, made }).is_none());
    }

    /// The entry at `key` is the user's from now on: they added to it, took a handle to it
    /// or gave it a completer, so it stays until removed.
    fn take_over(&mut self, key: u8) {
        if let Some(entry) = self.entries.get_mut(&key) {
            entry.made = None;
        }
    }

    /// Takes the entry at `key` out of the map (README, "No waiter is orphaned"): a pending
    /// placeholder is cancelled, any other cell is left to whoever can complete it.
    fn remove(&mut self, key: u8) -> Option<usize> {
        let entry = self.entries.remove(&key)?;
        if self.placeholder(entry) {
            self.abort(entry.cell);
        }
        Some(entry.cell)
    }

    /// Removes the entries for which `remove` says so, as `remove` does.
    fn remove_all(&mut self, mut remove: impl FnMut(&Self, u8, Entry) -> bool) {
        let mut keys: Vec<u8> = self
            .entries
            .iter()
            .filter(|(k, e)| remove(self, **k, **e))
            .map(|(k, _)| *k)
            .collect();
        keys.sort_unstable();
        for k in keys {
            self.remove(k);
        }
    }

    /// Stores cell `new` at `key` as the user's; a pending placeholder it replaces follows
    /// it (its waiters get `new`'s outcome). The old cell.
    fn replace(&mut self, key: u8, new: usize) -> Option<usize> {
        let old = self.entries.insert(
            key,
            Entry {
                cell: new,
                made: None,
            },
        )?;
        if self.placeholder(old) {
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
    /// It waits on an entry the map made (see [`Model::waits_on`]) and has not finished.
    waiter: bool,
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

/// Computations made by [`future`] that ran to their end, in this input.
static RUNS: AtomicUsize = AtomicUsize::new(0);

fn future(comp: Comp) -> Pin<Box<dyn Future<Output = Result<u16, u8>> + Send>> {
    match comp {
        Comp::Ok(v) => Box::pin(async move {
            RUNS.fetch_add(1, Relaxed);
            Ok(v)
        }),
        Comp::Err(e) => Box::pin(async move {
            RUNS.fetch_add(1, Relaxed);
            Err(e)
        }),
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
            || self.model.entries.values().any(|e| e.cell == id)
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

    /// A `Get` the map just made, and the model's (cell, waiter, added); polled now if
    /// `poll`, else held.
    fn got(
        &mut self,
        what: &str,
        get: MapGet<'a>,
        cell: usize,
        waiter: bool,
        added: bool,
        poll: bool,
    ) {
        assert_eq!(get.added(), added, "{what}: added()");
        self.same_cell(what, get.cell(), cell);
        let mut held = Held { get, cell, waiter };
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
                held.waiter = false;
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
    }

    /// What the map does by itself after each operation (README, "Nothing is left behind",
    /// "Failures reach everyone and are not kept"): an entry it made for waiting callers
    /// goes once it has failed, or once it is pending and no unfinished `Get` waits on it
    /// any more; the work of an abandoned one is dropped and its cell cancelled.
    fn settle(&mut self) {
        let model = &self.model;
        let mut gone: Vec<u8> = model
            .entries
            .iter()
            .filter(|(_, e)| {
                let waited_on = || self.gets.iter().any(|g| g.waiter && g.cell == e.cell);
                e.made.is_some() && (model.failed(e.cell) || (!model.done(e.cell) && !waited_on()))
            })
            .map(|(k, _)| *k)
            .collect();
        gone.sort_unstable();
        for k in gone {
            let entry = self.model.entries.remove(&k).unwrap();
            self.model.abort(entry.cell);
        }
    }

    fn step(&mut self, op: &Op) {
        match op {
            Op::AddValue(..) | Op::AddCell(..) | Op::AddWith(..) => self.adds(op),
            Op::Wait(..)
            | Op::WaitIfPresent(..)
            | Op::GetOrAddValue(..)
            | Op::GetOrAddWith(..)
            | Op::GetOrAddCell(..)
            | Op::Poll(..)
            | Op::DropGet(..) => self.gets(op),
            Op::CellOf(..) | Op::CellOrAdd(..) | Op::CellIfPresent(..) => self.handles_out(op),
            Op::Insert(..)
            | Op::ReplaceIf(..)
            | Op::Remove(..)
            | Op::RemoveIf(..)
            | Op::RemoveIfCompleted(..)
            | Op::RemoveIfIncomplete(..)
            | Op::Complete(..)
            | Op::Retain(..)
            | Op::RetainDone
            | Op::Clear => self.takes_out(op),
            Op::Finish(..)
            | Op::Abort(..)
            | Op::Attach(..)
            | Op::DriveNow(..)
            | Op::DropHandle(..) => self.on_handles(op),
        }
    }

    /// The `add_*` calls: a new entry, or what they do to the one there.
    fn adds(&mut self, op: &Op) {
        let map = self.map;
        let key = |k: &u8| *k % KEYS;
        match *op {
            Op::AddValue(k, v) => {
                let k = key(&k);
                // Stored in a pending entry (its waiters get it, its work is dropped unrun)
                // or a new one; a complete entry is left as it is.
                let expect = match self.model.entries.get(&k).copied() {
                    None => {
                        let id = self.model.new_cell(Some(Ok(v)), MComp::None);
                        self.model.add(k, id, None);
                        true
                    }
                    Some(e) if !self.model.done(e.cell) => {
                        self.model.complete(e.cell, Ok(v));
                        self.model.cells[e.cell].comp = MComp::None;
                        self.model.take_over(k);
                        true
                    }
                    Some(_) => false,
                };
                assert_eq!(map.add_value(k, v), expect, "add_value({k}, {v})");
            }
            Op::AddCell(k, fresh) => {
                let k = key(&k);
                let cell = real_cell(fresh);
                let id = self.model.fresh(fresh);
                // A pending entry is completed with the added cell's outcome, when it has
                // one; a placeholder left to the cell is cancelled if it is dropped unrun.
                let expect = match self.model.entries.get(&k).copied() {
                    None => {
                        self.model.add(k, id, None);
                        true
                    }
                    Some(e) => {
                        if !self.model.done(e.cell) {
                            let placeholder = self.model.placeholder(e);
                            self.model.take_over(k);
                            match self.model.cells[id].outcome {
                                Some(outcome) => {
                                    self.model.complete(e.cell, outcome);
                                    self.model.cells[e.cell].comp = MComp::None;
                                }
                                None => self.model.cells[id].forwards.push((e.cell, placeholder)),
                            }
                        }
                        false
                    }
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
                // The work goes to a new entry, or to a pending one that has none.
                let expect = match self.model.entries.get(&k).copied() {
                    None => {
                        let id = self.model.new_cell(None, MComp::None);
                        self.model.attach(id, comp);
                        self.model.add(k, id, None);
                        true
                    }
                    Some(e) => {
                        if self.model.placeholder(e) {
                            self.model.take_over(k);
                        }
                        self.model.attach(e.cell, comp)
                    }
                };
                assert_eq!(
                    map.add_with(k, future(comp)),
                    expect,
                    "add_with({k}, {comp:?})"
                );
            }
            _ => unreachable!("{op:?} is not one of these calls"),
        }
    }

    /// The calls that give a `Get`, and what becomes of the held ones.
    fn gets(&mut self, op: &Op) {
        let map = self.map;
        let key = |k: &u8| *k % KEYS;
        match *op {
            Op::Wait(k, poll) => {
                let k = key(&k);
                let get = map.wait(k);
                let (cell, waiter, added) = match self.model.entries.get(&k).copied() {
                    Some(e) => (e.cell, self.model.waits_on(e), false),
                    None => {
                        let id = self.model.new_cell(None, MComp::None);
                        self.model.add(k, id, Some(Made::ForWait));
                        (id, true, true)
                    }
                };
                self.got(&format!("wait({k})"), get, cell, waiter, added, poll);
            }
            Op::WaitIfPresent(k, poll) => {
                let k = key(&k);
                let get = map.wait_if_present(&k);
                let found = self.model.entries.get(&k).copied();
                match (get, found) {
                    (Some(get), Some(e)) => {
                        let waiter = self.model.waits_on(e);
                        self.got(
                            &format!("wait_if_present({k})"),
                            get,
                            e.cell,
                            waiter,
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
                let (cell, waiter, added) = match self.model.entries.get(&k).copied() {
                    Some(e) => (e.cell, self.model.waits_on(e), false),
                    None => {
                        let id = self.model.new_cell(Some(Ok(v)), MComp::None);
                        self.model.add(k, id, None);
                        (id, false, true)
                    }
                };
                self.got(
                    &format!("get_or_add_value({k}, {v})"),
                    get,
                    cell,
                    waiter,
                    added,
                    poll,
                );
            }
            Op::GetOrAddWith(k, comp, poll) => {
                let k = key(&k);
                let mut made = 0;
                let get = map.get_or_add_with(k, || {
                    made += 1;
                    future(comp)
                });
                let (cell, waiter, added) = match self.model.entries.get(&k).copied() {
                    Some(e) => (e.cell, self.model.waits_on(e), false),
                    None => {
                        let id = self.model.new_cell(None, MComp::None);
                        self.model.attach(id, comp);
                        self.model.add(k, id, Some(Made::ForWork));
                        (id, true, true)
                    }
                };
                let what = format!("get_or_add_with({k}, {comp:?})");
                // The work is made on a miss only, once.
                assert_eq!(made, usize::from(added), "{what}: times make ran");
                self.got(&what, get, cell, waiter, added, poll);
            }
            Op::GetOrAddCell(k, fresh, poll) => {
                let k = key(&k);
                let cell = real_cell(fresh);
                let id = self.model.fresh(fresh);
                let get = map.get_or_add_cell(k, cell.clone());
                self.hold_handle(cell, id);
                let (cell, waiter, added) = match self.model.entries.get(&k).copied() {
                    Some(e) => (e.cell, self.model.waits_on(e), false),
                    None => {
                        self.model.add(k, id, None);
                        (id, false, true)
                    }
                };
                let what = format!("get_or_add_cell({k}, {fresh:?})");
                self.got(&what, get, cell, waiter, added, poll);
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
            _ => unreachable!("{op:?} is not one of these calls"),
        }
    }

    /// The calls that give out a handle to the cell at a key.
    fn handles_out(&mut self, op: &Op) {
        let map = self.map;
        let key = |k: &u8| *k % KEYS;
        match *op {
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
                let found = self.model.entries.get(&k).copied();
                self.model.take_over(k);
                match (cell, found) {
                    (Some(cell), Some(e)) => {
                        self.same_cell(&format!("cell_if_present({k})"), &cell, e.cell);
                        self.hold_handle(cell, e.cell);
                    }
                    (None, None) => {}
                    (cell, found) => {
                        panic!("cell_if_present({k}): {cell:?}, the model has {found:?}")
                    }
                }
            }
            _ => unreachable!("{op:?} is not one of these calls"),
        }
    }

    /// The calls that replace, remove or complete the entry at a key.
    fn takes_out(&mut self, op: &Op) {
        let map = self.map;
        let key = |k: &u8| *k % KEYS;
        match *op {
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
                let expect = match self.model.entries.get(&k).copied() {
                    Some(e) if self.model.pred(pred, e.cell, &self.handles) => {
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
                let expect = match self.model.entries.get(&k).copied() {
                    Some(e) if self.model.pred(pred, e.cell, &self.handles) => self.model.remove(k),
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
                let expect = self.model.entries.get(&k).copied().map(|e| {
                    let remove = self.model.done(e.cell) == want_done;
                    if remove {
                        self.model.remove(k);
                    }
                    remove
                });
                assert_eq!(got, expect, "{op:?}");
            }
            Op::Complete(k, result) => {
                let k = key(&k);
                // Completes a pending cell (its work, if any, is dropped unrun).
                let expect = match self.model.entries.get(&k).copied() {
                    Some(e) => {
                        let completed = self.model.complete(e.cell, result.map_err(Error::Failed));
                        self.model.cells[e.cell].comp = MComp::None;
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
            Op::Retain(mask) => {
                map.retain(|k, _| mask & (1 << (k % 8)) != 0);
                self.model.remove_all(|_, k, _| mask & (1 << (k % 8)) == 0);
            }
            Op::RetainDone => {
                map.retain(|_, c| c.is_done());
                self.model.remove_all(|m, _, e| !m.done(e.cell));
            }
            Op::Clear => {
                map.clear();
                self.model.remove_all(|_, _, _| true);
            }
            _ => unreachable!("{op:?} is not one of these calls"),
        }
    }

    /// The calls on a held handle.
    fn on_handles(&mut self, op: &Op) {
        match *op {
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
            _ => unreachable!("{op:?} is not one of these calls"),
        }
    }

    /// The model's `cell_or_add(key, fresh)`: the cell now at `key`, the user's from now on
    /// (a handle to it is out).
    fn cell_or_add(&mut self, key: u8, fresh: usize) -> usize {
        match self.model.entries.get(&key).copied() {
            Some(e) => {
                self.model.take_over(key);
                e.cell
            }
            None => {
                self.model.add(key, fresh, None);
                fresh
            }
        }
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
        assert_eq!(map.len(), self.model.entries.len(), "len()");
        assert_eq!(map.is_empty(), self.model.entries.is_empty(), "is_empty()");
        let mut keys = map.keys();
        keys.sort_unstable();
        let mut expect: Vec<u8> = self.model.entries.keys().copied().collect();
        expect.sort_unstable();
        assert_eq!(keys, expect, "keys()");
        assert_eq!(
            RUNS.load(Relaxed),
            self.model.runs,
            "computations run to their end"
        );
        for k in 0..KEYS {
            let entry = self.model.entries.get(&k);
            let outcome = entry.and_then(|e| self.model.cells[e.cell].outcome);
            assert_eq!(map.try_get(&k), outcome, "try_get({k})");
            let done = entry.map(|e| self.model.done(e.cell));
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
    RUNS.store(0, Relaxed);
    for op in &input.0 {
        harness.step(op);
        harness.settle();
        harness.check();
    }
    // With every future dropped, the entries the map made that nobody waits on go.
    for held in std::mem::take(&mut harness.gets) {
        harness.drop_get(held);
    }
    harness.settle();
    harness.check();
});
