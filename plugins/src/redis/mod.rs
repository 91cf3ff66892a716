//! Cluster-wide limits on Redis for limit-count, limit-req and limit-conn (`policy: "redis"` /
//! `"redis-cluster"`): the conf fields ([`conf`]), the shared backends ([`backend`]), key names
//! ([`keys`]) and each limiter's Redis algorithm ([`count`], [`req`]; [`conn`] refuses for now).
//!
//! When Redis cannot answer (down, stalled past `redis_timeout`, breaker open) a limiter falls
//! back, in this order: *(ext)* `fallback: "local"` decides with the in-process limiter;
//! else `allow_degradation` lets the request pass; else 500, as APISIX answers.

pub mod backend;
pub mod conf;
pub mod conn;
pub mod count;
pub mod keys;
pub mod metrics;
pub mod req;
pub mod sentinel;

use std::sync::atomic::{AtomicU64, Ordering};

use crate::support::keyed::KeyedStore;

/// Keys Redis said are closed until a local time (nanoseconds on the limiter's clock): a
/// fixed window's exhausted count, a leaky bucket's next free slot. Both only move forward until
/// that time, so answering from here is exact and keeps reject floods off Redis.
pub struct ClosedUntil {
    keys: KeyedStore<AtomicU64>,
}

impl ClosedUntil {
    pub fn new(max_keys: usize, idle: u64) -> ClosedUntil {
        ClosedUntil {
            keys: KeyedStore::new(max_keys, idle),
        }
    }

    /// Nanoseconds `key` stays closed after `now`, if it is.
    pub fn closed_for(&self, key: &str, now: u64) -> Option<u64> {
        let until = self.keys.get(key)?.load(Ordering::Acquire);
        (until > now).then(|| until - now)
    }

    pub fn close(&self, key: &str, now: u64, until: u64) {
        self.keys
            .get_or_insert(key, now, || AtomicU64::new(0))
            .fetch_max(until, Ordering::AcqRel);
    }
}

/// The answer of limit-req and limit-conn when Redis cannot decide and there is no local
/// fallback: pass with `allow_degradation`, else a 500 without a body (as APISIX).
pub fn unavailable(
    plugin: &str,
    allow_degradation: bool,
    why: &backend::Unavailable,
) -> ext_plugin_sdk::Flow {
    tracing::debug!(plugin, %why, allow_degradation, "redis unavailable");
    if allow_degradation {
        ext_plugin_sdk::Flow::Continue
    } else {
        ext_plugin_sdk::Flow::Stop(ext_plugin_sdk::Stop::new(500))
    }
}

/// The *(ext)* per-key items (`specific_items`, `pattern`) and warm-up keep per-node state the
/// Redis algorithms do not share yet: refused with a Redis policy rather than applied per node.
pub fn check_extras(
    redis: bool,
    per_key: bool,
    warm_up: bool,
) -> Result<(), ext_plugin_sdk::ConfError> {
    if redis && (per_key || warm_up) {
        return Err(ext_plugin_sdk::ConfError::new(
            "`specific_items` / `pattern` and `warm_up_period_sec` are not supported with a Redis \
             `policy` yet; use them with \"local\"",
        ));
    }
    Ok(())
}
