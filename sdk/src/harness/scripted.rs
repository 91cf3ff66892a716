//! A plugin that decides as its conf says, for testing what hosts do with each outcome.

use crate::{ConfError, Flow, Plugin, PluginError, PrepareEnv, RequestCall, ResponseCall, Stop};

/// Test plugin `scripted`, for runners and observers rather than for gateways: its conf is a
/// JSON string saying what its request filter does: `"pass"`, `"delay"` (passes, marked
/// delayed), `"reject"` (a 403 stop), `"error"` (fails the call) or `"panic"`; `"pending"` never
/// finishes. Its response filter fails with `"error"` and passes otherwise.
///
/// ```
/// use ext_plugin_sdk::harness::{block_on, request, Harness, LocalGateway, Scripted};
/// use ext_plugin_sdk::{Method, Registry};
///
/// let harness = Harness::new(Registry::new().with::<Scripted>());
/// let chain = harness.prepare("k", &[("scripted", r#""error""#)]).unwrap();
/// assert!(block_on(LocalGateway::new().call(&chain, &request(Method::Get, "/"))).is_err());
/// ```
pub struct Scripted(Script);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Script {
    Pass,
    Delay,
    Reject,
    Error,
    Panic,
    Pending,
}

impl Plugin for Scripted {
    const NAME: &'static str = "scripted";
    type Conf = String;

    fn prepare(conf: String, _: &mut PrepareEnv<'_>) -> Result<Self, ConfError> {
        let script = match conf.as_str() {
            "pass" => Script::Pass,
            "delay" => Script::Delay,
            "reject" => Script::Reject,
            "error" => Script::Error,
            "panic" => Script::Panic,
            "pending" => Script::Pending,
            other => return Err(ConfError::new(format!("unknown script `{other}`"))),
        };
        Ok(Scripted(script))
    }

    /// Decides every script but `"pending"` without a future, so hosts' tests cover both ways
    /// a chain runs a plugin.
    fn request_filter_sync(&self, call: &mut RequestCall<'_>) -> Option<Result<Flow, PluginError>> {
        Some(match self.0 {
            Script::Pending => return None,
            Script::Pass => Ok(Flow::Continue),
            Script::Delay => {
                call.mark_delayed();
                Ok(Flow::Continue)
            }
            Script::Reject => Ok(Flow::Stop(Stop::new(403))),
            Script::Error => Err(PluginError::new("scripted failure")),
            Script::Panic => panic!("scripted panic"),
        })
    }

    async fn request_filter(&self, call: &mut RequestCall<'_>) -> Result<Flow, PluginError> {
        match self.request_filter_sync(call) {
            Some(decided) => decided,
            None => std::future::pending().await,
        }
    }

    fn response_filter_sync(&self, _: &mut ResponseCall<'_>) -> Option<Result<(), PluginError>> {
        Some(match self.0 {
            Script::Error => Err(PluginError::new("scripted failure")),
            _ => Ok(()),
        })
    }
}
