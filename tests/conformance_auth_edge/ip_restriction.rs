//! ip-restriction: `ip-restriction.t`.

use serde_json::json;

use crate::driver::{case, skip, Case, File, Suite, COMPONENT_OFF, PLUGIN_OFF};

fn ic(tests: impl IntoIterator<Item = u32>, what: &'static str, conf: &str) -> Case {
    case("ip-restriction.t", tests, what).plugin("ip-restriction", conf)
}

const DENIED: &str = "{\"message\":\"Your IP address is not allowed\"}\n";
const CUSTOM: &str = "{\"message\":\"Do you want to do something bad?\"}\n";

pub fn suite() -> Suite {
    let white = r#"{"whitelist": ["127.0.0.0/24", "113.74.26.106"]}"#;
    let black = r#"{"blacklist": ["127.0.0.0/24", "113.74.26.106"]}"#;
    let black6 = r#"{"blacklist": ["::1", "fe80::/32"]}"#;
    let black_msg = r#"{"blacklist": ["127.0.0.0/24", "113.74.26.106"], "message": "Do you want to do something bad?"}"#;
    let white_msg = r#"{"whitelist": ["127.0.0.0/24", "113.74.26.106"], "message": "Do you want to do something bad?"}"#;
    let white_404 = r#"{"whitelist": ["127.0.0.0/24", "113.74.26.106"], "response_code": 404}"#;
    let long = json!({"whitelist": ["113.74.26.106"], "message": "-1Aa#".repeat(205)}).to_string();
    let cases = vec![
        ic(
            [1],
            "IPv4 prefixes",
            r#"{"whitelist": ["10.255.254.0/24", "192.168.0.0/16"]}"#,
        )
        .accepted(),
        ic(
            [2],
            "an octet over 255",
            r#"{"whitelist": ["10.255.256.0/24", "192.168.0.0/16"]}"#,
        )
        .refused(),
        ic(
            [3],
            "a prefix over 32",
            r#"{"whitelist": ["10.255.254.0/38", "192.168.0.0/16"]}"#,
        )
        .refused(),
        ic([4], "no list", "{}").refused(),
        ic([5], "an empty list", r#"{"blacklist": []}"#).refused(),
        ic(
            [6],
            "both lists",
            r#"{"whitelist": ["172.17.40.0/24"], "blacklist": ["10.255.0.0/16"]}"#,
        )
        .refused(),
        ic([7], "a whitelist", white).accepted(),
        ic([8], "a whitelisted prefix", white)
            .src_ip("127.0.0.1")
            .proceeds(),
        ic([9], "a whitelisted address", white)
            .src_ip("113.74.26.106")
            .proceeds(),
        ic([10], "an address not whitelisted", white)
            .src_ip("114.114.114.114")
            .stops(403)
            .body(DENIED),
        ic([11], "an IPv6 address not whitelisted", white)
            .src_ip("2001:db8::2")
            .stops(403)
            .body(DENIED),
        ic([12], "a blacklist", black).accepted(),
        ic([13], "a blacklisted prefix", black)
            .src_ip("127.0.0.1")
            .stops(403)
            .body(DENIED),
        ic([14], "a blacklisted address", black)
            .src_ip("113.74.26.106")
            .stops(403)
            .body(DENIED),
        ic([15], "an address not blacklisted", black)
            .src_ip("114.114.114.114")
            .proceeds(),
        ic([16], "an IPv6 address not blacklisted", black)
            .src_ip("2001:db8::2")
            .proceeds(),
        ic(
            [19],
            "IPv6 entries",
            r#"{"whitelist": ["::1", "fe80::/32", "2001:DB8:0:23:8:800:200C:417A"]}"#,
        )
        .accepted(),
        ic([20], "an IPv6 blacklist", black6).accepted(),
        ic([21], "an IPv4 client and an IPv6 blacklist", black6)
            .src_ip("127.0.0.1")
            .proceeds(),
        ic([22], "a blacklisted IPv6 address", black6)
            .src_ip("::1")
            .stops(403)
            .body(DENIED),
        ic([23], "a blacklisted IPv6 prefix", black6)
            .src_ip("fe80::1:1")
            .stops(403)
            .body(DENIED),
        ic(
            [24],
            "an IPv6 prefix over 128",
            r#"{"whitelist": ["::1/129"]}"#,
        )
        .refused(),
        ic([24], "not hexadecimal", r#"{"whitelist": ["::ffgg"]}"#).refused(),
        ic([26], "a blacklist with a message", black_msg).accepted(),
        ic([27], "the message for a prefix", black_msg)
            .src_ip("127.0.0.1")
            .stops(403)
            .body(CUSTOM),
        ic([28], "the message for an address", black_msg)
            .src_ip("113.74.26.106")
            .stops(403)
            .body(CUSTOM),
        ic([29], "a whitelist with a message", white_msg).accepted(),
        ic([30], "the message", white_msg)
            .src_ip("114.114.114.114")
            .stops(403)
            .body(CUSTOM),
        ic(
            [31],
            "an empty message",
            r#"{"whitelist": ["127.0.0.0/24", "113.74.26.106"], "message": ""}"#,
        )
        .refused(),
        ic([32], "a message over 1024", &long).refused(),
        ic([33], "response_code 404", white_404).accepted(),
        ic([34], "answered with 404", white_404)
            .src_ip("114.114.114.114")
            .stops(404),
        ic(
            [35],
            "response_code 409",
            r#"{"whitelist": ["127.0.0.0/24", "113.74.26.106"], "response_code": 409}"#,
        )
        .refused(),
    ];
    Suite {
        plugin: "ip-restriction",
        files: vec![File {
            name: "ip-restriction.t",
            tests: 35,
        }],
        cases,
        skips: vec![
            skip("ip-restriction.t", [17, 18], PLUGIN_OFF),
            skip("ip-restriction.t", [25], COMPONENT_OFF),
        ],
    }
}
