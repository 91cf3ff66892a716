//! Scenario files (JSON) and generating a corpus from one.
//!
//! ```json
//! {
//!   "seed": 1,
//!   "routes": [
//!     {"name": "realistic", "chain": [
//!       {"name": "ip-restriction", "conf": {"whitelist": ["10.0.0.0/8"]}},
//!       {"name": "request-id", "conf": {}}]}
//!   ],
//!   "requests": [
//!     {"route": "realistic", "count": 100, "method": "GET", "path": "/api/items",
//!      "src_ip": "v4", "headers": [["host", "api.example.com"]],
//!      "extra_headers": {"count": 10, "size": 24}, "extra_args": {"count": 3, "size": 8},
//!      "vars": {"server_addr": "10.0.0.1"}, "req_body": "{\"a\":1}",
//!      "expect": {"action": "rewrite"}}
//!   ]
//! }
//! ```
//!
//! * `routes[].chain` is a route's plugin chain; each conf is any JSON value, sent as its text.
//! * `requests[]` are request classes: `count` calls each, shuffled together (seeded, so the
//!   same file always gives the same corpus). `phase` is `req` (default) or `resp` (then
//!   `status` is the upstream's status and `headers` its headers).
//! * `src_ip`: `v4` (10.x.y.z), `v6` (2001:db8::x), `none`, or a literal address.
//! * `vars`, `req_body`/`req_body_size`, `resp_body`/`resp_body_size`: what the gateway answers
//!   if the runner asks (`null` = a nil variable). They are stored as extra_info pairs the
//!   replayer looks answers up in; pairs the runner never asks for cost nothing.
//! * `expect`: `{"action": "continue" | "stop" | "rewrite", "status": N}` for the request
//!   phase (`status` = a stop's status), `{"status": N}` for the response phase (0 = keep), or
//!   `{"error": "bad_request" | "service_unavailable" | "conf_token_not_found"}`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Deserialize;

use ext_plugin_runner::codec::Protocol;
use ext_plugin_runner::frame::{Frame, FrameType};
use ext_plugin_runner::model::{
    ErrorCode, ExtraInfoReq, ExtraInfoResp, HttpReqCallReq, HttpReqCallResp, HttpRespCallReq,
    HttpRespCallResp, Method, Pair, PrepareConfReq, PrepareConfResp, ReqAction, Rewrite, Stop,
};

use super::check::ActionKind;
use super::corpus::{CallExchange, Corpus, PrepareExchange};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    #[serde(default)]
    pub seed: u64,
    pub routes: Vec<Route>,
    pub requests: Vec<RequestClass>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub name: String,
    #[serde(default)]
    pub chain: Vec<PluginConf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConf {
    pub name: String,
    #[serde(default = "empty_object")]
    pub conf: serde_json::Value,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

#[derive(Debug, Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    #[default]
    Req,
    Resp,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filler {
    pub count: usize,
    pub size: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestClass {
    pub route: String,
    pub count: usize,
    #[serde(default)]
    pub phase: Phase,
    #[serde(default = "default_method")]
    pub method: String,
    #[serde(default = "default_path")]
    pub path: String,
    #[serde(default = "default_src_ip")]
    pub src_ip: String,
    #[serde(default)]
    pub headers: Vec<(String, Option<String>)>,
    pub extra_headers: Option<Filler>,
    #[serde(default)]
    pub args: Vec<(String, Option<String>)>,
    pub extra_args: Option<Filler>,
    #[serde(default)]
    pub vars: BTreeMap<String, Option<String>>,
    pub req_body: Option<String>,
    pub req_body_size: Option<usize>,
    pub resp_body: Option<String>,
    pub resp_body_size: Option<usize>,
    /// The upstream's status (response phase).
    #[serde(default = "default_status")]
    pub status: u16,
    pub expect: Expectation,
}

fn default_method() -> String {
    "GET".into()
}
fn default_path() -> String {
    "/".into()
}
fn default_src_ip() -> String {
    "v4".into()
}
fn default_status() -> u16 {
    200
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expectation {
    pub action: Option<ActionKind>,
    pub status: Option<u16>,
    pub error: Option<ErrorName>,
}

#[derive(Debug, Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub enum ErrorName {
    BadRequest,
    ServiceUnavailable,
    ConfTokenNotFound,
}

/// A scenario that cannot be read or makes no sense, saying what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("not a valid scenario: {0}")]
    Json(#[from] serde_json::Error),
    #[error("requests[{index}]: {what}")]
    Request { index: usize, what: String },
    #[error("routes[{index}]: {what}")]
    Route { index: usize, what: String },
    #[error("the scenario makes no calls (every request class has count 0?)")]
    Empty,
}

impl Scenario {
    pub fn parse(text: &str) -> Result<Scenario, ScenarioError> {
        Ok(serde_json::from_str(text)?)
    }

    /// The corpus this scenario describes, in `protocol`.
    pub fn generate(&self, protocol: Protocol) -> Result<Corpus, ScenarioError> {
        let mut runner = protocol.runner_codec();
        let mut gateway = protocol.gateway_codec();
        let mut corpus = Corpus {
            protocol,
            prepares: Vec::new(),
            calls: Vec::new(),
        };
        for (index, route) in self.routes.iter().enumerate() {
            if self.routes[..index].iter().any(|r| r.name == route.name) {
                return Err(ScenarioError::Route {
                    index,
                    what: format!("route name `{}` is used twice", route.name),
                });
            }
            let req = PrepareConfReq {
                key: format!("route#{}#ext-plugin-pre-req#1", route.name).into(),
                conf: route
                    .chain
                    .iter()
                    .map(|p| Pair::new(p.name.clone(), p.conf.to_string()))
                    .collect(),
            };
            corpus.prepares.push(PrepareExchange {
                request: frame(FrameType::PrepareConf, |o| {
                    gateway.encode_prepare_conf_req(&req, o)
                }),
                // The recorded token is the route's number; replay maps it to a fresh one.
                reply: frame(FrameType::PrepareConf, |o| {
                    runner.encode_prepare_conf_resp(
                        &PrepareConfResp {
                            conf_token: index as u32 + 1,
                        },
                        o,
                    )
                }),
            });
        }

        let mut rng = StdRng::seed_from_u64(self.seed);
        let mut order = Vec::new();
        for (index, class) in self.requests.iter().enumerate() {
            let err = |what: String| ScenarioError::Request { index, what };
            let token = self
                .routes
                .iter()
                .position(|r| r.name == class.route)
                .ok_or_else(|| err(format!("no route is named `{}`", class.route)))?
                as u32
                + 1;
            class.validate().map_err(err)?;
            order.extend(std::iter::repeat_n((index, token), class.count));
        }
        if order.is_empty() {
            return Err(ScenarioError::Empty);
        }
        order.shuffle(&mut rng);
        for (n, (index, token)) in order.into_iter().enumerate() {
            let class = &self.requests[index];
            let id = n as u32 + 1;
            corpus
                .calls
                .push(class.call(id, token, &mut rng, &mut *runner, &mut *gateway));
        }
        Ok(corpus)
    }
}

fn frame(ty: FrameType, encode: impl FnOnce(&mut Vec<u8>)) -> Frame {
    let mut payload = Vec::new();
    encode(&mut payload);
    Frame {
        ty: ty as u8,
        payload: Bytes::from(payload),
    }
}

fn filler(rng: &mut StdRng, size: usize) -> String {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    (0..size)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect()
}

fn pairs(list: &[(String, Option<String>)]) -> Vec<Pair> {
    list.iter()
        .map(|(n, v)| Pair {
            name: n.clone().into(),
            value: v.clone().map(Into::into),
        })
        .collect()
}

fn body(text: &Option<String>, size: Option<usize>) -> Option<Bytes> {
    match (text, size) {
        (Some(t), _) => Some(Bytes::from(t.clone())),
        (None, Some(n)) => Some(Bytes::from(vec![b'x'; n])),
        (None, None) => None,
    }
}

impl RequestClass {
    fn validate(&self) -> Result<(), String> {
        if Method::parse(&self.method).is_none() {
            return Err(format!("unknown method `{}`", self.method));
        }
        if !matches!(self.src_ip.as_str(), "v4" | "v6" | "none")
            && self.src_ip.parse::<IpAddr>().is_err()
        {
            return Err(format!(
                "src_ip `{}` is neither v4, v6, none nor an IP address",
                self.src_ip
            ));
        }
        if self.req_body.is_some() && self.req_body_size.is_some() {
            return Err("give req_body or req_body_size, not both".into());
        }
        if self.resp_body.is_some() && self.resp_body_size.is_some() {
            return Err("give resp_body or resp_body_size, not both".into());
        }
        let e = &self.expect;
        match (self.phase, e.action, e.error) {
            (_, Some(_), Some(_)) => Err("expect has both action and error".into()),
            (Phase::Req, None, None) => {
                Err("expect needs an action (continue, stop, rewrite) or an error".into())
            }
            (Phase::Resp, Some(_), _) => {
                Err("a response-phase expect has a status (or an error), not an action".into())
            }
            (Phase::Req, Some(a), None) if a != ActionKind::Stop && e.status.is_some() => {
                Err("expect.status belongs to a stop".into())
            }
            _ => Ok(()),
        }
    }

    fn src_ip(&self, rng: &mut StdRng) -> Option<IpAddr> {
        match self.src_ip.as_str() {
            "none" => None,
            "v4" => Some(IpAddr::V4(Ipv4Addr::new(
                10,
                rng.random(),
                rng.random(),
                rng.random_range(1..255),
            ))),
            "v6" => Some(IpAddr::V6(Ipv6Addr::new(
                0x2001,
                0xdb8,
                0,
                0,
                0,
                0,
                rng.random(),
                rng.random_range(1..0xffff),
            ))),
            literal => Some(literal.parse().expect("validated")),
        }
    }

    fn call(
        &self,
        id: u32,
        token: u32,
        rng: &mut StdRng,
        runner: &mut dyn ext_plugin_runner::codec::RunnerCodec,
        gateway: &mut dyn ext_plugin_runner::codec::GatewayCodec,
    ) -> CallExchange {
        let mut headers = pairs(&self.headers);
        if let Some(f) = &self.extra_headers {
            for i in 0..f.count {
                headers.push(Pair::new(format!("x-bench-{i}"), filler(rng, f.size)));
            }
        }
        let mut extra = Vec::new();
        let mut answer = |ask: ExtraInfoReq, result: Option<Bytes>| {
            let a = frame(FrameType::ExtraInfo, |o| {
                runner.encode_extra_info_req(&ask, o)
            });
            let r = frame(FrameType::ExtraInfo, |o| {
                gateway.encode_extra_info_resp(&ExtraInfoResp { result }, o)
            });
            extra.push((a, r));
        };
        for (name, value) in &self.vars {
            answer(
                ExtraInfoReq::Var(name.clone().into()),
                value.clone().map(Bytes::from),
            );
        }
        if let Some(b) = body(&self.req_body, self.req_body_size) {
            answer(ExtraInfoReq::ReqBody, Some(b));
        }
        if let Some(b) = body(&self.resp_body, self.resp_body_size) {
            answer(ExtraInfoReq::RespBody, Some(b));
        }

        let e = &self.expect;
        let error = e.error.map(|name| match name {
            ErrorName::BadRequest => ErrorCode::BadRequest,
            ErrorName::ServiceUnavailable => ErrorCode::ServiceUnavailable,
            ErrorName::ConfTokenNotFound => ErrorCode::ConfTokenNotFound,
        });
        let (request, reply) = match self.phase {
            Phase::Req => {
                let mut args = pairs(&self.args);
                if let Some(f) = &self.extra_args {
                    for i in 0..f.count {
                        args.push(Pair::new(format!("a{i}"), filler(rng, f.size)));
                    }
                }
                let req = HttpReqCallReq {
                    id,
                    src_ip: self.src_ip(rng),
                    method: Method::parse(&self.method).expect("validated"),
                    path: self.path.clone().into(),
                    args: args.into(),
                    headers: headers.into(),
                    conf_token: token,
                    extra_info: Vec::new(),
                };
                let action = match e.action {
                    Some(ActionKind::Stop) => ReqAction::Stop(Stop {
                        status: e.status.unwrap_or(0),
                        ..Stop::default()
                    }),
                    Some(ActionKind::Rewrite) => ReqAction::Rewrite(Rewrite::default()),
                    _ => ReqAction::Continue,
                };
                (
                    frame(FrameType::HttpReqCall, |o| {
                        gateway.encode_http_req_call_req(&req, o)
                    }),
                    frame(FrameType::HttpReqCall, |o| {
                        runner.encode_http_req_call_resp(&HttpReqCallResp { id, action }, o)
                    }),
                )
            }
            Phase::Resp => {
                let req = HttpRespCallReq {
                    id,
                    status: self.status,
                    headers,
                    conf_token: token,
                };
                let resp = HttpRespCallResp {
                    id,
                    status: e.status.unwrap_or(0),
                    ..HttpRespCallResp::default()
                };
                (
                    frame(FrameType::HttpRespCall, |o| {
                        gateway.encode_http_resp_call_req(&req, o)
                    }),
                    frame(FrameType::HttpRespCall, |o| {
                        runner.encode_http_resp_call_resp(&resp, o)
                    }),
                )
            }
        };
        let reply = match error {
            Some(code) => frame(FrameType::Error, |o| runner.encode_error_resp(code, o)),
            None => reply,
        };
        CallExchange {
            request,
            extra,
            reply,
        }
    }
}
