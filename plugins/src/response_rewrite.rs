//! `response-rewrite`: change the upstream's answer: status, body, headers, or regex
//! substitutions in the body.
//!
//! Conf (APISIX's): `{"status_code": 200, "body": "...", "body_base64": false, "headers": {"add":
//! ["X-A: 1"], "set": {"X-B": "$remote_addr"}, "remove": ["X-C"]}, "vars": [["status", "==",
//! 200]], "filters": [{"regex": "hello", "replace": "HELLO", "scope": "once", "options": "jo"}],
//! "max_resp_body_size": 67108864}`. `headers` may also be the older flat form `{"X-B": "v"}`
//! (= `set`).
//!
//! Refused as APISIX refuses them: `body` together with `filters`; `body_base64` without a
//! non-empty, valid base64 `body`; `status_code` outside 200–598; an empty `filters`, a filter
//! without `regex` or `replace`, an empty `regex`, a `scope` other than `once`/`global`, an
//! unknown regex flag; header names with `:`, empty names, values that are not strings or
//! numbers; `add` entries not of the form `Name: value`; an empty `vars` rule. Refused because
//! the protocol cannot express them: an empty `body` (stock APISIX keeps the upstream's body when
//! the runner returns an empty one).
//!
//! Where it acts:
//! * Attached as `ext-plugin-post-resp`, everything happens in the response phase: when `vars`
//!   matches (`status`, `upstream_status`, `sent_http_*` and `upstream_http_*` read the
//!   upstream's answer; other variables are asked of the gateway), the status is set, the body
//!   replaced (clearing `Content-Length`, `Content-Encoding`, `ETag` and `Last-Modified`, as
//!   APISIX does) or filtered, and the headers added, set and removed in that order, `$var`
//!   values resolved. `filters` fetch the upstream body through `extra_info`, cut it to
//!   `max_resp_body_size`, decode `gzip` and `br`, and substitute in order. The reply carries the
//!   whole header set, without hop-by-hop or framing headers.
//! * Attached as pre-req or post-req, only header `set` and `remove` can be done (through the
//!   request's response headers), for names the gateway lets a runner set; the conf must not
//!   use `status_code`, `body`, `filters`, `vars`, `add` or variables of the response.
//!
//! Differences (the docs list them): regexes are `fancy-regex` (PCRE-like, with look-around and
//! back-references; `$` also matches before a final newline, as in PCRE) on UTF-8 text; a body
//! that is not UTF-8, or whose encoding cannot be decoded, is left as it is, together with its
//! `Content-Encoding`; a filter pass that changes nothing leaves the body and its headers alone.

use std::borrow::Cow;
use std::io::Read;

use base64::Engine as _;
use serde::Deserialize;
use serde_json::Value;

use crate::support::expr::Expr;
use crate::support::patterns::{self, Budget};
use crate::support::template::{self, Part};
use crate::support::reject::is_token;
use crate::support::vars::ResponseVars;
use ext_plugin_sdk::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseRewriteConf {
    status_code: Option<u16>,
    body: Option<String>,
    #[serde(default)]
    body_base64: bool,
    headers: Option<Value>,
    vars: Option<Value>,
    filters: Option<Vec<FilterConf>>,
    #[serde(default = "default_max_body")]
    max_resp_body_size: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FilterConf {
    regex: Option<String>,
    replace: Option<String>,
    #[serde(default)]
    scope: Scope,
    #[serde(default = "default_options")]
    options: String,
}

#[derive(Deserialize, Clone, Copy, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Scope {
    #[default]
    Once,
    Global,
}

fn default_max_body() -> u64 {
    64 * 1024 * 1024
}
fn default_options() -> String {
    "jo".into()
}

/// Names the gateway drops from a request-phase rewrite's response headers.
const GATEWAY_EXCLUDED: [&str; 10] = [
    "connection",
    "content-length",
    "transfer-encoding",
    "location",
    "server",
    "www-authenticate",
    "content-encoding",
    "content-type",
    "content-location",
    "content-language",
];

/// Headers APISIX clears when it changes a body.
const BODY_HEADERS: [&str; 4] = ["content-length", "content-encoding", "etag", "last-modified"];

pub struct ResponseRewrite {
    status: Option<u16>,
    body: Option<Bytes>,
    filters: Vec<Filter>,
    max_body: usize,
    vars: Option<Expr>,
    headers: HeaderOps,
    /// Attached where there is no response phase: headers are set through the request.
    request_phase: bool,
}

struct Filter {
    regex: fancy_regex::Regex,
    replace: Template,
    global: bool,
}

#[derive(Default)]
struct HeaderOps {
    add: Vec<(Text, Value_)>,
    set: Vec<(Text, Value_)>,
    remove: Vec<Text>,
}

/// A header value: literal, or a `$var` / `${var ?? default}` template.
enum Value_ {
    Literal(Text),
    Template(template::Template),
}

impl Plugin for ResponseRewrite {
    const NAME: &'static str = "response-rewrite";
    type Conf = ResponseRewriteConf;

    fn prepare(conf: ResponseRewriteConf, env: &mut PrepareEnv<'_>) -> Result<Self, ConfError> {
        if conf.body.is_some() && conf.filters.is_some() {
            return Err(ConfError::new(
                "`body` and `filters` are exclusive (a filter edits the upstream's body, `body` \
                 replaces it)",
            ));
        }
        if let Some(code) = conf.status_code {
            if !(200..=598).contains(&code) {
                return Err(ConfError::field("status_code", format!("must be 200 to 598, got {code}")));
            }
        }
        if conf.max_resp_body_size == 0 {
            return Err(ConfError::field("max_resp_body_size", "must be at least 1"));
        }
        let body = prepare_body(conf.body.as_deref(), conf.body_base64)?;
        // The filters' regexes and `vars` draw on one budget.
        let mut budget = Budget::default();
        let filters = match conf.filters {
            None => Vec::new(),
            Some(f) if f.is_empty() => {
                return Err(ConfError::field("filters", "must have at least 1 item"))
            }
            Some(f) => f
                .into_iter()
                .enumerate()
                .map(|(i, f)| prepare_filter(i, f, &mut budget))
                .collect::<Result<_, _>>()?,
        };
        let vars = match &conf.vars {
            None => None,
            Some(v) => {
                check_rules(v)?;
                Some(Expr::parse(v, &mut budget).map_err(|e| ConfError::field("vars", e))?)
            }
        };
        let headers = match &conf.headers {
            None => HeaderOps::default(),
            Some(h) => HeaderOps::parse(h)?,
        };
        let request_phase = env.attachment() != Attachment::PostResp;
        if request_phase {
            check_request_phase(&conf.status_code, &body, &filters, &vars, &headers, env)?;
        }
        Ok(ResponseRewrite {
            status: conf.status_code,
            body,
            filters,
            max_body: usize::try_from(conf.max_resp_body_size).unwrap_or(usize::MAX),
            vars,
            headers,
            request_phase,
        })
    }

    async fn request_filter(&self, call: &mut RequestCall<'_>) -> Result<Flow, PluginError> {
        if !self.request_phase {
            return Ok(Flow::Continue);
        }
        for (name, value) in &self.headers.set {
            let value = value.resolve(call).await?;
            if value.is_empty() {
                call.remove_response_header(name.clone());
            } else {
                call.set_response_header(name.clone(), value);
            }
        }
        for name in &self.headers.remove {
            call.remove_response_header(name.clone());
        }
        Ok(Flow::Continue)
    }

    async fn response_filter(&self, call: &mut ResponseCall<'_>) -> Result<(), PluginError> {
        if self.request_phase {
            return Ok(());
        }
        if let Some(vars) = &self.vars {
            if !vars.matches_vars(&mut ResponseVars(call)).await? {
                return Ok(());
            }
        }
        if let Some(status) = self.status {
            call.set_status(status);
        }
        if let Some(body) = &self.body {
            call.set_body(body.clone());
            clear_body_headers(call);
        } else if !self.filters.is_empty() {
            self.filter_body(call).await?;
        }
        // Values resolve before any header changes, as APISIX resolves each against ctx.var.
        let mut resolved = Vec::with_capacity(self.headers.add.len() + self.headers.set.len());
        for (_, value) in self.headers.add.iter().chain(&self.headers.set) {
            resolved.push(value.resolve(&mut ResponseVars(call)).await?);
        }
        let mut resolved = resolved.into_iter();
        for ((name, _), value) in self.headers.add.iter().zip(resolved.by_ref()) {
            call.append_header(name.clone(), value);
        }
        for ((name, _), value) in self.headers.set.iter().zip(resolved) {
            if value.is_empty() {
                call.remove_header(name.clone());
            } else {
                call.set_header(name.clone(), value);
            }
        }
        for name in &self.headers.remove {
            call.remove_header(name.clone());
        }
        Ok(())
    }
}

impl ResponseRewrite {
    /// Fetches, decodes and filters the upstream body; leaves it alone when it cannot be read
    /// as text or when no filter changed it.
    async fn filter_body(&self, call: &mut ResponseCall<'_>) -> Result<(), PluginError> {
        let full = call.body().await?.unwrap_or_default();
        let raw = &full[..full.len().min(self.max_body)];
        let truncated = raw.len() < full.len();
        let encoding = call.header("content-encoding").map(str::to_ascii_lowercase);
        let decoded: Cow<'_, [u8]> = match encoding.as_deref() {
            None | Some("") | Some("identity") => Cow::Borrowed(raw),
            Some(enc) => match decode(enc, raw, self.max_body) {
                Some(d) => Cow::Owned(d),
                None => {
                    tracing::debug!(encoding = enc, "response-rewrite: body left as is: cannot decode");
                    return Ok(());
                }
            },
        };
        let Ok(text) = std::str::from_utf8(&decoded) else {
            tracing::debug!("response-rewrite: body left as is: not UTF-8");
            return Ok(());
        };
        let mut body = Cow::Borrowed(text);
        for f in &self.filters {
            let limit = if f.global { 0 } else { 1 };
            match f.regex.try_replacen(&body, limit, &f.replace) {
                Ok(Cow::Borrowed(_)) => {}
                Ok(Cow::Owned(changed)) => body = Cow::Owned(changed),
                Err(e) => tracing::debug!(error = %e, "response-rewrite: a filter failed"),
            }
        }
        let decoded_away = matches!(decoded, Cow::Owned(_));
        if matches!(body, Cow::Borrowed(_)) && !decoded_away && !truncated {
            return Ok(());
        }
        call.set_body(body.into_owned());
        clear_body_headers(call);
        Ok(())
    }
}

fn clear_body_headers(call: &mut ResponseCall<'_>) {
    for name in BODY_HEADERS {
        if call.header(name).is_some() {
            call.remove_header(name);
        }
    }
}

/// Decodes a `gzip` or `br` body, up to `max` bytes of output; `None` for other encodings and
/// for bodies that do not decode.
fn decode(encoding: &str, raw: &[u8], max: usize) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let limit = u64::try_from(max).unwrap_or(u64::MAX);
    let read = match encoding {
        "gzip" | "x-gzip" => flate2::read::MultiGzDecoder::new(raw).take(limit).read_to_end(&mut out),
        "br" => brotli_decompressor::Decompressor::new(raw, 4096)
            .take(limit)
            .read_to_end(&mut out),
        _ => return None,
    };
    read.ok().map(|_| out)
}

fn prepare_body(body: Option<&str>, base64: bool) -> Result<Option<Bytes>, ConfError> {
    let Some(body) = body else {
        if base64 {
            return Err(ConfError::field("body_base64", "needs a `body` (invalid base64 content)"));
        }
        return Ok(None);
    };
    // APISIX resolves secret references in any conf string, this one included.
    let body = if ext_plugin_sdk::secret::is_secret_ref(body) {
        resolve_secret("`body`", body)?
    } else {
        body.to_owned()
    };
    let bytes = if base64 {
        base64::engine::general_purpose::STANDARD
            .decode(body.trim())
            .ok()
            .filter(|b| !b.is_empty())
            .ok_or_else(|| ConfError::field("body", "invalid base64 content"))?
    } else {
        body.into_bytes()
    };
    if bytes.is_empty() {
        return Err(ConfError::field(
            "body",
            "an empty body cannot be sent: the gateway keeps the upstream's body when the runner \
             returns an empty one",
        ));
    }
    Ok(Some(Bytes::from(bytes)))
}

fn prepare_filter(i: usize, f: FilterConf, budget: &mut Budget) -> Result<Filter, ConfError> {
    let field = format!("filters[{i}]");
    let regex = f.regex.ok_or_else(|| ConfError::field(&field, "`regex` is required"))?;
    let replace = f.replace.ok_or_else(|| ConfError::field(&field, "`replace` is required"))?;
    if regex.is_empty() {
        return Err(ConfError::field(&format!("{field}.regex"), "must not be empty"));
    }
    let mut builder = fancy_regex::RegexBuilder::new(&pcre_dollar(&regex, f.options.contains('m')));
    for flag in f.options.chars() {
        match flag {
            'i' => {
                builder.case_insensitive(true);
            }
            'm' => {
                builder.multi_line(true);
            }
            's' => {
                builder.dot_matches_new_line(true);
            }
            'x' => {
                builder.ignore_whitespace(true);
            }
            // JIT, compile-once, UTF-8, duplicate names: how PCRE runs, not what matches.
            'j' | 'o' | 'u' | 'U' | 'D' | 'J' => {}
            other => {
                return Err(ConfError::field(
                    &format!("{field}.options"),
                    format!("unknown flag {other:?} (flags {:?})", f.options),
                ))
            }
        }
    }
    budget.fancy(&format!("{field}.regex"), &mut builder)?;
    patterns::check_len(&format!("{field}.regex"), &regex)?;
    let regex = builder
        .build()
        .map_err(|e| ConfError::field(&format!("{field}.regex"), format!("{regex:?}: {e}")))?;
    let replace = Template::parse(&replace, regex.captures_len())
        .map_err(|e| ConfError::field(&format!("{field}.replace"), e))?;
    Ok(Filter {
        regex,
        replace,
        global: f.scope == Scope::Global,
    })
}

/// PCRE's `$` (without `m`) also matches before a final newline; Rust engines' `$` only at the
/// very end. Rewrites each unescaped `$` outside a character class to that meaning.
fn pcre_dollar(regex: &str, multi_line: bool) -> String {
    if multi_line {
        return regex.to_owned();
    }
    let mut out = String::with_capacity(regex.len() + 8);
    let (mut escaped, mut in_class) = (false, false);
    for c in regex.chars() {
        match c {
            _ if escaped => {
                escaped = false;
                out.push(c);
            }
            '\\' => {
                escaped = true;
                out.push(c);
            }
            '[' if !in_class => {
                in_class = true;
                out.push(c);
            }
            ']' if in_class => {
                in_class = false;
                out.push(c);
            }
            '$' if !in_class => out.push_str(r"(?=\n?\z)"),
            _ => out.push(c),
        }
    }
    out
}

/// An `ngx.re.sub` replacement: literals and `$N` / `${N}` group references (`$$` is `$`).
struct Template(Vec<Piece>);

enum Piece {
    Lit(String),
    Group(usize),
}

impl Template {
    fn parse(s: &str, groups: usize) -> Result<Template, String> {
        let mut pieces = Vec::new();
        let mut lit = String::new();
        let mut chars = s.chars().peekable();
        while let Some(c) = chars.next() {
            if c != '$' {
                lit.push(c);
                continue;
            }
            let n = match chars.peek() {
                Some('$') => {
                    chars.next();
                    lit.push('$');
                    continue;
                }
                Some('{') => {
                    chars.next();
                    let digits: String = chars.by_ref().take_while(|c| *c != '}').collect();
                    digits.parse::<usize>().map_err(|_| format!("bad group `${{{digits}}}` in {s:?}"))?
                }
                Some(d) if d.is_ascii_digit() => {
                    let mut digits = String::new();
                    while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                        digits.push(*d);
                        chars.next();
                    }
                    digits.parse::<usize>().map_err(|_| format!("bad group in {s:?}"))?
                }
                _ => return Err(format!("`$` must be followed by a group number or `$` in {s:?}")),
            };
            if n >= groups {
                return Err(format!("{s:?} names group {n}; the regex has {}", groups - 1));
            }
            if !lit.is_empty() {
                pieces.push(Piece::Lit(std::mem::take(&mut lit)));
            }
            pieces.push(Piece::Group(n));
        }
        if !lit.is_empty() {
            pieces.push(Piece::Lit(lit));
        }
        Ok(Template(pieces))
    }
}

impl fancy_regex::Replacer for &Template {
    fn replace_append(&mut self, caps: &fancy_regex::Captures<'_, str>, dst: &mut String) {
        for piece in &self.0 {
            match piece {
                Piece::Lit(s) => dst.push_str(s),
                Piece::Group(n) => dst.push_str(caps.get(*n).map_or("", |m| m.as_str())),
            }
        }
    }

    fn no_expansion(&mut self) -> Option<Cow<'_, str>> {
        match self.0.as_slice() {
            [] => Some(Cow::Borrowed("")),
            [Piece::Lit(s)] => Some(Cow::Borrowed(s)),
            _ => None,
        }
    }
}

impl Value_ {
    fn parse(name: &str, v: &Value) -> Result<Value_, ConfError> {
        let text = match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => template::lua_number(n),
            _ => {
                return Err(ConfError::field(
                    &format!("headers.{name}"),
                    "invalid type as header value (a string or a number)",
                ))
            }
        };
        // A secret reference (`$ENV://NAME`) is resolved now, not read as the variable `$ENV`.
        let secret = ext_plugin_sdk::secret::is_secret_ref(&text);
        let text = if secret {
            resolve_secret(&format!("`headers.{name}`"), &text)?
        } else {
            text
        };
        if text.bytes().any(|b| b == b'\r' || b == b'\n') {
            return Err(ConfError::field(&format!("headers.{name}"), "the value has a line break"));
        }
        if secret {
            return Ok(Value_::Literal(Text::from(text)));
        }
        let parsed = template::Template::parse(&text);
        Ok(match parsed.constant() {
            Some(_) => Value_::Literal(Text::from(text)),
            None => Value_::Template(parsed),
        })
    }

    async fn resolve(&self, vars: &mut impl crate::support::vars::Vars) -> Result<Text, PluginError> {
        Ok(match self {
            Value_::Literal(t) => t.clone(),
            // A variable's value cannot break the header (a decoded `$uri`, say).
            Value_::Template(t) => Text::from(template::header_safe(t.render(vars).await?.text)),
        })
    }

    fn vars(&self) -> impl Iterator<Item = &str> {
        let parts = match self {
            Value_::Template(t) => t.parts(),
            Value_::Literal(_) => &[],
        };
        parts.iter().filter_map(|p| match p {
            Part::Var { name, .. } => Some(&**name),
            Part::Lit(_) | Part::Capture(_) => None,
        })
    }
}

impl HeaderOps {
    fn parse(headers: &Value) -> Result<HeaderOps, ConfError> {
        let obj = headers
            .as_object()
            .filter(|o| !o.is_empty())
            .ok_or_else(|| ConfError::field("headers", "must be a non-empty object"))?;
        let new_style = ["add", "set", "remove"].iter().any(|k| obj.contains_key(*k));
        let mut ops = HeaderOps::default();
        if !new_style {
            ops.set = parse_set("headers", obj)?;
            return Ok(ops);
        }
        for key in obj.keys() {
            if !["add", "set", "remove"].contains(&key.as_str()) {
                return Err(ConfError::field(
                    "headers",
                    format!("{key:?}: with `add`/`set`/`remove`, put every header under one of them"),
                ));
            }
        }
        if let Some(add) = obj.get("add") {
            let items = non_empty_array("headers.add", add)?;
            for item in items {
                let line = item
                    .as_str()
                    .ok_or_else(|| ConfError::field("headers.add", "entries must be strings"))?;
                let (name, value) = parse_add(line)
                    .ok_or_else(|| ConfError::field("headers.add", format!("{line:?} is not `Name: value`")))?;
                let value = Value_::parse(name, &Value::String(value.to_owned()))?;
                ops.add.push((header_name("headers.add", name)?, value));
            }
        }
        if let Some(set) = obj.get("set") {
            let set = set
                .as_object()
                .filter(|o| !o.is_empty())
                .ok_or_else(|| ConfError::field("headers.set", "must be a non-empty object"))?;
            ops.set = parse_set("headers.set", set)?;
        }
        if let Some(remove) = obj.get("remove") {
            for item in non_empty_array("headers.remove", remove)? {
                let name = item
                    .as_str()
                    .ok_or_else(|| ConfError::field("headers.remove", "entries must be strings"))?;
                ops.remove.push(header_name("headers.remove", name)?);
            }
        }
        Ok(ops)
    }

    fn names(&self) -> impl Iterator<Item = &Text> {
        self.add.iter().map(|(n, _)| n).chain(self.set.iter().map(|(n, _)| n)).chain(&self.remove)
    }
}

fn parse_set(field: &str, obj: &serde_json::Map<String, Value>) -> Result<Vec<(Text, Value_)>, ConfError> {
    obj.iter()
        .map(|(name, v)| Ok((header_name(field, name)?, Value_::parse(name, v)?)))
        .collect()
}

fn non_empty_array<'v>(field: &str, v: &'v Value) -> Result<&'v Vec<Value>, ConfError> {
    v.as_array()
        .filter(|a| !a.is_empty())
        .ok_or_else(|| ConfError::field(field, "must be a non-empty array"))
}

fn header_name(field: &str, name: &str) -> Result<Text, ConfError> {
    if name.is_empty() {
        return Err(ConfError::field(field, "invalid field length in header"));
    }
    if !is_token(name) {
        return Err(ConfError::field(field, format!("{name:?} is not a valid header name")));
    }
    Ok(Text::from(name.to_owned()))
}

/// APISIX's `add` entry: `^[^:]+:[^:]*[^/]$`, read as `^([^:\s]+)\s*:\s*([^:]+)$`.
fn parse_add(line: &str) -> Option<(&str, &str)> {
    let (name, value) = line.split_once(':')?;
    if value.contains(':') || value.ends_with('/') || value.is_empty() {
        return None;
    }
    let name = name.trim_end();
    let value = value.trim_start();
    if name.is_empty() || name.contains(char::is_whitespace) || value.is_empty() {
        return None;
    }
    Some((name, value))
}

/// `vars` rules must not be empty (lua-resty-expr's "rule too short").
fn check_rules(v: &Value) -> Result<(), ConfError> {
    if let Some(items) = v.as_array() {
        for item in items {
            if item.as_array().is_some_and(Vec::is_empty) {
                return Err(ConfError::field("vars", "rule too short"));
            }
        }
    }
    Ok(())
}

/// What a pre-req or post-req attachment can do: header `set` and `remove` through the
/// request's response headers, for names the gateway accepts there, with request variables.
fn check_request_phase(
    status: &Option<u16>,
    body: &Option<Bytes>,
    filters: &[Filter],
    vars: &Option<Expr>,
    headers: &HeaderOps,
    env: &PrepareEnv<'_>,
) -> Result<(), ConfError> {
    let needs = |what: &str| {
        ConfError::new(format!(
            "{what} needs the upstream's response: attach the chain as ext-plugin-post-resp \
             (this key is {:?})",
            env.key()
        ))
    };
    if status.is_some() {
        return Err(needs("`status_code`"));
    }
    if body.is_some() || !filters.is_empty() {
        return Err(needs("changing the body"));
    }
    if vars.is_some() {
        return Err(needs("`vars`"));
    }
    if !headers.add.is_empty() {
        return Err(needs("`headers.add` (the request phase can only set a response header)"));
    }
    if let Some(name) = headers
        .names()
        .find(|n| GATEWAY_EXCLUDED.iter().any(|x| n.eq_ignore_ascii_case(x)))
    {
        return Err(needs(&format!("header {name:?} (the gateway ignores it in the request phase)")));
    }
    let response_var = |v: &str| {
        v == "status" || v.starts_with("upstream_") || v.starts_with("sent_http_") || v.starts_with("balancer_")
    };
    if let Some(v) = headers.set.iter().flat_map(|(_, v)| v.vars()).find(|v| response_var(v)) {
        return Err(needs(&format!("`${v}`")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcre_dollar_matches_before_a_final_newline() {
        let re = fancy_regex::Regex::new(&pcre_dollar(r"\w\S+$", false)).unwrap();
        assert_eq!(re.replace("hello world\n", "*"), "hello *\n");
        assert_eq!(pcre_dollar(r"a\$[$]$", false), r"a\$[$](?=\n?\z)");
    }

    #[test]
    fn replacement_templates() {
        let re = fancy_regex::Regex::new("(h)(e)").unwrap();
        let t = Template::parse("<$2${1}$$>", re.captures_len()).unwrap();
        assert_eq!(re.replace_all("hehe", &t), "<eh$><eh$>");
        assert!(Template::parse("$3", re.captures_len()).is_err());
        assert!(Template::parse("$x", re.captures_len()).is_err());
    }

    #[test]
    fn header_values_are_apisix_templates_in_the_response_phase() {
        use ext_plugin_sdk::harness::{block_on, TestEnv, TestResp};
        let conf = r#"{"headers": {"set": {"X-Up": "[$upstream_http_x_up]", "X-P": "${http_x_p ?? none}", "X-Lit": "cost: $"}}}"#;
        let parsed: ResponseRewriteConf = serde_json::from_str(conf).unwrap();
        let key = "route#1#ext-plugin-post-resp#1";
        let p = TestEnv::default()
            .with(key, ResponseRewrite::NAME, conf, &[ResponseRewrite::NAME], |e| {
                ResponseRewrite::prepare(parsed, e)
            })
            .unwrap();
        let mut r = TestResp::new(200).with_header("X-Up", "a\nb");
        block_on(p.response_filter(&mut r.call())).unwrap();
        let headers = r.reply().headers;
        let value = |n: &str| {
            let pair = headers.iter().find(|h| h.name.eq_ignore_ascii_case(n));
            pair.and_then(|h| h.value.clone())
        };
        assert_eq!(value("x-up").as_deref(), Some("[a%0Ab]"), "{headers:?}");
        assert_eq!(value("x-p").as_deref(), Some("none"), "a nil variable takes its default");
        assert_eq!(value("x-lit").as_deref(), Some("cost: $"), "a lone `$` is text");
    }

    #[test]
    fn add_entries() {
        assert_eq!(parse_add("Cache-Control : max-age=0, must-revalidate"), Some(("Cache-Control", "max-age=0, must-revalidate")));
        assert_eq!(parse_add("X-Server-test:a"), Some(("X-Server-test", "a")));
        assert_eq!(parse_add("headers:"), None);
        assert_eq!(parse_add("X: http://a"), None);
        assert_eq!(parse_add("X A: b"), None);
    }
}
