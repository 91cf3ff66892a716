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
//! * A chain is built outside every lock and off the async workers (on tokio's blocking pool):
//!   a slow prepare (a consumers file, a large schema or regex set) holds up neither other
//!   prepares nor the calls the worker would serve meanwhile. Prepares of a key whose build is
//!   under way wait for that build and get its answer: one build per key, one token.
//!
//! Lookups, which every request makes, lock one of several shards briefly; the key index is
//! only touched by `prepare_conf`, and only briefly too.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use lru::LruCache;
use tokio::sync::watch;

use ext_plugin_sdk::{Chain, ChainError, Text};

const SHARDS: usize = 16;

struct Entry {
    chain: Arc<Chain>,
    key: Text,
    last_used: Instant,
}

/// Why a chain was not prepared.
#[derive(Clone, Debug, thiserror::Error)]
pub(crate) enum PrepareError {
    /// The conf is wrong: an unknown plugin, a conf a plugin refused.
    #[error(transparent)]
    Refused(#[from] ChainError),
    /// A plugin panicked in `prepare` (or the build was cut short by the runtime shutting down).
    #[error("a plugin panicked while preparing the chain")]
    Panicked,
}

type Outcome = Result<u32, PrepareError>;

/// What a key stands for in the index.
enum Slot {
    /// The token of the key's cached chain.
    Ready(u32),
    /// A build under way; prepares of the key wait for its outcome here.
    Building(watch::Sender<Option<Outcome>>),
}

/// What a prepare of a key must do.
enum Begin {
    Cached(u32),
    /// Wait for the build under way. The channel closes without an outcome when that build was
    /// abandoned; the waiter then starts over.
    Wait(watch::Receiver<Option<Outcome>>),
    /// Build the chain and [`Ticket::finish`] with the result.
    Build(Ticket),
}

pub(crate) struct ConfCache {
    shards: Box<[Mutex<LruCache<u32, Entry>>]>,
    keys: Mutex<HashMap<Text, Slot>>,
    next_token: AtomicU32,
    ttl: Duration,
    /// Chains dropped, for the metrics.
    pub(crate) evictions: crate::metrics::Evictions,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a cache lock cannot leave an entry half-written (every critical
    // section is a few map operations, and no plugin code runs under one), so a poisoned lock
    // is still consistent.
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
            evictions: Default::default(),
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

    /// The token for `key`: the cached one, the one a build under way for the key comes to, or
    /// a new one for the chain `build` makes. `build` runs on tokio's blocking pool, outside
    /// every lock; a panic in it is [`PrepareError::Panicked`]. Dropping the returned future
    /// (the connection going away) does not stop a build once started: its waiters still get
    /// its outcome, and the chain is cached.
    pub(crate) async fn prepare<F>(self: &Arc<Self>, key: &Text, build: F) -> Outcome
    where
        F: FnOnce() -> Result<Chain, ChainError> + Send + 'static,
    {
        loop {
            let mut building = match self.begin_at(key, Instant::now()) {
                Begin::Cached(token) => return Ok(token),
                Begin::Wait(outcome) => outcome,
                Begin::Build(ticket) => {
                    let built = tokio::task::spawn_blocking(move || {
                        let chain = catch_unwind(AssertUnwindSafe(build))
                            .map_err(|_panic| PrepareError::Panicked)
                            .and_then(|built| built.map_err(PrepareError::Refused));
                        ticket.finish_at(chain, Instant::now())
                    });
                    // Cancelled only when the runtime shuts down; the ticket then lets go of the
                    // key so nothing waits on a build that will not finish.
                    return built.await.unwrap_or(Err(PrepareError::Panicked));
                }
            };
            let outcome = building
                .wait_for(Option::is_some)
                .await
                .map(|outcome| outcome.clone());
            if let Ok(Some(outcome)) = outcome {
                return outcome;
            }
            // That build was abandoned before it finished: start over.
        }
    }

    fn begin_at(self: &Arc<Self>, key: &Text, now: Instant) -> Begin {
        let mut keys = lock(&self.keys);
        self.sweep_expired(&mut keys, now);
        match keys.get(key) {
            Some(Slot::Ready(token)) => {
                if self.get_at(*token, now).is_some() {
                    return Begin::Cached(*token);
                }
                keys.remove(key);
            }
            Some(Slot::Building(outcome)) => return Begin::Wait(outcome.subscribe()),
            None => {}
        }
        // The key arrives as a slice of the frame it came in: a copy, so the cache does not pin
        // the connection's whole read buffer for as long as the conf lives.
        let key = Text::from(key.as_str().to_owned());
        // An empty key cannot be deduplicated: every prepare gets its own build and token.
        if !key.is_empty() {
            keys.insert(key.clone(), Slot::Building(watch::channel(None).0));
        }
        Begin::Build(Ticket {
            cache: self.clone(),
            key,
            finished: false,
        })
    }

    /// Caches `chain` under a new token for `key`; the caller holds the key index.
    fn insert(
        &self,
        keys: &mut HashMap<Text, Slot>,
        key: &Text,
        chain: Chain,
        now: Instant,
    ) -> u32 {
        let token = self.new_token();
        let entry = Entry {
            chain: Arc::new(chain),
            key: key.clone(),
            last_used: now,
        };
        let evicted = lock(self.shard(token)).push(token, entry);
        if let Some((old_token, old)) = evicted {
            if old_token != token {
                self.evictions.capacity.fetch_add(1, Ordering::Relaxed);
            }
            if old_token != token && is_ready(keys, &old.key, old_token) {
                keys.remove(&old.key);
            }
        }
        token
    }

    /// Drops expired chains. They sit at the least-recently-used end of each shard, so this
    /// only looks past the ones it removes.
    fn sweep_expired(&self, keys: &mut HashMap<Text, Slot>, now: Instant) {
        for shard in self.shards.iter() {
            let mut shard = lock(shard);
            while let Some((&token, entry)) = shard.peek_lru() {
                if now.duration_since(entry.last_used) <= self.ttl {
                    break;
                }
                if is_ready(keys, &entry.key, token) {
                    keys.remove(&entry.key);
                }
                shard.pop_lru();
                self.evictions.expired.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Cached chains (expired ones not yet swept included).
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }
}

fn is_ready(keys: &HashMap<Text, Slot>, key: &Text, token: u32) -> bool {
    matches!(keys.get(key), Some(Slot::Ready(t)) if *t == token)
}

/// The right and the duty to build a key's chain: finished with the build's result, or dropped
/// unfinished, which hands the key to its waiters (the first of them builds it).
struct Ticket {
    cache: Arc<ConfCache>,
    key: Text,
    finished: bool,
}

impl Ticket {
    /// Caches the chain (or not, on error) and hands the outcome to the key's waiters.
    fn finish_at(mut self, built: Result<Chain, PrepareError>, now: Instant) -> Outcome {
        self.finished = true;
        let cache = &self.cache;
        let mut keys = lock(&cache.keys);
        let outcome = built.map(|chain| cache.insert(&mut keys, &self.key, chain, now));
        if self.key.is_empty() {
            return outcome;
        }
        // Only this ticket replaces or removes its key's Building slot.
        let slot = match &outcome {
            Ok(token) => keys.insert(self.key.clone(), Slot::Ready(*token)),
            Err(_) => keys.remove(&self.key),
        };
        drop(keys);
        if let Some(Slot::Building(waiters)) = slot {
            waiters.send_replace(Some(outcome.clone()));
        }
        outcome
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.finished && !self.key.is_empty() {
            // Dropping the slot closes its channel: the waiters start over.
            let slot = lock(&self.cache.keys).remove(&self.key);
            drop(slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::mpsc;

    fn chain(key: &str) -> Result<Chain, ChainError> {
        let empty = ext_plugin_sdk::harness::prepare_request(key, &[]);
        Ok(ext_plugin_sdk::Registry::new()
            .build_chain(
                &empty,
                &ext_plugin_sdk::host::StateRegistry::default(),
                &ext_plugin_sdk::Clock::system(),
            )
            .expect("an empty chain always prepares"))
    }

    fn cache(capacity: usize) -> Arc<ConfCache> {
        Arc::new(ConfCache::new(capacity, Duration::from_secs(60)))
    }

    /// A prepare at `now` with nothing else preparing: built here, at once.
    fn prepare_at(
        cache: &Arc<ConfCache>,
        key: &Text,
        now: Instant,
        build: impl FnOnce() -> Result<Chain, ChainError>,
    ) -> Outcome {
        match cache.begin_at(key, now) {
            Begin::Cached(token) => Ok(token),
            Begin::Build(ticket) => ticket.finish_at(build().map_err(PrepareError::from), now),
            Begin::Wait(_) => panic!("nothing else prepares in this test"),
        }
    }

    fn prep(cache: &Arc<ConfCache>, key: &str) -> u32 {
        prepare_at(cache, &Text::from(key.to_owned()), Instant::now(), || {
            chain(key)
        })
        .unwrap()
    }

    /// Prepares of `key` waiting for its build.
    fn waiting(cache: &ConfCache, key: &str) -> usize {
        match lock(&cache.keys).get(key) {
            Some(Slot::Building(waiters)) => waiters.receiver_count(),
            _ => 0,
        }
    }

    /// A build that blocks until `release` sends, counting its runs.
    fn gated_build(
        key: &'static str,
        builds: &Arc<AtomicUsize>,
    ) -> (
        mpsc::Sender<()>,
        impl FnOnce() -> Result<Chain, ChainError> + Send + 'static,
    ) {
        let (release, gate) = mpsc::channel::<()>();
        let builds = builds.clone();
        let build = move || {
            builds.fetch_add(1, Ordering::SeqCst);
            let _ = gate.recv();
            chain(key)
        };
        (release, build)
    }

    /// Polls `cond` until it holds; a generous guard against hangs, not a timing assertion.
    async fn until(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !cond() {
            assert!(Instant::now() < deadline, "never happened: {what}");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    #[test]
    fn same_key_same_token_and_tokens_are_nonzero() {
        let cache = cache(100);
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
        let first: Vec<u32> = (0..4).map(|_| prep(&cache(10), "k")).collect();
        assert!(
            first.windows(2).any(|w| w[0] != w[1]),
            "four caches all started at {}",
            first[0]
        );
    }

    #[test]
    fn expiry_counts_from_last_use_and_forgotten_keys_get_new_tokens() {
        let ttl = Duration::from_secs(100);
        let cache = Arc::new(ConfCache::new(100, ttl));
        let t0 = Instant::now();
        let k = Text::from("k");
        let t = prepare_at(&cache, &k, t0, || chain("k")).unwrap();
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
        let t2 = prepare_at(&cache, &k, late, || chain("k")).unwrap();
        assert_ne!(t2, t);
        assert_eq!(cache.len(), 1, "the expired chain was swept");
        assert_eq!(cache.evictions.expired.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn capacity_evicts_least_recently_used_and_its_key() {
        let cache = cache(SHARDS);
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
        let cache = cache(10);
        let frame = bytes::Bytes::from(b"....route#1#ext-plugin-pre-req#1....".to_vec());
        let key = Text::slice_lossy(&frame, &frame[4..frame.len() - 4]);
        prepare_at(&cache, &key, Instant::now(), || chain("k")).unwrap();
        drop(key);
        assert!(
            frame.is_unique(),
            "a cached key still shares the frame's storage"
        );
    }

    #[test]
    fn the_capacity_is_exact_whatever_it_is() {
        for capacity in [1, 5, SHARDS - 1, SHARDS + 3, 100] {
            let cache = cache(capacity);
            for i in 0..3 * capacity + SHARDS {
                prep(&cache, &i.to_string());
            }
            assert_eq!(cache.len(), capacity, "capacity {capacity}");
            assert!(lock(&cache.keys).len() <= capacity);
        }
    }

    #[test]
    fn failed_builds_leave_nothing_behind_and_are_their_waiters_answer() {
        let cache = cache(10);
        let k = Text::from("k");
        let Begin::Build(ticket) = cache.begin_at(&k, Instant::now()) else {
            panic!("a new key is built")
        };
        let Begin::Wait(waiter) = cache.begin_at(&k, Instant::now()) else {
            panic!("a key being built is waited for")
        };
        let bad = ChainError {
            index: 0,
            plugin: "p".into(),
            reason: "bad".into(),
        };
        let refused = ticket.finish_at(Err(bad.clone().into()), Instant::now());
        assert!(matches!(&refused, Err(PrepareError::Refused(e)) if *e == bad));
        assert!(matches!(&*waiter.borrow(), Some(Err(PrepareError::Refused(e))) if *e == bad));
        assert_eq!(cache.len(), 0);
        assert!(lock(&cache.keys).is_empty());
        assert!(
            matches!(cache.begin_at(&k, Instant::now()), Begin::Build(_)),
            "a refusal is not cached: the next prepare builds again"
        );
    }

    #[test]
    fn an_abandoned_build_hands_the_key_to_its_waiters() {
        let cache = cache(10);
        let k = Text::from("k");
        let Begin::Build(ticket) = cache.begin_at(&k, Instant::now()) else {
            panic!("a new key is built")
        };
        let Begin::Wait(waiter) = cache.begin_at(&k, Instant::now()) else {
            panic!("a key being built is waited for")
        };
        drop(ticket);
        assert!(waiter.has_changed().is_err(), "the waiter learns it");
        assert!(matches!(
            cache.begin_at(&k, Instant::now()),
            Begin::Build(_)
        ));
    }

    #[test]
    fn empty_keys_are_never_shared() {
        let cache = cache(10);
        let (a, b) = (prep(&cache, ""), prep(&cache, ""));
        assert_ne!(a, b);
        assert!(lock(&cache.keys).is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn concurrent_prepares_of_a_key_build_once_outside_every_lock() {
        const N: usize = 8;
        const KEY: &str = "route#1#ext-plugin-pre-req#1";
        let cache = cache(10);
        let builds = Arc::new(AtomicUsize::new(0));
        let mut release = Vec::new();
        let mut prepares = Vec::new();
        for _ in 0..N {
            let (r, build) = gated_build(KEY, &builds);
            release.push(r);
            let cache = cache.clone();
            prepares.push(tokio::spawn(async move {
                cache.prepare(&Text::from(KEY), build).await
            }));
        }
        until("every other prepare waits for the first build", || {
            waiting(&cache, KEY) == N - 1
        })
        .await;
        assert_eq!(builds.load(Ordering::SeqCst), 1);

        // The build holds no lock: another key prepares, and lookups answer, meanwhile.
        let other = cache
            .prepare(&Text::from("other"), || chain("other"))
            .await
            .unwrap();
        assert!(cache.get(other).is_some());
        assert!(prepares.iter().all(|p| !p.is_finished()));

        for r in &release {
            let _ = r.send(());
        }
        let mut tokens = Vec::new();
        for p in prepares {
            tokens.push(p.await.unwrap().unwrap());
        }
        assert!(tokens.iter().all(|&t| t == tokens[0]), "{tokens:?}");
        assert_eq!(
            builds.load(Ordering::SeqCst),
            1,
            "one build for {N} prepares"
        );
        assert_eq!(
            cache
                .prepare(&Text::from(KEY), || chain(KEY))
                .await
                .unwrap(),
            tokens[0],
            "and it is cached"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_prepare_that_goes_away_does_not_strand_its_waiters() {
        const KEY: &str = "k";
        let cache = cache(10);
        let builds = Arc::new(AtomicUsize::new(0));
        let (release, build) = gated_build(KEY, &builds);
        let first = {
            let cache = cache.clone();
            tokio::spawn(async move { cache.prepare(&Text::from(KEY), build).await })
        };
        until("the first build runs", || {
            builds.load(Ordering::SeqCst) == 1
        })
        .await;
        let second = {
            let cache = cache.clone();
            tokio::spawn(async move { cache.prepare(&Text::from(KEY), || chain(KEY)).await })
        };
        until("the second prepare waits", || waiting(&cache, KEY) == 1).await;
        first.abort();
        let _ = first.await;
        release.send(()).unwrap();
        let token = second.await.unwrap().unwrap();
        assert_eq!(builds.load(Ordering::SeqCst), 1, "the build went on");
        assert!(cache.get(token).is_some());
    }

    #[tokio::test]
    async fn a_build_that_panics_is_an_error_not_a_stuck_key() {
        let cache = cache(10);
        let k = Text::from("k");
        let panicked = cache.prepare(&k, || panic!("a plugin panics")).await;
        assert!(
            matches!(panicked, Err(PrepareError::Panicked)),
            "{panicked:?}"
        );
        assert!(cache.prepare(&k, || chain("k")).await.is_ok());
    }
}
