//! Storage a connection holds while it serves a call, and lends to its thread's pool
//! ([`crate::pool`]) while it waits for the next one.

use std::thread::LocalKey;

use crate::pool::Pool;

pub(super) struct Lent<T: 'static> {
    item: Option<Box<T>>,
    pool: &'static LocalKey<Pool<Box<T>>>,
}

impl<T: Default> Lent<T> {
    /// Nothing held yet: the first [`Lent::get`] takes from `pool`.
    pub(super) fn new(pool: &'static LocalKey<Pool<Box<T>>>) -> Lent<T> {
        Lent { item: None, pool }
    }

    /// The storage, taken from the pool (or made) if it was lent out.
    pub(super) fn get(&mut self) -> &mut T {
        let pool = self.pool;
        self.item
            .get_or_insert_with(|| Pool::take_from(pool).unwrap_or_default())
    }

    /// Lends the storage to the pool. It must be as the next call expects to find it (what a
    /// call left in it cleared): another connection of the thread may take it.
    pub(super) fn park(&mut self) {
        if let Some(item) = self.item.take() {
            Pool::give_to(self.pool, item);
        }
    }

    /// True while the storage is lent out.
    #[cfg(test)]
    pub(super) fn is_parked(&self) -> bool {
        self.item.is_none()
    }
}
