//! The limiters' *(ext)* extras over the socket: per-key thresholds (`specific_items`), key
//! patterns (`match_strategy`), Sentinel's warm-up, and `dry_run` on every traffic plugin.
//! Time-dependent curves are asserted with a hand-driven clock in the catalogue's own tests.

use ext_plugin_runner::model::{HttpReqCallReq, Method, Pair, ReqAction};
use ext_plugin_runner::testing::{request, FakeGateway, TestRunner};

const PRE: &str = "route#1#ext-plugin-pre-req#1";
const POST: &str = "route#1#ext-plugin-post-resp#1";

async fn setup(key: &str, chain: &[(&str, &str)]) -> (TestRunner, FakeGateway, u32) {
    let runner = TestRunner::start(ext_plugin_catalogue::builtin()).await;
    let mut gw = runner.connect().await;
    let token = gw.prepare(key, chain).await.expect("the chain prepares");
    (runner, gw, token)
}

async fn act(gw: &mut FakeGateway, t: u32, req: &HttpReqCallReq) -> ReqAction {
    gw.call(t, req).await.expect("the call succeeds").action
}

fn status(a: &ReqAction) -> u16 {
    match a {
        ReqAction::Stop(s) => s.status,
        _ => 200,
    }
}

fn resp_header<'a>(a: &'a ReqAction, name: &str) -> Option<&'a str> {
    let pairs: &[Pair] = match a {
        ReqAction::Rewrite(r) => &r.resp_headers,
        ReqAction::Stop(s) => &s.headers,
        ReqAction::Continue => &[],
    };
    pairs
        .iter()
        .find(|p| p.name.eq_ignore_ascii_case(name))
        .and_then(|p| p.value.as_deref())
}

fn user(name: &str) -> HttpReqCallReq {
    request(Method::Get, "/").with_header("x-user", name)
}

#[tokio::test]
async fn limit_count_specific_items_give_keys_their_own_quota() {
    let conf = r#"{"count": 1, "time_window": 60, "key": "http_x_user", "rejected_code": 429,
                   "specific_items": {"vip": 3}}"#;
    let (_r, mut gw, t) = setup(PRE, &[("limit-count", conf)]).await;
    let mut vip = Vec::new();
    for _ in 0..4 {
        vip.push(act(&mut gw, t, &user("vip")).await);
    }
    assert_eq!(
        vip.iter().map(status).collect::<Vec<_>>(),
        [200, 200, 200, 429]
    );
    assert_eq!(resp_header(&vip[0], "x-ratelimit-limit"), Some("3"));
    assert_eq!(resp_header(&vip[0], "x-ratelimit-remaining"), Some("2"));
    let a = act(&mut gw, t, &user("trial")).await;
    assert_eq!(
        (status(&a), resp_header(&a, "x-ratelimit-limit")),
        (200, Some("1"))
    );
    assert_eq!(status(&act(&mut gw, t, &user("trial")).await), 429);
}

#[tokio::test]
async fn match_strategy_limits_only_matching_keys_or_shares_the_rest() {
    let conf = r#"{"count": 1, "time_window": 60, "key": "http_x_user", "rejected_code": 429,
                   "match_strategy": "prefix", "pattern": "user-"}"#;
    let (_r, mut gw, t) = setup(PRE, &[("limit-count", conf)]).await;
    for _ in 0..3 {
        let a = act(&mut gw, t, &user("bot")).await;
        assert_eq!(
            (status(&a), resp_header(&a, "x-ratelimit-limit")),
            (200, None),
            "not limited"
        );
    }
    assert_eq!(status(&act(&mut gw, t, &user("user-1")).await), 200);
    assert_eq!(status(&act(&mut gw, t, &user("user-1")).await), 429);

    let shared = conf.replace(
        r#""pattern": "user-""#,
        r#""pattern": "user-", "unmatched": "shared""#,
    );
    let (_r, mut gw, t) = setup(PRE, &[("limit-count", &shared)]).await;
    assert_eq!(status(&act(&mut gw, t, &user("bot-a")).await), 200);
    assert_eq!(
        status(&act(&mut gw, t, &user("bot-b")).await),
        429,
        "one `$NM` counter for all"
    );
    assert_eq!(status(&act(&mut gw, t, &user("user-2")).await), 200);
}

#[tokio::test]
async fn limit_req_specific_items_set_a_keys_rate() {
    let conf = r#"{"rate": 0.01, "burst": 0, "nodelay": true, "key": "http_x_user", "rejected_code": 429,
                   "specific_items": {"vip": 1000000}}"#;
    let (_r, mut gw, t) = setup(PRE, &[("limit-req", conf)]).await;
    for _ in 0..3 {
        assert_eq!(status(&act(&mut gw, t, &user("vip")).await), 200);
    }
    assert_eq!(status(&act(&mut gw, t, &user("other")).await), 200);
    assert_eq!(status(&act(&mut gw, t, &user("other")).await), 429);
}

#[tokio::test]
async fn a_cold_limit_count_key_starts_at_a_third_of_its_quota() {
    let conf = r#"{"count": 30, "time_window": 60, "warm_up_period_sec": 10}"#;
    let (_r, mut gw, t) = setup(PRE, &[("limit-count", conf)]).await;
    let a = act(&mut gw, t, &request(Method::Get, "/")).await;
    assert_eq!(resp_header(&a, "x-ratelimit-limit"), Some("10"));
    let conf = r#"{"count": 30, "time_window": 60, "warm_up_period_sec": 10, "cold_factor": 5}"#;
    let (_r, mut gw, t) = setup(PRE, &[("limit-count", conf)]).await;
    let a = act(&mut gw, t, &request(Method::Get, "/")).await;
    assert_eq!(resp_header(&a, "x-ratelimit-limit"), Some("6"));
}

#[tokio::test]
async fn extras_that_cannot_apply_are_refused() {
    let runner = TestRunner::start(ext_plugin_catalogue::builtin()).await;
    let mut gw = runner.connect().await;
    for (i, (plugin, conf)) in [
        (
            "limit-count",
            r#"{"count": 1, "time_window": 1, "specific_items": {"a": 0}}"#,
        ),
        (
            "limit-count",
            r#"{"count": 1, "time_window": 1, "match_strategy": "prefix"}"#,
        ),
        (
            "limit-count",
            r#"{"count": 1, "time_window": 1, "match_strategy": "glob", "pattern": "a"}"#,
        ),
        (
            "limit-count",
            r#"{"rules": [{"count": 1, "time_window": 1, "key": "$remote_addr"}], "warm_up_period_sec": 5}"#,
        ),
        (
            "limit-count",
            r#"{"count": 1, "time_window": 1, "cold_factor": 3}"#,
        ),
        (
            "limit-req",
            r#"{"rate": 1, "burst": 0, "warm_up_period_sec": 5, "cold_factor": 1}"#,
        ),
        (
            "limit-req",
            r#"{"rate": 1, "burst": 1, "specific_items": {"a": 0.001}}"#,
        ),
    ]
    .into_iter()
    .enumerate()
    {
        // Each under its own route: a key the runner has prepared is answered from its cache.
        let key = format!("route#refused-{i}#ext-plugin-pre-req#1");
        assert!(gw.prepare(&key, &[(plugin, conf)]).await.is_err(), "{plugin} {conf}");
    }
}

/// Dry runs never stop a request; a would-be rejection is marked on the response (adaptive-limit's,
/// which needs learnt traffic, is tested with a hand-driven clock in its module).
#[tokio::test]
async fn dry_runs_mark_instead_of_rejecting() {
    for (plugin, conf) in [
        (
            "limit-count",
            r#"{"count": 1, "time_window": 60, "dry_run": true}"#,
        ),
        (
            "limit-req",
            r#"{"rate": 0.01, "burst": 0, "nodelay": true, "dry_run": true}"#,
        ),
        (
            "limit-conn",
            r#"{"conn": 1, "burst": 0, "default_conn_delay": 0.1, "dry_run": true}"#,
        ),
    ] {
        let (_r, mut gw, t) = setup(PRE, &[(plugin, conf)]).await;
        let first = act(&mut gw, t, &request(Method::Get, "/")).await;
        assert_eq!(resp_header(&first, "x-dry-run-reject"), None, "{plugin}");
        let second = act(&mut gw, t, &request(Method::Get, "/")).await;
        assert_eq!(status(&second), 200, "{plugin}");
        assert_eq!(
            resp_header(&second, "x-dry-run-reject"),
            Some(plugin),
            "{plugin}"
        );
    }
}

#[tokio::test]
async fn api_breaker_dry_run_lets_requests_through_an_open_breaker() {
    let conf = r#"{"break_response_code": 502, "unhealthy": {"http_statuses": [500], "failures": 1}, "dry_run": true}"#;
    let runner = TestRunner::start(ext_plugin_catalogue::builtin()).await;
    let mut gw = runner.connect().await;
    let pre = gw.prepare(PRE, &[("api-breaker", conf)]).await.unwrap();
    let post = gw.prepare(POST, &[("api-breaker", conf)]).await.unwrap();
    assert_eq!(
        status(&act(&mut gw, pre, &request(Method::Get, "/")).await),
        200
    );
    gw.resp_call(post, 500, &[]).await.unwrap();
    let a = act(&mut gw, pre, &request(Method::Get, "/")).await;
    assert_eq!(
        (status(&a), resp_header(&a, "x-dry-run-reject")),
        (200, Some("api-breaker"))
    );

    let enforced = conf.replace(r#", "dry_run": true"#, "");
    let pre = gw
        .prepare(
            "route#2#ext-plugin-pre-req#1",
            &[("api-breaker", &enforced)],
        )
        .await
        .unwrap();
    let post = gw
        .prepare(
            "route#2#ext-plugin-post-resp#1",
            &[("api-breaker", &enforced)],
        )
        .await
        .unwrap();
    act(&mut gw, pre, &request(Method::Get, "/")).await;
    gw.resp_call(post, 500, &[]).await.unwrap();
    assert_eq!(
        status(&act(&mut gw, pre, &request(Method::Get, "/")).await),
        502,
        "the same breaker, enforced"
    );
}
