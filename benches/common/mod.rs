//! What the benches share: realistic requests and replies, and running a chain to completion.

#![allow(dead_code)] // each bench uses a part

use ext_plugin_runner::model::{HttpReqCallReq, ReqAction};
use ext_plugin_runner::Chain;
use ext_plugin_sdk::harness::LocalGateway;
use futures_util::FutureExt;

// The tests' fixtures, so allocation counts and timings are of the same messages.
#[path = "../../tests/common/fixtures.rs"]
pub mod fixtures;

/// A runtime context for plugins that read tokio's clock; calls themselves are polled once.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

/// Runs the request phase, which must finish without waiting (no delays, answers in memory).
pub fn call(gw: &mut LocalGateway, chain: &Chain, req: &HttpReqCallReq) -> ReqAction {
    gw.asked.clear();
    gw.call(chain, req)
        .now_or_never()
        .expect("the chain finishes without waiting")
        .expect("the chain succeeds")
}
