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

    async fn request_filter(&self, call: &mut RequestCall<'_>) -> Result<Flow, PluginError> {
        match self.0 {
            Script::Pass => {}
            Script::Delay => call.mark_delayed(),
            Script::Reject => return Ok(Flow::Stop(Stop::new(403))),
            Script::Error => return Err(PluginError::new("scripted failure")),
            Script::Panic => panic!("scripted panic"),
            Script::Pending => std::future::pending::<()>().await,
        }
        Ok(Flow::Continue)
    }

    async fn response_filter(&self, _: &mut ResponseCall<'_>) -> Result<(), PluginError> {
        match self.0 {
            Script::Error => Err(PluginError::new("scripted failure")),
            _ => Ok(()),
        }
    }
}
