//! Conf tokens → prepared chains (docs/protocol.md §6).
//!
//! * Tokens are non-zero, start at a random value (a gateway that outlived a runner restart must
//!   not hit another route's chain with an old token) and count up, so none is reused within a
//!   process until 2^32 prepares.
//! * The same key returns the same token while its chain is cached (gateway workers each
//!   prepare the same route).
//! * A chain is kept for `ttl` after its last use, and the cache holds at most `capacity`
//!   chains, dropping the least recently used first. Either way a forgotten token answers
//!   CONF_TOKEN_NOT_FOUND and the gateway prepares again.
//!
//! Lookups, which every request makes, lock one of several shards briefly; the key index is
//! only touched by `prepare_conf`, which the gateway serializes anyway.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use lru::LruCache;

use ext_plugin_sdk::Chain;
use ext_plugin_sdk::Text;

const SHARDS: usize = 16;

struct Entry {
    chain: Arc<Chain>,
    key: Text,
    last_used: Instant,
}

pub(crate) struct ConfCache {
    shards: Box<[Mutex<LruCache<u32, Entry>>]>,
    keys: Mutex<HashMap<Text, u32>>,
    next_token: AtomicU32,
    ttl: Duration,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a cache lock cannot leave an entry half-written (every critical
    // section is one map operation), so a poisoned lock is still consistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ConfCache {
    pub(crate) fn new(capacity: usize, ttl: Duration) -> ConfCache {
        // The shards' capacities add up to exactly `capacity` (at least 1), so the configured
        // bound is the real one: fewer shards when the capacity is below SHARDS.
        let capacity = capacity.max(1);
        let shards = SHARDS.min(capacity);
        let shard_capacity = |i: usize| {
            let n = capacity / shards + usize::from(i < capacity % shards);
            NonZeroUsize::new(n).expect("capacity >= shards, so every shard gets one")
        };
        let mut seed = [0u8; 4];
        // Without OS randomness, fall back to the clock: still differs across restarts.
        if getrandom::fill(&mut seed).is_err() {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos() ^ d.as_secs() as u32)
                .unwrap_or(1);
            seed = nanos.to_le_bytes();
        }
        ConfCache {
            shards: (0..shards)
                .map(|i| Mutex::new(LruCache::new(shard_capacity(i))))
                .collect(),
            keys: Mutex::new(HashMap::new()),
            next_token: AtomicU32::new(u32::from_le_bytes(seed)),
            ttl,
        }
    }

    fn shard(&self, token: u32) -> &Mutex<LruCache<u32, Entry>> {
        &self.shards[token as usize % self.shards.len()]
    }

    fn new_token(&self) -> u32 {
        loop {
            let t = self.next_token.fetch_add(1, Ordering::Relaxed);
            if t != 0 {
                return t;
            }
        }
    }

    /// The chain for `token`, marking it used; `None` if unknown or expired.
    pub(crate) fn get(&self, token: u32) -> Option<Arc<Chain>> {
        self.get_at(token, Instant::now())
    }

    fn get_at(&self, token: u32, now: Instant) -> Option<Arc<Chain>> {
        let mut shard = lock(self.shard(token));
        let entry = shard.get_mut(&token)?;
        if now.duration_since(entry.last_used) > self.ttl {
            return None;
        }
        entry.last_used = now;
        Some(entry.chain.clone())
    }

    /// The token for `key`: the cached one, or a new one for the chain `build` makes.
    pub(crate) fn prepare<E>(
        &self,
        key: &Text,
        build: impl FnOnce() -> Result<Chain, E>,
    ) -> Result<u32, E> {
        self.prepare_at(key, Instant::now(), build)
    }

    fn prepare_at<E>(
        &self,
        key: &Text,
        now: Instant,
        build: impl FnOnce() -> Result<Chain, E>,
    ) -> Result<u32, E> {
        let mut keys = lock(&self.keys);
        self.sweep_expired(&mut keys, now);
        if let Some(&token) = keys.get(key) {
            if self.get_at(token, now).is_some() {
                return Ok(token);
            }
            keys.remove(key);
        }
        let chain = Arc::new(build()?);
        // The key arrives as a slice of the frame it came in: a copy, so the cache does not pin
        // the connection's whole read buffer for as long as the conf lives.
        let key = Text::from(key.as_str().to_owned());
        let token = self.new_token();
        let entry = Entry {
            chain,
            key: key.clone(),
            last_used: now,
        };
        let evicted = lock(self.shard(token)).push(token, entry);
        if let Some((old_token, old)) = evicted {
            if old_token != token && keys.get(&old.key) == Some(&old_token) {
                keys.remove(&old.key);
            }
        }
        // An empty key cannot be deduplicated: every prepare gets its own token.
        if !key.is_empty() {
            keys.insert(key.clone(), token);
        }
        Ok(token)
    }

    /// Drops expired chains. They sit at the least-recently-used end of each shard, so this
    /// only looks past the ones it removes.
    fn sweep_expired(&self, keys: &mut HashMap<Text, u32>, now: Instant) {
        for shard in self.shards.iter() {
            let mut shard = lock(shard);
            while let Some((&token, entry)) = shard.peek_lru() {
                if now.duration_since(entry.last_used) <= self.ttl {
                    break;
                }
                if keys.get(&entry.key) == Some(&token) {
                    keys.remove(&entry.key);
                }
                shard.pop_lru();
            }
        }
    }

    /// Cached chains (expired ones not yet swept included).
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(key: &str) -> Result<Chain, ()> {
        let empty = ext_plugin_sdk::harness::prepare_request(key, &[]);
        Ok(ext_plugin_sdk::Registry::new()
            .build_chain(&empty, &ext_plugin_sdk::host::StateRegistry::default())
            .expect("an empty chain always prepares"))
    }

    fn prep(cache: &ConfCache, key: &str) -> u32 {
        cache
            .prepare(&Text::from(key.to_owned()), || chain(key))
            .unwrap()
    }

    #[test]
    fn same_key_same_token_and_tokens_are_nonzero() {
        let cache = ConfCache::new(100, Duration::from_secs(60));
        let a = prep(&cache, "route#1#ext-plugin-pre-req#1");
        let b = prep(&cache, "route#2#ext-plugin-pre-req#1");
        assert_ne!(a, 0);
        assert_ne!(a, b);
        assert_eq!(prep(&cache, "route#1#ext-plugin-pre-req#1"), a);
        assert_eq!(cache.get(a).unwrap().key(), "route#1#ext-plugin-pre-req#1");
        assert!(cache.get(a.wrapping_add(1000)).is_none());
    }

    #[test]
    fn tokens_start_randomly() {
        let first: Vec<u32> = (0..4)
            .map(|_| prep(&ConfCache::new(10, Duration::from_secs(60)), "k"))
            .collect();
        assert!(
            first.windows(2).any(|w| w[0] != w[1]),
            "four caches all started at {}",
            first[0]
        );
    }

    #[test]
    fn expiry_counts_from_last_use_and_forgotten_keys_get_new_tokens() {
        let ttl = Duration::from_secs(100);
        let cache = ConfCache::new(100, ttl);
        let t0 = Instant::now();
        let k = Text::from("k");
        let t = cache.prepare_at(&k, t0, || chain("k")).unwrap();
        let used = t0 + Duration::from_secs(90);
        assert!(cache.get_at(t, used).is_some());
        assert!(
            cache.get_at(t, used + ttl).is_some(),
            "a use restarts the expiry"
        );
        let late = used + ttl + ttl + Duration::from_secs(1);
        assert!(
            cache.get_at(t, late).is_none(),
            "expired token still answers"
        );
        let t2 = cache.prepare_at(&k, late, || chain("k")).unwrap();
        assert_ne!(t2, t);
        assert_eq!(cache.len(), 1, "the expired chain was swept");
    }

    #[test]
    fn capacity_evicts_least_recently_used_and_its_key() {
        let cache = ConfCache::new(SHARDS, Duration::from_secs(60));
        let tokens: Vec<u32> = (0..10 * SHARDS)
            .map(|i| prep(&cache, &i.to_string()))
            .collect();
        assert!(cache.len() <= SHARDS);
        assert!(cache.get(tokens[0]).is_none());
        assert!(cache.get(*tokens.last().unwrap()).is_some());
        assert!(
            lock(&cache.keys).len() <= SHARDS,
            "evicted keys are dropped too"
        );
        // An evicted key prepares again, under a fresh token.
        assert_ne!(prep(&cache, "0"), tokens[0]);
    }

    #[test]
    fn cached_keys_do_not_keep_the_frame_they_came_in() {
        let cache = ConfCache::new(10, Duration::from_secs(60));
        let frame = bytes::Bytes::from(b"....route#1#ext-plugin-pre-req#1....".to_vec());
        let key = Text::slice_lossy(&frame, &frame[4..frame.len() - 4]);
        cache.prepare(&key, || chain("k")).unwrap();
        drop(key);
        assert!(
            frame.is_unique(),
            "a cached key still shares the frame's storage"
        );
    }

    #[test]
    fn the_capacity_is_exact_whatever_it_is() {
        for capacity in [1, 5, SHARDS - 1, SHARDS + 3, 100] {
            let cache = ConfCache::new(capacity, Duration::from_secs(60));
            for i in 0..3 * capacity + SHARDS {
                prep(&cache, &i.to_string());
            }
            assert_eq!(cache.len(), capacity, "capacity {capacity}");
            assert!(lock(&cache.keys).len() <= capacity);
        }
    }

    #[test]
    fn failed_builds_leave_nothing_behind() {
        let cache = ConfCache::new(10, Duration::from_secs(60));
        assert_eq!(
            cache.prepare(&Text::from("k"), || Err::<Chain, _>("bad")),
            Err("bad")
        );
        assert_eq!(cache.len(), 0);
    }
}
