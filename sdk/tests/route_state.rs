//! Route state lives as long as a chain that asked for it, whatever the plugin keeps of it.
//!
//! The test plugin keeps only a field cloned out of its state (an inner `Arc`), never the `Arc`
//! that [`PrepareEnv::state`] returned: the state must survive anyway.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ext_plugin_sdk::harness::{block_on, request, Harness, LocalGateway, TestEnv};
use ext_plugin_sdk::model::ReqAction;
use ext_plugin_sdk::*;

/// The route's state: a counter behind its own `Arc`.
struct Counts {
    hits: Arc<AtomicU64>,
}

/// Answers every request with the route's hit count so far (this one included).
struct Tally {
    /// A clone of the state's field; the state itself is not held.
    hits: Arc<AtomicU64>,
}

impl Plugin for Tally {
    const NAME: &'static str = "tally";
    type Conf = serde_json::Value;

    fn prepare(_: serde_json::Value, env: &mut PrepareEnv<'_>) -> Result<Self, ConfError> {
        let hits = env
            .state(|| Counts {
                hits: Arc::default(),
            })
            .hits
            .clone();
        Ok(Tally { hits })
    }

    async fn request_filter(&self, _: &mut RequestCall<'_>) -> Result<Flow, PluginError> {
        let n = self.hits.fetch_add(1, Ordering::Relaxed) + 1;
        Ok(Flow::Stop(Stop::new(200).with_body(n.to_string())))
    }
}

const PRE: &str = "route#1#ext-plugin-pre-req#1";
const POST: &str = "route#1#ext-plugin-post-resp#1";

fn count(gw: &mut LocalGateway, chain: &Chain) -> String {
    match block_on(gw.call(chain, &request(Method::Get, "/"))).unwrap() {
        ReqAction::Stop(s) => String::from_utf8(s.body.to_vec()).unwrap(),
        other => panic!("expected a stop, got {other:?}"),
    }
}

#[test]
fn chains_of_one_route_share_state_the_plugin_does_not_hold() {
    let harness = Harness::new(Registry::new().with::<Tally>());
    let mut gw = LocalGateway::new();
    let chain = [("tally", "{}")];
    let pre = harness.prepare(PRE, &chain).unwrap();
    assert_eq!(count(&mut gw, &pre), "1");
    let post = harness.prepare(POST, &chain).unwrap();
    assert_eq!(
        count(&mut gw, &post),
        "2",
        "the route's other attachment lost the count"
    );
    let again = harness.prepare(PRE, &chain).unwrap();
    assert_eq!(count(&mut gw, &again), "3", "a re-prepare lost the count");

    // Once no chain asked for it any more, the state goes: a later chain starts afresh.
    drop((pre, post, again));
    let fresh = harness.prepare(PRE, &chain).unwrap();
    assert_eq!(count(&mut gw, &fresh), "1", "state outlived every chain");
}

#[test]
fn a_test_env_keeps_state_for_its_own_life() {
    let env = TestEnv::default();
    let build = || {
        env.with(PRE, Tally::NAME, "{}", &[Tally::NAME], |e| {
            Tally::prepare(serde_json::Value::Null, e)
        })
        .unwrap()
    };
    let first = build();
    first.hits.fetch_add(1, Ordering::Relaxed);
    let second = build();
    assert_eq!(second.hits.load(Ordering::Relaxed), 1);
}
