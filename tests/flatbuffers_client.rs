//! A FlatBuffers gateway client written from the published ext-plugin-proto v0.6.1 schema
//! (`tests/flatbuffers/`), independently of this crate's codec, drives a real runner over a real
//! Unix socket, as stock Apache APISIX does.

mod flatbuffers;

use ext_plugin_runner::codec::{Protocol, ProtocolSetting};
use ext_plugin_runner::model::{ErrorCode as ModelErrorCode, Method, ReqAction};
use ext_plugin_runner::testing::{request, GatewayError, TestRunner};
use ext_plugin_runner::Config;

use flatbuffers::schema::*;
use flatbuffers::verify::*;
use flatbuffers::{ipv6, registry, start, Client};

// ---------------------------------------------------------------------------------------------
// The tests.

#[tokio::test]
async fn prepare_returns_one_token_per_key() {
    let runner = start().await;
    let mut gw = Client::connect(&runner).await;
    let echo = [("debug-echo", Some("{}"))];
    let a = gw.prepare("route#1#ext-plugin-pre-req#1", &echo).await;
    let again = gw.prepare("route#1#ext-plugin-pre-req#1", &echo).await;
    let b = gw.prepare("route#2#ext-plugin-pre-req#1", &echo).await;
    assert_eq!(a, again);
    assert_ne!(a, b);
    // A conf the plugin refuses is BAD_REQUEST, and the connection goes on.
    let bad = prepare_conf_req(
        "route#3#ext-plugin-pre-req#1",
        &[("debug-echo", Some(r#"{"status": 7}"#))],
    );
    assert_eq!(gw.error(1, &bad).await, BAD_REQUEST);
    gw.prepare("route#4#ext-plugin-pre-req#1", &[]).await;
    runner.stop().await;
}

#[tokio::test]
async fn continue_is_action_none() {
    let runner = start().await;
    let mut gw = Client::connect(&runner).await;
    let conf = r#"{"whitelist": ["127.0.0.1", "2001:db8::/32"]}"#;
    let token = gw
        .prepare(
            "route#1#ext-plugin-pre-req#1",
            &[("ip-restriction", Some(conf))],
        )
        .await;
    let v6 = ipv6("2001:db8::7");
    for src_ip in [&[127, 0, 0, 1][..], &v6] {
        let r = Req {
            src_ip,
            ..req(41, token, "/")
        };
        let (ty, reply) = gw.exchange(2, &http_req_call_req(&r)).await;
        assert_eq!(ty, 2);
        let resp = root::<ReqCallRespV>(&reply);
        assert_eq!(resp.u32(0), 41);
        assert_eq!(resp.u8(1), 0, "action NONE");
        assert!(resp.table(2).is_none());
    }
    // Another address is stopped by the same chain.
    let r = Req {
        src_ip: &[10, 9, 8, 7],
        ..req(42, token, "/")
    };
    let (_, reply) = gw.exchange(2, &http_req_call_req(&r)).await;
    let resp = root::<ReqCallRespV>(&reply);
    assert_eq!(resp.u8(1), ACTION_STOP);
    assert_eq!(resp.table(2).unwrap().u16(0), 403);
    runner.stop().await;
}

#[tokio::test]
async fn stop_carries_status_zero_repeated_headers_and_no_body() {
    let runner = start().await;
    let mut gw = Client::connect(&runner).await;
    let token = gw
        .prepare("route#1#ext-plugin-pre-req#1", &[("test-stop-zero", None)])
        .await;
    let (ty, reply) = gw
        .exchange(2, &http_req_call_req(&req(5, token, "/")))
        .await;
    assert_eq!(ty, 2);
    let resp = root::<ReqCallRespV>(&reply);
    assert_eq!(resp.u32(0), 5);
    assert_eq!(resp.u8(1), ACTION_STOP);
    let stop = resp.table(2).unwrap();
    assert_eq!(stop.u16(0), 0);
    assert_eq!(
        stop.entries(1),
        owned(&[("x-dup", Some("1")), ("x-dup", Some("2"))])
    );
    assert_eq!(stop.bytes(2).unwrap_or_default(), b"");
    runner.stop().await;
}

#[tokio::test]
async fn rewrite_carries_every_field_exactly() {
    let runner = start().await;
    let mut gw = Client::connect(&runner).await;
    let token = gw
        .prepare(
            "route#1#ext-plugin-pre-req#1",
            &[("test-rewrite-all", Some("{}"))],
        )
        .await;
    let r = Req {
        method: POST,
        args: &[("b", Some("1")), ("c", Some("x")), ("flag", None)],
        headers: &[("x-del", Some("gone")), ("host", Some("example.com"))],
        ..req(9, token, "/old")
    };
    let (ty, reply) = gw.exchange(2, &http_req_call_req(&r)).await;
    assert_eq!(ty, 2);
    let resp = root::<ReqCallRespV>(&reply);
    assert_eq!(resp.u32(0), 9);
    assert_eq!(resp.u8(1), ACTION_REWRITE);
    let rw = resp.table(2).unwrap();
    assert_eq!(rw.str(0), Some("/new path"));
    assert_eq!(
        rw.entries(1),
        owned(&[("x-set", Some("1")), ("x-del", None)])
    );
    assert_eq!(
        rw.entries(2),
        owned(&[
            ("a", Some("A")),
            ("b", Some("1")),
            ("b", Some("2")),
            ("c", None)
        ])
    );
    assert_eq!(rw.entries(3), owned(&[("x-resp", Some("r"))]));
    assert_eq!(rw.bytes(4), Some(&b"new body"[..]));
    runner.stop().await;
}

#[tokio::test]
async fn extra_info_round_trips_absent_empty_and_bodies() {
    let runner = start().await;
    let mut gw = Client::connect(&runner).await;
    gw.vars = vec![("route_id", b"r1"), ("empty", b"")];
    gw.req_body = Some(b"hello");
    let conf = r#"{"vars": ["route_id", "missing", "empty"], "request_body": true}"#;
    let token = gw
        .prepare(
            "route#1#ext-plugin-pre-req#1",
            &[("debug-echo", Some(conf))],
        )
        .await;
    let v6 = ipv6("2001:db8::1");
    let r = Req {
        src_ip: &v6,
        args: &[
            ("k", Some("1")),
            ("k", Some("2")),
            ("flag", None),
            ("e", Some("")),
        ],
        headers: &[("accept", Some("a")), ("accept", Some("b"))],
        ..req(12, token, "/a b")
    };
    let (ty, reply) = gw.exchange(2, &http_req_call_req(&r)).await;
    assert_eq!(ty, 2);
    assert_eq!(
        gw.asked,
        vec![
            (INFO_VAR, "route_id".to_owned()),
            (INFO_VAR, "missing".to_owned()),
            (INFO_VAR, "empty".to_owned()),
            (INFO_REQ_BODY, String::new()),
        ]
    );
    let resp = root::<ReqCallRespV>(&reply);
    assert_eq!(resp.u8(1), ACTION_STOP);
    let stop = resp.table(2).unwrap();
    assert_eq!(stop.u16(0), 200);
    let echoed: serde_json::Value = serde_json::from_slice(stop.bytes(2).unwrap()).unwrap();
    assert_eq!(
        echoed,
        serde_json::json!({
            "method": "GET",
            "path": "/a b",
            "args": [["k", "1"], ["k", "2"], ["flag", null], ["e", ""]],
            "headers": [["accept", "a"], ["accept", "b"]],
            "src_ip": "2001:db8::1",
            "vars": {"route_id": "r1", "missing": null, "empty": ""},
            "body": "hello",
        })
    );

    // An absent request body is null, not "".
    gw.req_body = None;
    let (_, reply) = gw
        .exchange(2, &http_req_call_req(&req(13, token, "/")))
        .await;
    let stop = root::<ReqCallRespV>(&reply).table(2).unwrap();
    let echoed: serde_json::Value = serde_json::from_slice(stop.bytes(2).unwrap()).unwrap();
    assert_eq!(echoed["body"], serde_json::Value::Null);
    assert_eq!(echoed["src_ip"], "127.0.0.1");
    runner.stop().await;
}

#[tokio::test]
async fn response_phase_with_resp_body() {
    let runner = start().await;
    let mut gw = Client::connect(&runner).await;
    gw.resp_body = Some(b"upstream says hi");
    let token = gw
        .prepare(
            "route#1#ext-plugin-post-resp#1",
            &[("debug-echo", Some("{}")), ("test-rewrite-all", Some("{}"))],
        )
        .await;
    let upstream = [("Content-Type", Some("text/plain")), ("X-Up", Some("1"))];
    let (ty, reply) = gw
        .exchange(4, &http_resp_call_req(77, token, 502, &upstream))
        .await;
    assert_eq!(ty, 4);
    assert_eq!(gw.asked, vec![(INFO_RESP_BODY, String::new())]);
    let resp = root::<RespCallRespV>(&reply);
    assert_eq!(resp.u32(0), 77);
    assert_eq!(resp.u16(1), 201);
    assert_eq!(
        resp.entries(2),
        owned(&[
            ("Content-Type", Some("text/plain")),
            ("X-Up", Some("1")),
            ("x-echo-upstream-status", Some("502")),
            ("x-len", Some("16")),
        ])
    );
    assert_eq!(resp.bytes(3), Some(&b"UPSTREAM SAYS HI"[..]));

    // A chain that changes nothing answers status 0, no headers and no body.
    let token = gw.prepare("route#2#ext-plugin-post-resp#1", &[]).await;
    let (ty, reply) = gw
        .exchange(4, &http_resp_call_req(78, token, 200, &upstream))
        .await;
    assert_eq!(ty, 4);
    let resp = root::<RespCallRespV>(&reply);
    assert_eq!(resp.u32(0), 78);
    assert_eq!(resp.u16(1), 0);
    assert!(resp.entries(2).is_empty());
    assert_eq!(resp.bytes(3), None);
    runner.stop().await;
}

#[tokio::test]
async fn error_frames_leave_the_connection_usable() {
    let runner = start().await;
    let mut gw = Client::connect(&runner).await;
    let token = gw
        .prepare("route#1#ext-plugin-pre-req#1", &[("test-stop-zero", None)])
        .await;
    let other = token.wrapping_add(1);

    let unknown = http_req_call_req(&req(1, other, "/"));
    assert_eq!(gw.error(2, &unknown).await, CONF_TOKEN_NOT_FOUND);
    let unknown = http_resp_call_req(2, other, 200, &[]);
    assert_eq!(gw.error(4, &unknown).await, CONF_TOKEN_NOT_FOUND);
    assert_eq!(
        gw.error(2, b"certainly not a flatbuffer").await,
        BAD_REQUEST
    );
    assert_eq!(gw.error(1, &[0xff; 12]).await, BAD_REQUEST);
    // A frame type the gateway never sends, with a valid payload.
    let valid = http_req_call_req(&req(3, token, "/"));
    assert_eq!(gw.error(9, &valid).await, BAD_REQUEST);
    // A method outside the enum.
    let bad_method = http_req_call_req(&Req {
        method: 15,
        ..req(4, token, "/")
    });
    assert_eq!(gw.error(2, &bad_method).await, BAD_REQUEST);

    let (ty, reply) = gw
        .exchange(2, &http_req_call_req(&req(5, token, "/")))
        .await;
    assert_eq!(ty, 2);
    assert_eq!(root::<ReqCallRespV>(&reply).u32(0), 5);
    runner.stop().await;
}

#[tokio::test]
async fn a_garbage_first_frame_does_not_pin_the_connection() {
    let runner = start().await;
    let mut gw = Client::connect(&runner).await;
    let (ty, _) = gw.exchange(2, b"garbage").await;
    assert_eq!(ty, 0);
    gw.prepare(
        "route#1#ext-plugin-pre-req#1",
        &[("debug-echo", Some("{}"))],
    )
    .await;
    runner.stop().await;
}

#[tokio::test]
async fn a_runner_fixed_to_flatbuffers_serves_it() {
    let config = Config {
        protocol: ProtocolSetting::Fixed(Protocol::FlatBuffers),
        ..Config::default()
    };
    let runner = TestRunner::start_with(config, registry()).await;
    let mut gw = Client::connect(&runner).await;
    let token = gw
        .prepare("route#1#ext-plugin-pre-req#1", &[("test-stop-zero", None)])
        .await;
    let (ty, _) = gw
        .exchange(2, &http_req_call_req(&req(1, token, "/")))
        .await;
    assert_eq!(ty, 2);
    runner.stop().await;
}

/// One runner, no protocol setting: a Cap'n Proto gateway and a FlatBuffers gateway on two
/// connections open at the same time, their calls run concurrently.
#[tokio::test]
async fn one_auto_runner_serves_both_protocols_at_once() {
    let runner = TestRunner::start(registry()).await;
    assert_eq!(runner.runner().config().protocol, ProtocolSetting::Auto);
    let mut capnp = runner.connect_with(Protocol::Capnp).await;
    let mut fb = Client::connect(&runner).await;

    let key = "route#1#ext-plugin-pre-req#1";
    let fb_token = fb.prepare(key, &[("test-stop-zero", None)]).await;
    let capnp_token = capnp.prepare(key, &[("test-stop-zero", "")]).await.unwrap();
    assert_eq!(capnp_token, fb_token, "both protocols share one conf cache");

    for round in 0..20u32 {
        let capnp_call = async {
            let reply = capnp
                .call(capnp_token, &request(Method::Get, "/"))
                .await
                .unwrap();
            assert!(matches!(reply.action, ReqAction::Stop(ref s) if s.headers.len() == 2));
        };
        let fb_call = async {
            let r = req(round, fb_token, "/");
            let (ty, reply) = fb.exchange(2, &http_req_call_req(&r)).await;
            assert_eq!(ty, 2);
            assert_eq!(root::<ReqCallRespV>(&reply).u32(0), round);
        };
        tokio::join!(capnp_call, fb_call);
    }
    let err = capnp
        .call(capnp_token.wrapping_add(1), &request(Method::Get, "/"))
        .await;
    assert!(matches!(
        err,
        Err(GatewayError::Runner(ModelErrorCode::ConfTokenNotFound))
    ));
    runner.stop().await;
}
