//! extra_info over a real socket, for every codec: scenario 6 of docs/protocol.md (round trips for
//! variables and bodies), then plugins that abandon a round trip: a fetch wrapped in a timeout
//! or polled once and dropped, or an error ignored. The answer the gateway still owes must not be
//! read as the next frame: each reply must be right, and the next call on the same connection
//! served as usual.

#[macro_use]
mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{call_frame, closed, echoed, error_code, guarded, rewrite, runner_error, start, stop};
use ext_plugin_runner::codec::Protocol;
use ext_plugin_runner::frame::FrameType;
use ext_plugin_runner::model::{ErrorCode, ExtraInfoReq, HttpReqCallResp, Method, Pair};
use ext_plugin_runner::testing::{request, FakeGateway, GatewayError, TestRunner};
use ext_plugin_runner::Registry;
use ext_plugin_sdk::*;
use futures_util::FutureExt;
use serde_json::Value;

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

    let e = echoed(gw.call(token, &request(Method::Get, "/")).await.unwrap());
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
    let e = echoed(gw.call(token, &request(Method::Post, "/")).await.unwrap());
    assert_eq!(e["body"], "{\"a\":1}");
    assert_eq!(gw.asked.len(), 4, "the cache lasts one call only");

    gw.req_body = Some(Bytes::new());
    let e = echoed(gw.call(token, &request(Method::Post, "/")).await.unwrap());
    assert_eq!(e["body"], "", "an empty body differs from none");

    if p == Protocol::Capnp {
        // Variables pushed with the request cost no round trip.
        gw.asked.clear();
        let req = request(Method::Get, "/")
            .with_pushed_var("route_id", Some("pushed"))
            .with_pushed_var("nope", None);
        let e = echoed(gw.call(token, &req).await.unwrap());
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

// ---------------------------------------------------------------------------------------------
// Abandoned round trips.

/// Long enough that a plugin's short timeout always fires first, even on a loaded machine.
const SLOW: Duration = Duration::from_millis(400);
/// The plugins' own timeout around a fetch.
const IMPATIENT: Duration = Duration::from_millis(10);

/// Starts fetching `slow`, polls once and drops the fetch; then stops with 202.
struct Abandon;

impl Plugin for Abandon {
    const NAME: &'static str = "test-abandon";
    type Conf = Value;

    fn prepare(_: Value, _: &mut PrepareEnv<'_>) -> Result<Self, ConfError> {
        Ok(Abandon)
    }

    async fn request_filter(&self, call: &mut RequestCall<'_>) -> Result<Flow, PluginError> {
        let once = call.var("slow").now_or_never();
        assert!(once.is_none(), "no answer can be there after one poll");
        Ok(Flow::Stop(Stop::new(202)))
    }
}

/// Abandons a fetch of `slow`, then fetches `fast` and answers with its value.
struct AbandonThenAsk;

impl Plugin for AbandonThenAsk {
    const NAME: &'static str = "test-abandon-then-ask";
    type Conf = Value;

    fn prepare(_: Value, _: &mut PrepareEnv<'_>) -> Result<Self, ConfError> {
        Ok(AbandonThenAsk)
    }

    async fn request_filter(&self, call: &mut RequestCall<'_>) -> Result<Flow, PluginError> {
        assert!(call.var("slow").now_or_never().is_none());
        let fast = call.var("fast").await?.unwrap_or_default();
        Ok(Flow::Stop(Stop::new(200).with_body(fast.to_string())))
    }
}

/// Gives `slow` a short timeout and continues without it.
struct Impatient;

impl Plugin for Impatient {
    const NAME: &'static str = "test-impatient";
    type Conf = Value;

    fn prepare(_: Value, _: &mut PrepareEnv<'_>) -> Result<Self, ConfError> {
        Ok(Impatient)
    }

    async fn request_filter(&self, call: &mut RequestCall<'_>) -> Result<Flow, PluginError> {
        match tokio::time::timeout(IMPATIENT, call.var("slow")).await {
            Err(_elapsed) => {
                call.set_header("x-slow", "gave up");
                Ok(Flow::Continue)
            }
            Ok(answered) => Err(PluginError::new(format!(
                "the slow answer came in time ({answered:?}): the test proves nothing"
            ))),
        }
    }

    async fn response_filter(&self, call: &mut ResponseCall<'_>) -> Result<(), PluginError> {
        match tokio::time::timeout(IMPATIENT, call.body()).await {
            Err(_elapsed) => {
                call.set_header("x-body", "gave up");
                Ok(())
            }
            Ok(answered) => Err(PluginError::new(format!(
                "the slow body came in time ({answered:?}): the test proves nothing"
            ))),
        }
    }
}

/// Abandons a fetch, then panics.
struct AbandonThenPanic;

impl Plugin for AbandonThenPanic {
    const NAME: &'static str = "test-abandon-then-panic";
    type Conf = Value;

    fn prepare(_: Value, _: &mut PrepareEnv<'_>) -> Result<Self, ConfError> {
        Ok(AbandonThenPanic)
    }

    async fn request_filter(&self, call: &mut RequestCall<'_>) -> Result<Flow, PluginError> {
        assert!(call.var("slow").now_or_never().is_none());
        panic!("test plugin panics on purpose")
    }
}

/// Ignores a failed fetch and continues.
struct IgnoreError;

impl Plugin for IgnoreError {
    const NAME: &'static str = "test-ignore-error";
    type Conf = Value;

    fn prepare(_: Value, _: &mut PrepareEnv<'_>) -> Result<Self, ConfError> {
        Ok(IgnoreError)
    }

    async fn request_filter(&self, call: &mut RequestCall<'_>) -> Result<Flow, PluginError> {
        let _ = call.var("remote_user").await;
        Ok(Flow::Continue)
    }
}

fn registry() -> Registry {
    common::plugins::registry()
        .with::<Abandon>()
        .with::<AbandonThenAsk>()
        .with::<Impatient>()
        .with::<AbandonThenPanic>()
        .with::<IgnoreError>()
}

/// A runner and a gateway connection whose `slow` variable and bodies answer late.
async fn slow_gateway(p: Protocol) -> (TestRunner, FakeGateway) {
    let runner = TestRunner::start(registry()).await;
    let mut gw = runner.connect_with(p).await;
    gw.set_var("slow", "S");
    gw.set_var("fast", "F");
    gw.set_var("route_id", "r1");
    gw.resp_body = Some(Bytes::from_static(b"upstream"));
    for req in [
        ExtraInfoReq::Var("slow".into()),
        ExtraInfoReq::ReqBody,
        ExtraInfoReq::RespBody,
    ] {
        gw.delay_answer(req, SLOW);
    }
    (runner, gw)
}

/// The same connection still serves a call that makes round trips, in step.
async fn still_in_step(gw: &mut FakeGateway) {
    let token = gw
        .prepare(
            "route#echo#ext-plugin-pre-req#1",
            &[("debug-echo", r#"{"vars": ["route_id", "fast"]}"#)],
        )
        .await
        .unwrap();
    let resp = guarded("a call", gw.call(token, &request(Method::Get, "/next"))).await;
    let e = echoed(resp.unwrap());
    assert_eq!(e["path"], "/next");
    assert_eq!(e["vars"]["route_id"], "r1");
    assert_eq!(e["vars"]["fast"], "F");
}

/// A call on `gw` through chain `token`, with a hang guard.
async fn call(gw: &mut FakeGateway, token: u32) -> Result<HttpReqCallResp, GatewayError> {
    guarded("a call", gw.call(token, &request(Method::Get, "/"))).await
}

#[tokio::test]
async fn a_fetch_polled_once_and_dropped_leaves_the_connection_in_step() {
    for p in Protocol::ALL {
        let (_runner, mut gw) = slow_gateway(p).await;
        let token = gw
            .prepare("route#a#ext-plugin-pre-req#1", &[("test-abandon", "{}")])
            .await
            .unwrap();
        for _ in 0..2 {
            assert_eq!(stop(call(&mut gw, token).await.unwrap()).status, 202);
        }
        still_in_step(&mut gw).await;
    }
}

#[tokio::test]
async fn a_fetch_after_an_abandoned_one_gets_its_own_answer() {
    for p in Protocol::ALL {
        let (_runner, mut gw) = slow_gateway(p).await;
        let token = gw
            .prepare(
                "route#b#ext-plugin-pre-req#1",
                &[("test-abandon-then-ask", "{}")],
            )
            .await
            .unwrap();
        for _ in 0..2 {
            let s = stop(call(&mut gw, token).await.unwrap());
            assert_eq!(
                &s.body[..],
                b"F",
                "{p}: `fast` answered with another's value"
            );
        }
        let once = [
            ExtraInfoReq::Var("slow".into()),
            ExtraInfoReq::Var("fast".into()),
        ];
        assert_eq!(gw.asked, [once.clone(), once].concat(), "{p}");
        still_in_step(&mut gw).await;
    }
}

#[tokio::test]
async fn a_fetch_that_times_out_in_the_plugin_costs_nothing_but_the_wait() {
    for p in Protocol::ALL {
        let (_runner, mut gw) = slow_gateway(p).await;
        let token = gw
            .prepare("route#c#ext-plugin-pre-req#1", &[("test-impatient", "{}")])
            .await
            .unwrap();
        for _ in 0..2 {
            let rw = rewrite(call(&mut gw, token).await.unwrap());
            assert_eq!(rw.headers, [Pair::new("x-slow", "gave up")], "{p}");
        }
        still_in_step(&mut gw).await;
    }
}

#[tokio::test]
async fn a_response_body_fetch_that_times_out_costs_nothing_but_the_wait() {
    for p in Protocol::ALL {
        let (_runner, mut gw) = slow_gateway(p).await;
        let token = gw
            .prepare(
                "route#d#ext-plugin-post-resp#1",
                &[("test-impatient", "{}")],
            )
            .await
            .unwrap();
        for _ in 0..2 {
            let resp = guarded("a call", gw.resp_call(token, 200, &[("a", "b")])).await;
            let resp = resp.unwrap();
            assert_eq!(
                resp.headers,
                [Pair::new("a", "b"), Pair::new("x-body", "gave up")],
                "{p}"
            );
            assert_eq!(resp.body, None, "{p}");
        }
        still_in_step(&mut gw).await;
    }
}

#[tokio::test]
async fn a_panic_after_an_abandoned_fetch_costs_one_call() {
    for p in Protocol::ALL {
        let (_runner, mut gw) = slow_gateway(p).await;
        let token = gw
            .prepare(
                "route#e#ext-plugin-pre-req#1",
                &[("test-abandon-then-panic", "{}")],
            )
            .await
            .unwrap();
        for _ in 0..2 {
            let code = runner_error(call(&mut gw, token).await);
            assert_eq!(code, ErrorCode::ServiceUnavailable, "{p}");
        }
        still_in_step(&mut gw).await;
    }
}

/// A gateway that answers the runner's question with a new call breaks the exchange: the
/// runner must not go on as if nothing happened because the plugin ignored the error.
#[tokio::test]
async fn an_ignored_gateway_failure_still_closes_the_connection() {
    for p in Protocol::ALL {
        let runner = TestRunner::start(registry()).await;
        let token = runner
            .connect_with(p)
            .await
            .prepare(
                "route#f#ext-plugin-pre-req#1",
                &[("test-ignore-error", "{}")],
            )
            .await
            .unwrap();
        let mut gw = runner.connect_with(p).await;
        let mut codec = p.gateway_codec();
        let bytes = call_frame(codec.as_mut(), token, &request(Method::Get, "/"));
        gw.send_raw(&bytes).await.unwrap();
        let question = guarded("extra_info", gw.read_frame()).await.unwrap();
        assert_eq!(question.unwrap().ty, FrameType::ExtraInfo as u8);
        // The "answer" is the next call.
        gw.send_raw(&bytes).await.unwrap();
        assert_eq!(error_code(&mut gw).await, ErrorCode::BadRequest, "{p}");
        assert!(closed(&mut gw).await, "{p}: out of step, so closed");
    }
}
