//! The plugin around the state machine: both phases in memory, a driven clock.

use std::time::Duration;

use super::*;
use ext_plugin_sdk::harness::{TestCall, TestEnv, TestResp};
use ext_plugin_sdk::harness::request;

const PRE: &str = "route#1#ext-plugin-pre-req#1";
const POST: &str = "route#1#ext-plugin-post-resp#1";
const CORR: &str = "http_x_a6_runner_req";

/// The request and response halves of a route, on a manual clock.
struct Pair {
    pre: ApiBreaker,
    post: ApiBreaker,
    clock: Clock,
}

fn build(conf: &str, env: &TestEnv, key: &str) -> Result<ApiBreaker, ConfError> {
    let parsed: ApiBreakerConf = serde_json::from_str(conf).map_err(ConfError::from)?;
    env.with(key, ApiBreaker::NAME, conf, &[ApiBreaker::NAME], |e| ApiBreaker::prepare(parsed, e))
}

fn pair(conf: &str) -> Pair {
    let env = TestEnv::default().with_clock(Clock::manual());
    Pair {
        pre: build(conf, &env, PRE).unwrap(),
        post: build(conf, &env, POST).unwrap(),
        clock: env.clock().clone(),
    }
}

/// What the request phase did: passed (with the correlation id it set, if any) or stopped.
#[derive(Debug, PartialEq)]
enum Seen {
    Pass(Option<String>),
    Stop(Stop),
}

async fn req(p: &ApiBreaker, host: &str, path: &str) -> Seen {
    let mut c = TestCall::new(request(Method::Get, path).with_header("host", host));
    match p.request_filter(&mut c.call()).await.unwrap() {
        Flow::Continue => Seen::Pass(c.set_headers().first().and_then(|h| h.value.as_deref().map(str::to_owned))),
        Flow::Stop(s) => Seen::Stop(s),
    }
}

async fn pass(p: &Pair) -> Option<String> {
    match req(&p.pre, "a.test", "/x").await {
        Seen::Pass(id) => id,
        Seen::Stop(s) => panic!("rejected: {s:?}"),
    }
}

/// The answer reaches the post-resp half; returns the variables it asked for.
async fn answer(p: &Pair, status: u16, corr: Option<&str>, vars: &[(&str, &str)]) -> Vec<String> {
    let mut r = TestResp::new(status);
    if let Some(id) = corr {
        r = r.with_gateway_var(CORR, id);
    }
    for (n, v) in vars {
        r = r.with_gateway_var(n, v);
    }
    p.post.response_filter(&mut r.call()).await.unwrap();
    r.asked().to_vec()
}

/// Four errors in a row open a [`RATIO`] breaker.
async fn trip(p: &Pair) {
    for _ in 0..4 {
        pass(p).await;
        answer(p, 500, None, &[]).await;
    }
}

fn retry_after(seen: &Seen) -> &str {
    let Seen::Stop(s) = seen else { panic!("passed: {seen:?}") };
    s.headers.iter().find(|h| h.name.as_str() == "Retry-After").unwrap().value.as_deref().unwrap()
}

const RATIO: &str = r#"{"break_response_code": 503, "break_response_body": "upstream unhealthy",
    "break_response_headers": [{"key": "X-Breaker", "value": "open"}],
    "policy": "error_ratio", "threshold": 0.5, "min_request_amount": 4, "stat_interval_ms": 10000,
    "recovery_timeout_ms": 5000, "probe_num": 1, "unhealthy": {"http_statuses": [500, 502]}}"#;

#[tokio::test]
async fn error_ratio_trips_rejects_then_a_probe_closes_it() {
    let p = pair(RATIO);
    for status in [200, 500, 200] {
        assert_eq!(pass(&p).await, None, "closed: no lease, no header");
        assert!(answer(&p, status, None, &[]).await.is_empty(), "route scope, error policy: no round trip");
    }
    pass(&p).await;
    answer(&p, 502, None, &[]).await;
    let seen = req(&p.pre, "a.test", "/x").await;
    let mut expect = Stop::new(503).with_body("upstream unhealthy").with_header("X-Breaker", "open");
    expect = expect.with_header("Retry-After", "5");
    assert_eq!(seen, Seen::Stop(expect));
    p.clock.advance(Duration::from_millis(3500));
    assert_eq!(retry_after(&req(&p.pre, "a.test", "/x").await), "2", "ceil(1.5 s)");
    p.clock.advance(Duration::from_millis(1500));
    let probe = pass(&p).await.expect("the probe carries a correlation id");
    assert_eq!(retry_after(&req(&p.pre, "a.test", "/x").await), "1", "half-open, budget used");
    let asked = answer(&p, 200, Some(&probe), &[]).await;
    assert_eq!(asked, [CORR], "a probe is out: its id is read back");
    assert_eq!(pass(&p).await, None, "closed again");
}

#[tokio::test]
async fn a_failed_probe_reopens() {
    let p = pair(RATIO);
    trip(&p).await;
    p.clock.advance(Duration::from_secs(5));
    let probe = pass(&p).await.unwrap();
    answer(&p, 500, Some(&probe), &[]).await;
    assert_eq!(retry_after(&req(&p.pre, "a.test", "/x").await), "5");
}

#[tokio::test]
async fn a_lost_probe_reopens_after_lease_timeout() {
    let p = pair(RATIO);
    trip(&p).await;
    p.clock.advance(Duration::from_secs(5));
    pass(&p).await.unwrap(); // its answer never comes
    p.clock.advance(Duration::from_secs(29));
    assert_eq!(retry_after(&req(&p.pre, "a.test", "/x").await), "1", "still half-open");
    p.clock.advance(Duration::from_secs(1));
    assert_eq!(retry_after(&req(&p.pre, "a.test", "/x").await), "5", "the lost probe re-opened it");
}

#[tokio::test]
async fn missing_answers_count_as_errors_when_asked() {
    let conf = r#"{"break_response_code": 502, "policy": "error_count", "threshold": 2,
        "min_request_amount": 2, "stat_interval_ms": 60000, "count_missing_response_as_error": true,
        "lease_timeout": 10}"#;
    let env = TestEnv::default().with_clock(Clock::manual());
    let pre = build(conf, &env, PRE).unwrap();
    let clock = env.clock();
    for _ in 0..2 {
        assert!(matches!(req(&pre, "a.test", "/").await, Seen::Pass(Some(_))), "every request leased");
    }
    clock.advance(Duration::from_secs(10));
    let seen = req(&pre, "a.test", "/").await;
    assert_eq!(seen, Seen::Stop(Stop::new(502).with_header("Retry-After", "5")), "headers without a body");
}

#[tokio::test]
async fn slow_ratio_reads_request_time() {
    let p = pair(
        r#"{"break_response_code": 503, "policy": "slow_ratio", "threshold": 1, "min_request_amount": 2,
            "max_allowed_rt_ms": 500}"#,
    );
    pass(&p).await;
    assert_eq!(answer(&p, 500, None, &[("request_time", "0.2")]).await, ["request_time"]);
    pass(&p).await;
    answer(&p, 200, None, &[("request_time", "0.501")]).await;
    assert!(matches!(req(&p.pre, "a.test", "/x").await, Seen::Pass(_)), "1 slow of 2 < 1.0");
    answer(&p, 200, None, &[("request_time", "0.7")]).await;
    answer(&p, 200, None, &[("request_time", "0.9")]).await;
    assert!(matches!(req(&p.pre, "a.test", "/x").await, Seen::Pass(_)), "the window holds a fast one");
    p.clock.advance(Duration::from_secs(1));
    answer(&p, 200, None, &[("request_time", "0.7")]).await;
    answer(&p, 200, None, &[("request_time", "0.9")]).await;
    assert!(matches!(req(&p.pre, "a.test", "/x").await, Seen::Stop(_)), "2 slow of 2");
}

#[tokio::test]
async fn consecutive_is_apisix_per_host_and_uri() {
    let p = pair(
        r#"{"break_response_code": 502, "break_response_body": "down", "scope": "host_uri",
            "unhealthy": {"http_statuses": [500], "failures": 2}, "healthy": {"successes": 1}}"#,
    );
    let at = [("host", "a.test"), ("uri", "/x")];
    for _ in 0..2 {
        pass(&p).await;
        assert_eq!(answer(&p, 500, None, &at).await, ["host", "uri"]);
    }
    assert_eq!(retry_after(&req(&p.pre, "a.test", "/x").await), "2", "2^1 s");
    assert!(matches!(req(&p.pre, "b.test", "/x").await, Seen::Pass(None)), "another host");
    assert!(matches!(req(&p.pre, "a.test", "/y").await, Seen::Pass(None)), "another uri");
    p.clock.advance(Duration::from_secs(2));
    let probe = pass(&p).await.expect("recovering: requests are leased");
    // An answer without a lease is found by host and uri; the probe's by its lease.
    assert_eq!(answer(&p, 500, None, &at).await, [CORR, "host", "uri"]);
    assert_eq!(answer(&p, 500, Some(&probe), &[]).await, [CORR], "the 4th failure");
    assert_eq!(retry_after(&req(&p.pre, "a.test", "/x").await), "4", "2^2 s");
    p.clock.advance(Duration::from_secs(4));
    let probe = pass(&p).await.unwrap();
    answer(&p, 200, Some(&probe), &[]).await;
    assert_eq!(pass(&p).await, None, "one success recovered it");
}

#[test]
fn bad_confs_name_the_field() {
    let env = TestEnv::default();
    for (conf, why) in [
        (r#"{}"#, "break_response_code"),
        (r#"{"break_response_code": 600}"#, "break_response_code"),
        (r#"{"break_response_code": 503, "max_breaker_sec": 2}"#, "max_breaker_sec"),
        (r#"{"break_response_code": 503, "unhealthy": {"http_statuses": [404]}}"#, "unhealthy.http_statuses"),
        (r#"{"break_response_code": 503, "healthy": {"http_statuses": [500]}}"#, "healthy.http_statuses"),
        (r#"{"break_response_code": 503, "healthy": {"successes": 0}}"#, "healthy.successes"),
        (r#"{"break_response_code": 503, "unhealthy": {"failures": 0}}"#, "unhealthy.failures"),
        (r#"{"break_response_code": 503, "policy": "error_ratio"}"#, "threshold"),
        (r#"{"break_response_code": 503, "policy": "error_ratio", "threshold": 1.5}"#, "threshold"),
        (r#"{"break_response_code": 503, "policy": "error_count", "threshold": 0.5}"#, "threshold"),
        (r#"{"break_response_code": 503, "policy": "slow_ratio", "threshold": 0.5}"#, "max_allowed_rt_ms"),
        (r#"{"break_response_code": 503, "stat_interval_ms": 1001}"#, "buckets"),
        (r#"{"break_response_code": 503, "probe_num": 0}"#, "probe_num"),
        (r#"{"break_response_code": 503, "lease_timeout": 0.5}"#, "lease_timeout"),
        (r#"{"break_response_code": 503, "break_response_headers": [{"key": "a b", "value": "1"}]}"#, "break_response_headers"),
        (r#"{"break_response_code": 503, "policy": "adaptive"}"#, "unknown variant"),
        (r#"{"break_response_code": 503, "scope": "global"}"#, "unknown variant"),
        (r#"{"break_response_code": 503, "unhealthy": {"failure": 1}}"#, "unknown field"),
    ] {
        let e = build(conf, &env, PRE).err().expect(conf);
        assert!(e.message().contains(why), "{conf}: {e}");
    }
    let full = r#"{"break_response_code": 503, "break_response_body": "upstream unhealthy",
        "break_response_headers": [{"key": "X-Breaker", "value": "open"}], "max_breaker_sec": 300,
        "unhealthy": {"http_statuses": [500, 502, 503, 504], "failures": 3},
        "healthy": {"http_statuses": [200], "successes": 3}, "policy": "consecutive",
        "threshold": 0.5, "min_request_amount": 5, "stat_interval_ms": 10000, "buckets": 10,
        "recovery_timeout_ms": 5000, "max_allowed_rt_ms": 500, "probe_num": 1,
        "scope": "route", "count_missing_response_as_error": true, "lease_timeout": 30}"#;
    build(full, &env, PRE).expect("the documented example prepares");
}

/// APISIX re-opens a consecutive breaker only after `unhealthy.failures` more failures once the
/// open time is over (its open time counts whole trips: floor(failures seen / failures)).
#[tokio::test]
async fn consecutive_reopens_after_failures_more_failures() {
    let p = pair(
        r#"{"break_response_code": 502, "unhealthy": {"http_statuses": [500], "failures": 3},
            "healthy": {"successes": 3}}"#,
    );
    for _ in 0..3 {
        let id = pass(&p).await;
        answer(&p, 500, id.as_deref(), &[]).await;
    }
    assert_eq!(retry_after(&req(&p.pre, "a.test", "/x").await), "2", "open for 2^1 s");
    p.clock.advance(Duration::from_secs(3));
    for n in 4..=6 {
        let id = pass(&p).await;
        answer(&p, 500, id.as_deref(), &[]).await;
        if n < 6 {
            assert!(matches!(req(&p.pre, "a.test", "/x").await, Seen::Pass(_)), "failure {n} does not re-open");
        }
    }
    assert_eq!(retry_after(&req(&p.pre, "a.test", "/x").await), "4", "the 6th failure: 2^2 s");
}
