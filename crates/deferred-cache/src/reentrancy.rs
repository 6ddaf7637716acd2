//! Which loads the current thread is inside of, to turn a loader awaiting its own key into
//! an error instead of a deadlock.
//!
//! A cache future pushes its cell's address here for the duration of each poll that may
//! drive the cell's load. Code that runs inside that poll is the load itself (the map's
//! future polls nothing else), so a cache future that finds its own cell here was created
//! by the load it waits for.

use std::cell::RefCell;

#[cfg(not(loom))]
std::thread_local! {
    static INSIDE: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
}

// loom's `thread_local!` takes no `const` block.
#[cfg(loom)]
loom::thread_local! {
    static INSIDE: RefCell<Vec<usize>> = RefCell::new(Vec::new());
}

/// Whether this thread is inside a poll of the load of cell `id`.
pub(crate) fn is_inside(id: usize) -> bool {
    INSIDE
        .try_with(|inside| inside.borrow().contains(&id))
        .unwrap_or(false)
}

/// Marks this thread as inside a poll of the load of cell `id` until the guard is dropped
/// (also when the poll unwinds).
pub(crate) fn enter(id: usize) -> Inside {
    let _ = INSIDE.try_with(|inside| inside.borrow_mut().push(id));
    Inside(id)
}

/// See [`enter`].
pub(crate) struct Inside(usize);

impl Drop for Inside {
    fn drop(&mut self) {
        let id = self.0;
        let _ = INSIDE.try_with(|inside| {
            let mut inside = inside.borrow_mut();
            if let Some(at) = inside.iter().rposition(|&i| i == id) {
                inside.remove(at);
            }
        });
    }
}
