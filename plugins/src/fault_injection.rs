//! `fault-injection` (docs/plugins/traffic.md): delay and/or abort a share of requests, for resilience
//! testing.
//!
//! ```json
//! {"abort": {"http_status": 503, "body": "injected for $remote_addr", "headers": {"X-Fault": "1"},
//!            "percentage": 10, "vars": [[["arg_name", "==", "jack"]]]},
//!  "delay": {"duration": 1.5, "percentage": 50, "vars": [[["http_x_chaos", "==", "on"]]]}}
//! ```
//!
//! * Delay first (an asynchronous sleep), then abort: `Stop(http_status, headers, body)` with
//!   APISIX variables (`$var`, `${var ?? default}`) in the body and the header values filled
//!   in. Otherwise no action.
//! * A fault fires when its `vars` (a list of expressions) has *any* match, or is absent, and
//!   then with `percentage` % probability (`rand(1..=100) ≤ percentage`; always without it). An
//!   empty `vars` list never matches, as in APISIX.
//! * `duration` must be below 55 s: the gateway stops reading after 60 s.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use ext_plugin_sdk::*;
use crate::limit_req::MAX_DELAY_SECS;
use crate::support::expr::Expr;
use crate::support::patterns::Budget;
use crate::support::reject::{self, HeaderConf};
use crate::support::template::{self, Template};

/// APISIX's bound on the expressions of one `vars`.
const MAX_VARS: usize = 20;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultInjectionConf {
    abort: Option<AbortConf>,
    delay: Option<DelayConf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AbortConf {
    http_status: u16,
    body: Option<String>,
    headers: Option<BTreeMap<String, Value>>,
    percentage: Option<u8>,
    vars: Option<Vec<Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DelayConf {
    duration: f64,
    percentage: Option<u8>,
    vars: Option<Vec<Value>>,
}

pub struct FaultInjection {
    abort: Option<(Trigger, Abort)>,
    delay: Option<(Trigger, Duration)>,
}

/// When a fault fires.
struct Trigger {
    percentage: Option<u8>,
    /// Any of these matching; `None`: always.
    vars: Option<Vec<Expr>>,
}

struct Abort {
    /// Status and the headers and body without variables; the others are added per request.
    stop: Stop,
    headers: Vec<(Text, Template)>,
    body: Option<Template>,
}

impl Trigger {
    fn parse(
        field: &str,
        percentage: Option<u8>,
        vars: Option<Vec<Value>>,
        budget: &mut Budget,
    ) -> Result<Trigger, ConfError> {
        if percentage.is_some_and(|p| p > 100) {
            return Err(ConfError::new(format!("`{field}.percentage` must be 0 to 100")));
        }
        if vars.as_ref().is_some_and(|v| v.len() > MAX_VARS) {
            return Err(ConfError::new(format!(
                "`{field}.vars` holds more than {MAX_VARS} expressions"
            )));
        }
        let vars = vars
            .map(|list| list.iter().map(|v| Expr::parse(v, budget)).collect::<Result<Vec<_>, _>>())
            .transpose()
            .map_err(|e| ConfError::new(format!("`{field}.vars`: {e}")))?;
        Ok(Trigger { percentage, vars })
    }

    async fn fires(&self, call: &mut RequestCall<'_>) -> Result<bool, PluginError> {
        if let Some(vars) = &self.vars {
            let mut any = false;
            for e in vars {
                if e.matches(call).await? {
                    any = true;
                    break;
                }
            }
            if !any {
                return Ok(false);
            }
        }
        Ok(self
            .percentage
            .is_none_or(|p| rand::random_range(1..=100u8) <= p))
    }
}

impl Plugin for FaultInjection {
    const NAME: &'static str = "fault-injection";
    type Conf = FaultInjectionConf;

    fn prepare(conf: FaultInjectionConf, _env: &mut PrepareEnv<'_>) -> Result<Self, ConfError> {
        if conf.abort.is_none() && conf.delay.is_none() {
            return Err(ConfError::new("at least one of `abort` and `delay` is required"));
        }
        // One regex budget for the conf: both triggers' expressions draw on it.
        let mut budget = Budget::default();
        let delay = match conf.delay {
            None => None,
            Some(d) => {
                if !(d.duration >= 0.0 && d.duration < MAX_DELAY_SECS) {
                    return Err(ConfError::new(format!(
                        "`delay.duration` must be 0 or more and below 55 s (the gateway reads for 60 s), got {}",
                        d.duration
                    )));
                }
                let trigger = Trigger::parse("delay", d.percentage, d.vars, &mut budget)?;
                Some((trigger, Duration::from_secs_f64(d.duration)))
            }
        };
        let abort = match conf.abort {
            None => None,
            Some(a) => {
                reject::check_status("abort.http_status", a.http_status)?;
                let mut fixed = Vec::new();
                let mut templated = Vec::new();
                if a.headers.as_ref().is_some_and(BTreeMap::is_empty) {
                    return Err(ConfError::new("`abort.headers` must not be empty"));
                }
                for (name, value) in a.headers.unwrap_or_default() {
                    let field = format!("abort.headers.{name}");
                    let value = template::header_values(&field, &value, false, false)?.remove(0);
                    match value.constant() {
                        Some(text) => fixed.push(HeaderConf {
                            key: name,
                            value: text.to_owned(),
                        }),
                        None => {
                            // The name is checked with the fixed ones; the value per request.
                            fixed.push(HeaderConf {
                                key: name.clone(),
                                value: String::new(),
                            });
                            templated.push((Text::from(name), value));
                        }
                    }
                }
                let stop = reject::with_headers(Stop::new(a.http_status), &fixed)
                    .map_err(|e| ConfError::field("abort.headers", e))?;
                // Headers with variables are added per request instead.
                let mut stop = stop;
                stop.headers.retain(|h| !templated.iter().any(|(n, _)| *n == h.name));
                let body = a.body.as_deref().map(Template::parse);
                // A body without variables is built once.
                let (stop, body) = match body {
                    Some(t) if t.constant().is_some() => {
                        (stop.with_body(a.body.unwrap_or_default()), None)
                    }
                    other => (stop, other),
                };
                let trigger = Trigger::parse("abort", a.percentage, a.vars, &mut budget)?;
                Some((
                    trigger,
                    Abort {
                        stop,
                        headers: templated,
                        body,
                    },
                ))
            }
        };
        Ok(FaultInjection { abort, delay })
    }

    async fn request_filter(&self, call: &mut RequestCall<'_>) -> Result<Flow, PluginError> {
        if let Some((trigger, duration)) = &self.delay {
            if trigger.fires(call).await? && !duration.is_zero() {
                tokio::time::sleep(*duration).await;
                call.mark_delayed();
            }
        }
        if let Some((trigger, abort)) = &self.abort {
            if trigger.fires(call).await? {
                let mut stop = abort.stop.clone();
                for (name, value) in &abort.headers {
                    let value = template::header_safe(value.render(call).await?.text);
                    stop = stop.with_header(name.clone(), value);
                }
                if let Some(body) = &abort.body {
                    stop.body = body.render(call).await?.text.into();
                }
                return Ok(Flow::Stop(stop));
            }
        }
        Ok(Flow::Continue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ext_plugin_sdk::harness::{TestCall, TestEnv};
    use ext_plugin_sdk::harness::request;

    fn plugin(conf: &str) -> Result<FaultInjection, ConfError> {
        let parsed: FaultInjectionConf = serde_json::from_str(conf).map_err(ConfError::from)?;
        TestEnv::default().with("route#1#ext-plugin-pre-req#1", FaultInjection::NAME, conf, &[], |e| {
            FaultInjection::prepare(parsed, e)
        })
    }

    /// Issue 11 #1: 60 000 comparisons in one `vars` expression took 14 s to prepare.
    #[test]
    fn huge_vars_are_refused() {
        let vars: Vec<_> = (0..60_000).map(|i| serde_json::json!([format!("arg_{i}"), "==", "1"])).collect();
        let conf = serde_json::json!({"abort": {"http_status": 403, "vars": [vars]}}).to_string();
        let e = plugin(&conf).err().unwrap();
        assert!(e.message().contains("abort.vars") && e.message().contains("256 comparisons"), "{e}");
    }

    async fn run(p: &FaultInjection, req: ext_plugin_sdk::model::HttpReqCallReq) -> Flow {
        p.request_filter(&mut TestCall::new(req).call()).await.unwrap()
    }

    #[tokio::test]
    async fn abort_with_vars_headers_and_templated_body() {
        let p = plugin(
            r#"{"abort": {"http_status": 418, "body": "no tea for $remote_addr", "headers": {"X-Fault": "1"},
                           "vars": [[["arg_name", "==", "jack"]], [["http_x_chaos", "==", "on"]]]}}"#,
        )
        .unwrap();
        let Flow::Stop(s) = run(&p, request(Method::Get, "/").with_arg("name", "jack").with_src_ip("10.0.0.7")).await else {
            panic!("must abort")
        };
        assert_eq!((s.status, &s.body[..]), (418, &b"no tea for 10.0.0.7"[..]));
        assert_eq!(s.headers, vec![Pair::new("X-Fault", "1")]);
        assert!(matches!(run(&p, request(Method::Get, "/").with_header("x-chaos", "on")).await, Flow::Stop(_)), "any expression");
        assert_eq!(run(&p, request(Method::Get, "/").with_arg("name", "rose")).await, Flow::Continue);
    }

    #[tokio::test]
    async fn percentage_holds_within_statistical_bounds() {
        let p = plugin(r#"{"abort": {"http_status": 503, "percentage": 30}}"#).unwrap();
        let mut aborted = 0;
        for _ in 0..10_000 {
            aborted += usize::from(run(&p, request(Method::Get, "/")).await != Flow::Continue);
        }
        // Binomial(10 000, 0.3): sd ≈ 46; ±300 is more than 6 sd.
        assert!((2700..=3300).contains(&aborted), "{aborted}");
        let never = plugin(r#"{"abort": {"http_status": 503, "percentage": 0}}"#).unwrap();
        assert_eq!(run(&never, request(Method::Get, "/")).await, Flow::Continue);
    }

    #[tokio::test(start_paused = true)]
    async fn delay_comes_first_and_is_async() {
        let p = plugin(r#"{"delay": {"duration": 1.5, "vars": [[["http_x_chaos", "==", "on"]]]}, "abort": {"http_status": 500, "body": "x"}}"#).unwrap();
        let start = tokio::time::Instant::now();
        let flow = run(&p, request(Method::Get, "/").with_header("x-chaos", "on")).await;
        assert_eq!(start.elapsed(), Duration::from_millis(1500));
        assert!(matches!(flow, Flow::Stop(s) if &s.body[..] == b"x"));
        let start = tokio::time::Instant::now();
        run(&p, request(Method::Get, "/")).await;
        assert_eq!(start.elapsed(), Duration::ZERO, "vars did not match: no delay");
    }

    async fn abort_headers(conf: &str) -> Vec<String> {
        let p = plugin(conf).unwrap();
        let Flow::Stop(s) = run(&p, request(Method::Get, "/hello")).await else { panic!("must abort") };
        let mut h: Vec<_> = s.headers.iter().map(|p| format!("{}: {}", p.name, p.value.as_deref().unwrap())).collect();
        h.sort();
        h
    }

    #[tokio::test]
    async fn abort_headers_resolve_variables() {
        let h = abort_headers(r#"{"abort": {"http_status": 200, "headers": {"h1": "v1", "h3": "$uri"}}}"#).await;
        assert_eq!(h, ["h1: v1", "h3: /hello"]);
    }

    #[tokio::test]
    async fn abort_header_values_may_be_numbers() {
        let h = abort_headers(r#"{"abort": {"http_status": 200, "headers": {"h2": 2}}}"#).await;
        assert_eq!(h, ["h2: 2"]);
    }

    #[test]
    fn bad_confs_name_the_field() {
        for (conf, why) in [
            (r#"{}"#, "at least one"),
            (r#"{"delay": {"duration": 55}}"#, "delay.duration"),
            (r#"{"delay": {"duration": 1, "percentage": 101}}"#, "delay.percentage"),
            (r#"{"abort": {"http_status": 600}}"#, "abort.http_status"),
            (r#"{"abort": {"http_status": 500, "vars": [[["a", "=", 1]]]}}"#, "abort.vars"),
            (r#"{"abort": {"http_status": 500, "headers": {"a b": "1"}}}"#, "abort.headers"),
            (r#"{"abort": {"http_status": 500, "extra": 1}}"#, "extra"),
        ] {
            let e = plugin(conf).err().expect(conf);
            assert!(e.message().contains(why), "{conf}: {e}");
        }
    }
}
