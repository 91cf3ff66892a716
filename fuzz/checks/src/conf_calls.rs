//! The `conf_calls` target: a chain of built-in plugins with fuzzed confs is prepared and, when
//! accepted, run on requests full of extreme values, so that the arithmetic each plugin does on
//! its parsed conf meets the worst numbers the conf and the gateway can give (issue 11 #5:
//! windows, rates and latencies once wrapped round and made limiters admit everything).
//!
//! Inputs are the `confs` target's (`name\0json\xFFname\0json…`). Prepared confs run three
//! requests (so limiters see a second and third one) and one response, on a runtime whose clock
//! is paused and jumps ahead when every task waits: delays of up to 55 s cost nothing, and the
//! target stays deterministic. A panic (debug builds check every overflow) is a finding; a
//! refused conf or a failed call is not.

use std::sync::OnceLock;

use ext_plugin_runner::model::{HttpReqCallReq, HttpRespCallReq, Method, Pair};
use ext_plugin_runner::Registry;
use ext_plugin_sdk::harness::{Harness, LocalGateway};
use ext_plugin_sdk::Clock;

use crate::{parse_chain, registry};

/// Numbers at the edges: past u64, negative, fractional, not numbers at all.
const EXTREMES: &[&str] = &[
    "18446744073709551615",
    "18446744073",
    "36028797018963968",
    "-1",
    "1e308",
    "1e-12",
    "NaN",
    "0",
];

/// Runs one input; see the module documentation.
pub fn conf_calls(data: &[u8]) {
    static BUILTIN: OnceLock<Registry> = OnceLock::new();
    let registry = BUILTIN.get_or_init(registry);
    let Some(chain) = parse_chain(data) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let harness = Harness::new(registry.clone()).with_clock(Clock::manual());
        let Ok(prepared) = harness.prepare("route#fuzz#ext-plugin-pre-req#1", &chain) else {
            return;
        };
        let mut gateway = LocalGateway::new();
        for (i, value) in EXTREMES.iter().enumerate() {
            gateway.set_var(&format!("http_x_{i}"), value);
        }
        gateway.set_var("request_time", "1e308");
        gateway.set_var("upstream_response_time", "18446744073709551615");
        for (i, value) in EXTREMES.iter().cycle().take(3).enumerate() {
            let _ = gateway.call(&prepared, &extreme_request(i, value)).await;
            harness
                .clock()
                .advance(std::time::Duration::from_secs(u64::from(u32::MAX)));
        }
        let resp = HttpRespCallReq {
            id: 1,
            status: 599,
            headers: vec![Pair::new("x-a6-runner-req".to_owned(), "1".to_owned())],
            conf_token: 1,
        };
        let _ = gateway.resp_call(&prepared, &resp).await;
    });
}

/// A request whose counts, windows, ids and times, wherever a conf reads them from, are
/// `value`.
fn extreme_request(id: usize, value: &str) -> HttpReqCallReq {
    let pairs = |names: &[&str]| -> Vec<Pair> {
        names
            .iter()
            .map(|n| Pair::new((*n).to_owned(), value.to_owned()))
            .collect()
    };
    HttpReqCallReq {
        id: id as u32,
        src_ip: Some([10, 0, 0, 1].into()),
        method: Method::Post,
        path: format!("/api/{value}/../x").into(),
        args: pairs(&["count", "time_window", "conn", "burst", "x", "jwt"]).into(),
        headers: pairs(&[
            "count",
            "time_window",
            "conn",
            "burst",
            "x-request-id",
            "content-length",
            "user-agent",
            "authorization",
        ])
        .into(),
        conf_token: 1,
        extra_info: Vec::new(),
    }
}

/// The audit's extreme confs (issue 11 #5) and neighbours: the seeds of this target, and a
/// regression test of their own in tests/fuzz_regressions.rs.
pub fn conf_call_seeds() -> Vec<(String, Vec<u8>)> {
    SEEDS
        .iter()
        .enumerate()
        .map(|(i, chain)| (format!("extreme{i}"), crate::conf_input(chain)))
        .collect()
}

const SEEDS: &[&[(&str, &str)]] = &[
    &[("limit-count", r#"{"count": 1, "time_window": 18446744073}"#)],
    &[(
        "limit-count",
        r#"{"count": 1, "time_window": 9007199254740991, "window_type": "sliding"}"#,
    )],
    &[(
        "limit-count",
        r#"{"count": "${http_count ?? 1}", "time_window": "${http_time_window ?? 1}"}"#,
    )],
    &[("limit-req", r#"{"rate": 1e-12, "burst": 0}"#)],
    &[(
        "limit-req",
        r#"{"rate": 0.000001, "burst": 1e300, "nodelay": true}"#,
    )],
    &[(
        "limit-req",
        r#"{"rate": 1, "burst": 1, "warm_up_period_sec": 1, "cold_factor": 1e9}"#,
    )],
    &[(
        "limit-conn",
        r#"{"conn": 1, "burst": 0, "default_conn_delay": 54, "only_use_default_delay": false}"#,
    )],
    &[(
        "limit-conn",
        r#"{"conn": "${http_conn ?? 1}", "burst": "${http_burst ?? 0}", "default_conn_delay": 1}"#,
    )],
    &[(
        "fault-injection",
        r#"{"delay": {"duration": 54.9}, "abort": {"http_status": 599}}"#,
    )],
    &[(
        "jwt-auth",
        r#"{"consumers": [{"username": "a", "key": "k", "secret": "s", "lifetime_grace_period": 86400}]}"#,
    )],
    &[(
        "traffic-tag",
        r#"{"rules": [{"weighted_tags": [{"tag": "a", "weight": 4294967295}, {"tag": "b", "weight": 1}]}]}"#,
    )],
    &[(
        "proxy-rewrite",
        r#"{"uri": "/svc/$arg_x", "headers": {"set": {"X-A": "$http_count"}}}"#,
    )],
];
