//! The security, routing and edge plugins (docs/plugins/security.md) driven through the
//! fake gateway: exact statuses, headers and bodies on accept and reject.

use ext_plugin_runner::model::{ErrorCode, HttpReqCallReq, Method, Pair, ReqAction, Rewrite, Stop};
use ext_plugin_runner::testing::{request, FakeGateway, GatewayError, TestRunner};

use base64::Engine as _;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

const KEY: &str = "route#1#ext-plugin-pre-req#1";

/// A runner, a gateway connection and the token of `chain`.
async fn setup(chain: &[(&str, &str)]) -> (TestRunner, FakeGateway, u32) {
    let runner = TestRunner::start(ext_plugin_catalogue::builtin()).await;
    let mut gw = runner.connect().await;
    let token = gw.prepare(KEY, chain).await.expect("chain prepares");
    (runner, gw, token)
}

/// Expects `conf` for `plugin` to fail `prepare_conf`.
async fn assert_rejected(plugin: &str, conf: &str) {
    let runner = TestRunner::start(ext_plugin_catalogue::builtin()).await;
    let mut gw = runner.connect().await;
    match gw.prepare(KEY, &[(plugin, conf)]).await {
        Err(GatewayError::Runner(ErrorCode::BadRequest)) => {}
        other => panic!("{plugin} {conf} should fail prepare_conf, got {other:?}"),
    }
}

/// What the runner answers for one request.
async fn act(gw: &mut FakeGateway, token: u32, req: &HttpReqCallReq) -> ReqAction {
    gw.call(token, req).await.expect("the call succeeds").action
}

fn stop(action: ReqAction) -> Stop {
    match action {
        ReqAction::Stop(s) => s,
        other => panic!("expected a stop, got {other:?}"),
    }
}

fn rewrite(action: ReqAction) -> Rewrite {
    match action {
        ReqAction::Rewrite(r) => r,
        other => panic!("expected a rewrite, got {other:?}"),
    }
}

/// `(name, value)` of pairs, for exact comparisons.
fn pairs(p: &[Pair]) -> Vec<(&str, Option<&str>)> {
    p.iter()
        .map(|p| (p.name.as_str(), p.value.as_deref()))
        .collect()
}

fn body(s: &Stop) -> &str {
    std::str::from_utf8(&s.body).unwrap()
}

/// Asserts a 401 challenge with exactly this header and `{"message": msg}\n`.
fn assert_challenge(action: ReqAction, www_authenticate: &str, msg: &str) {
    let s = stop(action);
    assert_eq!(s.status, 401);
    assert_eq!(
        pairs(&s.headers),
        [("www-authenticate", Some(www_authenticate))]
    );
    assert_eq!(body(&s), format!("{{\"message\":\"{msg}\"}}\n"));
}

fn consumer_headers(r: &Rewrite) -> Vec<(&str, Option<&str>)> {
    pairs(&r.headers)
        .into_iter()
        .filter(|(n, _)| n.starts_with("x-consumer") || n.starts_with("x-credential"))
        .collect()
}

// ---- key-auth ----

const KEY_AUTH: &str = r#"{"hide_credentials": true, "consumers": [
    {"username": "jack", "key": "jack-key", "custom_id": "t-1"},
    {"username": "rose", "key": "$ENV://CARGO_PKG_NAME", "credential_id": "cred-7"}]}"#;

#[tokio::test]
async fn key_auth_accepts_header_and_query_keys_and_hides_them() {
    // Cargo sets CARGO_PKG_NAME for test processes: an env secret without set_var races.
    let (_r, mut gw, t) = setup(&[("key-auth", KEY_AUTH)]).await;

    let req = request(Method::Get, "/p").with_header("apikey", "jack-key");
    let r = rewrite(act(&mut gw, t, &req).await);
    assert_eq!(
        pairs(&r.headers),
        [
            ("apikey", None),
            ("x-consumer-username", Some("jack")),
            ("x-credential-identifier", None),
            ("x-consumer-custom-id", Some("t-1")),
        ]
    );

    let req = request(Method::Get, "/p").with_arg("apikey", env!("CARGO_PKG_NAME"));
    let r = rewrite(act(&mut gw, t, &req).await);
    assert_eq!(pairs(&r.args), [("apikey", None)]);
    assert_eq!(
        consumer_headers(&r),
        [
            ("x-consumer-username", Some("rose")),
            ("x-credential-identifier", Some("cred-7")),
            ("x-consumer-custom-id", None),
        ]
    );
}

#[tokio::test]
async fn key_auth_rejects_missing_and_wrong_keys() {
    let conf = r#"{"consumers": [{"username": "jack", "key": "jack-key"}]}"#;
    let (_r, mut gw, t) = setup(&[("key-auth", conf)]).await;
    let www = "apikey realm=\"key\"";
    let a = act(&mut gw, t, &request(Method::Get, "/p")).await;
    assert_challenge(a, www, "Missing API key in request");
    for wrong in ["jack-ke", "jack-key ", "JACK-KEY", ""] {
        let req = request(Method::Get, "/p").with_header("apikey", wrong);
        let a = act(&mut gw, t, &req).await;
        assert_challenge(a, www, "Invalid API key in request");
    }
    // The header wins over a valid query key.
    let req = request(Method::Get, "/p")
        .with_header("apikey", "nope")
        .with_arg("apikey", "jack-key");
    assert_challenge(
        act(&mut gw, t, &req).await,
        www,
        "Invalid API key in request",
    );
    // Without hide_credentials the key stays, and a spoofed consumer header is overwritten.
    let req = request(Method::Get, "/p")
        .with_header("apikey", "jack-key")
        .with_header("x-consumer-username", "admin");
    let r = rewrite(act(&mut gw, t, &req).await);
    assert_eq!(pairs(&r.headers)[0], ("x-consumer-username", Some("jack")));
    assert!(!pairs(&r.headers).iter().any(|(n, _)| *n == "apikey"));
}

#[tokio::test]
async fn key_auth_anonymous_consumer_passes_without_credentials() {
    let conf =
        r#"{"anonymous_consumer": "guest", "consumers": [{"username": "jack", "key": "k"}]}"#;
    let echo = r#"{"vars": ["consumer_name"]}"#;
    let (_r, mut gw, t) = setup(&[("key-auth", conf), ("debug-echo", echo)]).await;
    let s = stop(act(&mut gw, t, &request(Method::Get, "/p")).await);
    let v: Value = serde_json::from_slice(&s.body).unwrap();
    assert_eq!(v["vars"]["consumer_name"], "guest");
}

#[tokio::test]
async fn key_auth_bad_confs_fail_prepare() {
    for conf in [
        r#"{}"#,
        r#"{"consumers": []}"#,
        r#"{"consumers": [{"username": "a", "key": "k"}, {"username": "b", "key": "k"}]}"#,
        r#"{"consumers": [{"username": "a", "key": "k"}, {"username": "a", "key": "j"}]}"#,
        r#"{"consumers": [{"username": "a", "key": "$ENV://EPR_SURELY_UNSET"}]}"#,
        r#"{"consumers": [{"username": "a", "key": "k", "extra": 1}]}"#,
        r#"{"consumers": [{"username": "a", "key": "k"}], "realm": "a\"b"}"#,
        r#"{"consumers": [{"username": "a", "key": "k"}], "consumers_file": "/x"}"#,
    ] {
        assert_rejected("key-auth", conf).await;
    }
}

#[tokio::test]
async fn key_auth_consumers_come_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("consumers.json");
    std::fs::write(&file, r#"[{"username": "filed", "key": "fk"}]"#).unwrap();
    let conf = json!({"consumers_file": file}).to_string();
    let (_r, mut gw, t) = setup(&[("key-auth", &conf)]).await;
    let req = request(Method::Get, "/p").with_header("apikey", "fk");
    let r = rewrite(act(&mut gw, t, &req).await);
    assert_eq!(pairs(&r.headers)[0], ("x-consumer-username", Some("filed")));
}

/// The done-when chain: key-auth, then a plugin reading the consumer from the call context.
#[tokio::test]
async fn key_auth_consumer_reaches_later_plugins_without_a_round_trip() {
    let conf = r#"{"consumers": [{"username": "jack", "key": "jack-key"}]}"#;
    let echo = r#"{"vars": ["consumer_name"]}"#;
    let (_r, mut gw, t) = setup(&[("key-auth", conf), ("debug-echo", echo)]).await;
    let req = request(Method::Get, "/p").with_header("apikey", "jack-key");
    let s = stop(act(&mut gw, t, &req).await);
    let v: Value = serde_json::from_slice(&s.body).unwrap();
    assert_eq!(v["vars"]["consumer_name"], "jack");
    assert!(gw.asked.is_empty(), "asked the gateway: {:?}", gw.asked);
    // A rejected key stops the chain before echo.
    let req = request(Method::Get, "/p").with_header("apikey", "bad");
    assert_eq!(stop(act(&mut gw, t, &req).await).status, 401);
}

// ---- basic-auth ----

fn basic(userpass: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(userpass)
    )
}

#[tokio::test]
async fn basic_auth_accepts_and_rejects() {
    let conf = r#"{"hide_credentials": true, "consumers": [
        {"username": "jack", "password": "pa:ss word", "custom_id": "c9"}]}"#;
    let (_r, mut gw, t) = setup(&[("basic-auth", conf)]).await;
    let www = "Basic realm=\"basic\"";

    let req = request(Method::Get, "/p").with_header("authorization", &basic("jack:pa:ss word"));
    let r = rewrite(act(&mut gw, t, &req).await);
    assert_eq!(
        pairs(&r.headers),
        [
            ("authorization", None),
            ("x-consumer-username", Some("jack")),
            ("x-credential-identifier", None),
            ("x-consumer-custom-id", Some("c9")),
        ]
    );

    let a = act(&mut gw, t, &request(Method::Get, "/p")).await;
    assert_challenge(a, www, "Missing authorization in request");
    for malformed in ["Bearer x", "Basic !!", &basic("jackpass")] {
        let req = request(Method::Get, "/p").with_header("authorization", malformed);
        let a = act(&mut gw, t, &req).await;
        assert_challenge(a, www, "Invalid authorization in request");
    }
    for wrong in [
        "jack:pa:ss",
        "jack:pa:ss word ",
        "rose:pa:ss word",
        " jack:pa:ss word",
    ] {
        let req = request(Method::Get, "/p").with_header("authorization", &basic(wrong));
        let a = act(&mut gw, t, &req).await;
        assert_challenge(a, www, "Invalid user authorization");
    }
}

#[tokio::test]
async fn basic_auth_bad_confs_fail_prepare() {
    assert_rejected(
        "basic-auth",
        r#"{"consumers": [{"username": "a:b", "password": "p"}]}"#,
    )
    .await;
    assert_rejected(
        "basic-auth",
        r#"{"consumers": [{"username": "a", "key": "p"}]}"#,
    )
    .await;
}

// ---- jwt-auth ----

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/tests/fixtures/jwt/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn sign(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    encode(&Header::new(alg), claims, key).unwrap()
}

fn jwt_conf() -> String {
    json!({"hide_credentials": true, "consumers": [
        {"username": "jack", "key": "user-key", "secret": "my-secret", "lifetime_grace_period": 5},
        {"username": "rsa", "key": "rsa-key", "algorithm": "RS256", "public_key": fixture("rsa.pub")},
        {"username": "pss", "key": "pss-key", "algorithm": "PS384", "public_key": fixture("rsa.pub")},
        {"username": "ec", "key": "ec-key", "algorithm": "ES256", "public_key": fixture("ec256.pub")},
        {"username": "ec3", "key": "ec3-key", "algorithm": "ES384", "public_key": fixture("ec384.pub")},
        {"username": "ed", "key": "ed-key", "algorithm": "EdDSA", "public_key": fixture("ed.pub")},
        {"username": "b64", "key": "b64-key", "algorithm": "HS512", "base64_secret": true,
         "secret": base64::engine::general_purpose::STANDARD.encode("raw secret")}]})
    .to_string()
}

#[tokio::test]
async fn jwt_auth_accepts_every_algorithm_from_header_query_and_cookie() {
    let (_r, mut gw, t) = setup(&[("jwt-auth", &jwt_conf())]).await;
    let exp = now() + 600;
    let rsa = EncodingKey::from_rsa_pem(fixture("rsa.key").as_bytes()).unwrap();
    let cases = [
        (
            "jack",
            Algorithm::HS256,
            EncodingKey::from_secret(b"my-secret"),
            "user-key",
        ),
        ("rsa", Algorithm::RS256, rsa.clone(), "rsa-key"),
        ("pss", Algorithm::PS384, rsa, "pss-key"),
        (
            "ec",
            Algorithm::ES256,
            EncodingKey::from_ec_pem(fixture("ec256.key").as_bytes()).unwrap(),
            "ec-key",
        ),
        (
            "ec3",
            Algorithm::ES384,
            EncodingKey::from_ec_pem(fixture("ec384.key").as_bytes()).unwrap(),
            "ec3-key",
        ),
        (
            "ed",
            Algorithm::EdDSA,
            EncodingKey::from_ed_pem(fixture("ed.key").as_bytes()).unwrap(),
            "ed-key",
        ),
        (
            "b64",
            Algorithm::HS512,
            EncodingKey::from_secret(b"raw secret"),
            "b64-key",
        ),
    ];
    for (user, alg, key, claim) in cases {
        let token = sign(alg, &key, &json!({"key": claim, "exp": exp}));
        let req =
            request(Method::Get, "/p").with_header("authorization", &format!("Bearer {token}"));
        let r = rewrite(act(&mut gw, t, &req).await);
        assert_eq!(pairs(&r.headers)[0], ("authorization", None), "{user}");
        assert_eq!(
            pairs(&r.headers)[1],
            ("x-consumer-username", Some(user)),
            "{alg:?}"
        );
    }
    let token = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(b"my-secret"),
        &json!({"key": "user-key"}),
    );
    let req = request(Method::Get, "/p").with_arg("jwt", &token);
    let r = rewrite(act(&mut gw, t, &req).await);
    assert_eq!(pairs(&r.args), [("jwt", None)]);
    let req = request(Method::Get, "/p").with_header("cookie", &format!("a=1; jwt={token}; b=2"));
    let r = rewrite(act(&mut gw, t, &req).await);
    assert_eq!(pairs(&r.headers)[0], ("cookie", Some("a=1; b=2")));
}

#[tokio::test]
async fn jwt_auth_rejects_bad_tokens() {
    let (_r, mut gw, t) = setup(&[("jwt-auth", &jwt_conf())]).await;
    let www = "Bearer realm=\"jwt\"";
    let hs = EncodingKey::from_secret(b"my-secret");
    let call = |token: String| request(Method::Get, "/p").with_header("authorization", &token);

    let a = act(&mut gw, t, &request(Method::Get, "/p")).await;
    assert_challenge(a, www, "Missing JWT token in request");
    let a = act(&mut gw, t, &call("not.a.jwt".into())).await;
    assert_challenge(a, www, "JWT token invalid");

    // `alg: none`, unsigned.
    let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let none = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "typ": "JWT"})),
        b64(json!({"key": "user-key"}))
    );
    let a = act(&mut gw, t, &call(none)).await;
    assert_eq!(stop(a).status, 401);

    let a = act(
        &mut gw,
        t,
        &call(sign(Algorithm::HS256, &hs, &json!({"sub": "x"}))),
    )
    .await;
    assert_challenge(a, www, "missing user key in JWT token");
    let a = gw
        .call(
            t,
            &call(sign(Algorithm::HS256, &hs, &json!({"key": "who"}))),
        )
        .await
        .unwrap()
        .action;
    assert_challenge(a, www, "Invalid user key in JWT token");

    let failed = [
        // Wrong secret.
        sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(b"guess"),
            &json!({"key": "user-key"}),
        ),
        // Wrong alg: the consumer is HS256, the token HS512 with the right secret.
        sign(Algorithm::HS512, &hs, &json!({"key": "user-key"})),
        // Alg confusion: HS256 "signed" with the RSA consumer's public key.
        sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(fixture("rsa.pub").as_bytes()),
            &json!({"key": "rsa-key"}),
        ),
        // Expired beyond the 5 s grace period, and not valid yet.
        sign(
            Algorithm::HS256,
            &hs,
            &json!({"key": "user-key", "exp": now() - 60}),
        ),
        sign(
            Algorithm::HS256,
            &hs,
            &json!({"key": "user-key", "nbf": now() + 60}),
        ),
    ];
    for token in failed {
        let a = act(&mut gw, t, &call(token)).await;
        assert_challenge(a, www, "failed to verify jwt");
    }
    // Inside the grace period passes.
    let ok = sign(
        Algorithm::HS256,
        &hs,
        &json!({"key": "user-key", "exp": now() - 2}),
    );
    assert!(matches!(
        act(&mut gw, t, &call(ok)).await,
        ReqAction::Rewrite(_)
    ));
}

#[tokio::test]
async fn jwt_auth_bad_confs_fail_prepare() {
    for conf in [
        r#"{"consumers": [{"username": "a", "key": "k", "algorithm": "none", "secret": "s"}]}"#,
        r#"{"consumers": [{"username": "a", "key": "k", "algorithm": "RS256", "secret": "s"}]}"#,
        r#"{"consumers": [{"username": "a", "key": "k", "algorithm": "RS256", "public_key": "junk"}]}"#,
        r#"{"consumers": [{"username": "a", "key": "k"}]}"#,
        r#"{"claims_to_verify": ["iat"], "consumers": [{"username": "a", "key": "k", "secret": "s"}]}"#,
        r#"{"consumers": [{"username": "a", "key": "k", "secret": "s"}, {"username": "b", "key": "k", "secret": "t"}]}"#,
    ] {
        assert_rejected("jwt-auth", conf).await;
    }
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
        assert_eq!(pairs(&s.headers), [("x-blocked", Some("yes"))]);
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
        pairs(&s.headers),
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
        (s.status, pairs(&s.headers)),
        (200, vec![("vary", Some("Origin"))])
    );
}

#[tokio::test]
async fn cors_simple_requests_get_response_headers() {
    let (_r, mut gw, t) = setup(&[("cors", "{}")]).await;
    let req = request(Method::Get, "/").with_header("origin", "https://x.io");
    let r = rewrite(act(&mut gw, t, &req).await);
    assert_eq!(
        pairs(&r.resp_headers),
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
        pairs(&r.resp_headers)[1],
        (
            "access-control-allow-origin",
            Some("https://app.example.com")
        )
    );
    assert!(!pairs(&r.resp_headers)
        .iter()
        .any(|(n, _)| *n == "timing-allow-origin"));
    let req = request(Method::Post, "/").with_header("origin", "https://perf.io");
    let r = rewrite(act(&mut gw2, t2, &req).await);
    assert_eq!(
        pairs(&r.resp_headers),
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
        pairs(&r.headers),
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
        pairs(&r.args),
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
    assert_eq!(pairs(&r.headers), [("x-cap", Some("users"))]);
    // No regex matches: the path stays, captures render empty, and an empty value removes the
    // header (as APISIX's set does).
    let r = rewrite(act(&mut gw, t, &request(Method::Get, "/other")).await);
    assert_eq!((r.path, pairs(&r.headers)), (None, vec![("x-cap", None)]));
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
            r#"property "/age" validation failed: -1 is less than the minimum of 0"#,
        ),
        (r#"{"age": 1}"#, r#""name" is a required property"#),
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
        (s.status, pairs(&s.headers), body(&s)),
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
        (pairs(&r.headers), r.path),
        (vec![("x-opensergo-traffic", Some("gray"))], None)
    );

    // No rule matches: a client-sent tag is deleted, nothing else changes.
    let req = request(Method::Get, "/other").with_header("x-opensergo-traffic", "gray");
    let r = rewrite(act(&mut gw, t, &req).await);
    assert_eq!(pairs(&r.headers), [("x-opensergo-traffic", None)]);
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
                assert_eq!(pairs(&r.headers)[0], ("host", Some("svc-v2.internal")));
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
        (pairs(&r.headers), r.path.as_deref()),
        (vec![("x-lane", Some("v2"))], Some("/v2/p"))
    );
    let r = rewrite(act(&mut gw, t, &request(Method::Get, "/p")).await);
    assert_eq!(pairs(&r.headers), [("x-lane", Some("v1"))]);
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
