//! limit-req against APISIX's t/plugin/limit-req*.t.

use crate::kit::why::*;
use crate::kit::*;

const P: &str = "limit-req";

pub fn suite() -> Suite {
    Suite::new(
        P,
        &[
            ("limit-req.t", 21),
            ("limit-req2.t", 10),
            ("limit-req3.t", 3),
            ("limit-req-shared-counter.t", 3),
            ("limit-req-redis.t", 30),
            ("limit-req-redis-cluster.t", 22),
        ],
    )
    .skip("limit-req.t", [8, 9, 19, 20], NO_PLUGIN)
    .skip("limit-req3.t", [2], TLS)
    .skip("limit-req-shared-counter.t", 1..=3, CONSUMER_BOUND)
    .skip("limit-req-redis.t", 1..=30, REDIS)
    .skip("limit-req-redis-cluster.t", 1..=22, REDIS)
    .cases(cases())
}

fn cases() -> Vec<Case> {
    let (f, f2, f3) = ("limit-req.t", "limit-req2.t", "limit-req3.t");
    let hello = || get("/hello");
    let slow = r#"{"rate": 0.1, "burst": 0.1, "rejected_code": 503, "key": "remote_addr"}"#;
    let combination = r#"{"rate": 0.1, "burst": 0.1, "rejected_code": 503, "key": "$http_a $http_b",
                           "key_type": "var_combination"}"#;
    vec![
        case(f, &[1]).conf(P, r#"{"rate": 1, "burst": 0, "rejected_code": 503, "key": "remote_addr"}"#),
        // Block 2 checks limit-conn's schema: `conn` and `default_conn_delay` are missing.
        case(f, &[2]).refused("limit-conn", r#"{"burst": 0, "rejected_code": 503, "key": "remote_addr"}"#, "missing field"),
        // Requests one after another: each waits out its delay before the next arrives.
        case(f, &[3, 4])
            .conf(P, r#"{"rate": 4, "burst": 2, "rejected_code": 503, "key": "remote_addr"}"#)
            .send(hello(), pass().delay_ms(0))
            .send(hello(), pass().delay_ms(250))
            .send(hello(), pass().delay_ms(250))
            .send(hello(), pass().delay_ms(250)),
        case(f, &[5, 6]).conf(P, slow).sends(hello(), &[200, 503, 503, 503]).wire(),
        case(f, &[7]).refused(P, r#"{"rate": -1, "burst": 0.1, "rejected_code": 503, "key": "remote_addr"}"#, "rate"),
        case(f, &[10])
            .var("server_addr", "127.0.0.1")
            .conf(P, r#"{"rate": 4, "burst": 2, "rejected_code": 503, "key": "server_addr"}"#)
            .send(hello(), pass()),
        case(f, &[11]).conf(P, r#"{"rate": 4, "burst": 2, "key": "remote_addr"}"#).sends(hello(), &[200]),
        // APISIX binds the limit to the consumer; with one consumer, the same limit on the route
        // keyed by consumer_name behaves alike.
        case(f, &[12, 13, 14])
            .chain(&[
                ("key-auth", r#"{"consumers": [{"username": "new_consumer", "key": "auth-jack"}]}"#),
                (P, r#"{"rate": 3, "burst": 2, "rejected_code": 403, "key": "consumer_name"}"#),
            ])
            .sends(hello().with_header("apikey", "auth-jack"), &[200, 200, 200]),
        case(f, &[15, 16])
            .chain(&[
                ("key-auth", r#"{"consumers": [{"username": "new_consumer", "key": "auth-jack"}]}"#),
                (P, r#"{"rate": 0.1, "burst": 0.1, "rejected_code": 403, "key": "consumer_name"}"#),
            ])
            .sends(hello().with_header("apikey", "auth-jack"), &[200, 403, 403, 403]),
        // No consumer: the key falls back to the client address.
        case(f, &[17, 18])
            .conf(P, r#"{"rate": 2, "burst": 1, "key": "consumer_name"}"#)
            .send(hello(), pass()),
        case(f, &[21]).refused(P, r#"{"rate": 0, "burst": 0, "rejected_code": 503, "key": "remote_addr"}"#, "rate"),
        // The second request waits 10 s (APISIX's client gives up after 0.5 s).
        case(f2, &[1, 2])
            .conf(P, r#"{"rate": 0.1, "burst": 4, "rejected_code": 503, "key": "remote_addr"}"#)
            .send(hello(), pass().delay_ms(0))
            .send(hello(), pass().delay_ms(10_000)),
        case(f2, &[3, 4])
            .conf(P, r#"{"rate": 0.1, "burst": 4, "rejected_code": 503, "key": "remote_addr", "nodelay": true}"#)
            .send(hello(), pass().delay_ms(0))
            .send(hello(), pass().delay_ms(0)),
        case(f2, &[5, 6]).conf(P, combination).sends(hello().with_header("a", "1"), &[200, 503]),
        case(f2, &[7])
            .conf(P, combination)
            .send(hello().with_header("a", "1"), pass())
            .send(hello().with_header("a", "2"), pass()),
        case(f2, &[8]).conf(P, combination).sends(hello(), &[200, 503]),
        case(f2, &[9, 10])
            .conf(P, r#"{"rate": 0.1, "burst": 0.1, "rejected_code": 503, "key": "abcdefgh",
                         "key_type": "var_combination"}"#)
            .sends(hello(), &[200, 503])
            .send(hello().with_src_ip("10.0.0.2"), pass()),
        // Two requests at once over HTTP/2: one passes, one is rejected.
        case(f3, &[1, 3])
            .conf(P, r#"{"rate": 0.1, "burst": 0.1, "rejected_code": 503, "key": "$remote_addr",
                         "key_type": "var_combination"}"#)
            .sends(hello(), &[200, 503]),
    ]
}

run_the_table!();
