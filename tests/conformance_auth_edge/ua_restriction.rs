//! ua-restriction: `ua-restriction.t`.

use crate::driver::{case, skip, File, Suite, COMPONENT_OFF, PLUGIN_OFF};

pub fn suite() -> Suite {
    let f = "ua-restriction.t";
    let uc = |tests: &[u32], what: &'static str, conf: &str| {
        case(f, tests.iter().copied(), what).plugin("ua-restriction", conf)
    };
    let deny = r#"{"denylist": ["my-bot1", "(Baiduspider)/(\\d+)\\.(\\d+)"]}"#;
    let allow = r#"{"allowlist": ["my-bot1", "(Baiduspider)/(\\d+)\\.(\\d+)"]}"#;
    let custom = r#"{"denylist": ["(Baiduspider)/(\\d+)\\.(\\d+)"], "message": "Do you want to do something bad?"}"#;
    let spider = r#"{"denylist": ["(Baiduspider)/(\\d+)\\.(\\d+)"]}"#;
    let no = "{\"message\":\"Not allowed\"}\n";
    let long =
        serde_json::json!({"denylist": ["my-bot1"], "message": "-1Aa#".repeat(205)}).to_string();
    let cases = vec![
        uc(
            &[1],
            "both lists",
            r#"{"allowlist": ["my-bot1", "my-bot2"], "denylist": ["my-bot1", "my-bot2"]}"#,
        )
        .refused(),
        uc(
            &[2],
            "bypass_missing must be a boolean",
            r#"{"bypass_missing": "foo", "denylist": ["a"]}"#,
        )
        .refused(),
        uc(
            &[3],
            "allowlist must be an array",
            r#"{"allowlist": "my-bot1"}"#,
        )
        .refused(),
        uc(&[4], "denylist must be an array", r#"{"denylist": 100}"#).refused(),
        uc(
            &[5],
            "message must be a string",
            r#"{"message": 100, "denylist": ["a"]}"#,
        )
        .refused(),
        uc(&[6], "a denylist", deny).accepted(),
        uc(&[7], "a denied agent", deny)
            .header("User-Agent", "my-bot1")
            .stops(403)
            .body(no),
        uc(&[8], "two agents, the first denied", deny)
            .header("User-Agent", "my-bot1")
            .header("User-Agent", "my-bot2")
            .stops(403)
            .body(no),
        uc(&[9], "two agents, the second denied", deny)
            .header("User-Agent", "my-bot2")
            .header("User-Agent", "my-bot1")
            .stops(403)
            .body(no),
        uc(&[10], "an agent a regex denies", deny)
            .header("User-Agent", "Baiduspider/3.0")
            .stops(403)
            .body(no),
        uc(&[11], "an agent not denied", deny)
            .header("User-Agent", "foo/bar")
            .proceeds(),
        uc(&[12], "an allowlist", allow).accepted(),
        uc(&[13], "an allowed agent", allow)
            .header("User-Agent", "my-bot1")
            .proceeds(),
        uc(&[14], "an agent a regex allows", allow)
            .header("User-Agent", "Baiduspider/3.0")
            .proceeds(),
        uc(&[15], "an agent not allowed", allow)
            .header("User-Agent", "foo/bar")
            .stops(403)
            .body(no),
        uc(&[16], "two agents, the second allowed", allow)
            .header("User-Agent", "foo/bar")
            .header("User-Agent", "my-bot1")
            .proceeds(),
        uc(&[17], "two agents, the first allowed", allow)
            .header("User-Agent", "my-bot1")
            .header("User-Agent", "foo/bar")
            .proceeds(),
        uc(&[18], "an empty message", r#"{"message": ""}"#).refused(),
        uc(&[19], "a message over 1024", &long).refused(),
        uc(&[20], "a custom message", custom).accepted(),
        uc(&[21], "the custom message", custom)
            .header("User-Agent", "Baiduspider/1.0")
            .stops(403)
            .body("{\"message\":\"Do you want to do something bad?\"}\n"),
        uc(&[22], "the plugin on", spider).accepted(),
        uc(&[23], "the spider is denied", spider)
            .header("User-Agent", "Baiduspider/1.0")
            .stops(403)
            .body(no),
        uc(
            &[27],
            "null and empty entries",
            r#"{"allowlist": ["userdata: NULL", null, ""]}"#,
        )
        .refused(),
        uc(
            &[28],
            "null and empty entries",
            r#"{"denylist": ["userdata: NULL", null, ""]}"#,
        )
        .refused(),
        uc(&[29], "no list", "{}").refused(),
        uc(&[30], "an allowlist", r#"{"allowlist": ["my-bot1"]}"#).accepted(),
        uc(&[31], "no User-Agent", r#"{"allowlist": ["my-bot1"]}"#)
            .stops(403)
            .body(no),
        uc(
            &[32],
            "bypass_missing",
            r#"{"bypass_missing": true, "denylist": ["my-bot1"]}"#,
        )
        .accepted(),
        uc(
            &[33],
            "no User-Agent passes",
            r#"{"bypass_missing": true, "denylist": ["my-bot1"]}"#,
        )
        .proceeds(),
    ];
    Suite {
        plugin: "ua-restriction",
        files: vec![File { name: f, tests: 33 }],
        cases,
        skips: vec![skip(f, [24, 25], PLUGIN_OFF), skip(f, [26], COMPONENT_OFF)],
    }
}
