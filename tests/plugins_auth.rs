//! The authentication plugins (docs/plugins/security.md: key-auth, basic-auth, jwt-auth) driven
//! through the fake gateway: exact statuses, headers and bodies on accept and reject, and the
//! consumer handed to later plugins.

mod common;

use base64::Engine as _;
use common::{act, assert_rejected, body, rewrite, stop, tuples};
use ext_plugin_runner::model::{Method, ReqAction, Rewrite};
use ext_plugin_runner::testing::{request, FakeGateway, TestRunner};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

/// A runner with the built-in plugins, a gateway connection and the token of `chain`.
async fn setup(chain: &[(&str, &str)]) -> (TestRunner, FakeGateway, u32) {
    common::setup(ext_plugin_catalogue::builtin(), chain).await
}

/// Asserts a 401 challenge with exactly this header and `{"message": msg}\n`.
fn assert_challenge(action: ReqAction, www_authenticate: &str, msg: &str) {
    let s = stop(action);
    assert_eq!(s.status, 401);
    assert_eq!(
        tuples(&s.headers),
        [("www-authenticate", Some(www_authenticate))]
    );
    assert_eq!(body(&s), format!("{{\"message\":\"{msg}\"}}\n"));
}

fn consumer_headers(r: &Rewrite) -> Vec<(&str, Option<&str>)> {
    tuples(&r.headers)
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
        tuples(&r.headers),
        [
            ("apikey", None),
            ("x-consumer-username", Some("jack")),
            ("x-credential-identifier", None),
            ("x-consumer-custom-id", Some("t-1")),
        ]
    );

    let req = request(Method::Get, "/p").with_arg("apikey", env!("CARGO_PKG_NAME"));
    let r = rewrite(act(&mut gw, t, &req).await);
    assert_eq!(tuples(&r.args), [("apikey", None)]);
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
    assert_eq!(tuples(&r.headers)[0], ("x-consumer-username", Some("jack")));
    assert!(!tuples(&r.headers).iter().any(|(n, _)| *n == "apikey"));
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
    assert_eq!(
        tuples(&r.headers)[0],
        ("x-consumer-username", Some("filed"))
    );
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
        tuples(&r.headers),
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
        assert_eq!(tuples(&r.headers)[0], ("authorization", None), "{user}");
        assert_eq!(
            tuples(&r.headers)[1],
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
    assert_eq!(tuples(&r.args), [("jwt", None)]);
    let req = request(Method::Get, "/p").with_header("cookie", &format!("a=1; jwt={token}; b=2"));
    let r = rewrite(act(&mut gw, t, &req).await);
    assert_eq!(tuples(&r.headers)[0], ("cookie", Some("a=1; b=2")));
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
