//! Lazy decoding over the real socket (issue 15, docs/protocol.md §4): decoding a call only
//! locates its headers and arguments; their text is read, and checked as UTF-8, when a plugin
//! asks. What a plugin sees of a header nobody read before that is not UTF-8: the replacement
//! character, never an error; and a chain that reads no header is not affected at all.

mod common;

use common::{call_frame, echoed, guarded, plugins};
use ext_plugin_runner::codec::{GatewayCodec, Protocol};
use ext_plugin_runner::frame::FrameType;
use ext_plugin_runner::model::{HttpReqCallResp, Method, ReqAction};
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
