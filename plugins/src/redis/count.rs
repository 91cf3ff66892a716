//! limit-count on Redis, in one of three modes chosen at prepare:
//!
//! * **exact, fixed window** (the default): one script round trip per admitted request. The
//!   script checks before it counts, so a rejected request is not counted (APISIX's script
//!   counts it), and starts the window (`PX time_window`) at the key's first request, as the
//!   local fixed window does.
//! * **exact, sliding window** (`window_type: "sliding"`): one round trip too (APISIX needs two).
//!   A hash per key holds one field per bucket, as the local LeapArray, on Redis `TIME` so the
//!   gateways' clocks do not matter.
//! * **leasing** (`sync_interval`): [`super::lease`] — quota taken from Redis in grants and
//!   spent locally, never more than `count` per window cluster-wide.
//!
//! In both exact modes a key found exhausted is remembered locally until the count can next
//! drop ([`ClosedUntil`]): that is exact (within a window the count only grows until the key
//! expires or its oldest bucket leaves) and keeps a flood of rejected requests off Redis.

use std::sync::LazyLock;

use ext_plugin_sdk::Clock;
use redis::Script;

use super::backend::Unavailable;
use super::conf::RedisPolicy;
use super::lease::Leasing;
use super::ClosedUntil;
use crate::limit_count::{Quota, Verdict};
use crate::support::clock::{secs_to_nanos, NANOS_PER_MS};

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

/// `KEYS[1]` a hash of bucket start (ms, Redis clock) → count; `ARGV` count, bucket length
/// (ms), buckets. Returns `{admitted, used, ms until the oldest counted bucket leaves}`.
static SLIDING: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        lua_now_ms!(),
        r"
local limit = tonumber(ARGV[1])
local bucket = tonumber(ARGV[2])
local span = bucket * tonumber(ARGV[3])
local flat = redis.call('HGETALL', KEYS[1])
local used, oldest = 0, nil
for i = 1, #flat, 2 do
  local start = tonumber(flat[i])
  if now - start >= span then
    redis.call('HDEL', KEYS[1], flat[i])
  else
    used = used + tonumber(flat[i + 1])
    if oldest == nil or start < oldest then oldest = start end
  end
end
if used >= limit then
  return {0, used, oldest + span - now}
end
local cur = now - now % bucket
redis.call('HINCRBY', KEYS[1], string.format('%d', cur), 1)
redis.call('PEXPIRE', KEYS[1], span)
if oldest == nil then oldest = cur end
return {1, used + 1, oldest + span - now}
",
    ))
});

/// How a conf counts on Redis.
pub enum Mode {
    Fixed,
    /// A sliding window of this many buckets.
    Sliding(u64),
    /// Quota leasing, synced at least every this many seconds.
    Leasing(f64),
}

/// A Redis-backed limit-count conf: the backend, and per quota the keys known exhausted (exact
/// modes) or the local pools of leased quota.
pub struct RedisCount {
    pub policy: RedisPolicy,
    mode: Mode,
    clock: Clock,
    closed: Vec<ClosedUntil>,
    leasing: Vec<Leasing>,
}

impl RedisCount {
    /// `quotas`: how many quotas the conf has (1, or one per rule); `max_keys` bounds each
    /// exhausted-key cache and lease pool.
    pub fn new(
        policy: RedisPolicy,
        mode: Mode,
        quotas: usize,
        max_keys: usize,
        clock: Clock,
    ) -> RedisCount {
        // An entry is useless once its window has ended; a minute idle bounds the rest.
        let idle = 60_000 * NANOS_PER_MS;
        let leasing = match mode {
            Mode::Leasing(every) => (0..quotas)
                .map(|_| Leasing::new(secs_to_nanos(every), max_keys, idle))
                .collect(),
            _ => Vec::new(),
        };
        RedisCount {
            policy,
            mode,
            clock,
            closed: (0..quotas)
                .map(|_| ClosedUntil::new(max_keys, idle))
                .collect(),
            leasing,
        }
    }

    /// Checks and counts one request of `key` for quota `index` (local time `now`, ns) in an
    /// exact mode; `fixed_window`: every request of the quota has the same window.
    async fn acquire(
        &self,
        index: usize,
        key: &str,
        q: Quota,
        now: u64,
        fixed_window: bool,
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
        let backend = &self.policy.backend;
        let (admitted, used, pttl): (i64, i64, i64) = match self.mode {
            Mode::Sliding(buckets) => {
                // As the local window: a window read from the request counts apart per length.
                let rkey = match fixed_window {
                    true => self.policy.keys.key(index, key),
                    false => self
                        .policy
                        .keys
                        .key(index, &format!("{key}\u{0}{window_ms}")),
                };
                let bucket_ms = (window_ms / buckets as i64).max(1);
                let args = [count, bucket_ms, buckets as i64];
                backend.eval(&SLIDING, &rkey, &args, None).await?
            }
            Mode::Fixed | Mode::Leasing(_) => {
                let rkey = self.policy.keys.key(index, key);
                backend
                    .eval(&FIXED, &rkey, &[count, window_ms], None)
                    .await?
            }
        };
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

    /// Checks and counts one request of `key` for quota `index` at local time `now` (ns). In
    /// the exact modes an exhausted key is remembered until its count can drop when the quota is
    /// the same for every request (`fixed`).
    pub async fn acquire_cached(
        &self,
        index: usize,
        key: &str,
        q: Quota,
        now: u64,
        fixed: bool,
    ) -> Result<Verdict, Unavailable> {
        if let Mode::Leasing(_) = self.mode {
            let rkey = || self.policy.keys.key(index, key);
            return self.leasing[index]
                .acquire(&self.policy.backend, key, rkey, q, now, &self.clock)
                .await;
        }
        let v = self.acquire(index, key, q, now, fixed).await?;
        if fixed && !v.admitted && v.reset_in > 0 {
            self.closed[index].close(key, now, now.saturating_add(v.reset_in));
        }
        Ok(v)
    }
}

/// limit-count's own Redis-related fields, resolved to a [`Mode`] (`None` for the local
/// policy): `sync_interval` (APISIX: -1 = off, else at least 0.1 and below `time_window`, Redis
/// policies only) and the window type. `windows`: each quota's `time_window` in seconds when it
/// is a number.
pub fn check_conf(
    storage: &super::conf::Storage,
    sync_interval: Option<f64>,
    sliding: Option<usize>,
    windows: impl IntoIterator<Item = Option<u64>>,
) -> Result<Option<Mode>, ext_plugin_sdk::ConfError> {
    use ext_plugin_sdk::ConfError;
    let redis = matches!(storage, super::conf::Storage::Redis(_));
    let sync = match sync_interval {
        None | Some(-1.0) => None,
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
        Some(v) => Some(v),
    };
    if !redis {
        return Ok(None);
    }
    Ok(Some(match (sync, sliding) {
        (Some(_), Some(_)) => {
            return Err(ConfError::new(
                "`sync_interval` (quota leasing) works on a fixed window only on Redis; use \
                 `window_type` \"fixed\" or leave `sync_interval` out",
            ))
        }
        (Some(v), None) => {
            if let Some(w) = windows.into_iter().flatten().find(|&w| v >= w as f64) {
                return Err(ConfError::new(format!(
                    "`sync_interval` should be smaller than `time_window` ({v} >= {w})"
                )));
            }
            Mode::Leasing(v)
        }
        (None, Some(buckets)) => Mode::Sliding(buckets as u64),
        (None, None) => Mode::Fixed,
    }))
}

/// The answer when Redis cannot decide and there is no local fallback: `None` (pass) with
/// `allow_degradation`, else APISIX's 500 `{"error_msg":"failed to limit count"}`.
pub fn unavailable(allow_degradation: bool, why: &Unavailable) -> Option<ext_plugin_sdk::Stop> {
    tracing::debug!(%why, allow_degradation, "limit-count: redis unavailable");
    (!allow_degradation)
        .then(|| ext_plugin_sdk::Stop::json_message(500, "error_msg", "failed to limit count"))
}
