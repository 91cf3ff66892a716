//! `limit-count` (docs/plugins/traffic.md): at most `count` requests per `time_window` seconds per key.
//!
//! * `window_type: "fixed"` (default): APISIX's window, starting at the key's first request.
//!   `"sliding"`: a LeapArray of `buckets` *(ext)* buckets, so a burst straddling a window
//!   boundary is still counted. Rejected requests are never counted.
//! * `count` and `time_window` may be templates (`"${http_count ?? 2}"`), read per request; a
//!   value that is not a whole number from 1 to 2⁵³ − 1 answers 500.
//! * `rules` (instead of `count`/`time_window`): every rule whose `key` template resolves
//!   applies, in order, with its own counters and headers (`X-<header_prefix>-RateLimit-*`, the
//!   prefix defaulting to the rule's 1-based index). When no rule applies the answer is 500.
//! * Pass: the three quota headers on the response (unless `show_limit_quota_header` is false).
//!   Reject: `rejected_code` (default 503, as APISIX; 429 is recommended) with the headers
//!   (Remaining 0), `rejected_headers`, *(ext)* `Retry-After` with `retry_after`, and
//!   `{"error_msg": rejected_msg}\n` (no body without `rejected_msg`).
//! * `allow_degradation`: a request the plugin cannot decide for passes instead of the 500.
//! * *(ext)* `dry_run`: everything is computed and the headers set, but nothing is stopped; a
//!   would-be rejection adds `x-dry-run-reject: limit-count`.
//! * *(ext)* `specific_items`, `match_strategy`/`pattern`/`unmatched` (per-key counts and key
//!   patterns, [`crate::support::specific_items`]) and `warm_up_period_sec`/`cold_factor`
//!   (Sentinel's warm-up, [`crate::support::warm_up`]), for the main key.
//! * State: per route and conf, or per `group` across routes (a group must keep one
//!   count/window/type; a conflicting conf fails prepare).

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::Deserialize;

use ext_plugin_sdk::*;
use crate::redis::{self, conf::Storage, count::RedisCount};
use crate::support::amount::{Amount, AmountConf};
use crate::support::clock::{secs_until, Nanos, NANOS_PER_SEC};
use crate::support::digits::digit_bytes;
use crate::support::few::Few;
use crate::support::now::{now, LocalVars};
use crate::support::vars::Vars;
use crate::support::key::{KeySource, KeyType};
use crate::support::keyed::{export_key_count, lock, KeyedStore};
use crate::support::reject::{self, HeaderConf};
use crate::support::specific_items::{MatchStrategy, PerKey, Selected, Unmatched};
use crate::support::warm_up::WarmUp;
use crate::support::window::LeapArray;

crate::with_redis_fields! {
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitCountConf {
    count: Option<AmountConf>,
    time_window: Option<AmountConf>,
    rules: Option<Vec<RuleConf>>,
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
    #[serde(default)]
    allow_degradation: bool,
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
    sync_interval: Option<f64>,
}
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleConf {
    count: AmountConf,
    time_window: AmountConf,
    key: String,
    header_prefix: Option<String>,
}

#[derive(Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(crate) enum WindowType {
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
    /// `rules` mode: a request no rule applies to is not decided (500).
    rules: bool,
    reject: Stop,
    show_headers: bool,
    retry_after: bool,
    dry_run: bool,
    allow_degradation: bool,
    /// *(ext)* Per-key thresholds and patterns, and warm-up, for the main key.
    per_key: Option<PerKey<u64>>,
    warm_up: Option<Arc<WarmUp>>,
    clock: Clock,
    /// `policy: "redis"` / `"redis-cluster"`.
    redis: Option<RedisCount>,
}

/// One quota: the conf's own, or one rule's.
struct Limit {
    key: KeySource,
    /// The main key falls back to `remote_addr` when nil (as APISIX); rules are skipped.
    fallback: bool,
    count: Amount,
    /// Seconds.
    window: Amount,
    headers: [Text; 3],
    /// A fixed `count` as its header value, written once rather than per request.
    count_text: Option<(u64, Text)>,
    counters: Arc<Counters>,
    /// The quota's position in the conf (its Redis key).
    index: usize,
}

/// How many requests per how long (nanoseconds), as resolved for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    pub count: u64,
    pub window: u64,
}

/// The counters of one quota, shared by every chain in its scope.
pub struct Counters {
    kind: WindowType,
    buckets: usize,
    /// The window is the same for every request: a key's cell is found by the key alone.
    fixed_window: bool,
    keys: KeyedStore<Mutex<Cell>>,
}

enum Cell {
    /// `window`: the length the window had when it started.
    Fixed { start: u64, window: u64, used: u64 },
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
    /// `window`: the one window length every request uses, or `None` when it varies.
    pub(crate) fn new(kind: WindowType, buckets: usize, window: Option<u64>, max_keys: usize) -> Counters {
        Counters {
            kind,
            buckets,
            fixed_window: window.is_some(),
            // Idle for two windows: the key's counts cannot matter any more. A window read from
            // the request has no bound to wait for; such keys go only at `max_keys`.
            keys: KeyedStore::new(max_keys, window.map_or(u64::MAX, |w| w.saturating_mul(2))),
        }
    }

    /// Checks and counts one request for `key` at `now`, atomically for that key.
    pub fn acquire(&self, key: &str, q: Quota, now: u64) -> Verdict {
        let init = || {
            Mutex::new(match self.kind {
                WindowType::Fixed => Cell::Fixed {
                    start: 0,
                    window: q.window,
                    used: 0,
                },
                WindowType::Sliding => Cell::Sliding(LeapArray::new(q.window, self.buckets)),
            })
        };
        // Counted under the key's shard lock: no reference to the cell is taken or dropped.
        self.keys
            .with(&self.cell_key(key, q), now, init, |cell| Self::count(&mut lock(cell), q, now))
    }

    /// One request against a key's cell.
    fn count(cell: &mut Cell, q: Quota, now: u64) -> Verdict {
        match cell {
            Cell::Fixed {
                start,
                window,
                used,
            } => {
                if *used == 0 || now >= start.saturating_add(*window) {
                    *start = now;
                    *window = q.window;
                    *used = 0;
                }
                let admitted = *used < q.count;
                *used += u64::from(admitted);
                Verdict {
                    admitted,
                    remaining: q.count.saturating_sub(*used),
                    reset_in: start.saturating_add(*window) - now,
                }
            }
            Cell::Sliding(w) => {
                let used = w.sum(now)[0];
                let admitted = used < q.count;
                if admitted {
                    w.add(now, 0, 1);
                }
                Verdict {
                    admitted,
                    remaining: q.count.saturating_sub(used + u64::from(admitted)),
                    reset_in: w.next_expiry(now).map_or(0, |at| at - now),
                }
            }
        }
    }
}

impl Counters {
    /// Where `key`'s counts under `q` are kept. A sliding window has its own buckets per length;
    /// as in APISIX, a request with another window length counts apart.
    fn cell_key<'k>(&self, key: &'k str, q: Quota) -> Cow<'k, str> {
        if self.fixed_window || self.kind == WindowType::Fixed {
            Cow::Borrowed(key)
        } else {
            Cow::Owned(format!("{key}\u{0}{}", q.window))
        }
    }

    /// Takes back one request that [`Counters::acquire`] counted for `key` under `q` at `at`,
    /// when a later check of the same request rejected it (opensergo's rollback). A request
    /// counted in a window that has since moved on is not taken back: that window's count no
    /// longer matters.
    pub fn refund(&self, key: &str, q: Quota, at: u64) {
        let Some(cell) = self.keys.get(&self.cell_key(key, q)) else {
            return;
        };
        let mut cell = lock(&cell);
        match &mut *cell {
            Cell::Fixed { start, window, used } => {
                if at >= *start && at < start.saturating_add(*window) {
                    *used = used.saturating_sub(1);
                }
            }
            Cell::Sliding(w) => w.sub(at, 0, 1),
        }
    }
}

/// The state of a route (or group): one [`Counters`] per quota, plus what they were built from
/// so a group used with two different confs is caught.
struct Quotas {
    signature: String,
    counters: Vec<Arc<Counters>>,
}

/// One applicable quota of a request, resolved.
struct Planned<'a> {
    limit: &'a Limit,
    key: Text,
    quota: Quota,
}

impl Plugin for LimitCount {
    const NAME: &'static str = "limit-count";
    type Conf = LimitCountConf;

    fn prepare(mut conf: LimitCountConf, env: &mut PrepareEnv<'_>) -> Result<Self, ConfError> {
        let clock = env.clock().clone();
        let fields = conf.take_redis_fields();
        let storage = redis::conf::storage(
            Self::NAME,
            &conf.policy,
            fields,
            conf.group.as_deref(),
            env,
        )?;
        reject::check_max_keys(conf.max_keys)?;
        if conf.window_type == WindowType::Sliding && !(1..=1000).contains(&conf.buckets) {
            return Err(ConfError::new(format!(
                "`buckets` must be 1 to 1000, got {}",
                conf.buckets
            )));
        }
        let base = [conf.limit_header, conf.remaining_header, conf.reset_header];
        for name in &base {
            if !reject::is_token(name) {
                return Err(ConfError::new(format!("{name:?} is not a valid header name")));
            }
        }
        let mut specs = Vec::new();
        let rules = conf.rules.is_some();
        match (conf.count, conf.time_window, conf.rules) {
            (Some(count), Some(window), None) => specs.push(Spec {
                key: KeySource::parse(conf.key_type, &conf.key)?,
                fallback: true,
                count: Amount::new("count", count, 1)?,
                window: Amount::new("time_window", window, 1)?,
                headers: base,
            }),
            (None, None, Some(rules)) => {
                if conf.group.is_some() {
                    return Err(ConfError::new("`group` and `rules` are exclusive"));
                }
                if rules.is_empty() {
                    return Err(ConfError::new("`rules` must not be empty"));
                }
                let mut rule_keys: Vec<String> = Vec::new();
                for (i, rule) in rules.into_iter().enumerate() {
                    let field = |f: &str| format!("rules[{i}].{f}");
                    if rule_keys.contains(&rule.key) {
                        return Err(ConfError::new(format!(
                            "`rules` repeat the key {:?}: rules with one key would share one counter",
                            rule.key
                        )));
                    }
                    rule_keys.push(rule.key.clone());
                    let prefix = rule.header_prefix.unwrap_or((i + 1).to_string());
                    // As APISIX: the prefix goes before the first `RateLimit-` of each name.
                    let headers = base.clone().map(|h| h.replacen("RateLimit-", &format!("{prefix}-RateLimit-"), 1));
                    if !headers.iter().all(|h| reject::is_token(h)) {
                        return Err(ConfError::new(format!(
                            "`{}` {prefix:?} does not make a header name",
                            field("header_prefix")
                        )));
                    }
                    specs.push(Spec {
                        key: KeySource::parse(KeyType::VarCombination, &rule.key)
                            .map_err(|e| ConfError::new(format!("`rules[{i}]`: {e}")))?,
                        fallback: false,
                        count: Amount::new(&field("count"), rule.count, 1)?,
                        window: Amount::new(&field("time_window"), rule.time_window, 1)?,
                        headers,
                    });
                }
            }
            (_, _, Some(_)) => {
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
        let sliding = (conf.window_type == WindowType::Sliding).then_some(conf.buckets);
        let windows = specs.iter().map(|s| s.window.fixed());
        let mode = redis::count::check_conf(&storage, conf.sync_interval, sliding, windows)?;
        if conf.group.is_some() && specs.iter().any(|s| s.count.fixed().is_none() || s.window.fixed().is_none()) {
            return Err(ConfError::new(
                "a `group` shares one quota: `count` and `time_window` must be numbers, not variables",
            ));
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
        if (per_key.is_some() || warm_up.is_some()) && rules {
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

        let amount = |a: &Amount| a.fixed().map_or("var".to_owned(), |n| n.to_string());
        let signature = specs
            .iter()
            .map(|s| format!("{}/{}", amount(&s.count), amount(&s.window)))
            .collect::<Vec<_>>()
            .join(",")
            + &format!(" {:?}/{} {extras}", conf.window_type, conf.buckets);
        let init = || Quotas {
            signature: signature.clone(),
            counters: specs
                .iter()
                .map(|s| {
                    Arc::new(Counters::new(
                        conf.window_type,
                        conf.buckets,
                        s.window.fixed().map(|w| w.saturating_mul(NANOS_PER_SEC)),
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
        export_key_count(env, Self::NAME, conf.group.as_deref(), &quotas, |q| {
            q.counters.iter().map(|c| c.keys.len() as i64).sum()
        });
        let limits = specs
            .into_iter()
            .zip(quotas.counters.iter())
            .enumerate()
            .map(|(index, (s, counters))| Limit {
                key: s.key,
                fallback: s.fallback,
                count_text: s.count.fixed().map(|n| (n, Text::from(n.to_string()))),
                count: s.count,
                window: s.window,
                headers: s.headers.map(Text::from),
                counters: counters.clone(),
                index,
            })
            .collect::<Vec<_>>();
        let redis = match (storage, mode) {
            (Storage::Redis(policy), Some(mode)) => Some(RedisCount::new(policy, mode, limits.len(), conf.max_keys, clock.clone())),
            _ => None,
        };
        // Per-key counts and patterns only pick the key and its count: they hold on Redis too.
        redis::check_extras(redis.is_some(), false, warm_up.is_some())?;
        Ok(LimitCount {
            limits,
            rules,
            reject: reject::rejection(
                "rejected_code",
                conf.rejected_code,
                conf.rejected_msg.as_deref(),
                &conf.rejected_headers,
            )?,
            show_headers: conf.show_limit_quota_header,
            retry_after: conf.retry_after,
            dry_run: conf.dry_run,
            allow_degradation: conf.allow_degradation,
            per_key,
            warm_up,
            clock,
            redis,
        })
    }

    /// Counted locally, a request never waits for anything but a variable the gateway must be
    /// asked for: decided here, without a future, whenever its variables are at hand.
    fn request_filter_sync(&self, call: &mut RequestCall<'_>) -> Option<Result<Flow, PluginError>> {
        if self.redis.is_some() {
            return None;
        }
        let mut vars = LocalVars::new(call);
        let plan = now(self.plan(&mut vars))?;
        if vars.declined() {
            return None;
        }
        let plan = match plan {
            Ok(Ok(plan)) => plan,
            Ok(Err(undecided)) => return Some(Ok(undecided)),
            Err(e) => return Some(Err(e)),
        };
        for Planned { limit, key, quota } in plan {
            let (v, quota) = self.acquire_local(limit, &key, quota);
            if let Some(stop) = self.settle(call, limit, quota, &v) {
                return Some(Ok(stop));
            }
        }
        Some(Ok(Flow::Continue))
    }

    async fn request_filter(&self, call: &mut RequestCall<'_>) -> Result<Flow, PluginError> {
        let plan = match self.plan(call).await? {
            Ok(plan) => plan,
            Err(undecided) => return Ok(undecided),
        };
        for Planned { limit, key, quota } in plan {
            let (v, quota) = if let Some(r) = &self.redis {
                let now = self.clock.nanos();
                // Warm-up is refused with Redis at prepare.
                let v = match r.acquire_cached(limit.index, &key, quota, now, limit.fixed()).await {
                    Ok(v) => v,
                    Err(why) if r.policy.fallback_local => {
                        tracing::debug!(%why, "limit-count: redis unavailable, counting locally");
                        limit.counters.acquire(&key, quota, now)
                    }
                    Err(why) => match redis::count::unavailable(self.allow_degradation, &why) {
                        Some(stop) => return Ok(Flow::Stop(stop)),
                        None => continue,
                    },
                };
                (v, quota)
            } else {
                self.acquire_local(limit, &key, quota)
            };
            if let Some(stop) = self.settle(call, limit, quota, &v) {
                return Ok(stop);
            }
        }
        Ok(Flow::Continue)
    }
}

impl LimitCount {
    /// Every applicable quota of the request, resolved before any is counted (as APISIX: an
    /// unusable value counts nothing); `Ok(Err(flow))` answers the request undecided. Changes
    /// nothing, so a synchronous hook may plan and then decline.
    async fn plan(&self, vars: &mut impl Vars) -> Result<Result<Few<Planned<'_>>, Flow>, PluginError> {
        let mut plan = Few::None;
        for limit in &self.limits {
            let key = if limit.fallback {
                limit.key.resolve_or_client(vars).await?
            } else {
                limit.key.resolve(vars).await?
            };
            let Some(key) = key else {
                if limit.fallback {
                    return Ok(Err(reject::undecided(self.allow_degradation, "no key, no client address")));
                }
                continue;
            };
            // (ext) A pattern may let the key pass, or count it under the shared key; a
            // specific item sets its count.
            let (key, item) = match (&self.per_key, limit.fallback) {
                (Some(per_key), true) => match per_key.select(key) {
                    Selected::Pass => continue,
                    Selected::Limit(k, item) => (k, item.copied()),
                },
                _ => (key, None),
            };
            let count = match item {
                Some(count) => Ok(count),
                None => limit.count.resolve(vars, 1).await?,
            };
            let window = limit.window.resolve(vars, 1).await?;
            let (count, window) = match (count, window) {
                (Ok(c), Ok(w)) => (c, w),
                (Err(why), _) | (_, Err(why)) => {
                    return Ok(Err(reject::undecided(self.allow_degradation, &why)));
                }
            };
            let quota = Quota {
                count,
                window: window.saturating_mul(NANOS_PER_SEC),
            };
            plan.push(Planned { limit, key, quota });
        }
        if plan.is_empty() && self.rules {
            return Ok(Err(reject::undecided(self.allow_degradation, "no rule applies")));
        }
        Ok(Ok(plan))
    }

    /// Counts one planned quota in this runner's memory, now.
    fn acquire_local(&self, limit: &Limit, key: &Text, quota: Quota) -> (Verdict, Quota) {
        let now = self.clock.nanos();
        // (ext) A warming key gets a share of its count (warm-up is for the main key only).
        let rate = quota.count as f64 * NANOS_PER_SEC as f64 / quota.window as f64;
        WarmUp::check(self.warm_up.as_deref(), key, now, rate, |share| {
            let quota = Quota {
                count: ((quota.count as f64 * share) as u64).max(1),
                ..quota
            };
            let v = limit.counters.acquire(key, quota, now);
            (v.admitted, (v, quota))
        })
    }

    /// What a counted quota means for the request: `Some(stop)` rejects it; an admitted (or
    /// dry-run) request gets the quota headers and goes on to the next quota.
    fn settle(&self, call: &mut RequestCall<'_>, limit: &Limit, quota: Quota, v: &Verdict) -> Option<Flow> {
        if v.admitted || self.dry_run {
            if !v.admitted {
                reject::dry_run_reject(call, Self::NAME);
            }
            if self.show_headers {
                for (name, value) in limit.header_values(call, quota, v) {
                    call.set_response_header(name, value);
                }
            }
            return None;
        }
        let mut stop = Stop::new(self.reject.status).with_body(self.reject.body.clone());
        if self.show_headers {
            for (name, value) in limit.header_values(call, quota, v) {
                stop = stop.with_header(name, value);
            }
        }
        stop.headers.extend(self.reject.headers.iter().cloned());
        if self.retry_after {
            let secs = secs_until(0, v.reset_in).max(1);
            stop = stop.with_header("Retry-After", secs.to_string());
        }
        Some(Flow::Stop(stop))
    }
}

impl Limit {
    /// The quota is the same for every request (not read from variables).
    fn fixed(&self) -> bool {
        self.count.fixed().is_some() && self.window.fixed().is_some()
    }

    /// The three quota headers. The numbers are written side by side on the stack and copied
    /// into the call's reused buffer in one go (each copy costs a few hundred instructions);
    /// each value is a slice of that copy. A fixed count's text was written at prepare.
    fn header_values(&self, call: &mut RequestCall<'_>, q: Quota, v: &Verdict) -> [(Text, Text); 3] {
        let [limit, remaining, reset] = self.headers.clone();
        let fixed_count = match &self.count_text {
            // A specific item's count differs from the conf's.
            Some((fixed, text)) if *fixed == q.count => Some(text.clone()),
            _ => None,
        };
        let mut row = [0; 3 * 20];
        let mut ends = [0; 3];
        let mut len = 0;
        let mut buf = [0; 20];
        let numbers = [q.count, v.remaining, secs_until(0, v.reset_in)];
        for (i, (n, end)) in numbers.into_iter().zip(&mut ends).enumerate() {
            if i > 0 || fixed_count.is_none() {
                let d = digit_bytes(n, &mut buf);
                row[len..len + d.len()].copy_from_slice(d);
                len += d.len();
            }
            *end = len;
        }
        let row = call.copy_text(std::str::from_utf8(&row[..len]).expect("digits are ASCII"));
        let number = |from: usize, to: usize| row.slice_ref(&row.as_str()[from..to]);
        [
            (limit, fixed_count.unwrap_or_else(|| number(0, ends[0]))),
            (remaining, number(ends[0], ends[1])),
            (reset, number(ends[1], ends[2])),
        ]
    }
}

/// A conf's limit before its counters exist.
struct Spec {
    key: KeySource,
    fallback: bool,
    count: Amount,
    window: Amount,
    headers: [String; 3],
}

#[cfg(test)]
mod tests {
    use super::*;
    use ext_plugin_sdk::harness::{TestCall, TestEnv};
    use ext_plugin_sdk::harness::request;
    use std::time::Duration;

    const S: u64 = NANOS_PER_SEC;

    const Q: Quota = Quota {
        count: 3,
        window: 10 * S,
    };

    fn counters(kind: WindowType) -> Counters {
        Counters::new(kind, 10, Some(Q.window), 100)
    }

    #[test]
    fn fixed_window_admits_exactly_count_and_resets() {
        let c = counters(WindowType::Fixed);
        let t0 = 1000 * S;
        for i in 0..3 {
            let v = c.acquire("k", Q, t0 + i * S);
            assert!(v.admitted);
            assert_eq!(v.remaining, 2 - i);
            assert_eq!(v.reset_in, 10 * S - i * S, "the window starts at the first request");
        }
        assert!(!c.acquire("k", Q, t0 + 9 * S).admitted);
        assert!(c.acquire("other", Q, t0 + 9 * S).admitted, "keys are independent");
        assert!(!c.acquire("k", Q, t0 + 10 * S - 1).admitted);
        let v = c.acquire("k", Q, t0 + 10 * S);
        assert_eq!((v.admitted, v.remaining, v.reset_in), (true, 2, 10 * S));
    }

    /// Issue 11 #5: the longest windows (and a window past them, refused) never admit a second
    /// request of a `count` of 1, fixed or sliding.
    #[tokio::test]
    async fn huge_windows_never_admit_past_the_count() {
        for window in ["18446744073", "9007199254740991", "\"18446744073\""] {
            for kind in ["fixed", "sliding"] {
                let conf = format!(r#"{{"count": 1, "time_window": {window}, "window_type": "{kind}"}}"#);
                let p = plugin(&conf, &TestEnv::default().with_clock(Clock::manual())).await.unwrap();
                let flows = [run(&p, request(Method::Get, "/")).await.0, run(&p, request(Method::Get, "/")).await.0];
                assert_eq!(flows[0], Flow::Continue, "{conf}");
                assert!(matches!(&flows[1], Flow::Stop(s) if s.status == 503), "{conf}");
            }
        }
        let e = plugin(r#"{"count": 1, "time_window": 36028797018963968}"#, &TestEnv::default()).await.err().unwrap();
        assert!(e.message().contains("time_window"), "{e}");
    }

    #[test]
    fn sliding_window_smooths_a_boundary_burst() {
        let fixed = counters(WindowType::Fixed);
        let sliding = counters(WindowType::Sliding);
        let t0 = 1000 * S;
        // Three at the end of one window, three right after it ends.
        let burst = |c: &Counters| {
            let late: usize = (0..3).filter(|_| c.acquire("k", Q, t0 + 9_500_000_000).admitted).count();
            let early: usize = (0..3).filter(|_| c.acquire("k", Q, t0 + 10_100_000_000).admitted).count();
            (late, early)
        };
        fixed.acquire("k", Q, t0);
        sliding.acquire("k", Q, t0);
        assert_eq!(burst(&fixed), (2, 3), "a fixed window forgives the boundary");
        assert_eq!(burst(&sliding), (2, 1), "the t0 request left the sliding window, the burst did not");
        let v = sliding.acquire("k", Q, t0 + 10_100_000_000);
        assert!(!v.admitted);
        assert_eq!(v.reset_in, 19 * S - 10_100_000_000, "the 9.5 s bucket leaves at 19 s");
    }

    async fn plugin(conf: &str, env: &TestEnv) -> Result<LimitCount, ConfError> {
        let parsed: LimitCountConf = serde_json::from_str(conf).map_err(ConfError::from)?;
        env.with("route#1#ext-plugin-pre-req#1", LimitCount::NAME, conf, &[LimitCount::NAME], |e| {
            LimitCount::prepare(parsed, e)
        })
    }

    async fn run(p: &LimitCount, req: ext_plugin_sdk::model::HttpReqCallReq) -> (Flow, Vec<(String, String)>) {
        let mut c = TestCall::new(req);
        // As a chain runs it: the synchronous hook, and the future only when that declines.
        let flow = match p.request_filter_sync(&mut c.call()) {
            Some(decided) => decided,
            None => p.request_filter(&mut c.call()).await,
        };
        let flow = flow.unwrap();
        let headers = c
            .resp_headers()
            .iter()
            .map(|p| (p.name.to_string(), p.value.as_deref().unwrap_or("").to_owned()))
            .collect();
        (flow, headers)
    }

    #[tokio::test]
    async fn rules_apply_in_order_and_skip_unresolved_keys() {
        let env = TestEnv::default().with_clock(Clock::manual());
        let conf = r#"{"rules": [{"count": 1, "time_window": 60, "key": "$http_x_user", "header_prefix": "user"},
                                {"count": 5, "time_window": 60, "key": "$remote_addr"}], "rejected_code": 429}"#;
        let p = plugin(conf, &env).await.unwrap();
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
    async fn the_sync_hook_decides_local_keys_and_declines_gateway_ones_untouched() {
        let conf = r#"{"count": 2, "time_window": 60, "rejected_code": 429}"#;
        let (sync_env, async_env) = (TestEnv::default().with_clock(Clock::manual()), TestEnv::default().with_clock(Clock::manual()));
        let (now, later) = (plugin(conf, &sync_env).await.unwrap(), plugin(conf, &async_env).await.unwrap());
        for expect in [200, 200, 429] {
            let mut a = TestCall::new(request(Method::Get, "/").with_src_ip("10.0.0.1"));
            let decided = now.request_filter_sync(&mut a.call()).expect("the client address is at hand").unwrap();
            let mut b = TestCall::new(request(Method::Get, "/").with_src_ip("10.0.0.1"));
            let awaited = later.request_filter(&mut b.call()).await.unwrap();
            assert_eq!(status(&decided), expect);
            assert_eq!(decided, awaited, "both ways count alike");
            assert_eq!(a.resp_headers(), b.resp_headers());
        }
        // A key only the gateway knows: declined before counting or asking, then awaited.
        let p = plugin(r#"{"count": 1, "time_window": 60, "key": "request_time"}"#, &sync_env).await.unwrap();
        let mut c = TestCall::new(request(Method::Get, "/")).with_gateway_var("request_time", "7");
        assert!(p.request_filter_sync(&mut c.call()).is_none());
        assert!(c.asked().is_empty() && c.resp_headers().is_empty(), "declining changed nothing");
        assert_eq!(p.request_filter(&mut c.call()).await.unwrap(), Flow::Continue);
        assert_eq!(c.asked(), ["request_time"]);
        assert_eq!(run(&p, request(Method::Get, "/")).await.0, Flow::Continue, "no such var: the client counts");
    }

    #[tokio::test]
    async fn reject_dry_run_retry_after_and_time() {
        let env = TestEnv::default().with_clock(Clock::manual());
        let clock = env.clock();
        let conf = r#"{"count": 1, "time_window": 30, "rejected_code": 429, "rejected_msg": "no",
                       "retry_after": true, "rejected_headers": [{"key": "X-Why", "value": "quota"}]}"#;
        let p = plugin(conf, &env).await.unwrap();
        run(&p, request(Method::Get, "/")).await;
        clock.advance(Duration::from_millis(10_500));
        let Flow::Stop(s) = run(&p, request(Method::Get, "/")).await.0 else { panic!("must reject") };
        let h: Vec<_> = s.headers.iter().map(|p| format!("{}={}", p.name, p.value.as_deref().unwrap())).collect();
        assert_eq!(h, ["X-RateLimit-Limit=1", "X-RateLimit-Remaining=0", "X-RateLimit-Reset=20", "X-Why=quota", "Retry-After=20"]);
        assert_eq!(&s.body[..], b"{\"error_msg\":\"no\"}\n");
        clock.advance(Duration::from_secs(20));
        assert_eq!(run(&p, request(Method::Get, "/")).await.0, Flow::Continue);

        let dry = plugin(r#"{"count": 1, "time_window": 30, "dry_run": true}"#, &env).await.unwrap();
        run(&dry, request(Method::Get, "/")).await;
        let (flow, headers) = run(&dry, request(Method::Get, "/")).await;
        assert_eq!(flow, Flow::Continue);
        assert!(headers.contains(&("X-RateLimit-Remaining".into(), "0".into())));
    }

    fn status(flow: &Flow) -> u16 {
        match flow {
            Flow::Continue => 200,
            Flow::Stop(s) => s.status,
        }
    }

    #[tokio::test]
    async fn a_rule_key_takes_a_default_with_question_marks() {
        let env = TestEnv::default().with_clock(Clock::manual());
        let conf = r#"{"rules": [{"count": 1, "time_window": 10, "key": "${http_project ?? apisix}"}],
                       "rejected_code": 503}"#;
        let p = plugin(conf, &env).await.unwrap();
        let with = |v: &str| request(Method::Get, "/").with_header("project", v);
        assert_eq!(status(&run(&p, with("kubernetes")).await.0), 200);
        assert_eq!(status(&run(&p, request(Method::Get, "/")).await.0), 200, "key `apisix`");
        assert_eq!(status(&run(&p, request(Method::Get, "/")).await.0), 503, "`apisix` again");
        assert_eq!(status(&run(&p, with("apisix")).await.0), 503, "the default is the key");
        assert_eq!(status(&run(&p, with("kubernetes")).await.0), 503);
    }

    #[tokio::test]
    async fn rules_of_which_none_applies_answer_500() {
        let env = TestEnv::default().with_clock(Clock::manual());
        let conf = r#"{"rules": [{"count": 5, "time_window": 60, "key": "${http_user}"},
                                {"count": 5, "time_window": 60, "key": "${http_project}"}]}"#;
        let p = plugin(conf, &env).await.unwrap();
        assert_eq!(run(&p, request(Method::Get, "/")).await.0, Flow::Stop(Stop::new(500)));
        let degrade = conf.replace("]}", r#"], "allow_degradation": true}"#);
        let p = plugin(&degrade, &env).await.unwrap();
        assert_eq!(run(&p, request(Method::Get, "/")).await.0, Flow::Continue, "allow_degradation");
    }

    #[tokio::test]
    async fn counts_and_windows_may_be_variables() {
        let env = TestEnv::default().with_clock(Clock::manual());
        let conf = r#"{"count": "${http_count ?? 2}", "time_window": "${http_time_window ?? 5}",
                       "rejected_code": 503, "key_type": "var", "key": "remote_addr"}"#;
        let p = plugin(conf, &env).await.unwrap();
        let mut codes = Vec::new();
        for _ in 0..3 {
            codes.push(status(&run(&p, request(Method::Get, "/")).await.0));
        }
        assert_eq!(codes, [200, 200, 503]);
        let (_, headers) = run(&p, request(Method::Get, "/").with_header("count", "5")).await;
        assert!(headers.contains(&("X-RateLimit-Limit".into(), "5".into())), "{headers:?}");
        assert!(headers.contains(&("X-RateLimit-Remaining".into(), "2".into())), "{headers:?}");
        // The longest window a client may ask for: no arithmetic overflows, for either window.
        let longest = || request(Method::Get, "/").with_src_ip("10.0.0.8").with_header("time-window", "9007199254740991");
        assert_eq!(status(&run(&p, longest()).await.0), 200);
        assert_eq!(status(&run(&p, longest()).await.0), 200);
        assert_eq!(status(&run(&p, longest()).await.0), 503);
        let sliding = plugin(&conf.replace("\"key_type\"", "\"window_type\": \"sliding\", \"key_type\""), &env)
            .await
            .unwrap();
        for (i, expect) in [200, 200, 503].into_iter().enumerate() {
            assert_eq!(status(&run(&sliding, longest()).await.0), expect, "sliding request {i}");
        }
        for bad in ["0", "-1", "1.5", "9999999999999999", "many"] {
            let flow = run(&p, request(Method::Get, "/").with_header("count", bad)).await.0;
            assert_eq!(flow, Flow::Stop(Stop::new(500)), "count {bad}");
        }
    }

    #[tokio::test]
    async fn keys_apisix_accepts() {
        let env = TestEnv::default().with_clock(Clock::manual());
        // A template without `$` resolves to nothing: the client address counts.
        let p = plugin(
            r#"{"count": 1, "time_window": 60, "key_type": "var_combination", "key": "abcdefgh"}"#,
            &env,
        )
        .await
        .unwrap();
        let from = |ip: &str| request(Method::Get, "/").with_src_ip(ip);
        assert_eq!(status(&run(&p, from("10.0.0.1")).await.0), 200);
        assert_eq!(status(&run(&p, from("10.0.0.1")).await.0), 503);
        assert_eq!(status(&run(&p, from("10.0.0.2")).await.0), 200);
        // `$ENV://NAME` is read at prepare time (PATH is set in every test environment).
        let path = std::env::var("PATH").unwrap();
        let p = plugin(
            r#"{"count": 1, "time_window": 60, "key_type": "constant", "key": "$ENV://PATH"}"#,
            &env,
        )
        .await
        .unwrap();
        assert_eq!(status(&run(&p, from("10.0.0.1")).await.0), 200);
        assert_eq!(status(&run(&p, from("10.0.0.2")).await.0), 503, "one constant key");
        assert!(!path.is_empty());
    }

    #[tokio::test]
    async fn an_empty_rejected_msg_is_refused() {
        let env = TestEnv::default().with_clock(Clock::manual());
        let e = plugin(r#"{"count": 1, "time_window": 1, "rejected_msg": ""}"#, &env)
            .await
            .err()
            .unwrap();
        assert!(e.message().contains("rejected_msg"), "{e}");
    }

    #[tokio::test]
    async fn bad_confs_name_the_field() {
        let env = TestEnv::default();
        for (conf, why) in [
            (r#"{"count": 1}"#, "required"),
            (r#"{"count": 0, "time_window": 1}"#, "1 to 2^53 - 1"),
            (r#"{"count": 1, "time_window": 1, "rules": [{"count": 1, "time_window": 1, "key": "$a"}]}"#, "exclusive"),
            (r#"{"count": 1, "time_window": 1, "policy": "redis"}"#, "policy"),
            (r#"{"count": 1, "time_window": 1, "bogus": 1}"#, "bogus"),
            (r#"{"count": 1, "time_window": 1, "rejected_code": 99}"#, "rejected_code"),
            (r#"{"count": 1, "time_window": 1, "window_type": "sliding", "buckets": 0}"#, "buckets"),
            (r#"{"count": -100, "time_window": 1}"#, "negative"),
            (r#"{"count": "abc", "time_window": 1}"#, "count"),
            (r#"{"count": 1, "time_window": 0}"#, "time_window"),
            (r#"{"rules": [{"count": 5, "time_window": 10, "key": "${http_company}"},
                           {"count": 8, "time_window": 20, "key": "${http_company}"}]}"#, "repeat the key"),
            (r#"{"group": "g", "rules": [{"count": 5, "time_window": 10, "key": "$a"}]}"#, "exclusive"),
            (r#"{"group": "v", "count": "${http_c ?? 1}", "time_window": 1}"#, "group"),
            (r#"{"count": 1, "time_window": 1, "rejected_msg": true}"#, "expected a string"),
        ] {
            let e = plugin(conf, &env).await.err().expect(conf);
            assert!(e.message().contains(why), "{conf}: {e}");
        }
        let _first = plugin(r#"{"count": 1, "time_window": 1, "group": "g"}"#, &env).await.unwrap();
        let e = plugin(r#"{"count": 2, "time_window": 1, "group": "g"}"#, &env).await.err().unwrap();
        assert!(e.message().contains("group"), "{e}");
    }
}

