//! `proxy-rewrite` (docs/plugins/security.md): rewrite the upstream path, Host, headers and arguments.
//!
//! Conf: `{"uri": "/v2/$arg_id", "regex_uri": ["^/api/(.*)", "/svc/$1"], "host":
//! "backend.internal", "headers": {"add": {"X-From": "gw"}, "set": {"X-Route": "$uri"},
//! "remove": ["X-Debug"]}, "args": {"add": {...}, "set": {"v": "2"}, "remove": ["debug"]}}`.
//! APISIX's older flat form `"headers": {"X-Api": "v2"}` means `set`.
//!
//! Order (APISIX's): `uri`, else the first `regex_uri` pair whose regex matches the path (only
//! the matched part is replaced); then `host`; then headers add → set → remove; then *(ext)*
//! args add → set → remove.
//!
//! * `uri` and header values are APISIX templates (`$var`, `${var ?? default}`), rendered
//!   against the request before this plugin's rewrite; header values also take `$1`/`${1}`,
//!   the captures of the matching `regex_uri` regex (empty when none matched). A `regex_uri`
//!   replacement takes only captures and `$$`, as `ngx.re.sub` does; anything else after a `$`
//!   is refused.
//! * A `?` written in `uri` or a `regex_uri` replacement starts a query: its arguments go
//!   upstream before the request's own (`?` inside a variable's value stays in the path).
//! * Header values are strings, numbers or arrays of them; the protocol sets one value per
//!   header, so several values (an array, or `add` on a header the request has) are joined with
//!   `, `, which HTTP reads as the same list. An empty value removes the header, as APISIX does.
//! * A header or argument value that is a secret reference (`$ENV://NAME`,
//!   `$ENV://NAME/field`) is read from the runner's environment at prepare time.
//! * `method` fails `prepare_conf` (the protocol cannot change it), and so does
//!   `use_real_request_uri_unsafe: true`.

use std::collections::BTreeMap;

use percent_encoding::percent_decode_str;
use regex::Regex;
use serde::Deserialize;
use serde_json::Value;

use crate::support::patterns::Budget;
use crate::support::few::Few;
use crate::support::template::{self, Template};
use ext_plugin_sdk::*;

pub struct ProxyRewrite {
    uri: Option<Template>,
    regex_uri: Vec<(Regex, SubTemplate)>,
    host: Option<Text>,
    headers: Ops<Vec<Template>>,
    args: Ops<Template>,
}

/// add / set / remove, each in conf order (names sorted).
struct Ops<V> {
    add: Vec<(Text, V)>,
    set: Vec<(Text, V)>,
    remove: Vec<Text>,
}

impl<V> Default for Ops<V> {
    fn default() -> Self {
        Ops {
            add: Vec::new(),
            set: Vec::new(),
            remove: Vec::new(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyRewriteConf {
    #[serde(default)]
    uri: Option<String>,
    #[serde(default)]
    regex_uri: Option<Vec<String>>,
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    headers: Option<serde_json::Map<String, Value>>,
    #[serde(default)]
    args: Option<ArgsConf>,
    // Fields the runner cannot honour; named so their rejection can say why.
    #[serde(default)]
    method: Option<Value>,
    #[serde(default)]
    scheme: Option<Value>,
    #[serde(default)]
    use_real_request_uri_unsafe: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ArgsConf {
    #[serde(default)]
    add: BTreeMap<String, String>,
    #[serde(default)]
    set: BTreeMap<String, String>,
    #[serde(default)]
    remove: Vec<String>,
}

/// A `regex_uri` replacement, in `ngx.re.sub`'s syntax: text, `$N` / `${N}` captures, `$$`.
#[derive(Debug, PartialEq)]
struct SubTemplate(Vec<SubPart>);

#[derive(Debug, PartialEq)]
enum SubPart {
    Lit(String),
    Capture(usize),
}

impl SubTemplate {
    /// Parses as nginx compiles a replacement; the error says what is wrong.
    fn parse(s: &str) -> Result<SubTemplate, String> {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut rest = s;
        while let Some(at) = rest.find('$') {
            lit.push_str(&rest[..at]);
            let after = &rest[at + 1..];
            if let Some(next) = after.strip_prefix('$') {
                lit.push('$');
                rest = next;
                continue;
            }
            let (braced, body) = match after.strip_prefix('{') {
                Some(b) => (true, b),
                None => (false, after),
            };
            let digits = body.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                let named = body.bytes().next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
                return Err(if named {
                    "named captures and variables are not supported in a replacement (only $1, ${1} and $$)".into()
                } else {
                    "a `$` must be followed by a capture number, `{number}` or `$`".into()
                });
            }
            let n = body[..digits]
                .parse()
                .map_err(|_| "a capture number is too large".to_owned())?;
            let mut next = &body[digits..];
            if braced {
                next = next
                    .strip_prefix('}')
                    .ok_or_else(|| "the closing `}` of a `${...}` capture is missing".to_owned())?;
            }
            if !lit.is_empty() {
                parts.push(SubPart::Lit(std::mem::take(&mut lit)));
            }
            parts.push(SubPart::Capture(n));
            rest = next;
        }
        lit.push_str(rest);
        if !lit.is_empty() {
            parts.push(SubPart::Lit(lit));
        }
        Ok(SubTemplate(parts))
    }

    /// The replacement text, and where its first `?` written in the template is.
    fn render(&self, caps: &[Option<&str>], out: &mut String) -> Option<usize> {
        let mut query = None;
        for part in &self.0 {
            match part {
                SubPart::Lit(s) => {
                    if query.is_none() {
                        query = s.find('?').map(|i| out.len() + i);
                    }
                    out.push_str(s);
                }
                SubPart::Capture(n) => path_value(caps.get(*n).copied().flatten().unwrap_or(""), out),
            }
        }
        query
    }
}

/// Appends a value from the request (a variable, a capture of the decoded path) to a path:
/// what would end the path (`?`, `#`) is percent-encoded, so it stays a literal part of this
/// path segment. Other bytes, control bytes included, stay raw: the path crosses the socket
/// raw and the gateway escapes it (APISIX's own proxy-rewrite3.t expects a CR LF from the
/// client to reach the upstream as such, escaped on the wire).
fn path_value(v: &str, out: &mut String) {
    for c in v.chars() {
        match c {
            '?' => out.push_str("%3F"),
            '#' => out.push_str("%23"),
            c => out.push(c),
        }
    }
}

/// Whether a path holds a `.` or `..` segment.
fn has_dot_segment(path: &str) -> bool {
    path.split('/').any(|seg| seg == "." || seg == "..")
}

/// A header name: an HTTP token, sent lower-cased.
fn header_name(field: &str, name: &str) -> Result<Text, ConfError> {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !ok {
        return Err(ConfError::new(format!("`{field}`: {name:?} is not a header name")));
    }
    Ok(name.to_ascii_lowercase().into())
}

/// Header values of one operation: `{name: value}`, values templates with captures.
fn header_map(field: &str, value: &Value) -> Result<Vec<(Text, Vec<Template>)>, ConfError> {
    let map = value
        .as_object()
        .ok_or_else(|| ConfError::new(format!("`{field}` must be an object")))?;
    if map.is_empty() {
        return Err(ConfError::new(format!("`{field}` must not be empty")));
    }
    let mut sorted: Vec<_> = map.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    sorted
        .into_iter()
        .map(|(name, v)| {
            let f = format!("{field}.{name}");
            // A secret reference (`$ENV://NAME`) is resolved now, not read as `$ENV`.
            let values = match v {
                Value::String(s) if ext_plugin_sdk::secret::is_secret_ref(s) => {
                    vec![Template::literal(&ext_plugin_sdk::resolve_secret(&format!("`{f}`"), s)?)]
                }
                v => template::header_values(&f, v, true, true)?,
            };
            for t in &values {
                if let Some(text) = t.constant() {
                    if text.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
                        return Err(ConfError::new(format!("`{f}` has a line break")));
                    }
                }
            }
            Ok((header_name(field, name)?, values))
        })
        .collect()
}

fn headers(conf: Option<serde_json::Map<String, Value>>) -> Result<Ops<Vec<Template>>, ConfError> {
    let Some(conf) = conf else {
        return Ok(Ops::default());
    };
    if conf.is_empty() {
        return Err(ConfError::new("`headers` must not be empty"));
    }
    // APISIX's test for the newer form: `add` or `set` is an object, or `remove` an array.
    let new_form = matches!(conf.get("add"), Some(Value::Object(_)))
        || matches!(conf.get("set"), Some(Value::Object(_)))
        || matches!(conf.get("remove"), Some(Value::Array(_)));
    if !new_form {
        return Ok(Ops {
            set: header_map("headers", &Value::Object(conf))?,
            ..Ops::default()
        });
    }
    let mut ops = Ops::default();
    for (key, value) in &conf {
        match key.as_str() {
            "add" => ops.add = header_map("headers.add", value)?,
            "set" => ops.set = header_map("headers.set", value)?,
            "remove" => {
                let list = value
                    .as_array()
                    .filter(|l| !l.is_empty())
                    .ok_or_else(|| ConfError::new("`headers.remove` must be a non-empty array of names"))?;
                ops.remove = list
                    .iter()
                    .map(|n| match n {
                        Value::String(n) => header_name("headers.remove", n),
                        other => Err(ConfError::new(format!("`headers.remove` holds {other}, not a name"))),
                    })
                    .collect::<Result<_, _>>()?;
            }
            other => {
                return Err(ConfError::new(format!(
                    "`headers` has an unknown field `{other}` (expected `add`, `set`, `remove`)"
                )))
            }
        }
    }
    Ok(ops)
}

fn args(conf: Option<ArgsConf>) -> Result<Ops<Template>, ConfError> {
    let conf = conf.unwrap_or_default();
    let name = |op: &str, n: &str| -> Result<Text, ConfError> {
        if n.is_empty() {
            return Err(ConfError::new(format!("`args.{op}` has an empty name")));
        }
        Ok(n.to_owned().into())
    };
    let pairs = |op: &str, m: BTreeMap<String, String>| {
        m.into_iter()
            .map(|(n, v)| {
                // A secret reference (`$ENV://NAME`) is resolved now, not read as `$ENV`.
                let value = if ext_plugin_sdk::secret::is_secret_ref(&v) {
                    let f = format!("`args.{op}.{n}`");
                    Template::literal(&ext_plugin_sdk::resolve_secret(&f, &v)?)
                } else {
                    Template::parse(&v)
                };
                Ok((name(op, &n)?, value))
            })
            .collect::<Result<Vec<_>, ConfError>>()
    };
    Ok(Ops {
        add: pairs("add", conf.add)?,
        set: pairs("set", conf.set)?,
        remove: conf.remove.iter().map(|n| name("remove", n)).collect::<Result<_, _>>()?,
    })
}

/// APISIX's `host` pattern: letters, digits, `-` and `.`, and an optional port.
fn valid_host(h: &str) -> bool {
    let (name, port) = match h.rsplit_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (h, None),
    };
    !name.is_empty()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && port.is_none_or(|p| (1..=5).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()))
}

/// Joins header values as HTTP joins repeated list headers (`; ` for cookies); empty values
/// add nothing.
fn join_values<'a>(name: &str, values: impl Iterator<Item = &'a str>) -> String {
    let sep = if name == "cookie" { "; " } else { ", " };
    let mut out = String::new();
    for v in values.filter(|v| !v.is_empty()) {
        if !out.is_empty() {
            out.push_str(sep);
        }
        out.push_str(v);
    }
    out
}

impl Plugin for ProxyRewrite {
    const NAME: &'static str = "proxy-rewrite";
    type Conf = ProxyRewriteConf;

    fn prepare(conf: ProxyRewriteConf, _env: &mut PrepareEnv<'_>) -> Result<Self, ConfError> {
        if conf.method.is_some() {
            return Err(ConfError::new(
                "`method` cannot be honoured: the ext-plugin protocol cannot change the request \
                 method; use the gateway's own proxy-rewrite for that",
            ));
        }
        if conf.scheme.is_some() || conf.use_real_request_uri_unsafe == Some(true) {
            return Err(ConfError::new(
                "`scheme` and `use_real_request_uri_unsafe: true` cannot be honoured through the \
                 ext-plugin protocol (it carries the decoded path)",
            ));
        }
        let empty = conf.uri.is_none()
            && conf.regex_uri.is_none()
            && conf.host.is_none()
            && conf.headers.is_none()
            && conf.args.is_none()
            && conf.use_real_request_uri_unsafe.is_none();
        if empty {
            return Err(ConfError::new("the conf is empty: set `uri`, `regex_uri`, `host` or `headers`"));
        }
        let uri = match conf.uri {
            Some(u) if !u.starts_with('/') || u.len() > 4096 => {
                return Err(ConfError::new(format!(
                    "`uri` {u:?} must start with `/` (at most 4096 bytes)"
                )))
            }
            Some(u) => Some(Template::parse(&u)),
            None => None,
        };
        let regex_uri = match conf.regex_uri {
            None => Vec::new(),
            Some(list) if list.len() < 2 || list.len() % 2 != 0 => {
                return Err(ConfError::new(
                    "`regex_uri` must be pairs: [regex, replacement, regex, replacement, ...]",
                ))
            }
            Some(list) => {
                let mut budget = Budget::default();
                list
                .chunks(2)
                .enumerate()
                .map(|(i, pair)| {
                    let re = budget.regex(&format!("regex_uri[{}]", 2 * i), &pair[0], false)?;
                    let sub = SubTemplate::parse(&pair[1]).map_err(|why| {
                        ConfError::new(format!("`regex_uri[{}]` {:?}: {why}", 2 * i + 1, pair[1]))
                    })?;
                    Ok((re, sub))
                })
                .collect::<Result<_, ConfError>>()?
            }
        };
        let host = match conf.host {
            Some(h) if !valid_host(&h) => {
                return Err(ConfError::new(format!(
                    "`host` {h:?} is not a host (letters, digits, `-`, `.`, optional `:port`)"
                )))
            }
            h => h.map(Text::from),
        };
        Ok(ProxyRewrite {
            uri,
            regex_uri,
            host,
            headers: headers(conf.headers)?,
            args: args(conf.args)?,
        })
    }

    async fn request_filter(&self, call: &mut RequestCall<'_>) -> Result<Flow, PluginError> {
        let mut captured: Vec<Option<String>> = Vec::new();
        // The new path, and where a query written in the template starts in it.
        let mut path: Option<(String, Option<usize>)> = None;
        if let Some(uri) = &self.uri {
            // A `?` in a value is escaped (it belongs to the path), as APISIX escapes it, so a
            // `?` left in the text was written in the template and starts the query.
            let text = uri.render_escaped(call, path_value).await?.text;
            let at = text.find('?');
            path = Some((text, at));
        } else {
            let current = call.path();
            let hit = self.regex_uri.iter().find_map(|(re, t)| {
                let c = re.captures(current)?;
                let m = c.get(0).expect("group 0 always matches");
                Some((t, m.start(), m.end(), c.iter().map(|g| g.map(|g| g.as_str().to_owned())).collect::<Vec<_>>()))
            });
            if let Some((template, start, end, caps)) = hit {
                // The path around the match is the request's too, and escaped alike.
                let mut text = String::with_capacity(current.len() + 16);
                path_value(&current[..start], &mut text);
                let borrowed: Vec<Option<&str>> = caps.iter().map(|c| c.as_deref()).collect();
                let at = template.render(&borrowed, &mut text);
                path_value(&current[end..], &mut text);
                captured = caps;
                path = Some((text, at));
            }
        }
        if let Some((text, query)) = &path {
            // Escaping cannot help a dot segment (`.` needs none), and an upstream that
            // normalizes the path would climb out of the prefix the route meant.
            let from_request = self.uri.as_ref().is_none_or(|u| u.constant().is_none());
            if from_request && has_dot_segment(&text[..query.unwrap_or(text.len())]) {
                tracing::debug!("proxy-rewrite: a rendered path holds a dot segment");
                return Ok(Flow::Stop(Stop::json_message(400, "message", "bad request path")));
            }
        }
        let caps: Vec<Option<&str>> = captured.iter().map(|c| c.as_deref()).collect();
        // Values render before anything is applied, so `$uri` means the request's path.
        let mut rendered = Vec::with_capacity(self.headers.add.len() + self.headers.set.len());
        for (_, ts) in self.headers.add.iter().chain(&self.headers.set) {
            let mut values = Few::None;
            for t in ts {
                let v = t.render_with(call, &caps, |v, out| out.push_str(v)).await?;
                values.push(template::header_safe(v.text));
            }
            rendered.push(values);
        }
        let mut args = Vec::with_capacity(self.args.add.len() + self.args.set.len());
        for (_, t) in self.args.add.iter().chain(&self.args.set) {
            args.push(t.render(call).await?.text);
        }

        if let Some(host) = &self.host {
            call.set_header("host", host.clone());
        }
        let mut values = rendered.into_iter();
        for ((name, _), new) in self.headers.add.iter().zip(values.by_ref()) {
            if &**name == "set-cookie" && call.header(name).is_some() {
                continue;
            }
            let merged = if call.header(name).is_none() {
                combine(name, new)
            } else {
                let new = new.as_slice().iter().map(String::as_str);
                join_values(name, call.header_values(name).chain(new))
            };
            set_or_remove(call, name, merged);
        }
        for ((name, _), new) in self.headers.set.iter().zip(values) {
            let value = combine(name, new);
            set_or_remove(call, name, value);
        }
        for name in &self.headers.remove {
            call.remove_header(name.clone());
        }
        let mut values = args.into_iter();
        for ((name, _), value) in self.args.add.iter().zip(values.by_ref()) {
            call.append_arg(name.clone(), value);
        }
        for ((name, _), value) in self.args.set.iter().zip(values) {
            call.set_arg(name.clone(), value);
        }
        for name in &self.args.remove {
            call.remove_arg(name.clone());
        }
        if let Some((mut text, query)) = path {
            if let Some(at) = query {
                let q = text.split_off(at);
                prepend_query(call, &q[1..]);
            }
            call.set_path(text);
        }
        Ok(Flow::Continue)
    }
}

/// One header value from several: the value itself when there is one (no copy), else joined.
fn combine(name: &str, values: Few<String>) -> String {
    match values {
        Few::One(v) => v,
        other => join_values(name, other.as_slice().iter().map(String::as_str)),
    }
}

/// Sets a header, or removes it when the value is empty (APISIX's set with an empty value).
fn set_or_remove(call: &mut RequestCall<'_>, name: &Text, value: String) {
    if value.is_empty() {
        call.remove_header(name.clone());
    } else {
        call.set_header(name.clone(), value);
    }
}

/// Puts the arguments of `query` (`a=1&b`) before the request's own arguments of the same
/// names, as APISIX joins a rewritten uri's query with the request's.
fn prepend_query(call: &mut RequestCall<'_>, query: &str) {
    let mut names: Vec<String> = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |s: &str| percent_decode_str(&s.replace('+', " ")).decode_utf8_lossy().into_owned();
        let (name, value) = (decode(name), decode(value));
        if names.contains(&name) {
            call.append_arg(name, value);
        } else {
            call.set_arg(name.clone(), value);
            names.push(name);
        }
    }
    for name in names {
        let kept: Vec<String> = call
            .original_args()
            .iter()
            .filter(|a| a.name.as_str() == name)
            .map(|a| a.value.as_deref().unwrap_or("").to_owned())
            .collect();
        for value in kept {
            call.append_arg(name.clone(), value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use ext_plugin_sdk::harness::{request, TestCall, TestEnv};

    fn plugin(conf: &str) -> Result<ProxyRewrite, ConfError> {
        let parsed: ProxyRewriteConf = serde_json::from_str(conf).map_err(ConfError::from)?;
        TestEnv::default().with("route#1#ext-plugin-pre-req#1", ProxyRewrite::NAME, conf, &[], |e| {
            ProxyRewrite::prepare(parsed, e)
        })
    }

    /// The request headers the upstream gets: `(name, value)` of every header set or removed.
    async fn rewritten(conf: &str, req: ext_plugin_sdk::model::HttpReqCallReq) -> Vec<(String, Option<String>)> {
        let p = plugin(conf).unwrap();
        let mut c = TestCall::new(req);
        assert_eq!(p.request_filter(&mut c.call()).await.unwrap(), Flow::Continue);
        c.set_headers()
            .iter()
            .map(|h| (h.name.to_string(), h.value.as_ref().map(|v| v.to_string())))
            .collect()
    }

    /// The path a call rewrote to, or the Stop it answered.
    async fn path_after(conf: &str, req: ext_plugin_sdk::model::HttpReqCallReq) -> Result<String, Stop> {
        let p = plugin(conf).unwrap();
        let mut c = TestCall::new(req);
        match p.request_filter(&mut c.call()).await.unwrap() {
            Flow::Stop(s) => Err(s),
            _ => Ok(c.call().path().to_owned()),
        }
    }

    /// Issue 11 #18: decoded client values put CR/LF/NUL into header values and `..`, `?`,
    /// `#` into the path (control bytes in the path are the gateway's to escape).
    #[tokio::test]
    async fn client_values_cannot_break_the_path_or_headers() {
        let uri = r#"{"uri": "/svc/$arg_x", "headers": {"set": {"X-Echo": "$arg_x"}}}"#;
        let req = |x: &str| request(Method::Get, "/old").with_arg("x", x);
        assert_eq!(path_after(uri, req("a?b#c")).await.unwrap(), "/svc/a%3Fb%23c");
        let set = rewritten(uri, req("v\r\nInjected: 1\0")).await;
        assert!(set.contains(&("x-echo".into(), Some("v%0D%0AInjected: 1%00".into()))), "{set:?}");
        for x in ["..", "../../admin", "a/./b", "."] {
            let s = path_after(uri, req(x)).await.unwrap_err();
            assert_eq!(s.status, 400, "{x}");
        }
        assert_eq!(path_after(uri, req("a..b")).await.unwrap(), "/svc/a..b", "dots inside a segment are fine");
        // regex_uri captures come from the decoded path.
        let re = r#"{"regex_uri": ["^/api/(.*)", "/svc/$1"]}"#;
        let at = |p: &str| request(Method::Get, p);
        assert_eq!(path_after(re, at("/api/a?b#c")).await.unwrap(), "/svc/a%3Fb%23c");
        assert_eq!(path_after(re, at("/api/../../etc")).await.unwrap_err().status, 400);
        // The operator's own constant path is theirs.
        assert_eq!(path_after(r#"{"uri": "/a/../b"}"#, at("/x")).await.unwrap(), "/a/../b");
    }

    #[tokio::test]
    async fn add_keeps_every_incoming_value() {
        let conf = r#"{"headers": {"add": {"test": "123"}, "set": {"test2": "2233"}, "remove": ["hello"]}}"#;
        let req = request(Method::Get, "/echo").with_header("test", "sssss").with_header("test", "bbb");
        let set = rewritten(conf, req).await;
        assert!(set.contains(&("test".into(), Some("sssss, bbb, 123".into()))), "{set:?}");
    }

    #[tokio::test]
    async fn header_values_may_be_numbers_and_arrays() {
        let conf = r#"{"headers": {"X-Forwarded-Port": 10080}}"#;
        let set = rewritten(conf, request(Method::Get, "/")).await;
        assert_eq!(set, [("x-forwarded-port".into(), Some("10080".into()))]);
        let conf = r#"{"headers": {"set": {"x-multi": ["val1", 2]}, "add": {"x-add": ["a", "b"]}}}"#;
        let set = rewritten(conf, request(Method::Get, "/").with_header("x-add", "origin")).await;
        assert!(set.contains(&("x-multi".into(), Some("val1, 2".into()))), "{set:?}");
        assert!(set.contains(&("x-add".into(), Some("origin, a, b".into()))), "{set:?}");
    }

    #[test]
    fn invalid_regex_uri_templates_are_refused() {
        for template in ["/$`1", "/$a", "/${a}", "/${1", "/$", "/${}"] {
            let conf = format!(r#"{{"regex_uri": ["^/test/(.*)", "{template}"]}}"#);
            let e = plugin(&conf).err().unwrap_or_else(|| panic!("{template} must be refused"));
            assert!(e.message().contains("regex_uri"), "{template}: {e}");
        }
        for template in ["/$1_${1}x", "/a$$b", "/${12}"] {
            let conf = format!(r#"{{"regex_uri": ["^/test/(.*)", "{template}"]}}"#);
            assert!(plugin(&conf).is_ok(), "{template}");
        }
    }

    #[test]
    fn replacements_parse_as_ngx_re_sub_does() {
        use SubPart::*;
        assert_eq!(
            SubTemplate::parse("/v2/${1}x$2a$$/$10"),
            Ok(SubTemplate(vec![
                Lit("/v2/".into()),
                Capture(1),
                Lit("x".into()),
                Capture(2),
                Lit("a$/".into()),
                Capture(10),
            ]))
        );
        let mut out = String::new();
        let at = SubTemplate::parse("/$1?a=$2").unwrap().render(&[None, Some("x?y"), None], &mut out);
        assert_eq!((out.as_str(), at), ("/x%3Fy?a=", Some(6)), "only a written `?` starts the query");
    }
}
