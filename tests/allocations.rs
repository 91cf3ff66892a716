//! The hot path does not allocate in steady state (issue 15): decoding a request into the
//! connection's reused model, encoding a reply into its reused buffer (a Cap'n Proto continue
//! reply is copied from a template, a stop or rewrite written by hand: capnp-rust's builder would
//! allocate per message), and dispatching a chain (plugins that decide in
//! `Plugin::request_filter_sync` cost no future); a whole call through the empty chain or the
//! realistic one makes none, in either codec. Counted exactly with a counting allocator, so the test is
//! deterministic, not a timing.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

mod common;

use bytes::Bytes;
use common::fixtures::{realistic, replies};
use ext_plugin_runner::codec::Protocol;
use ext_plugin_runner::frame::{write_frame, FrameType};
use std::sync::Arc;

use ext_plugin_runner::model::{ExtraInfoReq, HttpReqCallReq, HttpReqCallResp, Pair, ReqAction};
use ext_plugin_sdk::harness::{prepare_request, Harness, LocalGateway};
use ext_plugin_sdk::host::{CallState, ChainObserver, Decision, GatewayVars, Phase, StateRegistry};
use ext_plugin_sdk::PluginError;
use futures_util::FutureExt;

/// Counts allocations made by the current thread.
struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded to the system allocator unchanged; the counter is a
// thread-local Cell with const initialization, which never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        System.alloc(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations `f` makes per run, after warm-up runs have sized every reused buffer.
fn allocations_per_run(mut f: impl FnMut()) -> f64 {
    for _ in 0..10 {
        f();
    }
    let before = ALLOCATIONS.with(Cell::get);
    const RUNS: usize = 100;
    for _ in 0..RUNS {
        f();
    }
    (ALLOCATIONS.with(Cell::get) - before) as f64 / RUNS as f64
}

#[test]
fn decoding_a_request_into_the_reused_model_does_not_allocate() {
    for p in Protocol::ALL {
        let mut wire = Vec::new();
        p.gateway_codec()
            .encode_http_req_call_req(&realistic(), &mut wire);
        let payload = Bytes::from(wire);
        let codec = p.runner_codec();
        let mut model = HttpReqCallReq::default();
        let per_run = allocations_per_run(|| {
            codec
                .decode_http_req_call_req(&payload, &mut model)
                .unwrap();
        });
        assert_eq!(per_run, 0.0, "{p}: decoding allocates");
        assert_eq!(model.headers.len(), realistic().headers.len());
    }
}

#[test]
fn encoding_replies_into_the_reused_buffer_does_not_allocate() {
    let replies = replies();
    for p in Protocol::ALL {
        let mut codec = p.runner_codec();
        let mut out = Vec::new();
        let per_run = allocations_per_run(|| {
            out.clear();
            for r in &replies {
                write_frame(&mut out, FrameType::HttpReqCall as u8, |o| {
                    codec.encode_http_req_call_resp(r, o)
                })
                .unwrap();
            }
        });
        // Cap'n Proto's stop and rewrite replies are written by hand (its builder allocates
        // a segment table per message); FlatBuffers (stock APISIX) reuses its builder.
        assert!(
            replies.iter().any(|r| r.action != ReqAction::Continue),
            "the replies include built ones"
        );
        assert_eq!(per_run, 0.0, "{p}: encoding replies allocates");
    }
}

#[test]
fn dispatching_a_chain_of_synchronous_plugins_does_not_allocate() {
    let harness = Harness::new(ext_plugin_catalogue::builtin());
    let req = realistic();
    let mut gw = LocalGateway::new();
    for (chain, plugins) in [
        (vec![], 0.0),
        (
            vec![("ip-restriction", r#"{"whitelist": ["10.0.0.0/8"]}"#)],
            0.0,
        ),
        (
            vec![
                ("ua-restriction", r#"{"denylist": ["curl.*"]}"#),
                ("referer-restriction", r#"{"whitelist": ["*.example.com"]}"#),
            ],
            0.0,
        ),
    ] {
        let chain_len = chain.len();
        let prepared = harness
            .prepare("route#alloc#ext-plugin-pre-req#1", &chain)
            .unwrap();
        let per_run = allocations_per_run(|| {
            let action = gw.call(&prepared, &req).now_or_never().unwrap().unwrap();
            assert_eq!(action, ReqAction::Continue);
        });
        assert!(
            per_run <= plugins,
            "a chain of {chain_len} plugins allocates {per_run} times per call"
        );
    }
}

/// Counts decisions as the runner's metrics do: relaxed atomic increments.
struct Tally([std::sync::atomic::AtomicU64; 5]);

impl ChainObserver for Tally {
    fn decided(&self, _: Phase, _: usize, decision: Decision) {
        self.0[decision as usize].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

#[test]
fn a_watched_chain_allocates_no_more_than_an_unwatched_one() {
    let registry = ext_plugin_catalogue::builtin();
    let req = realistic();
    let mut gw = LocalGateway::new();
    let conf = prepare_request(
        "route#alloc#ext-plugin-pre-req#1",
        &[
            ("ip-restriction", r#"{"whitelist": ["10.0.0.0/8"]}"#),
            ("ip-restriction", r#"{"blacklist": ["192.0.2.0/24"]}"#),
        ],
    );
    let unwatched = registry
        .build_chain(
            &conf,
            &StateRegistry::default(),
            &ext_plugin_sdk::Clock::system(),
        )
        .unwrap();
    let mut chain = registry
        .build_chain(
            &conf,
            &StateRegistry::default(),
            &ext_plugin_sdk::Clock::system(),
        )
        .unwrap();
    let counting = Arc::new(Tally(Default::default()));
    chain.set_observer(counting.clone());
    let mut run = |chain: &ext_plugin_sdk::Chain| {
        allocations_per_run(|| {
            let action = gw.call(chain, &req).now_or_never().unwrap().unwrap();
            assert_eq!(action, ReqAction::Continue);
        })
    };
    let baseline = run(&unwatched);
    let watched = run(&chain);
    assert_eq!(
        baseline, 0.0,
        "a chain of 2 plugins allocates {baseline} times per call"
    );
    assert_eq!(watched, baseline, "watching a chain allocates");
    let passes = counting.0[Decision::Pass as usize].load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(passes, 2 * 110, "every plugin of every run was seen");
}

/// Answers no `extra_info`: the chains measured here never ask.
struct NoGateway;

impl GatewayVars for NoGateway {
    fn fetch<'a>(
        &'a mut self,
        _: ExtraInfoReq,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Option<Bytes>, PluginError>> + Send + 'a>,
    > {
        Box::pin(async { Err(PluginError::new("no gateway here")) })
    }
}

/// Allocations per call of the whole in-process path a connection runs for one call, in
/// steady state: decode the frame's payload into the reused model, run the chain with the
/// reused call state, encode the reply into the reused buffer, take the rewrite's vectors back.
fn allocations_per_call(p: Protocol, chain: &[(&str, &str)]) -> f64 {
    allocations_per_call_of(p, chain, &realistic())
}

/// [`allocations_per_call`] for the request `req`.
fn allocations_per_call_of(p: Protocol, chain: &[(&str, &str)], req: &HttpReqCallReq) -> f64 {
    let harness = Harness::new(ext_plugin_catalogue::builtin());
    let chain = harness
        .prepare("route#alloc#ext-plugin-pre-req#1", chain)
        .unwrap();
    let mut wire = Vec::new();
    p.gateway_codec().encode_http_req_call_req(req, &mut wire);
    let payload = Bytes::from(wire);
    let mut codec = p.runner_codec();
    let mut req = HttpReqCallReq::default();
    let mut state = CallState::default();
    let mut out = Vec::new();
    allocations_per_run(|| {
        codec.decode_http_req_call_req(&payload, &mut req).unwrap();
        let action = chain
            .run_request(&req, &mut state, &mut NoGateway)
            .now_or_never()
            .unwrap()
            .unwrap();
        let reply = HttpReqCallResp { id: req.id, action };
        out.clear();
        write_frame(&mut out, FrameType::HttpReqCall as u8, |o| {
            codec.encode_http_req_call_resp(&reply, o)
        })
        .unwrap();
        if let ReqAction::Rewrite(rewrite) = reply.action {
            state.recycle(rewrite);
        }
        req.args.clear();
        req.headers.clear();
        state.reset();
    })
}

#[test]
fn a_call_through_the_empty_chain_does_not_allocate() {
    for p in Protocol::ALL {
        assert_eq!(allocations_per_call(p, &[]), 0.0, "{p}");
    }
}

/// benches/scenarios/realistic.json's chain.
const REALISTIC: [(&str, &str); 3] = [
    (
        "ip-restriction",
        r#"{"whitelist": ["10.0.0.0/8", "2001:db8::/32"]}"#,
    ),
    (
        "limit-count",
        r#"{"count": 1000000000, "time_window": 60, "key": "remote_addr"}"#,
    ),
    ("request-id", "{}"),
];

/// The realistic chain decides without a future (ip-restriction, limit-count counting locally
/// by the client address, request-id all decide in `Plugin::request_filter_sync`), its values
/// are formatted into the call's reused buffer (`RequestCall::format_text`), and its rewrite
/// reply is written without capnp-rust's builder: nothing allocates, in either codec.
#[test]
fn a_call_through_the_realistic_chain_does_not_allocate() {
    for p in Protocol::ALL {
        assert_eq!(allocations_per_call(p, &REALISTIC), 0.0, "{p}");
    }
}

/// The texts plugins write per call (request-id's id, here the client's, of any length) share
/// one reused buffer: whatever a call writes, the buffer's room is taken back between calls,
/// never mid-call while this call's texts share it (which would allocate now and then).
#[test]
fn texts_of_any_length_do_not_allocate_in_steady_state() {
    for len in [1, 7, 33, 64, 100, 255] {
        let mut req = realistic();
        req.headers.push(Pair::new("x-request-id", "i".repeat(len)));
        for p in Protocol::ALL {
            let per_call = allocations_per_call_of(p, &REALISTIC, &req);
            assert_eq!(per_call, 0.0, "{p}, an id of {len} bytes");
        }
    }
}
