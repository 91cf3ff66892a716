//! A bounded, sharded map from a request key (a client address, a consumer, ...) to its limiter
//! cell, shared by every connection.
//!
//! * Sharded: a key's shard is picked by hash, and a shard's lock is held only for the lookup,
//!   never across an `.await`; the cell itself is returned as an `Arc` (or used in place, under
//!   the shard's lock, by [`KeyedStore::with`]).
//! * Hashed once: the key's hash picks the shard and is stored in front of the key, where the
//!   shard's map reads it back instead of hashing the key again. The hash is the one the
//!   shards' maps always used (hashbrown's default, randomly seeded per store); picking the
//!   shard with SipHash besides cost ten times the map's own hash.
//! * Bounded: each shard holds at most its share of `max_keys`, evicting the least recently used.
//! * Swept: every lookup drops up to two least-recently-used entries idle for longer than `idle`
//!   that nobody else holds (a cell an in-flight request still holds, e.g. a limit-conn slot,
//!   stays), so idle keys do not linger until the capacity is reached.
//! * Bounded in bytes too: a key longer than [`MAX_KEY_LEN`] bytes (a client-chosen header
//!   value, say) is stored as its 128-bit SHA-256 prefix, so memory grows with the number of
//!   keys, not their length. Short keys stay as they are (no SHA-256 on the common path).

use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};

use ext_plugin_sdk::PrepareEnv;
use lru::{DefaultHasher, LruCache};
use sha2::{Digest, Sha256};

const SHARDS: usize = 16;
/// Idle entries dropped per lookup: enough to keep up with churn, small enough to stay cheap.
const SWEEP_PER_LOOKUP: usize = 2;

/// The default of the `max_keys` *(ext)* field.
pub const DEFAULT_MAX_KEYS: usize = 100_000;

/// Keys up to this length are stored as they are; longer ones as a hash.
pub const MAX_KEY_LEN: usize = 64;
/// A hashed key: a marker byte that never starts valid UTF-8 (so no short key can equal it),
/// then 16 bytes of SHA-256: collisions are out of reach of any client (2^64 work).
const HASHED_LEN: usize = 17;
const HASHED_MARK: u8 = 0xff;
/// The key's hash, little-endian, in front of its stored bytes.
const HASH_LEN: usize = 8;

pub struct KeyedStore<V> {
    /// `None` until the shard's first key: a route's limiter that sees few keys (or none yet)
    /// stays small, which matters with thousands of routes prepared.
    shards: Box<[Mutex<Option<Shard<V>>>]>,
    /// Seeded per store: clients cannot tell which keys collide.
    hasher: DefaultHasher,
    per_shard: usize,
    idle: u64,
}

/// Keys are stored as [`StoredKey`]s: their hash, then their bytes.
type Shard<V> = LruCache<Box<[u8]>, Entry<V>, Prehashed>;

struct Entry<V> {
    last_used: u64,
    value: Arc<V>,
}

impl<V> KeyedStore<V> {
    /// A store of at most about `max_keys` keys; entries unused for `idle` nanoseconds go.
    pub fn new(max_keys: usize, idle: u64) -> KeyedStore<V> {
        KeyedStore {
            shards: (0..SHARDS).map(|_| Mutex::new(None)).collect(),
            hasher: DefaultHasher::default(),
            per_shard: max_keys.div_ceil(SHARDS).max(1),
            idle,
        }
    }

    /// The cell for `key`, created by `init` when absent.
    pub fn get_or_insert(&self, key: &str, now: u64, init: impl FnOnce() -> V) -> Arc<V> {
        self.with(key, now, init, Arc::clone)
    }

    /// `f` of the cell for `key` (created by `init` when absent), run under the shard's lock:
    /// for a short update that needs no reference to the cell afterwards (no reference count
    /// taken and dropped). `f` must not use this store.
    pub fn with<R>(
        &self,
        key: &str,
        now: u64,
        init: impl FnOnce() -> V,
        f: impl FnOnce(&Arc<V>) -> R,
    ) -> R {
        let key = self.stored(key);
        let mut guard = self.shard(&key);
        // Unbounded LRUs capped by hand: a bounded LruCache preallocates its full capacity.
        let shard = guard.get_or_insert_with(|| LruCache::unbounded_with_hasher(Prehashed));
        self.sweep(shard, now);
        if let Some(e) = shard.get_mut(key.bytes()) {
            e.last_used = now;
            return f(&e.value);
        }
        let value = Arc::new(init());
        let answer = f(&value);
        shard.push(
            Box::from(key.bytes()),
            Entry {
                last_used: now,
                value,
            },
        );
        while shard.len() > self.per_shard {
            shard.pop_lru();
        }
        answer
    }

    /// The cell for `key` if it exists, without creating or touching it.
    pub fn get(&self, key: &str) -> Option<Arc<V>> {
        let key = self.stored(key);
        self.shard(&key)
            .as_ref()?
            .peek(key.bytes())
            .map(|e| e.value.clone())
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

    /// Bytes the keys take, as given or hashed (tests and diagnostics; the hash in front of
    /// each is not counted).
    pub fn key_bytes(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                lock(s)
                    .as_ref()
                    .map_or(0, |s| s.iter().map(|(k, _)| k.len() - HASH_LEN).sum())
            })
            .sum()
    }

    fn stored(&self, key: &str) -> StoredKey {
        let mut stored = StoredKey {
            buf: [0; HASH_LEN + MAX_KEY_LEN],
            len: HASH_LEN,
        };
        if key.len() <= MAX_KEY_LEN {
            stored.push(key.as_bytes());
        } else {
            stored.push(&[HASHED_MARK]);
            stored.push(&Sha256::digest(key.as_bytes())[..HASHED_LEN - 1]);
        }
        let hash = self.hasher.hash_one(&stored.buf[HASH_LEN..stored.len]);
        stored.buf[..HASH_LEN].copy_from_slice(&hash.to_le_bytes());
        stored
    }

    fn shard(&self, key: &StoredKey) -> MutexGuard<'_, Option<Shard<V>>> {
        // Bits the shard's own table does not use: it takes its bucket from the low bits and
        // its tag from the top seven, and every key of a shard sharing low bits would crowd
        // a fraction of its buckets.
        let i = (key.hash() >> 48) as usize % SHARDS;
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

/// A key as the store keeps it, on the stack: its hash, then its bytes or the hash of a long
/// one.
struct StoredKey {
    buf: [u8; HASH_LEN + MAX_KEY_LEN],
    len: usize,
}

impl StoredKey {
    fn push(&mut self, bytes: &[u8]) {
        self.buf[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    fn hash(&self) -> u64 {
        prefix(&self.buf)
    }
}

/// The hash a [`StoredKey`] carries.
fn prefix(bytes: &[u8]) -> u64 {
    bytes
        .first_chunk::<HASH_LEN>()
        .map_or(0, |h| u64::from_le_bytes(*h))
}

/// The shards' hasher: a stored key's hash is its first eight bytes. A byte slice hashes as its
/// length (`write_usize`, ignored here) then all its bytes in one `write`
/// (`stored_keys_hash_to_their_prefix` checks it holds).
#[derive(Clone, Copy, Default)]
struct Prehashed;

#[derive(Default)]
struct PrehashedHasher(u64);

impl BuildHasher for Prehashed {
    type Hasher = PrehashedHasher;

    fn build_hasher(&self) -> PrehashedHasher {
        PrehashedHasher(0)
    }
}

impl Hasher for PrehashedHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0 = prefix(bytes);
    }

    fn write_usize(&mut self, _len: usize) {}

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Exports how many keys `owner`'s stores hold, as `limit_keys{route, plugin}`: read when the
/// metrics are scraped (nothing on the hot path), and gone with `owner`. State shared by a
/// `group` of routes is exported under `route="group:<name>"`, once.
pub fn export_key_count<T: Send + Sync + 'static>(
    env: &PrepareEnv<'_>,
    plugin: &'static str,
    group: Option<&str>,
    owner: &Arc<T>,
    count: fn(&T) -> i64,
) {
    let scope = match group {
        Some(g) => format!("group:{g}"),
        None => env.route().to_owned(),
    };
    env.metrics().sampled_gauge(
        "limit_keys",
        "Keys (clients, consumers, ...) a limiter tracks now; bounded by its conf's `max_keys`.",
        &[("route", &scope), ("plugin", plugin)],
        owner,
        count,
    );
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

    #[tokio::test]
    async fn limiters_export_how_many_keys_they_track() {
        use ext_plugin_sdk::harness::{request, Harness, LocalGateway};
        use ext_plugin_sdk::Method;

        let harness = Harness::with_metrics(crate::builtin());
        let mut chains = Vec::new();
        for (route, plugin, conf) in [
            (
                "route#c",
                "limit-count",
                r#"{"count": 10, "time_window": 60}"#,
            ),
            (
                "route#r",
                "limit-req",
                r#"{"rate": 10, "burst": 0, "nodelay": true}"#,
            ),
            (
                "route#n",
                "limit-conn",
                r#"{"conn": 10, "burst": 0, "default_conn_delay": 0.1}"#,
            ),
        ] {
            let key = format!("{route}#ext-plugin-pre-req#1");
            chains.push(harness.prepare(&key, &[(plugin, conf)]).unwrap());
            // A second chain of the same route and conf shares the state: counted once.
            chains.push(harness.prepare(&key, &[(plugin, conf)]).unwrap());
        }
        let mut gw = LocalGateway::new();
        for chain in &chains {
            for ip in ["192.0.2.1", "192.0.2.2"] {
                gw.call(chain, &request(Method::Get, "/").with_src_ip(ip))
                    .await
                    .unwrap();
            }
        }
        let snapshot = harness.metrics().snapshot();
        for (route, plugin) in [
            ("route#c", "limit-count"),
            ("route#r", "limit-req"),
            ("route#n", "limit-conn"),
        ] {
            let keys = snapshot.gauge("limit_keys", &[("route", route), ("plugin", plugin)]);
            assert_eq!(keys, Some(2), "{plugin}");
        }
        // A group shared by two routes is one store, counted once under the group.
        let group = r#"{"count": 10, "time_window": 60, "group": "g"}"#;
        for route in ["route#g1", "route#g2"] {
            let key = format!("{route}#ext-plugin-pre-req#1");
            let chain = harness.prepare(&key, &[("limit-count", group)]).unwrap();
            let ip = if route == "route#g1" {
                "192.0.2.1"
            } else {
                "192.0.2.2"
            };
            gw.call(&chain, &request(Method::Get, "/").with_src_ip(ip))
                .await
                .unwrap();
            chains.push(chain);
        }
        let snapshot = harness.metrics().snapshot();
        let keys =
            |route| snapshot.gauge("limit_keys", &[("route", route), ("plugin", "limit-count")]);
        assert_eq!(keys("group:g"), Some(2));
        assert_eq!(keys("route#g1"), None);
        drop(chains);
        let snapshot = harness.metrics().snapshot();
        assert_eq!(
            snapshot.gauge(
                "limit_keys",
                &[("route", "route#c"), ("plugin", "limit-count")]
            ),
            None,
            "gone with the state"
        );
    }

    #[test]
    fn long_keys_cost_a_hash_not_their_length() {
        let store: KeyedStore<u32> = KeyedStore::new(100_000, 1_000);
        let long = |i: usize| format!("{i:04096}");
        for i in 0..1000 {
            store.get_or_insert(&long(i), 0, || i as u32);
        }
        assert_eq!(store.len(), 1000, "distinct long keys stay distinct");
        assert!(
            store.key_bytes() <= 1000 * HASHED_LEN,
            "4 MiB of keys kept as {} bytes",
            store.key_bytes()
        );
        assert_eq!(
            *store.get(&long(7)).unwrap(),
            7,
            "the same long key finds its cell"
        );
        assert!(store.get(&format!("{:04095}x", 7)).is_none());
        // A short key is kept as it is, and no short key can take a hashed key's place.
        store.get_or_insert("short", 0, || 1);
        assert_eq!(store.key_bytes(), 1000 * HASHED_LEN + 5);
        let max_short = "k".repeat(MAX_KEY_LEN);
        assert_eq!(*store.get_or_insert(&max_short, 0, || 9), 9);
        assert!(store.get(&(max_short + "k")).is_none());
    }

    #[test]
    fn stored_keys_hash_to_their_prefix() {
        let store: KeyedStore<u32> = KeyedStore::new(32, 1_000);
        for key in ["", "10.0.0.1", &"x".repeat(MAX_KEY_LEN), &"y".repeat(4096)] {
            let stored = store.stored(key);
            let prehashed = Prehashed.hash_one(stored.bytes());
            assert_eq!(prehashed, stored.hash(), "{key:?}");
            assert_eq!(
                prehashed,
                store.hasher.hash_one(&stored.bytes()[HASH_LEN..])
            );
            // As the map hashes a stored key it looks up (a boxed slice borrowed as a slice).
            let boxed: Box<[u8]> = Box::from(stored.bytes());
            assert_eq!(Prehashed.hash_one(&boxed), prehashed);
        }
    }

    #[test]
    fn keys_spread_over_shards_and_buckets() {
        let store: KeyedStore<u32> = KeyedStore::new(100_000, 1_000);
        let mut per_shard = [0usize; SHARDS];
        let mut low_bits = std::collections::HashSet::new();
        for i in 0..1000 {
            let stored = store.stored(&format!("10.0.{}.{}", i / 256, i % 256));
            per_shard[(stored.hash() >> 48) as usize % SHARDS] += 1;
            low_bits.insert(stored.hash() & 0xff);
        }
        // 1000 keys over 16 shards: about 62 each; a broken hash puts them all in one.
        assert!(per_shard.iter().all(|&n| n > 20), "{per_shard:?}");
        assert!(low_bits.len() > 200, "{} of 256 low bytes", low_bits.len());
    }

    #[test]
    fn with_updates_the_cell_in_place() {
        let store: KeyedStore<std::sync::atomic::AtomicU32> = KeyedStore::new(32, 1_000);
        let bump = |c: &Arc<std::sync::atomic::AtomicU32>| {
            c.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1
        };
        assert_eq!(store.with("a", 1, Default::default, bump), 1);
        assert_eq!(store.with("a", 2, Default::default, bump), 2);
        assert_eq!(store.with("b", 2, Default::default, bump), 1);
        assert_eq!(store.len(), 2);
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
