//! referer-restriction: `referer-restriction.t`.

use crate::driver::{case, File, Suite};

pub fn suite() -> Suite {
    let f = "referer-restriction.t";
    let rc = |tests: &[u32], what: &'static str, conf: &str| {
        case(f, tests.iter().copied(), what).plugin("referer-restriction", conf)
    };
    let white = r#"{"whitelist": ["*.xx.com", "yy.com"]}"#;
    let bypass = r#"{"bypass_missing": true, "whitelist": ["*.xx.com", "yy.com"]}"#;
    let black = r#"{"blacklist": ["*.xx.com"], "message": "Your referer host is deny"}"#;
    let cases = vec![
        rc(&[1], "a whitelist", white).accepted(),
        rc(&[2], "a wildcard match", white)
            .header("Referer", "http://www.xx.com")
            .proceeds(),
        rc(&[3], "an exact match", white)
            .header("Referer", "https://yy.com/am")
            .proceeds(),
        rc(&[4], "a subdomain of an exact entry", white)
            .header("Referer", "https://www.yy.com/am")
            .stops(403)
            .body("{\"message\":\"Your referer host is not allowed\"}\n"),
        rc(&[5], "no Referer", white).stops(403),
        rc(&[6], "bypass_missing", bypass).accepted(),
        rc(&[7], "no Referer passes", bypass).proceeds(),
        rc(&[8], "a Referer without a scheme counts as missing", bypass)
            .header("Referer", "www.yy.com")
            .proceeds(),
        rc(&[9], "not a host", r#"{"whitelist": ["x.*"]}"#).refused(),
        rc(&[9], "not a host", r#"{"whitelist": ["~y.xn"]}"#).refused(),
        rc(&[10], "a blacklist with a message", black).accepted(),
        rc(&[11], "a blacklisted host", black)
            .header("Referer", "http://www.xx.com")
            .stops(403)
            .body("{\"message\":\"Your referer host is deny\"}\n"),
        rc(&[12], "a host not blacklisted", black)
            .header("Referer", "https://yy.com")
            .proceeds(),
        rc(
            &[13],
            "both lists",
            r#"{"whitelist": ["xx.com"], "blacklist": ["yy.com"]}"#,
        )
        .refused(),
    ];
    Suite {
        plugin: "referer-restriction",
        files: vec![File { name: f, tests: 13 }],
        cases,
        skips: vec![],
    }
}
