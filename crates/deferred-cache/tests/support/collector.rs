//! A hand-written `tracing::Subscriber` that keeps every span and event it is given, for
//! the tests of the `tracing` feature (here and in deferred-expiring, which includes this
//! file by path): no `tracing-subscriber` dependency for a few dozen lines.
//!
//! Install it with `tracing::subscriber::with_default`, which is per thread, so tests that
//! run at once in other threads neither see nor disturb its records. The tests drive their
//! futures on the test's own thread (`futures::executor::block_on`) for that reason.

use std::{
    collections::BTreeMap,
    fmt,
    sync::{Arc, Mutex, MutexGuard},
};

use tracing::{
    field::{Field, Visit},
    span, Event, Level, Metadata, Subscriber,
};

/// A span or an event as the collector saw it.
#[derive(Clone, Debug)]
pub struct Record {
    pub name: &'static str,
    pub target: &'static str,
    pub level: Level,
    /// Field values: strings as they are, anything else in its `Debug` form. An event's
    /// message is its `message` field.
    pub fields: BTreeMap<&'static str, String>,
    /// For an event: the span (an index into `spans()`) it happened in, if any.
    pub in_span: Option<usize>,
    /// For a span: whether every handle on it was dropped.
    pub closed: bool,
}

impl Record {
    fn new(meta: &Metadata<'static>, in_span: Option<usize>) -> Self {
        Record {
            name: meta.name(),
            target: meta.target(),
            level: *meta.level(),
            fields: BTreeMap::new(),
            in_span,
            closed: false,
        }
    }

    /// The value of field `name`, if recorded.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }
}

impl Visit for Record {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.fields.insert(field.name(), value.to_string());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.fields.insert(field.name(), format!("{value:?}"));
    }
}

#[derive(Default)]
struct State {
    spans: Vec<Record>,
    /// Handles alive per span (clones count), to tell when one is closed.
    handles: Vec<usize>,
    events: Vec<Record>,
    /// The spans entered and not yet exited, innermost last.
    stack: Vec<usize>,
}

/// The subscriber; clones share their records.
#[derive(Clone, Default)]
pub struct Collector(Arc<Mutex<State>>);

impl Collector {
    fn state(&self) -> MutexGuard<'_, State> {
        // A test that panics on purpose (a panicking loader) may poison nothing here, as no
        // method panics under the lock; recover anyway, to report the first failure only.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Every span opened so far, in order.
    pub fn spans(&self) -> Vec<Record> {
        self.state().spans.clone()
    }

    /// The spans named `name`.
    pub fn spans_named(&self, name: &str) -> Vec<Record> {
        self.spans()
            .into_iter()
            .filter(|s| s.name == name)
            .collect()
    }

    /// Every event so far, in order.
    pub fn events(&self) -> Vec<Record> {
        self.state().events.clone()
    }

    /// Runs `f` with this collector as the thread's subscriber.
    pub fn run<R>(&self, f: impl FnOnce() -> R) -> R {
        tracing::subscriber::with_default(self.clone(), f)
    }
}

fn index(id: &span::Id) -> usize {
    usize::try_from(id.into_u64() - 1).unwrap()
}

impl Subscriber for Collector {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, attrs: &span::Attributes<'_>) -> span::Id {
        let mut state = self.state();
        let parent = match attrs.parent() {
            Some(id) => Some(index(id)),
            None if attrs.is_contextual() => state.stack.last().copied(),
            None => None,
        };
        let mut record = Record::new(attrs.metadata(), parent);
        attrs.record(&mut record);
        state.spans.push(record);
        state.handles.push(1);
        span::Id::from_u64(state.spans.len() as u64)
    }

    fn record(&self, id: &span::Id, values: &span::Record<'_>) {
        values.record(&mut self.state().spans[index(id)]);
    }

    fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut state = self.state();
        let in_span = match event.parent() {
            Some(id) => Some(index(id)),
            None if event.is_contextual() => state.stack.last().copied(),
            None => None,
        };
        let mut record = Record::new(event.metadata(), in_span);
        event.record(&mut record);
        state.events.push(record);
    }

    fn enter(&self, id: &span::Id) {
        self.state().stack.push(index(id));
    }

    fn exit(&self, id: &span::Id) {
        let mut state = self.state();
        if let Some(at) = state.stack.iter().rposition(|&s| s == index(id)) {
            state.stack.remove(at);
        }
    }

    fn clone_span(&self, id: &span::Id) -> span::Id {
        self.state().handles[index(id)] += 1;
        id.clone()
    }

    fn try_close(&self, id: span::Id) -> bool {
        let mut state = self.state();
        let at = index(&id);
        state.handles[at] -= 1;
        let closed = state.handles[at] == 0;
        state.spans[at].closed |= closed;
        closed
    }
}
