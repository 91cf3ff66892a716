//! Requests and replies shaped like real traffic, shared by the tests and the benches (which
//! include this file by path), so the allocation counts and the timings are of the same messages.

use bytes::Bytes;
use ext_plugin_runner::model::{
    HttpReqCallReq, HttpReqCallResp, Method, Pair, ReqAction, Rewrite, Stop,
};

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

/// One reply of each kind: continue, a stop with a JSON body, a rewrite setting a request id on
/// the request and the response.
pub fn replies() -> [HttpReqCallResp; 3] {
    const REQUEST_ID: &str = "3f2b9c1e-1111-2222-3333-444455556666";
    [
        HttpReqCallResp {
            id: 1,
            action: ReqAction::Continue,
        },
        HttpReqCallResp {
            id: 2,
            action: ReqAction::Stop(Stop {
                status: 403,
                headers: vec![Pair::new("content-type", "application/json")],
                body: Bytes::from_static(b"{\"message\":\"Your IP address is not allowed\"}\n"),
            }),
        },
        HttpReqCallResp {
            id: 3,
            action: ReqAction::Rewrite(Rewrite {
                headers: vec![Pair::new("X-Request-Id", REQUEST_ID)],
                resp_headers: vec![Pair::new("X-Request-Id", REQUEST_ID)],
                ..Rewrite::default()
            }),
        },
    ]
}
