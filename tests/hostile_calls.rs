//! A hostile or broken gateway, over a real socket (issue 7, docs/HARDENING.md): connections
//! reset mid-call, extra_info answered wrongly or never, plugins that panic or never return.
//! Each test checks what the runner answers, then that a normal call on a fresh connection still
//! succeeds. Abandoned extra_info fetches are `extra_info.rs`.
//!
//! Runners here use small limits (deadlines of a few hundred milliseconds) so the suite is
//! fast; timeouts in the tests themselves are hang guards only.

mod common;

use common::{
    call_frame, closed, error_code, fresh_call_works, guarded, prepare_apart as prepare,
    start_small as start,
};
use ext_plugin_runner::codec::Protocol;
use ext_plugin_runner::frame::FrameType;
use ext_plugin_runner::model::{ErrorCode, ExtraInfoReq, Method};
use ext_plugin_runner::testing::{request, FakeGateway, GatewayError, TestRunner};

#[tokio::test]
async fn a_connection_reset_mid_call_or_mid_extra_info_costs_only_itself() {
    let runner = start().await;
    for p in Protocol::ALL {
        // Mid-call: the plugin is still running when the gateway goes away.
        let spin = prepare(&runner, p, "route#spin#ext-plugin-pre-req#1", "test-spin").await;
        let mut gw = runner.connect_with(p).await;
        let mut codec = p.gateway_codec();
        let call = request(Method::Get, "/");
        let bytes = call_frame(codec.as_mut(), spin, &call);
        gw.send_raw(&bytes).await.unwrap();
        drop(gw);

        // Mid-extra_info: the gateway reads the runner's question and goes away.
        let ask = prepare(&runner, p, "route#ask#ext-plugin-pre-req#1", "test-ask-var").await;
        let mut gw = runner.connect_with(p).await;
        let bytes = call_frame(codec.as_mut(), ask, &call);
        gw.send_raw(&bytes).await.unwrap();
        let question = guarded("extra_info", gw.read_frame())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(question.ty, FrameType::ExtraInfo as u8);
        drop(gw);

        fresh_call_works(&runner, p).await;
    }
}

/// Sends a call to the ask-var chain and returns once the runner's question has arrived.
async fn asked(runner: &TestRunner, p: Protocol, token: u32) -> FakeGateway {
    let mut gw = runner.connect_with(p).await;
    let mut codec = p.gateway_codec();
    let bytes = call_frame(codec.as_mut(), token, &request(Method::Get, "/"));
    gw.send_raw(&bytes).await.unwrap();
    let question = guarded("extra_info", gw.read_frame())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(question.ty, FrameType::ExtraInfo as u8);
    assert_eq!(
        codec.decode_extra_info_req(&question.payload).unwrap(),
        ExtraInfoReq::Var("remote_user".into())
    );
    gw
}

#[tokio::test]
async fn an_extra_info_answered_wrongly_or_never_closes_the_connection() {
    let runner = start().await;
    for p in Protocol::ALL {
        let ask = prepare(&runner, p, "route#ask#ext-plugin-pre-req#1", "test-ask-var").await;
        let mut codec = p.gateway_codec();

        // Answered with another frame type (a new call, as a confused gateway would).
        let mut gw = asked(&runner, p, ask).await;
        let wrong = call_frame(codec.as_mut(), ask, &request(Method::Get, "/"));
        gw.send_raw(&wrong).await.unwrap();
        assert_eq!(error_code(&mut gw).await, ErrorCode::BadRequest, "{p}");
        assert!(closed(&mut gw).await, "{p}: out of step, so closed");

        // Answered with garbage of the right type.
        let mut gw = asked(&runner, p, ask).await;
        gw.send_raw(&[3, 0, 0, 2, 0xFF, 0xFF]).await.unwrap();
        assert_eq!(error_code(&mut gw).await, ErrorCode::BadRequest, "{p}");
        assert!(closed(&mut gw).await, "{p}");

        // Never answered: the call deadline answers, and the connection closes.
        let mut gw = asked(&runner, p, ask).await;
        assert_eq!(
            error_code(&mut gw).await,
            ErrorCode::ServiceUnavailable,
            "{p}"
        );
        assert!(closed(&mut gw).await, "{p}");

        fresh_call_works(&runner, p).await;
    }
}

#[tokio::test]
async fn a_plugin_that_panics_or_loops_on_an_await_costs_one_call() {
    let runner = start().await;
    for p in Protocol::ALL {
        for plugin in ["test-panic", "test-panic-sync", "test-spin"] {
            let key = format!("route#{plugin}#ext-plugin-pre-req#1");
            let token = prepare(&runner, p, &key, plugin).await;
            let mut gw = runner.connect_with(p).await;
            for _ in 0..2 {
                let r = guarded(plugin, gw.call(token, &request(Method::Get, "/"))).await;
                assert!(
                    matches!(r, Err(GatewayError::Runner(ErrorCode::ServiceUnavailable))),
                    "{p} {plugin}: {r:?}"
                );
            }
            // The same connection still serves other chains.
            let echo = gw
                .prepare("route#e#ext-plugin-pre-req#1", &[("debug-echo", "{}")])
                .await
                .unwrap();
            assert!(gw.call(echo, &request(Method::Get, "/")).await.is_ok());
            fresh_call_works(&runner, p).await;
        }
    }
}
