//! api-breaker against APISIX's t/plugin/api-breaker.t.
//!
//! APISIX's upstream answers `/api_breaker?code=N` with status N; here each request that passes
//! gets that answer through the post-resp half. APISIX restarts between blocks of this file, so
//! every case starts with a closed breaker.

use crate::kit::*;

const P: &str = "api-breaker";

const SCHEMA_OUTPUT: &str = "prints the defaults APISIX's schema check writes back into the conf \
                             (its admin API's view); the defaults themselves are exercised by \
                             blocks 13-17";

pub fn suite() -> Suite {
    Suite::new(P, &[("api-breaker.t", 20)])
        .skip("api-breaker.t", [2, 3, 4], SCHEMA_OUTPUT)
        .cases(cases())
}

fn cases() -> Vec<Case> {
    let f = "api-breaker.t";
    let hit = || get("/api_breaker");
    let statuses = r#"{"break_response_code": 599, "unhealthy": {"http_statuses": [500, 503], "failures": 3},
                       "healthy": {"http_statuses": [200, 206], "successes": 3}}"#;
    let defaults = r#"{"break_response_code": 502, "break_response_body": "{\"message\":\"breaker opened.\"}",
        "break_response_headers": [{"key": "Content-Type", "value": "application/json"},
                                   {"key": "Content-Type", "value": "application/json+v1"}],
        "unhealthy": {"failures": 3}, "healthy": {"successes": 3}}"#;
    // Block 19: twenty failures a second apart, with an open time that doubles up to 10 s.
    // APISIX counts whole seconds, so its answers fall on other seconds, but as here four of
    // the twenty reach the upstream: at 0, 2, 6 and 14 s (open 2, 4, 8 and 10 s).
    let mut doubling = case(f, &[18, 19]).conf(
        P,
        r#"{"break_response_code": 502, "max_breaker_sec": 10,
            "unhealthy": {"http_statuses": [500, 503], "failures": 1}, "healthy": {"successes": 3}}"#,
    );
    for second in 0..20 {
        doubling = if [0, 2, 6, 14].contains(&second) {
            doubling
                .send(hit(), pass())
                .respond(upstream(500), RespExpect::default())
        } else {
            doubling.send(hit(), stop(502))
        };
        doubling = doubling.advance(1.0);
    }
    let doubling = doubling.check("4 answered, 16 broken", |seen| {
        let broken = seen.iter().filter(|s| s.status == 502).count();
        (broken == 16 && seen.len() == 20)
            .then_some(())
            .ok_or(format!("{broken} of {} broken", seen.len()))
    });
    vec![
        case(f, &[1]).conf(
            P,
            r#"{"break_response_code": 502, "unhealthy": {"http_statuses": [500], "failures": 1},
                "healthy": {"http_statuses": [200], "successes": 1}}"#,
        ),
        case(f, &[5]).refused(
            P,
            r#"{"break_response_code": 199, "unhealthy": {"http_statuses": [500, 503], "failures": 3},
                "healthy": {"http_statuses": [200, 206], "successes": 3}}"#,
            "break_response_code",
        ),
        case(f, &[6]).refused(P, r#"{"break_response_code": 200, "max_breaker_sec": -1}"#, "invalid value"),
        case(f, &[7]).refused(
            P,
            r#"{"break_response_code": 200, "max_breaker_sec": 40,
                "unhealthy": {"http_statuses": [500, 603], "failures": 3},
                "healthy": {"http_statuses": [200, 206], "successes": 3}}"#,
            "unhealthy.http_statuses",
        ),
        case(f, &[8]).refused(
            P,
            r#"{"break_response_code": 500, "unhealthy": {"http_statuses": [500, 503], "failures": 3},
                "healthy": {"http_statuses": [206, 206], "successes": 3}}"#,
            "repeats",
        ),
        case(f, &[9, 10])
            .conf(P, statuses)
            .answered(hit(), &[200, 500, 503, 500, 599, 599], &[599])
            .wire(),
        // Three healthy answers in a row forget the failures.
        case(f, &[11])
            .conf(P, statuses)
            .answered(hit(), &[500, 500, 200, 200, 200, 500, 500], &[599]),
        case(f, &[12])
            .conf(P, statuses)
            .answered(hit(), &[500, 500, 500, 599], &[599])
            .advance(3.0)
            .answered(hit(), &[200, 200, 200, 200], &[599])
            .answered(hit(), &[500, 500, 500, 599], &[599]),
        // The defaults: unhealthy [500] (a 503 is neither healthy nor unhealthy), healthy [200].
        // Both Content-Type entries go to the gateway, which keeps the last for the client.
        case(f, &[13, 14, 15])
            .conf(P, defaults)
            .answered(hit(), &[200, 500, 503, 500, 500], &[])
            .send(
                hit(),
                stop(502)
                    .body("{\"message\":\"breaker opened.\"}")
                    .header("Content-Type", "application/json, application/json+v1"),
            )
            .wire(),
        case(f, &[16])
            .conf(P, defaults)
            .answered(hit(), &[500, 500, 500, 502], &[502])
            .advance(3.0)
            .answered(hit(), &[200, 200, 200, 200, 200], &[502]),
        // Failures after the open time re-open it only at the next multiple of `failures`.
        case(f, &[17])
            .conf(P, defaults)
            .answered(hit(), &[500, 500, 500, 502], &[502])
            .advance(3.0)
            .answered(hit(), &[500, 500, 500, 502], &[502]),
        doubling,
        case(f, &[20]).refused(
            P,
            r#"{"break_response_code": 200, "break_response_headers": [{"content-type": "application/json"}]}"#,
            "unknown field",
        ),
    ]
}

run_the_table!();
