//! Lookups and removals by a borrowed form of the key (`&str` for `String` keys, `&[u8]` for
//! `Vec<u8>` keys): every call that takes `&Q` finds, and only finds, the entry stored under
//! the owned key that borrows as it.

#![allow(clippy::std_instead_of_core)] // tests run on std; `core::` paths matter in the library only.

use std::{future::Future, pin::pin, task::Context};

use deferred_map::{DeferredMap, Error, Lazy};
use futures::{executor::block_on, task::noop_waker};

type Names = DeferredMap<String, u32, String>;

fn names() -> Names {
    let map = Names::new();
    map.add_value("ada".to_string(), 1);
    map
}

#[test]
fn probes_take_a_str_on_a_string_map() {
    let map = names();
    let (ada, grace): (&str, &str) = ("ada", "grace");
    assert_eq!(map.try_get(ada), Some(Ok(1)));
    assert_eq!(map.try_get(grace), None);
    assert_eq!(
        map.try_get_with(ada, |o| o.map(|v| v + 1).ok()),
        Some(Some(2))
    );
    assert_eq!(map.try_get_with(grace, |_| ()), None);
    assert_eq!(map.is_completed(ada), Some(true));
    assert_eq!(map.is_completed(grace), None);
    assert_eq!(map.cell_if_present(ada).unwrap().get(), Some(&1));
    assert!(map.cell_if_present(grace).is_none());
    assert_eq!(block_on(map.wait_if_present(ada).unwrap()), Ok(1));
    assert!(map.wait_if_present(grace).is_none());
    // None of these added or removed anything.
    assert_eq!(map.keys(), vec!["ada".to_string()]);
}

#[test]
fn wait_if_present_by_str_waits_on_a_pending_entry() {
    let map = Names::new();
    let cell = map.cell("job".to_string());
    let mut get = pin!(map.wait_if_present("job").unwrap());
    assert!(get
        .as_mut()
        .poll(&mut Context::from_waker(&noop_waker()))
        .is_pending());
    cell.succeed(5).unwrap();
    assert_eq!(block_on(get), Ok(5));
}

#[test]
fn complete_by_str_resolves_a_wait_on_the_owned_key() {
    let map = Names::new();
    let waiting = map.wait("job".to_string());
    assert!(!map.complete("other", Ok(1)));
    assert!(map.complete("job", Err("down".to_string())));
    assert!(!map.complete("job", Ok(2)), "complete twice");
    assert_eq!(block_on(waiting), Err(Error::Failed("down".to_string())));
}

#[test]
fn removals_take_a_str_on_a_string_map() {
    let map = names();
    assert!(map.remove("grace").is_none());
    assert_eq!(map.remove("ada").unwrap().get(), Some(&1));
    assert!(map.is_empty());

    map.add_value("a".to_string(), 1);
    assert!(map.remove_if("a", |c| c.get() == Some(&2)).is_none());
    assert!(map.remove_if("a", |c| c.get() == Some(&1)).is_some());
    assert!(map.remove_if("a", |_| true).is_none());

    map.add_value("done".to_string(), 1);
    let _pending = map.cell("pending".to_string());
    assert_eq!(map.remove_if_completed("pending"), Some(false));
    assert_eq!(map.remove_if_completed("done"), Some(true));
    assert_eq!(map.remove_if_completed("done"), None);
    assert_eq!(map.remove_if_incomplete("pending"), Some(true));
    assert_eq!(map.remove_if_incomplete("pending"), None);
    assert!(map.is_empty());
}

#[test]
fn replace_if_by_str_swaps_the_cell_and_keeps_the_key() {
    let map = names();
    assert!(map
        .replace_if("grace", Lazy::ready(9), |_| true)
        .is_err_and(|given| given.get() == Some(&9)));
    assert!(map.replace_if("ada", Lazy::ready(9), |_| false).is_err());
    let old = map.replace_if("ada", Lazy::ready(2), |_| true).unwrap();
    assert_eq!(old.get(), Some(&1));
    assert_eq!(map.try_get("ada"), Some(Ok(2)));
    assert_eq!(map.keys(), vec!["ada".to_string()]);
}

#[test]
fn a_placeholder_removed_or_replaced_by_str_still_resolves_its_waiters() {
    let map = Names::new();
    let removed = map.wait("gone".to_string());
    let replaced = map.wait("moved".to_string());
    assert!(map.remove("gone").is_some());
    assert!(map.replace_if("moved", Lazy::ready(3), |_| true).is_ok());
    assert_eq!(block_on(removed), Err(Error::Cancelled));
    assert_eq!(block_on(replaced), Ok(3));
}

/// The hash of a `&str` must equal that of its `String` whatever shard the key lands in:
/// many keys, all found by `&str`, none of the absent ones found.
#[test]
fn every_key_is_found_by_its_borrowed_form_across_shards() {
    let map = DeferredMap::<String, usize>::new();
    assert!(map.shard_count() > 1);
    for i in 0..512 {
        map.add_value(format!("key-{i}"), i);
    }
    for i in 0..512 {
        let key = format!("key-{i}");
        assert_eq!(map.try_get(key.as_str()), Some(Ok(i)), "{key}");
        assert_eq!(map.is_completed(key.as_str()), Some(true), "{key}");
    }
    for i in 512..1024 {
        assert_eq!(map.try_get(format!("key-{i}").as_str()), None);
    }
    for i in (0..512).step_by(2) {
        assert!(map.remove(format!("key-{i}").as_str()).is_some());
    }
    assert_eq!(map.len(), 256);
    assert_eq!(map.try_get("key-1"), Some(Ok(1)));
    assert_eq!(map.try_get("key-2"), None);
}

#[test]
fn byte_vector_keys_are_read_by_slice() {
    let map = DeferredMap::<Vec<u8>, u8>::new();
    map.add_value(vec![1, 2, 3], 6);
    let key: &[u8] = &[1, 2, 3];
    assert_eq!(map.try_get(key), Some(Ok(6)));
    assert_eq!(map.try_get(&[1u8, 2][..]), None);
    assert_eq!(map.remove_if_completed(key), Some(true));
}

/// Code written before keys could be borrowed (passing `&K`) still compiles and works.
#[test]
fn the_owned_key_by_reference_still_works() {
    let map = names();
    let ada = "ada".to_string();
    assert_eq!(map.try_get(&ada), Some(Ok(1)));
    assert_eq!(map.try_get_with(&ada, |o| o.is_ok()), Some(true));
    assert_eq!(map.is_completed(&ada), Some(true));
    assert!(map.cell_if_present(&ada).is_some());
    assert!(map.wait_if_present(&ada).is_some());
    assert!(!map.complete(&ada, Ok(5)));
    assert!(map.replace_if(&ada, Lazy::ready(2), |_| true).is_ok());
    assert!(map.remove_if(&ada, |_| false).is_none());
    assert_eq!(map.remove_if_incomplete(&ada), Some(false));
    assert_eq!(map.remove_if_completed(&ada), Some(true));
    map.add_value(ada.clone(), 1);
    assert!(map.remove(&ada).is_some());

    let ints: DeferredMap<u8, u8> = DeferredMap::new();
    ints.add_value(1, 1);
    assert_eq!(ints.try_get(&1), Some(Ok(1)));
}
