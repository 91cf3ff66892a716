//! The rules file: a multi-document YAML of OpenSergo CRs exactly as Kubernetes users write them
//! (`apiVersion`, `kind`, `metadata{name, namespace, labels.app}`, `spec`).
//!
//! * A file that does not parse fails whole, with line and column ([`parse`] returns `Err`): the
//!   caller keeps the rules it had.
//! * An object that parses but cannot be used (unknown kind, unknown or ill-typed field, bad
//!   duration, no app) is skipped and named in [`SourceRules::problems`]; the rest apply.
//!   Dangling references are found later, when rules are resolved against strategies.
//! * Lenient forms, accepted with a note: `statDuration: "1s"` for `statDurationSeconds`,
//!   `limitMode: Global`/`GlobalToLocal` (enforced locally), a strategy reference without
//!   `kind`, `spec.fallbackAction: <name>` or `spec.action{name, kind}`, `spec.selector.app` for
//!   `metadata.labels.app`.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{json, Value};

use super::model::*;
use super::tagging::{compile_lane, compile_router, RouteSpec, TagSpec};

/// Parses a whole rules file. `Err` (with line and column) when it is not YAML at all.
pub fn parse(text: &str, version: &str) -> Result<SourceRules, String> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(text).map_err(|e| {
        // The first line of the message ("error: line L column C: why"); a snippet follows.
        let full = e.to_string();
        let first = full.lines().next().unwrap_or("").trim_start_matches("error: ");
        match e.location() {
            Some(at) if !first.starts_with("line ") => {
                format!("line {} column {}: {first}", at.line(), at.column())
            }
            _ => first.to_owned(),
        }
    })?;
    let mut out = SourceRules::default();
    for (i, doc) in docs.into_iter().enumerate() {
        if doc.is_null() {
            continue; // an empty document (a trailing `---`)
        }
        let what = describe(i, &doc);
        if let Err(why) = object(doc, version, &mut out) {
            out.problems.push(format!("{what}: skipped: {why}"));
        }
    }
    Ok(out)
}

/// `document 3 (RateLimitStrategy rate-limit-foo)`, for messages.
fn describe(i: usize, doc: &Value) -> String {
    let kind = doc.get("kind").and_then(Value::as_str).unwrap_or("?");
    let name = doc
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("?");
    format!("rules file document {} ({kind} {name})", i + 1)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Object {
    #[serde(default)]
    api_version: String,
    kind: String,
    metadata: Metadata,
    #[serde(default)]
    spec: Value,
    /// Written back by Kubernetes; meaningless here.
    #[serde(default)]
    #[allow(dead_code)]
    status: Value,
}

#[derive(Deserialize)]
struct Metadata {
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    /// Every other metadata field (annotations, uid, ...) is Kubernetes bookkeeping.
    #[serde(flatten)]
    #[allow(dead_code)]
    rest: BTreeMap<String, Value>,
}

fn typed<T: serde::de::DeserializeOwned>(spec: Value) -> Result<T, String> {
    serde_json::from_value(spec).map_err(|e| format!("spec: {e}"))
}

fn object(doc: Value, version: &str, out: &mut SourceRules) -> Result<(), String> {
    let o: Object = serde_json::from_value(doc).map_err(|e| e.to_string())?;
    let group_ok = |group: &str| o.api_version.is_empty() || o.api_version.starts_with(group);
    let name = o.metadata.name.clone();
    if name.is_empty() {
        return Err("metadata.name is empty".into());
    }
    if o.kind == "HttpRequestFallbackAction" {
        let f = fallback(typed(o.spec)?)?;
        out.fallbacks.insert(name, f);
        return Ok(());
    }
    let selector_app = o.spec.pointer("/selector/app").and_then(Value::as_str).map(str::to_owned);
    let app = match (o.metadata.labels.get("app"), selector_app) {
        (Some(a), _) => a.clone(),
        (None, Some(a)) => {
            out.problems.push(format!(
                "{} {name}: bound by spec.selector.app (Kubernetes binds by metadata.labels.app)",
                o.kind
            ));
            a
        }
        (None, None) => return Err("no app: set metadata.labels.app".into()),
    };
    let namespace = o.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let kind = o.kind.clone();
    let mut spec = o.spec;
    if let Some(m) = spec.as_object_mut() {
        m.remove("selector");
    }
    let mut notes = Vec::new();
    let target = out.apps.entry((namespace, app)).or_default();
    target.version = version.to_owned();
    match kind.as_str() {
        "FaultToleranceRule" if group_ok("fault-tolerance.opensergo.io/") => {
            target.rules.push(rule(name.clone(), typed(spec)?, &mut notes)?);
        }
        "TrafficRouter" if group_ok("traffic.opensergo.io/") => {
            target.routers.push(Arc::new(router(&name, typed(spec)?, &mut notes)?));
        }
        "TrafficLane" if group_ok("traffic.opensergo.io/") => {
            target.lanes.push(Arc::new(lane(&name, typed(spec)?, &mut notes)?));
        }
        k => {
            let Some(kind) = StrategyKind::from_name(k).filter(|_| group_ok("fault-tolerance.opensergo.io/")) else {
                return Err(format!(
                    "unknown kind {k:?} (api version {:?}); this runner reads FaultToleranceRule, \
                     RateLimitStrategy, ThrottlingStrategy, ConcurrencyLimitStrategy, \
                     CircuitBreakerStrategy, HttpRequestFallbackAction, TrafficRouter and TrafficLane",
                    o.api_version
                ));
            };
            let s = strategy(kind, spec, &mut notes)?;
            s.validate()?;
            target.strategies.insert((kind, name.clone()), s);
        }
    }
    out.problems
        .extend(notes.into_iter().map(|n| format!("{kind} {name}: {n}")));
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RuleSpec {
    targets: Vec<TargetSpec>,
    strategies: Vec<RefSpec>,
    #[serde(default)]
    fallback_action: Option<String>,
    #[serde(default)]
    action: Option<RefSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct TargetSpec {
    target_resource_name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RefSpec {
    name: String,
    #[serde(default)]
    kind: Option<String>,
}

fn rule(name: String, s: RuleSpec, notes: &mut Vec<String>) -> Result<Rule, String> {
    if s.targets.is_empty() || s.strategies.is_empty() {
        return Err("targets and strategies must not be empty".into());
    }
    let mut strategies = Vec::new();
    for r in s.strategies {
        let kind = match r.kind.as_deref() {
            Some(k) => Some(StrategyKind::from_name(k).ok_or_else(|| {
                format!("strategies: unknown kind {k:?} for {:?}", r.name)
            })?),
            None => {
                notes.push(format!(
                    "strategy {:?} referenced without kind: resolved by its name",
                    r.name
                ));
                None
            }
        };
        strategies.push(StrategyRef { name: r.name, kind });
    }
    let fallback = match (s.fallback_action, s.action) {
        (Some(f), None) => Some(f),
        (None, Some(a)) => {
            if a.kind.as_deref().is_some_and(|k| k != "HttpRequestFallbackAction") {
                return Err(format!("action: unknown kind {:?}", a.kind.unwrap_or_default()));
            }
            Some(a.name)
        }
        (None, None) => None,
        (Some(_), Some(_)) => return Err("set fallbackAction or action, not both".into()),
    };
    let targets = s.targets.into_iter().map(|t| t.target_resource_name).collect::<Vec<_>>();
    if targets.iter().any(String::is_empty) {
        return Err("targets: a targetResourceName is empty".into());
    }
    Ok(Rule {
        name,
        targets,
        strategies,
        fallback,
    })
}

fn limit_mode(mode: Option<&str>, notes: &mut Vec<String>) -> Result<(), String> {
    match mode {
        None | Some("Local") => Ok(()),
        Some(m @ ("Global" | "GlobalToLocal")) => {
            notes.push(format!(
                "limitMode {m} is enforced locally, per runner process (no cluster-wide backend is configured)"
            ));
            Ok(())
        }
        Some(m) => Err(format!("limitMode {m:?} is not Local, Global or GlobalToLocal")),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RateLimitSpec {
    #[serde(default)]
    metric_type: Option<String>,
    #[serde(default)]
    limit_mode: Option<String>,
    threshold: i64,
    #[serde(default)]
    stat_duration_seconds: Option<i64>,
    #[serde(default)]
    stat_duration: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ThrottlingSpec {
    min_interval_of_requests: String,
    #[serde(default)]
    queue_timeout: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ConcurrencySpec {
    max_concurrency: i64,
    #[serde(default)]
    limit_mode: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct BreakerSpec {
    strategy: String,
    trigger_ratio: Value,
    stat_duration: String,
    recovery_timeout: String,
    #[serde(default)]
    min_request_amount: Option<i64>,
    #[serde(default)]
    slow_conditions: Option<SlowSpec>,
    #[serde(default)]
    #[allow(dead_code)]
    error_conditions: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SlowSpec {
    max_allowed_rt: String,
}

fn strategy(kind: StrategyKind, spec: Value, notes: &mut Vec<String>) -> Result<Strategy, String> {
    let non_negative = |field: &str, n: i64| {
        u64::try_from(n).map_err(|_| format!("{field} must not be negative, got {n}"))
    };
    Ok(match kind {
        StrategyKind::RateLimit => {
            let s: RateLimitSpec = typed(spec)?;
            if let Some(m) = s.metric_type.as_deref().filter(|m| *m != "RequestAmount") {
                return Err(format!("metricType {m:?} is not RequestAmount"));
            }
            limit_mode(s.limit_mode.as_deref(), notes)?;
            let window_ms = match (s.stat_duration_seconds, s.stat_duration) {
                (Some(secs), None) => non_negative("statDurationSeconds", secs)?.saturating_mul(1000),
                (None, Some(d)) => {
                    notes.push("statDuration read as statDurationSeconds".into());
                    parse_duration(&d).map_err(|e| format!("statDuration: {e}"))?
                }
                (None, None) => return Err("statDurationSeconds is required".into()),
                (Some(_), Some(_)) => {
                    return Err("set statDurationSeconds or statDuration, not both".into())
                }
            };
            Strategy::RateLimit {
                threshold: non_negative("threshold", s.threshold)?,
                window_ms,
            }
        }
        StrategyKind::Throttling => {
            let s: ThrottlingSpec = typed(spec)?;
            Strategy::Throttling {
                interval_ms: parse_duration(&s.min_interval_of_requests)
                    .map_err(|e| format!("minIntervalOfRequests: {e}"))?,
                queue_timeout_ms: match s.queue_timeout {
                    Some(q) => parse_duration(&q).map_err(|e| format!("queueTimeout: {e}"))?,
                    None => 0,
                },
            }
        }
        StrategyKind::ConcurrencyLimit => {
            let s: ConcurrencySpec = typed(spec)?;
            limit_mode(s.limit_mode.as_deref(), notes)?;
            Strategy::ConcurrencyLimit {
                max: non_negative("maxConcurrency", s.max_concurrency)?,
            }
        }
        StrategyKind::CircuitBreaker => {
            let s: BreakerSpec = typed(spec)?;
            let slow_rt_ms = match (s.strategy.as_str(), s.slow_conditions) {
                ("SlowRequestRatio", Some(c)) => Some(
                    parse_duration(&c.max_allowed_rt)
                        .map_err(|e| format!("slowConditions.maxAllowedRt: {e}"))?,
                ),
                ("SlowRequestRatio", None) => {
                    return Err("SlowRequestRatio needs slowConditions.maxAllowedRt".into())
                }
                ("ErrorRequestRatio", _) => None,
                (other, _) => {
                    return Err(format!(
                        "strategy {other:?} is not SlowRequestRatio or ErrorRequestRatio"
                    ))
                }
            };
            Strategy::CircuitBreaker {
                slow_rt_ms,
                ratio: parse_ratio(&s.trigger_ratio).map_err(|e| format!("triggerRatio: {e}"))?,
                window_ms: parse_duration(&s.stat_duration)
                    .map_err(|e| format!("statDuration: {e}"))?,
                recovery_ms: parse_duration(&s.recovery_timeout)
                    .map_err(|e| format!("recoveryTimeout: {e}"))?,
                min_requests: non_negative("minRequestAmount", s.min_request_amount.unwrap_or(1))?
                    .max(1),
            }
        }
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FallbackSpec {
    behavior: String,
    behavior_desc: BehaviorDesc,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct BehaviorDesc {
    #[serde(default = "default_fallback_status")]
    response_status_code: u16,
    #[serde(default)]
    response_content_body: String,
    #[serde(default)]
    response_additional_headers: Vec<HeaderSpec>,
}

fn default_fallback_status() -> u16 {
    429
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderSpec {
    key: String,
    value: String,
}

fn fallback(s: FallbackSpec) -> Result<Fallback, String> {
    if s.behavior != "ReturnProvidedResponse" {
        return Err(format!("behavior {:?} is not ReturnProvidedResponse", s.behavior));
    }
    let d = s.behavior_desc;
    if !(200..=599).contains(&d.response_status_code) {
        return Err(format!("responseStatusCode {} is not an HTTP status", d.response_status_code));
    }
    for h in &d.response_additional_headers {
        if !crate::support::reject::is_token(&h.key) {
            return Err(format!("responseAdditionalHeaders: {:?} is not a header name", h.key));
        }
    }
    Ok(Fallback {
        status: d.response_status_code,
        body: d.response_content_body,
        headers: d
            .response_additional_headers
            .into_iter()
            .map(|h| (h.key, h.value))
            .collect(),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RouterSpec {
    #[serde(default)]
    #[allow(dead_code)]
    hosts: Vec<String>,
    #[serde(default)]
    http: Vec<HttpRouteSpec>,
}

/// Istio's HTTPRoute: `match` and `route` decide the tag; the fields that act on the forwarded
/// request are the gateway's business and are ignored with a note.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpRouteSpec {
    #[serde(default)]
    #[allow(dead_code)]
    name: Option<String>,
    #[serde(default, rename = "match")]
    match_: Option<Vec<Value>>,
    route: Vec<DestinationWeight>,
    #[serde(flatten)]
    ignored: BTreeMap<String, Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DestinationWeight {
    destination: Destination,
    #[serde(default)]
    weight: Option<u32>,
    #[serde(default)]
    #[allow(dead_code)]
    headers: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Destination {
    host: String,
    #[serde(default)]
    subset: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    port: Option<Value>,
    #[serde(default)]
    fallback: Option<Box<Destination>>,
}

impl Destination {
    /// The label a request gets: the subset, else the host.
    fn tag(&self) -> String {
        self.subset.clone().filter(|s| !s.is_empty()).unwrap_or_else(|| self.host.clone())
    }
}

/// HTTPRoute fields that act on the forwarded request, ignored by a data plane that only labels.
const ACTING_FIELDS: [&str; 9] = [
    "rewrite", "timeout", "retries", "fault", "headers", "mirror", "mirrorPercentage",
    "corsPolicy", "redirect",
];

/// An Istio HTTPMatchRequest as the traffic-tag engine reads it (`headers`, `queryParams`,
/// `uri`, `method`); `name` is dropped, anything else is refused.
fn http_match(m: Value) -> Result<Value, String> {
    let Value::Object(mut m) = m else {
        return Err("a match entry must be an object".into());
    };
    m.remove("name");
    if let Some(bad) = m
        .keys()
        .find(|k| !["headers", "queryParams", "uri", "method"].contains(&k.as_str()))
    {
        return Err(format!(
            "match field {bad:?} is not supported (headers, queryParams, uri and method are)"
        ));
    }
    Ok(Value::Object(m))
}

fn router(name: &str, s: RouterSpec, notes: &mut Vec<String>) -> Result<Router, String> {
    let mut routes = Vec::new();
    for (i, h) in s.http.into_iter().enumerate() {
        if let Some(bad) = h.ignored.keys().find(|k| !ACTING_FIELDS.contains(&k.as_str())) {
            return Err(format!("http[{i}]: unknown field {bad:?}"));
        }
        if !h.ignored.is_empty() {
            notes.push(format!(
                "http[{i}]: {} ignored: the runner labels requests, the gateway forwards them",
                h.ignored.keys().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
        let single = h.route.len() == 1;
        let tags = h
            .route
            .into_iter()
            .map(|d| {
                let weight = match (d.weight, single) {
                    (Some(w), _) => w,
                    (None, true) => 1,
                    (None, false) => {
                        return Err(format!("http[{i}]: a weight is needed with several routes"))
                    }
                };
                Ok(TagSpec {
                    tag: d.destination.tag(),
                    weight,
                    fallback: d.destination.fallback.as_deref().map(Destination::tag),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let matches = h
            .match_
            .map(|list| list.into_iter().map(http_match).collect::<Result<Vec<_>, _>>())
            .transpose()
            .map_err(|e| format!("http[{i}]: {e}"))?;
        routes.push(RouteSpec { matches, tags });
    }
    compile_router(name, routes)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LaneSpec {
    rules: LaneRules,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct LaneRules {
    traffic: LaneTraffic,
    lane: LaneName,
    #[serde(default)]
    trace_id_baggage: Option<String>,
    /// Which workloads serve the lane: the gateway's upstream choice, not the runner's.
    #[serde(default)]
    workload: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LaneTraffic {
    http: Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LaneName {
    name: String,
}

/// The specification's sample writes headers as a list of one-entry maps; Istio writes a map.
fn lane_match(m: Value) -> Result<Value, String> {
    let mut m = http_match(m)?;
    if let Some(Value::Array(list)) = m.get("headers").cloned() {
        let mut merged = serde_json::Map::new();
        for item in list {
            let Value::Object(one) = item else {
                return Err("headers: a list entry must be a map".into());
            };
            merged.extend(one);
        }
        m["headers"] = Value::Object(merged);
    }
    Ok(m)
}

fn lane(name: &str, s: LaneSpec, notes: &mut Vec<String>) -> Result<Lane, String> {
    let r = s.rules;
    if r.workload.is_some() {
        notes.push("rules.workload ignored: the gateway picks the lane's workloads".into());
    }
    let matches = match r.traffic.http {
        Value::Array(list) => list,
        one => vec![one],
    }
    .into_iter()
    .map(lane_match)
    .collect::<Result<Vec<_>, _>>()
    .map_err(|e| format!("rules.traffic.http: {e}"))?;
    compile_lane(name, matches, r.lane.name, r.trace_id_baggage)
}

/// The `http_match` JSON the traffic-tag engine reads, for one matcher (used by the wire
/// decoder too).
pub(super) fn string_match(kind: &str, value: &str) -> Value {
    json!({ kind: value })
}

#[cfg(test)]
mod tests;
