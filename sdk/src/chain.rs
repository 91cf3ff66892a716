//! A prepared plugin chain and how it runs (the semantics are documented in [the crate docs](crate)).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::env::Held;
use crate::model::{HttpReqCallReq, HttpRespCallReq, ReqAction};
use crate::request::CallState;
use crate::response::{is_hop_by_hop, RespState};
use crate::text::Text;
use crate::vars::GatewayVars;
use crate::{Attachment, Flow, Plugin, PluginError, RequestCall, ResponseCall};

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A prepared plugin behind a vtable, so chains can mix plugin types. The synchronous hooks
/// cost no allocation; an awaited filter's future is boxed, since its type (and size) is the
/// plugin's and the SDK forbids the unsafe code that polling it in place behind `dyn` needs.
pub(crate) trait DynPlugin: Send + Sync {
    fn request_filter_sync(&self, call: &mut RequestCall<'_>) -> Option<Result<Flow, PluginError>>;

    fn request_filter<'a>(
        &'a self,
        call: &'a mut RequestCall<'_>,
    ) -> BoxFuture<'a, Result<Flow, PluginError>>;

    fn response_filter_sync(&self, call: &mut ResponseCall<'_>) -> Option<Result<(), PluginError>>;

    fn response_filter<'a>(
        &'a self,
        call: &'a mut ResponseCall<'_>,
    ) -> BoxFuture<'a, Result<(), PluginError>>;
}

impl<P: Plugin> DynPlugin for P {
    fn request_filter_sync(&self, call: &mut RequestCall<'_>) -> Option<Result<Flow, PluginError>> {
        Plugin::request_filter_sync(self, call)
    }

    fn request_filter<'a>(
        &'a self,
        call: &'a mut RequestCall<'_>,
    ) -> BoxFuture<'a, Result<Flow, PluginError>> {
        Box::pin(Plugin::request_filter(self, call))
    }

    fn response_filter_sync(&self, call: &mut ResponseCall<'_>) -> Option<Result<(), PluginError>> {
        Plugin::response_filter_sync(self, call)
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
    /// Told what each plugin decided, when the host watches this chain.
    pub(crate) observer: Option<Arc<dyn ChainObserver>>,
}

/// Which phase a plugin ran in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Request,
    Response,
}

/// What one plugin of a chain decided in one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// It let the call go on (a response filter that returned `Ok`).
    Pass,
    /// It let the request go on after holding it back ([`RequestCall::mark_delayed`]).
    Delay,
    /// It answered the client itself ([`Flow::Stop`]).
    Reject,
    /// It returned an error, which fails the call.
    Error,
    /// The call was dropped while it ran: it panicked, the call's deadline passed, or the
    /// connection went away.
    Abandoned,
}

/// Watches a chain's plugins decide: a host's hook for per-plugin metrics, set with
/// [`Chain::set_observer`]. Called once per plugin that ran, in order, on the call's own task:
/// keep it to an atomic increment or two, and never block.
pub trait ChainObserver: Send + Sync {
    /// Plugin number `plugin` (its index in the chain) decided `decision` in `phase`.
    fn decided(&self, phase: Phase, plugin: usize, decision: Decision);
}

/// Reports [`Decision::Abandoned`] for a plugin whose call is dropped before it returns.
struct Watch<'a> {
    observer: Option<&'a dyn ChainObserver>,
    phase: Phase,
    plugin: usize,
}

impl Watch<'_> {
    fn decided(mut self, decision: Decision) {
        if let Some(o) = self.observer.take() {
            o.decided(self.phase, self.plugin, decision);
        }
    }
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        if let Some(o) = self.observer {
            o.decided(self.phase, self.plugin, Decision::Abandoned);
        }
    }
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

    /// The key as the chain holds it: a clone shares its storage, so a host that indexes
    /// chains by key keeps one copy of each key, not two.
    pub fn key_text(&self) -> &Text {
        &self.key
    }

    /// The route part of the key (`route#1` of `route#1#ext-plugin-pre-req#12`), as
    /// [`PrepareEnv::route`](crate::PrepareEnv::route) gives it.
    pub fn route(&self) -> &str {
        crate::env::route_scope(&self.key)
    }

    /// Has `observer` told what every plugin decides, from the next call on.
    pub fn set_observer(&mut self, observer: Arc<dyn ChainObserver>) {
        self.observer = Some(observer);
    }

    /// The plugin names in order.
    pub fn plugin_names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.links.iter().map(|l| l.name)
    }

    fn watch(&self, phase: Phase, plugin: usize) -> Watch<'_> {
        Watch {
            observer: self.observer.as_deref(),
            phase,
            plugin,
        }
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
        for (index, link) in self.links.iter().enumerate() {
            let watch = self.watch(Phase::Request, index);
            let result = match link.plugin.request_filter_sync(&mut call) {
                Some(decided) => decided,
                None => link.plugin.request_filter(&mut call).await,
            };
            let delayed = call.take_delayed();
            watch.decided(match &result {
                Ok(Flow::Continue) if delayed => Decision::Delay,
                Ok(Flow::Continue) => Decision::Pass,
                Ok(Flow::Stop(_)) => Decision::Reject,
                Err(_) => Decision::Error,
            });
            match result {
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
                    // The gateway sets these on the client's response as they are: a framing
                    // or hop-by-hop header (from a conf's `rejected_headers`, say) would clash
                    // with the response nginx frames itself.
                    stop.headers.retain(|h| !is_hop_by_hop(&h.name));
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
        // Response headers are set on the client's response as they are, as a stop's are.
        state
            .rewrite
            .resp_headers
            .retain(|h| !is_hop_by_hop(&h.name));
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
        for (index, link) in self.links.iter().enumerate() {
            let watch = self.watch(Phase::Response, index);
            let result = match link.plugin.response_filter_sync(&mut call) {
                Some(decided) => decided,
                None => link.plugin.response_filter(&mut call).await,
            };
            watch.decided(match result {
                Ok(()) => Decision::Pass,
                Err(_) => Decision::Error,
            });
            if let Err(error) = result {
                return Err(ChainFailure {
                    plugin: link.name,
                    error,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::harness::{block_on, prepare_request, request, LocalGateway, Scripted};
    use crate::host::StateRegistry;
    use crate::{Method, Registry};

    #[derive(Default)]
    struct Recorder(Mutex<Vec<(Phase, usize, Decision)>>);

    impl ChainObserver for Recorder {
        fn decided(&self, phase: Phase, plugin: usize, decision: Decision) {
            self.0.lock().unwrap().push((phase, plugin, decision));
        }
    }

    fn observed(confs: &[&str]) -> (Chain, Arc<Recorder>) {
        let entries: Vec<(&str, String)> = confs
            .iter()
            .map(|c| ("scripted", format!("\"{c}\"")))
            .collect();
        let entries: Vec<(&str, &str)> = entries.iter().map(|(n, c)| (*n, c.as_str())).collect();
        let mut chain = Registry::new()
            .with::<Scripted>()
            .build_chain(
                &prepare_request("route#7#ext-plugin-pre-req#1", &entries),
                &StateRegistry::default(),
                &crate::Clock::system(),
            )
            .unwrap();
        let recorder = Arc::new(Recorder::default());
        chain.set_observer(recorder.clone());
        (chain, recorder)
    }

    fn take(r: &Recorder) -> Vec<(Phase, usize, Decision)> {
        std::mem::take(&mut *r.0.lock().unwrap())
    }

    #[test]
    fn every_plugin_that_ran_is_reported_once_in_order() {
        use Decision::*;
        use Phase::*;
        let mut gw = LocalGateway::new();
        let req = request(Method::Get, "/");
        let (chain, rec) = observed(&["pass", "delay", "reject", "pass"]);
        assert_eq!(chain.route(), "route#7");
        block_on(gw.call(&chain, &req)).unwrap();
        assert_eq!(
            take(&rec),
            [
                (Request, 0, Pass),
                (Request, 1, Delay),
                (Request, 2, Reject)
            ],
            "the plugin after the stop never ran"
        );
        block_on(gw.call(&chain, &req)).unwrap();
        assert_eq!(take(&rec)[1], (Request, 1, Delay), "the mark is per call");

        let (chain, rec) = observed(&["pass", "error", "pass"]);
        assert!(block_on(gw.call(&chain, &req)).is_err());
        assert_eq!(take(&rec), [(Request, 0, Pass), (Request, 1, Error)]);
        let resp = crate::model::HttpRespCallReq::default();
        assert!(block_on(gw.resp_call(&chain, &resp)).is_err());
        assert_eq!(take(&rec), [(Response, 0, Pass), (Response, 1, Error)]);
    }

    /// Decides in its synchronous hook when its conf is `true` (a 201 stop), declines it
    /// otherwise, and its awaited filter answers 202: which status comes back says which ran.
    struct Either(bool);

    impl Plugin for Either {
        const NAME: &'static str = "either";
        type Conf = bool;

        fn prepare(now: bool, _: &mut crate::PrepareEnv<'_>) -> Result<Self, crate::ConfError> {
            Ok(Either(now))
        }

        fn request_filter_sync(
            &self,
            call: &mut RequestCall<'_>,
        ) -> Option<Result<Flow, PluginError>> {
            let _ = call;
            self.0.then(|| Ok(Flow::Stop(crate::Stop::new(201))))
        }

        async fn request_filter(&self, _: &mut RequestCall<'_>) -> Result<Flow, PluginError> {
            Ok(Flow::Stop(crate::Stop::new(202)))
        }
    }

    struct OnlySync;

    impl Plugin for OnlySync {
        const NAME: &'static str = "only-sync";
        type Conf = ();

        fn prepare(_: (), _: &mut crate::PrepareEnv<'_>) -> Result<Self, crate::ConfError> {
            Ok(OnlySync)
        }

        fn request_filter_sync(
            &self,
            _: &mut RequestCall<'_>,
        ) -> Option<Result<Flow, PluginError>> {
            Some(Ok(Flow::Stop(crate::Stop::new(203))))
        }
    }

    #[test]
    fn a_plugin_decides_in_its_sync_hook_or_declines_to_its_future() {
        let harness = crate::harness::Harness::new(Registry::new().with::<Either>());
        let mut gw = LocalGateway::new();
        for (now, status) in [("true", 201), ("false", 202)] {
            let chain = harness.prepare("k", &[("either", now)]).unwrap();
            let action = block_on(gw.call(&chain, &request(Method::Get, "/"))).unwrap();
            let ReqAction::Stop(stop) = action else {
                panic!("{action:?}")
            };
            assert_eq!(stop.status, status, "sync hook deciding: {now}");
        }
        // A plugin with only the synchronous hook still answers through `request_filter`, as
        // plugin unit tests call it.
        let mut call = crate::harness::TestCall::new(request(Method::Get, "/"));
        let flow = block_on(Plugin::request_filter(&OnlySync, &mut call.call()));
        assert_eq!(flow.unwrap(), Flow::Stop(crate::Stop::new(203)));
    }

    #[test]
    fn a_plugin_whose_call_is_dropped_or_panics_is_reported_abandoned() {
        let req = request(Method::Get, "/");
        let (chain, rec) = observed(&["pass", "panic"]);
        let mut gw = LocalGateway::new();
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            block_on(gw.call(&chain, &req))
        }));
        assert!(panicked.is_err());
        assert_eq!(
            take(&rec),
            [
                (Phase::Request, 0, Decision::Pass),
                (Phase::Request, 1, Decision::Abandoned)
            ]
        );
        // Dropped mid-plugin (a deadline): the running plugin is abandoned.
        let (chain, rec) = observed(&["pending"]);
        {
            let mut fut = std::pin::pin!(gw.call(&chain, &req));
            let waker = std::task::Waker::noop();
            let mut cx = std::task::Context::from_waker(waker);
            assert!(fut.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(take(&rec), [(Phase::Request, 0, Decision::Abandoned)]);
    }
}
