//! The acceptance scenarios of docs/protocol.md, over a real socket, for every codec.
//!
//! Scenarios 1–9 run an in-process runner with the built-in plugins plus the test plugins below;
//! scenario 10 (SIGTERM) lives in `tests/lifecycle.rs` because it needs the real binary.

use std::time::Duration;

use bytes::Bytes;
use ext_plugin_runner::codec::Protocol;
use ext_plugin_runner::model::{
    ErrorCode, ExtraInfoReq, HttpReqCallResp, Method, Pair, ReqAction, Rewrite, Stop,
};
use ext_plugin_runner::testing::{request, FakeGateway, GatewayError, TestRunner};
use ext_plugin_runner::{Config, Registry};
use ext_plugin_sdk::*;
use serde::Deserialize;
use serde_json::Value;

// ---------------------------------------------------------------------------------------------
// Test plugins, written against the public plugin API only.

/// Stops with the configured status, headers (a null value = absent) and body.
struct Stopper(Stop);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StopperConf {
    status: u16,
    #[serde(default)]
    headers: Vec<(String, Option<String>)>,
    #[serde(default)]
    body: String,
}

fn pairs(list: Vec<(String, Option<String>)>) -> Vec<Pair> {
    list.into_iter()
        .map(|(n, v)| Pair {
            name: n.into(),
            value: v.map(Text::from),
        })
        .collect()
}

impl Plugin for Stopper {
    const NAME: &'static str = "test-stop";
    type Conf = StopperConf;

    fn prepare(c: StopperConf, _: &mut PrepareEnv<'_>) -> Result<Self, ConfError> {
        Ok(Stopper(Stop {
            status: c.status,
            headers: pairs(c.headers),
            body: Bytes::from(c.body),
        }))
    }

    async fn request_filter(&self, _: &mut RequestCall<'_>) -> Result<Flow, PluginError> {
        Ok(Flow::Stop(self.0.clone()))
    }
}

/// Records every kind of rewrite the API offers.
struct Rewriter;

impl Plugin for Rewriter {
    const NAME: &'static str = "test-rewrite";
    type Conf = Value;

    fn prepare(_: Value, _: &mut PrepareEnv<'_>) -> Result<Self, ConfError> {
        Ok(Rewriter)
    }

    async fn request_filter(&self, call: &mut RequestCall<'_>) -> Result<Flow, PluginError> {
        call.set_path("/rewritten path");
        call.set_header("x-set", "1");
        call.remove_header("x-drop");
        call.set_arg("replace", "new");
        call.append_arg("multi", "3");
        call.remove_arg("gone");
        call.set_response_header("x-resp", "r");
        call.set_body("new body");
        Ok(Flow::Continue)
    }
}

/// Sets a response header, then continues (its header must survive a later stop).
struct RespHeader;

impl Plugin for RespHeader {
    const NAME: &'static str = "test-resp-header";
    type Conf = Value;

    fn prepare(_: Value, _: &mut PrepareEnv<'_>) -> Result<Self, ConfError> {
        Ok(RespHeader)
    }

    async fn request_filter(&self, call: &mut RequestCall<'_>) -> Result<Flow, PluginError> {
        call.set_response_header("x-ratelimit-remaining", "9");
        call.set_response_header("x-overridden", "early");
        Ok(Flow::Continue)
    }
}

/// Panics in both phases.
struct Panicker;

impl Plugin for Panicker {
    const NAME: &'static str = "test-panic";
    type Conf = Value;

    fn prepare(_: Value, _: &mut PrepareEnv<'_>) -> Result<Self, ConfError> {
        Ok(Panicker)
    }

    async fn request_filter(&self, _: &mut RequestCall<'_>) -> Result<Flow, PluginError> {
        panic!("test plugin panics on purpose")
    }

    async fn response_filter(&self, _: &mut ResponseCall<'_>) -> Result<(), PluginError> {
        panic!("test plugin panics on purpose")
    }
}

/// Never finishes.
struct Hang;

impl Plugin for Hang {
    const NAME: &'static str = "test-hang";
    type Conf = Value;

    fn prepare(_: Value, _: &mut PrepareEnv<'_>) -> Result<Self, ConfError> {
        Ok(Hang)
    }

    async fn request_filter(&self, _: &mut RequestCall<'_>) -> Result<Flow, PluginError> {
        std::future::pending::<()>().await;
        unreachable!()
    }
}

/// Response phase: reads the upstream body, replaces it, changes the status.
struct BodyRewriter;

impl Plugin for BodyRewriter {
    const NAME: &'static str = "test-resp-body";
    type Conf = Value;

    fn prepare(_: Value, _: &mut PrepareEnv<'_>) -> Result<Self, ConfError> {
        Ok(BodyRewriter)
    }

    async fn response_filter(&self, call: &mut ResponseCall<'_>) -> Result<(), PluginError> {
        let body = call.body().await?.unwrap_or_default();
        // A second read is served from the cache: the gateway may be asked only once.
        let again = call.body().await?.unwrap_or_default();
        assert_eq!(body, again);
        let mut new = b"wrapped:".to_vec();
        new.extend_from_slice(&body);
        call.set_body(new);
        call.set_status(201);
        Ok(())
    }
}

fn registry() -> Registry {
    ext_plugin_catalogue::builtin()
        .with::<Stopper>()
        .with::<Rewriter>()
        .with::<RespHeader>()
        .with::<Panicker>()
        .with::<Hang>()
        .with::<BodyRewriter>()
}

async fn start() -> TestRunner {
    TestRunner::start(registry()).await
}

fn stop_of(resp: &HttpReqCallResp) -> &Stop {
    match &resp.action {
        ReqAction::Stop(s) => s,
        other => panic!("expected a stop, got {other:?}"),
    }
}

/// The echo plugin's JSON answer.
fn echoed(resp: &HttpReqCallResp) -> Value {
    serde_json::from_slice(&stop_of(resp).body).expect("echo answers JSON")
}

fn runner_error<T: std::fmt::Debug>(r: Result<T, GatewayError>) -> ErrorCode {
    match r {
        Err(GatewayError::Runner(code)) => code,
        other => panic!("expected an error frame, got {other:?}"),
    }
}

/// Runs `scenario` once per codec.
macro_rules! for_each_protocol {
    ($name:ident, $scenario:ident) => {
        #[tokio::test]
        async fn $name() {
            for p in Protocol::ALL {
                $scenario(p).await;
            }
        }
    };
}

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

// 4. Stop with status 0; duplicate stop headers kept; empty body allowed.

async fn stop_details(p: Protocol) {
    let runner = start().await;
    let mut gw = runner.connect_with(p).await;
    let conf = r#"{"status": 0, "headers": [["set-cookie", "a=1"], ["set-cookie", "b=2"], ["x-gone", null]]}"#;
    let token = gw
        .prepare("route#4#ext-plugin-pre-req#1", &[("test-stop", conf)])
        .await
        .unwrap();
    let resp = gw.call(token, &request(Method::Get, "/")).await.unwrap();
    let stop = stop_of(&resp);
    assert_eq!(stop.status, 0, "0 travels as 0; the gateway answers 200");
    assert_eq!(
        stop.headers,
        vec![
            Pair::new("set-cookie", "a=1"),
            Pair::new("set-cookie", "b=2"),
            Pair::absent("x-gone")
        ]
    );
    assert!(stop.body.is_empty());

    // Response headers set earlier in the chain are carried into a later stop; the stop's own
    // headers win over an earlier one of the same name.
    let conf = r#"{"status": 429, "headers": [["x-overridden", "stop"]], "body": "no"}"#;
    let token = gw
        .prepare(
            "route#4b#ext-plugin-pre-req#1",
            &[("test-resp-header", "{}"), ("test-stop", conf)],
        )
        .await
        .unwrap();
    let resp = gw.call(token, &request(Method::Get, "/")).await.unwrap();
    let stop = stop_of(&resp);
    assert_eq!(stop.status, 429);
    assert_eq!(
        stop.headers,
        vec![
            Pair::new("x-ratelimit-remaining", "9"),
            Pair::new("x-overridden", "stop")
        ]
    );
    assert_eq!(&stop.body[..], b"no");
}
for_each_protocol!(scenario_4_stop, stop_details);

// 5. Rewrite of path, headers (set, delete), args (replace, append, delete), resp_headers, body.

async fn rewrite_everything(p: Protocol) {
    let runner = start().await;
    let mut gw = runner.connect_with(p).await;
    let token = gw
        .prepare("route#5#ext-plugin-pre-req#1", &[("test-rewrite", "{}")])
        .await
        .unwrap();
    let req = request(Method::Get, "/orig")
        .with_arg("replace", "old")
        .with_arg("multi", "1")
        .with_arg("multi", "2")
        .with_arg("gone", "x")
        .with_header("x-drop", "d");
    let resp = gw.call(token, &req).await.unwrap();
    let expected = Rewrite {
        path: Some("/rewritten path".into()),
        headers: vec![Pair::new("x-set", "1"), Pair::absent("x-drop")],
        args: vec![
            Pair::new("replace", "new"),
            Pair::new("multi", "1"),
            Pair::new("multi", "2"),
            Pair::new("multi", "3"),
            Pair::absent("gone"),
        ],
        resp_headers: vec![Pair::new("x-resp", "r")],
        body: Some(Bytes::from_static(b"new body")),
    };
    assert_eq!(resp.action, ReqAction::Rewrite(expected));

    // A later plugin sees the rewritten request.
    let token = gw
        .prepare(
            "route#5b#ext-plugin-pre-req#1",
            &[("test-rewrite", "{}"), ("debug-echo", r#"{"vars": ["http_x_set", "http_x_drop", "arg_replace", "uri"], "request_body": true}"#)],
        )
        .await
        .unwrap();
    let e = echoed(&gw.call(token, &req).await.unwrap());
    assert_eq!(e["path"], "/rewritten path");
    assert_eq!(e["vars"]["http_x_set"], "1");
    assert_eq!(e["vars"]["http_x_drop"], Value::Null);
    assert_eq!(e["vars"]["arg_replace"], "new");
    assert_eq!(e["vars"]["uri"], "/rewritten path");
    assert_eq!(e["body"], "new body");
    assert!(
        gw.asked.is_empty(),
        "all of it answered locally: {:?}",
        gw.asked
    );
}
for_each_protocol!(scenario_5_rewrite, rewrite_everything);

// 6. extra_info: several var lookups then a final action; unknown var → absent; req_body absent
//    vs present; resp_body inside resp_call.

async fn extra_info_round_trips(p: Protocol) {
    let runner = start().await;
    let mut gw = runner.connect_with(p).await;
    gw.set_var("route_id", "r6");
    gw.set_var("empty", "");
    let conf = r#"{"vars": ["route_id", "empty", "nope", "route_id", "remote_addr"], "request_body": true}"#;
    let token = gw
        .prepare("route#6#ext-plugin-pre-req#1", &[("debug-echo", conf)])
        .await
        .unwrap();

    let e = echoed(&gw.call(token, &request(Method::Get, "/")).await.unwrap());
    assert_eq!(e["vars"]["route_id"], "r6");
    assert_eq!(e["vars"]["empty"], "", "empty differs from nil");
    assert_eq!(e["vars"]["nope"], Value::Null, "unknown var is absent");
    assert_eq!(e["vars"]["remote_addr"], "127.0.0.1");
    assert_eq!(e["body"], Value::Null, "no body");
    assert_eq!(
        gw.asked,
        vec![
            ExtraInfoReq::Var("route_id".into()),
            ExtraInfoReq::Var("empty".into()),
            ExtraInfoReq::Var("nope".into()),
            ExtraInfoReq::ReqBody,
        ],
        "one round trip per var (cached within the call), none for local vars"
    );

    gw.asked.clear();
    gw.req_body = Some(Bytes::from_static(b"{\"a\":1}"));
    let e = echoed(&gw.call(token, &request(Method::Post, "/")).await.unwrap());
    assert_eq!(e["body"], "{\"a\":1}");
    assert_eq!(gw.asked.len(), 4, "the cache lasts one call only");

    gw.req_body = Some(Bytes::new());
    let e = echoed(&gw.call(token, &request(Method::Post, "/")).await.unwrap());
    assert_eq!(e["body"], "", "an empty body differs from none");

    if p == Protocol::Capnp {
        // Variables pushed with the request cost no round trip.
        gw.asked.clear();
        let req = request(Method::Get, "/")
            .with_pushed_var("route_id", Some("pushed"))
            .with_pushed_var("nope", None);
        let e = echoed(&gw.call(token, &req).await.unwrap());
        assert_eq!(e["vars"]["route_id"], "pushed");
        assert_eq!(e["vars"]["nope"], Value::Null);
        assert_eq!(
            gw.asked,
            vec![ExtraInfoReq::Var("empty".into()), ExtraInfoReq::ReqBody]
        );
    }

    // resp_body inside a response call, asked once.
    let token = gw
        .prepare(
            "route#6#ext-plugin-post-resp#1",
            &[("test-resp-body", "{}")],
        )
        .await
        .unwrap();
    gw.resp_body = Some(Bytes::from_static(b"upstream"));
    gw.asked.clear();
    let r = gw.resp_call(token, 200, &[("a", "b")]).await.unwrap();
    assert_eq!(r.status, 201);
    assert_eq!(r.body.as_deref(), Some(&b"wrapped:upstream"[..]));
    assert!(r.headers.is_empty(), "headers untouched: none returned");
    assert_eq!(gw.asked, vec![ExtraInfoReq::RespBody]);
}
for_each_protocol!(scenario_6_extra_info, extra_info_round_trips);

// 7. Input fidelity: IPv4 and IPv6 src_ip, repeated args, empty vs bare args, multi-value headers.

async fn input_fidelity(p: Protocol) {
    let runner = start().await;
    let mut gw = runner.connect_with(p).await;
    let token = gw
        .prepare(
            "route#7#ext-plugin-pre-req#1",
            &[(
                "debug-echo",
                r#"{"vars": ["arg_flag", "arg_e", "http_accept", "request_uri", "args"]}"#,
            )],
        )
        .await
        .unwrap();
    let req = request(Method::Patch, "/p/ü x")
        .with_src_ip("2001:db8::7")
        .with_arg("k", "1")
        .with_arg("k", "2")
        .with_arg("e", "")
        .with_flag("flag")
        .with_header("accept", "a")
        .with_header("accept", "b");
    let e = echoed(&gw.call(token, &req).await.unwrap());
    assert_eq!(e["method"], "PATCH");
    assert_eq!(e["path"], "/p/ü x");
    assert_eq!(e["src_ip"], "2001:db8::7");
    assert_eq!(
        e["args"],
        serde_json::json!([["k", "1"], ["k", "2"], ["e", ""], ["flag", null]])
    );
    assert_eq!(
        e["headers"],
        serde_json::json!([["accept", "a"], ["accept", "b"]])
    );
    assert_eq!(
        e["vars"]["arg_flag"], "",
        "a bare flag reads as empty, like nginx"
    );
    assert_eq!(e["vars"]["arg_e"], "");
    assert_eq!(e["vars"]["http_accept"], "a, b", "repeats join like nginx");
    assert_eq!(e["vars"]["request_uri"], "/p/%C3%BC%20x?k=1&k=2&e=&flag");
    assert_eq!(e["vars"]["args"], "k=1&k=2&e=&flag");

    let e = echoed(
        &gw.call(token, &request(Method::Get, "/").with_src_ip("10.1.2.3"))
            .await
            .unwrap(),
    );
    assert_eq!(e["src_ip"], "10.1.2.3");
    for m in Method::ALL {
        let e = echoed(&gw.call(token, &request(m, "/")).await.unwrap());
        assert_eq!(e["method"], m.as_str());
    }
}
for_each_protocol!(scenario_7_input_fidelity, input_fidelity);

// 8. Truncated header, truncated payload, oversized length, unknown type, garbage payload.

async fn hostile_frames(p: Protocol) {
    let config = Config {
        max_frame: 64 * 1024,
        ..Config::default()
    };
    let runner = TestRunner::start_with(config, registry()).await;
    let mut bystander = runner.connect_with(p).await;
    let token = bystander
        .prepare("route#8#ext-plugin-pre-req#1", &[("debug-echo", "{}")])
        .await
        .unwrap();

    // Unknown type and garbage payloads: an error frame, and the connection stays usable. (Each
    // connection first makes a valid call, so an `auto` runner knows its protocol.)
    let mut gw = runner.connect_with(p).await;
    still_fine(&mut gw, token).await;
    for frame in [
        &[9u8, 0, 0, 3, 1, 2, 3][..],
        &[0u8, 0, 0, 1, 0][..],
        &[3u8, 0, 0, 1, 0][..],
        &[2u8, 0, 0, 8, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4][..],
        &[1u8, 0, 0, 3, b'b', b'a', b'd'][..],
        &[4u8, 0, 0, 2, 0xff, 0xff][..],
    ] {
        gw.send_raw(frame).await.unwrap();
        let reply = gw.read_frame().await.unwrap().expect("an error frame");
        assert_eq!(
            gw.decode_error(&reply).unwrap(),
            ErrorCode::BadRequest,
            "{frame:?}"
        );
    }
    still_fine(&mut gw, token).await;

    // Truncated header, truncated payload: the runner closes cleanly.
    for partial in [&[2u8, 0][..], &[2u8, 0, 0, 100, 1, 2, 3][..]] {
        let mut gw = runner.connect_with(p).await;
        gw.send_raw(partial).await.unwrap();
        drop(gw);
    }

    // A length over the limit: an error frame, then the connection closes.
    let mut gw = runner.connect_with(p).await;
    still_fine(&mut gw, token).await;
    gw.send_raw(&[2u8, 0x10, 0, 0]).await.unwrap();
    let reply = gw.read_frame().await.unwrap().expect("an error frame");
    assert_eq!(gw.decode_error(&reply).unwrap(), ErrorCode::BadRequest);
    assert!(
        gw.read_frame().await.unwrap().is_none(),
        "then a clean close"
    );

    // A plugin that panics costs one call, not the connection.
    let token2 = gw_prepare(&runner, p, "route#8b#ext-plugin-pre-req#1", "test-panic").await;
    let mut gw = runner.connect_with(p).await;
    assert_eq!(
        runner_error(gw.call(token2, &request(Method::Get, "/")).await),
        ErrorCode::ServiceUnavailable
    );
    assert_eq!(
        runner_error(gw.resp_call(token2, 200, &[]).await),
        ErrorCode::ServiceUnavailable
    );
    still_fine(&mut gw, token).await;
    still_fine(&mut bystander, token).await;
}
for_each_protocol!(scenario_8_hostile_frames, hostile_frames);

async fn still_fine(gw: &mut FakeGateway, token: u32) {
    let resp = gw.call(token, &request(Method::Get, "/ok")).await.unwrap();
    assert_eq!(echoed(&resp)["path"], "/ok");
}

async fn gw_prepare(runner: &TestRunner, p: Protocol, key: &str, plugin: &str) -> u32 {
    runner
        .connect_with(p)
        .await
        .prepare(key, &[(plugin, "{}")])
        .await
        .unwrap()
}

// 9. Runner restart with the gateway still holding tokens.

async fn restart_forgets_tokens(p: Protocol) {
    let old = start().await;
    let token = gw_prepare(&old, p, "route#9#ext-plugin-pre-req#1", "debug-echo").await;
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

// Beyond the acceptance scenarios: prepare failures, deadlines.

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

#[tokio::test]
async fn a_call_over_its_deadline_is_answered_and_freed() {
    let config = Config {
        call_timeout: Duration::from_millis(200),
        ..Config::default()
    };
    let runner = TestRunner::start_with(config, registry()).await;
    let mut gw = runner.connect().await;
    let token = gw
        .prepare("route#d#ext-plugin-pre-req#1", &[("test-hang", "{}")])
        .await
        .unwrap();
    assert_eq!(
        runner_error(gw.call(token, &request(Method::Get, "/")).await),
        ErrorCode::ServiceUnavailable
    );
    let echo = gw
        .prepare("route#e#ext-plugin-pre-req#1", &[("debug-echo", "{}")])
        .await
        .unwrap();
    assert!(gw.call(echo, &request(Method::Get, "/")).await.is_ok());
}
