//! fault-injection against APISIX's t/plugin/fault-injection*.t.
//!
//! Several APISIX blocks put proxy-rewrite (a runner plugin too) or redirect (APISIX's own,
//! which runs after the runner's pre-req chain) beside the fault; the first is kept in the chain,
//! the second is the gateway's business once the request passes.

use crate::kit::*;

const P: &str = "fault-injection";

pub fn suite() -> Suite {
    Suite::new(P, &[("fault-injection.t", 39), ("fault-injection2.t", 7)]).cases(cases())
}

fn cases() -> Vec<Case> {
    let (f, f2) = ("fault-injection.t", "fault-injection2.t");
    let hello = || get("/hello");
    let fault = "Fault Injection!\n";
    let with_rewrite = |conf: &str, uri: &str| {
        vec![
            (P.to_owned(), conf.to_owned()),
            ("proxy-rewrite".to_owned(), format!(r#"{{"uri": "{uri}"}}"#)),
        ]
    };
    let chain = |c: Case, entries: Vec<(String, String)>| {
        let e: Vec<(&str, &str)> = entries
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        c.chain(&e)
    };
    let abort_vars = r#"{"abort": {"http_status": 403, "body": "Fault Injection!\n", "vars": [
        [["arg_name", "==", "jack"], ["arg_age", "!", "<", 18]],
        [["http_apikey", "==", "api-key"]]]}}"#;
    vec![
        case(f, &[1]).refused(P, r#"{"abort": {"http_status": 100, "body": "Fault Injection!\n"}}"#, "abort.http_status"),
        case(f, &[2]).refused(P, r#"{"abort": {}}"#, "missing field"),
        case(f, &[3]).refused(P, r#"{}"#, "at least one"),
        case(f, &[4]).refused(P, r#"{"delay": {}}"#, "missing field"),
        case(f, &[5]).refused(P, r#"{"delay": {"duration": "test"}}"#, "invalid type"),
        // Not JSON at all.
        case(f, &[6]).refused(P, r#"{"delay": {"duration": 0.1.1}}"#, "line 1"),
        case(f, &[7]).refused(P, r#"{"delay": {"duration": 0. 1}}"#, "line 1"),
        case(f, &[8]).refused(P, r#"{"delay": {"duration": 0.1, "vars": {"a", "b"}}}"#, "line 1"),
        case(f, &[9]).refused(P, r#"{"abort": {"http_status": 200, "vars": {"a", "b"}}}"#, "line 1"),
        chain(case(f, &[10, 11]), with_rewrite(r#"{"delay": {"duration": 1}}"#, "/hello"))
            .send(get("/hello"), pass().delay_ms(1000).path("/hello")),
        chain(case(f, &[12, 13]), with_rewrite(r#"{"abort": {"http_status": 200, "body": "Fault Injection!\n"}}"#, "/hello"))
            .send(hello(), stop(200).body(fault))
            .wire(),
        chain(case(f, &[14, 15]), with_rewrite(r#"{"abort": {"http_status": 405, "body": "Fault Injection!\n"}}"#, "/hello"))
            .send(hello(), stop(405).body(fault)),
        case(f, &[16, 17])
            .conf(P, r#"{"abort": {"http_status": 200, "body": "Fault Injection!\n"}}"#)
            .send(hello(), stop(200).body(fault)),
        // Never fires: the request goes on (to APISIX's redirect).
        case(f, &[18, 19])
            .conf(P, r#"{"abort": {"http_status": 200, "body": "Fault Injection!\n", "percentage": 0}}"#)
            .send(hello(), pass()),
        chain(case(f, &[20, 21]), with_rewrite(r#"{"delay": {"duration": 1, "percentage": 0}}"#, "/hello1"))
            .send(hello(), pass().delay_ms(0).path("/hello1")),
        chain(case(f, &[22, 23]), with_rewrite(r#"{"abort": {"http_status": 200, "body": "client addr: $remote_addr\n"}}"#, "/hello"))
            .send(hello(), stop(200).body("client addr: 127.0.0.1\n"))
            .wire(),
        chain(case(f, &[24, 25]), with_rewrite(r#"{"abort": {"http_status": 200}}"#, "/hello"))
            .send(hello(), stop(200).body("")),
        case(f, &[26]).conf(
            P,
            r#"{"abort": {"http_status": 403, "body": "Fault Injection!\n", "vars": [
                   [["arg_name", "==", "jack"], ["arg_age", "!", "<", 18]], [["http_apikey", "==", "api-key"]]]},
                "delay": {"duration": 2, "vars": [
                   [["arg_name", "==", "jack"], ["arg_age", "!", "<", 18]], [["http_apikey", "==", "api-key"]]]}}"#,
        ),
        case(f, &[27]).refused(
            P,
            r#"{"abort": {"http_status": 403, "body": "Fault Injection!\n", "vars": [["arg_name", "!=", "jack"]]},
                "delay": {"duration": 2, "vars": [[["arg_name", "==", "jack"], ["arg_age", "!", "<", 18]],
                                                  [["http_apikey", "==", "api-key"]]]}}"#,
            "abort.vars",
        ),
        case(f, &[28, 29, 30, 31, 32, 33])
            .conf(P, abort_vars)
            .send(get("/hello?name=jack&age=18").with_header("apikey", "api-key"), stop(403).body(fault))
            .send(get("/hello?name=jack&age=20"), stop(403).body(fault))
            .send(hello().with_header("apikey", "api-key"), stop(403).body(fault))
            .send(get("/hello?name=allen"), pass())
            .send(hello(), pass())
            .wire(),
        case(f, &[34, 35, 36])
            .conf(P, r#"{"delay": {"duration": 2, "vars": [[["arg_name", "==", "jack"], ["arg_age", "!", "<", 18]]]}}"#)
            .send(get("/hello?name=jack&age=22"), pass().delay_ms(2000))
            .send(hello(), pass().delay_ms(0)),
        case(f, &[37, 38, 39])
            .conf(
                P,
                r#"{"abort": {"http_status": 403, "body": "Fault Injection!\n",
                              "vars": [[["arg_name", "==", "jack"], ["arg_age", "!", "<", 18]]]},
                    "delay": {"duration": 2, "vars": [[["http_apikey", "==", "api-key"]]]}}"#,
            )
            .send(get("/hello?name=jack&age=18").with_header("apikey", "api-key"), stop(403).body(fault).delay_ms(2000))
            .send(get("/hello?name=jack&age=16").with_header("apikey", "api-key"), pass().delay_ms(2000)),
        case(f2, &[1, 2, 3])
            .conf(
                P,
                r#"{"abort": {"http_status": 403, "body": "Fault Injection!\n",
                              "vars": [["!AND", ["arg_name", "==", "jack"], ["arg_age", "!", "<", 18]]]}}"#,
            )
            .send(get("/hello?name=jack&age=17"), stop(403).body(fault))
            .send(get("/hello?name=jack&age=18"), pass()),
        case(f2, &[4, 5])
            .conf(P, r#"{"abort": {"http_status": 200, "headers": {"h1": "v1", "h2": 2, "h3": "$uri"}}}"#)
            .send(hello(), stop(200).header("h1", "v1").header("h2", "2").header("h3", "/hello"))
            .wire(),
        case(f2, &[6, 7])
            .conf(P, r#"{"abort": {"http_status": 200, "body": "{\"count\": $arg_count}"}}"#)
            .send(get("/hello?count=2"), stop(200).body("{\"count\": 2}")),
    ]
}

run_the_table!();
