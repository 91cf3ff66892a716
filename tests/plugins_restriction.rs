//! The restriction and edge plugins (docs/plugins/security.md: ua-restriction,
//! referer-restriction, uri-blocker, cors) driven through the fake gateway: exact statuses,
//! headers and bodies on accept and reject.

mod common;

use common::{act, assert_rejected, body, rewrite, stop, tuples};
use ext_plugin_runner::model::{Method, ReqAction};
use ext_plugin_runner::testing::{request, FakeGateway, TestRunner};

/// A runner with the built-in plugins, a gateway connection and the token of `chain`.
async fn setup(chain: &[(&str, &str)]) -> (TestRunner, FakeGateway, u32) {
    common::setup(ext_plugin_catalogue::builtin(), chain).await
}

// ---- ua-restriction, referer-restriction ----

fn assert_message(action: ReqAction, status: u16, field: &str, msg: &str) {
    let s = stop(action);
    assert_eq!(s.status, status);
    assert_eq!(body(&s), format!("{{\"{field}\":\"{msg}\"}}\n"));
}

#[tokio::test]
async fn ua_restriction_allow_and_deny_lists() {
    let deny = r#"{"denylist": ["(?i)curl", "^bot/\\d+"], "message": "Go away"}"#;
    let allow = r#"{"whitelist": ["Firefox"], "bypass_missing": true}"#;
    let (_r, mut gw, t) = setup(&[("ua-restriction", deny)]).await;
    let (_r2, mut gw2, t2) = setup(&[("ua-restriction", allow)]).await;
    let ua = |v: &str| request(Method::Get, "/").with_header("user-agent", v);

    for blocked in ["CURL/8.0", "bot/42 x"] {
        assert_message(
            act(&mut gw, t, &ua(blocked)).await,
            403,
            "message",
            "Go away",
        );
    }
    assert_eq!(
        act(&mut gw, t, &ua("Mozilla/5.0 bot/4")).await,
        ReqAction::Continue
    );
    // Missing UA without bypass_missing: rejected.
    let a = act(&mut gw, t, &request(Method::Get, "/")).await;
    assert_message(a, 403, "message", "Go away");
    // Any of several values on a denylist rejects.
    let two = ua("Mozilla").with_header("user-agent", "curl");
    assert_eq!(stop(act(&mut gw, t, &two).await).status, 403);

    assert_eq!(
        act(&mut gw2, t2, &ua("Firefox/1")).await,
        ReqAction::Continue
    );
    assert_eq!(
        act(&mut gw2, t2, &request(Method::Get, "/")).await,
        ReqAction::Continue
    );
    let a = act(&mut gw2, t2, &ua("Chrome")).await;
    assert_message(a, 403, "message", "Not allowed");
}

#[tokio::test]
async fn referer_restriction_matches_hosts_and_wildcards() {
    let conf = r#"{"whitelist": ["example.com", "*.trusted.org"]}"#;
    let (_r, mut gw, t) = setup(&[("referer-restriction", conf)]).await;
    let refer = |v: &str| request(Method::Get, "/").with_header("referer", v);
    for ok in [
        "https://example.com/x",
        "http://a.b.Trusted.org:8080/?q",
        "https://u@EXAMPLE.com",
    ] {
        assert_eq!(
            act(&mut gw, t, &refer(ok)).await,
            ReqAction::Continue,
            "{ok}"
        );
    }
    let msg = "Your referer host is not allowed";
    for bad in [
        "https://trusted.org/",
        "https://example.com.evil.io/",
        "https://evil.io/?example.com",
        "garbage",
    ] {
        assert_message(act(&mut gw, t, &refer(bad)).await, 403, "message", msg);
    }
    let a = act(&mut gw, t, &request(Method::Get, "/")).await;
    assert_message(a, 403, "message", msg);

    let deny = r#"{"blacklist": ["evil.io"], "bypass_missing": true}"#;
    let (_r2, mut gw2, t2) = setup(&[("referer-restriction", deny)]).await;
    assert_eq!(
        act(&mut gw2, t2, &refer("https://ok.io")).await,
        ReqAction::Continue
    );
    assert_eq!(
        act(&mut gw2, t2, &request(Method::Get, "/")).await,
        ReqAction::Continue
    );
    assert_eq!(
        stop(act(&mut gw2, t2, &refer("http://EVIL.io/")).await).status,
        403
    );
}

#[tokio::test]
async fn restriction_bad_confs_fail_prepare() {
    assert_rejected(
        "ua-restriction",
        r#"{"allowlist": ["a"], "denylist": ["b"]}"#,
    )
    .await;
    assert_rejected("ua-restriction", r#"{"denylist": ["(?<=x)y"]}"#).await;
    assert_rejected("ua-restriction", r#"{"denylist": ["(a)\\1"]}"#).await;
    assert_rejected("ua-restriction", r#"{"denylist": []}"#).await;
    assert_rejected("referer-restriction", r#"{"whitelist": ["x.*"]}"#).await;
    assert_rejected("referer-restriction", r#"{}"#).await;
}

// ---- uri-blocker ----

#[tokio::test]
async fn uri_blocker_matches_path_and_query() {
    let conf = r#"{"block_rules": ["\\.\\./", "^/admin", "debug=1"], "rejected_code": 404,
        "rejected_msg": "blocked", "rejected_headers": [{"key": "X-Blocked", "value": "yes"}]}"#;
    let (_r, mut gw, t) = setup(&[("uri-blocker", conf)]).await;
    for blocked in [
        request(Method::Get, "/a/../b"),
        request(Method::Get, "/admin/x"),
        request(Method::Get, "/x").with_arg("debug", "1"),
    ] {
        let s = stop(act(&mut gw, t, &blocked).await);
        assert_eq!(s.status, 404);
        assert_eq!(tuples(&s.headers), [("x-blocked", Some("yes"))]);
        assert_eq!(body(&s), "{\"error_msg\":\"blocked\"}\n");
    }
    for ok in [
        request(Method::Get, "/ADMIN"),
        request(Method::Get, "/x/admin").with_arg("debug", "0"),
    ] {
        assert_eq!(act(&mut gw, t, &ok).await, ReqAction::Continue);
    }

    let ci = r#"{"block_rules": ["^/admin"], "case_insensitive": true}"#;
    let (_r2, mut gw2, t2) = setup(&[("uri-blocker", ci)]).await;
    let s = stop(act(&mut gw2, t2, &request(Method::Get, "/ADMIN")).await);
    assert_eq!((s.status, s.body.len()), (403, 0));
}

#[tokio::test]
async fn uri_blocker_bad_confs_fail_prepare() {
    assert_rejected("uri-blocker", r#"{"block_rules": []}"#).await;
    assert_rejected("uri-blocker", r#"{"block_rules": ["("]}"#).await;
    assert_rejected(
        "uri-blocker",
        r#"{"block_rules": ["x"], "rejected_code": 99}"#,
    )
    .await;
    assert_rejected(
        "uri-blocker",
        r#"{"block_rules": ["x"], "rejected_msg": ""}"#,
    )
    .await;
}

// ---- cors ----

#[tokio::test]
async fn cors_preflight_stops_with_headers() {
    let conf = r#"{"allow_origins": "https://a.com,https://b.com", "allow_methods": "GET,POST",
        "allow_headers": "**", "expose_headers": "X-Total", "max_age": 600, "allow_credential": true}"#;
    let (_r, mut gw, t) = setup(&[("cors", conf)]).await;
    let pre = request(Method::Options, "/api")
        .with_header("origin", "https://b.com")
        .with_header("access-control-request-headers", "x-token");
    let s = stop(act(&mut gw, t, &pre).await);
    assert_eq!((s.status, s.body.len()), (200, 0));
    assert_eq!(
        tuples(&s.headers),
        [
            ("vary", Some("Origin")),
            ("access-control-allow-origin", Some("https://b.com")),
            ("access-control-allow-methods", Some("GET,POST")),
            ("access-control-allow-headers", Some("x-token")),
            ("access-control-max-age", Some("600")),
            ("access-control-expose-headers", Some("X-Total")),
            ("access-control-allow-credentials", Some("true")),
        ]
    );
    // An origin not listed: still answered 200, without CORS headers.
    let pre = request(Method::Options, "/api").with_header("origin", "https://evil.com");
    let s = stop(act(&mut gw, t, &pre).await);
    assert_eq!(
        (s.status, tuples(&s.headers)),
        (200, vec![("vary", Some("Origin"))])
    );
}

#[tokio::test]
async fn cors_simple_requests_get_response_headers() {
    let (_r, mut gw, t) = setup(&[("cors", "{}")]).await;
    let req = request(Method::Get, "/").with_header("origin", "https://x.io");
    let r = rewrite(act(&mut gw, t, &req).await);
    assert_eq!(
        tuples(&r.resp_headers),
        [
            ("access-control-allow-origin", Some("*")),
            ("access-control-allow-methods", Some("*")),
            ("access-control-allow-headers", Some("*")),
            ("access-control-max-age", Some("5")),
        ]
    );
    assert!(r.headers.is_empty() && r.path.is_none());

    let conf = r#"{"allow_origins_by_regex": ["^https://.*\\.example\\.com$"],
        "timing_allow_origins": "https://perf.io"}"#;
    let (_r2, mut gw2, t2) = setup(&[("cors", conf)]).await;
    let req = request(Method::Post, "/").with_header("origin", "https://app.example.com");
    let r = rewrite(act(&mut gw2, t2, &req).await);
    assert_eq!(
        tuples(&r.resp_headers)[1],
        (
            "access-control-allow-origin",
            Some("https://app.example.com")
        )
    );
    assert!(!tuples(&r.resp_headers)
        .iter()
        .any(|(n, _)| *n == "timing-allow-origin"));
    let req = request(Method::Post, "/").with_header("origin", "https://perf.io");
    let r = rewrite(act(&mut gw2, t2, &req).await);
    assert_eq!(
        tuples(&r.resp_headers),
        [
            ("vary", Some("Origin")),
            ("timing-allow-origin", Some("https://perf.io"))
        ]
    );
}

#[tokio::test]
async fn cors_bad_confs_fail_prepare() {
    assert_rejected("cors", r#"{"allow_credential": true}"#).await;
    assert_rejected(
        "cors",
        r#"{"allow_credential": true, "allow_origins": "**", "allow_methods": "GET"}"#,
    )
    .await;
    assert_rejected("cors", r#"{"allow_origins_by_metadata": ["x"]}"#).await;
    assert_rejected("cors", r#"{"allow_origins_by_regex": ["("]}"#).await;
    assert_rejected("cors", r#"{"max_age": -2}"#).await;
}
