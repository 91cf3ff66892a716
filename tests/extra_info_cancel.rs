//! Plugins that abandon a gateway round trip: a fetch wrapped in a timeout or polled once and
//! dropped, or an error ignored. The answer the gateway still owes must not be read as the next
//! frame: each reply must be right, and the next call on the same connection served as usual.

use std::time::Duration;

use bytes::Bytes;
use ext_plugin_runner::codec::Protocol;
use ext_plugin_runner::frame::{write_frame, FrameType};
use ext_plugin_runner::model::{ErrorCode, ExtraInfoReq, Method, Pair, ReqAction};
use ext_plugin_runner::testing::{request, FakeGateway, GatewayError, TestRunner};
use ext_plugin_runner::Registry;
use ext_plugin_sdk::*;
use futures_util::FutureExt;
use serde_json::Value;

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
    ext_plugin_catalogue::builtin()
        .with::<Abandon>()
        .with::<AbandonThenAsk>()
        .with::<Impatient>()
        .with::<AbandonThenPanic>()
        .with::<IgnoreError>()
}

/// A runner and a gateway connection whose `slow` variable and bodies answer late.
async fn start(p: Protocol) -> (TestRunner, FakeGateway) {
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
            &[("echo", r#"{"vars": ["route_id", "fast"]}"#)],
        )
        .await
        .unwrap();
    let resp = gw
        .call(token, &request(Method::Get, "/next"))
        .await
        .unwrap();
    let ReqAction::Stop(stop) = resp.action else {
        panic!("echo stops: {resp:?}")
    };
    let echoed: Value = serde_json::from_slice(&stop.body).unwrap();
    assert_eq!(echoed["path"], "/next");
    assert_eq!(echoed["vars"]["route_id"], "r1");
    assert_eq!(echoed["vars"]["fast"], "F");
}

fn status_of(r: Result<ext_plugin_runner::model::HttpReqCallResp, GatewayError>) -> u16 {
    match r {
        Ok(resp) => match resp.action {
            ReqAction::Stop(s) => s.status,
            other => panic!("expected a stop, got {other:?}"),
        },
        Err(e) => panic!("expected a reply, got {e}"),
    }
}

#[tokio::test]
async fn a_fetch_polled_once_and_dropped_leaves_the_connection_in_step() {
    for p in Protocol::ALL {
        let (_runner, mut gw) = start(p).await;
        let token = gw
            .prepare("route#a#ext-plugin-pre-req#1", &[("test-abandon", "{}")])
            .await
            .unwrap();
        for _ in 0..2 {
            assert_eq!(
                status_of(gw.call(token, &request(Method::Get, "/")).await),
                202
            );
        }
        still_in_step(&mut gw).await;
    }
}

#[tokio::test]
async fn a_fetch_after_an_abandoned_one_gets_its_own_answer() {
    for p in Protocol::ALL {
        let (_runner, mut gw) = start(p).await;
        let token = gw
            .prepare(
                "route#b#ext-plugin-pre-req#1",
                &[("test-abandon-then-ask", "{}")],
            )
            .await
            .unwrap();
        for _ in 0..2 {
            let resp = gw.call(token, &request(Method::Get, "/")).await.unwrap();
            let ReqAction::Stop(stop) = resp.action else {
                panic!("{p}: {resp:?}")
            };
            assert_eq!(
                &stop.body[..],
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
        let (_runner, mut gw) = start(p).await;
        let token = gw
            .prepare("route#c#ext-plugin-pre-req#1", &[("test-impatient", "{}")])
            .await
            .unwrap();
        for _ in 0..2 {
            let resp = gw.call(token, &request(Method::Get, "/")).await.unwrap();
            let ReqAction::Rewrite(rw) = resp.action else {
                panic!("{p}: {resp:?}")
            };
            assert_eq!(rw.headers, [Pair::new("x-slow", "gave up")], "{p}");
        }
        still_in_step(&mut gw).await;
    }
}

#[tokio::test]
async fn a_response_body_fetch_that_times_out_costs_nothing_but_the_wait() {
    for p in Protocol::ALL {
        let (_runner, mut gw) = start(p).await;
        let token = gw
            .prepare(
                "route#d#ext-plugin-post-resp#1",
                &[("test-impatient", "{}")],
            )
            .await
            .unwrap();
        for _ in 0..2 {
            let resp = gw.resp_call(token, 200, &[("a", "b")]).await.unwrap();
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
        let (_runner, mut gw) = start(p).await;
        let token = gw
            .prepare(
                "route#e#ext-plugin-pre-req#1",
                &[("test-abandon-then-panic", "{}")],
            )
            .await
            .unwrap();
        for _ in 0..2 {
            let r = gw.call(token, &request(Method::Get, "/")).await;
            assert!(
                matches!(r, Err(GatewayError::Runner(ErrorCode::ServiceUnavailable))),
                "{p}: {r:?}"
            );
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
        let mut call = request(Method::Get, "/");
        call.conf_token = token;
        let mut bytes = Vec::new();
        write_frame(&mut bytes, FrameType::HttpReqCall as u8, |o| {
            codec.encode_http_req_call_req(&call, o)
        })
        .unwrap();
        gw.send_raw(&bytes).await.unwrap();
        let question = gw.read_frame().await.unwrap().unwrap();
        assert_eq!(question.ty, FrameType::ExtraInfo as u8);
        // The "answer" is the next call.
        gw.send_raw(&bytes).await.unwrap();
        let reply = gw.read_frame().await.unwrap().expect("an error frame");
        assert_eq!(
            gw.decode_error(&reply).unwrap(),
            ErrorCode::BadRequest,
            "{p}"
        );
        assert!(
            gw.read_frame().await.unwrap().is_none(),
            "{p}: out of step, so closed"
        );
    }
}
