//! Correlating a request with its response, for plugins that hold something between the two
//! phases (a limit-conn slot, a breaker probe).
//!
//! The protocol gives the response phase no link to the request (a fresh id, no path), so the
//! request phase sets a correlation header on the upstream request and the response phase reads
//! it back with one `extra_info` `Var http_<name>`. What the request held is kept in a [`Leases`]
//! table under that id. A response that never comes (the upstream failed and the gateway answered
//! 502 itself, a later gateway plugin rejected, or no `ext-plugin-post-resp` is configured) would
//! hold it forever, so leases expire after `lease_timeout` and are handed back to the plugin.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use super::keyed::lock;
use ext_plugin_sdk::{RequestCall, Text};

const SHARDS: usize = 16;
/// Expired leases are looked for at most this often (plus on demand in tests).
const SWEEP_EVERY: u64 = super::clock::NANOS_PER_SEC;

/// The correlation header the runner sets when the chain has no `request-id`.
pub const DEFAULT_CORRELATION_HEADER: &str = "x-a6-runner-req";
/// request-id's default header: its id is reused when that plugin is in the chain.
const REQUEST_ID_HEADER: &str = "x-request-id";

/// Where the correlation id travels.
#[derive(Debug, Clone)]
pub struct Correlation {
    /// The request header (lower case).
    pub header: Text,
    /// `http_<header>` with `_`: the variable the response phase reads.
    pub var: Box<str>,
    /// True when the header belongs to the runner (always overwritten with a fresh id); false
    /// when it is request-id's (its id is reused when present).
    own: bool,
}

impl Correlation {
    /// The header from the conf, else request-id's header when that plugin is in the chain, else
    /// [`DEFAULT_CORRELATION_HEADER`].
    pub fn new(configured: Option<&str>, chain: &[&str]) -> Correlation {
        let (header, own) = match configured {
            Some(h) => (h.to_ascii_lowercase(), true),
            None if chain.contains(&"request-id") => (REQUEST_ID_HEADER.to_owned(), false),
            None => (DEFAULT_CORRELATION_HEADER.to_owned(), true),
        };
        let var = format!("http_{}", header.replace('-', "_")).into();
        Correlation {
            header: header.into(),
            var,
            own,
        }
    }

    /// The id for this request: request-id's when it set one, otherwise a fresh one; the caller
    /// sets it as the header when `set` is true.
    pub fn id_for(&self, incoming: Option<&str>) -> (Text, bool) {
        match incoming {
            Some(id) if !self.own && !id.is_empty() => (Text::from(id.to_owned()), false),
            _ => (Text::from(fresh_id()), true),
        }
    }

    /// The id for this request, with the header set when the runner owns it. Plugins of one
    /// call that use the same header share one id (limit-conn and api-breaker in one chain): a
    /// second fresh id would overwrite the header and orphan the first plugin's lease.
    pub fn id_for_call(&self, call: &mut RequestCall<'_>) -> Text {
        if let Some(set) = call.get::<CallCorrelation>() {
            if set.header == self.header {
                return set.id.clone();
            }
        }
        let (id, set) = self.id_for(call.header(&self.header));
        if set {
            call.set_header(self.header.clone(), id.clone());
        }
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

/// A process-unique id: a random per-process prefix (so a restarted runner does not match old
/// ids) and a counter.
fn fresh_id() -> String {
    static PREFIX: OnceLock<u32> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let prefix = PREFIX.get_or_init(rand::random::<u32>);
    format!("{prefix:08x}-{:x}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Held values by correlation id, each with a deadline.
pub struct Leases<T> {
    shards: Box<[Mutex<Shard<T>>]>,
    hasher: RandomState,
    timeout: u64,
    next_sweep: AtomicU64,
    /// Leases held, kept beside the shards so that "none held" costs no lock.
    held: AtomicUsize,
}

/// Leases by correlation id; a vector because ids may repeat.
type Shard<T> = HashMap<Box<str>, Vec<Lease<T>>>;

struct Lease<T> {
    deadline: u64,
    value: T,
}

impl<T> Leases<T> {
    pub fn new(timeout: u64) -> Leases<T> {
        Leases {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            timeout,
            next_sweep: AtomicU64::new(0),
            held: AtomicUsize::new(0),
        }
    }

    fn shard(&self, id: &str) -> &Mutex<Shard<T>> {
        &self.shards[self.hasher.hash_one(id) as usize % SHARDS]
    }

    /// Holds `value` under `id` until [`Leases::take`] or expiry. A client may reuse an id (when
    /// it is request-id's), so one id can hold several values; they are released oldest first.
    pub fn insert(&self, id: &str, now: u64, value: T) {
        let lease = Lease {
            deadline: now + self.timeout,
            value,
        };
        let mut shard = lock(self.shard(id));
        self.held.fetch_add(1, Ordering::AcqRel);
        match shard.get_mut(id) {
            Some(v) => v.push(lease),
            None => {
                shard.insert(id.into(), vec![lease]);
            }
        }
    }

    /// Ends the oldest lease under `id`; `None` when there is none (it expired, or the response
    /// belongs to a request this scope did not hold).
    pub fn take(&self, id: &str) -> Option<T> {
        let mut shard = lock(self.shard(id));
        let held = shard.get_mut(id)?;
        let lease = held.remove(0);
        if held.is_empty() {
            shard.remove(id);
        }
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
            let mut expired = Vec::new();
            {
                let mut shard = lock(shard);
                shard.retain(|_, held| {
                    let (gone, kept): (Vec<Lease<T>>, Vec<_>) = std::mem::take(held)
                        .into_iter()
                        .partition(|l| l.deadline <= now);
                    self.held.fetch_sub(gone.len(), Ordering::AcqRel);
                    expired.extend(gone.into_iter().map(|l| l.value));
                    *held = kept;
                    !held.is_empty()
                });
            }
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

    #[test]
    fn leases_are_taken_oldest_first_and_expire() {
        let l: Leases<u32> = Leases::new(100);
        l.insert("a", 10, 1);
        l.insert("a", 20, 2);
        l.insert("b", 10, 3);
        assert_eq!(l.take("a"), Some(1));
        assert_eq!(l.take("nope"), None);
        let mut gone = Vec::new();
        l.sweep(115, |v| gone.push(v));
        gone.sort();
        assert_eq!(gone, [3], "b expired at 110, a's second lease lives to 120");
        assert_eq!(l.len(), 1);
        l.sweep(200, |v| gone.push(v));
        assert_eq!(gone, [3], "sweeps are spaced out");
        l.sweep(115 + SWEEP_EVERY, |v| gone.push(v));
        assert_eq!(gone, [3, 2]);
    }

    #[test]
    fn correlation_prefers_request_id() {
        let own = Correlation::new(None, &["limit-conn"]);
        assert_eq!(own.header.as_str(), "x-a6-runner-req");
        assert_eq!(&*own.var, "http_x_a6_runner_req");
        let (id, set) = own.id_for(Some("spoofed"));
        assert!(
            set && id.as_str() != "spoofed",
            "the runner's own header is never trusted"
        );
        let rid = Correlation::new(None, &["request-id", "limit-conn"]);
        assert_eq!(
            rid.id_for(Some("abc")),
            (Text::from("abc".to_owned()), false)
        );
        assert!(rid.id_for(None).1);
        assert_eq!(&*Correlation::new(Some("X-Corr"), &[]).var, "http_x_corr");
    }
}
