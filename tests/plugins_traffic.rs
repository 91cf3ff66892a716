//! The traffic plugins through the fake gateway over a real socket: the exact wire answers for
//! pass and reject, and limits holding under concurrent connections.

mod common;

use common::{pairs, stop, PRE};
use ext_plugin_catalogue as plugins;
use ext_plugin_runner::model::{HttpReqCallResp, Pair, ReqAction};
use ext_plugin_runner::testing::{request, FakeGateway, TestRunner};
use ext_plugin_sdk::Method;

fn resp_headers(resp: &HttpReqCallResp) -> &[Pair] {
    match &resp.action {
        ReqAction::Rewrite(r) => &r.resp_headers,
        other => panic!("expected a rewrite, got {other:?}"),
    }
}

async fn gateway(runner: &TestRunner, chain: &[(&str, &str)]) -> (FakeGateway, u32) {
    let mut gw = runner.connect().await;
    let token = gw.prepare(PRE, chain).await.expect("conf prepares");
    (gw, token)
}

#[tokio::test]
async fn limit_count_pass_and_reject_on_the_wire() {
    let runner = TestRunner::start(plugins::builtin()).await;
    let conf = r#"{"count": 2, "time_window": 60, "rejected_code": 429, "rejected_msg": "Too many requests",
                   "rejected_headers": [{"key": "X-Limited", "value": "yes"}]}"#;
    let (mut gw, token) = gateway(&runner, &[("limit-count", conf)]).await;
    let req = request(Method::Get, "/p").with_src_ip("10.0.0.1");
    for remaining in ["1", "0"] {
        let resp = gw.call(token, &req).await.unwrap();
        let h = resp_headers(&resp);
        assert_eq!(
            &h[..2],
            &pairs(&[
                ("X-RateLimit-Limit", "2"),
                ("X-RateLimit-Remaining", remaining)
            ])[..]
        );
        assert_eq!(h[2].name.as_str(), "X-RateLimit-Reset");
        let reset: u64 = h[2].value.as_deref().unwrap().parse().unwrap();
        assert!((59..=60).contains(&reset), "{reset}");
    }
    let s = stop(gw.call(token, &req).await.unwrap());
    assert_eq!(s.status, 429);
    assert_eq!(&s.body[..], b"{\"error_msg\":\"Too many requests\"}\n");
    let names: Vec<_> = s.headers.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "X-RateLimit-Limit",
            "X-RateLimit-Remaining",
            "X-RateLimit-Reset",
            "X-Limited"
        ]
    );
    assert_eq!(s.headers[1].value.as_deref(), Some("0"));
    // Another client has its own quota.
    let other = gw
        .call(token, &request(Method::Get, "/p").with_src_ip("10.0.0.2"))
        .await
        .unwrap();
    assert!(matches!(other.action, ReqAction::Rewrite(_)));
}

#[tokio::test]
async fn limit_count_bad_conf_fails_prepare() {
    let runner = TestRunner::start(plugins::builtin()).await;
    let mut gw = runner.connect().await;
    let err = gw
        .prepare(
            PRE,
            &[(
                "limit-count",
                r#"{"count": 1, "time_window": 1, "policy": "redis"}"#,
            )],
        )
        .await;
    assert!(err.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_connections_never_admit_more_than_the_limit() {
    let runner = TestRunner::start(plugins::builtin()).await;
    let conf = r#"{"count": 100, "time_window": 3600, "key_type": "constant", "key": "all",
                   "show_limit_quota_header": false}"#;
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (mut gw, token) = gateway(&runner, &[("limit-count", conf)]).await;
        tasks.push(tokio::spawn(async move {
            let mut admitted = 0;
            for _ in 0..25 {
                let resp = gw.call(token, &request(Method::Get, "/")).await.unwrap();
                admitted += usize::from(resp.action == ReqAction::Continue);
            }
            admitted
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    assert_eq!(total, 100, "400 requests at one key of quota 100");
}

#[tokio::test]
async fn limit_req_pass_and_reject_on_the_wire() {
    let runner = TestRunner::start(plugins::builtin()).await;
    let conf = r#"{"rate": 1, "burst": 0, "rejected_code": 503, "rejected_msg": "slow down", "retry_after": true}"#;
    let (mut gw, token) = gateway(&runner, &[("limit-req", conf)]).await;
    let req = request(Method::Get, "/").with_src_ip("10.0.0.3");
    assert_eq!(
        gw.call(token, &req).await.unwrap().action,
        ReqAction::Continue
    );
    let s = stop(gw.call(token, &req).await.unwrap());
    assert_eq!(s.status, 503);
    assert_eq!(&s.body[..], b"{\"error_msg\":\"slow down\"}\n");
    assert_eq!(s.headers, pairs(&[("Retry-After", "1")]));
}

#[tokio::test]
async fn fault_injection_abort_on_the_wire() {
    let runner = TestRunner::start(plugins::builtin()).await;
    let conf = r#"{"abort": {"http_status": 503, "body": "injected for $remote_addr", "headers": {"X-Fault": "1"},
                             "vars": [[["arg_name", "==", "jack"]]]}}"#;
    let (mut gw, token) = gateway(&runner, &[("fault-injection", conf)]).await;
    let hit = request(Method::Get, "/")
        .with_arg("name", "jack")
        .with_src_ip("10.0.0.4");
    let s = stop(gw.call(token, &hit).await.unwrap());
    assert_eq!(
        (s.status, &s.body[..]),
        (503, &b"injected for 10.0.0.4"[..])
    );
    assert_eq!(s.headers, pairs(&[("X-Fault", "1")]));
    let miss = request(Method::Get, "/").with_arg("name", "rose");
    assert_eq!(
        gw.call(token, &miss).await.unwrap().action,
        ReqAction::Continue
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_conn_holds_across_connections_and_releases_on_the_response() {
    let runner = TestRunner::start(plugins::builtin()).await;
    let conf = r#"{"conn": 3, "burst": 0, "default_conn_delay": 0.1, "key_type": "constant", "key": "all",
                   "rejected_code": 503, "rejected_msg": "busy"}"#;
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (mut gw, token) = gateway(&runner, &[("limit-conn", conf)]).await;
        tasks.push(tokio::spawn(async move {
            let resp = gw.call(token, &request(Method::Get, "/")).await.unwrap();
            (gw, resp)
        }));
    }
    let mut admitted = Vec::new();
    let mut rejected = 0;
    for t in tasks {
        let (gw, resp) = t.await.unwrap();
        match resp.action {
            ReqAction::Rewrite(r) => {
                assert_eq!(r.headers[0].name.as_str(), "x-a6-runner-req");
                admitted.push((gw, r.headers[0].value.clone().unwrap()));
            }
            ReqAction::Stop(s) => {
                assert_eq!(
                    (s.status, &s.body[..]),
                    (503, &b"{\"error_msg\":\"busy\"}\n"[..])
                );
                rejected += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((admitted.len(), rejected), (3, 13));

    // The post-resp half (same conf) releases one slot by the correlation id.
    let (mut gw, id) = admitted.pop().unwrap();
    let post = gw
        .prepare("route#1#ext-plugin-post-resp#1", &[("limit-conn", conf)])
        .await
        .unwrap();
    gw.set_var("http_x_a6_runner_req", id.as_str());
    gw.set_var("request_time", "0.05");
    let reply = gw
        .resp_call(post, 200, &[("content-type", "text/plain")])
        .await
        .unwrap();
    assert_eq!(
        (reply.status, reply.headers.len(), reply.body),
        (0, 0, None),
        "the response is untouched"
    );
    let (mut gw2, token) = gateway(&runner, &[("limit-conn", conf)]).await;
    assert!(matches!(
        gw2.call(token, &request(Method::Get, "/"))
            .await
            .unwrap()
            .action,
        ReqAction::Rewrite(_)
    ));
    assert!(matches!(
        gw2.call(token, &request(Method::Get, "/"))
            .await
            .unwrap()
            .action,
        ReqAction::Stop(_)
    ));
}
