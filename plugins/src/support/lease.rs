//! Correlating a request with its response, for plugins that hold something between the two
//! phases (a limit-conn slot, a breaker probe).
//!
//! The protocol gives the response phase no link to the request (a fresh id, no path), so the
//! request phase sets a correlation header on the upstream request and the response phase reads
//! it back with one `extra_info` `Var http_<name>`. What the request held is kept in a [`Leases`]
//! table under that id. A response that never comes (the upstream failed and the gateway answered
//! 502 itself, a later gateway plugin rejected, or no `ext-plugin-post-resp` is configured) would
//! hold it forever, so leases expire after `lease_timeout` and are handed back to the plugin.
//!
//! The id is always one the runner made, written over whatever the client sent in that header:
//! a client-chosen id (request-id's `X-Request-Id` once was reused here) would let one client's
//! answer end another client's lease and free its slot. So each id names exactly one lease.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use super::keyed::lock;
use ext_plugin_sdk::{RequestCall, Text};

const SHARDS: usize = 16;
/// Expired leases are looked for at most this often (plus on demand in tests).
const SWEEP_EVERY: u64 = super::clock::NANOS_PER_SEC;

/// Leases one plugin's table holds at most (per route and conf): far above the requests a
/// gateway keeps in flight on one route, far below what a table growing with rate × timeout
/// would reach when answers never come.
pub const MAX_LEASES: usize = 100_000;

/// The correlation header the runner sets unless the conf names another.
pub const DEFAULT_CORRELATION_HEADER: &str = "x-a6-runner-req";

/// Where the correlation id travels.
#[derive(Debug, Clone)]
pub struct Correlation {
    /// The request header (lower case).
    pub header: Text,
    /// `http_<header>` with `_`: the variable the response phase reads.
    pub var: Box<str>,
}

impl Correlation {
    /// The header from the conf, else [`DEFAULT_CORRELATION_HEADER`].
    pub fn new(configured: Option<&str>) -> Correlation {
        let header = configured.map_or_else(
            || DEFAULT_CORRELATION_HEADER.to_owned(),
            str::to_ascii_lowercase,
        );
        let var = format!("http_{}", header.replace('-', "_")).into();
        Correlation {
            header: header.into(),
            var,
        }
    }

    /// The id for this request, set as the header (replacing what the client sent). Plugins of
    /// one call that use the same header share one id (limit-conn and api-breaker in one
    /// chain): a second fresh id would overwrite the header and orphan the first plugin's lease.
    pub fn id_for_call(&self, call: &mut RequestCall<'_>) -> Text {
        if let Some(set) = call.get::<CallCorrelation>() {
            if set.header == self.header {
                return set.id.clone();
            }
        }
        let id = Text::from(fresh_id());
        call.set_header(self.header.clone(), id.clone());
        call.insert(CallCorrelation {
            header: self.header.clone(),
            id: id.clone(),
        });
        id
    }
}

/// The correlation id a plugin of this call already chose.
struct CallCorrelation {
    header: Text,
    id: Text,
}

/// A process-unique id a client cannot predict: a random per-process prefix (so a restarted
/// runner does not match old ids, and ids of one process cannot be guessed from another's) and
/// a counter.
fn fresh_id() -> String {
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let prefix = PREFIX.get_or_init(rand::random::<u64>);
    format!("{prefix:016x}-{:x}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Held values by correlation id, each with a deadline; at most `max` at once.
pub struct Leases<T> {
    shards: Box<[Mutex<Shard<T>>]>,
    hasher: RandomState,
    timeout: u64,
    max: usize,
    next_sweep: AtomicU64,
    /// Leases held, kept beside the shards so that "none held" costs no lock.
    held: AtomicUsize,
}

/// Leases by correlation id: one each, as ids are the runner's own and never repeat.
type Shard<T> = HashMap<Box<str>, Lease<T>>;

struct Lease<T> {
    deadline: u64,
    value: T,
}

/// A lease the table could not take: it is full. The value comes back to be released.
#[derive(Debug)]
pub struct Full<T>(pub T);

impl<T> Leases<T> {
    /// Leases that expire `timeout` nanoseconds after they are taken, at most `max` held at once
    /// (a response phase that never comes, at a high request rate, would otherwise grow the
    /// table with rate × timeout).
    pub fn new(timeout: u64, max: usize) -> Leases<T> {
        Leases {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            timeout,
            max: max.max(1),
            next_sweep: AtomicU64::new(0),
            held: AtomicUsize::new(0),
        }
    }

    fn shard(&self, id: &str) -> &Mutex<Shard<T>> {
        &self.shards[self.hasher.hash_one(id) as usize % SHARDS]
    }

    /// Holds `value` under `id` until [`Leases::take`] or expiry; `Err` when `max` leases are
    /// held already (the caller gives back what the value holds and refuses the request: a
    /// lease it cannot record is one it could never release).
    pub fn insert(&self, id: &str, now: u64, value: T) -> Result<(), Full<T>> {
        if self.held.fetch_add(1, Ordering::AcqRel) >= self.max {
            self.held.fetch_sub(1, Ordering::AcqRel);
            return Err(Full(value));
        }
        let lease = Lease {
            deadline: now.saturating_add(self.timeout),
            value,
        };
        let replaced = lock(self.shard(id)).insert(id.into(), lease);
        if replaced.is_some() {
            // Unreachable with the runner's own ids; counted right if it ever happens.
            self.held.fetch_sub(1, Ordering::AcqRel);
        }
        Ok(())
    }

    /// Ends the lease under `id`; `None` when there is none (it expired, or the response
    /// belongs to a request this scope did not hold).
    pub fn take(&self, id: &str) -> Option<T> {
        let lease = lock(self.shard(id)).remove(id)?;
        self.held.fetch_sub(1, Ordering::AcqRel);
        Some(lease.value)
    }

    /// Removes the expired leases and hands them to `expire`. Cheap to call on every request:
    /// it scans at most once per second.
    pub fn sweep(&self, now: u64, mut expire: impl FnMut(T)) {
        let due = self.next_sweep.load(Ordering::Relaxed);
        if now < due
            || self
                .next_sweep
                .compare_exchange(due, now + SWEEP_EVERY, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        for shard in self.shards.iter() {
            let expired: Vec<T> = {
                let mut shard = lock(shard);
                let due: Vec<Box<str>> = shard
                    .iter()
                    .filter(|(_, l)| l.deadline <= now)
                    .map(|(id, _)| id.clone())
                    .collect();
                due.iter()
                    .filter_map(|id| shard.remove(id))
                    .map(|l| l.value)
                    .collect()
            };
            self.held.fetch_sub(expired.len(), Ordering::AcqRel);
            // Outside the lock: releasing may take other locks.
            expired.into_iter().for_each(&mut expire);
        }
    }

    /// Leases held; lock-free, so a response phase can skip its correlation lookup cheaply
    /// when nothing is held.
    pub fn len(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ext_plugin_sdk::harness::{request, TestCall};
    use ext_plugin_sdk::Method;

    #[test]
    fn leases_are_taken_once_and_expire() {
        let l: Leases<u32> = Leases::new(100, 10);
        l.insert("a", 10, 1).unwrap();
        l.insert("b", 20, 2).unwrap();
        l.insert("c", 10, 3).unwrap();
        assert_eq!(l.take("a"), Some(1));
        assert_eq!(l.take("a"), None, "a lease ends once");
        assert_eq!(l.take("nope"), None);
        let mut gone = Vec::new();
        l.sweep(115, |v| gone.push(v));
        assert_eq!(gone, [3], "c expired at 110, b lives to 120");
        assert_eq!(l.len(), 1);
        l.sweep(200, |v| gone.push(v));
        assert_eq!(gone, [3], "sweeps are spaced out");
        l.sweep(115 + SWEEP_EVERY, |v| gone.push(v));
        assert_eq!(gone, [3, 2]);
        assert!(l.is_empty());
    }

    #[test]
    fn a_full_table_hands_the_value_back() {
        let l: Leases<u32> = Leases::new(100, 2);
        l.insert("a", 0, 1).unwrap();
        l.insert("b", 0, 2).unwrap();
        assert_eq!(l.insert("c", 0, 3).unwrap_err().0, 3);
        assert_eq!(l.len(), 2);
        l.take("a");
        l.insert("c", 0, 3).unwrap();
    }

    #[test]
    fn the_id_is_always_the_runners_own() {
        for configured in [None, Some("X-Corr")] {
            let corr = Correlation::new(configured);
            let mut c = TestCall::new(
                request(Method::Get, "/")
                    .with_header(&corr.header, "spoofed")
                    .with_header("x-request-id", "spoofed"),
            );
            let id = corr.id_for_call(&mut c.call());
            assert_ne!(id.as_str(), "spoofed");
            assert_eq!(c.set_headers()[0].name.as_str(), corr.header.as_str());
            assert_eq!(c.set_headers()[0].value.as_deref(), Some(id.as_str()));
        }
        let own = Correlation::new(None);
        assert_eq!(own.header.as_str(), "x-a6-runner-req");
        assert_eq!(&*own.var, "http_x_a6_runner_req");
        assert_eq!(&*Correlation::new(Some("X-Corr")).var, "http_x_corr");
    }
}
