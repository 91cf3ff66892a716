//! Per-thread pools of the storage a connection needs only while it serves a call.
//!
//! A gateway keeps its connections to the runner open long after their last call (keepalive
//! pools, thousands of connections). The storage a call needs (the read buffer, the decoded
//! messages, the call state) is reused from call to call so steady traffic does not allocate;
//! but held by each idle connection, a few KiB each add up to more than the rest of the runner.
//! So a connection about to wait for its next call gives that storage to its thread's pool, and
//! takes some back when the call comes: idle connections hold none, and a busy one gets back
//! what it (or another connection of its thread) just gave, without allocating.
//!
//! Per thread, so lending and taking back touch no shared state; a connection's task usually
//! gives and takes on the thread that polls it. A pool keeps a bounded number of items and
//! drops the rest, so it never holds more than a burst of calls needed.

use std::cell::RefCell;
use std::thread::LocalKey;

/// Items lent out and given back on one thread (a `thread_local!`).
pub(crate) struct Pool<T> {
    items: RefCell<Vec<T>>,
    cap: usize,
}

impl<T> Pool<T> {
    /// A pool that keeps at most `cap` items.
    pub(crate) const fn new(cap: usize) -> Pool<T> {
        Pool {
            items: RefCell::new(Vec::new()),
            cap,
        }
    }

    /// The item given back last, if any.
    pub(crate) fn take(&self) -> Option<T> {
        self.items.borrow_mut().pop()
    }

    /// Keeps `item` for the next [`Pool::take`], unless the pool is full (then it is dropped).
    pub(crate) fn give(&self, item: T) {
        let mut items = self.items.borrow_mut();
        if items.len() < self.cap {
            items.push(item);
            return;
        }
        // Dropped after the borrow ends: an item's destructor may use another pool.
        drop(items);
        drop(item);
    }

    /// [`Pool::take`] from the thread's pool `key`; `None` also while the thread tears down its
    /// thread-locals (the caller then makes new storage).
    pub(crate) fn take_from(key: &'static LocalKey<Pool<T>>) -> Option<T> {
        key.try_with(Pool::take).ok().flatten()
    }

    /// [`Pool::give`] to the thread's pool `key`; while the thread tears down its thread-locals
    /// the item is just dropped.
    pub(crate) fn give_to(key: &'static LocalKey<Pool<T>>, item: T) {
        let _ = key.try_with(|pool| pool.give(item));
    }

    /// Items kept, for tests.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.items.borrow().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_item_given_comes_back_first_and_a_full_pool_drops() {
        let pool = Pool::new(2);
        assert_eq!(pool.take(), None::<u8>);
        for item in 1..=3 {
            pool.give(item);
        }
        assert_eq!(pool.len(), 2, "the third was dropped");
        assert_eq!(pool.take(), Some(2));
        assert_eq!(pool.take(), Some(1));
        assert_eq!(pool.take(), None);
    }
}
