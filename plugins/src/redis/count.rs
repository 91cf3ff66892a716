//! limit-count on Redis, exact mode: one script round trip per admitted request.
//!
//! The script checks before it counts, so a rejected request is not counted (APISIX's script
//! counts it), and starts the window (`PX time_window`) at the key's first request, as the local
//! fixed window does. A key found exhausted is remembered locally until its window ends
//! ([`ClosedUntil`]): that is exact (the count only grows until the key expires) and keeps a
//! flood of rejected requests off Redis.

use std::sync::LazyLock;

use redis::Script;

use super::backend::Unavailable;
use super::conf::RedisPolicy;
use super::ClosedUntil;
use crate::limit_count::{Quota, Verdict};
use crate::support::clock::NANOS_PER_MS;

/// `KEYS[1]` the counter; `ARGV` count, window (ms). Returns `{admitted, used, pttl}`.
static FIXED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local ttl = redis.call('PTTL', KEYS[1])
if used == 0 or ttl == -2 then
  redis.call('SET', KEYS[1], 1, 'PX', window)
  return {1, 1, window}
end
if ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], window)
  ttl = window
end
if used >= limit then
  return {0, used, ttl}
end
return {1, redis.call('INCR', KEYS[1]), ttl}
",
    )
});

/// A Redis-backed limit-count conf: the backend, and per quota the keys known exhausted.
pub struct RedisCount {
    pub policy: RedisPolicy,
    closed: Vec<ClosedUntil>,
}

impl RedisCount {
    /// `quotas`: how many quotas the conf has (1, or one per rule); `max_keys` bounds each
    /// exhausted-key cache.
    pub fn new(policy: RedisPolicy, quotas: usize, max_keys: usize) -> RedisCount {
        RedisCount {
            policy,
            // An entry is useless once its window has ended; a minute idle bounds the rest.
            closed: (0..quotas)
                .map(|_| ClosedUntil::new(max_keys, 60_000 * NANOS_PER_MS))
                .collect(),
        }
    }

    /// Checks and counts one request of `key` for quota `index` (local time `now`, ns).
    pub async fn acquire(
        &self,
        index: usize,
        key: &str,
        q: Quota,
        now: u64,
    ) -> Result<Verdict, Unavailable> {
        let closed = &self.closed[index];
        if let Some(reset_in) = closed.closed_for(key, now) {
            return Ok(Verdict {
                admitted: false,
                remaining: 0,
                reset_in,
            });
        }
        let window_ms = (q.window / NANOS_PER_MS).clamp(1, i64::MAX as u64) as i64;
        let count = q.count.min(i64::MAX as u64) as i64;
        let rkey = self.policy.keys.key(index, key);
        let (admitted, used, pttl): (i64, i64, i64) = self
            .policy
            .backend
            .eval(&FIXED, &rkey, &[count, window_ms], None)
            .await?;
        let reset_in = (pttl.max(0) as u64).saturating_mul(NANOS_PER_MS);
        if admitted == 0 {
            return Ok(Verdict {
                admitted: false,
                remaining: 0,
                reset_in,
            });
        }
        Ok(Verdict {
            admitted: true,
            remaining: q.count.saturating_sub(used.max(0) as u64),
            reset_in,
        })
    }

    /// [`RedisCount::acquire`], remembering an exhausted key until its window ends when the
    /// quota is the same for every request (`fixed`).
    pub async fn acquire_cached(
        &self,
        index: usize,
        key: &str,
        q: Quota,
        now: u64,
        fixed: bool,
    ) -> Result<Verdict, Unavailable> {
        let v = self.acquire(index, key, q, now).await?;
        if fixed && !v.admitted && v.reset_in > 0 {
            self.closed[index].close(key, now, now.saturating_add(v.reset_in));
        }
        Ok(v)
    }
}

/// limit-count's own Redis-related fields: `sync_interval` (APISIX: -1 = off, else at least
/// 0.1, Redis policies only) and a sliding window under Redis, neither of which this runner
/// implements on Redis yet, so both are refused rather than silently ignored.
pub fn check_conf(
    storage: &super::conf::Storage,
    sync_interval: Option<f64>,
    sliding: bool,
) -> Result<(), ext_plugin_sdk::ConfError> {
    use ext_plugin_sdk::ConfError;
    let redis = matches!(storage, super::conf::Storage::Redis(_));
    match sync_interval {
        None => {}
        Some(-1.0) => {}
        Some(v) if !redis => {
            return Err(ConfError::new(format!(
                "`sync_interval` ({v}) applies to the Redis policies only"
            )))
        }
        Some(v) if v.is_nan() || v < 0.1 => {
            return Err(ConfError::new(format!(
                "`sync_interval` should not be smaller than 0.1 (or -1 for off), got {v}"
            )))
        }
        Some(_) => {
            return Err(ConfError::new(
                "`sync_interval` (quota leasing) is not supported on Redis by this runner yet; \
                 leave it out (-1) for exact counting",
            ))
        }
    }
    if redis && sliding {
        return Err(ConfError::new(
            "`window_type` \"sliding\" is not supported on Redis by this runner yet; use \"fixed\"",
        ));
    }
    Ok(())
}

/// The answer when Redis cannot decide and there is no local fallback: `None` (pass) with
/// `allow_degradation`, else APISIX's 500 `{"error_msg":"failed to limit count"}`.
pub fn unavailable(allow_degradation: bool, why: &Unavailable) -> Option<ext_plugin_sdk::Stop> {
    tracing::debug!(%why, allow_degradation, "limit-count: redis unavailable");
    (!allow_degradation)
        .then(|| ext_plugin_sdk::Stop::json_message(500, "error_msg", "failed to limit count"))
}
