//! adaptive-limit against a simulated upstream whose latency rises with concurrency, beside no
//! limit and a fixed concurrency limit. Virtual time, so the figures are exact and repeatable:
//!
//! ```text
//! cargo test -p ext-plugin-catalogue --test adaptive_limit_sim -- --nocapture
//! ```
//!
//! The upstream has 10 workers and needs 50 ms of work per request, shared among the requests
//! in flight (processor sharing): up to 10 in flight a request takes 50 ms, with `c` in flight
//! it takes `c × 5 ms`. It completes at most 200 requests/s. The load is 100 requests/s for
//! 10 s (half the capacity), then 300 requests/s for 20 s (1.5 × capacity), arriving evenly.

use std::time::Duration;

use ext_plugin_catalogue::adaptive_limit::{AdaptiveLimit, AdaptiveLimitConf};
use ext_plugin_sdk::harness::{block_on, request, TestCall, TestEnv, TestResp};
use ext_plugin_sdk::{Clock, Flow, Method, Plugin};

const WORKERS: f64 = 10.0;
const WORK_MS: f64 = 50.0;
const STEP_MS: u64 = 1;
const LIGHT_SECS: u64 = 10;
const HEAVY_SECS: u64 = 20;

/// How a configuration admits requests.
enum Gate {
    None,
    Fixed(usize),
    Adaptive(Box<AdaptiveLimit>, Clock),
}

struct InFlight {
    started: u64,
    left_ms: f64,
    id: Option<String>,
}

#[derive(Default)]
struct Phase {
    latencies: Vec<u64>,
    offered: u64,
    rejected: u64,
}

impl Phase {
    fn pct(&mut self, p: f64) -> u64 {
        self.latencies.sort_unstable();
        if self.latencies.is_empty() {
            return 0;
        }
        let i = ((self.latencies.len() as f64 * p).ceil() as usize).clamp(1, self.latencies.len());
        self.latencies[i - 1]
    }
}

/// Runs the whole load through `gate`; returns the light and the heavy phase.
fn run(mut gate: Gate) -> [Phase; 2] {
    let mut phases = [Phase::default(), Phase::default()];
    let mut flight: Vec<InFlight> = Vec::new();
    let end = (LIGHT_SECS + HEAVY_SECS) * 1000;
    let mut next_arrival = 0.0_f64;
    for now in (0..end).step_by(STEP_MS as usize) {
        if let Gate::Adaptive(_, clock) = &gate {
            if now > 0 {
                clock.advance(Duration::from_millis(STEP_MS));
            }
        }
        // The upstream works for one step, shared among the requests in flight.
        let share = (WORKERS / flight.len().max(1) as f64).min(1.0) * STEP_MS as f64;
        let mut i = 0;
        while i < flight.len() {
            flight[i].left_ms -= share;
            if flight[i].left_ms <= 1e-9 {
                let done = flight.swap_remove(i);
                let phase = usize::from(done.started >= LIGHT_SECS * 1000);
                phases[phase].latencies.push(now + STEP_MS - done.started);
                if let (Gate::Adaptive(p, _), Some(id)) = (&gate, done.id) {
                    let mut resp = TestResp::new(200).with_gateway_var("http_x_a6_runner_req", &id);
                    block_on(p.response_filter(&mut resp.call())).unwrap();
                }
            } else {
                i += 1;
            }
        }
        // Arrivals, evenly spaced.
        let rate = if now < LIGHT_SECS * 1000 {
            100.0
        } else {
            300.0
        };
        while next_arrival <= now as f64 {
            next_arrival += 1000.0 / rate;
            let phase = usize::from(now >= LIGHT_SECS * 1000);
            phases[phase].offered += 1;
            let admitted = match &mut gate {
                Gate::None => Some(None),
                Gate::Fixed(limit) => (flight.len() < *limit).then_some(None),
                Gate::Adaptive(p, _) => {
                    let mut call = TestCall::new(request(Method::Get, "/"));
                    match block_on(p.request_filter(&mut call.call())).unwrap() {
                        Flow::Continue => {
                            Some(call.set_headers()[0].value.as_ref().map(|v| v.to_string()))
                        }
                        Flow::Stop(_) => None,
                    }
                }
            };
            match admitted {
                Some(id) => flight.push(InFlight {
                    started: now,
                    left_ms: WORK_MS,
                    id,
                }),
                None => phases[phase].rejected += 1,
            }
        }
    }
    phases
}

fn adaptive() -> Gate {
    let clock = Clock::manual();
    let conf = r#"{"trigger_rt_ms": 100, "min_limit": 4, "headroom": 0.1, "window_ms": 10000, "buckets": 100}"#;
    let parsed: AdaptiveLimitConf = serde_json::from_str(conf).unwrap();
    let env = TestEnv::default().with_clock(clock.clone());
    let plugin = env
        .with(
            "route#sim#ext-plugin-post-resp#1",
            AdaptiveLimit::NAME,
            conf,
            &[AdaptiveLimit::NAME],
            |e| AdaptiveLimit::prepare(parsed, e),
        )
        .unwrap();
    Gate::Adaptive(Box::new(plugin), clock)
}

#[test]
fn adaptive_limit_holds_latency_near_the_minimum_under_overload() {
    let mut rows = Vec::new();
    for (name, gate) in [
        ("no limit", Gate::None),
        ("fixed limit 100 in flight", Gate::Fixed(100)),
        ("adaptive-limit", adaptive()),
    ] {
        let [mut light, mut heavy] = run(gate);
        println!(
            "{name:27} | light: p50 {:4} ms p99 {:4} ms, rejected {:4}/{} | overload: p50 {:5} ms p99 {:5} ms, {:3.0} done/s, rejected {:4}/{}",
            light.pct(0.5),
            light.pct(0.99),
            light.rejected,
            light.offered,
            heavy.pct(0.5),
            heavy.pct(0.99),
            heavy.latencies.len() as f64 / HEAVY_SECS as f64,
            heavy.rejected,
            heavy.offered,
        );
        rows.push((name, light, heavy));
    }
    let min = WORK_MS as u64;
    let [(_, _, none), (_, _, fixed), (_, light, adaptive)] = &mut rows[..] else {
        unreachable!()
    };
    assert_eq!(light.rejected, 0, "below capacity nothing is shed");
    assert!(light.pct(0.99) <= min + 2);
    // The median sits at the minimum plus the headroom; the tail is the second or so it takes
    // the trigger (a bucket's mean at 2 × the minimum) to notice the overload.
    assert!(
        adaptive.pct(0.5) <= min * 6 / 5,
        "adaptive p50 {} ms",
        adaptive.pct(0.5)
    );
    assert!(
        adaptive.pct(0.99) <= 3 * min,
        "adaptive p99 {} ms",
        adaptive.pct(0.99)
    );
    assert!(
        adaptive.latencies.len() as f64 / HEAVY_SECS as f64 >= 180.0,
        "adaptive keeps the upstream busy"
    );
    assert!(fixed.pct(0.5) >= 8 * min, "fixed p50 {} ms", fixed.pct(0.5));
    assert!(
        none.pct(0.99) >= 40 * min,
        "no limit p99 {} ms",
        none.pct(0.99)
    );
}
