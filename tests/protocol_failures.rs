//! The acceptance scenario 8 of docs/protocol.md, for every codec: frames a gateway must not
//! send, and plugins that panic or never finish. The other scenarios: `protocol.rs`; the
//! hostile-gateway suites (`hostile_*.rs`) go further.

#[macro_use]
mod common;

use std::time::Duration;

use common::{echoed, prepare_apart, runner_error};
use ext_plugin_runner::codec::Protocol;
use ext_plugin_runner::model::{ErrorCode, Method};
use ext_plugin_runner::testing::{request, FakeGateway, TestRunner};
use ext_plugin_runner::Config;

// 8. Truncated header, truncated payload, oversized length, unknown type, garbage payload.

async fn hostile_frames(p: Protocol) {
    let config = Config {
        max_frame: 64 * 1024,
        ..Config::default()
    };
    let runner = TestRunner::start_with(config, common::plugins::registry()).await;
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

    // A plugin that panics, in its future or its synchronous hook, costs one call, not the
    // connection.
    for plugin in ["test-panic", "test-panic-sync"] {
        let key = format!("route#8b-{plugin}#ext-plugin-pre-req#1");
        let token2 = prepare_apart(&runner, p, &key, plugin).await;
        let mut gw = runner.connect_with(p).await;
        assert_eq!(
            runner_error(gw.call(token2, &request(Method::Get, "/")).await),
            ErrorCode::ServiceUnavailable,
            "{plugin}"
        );
        assert_eq!(
            runner_error(gw.resp_call(token2, 200, &[]).await),
            ErrorCode::ServiceUnavailable,
            "{plugin}"
        );
        still_fine(&mut gw, token).await;
    }
    still_fine(&mut bystander, token).await;
}
for_each_protocol!(scenario_8_hostile_frames, hostile_frames);

async fn still_fine(gw: &mut FakeGateway, token: u32) {
    let resp = gw.call(token, &request(Method::Get, "/ok")).await.unwrap();
    assert_eq!(echoed(&resp)["path"], "/ok");
}

#[tokio::test]
async fn a_call_over_its_deadline_is_answered_and_freed() {
    let config = Config {
        call_timeout: Duration::from_millis(200),
        ..Config::default()
    };
    let runner = TestRunner::start_with(config, common::plugins::registry()).await;
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
