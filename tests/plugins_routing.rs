//! The routing plugins (docs/plugins/security.md: proxy-rewrite, request-validation,
//! traffic-tag) driven through the fake gateway: the exact rewrites, and stops on reject.

mod common;

use common::{act, assert_rejected, body, rewrite, stop, tuples};
use ext_plugin_runner::model::{Method, ReqAction, Rewrite};
use ext_plugin_runner::testing::{request, FakeGateway, TestRunner};

/// A runner with the built-in plugins, a gateway connection and the token of `chain`.
async fn setup(chain: &[(&str, &str)]) -> (TestRunner, FakeGateway, u32) {
    common::setup(ext_plugin_catalogue::builtin(), chain).await
}

// ---- proxy-rewrite ----

#[tokio::test]
async fn proxy_rewrite_uri_host_headers_and_args() {
    let conf = r#"{"uri": "/v2/$arg_id/${http_x_user}", "host": "backend.internal",
        "headers": {"add": {"X-From": "gw", "Accept": "text/html", "Set-Cookie": "b=2"},
                    "set": {"X-Route": "$uri", "X-Remote": "$remote_addr"},
                    "remove": ["X-Debug"]},
        "args": {"add": {"tag": "new"}, "set": {"v": "2"}, "remove": ["debug"]}}"#;
    let (_r, mut gw, t) = setup(&[("proxy-rewrite", conf)]).await;
    let req = request(Method::Get, "/old")
        .with_arg("id", "42")
        .with_arg("tag", "old")
        .with_flag("debug")
        .with_header("x-user", "ann")
        .with_header("accept", "application/json")
        .with_header("set-cookie", "a=1")
        .with_header("x-debug", "1")
        .with_src_ip("10.1.2.3");
    let r = rewrite(act(&mut gw, t, &req).await);
    assert_eq!(r.path.as_deref(), Some("/v2/42/ann"));
    assert_eq!(
        tuples(&r.headers),
        [
            ("host", Some("backend.internal")),
            ("accept", Some("application/json, text/html")),
            ("x-from", Some("gw")),
            ("x-remote", Some("10.1.2.3")),
            ("x-route", Some("/old")),
            ("x-debug", None),
        ]
    );
    assert_eq!(
        tuples(&r.args),
        [
            ("tag", Some("old")),
            ("tag", Some("new")),
            ("v", Some("2")),
            ("debug", None)
        ]
    );
}

#[tokio::test]
async fn proxy_rewrite_regex_uri_uses_the_first_matching_pair() {
    let conf = r#"{"regex_uri": ["^/nomatch", "/x", "^/api/(\\w+)/(.*)", "/svc/$1-${2}",
            "^/api", "/never"],
        "headers": {"set": {"X-Cap": "$1"}}}"#;
    let (_r, mut gw, t) = setup(&[("proxy-rewrite", conf)]).await;
    let r = rewrite(act(&mut gw, t, &request(Method::Get, "/api/users/7/x")).await);
    assert_eq!(r.path.as_deref(), Some("/svc/users-7/x"));
    assert_eq!(tuples(&r.headers), [("x-cap", Some("users"))]);
    // No regex matches: the path stays, captures render empty, and an empty value removes the
    // header (as APISIX's set does).
    let r = rewrite(act(&mut gw, t, &request(Method::Get, "/other")).await);
    assert_eq!((r.path, tuples(&r.headers)), (None, vec![("x-cap", None)]));
}

#[tokio::test]
async fn proxy_rewrite_bad_confs_fail_prepare() {
    for conf in [
        r#"{"method": "POST"}"#,
        r#"{"scheme": "https"}"#,
        r#"{"regex_uri": ["^/a"]}"#,
        r#"{"regex_uri": ["(?=a)", "/b"]}"#,
        r#"{"use_real_request_uri_unsafe": true}"#,
        r#"{"regex_uri": ["^/a", "/$a"]}"#,
        r#"{"uri": "relative"}"#,
        r#"{"uri": "$uri"}"#,
        r#"{"headers": {"set": {"bad name": "v"}}}"#,
        r#"{"headers": {"X-Legacy": true}}"#,
        r#"{"host": "a b"}"#,
        r#"{}"#,
    ] {
        assert_rejected("proxy-rewrite", conf).await;
    }
}

// ---- request-validation ----

const BODY_SCHEMA: &str = r#"{"body_schema": {"type": "object", "required": ["name"],
    "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}}}}"#;

#[tokio::test]
async fn request_validation_checks_json_bodies_and_forwards_them_canonical() {
    let (_r, mut gw, t) = setup(&[("request-validation", BODY_SCHEMA)]).await;
    gw.req_body = Some(r#"{ "name" : "ann",  "age": 3 }"#.into());
    let r = rewrite(act(&mut gw, t, &request(Method::Post, "/")).await);
    assert_eq!(r.body.as_deref(), Some(&br#"{"age":3,"name":"ann"}"#[..]));

    let cases = [
        (
            r#"{"name": "ann", "age": -1}"#,
            r#"property "/age" validation failed: keyword "minimum""#,
        ),
        (r#"{"age": 1}"#, r#"validation failed: keyword "required""#),
    ];
    for (sent, msg) in cases {
        gw.req_body = Some(sent.into());
        let s = stop(act(&mut gw, t, &request(Method::Post, "/")).await);
        assert_eq!((s.status, body(&s)), (400, msg));
    }
    gw.req_body = Some("{oops".into());
    let s = stop(act(&mut gw, t, &request(Method::Post, "/")).await);
    assert!(body(&s).starts_with("invalid JSON body"), "{}", body(&s));
    gw.req_body = None;
    let s = stop(act(&mut gw, t, &request(Method::Post, "/")).await);
    assert_eq!((s.status, body(&s)), (400, "request body is missing"));
    let two = request(Method::Post, "/")
        .with_header("content-type", "application/json")
        .with_header("content-type", "application/x-www-form-urlencoded");
    let s = stop(act(&mut gw, t, &two).await);
    assert_eq!(body(&s), "duplicate Content-Type header");
}

#[tokio::test]
async fn request_validation_decodes_forms_and_headers() {
    let conf = r#"{"header_schema": {"type": "object", "required": ["x-tenant"]},
        "body_schema": {"type": "object", "properties": {"n": {"pattern": "^[0-9]+$"}}},
        "rejected_code": 422, "rejected_msg": "nope",
        "rejected_headers": [{"key": "X-Why", "value": "schema"}]}"#;
    let (_r, mut gw, t) = setup(&[("request-validation", conf)]).await;
    let form = |n: &str| {
        request(Method::Post, "/")
            .with_header("x-tenant", "a")
            .with_header("content-type", "application/x-www-form-urlencoded")
            .with_arg("ignored", n)
    };
    gw.req_body = Some("n=123&m=x".into());
    assert_eq!(act(&mut gw, t, &form("")).await, ReqAction::Continue);
    gw.req_body = Some("n=12a".into());
    let s = stop(act(&mut gw, t, &form("")).await);
    assert_eq!(
        (s.status, tuples(&s.headers), body(&s)),
        (422, vec![("x-why", Some("schema"))], "nope")
    );
    // Headers fail before the body is fetched.
    gw.asked.clear();
    let s = stop(act(&mut gw, t, &request(Method::Post, "/")).await);
    assert_eq!(s.status, 422);
    assert!(gw.asked.is_empty());
}

#[tokio::test]
async fn request_validation_header_only_never_fetches_the_body() {
    let conf = r#"{"header_schema": {"properties": {"x-n": {"enum": ["1", "2"]}}}}"#;
    let (_r, mut gw, t) = setup(&[("request-validation", conf)]).await;
    let ok = request(Method::Post, "/").with_header("x-n", "2");
    assert_eq!(act(&mut gw, t, &ok).await, ReqAction::Continue);
    let bad = request(Method::Post, "/").with_header("x-n", "3");
    let s = stop(act(&mut gw, t, &bad).await);
    assert!(
        body(&s).starts_with("property \"/x-n\" validation failed"),
        "{}",
        body(&s)
    );
    assert!(gw.asked.is_empty());
}

#[tokio::test]
async fn request_validation_bad_confs_fail_prepare() {
    assert_rejected("request-validation", "{}").await;
    assert_rejected("request-validation", r#"{"body_schema": {"type": 5}}"#).await;
    assert_rejected(
        "request-validation",
        r#"{"body_schema": {}, "rejected_code": 600}"#,
    )
    .await;
}

// ---- traffic-tag ----

const TRAFFIC: &str = r#"{"rules": [
    {"match": [{"vars": [["http_x_user_id", "==", "12345"], ["uri", "~~", "^/index"]]}],
     "weighted_tags": [{"tag": "gray", "weight": 1}]},
    {"http_match": [{"headers": {"tag": {"exact": "v2"}}, "queryParams": {"beta": {"prefix": "1"}},
                     "uri": {"prefix": "/api"}}],
     "weighted_tags": [{"tag": "v2", "weight": 20}, {"tag": "v1", "weight": 80}],
     "hash_on": "http_x_user_id"},
    {"http_match": [{"uri": {"regex": "/split/.*"}}],
     "weighted_tags": [{"tag": "v2", "weight": 20}, {"tag": "v1", "weight": 80}]}],
  "set_host": {"v2": "svc-v2.internal"}, "path_prefix": {"v2": "/v2"}}"#;

fn tag_of(r: &Rewrite) -> Option<&str> {
    r.headers
        .iter()
        .find(|h| h.name == "x-opensergo-traffic")
        .and_then(|h| h.value.as_deref())
}

#[tokio::test]
async fn traffic_tag_vars_match_and_http_match() {
    let (_r, mut gw, t) = setup(&[("traffic-tag", TRAFFIC)]).await;
    let req = request(Method::Get, "/index.html")
        .with_header("x-user-id", "12345")
        .with_header("x-opensergo-traffic", "spoofed");
    let r = rewrite(act(&mut gw, t, &req).await);
    assert_eq!(
        (tuples(&r.headers), r.path),
        (vec![("x-opensergo-traffic", Some("gray"))], None)
    );

    // No rule matches: a client-sent tag is deleted, nothing else changes.
    let req = request(Method::Get, "/other").with_header("x-opensergo-traffic", "gray");
    let r = rewrite(act(&mut gw, t, &req).await);
    assert_eq!(tuples(&r.headers), [("x-opensergo-traffic", None)]);
    assert_eq!(
        act(&mut gw, t, &request(Method::Get, "/other")).await,
        ReqAction::Continue
    );
    // http_match needs every part: a wrong query prefix falls through.
    let req = request(Method::Get, "/api/x")
        .with_header("tag", "v2")
        .with_arg("beta", "0");
    assert_eq!(act(&mut gw, t, &req).await, ReqAction::Continue);
}

#[tokio::test]
async fn traffic_tag_weighted_split_is_exact_over_a_period() {
    let (_r, mut gw, t) = setup(&[("traffic-tag", TRAFFIC)]).await;
    let (mut v1, mut v2) = (0, 0);
    for _ in 0..1000 {
        let r = rewrite(act(&mut gw, t, &request(Method::Get, "/split/a")).await);
        match tag_of(&r) {
            Some("v1") => {
                assert_eq!(r.path, None);
                v1 += 1;
            }
            Some("v2") => {
                assert_eq!(r.path.as_deref(), Some("/v2/split/a"));
                assert_eq!(tuples(&r.headers)[0], ("host", Some("svc-v2.internal")));
                v2 += 1;
            }
            other => panic!("unexpected tag {other:?}"),
        }
    }
    // Smooth round-robin is exact over whole periods (5 requests for 20:80).
    assert_eq!((v1, v2), (800, 200));
}

#[tokio::test]
async fn traffic_tag_hash_on_is_sticky_and_proportional() {
    let (_r, mut gw, t) = setup(&[("traffic-tag", TRAFFIC)]).await;
    let req = |user: &str| {
        request(Method::Get, "/api/x")
            .with_header("tag", "v2")
            .with_arg("beta", "1")
            .with_header("x-user-id", user)
    };
    let mut v2 = 0;
    let users = 2000;
    for u in 0..users {
        let user = format!("user-{u}");
        let first = rewrite(act(&mut gw, t, &req(&user)).await);
        let again = rewrite(act(&mut gw, t, &req(&user)).await);
        assert_eq!(
            tag_of(&first),
            tag_of(&again),
            "{user} must stick to one tag"
        );
        if tag_of(&first) == Some("v2") {
            v2 += 1;
        }
    }
    // Expected 400 (20 %); binomial sd ≈ 17.9, so ±5 sd ≈ ±90.
    assert!((310..=490).contains(&v2), "v2 got {v2} of {users}");
}

#[tokio::test]
async fn traffic_tag_keep_incoming_honours_the_lane() {
    let conf = r#"{"keep_incoming": true, "tag_header": "X-Lane",
        "rules": [{"weighted_tags": [{"tag": "v1", "weight": 1}, {"tag": "v2", "weight": 0}]}],
        "path_prefix": {"v2": "/v2/"}}"#;
    let (_r, mut gw, t) = setup(&[("traffic-tag", conf)]).await;
    let req = request(Method::Get, "/p").with_header("x-lane", "v2");
    let r = rewrite(act(&mut gw, t, &req).await);
    assert_eq!(
        (tuples(&r.headers), r.path.as_deref()),
        (vec![("x-lane", Some("v2"))], Some("/v2/p"))
    );
    let r = rewrite(act(&mut gw, t, &request(Method::Get, "/p")).await);
    assert_eq!(tuples(&r.headers), [("x-lane", Some("v1"))]);
}

#[tokio::test]
async fn traffic_tag_bad_confs_fail_prepare() {
    for conf in [
        r#"{"rules": []}"#,
        r#"{"rules": [{"weighted_tags": []}]}"#,
        r#"{"rules": [{"weighted_tags": [{"tag": "a", "weight": 0}]}]}"#,
        r#"{"rules": [{"weighted_tags": [{"tag": "a", "weight": 1}]}], "set_host": {"b": "h"}}"#,
        r#"{"rules": [{"match": [{"vars": [["uri", "~~", "("]]}], "weighted_tags": [{"tag": "a", "weight": 1}]}]}"#,
        r#"{"rules": [{"http_match": [{"uri": {"exact": "/", "prefix": "/"}}], "weighted_tags": [{"tag": "a", "weight": 1}]}]}"#,
        r#"{"rules": [{"match": [], "http_match": [], "weighted_tags": [{"tag": "a", "weight": 1}]}]}"#,
    ] {
        assert_rejected("traffic-tag", conf).await;
    }
}
