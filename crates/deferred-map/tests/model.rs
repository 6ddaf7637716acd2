//! Property test: random sequences of operations on one thread give the same results as a
//! sequential model (a `HashMap` of "pending" or "value").

#![allow(clippy::std_instead_of_core)] // tests run on std; `core::` paths matter in the library only.

use std::{collections::HashMap, task::Poll};

use deferred_map::{DeferredMap, Error, Lazy};
use deferred_test_support::poll_once;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    AddValue(u8, u32),
    Remove(u8),
    TryGet(u8),
    IsCompleted(u8),
    TakeCell(u8),
    Complete(u8, u32),
    RemoveIfCompleted(u8),
    RemoveIfIncomplete(u8),
    GetOrAddValue(u8, u32),
    GetOrAddReady(u8, u32),
    Len,
}

fn op() -> impl Strategy<Value = Op> {
    let k = 0u8..6;
    prop_oneof![
        (k.clone(), any::<u32>()).prop_map(|(k, v)| Op::AddValue(k, v)),
        k.clone().prop_map(Op::Remove),
        k.clone().prop_map(Op::TryGet),
        k.clone().prop_map(Op::IsCompleted),
        k.clone().prop_map(Op::TakeCell),
        (k.clone(), any::<u32>()).prop_map(|(k, v)| Op::Complete(k, v)),
        k.clone().prop_map(Op::RemoveIfCompleted),
        k.clone().prop_map(Op::RemoveIfIncomplete),
        (k.clone(), any::<u32>()).prop_map(|(k, v)| Op::GetOrAddValue(k, v)),
        (k, any::<u32>()).prop_map(|(k, v)| Op::GetOrAddReady(k, v)),
        Just(Op::Len),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: if cfg!(miri) { 4 } else { 256 },
        // No regression files: they need the file system, which miri isolates.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn matches_a_sequential_model(ops in proptest::collection::vec(op(), 1..60)) {
        let map: DeferredMap<u8, u32, ()> = DeferredMap::new();
        // None: present and pending; Some(v): present with v.
        let mut model: HashMap<u8, Option<u32>> = HashMap::new();
        // Handles taken with `cell`, which keep pending entries in place.
        let mut handles: Vec<Lazy<u32, ()>> = Vec::new();
        for op in ops {
            match op.clone() {
                Op::AddValue(k, v) => {
                    let expect = match model.get(&k) {
                        None | Some(None) => { model.insert(k, Some(v)); true }
                        Some(Some(_)) => false,
                    };
                    prop_assert_eq!(map.add_value(k, v), expect);
                }
                Op::Remove(k) => {
                    prop_assert_eq!(map.remove(&k).is_some(), model.remove(&k).is_some());
                }
                Op::TryGet(k) => {
                    let expect = model.get(&k).copied().flatten().map(Ok::<u32, Error<()>>);
                    prop_assert_eq!(map.try_get(&k), expect);
                }
                Op::IsCompleted(k) => {
                    prop_assert_eq!(map.is_completed(&k), model.get(&k).map(Option::is_some));
                }
                Op::TakeCell(k) => {
                    handles.push(map.cell(k));
                    model.entry(k).or_insert(None);
                }
                Op::Complete(k, v) => {
                    let expect = matches!(model.get(&k), Some(None));
                    if expect { model.insert(k, Some(v)); }
                    prop_assert_eq!(map.complete(&k, Ok(v)), expect);
                }
                Op::RemoveIfCompleted(k) => {
                    let expect = model.get(&k).map(Option::is_some);
                    if expect == Some(true) { model.remove(&k); }
                    prop_assert_eq!(map.remove_if_completed(&k), expect);
                }
                Op::RemoveIfIncomplete(k) => {
                    let expect = model.get(&k).map(Option::is_none);
                    if expect == Some(true) { model.remove(&k); }
                    prop_assert_eq!(map.remove_if_incomplete(&k), expect);
                }
                Op::GetOrAddValue(k, v) | Op::GetOrAddReady(k, v) => {
                    let polled = match op {
                        Op::GetOrAddValue(..) => poll_once(map.get_or_add_value(k, v)),
                        _ => poll_once(map.get_or_add_with(k, move || async move { Ok(v) })),
                    };
                    match model.get(&k).copied() {
                        None => {
                            model.insert(k, Some(v));
                            prop_assert_eq!(polled, Poll::Ready(Ok(v)));
                        }
                        Some(Some(old)) => prop_assert_eq!(polled, Poll::Ready(Ok(old))),
                        Some(None) => prop_assert!(polled.is_pending()),
                    }
                }
                Op::Len => prop_assert_eq!(map.len(), model.len()),
            }
        }
    }
}
