//! `limit-conn` (docs/plugins/traffic.md): at most `conn` requests in flight per key, `burst` more
//! delayed, the rest rejected.
//!
//! * Request phase (acquire), resty.limit.conn's algorithm: count the request in; above
//!   `conn + burst` count it out again and reject; above `conn` delay it by
//!   `unit_delay·floor((n−1)/conn)` (asynchronously, at most 55 s).
//! * `conn` and `burst` may be templates (`"${http_conn ?? 5}"`), read per request; a value that
//!   is not a whole number in bounds answers 500 (`conn` at least 1, `burst` at least 0).
//! * Response phase (release): needs the same conf under `ext-plugin-post-resp`. The request
//!   carries a correlation header (`correlation_header` *(ext)*, else request-id's `x-request-id`
//!   when that plugin is in the chain, else `x-a6-runner-req`); the response phase reads it back
//!   with one `extra_info` Var and frees the slots. Unless `only_use_default_delay`, the unit
//!   delay then learns from the latency (Var `request_time`): `unit = (latency + unit)/2`.
//! * *(ext)* `lease_timeout` (default 30 s) frees slots whose release never comes: the upstream
//!   failed (the gateway answers 502 itself), a later gateway plugin rejected, or post-resp is
//!   not configured. **Without post-resp the plugin only limits how many requests start per
//!   lease period**; prepare logs a warning (once per route) until it has seen the post-resp half.
//! * `rules`: every rule whose `key` template resolves and whose `conn`/`burst` are usable
//!   applies, each with its own counts; when none applies the answer is 500.
//! * Reject: `rejected_code` (default 503), `rejected_headers`, `{"error_msg": rejected_msg}\n`.
//! * `allow_degradation`: a request the plugin cannot decide for passes instead of the 500.
//! * *(ext)* `dry_run`: over a limit, the request goes on, uncounted (the slots of the rules it
//!   passed are given back), with `x-dry-run-reject: limit-conn`.
//! * `policy: "redis"` / `"redis-cluster"`: the count is kept in Redis ([`crate::redis::conn`]),
//!   shared by every runner, each slot leased for `key_ttl` (else `lease_timeout`); the unit
//!   delay stays per runner. When Redis cannot answer: *(ext)* `fallback: "local"` counts in
//!   process, else `allow_degradation` passes, else 500 without a body, as APISIX.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use ext_plugin_sdk::*;
use crate::limit_req::MAX_DELAY_SECS;
use crate::redis::conn::RedisConn;
use crate::support::amount::{Amount, AmountConf};
use crate::support::clock::{secs_to_nanos, Nanos, NANOS_PER_MS};
use crate::support::few::Few;
use crate::support::key::{KeySource, KeyType};
use crate::support::keyed::{export_key_count, KeyedStore};
use crate::support::lease::{Correlation, Full, Leases, MAX_LEASES};
use crate::support::reject::{self, HeaderConf};
use crate::support::warn_once::{shown, Report, WarnOnce};

crate::with_redis_fields! {
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitConnConf {
    conn: Option<AmountConf>,
    burst: Option<AmountConf>,
    rules: Option<Vec<RuleConf>>,
    default_conn_delay: f64,
    #[serde(default)]
    only_use_default_delay: bool,
    #[serde(default)]
    key_type: KeyType,
    #[serde(default = "default_key")]
    key: String,
    #[serde(default = "default_rejected_code")]
    rejected_code: u16,
    rejected_msg: Option<String>,
    #[serde(default)]
    rejected_headers: Vec<HeaderConf>,
    #[serde(default = "reject::default_policy")]
    policy: String,
    #[serde(default)]
    allow_degradation: bool,
    #[serde(default = "default_lease_timeout")]
    lease_timeout: f64,
    correlation_header: Option<String>,
    #[serde(default = "reject::default_max_keys")]
    max_keys: usize,
    #[serde(default)]
    dry_run: bool,
    key_ttl: Option<i64>,
}
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleConf {
    conn: AmountConf,
    burst: Option<AmountConf>,
    key: String,
}

fn default_key() -> String {
    "remote_addr".into()
}
fn default_rejected_code() -> u16 {
    503
}
fn default_lease_timeout() -> f64 {
    30.0
}

pub struct LimitConn {
    limits: Vec<Limit>,
    /// `rules` mode: a request no rule applies to is not decided (500).
    rules: bool,
    state: Arc<ConnState>,
    corr: Correlation,
    only_default_delay: bool,
    allow_degradation: bool,
    dry_run: bool,
    reject: Stop,
    clock: Clock,
    /// `policy: "redis"` / `"redis-cluster"`.
    redis: Option<RedisConn>,
}

struct Limit {
    key: KeySource,
    /// The main key falls back to the client address; rules are skipped when nil.
    fallback: bool,
    conn: Amount,
    burst: Amount,
    index: usize,
}

/// Shared by the request (acquire) and response (release) chains of a route.
pub struct ConnState {
    pools: Vec<KeyedStore<Slot>>,
    leases: Leases<Held>,
    default_delay: u64,
    seen_post_resp: AtomicBool,
}

/// One key's in-flight count and learned unit delay.
pub struct Slot {
    in_flight: AtomicU64,
    unit_delay: AtomicU64,
}

/// One slot a request holds until its answer.
enum Hold {
    Local(Arc<Slot>),
    /// Counted in Redis; the local slot only learns the unit delay.
    Redis(crate::redis::conn::Held, Arc<Slot>),
}

/// The slots one request holds until its answer: one per applicable limit.
type Held = Few<Hold>;

fn release(held: &Held, latency: Option<u64>) {
    for hold in held.as_slice() {
        match hold {
            Hold::Local(slot) => slot.release(latency),
            Hold::Redis(redis, slot) => {
                redis.release();
                slot.learn(latency);
            }
        }
    }
}

impl Slot {
    pub(crate) fn release(&self, latency: Option<u64>) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.learn(latency);
    }

    /// The unit delay learns from a request's latency: `unit = (latency + unit)/2`.
    fn learn(&self, latency: Option<u64>) {
        if let Some(latency) = latency {
            // The gateway's `request_time` is not trusted to be small: a latency past the
            // longest delay the plugin would ever add teaches it nothing more, and the mean is
            // taken without an overflowing sum.
            let latency = latency.min(secs_to_nanos(MAX_DELAY_SECS));
            let unit = self.unit_delay.load(Ordering::Relaxed);
            self.unit_delay.store(latency / 2 + unit / 2 + (latency & unit & 1), Ordering::Relaxed);
        }
    }
}

impl Slot {
    /// The delay of the `n`th request in flight: `unit_delay·floor((n−1)/conn)` above `conn`.
    fn delay(&self, n: u64, conn: u64) -> u64 {
        if n > conn {
            self.unit_delay
                .load(Ordering::Relaxed)
                .saturating_mul((n - 1) / conn)
        } else {
            0
        }
    }
}

impl ConnState {
    /// One pool of slots per key, no delay, for a plugin that holds the slots in its own leases
    /// (opensergo's ConcurrencyLimitStrategy, which acquires with `burst` 0).
    pub(crate) fn single(max_keys: usize, idle: u64) -> ConnState {
        ConnState {
            pools: vec![KeyedStore::new(max_keys, idle)],
            leases: Leases::new(idle, MAX_LEASES),
            default_delay: 0,
            seen_post_resp: AtomicBool::new(true),
        }
    }

    /// Counts a request in: `Ok((slot, delay))`, or `Err(())` above `conn + burst`.
    pub(crate) fn acquire(
        &self,
        pool: usize,
        key: &str,
        conn: u64,
        burst: u64,
        now: u64,
    ) -> Result<(Arc<Slot>, u64), ()> {
        let slot = self.slot(pool, key, now);
        let n = slot.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        if n > conn.saturating_add(burst) {
            slot.in_flight.fetch_sub(1, Ordering::AcqRel);
            return Err(());
        }
        let delay = slot.delay(n, conn);
        Ok((slot, delay))
    }

    /// `key`'s slot in `pool`.
    fn slot(&self, pool: usize, key: &str, now: u64) -> Arc<Slot> {
        self.pools[pool].get_or_insert(key, now, || Slot {
            in_flight: AtomicU64::new(0),
            unit_delay: AtomicU64::new(self.default_delay),
        })
    }

    /// Frees the slots whose response never came.
    fn expire(&self, now: u64) {
        self.leases.sweep(now, |held| release(&held, None));
    }
}

/// Routes warned about for a missing post-resp half: each once, however often it is prepared.
static MISSING_POST_RESP: WarnOnce = WarnOnce::new();

fn warn_missing_post_resp(route: &str) {
    match MISSING_POST_RESP.report(route) {
        Report::First => tracing::warn!(
            route = ?shown(route),
            "limit-conn: slots are released only by an `ext-plugin-post-resp` entry with the \
             same conf; without it they are freed after `lease_timeout` (logged once per route)"
        ),
        Report::Overflow => tracing::warn!(
            "limit-conn: more routes lack their `ext-plugin-post-resp` half; they are not \
             reported one by one"
        ),
        Report::Again => tracing::debug!(route = ?shown(route), "limit-conn: no post-resp half yet"),
    }
}

/// How one request is limited: `Ok(limits that apply)`, or why it cannot be decided.
type Plan<'a> = Result<Few<(&'a Limit, Text, u64, u64)>, String>;

impl Plugin for LimitConn {
    const NAME: &'static str = "limit-conn";
    type Conf = LimitConnConf;

    fn prepare(mut conf: LimitConnConf, env: &mut PrepareEnv<'_>) -> Result<Self, ConfError> {
        let clock = env.clock().clone();
        let fields = conf.take_redis_fields();
        let storage = crate::redis::conf::storage(Self::NAME, &conf.policy, fields, None, env)?;
        reject::check_max_keys(conf.max_keys)?;
        if !(conf.default_conn_delay > 0.0 && conf.default_conn_delay < MAX_DELAY_SECS) {
            return Err(ConfError::new("`default_conn_delay` must be above 0 and below 55 s"));
        }
        if !(conf.lease_timeout >= 1.0 && conf.lease_timeout <= 3600.0) {
            return Err(ConfError::new("`lease_timeout` must be 1 to 3600 seconds"));
        }
        let redis = crate::redis::conn::check_conf(storage, conf.key_ttl, conf.lease_timeout)?;
        if let Some(h) = &conf.correlation_header {
            if !reject::is_token(h) {
                return Err(ConfError::new(format!("`correlation_header` {h:?} is not a header name")));
            }
        }
        let rules = conf.rules.is_some();
        let mut limits = Vec::new();
        match (conf.conn, conf.burst, conf.rules) {
            (Some(conn), Some(burst), None) => limits.push(Limit {
                key: KeySource::parse(conf.key_type, &conf.key)?,
                fallback: true,
                conn: Amount::new("conn", conn, 1)?,
                burst: Amount::new("burst", burst, 0)?,
                index: 0,
            }),
            (None, None, Some(rules)) => {
                if rules.is_empty() {
                    return Err(ConfError::new("`rules` must not be empty"));
                }
                for (i, r) in rules.into_iter().enumerate() {
                    let field = |f: &str| format!("rules[{i}].{f}");
                    limits.push(Limit {
                        key: KeySource::parse(KeyType::VarCombination, &r.key)
                            .map_err(|e| ConfError::new(format!("`rules[{i}]`: {e}")))?,
                        fallback: false,
                        conn: Amount::new(&field("conn"), r.conn, 1)?,
                        burst: match r.burst {
                            Some(b) => Amount::new(&field("burst"), b, 0)?,
                            None => Amount::Fixed(0),
                        },
                        index: i,
                    });
                }
            }
            (_, _, Some(_)) => return Err(ConfError::new("`rules` and `conn`/`burst` are exclusive")),
            _ => return Err(ConfError::new("`conn` and `burst` are required (or `rules`)")),
        }
        let default_delay = secs_to_nanos(conf.default_conn_delay);
        let lease = secs_to_nanos(conf.lease_timeout);
        let state = env.state(|| ConnState {
            pools: limits
                .iter()
                .map(|_| KeyedStore::new(conf.max_keys, 2 * lease))
                .collect(),
            leases: Leases::new(lease, MAX_LEASES),
            default_delay,
            seen_post_resp: AtomicBool::new(false),
        });
        export_key_count(env, Self::NAME, None, &state, |s| {
            s.pools.iter().map(|p| p.len() as i64).sum()
        });
        if env.attachment() == Attachment::PostResp {
            state.seen_post_resp.store(true, Ordering::Relaxed);
        } else if !state.seen_post_resp.load(Ordering::Relaxed) {
            warn_missing_post_resp(env.route());
        }
        Ok(LimitConn {
            limits,
            rules,
            state,
            corr: Correlation::new(conf.correlation_header.as_deref()),
            only_default_delay: conf.only_use_default_delay,
            allow_degradation: conf.allow_degradation,
            dry_run: conf.dry_run,
            reject: reject::rejection(
                "rejected_code",
                conf.rejected_code,
                conf.rejected_msg.as_deref(),
                &conf.rejected_headers,
            )?,
            clock,
            redis,
        })
    }

    async fn request_filter(&self, call: &mut RequestCall<'_>) -> Result<Flow, PluginError> {
        let now = self.clock.nanos();
        self.state.expire(now);
        let plan = match self.plan(call).await? {
            Ok(plan) => plan,
            Err(why) => return Ok(reject::undecided(self.allow_degradation, &why)),
        };
        let mut held = Few::None;
        let mut delay = 0u64;
        for (limit, key, conn, burst) in plan {
            let got = match self.acquire(limit, &key, conn, burst, now).await {
                Ok(got) => got,
                Err(flow) => {
                    // Redis cannot decide: pass holding what the limits before took (they are
                    // released as usual), or give them back and answer 500.
                    if flow != Flow::Continue {
                        release(&held, None);
                        return Ok(flow);
                    }
                    break;
                }
            };
            match got {
                Ok((hold, d)) => {
                    held.push(hold);
                    delay = delay.saturating_add(d);
                }
                Err(()) => {
                    // The limits already passed give their slots back.
                    release(&held, None);
                    return Ok(self.over_limit(call));
                }
            }
        }
        // Leased before the delay: a call cancelled while it sleeps still frees its slots.
        let id = self.corr.id_for_call(call);
        if let Err(Full(held)) = self.state.leases.insert(&id, now, held) {
            // A slot whose lease is not recorded could never be freed: refuse instead.
            release(&held, None);
            tracing::debug!("limit-conn: lease table full");
            return Ok(self.over_limit(call));
        }
        if delay >= NANOS_PER_MS {
            let capped = delay.min(secs_to_nanos(MAX_DELAY_SECS));
            tokio::time::sleep(Duration::from_nanos(capped)).await;
            call.mark_delayed();
        }
        Ok(Flow::Continue)
    }

    async fn response_filter(&self, call: &mut ResponseCall<'_>) -> Result<(), PluginError> {
        let Some(id) = call.var(&self.corr.var).await? else {
            tracing::debug!(header = %self.corr.header, "limit-conn: response without correlation id");
            return Ok(());
        };
        let Some(held) = self.state.leases.take(&id) else {
            return Ok(());
        };
        let latency = if self.only_default_delay {
            None
        } else {
            call.var("request_time")
                .await?
                .and_then(|t| t.trim().parse::<f64>().ok())
                .filter(|t| t.is_finite() && *t >= 0.0)
                .map(secs_to_nanos)
        };
        release(&held, latency);
        Ok(())
    }
}

impl LimitConn {
    /// Counts the request in for `limit`: in Redis when the policy says so, else (or as the
    /// fallback) in process. `Err(flow)`: Redis could not decide and this is the answer.
    async fn acquire(
        &self,
        limit: &Limit,
        key: &str,
        conn: u64,
        burst: u64,
        now: u64,
    ) -> Result<Result<(Hold, u64), ()>, Flow> {
        let local = || {
            self.state
                .acquire(limit.index, key, conn, burst, now)
                .map(|(slot, d)| (Hold::Local(slot), d))
        };
        let Some(redis) = &self.redis else {
            return Ok(local());
        };
        match redis.acquire(limit.index, key, conn.saturating_add(burst)).await {
            Ok(Ok((held, n))) => {
                let slot = self.state.slot(limit.index, key, now);
                let delay = slot.delay(n, conn);
                Ok(Ok((Hold::Redis(held, slot), delay)))
            }
            Ok(Err(())) => Ok(Err(())),
            Err(why) if redis.policy.fallback_local => {
                tracing::debug!(%why, "limit-conn: redis unavailable, counting locally");
                Ok(local())
            }
            Err(why) => Err(crate::redis::unavailable(Self::NAME, self.allow_degradation, &why)),
        }
    }

    /// The answer to a request over a limit (its slots already given back).
    fn over_limit(&self, call: &mut RequestCall<'_>) -> Flow {
        if self.dry_run {
            // Not counted in flight: enforced, it would not be.
            reject::dry_run_reject(call, Self::NAME);
            return Flow::Continue;
        }
        Flow::Stop(self.reject.clone())
    }

    /// The limits that apply to this request, with their keys and numbers resolved.
    async fn plan(&self, call: &mut RequestCall<'_>) -> Result<Plan<'_>, PluginError> {
        let mut plan = Few::None;
        for limit in &self.limits {
            // As APISIX: a rule with an unusable number or an unresolved key is skipped; the
            // main limit's unusable number is an error.
            let conn = limit.conn.resolve(call, 1).await?;
            let burst = limit.burst.resolve(call, 0).await?;
            let (conn, burst) = match (conn, burst) {
                (Ok(c), Ok(b)) => (c, b),
                (Err(why), _) | (_, Err(why)) if limit.fallback => return Ok(Err(why)),
                _ => continue,
            };
            let key = if limit.fallback {
                limit.key.resolve_or_client(call).await?
            } else {
                limit.key.resolve(call).await?
            };
            match key {
                Some(key) => plan.push((limit, key, conn, burst)),
                None if limit.fallback => return Ok(Err("no key, no client address".into())),
                None => {}
            }
        }
        if plan.is_empty() && self.rules {
            return Ok(Err("no rule applies".into()));
        }
        Ok(Ok(plan))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::support::clock::NANOS_PER_SEC;
    use ext_plugin_sdk::harness::{TestCall, TestEnv, TestResp};
    use ext_plugin_sdk::harness::request;

    fn plugin(conf: &str, env: &TestEnv, key: &str) -> Result<LimitConn, ConfError> {
        let parsed: LimitConnConf = serde_json::from_str(conf).map_err(ConfError::from)?;
        env.with(key, LimitConn::NAME, conf, &[LimitConn::NAME], |e| LimitConn::prepare(parsed, e))
    }

    /// Runs a request; `Some(correlation id)` when admitted.
    async fn acquire(p: &LimitConn) -> Option<String> {
        let mut c = TestCall::new(request(Method::Get, "/"));
        match p.request_filter(&mut c.call()).await.unwrap() {
            Flow::Continue => Some(c.set_headers()[0].value.as_deref().unwrap().to_owned()),
            Flow::Stop(s) => {
                assert_eq!(&s.body[..], b"{\"error_msg\":\"busy\"}\n");
                None
            }
        }
    }

    const CONF: &str = r#"{"conn": 2, "burst": 1, "default_conn_delay": 0.1, "rejected_msg": "busy", "lease_timeout": 30}"#;

    #[tokio::test(start_paused = true)]
    async fn rejects_above_conn_plus_burst_and_releases_on_response() {
        let env = TestEnv::default().with_clock(Clock::manual());
        let pre = plugin(CONF, &env, "route#1#ext-plugin-pre-req#1").unwrap();
        let post = plugin(CONF, &env, "route#1#ext-plugin-post-resp#1").unwrap();
        let a = acquire(&pre).await.unwrap();
        acquire(&pre).await.unwrap();
        let start = tokio::time::Instant::now();
        acquire(&pre).await.expect("the burst slot");
        assert_eq!(start.elapsed(), Duration::from_millis(100), "n=3, conn=2: one unit delay");
        assert_eq!(acquire(&pre).await, None);

        let mut resp = TestResp::new(200).with_gateway_var("http_x_a6_runner_req", &a).with_gateway_var("request_time", "0.3");
        post.response_filter(&mut resp.call()).await.unwrap();
        let start = tokio::time::Instant::now();
        assert!(acquire(&pre).await.is_some(), "the response freed a slot");
        assert_eq!(start.elapsed(), Duration::from_millis(200), "unit delay learned (0.3 + 0.1)/2");
        // The same response again holds nothing any more.
        post.response_filter(&mut resp.call()).await.unwrap();
        assert_eq!(acquire(&pre).await, None);
    }

    /// Issue 11 #5: the gateway's `request_time` may be anything; learning from it must not
    /// overflow (a panic in debug builds, a wrapped unit delay in release).
    #[test]
    fn extreme_latencies_are_capped_not_wrapped() {
        let slot = Slot {
            in_flight: AtomicU64::new(1),
            unit_delay: AtomicU64::new(u64::MAX),
        };
        slot.release(Some(u64::MAX));
        let cap = secs_to_nanos(MAX_DELAY_SECS);
        assert_eq!(slot.unit_delay.load(Ordering::Relaxed), u64::MAX / 2 + cap / 2);
        slot.release(Some(u64::MAX));
        assert!(slot.unit_delay.load(Ordering::Relaxed) <= u64::MAX / 4 + cap);
    }

    #[tokio::test(start_paused = true)]
    async fn leases_expire_when_no_response_comes() {
        let env = TestEnv::default().with_clock(Clock::manual());
        let clock = env.clock();
        let pre = plugin(CONF, &env, "route#1#ext-plugin-pre-req#1").unwrap();
        for _ in 0..3 {
            acquire(&pre).await.unwrap();
        }
        assert_eq!(acquire(&pre).await, None);
        clock.advance(Duration::from_secs(29));
        assert_eq!(acquire(&pre).await, None, "leases still live");
        clock.advance(Duration::from_nanos(NANOS_PER_SEC + 1));
        assert!(acquire(&pre).await.is_some(), "expired leases freed their slots");
    }

    const PRE: &str = "route#1#ext-plugin-pre-req#1";

    /// The statuses of `n` requests that are never answered (all in flight at once).
    async fn in_flight(p: &LimitConn, n: usize, req: &ext_plugin_sdk::model::HttpReqCallReq) -> Vec<u16> {
        let mut out = Vec::new();
        for _ in 0..n {
            let mut c = TestCall::new(req.clone());
            out.push(match p.request_filter(&mut c.call()).await.unwrap() {
                Flow::Continue => 200,
                Flow::Stop(s) => s.status,
            });
        }
        out
    }

    #[tokio::test(start_paused = true)]
    async fn conn_and_burst_may_be_variables() {
        let env = TestEnv::default().with_clock(Clock::manual());
        let conf = r#"{"conn": "${http_conn ?? 5}", "burst": "${http_burst ?? 2}",
                       "default_conn_delay": 0.1, "rejected_code": 503, "key": "remote_addr"}"#;
        let p = plugin(conf, &env, PRE).unwrap();
        let plain = request(Method::Get, "/");
        assert_eq!(in_flight(&p, 10, &plain).await, [200, 200, 200, 200, 200, 200, 200, 503, 503, 503]);
        let p = plugin(&conf.replace("0.1", "0.2"), &env, PRE).unwrap();
        let req = request(Method::Get, "/").with_header("conn", "3").with_header("burst", "4");
        assert_eq!(in_flight(&p, 8, &req).await, [200, 200, 200, 200, 200, 200, 200, 503]);
        for (name, bad) in [("conn", "0"), ("conn", "-1"), ("conn", "1.5"), ("burst", "-1"), ("burst", "1.5"),
                            ("conn", "99007199254740993")] {
            let req = request(Method::Get, "/").with_header(name, bad);
            assert_eq!(in_flight(&p, 1, &req).await, [500], "{name}: {bad}");
        }
        let req = request(Method::Get, "/").with_header("burst", "0").with_src_ip("10.9.9.9");
        assert_eq!(in_flight(&p, 1, &req).await, [200], "a burst of 0 is fine");
    }

    #[tokio::test(start_paused = true)]
    async fn every_applicable_rule_counts_and_none_answers_500() {
        let env = TestEnv::default().with_clock(Clock::manual());
        let conf = r#"{"default_conn_delay": 0.01, "rejected_code": 503, "rules": [
            {"conn": 4, "burst": 3, "key": "${http_user}"},
            {"conn": "${http_project_conn ?? 3}", "burst": "${http_project_burst ?? 2}", "key": "${http_project}"}]}"#;
        let p = plugin(conf, &env, PRE).unwrap();
        let user = request(Method::Get, "/").with_header("user", "jack");
        assert_eq!(in_flight(&p, 8, &user).await, [200, 200, 200, 200, 200, 200, 200, 503]);
        let project = request(Method::Get, "/").with_header("project", "apisix");
        assert_eq!(in_flight(&p, 6, &project).await, [200, 200, 200, 200, 200, 503]);
        assert_eq!(in_flight(&p, 1, &request(Method::Get, "/")).await, [500], "no rule applies");
        // Both rules apply: the tighter one decides, and a rejection by the second frees the
        // first one's slot.
        let p = plugin(&conf.replace("0.01", "0.02"), &env, PRE).unwrap();
        let both = request(Method::Get, "/").with_header("user", "ann").with_header("project", "p")
            .with_header("project-conn", "1").with_header("project-burst", "0");
        assert_eq!(in_flight(&p, 2, &both).await, [200, 503]);
        let ann = request(Method::Get, "/").with_header("user", "ann");
        assert_eq!(in_flight(&p, 7, &ann).await, [200, 200, 200, 200, 200, 200, 503],
                   "ann holds one slot of seven, not two");
    }

    /// A documented difference: APISIX sleeps each rule's delay before it checks the next rule;
    /// here every rule is checked first and the delays are slept once, summed.
    #[tokio::test(start_paused = true)]
    async fn the_delays_of_all_applicable_rules_add_up() {
        let env = TestEnv::default().with_clock(Clock::manual());
        let conf = r#"{"default_conn_delay": 0.1, "rules": [{"conn": 1, "burst": 1, "key": "${remote_addr}a"},
                                                            {"conn": 1, "burst": 1, "key": "${remote_addr}b"}]}"#;
        let p = plugin(conf, &env, PRE).unwrap();
        let start = tokio::time::Instant::now();
        assert_eq!(in_flight(&p, 1, &request(Method::Get, "/")).await, [200]);
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert_eq!(in_flight(&p, 1, &request(Method::Get, "/")).await, [200]);
        assert_eq!(start.elapsed(), Duration::from_millis(200), "0.1 s for each rule");
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_template_without_variables_falls_back_to_the_client() {
        let env = TestEnv::default().with_clock(Clock::manual());
        let conf = r#"{"conn": 1, "burst": 0, "default_conn_delay": 0.1, "key": "abcdefgh",
                       "key_type": "var_combination"}"#;
        let p = plugin(conf, &env, PRE).unwrap();
        assert_eq!(in_flight(&p, 2, &request(Method::Get, "/")).await, [200, 503]);
        let other = request(Method::Get, "/").with_src_ip("10.0.0.2");
        assert_eq!(in_flight(&p, 1, &other).await, [200]);
        let e = plugin(r#"{"conn": 1, "burst": 0, "default_conn_delay": 0.1, "rejected_msg": ""}"#, &env, PRE)
            .err()
            .unwrap();
        assert!(e.message().contains("rejected_msg"), "{e}");
    }

    #[test]
    fn bad_confs_name_the_field() {
        let env = TestEnv::default();
        for (conf, why) in [
            (r#"{"conn": 1, "burst": 0}"#, "default_conn_delay"),
            (r#"{"conn": 0, "burst": 0, "default_conn_delay": 1}"#, "conn"),
            (r#"{"conn": 1, "burst": 0, "default_conn_delay": 1, "lease_timeout": 0}"#, "lease_timeout"),
            (r#"{"conn": 1, "burst": 0, "default_conn_delay": 1, "policy": "redis"}"#, "policy"),
            (r#"{"conn": 1, "default_conn_delay": 1}"#, "required"),
        ] {
            let e = plugin(conf, &env, "route#1#ext-plugin-pre-req#1").err().expect(conf);
            assert!(e.message().contains(why), "{conf}: {e}");
        }
    }
}
