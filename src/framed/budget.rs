//! A byte budget shared by many frame buffers: what every connection together may hold of
//! frames still arriving.
//!
//! Per-connection limits do not bound the process: a hundred connections each sending a frame of
//! just under 16 MiB, and never its last byte, held 1.6 GiB. Each [`super::FrameBuffer`] given a
//! budget takes from it before its storage grows past a small free allowance, and gives back when
//! the storage goes; one that cannot take what it needs fails its read instead of growing.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Bytes of storage a buffer may hold without taking from the budget: enough for the calls a
/// gateway usually sends, so those never touch the shared counter. Outside the budget, so
/// `connections × FREE_ALLOWANCE` comes on top of it.
pub const FREE_ALLOWANCE: usize = 16 * 1024;

/// A shared budget of bytes; clones share it.
#[derive(Clone, Debug)]
pub struct ByteBudget(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    limit: usize,
    used: AtomicUsize,
}

impl ByteBudget {
    pub fn new(limit: usize) -> ByteBudget {
        ByteBudget(Arc::new(Inner {
            limit,
            used: AtomicUsize::new(0),
        }))
    }

    pub fn limit(&self) -> usize {
        self.0.limit
    }

    /// Bytes taken now.
    pub fn used(&self) -> usize {
        self.0.used.load(Ordering::Relaxed)
    }

    /// Takes `n` bytes if that stays within the limit.
    pub(super) fn try_take(&self, n: usize) -> bool {
        self.0
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(n).filter(|&u| u <= self.0.limit)
            })
            .is_ok()
    }

    pub(super) fn give_back(&self, n: usize) {
        self.0.used.fetch_sub(n, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_only_within_the_limit_and_shares_it() {
        let a = ByteBudget::new(100);
        let b = a.clone();
        assert!(a.try_take(60));
        assert!(!b.try_take(41), "over the limit: nothing taken");
        assert!(b.try_take(40));
        assert_eq!(a.used(), 100);
        a.give_back(60);
        assert!(b.try_take(60));
        assert!(!a.try_take(usize::MAX), "no overflow");
    }
}
