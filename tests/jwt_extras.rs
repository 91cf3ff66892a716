//! jwt-auth's ES512, `key_claim_name` and token sources as APISIX reads them, over the socket.

use base64::Engine as _;
use ext_plugin_runner::model::{Method, ReqAction};
use ext_plugin_runner::testing::{request, FakeGateway, TestRunner};
use p521::ecdsa::signature::Signer as _;
use p521::pkcs8::DecodePrivateKey as _;

const KEY: &str = "route#1#ext-plugin-pre-req#1";

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/tests/fixtures/jwt/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// An ES512 token over `claims`, signed with the fixture key, with header `alg`.
fn es512_token(alg: &str, claims: &serde_json::Value) -> String {
    let secret = p521::SecretKey::from_pkcs8_pem(&fixture("ec521.key")).unwrap();
    let signer = p521::ecdsa::SigningKey::from_bytes(&secret.to_bytes()).unwrap();
    let signing = format!(
        "{}.{}",
        b64(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#).as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let sig: p521::ecdsa::Signature = signer.sign(signing.as_bytes());
    format!("{signing}.{}", b64(&sig.to_bytes()))
}

async fn setup(conf: &str) -> (TestRunner, FakeGateway, u32) {
    let runner = TestRunner::start(ext_plugin_catalogue::builtin()).await;
    let mut gw = runner.connect().await;
    let token = gw
        .prepare(KEY, &[("jwt-auth", conf)])
        .await
        .expect("prepares");
    (runner, gw, token)
}

async fn outcome(gw: &mut FakeGateway, t: u32, authorization: &str) -> (u16, String) {
    let req = request(Method::Get, "/").with_header("authorization", authorization);
    match gw.call(t, &req).await.unwrap().action {
        ReqAction::Stop(s) => (s.status, String::from_utf8(s.body.to_vec()).unwrap()),
        _ => (200, String::new()),
    }
}

fn es512_conf(extra: &str) -> String {
    let pem = serde_json::to_string(&fixture("ec521.pub")).unwrap();
    format!(
        r#"{{{extra}"consumers": [{{"username": "p521", "key": "es-key", "algorithm": "ES512", "public_key": {pem}}}]}}"#
    )
}

#[tokio::test]
async fn es512_tokens_verify_with_the_consumers_p521_key() {
    let (_r, mut gw, t) = setup(&es512_conf("")).await;
    let good = es512_token(
        "ES512",
        &serde_json::json!({"key": "es-key", "exp": 4_102_444_800u64}),
    );
    assert_eq!(outcome(&mut gw, t, &format!("Bearer {good}")).await.0, 200);
    // Tampered payload, expired, another algorithm in the header: all refused.
    let parts: Vec<&str> = good.split('.').collect();
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        b64(br#"{"key":"es-key","admin":true}"#),
        parts[2]
    );
    let expired = es512_token("ES512", &serde_json::json!({"key": "es-key", "exp": 1}));
    let confused = es512_token("ES384", &serde_json::json!({"key": "es-key"}));
    for (token, why) in [(forged, "forged"), (expired, "expired"), (confused, "alg")] {
        let (status, body) = outcome(&mut gw, t, &token).await;
        assert_eq!(status, 401, "{why}");
        assert!(
            body.contains("failed to verify jwt") || body.contains("JWT token invalid"),
            "{why}: {body}"
        );
    }
}

#[tokio::test]
async fn es512_needs_a_p521_public_key() {
    let runner = TestRunner::start(ext_plugin_catalogue::builtin()).await;
    let mut gw = runner.connect().await;
    let p256 = serde_json::to_string(&fixture("ec256.pub")).unwrap();
    let conf = format!(
        r#"{{"consumers": [{{"username": "p", "key": "k", "algorithm": "ES512", "public_key": {p256}}}]}}"#
    );
    assert!(gw.prepare(KEY, &[("jwt-auth", &conf)]).await.is_err());
}

#[tokio::test]
async fn key_claim_name_names_the_claim_that_picks_the_consumer() {
    let (_r, mut gw, t) = setup(&es512_conf(r#""key_claim_name": "iss", "#)).await;
    let by_iss = es512_token("ES512", &serde_json::json!({"iss": "es-key"}));
    assert_eq!(outcome(&mut gw, t, &by_iss).await.0, 200);
    let by_key = es512_token("ES512", &serde_json::json!({"key": "es-key"}));
    assert_eq!(
        outcome(&mut gw, t, &by_key).await,
        (
            401,
            "{\"message\":\"missing user key in JWT token\"}\n".into()
        )
    );
}

#[tokio::test]
async fn only_bearer_and_lower_case_bearer_are_prefixes() {
    let (_r, mut gw, t) = setup(&es512_conf("")).await;
    let token = es512_token("ES512", &serde_json::json!({"key": "es-key"}));
    assert_eq!(outcome(&mut gw, t, &format!("bearer {token}")).await.0, 200);
    assert_eq!(
        outcome(&mut gw, t, &format!("BEARER {token}")).await.0,
        401,
        "APISIX keeps it as the token"
    );
}
