//! A bounded, sharded map from a request key (a client address, a consumer, ...) to its limiter
//! cell, shared by every connection.
//!
//! * Sharded: a key's shard is picked by hash, and a shard's lock is held only for the lookup,
//!   never across an `.await`; the cell itself is returned as an `Arc`.
//! * Bounded: each shard holds at most its share of `max_keys`, evicting the least recently used.
//! * Swept: every lookup drops up to two least-recently-used entries idle for longer than `idle`
//!   that nobody else holds (a cell an in-flight request still holds, e.g. a limit-conn slot,
//!   stays), so idle keys do not linger until the capacity is reached.

use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, MutexGuard};

use lru::LruCache;

const SHARDS: usize = 16;
/// Idle entries dropped per lookup: enough to keep up with churn, small enough to stay cheap.
const SWEEP_PER_LOOKUP: usize = 2;

/// The default of the `max_keys` *(ext)* field.
pub const DEFAULT_MAX_KEYS: usize = 100_000;

pub struct KeyedStore<V> {
    /// `None` until the shard's first key: a route's limiter that sees few keys (or none yet)
    /// stays small, which matters with thousands of routes prepared.
    shards: Box<[Mutex<Option<Shard<V>>>]>,
    hasher: RandomState,
    per_shard: usize,
    idle: u64,
}

type Shard<V> = LruCache<Box<str>, Entry<V>>;

struct Entry<V> {
    last_used: u64,
    value: Arc<V>,
}

impl<V> KeyedStore<V> {
    /// A store of at most about `max_keys` keys; entries unused for `idle` nanoseconds go.
    pub fn new(max_keys: usize, idle: u64) -> KeyedStore<V> {
        KeyedStore {
            shards: (0..SHARDS).map(|_| Mutex::new(None)).collect(),
            hasher: RandomState::new(),
            per_shard: max_keys.div_ceil(SHARDS).max(1),
            idle,
        }
    }

    /// The cell for `key`, created by `init` when absent.
    pub fn get_or_insert(&self, key: &str, now: u64, init: impl FnOnce() -> V) -> Arc<V> {
        let mut guard = self.shard(key);
        // Unbounded LRUs capped by hand: a bounded LruCache preallocates its full capacity.
        let shard = guard.get_or_insert_with(LruCache::unbounded);
        self.sweep(shard, now);
        if let Some(e) = shard.get_mut(key) {
            e.last_used = now;
            return e.value.clone();
        }
        let value = Arc::new(init());
        shard.push(
            key.into(),
            Entry {
                last_used: now,
                value: value.clone(),
            },
        );
        while shard.len() > self.per_shard {
            shard.pop_lru();
        }
        value
    }

    /// The cell for `key` if it exists, without creating or touching it.
    pub fn get(&self, key: &str) -> Option<Arc<V>> {
        self.shard(key).as_ref()?.peek(key).map(|e| e.value.clone())
    }

    /// Every key in the store (tests and diagnostics).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| lock(s).as_ref().map_or(0, LruCache::len))
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn shard(&self, key: &str) -> MutexGuard<'_, Option<Shard<V>>> {
        let i = self.hasher.hash_one(key) as usize % SHARDS;
        lock(&self.shards[i])
    }

    fn sweep(&self, shard: &mut Shard<V>, now: u64) {
        for _ in 0..SWEEP_PER_LOOKUP {
            let idle = shard
                .peek_lru()
                .is_some_and(|(_, e)| now.saturating_sub(e.last_used) > self.idle);
            if !idle {
                break;
            }
            if let Some((key, entry)) = shard.pop_lru() {
                // Still held (an in-flight request): requeue it at the front so it does not
                // block the sweep of the entries behind it.
                if Arc::strong_count(&entry.value) > 1 {
                    shard.push(key, entry);
                }
            }
        }
    }
}

/// Locks a mutex, ignoring poisoning: the data under these locks is plain counters that a
/// panicking holder cannot leave half-updated in a way worse than a lost update.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_a_cell_and_the_store_stays_bounded() {
        let store: KeyedStore<u32> = KeyedStore::new(32, 1_000);
        let a = store.get_or_insert("a", 1, || 1);
        assert!(Arc::ptr_eq(&a, &store.get_or_insert("a", 2, || 2)));
        for i in 0..1000 {
            store.get_or_insert(&format!("k{i}"), 3, || 0);
        }
        assert!(store.len() <= 32 + SHARDS, "bounded: {}", store.len());
    }

    #[test]
    fn idle_unheld_keys_are_swept() {
        let store: KeyedStore<u32> = KeyedStore::new(1000, 10);
        let held = store.get_or_insert("held", 0, || 0);
        store.get_or_insert("idle", 0, || 0);
        // Touch every shard long after: both old keys are idle, only the unheld one may go.
        for i in 0..200 {
            store.get_or_insert(&format!("n{i}"), 100, || 0);
        }
        assert!(store.get("idle").is_none());
        assert!(store.get("held").is_some());
        drop(held);
    }
}
