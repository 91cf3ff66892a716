//! `limit-conn` (PLUGINS.md §2.3): at most `conn` requests in flight per key, `burst` more
//! delayed, the rest rejected.
//!
//! * Request phase (acquire), resty.limit.conn's algorithm: count the request in; above
//!   `conn + burst` count it out again and reject; above `conn` delay it by
//!   `unit_delay·floor((n−1)/conn)` (asynchronously, at most 55 s).
//! * Response phase (release): needs the same conf under `ext-plugin-post-resp`. The request
//!   carries a correlation header (`correlation_header` *(ext)*, else request-id's `x-request-id`
//!   when that plugin is in the chain, else `x-a6-runner-req`); the response phase reads it back
//!   with one `extra_info` Var and frees the slot. Unless `only_use_default_delay`, the unit delay
//!   then learns from the latency (Var `request_time`): `unit = (latency + unit)/2`.
//! * *(ext)* `lease_timeout` (default 30 s) frees slots whose release never comes: the upstream
//!   failed (the gateway answers 502 itself), a later gateway plugin rejected, or post-resp is
//!   not configured. **Without post-resp the plugin only limits how many requests start per
//!   lease period**; prepare logs a warning until it has seen the post-resp half.
//! * `rules` *(ext shape of APISIX's)*: the first rule whose `key` template resolves applies.
//! * *(ext)* `dry_run`: over the limit, the request goes on, uncounted, with
//!   `x-dry-run-reject: limit-conn`.
//! * Reject: `rejected_code` (default 503), `rejected_headers`, `{"error_msg": rejected_msg}\n`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use ext_plugin_sdk::*;
use crate::limit_req::MAX_DELAY_SECS;
use crate::support::clock::{self, secs_to_nanos, SharedClock, NANOS_PER_MS};
use crate::support::key::{KeySource, KeyType};
use crate::support::keyed::KeyedStore;
use crate::support::lease::{Correlation, Leases};
use crate::support::reject::{self, HeaderConf};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitConnConf {
    conn: Option<u64>,
    burst: Option<u64>,
    #[serde(default)]
    rules: Vec<RuleConf>,
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
    #[serde(default = "default_lease_timeout")]
    lease_timeout: f64,
    correlation_header: Option<String>,
    #[serde(default = "reject::default_max_keys")]
    max_keys: usize,
    #[serde(default)]
    dry_run: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleConf {
    conn: u64,
    #[serde(default)]
    burst: u64,
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
    state: Arc<ConnState>,
    corr: Correlation,
    only_default_delay: bool,
    dry_run: bool,
    reject: Stop,
    clock: SharedClock,
}

struct Limit {
    key: KeySource,
    /// The main key falls back to the client address; rules are skipped when nil.
    fallback: bool,
    index: usize,
}

/// Shared by the request (acquire) and response (release) chains of a route.
pub struct ConnState {
    pools: Vec<Pool>,
    leases: Leases<Arc<Slot>>,
    default_delay: u64,
    seen_post_resp: AtomicBool,
}

struct Pool {
    conn: u64,
    burst: u64,
    keys: KeyedStore<Slot>,
}

/// One key's in-flight count and learned unit delay.
pub struct Slot {
    in_flight: AtomicU64,
    unit_delay: AtomicU64,
}

impl Slot {
    fn release(&self, latency: Option<u64>) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        if let Some(latency) = latency {
            let unit = self.unit_delay.load(Ordering::Relaxed);
            self.unit_delay.store((latency + unit) / 2, Ordering::Relaxed);
        }
    }
}

impl ConnState {
    /// Counts a request in: `Ok((slot, delay))`, or `Err(())` above `conn + burst`.
    fn acquire(&self, pool: usize, key: &str, now: u64) -> Result<(Arc<Slot>, u64), ()> {
        let pool = &self.pools[pool];
        let slot = pool.keys.get_or_insert(key, now, || Slot {
            in_flight: AtomicU64::new(0),
            unit_delay: AtomicU64::new(self.default_delay),
        });
        let n = slot.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        if n > pool.conn + pool.burst {
            slot.in_flight.fetch_sub(1, Ordering::AcqRel);
            return Err(());
        }
        let delay = if n > pool.conn {
            slot.unit_delay.load(Ordering::Relaxed) * ((n - 1) / pool.conn)
        } else {
            0
        };
        Ok((slot, delay))
    }

    /// Frees the slots whose response never came.
    fn expire(&self, now: u64) {
        self.leases.sweep(now, |slot| slot.release(None));
    }
}

impl Plugin for LimitConn {
    const NAME: &'static str = "limit-conn";
    type Conf = LimitConnConf;

    fn prepare(conf: LimitConnConf, env: &mut PrepareEnv<'_>) -> Result<Self, ConfError> {
        LimitConn::build(conf, env, clock::system())
    }

    async fn request_filter(&self, call: &mut RequestCall<'_>) -> Result<Flow, PluginError> {
        let now = self.clock.now();
        self.state.expire(now);
        for limit in &self.limits {
            let key = if limit.fallback {
                limit.key.resolve_or_client(call).await?
            } else {
                limit.key.resolve(call).await?
            };
            let Some(key) = key else { continue };
            let Ok((slot, delay)) = self.state.acquire(limit.index, &key, now) else {
                if self.dry_run {
                    // Not counted in flight: enforced, it would not be.
                    reject::dry_run_reject(call, Self::NAME);
                    return Ok(Flow::Continue);
                }
                return Ok(Flow::Stop(self.reject.clone()));
            };
            let id = self.corr.id_for_call(call);
            self.state.leases.insert(&id, now, slot);
            if delay >= NANOS_PER_MS {
                let capped = delay.min(secs_to_nanos(MAX_DELAY_SECS));
                tokio::time::sleep(Duration::from_nanos(capped)).await;
            }
            return Ok(Flow::Continue);
        }
        Ok(Flow::Continue)
    }

    async fn response_filter(&self, call: &mut ResponseCall<'_>) -> Result<(), PluginError> {
        let Some(id) = call.var(&self.corr.var).await? else {
            tracing::debug!(header = %self.corr.header, "limit-conn: response without correlation id");
            return Ok(());
        };
        let Some(slot) = self.state.leases.take(&id) else {
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
        slot.release(latency);
        Ok(())
    }
}

impl LimitConn {
    /// [`Plugin::prepare`] with the clock to count time by.
    pub fn build(
        conf: LimitConnConf,
        env: &mut PrepareEnv<'_>,
        clock: SharedClock,
    ) -> Result<LimitConn, ConfError> {
        reject::check_policy(&conf.policy)?;
        reject::check_max_keys(conf.max_keys)?;
        if !(conf.default_conn_delay > 0.0 && conf.default_conn_delay < MAX_DELAY_SECS) {
            return Err(ConfError::new("`default_conn_delay` must be above 0 and below 55 s"));
        }
        if !(conf.lease_timeout >= 1.0 && conf.lease_timeout <= 3600.0) {
            return Err(ConfError::new("`lease_timeout` must be 1 to 3600 seconds"));
        }
        if let Some(h) = &conf.correlation_header {
            if !reject::is_token(h) {
                return Err(ConfError::new(format!("`correlation_header` {h:?} is not a header name")));
            }
        }
        // (key, conn, burst, fallback)
        let mut specs = Vec::new();
        match (conf.conn, conf.burst, conf.rules.is_empty()) {
            (Some(conn), Some(burst), true) => {
                specs.push((KeySource::parse(conf.key_type, &conf.key)?, conn, burst, true))
            }
            (None, None, false) => {
                for (i, r) in conf.rules.iter().enumerate() {
                    let key = KeySource::parse(KeyType::VarCombination, &r.key)
                        .map_err(|e| ConfError::new(format!("`rules[{i}]`: {e}")))?;
                    specs.push((key, r.conn, r.burst, false));
                }
            }
            (_, _, false) => return Err(ConfError::new("`rules` and `conn`/`burst` are exclusive")),
            _ => return Err(ConfError::new("`conn` and `burst` are required (or `rules`)")),
        }
        if specs.iter().any(|s| s.1 == 0) {
            return Err(ConfError::new("`conn` must be at least 1"));
        }
        let default_delay = secs_to_nanos(conf.default_conn_delay);
        let lease = secs_to_nanos(conf.lease_timeout);
        let state = env.state(|| ConnState {
            pools: specs
                .iter()
                .map(|s| Pool {
                    conn: s.1,
                    burst: s.2,
                    keys: KeyedStore::new(conf.max_keys, 2 * lease),
                })
                .collect(),
            leases: Leases::new(lease),
            default_delay,
            seen_post_resp: AtomicBool::new(false),
        });
        if env.attachment() == Attachment::PostResp {
            state.seen_post_resp.store(true, Ordering::Relaxed);
        } else if !state.seen_post_resp.load(Ordering::Relaxed) {
            tracing::warn!(
                route = env.route(),
                "limit-conn: slots are released only by an `ext-plugin-post-resp` entry with the \
                 same conf; without it they are freed after `lease_timeout`"
            );
        }
        Ok(LimitConn {
            limits: specs
                .into_iter()
                .enumerate()
                .map(|(index, (key, _, _, fallback))| Limit { key, fallback, index })
                .collect(),
            state,
            corr: Correlation::new(conf.correlation_header.as_deref(), env.chain()),
            only_default_delay: conf.only_use_default_delay,
            dry_run: conf.dry_run,
            reject: reject::rejection(
                "rejected_code",
                conf.rejected_code,
                conf.rejected_msg.as_deref(),
                &conf.rejected_headers,
            )?,
            clock,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::support::clock::{ManualClock, NANOS_PER_SEC};
    use ext_plugin_sdk::harness::{TestCall, TestEnv, TestResp};
    use ext_plugin_sdk::harness::request;

    fn plugin(conf: &str, env: &TestEnv, key: &str, clock: &Arc<ManualClock>) -> Result<LimitConn, ConfError> {
        let parsed: LimitConnConf = serde_json::from_str(conf).map_err(ConfError::from)?;
        env.with(key, LimitConn::NAME, conf, &[LimitConn::NAME], |e| LimitConn::build(parsed, e, clock.clone()))
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
        let (env, clock) = (TestEnv::default(), ManualClock::new());
        let pre = plugin(CONF, &env, "route#1#ext-plugin-pre-req#1", &clock).unwrap();
        let post = plugin(CONF, &env, "route#1#ext-plugin-post-resp#1", &clock).unwrap();
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

    #[tokio::test(start_paused = true)]
    async fn leases_expire_when_no_response_comes() {
        let (env, clock) = (TestEnv::default(), ManualClock::new());
        let pre = plugin(CONF, &env, "route#1#ext-plugin-pre-req#1", &clock).unwrap();
        for _ in 0..3 {
            acquire(&pre).await.unwrap();
        }
        assert_eq!(acquire(&pre).await, None);
        clock.advance(Duration::from_secs(29));
        assert_eq!(acquire(&pre).await, None, "leases still live");
        clock.advance(Duration::from_nanos(NANOS_PER_SEC + 1));
        assert!(acquire(&pre).await.is_some(), "expired leases freed their slots");
    }

    #[test]
    fn bad_confs_name_the_field() {
        let (env, clock) = (TestEnv::default(), ManualClock::new());
        for (conf, why) in [
            (r#"{"conn": 1, "burst": 0}"#, "default_conn_delay"),
            (r#"{"conn": 0, "burst": 0, "default_conn_delay": 1}"#, "conn"),
            (r#"{"conn": 1, "burst": 0, "default_conn_delay": 1, "lease_timeout": 0}"#, "lease_timeout"),
            (r#"{"conn": 1, "burst": 0, "default_conn_delay": 1, "policy": "redis"}"#, "policy"),
            (r#"{"conn": 1, "default_conn_delay": 1}"#, "required"),
        ] {
            let e = plugin(conf, &env, "route#1#ext-plugin-pre-req#1", &clock).err().expect(conf);
            assert!(e.message().contains(why), "{conf}: {e}");
        }
    }
}
