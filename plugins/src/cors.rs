//! `cors` (docs/plugins/security.md): Cross-Origin Resource Sharing headers, APISIX's fields.
//!
//! Conf: `{"allow_origins": "*", "allow_methods": "*", "allow_headers": "*", "expose_headers":
//! null, "max_age": 5, "allow_credential": false, "allow_origins_by_regex": null,
//! "timing_allow_origins": null, "timing_allow_origins_by_regex": null}`.
//!
//! * `allow_origins`: `*` (answer `*`), `**` (reflect the request's Origin, allowed even with
//!   credentials), or a comma-separated list of `scheme://host[:port]` origins. An origin not on
//!   the list nor matched by `allow_origins_by_regex` (unanchored, RE2 syntax) gets no CORS
//!   headers. When only `allow_origins_by_regex` is set, `allow_origins` has no `*` default.
//! * `allow_methods` `**` means every method; `allow_headers` `**` reflects
//!   `Access-Control-Request-Headers`.
//! * OPTIONS requests: `Stop(200, CORS headers, empty body)`, as APISIX answers every OPTIONS.
//! * Other requests: the same headers as response headers (`Rewrite{resp_headers}`).
//! * `Vary: Origin` whenever the answer depends on the Origin; it replaces an upstream `Vary`
//!   (the protocol can only set response headers, not append to them).
//! * `allow_credential: true` with `*` in any field is a config error; `allow_origins_by_metadata`
//!   is rejected (the runner has no plugin metadata).

use regex::RegexSet;
use serde::Deserialize;

use super::restriction;
use ext_plugin_sdk::*;

const ALL_METHODS: &str = "GET,POST,PUT,DELETE,PATCH,HEAD,OPTIONS,CONNECT,TRACE";

pub struct Cors {
    origins: Origins,
    timing: Option<Origins>,
    methods: Text,
    /// `None`: reflect `Access-Control-Request-Headers` (`**`).
    headers: Option<Text>,
    expose: Option<Text>,
    max_age: Text,
    credentials: bool,
}

/// Which request origins a field allows.
struct Origins {
    any: bool,
    reflect_any: bool,
    list: Vec<String>,
    regex: Option<RegexSet>,
}

impl Origins {
    fn new(field: &str, value: Option<&str>, regex: Option<&[String]>) -> Result<Origins, ConfError> {
        let value = value.unwrap_or("");
        let list: Vec<String> = match value {
            "*" | "**" => Vec::new(),
            v => v
                .split(',')
                .map(str::trim)
                .filter(|o| !o.is_empty())
                .map(str::to_owned)
                .collect(),
        };
        if let Some(bad) = list.iter().find(|o| o.contains('*')) {
            return Err(ConfError::new(format!(
                "`{field}`: {bad:?} — `*` and `**` must stand alone; use `{field}_by_regex`"
            )));
        }
        let regex = match regex {
            Some([]) => {
                return Err(ConfError::new(format!("`{field}_by_regex` must not be empty")))
            }
            Some(r) => Some(restriction::regex_set(&format!("{field}_by_regex"), r, false)?),
            None => None,
        };
        Ok(Origins {
            any: value == "*",
            reflect_any: value == "**",
            list,
            regex,
        })
    }

    /// The value to answer for `origin`, or `None` when it is not allowed.
    fn allow(&self, origin: Option<&str>) -> Option<Text> {
        if self.any {
            return Some(Text::from_static("*"));
        }
        if self.reflect_any {
            return Some(origin.map_or(Text::from_static("*"), |o| Text::from(o.to_owned())));
        }
        let origin = origin?;
        let listed = self.list.iter().any(|o| o == origin)
            || self.regex.as_ref().is_some_and(|r| r.is_match(origin));
        listed.then(|| Text::from(origin.to_owned()))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsConf {
    #[serde(default)]
    allow_origins: Option<String>,
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
        let allow_origins = match (&conf.allow_origins, &conf.allow_origins_by_regex) {
            (Some(o), _) => Some(o.as_str()),
            (None, Some(_)) => None,
            (None, None) => Some("*"),
        };
        if conf.allow_credential {
            let fields = [
                ("allow_origins", allow_origins),
                ("allow_methods", Some(conf.allow_methods.as_str())),
                ("allow_headers", Some(conf.allow_headers.as_str())),
                ("expose_headers", conf.expose_headers.as_deref()),
            ];
            if let Some((f, _)) = fields.iter().find(|(_, v)| *v == Some("*")) {
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
            (t, r) => Some(Origins::new("timing_allow_origins", t.as_deref(), r.as_deref())?),
        };
        Ok(Cors {
            origins: Origins::new(
                "allow_origins",
                allow_origins,
                conf.allow_origins_by_regex.as_deref(),
            )?,
            timing,
            methods: if conf.allow_methods == "**" {
                Text::from_static(ALL_METHODS)
            } else {
                conf.allow_methods.into()
            },
            headers: (conf.allow_headers != "**").then(|| conf.allow_headers.into()),
            expose: conf.expose_headers.map(Text::from),
            max_age: conf.max_age.to_string().into(),
            credentials: conf.allow_credential,
        })
    }

    async fn request_filter(&self, call: &mut RequestCall<'_>) -> Result<Flow, PluginError> {
        let headers = self.headers_for(call);
        if call.method() == Method::Options {
            let mut stop = Stop::new(200);
            stop.headers = headers;
            return Ok(Flow::Stop(stop));
        }
        for h in headers {
            if let Some(v) = h.value {
                call.set_response_header(h.name, v);
            }
        }
        Ok(Flow::Continue)
    }
}

impl Cors {
    /// The CORS response headers for this request.
    fn headers_for(&self, call: &RequestCall<'_>) -> Vec<Pair> {
        let origin = call.header("origin");
        let mut out = Vec::with_capacity(8);
        if !self.origins.any {
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
