//! `cors` (docs/plugins/security.md): Cross-Origin Resource Sharing headers, APISIX's fields.
//!
//! Conf: `{"allow_origins": "*", "allow_methods": "*", "allow_headers": "*", "expose_headers":
//! null, "max_age": 5, "allow_credential": false, "allow_origins_by_regex": null,
//! "timing_allow_origins": null, "timing_allow_origins_by_regex": null}`.
//!
//! * `allow_origins`: `*` (answer `*`), `**` (reflect the request's Origin, allowed even with
//!   credentials), `null`, or a comma-separated list (no spaces) of `scheme://host[:port]`
//!   origins, compared exactly; anything else refuses the conf. `allow_origins_by_regex`
//!   (unanchored, RE2 syntax) replaces `allow_origins` when set. A request whose Origin is not
//!   allowed, or that has none (except with `*` and `**`), gets no CORS headers.
//! * `timing_allow_origins` and `timing_allow_origins_by_regex` work the same way for
//!   `Timing-Allow-Origin`.
//! * `allow_methods` `**` means every method; `allow_headers` `**` reflects
//!   `Access-Control-Request-Headers`; an empty `expose_headers` sends nothing.
//! * The Origin is the one the client sent, even if an earlier plugin of the chain rewrote it.
//! * OPTIONS requests: `Stop(200, CORS headers, empty body)`, as APISIX answers every OPTIONS.
//! * Other requests: the same headers as response headers (`Rewrite{resp_headers}`).
//! * `Vary: Origin` whenever the answer depends on the Origin (every case but `*` without a
//!   regex), handed to the gateway as a response header.
//! * `allow_credential: true` with `*` in any field is a config error; `allow_origins_by_metadata`
//!   is rejected (the runner has no plugin metadata).

use regex::RegexSet;
use serde::Deserialize;

use crate::support::patterns::Budget;

use super::restriction;
use ext_plugin_sdk::*;

const ALL_METHODS: &str = "GET,POST,PUT,DELETE,PATCH,HEAD,OPTIONS,CONNECT,TRACE";

pub struct Cors {
    origins: Origins,
    timing: Option<Origins>,
    /// Whether `Vary: Origin` is sent: whenever the answer depends on the Origin.
    vary: bool,
    methods: Text,
    /// `None`: reflect `Access-Control-Request-Headers` (`**`).
    headers: Option<Text>,
    expose: Option<Text>,
    max_age: Text,
    credentials: bool,
}

/// Which request origins a field allows: a regex set replaces the list (APISIX ignores
/// `allow_origins` once `allow_origins_by_regex` is set).
enum Origins {
    /// `*`: answer `*`.
    Any,
    /// `**`: answer the request's Origin, or `*` without one.
    Reflect,
    /// Exact origins (`null` included), compared as they are written.
    List(Vec<String>),
    Regex(RegexSet),
}

/// Whether `value` is an origins field APISIX accepts: `*`, `**`, `null`, or a comma-separated
/// list (no spaces) of `scheme://...` entries.
fn valid_origins(value: &str) -> bool {
    if matches!(value, "*" | "**" | "null") {
        return true;
    }
    !value.is_empty()
        && value.split(',').all(|entry| {
            entry.split_once("://").is_some_and(|(scheme, rest)| {
                !scheme.is_empty()
                    && scheme.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                    && !rest.is_empty()
            })
        })
}

impl Origins {
    fn new(field: &str, value: &str, regex: Option<&[String]>) -> Result<Origins, ConfError> {
        if !valid_origins(value) {
            return Err(ConfError::new(format!(
                "`{field}` {value:?} must be `*`, `**`, `null` or a comma-separated list of \
                 `scheme://host[:port]` origins without spaces"
            )));
        }
        let regex_field = format!("{field}_by_regex");
        if let Some(patterns) = regex {
            if patterns.is_empty() {
                return Err(ConfError::new(format!("`{regex_field}` must not be empty")));
            }
            restriction::check_list(&regex_field, patterns, 4096, true)?;
            return Ok(Origins::Regex(Budget::default().set(&regex_field, patterns, false)?));
        }
        Ok(match value {
            "*" => Origins::Any,
            "**" => Origins::Reflect,
            list => Origins::List(list.split(',').map(str::to_owned).collect()),
        })
    }

    /// The value to answer for `origin`, or `None` when it is not allowed.
    fn allow(&self, origin: Option<&str>) -> Option<Text> {
        match self {
            Origins::Any => Some(Text::from_static("*")),
            Origins::Reflect => {
                Some(origin.map_or(Text::from_static("*"), |o| Text::from(o.to_owned())))
            }
            Origins::List(list) => {
                let origin = origin?;
                list.iter()
                    .any(|o| o == origin)
                    .then(|| Text::from(origin.to_owned()))
            }
            Origins::Regex(set) => {
                let origin = origin?;
                set.is_match(origin).then(|| Text::from(origin.to_owned()))
            }
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsConf {
    #[serde(default = "star")]
    allow_origins: String,
    #[serde(default = "star")]
    allow_methods: String,
    #[serde(default = "star")]
    allow_headers: String,
    #[serde(default)]
    expose_headers: Option<String>,
    #[serde(default = "default_max_age")]
    max_age: i64,
    #[serde(default)]
    allow_credential: bool,
    #[serde(default)]
    allow_origins_by_regex: Option<Vec<String>>,
    #[serde(default)]
    timing_allow_origins: Option<String>,
    #[serde(default)]
    timing_allow_origins_by_regex: Option<Vec<String>>,
    /// Named so that its rejection can say why.
    #[serde(default)]
    allow_origins_by_metadata: Option<serde_json::Value>,
}

fn star() -> String {
    "*".into()
}

fn default_max_age() -> i64 {
    5
}

impl Plugin for Cors {
    const NAME: &'static str = "cors";
    type Conf = CorsConf;

    fn prepare(conf: CorsConf, _env: &mut PrepareEnv<'_>) -> Result<Self, ConfError> {
        if conf.allow_origins_by_metadata.is_some() {
            return Err(ConfError::new(
                "`allow_origins_by_metadata` is not available: the runner has no plugin \
                 metadata; list the origins in `allow_origins` or `allow_origins_by_regex`",
            ));
        }
        if conf.allow_credential {
            let fields = [
                ("allow_methods", Some(conf.allow_methods.as_str())),
                ("allow_headers", Some(conf.allow_headers.as_str())),
                ("expose_headers", conf.expose_headers.as_deref()),
                ("timing_allow_origins", conf.timing_allow_origins.as_deref()),
            ];
            // `allow_origins` does not count once a regex replaces it.
            let origins = conf.allow_origins_by_regex.is_none().then_some(("allow_origins", Some(conf.allow_origins.as_str())));
            if let Some((f, _)) = origins.iter().chain(&fields).find(|(_, v)| *v == Some("*")) {
                return Err(ConfError::new(format!(
                    "`{f}` cannot be `*` when `allow_credential` is true (browsers refuse it); \
                     list the values, or use `**`"
                )));
            }
        }
        if conf.max_age < -1 {
            return Err(ConfError::new("`max_age` must be -1 (no caching) or more"));
        }
        let timing = match (&conf.timing_allow_origins, &conf.timing_allow_origins_by_regex) {
            (None, None) => None,
            (t, r) => Some(Origins::new(
                "timing_allow_origins",
                t.as_deref().unwrap_or("*"),
                r.as_deref(),
            )?),
        };
        let origins = Origins::new(
            "allow_origins",
            &conf.allow_origins,
            conf.allow_origins_by_regex.as_deref(),
        )?;
        Ok(Cors {
            vary: !matches!(origins, Origins::Any),
            origins,
            timing,
            methods: if conf.allow_methods == "**" {
                Text::from_static(ALL_METHODS)
            } else {
                conf.allow_methods.into()
            },
            headers: (conf.allow_headers != "**").then(|| conf.allow_headers.into()),
            expose: conf.expose_headers.filter(|e| !e.is_empty()).map(Text::from),
            max_age: conf.max_age.to_string().into(),
            credentials: conf.allow_credential,
        })
    }

    fn request_filter_sync(&self, call: &mut RequestCall<'_>) -> Option<Result<Flow, PluginError>> {
        let headers = self.headers_for(call);
        if call.method() == Method::Options {
            let mut stop = Stop::new(200);
            stop.headers = headers;
            return Some(Ok(Flow::Stop(stop)));
        }
        for h in headers {
            if let Some(v) = h.value {
                call.set_response_header(h.name, v);
            }
        }
        Some(Ok(Flow::Continue))
    }
}

impl Cors {
    /// The CORS response headers for this request.
    fn headers_for(&self, call: &RequestCall<'_>) -> Vec<Pair> {
        // The Origin the client sent, even if an earlier plugin of the chain rewrote it.
        let origin = call
            .original_headers()
            .iter()
            .find(|h| h.name == "origin")
            .and_then(|h| h.value.as_deref());
        let mut out = Vec::with_capacity(8);
        if self.vary {
            out.push(Pair::new("vary", "Origin"));
        }
        if let Some(allowed) = self.origins.allow(origin) {
            out.push(Pair::new("access-control-allow-origin", allowed));
            out.push(Pair::new("access-control-allow-methods", self.methods.clone()));
            let headers = match &self.headers {
                Some(h) => Some(h.clone()),
                None => call
                    .header("access-control-request-headers")
                    .map(|h| Text::from(h.to_owned())),
            };
            if let Some(h) = headers {
                out.push(Pair::new("access-control-allow-headers", h));
            }
            out.push(Pair::new("access-control-max-age", self.max_age.clone()));
            if let Some(e) = &self.expose {
                out.push(Pair::new("access-control-expose-headers", e.clone()));
            }
            if self.credentials {
                out.push(Pair::new("access-control-allow-credentials", "true"));
            }
        }
        if let Some(t) = self.timing.as_ref().and_then(|t| t.allow(origin)) {
            out.push(Pair::new("timing-allow-origin", t));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use ext_plugin_sdk::harness::{block_on, request, Harness, LocalGateway};
    use ext_plugin_sdk::model::ReqAction;

    fn prepare(conf: &str) -> Result<Arc<Chain>, String> {
        Harness::new(Registry::new().with::<Cors>())
            .prepare("route#1#ext-plugin-pre-req#1", &[("cors", conf)])
            .map_err(|e| e.to_string())
    }

    /// The response headers answered for a GET with this Origin.
    fn answer(conf: &str, origin: Option<&str>) -> Vec<(String, String)> {
        let chain = prepare(conf).unwrap();
        let mut req = request(Method::Get, "/");
        if let Some(o) = origin {
            req = req.with_header("origin", o);
        }
        match block_on(LocalGateway::new().call(&chain, &req)).unwrap() {
            ReqAction::Rewrite(r) => r
                .resp_headers
                .iter()
                .map(|p| (p.name.to_string(), p.value.as_deref().unwrap_or("").to_owned()))
                .collect(),
            _ => Vec::new(),
        }
    }

    fn header<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
        h.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    #[test]
    fn a_regex_replaces_allow_origins() {
        let conf = r#"{"allow_origins": "*", "allow_origins_by_regex": ["^http://.*\\.domain\\.com$"],
                       "timing_allow_origins": "*", "timing_allow_origins_by_regex": ["^http://t\\."]}"#;
        let acao = "access-control-allow-origin";
        let tao = "timing-allow-origin";
        let h = answer(conf, Some("http://sub.domain.com"));
        assert_eq!(header(&h, acao), Some("http://sub.domain.com"));
        assert_eq!(header(&h, tao), None);
        let h = answer(conf, Some("http://t.other.com"));
        assert_eq!(header(&h, acao), None, "{h:?}");
        assert_eq!(header(&h, tao), Some("http://t.other.com"));
        let h = answer(conf, None);
        assert_eq!(header(&h, acao), None, "{h:?}");
        assert_eq!(header(&h, tao), None, "{h:?}");
    }

    #[test]
    fn malformed_origins_are_refused() {
        for field in ["allow_origins", "timing_allow_origins"] {
            for bad in [
                "", "*a", "*,http://y.com", "nulll", "http//y.com.uk", "x.com",
                "https://x.com,y.com.uk", "https://x.com,*,https://y.com.uk",
                "https://x.com,http://y.com.uk,http:c.tv", "https://x.com, https://y.com",
            ] {
                let conf = serde_json::json!({ field: bad }).to_string();
                assert!(prepare(&conf).is_err(), "{conf} is refused");
            }
            for good in [
                "*", "**", "null", "http://y.com.uk", "https://x.com,http://y.com.uk",
                "https://x.com,http://y.com.uk:12000,http://c.tv",
            ] {
                let conf = serde_json::json!({ field: good }).to_string();
                assert!(prepare(&conf).is_ok(), "{conf} is accepted");
            }
        }
    }
}
