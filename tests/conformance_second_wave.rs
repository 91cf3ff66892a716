//! APISIX's own test cases for `hmac-auth`, `consumer-restriction` and `response-rewrite`,
//! re-expressed as chains run over the socket by the fake gateway. Each test names the APISIX
//! file and `TEST` numbers it covers (`hmac-auth.t 7` …); docs/conformance/second-wave.md counts
//! them and says why the rest cannot apply.
//!
//! Where APISIX configures a Consumer object, the chain's auth plugin lists the consumer inline;
//! where APISIX sets a route and then requests it, the chain is prepared and the request sent;
//! an upstream answer is the response call's status, headers and body.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Digest as _;

use ext_plugin_runner::model::{
    ErrorCode, HttpReqCallReq, HttpRespCallResp, Method, Pair, ReqAction,
};
use ext_plugin_runner::testing::{request, FakeGateway, GatewayError, TestRunner};

const PRE: &str = "route#1#ext-plugin-pre-req#1";
const POST_REQ: &str = "route#1#ext-plugin-post-req#1";
const POST_RESP: &str = "route#1#ext-plugin-post-resp#1";

async fn setup(key: &str, chain: &[(&str, &str)]) -> (TestRunner, FakeGateway, u32) {
    let runner = TestRunner::start(ext_plugin_catalogue::builtin()).await;
    let mut gw = runner.connect().await;
    let token = gw.prepare(key, chain).await.expect("the chain prepares");
    (runner, gw, token)
}

/// Asserts that `conf` fails `prepare_conf` for `plugin` under `key`.
async fn refused(key: &str, plugin: &str, conf: &str) {
    let runner = TestRunner::start(ext_plugin_catalogue::builtin()).await;
    let mut gw = runner.connect().await;
    match gw.prepare(key, &[(plugin, conf)]).await {
        Err(GatewayError::Runner(ErrorCode::BadRequest)) => {}
        other => panic!("{plugin} {conf} must fail prepare_conf, got {other:?}"),
    }
}

async fn accepted(key: &str, plugin: &str, conf: &str) {
    setup(key, &[(plugin, conf)]).await;
}

/// The status and body the client gets (200 and no body when the request is proxied).
async fn answer(
    gw: &mut FakeGateway,
    token: u32,
    req: &HttpReqCallReq,
) -> (u16, String, ReqAction) {
    let action = gw.call(token, req).await.expect("the call succeeds").action;
    match &action {
        ReqAction::Stop(s) => (
            s.status,
            String::from_utf8(s.body.to_vec()).unwrap(),
            action,
        ),
        _ => (200, String::new(), action),
    }
}

fn header<'a>(pairs: &'a [Pair], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|p| p.name.eq_ignore_ascii_case(name))
        .and_then(|p| p.value.as_deref())
}

fn headers_of(action: &ReqAction) -> &[Pair] {
    match action {
        ReqAction::Stop(s) => &s.headers,
        ReqAction::Rewrite(r) => &r.headers,
        ReqAction::Continue => &[],
    }
}

// ---------------------------------------------------------------- hmac-auth

mod hmac_auth {
    use super::*;

    pub const KEY_ID: &str = "my-access-key";
    pub const SECRET: &str = "my-secret-key";

    /// The route conf with consumer jack (hmac-auth.t 1) and `extra` fields.
    pub fn conf(extra: &str) -> String {
        let sep = if extra.is_empty() { "" } else { "," };
        format!(
            r#"{{"consumers": [{{"username": "jack", "key_id": "{KEY_ID}", "secret_key": "{SECRET}"}}]{sep}{extra}}}"#
        )
    }

    pub fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    /// An RFC 1123 date, as `ngx.http_time` writes it.
    pub fn http_date(t: u64) -> String {
        let days = (t / 86_400) as i64;
        let secs = t % 86_400;
        // Howard Hinnant's civil_from_days.
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = doy - (153 * mp + 2) / 5 + 1;
        let m = if mp < 10 { mp + 3 } else { mp - 9 };
        let y = yoe + era * 400 + i64::from(m <= 2);
        let wd = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][(days % 7) as usize];
        let mon = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ][(m - 1) as usize];
        format!(
            "{wd}, {d:02} {mon} {y} {:02}:{:02}:{:02} GMT",
            secs / 3600,
            secs / 60 % 60,
            secs % 60
        )
    }

    pub fn mac(alg: &str, secret: &str, signing: &str) -> String {
        fn run<M: Mac + hmac::digest::KeyInit>(k: &str, m: &str) -> Vec<u8> {
            let mut mac = <M as Mac>::new_from_slice(k.as_bytes()).unwrap();
            mac.update(m.as_bytes());
            mac.finalize().into_bytes().to_vec()
        }
        let raw = match alg {
            "hmac-sha1" => run::<Hmac<sha1::Sha1>>(secret, signing),
            "hmac-sha256" => run::<Hmac<sha2::Sha256>>(secret, signing),
            _ => run::<Hmac<sha2::Sha512>>(secret, signing),
        };
        base64::engine::general_purpose::STANDARD.encode(raw)
    }

    /// A request signed as APISIX's tests sign: key id, then `lines`, each ending in `\n`.
    pub fn signed(
        method: Method,
        path: &str,
        alg: &str,
        names: &str,
        lines: &[String],
    ) -> HttpReqCallReq {
        let mut signing = format!("{KEY_ID}\n");
        for l in lines {
            signing.push_str(l);
            signing.push('\n');
        }
        let sig = mac(alg, SECRET, &signing);
        let headers = if names.is_empty() {
            String::new()
        } else {
            format!(",headers=\"{names}\"")
        };
        request(method, path).with_header(
            "authorization",
            &format!(
                "Signature keyId=\"{KEY_ID}\",algorithm=\"{alg}\"{headers},signature=\"{sig}\""
            ),
        )
    }

    /// A GET of `path` signed over `@request-target date`, with that Date.
    pub fn dated(alg: &str, path: &str, gmt: &str) -> HttpReqCallReq {
        let lines = [format!("GET {path}"), format!("date: {gmt}")];
        signed(Method::Get, path, alg, "@request-target date", &lines).with_header("date", gmt)
    }

    /// hmac-auth.t 14's request: `@request-target date x-custom-header-a x-custom-header-b`.
    pub fn standard(method: Method, path: &str) -> HttpReqCallReq {
        let gmt = http_date(now());
        let (a, b) = ("asld$%dfasf", "23879fmsldfk");
        signed(
            method,
            path,
            "hmac-sha256",
            "@request-target date x-custom-header-a x-custom-header-b",
            &[
                format!("{} {path}", method.as_str()),
                format!("date: {gmt}"),
                format!("x-custom-header-a: {a}"),
                format!("x-custom-header-b: {b}"),
            ],
        )
        .with_header("date", &gmt)
        .with_header("x-custom-header-a", a)
        .with_header("x-custom-header-b", b)
    }

    pub async fn gateway(conf: &str) -> (TestRunner, FakeGateway, u32) {
        let (r, mut gw, t) = setup(PRE, &[("hmac-auth", conf)]).await;
        gw.set_var("request_uri", "/hello");
        (r, gw, t)
    }

    const GENERIC: &str = "{\"message\":\"client request can't be validated\"}\n";

    async fn rejected(gw: &mut FakeGateway, t: u32, req: HttpReqCallReq) {
        let (status, body, action) = answer(gw, t, &req).await;
        assert_eq!((status, body.as_str()), (401, GENERIC));
        assert_eq!(
            header(headers_of(&action), "www-authenticate"),
            Some("hmac realm=\"hmac\"")
        );
    }

    /// hmac-auth.t 2, 3, 4, 5, 15, 16, 26, 27: what the conf schema refuses and accepts.
    #[tokio::test]
    async fn confs_apisix_refuses_are_refused() {
        let long = "akey".repeat(80);
        for consumer in [
            r#"{"username": "foo", "key_id": "user-key"}"#.to_owned(),
            r#"{"username": "bar", "secret_key": "skey"}"#.to_owned(),
            format!(r#"{{"username": "li", "key_id": "{long}", "secret_key": "skey"}}"#),
            format!(
                r#"{{"username": "zhang", "key_id": "akey", "secret_key": "{}"}}"#,
                "skey".repeat(96)
            ),
            r#"{"username": "foo"}"#.to_owned(),
        ] {
            refused(
                PRE,
                "hmac-auth",
                &format!(r#"{{"consumers": [{consumer}]}}"#),
            )
            .await;
        }
        refused(PRE, "hmac-auth", &conf(r#""clock_skew": 0"#)).await;
        refused(PRE, "hmac-auth", &conf(r#""allowed_algorithms": []"#)).await;
        accepted(PRE, "hmac-auth", &conf(r#""clock_skew": 1000000000000"#)).await;
    }

    /// hmac-auth.t 6–13: every way a request without a valid signature fails.
    #[tokio::test]
    async fn unsigned_and_malformed_requests_are_rejected() {
        let (_r, mut gw, t) = gateway(&conf("")).await;
        let (status, body, _) = answer(&mut gw, t, &request(Method::Get, "/hello")).await;
        assert_eq!(status, 401);
        assert_eq!(
            body,
            "{\"message\":\"client request can't be validated: missing Authorization header\"}\n"
        );
        let old = "Thu, 24 Sep 2020 06:39:52 GMT";
        let auth = |fields: &str| {
            request(Method::Get, "/hello")
                .with_header("authorization", &format!("Signature {fields}"))
        };
        // 8: no algorithm; 9: unknown key id; 10: unknown algorithm; 11: an old date.
        for fields in [
            r#"keyId="my-access-key",headers="@request-target date" ,signature="asdf""#,
            r#"keyId="sdf",algorithm="hmac-sha256",headers="@request-target date",signature="asdf""#,
            r#"keyId="my-access-key",algorithm="ljlj",headers="@request-target date",signature="asdf""#,
            r#"keyId="my-access-key",algorithm="hmac-sha256",headers="@request-target date",signature="asdf""#,
        ] {
            rejected(&mut gw, t, auth(fields).with_header("date", old)).await;
        }
        // 12: no Date; 13: a Date that is not a date.
        let fields = r#"keyId="my-access-key",algorithm="hmac-sha256",headers="@request-target date",signature="asdf""#;
        rejected(&mut gw, t, auth(fields)).await;
        rejected(&mut gw, t, auth(fields).with_header("date", "adfsdf")).await;
        let (status, body, _) = answer(
            &mut gw,
            t,
            &request(Method::Get, "/hello").with_header("authorization", "Bearer x"),
        )
        .await;
        assert_eq!(status, 401);
        assert!(body.contains("does not start with 'Signature'"), "{body}");
    }

    /// hmac-auth.t 14, 22: a signed GET and a signed PUT pass as jack.
    #[tokio::test]
    async fn signed_requests_pass_as_the_consumer() {
        let (_r, mut gw, t) = gateway(&conf("")).await;
        for method in [Method::Get, Method::Put] {
            let (status, _, action) = answer(&mut gw, t, &standard(method, "/hello")).await;
            assert_eq!(status, 200);
            assert_eq!(
                header(headers_of(&action), "x-consumer-username"),
                Some("jack")
            );
        }
    }

    /// hmac-auth.t 16–20: with a huge skew the old date passes the clock check and the bad
    /// signature is what fails; with a skew of 1 s a 10 s old signature fails.
    #[tokio::test]
    async fn clock_skew_bounds_the_date() {
        let (_r, mut gw, t) = gateway(&conf(r#""clock_skew": 1000000000000"#)).await;
        let old = request(Method::Get, "/hello")
            .with_header("authorization", r#"Signature keyId="my-access-key",algorithm="hmac-sha256",headers="@request-target date",signature="asdf""#)
            .with_header("date", "Thu, 24 Sep 2020 06:39:52 GMT");
        rejected(&mut gw, t, old).await;

        let (_r, mut gw, t) = gateway(&conf(r#""clock_skew": 1"#)).await;
        let gmt = http_date(now() - 10);
        let req = dated("hmac-sha256", "/hello", &gmt);
        rejected(&mut gw, t, req).await;
    }

    /// hmac-auth.t 23–25, 30–32: `signed_headers` must all be signed, and every signed header
    /// must be sent.
    #[tokio::test]
    async fn signed_headers_are_enforced() {
        let c = conf(r#""signed_headers": ["date", "x-custom-header-a", "x-custom-header-b"]"#);
        let (_r, mut gw, t) = gateway(&c).await;
        assert_eq!(
            answer(&mut gw, t, &standard(Method::Get, "/hello")).await.0,
            200,
            "25"
        );
        // 24: x-custom-header-b is not among the signed names.
        let gmt = http_date(now());
        let req = signed(
            Method::Get,
            "/hello",
            "hmac-sha256",
            "@request-target date x-custom-header-a x-custom-header-c",
            &[
                "GET /hello".into(),
                format!("date: {gmt}"),
                "x-custom-header-a: a".into(),
                "x-custom-header-c: c".into(),
            ],
        )
        .with_header("date", &gmt)
        .with_header("x-custom-header-a", "a")
        .with_header("x-custom-header-c", "c");
        rejected(&mut gw, t, req).await;
        // 31: signed both, sent one.
        let mut req = standard(Method::Get, "/hello");
        req.headers.retain(|h| h.name != "x-custom-header-b");
        rejected(&mut gw, t, req).await;
        // 32: names both, signed one.
        let req = signed(
            Method::Get,
            "/hello",
            "hmac-sha256",
            "@request-target date x-custom-header-a x-custom-header-b",
            &[
                "GET /hello".into(),
                format!("date: {gmt}"),
                "x-custom-header-a: a".into(),
            ],
        )
        .with_header("date", &gmt)
        .with_header("x-custom-header-a", "a")
        .with_header("x-custom-header-b", "b");
        rejected(&mut gw, t, req).await;
    }

    /// hmac-auth.t 28–29: `hide_credentials` deletes Authorization before the upstream.
    #[tokio::test]
    async fn hide_credentials_removes_authorization() {
        let (_r, mut gw, t) = gateway(&conf(r#""hide_credentials": true"#)).await;
        gw.set_var("request_uri", "/headers");
        let gmt = http_date(now());
        let req = dated("hmac-sha256", "/headers", &gmt);
        let (status, _, action) = answer(&mut gw, t, &req).await;
        assert_eq!(status, 200);
        let h = headers_of(&action);
        assert!(
            h.iter()
                .any(|p| p.name == "authorization" && p.value.is_none()),
            "{h:?}"
        );
    }

    /// hmac-auth.t 33–34: an algorithm outside `allowed_algorithms` fails.
    #[tokio::test]
    async fn allowed_algorithms_restrict_the_mac() {
        let (_r, mut gw, t) = gateway(&conf(r#""allowed_algorithms": ["hmac-sha256"]"#)).await;
        let gmt = http_date(now());
        let req = dated("hmac-sha1", "/hello", &gmt);
        rejected(&mut gw, t, req).await;
        let req = dated("hmac-sha256", "/hello", &gmt);
        assert_eq!(answer(&mut gw, t, &req).await.0, 200);
    }

    /// hmac-auth.t 35–40: the default `signed_headers` is `["date"]`, a Date swapped under an
    /// existing signature fails, and `signed_headers: []` accepts a signature over the target only.
    #[tokio::test]
    async fn default_signed_headers_bind_the_date() {
        let (_r, mut gw, t) = gateway(&conf("")).await;
        let gmt = http_date(now());
        let none = signed(Method::Get, "/hello", "hmac-sha256", "", &[]).with_header("date", &gmt);
        rejected(&mut gw, t, none).await;
        let dated = signed(
            Method::Get,
            "/hello",
            "hmac-sha256",
            "date",
            &[format!("date: {gmt}")],
        )
        .with_header("date", &gmt);
        assert_eq!(answer(&mut gw, t, &dated).await.0, 200, "37");
        let mut replay = dated.clone();
        replay.headers.retain(|h| h.name != "date");
        let replay = replay.with_header("date", &http_date(now() + 60));
        rejected(&mut gw, t, replay).await;

        let (_r, mut gw, t) = gateway(&conf(r#""signed_headers": []"#)).await;
        let target = signed(
            Method::Get,
            "/hello",
            "hmac-sha256",
            "@request-target",
            &["GET /hello".into()],
        )
        .with_header("date", &gmt);
        assert_eq!(answer(&mut gw, t, &target).await.0, 200, "40");
    }

    /// hmac-auth3.t 1–8: `validate_request_body` checks `Digest` against the body fetched from
    /// the gateway, and refuses bodies over `max_req_body_size` with 413.
    #[tokio::test]
    async fn request_bodies_are_validated_by_digest() {
        let body = r#"{"name": "world"}"#;
        let digest = format!(
            "SHA-256={}",
            base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(body))
        );
        let (_r, mut gw, t) = gateway(&conf(r#""validate_request_body": true"#)).await;
        gw.req_body = Some(body.into());
        rejected(&mut gw, t, standard(Method::Post, "/hello")).await;
        rejected(
            &mut gw,
            t,
            standard(Method::Post, "/hello").with_header("digest", "hello"),
        )
        .await;
        let ok = standard(Method::Post, "/hello").with_header("digest", &digest);
        assert_eq!(answer(&mut gw, t, &ok).await.0, 200, "5");

        let (_r, mut gw, t) = gateway(&conf(
            r#""validate_request_body": true, "max_req_body_size": 10"#,
        ))
        .await;
        let big = r#"{"name": "this body is well over ten bytes"}"#;
        gw.req_body = Some(big.into());
        let d = format!(
            "SHA-256={}",
            base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(big))
        );
        let (status, body413, _) = answer(
            &mut gw,
            t,
            &standard(Method::Post, "/hello").with_header("digest", &d),
        )
        .await;
        assert_eq!(status, 413);
        assert_eq!(
            body413,
            "{\"message\":\"request size 44 is greater than the maximum size 10 allowed\"}\n"
        );

        let (_r, mut gw, t) = gateway(&conf(
            r#""validate_request_body": true, "max_req_body_size": 1024"#,
        ))
        .await;
        gw.req_body = Some(body.into());
        assert_eq!(answer(&mut gw, t, &ok).await.0, 200, "8");
    }

    /// hmac-auth4.t 1, 3: the consumer's secret is a reference, resolved when the chain is
    /// prepared (here an environment variable holding JSON, as a key-value store would).
    #[tokio::test]
    async fn secret_keys_may_be_references() {
        // Set before any runner starts in this process's tests of this module; no other test
        // reads it.
        std::env::set_var("EPR_HMAC_JACK", format!(r#"{{"secret_key": "{SECRET}"}}"#));
        let c = format!(
            r#"{{"consumers": [{{"username": "jack", "key_id": "{KEY_ID}", "secret_key": "$ENV://EPR_HMAC_JACK/secret_key"}}]}}"#
        );
        let (_r, mut gw, t) = gateway(&c).await;
        assert_eq!(
            answer(&mut gw, t, &standard(Method::Get, "/hello")).await.0,
            200
        );
        refused(
            PRE,
            "hmac-auth",
            &c.replace(
                "$ENV://EPR_HMAC_JACK/secret_key",
                "$secret://vault/test1/jack/secret_key",
            ),
        )
        .await;
    }

    /// hmac-auth-anonymous-consumer.t 1–4: without credentials the request passes as the
    /// anonymous consumer, and a limit keyed by consumer holds it to its own quota.
    #[tokio::test]
    async fn anonymous_consumer_and_its_own_limit() {
        let auth = conf(r#""anonymous_consumer": "anonymous""#);
        let limit = r#"{"count": 1, "time_window": 60, "key": "consumer_name"}"#;
        let (_r, mut gw, t) = setup(PRE, &[("hmac-auth", &auth), ("limit-count", limit)]).await;
        let (status, _, action) = answer(&mut gw, t, &request(Method::Get, "/hello")).await;
        assert_eq!(status, 200);
        match &action {
            ReqAction::Rewrite(r) => {
                assert_eq!(header(&r.headers, "x-consumer-username"), Some("anonymous"))
            }
            other => panic!("{other:?}"),
        }
        for _ in 0..3 {
            assert_eq!(
                answer(&mut gw, t, &request(Method::Get, "/hello")).await.0,
                503
            );
        }
    }

    /// hmac-auth-realm.t 1–4: the challenge names the realm.
    #[tokio::test]
    async fn the_challenge_names_the_realm() {
        let (_r, mut gw, t) = gateway(&conf(r#""realm": "my-hmac-realm""#)).await;
        let (_, _, action) = answer(&mut gw, t, &request(Method::Get, "/hello")).await;
        assert_eq!(
            header(headers_of(&action), "www-authenticate"),
            Some("hmac realm=\"my-hmac-realm\"")
        );
        let (_r, mut gw, t) = gateway(&conf("")).await;
        let (_, _, action) = answer(&mut gw, t, &request(Method::Get, "/hello")).await;
        assert_eq!(
            header(headers_of(&action), "www-authenticate"),
            Some("hmac realm=\"hmac\"")
        );
    }
}

// ---------------------------------------------------------------- consumer-restriction

mod consumer_restriction {
    use super::*;

    /// consumer-restriction.t 3, 4 (and consumer-restriction2.t 3–5 with groups): the consumers.
    const BASIC: &str = r#"{"consumers": [
        {"username": "jack1", "password": "123456", "group_id": "group1"},
        {"username": "jack2", "password": "123456", "group_id": "group2"},
        {"username": "jack3", "password": "123456"}]}"#;
    const JACK1: &str = "Basic amFjazE6MTIzNDU2";
    const JACK2: &str = "Basic amFjazI6MTIzNDU2";
    const JACK3: &str = "Basic amFjazM6MTIzNDU2";

    async fn statuses(conf: &str, with_auth: bool, cases: &[(Option<&str>, Method, u16, &str)]) {
        let chain: Vec<(&str, &str)> = if with_auth {
            vec![("basic-auth", BASIC), ("consumer-restriction", conf)]
        } else {
            vec![("consumer-restriction", conf)]
        };
        let (_r, mut gw, t) = setup(PRE, &chain).await;
        for (auth, method, status, body) in cases {
            let mut req = request(*method, "/hello");
            if let Some(a) = auth {
                req = req.with_header("authorization", a);
            }
            let (s, b, _) = answer(&mut gw, t, &req).await;
            assert_eq!(
                (s, b.trim_end()),
                (*status, *body),
                "{conf} {auth:?} {method:?}"
            );
        }
    }

    const MISSING_AUTH: &str = r#"{"message":"Missing authorization in request"}"#;
    const FORBIDDEN: &str = r#"{"message":"The consumer_name is forbidden."}"#;
    const NO_CONSUMER: &str =
        r#"{"message":"The request is rejected, please check the consumer_name for this request"}"#;

    /// consumer-restriction.t 1, 2: defaults and a conf with all three lists.
    #[tokio::test]
    async fn schema() {
        accepted(
            PRE,
            "consumer-restriction",
            r#"{"whitelist": ["jack1"], "blacklist": ["jack2"], "allowed_by_methods": []}"#,
        )
        .await;
        // 1's extra `title` is an unknown field, refused here by rule.
        refused(
            PRE,
            "consumer-restriction",
            r#"{"title": "whitelist", "whitelist": ["jack1", "jack2"]}"#,
        )
        .await;
    }

    /// consumer-restriction.t 5–12.
    #[tokio::test]
    async fn whitelist_and_blacklist_after_basic_auth() {
        statuses(
            r#"{"whitelist": ["jack1"]}"#,
            true,
            &[
                (None, Method::Get, 401, MISSING_AUTH),
                (Some(JACK1), Method::Get, 200, ""),
                (Some(JACK2), Method::Get, 403, FORBIDDEN),
            ],
        )
        .await;
        statuses(
            r#"{"blacklist": ["jack1"], "rejected_msg": "request is forbidden"}"#,
            true,
            &[
                (None, Method::Get, 401, MISSING_AUTH),
                (
                    Some(JACK1),
                    Method::Get,
                    403,
                    r#"{"message":"request is forbidden"}"#,
                ),
                (Some(JACK2), Method::Get, 200, ""),
            ],
        )
        .await;
    }

    /// consumer-restriction.t 13–20: no auth plugin, so no consumer.
    #[tokio::test]
    async fn without_an_auth_plugin_there_is_no_consumer() {
        for conf in [r#"{"whitelist": ["jack1"]}"#, r#"{"blacklist": ["jack1"]}"#] {
            statuses(
                conf,
                false,
                &[
                    (None, Method::Get, 401, NO_CONSUMER),
                    (Some(JACK1), Method::Get, 401, NO_CONSUMER),
                    (Some(JACK2), Method::Get, 401, NO_CONSUMER),
                ],
            )
            .await;
        }
    }

    /// consumer-restriction.t 21–30: methods, and the priorities between the lists.
    #[tokio::test]
    async fn allowed_by_methods_and_priorities() {
        statuses(
            r#"{"allowed_by_methods": [{"user": "jack1", "methods": ["POST"]}]}"#,
            true,
            &[(Some(JACK1), Method::Get, 403, FORBIDDEN)],
        )
        .await;
        statuses(
            r#"{"allowed_by_methods": [{"user": "jack1", "methods": ["POST", "GET"]}]}"#,
            true,
            &[(Some(JACK1), Method::Get, 200, "")],
        )
        .await;
        statuses(r#"{"blacklist": ["jack1"], "allowed_by_methods": [{"user": "jack1", "methods": ["POST", "GET"]}]}"#, true, &[
            (Some(JACK1), Method::Get, 403, FORBIDDEN),
            (Some(JACK2), Method::Get, 200, ""),
        ]).await;
        statuses(r#"{"whitelist": ["jack1"], "allowed_by_methods": [{"user": "jack1", "methods": ["POST"]}]}"#, true, &[
            (Some(JACK1), Method::Get, 200, ""),
            (Some(JACK2), Method::Get, 403, FORBIDDEN),
        ]).await;
    }

    /// consumer-restriction.t 31–34: a chain without the plugin lets everyone through.
    #[tokio::test]
    async fn without_the_plugin_everyone_passes() {
        let (_r, mut gw, t) = setup(PRE, &[]).await;
        for auth in [Some(JACK1), Some(JACK2), None] {
            let mut req = request(Method::Get, "/hello");
            if let Some(a) = auth {
                req = req.with_header("authorization", a);
            }
            assert_eq!(answer(&mut gw, t, &req).await.0, 200);
        }
    }

    async fn by_gateway_var(var: &str, value: &str, conf: &str) -> (u16, String) {
        let hmac = super::hmac_auth::conf("");
        let (_r, mut gw, t) = setup(
            POST_REQ,
            &[("hmac-auth", &hmac), ("consumer-restriction", conf)],
        )
        .await;
        gw.set_var("request_uri", "/hello");
        gw.set_var(var, value);
        let (s, b, _) = answer(
            &mut gw,
            t,
            &super::hmac_auth::standard(Method::Get, "/hello"),
        )
        .await;
        (s, b.trim_end().to_owned())
    }

    /// consumer-restriction.t 35–50: `service_id` and `route_id` from the gateway, after
    /// hmac-auth (APISIX puts the restriction on the consumer; here it follows the auth plugin).
    #[tokio::test]
    async fn service_and_route_ids_come_from_the_gateway() {
        let white = r#"{"type": "service_id", "whitelist": ["1"], "rejected_code": 401}"#;
        let black = r#"{"type": "service_id", "blacklist": ["1"], "rejected_code": 401}"#;
        let forbidden = r#"{"message":"The service_id is forbidden."}"#;
        assert_eq!(
            by_gateway_var("service_id", "1", white).await,
            (200, String::new())
        );
        assert_eq!(
            by_gateway_var("service_id", "2", white).await,
            (401, forbidden.into())
        );
        assert_eq!(
            by_gateway_var("service_id", "1", black).await,
            (401, forbidden.into())
        );
        assert_eq!(
            by_gateway_var("service_id", "2", black).await,
            (200, String::new())
        );
        let white = r#"{"type": "route_id", "whitelist": ["1"], "rejected_code": 401}"#;
        let black = r#"{"type": "route_id", "blacklist": ["1"], "rejected_code": 401}"#;
        assert_eq!(
            by_gateway_var("route_id", "1", white).await,
            (200, String::new())
        );
        assert_eq!(
            by_gateway_var("route_id", "1", black).await,
            (401, r#"{"message":"The route_id is forbidden."}"#.into())
        );
    }

    /// consumer-restriction2.t 1–14: consumer groups.
    #[tokio::test]
    async fn consumer_groups() {
        let missing = r#"{"message":"The request is rejected, please check the consumer_group_id for this request"}"#;
        statuses(
            r#"{"type": "consumer_group_id", "whitelist": ["group1"]}"#,
            true,
            &[
                (None, Method::Get, 401, MISSING_AUTH),
                (Some(JACK1), Method::Get, 200, ""),
                (
                    Some(JACK2),
                    Method::Get,
                    403,
                    r#"{"message":"The consumer_group_id is forbidden."}"#,
                ),
            ],
        )
        .await;
        statuses(r#"{"type": "consumer_group_id", "blacklist": ["group1"], "rejected_msg": "request is forbidden"}"#, true, &[
            (None, Method::Get, 401, MISSING_AUTH),
            (Some(JACK1), Method::Get, 403, r#"{"message":"request is forbidden"}"#),
            (Some(JACK2), Method::Get, 200, ""),
            (Some(JACK3), Method::Get, 401, missing),
        ]).await;
    }

    /// consumer-restriction2.t 15–18: a route without a service has no `service_id`.
    #[tokio::test]
    async fn a_route_without_a_service() {
        let missing = r#"{"message":"The request is rejected, please check the service_id for this request"}"#;
        for list in ["blacklist", "whitelist"] {
            let conf = format!(
                r#"{{"type": "service_id", "{list}": ["1"], "rejected_msg": "request is forbidden"}}"#
            );
            statuses(&conf, false, &[(None, Method::Get, 401, missing)]).await;
        }
    }
}

// ---------------------------------------------------------------- response-rewrite

mod response_rewrite {
    use super::*;

    /// The reply to the response phase of a post-resp chain, for an upstream answer.
    async fn rewrite(
        conf: &str,
        status: u16,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> HttpRespCallResp {
        let (_r, mut gw, t) = setup(POST_RESP, &[("response-rewrite", conf)]).await;
        gw.resp_body = Some(body.to_vec().into());
        gw.set_var("remote_addr", "127.0.0.1");
        gw.set_var("balancer_ip", "127.0.0.1");
        gw.set_var("balancer_port", "1980");
        gw.resp_call(t, status, headers)
            .await
            .expect("the response call succeeds")
    }

    fn body(r: &HttpRespCallResp) -> Option<&str> {
        r.body.as_deref().map(|b| std::str::from_utf8(b).unwrap())
    }

    fn values<'a>(r: &'a HttpRespCallResp, name: &str) -> Vec<&'a str> {
        r.headers
            .iter()
            .filter(|p| p.name.eq_ignore_ascii_case(name))
            .filter_map(|p| p.value.as_deref())
            .collect()
    }

    const HELLO: &[u8] = b"hello world\n";

    /// response-rewrite.t 1, 2, 3, 10, 11, 14, 16, 17, 21, 22, 27; response-rewrite2.t 1–6, 19.
    #[tokio::test]
    async fn the_schema_accepts_and_refuses_as_apisix() {
        for ok in [
            r#"{"body": "Hello world", "headers": {"X-Server-id": 3}}"#,
            r#"{"vars": [["status", "==", 200]]}"#,
            r#"{"headers": {"add": ["X-Server-test:a"]}}"#,
            r#"{"body": "test"}"#,
            r#"{"filters": [{"regex": "l", "replace": "m"}]}"#,
            r#"{"filters": [{"regex": "Hello", "scope": "global", "replace": "World", "options": "jo"}]}"#,
        ] {
            accepted(POST_RESP, "response-rewrite", ok).await;
        }
        for bad in [
            r#"{"status_code": 599}"#,
            r#"{"body": 2, "headers": {"X-Server-id": "3"}}"#,
            r#"{"status_code": 200, "headers": {"": 2}}"#,
            r#"{"status_code": 200, "headers": {"X-Name": {}}}"#,
            r#"{"body": "1", "body_base64": true}"#,
            r#"{"vars": [[]]}"#,
            r#"{"body": "", "body_base64": true}"#,
            r#"{"body_base64": true}"#,
            r#"{"body": "test", "filters": [{"regex": "l", "replace": "m"}]}"#,
            r#"{"filters": []}"#,
            r#"{"filters": [{"regex": "l"}]}"#,
            r#"{"filters": [{"regex": "", "replace": "m"}]}"#,
            r#"{"filters": [{"regex": "l", "replace": "m", "scope": ""}]}"#,
            r#"{"filters": [{"regex": "Hello", "scope": "two", "replace": "World"}]}"#,
            r#"{"filters": [{"regex": "hello", "replace": "HELLO", "options": "h"}]}"#,
            r#"{"headers": {"add": [["headers:"]]}}"#,
            r#"{"headers": {"remove": [["headers:"]]}}"#,
            r#"{"headers": {"set": [["headers"]]}}"#,
            r#"{"headers": {"set": [{"": 1}]}}"#,
            r#"{"headers": {"set": [{"a": true}]}}"#,
        ] {
            refused(POST_RESP, "response-rewrite", bad).await;
        }
    }

    /// response-rewrite.t 4–5: flat headers and a body; an empty value removes the header.
    #[tokio::test]
    async fn flat_headers_and_body() {
        let conf = r#"{"headers": {"X-Server-id": 3, "X-Server-status": "on", "Content-Type": ""}, "body": "new body\n"}"#;
        let r = rewrite(
            conf,
            200,
            &[("Content-Type", "text/plain"), ("Content-Length", "12")],
            HELLO,
        )
        .await;
        assert_eq!(body(&r), Some("new body\n"));
        assert_eq!(values(&r, "X-Server-id"), ["3"]);
        assert_eq!(values(&r, "X-Server-status"), ["on"]);
        assert!(values(&r, "Content-Type").is_empty());
        assert!(values(&r, "Content-Length").is_empty());
    }

    /// response-rewrite.t 6–7: a new body clears the headers that describe the old one.
    #[tokio::test]
    async fn a_new_body_clears_the_old_bodys_headers() {
        let upstream = [
            ("X-Server-id", "100"),
            ("Content-Type", "application/xml"),
            ("Content-Encoding", "gzip"),
            ("Content-Length", "4"),
            ("Last-Modified", "Wed, 21 Oct 2015 07:28:00 GMT"),
            ("ETag", "\"33a64df551425fcc55e4d42a148795d9f25f89d4\""),
        ];
        let r = rewrite(r#"{"body": "new body2\n"}"#, 200, &upstream, HELLO).await;
        assert_eq!(body(&r), Some("new body2\n"));
        assert_eq!(values(&r, "X-Server-id"), ["100"]);
        assert_eq!(values(&r, "Content-Type"), ["application/xml"]);
        for gone in [
            "Content-Length",
            "Content-Encoding",
            "Last-Modified",
            "ETag",
        ] {
            assert!(values(&r, gone).is_empty(), "{gone}");
        }
    }

    /// response-rewrite.t 8–9, 12–13: a redirect; a base64 body.
    #[tokio::test]
    async fn status_location_and_base64() {
        let r = rewrite(
            r#"{"headers": {"Location": "https://www.iresty.com"}, "status_code": 302}"#,
            200,
            &[],
            HELLO,
        )
        .await;
        assert_eq!(r.status, 302);
        assert_eq!(values(&r, "Location"), ["https://www.iresty.com"]);
        let r = rewrite(
            r#"{"body": "SGVsbG8K", "body_base64": true}"#,
            200,
            &[],
            HELLO,
        )
        .await;
        assert_eq!(body(&r), Some("Hello\n"));
    }

    /// response-rewrite.t 18–20: `vars` on the upstream status.
    #[tokio::test]
    async fn vars_select_by_upstream_status() {
        let conf =
            r#"{"body": "new body3\n", "status_code": 403, "vars": [["status", "==", 500]]}"#;
        let r = rewrite(conf, 500, &[], b"500 Internal Server Error").await;
        assert_eq!((r.status, body(&r)), (403, Some("new body3\n")));
        let r = rewrite(conf, 200, &[], HELLO).await;
        assert_eq!(
            (r.status, body(&r), r.headers.len()),
            (0, None, 0),
            "untouched"
        );
    }

    /// response-rewrite.t 23–24: header values with variables.
    #[tokio::test]
    async fn header_values_resolve_variables() {
        let conf = r#"{"headers": {"X-A": "$remote_addr", "X-B": "from $remote_addr to $balancer_ip:$balancer_port"}}"#;
        let r = rewrite(conf, 200, &[], HELLO).await;
        assert_eq!(values(&r, "X-A"), ["127.0.0.1"]);
        assert_eq!(values(&r, "X-B"), ["from 127.0.0.1 to 127.0.0.1:1980"]);
    }

    /// response-rewrite.t 25: an empty body cannot travel through the protocol (the gateway
    /// keeps the upstream's), so the conf is refused instead of silently not applied.
    #[tokio::test]
    async fn an_empty_body_is_refused() {
        refused(POST_RESP, "response-rewrite", r#"{"body": ""}"#).await;
    }

    /// response-rewrite.t 28–29: the body is cut to `max_resp_body_size` before filtering.
    #[tokio::test]
    async fn the_body_is_truncated_before_filtering() {
        let conf = r#"{"max_resp_body_size": 5, "filters": [{"regex": "hello", "scope": "once", "replace": "HELLO"}]}"#;
        assert_eq!(body(&rewrite(conf, 200, &[], HELLO).await), Some("HELLO"));
    }

    /// response-rewrite2.t 7–18: filters.
    #[tokio::test]
    async fn filters_substitute_in_the_body() {
        let vars = r#""vars": [["status", "==", 200]]"#;
        for (filters, expected) in [
            (
                r#"[{"regex": "hello", "replace": "test"}]"#,
                Some("test world\n"),
            ),
            (
                r#"[{"regex": "l", "replace": "t", "scope": "global"}]"#,
                Some("hetto wortd\n"),
            ),
            (r#"[{"regex": "hello", "replace": ""}]"#, Some(" world\n")),
            (
                r#"[{"regex": "\\w\\S+$", "replace": "*"}]"#,
                Some("hello *\n"),
            ),
            (
                r#"[{"regex": "hello", "replace": "HELLO"}, {"regex": "L", "replace": "T"}]"#,
                Some("HETLO world\n"),
            ),
            (r#"[{"regex": "test", "replace": "TEST"}]"#, None),
        ] {
            let conf = format!(r#"{{{vars}, "filters": {filters}}}"#);
            assert_eq!(
                body(&rewrite(&conf, 200, &[], HELLO).await),
                expected,
                "{filters}"
            );
        }
    }

    /// response-rewrite2.t 20–25: add, set and remove, in that order.
    #[tokio::test]
    async fn add_set_remove() {
        let conf = r#"{"headers": {"add": ["Cache-Control: no-cache", "Cache-Control : max-age=0, must-revalidate"]}}"#;
        let r = rewrite(conf, 200, &[], HELLO).await;
        assert_eq!(
            values(&r, "Cache-Control"),
            ["no-cache", "max-age=0, must-revalidate"]
        );
        let conf = r#"{"headers": {"add": ["Cache-Control: no-cache"], "set": {"Cache-Control": "max-age=0, must-revalidate"}}}"#;
        assert_eq!(
            values(&rewrite(conf, 200, &[], HELLO).await, "Cache-Control"),
            ["max-age=0, must-revalidate"]
        );
        let conf = r#"{"headers": {"add": ["Set-Cookie: <cookie-name>=<cookie-value>; Max-Age=<number>"],
            "set": {"Cache-Control": "max-age=0, must-revalidate"}, "remove": ["Set-Cookie", "Cache-Control"]}}"#;
        let r = rewrite(conf, 200, &[("Set-Cookie", "a=1")], HELLO).await;
        assert!(values(&r, "Cache-Control").is_empty() && values(&r, "Set-Cookie").is_empty());
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    /// A brotli stream holding `data` in one uncompressed meta-block (valid brotli that needs no
    /// encoder).
    pub fn brotli(data: &[u8]) -> Vec<u8> {
        // WBITS "0" (16), ISLAST 0, MNIBBLES 0 (4), MLEN-1 (16 bits), ISUNCOMPRESSED 1: 21 bits.
        let bits: u32 = ((data.len() as u32 - 1) << 4) | (1 << 20);
        let mut out = vec![bits as u8, (bits >> 8) as u8, (bits >> 16) as u8];
        out.extend_from_slice(data);
        out.push(0b11); // ISLAST, ISLASTEMPTY.
        out
    }

    /// response-rewrite3.t 3–8, 11–14, 17–22: bodies and encodings.
    #[tokio::test]
    async fn encoded_upstream_bodies() {
        let body_conf = r#"{"vars": [["status", "==", 200]], "body": "new body\n"}"#;
        let filter_conf = r#"{"vars": [["status", "==", 200]], "filters": [{"regex": "hello", "replace": "test"}]}"#;
        let header_conf = r#"{"vars": [["status", "==", 200]], "headers": {"set": {"X-Server-id": 3, "X-Server-status": "on", "Content-Type": ""}}}"#;
        let brotli_text: &[u8] = b"hello world hello world hello world\n";
        for (encoding, raw, filtered) in [
            ("gzip", gzip(HELLO), "test world\n"),
            (
                "br",
                brotli(brotli_text),
                "test world hello world hello world\n",
            ),
        ] {
            let upstream = [
                ("Content-Encoding", encoding),
                ("Content-Type", "text/plain"),
            ];
            let r = rewrite(body_conf, 200, &upstream, &raw).await;
            assert_eq!(body(&r), Some("new body\n"), "{encoding}");
            assert!(values(&r, "Content-Encoding").is_empty());
            let r = rewrite(filter_conf, 200, &upstream, &raw).await;
            assert_eq!(body(&r), Some(filtered), "{encoding}");
            assert!(values(&r, "Content-Encoding").is_empty());
            let r = rewrite(header_conf, 200, &upstream, &raw).await;
            assert_eq!(values(&r, "Content-Encoding"), [encoding]);
            assert_eq!(
                (values(&r, "X-Server-id"), values(&r, "X-Server-status")),
                (vec!["3"], vec!["on"])
            );
            assert!(values(&r, "Content-Type").is_empty());
            assert_eq!(r.body, None, "headers only: the body is not touched");
        }
        // 7–8, 13–14: an encoding nobody decodes, with `body` and with headers only.
        let fake = [("Content-Encoding", "deflate")];
        let r = rewrite(body_conf, 200, &fake, b"fake body").await;
        assert_eq!(
            (body(&r), values(&r, "Content-Encoding").is_empty()),
            (Some("new body\n"), true)
        );
        let r = rewrite(header_conf, 200, &fake, b"fake body").await;
        assert_eq!(values(&r, "Content-Encoding"), ["deflate"]);
    }

    /// response-rewrite3.t 9–10, on purpose not as APISIX: a filter over a body in an encoding
    /// the runner cannot decode leaves the body and its `Content-Encoding` as they are (APISIX
    /// drops the header and sends the still-encoded bytes).
    #[tokio::test]
    async fn an_undecodable_body_is_left_whole() {
        let conf = r#"{"vars": [["status", "==", 200]], "filters": [{"regex": "hello", "replace": "test"}]}"#;
        let r = rewrite(conf, 200, &[("Content-Encoding", "deflate")], b"fake hello").await;
        assert_eq!(r.body, None);
        assert!(r.headers.is_empty(), "no header changed: {:?}", r.headers);
    }

    /// Not an APISIX case: in a request-phase attachment, header-only confs act through the
    /// request's response headers, and anything needing the response is refused.
    #[tokio::test]
    async fn request_phase_headers() {
        let (_r, mut gw, t) = setup(
            PRE,
            &[(
                "response-rewrite",
                r#"{"headers": {"set": {"X-A": "$remote_addr"}, "remove": ["X-B"]}}"#,
            )],
        )
        .await;
        let (_, _, action) = answer(&mut gw, t, &request(Method::Get, "/")).await;
        match action {
            ReqAction::Rewrite(r) => assert_eq!(
                r.resp_headers,
                [Pair::new("X-A", "127.0.0.1"), Pair::absent("X-B")]
            ),
            other => panic!("{other:?}"),
        }
        for conf in [
            r#"{"status_code": 302}"#,
            r#"{"body": "x"}"#,
            r#"{"headers": {"add": ["X-A: 1"]}}"#,
            r#"{"headers": {"Content-Type": "text/html"}}"#,
            r#"{"headers": {"X-S": "$upstream_status"}}"#,
        ] {
            refused(PRE, "response-rewrite", conf).await;
        }
    }
}
