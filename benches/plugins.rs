//! Each built-in plugin's hot path: the request phase of a one-plugin chain on a realistic
//! request, with a conf under which the request passes (or, for `debug-echo`, is answered). Run with
//! `cargo bench --bench plugins`.

mod common;

use base64::Engine;
use divan::{black_box, Bencher};
use ext_plugin_catalogue::opensergo;
use ext_plugin_runner::model::{HttpReqCallReq, Pair};
use ext_plugin_sdk::harness::{Harness, LocalGateway};

fn main() {
    for name in ext_plugin_catalogue::builtin().names() {
        // `opensergo` needs a rule store: its cases are `opensergo_request_phase`.
        if !CASES.contains(&name) && !CYCLE_CASES.contains(&name) && name != "opensergo" {
            eprintln!("plugins bench: no case for built-in plugin `{name}`; add one to CASES");
        }
    }
    divan::main();
}

const CASES: &[&str] = &[
    "debug-echo",
    "echo",
    "ip-restriction",
    "request-id",
    "limit-count",
    "limit-req",
    "limit-conn",
    "api-breaker",
    "fault-injection",
    "key-auth",
    "basic-auth",
    "jwt-auth",
    "ua-restriction",
    "referer-restriction",
    "traffic-tag",
    "proxy-rewrite",
    "cors",
    "uri-blocker",
    "request-validation",
    "hmac-auth",
    "consumer-restriction",
    "response-rewrite",
];

/// Plugins that hold something from the request to the response phase: benched as a whole
/// cycle (`request_and_response`), so what they hold is released.
const CYCLE_CASES: &[&str] = &["adaptive-limit"];

fn hs256_token() -> String {
    use jsonwebtoken::{encode, EncodingKey, Header};
    let claims = serde_json::json!({"key": "user-key", "exp": 4_102_444_800u64});
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(b"bench-secret"),
    )
    .unwrap()
}

/// The conf and the request for `plugin`'s case.
fn case(plugin: &str) -> (String, HttpReqCallReq) {
    let mut req = common::fixtures::realistic();
    let mut header = |n: &str, v: String| req.headers.push(Pair::new(n.to_owned(), v));
    let conf = match plugin {
        "debug-echo" => "{}".to_owned(),
        // Response-phase only: its request phase is the cost of being in the chain.
        "echo" => r#"{"body": "replaced"}"#.into(),
        "ip-restriction" => r#"{"whitelist": ["10.0.0.0/8", "2001:db8::/32"]}"#.into(),
        "request-id" => r#"{"header_name": "X-Trace-Id"}"#.into(),
        "limit-count" => r#"{"count": 1000000000, "time_window": 60}"#.into(),
        "limit-req" => r#"{"rate": 1000000000, "burst": 0, "nodelay": true}"#.into(),
        "limit-conn" => r#"{"conn": 1000000000, "burst": 0, "default_conn_delay": 0.1}"#.into(),
        // Closed breaker on the default route scope: the admit path every request takes.
        "api-breaker" => {
            r#"{"break_response_code": 503, "policy": "error_ratio", "threshold": 0.5}"#.into()
        }
        "fault-injection" => {
            r#"{"abort": {"http_status": 503, "vars": [[["arg_chaos", "==", "on"]]]}}"#.into()
        }
        "key-auth" => {
            header("apikey", "k-jack".into());
            r#"{"consumers": [{"username": "jack", "key": "k-jack"}, {"username": "jill", "key": "k-jill"}]}"#.into()
        }
        "basic-auth" => {
            let creds = base64::engine::general_purpose::STANDARD.encode("jack:s3cret");
            req.headers.retain(|p| p.name.as_str() != "authorization");
            req.headers
                .push(Pair::new("authorization", format!("Basic {creds}")));
            r#"{"consumers": [{"username": "jack", "password": "s3cret"}]}"#.into()
        }
        "jwt-auth" => {
            req.headers.retain(|p| p.name.as_str() != "authorization");
            req.headers
                .push(Pair::new("authorization", format!("Bearer {}", hs256_token())));
            r#"{"consumers": [{"username": "jack", "key": "user-key", "algorithm": "HS256", "secret": "bench-secret"}]}"#.into()
        }
        "ua-restriction" => r#"{"denylist": ["curl", "python-requests"]}"#.into(),
        "referer-restriction" => r#"{"whitelist": ["*.example.com"]}"#.into(),
        "traffic-tag" => {
            header("x-user-id", "12345".into());
            r#"{"rules": [{"match": [{"vars": [["http_x_user_id", "==", "12345"]]}], "weighted_tags": [{"tag": "gray", "weight": 1}]}]}"#.into()
        }
        "proxy-rewrite" => {
            r#"{"uri": "/v2/$arg_page", "headers": {"set": {"X-Route": "$uri"}, "remove": ["cookie"]}}"#.into()
        }
        "cors" => {
            header("origin", "https://shop.example.com".into());
            r#"{"allow_origins": "https://shop.example.com"}"#.into()
        }
        "uri-blocker" => r#"{"block_rules": ["\\.\\./", "^/admin"]}"#.into(),
        "request-validation" => {
            r#"{"header_schema": {"type": "object", "required": ["host"]}}"#.into()
        }
        "hmac-auth" => {
            use hmac::Mac;
            let date = "Tue, 01 Dec 2026 10:00:00 GMT";
            let mut mac = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(b"bench-secret").unwrap();
            mac.update(format!("jack-key\ndate: {date}\n").as_bytes());
            let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
            req.headers.retain(|p| p.name.as_str() != "authorization");
            req.headers.push(Pair::new("date", date));
            req.headers.push(Pair::new(
                "authorization",
                format!(r#"Signature keyId="jack-key",algorithm="hmac-sha256",headers="date",signature="{sig}""#),
            ));
            // A skew wide enough for the fixed date: the bench measures the signature path.
            r#"{"clock_skew": 1000000000000, "consumers": [{"username": "jack", "key_id": "jack-key", "secret_key": "bench-secret"}]}"#.into()
        }
        // The route id is a gateway variable: the bench's gateway answers it from memory.
        "consumer-restriction" => r#"{"type": "route_id", "whitelist": ["1", "bench"]}"#.into(),
        // Header-only confs act in the request phase; see `response_phase` for the rest.
        "response-rewrite" => r#"{"headers": {"set": {"X-Served-By": "gw", "X-Client": "$remote_addr"}}}"#.into(),
        other => panic!("no case for {other}"),
    };
    (conf, req)
}

#[divan::bench(args = CASES)]
fn request_phase(bencher: Bencher<'_, '_>, plugin: &str) {
    let rt = common::runtime();
    let _ctx = rt.enter();
    let (conf, req) = case(plugin);
    let chain = Harness::new(ext_plugin_catalogue::builtin())
        .prepare("route#bench#ext-plugin-pre-req#1", &[(plugin, &conf)])
        .unwrap_or_else(|e| panic!("{plugin}: {e}"));
    let mut gw = LocalGateway::new();
    gw.set_var("route_id", "bench");
    bencher.bench_local(|| black_box(common::call(&mut gw, &chain, black_box(&req))));
}

/// response-rewrite's response phase on a 1 KiB JSON body: filters that rewrite it, and a
/// replacement body.
#[divan::bench(args = ["filters", "body"])]
fn response_phase(bencher: Bencher<'_, '_>, mode: &str) {
    use ext_plugin_runner::model::HttpRespCallReq;
    use futures_util::FutureExt;
    let conf = match mode {
        "filters" => {
            r#"{"vars": [["status", "==", 200]], "filters": [{"regex": "\"id\":\\s*(\\d+)", "replace": "\"id\": \"$1\"", "scope": "global"}]}"#
        }
        _ => r#"{"vars": [["status", "==", 200]], "body": "{\"ok\": true}\n"}"#,
    };
    let chain = Harness::new(ext_plugin_catalogue::builtin())
        .prepare(
            "route#bench#ext-plugin-post-resp#1",
            &[("response-rewrite", conf)],
        )
        .unwrap_or_else(|e| panic!("response-rewrite: {e}"));
    let mut gw = LocalGateway::new();
    let items: Vec<String> = (0..40)
        .map(|i| format!(r#"{{"id": {i}, "n": "x"}}"#))
        .collect();
    gw.resp_body = Some(format!("[{}]", items.join(",")).into());
    let req = HttpRespCallReq {
        id: 1,
        status: 200,
        headers: vec![
            Pair::new("content-type", "application/json"),
            Pair::new("content-length", "1000"),
            Pair::new("etag", "\"abc\""),
        ],
        conf_token: 1,
    };
    bencher.bench_local(|| {
        gw.asked.clear();
        black_box(
            gw.resp_call(&chain, black_box(&req))
                .now_or_never()
                .expect("the chain finishes without waiting")
                .expect("the chain succeeds"),
        )
    });
}

/// Admit, then record the completion: one request's whole cycle through adaptive-limit, with
/// the estimator triggered (`trigger_rt_ms: 0`) so the limit is computed on every admission.
#[divan::bench(args = CYCLE_CASES)]
fn request_and_response(bencher: Bencher<'_, '_>, plugin: &str) {
    use ext_plugin_runner::model::{HttpRespCallReq, ReqAction};
    use futures_util::FutureExt;
    let rt = common::runtime();
    let _ctx = rt.enter();
    let conf = r#"{"trigger_rt_ms": 0, "min_limit": 1000000}"#;
    let harness = Harness::new(ext_plugin_catalogue::builtin());
    let pre = harness
        .prepare("route#bench#ext-plugin-pre-req#1", &[(plugin, conf)])
        .unwrap_or_else(|e| panic!("{plugin}: {e}"));
    let post = harness
        .prepare("route#bench#ext-plugin-post-resp#1", &[(plugin, conf)])
        .unwrap_or_else(|e| panic!("{plugin}: {e}"));
    let req = common::fixtures::realistic();
    let resp = HttpRespCallReq {
        id: 2,
        status: 200,
        headers: vec![Pair::new("content-type", "application/json")],
        conf_token: 1,
    };
    let mut gw = LocalGateway::new();
    bencher.bench_local(|| {
        let ReqAction::Rewrite(rw) = common::call(&mut gw, &pre, black_box(&req)) else {
            panic!("admitted with a correlation header")
        };
        let id = rw.headers[0].value.clone().unwrap();
        gw.set_var("http_x_a6_runner_req", &id);
        black_box(
            gw.resp_call(&post, &resp)
                .now_or_never()
                .expect("the chain finishes without waiting")
                .expect("the chain succeeds"),
        )
    });
}

/// A rule store holding `n` FaultToleranceRules for one app, each with its own rate limit on
/// its own resource `GET:/r/<i>` (a limit no request reaches).
fn opensergo_store(n: usize) -> std::sync::Arc<opensergo::RuleStore> {
    use opensergo::model::{AppRules, Rule, SourceRules, Strategy, StrategyKind, StrategyRef};
    let mut app = AppRules::default();
    for i in 0..n {
        let name = format!("rate-{i}");
        app.strategies.insert(
            (StrategyKind::RateLimit, name.clone()),
            Strategy::RateLimit {
                threshold: 1_000_000_000,
                window_ms: 60_000 + i as u64,
            },
        );
        app.rules.push(Rule {
            name: format!("rule-{i}"),
            targets: vec![format!("GET:/r/{i}")],
            strategies: vec![StrategyRef {
                name,
                kind: Some(StrategyKind::RateLimit),
            }],
            fallback: None,
        });
    }
    let mut rules = SourceRules::default();
    rules.apps.insert(("default".into(), "bench".into()), app);
    let store = opensergo::RuleStore::new(opensergo::Defaults::default());
    store.set(opensergo::Source::File, rules);
    store
}

/// The `opensergo` plugin with `rules` rules loaded for the app; the request's resource is one
/// of them (a lookup, then one rate limit), so the cost must not grow with the count.
#[divan::bench(args = [1, 100, 10_000])]
fn opensergo_request_phase(bencher: Bencher<'_, '_>, rules: usize) {
    let rt = common::runtime();
    let _ctx = rt.enter();
    let registry = ext_plugin_catalogue::builtin().provide(opensergo_store(rules));
    let chain = Harness::new(registry)
        .prepare(
            "route#bench#ext-plugin-pre-req#1",
            &[("opensergo", r#"{"app": "bench"}"#)],
        )
        .unwrap();
    let mut req = common::fixtures::realistic();
    req.path = format!("/r/{}", rules - 1).into();
    let mut gw = LocalGateway::new();
    bencher.bench_local(|| black_box(common::call(&mut gw, &chain, black_box(&req))));
}
