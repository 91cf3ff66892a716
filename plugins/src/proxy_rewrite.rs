//! `proxy-rewrite` (PLUGINS.md §2.11): rewrite the upstream path, Host, headers and arguments.
//!
//! Conf: `{"uri": "/v2/$arg_id", "regex_uri": ["^/api/(.*)", "/svc/$1"], "host":
//! "backend.internal", "headers": {"add": {"X-From": "gw"}, "set": {"X-Route": "$uri"},
//! "remove": ["X-Debug"]}, "args": {"add": {...}, "set": {"v": "2"}, "remove": ["debug"]}}`.
//!
//! Order (APISIX's): `uri`, else the first `regex_uri` pair whose regex matches the path (only
//! the matched part is replaced); then `host`; then headers add → set → remove; then *(ext)*
//! args add → set → remove. Variables (`$uri`, `$arg_id`, `$http_x_user`, `${name}`) resolve
//! against the request before this plugin's rewrite; `$1`/`${1}` are captures of the matching
//! `regex_uri` regex (empty when none matched). A nil variable renders as nothing.
//!
//! Limits of the protocol, rejected or documented rather than faked:
//! * `method` (and `scheme`, `use_real_request_uri_unsafe`) fail `prepare_conf`.
//! * `headers.add` cannot append a second value: it sets a header that is absent and otherwise
//!   merges as `old, new` (one value, as HTTP allows for list headers); `Set-Cookie` is never
//!   merged, only set when absent.
//! * A literal `?` in `uri` or a `regex_uri` template is rejected: use `args`.

use std::collections::BTreeMap;

use regex::Regex;
use serde::Deserialize;
use serde_json::Value;

use super::restriction;
use ext_plugin_sdk::*;

pub struct ProxyRewrite {
    uri: Option<Template>,
    regex_uri: Vec<(Regex, Template)>,
    host: Option<Text>,
    headers: Ops,
    args: Ops,
}

/// add / set / remove, each in conf order (names sorted).
#[derive(Default)]
struct Ops {
    add: Vec<(Text, Template)>,
    set: Vec<(Text, Template)>,
    remove: Vec<Text>,
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
    headers: Option<OpsConf>,
    #[serde(default)]
    args: Option<OpsConf>,
    // Fields the runner cannot honour; named so their rejection can say why.
    #[serde(default)]
    method: Option<Value>,
    #[serde(default)]
    scheme: Option<Value>,
    #[serde(default)]
    use_real_request_uri_unsafe: Option<Value>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct OpsConf {
    #[serde(default)]
    add: BTreeMap<String, String>,
    #[serde(default)]
    set: BTreeMap<String, String>,
    #[serde(default)]
    remove: Vec<String>,
}

/// A string with `$var`, `${var}`, `$1` and `${1}` placeholders, parsed once.
#[derive(Debug, PartialEq)]
enum Segment {
    Lit(String),
    Var(Text),
    Capture(usize),
}

#[derive(Debug, PartialEq)]
struct Template(Vec<Segment>);

impl Template {
    fn parse(s: &str) -> Template {
        let mut segs = Vec::new();
        let mut lit = String::new();
        let mut rest = s;
        while let Some(i) = rest.find('$') {
            lit.push_str(&rest[..i]);
            let after = &rest[i + 1..];
            let (name, next) = match after.strip_prefix('{') {
                Some(b) => match b.find('}') {
                    Some(end) => (&b[..end], &b[end + 1..]),
                    None => ("", after),
                },
                None => {
                    let end = after
                        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                        .unwrap_or(after.len());
                    // `$1a` is capture 1 then "a", as ngx.re.sub reads it.
                    let end = match after.bytes().take_while(u8::is_ascii_digit).count() {
                        0 => end,
                        digits => digits,
                    };
                    (&after[..end], &after[end..])
                }
            };
            if name.is_empty() {
                lit.push('$');
                rest = after;
                continue;
            }
            if !lit.is_empty() {
                segs.push(Segment::Lit(std::mem::take(&mut lit)));
            }
            segs.push(match name.parse::<usize>() {
                Ok(n) => Segment::Capture(n),
                Err(_) => Segment::Var(name.to_owned().into()),
            });
            rest = next;
        }
        lit.push_str(rest);
        if !lit.is_empty() {
            segs.push(Segment::Lit(lit));
        }
        Template(segs)
    }

    /// The text without placeholders, when there are none (no work per request).
    fn constant(&self) -> Option<&str> {
        match &self.0[..] {
            [] => Some(""),
            [Segment::Lit(s)] => Some(s),
            _ => None,
        }
    }

    async fn render(
        &self,
        call: &mut RequestCall<'_>,
        caps: &[Option<String>],
    ) -> Result<Text, PluginError> {
        if let Some(c) = self.constant() {
            return Ok(Text::from(c.to_owned()));
        }
        let mut out = String::new();
        for seg in &self.0 {
            match seg {
                Segment::Lit(s) => out.push_str(s),
                Segment::Capture(n) => out.push_str(caps.get(*n).and_then(Option::as_deref).unwrap_or("")),
                Segment::Var(v) => {
                    if let Some(value) = call.var(v).await? {
                        out.push_str(&value);
                    }
                }
            }
        }
        Ok(out.into())
    }
}

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

fn ops(field: &str, conf: Option<OpsConf>, is_header: bool) -> Result<Ops, ConfError> {
    let conf = conf.unwrap_or_default();
    let name = |op: &str, n: &str| -> Result<Text, ConfError> {
        let f = format!("{field}.{op}");
        if is_header {
            return header_name(&f, n);
        }
        if n.is_empty() {
            return Err(ConfError::new(format!("`{f}` has an empty name")));
        }
        Ok(n.to_owned().into())
    };
    let pairs = |op: &str, m: BTreeMap<String, String>| {
        m.into_iter()
            .map(|(n, v)| {
                // A secret reference (`$ENV://NAME`) is resolved now, not read as `$ENV`.
                let value = if ext_plugin_sdk::secret::is_secret_ref(&v) {
                    let f = format!("`{field}.{op}.{n}`");
                    Template(vec![Segment::Lit(ext_plugin_sdk::resolve_secret(&f, &v)?)])
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

fn no_query(field: &str, template: &str) -> Result<(), ConfError> {
    if template.contains('?') {
        return Err(ConfError::new(format!(
            "`{field}` {template:?} contains `?`: the path cannot carry a query; use `args`"
        )));
    }
    Ok(())
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
        if conf.scheme.is_some() || conf.use_real_request_uri_unsafe.is_some() {
            return Err(ConfError::new(
                "`scheme` and `use_real_request_uri_unsafe` cannot be honoured through the \
                 ext-plugin protocol",
            ));
        }
        let uri = match conf.uri {
            Some(u) if !u.starts_with('/') && !u.starts_with('$') => {
                return Err(ConfError::new(format!("`uri` {u:?} must start with `/`")))
            }
            Some(u) => {
                no_query("uri", &u)?;
                Some(Template::parse(&u))
            }
            None => None,
        };
        let regex_uri = match conf.regex_uri {
            None => Vec::new(),
            Some(list) if list.is_empty() || list.len() % 2 != 0 => {
                return Err(ConfError::new(
                    "`regex_uri` must be pairs: [regex, template, regex, template, ...]",
                ))
            }
            Some(list) => list
                .chunks(2)
                .enumerate()
                .map(|(i, pair)| {
                    no_query(&format!("regex_uri[{}]", 2 * i + 1), &pair[1])?;
                    let re = restriction::regex(&format!("regex_uri[{}]", 2 * i), &pair[0])?;
                    Ok((re, Template::parse(&pair[1])))
                })
                .collect::<Result<_, ConfError>>()?,
        };
        let host = match conf.host {
            Some(h) if h.is_empty() || h.bytes().any(|b| b.is_ascii_whitespace() || b == b'/') => {
                return Err(ConfError::new(format!("`host` {h:?} is not a host")))
            }
            h => h.map(Text::from),
        };
        Ok(ProxyRewrite {
            uri,
            regex_uri,
            host,
            headers: ops("headers", conf.headers, true)?,
            args: ops("args", conf.args, false)?,
        })
    }

    async fn request_filter(&self, call: &mut RequestCall<'_>) -> Result<Flow, PluginError> {
        let mut caps: Vec<Option<String>> = Vec::new();
        let mut path = None;
        if let Some(uri) = &self.uri {
            path = Some(uri.render(call, &caps).await?);
        } else {
            let current = call.path();
            let hit = self.regex_uri.iter().find_map(|(re, t)| {
                let c = re.captures(current)?;
                let m = c.get(0).expect("group 0 always matches");
                Some((t, m.start(), m.end(), c.iter().map(|g| g.map(|g| g.as_str().to_owned())).collect()))
            });
            if let Some((template, start, end, captured)) = hit {
                let (before, after) = (current[..start].to_owned(), current[end..].to_owned());
                caps = captured;
                let middle = template.render(call, &caps).await?;
                path = Some(format!("{before}{middle}{after}").into());
            }
        }
        // Values render before anything is applied, so `$uri` means the request's path.
        let mut headers = Vec::with_capacity(self.headers.add.len() + self.headers.set.len());
        for (_, t) in self.headers.add.iter().chain(&self.headers.set) {
            headers.push(t.render(call, &caps).await?);
        }
        let mut args = Vec::with_capacity(self.args.add.len() + self.args.set.len());
        for (_, t) in self.args.add.iter().chain(&self.args.set) {
            args.push(t.render(call, &caps).await?);
        }

        if let Some(host) = &self.host {
            call.set_header("host", host.clone());
        }
        let mut values = headers.into_iter();
        for ((name, _), value) in self.headers.add.iter().zip(values.by_ref()) {
            match call.header(name) {
                None => call.set_header(name.clone(), value),
                Some(_) if &**name == "set-cookie" => {}
                Some(old) => {
                    let merged = format!("{old}, {value}");
                    call.set_header(name.clone(), merged);
                }
            }
        }
        for ((name, _), value) in self.headers.set.iter().zip(values) {
            call.set_header(name.clone(), value);
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
        if let Some(p) = path {
            call.set_path(p);
        }
        Ok(Flow::Continue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Segment::*;

    #[test]
    fn templates_parse_vars_and_captures() {
        assert_eq!(
            Template::parse("/v2/$arg_id/${1}x$2a$$"),
            Template(vec![
                Lit("/v2/".into()),
                Var("arg_id".into()),
                Lit("/".into()),
                Capture(1),
                Lit("x".into()),
                Capture(2),
                Lit("a$$".into()),
            ])
        );
        assert_eq!(Template::parse("plain").constant(), Some("plain"));
        assert_eq!(Template::parse("${unclosed").constant(), Some("${unclosed"));
        assert_eq!(Template::parse("a-$").constant(), Some("a-$"));
    }
}
