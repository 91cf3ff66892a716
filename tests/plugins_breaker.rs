//! api-breaker through the fake gateway over a real socket: the exact wire answers for pass,
//! reject and probe, the request and response chains of a route sharing one breaker, and the
//! correlation id shared with other plugins of the chain.
//!
//! Time is driven: each test starts its runner on a manual clock of its own
//! (`Config::clock`), so parallel tests do not move each other's clocks.

mod common;

use std::time::Duration;

use common::{pairs, stop, POST, PRE};
use ext_plugin_catalogue as plugins;
use ext_plugin_catalogue::api_breaker::ApiBreaker;
use ext_plugin_catalogue::limit_conn::LimitConn;
use ext_plugin_catalogue::limit_count::LimitCount;
use ext_plugin_catalogue::request_id::RequestId;
use ext_plugin_runner::model::{ExtraInfoReq, HttpReqCallResp, Pair, ReqAction};
use ext_plugin_runner::testing::{request, FakeGateway, TestRunner};
use ext_plugin_runner::{Config, Registry};
use ext_plugin_sdk::*;

const CORR: &str = "x-a6-runner-req";

/// A runner with `registry` whose plugins read `clock`.
async fn start(registry: Registry, clock: &Clock) -> TestRunner {
    let config = Config {
        clock: clock.clone(),
        ..Config::default()
    };
    TestRunner::start_with(config, registry).await
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// The request headers a passing call set (a probe's correlation id).
fn set_headers(resp: HttpReqCallResp) -> Vec<Pair> {
    match resp.action {
        ReqAction::Rewrite(r) => r.headers,
        other => panic!("expected a rewrite, got {other:?}"),
    }
}

/// A runner with `registry` on `clock`, one connection and `chain` prepared as the route's
/// pre-req and post-resp halves: `(runner, gateway, pre token, post token)`.
async fn halves(
    registry: Registry,
    clock: &Clock,
    chain: &[(&str, &str)],
) -> (TestRunner, FakeGateway, u32, u32) {
    let runner = start(registry, clock).await;
    let mut gw = runner.connect().await;
    let pre = gw.prepare(PRE, chain).await.unwrap();
    let post = gw.prepare(POST, chain).await.unwrap();
    (runner, gw, pre, post)
}

/// `n` requests whose upstream answered `status`, each answer carrying back the correlation id
/// its request got, as the gateway would.
async fn round_trips(gw: &mut FakeGateway, (pre, post): (u32, u32), n: usize, status: u16) {
    let req = request(Method::Get, "/");
    for _ in 0..n {
        if let ReqAction::Rewrite(r) = gw.call(pre, &req).await.unwrap().action {
            if let Some(id) = r.headers.iter().find(|h| h.name.as_str() == CORR) {
                gw.set_var("http_x_a6_runner_req", id.value.as_deref().unwrap());
            }
        }
        gw.resp_call(post, status, &[]).await.unwrap();
    }
}

/// The upstream answered `status`; the gateway's reply leaves the response untouched.
async fn answer(gw: &mut FakeGateway, token: u32, status: u16) {
    let reply = gw
        .resp_call(token, status, &[("content-type", "text/plain")])
        .await
        .unwrap();
    assert_eq!(
        (reply.status, reply.headers.len(), reply.body),
        (0, 0, None)
    );
}

const RATIO: &str = r#"{"break_response_code": 503, "break_response_body": "upstream unhealthy",
    "break_response_headers": [{"key": "X-Breaker", "value": "open"}],
    "policy": "error_ratio", "threshold": 0.5, "min_request_amount": 4, "stat_interval_ms": 10000,
    "recovery_timeout_ms": 5000, "probe_num": 1, "unhealthy": {"http_statuses": [500, 502, 503, 504]}}"#;

#[tokio::test]
async fn error_ratio_pass_reject_probe_and_close_on_the_wire() {
    let clock = Clock::manual();
    let runner = start(Registry::new().with::<ApiBreaker>(), &clock).await;
    // The two halves on two connections, as a gateway's pool would use them.
    let mut gw = runner.connect().await;
    let pre = gw.prepare(PRE, &[("api-breaker", RATIO)]).await.unwrap();
    let mut up = runner.connect().await;
    let post = up.prepare(POST, &[("api-breaker", RATIO)]).await.unwrap();

    let req = request(Method::Get, "/orders");
    for status in [200, 500, 200, 503] {
        assert_eq!(
            gw.call(pre, &req).await.unwrap().action,
            ReqAction::Continue
        );
        answer(&mut up, post, status).await;
    }
    assert!(
        up.asked.is_empty(),
        "route scope, error policy: no extra_info at all"
    );

    let s = stop(gw.call(pre, &req).await.unwrap());
    assert_eq!(s.status, 503);
    assert_eq!(&s.body[..], b"upstream unhealthy");
    assert_eq!(
        s.headers,
        pairs(&[("X-Breaker", "open"), ("Retry-After", "5")])
    );
    clock.advance(secs(3));
    let s = stop(gw.call(pre, &req).await.unwrap());
    assert_eq!(
        s.headers,
        pairs(&[("X-Breaker", "open"), ("Retry-After", "2")])
    );

    clock.advance(secs(2));
    let probe = set_headers(gw.call(pre, &req).await.unwrap());
    assert_eq!(probe.len(), 1);
    assert_eq!(probe[0].name.as_str(), CORR, "the probe is correlated");
    let s = stop(gw.call(pre, &req).await.unwrap());
    assert_eq!(
        s.headers,
        pairs(&[("X-Breaker", "open"), ("Retry-After", "1")]),
        "budget used"
    );

    up.set_var("http_x_a6_runner_req", probe[0].value.as_deref().unwrap());
    answer(&mut up, post, 200).await;
    assert_eq!(
        up.asked,
        [ExtraInfoReq::Var("http_x_a6_runner_req".to_owned().into())]
    );
    assert_eq!(
        gw.call(pre, &req).await.unwrap().action,
        ReqAction::Continue,
        "closed"
    );
}

#[tokio::test]
async fn a_probe_whose_answer_never_comes_reopens_the_breaker() {
    let chain = [("api-breaker", RATIO)];
    let clock = Clock::manual();
    let (_r, mut gw, pre, post) =
        halves(Registry::new().with::<ApiBreaker>(), &clock, &chain).await;
    let req = request(Method::Get, "/");
    round_trips(&mut gw, (pre, post), 4, 502).await;
    clock.advance(secs(5));
    set_headers(gw.call(pre, &req).await.unwrap()); // the upstream failed: no resp-call
    clock.advance(secs(30));
    let s = stop(gw.call(pre, &req).await.unwrap());
    assert_eq!(
        s.headers,
        pairs(&[("X-Breaker", "open"), ("Retry-After", "5")])
    );
}

#[tokio::test]
async fn consecutive_stop_has_headers_without_a_body_after_earlier_plugins_headers() {
    let quota = r#"{"count": 100, "time_window": 60, "key_type": "constant", "key": "all"}"#;
    let breaker = r#"{"break_response_code": 502, "break_response_headers": [{"key": "X-Breaker", "value": "open"}],
                      "unhealthy": {"http_statuses": [500], "failures": 2}}"#;
    let chain = [("limit-count", quota), ("api-breaker", breaker)];
    let registry = Registry::new().with::<LimitCount>().with::<ApiBreaker>();
    let clock = Clock::manual();
    let (_r, mut gw, pre, post) = halves(registry, &clock, &chain).await;
    round_trips(&mut gw, (pre, post), 2, 500).await;
    let s = stop(gw.call(pre, &request(Method::Get, "/")).await.unwrap());
    assert_eq!((s.status, s.body.len()), (502, 0));
    let names: Vec<_> = s.headers.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "X-RateLimit-Limit",
            "X-RateLimit-Remaining",
            "X-RateLimit-Reset",
            "X-Breaker",
            "Retry-After"
        ],
        "the headers limit-count set earlier in the chain, then the breaker's"
    );
    assert_eq!(s.headers[4].value.as_deref(), Some("2"), "2^1 s");
    clock.advance(secs(2));
    let probe = set_headers(gw.call(pre, &request(Method::Get, "/")).await.unwrap());
    assert_eq!(
        probe[0].name.as_str(),
        CORR,
        "open time over: a leased probe"
    );
}

#[tokio::test]
async fn limit_conn_and_a_probe_share_one_correlation_id() {
    let conn = r#"{"conn": 1, "burst": 0, "default_conn_delay": 0.1, "key_type": "constant", "key": "all"}"#;
    let chain = [("limit-conn", conn), ("api-breaker", RATIO)];
    let registry = Registry::new().with::<LimitConn>().with::<ApiBreaker>();
    let clock = Clock::manual();
    let (_r, mut gw, pre, post) = halves(registry, &clock, &chain).await;
    // Each answer frees limit-conn's only slot (else the next request would be refused).
    round_trips(&mut gw, (pre, post), 4, 500).await;
    let req = request(Method::Get, "/");
    clock.advance(secs(5));
    let h = set_headers(gw.call(pre, &req).await.unwrap());
    assert_eq!(h.len(), 1, "one header, one id for both plugins: {h:?}");
    gw.set_var("http_x_a6_runner_req", h[0].value.as_deref().unwrap());
    answer(&mut gw, post, 200).await;
    // The answer freed limit-conn's slot and closed the breaker.
    assert!(matches!(
        gw.call(pre, &req).await.unwrap().action,
        ReqAction::Rewrite(_)
    ));
}

/// With request-id in the chain the probe still carries the runner's own id: an answer that
/// names only the client's request id (another client can send the same) decides nothing.
#[tokio::test]
async fn probes_never_trust_the_client_request_id() {
    let chain = [("request-id", "{}"), ("api-breaker", RATIO)];
    let registry = Registry::new().with::<RequestId>().with::<ApiBreaker>();
    let clock = Clock::manual();
    let (_r, mut gw, pre, post) = halves(registry, &clock, &chain).await;
    round_trips(&mut gw, (pre, post), 4, 500).await;
    let req = request(Method::Get, "/").with_header("x-request-id", "client-id-1");
    clock.advance(secs(5));
    let probe = set_headers(gw.call(pre, &req).await.unwrap());
    assert_eq!(probe.len(), 1, "{probe:?}");
    assert_eq!(probe[0].name.as_str(), "x-a6-runner-req");
    let id = probe[0].value.as_deref().unwrap().to_owned();
    assert_ne!(id, "client-id-1");
    assert_eq!(
        stop(gw.call(pre, &req).await.unwrap()).status,
        503,
        "budget used"
    );
    gw.set_var("http_x_request_id", "client-id-1");
    gw.resp_call(post, 200, &[]).await.unwrap();
    assert_eq!(
        stop(gw.call(pre, &req).await.unwrap()).status,
        503,
        "the client's id ended no probe"
    );
    gw.set_var("http_x_a6_runner_req", &id);
    gw.resp_call(post, 200, &[]).await.unwrap();
    let next = request(Method::Get, "/").with_header("x-request-id", "id-2");
    assert!(
        set_headers(gw.call(pre, &next).await.unwrap()).is_empty(),
        "the probe's own answer closed it"
    );
}

#[tokio::test]
async fn the_builtin_registry_has_it_and_refuses_bad_confs() {
    let runner = TestRunner::start(plugins::builtin()).await;
    let mut gw = runner.connect().await;
    let token = gw.prepare(PRE, &[("api-breaker", RATIO)]).await.unwrap();
    assert_eq!(
        gw.call(token, &request(Method::Get, "/"))
            .await
            .unwrap()
            .action,
        ReqAction::Continue
    );
    for (i, bad) in [
        r#"{"break_response_code": 503, "policy": "error_ratio"}"#,
        r#"{"break_response_code": 503, "buckets": 0}"#,
        r#"{"break_response_code": 503, "unknown": 1}"#,
    ]
    .into_iter()
    .enumerate()
    {
        let key = format!("route#{}#ext-plugin-pre-req#1", i + 2);
        assert!(
            gw.prepare(&key, &[("api-breaker", bad)]).await.is_err(),
            "{bad}"
        );
    }
}
