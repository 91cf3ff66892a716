//! request-id against APISIX's t/plugin/request-id*.t.
//!
//! APISIX's blocks that fire 180 requests at once and compare the ids become 180 requests here
//! and a check over the ids the client got.

use crate::kit::*;

const P: &str = "request-id";

const LUA: &str = "rewires the upvalues of APISIX's uuid v7 generator (ngx.now, its sequence) \
                   from Lua";
const LOG: &str = "asserts lines of APISIX's error log";

pub fn suite() -> Suite {
    Suite::new(
        P,
        &[
            ("request-id.t", 28),
            ("request-id2.t", 4),
            ("request-id3.t", 5),
        ],
    )
    .skip("request-id.t", [26, 27], LUA)
    .skip("request-id3.t", [2, 5], LOG)
    .cases(cases())
}

/// Every request got a response header `name`, all different, each passing `shape`.
fn ids(seen: &[Seen], name: &str, shape: fn(&str) -> bool) -> Result<(), String> {
    let mut all = std::collections::HashSet::new();
    for s in seen {
        let id = s.header(name).ok_or(format!("no {name}"))?;
        if !shape(id) {
            return Err(format!("{name}: {id:?} has the wrong shape"));
        }
        if !all.insert(id.to_owned()) {
            return Err(format!("{id} twice"));
        }
    }
    Ok(())
}

fn uuid_version(id: &str, v: u8) -> bool {
    let hex = |c: char| c.is_ascii_hexdigit();
    let parts: Vec<&str> = id.split('-').collect();
    parts.iter().map(|p| p.len()).eq([8, 4, 4, 4, 12])
        && id.chars().filter(|&c| c != '-').all(hex)
        && id.as_bytes()[14] == b'0' + v
        && matches!(id.as_bytes()[19], b'8' | b'9' | b'a' | b'b')
}

fn many(c: Case, n: usize) -> Case {
    c.sends(get("/opentracing"), &vec![200; n])
}

fn cases() -> Vec<Case> {
    let (f, f2, f3) = ("request-id.t", "request-id2.t", "request-id3.t");
    let ot = || get("/opentracing");
    vec![
        case(f, &[1]).conf(P, "{}"),
        case(f, &[2]).refused(
            P,
            r#"{"include_in_response": "bad_type"}"#,
            "expected a boolean",
        ),
        case(f, &[3, 4])
            .conf(P, "{}")
            .send(
                ot().with_header("content-type", "application/json"),
                pass()
                    .header_is("X-Request-Id", Hv::Any)
                    .up_is("x-request-id", Hv::Any),
            )
            .wire(),
        many(case(f, &[5]).conf(P, "{}"), 180).check("180 unique ids", |s| {
            ids(s, "X-Request-Id", |id| uuid_version(id, 4))
        }),
        case(f, &[6, 7])
            .conf(P, r#"{"header_name": "Custom-Header-Name"}"#)
            .send(ot(), pass().header_is("Custom-Header-Name", Hv::Any)),
        case(f, &[8, 9])
            .conf(P, r#"{"include_in_response": false}"#)
            .send(
                ot(),
                pass()
                    .no_header("X-Request-Id")
                    .up_is("x-request-id", Hv::Any),
            ),
        // A global rule's plugin and the route's: two instances, two ids.
        case(f, &[10, 11])
            .chain(&[(P, r#"{"header_name": "Custom-Header-Name"}"#), (P, "{}")])
            .send(ot(), pass())
            .check("two different ids", |s| {
                let (a, b) = (
                    s[0].header("X-Request-Id"),
                    s[0].header("Custom-Header-Name"),
                );
                (a.is_some() && b.is_some() && a != b)
                    .then_some(())
                    .ok_or(format!("{a:?} {b:?}"))
            }),
        case(f, &[12]).refused(P, r#"{"algorithm": "bad_algorithm"}"#, "unknown variant"),
        // The client's id is kept, upstream and on the response.
        case(f, &[13, 14])
            .conf(P, r#"{"include_in_response": true}"#)
            .send(
                ot().with_header("x-request-id", "123"),
                pass()
                    .header("X-Request-ID", "123")
                    .up("x-request-id", "123"),
            )
            .wire(),
        many(case(f, &[15]).conf(P, r#"{"algorithm": "nanoid"}"#), 180)
            .check("180 unique nanoids", |s| {
                ids(s, "X-Request-Id", |id| id.len() == 21)
            }),
        case(f, &[16])
            .conf(P, "{}")
            .send(ot().with_header("x-request-id", ""), pass())
            .check("a fresh id", |s| {
                ids(s, "X-Request-Id", |id| uuid_version(id, 4))
            }),
        case(f, &[17]).conf(P, r#"{"algorithm": "uuidv7"}"#),
        case(f, &[18]).refused(P, r#"{"algorithm": "uuidv5"}"#, "unknown variant"),
        case(f, &[19, 20])
            .conf(P, r#"{"algorithm": "uuidv7"}"#)
            .send(ot(), pass())
            .check("uuid v7", |s| {
                ids(s, "X-Request-Id", |id| uuid_version(id, 7))
            }),
        many(case(f, &[21]).conf(P, r#"{"algorithm": "uuidv7"}"#), 180)
            .check("180 unique v7", |s| {
                ids(s, "X-Request-Id", |id| uuid_version(id, 7))
            }),
        // APISIX calls its generator; here the plugin's ids one after another.
        many(case(f, &[22]).conf(P, r#"{"algorithm": "uuidv7"}"#), 21).check(
            "v7 ids increase",
            |s| {
                let ids: Vec<_> = s.iter().filter_map(|s| s.header("X-Request-Id")).collect();
                (ids.len() == 21 && ids.windows(2).all(|w| w[0] < w[1]))
                    .then_some(())
                    .ok_or(format!("not increasing: {ids:?}"))
            },
        ),
        case(f, &[23])
            .conf(P, r#"{"algorithm": "uuid"}"#)
            .send(ot(), pass())
            .check("uuid v4", |s| {
                ids(s, "X-Request-Id", |id| uuid_version(id, 4))
            }),
        case(f, &[24])
            .conf(P, r#"{"algorithm": "uuidv7"}"#)
            .send(ot(), pass())
            .check("a real timestamp", |s| {
                ids(s, "X-Request-Id", |id| !id.starts_with("0000"))
            }),
        case(f, &[25])
            .conf(P, r#"{"algorithm": "uuidv7", "header_name": "X-Trace-Id"}"#)
            .send(ot(), pass())
            .check("uuid v7 under X-Trace-Id", |s| {
                ids(s, "X-Trace-Id", |id| uuid_version(id, 7))
            }),
        many(case(f, &[28]).conf(P, r#"{"algorithm": "nanoid"}"#), 200).check("200 nanoids", |s| {
            ids(s, "X-Request-Id", |id| {
                id.len() == 21
                    && id
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            })
        }),
        many(
            case(f2, &[1]).conf(
                P,
                r#"{"algorithm": "range_id", "range_id": {"char_set": "abcdefg", "length": 20}}"#,
            ),
            10,
        )
        .check("20 of abcdefg", |s| {
            ids(s, "X-Request-Id", |id| {
                id.len() == 20 && id.bytes().all(|b| (b'a'..=b'g').contains(&b))
            })
        }),
        case(f2, &[2, 3])
            .conf(P, r#"{"algorithm": "range_id"}"#)
            .send(ot(), pass()),
        many(case(f2, &[4]).conf(P, r#"{"algorithm": "range_id"}"#), 180).check(
            "180 range ids",
            |s| {
                ids(s, "X-Request-Id", |id| {
                    id.len() == 16 && id.bytes().all(|b| b.is_ascii_alphanumeric())
                })
            },
        ),
        case(f3, &[1]).conf(P, r#"{"algorithm": "ksuid"}"#),
        many(case(f3, &[3]).conf(P, r#"{"algorithm": "ksuid"}"#), 180).check("180 ksuids", |s| {
            ids(s, "X-Request-Id", |id| {
                id.len() == 27 && id.bytes().all(|b| b.is_ascii_alphanumeric())
            })
        }),
        case(f3, &[4])
            .conf(P, r#"{"header_name": "X-Request-Id"}"#)
            .send(
                ot().with_header("x-request-id", "abctesting"),
                pass().up("x-request-id", "abctesting"),
            ),
    ]
}

run_the_table!();
