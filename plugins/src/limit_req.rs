//! `limit-req` (docs/plugins/traffic.md): leaky-bucket pacing at `rate` requests per second per key,
//! with `burst` extra requests delayed rather than rejected.
//!
//! The algorithm is resty.limit.req's: `excess' = max(excess − rate·Δt + 1, 0)`; reject when
//! `excess' > burst` (without committing), otherwise commit and delay by `excess'/rate`. Kept as
//! one atomic per key, the time `x` at which the bucket drains (`excess = (x − now)·rate`):
//! `x' = max(x + 1/rate, now)`, reject when `x' − now > burst/rate`, delay `x' − now`. That is
//! a compare-and-swap, no lock.
//!
//! * Pass: after an asynchronous sleep of the delay (when ≥ 1 ms and not `nodelay`), no action.
//! * Reject: `rejected_code` (default 503), `rejected_headers`, `{"error_msg": rejected_msg}\n`,
//!   and *(ext)* with `retry_after`, `Retry-After` = seconds until a slot frees.
//! * *(ext)* `dry_run`: never rejects (nor delays for the limit); a would-be rejection adds
//!   `x-dry-run-reject: limit-req`. `specific_items`, `match_strategy`/`pattern`/`unmatched`
//!   (per-key rates) and `warm_up_period_sec`/`cold_factor` (Sentinel's warm-up) as limit-count.
//! * The largest delay is `burst/rate`; it must stay below 55 s (the gateway gives up reading
//!   after 60 s), so such a conf is rejected unless `nodelay` is set.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use ext_plugin_sdk::*;
use crate::redis::{self, conf::Storage, req::RedisReq};
use crate::support::clock::{secs_until, Nanos, NANOS_PER_MS, NANOS_PER_SEC};
use crate::support::key::{KeySource, KeyType};
use crate::support::keyed::{export_key_count, KeyedStore};
use crate::support::reject::{self, HeaderConf};
use crate::support::specific_items::{MatchStrategy, PerKey, Selected, Unmatched};
use crate::support::warm_up::WarmUp;

/// The longest delay the plugin may add (APISIX reads the runner's answer for 60 s at most).
pub const MAX_DELAY_SECS: f64 = 55.0;

/// The slowest `rate` (and specific item rate) accepted: one request per ~11.6 days. APISIX only
/// asks for a rate above 0; a slower one would make the per-request interval (1/rate in
/// nanoseconds) leave u64, where an audit found it wrapping to "admit everything".
pub const MIN_RATE: f64 = 1e-6;

/// The fastest `rate` accepted (a request per nanosecond is the clock's resolution).
pub const MAX_RATE: f64 = 1e9;

/// Whether `rate` is one the buckets can pace exactly.
fn rate_in_bounds(rate: f64) -> bool {
    (MIN_RATE..=MAX_RATE).contains(&rate)
}

crate::with_redis_fields! {
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitReqConf {
    rate: f64,
    burst: f64,
    #[serde(default)]
    key_type: KeyType,
    #[serde(default = "default_key")]
    key: String,
    #[serde(default)]
    nodelay: bool,
    #[serde(default = "default_rejected_code")]
    rejected_code: u16,
    rejected_msg: Option<String>,
    #[serde(default)]
    rejected_headers: Vec<HeaderConf>,
    #[serde(default = "reject::default_policy")]
    policy: String,
    #[serde(default)]
    retry_after: bool,
    #[serde(default)]
    allow_degradation: bool,
    #[serde(default = "reject::default_max_keys")]
    max_keys: usize,
    #[serde(default)]
    dry_run: bool,
    // (ext) limiter extras: support::specific_items, support::warm_up.
    specific_items: Option<HashMap<String, f64>>,
    match_strategy: Option<MatchStrategy>,
    pattern: Option<String>,
    unmatched: Option<Unmatched>,
    warm_up_period_sec: Option<f64>,
    cold_factor: Option<f64>,
}
}

fn default_key() -> String {
    "remote_addr".into()
}
fn default_rejected_code() -> u16 {
    503
}

pub struct LimitReq {
    key: KeySource,
    buckets: Arc<Buckets>,
    nodelay: bool,
    reject: Stop,
    retry_after: bool,
    allow_degradation: bool,
    dry_run: bool,
    /// *(ext)* Per-key rates and patterns, and warm-up; `rate`/`burst` to scale from.
    per_key: Option<PerKey<f64>>,
    warm_up: Option<Arc<WarmUp>>,
    rate: f64,
    burst: f64,
    clock: Clock,
    /// `policy: "redis"` / `"redis-cluster"`.
    redis: Option<RedisReq>,
}

/// The drain times of every key of one scope.
pub struct Buckets {
    /// Nanoseconds per request (1/rate).
    interval: u64,
    /// The most a request may wait: burst/rate.
    max_wait: u64,
    keys: KeyedStore<AtomicU64>,
}

impl Buckets {
    pub fn new(rate: f64, burst: f64, max_keys: usize) -> Buckets {
        let interval = (NANOS_PER_SEC as f64 / rate).round() as u64;
        let max_wait = (burst * NANOS_PER_SEC as f64 / rate).round() as u64;
        Buckets {
            interval,
            max_wait,
            // Once drained a key's cell holds nothing; keep it a little longer than that.
            keys: KeyedStore::new(
                max_keys,
                max_wait.saturating_add(interval).max(NANOS_PER_SEC).saturating_mul(2),
            ),
        }
    }

    /// `Ok(delay)` for an admitted request, `Err(wait)` (until a slot frees) for a rejected one.
    pub fn acquire(&self, key: &str, now: u64) -> Result<u64, u64> {
        self.acquire_at(key, now, self.interval, self.max_wait)
    }

    /// [`Buckets::acquire`] at this request's pace (a specific item's rate, or a warming key's):
    /// `interval` nanoseconds per request, at most `max_wait` of delay.
    pub fn acquire_at(&self, key: &str, now: u64, interval: u64, max_wait: u64) -> Result<u64, u64> {
        let cell = self.keys.get_or_insert(key, now, || AtomicU64::new(0));
        let mut drained_at = cell.load(Ordering::Acquire);
        loop {
            // 0: the key's first request, with no excess.
            let next = if drained_at == 0 {
                now
            } else {
                // Saturating: a slow pace (or a warming key's share of it) must reject, never
                // wrap round to "drained".
                drained_at.saturating_add(interval).max(now)
            };
            let excess = next - now;
            if excess > max_wait {
                return Err(excess - max_wait);
            }
            match cell.compare_exchange_weak(drained_at, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Ok(excess),
                Err(current) => drained_at = current,
            }
        }
    }
}

impl Plugin for LimitReq {
    const NAME: &'static str = "limit-req";
    type Conf = LimitReqConf;

    fn prepare(mut conf: LimitReqConf, env: &mut PrepareEnv<'_>) -> Result<Self, ConfError> {
        let clock = env.clock().clone();
        let fields = conf.take_redis_fields();
        let storage = redis::conf::storage(Self::NAME, &conf.policy, fields, None, env)?;
        reject::check_max_keys(conf.max_keys)?;
        if !rate_in_bounds(conf.rate) {
            return Err(ConfError::new(format!(
                "`rate` must be {MIN_RATE} to {MAX_RATE} requests per second, got {}",
                conf.rate
            )));
        }
        if !(conf.burst >= 0.0 && conf.burst.is_finite()) {
            return Err(ConfError::new(format!("`burst` must be 0 or more, got {}", conf.burst)));
        }
        let max_delay = conf.burst / conf.rate;
        if !conf.nodelay && max_delay > MAX_DELAY_SECS {
            return Err(ConfError::new(format!(
                "`burst`/`rate` = {max_delay} s would delay requests past the gateway's 60 s read \
                 timeout; keep it at most {MAX_DELAY_SECS} s or set `nodelay`"
            )));
        }
        let (rate, burst, max_keys) = (conf.rate, conf.burst, conf.max_keys);
        let per_key = PerKey::parse(
            conf.specific_items,
            conf.match_strategy,
            conf.pattern,
            conf.unmatched,
            |k, r| match rate_in_bounds(*r) && (conf.nodelay || burst / r <= MAX_DELAY_SECS) {
                true => Ok(()),
                false => Err(ConfError::field(
                    &format!("specific_items.{k}"),
                    format!("a rate of {MIN_RATE} to {MAX_RATE} (and with `burst` at most {MAX_DELAY_SECS} s of delay), got {r}"),
                )),
            },
        )?;
        let warm_up = WarmUp::from_conf(conf.warm_up_period_sec, conf.cold_factor, max_keys)?
            .map(|w| env.state(|| w));
        let redis = match storage {
            Storage::Local => None,
            Storage::Redis(policy) => Some(RedisReq::new(policy, rate, burst, max_keys)),
        };
        redis::check_extras(redis.is_some(), per_key.is_some(), warm_up.is_some())?;
        let buckets = env.state(|| Buckets::new(rate, burst, max_keys));
        export_key_count(env, Self::NAME, None, &buckets, |b| b.keys.len() as i64);
        Ok(LimitReq {
            key: KeySource::parse(conf.key_type, &conf.key)?,
            buckets,
            nodelay: conf.nodelay,
            reject: reject::rejection(
                "rejected_code",
                conf.rejected_code,
                conf.rejected_msg.as_deref(),
                &conf.rejected_headers,
            )?,
            retry_after: conf.retry_after,
            allow_degradation: conf.allow_degradation,
            dry_run: conf.dry_run,
            per_key,
            warm_up,
            rate,
            burst,
            clock,
            redis,
        })
    }

    async fn request_filter(&self, call: &mut RequestCall<'_>) -> Result<Flow, PluginError> {
        let Some(key) = self.key.resolve_or_client(call).await? else {
            return Ok(reject::undecided(self.allow_degradation, "no key, no client address"));
        };
        let now = self.clock.nanos();
        let verdict = if let Some(r) = &self.redis {
            // Per-key items and warm-up are refused with Redis at prepare.
            match r.acquire(&key, now).await {
                Ok(d) => d,
                Err(why) if r.policy.fallback_local => {
                    tracing::debug!(%why, "limit-req: redis unavailable, limiting locally");
                    self.buckets.acquire(&key, now)
                }
                Err(why) => return Ok(redis::unavailable(Self::NAME, self.allow_degradation, &why)),
            }
        } else if self.per_key.is_none() && self.warm_up.is_none() {
            self.buckets.acquire(&key, now)
        } else {
            let (key, rate) = match self.per_key.as_ref().map(|p| p.select(key.clone())) {
                Some(Selected::Pass) => return Ok(Flow::Continue),
                Some(Selected::Limit(k, item)) => (k, item.copied().unwrap_or(self.rate)),
                None => (key, self.rate),
            };
            WarmUp::check(self.warm_up.as_deref(), &key, now, rate, |share| {
                let pace = NANOS_PER_SEC as f64 / (rate * share);
                let v = self.buckets.acquire_at(&key, now, pace as u64, (self.burst * pace) as u64);
                (v.is_ok(), v)
            })
        };
        let verdict = match verdict {
            Err(_) if self.dry_run => {
                reject::dry_run_reject(call, Self::NAME);
                Ok(0)
            }
            v => v,
        };
        match verdict {
            Ok(delay) => {
                if !self.nodelay && delay >= NANOS_PER_MS {
                    tokio::time::sleep(Duration::from_nanos(delay)).await;
                    call.mark_delayed();
                }
                Ok(Flow::Continue)
            }
            Err(wait) => {
                let mut stop = self.reject.clone();
                if self.retry_after {
                    stop = stop.with_header("Retry-After", secs_until(0, wait).max(1).to_string());
                }
                Ok(Flow::Stop(stop))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ext_plugin_sdk::harness::{TestCall, TestEnv};
    use ext_plugin_sdk::harness::request;

    const MS: u64 = NANOS_PER_MS;

    #[test]
    fn delays_and_rejects_as_the_formula_says() {
        // rate 10/s (100 ms per request), burst 2: up to 200 ms of delay.
        let b = Buckets::new(10.0, 2.0, 100);
        let t = 1000 * NANOS_PER_SEC;
        assert_eq!(b.acquire("k", t), Ok(0));
        assert_eq!(b.acquire("k", t), Ok(100 * MS));
        assert_eq!(b.acquire("k", t), Ok(200 * MS));
        assert_eq!(b.acquire("k", t), Err(100 * MS), "excess 3 > burst 2");
        assert_eq!(b.acquire("k", t), Err(100 * MS), "a rejection is not committed");
        // 150 ms later the excess has drained by 1.5: x = t+200ms → x' = t+300ms, wait 150 ms.
        assert_eq!(b.acquire("k", t + 150 * MS), Ok(150 * MS));
        assert_eq!(b.acquire("other", t), Ok(0));
        // Long idle: back to no excess (resty clamps at 0).
        assert_eq!(b.acquire("k", t + 10 * NANOS_PER_SEC), Ok(0));
    }

    /// Issue 11 #5: a pace slower than u64 nanoseconds hold rejects; it must not wrap round to
    /// "drained" and admit everything.
    #[test]
    fn the_slowest_paces_saturate_instead_of_wrapping() {
        let t = 1000 * NANOS_PER_SEC;
        for b in [Buckets::new(1e-12, 0.0, 100), Buckets::new(MIN_RATE, 1e300, 100)] {
            assert_eq!(b.acquire("k", t), Ok(0));
            assert!(b.acquire_at("k", t, u64::MAX, 0).is_err(), "a warming key's slowest pace");
        }
        let b = Buckets::new(1e-12, 0.0, 100);
        b.acquire("k", t).unwrap();
        assert!(b.acquire("k", t + NANOS_PER_SEC).is_err());
    }

    #[test]
    fn rates_out_of_bounds_are_refused() {
        for conf in [
            r#"{"rate": 1e-12, "burst": 0}"#,
            r#"{"rate": 0, "burst": 0}"#,
            r#"{"rate": 2e9, "burst": 0}"#,
            r#"{"rate": 1, "burst": 0, "specific_items": {"a": 1e-12}}"#,
        ] {
            let e = plugin(conf, &TestEnv::default()).err().unwrap();
            assert!(e.message().contains("rate") || e.message().contains("specific_items"), "{conf}: {e}");
        }
        assert!(plugin(r#"{"rate": 0.000001, "burst": 0}"#, &TestEnv::default()).is_ok());
    }

    #[test]
    fn burst_zero_paces_exactly() {
        let b = Buckets::new(2.0, 0.0, 100);
        let t = 1000 * NANOS_PER_SEC;
        assert_eq!(b.acquire("k", t), Ok(0));
        assert_eq!(b.acquire("k", t + 499 * MS), Err(MS));
        assert_eq!(b.acquire("k", t + 500 * MS), Ok(0));
    }

    fn plugin(conf: &str, env: &TestEnv) -> Result<LimitReq, ConfError> {
        let parsed: LimitReqConf = serde_json::from_str(conf).map_err(ConfError::from)?;
        env.with("route#1#ext-plugin-pre-req#1", LimitReq::NAME, conf, &[], |e| {
            LimitReq::prepare(parsed, e)
        })
    }

    #[tokio::test(start_paused = true)]
    async fn the_delay_is_an_async_sleep() {
        let env = TestEnv::default().with_clock(Clock::manual());
        let p = plugin(r#"{"rate": 4, "burst": 1, "rejected_code": 429, "retry_after": true}"#, &env).unwrap();
        let run = || async {
            let mut c = TestCall::new(request(Method::Get, "/"));
            let start = tokio::time::Instant::now();
            let flow = p.request_filter(&mut c.call()).await.unwrap();
            (flow, start.elapsed())
        };
        assert_eq!(run().await, (Flow::Continue, Duration::ZERO));
        assert_eq!(run().await, (Flow::Continue, Duration::from_millis(250)));
        let (flow, waited) = run().await;
        assert_eq!(waited, Duration::ZERO, "a rejection does not wait");
        let Flow::Stop(s) = flow else { panic!("must reject") };
        assert_eq!(s.status, 429);
        assert_eq!(s.headers, vec![Pair::new("Retry-After", "1")]);
    }

    #[test]
    fn bad_confs_name_the_field() {
        let env = TestEnv::default();
        for (conf, why) in [
            (r#"{"rate": 0, "burst": 1}"#, "rate"),
            (r#"{"rate": 1, "burst": -1}"#, "burst"),
            (r#"{"rate": 1, "burst": 60}"#, "60 s read timeout"),
            (r#"{"rate": 1}"#, "burst"),
            (r#"{"rate": 1, "burst": 1, "policy": "redis-cluster"}"#, "policy"),
            (r#"{"rate": 1, "burst": 1, "rejected_msg": ""}"#, "rejected_msg"),
        ] {
            let e = plugin(conf, &env).err().expect(conf);
            assert!(e.message().contains(why), "{conf}: {e}");
        }
        assert!(plugin(r#"{"rate": 1, "burst": 60, "nodelay": true}"#, &env).is_ok());
    }
}
