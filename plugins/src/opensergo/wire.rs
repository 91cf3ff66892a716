//! What the control plane pushes, turned into [`model`](super::model) types.
//!
//! * Each push is the whole list of one kind for one `(namespace, app)`; its elements are `Any`s
//!   of the kind's message. [`check`] decodes them (a push that does not decode is NACKed and the
//!   previous list kept); [`build`] turns every kept list into a [`SourceRules`].
//! * Tolerance of what the real control plane sends (each noted once per strategy): a rate
//!   limit's UNKNOWN unit means seconds, its UNKNOWN mode and metric mean Local and
//!   RequestAmount, Global is enforced locally; a breaker's UNKNOWN units mean milliseconds (the
//!   control plane writes `"5s"` as 50 of them). Non-positive durations, STRATEGY_UNKNOWN and
//!   ratios outside 0..1 make a strategy invalid: it is skipped.
//! * A TrafficRouter arrives as an Envoy RouteConfiguration: header and query matchers (exact,
//!   prefix, regex) and the cluster, weighted clusters or cluster-fallback plugin are read; the
//!   subset is the third `|`-field of `outbound||<subset>|<host>`.

use std::collections::BTreeMap;
use std::sync::Arc;

use prost::Message;
use prost_types::Any;
use serde_json::{Map, Value};

use super::model::*;
use super::proto::common::TimeUnit;
use super::proto::envoy::config::route::v3 as route;
use super::proto::envoy::r#type::matcher::v3 as matcher;
use super::proto::fault_tolerance as ft;
use super::proto::router::ClusterFallbackConfigClusterConfig;
use super::tagging::{compile_router, RouteSpec, TagSpec};
use super::yaml::string_match;

pub const FAULT_TOLERANCE_RULE: &str = "fault-tolerance.opensergo.io/v1alpha1/FaultToleranceRule";
pub const RATE_LIMIT: &str = "fault-tolerance.opensergo.io/v1alpha1/RateLimitStrategy";
pub const THROTTLING: &str = "fault-tolerance.opensergo.io/v1alpha1/ThrottlingStrategy";
pub const CONCURRENCY_LIMIT: &str = "fault-tolerance.opensergo.io/v1alpha1/ConcurrencyLimitStrategy";
pub const CIRCUIT_BREAKER: &str = "fault-tolerance.opensergo.io/v1alpha1/CircuitBreakerStrategy";
pub const TRAFFIC_ROUTER: &str = "traffic.opensergo.io/v1alpha1/TrafficRouter";

/// The six kinds subscribed for every app.
pub const KINDS: [&str; 6] = [
    FAULT_TOLERANCE_RULE,
    RATE_LIMIT,
    THROTTLING,
    CONCURRENCY_LIMIT,
    CIRCUIT_BREAKER,
    TRAFFIC_ROUTER,
];

/// The message name each kind's `Any`s carry.
fn type_url(kind: &str) -> Option<&'static str> {
    Some(match kind {
        FAULT_TOLERANCE_RULE => "type.googleapis.com/io.opensergo.proto.fault_tolerance.v1.FaultToleranceRule",
        RATE_LIMIT => "type.googleapis.com/io.opensergo.proto.fault_tolerance.v1.RateLimitStrategy",
        THROTTLING => "type.googleapis.com/io.opensergo.proto.fault_tolerance.v1.ThrottlingStrategy",
        CONCURRENCY_LIMIT => {
            "type.googleapis.com/io.opensergo.proto.fault_tolerance.v1.ConcurrencyLimitStrategy"
        }
        CIRCUIT_BREAKER => {
            "type.googleapis.com/io.opensergo.proto.fault_tolerance.v1.CircuitBreakerStrategy"
        }
        TRAFFIC_ROUTER => "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
        _ => return None,
    })
}

/// The `Any` of a message, as the control plane packs it.
pub fn pack<M: Message>(kind: &str, m: &M) -> Any {
    Any {
        type_url: type_url(kind).unwrap_or_default().to_owned(),
        value: m.encode_to_vec(),
    }
}

fn unpack<M: Message + Default>(kind: &str, i: usize, a: &Any) -> Result<M, String> {
    let want = type_url(kind).unwrap_or_default();
    if a.type_url != want {
        return Err(format!("data[{i}] is a {:?}, not a {want:?}", a.type_url));
    }
    M::decode(&a.value[..]).map_err(|e| format!("data[{i}] does not decode: {e}"))
}

/// Whether a push of `kind` decodes; `Err` names the first element that does not.
pub fn check(kind: &str, data: &[Any]) -> Result<(), String> {
    for (i, a) in data.iter().enumerate() {
        match kind {
            FAULT_TOLERANCE_RULE => unpack::<ft::FaultToleranceRule>(kind, i, a).map(drop),
            RATE_LIMIT => unpack::<ft::RateLimitStrategy>(kind, i, a).map(drop),
            THROTTLING => unpack::<ft::ThrottlingStrategy>(kind, i, a).map(drop),
            CONCURRENCY_LIMIT => unpack::<ft::ConcurrencyLimitStrategy>(kind, i, a).map(drop),
            CIRCUIT_BREAKER => unpack::<ft::CircuitBreakerStrategy>(kind, i, a).map(drop),
            TRAFFIC_ROUTER => unpack::<route::RouteConfiguration>(kind, i, a).map(drop),
            _ => Err(format!("unknown kind {kind:?}")),
        }?;
    }
    Ok(())
}

/// The last accepted list of one kind for one app.
pub struct Pushed {
    pub version: i64,
    pub data: Vec<Any>,
}

/// Builds the control plane's rules from every kept list.
pub fn build(pushed: &BTreeMap<(AppKey, &'static str), Pushed>) -> SourceRules {
    let mut out = SourceRules::default();
    let mut versions: BTreeMap<AppKey, Vec<String>> = BTreeMap::new();
    for ((app, kind), p) in pushed {
        let short = kind.rsplit('/').next().unwrap_or(kind);
        versions.entry(app.clone()).or_default().push(format!("{short} v{}", p.version));
        let target = out.apps.entry(app.clone()).or_default();
        let where_ = format!("control plane {}/{}", app.0, app.1);
        for (i, a) in p.data.iter().enumerate() {
            let mut notes = Vec::new();
            let item = match *kind {
                FAULT_TOLERANCE_RULE => unpack(kind, i, a).and_then(|r| rule(i, r)).map(|r| {
                    target.rules.push(r);
                }),
                TRAFFIC_ROUTER => unpack(kind, i, a).and_then(router).map(|r| {
                    target.routers.push(Arc::new(r));
                }),
                _ => strategy(kind, i, a, &mut notes).map(|(name, s)| {
                    target.strategies.insert((s.kind(), name), s);
                }),
            };
            let label = format!("{where_}: {short} #{i}");
            if let Err(e) = item {
                out.problems.push(format!("{label}: skipped: {e}"));
            }
            out.problems.extend(notes.into_iter().map(|n| format!("{label}: {n}")));
        }
    }
    for (app, v) in versions {
        if let Some(a) = out.apps.get_mut(&app) {
            a.version = v.join(", ");
        }
    }
    out
}

fn rule(i: usize, r: ft::FaultToleranceRule) -> Result<Rule, String> {
    let targets: Vec<String> = r.targets.into_iter().map(|t| t.target_resource_name).collect();
    if targets.is_empty() || targets.iter().any(String::is_empty) || r.strategies.is_empty() {
        return Err("a rule needs targets and strategies".into());
    }
    let strategies = r
        .strategies
        .into_iter()
        .map(|s| {
            let kind = if s.kind.is_empty() {
                None
            } else {
                Some(StrategyKind::from_name(&s.kind).ok_or_else(|| format!("unknown strategy kind {:?}", s.kind))?)
            };
            Ok(StrategyRef { name: s.name, kind })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(Rule {
        name: format!("control-plane#{i}"),
        targets,
        strategies,
        fallback: r.action.map(|a| a.name).filter(|n| !n.is_empty()),
    })
}

/// A duration in milliseconds from a value and its unit; `unknown_ms` is what one UNKNOWN unit
/// is worth.
fn millis(field: &str, value: i64, unit: i32, unknown_ms: u64, notes: &mut Vec<String>) -> Result<u64, String> {
    if value <= 0 {
        return Err(format!("{field} {value} is not above 0"));
    }
    let per = match TimeUnit::try_from(unit) {
        Ok(TimeUnit::Millisecond) => 1,
        Ok(TimeUnit::Second) => 1_000,
        Ok(TimeUnit::Minute) => 60_000,
        Ok(TimeUnit::Hour) => 3_600_000,
        Ok(TimeUnit::Day) => 86_400_000,
        Ok(TimeUnit::Unknown) | Err(_) => {
            notes.push(format!(
                "{field} has no time unit; read as {}",
                if unknown_ms == 1 { "milliseconds" } else { "seconds" }
            ));
            unknown_ms
        }
    };
    Ok((value as u64).saturating_mul(per))
}

fn strategy(kind: &str, i: usize, a: &Any, notes: &mut Vec<String>) -> Result<(String, Strategy), String> {
    let (name, s) = match kind {
        RATE_LIMIT => {
            let r: ft::RateLimitStrategy = unpack(kind, i, a)?;
            use ft::rate_limit_strategy::{LimitMode, MetricType};
            if r.metric_type() == MetricType::TypeUnknown {
                notes.push("metric type unknown; read as RequestAmount".into());
            }
            match r.limit_mode() {
                LimitMode::ModeLocal => {}
                LimitMode::ModeUnknown => notes.push("limit mode unknown; enforced locally".into()),
                LimitMode::ModeGlobal => notes.push(
                    "limit mode Global is enforced locally, per runner process (no cluster-wide backend is configured)".into(),
                ),
            }
            if r.threshold < 0 {
                return Err(format!("threshold {} is negative", r.threshold));
            }
            let window_ms = millis("stat_duration", r.stat_duration.into(), r.stat_duration_time_unit, 1000, notes)?;
            (r.name, Strategy::RateLimit { threshold: r.threshold as u64, window_ms })
        }
        THROTTLING => {
            let t: ft::ThrottlingStrategy = unpack(kind, i, a)?;
            if t.min_interval_millis_of_requests <= 0 {
                return Err(format!("min interval {} is not above 0", t.min_interval_millis_of_requests));
            }
            if t.queue_timeout_millis < 0 {
                return Err(format!("queue timeout {} is negative", t.queue_timeout_millis));
            }
            (
                t.name,
                Strategy::Throttling {
                    interval_ms: t.min_interval_millis_of_requests as u64,
                    queue_timeout_ms: t.queue_timeout_millis as u64,
                },
            )
        }
        CONCURRENCY_LIMIT => {
            let c: ft::ConcurrencyLimitStrategy = unpack(kind, i, a)?;
            if c.limit_mode() == ft::concurrency_limit_strategy::LimitMode::ModeGlobal {
                notes.push("limit mode Global is enforced locally, per runner process".into());
            }
            if c.max_concurrency < 0 {
                return Err(format!("max concurrency {} is negative", c.max_concurrency));
            }
            (c.name, Strategy::ConcurrencyLimit { max: c.max_concurrency as u64 })
        }
        CIRCUIT_BREAKER => {
            let c: ft::CircuitBreakerStrategy = unpack(kind, i, a)?;
            use ft::circuit_breaker_strategy::Strategy as S;
            let slow_rt_ms = match c.strategy() {
                S::SlowRequestRatio => {
                    let rt = c.slow_condition.map_or(0, |s| s.max_allowed_rt_millis);
                    if rt <= 0 {
                        return Err("a slow-ratio breaker needs max_allowed_rt_millis above 0".into());
                    }
                    Some(rt as u64)
                }
                S::ErrorRequestRatio => None,
                S::Unknown => return Err("strategy unknown".into()),
            };
            (
                c.name,
                Strategy::CircuitBreaker {
                    slow_rt_ms,
                    ratio: c.trigger_ratio,
                    window_ms: millis("stat_duration", c.stat_duration, c.stat_duration_time_unit, 1, notes)?,
                    recovery_ms: millis(
                        "recovery_timeout",
                        c.recovery_timeout.into(),
                        c.recovery_timeout_time_unit,
                        1,
                        notes,
                    )?,
                    min_requests: u64::try_from(c.min_request_amount).unwrap_or(0).max(1),
                },
            )
        }
        other => return Err(format!("unknown kind {other:?}")),
    };
    if name.is_empty() {
        return Err("the strategy has no name".into());
    }
    s.validate()?;
    Ok((name, s))
}

/// The subset of an Envoy cluster name `outbound|<port>|<subset>|<host>`; the whole name when it
/// is not of that shape.
fn subset(cluster: &str) -> String {
    let mut parts = cluster.split('|');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("outbound"), Some(_), Some(s)) if !s.is_empty() => s.to_owned(),
        _ => cluster.to_owned(),
    }
}

fn string_matcher(field: &str, m: &matcher::StringMatcher) -> Result<Value, String> {
    use matcher::string_matcher::MatchPattern as P;
    if m.ignore_case {
        return Err(format!("{field}: ignore_case is not supported"));
    }
    match &m.match_pattern {
        Some(P::Exact(v)) => Ok(string_match("exact", v)),
        Some(P::Prefix(v)) => Ok(string_match("prefix", v)),
        Some(P::SafeRegex(r)) => Ok(string_match("regex", &r.regex)),
        _ => Err(format!("{field}: only exact, prefix and regex matches are supported")),
    }
}

fn router(rc: route::RouteConfiguration) -> Result<Router, String> {
    use route::header_matcher::HeaderMatchSpecifier as H;
    use route::query_parameter_matcher::QueryParameterMatchSpecifier as Q;
    use route::route_action::ClusterSpecifier as C;
    let mut routes = Vec::new();
    for vh in &rc.virtual_hosts {
        for (i, r) in vh.routes.iter().enumerate() {
            let at = format!("virtual host {:?} route {i}", vh.name);
            let mut m = Map::new();
            if let Some(rm) = &r.r#match {
                let mut headers = Map::new();
                for h in &rm.headers {
                    let field = format!("{at}: header {:?}", h.name);
                    if h.invert_match {
                        return Err(format!("{field}: invert_match is not supported"));
                    }
                    let v = match &h.header_match_specifier {
                        Some(H::ExactMatch(v)) => string_match("exact", v),
                        Some(H::PrefixMatch(v)) => string_match("prefix", v),
                        Some(H::SafeRegexMatch(r)) => string_match("regex", &r.regex),
                        Some(H::StringMatch(s)) => string_matcher(&field, s)?,
                        _ => return Err(format!("{field}: only exact, prefix and regex matches are supported")),
                    };
                    if headers.insert(h.name.clone(), v).is_some() {
                        return Err(format!("{field}: matched twice"));
                    }
                }
                let mut query = Map::new();
                for q in &rm.query_parameters {
                    if q.name.is_empty() {
                        return Err(format!(
                            "{at}: a query parameter matcher has no name (the control plane leaves it out); the route cannot be evaluated"
                        ));
                    }
                    let field = format!("{at}: query parameter {:?}", q.name);
                    let v = match &q.query_parameter_match_specifier {
                        Some(Q::StringMatch(s)) => string_matcher(&field, s)?,
                        _ => return Err(format!("{field}: only string matches are supported")),
                    };
                    query.insert(q.name.clone(), v);
                }
                use route::route_match::PathSpecifier as PS;
                match &rm.path_specifier {
                    Some(PS::Prefix(p)) if p != "/" => {
                        m.insert("uri".into(), string_match("prefix", p));
                    }
                    Some(PS::Path(p)) => {
                        m.insert("uri".into(), string_match("exact", p));
                    }
                    Some(PS::SafeRegex(r)) => {
                        m.insert("uri".into(), string_match("regex", &r.regex));
                    }
                    _ => {}
                }
                if !headers.is_empty() {
                    m.insert("headers".into(), Value::Object(headers));
                }
                if !query.is_empty() {
                    m.insert("queryParams".into(), Value::Object(query));
                }
            }
            let Some(route::route::Action::Route(action)) = &r.action else {
                return Err(format!("{at}: no route action"));
            };
            let tags = match &action.cluster_specifier {
                Some(C::Cluster(c)) => vec![TagSpec { tag: subset(c), weight: 1, fallback: None }],
                Some(C::WeightedClusters(w)) => w
                    .clusters
                    .iter()
                    .map(|c| TagSpec {
                        tag: subset(&c.name),
                        weight: c.weight.unwrap_or(1),
                        fallback: None,
                    })
                    .collect(),
                Some(C::InlineClusterSpecifierPlugin(p)) => {
                    let any = p
                        .extension
                        .as_ref()
                        .and_then(|e| e.typed_config.as_ref())
                        .ok_or_else(|| format!("{at}: a cluster specifier plugin without a config"))?;
                    let fb = ClusterFallbackConfigClusterConfig::decode(&any.value[..])
                        .map_err(|e| format!("{at}: the cluster fallback config does not decode: {e}"))?;
                    vec![TagSpec {
                        tag: subset(&fb.routing_cluster),
                        weight: 1,
                        fallback: Some(subset(&fb.fallback_cluster)).filter(|s| !s.is_empty()),
                    }]
                }
                _ => return Err(format!("{at}: the route's cluster is not one this runner reads")),
            };
            routes.push(RouteSpec {
                matches: (!m.is_empty()).then(|| vec![Value::Object(m)]),
                tags,
            });
        }
    }
    compile_router(&rc.name, routes)
}

#[cfg(test)]
mod tests;
