//! uri-blocker: `uri-blocker.t`.

use crate::driver::{case, File, Suite};

pub fn suite() -> Suite {
    let f = "uri-blocker.t";
    let bc = |tests: &[u32], what: &'static str, conf: &str| {
        case(f, tests.iter().copied(), what).plugin("uri-blocker", conf)
    };
    let aa = r#"{"block_rules": ["aa"]}"#;
    let three = r#"{"block_rules": ["aa", "bb", "c\\d+"]}"#;
    let sql = r#"{"block_rules": ["select.+(from|limit)", "(?:(union(.*?)select))"]}"#;
    let msg = r#"{"block_rules": ["aa"], "rejected_msg": "access is not allowed"}"#;
    let nocase = r#"{"block_rules": ["AA"], "rejected_msg": "access is not allowed", "case_insensitive": true}"#;
    let internal = r#"{"block_rules": ["^/internal/"]}"#;
    let body = "{\"error_msg\":\"access is not allowed\"}\n";
    let cases = vec![
        bc(&[1], "an invalid regex", r#"{"block_rules": [".+("]}"#).refused(),
        bc(&[2], "two rules", r#"{"block_rules": ["^a", "^b"]}"#).accepted(),
        bc(
            &[3],
            "one invalid rule of two",
            r#"{"block_rules": ["^a", "^b("]}"#,
        )
        .refused(),
        bc(&[4], "one rule", aa).accepted(),
        bc(&[5], "the rule matches the query", aa)
            .get("/hello?aa=1")
            .stops(403),
        bc(&[6], "the rule does not match", aa)
            .get("/hello?bb=2")
            .proceeds(),
        bc(&[7], "three rules", three).accepted(),
        bc(&[8], "a value matches", three)
            .get("/hello?x=bb")
            .stops(403),
        bc(&[9], "a name matches", three)
            .get("/hello?bb=2")
            .stops(403),
        bc(&[10], "a regex rule matches", three)
            .get("/hello?c1=2")
            .stops(403),
        bc(&[11], "no rule matches", three)
            .get("/hello?cc=2")
            .proceeds(),
        bc(&[12], "SQL injection rules", sql).accepted(),
        bc(&[13], "select ... from", sql)
            .get("/hello?name=;select%20from%20sys")
            .stops(403),
        bc(&[14], "union select", sql)
            .get("/hello?name=;union%20select%20")
            .stops(403),
        bc(&[15], "a harmless query", sql)
            .get("/hello?cc=2")
            .proceeds(),
        bc(
            &[16],
            "an empty rejected_msg",
            r#"{"block_rules": ["^a"], "rejected_msg": ""}"#,
        )
        .refused(),
        bc(
            &[16],
            "a rejected_msg that is not a string",
            r#"{"block_rules": ["^a"], "rejected_msg": true}"#,
        )
        .refused(),
        bc(&[17], "a rejected_msg", msg).accepted(),
        bc(&[18], "the rejected_msg is answered", msg)
            .get("/hello?aa=1")
            .stops(403)
            .body(body),
        bc(&[19], "case_insensitive", nocase).accepted(),
        bc(&[20], "an upper-case rule matches lower case", nocase)
            .get("/hello?aa=1")
            .stops(403)
            .body(body),
        bc(&[21], "an anchored rule", internal).accepted(),
        // The gateway hands the runner the normalized path: `/./internal/x` arrives as
        // `/internal/x`.
        bc(
            &[22],
            "a dot segment does not bypass an anchored rule",
            internal,
        )
        .get("/internal/x?aa=1")
        .stops(403),
    ];
    Suite {
        plugin: "uri-blocker",
        files: vec![File { name: f, tests: 22 }],
        cases,
        skips: vec![],
    }
}
