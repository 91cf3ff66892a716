//! Conf tokens → prepared chains (docs/protocol.md §6).
//!
//! * Tokens are non-zero, start at a random value (a gateway that outlived a runner restart must
//!   not hit another route's chain with an old token) and count up. After 2^32 prepares the count
//!   wraps; a token still held by a cached chain is skipped then, never handed to another chain.
//! * The same key returns the same token while its chain is cached (gateway workers each
//!   prepare the same route).
//! * A chain is kept for `ttl` after its last use. The cache holds at most `capacity` chains and
//!   at most `bytes` of accounted size (key, confs, a fixed overhead), dropping the least
//!   recently used first. Either way a forgotten token answers CONF_TOKEN_NOT_FOUND and the
//!   gateway prepares again. Keys and confs over their caps are refused before anything is built.
//! * A chain is built outside every lock and off the async workers (on tokio's blocking pool):
//!   a slow prepare (a consumers file, a large schema or regex set) holds up neither other
//!   prepares nor the calls the worker would serve meanwhile. Prepares of a key whose build is
//!   under way wait for that build and get its answer: one build per key, one token.
//! * Every prepare is answered within `prepare_timeout`. A build cannot be stopped, so one past
//!   the deadline goes on; its key's prepares are refused at once until it finishes (a chain it
//!   then makes is cached), and at most `builds` may run at once, overdue ones included: hung
//!   plugins hold a bounded number of threads, never the whole blocking pool.
//!
//! Lookups, which every request makes, lock one of several shards briefly; the key index is
//! only touched by `prepare_conf`, and only briefly too.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use lru::LruCache;
use tokio::sync::{watch, Semaphore};

use crate::config::Config;
use ext_plugin_sdk::{Chain, ChainError, Text};

const SHARDS: usize = 16;

/// The longest conf key accepted. APISIX's keys are a route's or service's id (at most 64
/// characters in its schema) and a phase name; a key is kept for as long as its chain.
pub(crate) const MAX_KEY_LEN: usize = 4096;

/// What a cached chain is accounted for beyond its key and confs: the entry, the index slot and
/// the chain's own structures. An estimate; it keeps a cache of tiny confs within its byte
/// budget too.
const ENTRY_OVERHEAD: usize = 1024;

struct Entry {
    chain: Arc<Chain>,
    /// The chain's own key (shared storage): the one copy the index holds too.
    key: Text,
    /// Accounted size, against the shard's byte budget.
    bytes: usize,
    last_used: Instant,
}

/// Chains by token, least recently used first, and their accounted size.
struct Shard {
    lru: LruCache<u32, Entry>,
    bytes: usize,
}

impl Shard {
    fn pop_lru(&mut self) -> Option<(u32, Entry)> {
        let (token, entry) = self.lru.pop_lru()?;
        self.bytes -= entry.bytes;
        Some((token, entry))
    }
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
    /// The key or the confs are longer than the runner keeps.
    #[error("{what} is {len} bytes, over the limit of {limit}")]
    TooLarge {
        what: &'static str,
        len: usize,
        limit: usize,
    },
    /// The build did not finish within the deadline (it may still, and is cached then).
    #[error(
        "the chain was not prepared within --prepare-timeout-ms ({0:?}); \
         refused until its build finishes"
    )]
    TimedOut(Duration),
    /// Every build slot was taken until the deadline (builds past their deadline hold theirs).
    #[error(
        "{0} prepares were already running (--max-prepares-in-flight) until the deadline; refused"
    )]
    Busy(usize),
}

type Outcome = Result<u32, PrepareError>;

/// What a key stands for in the index.
enum Slot {
    /// The token of the key's cached chain.
    Ready(u32),
    /// A build under way; prepares of the key wait for its outcome here. `overdue` once the
    /// build's deadline passed: its waiters were refused, and further prepares are at once.
    Building {
        waiters: watch::Sender<Option<Outcome>>,
        overdue: bool,
        /// Which build: its ticket's number.
        build: u64,
    },
}

/// What a prepare of a key must do.
enum Begin {
    Cached(u32),
    /// Refused without building: the key's build is overdue.
    Refused(PrepareError),
    /// Wait for the build under way. The channel closes without an outcome when that build was
    /// abandoned; the waiter then starts over.
    Wait(watch::Receiver<Option<Outcome>>),
    /// Build the chain and [`Ticket::finish_at`] with the result.
    Build(Ticket),
}

/// The cache's bounds, from the runner's [`Config`].
#[derive(Clone, Debug)]
pub(crate) struct CacheLimits {
    pub(crate) capacity: usize,
    pub(crate) bytes: usize,
    pub(crate) max_conf_bytes: usize,
    pub(crate) ttl: Duration,
    pub(crate) prepare_timeout: Duration,
    pub(crate) builds: usize,
}

impl From<&Config> for CacheLimits {
    fn from(c: &Config) -> CacheLimits {
        CacheLimits {
            capacity: c.conf_cache_capacity,
            bytes: c.conf_cache_bytes,
            max_conf_bytes: c.max_conf_bytes,
            ttl: c.conf_ttl(),
            prepare_timeout: c.prepare_timeout,
            builds: c.max_prepares_in_flight,
        }
    }
}

pub(crate) struct ConfCache {
    shards: Box<[Mutex<Shard>]>,
    /// Each shard's share of the byte budget.
    shard_bytes: usize,
    keys: Mutex<HashMap<Text, Slot>>,
    next_token: AtomicU32,
    /// Numbers builds, so a late deadline cannot mark a later build of the same key overdue.
    next_build: AtomicU64,
    limits: CacheLimits,
    /// Build slots ([`CacheLimits::builds`]); a build holds one until it returns.
    builds: Arc<Semaphore>,
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
    pub(crate) fn new(limits: CacheLimits) -> ConfCache {
        // The shards' capacities add up to exactly `capacity` (at least 1), so the configured
        // bound is the real one: fewer shards when the capacity is below SHARDS.
        let capacity = limits.capacity.max(1);
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
                .map(|i| {
                    Mutex::new(Shard {
                        lru: LruCache::new(shard_capacity(i)),
                        bytes: 0,
                    })
                })
                .collect(),
            shard_bytes: (limits.bytes / shards).max(1),
            keys: Mutex::new(HashMap::new()),
            next_token: AtomicU32::new(u32::from_le_bytes(seed)),
            next_build: AtomicU64::new(0),
            builds: Arc::new(Semaphore::new(limits.builds.max(1))),
            limits,
            evictions: Default::default(),
        }
    }

    fn shard(&self, token: u32) -> &Mutex<Shard> {
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

    /// Moves the token counter: tokens are handed out from `next` on. For tests of the wrap,
    /// which would otherwise take 2^32 prepares.
    pub(crate) fn set_next_token(&self, next: u32) {
        self.next_token.store(next, Ordering::Relaxed);
    }

    /// The chain for `token`, marking it used; `None` if unknown or expired.
    #[cfg(test)]
    pub(crate) fn get(&self, token: u32) -> Option<Arc<Chain>> {
        self.get_at(token, Instant::now())
    }

    /// [`ConfCache::get`] at `now`: a connection passes the time it woke up at, read once for
    /// everything its calls time.
    pub(crate) fn get_at(&self, token: u32, now: Instant) -> Option<Arc<Chain>> {
        let mut shard = lock(self.shard(token));
        let entry = shard.lru.get_mut(&token)?;
        if now.duration_since(entry.last_used) > self.limits.ttl {
            return None;
        }
        entry.last_used = now;
        Some(entry.chain.clone())
    }

    /// Refuses a key or confs over their caps; otherwise the chain's accounted size.
    fn charge(&self, key: &str, conf_bytes: usize) -> Result<usize, PrepareError> {
        if key.len() > MAX_KEY_LEN {
            return Err(PrepareError::TooLarge {
                what: "the conf key",
                len: key.len(),
                limit: MAX_KEY_LEN,
            });
        }
        if conf_bytes > self.limits.max_conf_bytes {
            return Err(PrepareError::TooLarge {
                what: "the chain's conf (--max-conf-bytes)",
                len: conf_bytes,
                limit: self.limits.max_conf_bytes,
            });
        }
        Ok(ENTRY_OVERHEAD + key.len() + conf_bytes)
    }

    /// The token for `key`: the cached one, the one a build under way for the key comes to, or
    /// a new one for the chain `build` makes. `conf_bytes` is the size of the chain's confs
    /// (refused over the cap, accounted against the byte budget otherwise). `build` runs on
    /// tokio's blocking pool, outside every lock; a panic in it is [`PrepareError::Panicked`].
    /// Answered within the prepare timeout. Dropping the returned future (the connection going
    /// away) does not stop a build once started: its waiters still get its outcome, and the
    /// chain is cached.
    pub(crate) async fn prepare<F>(
        self: &Arc<Self>,
        key: &Text,
        conf_bytes: usize,
        build: F,
    ) -> Outcome
    where
        F: FnOnce() -> Result<Chain, ChainError> + Send + 'static,
    {
        let charge = self.charge(key, conf_bytes)?;
        let deadline = tokio::time::Instant::now() + self.limits.prepare_timeout;
        loop {
            let mut building = match self.begin_at(key, charge, Instant::now()) {
                Begin::Cached(token) => return Ok(token),
                Begin::Refused(e) => return Err(e),
                Begin::Wait(outcome) => outcome,
                Begin::Build(ticket) => return self.build(ticket, build, deadline).await,
            };
            let waited =
                tokio::time::timeout_at(deadline, building.wait_for(Option::is_some)).await;
            match waited {
                Err(_elapsed) => return Err(self.timed_out()),
                Ok(Ok(outcome)) => return outcome.clone().expect("waited for an outcome"),
                // That build was abandoned before it finished: start over.
                Ok(Err(_closed)) => {}
            }
        }
    }

    fn timed_out(&self) -> PrepareError {
        PrepareError::TimedOut(self.limits.prepare_timeout)
    }

    /// Runs `build` for `ticket` on the blocking pool, in a build slot, within `deadline`.
    async fn build<F>(
        self: &Arc<Self>,
        ticket: Ticket,
        build: F,
        deadline: tokio::time::Instant,
    ) -> Outcome
    where
        F: FnOnce() -> Result<Chain, ChainError> + Send + 'static,
    {
        let slot = tokio::time::timeout_at(deadline, self.builds.clone().acquire_owned()).await;
        let Ok(Ok(slot)) = slot else {
            let busy = PrepareError::Busy(self.limits.builds);
            return ticket.finish_at(Err(busy), Instant::now());
        };
        let (key, number) = (ticket.key.clone(), ticket.build);
        let mut built = tokio::task::spawn_blocking(move || {
            let chain = catch_unwind(AssertUnwindSafe(build))
                .map_err(|_panic| PrepareError::Panicked)
                .and_then(|built| built.map_err(PrepareError::Refused));
            let outcome = ticket.finish_at(chain, Instant::now());
            drop(slot);
            outcome
        });
        // Cancelled only when the runtime shuts down; the ticket then lets go of the key so
        // nothing waits on a build that will not finish.
        let joined = match tokio::time::timeout_at(deadline, &mut built).await {
            Ok(joined) => joined,
            Err(_elapsed) if self.overdue(&key, number) => return Err(self.timed_out()),
            // It finished just as the deadline passed: its outcome is the answer.
            Err(_elapsed) => built.await,
        };
        joined.unwrap_or(Err(PrepareError::Panicked))
    }

    /// Marks `key`'s build overdue and refuses its waiters; false when the build has finished
    /// meanwhile (its outcome is there to take).
    fn overdue(&self, key: &Text, build: u64) -> bool {
        if key.is_empty() {
            return true;
        }
        let mut keys = lock(&self.keys);
        let Some(Slot::Building {
            waiters,
            overdue,
            build: b,
        }) = keys.get_mut(key)
        else {
            return false;
        };
        if *b != build {
            // This build finished; the slot is a later prepare's.
            return false;
        }
        *overdue = true;
        waiters.send_replace(Some(Err(self.timed_out())));
        true
    }

    fn begin_at(self: &Arc<Self>, key: &Text, charge: usize, now: Instant) -> Begin {
        let mut keys = lock(&self.keys);
        self.sweep_expired(&mut keys, now);
        match keys.get(key) {
            Some(Slot::Ready(token)) => {
                if self.get_at(*token, now).is_some() {
                    return Begin::Cached(*token);
                }
                keys.remove(key);
            }
            Some(Slot::Building { overdue: true, .. }) => return Begin::Refused(self.timed_out()),
            Some(Slot::Building { waiters, .. }) => return Begin::Wait(waiters.subscribe()),
            None => {}
        }
        // The key arrives as a slice of the frame it came in: a copy, so the index does not pin
        // the connection's whole read buffer while the chain builds. Once built, the index keys
        // by the chain's own copy instead.
        let key = Text::from(key.as_str().to_owned());
        let build = self.next_build.fetch_add(1, Ordering::Relaxed);
        // An empty key cannot be deduplicated: every prepare gets its own build and token.
        if !key.is_empty() {
            let building = Slot::Building {
                waiters: watch::channel(None).0,
                overdue: false,
                build,
            };
            keys.insert(key.clone(), building);
        }
        Begin::Build(Ticket {
            cache: self.clone(),
            key,
            build,
            charge,
            finished: false,
        })
    }

    /// Caches `chain` under a new token, making room by count and by bytes; the caller holds
    /// the key index.
    fn insert(
        &self,
        keys: &mut HashMap<Text, Slot>,
        key: Text,
        chain: Chain,
        charge: usize,
        now: Instant,
    ) -> u32 {
        let entry = Entry {
            key,
            chain: Arc::new(chain),
            bytes: charge,
            last_used: now,
        };
        loop {
            let token = self.new_token();
            let mut shard = lock(self.shard(token));
            if shard.lru.contains(&token) {
                // The count wrapped onto a live chain's token: the next one.
                continue;
            }
            let mut dropped = Vec::new();
            while shard.bytes + entry.bytes > self.shard_bytes
                || shard.lru.len() == shard.lru.cap().get()
            {
                match shard.pop_lru() {
                    Some(old) => dropped.push(old),
                    None => break,
                }
            }
            shard.bytes += entry.bytes;
            shard.lru.push(token, entry);
            drop(shard);
            for (old_token, old) in dropped {
                self.evictions.capacity.fetch_add(1, Ordering::Relaxed);
                if is_ready(keys, &old.key, old_token) {
                    keys.remove(&old.key);
                }
            }
            return token;
        }
    }

    /// Drops expired chains. They sit at the least-recently-used end of each shard, so this
    /// only looks past the ones it removes.
    fn sweep_expired(&self, keys: &mut HashMap<Text, Slot>, now: Instant) {
        for shard in self.shards.iter() {
            let mut shard = lock(shard);
            while let Some((&token, entry)) = shard.lru.peek_lru() {
                if now.duration_since(entry.last_used) <= self.limits.ttl {
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
        self.shards.iter().map(|s| lock(s).lru.len()).sum()
    }

    /// The cached chains' accounted size, against the byte budget.
    pub(crate) fn bytes(&self) -> usize {
        self.shards.iter().map(|s| lock(s).bytes).sum()
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
    /// Its build's number (the key's Building slot carries it too).
    build: u64,
    /// The chain's accounted size.
    charge: usize,
    finished: bool,
}

impl Ticket {
    /// Caches the chain (or not, on error) and hands the outcome to the key's waiters.
    fn finish_at(mut self, built: Result<Chain, PrepareError>, now: Instant) -> Outcome {
        self.finished = true;
        let cache = &self.cache;
        let mut keys = lock(&cache.keys);
        let mut kept_key = None;
        let outcome = built.map(|chain| {
            // The chain's own copy of the key, so the cache holds no other.
            let key = match chain.key_text() {
                k if *k == self.key => k.clone(),
                _ => self.key.clone(),
            };
            kept_key = Some(key.clone());
            cache.insert(&mut keys, key, chain, self.charge, now)
        });
        if self.key.is_empty() {
            return outcome;
        }
        // Only this ticket replaces or removes its key's Building slot. The index then keys by
        // the kept copy (removed and inserted: an insert would keep the copy made for the build).
        let slot = keys.remove(&self.key);
        if let (Ok(token), Some(key)) = (&outcome, kept_key) {
            keys.insert(key, Slot::Ready(*token));
        }
        drop(keys);
        if let Some(Slot::Building { waiters, .. }) = slot {
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

    fn limits(capacity: usize) -> CacheLimits {
        CacheLimits {
            capacity,
            ttl: Duration::from_secs(60),
            // Past the tests' hang guard: builds held at a gate are not refused under load.
            prepare_timeout: Duration::from_secs(120),
            ..CacheLimits::from(&Config::default())
        }
    }

    fn cache(capacity: usize) -> Arc<ConfCache> {
        Arc::new(ConfCache::new(limits(capacity)))
    }

    /// A prepare at `now` with nothing else preparing: built here, at once.
    fn prepare_at(
        cache: &Arc<ConfCache>,
        key: &Text,
        now: Instant,
        build: impl FnOnce() -> Result<Chain, ChainError>,
    ) -> Outcome {
        match cache.begin_at(key, ENTRY_OVERHEAD, now) {
            Begin::Cached(token) => Ok(token),
            Begin::Refused(e) => Err(e),
            Begin::Build(ticket) => ticket.finish_at(build().map_err(PrepareError::from), now),
            Begin::Wait(_) => panic!("nothing else prepares in this test"),
        }
    }

    impl ConfCache {
        /// A prepare of `key` with `conf_bytes` of confs, built at once.
        fn begin_and_finish(self: &Arc<Self>, key: &Text, conf_bytes: usize) -> Outcome {
            let charge = self.charge(key, conf_bytes)?;
            match self.begin_at(key, charge, Instant::now()) {
                Begin::Build(ticket) => ticket.finish_at(Ok(chain(key)?), Instant::now()),
                _ => panic!("a new key is built"),
            }
        }
    }

    fn prep(cache: &Arc<ConfCache>, key: &str) -> u32 {
        prepare_at(cache, &Text::from(key.to_owned()), Instant::now(), || {
            chain(key)
        })
        .unwrap()
    }

    /// A plugin's refusal.
    fn refusal() -> ChainError {
        ChainError {
            index: 0,
            plugin: "p".into(),
            reason: "bad".into(),
        }
    }

    /// Prepares of `key` waiting for its build.
    fn waiting(cache: &ConfCache, key: &str) -> usize {
        match lock(&cache.keys).get(key) {
            Some(Slot::Building { waiters, .. }) => waiters.receiver_count(),
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
        let cache = Arc::new(ConfCache::new(CacheLimits { ttl, ..limits(100) }));
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
        let Begin::Build(ticket) = cache.begin_at(&k, ENTRY_OVERHEAD, Instant::now()) else {
            panic!("a new key is built")
        };
        let Begin::Wait(waiter) = cache.begin_at(&k, ENTRY_OVERHEAD, Instant::now()) else {
            panic!("a key being built is waited for")
        };
        let bad = refusal();
        let refused = ticket.finish_at(Err(bad.clone().into()), Instant::now());
        assert!(matches!(&refused, Err(PrepareError::Refused(e)) if *e == bad));
        assert!(matches!(&*waiter.borrow(), Some(Err(PrepareError::Refused(e))) if *e == bad));
        assert_eq!(cache.len(), 0);
        assert!(lock(&cache.keys).is_empty());
        assert!(
            matches!(
                cache.begin_at(&k, ENTRY_OVERHEAD, Instant::now()),
                Begin::Build(_)
            ),
            "a refusal is not cached: the next prepare builds again"
        );
    }

    #[test]
    fn an_abandoned_build_hands_the_key_to_its_waiters() {
        let cache = cache(10);
        let k = Text::from("k");
        let Begin::Build(ticket) = cache.begin_at(&k, ENTRY_OVERHEAD, Instant::now()) else {
            panic!("a new key is built")
        };
        let Begin::Wait(waiter) = cache.begin_at(&k, ENTRY_OVERHEAD, Instant::now()) else {
            panic!("a key being built is waited for")
        };
        drop(ticket);
        assert!(waiter.has_changed().is_err(), "the waiter learns it");
        assert!(matches!(
            cache.begin_at(&k, ENTRY_OVERHEAD, Instant::now()),
            Begin::Build(_)
        ));
    }

    #[test]
    fn a_wrapped_token_count_skips_live_tokens() {
        let cache = cache(100);
        cache.set_next_token(u32::MAX - 1);
        let a = prep(&cache, "a");
        let b = prep(&cache, "b");
        assert_eq!((a, b), (u32::MAX - 1, u32::MAX));
        cache.set_next_token(a);
        let c = prep(&cache, "c");
        assert_eq!(c, 1, "a and b are live, 0 is never a token");
        assert_eq!(
            cache.get(a).unwrap().key(),
            "a",
            "a still runs its own chain"
        );
        assert_eq!(cache.get(b).unwrap().key(), "b");
    }

    #[test]
    fn the_byte_budget_evicts_least_recently_used_whatever_the_count() {
        let budget = SHARDS * 4 * (ENTRY_OVERHEAD + 1000);
        let cache = Arc::new(ConfCache::new(CacheLimits {
            bytes: budget,
            ..limits(10_000)
        }));
        let tokens: Vec<u32> = (0..1000)
            .map(|i| {
                let key = Text::from(format!("{i:04}"));
                cache
                    .begin_and_finish(&key, 996)
                    .expect("a small conf prepares")
            })
            .collect();
        assert!(cache.bytes() <= budget, "{} > {budget}", cache.bytes());
        assert!(cache.len() <= SHARDS * 4, "{} cached", cache.len());
        assert!(cache.get(tokens[0]).is_none(), "the oldest went first");
        assert!(cache.get(tokens[999]).is_some());
        assert!(lock(&cache.keys).len() <= SHARDS * 4, "and their keys");
    }

    #[test]
    fn keys_and_confs_over_their_caps_are_refused_before_building() {
        let cache = cache(10);
        let long = "k".repeat(MAX_KEY_LEN + 1);
        let e = cache.charge(&long, 0).unwrap_err();
        assert!(e.to_string().contains("conf key is 4097 bytes"), "{e}");
        let max = cache.limits.max_conf_bytes;
        let e = cache.charge("k", max + 1).unwrap_err();
        assert!(e.to_string().contains("--max-conf-bytes"), "{e}");
        assert_eq!(cache.charge("k", max).unwrap(), ENTRY_OVERHEAD + 1 + max);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn an_overdue_build_refuses_its_waiters_and_its_key_until_it_finishes() {
        const KEY: &str = "k";
        let cache = Arc::new(ConfCache::new(CacheLimits {
            prepare_timeout: Duration::from_millis(100),
            builds: 1,
            ..limits(10)
        }));
        let builds = Arc::new(AtomicUsize::new(0));
        let (release, build) = gated_build(KEY, &builds);
        let first = {
            let cache = cache.clone();
            tokio::spawn(async move { cache.prepare(&Text::from(KEY), 0, build).await })
        };
        until("the build runs", || builds.load(Ordering::SeqCst) == 1).await;
        let waiter = {
            let cache = cache.clone();
            tokio::spawn(async move { cache.prepare(&Text::from(KEY), 0, || chain(KEY)).await })
        };
        for refused in [first.await.unwrap(), waiter.await.unwrap()] {
            assert!(
                matches!(refused, Err(PrepareError::TimedOut(_))),
                "{refused:?}"
            );
        }
        let again = cache.prepare(&Text::from(KEY), 0, || chain(KEY)).await;
        assert!(matches!(again, Err(PrepareError::TimedOut(_))), "{again:?}");
        // The one build slot is held by the overdue build: another key waits, then is refused.
        let other = cache
            .prepare(&Text::from("other"), 0, || chain("other"))
            .await;
        assert!(matches!(other, Err(PrepareError::Busy(1))), "{other:?}");
        assert_eq!(builds.load(Ordering::SeqCst), 1, "never built twice");

        release.send(()).unwrap();
        until("the overdue build is cached", || cache.len() == 1).await;
        let token = cache.prepare(&Text::from(KEY), 0, || chain(KEY)).await;
        assert!(cache.get(token.unwrap()).is_some());
        assert!(cache
            .prepare(&Text::from("other"), 0, || chain("other"))
            .await
            .is_ok());
    }

    #[test]
    fn a_deadline_that_comes_late_leaves_the_next_build_of_the_key_alone() {
        let cache = cache(10);
        let k = Text::from("k");
        let Begin::Build(first) = cache.begin_at(&k, ENTRY_OVERHEAD, Instant::now()) else {
            panic!("a new key is built")
        };
        let first_build = first.build;
        // The first build finishes just as its deadline passes; a new prepare builds again.
        let _ = first.finish_at(Err(refusal().into()), Instant::now());
        let Begin::Build(_second) = cache.begin_at(&k, ENTRY_OVERHEAD, Instant::now()) else {
            panic!("a refused key is built again")
        };
        assert!(
            !cache.overdue(&k, first_build),
            "not the first build's slot"
        );
        assert!(matches!(
            cache.begin_at(&k, ENTRY_OVERHEAD, Instant::now()),
            Begin::Wait(_)
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
                cache.prepare(&Text::from(KEY), 0, build).await
            }));
        }
        // The build runs on a blocking thread, which may start after the waiters are in.
        until(
            "every other prepare waits for the first build, which runs",
            || waiting(&cache, KEY) == N - 1 && builds.load(Ordering::SeqCst) > 0,
        )
        .await;
        assert_eq!(builds.load(Ordering::SeqCst), 1);

        // The build holds no lock: another key prepares, and lookups answer, meanwhile.
        let other = cache
            .prepare(&Text::from("other"), 0, || chain("other"))
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
                .prepare(&Text::from(KEY), 0, || chain(KEY))
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
            tokio::spawn(async move { cache.prepare(&Text::from(KEY), 0, build).await })
        };
        until("the first build runs", || {
            builds.load(Ordering::SeqCst) == 1
        })
        .await;
        let second = {
            let cache = cache.clone();
            tokio::spawn(async move { cache.prepare(&Text::from(KEY), 0, || chain(KEY)).await })
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
        let panicked = cache.prepare(&k, 0, || panic!("a plugin panics")).await;
        assert!(
            matches!(panicked, Err(PrepareError::Panicked)),
            "{panicked:?}"
        );
        assert!(cache.prepare(&k, 0, || chain("k")).await.is_ok());
    }
}
