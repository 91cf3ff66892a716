//! The acceptance scenarios 4, 5 and 7 of docs/protocol.md, for every codec: what a call
//! carries out (stops, rewrites) and in (every input, exactly as sent). The other scenarios:
//! `protocol.rs`.

#[macro_use]
mod common;

use bytes::Bytes;
use common::{echoed, start, stop};
use ext_plugin_runner::codec::Protocol;
use ext_plugin_runner::model::{Method, Pair, ReqAction, Rewrite};
use ext_plugin_runner::testing::request;
use serde_json::Value;

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
    let s = stop(resp);
    assert_eq!(s.status, 0, "0 travels as 0; the gateway answers 200");
    assert_eq!(
        s.headers,
        vec![
            Pair::new("set-cookie", "a=1"),
            Pair::new("set-cookie", "b=2"),
            Pair::absent("x-gone")
        ]
    );
    assert!(s.body.is_empty());

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
    let s = stop(resp);
    assert_eq!(s.status, 429);
    assert_eq!(
        s.headers,
        vec![
            Pair::new("x-ratelimit-remaining", "9"),
            Pair::new("x-overridden", "stop")
        ]
    );
    assert_eq!(&s.body[..], b"no");
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
    let e = echoed(gw.call(token, &req).await.unwrap());
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
    let e = echoed(gw.call(token, &req).await.unwrap());
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
        gw.call(token, &request(Method::Get, "/").with_src_ip("10.1.2.3"))
            .await
            .unwrap(),
    );
    assert_eq!(e["src_ip"], "10.1.2.3");
    for m in Method::ALL {
        let e = echoed(gw.call(token, &request(m, "/")).await.unwrap());
        assert_eq!(e["method"], m.as_str());
    }
}
for_each_protocol!(scenario_7_input_fidelity, input_fidelity);
