//! basic-auth: `basic-auth.t`, `basic-auth-anonymous-consumer.t`, `basic-auth-realm.t`.

use crate::driver::{
    case, skip, Case, File, Suite, CONSUMER_PLUGINS, NO_REGISTRY, SCHEMA_API, VAULT,
};

/// A basic-auth conf: the route fields of `fields` (may be empty) with the consumer foo:bar.
fn conf(fields: &str) -> String {
    let sep = if fields.is_empty() { "" } else { ", " };
    format!(r#"{{{fields}{sep}"consumers": [{{"username": "foo", "password": "bar"}}]}}"#)
}

fn bc(
    file: &'static str,
    tests: impl IntoIterator<Item = u32>,
    what: &'static str,
    fields: &str,
) -> Case {
    case(file, tests, what).plugin("basic-auth", conf(fields))
}

fn message(m: &str) -> String {
    format!("{{\"message\":\"{m}\"}}\n")
}

pub fn suite() -> Suite {
    let f = "basic-auth.t";
    let invalid = message("Invalid authorization in request");
    let denied = message("Invalid user authorization");
    let mut cases = vec![
        bc(f, [1], "a consumer with username and password", "").accepted(),
        case(f, [2], "a username must be a string")
            .plugin(
                "basic-auth",
                r#"{"consumers": [{"username": 123, "password": "bar"}]}"#,
            )
            .refused(),
        bc(f, [3, 4], "foo with an empty route conf", "").accepted(),
        bc(f, [5], "no Authorization", "")
            .stops(401)
            .body(&message("Missing authorization in request")),
        bc(f, [6], "not the Basic scheme", "")
            .header("Authorization", "Bad_header YmFyOmJhcgo=")
            .stops(401)
            .body(&invalid),
        bc(f, [7], "not base64", "")
            .header("Authorization", "Basic aca_a")
            .stops(401)
            .body(&invalid),
        bc(f, [8], "no password", "")
            .header("Authorization", "Basic YmFy")
            .stops(401)
            .body(&invalid),
        bc(f, [9], "an unknown user", "")
            .header("Authorization", "Basic YmFyOmJhcgo=")
            .stops(401)
            .body(&denied),
        bc(f, [10], "a wrong password", "")
            .header("Authorization", "Basic Zm9vOmZvbwo=")
            .stops(401)
            .body(&denied),
        bc(f, [11], "the right credentials", "")
            .header("Authorization", "Basic Zm9vOmJhcg==")
            .proceeds()
            .upstream_header("x-consumer-username", Some("foo")),
        case(f, [12], "a consumer without a password")
            .plugin("basic-auth", r#"{"consumers": [{"username": "foo"}]}"#)
            .refused(),
        case(f, [13], "a consumer without fields")
            .plugin("basic-auth", r#"{"consumers": [{}]}"#)
            .refused(),
        case(f, [14], "a conf that is not an object")
            .plugin("basic-auth", r#""blah""#)
            .refused(),
        bc(
            f,
            [18, 19],
            "hide_credentials deletes Authorization",
            r#""hide_credentials": true"#,
        )
        .get("/echo")
        .header("Authorization", "Basic Zm9vOmJhcg==")
        .proceeds()
        .upstream_header("authorization", None),
        bc(
            f,
            [20, 21],
            "hide_credentials false keeps it",
            r#""hide_credentials": false"#,
        )
        .get("/echo")
        .header("Authorization", "Basic Zm9vOmJhcg==")
        .proceeds()
        .upstream_header("authorization", Some("Basic Zm9vOmJhcg==")),
        bc(f, [27], "the route for the scheme tests", "").accepted(),
    ];
    for (t, scheme) in [(28, "basic"), (29, "BASIC"), (30, "bASiC")] {
        cases.push(
            bc(f, [t], "the scheme in any case", "")
                .header("Authorization", &format!("{scheme} Zm9vOmJhcg=="))
                .proceeds()
                .upstream_header("x-consumer-username", Some("foo")),
        );
    }

    let f = "basic-auth-anonymous-consumer.t";
    let anon = r#""anonymous_consumer": "anonymous""#;
    cases.extend([
        bc(f, [2], "anonymous_consumer", anon).accepted(),
        bc(
            f,
            [4],
            "no credentials pass as the anonymous consumer",
            anon,
        )
        .proceeds()
        .upstream_header("x-consumer-username", Some("anonymous")),
    ]);
    for value in ["123", "true", "{}", r#""""#] {
        cases.push(
            bc(
                f,
                [8],
                "anonymous_consumer must be a non-empty string",
                &format!(r#""anonymous_consumer": {value}"#),
            )
            .refused(),
        );
    }

    let f = "basic-auth-realm.t";
    cases.extend([
        bc(f, [1, 2], "the default realm", "")
            .stops(401)
            .resp_header("WWW-Authenticate", Some("Basic realm=\"basic\"")),
        bc(f, [3, 4], "a custom realm", r#""realm": "secure-zone""#)
            .stops(401)
            .resp_header("WWW-Authenticate", Some("Basic realm=\"secure-zone\"")),
    ]);

    Suite {
        plugin: "basic-auth",
        files: vec![
            File {
                name: "basic-auth.t",
                tests: 30,
            },
            File {
                name: "basic-auth-anonymous-consumer.t",
                tests: 8,
            },
            File {
                name: "basic-auth-realm.t",
                tests: 6,
            },
        ],
        cases,
        skips: vec![
            skip("basic-auth.t", 15..=17, SCHEMA_API),
            skip("basic-auth.t", 22..=26, VAULT),
            skip(
                "basic-auth-anonymous-consumer.t",
                [1, 3, 5],
                CONSUMER_PLUGINS,
            ),
            skip("basic-auth-anonymous-consumer.t", [6, 7], NO_REGISTRY),
            skip("basic-auth-realm.t", [5, 6], NO_REGISTRY),
        ],
    }
}
