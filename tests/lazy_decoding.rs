//! Lazy decoding over the real socket (issue 15, docs/protocol.md §4): decoding a call only
//! locates its headers and arguments; their text is read, and checked as UTF-8, when a plugin
//! asks. What a plugin sees of a header nobody read before that is not UTF-8: the replacement
//! character, never an error; and a chain that reads no header is not affected at all. A
//! header whose *structure* is broken is found the same way, when a plugin first reads the
//! headers: they read as empty and the call is answered BAD_REQUEST whatever the chain decided;
//! a chain that reads no header answers as usual.

mod common;

use common::{call_frame, echoed, guarded, plugins};
use ext_plugin_fuzz_checks as harness;
use ext_plugin_runner::codec::{GatewayCodec, Protocol};
use ext_plugin_runner::frame::FrameType;
use ext_plugin_runner::model::{ErrorCode, HttpReqCallResp, Method, ReqAction};
use ext_plugin_runner::testing::{request, FakeGateway, TestRunner};
use serde_json::json;

/// `req`'s frame for `token` with the UTF-8 of `é` in header `x-latin` broken into two
/// invalid bytes (a lead byte that never starts a sequence, then a lone continuation byte).
fn frame_with_a_latin_header(p: Protocol, token: u32) -> Vec<u8> {
    let req = request(Method::Get, "/lazy")
        .with_header("host", "example.com")
        .with_header("x-latin", "caf\u{e9}");
    let mut bytes = call_frame(p.gateway_codec().as_mut(), token, &req);
    let at = bytes
        .windows(5)
        .position(|w| w == "caf\u{e9}".as_bytes())
        .expect("the value is in the frame as it was written");
    bytes[at + 3] = 0xFF;
    bytes
}

/// Sends the frame of [`frame_with_a_latin_header`] and reads the runner's reply.
async fn reply(
    gw: &mut FakeGateway,
    codec: &dyn GatewayCodec,
    p: Protocol,
    token: u32,
) -> HttpReqCallResp {
    gw.send_raw(&frame_with_a_latin_header(p, token))
        .await
        .unwrap();
    let f = guarded("a reply", gw.read_frame()).await.unwrap().unwrap();
    assert_eq!(
        f.ty,
        FrameType::HttpReqCall as u8,
        "{p}: not an error frame"
    );
    codec.decode_http_req_call_resp(&f.payload).unwrap()
}

#[tokio::test]
async fn a_header_that_is_not_utf8_reads_as_replacement_characters_and_fails_nothing() {
    let runner = TestRunner::start(plugins::registry()).await;
    for p in Protocol::ALL {
        let mut gw = runner.connect_with(p).await;
        let codec = p.gateway_codec();
        let echo = gw
            .prepare("route#lazy#ext-plugin-pre-req#1", &[("debug-echo", "{}")])
            .await
            .unwrap();
        let empty = gw
            .prepare("route#lazy-empty#ext-plugin-pre-req#1", &[])
            .await
            .unwrap();
        // Nobody reads the header: the call goes on as if it were text.
        let continued = reply(&mut gw, codec.as_ref(), p, empty).await;
        assert_eq!(continued.action, ReqAction::Continue, "{p}");
        // debug-echo is the first to read it, and sees U+FFFD for each invalid byte.
        let echoed = echoed(reply(&mut gw, codec.as_ref(), p, echo).await.action);
        assert_eq!(
            echoed["headers"],
            json!([["host", "example.com"], ["x-latin", "caf\u{fffd}\u{fffd}"]]),
            "{p}"
        );
    }
}

/// `req`'s frame for `token` with header `x-broken`'s value made unreadable
/// ([`harness::break_string`]).
fn frame_with_a_broken_header(p: Protocol, token: u32) -> Vec<u8> {
    let req = request(Method::Get, "/lazy")
        .with_header("host", "example.com")
        .with_header("x-broken", harness::BROKEN_VALUE);
    let mut bytes = call_frame(p.gateway_codec().as_mut(), token, &req);
    harness::break_string(p, &mut bytes, harness::BROKEN_VALUE);
    bytes
}

#[tokio::test]
async fn a_broken_header_fails_the_call_only_when_a_plugin_reads_the_headers() {
    let runner = TestRunner::start(plugins::registry()).await;
    for p in Protocol::ALL {
        let mut gw = runner.connect_with(p).await;
        let codec = p.gateway_codec();
        let echo = gw
            .prepare("route#broken#ext-plugin-pre-req#1", &[("debug-echo", "{}")])
            .await
            .unwrap();
        let empty = gw
            .prepare("route#broken-empty#ext-plugin-pre-req#1", &[])
            .await
            .unwrap();
        // Nobody reads the headers: answered as if the frame were whole.
        gw.send_raw(&frame_with_a_broken_header(p, empty))
            .await
            .unwrap();
        let f = guarded("a reply", gw.read_frame()).await.unwrap().unwrap();
        assert_eq!(f.ty, FrameType::HttpReqCall as u8, "{p}: a call reply");
        let continued = codec.decode_http_req_call_resp(&f.payload).unwrap();
        assert_eq!(continued.action, ReqAction::Continue, "{p}");
        // debug-echo reads them and (seeing none) answers; the runner answers BAD_REQUEST
        // instead, and the connection goes on.
        for _ in 0..2 {
            gw.send_raw(&frame_with_a_broken_header(p, echo))
                .await
                .unwrap();
            let f = guarded("a reply", gw.read_frame()).await.unwrap().unwrap();
            assert_eq!(f.ty, FrameType::Error as u8, "{p}: an error frame");
            assert_eq!(
                codec.decode_error_resp(&f.payload).unwrap(),
                ErrorCode::BadRequest,
                "{p}"
            );
        }
        let whole = reply(&mut gw, codec.as_ref(), p, echo).await;
        assert_eq!(echoed(whole.action)["path"], json!("/lazy"), "{p}");
    }
}
