//! limit-conn against APISIX's t/plugin/limit-conn*.t.
//!
//! APISIX's concurrency blocks send ten requests at once to a slow upstream: here, ten requests
//! without an answer in between (all in flight). Sequential requests each get their answer
//! through the post-resp half, which releases the slot.

use crate::kit::why::*;
use crate::kit::{status as status_of, *};

const P: &str = "limit-conn";

const LOG: &str = "asserts APISIX's debug log lines only (two limit-conn instances each logging \
                   the latency they learn)";

fn ten(ok: usize) -> Vec<u16> {
    let mut v = vec![200; ok];
    v.resize(10, 503);
    v
}

pub fn suite() -> Suite {
    Suite::new(
        P,
        &[
            ("limit-conn.t", 34),
            ("limit-conn2.t", 13),
            ("limit-conn3.t", 3),
            ("limit-conn-variable.t", 18),
            ("limit-conn-shared-counter.t", 6),
            ("limit-conn-redis.t", 26),
            ("limit-conn-redis-cluster.t", 10),
        ],
    )
    .skip("limit-conn.t", [13, 14, 23, 24], NO_PLUGIN)
    .skip("limit-conn2.t", [4], LOG)
    .skip("limit-conn3.t", [2], TLS)
    .skip("limit-conn-shared-counter.t", 1..=6, CONSUMER_BOUND)
    .skip("limit-conn-redis.t", 1..=26, REDIS)
    .skip("limit-conn-redis-cluster.t", 1..=10, REDIS)
    .cases(limit_conn_t())
    .cases(limit_conn2_3_t())
    .cases(variable_t())
}

fn conf(conn: u32, burst: u32, key: &str) -> String {
    format!(
        r#"{{"conn": {conn}, "burst": {burst}, "default_conn_delay": 0.1, "rejected_code": 503, "key": "{key}"}}"#
    )
}

fn limit_conn_t() -> Vec<Case> {
    let f = "limit-conn.t";
    let lc = || get("/limit_conn");
    let jack = || lc().with_header("apikey", "auth-jack");
    let key_auth = r#"{"consumers": [{"username": "consumer_jack", "key": "auth-jack"}]}"#;
    vec![
        case(f, &[1]).conf(P, &conf(1, 0, "remote_addr")),
        case(f, &[2]).refused(P, r#"{"conn": 1, "default_conn_delay": 0.1, "rejected_code": 503, "key": "remote_addr"}"#, "required"),
        case(f, &[3, 4]).conf(P, &conf(100, 50, "remote_addr")).sends(lc(), &ten(10)),
        case(f, &[5, 6]).conf(P, &conf(2, 1, "remote_addr")).sends(lc(), &ten(3)).wire(),
        case(f, &[7, 8]).conf(P, &conf(5, 1, "remote_addr")).sends(lc(), &ten(6)),
        case(f, &[9]).refused(P, r#"{"burst": 1, "default_conn_delay": 0.1, "rejected_code": 503, "key": "remote_addr"}"#, "required"),
        case(f, &[10]).refused(P, r#"{"conn": -1, "burst": 1, "default_conn_delay": 0.1, "rejected_code": 503, "key": "remote_addr"}"#, "negative"),
        case(f, &[11]).refused(P, r#"{"burst": 1, "default_conn_delay": 0.1, "rejected_code": 503, "key": "remote_addr"}"#, "required"),
        case(f, &[12]).refused(P, r#"{"conn": -1, "burst": 1, "default_conn_delay": 0.1, "rejected_code": 503, "key": "remote_addr"}"#, "negative"),
        case(f, &[15])
            .var("server_addr", "127.0.0.1")
            .conf(P, &conf(100, 50, "server_addr"))
            .send(lc(), pass()),
        case(f, &[16, 17])
            .conf(P, &conf(5, 1, "http_x_real_ip"))
            .sends(lc().with_header("x-real-ip", "10.10.10.1"), &ten(6))
            .send(lc().with_header("x-real-ip", "10.10.10.9"), pass()),
        case(f, &[18, 19])
            .conf(P, &conf(5, 1, "http_x_forwarded_for"))
            .sends(lc().with_header("x-forwarded-for", "10.10.10.2"), &ten(6)),
        case(f, &[20]).conf(P, r#"{"conn": 100, "burst": 50, "default_conn_delay": 0.1, "key": "remote_addr"}"#),
        // A global rule's chain is prepared under its own key.
        case(f, &[21, 22])
            .chain_at("global_rule#1#ext-plugin-pre-req#1", &[(P, r#"{"conn": 2, "burst": 1, "default_conn_delay": 0.1, "key": "remote_addr"}"#)])
            .sends(lc(), &ten(3)),
        case(f, &[25])
            .refused(P, r#"{"conn": 0, "burst": 0, "default_conn_delay": 0.1, "rejected_code": 503, "key": "remote_addr"}"#, "conn")
            .refused(P, r#"{"conn": 1, "burst": 0, "default_conn_delay": 0, "rejected_code": 503, "key": "remote_addr"}"#, "default_conn_delay"),
        case(f, &[26, 27, 28])
            .chain(&[("key-auth", key_auth), (P, &conf(100, 50, "consumer_name"))])
            .sends(jack(), &ten(10)),
        case(f, &[29, 30])
            .chain(&[("key-auth", key_auth), (P, &conf(2, 1, "consumer_name"))])
            .sends(jack(), &ten(3))
            .wire(),
        case(f, &[31]).refused(P, r#"{"conn": 1, "default_conn_delay": 0.1, "rejected_code": 503, "key": "consumer_name"}"#, "required"),
        // One request after another, each answered: never more than one in flight.
        (0..6).fold(
            case(f, &[32, 33]).conf(
                P,
                r#"{"conn": 1, "burst": 0, "default_conn_delay": 0.3, "rejected_code": 503,
                    "key": "remote_addr", "allow_degradation": true}"#,
            ),
            |c, _| c.send(get("/hello"), pass()).respond(upstream(200), RespExpect::default()),
        ),
        case(f, &[34]).refused(
            P,
            r#"{"conn": 1, "burst": 1, "default_conn_delay": 0.1, "rejected_code": 503, "key": "remote_addr",
                "allow_degradation": "true1"}"#,
            "expected a boolean",
        ),
    ]
}

fn limit_conn2_3_t() -> Vec<Case> {
    let (f, f3) = ("limit-conn2.t", "limit-conn3.t");
    let lc = || get("/limit_conn");
    let one = |extra: &str| {
        format!(
            r#"{{"conn": 1, "burst": 0, "default_conn_delay": 0.3, "rejected_code": 503, "key": "remote_addr"{extra}}}"#
        )
    };
    let combination = r#"{"conn": 1, "burst": 0, "default_conn_delay": 0.1, "rejected_code": 503,
                           "key": "$http_a $http_b", "key_type": "var_combination"}"#;
    vec![
        // APISIX logs the latency it learns; here the answer's request_time is read, and the
        // released slot admits the next request.
        case(f, &[1, 2])
            .conf(P, &one(""))
            .send(get("/mysleep?seconds=0.1"), pass())
            .respond(upstream(200).var("request_time", "0.1"), RespExpect::default().asks("request_time"))
            .send(get("/mysleep?seconds=0.1"), pass())
            .wire(),
        case(f, &[3])
            .chain_at("global_rule#1#ext-plugin-pre-req#1", &[(P, &one(""))])
            .chain_at("route#1#ext-plugin-pre-req#1", &[(P, &one(""))])
            .send(get("/hello"), pass()),
        case(f, &[5, 6])
            .conf(P, &one(r#", "only_use_default_delay": true"#))
            .send(get("/hello1"), pass())
            .respond(upstream(200).var("request_time", "0.1"), RespExpect::default().does_not_ask("request_time")),
        case(f, &[7]).refused(P, r#"{"conn": 1, "burst": 1, "default_conn_delay": 0.1, "rejected_code": 503, "key": "remote_addr", "rejected_msg": true}"#, "expected a string"),
        case(f, &[8]).refused(P, r#"{"conn": 1, "burst": 1, "default_conn_delay": 0.1, "rejected_code": 503, "key": "remote_addr", "rejected_msg": ""}"#, "rejected_msg"),
        case(f, &[9, 10, 11])
            .conf(P, combination)
            .send(lc().with_header("a", "1"), pass())
            .respond(upstream(200), RespExpect::default())
            .send(lc().with_header("a", "2"), pass())
            .respond(upstream(200), RespExpect::default())
            .sends(lc(), &[200, 503, 503, 503, 503]),
        case(f, &[12, 13])
            .conf(P, r#"{"conn": 1, "burst": 0, "default_conn_delay": 0.1, "rejected_code": 503,
                         "key": "abcdefgh", "key_type": "var_combination"}"#)
            .sends(lc(), &[200, 503, 503, 503, 503])
            .send(lc().with_src_ip("10.0.0.2"), pass()),
        case(f3, &[1, 3])
            .conf(P, r#"{"conn": 1, "burst": 0, "default_conn_delay": 0.1, "rejected_code": 503,
                         "key": "$remote_addr", "key_type": "var_combination"}"#)
            .sends(lc(), &[200, 503]),
    ]
}

fn variable_t() -> Vec<Case> {
    let f = "limit-conn-variable.t";
    let lc = || get("/limit_conn");
    let vars = r#"{"conn": "${http_conn ?? 5}", "burst": "${http_burst ?? 2}", "default_conn_delay": 0.1,
                   "rejected_code": 503, "key": "remote_addr"}"#;
    let rules = r#"{"default_conn_delay": 0.01, "rejected_code": 503, "rules": [
        {"conn": 4, "burst": 3, "key": "${http_user}"},
        {"conn": "${http_project_conn ?? 3}", "burst": "${http_project_burst ?? 2}", "key": "${http_project}"}]}"#;
    let one = |tests: &[u32], name: &str, value: &str, code: u16| {
        case(f, tests)
            .conf(P, vars)
            .send(lc().with_header(name, value), status_of(code))
    };
    vec![
        case(f, &[1, 2]).conf(P, vars).sends(lc(), &ten(7)).wire(),
        case(f, &[3]).conf(P, vars).sends(lc().with_header("conn", "3"), &ten(5)),
        case(f, &[4])
            .conf(P, vars)
            .sends(lc().with_header("conn", "3").with_header("burst", "4"), &ten(7)),
        case(f, &[5]).refused(
            P,
            r#"{"conn": 2, "burst": 1, "default_conn_delay": 0.01, "rejected_code": 503, "key": "remote_addr",
                "rules": [{"conn": 1, "burst": 0, "key": "${http_company}"}]}"#,
            "exclusive",
        ),
        case(f, &[6, 7]).conf(P, rules).sends(lc().with_header("user", "jack"), &ten(7)),
        case(f, &[8]).conf(P, rules).sends(lc().with_header("project", "apisix"), &ten(5)),
        case(f, &[9]).conf(P, rules).sends(
            lc().with_header("project", "apisix")
                .with_header("project-conn", "2")
                .with_header("project-burst", "1"),
            &ten(3),
        ),
        case(f, &[10]).conf(P, rules).sends(lc(), &[500; 10]),
        case(f, &[11]).conf(P, vars).send(lc(), pass()),
        one(&[12], "conn", "0", 500),
        one(&[13], "conn", "-1", 500),
        one(&[14], "conn", "1.5", 500),
        one(&[15], "burst", "1.5", 500),
        one(&[16], "conn", "99007199254740993", 500),
        one(&[17], "burst", "0", 200),
        one(&[18], "burst", "-1", 500),
    ]
}

run_the_table!();
