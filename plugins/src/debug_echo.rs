//! `debug-echo`: answers with what the runner sees, for operators debugging a route. (APISIX's
//! `echo`, which edits the response body, is [`crate::echo`].)
//!
//! Conf: `{"vars": ["route_id", ...], "request_body": false, "status": 200}`.
//!
//! * Request phase: stops with `status` and `content-type: application/json`, body
//!   `{"method", "path", "args": [[name, value|null], ...], "headers": [[name, value|null], ...],
//!   "src_ip", "vars": {name: value|null}, "body": string|null}`. Arrays keep wire order and
//!   repeats; `path` is the path as rewritten by earlier plugins; vars and the body are fetched
//!   from the gateway unless it pushed them.
//! * Response phase: passes the upstream's headers on, plus `x-echo-upstream-status`.

use serde::Deserialize;
use serde_json::{json, Map, Value};

use ext_plugin_sdk::*;

pub struct DebugEcho {
    vars: Vec<Text>,
    request_body: bool,
    status: u16,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DebugEchoConf {
    #[serde(default)]
    vars: Vec<Text>,
    #[serde(default)]
    request_body: bool,
    #[serde(default = "default_status")]
    status: u16,
}

fn default_status() -> u16 {
    200
}

fn pairs<'a>(pairs: impl Iterator<Item = (&'a str, Option<&'a str>)>) -> Value {
    pairs.map(|(name, value)| json!([name, value])).collect()
}

impl Plugin for DebugEcho {
    const NAME: &'static str = "debug-echo";
    type Conf = DebugEchoConf;

    fn prepare(conf: DebugEchoConf, _env: &mut PrepareEnv<'_>) -> Result<Self, ConfError> {
        if !(100..=599).contains(&conf.status) {
            return Err(ConfError::new(format!(
                "`status` must be an HTTP status (100-599), got {}",
                conf.status
            )));
        }
        if let Some(v) = conf.vars.iter().find(|v| v.is_empty()) {
            return Err(ConfError::new(format!("`vars` has an empty name: {v:?}")));
        }
        Ok(DebugEcho {
            vars: conf.vars,
            request_body: conf.request_body,
            status: conf.status,
        })
    }

    async fn request_filter(&self, call: &mut RequestCall<'_>) -> Result<Flow, PluginError> {
        let mut vars = Map::new();
        for name in &self.vars {
            let value = call.var(name).await?;
            vars.insert(name.to_string(), json!(value.as_deref()));
        }
        let body = if self.request_body {
            call.body()
                .await?
                .map(|b| String::from_utf8_lossy(&b).into_owned())
        } else {
            None
        };
        let answer = json!({
            "method": call.method().as_str(),
            "path": call.path(),
            "args": pairs(call.args()),
            "headers": pairs(call.headers().map(|(n, v)| (n, Some(v)))),
            "src_ip": call.src_ip().map(|ip| ip.to_string()),
            "vars": vars,
            "body": body,
        });
        let body = serde_json::to_vec(&answer)?;
        Ok(Flow::Stop(
            Stop::new(self.status)
                .with_header("content-type", "application/json")
                .with_body(body),
        ))
    }

    async fn response_filter(&self, call: &mut ResponseCall<'_>) -> Result<(), PluginError> {
        let status = call.original_status().to_string();
        call.set_header("x-echo-upstream-status", status);
        Ok(())
    }
}
