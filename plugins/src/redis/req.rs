//! limit-req on Redis: the local GCRA (the time the bucket drains, one value per key) kept in
//! Redis and computed on Redis `TIME`, so the gateways' clocks do not matter. One script round
//! trip per request; a rejected key is remembered locally until a slot frees ([`ClosedUntil`],
//! exact: the drain time only moves forward).

use std::sync::LazyLock;

use redis::Script;

use super::backend::Unavailable;
use super::conf::RedisPolicy;
use super::ClosedUntil;
use crate::support::clock::NANOS_PER_SEC;

/// `KEYS[1]` the drain time (µs, Redis clock); `ARGV` interval and largest wait (µs).
/// Returns `{1, delay}` or `{0, wait until a slot frees}`, in µs.
static GCRA: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local max_wait = tonumber(ARGV[2])
local drained = tonumber(redis.call('GET', KEYS[1]) or '0')
local nxt = now
if drained > 0 then nxt = math.max(drained + interval, now) end
local excess = nxt - now
if excess > max_wait then return {0, excess - max_wait} end
redis.call('SET', KEYS[1], string.format('%d', nxt), 'PX', math.floor(excess / 1000) + 1000)
return {1, excess}
",
    )
});

pub struct RedisReq {
    pub policy: RedisPolicy,
    interval_us: i64,
    max_wait_us: i64,
    closed: ClosedUntil,
}

impl RedisReq {
    pub fn new(policy: RedisPolicy, rate: f64, burst: f64, max_keys: usize) -> RedisReq {
        let interval_us = (1e6 / rate).round().max(1.0) as i64;
        let max_wait_us = (burst * 1e6 / rate).round() as i64;
        RedisReq {
            policy,
            interval_us,
            max_wait_us,
            closed: ClosedUntil::new(
                max_keys,
                // Saturating: `burst`/`rate` with `nodelay` may be any size (issue 11 #5).
                (max_wait_us.max(0) as u64)
                    .saturating_add(interval_us as u64)
                    .saturating_mul(2000)
                    .saturating_add(2 * NANOS_PER_SEC),
            ),
        }
    }

    /// As `Buckets::acquire`: `Ok(Ok(delay))` / `Ok(Err(wait))` in nanoseconds.
    pub async fn acquire(&self, key: &str, now: u64) -> Result<Result<u64, u64>, Unavailable> {
        if let Some(wait) = self.closed.closed_for(key, now) {
            return Ok(Err(wait));
        }
        let rkey = self.policy.keys.key(0, key);
        let (admitted, us): (i64, i64) = self
            .policy
            .backend
            .eval(&GCRA, &rkey, &[self.interval_us, self.max_wait_us], None)
            .await?;
        let ns = (us.max(0) as u64).saturating_mul(1000);
        if admitted == 1 {
            Ok(Ok(ns))
        } else {
            self.closed.close(key, now, now.saturating_add(ns));
            Ok(Err(ns))
        }
    }
}
