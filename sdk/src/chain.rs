//! A prepared plugin chain and how it runs (the semantics are documented in [the crate docs](crate)).

use std::future::Future;
use std::pin::Pin;

use crate::env::Held;
use crate::model::{HttpReqCallReq, HttpRespCallReq, ReqAction};
use crate::request::CallState;
use crate::response::RespState;
use crate::text::Text;
use crate::vars::GatewayVars;
use crate::{Attachment, Flow, Plugin, PluginError, RequestCall, ResponseCall};

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A prepared plugin behind a vtable, so chains can mix plugin types.
pub(crate) trait DynPlugin: Send + Sync {
    fn request_filter<'a>(
        &'a self,
        call: &'a mut RequestCall<'_>,
    ) -> BoxFuture<'a, Result<Flow, PluginError>>;

    fn response_filter<'a>(
        &'a self,
        call: &'a mut ResponseCall<'_>,
    ) -> BoxFuture<'a, Result<(), PluginError>>;
}

impl<P: Plugin> DynPlugin for P {
    fn request_filter<'a>(
        &'a self,
        call: &'a mut RequestCall<'_>,
    ) -> BoxFuture<'a, Result<Flow, PluginError>> {
        Box::pin(Plugin::request_filter(self, call))
    }

    fn response_filter<'a>(
        &'a self,
        call: &'a mut ResponseCall<'_>,
    ) -> BoxFuture<'a, Result<(), PluginError>> {
        Box::pin(Plugin::response_filter(self, call))
    }
}

/// One prepared entry of a chain.
pub(crate) struct Link {
    pub(crate) name: &'static str,
    pub(crate) plugin: Box<dyn DynPlugin>,
}

/// A prepared chain: the plugins of one `prepare_conf`, in order.
pub struct Chain {
    pub(crate) key: Text,
    /// Read from the key once, at prepare time, not per request.
    pub(crate) attachment: Attachment,
    pub(crate) links: Vec<Link>,
    /// The state its plugins asked for at prepare time. The state registry holds state weakly,
    /// so this is what keeps a route's state alive while the chain lives, whether or not the
    /// plugins hold on to it themselves.
    pub(crate) _state: Box<[Held]>,
}

/// A plugin's failure, with the plugin's name for the log.
#[derive(Debug)]
pub struct ChainFailure {
    pub plugin: &'static str,
    pub error: PluginError,
}

impl Chain {
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The plugin names in order.
    pub fn plugin_names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.links.iter().map(|l| l.name)
    }

    /// Runs the request phase. `state` must be reset; on return it holds the recorded rewrite
    /// (moved into the action when there is one).
    pub async fn run_request(
        &self,
        req: &HttpReqCallReq,
        state: &mut CallState,
        gateway: &mut dyn GatewayVars,
    ) -> Result<ReqAction, ChainFailure> {
        let mut call = RequestCall::new(req, state, gateway, self.attachment);
        for link in &self.links {
            match link.plugin.request_filter(&mut call).await {
                Ok(Flow::Continue) => {}
                Ok(Flow::Stop(mut stop)) => {
                    // Response headers earlier plugins set stay on the response, as nginx keeps
                    // headers a Lua plugin set before another one exits; the stop's own win.
                    let carried = &mut state.rewrite.resp_headers;
                    carried.retain(|h| {
                        !stop
                            .headers
                            .iter()
                            .any(|s| s.name.eq_ignore_ascii_case(&h.name))
                    });
                    stop.headers.splice(0..0, carried.drain(..));
                    return Ok(ReqAction::Stop(stop));
                }
                Err(error) => {
                    return Err(ChainFailure {
                        plugin: link.name,
                        error,
                    })
                }
            }
        }
        Ok(if state.rewrite.is_empty() {
            ReqAction::Continue
        } else {
            ReqAction::Rewrite(std::mem::take(&mut state.rewrite))
        })
    }

    /// Runs the response phase; the reply's changes are left in `state`.
    pub async fn run_response(
        &self,
        req: &HttpRespCallReq,
        state: &mut RespState,
        gateway: &mut dyn GatewayVars,
    ) -> Result<(), ChainFailure> {
        let mut call = ResponseCall::new(req, state, gateway);
        for link in &self.links {
            if let Err(error) = link.plugin.response_filter(&mut call).await {
                return Err(ChainFailure {
                    plugin: link.name,
                    error,
                });
            }
        }
        Ok(())
    }
}
