//! echo against APISIX's t/plugin/echo.t: the response phase rewrites the upstream's answer
//! (APISIX's test upstream answers `hello world` and a newline).

use crate::kit::why::*;
use crate::kit::*;

const P: &str = "echo";

pub fn suite() -> Suite {
    Suite::new(P, &[("echo.t", 11)])
        .skip("echo.t", [7], ADMIN_OUTPUT)
        .cases(cases())
}

fn hello_world() -> Upstream {
    upstream(200)
        .header("Content-Type", "text/plain")
        .body("hello world\n")
}

fn cases() -> Vec<Case> {
    let f = "echo.t";
    vec![
        case(f, &[1]).conf(P, r#"{"before_body": "body before", "body": "body to attach", "after_body": "body to attach"}"#),
        case(f, &[2]).refused(P, r#"{"before_body": "body before", "body": "body to attach", "after_body": 10}"#, "expected a string"),
        case(f, &[3, 4])
            .conf(
                P,
                r#"{"before_body": "before the body modification ", "body": "hello upstream",
                    "after_body": " after the body modification.",
                    "headers": {"Location": "https://www.iresty.com", "Authorization": "userpass"}}"#,
            )
            .respond(
                hello_world(),
                RespExpect::default()
                    .body("before the body modification hello upstream after the body modification.")
                    .header("Location", "https://www.iresty.com")
                    .header("Authorization", "userpass"),
            )
            .wire(),
        case(f, &[5, 6])
            .conf(P, r#"{"before_body": "before the body modification ", "headers": {"Location": "https://www.iresty.com"}}"#)
            .respond(
                hello_world(),
                RespExpect::default()
                    .body("before the body modification hello world\n")
                    .header("Location", "https://www.iresty.com"),
            ),
        case(f, &[8, 9])
            .conf(P, r#"{"body": "hello upstream"}"#)
            .respond(hello_world(), RespExpect::default().body("hello upstream").does_not_ask("request_time")),
        case(f, &[10, 11])
            .conf(P, r#"{"before_body": "before the body modification ", "after_body": " after the body modification."}"#)
            .respond(
                hello_world(),
                RespExpect::default().body("before the body modification hello world\n after the body modification."),
            ),
    ]
}

run_the_table!();
