//! cors: `cors.t`, `cors2.t`, `cors3.t`, `cors4.t`.
//!
//! Adaptation: where an APISIX test's upstream adds its own `Vary: Via` or CORS headers, the
//! runner's part is the headers it asks the gateway to set; combining them with the upstream's
//! is the gateway's. So `Vary: Via, Origin` is checked as the runner's `Vary: Origin`, and
//! "overwrite upstream" as the runner's values.

use ext_plugin_runner::model::Method;
use serde_json::json;

use crate::driver::{case, skip, Case, File, Suite, PLUGIN_OFF};

const ALL_METHODS: &str = "GET,POST,PUT,DELETE,PATCH,HEAD,OPTIONS,CONNECT,TRACE";
const CORS: [&str; 6] = [
    "Access-Control-Allow-Origin",
    "Access-Control-Allow-Methods",
    "Access-Control-Allow-Headers",
    "Access-Control-Expose-Headers",
    "Access-Control-Max-Age",
    "Access-Control-Allow-Credentials",
];

fn cc(
    file: &'static str,
    tests: impl IntoIterator<Item = u32>,
    what: &'static str,
    conf: &str,
) -> Case {
    case(file, tests, what).plugin("cors", conf)
}

/// The six CORS headers, in `CORS` order (`None`: absent).
fn cors_headers(mut c: Case, values: [Option<&str>; 6]) -> Case {
    for (name, v) in CORS.iter().zip(values) {
        c = c.resp_header(name, v);
    }
    c
}

/// None of the CORS headers.
fn none(c: Case) -> Case {
    cors_headers(c, [None; 6])
}

const GOOD: [&str; 8] = [
    "*",
    "**",
    "null",
    "http://y.com.uk",
    "https://x.com",
    "https://x.com,http://y.com.uk",
    "https://x.com,http://y.com.uk,http://c.tv",
    "https://x.com,http://y.com.uk:12000,http://c.tv",
];
const BAD: [&str; 9] = [
    "",
    "*a",
    "*,http://y.com",
    "nulll",
    "http//y.com.uk",
    "x.com",
    "https://x.com,y.com.uk",
    "https://x.com,*,https://y.com.uk",
    "https://x.com,http://y.com.uk,http:c.tv",
];

/// One case per good and bad value of an origins field.
fn validate(file: &'static str, test: u32, field: &str) -> Vec<Case> {
    let mut out = Vec::new();
    for g in GOOD {
        out.push(
            cc(
                file,
                [test],
                "a valid origins value",
                &json!({ field: g }).to_string(),
            )
            .accepted(),
        );
    }
    for b in BAD {
        out.push(
            cc(
                file,
                [test],
                "a malformed origins value",
                &json!({ field: b }).to_string(),
            )
            .refused(),
        );
    }
    out
}

pub fn suite() -> Suite {
    let f = "cors.t";
    let specified = r#"{"allow_origins": "http://sub.domain.com,http://sub2.domain.com", "allow_methods": "GET,POST",
        "allow_headers": "headr1,headr2", "expose_headers": "ex-headr1,ex-headr2", "max_age": 50, "allow_credential": true}"#;
    let force = r#"{"allow_origins": "**", "allow_methods": "**", "allow_headers": "**", "expose_headers": "*"}"#;
    let upstream = r#"{"allow_origins": "**", "allow_methods": "**", "allow_headers": "request-h", "expose_headers": "expose-h", "allow_credential": true}"#;
    let regex = |rules: &str| {
        format!(
            r#"{{"allow_origins": "http://sub.domain.com,http://sub2.domain.com", "allow_methods": "GET,POST",
            "allow_headers": "headr1,headr2", "expose_headers": "ex-headr1,ex-headr2", "max_age": 50,
            "allow_credential": true, "allow_origins_by_regex": {rules}}}"#
        )
    };
    let one = regex(r#"[".*\\.test.com$"]"#);
    let two = regex(r#"[".*\\.test.com$", ".*\\.example.org$"]"#);
    let specified_for = |o: &'static str| {
        [
            Some(o),
            Some("GET,POST"),
            Some("headr1,headr2"),
            Some("ex-headr1,ex-headr2"),
            Some("50"),
            Some("true"),
        ]
    };
    let rewritten = r#"{"allow_origins": "http://sub.domain.com", "allow_methods": "GET,POST", "allow_headers": "headr1,headr2",
        "expose_headers": "ex-headr1,ex-headr2", "max_age": 50, "allow_credential": true}"#;
    let mut cases = vec![
        cc(f, [1], "empty methods, headers and expose with credentials", r#"{"allow_origins": "http://test.com", "allow_methods": "",
            "allow_headers": "", "expose_headers": "", "max_age": 600, "allow_credential": true}"#).accepted(),
        cc(f, [2], "max_age must be an integer", r#"{"allow_origins": "http://test.com", "max_age": "600", "allow_credential": true}"#).refused(),
        cc(f, [3, 6], "the defaults", "{}").accepted(),
        cc(f, [4], "a misspelt field", r#"{"allow_origins": "**", "allow_methods": "**", "allow_headers": "request-h",
            "expose_headers": "expose-h", "madx_age": 5, "allow_credential": true}"#).refused()
            .differs("unknown fields refuse the conf, as everywhere in the runner; APISIX ignores them"),
        cors_headers(cc(f, [7], "the defaults answer *", "{}").proceeds(), [Some("*"), Some("*"), Some("*"), None, Some("5"), None])
            .resp_header("Vary", None),
        cors_headers(cc(f, [8, 9], "a listed origin", specified).header("Origin", "http://sub2.domain.com").proceeds(), specified_for("http://sub2.domain.com"))
            .resp_header("Vary", Some("Origin")),
        none(cc(f, [10], "an origin not listed", specified).header("Origin", "http://sub3.domain.com").proceeds()),
        cors_headers(cc(f, [11, 12], "** reflects the origin and the request headers", force).header("Origin", "https://sub.domain.com")
            .header("ExternalHeader1", "val").header("Access-Control-Request-Headers", "req-header1,req-header2").proceeds(),
            [Some("https://sub.domain.com"), Some(ALL_METHODS), Some("req-header1,req-header2"), Some("*"), Some("5"), None])
            .resp_header("Vary", Some("Origin")),
        cors_headers(cc(f, [13], "** without an Origin answers *", force).header("ExternalHeader1", "val").proceeds(),
            [Some("*"), Some(ALL_METHODS), None, Some("*"), Some("5"), None]),
        cc(f, [14], "OPTIONS is answered at once", force).req(Method::Options, "/hello").stops(200).body(""),
        cors_headers(case(f, [15, 16], "a refused request still gets the headers")
            .plugin("cors", r#"{"allow_origins": "**", "allow_methods": "**", "allow_headers": "*", "expose_headers": "*"}"#)
            .plugin("key-auth", r#"{"consumers": [{"username": "jack", "key": "auth-one"}]}"#)
            .header("Origin", "https://sub.domain.com").stops(401).body("{\"message\":\"Missing API key in request\"}\n"),
            [Some("https://sub.domain.com"), Some(ALL_METHODS), Some("*"), Some("*"), Some("5"), None]),
        cc(f, [17], "credentials with **", upstream).accepted(),
        cc(f, [18], "the runner's Allow-Origin", upstream).get("/headers?Access-Control-Allow-Origin=https://sub.domain.com")
            .header("Origin", "https://sub.domain.com").proceeds().resp_header("Access-Control-Allow-Origin", Some("https://sub.domain.com")),
        cc(f, [19], "the runner's Allow-Methods", upstream).get("/headers?Access-Control-Allow-Methods=methods")
            .header("Origin", "https://sub.domain.com").proceeds().resp_header("Access-Control-Allow-Methods", Some(ALL_METHODS)),
        cc(f, [20], "the runner's Allow-Headers", upstream).get("/headers?Access-Control-Allow-Headers=a-headers")
            .header("Origin", "https://sub.domain.com").proceeds().resp_header("Access-Control-Allow-Headers", Some("request-h")),
        cc(f, [21], "the runner's Expose-Headers", upstream).get("/headers?Access-Control-Expose-Headers=e-headers")
            .header("Origin", "https://sub.domain.com").proceeds().resp_header("Access-Control-Expose-Headers", Some("expose-h")),
        cc(f, [22], "the runner's Max-Age", upstream).get("/headers?Access-Control-Max-Age=10")
            .header("Origin", "https://sub.domain.com").proceeds().resp_header("Access-Control-Max-Age", Some("5")),
        cc(f, [23], "the runner's Allow-Credentials", upstream).get("/headers?Access-Control-Allow-Credentials=false")
            .header("Origin", "https://sub.domain.com").proceeds().resp_header("Access-Control-Allow-Credentials", Some("true")),
        cc(f, [24], "* origins with credentials", r#"{"allow_origins": "*", "allow_credential": true}"#).refused(),
        cc(f, [25], "* methods with credentials", r#"{"allow_methods": "*", "allow_credential": true}"#).refused(),
        cc(f, [26], "* headers with credentials", r#"{"allow_headers": "*", "allow_credential": true}"#).refused(),
        cc(f, [27], "* expose with credentials", r#"{"expose_headers": "*", "allow_credential": true}"#).refused(),
        cc(f, [28], "a regex beside a list", &one).accepted(),
        cors_headers(cc(f, [29], "an origin the regex matches", &one).header("Origin", "http://a.test.com").proceeds(), specified_for("http://a.test.com"))
            .resp_header("Vary", Some("Origin")),
        none(cc(f, [30], "an origin the regex does not match", &one).header("Origin", "http://a.test2.com").proceeds()),
        cc(f, [31], "two regexes", &two).accepted(),
        cors_headers(cc(f, [32], "an origin the second regex matches", &two).header("Origin", "http://foo.example.org").proceeds(), specified_for("http://foo.example.org")),
        none(cc(f, [33], "an origin neither regex matches", &two).header("Origin", "http://foo.example.com").proceeds()),
        // APISIX's proxy-rewrite takes a flat header map; this runner's takes it under `set`.
        case(f, [34, 35], "the Origin the client sent, even when rewritten earlier in the chain")
            .plugin("proxy-rewrite", r#"{"headers": {"set": {"Origin": "http://example.com"}}}"#)
            .plugin("cors", rewritten).header("Origin", "http://sub.domain.com").proceeds()
            .resp_header("Access-Control-Allow-Origin", Some("http://sub.domain.com")).resp_header("Access-Control-Max-Age", Some("50")),
        cc(f, [36], "a regex with credentials", r#"{"allow_origins": "http://sub.domain.com", "allow_methods": "GET,POST", "allow_headers": "headr1,headr2",
            "expose_headers": "ex-headr1,ex-headr2", "allow_credential": true, "allow_origins_by_regex": [".*\\.test.com$"]}"#).accepted(),
        cc(f, [37], "no Origin with a regex", r#"{"allow_origins": "http://sub.domain.com", "allow_credential": true, "allow_methods": "GET,POST",
            "allow_headers": "headr1,headr2", "allow_origins_by_regex": [".*\\.test.com$"]}"#).proceeds().resp_header("Access-Control-Allow-Origin", None),
    ];

    let f = "cors2.t";
    cases.extend(validate(f, 1, "allow_origins"));
    let star_regex = r#"{"allow_origins": "*", "allow_methods": "GET,POST", "allow_headers": "request-h", "expose_headers": "expose-h",
        "max_age": 10, "allow_origins_by_regex": [".*\\.domain.com$"]}"#;
    cases.extend([
        cc(f, [2], "* and a regex", star_regex).accepted(),
        none(cc(f, [3], "the regex replaces *: no match", star_regex).header("Origin", "http://sub.test.com").proceeds()),
        none(cc(f, [4], "the regex replaces *: no Origin", star_regex).proceeds()),
        cors_headers(cc(f, [5], "the regex replaces *: a match", star_regex).header("Origin", "http://sub.domain.com").proceeds(),
            [Some("http://sub.domain.com"), Some("GET,POST"), Some("request-h"), Some("expose-h"), Some("10"), None])
            .resp_header("Vary", Some("Origin"))
            .differs("APISIX sends no Vary: Origin when allow_origins is * even though a regex decides; the runner sends it"),
    ]);

    let f = "cors4.t";
    cases.extend(validate(f, 1, "timing_allow_origins"));
    let timing = |origins: &str, timing: &str| {
        format!(
            r#"{{"allow_origins": "{origins}", "allow_methods": "GET,POST", "allow_headers": "request-h",
            "expose_headers": "expose-h", "max_age": 10, "timing_allow_origins": "{timing}"}}"#
        )
    };
    let full = |o: &'static str| {
        [
            Some(o),
            Some("GET,POST"),
            Some("request-h"),
            Some("expose-h"),
            Some("10"),
            None,
        ]
    };
    let tao = "Timing-Allow-Origin";
    let c2 = timing("*", "http://sub.domain.com");
    let c5 = timing("http://sub.domain.com", "http://sub.domain.com");
    let c8 = timing("http://one.domain.com", "http://another.domain.com");
    let c12 = timing(
        "http://one.domain.com,http://two.domain.com",
        "http://one.domain.com",
    );
    let c16 = timing(
        "http://one.domain.com,http://two.domain.com",
        "http://one.domain.com,http://three.domain.com",
    );
    let origin = |c: Case, o: &str| c.header("Origin", o).proceeds();
    cases.extend([
        cc(f, [2], "* and a timing origin", &c2).accepted(),
        cors_headers(
            origin(
                cc(f, [3], "the timing origin", &c2),
                "http://sub.domain.com",
            ),
            full("*"),
        )
        .resp_header(tao, Some("http://sub.domain.com")),
        cors_headers(
            origin(cc(f, [4], "another origin", &c2), "http://other.domain.com"),
            full("*"),
        )
        .resp_header(tao, None),
        cc(f, [5], "the same origin in both", &c5).accepted(),
        cors_headers(
            origin(cc(f, [6], "that origin", &c5), "http://sub.domain.com"),
            full("http://sub.domain.com"),
        )
        .resp_header(tao, Some("http://sub.domain.com")),
        none(origin(
            cc(f, [7], "another origin", &c5),
            "http://other.domain.com",
        ))
        .resp_header(tao, None),
        cc(f, [8], "different origins", &c8).accepted(),
        cors_headers(
            origin(cc(f, [9], "the CORS origin", &c8), "http://one.domain.com"),
            full("http://one.domain.com"),
        )
        .resp_header(tao, None),
        none(origin(
            cc(f, [10], "the timing origin", &c8),
            "http://another.domain.com",
        ))
        .resp_header(tao, Some("http://another.domain.com")),
        none(origin(
            cc(f, [11], "neither", &c8),
            "http://notexistent.domain.com",
        ))
        .resp_header(tao, None),
        cc(f, [12], "a CORS list holding the timing origin", &c12).accepted(),
        cors_headers(
            origin(cc(f, [13], "in both", &c12), "http://one.domain.com"),
            full("http://one.domain.com"),
        )
        .resp_header(tao, Some("http://one.domain.com")),
        cors_headers(
            origin(
                cc(f, [14], "in the CORS list only", &c12),
                "http://two.domain.com",
            ),
            full("http://two.domain.com"),
        )
        .resp_header(tao, None),
        none(origin(
            cc(f, [15], "in neither", &c12),
            "http://notexistent.domain.com",
        ))
        .resp_header(tao, None),
        cc(f, [16], "two lists that intersect", &c16).accepted(),
        cors_headers(
            origin(cc(f, [17], "in both", &c16), "http://one.domain.com"),
            full("http://one.domain.com"),
        )
        .resp_header(tao, Some("http://one.domain.com")),
        cors_headers(
            origin(
                cc(f, [18], "in the CORS list only", &c16),
                "http://two.domain.com",
            ),
            full("http://two.domain.com"),
        )
        .resp_header(tao, None),
        none(origin(
            cc(f, [19], "in the timing list only", &c16),
            "http://three.domain.com",
        ))
        .resp_header(tao, Some("http://three.domain.com")),
        none(origin(
            cc(f, [20], "in neither", &c16),
            "http://notexistent.domain.com",
        ))
        .resp_header(tao, None),
    ]);
    let both_regex = r#"{"allow_origins_by_regex": ["http://.*?\\.domain\\.com"], "allow_methods": "GET,POST", "allow_headers": "request-h",
        "expose_headers": "expose-h", "max_age": 10, "timing_allow_origins_by_regex": ["http://.*?\\.domain\\.com"]}"#;
    let regex_over_list = r#"{"allow_origins_by_regex": ["http://.*?\\.domain\\.com"], "allow_methods": "GET,POST", "allow_headers": "request-h",
        "expose_headers": "expose-h", "max_age": 10, "timing_allow_origins_by_regex": ["http://test.*?\\.domain\\.com"],
        "timing_allow_origins": "http://nonexistent.newdomain.com"}"#;
    let reflect = |expose: &str| {
        format!(
            r#"{{"allow_credential": true, "allow_headers": "**", "allow_methods": "**", "allow_origins": "**",
        "expose_headers": "{expose}", "max_age": 3500}}"#
        )
    };
    cases.extend([
        cc(f, [21], "regexes for both", both_regex).accepted(),
        cors_headers(
            origin(
                cc(f, [22], "both regexes match", both_regex),
                "http://sub.domain.com",
            ),
            full("http://sub.domain.com"),
        )
        .resp_header(tao, Some("http://sub.domain.com")),
        none(origin(
            cc(f, [23], "neither regex matches", both_regex),
            "http://other.newdomain.com",
        ))
        .resp_header(tao, None),
        cc(
            f,
            [24],
            "a timing regex beside a timing list",
            regex_over_list,
        )
        .accepted(),
        cors_headers(
            origin(
                cc(
                    f,
                    [25],
                    "the timing regex replaces the list",
                    regex_over_list,
                ),
                "http://testurl.domain.com",
            ),
            full("http://testurl.domain.com"),
        )
        .resp_header(tao, Some("http://testurl.domain.com")),
        cc(f, [26], "an empty expose_headers", &reflect("")).accepted(),
        cors_headers(
            origin(
                cc(f, [27], "an empty expose_headers sends none", &reflect("")),
                "http://sub.domain.com",
            ),
            [
                Some("http://sub.domain.com"),
                Some(ALL_METHODS),
                None,
                None,
                Some("3500"),
                Some("true"),
            ],
        ),
        cc(
            f,
            [28],
            "expose_headers set",
            &reflect("ex-headr1,ex-headr2"),
        )
        .accepted(),
        cors_headers(
            origin(
                cc(
                    f,
                    [29],
                    "expose_headers sent",
                    &reflect("ex-headr1,ex-headr2"),
                ),
                "http://sub.domain.com",
            ),
            [
                Some("http://sub.domain.com"),
                Some(ALL_METHODS),
                None,
                Some("ex-headr1,ex-headr2"),
                Some("3500"),
                Some("true"),
            ],
        ),
    ]);

    Suite {
        plugin: "cors",
        files: vec![
            File {
                name: "cors.t",
                tests: 37,
            },
            File {
                name: "cors2.t",
                tests: 5,
            },
            File {
                name: "cors3.t",
                tests: 15,
            },
            File {
                name: "cors4.t",
                tests: 29,
            },
        ],
        cases,
        skips: vec![
            skip("cors.t", [5], PLUGIN_OFF),
            skip(
                "cors3.t",
                1..=15,
                "plugin metadata (`allow_origins_by_metadata`): the runner has none",
            ),
        ],
    }
}
