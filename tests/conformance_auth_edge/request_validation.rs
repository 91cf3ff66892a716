//! request-validation: `request-validation.t`, `request-validation2.t`.

use ext_plugin_runner::model::Method;
use serde_json::{json, Value};

use crate::driver::{case, Case, File, Suite};

fn vc(
    file: &'static str,
    tests: impl IntoIterator<Item = u32>,
    what: &'static str,
    conf: Value,
) -> Case {
    case(file, tests, what).plugin("request-validation", conf.to_string())
}

fn post_json(c: Case, body: &str) -> Case {
    c.req(Method::Post, "/opentracing")
        .header("Content-Type", "application/json")
        .req_body(body.to_owned())
}

/// The schema of APISIX's first tests.
fn payload_schema() -> Value {
    json!({"type": "object", "required": ["required_payload"], "properties": {
        "required_payload": {"type": "string"}, "boolean_payload": {"type": "boolean"},
        "timeouts": {"type": "integer", "minimum": 1, "maximum": 254, "default": 3},
        "req_headers": {"type": "array", "minItems": 1, "items": {"type": "string"}}}})
}

/// The type, enum and required checks APISIX runs for `field` (`body_schema` or
/// `header_schema`), from test `first` on.
fn schema_checks(field: &str, first: u32) -> Vec<Case> {
    let f = "request-validation.t";
    let conf = |schema: Value| json!({ field: schema });
    let enum_schema =
        |e: Value| json!({"type": "string", "properties": {"test": {"type": "string", "enum": e}}});
    let required = |r: Value| json!({"type": "object", "properties": {"test": {"type": "string", "enum": ["a", "b", "c"]}}, "required": r});
    let mut out = vec![vc(f, [first], "the payload schema", conf(payload_schema())).accepted()];
    for (i, t) in [
        "object", "array", "string", "number", "integer", "table", "function",
    ]
    .iter()
    .enumerate()
    {
        out.push(
            vc(
                f,
                [first + 1 + i as u32],
                "a type, Lua's table and function included",
                conf(json!({"type": t})),
            )
            .accepted(),
        );
    }
    out.extend([
        vc(
            f,
            [first + 8],
            "an unknown type",
            conf(json!({"type": "test"})),
        )
        .refused(),
        vc(
            f,
            [first + 9],
            "an enum that is not an array",
            conf(enum_schema(json!("test-enum"))),
        )
        .refused(),
        vc(
            f,
            [first + 10],
            "an enum",
            conf(enum_schema(json!(["a", "b", "c"]))),
        )
        .accepted(),
        vc(
            f,
            [first + 11],
            "a required that is not an array",
            conf(required(json!("test-required"))),
        )
        .refused(),
        vc(f, [first + 12], "required", conf(required(json!(["test"])))).accepted(),
    ]);
    out
}

pub fn suite() -> Suite {
    let f = "request-validation.t";
    let body = json!({"body_schema": payload_schema()});
    let header = json!({"header_schema": payload_schema()});
    let enum_required = json!({"type": "object", "properties": {"test": {"type": "string", "enum": ["a", "b", "c"]}}, "required": ["test"]});
    let header_msg = json!({"header_schema": enum_required, "rejected_msg": "customize reject message for header_schema.required"});
    let body_msg = json!({"body_schema": enum_required, "rejected_msg": "customize reject message for body_schema.required"});
    let body_code = json!({"body_schema": enum_required, "rejected_code": 505});
    let form = json!({"body_schema": {"type": "object", "required": ["required_payload"],
        "properties": {"required_payload": {"type": "string"}}, "rejected_msg": "customize reject message"}});
    let dup = json!({"body_schema": {"type": "object", "required": ["required_payload"], "properties": {"required_payload": {"type": "string"}}},
        "rejected_code": 400, "rejected_msg": "duplicated content-type"});
    let small = json!({"max_req_body_size": 10, "body_schema": {"type": "object", "required": ["required_payload"],
        "properties": {"required_payload": {"type": "string"}}}});
    let form_body = format!("{}required_payload=101-hello", "a=b&".repeat(101));
    let mut cases = vec![
        vc(f, [1], "an empty body schema", json!({"body_schema": {}})).accepted(),
        vc(f, [2], "no schema", json!({})).refused(),
        vc(f, [3], "a body schema", body.clone()).accepted(),
        post_json(
            vc(f, [4], "a required property missing", body.clone()),
            r#"{"boolean-payload": true}"#,
        )
        .stops(400),
        post_json(
            vc(f, [5], "the required property present", body.clone()),
            r#"{"boolean-payload": true,"required_payload": "hello"}"#,
        )
        .proceeds()
        .upstream_body_contains(r#""required_payload":"hello""#),
        vc(f, [6], "a header schema", header.clone()).accepted(),
        vc(f, [7], "a required header missing", header.clone())
            .header("Content-Type", "application/json")
            .stops(400),
        vc(f, [8], "the required header present", header.clone())
            .header("Content-Type", "application/json")
            .header("required_payload", "test payload")
            .proceeds(),
    ];
    cases.extend(schema_checks("body_schema", 9));
    cases.extend(schema_checks("header_schema", 22));
    cases.extend([
        vc(f, [35], "a header schema and a message", header_msg.clone()).accepted(),
        vc(f, [36], "the header missing", header_msg.clone()).stops(400).body("customize reject message for header_schema.required"),
        vc(f, [37], "a header value outside the enum", header_msg.clone()).header("test", "abc").stops(400)
            .body("customize reject message for header_schema.required"),
        vc(f, [38], "a valid header", header_msg.clone()).header("test", "a").proceeds(),
        vc(f, [39], "a body schema and a message", body_msg.clone()).accepted(),
        vc(f, [40], "no body", body_msg.clone()).stops(400).body("customize reject message for body_schema.required"),
        vc(f, [41], "a body value outside the enum", body_msg.clone()).req(Method::Post, "/opentracing").req_body(r#"{"test":"abc"}"#)
            .stops(400).body("customize reject message for body_schema.required"),
        vc(f, [42], "a valid body", body_msg.clone()).req(Method::Post, "/opentracing").req_body(r#"{"test":"a"}"#).proceeds(),
        vc(f, [43], "a rejected_msg over 256 characters", json!({"header_schema": enum_required, "rejected_msg": "customize reject message ".repeat(11).trim_end()})).refused(),
        vc(f, [44], "a rejected_msg and no schema", json!({"rejected_msg": "customize reject message"})).refused(),
        vc(f, [45], "a rejected_code", body_code.clone()).accepted(),
        vc(f, [46], "no body: the rejected_code", body_code.clone()).stops(505),
        vc(f, [47], "an invalid body: the rejected_code", body_code.clone()).req(Method::Post, "/opentracing").req_body(r#"{"test":"abc"}"#).stops(505),
        vc(f, [48], "a valid body", body_code.clone()).req(Method::Post, "/opentracing").req_body(r#"{"test":"a"}"#).proceeds(),
        vc(f, [49], "a rejected_code over 599", json!({"header_schema": enum_required, "rejected_code": 10000})).refused(),
        vc(f, [50], "a rejected_code and no schema", json!({"rejected_code": 505})).refused(),
        vc(f, [51], "a form body schema", form.clone()).accepted(),
        vc(f, [52], "a form body", form.clone()).req(Method::Post, "/echo").header("Content-Type", "application/x-www-form-urlencoded")
            .req_body(form_body.clone()).proceeds().upstream_body_contains("101-hello"),
        vc(f, [53], "a form body, the media type in mixed case with a charset", form.clone()).req(Method::Post, "/echo")
            .header("Content-Type", "Application/X-WWW-Form-Urlencoded; charset=utf-8").req_body(form_body.clone()).proceeds()
            .upstream_body_contains("101-hello"),
        vc(f, [54], "duplicate Content-Type", dup.clone()).accepted(),
        vc(f, [55], "form then JSON", dup.clone()).req(Method::Post, "/echo").header("Content-Type", "application/x-www-form-urlencoded")
            .header("Content-Type", "application/json").req_body(r#"{"required_payload": "hello"}"#).stops(400).body("duplicated content-type"),
        vc(f, [56], "JSON then form", dup.clone()).req(Method::Post, "/echo").header("Content-Type", "application/json")
            .header("Content-Type", "application/x-www-form-urlencoded").req_body(r#"{"required_payload": "hello"}"#).stops(400).body("duplicated content-type"),
        vc(f, [57], "a small max_req_body_size", small.clone()).accepted(),
        vc(f, [58], "a body over max_req_body_size", small.clone()).req(Method::Post, "/echo").header("Content-Type", "application/json")
            .req_body(r#"{"required_payload": "this body is well over ten bytes"}"#).stops(400),
    ]);

    let f = "request-validation2.t";
    let dup_key =
        json!({"body_schema": {"type": "object", "properties": {"k": {"pattern": "^good$"}}}});
    cases.extend([
        vc(f, [1], "a pattern", dup_key.clone()).accepted(),
        vc(
            f,
            [2],
            "a duplicate key: the last value is checked and forwarded",
            dup_key,
        )
        .req(Method::Post, "/echo")
        .req_body(r#"{"k":"bad","k":"good"}"#)
        .proceeds()
        .upstream_body(r#"{"k":"good"}"#),
    ]);

    Suite {
        plugin: "request-validation",
        files: vec![
            File {
                name: "request-validation.t",
                tests: 58,
            },
            File {
                name: "request-validation2.t",
                tests: 2,
            },
        ],
        cases,
        skips: vec![],
    }
}
