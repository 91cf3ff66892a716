//! `echo` (APISIX's): rewrites the upstream's answer: its body (`body` replaces it,
//! `before_body` and `after_body` go around it) and headers (`headers` sets them).
//!
//! Conf: `{"before_body": "...", "body": "...", "after_body": "...", "headers": {"Location":
//! "https://example.com"}}`; at least one of the three bodies is required.
//!
//! * Response phase only: the chain must be attached as `ext-plugin-post-resp`. The body is
//!   `before_body + (body, or the upstream's body) + after_body`; the upstream's body is fetched
//!   (one `extra_info` round trip) only when `body` is absent. The gateway recomputes the length.
//! * Request phase: nothing. A chain attached elsewhere never reaches the response phase, so
//!   prepare warns there.
//! * The runner's request-debugging plugin is [`crate::debug_echo`].

use serde::Deserialize;
use serde_json::Value;

use crate::support::template::lua_number;
use ext_plugin_sdk::*;

pub struct Echo {
    before: Option<Bytes>,
    body: Option<Bytes>,
    after: Option<Bytes>,
    headers: Vec<(Text, Text)>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EchoConf {
    before_body: Option<String>,
    body: Option<String>,
    after_body: Option<String>,
    headers: Option<serde_json::Map<String, Value>>,
}

impl Plugin for Echo {
    const NAME: &'static str = "echo";
    type Conf = EchoConf;

    fn prepare(conf: EchoConf, env: &mut PrepareEnv<'_>) -> Result<Self, ConfError> {
        if conf.before_body.is_none() && conf.body.is_none() && conf.after_body.is_none() {
            return Err(ConfError::new(
                "one of `before_body`, `body` and `after_body` is required",
            ));
        }
        let mut headers = Vec::new();
        if let Some(map) = conf.headers {
            if map.is_empty() {
                return Err(ConfError::new("`headers` must not be empty"));
            }
            for (name, value) in map {
                let value = match value {
                    Value::String(s) => s,
                    Value::Number(n) => lua_number(&n),
                    other => {
                        return Err(ConfError::new(format!(
                            "`headers.{name}` must be a string or a number, got {other}"
                        )))
                    }
                };
                let token = !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
                if !token {
                    return Err(ConfError::new(format!(
                        "`headers`: {name:?} is not a header name"
                    )));
                }
                if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
                    return Err(ConfError::new(format!("`headers.{name}` has a line break")));
                }
                headers.push((Text::from(name), Text::from(value)));
            }
        }
        if !matches!(env.attachment(), Attachment::PostResp | Attachment::Other) {
            tracing::warn!(
                route = env.route(),
                "echo changes the response only: attach it under `ext-plugin-post-resp` (this \
                 entry does nothing)"
            );
        }
        Ok(Echo {
            before: conf.before_body.map(Bytes::from),
            body: conf.body.map(Bytes::from),
            after: conf.after_body.map(Bytes::from),
            headers,
        })
    }

    async fn response_filter(&self, call: &mut ResponseCall<'_>) -> Result<(), PluginError> {
        let middle = match &self.body {
            Some(b) => b.clone(),
            None => call.body().await?.unwrap_or_default(),
        };
        let body = match (&self.before, &self.after) {
            (None, None) => middle,
            (before, after) => {
                let parts = [before.as_deref(), Some(&middle[..]), after.as_deref()];
                let mut out = Vec::with_capacity(parts.iter().flatten().map(|p| p.len()).sum());
                parts.iter().flatten().for_each(|p| out.extend_from_slice(p));
                Bytes::from(out)
            }
        };
        call.set_body(body);
        for (name, value) in &self.headers {
            call.set_header(name.clone(), value.clone());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ext_plugin_sdk::harness::{block_on, Harness, LocalGateway};
    use ext_plugin_sdk::model::HttpRespCallReq;

    const POST: &str = "route#1#ext-plugin-post-resp#1";

    fn answer(conf: &str, upstream: &str) -> ext_plugin_sdk::model::HttpRespCallResp {
        let harness = Harness::new(Registry::new().with::<Echo>());
        let chain = harness.prepare(POST, &[("echo", conf)]).unwrap();
        let mut gw = LocalGateway::new();
        gw.resp_body = Some(Bytes::copy_from_slice(upstream.as_bytes()));
        let req = HttpRespCallReq {
            status: 200,
            headers: vec![Pair::new("Content-Type", "text/plain")],
            ..HttpRespCallReq::default()
        };
        block_on(gw.resp_call(&chain, &req)).unwrap()
    }

    #[test]
    fn bodies_wrap_or_replace_the_upstreams() {
        let r = answer(
            r#"{"before_body": "before ", "body": "hello upstream", "after_body": " after.",
                "headers": {"Location": "https://www.iresty.com", "X-N": 2}}"#,
            "hello world\n",
        );
        assert_eq!(r.body.as_deref(), Some(&b"before hello upstream after."[..]));
        let names: Vec<_> = r.headers.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["Content-Type", "Location", "X-N"]);
        let r = answer(r#"{"before_body": "before "}"#, "hello world\n");
        assert_eq!(r.body.as_deref(), Some(&b"before hello world\n"[..]));
        assert!(r.headers.is_empty(), "no header changed");
    }

    #[test]
    fn confs_apisix_refuses_are_refused() {
        let harness = Harness::new(Registry::new().with::<Echo>());
        for conf in [
            r#"{}"#,
            r#"{"headers": {"A": "1"}}"#,
            r#"{"body": "x", "after_body": 10}"#,
            r#"{"body": "x", "headers": {}}"#,
            r#"{"body": "x", "vars": []}"#,
        ] {
            assert!(harness.prepare(POST, &[("echo", conf)]).is_err(), "{conf}");
        }
    }
}
