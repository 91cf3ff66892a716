//! Route state over a real socket: the runner keeps a route's state alive as long as a chain
//! that asked for it is cached, even when the plugin keeps only something derived from it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ext_plugin_runner::model::ReqAction;
use ext_plugin_runner::testing::{request, FakeGateway, TestRunner};
use ext_plugin_runner::Registry;
use ext_plugin_sdk::*;

struct Counts {
    hits: Arc<AtomicU64>,
}

/// Answers with the route's hit count; keeps only the counter, not the state's `Arc`.
struct Tally {
    hits: Arc<AtomicU64>,
}

impl Plugin for Tally {
    const NAME: &'static str = "tally";
    type Conf = serde_json::Value;

    fn prepare(_: serde_json::Value, env: &mut PrepareEnv<'_>) -> Result<Self, ConfError> {
        let counts = env.state(|| Counts {
            hits: Arc::default(),
        });
        Ok(Tally {
            hits: counts.hits.clone(),
        })
    }

    async fn request_filter(&self, _: &mut RequestCall<'_>) -> Result<Flow, PluginError> {
        let n = self.hits.fetch_add(1, Ordering::Relaxed) + 1;
        Ok(Flow::Stop(Stop::new(200).with_body(n.to_string())))
    }
}

async fn count(gw: &mut FakeGateway, token: u32) -> String {
    match gw
        .call(token, &request(Method::Get, "/"))
        .await
        .unwrap()
        .action
    {
        ReqAction::Stop(s) => String::from_utf8(s.body.to_vec()).unwrap(),
        other => panic!("expected a stop, got {other:?}"),
    }
}

#[tokio::test]
async fn the_attachments_of_a_route_share_state_the_plugin_does_not_hold() {
    let runner = TestRunner::start(Registry::new().with::<Tally>()).await;
    let chain = [("tally", "{}")];
    let mut gw = runner.connect().await;
    let pre = gw
        .prepare("route#1#ext-plugin-pre-req#1", &chain)
        .await
        .unwrap();
    assert_eq!(count(&mut gw, pre).await, "1");
    // Another connection, the route's other attachment: the same state.
    let mut other = runner.connect().await;
    let post = other
        .prepare("route#1#ext-plugin-post-resp#1", &chain)
        .await
        .unwrap();
    assert_eq!(
        count(&mut other, post).await,
        "2",
        "the route's counter was renewed"
    );
    assert_eq!(count(&mut gw, pre).await, "3");
    // Another route has its own.
    let elsewhere = gw
        .prepare("route#2#ext-plugin-pre-req#1", &chain)
        .await
        .unwrap();
    assert_eq!(count(&mut gw, elsewhere).await, "1");
    runner.stop().await;
}
