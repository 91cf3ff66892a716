//! api-breaker's conf: APISIX's fields and defaults, the Sentinel/OpenSergo *(ext)* fields,
//! validated once at prepare time with messages that name the field.
//!
//! Fields of the other policies are accepted and unused (a conf may carry a full set, as the
//! documented example does, and switch `policy` alone); a field the chosen policy needs but lacks
//! (`threshold`, `max_allowed_rt_ms`) is an error.

use serde::Deserialize;

use super::breaker::{BreakerMetrics, Policy, Settings};
use crate::support::template::Template;
use ext_plugin_sdk::{ConfError, Stop, Text};
use crate::support::clock::{secs_to_nanos, NANOS_PER_MS, NANOS_PER_SEC};
use crate::support::reject::{self, HeaderConf};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiBreakerConf {
    break_response_code: Option<u64>,
    break_response_body: Option<String>,
    #[serde(default)]
    break_response_headers: Vec<HeaderConf>,
    #[serde(default = "default_max_breaker_sec")]
    max_breaker_sec: u64,
    #[serde(default)]
    unhealthy: Unhealthy,
    #[serde(default)]
    healthy: Healthy,
    #[serde(default)]
    policy: Policy,
    threshold: Option<f64>,
    #[serde(default = "default_min_request_amount")]
    min_request_amount: u64,
    #[serde(default = "default_stat_interval_ms")]
    stat_interval_ms: u64,
    #[serde(default = "default_buckets")]
    buckets: u64,
    #[serde(default = "default_recovery_timeout_ms")]
    recovery_timeout_ms: u64,
    max_allowed_rt_ms: Option<u64>,
    #[serde(default = "default_probe_num")]
    probe_num: u64,
    #[serde(default)]
    scope: Scope,
    #[serde(default)]
    count_missing_response_as_error: bool,
    #[serde(default = "default_lease_timeout")]
    lease_timeout: f64,
    #[serde(default = "reject::default_max_keys")]
    max_keys: usize,
    #[serde(default)]
    dry_run: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Unhealthy {
    #[serde(default = "default_unhealthy_statuses")]
    http_statuses: Vec<u16>,
    #[serde(default = "default_count")]
    failures: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Healthy {
    #[serde(default = "default_healthy_statuses")]
    http_statuses: Vec<u16>,
    #[serde(default = "default_count")]
    successes: u64,
}

impl Default for Unhealthy {
    fn default() -> Unhealthy {
        Unhealthy {
            http_statuses: default_unhealthy_statuses(),
            failures: default_count(),
        }
    }
}

impl Default for Healthy {
    fn default() -> Healthy {
        Healthy {
            http_statuses: default_healthy_statuses(),
            successes: default_count(),
        }
    }
}

/// What one breaker covers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// The whole route (one breaker per route and conf).
    #[default]
    Route,
    /// APISIX's keying: one breaker per host and uri.
    HostUri,
}

fn default_max_breaker_sec() -> u64 {
    300
}
fn default_unhealthy_statuses() -> Vec<u16> {
    vec![500]
}
fn default_healthy_statuses() -> Vec<u16> {
    vec![200]
}
fn default_count() -> u64 {
    3
}
fn default_min_request_amount() -> u64 {
    5
}
fn default_stat_interval_ms() -> u64 {
    1000
}
fn default_buckets() -> u64 {
    10
}
fn default_recovery_timeout_ms() -> u64 {
    5000
}
fn default_probe_num() -> u64 {
    1
}
fn default_lease_timeout() -> f64 {
    30.0
}

/// An hour: the longest window, recovery time and lease the runner accepts.
const MAX_MS: u64 = 3_600_000;

/// The conf, checked and converted for the plugin.
pub(super) struct Prepared {
    pub settings: Settings,
    pub unhealthy: Box<[u16]>,
    pub healthy: Box<[u16]>,
    pub max_rt: u64,
    pub scope: Scope,
    pub count_missing: bool,
    /// *(ext)* Never reject; mark the request instead.
    pub dry_run: bool,
    pub lease_timeout: u64,
    /// How long an unused breaker is kept.
    pub idle: u64,
    pub max_keys: usize,
    pub reject: Stop,
    /// Rejection headers whose values have variables.
    pub reject_vars: Vec<(Text, Template)>,
}

fn in_range(field: &str, value: u64, min: u64, max: u64) -> Result<u64, ConfError> {
    if (min..=max).contains(&value) {
        Ok(value)
    } else {
        Err(ConfError::new(format!(
            "`{field}` must be {min} to {max}, got {value}"
        )))
    }
}

fn statuses(field: &str, list: Vec<u16>, min: u16, max: u16) -> Result<Box<[u16]>, ConfError> {
    if list.is_empty() {
        return Err(ConfError::new(format!("`{field}` must not be empty")));
    }
    for (i, s) in list.iter().enumerate() {
        if !(min..=max).contains(s) {
            return Err(ConfError::new(format!(
                "`{field}` holds {s}; statuses must be {min} to {max}"
            )));
        }
        if list[..i].contains(s) {
            return Err(ConfError::new(format!("`{field}` repeats {s}")));
        }
    }
    Ok(list.into())
}

impl ApiBreakerConf {
    pub(super) fn validate(self) -> Result<Prepared, ConfError> {
        let code = self
            .break_response_code
            .ok_or_else(|| ConfError::new("`break_response_code` is required"))?;
        let code = in_range("break_response_code", code, 200, 599)? as u16;
        let mut reject = Stop::new(code);
        if let Some(body) = self.break_response_body {
            reject = reject.with_body(body);
        }
        if let Some(h) = self
            .break_response_headers
            .iter()
            .find(|h| h.key.is_empty() || h.value.is_empty())
        {
            return Err(ConfError::new(format!(
                "`break_response_headers`: {:?} needs a non-empty key and value",
                h.key
            )));
        }
        // Values with variables are filled in per rejection, as APISIX does.
        let (fixed, templated): (Vec<_>, Vec<_>) = self
            .break_response_headers
            .into_iter()
            .partition(|h| Template::parse(&h.value).constant().is_some());
        let checked: Vec<HeaderConf> = templated
            .iter()
            .map(|h| HeaderConf {
                key: h.key.clone(),
                value: String::new(),
            })
            .collect();
        reject::with_headers(Stop::new(code), &checked)
            .map_err(|e| ConfError::field("break_response_headers", e))?;
        let reject = reject::with_headers(reject, &fixed)
            .map_err(|e| ConfError::field("break_response_headers", e))?;
        let reject_vars = templated
            .into_iter()
            .map(|h| (Text::from(h.key), Template::parse(&h.value)))
            .collect();
        let max_breaker_sec = in_range("max_breaker_sec", self.max_breaker_sec, 3, MAX_MS / 1000)?;
        let unhealthy = statuses("unhealthy.http_statuses", self.unhealthy.http_statuses, 500, 599)?;
        let healthy = statuses("healthy.http_statuses", self.healthy.http_statuses, 200, 499)?;
        let failures = in_range("unhealthy.failures", self.unhealthy.failures, 1, u32::MAX.into())?;
        let successes = in_range("healthy.successes", self.healthy.successes, 1, u32::MAX.into())?;

        let policy = self.policy;
        let threshold = match (policy, self.threshold) {
            (Policy::Consecutive, t) => t.unwrap_or(0.0),
            (_, None) => {
                return Err(ConfError::new(format!(
                    "`threshold` is required with policy {}",
                    policy_name(policy)
                )))
            }
            (Policy::ErrorCount, Some(t)) if !(t >= 1.0 && t.fract() == 0.0 && t <= 1e9) => {
                return Err(ConfError::new(format!(
                    "`threshold` is an error count with policy error_count: a whole number of at least 1, got {t}"
                )))
            }
            (Policy::ErrorRatio | Policy::SlowRatio, Some(t)) if !(t > 0.0 && t <= 1.0) => {
                return Err(ConfError::new(format!(
                    "`threshold` is a ratio with policy {}: above 0 and at most 1, got {t}",
                    policy_name(policy)
                )))
            }
            (_, Some(t)) => t,
        };
        let max_rt = match (policy, self.max_allowed_rt_ms) {
            (Policy::SlowRatio, None) => {
                return Err(ConfError::new(
                    "`max_allowed_rt_ms` is required with policy slow_ratio",
                ))
            }
            (_, rt) => in_range("max_allowed_rt_ms", rt.unwrap_or(1), 1, MAX_MS)? * NANOS_PER_MS,
        };
        let min_request_amount =
            in_range("min_request_amount", self.min_request_amount, 1, u32::MAX.into())?;
        let window = in_range("stat_interval_ms", self.stat_interval_ms, 1, MAX_MS)?;
        let buckets = in_range("buckets", self.buckets, 1, 1000)?;
        if window % buckets != 0 {
            return Err(ConfError::new(format!(
                "`stat_interval_ms` ({window}) must be a multiple of `buckets` ({buckets})"
            )));
        }
        let recovery = in_range("recovery_timeout_ms", self.recovery_timeout_ms, 1, MAX_MS)?;
        let probe_num = in_range("probe_num", self.probe_num, 1, 10_000)? as u32;
        if !(self.lease_timeout >= 1.0 && self.lease_timeout <= 3600.0) {
            return Err(ConfError::new(format!(
                "`lease_timeout` must be 1 to 3600 seconds, got {}",
                self.lease_timeout
            )));
        }
        reject::check_max_keys(self.max_keys)?;

        let settings = Settings {
            policy,
            failures,
            successes,
            max_open: max_breaker_sec * NANOS_PER_SEC,
            threshold,
            min_request_amount,
            window: window * NANOS_PER_MS,
            buckets: buckets as usize,
            recovery: recovery * NANOS_PER_MS,
            probe_num,
            metrics: BreakerMetrics::default(),
        };
        let lease_timeout = secs_to_nanos(self.lease_timeout);
        // Long enough that no breaker state a client could still observe is dropped.
        let longest = [settings.window, settings.recovery, settings.max_open, lease_timeout];
        let idle = 2 * longest.into_iter().max().unwrap_or(0);
        Ok(Prepared {
            settings,
            unhealthy,
            healthy,
            max_rt,
            scope: self.scope,
            count_missing: self.count_missing_response_as_error,
            dry_run: self.dry_run,
            lease_timeout,
            idle,
            max_keys: self.max_keys,
            reject,
            reject_vars,
        })
    }
}

fn policy_name(p: Policy) -> &'static str {
    match p {
        Policy::Consecutive => "consecutive",
        Policy::ErrorRatio => "error_ratio",
        Policy::SlowRatio => "slow_ratio",
        Policy::ErrorCount => "error_count",
    }
}
