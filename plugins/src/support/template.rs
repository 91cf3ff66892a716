//! Strings with APISIX variables, as APISIX fills them in (its `resolve_var`): limit keys and
//! rule keys, variable counts, fault-injection's abort body and headers, proxy-rewrite's `uri`
//! and header values, api-breaker's header values.
//!
//! * `$name` takes the longest run of ASCII letters, digits, `_` and `.` after the `$`;
//!   `${name}` takes everything up to the next `}` (spaces around the name are ignored).
//! * `${name ?? default}`: the default when the variable is nil.
//! * A `$` that starts neither form (`$`, `$-`, `${` without a `}`) is literal text, and so is
//!   a `$` right after a backslash (`\$uri` stays `\$uri`, backslash included).
//! * A nil variable without a default renders as nothing. The number of variables that had a
//!   value (or a default) is returned too: APISIX treats a template with none as unresolved
//!   (a limit key then falls back to the client address, a rule does not apply).
//!
//! Parsing never fails, as APISIX's never does: every string is some template.

use super::vars::Vars;
use ext_plugin_sdk::{ConfError, PluginError};

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Lit(Box<str>),
    Var {
        name: Box<str>,
        default: Option<Box<str>>,
    },
    /// `$1` / `${1}`: a capture of a regex (proxy-rewrite's header values).
    Capture(usize),
}

/// A rendered template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub text: String,
    /// Variables that had a value or a default.
    pub resolved: usize,
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'.'
}

impl Template {
    pub fn parse(s: &str) -> Template {
        Template::parse_inner(s, false)
    }

    /// [`Template::parse`], where `$` followed by digits (`$1`, `${1}`, also `${1` and `$1}` as
    /// APISIX's pattern allows) is a regex capture instead of a variable.
    pub fn parse_with_captures(s: &str) -> Template {
        Template::parse_inner(s, true)
    }

    fn parse_inner(s: &str, captures: bool) -> Template {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut rest = s;
        while let Some(at) = rest.find('$') {
            let escaped = rest[..at].ends_with('\\') || (at == 0 && lit.ends_with('\\'));
            lit.push_str(&rest[..at]);
            let after = &rest[at + 1..];
            let var = match (escaped, captures) {
                (true, _) => None,
                (false, true) => capture_at(after).or_else(|| var_at(after)),
                (false, false) => var_at(after),
            };
            match var {
                Some((var, len)) => {
                    if !lit.is_empty() {
                        parts.push(Part::Lit(std::mem::take(&mut lit).into()));
                    }
                    parts.push(var);
                    rest = &after[len..];
                }
                None => {
                    lit.push('$');
                    rest = after;
                }
            }
        }
        lit.push_str(rest);
        if !lit.is_empty() {
            parts.push(Part::Lit(lit.into()));
        }
        Template { parts }
    }

    /// A template that is `text` as it is, `$` included.
    pub fn literal(text: &str) -> Template {
        let parts = if text.is_empty() {
            Vec::new()
        } else {
            vec![Part::Lit(text.into())]
        };
        Template { parts }
    }

    pub fn parts(&self) -> &[Part] {
        &self.parts
    }

    /// The text, when the template has no variables (nothing to do per request).
    pub fn constant(&self) -> Option<&str> {
        match &self.parts[..] {
            [] => Some(""),
            [Part::Lit(s)] => Some(s),
            _ => None,
        }
    }

    /// Fills the variables in from the call (the request's, or the response phase's
    /// [`ResponseVars`](super::vars::ResponseVars)).
    pub async fn render(&self, call: &mut impl Vars) -> Result<Rendered, PluginError> {
        self.render_with(call, &[], |v, out| out.push_str(v)).await
    }

    /// [`Template::render`], passing every variable's value (or default) through `escape`.
    pub async fn render_escaped(
        &self,
        call: &mut impl Vars,
        escape: impl Fn(&str, &mut String),
    ) -> Result<Rendered, PluginError> {
        self.render_with(call, &[], escape).await
    }

    /// [`Template::render_escaped`] with the captures of a regex match (absent ones, and all of
    /// them without a match, render as nothing).
    pub async fn render_with(
        &self,
        call: &mut impl Vars,
        captures: &[Option<&str>],
        escape: impl Fn(&str, &mut String),
    ) -> Result<Rendered, PluginError> {
        let mut out = Rendered {
            text: String::new(),
            resolved: 0,
        };
        for part in &self.parts {
            match part {
                Part::Lit(s) => out.text.push_str(s),
                Part::Capture(n) => {
                    out.text
                        .push_str(captures.get(*n).copied().flatten().unwrap_or_default());
                }
                Part::Var { name, default } => {
                    let value = call.var(name).await?;
                    let value = value.as_deref().or(default.as_deref());
                    if let Some(v) = value {
                        out.resolved += 1;
                        escape(v, &mut out.text);
                    }
                }
            }
        }
        Ok(out)
    }
}

/// A number as Lua's `tostring` writes it (`2`, not `2.0`).
pub fn lua_number(n: &serde_json::Number) -> String {
    match n.as_f64() {
        Some(x) if n.is_f64() && x.fract() == 0.0 && x.abs() < 1e15 => format!("{}", x as i64),
        _ => n.to_string(),
    }
}

/// A header value from a conf: a string (a template, with regex captures when `captures`) or
/// a number, or with `list`, an array of those (several values). `field` names the value in
/// errors.
pub fn header_values(
    field: &str,
    value: &serde_json::Value,
    list: bool,
    captures: bool,
) -> Result<Vec<Template>, ConfError> {
    use serde_json::Value;
    let parse = |s: &str| {
        if captures {
            Template::parse_with_captures(s)
        } else {
            Template::parse(s)
        }
    };
    let one = |v: &Value| match v {
        Value::String(s) => Ok(parse(s)),
        Value::Number(n) => Ok(Template::parse(&lua_number(n))),
        other => Err(ConfError::new(format!(
            "`{field}` must be a string or a number{}, got {other}",
            if list { " (or an array of them)" } else { "" }
        ))),
    };
    match value {
        Value::Array(items) if list => {
            if items.is_empty() {
                return Err(ConfError::new(format!(
                    "`{field}` must not be an empty array"
                )));
            }
            items.iter().map(one).collect()
        }
        v => Ok(vec![one(v)?]),
    }
}

/// Makes a rendered header value safe to send: line breaks become `%0D` / `%0A`, so a variable
/// (a decoded `$uri`, say) cannot inject a header.
pub fn header_safe(mut value: String) -> String {
    if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
        value = value
            .replace('\r', "%0D")
            .replace('\n', "%0A")
            .replace('\0', "%00");
    }
    value
}

/// The capture (`1`, `{1}`, `{1`, `1}`) that starts right after a `$`, and its length.
fn capture_at(after: &str) -> Option<(Part, usize)> {
    let braced = usize::from(after.starts_with('{'));
    let digits = after[braced..]
        .bytes()
        .take_while(u8::is_ascii_digit)
        .count();
    if digits == 0 {
        return None;
    }
    let n = after[braced..braced + digits].parse().unwrap_or(usize::MAX);
    let closed = usize::from(after[braced + digits..].starts_with('}'));
    Some((Part::Capture(n), braced + digits + closed))
}

/// The variable that starts right after a `$`, and how many bytes it spans.
fn var_at(after: &str) -> Option<(Part, usize)> {
    let (inner, len) = if let Some(braced) = after.strip_prefix('{') {
        let end = braced.find('}')?;
        if end == 0 {
            return None;
        }
        (braced[..end].trim(), end + 2)
    } else {
        let end = after
            .bytes()
            .position(|b| !is_name_byte(b))
            .unwrap_or(after.len());
        if end == 0 {
            return None;
        }
        (&after[..end], end)
    };
    let (name, default) = match inner.split_once("??") {
        Some((name, default)) => {
            // A third `??` segment is ignored, as APISIX ignores it.
            let default = default.split("??").next().unwrap_or_default().trim();
            (name.trim(), Some(default.into()))
        }
        None => (inner, None),
    };
    Some((
        Part::Var {
            name: name.into(),
            default,
        },
        len,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ext_plugin_sdk::harness::{request, TestCall};
    use ext_plugin_sdk::Method;

    fn var(name: &str, default: Option<&str>) -> Part {
        Part::Var {
            name: name.into(),
            default: default.map(Into::into),
        }
    }

    fn lit(s: &str) -> Part {
        Part::Lit(s.into())
    }

    #[test]
    fn parses_apisix_forms() {
        assert_eq!(
            Template::parse("$remote_addr:${ http_x_user }/$a.b-x").parts(),
            [
                var("remote_addr", None),
                lit(":"),
                var("http_x_user", None),
                lit("/"),
                var("a.b", None),
                lit("-x"),
            ]
        );
        assert_eq!(
            Template::parse("${http_project ?? apisix}").parts(),
            [var("http_project", Some("apisix"))]
        );
        assert_eq!(
            Template::parse("${http_count??2}").parts(),
            [var("http_count", Some("2"))]
        );
        // Not variables: a lone `$`, `$` before a non-name byte, an unclosed or empty brace, an
        // escaped `$`.
        for s in ["cost $", "a $- b", "${open", "${}", "\\$uri", "abcdefgh"] {
            assert_eq!(Template::parse(s).constant(), Some(s), "{s}");
        }
        assert_eq!(
            Template::parse("{\"count\": $arg_count}").parts(),
            [lit("{\"count\": "), var("arg_count", None), lit("}")]
        );
    }

    #[tokio::test]
    async fn renders_values_defaults_and_counts_them() {
        let mut c = TestCall::new(
            request(Method::Get, "/p")
                .with_header("x-user", "ann")
                .with_header("x-empty", ""),
        );
        let render = |t: &str| Template::parse(t);
        let r = render("${http_x_user}-${http_project ?? apisix}-$http_none|$http_x_empty|")
            .render(&mut c.call())
            .await
            .unwrap();
        assert_eq!(r.text, "ann-apisix-||");
        assert_eq!(
            r.resolved, 3,
            "an empty value is a value; a nil without default is not"
        );
        let r = render("$http_a $http_b")
            .render(&mut c.call())
            .await
            .unwrap();
        assert_eq!((r.text.as_str(), r.resolved), (" ", 0));
        let r = render("/$uri?")
            .render_escaped(&mut c.call(), |v, out| out.push_str(&v.replace('/', "%2F")))
            .await
            .unwrap();
        assert_eq!(r.text, "/%2Fp?", "only values are escaped");
    }
}
