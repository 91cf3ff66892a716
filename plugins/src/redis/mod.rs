//! Cluster-wide limits on Redis for limit-count, limit-req and limit-conn (`policy: "redis"` /
//! `"redis-cluster"`): the conf fields ([`conf`]), the shared backends ([`backend`]), key names
//! ([`keys`]) and each limiter's Redis algorithm ([`count`] with [`lease`], [`req`], [`conn`]).
//!
//! When Redis cannot answer (down, stalled past `redis_timeout`, breaker open) a limiter falls
//! back, in this order: *(ext)* `fallback: "local"` decides with the in-process limiter;
//! else `allow_degradation` lets the request pass; else 500, as APISIX answers.

/// Lua that sets `now` to Redis's clock in milliseconds, for scripts to start with
/// (`concat!(lua_now_ms!(), r"...")`): the gateways' clocks never enter a shared limit.
macro_rules! lua_now_ms {
    () => {
        "local t = redis.call('TIME')\n\
         local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    };
}

pub mod backend;
pub mod conf;
pub mod conn;
pub mod count;
pub mod keys;
pub mod lease;
pub mod req;

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

/// The *(ext)* extras whose state the Redis algorithms do not share: warm-up (a per-node view of
/// each key's rate) and, for limit-req, per-key rates (its script has one rate per conf). Refused
/// with a Redis policy rather than applied per node. limit-count's per-key items only pick the
/// key and its count, which Redis shares as is: it passes `per_key` false.
pub fn check_extras(
    redis: bool,
    per_key: bool,
    warm_up: bool,
) -> Result<(), ext_plugin_sdk::ConfError> {
    let refused = match (per_key, warm_up) {
        _ if !redis => return Ok(()),
        (_, true) => "`warm_up_period_sec`",
        (true, false) => "`specific_items` / `pattern`",
        (false, false) => return Ok(()),
    };
    Err(ext_plugin_sdk::ConfError::new(format!(
        "{refused} keeps per-runner state and is not supported with a Redis `policy`; use it \
         with \"local\""
    )))
}
