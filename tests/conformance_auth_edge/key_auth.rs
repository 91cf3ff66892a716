//! key-auth: `key-auth.t`, `key-auth-anonymous-consumer.t`, `key-auth-realm.t`,
//! `key-auth-upstream-domain-node.t`.

use crate::driver::{case, skip, Case, File, Suite, CONSUMER_PLUGINS, NO_REGISTRY, VAULT};

const JACK: &str = r#"{"username": "jack", "key": "auth-one"}"#;

/// A key-auth conf: the route fields of `fields` (a JSON object body, may be empty) with jack.
fn conf(fields: &str) -> String {
    let sep = if fields.is_empty() { "" } else { ", " };
    format!(r#"{{{fields}{sep}"consumers": [{JACK}]}}"#)
}

fn kc(
    file: &'static str,
    tests: impl IntoIterator<Item = u32>,
    what: &'static str,
    fields: &str,
) -> Case {
    case(file, tests, what).plugin("key-auth", conf(fields))
}

const INVALID: &str = "{\"message\":\"Invalid API key in request\"}\n";
const MISSING: &str = "{\"message\":\"Missing API key in request\"}\n";

pub fn suite() -> Suite {
    let f = "key-auth.t";
    let twenty: Vec<String> = (1..=20)
        .map(|i| format!(r#"{{"username": "user_{i}", "key": "auth-{i}"}}"#))
        .collect();
    let twenty = format!(r#"{{"consumers": [{}]}}"#, twenty.join(", "));
    let mut cases = vec![
        case(f, [1], "a consumer with a string key").plugin("key-auth", r#"{"consumers": [{"username": "c", "key": "test-key"}]}"#).accepted(),
        case(f, [2], "a consumer key must be a string").plugin("key-auth", r#"{"consumers": [{"username": "c", "key": 123}]}"#).refused(),
        kc(f, [3, 4], "jack with an empty route conf", "").accepted(),
        kc(f, [5], "a valid key passes as its consumer", "").header("apikey", "auth-one").proceeds()
            .upstream_header("x-consumer-username", Some("jack")),
        kc(f, [6], "an unknown key", "").header("apikey", "123").stops(401).body(INVALID),
        kc(f, [7], "no key", "").stops(401).body(MISSING),
        case(f, [8], "the 13th of 20 consumers").plugin("key-auth", twenty).header("apikey", "auth-13").proceeds()
            .upstream_header("x-consumer-username", Some("user_13")),
        case(f, [9], "a consumer without a key").plugin("key-auth", r#"{"consumers": [{"username": "error"}]}"#).refused(),
        kc(f, [10, 11], "a custom header name", r#""header": "Authorization""#).header("Authorization", "auth-one").proceeds()
            .upstream_header("x-consumer-username", Some("jack")),
        kc(f, [12, 13], "a custom query name", r#""query": "auth""#).get("/hello?auth=auth-one").proceeds()
            .upstream_header("x-consumer-username", Some("jack")),
        kc(f, [14, 15], "hide_credentials false keeps the header", r#""hide_credentials": false"#).get("/echo").header("apikey", "auth-one").proceeds()
            .upstream_header("apikey", Some("auth-one")),
        kc(f, [16, 17], "hide_credentials deletes the header", r#""hide_credentials": true"#).get("/echo").header("apikey", "auth-one").proceeds()
            .upstream_header("apikey", None),
        kc(f, [18], "only the key header is deleted", r#""hide_credentials": true"#).get("/echo").header("apikey", "auth-one").header("test", "auth-two").proceeds()
            .upstream_header("apikey", None).upstream_header("test", Some("auth-two")),
        kc(f, [19], "key in header and query: only the header is deleted", r#""hide_credentials": true"#).get("/echo?apikey=auth-one").header("apikey", "auth-one").proceeds()
            .upstream_header("apikey", None).upstream_arg("apikey", Some("auth-one")),
        kc(f, [20, 21], "hide_credentials deletes the query argument", r#""query": "auth", "hide_credentials": true"#).get("/echo?auth=auth-one").proceeds()
            .upstream_arg("auth", None),
        kc(f, [22], "only the key argument is deleted", r#""query": "auth", "hide_credentials": true"#).get("/echo?auth=auth-one&test=auth-two").proceeds()
            .upstream_arg("auth", None).upstream_arg("test", Some("auth-two")),
        kc(f, [23], "a header named like the query stays", r#""query": "auth", "hide_credentials": true"#).get("/echo?auth=auth-one").header("auth", "auth-one").proceeds()
            .upstream_arg("auth", None).upstream_header("auth", Some("auth-one")),
        kc(f, [24, 25], "hide_credentials false keeps the argument", r#""query": "auth", "hide_credentials": false"#).get("/hello?auth=auth-one").proceeds()
            .upstream_arg("auth", Some("auth-one")),
        // The test sets its own variable; cargo sets CARGO_PKG_NAME for every test process.
        case(f, [26, 27], "a key read from the environment").plugin("key-auth", r#"{"query": "auth", "consumers": [{"username": "jack", "key": "$env://CARGO_PKG_NAME"}]}"#)
            .get(&format!("/hello?auth={}", env!("CARGO_PKG_NAME"))).proceeds().upstream_arg("auth", Some(env!("CARGO_PKG_NAME"))),
        case(f, [33, 34], "a key naming an unset variable").plugin("key-auth", r#"{"consumers": [{"username": "jack", "key": "$env://KEYAUTH_UNRESOLVED_SECRET"}]}"#).refused()
            .differs("APISIX keeps the consumer with a key nothing matches; the runner refuses the conf naming the variable"),
    ];

    let f = "key-auth-anonymous-consumer.t";
    let anon = r#""anonymous_consumer": "anonymous""#;
    let hide = r#""query": "auth", "anonymous_consumer": "anonymous", "hide_credentials": true"#;
    cases.extend([
        kc(f, [2], "anonymous_consumer", anon).accepted(),
        kc(f, [4], "no key passes as the anonymous consumer", anon)
            .proceeds()
            .upstream_header("x-consumer-username", Some("anonymous")),
        kc(f, [8], "anonymous_consumer with hide_credentials", hide).accepted(),
        kc(f, [9], "a wrong header key is not forwarded", hide)
            .get("/print_request_received")
            .header("apikey", "invalid-key")
            .proceeds()
            .upstream_header("apikey", None)
            .upstream_header("x-consumer-username", Some("anonymous")),
        kc(f, [10], "a wrong query key is not forwarded", hide)
            .get("/print_request_received?auth=invalid-key")
            .proceeds()
            .upstream_arg("auth", None)
            .upstream_header("x-consumer-username", Some("anonymous")),
        kc(
            f,
            [11],
            "wrong keys in header and query: neither is forwarded",
            hide,
        )
        .get("/print_request_received?auth=invalid-key")
        .header("apikey", "invalid-key")
        .proceeds()
        .upstream_arg("auth", None)
        .upstream_header("apikey", None)
        .upstream_header("x-consumer-username", Some("anonymous")),
    ]);

    let f = "key-auth-realm.t";
    cases.extend([
        kc(f, [1, 2], "the default realm", "")
            .stops(401)
            .resp_header("WWW-Authenticate", Some("apikey realm=\"key\"")),
        kc(f, [3, 4], "a custom realm", r#""realm": "my-custom-realm""#)
            .stops(401)
            .resp_header("WWW-Authenticate", Some("apikey realm=\"my-custom-realm\"")),
    ]);

    Suite {
        plugin: "key-auth",
        files: vec![
            File { name: "key-auth.t", tests: 34 },
            File { name: "key-auth-anonymous-consumer.t", tests: 11 },
            File { name: "key-auth-realm.t", tests: 6 },
            File { name: "key-auth-upstream-domain-node.t", tests: 7 },
        ],
        cases,
        skips: vec![
            skip("key-auth.t", 28..=32, VAULT),
            skip("key-auth-anonymous-consumer.t", [1, 3, 5], CONSUMER_PLUGINS),
            skip("key-auth-anonymous-consumer.t", [6, 7], NO_REGISTRY),
            skip("key-auth-realm.t", [5, 6], NO_REGISTRY),
            skip("key-auth-upstream-domain-node.t", 1..=7, "upstream domain resolution under a Service object: the gateway's routing, not the plugin's answer"),
        ],
    }
}
