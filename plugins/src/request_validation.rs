//! `request-validation` (docs/plugins/security.md): JSON Schema (draft 7) checks of headers and body.
//!
//! Conf: `{"header_schema": {...}, "body_schema": {...}, "rejected_code": 400, "rejected_msg":
//! "bad request", "max_req_body_size": 1048576, "rejected_headers": []}`; at least one schema.
//! `max_req_body_size` defaults to 1 MiB, nginx's own `client_max_body_size` default (APISIX
//! itself leaves the bound to nginx).
//! `rejected_msg` is 1 to 256 characters. Schemas are draft 7, with APISIX's Lua types `table`
//! (object or array) and `function` (nothing) translated.
//!
//! * Headers are validated as an object of lower-case names to strings (a repeated header to an
//!   array of strings), straight from the req-call.
//! * The body is fetched from the gateway (one `extra_info` ReqBody round trip) only when
//!   `body_schema` is set. An `application/x-www-form-urlencoded` body is decoded as arguments
//!   (strings; a repeated name an array); anything else is parsed as JSON. A request with two
//!   `Content-Type` headers is rejected, so the runner and the upstream cannot read it
//!   differently; for the same reason a JSON body that passes is forwarded re-serialized
//!   (`Rewrite{body}`), as APISIX does.
//! * Reject: `Stop(rejected_code, rejected_headers, rejected_msg)`, or, without
//!   `rejected_msg`, a plain-text message naming the failing field and schema keyword only, e.g.
//!   `property "/age" validation failed: keyword "type"`. Never the request's values: the
//!   answer goes back to whoever sent them, but also into logs and through caches, and a
//!   keyword such as `maxProperties` would otherwise quote every header, cookies included.

use jsonschema::Validator;
use percent_encoding::percent_decode_str;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::restriction::{self, RejectedHeader};
use ext_plugin_sdk::*;

pub struct RequestValidation {
    header_schema: Option<Validator>,
    body_schema: Option<Validator>,
    max_body: usize,
    /// Status and `rejected_headers`; the body is the message.
    reject: Stop,
    rejected_msg: Option<Bytes>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestValidationConf {
    #[serde(default)]
    header_schema: Option<Value>,
    #[serde(default)]
    body_schema: Option<Value>,
    #[serde(default = "default_code")]
    rejected_code: u16,
    #[serde(default)]
    rejected_msg: Option<String>,
    #[serde(default = "default_max_body")]
    max_req_body_size: usize,
    #[serde(default)]
    rejected_headers: Vec<RejectedHeader>,
}

fn default_code() -> u16 {
    400
}

/// nginx's `client_max_body_size` default; a gateway rarely forwards more to a validator.
fn default_max_body() -> usize {
    1024 * 1024
}

/// APISIX's schema library knows two Lua types besides JSON's: `table` (an object or an array)
/// and `function` (which no JSON value is). Schemas written for it use them, so they are
/// translated into draft 7 before compiling. Only `type` keywords are touched: a property that
/// happens to be named `type` holds a schema, never a string.
fn translate_lua_types(schema: &mut Value) {
    let Value::Object(map) = schema else {
        if let Value::Array(items) = schema {
            items.iter_mut().for_each(translate_lua_types);
        }
        return;
    };
    let mut never = false;
    if let Some(t) = map.get_mut("type") {
        let names: Option<Vec<String>> = match t {
            Value::String(n) => Some(vec![n.clone()]),
            Value::Array(a) => a.iter().map(|v| v.as_str().map(str::to_owned)).collect(),
            _ => None,
        };
        if let Some(names) = names.filter(|n| n.iter().any(|n| n == "table" || n == "function")) {
            let mut types: Vec<Value> = Vec::new();
            for n in &names {
                let add: Vec<&str> = match n.as_str() {
                    "table" => vec!["object", "array"],
                    "function" => vec![],
                    other => vec![other],
                };
                for a in add {
                    if !types.iter().any(|t| t == a) {
                        types.push(Value::String(a.to_owned()));
                    }
                }
            }
            never = types.is_empty();
            *t = Value::Array(types);
        }
    }
    if never {
        // No JSON value has type `function`.
        map.remove("type");
        map.insert("not".to_owned(), Value::Object(Map::new()));
    }
    for (key, value) in map.iter_mut() {
        match (key.as_str(), value) {
            // Instances, not schemas.
            ("enum" | "const" | "default" | "examples", _) => {}
            // Maps from names (any names, `enum` included) to schemas.
            (
                "properties" | "patternProperties" | "definitions" | "$defs" | "dependencies",
                Value::Object(named),
            ) => named.values_mut().for_each(translate_lua_types),
            (_, value) => translate_lua_types(value),
        }
    }
}

fn compile(field: &str, schema: Option<Value>) -> Result<Option<Validator>, ConfError> {
    schema
        .map(|mut s| {
            translate_lua_types(&mut s);
            jsonschema::draft7::new(&s).map_err(|e| {
                ConfError::new(format!("`{field}` is not a valid draft 7 JSON Schema: {e}"))
            })
        })
        .transpose()
}

/// Adds `value` under `name`, turning a repeated name into an array.
fn insert_repeated(map: &mut Map<String, Value>, name: &str, value: String) {
    match map.get_mut(name) {
        None => {
            map.insert(name.to_owned(), Value::String(value));
        }
        Some(Value::Array(a)) => a.push(Value::String(value)),
        Some(first) => {
            let first = first.take();
            map.insert(name.to_owned(), Value::Array(vec![first, Value::String(value)]));
        }
    }
}

/// Decodes `a=1&b=x+y&a=2` into `{"a": ["1", "2"], "b": "x y"}`.
fn decode_form(body: &[u8]) -> Option<Value> {
    let body = std::str::from_utf8(body).ok()?;
    let mut map = Map::new();
    for part in body.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        let decode = |s: &str| {
            percent_decode_str(&s.replace('+', " "))
                .decode_utf8()
                .map(|c| c.into_owned())
        };
        insert_repeated(&mut map, &decode(k).ok()?, decode(v).ok()?);
    }
    Some(Value::Object(map))
}

fn is_form(content_type: Option<&str>) -> bool {
    content_type.is_some_and(|ct| {
        ct.split(';')
            .next()
            .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/x-www-form-urlencoded"))
    })
}

/// The first schema violation: where (the instance path) and which keyword failed. The
/// library's own message quotes the offending values, which are the request's.
fn violation(validator: &Validator, instance: &Value) -> Option<String> {
    let e = validator.validate(instance).err()?;
    let path = e.instance_path().to_string();
    let keyword = e.kind().keyword();
    Some(if path.is_empty() {
        format!("validation failed: keyword \"{keyword}\"")
    } else {
        format!("property \"{path}\" validation failed: keyword \"{keyword}\"")
    })
}

impl RequestValidation {
    fn reject(&self, message: String) -> Flow {
        let mut stop = self.reject.clone();
        stop.body = self.rejected_msg.clone().unwrap_or_else(|| message.into());
        Flow::Stop(stop)
    }
}

impl Plugin for RequestValidation {
    const NAME: &'static str = "request-validation";
    type Conf = RequestValidationConf;

    fn prepare(conf: RequestValidationConf, _env: &mut PrepareEnv<'_>) -> Result<Self, ConfError> {
        if conf.header_schema.is_none() && conf.body_schema.is_none() {
            return Err(ConfError::new("set `header_schema`, `body_schema` or both"));
        }
        restriction::check_status("rejected_code", conf.rejected_code)?;
        if let Some(m) = &conf.rejected_msg {
            let len = m.chars().count();
            if !(1..=256).contains(&len) {
                return Err(ConfError::new(format!(
                    "`rejected_msg` must be 1 to 256 characters, got {len}"
                )));
            }
        }
        if conf.max_req_body_size == 0 {
            return Err(ConfError::new("`max_req_body_size` must be positive"));
        }
        Ok(RequestValidation {
            header_schema: compile("header_schema", conf.header_schema)?,
            body_schema: compile("body_schema", conf.body_schema)?,
            max_body: conf.max_req_body_size,
            reject: restriction::with_headers(Stop::new(conf.rejected_code), conf.rejected_headers)?,
            rejected_msg: conf.rejected_msg.map(Bytes::from),
        })
    }

    async fn request_filter(&self, call: &mut RequestCall<'_>) -> Result<Flow, PluginError> {
        if let Some(schema) = &self.header_schema {
            let mut headers = Map::new();
            for (name, value) in call.headers() {
                insert_repeated(&mut headers, &name.to_ascii_lowercase(), value.to_string());
            }
            if let Some(msg) = violation(schema, &Value::Object(headers)) {
                return Ok(self.reject(msg));
            }
        }
        let Some(schema) = &self.body_schema else {
            return Ok(Flow::Continue);
        };
        let mut content_types = call.header_values("content-type");
        let form = is_form(content_types.next());
        if content_types.next().is_some() {
            return Ok(self.reject("duplicate Content-Type header".into()));
        }
        drop(content_types);
        let Some(body) = call.body().await? else {
            return Ok(self.reject("request body is missing".into()));
        };
        if body.len() > self.max_body {
            return Ok(self.reject(format!(
                "request body is larger than max_req_body_size ({} bytes)",
                self.max_body
            )));
        }
        let parsed = if form {
            decode_form(&body).ok_or_else(|| "invalid form-urlencoded body".to_owned())
        } else {
            serde_json::from_slice::<Value>(&body).map_err(|e| format!("invalid JSON body: {e}"))
        };
        let value = match parsed {
            Ok(v) => v,
            Err(msg) => return Ok(self.reject(msg)),
        };
        if let Some(msg) = violation(schema, &value) {
            return Ok(self.reject(msg));
        }
        if !form {
            let canonical = serde_json::to_vec(&value)?;
            call.set_body(canonical);
        }
        Ok(Flow::Continue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn forms_decode_with_repeats() {
        assert_eq!(
            decode_form(b"a=1&b=x+y%21&a=2&flag").unwrap(),
            json!({"a": ["1", "2"], "b": "x y!", "flag": ""})
        );
        assert!(decode_form(b"a=%FF").is_none());
        assert!(is_form(Some("Application/X-WWW-Form-Urlencoded; charset=utf-8")));
        assert!(!is_form(Some("application/json")));
    }

    #[test]
    fn lua_types_translate_to_draft_7() {
        let compiled = |schema: Value| compile("s", Some(schema)).unwrap().unwrap();
        let table = compiled(json!({"type": "table"}));
        assert!(table.is_valid(&json!({})) && table.is_valid(&json!([1])));
        assert!(!table.is_valid(&json!("x")));
        let function = compiled(json!({"type": "function"}));
        assert!(!function.is_valid(&json!({})) && !function.is_valid(&json!(null)));
        let nested = compiled(json!({"type": "object", "properties": {
            "type": {"type": ["string", "table"]}, "e": {"enum": [{"type": "table"}]},
            "enum": {"type": "table"}}}));
        assert!(nested.is_valid(&json!({"type": [1], "e": {"type": "table"}, "enum": {}})));
        assert!(!nested.is_valid(&json!({"type": 1})));
        assert!(!nested.is_valid(&json!({"enum": 1})));
        for bad in [json!({"type": "test"}), json!({"enum": "x"}), json!({"required": "x"})] {
            assert!(compile("s", Some(bad.clone())).is_err(), "{bad}");
        }
    }

    #[test]
    fn rejected_msg_is_1_to_256_characters() {
        let prepare = |msg: &str| {
            let conf = json!({"header_schema": {"type": "object"}, "rejected_msg": msg});
            let text = conf.to_string();
            let conf: RequestValidationConf = serde_json::from_value(conf).unwrap();
            ext_plugin_sdk::harness::TestEnv::default().with(
                "route#1#ext-plugin-pre-req#1",
                RequestValidation::NAME,
                &text,
                &[RequestValidation::NAME],
                |env| RequestValidation::prepare(conf, env).map(|_| ()),
            )
        };
        assert!(prepare("").is_err());
        assert!(prepare(&"m".repeat(257)).is_err());
        assert!(prepare(&"é".repeat(256)).is_ok(), "characters, not bytes");
        assert!(prepare("x").is_ok());
    }

    #[test]
    fn violations_name_the_field() {
        let v = jsonschema::draft7::new(&json!({
            "type": "object", "required": ["name"],
            "properties": {"age": {"type": "integer"}}})).unwrap();
        let msg = violation(&v, &json!({"name": "a", "age": "x"})).unwrap();
        assert_eq!(msg, r#"property "/age" validation failed: keyword "type""#);
        assert_eq!(violation(&v, &json!({})).unwrap(), r#"validation failed: keyword "required""#);
        assert!(violation(&v, &json!({"name": "a", "age": 3})).is_none());
    }

    /// Issue 11 #14: a `maxProperties` failure quoted every header, bearer tokens and cookies
    /// included, back into the error body.
    #[test]
    fn violations_never_quote_the_request() {
        let v = jsonschema::draft7::new(&json!({"maxProperties": 1, "properties": {
            "a": {"enum": ["x"]}, "n": {"maximum": 10}, "p": {"pattern": "^z"}}})).unwrap();
        for instance in [
            json!({"authorization": "Bearer SECRET-1", "cookie": "session=SECRET-2"}),
            json!({"a": "SECRET-3"}),
            json!({"n": 7_654_321}),
            json!({"p": "SECRET-4"}),
        ] {
            let msg = violation(&v, &instance).unwrap();
            assert!(!msg.contains("SECRET") && !msg.contains("7654321"), "{msg}");
            assert!(msg.contains("keyword"), "{msg}");
        }
    }
}
