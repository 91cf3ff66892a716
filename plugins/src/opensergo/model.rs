//! The rules as this runner applies them, whatever their source: the YAML file (`yaml.rs`)
//! and the control plane (`wire.rs`) both turn what they read into these types, validated
//! and with units normalised to milliseconds.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use crate::traffic_tag;

/// `(namespace, app)`: what rules are bound to (a CR's `metadata.namespace` and
/// `metadata.labels.app`; a subscription's target).
pub type AppKey = (String, String);

/// The four fault-tolerance strategy kinds, in the order a request meets them (Sentinel's slot
/// order: flow control before circuit breaking; throttling last because its reservation cannot
/// be undone).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StrategyKind {
    RateLimit,
    ConcurrencyLimit,
    CircuitBreaker,
    Throttling,
}

impl StrategyKind {
    pub const ALL: [StrategyKind; 4] = [
        StrategyKind::RateLimit,
        StrategyKind::ConcurrencyLimit,
        StrategyKind::CircuitBreaker,
        StrategyKind::Throttling,
    ];

    /// The simple kind name, as CRDs and `strategies[].kind` write it.
    pub fn name(self) -> &'static str {
        match self {
            StrategyKind::RateLimit => "RateLimitStrategy",
            StrategyKind::Throttling => "ThrottlingStrategy",
            StrategyKind::ConcurrencyLimit => "ConcurrencyLimitStrategy",
            StrategyKind::CircuitBreaker => "CircuitBreakerStrategy",
        }
    }

    pub fn from_name(name: &str) -> Option<StrategyKind> {
        StrategyKind::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// One strategy's numbers, validated; times in milliseconds.
#[derive(Clone, Debug, PartialEq)]
pub enum Strategy {
    /// At most `threshold` requests per `window_ms` (a sliding window).
    RateLimit { threshold: u64, window_ms: u64 },
    /// One request per `interval_ms`, queueing up to `queue_timeout_ms`.
    Throttling {
        interval_ms: u64,
        queue_timeout_ms: u64,
    },
    /// At most `max` requests in flight.
    ConcurrencyLimit { max: u64 },
    /// Opens when the slow (`slow_rt_ms` set) or error ratio of the last `window_ms` reaches
    /// `ratio` over at least `min_requests` answers; half-opens after `recovery_ms`.
    CircuitBreaker {
        slow_rt_ms: Option<u64>,
        ratio: f64,
        window_ms: u64,
        recovery_ms: u64,
        min_requests: u64,
    },
}

/// The longest a throttled request may queue: the gateway stops reading after 60 s.
pub const MAX_QUEUE_MS: u64 = 55_000;

impl Strategy {
    pub fn kind(&self) -> StrategyKind {
        match self {
            Strategy::RateLimit { .. } => StrategyKind::RateLimit,
            Strategy::Throttling { .. } => StrategyKind::Throttling,
            Strategy::ConcurrencyLimit { .. } => StrategyKind::ConcurrencyLimit,
            Strategy::CircuitBreaker { .. } => StrategyKind::CircuitBreaker,
        }
    }

    /// The normalised spec: two strategies with the same key behave the same, so their state is
    /// one (kept across reloads, shared when two rules of a resource name equal strategies).
    pub fn spec_key(&self) -> String {
        match self {
            Strategy::RateLimit {
                threshold,
                window_ms,
            } => format!("rate {threshold}/{window_ms}ms"),
            Strategy::Throttling {
                interval_ms,
                queue_timeout_ms,
            } => format!("throttle 1/{interval_ms}ms queue {queue_timeout_ms}ms"),
            Strategy::ConcurrencyLimit { max } => format!("concurrency {max}"),
            Strategy::CircuitBreaker {
                slow_rt_ms,
                ratio,
                window_ms,
                recovery_ms,
                min_requests,
            } => {
                let mut s = match slow_rt_ms {
                    Some(rt) => format!("breaker slow>{rt}ms"),
                    None => "breaker error".to_owned(),
                };
                let _ = write!(
                    s,
                    " ratio {ratio} window {window_ms}ms recovery {recovery_ms}ms min {min_requests}"
                );
                s
            }
        }
    }

    /// Checks the numbers every source must respect.
    pub fn validate(&self) -> Result<(), String> {
        match *self {
            Strategy::RateLimit { window_ms: 0, .. } => {
                Err("the stat duration must be above 0".into())
            }
            Strategy::Throttling { interval_ms: 0, .. } => {
                Err("minIntervalOfRequests must be above 0".into())
            }
            Strategy::Throttling {
                queue_timeout_ms, ..
            } if queue_timeout_ms > MAX_QUEUE_MS => Err(format!(
                "queueTimeout {queue_timeout_ms} ms would hold requests past the gateway's 60 s \
                 read timeout; keep it at most {MAX_QUEUE_MS} ms"
            )),
            Strategy::CircuitBreaker { ratio, .. } if !(0.0..=1.0).contains(&ratio) => {
                Err(format!("triggerRatio {ratio} is not between 0 and 1 (0% and 100%)"))
            }
            Strategy::CircuitBreaker { window_ms: 0, .. } => {
                Err("statDuration must be above 0".into())
            }
            Strategy::CircuitBreaker { recovery_ms: 0, .. } => {
                Err("recoveryTimeout must be above 0".into())
            }
            Strategy::CircuitBreaker {
                slow_rt_ms: Some(0),
                ..
            } => Err("slowConditions.maxAllowedRt must be above 0".into()),
            _ => Ok(()),
        }
    }
}

/// A rule's reference to a strategy: by name, and by kind unless the file left it out (then the
/// name must be unique among the app's strategies).
#[derive(Clone, Debug, PartialEq)]
pub struct StrategyRef {
    pub name: String,
    pub kind: Option<StrategyKind>,
}

/// A FaultToleranceRule: its strategies apply to every target resource.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    /// `metadata.name` from the file; the control plane's rules are anonymous and are named by
    /// their position (`control-plane#N`).
    pub name: String,
    pub targets: Vec<String>,
    pub strategies: Vec<StrategyRef>,
    /// An HttpRequestFallbackAction by name (file only).
    pub fallback: Option<String>,
}

/// An HttpRequestFallbackAction: the answer to a rejected request.
#[derive(Clone, Debug, PartialEq)]
pub struct Fallback {
    pub status: u16,
    pub body: String,
    pub headers: Vec<(String, String)>,
}

/// One `http[]` entry of a TrafficRouter, compiled onto the traffic-tag engine.
pub struct RouterRoute {
    pub(crate) rule: traffic_tag::Rule,
    /// The fallback subset of each chosen tag, for a second header.
    pub fallbacks: Vec<(String, String)>,
}

/// A TrafficRouter: the first route whose match holds tags the request.
pub struct Router {
    pub name: String,
    pub routes: Vec<RouterRoute>,
}

/// A TrafficLane (file only): requests it matches carry `lane` in `header` (the route conf's
/// `tag_header` when the lane names none).
pub struct Lane {
    pub name: String,
    pub(crate) rule: traffic_tag::Rule,
    pub lane: String,
    pub header: Option<String>,
}

/// One source's rules of one `(namespace, app)`.
#[derive(Default)]
pub struct AppRules {
    pub rules: Vec<Rule>,
    pub strategies: BTreeMap<(StrategyKind, String), Strategy>,
    pub routers: Vec<Arc<Router>>,
    pub lanes: Vec<Arc<Lane>>,
    /// What the source says about this app's version (the file's hash; the control plane's
    /// version per kind).
    pub version: String,
}

impl AppRules {
    /// `3 rules, 2 strategies, 1 routers, 0 lanes (<version>)`, for logs.
    pub fn counts(&self) -> String {
        format!(
            "{} rules, {} strategies, {} routers, {} lanes ({})",
            self.rules.len(),
            self.strategies.len(),
            self.routers.len(),
            self.lanes.len(),
            self.version
        )
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
            && self.strategies.is_empty()
            && self.routers.is_empty()
            && self.lanes.is_empty()
    }
}

/// Everything one source holds.
#[derive(Default)]
pub struct SourceRules {
    pub apps: BTreeMap<AppKey, AppRules>,
    /// HttpRequestFallbackAction by name (only the file defines them).
    pub fallbacks: BTreeMap<String, Fallback>,
    /// Objects skipped or read leniently, each naming the object and why (logged once).
    pub problems: Vec<String>,
}

/// Milliseconds in one unit of a CRD duration suffix.
fn unit_ms(unit: &str) -> Option<u64> {
    Some(match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" | "min" | "minute" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    })
}

/// A CRD duration (`^\d+(s|ms|m|min|minute|h|d)$`) in milliseconds.
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. \"500ms\", \"5s\", \"1m\")"))?;
    let unit = unit_ms(unit).ok_or_else(|| {
        format!("{s:?}: unknown unit (use ms, s, m, min, minute, h or d)")
    })?;
    n.checked_mul(unit)
        .ok_or_else(|| format!("{s:?} is too long"))
}

/// A CRD ratio: `"60%"`, or a number from 0 to 1.
pub fn parse_ratio(v: &serde_json::Value) -> Result<f64, String> {
    match v {
        serde_json::Value::String(s) => {
            let pct = s
                .trim()
                .strip_suffix('%')
                .ok_or_else(|| format!("{s:?} is not a percentage (e.g. \"60%\")"))?;
            let n: f64 = pct
                .trim()
                .parse()
                .map_err(|_| format!("{s:?} is not a percentage"))?;
            Ok(n / 100.0)
        }
        serde_json::Value::Number(n) => n.as_f64().ok_or_else(|| format!("{n} is not a ratio")),
        other => Err(format!("{other} is not a ratio")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_ratios_parse_as_the_crds_write_them() {
        assert_eq!(parse_duration("20ms"), Ok(20));
        assert_eq!(parse_duration("5s"), Ok(5_000));
        for m in ["1m", "1min", "1minute"] {
            assert_eq!(parse_duration(m), Ok(60_000));
        }
        assert_eq!(parse_duration("2h"), Ok(7_200_000));
        assert_eq!(parse_duration("1d"), Ok(86_400_000));
        assert!(parse_duration("5").unwrap_err().contains("unit"));
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("5 sec").is_err());
        assert_eq!(parse_ratio(&serde_json::json!("60%")), Ok(0.6));
        assert_eq!(parse_ratio(&serde_json::json!(0.25)), Ok(0.25));
        assert!(parse_ratio(&serde_json::json!("60")).is_err());
    }

    #[test]
    fn validation_names_the_bad_number() {
        let cb = |ratio, recovery_ms| Strategy::CircuitBreaker {
            slow_rt_ms: None,
            ratio,
            window_ms: 1000,
            recovery_ms,
            min_requests: 1,
        };
        assert!(cb(0.5, 10).validate().is_ok());
        assert!(cb(1.5, 10).validate().unwrap_err().contains("triggerRatio"));
        assert!(cb(0.5, 0).validate().unwrap_err().contains("recoveryTimeout"));
        let t = Strategy::Throttling {
            interval_ms: 10,
            queue_timeout_ms: 60_000,
        };
        assert!(t.validate().unwrap_err().contains("60 s"));
        assert_eq!(
            Strategy::RateLimit {
                threshold: 3,
                window_ms: 1000
            }
            .spec_key(),
            "rate 3/1000ms"
        );
    }
}
