//! Sentinel's warm-up through limit-req and limit-count, on a hand-driven clock: a cold key is
//! paced at a third of its rate, and reaches the full rate once traffic has warmed it.

use std::time::Duration;

use ext_plugin_catalogue::limit_req::{LimitReq, LimitReqConf};
use ext_plugin_sdk::harness::{block_on, request, TestCall, TestEnv};
use ext_plugin_sdk::{Clock, Flow, Method, Plugin};

fn admitted(p: &LimitReq) -> bool {
    let mut call = TestCall::new(request(Method::Get, "/"));
    block_on(p.request_filter(&mut call.call())).unwrap() == Flow::Continue
}

#[test]
fn limit_req_paces_a_cold_key_at_a_third_and_warms_up() {
    let env = TestEnv::default().with_clock(Clock::manual());
    let clock = env.clock().clone();
    let conf = r#"{"rate": 10, "burst": 0, "nodelay": true, "warm_up_period_sec": 10}"#;
    let parsed: LimitReqConf = serde_json::from_str(conf).unwrap();
    let p = env
        .with(
            "route#1#ext-plugin-pre-req#1",
            LimitReq::NAME,
            conf,
            &[],
            |e| LimitReq::prepare(parsed, e),
        )
        .unwrap();
    // Cold: 10/s becomes 10/3 per second, one request every 300 ms.
    assert!(admitted(&p));
    clock.advance(Duration::from_millis(150));
    assert!(
        !admitted(&p),
        "150 ms after the first, a cold key is still paced"
    );
    clock.advance(Duration::from_millis(150));
    assert!(admitted(&p));
    // Offer 10/s for 30 s: the admitted share rises to the full rate.
    let mut per_second = Vec::new();
    for _ in 0..30 {
        let mut n = 0;
        for _ in 0..10 {
            clock.advance(Duration::from_millis(100));
            n += u32::from(admitted(&p));
        }
        per_second.push(n);
    }
    assert!(per_second[0] <= 5, "still cold at first: {per_second:?}");
    assert!(
        per_second[25..].iter().all(|n| *n >= 9),
        "warm at the end: {per_second:?}"
    );
}
