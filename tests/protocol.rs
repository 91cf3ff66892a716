//! The acceptance scenarios of docs/protocol.md, over a real socket, for every codec, with the
//! built-in plugins plus the test plugins of `tests/common/plugins.rs`.
//!
//! Here: connections and tokens (scenarios 1, 2, 3, 9) and prepare failures. Stops, rewrites and
//! input fidelity (4, 5, 7) are `protocol_actions.rs`; extra_info (6) is `extra_info.rs`;
//! hostile frames and the call deadline (8) are `protocol_failures.rs`; SIGTERM (10) is
//! `lifecycle.rs`, because it needs the real binary.

#[macro_use]
mod common;

use common::{echoed, prepare_apart, runner_error, start};
use ext_plugin_runner::codec::Protocol;
use ext_plugin_runner::model::{ErrorCode, Method, Pair, ReqAction};
use ext_plugin_runner::testing::request;
use std::time::Duration;

// ---------------------------------------------------------------------------------------------
// 1. One request through pre-req, post-req and post-resp on pooled connections.

async fn three_attachments_on_pooled_connections(p: Protocol) {
    let runner = start().await;
    let mut a = runner.connect_with(p).await;
    let mut b = runner.connect_with(p).await;

    let pre = a
        .prepare("route#1#ext-plugin-pre-req#1", &[("request-id", "{}")])
        .await
        .unwrap();
    let rewrite = a.call(pre, &request(Method::Get, "/x")).await.unwrap();
    let ReqAction::Rewrite(rw) = &rewrite.action else {
        panic!("request-id rewrites: {rewrite:?}")
    };
    assert_eq!(rw.headers.len(), 1);
    assert_eq!(rw.headers[0].name, "X-Request-Id");

    let post = b
        .prepare("route#1#ext-plugin-post-req#1", &[("debug-echo", "{}")])
        .await
        .unwrap();
    let echo = b.call(post, &request(Method::Post, "/x")).await.unwrap();
    assert_eq!(echoed(&echo)["method"], "POST");

    let resp = a
        .prepare("route#1#ext-plugin-post-resp#1", &[("debug-echo", "{}")])
        .await
        .unwrap();
    let r = a
        .resp_call(resp, 404, &[("Content-Type", "text/plain")])
        .await
        .unwrap();
    assert_eq!(r.status, 0, "status kept");
    assert_eq!(
        r.headers,
        vec![
            Pair::new("Content-Type", "text/plain"),
            Pair::new("x-echo-upstream-status", "404")
        ],
        "the full header set is returned"
    );
    // The same connections keep serving, any call type in any order.
    assert!(a.call(pre, &request(Method::Get, "/y")).await.is_ok());
    assert!(b.resp_call(resp, 200, &[]).await.is_ok());
    assert_eq!(
        b.prepare("route#1#ext-plugin-pre-req#1", &[("request-id", "{}")])
            .await
            .unwrap(),
        pre,
        "the same key from another connection gets the same token"
    );
}
for_each_protocol!(
    scenario_1_pre_post_and_resp,
    three_attachments_on_pooled_connections
);

// 2. Nested connection: a call connection waits, idle, while prepare runs on a second one.

async fn nested_connection(p: Protocol) {
    let runner = start().await;
    let mut call_conn = runner.connect_with(p).await;
    let mut prep_conn = runner.connect_with(p).await;
    let token = tokio::time::timeout(
        Duration::from_secs(10),
        prep_conn.prepare("route#2#ext-plugin-pre-req#1", &[("debug-echo", "{}")]),
    )
    .await
    .expect("prepare_conf must not wait for the idle connection")
    .unwrap();
    let resp = call_conn
        .call(token, &request(Method::Get, "/n"))
        .await
        .unwrap();
    assert_eq!(echoed(&resp)["path"], "/n");
}
for_each_protocol!(scenario_2_nested_connection, nested_connection);

// 3. Unknown token → CONF_TOKEN_NOT_FOUND; re-prepare; retry succeeds.

async fn unknown_token_then_retry(p: Protocol) {
    let runner = start().await;
    let mut gw = runner.connect_with(p).await;
    let code = runner_error(gw.call(12345, &request(Method::Get, "/")).await);
    assert_eq!(code, ErrorCode::ConfTokenNotFound);
    let code = runner_error(gw.resp_call(12345, 200, &[]).await);
    assert_eq!(code, ErrorCode::ConfTokenNotFound);
    let token = gw
        .prepare("route#3#ext-plugin-pre-req#1", &[("debug-echo", "{}")])
        .await
        .unwrap();
    assert!(gw.call(token, &request(Method::Get, "/")).await.is_ok());
}
for_each_protocol!(scenario_3_unknown_token, unknown_token_then_retry);

// 9. Runner restart with the gateway still holding tokens.

async fn restart_forgets_tokens(p: Protocol) {
    let old = start().await;
    let token = prepare_apart(&old, p, "route#9#ext-plugin-pre-req#1", "debug-echo").await;
    old.stop().await;

    let new = start().await;
    let mut gw = new.connect_with(p).await;
    let other = gw
        .prepare(
            "route#other#ext-plugin-pre-req#1",
            &[("test-stop", r#"{"status": 418}"#)],
        )
        .await
        .unwrap();
    assert_ne!(
        other, token,
        "tokens start at a random value in each process"
    );
    assert_eq!(
        runner_error(gw.call(token, &request(Method::Get, "/")).await),
        ErrorCode::ConfTokenNotFound,
        "an old token never reaches another route's chain"
    );
    let again = gw
        .prepare("route#9#ext-plugin-pre-req#1", &[("debug-echo", "{}")])
        .await
        .unwrap();
    assert!(gw.call(again, &request(Method::Get, "/")).await.is_ok());
}
for_each_protocol!(scenario_9_restart, restart_forgets_tokens);

// Beyond the acceptance scenarios: prepare failures.

async fn bad_chains_fail_closed(p: Protocol) {
    let runner = start().await;
    let mut gw = runner.connect_with(p).await;
    for chain in [
        vec![("no-such-plugin", "{}")],
        vec![("debug-echo", "{}"), ("debug-echo", r#"{"status": 9000}"#)],
        vec![("debug-echo", r#"{"unknown_field": 1}"#)],
        vec![("ip-restriction", r#"{"whitelist": ["not an ip"]}"#)],
        vec![("debug-echo", "not json")],
    ] {
        let code = runner_error(gw.prepare("route#x#ext-plugin-pre-req#1", &chain).await);
        assert_eq!(code, ErrorCode::BadRequest, "{chain:?}");
    }
    // An empty chain is valid: every call continues.
    let token = gw
        .prepare("route#empty#ext-plugin-pre-req#1", &[])
        .await
        .unwrap();
    let resp = gw.call(token, &request(Method::Get, "/")).await.unwrap();
    assert_eq!(resp.action, ReqAction::Continue);
    assert_eq!(gw.resp_call(token, 200, &[]).await.unwrap().headers, vec![]);
}
for_each_protocol!(prepare_failures_are_bad_requests, bad_chains_fail_closed);
