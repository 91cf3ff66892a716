//! Prepared chains run in memory, without a socket: for plugin unit tests and benchmarks.
//!
//! ```
//! use ext_plugin_sdk::harness::{block_on, request, Harness, LocalGateway};
//! use ext_plugin_sdk::model::ReqAction;
//! use ext_plugin_sdk::{Flow, Method, Plugin, PluginError, RequestCall, Registry, Stop};
//!
//! struct Deny;
//! impl Plugin for Deny {
//!     const NAME: &'static str = "deny";
//!     type Conf = serde_json::Value;
//!     fn prepare(_: serde_json::Value, _: &mut ext_plugin_sdk::PrepareEnv<'_>)
//!         -> Result<Self, ext_plugin_sdk::ConfError> { Ok(Deny) }
//!     async fn request_filter(&self, _: &mut RequestCall<'_>) -> Result<Flow, PluginError> {
//!         Ok(Flow::Stop(Stop::new(403)))
//!     }
//! }
//!
//! let harness = Harness::new(Registry::new().with::<Deny>());
//! let chain = harness.prepare("route#1#ext-plugin-pre-req#1", &[("deny", "{}")]).unwrap();
//! let mut gw = LocalGateway::new();
//! let action = block_on(gw.call(&chain, &request(Method::Get, "/"))).unwrap();
//! assert!(matches!(action, ReqAction::Stop(s) if s.status == 403));
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;

use crate::chain::Chain;
use crate::host::{CallState, GatewayVars, RespState};
use crate::metrics::Metrics;
use crate::model::{ExtraInfoReq, HttpReqCallReq, HttpRespCallReq, HttpRespCallResp, ReqAction};
use crate::registry::{ChainError, Registry};
use crate::state::StateRegistry;
use crate::{Clock, PluginError};

/// The route bound of the harness's metrics registry.
pub(crate) const TEST_MAX_ROUTES: usize = 1000;

/// Prepares chains as `prepare_conf` does, with state shared between the chains it prepares,
/// but no conf cache and no tokens. Its plugins read the system clock unless
/// [`Harness::with_clock`] says otherwise.
pub struct Harness {
    registry: Registry,
    state: StateRegistry,
    clock: Clock,
}

impl Harness {
    /// A harness whose metrics are off, as a runner's are by default.
    pub fn new(registry: Registry) -> Harness {
        Harness {
            registry,
            state: StateRegistry::default(),
            clock: Clock::system(),
        }
    }

    /// A harness whose plugins register their metrics in an exporting registry, as a runner's
    /// with `--metrics-listen`; read them with [`Harness::metrics`].
    pub fn with_metrics(registry: Registry) -> Harness {
        Harness {
            state: StateRegistry::with_metrics(Metrics::new(TEST_MAX_ROUTES)),
            ..Harness::new(registry)
        }
    }

    /// Plugins prepared from now on read time from `clock` (usually [`Clock::manual`], which
    /// the test advances).
    pub fn with_clock(mut self, clock: Clock) -> Harness {
        self.clock = clock;
        self
    }

    /// The clock plugins read time from.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// The metrics the prepared plugins registered: take a [`Metrics::snapshot`].
    pub fn metrics(&self) -> &Metrics {
        self.state.metrics()
    }

    /// Parses and validates a chain of `(plugin name, JSON conf)` under `key`.
    pub fn prepare(&self, key: &str, chain: &[(&str, &str)]) -> Result<Arc<Chain>, ChainError> {
        let req = super::request::prepare_request(key, chain);
        self.registry
            .build_chain(&req, &self.state, &self.clock)
            .map(Arc::new)
    }
}

/// A gateway in memory: runs calls through prepared chains and answers their `extra_info`
/// requests from its tables. Reuses its call state from call to call, like a connection.
#[derive(Default)]
pub struct LocalGateway {
    /// Variables answered to Var requests; a missing name or `None` answers nil.
    pub vars: HashMap<String, Option<Bytes>>,
    /// The answer to ReqBody requests.
    pub req_body: Option<Bytes>,
    /// The answer to RespBody requests.
    pub resp_body: Option<Bytes>,
    /// Every `extra_info` request made, in order.
    pub asked: Vec<ExtraInfoReq>,
    call: CallState,
    resp: RespState,
}

/// The tables a call's `extra_info` requests are answered from.
struct Answers<'g> {
    vars: &'g HashMap<String, Option<Bytes>>,
    req_body: &'g Option<Bytes>,
    resp_body: &'g Option<Bytes>,
    asked: &'g mut Vec<ExtraInfoReq>,
}

impl GatewayVars for Answers<'_> {
    fn fetch<'a>(
        &'a mut self,
        req: ExtraInfoReq,
    ) -> Pin<Box<dyn Future<Output = Result<Option<Bytes>, PluginError>> + Send + 'a>> {
        let answer = match &req {
            ExtraInfoReq::Var(name) => self.vars.get(name.as_str()).cloned().flatten(),
            ExtraInfoReq::ReqBody => self.req_body.clone(),
            ExtraInfoReq::RespBody => self.resp_body.clone(),
        };
        self.asked.push(req);
        Box::pin(std::future::ready(Ok(answer)))
    }
}

impl LocalGateway {
    pub fn new() -> LocalGateway {
        LocalGateway::default()
    }

    /// Sets a variable the gateway answers with.
    pub fn set_var(&mut self, name: &str, value: &str) {
        self.vars.insert(
            name.to_owned(),
            Some(Bytes::copy_from_slice(value.as_bytes())),
        );
    }

    /// The answer tables, and the call state, borrowed apart.
    fn split(&mut self) -> (Answers<'_>, &mut CallState, &mut RespState) {
        let answers = Answers {
            vars: &self.vars,
            req_body: &self.req_body,
            resp_body: &self.resp_body,
            asked: &mut self.asked,
        };
        (answers, &mut self.call, &mut self.resp)
    }

    /// Runs the request phase of `chain`; a plugin failure is the error.
    pub async fn call(
        &mut self,
        chain: &Chain,
        req: &HttpReqCallReq,
    ) -> Result<ReqAction, PluginError> {
        let (mut answers, call, _) = self.split();
        call.reset();
        chain
            .run_request(req, call, &mut answers)
            .await
            .map_err(|f| f.error)
    }

    /// Runs the response phase of `chain`; the reply is what the gateway would receive.
    pub async fn resp_call(
        &mut self,
        chain: &Chain,
        req: &HttpRespCallReq,
    ) -> Result<HttpRespCallResp, PluginError> {
        let (mut answers, _, resp) = self.split();
        resp.reset();
        chain
            .run_response(req, resp, &mut answers)
            .await
            .map_err(|f| f.error)?;
        Ok(self.resp.take_reply(req.id))
    }
}
