//! limit-count against APISIX's t/plugin/limit-count*.t.
//!
//! APISIX's files restart the gateway between blocks unless they run in HUP mode; a case here
//! starts from fresh counters and strings together the blocks that share state in APISIX.

use crate::kit::why::*;
use crate::kit::*;

const P: &str = "limit-count";
const RULES_KEY: &str = "route#rules#ext-plugin-pre-req#1";

const LUA: &str = "calls APISIX's Lua modules directly (limit-count-local's cost and peek API)";
const ACCESS_LOG: &str = "asserts APISIX's access-log variable $rate_limiting_info, which only \
                          APISIX's own plugin sets";
const META: &str = "`_meta` is APISIX's envelope around its own plugins' confs (disable, \
                    filter); an ext-plugin conf has none";

fn times(n: usize, s: u16) -> Vec<u16> {
    vec![s; n]
}

pub fn suite() -> Suite {
    Suite::new(
        P,
        &[
            ("limit-count.t", 42),
            ("limit-count2.t", 22),
            ("limit-count3.t", 13),
            ("limit-count4.t", 5),
            ("limit-count5.t", 8),
            ("limit-count-rules.t", 22),
            ("limit-count-variable.t", 13),
            ("limit-count-sliding.t", 9),
            ("limit-count-consumer-isolation.t", 5),
            ("limit-count-consumer-group-credentials.t", 8),
            ("limit-count-redis.t", 22),
            ("limit-count-redis2.t", 10),
            ("limit-count-redis3.t", 11),
            ("limit-count-redis4.t", 5),
            ("limit-count-redis5.t", 3),
            ("limit-count-redis-cluster.t", 18),
            ("limit-count-redis-cluster2.t", 2),
            ("limit-count-redis-cluster3.t", 6),
            ("limit-count-redis-sentinel.t", 15),
            ("limit-count-redis-delayed-sync.t", 5),
            ("limit-count-redis-delayed-sync2.t", 9),
        ],
    )
    .skip("limit-count.t", [16, 17, 33, 34], NO_PLUGIN)
    .skip("limit-count2.t", [22], META)
    .skip("limit-count5.t", [1, 8], LUA)
    .skip("limit-count5.t", [7], ACCESS_LOG)
    .skip("limit-count-variable.t", [8], ACCESS_LOG)
    .skip("limit-count-sliding.t", 4..=9, REDIS)
    .skip("limit-count-consumer-isolation.t", 1..=5, CONSUMER_BOUND)
    .skip(
        "limit-count-consumer-group-credentials.t",
        1..=8,
        CONSUMER_BOUND,
    )
    .skip("limit-count-redis.t", 1..=22, REDIS)
    .skip("limit-count-redis2.t", 1..=10, REDIS)
    .skip("limit-count-redis3.t", 1..=11, REDIS)
    .skip("limit-count-redis4.t", 1..=5, REDIS)
    .skip("limit-count-redis5.t", 1..=3, REDIS)
    .skip("limit-count-redis-cluster.t", 1..=18, REDIS)
    .skip("limit-count-redis-cluster2.t", 1..=2, REDIS)
    .skip("limit-count-redis-cluster3.t", 1..=6, REDIS)
    .skip("limit-count-redis-sentinel.t", 1..=15, REDIS)
    .skip("limit-count-redis-delayed-sync.t", 1..=5, REDIS)
    .skip("limit-count-redis-delayed-sync2.t", 1..=9, REDIS)
    .cases(limit_count_t())
    .cases(limit_count2_t())
    .cases(limit_count3_5_t())
    .cases(rules_t())
    .cases(variable_and_sliding_t())
}

fn limit_count_t() -> Vec<Case> {
    let f = "limit-count.t";
    let c2_60 = r#"{"count": 2, "time_window": 60, "rejected_code": 503, "key": "remote_addr"}"#;
    let hello = || get("/hello");
    vec![
        case(f, &[1])
            .conf(P, r#"{"count": 2, "time_window": 60, "rejected_code": 503, "key": "remote_addr"}"#),
        case(f, &[2]).conf(P, r#"{"count": 2, "time_window": 60, "rejected_code": 503}"#),
        // TEST 5's other paths are routes of their own (404 at the gateway).
        case(f, &[3, 4, 5])
            .conf(P, c2_60)
            .sends(hello(), &[200, 200, 503, 503])
            .sends(hello(), &[503, 503, 503])
            .wire(),
        case(f, &[6, 7])
            .conf(P, c2_60)
            .sends(hello(), &[200, 200, 503])
            .conf(P, r#"{"count": 3, "time_window": 60, "rejected_code": 503, "key": "remote_addr"}"#)
            .sends(hello(), &[200, 200, 200, 503]),
        case(f, &[8]).refused(P, r#"{"time_window": 60, "rejected_code": 503}"#, "required"),
        case(f, &[9]).refused(P, r#"{"count": -100, "time_window": 60, "rejected_code": 503, "key": "remote_addr"}"#, "negative"),
        case(f, &[10]).refused(P, r#"{"count": -100, "time_window": 60, "rejected_code": 503, "key": "remote_addr"}"#, "negative"),
        case(f, &[11]).refused(P, r#"{"time_window": 60, "rejected_code": 503}"#, "required"),
        case(f, &[12]).refused(P, r#"{"count": -100, "time_window": 60, "rejected_code": 503, "key": "remote_addr"}"#, "negative"),
        case(f, &[13]).refused(P, r#"{"count": -100, "time_window": 60, "rejected_code": 503, "key": "remote_addr"}"#, "negative"),
        case(f, &[14, 15])
            .conf(P, r#"{"count": 2, "time_window": 61, "rejected_code": 503, "key": "remote_addr"}"#)
            .sends(hello(), &[200, 200, 503, 503]),
        case(f, &[18, 19])
            .var("server_addr", "127.0.0.1")
            .conf(P, r#"{"count": 2, "time_window": 60, "rejected_code": 503, "key": "server_addr"}"#)
            .sends(hello(), &[200, 200, 503, 503]),
        // A changed conf starts from zero; the same conf again keeps its counters.
        case(f, &[20, 21])
            .conf(P, r#"{"count": 2, "time_window": 80, "key": "remote_addr"}"#)
            .sends(hello(), &[200, 200, 503])
            .conf(P, r#"{"count": 1, "time_window": 80, "key": "remote_addr"}"#)
            .sends(hello(), &[200, 503]),
        case(f, &[22])
            .conf(P, r#"{"count": 1, "time_window": 82, "key": "remote_addr"}"#)
            .sends(hello(), &[200, 503])
            .conf(P, r#"{"count": 2, "time_window": 82, "key": "remote_addr"}"#)
            .sends(hello(), &[200, 200, 503]),
        case(f, &[23])
            .conf(P, r#"{"count": 2, "time_window": 83, "key": "remote_addr"}"#)
            .sends(hello(), &[200, 200, 503])
            .conf(P, r#"{"count": 2, "time_window": 83, "key": "remote_addr"}"#)
            .sends(hello(), &[503, 503, 503]),
        // APISIX's consumer becomes key-auth's inline consumer.
        case(f, &[24, 25, 26])
            .chain(&[
                ("key-auth", r#"{"consumers": [{"username": "consumer_jack", "key": "auth-jack"}]}"#),
                (P, r#"{"count": 2, "time_window": 60, "rejected_code": 503, "key": "consumer_name"}"#),
            ])
            .sends(hello().with_header("apikey", "auth-jack"), &[200, 200, 503, 503])
            .wire(),
        case(f, &[27, 28, 29])
            .var("service_id", "1")
            .conf(P, r#"{"count": 2, "time_window": 60, "rejected_code": 503, "key": "service_id"}"#)
            .sends(hello(), &[200, 200, 503, 503]),
        case(f, &[30, 31, 32])
            .var("service_id", "1")
            .conf(P, r#"{"count": 2, "time_window": 91, "rejected_code": 503, "key": "service_id"}"#)
            .sends(hello(), &[200, 200, 503, 503]),
        case(f, &[35, 36])
            .conf(P, r#"{"count": 2, "time_window": 95, "rejected_code": 503}"#)
            .sends(hello(), &[200, 200, 503, 503]),
        // The upstream's host names are the gateway's business.
        case(f, &[37, 38])
            .conf(P, r#"{"count": 3, "time_window": 60, "rejected_code": 503}"#)
            .sends(hello(), &[200, 200, 200, 503, 503]),
        case(f, &[39, 40])
            .conf(P, r#"{"count": 3, "time_window": 99, "rejected_code": 503}"#)
            .sends(hello(), &[200, 200, 200, 503, 503]),
        case(f, &[41]).refused(P, r#"{"count": 0, "time_window": 60, "rejected_code": 503, "key": "remote_addr"}"#, "count"),
        case(f, &[42]).refused(P, r#"{"count": 2, "time_window": 0, "rejected_code": 503, "key": "remote_addr"}"#, "time_window"),
    ]
}

fn limit_count2_t() -> Vec<Case> {
    let f = "limit-count2.t";
    let hello = || get("/hello");
    let group = |g: &str| {
        format!(r#"{{"count": 2, "time_window": 60, "rejected_code": 503, "group": "{g}"}}"#)
    };
    let r1 = "route#1#ext-plugin-pre-req#1";
    let r2 = "route#2#ext-plugin-pre-req#1";
    vec![
        case(f, &[1]).refused(P, r#"{"count": 1, "time_window": 600, "rejected_code": 503, "rejected_msg": true, "key": "remote_addr"}"#, "expected a string"),
        case(f, &[2]).refused(P, r#"{"count": 1, "time_window": 600, "rejected_code": 503, "rejected_msg": "", "key": "remote_addr"}"#, "rejected_msg"),
        case(f, &[3, 4, 5])
            .conf(P, r#"{"count": 1, "time_window": 600, "rejected_code": 503,
                         "rejected_msg": "Requests are too frequent, please try again later.", "key": "remote_addr"}"#)
            .send(hello(), pass())
            .send(hello(), stop(503).body("{\"error_msg\":\"Requests are too frequent, please try again later.\"}\n"))
            .wire(),
        // Without the header the key falls back to the client address.
        case(f, &[6, 7, 8])
            .conf(P, r#"{"count": 2, "time_window": 60, "rejected_code": 503, "key": "http_a", "key_type": "var"}"#)
            .sends(hello().with_header("a", "1"), &[200, 200, 503, 503])
            .sends(hello(), &[200, 200, 503, 503]),
        case(f, &[9, 10, 11, 12])
            .conf(P, r#"{"count": 2, "time_window": 60, "rejected_code": 503, "key": "$http_a $http_b", "key_type": "var_combination"}"#)
            .sends(hello().with_header("a", "1"), &[200, 200, 503, 503])
            .send(hello().with_header("a", "1"), stop(503))
            .send(hello().with_header("a", "2"), pass())
            .sends(hello(), &[200, 200, 503, 503]),
        case(f, &[13, 14])
            .conf(P, r#"{"count": 2, "time_window": 60, "rejected_code": 503, "key": "abcdefgh", "key_type": "var_combination"}"#)
            .sends(hello(), &[200, 200, 503, 503])
            .send(hello().with_src_ip("10.0.0.2"), pass()),
        // Two routes in one group share the counter.
        case(f, &[15, 16])
            .chain_at(r1, &[(P, &group("services_1"))])
            .chain_at(r2, &[(P, &group("services_1"))])
            .send_at(r1, hello(), pass())
            .send_at(r2, get("/hello_chunked"), pass())
            .send_at(r1, hello(), stop(503))
            .send_at(r2, get("/hello_chunked"), stop(503)),
        case(f, &[17, 18, 19])
            .chain_at(r1, &[(P, &group("afafafhao"))])
            .chain_at(r2, &[(P, &group("afafafhao"))])
            .send_at(r1, hello(), pass())
            .send_at(r2, get("/hello_chunked"), pass())
            .send_at(r1, hello(), stop(503))
            .send_at(r2, get("/hello_chunked"), stop(503))
            .refused(P, r#"{"count": 1, "time_window": 60, "rejected_code": 503, "group": "afafafhao"}"#, "group"),
        // key_type constant with the default key: one counter, keyed "remote_addr".
        case(f, &[20, 21])
            .chain_at(r1, &[(P, r#"{"count": 2, "time_window": 60, "rejected_code": 503, "key_type": "constant", "group": "afafafhao2"}"#)])
            .chain_at(r2, &[(P, r#"{"count": 2, "time_window": 60, "rejected_code": 503, "key_type": "constant", "group": "afafafhao2"}"#)])
            .send_at(r1, hello(), pass())
            .send_at(r2, get("/hello_chunked").with_src_ip("10.0.0.9"), pass())
            .send_at(r1, hello(), stop(503))
            .send_at(r2, get("/hello_chunked"), stop(503)),
    ]
}

fn limit_count3_5_t() -> Vec<Case> {
    let (f3, f4, f5) = ("limit-count3.t", "limit-count4.t", "limit-count5.t");
    let hello = || get("/hello");
    let c2 = r#"{"count": 2, "time_window": 60}"#;
    let reset = "X-RateLimit-Reset";
    vec![
        // The same conf again (the route's labels changed) keeps the counter; another window
        // length starts a new one; another route has its own.
        case(f3, &[1, 2, 3, 4, 5, 6, 7, 8])
            .conf(P, c2)
            .sends(hello(), &[200, 200])
            .conf(P, c2)
            .sends(hello(), &[503, 503])
            .conf(P, r#"{"count": 2, "time_window": 61}"#)
            .sends(hello(), &[200, 200])
            .chain_at("route#2#ext-plugin-pre-req#1", &[(P, r#"{"count": 2, "time_window": 61}"#)])
            .sends(get("/hello1"), &[200, 200]),
        // Two consumers of basic-auth share the counter keyed by client address. APISIX's
        // consumer-restriction (which admits both) is not a runner plugin and is left out.
        case(f3, &[9, 10, 11, 12, 13])
            .chain(&[
                ("basic-auth", r#"{"consumers": [{"username": "jack2019", "password": "123456"},
                                                 {"username": "jack2020", "password": "123456"}]}"#),
                (P, r#"{"count": 1, "time_window": 60, "rejected_code": 429}"#),
            ])
            .send(hello().with_header("authorization", "Basic amFjazIwMTk6MTIzNDU2"), pass())
            .send(hello().with_header("authorization", "Basic amFjazIwMjA6MTIzNDU2"), stop(429)),
        case(f4, &[1, 2])
            .conf(P, r#"{"count": 1, "time_window": 60}"#)
            .send(hello(), pass().header(reset, "60"))
            .advance(2.0)
            .send(hello(), stop(503).header(reset, "58")),
        case(f4, &[3, 4])
            .conf(P, c2)
            .send(hello(), pass().header("X-RateLimit-Remaining", "1"))
            .advance(1.0)
            .send(hello(), pass().header("X-RateLimit-Remaining", "0"))
            .advance(1.0)
            .send(hello(), stop(503).header("X-RateLimit-Remaining", "0")),
        case(f4, &[5])
            .conf(P, c2)
            .send(hello(), pass().header_is(reset, Hv::AtLeast(1)))
            .advance(1.0)
            .send(hello(), pass().header_is(reset, Hv::AtLeast(1)))
            .advance(1.0)
            .send(hello(), stop(503).header_is(reset, Hv::AtLeast(1))),
        // The environment variable holds `remote_addr` (set by `suite_env`).
        case(f5, &[2, 3])
            .conf(P, r#"{"count": 2, "time_window": 60, "rejected_code": 503, "key": "$ENV://LIMIT_COUNT_KEY"}"#)
            .sends(hello(), &[200, 200, 503, 503])
            .send(hello().with_src_ip("10.0.0.2"), pass()),
        // APISIX names the headers in plugin metadata; here they are conf fields.
        case(f5, &[4, 5])
            .conf(P, r#"{"count": 10, "time_window": 60, "rejected_code": 503, "key_type": "var", "key": "remote_addr",
                         "limit_header": "APISIX-RATELIMIT-QUOTA", "remaining_header": "APISIX-RATELIMIT-REMAINING",
                         "reset_header": "APISIX-RATELIMIT-RESET"}"#)
            .send(
                hello(),
                pass()
                    .header("APISIX-RATELIMIT-QUOTA", "10")
                    .header("APISIX-RATELIMIT-REMAINING", "9")
                    .header_is("APISIX-RATELIMIT-RESET", Hv::AtLeast(0)),
            ),
        case(f5, &[6])
            .conf(P, r#"{"count": 2, "time_window": 10, "key_type": "var", "key": "http_host"}"#)
            .send(hello().with_header("host", "test.com"), pass().header("X-RateLimit-Remaining", "1")),
    ]
}

fn rules_t() -> Vec<Case> {
    let f = "limit-count-rules.t";
    let hello = || get("/hello");
    let rejected = "{\"error_msg\":\"rejected\"}\n";
    let two_rules = |prefixes: Option<(&str, &str)>| {
        let (a, b) = match prefixes {
            Some((a, b)) => (
                format!(r#", "header_prefix": "{a}""#),
                format!(r#", "header_prefix": "{b}""#),
            ),
            None => (String::new(), String::new()),
        };
        format!(
            r#"{{"rejected_code": 503, "rejected_msg": "rejected", "rules": [
                {{"key": "${{http_user}}", "count": "${{http_jack_count}}", "time_window": 60{a}}},
                {{"key": "${{http_project}}", "count": "${{http_apisix_count}}", "time_window": 60{b}}}]}}"#
        )
    };
    let jack = || {
        hello()
            .with_header("user", "jack")
            .with_header("jack-count", "2")
    };
    let apisix = || {
        hello()
            .with_header("project", "apisix")
            .with_header("apisix-count", "3")
    };
    vec![
        case(f, &[1]).refused(
            P,
            r#"{"count": 2, "time_window": 5, "rejected_code": 503, "key_type": "var", "key": "remote_addr",
                "rules": [{"count": 1, "time_window": 10, "key": "${http_company}"}]}"#,
            "exclusive",
        ),
        case(f, &[2]).refused(
            P,
            r#"{"rejected_code": 503, "rules": [{"count": 5, "time_window": 10, "key": "${http_company}"},
                                               {"count": 8, "time_window": 20, "key": "${http_company}"}]}"#,
            "repeat the key",
        ),
        case(f, &[3, 4]).conf(P, &two_rules(None)).send(hello(), stop(500)).wire(),
        case(f, &[5])
            .conf(P, &two_rules(None))
            .send(jack(), pass())
            .send(jack(), pass())
            .send(jack(), stop(503).body(rejected)),
        case(f, &[6])
            .conf(P, &two_rules(None))
            .sends(apisix(), &[200, 200, 200])
            .send(apisix(), stop(503).body(rejected)),
        case(f, &[7, 8, 9])
            .conf(P, r#"{"rejected_code": 503, "rejected_msg": "rejected",
                         "rules": [{"count": "${http_count ?? 2}", "time_window": "${http_tw ?? 5}", "key": "${remote_addr}"}]}"#)
            .sends(hello(), &[200, 200])
            .send(hello(), stop(503).body(rejected))
            .advance(5.0)
            .send(hello().with_header("count", "1"), pass())
            .send(hello().with_header("count", "1"), stop(503).body(rejected)),
        case(f, &[10, 11])
            .conf(P, r#"{"rejected_code": 503, "rejected_msg": "rejected", "show_limit_quota_header": true,
                         "rules": [{"count": 2, "time_window": 2, "key": "${remote_addr}_2s"},
                                   {"count": 3, "time_window": 5, "key": "${remote_addr}_5s"}]}"#)
            .sends(hello(), &[200, 200, 503])
            .advance(2.0)
            .sends(hello(), &[200, 503]),
        case(f, &[12, 13, 14])
            .conf(P, &two_rules(Some(("jack", "bar"))))
            .send(
                jack(),
                pass()
                    .header("X-Jack-RateLimit-Limit", "2")
                    .header("X-Jack-RateLimit-Remaining", "1")
                    .header("X-Jack-RateLimit-Reset", "60"),
            )
            .send(
                apisix(),
                pass()
                    .header("X-Bar-RateLimit-Limit", "3")
                    .header("X-Bar-RateLimit-Remaining", "2")
                    .header("X-Bar-RateLimit-Reset", "60"),
            )
            .wire(),
        case(f, &[15, 16, 17])
            .conf(P, &two_rules(None))
            .send(
                jack(),
                pass()
                    .header("X-1-RateLimit-Limit", "2")
                    .header("X-1-RateLimit-Remaining", "1")
                    .header("X-1-RateLimit-Reset", "60"),
            )
            .send(
                apisix(),
                pass()
                    .header("X-2-RateLimit-Limit", "3")
                    .header("X-2-RateLimit-Remaining", "2")
                    .header("X-2-RateLimit-Reset", "60"),
            ),
        // APISIX shows the resolved key in its log; here the counts show it: without the header
        // the key is `apisix`, the same as with `project: apisix`.
        case(f, &[18, 19, 20])
            .chain_at(RULES_KEY, &[(P, r#"{"rejected_code": 503, "rules": [{"count": 1, "time_window": 10, "key": "${http_project ?? apisix}"}]}"#)])
            .send(hello().with_header("project", "kubernetes"), pass())
            .send(hello(), pass())
            .send(hello(), stop(503))
            .send(hello().with_header("project", "apisix"), stop(503))
            .send(hello().with_header("project", "kubernetes"), stop(503)),
        case(f, &[21, 22])
            .conf(P, r#"{"rejected_code": 503, "rules": [{"key": "${http_x_user}", "count": 2, "time_window": 60},
                                                        {"key": "${http_x_project}", "count": 5, "time_window": 60}]}"#)
            .send(
                hello().with_header("x-user", "testuser").with_header("x-project", "myproject"),
                pass().header("X-1-RateLimit-Remaining", "1").header("X-2-RateLimit-Remaining", "4"),
            ),
    ]
}

fn variable_and_sliding_t() -> Vec<Case> {
    let (f, fs) = ("limit-count-variable.t", "limit-count-sliding.t");
    let hello = || get("/hello");
    let vars = r#"{"count": "${http_count ?? 2}", "time_window": "${http_time_window ?? 5}",
                   "rejected_code": 503, "key_type": "var", "key": "remote_addr", "policy": "local"}"#;
    let with = |n: &str, v: &str| hello().with_header(n, v);
    let three_in_two = || with("count", "3").with_header("time-window", "2");
    let mut bad_counts = case(f, &[9, 10]).conf(P, vars);
    let mut bad_windows = case(f, &[11]).conf(P, vars);
    for v in ["0", "-1", "1.5", "9999999999999999"] {
        bad_counts = bad_counts.send(with("count", v), stop(500));
        bad_windows = bad_windows.send(with("time_window", v), stop(500));
    }
    vec![
        case(f, &[1, 2]).conf(P, vars).sends(hello(), &[200, 200, 503]).wire(),
        case(f, &[3]).conf(P, vars).sends(with("count", "5"), &[200, 200, 200, 200, 200, 503]),
        case(f, &[4])
            .conf(P, vars)
            .send(three_in_two(), pass().header("X-RateLimit-Limit", "3"))
            .sends(three_in_two(), &times(2, 200))
            .send(three_in_two(), stop(503))
            .advance(2.0)
            .sends(three_in_two(), &times(3, 200)),
        case(f, &[5, 6])
            .conf(P, r#"{"count": "${http_count ?? 2}", "time_window": 10, "rejected_code": 503,
                         "key_type": "var", "key": "remote_addr", "window_type": "fixed"}"#)
            .send(with("count", "3"), pass().header("x-ratelimit-remaining", "2"))
            .send(with("count", "2"), pass().header("x-ratelimit-remaining", "0"))
            .send(with("count", "5"), pass().header("x-ratelimit-remaining", "2")),
        case(f, &[7])
            .conf(P, r#"{"count": "${http_count ?? 2}", "time_window": 10, "key_type": "var", "key": "http_host"}"#)
            .send(with("host", "test.com"), pass().header("X-RateLimit-Limit", "2")),
        bad_counts,
        bad_windows,
        case(f, &[12, 13])
            .conf(P, r#"{"rejected_code": 503, "rules": [{"key": "${http_user}", "count": "${http_count ?? 2}", "time_window": 60}]}"#)
            .send(with("user", "jack").with_header("count", "0"), stop(500)),
        case(fs, &[1, 2])
            .conf(P, r#"{"count": 2, "time_window": 5, "rejected_code": 503, "key": "remote_addr", "window_type": "sliding"}"#)
            .sends(hello(), &[200, 200, 503]),
        // Remaining is a whole number and Reset has at most two decimals (here: none).
        case(fs, &[3])
            .conf(P, r#"{"count": 2, "time_window": 5, "rejected_code": 503, "key": "remote_addr", "window_type": "sliding"}"#)
            .send(hello(), pass())
            .advance(1.0)
            .send(hello(), pass())
            .advance(1.0)
            .send(hello(), stop(503))
            .advance(1.5)
            .send(hello(), stop(503))
            .advance(1.5)
            .send(hello(), pass())
            .check("headers are numbers", |seen| {
                for s in seen {
                    for h in ["X-RateLimit-Remaining", "X-RateLimit-Reset"] {
                        let v = s.header(h).ok_or(format!("{h} missing"))?;
                        v.parse::<u64>().map_err(|_| format!("{h}: {v:?} is not whole"))?;
                    }
                }
                Ok(())
            }),
    ]
}

/// LIMIT_COUNT_KEY, as APISIX's limit-count5.t sets it.
pub fn suite_env() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| std::env::set_var("LIMIT_COUNT_KEY", "remote_addr"));
}

#[tokio::test(start_paused = true)]
async fn apisix_cases_in_memory() {
    suite_env();
    suite().run().await;
}

#[tokio::test]
async fn a_sample_over_the_wire() {
    suite_env();
    suite().run_wire().await;
}
