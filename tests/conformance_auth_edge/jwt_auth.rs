//! jwt-auth: `jwt-auth.t`, `jwt-auth2.t`, `jwt-auth3.t`, `jwt-auth4.t`,
//! `jwt-auth-more-algo.t`, `jwt-auth-anonymous-consumer.t`, `jwt-auth-realm.t`.
//!
//! APISIX's tests carry tokens signed with their own keys; here the same tokens (algorithm,
//! key size, claims) are signed with this project's fixture keys at run time, so time claims
//! are relative to now where the APISIX token relied on a far-future date.

use base64::Engine as _;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use crate::driver::{
    case, skip, Case, File, Suite, CONSUMER_PLUGINS, NO_REGISTRY, SCHEMA_API, VAULT,
};

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/tests/fixtures/jwt/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A token signed with an HMAC secret.
fn hs(alg: Algorithm, secret: &[u8], claims: Value) -> String {
    encode(
        &Header::new(alg),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap()
}

/// A token signed with a fixture private key.
fn signed(alg: Algorithm, key_file: &str, claims: Value) -> String {
    let pem = fixture(key_file);
    let key = match alg {
        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(pem.as_bytes()),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(pem.as_bytes()),
        _ => EncodingKey::from_rsa_pem(pem.as_bytes()),
    }
    .unwrap();
    encode(&Header::new(alg), &claims, &key).unwrap()
}

const FAR: i64 = 1879318541;
const PAST: i64 = 1563870501;

fn jack_token() -> String {
    hs(
        Algorithm::HS256,
        b"my-secret-key",
        json!({"key": "user-key", "exp": FAR}),
    )
}

fn message(m: &str) -> String {
    format!("{{\"message\":\"{m}\"}}\n")
}

/// A conf: route `fields` (a JSON object) with `consumers`.
fn conf(fields: Value, consumers: Value) -> String {
    let mut c = fields;
    c["consumers"] = consumers;
    c.to_string()
}

fn jack() -> Value {
    json!([{"username": "jack", "key": "user-key", "secret": "my-secret-key"}])
}

fn jc(
    file: &'static str,
    tests: impl IntoIterator<Item = u32>,
    what: &'static str,
    fields: Value,
) -> Case {
    case(file, tests, what).plugin("jwt-auth", conf(fields, jack()))
}

fn with(
    file: &'static str,
    tests: impl IntoIterator<Item = u32>,
    what: &'static str,
    consumers: Value,
) -> Case {
    case(file, tests, what).plugin("jwt-auth", conf(json!({}), consumers))
}

fn rsa_consumer(public_key: &str) -> Value {
    json!([{"username": "kerouac", "key": "user-key-rs256", "algorithm": "RS256", "public_key": public_key}])
}

pub fn suite() -> Suite {
    let failed = message("failed to verify jwt");
    let invalid = message("JWT token invalid");
    let f = "jwt-auth.t";
    let b64 = "fo4XKdZ1xSrIZyms4q2BwPrW5lMpls9qqy5tiAk2esc=";
    let b64_raw = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    let b64_jack =
        json!([{"username": "jack", "key": "user-key", "secret": b64, "base64_secret": true}]);
    let nbf_claims = json!({"key": "user-key-rs256", "nbf": 1727274983});
    let extra_claims =
        json!({"key": "user-key-rs256", "nbf": 1727274983, "aaa": "11", "bb": "222"});
    let es = json!([{"username": "kerouac", "key": "user-key-es256", "algorithm": "ES256", "public_key": fixture("ec256.pub")}]);
    let es_token = signed(
        Algorithm::ES256,
        "ec256.key",
        json!({"key": "user-key-es256", "nbf": 1727274983}),
    );
    let es_head = es_token.rsplit_once('.').unwrap().0.to_owned();
    let hs512 = json!([{"username": "kerouac", "key": "user-key-HS512", "algorithm": "HS512", "secret": "my-secret-key"}]);
    let mut cases = vec![
        with(f, [1], "a consumer with a key and a secret", json!([{"username": "c", "key": "123", "secret": "my-secret-key"}])).accepted(),
        with(f, [2], "a key must be a string", json!([{"username": "c", "key": 123, "secret": "s"}])).refused(),
        jc(f, [3, 4], "jack with an empty route conf", json!({})).accepted(),
        jc(f, [5], "no token", json!({})).stops(401).body(&message("Missing JWT token in request")),
        jc(f, [6], "not a JWT", json!({})).get(&format!("/hello?jwt=invalid-{}", jack_token())).stops(401).body(&invalid),
        jc(f, [7], "an expired token", json!({})).get(&format!("/hello?jwt={}", hs(Algorithm::HS256, b"my-secret-key", json!({"key": "user-key", "exp": PAST})))).stops(401).body(&failed),
        jc(f, [8], "a Bearer header", json!({})).header("Authorization", &format!("Bearer {}", jack_token())).proceeds()
            .upstream_header("x-consumer-username", Some("jack")),
        jc(f, [9], "a cookie", json!({})).header("Cookie", &format!("jwt={}", jack_token())).proceeds()
            .upstream_header("x-consumer-username", Some("jack")),
        jc(f, [10], "a header without Bearer", json!({})).header("Authorization", &jack_token()).proceeds(),
        jc(f, [11], "a lower-case bearer", json!({})).header("Authorization", &format!("bearer {}", jack_token())).proceeds(),
        jc(f, [12], "bearer and not a JWT", json!({})).header("Authorization", &format!("bearer invalid-{}", jack_token())).stops(401).body(&invalid),
        with(f, [13], "jack deleted, chen added", json!([{"username": "chen", "key": "chen-key", "secret": "chen-key"}])).accepted(),
        with(f, [14, 15], "a base64 secret", b64_jack.clone()).accepted(),
        with(f, [16], "signed with the decoded secret, nbf in the past", b64_jack.clone())
            .get(&format!("/hello?jwt={}", hs(Algorithm::HS256, &b64_raw, json!({"key": "user-key", "nbf": 1727274983})))).proceeds(),
        with(f, [17], "not a JWT", b64_jack.clone()).get(&format!("/hello?jwt=invalid-{}", jack_token())).stops(401).body(&invalid),
        with(f, [18], "signed with the encoded secret", b64_jack.clone()).header("Authorization", &format!("Bearer {}", jack_token())).stops(401).body(&failed),
        with(f, [19], "signed with the decoded secret", b64_jack.clone())
            .header("Authorization", &format!("Bearer {}", hs(Algorithm::HS256, &b64_raw, json!({"key": "user-key", "exp": FAR})))).proceeds(),
        with(f, [20], "a consumer without a key", json!([{"username": "c"}])).refused(),
        with(f, [24, 25, 26], "RS256 with a 512-bit key", rsa_consumer(&fixture("rsa512.pub")))
            .get(&format!("/hello?jwt={}", signed(Algorithm::RS256, "rsa512.key", nbf_claims.clone()))).proceeds()
            .upstream_header("x-consumer-username", Some("kerouac")),
        with(f, [27, 28, 29], "RS256 with a 1024-bit key", rsa_consumer(&fixture("rsa1024.pub")))
            .get(&format!("/hello?jwt={}", signed(Algorithm::RS256, "rsa1024.key", nbf_claims.clone()))).proceeds(),
        with(f, [30], "RS256 with a 1024-bit key, extra claims", rsa_consumer(&fixture("rsa1024.pub")))
            .get(&format!("/hello?jwt={}", signed(Algorithm::RS256, "rsa1024.key", extra_claims.clone()))).proceeds(),
        with(f, [31, 32, 33], "RS256 with a 2048-bit key", rsa_consumer(&fixture("rsa.pub")))
            .get(&format!("/hello?jwt={}", signed(Algorithm::RS256, "rsa.key", nbf_claims.clone()))).proceeds(),
        with(f, [34], "RS256 with a 2048-bit key, extra claims", rsa_consumer(&fixture("rsa.pub")))
            .get(&format!("/hello?jwt={}", signed(Algorithm::RS256, "rsa.key", extra_claims.clone()))).proceeds(),
        with(f, [35, 36, 45], "an RSA private key where the public key goes", rsa_consumer(&fixture("rsa512.key"))).accepted(),
        with(f, [35, 45], "and tokens it signed pass", rsa_consumer(&fixture("rsa512.key")))
            .get(&format!("/hello?jwt={}", signed(Algorithm::RS256, "rsa512.key", nbf_claims.clone()))).proceeds(),
        with(f, [37], "an HS512 consumer", json!([{"username": "c", "key": "123", "algorithm": "HS512", "secret": "my-secret-key"}])).accepted(),
        with(f, [38, 39], "an HS512 consumer and route", hs512.clone()).accepted(),
        with(f, [40], "an HS512 token", hs512.clone())
            .get(&format!("/hello?jwt={}", hs(Algorithm::HS512, b"my-secret-key", json!({"key": "user-key-HS512", "nbf": 1727274983})))).proceeds(),
        with(f, [41], "an HS512 token with extra claims", hs512.clone())
            .get(&format!("/hello?jwt={}", hs(Algorithm::HS512, b"my-secret-key", json!({"aaa": "11", "bb": "222", "key": "user-key-HS512", "nbf": 1727274983})))).proceeds(),
        with(f, [42], "base64_secret with a secret that is not base64", json!([{"username": "c", "key": "123", "secret": "{^c0j4&]2!=J=", "base64_secret": true}])).refused(),
        with(f, [43], "a consumer without exp", json!([{"username": "c", "key": "exp-not-set", "secret": "my-secret-key"}])).accepted(),
        with(f, [44, 49], "RS256 without a public key", json!([{"username": "jack", "key": "user-key", "algorithm": "RS256"}])).refused(),
        with(f, [46, 47], "an ES256 consumer", es.clone()).accepted(),
        with(f, [48], "an ES256 token", es.clone()).get(&format!("/hello?jwt={es_token}")).proceeds(),
        with(f, [50], "ES256 without a public key", json!([{"username": "kerouac", "key": "user-key-es256", "algorithm": "ES256"}])).refused(),
        with(f, [51], "HS256 by default needs a secret", json!([{"username": "c", "key": "123"}])).refused(),
        with(f, [51], "HS256 needs a secret", json!([{"username": "c", "key": "123", "algorithm": "HS256"}])).refused(),
        with(f, [51], "HS512 needs a secret", json!([{"username": "c", "key": "123", "algorithm": "HS512"}])).refused(),
        with(f, [51], "RS256 needs no secret", rsa_consumer(&fixture("rsa512.pub"))).accepted(),
        with(f, [51], "ES256 with an RSA public key", json!([{"username": "c", "key": "123", "algorithm": "ES256", "public_key": fixture("rsa512.pub")}])).refused()
            .differs("APISIX accepts a public key of the wrong type and fails every token; the runner checks the key against the algorithm at prepare time"),
        with(f, [52], "an HS256 token HMAC-signed with an RS256 consumer's public key", rsa_consumer(&fixture("rsa512.pub")))
            .get(&format!("/hello?jwt={}", hs(Algorithm::HS256, fixture("rsa512.pub").as_bytes(), json!({"key": "user-key-rs256", "nbf": 1727274983})))).stops(401).body(&failed),
        jc(f, [53, 54], "no claims_to_verify", json!({})).accepted(),
        jc(f, [55], "no claims_to_verify: an expired token fails", json!({})).get(&format!("/hello?jwt={}", hs(Algorithm::HS256, b"my-secret-key", json!({"key": "user-key", "exp": PAST})))).stops(401).body(&failed),
        jc(f, [56], "no claims_to_verify: a token without exp passes", json!({})).get(&format!("/hello?jwt={}", hs(Algorithm::HS256, b"my-secret-key", json!({"key": "user-key"})))).proceeds(),
        jc(f, [57], "an empty claims_to_verify", json!({"claims_to_verify": []})).accepted(),
        jc(f, [58], "an empty claims_to_verify: an expired token still fails", json!({"claims_to_verify": []})).get(&format!("/hello?jwt={}", hs(Algorithm::HS256, b"my-secret-key", json!({"key": "user-key", "exp": PAST})))).stops(401).body(&failed),
    ];
    for sig in ["YWJj", "@@@@"] {
        cases.push(
            with(f, [59], "a malformed ES256 signature", es.clone())
                .get(&format!("/hello?jwt={es_head}.{sig}"))
                .stops(401)
                .body_contains("failed to verify jwt"),
        );
    }

    let f = "jwt-auth2.t";
    let custom = json!({"header": "jwt-header", "query": "jwt-query", "cookie": "jwt-cookie"});
    cases.extend([
        jc(
            f,
            [1, 2],
            "custom header, query and cookie names",
            custom.clone(),
        )
        .accepted(),
        jc(f, [3], "the custom header with Bearer", custom.clone())
            .header("jwt-header", &format!("Bearer {}", jack_token()))
            .proceeds(),
        jc(f, [4], "the custom cookie", custom.clone())
            .header("Cookie", &format!("jwt-cookie={}", jack_token()))
            .proceeds(),
        jc(f, [5], "the custom query", custom.clone())
            .get(&format!("/hello?jwt-query={}", jack_token()))
            .proceeds(),
        jc(f, [6], "the custom header without Bearer", custom.clone())
            .header("jwt-header", &jack_token())
            .proceeds(),
        jc(f, [7], "the custom header with bearer", custom.clone())
            .header("jwt-header", &format!("bearer {}", jack_token()))
            .proceeds(),
    ]);
    let mytoken = json!({"query": "jwt", "header": "Mytoken", "cookie": "jwt"});
    let grace = |g: u64| json!([{"username": "kerouac", "exp": 1, "algorithm": "HS256", "base64_secret": false, "secret": "test-jwt-secret", "key": "test-jwt-a", "lifetime_grace_period": g}]);
    let lately_expired = hs(
        Algorithm::HS256,
        b"test-jwt-secret",
        json!({"key": "test-jwt-a", "exp": now() - 10}),
    );
    cases.extend([
        case(f, [8], "expired, no grace period")
            .plugin("jwt-auth", conf(mytoken.clone(), grace(0)))
            .header("Mytoken", &lately_expired)
            .stops(401)
            .body_contains("failed to verify jwt"),
        case(f, [9], "expired within the grace period")
            .plugin("jwt-auth", conf(mytoken.clone(), grace(60)))
            .header("Mytoken", &lately_expired)
            .proceeds(),
    ]);

    let f = "jwt-auth3.t";
    let fields = |hide: bool| json!({"header": "jwt-header", "query": "jwt-query", "cookie": "jwt-cookie", "hide_credentials": hide});
    let bearer = format!("Bearer {}", jack_token());
    let in_query = format!(
        "/plugin_proxy_rewrite_args?foo=bar&hello=world&jwt-query={}",
        jack_token()
    );
    cases.extend([
        jc(f, [1, 2], "hide_credentials false", fields(false)).accepted(),
        jc(f, [3], "the header is kept", fields(false))
            .get("/echo")
            .header("jwt-header", &bearer)
            .proceeds()
            .upstream_header("jwt-header", Some(&bearer)),
        jc(f, [4], "the cookie is kept", fields(false))
            .get("/echo")
            .header("Cookie", &format!("jwt-cookie={}", jack_token()))
            .proceeds()
            .upstream_header("cookie", Some(&format!("jwt-cookie={}", jack_token()))),
        jc(f, [5, 6], "the query is kept", fields(false))
            .get(&in_query)
            .proceeds()
            .upstream_arg("foo", Some("bar"))
            .upstream_arg("hello", Some("world"))
            .upstream_arg("jwt-query", Some(&jack_token())),
        jc(f, [7, 8], "the header is deleted", fields(true))
            .get("/echo")
            .header("jwt-header", &jack_token())
            .proceeds()
            .upstream_header("jwt-header", None),
        jc(
            f,
            [9, 10],
            "the query is deleted, the rest kept",
            fields(true),
        )
        .get(&in_query)
        .proceeds()
        .upstream_arg("foo", Some("bar"))
        .upstream_arg("hello", Some("world"))
        .upstream_arg("jwt-query", None),
        jc(
            f,
            [11, 12],
            "the token cookie is deleted, the others kept",
            fields(true),
        )
        .header(
            "Cookie",
            &format!("hello=world; jwt-cookie={}; foo=bar", jack_token()),
        )
        .proceeds()
        .upstream_header("cookie", Some("hello=world; foo=bar")),
    ]);

    let f = "jwt-auth4.t";
    let iss_token = hs(
        Algorithm::HS256,
        b"my-secret-key",
        json!({"sub": "1234567890", "iss": "user-key", "exp": 9916239022i64}),
    );
    cases.extend([
        jc(f, [1], "jack", json!({})).accepted(),
        jc(f, [2], "key_claim_name", json!({"key_claim_name": "iss"})).accepted(),
        jc(f, [2], "stray consumer fields in the route conf", json!({"key": "user-key", "secret": "my-secret-key", "key_claim_name": "iss"})).refused()
            .differs("unknown fields refuse the conf, as everywhere in the runner; APISIX ignores them"),
        jc(f, [3], "the consumer named by iss", json!({"key_claim_name": "iss"})).req(ext_plugin_runner::model::Method::Post, "/hello")
            .header("Authorization", &format!("Bearer {iss_token}")).proceeds().upstream_header("x-consumer-username", Some("jack")),
        with(f, [4], "an empty secret", json!([{"username": "mike", "key": "custom-user-key", "secret": ""}])).refused(),
        with(f, [5], "an empty key", json!([{"username": "mike", "key": "", "algorithm": "RS256", "public_key": "somekey", "private_key": "someprivkey"}])).refused(),
        with(f, [11], "HS384 needs a secret", json!([{"username": "jack", "key": "user-key", "algorithm": "HS384"}])).refused(),
    ]);

    let f = "jwt-auth-more-algo.t";
    let hs384 = json!([{"username": "jack", "key": "user-key", "secret": "my-secret-key", "algorithm": "HS384"}]);
    let ps256 = json!([{"username": "jack", "key": "user-key2", "secret": "my-secret-key", "algorithm": "PS256", "public_key": fixture("rsa.pub")}]);
    let ed = json!([{"username": "jack", "key": "user-key", "secret": "my-secret-key", "algorithm": "EdDSA", "public_key": fixture("ed.pub"), "private_key": fixture("ed.key")}]);
    let hs384_token = |claims: Value| hs(Algorithm::HS384, b"my-secret-key", claims);
    let nbf = |test: u32, what: &'static str, claims: Value| {
        let c = conf(json!({"claims_to_verify": ["nbf"]}), hs384.clone());
        case(f, [test], what)
            .plugin("jwt-auth", c)
            .header("Authorization", &hs384_token(claims))
    };
    cases.extend([
        with(f, [1, 2], "an HS384 consumer", hs384.clone()).accepted(),
        with(f, [4], "an HS384 token in the query", hs384.clone()).get(&format!("/hello?jwt={}", hs384_token(json!({"key": "user-key", "exp": 2085087792})))).proceeds(),
        with(f, [5], "not a JWT", hs384.clone()).get(&format!("/hello?jwt=invalid-{}", jack_token())).stops(401).body(&invalid),
        with(f, [6], "an HS384 token in the header", hs384.clone()).header("Authorization", &hs384_token(json!({"key": "user-key", "exp": FAR}))).proceeds(),
        with(f, [7], "PS256 with a secret and no public key", json!([{"username": "jack", "key": "user-key", "secret": "my-secret-key", "algorithm": "PS256"}])).refused(),
        with(f, [8], "PS256 with a secret and a public key", ps256.clone()).accepted(),
        with(f, [9, 10], "a PS256 token", ps256.clone()).get(&format!("/hello?jwt={}", signed(Algorithm::PS256, "rsa.key", json!({"username": "www.bejson.com", "sub": "demo", "key": "user-key2", "exp": 2089724057})))).proceeds(),
        case(f, [11, 12], "claims_to_verify nbf only").plugin("jwt-auth", conf(json!({"claims_to_verify": ["nbf"]}), hs384.clone())).accepted(),
        nbf(13, "nbf listed and missing", json!({"key": "user-key", "exp": PAST})).stops(401).body_contains("failed to verify jwt"),
        nbf(14, "nbf in the future", json!({"key": "user-key", "exp": PAST, "nbf": 2229671874i64})).stops(401).body_contains("failed to verify jwt"),
        nbf(15, "nbf passed, exp not checked", json!({"key": "user-key", "exp": PAST, "nbf": 1729675042})).proceeds(),
        with(f, [16], "EdDSA with a secret and a private key beside the public key", ed.clone()).accepted(),
        with(f, [17], "an EdDSA token", ed.clone()).get(&format!("/hello?jwt={}", signed(Algorithm::EdDSA, "ed.key", json!({"key": "user-key", "exp": FAR})))).proceeds(),
    ]);

    let f = "jwt-auth-anonymous-consumer.t";
    cases.extend([
        jc(
            f,
            [2],
            "anonymous_consumer",
            json!({"anonymous_consumer": "anonymous"}),
        )
        .accepted(),
        jc(
            f,
            [4],
            "no token passes as the anonymous consumer",
            json!({"anonymous_consumer": "anonymous"}),
        )
        .proceeds()
        .upstream_header("x-consumer-username", Some("anonymous")),
    ]);

    let f = "jwt-auth-realm.t";
    cases.extend([
        jc(f, [1, 2], "the default realm", json!({}))
            .stops(401)
            .resp_header("WWW-Authenticate", Some("Bearer realm=\"jwt\"")),
        jc(
            f,
            [3, 4],
            "a custom realm",
            json!({"realm": "my-jwt-realm"}),
        )
        .stops(401)
        .resp_header("WWW-Authenticate", Some("Bearer realm=\"my-jwt-realm\"")),
    ]);

    Suite {
        plugin: "jwt-auth",
        files: vec![
            File { name: "jwt-auth.t", tests: 59 },
            File { name: "jwt-auth2.t", tests: 9 },
            File { name: "jwt-auth3.t", tests: 21 },
            File { name: "jwt-auth4.t", tests: 11 },
            File { name: "jwt-auth-more-algo.t", tests: 17 },
            File { name: "jwt-auth-anonymous-consumer.t", tests: 7 },
            File { name: "jwt-auth-realm.t", tests: 6 },
        ],
        cases,
        skips: vec![
            skip("jwt-auth.t", 21..=23, SCHEMA_API),
            skip("jwt-auth3.t", [13], "deleting Consumer objects through the Admin API"),
            skip("jwt-auth3.t", [14], "the Admin API's encryption of stored secrets"),
            skip("jwt-auth3.t", 15..=21, VAULT),
            skip("jwt-auth4.t", 6..=9, "store_in_ctx, read by a serverless Lua function in the same gateway: a runner cannot write the gateway's request context"),
            skip("jwt-auth4.t", [10], "a test of the Lua OpenSSL binding (Ed448 keys), no plugin involved"),
            skip("jwt-auth-more-algo.t", [3], "the public-api route of APISIX's token-signing endpoint: the runner only verifies"),
            skip("jwt-auth-anonymous-consumer.t", [1, 3, 5], CONSUMER_PLUGINS),
            skip("jwt-auth-anonymous-consumer.t", [6, 7], NO_REGISTRY),
            skip("jwt-auth-realm.t", [5, 6], NO_REGISTRY),
        ],
    }
}
