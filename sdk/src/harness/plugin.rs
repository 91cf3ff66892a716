//! One plugin value driven directly: its request or response code run against a request built in
//! memory. Variables the request cannot answer come from a map, and every name asked for is
//! recorded.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;

use bytes::Bytes;

use crate::env::Held;
use crate::host::{CallState, GatewayVars, RespState, StateRegistry};
use crate::model::{ExtraInfoReq, HttpReqCallReq, HttpRespCallReq, HttpRespCallResp, Pair};
use crate::services::Services;
use crate::{Attachment, Clock, PluginError, PrepareEnv, RequestCall, ResponseCall};

/// Answers `extra_info` from a map.
#[derive(Default)]
struct MapGateway {
    vars: HashMap<String, String>,
    asked: Vec<String>,
    req_body: Option<Bytes>,
    resp_body: Option<Bytes>,
}

impl GatewayVars for MapGateway {
    fn fetch<'a>(
        &'a mut self,
        req: ExtraInfoReq,
    ) -> Pin<Box<dyn Future<Output = Result<Option<Bytes>, PluginError>> + Send + 'a>> {
        let answer = match req {
            ExtraInfoReq::Var(name) => {
                self.asked.push(name.to_string());
                self.vars.get(name.as_str()).map(|v| Bytes::from(v.clone()))
            }
            ExtraInfoReq::ReqBody => self.req_body.clone(),
            ExtraInfoReq::RespBody => self.resp_body.clone(),
        };
        Box::pin(async move { Ok(answer) })
    }
}

/// A request phase call in memory.
pub struct TestCall {
    req: HttpReqCallReq,
    state: CallState,
    gateway: MapGateway,
    attachment: Attachment,
}

impl TestCall {
    pub fn new(req: HttpReqCallReq) -> TestCall {
        TestCall {
            req,
            state: CallState::default(),
            gateway: MapGateway::default(),
            attachment: Attachment::PreReq,
        }
    }

    /// A variable the gateway answers through `extra_info`.
    pub fn with_gateway_var(mut self, name: &str, value: &str) -> TestCall {
        self.gateway.vars.insert(name.into(), value.into());
        self
    }

    /// The request body the gateway answers a ReqBody request with.
    pub fn with_body(mut self, body: impl Into<Bytes>) -> TestCall {
        self.gateway.req_body = Some(body.into());
        self
    }

    /// A fresh view for one plugin; rewrites recorded by earlier views are kept.
    pub fn call(&mut self) -> RequestCall<'_> {
        RequestCall::new(
            &self.req,
            &mut self.state,
            &mut self.gateway,
            self.attachment,
        )
    }

    /// The variables asked of the gateway so far, in order.
    pub fn asked(&self) -> &[String] {
        &self.gateway.asked
    }

    /// The response headers recorded so far.
    pub fn resp_headers(&self) -> &[Pair] {
        &self.state.rewrite.resp_headers
    }

    /// The request headers recorded so far.
    pub fn set_headers(&self) -> &[Pair] {
        &self.state.rewrite.headers
    }
}

/// A response phase call in memory.
pub struct TestResp {
    req: HttpRespCallReq,
    state: RespState,
    gateway: MapGateway,
}

impl TestResp {
    pub fn new(status: u16) -> TestResp {
        TestResp {
            req: HttpRespCallReq {
                status,
                ..HttpRespCallReq::default()
            },
            state: RespState::default(),
            gateway: MapGateway::default(),
        }
    }

    pub fn with_gateway_var(mut self, name: &str, value: &str) -> TestResp {
        self.gateway.vars.insert(name.into(), value.into());
        self
    }

    /// Adds a header to the upstream's answer.
    pub fn with_header(mut self, name: &str, value: &str) -> TestResp {
        self.req
            .headers
            .push(Pair::new(name.to_owned(), value.to_owned()));
        self
    }

    /// The upstream body the gateway answers a RespBody request with.
    pub fn with_body(mut self, body: impl Into<Bytes>) -> TestResp {
        self.gateway.resp_body = Some(body.into());
        self
    }

    /// The reply the gateway would receive for what the views recorded so far (taking it
    /// resets the recorded changes).
    pub fn reply(&mut self) -> HttpRespCallResp {
        self.state.take_reply(self.req.id)
    }

    pub fn call(&mut self) -> ResponseCall<'_> {
        ResponseCall::new(&self.req, &mut self.state, &mut self.gateway)
    }

    /// The variables asked of the gateway so far, in order (each view caches its own).
    pub fn asked(&self) -> &[String] {
        &self.gateway.asked
    }
}

/// Prepare-time context for unit tests, with its own state registry: two plugins built with it
/// for the same route and conf share state, as in the runner.
///
/// State handed out through a `TestEnv` lives as long as the `TestEnv` (in a runner, as long as
/// a chain that asked for it): use a new `TestEnv` for fresh state.
///
/// Plugins read the system clock unless [`TestEnv::with_clock`] says otherwise:
///
/// ```
/// use std::time::Duration;
/// use ext_plugin_sdk::harness::TestEnv;
/// use ext_plugin_sdk::Clock;
///
/// let env = TestEnv::default().with_clock(Clock::manual());
/// let t0 = env.with("route#1#ext-plugin-pre-req#1", "p", "{}", &["p"], |e| e.clock().now());
/// env.clock().advance(Duration::from_secs(30));
/// // A plugin built with `env` (and keeping `e.clock().clone()`) now reads t0 + 30 s.
/// assert_eq!(env.clock().now() - t0, Duration::from_secs(30));
/// ```
#[derive(Default)]
pub struct TestEnv {
    state: StateRegistry,
    services: Services,
    held: Mutex<Vec<Held>>,
    clock: Clock,
}

impl TestEnv {
    /// Provides `value` to the plugins prepared here, as
    /// [`Registry::provide`](crate::Registry::provide) does in a runner.
    pub fn with_service<T: std::any::Any + Send + Sync>(
        mut self,
        value: std::sync::Arc<T>,
    ) -> TestEnv {
        self.services.insert(value);
        self
    }

    /// An env whose plugins register their metrics in an exporting registry (the default env's
    /// metrics are off, as a runner's are by default).
    pub fn with_metrics() -> TestEnv {
        TestEnv {
            state: StateRegistry::with_metrics(crate::metrics::Metrics::new(
                super::chain::TEST_MAX_ROUTES,
            )),
            ..TestEnv::default()
        }
    }

    /// Plugins built from now on read time from `clock` (usually [`Clock::manual`], which the
    /// test advances through [`TestEnv::clock`] or a clone).
    pub fn with_clock(mut self, clock: Clock) -> TestEnv {
        self.clock = clock;
        self
    }

    /// The clock plugins read time from.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// The metrics plugins prepared with this env registered.
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        self.state.metrics()
    }

    /// Runs `f` with a [`PrepareEnv`] for `plugin` with `conf` under `key`, in `chain`.
    pub fn with<T>(
        &self,
        key: &str,
        plugin: &'static str,
        conf: &str,
        chain: &[&str],
        f: impl FnOnce(&mut PrepareEnv<'_>) -> T,
    ) -> T {
        let mut env = PrepareEnv {
            key,
            plugin,
            conf,
            chain,
            state: &self.state,
            services: &self.services,
            clock: &self.clock,
            held: Vec::new(),
        };
        let out = f(&mut env);
        self.held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .append(&mut env.held);
        out
    }
}
