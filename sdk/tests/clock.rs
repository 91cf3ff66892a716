//! Plugins read time from `PrepareEnv::clock`, which a harness test drives.

use std::time::Duration;

use ext_plugin_sdk::harness::{block_on, request, Harness, LocalGateway};
use ext_plugin_sdk::model::ReqAction;
use ext_plugin_sdk::*;

/// Answers with the whole seconds since it was prepared.
struct Age {
    clock: Clock,
    born: Duration,
}

impl Plugin for Age {
    const NAME: &'static str = "age";
    type Conf = serde_json::Value;

    fn prepare(_: serde_json::Value, env: &mut PrepareEnv<'_>) -> Result<Self, ConfError> {
        let clock = env.clock().clone();
        Ok(Age {
            born: clock.now(),
            clock,
        })
    }

    async fn request_filter(&self, _: &mut RequestCall<'_>) -> Result<Flow, PluginError> {
        let age = self.clock.now() - self.born;
        Ok(Flow::Stop(
            Stop::new(200).with_body(age.as_secs().to_string()),
        ))
    }
}

fn age(gw: &mut LocalGateway, chain: &Chain) -> String {
    match block_on(gw.call(chain, &request(Method::Get, "/"))).unwrap() {
        ReqAction::Stop(s) => String::from_utf8(s.body.to_vec()).unwrap(),
        other => panic!("expected a stop, got {other:?}"),
    }
}

#[test]
fn a_harness_hands_its_clock_to_the_plugins_it_prepares() {
    let harness = Harness::new(Registry::new().with::<Age>()).with_clock(Clock::manual());
    let chain = harness
        .prepare("route#1#ext-plugin-pre-req#1", &[("age", "{}")])
        .unwrap();
    let mut gw = LocalGateway::new();
    assert_eq!(age(&mut gw, &chain), "0");
    harness.clock().advance(Duration::from_secs(90));
    assert_eq!(age(&mut gw, &chain), "90");
}

#[test]
fn without_a_clock_plugins_read_the_system_one() {
    let harness = Harness::new(Registry::new().with::<Age>());
    assert!(!harness.clock().is_manual());
    let chain = harness
        .prepare("route#1#ext-plugin-pre-req#1", &[("age", "{}")])
        .unwrap();
    // Whatever the machine's pace: no assertion on how much real time passed.
    let secs = age(&mut LocalGateway::new(), &chain);
    assert!(secs.parse::<u64>().is_ok(), "{secs}");
}
