//! `limit-count` (PLUGINS.md §2.1): at most `count` requests per `time_window` seconds per key.
//!
//! * `window_type: "fixed"` (default): APISIX's window, starting at the key's first request.
//!   `"sliding"` *(ext)*: a LeapArray of `buckets` buckets, so a burst straddling a window
//!   boundary is still counted. Rejected requests are never counted.
//! * `rules` (instead of `count`/`time_window`): each rule whose `key` template resolves applies,
//!   in order, with its own counters and headers `X-<header_prefix>-RateLimit-*` (the prefix
//!   defaults to the rule's 1-based index); a rule whose variables are all nil is skipped.
//! * Pass: the three quota headers on the response (unless `show_limit_quota_header` is false).
//!   Reject: `rejected_code` (default 503, as APISIX; 429 is recommended) with the headers
//!   (Remaining 0), `rejected_headers`, *(ext)* `Retry-After` with `retry_after`, and
//!   `{"error_msg": rejected_msg}\n` (no body without `rejected_msg`).
//! * *(ext)* `dry_run`: everything is computed and the headers set, but nothing is stopped; a
//!   would-be rejection adds `x-dry-run-reject: limit-count`.
//! * *(ext)* `specific_items`, `match_strategy`/`pattern`/`unmatched` (per-key counts and key
//!   patterns, [`crate::support::specific_items`]) and `warm_up_period_sec`/`cold_factor`
//!   (Sentinel's warm-up, [`crate::support::warm_up`]), for the main key.
//! * State: per route and conf, or per `group` across routes (a group must keep one
//!   count/window/type; a conflicting conf fails prepare).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::Deserialize;

use ext_plugin_sdk::*;
use crate::support::clock::{self, secs_until, SharedClock, NANOS_PER_SEC};
use crate::support::key::{KeySource, KeyType};
use crate::support::keyed::{lock, KeyedStore};
use crate::support::reject::{self, HeaderConf};
use crate::support::specific_items::{MatchStrategy, PerKey, Selected, Unmatched};
use crate::support::warm_up::WarmUp;
use crate::support::window::LeapArray;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitCountConf {
    count: Option<u64>,
    time_window: Option<u64>,
    #[serde(default)]
    rules: Vec<RuleConf>,
    #[serde(default)]
    window_type: WindowType,
    #[serde(default = "default_buckets")]
    buckets: usize,
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
    #[serde(default = "yes")]
    show_limit_quota_header: bool,
    group: Option<String>,
    #[serde(default = "default_limit_header")]
    limit_header: String,
    #[serde(default = "default_remaining_header")]
    remaining_header: String,
    #[serde(default = "default_reset_header")]
    reset_header: String,
    #[serde(default)]
    retry_after: bool,
    #[serde(default)]
    dry_run: bool,
    #[serde(default = "reject::default_max_keys")]
    max_keys: usize,
    // (ext) limiter extras: support::specific_items, support::warm_up.
    specific_items: Option<HashMap<String, u64>>,
    match_strategy: Option<MatchStrategy>,
    pattern: Option<String>,
    unmatched: Option<Unmatched>,
    warm_up_period_sec: Option<f64>,
    cold_factor: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleConf {
    count: u64,
    time_window: u64,
    key: String,
    header_prefix: Option<String>,
}

#[derive(Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum WindowType {
    #[default]
    Fixed,
    Sliding,
}

fn default_buckets() -> usize {
    10
}
fn default_key() -> String {
    "remote_addr".into()
}
fn default_rejected_code() -> u16 {
    503
}
fn yes() -> bool {
    true
}
fn default_limit_header() -> String {
    "X-RateLimit-Limit".into()
}
fn default_remaining_header() -> String {
    "X-RateLimit-Remaining".into()
}
fn default_reset_header() -> String {
    "X-RateLimit-Reset".into()
}

pub struct LimitCount {
    limits: Vec<Limit>,
    reject: Stop,
    show_headers: bool,
    retry_after: bool,
    dry_run: bool,
    /// *(ext)* Per-key thresholds and patterns, and warm-up, for the main key.
    per_key: Option<PerKey<u64>>,
    warm_up: Option<Arc<WarmUp>>,
    clock: SharedClock,
    /// Held so the scope's state lives as long as a chain uses it (the registry keeps only a
    /// weak reference).
    _quotas: Arc<Quotas>,
}

/// One quota: the conf's own, or one rule's.
struct Limit {
    key: KeySource,
    /// The main key falls back to `remote_addr` when nil (as APISIX); rules are skipped.
    fallback: bool,
    headers: [Text; 3],
    count_text: Text,
    counters: Arc<Counters>,
}

/// The counters of one quota, shared by every chain in its scope.
pub struct Counters {
    count: u64,
    window: u64,
    kind: WindowType,
    buckets: usize,
    keys: KeyedStore<Mutex<Cell>>,
}

enum Cell {
    Fixed { start: u64, used: u64 },
    Sliding(LeapArray<1>),
}

/// The outcome of one request against one quota.
#[derive(Debug, PartialEq, Eq)]
pub struct Verdict {
    pub admitted: bool,
    pub remaining: u64,
    /// Nanoseconds until the quota frees up (fixed: the window ends; sliding: the oldest
    /// counted bucket leaves).
    pub reset_in: u64,
}

impl Counters {
    fn new(count: u64, window: u64, kind: WindowType, buckets: usize, max_keys: usize) -> Counters {
        Counters {
            count,
            window,
            kind,
            buckets,
            // Idle for two windows: the key's counts cannot matter any more.
            keys: KeyedStore::new(max_keys, window.saturating_mul(2)),
        }
    }

    /// Checks and counts one request for `key` at `now`, atomically for that key.
    pub fn acquire(&self, key: &str, now: u64) -> Verdict {
        self.acquire_max(key, now, self.count)
    }

    /// [`Counters::acquire`] with this request's quota (a specific item's, or a warming key's).
    pub fn acquire_max(&self, key: &str, now: u64, count: u64) -> Verdict {
        let cell = self.keys.get_or_insert(key, now, || {
            Mutex::new(match self.kind {
                WindowType::Fixed => Cell::Fixed { start: 0, used: 0 },
                WindowType::Sliding => Cell::Sliding(LeapArray::new(self.window, self.buckets)),
            })
        });
        let mut cell = lock(&cell);
        match &mut *cell {
            Cell::Fixed { start, used } => {
                if *used == 0 || now >= *start + self.window {
                    *start = now;
                    *used = 0;
                }
                let admitted = *used < count;
                *used += u64::from(admitted);
                Verdict {
                    admitted,
                    remaining: count.saturating_sub(*used),
                    reset_in: *start + self.window - now,
                }
            }
            Cell::Sliding(w) => {
                let used = w.sum(now)[0];
                let admitted = used < count;
                if admitted {
                    w.add(now, 0, 1);
                }
                Verdict {
                    admitted,
                    remaining: count.saturating_sub(used + u64::from(admitted)),
                    reset_in: w.next_expiry(now).map_or(0, |at| at - now),
                }
            }
        }
    }
}

/// The state of a route (or group): one [`Counters`] per quota, plus what they were built from
/// so a group used with two different confs is caught.
struct Quotas {
    signature: String,
    counters: Vec<Arc<Counters>>,
}

impl Plugin for LimitCount {
    const NAME: &'static str = "limit-count";
    type Conf = LimitCountConf;

    fn prepare(conf: LimitCountConf, env: &mut PrepareEnv<'_>) -> Result<Self, ConfError> {
        LimitCount::build(conf, env, clock::system())
    }

    async fn request_filter(&self, call: &mut RequestCall<'_>) -> Result<Flow, PluginError> {
        for limit in &self.limits {
            let key = if limit.fallback {
                limit.key.resolve_or_client(call).await?
            } else {
                limit.key.resolve(call).await?
            };
            let Some(key) = key else { continue };
            let (key, count) = match (&self.per_key, limit.fallback) {
                (Some(per_key), true) => match per_key.select(key) {
                    Selected::Pass => continue,
                    Selected::Limit(k, item) => (k, item.copied().unwrap_or(limit.counters.count)),
                },
                _ => (key, limit.counters.count),
            };
            let (now, counters) = (self.clock.now(), &limit.counters);
            let rate = count as f64 * NANOS_PER_SEC as f64 / counters.window as f64;
            let (v, count) = WarmUp::check(self.warm_up.as_deref(), &key, now, rate, |share| {
                let count = ((count as f64 * share) as u64).max(1);
                let v = counters.acquire_max(&key, now, count);
                (v.admitted, (v, count))
            });
            if v.admitted || self.dry_run {
                if !v.admitted {
                    reject::dry_run_reject(call, Self::NAME);
                }
                if self.show_headers {
                    for (name, value) in limit.header_values(&v, count) {
                        call.set_response_header(name, value);
                    }
                }
                continue;
            }
            let mut stop = Stop::new(self.reject.status).with_body(self.reject.body.clone());
            if self.show_headers {
                for (name, value) in limit.header_values(&v, count) {
                    stop = stop.with_header(name, value);
                }
            }
            stop.headers.extend(self.reject.headers.iter().cloned());
            if self.retry_after {
                let secs = secs_until(0, v.reset_in).max(1);
                stop = stop.with_header("Retry-After", secs.to_string());
            }
            return Ok(Flow::Stop(stop));
        }
        Ok(Flow::Continue)
    }
}

impl Limit {
    fn header_values(&self, v: &Verdict, count: u64) -> [(Text, Text); 3] {
        let [limit, remaining, reset] = self.headers.clone();
        let count = if count == self.counters.count {
            self.count_text.clone()
        } else {
            Text::from(count.to_string())
        };
        [
            (limit, count),
            (remaining, Text::from(v.remaining.to_string())),
            (reset, Text::from(secs_until(0, v.reset_in).to_string())),
        ]
    }
}

impl LimitCount {
    /// [`Plugin::prepare`] with the clock to count time by.
    pub fn build(
        conf: LimitCountConf,
        env: &mut PrepareEnv<'_>,
        clock: SharedClock,
    ) -> Result<LimitCount, ConfError> {
        reject::check_policy(&conf.policy)?;
        reject::check_max_keys(conf.max_keys)?;
        if conf.window_type == WindowType::Sliding && !(1..=1000).contains(&conf.buckets) {
            return Err(ConfError::new(format!(
                "`buckets` must be 1 to 1000, got {}",
                conf.buckets
            )));
        }
        for name in [&conf.limit_header, &conf.remaining_header, &conf.reset_header] {
            if !reject::is_token(name) {
                return Err(ConfError::new(format!("{name:?} is not a valid header name")));
            }
        }
        // (key source, count, window seconds, header names, falls back to remote_addr)
        let mut specs = Vec::new();
        match (conf.count, conf.time_window, conf.rules.is_empty()) {
            (Some(count), Some(window), true) => specs.push((
                KeySource::parse(conf.key_type, &conf.key)?,
                count,
                window,
                [
                    conf.limit_header.clone(),
                    conf.remaining_header.clone(),
                    conf.reset_header.clone(),
                ],
                true,
            )),
            (None, None, false) => {
                for (i, rule) in conf.rules.iter().enumerate() {
                    let prefix = rule.header_prefix.clone().unwrap_or((i + 1).to_string());
                    let headers = ["Limit", "Remaining", "Reset"]
                        .map(|h| format!("X-{prefix}-RateLimit-{h}"));
                    if !reject::is_token(&headers[0]) {
                        return Err(ConfError::new(format!(
                            "`rules[{i}].header_prefix` {prefix:?} does not make a header name"
                        )));
                    }
                    let key = KeySource::parse(KeyType::VarCombination, &rule.key)
                        .map_err(|e| ConfError::new(format!("`rules[{i}]`: {e}")))?;
                    specs.push((key, rule.count, rule.time_window, headers, false));
                }
            }
            (_, _, false) => {
                return Err(ConfError::new(
                    "`rules` and `count`/`time_window` are exclusive",
                ))
            }
            _ => {
                return Err(ConfError::new(
                    "`count` and `time_window` are required (or `rules`)",
                ))
            }
        }
        for (_, count, window, _, _) in &specs {
            if *count == 0 || *window == 0 {
                return Err(ConfError::new("`count` and `time_window` must be at least 1"));
            }
        }

        let per_key = PerKey::parse(
            conf.specific_items,
            conf.match_strategy,
            conf.pattern,
            conf.unmatched,
            |k, count| match count {
                0 => Err(ConfError::field(&format!("specific_items.{k}"), "must be at least 1")),
                _ => Ok(()),
            },
        )?;
        let warm_up = WarmUp::from_conf(conf.warm_up_period_sec, conf.cold_factor, conf.max_keys)?;
        if (per_key.is_some() || warm_up.is_some()) && !conf.rules.is_empty() {
            return Err(ConfError::new(
                "`specific_items`, `match_strategy` and `warm_up_period_sec` apply to the main \
                 key: use them with `count`/`time_window`, not `rules`",
            ));
        }
        let extras = format!(
            "{} {}",
            per_key.as_ref().map(PerKey::signature).unwrap_or_default(),
            warm_up.as_ref().map(WarmUp::signature).unwrap_or_default()
        );
        let signature = specs
            .iter()
            .map(|(_, c, w, _, _)| format!("{c}/{w}"))
            .collect::<Vec<_>>()
            .join(",")
            + &format!(" {:?}/{} {extras}", conf.window_type, conf.buckets);
        let init = || Quotas {
            signature: signature.clone(),
            counters: specs
                .iter()
                .map(|(_, count, window, _, _)| {
                    Arc::new(Counters::new(
                        *count,
                        window * NANOS_PER_SEC,
                        conf.window_type,
                        conf.buckets,
                        conf.max_keys,
                    ))
                })
                .collect(),
        };
        let quotas = match &conf.group {
            Some(group) => env.group_state(group, init),
            None => env.state(init),
        };
        let warm_up = warm_up.map(|w| match &conf.group {
            Some(group) => env.group_state(group, || w),
            None => env.state(|| w),
        });
        if quotas.signature != signature {
            return Err(ConfError::new(format!(
                "`group` {:?} is already used with a different quota ({}); a group shares one",
                conf.group.unwrap_or_default(),
                quotas.signature
            )));
        }
        let limits = specs
            .into_iter()
            .zip(quotas.counters.iter())
            .map(|((key, count, _, headers, fallback), counters)| Limit {
                key,
                fallback,
                headers: headers.map(Text::from),
                count_text: Text::from(count.to_string()),
                counters: counters.clone(),
            })
            .collect();
        Ok(LimitCount {
            limits,
            reject: reject::rejection(
                "rejected_code",
                conf.rejected_code,
                conf.rejected_msg.as_deref(),
                &conf.rejected_headers,
            )?,
            show_headers: conf.show_limit_quota_header,
            retry_after: conf.retry_after,
            dry_run: conf.dry_run,
            per_key,
            warm_up,
            clock,
            _quotas: quotas,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::support::clock::ManualClock;
    use ext_plugin_sdk::harness::{TestCall, TestEnv};
    use ext_plugin_sdk::harness::request;
    use std::time::Duration;

    const S: u64 = NANOS_PER_SEC;

    fn counters(kind: WindowType) -> Counters {
        Counters::new(3, 10 * S, kind, 10, 100)
    }

    #[test]
    fn fixed_window_admits_exactly_count_and_resets() {
        let c = counters(WindowType::Fixed);
        let t0 = 1000 * S;
        for i in 0..3 {
            let v = c.acquire("k", t0 + i * S);
            assert!(v.admitted);
            assert_eq!(v.remaining, 2 - i);
            assert_eq!(v.reset_in, 10 * S - i * S, "the window starts at the first request");
        }
        assert!(!c.acquire("k", t0 + 9 * S).admitted);
        assert!(c.acquire("other", t0 + 9 * S).admitted, "keys are independent");
        assert!(!c.acquire("k", t0 + 10 * S - 1).admitted);
        let v = c.acquire("k", t0 + 10 * S);
        assert_eq!((v.admitted, v.remaining, v.reset_in), (true, 2, 10 * S));
    }

    #[test]
    fn sliding_window_smooths_a_boundary_burst() {
        let fixed = counters(WindowType::Fixed);
        let sliding = counters(WindowType::Sliding);
        let t0 = 1000 * S;
        // Three at the end of one window, three right after it ends.
        let burst = |c: &Counters| {
            let late: usize = (0..3).filter(|_| c.acquire("k", t0 + 9_500_000_000).admitted).count();
            let early: usize = (0..3).filter(|_| c.acquire("k", t0 + 10_100_000_000).admitted).count();
            (late, early)
        };
        fixed.acquire("k", t0);
        sliding.acquire("k", t0);
        assert_eq!(burst(&fixed), (2, 3), "a fixed window forgives the boundary");
        assert_eq!(burst(&sliding), (2, 1), "the t0 request left the sliding window, the burst did not");
        let v = sliding.acquire("k", t0 + 10_100_000_000);
        assert!(!v.admitted);
        assert_eq!(v.reset_in, 19 * S - 10_100_000_000, "the 9.5 s bucket leaves at 19 s");
    }

    async fn plugin(conf: &str, env: &TestEnv, clock: &Arc<ManualClock>) -> Result<LimitCount, ConfError> {
        let parsed: LimitCountConf = serde_json::from_str(conf).map_err(ConfError::from)?;
        env.with("route#1#ext-plugin-pre-req#1", LimitCount::NAME, conf, &[LimitCount::NAME], |e| {
            LimitCount::build(parsed, e, clock.clone())
        })
    }

    async fn run(p: &LimitCount, req: ext_plugin_sdk::model::HttpReqCallReq) -> (Flow, Vec<(String, String)>) {
        let mut c = TestCall::new(req);
        let flow = p.request_filter(&mut c.call()).await.unwrap();
        let headers = c
            .resp_headers()
            .iter()
            .map(|p| (p.name.to_string(), p.value.as_deref().unwrap_or("").to_owned()))
            .collect();
        (flow, headers)
    }

    #[tokio::test]
    async fn rules_apply_in_order_and_skip_unresolved_keys() {
        let (env, clock) = (TestEnv::default(), ManualClock::new());
        let conf = r#"{"rules": [{"count": 1, "time_window": 60, "key": "$http_x_user", "header_prefix": "user"},
                                {"count": 5, "time_window": 60, "key": "$remote_addr"}], "rejected_code": 429}"#;
        let p = plugin(conf, &env, &clock).await.unwrap();
        let (flow, headers) = run(&p, request(Method::Get, "/").with_header("x-user", "ann")).await;
        assert_eq!(flow, Flow::Continue);
        assert!(headers.contains(&("X-user-RateLimit-Remaining".into(), "0".into())));
        assert!(headers.contains(&("X-2-RateLimit-Remaining".into(), "4".into())));
        let (flow, _) = run(&p, request(Method::Get, "/").with_header("x-user", "ann")).await;
        assert!(matches!(flow, Flow::Stop(s) if s.status == 429));
        let (flow, headers) = run(&p, request(Method::Get, "/")).await;
        assert_eq!(flow, Flow::Continue, "no x-user: the first rule does not apply");
        assert_eq!(headers.len(), 3);
    }

    #[tokio::test]
    async fn reject_dry_run_retry_after_and_time() {
        let (env, clock) = (TestEnv::default(), ManualClock::new());
        let conf = r#"{"count": 1, "time_window": 30, "rejected_code": 429, "rejected_msg": "no",
                       "retry_after": true, "rejected_headers": [{"key": "X-Why", "value": "quota"}]}"#;
        let p = plugin(conf, &env, &clock).await.unwrap();
        run(&p, request(Method::Get, "/")).await;
        clock.advance(Duration::from_millis(10_500));
        let Flow::Stop(s) = run(&p, request(Method::Get, "/")).await.0 else { panic!("must reject") };
        let h: Vec<_> = s.headers.iter().map(|p| format!("{}={}", p.name, p.value.as_deref().unwrap())).collect();
        assert_eq!(h, ["X-RateLimit-Limit=1", "X-RateLimit-Remaining=0", "X-RateLimit-Reset=20", "X-Why=quota", "Retry-After=20"]);
        assert_eq!(&s.body[..], b"{\"error_msg\":\"no\"}\n");
        clock.advance(Duration::from_secs(20));
        assert_eq!(run(&p, request(Method::Get, "/")).await.0, Flow::Continue);

        let dry = plugin(r#"{"count": 1, "time_window": 30, "dry_run": true}"#, &env, &clock).await.unwrap();
        run(&dry, request(Method::Get, "/")).await;
        let (flow, headers) = run(&dry, request(Method::Get, "/")).await;
        assert_eq!(flow, Flow::Continue);
        assert!(headers.contains(&("X-RateLimit-Remaining".into(), "0".into())));
    }

    #[tokio::test]
    async fn bad_confs_name_the_field() {
        let (env, clock) = (TestEnv::default(), ManualClock::new());
        for (conf, why) in [
            (r#"{"count": 1}"#, "required"),
            (r#"{"count": 0, "time_window": 1}"#, "at least 1"),
            (r#"{"count": 1, "time_window": 1, "rules": [{"count": 1, "time_window": 1, "key": "$a"}]}"#, "exclusive"),
            (r#"{"count": 1, "time_window": 1, "policy": "redis"}"#, "policy"),
            (r#"{"count": 1, "time_window": 1, "bogus": 1}"#, "bogus"),
            (r#"{"count": 1, "time_window": 1, "rejected_code": 99}"#, "rejected_code"),
            (r#"{"count": 1, "time_window": 1, "window_type": "sliding", "buckets": 0}"#, "buckets"),
            (r#"{"count": 1, "time_window": 1, "key_type": "var_combination", "key": "x"}"#, "key"),
        ] {
            let e = plugin(conf, &env, &clock).await.err().expect(conf);
            assert!(e.message().contains(why), "{conf}: {e}");
        }
        let _first = plugin(r#"{"count": 1, "time_window": 1, "group": "g"}"#, &env, &clock).await.unwrap();
        let e = plugin(r#"{"count": 2, "time_window": 1, "group": "g"}"#, &env, &clock).await.err().unwrap();
        assert!(e.message().contains("group"), "{e}");
    }
}
