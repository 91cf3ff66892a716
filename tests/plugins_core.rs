//! The first built-in plugins, through the fake gateway over a real socket: echo,
//! ip-restriction, request-id.

mod common;

use bytes::Bytes;
use common::{assert_refused, rewrite, stop};
use ext_plugin_runner::model::{ExtraInfoReq, Method, Pair, ReqAction};
use ext_plugin_runner::testing::{request, FakeGateway, TestRunner};
use serde_json::{json, Value};

async fn gateway() -> (TestRunner, FakeGateway) {
    let runner = TestRunner::start(ext_plugin_catalogue::builtin()).await;
    let gw = runner.connect().await;
    (runner, gw)
}

/// A runner, a gateway connection and the token of a one-plugin chain.
async fn prepared(key: &str, plugin: &str, conf: &str) -> (TestRunner, FakeGateway, u32) {
    let (runner, mut gw) = gateway().await;
    let token = gw.prepare(key, &[(plugin, conf)]).await.unwrap();
    (runner, gw, token)
}

// ---------------------------------------------------------------------------------------------
// echo

#[tokio::test]
async fn echo_shows_the_request_and_honours_its_status() {
    let (_r, mut gw) = gateway().await;
    let token = gw
        .prepare(
            "route#e#ext-plugin-pre-req#1",
            &[("debug-echo", r#"{"status": 299}"#)],
        )
        .await
        .unwrap();
    let req = request(Method::Put, "/a")
        .with_src_ip("::1")
        .with_arg("q", "1")
        .with_header("h", "v");
    let s = stop(gw.call(token, &req).await.unwrap().action);
    assert_eq!(s.status, 299);
    assert_eq!(
        s.headers,
        vec![Pair::new("content-type", "application/json")]
    );
    let body: Value = serde_json::from_slice(&s.body).unwrap();
    assert_eq!(
        body,
        json!({"method": "PUT", "path": "/a", "args": [["q", "1"]], "headers": [["h", "v"]],
               "src_ip": "::1", "vars": {}, "body": null})
    );
    assert!(gw.asked.is_empty(), "nothing fetched unless configured");
}

#[tokio::test]
async fn echo_refuses_bad_confs() {
    let (_r, mut gw) = gateway().await;
    for conf in [
        r#"{"status": 42}"#,
        r#"{"vars": [""]}"#,
        r#"{"vars": "route_id"}"#,
        r#"{"request_body": "yes"}"#,
        r#"{"extra": 1}"#,
    ] {
        assert_refused(&mut gw, "debug-echo", conf).await;
    }
}

// ---------------------------------------------------------------------------------------------
// ip-restriction

#[tokio::test]
async fn ip_whitelist_passes_listed_clients_and_rejects_others_exactly() {
    let (_r, mut gw) = gateway().await;
    let conf = r#"{"whitelist": ["10.0.0.0/8", "2001:db8::/32", "127.0.0.1"]}"#;
    let token = gw
        .prepare("route#ip#ext-plugin-pre-req#1", &[("ip-restriction", conf)])
        .await
        .unwrap();
    for ok in ["10.1.2.3", "127.0.0.1", "2001:db8::1", "::ffff:10.9.9.9"] {
        let resp = gw
            .call(token, &request(Method::Get, "/").with_src_ip(ok))
            .await
            .unwrap();
        assert_eq!(resp.action, ReqAction::Continue, "{ok} is listed");
    }
    for bad in ["11.0.0.1", "127.0.0.2", "2001:db9::1", "::ffff:11.0.0.1"] {
        let s = stop(
            gw.call(token, &request(Method::Get, "/").with_src_ip(bad))
                .await
                .unwrap()
                .action,
        );
        assert_eq!(s.status, 403, "{bad}");
        assert!(s.headers.is_empty());
        assert_eq!(
            &s.body[..],
            b"{\"message\":\"Your IP address is not allowed\"}\n"
        );
    }
}

#[tokio::test]
async fn ip_blacklist_with_alias_custom_message_and_404() {
    let (_r, mut gw) = gateway().await;
    let conf = r#"{"denylist": ["192.168.0.0/16"], "message": "go away", "response_code": 404}"#;
    let token = gw
        .prepare(
            "route#ip2#ext-plugin-pre-req#1",
            &[("ip-restriction", conf)],
        )
        .await
        .unwrap();
    let s = stop(
        gw.call(token, &request(Method::Get, "/").with_src_ip("192.168.1.1"))
            .await
            .unwrap()
            .action,
    );
    assert_eq!(s.status, 404);
    assert_eq!(&s.body[..], b"{\"message\":\"go away\"}\n");
    let resp = gw
        .call(token, &request(Method::Get, "/").with_src_ip("8.8.8.8"))
        .await
        .unwrap();
    assert_eq!(resp.action, ReqAction::Continue);
}

#[tokio::test]
async fn ip_restriction_refuses_bad_confs() {
    let (_r, mut gw) = gateway().await;
    for conf in [
        "{}",
        r#"{"whitelist": ["10.0.0.1"], "blacklist": ["10.0.0.2"]}"#,
        r#"{"whitelist": []}"#,
        r#"{"whitelist": ["10.0.0.0/40"]}"#,
        r#"{"whitelist": ["10.0.0.1"], "response_code": 500}"#,
        r#"{"whitelist": ["10.0.0.1"], "message": ""}"#,
    ] {
        assert_refused(&mut gw, "ip-restriction", conf).await;
    }
}

// ---------------------------------------------------------------------------------------------
// request-id

#[tokio::test]
async fn request_id_sets_a_new_id_on_request_and_response() {
    let (_r, mut gw, token) = prepared("route#rid#ext-plugin-pre-req#1", "request-id", "{}").await;
    let rw = rewrite(
        gw.call(token, &request(Method::Get, "/"))
            .await
            .unwrap()
            .action,
    );
    assert_eq!(rw.headers.len(), 1);
    assert_eq!(rw.headers[0].name, "X-Request-Id");
    let id = rw.headers[0].value.clone().unwrap();
    assert_eq!(uuid::Uuid::parse_str(&id).unwrap().get_version_num(), 4);
    assert_eq!(rw.resp_headers, vec![Pair::new("X-Request-Id", id.clone())]);

    let again = rewrite(
        gw.call(token, &request(Method::Get, "/"))
            .await
            .unwrap()
            .action,
    );
    assert_ne!(again.headers[0].value.as_ref().unwrap(), &id, "ids differ");
}

#[tokio::test]
async fn request_id_keeps_an_incoming_id_and_its_algorithms_have_their_shapes() {
    let (_r, mut gw) = gateway().await;
    let token = gw
        .prepare(
            "route#rid2#ext-plugin-pre-req#1",
            &[(
                "request-id",
                r#"{"header_name": "X-Trace", "include_in_response": false}"#,
            )],
        )
        .await
        .unwrap();
    let resp = gw
        .call(
            token,
            &request(Method::Get, "/").with_header("x-trace", "mine"),
        )
        .await
        .unwrap();
    assert_eq!(resp.action, ReqAction::Continue, "nothing to change");

    for (i, (conf, check)) in [
        (
            r#"{"algorithm": "uuidv7"}"#,
            (|id: &str| uuid::Uuid::parse_str(id).unwrap().get_version_num() == 7)
                as fn(&str) -> bool,
        ),
        (r#"{"algorithm": "nanoid"}"#, |id: &str| id.len() == 21),
        (
            r#"{"algorithm": "range_id", "range_id": {"length": 8, "char_set": "abcdef"}}"#,
            |id: &str| id.len() == 8 && id.bytes().all(|b| (b'a'..=b'f').contains(&b)),
        ),
    ]
    .into_iter()
    .enumerate()
    {
        // One key per conf: the runner hands out one token per key.
        let key = format!("route#rid-{i}#ext-plugin-pre-req#1");
        let token = gw.prepare(&key, &[("request-id", conf)]).await.unwrap();
        let rw = rewrite(
            gw.call(token, &request(Method::Get, "/"))
                .await
                .unwrap()
                .action,
        );
        let id = rw.headers[0].value.as_deref().unwrap();
        assert!(check(id), "{conf}: {id}");
    }
}

#[tokio::test]
async fn request_id_response_phase_keeps_the_upstreams_id_else_adds_the_requests() {
    let (_r, mut gw, token) =
        prepared("route#rid#ext-plugin-post-resp#1", "request-id", "{}").await;

    // The upstream set its own id: APISIX's request-id leaves it, and so do we.
    let r = gw
        .resp_call(token, 200, &[("X-Request-Id", "from-upstream"), ("a", "1")])
        .await
        .unwrap();
    assert!(
        r.headers.is_empty(),
        "no header returned = the upstream's headers stay"
    );
    assert!(gw.asked.is_empty());

    // It did not: the request's id is added, with every upstream header kept.
    gw.set_var("http_x_request_id", "req-id");
    let r = gw.resp_call(token, 200, &[("a", "1")]).await.unwrap();
    assert_eq!(
        r.headers,
        vec![Pair::new("a", "1"), Pair::new("X-Request-Id", "req-id")]
    );
    assert_eq!(
        gw.asked,
        vec![ExtraInfoReq::Var("http_x_request_id".into())]
    );
    assert_eq!(r.body, None::<Bytes>);
}

#[tokio::test]
async fn request_id_refuses_bad_confs() {
    let (_r, mut gw) = gateway().await;
    for conf in [
        r#"{"algorithm": "uuidv5"}"#,
        r#"{"header_name": "bad header"}"#,
        r#"{"algorithm": "range_id", "range_id": {"length": 2}}"#,
        r#"{"algorithm": "range_id", "range_id": {"char_set": "abc"}}"#,
    ] {
        assert_refused(&mut gw, "request-id", conf).await;
    }
}

#[tokio::test]
async fn a_later_plugin_sees_the_generated_id() {
    let (_r, mut gw) = gateway().await;
    let token = gw
        .prepare(
            "route#chain#ext-plugin-pre-req#1",
            &[
                ("request-id", "{}"),
                ("debug-echo", r#"{"vars": ["http_x_request_id"]}"#),
            ],
        )
        .await
        .unwrap();
    let s = stop(
        gw.call(token, &request(Method::Get, "/"))
            .await
            .unwrap()
            .action,
    );
    let body: Value = serde_json::from_slice(&s.body).unwrap();
    let id = body["vars"]["http_x_request_id"].as_str().unwrap();
    assert_eq!(uuid::Uuid::parse_str(id).unwrap().get_version_num(), 4);
    assert_eq!(
        s.headers,
        vec![
            Pair::new("X-Request-Id", id.to_owned()),
            Pair::new("content-type", "application/json")
        ],
        "the response header set earlier is carried into the stop"
    );
    assert!(gw.asked.is_empty());
}
