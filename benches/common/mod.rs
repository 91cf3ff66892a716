//! What the benches share: a realistic request and running a chain to completion.

#![allow(dead_code)] // each bench uses a part

use ext_plugin_runner::model::{HttpReqCallReq, Method, Pair, ReqAction};
use ext_plugin_runner::Chain;
use ext_plugin_sdk::harness::LocalGateway;
use futures_util::FutureExt;

/// A browser-like request: 12 headers, 3 args.
pub fn realistic() -> HttpReqCallReq {
    let mut req = HttpReqCallReq {
        id: 1,
        src_ip: Some("10.0.2.10".parse().unwrap()),
        method: Method::Get,
        path: "/api/v1/orders/12345".into(),
        conf_token: 7,
        ..Default::default()
    };
    for (n, v) in [
        ("host", "api.example.com"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36",
        ),
        ("accept", "application/json"),
        ("accept-encoding", "gzip, deflate, br"),
        ("accept-language", "en-US,en;q=0.9"),
        ("authorization", "Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig"),
        ("cookie", "sid=abc123; theme=dark"),
        ("x-request-id", "3f2b9c1e-1111-2222-3333-444455556666"),
        ("x-forwarded-for", "198.51.100.7"),
        ("x-real-ip", "198.51.100.7"),
        ("referer", "https://shop.example.com/cart"),
        ("connection", "keep-alive"),
    ] {
        req.headers.push(Pair::new(n, v));
    }
    for (n, v) in [("page", "2"), ("sort", "desc"), ("fields", "id,total")] {
        req.args.push(Pair::new(n, v));
    }
    req
}

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
