//! limit-conn on Redis: APISIX's sorted set of in-flight requests per key, with leases.
//!
//! * Acquire, one script: purge the members whose lease ended, count, and when below
//!   `conn + burst` add this request with the score `now + lease` (Redis `TIME`, so the
//!   gateways' clocks do not matter) and keep the key alive one lease. The answer is the
//!   request's place `n`, from which the delay is computed as the local limiter does.
//! * The member is `<runner instance>:<pid>:<n>`, unique across runners (a random id per
//!   process) and requests (a counter), never the client's request id, which may repeat.
//! * The lease is `key_ttl` when set, else `lease_timeout` (30 s by default): a runner that dies
//!   holding slots frees them within one lease (APISIX's default `key_ttl` is an hour).
//! * Release (the response phase, a rejection by a later rule, or the local lease sweep) is a
//!   `ZREM` left to a background task, retried once, so no phase waits on Redis for it; a
//!   release that fails is repaired by the lease.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, OnceLock};

use ext_plugin_sdk::ConfError;
use redis::Script;

use super::backend::{Backend, Unavailable};
use super::conf::{RedisPolicy, Storage};

/// `KEYS[1]` the set; `ARGV` limit (`conn + burst`), lease (ms), member. Returns
/// `{admitted, n}`: the request's place, or the count found when rejected.
static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        lua_now_ms!(),
        r"
local limit = tonumber(ARGV[1])
local lease = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local n = redis.call('ZCARD', KEYS[1])
if n >= limit then
  return {0, n}
end
redis.call('ZADD', KEYS[1], now + lease, ARGV[3])
redis.call('PEXPIRE', KEYS[1], lease)
return {1, n + 1}
",
    ))
});

/// `KEYS[1]` the set; `ARGV[1]` the member to take out.
static RELEASE: LazyLock<Script> =
    LazyLock::new(|| Script::new("return redis.call('ZREM', KEYS[1], ARGV[1])"));

/// A Redis-backed limit-conn conf.
pub struct RedisConn {
    pub policy: RedisPolicy,
    lease_ms: i64,
}

/// A slot held in Redis: where, and under which member.
pub struct Held {
    backend: Arc<Backend>,
    key: String,
    member: String,
}

/// The runner's instance id and a fresh member name.
fn member() -> String {
    static INSTANCE: OnceLock<u64> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let instance = INSTANCE.get_or_init(rand::random::<u64>);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{instance:016x}:{}:{n:x}", std::process::id())
}

impl RedisConn {
    /// Counts a request of `key` in for rule `index`: `Ok(Ok((held, n)))` with its place `n`,
    /// or `Ok(Err(()))` at `limit` in flight.
    pub async fn acquire(
        &self,
        index: usize,
        key: &str,
        limit: u64,
    ) -> Result<Result<(Held, u64), ()>, Unavailable> {
        let rkey = self.policy.keys.key(index, key);
        let member = member();
        let limit = limit.min(i64::MAX as u64) as i64;
        let (admitted, n): (i64, i64) = self
            .policy
            .backend
            .eval(&ACQUIRE, &rkey, &[limit, self.lease_ms], Some(&member))
            .await?;
        if admitted == 0 {
            return Ok(Err(()));
        }
        let held = Held {
            backend: self.policy.backend.clone(),
            key: rkey,
            member,
        };
        Ok(Ok((held, n.max(1) as u64)))
    }
}

impl Held {
    /// Frees the slot in the background (retried once); without a runtime (a test harness) it
    /// is left to the lease.
    pub fn release(&self) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (backend, key, member) = (self.backend.clone(), self.key.clone(), self.member.clone());
        rt.spawn(async move {
            for _ in 0..2 {
                let freed: Result<i64, _> = backend.eval(&RELEASE, &key, &[], Some(&member)).await;
                if freed.is_ok() {
                    return;
                }
            }
            tracing::debug!(key, "limit-conn: release failed; the lease frees the slot");
        });
    }
}

/// Resolves limit-conn's storage: `Some` on Redis, with the lease from `key_ttl` (seconds, 1 to
/// 86400; Redis policies only) or else `lease_timeout`.
pub fn check_conf(
    storage: Storage,
    key_ttl: Option<i64>,
    lease_timeout: f64,
) -> Result<Option<RedisConn>, ConfError> {
    match storage {
        Storage::Local => match key_ttl {
            Some(_) => Err(ConfError::new(
                "`key_ttl` applies to the Redis policies only (`policy` is \"local\")",
            )),
            None => Ok(None),
        },
        Storage::Redis(policy) => {
            let lease_ms = match key_ttl {
                Some(ttl) if !(1..=86_400).contains(&ttl) => {
                    return Err(ConfError::new(format!(
                        "`key_ttl` must be 1 to 86400 seconds, got {ttl}"
                    )))
                }
                Some(ttl) => ttl * 1000,
                None => (lease_timeout * 1000.0).round() as i64,
            };
            Ok(Some(RedisConn { policy, lease_ms }))
        }
    }
}
